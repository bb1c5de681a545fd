"""A tenant's prompt templates (ledgergate.templates): register a version (a write key of the tenant, or an
admin key), list them and read one (any key of the tenant). The API is the writer of prompt.templates and
answers a registration once Kafka has it, so a 201 means the token-counter will render it; versions are
immutable (services/api/templates.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status

from ledgergate.services.api.deps import CurrentPrincipal, DbConn, ReadableTenant, WritableTenant
from ledgergate.services.api.errors import NotFound
from ledgergate.services.api.models import (
    DEFAULT_PAGE,
    TEMPLATE_VERSION_MAX,
    Page,
    TemplateCreate,
    TemplatePublic,
)
from ledgergate.services.api.paging import Cursor, FilterId, IdPath, Limit, decode_cursor, encode_cursor
from ledgergate.services.api.templates import StoredTemplate, TemplateRegistry

router = APIRouter(prefix="/v1/tenants/{tenant_id}/templates", tags=["templates"])
VersionPath = Annotated[int, Path(ge=1, le=TEMPLATE_VERSION_MAX, description="a version, 1..2^31-1")]


def get_registry(request: Request) -> TemplateRegistry:
    registry: TemplateRegistry = request.app.state.templates
    return registry


def _public(t: StoredTemplate) -> TemplatePublic:
    return TemplatePublic(tenant_id=t.tenant_id, template_id=t.template_id, version=t.version, ref=t.ref,
                          role=t.role, text=t.text, variables=list(t.variables), registered_at_ms=t.registered_at_ms,
                          registered_by=t.registered_by)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TemplatePublic,
             responses={200: {"model": TemplatePublic, "description": "the version exists with this text and role"}},
             summary="Register a template version (201); the same again answers 200, another text or role 409")
def register_template(tenant_id: WritableTenant, body: TemplateCreate, db: DbConn, request: Request,
                      response: Response, principal: CurrentPrincipal) -> TemplatePublic:
    stored, created = get_registry(request).register(db, tenant_id, body.template_id, body.version, body.text,
                                                     body.role, f"api:{principal.key_id}")
    if not created:
        response.status_code = status.HTTP_200_OK
    return _public(stored)


@router.get("", response_model=Page[TemplatePublic],
            summary="The tenant's template versions, by template id and version (text included)")
def list_templates(tenant_id: ReadableTenant, request: Request, template_id: FilterId = None,
                   limit: Limit = DEFAULT_PAGE, cursor: Cursor = None) -> Page[TemplatePublic]:
    after: tuple[str, int] | None = None
    if cursor:
        at_id, at_version = decode_cursor(cursor, (str, int))
        after = (at_id, at_version)
    versions = get_registry(request).templates(tenant_id)
    keys = sorted(k for k in versions if (template_id is None or k[0] == template_id) and (after is None or k > after))
    page = keys[:limit]
    return Page(items=[_public(versions[k]) for k in page],
                next_cursor=encode_cursor(*page[-1]) if len(keys) > limit else None)


@router.get("/{template_id}/{version}", response_model=TemplatePublic, summary="One template version")
def get_template(tenant_id: ReadableTenant, template_id: IdPath, version: VersionPath,
                 request: Request) -> TemplatePublic:
    stored = get_registry(request).get(tenant_id, template_id, version)
    if stored is None:
        raise NotFound(f"tenant {tenant_id} has no template {template_id}@{version}")
    return _public(stored)
