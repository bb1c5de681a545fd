"""budget-manager's pure core by example: reserve, settle, expire, periods, thresholds and commands.

Every test builds a TenantState by folding entries the core itself decided, exactly as the service does.
"""

from __future__ import annotations

import copy
import json

import pytest

from ledgergate.events import FailOpenCall, Usage
from ledgergate.shared.catalogue import prices
from ledgergate.shared.ledger.decide import (
    Candidate,
    Command,
    Rejected,
    Reserve,
    Settle,
    decide_command,
    decide_expiry,
    decide_reserve,
    decide_settle,
)
from ledgergate.shared.ledger.entries import (
    BudgetLimitSet,
    CreditGranted,
    LedgerEntry,
    PeriodOpened,
    PolicyChanged,
    ReservationDenied,
    ReservationExpired,
    ReservationPlaced,
    ReservationRepeated,
    ReservationSettled,
    ReservationVoided,
    ThresholdCrossed,
)
from ledgergate.shared.ledger.state import (
    CANARY,
    REGION,
    TENANT,
    WORKFLOW,
    TenantState,
    balances_view,
    evolve,
    scope_problem,
)

TENANT_ID = "acme"
PV = "2026-11-01"
T0 = 1_794_000_000_000  # 2026-11-06T...Z
NOV, DEC = "2026-11", "2026-12"
DEC_START = 1_796_083_200_000
TTL = 60_000
USD = 1_000_000


# ---------------------------------------------------------------------------------------------- helpers


def apply(state: TenantState, entries: list[LedgerEntry] | Rejected) -> list[LedgerEntry]:
    assert not isinstance(entries, Rejected), entries
    for e in entries:
        evolve(state, e)
    return entries


def command(kind: str, amount: int = 0, *, cid: str, scope_type: str = TENANT, scope_id: str = "",
            request_id: str | None = None, policy_json: str | None = None, reason: str = "test") -> Command:
    return Command(cid, TENANT_ID, kind, scope_type, scope_id, amount, request_id, policy_json, reason)


def cand(model: str, cost: int, tier: str = "premium", granted: int = 100) -> Candidate:
    return Candidate(model, tier, cost, granted, PV)


def reserve(request_id: str, *candidates: Candidate, workflow: str = "", sha: str = "sha-1",
            envelope: int | None = None, requested_model: str = "gpt-4o", **extra) -> Reserve:
    return Reserve(request_id=request_id, tenant_id=TENANT_ID, workflow_id=workflow, agent_id="agent",
                   requested_model=requested_model, priority="NORMAL", region=None, requested_at_ms=T0 - 7,
                   request_sha256=sha, input_tokens=42, envelope_micro_usd=envelope, policy_version=0,
                   candidates=tuple(candidates), **extra)


def usage(inp: int = 0, cached: int = 0, out: int = 0, reasoning: int = 0) -> Usage:
    return Usage(inp, cached, out, reasoning)


def settle(request_id: str, u: Usage, model: str = "gpt-4o", *, cancelled: bool = False) -> Settle:
    return Settle(request_id, TENANT_ID, model, u, False, cancelled)


def with_limit(amount: int, *, workflow: str | None = None, workflow_limit: int | None = None) -> TenantState:
    state = TenantState(TENANT_ID)
    apply(state, decide_command(state, command("SET_LIMIT", amount, cid="set-tenant"), T0))
    if workflow is not None and workflow_limit is not None:
        apply(state, decide_command(state, command("SET_LIMIT", workflow_limit, cid="set-wf", scope_type=WORKFLOW,
                                                   scope_id=workflow), T0))
    return state


def only(entries: list[LedgerEntry], cls: type) -> LedgerEntry:
    found = [e for e in entries if isinstance(e, cls)]
    assert len(found) == 1, entries
    return found[0]


def view(state: TenantState, period: str = NOV, scope: tuple[str, str] = (TENANT, TENANT_ID)) -> dict[str, int]:
    return balances_view(state)[f"{period}/{scope[0]}/{scope[1]}"]


def cost(model: str, u: Usage) -> int:
    return prices().cost_micro_usd(PV, model, u.input_tokens, u.cached_input_tokens,
                                   u.output_tokens, reasoning_tokens=u.reasoning_tokens)


# ---------------------------------------------------------------------------------------------- reserve


def test_reserve_within_budget_places_the_first_candidate() -> None:
    state = with_limit(1_000_000)
    entries = apply(state, decide_reserve(state, reserve("r1", cand("gpt-4o", 300_000)), T0, TTL, "0:1"))
    assert len(entries) == 1
    placed = entries[0]
    assert isinstance(placed, ReservationPlaced)
    assert placed.entry_id == "r1/reservation"
    assert placed.model == "gpt-4o"
    assert placed.candidate_index == 0
    assert placed.amount_micro_usd == 300_000
    assert placed.tenant_remaining_micro_usd == 700_000
    assert placed.expires_at_ms == T0 + TTL
    assert placed.period_id == NOV
    assert placed.price_version == PV
    assert view(state) == {"limit_micro_usd": 1_000_000, "credit_micro_usd": 0, "posted_micro_usd": 0,
                           "pending_micro_usd": 300_000}
    assert state.holds["r1"].amount_micro_usd == 300_000

    second = apply(state, decide_reserve(state, reserve("r2", cand("gpt-4o", 200_000)), T0 + 1, TTL, "0:2"))
    assert only(second, ReservationPlaced).tenant_remaining_micro_usd == 500_000


def test_first_candidate_unaffordable_second_fits() -> None:
    state = with_limit(100_000)
    entries = decide_reserve(state, reserve("r1", cand("gpt-4o", 150_000),
                                            cand("gpt-4o-mini", 90_000, "standard")), T0, TTL, "0:1")
    placed = only(entries, ReservationPlaced)
    assert placed.candidate_index == 1
    assert placed.model == "gpt-4o-mini"
    assert placed.tier == "standard"
    assert placed.amount_micro_usd == 90_000
    assert placed.requested_model == "gpt-4o"
    assert placed.tenant_remaining_micro_usd == 10_000


def test_exactly_the_remaining_headroom_fits() -> None:
    state = with_limit(100_000)
    placed = only(decide_reserve(state, reserve("r1", cand("gpt-4o", 100_000)), T0, TTL, "c"), ReservationPlaced)
    assert placed.tenant_remaining_micro_usd == 0


def test_no_candidate_fits_denies_budget_exhausted_on_tenant() -> None:
    state = with_limit(100_000)
    apply(state, decide_reserve(state, reserve("r0", cand("gpt-4o", 60_000)), T0, TTL, "0:0"))
    entries = apply(state, decide_reserve(state, reserve("r1", cand("gpt-4o", 80_000), cand("gpt-4.1-nano", 50_000)),
                                          T0, TTL, "0:1"))
    denied = only(entries, ReservationDenied)
    assert denied.reason == "budget_exhausted"
    assert denied.binding_scope == f"tenant:{TENANT_ID}"
    assert denied.tenant_remaining_micro_usd == 40_000
    assert "50000" in denied.detail  # the cheapest (last) candidate is the one reported
    assert "r1" not in state.holds
    assert view(state)["pending_micro_usd"] == 60_000


def test_workflow_limit_binds() -> None:
    state = with_limit(1_000_000, workflow="wf-1", workflow_limit=50_000)
    denied = only(decide_reserve(state, reserve("r1", cand("gpt-4o", 60_000), workflow="wf-1"), T0, TTL, "c"),
                  ReservationDenied)
    assert denied.reason == "budget_exhausted"
    assert denied.binding_scope == "workflow:wf-1"
    assert denied.tenant_remaining_micro_usd == 1_000_000
    # the same cost outside the workflow is fine
    assert isinstance(decide_reserve(state, reserve("r2", cand("gpt-4o", 60_000)), T0, TTL, "c")[0],
                      ReservationPlaced)


def test_workflow_hold_is_pending_on_both_scopes() -> None:
    state = with_limit(1_000_000, workflow="wf-1", workflow_limit=500_000)
    apply(state, decide_reserve(state, reserve("r1", cand("gpt-4o", 70_000), workflow="wf-1"), T0, TTL, "c"))
    assert view(state)["pending_micro_usd"] == 70_000
    assert view(state, scope=(WORKFLOW, "wf-1"))["pending_micro_usd"] == 70_000


def test_envelope_binds() -> None:
    state = with_limit(1_000_000)
    denied = only(decide_reserve(state, reserve("r1", cand("gpt-4o", 60_000), envelope=59_999), T0, TTL, "c"),
                  ReservationDenied)
    assert denied.reason == "over_request_envelope"
    assert denied.binding_scope == "request"
    placed = only(decide_reserve(state, reserve("r1", cand("gpt-4o", 60_000), cand("gpt-4o-mini", 5_000),
                                                envelope=59_999), T0, TTL, "c"), ReservationPlaced)
    assert placed.candidate_index == 1


def test_no_limit_denies_no_budget() -> None:
    state = TenantState(TENANT_ID)
    entries = decide_reserve(state, reserve("r1", cand("gpt-4o", 1)), T0, TTL, "c")
    assert isinstance(entries[0], PeriodOpened)
    denied = only(entries, ReservationDenied)
    assert denied.reason == "no_budget"
    assert denied.binding_scope == f"tenant:{TENANT_ID}"
    assert denied.tenant_remaining_micro_usd == 0


def test_no_candidates_denies_no_candidate() -> None:
    state = with_limit(1_000_000)
    denied = only(decide_reserve(state, reserve("r1"), T0, TTL, "c"), ReservationDenied)
    assert denied.reason == "no_candidate"
    assert denied.binding_scope == "policy"


def test_same_request_same_sha_is_repeated() -> None:
    state = with_limit(1_000_000)
    apply(state, decide_reserve(state, reserve("r1", cand("gpt-4o", 10_000)), T0, TTL, "0:1"))
    before = balances_view(state)
    entries = apply(state, decide_reserve(state, reserve("r1", cand("gpt-4o", 10_000)), T0 + 5, TTL, "0:9"))
    repeated = only(entries, ReservationRepeated)
    assert repeated.original_entry_id == "r1/reservation"
    assert repeated.entry_id == "r1/repeat@0:9"
    assert len(entries) == 1
    assert balances_view(state) == before
    assert view(state)["pending_micro_usd"] == 10_000


def test_same_request_other_sha_is_conflict_and_keeps_the_original_outcome() -> None:
    state = with_limit(1_000_000)
    apply(state, decide_reserve(state, reserve("r1", cand("gpt-4o", 10_000), sha="sha-A"), T0, TTL, "0:1"))
    original = state.outcome("r1")
    assert original == ("r1/reservation", "sha-A")
    entries = apply(state, decide_reserve(state, reserve("r1", cand("gpt-4o", 10_000), sha="sha-B"), T0, TTL, "0:2"))
    denied = only(entries, ReservationDenied)
    assert denied.reason == "idempotency_conflict"
    assert denied.entry_id == "r1/conflict@0:2"
    assert denied.binding_scope == "conflict"
    assert state.outcome("r1") == original
    # a retry with the original content is still recognised as a repeat of the original placement
    again = only(decide_reserve(state, reserve("r1", cand("gpt-4o", 10_000), sha="sha-A"), T0, TTL, "0:3"),
                 ReservationRepeated)
    assert again.original_entry_id == "r1/reservation"
    assert view(state)["pending_micro_usd"] == 10_000


def test_repeat_of_a_denial_points_at_the_denial() -> None:
    state = with_limit(5)
    apply(state, decide_reserve(state, reserve("r1", cand("gpt-4o", 10)), T0, TTL, "0:1"))
    repeated = only(decide_reserve(state, reserve("r1", cand("gpt-4o", 1)), T0, TTL, "0:2"), ReservationRepeated)
    assert repeated.original_entry_id == "r1/reservation"


def test_plan_rejection_becomes_denial_with_its_reason_scope_and_retry_after() -> None:
    state = with_limit(1_000_000)
    cmd = reserve("r1", rejection_reason="rate_limited", rejection_detail="over 5/s", rejection_scope="rate",
                  retry_after_ms=1_234)
    denied = only(apply(state, decide_reserve(state, cmd, T0, TTL, "c")), ReservationDenied)
    assert (denied.reason, denied.detail, denied.binding_scope, denied.retry_after_ms) == (
        "rate_limited", "over 5/s", "rate", 1_234)
    assert denied.tenant_remaining_micro_usd == 1_000_000
    assert state.holds == {}
    # A throttle is not final: the same request id may come back after retry_after_ms.
    assert "r1" not in state.outcomes and denied.entry_id == "r1/throttle@c"


def test_an_unauthenticated_request_is_denied_without_touching_the_tenants_state() -> None:
    state = with_limit(1_000_000)
    apply(state, decide_reserve(state, reserve("used", cand("gpt-4o", 10)), T0, TTL, "0:1"))
    forged = reserve("r1", rejection_reason="unauthenticated", rejection_detail="bad signature",
                     rejection_scope="credential", sha="")
    denied = only(apply(state, decide_reserve(state, forged, T0, TTL, "0:2")), ReservationDenied)
    assert (denied.reason, denied.binding_scope, denied.entry_id) == ("unauthenticated", "credential",
                                                                      "r1/unauthenticated@0:2")
    # Nothing of the tenant leaks to the forger (its remaining budget), and the id stays the tenant's: the
    # real request under it is decided on its merits.
    assert denied.tenant_remaining_micro_usd == 0 and "r1" not in state.outcomes
    only(apply(state, decide_reserve(state, reserve("r1", cand("gpt-4o", 10)), T0, TTL, "0:3")), ReservationPlaced)
    # Under an id the tenant already used: still unauthenticated, never a conflict (which would say it is used).
    again = only(decide_reserve(state, forged, T0, TTL, "0:4"), ReservationDenied)
    assert again.reason == "unauthenticated" and again.entry_id == "r1/unauthenticated@0:4"


# ---------------------------------------------------------------------------------------------- settle


def placed_state(amount: int = 100_000, limit: int = 1_000_000, workflow: str = "") -> TenantState:
    state = with_limit(limit)
    apply(state, decide_reserve(state, reserve("r1", cand("gpt-4o", amount), workflow=workflow), T0, TTL, "c"))
    return state


def test_settlement_posts_actual_and_releases_the_rest() -> None:
    state = placed_state(100_000)
    u = usage(inp=1_000, cached=200, out=500, reasoning=100)
    actual = cost("gpt-4o", u)
    assert actual == 8_250  # 800*2.5 + 200*1.25 + 600*10
    settled = only(apply(state, decide_settle(state, settle("r1", u), T0 + 10, prices())), ReservationSettled)
    assert settled.entry_id == "r1/settlement"
    assert (settled.reserved_micro_usd, settled.actual_micro_usd, settled.released_micro_usd,
            settled.overage_micro_usd) == (100_000, 8_250, 91_750, 0)
    assert settled.price_version == PV
    assert settled.usage == u
    assert view(state) == {"limit_micro_usd": 1_000_000, "credit_micro_usd": 0, "posted_micro_usd": 8_250,
                           "pending_micro_usd": 0}
    assert "r1" not in state.holds


def test_reasoning_tokens_are_billed_as_output() -> None:
    state = placed_state(100_000)
    u = usage(inp=0, out=0, reasoning=1_000)
    settled = only(decide_settle(state, settle("r1", u), T0, prices()), ReservationSettled)
    assert settled.actual_micro_usd == 10_000


def test_settlement_over_reserved_flags_overage() -> None:
    state = placed_state(1_000)
    u = usage(inp=1_000, out=1_000)
    settled = only(apply(state, decide_settle(state, settle("r1", u), T0, prices())), ReservationSettled)
    assert settled.actual_micro_usd == 12_500
    assert settled.released_micro_usd == 0
    assert settled.overage_micro_usd == 11_500
    assert view(state)["posted_micro_usd"] == 12_500
    assert view(state)["pending_micro_usd"] == 0


def test_settlement_uses_the_reported_model_price() -> None:
    state = placed_state(100_000)
    u = usage(inp=1_000, out=1_000)
    settled = only(decide_settle(state, settle("r1", u, model="gpt-4o-mini"), T0, prices()), ReservationSettled)
    assert settled.model == "gpt-4o-mini"
    assert settled.actual_micro_usd == cost("gpt-4o-mini", u) == 750


def test_settlement_with_unpriced_alias_charges_the_reserved_model() -> None:
    state = placed_state(100_000)
    u = usage(inp=1_000, out=1_000)
    settled = only(decide_settle(state, settle("r1", u, model="gpt-4o-2026-08-06"), T0, prices()),
                   ReservationSettled)
    assert settled.model == "gpt-4o"
    assert settled.actual_micro_usd == 12_500


def test_second_settlement_is_ignored() -> None:
    state = placed_state()
    apply(state, decide_settle(state, settle("r1", usage(inp=10, out=10)), T0, prices()))
    assert decide_settle(state, settle("r1", usage(inp=10, out=10)), T0 + 1, prices()) == []
    assert decide_settle(state, settle("unknown", usage(inp=10, out=10)), T0 + 1, prices()) == []


def test_cancelled_without_usage_voids_the_hold() -> None:
    state = placed_state(100_000)
    voided = only(apply(state, decide_settle(state, settle("r1", usage(), cancelled=True), T0, prices())),
                  ReservationVoided)
    assert voided.released_micro_usd == 100_000
    assert view(state)["pending_micro_usd"] == 0
    assert view(state)["posted_micro_usd"] == 0


def test_workflow_settlement_moves_both_scopes() -> None:
    state = placed_state(100_000, workflow="wf")
    apply(state, decide_settle(state, settle("r1", usage(inp=1_000)), T0, prices()))
    for scope in ((TENANT, TENANT_ID), (WORKFLOW, "wf")):
        assert view(state, scope=scope)["posted_micro_usd"] == 2_500
        assert view(state, scope=scope)["pending_micro_usd"] == 0


# ---------------------------------------------------------------------------------------------- expiry


def test_expiry_releases_the_hold_and_a_late_settlement_is_all_overage() -> None:
    state = placed_state(100_000)
    assert decide_expiry(state, T0 + TTL - 1) == []
    expired = only(apply(state, decide_expiry(state, T0 + TTL)), ReservationExpired)
    assert expired.entry_id == "r1/expiry"
    assert expired.released_micro_usd == 100_000
    assert state.holds == {}
    assert view(state)["pending_micro_usd"] == 0
    assert decide_expiry(state, T0 + 10 * TTL) == []

    u = usage(inp=1_000, out=1_000)
    settled = only(apply(state, decide_settle(state, settle("r1", u), T0 + TTL + 5, prices())), ReservationSettled)
    assert settled.reserved_micro_usd == 0
    assert settled.actual_micro_usd == 12_500
    assert settled.overage_micro_usd == 12_500
    assert settled.released_micro_usd == 0
    assert view(state)["posted_micro_usd"] == 12_500
    assert view(state)["pending_micro_usd"] == 0
    assert decide_settle(state, settle("r1", u), T0 + TTL + 6, prices()) == []


def test_late_settlement_after_expiry_across_a_month_boundary_is_still_charged() -> None:
    state = TenantState(TENANT_ID)
    late_nov = DEC_START - 2 * TTL
    apply(state, decide_command(state, command("SET_LIMIT", USD, cid="set"), late_nov))
    apply(state, decide_reserve(state, reserve("r1", cand("gpt-4o", 100_000)), late_nov, TTL, "c1"))
    apply(state, decide_expiry(state, late_nov + TTL))
    apply(state, decide_reserve(state, reserve("r2", cand("gpt-4o", 1)), DEC_START + 1, TTL, "c2"))  # opens 2026-12
    entries = decide_settle(state, settle("r1", usage(inp=1_000, out=1_000)), DEC_START + 2, prices())
    settled = only(entries, ReservationSettled)
    assert settled.actual_micro_usd == 12_500
    assert settled.period_id == NOV


def test_expiry_only_releases_due_holds() -> None:
    state = with_limit(USD)
    apply(state, decide_reserve(state, reserve("a", cand("gpt-4o", 10)), T0, 1_000, "c1"))
    apply(state, decide_reserve(state, reserve("b", cand("gpt-4o", 20)), T0, 5_000, "c2"))
    expired = apply(state, decide_expiry(state, T0 + 1_000))
    assert [e.request_id for e in expired] == ["a"]
    assert set(state.holds) == {"b"}
    assert view(state)["pending_micro_usd"] == 20


# ---------------------------------------------------------------------------------------------- periods


def test_new_month_opens_a_period_first_and_balances_are_per_period() -> None:
    state = with_limit(100_000)
    apply(state, decide_reserve(state, reserve("r1", cand("gpt-4o", 80_000)), T0, 10 * 86_400_000, "c1"))
    assert state.period_id == NOV
    entries = apply(state, decide_reserve(state, reserve("r2", cand("gpt-4o", 90_000)), DEC_START + 1, TTL, "c2"))
    assert [type(e) for e in entries] == [PeriodOpened, ReservationPlaced]
    opened = entries[0]
    assert (opened.period_id, opened.starts_at_ms, opened.ends_at_ms) == (DEC, DEC_START, 1_798_761_600_000)
    assert opened.entry_id == f"period/{TENANT_ID}/{DEC}"
    placed = entries[1]
    assert placed.period_id == DEC
    assert placed.tenant_remaining_micro_usd == 10_000  # December's headroom ignores November's hold
    assert view(state, NOV)["pending_micro_usd"] == 80_000
    assert view(state, DEC)["pending_micro_usd"] == 90_000
    assert state.period_id == DEC
    # November's hold settles into November, whenever it settles
    settled = only(apply(state, decide_settle(state, settle("r1", usage(inp=1_000)), DEC_START + 2, prices())),
                   ReservationSettled)
    assert settled.period_id == NOV
    assert view(state, NOV) == {"limit_micro_usd": 100_000, "credit_micro_usd": 0, "posted_micro_usd": 2_500,
                                "pending_micro_usd": 0}
    assert view(state, DEC)["posted_micro_usd"] == 0


def test_period_opens_once() -> None:
    state = with_limit(USD)
    assert [type(e) for e in decide_reserve(state, reserve("r1", cand("gpt-4o", 1)), T0, TTL, "c")] == [
        ReservationPlaced]


def test_repeat_is_recognised_in_the_next_period() -> None:
    state = with_limit(USD)
    apply(state, decide_reserve(state, reserve("r1", cand("gpt-4o", 1)), T0, TTL, "c1"))
    entries = apply(state, decide_reserve(state, reserve("r1", cand("gpt-4o", 1)), DEC_START, TTL, "c2"))
    assert [type(e) for e in entries] == [PeriodOpened, ReservationRepeated]


# ---------------------------------------------------------------------------------------------- thresholds


def _spend(state: TenantState, rid: str, input_tokens: int, now_ms: int = T0) -> list[LedgerEntry]:
    """Reserve generously and settle `input_tokens` of gpt-4o (2.5 micro-USD each)."""
    apply(state, decide_reserve(state, reserve(rid, cand("gpt-4o", 1)), now_ms, TTL, rid))
    return apply(state, decide_settle(state, settle(rid, usage(inp=input_tokens)), now_ms, prices()))


def test_thresholds_emitted_once_each_per_period_and_scope() -> None:
    state = with_limit(100_000)  # 40,000 input tokens of gpt-4o
    assert [e for e in _spend(state, "a", 19_999) if isinstance(e, ThresholdCrossed)] == []  # 49,998 < 50,000
    crossed = [e for e in _spend(state, "b", 1) if isinstance(e, ThresholdCrossed)]  # 50,001
    assert [(c.threshold_pct, c.spent_micro_usd, c.limit_micro_usd) for c in crossed] == [(50, 50_001, 100_000)]
    assert crossed[0].entry_id == f"threshold/{TENANT_ID}/{NOV}/TENANT/{TENANT_ID}/50"
    assert [e for e in _spend(state, "c", 1) if isinstance(e, ThresholdCrossed)] == []
    crossed = [e for e in _spend(state, "d", 20_000) if isinstance(e, ThresholdCrossed)]  # 100,004: 80 and 100
    assert [c.threshold_pct for c in crossed] == [80, 100]
    assert [e for e in _spend(state, "e", 4_000) if isinstance(e, ThresholdCrossed)] == []
    assert {(p, pct) for p, _, _, pct in state.thresholds} == {(NOV, 50), (NOV, 80), (NOV, 100)}
    # a new period starts the thresholds again
    crossed = [e for e in _spend(state, "f", 20_001, DEC_START + 1) if isinstance(e, ThresholdCrossed)]
    assert [(c.period_id, c.threshold_pct) for c in crossed] == [(DEC, 50)]


def test_thresholds_count_credit_and_cover_the_workflow_scope() -> None:
    state = with_limit(1_000_000, workflow="wf", workflow_limit=10_000)
    apply(state, decide_command(state, command("GRANT_CREDIT", 10_000, cid="cr", scope_type=WORKFLOW, scope_id="wf"),
                                T0))
    apply(state, decide_reserve(state, reserve("r1", cand("gpt-4o", 1), workflow="wf"), T0, TTL, "c"))
    entries = apply(state, decide_settle(state, settle("r1", usage(inp=4_000)), T0, prices()))  # 10,000
    crossed = [e for e in entries if isinstance(e, ThresholdCrossed)]
    assert [(c.scope_type, c.scope_id, c.threshold_pct, c.limit_micro_usd) for c in crossed] == [
        (WORKFLOW, "wf", 50, 20_000)]


# ---------------------------------------------------------------------------------------------- commands


def test_set_raise_lower_limit() -> None:
    state = TenantState(TENANT_ID)
    entries = apply(state, decide_command(state, command("SET_LIMIT", 1_000, cid="c1"), T0))
    assert isinstance(entries[0], PeriodOpened)
    set_ = only(entries, BudgetLimitSet)
    assert (set_.change, set_.limit_micro_usd, set_.previous_limit_micro_usd, set_.scope_id) == (
        "SET", 1_000, 0, TENANT_ID)
    raised = only(apply(state, decide_command(state, command("RAISE_LIMIT", 500, cid="c2"), T0)), BudgetLimitSet)
    assert (raised.change, raised.limit_micro_usd, raised.previous_limit_micro_usd) == ("RAISED", 1_500, 1_000)
    lowered = only(apply(state, decide_command(state, command("LOWER_LIMIT", 1_200, cid="c3"), T0)), BudgetLimitSet)
    assert (lowered.change, lowered.limit_micro_usd, lowered.previous_limit_micro_usd) == ("LOWERED", 300, 1_500)
    assert state.limits[(TENANT, TENANT_ID)] == 300
    rejected = decide_command(state, command("LOWER_LIMIT", 301, cid="c4"), T0)
    assert isinstance(rejected, Rejected)
    assert rejected.code == "invalid_amount"
    assert state.limits[(TENANT, TENANT_ID)] == 300


def test_duplicate_command_ids_are_ignored() -> None:
    state = TenantState(TENANT_ID)
    apply(state, decide_command(state, command("SET_LIMIT", 1_000, cid="c1"), T0))
    assert decide_command(state, command("SET_LIMIT", 9_999, cid="c1"), T0) == []
    apply(state, decide_command(state, command("GRANT_CREDIT", 50, cid="c2"), T0))
    assert decide_command(state, command("GRANT_CREDIT", 50, cid="c2"), T0) == []
    apply(state, decide_command(state, command("SET_POLICY", policy_json="{}", cid="c3"), T0))
    assert decide_command(state, command("SET_POLICY", policy_json='{"a": 1}', cid="c3"), T0) == []
    assert state.limits[(TENANT, TENANT_ID)] == 1_000
    assert view(state)["credit_micro_usd"] == 50


def test_duplicate_void_command_is_ignored() -> None:
    state = placed_state()
    void = command("VOID_RESERVATION", cid="v1", request_id="r1")
    apply(state, decide_command(state, void, T0))
    assert decide_command(state, void, T0 + 1) == []


def test_grant_credit_adds_headroom() -> None:
    state = with_limit(100)
    credit = only(apply(state, decide_command(state, command("GRANT_CREDIT", 50, cid="c", reason="goodwill"), T0)),
                  CreditGranted)
    assert (credit.amount_micro_usd, credit.reason, credit.scope_type, credit.scope_id) == (
        50, "goodwill", TENANT, TENANT_ID)
    assert view(state)["credit_micro_usd"] == 50
    placed = only(decide_reserve(state, reserve("r1", cand("gpt-4o", 150)), T0, TTL, "c"), ReservationPlaced)
    assert placed.tenant_remaining_micro_usd == 0


def test_void_reservation_releases_the_hold() -> None:
    state = placed_state(100_000)
    voided = only(apply(state, decide_command(state, command("VOID_RESERVATION", cid="v", request_id="r1",
                                                             reason="operator"), T0)), ReservationVoided)
    assert (voided.entry_id, voided.released_micro_usd, voided.reason) == ("r1/void", 100_000, "operator")
    assert view(state)["pending_micro_usd"] == 0
    assert state.holds == {}
    # Voiding again changes nothing; voiding a request that never held budget is an operator error.
    assert decide_command(state, command("VOID_RESERVATION", cid="v2", request_id="r1"), T0) == []
    missing = decide_command(state, command("VOID_RESERVATION", cid="v3", request_id="never"), T0)
    assert isinstance(missing, Rejected)
    assert missing.code == "no_such_reservation"
    # the voided call's usage, if it ever arrives, is not charged
    assert decide_settle(state, settle("r1", usage(inp=1)), T0, prices()) == []


def test_set_policy_bumps_the_version() -> None:
    state = TenantState(TENANT_ID)
    first = only(apply(state, decide_command(state, command("SET_POLICY", policy_json='{"a":1}', cid="p1"), T0)),
                 PolicyChanged)
    second = only(apply(state, decide_command(state, command("SET_POLICY", policy_json='{"a":2}', cid="p2"), T0)),
                  PolicyChanged)
    assert (first.policy_version, second.policy_version) == (1, 2)
    assert (state.policy_version, state.policy_json) == (2, '{"a":2}')
    rejected = decide_command(state, command("SET_POLICY", cid="p3"), T0)
    assert isinstance(rejected, Rejected) and rejected.code == "invalid_policy"


@pytest.mark.parametrize(("cmd", "code"), [
    (command("SET_LIMIT", -1, cid="x"), "invalid_amount"),
    (command("SET_LIMIT", 10**15 + 1, cid="x"), "invalid_amount"),
    (command("SET_LIMIT", 1, cid="x", scope_id="other-tenant"), "invalid_scope"),
    (command("SET_LIMIT", 1, cid="x", scope_type=WORKFLOW, scope_id=""), "invalid_scope"),
    (command("SET_LIMIT", 1, cid="x", scope_type="AGENT", scope_id="a"), "invalid_scope"),
    (command("EXPLODE", 1, cid="x"), "unknown_command"),
])
def test_invalid_commands_are_rejected(cmd: Command, code: str) -> None:
    result = decide_command(TenantState(TENANT_ID), cmd, T0)
    assert isinstance(result, Rejected)
    assert result.code == code


def test_expire_due_command_releases_every_due_hold_once() -> None:
    state = placed_state()
    assert decide_command(state, command("EXPIRE_DUE", cid="e0"), T0 + TTL - 1) == []
    expired = only(apply(state, decide_command(state, command("EXPIRE_DUE", cid="e1"), T0 + TTL)), ReservationExpired)
    assert expired.request_id == "r1" and state.holds == {}
    assert decide_command(state, command("EXPIRE_DUE", cid="e1"), T0 + TTL) == []  # redelivered: nothing due


def test_workflow_limit_is_keyed_by_workflow() -> None:
    state = TenantState(TENANT_ID)
    entry = only(apply(state, decide_command(state, command("SET_LIMIT", 7, cid="w", scope_type=WORKFLOW,
                                                            scope_id="wf"), T0)), BudgetLimitSet)
    assert (entry.scope_type, entry.scope_id) == (WORKFLOW, "wf")
    assert state.limits == {(WORKFLOW, "wf"): 7}


# ---------------------------------------------------------------------------------------------- purity


def test_decide_functions_never_mutate_state() -> None:
    state = with_limit(200_000, workflow="wf", workflow_limit=150_000)
    apply(state, decide_reserve(state, reserve("live", cand("gpt-4o", 100_000), workflow="wf"), T0, TTL, "c1"))
    apply(state, decide_reserve(state, reserve("gone", cand("gpt-4o", 10_000)), T0, TTL, "c2"))
    apply(state, decide_settle(state, settle("gone", usage(inp=30_000)), T0, prices()))
    snapshot = copy.deepcopy(state)
    view_before, holds_before = balances_view(state), dict(state.holds)

    results = [
        decide_reserve(state, reserve("new", cand("gpt-4o", 20_000)), T0, TTL, "c3"),
        decide_reserve(state, reserve("new2", cand("gpt-4o", 20_000)), DEC_START + 1, TTL, "c4"),
        decide_reserve(state, reserve("live", cand("gpt-4o", 1)), T0, TTL, "c5"),
        decide_reserve(state, reserve("live", cand("gpt-4o", 1), sha="other"), T0, TTL, "c6"),
        decide_settle(state, settle("live", usage(inp=100_000, out=10_000)), T0, prices()),
        decide_settle(state, settle("live", usage(), cancelled=True), T0, prices()),
        decide_expiry(state, T0 + TTL),
        decide_command(state, command("LOWER_LIMIT", 1_000, cid="l"), T0),
        decide_command(state, command("GRANT_CREDIT", 1_000, cid="g"), DEC_START),
        decide_command(state, command("VOID_RESERVATION", cid="v", request_id="live"), T0),
        decide_command(state, command("SET_POLICY", policy_json="{}", cid="p"), T0),
    ]
    assert all(r for r in results)  # each call decided something
    assert state == snapshot
    assert balances_view(state) == view_before
    assert state.holds == holds_before


def test_thresholds_for_a_credit_only_budget() -> None:
    state = with_limit(0)
    apply(state, decide_command(state, command("GRANT_CREDIT", 100_000, cid="cr"), T0))
    crossed = [e for e in _spend(state, "a", 24_000) if isinstance(e, ThresholdCrossed)]  # 60,000 of 100,000
    assert [(c.threshold_pct, c.limit_micro_usd) for c in crossed] == [(50, 100_000)]


# ---------------------------------------------------------------------------------------------- fail-open


def fail_open_settle(request_id: str, u: Usage, model: str = "gpt-4o", *, workflow: str = "wf",
                     called_at_ms: int = T0 - 5_000) -> Settle:
    return Settle(request_id, TENANT_ID, model, u, False, False, FailOpenCall(workflow, "agent", model, called_at_ms))


def test_the_policys_fail_open_cap_reaches_placements_and_denials() -> None:
    state = with_limit(1_000_000)
    placed = only(decide_reserve(state, reserve("r1", cand("gpt-4o", 1_000), fail_open_micro_usd_per_min=7),
                                 T0, TTL, "c"), ReservationPlaced)
    assert placed.fail_open_micro_usd_per_min == 7
    denied = only(decide_reserve(state, reserve("r2", cand("gpt-4o", 2_000_000), fail_open_micro_usd_per_min=7),
                                 T0, TTL, "c"), ReservationDenied)
    assert denied.fail_open_micro_usd_per_min == 7


def test_a_fail_open_call_without_a_hold_is_settled_all_overage_and_marked() -> None:
    state = with_limit(1_000_000, workflow="wf", workflow_limit=500_000)
    u = usage(inp=1_000, out=1_000)
    entries = apply(state, decide_settle(state, fail_open_settle("fo-1", u), T0, prices()))
    settled = only(entries, ReservationSettled)
    assert settled.fail_open and settled.workflow_id == "wf" and settled.period_id == NOV
    assert (settled.reserved_micro_usd, settled.actual_micro_usd, settled.released_micro_usd,
            settled.overage_micro_usd) == (0, 12_500, 0, 12_500)
    assert settled.price_version == PV
    assert view(state)["posted_micro_usd"] == 12_500 and view(state)["pending_micro_usd"] == 0
    assert view(state, scope=(WORKFLOW, "wf"))["posted_micro_usd"] == 12_500
    # Reported again (the SDK resends until delivery is confirmed): settled once.
    assert decide_settle(state, fail_open_settle("fo-1", u), T0 + 1, prices()) == []
    # Without the fail-open mark, an unknown request id still settles nothing.
    assert decide_settle(state, settle("other", u), T0 + 1, prices()) == []


def test_a_fail_open_call_whose_request_did_reach_the_gate_settles_its_hold() -> None:
    state = placed_state(100_000)
    settled = only(apply(state, decide_settle(state, fail_open_settle("r1", usage(inp=1_000, out=500), workflow=""),
                                              T0 + 10, prices())), ReservationSettled)
    assert settled.fail_open and settled.reserved_micro_usd == 100_000 and settled.released_micro_usd > 0
    assert "r1" not in state.holds


def test_a_fail_open_call_is_charged_the_tenants_negotiated_price() -> None:
    state = with_limit(1_000_000)
    policy = json.dumps({"price_overrides": {"gpt-4o": {"discount_ppm": 200_000}}})
    apply(state, decide_command(state, command("SET_POLICY", policy_json=policy, cid="pol"), T0))
    settled = only(decide_settle(state, fail_open_settle("fo-1", usage(inp=1_000, out=1_000)), T0, prices()),
                   ReservationSettled)
    assert settled.actual_micro_usd == 10_000  # 12,500 less 20 %
    assert settled.price_version == "2026-11-01+gpt-4o:discount_ppm=200000"


def test_a_fail_open_call_of_an_unpriced_model_settles_nothing() -> None:
    state = with_limit(1_000_000)
    assert not [e for e in decide_settle(state, fail_open_settle("fo-1", usage(inp=1, out=1), model="nope"), T0,
                                         prices()) if isinstance(e, ReservationSettled)]


def test_a_request_arriving_after_its_fail_open_settlement_places_no_hold() -> None:
    state = with_limit(1_000_000)
    apply(state, decide_settle(state, fail_open_settle("fo-1", usage(inp=10, out=10)), T0, prices()))
    denied = only(apply(state, decide_reserve(state, reserve("fo-1", cand("gpt-4o", 1_000)), T0 + 5, TTL, "c")),
                  ReservationDenied)
    assert denied.reason == "idempotency_conflict" and "fail-open" in denied.detail
    assert "fo-1" not in state.holds and view(state)["pending_micro_usd"] == 0


def test_a_settlement_pays_the_regional_surcharge_its_reservation_was_priced_with() -> None:
    state = with_limit(1_000_000)
    key = f"{PV}@eu-west"  # the plan's key for an eu-west request (eu-west: 1,100,000 ppm)
    apply(state, decide_reserve(state, reserve("eu-1", Candidate("gpt-4o", "premium", 50_000, 100, key)), T0, TTL,
                                "c"))
    settled = only(decide_settle(state, settle("eu-1", usage(inp=1_000, out=1_000)), T0 + 5, prices()),
                   ReservationSettled)
    assert settled.price_version == key and settled.actual_micro_usd == 13_750  # 12,500 plus 10 %


def test_a_fail_open_call_cannot_claim_an_old_price_version() -> None:
    # A claimed call time older than the idempotency window, or in the future, is replaced by now.
    state = with_limit(1_000_000)
    u = usage(inp=1_000, out=1_000)
    for claimed in (1, T0 + 10**9):
        settled = only(decide_settle(state, fail_open_settle(f"fo-{claimed}", u, called_at_ms=claimed), T0, prices()),
                       ReservationSettled)
        assert settled.price_version == prices().at(T0).version


def test_a_fail_open_call_voided_before_any_output_settles_nothing() -> None:
    state = with_limit(1_000_000)
    call = fail_open_settle("fo-void", usage())
    voided = Settle(call.request_id, TENANT_ID, call.model, call.usage, False, True, call.fail_open)
    assert decide_settle(state, voided, T0, prices()) == []


# ---------------------------------------------------------------------------------------------- further scopes


def test_a_region_limit_binds_its_candidates_and_the_next_one_fits_elsewhere() -> None:
    state = with_limit(1_000_000)
    apply(state, decide_command(state, command("SET_LIMIT", 50_000, cid="set-region", scope_type=REGION,
                                               scope_id="eu-west"), T0))
    eu = Candidate("gpt-4o", "premium", 60_000, 100, PV, ("REGION:eu-west",))
    us = Candidate("gpt-4o", "premium", 60_000, 100, PV, ("REGION:us-east",))
    denied = only(decide_reserve(state, reserve("r1", eu), T0, TTL, "c"), ReservationDenied)
    assert (denied.reason, denied.binding_scope) == ("budget_exhausted", "region:eu-west")
    placed = only(apply(state, decide_reserve(state, reserve("r2", eu, us), T0, TTL, "c")), ReservationPlaced)
    assert placed.candidate_index == 1 and placed.scopes == ("REGION:us-east",)
    assert view(state, scope=(REGION, "us-east"))["pending_micro_usd"] == 60_000


def test_a_hold_on_further_scopes_is_settled_voided_and_expired_on_them() -> None:
    state = with_limit(1_000_000, workflow="wf-1", workflow_limit=500_000)
    scoped = Candidate("gpt-4o", "premium", 70_000, 100, PV, ("REGION:eu-west", "CANARY:wf-1/new"))
    for rid in ("r1", "r2", "r3"):
        apply(state, decide_reserve(state, reserve(rid, scoped, workflow="wf-1"), T0, TTL, "c"))
    assert view(state, scope=(CANARY, "wf-1/new"))["pending_micro_usd"] == 210_000
    settled = only(apply(state, decide_settle(state, settle("r1", usage(1000, 0, 100)), T0 + 1, prices())),
                   ReservationSettled)
    assert settled.scopes == scoped.scopes
    apply(state, decide_command(state, command("VOID_RESERVATION", cid="void-r2", request_id="r2"), T0 + 2))
    expired = only(apply(state, decide_expiry(state, T0 + TTL + 1)), ReservationExpired)
    assert expired.scopes == scoped.scopes
    for scope in ((REGION, "eu-west"), (CANARY, "wf-1/new"), (WORKFLOW, "wf-1"), (TENANT, TENANT_ID)):
        assert view(state, scope=scope)["pending_micro_usd"] == 0, scope
        assert view(state, scope=scope)["posted_micro_usd"] == settled.actual_micro_usd, scope


def test_a_canary_scope_needs_its_workflow_in_its_id() -> None:
    state = with_limit(1_000_000)
    rejected = decide_command(state, command("SET_LIMIT", 5, cid="c1", scope_type=CANARY, scope_id="new"), T0)
    assert isinstance(rejected, Rejected) and rejected.code == "invalid_scope"
    assert scope_problem("CANARY:new") and scope_problem("ZONE:x") and scope_problem("REGION:")
    assert scope_problem("REGION:eu-west") is None and scope_problem("CANARY:wf/new") is None
