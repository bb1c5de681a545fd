"""Ledger entries as frozen dataclasses, one per Avro schema; field names equal the schema's.

tests/unit/test_ledger_entries.py checks every class against its .avsc, so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ledgergate.events import Usage


@dataclass(frozen=True, slots=True)
class _Entry:
    """Fields every ledger entry starts with, in the schemas' order."""

    entry_id: str
    tenant_id: str
    period_id: str
    recorded_at_ms: int


@dataclass(frozen=True, slots=True)
class _ReservationEntry(_Entry):
    """A reservation's entries: the request id is the reservation id."""

    request_id: str
    workflow_id: str


@dataclass(frozen=True, slots=True)
class BudgetLimitSet(_Entry):
    scope_type: str
    scope_id: str
    change: str
    limit_micro_usd: int
    previous_limit_micro_usd: int
    command_id: str


@dataclass(frozen=True, slots=True)
class CreditGranted(_Entry):
    scope_type: str
    scope_id: str
    amount_micro_usd: int
    reason: str
    command_id: str


@dataclass(frozen=True, slots=True)
class PeriodOpened(_Entry):
    starts_at_ms: int
    ends_at_ms: int


@dataclass(frozen=True, slots=True)
class PolicyChanged(_Entry):
    policy_version: int
    policy_json: str
    command_id: str


@dataclass(frozen=True, slots=True)
class ReservationPlaced(_ReservationEntry):
    agent_id: str
    requested_model: str
    model: str
    tier: str
    candidate_index: int
    amount_micro_usd: int
    input_tokens: int
    granted_output_tokens: int
    price_version: str
    policy_version: int
    priority: str
    region: str | None
    expires_at_ms: int
    request_sha256: str
    requested_at_ms: int
    tenant_remaining_micro_usd: int
    fail_open_micro_usd_per_min: int = 0  # the tenant policy's, for the decision (ledgergate.admission)
    cache_store: bool = False  # the tenant's cache rule stores this answer: the decision asks for its text
    template: str = ""  # the request's prompt template, <template_id>@<version>: spend by template
    scopes: tuple[str, ...] = ()  # scopes beyond tenant and workflow, TYPE:id (state.py: balance_scopes)


@dataclass(frozen=True, slots=True)
class ReservationDenied(_ReservationEntry):
    agent_id: str
    requested_model: str
    reason: str
    detail: str
    binding_scope: str
    retry_after_ms: int | None
    policy_version: int
    request_sha256: str
    requested_at_ms: int
    tenant_remaining_micro_usd: int
    fail_open_micro_usd_per_min: int = 0  # the tenant policy's, for the decision (ledgergate.admission)


@dataclass(frozen=True, slots=True)
class ReservationRepeated(_ReservationEntry):
    original_entry_id: str
    requested_at_ms: int


@dataclass(frozen=True, slots=True)
class CacheHitRecorded(_ReservationEntry):
    """A request answered from the tenant's response cache: its outcome, moving no money (docs/decisions/0013)."""

    agent_id: str
    requested_model: str
    cache_entry_id: str
    cache_key: str
    input_tokens: int
    output_tokens: int
    avoided_micro_usd: int
    policy_version: int
    request_sha256: str
    requested_at_ms: int
    tenant_remaining_micro_usd: int

    def __post_init__(self) -> None:
        assert self.avoided_micro_usd >= 0 and self.cache_entry_id, self.entry_id


@dataclass(frozen=True, slots=True)
class ReservationSettled(_ReservationEntry):
    model: str
    reserved_micro_usd: int
    actual_micro_usd: int
    released_micro_usd: int
    overage_micro_usd: int
    usage: Usage
    usage_estimated: bool
    price_version: str
    fail_open: bool = False  # made without a decision while the gate was away: no hold, all overage
    scopes: tuple[str, ...] = ()  # its hold's (ReservationPlaced.scopes)


@dataclass(frozen=True, slots=True)
class ReservationVoided(_ReservationEntry):
    released_micro_usd: int
    reason: str
    scopes: tuple[str, ...] = ()  # its hold's


@dataclass(frozen=True, slots=True)
class ReservationExpired(_ReservationEntry):
    released_micro_usd: int
    scopes: tuple[str, ...] = ()  # its hold's


@dataclass(frozen=True, slots=True)
class ThresholdCrossed(_Entry):
    scope_type: str
    scope_id: str
    threshold_pct: int
    spent_micro_usd: int
    limit_micro_usd: int


LedgerEntry = (BudgetLimitSet | CreditGranted | PeriodOpened | PolicyChanged | ReservationPlaced
               | ReservationDenied | CacheHitRecorded | ReservationRepeated | ReservationSettled | ReservationVoided
               | ReservationExpired | ThresholdCrossed)

ENTRY_TYPES: dict[str, type] = {cls.__name__: cls for cls in (
    BudgetLimitSet, CreditGranted, PeriodOpened, PolicyChanged, ReservationPlaced, ReservationDenied,
    CacheHitRecorded, ReservationRepeated, ReservationSettled, ReservationVoided, ReservationExpired, ThresholdCrossed)}


_FIELD_NAMES: dict[type[Any], tuple[str, ...]] = {}


def _field_names(cls: type[Any]) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


def to_record(entry: LedgerEntry) -> tuple[str, dict[str, Any]]:
    """(schema name, Avro record) for the codec."""
    record = {name: getattr(entry, name) for name in _field_names(type(entry))}
    if isinstance(entry, ReservationSettled):
        record["usage"] = {name: getattr(entry.usage, name) for name in _field_names(Usage)}
    if "scopes" in record:  # a tuple here, an Avro array (a list) on the wire
        record["scopes"] = list(record["scopes"])
    return type(entry).__name__, record


def from_record(name: str, record: dict[str, Any]) -> LedgerEntry:
    cls = ENTRY_TYPES[name]
    if cls is ReservationSettled:
        record = {**record, "usage": Usage(**record["usage"])}
    further = record.get("scopes")
    if further is not None:  # Avro gives a list; the entries are frozen and hold tuples (the decoded dict is ours)
        record["scopes"] = tuple(further)
    return cls(**record)  # type: ignore[no-any-return]
