"""Property tests of the budget ledger: random operation sequences through decide_* then evolve.

Every generated run stays within two calendar months (2026-11-20 .. 2026-12-20), the idempotency
window the state keeps (this period and the last), so "once per request id" must hold for the whole run.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledgergate.codec import codec
from ledgergate.events import Usage
from ledgergate.shared.catalogue import prices
from ledgergate.shared.ledger.decide import (
    MAX_CANDIDATES,
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
    LedgerEntry,
    PeriodOpened,
    ReservationDenied,
    ReservationExpired,
    ReservationPlaced,
    ReservationRepeated,
    ReservationSettled,
    ReservationVoided,
    ThresholdCrossed,
    from_record,
    to_record,
)
from ledgergate.shared.ledger.state import (
    CONFLICT_REASON,
    RATE_LIMITED_REASON,
    TENANT,
    UNAUTHENTICATED_REASON,
    WORKFLOW,
    TenantState,
    balances_view,
    evolve,
)

T_START = 1_795_824_000_000  # 2026-11-28T00:00:00Z
T_END = T_START + 30 * 86_400_000  # 2026-12-28: two periods at most
DAY = 86_400_000
TENANTS = ("t0", "t1", "t2")
WORKFLOWS = ("", "wa", "wb")
PRICE_VERSION = prices().at(T_START).version
MODELS = tuple(sorted(prices().at(T_START).models))
TIER = {m: p.tier for m, p in prices().at(T_START).models.items()}

# ------------------------------------------------------------------------------------------ strategies

tenant_idx = st.sampled_from([0, 0, 0, 1, 1, 2])  # mostly one tenant, so its history gets long
money = st.one_of(st.integers(0, 3_000_000), st.sampled_from([0, 1, 50_000, 100_000, 1_000_000]))
cost = st.one_of(st.integers(0, 300_000), st.sampled_from([0, 1, 10_000, 100_000]))
command_id = st.integers(0, 20).map(lambda n: f"c{n}")
request_id = st.integers(0, 15).map(lambda n: f"r{n}")
scope = st.one_of(st.just((TENANT, "")), st.sampled_from(WORKFLOWS[1:]).map(lambda w: (WORKFLOW, w)))

tick = st.tuples(st.just("tick"), st.sampled_from([0, 1, 999, 1_000, 60_000, 3_600_000, DAY, 2 * DAY, 3 * DAY]))
limit = st.tuples(st.just("limit"), tenant_idx, scope, st.sampled_from(["SET_LIMIT", "RAISE_LIMIT", "LOWER_LIMIT"]),
                  money, command_id)
credit = st.tuples(st.just("credit"), tenant_idx, scope, st.integers(0, 300_000), command_id)
candidates = st.tuples(st.sampled_from([True] * 9 + [False]),
                       st.lists(st.tuples(st.sampled_from(MODELS), cost, st.integers(1, 4096)), min_size=1,
                                max_size=MAX_CANDIDATES + 2)).map(lambda x: x[1] if x[0] else [])
rejection = st.sampled_from([None] * 6 + [("rate_limited", "rate", 250), ("prompt_too_long", "policy", None),
                                        ("unauthenticated", "credential", None)])
envelope = st.one_of(st.none(), st.none(), st.integers(0, 300_000))
reserve = st.tuples(st.just("reserve"), tenant_idx, request_id, st.sampled_from(WORKFLOWS), candidates,
                    st.sampled_from([0, 0, 0, 1]), envelope, rejection,
                    st.sampled_from([1_000, 60_000, 3_600_000, 3 * DAY]))
usage = st.tuples(st.sampled_from([True] * 9 + [False]),
                  st.builds(Usage, st.integers(0, 40_000), st.integers(0, 10_000), st.integers(0, 8_000),
                            st.integers(0, 2_000))).map(lambda x: x[1] if x[0] else Usage(0, 0, 0, 0))
# Settlements and voids name a request by index into the tenant's known requests (live, settled, expired
# or voided alike), so they hit real reservations, and again, rather than mostly missing.
target = st.integers(0, 9)
settle = st.tuples(st.just("settle"), tenant_idx, target, usage,
                   st.sampled_from(["hold", "hold", "other", "alias"]), st.sampled_from(MODELS),
                   st.sampled_from([False, False, False, True]), st.booleans())
void = st.tuples(st.just("void"), tenant_idx, target, command_id)
expire = st.tuples(st.just("expire"), tenant_idx)
policy = st.tuples(st.just("policy"), tenant_idx, command_id)
OP_STRATEGIES = {"reserve": reserve, "settle": settle, "tick": tick, "expire": expire, "limit": limit,
                 "credit": credit, "void": void, "policy": policy}
# Weighted by hand, so reservations and settlements (what the invariants are about) dominate.
OP_WEIGHTS = ["reserve"] * 5 + ["settle"] * 3 + ["tick"] * 2 + ["expire", "limit", "credit", "void", "policy"]


@st.composite
def operations(draw: st.DrawFn) -> list[tuple]:
    ops: list[tuple] = []
    # Most tenants start with a tenant budget (and maybe workflow budgets); some have none, so no_budget
    # stays reachable.
    for i in range(len(TENANTS)):
        for sc, chance in (((TENANT, ""), 9), ((WORKFLOW, "wa"), 4), ((WORKFLOW, "wb"), 4)):
            if draw(st.integers(0, 9)) < chance:
                ops.append(("limit", i, sc, "SET_LIMIT", draw(money), f"setup-{i}-{sc[1]}"))
    for _ in range(draw(st.integers(10, 80))):
        ops.append(draw(OP_STRATEGIES[draw(st.sampled_from(OP_WEIGHTS))]))
    return ops


# ------------------------------------------------------------------------------------------ the harness


@dataclass
class Tenant:
    tenant_id: str
    state: TenantState
    shadow: TenantState  # folded from codec round-tripped entries
    log: list[LedgerEntry] = field(default_factory=list)
    placed: Counter[str] = field(default_factory=Counter)
    settled: Counter[str] = field(default_factory=Counter)
    first_outcome: dict[str, tuple[str, str]] = field(default_factory=dict)  # rid -> (entry id, sha)
    live: dict[str, ReservationPlaced] = field(default_factory=dict)  # our own model of live holds
    # Per (period, scope type, scope id): how far posted + pending may legitimately exceed limit + credit,
    # grown only by flagged overage and by a limit lowered below what was already committed.
    excused: Counter[tuple[str, str, str]] = field(default_factory=Counter)


def _snapshot(state: TenantState) -> TenantState:
    return copy.deepcopy(state)


def _committed(state: TenantState, period: str, scope: tuple[str, str]) -> int:
    b = state.peek(period, scope)
    return b.posted_micro_usd + b.pending_micro_usd


def _fits(state: TenantState, period: str, workflow: str, amount: int, envelope: int | None) -> bool:
    """Independent restatement of "affordable": every limited scope keeps posted + pending <= limit + credit."""
    if (TENANT, state.tenant_id) not in state.limits:
        return False
    for sc in state.scopes_of(workflow):
        lim = state.limits.get(sc)
        if lim is not None and _committed(state, period, sc) + amount > lim + state.peek(period, sc).credit_micro_usd:
            return False
    return envelope is None or amount <= envelope


def _check_before(t: Tenant, entry: LedgerEntry, cmd: Reserve | None) -> None:
    """Checks against the state just before `entry` is folded."""
    s = t.state
    if isinstance(entry, ReservationPlaced):
        assert cmd is not None and cmd.rejection_reason is None
        # Invariant 1, exactly: the placement itself never takes a limited scope past limit + credit.
        for sc in s.scopes_of(entry.workflow_id):
            lim = s.limits.get(sc)
            if lim is not None:
                b = s.peek(entry.period_id, sc)
                assert b.posted_micro_usd + b.pending_micro_usd + entry.amount_micro_usd <= lim + b.credit_micro_usd, (
                    f"{entry.request_id} placed {entry.amount_micro_usd} over {sc} in {entry.period_id}")
        assert (TENANT, s.tenant_id) in s.limits
        chosen = cmd.candidates[entry.candidate_index]
        assert (entry.model, entry.amount_micro_usd, entry.tier) == (chosen.model, chosen.estimated_cost_micro_usd,
                                                                     chosen.tier)
        assert entry.candidate_index < MAX_CANDIDATES
        assert _fits(s, entry.period_id, entry.workflow_id, entry.amount_micro_usd, cmd.envelope_micro_usd)
        for earlier in cmd.candidates[:entry.candidate_index]:  # first fit, not any fit
            assert not _fits(s, entry.period_id, entry.workflow_id, earlier.estimated_cost_micro_usd,
                             cmd.envelope_micro_usd)
        remaining = s.headroom(entry.period_id, (TENANT, s.tenant_id))
        assert entry.tenant_remaining_micro_usd == remaining - entry.amount_micro_usd
    elif isinstance(entry, ReservationDenied) and entry.reason in ("budget_exhausted", "over_request_envelope",
                                                                   "no_budget"):
        assert cmd is not None
        for c in cmd.candidates[:MAX_CANDIDATES]:
            assert not _fits(s, entry.period_id, entry.workflow_id, c.estimated_cost_micro_usd,
                             cmd.envelope_micro_usd)
    elif isinstance(entry, BudgetLimitSet):
        # A limit lowered below what is already committed is excused, by exactly the excess it creates.
        sc = (entry.scope_type, entry.scope_id)
        for (period, st_, sid), b in list(s.balances.items()):
            if (st_, sid) == sc:
                excess = b.posted_micro_usd + b.pending_micro_usd - entry.limit_micro_usd - b.credit_micro_usd
                key = (period, st_, sid)
                t.excused[key] = max(t.excused[key], excess)


def _check_after(t: Tenant, entry: LedgerEntry) -> None:
    s = t.state
    rid = getattr(entry, "request_id", None)
    match entry:
        case ReservationPlaced():
            t.placed[rid] += 1
            t.live[rid] = entry
            assert rid not in t.first_outcome
            t.first_outcome[rid] = (entry.entry_id, entry.request_sha256)
        case ReservationDenied() if entry.reason == CONFLICT_REASON:
            assert rid in t.first_outcome
            assert t.first_outcome[rid][1] != entry.request_sha256
            assert s.outcome(rid) == t.first_outcome[rid]  # the conflict never overwrites the original
        case ReservationDenied() if entry.reason == UNAUTHENTICATED_REASON:
            # Not the tenant's request: whatever the id's outcome was, it stays (a forger takes no id).
            assert s.outcome(rid) == t.first_outcome.get(rid) and entry.tenant_remaining_micro_usd == 0
        case ReservationDenied() if entry.reason == RATE_LIMITED_REASON:
            # A throttle is not final: the id stays free for the retry the client was told to make.
            assert rid not in t.first_outcome and s.outcome(rid) is None
        case ReservationDenied():
            assert rid not in t.first_outcome
            t.first_outcome[rid] = (entry.entry_id, entry.request_sha256)
        case ReservationRepeated():
            assert t.first_outcome[rid][0] == entry.original_entry_id
        case ReservationSettled():
            t.settled[rid] += 1
            hold = t.live.pop(rid, None)
            assert entry.reserved_micro_usd == (hold.amount_micro_usd if hold else 0)
            assert entry.actual_micro_usd == entry.reserved_micro_usd - entry.released_micro_usd \
                + entry.overage_micro_usd
            assert min(entry.released_micro_usd, entry.overage_micro_usd) == 0
            for sc in s.scopes_of(entry.workflow_id):
                t.excused[(entry.period_id, *sc)] += entry.overage_micro_usd
        case ReservationVoided() | ReservationExpired():
            hold = t.live.pop(rid)
            assert entry.released_micro_usd == hold.amount_micro_usd
        case _:
            pass
    # Invariant 2: once per request id.
    if rid is not None:
        assert t.placed[rid] <= 1, rid
        assert t.settled[rid] <= 1, rid
    # Invariant 3: pending is never negative and equals the live holds, per period and scope.
    expected_pending: Counter[tuple[str, str, str]] = Counter()
    for hold in s.holds.values():
        for sc in s.scopes_of(hold.workflow_id):
            expected_pending[(hold.period_id, *sc)] += hold.amount_micro_usd
    assert set(s.holds) == set(t.live)
    assert {k: h.amount_micro_usd for k, h in s.holds.items()} == {k: p.amount_micro_usd for k, p in t.live.items()}
    for key, b in s.balances.items():
        assert b.pending_micro_usd >= 0, key
        assert b.pending_micro_usd == expected_pending[key], key
    for key, amount in expected_pending.items():
        assert s.peek(key[0], key[1:]).pending_micro_usd == amount
    # Invariant 1, with its excuses: beyond flagged overage and lowered limits, nothing exceeds limit + credit.
    for (period, st_, sid), b in s.balances.items():
        lim = s.limits.get((st_, sid))
        if lim is not None:
            excess = b.posted_micro_usd + b.pending_micro_usd - lim - b.credit_micro_usd
            assert excess <= t.excused[(period, st_, sid)], (period, st_, sid, excess)


def _apply(t: Tenant, entries: list[LedgerEntry] | Rejected, cmd: Reserve | None = None) -> None:
    if isinstance(entries, Rejected):
        return
    for entry in entries:
        assert entry.tenant_id == t.tenant_id
        _check_before(t, entry, cmd)
        evolve(t.state, entry)
        name, record = to_record(entry)
        decoded_name, decoded = codec().decode(codec().encode(name, record))
        evolve(t.shadow, from_record(decoded_name, decoded))
        t.log.append(entry)
        _check_after(t, entry)
        # Invariant 4 incrementally: the codec round trip folds to the same state.
        assert t.shadow == t.state


def _fold(entries: list[LedgerEntry], tenant_id: str) -> TenantState:
    fresh = TenantState(tenant_id)
    for e in entries:
        evolve(fresh, e)
    return fresh


def _pure(t: Tenant, decide, *args):
    before = _snapshot(t.state)
    result = decide(t.state, *args)
    assert t.state == before, f"{decide.__name__} mutated the state"
    return result


def _target(t: Tenant, n: int) -> str:
    """The n-th request this tenant placed (cycling), or an unknown id for n == 9."""
    known = sorted(t.placed)
    return known[n % len(known)] if known and n < 9 else f"unknown-{n}"


def _run(ops: list[tuple]) -> dict[str, Tenant]:
    tenants = {tid: Tenant(tid, TenantState(tid), TenantState(tid)) for tid in TENANTS}
    now = T_START
    for step, op in enumerate(ops):
        kind = op[0]
        if kind == "tick":
            now = min(T_END, now + op[1])
            continue
        t = tenants[TENANTS[op[1]]]
        match op:
            case ("limit", _, (scope_type, scope_id), cmd_kind, amount, cid):
                cmd = Command(cid, t.tenant_id, cmd_kind, scope_type, scope_id, amount, None, None, "prop")
                _apply(t, _pure(t, decide_command, cmd, now))
            case ("credit", _, (scope_type, scope_id), amount, cid):
                cmd = Command(cid, t.tenant_id, "GRANT_CREDIT", scope_type, scope_id, amount, None, None, "prop")
                _apply(t, _pure(t, decide_command, cmd, now))
            case ("policy", _, cid):
                cmd = Command(cid, t.tenant_id, "SET_POLICY", TENANT, "", 0, None, '{"max_output_tokens": 7}', "p")
                _apply(t, _pure(t, decide_command, cmd, now))
            case ("void", _, n, cid):
                rid = _target(t, n)
                cmd = Command(cid, t.tenant_id, "VOID_RESERVATION", TENANT, "", 0, rid, None, "prop")
                _apply(t, _pure(t, decide_command, cmd, now))
            case ("expire", _):
                _apply(t, _pure(t, decide_expiry, now))
            case ("reserve", _, rid, workflow, cands, variant, envelope, rej, ttl):
                cmd = Reserve(
                    request_id=rid, tenant_id=t.tenant_id, workflow_id=workflow, agent_id="a",
                    requested_model=cands[0][0] if cands else "gpt-4o", priority="NORMAL", region=None,
                    requested_at_ms=now, request_sha256=f"sha-{rid}-{variant}", input_tokens=10,
                    envelope_micro_usd=envelope, policy_version=t.state.policy_version,
                    candidates=tuple(Candidate(m, TIER[m], c, g, PRICE_VERSION) for m, c, g in cands),
                    rejection_reason=rej[0] if rej else None, rejection_detail="d",
                    rejection_scope=rej[1] if rej else "policy", retry_after_ms=rej[2] if rej else None)
                _apply(t, _pure(t, decide_reserve, cmd, now, ttl, f"0:{step}"), cmd)
            case ("settle", _, n, u, model_choice, other, cancelled, estimated):
                rid = _target(t, n)
                hold = t.state.holds.get(rid)
                model = {"hold": hold.model if hold else "gpt-4o", "other": other,
                         "alias": "gpt-4o-2026-08-06"}[model_choice]
                live = hold is not None
                entries = _pure(t, decide_settle, Settle(rid, t.tenant_id, model, u, estimated, cancelled), now,
                                prices())
                if live:
                    assert entries and isinstance(entries[0], ReservationSettled | ReservationVoided)
                    if isinstance(entries[0], ReservationSettled):
                        priced = hold.model if model_choice == "alias" else model
                        assert entries[0].actual_micro_usd == prices().cost_micro_usd(
                            PRICE_VERSION, priced, u.input_tokens, u.cached_input_tokens,
                            u.output_tokens, reasoning_tokens=u.reasoning_tokens)
                _apply(t, entries)
            case _:
                raise AssertionError(op)
    return tenants


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations())
def test_ledger_invariants_hold_for_random_operations(ops: list[tuple]) -> None:
    tenants = _run(ops)
    for t in tenants.values():
        # Invariant 4: a fresh fold of the log (and of its codec round trip) is the incremental state.
        fresh = _fold(t.log, t.tenant_id)
        assert balances_view(fresh) == balances_view(t.state)
        assert fresh.holds == t.state.holds
        assert fresh.limits == t.state.limits
        assert fresh == t.state
        decoded = [from_record(*codec().decode(codec().encode(*to_record(e)))) for e in t.log]
        assert decoded == t.log
        refolded = _fold(decoded, t.tenant_id)
        assert balances_view(refolded) == balances_view(t.state)
        assert refolded.holds == t.state.holds
        assert refolded.limits == t.state.limits
        # Deterministic entry ids: a replayed cause can never append a second entry with the same id.
        ids = [e.entry_id for e in t.log]
        assert len(ids) == len(set(ids))
        assert sum(isinstance(e, PeriodOpened) for e in t.log) <= 2


def test_harness_sees_placements_settlements_and_overage() -> None:
    """Guard against a vacuous property: a fixed run exercises the interesting paths."""
    ops = [
        ("limit", 0, (TENANT, ""), "SET_LIMIT", 100_000, "c0"),
        ("limit", 0, (WORKFLOW, "wa"), "SET_LIMIT", 50_000, "c1"),
        ("reserve", 0, "r0", "wa", [("gpt-4o", 60_000, 10), ("gpt-4o-mini", 1_000, 10)], 0, None, None, 60_000),
        ("reserve", 0, "r0", "wa", [("gpt-4o", 1, 10)], 0, None, None, 60_000),
        ("reserve", 0, "r0", "wa", [("gpt-4o", 1, 10)], 1, None, None, 60_000),
        ("settle", 0, 0, Usage(10_000, 0, 1_000, 0), "other", "gpt-4o", False, False),
        ("reserve", 0, "r1", "", [("gpt-4o", 5_000, 10)], 0, None, None, 1_000),
        ("tick", 1_000),
        ("expire", 0),
        ("settle", 0, 1, Usage(100, 0, 0, 0), "hold", "gpt-4o", False, False),
        ("limit", 0, (TENANT, ""), "LOWER_LIMIT", 99_000, "c2"),
        ("tick", 20 * DAY),
        ("reserve", 0, "r2", "", [("gpt-4o", 500, 10)], 0, None, None, 1_000),
    ]
    t = _run(ops)["t0"]
    kinds = [type(e).__name__ for e in t.log]
    assert kinds == ["PeriodOpened", "BudgetLimitSet", "BudgetLimitSet", "ReservationPlaced", "ReservationRepeated",
                     "ReservationDenied", "ReservationSettled", "ThresholdCrossed", "ReservationPlaced",
                     "ReservationExpired", "ReservationSettled", "BudgetLimitSet", "PeriodOpened", "ReservationPlaced"]
    first = t.log[3]
    assert isinstance(first, ReservationPlaced) and first.candidate_index == 1
    settled = t.log[6]
    assert isinstance(settled, ReservationSettled) and settled.overage_micro_usd == 35_000 - 1_000
    crossed = t.log[7]
    assert isinstance(crossed, ThresholdCrossed)
    assert (crossed.scope_type, crossed.scope_id, crossed.threshold_pct) == (WORKFLOW, "wa", 50)
    late = t.log[10]
    assert isinstance(late, ReservationSettled) and (late.reserved_micro_usd, late.overage_micro_usd) == (0, 250)
    assert t.excused[("2026-11", TENANT, "t0")] == 34_000 + 250  # overage, then no extra from the lowering
    assert t.excused[("2026-11", WORKFLOW, "wa")] == 34_000
    assert t.state.period_id == "2026-12"
