"""Spend reports from the `usage` read model (one row per settled request, migration 0002): settled cost
and tokens grouped by model, tier, workflow or UTC day, as JSON or CSV."""

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
from ledgergate.services.api.paging import FromMs, Period, ToMs
from ledgergate.shared.ledger.periods import period_bounds, period_of
from ledgergate.shared.units import MS_PER_DAY

router = APIRouter(prefix="/v1/tenants/{tenant_id}/reports", tags=["reports"])

# Trusted SQL per grouping; the query parameter only picks a key of this map.
_GROUP_KEYS = {"model": "model", "tier": "coalesce(tier, '')", "workflow": "workflow_id",
               "day": "to_char(day, 'YYYY-MM-DD')"}
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


@router.get("/spend", response_model=SpendReport, summary="Settled spend grouped by model, tier, workflow or day",
            responses={200: {"content": {"text/csv": {}}}})
def spend_report(tenant_id: ReadableTenant, db: DbConn,
                 group_by: Annotated[Literal["model", "tier", "workflow", "day"], Query()] = "model",
                 period: Period = None,
                 from_ms: FromMs = None, to_ms: ToMs = None,
                 format: Annotated[Literal["json", "csv"], Query()] = "json") -> SpendReport | Response:
    lo, hi = report_range(period, from_ms, to_ms, time.time_ns() // 1_000_000)
    key = _GROUP_KEYS[group_by]
    rows = db.execute(
        f"SELECT {key} AS k, count(*), sum(input_tokens)::bigint, sum(cached_input_tokens)::bigint, "
        "sum(output_tokens)::bigint, sum(reasoning_tokens)::bigint, sum(actual_micro_usd)::bigint "
        "FROM usage WHERE tenant_id = %s AND settled_at_ms >= %s AND settled_at_ms < %s "
        "GROUP BY k ORDER BY k", (tenant_id, lo, hi)).fetchall()
    report = SpendReport(
        tenant_id=tenant_id, group_by=group_by, from_ms=lo, to_ms=hi, total_micro_usd=sum(r[6] for r in rows),
        rows=[SpendRow(key=r[0], requests=r[1], input_tokens=r[2], cached_input_tokens=r[3], output_tokens=r[4],
                       reasoning_tokens=r[5], spend_micro_usd=r[6]) for r in rows])
    if format == "csv":
        filename = f"spend-{tenant_id}-{group_by}-{lo}-{hi}.csv"
        return Response(to_csv(report), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})
    return report
