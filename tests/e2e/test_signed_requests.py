"""Invariant 5 end to end: only a tenant's own credentials spend or settle its budget. The four gate services
run as real processes on the real broker with a credential master key; the API (in-process, real
PostgreSQL) issues and revokes credentials and sets auth modes; agents sign with the SDK.

- a request signed by the tenant's credential is ALLOWed; a forged one (wrong secret, another tenant's key,
  unsigned while the tenant requires signatures) is `DENY unauthenticated`, with its audit record;
- a forged completion settles nothing (dead-lettered as `unauthenticated`), the real one then settles;
- an OPTIONAL tenant accepts unsigned requests, and still refuses a bad signature;
- rotation under steady traffic: issue a second key, switch the client, revoke the first; every request
  is ALLOWed, and the old key is refused soon after its revoke;
- what a forger sends malformed, unreadable or on another partition is unauthenticated too, and takes none
  of the tenant's request ids.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from confluent_kafka import Producer
from fastapi.testclient import TestClient

from ledgergate import topics
from ledgergate.client import DecisionFuture, GateClient
from ledgergate.codec import codec
from ledgergate.kafka_config import producer_config
from ledgergate.partitioning import murmur2_partition
from ledgergate.services.api.app import create_app
from ledgergate.shared.kafka.reader import read_to_end
from ledgergate.shared.settings import KafkaSettings
from ledgergate.signing import Credential, sign
from ledgergate.tools.servicerunner import ServiceSet
from tests.conftest import TEST_PARTITIONS
from tests.e2e.conftest import GATE_SERVICES, RESERVATION_TTL_MS, wait_ready
from tests.integration.apiharness import (  # noqa: F401  (fixtures)
    MASTER_KEY,
    Keys,
    api_db_fixture,
    api_settings,
    keys_fixture,
)
from tests.integration.apiharness import wait_ready as api_ready

pytestmark = pytest.mark.e2e
H = Keys.h
R = TypeVar("R")
ACME, GLOBEX, INITECH = "acme", "globex", "initech"
MODEL = "gpt-4o-mini"
HELLO = [{"role": "user", "content": "hello"}]
USAGE = {"input_tokens": 8, "cached_input_tokens": 0, "output_tokens": 20, "reasoning_tokens": 0}


@dataclass
class Signed:
    kafka: KafkaSettings
    services: ServiceSet
    api: TestClient
    admin: dict[str, str]
    clients: list[GateClient]

    def client(self, credential: Credential | None = None) -> GateClient:
        client = GateClient(self.kafka.kafka_bootstrap, topic_prefix=self.kafka.topic_prefix, timeout_s=30,
                            credential=credential)
        self.clients.append(client)
        return client

    def issue(self, tenant: str, **body: Any) -> Credential:
        resp = self.api.post(f"/v1/tenants/{tenant}/credentials", headers=self.admin, json=body)
        assert resp.status_code == 201, resp.text
        return Credential(resp.json()["key_id"], resp.json()["secret"])

    def revoke(self, tenant: str, key_id: str) -> None:
        resp = self.api.delete(f"/v1/tenants/{tenant}/credentials/{key_id}", headers=self.admin)
        assert resp.status_code == 204, resp.text

    def mode(self, tenant: str, mode: str | None) -> None:
        resp = self.api.put(f"/v1/tenants/{tenant}/credentials/mode", headers=self.admin, json={"mode": mode})
        assert resp.status_code == 200, resp.text

    def budget(self, tenant: str, usd: int) -> None:
        resp = self.api.post(f"/v1/tenants/{tenant}/budgets", headers=self.admin,
                             json={"limit_micro_usd": usd * 1_000_000})
        assert resp.status_code == 202, resp.text

    def read(self, logical_topic: str) -> list[tuple[str, dict[str, Any]]]:
        return [codec().decode(m.value()) for m in read_to_end(
            self.kafka.kafka_connection, self.kafka.topic(logical_topic), list(range(6)))]

    def eventually(self, what: str, probe: Callable[[], R | None], timeout_s: float = 60.0) -> R:
        deadline = time.monotonic() + timeout_s
        while True:
            found = probe()
            if found is not None:
                return found
            dead = self.services.dead()
            if dead or time.monotonic() > deadline:
                logs = "\n".join(f"--- {n}\n{self.services.tail(n, 20)}" for n in self.services.names())
                raise AssertionError(f"{what}: {'died: ' + str(dead) if dead else 'timed out'}\n{logs}")
            time.sleep(0.2)


@pytest.fixture(name="signed")
def signed_fixture(kafka: KafkaSettings, api_db: str, keys: Keys, tmp_path: Path) -> Iterator[Signed]:
    env = {"LEDGERGATE_KAFKA_BOOTSTRAP": kafka.kafka_bootstrap, "LEDGERGATE_TOPIC_PREFIX": kafka.topic_prefix,
           "LEDGERGATE_RESERVATION_TTL_MS": str(RESERVATION_TTL_MS * 10), "LEDGERGATE_EXPIRY_INTERVAL_MS": "200",
           "LEDGERGATE_CREDENTIAL_MASTER_KEY": MASTER_KEY}
    services = ServiceSet(env, tmp_path / "logs", supervise=True)
    services.start(GATE_SERVICES)
    gate = Signed(kafka, services, TestClient(create_app(api_settings(kafka, api_db))), H(keys.admin), [])
    try:
        with gate.api:
            api_ready(gate.api)
            wait_ready(gate.client())
            yield gate
    finally:
        for client in gate.clients:
            client.close()
        services.close()


def deny_reason(decision: dict[str, Any]) -> str | None:
    return decision["reason_codes"][0] if decision["outcome"] == "DENY" else None


def allowed(client: GateClient, tenant: str) -> Callable[[], dict[str, Any] | None]:
    """A probe: one request, its decision when ALLOWed (the budget command may not be applied yet)."""
    def probe() -> dict[str, Any] | None:
        decision = client.request(tenant, HELLO, MODEL, 16)
        return decision if decision["outcome"] == "ALLOW" else None
    return probe


def test_signed_requests_pass_forgeries_are_denied_and_forged_completions_settle_nothing(signed: Signed) -> None:
    for tenant in (ACME, GLOBEX, INITECH):
        signed.budget(tenant, 100)
    acme, globex = signed.issue(ACME), signed.issue(GLOBEX)
    signed.mode(ACME, "REQUIRED")
    signed.mode(INITECH, "OPTIONAL")
    unsigned = signed.client()
    # The mode reaches the token-counter through tenant.credentials: wait for it with unsigned probes
    # (each is denied before the tenant's state is read, so they spend nothing).
    signed.eventually("acme requires signatures", lambda: True if deny_reason(
        unsigned.request(ACME, HELLO, MODEL, 16)) == "unauthenticated" else None)

    # 1. The tenant's own credential: ALLOW (once its budget command is applied: until then, no_budget).
    good = signed.client(acme)
    first = signed.eventually("a signed acme request is allowed", allowed(good, ACME))
    assert first["reserved_micro_usd"] > 0

    # 2. Forgeries, each DENY unauthenticated, naming the credential as the binding scope, revealing nothing.
    forged = {
        "wrong secret": signed.client(Credential(acme.key_id, secrets.token_hex(32))).request(ACME, HELLO, MODEL, 16),
        "globex's key": signed.client(globex).request(ACME, HELLO, MODEL, 16),
        "unsigned": unsigned.request(ACME, HELLO, MODEL, 16),
        "a made-up key": signed.client(Credential("lgc_7_0123456789abcdef", secrets.token_hex(32))).request(
            ACME, HELLO, MODEL, 16)}
    for what, decision in forged.items():
        assert (decision["outcome"], decision["reason_codes"], decision["binding_scope"],
                decision["remaining_micro_usd"], decision["reserved_micro_usd"]) == (
            "DENY", ["unauthenticated"], "credential", 0, 0), (what, decision)
    # globex's own key still works for globex.
    assert signed.client(globex).request(GLOBEX, HELLO, MODEL, 16)["outcome"] == "ALLOW"

    # 3. Exactly one decision and one DECISION audit record per forged request (invariants 4 and 6).
    forged_ids = {d["request_id"] for d in forged.values()}

    def audited() -> list[dict[str, Any]] | None:
        records = [r for _, r in signed.read(topics.AUDIT) if r["kind"] == "DECISION" and r["subject_id"] in forged_ids]
        return records if len(records) == len(forged_ids) else None

    for record in signed.eventually("an audit record per forged request", audited):
        assert json.loads(record["summary_json"])["reason_codes"] == ["unauthenticated"]
    decided = [r["request_id"] for name, r in signed.read(topics.DECISIONS) if r["request_id"] in forged_ids]
    assert sorted(decided) == sorted(forged_ids)

    # 4. Forged completions of the allowed request settle nothing: dead-lettered, naming why.
    rid = first["request_id"]
    signed.client(Credential(acme.key_id, secrets.token_hex(32))).complete(ACME, rid, MODEL, USAGE)
    unsigned.complete(ACME, rid, MODEL, USAGE)
    signed.client(globex).complete(ACME, rid, MODEL, USAGE)
    for client in signed.clients:
        client.flush()

    def dead() -> list[dict[str, Any]] | None:
        letters = [r for name, r in signed.read(topics.DEADLETTER)
                   if r["original_topic"] == signed.kafka.topic(topics.COMPLETIONS)]
        return letters if len(letters) == 3 else None

    letters = signed.eventually("three dead-lettered completions", dead)
    assert {d["error_code"] for d in letters} == {"unauthenticated"}
    assert all("completion refused" in d["error_message"] for d in letters)
    assert not [r for name, r in signed.read(topics.METERED) if r["request_id"] == rid]
    assert not [r for name, r in signed.read(topics.LEDGER) if name == "ReservationSettled" and r["request_id"] == rid]

    # ... and the tenant's own completion then settles it, once.
    good.complete(ACME, rid, MODEL, USAGE)
    good.flush()
    settled = signed.eventually("the real completion settles", lambda: [
        r for name, r in signed.read(topics.LEDGER) if name == "ReservationSettled" and r["request_id"] == rid] or None)
    assert len(settled) == 1 and settled[0]["actual_micro_usd"] > 0

    # 5. A tenant in OPTIONAL mode (migrating) takes unsigned requests, and still refuses a bad signature.
    assert signed.eventually("initech takes unsigned requests", allowed(unsigned, INITECH))
    bad = signed.client(Credential(acme.key_id, secrets.token_hex(32))).request(INITECH, HELLO, MODEL, 16)
    assert deny_reason(bad) == "unauthenticated"


def test_rotation_under_steady_traffic_loses_no_request(signed: Signed) -> None:
    signed.budget(ACME, 1_000)
    old = signed.issue(ACME, name="old")
    signed.mode(ACME, "REQUIRED")
    agent = signed.client(old)
    signed.eventually("acme allows its signed requests", allowed(agent, ACME))

    futures: list[DecisionFuture] = []
    stop = threading.Event()

    def traffic() -> None:  # about 50 requests a second, each signed by whatever credential is set then
        while not stop.is_set():
            futures.append(agent.submit(ACME, HELLO, MODEL, 16, request_id=f"rot-{uuid.uuid4().hex}"))
            time.sleep(0.02)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        time.sleep(2)
        new = signed.issue(ACME, name="new")
        agent.credential = new  # at once: a new key verifies before its record reaches the token-counter
        time.sleep(2)
        signed.revoke(ACME, old.key_id)
        revoked_at = time.monotonic()
        time.sleep(2)
    finally:
        stop.set()
        thread.join()
    decisions = [f.result(timeout=60) for f in futures]
    outcomes = {d["outcome"] for d in decisions}
    assert len(decisions) > 100 and outcomes == {"ALLOW"}, [d for d in decisions if d["outcome"] != "ALLOW"][:3]

    # The old key, once its revoke has reached the token-counter, is refused; the new one still works.
    stale = signed.client(old)
    signed.eventually("the revoked key is refused", lambda: True if deny_reason(
        stale.request(ACME, HELLO, MODEL, 16)) == "unauthenticated" else None, timeout_s=30)
    assert time.monotonic() - revoked_at < 30
    assert agent.request(ACME, HELLO, MODEL, 16)["outcome"] == "ALLOW"


def test_what_a_forger_sends_malformed_unreadable_or_off_partition_takes_no_request_id(signed: Signed) -> None:
    """Checked before the rest of the edge rule: a forger's malformed request, unreadable bytes under the
    tenant's key, or a well-signed request on another partition are `unauthenticated` (the gate cannot tell
    them the tenant's), never a request id's final outcome: the tenant's own requests under those ids pass."""
    signed.budget(ACME, 100)
    key = signed.issue(ACME)
    signed.mode(ACME, "REQUIRED")
    owner = signed.client(key)
    signed.eventually("acme allows its signed requests", allowed(owner, ACME))
    probe = signed.client()
    signed.eventually("acme requires signatures", lambda: True if deny_reason(
        probe.request(ACME, HELLO, MODEL, 16)) == "unauthenticated" else None)

    ids = {what: f"forged-{what}-{uuid.uuid4().hex[:8]}" for what in ("malformed", "unreadable", "off-partition")}
    producer = Producer(producer_config(signed.kafka.kafka_connection))
    topic = signed.kafka.topic(topics.REQUESTS)
    home = murmur2_partition(ACME.encode(), TEST_PARTITIONS)

    def request(request_id: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
        return {"request_id": request_id, "tenant_id": ACME, "workflow_id": "", "agent_id": "",
                "requested_model": MODEL, "messages": [{**m, "name": None} for m in messages], "tools_json": None,
                "max_output_tokens": 16, "priority": "NORMAL", "region": None, "max_cost_micro_usd": None,
                "labels": {}, "requested_at_ms": int(time.time() * 1000), "trace_context": {}, "signature": None}

    for value, request_id, partition in (
            (codec().encode("InvocationRequested", request(ids["malformed"], [])), ids["malformed"], home),
            (b"\xc3\x01not avro at all", ids["unreadable"], home),
            (codec().encode("InvocationRequested", sign("InvocationRequested", request(ids["off-partition"], HELLO),
                                                        key)), ids["off-partition"], (home + 1) % TEST_PARTITIONS)):
        producer.produce(topic, key=ACME.encode(), value=value, partition=partition,
                         headers=[("request_id", request_id.encode())])
    assert producer.flush(30) == 0

    def decided() -> dict[str, dict[str, Any]] | None:
        found = {r["request_id"]: r for _, r in signed.read(topics.DECISIONS) if r["request_id"] in ids.values()}
        return found if len(found) == len(ids) else None

    for what, decision in signed.eventually("a decision per forged request", decided).items():
        assert deny_reason(decision) == "unauthenticated", (what, decision)
    # The tenant's own requests under the same ids: decided on their merits, not as repeats or conflicts.
    for request_id in ids.values():
        decision = owner.request(ACME, HELLO, MODEL, 16, request_id=request_id)
        assert decision["outcome"] == "ALLOW", decision
