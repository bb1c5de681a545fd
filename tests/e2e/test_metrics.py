"""Every process's GET /metrics, scraped over HTTP from the real services (the gate's four and the
projector) after requests through the real gate: decisions by outcome equal what was sent, and the
latency histograms counted each of them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import GATE_SERVICES, Projected
from tests.scrape import Samples, by, scrape, total

pytestmark = pytest.mark.e2e

USD = 1_000_000
PROMPT = [{"role": "user", "content": "Summarise the quarterly ledger in three bullets."}]
def eventually(check: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    """The check's value once it stops raising AssertionError (scrapes trail the work by a poll or two)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_each_process_serves_metrics_that_match_the_traffic(projected: Projected) -> None:
    gate = projected.gate
    ports = gate.health_ports
    router0 = scrape(ports["router"])
    decided0 = by(router0, "ledgergate_decisions_total", "outcome")
    latency0 = total(router0, "ledgergate_request_to_decision_seconds_count")
    hops0 = by(router0, "ledgergate_hop_latency_seconds_count", "stage")

    gate.client.send_command("m-acme", "SET_LIMIT", 100 * USD)
    allowed = [gate.client.request("m-acme", PROMPT, "gpt-4o", 200, timeout_s=30) for _ in range(4)]
    denied = [gate.client.request("m-nobody", PROMPT, "gpt-4o", 200, timeout_s=30) for _ in range(3)]
    assert [d["outcome"] for d in allowed] == ["ALLOW"] * 4 and [d["outcome"] for d in denied] == ["DENY"] * 3
    usage = {"input_tokens": 40, "cached_input_tokens": 8, "output_tokens": 90, "reasoning_tokens": 5}
    gate.client.complete("m-acme", allowed[0]["request_id"], "gpt-4o", usage)

    def router_counts() -> Samples:
        now = scrape(ports["router"])
        decided = by(now, "ledgergate_decisions_total", "outcome")
        assert {k: decided.get(k, 0) - decided0.get(k, 0) for k in ("ALLOW", "DENY", "DOWNGRADE", "THROTTLE")} == {
            "ALLOW": 4, "DENY": 3, "DOWNGRADE": 0, "THROTTLE": 0}
        return now

    router = eventually(router_counts)
    assert total(router, "ledgergate_decisions_total", outcome="ALLOW", model="gpt-4o", reason="within_budget") >= 4
    assert total(router, "ledgergate_decisions_total", outcome="DENY", reason="no_budget", model="none") >= 3
    # Each decision's latencies: from the SDK's send stamp, and over every hop.
    assert total(router, "ledgergate_request_to_decision_seconds_count") - latency0 == 7
    assert total(router, "ledgergate_request_to_decision_seconds_sum") > 0
    hops = by(router, "ledgergate_hop_latency_seconds_count", "stage")
    assert {s: hops.get(s, 0) - hops0.get(s, 0) for s in ("count", "policy", "budget", "route")} == {
        "count": 7, "policy": 7, "budget": 7, "route": 7}
    assert total(router, "ledgergate_request_to_decision_seconds_bucket", le="+Inf") - latency0 == 7
    assert total(router, "ledgergate_transactions_total", service="router", result="committed") > 0

    def settled() -> Samples:
        now = scrape(ports["budget-manager"])
        assert total(now, "ledgergate_spend_micro_usd_total", model="gpt-4o") > 0
        # The fixture's TTL is 4 s: the three holds never settled expire, and none stays open.
        assert total(now, "ledgergate_reservations_expired_total") >= 3
        assert total(now, "ledgergate_reservations_open") == 0
        assert total(now, "ledgergate_reservations_open_micro_usd") == 0
        return now

    budget = eventually(settled)
    assert total(budget, "ledgergate_ledger_entries_total", type="ReservationPlaced") >= 4
    assert total(budget, "ledgergate_ledger_entries_total", type="ReservationSettled") == 1
    assert total(budget, "ledgergate_transactions_total", service="budget-manager", result="committed") > 0
    assert total(budget, "ledgergate_rebuild_duration_seconds_count", service="budget-manager") >= 1

    def metered() -> Samples:
        now = scrape(ports["token-counter"])
        tokens = {got["token_type"]: v for got, v in now.get("ledgergate_tokens_total", [])
                  if got["model"] == "gpt-4o" and got["source"] == "measured"}
        assert tokens == {"input": 40, "cached_input": 8, "output": 90, "reasoning": 5}
        return now

    eventually(metered)
    # Every process: the loop's batches, and consumer lag per group and partition from librdkafka's
    # statistics (every 5 s), for the partitions it owns.
    for name in [*GATE_SERVICES, "projector"]:
        def looped(name: str = name) -> None:
            now = scrape(ports[name])
            assert total(now, "ledgergate_batches_total") > 0, name
            lag = now.get("ledgergate_consumer_lag_messages", [])
            assert lag and all(v >= 0 for _, v in lag), name
            assert all(got["group"].endswith(f"ledgergate-{name}") for got, _ in lag), (name, lag)
            assert "ledgergate_process_cpu_seconds_total" in now, name

        eventually(looped)
