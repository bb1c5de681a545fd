"""GET a tenant's budget alerts: thresholds (50/80/100 %) crossed, from the `alerts` read model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ledgergate.services.api.deps import DbConn, ReadableTenant
from ledgergate.services.api.models import DEFAULT_PAGE, AlertPublic, Page
from ledgergate.services.api.paging import Cursor, Limit, Offset, Order, Period, encode_cursor, keyset

router = APIRouter(prefix="/v1/tenants/{tenant_id}", tags=["alerts"])


@router.get("/alerts", response_model=Page[AlertPublic], summary="Budget thresholds crossed, newest first")
def list_alerts(tenant_id: ReadableTenant, db: DbConn, limit: Limit = DEFAULT_PAGE, cursor: Cursor = None,
                offset: Offset = None, order: Order = "desc",
                period: Period = None,
                min_pct: Annotated[int, Query(ge=0, le=1000, description="only thresholds >= this")] = 0
                ) -> Page[AlertPublic]:
    where: list[str] = ["threshold_pct >= %s"]
    params: list[object] = [min_pct]
    if period is not None:
        where.append("period_id = %s")
        params.append(period)
    seek, seek_params, order_by, offset_sql = keyset(("recorded_at_ms", "entry_id"), order, cursor, offset,
                                                     (int, str))
    if seek:
        where.append(seek)
        params.extend(seek_params)
    sql = ("SELECT entry_id, scope_type, scope_id, period_id, threshold_pct, spent_micro_usd, limit_micro_usd, "
           f"recorded_at_ms FROM alerts WHERE tenant_id = %s{''.join(' AND ' + w for w in where)} "
           f"{order_by} LIMIT %s {offset_sql}")
    rows = db.execute(sql, [tenant_id, *params, limit + 1]).fetchall()
    items = [AlertPublic(alert_id=r[0], scope_type=r[1], scope_id=r[2], period_id=r[3], threshold_pct=r[4],
                         spent_micro_usd=r[5], limit_micro_usd=r[6], crossed_at_ms=r[7]) for r in rows[:limit]]
    more = len(rows) > limit
    return Page(items=items, next_cursor=encode_cursor(items[-1].crossed_at_ms, items[-1].alert_id) if more else None)
