"""A LiteLLM `CustomLogger` that gates chat completions: it asks the gate before the call, calls what the gate
decided, and settles (or voids) from LiteLLM's success and failure events.

    import litellm
    from ledgergate import Gate, GateClient, GateSettings
    from ledgergate.integrations.litellm import GateLogger

    gate_logger = GateLogger(Gate(GateClient(), GateSettings(tenant_id="acme", workflow_id="support")))
    litellm.callbacks = [gate_logger]
    reply = await litellm.acompletion(model="gpt-4o", messages=[...], max_tokens=256)   # gated, settled
    reply = gate_logger.completion(model="gpt-4o", messages=[...], max_tokens=256)      # the sync path

Which hook gates (litellm 1.110): for `litellm.acompletion` the SDK runs
`async_pre_call_deployment_hook` of every logger in `litellm.callbacks` before the provider is called; an
exception there reaches the caller unchanged (GateDeniedError, ...) and what it returns replaces the call's
arguments, so a DOWNGRADE calls the cheaper model with the granted output cap. `async_pre_call_hook` runs in
the LiteLLM proxy only, and the synchronous `litellm.completion` has no hook that can stop a call: LiteLLM
catches and logs whatever `log_pre_api_call` raises. So synchronous calls go through `GateLogger.completion`,
which gates, then calls `litellm.completion`; a plain `litellm.completion` this logger sees is logged as
ungated (`ungated_litellm_call`, without its text) and goes ahead unaccounted.

Settlement: the usage in the response (`usage`), else the answer's text (the gate counts it, marked
estimated); a failure voids the reservation. An async call settles in `async_post_call_success_deployment_hook`,
before `acompletion` returns (LiteLLM's success event is a background task an ending event loop may drop); a
stream settles from the success event at its end. LiteLLM's failure event
carries no partial output, so a stream that breaks midway is voided too, not settled from its text. Only chat
completions are gated; embeddings, images, ... pass through. Per-call gate options ride in the call's
`metadata` under "ledgergate": {"workflow_id", "agent_id", "labels", "request_id", "max_cost_micro_usd"}; the
request id is otherwise LiteLLM's `litellm_call_id`. Set LITELLM_LOCAL_MODEL_COST_MAP=True before importing
litellm where its price map must not be fetched at import.

The response cache (docs/decisions/0013): every call asks with the cache bypassed (the label
{"cache": "bypass"}), so the gate neither answers it from the tenant's cache nor stores its answer. LiteLLM's
deployment hook can only rewrite a call's arguments, not answer in its place (a `mock_response` would be
logged and priced by LiteLLM as a call), so a CACHE_HIT here would become a paid call plus a wasted hit. For
cached answers, gate the call with the OpenAI wrapper or `Gate.admit` (a Grant's `cached_response`).
"""

from __future__ import annotations

import collections
import logging
import threading
import uuid
from collections.abc import Mapping
from typing import Any

import litellm
from litellm.integrations.custom_logger import CustomLogger
from litellm.types.utils import CallTypes

from ledgergate.admission import Gate, Grant
from ledgergate.errors import GateClientError
from ledgergate.integrations.wire import (
    bypassing_cache,
    decided_call,
    gate_messages,
    gate_options,
    output_cap,
    sampling_of,
    settle_response,
)

__all__ = ["GateLogger"]

GATED_CALLS = frozenset({CallTypes.acompletion, CallTypes.completion})
CALLS_HELD_MAX = 10_000
_log = logging.getLogger("ledgergate.integrations.litellm")


def _ask(kwargs: Mapping[str, Any], call_id: str) -> dict[str, Any]:
    options = gate_options((kwargs.get("metadata") or {}).get("ledgergate"))
    ask = {"messages": gate_messages(kwargs["messages"]), "model": kwargs["model"],
           "max_output_tokens": output_cap(kwargs),
           "tools": kwargs.get("tools"), "sampling": sampling_of(kwargs), "request_id": call_id, **options}
    ask["labels"] = bypassing_cache(ask.get("labels"))  # a hook cannot answer in place of the call
    return ask


def _decided(kwargs: Mapping[str, Any], grant: Grant) -> dict[str, Any]:
    return decided_call(kwargs, grant.model, grant.max_output_tokens)


class GateLogger(CustomLogger):
    def __init__(self, gate: Gate, *, calls_max: int = CALLS_HELD_MAX) -> None:
        super().__init__()
        if calls_max < 1:
            raise GateClientError("calls_max must be at least 1")
        self.gate = gate
        self.calls_max = calls_max
        self._lock = threading.Lock()
        self._grants: collections.OrderedDict[str, Grant] = collections.OrderedDict()

    # --- the async path: LiteLLM's own hook gates ----------------------------------------------

    async def async_pre_call_deployment_hook(self, kwargs: dict[str, Any], call_type: CallTypes | None
                                             ) -> dict[str, Any] | None:
        if call_type not in GATED_CALLS or not kwargs.get("messages"):
            return None
        call_id = str(kwargs["litellm_call_id"])
        grant = await self.gate.admit_async(**_ask(kwargs, call_id))
        self._hold(call_id, grant)
        return _decided(kwargs, grant)

    async def async_post_call_success_deployment_hook(self, request_data: dict[str, Any], response: Any,
                                                      call_type: CallTypes | None) -> Any:
        # Inline, before acompletion returns (the success event below is a task that a closing event loop
        # may never run); streams are not passed here: their success event settles them at their end.
        self.log_success_event(request_data, response, None, None)
        return None

    async def async_post_call_failure_deployment_hook(self, request_data: Mapping[str, Any], exception: Exception,
                                                      call_type: CallTypes | None, fallback_depth: int | None = None
                                                      ) -> None:
        self.log_failure_event(dict(request_data), None, None, None)

    async def async_log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        self.log_success_event(kwargs, response_obj, start_time, end_time)

    async def async_log_failure_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        self.log_failure_event(kwargs, response_obj, start_time, end_time)

    # --- the sync path: LiteLLM cannot be stopped from a logger, so this gates first ------------

    def completion(self, **kwargs: Any) -> Any:
        """`litellm.completion(**kwargs)`, gated. A non-streaming call is settled before it returns; a stream
        is settled by the success or failure event LiteLLM sends at its end (this logger must be in
        `litellm.callbacks` for that)."""
        call_id = str(kwargs.setdefault("litellm_call_id", str(uuid.uuid4())))
        grant = self.gate.admit(**_ask(kwargs, call_id))
        self._hold(call_id, grant)
        try:
            response = litellm.completion(**_decided(kwargs, grant))
        except BaseException:
            self._take(call_id)
            grant.void()  # nothing came back: nothing was produced
            raise
        if not kwargs.get("stream") and self._take(call_id) is not None:
            settle_response(grant, response)
        return response

    def log_pre_api_call(self, model: str, messages: Any, kwargs: dict[str, Any]) -> None:
        call_id = str(kwargs.get("litellm_call_id") or "")
        if kwargs.get("call_type") not in {t.value for t in GATED_CALLS}:
            return
        with self._lock:
            held = call_id in self._grants
        if not held:
            _log.warning("ungated_litellm_call", extra={"litellm_call_id": call_id, "model": model})

    def log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any) -> None:
        grant = self._take(str(kwargs.get("litellm_call_id") or ""))
        if grant is not None:
            settle_response(grant, response_obj)

    def log_failure_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any) -> None:
        grant = self._take(str(kwargs.get("litellm_call_id") or ""))
        if grant is not None:
            grant.void()

    # --- the grants held between the call's start and its end ----------------------------------

    def _hold(self, call_id: str, grant: Grant) -> None:
        with self._lock:
            self._grants[call_id] = grant
            while len(self._grants) > self.calls_max:
                # A call whose end never came: its reservation expires on the gate's side (its TTL).
                _, dropped = self._grants.popitem(last=False)
                _log.warning("call_forgotten", extra={"request_id": dropped.request_id})

    def _take(self, call_id: str) -> Grant | None:
        with self._lock:
            return self._grants.pop(call_id, None)
