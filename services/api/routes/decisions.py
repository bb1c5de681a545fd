"""Gate decisions: a tenant's list (newest first by default) and one request's decision.

A request id is unique only within a tenant, and may have two rows (its decision and a later
`idempotency_conflict` DENY for different content under the same id, see migration 0002); its own
decision is the earliest row that is not such a conflict.
"""

from __future__ import annotations

from typing import Annotated

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
    keyset_page,
)
from ledgergate.shared import readmodel

router = APIRouter(tags=["decisions"])


def _public(r: readmodel.DecisionRow) -> DecisionPublic:
    return DecisionPublic(request_id=r.request_id, ledger_entry_id=r.ledger_entry_id, tenant_id=r.tenant_id,
                          workflow_id=r.workflow_id, agent_id=r.agent_id, outcome=r.outcome,
                          requested_model=r.requested_model, model=r.model, binding_scope=r.binding_scope,
                          reason_codes=list(r.reason_codes), reserved_micro_usd=r.reserved_micro_usd,
                          granted_output_tokens=r.granted_output_tokens, requested_at_ms=r.requested_at_ms,
                          decided_at_ms=r.decided_at_ms, body=r.body)


@router.get("/v1/tenants/{tenant_id}/decisions", response_model=Page[DecisionPublic],
            summary="Gate decisions, paged")
def list_decisions(tenant_id: ReadableTenant, db: DbConn, limit: Limit = DEFAULT_PAGE, cursor: Cursor = None,
                   offset: Offset = None, order: Order = "desc", outcome: Annotated[Outcome | None, Query()] = None,
                   from_ms: FromMs = None, to_ms: ToMs = None, workflow: FilterId = None) -> Page[DecisionPublic]:
    rows = readmodel.decisions(db, tenant_id, page=keyset_page(order, cursor, offset), limit=limit, from_ms=from_ms,
                               to_ms=to_ms, outcome=outcome, workflow_id=workflow)
    items = [_public(r) for r in rows.items]
    return Page(items=items,
                next_cursor=encode_cursor(items[-1].decided_at_ms, items[-1].ledger_entry_id) if rows.more else None)


@router.get("/v1/tenants/{tenant_id}/decisions/{request_id}", response_model=DecisionPublic,
            summary="One request's decision, within a tenant")
def get_tenant_decision(tenant_id: ReadableTenant, request_id: IdPath, db: DbConn) -> DecisionPublic:
    row = readmodel.decision(db, tenant_id, request_id)
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
        row = readmodel.decision(db, tenant_id, request_id)
        if row is None:
            raise not_found
        return _public(row)
    tenants = readmodel.decision_tenants(db, request_id)
    if not tenants:
        raise not_found
    if len(tenants) > 1:
        raise Unprocessable(f"request id {request_id!r} exists in several tenants; pass tenant_id")
    return get_decision(request_id, db, principal, tenants[0])
