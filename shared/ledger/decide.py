"""The ledger's decisions, beside its fold (state.py: `evolve`): `decide_*(state, command, now_ms) -> entries`.

The budget-manager (its only caller at run time) decodes its inputs into the typed commands below, calls
these, and folds what they return with `evolve` before it appends them. No I/O and no mutation here.
Reserve-then-settle follows TigerBeetle's two-phase transfers: a reservation is a pending hold on every
ancestor scope, later posted (settled), voided or expired. The request id is the reservation id and the
idempotency key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from ledgergate.events import CacheHit, FailOpenCall, Usage
from ledgergate.shared.catalogue import PriceCatalogue, UnknownPriceError, price_key
from ledgergate.shared.ledger.entries import (
    BudgetLimitSet,
    CacheHitRecorded,
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
from ledgergate.shared.ledger.periods import period_of
from ledgergate.shared.ledger.state import (
    CANARY,
    CONFLICT_REASON,
    RATE_LIMITED_REASON,
    SCOPE_TYPES,
    TENANT,
    UNAUTHENTICATED_REASON,
    ScopeKey,
    TenantState,
)
from ledgergate.shared.policy import tenant_price_override

THRESHOLDS_PCT = (50, 80, 100)
MAX_CANDIDATES = 8
MAX_AMOUNT_MICRO_USD = 10**15  # a billion dollars: anything above is a typo, not a budget
FAIL_OPEN_CALL_AGE_MS_MAX = 62 * 24 * 3600 * 1000  # this period and the last: the idempotency window


@dataclass(frozen=True, slots=True)
class Candidate:
    model: str
    tier: str
    estimated_cost_micro_usd: int
    granted_output_tokens: int
    price_version: str
    # Scopes beyond the tenant and workflow this candidate's hold moves on (REGION:x, CANARY:wf/c), TYPE:id.
    scopes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Reserve:
    """From invocation.planned: reserve the first affordable candidate, or record the rejection."""

    request_id: str
    tenant_id: str
    workflow_id: str
    agent_id: str
    requested_model: str
    priority: str
    region: str | None
    requested_at_ms: int
    request_sha256: str
    input_tokens: int
    envelope_micro_usd: int | None
    policy_version: int
    candidates: tuple[Candidate, ...]
    rejection_reason: str | None = None
    rejection_detail: str = ""
    rejection_scope: str = "policy"
    retry_after_ms: int | None = None
    fail_open_micro_usd_per_min: int = 0
    cache_store: bool = False  # the tenant's cache rule stores the answer (carried to the decision)
    cache_hit: CacheHit | None = None  # answered from the response cache: recorded, nothing reserved
    template: str = ""  # the request's prompt template (<id>@<version>), carried to the reservation


@dataclass(frozen=True, slots=True)
class Settle:
    """From usage.metered: post the actual cost of a completed call."""

    request_id: str
    tenant_id: str
    model: str
    usage: Usage
    estimated: bool
    cancelled: bool
    # Set when the SDK made the call without a decision (the gate was away): settled without a hold.
    fail_open: FailOpenCall | None = None


@dataclass(frozen=True, slots=True)
class Command:
    """From budget.commands."""

    command_id: str
    tenant_id: str
    kind: str
    scope_type: str
    scope_id: str
    amount_micro_usd: int
    request_id: str | None
    policy_json: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """A command that cannot apply; the adapter dead-letters it with this reason."""

    code: str
    message: str


def open_period(state: TenantState, now_ms: int) -> list[LedgerEntry]:
    period, start, end = period_of(now_ms)
    if state.period_id == period:
        return []
    return [PeriodOpened(f"period/{state.tenant_id}/{period}", state.tenant_id, period, now_ms, start, end)]


def _remaining(state: TenantState, period: str) -> int:
    return state.headroom(period, (TENANT, state.tenant_id)) or 0


def _binding(state: TenantState, period: str, scopes: list[ScopeKey], cost: int, envelope: int | None,
             ) -> tuple[str, str] | None:
    """The first scope (outermost first) that cannot afford `cost`, as (reason, scope name); None fits."""
    tenant_headroom = state.headroom(period, scopes[0])
    if tenant_headroom is None:
        return "no_budget", f"tenant:{state.tenant_id}"
    for scope in scopes:
        headroom = state.headroom(period, scope)
        if headroom is not None and cost > headroom:
            return "budget_exhausted", f"{scope[0].lower()}:{scope[1]}"
    if envelope is not None and cost > envelope:
        return "over_request_envelope", "request"
    return None


class _Common(TypedDict):
    """The fields every outcome of one reservation request shares."""

    tenant_id: str
    period_id: str
    recorded_at_ms: int
    request_id: str
    workflow_id: str


def decide_reserve(state: TenantState, cmd: Reserve, now_ms: int, ttl_ms: int,
                   cause: str) -> list[LedgerEntry]:
    """`cause` names the input message (partition:offset) so a repeated entry gets a unique, stable id."""
    entries = open_period(state, now_ms)
    period = period_of(now_ms)[0]
    common = _Common(tenant_id=cmd.tenant_id, period_id=period, recorded_at_ms=now_ms, request_id=cmd.request_id,
                     workflow_id=cmd.workflow_id)
    if cmd.rejection_reason == UNAUTHENTICATED_REASON:
        # Not the tenant's request (its signature failed): decided before the state is consulted, so a
        # forger learns nothing of it (whether the id was used, the remaining budget) and takes no id.
        return [*entries, _deny(cmd, common, f"{cmd.request_id}/unauthenticated@{cause}", UNAUTHENTICATED_REASON,
                                cmd.rejection_detail, cmd.rejection_scope, 0)]
    seen = state.outcome(cmd.request_id)
    if seen is not None:
        entry_id, sha = seen
        if sha == cmd.request_sha256:
            return [*entries, ReservationRepeated(entry_id=f"{cmd.request_id}/repeat@{cause}", **common,
                                                  original_entry_id=entry_id, requested_at_ms=cmd.requested_at_ms)]
        return [*entries, _deny(cmd, common, f"{cmd.request_id}/conflict@{cause}", CONFLICT_REASON,
                                "this request id was already used for a request with other content", "conflict",
                                _remaining(state, period))]
    if state.was_settled(cmd.request_id):
        # Settled as a fail-open call before its request got here (the SDK called without a decision, and
        # the request reached the gate later): the call is paid for, so no hold; not its outcome either.
        return [*entries, _deny(cmd, common, f"{cmd.request_id}/conflict@{cause}", CONFLICT_REASON,
                                "this request id was already settled as a fail-open call", "conflict",
                                _remaining(state, period))]
    entry_id = f"{cmd.request_id}/reservation"
    if cmd.rejection_reason is not None:
        if cmd.rejection_reason == RATE_LIMITED_REASON:
            entry_id = f"{cmd.request_id}/throttle@{cause}"  # not final: the retry gets its own entries
        return [*entries, _deny(cmd, common, entry_id, cmd.rejection_reason, cmd.rejection_detail,
                                cmd.rejection_scope, _remaining(state, period), cmd.retry_after_ms)]
    if cmd.cache_hit is not None:
        # Answered from the tenant's own cached answer: nothing is held or posted, so no scope's headroom
        # is consulted; the entry records what the hit avoided (docs/decisions/0013).
        hit = cmd.cache_hit
        assert not cmd.candidates and hit.avoided_micro_usd >= 0, cmd.request_id
        return [*entries, CacheHitRecorded(
            entry_id=entry_id, **common, agent_id=cmd.agent_id, requested_model=cmd.requested_model,
            cache_entry_id=hit.entry_id, cache_key=hit.key, input_tokens=hit.input_tokens,
            output_tokens=hit.output_tokens,
            avoided_micro_usd=hit.avoided_micro_usd, policy_version=cmd.policy_version,
            request_sha256=cmd.request_sha256, requested_at_ms=cmd.requested_at_ms,
            tenant_remaining_micro_usd=_remaining(state, period))]
    if not cmd.candidates:
        return [*entries, _deny(cmd, common, entry_id, "no_candidate", "policy allowed no model", "policy",
                                _remaining(state, period))]
    binding: tuple[str, str] | None = None
    for index, cand in enumerate(cmd.candidates[:MAX_CANDIDATES]):
        scopes = state.scopes_of(cmd.workflow_id, cand.scopes)
        binding = _binding(state, period, scopes, cand.estimated_cost_micro_usd, cmd.envelope_micro_usd)
        if binding is None:
            # One reservation per request id (invariant 2), and it fits every scope (invariant 1).
            assert cmd.request_id not in state.holds and state.outcome(cmd.request_id) is None, cmd.request_id
            assert cand.estimated_cost_micro_usd >= 0, cand
            assert all((state.headroom(period, s) or 0) >= cand.estimated_cost_micro_usd
                       for s in scopes if state.limits.get(s) is not None), cmd.request_id
            remaining = _remaining(state, period) - cand.estimated_cost_micro_usd
            return [*entries, ReservationPlaced(
                entry_id=entry_id, **common, agent_id=cmd.agent_id, requested_model=cmd.requested_model,
                model=cand.model, tier=cand.tier, candidate_index=index,
                amount_micro_usd=cand.estimated_cost_micro_usd, input_tokens=cmd.input_tokens,
                granted_output_tokens=cand.granted_output_tokens, price_version=cand.price_version,
                policy_version=cmd.policy_version, priority=cmd.priority, region=cmd.region,
                expires_at_ms=now_ms + ttl_ms, request_sha256=cmd.request_sha256,
                requested_at_ms=cmd.requested_at_ms, tenant_remaining_micro_usd=remaining,
                fail_open_micro_usd_per_min=cmd.fail_open_micro_usd_per_min, cache_store=cmd.cache_store,
                template=cmd.template, scopes=cand.scopes)]
    # Even the cheapest (last) candidate did not fit; its binding scope is the reason the caller gets.
    assert binding is not None
    reason, scope = binding
    cheapest = cmd.candidates[min(len(cmd.candidates), MAX_CANDIDATES) - 1].estimated_cost_micro_usd
    detail = f"cheapest candidate costs {cheapest} micro-USD"
    return [*entries, _deny(cmd, common, entry_id, reason, detail, scope, _remaining(state, period))]


def _deny(cmd: Reserve, common: _Common, entry_id: str, reason: str, detail: str, scope: str, remaining: int,
          retry_after_ms: int | None = None) -> ReservationDenied:
    return ReservationDenied(entry_id=entry_id, **common, agent_id=cmd.agent_id, requested_model=cmd.requested_model,
                             reason=reason, detail=detail, binding_scope=scope, retry_after_ms=retry_after_ms,
                             policy_version=cmd.policy_version, request_sha256=cmd.request_sha256,
                             requested_at_ms=cmd.requested_at_ms, tenant_remaining_micro_usd=remaining,
                             fail_open_micro_usd_per_min=cmd.fail_open_micro_usd_per_min)


def decide_settle(state: TenantState, cmd: Settle, now_ms: int, prices: PriceCatalogue) -> list[LedgerEntry]:
    """Post actual cost and release the rest; one settlement per request id. A call whose hold already
    expired is still charged (the money was spent), all of it flagged as overage; so is a fail-open call
    (made without a decision), which never had a hold and is marked as such."""
    if state.was_settled(cmd.request_id):
        return []
    hold = state.holds.get(cmd.request_id)
    live = hold is not None
    hold = hold or state.expired.get(cmd.request_id)
    if hold is None:
        nothing_spent = cmd.cancelled and cmd.usage.input_tokens == 0 and cmd.usage.output_tokens == 0
        if cmd.fail_open is None or nothing_spent:
            return []
        return _settle_fail_open(state, cmd, cmd.fail_open, now_ms, prices)
    if cmd.cancelled and live and cmd.usage.output_tokens == 0 and cmd.usage.input_tokens == 0:
        return [ReservationVoided(f"{cmd.request_id}/void", state.tenant_id, hold.period_id, now_ms, cmd.request_id,
                                  hold.workflow_id, hold.amount_micro_usd, "cancelled before any usage", hold.scopes)]
    model = cmd.model
    try:
        prices.price(hold.price_version, model)
    except UnknownPriceError:
        model = hold.model  # the provider reported an alias we do not price: charge the reserved model
    # hold.price_version is the plan's price key: the catalogue version plus any override the tenant's
    # policy applied to the reserved model, so the estimate and the charge use the same effective price.
    actual = prices.cost_micro_usd(hold.price_version, model, cmd.usage.input_tokens, cmd.usage.cached_input_tokens,
                                   cmd.usage.output_tokens, reasoning_tokens=cmd.usage.reasoning_tokens)
    reserved = hold.amount_micro_usd if live else 0
    assert actual >= 0 and reserved >= 0, (cmd.request_id, actual, reserved)
    settled = ReservationSettled(
        f"{cmd.request_id}/settlement", state.tenant_id, hold.period_id, now_ms, cmd.request_id, hold.workflow_id,
        model, reserved, actual, max(0, reserved - actual), max(0, actual - reserved), cmd.usage, cmd.estimated,
        hold.price_version, cmd.fail_open is not None, hold.scopes)
    # Everything held is either posted or released, and whatever exceeds the hold is flagged overage.
    assert settled.released_micro_usd + settled.actual_micro_usd - settled.overage_micro_usd == reserved, settled
    return [settled, *_thresholds(state, hold.period_id, hold.workflow_id, actual, now_ms, hold.scopes)]


def _settle_fail_open(state: TenantState, cmd: Settle, call: FailOpenCall, now_ms: int,
                      prices: PriceCatalogue) -> list[LedgerEntry]:
    """A call made without a decision: no hold to post, so all of its cost is overage, in the period it is
    reported in, priced by the catalogue version in force when it was made and the tenant's override."""
    entries = open_period(state, now_ms)
    period = period_of(now_ms)[0]
    # The version in force when the call was made; a claimed time before the idempotency window (or in the
    # future) is not believed, so a report cannot pick an old, cheaper version: priced as of now.
    called_ms = call.called_at_ms if now_ms - FAIL_OPEN_CALL_AGE_MS_MAX <= call.called_at_ms <= now_ms else now_ms
    version = prices.at(called_ms).version
    model = cmd.model
    if model not in prices.version(version).models:
        model = call.requested_model
    if model not in prices.version(version).models:
        return entries  # nothing we can price; the token-counter's usage.metered record keeps the call
    key = price_key(version, model, tenant_price_override(state.policy_json, model))
    actual = prices.cost_micro_usd(key, model, cmd.usage.input_tokens, cmd.usage.cached_input_tokens,
                                   cmd.usage.output_tokens, reasoning_tokens=cmd.usage.reasoning_tokens)
    assert actual >= 0, (cmd.request_id, actual)
    settled = ReservationSettled(
        f"{cmd.request_id}/settlement", state.tenant_id, period, now_ms, cmd.request_id, call.workflow_id, model,
        0, actual, 0, actual, cmd.usage, cmd.estimated, key, True)
    return [*entries, settled, *_thresholds(state, period, call.workflow_id, actual, now_ms)]


def _thresholds(state: TenantState, period: str, workflow_id: str, added_posted: int,
                now_ms: int, further: tuple[str, ...] = ()) -> list[LedgerEntry]:
    crossed: list[LedgerEntry] = []
    for scope in state.scopes_of(workflow_id, further):
        limit = state.limits.get(scope)
        if limit is None:
            continue
        b = state.peek(period, scope)
        total = limit + b.credit_micro_usd
        if total <= 0:
            continue
        before, after = b.posted_micro_usd, b.posted_micro_usd + added_posted
        for pct in THRESHOLDS_PCT:
            mark = total * pct // 100
            if before < mark <= after and (period, scope[0], scope[1], pct) not in state.thresholds:
                crossed.append(ThresholdCrossed(f"threshold/{state.tenant_id}/{period}/{scope[0]}/{scope[1]}/{pct}",
                                                state.tenant_id, period, now_ms, scope[0], scope[1], pct, after, total))
    return crossed


def decide_command(state: TenantState, cmd: Command, now_ms: int) -> list[LedgerEntry] | Rejected:
    if cmd.command_id in state.commands:
        return []
    if not 0 <= cmd.amount_micro_usd <= MAX_AMOUNT_MICRO_USD:
        return Rejected("invalid_amount", f"amount_micro_usd must be 0..{MAX_AMOUNT_MICRO_USD}")
    entries = open_period(state, now_ms)
    period = period_of(now_ms)[0]
    entry_id = f"cmd/{cmd.command_id}"
    scope_id = cmd.scope_id or cmd.tenant_id if cmd.scope_type == TENANT else cmd.scope_id
    if cmd.scope_type == TENANT and scope_id != cmd.tenant_id:
        return Rejected("invalid_scope", "a TENANT scope's id must be the tenant id")
    if cmd.scope_type not in SCOPE_TYPES or not scope_id:
        return Rejected("invalid_scope", f"scope must be one of {', '.join(SCOPE_TYPES)} with an id")
    if cmd.scope_type == CANARY and "/" not in scope_id:
        return Rejected("invalid_scope", "a CANARY scope's id is <workflow>/<canary>")
    scope = (cmd.scope_type, scope_id)
    previous = state.limits.get(scope, 0)
    match cmd.kind:
        case "SET_LIMIT" | "RAISE_LIMIT" | "LOWER_LIMIT":
            new = {"SET_LIMIT": cmd.amount_micro_usd, "RAISE_LIMIT": previous + cmd.amount_micro_usd,
                   "LOWER_LIMIT": previous - cmd.amount_micro_usd}[cmd.kind]
            if new < 0:
                return Rejected("invalid_amount", f"lowering {previous} by {cmd.amount_micro_usd} goes below zero")
            change = {"SET_LIMIT": "SET", "RAISE_LIMIT": "RAISED", "LOWER_LIMIT": "LOWERED"}[cmd.kind]
            return [*entries, BudgetLimitSet(entry_id, cmd.tenant_id, period, now_ms, scope[0], scope[1], change, new,
                                             previous, cmd.command_id)]
        case "GRANT_CREDIT":
            return [*entries, CreditGranted(entry_id, cmd.tenant_id, period, now_ms, scope[0], scope[1],
                                            cmd.amount_micro_usd, cmd.reason, cmd.command_id)]
        case "VOID_RESERVATION":
            hold = state.holds.get(cmd.request_id or "")
            if hold is None and state.outcome(cmd.request_id or "") is not None:
                return []  # already voided, settled or expired: a redelivered void changes nothing
            if hold is None:
                return Rejected("no_such_reservation", f"no live reservation {cmd.request_id!r}")
            return [*entries, ReservationVoided(f"{cmd.request_id}/void", cmd.tenant_id, hold.period_id, now_ms,
                                                cmd.request_id or "", hold.workflow_id, hold.amount_micro_usd,
                                                cmd.reason, hold.scopes)]
        case "SET_POLICY":
            if not cmd.policy_json:
                return Rejected("invalid_policy", "SET_POLICY needs policy_json")
            return [*entries, PolicyChanged(entry_id, cmd.tenant_id, period, now_ms, state.policy_version + 1,
                                            cmd.policy_json, cmd.command_id)]
        case "EXPIRE_DUE":
            # An operator's "now" for the expiry the service also runs on its own every expiry interval;
            # a redelivered one finds nothing due, so it applies once like every other command.
            return [*entries, *decide_expiry(state, now_ms)]
        case _:
            return Rejected("unknown_command", f"command kind {cmd.kind!r} is not handled here")


def decide_expire(state: TenantState, request_id: str, now_ms: int) -> list[LedgerEntry]:
    """Release one hold if its TTL passed, so a crashed agent never leaks budget; [] when the hold is
    gone (settled or voided) or not yet due."""
    hold = state.holds.get(request_id)
    if hold is None or hold.expires_at_ms > now_ms:
        return []
    return [ReservationExpired(f"{request_id}/expiry", state.tenant_id, hold.period_id, now_ms, request_id,
                               hold.workflow_id, hold.amount_micro_usd, hold.scopes)]


def decide_expiry(state: TenantState, now_ms: int) -> list[LedgerEntry]:
    """Release every hold of the tenant whose TTL passed."""
    return [e for rid in list(state.holds) for e in decide_expire(state, rid, now_ms)]
