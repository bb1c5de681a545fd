"""A tenant's signing credentials (invariant 5): issue (the secret shown once), list without secrets,
revoke, the auth mode, and the history of changes. Writes need a write key of the tenant (or an admin
key); each is one locked PostgreSQL transaction that publishes the tenant's state to tenant.credentials
before it commits (services/api/credentials.py), so a 2xx means the token-counter will see it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from ledgergate.services.api import credentials
from ledgergate.services.api.deps import CurrentPrincipal, DbConn, Publisher, ReadableTenant, Settings, WritableTenant
from ledgergate.services.api.models import (
    DEFAULT_PAGE,
    AuthModePublic,
    AuthModeUpdate,
    CredentialCreate,
    CredentialCreated,
    CredentialEventPublic,
    CredentialPublic,
    CredentialsPublic,
    Page,
)
from ledgergate.services.api.paging import Cursor, Limit, decode_cursor, encode_cursor
from ledgergate.shared import readmodel
from ledgergate.signing import KEY_ID_PATTERN, MAX_KEY_ID_CHARS

router = APIRouter(prefix="/v1/tenants/{tenant_id}/credentials", tags=["credentials"])
CredentialIdPath = Annotated[str, Path(max_length=MAX_KEY_ID_CHARS, pattern=KEY_ID_PATTERN,
                                       description="a credential's key id, lgc_<sequence>_<16 hex>")]


def _by(principal: CurrentPrincipal) -> str:
    return f"api:{principal.key_id}"


@router.post("", status_code=status.HTTP_201_CREATED, response_model=CredentialCreated,
             summary="Issue a signing credential; its secret is in this response only")
def issue_credential(tenant_id: WritableTenant, body: CredentialCreate, db: DbConn, publisher: Publisher,
                     settings: Settings, principal: CurrentPrincipal) -> CredentialCreated:
    issued = credentials.issue(db, publisher, settings.master_key_bytes(), tenant_id, body.agent_id or "",
                               body.name, _by(principal))
    return CredentialCreated(key_id=issued.key_id, agent_id=issued.agent_id or None, name=issued.name,
                             created_at_ms=issued.created_at_ms, created_by=_by(principal),
                             secret=issued.secret_hex, version=issued.version)


@router.get("", response_model=CredentialsPublic, summary="The tenant's auth mode and live credentials (no secrets)")
def list_credentials(tenant_id: ReadableTenant, db: DbConn) -> CredentialsPublic:
    state = readmodel.credential_state(db, tenant_id)
    return CredentialsPublic(tenant_id=tenant_id, mode=state.mode, version=state.version,
                             items=[CredentialPublic(key_id=k.key_id, agent_id=k.agent_id or None, name=k.name,
                                                     created_at_ms=k.created_at_ms, created_by=k.created_by)
                                    for k in state.keys])


@router.delete("/{credential_id}", status_code=status.HTTP_204_NO_CONTENT,
               summary="Revoke a credential; the token-counter refuses it once the change reaches it")
def revoke_credential(tenant_id: WritableTenant, credential_id: CredentialIdPath, db: DbConn, publisher: Publisher,
                      principal: CurrentPrincipal) -> None:
    credentials.revoke(db, publisher, tenant_id, credential_id, _by(principal))


@router.put("/mode", response_model=AuthModePublic, summary="Require signed requests, or accept unsigned ones")
def set_auth_mode(tenant_id: WritableTenant, body: AuthModeUpdate, db: DbConn, publisher: Publisher,
                  principal: CurrentPrincipal) -> AuthModePublic:
    version = credentials.set_mode(db, publisher, tenant_id, body.mode, _by(principal))
    return AuthModePublic(tenant_id=tenant_id, mode=body.mode, version=version)


@router.get("/events", response_model=Page[CredentialEventPublic],
            summary="Every issue, revoke and mode change of the tenant, newest first")
def list_credential_events(tenant_id: ReadableTenant, db: DbConn, limit: Limit = DEFAULT_PAGE,
                           cursor: Cursor = None) -> Page[CredentialEventPublic]:
    before = decode_cursor(cursor, (int,))[0] if cursor else None
    rows = readmodel.credential_events(db, tenant_id, before_version=before, limit=limit)
    items = [CredentialEventPublic(version=r.version, kind=r.kind, key_id=r.key_id, mode=r.mode,
                                   by=r.by_whom, at_ms=r.at_ms) for r in rows.items]
    return Page(items=items, next_cursor=encode_cursor(items[-1].version) if rows.more else None)
