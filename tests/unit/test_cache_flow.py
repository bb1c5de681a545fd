"""The response cache through the decision cores (docs/decisions/0013): the policy service's cache (what it
serves, what it stores), the ledger's CacheHitRecorded (no money moves, a repeat gets the same outcome) and
the router's CACHE_HIT decision. Pure: a real CacheStore and the real price catalogue, no broker."""

from __future__ import annotations

from dataclasses import replace

from ledgergate.events import CacheHit, InvocationCounted, PlanCandidate, Usage, UsageMetered
from ledgergate.services.policy.cache import PolicyCache
from ledgergate.services.router.core import CACHE_ENTRY_GONE_REASON, decision_for
from ledgergate.shared.cache import CacheEntry, CacheRule
from ledgergate.shared.catalogue import deployments, prices
from ledgergate.shared.ledger.decide import Candidate, Command, Reserve, decide_command, decide_reserve
from ledgergate.shared.ledger.entries import CacheHitRecorded, ReservationPlaced, ReservationRepeated
from ledgergate.shared.ledger.state import TenantState, balances_view, evolve
from ledgergate.shared.settings import PolicySettings

T0 = 1_794_000_000_000
PV = "2026-11-01"
RULE = CacheRule(enabled=True, redact_patterns=(r"\b\d{4}-\d{4}\b",))
KEY = "ab" * 32


def counted(tenant: str = "acme", key: str = KEY, labels: dict[str, str] | None = None,
            deterministic: bool = True) -> InvocationCounted:
    return InvocationCounted("req-1", tenant, "wf", "agent", "gpt-4o", 100, "NORMAL", None, None, labels or {}, T0,
                             {}, 12, 12, "o200k_base", 100, "cd" * 32, None, T0 + 1, cache_key=key,
                             cache_deterministic=deterministic)


def metered(request_id: str = "req-1", text: str | None = "Card 1234-5678 is active.", model: str = "gpt-4o",
            status: str = "OK") -> UsageMetered:
    return UsageMetered(request_id, "acme", model, status, Usage(12, 0, 7, 0), False, 7, 1_000_000, T0 + 50,
                        T0 + 51, "wf", None, text)


CANDIDATE = PlanCandidate("gpt-4o", "premium", 30, 1000, 1030, 100, PV)


def cache() -> PolicyCache:
    return PolicyCache(PolicySettings(), "cache.entries")


def test_the_key_is_kept_only_when_the_rule_lets_the_request_use_the_cache() -> None:
    c = cache()
    assert c.key_for(counted(), RULE) == KEY
    assert c.key_for(counted(), CacheRule()) == ""  # off by default
    assert c.key_for(counted(labels={"pii": "1"}), RULE) == ""
    assert c.key_for(counted(labels={"cache": "bypass"}), RULE) == ""
    assert c.key_for(counted(deterministic=False), RULE) == ""
    assert c.key_for(counted(deterministic=False), replace(RULE, serve_nondeterministic=True)) == KEY


def test_an_awaited_answer_becomes_a_redacted_entry_that_a_repeat_is_served_from() -> None:
    c = cache()
    assert c.hit("acme", KEY, T0, 0) is None
    c.await_answer("req-1", KEY, (CANDIDATE,), "gpt-4o", 0)
    entry, why = c.answered(metered(), RULE, 0, prices(), T0 + 60)
    assert why is None and entry is not None
    assert entry.response_text == "Card [redacted] is active."  # the policy's pattern, before it is stored
    assert entry.cost_micro_usd == prices().cost_micro_usd(PV, "gpt-4o", 12, 0, 7, reasoning_tokens=0)
    assert entry.expires_at_ms == T0 + 60 + RULE.ttl_ms
    hit = c.hit("acme", KEY, T0 + 100, 0)
    assert hit == CacheHit(entry.entry_id, KEY, "gpt-4o", 12, 7, entry.cost_micro_usd)
    assert c.hit("other", KEY, T0 + 100, 0) is None  # the same key under another tenant finds nothing
    assert c.hit("acme", KEY, T0 + 100, 1) is None  # a policy change invalidates it
    assert c.counts.hits == 1 and c.counts.stored == 1


def test_answers_that_may_not_be_stored() -> None:
    c = cache()
    for request_id in ("r-err", "r-down", "r-none", "r-ver"):
        c.await_answer(request_id, KEY, (CANDIDATE,), "gpt-4o", 0)
    assert c.answered(metered("r-err", status="ERROR"), RULE, 0, prices(), T0)[1] == "incomplete_answer"
    assert c.answered(metered("r-down", model="gpt-4o-mini"), RULE, 0, prices(), T0)[1] == "answered_by_another_model"
    assert c.answered(metered("r-none", text=None), RULE, 0, prices(), T0)[1] == "no_text"
    assert c.answered(metered("r-ver"), RULE, 1, prices(), T0)[1] == "policy_changed"
    assert c.answered(metered("never-planned"), RULE, 0, prices(), T0) == (None, None)
    assert len(c.store) == 0 and not c.pending
    # A plan whose first candidate is a downgrade is not awaited: a hit must answer what was asked.
    c.await_answer("r-x", KEY, (replace(CANDIDATE, model="gpt-4o-mini"),), "gpt-4o", 0)
    assert not c.pending


def test_pending_answers_are_bounded() -> None:
    c = PolicyCache(PolicySettings(cache_pending_max=2), "cache.entries")
    for i in range(3):
        c.await_answer(f"r{i}", KEY, (CANDIDATE,), "gpt-4o", 0)
    assert list(c.pending) == ["r1", "r2"] and c.counts.forgotten == 1


def _state() -> TenantState:
    state = TenantState("acme")
    for e in decide_command(state, Command("c1", "acme", "SET_LIMIT", "TENANT", "", 1_000, None, None, "t"), T0):
        evolve(state, e)
    return state


def _reserve(hit: CacheHit | None, request_id: str = "req-1") -> Reserve:
    return Reserve(request_id, "acme", "wf", "agent", "gpt-4o", "NORMAL", None, T0, "cd" * 32, 12, None, 0,
                   () if hit else (Candidate("gpt-4o", "premium", 900, 100, PV),), cache_hit=hit)


def test_a_hit_is_recorded_moving_no_money_and_is_the_requests_outcome() -> None:
    state = _state()
    hit = CacheHit("req-0/cache", KEY, "gpt-4o", 12, 7, 5_000)  # dearer than the whole budget: still free
    before = balances_view(state)
    entries = decide_reserve(state, _reserve(hit), T0 + 5, 60_000, "0:1")
    recorded = entries[-1]
    assert isinstance(recorded, CacheHitRecorded)
    assert recorded.entry_id == "req-1/reservation" and recorded.avoided_micro_usd == 5_000
    assert recorded.tenant_remaining_micro_usd == 1_000
    for e in entries:
        evolve(state, e)
    assert {k: v for k, v in balances_view(state).items() if k in before} == before
    assert not state.holds
    again = decide_reserve(state, _reserve(hit), T0 + 9, 60_000, "0:2")
    assert isinstance(again[-1], ReservationRepeated) and again[-1].original_entry_id == "req-1/reservation"


def test_a_cacheable_miss_asks_for_the_answers_text() -> None:
    state = _state()
    placed = decide_reserve(state, replace(_reserve(None), cache_store=True), T0, 60_000, "0:1")[-1]
    assert isinstance(placed, ReservationPlaced) and placed.cache_store
    assert decision_for(placed, deployments()).cache_store


def _recorded() -> CacheHitRecorded:
    return CacheHitRecorded("req-1/reservation", "acme", "2026-11", T0 + 9, "req-1", "wf", "agent", "gpt-4o",
                            "req-0/cache", KEY, 12, 7, 5_000, 0, "cd" * 32, T0, 1_000)


def test_the_router_answers_with_the_entrys_text_or_says_it_is_gone() -> None:
    entry = CacheEntry("acme", KEY, "req-0/cache", "gpt-4o", "Paris.", 12, 7, 5_000, T0 - 10, T0 + 3_600_000, 0)
    d = decision_for(_recorded(), deployments(), None, entry)
    assert (d.outcome, d.cached_response, d.cache_entry_id, d.avoided_micro_usd) == (
        "CACHE_HIT", "Paris.", "req-0/cache", 5_000)
    assert d.reserved_micro_usd == 0 and d.deployment is None and d.reason_codes == ("cache_hit",)
    gone = decision_for(_recorded(), deployments(), None, None)
    assert gone.cached_response is None and CACHE_ENTRY_GONE_REASON in gone.reason_codes
    newer = replace(entry, entry_id="req-5/cache")  # another answer for the key since: not the one planned
    assert decision_for(_recorded(), deployments(), None, newer).cached_response is None
