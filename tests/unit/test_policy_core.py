"""policy's pure core: candidate plans under the default policy, tier rules by burn, rejections, the rate
bucket and policy document parsing."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from ledgergate.events import InvocationCounted, PlanCandidate, PlanRejection
from ledgergate.services.policy.core import Bucket, Burn, max_tier_for, plan, take_rate
from ledgergate.shared.catalogue import deployments, prices
from ledgergate.shared.policy import Policy, PolicyError, default_policy, parse_policy

T0 = 1_794_000_000_000  # 2026-11-06, price version 2026-11-01
PV = "2026-11-01"
NO_BURN = Burn(0, 1_000_000)


def counted(model: str = "gpt-4o", *, input_tokens: int = 1_000, accounting: int = 1_100, output: int = 5_000,
            priority: str = "NORMAL", region: str | None = None, invalid: str | None = None) -> InvocationCounted:
    return InvocationCounted("r1", "acme", "", "", model, output, priority, region, None, {}, T0, {}, input_tokens,
                             accounting, "o200k_base", output, "sha", invalid, T0)


def burn(pct: int) -> Burn:
    return Burn(pct * 10_000, 1_000_000)


def models(candidates: tuple[PlanCandidate, ...]) -> list[str]:
    return [c.model for c in candidates]


# ---------------------------------------------------------------------------------------------- plans


def test_default_plan_is_requested_model_then_downgrades_with_costs() -> None:
    candidates, rejection = plan(counted(), default_policy(), NO_BURN, prices(), T0)
    assert rejection is None
    # granted output = min(5,000 estimated, 4,096 policy max); downgrades are priced on accounting tokens
    assert [c.to_record() for c in candidates] == [
        {"model": "gpt-4o", "tier": "premium", "estimated_input_micro_usd": 2_500,
         "estimated_output_micro_usd": 40_960, "estimated_cost_micro_usd": 43_460, "granted_output_tokens": 4_096,
         "price_version": PV, "scopes": []},
        {"model": "gpt-4o-mini", "tier": "standard", "estimated_input_micro_usd": 165,
         "estimated_output_micro_usd": 2_458, "estimated_cost_micro_usd": 2_623, "granted_output_tokens": 4_096,
         "price_version": PV, "scopes": []},
        {"model": "gpt-4.1-nano", "tier": "economy", "estimated_input_micro_usd": 110,
         "estimated_output_micro_usd": 1_639, "estimated_cost_micro_usd": 1_749, "granted_output_tokens": 4_096,
         "price_version": PV, "scopes": []},
    ]


def test_costs_match_the_catalogue_and_apply_the_region() -> None:
    candidates, _ = plan(counted("claude-sonnet", output=100, region="eu-west"), default_policy(), NO_BURN, prices(),
                         T0)
    assert models(candidates) == ["claude-sonnet", "claude-haiku", "llama-3.1-8b"]
    p = prices()
    for c in candidates:
        tokens = 1_000 if c.model == "claude-sonnet" else 1_100
        assert c.estimated_input_micro_usd == p.cost_micro_usd(PV, c.model, tokens, 0, 0, reasoning_tokens=0,
                                                               region="eu-west")
        assert c.estimated_output_micro_usd == p.cost_micro_usd(PV, c.model, 0, 0, 100, reasoning_tokens=0,
                                                                region="eu-west")
        assert c.granted_output_tokens == 100
        assert c.price_version == f"{PV}@eu-west"  # the settlement pays the same surcharge
    assert candidates[0].estimated_cost_micro_usd == 3_300 + 1_650  # (3,000 + 1,500) * 1.1
    # A region without a surcharge (us-east: 1,000,000 ppm) or none at all: the key is the version alone.
    for region in ("us-east", None):
        assert {c.price_version for c in plan(counted("gpt-4o", region=region), default_policy(), NO_BURN, prices(),
                                               T0)[0]} == {PV}


def test_model_without_downgrades_has_one_candidate() -> None:
    candidates, rejection = plan(counted("gpt-4.1-nano"), default_policy(), NO_BURN, prices(), T0)
    assert rejection is None
    assert models(candidates) == ["gpt-4.1-nano"]


@pytest.mark.parametrize(("priority", "pct", "first_tier", "expected"), [
    ("NORMAL", 0, "premium", ["gpt-4o", "gpt-4o-mini", "gpt-4.1-nano"]),
    ("NORMAL", 79, "premium", ["gpt-4o", "gpt-4o-mini", "gpt-4.1-nano"]),
    ("NORMAL", 80, "standard", ["gpt-4o-mini", "gpt-4.1-nano"]),
    ("NORMAL", 99, "standard", ["gpt-4o-mini", "gpt-4.1-nano"]),
    ("HIGH", 80, "premium", ["gpt-4o", "gpt-4o-mini", "gpt-4.1-nano"]),
    ("HIGH", 94, "premium", ["gpt-4o", "gpt-4o-mini", "gpt-4.1-nano"]),
    ("HIGH", 95, "standard", ["gpt-4o-mini", "gpt-4.1-nano"]),
    ("LOW", 49, "premium", ["gpt-4o", "gpt-4o-mini", "gpt-4.1-nano"]),
    ("LOW", 50, "standard", ["gpt-4o-mini", "gpt-4.1-nano"]),
    ("LOW", 90, "economy", ["gpt-4.1-nano"]),
])
def test_tier_ceiling_by_priority_and_burn(priority: str, pct: int, first_tier: str, expected: list[str]) -> None:
    candidates, rejection = plan(counted(priority=priority), default_policy(), burn(pct), prices(), T0)
    assert rejection is None
    assert candidates[0].tier == first_tier
    assert models(candidates) == expected


def test_burn_percentage() -> None:
    assert Burn(799_999, 1_000_000).pct == 79
    assert Burn(800_000, 1_000_000).pct == 80
    assert Burn(5, None).pct == 0
    assert Burn(3_000_000, 1_000_000).pct == 300
    assert max_tier_for(default_policy(), "NORMAL", Burn(3_000_000, 1_000_000), prices().tiers) == "standard"
    assert max_tier_for(default_policy(), "NORMAL", Burn(0, None), prices().tiers) is None


def test_prompt_over_max_is_rejected() -> None:
    policy = default_policy()
    candidates, rejection = plan(counted(input_tokens=policy.max_prompt_tokens + 1), policy, NO_BURN, prices(), T0)
    assert candidates == ()
    assert rejection == PlanRejection("prompt_too_long", "128001 input tokens > 128000", None, "policy")
    _, ok = plan(counted(input_tokens=policy.max_prompt_tokens), policy, NO_BURN, prices(), T0)
    assert ok is None


def test_unknown_model_is_rejected() -> None:
    candidates, rejection = plan(counted("gpt-9-ultra"), default_policy(), NO_BURN, prices(), T0)
    assert candidates == ()
    assert rejection is not None
    assert (rejection.reason, rejection.binding_scope) == ("unknown_model", "policy")
    assert "'gpt-9-ultra'" in rejection.detail and PV in rejection.detail


def test_invalid_request_is_rejected_first() -> None:
    candidates, rejection = plan(counted("gpt-9-ultra", input_tokens=10**9, invalid="messages is empty"),
                                 default_policy(), NO_BURN, prices(), T0)
    assert candidates == ()
    assert rejection == PlanRejection("invalid_request", "messages is empty", None, "request")


def test_the_token_counters_code_names_the_rejection() -> None:
    """An unauthenticated request travels as an invalid one with its own code (and binding scope); a code
    the policy does not know is an invalid_request, never a new reason made up downstream."""
    base = counted(invalid="the signature does not verify under key lgc_1_0123456789abcdef")
    _, rejection = plan(replace(base, invalid_code="unauthenticated"), default_policy(), NO_BURN, prices(), T0)
    assert rejection == PlanRejection("unauthenticated", base.invalid_reason, None, "credential")
    _, rejection = plan(replace(base, invalid_code="made_up"), default_policy(), NO_BURN, prices(), T0)
    assert rejection is not None and (rejection.reason, rejection.binding_scope) == ("invalid_request", "request")


def test_allowed_models_filters_candidates() -> None:
    policy = parse_policy('{"allowed_models": ["gpt-4o-mini", "gpt-4.1-nano"]}', default_policy())
    candidates, rejection = plan(counted("gpt-4o"), policy, NO_BURN, prices(), T0)
    assert rejection is None
    assert models(candidates) == ["gpt-4o-mini", "gpt-4.1-nano"]
    policy = parse_policy('{"allowed_models": ["gpt-4o", "gpt-4.1-nano"]}', default_policy())
    assert models(plan(counted("gpt-4o"), policy, NO_BURN, prices(), T0)[0]) == ["gpt-4o", "gpt-4.1-nano"]


def test_model_not_allowed_nor_any_downgrade() -> None:
    policy = parse_policy('{"allowed_models": ["claude-haiku"]}', default_policy())
    candidates, rejection = plan(counted("gpt-4o"), policy, NO_BURN, prices(), T0)
    assert candidates == ()
    assert rejection is not None and rejection.reason == "model_not_allowed"
    assert rejection.binding_scope == "policy"


def test_no_candidate_when_the_tier_ceiling_excludes_every_allowed_model() -> None:
    policy = parse_policy('{"allowed_models": ["gpt-4o"]}', default_policy())
    candidates, rejection = plan(counted("gpt-4o"), policy, burn(80), prices(), T0)
    assert candidates == ()
    assert rejection is not None
    assert (rejection.reason, rejection.binding_scope) == ("no_candidate", "policy")
    assert "standard" in rejection.detail


def test_granted_output_is_capped_by_policy() -> None:
    policy = parse_policy('{"max_output_tokens": 10}', default_policy())
    candidates, _ = plan(counted(output=5_000), policy, NO_BURN, prices(), T0)
    assert {c.granted_output_tokens for c in candidates} == {10}
    assert candidates[0].estimated_output_micro_usd == 100


# ---------------------------------------------------------------------------------------------- rate bucket


def test_take_rate_burst_then_throttle_then_refill() -> None:
    policy = Policy(rate_limit_per_s=2, rate_burst=3)
    bucket = Bucket(policy.rate_burst * 1000, T0)
    assert [take_rate(bucket, policy, T0) for _ in range(3)] == [None, None, None]
    wait = take_rate(bucket, policy, T0)
    assert wait == 500  # one request every 500 ms at 2/s
    assert bucket.tokens_milli == 0
    assert take_rate(bucket, policy, T0 + 200) == 300  # 400 milli refilled, 600 to go at 2 per ms
    assert take_rate(bucket, policy, T0 + 500) is None
    assert take_rate(bucket, policy, T0 + 500) == 500
    # a long pause refills to the burst, never beyond it
    bucket2 = Bucket(0, T0)
    assert take_rate(bucket2, policy, T0 + 3_600_000) is None
    assert bucket2.tokens_milli == 2_000
    assert [take_rate(bucket2, policy, T0 + 3_600_000) for _ in range(3)] == [None, None, 500]


def test_retry_after_is_at_least_one_ms() -> None:
    policy = Policy(rate_limit_per_s=1_000_000, rate_burst=1)
    bucket = Bucket(999, T0)
    wait = take_rate(bucket, policy, T0)
    assert wait is not None and wait >= 1


def test_take_rate_unlimited_without_a_rate() -> None:
    policy = default_policy()
    assert policy.rate_limit_per_s is None
    bucket = Bucket(0, T0)
    assert all(take_rate(bucket, policy, T0) is None for _ in range(1_000))


# ---------------------------------------------------------------------------------------------- documents


def test_default_policy_values() -> None:
    policy = default_policy()
    assert policy.allowed_models is None
    assert (policy.max_prompt_tokens, policy.max_output_tokens) == (128_000, 4_096)
    assert policy.request_envelope_micro_usd == 2_000_000
    assert policy.downgrades["gpt-4o"] == ("gpt-4o-mini", "gpt-4.1-nano")
    for model, downgrades in policy.downgrades.items():
        for d in (model, *downgrades):
            assert d in prices().at(T0).models, d


def test_parse_policy_overrides_field_by_field() -> None:
    policy = parse_policy('{"rate_limit_per_s": 5, "max_output_tokens": 100}', default_policy())
    assert (policy.rate_limit_per_s, policy.max_output_tokens) == (5, 100)
    assert policy.downgrades == default_policy().downgrades
    assert policy.tier_rules == default_policy().tier_rules


@pytest.mark.parametrize("doc", [
    '{"max_output_tokenz": 100}',
    '{"tier_rules": [{"priority": "NORMAL", "burn_pct_at_least": 1, "max_tier": "standard", "extra": 1}]}',
    '{"tier_rules": [{"priority": "URGENT", "burn_pct_at_least": 1, "max_tier": "standard"}]}',
    '{"max_output_tokens": 0}',
    '{"rate_limit_per_s": "fast"}',
    "[1, 2]",
    "not json",
])
def test_parse_policy_rejects_bad_documents(doc: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(doc, default_policy())
    assert err.value.code == "invalid_policy"


def test_unknown_key_error_names_the_key() -> None:
    with pytest.raises(PolicyError, match="max_output_tokenz"):
        parse_policy('{"max_output_tokenz": 100}', default_policy())


def test_waiting_retry_after_is_enough() -> None:
    policy = Policy(rate_limit_per_s=3, rate_burst=1)
    bucket = Bucket(1_000, T0)
    assert take_rate(bucket, policy, T0) is None
    wait = take_rate(bucket, policy, T0)
    assert wait is not None
    assert take_rate(bucket, policy, T0 + wait) is None


# ---------------------------------------------------------------------------------------------- data locality


def test_allowed_regions_keep_candidates_in_them_and_hold_on_the_region() -> None:
    policy = parse_policy(json.dumps({"allowed_regions": ["eu-west"]}), default_policy())
    # gpt-4o is served in us-east and eu-west, gpt-4o-mini too, gpt-4.1-nano only in us-east.
    candidates, rejection = plan(counted("gpt-4o", region="us-east"), policy, NO_BURN, prices(), T0, deployments())
    assert rejection is None
    assert models(candidates) == ["gpt-4o", "gpt-4o-mini"]
    assert {c.scopes for c in candidates} == {("REGION:eu-west",)}
    # priced with the serving region's surcharge (eu-west: +10 %), not the caller's
    assert {c.price_version for c in candidates} == {f"{PV}@eu-west"}


def test_no_allowed_region_serving_the_model_or_a_downgrade_is_deny_data_locality() -> None:
    policy = parse_policy(json.dumps({"allowed_regions": ["eu-west"]}), default_policy())
    candidates, rejection = plan(counted("gpt-4.1"), policy, NO_BURN, prices(), T0, deployments())
    assert candidates == ()
    assert rejection is not None and rejection.reason == "data_locality"
    assert rejection.binding_scope == "regions:eu-west"


def test_the_callers_region_is_kept_when_allowed_and_a_region_budget_adds_its_scope() -> None:
    policy = parse_policy(json.dumps({"allowed_regions": ["us-east", "eu-west"]}), default_policy())
    candidates, _ = plan(counted("gpt-4o", region="eu-west"), policy, NO_BURN, prices(), T0, deployments())
    assert candidates[0].scopes == ("REGION:eu-west",)
    # without allowed_regions, only a region the tenant budgets is a scope
    plain, _ = plan(counted("gpt-4o", region="us-east"), default_policy(), NO_BURN, prices(), T0, deployments())
    assert {c.scopes for c in plain} == {()}
    budgeted, _ = plan(counted("gpt-4o", region="us-east"), default_policy(), NO_BURN, prices(), T0, deployments(),
                       frozenset({"us-east"}))
    assert budgeted[0].scopes == ("REGION:us-east",)


@pytest.mark.parametrize("regions", [[], ["eu west"], ["x" * 65]])
def test_allowed_regions_are_region_names(regions: list[str]) -> None:
    with pytest.raises(PolicyError):
        parse_policy(json.dumps({"allowed_regions": regions}), default_policy())
