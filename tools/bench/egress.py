"""Broker bytes out per decision with 1, 10 and 50 concurrent clients, each speaking for its own tenant:
clients that read every gate.decisions partition (`partitions="all"`, what every client did before) and
clients that read only their tenant's partition (the default).

What each client's decisions consumer receives is librdkafka's own count (statistics `rx_bytes`: every
byte the broker sent it, fetch responses and metadata alike), summed over the clients and divided by
the decisions made in the run. The gate's four services run as processes; the clients share one
process, each with its own consumer, as separate agent apps would have their own.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from ledgergate import topics
from ledgergate.client import GateClient
from ledgergate.connection import KafkaConnection
from ledgergate.partitioning import murmur2_partition
from ledgergate.shared.kafka import provision
from ledgergate.shared.settings import PROJECT_ROOT, KafkaSettings
from ledgergate.tools.bench import floors
from ledgergate.tools.bench.gate import say
from ledgergate.tools.bench.restart import _wait_logged
from ledgergate.tools.servicerunner import GATE_SERVICES, ServiceSet

MESSAGES = [{"role": "user", "content": "Classify this ticket: the export button does nothing."}]
STATS_INTERVAL_MS = 500


class _Received:
    """The latest `rx_bytes` librdkafka reported for one consumer (its statistics are cumulative)."""

    def __init__(self) -> None:
        self.rx_bytes = 0

    def __call__(self, stats_json: str) -> None:
        self.rx_bytes = int(json.loads(stats_json).get("rx_bytes", 0))


def _tenants(count: int, partitions: int) -> list[str]:
    """`count` tenant ids spread over the partitions round-robin (as many tenants per partition as fit)."""
    chosen: list[str] = []
    by_partition: dict[int, int] = {}
    i = 0
    while len(chosen) < count:
        tenant = f"eg{i:05d}"
        p = murmur2_partition(tenant.encode(), partitions)
        if by_partition.get(p, 0) <= len(chosen) // partitions:
            chosen.append(tenant)
            by_partition[p] = by_partition.get(p, 0) + 1
        i += 1
    return chosen


def _run(connection: KafkaConnection, prefix: str, clients: int, mode: str, rate_per_s: float, seconds: float,
         partitions: int) -> dict[str, Any]:
    tenants = _tenants(clients, partitions)
    counters = [_Received() for _ in tenants]
    gates = [GateClient(topic_prefix=prefix, timeout_s=60, connection=connection, partitions=mode,
                        consumer_options={"statistics.interval.ms": STATS_INTERVAL_MS, "stats_cb": counter})
             for counter in counters]
    try:
        for gate, tenant in zip(gates, tenants, strict=True):
            gate.request(tenant, MESSAGES, "gpt-4o-mini", 16)  # its partition read, the path warm
        time.sleep(2 * STATS_INTERVAL_MS / 1000)
        before = [c.rx_bytes for c in counters]
        futures, sent = [], 0
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            i = sent % clients
            futures.append(gates[i].submit(tenants[i], MESSAGES, "gpt-4o-mini", 16))
            sent += 1
            time.sleep(max(0.0, started + sent / rate_per_s - time.monotonic()))
        decided = sum(1 for f in futures if f.result(timeout=120))
        time.sleep(3 * STATS_INTERVAL_MS / 1000)  # the last statistics cover the last fetches
        received = sum(c.rx_bytes - b for c, b in zip(counters, before, strict=True))
        return {"clients": clients, "mode": mode, "decisions": decided, "rx_bytes": received,
                "bytes_per_decision": round(received / max(1, decided)),
                "partitions_read_per_client": round(sum(len(g.reading_partitions) for g in gates) / clients, 1)}
    finally:
        for gate in gates:
            gate.close()


def run_egress(kafka: KafkaSettings, counts: tuple[int, ...] = (1, 10, 50), rate_per_s: float = 50.0,
               seconds: float = 10.0) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    prefix = f"bench{tag}.egress."
    specs = provision.load_specs(partitions=kafka.kafka_partitions, prefix=prefix)
    connection = kafka.kafka_connection
    provision.apply(connection, specs)
    partitions = specs[0].partitions
    services = ServiceSet({**connection.env_vars(), "LEDGERGATE_TOPIC_PREFIX": prefix},
                          PROJECT_ROOT / ".data" / "bench" / tag)
    try:
        services.start(list(GATE_SERVICES))
        for name in GATE_SERVICES:
            _wait_logged(services, name, "partitions_assigned", 120.0)
        runs = []
        for count in counts:
            for mode in ("all", "tenant"):
                say(f"egress: {count} clients reading {mode} partitions, {rate_per_s:g} requests/s for {seconds:g} s")
                runs.append(_run(connection, prefix, count, mode, rate_per_s, seconds, partitions))
        return {"partitions": partitions, "rate_per_s": rate_per_s, "seconds": seconds, "runs": runs,
                "topic": prefix + topics.DECISIONS}
    finally:
        services.stop_all()
        floors.delete_topics(connection, [s.name for s in specs])
