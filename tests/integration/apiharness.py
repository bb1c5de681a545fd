"""Fixtures and seed data for the API tests (tests/integration/test_api*.py).

Test modules import the fixtures under their *_fixture names (pytest registers them as `api`, `api_db`,
`keys`). The API runs in-process (Starlette's TestClient, lifespan included) against a fresh PostgreSQL database
with every migration applied and the `kafka` fixture's prefixed topics. Read tests seed the read model
with SQL: the read model is the API's input, whoever writes it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from ledgergate.services.api.app import create_app
from ledgergate.shared import apikeys as auth
from ledgergate.shared.db import migrate
from ledgergate.shared.ledger.periods import period_of
from ledgergate.shared.settings import ApiSettings, KafkaSettings, PostgresSettings

A, B = "acme", "globex"
HOUR = 3_600_000
# The API's credential master key in these tests (every route works; test_api_credentials.py also runs one without).
MASTER_KEY = "integration-test-master-key-0123456789"


@pytest.fixture(name="api_db")
def api_db_fixture(postgres: PostgresSettings) -> Iterator[str]:
    name = f"lg_api_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres.pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{postgres.pg_dsn.rpartition('/')[0]}/{name}"
    migrate(dsn)
    yield dsn
    with psycopg.connect(postgres.pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def api_settings(kafka: KafkaSettings, dsn: str, **overrides: Any) -> ApiSettings:
    return ApiSettings(**{"kafka_bootstrap": kafka.kafka_bootstrap, "topic_prefix": kafka.topic_prefix, "pg_dsn": dsn,
                          "api_pool_max": 4, "credential_master_key": MASTER_KEY, **overrides})


def wait_ready(client: TestClient, timeout_s: float = 30.0) -> None:
    """Readiness is /readyz answering 200 (a real query and a real metadata request), not a sleep."""
    deadline = time.monotonic() + timeout_s
    while True:
        resp = client.get("/readyz")
        if resp.status_code == 200:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"API not ready after {timeout_s} s: {resp.text}")
        time.sleep(0.2)


@pytest.fixture(name="api")
def api_fixture(kafka: KafkaSettings, api_db: str) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings(kafka, api_db))) as client:
        wait_ready(client)
        yield client


@dataclass(frozen=True)
class Keys:
    admin: str
    a_read: str
    a_write: str
    b_read: str
    b_write: str

    @staticmethod
    def h(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(name="keys")
def keys_fixture(api_db: str) -> Keys:
    with psycopg.connect(api_db) as conn:
        def make(tenant: str | None, write: bool = False) -> str:
            return auth.create_key(conn, tenant_id=tenant, is_admin=tenant is None, can_write=write).token
        return Keys(admin=make(None), a_read=make(A), a_write=make(A, True), b_read=make(B), b_write=make(B, True))


# --- seed data -----------------------------------------------------------------------------------

NOW_MS = time.time_ns() // 1_000_000
PERIOD, PERIOD_START, _ = period_of(NOW_MS)
T0 = PERIOD_START + HOUR  # inside the current period whatever the day


def _ledger_row(tenant: str, i: int, entry_type: str, workflow: str, model: str | None, amount: int,
                body: dict[str, Any] | None = None) -> tuple[Any, ...]:
    request_id = f"req-{i}"
    entry_id = f"{request_id}/{entry_type}"
    full = {"entry_id": entry_id, "tenant_id": tenant, "request_id": request_id, **(body or {})}
    return (entry_id, tenant, PERIOD, entry_type, request_id, workflow, model, amount, T0 + i * 1000, 0, i,
            json.dumps(full))


LEDGER = [_ledger_row(A, i, t, wf, m, amt) for i, (t, wf, m, amt) in enumerate([
    ("ReservationPlaced", "wf-a", "gpt-4o", 5000), ("ReservationSettled", "wf-a", "gpt-4o", 4000),
    ("ReservationPlaced", "wf-b", "gpt-4o-mini", 300), ("ReservationSettled", "wf-b", "gpt-4o-mini", 250),
    ("ReservationPlaced", "wf-a", "gpt-4o-mini", 700), ("ReservationVoided", "wf-a", None, 700),
    ("ReservationPlaced", "wf-b", "gpt-4o", 9000)])] + [
    _ledger_row(A, 7, "PolicyChanged", "", None, 0, {"policy_version": 2, "policy_json": '{"max_output_tokens":512}'}),
    # globex reuses acme's entry ids and request ids: ids are unique per tenant only.
    _ledger_row(B, 0, "ReservationPlaced", "wf-a", "gpt-4o", 123456),
    _ledger_row(B, 1, "ReservationSettled", "wf-a", "gpt-4o", 654321)]
A_LEDGER = [r for r in LEDGER if r[1] == A]


def _decision(tenant: str, rid: str, outcome: str, at: int, reasons: tuple[str, ...] = (), workflow: str = "wf-a",
              entry: str | None = None) -> tuple[Any, ...]:
    entry_id = entry or f"{rid}/reservation"
    body = {"request_id": rid, "tenant_id": tenant, "outcome": outcome, "ledger_entry_id": entry_id}
    return (rid, tenant, workflow, "agent-1", outcome, "gpt-4o", "gpt-4o" if outcome != "DENY" else None,
            "TENANT" if outcome == "DENY" else None, list(reasons), 100, T0 + at - 5, T0 + at, json.dumps(body),
            entry_id, 256)


DECISIONS = [
    _decision(A, "req-1", "ALLOW", 1000), _decision(A, "req-2", "DENY", 2000, ("budget_exhausted",)),
    _decision(A, "req-3", "DOWNGRADE", 3000, workflow="wf-b"), _decision(A, "req-shared", "ALLOW", 4000),
    # A later conflicting request under req-1's id: listed, but never req-1's own decision.
    _decision(A, "req-1", "DENY", 5000, ("idempotency_conflict",), entry="req-1/conflict-1"),
    _decision(B, "req-shared", "DENY", 1500, ("no_budget",)), _decision(B, "req-g1", "ALLOW", 2500),
]

# (tenant, request, workflow, model, tier, hour, input, output, cost)
USAGE = [(A, "u1", "wf-a", "gpt-4o", "premium", 1, 1000, 100, 1000),
         (A, "u2", "wf-a", "gpt-4o-mini", "standard", 2, 2000, 200, 200),
         (A, "u3", "wf-b", "gpt-4o", "premium", 26, 3000, 300, 3000),
         (A, "u4", "wf-b", "=HYPERLINK(\"http://x\")", None, 27, 10, 1, 50),
         (B, "u1", "wf-a", "gpt-4o", "premium", 1, 99, 99, 999_999)]

ALERTS = [(A, "t50", PERIOD, "TENANT", A, 50, 50_000_000, 100_000_000, T0 + 100),
          (A, "t80", PERIOD, "TENANT", A, 80, 80_000_000, 100_000_000, T0 + 200),
          (B, "t100", PERIOD, "TENANT", B, 100, 50, 50, T0 + 300)]


def seed(dsn: str) -> None:
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO ledger_entries (entry_id, tenant_id, period_id, entry_type, request_id, "
                         "workflow_id, model, amount_micro_usd, recorded_at_ms, source_partition, source_offset, "
                         "body) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", LEDGER)
        cur.executemany("INSERT INTO decisions (request_id, tenant_id, workflow_id, agent_id, outcome, "
                         "requested_model, model, binding_scope, reason_codes, reserved_micro_usd, requested_at_ms, "
                         "decided_at_ms, body, ledger_entry_id, granted_output_tokens) "
                         "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", DECISIONS)
        cur.executemany(
            "INSERT INTO usage (tenant_id, request_id, workflow_id, model, tier, settled_at_ms, input_tokens, "
            "cached_input_tokens, output_tokens, reasoning_tokens, estimated, actual_micro_usd, price_version, "
            "entry_id, period_id, reserved_micro_usd, overage_micro_usd) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, 0, %s, 0, false, %s, 'p1', %s, %s, %s, 0)",
            [(t, r, wf, m, tier, PERIOD_START + h * HOUR, i, o, c, f"{r}/settle", PERIOD, c)
             for t, r, wf, m, tier, h, i, o, c in USAGE])
        cur.executemany("INSERT INTO alerts (tenant_id, entry_id, period_id, scope_type, scope_id, threshold_pct, "
                         "spent_micro_usd, limit_micro_usd, recorded_at_ms) "
                         "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", ALERTS)
        cur.executemany("INSERT INTO limits (tenant_id, scope_type, scope_id, limit_micro_usd, entry_id, "
                         "updated_at_ms) VALUES (%s, %s, %s, %s, 'cmd/x', %s)",
                         [(A, "TENANT", A, 100_000_000, T0), (A, "WORKFLOW", "wf-b", 20_000_000, T0),
                          (B, "TENANT", B, 50, T0)])
        cur.executemany("INSERT INTO balances (tenant_id, scope_type, scope_id, period_id, limit_micro_usd, "
                         "credit_micro_usd, posted_micro_usd, pending_micro_usd, updated_at_ms) "
                         "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                         [(A, "TENANT", A, PERIOD, 100_000_000, 5_000_000, 30_000_000, 2_000_000, T0),
                          (A, "WORKFLOW", "wf-a", PERIOD, None, 0, 10_000_000, 0, T0),
                          (B, "TENANT", B, PERIOD, 50, 0, 7, 0, T0)])


def get_json(client: TestClient, key: str, path: str, **params: Any) -> Any:
    """A GET that must answer 200, as JSON."""
    resp = client.get(path, headers=Keys.h(key), params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()
