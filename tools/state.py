"""`ledgergate state verify`: fold budget.ledger from offset 0 and compare it with the latest snapshots.

For every partition: each tenant's latest usable TenantSnapshot must equal, byte for byte (the packing is
canonical), the fold of that tenant's entries below the record's covered offset; the marker must not
claim offsets the ledger does not have. Prints one JSON report; exits 1 on any mismatch or fallback.
"""

from __future__ import annotations

import json
import time
from typing import Any

from confluent_kafka.admin import AdminClient

from ledgergate.codec import codec
from ledgergate.errors import TopicConfigError
from ledgergate.kafka_config import admin_config
from ledgergate.shared.kafka.reader import end_offsets, offset_of, read_to_end
from ledgergate.shared.ledger.entries import from_record
from ledgergate.shared.ledger.packing import pack
from ledgergate.shared.ledger.state import TenantState, evolve
from ledgergate.shared.settings import KafkaSettings
from ledgergate.shared.snapshots import read_snapshots
from ledgergate.topics import LEDGER, SNAPSHOTS

MISMATCHES_SHOWN_MAX = 20


def _partitions(bootstrap: str, topic: str) -> list[int]:
    meta = AdminClient(admin_config(bootstrap)).list_topics(topic, timeout=10).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise TopicConfigError(f"topic {topic} does not exist; run `ledgergate topics apply`")
    return sorted(meta.partitions)


def verify_partition(bootstrap: str, ledger: str, snapshots: str, p: int) -> dict[str, Any]:
    started = time.monotonic()
    r = read_snapshots(bootstrap, snapshots, [p])[p]
    end = end_offsets(bootstrap, ledger, [p])[p]
    due = sorted((u.covered_offset, tenant_id) for tenant_id, u in r.tenants.items())
    states: dict[str, TenantState] = {}
    mismatched: list[str] = []
    checked = entries = i = 0

    def check(tenant_id: str, covered: int) -> None:
        nonlocal checked
        checked += 1
        state = states.get(tenant_id, TenantState(tenant_id))
        if pack(state, covered) != r.tenants[tenant_id].data:
            mismatched.append(tenant_id)

    for msg in read_to_end(bootstrap, ledger, [p], end={p: end}):
        offset = offset_of(msg)
        while i < len(due) and due[i][0] <= offset:  # the state below the record's covered offset
            check(due[i][1], due[i][0])
            i += 1
        name, rec = codec().decode(msg.value())
        entry = from_record(name, rec)
        evolve(states.setdefault(entry.tenant_id, TenantState(entry.tenant_id)), entry)
        entries += 1
    beyond = [tenant_id for covered, tenant_id in due[i:] if covered > end]
    for covered, tenant_id in due[i:]:
        if covered <= end:
            check(tenant_id, covered)
    problems = list(r.problems)
    if beyond:
        problems.append(f"{len(beyond)} records cover offsets past the ledger's end {end}: {beyond[:5]}")
    if r.marker_sequence >= 0 and r.marker_offset > end:
        problems.append(f"the marker covers {r.marker_offset}, past the ledger's end {end}")
    return {"partition": p, "ok": not mismatched and not problems, "ledger_entries": entries, "ledger_end": end,
            "marker_sequence": r.marker_sequence, "marker_offset": r.marker_offset if r.marker_sequence >= 0 else None,
            "tail_entries": end - (r.marker_offset if r.marker_sequence >= 0 else 0),
            "tenants_in_ledger": len(states), "snapshot_records_checked": checked,
            "mismatched": mismatched[:MISMATCHES_SHOWN_MAX], "mismatched_count": len(mismatched),
            "problems": problems[:MISMATCHES_SHOWN_MAX], "seconds": round(time.monotonic() - started, 2)}


def verify(settings: KafkaSettings, partitions: list[int] | None = None) -> dict[str, Any]:
    ledger, snapshots = settings.topic(LEDGER), settings.topic(SNAPSHOTS)
    chosen = partitions if partitions else _partitions(settings.kafka_bootstrap, ledger)
    reports = [verify_partition(settings.kafka_bootstrap, ledger, snapshots, p) for p in chosen]
    return {"ok": all(r["ok"] for r in reports), "partitions": reports}


def run_verify(partitions: list[int] | None) -> int:
    report = verify(KafkaSettings(), partitions)
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1
