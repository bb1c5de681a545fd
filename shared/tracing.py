"""OpenTelemetry traces across the gate's hops: one span per message a service handles for a request,
the child of the hop before it, so one request is one trace from `GateClient.request` to its decision
and its settlement (README, "Traces").

Where the context rides: in the record's `trace_context` where its schema has one (InvocationRequested,
InvocationCounted, InvocationPlanned, InvocationCompleted, GateDecision), else in a `traceparent` /
`tracestate` header (budget.ledger entries, usage.metered). A hop's parent is its input record's context,
else the header's; the hop writes its own span's context on what it produces.

Off by default (LEDGERGATE_OTLP_ENDPOINT empty): no SDK is loaded and no span object is made; a hop then
only passes on the context it received (so the decision still returns the caller's trace context). On:
one TracerProvider per process, a batch span processor, OTLP/HTTP protobuf to `<endpoint>/v1/traces`.

Attributes are the GenAI semantic-convention names where one exists (gen_ai.request.model,
gen_ai.usage.input_tokens, ...), else `ledgergate.*`; never prompt or completion text.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from confluent_kafka import Message
from opentelemetry import trace as otel
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from ledgergate.events import GateDecision, InvocationCompleted, InvocationCounted, InvocationPlanned, UsageMetered
from ledgergate.shared.kafka.headers import Headers, headers_of
from ledgergate.shared.ledger.entries import (
    ENTRY_TYPES,
    ReservationDenied,
    ReservationPlaced,
    ReservationRepeated,
    ReservationSettled,
    ThresholdCrossed,
)
from ledgergate.shared.settings import TracingSettings
from ledgergate.tracecontext import KNOWN_FLAGS, TRACEPARENT, TRACESTATE, TRACESTATE_MAX_CHARS, from_carrier, to_carrier

Carrier = dict[str, str]
# At exit the batch still queued gets this long to reach the collector; then the exporter's retries are cut
# short, so a collector that is away never holds up a SIGTERM (LEDGERGATE_SHUTDOWN_TIMEOUT_MS is 20 s).
EXIT_FLUSH_MS = 2_000
_EMPTY: Mapping[str, str] = {}
_KEYS = (TRACEPARENT, TRACESTATE)


def header_carrier(msg: Message | None) -> Carrier:
    """The valid trace context in a message's headers ({} when none): what the router puts on a decision, a
    deterministic function of the ledger message (so a replay writes the same bytes)."""
    if msg is None:
        return {}
    found: dict[str, str] = {}
    for key, value in headers_of(msg):
        if key in _KEYS and value:
            found[key] = value.decode("ascii", errors="replace") if isinstance(value, bytes) else value
    parsed = from_carrier(found) if found else None
    return to_carrier(*parsed) if parsed is not None else {}


def with_carrier(headers: Headers, carrier: Mapping[str, str]) -> Headers:
    """`headers` with the trace context replaced by `carrier` (the inbound one was carried forward)."""
    kept: Headers = [(k, v) for k, v in headers if k not in _KEYS]
    kept.extend((k, v.encode()) for k, v in carrier.items() if k in _KEYS)
    return kept


class Untraced:
    """A hop while tracing is off: no span; it passes on the context it received, unchanged."""

    __slots__ = ("_msg", "_record")

    def __init__(self, msg: Message | None) -> None:
        self._msg = msg
        self._record: Mapping[str, str] = _EMPTY

    def __enter__(self) -> Untraced:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 _tb: TracebackType | None) -> None:
        return None

    def continues(self, record_context: Mapping[str, str]) -> None:
        """The input record's trace_context: the parent, ahead of the message's headers."""
        self._record = record_context

    @property
    def context(self) -> Mapping[str, str]:
        """What an output record's trace_context carries."""
        return self._record if self._record else header_carrier(self._msg)

    @property
    def valid_context(self) -> Mapping[str, str]:
        """`context`, checked by the W3C rules ({} when it breaks them): for a record that must carry only
        what passes the edge rule (a DENY invalid_request)."""
        parsed = from_carrier(self._record) or from_carrier(header_carrier(self._msg))
        return to_carrier(*parsed) if parsed is not None else {}

    def headers(self, headers: Headers) -> Headers:
        """An output message's headers (for records whose schema has no trace_context). Off, the record's
        values go on unparsed (bounded): the router checks what it puts on a decision (header_carrier)."""
        if not self._record:
            return headers  # the inbound header is carried forward already (shared/kafka/headers.py: stamped)
        bounded = {k: v for k, v in self._record.items()
                   if k in _KEYS and isinstance(v, str) and len(v) <= TRACESTATE_MAX_CHARS}
        return with_carrier(headers, bounded) if TRACEPARENT in bounded else headers

    def describe(self, *_events: object) -> None:
        return None

    def outcome(self, outcome: str, **ids: str) -> None:
        """The hop's outcome when no event describes it (an invalid request), with ids (tenant_id=...)."""
        return None


class Hop(Untraced):
    """A hop's span, started when first needed (so the input record's context can still be its parent),
    timed from when the hop began."""

    __slots__ = ("_carrier", "_name", "_span", "_start_ns", "_tracer")

    def __init__(self, tracer: otel.Tracer, name: str, msg: Message | None) -> None:
        super().__init__(msg)
        self._tracer = tracer
        self._name = name
        self._span: otel.Span | None = None
        self._carrier: Carrier | None = None
        self._start_ns = time.time_ns()

    def __enter__(self) -> Hop:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 _tb: TracebackType | None) -> None:
        span = self.span
        if exc is not None:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}"))
        span.end()

    def continues(self, record_context: Mapping[str, str]) -> None:
        assert self._span is None, "the parent is chosen before the span starts"
        self._record = record_context

    @property
    def span(self) -> otel.Span:
        if self._span is None:
            self._span = self._start()
        return self._span

    def _start(self) -> otel.Span:
        parsed = from_carrier(self._record) or from_carrier(header_carrier(self._msg))
        parent = None
        if parsed is not None:
            tp, state = parsed
            remote = SpanContext(int(tp.trace_id, 16), int(tp.parent_id, 16), is_remote=True,
                                 trace_flags=TraceFlags(tp.flags & TraceFlags.SAMPLED),
                                 trace_state=TraceState.from_header([state]) if state else None)
            if not tp.flags & TraceFlags.SAMPLED:
                # Not recorded anywhere: take no part (the spec lets a hop forward the context as it came),
                # which costs no SDK span, so a sample ratio thins the whole trace's cost, not only its export.
                return NonRecordingSpan(remote)
            parent = otel.set_span_in_context(NonRecordingSpan(remote))
        # Where the input was: three attributes (each costs the SDK a validation; the rest describe() adds).
        msg = self._msg
        attributes: dict[str, Any] | None = None if msg is None else {
            "messaging.destination.name": msg.topic() or "", "messaging.destination.partition.id": str(msg.partition()),
            "messaging.kafka.offset": msg.offset() or 0}
        return self._tracer.start_span(self._name, context=parent, kind=SpanKind.CONSUMER, attributes=attributes,
                                       start_time=self._start_ns, record_exception=False,
                                       set_status_on_exception=False)

    @property
    def context(self) -> Mapping[str, str]:
        if self._carrier is None:
            ctx = self.span.get_span_context()
            flags = int(ctx.trace_flags) & KNOWN_FLAGS
            carrier = {TRACEPARENT: f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{flags:02x}"}
            state = ctx.trace_state.to_header() if ctx.trace_state else ""
            if state:
                carrier[TRACESTATE] = state
            self._carrier = carrier
        return self._carrier

    def headers(self, headers: Headers) -> Headers:
        return with_carrier(headers, self.context)

    def describe(self, *events: object) -> None:
        span = self.span
        if not span.is_recording():
            return
        for event in events:
            span.set_attributes(attributes_of(event))
        kinds = [type(e).__name__ for e in events if type(e).__name__ in ENTRY_TYPES]
        if kinds:  # the ledger entries a hop wrote or read, in order
            span.set_attribute("ledgergate.entry_types", kinds)

    @property
    def valid_context(self) -> Mapping[str, str]:
        return self.context

    def outcome(self, outcome: str, **ids: str) -> None:
        self.span.set_attributes({"ledgergate.outcome": outcome, **{f"ledgergate.{k}": v for k, v in ids.items()}})


class Tracing:
    """A process's tracer: `hop(operation, msg)` opens the span of one handled message."""

    def __init__(self, service: str, settings: TracingSettings, processor: Any = None) -> None:
        """`processor` (a SpanProcessor) replaces the OTLP exporter: tests hand in a simple processor over
        the SDK's in-memory exporter."""
        self.service = service
        self.enabled = bool(settings.otlp_endpoint) or processor is not None
        self._tracer: otel.Tracer | None = None
        self.provider: Any = None
        self._exporter: Any = None
        if self.enabled:
            self._tracer = self._start_provider(settings, processor)

    def _start_provider(self, settings: TracingSettings, processor: Any) -> otel.Tracer:
        # Loaded only when on: the SDK and the exporter (requests, protobuf) cost a process nothing when off.
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        resource = Resource.create({"service.name": settings.otel_service_name or f"ledgergate-{self.service}",
                                    "service.namespace": "ledgergate", "process.pid": os.getpid()})
        # By trace id, the same at every hop, so a trace is kept whole or not at all: the ratio applies to
        # traces a hop starts and to requests whose context is sampled; an unsampled one stays unsampled.
        ratio = TraceIdRatioBased(settings.otel_sample_ratio)
        # Its own exit hook would wait up to 30 s per batch for a collector that is away: ours is bounded.
        provider = TracerProvider(resource=resource, sampler=ParentBased(ratio, remote_parent_sampled=ratio),
                                  shutdown_on_exit=False)
        if processor is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            self._exporter = OTLPSpanExporter(endpoint=settings.otlp_traces_url(),
                                              timeout=settings.otlp_timeout_ms / 1000)
            processor = BatchSpanProcessor(self._exporter, schedule_delay_millis=settings.otlp_schedule_delay_ms)
        provider.add_span_processor(processor)
        self.provider = provider
        atexit.register(self.shutdown)
        return provider.get_tracer(f"ledgergate.{self.service}")

    def hop(self, operation: str, msg: Message | None, root: bool = True) -> Untraced:
        """The span of handling `msg`, named "<service> <operation>". `root=False`: no span unless the
        message's headers carry a trace context (the router's audit of an expiry or a command's entry starts
        no trace of its own)."""
        if self._tracer is None or (not root and not header_carrier(msg)):
            return Untraced(msg)
        return Hop(self._tracer, f"{self.service} {operation}", msg)

    def shutdown(self, timeout_ms: int = EXIT_FLUSH_MS) -> None:
        """Export what is queued, for at most `timeout_ms`; then drop the rest (at exit, by atexit)."""
        provider, self.provider = self.provider, None
        if provider is None:
            return
        flushing = threading.Thread(target=provider.shutdown, name="trace-flush", daemon=True)
        flushing.start()
        flushing.join(timeout_ms / 1000)
        if flushing.is_alive() and self._exporter is not None:
            self._exporter.shutdown()  # ends the exporter's retry waits: the worker finishes what it has
            flushing.join(1.0)


def _request_attributes(tenant_id: str, request_id: str, workflow_id: str = "", agent_id: str = "") -> dict[str, Any]:
    attributes: dict[str, Any] = {"ledgergate.tenant_id": tenant_id, "ledgergate.request_id": request_id}
    if workflow_id:
        attributes["ledgergate.workflow_id"] = workflow_id
    if agent_id:
        attributes["gen_ai.agent.id"] = agent_id
    return attributes


def _usage(usage: Any) -> dict[str, Any]:
    return {"gen_ai.usage.input_tokens": usage.input_tokens, "gen_ai.usage.output_tokens": usage.output_tokens,
            "gen_ai.usage.cache_read.input_tokens": usage.cached_input_tokens,
            "gen_ai.usage.reasoning.output_tokens": usage.reasoning_tokens}


def attributes_of(event: object) -> dict[str, Any]:
    """A span's attributes from what a hop read or wrote: ids, models, outcome, token counts and amounts.
    Never a message's content or a completion's text: no field that holds them is read here."""
    if isinstance(event, InvocationCounted | InvocationPlanned):
        a = _request_attributes(event.tenant_id, event.request_id, event.workflow_id, event.agent_id)
        a |= {"gen_ai.request.model": event.requested_model, "gen_ai.request.max_tokens": event.max_output_tokens,
              "gen_ai.usage.input_tokens": event.input_tokens,
              "ledgergate.estimated_output_tokens": event.estimated_output_tokens}
        if event.invalid_reason is not None:
            a["ledgergate.outcome"] = event.invalid_code or "invalid_request"
        elif isinstance(event, InvocationPlanned):
            a["ledgergate.policy_version"] = event.policy_version
            a["ledgergate.candidates"] = [c.model for c in event.candidates]
            a["ledgergate.outcome"] = event.rejection.reason if event.rejection else "planned"
        else:
            a["ledgergate.outcome"] = "counted"
        return a
    if isinstance(event, InvocationCompleted | UsageMetered):
        a = _request_attributes(event.tenant_id, event.request_id)
        a |= {"gen_ai.response.model": event.model, "ledgergate.completion_status": event.status}
        if event.usage is not None:
            a |= _usage(event.usage)
        if isinstance(event, UsageMetered):
            a |= {"ledgergate.usage_estimated": event.estimated, "ledgergate.outcome": "metered"}
        return a
    if isinstance(event, ReservationPlaced):
        return _request_attributes(event.tenant_id, event.request_id, event.workflow_id, event.agent_id) | {
            "gen_ai.request.model": event.requested_model, "gen_ai.response.model": event.model,
            "gen_ai.usage.input_tokens": event.input_tokens, "ledgergate.granted_output_tokens":
            event.granted_output_tokens, "ledgergate.tier": event.tier,
            "ledgergate.reserved_micro_usd": event.amount_micro_usd, "ledgergate.outcome": "reserved"}
    if isinstance(event, ReservationDenied):
        return _request_attributes(event.tenant_id, event.request_id, event.workflow_id, event.agent_id) | {
            "gen_ai.request.model": event.requested_model, "ledgergate.reason": event.reason,
            "ledgergate.binding_scope": event.binding_scope, "ledgergate.outcome": "denied"}
    if isinstance(event, ReservationSettled):
        return _request_attributes(event.tenant_id, event.request_id, event.workflow_id) | _usage(event.usage) | {
            "gen_ai.response.model": event.model, "ledgergate.reserved_micro_usd": event.reserved_micro_usd,
            "ledgergate.actual_micro_usd": event.actual_micro_usd,
            "ledgergate.released_micro_usd": event.released_micro_usd,
            "ledgergate.overage_micro_usd": event.overage_micro_usd, "ledgergate.outcome": "settled"}
    if isinstance(event, ReservationRepeated):
        return _request_attributes(event.tenant_id, event.request_id, event.workflow_id) | {
            "ledgergate.outcome": "repeated"}
    if isinstance(event, ThresholdCrossed):
        return {"ledgergate.threshold_pct": event.threshold_pct, "ledgergate.threshold_scope": event.scope_type}
    if isinstance(event, GateDecision):
        a = _request_attributes(event.tenant_id, event.request_id, event.workflow_id, event.agent_id)
        a |= {"gen_ai.request.model": event.requested_model, "ledgergate.outcome": event.outcome,
              "ledgergate.reason_codes": list(event.reason_codes),
              "ledgergate.reserved_micro_usd": event.reserved_micro_usd,
              "ledgergate.granted_output_tokens": event.granted_output_tokens}
        if event.deployment is not None:
            a["gen_ai.response.model"] = event.deployment.model
        if event.binding_scope is not None:
            a["ledgergate.binding_scope"] = event.binding_scope
        return a
    # Any other ledger entry (a command's, an expiry, a period opened): its ids (describe names its kind).
    a = {}
    for name in ("tenant_id", "request_id"):
        value = getattr(event, name, None)
        if isinstance(value, str) and value:
            a[f"ledgergate.{name}"] = value
    return a
