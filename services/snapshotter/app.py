"""snapshotter: budget.ledger -> budget.snapshots, so a restarted service folds only the ledger's tail.

It folds the ledger with the same `evolve` as the budget-manager and the policy service, and every
`snapshot_every_entries` entries or `snapshot_every_ms` writes each tenant that changed since the last
time (a TenantSnapshot covering the partition's position), then the partition's SnapshotMarker. Off the
hot path by construction: a process of its own that only reads the committed ledger, so a snapshot is
a function of committed entries and never pauses a decision. At least once: a crash repeats records
with the same content; a restart restores from its own snapshots (shared/snapshots.py) and resumes
where its fold ended, whatever offsets Kafka holds for its group.
"""

from __future__ import annotations

import time

from confluent_kafka import Message

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.shared.kafka.outbox import Outbox
from ledgergate.shared.kafka.reader import offset_of, partition_of
from ledgergate.shared.kafka.runtime import run_service
from ledgergate.shared.ledger.entries import LedgerEntry, from_record
from ledgergate.shared.ledger.packing import TenantStore
from ledgergate.shared.ledger.state import TenantState, evolve
from ledgergate.shared.logging import configure
from ledgergate.shared.settings import SnapshotterSettings
from ledgergate.shared.snapshots import TooLarge, restore, snapshot_records


class Snapshotter:
    def __init__(self, settings: SnapshotterSettings) -> None:
        self.settings = settings
        self.log = configure("snapshotter")
        self.topic_ledger = settings.topic(topics.LEDGER)
        self.topic_snapshots = settings.topic(topics.SNAPSHOTS)
        self.writer = f"snapshotter@{settings.instance_id}"
        self.stores: dict[int, TenantStore] = {}
        self.dirty: dict[int, set[str]] = {}
        self.position: dict[int, int] = {}  # the next ledger offset of each partition not yet folded
        self.since: dict[int, int] = {}  # entries folded since the partition's last snapshot
        self.written_ms: dict[int, int] = {}
        self.sequence: dict[int, int] = {}

    def assigned(self, partitions: list[int]) -> dict[tuple[str, int], int]:
        restored = restore(self.settings.kafka_connection, self.topic_snapshots, self.topic_ledger, partitions,
                           self.settings.hot_tenants_max, self.log, on_entry=self._touched,
                           snapshots=self.settings.restore_from_snapshots)
        now_ms = time.time_ns() // 1_000_000
        for p in partitions:
            self.stores[p] = restored.stores[p]
            self.position[p] = restored.ends[p]
            self.sequence[p] = restored.restores[p].marker_sequence + 1
            self.written_ms[p] = now_ms
            self.since.setdefault(p, 0)
            self.dirty.setdefault(p, set())
        return {(self.topic_ledger, p): restored.ends[p] for p in partitions}

    def _touched(self, partition: int, offset: int, entry: LedgerEntry) -> None:
        self.dirty.setdefault(partition, set()).add(entry.tenant_id)
        self.since[partition] = self.since.get(partition, 0) + 1

    def revoked(self, partitions: list[int]) -> None:
        for p in partitions:
            for table in (self.stores, self.dirty, self.position, self.since, self.written_ms, self.sequence):
                table.pop(p, None)

    def handle(self, msg: Message, out: Outbox) -> None:
        p, offset = partition_of(msg), offset_of(msg)
        assert offset >= self.position[p], (p, offset, self.position[p])  # never folds an entry twice
        name, rec = codec().decode(msg.value())
        entry = from_record(name, rec)
        evolve(self.stores[p].get_or_create(entry.tenant_id), entry)
        self.position[p] = offset + 1
        self._touched(p, offset, entry)
        if self.since[p] >= self.settings.snapshot_every_entries:
            self._write(p, out)

    def idle(self, now_ms: int, out: Outbox) -> None:
        for p in list(self.dirty):
            if self.dirty[p] and now_ms - self.written_ms.get(p, 0) >= self.settings.snapshot_every_ms:
                self._write(p, out)

    def _write(self, p: int, out: Outbox) -> None:
        """Every tenant changed since the last snapshot, covering the partition's position, then the marker."""
        store, position, now_ms = self.stores[p], self.position[p], time.time_ns() // 1_000_000
        changed = sorted(self.dirty[p])
        states: list[tuple[TenantState, int]] = []
        for tenant_id in changed:
            state = store.peek(tenant_id)
            assert state is not None, tenant_id
            states.append((state, position))
        try:
            for key, value, headers, partition in snapshot_records(p, iter(states), position, self.sequence[p],
                                                                   len(store), self.writer, now_ms):
                out.emit(self.topic_snapshots, key, value, headers, partition)
        except TooLarge as exc:
            # The others are written; the marker stays where it was, so restores fold a longer tail (and
            # stay right). Said each time: an idempotency window this large wants a shorter period.
            self.log.warning("snapshot_tenant_too_large", partition=p, tenant_id=exc.tenant_id, bytes=exc.size)
            self.dirty[p] = {exc.tenant_id}
            self.since[p] = 0
            self.written_ms[p] = now_ms
            return
        self.log.info("snapshot_written", partition=p, ledger_offset=position, tenants_written=len(changed),
                      tenants=len(store), sequence=self.sequence[p])
        self.sequence[p] += 1
        self.dirty[p] = set()
        self.since[p] = 0
        self.written_ms[p] = now_ms


def run(settings: SnapshotterSettings | None = None) -> None:
    s = settings or SnapshotterSettings()
    snapshotter = Snapshotter(s)
    run_service("snapshotter", s, snapshotter, [snapshotter.topic_ledger], snapshotter.log,
                delivery="produce-then-commit", idle_interval_ms=min(1_000, s.snapshot_every_ms))
