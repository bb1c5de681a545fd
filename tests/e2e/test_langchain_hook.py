"""The real langchain-core, gated by its callback handler (ledgergate.integrations.langchain): its fake chat
models stand in for the provider, the four services run on the real broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
    FakeListChatModelError,
    GenericFakeChatModel,
)
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from ledgergate import Gate, GateDeniedError, GateSettings, topics
from ledgergate.integrations.langchain import AsyncGateCallbackHandler, GateCallbackHandler, GateDowngradeError
from tests.e2e.conftest import Gate as RunningGate
from tests.e2e.test_openai_wrapper import USD, _ledger_of, _tenant

ASK = [SystemMessage("You are terse."), HumanMessage("Summarise the ledger.")]


def _handler(running: RunningGate, tenant: str, cls: Any = GateCallbackHandler, **options: Any) -> Any:
    return cls(Gate(running.client, GateSettings(tenant_id=tenant, workflow_id="wf")), model="gpt-4o-mini",
               **options)


def _config(handler: Any, run_id: uuid.UUID, **gate_options: Any) -> dict[str, Any]:
    return {"callbacks": [handler], "run_id": run_id, "metadata": {"ledgergate": gate_options}}


def test_a_run_is_gated_and_settled_with_the_usage_the_model_reported(gate_module: RunningGate) -> None:
    tenant = _tenant(gate_module)
    handler = _handler(gate_module, tenant)
    reply = AIMessage("The ledger balances.", usage_metadata={
        "input_tokens": 17, "output_tokens": 9, "total_tokens": 26,
        "input_token_details": {"cache_read": 5}, "output_token_details": {"reasoning": 2}})
    model = GenericFakeChatModel(messages=iter([reply]))
    run_id = uuid.uuid4()
    assert model.invoke(ASK, config=_config(handler, run_id, agent_id="summariser")).content == reply.content
    entries = _ledger_of(gate_module, str(run_id), ("ReservationPlaced", "ReservationSettled"))
    assert entries["ReservationPlaced"]["requested_model"] == "gpt-4o-mini"
    assert entries["ReservationPlaced"]["agent_id"] == "summariser"
    settled = entries["ReservationSettled"]
    assert settled["usage"] == {"input_tokens": 17, "cached_input_tokens": 5, "output_tokens": 7,
                                "reasoning_tokens": 2}
    assert settled["usage_estimated"] is False and settled["workflow_id"] == "wf"


def test_a_model_that_reports_no_usage_is_settled_from_its_text(gate_module: RunningGate) -> None:
    tenant = _tenant(gate_module)
    model = FakeListChatModel(responses=["one two three four five six"])
    run_id = uuid.uuid4()
    model.invoke(ASK, config=_config(_handler(gate_module, tenant), run_id))
    settled = _ledger_of(gate_module, str(run_id), ("ReservationSettled",))["ReservationSettled"]
    assert settled["usage_estimated"] is True and settled["usage"]["output_tokens"] > 0


def test_a_deny_raises_the_typed_error_and_the_model_is_not_called(gate_module: RunningGate) -> None:
    broke = _tenant(gate_module, limit_micro_usd=1)
    model = FakeListChatModel(responses=["never", "twice"])
    with pytest.raises(GateDeniedError) as denied:
        model.invoke(ASK, config=_config(_handler(gate_module, broke), uuid.uuid4()))
    assert denied.value.reason == "budget_exhausted" and denied.value.binding_scope == f"tenant:{broke}"
    assert model.i == 0  # FakeListChatModel steps through its answers: none was given


def _failing() -> Iterator[AIMessage]:
    raise RuntimeError("provider down")
    yield AIMessage("unreachable")


def test_a_run_that_fails_before_any_output_voids_and_a_broken_stream_settles_its_text(
        gate_module: RunningGate) -> None:
    tenant = _tenant(gate_module)
    handler = _handler(gate_module, tenant)
    failed_id, cut_id = uuid.uuid4(), uuid.uuid4()
    with pytest.raises(RuntimeError, match="provider down"):
        GenericFakeChatModel(messages=_failing()).invoke(ASK, config=_config(handler, failed_id))
    entries = _ledger_of(gate_module, str(failed_id), ("ReservationVoided",))
    assert "ReservationSettled" not in entries
    model = FakeListChatModel(responses=["alpha beta gamma delta"], error_on_chunk_number=6)
    with pytest.raises(FakeListChatModelError):
        for _ in model.stream(ASK, config=_config(handler, cut_id)):
            pass
    cut = _ledger_of(gate_module, str(cut_id), ("ReservationSettled",))["ReservationSettled"]
    assert cut["usage_estimated"] is True and cut["usage"]["output_tokens"] > 0


def test_a_downgrade_a_callback_cannot_apply_raises_or_runs_the_requested_model_and_says_so(
        gate_module: RunningGate) -> None:
    tenant = _tenant(gate_module, limit_micro_usd=2_000)  # gpt-4o's hold does not fit; gpt-4o-mini's does
    gate = Gate(gate_module.client, GateSettings(tenant_id=tenant, workflow_id="wf"))
    model = FakeListChatModel(responses=["short answer", "second answer"])
    refused_id, ran_id = uuid.uuid4(), uuid.uuid4()
    with pytest.raises(GateDowngradeError) as downgraded:
        model.invoke(ASK, config=_config(GateCallbackHandler(gate, model="gpt-4o"), refused_id))
    assert downgraded.value.model != "gpt-4o" and model.i == 0
    assert "ReservationVoided" in _ledger_of(gate_module, str(refused_id), ("ReservationVoided",))
    proceeding = GateCallbackHandler(gate, model="gpt-4o", on_downgrade="proceed")
    model.invoke(ASK, config=_config(proceeding, ran_id))
    entries = _ledger_of(gate_module, str(ran_id), ("ReservationPlaced", "ReservationSettled"))
    assert entries["ReservationPlaced"]["model"] != "gpt-4o"
    assert entries["ReservationSettled"]["model"] == "gpt-4o"  # priced as what ran


def test_the_async_handler_gates_ainvoke_and_so_does_the_sync_one(gate_module: RunningGate) -> None:
    tenant = _tenant(gate_module, limit_micro_usd=100 * USD)
    broke = _tenant(gate_module, limit_micro_usd=1)
    run_id = uuid.uuid4()
    model = FakeListChatModel(responses=["async answer", "second answer"])

    async def run() -> None:
        await model.ainvoke(ASK, config=_config(_handler(gate_module, tenant, AsyncGateCallbackHandler), run_id))
        with pytest.raises(GateDeniedError):
            await model.ainvoke(ASK, config=_config(_handler(gate_module, broke, AsyncGateCallbackHandler),
                                                    uuid.uuid4()))
        with pytest.raises(GateDeniedError):  # the sync handler in an async run: LangChain runs it in a thread
            await model.ainvoke(ASK, config=_config(_handler(gate_module, broke), uuid.uuid4()))

    asyncio.run(run())
    assert model.i == 1  # the denied run never reached the model
    settled = _ledger_of(gate_module, str(run_id), ("ReservationSettled",))["ReservationSettled"]
    assert settled["usage_estimated"] is True


def test_a_run_asks_with_the_cache_bypassed_so_a_hit_never_replaces_a_call_the_model_makes(
        gate_module: RunningGate) -> None:
    # A callback cannot return a cached answer in place of the model's: every run bypasses the cache (and a
    # model without usage is settled from its text, which must then not become an entry either).
    tenant = _tenant(gate_module, policy={"cache": {"enabled": True, "serve_nondeterministic": True}})
    handler = _handler(gate_module, tenant)
    model = FakeListChatModel(responses=["the same answer"] * 4)  # its counter wraps at the last one
    run_ids = [uuid.uuid4() for _ in range(3)]
    for run_id in run_ids:
        model.invoke(ASK, config=_config(handler, run_id, labels={"team": "a"}))
        _ledger_of(gate_module, str(run_id), ("ReservationSettled",))
    assert model.i == 3
    ids = {str(r) for r in run_ids}
    requests = [r for _, _, r in gate_module.read(topics.REQUESTS) if r["request_id"] in ids]
    assert [r["labels"] for r in requests] == [{"team": "a", "cache": "bypass"}] * 3
    decisions = [d for d in gate_module.decisions() if d["request_id"] in ids]
    assert [(d["outcome"], d["cache_store"]) for d in decisions] == [("ALLOW", False)] * 3
