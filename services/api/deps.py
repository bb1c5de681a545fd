"""Annotated dependencies: a pooled database connection, the command publisher, the caller's principal,
and the tenant checks every tenant route goes through.

FastAPI caches a dependency per request, so the key lookup and the route share one pooled connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import psycopg
from fastapi import Depends, Path, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import ConnectionPool

from ledgergate.ids import ID_PATTERN, MAX_ID_CHARS
from ledgergate.services.api.commands import CommandPublisher
from ledgergate.services.api.errors import Forbidden, Unauthorized
from ledgergate.shared import apikeys as auth
from ledgergate.shared.settings import ApiSettings

# auto_error=False: a missing key must be our 401 JSON, not FastAPI's 403 "Not authenticated".
_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <api key>`")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the API key, alternatively")


def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


def get_db(request: Request) -> Iterator[psycopg.Connection]:
    pool: ConnectionPool = request.app.state.pool
    # The context commits on success and rolls back on an exception, then returns the connection.
    with pool.connection() as conn:
        yield conn


def get_publisher(request: Request) -> CommandPublisher:
    publisher: CommandPublisher = request.app.state.publisher
    return publisher


Settings = Annotated[ApiSettings, Depends(get_settings)]
DbConn = Annotated[psycopg.Connection, Depends(get_db)]
Publisher = Annotated[CommandPublisher, Depends(get_publisher)]


def api_token(bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
              api_key: Annotated[str | None, Depends(_api_key_header)]) -> str:
    """The presented key. Missing or malformed keys are refused here, before a pooled connection is taken,
    so anonymous traffic cannot occupy the database pool."""
    token = bearer.credentials if bearer is not None else api_key
    if not token:
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`")
    if not auth.looks_like_token(token):
        raise Unauthorized("invalid or revoked API key")
    return token


# `token` comes first: FastAPI solves sub-dependencies in parameter order.
def get_principal(request: Request, token: Annotated[str, Depends(api_token)], db: DbConn) -> auth.Principal:
    principal = auth.lookup(db, token)
    if principal is None:
        raise Unauthorized("invalid or revoked API key")
    request.state.key_id = principal.key_id
    return principal


CurrentPrincipal = Annotated[auth.Principal, Depends(get_principal)]

TenantPath = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN, description="tenant id")]


def _bind_tenant(request: Request, tenant_id: str) -> None:
    # Read by the access log line (services/api/middleware.py).
    request.state.tenant_id = tenant_id


def readable_tenant(request: Request, tenant_id: TenantPath, principal: CurrentPrincipal) -> str:
    if not principal.may_read(tenant_id):
        raise Forbidden(f"this API key may not access tenant {tenant_id!r}")
    _bind_tenant(request, tenant_id)
    return tenant_id


def writable_tenant(request: Request, tenant_id: TenantPath, principal: CurrentPrincipal) -> str:
    if not principal.may_read(tenant_id):
        raise Forbidden(f"this API key may not access tenant {tenant_id!r}")
    if not principal.may_write(tenant_id):
        raise Forbidden("this API key is read-only; budget and policy changes need a key with write access")
    _bind_tenant(request, tenant_id)
    return tenant_id


def admin_principal(principal: CurrentPrincipal) -> auth.Principal:
    if not principal.is_admin:
        raise Forbidden("this route needs an admin API key")
    return principal


ReadableTenant = Annotated[str, Depends(readable_tenant)]
WritableTenant = Annotated[str, Depends(writable_tenant)]
AdminPrincipal = Annotated[auth.Principal, Depends(admin_principal)]
