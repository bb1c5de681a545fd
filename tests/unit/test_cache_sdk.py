"""The SDK's side of the response cache that needs no gate (ledgergate.integrations.wire, the proxy's core):
which answer text may go with a settlement, and a CACHE_HIT's answer in OpenAI's own shapes. How the Gate,
the OpenAI wrapper and the proxy act on real decisions: tests/e2e/test_openai_wrapper.py, test_proxy.py."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ledgergate.ids import CACHE_BYPASS, CACHE_LABEL
from ledgergate.integrations.wire import (
    answer_text,
    bypassing_cache,
    cacheable_text,
    cached_chunks,
    cached_completion,
)
from ledgergate.services.proxy import core

# What the builders read of a CACHE_HIT Grant (admission.Gate makes the real ones).
HIT: Any = SimpleNamespace(request_id="r-1", requested_model="gpt-4o-mini", cached_response="Renews on 1 March.")


def _reply(*choices: dict[str, Any]) -> dict[str, Any]:
    return {"choices": list(choices), "usage": {"prompt_tokens": 5, "completion_tokens": 4}}


def _choice(content: Any, finish: str = "stop", **message: Any) -> dict[str, Any]:
    return {"index": 0, "message": {"role": "assistant", "content": content, **message}, "finish_reason": finish}


def test_only_one_whole_answer_with_text_is_offered_to_the_cache() -> None:
    assert answer_text(_reply(_choice("It renews."))) == "It renews."
    assert answer_text(_reply(_choice("It ren", "length"))) is None  # cut at the output cap
    assert answer_text(_reply(_choice("a"), {**_choice("b"), "index": 1})) is None  # n > 1
    assert answer_text(_reply(_choice(None, "tool_calls", tool_calls=[{"id": "c1"}]))) is None
    assert answer_text(_reply(_choice("", "stop"))) is None
    assert answer_text(SimpleNamespace(choices=[SimpleNamespace(
        finish_reason="stop", message=SimpleNamespace(content="obj", tool_calls=None))])) == "obj"
    assert cacheable_text(1, "stop", "x") == "x" and cacheable_text(2, "stop", "x") is None


def test_a_hit_is_a_chat_completion_of_the_openai_packages_own_type() -> None:
    reply = ChatCompletion.model_validate(cached_completion(HIT, created=7))
    assert reply.id == "ledgergate-cache-r-1" and reply.model == "gpt-4o-mini" and reply.created == 7
    assert [(c.message.role, c.message.content, c.finish_reason) for c in reply.choices] == [
        ("assistant", "Renews on 1 March.", "stop")]
    assert reply.usage is not None and (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (0, 0)


def test_a_hit_as_a_stream_carries_the_text_a_finish_and_the_usage_chunk_only_when_asked() -> None:
    chunks = [ChatCompletionChunk.model_validate(c) for c in cached_chunks(HIT, include_usage=False)]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Renews on 1 March."
    assert chunks[-1].choices[0].finish_reason == "stop" and all(c.usage is None for c in chunks)
    with_usage = [ChatCompletionChunk.model_validate(c) for c in cached_chunks(HIT, include_usage=True)]
    assert not with_usage[-1].choices and with_usage[-1].usage is not None
    assert with_usage[-1].usage.total_tokens == 0


def test_the_proxy_sends_a_hit_as_server_sent_events_ending_in_done() -> None:
    events = core.cached_events(HIT, wants_usage=False).split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert chunks == cached_chunks(HIT, False, created=chunks[0]["created"])


def test_a_stream_offers_its_text_only_for_one_choice_that_stopped_without_tool_calls() -> None:
    def tally(*events: dict[str, Any]) -> core.StreamTally:
        t = core.StreamTally(pass_usage=False)
        for e in events:
            t.line("data: " + json.dumps(e))
        return t

    def word(text: str, index: int = 0, finish: str | None = None, **delta: Any) -> dict[str, Any]:
        return {"choices": [{"index": index, "delta": {"content": text, **delta}, "finish_reason": finish}]}

    assert tally(word("a"), word(" b", finish="stop")).answer == "a b"
    assert tally(word("a"), word(" b", finish="length")).answer is None
    assert tally(word("a"), word("b", index=1, finish="stop")).answer is None
    assert tally(word("", tool_calls=[{"index": 0}]), word("", finish="stop")).answer is None


def test_a_hook_that_cannot_answer_in_place_of_the_call_bypasses_the_cache() -> None:
    assert bypassing_cache(None) == {CACHE_LABEL: CACHE_BYPASS}
    assert bypassing_cache({"team": "a", CACHE_LABEL: "x"}) == {"team": "a", CACHE_LABEL: CACHE_BYPASS}
