"""CPU per usage.metered record of the anomaly detector (`ledgergate run anomaly`, a faust app) on this
machine: a backlog of N records (the token-counter's shape, T tenants with four workflows each) on fresh
prefixed topics, one worker started from the earliest offset, its CPU seconds (/proc) while its group's
committed offsets go from the first commit to N. Each record adds to four series (tenant and workflow,
spend and tokens), so four windowed-table updates, each a changelog record.

  .venv/bin/python -m ledgergate.tools.bench.anomaly_cost --messages 20000 [--tenants 200]

docs/decisions/0011-anomaly-on-faust.md quotes its output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.events import Usage, UsageMetered
from ledgergate.kafka_config import consumer_config, producer_config
from ledgergate.shared.kafka import provision
from ledgergate.shared.settings import KafkaSettings
from ledgergate.tools.bench.procstats import cpu_seconds, peak_rss_mb
from ledgergate.tools.servicerunner import ServiceSet

PARTITIONS = 6


def committed(settings: KafkaSettings, group: str, topic: str) -> int:
    consumer = Consumer(consumer_config(settings.kafka_connection, group, **{"enable.auto.commit": False}))
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        return sum(max(0, tp.offset) for tp in offsets)
    finally:
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--timeout-s", type=float, default=300.0)
    args = parser.parse_args()
    settings = KafkaSettings(topic_prefix=f"anomcost{uuid.uuid4().hex[:6]}.")
    specs = provision.load_specs(partitions=PARTITIONS, prefix=settings.topic_prefix)
    provision.apply(settings.kafka_connection, specs)
    metered = settings.topic(topics.METERED)
    producer = Producer(producer_config(settings.kafka_connection))
    now_ms = time.time_ns() // 1_000_000
    for n in range(args.messages):
        tenant = f"tenant-{n % args.tenants:04d}"
        body = UsageMetered(f"r{n}", tenant, "gpt-4o-mini", "OK", Usage(800, 0, 200, 0), False, 200, 1_000_000,
                            now_ms, now_ms, f"wf-{n % 4}")
        producer.produce(metered, key=tenant.encode(), value=codec().encode("UsageMetered", body.to_record()))
        if n % 10_000 == 0:
            producer.flush(30)
    assert producer.flush(60) == 0
    work = Path(tempfile.mkdtemp(prefix="anomaly-cost-"))
    env = {"LEDGERGATE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "LEDGERGATE_TOPIC_PREFIX": settings.topic_prefix,
           "LEDGERGATE_ANOMALY_START_FROM": "earliest", "LEDGERGATE_ANOMALY_DATA_DIR": str(work / "faust")}
    group = f"{settings.topic_prefix}ledgergate-anomaly"
    result: dict[str, object] = {"messages": args.messages, "tenants": args.tenants, "partitions": PARTITIONS}
    started = time.monotonic()
    try:
        with ServiceSet(env, work / "logs") as services:
            services.start(["anomaly"])
            pid = services.pid("anomaly")
            first: tuple[float, float, int] | None = None
            deadline = time.monotonic() + args.timeout_s
            done = 0
            # faust may leave a partition's last offset uncommitted until more arrives: within one a partition.
            target = args.messages - PARTITIONS
            while time.monotonic() < deadline and done < target:
                time.sleep(0.5)
                done = committed(settings, group, metered)
                if done and first is None:
                    first = (time.monotonic(), cpu_seconds(pid) or 0.0, done)
            last = (time.monotonic(), cpu_seconds(pid) or 0.0, done)
            result["peak_rss_mb"] = peak_rss_mb(pid)
            assert first is not None and done >= target, f"committed {done} of {args.messages}"
            steady = last[2] - first[2]
            result.update(startup_to_first_commit_s=round(first[0] - started, 2),
                          steady_messages=steady, steady_s=round(last[0] - first[0], 2),
                          worker_cpu_s=round(last[1] - first[1], 2),
                          worker_cpu_us_per_message=round((last[1] - first[1]) * 1e6 / max(1, steady), 1),
                          messages_per_s=round(steady / max(1e-9, last[0] - first[0])))
    finally:
        admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
        for fut in admin.delete_topics([s.name for s in specs], operation_timeout=30).values():
            with contextlib.suppress(Exception):
                fut.result()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
