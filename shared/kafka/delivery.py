"""How a batch's outputs and its input offsets become durable together: the stream runtime's delivery
strategy, one per service (docs/decisions/0003-delivery-guarantees-per-service.md).

- `KafkaTransaction` (shared/kafka/transaction.py): outputs and offsets in one Kafka transaction,
  exactly once, zombies fenced by the producer epoch and the group generation;
- `ProduceThenCommit`: outputs produced and acknowledged, then the offsets committed: at least once,
  for services whose every output is idempotent downstream;
- `OffsetsInSink`: the offsets stored with the rows in the sink's own transaction (the projector's
  PostgreSQL), read back on assignment; Kafka's committed offsets are informational only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from ledgergate.kafka_config import connect_now, producer_config
from ledgergate.shared.errors import FatalClientError
from ledgergate.shared.health import Health
from ledgergate.shared.kafka.fatal import ClientErrors
from ledgergate.shared.kafka.options import RuntimeOptions
from ledgergate.shared.kafka.outbox import Outbox, Record

Offsets = dict[tuple[str, int], int]


class Stopping(Exception):
    """SIGTERM arrived while a delivery waited on the broker (or a handler's retry waited): leave the
    batch uncommitted (an open transaction is aborted by the next instance; its input is read again)."""


@dataclass
class Context:
    """What a delivery strategy shares with the loop that runs it."""

    options: RuntimeOptions
    health: Health
    errors: ClientErrors
    log: Any
    consumer: Any  # confluent_kafka.Consumer
    running: Callable[[], bool]


class Delivery(Protocol):
    # True: the broker checks every commit against the group generation (the runtime then commits nothing
    # read outside the group, and fences idle work with the owned partitions' offsets).
    transactional: bool
    # True: the consumer starts each assigned partition at `positions` (the sink holds the offsets);
    # False: at Kafka's committed offset, which the consumer fetches itself.
    seeks_to_positions: bool

    def start(self) -> None:
        """Before the first batch (initialise transactions, connect and migrate the sink)."""

    def positions(self, partitions: list[TopicPartition]) -> list[TopicPartition] | None:
        """Where these partitions resume, as committed: offsets < 0 mean never, from the start; an empty
        list leaves it to the consumer's committed offsets. None: unreadable, recorded as fatal."""

    def forget(self, partitions: list[TopicPartition]) -> None:
        """These partitions were revoked."""

    def commit(self, out: Outbox, offsets: Offsets, group: object) -> bool:
        """Make the batch's outputs and offsets durable together (now, or by the next `flush` that is
        due). False: nothing committed, the runtime rebuilds and reads the input again from `positions`."""

    def flush(self, force: bool = True) -> bool:
        """Commit staged batches that are due (all of them, `force`); False as for commit."""

    def discard(self) -> None:
        """Drop staged batches uncommitted (the runtime then rebuilds and reads them again)."""

    def close(self) -> None: ...


class Producing:
    """Produce with back-pressure and wait for acknowledgements, for every strategy that produces."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.delivery_failed = False

    def producer(self, **overrides: Any) -> Producer:
        o = self.ctx.options
        producer = Producer(producer_config(o.connection, **{
            "client.id": f"{o.service}-{o.instance_id}", "error_cb": self.ctx.errors.on_error, **overrides}))
        connect_now(producer, o.deadletter_topic)  # its first batch is not 0.6 s late (connect_now)
        return producer

    def produce(self, producer: Producer, records: list[Record]) -> None:
        for topic, key, value, headers, partition in records:
            while True:
                try:
                    if partition is None:
                        producer.produce(topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery)
                    else:
                        producer.produce(topic, value=value, key=key, headers=headers, partition=partition,
                                         on_delivery=self._on_delivery)
                    break
                except BufferError:
                    self.ctx.errors.check()
                    self.ctx.health.turned()
                    producer.poll(0.05)  # local queue full: let deliveries drain, then retry

    def await_acks(self, producer: Producer, deadline_ms: int, step: str, what: str, withheld: str) -> None:
        """Wait until `producer` has every record acknowledged; while the broker is away deliveries wait
        (message.timeout.ms), and the loop stays visibly alive. A SIGTERM meanwhile ends it without the
        commit (the batch is read again); a failed delivery or the deadline is fatal, the commit withheld."""
        undelivered = producer.flush(0.001)
        while undelivered and not self.delivery_failed and mono_ms() < deadline_ms and self.ctx.errors.fatal is None:
            if not self.ctx.running():
                raise Stopping(step)
            self.ctx.health.turned()
            undelivered = producer.flush(0.5)
        self.ctx.errors.check()
        if undelivered or self.delivery_failed:
            raise FatalClientError(f"{self.ctx.options.service}: {undelivered} {what} not acknowledged "
                                   f"(delivery failed: {self.delivery_failed}); not committing {withheld}")

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.delivery_failed = True
            self.ctx.log.info("delivery_failed", error=str(err))


class _EachBatch:
    """A strategy that makes each batch durable in its own commit call: nothing is ever staged."""

    ctx: Context

    def flush(self, force: bool = True) -> bool:
        return True

    def discard(self) -> None:
        pass

    def _commit_kafka_offsets(self, offsets: Offsets, failed: str) -> None:
        """Asynchronously: if the coordinator is away, the next batch's commit covers these offsets."""
        try:
            self.ctx.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                     asynchronous=True)
        except KafkaException as exc:
            self.ctx.log.warning(failed, error=str(exc.args[0]))


class ProduceThenCommit(_EachBatch):
    """At least once: offsets are committed only after every output is acknowledged, so a crash in
    between re-processes the batch (duplicates that downstream idempotency absorbs), never loses it."""

    transactional = False
    seeks_to_positions = False

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.out = Producing(ctx)
        self.producer = self.out.producer()

    def start(self) -> None:
        pass

    def positions(self, partitions: list[TopicPartition]) -> list[TopicPartition] | None:
        return []

    def forget(self, partitions: list[TopicPartition]) -> None:
        pass

    def commit(self, out: Outbox, offsets: Offsets, group: object) -> bool:
        # Early records have no transaction to precede here: they are simply outputs.
        self.out.produce(self.producer, out.early + out.records)
        self.out.await_acks(self.producer, mono_ms() + self.ctx.options.commit_deadline_ms, "flush", "outputs",
                            "offsets")
        if offsets:
            self._commit_kafka_offsets(offsets, "offset_commit_failed")
        return True

    def close(self) -> None:
        self.producer.flush(5)


class Sink(Protocol):
    """A store that keeps each input partition's next offset with the rows its messages produced."""

    def start(self, ctx: Context) -> None:
        """Connect (and migrate); wait while the store is away, until `ctx.running()` turns False."""

    def stored_offsets(self, keys: list[tuple[str, int]]) -> Offsets:
        """The next offset stored for each key; -1 where none is stored yet."""

    def forget(self, keys: list[tuple[str, int]]) -> None: ...

    def write(self, offsets: Offsets) -> bool:
        """What the handler staged for the batch and these offsets in one store transaction. False:
        rolled back (an outage, offsets moved by another owner); the runtime reads again from the store."""

    def close(self) -> None: ...


class OffsetsInSink(_EachBatch):
    """Exactly once into a store that is not Kafka: the sink's transaction holds the offsets."""

    transactional = False
    seeks_to_positions = True

    def __init__(self, ctx: Context, sink: Sink) -> None:
        self.ctx = ctx
        self.sink = sink

    def start(self) -> None:
        self.sink.start(self.ctx)

    def positions(self, partitions: list[TopicPartition]) -> list[TopicPartition] | None:
        stored = self.sink.stored_offsets([(tp.topic, tp.partition) for tp in partitions])
        return [TopicPartition(t, p, o) for (t, p), o in stored.items()]

    def forget(self, partitions: list[TopicPartition]) -> None:
        self.sink.forget([(tp.topic, tp.partition) for tp in partitions])

    def commit(self, out: Outbox, offsets: Offsets, group: object) -> bool:
        assert not out.records and not out.early, "a sink delivery has no Kafka outputs to commit with its rows"
        if not offsets or not self.sink.write(offsets):
            return not offsets
        # Informational only (lag tools); the offsets in the sink are the ones that count.
        self._commit_kafka_offsets(offsets, "informational_commit_failed")
        return True

    def close(self) -> None:
        self.sink.close()


def mono_ms() -> int:
    return time.monotonic_ns() // 1_000_000
