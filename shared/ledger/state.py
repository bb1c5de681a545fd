"""Per-tenant budget state and `evolve`, the one function that folds ledger entries into it.

`evolve` mutates in place: rebuilding from offset 0 must reach 200,000 entries/s, and copying a
tenant's maps per entry would not. Purity lives one level up: the budget-manager's `decide` only
reads state and returns entries; `evolve` is the only writer and does no I/O. Folding the same
entries always gives the same state (invariant 3), which tests check against the service.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.ledger.entries import (
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

TENANT = "TENANT"
WORKFLOW = "WORKFLOW"
CONFLICT_REASON = "idempotency_conflict"
RATE_LIMITED_REASON = "rate_limited"

ScopeKey = tuple[str, str]  # (scope_type, scope_id)


@dataclass(slots=True)
class Balance:
    """One scope in one period. posted + pending <= limit + credit, overage aside (invariant 1)."""

    credit_micro_usd: int = 0
    posted_micro_usd: int = 0
    pending_micro_usd: int = 0


@dataclass(frozen=True, slots=True)
class Hold:
    """A live reservation: what settle/void/expire must release, and from which scopes."""

    entry_id: str
    period_id: str
    workflow_id: str
    model: str
    amount_micro_usd: int
    price_version: str
    expires_at_ms: int


@dataclass(slots=True)
class TenantState:
    tenant_id: str
    period_id: str = ""
    limits: dict[ScopeKey, int] = field(default_factory=dict)
    balances: dict[tuple[str, str, str], Balance] = field(default_factory=dict)  # (period, type, id)
    holds: dict[str, Hold] = field(default_factory=dict)
    # request id -> (entry id, request sha256) of its first outcome, this period and the last one:
    # the idempotency window. Older ids are forgotten so memory stays bounded.
    outcomes: dict[str, tuple[str, str]] = field(default_factory=dict)
    previous_outcomes: dict[str, tuple[str, str]] = field(default_factory=dict)
    settled: set[str] = field(default_factory=set)
    previous_settled: set[str] = field(default_factory=set)
    # Holds that expired this period or the last: a late completion is still charged.
    expired: dict[str, Hold] = field(default_factory=dict)
    thresholds: set[tuple[str, str, str, int]] = field(default_factory=set)
    commands: set[str] = field(default_factory=set)
    policy_version: int = 0
    policy_json: str = ""
    entries: int = 0

    def balance(self, period_id: str, scope: ScopeKey) -> Balance:
        key = (period_id, scope[0], scope[1])
        found = self.balances.get(key)
        if found is None:
            found = self.balances[key] = Balance()
        return found

    def peek(self, period_id: str, scope: ScopeKey) -> Balance:
        return self.balances.get((period_id, scope[0], scope[1])) or Balance()

    def headroom(self, period_id: str, scope: ScopeKey) -> int | None:
        """Remaining micro-USD, or None when the scope has no limit (unbounded)."""
        limit = self.limits.get(scope)
        if limit is None:
            return None
        b = self.peek(period_id, scope)
        return limit + b.credit_micro_usd - b.posted_micro_usd - b.pending_micro_usd

    def outcome(self, request_id: str) -> tuple[str, str] | None:
        return self.outcomes.get(request_id) or self.previous_outcomes.get(request_id)

    def was_settled(self, request_id: str) -> bool:
        return request_id in self.settled or request_id in self.previous_settled

    def scopes_of(self, workflow_id: str) -> list[ScopeKey]:
        scopes: list[ScopeKey] = [(TENANT, self.tenant_id)]
        if workflow_id:
            scopes.append((WORKFLOW, workflow_id))
        return scopes


def evolve(state: TenantState, entry: LedgerEntry) -> TenantState:
    """Apply one ledger entry. The only code that changes balances."""
    state.entries += 1
    match entry:
        case ReservationPlaced():
            for scope in state.scopes_of(entry.workflow_id):
                state.balance(entry.period_id, scope).pending_micro_usd += entry.amount_micro_usd
            state.holds[entry.request_id] = Hold(entry.entry_id, entry.period_id, entry.workflow_id, entry.model,
                                                 entry.amount_micro_usd, entry.price_version, entry.expires_at_ms)
            state.outcomes[entry.request_id] = (entry.entry_id, entry.request_sha256)
        case ReservationDenied():
            # A conflict is not this request's outcome, and a throttle is not final: the client is told
            # to come back after retry_after_ms, with the same request id.
            if entry.reason not in (CONFLICT_REASON, RATE_LIMITED_REASON):
                state.outcomes[entry.request_id] = (entry.entry_id, entry.request_sha256)
        case ReservationSettled():
            hold = state.holds.pop(entry.request_id, None) or state.expired.pop(entry.request_id, None)
            period = hold.period_id if hold is not None else entry.period_id
            for scope in state.scopes_of(entry.workflow_id):
                b = state.balance(period, scope)
                b.pending_micro_usd -= entry.reserved_micro_usd
                b.posted_micro_usd += entry.actual_micro_usd
            state.settled.add(entry.request_id)
        case ReservationVoided() | ReservationExpired():
            hold = state.holds.pop(entry.request_id)
            for scope in state.scopes_of(entry.workflow_id):
                state.balance(hold.period_id, scope).pending_micro_usd -= entry.released_micro_usd
            if isinstance(entry, ReservationExpired):
                state.expired[entry.request_id] = hold
        case BudgetLimitSet():
            state.limits[(entry.scope_type, entry.scope_id)] = entry.limit_micro_usd
            state.commands.add(entry.command_id)
        case CreditGranted():
            credited = state.balance(entry.period_id, (entry.scope_type, entry.scope_id))
            credited.credit_micro_usd += entry.amount_micro_usd
            state.commands.add(entry.command_id)
        case PolicyChanged():
            state.policy_version = entry.policy_version
            state.policy_json = entry.policy_json
            state.commands.add(entry.command_id)
        case PeriodOpened():
            # Keep one period of history (the idempotency window), drop anything older.
            closing = state.period_id
            state.previous_outcomes = state.outcomes
            state.outcomes = {}
            state.expired = {rid: h for rid, h in state.expired.items() if h.period_id in (closing, entry.period_id)}
            state.previous_settled = state.settled
            state.settled = set()
            state.period_id = entry.period_id
        case ThresholdCrossed():
            state.thresholds.add((entry.period_id, entry.scope_type, entry.scope_id, entry.threshold_pct))
        case ReservationRepeated():
            pass
        case _:
            raise AssertionError(f"unknown ledger entry {type(entry).__name__}")
    return state


def balances_view(state: TenantState) -> dict[str, dict[str, int]]:
    """A stable, comparable rendering of every balance: what the service reports and tests compare."""
    view: dict[str, dict[str, int]] = {}
    for (period, scope_type, scope_id), b in sorted(state.balances.items()):
        view[f"{period}/{scope_type}/{scope_id}"] = {
            "limit_micro_usd": state.limits.get((scope_type, scope_id), -1),
            "credit_micro_usd": b.credit_micro_usd,
            "posted_micro_usd": b.posted_micro_usd,
            "pending_micro_usd": b.pending_micro_usd,
        }
    return view
