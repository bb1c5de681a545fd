"""Snapshots on the real broker: the snapshotter writes budget.snapshots while the gate takes traffic; a
restarted budget-manager (and policy) restores from them and folds only the tail, its balances equal to
the fold from 0; `ledgergate state verify` agrees; a corrupt record is survived, said, and reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from ledgergate import topics
from ledgergate.kafka_config import producer_config
from ledgergate.partitioning import murmur2_partition
from ledgergate.shared.ledger.packing import CHECKSUM_HEADER
from ledgergate.shared.settings import PROJECT_ROOT
from tests.conftest import TEST_PARTITIONS
from tests.e2e.conftest import Gate
from tests.e2e.fleet import MESSAGES, wait_for

TENANTS = [f"snap-{i}" for i in range(8)]


def _events(log: Path, event: str) -> list[dict[str, Any]]:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return [json.loads(line) for line in lines if f'"{event}"' in line]


def _traffic(gate: Gate, rounds: int) -> None:
    futures = [gate.client.submit(t, MESSAGES, "gpt-4o-mini", 50, timeout_s=60) for _ in range(rounds) for t in TENANTS]
    for fut in futures:
        d = fut.result(timeout=90)
        assert d["outcome"] in ("ALLOW", "DOWNGRADE"), d
        gate.client.complete(d["tenant_id"], d["request_id"], d["deployment"]["model"], {
            "input_tokens": 12, "cached_input_tokens": 0, "output_tokens": 30, "reasoning_tokens": 0})
    gate.client.flush()


def _verify(gate: Gate) -> tuple[int, dict[str, Any]]:
    env = {"LEDGERGATE_KAFKA_BOOTSTRAP": gate.kafka.kafka_bootstrap, "LEDGERGATE_TOPIC_PREFIX": gate.kafka.topic_prefix}
    out = subprocess.run([sys.executable, "-m", "ledgergate.tools.cli", "state", "verify"], cwd=PROJECT_ROOT,
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    return out.returncode, json.loads(out.stdout)


def _snapshot_written_past(gate: Gate, offsets: dict[int, int]) -> bool:
    written: dict[int, int] = {}
    for e in _events(gate.services.log_path("snapshotter"), "snapshot_written"):
        written[e["partition"]] = max(written.get(e["partition"], 0), e["ledger_offset"])
    return all(written.get(p, 0) >= end for p, end in offsets.items())


def _ledger_ends(gate: Gate) -> dict[int, int]:
    ends: dict[int, int] = {}
    for p, *_ in gate.ledger():
        ends[p] = ends.get(p, 0) + 1
    return ends


def test_a_restarted_budget_manager_restores_from_the_snapshot_and_folds_only_the_tail(gate: Gate) -> None:
    for tenant in TENANTS:
        gate.client.send_command(tenant, "SET_LIMIT", 50_000_000)
    gate.services.env_for["snapshotter"] = {"LEDGERGATE_SNAPSHOT_EVERY_MS": "300"}
    gate.services.start(["snapshotter"])
    _traffic(gate, rounds=6)
    gate.wait_fold_matches_service()
    # Every partition with entries has a marker at (about) its end: commit markers sit between entries, so
    # the snapshotter's position trails a partition's end offset by up to one per transaction.
    wait_for("snapshots of every busy partition", lambda: _snapshot_written_past(
        gate, {p: n // 2 for p, n in _ledger_ends(gate).items()}), timeout_s=60)
    code, report = _verify(gate)
    assert code == 0 and report["ok"], report
    assert sum(p["snapshot_records_checked"] for p in report["partitions"]) >= len(TENANTS)

    # A restart restores: the marker used, a tail shorter than the ledger, the same balances as the fold.
    gate.services.restart("budget-manager")
    gate.services.restart("policy")
    _traffic(gate, rounds=2)
    gate.wait_fold_matches_service()
    restored = _events(gate.services.log_path("budget-manager"), "state_restored")[-1]
    busy = [p for p, seq in restored["markers"].items() if seq >= 0]
    assert busy, restored
    assert restored["tail_entries"] < len(gate.ledger()) / 2, restored
    assert _events(gate.services.log_path("policy"), "state_restored")[-1]["snapshot_tenants"] >= 1

    # A corrupt record (no valid checksum) for a tenant: the restore falls back for it and says so, the
    # balances are still the fold's, and `state verify` reports it (exit 1).
    tenant = TENANTS[0]
    partition = murmur2_partition(tenant.encode(), TEST_PARTITIONS)
    producer = Producer(producer_config(gate.kafka.kafka_bootstrap))
    producer.produce(gate.kafka.topic(topics.SNAPSHOTS), key=tenant.encode(), value=b"\xc3\x01garbage-garbage",
                     headers=[(CHECKSUM_HEADER, b"\x00\x00\x00\x00")], partition=partition)
    assert producer.flush(10) == 0
    gate.services.stop("snapshotter")  # or it would write the tenant again on its next change
    gate.services.restart("budget-manager")
    _traffic(gate, rounds=1)
    gate.wait_fold_matches_service()
    fallback = _events(gate.services.log_path("budget-manager"), "snapshot_fallback")
    assert fallback and fallback[-1]["partition"] == partition, fallback
    assert tenant in fallback[-1]["problems"][0] and "checksum mismatch" in fallback[-1]["problems"][0]
    code, report = _verify(gate)
    assert code == 1 and not report["ok"]
    bad = next(p for p in report["partitions"] if p["partition"] == partition)
    assert any(tenant in problem for problem in bad["problems"]), bad
