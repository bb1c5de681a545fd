"""A tenant's redaction of what lasts (shared/redaction.py): the text fields of prompt-bearing records, and
undecodable bytes as they are; the policy's top-level patterns reach the cache rule too."""

from __future__ import annotations

import json

import pytest

from ledgergate.codec import codec
from ledgergate.shared.policy import PolicyError, default_policy, parse_policy
from ledgergate.shared.redaction import redact_bytes

CARD = r"\b\d{4}-\d{4}-\d{4}-\d{4}\b"
T0 = 1_794_000_000_000


def _request() -> bytes:
    return codec().encode("InvocationRequested", {
        "request_id": "r1", "tenant_id": "acme", "workflow_id": "wf", "agent_id": "a", "requested_model": "gpt-4o",
        "messages": [{"role": "user", "content": "Charge 4111-1111-1111-1111 please", "name": None}],
        "tools_json": None, "max_output_tokens": 10, "priority": "NORMAL", "region": None,
        "max_cost_micro_usd": None, "labels": {}, "requested_at_ms": T0, "trace_context": {}, "sampling_json": None,
        "template": {"template_id": "faq", "version": 1, "variables": {"card": "4111-1111-1111-1111"}},
        "signature": None})


def test_a_requests_messages_and_template_values_are_redacted() -> None:
    _, rec = codec().decode(redact_bytes(_request(), (CARD,)))
    assert rec["messages"][0]["content"] == "Charge [redacted] please"
    assert rec["template"]["variables"] == {"card": "[redacted]"}
    assert rec["request_id"] == "r1"  # everything else as it was


def test_a_completions_text_is_redacted_and_records_without_text_are_kept() -> None:
    completion = codec().encode("InvocationCompleted", {
        "request_id": "r1", "tenant_id": "acme", "model": "gpt-4o", "status": "OK", "usage": None,
        "completion_text": "Your card 4111-1111-1111-1111 is active.", "completed_at_ms": T0, "trace_context": {},
        "agent_id": "", "fail_open": None, "signature": None})
    assert codec().decode(redact_bytes(completion, (CARD,)))[1]["completion_text"] == "Your card [redacted] is active."
    alert = codec().encode("PeriodOpened", {"entry_id": "p", "tenant_id": "acme", "period_id": "2026-12",
                                            "recorded_at_ms": T0, "starts_at_ms": T0, "ends_at_ms": T0 + 1})
    assert redact_bytes(alert, (CARD,)) == alert
    assert redact_bytes(completion, ()) == completion


def test_bytes_that_do_not_decode_are_redacted_as_they_are() -> None:
    raw = b'{"messages": [{"content": "card 4111-1111-1111-1111"}]}\xff'
    assert redact_bytes(raw, (CARD,)) == b'{"messages": [{"content": "card [redacted]"}]}\xff'


def test_the_policys_patterns_apply_to_the_cache_and_are_checked_when_set() -> None:
    policy = parse_policy(json.dumps({"redact_patterns": [CARD], "cache": {"redact_patterns": ["secret"]}}),
                          default_policy())
    assert policy.redact_patterns == (CARD,)
    assert policy.cache.to_rule(policy.redact_patterns).redact_patterns == (CARD, "secret")
    with pytest.raises(PolicyError, match="not a regular expression"):
        parse_policy(json.dumps({"redact_patterns": ["(unclosed"]}), default_policy())
