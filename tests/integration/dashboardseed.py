"""Seed data for the dashboard's tests (tests/integration/test_api_dashboard.py, tests/e2e/test_dashboard.py):
the read model as the projector writes it (the same tables and columns as tests/integration/apiharness.py's
seed), timed relative to now so that decisions fall in the dashboard's 24-hour window and usage in this
period. globex's amounts are unlike any of acme's, so a page or answer that mixed tenants would show one.
"""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg

from ledgergate.shared.ledger.periods import period_of
from tests.integration.apiharness import A, B

MINUTE = 60_000
NOW_MS = time.time_ns() // 1_000_000
PERIOD, PERIOD_START, PERIOD_END = period_of(NOW_MS)
B_SPEND = 7_777_777  # globex's posted and settled spend: must never appear on acme's page


def in_period(minutes_ago: int) -> int:
    """A time `minutes_ago` before now, but never before this period began (the seed runs on any day)."""
    return max(PERIOD_START, NOW_MS - minutes_ago * MINUTE)


# (tenant, request, workflow, outcome, requested model, model, tier, binding scope, reasons, minutes ago, latency ms)
DECISIONS: list[tuple[Any, ...]] = [
    (A, "r1", "wf-a", "ALLOW", "gpt-4o", "gpt-4o", "premium", None, ["within_budget"], 50, 12),
    (A, "r2", "wf-a", "ALLOW", "gpt-4o", "gpt-4o", "premium", None, ["within_budget"], 40, 30),
    (A, "r3", "wf-b", "DOWNGRADE", "gpt-4o", "gpt-4o-mini", "standard", None,
     ["within_budget", "downgraded_by_budget"], 30, 8),
    (A, "r4", "wf-a", "DENY", "gpt-4o", None, None, "TENANT", ["budget_exhausted"], 20, 5),
    (A, "r5", "wf-a", "DENY", "gpt-4o", None, None, "WORKFLOW", ["budget_exhausted"], 15, 6),
    (A, "r6", "wf-b", "THROTTLE", "gpt-4o", None, None, None, ["rate_limited"], 10, 4),
    (A, "r7", "wf-b", "DENY", "o1", None, None, None, ["model_not_allowed"], 5, 3),
    # Three days ago: outside the 24-hour window, so in no count of it.
    (A, "r0", "wf-a", "ALLOW", "gpt-4o", "gpt-4o", "premium", None, ["within_budget"], 3 * 24 * 60, 999),
    (B, "b1", "wf-z", "DENY", "gpt-4o", None, None, "TENANT", ["no_budget"], 25, 77),
    (B, "b2", "wf-z", "ALLOW", "gpt-4o-mini", "gpt-4o-mini", "economy", None, ["within_budget"], 12, 55),
]

# (tenant, request, workflow, model, tier, minutes ago, input, output, cost micro-USD)
USAGE: list[tuple[Any, ...]] = [
    (A, "r1", "wf-a", "gpt-4o", "premium", 49, 1000, 100, 1_250_000),
    (A, "r2", "wf-a", "gpt-4o-mini", "standard", 39, 2000, 200, 150_000),
    (A, "r3", "wf-b", "gpt-4o", "premium", 29, 3000, 300, 3_000_000),
    (A, "r8", "wf-b", "claude-x", "standard", 9, 500, 50, 420_000),
    (B, "b2", "wf-z", "gpt-4o-mini", "economy", 11, 99, 99, B_SPEND),
]

# (tenant, scope type, scope id, limit or None, credit, posted, pending)
BALANCES: list[tuple[Any, ...]] = [
    (A, "TENANT", A, 20_000_000, 1_000_000, 4_820_000, 500_000),
    (A, "WORKFLOW", "wf-a", 2_000_000, 0, 1_400_000, 0),
    (A, "WORKFLOW", "wf-b", None, 0, 3_420_000, 0),
    (B, "TENANT", B, 9_000_000, 0, B_SPEND, 0),
]

# (tenant, entry, scope type, scope id, pct, spent, limit, minutes ago)
ALERTS: list[tuple[Any, ...]] = [
    (A, "wf-a/50", "WORKFLOW", "wf-a", 50, 1_000_000, 2_000_000, 30),
    (B, "globex/80", "TENANT", B, 80, 7_200_000, 9_000_000, 20),
]


def decision_row(tenant: str, rid: str, workflow: str, outcome: str, requested: str, model: str | None,
                 binding: str | None, reasons: list[str], decided_at_ms: int, latency_ms: int) -> tuple[Any, ...]:
    entry_id = f"{rid}/reservation" if model else f"{rid}/denied"
    body = {"request_id": rid, "tenant_id": tenant, "outcome": outcome, "ledger_entry_id": entry_id}
    return (rid, tenant, workflow, "agent-1", outcome, requested, model, binding, reasons, 100,
            decided_at_ms - latency_ms, decided_at_ms, json.dumps(body), entry_id, 256)


INSERT_DECISION = ("INSERT INTO decisions (request_id, tenant_id, workflow_id, agent_id, outcome, requested_model, "
                   "model, binding_scope, reason_codes, reserved_micro_usd, requested_at_ms, decided_at_ms, body, "
                   "ledger_entry_id, granted_output_tokens) "
                   "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")


def seed(dsn: str) -> None:
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        decisions, placements = [], []
        for t, rid, wf, outcome, requested, model, tier, binding, reasons, ago, latency in DECISIONS:
            at = NOW_MS - ago * MINUTE
            decisions.append(decision_row(t, rid, wf, outcome, requested, model, binding, reasons, at, latency))
            if model:  # what was placed has its ReservationPlaced entry, which names the tier
                body = {"entry_id": f"{rid}/reservation", "tenant_id": t, "request_id": rid, "tier": tier}
                placements.append((f"{rid}/reservation", t, period_of(at)[0], "ReservationPlaced", rid, wf, model,
                                   100, at, 0, len(placements), json.dumps(body)))
        cur.executemany(INSERT_DECISION, decisions)
        cur.executemany("INSERT INTO ledger_entries (entry_id, tenant_id, period_id, entry_type, request_id, "
                        "workflow_id, model, amount_micro_usd, recorded_at_ms, source_partition, source_offset, "
                        "body) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", placements)
        cur.executemany(
            "INSERT INTO usage (tenant_id, request_id, workflow_id, model, tier, settled_at_ms, input_tokens, "
            "cached_input_tokens, output_tokens, reasoning_tokens, estimated, actual_micro_usd, price_version, "
            "entry_id, period_id, reserved_micro_usd, overage_micro_usd) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, 0, %s, 0, false, %s, 'p1', %s, %s, %s, 0)",
            [(t, r, wf, m, tier, in_period(ago), i, o, c, f"{r}/settle", PERIOD, c)
             for t, r, wf, m, tier, ago, i, o, c in USAGE])
        cur.executemany("INSERT INTO limits (tenant_id, scope_type, scope_id, limit_micro_usd, entry_id, "
                        "updated_at_ms) VALUES (%s, %s, %s, %s, 'cmd/x', %s)",
                        [(t, st, sid, lim, PERIOD_START) for t, st, sid, lim, *_ in BALANCES if lim is not None])
        cur.executemany("INSERT INTO balances (tenant_id, scope_type, scope_id, period_id, limit_micro_usd, "
                        "credit_micro_usd, posted_micro_usd, pending_micro_usd, updated_at_ms) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        [(t, st, sid, PERIOD, lim, cr, po, pe, in_period(1))
                         for t, st, sid, lim, cr, po, pe in BALANCES])
        cur.executemany("INSERT INTO alerts (tenant_id, entry_id, period_id, scope_type, scope_id, threshold_pct, "
                        "spent_micro_usd, limit_micro_usd, recorded_at_ms) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        [(t, e, PERIOD, st, sid, pct, sp, lim, in_period(ago))
                         for t, e, st, sid, pct, sp, lim, ago in ALERTS])


def add_allow(dsn: str, tenant: str, rid: str) -> None:
    """One more ALLOW (decision and placement), made now: what a live page must pick up without a reload."""
    now_ms = time.time_ns() // 1_000_000
    body = {"entry_id": f"{rid}/reservation", "tenant_id": tenant, "request_id": rid, "tier": "premium"}
    with psycopg.connect(dsn) as conn:
        conn.execute(INSERT_DECISION, decision_row(tenant, rid, "wf-a", "ALLOW", "gpt-4o", "gpt-4o", None,
                                                   ["within_budget"], now_ms, 10))
        conn.execute("INSERT INTO ledger_entries (entry_id, tenant_id, period_id, entry_type, request_id, workflow_id, "
                     "model, amount_micro_usd, recorded_at_ms, source_partition, source_offset, body) "
                     "VALUES (%s, %s, %s, 'ReservationPlaced', %s, 'wf-a', 'gpt-4o', 100, %s, 0, 1000, %s)",
                     (f"{rid}/reservation", tenant, period_of(now_ms)[0], rid, now_ms, json.dumps(body)))
