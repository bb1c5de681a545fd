"""token-counter's pure core: request validation, input counts, the idempotency hash, metering and drift."""

from __future__ import annotations

import json
from typing import Any

import pytest
import tiktoken

from ledgergate.codec import codec
from ledgergate.events import InvocationCompleted, InvocationRequested, Usage
from ledgergate.services.token_counter.core import (
    MAX_ID_CHARS,
    Drift,
    Metered,
    addressable,
    count_request,
    meter,
    request_sha256,
    validate,
)
from ledgergate.shared.tokenizers import count_chat, count_text, encoding_for_model, get_encoding

T0 = 1_794_000_000_000
MAX_MESSAGES, MAX_OUTPUT = 64, 16_384
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look a word up",
                                           "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]
# Text whose token counts differ between cl100k_base and o200k_base.
MULTILINGUAL = "Ünïcödé — naïve café, 日本語のテキスト, 한국어, and ∑ math: 12345678 tokens?"


def request(**over: Any) -> dict[str, Any]:
    rec = {"request_id": "req-1", "tenant_id": "acme", "workflow_id": "wf", "agent_id": "agent-1",
           "requested_model": "gpt-4o",
           "messages": [{"role": "system", "content": "You are terse.", "name": None},
                        {"role": "user", "content": MULTILINGUAL, "name": "alice"}],
           "tools_json": None, "max_output_tokens": 500, "priority": "NORMAL", "region": None,
           "max_cost_micro_usd": None, "labels": {"team": "search"}, "requested_at_ms": T0,
           "trace_context": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
           "sampling_json": None, "template": None, "signature": None}
    rec.update(over)
    return rec


def typed(rec: dict[str, Any]) -> InvocationRequested:
    """As the adapter hands it to the core: the decoded record, typed."""
    return InvocationRequested.from_record(rec)


def check(rec: dict[str, Any], key: str | None = "acme") -> str | None:
    return validate(typed(rec), key, MAX_MESSAGES)


# ---------------------------------------------------------------------------------------------- validate


def test_a_good_request_validates_and_encodes() -> None:
    rec = request(tools_json=json.dumps(TOOLS))
    assert check(rec) is None
    assert codec().decode(codec().encode("InvocationRequested", rec))[1] == rec


@pytest.mark.parametrize(("over", "reason"), [
    ({"messages": []}, "messages is empty"),
    ({"messages": [{"role": "user", "content": "x", "name": None}] * (MAX_MESSAGES + 1)},
     f"more than {MAX_MESSAGES} messages"),
    ({"max_output_tokens": 0}, "max_output_tokens must be at least 1"),
    ({"max_output_tokens": -5}, "max_output_tokens must be at least 1"),
    ({"tools_json": "[{not json"}, "tools_json is not valid JSON"),
    ({"tools_json": '{"name": "lookup"}'}, "tools_json must be a JSON list"),
    ({"request_id": ""}, "request_id is empty"),
    ({"request_id": "r" * (MAX_ID_CHARS + 1)}, f"request_id is longer than {MAX_ID_CHARS} characters"),
    ({"requested_model": ""}, "requested_model is empty"),
    ({"max_cost_micro_usd": -1}, "max_cost_micro_usd must not be negative"),
])
def test_validate_reasons(over: dict[str, Any], reason: str) -> None:
    assert check(request(**over)) == reason


HOSTILE = ["\x00", "a\x00b", "\x1b[31m", "line\nbreak", "\u202e", "x" * 10_000]


@pytest.mark.parametrize("field", ["request_id", "tenant_id", "workflow_id", "agent_id", "requested_model",
                                   "region"])
@pytest.mark.parametrize("value", HOSTILE)
def test_control_characters_and_long_values_are_refused_in_every_id_and_name(field: str, value: str) -> None:
    rec = request(**{field: value})
    reason = check(rec, key=rec["tenant_id"])
    assert reason is not None and field in reason
    assert "\x00" not in reason and "\x1b" not in reason


@pytest.mark.parametrize("value", HOSTILE)
def test_labels_and_message_names_are_checked_too(value: str) -> None:
    assert check(request(labels={value: "v"})) is not None
    assert check(request(labels={"team": value})) is not None
    assert check(request(messages=[{"role": "user", "content": "x", "name": value}])) is not None
    assert check(request(labels={f"k{i}": "v" for i in range(33)})) == "more than 32 labels"


def test_prompt_content_may_hold_anything() -> None:
    assert check(request(messages=[{"role": "user", "content": "tab\there \x00 nul \x1b esc", "name": None}])) is None


def test_an_unaddressable_request_cannot_be_denied_only_dead_lettered() -> None:
    assert addressable("req-1", "acme") is None
    assert addressable("req\x001", "acme") is not None
    assert addressable("req-1", None) is not None
    assert addressable(None, "acme") is not None


def test_max_output_tokens_above_the_limit_is_capped_not_refused() -> None:
    rec = request(max_output_tokens=2**31 - 1)
    assert check(rec) is None
    assert count_request(typed(rec), encoding_for_model, MAX_OUTPUT).estimated_output_tokens == MAX_OUTPUT


def test_validate_boundaries_are_inclusive() -> None:
    assert check(request(max_output_tokens=1)) is None
    assert check(request(max_output_tokens=MAX_OUTPUT)) is None
    assert check(request(request_id="r" * MAX_ID_CHARS)) is None
    assert check(request(messages=[{"role": "user", "content": "x", "name": None}] * MAX_MESSAGES)) is None
    assert check(request(max_cost_micro_usd=0)) is None
    assert check(request(tools_json="[]")) is None


def test_key_must_be_the_tenant() -> None:
    assert check(request(), key="someone-else") == "the message key must be the tenant_id"
    assert check(request(tenant_id="other"), key="acme") == "the message key must be the tenant_id"
    assert check(request(), key=None) == "the message key must be the tenant_id"  # a missing key too


# ---------------------------------------------------------------------------------------------- counting


def test_count_request_equals_count_chat() -> None:
    rec = request(tools_json=json.dumps(TOOLS))
    counted = count_request(typed(rec), encoding_for_model, MAX_OUTPUT)
    enc = encoding_for_model("gpt-4o")
    assert counted.encoding == "o200k_base" == enc.name
    assert counted.input_tokens == count_chat(rec["messages"], "gpt-4o", tools=TOOLS, encoding=enc)
    assert counted.input_tokens == count_chat(rec["messages"], "gpt-4o", tools=TOOLS)
    assert counted.accounting_input_tokens == counted.input_tokens
    assert counted.estimated_output_tokens == 500
    assert counted.request_sha256 == request_sha256(typed(rec))
    without_tools = count_request(typed(request()), encoding_for_model, MAX_OUTPUT)
    assert counted.input_tokens > without_tools.input_tokens


def test_accounting_count_uses_o200k_for_a_cl100k_model() -> None:
    rec = request(requested_model="gpt-4")
    counted = count_request(typed(rec), encoding_for_model, MAX_OUTPUT)
    assert counted.encoding == "cl100k_base"
    assert counted.input_tokens == count_chat(rec["messages"], "gpt-4", encoding=get_encoding("cl100k_base"))
    assert counted.accounting_input_tokens == count_chat(rec["messages"], "gpt-4",
                                                         encoding=get_encoding("o200k_base"))
    assert counted.accounting_input_tokens != counted.input_tokens


def test_encoding_for_is_called_with_the_requested_model() -> None:
    asked: list[str] = []

    def encoding_for(model: str) -> tiktoken.Encoding:
        asked.append(model)
        return get_encoding("cl100k_base")

    counted = count_request(typed(request(requested_model="claude-sonnet")), encoding_for, MAX_OUTPUT)
    assert asked == ["claude-sonnet"]
    assert counted.encoding == "cl100k_base"


# ---------------------------------------------------------------------------------------------- request hash


def test_request_sha256_is_stable_across_versions() -> None:
    # Computed by the code that hashed the decoded Avro dict: the ledger keeps these digests, so a repeat
    # of an old request must still be recognised as the same content.
    rec = {"request_id": "r1", "tenant_id": "acme", "workflow_id": "wf", "agent_id": "a1", "requested_model": "gpt-4o",
           "messages": [{"role": "system", "content": "be terse", "name": None},
                        {"role": "user", "content": "héllo \u2603", "name": "bob"}],
           "tools_json": None, "max_output_tokens": 256, "priority": "HIGH", "region": "eu", "max_cost_micro_usd": None,
           "labels": {"b": "2", "a": "1"}, "requested_at_ms": 1, "trace_context": {}}
    assert request_sha256(typed(rec)) == "0068cd23ace0a24c29f391e46ad9d5600c43f0a204451efaf3e5ae88c01f6c8e"


def test_request_sha256_ignores_clock_and_trace_context() -> None:
    base = request_sha256(typed(request()))
    assert len(base) == 64
    assert request_sha256(typed(request(requested_at_ms=T0 + 12_345))) == base
    assert request_sha256(typed(request(trace_context={}))) == base
    assert request_sha256(typed(request(request_id="req-2"))) == base  # the id is the key, not the content
    assert request_sha256(typed(request(labels={"team": "search"}))) == base


@pytest.mark.parametrize("over", [
    {"messages": [{"role": "user", "content": "something else", "name": None}]},
    {"requested_model": "gpt-4o-mini"},
    {"max_output_tokens": 501},
    {"priority": "HIGH"},
    {"region": "eu-west"},
    {"max_cost_micro_usd": 10},
    {"labels": {"team": "ads"}},
    {"tools_json": "[]"},
    {"workflow_id": "wf-2"},
    {"agent_id": "agent-2"},
    {"tenant_id": "other"},
    {"sampling_json": '{"temperature":0}'},
])
def test_request_sha256_changes_with_content(over: dict[str, Any]) -> None:
    assert request_sha256(typed(request(**over))) != request_sha256(typed(request()))


def test_the_count_carries_the_cache_key_of_what_changes_an_answer() -> None:
    def key(**over: Any) -> str:
        return count_request(typed(request(**over)), encoding_for_model, 4096).cache_key

    base = key(sampling_json='{"temperature":0}')
    assert len(base) == 64 and base == key(sampling_json='{"temperature":0}', request_id="req-2", agent_id="b")
    assert base != key(sampling_json='{"temperature":0.5}') and base != key(tenant_id="other",
                                                                           sampling_json='{"temperature":0}')
    assert key() != base  # no sampling sent: the provider's defaults, another request


@pytest.mark.parametrize(("sampling_json", "problem"), [
    ('{"temperature": 0, "user": "u"}', "unknown parameters ['user']"),
    ("[0]", "must be a JSON object"), ("{", "not JSON"), ('{"stop": "' + "x" * 5000 + '"}', "longer than"),
])
def test_sampling_outside_the_edge_rule_is_invalid(sampling_json: str, problem: str) -> None:
    found = validate(typed(request(sampling_json=sampling_json)), "acme", 64)
    assert found is not None and problem in found


# ---------------------------------------------------------------------------------------------- metering


def completion(usage: dict[str, int] | None, text: str | None = "Hello there, general Kenobi.") -> dict[str, Any]:
    return {"request_id": "req-1", "tenant_id": "acme", "model": "gpt-4o", "status": "OK", "usage": usage,
            "completion_text": text, "completed_at_ms": T0, "trace_context": {}}


def done(usage: dict[str, int] | None, text: str | None = "Hello there, general Kenobi.") -> InvocationCompleted:
    return InvocationCompleted.from_record(completion(usage, text))


def test_reported_usage_is_kept() -> None:
    usage = {"input_tokens": 120, "cached_input_tokens": 20, "output_tokens": 33, "reasoning_tokens": 7}
    rec = completion(usage)
    metered = meter(InvocationCompleted.from_record(rec), get_encoding("o200k_base"), remembered_input_tokens=999)
    assert metered == Metered(Usage(**usage), False, count_text(rec["completion_text"], "o200k_base"))
    assert metered.counted_output_tokens == 7


def test_missing_usage_is_estimated_from_text_and_remembered_input() -> None:
    metered = meter(done(None, MULTILINGUAL), get_encoding("cl100k_base"), remembered_input_tokens=321)
    counted = count_text(MULTILINGUAL, "cl100k_base")
    assert counted != count_text(MULTILINGUAL, "o200k_base")  # the passed encoding is the one used
    assert metered == Metered(Usage(321, 0, counted, 0), True, counted)


def test_missing_usage_and_nothing_remembered() -> None:
    metered = meter(done(None, None), get_encoding("o200k_base"), remembered_input_tokens=None)
    assert metered == Metered(Usage(0, 0, 0, 0), True, None)
    assert meter(done(None, ""), get_encoding("o200k_base"), None).counted_output_tokens is None


def test_metered_usage_encodes() -> None:
    metered = meter(done(None), get_encoding("o200k_base"), 5)
    body = {"request_id": "req-1", "tenant_id": "acme", "model": "gpt-4o", "status": "OK",
            "usage": metered.usage.to_record(), "estimated": metered.estimated,
            "counted_output_tokens": metered.counted_output_tokens,
            "drift_ppm": 1_000_000, "completed_at_ms": T0, "metered_at_ms": T0 + 1, "workflow_id": "wf-1",
            "fail_open": None, "response_text": None}
    assert codec().decode(codec().encode("UsageMetered", body))[1] == body


def test_drift_ppm() -> None:
    drift = Drift()
    assert drift.ppm == 1_000_000
    drift.add(110, 100)
    assert drift.ppm == 1_100_000
    drift.add(90, 100)
    assert (drift.reported, drift.counted, drift.ppm) == (200, 200, 1_000_000)
    low = Drift()
    low.add(1, 3)
    assert low.ppm == 333_333
    zero = Drift()
    zero.add(5, 0)
    assert zero.ppm == 1_000_000
