"""The read model's two sides (invariant 3): what PostgreSQL should hold, as a fold of the topics from
offset 0, and what it holds; shared by the projector's end-to-end and fault tests."""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.shared.audit import verify_chain
from ledgergate.shared.kafka.reader import read_to_end
from ledgergate.shared.ledger.entries import from_record
from ledgergate.shared.ledger.state import TenantState, balances_view, evolve
from ledgergate.shared.settings import KafkaSettings
from tests.e2e.conftest import Projected

PARTITIONS = list(range(6))


# --- the two sides of invariant 3 --------------------------------------------------------------------


def _read(kafka: KafkaSettings, topic: str) -> list[tuple[int, int, str, dict[str, Any]]]:
    return [(m.partition(), m.offset(), *codec().decode(m.value()))
            for m in read_to_end(kafka.kafka_connection, kafka.topic(topic), PARTITIONS)]


def _unstorable(rec: dict[str, Any]) -> bool:
    """PostgreSQL text and jsonb cannot hold a NUL anywhere (checked apart from the projector's own test)."""
    return "\\u0000" in json.dumps(rec, default=str)


def expected(kafka: KafkaSettings) -> dict[str, Any]:
    """The read model as a fold of budget.ledger, gate.decisions and audit.log from offset 0. A record
    PostgreSQL cannot store is not in the tables but in projection_errors, with its coordinates."""
    read = {topic: _read(kafka, topic) for topic in (topics.LEDGER, topics.DECISIONS, topics.AUDIT)}
    errors = sorted((kafka.topic(topic), p, o, "unstorable_value") for topic, rows in read.items()
                    for p, o, _, r in rows if _unstorable(r))
    read = {topic: [row for row in rows if not _unstorable(row[3])] for topic, rows in read.items()}
    ledger = read[topics.LEDGER]
    states: dict[str, TenantState] = {}
    for _, _, name, rec in ledger:
        evolve(states.setdefault(rec["tenant_id"], TenantState(rec["tenant_id"])), from_record(name, rec))
    placed_tier = {(r["tenant_id"], r["request_id"]): r["tier"] for _, _, n, r in ledger if n == "ReservationPlaced"}
    audit = read[topics.AUDIT]
    return {
        "balances": {t: balances_view(s) for t, s in states.items() if s.balances},
        "limits": {(t, st, sid): v for t, s in states.items() for (st, sid), v in s.limits.items()},
        "ledger": sorted((r["tenant_id"], r["entry_id"], n, p, o) for p, o, n, r in ledger),
        "decisions": sorted({(d["tenant_id"], d["ledger_entry_id"]): d for _, _, _, d in read[topics.DECISIONS]}
                            .items()),
        "usage": sorted(((r["tenant_id"], r["request_id"]), (
            r["entry_id"], r["workflow_id"], r["model"], *r["usage"].values(), r["usage_estimated"],
            r["reserved_micro_usd"], r["actual_micro_usd"], r["overage_micro_usd"], r["price_version"],
            r["recorded_at_ms"], placed_tier.get((r["tenant_id"], r["request_id"]))))
            for _, _, n, r in ledger if n == "ReservationSettled"),
        "alerts": sorted((r["tenant_id"], r["entry_id"], r["scope_type"], r["scope_id"], r["threshold_pct"])
                         for _, _, n, r in ledger if n == "ThresholdCrossed"),
        "audit": sorted((r["chain_partition"], r["chain_sequence"], r["hash"]) for _, _, _, r in audit),
        "errors": errors,
    }


def projection(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        q = lambda sql: conn.execute(sql).fetchall()  # noqa: E731
        balances: dict[str, dict[str, Any]] = {}
        for t, p, st, sid, lim, credit, posted, pending in q(
                "SELECT tenant_id, period_id, scope_type, scope_id, limit_micro_usd, credit_micro_usd, "
                "posted_micro_usd, pending_micro_usd FROM balances ORDER BY 1, 2, 3, 4"):
            balances.setdefault(t, {})[f"{p}/{st}/{sid}"] = {
                "limit_micro_usd": -1 if lim is None else lim, "credit_micro_usd": credit,
                "posted_micro_usd": posted, "pending_micro_usd": pending}
        return {
            "balances": balances,
            "limits": {(t, st, sid): v for t, st, sid, v in q(
                "SELECT tenant_id, scope_type, scope_id, limit_micro_usd FROM limits")},
            "ledger": sorted(q("SELECT tenant_id, entry_id, entry_type, source_partition, source_offset "
                               "FROM ledger_entries")),
            "decisions": sorted(((t, e), body) for t, e, body in q(
                "SELECT tenant_id, ledger_entry_id, body FROM decisions")),
            "usage": sorted(((r[0], r[1]), tuple(r[2:])) for r in q(
                "SELECT tenant_id, request_id, entry_id, workflow_id, model, input_tokens, cached_input_tokens, "
                "output_tokens, reasoning_tokens, estimated, reserved_micro_usd, actual_micro_usd, "
                "overage_micro_usd, price_version, settled_at_ms, tier FROM usage")),
            "alerts": sorted(q("SELECT tenant_id, entry_id, scope_type, scope_id, threshold_pct FROM alerts")),
            "audit": sorted(q("SELECT chain_partition, chain_sequence, hash FROM audit_records")),
            "errors": sorted(q("SELECT topic, partition, \"offset\", error_code FROM projection_errors")),
        }


def wait_projection_matches(p: Projected, timeout_s: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        want, have = expected(p.gate.kafka), projection(p.dsn)
        if want == have:
            return have
        if time.monotonic() > deadline:
            diff = {k: {"topics": want[k], "postgres": have[k]} for k in want if want[k] != have[k]}
            raise AssertionError(f"projection never matched the topics: {str(diff)[:6000]}")
        time.sleep(1.0)


def wait_ledger_quiet(p: Projected, timeout_s: float = 60.0) -> None:
    """Every hold settled, voided or expired, so no entry is still on its way."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ledger = _read(p.gate.kafka, topics.LEDGER)
        placed = {(r["tenant_id"], r["request_id"]) for _, _, n, r in ledger if n == "ReservationPlaced"}
        closed = {(r["tenant_id"], r["request_id"]) for _, _, n, r in ledger
                  if n in ("ReservationSettled", "ReservationVoided", "ReservationExpired")}
        if placed <= closed:
            return
        time.sleep(0.5)
    raise AssertionError("holds were still open")


def audit_chains_verify(dsn: str) -> None:
    """The audit records in PostgreSQL are complete enough to re-verify every hash chain."""
    cols = ("audit_id, tenant_id, kind, event_type, subject_id, source_topic, source_partition, source_offset, "
            "event_sha256, summary_json, chain_partition, chain_sequence, prev_hash, recorded_at_ms, hash")
    with psycopg.connect(dsn) as conn:
        rows = [dict(zip(cols.split(", "), r, strict=True)) for r in conn.execute(
            f"SELECT {cols} FROM audit_records ORDER BY chain_partition, chain_sequence")]
    chains: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    for r in rows:
        chains.setdefault(r["chain_partition"], []).append((r["chain_sequence"], r))
    assert rows and all(verify_chain(chain) is None for chain in chains.values())
