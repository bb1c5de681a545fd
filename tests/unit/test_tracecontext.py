"""W3C Trace Context (https://www.w3.org/TR/trace-context/) in the public package: the spec's examples of
traceparent parse and format, the invalid ones refused, tracestate checked, and the SDK's choice of context
(explicit, the current OpenTelemetry span's, a new trace), with and without OpenTelemetry importable."""

from __future__ import annotations

import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider

from ledgergate import tracecontext
from ledgergate.tracecontext import (
    TraceContextError,
    TraceParent,
    from_carrier,
    outgoing,
    parse_traceparent,
    valid_tracestate,
)

# The spec's own example values (section 3.2 and the examples in 3.2.2.x).
SPEC_VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SPEC_NOT_SAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def test_the_specs_examples_parse_and_format_back() -> None:
    tp = parse_traceparent(SPEC_VALID)
    assert (tp.version, tp.trace_id, tp.parent_id, tp.flags, tp.sampled) == (0, TRACE_ID, PARENT_ID, 1, True)
    assert tp.format() == SPEC_VALID
    off = parse_traceparent(SPEC_NOT_SAMPLED)
    assert not off.sampled and off.format() == SPEC_NOT_SAMPLED
    # HTTP's optional whitespace around the value is not part of it.
    assert parse_traceparent(f" \t{SPEC_VALID} ").format() == SPEC_VALID


def test_a_later_version_is_read_for_the_fields_version_00_defines_and_sent_on_as_00() -> None:
    tp = parse_traceparent(f"cc-{TRACE_ID}-{PARENT_ID}-01-what-the-future-will-be-like")
    assert (tp.version, tp.trace_id, tp.parent_id, tp.sampled) == (0xCC, TRACE_ID, PARENT_ID, True)
    assert tp.format() == SPEC_VALID
    assert parse_traceparent(f"01-{TRACE_ID}-{PARENT_ID}-09").format() == f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.mark.parametrize("value", [
    f"ff-{TRACE_ID}-{PARENT_ID}-01",                                  # version ff is forbidden
    f"00-{'0' * 32}-{PARENT_ID}-01",                                  # all-zero trace-id
    f"00-{TRACE_ID}-{'0' * 16}-01",                                   # all-zero parent-id
    f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",                          # uppercase hex
    f"00-{TRACE_ID}-{PARENT_ID.upper()}-01",
    f"0A-{TRACE_ID}-{PARENT_ID}-01",
    f"00-{TRACE_ID}-{PARENT_ID}-0G",                                  # not hex
    f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01",                             # a digit short
    f"00-{TRACE_ID}0-{PARENT_ID}-01",                                 # a digit long
    f"00-{TRACE_ID}-{PARENT_ID}-1",
    f"00-{TRACE_ID}-{PARENT_ID}-01-extra",                            # version 00 ends after its flags
    f"00-{TRACE_ID}-{PARENT_ID}-01-",
    f"cc-{TRACE_ID}-{PARENT_ID}-01.future",                           # a later version: "-" after the flags
    f"00_{TRACE_ID}_{PARENT_ID}_01",                                  # wrong delimiter
    f"00-{TRACE_ID}-{PARENT_ID}",                                     # missing field
    "", "00", "not a traceparent",
    f"00-{TRACE_ID}-{PARENT_ID}-01\n",                                # a control character is not whitespace
])
def test_invalid_traceparents_are_refused(value: str) -> None:
    with pytest.raises(TraceContextError):
        parse_traceparent(value)
    assert from_carrier({"traceparent": value, "tracestate": "congo=t61rcWkgMzE"}) is None  # tracestate goes too


def test_tracestate_follows_the_list_rules_and_an_invalid_one_is_dropped() -> None:
    assert valid_tracestate("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE") == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    assert valid_tracestate(" rojo=1 , ,congo=2 ") == "rojo=1,congo=2"    # OWS and empty members
    assert valid_tracestate("fw529a3039@dt=00f067aa0ba902b7") is not None  # multi-tenant key
    for bad in ("Rojo=1", "rojo", "rojo=1,rojo=2", "rojo=a,b=", "rojo=in\tside", "rojo=caf\u00e9", "rojo=x=y",
                ",".join(f"k{i}=v" for i in range(33)), "k=" + "v" * 600):
        assert valid_tracestate(bad) is None, bad
    parent, state = from_carrier({"traceparent": SPEC_VALID, "tracestate": "Bad=1"}) or (None, "unset")
    assert parent is not None and parent.trace_id == TRACE_ID and state is None


def test_a_new_trace_and_a_child_are_valid_and_random() -> None:
    a, b = TraceParent.new(), TraceParent.new()
    assert a.trace_id != b.trace_id and a.sampled
    assert parse_traceparent(a.format()) == TraceParent(a.trace_id, a.parent_id, a.flags)
    child = a.child()
    assert child.trace_id == a.trace_id and child.parent_id != a.parent_id
    assert not TraceParent.new(sampled=False).sampled


def test_outgoing_takes_an_explicit_context_the_current_span_or_starts_a_trace() -> None:
    explicit = {"traceparent": SPEC_VALID, "tracestate": "congo=t61rcWkgMzE", "other": "dropped"}
    assert outgoing(explicit) == {"traceparent": SPEC_VALID, "tracestate": "congo=t61rcWkgMzE"}
    with pytest.raises(TraceContextError):
        outgoing({"traceparent": f"00-{'0' * 32}-{PARENT_ID}-01"})
    with pytest.raises(TraceContextError):
        outgoing({"tracestate": "congo=1"})
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("app") as span:
        ctx = span.get_span_context()
        assert outgoing() == {"traceparent": f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"}
    fresh = parse_traceparent(outgoing()["traceparent"])  # no span current: a trace of its own
    assert fresh.sampled and fresh.trace_id != f"{ctx.trace_id:032x}"


def test_without_opentelemetry_the_sdk_starts_its_own_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    # As in an app that installed the client wheel alone: `import opentelemetry.trace` fails.
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
    monkeypatch.setattr(tracecontext, "_otel_trace", None)
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("app"):
        carrier = outgoing()
    assert tracecontext._otel_trace is False
    assert parse_traceparent(carrier["traceparent"]).sampled
