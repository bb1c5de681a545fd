"""policy's pure core: from a counted request, the tenant's policy and budget burn, an ordered plan of
candidates with estimated costs, or a rejection. No I/O; `now_ms` and the rate bucket are passed in."""

from __future__ import annotations

from dataclasses import dataclass

from ledgergate.events import InvocationCounted, PlanCandidate, PlanRejection
from ledgergate.shared.catalogue import DeploymentCatalogue, PriceCatalogue, price_key
from ledgergate.shared.ledger.state import REGION, scope_text
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


def region_for(model: str, counted: InvocationCounted, policy: Policy, deployments: DeploymentCatalogue | None,
               ) -> tuple[bool, str | None]:
    """(may the model serve this request, the deployment region it is held in). Without `allowed_regions`
    any deployment may, and no region is chosen here (the router prefers the caller's). With them, only a
    deployment in one of them: the caller's region when it is allowed and serves the model, else the first
    allowed region (in the policy's order) that does; none is a data-locality refusal of this model."""
    if deployments is None or policy.allowed_regions is None:
        return True, None
    serving = deployments.regions_of(model)
    allowed = [r for r in policy.allowed_regions if r in serving]
    if not allowed:
        return False, None
    return True, counted.region if counted.region in allowed else allowed[0]


def plan(counted: InvocationCounted, policy: Policy, burn: Burn, prices: PriceCatalogue,
         now_ms: int, deployments: DeploymentCatalogue | None = None,
         region_budgets: frozenset[str] = frozenset()) -> tuple[tuple[PlanCandidate, ...], PlanRejection | None]:
    """Candidates best-first (the requested model, then its downgrades), each priced; or a rejection.
    `deployments`: where each model is served (data locality: the policy's `allowed_regions`);
    `region_budgets`: the regions the tenant has a REGION budget for, whose candidates hold on that scope."""
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
    outside_regions = False
    for model in (requested, *policy.downgrades.get(requested, ())):
        price = version.models.get(model)
        if price is None or (allowed is not None and model not in allowed):
            continue
        if prices.tiers.index(price.tier) < ceiling_rank:
            continue
        servable, region = region_for(model, counted, policy, deployments)
        if not servable:
            outside_regions = True
            continue
        # The surcharge of the region that serves the call (the caller's when no region is chosen here).
        surcharged = prices.surcharged(version.version, region or counted.region)
        if region is None and deployments is not None and region_budgets:
            chosen = deployments.choose(model, counted.region, counted.request_id)
            region = chosen.region if chosen is not None else None
        scopes = (scope_text((REGION, region)),) if region is not None and (
            region in region_budgets or policy.allowed_regions is not None) else ()
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
                                        key, scopes))
    if not candidates and outside_regions:
        regions = ",".join(policy.allowed_regions or ())
        return (), PlanRejection("data_locality", f"no deployment of {requested!r} or its downgrades in the "
                                 f"tenant's allowed regions ({regions})", None, f"regions:{regions}")
    if not candidates:
        return (), PlanRejection("no_candidate", f"no allowed model at or below tier {ceiling}", None, "policy")
    return tuple(candidates), None
