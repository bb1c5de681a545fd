"""The projector's balance arithmetic equals ledgergate.shared.ledger.state.evolve on random ledgers.

The ledgers come from the property harness of test_ledger_properties (random operations through the
budget-manager's decide_* functions), so they contain every entry type in realistic orders.
"""

from __future__ import annotations

from collections import defaultdict

from hypothesis import HealthCheck, given, settings

from ledgergate.events import Usage
from ledgergate.services.projector.core import Batch
from ledgergate.shared.ledger.entries import BudgetLimitSet, LedgerEntry, ReservationSettled, to_record
from ledgergate.shared.ledger.state import balance_deltas, balances_view
from tests.unit.test_ledger_properties import _run, operations


def _project(log: list[LedgerEntry]) -> dict[str, dict[str, int]]:
    """What the SQL does with the deltas: sum per (period, scope); the last limit of a scope everywhere."""
    sums: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    limits: dict[tuple[str, str], int] = {}
    for entry in log:
        for d in balance_deltas(entry):
            s = sums[(d.period_id, d.scope_type, d.scope_id)]
            s[0] += d.credit_micro_usd
            s[1] += d.posted_micro_usd
            s[2] += d.pending_micro_usd
        if isinstance(entry, BudgetLimitSet):
            limits[(entry.scope_type, entry.scope_id)] = entry.limit_micro_usd
    return {f"{p}/{st}/{sid}": {"limit_micro_usd": limits.get((st, sid), -1), "credit_micro_usd": c,
                                "posted_micro_usd": po, "pending_micro_usd": pe}
            for (p, st, sid), (c, po, pe) in sorted(sums.items())}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations())
def test_balance_deltas_fold_to_the_same_balances_as_evolve(ops: list[tuple]) -> None:
    for t in _run(ops).values():
        assert _project(t.log) == balances_view(t.state)


def test_batch_rows_skip_a_repeated_entry_and_keep_raw_usage() -> None:
    ops = [("limit", 0, ("TENANT", ""), "SET_LIMIT", 1_000_000, "c0"),
           ("reserve", 0, "r1", "wa", [("gpt-4o", 50_000, 100)], 0, None, None, 60_000),
           ("settle", 0, 0, Usage(10, 2, 30, 4), "hold", "gpt-4o", False, True)]
    log = _run(ops)["t0"].log
    batch = Batch()
    for offset, entry in enumerate([*log, log[-1]]):
        batch.consumed("ledger", 0, offset)
        batch.add_ledger(entry, to_record(entry)[1], 0, offset)
    assert len(batch.ledger) == len(log), "the duplicate was staged once"
    assert batch.offsets == {("ledger", 0): len(log) + 1}
    settled = next(e for e in log if isinstance(e, ReservationSettled))
    (usage,) = batch.usage
    assert usage[2] == "r1" and usage[3] == "wa" and usage[6:11] == (10, 2, 30, 4, True)
    assert usage[12] == settled.actual_micro_usd
    # tenant + workflow scope for the hold, both again for the settlement
    assert sorted({d[2] for d in batch.deltas}) == ["TENANT", "WORKFLOW"]
    assert len(batch.limits) == 1
