"""GET a tenant's budget alerts: thresholds (50/80/100 %) crossed, from the `alerts` read model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ledgergate.services.api.deps import DbConn, ReadableTenant
from ledgergate.services.api.models import DEFAULT_PAGE, AlertPublic, Page
from ledgergate.services.api.paging import Cursor, Limit, Offset, Order, Period, encode_cursor, keyset_page
from ledgergate.shared import readmodel

router = APIRouter(prefix="/v1/tenants/{tenant_id}", tags=["alerts"])


def alert_public(r: readmodel.AlertRow) -> AlertPublic:
    return AlertPublic(alert_id=r.entry_id, scope_type=r.scope_type, scope_id=r.scope_id, period_id=r.period_id,
                       threshold_pct=r.threshold_pct, spent_micro_usd=r.spent_micro_usd,
                       limit_micro_usd=r.limit_micro_usd, crossed_at_ms=r.recorded_at_ms)


@router.get("/alerts", response_model=Page[AlertPublic], summary="Budget thresholds crossed, newest first")
def list_alerts(tenant_id: ReadableTenant, db: DbConn, limit: Limit = DEFAULT_PAGE, cursor: Cursor = None,
                offset: Offset = None, order: Order = "desc",
                period: Period = None,
                min_pct: Annotated[int, Query(ge=0, le=1000, description="only thresholds >= this")] = 0
                ) -> Page[AlertPublic]:
    rows = readmodel.alerts(db, tenant_id, page=keyset_page(order, cursor, offset), limit=limit, min_pct=min_pct,
                            period_id=period)
    items = [alert_public(r) for r in rows.items]
    return Page(items=items,
                next_cursor=encode_cursor(items[-1].crossed_at_ms, items[-1].alert_id) if rows.more else None)
