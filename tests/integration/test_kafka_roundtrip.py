"""Encoded events through the real broker, with confluent-kafka and with faust-streaming (aiokafka)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer

from ledgergate.codec import codec
from ledgergate.kafka_config import consumer_config, producer_config
from ledgergate.shared.settings import KafkaSettings
from ledgergate.topics import DECISIONS, REQUESTS

TENANTS = [f"tenant-{i:03d}" for i in range(40)]


def _request(tenant: str, n: int) -> dict:
    return {
        "request_id": f"{tenant}-req-{n}", "tenant_id": tenant, "workflow_id": "wf", "agent_id": "a1",
        "requested_model": "gpt-4o", "messages": [{"role": "user", "content": "héllo wörld", "name": None}],
        "tools_json": None, "max_output_tokens": 256, "priority": "NORMAL", "region": None,
        "max_cost_micro_usd": None, "labels": {"team": "x"}, "requested_at_ms": 1_700_000_000_000 + n,
        "trace_context": {}, "sampling_json": None, "template": None, "signature": None,
    }


def _consume(settings: KafkaSettings, topic: str, count: int, timeout_s: float = 60.0) -> list:
    consumer = Consumer(consumer_config(settings.kafka_connection, f"g-{topic}"))
    consumer.subscribe([topic])
    got = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < count and time.monotonic() < deadline:
            got.extend(m for m in consumer.consume(500, timeout=0.5) if m.error() is None)
    finally:
        consumer.close()
    return got


def test_confluent_roundtrip_decodes_every_event(kafka: KafkaSettings) -> None:
    topic = kafka.topic(REQUESTS)
    producer = Producer(producer_config(kafka.kafka_connection))
    sent = {}
    for n, tenant in enumerate(TENANTS):
        record = _request(tenant, n)
        sent[record["request_id"]] = record
        producer.produce(topic, key=tenant.encode(), value=codec().encode("InvocationRequested", record))
    assert producer.flush(30) == 0
    messages = _consume(kafka, topic, len(sent))
    assert len(messages) == len(sent)
    for msg in messages:
        name, record = codec().decode(msg.value())
        assert name == "InvocationRequested"
        assert record == sent[record["request_id"]]
        assert msg.key().decode() == record["tenant_id"]


def test_faust_and_confluent_agree_on_partitions(kafka: KafkaSettings, tmp_path: Path) -> None:
    """confluent-kafka with murmur2_random and faust's aiokafka producer put each tenant on one partition."""
    source, echo = kafka.topic(REQUESTS), kafka.topic(DECISIONS)
    env = {**os.environ, "LG_TEST_SOURCE": source, "LG_TEST_ECHO": echo,
           "LG_TEST_BOOTSTRAP": kafka.kafka_bootstrap}
    app = Path(__file__).with_name("faust_partition_app.py")
    with open(tmp_path / "faust.log", "wb") as log_file:
        worker = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "faust_partition_app", "--datadir", str(tmp_path / "faust"),
             "worker", "-l", "warn", "--without-web"],
            cwd=app.parent, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        producer = Producer(producer_config(kafka.kafka_connection))
        sent_partition: dict[str, int] = {}

        def remember(err, msg) -> None:
            assert err is None, err
            sent_partition[msg.key().decode()] = msg.partition()

        for n, tenant in enumerate(TENANTS):
            producer.produce(source, key=tenant.encode(), value=f"v{n}".encode(), on_delivery=remember)
        assert producer.flush(30) == 0
        echoed = _consume(kafka, echo, len(TENANTS), timeout_s=120)
        log = (tmp_path / "faust.log").read_text(errors="replace")[-3000:]
        assert len(echoed) == len(TENANTS), f"faust relayed {len(echoed)}/{len(TENANTS)}; worker log:\n{log}"
        for msg in echoed:
            tenant = msg.key().decode()
            seen_by_faust = int(msg.value().rsplit(b"|", 1)[1])
            assert seen_by_faust == sent_partition[tenant]
            assert msg.partition() == sent_partition[tenant], f"{tenant}: aiokafka chose another partition"
        assert len(set(sent_partition.values())) > 1, "keys should spread over partitions"
    finally:
        worker.terminate()
        worker.wait(30)
