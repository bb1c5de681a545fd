"""The one stream runtime on confluent-kafka that every consuming process runs: batch consume, handle,
and make the batch's outputs and input offsets durable together through the service's delivery
strategy (shared/kafka/delivery.py: a Kafka transaction, produce-then-commit, or offsets stored with
the rows in a sink), with the same loop, signals, rebalance handling, health and dead-letter path.

Why not faust here: the ledger's single writer and the audit hash chain need every output of a batch
and its input offsets to commit or abort together; see docs/decisions/0001-stream-runtime.md.

Errors, explicit:
- what a handler raises on a message goes to the service's error policy (shared/kafka/errorpolicy.py):
  retry it, dead-letter it in the batch's own delivery, let the policy record it and skip, or stop.
  The default dead-letters everything but a broken invariant (AssertionError), which stops the process
  with nothing of the batch committed; a fresh instance rebuilds from the topics;
- a delivery that rolls back (an aborted transaction, a sink outage) rebuilds the handler's state for
  the owned partitions and reads the input again from the delivery's positions;
- a fatal client error, or a commit that cannot finish by its deadline, is never swallowed: the loop
  stops and the process exits non-zero (FatalClientError) for its supervisor.

Zombies (an instance paused past its session, then woken) are fenced, under a transactional delivery,
by the group generation the broker checks on every transaction's offsets: idle work sends the owned
partitions' offsets too, a batch read outside the group commits nothing, and an assignment waits for a
predecessor's pending commit before the handler rebuilds (docs/decisions/0007-fencing-woken-zombies.md).

Group membership is dynamic. Static membership (group.instance.id) was tried so that a restarted
instance took its partitions straight back, but after a broker restart librdkafka rejoined with the
same instance id and a new member id and the coordinator fenced it as its own duplicate: FATAL
"Static consumer fenced by other consumer with same group.instance.id" and a gate that stopped
deciding (tests/e2e/test_broker_bounce.py reproduced it 1 of 1 on the router). A clean SIGTERM leaves
the group at once anyway; only after `kill -9` does the group wait out session.timeout.ms (10 s).
"""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from ledgergate.kafka_config import consumer_config
from ledgergate.shared import metrics
from ledgergate.shared.errors import FatalClientError
from ledgergate.shared.health import Health, on_stop_signal
from ledgergate.shared.kafka.deadletter import dead_letter
from ledgergate.shared.kafka.delivery import Context, Delivery, OffsetsInSink, ProduceThenCommit, Sink, Stopping
from ledgergate.shared.kafka.errorpolicy import (
    ATTEMPTS_MAX,
    DeadLetter,
    ErrorPolicy,
    Retry,
    Skip,
    dead_letter_first,
    error_code,
)
from ledgergate.shared.kafka.fatal import ClientErrors, input_waiting
from ledgergate.shared.kafka.fence import generation_of
from ledgergate.shared.kafka.options import RuntimeOptions, options_for
from ledgergate.shared.kafka.outbox import Handler, Outbox
from ledgergate.shared.kafka.reader import offset_of, partition_of, topic_of
from ledgergate.shared.kafka.transaction import KafkaTransaction
from ledgergate.shared.redaction import redact_bytes
from ledgergate.shared.settings import ServiceSettings

CLOSE_TIMEOUT_MS = 30_000


class _Silent:
    """The log of a runtime given none (benchmark relays)."""

    def info(self, *_a: object, **_k: object) -> None:
        pass

    debug = warning = error = critical = info


def run_service(service: str, settings: ServiceSettings, handler: Handler, input_topics: list[str],
                log: Any, on_error: ErrorPolicy = dead_letter_first, sink: Sink | None = None,
                **overrides: Any) -> None:
    options = options_for(service, settings, input_topics, **overrides)
    metrics.configure(service, settings)
    StreamRuntime(options, handler, log, on_error=on_error, sink=sink).run()


class StreamRuntime:
    def __init__(self, options: RuntimeOptions, handler: Handler, log: Any = None,
                 on_error: ErrorPolicy = dead_letter_first, sink: Sink | None = None) -> None:
        assert (sink is not None) == (options.delivery == "offsets-in-sink"), "a sink is what offsets-in-sink needs"
        self.options = options
        self.handler = handler
        self.on_error = on_error
        self.log = log if log is not None else _Silent()
        self.running = True
        self.health = Health(options.service, options.stall_after_ms)
        # Before the clients exist: their threads must inherit the blocked stop signals.
        on_stop_signal(self.stop, options.shutdown_timeout_ms, self.log)
        self.errors = ClientErrors(options.service, self.health, self.log)
        self.consumer = Consumer(consumer_config(options.connection, options.group_id, **{
            "partition.assignment.strategy": options.assignment_strategy,
            "client.id": f"{options.service}-{options.instance_id}", "error_cb": self.errors.on_error,
            **metrics.consumer_options(options.group_id, options.statistics_interval_ms),
            **options.consumer_overrides}))
        ctx = Context(options, self.health, self.errors, self.log, self.consumer, lambda: self.running)
        self.delivery: Delivery
        if options.delivery == "kafka-transaction":
            self.delivery = KafkaTransaction(ctx)
        elif options.delivery == "produce-then-commit":
            self.delivery = ProduceThenCommit(ctx)
        else:
            assert sink is not None
            self.delivery = OffsetsInSink(ctx, sink)
        self._owned: set[tuple[str, int]] = set()
        # The next offset of every owned input partition, as committed (or as the handler's fold resumes):
        # a transaction with outputs but no input of its own (idle work: expiry) sends these, so the broker
        # checks its group generation like any other, and a woken zombie's idle work is fenced too.
        self._next_offsets: dict[tuple[str, int], int] = {}
        self._ended_cleanly = False

    @property
    def _assigned(self) -> list[int]:
        """The owned partition numbers (co-partitioned across the input topics under range assignment)."""
        return sorted({p for _, p in self._owned})

    # --- rebalance -----------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Cooperative assignment hands over increments; eager hands over the whole set after a revoke.
        numbers = sorted({p.partition for p in partitions})
        self._owned |= {(tp.topic, tp.partition) for tp in partitions}
        self.log.info("partitions_assigned", partitions=numbers, **self._increment(partitions))
        committed = self.delivery.positions(partitions)
        if committed is None:
            return  # recorded as fatal: the loop raises it (an exception raised in a callback is mangled)
        starts = self.handler.assigned(numbers) or {}
        self._remember_offsets(committed, starts)
        for tp in partitions:
            key = (tp.topic, tp.partition)
            # Where the handler's fold resumes; else, for a sink, the offset stored with its rows. Kafka's
            # committed offsets are left to the consumer to fetch (it waits out unstable ones itself).
            if key in starts:
                tp.offset = starts[key]
            elif self.delivery.seeks_to_positions:
                tp.offset = self._next_offsets[key]
        if self.options.assignment_strategy == "cooperative-sticky":
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)

    def _increment(self, partitions: list[TopicPartition]) -> dict[str, list[str]]:
        """Cooperative assignment moves partitions of each topic on their own: name them for the log."""
        if self.options.assignment_strategy != "cooperative-sticky":
            return {}
        return {"topic_partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in partitions)}

    def _remember_offsets(self, committed: list[TopicPartition], starts: dict[tuple[str, int], int]) -> None:
        for tp in committed:
            key = (tp.topic, tp.partition)
            # Never committed: 0 reads the same as auto.offset.reset=earliest (and fences idle work).
            self._next_offsets[key] = starts.get(key, tp.offset if tp.offset >= 0 else 0)
        for key, offset in starts.items():
            self._next_offsets.setdefault(key, offset)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = sorted({p.partition for p in partitions})
        self.log.info("partitions_revoked", partitions=numbers, **self._increment(partitions))
        self.delivery.forget(partitions)  # first: what is staged commits (or aborts) while they are ours
        self.handler.revoked(numbers)
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._owned -= gone
        self._next_offsets = {k: v for k, v in self._next_offsets.items() if k not in gone}

    def _rewind(self) -> None:
        """After a rollback the in-memory state may hold what never committed: rebuild and read again."""
        owned = [TopicPartition(t, p) for t, p in sorted(self._owned)]
        committed = self.delivery.positions(owned)
        if committed is None:
            return  # recorded as fatal: the loop raises it before anything else commits
        self._remember_offsets(committed, self.handler.assigned(self._assigned) or {})
        tps = [TopicPartition(t, p, self._next_offsets[(t, p)]) for t, p in sorted(self._owned)
               if (t, p) in self._next_offsets]
        if self.options.assignment_strategy == "cooperative-sticky":
            # Unassign + assign rather than seek: seek() fails before a partition's first fetch.
            self.consumer.incremental_unassign([TopicPartition(tp.topic, tp.partition) for tp in tps])
            self.consumer.incremental_assign(tps)
        else:
            for tp in tps:
                self.consumer.seek(tp)

    # --- loop ----------------------------------------------------------------------------------

    def stop(self, *_: object) -> None:
        self.running = False

    def run(self, max_seconds: float | None = None) -> None:
        # A stream service consumes whatever is consumable at once; input that waits twice the
        # readiness window is a stuck consumer (or an upstream transaction left open), and a fresh
        # instance fetches again (docs/decisions/0004). A service that waits on a store of its own
        # (the projector on PostgreSQL) reports that through readiness instead.
        stalled_exit_ms = 2 * self.options.stall_after_ms if self.options.stalled_exit else None
        self.health.start_watchdog(self.log, stalled_exit_ms=stalled_exit_ms)
        if self.options.health_port:
            self.health.serve(self.options.health_host, self.options.health_port)
        # The first line of each life: log readers (the tests' ownership tracking) start over here.
        self.log.info("stream_starting", delivery=self.options.delivery, topics=self.options.topics,
                      instance=self.options.instance_id)
        try:
            self.delivery.start()
            self.consumer.subscribe(self.options.topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                    on_lost=self._on_revoke)
            self._loop(max_seconds)
            self._ended_cleanly = True
        except Stopping as exc:
            self.log.warning("stopped_mid_batch", step=str(exc),
                             note="nothing of the batch committed; its input is read again")
        except KafkaException as exc:  # a client call failed in a way nothing above handles
            self.health.failed(str(exc.args[0]))
            self.log.error("exiting_for_restart", error=str(exc.args[0]))
            raise FatalClientError(f"{self.options.service}: Kafka client error: {exc.args[0]}") from exc
        except FatalClientError as exc:
            self.health.failed(exc.message)
            self.log.error("exiting_for_restart", error=exc.message)
            raise
        except AssertionError as exc:
            self.health.failed(f"invariant broken: {exc}")
            self.log.critical("invariant_broken", error=str(exc), note="nothing of the open batch commits")
            raise
        finally:
            self.log.info("stopping")
            self._close()

    def _loop(self, max_seconds: float | None) -> None:
        next_idle_ms = 0
        deadline = time.monotonic() + max_seconds if max_seconds else None
        while self.running and (deadline is None or time.monotonic() < deadline):
            self.errors.check()
            msgs = self._next_batch()
            now_ms = int(time.time() * 1000)
            idle_due = now_ms >= next_idle_ms
            if idle_due:
                next_idle_ms = now_ms + self.options.idle_interval_ms
                self.health.backlog_is(input_waiting(self.consumer))
                self.health.detail = {"partitions": self._assigned}
            else:
                self.health.turned()
            if msgs or (idle_due and self._owned):
                self._batch(msgs, now_ms if idle_due and self._owned else None)
            if not self.delivery.flush(force=False):  # staged batches whose commit interval is up
                self._rewind()

    def _close(self) -> None:
        """Commit what is staged (only after a clean stop: after a failure, what is open is the next
        instance's to complete or abort), leave the group (partitions move at once) and flush."""
        if self._ended_cleanly:
            try:
                self.delivery.flush(force=True)
            except (FatalClientError, Stopping, KafkaException) as exc:
                self.log.warning("final_commit_failed", error=str(exc), note="the next instance reads it again")
        try:
            with self.health.call("consumer_close", CLOSE_TIMEOUT_MS):
                self.consumer.close()
        except (KafkaException, RuntimeError) as exc:
            self.log.warning("consumer_close_failed", error=str(exc))
        self.delivery.close()

    def _next_batch(self) -> list[Message]:
        """What is waiting, at once; else the first message to arrive, plus whatever came with it.
        consume(n, timeout) alone would wait out its whole timeout unless n messages arrived, adding
        that timeout to every request's latency at low rates."""
        msgs = self.consumer.consume(self.options.max_batch, 0)
        if msgs:
            return msgs
        if self.options.batch_linger_s > 0:
            return self.consumer.consume(self.options.max_batch, self.options.batch_linger_s)
        first = self.consumer.poll(self.options.poll_timeout_s)
        if first is None:
            return []
        return [first, *self.consumer.consume(self.options.max_batch - 1, 0)] if self.options.max_batch > 1 else [first]

    def _batch(self, msgs: list[Message], idle_now_ms: int | None) -> None:
        transactional = self.delivery.transactional
        # The group generation the batch was read under: a rebalance while it is handled makes the broker
        # refuse its offsets (and the transaction aborts), instead of committing them under a newer one.
        group = self.consumer.consumer_group_metadata() if transactional else None
        out = Outbox()
        offsets: dict[tuple[str, int], int] = {}
        for msg in msgs:
            err = msg.error()
            if err is not None:
                self.errors.consumed_error(err)
                continue
            key = (topic_of(msg), partition_of(msg))
            if key not in self._owned:
                continue  # fetched before a revoke: its new owner reads it from the committed offset
            offsets[key] = offset_of(msg) + 1
            self._handle(msg, out)
        if idle_now_ms is not None:
            self.handler.idle(idle_now_ms, out)
        if not offsets and not out.records and not out.early:
            self.health.turned()
            return
        metrics.observe_batch(len(msgs))
        if transactional and generation_of(group) < 0:
            # Read while this instance was not a member of its group: a zombie woken after its session
            # expired, whose client has already dropped its generation. The broker would take offsets sent
            # under no generation (it cannot tell them from a standalone producer's), so nothing of the batch
            # may commit: the state it changed is rebuilt and the input read again, if still ours.
            self.log.warning("batch_outside_group", messages=len(msgs), note="not committed; state rebuilt")
            self.delivery.discard()
            self._rewind()
            return
        if transactional and out.records and not offsets:
            # Idle work only: fence it with the owned partitions' offsets (see _next_offsets).
            offsets = dict(self._next_offsets)
            assert offsets, "an idle transaction with outputs but no owned partition to fence it with"
        if self.delivery.commit(out, offsets, group):
            self._next_offsets.update(offsets)
            if offsets:
                self.health.progressed()
        else:
            self._rewind()

    def _handle(self, msg: Message, out: Outbox) -> None:
        """The handler on one message; what it raises goes to the error policy."""
        attempt = 1
        while True:
            try:
                self.handler.handle(msg, out)
                return
            except Exception as exc:  # every exception meets the policy; the default stops on AssertionError
                verdict = self.on_error(msg, exc, attempt)
                if isinstance(verdict, Retry) and attempt < ATTEMPTS_MAX:
                    self._wait(verdict.after_ms)
                    attempt += 1
                    continue
                if isinstance(verdict, Skip):
                    return
                if isinstance(verdict, DeadLetter | Retry):
                    self._dead_letter(msg, exc, verdict.note if isinstance(verdict, DeadLetter) else "", out)
                    return
                # Stop: nothing of this batch may commit. An AssertionError is a broken invariant (the
                # ledger asserts its pre- and postconditions): the state in memory can no longer be
                # trusted; a fresh instance aborts what is open and rebuilds its state from the topics.
                raise

    def _wait(self, wait_ms: int) -> None:
        """A retry's wait: the loop stays visibly alive, and a SIGTERM ends it with the batch uncommitted."""
        until_ms = time.monotonic_ns() // 1_000_000 + wait_ms
        while (left_ms := until_ms - time.monotonic_ns() // 1_000_000) > 0:
            if not self.running:
                raise Stopping("retry_wait")
            self.health.turned()
            time.sleep(min(left_ms, 200) / 1000)

    def _redacted(self, msg: Message) -> bytes | None:
        """The message's bytes after its tenant's redaction, when the handler knows the tenant's patterns
        (an optional `redaction_for(msg) -> patterns` on the handler); None keeps them as they are."""
        redaction_for = getattr(self.handler, "redaction_for", None)
        value = msg.value()
        if redaction_for is None or not value:
            return None
        try:
            patterns = redaction_for(msg)
            return redact_bytes(value, patterns) if patterns else None
        except Exception as exc:  # never lose the dead letter over its redaction: withhold the text
            self.log.error("redaction_failed", topic=msg.topic(), partition=msg.partition(), offset=msg.offset(),
                           error=repr(exc)[:200])
            return b""

    def _dead_letter(self, msg: Message, exc: Exception, note: str, out: Outbox) -> None:
        code, message = error_code(exc)
        self.log.info("dead_lettered", topic=msg.topic(), partition=msg.partition(), offset=msg.offset(), error=code)
        metrics.dead_lettered(code)
        envelope, headers = dead_letter(msg, self.options.service, code, f"{note}{message}", self._redacted(msg))
        out.emit(self.options.deadletter_topic, msg.key(), envelope, headers)
