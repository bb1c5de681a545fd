"""The real `openai` package, gated (ledgergate.integrations.openai), against the OpenAI-compatible stand-in
(tools/openai_standin.py) on loopback and the four services on the real broker."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from ledgergate import Gate, GateDeniedError, GateSettings, GateThrottledError, topics
from ledgergate.integrations.openai import gated
from ledgergate.tools.openai_standin import FAULT_HEADER, StandinServer
from tests.e2e.conftest import Gate as RunningGate

USD = 1_000_000
ASK = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Summarise the ledger."}]


@pytest.fixture(scope="module")
def standin() -> Iterator[StandinServer]:
    with StandinServer() as server:
        yield server


def _tenant(running: RunningGate, limit_micro_usd: int = 100 * USD, policy: dict[str, Any] | None = None) -> str:
    tenant = f"oa-{uuid.uuid4().hex[:8]}"
    running.client.send_command(tenant, "SET_LIMIT", limit_micro_usd, scope_type="TENANT", scope_id=tenant)
    if policy is not None:
        running.client.send_command(tenant, "SET_POLICY", policy_json=json.dumps(policy))
    return tenant


def _openai(standin: StandinServer, running: RunningGate, tenant: str, **settings: Any) -> Any:
    provider = openai.OpenAI(base_url=standin.base_url, api_key="sk-standin", max_retries=0)
    return gated(provider, Gate(running.client, GateSettings(tenant_id=tenant, workflow_id="wf", **settings)))


def _ledger_of(running: RunningGate, request_id: str, kinds: tuple[str, ...], timeout_s: float = 30.0
               ) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    found: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        found = {name: rec for _, name, rec in running.ledger() if rec.get("request_id") == request_id}
        if all(k in found for k in kinds):
            return found
        time.sleep(0.3)
    raise AssertionError(f"{request_id}: ledger has {sorted(found)}, not all of {kinds}")


def _last_call(standin: StandinServer) -> dict[str, Any]:
    with standin.state.lock:
        return dict(standin.state.calls[-1])


def test_a_call_is_gated_called_as_decided_and_settled_with_the_reported_usage(
        gate_module: RunningGate, standin: StandinServer) -> None:
    tenant = _tenant(gate_module)
    client = _openai(standin, gate_module, tenant)
    request_id = f"r-{uuid.uuid4().hex}"
    reply = client.chat.completions.create(model="gpt-4o", messages=ASK, max_tokens=300,
                                           ledgergate={"request_id": request_id})
    assert reply.choices[0].message.content
    call = _last_call(standin)
    assert call["model"] == "gpt-4o" and call["max_tokens"] == 300
    entries = _ledger_of(gate_module, request_id, ("ReservationPlaced", "ReservationSettled"))
    settled = entries["ReservationSettled"]
    assert settled["usage"]["input_tokens"] == reply.usage.prompt_tokens
    assert settled["usage"]["output_tokens"] == reply.usage.completion_tokens
    assert settled["usage_estimated"] is False and settled["workflow_id"] == "wf"
    # Pass-through: everything but chat completions is the provider client's own.
    assert [m.id for m in client.models.list().data][:1] == ["gpt-4o"]


def test_a_downgrade_calls_the_cheaper_model_and_a_deny_raises_without_calling(
        gate_module: RunningGate, standin: StandinServer) -> None:
    tenant = _tenant(gate_module, limit_micro_usd=2_000)  # gpt-4o's hold does not fit; gpt-4o-mini's does
    client = _openai(standin, gate_module, tenant)
    client.chat.completions.create(model="gpt-4o", messages=ASK, max_tokens=300)
    assert _last_call(standin)["model"] != "gpt-4o"
    broke = _tenant(gate_module, limit_micro_usd=1)
    calls_before = len(standin.state.calls)
    with pytest.raises(GateDeniedError) as denied:
        _openai(standin, gate_module, broke).chat.completions.create(model="gpt-4o", messages=ASK, max_tokens=300)
    assert denied.value.reason == "budget_exhausted" and denied.value.binding_scope == f"tenant:{broke}"
    assert len(standin.state.calls) == calls_before


def test_a_stream_settles_from_its_usage_chunk_which_the_caller_did_not_ask_for(
        gate_module: RunningGate, standin: StandinServer) -> None:
    tenant = _tenant(gate_module)
    client = _openai(standin, gate_module, tenant)
    request_id = f"s-{uuid.uuid4().hex}"
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=ASK, max_tokens=10, stream=True,
                                                 ledgergate={"request_id": request_id}))
    assert chunks and all(c.choices for c in chunks)  # the usage-only chunk was not passed on
    assert _last_call(standin)["stream"] is True
    settled = _ledger_of(gate_module, request_id, ("ReservationSettled",))["ReservationSettled"]
    assert settled["usage"]["output_tokens"] == 10 and settled["usage_estimated"] is False


def test_a_broken_stream_is_settled_from_its_text_and_an_abandoned_one_too(
        gate_module: RunningGate, standin: StandinServer) -> None:
    tenant = _tenant(gate_module)
    client = _openai(standin, gate_module, tenant)
    cut_id, left_id = f"c-{uuid.uuid4().hex}", f"a-{uuid.uuid4().hex}"
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=ASK, max_tokens=20, stream=True,
                                            extra_headers={FAULT_HEADER: "cut"}, ledgergate={"request_id": cut_id})
    text = "".join(c.choices[0].delta.content or "" for c in stream)
    assert text  # some words came before the connection ended
    cut = _ledger_of(gate_module, cut_id, ("ReservationSettled",))["ReservationSettled"]
    assert cut["usage_estimated"] is True and cut["usage"]["output_tokens"] > 0
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=ASK, max_tokens=20, stream=True,
                                            ledgergate={"request_id": left_id})
    for i, _chunk in enumerate(stream):
        if i == 2:
            break
    stream.close()
    left = _ledger_of(gate_module, left_id, ("ReservationSettled",))["ReservationSettled"]
    assert left["usage_estimated"] is True


def test_a_call_that_fails_before_any_output_voids_its_reservation(
        gate_module: RunningGate, standin: StandinServer) -> None:
    tenant = _tenant(gate_module)
    client = _openai(standin, gate_module, tenant)
    request_id = f"e-{uuid.uuid4().hex}"
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o", messages=ASK, max_tokens=50,
                                       extra_headers={FAULT_HEADER: "error"}, ledgergate={"request_id": request_id})
    entries = _ledger_of(gate_module, request_id, ("ReservationVoided",))
    assert "ReservationSettled" not in entries


def test_the_async_client_is_gated_too(gate_module: RunningGate, standin: StandinServer) -> None:
    tenant = _tenant(gate_module)
    gate = Gate(gate_module.client, GateSettings(tenant_id=tenant, workflow_id="wf"))
    client = gated(openai.AsyncOpenAI(base_url=standin.base_url, api_key="sk-standin", max_retries=0), gate)
    plain_id, stream_id = f"p-{uuid.uuid4().hex}", f"q-{uuid.uuid4().hex}"

    async def run() -> str:
        await client.chat.completions.create(model="gpt-4o", messages=ASK, max_tokens=40,
                                             ledgergate={"request_id": plain_id})
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=ASK, max_tokens=40, stream=True, stream_options={"include_usage": True},
            ledgergate={"request_id": stream_id})
        chunks = [c async for c in stream]
        assert not chunks[-1].choices and chunks[-1].usage is not None  # asked for: passed on
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    assert asyncio.run(run())
    for request_id in (plain_id, stream_id):
        settled = _ledger_of(gate_module, request_id, ("ReservationSettled",))["ReservationSettled"]
        assert settled["usage_estimated"] is False


def test_a_throttle_waits_its_retry_after_or_raises(gate_module: RunningGate, standin: StandinServer) -> None:
    tenant = _tenant(gate_module, policy={"rate_limit_per_s": 1, "rate_burst": 1})
    raising = _openai(standin, gate_module, tenant, on_throttle="raise")
    for _ in range(100):  # until the policy is in force (SET_POLICY travels through the ledger)
        try:
            raising.chat.completions.create(model="gpt-4o-mini", messages=ASK, max_tokens=5)
        except GateThrottledError as throttled:
            assert throttled.retry_after_ms > 0
            break
    else:
        raise AssertionError("never throttled at 1 request/s")
    waiting = _openai(standin, gate_module, tenant)
    waiting.chat.completions.create(model="gpt-4o-mini", messages=ASK, max_tokens=5)  # throttled, waits, passes
    assert waiting.gate.throttle_waited_ms > 0


def test_the_sampling_parameters_ride_on_the_request_and_key_the_counted_record(
        gate_module: RunningGate, standin: StandinServer) -> None:
    tenant = _tenant(gate_module)
    client = _openai(standin, gate_module, tenant)
    ids = [f"k-{uuid.uuid4().hex}" for _ in range(3)]
    for request_id, temperature in zip(ids, (0, 0, 0.7), strict=True):
        client.chat.completions.create(model="gpt-4o-mini", messages=ASK, max_tokens=20, temperature=temperature,
                                       seed=7, user="someone", ledgergate={"request_id": request_id})
    assert _last_call(standin)["temperature"] == 0.7  # the call itself is unchanged
    deadline = time.monotonic() + 30
    while True:
        counted = {r["request_id"]: r for _, _, r in gate_module.read(topics.COUNTED) if r["request_id"] in ids}
        if len(counted) == 3:
            break
        assert time.monotonic() < deadline, f"counted {sorted(counted)}"
        time.sleep(0.3)
    requests = {r["request_id"]: r for _, _, r in gate_module.read(topics.REQUESTS) if r["request_id"] in ids}
    assert json.loads(requests[ids[0]]["sampling_json"]) == {"temperature": 0, "seed": 7}  # `user` changes no answer
    keys = [counted[rid]["cache_key"] for rid in ids]
    assert all(len(k) == 64 for k in keys) and keys[0] == keys[1] != keys[2]


# --- the response cache (docs/decisions/0013) ---

CACHED_POLICY = {"cache": {"enabled": True, "ttl_s": 600}}


def _records_of(running: RunningGate, logical_topic: str, request_ids: list[str], timeout_s: float = 30.0
                ) -> dict[str, dict[str, Any]]:
    """The records of `logical_topic` for these request ids, once each is there."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = {r["request_id"]: r for _, _, r in running.read(logical_topic) if r.get("request_id") in request_ids}
        if len(found) == len(set(request_ids)):
            return found
        assert time.monotonic() < deadline, f"{logical_topic}: {sorted(found)} of {request_ids}"
        time.sleep(0.3)


def _until_hit(client: Any, ask: dict[str, Any], tries: int = 60) -> tuple[Any, list[str]]:
    """Call until the tenant's cache answers (its policy is folded, an answer stored); the hit and the misses' ids."""
    misses: list[str] = []
    for _ in range(tries):
        request_id = f"m-{uuid.uuid4().hex}"
        reply = client.chat.completions.create(**ask, ledgergate={"request_id": request_id})
        if reply.id.startswith("ledgergate-cache-"):
            return reply, misses
        misses.append(request_id)
        time.sleep(0.3)
    raise AssertionError(f"no CACHE_HIT after {tries} calls")


def test_a_cache_hit_is_answered_without_calling_the_provider_and_only_asked_answers_carry_text(
        gate_module: RunningGate, standin: StandinServer) -> None:
    tenant = _tenant(gate_module, policy=CACHED_POLICY)
    client = _openai(standin, gate_module, tenant)
    ask = {"model": "gpt-4o-mini", "messages": ASK, "max_tokens": 64, "temperature": 0}  # 24 words: "stop"
    first = client.chat.completions.create(**ask)
    calls_before = len(standin.state.calls)
    hit, misses = _until_hit(client, ask)
    assert len(standin.state.calls) == calls_before + len(misses)  # the hit called nothing
    assert hit.choices[0].message.content == first.choices[0].message.content
    assert hit.choices[0].finish_reason == "stop" and hit.model == "gpt-4o-mini" and hit.usage.completion_tokens == 0
    assert client.gate.cache_hits == 1

    # Each miss sent the answer's text exactly when its decision asked for it; a hit settles nothing.
    decisions = {d["request_id"]: d for d in gate_module.decisions() if d["request_id"] in misses}
    completions = _records_of(gate_module, topics.COMPLETIONS, misses)
    for request_id in misses:
        asked = decisions[request_id]["cache_store"]
        assert (completions[request_id]["completion_text"] == first.choices[0].message.content) is asked
        assert asked or completions[request_id]["completion_text"] is None
    hit_id = hit.id.removeprefix("ledgergate-cache-")
    assert not any(r["request_id"] == hit_id for _, _, r in gate_module.read(topics.COMPLETIONS))

    # The same prompt bypassing the cache, and a tenant whose policy caches nothing: called, and no text sent.
    bypassed, uncached = f"b-{uuid.uuid4().hex}", f"u-{uuid.uuid4().hex}"
    client.chat.completions.create(**ask, ledgergate={"request_id": bypassed, "labels": {"cache": "bypass"}})
    _openai(standin, gate_module, _tenant(gate_module)).chat.completions.create(
        **ask, ledgergate={"request_id": uncached})
    sent = _records_of(gate_module, topics.COMPLETIONS, [bypassed, uncached])
    assert [sent[r]["completion_text"] for r in (bypassed, uncached)] == [None, None]
    assert len(standin.state.calls) == calls_before + len(misses) + 2

    # A stream is answered from the cache too (async client: an async iterator of chunks).
    async_client = gated(openai.AsyncOpenAI(base_url=standin.base_url, api_key="sk-standin", max_retries=0),
                         client.gate)

    async def streamed() -> list[Any]:
        stream = await async_client.chat.completions.create(**ask, stream=True)
        return [c async for c in stream]

    chunks = asyncio.run(streamed())
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == first.choices[0].message.content
    sync_chunks = list(client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    assert sync_chunks[-1].usage is not None and not sync_chunks[-1].choices  # the usage chunk it asked for
    assert client.gate.cache_hits == 3 and len(standin.state.calls) == calls_before + len(misses) + 2


def test_a_cache_hit_without_its_text_is_asked_again_with_the_cache_bypassed(
        gate_module: RunningGate, standin: StandinServer) -> None:
    tenant = _tenant(gate_module, policy=CACHED_POLICY)
    client = _openai(standin, gate_module, tenant)
    ask = {"model": "gpt-4o-mini", "messages": ASK, "max_tokens": 64, "temperature": 0}
    hit, _misses = _until_hit(client, ask)
    # A repeat of the hit's request id (the same content: labels are part of it) is decided CACHE_HIT again,
    # without the text (cache_entry_gone), as a hit whose entry expired between plan and decision is.
    calls_before = len(standin.state.calls)
    hit_id = hit.id.removeprefix("ledgergate-cache-")
    again = client.chat.completions.create(**ask, ledgergate={"request_id": hit_id})
    assert not again.id.startswith("ledgergate-cache-") and again.choices[0].message.content
    assert len(standin.state.calls) == calls_before + 1 and client.gate.cache_entries_gone == 1
    gone = [d for d in gate_module.decisions() if d["request_id"] == hit_id]
    assert gone and gone[-1]["outcome"] == "CACHE_HIT" and "cache_entry_gone" in gone[-1]["reason_codes"]
    asked_again = [r for _, _, r in gate_module.read(topics.REQUESTS)
                   if r["tenant_id"] == tenant and r["labels"] == {"cache": "bypass"}]
    assert len(asked_again) == 1 and asked_again[0]["request_id"] != hit_id
    settled = _ledger_of(gate_module, asked_again[0]["request_id"], ("ReservationSettled",))["ReservationSettled"]
    assert settled["usage_estimated"] is False
