"""The open-holds gauges of the budget-manager (ledgergate_reservations_open, ..._open_micro_usd).

Live entries move the gauges by exactly what they do to the tenant's holds: the hold before and after
`evolve`. A restore is the hard part: its tenants come back packed (shared/ledger/packing.py) and
unpacking each one that has holds only to count them would put that cost on every restart. So a
restored tenant that may have holds (a snapshot with a next expiry, or a ReservationPlaced in the
tail) is counted when it is next unpacked for use: by a message, or at the latest by its expiry
wake-up, which the budget-manager schedules for each of them. Until then its holds are missing from the
gauges: after a restart they converge within one reservation TTL (LEDGERGATE_RESERVATION_TTL_MS).
"""

from __future__ import annotations

from typing import Any

from ledgergate.shared import metrics


class HoldCounter:
    def __init__(self) -> None:
        self.uncounted: dict[int, set[str]] = {}  # partition -> restored tenants whose holds are not counted yet

    def assigned(self, partitions: list[int]) -> None:
        """These partitions are being rebuilt from scratch: they count from zero."""
        metrics.holds_forget(partitions)
        for p in partitions:
            self.uncounted[p] = set()

    def restored(self, partition: int, tenant_id: str) -> None:
        """A restored tenant that may hold reservations the gauges do not have yet."""
        if metrics.active() is not None:
            self.uncounted.setdefault(partition, set()).add(tenant_id)

    def touched(self, partition: int, state: Any) -> None:
        """The tenant's state is in use (unpacked): count its holds if they are not counted yet."""
        waiting = self.uncounted.get(partition)
        if waiting and state.tenant_id in waiting:
            waiting.discard(state.tenant_id)
            holds = state.holds.values()
            metrics.holds_changed(partition, len(holds), sum(h.amount_micro_usd for h in holds))

    def changed(self, partition: int, before: Any, after: Any) -> None:
        """A hold before and after an entry (None: none); `before is after` when the entry left it alone."""
        if before is after:
            return
        count = (after is not None) - (before is not None)
        amount = (after.amount_micro_usd if after is not None else 0) - (
            before.amount_micro_usd if before is not None else 0)
        metrics.holds_changed(partition, count, amount)

    def revoked(self, partitions: list[int]) -> None:
        metrics.holds_forget(partitions)
        for p in partitions:
            self.uncounted.pop(p, None)
