"""Snapshot + tail == fold from 0 (invariant 10), for random histories, random snapshot points and
corrupt records; and the packed form of a tenant round-trips exactly."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledgergate.shared.ledger.entries import LedgerEntry
from ledgergate.shared.ledger.packing import SnapshotError, TenantStore, checksum, pack, peek, unpack
from ledgergate.shared.ledger.restore import PartitionRestore
from ledgergate.shared.ledger.state import TenantState, evolve
from tests.unit.test_ledger_properties import _run, operations


def _ledger(draw: st.DrawFn) -> list[LedgerEntry]:
    """One partition's ledger: every tenant's log of a random run, interleaved at random (order kept per tenant)."""
    logs = [list(t.log) for t in _run(draw(operations())).values()]
    ledger: list[LedgerEntry] = []
    while any(logs):
        log = draw(st.sampled_from([g for g in logs if g]))
        ledger.append(log.pop(0))
    return ledger


def _fold(entries: list[LedgerEntry]) -> dict[str, TenantState]:
    states: dict[str, TenantState] = {}
    for e in entries:
        evolve(states.setdefault(e.tenant_id, TenantState(e.tenant_id)), e)
    return states


History = tuple[list[LedgerEntry], list[int], list[int], int]


@st.composite
def histories(draw: st.DrawFn) -> History:
    ledger = _ledger(draw)
    cuts = sorted(draw(st.lists(st.integers(0, len(ledger)), max_size=4)))
    corrupt = draw(st.lists(st.integers(0, 200), max_size=2))
    return ledger, cuts, corrupt, draw(st.integers(0, len(ledger)))


def _write(ledger: list[LedgerEntry], cuts: list[int], marked: int) -> list[tuple[str, bytes, bytes | None]]:
    """What the snapshotter writes: at each cut, the tenants changed since the previous cut (covering the
    cut), then a marker; records after `marked` cuts go without their marker (a crash before it)."""
    snapshot: list[tuple[str, bytes, bytes | None]] = []
    states: dict[str, TenantState] = {}
    dirty: set[str] = set()
    position = 0
    for n, cut in enumerate(cuts):
        for e in ledger[position:cut]:
            evolve(states.setdefault(e.tenant_id, TenantState(e.tenant_id)), e)
            dirty.add(e.tenant_id)
        position = cut
        for tenant_id in sorted(dirty):
            data = pack(states[tenant_id], cut)
            snapshot.append((tenant_id, data, checksum(data)))
        dirty = set()
        if n < marked:
            snapshot.append(("#marker", cut.to_bytes(8, "big"), None))
    return snapshot


def _restore(ledger: list[LedgerEntry], snapshot: list[tuple[str, bytes, bytes | None]]) -> dict[str, TenantState]:
    r = PartitionRestore(0)
    for at, (key, data, crc) in enumerate(snapshot):
        if key == "#marker":
            r.marker(int.from_bytes(data, "big"), at)
        else:
            r.record(key, data, crc, at)
    store = TenantStore(hot_max=2)  # small: tenants are packed and unpacked on the way, as at scale
    for tenant_id, usable in r.tenants.items():
        store.put_packed(tenant_id, usable.data)
    start = r.start_offset()
    for offset in range(start, len(ledger)):
        e = ledger[offset]
        if not r.covers(e.tenant_id, offset):
            if offset % 3:  # deferred, as a restore's tail is, or folded into an unpacked state at once
                store.defer(e.tenant_id, e)
            else:
                evolve(store.get_or_create(e.tenant_id), e)
    return {s.tenant_id: s for s in store.states()}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_snapshot_plus_tail_equals_the_fold_from_zero(history: History) -> None:
    ledger, cuts, corrupt, marked = history
    snapshot = _write(ledger, cuts, marked)
    records = [i for i, (key, _, _) in enumerate(snapshot) if key != "#marker"]
    for n in corrupt:  # a flipped byte (the checksum catches it) or a record without its checksum
        if records:
            i = records[n % len(records)]
            key, data, crc = snapshot[i]
            snapshot[i] = (key, data[:-1] + bytes([data[-1] ^ 0xFF]), crc) if n % 2 else (key, data, None)
    assert _restore(ledger, snapshot) == _fold(ledger)


def test_a_corrupt_latest_record_falls_back_to_the_previous_one_and_says_so() -> None:
    a1, a2 = TenantState("a", entries=1), TenantState("a", entries=2)
    r = PartitionRestore(3)
    good = pack(a1, 5)
    r.record("a", good, checksum(good), 0)
    bad = pack(a2, 9)
    r.record("a", bad, b"\x00\x00\x00\x00", 1)
    r.marker(9, 0)
    assert r.start_offset() == 5 and r.covers("a", 4) and not r.covers("a", 5)
    assert "checksum mismatch" in r.problems[0] and "previous record (covers 5)" in r.problems[0]
    r2 = PartitionRestore(3)
    r2.record("b", bad, None, 0)
    r2.marker(9, 0)
    assert r2.start_offset() == 0 and "ledger offset 0" in r2.problems[0] and "b" not in r2.tenants


def test_without_a_marker_the_fold_starts_at_zero_and_records_still_skip() -> None:
    r = PartitionRestore(0)
    data = pack(TenantState("a"), 7)
    r.record("a", data, checksum(data), 0)
    assert r.start_offset() == 0 and r.covers("a", 6) and not r.covers("b", 0)


def test_peek_reads_the_covered_offset_and_next_expiry_without_decoding() -> None:
    assert peek(pack(TenantState("tenant-1"), 123_456_789)) == (123_456_789, 0)
    try:
        peek(b"\xc3\x01" + b"\x00" * 8 + b"\x02")
    except SnapshotError:
        pass
    else:
        raise AssertionError("a foreign fingerprint must not peek")


def test_the_store_packs_what_it_evicts_and_gives_it_back_equal() -> None:
    store = TenantStore(hot_max=2)
    for tenant_id in ("a", "b", "c"):
        store.get_or_create(tenant_id).entries = len(tenant_id) + 10
    assert set(store.cold) == {"a"} and len(store) == 3 and "a" in store
    assert store.peek("a") == TenantState("a", entries=11) and "a" in store.cold  # peeking promotes nothing
    assert store.get("a") == TenantState("a", entries=11) and set(store.cold) == {"b"}
    assert unpack(pack(store.get("c") or TenantState("x"), 4)) == (TenantState("c", entries=11), 4)


def test_deferred_entries_are_bounded_per_tenant_and_a_new_tenant_is_folded_at_once() -> None:
    from ledgergate.shared.ledger.entries import ThresholdCrossed
    from ledgergate.shared.ledger.packing import PENDING_PER_TENANT_MAX

    def crossed(tenant_id: str, pct: int) -> ThresholdCrossed:
        return ThresholdCrossed(f"t/{tenant_id}/{pct}", tenant_id, "2026-12", 1, "TENANT", tenant_id, pct, 1, 2)

    store = TenantStore(hot_max=1)
    store.get_or_create("a")
    store.get_or_create("b")  # "a" is packed now
    for pct in range(PENDING_PER_TENANT_MAX - 1):
        store.defer("a", crossed("a", pct))
    assert "a" in store.cold and store.pending_count == PENDING_PER_TENANT_MAX - 1
    assert len((store.peek("a") or TenantState("x")).thresholds) == PENDING_PER_TENANT_MAX - 1
    store.defer("a", crossed("a", 99))  # the bound: unpacked and folded at once
    assert "a" in store.hot and store.pending_count == 0 and not store.pending
    assert len((store.get("a") or TenantState("x")).thresholds) == PENDING_PER_TENANT_MAX
    store.defer("c", crossed("c", 1))  # no packed state: nothing to unpack, folded now, nothing waits
    assert "c" in store.hot and store.pending_count == 0 and len(store) == 3
