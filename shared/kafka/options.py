"""The stream runtime's options, one frozen record per service, derived the same way from its settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ledgergate.connection import KafkaConnection
from ledgergate.shared.settings import ServiceSettings
from ledgergate.topics import DEADLETTER

Delivery = Literal["kafka-transaction", "produce-then-commit", "offsets-in-sink"]


@dataclass(frozen=True)
class RuntimeOptions:
    service: str
    instance_id: str
    # The cluster and its security settings (TLS, SASL): every client of the runtime is built from it.
    connection: KafkaConnection
    group_id: str
    topics: list[str]
    deadletter_topic: str
    max_batch: int = 500
    poll_timeout_s: float = 0.002
    idle_interval_ms: int = 500
    # Range assignment gives one member the same partition numbers of every input topic: the
    # co-partitioning that lets a service join a tenant's streams in memory.
    assignment_strategy: str = "range"
    # How a batch's outputs and input offsets become durable together (shared/kafka/delivery.py):
    # "kafka-transaction" (exactly once); "produce-then-commit" (at least once, about 4 ms less per hop
    # measured here, only for services whose every output is idempotent downstream); "offsets-in-sink"
    # (the offsets stored with the rows in the service's own store: the projector).
    delivery: Delivery = "kafka-transaction"
    # librdkafka options of this service's consumer beyond ledgergate.kafka_config's (the one place).
    consumer_overrides: dict[str, Any] = field(default_factory=dict)
    # Exit for a fresh instance when input waits twice stall_after_ms with nothing consumed (a consumer
    # wedged after a broker restart). False for a service that waits on a store of its own meanwhile.
    stalled_exit: bool = True
    # How long to wait for a batch to fill once the input is drained. 0 hands the first message to the
    # handler at once (lowest latency); a transactional service gathers for a moment instead, because
    # each transaction costs ~1.4 ms of CPU and batches amortise it (measured: see 0003).
    batch_linger_s: float = 0.0
    # kafka-transaction only: keep the transaction open across batches for this long before it commits
    # (0: commit every batch). Only for a service whose transaction is off the request's way, its
    # outputs on the way being early records (the router): fewer transactions, no added latency.
    commit_interval_ms: int = 0
    # kafka-transaction only: the handler emits early records (Outbox.emit_early), so their producer is
    # made and connected at start rather than on the first one, which it would delay (connect_now).
    early_records: bool = False
    # A commit or abort that the broker cannot take for this long (an outage past the transaction
    # timeout) ends the process: a fresh instance recovers faster than a client in an unknown state.
    commit_deadline_ms: int = 90_000
    stall_after_ms: int = 15_000
    shutdown_timeout_ms: int = 20_000
    health_host: str = "127.0.0.1"
    health_port: int = 0
    # librdkafka statistics.interval.ms of the consumer, parsed into the consumer-lag gauge
    # (shared/metrics/lag.py); 0 (metrics off) emits none.
    statistics_interval_ms: int = 0


def options_for(service: str, settings: ServiceSettings, input_topics: list[str], **overrides: Any) -> RuntimeOptions:
    """The runtime options every service derives the same way from its settings."""
    if overrides.get("delivery", "kafka-transaction") == "kafka-transaction":
        overrides.setdefault("batch_linger_s", settings.batch_linger_ms / 1000)
    fields: dict[str, Any] = {
        "service": service, "instance_id": settings.instance_id, "connection": settings.kafka_connection,
        "group_id": f"{settings.topic_prefix}ledgergate-{service}", "topics": input_topics,
        "deadletter_topic": settings.topic(DEADLETTER), "max_batch": settings.max_batch,
        "poll_timeout_s": settings.poll_timeout_ms / 1000, "stall_after_ms": settings.stall_after_ms,
        "shutdown_timeout_ms": settings.shutdown_timeout_ms, "health_host": settings.health_host,
        "health_port": settings.health_port,
        "statistics_interval_ms": settings.metrics_lag_interval_ms if settings.metrics_enabled else 0}
    return RuntimeOptions(**{**fields, **overrides})
