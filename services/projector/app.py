"""projector adapter: budget.ledger, gate.decisions and audit.log -> the PostgreSQL read model.

Exactly once without Kafka transactions: the next offset of every partition is stored in
consumer_offsets in the same PostgreSQL transaction as the rows its messages produced, and on
assignment the consumer seeks to those stored offsets. Kafka's committed offsets are written too,
after the fact and only so that lag tools show something; nothing reads them back.

No input stops it (fault 9): a message that cannot be decoded, or holds a value PostgreSQL cannot
store (a NUL in a string: `text` and `jsonb` refuse it), is recorded in projection_errors with its
topic, partition, offset and error and skipped; if the database still refuses a batch, the batch is
written again one message at a time and the message it refuses is recorded the same way. A PostgreSQL
outage rolls the batch back, reconnects and re-reads from the stored offsets. The loop, the rebalance
handling and the fatal-error path are the one stream runtime's (shared/kafka/runtime.py, delivery
"offsets-in-sink"); /readyz reports a projector whose input waits while nothing is written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from confluent_kafka import Message

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.services.projector import core, sql
from ledgergate.shared.db import migrate
from ledgergate.shared.errors import StaleOffsetsError, UnexpectedEventError, UnstorableValueError
from ledgergate.shared.kafka.delivery import Context, Stopping
from ledgergate.shared.kafka.errorpolicy import Skip, Stop, Verdict, error_code
from ledgergate.shared.kafka.outbox import Outbox
from ledgergate.shared.kafka.reader import offset_of, partition_of, topic_of
from ledgergate.shared.kafka.runtime import run_service
from ledgergate.shared.ledger.entries import ENTRY_TYPES, from_record
from ledgergate.shared.logging import configure
from ledgergate.shared.settings import ProjectorSettings

R = TypeVar("R")
EXPECTED = {core.DECISIONS: "GateDecision", core.AUDIT: "AuditRecord"}
STATS_INTERVAL_S = 10.0
MAX_BACKOFF_S = 5.0


class Projector:
    """The projector's handler (stage each message's rows), error policy (record and skip) and sink
    (the staged rows and the offsets in one PostgreSQL transaction) for the one stream runtime."""

    def __init__(self, settings: ProjectorSettings) -> None:
        self.settings = settings
        self.log = configure("projector")
        self.name = settings.projector_consumer
        self.kinds = {settings.topic(topics.LEDGER): core.LEDGER, settings.topic(topics.DECISIONS): core.DECISIONS,
                      settings.topic(topics.AUDIT): core.AUDIT}
        # (topic, partition) -> next offset as stored in consumer_offsets (-1: no row yet), for every
        # partition this instance owns. The compare-and-set in sql.write checks against it.
        self.positions: dict[tuple[str, int], int] = {}
        self.conn: psycopg.Connection[Any] | None = None
        self.ctx: Context | None = None
        self.batch = core.Batch()
        self.staged: list[Message] = []
        self.totals = {"messages": 0, "rows": 0, "batches": 0, "errors": 0}
        self._since, self._last_stats_s = dict(self.totals), time.monotonic()

    # --- the handler ------------------------------------------------------------------------------

    def assigned(self, partitions: list[int]) -> None:
        self._reset()  # a rewind: what was staged is read again

    def revoked(self, partitions: list[int]) -> None:
        pass

    def handle(self, msg: Message, out: Outbox) -> None:
        self.staged.append(msg)
        self._stage(self.batch, msg)

    def on_error(self, msg: Message, exc: Exception, _attempt: int) -> Verdict:
        """Nothing the input holds stops the projector (fault 9): a message it cannot project is recorded
        in projection_errors, in the batch's own transaction, and skipped."""
        if isinstance(exc, AssertionError):
            return Stop()
        code, message = error_code(exc)
        self._skip(self.batch, msg, code, message)
        return Skip()

    def idle(self, now_ms: int, out: Outbox) -> None:
        now = time.monotonic()
        if now - self._last_stats_s < STATS_INTERVAL_S:
            return
        elapsed = now - self._last_stats_s
        done = {k: v - self._since[k] for k, v in self.totals.items()}
        if done["messages"]:
            self.log.info("projected", **done, messages_per_s=round(done["messages"] / elapsed),
                          rows_per_s=round(done["rows"] / elapsed))
        self._last_stats_s, self._since = now, dict(self.totals)

    def _stage(self, batch: core.Batch, msg: Message) -> None:
        batch.consumed(topic_of(msg), partition_of(msg), offset_of(msg))
        kind = self.kinds[topic_of(msg)]
        name, record = codec().decode(msg.value())
        if kind == core.DECISIONS:
            record = core.text_free(record)  # never stored, so a NUL in the cached answer stops nothing
        core.check_storable(record)
        if kind == core.LEDGER:
            if name not in ENTRY_TYPES:
                raise UnexpectedEventError(f"{name} is not a ledger entry")
            batch.add_ledger(from_record(name, record), record, partition_of(msg), offset_of(msg))
        elif name != EXPECTED[kind]:
            raise UnexpectedEventError(f"{name} does not belong on the {kind} topic")
        elif kind == core.DECISIONS:
            batch.add_decision(record)
        else:
            batch.add_audit(record)

    def _skip(self, batch: core.Batch, msg: Message, code: str, message: str) -> None:
        topic, partition, offset = topic_of(msg), partition_of(msg), offset_of(msg)
        self.log.error("message_skipped", topic=topic, partition=partition, offset=offset, error=code)
        batch.add_error(self.name, topic, partition, offset, code, message)

    def _reset(self) -> None:
        self.batch, self.staged = core.Batch(), []

    # --- the sink ---------------------------------------------------------------------------------

    def start(self, ctx: Context) -> None:
        self.ctx = ctx
        applied = self._retry("migrate", lambda: migrate(self.settings.pg_dsn))
        self.log.info("projector_starting", migrations_applied=applied, topics=list(self.kinds),
                      batch=self.settings.projector_batch)

    def stored_offsets(self, keys: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        stored = self._retry("load_offsets", lambda: sql.stored_offsets(self._db(), self.name, list(self.kinds)))
        loaded = {k: stored.get(k, -1) for k in keys}
        self.positions.update(loaded)
        return loaded

    def forget(self, keys: list[tuple[str, int]]) -> None:
        for key in keys:
            self.positions.pop(key, None)

    def write(self, offsets: dict[tuple[str, int], int]) -> bool:
        batch, staged = self.batch, self.staged
        self._reset()
        assert batch.offsets == offsets, "the staged rows cover exactly the batch the runtime read"
        try:
            return self._write(batch)
        except psycopg.Error as exc:  # not an outage (_write handles those): a value it will not store
            # Something got past _stage's checks: find it one message at a time, so only that message
            # is skipped (and recorded), never its neighbours. Stop at the first rollback: the messages
            # after it are read again from the stored offsets.
            self.log.warning("batch_refused", error=str(exc).strip()[:300], messages=batch.messages)
            return all(self._write_one(msg) for msg in staged)

    def _write_one(self, msg: Message) -> bool:
        batch = core.Batch()
        try:
            self._stage(batch, msg)
        except Exception as exc:  # recorded as the policy records it; an AssertionError is never input's fault
            if isinstance(exc, AssertionError):
                raise
            batch = core.Batch()
            batch.consumed(topic_of(msg), partition_of(msg), offset_of(msg))
            self._skip(batch, msg, *error_code(exc))
        try:
            return self._write(batch)
        except psycopg.Error as exc:
            refused = core.Batch()
            refused.consumed(topic_of(msg), partition_of(msg), offset_of(msg))
            self._skip(refused, msg, UnstorableValueError.code, f"{type(exc).__name__}: {str(exc).strip()}")
            return self._write(refused)

    def _write(self, batch: core.Batch) -> bool:
        """One PostgreSQL transaction. False after an outage or a moved offset: nothing was written,
        and the runtime reads every owned partition again from its stored offset."""
        try:
            sql.write(self._db(), self.name, batch, self.positions)
        except StaleOffsetsError as exc:
            self.log.warning("offsets_moved", error=exc.message)
            return False
        except psycopg.OperationalError as exc:
            self.log.warning("batch_rolled_back", error=str(exc).strip()[:300], messages=batch.messages)
            self._close_db()
            return False
        self.positions.update(batch.offsets)
        self.totals["messages"] += batch.messages
        self.totals["rows"] += batch.rows
        self.totals["batches"] += 1
        self.totals["errors"] += len(batch.errors)
        return True

    def close(self) -> None:
        self.log.info("projector_stopping", **self.totals)
        self._close_db()

    # --- PostgreSQL ------------------------------------------------------------------------------

    def _retry(self, what: str, fn: Callable[[], R]) -> R:
        """Run fn until PostgreSQL answers: a projector outlives a database restart."""
        ctx = self.ctx
        assert ctx is not None, "the runtime starts the sink before it reads"
        backoff = 0.1
        while True:
            try:
                return fn()
            except psycopg.OperationalError as exc:
                if not ctx.running():
                    raise Stopping(what) from exc
                self.log.warning("postgres_unavailable", action=what, error=str(exc).strip()[:300],
                                 retry_in_s=backoff)
                self._close_db()
                # Waiting on the database, not wedged: the loop turns, but input waits unwritten, which
                # readiness reports once it has lasted stall_after_ms.
                waited_until = time.monotonic() + backoff
                while ctx.running() and time.monotonic() < waited_until:
                    ctx.health.backlog_is(True)
                    time.sleep(min(0.2, backoff))
                backoff = min(MAX_BACKOFF_S, backoff * 2)

    def _db(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed:
            # autocommit: every statement runs inside an explicit conn.transaction() block (sql.py), so
            # no implicit transaction is ever left open between batches.
            self.conn = psycopg.connect(self.settings.pg_dsn, connect_timeout=10, autocommit=True)
            sql.prepare(self.conn)
        return self.conn

    def _close_db(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def run(settings: ProjectorSettings | None = None) -> None:
    s = settings or ProjectorSettings()
    projector = Projector(s)
    # Dynamic membership and cooperative assignment (the projector joins no streams in memory); its own
    # fetch size for catch-up; no stalled exit: it waits on PostgreSQL, and readiness says so.
    run_service("projector", s, projector, list(projector.kinds), projector.log, on_error=projector.on_error,
                sink=projector, delivery="offsets-in-sink", assignment_strategy="cooperative-sticky",
                max_batch=s.projector_batch, stalled_exit=False,
                consumer_overrides={"enable.partition.eof": False, "fetch.max.bytes": 52428800})
