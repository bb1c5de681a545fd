"""Faults 9 and invariant 4 against hostile input: NUL, control characters, bidi overrides, invalid
UTF-8 and over-long values in every client-chosen string of every input topic, sent as a producer
that is not the SDK would send them. Each bad input becomes a `DENY invalid_request` or a dead letter
naming the error; records that reach a sink in a shape it cannot store (written by another producer
straight onto gate.decisions and audit.log) land in projection_errors with their coordinates; every
process stays alive and ready, the read model equals the topics, and the gate still decides."""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import Producer

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.connection import KafkaConnection
from ledgergate.kafka_config import producer_config
from tests.e2e.conftest import GATE_SERVICES, Projected
from tests.e2e.readmodel import wait_projection_matches

PROCESSES = [*GATE_SERVICES, "projector"]
TENANT = "poison-t"
HOSTILE = {"nul": "\x00", "nul_inside": "a\x00b", "escape": "\x1b[31m", "newline": "a\nb", "bidi": "\u202e",
           "long": "x" * 5000}
FIELDS = ["request_id", "tenant_id", "workflow_id", "agent_id", "requested_model", "region", "label_key",
          "label_value", "message_name", "message_role"]


def _request(rid: str) -> dict[str, Any]:
    return {"request_id": rid, "tenant_id": TENANT, "workflow_id": "wf", "agent_id": "agent-1",
            "requested_model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi", "name": None}],
            "tools_json": None, "max_output_tokens": 64, "priority": "NORMAL", "region": None,
            "max_cost_micro_usd": None, "labels": {"team": "search"}, "requested_at_ms": int(time.time() * 1000),
            "trace_context": {}}


def _spoil(rec: dict[str, Any], field: str, value: str) -> None:
    if field == "label_key":
        rec["labels"] = {value: "v"}
    elif field == "label_value":
        rec["labels"] = {"team": value}
    elif field.startswith("message_"):
        rec["messages"][0][field.removeprefix("message_")] = value
    else:
        rec[field] = value


class RawProducer:
    """What a producer that is not the SDK does: any key, any header, bytes of its own making."""

    def __init__(self, connection: KafkaConnection) -> None:
        self.producer = Producer(producer_config(connection))
        self.offsets: dict[str, int] = {}  # label -> offset it got

    def send(self, label: str, topic: str, value: bytes, key: bytes | None, request_id: str | None = None) -> None:
        def delivered(err: Any, msg: Any) -> None:
            assert err is None, err
            self.offsets[label] = msg.offset()
        headers = [("request_id", request_id.encode())] if request_id is not None else None
        self.producer.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0


def test_hostile_strings_are_denied_dead_lettered_or_recorded_and_nothing_stops(projected: Projected) -> None:
    gate = projected.gate
    kafka = gate.kafka
    gate.client.send_command(TENANT, "SET_LIMIT", 10_000_000)
    raw = RawProducer(kafka.kafka_connection)
    deny: dict[str, str] = {}          # label -> request id that must be answered DENY invalid_request
    dead: dict[str, str] = {}          # label -> logical topic it must be dead-lettered from

    for field in FIELDS:
        for name, value in HOSTILE.items():
            label, rid = f"{field}/{name}", f"poison-{uuid.uuid4().hex[:12]}"
            rec = _request(rid)
            _spoil(rec, field, value)
            raw.send(label, kafka.topic(topics.REQUESTS), codec().encode("InvocationRequested", rec), TENANT.encode(),
                     request_id=rec["request_id"])
            if field == "request_id":
                dead[label] = topics.REQUESTS  # no valid id to answer under
            else:
                deny[label] = rid  # the tenant comes from the key when the body's is bad

    # Invalid UTF-8 inside a string: undecodable, but the key and header still say who asked.
    rid = f"poison-{uuid.uuid4().hex[:12]}"
    rec = _request(rid)
    rec["workflow_id"] = "WFWFWFWF"
    body = codec().encode("InvocationRequested", rec).replace(b"WFWFWFWF", b"\xff\xfe\xed\xa0\x80\xc3\x28\xff")
    raw.send("invalid_utf8", kafka.topic(topics.REQUESTS), body, TENANT.encode(), request_id=rid)
    deny["invalid_utf8"] = rid
    raw.send("invalid_utf8_no_header", kafka.topic(topics.REQUESTS), body, TENANT.encode())
    dead["invalid_utf8_no_header"] = topics.REQUESTS
    # No key at all: treated like a key that differs from the body's tenant.
    rid = f"poison-{uuid.uuid4().hex[:12]}"
    raw.send("no_key", kafka.topic(topics.REQUESTS), codec().encode("InvocationRequested", _request(rid)), None,
             request_id=rid)
    deny["no_key"] = rid

    # Completions and operator commands settle and move money: refused with a dead letter.
    for name, value in HOSTILE.items():
        for field in ("request_id", "model"):
            done = {"request_id": "poison-done", "tenant_id": TENANT, "model": "gpt-4o-mini", "status": "OK",
                    "usage": {"input_tokens": 1, "cached_input_tokens": 0, "output_tokens": 1, "reasoning_tokens": 0},
                    "completion_text": None, "completed_at_ms": int(time.time() * 1000), "trace_context": {},
                    field: value}
            raw.send(f"completion/{field}/{name}", kafka.topic(topics.COMPLETIONS),
                     codec().encode("InvocationCompleted", done), TENANT.encode())
            dead[f"completion/{field}/{name}"] = topics.COMPLETIONS
        for field in ("reason", "scope_id"):
            command = {"command_id": str(uuid.uuid4()), "tenant_id": TENANT, "kind": "GRANT_CREDIT",
                       "scope_type": "TENANT", "scope_id": TENANT, "amount_micro_usd": 1, "request_id": None,
                       "policy_json": None, "reason": "", "issued_by": "poison", "issued_at_ms": 0, field: value}
            raw.send(f"command/{field}/{name}", kafka.topic(topics.COMMANDS), codec().encode("BudgetCommand", command),
                     TENANT.encode())
            dead[f"command/{field}/{name}"] = topics.COMMANDS
    raw.flush()

    # Records a sink cannot store, written past the gate straight onto the projector's input topics.
    valid = gate.client.request(TENANT, [{"role": "user", "content": "ok"}], "gpt-4o-mini", 16, timeout_s=60)
    assert valid["outcome"] in ("ALLOW", "DOWNGRADE")
    rogue = {**valid, "request_id": "rogue-decision", "ledger_entry_id": "rogue\x00entry", "workflow_id": "\x00"}
    raw.send("rogue_decision", kafka.topic(topics.DECISIONS), codec().encode("GateDecision", rogue), TENANT.encode())
    audit = next(r for r in gate.audit() if r["tenant_id"] == TENANT)
    raw.send("rogue_audit", kafka.topic(topics.AUDIT), codec().encode("AuditRecord", {
        **audit, "subject_id": "a\x00b", "chain_sequence": audit["chain_sequence"] + 1_000_000}), TENANT.encode())
    raw.flush()

    # Every bad request is a DENY invalid_request; everything else a dead letter naming the error.
    deadline = time.monotonic() + 90
    while True:
        decisions = {d["request_id"]: d for d in gate.decisions()}
        letters = {(d["original_topic"], d["original_offset"]): d for d in gate.dead_letters()}
        missing_deny = [k for k, r in deny.items() if r not in decisions]
        missing_dead = [k for k, t in dead.items() if (kafka.topic(t), raw.offsets[k]) not in letters]
        if (not missing_deny and not missing_dead) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not missing_deny, f"no decision for {missing_deny}"
    assert not missing_dead, f"no dead letter for {missing_dead}"
    for label, rid in deny.items():
        d = decisions[rid]
        assert d["outcome"] == "DENY" and d["reason_codes"] == ["invalid_request"], (label, d)
        assert d["tenant_id"] == TENANT, (label, d["tenant_id"])
    for label, topic in dead.items():
        letter = letters[(kafka.topic(topic), raw.offsets[label])]
        assert letter["error_code"] and letter["error_message"], (label, letter)
    print(f"\npoison: {len(deny)} DENY invalid_request, {len(dead)} dead letters, 2 projection errors")

    # The sinks moved on: the read model equals the topics, the two rogue records in projection_errors.
    have = wait_projection_matches(projected)
    assert sorted((o, c) for _, _, o, c in have["errors"]) == sorted(
        [(raw.offsets["rogue_decision"], "unstorable_value"), (raw.offsets["rogue_audit"], "unstorable_value")])
    # Nothing died of it, everything is ready, and the gate still decides.
    assert gate.services.restarts() == {}, gate.services.restarts()
    assert all(gate.services.alive(name) for name in PROCESSES)
    gate.wait_ready(PROCESSES)
    after = gate.client.request(TENANT, [{"role": "user", "content": "still there?"}], "gpt-4o-mini", 16,
                                timeout_s=30)
    assert after["outcome"] in ("ALLOW", "DOWNGRADE")
