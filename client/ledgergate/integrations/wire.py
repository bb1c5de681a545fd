"""OpenAI's chat wire format, as the gate needs it: the messages it counts, the usage it settles, the answer
text the response cache may store, and a cache hit's answer in OpenAI's shape. Shared by the OpenAI wrapper,
the proxy and the framework hooks (LiteLLM speaks the same format). Objects or dicts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ledgergate.admission import Grant
from ledgergate.errors import GateClientError
from ledgergate.ids import CACHE_BYPASS, CACHE_LABEL, SAMPLING_PARAMS

__all__ = ["cached_chunks", "cached_completion", "gate_messages", "usage_from_openai"]

ZERO_USAGE = {"input_tokens": 0, "cached_input_tokens": 0, "output_tokens": 0, "reasoning_tokens": 0}


# What a call may tell the gate beside the model call itself (the `ledgergate` keyword or metadata entry).
GATE_OPTIONS = frozenset({"workflow_id", "agent_id", "labels", "request_id", "max_cost_micro_usd"})


def gate_options(found: Mapping[str, Any] | None) -> dict[str, Any]:
    """A call's gate options, checked: an unknown one is a mistake to say, not to ignore."""
    options = dict(found or {})
    unknown = set(options) - GATE_OPTIONS
    if unknown:
        raise GateClientError(f"unknown ledgergate options {sorted(unknown)}; known: {sorted(GATE_OPTIONS)}")
    return options


def output_cap(kwargs: Mapping[str, Any]) -> int | None:
    """The output cap an OpenAI-style call asks for (`max_completion_tokens`, else `max_tokens`)."""
    cap = kwargs.get("max_completion_tokens") or kwargs.get("max_tokens")
    return None if cap is None else int(cap)


def sampling_of(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The answer-changing sampling parameters of an OpenAI-style call (what the response cache keys on)."""
    return {k: kwargs[k] for k in SAMPLING_PARAMS if kwargs.get(k) is not None}


def decided_call(kwargs: Mapping[str, Any], model: str, max_output_tokens: int) -> dict[str, Any]:
    """The call as the gate decided it: its model, its output cap (in the parameter the caller used)."""
    call = dict(kwargs, model=model)
    call["max_completion_tokens" if "max_completion_tokens" in call else "max_tokens"] = max_output_tokens
    return call


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Iterable):  # content parts: text counts; images and audio are not text tokens
        return " ".join(str(_get(part, "text") or "") for part in content if _get(part, "type") in (None, "text"))
    return str(content)


def gate_messages(messages: Iterable[Any]) -> list[dict[str, Any]]:
    """OpenAI chat messages -> the gate's (role, content, name): content parts joined as text, and an
    assistant's tool calls counted with it (their names and arguments are tokens the model reads)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        text = _text_of(_get(m, "content"))
        calls = _get(m, "tool_calls")
        if calls:
            text += " " + json.dumps([{"name": _get(_get(c, "function"), "name"),
                                       "arguments": _get(_get(c, "function"), "arguments")} for c in calls])
        name = _get(m, "name")
        out.append({"role": str(_get(m, "role") or "user"), "content": text, "name": name or None})
    return out


def usage_from_openai(usage: Any) -> dict[str, int] | None:
    """OpenAI usage -> the gate's: output excludes reasoning (OpenAI counts reasoning inside
    completion_tokens; the ledger keeps them apart and bills both)."""
    if usage is None:
        return None
    prompt = int(_get(usage, "prompt_tokens") or 0)
    completion = int(_get(usage, "completion_tokens") or 0)
    cached = int(_get(_get(usage, "prompt_tokens_details"), "cached_tokens") or 0)
    reasoning = int(_get(_get(usage, "completion_tokens_details"), "reasoning_tokens") or 0)
    reasoning = min(reasoning, completion)
    return {"input_tokens": prompt, "cached_input_tokens": min(cached, prompt),
            "output_tokens": completion - reasoning, "reasoning_tokens": reasoning}


def cacheable_text(choices: int, finish_reason: Any, text: Any) -> str | None:
    """The answer the response cache may store: one choice that ended on its own ("stop": not cut at the
    output cap, not a tool call) with text; None otherwise."""
    if choices != 1 or finish_reason != "stop" or not isinstance(text, str) or not text:
        return None
    return text


def answer_text(response: Any) -> str | None:
    """`cacheable_text` of an OpenAI-shaped chat completion."""
    choices = _get(response, "choices") or []
    if len(choices) != 1:
        return None
    message = _get(choices[0], "message")
    if _get(message, "tool_calls"):
        return None
    return cacheable_text(1, _get(choices[0], "finish_reason"), _get(message, "content"))


def settle_response(grant: Grant, response: Any) -> None:
    """Settle a grant with an OpenAI-shaped chat completion: its usage (and its answer's text when the
    decision asked for it: `cache_store`), else its answer's text (a server that reports no usage: the gate
    counts the answer, marked estimated)."""
    usage = usage_from_openai(_get(response, "usage"))
    if usage is not None:
        grant.settle(usage, answer_text(response) if grant.cache_store else None)
        return
    choices = _get(response, "choices") or []
    grant.settle_from_text("".join(_get(_get(c, "message"), "content") or "" for c in choices), "OK")


def bypassing_cache(labels: Mapping[str, str] | None) -> dict[str, str]:
    """`labels` with the response cache bypassed: for a hook that cannot answer in place of the call."""
    return {**(labels or {}), CACHE_LABEL: CACHE_BYPASS}


# --- a cache hit, answered in OpenAI's shape (the wrapper validates these into its SDK's types, the proxy
# sends them as they are) ---

CACHED_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}  # nothing was called


def cached_id(grant: Grant) -> str:
    return f"ledgergate-cache-{grant.request_id}"


def cached_completion(grant: Grant, created: int | None = None) -> dict[str, Any]:
    """A CACHE_HIT grant's answer as an OpenAI chat completion: one choice, the requested model, zero usage."""
    return {"id": cached_id(grant), "object": "chat.completion",
            "created": int(time.time()) if created is None else created, "model": grant.requested_model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": grant.cached_response or ""},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": dict(CACHED_USAGE)}


def cached_chunks(grant: Grant, include_usage: bool, created: int | None = None) -> list[dict[str, Any]]:
    """A CACHE_HIT grant's answer as the chunks of an OpenAI stream: the text, the finish, and the usage chunk
    when the caller asked for it (`stream_options.include_usage`)."""
    base = {"id": cached_id(grant), "object": "chat.completion.chunk",
            "created": int(time.time()) if created is None else created, "model": grant.requested_model}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": grant.cached_response or ""},
                              "finish_reason": None, "logprobs": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}]},
    ]
    if include_usage:
        chunks.append({**base, "choices": [], "usage": dict(CACHED_USAGE)})
    return chunks
