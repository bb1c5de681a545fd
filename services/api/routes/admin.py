"""Admin-only routes: the tenants the read model knows, and API keys (create, list, revoke)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

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
from ledgergate.shared import apikeys as auth
from ledgergate.shared import readmodel

router = APIRouter(prefix="/v1", tags=["admin"])

@router.get("/tenants", response_model=Page[TenantPublic], summary="Every tenant in the read model (admin)")
def list_tenants(_admin: AdminPrincipal, db: DbConn, limit: Limit = DEFAULT_PAGE,
                 cursor: Cursor = None) -> Page[TenantPublic]:
    after = decode_cursor(cursor, (str,))[0] if cursor else ""
    rows = readmodel.tenant_ids(db, after=after, limit=limit)
    items = [TenantPublic(tenant_id=t) for t in rows.items]
    return Page(items=items, next_cursor=encode_cursor(items[-1].tenant_id) if rows.more else None)


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
    return [ApiKeyPublic(key_id=k.key_id, tenant_id=k.tenant_id, admin=k.is_admin, can_write=k.can_write,
                         name=k.name, created_at_ms=k.created_at_ms)
            for k in readmodel.live_api_keys(db, tenant_id=tenant_id, limit=limit)]


@router.delete("/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Revoke an API key (admin)")
def revoke_api_key(admin: AdminPrincipal, db: DbConn,
                   key_id: Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")]) -> None:
    if not auth.revoke_key(db, key_id):
        raise NotFound(f"no live API key {key_id!r}")
    log().info("api_key_revoked", key_id=key_id, by=admin.key_id)
