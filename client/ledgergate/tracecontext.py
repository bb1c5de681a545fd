"""W3C Trace Context (https://www.w3.org/TR/trace-context/): parse and format `traceparent`, carry
`tracestate`, without OpenTelemetry.

The public package depends on confluent-kafka and fastavro only, so the SDK makes or continues a trace
with this module: when `opentelemetry-api` is importable and a span is current, a request continues that
span (its trace id, the span as parent); otherwise it starts a trace of its own (a random trace id and
parent id, sampled). The context rides in the records' `trace_context` map ({"traceparent": ...,
"tracestate": ...}); the server's hops (ledgergate.shared.tracing) continue it and the decision returns it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from ledgergate.errors import LedgergateError

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
VERSION = 0
SAMPLED = 0x01
# Level 2's "random trace id" flag. Flags beyond the ones a version defines are not propagated: a sender
# sets the bits it knows, so a formatted header keeps only these two.
RANDOM = 0x02
KNOWN_FLAGS = SAMPLED | RANDOM
# The spec bounds tracestate at 32 list members and says a receiver may drop it past 512 characters.
TRACESTATE_MAX_CHARS = 512
# A later version may append fields; a bound on what is read at all.
TRACEPARENT_MAX_CHARS = 256
TRACESTATE_MAX_MEMBERS = 32

# version "-" trace-id "-" parent-id "-" trace-flags, lowercase hex only (HEXDIGLC). Version 00 is exactly
# these 55 characters; a later version may append "-" and more, which a version-00 parser ignores.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL)
_VERSION_00 = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")  # the common case, sliced without groups
# tracestate list member: key "=" value (keys: simple or tenant@system; values: printable ASCII but , and =,
# not ending in a space).
_TS_KEY = re.compile(r"[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}")
_TS_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16
_OWS = " \t"  # HTTP's optional whitespace around a header value


class TraceContextError(LedgergateError):
    """A traceparent or tracestate that the W3C rules refuse."""

    code = "invalid_trace_context"


class TraceParent(NamedTuple):
    """One parsed traceparent. `parent_id` is the span that sent it (the next span's parent). A NamedTuple
    rather than a frozen dataclass: every hop makes one or two, and it builds in a third of the time. Only
    parse_traceparent, new and child make them from outside values, and they check them."""

    trace_id: str  # 32 lowercase hex digits, not all zero
    parent_id: str  # 16 lowercase hex digits, not all zero
    flags: int = SAMPLED  # 0..255 as received; format() keeps the known bits
    version: int = VERSION

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    def format(self) -> str:
        """The header value this client sends: always version 00, whatever version was received (the spec:
        a vendor propagates the version it speaks)."""
        return f"00-{self.trace_id}-{self.parent_id}-{self.flags & KNOWN_FLAGS:02x}"

    def child(self) -> TraceParent:
        """The same trace with a new parent id: what a hop sends on when it acts as a span of its own."""
        assert len(self.trace_id) == 32 and self.trace_id != _ZERO_TRACE, self.trace_id
        return TraceParent(self.trace_id, new_parent_id(), self.flags & KNOWN_FLAGS)

    @classmethod
    def new(cls, sampled: bool = True) -> TraceParent:
        """A trace of its own: random trace id (so the random flag is set) and parent id."""
        return cls(new_trace_id(), new_parent_id(), (SAMPLED if sampled else 0) | RANDOM)


def new_trace_id() -> str:
    while True:  # all-zero is invalid; the loop runs again with probability 2**-128
        value = os.urandom(16).hex()
        if value != _ZERO_TRACE:
            return value


def new_parent_id() -> str:
    while True:
        value = os.urandom(8).hex()
        if value != _ZERO_PARENT:
            return value


def parse_traceparent(value: str) -> TraceParent:
    """A traceparent header value, by the W3C rules; TraceContextError names what is wrong.

    Refused: version ff, uppercase or other non-hex digits, a trace id or parent id of all zeros, the wrong
    length, and anything after the flags of a version-00 value. A later version is parsed for the fields
    version 00 defines (it must then be 55 characters, or longer with "-" after the flags)."""
    if not isinstance(value, str):
        raise TraceContextError(f"traceparent must be a string, not {type(value).__name__}")
    if len(value) == 55 and _VERSION_00.fullmatch(value):  # every hop reads one of these: keep it short
        trace_id, parent_id = value[3:35], value[36:52]
        if trace_id != _ZERO_TRACE and parent_id != _ZERO_PARENT:
            return TraceParent(trace_id, parent_id, int(value[53:55], 16))
    text = value.strip(_OWS)
    if len(text) > TRACEPARENT_MAX_CHARS:
        raise TraceContextError(f"traceparent of {len(text)} characters is too long")
    match = _TRACEPARENT.fullmatch(text)
    if match is None:
        raise TraceContextError("traceparent must be version-traceid-parentid-flags in lowercase hex "
                                "(2-32-16-2 digits)")
    version_hex, trace_id, parent_id, flags_hex, rest = match.groups()
    version = int(version_hex, 16)
    if version == 0xFF:
        raise TraceContextError("traceparent version ff is invalid")
    if version == VERSION and rest is not None:
        raise TraceContextError("a version-00 traceparent ends after its flags (55 characters)")
    if trace_id == _ZERO_TRACE:
        raise TraceContextError("traceparent trace-id is all zeros")
    if parent_id == _ZERO_PARENT:
        raise TraceContextError("traceparent parent-id is all zeros")
    return TraceParent(trace_id, parent_id, int(flags_hex, 16), version)


def valid_tracestate(value: str) -> str | None:
    """`value` if it is a tracestate list the spec allows (at most 32 members, well-formed, no duplicate
    keys, at most 512 characters), else None: an invalid tracestate is dropped, never an error."""
    if not isinstance(value, str) or len(value) > TRACESTATE_MAX_CHARS:
        return None
    members = [m.strip(_OWS) for m in value.split(",")]
    members = [m for m in members if m]  # empty list members are allowed and ignored
    if len(members) > TRACESTATE_MAX_MEMBERS:
        return None
    keys = set()
    for member in members:
        key, sep, val = member.partition("=")
        if not sep or _TS_KEY.fullmatch(key) is None or _TS_VALUE.fullmatch(val) is None or key in keys:
            return None
        keys.add(key)
    return ",".join(members) if members else None


def from_carrier(carrier: Mapping[str, str] | None) -> tuple[TraceParent, str | None] | None:
    """The traceparent (and a valid tracestate) of a trace_context map, or None when it has no valid
    traceparent (then tracestate is ignored too, as the spec says)."""
    if not carrier:
        return None
    raw = carrier.get(TRACEPARENT)
    if raw is None:
        return None
    try:
        parent = parse_traceparent(raw)
    except TraceContextError:
        return None
    state = carrier.get(TRACESTATE)
    return parent, (valid_tracestate(state) if state else None)


def to_carrier(parent: TraceParent, tracestate: str | None = None) -> dict[str, str]:
    carrier = {TRACEPARENT: parent.format()}
    if tracestate:
        carrier[TRACESTATE] = tracestate
    return carrier


# --- OpenTelemetry, when the application has it -------------------------------------------------------

_otel_trace: Any = None  # the opentelemetry.trace module once looked for; False when it is not importable


def _otel() -> Any:
    global _otel_trace
    if _otel_trace is None:
        try:  # optional: the SDK never requires OpenTelemetry (tests/unit/test_layout.py allows this one)
            import opentelemetry.trace as otel_trace

            _otel_trace = otel_trace
        except ImportError:
            _otel_trace = False
    return _otel_trace


def current_span_carrier() -> dict[str, str] | None:
    """The current OpenTelemetry span's context as a trace_context map, or None when OpenTelemetry is not
    importable or no valid span is current."""
    otel = _otel()
    if not otel:
        return None
    ctx = otel.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    parent = TraceParent(f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}", int(ctx.trace_flags))
    state = ctx.trace_state.to_header() if ctx.trace_state else None
    return to_carrier(parent, valid_tracestate(state) if state else None)


def outgoing(explicit: Mapping[str, str] | None = None) -> dict[str, str]:
    """The trace_context a record this client sends carries: `explicit` (checked: TraceContextError when its
    traceparent is invalid), else the current OpenTelemetry span's, else a new trace."""
    if explicit:
        parent = parse_traceparent(explicit.get(TRACEPARENT, ""))
        state = explicit.get(TRACESTATE)
        return to_carrier(parent, valid_tracestate(state) if state else None)
    return current_span_carrier() or to_carrier(TraceParent.new())
