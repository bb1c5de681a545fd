"""The OpenAI wire format the integrations share (ledgergate.integrations.wire): messages, usage, options."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ledgergate.errors import GateClientError
from ledgergate.integrations.wire import decided_call, gate_messages, gate_options, output_cap, usage_from_openai


def test_messages_keep_roles_and_names_join_text_parts_and_count_tool_calls() -> None:
    messages = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {}},
                                     {"type": "text", "text": "here"}], "name": "ana"},
        SimpleNamespace(role="assistant", content=None, name=None, tool_calls=[
            SimpleNamespace(function=SimpleNamespace(name="search", arguments='{"q": "x"}'))]),
    ]
    out = gate_messages(messages)
    assert out[0] == {"role": "system", "content": "Be terse.", "name": None}
    assert out[1] == {"role": "user", "content": "look here", "name": "ana"}
    assert out[2]["role"] == "assistant" and '"name": "search"' in out[2]["content"] and '{\\"q\\"' in out[2]["content"]


def test_usage_keeps_cached_input_inside_input_and_reasoning_apart_from_output() -> None:
    usage = {"prompt_tokens": 1_000, "completion_tokens": 300, "prompt_tokens_details": {"cached_tokens": 200},
             "completion_tokens_details": {"reasoning_tokens": 120}}
    assert usage_from_openai(usage) == {"input_tokens": 1_000, "cached_input_tokens": 200, "output_tokens": 180,
                                        "reasoning_tokens": 120}
    # A provider that reports more cached or reasoning tokens than the totals is clamped, never negative.
    odd = SimpleNamespace(prompt_tokens=10, completion_tokens=5,
                          prompt_tokens_details=SimpleNamespace(cached_tokens=50),
                          completion_tokens_details=SimpleNamespace(reasoning_tokens=9))
    assert usage_from_openai(odd) == {"input_tokens": 10, "cached_input_tokens": 10, "output_tokens": 0,
                                      "reasoning_tokens": 5}
    assert usage_from_openai(None) is None


def test_options_are_checked_and_the_decided_call_uses_the_callers_parameter() -> None:
    assert gate_options(None) == {}
    assert gate_options({"workflow_id": "wf", "request_id": "r1"}) == {"workflow_id": "wf", "request_id": "r1"}
    with pytest.raises(GateClientError, match="unknown ledgergate options"):
        gate_options({"workflow": "wf"})
    assert output_cap({"max_tokens": 64}) == 64 and output_cap({"max_completion_tokens": 32, "max_tokens": 64}) == 32
    assert output_cap({}) is None
    assert decided_call({"model": "gpt-4o", "max_completion_tokens": 500}, "gpt-4o-mini", 100) == {
        "model": "gpt-4o-mini", "max_completion_tokens": 100}
    assert decided_call({"model": "gpt-4o"}, "gpt-4o", 256) == {"model": "gpt-4o", "max_tokens": 256}
