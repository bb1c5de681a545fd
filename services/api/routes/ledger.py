"""GET a tenant's ledger entries from the read model, paged by cursor (or offset), oldest first by default."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ledgergate.services.api.deps import DbConn, ReadableTenant
from ledgergate.services.api.models import DEFAULT_PAGE, LedgerEntryPublic, Page
from ledgergate.services.api.paging import (
    Cursor,
    FilterId,
    FilterName,
    FromMs,
    Limit,
    Offset,
    Order,
    ToMs,
    encode_cursor,
    keyset,
)

router = APIRouter(prefix="/v1/tenants/{tenant_id}", tags=["ledger"])

_COLUMNS = ("entry_id, entry_type, period_id, request_id, workflow_id, model, amount_micro_usd, "
            "recorded_at_ms, body")


def time_filters(column: str, from_ms: int | None, to_ms: int | None) -> tuple[list[str], list[Any]]:
    where, params = [], []
    if from_ms is not None:
        where.append(f"{column} >= %s")
        params.append(from_ms)
    if to_ms is not None:
        where.append(f"{column} < %s")
        params.append(to_ms)
    return where, params


@router.get("/ledger", response_model=Page[LedgerEntryPublic], summary="Ledger entries, paged")
def get_ledger(tenant_id: ReadableTenant, db: DbConn, limit: Limit = DEFAULT_PAGE, cursor: Cursor = None,
               offset: Offset = None, order: Order = "asc", from_ms: FromMs = None, to_ms: ToMs = None,
               workflow: FilterId = None, model: FilterName = None,
               entry_type: FilterName = None) -> Page[LedgerEntryPublic]:
    where, params = time_filters("recorded_at_ms", from_ms, to_ms)
    for column, value in (("workflow_id", workflow), ("model", model), ("entry_type", entry_type)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    seek, seek_params, order_by, offset_sql = keyset(("recorded_at_ms", "entry_id"), order, cursor, offset,
                                                     (int, str))
    if seek:
        where.append(seek)
        params.extend(seek_params)
    # tenant_id first and always: every query of a tenant route is scoped in SQL, not after the fact.
    sql = (f"SELECT {_COLUMNS} FROM ledger_entries WHERE tenant_id = %s"
           f"{''.join(' AND ' + w for w in where)} {order_by} LIMIT %s {offset_sql}")
    rows = db.execute(sql, [tenant_id, *params, limit + 1]).fetchall()
    items = [LedgerEntryPublic(entry_id=r[0], entry_type=r[1], period_id=r[2], request_id=r[3], workflow_id=r[4],
                               model=r[5], amount_micro_usd=r[6], recorded_at_ms=r[7], body=r[8])
             for r in rows[:limit]]
    more = len(rows) > limit
    return Page(items=items, next_cursor=encode_cursor(items[-1].recorded_at_ms, items[-1].entry_id) if more else None)
