"""Gate decisions: a tenant's list (newest first by default) and one request's decision.

A request id is unique only within a tenant, and may have two rows (its decision and a later
`idempotency_conflict` DENY for different content under the same id, see migration 0002); its own
decision is the earliest row that is not such a conflict.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from ledgergate.services.api.deps import CurrentPrincipal, DbConn, ReadableTenant
from ledgergate.services.api.errors import NotFound, Unprocessable
from ledgergate.services.api.models import DEFAULT_PAGE, DecisionPublic, Outcome, Page
from ledgergate.services.api.paging import (
    Cursor,
    FilterId,
    FromMs,
    IdPath,
    Limit,
    Offset,
    Order,
    ToMs,
    encode_cursor,
    keyset,
)
from ledgergate.services.api.routes.ledger import time_filters

router = APIRouter(tags=["decisions"])

_COLUMNS = ("request_id, ledger_entry_id, tenant_id, workflow_id, agent_id, outcome, requested_model, model, "
            "binding_scope, reason_codes, reserved_micro_usd, granted_output_tokens, requested_at_ms, "
            "decided_at_ms, body")
# The request's own decision first: conflicts last, then oldest.
_OWN_FIRST = "ORDER BY ('idempotency_conflict' = ANY(reason_codes)), decided_at_ms, ledger_entry_id"


def _public(r: tuple[Any, ...]) -> DecisionPublic:
    return DecisionPublic(request_id=r[0], ledger_entry_id=r[1], tenant_id=r[2], workflow_id=r[3], agent_id=r[4],
                          outcome=r[5], requested_model=r[6], model=r[7], binding_scope=r[8],
                          reason_codes=list(r[9]), reserved_micro_usd=r[10], granted_output_tokens=r[11],
                          requested_at_ms=r[12], decided_at_ms=r[13], body=r[14])


@router.get("/v1/tenants/{tenant_id}/decisions", response_model=Page[DecisionPublic],
            summary="Gate decisions, paged")
def list_decisions(tenant_id: ReadableTenant, db: DbConn, limit: Limit = DEFAULT_PAGE, cursor: Cursor = None,
                   offset: Offset = None, order: Order = "desc", outcome: Annotated[Outcome | None, Query()] = None,
                   from_ms: FromMs = None, to_ms: ToMs = None, workflow: FilterId = None) -> Page[DecisionPublic]:
    where, params = time_filters("decided_at_ms", from_ms, to_ms)
    for column, value in (("outcome", outcome), ("workflow_id", workflow)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    seek, seek_params, order_by, offset_sql = keyset(("decided_at_ms", "ledger_entry_id"), order, cursor, offset,
                                                     (int, str))
    if seek:
        where.append(seek)
        params.extend(seek_params)
    sql = (f"SELECT {_COLUMNS} FROM decisions WHERE tenant_id = %s"
           f"{''.join(' AND ' + w for w in where)} {order_by} LIMIT %s {offset_sql}")
    rows = db.execute(sql, [tenant_id, *params, limit + 1]).fetchall()
    items = [_public(r) for r in rows[:limit]]
    more = len(rows) > limit
    return Page(items=items,
                next_cursor=encode_cursor(items[-1].decided_at_ms, items[-1].ledger_entry_id) if more else None)


@router.get("/v1/tenants/{tenant_id}/decisions/{request_id}", response_model=DecisionPublic,
            summary="One request's decision, within a tenant")
def get_tenant_decision(tenant_id: ReadableTenant, request_id: IdPath, db: DbConn) -> DecisionPublic:
    row = db.execute(f"SELECT {_COLUMNS} FROM decisions WHERE tenant_id = %s AND request_id = %s {_OWN_FIRST} "
                     "LIMIT 1", (tenant_id, request_id)).fetchone()
    if row is None:
        raise NotFound(f"no decision for request {request_id!r}")
    return _public(row)


@router.get("/v1/decisions/{request_id}", response_model=DecisionPublic,
            summary="One request's decision, by request id alone",
            description="A tenant key sees only its own tenant's decisions: another tenant's request id is a 404, "
                        "exactly like an unknown one. Request ids are unique per tenant only, so an admin key may "
                        "have to name the tenant (`tenant_id`) or use the tenant route.")
def get_decision(request_id: IdPath, db: DbConn, principal: CurrentPrincipal, tenant_id: FilterId = None
                 ) -> DecisionPublic:
    not_found = NotFound(f"no decision for request {request_id!r}")
    if not principal.is_admin:
        if tenant_id is not None and tenant_id != principal.tenant_id:
            raise not_found  # same answer as an unknown id: existence elsewhere is never revealed
        tenant_id = principal.tenant_id
    if tenant_id is not None:
        row = db.execute(f"SELECT {_COLUMNS} FROM decisions WHERE tenant_id = %s AND request_id = %s "
                         f"{_OWN_FIRST} LIMIT 1", (tenant_id, request_id)).fetchone()
        if row is None:
            raise not_found
        return _public(row)
    tenants = [r[0] for r in db.execute("SELECT DISTINCT tenant_id FROM decisions WHERE request_id = %s LIMIT 2",
                                        (request_id,))]
    if not tenants:
        raise not_found
    if len(tenants) > 1:
        raise Unprocessable(f"request id {request_id!r} exists in several tenants; pass tenant_id")
    return get_decision(request_id, db, principal, tenants[0])
