"""router's pure core: a ledger outcome becomes exactly one gate decision, and every decision and
ledger change one audit record in its partition's hash chain. Decisions are a pure function of the
ledger entry (decided_at_ms is the entry's time), so a repeated request gets an identical decision."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ledgergate.shared.audit import GENESIS_HASH, record_hash
from ledgergate.shared.catalogue import DeploymentCatalogue
from ledgergate.shared.ledger.entries import LedgerEntry, ReservationDenied, ReservationPlaced

THROTTLE_REASONS = frozenset({"rate_limited"})


def decision_for(entry: ReservationPlaced | ReservationDenied, deployments: DeploymentCatalogue) -> dict[str, Any]:
    common = {"request_id": entry.request_id, "tenant_id": entry.tenant_id, "workflow_id": entry.workflow_id,
              "agent_id": entry.agent_id, "requested_model": entry.requested_model,
              "remaining_micro_usd": entry.tenant_remaining_micro_usd, "ledger_entry_id": entry.entry_id,
              "policy_version": entry.policy_version, "requested_at_ms": entry.requested_at_ms,
              "decided_at_ms": entry.recorded_at_ms}
    if isinstance(entry, ReservationPlaced):
        downgraded = entry.model != entry.requested_model
        reasons = ["within_budget"]
        if downgraded:
            reasons.append("downgraded_by_budget" if entry.candidate_index > 0 else "downgraded_by_policy")
        deployment = deployments.choose(entry.model, entry.region, entry.request_id)
        return {**common, "outcome": "DOWNGRADE" if downgraded else "ALLOW",
                "deployment": None if deployment is None else {
                    "model": deployment.model, "endpoint": deployment.endpoint, "region": deployment.region},
                "granted_output_tokens": entry.granted_output_tokens, "reserved_micro_usd": entry.amount_micro_usd,
                "reason_codes": reasons, "binding_scope": None, "retry_after_ms": None,
                "reservation_id": entry.request_id}
    throttled = entry.reason in THROTTLE_REASONS
    return {**common, "outcome": "THROTTLE" if throttled else "DENY", "deployment": None,
            "granted_output_tokens": 0, "reserved_micro_usd": 0, "reason_codes": [entry.reason],
            "binding_scope": entry.binding_scope, "retry_after_ms": entry.retry_after_ms, "reservation_id": None}


@dataclass(slots=True)
class Chain:
    """The tail of one partition's audit chain."""

    partition: int
    next_sequence: int = 0
    last_hash: str = GENESIS_HASH


def summary_of(entry: LedgerEntry) -> str:
    """The few fields governance asks about; never prompt text (the ledger holds none anyway)."""
    keep = ("request_id", "workflow_id", "model", "amount_micro_usd", "actual_micro_usd", "released_micro_usd",
            "overage_micro_usd", "reason", "binding_scope", "limit_micro_usd", "threshold_pct", "period_id")
    return json.dumps({k: getattr(entry, k) for k in keep if hasattr(entry, k)}, sort_keys=True)


def audit_record(chain: Chain, *, kind: str, event_type: str, subject_id: str, tenant_id: str,
                 source_topic: str, source_partition: int, source_offset: int, event_sha256: str,
                 summary_json: str, recorded_at_ms: int) -> dict[str, Any]:
    """The next record of `chain`; advances the chain."""
    record = {"audit_id": f"{chain.partition}:{chain.next_sequence}", "tenant_id": tenant_id, "kind": kind,
              "event_type": event_type, "subject_id": subject_id, "source_topic": source_topic,
              "source_partition": source_partition, "source_offset": source_offset, "event_sha256": event_sha256,
              "summary_json": summary_json, "chain_partition": chain.partition,
              "chain_sequence": chain.next_sequence, "prev_hash": chain.last_hash, "recorded_at_ms": recorded_at_ms}
    record["hash"] = record_hash(record)
    chain.next_sequence += 1
    chain.last_hash = record["hash"]
    return record
