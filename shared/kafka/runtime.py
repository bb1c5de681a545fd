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
- an AssertionError is not input's fault but a broken invariant: the process stops at once, leaving the
  batch's transaction uncommitted, and a fresh instance rebuilds from the topics;
- a Kafka transaction error that is abortable aborts, asks the handler to rebuild its state for the
  assigned partitions, and rewinds to the committed offsets; a retriable one (the broker is away) is
  retried until `commit_deadline_ms`;
- a fatal client error (fenced producer, any error librdkafka calls fatal) or a commit that cannot
  finish by its deadline is never swallowed: the loop stops and the process exits non-zero
  (FatalClientError), so its supervisor starts a fresh instance that fences this one's transactional
  id, aborts what it left open and rebuilds its state from the topics.

Zombies (an instance paused past its session, then woken) are fenced by the group generation the
broker checks on every transaction's offsets: idle work sends the owned partitions' offsets too, a batch
read outside the group commits nothing, and an assignment waits for a predecessor's pending commit
before the handler rebuilds (docs/decisions/0007-fencing-woken-zombies.md).

Group membership is dynamic. Static membership (group.instance.id) was tried so that a restarted
instance took its partitions straight back, but after a broker restart librdkafka rejoined with the
same instance id and a new member id and the coordinator fenced it as its own duplicate: FATAL
"Static consumer fenced by other consumer with same group.instance.id" and a gate that stopped
deciding (tests/e2e/test_broker_bounce.py reproduced it 1 of 1 on the router). A clean SIGTERM leaves
the group at once anyway; only after `kill -9` does the group wait out session.timeout.ms (10 s).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from ledgergate.errors import LedgergateError
from ledgergate.kafka_config import consumer_config, producer_config, transactional_producer_config
from ledgergate.shared.errors import FatalClientError
from ledgergate.shared.health import Health, on_stop_signal
from ledgergate.shared.kafka.deadletter import dead_letter
from ledgergate.shared.kafka.fatal import ClientErrors, input_waiting
from ledgergate.shared.kafka.fence import generation_of
from ledgergate.shared.kafka.headers import Headers
from ledgergate.shared.kafka.options import RuntimeOptions, options_for
from ledgergate.shared.kafka.outbox import Handler, Outbox, Record
from ledgergate.shared.kafka.reader import offset_of, partition_of, topic_of
from ledgergate.shared.settings import ServiceSettings

# Each blocking transaction call waits at most CALL_TIMEOUT_S and is retried while the broker is
# away. A call still blocked CALL_GRACE_MS past its timeout (seen after a broker restart: a
# commit_transaction that never returned) ends the process for a fresh instance (shared/health.py).
CALL_TIMEOUT_S = 5.0
# A commit is never retried in place (see _commit_transaction), so it may wait longer: an outage
# shorter than this costs no restart.
COMMIT_TIMEOUT_S = 15.0
CALL_GRACE_MS = 5_000


class _Stopping(Exception):
    """SIGTERM arrived while a transaction call was waiting for an absent broker: leave the
    transaction open (the next instance's init_transactions aborts it) and end cleanly."""


class _Silent:
    """The log of a runtime given none (benchmark relays)."""

    def info(self, *_a: object, **_k: object) -> None:
        pass

    warning = error = critical = info


def run_service(service: str, settings: ServiceSettings, handler: Handler, input_topics: list[str],
                log: Any, **overrides: Any) -> None:
    options = options_for(service, settings, input_topics, **overrides)
    TransactionalRuntime(options, handler, log).run()


class TransactionalRuntime:
    def __init__(self, options: RuntimeOptions, handler: Handler, log: Any = None) -> None:
        self.options = options
        self.handler = handler
        self.log = log if log is not None else _Silent()
        self.running = True
        self.health = Health(options.service, options.stall_after_ms)
        # Before the clients exist: their threads must inherit the blocked stop signals.
        on_stop_signal(self.stop, options.shutdown_timeout_ms, self.log)
        self.errors = ClientErrors(options.service, self.health, self.log)
        self.consumer = Consumer(consumer_config(options.bootstrap, options.group_id, **{
            "partition.assignment.strategy": options.assignment_strategy,
            "client.id": f"{options.service}-{options.instance_id}", "error_cb": self.errors.on_error}))
        # A stable transactional id per instance: a restarted instance fences its zombie predecessor
        # and aborts whatever it left open.
        # Prefixed by the group (which carries the topic prefix): two deployments on one broker, say
        # a demo and a test run, must never fence each other's producers.
        if options.exactly_once:
            self.producer = Producer(transactional_producer_config(
                options.bootstrap, f"{options.group_id}-{options.instance_id}",
                **{"client.id": f"{options.service}-{options.instance_id}-tx", "error_cb": self.errors.on_error}))
        else:
            self.producer = Producer(producer_config(
                options.bootstrap, **{"client.id": f"{options.service}-{options.instance_id}",
                                      "error_cb": self.errors.on_error}))
        # Early records (Outbox.emit_early) go out on their own idempotent producer, made on first use:
        # only a service that has them pays for the connection.
        self._early_producer: Producer | None = None
        self._assigned: list[int] = []
        # The next offset of every owned input partition, as committed (or as the handler's fold resumes):
        # a transaction with outputs but no input of its own (idle work: expiry) sends these, so the broker
        # checks its group generation like any other, and a woken zombie's idle work is fenced too.
        self._next_offsets: dict[tuple[str, int], int] = {}
        self._delivery_failed = False

    # --- rebalance -----------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Cooperative assignment hands over increments; eager hands over the whole set after a revoke.
        numbers = sorted({p.partition for p in partitions})
        self._assigned = sorted(set(self._assigned) | set(numbers))
        self.log.info("partitions_assigned", partitions=numbers)
        committed = self._await_stable_offsets(consumer, partitions) if self.options.exactly_once else []
        if committed is None:
            return  # recorded as fatal: the loop raises it (an exception raised in a callback is mangled)
        starts = self.handler.assigned(numbers) or {}
        self._remember_offsets(committed, starts)
        for tp in partitions:
            if (tp.topic, tp.partition) in starts:
                tp.offset = starts[(tp.topic, tp.partition)]
        if self.options.assignment_strategy == "cooperative-sticky":
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)

    def _remember_offsets(self, committed: list[TopicPartition], starts: dict[tuple[str, int], int]) -> None:
        for tp in committed:
            key = (tp.topic, tp.partition)
            # Never committed: 0 reads the same as auto.offset.reset=earliest.
            self._next_offsets[key] = starts.get(key, tp.offset if tp.offset >= 0 else 0)

    def _await_stable_offsets(self, consumer: Consumer,
                              partitions: list[TopicPartition]) -> list[TopicPartition] | None:
        """Rebuild nothing while a predecessor's transaction on these partitions may still commit.

        A zombie paused after send_offsets_to_transaction and before commit_transaction can still commit
        when it wakes: the broker checks the group generation when the offsets are sent (KIP-447), not at
        the commit. State rebuilt before that commit resolves misses the zombie's outputs, and decisions
        taken on it overspend (tests/e2e/test_zombie.py caught exactly that). A read_committed consumer's
        committed() waits while such a transactional offset commit is pending (RequireStable), so once it
        answers, the zombie's batch is committed (and the rebuild reads it) or aborted (and is read again).
        The wait is bounded by the predecessor's transaction.timeout.ms, after which the broker aborts.
        The committed offsets; None (the error recorded as fatal) when they stay unreadable past
        commit_deadline_ms."""
        deadline_ms = _mono_ms() + self.options.commit_deadline_ms
        while True:
            try:
                with self.health.call("committed", int(CALL_TIMEOUT_S * 1000) + CALL_GRACE_MS):
                    return list(consumer.committed(partitions, timeout=CALL_TIMEOUT_S))
            except KafkaException as exc:
                kerr = exc.args[0]
                waiting = kerr.code() in (KafkaError._TIMED_OUT, KafkaError.UNSTABLE_OFFSET_COMMIT) or kerr.retriable()
                if kerr.fatal() or not waiting or _mono_ms() >= deadline_ms or not self.running:
                    self.log.error("offsets_unreadable", error=str(kerr))
                    self.errors.record(kerr)
                    return None
                self.health.turned()
                self.log.warning("offsets_unstable", partitions=sorted({tp.partition for tp in partitions}),
                                 error=str(kerr), note="a predecessor's transaction may still commit; waiting")
                time.sleep(0.1)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = sorted({p.partition for p in partitions})
        self.log.info("partitions_revoked", partitions=numbers)
        self.handler.revoked(numbers)
        self._assigned = [p for p in self._assigned if p not in numbers]
        self._next_offsets = {k: v for k, v in self._next_offsets.items() if k[1] not in numbers}

    # --- loop ----------------------------------------------------------------------------------

    def stop(self, *_: object) -> None:
        self.running = False

    def run(self, max_seconds: float | None = None) -> None:
        # A stream service consumes whatever is consumable at once; input that waits twice the
        # readiness window is a stuck consumer (or an upstream transaction left open), and a fresh
        # instance fetches again (docs/decisions/0004).
        self.health.start_watchdog(self.log, stalled_exit_ms=2 * self.options.stall_after_ms)
        if self.options.health_port:
            self.health.serve(self.options.health_host, self.options.health_port)
        if self.options.exactly_once:
            try:
                with self.health.call("init_transactions", 30_000 + CALL_GRACE_MS):
                    self.producer.init_transactions(30)
            except KafkaException as exc:  # no broker within 30 s: let the supervisor try again
                raise FatalClientError(
                    f"{self.options.service}: cannot initialise transactions: {exc.args[0]}") from exc
        self.consumer.subscribe(self.options.topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)
        next_idle_ms = 0
        deadline = time.monotonic() + max_seconds if max_seconds else None
        try:
            while self.running and (deadline is None or time.monotonic() < deadline):
                self.errors.check()
                msgs = self._next_batch()
                now_ms = int(time.time() * 1000)
                idle_due = now_ms >= next_idle_ms
                if idle_due:
                    next_idle_ms = now_ms + self.options.idle_interval_ms
                    self._check_backlog()
                else:
                    self.health.turned()
                if not msgs and not (idle_due and self._assigned):
                    continue
                self._transact(msgs, now_ms if idle_due and self._assigned else None)
        except _Stopping as exc:
            self.log.warning("stopped_mid_transaction", step=str(exc),
                             note="the next instance aborts the open transaction; its input is read again")
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
            self.log.critical("invariant_broken", error=str(exc), note="nothing of the open transaction commits")
            raise
        finally:
            self.log.info("stopping")
            self._close()

    def _close(self) -> None:
        """Leave the group (partitions move at once) and flush; after a fatal error either may fail."""
        try:
            with self.health.call("consumer_close", 30_000):
                self.consumer.close()
        except (KafkaException, RuntimeError) as exc:
            self.log.warning("consumer_close_failed", error=str(exc))
        if self._early_producer is not None:
            self._early_producer.flush(5)  # unacknowledged early records are written again by the next instance
        if self.options.exactly_once and self.errors.fatal is None:
            return  # nothing outside a transaction is queued; an open one is aborted by the next instance
        self.producer.flush(5)

    def _check_backlog(self) -> None:
        self.health.backlog_is(input_waiting(self.consumer))
        self.health.detail = {"partitions": list(self._assigned)}

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

    def _transact(self, msgs: list[Message], idle_now_ms: int | None) -> None:
        # The group generation the batch was read under: a rebalance while it is handled makes the broker
        # refuse its offsets (and the transaction aborts), instead of committing them under a newer one.
        group = self.consumer.consumer_group_metadata() if self.options.exactly_once else None
        out = Outbox()
        offsets: dict[tuple[str, int], int] = {}
        for msg in msgs:
            err = msg.error()
            if err is not None:
                self.errors.consumed_error(err)
                continue
            offsets[(topic_of(msg), partition_of(msg))] = offset_of(msg) + 1
            try:
                self.handler.handle(msg, out)
            except AssertionError:
                # A broken invariant (the ledger asserts its pre- and postconditions): the state in memory can
                # no longer be trusted, so nothing of this batch may commit. Crash; a fresh instance aborts
                # the open transaction and rebuilds its state from the topics.
                raise
            except LedgergateError as exc:
                self._dead_letter(msg, exc.code, exc.message, out)
            except Exception as exc:  # one poison message must not stop its partition
                self._dead_letter(msg, "internal_error", repr(exc), out)
        if idle_now_ms is not None:
            self.handler.idle(idle_now_ms, out)
        if not offsets and not out.records:
            self.health.turned()
            return
        if self.options.exactly_once and generation_of(group) < 0:
            # Read while this instance was not a member of its group: a zombie woken after its session
            # expired, whose client has already dropped its generation. The broker would take offsets sent
            # under no generation (it cannot tell them from a standalone producer's), so nothing of the batch
            # may commit: the state it changed is rebuilt and the input read again, if still ours.
            self.log.warning("batch_outside_group", messages=len(msgs), note="not committed; state rebuilt")
            self._rewind()
            return
        if self.options.exactly_once and out.records and not offsets:
            # Idle work only: fence it with the owned partitions' offsets (see _next_offsets).
            offsets = dict(self._next_offsets)
            assert offsets, "an idle transaction with outputs but no owned partition to fence it with"
        if not self.options.exactly_once:
            out.records[:0] = out.early
            self._produce_then_commit(out, offsets)
        else:
            if out.early:
                self._produce_early(out.early)
            if self._commit_transaction(out, offsets, group, early=bool(out.early)):
                self._next_offsets.update(offsets)
        if offsets:
            self.health.progressed()

    def _produce_early(self, records: list[Record]) -> None:
        if self._early_producer is None:
            self._early_producer = Producer(producer_config(self.options.bootstrap, **{
                "linger.ms": 0, "client.id": f"{self.options.service}-{self.options.instance_id}-early",
                "error_cb": self.errors.on_error}))
        for topic, key, value, headers, partition in records:
            self._produce(topic, key, value, headers, partition, self._early_producer)
        self._early_producer.poll(0)

    def _await_early(self, deadline_ms: int) -> None:
        """Every early record acknowledged, or no commit: the input offsets must not move past a record that
        was never written (the next instance reads the batch again and writes it)."""
        assert self._early_producer is not None
        self._await_acks(self._early_producer, deadline_ms, "flush_early", "early outputs", "the batch")

    def _await_acks(self, producer: Producer, deadline_ms: int, step: str, what: str, withheld: str) -> None:
        """Wait until `producer` has every record acknowledged; while the broker is away deliveries wait
        (message.timeout.ms), and the loop stays visibly alive. A SIGTERM meanwhile ends it without the
        commit (the batch is read again); a failed delivery or the deadline is fatal, the commit withheld."""
        undelivered = producer.flush(0.001)
        while undelivered and not self._delivery_failed and _mono_ms() < deadline_ms and self.errors.fatal is None:
            if not self.running:
                raise _Stopping(step)
            self.health.turned()
            undelivered = producer.flush(0.5)
        self.errors.check()
        if undelivered or self._delivery_failed:
            raise FatalClientError(f"{self.options.service}: {undelivered} {what} not acknowledged "
                                   f"(delivery failed: {self._delivery_failed}); not committing {withheld}")

    def _commit_transaction(self, out: Outbox, offsets: dict[tuple[str, int], int], group: object,
                            early: bool = False) -> bool:
        """One transaction for the batch's outputs and input offsets. While the broker is away
        send_offsets and abort time out with retriable errors and are retried until the deadline. A
        commit is not: once it has timed out its outcome is the broker's to settle, so the process
        exits and a fresh instance's init_transactions completes or aborts it, then rebuilds from
        what was really committed (measured: one broker bounce in eight left requests undecided
        while a timed-out commit was retried in place). An abortable error aborts and rewinds;
        anything else is fatal."""
        deadline_ms = _mono_ms() + self.options.commit_deadline_ms
        try:
            self.producer.begin_transaction()
            for topic, key, value, headers, partition in out.records:
                self._produce(topic, key, value, headers, partition)
            if offsets:
                tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
                self._retrying("send_offsets", deadline_ms,
                               lambda: self.producer.send_offsets_to_transaction(tps, group, CALL_TIMEOUT_S))
            if early:
                self._await_early(deadline_ms)
            self._retrying("commit", deadline_ms, lambda: self.producer.commit_transaction(COMMIT_TIMEOUT_S),
                           retry=False)
            return True
        except KafkaException as exc:
            kerr = exc.args[0]
            if not kerr.txn_requires_abort() or kerr.fatal():
                raise FatalClientError(f"{self.options.service}: transaction failed: {kerr}") from exc
            self.log.warning("transaction_aborted", error=str(kerr))
            self._retrying("abort", deadline_ms, lambda: self.producer.abort_transaction(CALL_TIMEOUT_S))
            self._rewind()
            return False

    def _retrying(self, what: str, deadline_ms: int, call: Callable[[], None], retry: bool = True) -> None:
        timeout_s = CALL_TIMEOUT_S if retry else COMMIT_TIMEOUT_S
        while True:
            try:
                with self.health.call(what, int(timeout_s * 1000) + CALL_GRACE_MS):
                    call()
                return
            except KafkaException as exc:
                kerr = exc.args[0]
                if not kerr.retriable() or kerr.fatal() or kerr.txn_requires_abort():
                    raise
                if not self.running:
                    raise _Stopping(what) from exc
                if not retry:
                    raise FatalClientError(f"{self.options.service}: {what} timed out, its outcome is left to the "
                                           f"next instance: {kerr}") from exc
                if _mono_ms() >= deadline_ms:
                    raise FatalClientError(f"{self.options.service}: {what} not done within "
                                           f"{self.options.commit_deadline_ms} ms: {kerr}") from exc
                self.health.turned()  # waiting on the broker, not wedged
                self.log.warning("transaction_retry", step=what, error=str(kerr))

    def _produce_then_commit(self, out: Outbox, offsets: dict[tuple[str, int], int]) -> None:
        """At least once: offsets are committed only after every output is acknowledged, so a crash
        in between re-processes the batch (duplicates that downstream idempotency absorbs), never
        loses it."""
        for topic, key, value, headers, partition in out.records:
            self._produce(topic, key, value, headers, partition)
        # Offsets stay where they were until every output is acknowledged: a stop or a failure re-reads the
        # batch (at least once).
        self._await_acks(self.producer, _mono_ms() + self.options.commit_deadline_ms, "flush", "outputs", "offsets")
        if offsets:
            try:
                self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                     asynchronous=True)
            except KafkaException as exc:  # no coordinator right now: the next batch's commit covers it
                self.log.warning("offset_commit_failed", error=str(exc.args[0]))

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._delivery_failed = True
            self.log.info("delivery_failed", error=str(err))

    def _produce(self, topic: str, key: bytes | None, value: bytes, headers: Headers | None,
                 partition: int | None, producer: Producer | None = None) -> None:
        producer = producer or self.producer
        while True:
            try:
                if partition is None:
                    producer.produce(topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery)
                else:
                    producer.produce(topic, value=value, key=key, headers=headers, partition=partition,
                                     on_delivery=self._on_delivery)
                return
            except BufferError:
                self.errors.check()
                self.health.turned()
                producer.poll(0.05)  # local queue full: let deliveries drain, then retry

    def _rewind(self) -> None:
        """After an abort the in-memory state may hold uncommitted entries: rebuild and re-read."""
        committed = self._await_stable_offsets(self.consumer, self.consumer.assignment())
        if committed is None:
            return  # recorded as fatal: the loop raises it before anything else commits
        self._remember_offsets(committed, self.handler.assigned(self._assigned) or {})
        for tp in committed:
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, self._next_offsets[(tp.topic, tp.partition)]))

    def _dead_letter(self, msg: Message, code: str, message: str, out: Outbox) -> None:
        self.log.info("dead_lettered", topic=msg.topic(), partition=msg.partition(), offset=msg.offset(), error=code)
        envelope, headers = dead_letter(msg, self.options.service, code, message)
        out.emit(self.options.deadletter_topic, msg.key(), envelope, headers)


def _mono_ms() -> int:
    return time.monotonic_ns() // 1_000_000
