"""Token-rate limits (services/policy/tokenrate.py): the window never admits more than the limit, a throttled
request fits when told to retry, a request bigger than the limit is DENY, settlement corrects the estimate."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledgergate.services.policy import tokenrate
from ledgergate.services.policy.tokenrate import Rule, Windows, check, count, settle
from ledgergate.shared.policy import PolicyError, default_policy, parse_policy

WF = Rule("workflow", None, "total", 1000)


def test_throttle_then_fits_after_retry_after() -> None:
    w = Windows()
    assert check(w, (WF,), "t", "wf", "m", 600, 0, 1_000) is None
    count(w, (WF,), "r1", "t", "wf", "m", 600, 0, 1_000)
    v = check(w, (WF,), "t", "wf", "m", 500, 0, 5_000)
    assert v is not None and v.deny is None and v.scope == "tokens_per_min:workflow:wf:total"
    assert v.wait_ms == 60_000 - 4_000
    assert check(w, (WF,), "t", "wf", "m", 500, 0, 5_000 + v.wait_ms - 1) is not None
    assert check(w, (WF,), "t", "wf", "m", 500, 0, 5_000 + v.wait_ms) is None


def test_workflows_have_separate_windows_and_match_limits_one() -> None:
    w = Windows()
    count(w, (WF,), "r1", "t", "a", "m", 1000, 0, 0)
    assert check(w, (WF,), "t", "b", "m", 1000, 0, 0) is None
    assert check(w, (WF,), "t", "a", "m", 1, 0, 0) is not None
    only = Rule("model", "big", "output", 10)
    assert check(Windows(), (only,), "t", "a", "small", 0, 999, 0) is None


def test_bigger_than_the_limit_is_deny() -> None:
    v = check(Windows(), (WF,), "t", "wf", "m", 900, 200, 0)
    assert v is not None and v.deny is not None and v.wait_ms is None


def test_settle_replaces_estimate_and_void_removes() -> None:
    w = Windows()
    count(w, (WF,), "r1", "t", "wf", "m", 100, 800, 0)
    settle(w, "r1", 100, 50)
    assert w.used("tokens_per_min:workflow:wf:total", 1) == 150
    count(w, (WF,), "r2", "t", "wf", "m", 100, 800, 0)
    settle(w, "r2", None, None)
    assert w.used("tokens_per_min:workflow:wf:total", 1) == 150
    settle(w, "r2", 10, 10)  # a second settlement of the same id has no second effect
    assert w.used("tokens_per_min:workflow:wf:total", 1) == 150


def test_count_is_idempotent_by_request_id() -> None:
    w = Windows()
    count(w, (WF,), "r1", "t", "wf", "m", 100, 0, 0)
    count(w, (WF,), "r1", "t", "wf", "m", 100, 0, 0)
    assert w.used("tokens_per_min:workflow:wf:total", 0) == 100


@given(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 400), st.integers(0, 3_000)), max_size=80))
def test_never_over_the_limit_in_any_window(reqs: list[tuple[int, int, int]]) -> None:
    """No overspend of the window: what is admitted within any minute never exceeds the limit."""
    w, now_ms, admitted = Windows(), 0, []
    for i, (inp, out, gap_ms) in enumerate(reqs):
        now_ms += gap_ms
        if check(w, (WF,), "t", "wf", "m", inp, out, now_ms) is None:
            count(w, (WF,), f"r{i}", "t", "wf", "m", inp, out, now_ms)
            admitted.append((now_ms // 1000, inp + out))
    for slot, _ in admitted:
        assert sum(n for s, n in admitted if slot - 59 <= s <= slot) <= WF.tokens_per_min


def test_policy_key_validates() -> None:
    base = default_policy()
    doc = {"token_rate_limits": [{"per": "workflow", "count": "output", "tokens_per_min": 5}]}
    assert tokenrate.rules_of(parse_policy(json.dumps(doc), base)) == (Rule("workflow", None, "output", 5),)
    for bad in ({"per": "user", "tokens_per_min": 5}, {"per": "tenant", "tokens_per_min": 0},
                {"per": "tenant", "count": "cached", "tokens_per_min": 5}):
        with pytest.raises(PolicyError):
            parse_policy(json.dumps({"token_rate_limits": [bad]}), base)
    with pytest.raises(PolicyError):
        parse_policy(json.dumps({"token_rate_limits": [{"per": "tenant", "tokens_per_min": 1}] * 17}), base)
