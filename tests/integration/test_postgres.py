"""The project's PostgreSQL is reachable and its migrations apply, idempotently, to a fresh database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from ledgergate.shared.db import current_version, migrate, migration_files
from ledgergate.shared.settings import PostgresSettings


@pytest.fixture
def fresh_db(postgres: PostgresSettings) -> Iterator[str]:
    name = f"lg_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres.pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = postgres.pg_dsn.rpartition("/")
    yield f"{base}/{name}"
    with psycopg.connect(postgres.pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_postgres_answers_a_query(postgres: PostgresSettings) -> None:
    with psycopg.connect(postgres.pg_dsn) as conn:
        assert conn.execute("SELECT 1 + 1").fetchone() == (2,)


def test_migrations_apply_once_and_create_the_read_model(fresh_db: str) -> None:
    files = migration_files()
    assert [p.name for _, p in files] == migrate(fresh_db)
    assert migrate(fresh_db) == []
    assert current_version(fresh_db) == len(files)
    with psycopg.connect(fresh_db) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
    assert {"ledger_entries", "balances", "decisions", "usage", "consumer_offsets", "audit_records"} <= tables
