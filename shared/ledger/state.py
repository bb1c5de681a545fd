"""Per-tenant budget state and `evolve`, the one function that folds ledger entries into it.

`evolve` mutates in place: rebuilding from offset 0 must reach 200,000 entries/s, and copying a
tenant's maps per entry would not. Purity lives one level up: the budget-manager's `decide` only
reads state and returns entries; `evolve` is the only writer and does no I/O. Folding the same
entries always gives the same state (invariant 3), which tests check against the service.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

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

TENANT = "TENANT"
WORKFLOW = "WORKFLOW"
# Scopes a reservation may move money on besides its tenant and workflow (named in the entry's `scopes`):
# a region's budget under the tenant (REGION:<deployment region>) and a canary's under its workflow
# (CANARY:<workflow>/<canary>). Each is enforced like the others: every scope with a limit needs headroom.
REGION = "REGION"
CANARY = "CANARY"
SCOPE_TYPES = (TENANT, WORKFLOW, REGION, CANARY)
CONFLICT_REASON = "idempotency_conflict"
RATE_LIMITED_REASON = "rate_limited"
# A request whose signature failed: not the tenant's request, so never its request id's outcome.
UNAUTHENTICATED_REASON = "unauthenticated"

ScopeKey = tuple[str, str]  # (scope_type, scope_id)


def scope_text(scope: ScopeKey) -> str:
    """A scope as an entry's `scopes` names it: TYPE:id."""
    assert scope[0] in (REGION, CANARY) and scope[1], scope
    return f"{scope[0]}:{scope[1]}"


SCOPE_ID_CHARS_MAX = 257  # a CANARY's <workflow>/<canary>: two 128-character names


def scope_problem(text: str) -> str | None:
    """Why `text` is not a further scope (None when it is one): what the budget-manager checks at its edge."""
    kind, _, scope_id = text.partition(":")
    if kind not in (REGION, CANARY):
        return f"scope {text[:80]!r} is not REGION:<id> or CANARY:<workflow>/<canary>"
    if not 0 < len(scope_id) <= SCOPE_ID_CHARS_MAX or not scope_id.isprintable() or " " in scope_id:
        return f"scope {text[:80]!r}: its id must be 1..{SCOPE_ID_CHARS_MAX} printable characters without spaces"
    if kind == CANARY and "/" not in scope_id:
        return f"scope {text[:80]!r}: a CANARY scope's id is <workflow>/<canary>"
    return None


def parse_scope(text: str) -> ScopeKey:
    kind, _, scope_id = text.partition(":")
    assert kind in (REGION, CANARY) and scope_id, text
    return _intern(kind), _intern(scope_id)

RESERVATION_SUFFIX = "/reservation"

# Most tenants never fill most of their maps; an empty dict or set costs 64-216 bytes, times a million
# tenants. They share these read-only empties until `_writable` gives them their own.
class _SharedEmpty(dict[Any, Any]):
    """The read-only empty dict every tenant starts with; `_writable` swaps in a real one."""

    __slots__ = ()

    def _refuse(self, *_: object, **__: object) -> None:
        raise TypeError("shared empty container: write through _writable()")

    __setitem__ = __delitem__ = pop = popitem = setdefault = update = clear = _refuse  # type: ignore[assignment]

    def __deepcopy__(self, memo: object) -> _SharedEmpty:
        return self

    def __copy__(self) -> _SharedEmpty:
        return self

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_shared_empty, ())


def _shared_empty() -> Any:  # Any, as _EMPTY is: it stands in for every map a tenant holds
    return _EMPTY


_EMPTY: Any = _SharedEmpty()
_NONE: Any = frozenset()
_intern = sys.intern


def reservation_entry_id(request_id: str) -> str:
    """The id of a request's first outcome (placed or denied): derived, so the state need not keep it."""
    return request_id + RESERVATION_SUFFIX


@dataclass(slots=True)
class Balance:
    """One scope in one period. posted + pending <= limit + credit, overage aside (invariant 1)."""

    credit_micro_usd: int = 0
    posted_micro_usd: int = 0
    pending_micro_usd: int = 0


@dataclass(frozen=True, slots=True)
class Hold:
    """A live reservation: what settle/void/expire must release, and from which scopes."""

    period_id: str
    workflow_id: str
    model: str
    amount_micro_usd: int
    price_version: str
    expires_at_ms: int
    scopes: tuple[str, ...] = ()  # the placement's further scopes, TYPE:id; its settle, void or expiry names them


@dataclass(slots=True)
class TenantState:
    tenant_id: str
    period_id: str = ""
    limits: dict[ScopeKey, int] = field(default_factory=lambda: _EMPTY)
    balances: dict[tuple[str, str, str], Balance] = field(default_factory=lambda: _EMPTY)  # (period, type, id)
    holds: dict[str, Hold] = field(default_factory=lambda: _EMPTY)
    # request id -> request sha256 of its first outcome (whose entry id is `reservation_entry_id`), this
    # period and the last one: the idempotency window. Older ids are forgotten so memory stays bounded.
    outcomes: dict[str, str] = field(default_factory=lambda: _EMPTY)
    previous_outcomes: dict[str, str] = field(default_factory=lambda: _EMPTY)
    settled: set[str] = field(default_factory=lambda: _NONE)
    previous_settled: set[str] = field(default_factory=lambda: _NONE)
    # Holds that expired this period or the last: a late completion is still charged.
    expired: dict[str, Hold] = field(default_factory=lambda: _EMPTY)
    thresholds: set[tuple[str, str, str, int]] = field(default_factory=lambda: _NONE)
    commands: set[str] = field(default_factory=lambda: _NONE)
    policy_version: int = 0
    policy_json: str = ""
    entries: int = 0

    def balance(self, period_id: str, scope: ScopeKey) -> Balance:
        key = (period_id, scope[0], scope[1])
        found = self.balances.get(key)
        if found is None:
            key = (_intern(period_id), _intern(scope[0]), _intern(scope[1]))
            found = _writable(self, "balances")[key] = Balance()
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
        """(entry id, request sha256) of the request's first outcome within the window, if any."""
        sha = self.outcomes.get(request_id)
        if sha is None:
            sha = self.previous_outcomes.get(request_id)
        return None if sha is None else (reservation_entry_id(request_id), sha)

    def was_settled(self, request_id: str) -> bool:
        return request_id in self.settled or request_id in self.previous_settled

    def scopes_of(self, workflow_id: str, further: tuple[str, ...] = ()) -> list[ScopeKey]:
        """Outermost first: the tenant, the workflow, then the entry's further scopes (REGION, CANARY)."""
        scopes: list[ScopeKey] = [(TENANT, self.tenant_id)]
        if workflow_id:
            scopes.append((WORKFLOW, workflow_id))
        scopes.extend(parse_scope(s) for s in further)
        return scopes


def _writable(state: TenantState, name: str) -> Any:
    """The tenant's own container `name`, replacing the shared read-only empty on first write."""
    value = getattr(state, name)
    if value is _EMPTY:
        value = {}
        setattr(state, name, value)
    elif value is _NONE:
        value = set()
        setattr(state, name, value)
    return value


class BalanceDelta(NamedTuple):
    """What one entry adds to one scope's balance in one period (the projector's row of a batch)."""

    scope_type: str
    scope_id: str
    period_id: str
    credit_micro_usd: int = 0
    posted_micro_usd: int = 0
    pending_micro_usd: int = 0


# The balance arithmetic of the ledger, in one place: per entry type, the (credit, posted, pending) it adds
# to each of its scopes. `evolve` applies it to the state and the projector to PostgreSQL (through
# `balance_deltas`). A table by type rather than a match: the fold runs it for every entry.
_CHANGES: dict[type[Any], Callable[[Any], tuple[int, int, int]]] = {
    ReservationPlaced: lambda e: (0, 0, e.amount_micro_usd),
    ReservationSettled: lambda e: (0, e.actual_micro_usd, -e.reserved_micro_usd),
    ReservationVoided: lambda e: (0, 0, -e.released_micro_usd),
    ReservationExpired: lambda e: (0, 0, -e.released_micro_usd),
    CreditGranted: lambda e: (e.amount_micro_usd, 0, 0),
}


def balance_scopes(entry: LedgerEntry) -> tuple[ScopeKey, ...]:
    """The scopes an entry's money moves on: a credit's own scope; a hold's tenant and, when it has one, its
    workflow. A settle, void or expiry names its hold's period (decide writes it), so every delta of a hold
    lands in the period where it was placed."""
    if isinstance(entry, CreditGranted):
        return ((entry.scope_type, entry.scope_id),)
    workflow_id: str = getattr(entry, "workflow_id", "")
    base: tuple[ScopeKey, ...] = ((TENANT, entry.tenant_id), (WORKFLOW, workflow_id)) if workflow_id else (
        (TENANT, entry.tenant_id),)
    further: tuple[str, ...] = getattr(entry, "scopes", ())
    return base + tuple(parse_scope(s) for s in further) if further else base


def balance_deltas(entry: LedgerEntry) -> list[BalanceDelta]:
    change = _CHANGES.get(type(entry))
    if change is None:
        return []
    credit, posted, pending = change(entry)
    return [BalanceDelta(scope_type, scope_id, entry.period_id, credit, posted, pending)
            for scope_type, scope_id in balance_scopes(entry)]


def _apply_balances(state: TenantState, entry: LedgerEntry) -> None:
    change = _CHANGES.get(type(entry))
    if change is None:
        return
    credit, posted, pending = change(entry)
    for scope in balance_scopes(entry):
        b = state.balance(entry.period_id, scope)
        b.credit_micro_usd += credit
        b.posted_micro_usd += posted
        b.pending_micro_usd += pending
        # Postconditions: a hold is released at most once, and a placement never takes a scope past its
        # limit plus credit (invariant 1; a settlement's overage may, and is flagged).
        assert b.pending_micro_usd >= 0, f"{entry.entry_id}: pending below zero on {scope}"
        if pending > 0:
            limit = state.limits.get(scope)
            assert limit is None or b.posted_micro_usd + b.pending_micro_usd <= limit + b.credit_micro_usd, (
                f"{entry.entry_id}: {scope} over its limit")


def _first_outcome(state: TenantState, entry: ReservationPlaced | ReservationDenied | CacheHitRecorded) -> None:
    assert entry.entry_id == reservation_entry_id(entry.request_id), entry.entry_id
    _writable(state, "outcomes")[entry.request_id] = entry.request_sha256


def evolve(state: TenantState, entry: LedgerEntry) -> TenantState:
    """Apply one ledger entry. The only code that changes balances (through `balance_deltas`)."""
    assert entry.tenant_id == state.tenant_id, f"entry {entry.entry_id} of {entry.tenant_id} on {state.tenant_id}"
    state.entries += 1
    _apply_balances(state, entry)
    match entry:
        case ReservationPlaced():
            assert entry.request_id not in state.holds, f"a second hold for {entry.request_id}"
            _writable(state, "holds")[entry.request_id] = Hold(
                _intern(entry.period_id), _intern(entry.workflow_id), _intern(entry.model), entry.amount_micro_usd,
                _intern(entry.price_version), entry.expires_at_ms, entry.scopes)
            _first_outcome(state, entry)
        case ReservationDenied():
            # A conflict is not this request's outcome, and a throttle is not final: the client is told
            # to come back after retry_after_ms, with the same request id. An unauthenticated request is
            # not the tenant's at all: a forger must not be able to use up one of its request ids.
            if entry.reason not in (CONFLICT_REASON, RATE_LIMITED_REASON, UNAUTHENTICATED_REASON):
                _first_outcome(state, entry)
        case ReservationSettled():
            assert not state.was_settled(entry.request_id), f"a second settlement for {entry.request_id}"
            hold = _writable(state, "holds").pop(entry.request_id, None) or _writable(state, "expired").pop(
                entry.request_id, None)
            assert hold is None or hold.period_id == entry.period_id, f"{entry.entry_id} is not in its hold's period"
            assert hold is None or hold.scopes == entry.scopes, f"{entry.entry_id} posts on other scopes"
            _writable(state, "settled").add(entry.request_id)
        case ReservationVoided() | ReservationExpired():
            hold = _writable(state, "holds").pop(entry.request_id)
            assert hold.period_id == entry.period_id, f"{entry.entry_id} is not in its hold's period"
            assert entry.released_micro_usd == hold.amount_micro_usd, f"{entry.entry_id} releases another amount"
            assert entry.scopes == hold.scopes, f"{entry.entry_id} releases on other scopes than its hold's"
            if isinstance(entry, ReservationExpired):
                _writable(state, "expired")[entry.request_id] = hold
        case BudgetLimitSet():
            _writable(state, "limits")[(_intern(entry.scope_type), _intern(entry.scope_id))] = entry.limit_micro_usd
            _writable(state, "commands").add(entry.command_id)
        case CreditGranted():
            _writable(state, "commands").add(entry.command_id)
        case PolicyChanged():
            state.policy_version = entry.policy_version
            state.policy_json = entry.policy_json
            _writable(state, "commands").add(entry.command_id)
        case PeriodOpened():
            # Keep one period of history (the idempotency window), drop anything older.
            closing = state.period_id
            state.previous_outcomes = state.outcomes
            state.outcomes = _EMPTY
            kept = {rid: h for rid, h in state.expired.items() if h.period_id in (closing, entry.period_id)}
            state.expired = kept or _EMPTY
            state.previous_settled = state.settled
            state.settled = _NONE
            state.period_id = _intern(entry.period_id)
        case ThresholdCrossed():
            _writable(state, "thresholds").add((entry.period_id, entry.scope_type, entry.scope_id, entry.threshold_pct))
        case CacheHitRecorded():
            # The request's outcome (a repeat of its id is answered the same), and no money moves.
            _first_outcome(state, entry)
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
