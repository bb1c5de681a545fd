"""Admin-only routes: the tenants the read model knows, and API keys (create, list, revoke)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from ledgergate.services.api import auth
from ledgergate.services.api.deps import AdminPrincipal, DbConn
from ledgergate.services.api.errors import NotFound
from ledgergate.services.api.log import log
from ledgergate.services.api.models import (
    DEFAULT_PAGE,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyPublic,
    Page,
    TenantPublic,
)
from ledgergate.services.api.paging import Cursor, FilterId, Limit, decode_cursor, encode_cursor

router = APIRouter(prefix="/v1", tags=["admin"])

# Tenants with a limit, a balance or a decision (a tenant only ever denied has no balance). decisions can
# be large, so its distinct tenants come from a loose index scan: one index probe per tenant, not a scan.
_TENANTS = """
WITH RECURSIVE d(tenant_id, n) AS (
    (SELECT tenant_id, 1 FROM decisions WHERE tenant_id > %(after)s ORDER BY tenant_id LIMIT 1)
    UNION ALL
    SELECT (SELECT x.tenant_id FROM decisions x WHERE x.tenant_id > d.tenant_id ORDER BY x.tenant_id LIMIT 1),
           d.n + 1
    FROM d WHERE d.tenant_id IS NOT NULL AND d.n < %(limit)s  -- a page needs no more than `limit` of them
)
SELECT tenant_id FROM (
    SELECT tenant_id FROM d WHERE tenant_id IS NOT NULL
    UNION SELECT tenant_id FROM limits WHERE tenant_id > %(after)s
    UNION SELECT tenant_id FROM balances WHERE tenant_id > %(after)s
) t ORDER BY tenant_id LIMIT %(limit)s
"""


@router.get("/tenants", response_model=Page[TenantPublic], summary="Every tenant in the read model (admin)")
def list_tenants(_admin: AdminPrincipal, db: DbConn, limit: Limit = DEFAULT_PAGE,
                 cursor: Cursor = None) -> Page[TenantPublic]:
    after = decode_cursor(cursor, (str,))[0] if cursor else ""
    rows = db.execute(_TENANTS, {"after": after, "limit": limit + 1}).fetchall()
    items = [TenantPublic(tenant_id=r[0]) for r in rows[:limit]]
    return Page(items=items, next_cursor=encode_cursor(items[-1].tenant_id) if len(rows) > limit else None)


@router.post("/api-keys", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated,
             summary="Create an API key for a tenant, or an admin key (admin)")
def create_api_key(admin: AdminPrincipal, db: DbConn, body: ApiKeyCreate) -> ApiKeyCreated:
    key = auth.create_key(db, tenant_id=body.tenant_id, is_admin=body.admin, can_write=body.can_write,
                          name=body.name)
    log().info("api_key_created", key_id=key.key_id, tenant_id=key.tenant_id, admin=key.is_admin,
              can_write=key.can_write, by=admin.key_id)
    return ApiKeyCreated(key_id=key.key_id, tenant_id=key.tenant_id, admin=key.is_admin, can_write=key.can_write,
                         name=key.name, created_at_ms=key.created_at_ms, key=key.token)


@router.get("/api-keys", response_model=list[ApiKeyPublic], summary="Live API keys, without secrets (admin)")
def list_api_keys(_admin: AdminPrincipal, db: DbConn,
                  tenant_id: FilterId = None,
                  limit: Limit = DEFAULT_PAGE) -> list[ApiKeyPublic]:
    rows = db.execute("SELECT key_id, tenant_id, is_admin, can_write, name, created_at_ms FROM api_keys "
                      "WHERE revoked_at_ms IS NULL AND (%(t)s::text IS NULL OR tenant_id = %(t)s) "
                      "ORDER BY created_at_ms, key_id LIMIT %(n)s", {"t": tenant_id, "n": limit}).fetchall()
    return [ApiKeyPublic(key_id=r[0], tenant_id=r[1], admin=r[2], can_write=r[3], name=r[4], created_at_ms=r[5])
            for r in rows]


@router.delete("/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Revoke an API key (admin)")
def revoke_api_key(admin: AdminPrincipal, db: DbConn,
                   key_id: Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")]) -> None:
    if not auth.revoke_key(db, key_id):
        raise NotFound(f"no live API key {key_id!r}")
    log().info("api_key_revoked", key_id=key_id, by=admin.key_id)
