"""The gate's events as typed, frozen records: what the services' decision cores take and return, so no core
ever sees a raw Avro dict. Adapters decode (`Event.from_record(codec().decode(...)[1])`) and encode
(`codec().encode(type(event).__name__, event.to_record())`). The ledger's entries have their own records
(ledgergate.shared.ledger.entries); BudgetCommand is in ledgergate.commands.

Each class's fields are its schema's fields, in the schema's order (tests/unit/test_events.py checks every
one against schemas/avro/), so a schema change that the records miss fails a test rather than a request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Self


def plain(value: Any) -> Any:
    """A record (or anything inside one) as the plain dicts and lists the Avro writer takes."""
    if isinstance(value, _Record):
        return value.to_record()
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


# Per record class: (field, holds records or tuples?) once. Only those fields need converting, and every
# hop converts a record or two per message (a generic walk cost more than the Avro encoding; measured).
_LAYOUTS: dict[type[Any], tuple[tuple[str, bool], ...]] = {}
_NESTED_TYPES = ("tuple[", "Usage", "ChatMessage", "PlanCandidate", "PlanRejection", "Deployment", "Signature",
                 "FailOpenCall", "CacheHit", "TemplateRef")


def _layout(cls: type[Any]) -> tuple[tuple[str, bool], ...]:
    layout = tuple((f.name, any(t in str(f.type) for t in _NESTED_TYPES)) for f in fields(cls))
    _LAYOUTS[cls] = layout
    return layout


class _Record:
    """to_record / from_record for flat records; nested ones override from_record."""

    __slots__ = ()

    def to_record(self) -> dict[str, Any]:
        layout = _LAYOUTS.get(type(self)) or _layout(type(self))
        return {name: plain(getattr(self, name)) if nested else getattr(self, name) for name, nested in layout}

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> Self:
        return cls(**rec)


@dataclass(frozen=True, slots=True)
class Usage(_Record):
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int


@dataclass(frozen=True, slots=True)
class ChatMessage(_Record):
    role: str
    content: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Signature(_Record):
    """Which credential signed an event, and its HMAC-SHA256 (ledgergate.signing)."""

    key_id: str
    hmac_sha256: str


def _signature(rec: Mapping[str, Any]) -> Signature | None:
    # .get: a record built by hand (tests, tools) may leave the optional field out.
    signature = rec.get("signature")
    return None if signature is None else Signature(**signature)


@dataclass(frozen=True, slots=True)
class TemplateRef(_Record):
    """A registered prompt template and the values of its variables (ledgergate.templates)."""

    template_id: str
    version: int
    variables: Mapping[str, str] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.template_id}@{self.version}"


@dataclass(frozen=True, slots=True)
class InvocationRequested(_Record):
    request_id: str
    tenant_id: str
    workflow_id: str
    agent_id: str
    requested_model: str
    messages: tuple[ChatMessage, ...]
    tools_json: str | None
    max_output_tokens: int
    priority: str
    region: str | None
    max_cost_micro_usd: int | None
    labels: Mapping[str, str]
    requested_at_ms: int
    trace_context: Mapping[str, str]
    # The answer-changing sampling parameters (ledgergate.ids.SAMPLING_PARAMS), sorted-key JSON; before the
    # signature, as in the schema.
    sampling_json: str | None = None
    template: TemplateRef | None = None  # rendered by the token-counter as the first message
    signature: Signature | None = None

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> Self:
        template = rec.get("template")
        return cls(**{**rec, "messages": tuple(ChatMessage(**m) for m in rec["messages"]),
                      "signature": _signature(rec), "template": None if template is None else TemplateRef(**template)})


@dataclass(frozen=True, slots=True)
class InvocationCounted(_Record):
    """A request with its token counts, or with the reason it is invalid (the counts are then 0)."""

    request_id: str
    tenant_id: str
    workflow_id: str
    agent_id: str
    requested_model: str
    max_output_tokens: int
    priority: str
    region: str | None
    max_cost_micro_usd: int | None
    labels: Mapping[str, str]
    requested_at_ms: int
    trace_context: Mapping[str, str]
    input_tokens: int
    accounting_input_tokens: int
    encoding: str
    estimated_output_tokens: int
    request_sha256: str
    invalid_reason: str | None
    counted_at_ms: int
    invalid_code: str | None = None  # with invalid_reason: the DENY reason; None means invalid_request
    cache_key: str = ""  # the response cache's key of the request (shared/cache.py), "" when not computed
    cache_deterministic: bool = False  # temperature 0 and one choice: a repeatable answer
    template: str = ""  # <template_id>@<version> of the request's prompt template, "" for none


@dataclass(frozen=True, slots=True)
class PlanCandidate(_Record):
    model: str
    tier: str
    estimated_input_micro_usd: int
    estimated_output_micro_usd: int
    estimated_cost_micro_usd: int
    granted_output_tokens: int
    price_version: str
    # Budget scopes beyond the tenant and workflow this candidate must fit, TYPE:id (REGION:eu-west,
    # CANARY:<workflow>/<canary>): the reservation holds on them too.
    scopes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PlanRejection(_Record):
    reason: str
    detail: str
    retry_after_ms: int | None
    binding_scope: str


@dataclass(frozen=True, slots=True)
class CacheHit(_Record):
    """The tenant's cached answer a plan serves the request from (docs/decisions/0013)."""

    entry_id: str
    key: str
    model: str
    input_tokens: int
    output_tokens: int
    avoided_micro_usd: int


@dataclass(frozen=True, slots=True)
class InvocationPlanned(_Record):
    """The counted request with the policy's ordered candidates (best first), or its rejection."""

    request_id: str
    tenant_id: str
    workflow_id: str
    agent_id: str
    requested_model: str
    max_output_tokens: int
    priority: str
    region: str | None
    max_cost_micro_usd: int | None
    labels: Mapping[str, str]
    requested_at_ms: int
    trace_context: Mapping[str, str]
    input_tokens: int
    accounting_input_tokens: int
    encoding: str
    estimated_output_tokens: int
    request_sha256: str
    invalid_reason: str | None
    candidates: tuple[PlanCandidate, ...]
    rejection: PlanRejection | None
    policy_version: int
    planned_at_ms: int
    invalid_code: str | None = None
    # The tenant's fail-open envelope (Policy.fail_open_micro_usd_per_min), carried to the decision.
    fail_open_micro_usd_per_min: int = 0
    cache_key: str = ""  # the counted request's, when the tenant's cache rule lets it be served and stored
    cache_deterministic: bool = False
    cache_hit: CacheHit | None = None  # answered from the cache: no candidates, nothing to reserve
    template: str = ""  # carried from the counted request

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> Self:
        rejection, hit = rec["rejection"], rec.get("cache_hit")
        return cls(**{**rec, "candidates": tuple(PlanCandidate(**{**c, "scopes": tuple(c.get("scopes") or ())})
                                                       for c in rec["candidates"]),
                      "rejection": None if rejection is None else PlanRejection(**rejection),
                      "cache_hit": None if hit is None else CacheHit(**hit)})


@dataclass(frozen=True, slots=True)
class Deployment(_Record):
    model: str
    endpoint: str
    region: str


@dataclass(frozen=True, slots=True)
class GateDecision(_Record):
    request_id: str
    tenant_id: str
    workflow_id: str
    agent_id: str
    outcome: str
    requested_model: str
    deployment: Deployment | None
    granted_output_tokens: int
    reserved_micro_usd: int
    remaining_micro_usd: int
    reason_codes: tuple[str, ...]
    binding_scope: str | None
    retry_after_ms: int | None
    reservation_id: str | None
    ledger_entry_id: str
    policy_version: int
    requested_at_ms: int
    decided_at_ms: int
    # The request's W3C trace context as the ledger entry that decided it carried it (docs: README, Traces).
    trace_context: Mapping[str, str] = field(default_factory=dict)
    # What the SDK may spend per minute without a decision while the gate is away; 0 forbids it.
    fail_open_micro_usd_per_min: int = 0
    # The response cache (docs/decisions/0013): send the answer's text with the completion; or, on CACHE_HIT,
    # the entry and its text (None when the entry was gone: ask again with the cache bypassed).
    cache_store: bool = False
    cache_entry_id: str | None = None
    cached_response: str | None = None
    avoided_micro_usd: int = 0

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> Self:
        deployment = rec["deployment"]
        return cls(**{**rec, "reason_codes": tuple(rec["reason_codes"]),
                      "deployment": None if deployment is None else Deployment(**deployment)})


@dataclass(frozen=True, slots=True)
class FailOpenCall(_Record):
    """A call the SDK let through without a decision (the gate was away), reported once it is back."""

    workflow_id: str
    agent_id: str
    requested_model: str
    called_at_ms: int


def _fail_open(rec: Mapping[str, Any]) -> FailOpenCall | None:
    found = rec.get("fail_open")
    return None if found is None else FailOpenCall(**found)


@dataclass(frozen=True, slots=True)
class InvocationCompleted(_Record):
    request_id: str
    tenant_id: str
    model: str
    status: str
    usage: Usage | None
    completion_text: str | None
    completed_at_ms: int
    trace_context: Mapping[str, str]
    agent_id: str = ""
    # Before the signature, as in the schema: the verifier's fast path wants the signature last.
    fail_open: FailOpenCall | None = None
    signature: Signature | None = None

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> Self:
        usage = rec["usage"]
        return cls(**{**rec, "usage": None if usage is None else Usage(**usage), "signature": _signature(rec),
                      "fail_open": _fail_open(rec)})


@dataclass(frozen=True, slots=True)
class UsageMetered(_Record):
    request_id: str
    tenant_id: str
    model: str
    status: str
    usage: Usage
    estimated: bool
    counted_output_tokens: int | None
    drift_ppm: int
    completed_at_ms: int
    metered_at_ms: int
    workflow_id: str = ""
    fail_open: FailOpenCall | None = None
    response_text: str | None = None  # for the response cache, when the completion carried it

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> Self:
        return cls(**{**rec, "usage": Usage(**rec["usage"]), "fail_open": _fail_open(rec)})


@dataclass(frozen=True, slots=True)
class BudgetAlert(_Record):
    alert_id: str
    tenant_id: str
    scope_type: str
    scope_id: str
    period_id: str
    threshold_pct: int
    spent_micro_usd: int
    limit_micro_usd: int
    crossed_at_ms: int
    # ANOMALY alerts (services/anomaly/): the rate that left its band; THRESHOLD alerts keep the defaults.
    kind: str = "THRESHOLD"
    metric: str = ""
    observed_per_min: int = 0
    expected_per_min: int = 0
    band_upper_per_min: int = 0
    window_start_ms: int = 0
    window_ms: int = 0


@dataclass(frozen=True, slots=True)
class AuditRecord(_Record):
    audit_id: str
    tenant_id: str
    kind: str
    event_type: str
    subject_id: str
    source_topic: str
    source_partition: int
    source_offset: int
    event_sha256: str
    summary_json: str
    chain_partition: int
    chain_sequence: int
    prev_hash: str
    hash: str
    recorded_at_ms: int


EVENTS: tuple[type[_Record], ...] = (InvocationRequested, InvocationCounted, InvocationPlanned, GateDecision,
                                     InvocationCompleted, UsageMetered, BudgetAlert, AuditRecord)
