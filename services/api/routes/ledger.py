"""GET a tenant's ledger entries from the read model, paged by cursor (or offset), oldest first by default."""

from __future__ import annotations

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
    keyset_page,
)
from ledgergate.shared import readmodel

router = APIRouter(prefix="/v1/tenants/{tenant_id}", tags=["ledger"])


@router.get("/ledger", response_model=Page[LedgerEntryPublic], summary="Ledger entries, paged")
def get_ledger(tenant_id: ReadableTenant, db: DbConn, limit: Limit = DEFAULT_PAGE, cursor: Cursor = None,
               offset: Offset = None, order: Order = "asc", from_ms: FromMs = None, to_ms: ToMs = None,
               workflow: FilterId = None, model: FilterName = None,
               entry_type: FilterName = None) -> Page[LedgerEntryPublic]:
    rows = readmodel.ledger_entries(db, tenant_id, page=keyset_page(order, cursor, offset), limit=limit,
                                    from_ms=from_ms, to_ms=to_ms, workflow_id=workflow, model=model,
                                    entry_type=entry_type)
    items = [LedgerEntryPublic(entry_id=r.entry_id, entry_type=r.entry_type, period_id=r.period_id,
                               request_id=r.request_id, workflow_id=r.workflow_id, model=r.model,
                               amount_micro_usd=r.amount_micro_usd, recorded_at_ms=r.recorded_at_ms, body=r.body)
             for r in rows.items]
    return Page(items=items,
                next_cursor=encode_cursor(items[-1].recorded_at_ms, items[-1].entry_id) if rows.more else None)
