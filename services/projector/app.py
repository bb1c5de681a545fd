"""projector adapter: budget.ledger, gate.decisions and audit.log -> the PostgreSQL read model.

Exactly once without Kafka transactions: the next offset of every partition is stored in
consumer_offsets in the same PostgreSQL transaction as the rows its messages produced, and on
assignment the consumer seeks to those stored offsets. Kafka's committed offsets are written too,
after the fact and only so that lag tools show something; nothing reads them back.

No input stops it (fault 9): a message that cannot be decoded, or holds a value PostgreSQL cannot
store (a NUL in a string: `text` and `jsonb` refuse it), is recorded in projection_errors with its
topic, partition, offset and error and skipped; if the database still refuses a batch, the batch is
written again one message at a time and the message it refuses is recorded the same way. A PostgreSQL
outage rolls the batch back, reconnects and re-reads from the stored offsets. A fatal Kafka client
error ends the process non-zero for its supervisor; /readyz reports a projector whose input waits
while nothing is written (shared/health.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.errors import LedgergateError
from ledgergate.kafka_config import consumer_config
from ledgergate.services.projector import core, sql
from ledgergate.shared.db import migrate
from ledgergate.shared.errors import FatalClientError, StaleOffsetsError, UnexpectedEventError, UnstorableValueError
from ledgergate.shared.health import Health, on_stop_signal
from ledgergate.shared.kafka.fatal import ClientErrors, input_waiting
from ledgergate.shared.kafka.reader import offset_of, partition_of, topic_of
from ledgergate.shared.ledger.entries import ENTRY_TYPES, from_record
from ledgergate.shared.logging import configure
from ledgergate.shared.settings import ProjectorSettings

R = TypeVar("R")
EXPECTED = {core.DECISIONS: "GateDecision", core.AUDIT: "AuditRecord"}
STATS_INTERVAL_S = 10.0
MAX_BACKOFF_S = 5.0


class Projector:
    def __init__(self, settings: ProjectorSettings) -> None:
        self.settings = settings
        self.log = configure("projector")
        self.name = settings.projector_consumer
        self.kinds = {settings.topic(topics.LEDGER): core.LEDGER, settings.topic(topics.DECISIONS): core.DECISIONS,
                      settings.topic(topics.AUDIT): core.AUDIT}
        # (topic, partition) -> next offset as stored in consumer_offsets (-1: no row yet), for every
        # partition this instance owns. The compare-and-set in sql.write checks against it.
        self.positions: dict[tuple[str, int], int] = {}
        self.running = True
        self.conn: psycopg.Connection[Any] | None = None
        self.health = Health("projector", settings.stall_after_ms)
        self.errors = ClientErrors("projector", self.health, self.log)
        on_stop_signal(self.stop, settings.shutdown_timeout_ms, self.log)  # before the consumer's threads
        # Dynamic membership, like the stream runtime (see shared/kafka/runtime.py for why not static).
        self.consumer = Consumer(consumer_config(
            settings.kafka_bootstrap, f"{settings.topic_prefix}ledgergate-projector", **{
                "client.id": f"projector-{settings.instance_id}", "error_cb": self.errors.on_error,
                "enable.partition.eof": False, "fetch.max.bytes": 52428800}))
        self.totals = {"messages": 0, "rows": 0, "batches": 0, "errors": 0}

    # --- PostgreSQL ------------------------------------------------------------------------------

    def _retry(self, what: str, fn: Callable[[], R]) -> R:
        """Run fn until PostgreSQL answers: a projector outlives a database restart."""
        backoff = 0.1
        while True:
            try:
                return fn()
            except psycopg.OperationalError as exc:
                if not self.running:
                    raise
                self.log.warning("postgres_unavailable", action=what, error=str(exc).strip()[:300],
                                 retry_in_s=backoff)
                self._close_db()
                # Waiting on the database, not wedged: the loop turns, but input waits unwritten, which
                # readiness reports once it has lasted stall_after_ms.
                waited_until = time.monotonic() + backoff
                while self.running and time.monotonic() < waited_until:
                    self.health.backlog_is(True)
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

    def _load_positions(self, keys: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        stored = self._retry("load_offsets", lambda: sql.stored_offsets(self._db(), self.name, list(self.kinds)))
        return {k: stored.get(k, -1) for k in keys}

    # --- rebalance -------------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        loaded = self._load_positions([(tp.topic, tp.partition) for tp in partitions])
        self.positions.update(loaded)
        for tp in partitions:
            stored = loaded[(tp.topic, tp.partition)]
            tp.offset = stored if stored >= 0 else OFFSET_BEGINNING
        self.log.info("partitions_assigned", offsets={f"{tp.topic}:{tp.partition}": tp.offset for tp in partitions})
        consumer.incremental_assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.positions.pop((tp.topic, tp.partition), None)
        self.log.info("partitions_revoked", partitions=[f"{tp.topic}:{tp.partition}" for tp in partitions])

    def _rewind(self) -> None:
        """After a rolled-back batch: read every owned partition again from its stored offset."""
        keys = sorted(self.positions)
        if not keys:
            return
        loaded = self._load_positions(keys)
        self.positions.update(loaded)
        tps = [TopicPartition(t, p, o if o >= 0 else OFFSET_BEGINNING) for (t, p), o in loaded.items()]
        # Unassign + assign rather than seek: it also drops what was already fetched past the offsets,
        # and works before a partition's first fetch, when seek() fails with an erroneous-state error.
        self.consumer.incremental_unassign([TopicPartition(t, p) for t, p in keys])
        self.consumer.incremental_assign(tps)

    # --- loop ------------------------------------------------------------------------------------

    def stop(self, *_: object) -> None:
        self.running = False

    def run(self, max_seconds: float | None = None) -> None:
        self.health.start_watchdog(self.log)
        if self.settings.health_port:
            self.health.serve(self.settings.health_host, self.settings.health_port)
        applied = self._retry("migrate", lambda: migrate(self.settings.pg_dsn))
        self.log.info("projector_starting", migrations_applied=applied, topics=list(self.kinds),
                      batch=self.settings.projector_batch)
        self.consumer.subscribe(list(self.kinds), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)
        deadline = time.monotonic() + max_seconds if max_seconds else None
        last_stats, since = time.monotonic(), dict(self.totals)
        next_check = 0.0
        try:
            while self.running and (deadline is None or time.monotonic() < deadline):
                self.errors.check()
                first = self.consumer.poll(0.1)
                if first is not None:
                    # Whatever is already fetched joins the batch; nothing waits for more to arrive.
                    self._project([first, *self.consumer.consume(self.settings.projector_batch - 1, 0)])
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + 1.0
                    self.health.backlog_is(input_waiting(self.consumer))
                else:
                    self.health.turned()
                if now - last_stats >= STATS_INTERVAL_S:
                    elapsed = now - last_stats
                    done = {k: v - since[k] for k, v in self.totals.items()}
                    if done["messages"]:
                        self.log.info("projected", **done, messages_per_s=round(done["messages"] / elapsed),
                                      rows_per_s=round(done["rows"] / elapsed))
                    last_stats, since = now, dict(self.totals)
        except KafkaException as exc:
            self.health.failed(str(exc.args[0]))
            raise FatalClientError(f"projector: Kafka client error: {exc.args[0]}") from exc
        finally:
            self.log.info("stopping", **self.totals)
            try:
                with self.health.call("consumer_close", 30_000):
                    self.consumer.close()
            except (KafkaException, RuntimeError) as exc:
                self.log.warning("consumer_close_failed", error=str(exc))
            self._close_db()

    def _project(self, msgs: list[Message]) -> None:
        batch = self._build(msgs)
        if not batch.offsets:
            return
        try:
            self._write(batch)
        except psycopg.Error as exc:  # not an outage (_write handles those): a value it will not store
            # Something got past _build's checks: find it one message at a time, so only that message
            # is skipped (and recorded), never its neighbours. Stop at the first rewind: the messages
            # after it are read again from the stored offsets.
            self.log.warning("batch_refused", error=str(exc).strip()[:300], messages=batch.messages)
            for msg in msgs:
                if not self._project_one(msg):
                    return

    def _project_one(self, msg: Message) -> bool:
        batch = self._build([msg])
        if not batch.offsets:
            return True
        try:
            return self._write(batch)
        except psycopg.Error as exc:
            refused = core.Batch()
            topic, partition, offset = topic_of(msg), partition_of(msg), offset_of(msg)
            refused.consumed(topic, partition, offset)
            self._skip(refused, topic, partition, offset, UnstorableValueError.code,
                       f"{type(exc).__name__}: {str(exc).strip()}")
            return self._write(refused)

    def _write(self, batch: core.Batch) -> bool:
        """One PostgreSQL transaction. False after an outage or a moved offset: nothing was written
        and every owned partition was rewound to its stored offset."""
        try:
            sql.write(self._db(), self.name, batch, self.positions)
        except StaleOffsetsError as exc:
            self.log.warning("offsets_moved", error=exc.message)
            self._rewind()
            return False
        except psycopg.OperationalError as exc:
            self.log.warning("batch_rolled_back", error=str(exc).strip()[:300], messages=batch.messages)
            self._close_db()
            self._rewind()
            return False
        self.health.progressed()
        self.positions.update(batch.offsets)
        self.totals["messages"] += batch.messages
        self.totals["rows"] += batch.rows
        self.totals["batches"] += 1
        self.totals["errors"] += len(batch.errors)
        try:  # informational only (lag tools); the stored offsets above are the ones that count
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in batch.offsets.items()],
                                 asynchronous=True)
        except KafkaException as exc:
            self.log.debug("informational_commit_failed", error=str(exc))
        return True

    def _build(self, msgs: list[Message]) -> core.Batch:
        batch = core.Batch()
        for msg in msgs:
            err = msg.error()
            if err is not None:
                self.errors.consumed_error(err)
                continue
            topic, partition, offset = topic_of(msg), partition_of(msg), offset_of(msg)
            if (topic, partition) not in self.positions:
                continue  # fetched before a revoke: its new owner reads it from the stored offset
            batch.consumed(topic, partition, offset)
            try:
                self._add(batch, self.kinds[topic], msg.value(), partition, offset)
            except LedgergateError as exc:
                self._skip(batch, topic, partition, offset, exc.code, exc.message)
            except (KeyError, TypeError, ValueError) as exc:  # decodable, but not the shape the schema promised
                self._skip(batch, topic, partition, offset, "internal_error", repr(exc))
        return batch

    @staticmethod
    def _add(batch: core.Batch, kind: str, value: bytes | None, partition: int, offset: int) -> None:
        name, record = codec().decode(value)
        core.check_storable(record)
        if kind == core.LEDGER:
            if name not in ENTRY_TYPES:
                raise UnexpectedEventError(f"{name} is not a ledger entry")
            batch.add_ledger(from_record(name, record), record, partition, offset)
        elif name != EXPECTED[kind]:
            raise UnexpectedEventError(f"{name} does not belong on the {kind} topic")
        elif kind == core.DECISIONS:
            batch.add_decision(record)
        else:
            batch.add_audit(record)

    def _skip(self, batch: core.Batch, topic: str, partition: int, offset: int, code: str, message: str) -> None:
        self.log.error("message_skipped", topic=topic, partition=partition, offset=offset, error=code)
        batch.add_error(self.name, topic, partition, offset, code, message)


def run(settings: ProjectorSettings | None = None) -> None:
    Projector(settings or ProjectorSettings()).run()
