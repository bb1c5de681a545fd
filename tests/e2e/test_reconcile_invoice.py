"""`ledgergate reconcile` on real metered usage: completions go through the gate, the token-counter
writes usage.metered (provider-reported, or estimated from completion text), and an invoice built from
what the "provider" billed is compared with it per day and model."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ledgergate.shared.catalogue import prices
from ledgergate.shared.settings import PostgresSettings
from ledgergate.shared.units import usd, utc_day
from ledgergate.tools.cli import main
from ledgergate.tools.reconcile import COLUMNS
from tests.e2e.conftest import Gate
from tests.e2e.traffic import drive, metered
from tests.fresh_db import fresh_database


def _invoice(rows: list[dict[str, Any]], path: Path, output_factor: dict[str, float] | None = None) -> None:
    """The provider's export: per day and model, summed tokens and cost; `output_factor` inflates one
    model's output tokens, as a provider whose count differs from what it reported per call."""
    sums: dict[tuple[str, str], list[int]] = {}
    for r in rows:
        u = r["usage"]
        version = prices().at(r["completed_at_ms"]).version
        cost = prices().cost_micro_usd(version, r["model"], u["input_tokens"], u["cached_input_tokens"],
                                       u["output_tokens"], reasoning_tokens=u["reasoning_tokens"])
        slot = sums.setdefault((utc_day(r["completed_at_ms"]), r["model"]), [0, 0, 0, 0, 0])
        for i, v in enumerate((u["input_tokens"], u["cached_input_tokens"], u["output_tokens"],
                               u["reasoning_tokens"], cost)):
            slot[i] += v
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for (day, model), (i, c, o, r, cost) in sorted(sums.items()):
            o = round(o * (output_factor or {}).get(model, 1.0))
            writer.writerow([day, model, i, c, o, r, usd(cost)])


@pytest.fixture
def cli_env(gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGERGATE_KAFKA_BOOTSTRAP", gate.kafka.kafka_bootstrap)
    monkeypatch.setenv("LEDGERGATE_TOPIC_PREFIX", gate.kafka.topic_prefix)


def test_invoice_drift_is_flagged_per_model_and_day(gate: Gate, cli_env: None, tmp_path: Path,
                                                    postgres: PostgresSettings,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    traffic = drive(gate)
    rows = metered(gate)
    assert len(rows) == len(traffic.completed)
    sent = {c.request_id: c.usage for c in traffic.completed}
    workflows = {c.request_id: c.workflow for c in traffic.completed}
    for r in rows:  # measured usage is the provider's own figure, passed through untouched
        assert r["workflow_id"] == workflows[r["request_id"]], "the token-counter carries the request's workflow"
        assert r["estimated"] == (sent[r["request_id"]] is None)
        if not r["estimated"]:
            assert r["usage"] == sent[r["request_id"]]
    estimated = Counter(c.model for c in traffic.completed if c.usage is None)
    assert estimated, "the traffic includes completions without provider usage"

    clean, out = tmp_path / "clean.csv", tmp_path / "report.json"
    _invoice(rows, clean)
    assert main(["reconcile", "--invoice", str(clean), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["ok"] and report["source"] == f"Kafka {gate.kafka.topic('usage.metered')}"
    assert {r["model"]: r["estimated_requests"] for r in report["rows"]} == {
        m: estimated.get(m, 0) for m in {r["model"] for r in rows}}
    assert sum(r["measured_requests"] + r["estimated_requests"] for r in report["rows"]) == len(rows)
    assert "result: OK" in capsys.readouterr().out

    drifted_model = sorted({r["model"] for r in rows})[0]
    drifted = tmp_path / "drifted.csv"
    _invoice(rows, drifted, output_factor={drifted_model: 1.10})
    assert main(["reconcile", "--invoice", str(drifted), "--threshold-pct", "2", "--json", str(out)]) == 1
    report = json.loads(out.read_text())
    flagged = [r for r in report["rows"] if r["flagged"]]
    assert [(r["model"], r["flagged_metrics"]) for r in flagged] == [(drifted_model, ["output_tokens"])]
    assert -10.0 < flagged[0]["drift_pct"]["output_tokens"] < -8.0  # metered is ~9 % below the invoice
    printed = capsys.readouterr().out
    assert "DRIFT" in printed and "1 day/model row(s) drift above the threshold" in printed
    # A 15 % threshold accepts the same invoice.
    assert main(["reconcile", "--invoice", str(drifted), "--threshold-pct", "15"]) == 0

    with fresh_database(postgres.pg_dsn) as dsn:  # no usage table there: Kafka serves, and the report says so
        assert main(["reconcile", "--invoice", str(clean), "--pg-dsn", dsn, "--json", str(out)]) == 0
        report = json.loads(out.read_text())
        assert report["source"].startswith("Kafka ") and any("PostgreSQL not used" in n for n in report["notes"])
