"""Snapshot + tail == fold from 0: the rule that restores one partition's tenants. Pure, no I/O.

A partition's snapshot is what budget.snapshots holds for it, read in offset order: TenantSnapshot
records (each covering its tenant's ledger entries below its `covered_offset`) and SnapshotMarkers (each
promising that every tenant with an entry below its `ledger_offset` has a record covering it, written
before the marker). A restore therefore:
1. keeps each tenant's latest usable record (a corrupt one falls back to that tenant's previous record
   if compaction left one, else to nothing: the tenant is folded from offset 0);
2. starts the ledger fold at the latest marker's offset, or lower: at the covered offset of any tenant
   that fell back, 0 without a marker;
3. skips, per tenant, the entries its record already covers (a record written after the marker covers
   more than the marker says).
Property-tested against the fold from 0 on random histories (tests/unit/test_snapshots.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ledgergate.shared.ledger.packing import SnapshotError, checksum, peek


@dataclass(frozen=True, slots=True)
class Usable:
    data: bytes
    covered_offset: int
    next_expiry_ms: int


@dataclass(slots=True)
class PartitionRestore:
    partition: int
    tenants: dict[str, Usable] = field(default_factory=dict)
    marker_offset: int = 0
    marker_sequence: int = -1
    problems: list[str] = field(default_factory=list)
    _fell_back: dict[str, int] = field(default_factory=dict)

    def record(self, tenant_id: str, data: bytes, crc: bytes | None, at: int) -> None:
        """One TenantSnapshot as read (at snapshot-topic offset `at`), with its checksum header."""
        try:
            if crc != checksum(data):
                raise SnapshotError("checksum mismatch" if crc is not None else "no checksum header")
            covered, expiry = peek(data)
            if covered < 0:
                raise SnapshotError(f"covered_offset {covered}")
        except SnapshotError as exc:
            previous = self.tenants.pop(tenant_id, None)
            fallback = previous.covered_offset if previous is not None else 0
            self._fell_back[tenant_id] = fallback
            self.problems.append(f"tenant {tenant_id} at snapshot offset {at}: {exc.message}; falls back to "
                                 + (f"its previous record (covers {fallback})" if previous else "ledger offset 0"))
            if previous is not None:
                self.tenants[tenant_id] = previous
            return
        self._fell_back.pop(tenant_id, None)  # a newer good record supersedes an earlier bad one
        self.tenants[tenant_id] = Usable(data, covered, expiry)

    def marker(self, ledger_offset: int, sequence: int) -> None:
        assert ledger_offset >= 0, ledger_offset
        self.marker_offset, self.marker_sequence = ledger_offset, sequence

    def bad_marker(self, at: int, why: str) -> None:
        self.problems.append(f"marker at snapshot offset {at}: {why}; the previous marker stands")

    def start_offset(self) -> int:
        """Where the ledger fold starts: the marker's offset (0 without one), or lower, at the covered
        offset of a tenant that fell back."""
        start = self.marker_offset if self.marker_sequence >= 0 else 0
        return min([start, *self._fell_back.values()])

    def covers(self, tenant_id: str, ledger_offset: int) -> bool:
        """True when the tenant's restored record already holds this entry (the fold skips it)."""
        usable = self.tenants.get(tenant_id)
        return usable is not None and ledger_offset < usable.covered_offset
