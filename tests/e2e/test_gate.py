"""The gate end to end: real broker, the four services as processes, the SDK as the client."""

from __future__ import annotations

import time
import uuid
from collections import Counter

from confluent_kafka import Producer

from ledgergate import topics
from ledgergate.kafka_config import producer_config
from ledgergate.shared.catalogue import prices
from tests.e2e.conftest import RESERVATION_TTL_MS, Gate

USD = 1_000_000
SMALL = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Summarise the ledger."}]


def _limit(gate: Gate, tenant: str, micro_usd: int, workflow: str = "") -> None:
    gate.client.send_command(tenant, "SET_LIMIT", micro_usd, scope_type="WORKFLOW" if workflow else "TENANT",
                             scope_id=workflow or tenant)


def _wait(predicate, timeout_s: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _balance(gate: Gate, tenant: str) -> dict[str, int]:
    view = gate.reported().get(tenant, {})
    return next((v for k, v in view.items() if k.endswith(f"/TENANT/{tenant}")), {})


def test_allow_settle_releases_the_remainder(gate: Gate) -> None:
    _limit(gate, "acme", 100 * USD)
    d = gate.client.request("acme", SMALL, "gpt-4o", 500, timeout_s=30)
    assert d["outcome"] == "ALLOW" and d["deployment"]["model"] == "gpt-4o"
    assert d["reserved_micro_usd"] > 0 and d["granted_output_tokens"] == 500
    _wait(lambda: _balance(gate, "acme").get("pending_micro_usd") == d["reserved_micro_usd"], what="hold")
    gate.client.complete("acme", d["request_id"], "gpt-4o",
                         {"input_tokens": 30, "cached_input_tokens": 0, "output_tokens": 50, "reasoning_tokens": 0})
    # The version in force when the request was planned; gpt-4o is 2.50/10.00 in every version so far.
    version = prices().at(int(time.time() * 1000)).version
    assert prices().cost_micro_usd(version, "gpt-4o", 30, 0, 50, reasoning_tokens=0) == (
        30 * 2_500_000 + 50 * 10_000_000 + 999_999) // 1_000_000
    actual = (30 * 2_500_000 + 50 * 10_000_000 + 999_999) // 1_000_000  # rounded up
    _wait(lambda: _balance(gate, "acme") == {"limit_micro_usd": 100 * USD, "credit_micro_usd": 0,
                                             "posted_micro_usd": actual, "pending_micro_usd": 0}, what="settlement")
    settled = [r for _, n, r in gate.ledger() if n == "ReservationSettled"]
    assert len(settled) == 1 and settled[0]["released_micro_usd"] == d["reserved_micro_usd"] - actual
    assert settled[0]["usage"]["output_tokens"] == 50 and settled[0]["price_version"] == version
    gate.wait_fold_matches_service()


def _entry(gate: Gate, name: str, request_id: str) -> dict:
    return _wait(lambda: [r for _, n, r in gate.ledger() if n == name and r["request_id"] == request_id],
                 what=name)[0]


def test_negotiated_discount_is_estimated_settled_and_recorded(gate: Gate) -> None:
    """A tenant's price override (SET_POLICY) prices the plan, travels in the price key and settles at the
    same effective price (docs/decisions/0012-price-overrides.md)."""
    _limit(gate, "discounted", 100 * USD)
    gate.client.send_command("discounted", "SET_POLICY",
                             policy_json='{"price_overrides": {"gpt-4o": {"discount_ppm": 150000}}}')
    # The policy service folds the PolicyChanged asynchronously: ask until a plan carries the override.
    deadline = time.monotonic() + 20
    while True:
        d = gate.client.request("discounted", SMALL, "gpt-4o", 500, timeout_s=30)
        placed = _entry(gate, "ReservationPlaced", d["request_id"])
        if "+" in placed["price_version"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    version = prices().at(int(time.time() * 1000)).version
    key = f"{version}+gpt-4o:discount_ppm=150000"
    assert placed["price_version"] == key and d["outcome"] == "ALLOW"
    gate.client.complete("discounted", d["request_id"], "gpt-4o",
                         {"input_tokens": 30, "cached_input_tokens": 0, "output_tokens": 50, "reasoning_tokens": 0})
    settled = _entry(gate, "ReservationSettled", d["request_id"])
    # (30 x 2.50 + 50 x 10.00) = 575 micro-USD list, 15 % off = 488.75, rounded up
    assert settled["price_version"] == key and settled["actual_micro_usd"] == 489
    assert prices().cost_micro_usd(key, "gpt-4o", 30, 0, 50, reasoning_tokens=0) == 489


def test_exhausted_budget_denies_with_binding_scope(gate: Gate) -> None:
    _limit(gate, "tiny", 50)  # 50 micro-USD: not even the cheapest candidate fits
    d = gate.client.request("tiny", SMALL, "gpt-4o", 1000, timeout_s=30)
    assert d["outcome"] == "DENY"
    assert d["reason_codes"] == ["budget_exhausted"] and d["binding_scope"] == "tenant:tiny"
    _limit(gate, "wf-co", 100 * USD)
    _limit(gate, "wf-co", 50, workflow="nightly")
    d = gate.client.request("wf-co", SMALL, "gpt-4o", 1000, workflow_id="nightly", timeout_s=30)
    assert d["outcome"] == "DENY" and d["binding_scope"] == "workflow:nightly"
    d = gate.client.request("nobody", SMALL, "gpt-4o", 100, timeout_s=30)
    assert d["outcome"] == "DENY" and d["reason_codes"] == ["no_budget"]


def test_tenant_over_80_percent_is_downgraded(gate: Gate) -> None:
    _limit(gate, "burner", 1 * USD)
    d = gate.client.request("burner", SMALL, "gpt-4o", 100, timeout_s=30)
    assert d["outcome"] == "ALLOW"
    # Spend 85 % of the budget: 34,000 output tokens of gpt-4o at $10/M = $0.34 ... scale to 0.85 USD.
    gate.client.complete("burner", d["request_id"], "gpt-4o",
                         {"input_tokens": 0, "cached_input_tokens": 0, "output_tokens": 85_000, "reasoning_tokens": 0})
    _wait(lambda: _balance(gate, "burner").get("posted_micro_usd", 0) >= 850_000, what="spend posted")
    # The policy folds the ledger asynchronously (burn is advisory; the budget itself is exact), so give
    # it a moment to see the settlement: a few ALLOWs first are fine, a downgrade must come.
    deadline = time.monotonic() + 20
    while True:
        d = gate.client.request("burner", SMALL, "gpt-4o", 100, priority="NORMAL", timeout_s=30)
        if d["outcome"] != "ALLOW" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert d["outcome"] == "DOWNGRADE", d
    assert d["deployment"]["model"] == "gpt-4o-mini" and "downgraded_by_policy" in d["reason_codes"]
    d = gate.client.request("burner", SMALL, "gpt-4o", 100, priority="HIGH", timeout_s=30)
    assert d["outcome"] == "ALLOW", "HIGH keeps the top tier until 95 %"


def test_expired_reservation_releases_its_hold(gate: Gate) -> None:
    _limit(gate, "crashy", 10 * USD)
    d = gate.client.request("crashy", SMALL, "gpt-4o", 1000, timeout_s=30)
    assert d["outcome"] == "ALLOW"
    _wait(lambda: _balance(gate, "crashy").get("pending_micro_usd") == d["reserved_micro_usd"], what="hold")
    time.sleep(RESERVATION_TTL_MS / 1000)
    _wait(lambda: _balance(gate, "crashy").get("pending_micro_usd") == 0, what="expiry")
    expired = [r for _, n, r in gate.ledger() if n == "ReservationExpired"]
    assert [r["request_id"] for r in expired] == [d["request_id"]]
    assert expired[0]["released_micro_usd"] == d["reserved_micro_usd"]


def test_repeats_are_identical_and_malformed_input_is_denied(gate: Gate) -> None:
    _limit(gate, "retry", 10 * USD)
    rid = f"fixed-{uuid.uuid4().hex[:8]}"
    first = gate.client.request("retry", SMALL, "gpt-4o", 100, request_id=rid, timeout_s=30)
    again = gate.client.request("retry", SMALL, "gpt-4o", 100, request_id=rid, timeout_s=30)
    assert again == first
    placed = [r for _, n, r in gate.ledger() if n == "ReservationPlaced" and r["request_id"] == rid]
    assert len(placed) == 1, "one reservation per request id"
    conflict = gate.client.request("retry", SMALL, "gpt-4.1", 100, request_id=rid, timeout_s=30)
    assert conflict["outcome"] == "DENY" and conflict["reason_codes"] == ["idempotency_conflict"]
    # Garbage bytes with a readable key and request id header: DENY invalid_request, not a crash.
    bad_id = f"bad-{uuid.uuid4().hex[:8]}"
    producer = Producer(producer_config(gate.kafka.kafka_connection))
    producer.produce(gate.kafka.topic(topics.REQUESTS), key=b"retry", value=b"\xc3\x01garbage-not-avro",
                     headers=[("request_id", bad_id.encode())])
    producer.produce(gate.kafka.topic(topics.REQUESTS), key=None, value=b"\x00nothing readable")
    assert producer.flush(10) == 0
    decision = _wait(lambda: next((d for d in gate.decisions() if d["request_id"] == bad_id), None),
                     what="invalid_request decision")
    assert decision["outcome"] == "DENY" and decision["reason_codes"] == ["invalid_request"]
    # Nothing readable at all: a dead-letter record that names the error and where the input was.
    dead = _wait(lambda: gate.dead_letters(), what="dead letter")
    assert len(dead) == 1
    assert dead[0]["original_topic"] == gate.kafka.topic(topics.REQUESTS)
    assert dead[0]["error_code"] == "malformed_message" and dead[0]["original_value"] == b"\x00nothing readable"


def test_concurrent_requests_never_overspend(gate: Gate) -> None:
    """Invariant 1 under load: 2,000 requests race for a budget that binds. Half a dollar: the premium
    model until 80 % burn, then downgrades, then denials. (At 2 USD the downgrades alone could fit what was
    left: a run here was 906 ALLOW + 1,094 DOWNGRADE and not one DENY.)"""
    limit = USD // 2
    _limit(gate, "race", limit)
    futures = [gate.client.submit("race", SMALL, "gpt-4o", 200, workflow_id=f"wf{i % 7}", timeout_s=120)
               for i in range(2000)]
    decisions = [f.result(timeout=180) for f in futures]
    outcomes = Counter(d["outcome"] for d in decisions)
    assert len({d["request_id"] for d in decisions}) == 2000
    assert outcomes["DENY"] > 0 and outcomes["ALLOW"] + outcomes["DOWNGRADE"] > 0, outcomes
    reserved = sum(d["reserved_micro_usd"] for d in decisions)
    assert reserved <= limit
    per_request = Counter(d["request_id"] for d in gate.decisions())
    assert set(per_request.values()) == {1}, "exactly one decision per request"
    gate.wait_fold_matches_service()
