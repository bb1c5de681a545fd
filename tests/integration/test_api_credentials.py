"""Signing credentials through the API on real PostgreSQL and Kafka: issue (the secret once, derived, never
stored or published), list, revoke, the auth mode, the change history; each change published as the
tenant's whole state on tenant.credentials, in change order, and rolled back when Kafka refuses it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.partitioning import murmur2_partition
from ledgergate.services.api import credentials
from ledgergate.services.api.app import create_app
from ledgergate.services.api.commands import CommandPublisher
from ledgergate.services.api.errors import Unavailable
from ledgergate.shared.credentials import MAX_LIVE_KEYS, TenantCredentials, derive_secret
from ledgergate.shared.kafka.reader import read_to_end
from ledgergate.shared.settings import KafkaSettings
from ledgergate.signing import key_sequence
from tests.integration.apiharness import (  # noqa: F401  (fixtures)
    MASTER_KEY,
    A,
    B,
    Keys,
    api_db_fixture,
    api_fixture,
    api_settings,
    keys_fixture,
    wait_ready,
)

pytestmark = pytest.mark.integration
H = Keys.h
MASTER = MASTER_KEY


@pytest.fixture(name="capi")
def capi_fixture(api: TestClient) -> TestClient:
    return api  # the harness's API has a master key


@pytest.fixture(name="keyless")
def keyless_fixture(kafka: KafkaSettings, api_db: str) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings(kafka, api_db, credential_master_key=None))) as client:
        wait_ready(client)
        yield client


def published(kafka: KafkaSettings) -> list[tuple[int, bytes, bytes, TenantCredentials]]:
    """Every record on tenant.credentials: (partition, key, raw value, decoded state), in partition order."""
    out = []
    for m in read_to_end(kafka.kafka_connection, kafka.topic(topics.CREDENTIALS), list(range(6))):
        name, rec = codec().decode(m.value())
        assert name == "TenantCredentials"
        out.append((m.partition(), m.key(), m.value(), TenantCredentials.from_record(rec)))
    return out


def issue(api: TestClient, token: str, tenant: str = A, **body: Any) -> dict[str, Any]:
    resp = api.post(f"/v1/tenants/{tenant}/credentials", headers=H(token), json=body)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def test_issue_returns_the_derived_secret_once_and_publishes_the_state_without_it(
        capi: TestClient, keys: Keys, kafka: KafkaSettings, api_db: str) -> None:
    first = issue(capi, keys.a_write, name="ci runner")
    scoped = issue(capi, keys.a_write, agent_id="bot-7")
    assert key_sequence(first["key_id"]) == 1 and key_sequence(scoped["key_id"]) == 2
    assert first["secret"] == derive_secret(MASTER.encode(), A, "", first["key_id"]).hex()
    assert scoped["secret"] == derive_secret(MASTER.encode(), A, "bot-7", scoped["key_id"]).hex()
    assert (first["agent_id"], scoped["agent_id"], first["name"], first["version"], scoped["version"]) == (
        None, "bot-7", "ci runner", 1, 2)

    listing = capi.get(f"/v1/tenants/{A}/credentials", headers=H(keys.a_read))
    assert listing.status_code == 200 and "secret" not in listing.text
    assert first["secret"] not in listing.text
    body = listing.json()
    assert (body["mode"], body["version"]) == (None, 2)
    assert [(k["key_id"], k["agent_id"]) for k in body["items"]] == [(first["key_id"], None),
                                                                     (scoped["key_id"], "bot-7")]
    # Stored nowhere: no table holds a secret, in any form the tests can think of.
    with psycopg.connect(api_db) as conn:
        dump = str(conn.execute("SELECT json_agg(c) FROM credentials c").fetchone())
    assert first["secret"] not in dump and scoped["secret"] not in dump

    records = published(kafka)
    assert [r[3].version for r in records] == [1, 2]
    partition, key, value, state = records[-1]
    assert (partition, key) == (murmur2_partition(A.encode(), 6), A.encode())  # co-partitioned with the tenant
    assert (state.tenant_id, state.mode, state.issued_through, state.change.kind, state.change.key_id) == (
        A, None, 2, "ISSUED", scoped["key_id"])
    assert [(k.key_id, k.agent_id) for k in state.keys] == [(first["key_id"], ""), (scoped["key_id"], "bot-7")]
    for secret in (first["secret"], scoped["secret"]):
        assert secret.encode() not in value and bytes.fromhex(secret) not in value


def test_revoke_mode_and_history(capi: TestClient, keys: Keys, kafka: KafkaSettings) -> None:
    one, two = issue(capi, keys.a_write), issue(capi, keys.a_write)
    path = f"/v1/tenants/{A}/credentials"
    assert capi.delete(f"{path}/{one['key_id']}", headers=H(keys.a_write)).status_code == 204
    again = capi.delete(f"{path}/{one['key_id']}", headers=H(keys.a_write))
    assert again.status_code == 404 and one["key_id"] in again.json()["error"]["message"]
    assert capi.delete(f"{path}/lgc_99_0123456789abcdef", headers=H(keys.a_write)).status_code == 404
    assert capi.delete(f"{path}/not-a-key", headers=H(keys.a_write)).status_code == 422

    for mode in ("REQUIRED", None, "OPTIONAL"):
        resp = capi.put(f"{path}/mode", headers=H(keys.a_write), json={"mode": mode})
        assert resp.status_code == 200, resp.text
        assert resp.json()["mode"] == mode
    for bad in ({"mode": "MAYBE"}, {"mode": "required"}, {}, {"mode": "REQUIRED", "extra": 1}):
        assert capi.put(f"{path}/mode", headers=H(keys.a_write), json=bad).status_code == 422, bad

    states = [r[3] for r in published(kafka)]
    assert [(s.version, s.change.kind, s.mode) for s in states] == [
        (1, "ISSUED", None), (2, "ISSUED", None), (3, "REVOKED", None), (4, "MODE_SET", "REQUIRED"),
        (5, "MODE_SET", None), (6, "MODE_SET", "OPTIONAL")]
    assert [k.key_id for k in states[-1].keys] == [two["key_id"]] and states[-1].issued_through == 2

    page = capi.get(f"{path}/events", headers=H(keys.a_read), params={"limit": 4}).json()
    assert [(e["version"], e["kind"]) for e in page["items"]] == [(6, "MODE_SET"), (5, "MODE_SET"),
                                                                  (4, "MODE_SET"), (3, "REVOKED")]
    assert page["items"][0]["by"].startswith("api:") and page["items"][3]["key_id"] == one["key_id"]
    rest = capi.get(f"{path}/events", headers=H(keys.a_read), params={"cursor": page["next_cursor"]}).json()
    assert [e["version"] for e in rest["items"]] == [2, 1] and rest["next_cursor"] is None


def test_scoping_bounds_and_bad_input(capi: TestClient, keys: Keys) -> None:
    path = f"/v1/tenants/{A}/credentials"
    for token, tenant, status in ((keys.a_read, A, 403), (keys.a_write, B, 403), (keys.b_write, A, 403)):
        resp = capi.post(f"/v1/tenants/{tenant}/credentials", headers=H(token), json={})
        assert resp.status_code == status, resp.text
    assert capi.get(f"/v1/tenants/{B}/credentials", headers=H(keys.a_read)).status_code == 403
    assert capi.post(path, json={}).status_code == 401
    issue(capi, keys.admin, tenant=B)  # an admin reaches every tenant
    for bad in ({"agent_id": "has space"}, {"agent_id": ""}, {"name": "x" * 129}, {"name": "nul\x00"},
                {"secret": "mine"}, {"agent_id": "a" * 129}):
        resp = capi.post(path, headers=H(keys.a_write), json=bad)
        assert resp.status_code == 422, (bad, resp.text)
    made = [issue(capi, keys.a_write) for _ in range(MAX_LIVE_KEYS)]
    full = capi.post(path, headers=H(keys.a_write), json={})
    assert full.status_code == 409 and "revoke one first" in full.json()["error"]["message"]
    assert capi.delete(f"{path}/{made[0]['key_id']}", headers=H(keys.a_write)).status_code == 204
    assert key_sequence(issue(capi, keys.a_write)["key_id"]) == MAX_LIVE_KEYS + 1  # sequences are never reused


def test_without_a_master_key_nothing_is_issued(keyless: TestClient, keys: Keys) -> None:
    api = keyless
    resp = api.post(f"/v1/tenants/{A}/credentials", headers=H(keys.a_write), json={})
    assert resp.status_code == 503 and "LEDGERGATE_CREDENTIAL_MASTER_KEY" in resp.json()["error"]["message"]
    listing = api.get(f"/v1/tenants/{A}/credentials", headers=H(keys.a_read)).json()
    assert listing == {"tenant_id": A, "mode": None, "version": 0, "items": []}
    # The mode needs no master key (a tenant can be told to require signatures before keys exist).
    assert api.put(f"/v1/tenants/{A}/credentials/mode", headers=H(keys.a_write),
                   json={"mode": "REQUIRED"}).status_code == 200


def test_concurrent_changes_of_one_tenant_publish_in_their_order(kafka: KafkaSettings, api_db: str) -> None:
    """Two writers at once (two API instances, in effect): the row lock serialises them, and each waits
    for Kafka's acknowledgement before it releases it, so the partition holds versions 1..N in order."""
    publisher = CommandPublisher(kafka, 10.0)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            with psycopg.connect(api_db) as conn:
                for _ in range(n):
                    credentials.issue(conn, publisher, MASTER.encode(), A, "", "", "test")
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=writer, args=(5,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        publisher.close()
    assert errors == []
    states = [r[3] for r in published(kafka)]
    assert [s.version for s in states] == list(range(1, 11))
    assert [s.issued_through for s in states] == list(range(1, 11))
    assert [len(s.keys) for s in states] == list(range(1, 11))


class _Refusing(CommandPublisher):
    def publish_credentials(self, state: TenantCredentials) -> None:
        raise Unavailable("Kafka is away")


def test_a_change_kafka_refuses_is_rolled_back(kafka: KafkaSettings, api_db: str) -> None:
    publisher = _Refusing(kafka, 1.0)
    try:
        with psycopg.connect(api_db) as conn:
            with pytest.raises(Unavailable):
                credentials.issue(conn, publisher, MASTER.encode(), A, "", "", "test")
            assert conn.execute("SELECT count(*) FROM credentials").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM credential_events").fetchone() == (0,)
            row = conn.execute("SELECT version, issued_through FROM credential_tenants").fetchall()
            assert row in ([], [(0, 0)])
    finally:
        publisher.close()
