"""The real litellm, gated by its CustomLogger (ledgergate.integrations.litellm): `mock_response` stands in for
the provider (no network), the four services run on the real broker."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

# Before litellm is imported: its price map from the package, never fetched.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from litellm.integrations.custom_logger import CustomLogger

from ledgergate import Gate, GateDeniedError, GateSettings, topics
from ledgergate.integrations.litellm import GateLogger
from tests.e2e.conftest import Gate as RunningGate
from tests.e2e.test_openai_wrapper import ASK, _ledger_of, _tenant


class Seen(CustomLogger):
    """Which calls reached the provider: LiteLLM logs the pre-API call right before sending it."""

    def __init__(self) -> None:
        super().__init__()
        self.models: list[str] = []

    def log_pre_api_call(self, model: str, messages: Any, kwargs: dict[str, Any]) -> None:
        self.models.append(model)


def _install(*callbacks: CustomLogger) -> None:
    """`litellm.callbacks` = callbacks; LiteLLM copies each into its per-event lists at the first call, so the
    ones they replace are taken out of those too (else a previous test's logger would go on seeing calls)."""
    for old in list(litellm.callbacks):
        litellm.logging_callback_manager.remove_callback_from_all_lists(old)
    litellm.callbacks = list(callbacks)


@pytest.fixture
def seen() -> Iterator[Seen]:
    recorder = Seen()
    _install(recorder)
    yield recorder
    _install()


def _logger(running: RunningGate, tenant: str, seen: Seen) -> GateLogger:
    gate_logger = GateLogger(Gate(running.client, GateSettings(tenant_id=tenant, workflow_id="wf")))
    _install(gate_logger, seen)
    return gate_logger


def _gated(request_id: str) -> dict[str, Any]:
    return {"metadata": {"ledgergate": {"request_id": request_id}}}


def test_acompletion_is_gated_called_as_decided_and_settled_with_its_usage(
        gate_module: RunningGate, seen: Seen) -> None:
    _logger(gate_module, _tenant(gate_module), seen)
    request_id = f"l-{uuid.uuid4().hex}"
    reply = asyncio.run(litellm.acompletion(model="gpt-4o", messages=ASK, max_tokens=300,
                                            mock_response="The ledger balances.", **_gated(request_id)))
    assert reply.model == "gpt-4o" and seen.models == ["gpt-4o"]
    entries = _ledger_of(gate_module, request_id, ("ReservationPlaced", "ReservationSettled"))
    assert entries["ReservationPlaced"]["granted_output_tokens"] <= 300
    settled = entries["ReservationSettled"]
    assert settled["usage"]["input_tokens"] == reply.usage.prompt_tokens
    assert settled["usage"]["output_tokens"] == reply.usage.completion_tokens
    assert settled["usage_estimated"] is False and settled["workflow_id"] == "wf"


def test_a_downgrade_calls_the_cheaper_model_and_a_deny_raises_without_calling(
        gate_module: RunningGate, seen: Seen) -> None:
    _logger(gate_module, _tenant(gate_module, limit_micro_usd=2_000), seen)  # gpt-4o's hold does not fit
    request_id = f"d-{uuid.uuid4().hex}"
    reply = asyncio.run(litellm.acompletion(model="gpt-4o", messages=ASK, max_tokens=300, mock_response="ok",
                                            **_gated(request_id)))
    placed = _ledger_of(gate_module, request_id, ("ReservationPlaced", "ReservationSettled"))["ReservationPlaced"]
    assert reply.model == placed["model"] != "gpt-4o" and seen.models == [placed["model"]]
    broke = _tenant(gate_module, limit_micro_usd=1)
    _logger(gate_module, broke, seen)
    with pytest.raises(GateDeniedError) as denied:
        asyncio.run(litellm.acompletion(model="gpt-4o", messages=ASK, max_tokens=300, mock_response="never"))
    assert denied.value.reason == "budget_exhausted" and denied.value.binding_scope == f"tenant:{broke}"
    assert len(seen.models) == 1  # the denied call never reached the provider


def test_a_failing_call_voids_its_reservation(gate_module: RunningGate, seen: Seen) -> None:
    _logger(gate_module, _tenant(gate_module), seen)
    request_id = f"e-{uuid.uuid4().hex}"
    boom = litellm.InternalServerError(message="provider down", llm_provider="openai", model="gpt-4o")
    with pytest.raises(litellm.InternalServerError):
        asyncio.run(litellm.acompletion(model="gpt-4o", messages=ASK, max_tokens=50, mock_response=boom,
                                        **_gated(request_id)))
    entries = _ledger_of(gate_module, request_id, ("ReservationVoided",))
    assert "ReservationSettled" not in entries


def test_an_async_stream_is_settled_when_it_ends(gate_module: RunningGate, seen: Seen) -> None:
    _logger(gate_module, _tenant(gate_module), seen)
    request_id = f"s-{uuid.uuid4().hex}"

    async def run() -> str:
        stream = await litellm.acompletion(model="gpt-4o-mini", messages=ASK, max_tokens=40, stream=True,
                                           mock_response="one two three four", **_gated(request_id))
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    assert asyncio.run(run()) == "one two three four"
    settled = _ledger_of(gate_module, request_id, ("ReservationSettled",))["ReservationSettled"]
    assert settled["usage"]["output_tokens"] > 0


def test_the_sync_path_gates_through_the_logger_and_a_plain_completion_is_reported_ungated(
        gate_module: RunningGate, seen: Seen, caplog: pytest.LogCaptureFixture) -> None:
    tenant = _tenant(gate_module)
    gate_logger = _logger(gate_module, tenant, seen)
    request_id = f"y-{uuid.uuid4().hex}"
    reply = gate_logger.completion(model="gpt-4o-mini", messages=ASK, max_tokens=30, mock_response="sync answer",
                                   **_gated(request_id))
    settled = _ledger_of(gate_module, request_id, ("ReservationSettled",))["ReservationSettled"]
    assert settled["usage"]["output_tokens"] == reply.usage.completion_tokens
    broke_logger = _logger(gate_module, _tenant(gate_module, limit_micro_usd=1), seen)
    calls_before = len(seen.models)
    with pytest.raises(GateDeniedError):
        broke_logger.completion(model="gpt-4o-mini", messages=ASK, max_tokens=30, mock_response="never")
    assert len(seen.models) == calls_before
    with caplog.at_level(logging.WARNING, logger="ledgergate.integrations.litellm"):
        litellm.completion(model="gpt-4o-mini", messages=ASK, max_tokens=5, mock_response="unaccounted")
    assert [r.message for r in caplog.records] == ["ungated_litellm_call"]
    assert all("Summarise" not in str(vars(r)) for r in caplog.records)  # never the prompt's text


def test_a_call_asks_with_the_cache_bypassed_so_a_hit_never_replaces_a_call_litellm_makes(
        gate_module: RunningGate, seen: Seen) -> None:
    # The deployment hook can only rewrite the call, not answer in its place: every call bypasses the cache.
    _logger(gate_module, _tenant(gate_module, policy={"cache": {"enabled": True}}), seen)
    ids = [f"c-{uuid.uuid4().hex}" for _ in range(3)]
    for request_id in ids:
        asyncio.run(litellm.acompletion(model="gpt-4o-mini", messages=ASK, max_tokens=30, temperature=0,
                                        mock_response="the same answer",
                                        metadata={"ledgergate": {"request_id": request_id, "labels": {"team": "a"}}}))
        _ledger_of(gate_module, request_id, ("ReservationSettled",))
    assert seen.models == ["gpt-4o-mini"] * 3
    requests = [r for _, _, r in gate_module.read(topics.REQUESTS) if r["request_id"] in ids]
    assert [r["labels"] for r in requests] == [{"team": "a", "cache": "bypass"}] * 3
    decisions = [d for d in gate_module.decisions() if d["request_id"] in ids]
    assert [(d["outcome"], d["cache_store"]) for d in decisions] == [("ALLOW", False)] * 3
