"""Governance-test traffic: a few tenants, requests and completions through the real gate (some with
provider usage, some estimated from completion text), then wait until the ledger has settled them and
the router has audited every ledger entry, so replays and reconciliations see a quiet, whole system."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.shared.kafka.reader import read_to_end
from tests.e2e.conftest import Gate

USD = 1_000_000
TENANTS = ("gov-a", "gov-b", "gov-c")
MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1")
PROMPT = [{"role": "user", "content": "Summarise yesterday's spend by workflow, briefly."}]
COMPLETION_TEXT = "Spend was flat; the nightly workflow used most of it, as usual for a Monday."


@dataclass
class Completed:
    tenant: str
    request_id: str
    model: str
    usage: dict[str, int] | None  # None: reported without usage, so the token-counter estimates it
    workflow: str = ""


@dataclass
class Traffic:
    completed: list[Completed] = field(default_factory=list)
    decisions: int = 0


def drive(gate: Gate, per_tenant: int = 8) -> Traffic:
    traffic = Traffic()
    for tenant in TENANTS:
        gate.client.send_command(tenant, "SET_LIMIT", 50 * USD)
    for i in range(per_tenant):
        for t, tenant in enumerate(TENANTS):
            model = MODELS[(i + t) % len(MODELS)]
            workflow = f"wf{i % 2}"
            d = gate.client.request(tenant, PROMPT, model, 400, workflow_id=workflow, timeout_s=30)
            traffic.decisions += 1
            if d["outcome"] not in ("ALLOW", "DOWNGRADE"):
                continue
            granted = d["deployment"]["model"]
            usage = None if i % 4 == 3 else {"input_tokens": 20 + i, "cached_input_tokens": i % 3 * 4,
                                              "output_tokens": 40 + 7 * i, "reasoning_tokens": i % 2 * 5}
            gate.client.complete(tenant, d["request_id"], granted, usage,
                                 completion_text=COMPLETION_TEXT if usage is None else None)
            traffic.completed.append(Completed(tenant, d["request_id"], granted, usage, workflow))
    gate.client.flush()
    wait_quiet(gate, len(traffic.completed))
    return traffic


def _records(gate: Gate, logical: str) -> list[tuple[int, int, str, dict[str, Any]]]:
    topic = gate.kafka.topic(logical)
    return [(m.partition(), m.offset(), *codec().decode(m.value()))
            for m in read_to_end(gate.kafka.kafka_connection, topic, list(range(6)))]


def wait_quiet(gate: Gate, settlements: int, timeout_s: float = 60.0) -> None:
    """Every completion settled and every ledger entry audited (the router writes after the ledger)."""
    deadline = time.monotonic() + timeout_s
    while True:
        ledger = _records(gate, topics.LEDGER)
        audited = sum(1 for *_, name, rec in _records(gate, topics.AUDIT) if rec["kind"] == "LEDGER")
        settled = sum(1 for *_, name, _ in ledger if name == "ReservationSettled")
        if settled >= settlements and audited == len(ledger):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not quiet: {settled}/{settlements} settled, {audited}/{len(ledger)} audited")
        time.sleep(0.3)


def audit_records(gate: Gate) -> list[tuple[int, int, dict[str, Any]]]:
    """(partition, offset, record) of every audit record."""
    return [(p, o, rec) for p, o, _, rec in _records(gate, topics.AUDIT)]


def settlements(gate: Gate) -> list[dict[str, Any]]:
    return [rec for *_, name, rec in _records(gate, topics.LEDGER) if name == "ReservationSettled"]


def metered(gate: Gate) -> list[dict[str, Any]]:
    return [rec for *_, name, rec in _records(gate, topics.METERED) if name == "UsageMetered"]
