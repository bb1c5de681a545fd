"""`ledgergate reconcile --invoice FILE.csv`: a provider's per-day, per-model usage export against what
ledgergate metered, so a tokenizer, price or metering fault shows up as drift before the bill is paid.

`parse_invoice` and `compare` are pure (unit-tested); `metered_from_kafka` folds usage.metered and
prices it with the catalogue, and the PostgreSQL `usage` table (tools/pg_usage.py) is preferred when
given, since it holds each settlement's exact cost. The CSV shape is documented in docs/invoice-csv.md.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import date
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path

from ledgergate.shared.errors import InvoiceError

COLUMNS = ("date", "model", "input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens", "cost_usd")
METRICS = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens", "cost_micro_usd")


@dataclass(frozen=True, slots=True)
class Amounts:
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_micro_usd: int = 0

    def __add__(self, other: Amounts) -> Amounts:
        return Amounts(*(getattr(self, m) + getattr(other, m) for m in METRICS))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class Metered:
    """Metered usage of one (day, model), measured (provider-reported) and estimated (counted by us
    from completion text) kept apart: estimates are the first suspects when drift appears."""

    day: str
    model: str
    estimated: bool
    requests: int
    amounts: Amounts


@dataclass(frozen=True, slots=True)
class Drift:
    day: str
    model: str
    invoice: Amounts
    measured: Amounts
    estimated: Amounts
    measured_requests: int
    estimated_requests: int
    drift_pct: dict[str, float | None]  # (metered - invoice) / invoice; None when only ledgergate has it
    flagged_metrics: tuple[str, ...]
    within_estimated: bool  # every flagged difference is no larger than the estimated share of that metric

    @property
    def flagged(self) -> bool:
        return bool(self.flagged_metrics)

    def as_dict(self) -> dict[str, object]:
        return {"day": self.day, "model": self.model, "invoice": self.invoice.as_dict(),
                "measured": self.measured.as_dict(), "estimated": self.estimated.as_dict(),
                "measured_requests": self.measured_requests, "estimated_requests": self.estimated_requests,
                "drift_pct": self.drift_pct, "flagged": self.flagged, "flagged_metrics": list(self.flagged_metrics),
                "within_estimated": self.within_estimated}


def _int_cell(value: str, column: str, line: int) -> int:
    text = (value or "").strip().replace("_", "")
    if text == "" and column in ("cached_input_tokens", "reasoning_tokens"):
        return 0  # providers that do not break these out leave the cell empty
    if not text.isdigit():
        raise InvoiceError(f"line {line}: {column} must be a whole number >= 0, got {value!r}")
    return int(text)


def _micro_usd(value: str, line: int) -> int:
    try:
        amount = Decimal((value or "").strip().lstrip("$"))
    except InvalidOperation:
        raise InvoiceError(f"line {line}: cost_usd must be a decimal amount, got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise InvoiceError(f"line {line}: cost_usd must be >= 0, got {value!r}")
    # Providers bill sub-micro amounts per line; half-up to the micro-dollar, ledgergate's unit.
    return int((amount * 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def parse_invoice_rows(rows: Iterable[dict[str, str]], header: Iterable[str]) -> dict[tuple[str, str], Amounts]:
    """{(day, model): summed amounts}; rows of one day and model (say, per project) are added."""
    missing = [c for c in COLUMNS if c not in set(header)]
    if missing:
        raise InvoiceError(f"invoice header lacks {', '.join(missing)}; expected {','.join(COLUMNS)}")
    out: dict[tuple[str, str], Amounts] = {}
    for line, row in enumerate(rows, start=2):
        try:
            day = date.fromisoformat((row["date"] or "").strip()).isoformat()
        except ValueError:
            raise InvoiceError(f"line {line}: date must be YYYY-MM-DD, got {row['date']!r}") from None
        model = (row["model"] or "").strip()
        if not model:
            raise InvoiceError(f"line {line}: model is empty")
        tokens = {c: _int_cell(row[c], c, line) for c in COLUMNS[2:6]}  # the token columns are named as in Amounts
        amounts = Amounts(**tokens, cost_micro_usd=_micro_usd(row["cost_usd"], line))
        out[(day, model)] = out.get((day, model), Amounts()) + amounts
    return out


def parse_invoice(path: Path) -> dict[tuple[str, str], Amounts]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: spreadsheets write a BOM
            reader = csv.DictReader(fh)
            return parse_invoice_rows(reader, reader.fieldnames or [])
    except OSError as exc:
        raise InvoiceError(f"cannot read invoice {path}: {exc}") from exc
    except csv.Error as exc:
        raise InvoiceError(f"{path} is not valid CSV: {exc}") from exc


def _exceeds(diff: int, base: int, threshold_pct: Decimal) -> bool:
    """abs(diff)/base > threshold %, in integers and Decimal: no float decides a flag."""
    if base == 0:
        return diff != 0
    return Decimal(abs(diff)) * 100 > threshold_pct * base


def compare(invoice: dict[tuple[str, str], Amounts], metered: Iterable[Metered],
            threshold_pct: Decimal) -> list[Drift]:
    """One Drift per (day, model) on either side, sorted. Pure."""
    measured: dict[tuple[str, str], tuple[int, Amounts]] = {}
    estimated: dict[tuple[str, str], tuple[int, Amounts]] = {}
    for m in metered:
        side = estimated if m.estimated else measured
        n, a = side.get((m.day, m.model), (0, Amounts()))
        side[(m.day, m.model)] = (n + m.requests, a + m.amounts)
    out = []
    for key in sorted(invoice.keys() | measured.keys() | estimated.keys()):
        inv = invoice.get(key, Amounts())
        mn, ma = measured.get(key, (0, Amounts()))
        en, ea = estimated.get(key, (0, Amounts()))
        total = ma + ea
        pct: dict[str, float | None] = {}
        flagged = []
        for metric in METRICS:
            base, diff = getattr(inv, metric), getattr(total, metric) - getattr(inv, metric)
            pct[metric] = round(diff * 100 / base, 3) if base else (0.0 if diff == 0 else None)
            if _exceeds(diff, base, threshold_pct):
                flagged.append(metric)
        within = all(abs(getattr(total, m) - getattr(inv, m)) <= getattr(ea, m) for m in flagged)
        out.append(Drift(key[0], key[1], inv, ma, ea, mn, en, pct, tuple(flagged), bool(flagged) and within))
    return out
