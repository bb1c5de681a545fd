"""A small transactional stream runtime on confluent-kafka: batch consume, handle, produce, and
commit the input offsets inside the same Kafka transaction (consume-transform-produce, KIP-447).

Why not faust here: the ledger's single writer and the audit hash chain need every output of a batch
and its input offsets to commit or abort together; see docs/decisions/.

Error policy, explicit:
- a message the handler rejects with a LedgergateError (bad bytes, bad content) is dead-lettered with
  its original topic/partition/offset and the error, in the same transaction: never dropped, never a
  stuck partition;
- an unexpected exception in the handler is dead-lettered too (code `internal_error`), so one poison
  message cannot stop a tenant partition;
- a Kafka transaction error that is abortable aborts, asks the handler to rebuild its state for the
  assigned partitions, and rewinds to the committed offsets; a fatal one (fenced) stops the process.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from shared.codec import codec
from shared.errors import LedgergateError
from shared.kafka.config import consumer_config, producer_config, transactional_producer_config
from shared.kafka.headers import Headers
from shared.kafka.topics import DEADLETTER
from shared.settings import ServiceSettings


@dataclass
class Outbox:
    """What one batch will produce; flushed inside the batch's transaction."""

    records: list[tuple[str, bytes | None, bytes, Headers | None, int | None]] = field(default_factory=list)

    def emit(self, topic: str, key: bytes | None, value: bytes, headers: Headers | None = None,
             partition: int | None = None) -> None:
        """`partition` pins a record (the audit chain is per partition); otherwise the key decides."""
        self.records.append((topic, key, value, headers, partition))


class Handler(Protocol):
    def assigned(self, partitions: list[int]) -> dict[tuple[str, int], int] | None:
        """Rebuild state for these input partition numbers (co-partitioned across topics). May return
        start offsets for some input (topic, partition)s, overriding the committed ones: a service that
        folds an input topic at assignment continues from where its fold ended."""

    def revoked(self, partitions: list[int]) -> None: ...

    def handle(self, msg: Message, out: Outbox) -> None:
        """Decode, decide, evolve, emit. Raise LedgergateError for input that cannot be processed."""

    def idle(self, now_ms: int, out: Outbox) -> None:
        """Called about every `idle_interval_ms` inside a transaction (expiry, periodic work)."""


@dataclass(frozen=True)
class RuntimeOptions:
    service: str
    instance_id: str
    bootstrap: str
    group_id: str
    topics: list[str]
    deadletter_topic: str
    max_batch: int = 500
    poll_timeout_s: float = 0.002
    idle_interval_ms: int = 500
    # Range assignment gives one member the same partition numbers of every input topic: the
    # co-partitioning that lets a service join a tenant's streams in memory.
    assignment_strategy: str = "range"
    # True: outputs and input offsets commit in one Kafka transaction (exactly once). False: outputs
    # are produced and acknowledged, then offsets committed (at least once), about 4 ms less per hop
    # measured here; only for services whose every output is idempotent downstream.
    exactly_once: bool = True
    # How long to wait for a batch to fill once the input is drained. 0 hands the first message to the
    # handler at once (lowest latency); a transactional service gathers for a moment instead, because
    # each transaction costs ~1.4 ms of CPU and batches amortise it (measured: see 0003).
    batch_linger_s: float = 0.0


def options_for(service: str, settings: ServiceSettings, input_topics: list[str], **overrides: Any) -> RuntimeOptions:
    """The runtime options every service derives the same way from its settings."""
    if overrides.get("exactly_once", True):
        overrides.setdefault("batch_linger_s", settings.batch_linger_ms / 1000)
    return RuntimeOptions(
        service=service, instance_id=settings.instance_id, bootstrap=settings.kafka_bootstrap,
        group_id=f"{settings.topic_prefix}ledgergate-{service}", topics=input_topics,
        deadletter_topic=settings.topic(DEADLETTER), max_batch=settings.max_batch,
        poll_timeout_s=settings.poll_timeout_ms / 1000, **overrides)


def run_service(service: str, settings: ServiceSettings, handler: Handler, input_topics: list[str],
                log: Any, **overrides: Any) -> None:
    options = options_for(service, settings, input_topics, **overrides)
    TransactionalRuntime(options, handler, lambda event, **kw: log.info(event, **kw)).run()


class TransactionalRuntime:
    def __init__(self, options: RuntimeOptions, handler: Handler, log: Callable[..., None] | None = None) -> None:
        self.o = options
        self.handler = handler
        self._log = log or (lambda *a, **k: None)
        self.running = True
        self.consumer = Consumer(consumer_config(options.bootstrap, options.group_id, **{
            "partition.assignment.strategy": options.assignment_strategy,
            "client.id": f"{options.service}-{options.instance_id}",
            # Static membership: an instance restarted after a crash takes its partitions straight
            # back instead of waiting out the session timeout of its dead predecessor.
            "group.instance.id": f"{options.service}-{options.instance_id}"}))
        # A stable transactional id per instance: a restarted instance fences its zombie predecessor
        # and aborts whatever it left open.
        # Prefixed by the group (which carries the topic prefix): two deployments on one broker, say
        # a demo and a test run, must never fence each other's producers.
        if options.exactly_once:
            self.producer = Producer(transactional_producer_config(
                options.bootstrap, f"{options.group_id}-{options.instance_id}",
                **{"client.id": f"{options.service}-{options.instance_id}-tx"}))
        else:
            self.producer = Producer(producer_config(
                options.bootstrap, **{"client.id": f"{options.service}-{options.instance_id}"}))
        self._assigned: list[int] = []
        self._delivery_failed = False

    # --- rebalance -----------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Cooperative assignment hands over increments; eager hands over the whole set after a revoke.
        numbers = sorted({p.partition for p in partitions})
        self._assigned = sorted(set(self._assigned) | set(numbers))
        self._log("partitions_assigned", partitions=numbers)
        starts = self.handler.assigned(numbers) or {}
        for tp in partitions:
            if (tp.topic, tp.partition) in starts:
                tp.offset = starts[(tp.topic, tp.partition)]
        if self.o.assignment_strategy == "cooperative-sticky":
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = sorted({p.partition for p in partitions})
        self._log("partitions_revoked", partitions=numbers)
        self.handler.revoked(numbers)
        self._assigned = [p for p in self._assigned if p not in numbers]

    # --- loop ----------------------------------------------------------------------------------

    def stop(self, *_: object) -> None:
        self.running = False

    def run(self, max_seconds: float | None = None) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        if self.o.exactly_once:
            self.producer.init_transactions(30)
        self.consumer.subscribe(self.o.topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        next_idle_ms = 0
        deadline = time.monotonic() + max_seconds if max_seconds else None
        try:
            while self.running and (deadline is None or time.monotonic() < deadline):
                msgs = self._next_batch()
                now_ms = int(time.time() * 1000)
                idle_due = now_ms >= next_idle_ms and bool(self._assigned)
                if not msgs and not idle_due:
                    continue
                if idle_due:
                    next_idle_ms = now_ms + self.o.idle_interval_ms
                self._transact(msgs, now_ms if idle_due else None)
        finally:
            self._log("stopping")
            self.consumer.close()
            self.producer.flush(10)

    def _next_batch(self) -> list[Message]:
        """What is waiting, at once; else the first message to arrive, plus whatever came with it.
        consume(n, timeout) alone would wait out its whole timeout unless n messages arrived, adding
        that timeout to every request's latency at low rates."""
        msgs = self.consumer.consume(self.o.max_batch, 0)
        if msgs:
            return msgs
        if self.o.batch_linger_s > 0:
            return self.consumer.consume(self.o.max_batch, self.o.batch_linger_s)
        first = self.consumer.poll(self.o.poll_timeout_s)
        if first is None:
            return []
        return [first, *self.consumer.consume(self.o.max_batch - 1, 0)] if self.o.max_batch > 1 else [first]

    def _transact(self, msgs: list[Message], idle_now_ms: int | None) -> None:
        out = Outbox()
        offsets: dict[tuple[str, int], int] = {}
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    self._log("consume_error", error=str(err))
                continue
            offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
            try:
                self.handler.handle(msg, out)
            except LedgergateError as exc:
                self._dead_letter(msg, exc.code, exc.message, out)
            except Exception as exc:  # one poison message must not stop its partition
                self._dead_letter(msg, "internal_error", repr(exc), out)
        if idle_now_ms is not None:
            self.handler.idle(idle_now_ms, out)
        if not offsets and not out.records:
            return
        if not self.o.exactly_once:
            self._produce_then_commit(out, offsets)
            return
        try:
            self.producer.begin_transaction()
            for topic, key, value, headers, partition in out.records:
                self._produce(topic, key, value, headers, partition)
            if offsets:
                self.producer.send_offsets_to_transaction(
                    [TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                    self.consumer.consumer_group_metadata(), 30)
            self.producer.commit_transaction(30)
        except KafkaException as exc:
            kerr = exc.args[0]
            if kerr.txn_requires_abort():
                self._log("transaction_aborted", error=str(kerr))
                self.producer.abort_transaction(30)
                self._rewind()
                return
            raise

    def _produce_then_commit(self, out: Outbox, offsets: dict[tuple[str, int], int]) -> None:
        """At least once: offsets are committed only after every output is acknowledged, so a crash
        in between re-processes the batch (duplicates that downstream idempotency absorbs), never
        loses it."""
        for topic, key, value, headers, partition in out.records:
            self._produce(topic, key, value, headers, partition)
        undelivered = self.producer.flush(30)
        if undelivered or self._delivery_failed:
            raise KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT,
                                            f"{undelivered} outputs not acknowledged; not committing offsets"))
        if offsets:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                 asynchronous=True)

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._delivery_failed = True
            self._log("delivery_failed", error=str(err))

    def _produce(self, topic: str, key: bytes | None, value: bytes, headers: Headers | None,
                 partition: int | None) -> None:
        while True:
            try:
                if partition is None:
                    self.producer.produce(topic, value=value, key=key, headers=headers,
                                          on_delivery=self._on_delivery)
                else:
                    self.producer.produce(topic, value=value, key=key, headers=headers, partition=partition,
                                          on_delivery=self._on_delivery)
                return
            except BufferError:
                self.producer.poll(0.05)  # local queue full: let deliveries drain, then retry

    def _rewind(self) -> None:
        """After an abort the in-memory state may hold uncommitted entries: rebuild and re-read."""
        assignment = self.consumer.assignment()
        committed = self.consumer.committed(assignment, timeout=30)
        starts = self.handler.assigned(self._assigned) or {}
        for tp in committed:
            offset = starts.get((tp.topic, tp.partition), tp.offset if tp.offset >= 0 else 0)
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))

    def _dead_letter(self, msg: Message, code: str, message: str, out: Outbox) -> None:
        self._log("dead_lettered", topic=msg.topic(), partition=msg.partition(), offset=msg.offset(), error=code)
        envelope = codec().encode("DeadLetter", {
            "original_topic": msg.topic(), "original_partition": msg.partition(), "original_offset": msg.offset(),
            "original_key": msg.key(), "original_value": msg.value(), "error_code": code,
            "error_message": message[:2000], "service": self.o.service, "failed_at_ms": int(time.time() * 1000)})
        headers = [("original_topic", msg.topic().encode()), ("original_partition", str(msg.partition()).encode()),
                   ("original_offset", str(msg.offset()).encode()), ("error_code", code.encode()),
                   ("error", message[:500].encode())]
        out.emit(self.o.deadletter_topic, msg.key(), envelope, headers)
