"""projector's pure core: decoded events become read-model rows; no I/O.

Balances come from the ledger's one balance arithmetic (ledgergate.shared.ledger.state.balance_deltas, which
`evolve` applies too), as additive deltas per (tenant, scope, period), so a batch can be applied with one
set-based upsert and summed in any order. tests/unit/test_projector_core.py folds random ledgers both
ways and compares.

No text of an answer is ever stored: a CACHE_HIT decision's `cached_response` (the tenant's cached answer,
docs/decisions/0013) is set to None before its record reaches the decisions table (docs/privacy.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ledgergate.ids import printable
from ledgergate.shared.errors import UnstorableValueError
from ledgergate.shared.ledger.entries import (
    BudgetLimitSet,
    CacheHitRecorded,
    CreditGranted,
    LedgerEntry,
    ReservationExpired,
    ReservationPlaced,
    ReservationSettled,
    ReservationVoided,
    ThresholdCrossed,
)
from ledgergate.shared.ledger.state import WORKFLOW, balance_deltas

LEDGER, DECISIONS, AUDIT = "ledger", "decisions", "audit"


def check_storable(value: Any, path: str = "") -> None:
    """Raise UnstorableValueError naming the first string that PostgreSQL cannot hold (a NUL, in
    text and jsonb alike). The edges refuse such values now; this keeps records written before
    that, or by another producer, from stopping the sink for every tenant."""
    if isinstance(value, str):
        if "\x00" in value:
            raise UnstorableValueError(f"{path or 'value'} holds a NUL character")
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{printable(key)}" if path else printable(key)
            check_storable(key, where)
            check_storable(item, where)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_storable(item, f"{path}[{i}]")


def _amount(entry: LedgerEntry) -> int:
    """The money an entry is about, for listings: held, posted, released, granted, the new limit, the
    spend that crossed a threshold or what a cache hit avoided (it moves none); 0 for other entries."""
    match entry:
        case ReservationPlaced() | CreditGranted():
            return entry.amount_micro_usd
        case ReservationSettled():
            return entry.actual_micro_usd
        case ReservationVoided() | ReservationExpired():
            return entry.released_micro_usd
        case BudgetLimitSet():
            return entry.limit_micro_usd
        case ThresholdCrossed():
            return entry.spent_micro_usd
        case CacheHitRecorded():
            return entry.avoided_micro_usd
    return 0


def _model(entry: LedgerEntry) -> str | None:
    if isinstance(entry, CacheHitRecorded):
        return entry.requested_model  # a hit calls no model: the one asked for is what it is about
    return getattr(entry, "model", None)


def text_free(decision: dict[str, Any]) -> dict[str, Any]:
    """The decision record without the cached answer's text (`cached_response` None), the record itself
    when it carries none."""
    if decision.get("cached_response") is None:
        return decision
    return {**decision, "cached_response": None}


def _workflow(entry: LedgerEntry) -> str | None:
    workflow = getattr(entry, "workflow_id", None)
    if workflow is None and getattr(entry, "scope_type", None) == WORKFLOW:
        workflow = entry.scope_id  # type: ignore[union-attr]  # a workflow's limit, credit or alert
    return workflow or None


@dataclass(slots=True)
class Batch:
    """Rows for one PostgreSQL transaction, as tuples in the column order of ledgergate.services.projector.sql."""

    ledger: list[tuple[Any, ...]] = field(default_factory=list)
    deltas: list[tuple[Any, ...]] = field(default_factory=list)
    limits: list[tuple[Any, ...]] = field(default_factory=list)
    usage: list[tuple[Any, ...]] = field(default_factory=list)
    alerts: list[tuple[Any, ...]] = field(default_factory=list)
    cache_hits: list[tuple[Any, ...]] = field(default_factory=list)
    decisions: list[tuple[Any, ...]] = field(default_factory=list)
    audit: list[tuple[Any, ...]] = field(default_factory=list)
    errors: list[tuple[Any, ...]] = field(default_factory=list)
    # (topic, partition) -> the offset to read next once this batch is committed
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    messages: int = 0
    _seen: set[tuple[str, str]] = field(default_factory=set)

    @property
    def rows(self) -> int:
        return sum(len(x) for x in (self.ledger, self.deltas, self.limits, self.usage, self.alerts,
                                    self.cache_hits, self.decisions, self.audit, self.errors))

    def consumed(self, topic: str, partition: int, offset: int) -> None:
        self.messages += 1
        self.offsets[(topic, partition)] = offset + 1

    def add_ledger(self, entry: LedgerEntry, record: dict[str, Any], partition: int, offset: int) -> None:
        key = (entry.tenant_id, entry.entry_id)
        if key in self._seen:
            return  # the same entry twice in one batch would otherwise be staged (and summed) twice
        self._seen.add(key)
        self.ledger.append((entry.tenant_id, entry.entry_id, entry.period_id, type(entry).__name__,
                            getattr(entry, "request_id", None), _workflow(entry), _model(entry),
                            _amount(entry), entry.recorded_at_ms, partition, offset, record))
        for d in balance_deltas(entry):
            self.deltas.append((entry.tenant_id, entry.entry_id, d.scope_type, d.scope_id, d.period_id,
                                d.credit_micro_usd, d.posted_micro_usd, d.pending_micro_usd, entry.recorded_at_ms))
        match entry:
            case BudgetLimitSet():
                # Within a tenant (one partition) the offset orders limit changes; the last one wins.
                self.limits.append((entry.tenant_id, entry.entry_id, entry.scope_type, entry.scope_id,
                                    entry.limit_micro_usd, offset, entry.recorded_at_ms))
            case ReservationSettled():
                u = entry.usage
                self.usage.append((entry.tenant_id, entry.entry_id, entry.request_id, entry.workflow_id, entry.model,
                                   entry.period_id, u.input_tokens, u.cached_input_tokens, u.output_tokens,
                                   u.reasoning_tokens, entry.usage_estimated, entry.reserved_micro_usd,
                                   entry.actual_micro_usd, entry.overage_micro_usd, entry.price_version,
                                   entry.recorded_at_ms, entry.fail_open))
            case ThresholdCrossed():
                self.alerts.append((entry.tenant_id, entry.entry_id, entry.period_id, entry.scope_type,
                                    entry.scope_id, entry.threshold_pct, entry.spent_micro_usd,
                                    entry.limit_micro_usd, entry.recorded_at_ms))
            case CacheHitRecorded():
                self.cache_hits.append((entry.tenant_id, entry.entry_id, entry.request_id, entry.workflow_id,
                                        entry.requested_model, entry.period_id, entry.cache_entry_id,
                                        entry.input_tokens, entry.output_tokens, entry.avoided_micro_usd,
                                        entry.recorded_at_ms))

    def add_decision(self, d: dict[str, Any]) -> None:
        d = text_free(d)  # the body keeps every field but the cached answer's text
        deployment = d["deployment"] or {}
        self.decisions.append((d["tenant_id"], d["ledger_entry_id"], d["request_id"], d["workflow_id"],
                               d["agent_id"], d["outcome"], d["requested_model"], deployment.get("model"),
                               d["binding_scope"], list(d["reason_codes"]), d["reserved_micro_usd"],
                               d["granted_output_tokens"], d["requested_at_ms"], d["decided_at_ms"], d))

    def add_audit(self, r: dict[str, Any]) -> None:
        self.audit.append((r["chain_partition"], r["chain_sequence"], r["tenant_id"], r["kind"], r["subject_id"],
                           r["hash"], r["prev_hash"], r["recorded_at_ms"], r["audit_id"], r["event_type"],
                           r["source_topic"], r["source_partition"], r["source_offset"], r["event_sha256"],
                           r["summary_json"]))

    def add_error(self, consumer: str, topic: str, partition: int, offset: int, code: str, message: str) -> None:
        self.errors.append((consumer, topic, partition, offset, code, printable(message)[:2000]))
