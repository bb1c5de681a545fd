"""policy's pure core: from a counted request, the tenant's policy and budget burn, an ordered plan of
candidates with estimated costs, or a rejection. No I/O; `now_ms` and the rate bucket are passed in."""

from __future__ import annotations

from dataclasses import dataclass

from ledgergate.events import InvocationCounted, PlanCandidate, PlanRejection
from ledgergate.shared.catalogue import PriceCatalogue, price_key
from ledgergate.shared.policy import Policy

# The token-counter's rejection codes (InvocationCounted.invalid_code) and the binding scope each DENY names.
_INVALID_SCOPES = {"invalid_request": "request", "unauthenticated": "credential"}


@dataclass(frozen=True, slots=True)
class Burn:
    """How much of the tenant's period budget is consumed (posted + pending), in micro-USD."""

    consumed_micro_usd: int
    limit_micro_usd: int | None  # None: no budget set

    @property
    def pct(self) -> int:
        if not self.limit_micro_usd:
            return 0
        return self.consumed_micro_usd * 100 // self.limit_micro_usd


@dataclass(slots=True)
class Bucket:
    """A token bucket per tenant: refilled at `rate` per second up to `burst`."""

    tokens_milli: int
    updated_ms: int


def take_rate(bucket: Bucket, policy: Policy, now_ms: int) -> int | None:
    """Spend one request from the bucket; None when allowed, else the ms until one is available."""
    if policy.rate_limit_per_s is None:
        return None
    cap = policy.rate_burst * 1000
    elapsed = max(0, now_ms - bucket.updated_ms)
    bucket.tokens_milli = min(cap, bucket.tokens_milli + elapsed * policy.rate_limit_per_s)
    bucket.updated_ms = now_ms
    if bucket.tokens_milli >= 1000:
        bucket.tokens_milli -= 1000
        return None
    # Rounded up: a client that waits exactly this long must find a whole token.
    missing = 1000 - bucket.tokens_milli
    return max(1, -(-missing // policy.rate_limit_per_s))


def max_tier_for(policy: Policy, priority: str, burn: Burn, tiers: tuple[str, ...]) -> str | None:
    """The most capable tier this priority may use at this burn; the strictest matching rule wins."""
    allowed_rank = 0
    for rule in policy.tier_rules:
        if rule.priority == priority and burn.pct >= rule.burn_pct_at_least and rule.max_tier in tiers:
            allowed_rank = max(allowed_rank, tiers.index(rule.max_tier))
    return tiers[allowed_rank] if allowed_rank else None


def plan(counted: InvocationCounted, policy: Policy, burn: Burn, prices: PriceCatalogue,
         now_ms: int) -> tuple[tuple[PlanCandidate, ...], PlanRejection | None]:
    """Candidates best-first (the requested model, then its downgrades), each priced; or a rejection."""
    if counted.invalid_reason is not None:
        # The token-counter cannot decide: it hands its rejection on, so the request still gets exactly one
        # decision and one audit record downstream (invariant 4), naming the code it chose.
        code = counted.invalid_code if counted.invalid_code in _INVALID_SCOPES else "invalid_request"
        return (), PlanRejection(code, counted.invalid_reason, None, _INVALID_SCOPES[code])
    requested = counted.requested_model
    if counted.input_tokens > policy.max_prompt_tokens:
        return (), PlanRejection("prompt_too_long",
                                 f"{counted.input_tokens} input tokens > {policy.max_prompt_tokens}", None, "policy")
    version = prices.at(now_ms)
    if requested not in version.models:
        return (), PlanRejection("unknown_model", f"{requested!r} is not in price catalogue {version.version}", None,
                                 "policy")
    allowed = set(policy.allowed_models) if policy.allowed_models is not None else None
    if allowed is not None and requested not in allowed and not any(
            m in allowed for m in policy.downgrades.get(requested, ())):
        return (), PlanRejection("model_not_allowed", f"{requested!r} is not allowed for this tenant", None, "policy")
    ceiling = max_tier_for(policy, counted.priority, burn, prices.tiers)
    ceiling_rank = prices.tiers.index(ceiling) if ceiling else 0
    granted = min(counted.estimated_output_tokens, policy.max_output_tokens)
    candidates: list[PlanCandidate] = []
    surcharged = prices.surcharged(version.version, counted.region)
    for model in (requested, *policy.downgrades.get(requested, ())):
        price = version.models.get(model)
        if price is None or (allowed is not None and model not in allowed):
            continue
        if prices.tiers.index(price.tier) < ceiling_rank:
            continue
        input_tokens = counted.input_tokens if model == requested else counted.accounting_input_tokens
        # The tenant's negotiated price and the region's surcharge, if any, travel in the key: the
        # budget-manager settles with them, so the estimate and the charge price alike.
        key = price_key(version.version, model, policy.price_override(model), surcharged)
        rates = prices.price(key, model)
        input_cost = prices.cost_micro_usd(key, model, input_tokens, 0, 0, reasoning_tokens=0)
        # The granted tokens may be spent on output or reasoning: estimated at the dearer of the two rates.
        as_reasoning = rates.reasoning_micro_usd_per_m > rates.output_micro_usd_per_m
        output_cost = prices.cost_micro_usd(key, model, 0, 0, 0 if as_reasoning else granted,
                                            reasoning_tokens=granted if as_reasoning else 0)
        candidates.append(PlanCandidate(model, price.tier, input_cost, output_cost, input_cost + output_cost, granted,
                                        key))
    if not candidates:
        return (), PlanRejection("no_candidate", f"no allowed model at or below tier {ceiling}", None, "policy")
    return tuple(candidates), None
