"""The projector's PostgreSQL transaction and error policy, on the real database and broker.

- A batch commits rows and offsets together or not at all; a second writer with stale offsets is refused;
  a replay past reset offsets changes no balance (ledger rows gate every balance and limit change).
- An undecodable message becomes a projection_errors row and the partition goes on.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.events import Usage
from ledgergate.kafka_config import producer_config
from ledgergate.services.projector import sql
from ledgergate.services.projector.core import Batch
from ledgergate.services.router.core import decision_for
from ledgergate.shared.catalogue import deployments
from ledgergate.shared.db import migrate
from ledgergate.shared.errors import StaleOffsetsError
from ledgergate.shared.ledger.entries import (
    BudgetLimitSet,
    LedgerEntry,
    ReservationPlaced,
    ReservationSettled,
    to_record,
)
from ledgergate.shared.settings import KafkaSettings, PostgresSettings
from ledgergate.tools.servicerunner import ServiceSet

NOW = 1_795_824_000_000  # 2026-11-28
PERIOD = "2026-11"


@pytest.fixture
def fresh_db(postgres: PostgresSettings) -> Iterator[str]:
    name = f"lg_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres.pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{postgres.pg_dsn.rpartition('/')[0]}/{name}"
    migrate(dsn)
    yield dsn
    with psycopg.connect(postgres.pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _entries(tenant: str, rid: str) -> list[LedgerEntry]:
    placed = ReservationPlaced(f"{rid}/reservation", tenant, PERIOD, NOW, rid, "wf", "a", "gpt-4o", "gpt-4o",
                               "premium", 0, 9_000, 30, 500, "2026-11-01", 0, "NORMAL", None, NOW + 60_000,
                               "s" * 64, NOW, 1_000_000)
    settled = ReservationSettled(f"{rid}/settlement", tenant, PERIOD, NOW + 5, rid, "wf", "gpt-4o", 9_000, 4_000,
                                 5_000, 0, Usage(30, 0, 40, 0), False, "2026-11-01")
    limit = BudgetLimitSet(f"cmd/{tenant}", tenant, PERIOD, NOW - 5, "TENANT", tenant, "SET", 1_000_000, 0, "c")
    return [limit, placed, settled]


def _batch(entries: list[tuple[int, LedgerEntry]], topic: str = "ledger") -> Batch:
    batch = Batch()
    for offset, entry in entries:
        batch.consumed(topic, 0, offset)
        batch.add_ledger(entry, to_record(entry)[1], 0, offset)
    return batch


def _snapshot(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        return {table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall()) for table in (
            "ledger_entries", "balances", "limits", "usage", "consumer_offsets")}


def test_a_batch_commits_with_its_offsets_once(fresh_db: str) -> None:
    # Two tenants with the same request id: the same entry ids, two sets of rows.
    entries = list(enumerate([*_entries("acme", "r1"), *_entries("beta", "r1")]))
    batch = _batch(entries)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        sql.prepare(conn)
        sql.write(conn, "p", batch, {})
        once = _snapshot(fresh_db)
        assert len(once["ledger_entries"]) == 6 and len(once["usage"]) == 2
        # (tenant, scope type, scope id, period, limit, credit, posted, pending, updated)
        assert [b[:8] for b in once["balances"]] == [
            ("acme", "TENANT", "acme", PERIOD, 1_000_000, 0, 4_000, 0),
            ("acme", "WORKFLOW", "wf", PERIOD, None, 0, 4_000, 0),
            ("beta", "TENANT", "beta", PERIOD, 1_000_000, 0, 4_000, 0),
            ("beta", "WORKFLOW", "wf", PERIOD, None, 0, 4_000, 0)]
        assert once["consumer_offsets"] == [("p", "ledger", 0, 6)]

        # A second writer that read the partition from the beginning is refused, and changes nothing.
        with pytest.raises(StaleOffsetsError):
            sql.write(conn, "p", batch, {})
        assert _snapshot(fresh_db) == once

        # An operator resets the offsets: the replay advances them but applies no entry twice.
        conn.execute("UPDATE consumer_offsets SET next_offset = 0")
        sql.write(conn, "p", batch, {("ledger", 0): 0})
        assert _snapshot(fresh_db) == once

        # A batch that fails half way (a NULL where the schema promised a value) leaves no trace.
        broken = _batch([(6, _entries("gamma", "r2")[0])])
        broken.decisions.append((None,) * 15)
        with pytest.raises(psycopg.errors.NotNullViolation):
            sql.write(conn, "p", broken, {("ledger", 0): 6})
        assert _snapshot(fresh_db) == once


def test_limit_changes_reach_every_period_and_the_last_one_wins(fresh_db: str) -> None:
    first = _entries("acme", "r1")
    # A hold in the next month: the limit (per scope, all periods) must reach its balance row too.
    later = replace(first[1], entry_id="r9/reservation", request_id="r9", period_id="2026-12",
                    recorded_at_ms=NOW + 40 * 86_400_000)
    raise_ = BudgetLimitSet("cmd/raise", "acme", "2026-12", NOW + 41 * 86_400_000, "TENANT", "acme", "RAISED",
                            3_000_000, 1_000_000, "c2")
    lower = BudgetLimitSet("cmd/lower", "acme", "2026-12", NOW + 42 * 86_400_000, "TENANT", "acme", "LOWERED",
                           2_000_000, 3_000_000, "c3")
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        sql.prepare(conn)
        sql.write(conn, "p", _batch(list(enumerate([*first, later]))), {})
        sql.write(conn, "p", _batch([(4, raise_), (5, lower)]), {("ledger", 0): 4})
        limits = conn.execute("SELECT period_id, limit_micro_usd FROM balances WHERE scope_type = 'TENANT' "
                              "ORDER BY 1").fetchall()
        assert limits == [("2026-11", 2_000_000), ("2026-12", 2_000_000)]
        assert conn.execute("SELECT limit_micro_usd, entry_id FROM limits").fetchall() == [(2_000_000, "cmd/lower")]


def _produce(kafka: KafkaSettings, topic: str, key: bytes, values: list[bytes]) -> None:
    producer = Producer(producer_config(kafka.kafka_connection))
    for value in values:
        producer.produce(kafka.topic(topic), key=key, value=value)
    assert producer.flush(10) == 0


def test_undecodable_messages_are_recorded_and_skipped(kafka: KafkaSettings, fresh_db: str, tmp_path: Path) -> None:
    good = [codec().encode(*to_record(e)) for e in _entries("acme", "r1")]
    decision = decision_for(_entries("acme", "r1")[1], deployments()).to_record()  # type: ignore[arg-type]
    _produce(kafka, topics.LEDGER, b"acme", [good[0], b"\xc3\x01not-avro-at-all", good[1], good[2]])
    # A decision on the audit topic is well-formed Avro but does not belong there.
    _produce(kafka, topics.AUDIT, b"acme", [codec().encode("GateDecision", decision)])
    _produce(kafka, topics.DECISIONS, b"acme", [codec().encode("GateDecision", decision)])
    env = {"LEDGERGATE_KAFKA_BOOTSTRAP": kafka.kafka_bootstrap, "LEDGERGATE_TOPIC_PREFIX": kafka.topic_prefix,
           "LEDGERGATE_PG_DSN": fresh_db}
    with ServiceSet(env, tmp_path / "logs") as services, psycopg.connect(fresh_db, autocommit=True) as conn:
        services.start(["projector"])
        deadline = time.monotonic() + 60
        while True:
            errors = conn.execute("SELECT topic, \"offset\", error_code FROM projection_errors ORDER BY 1").fetchall()
            counts = conn.execute("SELECT (SELECT count(*) FROM ledger_entries), (SELECT count(*) FROM decisions), "
                                  "(SELECT count(*) FROM usage)").fetchone()
            if (len(errors), counts) == (2, (3, 1, 1)) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert counts == (3, 1, 1), services.tail("projector")
        assert errors == [(kafka.topic(topics.AUDIT), 0, "unexpected_event"),
                          (kafka.topic(topics.LEDGER), 1, "unknown_schema_fingerprint")]


def _wait_rows(conn: psycopg.Connection[Any], table: str, count: int, services: ServiceSet) -> None:
    deadline = time.monotonic() + 60
    while (have := conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]) != count:  # type: ignore[index]
        assert time.monotonic() < deadline, f"{table}: {have} rows, want {count}\n{services.tail('projector')}"
        time.sleep(0.2)


def test_moved_offsets_and_a_lost_connection_neither_lose_nor_double(kafka: KafkaSettings, fresh_db: str,
                                                                      tmp_path: Path) -> None:
    env = {"LEDGERGATE_KAFKA_BOOTSTRAP": kafka.kafka_bootstrap, "LEDGERGATE_TOPIC_PREFIX": kafka.topic_prefix,
           "LEDGERGATE_PG_DSN": fresh_db}
    encoded = lambda rid: [codec().encode(*to_record(e)) for e in _entries("acme", rid)][1:]  # noqa: E731
    limit = codec().encode(*to_record(_entries("acme", "r0")[0]))
    with ServiceSet(env, tmp_path / "logs") as services, psycopg.connect(fresh_db, autocommit=True) as conn:
        _produce(kafka, topics.LEDGER, b"acme", [limit, *encoded("r1")])
        services.start(["projector"])
        _wait_rows(conn, "ledger_entries", 3, services)
        # An operator rewinds the partition: the projector's next commit fails its compare-and-set, it
        # re-reads from offset 0, and the replayed entries change no balance.
        conn.execute("UPDATE consumer_offsets SET next_offset = 0 WHERE topic = %s", (kafka.topic(topics.LEDGER),))
        _produce(kafka, topics.LEDGER, b"acme", encoded("r2"))
        _wait_rows(conn, "ledger_entries", 5, services)
        # The database drops the projector's connection: the batch in flight is rolled back and re-read.
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        _produce(kafka, topics.LEDGER, b"acme", encoded("r3"))
        _wait_rows(conn, "ledger_entries", 7, services)
        balances = conn.execute("SELECT scope_type, posted_micro_usd, pending_micro_usd FROM balances "
                                "ORDER BY 1").fetchall()
        assert balances == [("TENANT", 12_000, 0), ("WORKFLOW", 12_000, 0)]
        assert conn.execute("SELECT next_offset FROM consumer_offsets WHERE topic = %s",
                            (kafka.topic(topics.LEDGER),)).fetchone() == (7,)
        log = services.log_path("projector").read_text()
        assert '"offsets_moved"' in log and '"batch_rolled_back"' in log
        assert services.alive("projector")
