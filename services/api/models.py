"""Request and response models. Inputs are `*Create`/`*Update` (extra keys forbidden, every field bounded);
outputs are `*Public` and never carry secrets, except `ApiKeyCreated`, which shows a new key once."""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from ledgergate import templates
from ledgergate.ids import ID_PATTERN, MAX_ID_CHARS, MAX_NAME_CHARS, id_problem, name_problem

# The budget-manager's bound (a billion dollars): the API refuses what the ledger would reject.
from ledgergate.shared.ledger.decide import MAX_AMOUNT_MICRO_USD

MAX_PAGE = 500
DEFAULT_PAGE = 100
MAX_REASON_CHARS = 256


def printable(max_chars: int = MAX_NAME_CHARS, *, required: bool = True) -> AfterValidator:
    """ledgergate.ids' name rule as a pydantic validator: printable text (no NUL, control, format or surrogate
    character) of at most `max_chars`. The error is the rule's own sentence; pydantic's loc names the field."""
    def check(value: str | None) -> str | None:
        if value is not None and (problem := name_problem("value", value, required=required, max_chars=max_chars)):
            raise PydanticCustomError("invalid_text", problem)
        return value
    return AfterValidator(check)


# Ids (tenant, workflow, request, agent): ledgergate.ids' one rule. pydantic's pattern engine anchors `$` at the
# very end, so a trailing newline is refused too.
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)]
# strict: money is a JSON integer; "100" or 1.0 is a client bug to report, not a value to coerce.
Amount = Annotated[int, Field(strict=True, ge=0, le=MAX_AMOUNT_MICRO_USD,
                              description="integer micro-USD (1 USD = 10^6)")]
PositiveAmount = Annotated[int, Field(strict=True, ge=1, le=MAX_AMOUNT_MICRO_USD,
                                      description="integer micro-USD (1 USD = 10^6)")]
# Free text that reaches the ledger (a command's reason): printable, may be empty. PostgreSQL jsonb cannot
# hold NUL, so one NUL here would stop the projector on that entry.
Reason = Annotated[str, Field(max_length=MAX_REASON_CHARS), printable(MAX_REASON_CHARS, required=False)]
Scope = Literal["TENANT", "WORKFLOW", "REGION", "CANARY"]
Region = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
# The ids each scope takes (a CANARY is <workflow_id>/<canary> under its workflow).
_SCOPE_IDS: dict[str, tuple[str, ...]] = {"TENANT": (), "WORKFLOW": ("workflow_id",), "REGION": ("region",),
                                          "CANARY": ("workflow_id", "canary")}
Outcome = Literal["ALLOW", "DOWNGRADE", "DENY", "THROTTLE", "CACHE_HIT"]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _ScopedInput(_Input):
    scope: Scope = "TENANT"
    workflow_id: Id | None = Field(default=None, description="required for WORKFLOW and CANARY scopes")
    region: Region | None = Field(default=None, description="required for REGION scope (a deployment region)")
    canary: Id | None = Field(default=None, description="required for CANARY scope, with its workflow_id")
    reason: Reason = ""

    @model_validator(mode="after")
    def _scope_matches(self) -> _ScopedInput:
        needed = _SCOPE_IDS[self.scope]
        given = tuple(name for name in ("workflow_id", "region", "canary") if getattr(self, name) is not None)
        if given != needed:
            wants = " and ".join(needed) or "no id"
            raise ValueError(f"scope {self.scope} takes {wants}; given: {', '.join(given) or 'none'} "
                             "(workflow_id: WORKFLOW, CANARY; region: REGION; canary: CANARY)")
        return self

    def scope_id(self, tenant_id: str) -> str:
        if self.scope == "CANARY":
            return f"{self.workflow_id}/{self.canary}"
        return self.region or self.workflow_id or tenant_id


class BudgetCreate(_ScopedInput):
    """Set a scope's limit (replaces the previous one)."""

    limit_micro_usd: Amount


class BudgetUpdate(_ScopedInput):
    """Raise or lower a scope's limit by an amount."""

    amount_micro_usd: PositiveAmount


class CreditCreate(_ScopedInput):
    """Grant credit in the current period, on top of the limit."""

    amount_micro_usd: PositiveAmount


class VoidCreate(_Input):
    reason: Reason = ""


class CommandAccepted(BaseModel):
    """The command is durably on budget.commands; the budget-manager applies it asynchronously and the
    read model shows the effect once the projector has caught up."""

    command_id: str
    tenant_id: str
    kind: str
    status: Literal["accepted"] = "accepted"


class PolicyPublic(BaseModel):
    tenant_id: str
    policy_version: int = Field(description="0: the tenant never set a policy and runs on the default")
    document: dict[str, Any] = Field(description="the tenant's document as set (overrides of the default)")
    effective: dict[str, Any] = Field(description="the document applied over the API's default policy")
    recorded_at_ms: int | None


class BalancePublic(BaseModel):
    scope_type: str
    scope_id: str
    period_id: str
    limit_micro_usd: int | None = Field(description="null when the scope has no limit")
    credit_micro_usd: int
    posted_micro_usd: int
    pending_micro_usd: int
    remaining_micro_usd: int | None = Field(description="limit + credit - posted - pending; null when unlimited")
    burn_rate_micro_usd_per_day: int = Field(description="posted divided by the days elapsed in the period")
    updated_at_ms: int


class BalancesPublic(BaseModel):
    tenant_id: str
    period_id: str
    days_elapsed: int = Field(description="days of the period begun so far (the first day counts as 1)")
    items: list[BalancePublic]


class LedgerEntryPublic(BaseModel):
    entry_id: str
    entry_type: str
    period_id: str
    request_id: str | None
    workflow_id: str | None
    model: str | None
    amount_micro_usd: int
    recorded_at_ms: int
    body: dict[str, Any]


class DecisionPublic(BaseModel):
    request_id: str
    ledger_entry_id: str
    tenant_id: str
    workflow_id: str
    agent_id: str
    outcome: str
    requested_model: str
    model: str | None
    binding_scope: str | None
    reason_codes: list[str]
    reserved_micro_usd: int
    granted_output_tokens: int | None
    requested_at_ms: int
    decided_at_ms: int
    body: dict[str, Any]


class SpendRow(BaseModel):
    key: str
    requests: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    spend_micro_usd: int
    cache_hits: int = Field(default=0, description="requests answered from the response cache (group_by model, "
                                                   "workflow, day; 0 for tier, fail_open and template)")
    saved_micro_usd: int = Field(default=0, description="what those cache hits avoided (same groupings)")


class SpendReport(BaseModel):
    tenant_id: str
    group_by: str
    from_ms: int
    to_ms: int
    total_micro_usd: int
    cache_hits: int = Field(description="requests answered from the response cache in the range, any grouping")
    saved_micro_usd: int = Field(description="what those cache hits avoided: no money moved for them")
    rows: list[SpendRow]


class AlertPublic(BaseModel):
    alert_id: str
    scope_type: str
    scope_id: str
    period_id: str
    threshold_pct: int
    spent_micro_usd: int
    limit_micro_usd: int
    crossed_at_ms: int


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class TenantPublic(BaseModel):
    tenant_id: str


class ApiKeyCreate(_Input):
    tenant_id: Id | None = None
    admin: bool = False
    can_write: bool = Field(default=False, description="tenant keys only: may send budget and policy commands")
    name: Annotated[str, Field(max_length=MAX_NAME_CHARS), printable(required=False)] = ""

    @model_validator(mode="after")
    def _one_kind(self) -> ApiKeyCreate:
        if self.admin == (self.tenant_id is not None):
            raise ValueError("give either tenant_id or admin=true, not both")
        return self


class ApiKeyPublic(BaseModel):
    key_id: str
    tenant_id: str | None
    admin: bool
    can_write: bool
    name: str
    created_at_ms: int


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(description="the secret key; shown only in this response, store it now")


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


# --- signing credentials (services/api/credentials.py) ------------------------------------------------------

AuthModeIn = Literal["OPTIONAL", "REQUIRED"]


class CredentialCreate(_Input):
    """Issue a signing credential for the tenant, or for one of its agents."""

    agent_id: Id | None = Field(default=None, description="only requests and completions naming this agent; "
                                "absent: any agent of the tenant")
    name: Annotated[str, Field(max_length=MAX_NAME_CHARS), printable(required=False)] = ""


class CredentialPublic(BaseModel):
    key_id: str
    agent_id: str | None = Field(description="null: any agent of the tenant")
    name: str
    created_at_ms: int
    created_by: str


class CredentialCreated(CredentialPublic):
    secret: str = Field(description="64 hex digits; shown only in this response, store it now. Sign with "
                        "ledgergate.signing (GateClient(credential=Credential(key_id, secret)))")
    version: int = Field(description="the tenant's credential version this change made")


class CredentialsPublic(BaseModel):
    tenant_id: str
    mode: AuthModeIn | None = Field(description="null: the gate's default (LEDGERGATE_AUTH_DEFAULT_MODE)")
    version: int = Field(description="0: the tenant never had a credential change")
    items: list[CredentialPublic]


class AuthModeUpdate(_Input):
    mode: AuthModeIn | None = Field(description="REQUIRED: unsigned requests are refused; OPTIONAL: they pass "
                                    "(while clients migrate); null: the gate's default")


class AuthModePublic(BaseModel):
    tenant_id: str
    mode: AuthModeIn | None
    version: int


class CredentialEventPublic(BaseModel):
    version: int
    kind: Literal["ISSUED", "REVOKED", "MODE_SET"]
    key_id: str | None
    mode: AuthModeIn | None = Field(description="the tenant's mode after the change")
    by: str
    at_ms: int


# --- prompt templates (services/api/templates.py) -----------------------------------------------------------

TemplateRole = Literal["system", "user", "developer"]
assert get_args(TemplateRole) == templates.ROLES, "TemplateRole must list ledgergate.templates.ROLES"
TEMPLATE_VERSION_MAX = 2**31 - 1  # the PromptTemplate record's Avro int


def _template_id(value: str) -> str:
    if problem := id_problem("template_id", value):
        raise PydanticCustomError("invalid_id", problem)
    return value


_TEMPLATE_WHITESPACE = frozenset("\n\r\t")


def _template_text(value: str) -> str:
    """ledgergate.templates' rule, and the API's own over every string it accepts: printable text, here with
    newlines and tabs (a prompt has lines). No control or format character (an ANSI escape, a bidi override)
    reaches the gate's prompts or a listing through a template."""
    if not value.isprintable():  # the common case, a line break, costs one more pass
        for at, char in enumerate(value):
            if not char.isprintable() and char not in _TEMPLATE_WHITESPACE:
                raise PydanticCustomError("invalid_text", f"a template's text holds the non-printable character "
                                          f"{char!r} at character {at}: printable text, newlines and tabs only")
    try:
        templates.variables(value)
    except templates.TemplateError as exc:  # what is wrong and where: "a lone '{' at character 3: ..."
        raise PydanticCustomError("invalid_template", str(exc)) from None
    return value


class TemplateCreate(_Input):
    """Register a version of a prompt template; a version is immutable (a change is a new version)."""

    template_id: Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS), AfterValidator(_template_id)]
    version: Annotated[int, Field(strict=True, ge=1, le=TEMPLATE_VERSION_MAX)]
    text: Annotated[str, Field(min_length=1, max_length=templates.TEMPLATE_CHARS_MAX,
                               description="`{name}` marks a variable (lower case, digits, _), `{{` and `}}` a "
                                           f"literal brace; at most {templates.VARIABLES_MAX} variables"),
                    AfterValidator(_template_text)]
    role: TemplateRole = Field(default="system", description="the role of the message it renders to")


class TemplatePublic(BaseModel):
    tenant_id: str
    template_id: str
    version: int
    ref: str = Field(description="<template_id>@<version>: what ledger entries carry and group_by=template shows")
    role: str
    text: str
    variables: list[str] = Field(description="the variables its text names, in order of first use")
    registered_at_ms: int
    registered_by: str
