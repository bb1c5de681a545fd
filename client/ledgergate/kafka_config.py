"""librdkafka configurations, explicit at one place so every client agrees.

librdkafka's defaults favour throughput (linger.ms 5, fetch.wait.max.ms 500); the gate's product is
latency, so these are chosen for it and measured by `make bench`.
"""

from __future__ import annotations

from typing import Any

# librdkafka's default partitioner (consistent_random, CRC32) differs from the Java/aiokafka
# murmur2 one: without this a tenant's events would land on different partitions per client.
PARTITIONER = "murmur2_random"


def producer_config(bootstrap: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "partitioner": PARTITIONER,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 1,
        "batch.num.messages": 10000,
        "socket.nagle.disable": True,
        "compression.type": "none",
        "message.max.bytes": 4 * 1024 * 1024,
    }
    config.update(overrides)
    return config


def transactional_producer_config(bootstrap: str, transactional_id: str, **overrides: Any) -> dict[str, Any]:
    return producer_config(
        bootstrap,
        **{
            "transactional.id": transactional_id,
            "transaction.timeout.ms": 60000,
            # The coordinator answers CONCURRENT_TRANSACTIONS while the previous commit's markers are
            # still being written; librdkafka retries after retry.backoff.ms (default 100). Measured
            # here: send_offsets_to_transaction p50 88 ms at the default, 2 ms at 1 ms (bench/).
            # Exponential backoff up to the max keeps a real outage from becoming a busy loop.
            "retry.backoff.ms": 1,
            "retry.backoff.max.ms": 100,
            **overrides,
        },
    )


def consumer_config(bootstrap: str, group_id: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        # Only committed transactions: an aborted ledger append must never be seen downstream.
        "isolation.level": "read_committed",
        # Measured with `ledgergate bench max --rates 100,500,1000,2000 --step-s 8`: 5 ms beat 1 ms at
        # every rate (p50 22.5 vs 25.7 ms at 100/s, 91 vs 114 ms at 1,000/s, 1,887 vs 1,770/s saturated):
        # 1 ms fetches cost the broker about 0.25 cores even with no traffic.
        "fetch.wait.max.ms": 5,
        "fetch.min.bytes": 1,
        "socket.nagle.disable": True,
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 1000,
        "max.poll.interval.ms": 300000,
        "queued.max.messages.kbytes": 65536,
    }
    config.update(overrides)
    return config


def admin_config(bootstrap: str) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "socket.nagle.disable": True}
