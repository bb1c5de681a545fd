"""router's pure core: a ledger outcome becomes exactly one gate decision, and every decision and
ledger change one audit record in its partition's hash chain. Decisions are a pure function of the
ledger entry (decided_at_ms is the entry's time), so a repeated request gets an identical decision."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields

from ledgergate.events import AuditRecord, Deployment, GateDecision
from ledgergate.shared.audit import GENESIS_HASH, record_hash
from ledgergate.shared.cache import CacheEntry
from ledgergate.shared.catalogue import DeploymentCatalogue
from ledgergate.shared.ledger.entries import CacheHitRecorded, LedgerEntry, ReservationDenied, ReservationPlaced
from ledgergate.shared.ledger.state import REGION, parse_scope

THROTTLE_REASONS = frozenset({"rate_limited"})
CACHE_HIT_REASON = "cache_hit"
CACHE_ENTRY_GONE_REASON = "cache_entry_gone"  # the entry expired or was evicted between plan and decision
# AuditRecord's fields before its hash, in schema order; the hash covers them and recorded_at_ms.
_FIELDS_BEFORE_HASH = tuple(f.name for f in fields(AuditRecord))[:13]
assert _FIELDS_BEFORE_HASH[-1] == "prev_hash", _FIELDS_BEFORE_HASH


def decision_for(entry: ReservationPlaced | ReservationDenied | CacheHitRecorded, deployments: DeploymentCatalogue,
                 trace_context: Mapping[str, str] | None = None, cached: CacheEntry | None = None) -> GateDecision:
    """`trace_context`: the ledger message's (shared/tracing.py: header_carrier), so the decision stays a
    function of the committed message and a replay writes the same bytes. `cached`: for a cache hit, the
    entry it names as the router holds it (None when it is gone: the decision says so, without text)."""
    carried = dict(trace_context or {})
    if isinstance(entry, CacheHitRecorded):
        found = cached is not None and cached.entry_id == entry.cache_entry_id
        assert cached is None or cached.tenant_id == entry.tenant_id, "a tenant is only answered from its own cache"
        return GateDecision(
            entry.request_id, entry.tenant_id, entry.workflow_id, entry.agent_id, "CACHE_HIT", entry.requested_model,
            None, 0, 0, entry.tenant_remaining_micro_usd,
            (CACHE_HIT_REASON,) if found else (CACHE_HIT_REASON, CACHE_ENTRY_GONE_REASON), None, None, None,
            entry.entry_id, entry.policy_version, entry.requested_at_ms, entry.recorded_at_ms, carried,
            cache_entry_id=entry.cache_entry_id, cached_response=cached.response_text if found and cached else None,
            avoided_micro_usd=entry.avoided_micro_usd if found else 0)
    if isinstance(entry, ReservationPlaced):
        downgraded = entry.model != entry.requested_model
        reasons = ["within_budget"]
        if downgraded:
            reasons.append("downgraded_by_budget" if entry.candidate_index > 0 else "downgraded_by_policy")
        # A hold on a REGION scope was planned for that region (data locality, a regional budget): its
        # deployment is there or nowhere; otherwise the caller's region is preferred.
        held_in = next((scope_id for kind, scope_id in map(parse_scope, entry.scopes) if kind == REGION), None)
        chosen = (deployments.choose(entry.model, entry.region, entry.request_id) if held_in is None
                  else deployments.choose(entry.model, held_in, entry.request_id, strict=True))
        deployment = None if chosen is None else Deployment(chosen.model, chosen.endpoint, chosen.region)
        return GateDecision(
            entry.request_id, entry.tenant_id, entry.workflow_id, entry.agent_id,
            "DOWNGRADE" if downgraded else "ALLOW", entry.requested_model, deployment, entry.granted_output_tokens,
            entry.amount_micro_usd, entry.tenant_remaining_micro_usd, tuple(reasons), None, None, entry.request_id,
            entry.entry_id, entry.policy_version, entry.requested_at_ms, entry.recorded_at_ms, carried,
            entry.fail_open_micro_usd_per_min, cache_store=entry.cache_store)
    throttled = entry.reason in THROTTLE_REASONS
    return GateDecision(
        entry.request_id, entry.tenant_id, entry.workflow_id, entry.agent_id, "THROTTLE" if throttled else "DENY",
        entry.requested_model, None, 0, 0, entry.tenant_remaining_micro_usd, (entry.reason,), entry.binding_scope,
        entry.retry_after_ms, None, entry.entry_id, entry.policy_version, entry.requested_at_ms, entry.recorded_at_ms,
        carried, entry.fail_open_micro_usd_per_min)


@dataclass(slots=True)
class Chain:
    """The tail of one partition's audit chain."""

    partition: int
    next_sequence: int = 0
    last_hash: str = GENESIS_HASH


def summary_of(entry: LedgerEntry) -> str:
    """The few fields governance asks about; never prompt text (the ledger holds none anyway)."""
    keep = ("request_id", "workflow_id", "model", "amount_micro_usd", "avoided_micro_usd", "cache_entry_id",
            "actual_micro_usd", "released_micro_usd", "overage_micro_usd", "reason", "binding_scope",
            "limit_micro_usd", "threshold_pct", "period_id")
    return json.dumps({k: getattr(entry, k) for k in keep if hasattr(entry, k)}, sort_keys=True)


def audit_record(chain: Chain, *, kind: str, event_type: str, subject_id: str, tenant_id: str,
                 source_topic: str, source_partition: int, source_offset: int, event_sha256: str,
                 summary_json: str, recorded_at_ms: int) -> AuditRecord:
    """The next record of `chain`; advances the chain by exactly one (sequence numbers are contiguous)."""
    sequence, prev_hash = chain.next_sequence, chain.last_hash
    assert sequence >= 0 and len(prev_hash) == len(GENESIS_HASH), (chain.partition, sequence)
    values = (f"{chain.partition}:{sequence}", tenant_id, kind, event_type, subject_id, source_topic,
              source_partition, source_offset, event_sha256, summary_json, chain.partition, sequence, prev_hash)
    chained = dict(zip(_FIELDS_BEFORE_HASH, values, strict=True), recorded_at_ms=recorded_at_ms)
    record = AuditRecord(*values, hash=record_hash(chained), recorded_at_ms=recorded_at_ms)
    chain.next_sequence, chain.last_hash = sequence + 1, record.hash
    assert record.chain_sequence + 1 == chain.next_sequence and record.prev_hash == prev_hash
    return record
