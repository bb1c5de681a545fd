"""A tenant's redaction before a record that carries text is stored where it lasts (docs/privacy.md): a dead
letter's original bytes, a cache entry. The patterns are the tenant policy's `redact_patterns` (and, for the
cache, its `cache.redact_patterns`), checked when the policy was set.

A record of a text-bearing type is decoded, its text fields redacted and encoded again (a signed record's
signature then no longer verifies: a dead letter is for reading, not for replaying as it was). Bytes that do
not decode are redacted as they are, read as Latin-1 so every byte round-trips: a pattern over ASCII (card
numbers, e-mail addresses, keys) still finds its matches in a producer's malformed JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ledgergate.codec import codec
from ledgergate.errors import LedgergateError
from ledgergate.shared.cache import redact


def _messages(rec: dict[str, Any], patterns: Sequence[str]) -> None:
    for message in rec["messages"]:
        if message.get("content"):
            message["content"] = redact(message["content"], patterns)


def _field(name: str) -> Callable[[dict[str, Any], Sequence[str]], None]:
    def redact_field(rec: dict[str, Any], patterns: Sequence[str]) -> None:
        if rec.get(name):
            rec[name] = redact(rec[name], patterns)
    return redact_field


def _template_values(rec: dict[str, Any], patterns: Sequence[str]) -> None:
    template = rec.get("template")
    if template:
        template["variables"] = {k: redact(v, patterns) for k, v in template["variables"].items()}


# The record types whose fields hold prompt or answer text, and how each is redacted.
TEXT_FIELDS: dict[str, tuple[Callable[[dict[str, Any], Sequence[str]], None], ...]] = {
    "InvocationRequested": (_messages, _template_values),
    "InvocationCompleted": (_field("completion_text"),),
    "UsageMetered": (_field("response_text"),),
    "GateDecision": (_field("cached_response"),),
    "CacheEntry": (_field("response_text"),),
}


def redact_bytes(value: bytes, patterns: Sequence[str]) -> bytes:
    """`value` with every match of `patterns` replaced in its text (see the module's docstring)."""
    if not patterns:
        return value
    try:
        name, rec = codec().decode(value)
    except LedgergateError:
        return redact(value.decode("latin-1"), patterns).encode("latin-1")
    steps = TEXT_FIELDS.get(name)
    if steps is None:
        return value  # a record without text: nothing to redact
    for step in steps:
        step(rec, patterns)
    try:
        return codec().encode(name, rec)
    except LedgergateError:  # it decoded but does not encode again (a value out of today's bounds)
        return redact(value.decode("latin-1"), patterns).encode("latin-1")
