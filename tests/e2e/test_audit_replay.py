"""`ledgergate audit replay` on real traffic through the four services: a clean replay verifies every
chain and reconciles with the ledger fold and PostgreSQL; tampered copies of audit.log (one record
removed, one summary edited) are caught at the partition and offset of the first problem."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.kafka_config import admin_config, producer_config
from ledgergate.partitioning import murmur2_partition
from ledgergate.shared import db
from ledgergate.shared.settings import PostgresSettings
from ledgergate.tools.cli import main
from ledgergate.tools.replay import AuditReplay, ReplayOptions
from ledgergate.tools.reports import render_replay
from tests.e2e.conftest import Gate
from tests.e2e.traffic import audit_records, drive, settlements
from tests.fresh_db import fresh_database, insert_usage


def _replay(gate: Gate, topic: str | None = None, **kw: Any) -> tuple[dict[str, Any], list[str]]:
    lines: list[str] = []
    report = AuditReplay(ReplayOptions(gate.kafka.kafka_connection, topic or gate.kafka.topic(topics.AUDIT),
                                       gate.kafka.topic(topics.LEDGER), progress=lines.append, **kw)).run()
    return report, lines


def _sum_by_key(rows: list[dict[str, Any]], tenant: str | None = None, from_ms: int = 0) -> dict[tuple, list[int]]:
    from ledgergate.shared.units import utc_day

    out: dict[tuple, list[int]] = {}
    for s in rows:
        if (tenant is None or s["tenant_id"] == tenant) and s["recorded_at_ms"] >= from_ms:
            slot = out.setdefault((s["tenant_id"], s["model"], utc_day(s["recorded_at_ms"])), [0, 0])
            slot[0] += 1
            slot[1] += s["actual_micro_usd"]
    return out


def _spend(report: dict[str, Any]) -> dict[tuple, list[int]]:
    return {(s["tenant_id"], s["model"], s["day"]): [s["settlements"], s["actual_micro_usd"]] for s in report["spend"]}


@pytest.fixture
def cli_env(gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGERGATE_KAFKA_BOOTSTRAP", gate.kafka.kafka_bootstrap)
    monkeypatch.setenv("LEDGERGATE_TOPIC_PREFIX", gate.kafka.topic_prefix)


def test_clean_replay_verifies_and_reconciles(gate: Gate, cli_env: None, postgres: PostgresSettings,
                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    drive(gate)
    ledger = settlements(gate)
    assert ledger and any(s["usage_estimated"] for s in ledger)

    report, progress = _replay(gate, progress_every=20)
    assert report["ok"], render_replay(report)
    assert all(p["anchor"] == "genesis" and p["problem"] is None for p in report["partitions"] if p["records"])
    assert report["coverage_problems"] == 0 and report["unaudited_ledger_tail"] == {}
    assert _spend(report) == _sum_by_key(ledger)
    assert progress and all(line.startswith("replay: ") for line in progress)

    # From a time: seek by timestamp, trust the first record read, rebuild only later spend.
    middle = sorted(s["recorded_at_ms"] for s in ledger)[len(ledger) // 2]
    report, _ = _replay(gate, from_ms=middle, seek_margin_ms=0)
    assert report["ok"], render_replay(report)
    assert _spend(report) == _sum_by_key(ledger, from_ms=middle)
    assert any("mid-chain" in p["anchor"] for p in report["partitions"]), "some partition starts mid-chain"

    # One tenant: only its partition, only its spend.
    report, _ = _replay(gate, tenant="gov-b")
    assert report["ok"] and [p["partition"] for p in report["partitions"]] == [murmur2_partition(b"gov-b", 6)]
    assert _spend(report) == _sum_by_key(ledger, tenant="gov-b")

    with fresh_database(postgres.pg_dsn) as dsn:
        # No usage table yet: reconciled against the ledger only, and the report says why.
        report, _ = _replay(gate, pg_dsn=dsn)
        assert report["ok"] and "no usage table" in report["reconciliation"]["postgres"]["reason"]
        db.migrate(dsn)
        insert_usage(dsn, ledger)
        out = tmp_path / "replay.json"
        assert main(["audit", "replay", "--json", str(out), "--pg-dsn", dsn]) == 0
        written = json.loads(out.read_text())
        assert written["ok"] and written["reconciliation"]["postgres"]["checked"]
        assert "result: OK" in capsys.readouterr().out
        with psycopg.connect(dsn) as conn:  # the read model drifts from the log: the replay says where
            conn.execute("UPDATE usage SET actual_micro_usd = actual_micro_usd + 7 WHERE request_id = %s",
                         (ledger[0]["request_id"],))
        assert main(["audit", "replay", "--json", str(out), "--pg-dsn", dsn]) == 1
        diff = json.loads(out.read_text())["reconciliation"]["postgres"]["differences"]
        assert len(diff) == 1 and diff[0]["postgres_micro_usd"] - diff[0]["audit_micro_usd"] == 7
        assert diff[0]["tenant_id"] == ledger[0]["tenant_id"] and diff[0]["model"] == ledger[0]["model"]
        assert "TOTALS DIFFER" in capsys.readouterr().out


@contextlib.contextmanager
def _tampered_copy(gate: Gate, name: str, partition: int, index: int,
                   change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> Iterator[str]:
    """audit.log copied into a new topic with the same partition count, every record on its original
    partition in its original order; `change` rewrites (or, returning None, drops) the index-th record of
    `partition`. The copy is written without transactions, so its offsets are the records' indexes."""
    topic = f"{gate.kafka.topic_prefix}{name}"
    admin = AdminClient(admin_config(gate.kafka.kafka_connection))
    admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)])[topic].result()
    producer = Producer(producer_config(gate.kafka.kafka_connection))
    seen: dict[int, int] = {}
    for p, _, rec in audit_records(gate):
        i = seen[p] = seen.get(p, -1) + 1
        if (p, i) == (partition, index):
            rec = change(dict(rec))
            if rec is None:
                continue
        producer.produce(topic, key=rec["tenant_id"].encode(), value=codec().encode("AuditRecord", rec), partition=p)
    assert producer.flush(30) == 0
    try:
        yield topic
    finally:
        with contextlib.suppress(Exception):
            admin.delete_topics([topic], operation_timeout=30)[topic].result()


def _victim(gate: Gate) -> tuple[int, int, dict[str, Any]]:
    """A ReservationSettled audit record in the middle of the busiest partition: (partition, index, record)."""
    by_partition: dict[int, list[dict[str, Any]]] = {}
    for p, _, rec in audit_records(gate):
        by_partition.setdefault(p, []).append(rec)
    p, recs = max(by_partition.items(), key=lambda kv: len(kv[1]))
    middle = [i for i, r in enumerate(recs) if r["event_type"] == "ReservationSettled" and 0 < i < len(recs) - 1]
    index = middle[len(middle) // 2]
    return p, index, recs[index]


def test_tampered_copies_name_partition_and_offset(gate: Gate, cli_env: None, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    drive(gate)
    p, index, victim = _victim(gate)

    with _tampered_copy(gate, "audit.tampered-removed", p, index, lambda rec: None) as topic:
        report, _ = _replay(gate, topic=topic)
        assert not report["chain_ok"] and not report["ok"]
        first = report["first_problem"]
        assert (first["partition"], first["offset"]) == (p, index), render_replay(report)
        assert "a record is missing" in first["error"]
        assert [q["partition"] for q in report["partitions"] if q["problem"]] == [p], "other chains are whole"
        assert any(f"{victim['source_partition']}/{victim['source_offset']} has no audit record" in c["error"]
                   for c in report["coverage"])
        assert not report["totals_ok"], "the removed settlement is missing from the rebuilt spend"
        out = tmp_path / "removed.json"
        assert main(["audit", "replay", "--topic", topic, "--json", str(out)]) == 1
        assert json.loads(out.read_text())["first_problem"] == first
        assert f"FIRST PROBLEM: partition {p}, offset {index}" in capsys.readouterr().out

    def edit(rec: dict[str, Any]) -> dict[str, Any]:
        summary = json.loads(rec["summary_json"])
        summary["actual_micro_usd"] += 1000
        return {**rec, "summary_json": json.dumps(summary, sort_keys=True)}

    with _tampered_copy(gate, "audit.tampered-edited", p, index, edit) as topic:
        report, _ = _replay(gate, topic=topic)
        first = report["first_problem"]
        assert (first["partition"], first["offset"]) == (p, index), render_replay(report)
        assert "edited" in first["error"]
        diff = report["reconciliation"]["ledger"]["differences"]
        assert len(diff) == 1 and diff[0]["audit_micro_usd"] - diff[0]["ledger_micro_usd"] == 1000
        assert diff[0]["tenant_id"] == victim["tenant_id"]
        assert main(["audit", "replay", "--topic", topic]) == 1
        assert "CHAIN BROKEN and TOTALS DIFFER" in capsys.readouterr().out
