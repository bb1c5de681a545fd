"""The projector end to end: the four gate services and the projector as processes on real Kafka and a
fresh PostgreSQL database; afterwards the read model equals a fold of the topics (invariant 3), also
after the projector was killed with SIGKILL twice while traffic ran."""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

import psycopg

from ledgergate.shared.settings import StackSettings
from tests.e2e.conftest import RESERVATION_TTL_MS, Projected
from tests.e2e.readmodel import audit_chains_verify, wait_ledger_quiet, wait_projection_matches

USD = 1_000_000
PROMPT = [{"role": "user", "content": "Draft the release note, briefly."}]


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
    # Long enough for two kills: a restarted projector gets its partitions back only once the group
    # has given up on the killed member (session.timeout.ms, 10 s; membership is dynamic, see 0004).
    total, rate = 2400, 80.0
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
