"""The typed event records mirror their Avro schemas field for field (nested records too), and a record
round-trips: typed -> plain -> bytes -> plain -> typed gives the same record."""

from __future__ import annotations

import re
from dataclasses import fields, is_dataclass
from typing import Any

import pytest

from ledgergate import events
from ledgergate.codec import codec
from ledgergate.events import (
    EVENTS,
    AuditRecord,
    BudgetAlert,
    ChatMessage,
    Deployment,
    GateDecision,
    InvocationCompleted,
    InvocationCounted,
    InvocationPlanned,
    InvocationRequested,
    PlanCandidate,
    PlanRejection,
    Usage,
    UsageMetered,
)


def _schema_fields(schema: dict[str, Any]) -> list[str]:
    return [f["name"] for f in schema["fields"]]


def _records(node: Any) -> dict[str, dict[str, Any]]:
    """Every named record in a parsed schema, by its short name."""
    found: dict[str, dict[str, Any]] = {}
    if isinstance(node, dict):
        if node.get("type") == "record":
            found[node["name"].rpartition(".")[2]] = node
        for value in node.values():
            found.update(_records(value))
    elif isinstance(node, list):
        for value in node:
            found.update(_records(value))
    return found


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.__name__)
def test_each_record_has_its_schemas_fields_in_order(event: type) -> None:
    named = _records(codec().schema(event.__name__).parsed)
    pending = [event]
    while pending:
        cls = pending.pop()
        assert [f.name for f in fields(cls)] == _schema_fields(named[cls.__name__]), cls.__name__
        for f in fields(cls):
            for nested in re.findall(r"[A-Z][A-Za-z]+", str(f.type)):
                candidate = getattr(events, nested, None)
                if is_dataclass(candidate) and candidate is not cls and nested in named:
                    pending.append(candidate)


SAMPLES = [
    InvocationRequested("r1", "acme", "wf", "a1", "gpt-4o", (ChatMessage("system", "be terse"),
                                                         ChatMessage("user", "hi", "bob")),
                        None, 256, "HIGH", "eu", None, {"team": "x"}, 1, {}),
    InvocationCounted("r1", "acme", "wf", "a1", "gpt-4o", 256, "NORMAL", None, 5, {}, 1, {"traceparent": "00-x"},
                      10, 10, "o200k_base", 256, "sha", None, 2),
    InvocationPlanned("r1", "acme", "", "", "gpt-4o", 256, "NORMAL", None, None, {}, 1, {}, 10, 10, "o200k_base", 256,
                      "sha", None, (PlanCandidate("gpt-4o", "premium", 1, 2, 3, 256, "2026-11-01"),),
                      PlanRejection("rate_limited", "slow down", 500, "policy"), 3, 4),
    GateDecision("r1", "acme", "", "", "ALLOW", "gpt-4o", Deployment("gpt-4o", "https://x", "eu"), 256, 3, 97,
                 ("within_budget",), None, None, "r1", "r1/reservation", 1, 1, 2),
    InvocationCompleted("r1", "acme", "gpt-4o", "OK", Usage(1, 0, 2, 0), None, 5, {}),
    InvocationCompleted("r1", "acme", "gpt-4o", "OK", None, "the text", 5, {}),
    UsageMetered("r1", "acme", "gpt-4o", "OK", Usage(1, 0, 2, 0), True, 2, 1_000_000, 5, 6),
    BudgetAlert("a", "acme", "TENANT", "acme", "2026-11", 80, 8, 10, 7),
    AuditRecord("0:0", "acme", "DECISION", "GateDecision", "r1", "gate.decisions", 0, 5, "sha", "{}", 0, 0, "0" * 64,
                "f" * 64, 8),
]


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: type(r).__name__)
def test_records_round_trip_through_the_codec(record: Any) -> None:
    name, decoded = codec().decode(codec().encode(type(record).__name__, record.to_record()))
    assert name == type(record).__name__
    assert type(record).from_record(decoded) == record
