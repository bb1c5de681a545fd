"""The proxy's pure core: what a chat request asks for, what the upstream is told, how a refusal reads in
OpenAI's error format, what a stream delivered, and a cache hit's answer as server-sent events. No I/O: the
adapter (app.py) does that."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ledgergate.admission import Grant
from ledgergate.errors import GateDeniedError, GateThrottledError, LedgergateError
from ledgergate.integrations.wire import cacheable_text, cached_chunks, gate_messages, usage_from_openai
from ledgergate.shared.catalogue import Deployment

WORKFLOW_HEADER = "x-ledgergate-workflow"
AGENT_HEADER = "x-ledgergate-agent"
REQUEST_ID_HEADER = "x-ledgergate-request-id"
CACHE_HEADER = "x-ledgergate-cache"  # "hit" on an answer from the tenant's response cache
# Denials that are the request's own fault read as 400 (as OpenAI answers a prompt over the context window);
# a policy that forbids the model 403; every other DENY is about money: 402.
BAD_REQUEST_REASONS = frozenset({"invalid_request", "prompt_too_long", "unknown_model"})
FORBIDDEN_REASONS = frozenset({"model_not_allowed", "no_candidate", "unauthenticated"})


class ProxyError(LedgergateError):
    """A refusal, rendered as OpenAI renders errors: {"error": {"message", "type", "param", "code"}}."""

    status = 400
    kind = "invalid_request_error"

    def __init__(self, message: str, *, status: int | None = None, kind: str | None = None,
                 code: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status or self.status
        self.kind = kind or self.kind
        self.error_code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": None, "code": self.error_code}}


@dataclass(frozen=True, slots=True)
class ChatCall:
    """A validated /v1/chat/completions body and what the gate needs from it."""

    body: dict[str, Any]
    model: str
    messages: list[dict[str, Any]]
    max_output_tokens: int | None
    stream: bool
    wants_usage: bool
    tools: Any = None


def parse_chat(body: Any, messages_max: int) -> ChatCall:
    if not isinstance(body, dict):
        raise ProxyError("the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ProxyError("`model` is required (a string)", code="missing_model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ProxyError("`messages` is required (a non-empty array)", code="missing_messages")
    if len(messages) > messages_max:
        raise ProxyError(f"{len(messages)} messages is more than this gateway takes ({messages_max})")
    if not all(isinstance(m, dict) for m in messages):
        raise ProxyError("every message must be an object with a role and content")
    cap = body.get("max_completion_tokens", body.get("max_tokens"))
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise ProxyError("max_tokens / max_completion_tokens must be a positive integer")
    if body.get("n", 1) != 1:
        raise ProxyError("n > 1 is not gated yet: ask for one choice per request", code="unsupported_parameter")
    stream = bool(body.get("stream"))
    options = body.get("stream_options") or {}
    return ChatCall(body, model, gate_messages(messages), cap, stream,
                    bool(isinstance(options, dict) and options.get("include_usage")), body.get("tools"))


def upstream_body(call: ChatCall, model: str, max_output_tokens: int) -> dict[str, Any]:
    """The request as the gate decided it: the deployment's model, the granted cap (in the caller's parameter),
    and a stream that reports its usage."""
    out = dict(call.body, model=model)
    if "max_completion_tokens" in out:
        out["max_completion_tokens"] = max_output_tokens
    else:
        out["max_tokens"] = max_output_tokens
    if call.stream:
        options = out.get("stream_options")
        out["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return out


@dataclass(frozen=True, slots=True)
class Upstream:
    base_url: str
    model: str
    api_key_env: str | None


def upstream_for(deployment: Deployment | None, decided_model: str, override_base_url: str) -> Upstream:
    if override_base_url:
        return Upstream(override_base_url.rstrip("/"), decided_model, None)
    if deployment is None or not deployment.base_url:
        raise ProxyError(f"the deployment catalogue gives model {decided_model!r} no base_url to forward to",
                         status=502, kind="server_error", code="no_upstream")
    return Upstream(deployment.base_url.rstrip("/"), deployment.upstream_model or decided_model,
                    deployment.api_key_env)


def refusal(exc: GateDeniedError) -> ProxyError:
    """A DENY or THROTTLE as the OpenAI-style error a client expects (429s carry Retry-After, which the openai
    package honours: it retries after it)."""
    scope = f" (bound by {exc.binding_scope})" if exc.binding_scope else ""
    headers = {"x-ledgergate-request-id": exc.request_id}
    if isinstance(exc, GateThrottledError):
        wait_ms = max(1, exc.retry_after_ms)
        headers.update({"retry-after": str(-(-wait_ms // 1000)), "retry-after-ms": str(wait_ms)})
        return ProxyError(f"rate limited by the gate: retry after {wait_ms} ms", status=429, kind="requests",
                          code="rate_limit_exceeded", headers=headers)
    if exc.reason in BAD_REQUEST_REASONS:
        return ProxyError(f"denied: {exc.reason}{scope}", status=400, code=exc.reason, headers=headers)
    if exc.reason in FORBIDDEN_REASONS:
        return ProxyError(f"denied: {exc.reason}{scope}", status=403, kind="permission_error", code=exc.reason,
                          headers=headers)
    return ProxyError(f"denied by budget: {exc.reason}{scope}", status=402, kind="insufficient_quota",
                      code=exc.reason, headers=headers)


@dataclass(slots=True)
class StreamTally:
    """What a server-sent-events stream delivered: its text, its usage chunk, whether it finished."""

    pass_usage: bool
    parts: list[str] = field(default_factory=list)
    usage: dict[str, int] | None = None
    finished: bool = False
    skip_blank: bool = False
    finish_reason: str | None = None
    indexes: set[int] = field(default_factory=set)  # the choices seen
    tool_calls: bool = False

    def line(self, line: str) -> str | None:
        """One line of the upstream's stream -> the line to send on (None: drop it)."""
        if not line:
            if self.skip_blank:
                self.skip_blank = False
                return None
            return line
        if not line.startswith("data:"):
            return line
        data = line[5:].strip()
        if data == "[DONE]":
            return line
        try:
            chunk = json.loads(data)
        except ValueError:
            return line  # not ours to judge; pass it on
        if chunk.get("usage"):
            self.usage = usage_from_openai(chunk["usage"])
        choices = chunk.get("choices") or []
        for choice in choices:
            index = choice.get("index")
            self.indexes.add(index if isinstance(index, int) else 0)
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                self.parts.append(content)
            if delta.get("tool_calls"):
                self.tool_calls = True
            if choice.get("finish_reason"):
                self.finished = True
                self.finish_reason = str(choice["finish_reason"])
        if not choices and not self.pass_usage:
            self.skip_blank = True  # the usage chunk the caller did not ask for, and its separator
            return None
        return line

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def answer(self) -> str | None:
        """The text the response cache may store: one whole choice ("stop"), no tool call."""
        return None if self.tool_calls else cacheable_text(len(self.indexes), self.finish_reason, self.text)


def cached_events(grant: Grant, wants_usage: bool) -> str:
    """A CACHE_HIT's answer as the server-sent events of an OpenAI stream, [DONE] included."""
    events = [f"data: {json.dumps(chunk)}\n\n" for chunk in cached_chunks(grant, wants_usage)]
    return "".join(events) + "data: [DONE]\n\n"
