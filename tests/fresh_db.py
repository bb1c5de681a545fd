"""A throwaway PostgreSQL database on the project's cluster, so a test owns its tables outright."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import psycopg


@contextlib.contextmanager
def fresh_database(admin_dsn: str) -> Iterator[str]:
    name = f"lg_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = admin_dsn.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def insert_usage(dsn: str, settlements: list[dict]) -> None:
    """Rows as the projector writes them, one per ReservationSettled (the columns of migration 0001)."""
    with psycopg.connect(dsn) as conn:
        for s in settlements:
            u = s["usage"]
            conn.execute(
                "INSERT INTO usage (request_id, tenant_id, workflow_id, model, input_tokens, cached_input_tokens, "
                "output_tokens, reasoning_tokens, estimated, actual_micro_usd, price_version, settled_at_ms) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (s["request_id"], s["tenant_id"], s["workflow_id"], s["model"], u["input_tokens"],
                 u["cached_input_tokens"], u["output_tokens"], u["reasoning_tokens"], s["usage_estimated"],
                 s["actual_micro_usd"], s["price_version"], s["recorded_at_ms"]))
