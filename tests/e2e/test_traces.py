"""One request is one trace across four processes: the test's OTLP/HTTP receiver on loopback collects what
the real services export (LEDGERGATE_OTLP_ENDPOINT pointing at it), the client's span comes from the SDK's
in-memory exporter in this process, and every hop's span must be in the client's trace, the child of the
hop before it, with its attributes, and no prompt or completion text in any byte exported."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ledgergate.client import GateClient
from ledgergate.shared.settings import KafkaSettings
from ledgergate.tools.servicerunner import ServiceSet
from ledgergate.tracecontext import parse_traceparent
from tests.e2e.conftest import GATE_SERVICES, Gate, service_set, wait_ready
from tests.otlpreceiver import ReceivedSpan, Receiver, otlp_receiver

USD = 1_000_000
USAGE = {"input_tokens": 21, "cached_input_tokens": 3, "output_tokens": 40, "reasoning_tokens": 5}
# The whole chain of one request and its settlement, by span name; the router's audit of the settlement too.
REQUEST_HOPS = ["token-counter count", "policy plan", "budget-manager reserve", "router decide"]
SETTLE_HOPS = ["token-counter meter", "budget-manager settle", "router audit"]


@dataclass
class TracedGate:
    client: GateClient
    services: ServiceSet
    receiver: Receiver


@pytest.fixture
def traced_gate(kafka: KafkaSettings, tmp_path: Path) -> Iterator[TracedGate]:
    with otlp_receiver() as receiver:
        env = {"LEDGERGATE_KAFKA_BOOTSTRAP": kafka.kafka_bootstrap, "LEDGERGATE_TOPIC_PREFIX": kafka.topic_prefix,
               "LEDGERGATE_OTLP_ENDPOINT": receiver.endpoint, "LEDGERGATE_OTLP_SCHEDULE_DELAY_MS": "200"}
        services, _ports = service_set(env, tmp_path / "logs", GATE_SERVICES)
        services.start(GATE_SERVICES)
        client = GateClient(kafka.kafka_bootstrap, topic_prefix=kafka.topic_prefix, timeout_s=30)
        try:
            wait_ready(client)
            yield TracedGate(client, services, receiver)
        finally:
            client.close()
            services.close()


def _spans(receiver: Receiver, trace_id: str, names: list[str], timeout_s: float = 60.0) -> dict[str, ReceivedSpan]:
    """The trace's spans by name once every named one has arrived (each exactly once)."""
    deadline = time.monotonic() + timeout_s
    while True:
        spans = receiver.of_trace(trace_id)
        by_name = {s.name: s for s in spans}
        if all(n in by_name for n in names):
            assert sorted(s.name for s in spans) == sorted(names), f"unexpected spans in {trace_id}: {spans}"
            return by_name
        if time.monotonic() > deadline:
            raise AssertionError(f"trace {trace_id} has {sorted(by_name)} after {timeout_s:.0f} s, wants {names}")
        time.sleep(0.2)


def _chain(spans: dict[str, ReceivedSpan], first_parent: str, names: list[str]) -> None:
    parent = first_parent
    for name in names:
        assert spans[name].parent_span_id == parent, f"{name}'s parent is not the hop before it"
        parent = spans[name].span_id


def test_one_request_is_one_trace_through_four_processes_and_its_settlement(traced_gate: TracedGate) -> None:
    gate, receiver = traced_gate.client, traced_gate.receiver
    tenant, tiny = f"tr-{uuid.uuid4().hex[:8]}", f"tr-tiny-{uuid.uuid4().hex[:8]}"
    gate.send_command(tenant, "SET_LIMIT", 100 * USD)
    gate.send_command(tiny, "SET_LIMIT", 50)  # not even the cheapest candidate fits
    secret, said = f"PROMPT-SECRET-{uuid.uuid4().hex}", f"COMPLETION-SECRET-{uuid.uuid4().hex}"
    prompt = [{"role": "user", "content": f"Summarise {secret}"}]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("agent-app")

    # A: inside the app's span; the completion too.
    with tracer.start_as_current_span("agent call") as app:
        decision = gate.request(tenant, prompt, "gpt-4o-mini", 64, workflow_id="wf-t", agent_id="bot", timeout_s=30)
        assert decision["outcome"] == "ALLOW"
        gate.complete(tenant, decision["request_id"], "gpt-4o-mini", USAGE, completion_text=said, agent_id="bot")
    gate.flush()
    client_span = app.get_span_context()
    trace_id, client_id = f"{client_span.trace_id:032x}", f"{client_span.span_id:016x}"
    (exported,) = exporter.get_finished_spans()
    assert exported.name == "agent call"
    # B: no span current: the SDK starts the trace; the completion joins its request's.
    sdk_decision = gate.request(tenant, prompt, "gpt-4o-mini", 64, timeout_s=30)
    gate.complete(tenant, sdk_decision["request_id"], "gpt-4o-mini", USAGE)
    gate.flush()
    # C: a denial is traced the same way, to its decision.
    with tracer.start_as_current_span("denied call") as denied_app:
        denied = gate.request(tiny, prompt, "gpt-4o", 1000, timeout_s=30)
    assert denied["outcome"] == "DENY"

    spans = _spans(receiver, trace_id, REQUEST_HOPS + SETTLE_HOPS)
    _chain(spans, client_id, REQUEST_HOPS)
    _chain(spans, client_id, SETTLE_HOPS)
    # The decision carries the trace back: its parent is the reservation that decided it.
    returned = parse_traceparent(decision["trace_context"]["traceparent"])
    assert (returned.trace_id, returned.parent_id) == (trace_id, spans["budget-manager reserve"].span_id)
    # Four processes, each span from its own service's.
    pids = {name: traced_gate.services.pid(name) for name in GATE_SERVICES}
    for span in spans.values():
        service = span.name.split(" ")[0]
        assert span.resource["service.name"] == f"ledgergate-{service}"
        assert span.resource["process.pid"] == pids[service]
    assert len(set(pids.values())) == 4

    a = {name: s.attributes for name, s in spans.items()}
    for name in REQUEST_HOPS:
        assert (a[name]["ledgergate.tenant_id"], a[name]["ledgergate.request_id"]) == (tenant, decision["request_id"])
        assert a[name]["gen_ai.request.model"] == "gpt-4o-mini"
        assert a[name]["ledgergate.workflow_id"] == "wf-t" and a[name]["gen_ai.agent.id"] == "bot"
    assert a["token-counter count"]["ledgergate.outcome"] == "counted"
    assert a["token-counter count"]["gen_ai.usage.input_tokens"] > 0
    assert a["policy plan"]["ledgergate.outcome"] == "planned"
    assert a["budget-manager reserve"]["ledgergate.outcome"] == "reserved"
    assert a["budget-manager reserve"]["ledgergate.reserved_micro_usd"] == decision["reserved_micro_usd"]
    assert a["router decide"]["ledgergate.outcome"] == "ALLOW"
    assert a["router decide"]["gen_ai.response.model"] == decision["deployment"]["model"]
    for name in SETTLE_HOPS:
        assert a[name]["ledgergate.tenant_id"] == tenant
    for name in ("token-counter meter", "budget-manager settle"):
        assert (a[name]["gen_ai.usage.input_tokens"], a[name]["gen_ai.usage.output_tokens"]) == (21, 40)
        assert a[name]["gen_ai.usage.cache_read.input_tokens"] == 3
    assert a["budget-manager settle"]["ledgergate.outcome"] == "settled"
    assert a["budget-manager settle"]["ledgergate.actual_micro_usd"] > 0

    sdk_trace = parse_traceparent(sdk_decision["trace_context"]["traceparent"]).trace_id
    sdk_spans = _spans(receiver, sdk_trace, REQUEST_HOPS + SETTLE_HOPS)
    started = spans["token-counter count"].parent_span_id
    assert sdk_spans["token-counter meter"].parent_span_id == sdk_spans["token-counter count"].parent_span_id
    assert sdk_spans["token-counter count"].parent_span_id not in ("", started)
    _chain(sdk_spans, sdk_spans["token-counter count"].parent_span_id, REQUEST_HOPS)

    denied_trace = f"{denied_app.get_span_context().trace_id:032x}"
    denied_spans = _spans(receiver, denied_trace, REQUEST_HOPS)
    _chain(denied_spans, f"{denied_app.get_span_context().span_id:016x}", REQUEST_HOPS)
    assert denied_spans["budget-manager reserve"].attributes["ledgergate.outcome"] == "denied"
    assert denied_spans["budget-manager reserve"].attributes["ledgergate.binding_scope"] == f"tenant:{tiny}"
    assert denied_spans["router decide"].attributes["ledgergate.outcome"] == "DENY"
    assert parse_traceparent(denied["trace_context"]["traceparent"]).trace_id == denied_trace

    # No prompt or completion text in any byte any service exported.
    with receiver.lock:
        exported_bytes = b"".join(receiver.bodies)
    assert secret.encode() not in exported_bytes and said.encode() not in exported_bytes
    assert b"Summarise" not in exported_bytes


def test_off_the_decision_returns_the_callers_trace_context_unchanged(gate: Gate) -> None:
    # No endpoint (the default): no hop makes a span, and the context the request carried comes back as it went.
    sent = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "congo=t61rcWkgMzE"}
    gate.client.send_command("tr-off", "SET_LIMIT", 100 * USD)
    decision = gate.client.request("tr-off", [{"role": "user", "content": "hi"}], "gpt-4o-mini", 16,
                                   trace_context=sent, timeout_s=30)
    assert decision["outcome"] == "ALLOW" and decision["trace_context"] == sent
    fresh = gate.client.submit("tr-off", [{"role": "user", "content": "hi"}], "gpt-4o-mini", 16)
    assert fresh.result(timeout=35)["trace_context"] == fresh.trace_context  # the SDK's own new trace
    assert parse_traceparent(fresh.trace_context["traceparent"]).trace_id != sent["traceparent"].split("-")[1]
