"""Exactly once on Kafka: a batch's outputs and its input offsets in one transaction
(consume-transform-produce, KIP-447), the delivery of the budget-manager and the router.

- a transaction error that is abortable aborts; the runtime then rebuilds the handler's state and reads
  the input again from the committed offsets; a retriable one (the broker is away) is retried until
  `commit_deadline_ms`;
- a fatal client error (fenced producer, any error librdkafka calls fatal) or a commit that cannot
  finish by its deadline is never swallowed: FatalClientError, the process exits non-zero, and a fresh
  instance fences this one's transactional id, aborts what it left open and rebuilds from the topics;
- early records (Outbox.emit_early) are produced at once on an idempotent producer and acknowledged
  before the commit (docs/decisions/0006-one-commit-on-the-way.md);
- an assignment waits for a predecessor's pending offset commit before anything is rebuilt
  (docs/decisions/0007-fencing-woken-zombies.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from ledgergate.kafka_config import TRANSACTION_TIMEOUT_MS, consumer_config, transactional_producer_config
from ledgergate.shared import metrics
from ledgergate.shared.errors import FatalClientError
from ledgergate.shared.kafka.delivery import Context, Offsets, Producing, Stopping, mono_ms
from ledgergate.shared.kafka.outbox import Outbox

# Each blocking transaction call waits at most CALL_TIMEOUT_S and is retried while the broker is
# away. A call still blocked CALL_GRACE_MS past its timeout (seen after a broker restart: a
# commit_transaction that never returned) ends the process for a fresh instance (shared/health.py).
CALL_TIMEOUT_S = 5.0
# A commit is never retried in place (see commit), so it may wait longer: an outage shorter than this
# costs no restart.
COMMIT_TIMEOUT_S = 15.0
CALL_GRACE_MS = 5_000
INIT_TIMEOUT_S = 30
# An offset commit still pending this long after the wait began outlived every live transaction.
HANGING_AFTER_MS = TRANSACTION_TIMEOUT_MS + 10_000
# A transaction step that took this long is logged: the first decision after a restart names its slow part.
SLOW_CALL_MS = 200


class KafkaTransaction:
    transactional = True

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        o = ctx.options
        self.out = Producing(ctx)
        # A stable transactional id per instance: a restarted instance fences its zombie predecessor and
        # aborts whatever it left open. Prefixed by the group (which carries the topic prefix): two
        # deployments on one broker, say a demo and a test run, must never fence each other's producers.
        self.producer = Producer(transactional_producer_config(
            o.connection, f"{o.group_id}-{o.instance_id}",
            **{"client.id": f"{o.service}-{o.instance_id}-tx", "error_cb": ctx.errors.on_error}))
        # Only a service that has early records pays for the connection: made at start when the options
        # say it has them, else on first use.
        self._early: Producer | None = None
        # The consumer fetches committed offsets itself (waiting out unstable ones), unless the last
        # `positions` had to read past a hanging offset commit: then it must start where they say.
        self.seeks_to_positions = False
        # The open transaction: when it began (None: none open), the offsets and group generation staged
        # in it, whether early records precede it. Open across batches only with a commit interval.
        self._opened_ms: int | None = None
        self._offsets: Offsets = {}
        self._group: object = None
        self._early_open = False
        # An error met inside a rebalance callback, where raising is mangled: raised by the next call.
        self._pending: Exception | None = None
        self._aborted_at_revoke = False

    def start(self) -> None:
        try:
            with self.ctx.health.call("init_transactions", INIT_TIMEOUT_S * 1000 + CALL_GRACE_MS):
                self.producer.init_transactions(INIT_TIMEOUT_S)
            if self.ctx.options.early_records:
                self._early_producer()
        except KafkaException as exc:  # no broker within 30 s: let the supervisor try again
            raise FatalClientError(
                f"{self.ctx.options.service}: cannot initialise transactions: {exc.args[0]}") from exc

    def positions(self, partitions: list[TopicPartition]) -> list[TopicPartition] | None:
        """Rebuild nothing while a predecessor's transaction on these partitions may still commit.

        A zombie paused after send_offsets_to_transaction and before commit_transaction can still commit
        when it wakes: the broker checks the group generation when the offsets are sent (KIP-447), not at
        the commit. State rebuilt before that commit resolves misses the zombie's outputs, and decisions
        taken on it overspend (tests/e2e/test_zombie.py caught exactly that). A read_committed consumer's
        committed() waits while such a transactional offset commit is pending (RequireStable), so once it
        answers, the zombie's batch is committed (and the rebuild reads it) or aborted (and is read again).
        The wait is bounded by the predecessor's transaction.timeout.ms, after which the broker aborts.
        None (the error recorded as fatal) when the offsets stay unreadable past commit_deadline_ms."""
        ctx = self.ctx
        self.seeks_to_positions = False
        started_ms = mono_ms()
        deadline_ms = started_ms + ctx.options.commit_deadline_ms
        while True:
            try:
                with ctx.health.call("committed", int(CALL_TIMEOUT_S * 1000) + CALL_GRACE_MS):
                    return list(ctx.consumer.committed(partitions, timeout=CALL_TIMEOUT_S))
            except KafkaException as exc:
                kerr = exc.args[0]
                waiting = kerr.code() in (KafkaError._TIMED_OUT, KafkaError.UNSTABLE_OFFSET_COMMIT) or kerr.retriable()
                if waiting and mono_ms() - started_ms >= HANGING_AFTER_MS:
                    # Past the transaction timeout no live transaction can still hold these offsets: the
                    # coordinator has aborted any. Still pending is a hanging offset commit (measured:
                    # a process killed inside send_offsets during a broker restart left one that no abort
                    # cleared, and every successor waited on it for minutes). Its offsets never commit, so
                    # the last committed ones are the truth: read them without RequireStable.
                    committed = self._committed_ignoring_pending(partitions)
                    if committed is not None:
                        ctx.log.warning("offsets_pending_past_transaction_timeout", error=str(kerr),
                                        note="a hanging transactional offset commit; resuming from the committed")
                        self.seeks_to_positions = True  # the consumer's own fetch would wait on it forever
                        return committed
                if kerr.fatal() or not waiting or mono_ms() >= deadline_ms or not ctx.running():
                    ctx.log.error("offsets_unreadable", error=str(kerr))
                    ctx.errors.record(kerr)  # never raised here: an exception in a rebalance callback is mangled
                    return None
                ctx.health.turned()
                ctx.log.warning("offsets_unstable", partitions=sorted({tp.partition for tp in partitions}),
                                error=str(kerr), note="a predecessor's transaction may still commit; waiting")
                time.sleep(0.1)

    def _committed_ignoring_pending(self, partitions: list[TopicPartition]) -> list[TopicPartition] | None:
        o = self.ctx.options
        # read_uncommitted: librdkafka asks for the committed offsets without RequireStable.
        reader = Consumer(consumer_config(o.connection, o.group_id, **{
            "isolation.level": "read_uncommitted", "client.id": f"{o.service}-{o.instance_id}-offsets"}))
        try:
            with self.ctx.health.call("committed_unstable", int(CALL_TIMEOUT_S * 1000) + CALL_GRACE_MS):
                return list(reader.committed(partitions, timeout=CALL_TIMEOUT_S))
        except KafkaException as exc:
            self.ctx.log.warning("offsets_unreadable_unstable", error=str(exc.args[0]))
            return None
        finally:
            reader.close()

    def forget(self, partitions: list[TopicPartition]) -> None:
        """Commit what is staged before the partitions move (under a lost generation the broker refuses
        the offsets and it aborts): the next owner must find it committed or never written."""
        try:
            if not self.flush(force=True):
                self.ctx.log.warning("staged_work_aborted_at_revoke", note="the next owner reads it again")
                self._aborted_at_revoke = True
        except (FatalClientError, Stopping, KafkaException) as exc:
            self._pending = exc

    def commit(self, out: Outbox, offsets: Offsets, group: object) -> bool:
        """The batch's outputs and input offsets in the open transaction, which commits now, or, with a
        commit interval, once it has been open that long (its early records are out meanwhile: the
        router's decisions wait for no commit). While the broker is away send_offsets and abort time out
        with retriable errors and are retried until the deadline. A commit is not: once it has timed out
        its outcome is the broker's to settle, so the process exits and a fresh instance's
        init_transactions completes or aborts it, then rebuilds from what was really committed
        (measured: one broker bounce in eight left requests undecided while a timed-out commit was
        retried in place). An abortable error aborts; anything else is fatal. False: aborted, and
        everything staged since the last commit is to be read again."""
        self._raise_pending()
        if self._aborted_at_revoke:
            # What this batch changed rests on state whose staged outputs were aborted: rebuild first.
            self._aborted_at_revoke = False
            return False
        if out.early:
            self._produce_early(out)
        deadline_ms = mono_ms() + self.ctx.options.commit_deadline_ms
        try:
            if self._opened_ms is None:
                self.producer.begin_transaction()
                self._opened_ms = mono_ms()
            self.out.produce(self.producer, out.records)
            self._offsets.update(offsets)
            self._group = group
            self._early_open = self._early_open or bool(out.early)
        except KafkaException as exc:
            return self._failed(exc, deadline_ms)
        return self.flush(force=False)

    def flush(self, force: bool = True) -> bool:
        """Commit the open transaction if it has been open `commit_interval_ms` (or at once, `force`):
        the loop calls it every turn, and a revoke or a stop before the partitions leave."""
        self._raise_pending()
        if self._opened_ms is None:
            return True
        if not force and mono_ms() - self._opened_ms < self.ctx.options.commit_interval_ms:
            return True
        deadline_ms = mono_ms() + self.ctx.options.commit_deadline_ms
        offsets, group = self._offsets, self._group
        try:
            if offsets:
                tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
                self._retrying("send_offsets", deadline_ms,
                               lambda: self.producer.send_offsets_to_transaction(tps, group, CALL_TIMEOUT_S))
            if self._early_open:
                # Every early record acknowledged, or no commit: the input offsets must not move past a
                # record that was never written (the next instance reads the batch again and writes it).
                assert self._early is not None
                self.out.await_acks(self._early, deadline_ms, "flush_early", "early outputs", "the batch")
            self._retrying("commit", deadline_ms, lambda: self.producer.commit_transaction(COMMIT_TIMEOUT_S),
                           retry=False)
            metrics.transaction("committed")
        except KafkaException as exc:
            return self._failed(exc, deadline_ms)
        except (FatalClientError, Stopping):
            # The process ends; what is open is the next instance's to complete or abort (its
            # init_transactions), never this one's to retry: a commit call may still be in flight.
            self._closed()
            raise
        self._closed()
        return True

    def discard(self) -> None:
        """Abort what is open (a batch read outside the group: nothing staged may commit)."""
        if self._opened_ms is not None:
            self.ctx.log.warning("transaction_discarded", note="staged under a generation that is gone")
            self._retrying("abort", mono_ms() + self.ctx.options.commit_deadline_ms,
                           lambda: self.producer.abort_transaction(CALL_TIMEOUT_S))
            metrics.transaction("aborted")
            self._closed()

    def _failed(self, exc: KafkaException, deadline_ms: int) -> bool:
        kerr = exc.args[0]
        if not kerr.txn_requires_abort() or kerr.fatal():
            raise FatalClientError(f"{self.ctx.options.service}: transaction failed: {kerr}") from exc
        self.ctx.log.warning("transaction_aborted", error=str(kerr))
        self._retrying("abort", deadline_ms, lambda: self.producer.abort_transaction(CALL_TIMEOUT_S))
        metrics.transaction("aborted")
        self._closed()
        return False

    def _closed(self) -> None:
        self._opened_ms, self._offsets, self._group, self._early_open = None, {}, None, False

    def _raise_pending(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            raise pending

    def _early_producer(self) -> Producer:
        if self._early is None:
            o = self.ctx.options
            self._early = self.out.producer(**{"linger.ms": 0, "client.id": f"{o.service}-{o.instance_id}-early"})
        return self._early

    def _produce_early(self, out: Outbox) -> None:
        early = self._early_producer()
        self.out.produce(early, out.early)
        early.poll(0)

    def _retrying(self, what: str, deadline_ms: int, call: Callable[[], None], retry: bool = True) -> None:
        ctx = self.ctx
        timeout_s = CALL_TIMEOUT_S if retry else COMMIT_TIMEOUT_S
        while True:
            try:
                called_ms = mono_ms()
                with ctx.health.call(what, int(timeout_s * 1000) + CALL_GRACE_MS):
                    call()
                if mono_ms() - called_ms >= SLOW_CALL_MS:  # a slow first decision names its slow call
                    ctx.log.info("slow_transaction_call", step=what, ms=mono_ms() - called_ms)
                return
            except KafkaException as exc:
                kerr = exc.args[0]
                if not kerr.retriable() or kerr.fatal() or kerr.txn_requires_abort():
                    raise
                if not ctx.running():
                    raise Stopping(what) from exc
                if not retry:
                    raise FatalClientError(f"{ctx.options.service}: {what} timed out, its outcome is left to the "
                                           f"next instance: {kerr}") from exc
                if mono_ms() >= deadline_ms:
                    raise FatalClientError(f"{ctx.options.service}: {what} not done within "
                                           f"{ctx.options.commit_deadline_ms} ms: {kerr}") from exc
                ctx.health.turned()  # waiting on the broker, not wedged
                ctx.log.warning("transaction_retry", step=what, error=str(kerr))

    def close(self) -> None:
        if self._early is not None:
            self._early.flush(5)  # unacknowledged early records are written again by the next instance
        if self.ctx.errors.fatal is not None:
            self.producer.flush(5)
        # Otherwise nothing outside a transaction is queued; an open one is aborted by the next instance.
