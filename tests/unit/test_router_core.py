"""router's pure core: one ledger outcome, one gate decision; and the per-partition audit hash chain."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from typing import Any

import pytest

from ledgergate.codec import codec
from ledgergate.events import Usage
from ledgergate.services.router.core import Chain, audit_record, decision_for, summary_of
from ledgergate.shared.audit import GENESIS_HASH, record_hash, verify_chain
from ledgergate.shared.catalogue import deployments
from ledgergate.shared.ledger.entries import ReservationDenied, ReservationPlaced, ReservationSettled


def decided(*args: Any) -> dict[str, Any]:
    """The decision as the router encodes it."""
    return decision_for(*args).to_record()


def audited(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return audit_record(*args, **kwargs).to_record()

T0 = 1_794_000_000_000
SHA = "ab" * 32


def placed(model: str = "gpt-4o", requested: str = "gpt-4o", index: int = 0, region: str | None = None,
           request_id: str = "req-1") -> ReservationPlaced:
    return ReservationPlaced(
        entry_id=f"{request_id}/reservation", tenant_id="acme", period_id="2026-11", recorded_at_ms=T0 + 9,
        request_id=request_id, workflow_id="wf", agent_id="agent-1", requested_model=requested, model=model,
        tier="premium", candidate_index=index, amount_micro_usd=43_460, input_tokens=1_000,
        granted_output_tokens=4_096, price_version="2026-11-01", policy_version=3, priority="NORMAL", region=region,
        expires_at_ms=T0 + 60_000, request_sha256=SHA, requested_at_ms=T0, tenant_remaining_micro_usd=956_540)


def denied(reason: str = "budget_exhausted", scope: str = "tenant:acme",
           retry_after_ms: int | None = None) -> ReservationDenied:
    return ReservationDenied(
        entry_id="req-2/reservation", tenant_id="acme", period_id="2026-11", recorded_at_ms=T0 + 4,
        request_id="req-2", workflow_id="wf", agent_id="agent-1", requested_model="gpt-4o", reason=reason,
        detail="cheapest candidate costs 1749 micro-USD", binding_scope=scope, retry_after_ms=retry_after_ms,
        policy_version=3, request_sha256=SHA, requested_at_ms=T0, tenant_remaining_micro_usd=1_000)


def roundtrip(decision: dict[str, Any]) -> dict[str, Any]:
    name, decoded = codec().decode(codec().encode("GateDecision", decision))
    assert name == "GateDecision"
    return decoded


# ---------------------------------------------------------------------------------------------- decisions


def test_placed_same_model_allows() -> None:
    entry = placed(region="eu-west")
    d = decided(entry, deployments())
    assert d == {
        "request_id": "req-1", "tenant_id": "acme", "workflow_id": "wf", "agent_id": "agent-1",
        "requested_model": "gpt-4o", "remaining_micro_usd": 956_540, "ledger_entry_id": "req-1/reservation",
        "policy_version": 3, "requested_at_ms": T0, "decided_at_ms": T0 + 9, "outcome": "ALLOW",
        "deployment": {"model": "gpt-4o", "endpoint": "https://eu-west.provider.local/v1/gpt-4o",
                       "region": "eu-west"},
        "granted_output_tokens": 4_096, "reserved_micro_usd": 43_460, "reason_codes": ["within_budget"],
        "binding_scope": None, "retry_after_ms": None, "reservation_id": "req-1", "trace_context": {},
        "fail_open_micro_usd_per_min": 0, "cache_store": False, "cache_entry_id": None, "cached_response": None,
        "avoided_micro_usd": 0}
    assert roundtrip(d) == d


def test_deployment_without_region_is_a_stable_choice_among_all() -> None:
    chosen = {decided(placed(request_id=f"r{i}"), deployments())["deployment"]["region"] for i in range(40)}
    assert chosen == {"us-east", "eu-west"}
    for i in range(10):
        d = decided(placed(request_id=f"r{i}"), deployments())
        expected = deployments().choose("gpt-4o", None, f"r{i}")
        assert d["deployment"] == {"model": "gpt-4o", "endpoint": expected.endpoint, "region": expected.region}


def test_placed_other_model_at_later_candidate_is_downgraded_by_budget() -> None:
    d = decided(placed(model="gpt-4o-mini", index=1), deployments())
    assert d["outcome"] == "DOWNGRADE"
    assert d["reason_codes"] == ["within_budget", "downgraded_by_budget"]
    assert d["deployment"]["model"] == "gpt-4o-mini"
    assert d["requested_model"] == "gpt-4o"
    assert roundtrip(d) == d


def test_placed_other_model_as_first_candidate_is_downgraded_by_policy() -> None:
    d = decided(placed(model="gpt-4o-mini", index=0), deployments())
    assert d["outcome"] == "DOWNGRADE"
    assert d["reason_codes"] == ["within_budget", "downgraded_by_policy"]


def test_placed_model_without_deployment_has_none() -> None:
    d = decided(placed(model="mystery", requested="mystery"), deployments())
    assert d["outcome"] == "ALLOW"
    assert d["deployment"] is None
    assert roundtrip(d) == d


def test_denied_is_deny_with_binding_scope() -> None:
    d = decided(denied(), deployments())
    assert d["outcome"] == "DENY"
    assert d["reason_codes"] == ["budget_exhausted"]
    assert d["binding_scope"] == "tenant:acme"
    assert (d["deployment"], d["reservation_id"], d["retry_after_ms"]) == (None, None, None)
    assert (d["granted_output_tokens"], d["reserved_micro_usd"], d["remaining_micro_usd"]) == (0, 0, 1_000)
    assert d["ledger_entry_id"] == "req-2/reservation"
    assert d["decided_at_ms"] == T0 + 4
    assert roundtrip(d) == d


def test_rate_limited_is_throttle_with_retry_after() -> None:
    d = decided(denied("rate_limited", "rate", 1_500), deployments())
    assert d["outcome"] == "THROTTLE"
    assert d["retry_after_ms"] == 1_500
    assert d["reason_codes"] == ["rate_limited"]
    assert d["binding_scope"] == "rate"
    assert roundtrip(d) == d


def test_decisions_are_deterministic() -> None:
    for entry in (placed(), placed(model="gpt-4o-mini", index=1), denied(), denied("rate_limited", "rate", 9)):
        twin = dataclasses.replace(entry)
        first, second = decided(entry, deployments()), decided(twin, deployments())
        assert first == second
        assert codec().encode("GateDecision", first) == codec().encode("GateDecision", second)


def test_decision_record_has_exactly_the_schema_fields() -> None:
    fields = {f["name"] for f in codec().schema("GateDecision").parsed["fields"]}
    assert set(decided(placed(), deployments())) == fields
    assert set(decided(denied(), deployments())) == fields


# ---------------------------------------------------------------------------------------------- audit chain


def chain_of(n: int, partition: int = 2) -> list[tuple[int, dict[str, Any]]]:
    chain = Chain(partition)
    records = []
    for i in range(n):
        rec = audited(chain, kind="DECISION" if i % 2 else "LEDGER", event_type="GateDecision",
                           subject_id=f"req-{i}", tenant_id="acme", source_topic="gate.decisions",
                           source_partition=partition, source_offset=100 + i, event_sha256=f"{i:064x}",
                           summary_json=json.dumps({"request_id": f"req-{i}"}), recorded_at_ms=T0 + i)
        records.append((1_000 + i, rec))
    return records


def test_audit_chain_links_and_verifies() -> None:
    records = chain_of(5)
    assert verify_chain(records) is None
    first = records[0][1]
    assert first["prev_hash"] == GENESIS_HASH
    assert (first["audit_id"], first["chain_sequence"], first["chain_partition"]) == ("2:0", 0, 2)
    for (_, prev), (_, rec) in itertools.pairwise(records):
        assert rec["prev_hash"] == prev["hash"]
        assert rec["chain_sequence"] == prev["chain_sequence"] + 1
    for _, rec in records:
        assert rec["hash"] == record_hash(rec)
        assert len(rec["hash"]) == 64
        assert codec().decode(codec().encode("AuditRecord", rec))[1] == rec


def test_chain_advances() -> None:
    chain = Chain(0)
    rec = audited(chain, kind="LEDGER", event_type="ReservationPlaced", subject_id="x", tenant_id="t",
                       source_topic="budget.ledger", source_partition=0, source_offset=0, event_sha256="0" * 64,
                       summary_json="{}", recorded_at_ms=T0)
    assert (chain.next_sequence, chain.last_hash) == (1, rec["hash"])


def test_verify_from_the_middle_of_a_chain() -> None:
    records = chain_of(5)
    assert verify_chain(records[2:], start_hash=records[1][1]["hash"], start_sequence=2) is None
    assert verify_chain(records[2:]) == "offset 1002: sequence 2, expected 0 (a record is missing)"


def test_removed_record_is_detected() -> None:
    records = chain_of(5)
    del records[2]
    assert verify_chain(records) == "offset 1003: sequence 3, expected 2 (a record is missing)"


def test_reordered_records_are_detected() -> None:
    records = chain_of(5)
    records[1], records[2] = records[2], records[1]
    # the sequence check sees the reorder first
    assert verify_chain(records) == "offset 1002: sequence 2, expected 1 (a record is missing)"


def test_reorder_with_rewritten_sequences_is_caught_by_prev_hash() -> None:
    records = chain_of(5)
    a, b = copy.deepcopy(records[1][1]), copy.deepcopy(records[2][1])
    a["chain_sequence"], b["chain_sequence"] = 2, 1
    records[1], records[2] = (records[2][0], b), (records[1][0], a)
    assert verify_chain(records) == (
        "offset 1002: prev_hash does not match the previous record's hash (gap or reorder)")


def test_edited_summary_is_detected() -> None:
    records = chain_of(5)
    records[3][1]["summary_json"] = json.dumps({"request_id": "req-3", "amount_micro_usd": 0})
    assert verify_chain(records) == "offset 1003: hash does not match the record's content (edited)"


def test_edit_with_recomputed_hash_breaks_the_next_link() -> None:
    records = chain_of(5)
    rec = records[3][1]
    rec["summary_json"] = "{}"
    rec["hash"] = record_hash(rec)
    assert verify_chain(records) == (
        "offset 1004: prev_hash does not match the previous record's hash (gap or reorder)")


@pytest.mark.parametrize("field", ["tenant_id", "kind", "subject_id", "source_offset", "event_sha256",
                                   "recorded_at_ms", "audit_id"])
def test_any_chained_field_edit_is_detected(field: str) -> None:
    records = chain_of(5)
    rec = records[1][1]
    rec[field] = rec[field] + 1 if isinstance(rec[field], int) else rec[field] + "x"
    assert verify_chain(records) == "offset 1001: hash does not match the record's content (edited)"


# ---------------------------------------------------------------------------------------------- summaries


def test_summary_keeps_only_governance_fields() -> None:
    assert json.loads(summary_of(placed())) == {"request_id": "req-1", "workflow_id": "wf", "model": "gpt-4o",
                                                "amount_micro_usd": 43_460, "period_id": "2026-11"}
    settled = ReservationSettled("r/settlement", "acme", "2026-11", T0, "r", "", "gpt-4o", 10, 25, 0, 15,
                                 Usage(1, 0, 2, 0), False, "2026-11-01")
    assert json.loads(summary_of(settled)) == {"request_id": "r", "workflow_id": "", "model": "gpt-4o",
                                               "actual_micro_usd": 25, "released_micro_usd": 0,
                                               "overage_micro_usd": 15, "period_id": "2026-11"}
    summary = summary_of(denied())
    assert SHA not in summary
    assert list(json.loads(summary)) == sorted(json.loads(summary))


def test_moving_text_between_fields_is_detected() -> None:
    chain = Chain(0)
    # subject_id is the client-chosen request id; source_topic follows it in CHAINED_FIELDS
    rec = audited(chain, kind="DECISION", event_type="GateDecision", subject_id="req-0\x1fgate",
                       source_topic="decisions", tenant_id="acme", source_partition=0, source_offset=7,
                       event_sha256="0" * 64, summary_json="{}", recorded_at_ms=T0)
    forged = dict(rec, subject_id="req-0", source_topic="gate\x1fdecisions")
    assert verify_chain([(0, rec)]) is None
    assert verify_chain([(0, forged)]) == "offset 0: hash does not match the record's content (edited)"


def test_a_decision_carries_the_ledger_messages_trace_context_and_is_the_same_each_time() -> None:
    # The router passes the ledger message's context (shared/tracing.py: header_carrier); the decision is a
    # function of it and the entry, so the same message gives the same bytes (a replay, a repeat's refill).
    tc = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "congo=t61rcWkgMzE"}
    for entry in (placed(), denied()):
        d = decided(entry, deployments(), tc)
        assert d["trace_context"] == tc
        assert roundtrip(d) == d
        assert codec().encode("GateDecision", d) == codec().encode("GateDecision", decided(entry, deployments(), tc))
    assert decided(placed(), deployments())["trace_context"] == {}


def test_a_hold_on_a_region_is_served_there_or_nowhere() -> None:
    in_eu = dataclasses.replace(placed(region="us-east"), scopes=("REGION:eu-west",))
    d = decided(in_eu, deployments())
    assert d["deployment"]["region"] == "eu-west"
    # gpt-4.1 has no eu-west deployment: no deployment rather than one outside the region
    nowhere = dataclasses.replace(placed("gpt-4.1", "gpt-4.1", region="us-east"), scopes=("REGION:eu-west",))
    assert decided(nowhere, deployments())["deployment"] is None
