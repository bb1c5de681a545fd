"""`ledgergate reconcile --pg-dsn`: the PostgreSQL `usage` table (as the projector fills it, one row per
settlement) against an invoice, with days cut at UTC midnight exactly and estimates kept apart."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from ledgergate.shared import db
from ledgergate.shared.settings import PostgresSettings
from ledgergate.shared.units import day_start_ms
from ledgergate.tools.cli import main
from tests.fresh_db import fresh_database, insert_usage

MIDNIGHT = day_start_ms(date(2026, 11, 29))


def _settled(request_id: str, model: str, at_ms: int, output: int, cost: int, estimated: bool = False) -> dict:
    return {"request_id": request_id, "tenant_id": "acme", "workflow_id": "", "model": model,
            "usage": {"input_tokens": 100, "cached_input_tokens": 10, "output_tokens": output, "reasoning_tokens": 0},
            "usage_estimated": estimated, "actual_micro_usd": cost, "price_version": "2026-11-01",
            "recorded_at_ms": at_ms}


def test_usage_table_is_reconciled_per_utc_day(postgres: PostgresSettings, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    invoice = tmp_path / "invoice.csv"
    invoice.write_text("date,model,input_tokens,cached_input_tokens,output_tokens,reasoning_tokens,cost_usd\n"
                       "2026-11-28,gpt-4o,200,20,300,0,0.003\n"
                       "2026-11-29,gpt-4o,100,10,100,0,0.001\n"
                       "2026-11-29,gpt-4o-mini,300,30,1000,0,0.0004\n")
    with fresh_database(postgres.pg_dsn) as dsn:
        db.migrate(dsn)
        insert_usage(dsn, [
            _settled("a", "gpt-4o", MIDNIGHT - 1, 150, 1500),  # the last millisecond of the 28th
            _settled("b", "gpt-4o", MIDNIGHT - 86_400_000, 150, 1500),
            _settled("c", "gpt-4o", MIDNIGHT, 100, 1000),  # the first of the 29th
            _settled("d", "gpt-4o-mini", MIDNIGHT + 5, 500, 200),
            _settled("e", "gpt-4o-mini", MIDNIGHT + 6, 500, 200),
            _settled("f", "gpt-4o-mini", MIDNIGHT + 7, 80, 40, estimated=True),  # counted by us: 8 % over
            _settled("g", "claude-haiku", MIDNIGHT + 8, 10, 5),  # another provider's model
            _settled("h", "gpt-4o", MIDNIGHT + 2 * 86_400_000, 10, 5),  # after the invoice's last day
        ])
        out = tmp_path / "report.json"
        assert main(["reconcile", "--invoice", str(invoice), "--pg-dsn", dsn, "--json", str(out)]) == 1
    report = json.loads(out.read_text())
    assert report["source"] == "PostgreSQL usage table"
    assert any("claude-haiku (1 requests)" in n for n in report["notes"])
    rows = {(r["day"], r["model"]): r for r in report["rows"]}
    assert set(rows) == {("2026-11-28", "gpt-4o"), ("2026-11-29", "gpt-4o"), ("2026-11-29", "gpt-4o-mini")}
    assert not rows[("2026-11-28", "gpt-4o")]["flagged"] and not rows[("2026-11-29", "gpt-4o")]["flagged"]
    mini = rows[("2026-11-29", "gpt-4o-mini")]
    assert (mini["measured_requests"], mini["estimated_requests"]) == (2, 1)
    assert mini["measured"]["output_tokens"] == 1000 and mini["estimated"]["output_tokens"] == 80
    assert mini["flagged_metrics"] == ["output_tokens", "cost_micro_usd"]
    assert mini["within_estimated"], "the whole difference is the estimated call"
    printed = capsys.readouterr().out
    assert "drift (within estimates)" in printed and "result: 1 day/model row(s)" in printed
