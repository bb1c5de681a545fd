"""librdkafka configurations, explicit at one place so every client agrees.

librdkafka's defaults favour throughput (linger.ms 5, fetch.wait.max.ms 500); the gate's product is
latency, so these are chosen for it and measured by `make bench`.

Each builder takes a KafkaConnection (ledgergate.connection), never a bare address: where the cluster is
and how to authenticate (TLS, SASL) come in together, so no client of the project can be built without
its security settings, and an override can neither drop nor replace them (`_check_overrides`).
"""

from __future__ import annotations

import contextlib
from typing import Any

from confluent_kafka import KafkaException

from ledgergate.connection import KafkaConnection

# librdkafka's default partitioner (consistent_random, CRC32) differs from the Java/aiokafka
# murmur2 one: without this a tenant's events would land on different partitions per client.
PARTITIONER = "murmur2_random"
# How long a consumer's fetch waits at the broker for data (see consumer_config).
FETCH_WAIT_MAX_MS = 100
# The coordinator aborts a transaction left open this long (a dead or paused producer's).
TRANSACTION_TIMEOUT_MS = 60_000
# The keys that belong to the connection: an override of one would send a client elsewhere or without
# its credentials.
CONNECTION_KEY_PREFIXES = ("bootstrap.servers", "metadata.broker.list", "security.protocol", "ssl.", "sasl.",
                           "enable.ssl.", "enable.sasl.")


def _check_overrides(overrides: dict[str, Any]) -> None:
    taken = sorted(key for key in overrides if key.startswith(CONNECTION_KEY_PREFIXES))
    assert not taken, f"connection settings come from the KafkaConnection, not an override: {taken}"


def _connected(connection: KafkaConnection, config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(connection, KafkaConnection), f"a KafkaConnection, not {type(connection).__name__}"
    _check_overrides(overrides)
    return {**connection.librdkafka_config(), **config, **overrides}


def producer_config(connection: KafkaConnection, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "partitioner": PARTITIONER,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 1,
        "batch.num.messages": 10000,
        "socket.nagle.disable": True,
        "compression.type": "none",
        "message.max.bytes": 4 * 1024 * 1024,
    }
    return _connected(connection, config, overrides)


def transactional_producer_config(connection: KafkaConnection, transactional_id: str,
                                  **overrides: Any) -> dict[str, Any]:
    return producer_config(
        connection,
        **{
            "transactional.id": transactional_id,
            "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
            # The coordinator answers CONCURRENT_TRANSACTIONS while the previous commit's markers are
            # still being written; librdkafka retries after retry.backoff.ms (default 100). Measured
            # here: send_offsets_to_transaction p50 88 ms at the default, 2 ms at 1 ms (bench/).
            # Exponential backoff up to the max keeps a real outage from becoming a busy loop.
            "retry.backoff.ms": 1,
            "retry.backoff.max.ms": 100,
            **overrides,
        },
    )


def consumer_config(connection: KafkaConnection, group_id: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        # Only committed transactions: an aborted ledger append must never be seen downstream.
        "isolation.level": "read_committed",
        # The broker answers a waiting fetch as soon as a record (or, read_committed, a commit marker)
        # arrives, so this bounds only how often an idle consumer asks again. Measured (`ledgergate bench
        # rate 500 --duration-s 20`, 100 ms and 5 ms alternated, two runs each): the idle broker 0.17/0.16
        # against 0.30/0.29 cores, 500/s sustained alike (481/500 vs 480/505 decided/s), p50 at 100/s
        # 84/121 vs 88/101 ms (noise). Earlier, 5 ms had beaten 1 ms at every rate for the same reason.
        "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,
        "fetch.min.bytes": 1,
        "socket.nagle.disable": True,
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 1000,
        "max.poll.interval.ms": 300000,
        "queued.max.messages.kbytes": 65536,
    }
    return _connected(connection, config, overrides)


def admin_config(connection: KafkaConnection, **overrides: Any) -> dict[str, Any]:
    return _connected(connection, {"socket.nagle.disable": True}, overrides)


# A metadata request's bound when a client asks for a topic's leaders at once (`connect_now`).
CONNECT_TIMEOUT_S = 5.0


def connect_now(client: Any, topic: str) -> None:
    """Ask for one topic's metadata now, so the client is connected and knows the topic's leaders before
    its first message. librdkafka learns the leaders of a topic met first in a manual assignment only at
    its next topic scan, once a second, and a new idempotent producer's first produce waits for its
    producer id the same way: measured, 0.58 s for a first produce right after construction and 0.7-1.0 s
    for a manual assign's first message, against 1-16 ms and 16-68 ms after this call. Only a shortcut:
    a broker that does not answer leaves the client as librdkafka would have it."""
    with contextlib.suppress(KafkaException):
        client.list_topics(topic, timeout=CONNECT_TIMEOUT_S)


def topic_unready(client: Any, topic: str, timeout_s: float = 2.0) -> str | None:
    """None when the broker answers metadata for `topic` with a leader for every partition; else what is
    wrong (a readiness probe's answer: `/readyz` of the API and the proxy)."""
    try:
        meta = client.list_topics(topic, timeout=timeout_s).topics.get(topic)
    except KafkaException as exc:
        return f"kafka metadata request failed: {exc.args[0]}"
    if meta is None or meta.error is not None or not meta.partitions:
        return f"topic {topic} is not available ({meta.error if meta is not None else 'no metadata'})"
    if any(p.leader < 0 for p in meta.partitions.values()):
        return f"topic {topic} has partitions without a leader"
    return None


def assign_promptly(consumer: Any, partitions: list[Any], incremental: bool = False) -> None:
    """Assign partitions by hand and fetch their topics' leaders at once (see connect_now)."""
    if incremental:
        consumer.incremental_assign(partitions)
    else:
        consumer.assign(partitions)
    for topic in sorted({tp.topic for tp in partitions}):
        connect_now(consumer, topic)
