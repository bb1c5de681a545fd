"""`ledgergate run proxy` as a process: the real `openai` package with only its base_url changed, the four
services on the real broker, tenant keys in the real PostgreSQL, the OpenAI-compatible stand-in upstream."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest

from ledgergate.shared import apikeys
from ledgergate.shared.settings import KafkaSettings, PostgresSettings
from ledgergate.tools.openai_standin import FAULT_USER_PREFIX, StandinServer
from tests.e2e.conftest import Gate as RunningGate
from tests.e2e.conftest import free_port, probe, service_set

USD = 1_000_000
ASK = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Summarise the ledger."}]


@dataclass
class Proxy:
    base_url: str
    gate: RunningGate
    standin: StandinServer
    dsn: str

    def key(self, tenant_id: str | None = None, **kw: Any) -> str:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return apikeys.create_key(conn, tenant_id=tenant_id, is_admin=tenant_id is None, **kw).token

    def tenant(self, limit_micro_usd: int = 100 * USD, policy: dict[str, Any] | None = None) -> tuple[str, str]:
        tenant = f"px-{uuid.uuid4().hex[:8]}"
        self.gate.client.send_command(tenant, "SET_LIMIT", limit_micro_usd, scope_type="TENANT", scope_id=tenant)
        if policy is not None:
            self.gate.client.send_command(tenant, "SET_POLICY", policy_json=json.dumps(policy))
        return tenant, self.key(tenant)

    def openai(self, key: str, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0, **kw)


@pytest.fixture(scope="module")
def proxy(gate_module: RunningGate, kafka_module: KafkaSettings, postgres: PostgresSettings,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    with StandinServer() as standin:
        port = free_port()
        env = {"LEDGERGATE_KAFKA_BOOTSTRAP": kafka_module.kafka_bootstrap,
               "LEDGERGATE_TOPIC_PREFIX": kafka_module.topic_prefix, "LEDGERGATE_PG_DSN": postgres.pg_dsn,
               "LEDGERGATE_PROXY_PORT": str(port), "LEDGERGATE_PROXY_UPSTREAM_BASE_URL": standin.base_url}
        services, _ports = service_set(env, Path(tmp_path_factory.mktemp("proxy")), ["proxy"])
        with services:
            services.start(["proxy"])
            deadline = time.monotonic() + 60
            while probe(port, "/healthz")[0] != 200:
                assert time.monotonic() < deadline, "the proxy did not answer /healthz within 60 s"
                time.sleep(0.2)
            yield Proxy(f"http://127.0.0.1:{port}/v1", gate_module, standin, postgres.pg_dsn)


def _settled(gate: RunningGate, request_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for _, name, rec in gate.ledger():
            if name == "ReservationSettled" and rec["request_id"] == request_id:
                return rec
        time.sleep(0.3)
    raise AssertionError(f"no settlement for {request_id}")


def test_any_openai_client_is_gated_by_changing_its_base_url(proxy: Proxy) -> None:
    tenant, key = proxy.tenant()
    client = proxy.openai(key)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=ASK, max_tokens=200, extra_headers={"x-ledgergate-workflow": "support"})
    reply = raw.parse()
    request_id = raw.headers["x-ledgergate-request-id"]
    assert raw.headers["x-ledgergate-outcome"] == "ALLOW" and reply.choices[0].message.content
    with proxy.standin.state.lock:
        upstream = proxy.standin.state.calls[-1]
    assert upstream["model"] == "gpt-4o" and upstream["max_tokens"] == 200
    settled = _settled(proxy.gate, request_id)
    assert settled["tenant_id"] == tenant and settled["workflow_id"] == "support"
    assert settled["usage"]["output_tokens"] == reply.usage.completion_tokens and not settled["usage_estimated"]
    assert "gpt-4o" in [m.id for m in client.models.list().data]


def test_a_stream_through_the_proxy_is_settled_from_its_usage(proxy: Proxy) -> None:
    _tenant, key = proxy.tenant()
    request_id = f"ps-{uuid.uuid4().hex}"
    stream = proxy.openai(key).chat.completions.create(
        model="gpt-4o-mini", messages=ASK, max_tokens=12, stream=True,
        extra_headers={"x-ledgergate-request-id": request_id})
    chunks = list(stream)
    assert chunks and all(c.choices for c in chunks)  # the usage chunk it did not ask for is not passed on
    settled = _settled(proxy.gate, request_id)
    assert settled["usage"]["output_tokens"] == 12 and not settled["usage_estimated"]
    cut_id = f"pc-{uuid.uuid4().hex}"
    text = "".join(c.choices[0].delta.content or "" for c in proxy.openai(key).chat.completions.create(
        model="gpt-4o-mini", messages=ASK, max_tokens=20, stream=True,
        user=FAULT_USER_PREFIX + "cut", extra_headers={"x-ledgergate-request-id": cut_id}))
    assert text and _settled(proxy.gate, cut_id)["usage_estimated"] is True


def test_deny_throttle_and_bad_calls_read_as_openai_errors(proxy: Proxy) -> None:
    _broke, broke_key = proxy.tenant(limit_micro_usd=1)
    with pytest.raises(openai.APIStatusError) as denied:
        proxy.openai(broke_key).chat.completions.create(model="gpt-4o", messages=ASK, max_tokens=100)
    assert denied.value.status_code == 402
    assert denied.value.body["code"] == "budget_exhausted" and "tenant:" in denied.value.body["message"]

    _slow, slow_key = proxy.tenant(policy={"rate_limit_per_s": 1, "rate_burst": 1})
    client = proxy.openai(slow_key)
    for _ in range(100):  # until the policy is in force
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=ASK, max_tokens=5)
        except openai.RateLimitError as throttled:
            assert int(throttled.response.headers["retry-after"]) >= 1
            assert int(throttled.response.headers["retry-after-ms"]) > 0
            break
    else:
        raise AssertionError("never throttled at 1 request/s")

    with pytest.raises(openai.AuthenticationError):
        proxy.openai("lgk_000000000000_" + "x" * 43).chat.completions.create(model="gpt-4o", messages=ASK)
    with pytest.raises(openai.PermissionDeniedError):
        proxy.openai(proxy.key()).chat.completions.create(model="gpt-4o", messages=ASK)  # an admin key
    _t, key = proxy.tenant()
    bad = httpx.post(f"{proxy.base_url}/chat/completions", headers={"authorization": f"Bearer {key}"},
                     content=b'{"model": "gpt-4o"}')
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "missing_messages"
    invalid = httpx.post(f"{proxy.base_url}/chat/completions",
                         headers={"authorization": f"Bearer {key}", "x-ledgergate-workflow": "no spaces allowed"},
                         json={"model": "gpt-4o", "messages": ASK})
    assert invalid.status_code == 400 and "workflow_id" in invalid.json()["error"]["message"]


def test_an_upstream_failure_is_passed_on_and_voids_the_reservation(proxy: Proxy) -> None:
    _tenant, key = proxy.tenant()
    request_id = f"pe-{uuid.uuid4().hex}"
    with pytest.raises(openai.InternalServerError):
        proxy.openai(key).chat.completions.create(
            model="gpt-4o", messages=ASK, max_tokens=50,
            user=FAULT_USER_PREFIX + "error", extra_headers={"x-ledgergate-request-id": request_id})
    deadline = time.monotonic() + 30
    while not any(n == "ReservationVoided" and r["request_id"] == request_id for _, n, r in proxy.gate.ledger()):
        assert time.monotonic() < deadline, "no ReservationVoided"
        time.sleep(0.3)


def test_readiness_names_what_a_call_needs_and_both_answer(proxy: Proxy) -> None:
    # What the compose healthcheck and the Kubernetes readiness probe ask (deploy/k8s/40-proxy.yaml).
    port = int(proxy.base_url.rsplit(":", 1)[1].split("/")[0])
    status, body = probe(port, "/readyz")
    assert status == 200 and body == {"status": "ok", "checks": {"postgres": "ok", "kafka": "ok"}}, body


def test_a_cache_hit_is_answered_by_the_proxy_without_the_upstream(proxy: Proxy) -> None:
    _tenant, key = proxy.tenant(policy={"cache": {"enabled": True, "ttl_s": 600}})
    client = proxy.openai(key)
    ask = {"model": "gpt-4o-mini", "messages": ASK, "max_tokens": 64, "temperature": 0}  # a whole answer: "stop"
    answer = client.chat.completions.create(**ask).choices[0].message.content
    for _ in range(60):  # until the policy is folded and an answer stored
        calls_before = len(proxy.standin.state.calls)
        raw = client.chat.completions.with_raw_response.create(**ask)
        if raw.headers.get("x-ledgergate-cache") == "hit":
            break
        time.sleep(0.3)
    else:
        raise AssertionError("no CACHE_HIT through the proxy")
    assert len(proxy.standin.state.calls) == calls_before  # the upstream was not called
    reply = raw.parse()
    assert raw.headers["x-ledgergate-outcome"] == "CACHE_HIT"
    assert reply.choices[0].message.content == answer and reply.model == "gpt-4o-mini"
    assert reply.id == f"ledgergate-cache-{raw.headers['x-ledgergate-request-id']}" and reply.usage.total_tokens == 0

    streamed = client.chat.completions.with_raw_response.create(**ask, stream=True)
    assert streamed.headers["x-ledgergate-cache"] == "hit"
    chunks = list(streamed.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert len(proxy.standin.state.calls) == calls_before
