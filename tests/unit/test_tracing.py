"""shared/tracing.py with the SDK's in-memory exporter: a hop's span is the child of its input's context
(the record's, else the headers'), writes its own context on what it produces, carries the attributes and no
text; off, a hop makes no span and passes the context on unchanged."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import ValidationError

from ledgergate.events import InvocationCompleted, InvocationCounted, Usage
from ledgergate.shared.kafka.headers import Headers
from ledgergate.shared.ledger.entries import PeriodOpened, ReservationSettled
from ledgergate.shared.settings import TracingSettings
from ledgergate.shared.tracing import Hop, Tracing, Untraced, attributes_of, header_carrier, with_carrier
from ledgergate.tracecontext import parse_traceparent

CLIENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
STATE = "congo=t61rcWkgMzE"


@dataclass
class FakeMessage:
    _headers: Headers = field(default_factory=list)
    _topic: str = "p.invocation.requests"

    def headers(self) -> Headers:
        return self._headers

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 3

    def offset(self) -> int:
        return 42


def counted(trace_context: dict[str, str]) -> InvocationCounted:
    return InvocationCounted("r1", "acme", "wf", "bot", "gpt-4o", 256, "NORMAL", None, None, {}, 1, trace_context,
                             17, 17, "o200k_base", 100, "0" * 64, None, 2)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def traced(service: str, exporter: InMemorySpanExporter) -> Tracing:
    return Tracing(service, TracingSettings(), processor=SimpleSpanProcessor(exporter))


def test_off_by_default_a_hop_makes_no_span_and_passes_the_context_on() -> None:
    tracing = Tracing("policy", TracingSettings())
    assert not tracing.enabled and tracing.provider is None
    with tracing.hop("plan", FakeMessage()) as hop:
        assert type(hop) is Untraced
        hop.continues({"traceparent": CLIENT})
        hop.describe(counted({}))
        assert hop.context == {"traceparent": CLIENT}
        # A record without a trace_context field (a ledger entry) gets it in its headers.
        assert header_carrier(FakeMessage(hop.headers([("request_id", b"r1")]))) == {"traceparent": CLIENT}
    # Nothing received, nothing sent; a header received is already carried forward (stamped) and stays.
    with tracing.hop("plan", FakeMessage([("traceparent", CLIENT.encode())])) as hop:
        assert hop.context == {"traceparent": CLIENT}
        assert hop.headers([("x", b"1")]) == [("x", b"1")]


def test_a_hop_is_the_child_of_its_records_context_and_the_next_hop_of_its_headers(
        exporter: InMemorySpanExporter) -> None:
    client = TracerProvider()
    client.add_span_processor(SimpleSpanProcessor(exporter))
    with client.get_tracer("app").start_as_current_span("agent call") as app:
        root = app.get_span_context()
    carrier = {"traceparent": f"00-{root.trace_id:032x}-{root.span_id:016x}-01", "tracestate": STATE}
    counter, manager = traced("token-counter", exporter), traced("budget-manager", exporter)
    with counter.hop("count", FakeMessage()) as first:
        first.continues(carrier)
        body = counted(dict(first.context))
        first.describe(body)
    # The next hop reads the record's context (here: the headers, as a ledger entry would carry it).
    with manager.hop("settle", FakeMessage(first.headers([]), "p.usage.metered")) as second:
        assert isinstance(second, Hop)
        sent = parse_traceparent(second.context["traceparent"])
    spans = {s.name: s for s in exporter.get_finished_spans()}
    count, settle = spans["token-counter count"], spans["budget-manager settle"]
    assert {count.context.trace_id, settle.context.trace_id} == {root.trace_id}
    assert count.parent is not None and count.parent.span_id == root.span_id and count.parent.is_remote
    assert settle.parent is not None and settle.parent.span_id == count.context.span_id
    assert sent.parent_id == f"{settle.context.span_id:016x}"
    assert body.trace_context["tracestate"] == STATE  # tracestate rides along
    assert count.kind is SpanKind.CONSUMER
    assert count.resource.attributes["service.name"] == "ledgergate-token-counter"
    a = count.attributes or {}
    assert (a["ledgergate.tenant_id"], a["ledgergate.request_id"], a["ledgergate.workflow_id"]) == ("acme", "r1", "wf")
    assert (a["gen_ai.request.model"], a["gen_ai.usage.input_tokens"], a["gen_ai.agent.id"]) == ("gpt-4o", 17, "bot")
    assert (a["ledgergate.outcome"], a["messaging.destination.name"], a["messaging.kafka.offset"]) == (
        "counted", "p.invocation.requests", 42)


def test_without_any_context_a_hop_starts_a_trace_unless_told_not_to(exporter: InMemorySpanExporter) -> None:
    router = traced("router", exporter)
    with router.hop("decide", FakeMessage()) as hop:
        assert parse_traceparent(hop.context["traceparent"]).sampled
    assert type(router.hop("audit", FakeMessage(), root=False)) is Untraced
    assert isinstance(router.hop("audit", FakeMessage([("traceparent", CLIENT.encode())]), root=False), Hop)
    # An invalid traceparent is no parent: a new trace.
    with router.hop("decide", FakeMessage([("traceparent", b"00-garbage")])) as hop:
        assert parse_traceparent(hop.context["traceparent"]).trace_id != CLIENT.split("-")[1]
    assert len(exporter.get_finished_spans()) == 2


def test_an_unsampled_request_records_nothing_but_keeps_its_trace(exporter: InMemorySpanExporter) -> None:
    with traced("policy", exporter).hop("plan", FakeMessage()) as hop:
        hop.continues({"traceparent": CLIENT[:-2] + "00"})
        hop.describe(counted({}))
        tp = parse_traceparent(hop.context["traceparent"])
    assert tp.trace_id == CLIENT.split("-")[1] and not tp.sampled
    assert exporter.get_finished_spans() == ()


def test_a_failed_hop_records_the_error(exporter: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError), traced("policy", exporter).hop("plan", FakeMessage()):
        raise ValueError("bad input")
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]


def test_attributes_never_hold_text_and_use_the_genai_names() -> None:
    completion = InvocationCompleted("r1", "acme", "gpt-4o", "OK", Usage(10, 2, 30, 4), "SECRET completion text",
                                     1, {}, "bot")
    a = attributes_of(completion)
    assert "SECRET" not in repr(a)
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (10, 30)
    assert (a["gen_ai.usage.cache_read.input_tokens"], a["gen_ai.usage.reasoning.output_tokens"]) == (2, 4)
    settled = ReservationSettled("e", "acme", "2026-11", 1, "r1", "wf", "gpt-4o", 500, 400, 100, 0,
                                 Usage(10, 0, 30, 0), False, "v1")
    assert attributes_of(settled)["ledgergate.actual_micro_usd"] == 400
    assert attributes_of(PeriodOpened("e", "acme", "2026-11", 1, 0, 1)) == {"ledgergate.tenant_id": "acme"}


def test_with_carrier_replaces_what_was_carried_forward() -> None:
    headers: Headers = [("request_id", b"r1"), ("traceparent", b"old"), ("tracestate", b"old=1")]
    assert with_carrier(headers, {"traceparent": CLIENT}) == [("request_id", b"r1"), ("traceparent", CLIENT.encode())]


def test_settings_take_an_http_endpoint_or_none() -> None:
    assert TracingSettings().otlp_endpoint == ""
    assert TracingSettings(otlp_endpoint="http://127.0.0.1:4318").otlp_traces_url() == "http://127.0.0.1:4318/v1/traces"
    assert TracingSettings(otlp_endpoint="https://c.example/v1/traces").otlp_traces_url() == "https://c.example/v1/traces"
    for bad in ("127.0.0.1:4318", "grpc://c:4317"):
        with pytest.raises(ValidationError):
            TracingSettings(otlp_endpoint=bad)
    with pytest.raises(ValidationError):
        TracingSettings(otel_sample_ratio=1.5)


def test_the_sample_ratio_decides_by_trace_id_the_same_at_every_hop(exporter: InMemorySpanExporter) -> None:
    settings = TracingSettings(otel_sample_ratio=0.5)
    hops = [Tracing(s, settings, processor=SimpleSpanProcessor(exporter)) for s in ("policy", "router")]
    kept = set()
    for i in range(64):
        spread = (i + 1) * 0x9E3779B97F4A7C15 % 2**64  # the sampler reads the low 64 bits
        parent = {"traceparent": f"00-{i + 1:016x}{spread:016x}-00f067aa0ba902b7-01"}
        decided = set()
        for tracing in hops:
            with tracing.hop("x", FakeMessage()) as hop:
                hop.continues(parent)
                decided.add(parse_traceparent(hop.context["traceparent"]).sampled)
        assert len(decided) == 1  # both hops agree: a trace is whole or absent
        kept |= decided
    assert kept == {True, False}
    assert len({s.context.trace_id for s in exporter.get_finished_spans()}) * 2 == len(exporter.get_finished_spans())
