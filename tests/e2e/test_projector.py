"""The projector end to end: the four gate services and the projector as processes on real Kafka and a
fresh PostgreSQL database; afterwards the read model equals a fold of the topics (invariant 3), also
after the projector was killed with SIGKILL twice while traffic ran."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from shared.audit import verify_chain
from shared.client import GateClient
from shared.codec import codec
from shared.kafka import topics as T
from shared.kafka.reader import read_to_end
from shared.ledger.entries import from_record
from shared.ledger.state import TenantState, balances_view, evolve
from shared.servicerunner import ServiceSet
from shared.settings import KafkaSettings, PostgresSettings, StackSettings
from tests.e2e.conftest import GATE_SERVICES, RESERVATION_TTL_MS, Gate, wait_ready

USD = 1_000_000
PROMPT = [{"role": "user", "content": "Draft the release note, briefly."}]
PARTITIONS = list(range(6))


@dataclass
class Projected:
    gate: Gate
    dsn: str


@pytest.fixture
def projected(kafka: KafkaSettings, postgres: PostgresSettings, tmp_path: Path) -> Iterator[Projected]:
    name = f"lg_proj_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres.pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{postgres.pg_dsn.rpartition('/')[0]}/{name}"
    dump = tmp_path / "budget-state.json"
    env = {"LEDGERGATE_KAFKA_BOOTSTRAP": kafka.kafka_bootstrap, "LEDGERGATE_TOPIC_PREFIX": kafka.topic_prefix,
           "LEDGERGATE_RESERVATION_TTL_MS": str(RESERVATION_TTL_MS), "LEDGERGATE_EXPIRY_INTERVAL_MS": "200",
           "LEDGERGATE_STATE_DUMP_PATH": str(dump), "LEDGERGATE_PG_DSN": dsn}
    services = ServiceSet(env, tmp_path / "logs")
    client: GateClient | None = None
    try:
        services.start([*GATE_SERVICES, "projector"])
        client = GateClient(kafka.kafka_bootstrap, topic_prefix=kafka.topic_prefix, timeout_s=30)
        wait_ready(client)
        yield Projected(Gate(kafka, services, client, dump), dsn)
    finally:
        if client is not None:
            client.close()
        services.stop_all()
        with psycopg.connect(postgres.pg_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- the two sides of invariant 3 --------------------------------------------------------------------


def _read(kafka: KafkaSettings, topic: str) -> list[tuple[int, int, str, dict[str, Any]]]:
    return [(m.partition(), m.offset(), *codec().decode(m.value()))
            for m in read_to_end(kafka.kafka_bootstrap, kafka.topic(topic), PARTITIONS)]


def expected(kafka: KafkaSettings) -> dict[str, Any]:
    """The read model as a fold of budget.ledger, gate.decisions and audit.log from offset 0."""
    ledger = _read(kafka, T.LEDGER)
    states: dict[str, TenantState] = {}
    for _, _, name, rec in ledger:
        evolve(states.setdefault(rec["tenant_id"], TenantState(rec["tenant_id"])), from_record(name, rec))
    placed_tier = {(r["tenant_id"], r["request_id"]): r["tier"] for _, _, n, r in ledger if n == "ReservationPlaced"}
    audit = _read(kafka, T.AUDIT)
    return {
        "balances": {t: balances_view(s) for t, s in states.items() if s.balances},
        "limits": {(t, st, sid): v for t, s in states.items() for (st, sid), v in s.limits.items()},
        "ledger": sorted((r["tenant_id"], r["entry_id"], n, p, o) for p, o, n, r in ledger),
        "decisions": sorted({(d["tenant_id"], d["ledger_entry_id"]): d for _, _, _, d in _read(kafka, T.DECISIONS)}
                            .items()),
        "usage": sorted(((r["tenant_id"], r["request_id"]), (
            r["entry_id"], r["workflow_id"], r["model"], *r["usage"].values(), r["usage_estimated"],
            r["reserved_micro_usd"], r["actual_micro_usd"], r["overage_micro_usd"], r["price_version"],
            r["recorded_at_ms"], placed_tier.get((r["tenant_id"], r["request_id"]))))
            for _, _, n, r in ledger if n == "ReservationSettled"),
        "alerts": sorted((r["tenant_id"], r["entry_id"], r["scope_type"], r["scope_id"], r["threshold_pct"])
                         for _, _, n, r in ledger if n == "ThresholdCrossed"),
        "audit": sorted((r["chain_partition"], r["chain_sequence"], r["hash"]) for _, _, _, r in audit),
        "errors": [],
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
            "errors": q("SELECT topic, partition, \"offset\", error_code FROM projection_errors"),
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
        ledger = _read(p.gate.kafka, T.LEDGER)
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


# --- tests ------------------------------------------------------------------------------------------


def _complete(p: Projected, d: dict[str, Any], rng: random.Random) -> None:
    usage = None if rng.random() < 0.2 else {"input_tokens": rng.randint(5, 60), "cached_input_tokens": rng.randint(
        0, 5), "output_tokens": rng.randint(1, 400), "reasoning_tokens": rng.randint(0, 20)}
    p.gate.client.complete(d["tenant_id"], d["request_id"], d["deployment"]["model"], usage,
                           completion_text=None if usage else "Done: three bullet points.")


def test_projection_equals_the_fold_of_the_topics(projected: Projected) -> None:
    p, c, rng = projected, projected.gate.client, random.Random(7)
    for tenant, usd in (("p-acme", 50), ("p-beta", 10), ("p-burn", 1), ("p-tiny", 0)):
        c.send_command(tenant, "SET_LIMIT", usd * USD + (40 if tenant == "p-tiny" else 0))
    c.send_command("p-acme", "SET_LIMIT", 5 * USD, scope_type="WORKFLOW", scope_id="nightly")
    c.send_command("p-acme", "GRANT_CREDIT", 1 * USD)
    futures = [c.submit(t, PROMPT, rng.choice(["gpt-4o", "gpt-4o-mini"]), 300, workflow_id=w, timeout_s=60)
               for t in ("p-acme", "p-beta", "p-tiny") for w in ("", "nightly", "adhoc") for _ in range(8)]
    shared_rid = f"shared-{uuid.uuid4().hex[:8]}"  # one request id in two tenants: two entries, same entry id
    decisions = [f.result(timeout=90) for f in futures]
    # The SDK waits per request id, so the two tenants ask one after the other.
    decisions += [c.request(t, PROMPT, "gpt-4o", 100, request_id=shared_rid, timeout_s=60)
                  for t in ("p-acme", "p-beta")]
    granted = [d for d in decisions if d["outcome"] in ("ALLOW", "DOWNGRADE")]
    assert len(granted) > 20 and any(d["outcome"] == "DENY" for d in decisions)
    left_to_expire, to_void = granted[:3], granted[3]
    c.send_command(to_void["tenant_id"], "VOID_RESERVATION", request_id=to_void["request_id"])
    for d in granted[4:]:
        _complete(p, d, rng)
    # A repeat (identical decision, one row) and a conflict (a second row for the same request id).
    rid = f"fixed-{uuid.uuid4().hex[:8]}"
    first, again = (c.request("p-beta", PROMPT, "gpt-4o", 300, request_id=rid, timeout_s=30) for _ in range(2))
    conflict = c.request("p-beta", PROMPT, "gpt-4.1", 5, request_id=rid, timeout_s=30)
    assert again == first and conflict["reason_codes"] == ["idempotency_conflict"]
    burn = c.request("p-burn", PROMPT, "gpt-4o", 100, timeout_s=30)
    c.complete("p-burn", burn["request_id"], "gpt-4o", {"input_tokens": 0, "cached_input_tokens": 0,
                                                        "output_tokens": 85_000, "reasoning_tokens": 0})
    c.send_command("p-acme", "RAISE_LIMIT", 10 * USD)  # mirrored onto balance rows that already exist
    c.flush()
    time.sleep(RESERVATION_TTL_MS / 1000)
    wait_ledger_quiet(p)
    have = wait_projection_matches(p)
    assert have["balances"] == p.gate.wait_fold_matches_service(), "PostgreSQL, fold and service agree"
    assert {e for _, e, n, _, _ in have["ledger"] if n == "ReservationExpired"} >= {
        f"{d['request_id']}/expiry" for d in left_to_expire}
    assert sum(1 for (t, e, n, _, _) in have["ledger"] if e == f"{shared_rid}/reservation") == 2
    assert have["alerts"], "the burn tenant crossed 50 % and 80 %"
    assert have["limits"][("p-acme", "TENANT", "p-acme")] == 60 * USD
    assert any(row[7] for _, row in have["usage"]), "some usage was estimated from completion text"
    assert all(row[-1] for _, row in have["usage"]), "every usage row knows its tier"
    audit_chains_verify(p.dsn)


def _projecting(p: Projected, lives: int) -> bool:
    """The projector's `lives`-th process has started and been assigned its partitions (its log says so)."""
    log = p.gate.services.log_path("projector").read_text()
    return log.count('"projector_starting"') == lives and '"partitions_assigned"' in log[
        log.rfind('"projector_starting"'):]


def _kill_in_transaction(p: Projected) -> int | None:
    """kill -9 the projector, if possible while its PostgreSQL transaction is open (watched in
    pg_stat_activity for up to 2 s); returns the PostgreSQL backend pid it had."""
    row, deadline = None, time.monotonic() + 2.0
    with psycopg.connect(p.dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT pid, state FROM pg_stat_activity WHERE datname = current_database() "
                               "AND pid <> pg_backend_pid() AND backend_type = 'client backend'").fetchone()
            if row is not None and row[1] != "idle":
                break
        p.gate.services.kill9("projector")
    return None if row is None else int(row[0])


def test_kill_9_of_the_projector_loses_and_doubles_nothing(projected: Projected, stack: StackSettings) -> None:
    p, c, rng = projected, projected.gate.client, random.Random(9)
    tenants = [f"pk-{i}" for i in range(5)]
    for t in tenants:
        c.send_command(t, "SET_LIMIT", 20 * USD)
    total, rate = 1500, 120.0
    kill_at = [rng.randrange(total // 5, total // 2), rng.randrange(total // 2 + 50, total - total // 5)]
    futures, started, kills, backends = [], time.monotonic(), 0, []
    for i in range(total):
        # A kill waits until the previous life is projecting, so each one hits a working projector.
        if kills < len(kill_at) and i >= kill_at[kills] and _projecting(p, lives=kills + 1):
            backends.append(_kill_in_transaction(p))
            kills += 1
            time.sleep(rng.uniform(0.0, 1.0))
            p.gate.services.start(["projector"])
        futures.append(c.submit(rng.choice(tenants), PROMPT, rng.choice(["gpt-4o", "gpt-4o-mini"]), 200,
                                workflow_id=rng.choice(["", "w1", "w2"]), timeout_s=120))
        while futures and futures[0].done() and i % 10 == 0:  # complete what is decided, as agents would
            d = futures.pop(0).result()
            if d["outcome"] in ("ALLOW", "DOWNGRADE") and rng.random() < 0.9:
                _complete(p, d, rng)
        time.sleep(max(0.0, started + (i + 1) / rate - time.monotonic()))
    for fut in futures:
        d = fut.result(timeout=180)
        if d["outcome"] in ("ALLOW", "DOWNGRADE") and rng.random() < 0.9:
            _complete(p, d, rng)
    c.flush()
    time.sleep(RESERVATION_TTL_MS / 1000)
    wait_ledger_quiet(p, timeout_s=120)
    have = wait_projection_matches(p, timeout_s=180)
    assert have["balances"] == p.gate.wait_fold_matches_service(), "PostgreSQL, fold and service agree"
    assert len(have["ledger"]) > total and len(have["usage"]) > total // 3
    assert kills == 2 and _projecting(p, lives=3), "two kills, and the third life projected"
    # How many kills cut a transaction short, by PostgreSQL's own account (for the test log; timing decides).
    pg_log = (stack.data_dir / "postgres" / "postgres.log").read_text(errors="replace").splitlines()[-5000:]
    cut = [b for b in backends if any(f"[{b}] " in line and "open transaction" in line for line in pg_log)]
    print(f"projector kills: {kills}, mid-transaction per postgres.log: {len(cut)}; "
          f"ledger entries {len(have['ledger'])}, decisions {len(have['decisions'])}, usage {len(have['usage'])}, "
          f"audit records {len(have['audit'])}")
    audit_chains_verify(p.dsn)
