"""Invariants 2-4 under `kill -9`: while a load runs, one service is killed at random moments and
restarted. Afterwards every request has exactly one decision (identical if repeated), no request id
has two reservations or two settlements, and the ledger fold equals the budget-manager's balances."""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from tests.e2e.conftest import GATE_SERVICES, Gate

USD = 1_000_000
MESSAGES = [{"role": "user", "content": "Plan the next step of the migration, briefly."}]
REQUESTS = 600
# The budget-manager commits its entries and offsets in one transaction: a kill never repeats a
# reservation or a decision. The router publishes each decision before its transaction commits
# (docs/decisions/0006), and token-counter and policy are at least once: a kill of any of them may publish
# the same decision again, identical.
EXACTLY_ONCE = {"budget-manager"}
RATE_PER_S = 60


@pytest.mark.parametrize("victim", GATE_SERVICES)
def test_kill_9_keeps_every_invariant(gate: Gate, victim: str) -> None:
    rng = random.Random(f"crash-{victim}")
    tenants = [f"crash-{i}" for i in range(6)]
    for tenant in tenants:
        gate.client.send_command(tenant, "SET_LIMIT", 3 * USD)
    kill_at = sorted(rng.sample(range(REQUESTS // 10, REQUESTS - REQUESTS // 10), 2))
    futures = []
    started = time.monotonic()
    for i in range(REQUESTS):
        if i in kill_at:
            gate.services.kill9(victim)
            time.sleep(rng.uniform(0.0, 0.5))
            gate.services.restart(victim)
        futures.append(gate.client.submit(rng.choice(tenants), MESSAGES, rng.choice(["gpt-4o", "gpt-4o-mini"]), 300,
                                          timeout_s=180))
        time.sleep(max(0.0, started + (i + 1) / RATE_PER_S - time.monotonic()))
    decisions = []
    for fut in futures:
        d = fut.result(timeout=240)
        decisions.append(d)
        if d["outcome"] in ("ALLOW", "DOWNGRADE"):
            gate.client.complete(d["tenant_id"], d["request_id"], d["deployment"]["model"],
                                 {"input_tokens": 20, "cached_input_tokens": 0, "output_tokens": rng.randint(1, 300),
                                  "reasoning_tokens": 0})
    assert len(decisions) == REQUESTS

    # Invariant 4: one decision per request, duplicates identical.
    by_request: dict[str, list[dict]] = {}
    for d in gate.decisions():
        by_request.setdefault(d["request_id"], []).append(d)
    for fut in futures:
        published = by_request[fut.request_id]
        assert all(d == published[0] for d in published), f"{fut.request_id} got different decisions"
        if victim in EXACTLY_ONCE:
            assert len(published) == 1, f"{fut.request_id} was decided {len(published)} times"

    # Invariant 2: at most one reservation and one settlement per request id.
    allowed = sum(d["outcome"] in ("ALLOW", "DOWNGRADE") for d in decisions)
    deadline = time.monotonic() + 90
    while True:
        ledger = gate.ledger()
        placed = Counter(r["request_id"] for _, n, r in ledger if n == "ReservationPlaced")
        settled = Counter(r["request_id"] for _, n, r in ledger if n == "ReservationSettled")
        if sum(settled.values()) >= allowed or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert max(placed.values()) == 1 and max(settled.values()) == 1
    assert sum(settled.values()) == allowed, "every allowed request settled exactly once"

    # Invariant 3: the fold from offset 0 equals what the service holds.
    gate.wait_fold_matches_service()
