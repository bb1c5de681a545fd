"""A LangChain callback handler that gates every chat-model (and text-LLM) run it sees.

    from ledgergate import Gate, GateClient, GateSettings
    from ledgergate.integrations.langchain import GateCallbackHandler

    handler = GateCallbackHandler(Gate(GateClient(), GateSettings(tenant_id="acme", workflow_id="support")))
    reply = chat_model.invoke(messages, config={"callbacks": [handler]})   # GateDeniedError stops the run

`on_chat_model_start` asks the gate before the model is called (the handler sets `raise_error`, so LangChain
lets the gate's error out and the model is never called); `on_llm_end` settles with the usage the model
reported (`llm_output["token_usage"]`, else the message's `usage_metadata`), or from the answer's text when
it reported none; `on_llm_error` voids the reservation when nothing came out, else settles from the partial
text. The request id is the run id unless the run's metadata names one. Per-run gate options ride in the
run's metadata under "ledgergate": {"workflow_id", "agent_id", "labels", "request_id", "max_cost_micro_usd"}.

What a callback cannot do: change the call. LangChain gives a handler no way to swap the model or lower its
output cap, so
- a DOWNGRADE raises GateDowngradeError by default (`on_downgrade="raise"`: the reservation is voided and
  the caller may retry with `error.model`), or lets the requested model run (`on_downgrade="proceed"`: the
  settlement then names the model that ran, so the ledger prices what was spent, beyond what was reserved);
- a grant of fewer output tokens than asked is not enforced: the model's own cap applies, and the ledger
  settles what was really used.
- a cached answer cannot be returned in place of the model's: every run asks with the response cache
  bypassed (the label {"cache": "bypass"}: neither served from the tenant's cache nor stored into it), so a
  CACHE_HIT never turns into a paid call plus a wasted hit.
For all three, wrap the call in `Gate.admit` yourself (ledgergate.admission) when the gate's decision must be
followed exactly (a CACHE_HIT Grant carries the answer: `cached_response`).

`AsyncGateCallbackHandler` does the same without blocking the event loop, for `ainvoke` / `astream` runs only:
LangChain swallows an async handler's error in a synchronous run, so there it cannot stop a DENY.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult

from ledgergate.admission import Gate, Grant
from ledgergate.errors import GateClientError, GateDeniedError
from ledgergate.integrations.wire import bypassing_cache, gate_messages, gate_options, usage_from_openai

__all__ = ["AsyncGateCallbackHandler", "GateCallbackHandler", "GateDowngradeError"]

DOWNGRADE_MODES = ("raise", "proceed")
RUNS_HELD_MAX = 10_000
ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "function": "function",
         "developer": "developer", "HumanMessageChunk": "user", "AIMessageChunk": "assistant",
         "SystemMessageChunk": "system", "ToolMessageChunk": "tool", "FunctionMessageChunk": "function"}
_log = logging.getLogger("ledgergate.integrations.langchain")


class GateDowngradeError(GateDeniedError):
    """The gate answered DOWNGRADE to `model` (at most `max_output_tokens`), which a callback cannot apply."""

    code = "gate_downgrade_unenforceable"

    def __init__(self, grant: Grant) -> None:
        self.model = grant.model
        self.max_output_tokens = grant.max_output_tokens
        super().__init__(dict(grant.decision or {}, request_id=grant.request_id),
                         f"the gate downgraded request {grant.request_id} from {grant.requested_model} to "
                         f"{grant.model} (at most {grant.max_output_tokens} output tokens), which a LangChain "
                         "callback cannot apply: call that model, or set on_downgrade='proceed'")


def lc_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages -> the gate's, through OpenAI's wire shape (wire.gate_messages)."""
    out = []
    for m in messages:
        role = getattr(m, "role", None) if m.type == "chat" else ROLES.get(m.type, m.type)
        content: Any = m.content
        if isinstance(content, list):  # string parts are text parts
            content = [{"type": "text", "text": p} if isinstance(p, str) else p for p in content]
        calls = [{"function": {"name": c.get("name"), "arguments": json.dumps(c.get("args"), default=str)}}
                 for c in getattr(m, "tool_calls", None) or ()]
        out.append({"role": role or "user", "content": content, "name": m.name, "tool_calls": calls or None})
    return gate_messages(out)


def usage_from_result(response: LLMResult) -> dict[str, int] | None:
    """The usage a LangChain result reports: OpenAI's token_usage in llm_output, else the messages'
    usage_metadata (output_tokens there includes reasoning, as OpenAI's completion_tokens does)."""
    token_usage = (response.llm_output or {}).get("token_usage")
    if token_usage and "prompt_tokens" in token_usage:
        return usage_from_openai(token_usage)
    found: dict[str, int] | None = None
    for generations in response.generations:
        for generation in generations:
            meta = getattr(getattr(generation, "message", None), "usage_metadata", None)
            if not meta:
                continue
            prompt, output = int(meta.get("input_tokens") or 0), int(meta.get("output_tokens") or 0)
            cached = int((meta.get("input_token_details") or {}).get("cache_read") or 0)
            reasoning = min(int((meta.get("output_token_details") or {}).get("reasoning") or 0), output)
            one = {"input_tokens": prompt, "cached_input_tokens": min(cached, prompt),
                   "output_tokens": output - reasoning, "reasoning_tokens": reasoning}
            found = one if found is None else {k: found[k] + one[k] for k in one}
    return found


def text_of_result(response: LLMResult | None) -> str:
    if response is None:
        return ""
    return "".join(g.text or "" for gens in response.generations for g in gens)


class _Runs:
    """What both handlers share: the ask, the grants held by run id (bounded), and each run's end."""

    def __init__(self, gate: Gate, model: str | None, on_downgrade: str, runs_max: int) -> None:
        if on_downgrade not in DOWNGRADE_MODES:
            raise GateClientError(f"on_downgrade must be one of {DOWNGRADE_MODES}, not {on_downgrade!r}")
        if runs_max < 1:
            raise GateClientError("runs_max must be at least 1")
        self.gate = gate
        self.model = model
        self.on_downgrade = on_downgrade
        self.runs_max = runs_max
        self._lock = threading.Lock()
        self._grants: collections.OrderedDict[UUID, Grant] = collections.OrderedDict()

    def ask(self, serialized: Mapping[str, Any] | None, messages: list[dict[str, Any]], run_id: UUID,
            metadata: Mapping[str, Any] | None, invocation: Mapping[str, Any] | None) -> dict[str, Any]:
        meta = metadata or {}
        params = invocation or {}
        options = gate_options(meta.get("ledgergate"))
        init = (serialized or {}).get("kwargs") or {}
        model = (params.get("model") or params.get("model_name") or meta.get("ls_model_name")
                 or init.get("model") or init.get("model_name") or self.model)
        if not model:
            raise GateClientError("the chat model names no model (invocation params, ls_model_name, its "
                                  "arguments): pass GateCallbackHandler(gate, model=...)")
        cap = (params.get("max_completion_tokens") or params.get("max_tokens") or meta.get("ls_max_tokens")
               or init.get("max_completion_tokens") or init.get("max_tokens"))
        ask = {"messages": messages, "model": str(model), "max_output_tokens": int(cap) if cap else None,
               "tools": params.get("tools"), "request_id": str(run_id), **options}
        ask["labels"] = bypassing_cache(ask.get("labels"))  # a callback cannot answer in place of the model
        return ask

    def hold(self, run_id: UUID, grant: Grant) -> None:
        if grant.model != grant.requested_model:
            if self.on_downgrade == "raise":
                grant.void()  # nothing will be called
                raise GateDowngradeError(grant)
            _log.warning("downgrade_not_applied", extra={"request_id": grant.request_id,
                                                         "model": grant.requested_model, "decided": grant.model})
            grant.model = grant.requested_model  # the settlement names the model that actually ran
        with self._lock:
            self._grants[run_id] = grant
            while len(self._grants) > self.runs_max:
                # A run whose end never came: its reservation expires on the gate's side (its TTL).
                _, dropped = self._grants.popitem(last=False)
                _log.warning("run_forgotten", extra={"request_id": dropped.request_id})

    def end(self, run_id: UUID, response: LLMResult) -> None:
        grant = self._take(run_id)
        if grant is None:
            return
        usage = usage_from_result(response)
        if usage is not None:
            grant.settle(usage)
        else:
            grant.settle_from_text(text_of_result(response), "OK")  # no usage reported: the gate counts it

    def error(self, run_id: UUID, response: LLMResult | None) -> None:
        grant = self._take(run_id)
        if grant is None:
            return
        text = text_of_result(response)  # what a stream produced before it broke
        if text:
            grant.settle_from_text(text, "TRUNCATED")
        else:
            grant.void()

    def _take(self, run_id: UUID) -> Grant | None:
        with self._lock:
            return self._grants.pop(run_id, None)


def _prompt_messages(prompts: Sequence[str]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": p, "name": None} for p in prompts]


def _chat_messages(messages: Sequence[Sequence[BaseMessage]]) -> list[dict[str, Any]]:
    # LangChain starts one run per message list; more than one would be counted together (never less).
    return [m for batch in messages for m in lc_messages(batch)]


class GateCallbackHandler(BaseCallbackHandler):
    """Gates chat-model and LLM runs; see the module's text for what it can and cannot enforce. `model`: the
    model to ask for when the run names none (fake and custom models)."""

    raise_error = True  # the gate's DENY must stop the run, not be logged and ignored

    def __init__(self, gate: Gate, *, model: str | None = None, on_downgrade: str = "raise",
                 runs_max: int = RUNS_HELD_MAX) -> None:
        self._runs = _Runs(gate, model, on_downgrade, runs_max)
        self.gate = gate

    def on_chat_model_start(self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *,
                            run_id: UUID, metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        ask = self._runs.ask(serialized, _chat_messages(messages), run_id, metadata, kwargs.get("invocation_params"))
        self._runs.hold(run_id, self.gate.admit(**ask))

    def on_llm_start(self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID,
                     metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        ask = self._runs.ask(serialized, _prompt_messages(prompts), run_id, metadata, kwargs.get("invocation_params"))
        self._runs.hold(run_id, self.gate.admit(**ask))

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        self._runs.end(run_id, response)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._runs.error(run_id, kwargs.get("response"))


class AsyncGateCallbackHandler(AsyncCallbackHandler):
    """GateCallbackHandler for async runs (`ainvoke`, `astream`): the decision is awaited."""

    raise_error = True

    def __init__(self, gate: Gate, *, model: str | None = None, on_downgrade: str = "raise",
                 runs_max: int = RUNS_HELD_MAX) -> None:
        self._runs = _Runs(gate, model, on_downgrade, runs_max)
        self.gate = gate

    async def on_chat_model_start(self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *,
                                  run_id: UUID, metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        ask = self._runs.ask(serialized, _chat_messages(messages), run_id, metadata, kwargs.get("invocation_params"))
        self._runs.hold(run_id, await self.gate.admit_async(**ask))

    async def on_llm_start(self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID,
                           metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        ask = self._runs.ask(serialized, _prompt_messages(prompts), run_id, metadata, kwargs.get("invocation_params"))
        self._runs.hold(run_id, await self.gate.admit_async(**ask))

    async def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        self._runs.end(run_id, response)

    async def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._runs.error(run_id, kwargs.get("response"))
