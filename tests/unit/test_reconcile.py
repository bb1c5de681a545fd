"""The invoice reconciliation's pure parts: the CSV parser (docs/invoice-csv.md) and `compare`."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from pathlib import Path

import pytest

from ledgergate.tools.reconcile import (
    COLUMNS,
    Amounts,
    InvoiceError,
    Metered,
    compare,
    parse_invoice,
    parse_invoice_rows,
)

HEADER = ",".join(COLUMNS)


def parse(text: str) -> dict[tuple[str, str], Amounts]:
    reader = csv.DictReader(io.StringIO(text))
    return parse_invoice_rows(reader, reader.fieldnames or [])


def test_rows_of_one_day_and_model_are_summed_and_cost_is_micro_usd(tmp_path: Path) -> None:
    path = tmp_path / "inv.csv"
    path.write_text("\ufeff" + HEADER + ",project\n"  # a BOM and an extra column, as spreadsheets write them
                    "2026-11-29,gpt-4o,1000,200,500,0,0.0075,p1\n"
                    "2026-11-29,gpt-4o,10,,5,,$0.0000125,p2\n"
                    "2026-11-30,gpt-4o-mini,1_000,0,0,0,0,p1\n")
    inv = parse_invoice(path)
    assert inv[("2026-11-29", "gpt-4o")] == Amounts(1010, 200, 505, 0, 7500 + 13)  # 12.5 micro rounds half up
    assert inv[("2026-11-30", "gpt-4o-mini")] == Amounts(1000, 0, 0, 0, 0)


@pytest.mark.parametrize(("row", "error"), [
    ("29/11/2026,gpt-4o,1,0,1,0,0.1", "line 2: date must be YYYY-MM-DD"),
    ("2026-11-29,,1,0,1,0,0.1", "line 2: model is empty"),
    ("2026-11-29,gpt-4o,-1,0,1,0,0.1", "line 2: input_tokens must be a whole number"),
    ("2026-11-29,gpt-4o,1,0,,0,0.1", "line 2: output_tokens must be a whole number"),
    ("2026-11-29,gpt-4o,1.5,0,1,0,0.1", "line 2: input_tokens"),
    ("2026-11-29,gpt-4o,1,0,1,0,ten", "line 2: cost_usd must be a decimal amount"),
    ("2026-11-29,gpt-4o,1,0,1,0,-0.1", "line 2: cost_usd must be >= 0"),
])
def test_malformed_rows_name_their_line(row: str, error: str) -> None:
    with pytest.raises(InvoiceError, match=error):
        parse(HEADER + "\n" + row + "\n")


def test_missing_columns_and_unreadable_files_are_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(InvoiceError, match="header lacks cost_usd"):
        parse("date,model,input_tokens,cached_input_tokens,output_tokens,reasoning_tokens\n")
    with pytest.raises(InvoiceError, match="cannot read invoice"):
        parse_invoice(tmp_path / "absent.csv")


def m(day: str, model: str, estimated: bool, requests: int, *amounts: int) -> Metered:
    return Metered(day, model, estimated, requests, Amounts(*amounts))


def test_matching_usage_is_not_flagged_and_estimates_are_kept_apart() -> None:
    inv = {("2026-11-29", "gpt-4o"): Amounts(1000, 100, 500, 10, 9000)}
    rows = compare(inv, [m("2026-11-29", "gpt-4o", False, 3, 900, 100, 450, 10, 8000),
                         m("2026-11-29", "gpt-4o", True, 1, 100, 0, 50, 0, 1000)], Decimal(2))
    (d,) = rows
    assert not d.flagged and d.flagged_metrics == () and not d.within_estimated
    assert (d.measured_requests, d.estimated_requests) == (3, 1)
    assert d.measured == Amounts(900, 100, 450, 10, 8000) and d.estimated == Amounts(100, 0, 50, 0, 1000)
    assert all(v == 0.0 for v in d.drift_pct.values())


def test_drift_above_the_threshold_is_flagged_per_metric_exactly_at_the_boundary() -> None:
    inv = {("d", "m"): Amounts(1000, 0, 1000, 0, 1000)}
    at = compare(inv, [m("d", "m", False, 1, 1020, 0, 1000, 0, 1000)], Decimal(2))[0]
    assert not at.flagged and at.drift_pct["input_tokens"] == 2.0, "exactly 2 % is within a 2 % threshold"
    above = compare(inv, [m("d", "m", False, 1, 1021, 0, 979, 0, 1000)], Decimal(2))[0]
    assert above.flagged_metrics == ("input_tokens", "output_tokens")
    assert above.drift_pct["output_tokens"] == -2.1
    assert compare(inv, [m("d", "m", False, 1, 1021, 0, 1000, 0, 1000)], Decimal("2.5"))[0].flagged is False


def test_drift_covered_by_estimates_is_marked_so() -> None:
    inv = {("d", "m"): Amounts(0, 0, 1000, 0, 0)}
    rows = compare(inv, [m("d", "m", False, 5, 0, 0, 900, 0, 0), m("d", "m", True, 1, 0, 0, 150, 0, 0)], Decimal(2))
    assert rows[0].flagged_metrics == ("output_tokens",) and rows[0].within_estimated
    rows = compare(inv, [m("d", "m", False, 5, 0, 0, 1100, 0, 0), m("d", "m", True, 1, 0, 0, 50, 0, 0)], Decimal(2))
    assert rows[0].flagged and not rows[0].within_estimated


def test_one_sided_days_are_flagged_and_sorted() -> None:
    inv = {("2026-11-30", "m"): Amounts(10, 0, 10, 0, 10), ("2026-11-28", "m"): Amounts(0, 0, 0, 0, 0)}
    rows = compare(inv, [m("2026-11-29", "m", False, 1, 5, 0, 5, 0, 5)], Decimal(2))
    assert [(r.day, r.flagged) for r in rows] == [("2026-11-28", False), ("2026-11-29", True), ("2026-11-30", True)]
    only_ours = rows[1]
    assert only_ours.drift_pct["input_tokens"] is None and only_ours.drift_pct["cached_input_tokens"] == 0.0
    assert rows[2].drift_pct["output_tokens"] == -100.0
    assert rows[1].as_dict()["flagged_metrics"] == ["input_tokens", "output_tokens", "cost_micro_usd"]
