"""Spend reports from the `usage` read model (one row per settled request, migration 0002): settled cost
and tokens grouped by model, tier, workflow, UTC day, fail_open or prompt template ("<id>@<version>", "(none)"),
as JSON or CSV; beside them, from `cache_hits` (one row per request answered from the response cache, migration
0006), the hits and what they saved. Rows carry hits for group_by model, workflow and day (a key with hits
only is a row of zero spend); for tier, fail_open and template, which a hit does not have, rows carry 0 and
only the report's totals count them."""

from __future__ import annotations

import csv
import io
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response

from ledgergate.services.api.deps import DbConn, ReadableTenant
from ledgergate.services.api.errors import Unprocessable
from ledgergate.services.api.models import SpendReport, SpendRow
from ledgergate.services.api.paging import FilterId, FromMs, Period, ToMs
from ledgergate.shared import readmodel_usage
from ledgergate.shared.ledger.periods import period_bounds, period_of
from ledgergate.shared.units import MS_PER_DAY

router = APIRouter(prefix="/v1/tenants/{tenant_id}/reports", tags=["reports"])

_FIELDS = list(SpendRow.model_fields)
MAX_RANGE_MS = 400 * MS_PER_DAY  # about 13 months: a report is a period or a few, never the whole history


def report_range(period: str | None, from_ms: int | None, to_ms: int | None, now_ms: int) -> tuple[int, int]:
    if period is not None:
        if from_ms is not None or to_ms is not None:
            raise Unprocessable("give either period or from_ms/to_ms, not both")
        try:
            return period_bounds(period)
        except ValueError as exc:
            raise Unprocessable(f"period: {exc}") from None
    _, period_start, period_end = period_of(now_ms)
    lo = period_start if from_ms is None else from_ms
    hi = period_end if to_ms is None else to_ms
    if hi <= lo:
        raise Unprocessable("to_ms must be after from_ms")
    if hi - lo > MAX_RANGE_MS:
        raise Unprocessable(f"a report covers at most {MAX_RANGE_MS // MS_PER_DAY} days")
    return lo, hi


def _csv_cell(value: object) -> object:
    # Model and workflow names are tenant-chosen text; a leading = + - @ would run as a formula when the
    # export is opened in a spreadsheet.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def to_csv(report: SpendReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_FIELDS)
    for row in report.rows:
        writer.writerow([_csv_cell(getattr(row, f)) for f in _FIELDS])
    return out.getvalue()


@router.get("/spend", response_model=SpendReport,
            summary="Settled spend grouped by model, tier, workflow, day, fail_open (decided or not) or template "
                    "(<id>@<version>, or (none)), and what cache hits saved (per row for model, workflow and day; "
                    "in the totals only for tier, fail_open and template)",
            responses={200: {"content": {"text/csv": {}}}})
def spend_report(tenant_id: ReadableTenant, db: DbConn,
                 group_by: Annotated[Literal["model", "tier", "workflow", "day", "fail_open", "template"],
                                     Query()] = "model",
                 period: Period = None,
                 from_ms: FromMs = None, to_ms: ToMs = None, workflow: FilterId = None,
                 format: Annotated[Literal["json", "csv"], Query()] = "json") -> SpendReport | Response:
    lo, hi = report_range(period, from_ms, to_ms, time.time_ns() // 1_000_000)
    # group_by only picks one of readmodel_usage.USAGE_GROUPS' trusted expressions; every one of these six is text.
    sums = readmodel_usage.spend_sums(db, group_by, tenant_id=tenant_id, from_ms=lo, to_ms=hi, workflow_id=workflow)
    [hits] = readmodel_usage.cache_hit_sums(db, tenant_id=tenant_id, from_ms=lo, to_ms=hi, workflow_id=workflow)
    report = SpendReport(
        tenant_id=tenant_id, group_by=group_by, from_ms=lo, to_ms=hi,
        total_micro_usd=sum(s.cost_micro_usd for s in sums),
        cache_hits=hits.hits, saved_micro_usd=hits.avoided_micro_usd,
        rows=[SpendRow(key=s.key, requests=s.requests, input_tokens=s.input_tokens,
                       cached_input_tokens=s.cached_input_tokens, output_tokens=s.output_tokens,
                       reasoning_tokens=s.reasoning_tokens, spend_micro_usd=s.cost_micro_usd,
                       cache_hits=s.cache_hits, saved_micro_usd=s.saved_micro_usd) for s in sums])
    if format == "csv":
        filename = f"spend-{tenant_id}-{group_by}-{lo}-{hi}.csv"
        return Response(to_csv(report), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})
    return report
