"""Restore a partition's tenants from budget.snapshots and the ledger's tail; write snapshots.

The budget-manager and the policy service fold the same ledger into the same TenantState, so both
restore from one snapshot topic, written by the snapshotter (services/snapshotter/), off the hot path.
The rule that makes snapshot + tail equal the fold from 0 is shared/ledger/restore.py; this module
reads Kafka for it. Without a usable snapshot a partition is folded from offset 0, and the log says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message

from ledgergate.codec import codec
from ledgergate.connection import KafkaConnection
from ledgergate.errors import CodecError
from ledgergate.shared import metrics
from ledgergate.shared.kafka.headers import Headers, headers_of
from ledgergate.shared.kafka.reader import end_offsets, offset_of, partition_of, read_to_end
from ledgergate.shared.ledger.entries import LedgerEntry, from_record
from ledgergate.shared.ledger.packing import CHECKSUM_HEADER, MARKER, MARKER_KEY, TenantStore, checksum, pack
from ledgergate.shared.ledger.restore import PartitionRestore
from ledgergate.shared.ledger.state import TenantState


def _crc(msg: Message) -> bytes | None:
    for key, value in headers_of(msg):
        if key == CHECKSUM_HEADER:
            return value if isinstance(value, bytes) else None
    return None


def read_snapshots(connection: KafkaConnection, topic: str, partitions: list[int]) -> dict[int, PartitionRestore]:
    restores = {p: PartitionRestore(p) for p in partitions}
    for msg in read_to_end(connection, topic, partitions):
        r, at, value = restores[partition_of(msg)], offset_of(msg), msg.value()
        if value is None:
            continue  # a tombstone: nothing to restore (none are written today)
        if msg.key() == MARKER_KEY:
            try:
                if _crc(msg) != checksum(value):
                    raise CodecError("checksum mismatch")
                name, rec = codec().decode(value)
                if name != MARKER or rec["partition"] != r.partition:
                    raise CodecError(f"a {name} of partition {rec.get('partition')} under the marker key")
            except CodecError as exc:
                r.bad_marker(at, exc.message)
                continue
            r.marker(rec["ledger_offset"], rec["sequence"])
        else:
            r.record((msg.key() or b"").decode("utf-8", "replace"), value, _crc(msg), at)
    return restores


@dataclass(frozen=True, slots=True)
class Restored:
    stores: dict[int, TenantStore]
    ends: dict[int, int]  # the ledger offsets the fold reached: where each partition's reading continues
    restores: dict[int, PartitionRestore]


def restore(connection: KafkaConnection, snapshot_topic: str, ledger_topic: str, partitions: list[int],
            hot_max: int, log: Any, on_entry: Callable[[int, int, LedgerEntry], None] | None = None,
            snapshots: bool = True) -> Restored:
    """Each partition's tenants from its snapshot and the ledger from the snapshot's offset to the end
    (from 0 with `snapshots` False). Records stay packed and tail entries wait in the store until their
    tenant is first used (TenantStore.defer); `on_entry(partition, offset, entry)` sees each tail entry
    (the budget-manager schedules expiry)."""
    started = time.monotonic()
    restores = (read_snapshots(connection, snapshot_topic, partitions) if snapshots
                else {p: PartitionRestore(p) for p in partitions})
    read_s = time.monotonic() - started
    stores = {p: TenantStore(hot_max) for p in partitions}
    for p, r in restores.items():
        for tenant_id, usable in r.tenants.items():
            stores[p].put_packed(tenant_id, usable.data)
    ends = end_offsets(connection, ledger_topic, partitions)
    starts = {p: restores[p].start_offset() for p in partitions}
    folded = skipped = 0
    decode = codec().decode
    for msg in read_to_end(connection, ledger_topic, partitions, start=starts, end=ends):
        p, offset = partition_of(msg), offset_of(msg)
        # Entries are keyed by their tenant id: a covered one is skipped without being decoded.
        key = (msg.key() or b"").decode("utf-8", "replace")
        if restores[p].covers(key, offset):
            skipped += 1
            continue
        name, rec = decode(msg.value())
        assert rec["tenant_id"] == key, f"ledger entry at {p}:{offset} of {rec['tenant_id']} keyed {key!r}"
        entry = from_record(name, rec)
        stores[p].defer(entry.tenant_id, entry)
        folded += 1
        if on_entry is not None:
            on_entry(p, offset, entry)
    for p, r in restores.items():
        if r.problems:
            log.warning("snapshot_fallback", partition=p, problems=r.problems[:20], problem_count=len(r.problems))
    log.info("state_restored", partitions=partitions,
             markers={p: restores[p].marker_sequence for p in partitions}, from_offsets=starts, to_offsets=ends,
             snapshot_tenants=sum(len(r.tenants) for r in restores.values()), tail_entries=folded,
             tail_skipped=skipped, snapshot_read_s=round(read_s, 3), seconds=round(time.monotonic() - started, 3))
    metrics.observe_rebuild(time.monotonic() - started, folded)
    return Restored(stores, ends, restores)


# A record bigger than this is refused by the broker (budget.snapshots' max.message.bytes, the producers'
# message.max.bytes): such a tenant is left out and the partition's marker is not moved past it.
SNAPSHOT_MAX_BYTES = 4 * 1024 * 1024 - 4096


class TooLarge(Exception):
    def __init__(self, tenant_id: str, size: int) -> None:
        super().__init__(f"tenant {tenant_id}'s state packs to {size} bytes, over {SNAPSHOT_MAX_BYTES}")
        self.tenant_id, self.size = tenant_id, size


def snapshot_records(partition: int, states: Iterator[tuple[TenantState, int]], ledger_offset: int,
                     sequence: int, tenants: int, writer: str, now_ms: int) -> Iterator[tuple[bytes, bytes, Headers,
                                                                                      int]]:
    """(key, value, headers, partition) of each dirty tenant's record, then the marker: produced in this
    order to one partition, the marker is never read before the records it vouches for. Raises TooLarge
    before the marker when a tenant does not fit: a marker must not vouch for a tenant left out."""
    too_large: TooLarge | None = None
    for state, covered in states:
        value = pack(state, covered)
        if len(value) > SNAPSHOT_MAX_BYTES:
            too_large = too_large or TooLarge(state.tenant_id, len(value))
            continue
        yield state.tenant_id.encode(), value, [(CHECKSUM_HEADER, checksum(value))], partition
    if too_large is not None:
        raise too_large
    marker = codec().encode(MARKER, {"partition": partition, "ledger_offset": ledger_offset, "tenants": tenants,
                                     "sequence": sequence, "written_at_ms": now_ms, "writer": writer})
    yield MARKER_KEY, marker, [(CHECKSUM_HEADER, checksum(marker))], partition
