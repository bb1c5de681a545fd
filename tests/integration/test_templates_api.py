"""Prompt templates through the API on real PostgreSQL and Kafka: register (201, the record on prompt.templates
on the tenant's partition, keyed <tenant>/<id>@<version>), the same again (200, no second record), another
text or role (409), a text that cannot be a template (422), listing and reading (404 for a missing version),
the keys' reach, and two registrations at once; and the spend report by template, from ledger entries the
projector wrote."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.events import Usage
from ledgergate.partitioning import murmur2_partition
from ledgergate.services.api import templates as api_templates
from ledgergate.services.api.commands import CommandPublisher
from ledgergate.services.api.errors import ApiError
from ledgergate.services.api.templates import TemplateRegistry
from ledgergate.services.projector import sql
from ledgergate.services.projector.core import Batch
from ledgergate.shared.kafka.reader import read_to_end
from ledgergate.shared.ledger.entries import (
    CacheHitRecorded,
    LedgerEntry,
    ReservationPlaced,
    ReservationSettled,
    to_record,
)
from ledgergate.shared.settings import KafkaSettings
from tests.conftest import TEST_PARTITIONS
from tests.integration.apiharness import (  # noqa: F401  (fixtures)
    A,
    B,
    Keys,
    api_db_fixture,
    api_fixture,
    get_json,
    keys_fixture,
)

pytestmark = pytest.mark.integration
H = Keys.h
TEXT = "You answer questions about {product}. Be {tone}; {{literal}} braces stay."


def published(kafka: KafkaSettings) -> list[tuple[int, bytes, dict[str, Any]]]:
    """Every record on prompt.templates: (partition, key, decoded PromptTemplate), in partition order."""
    out = []
    for m in read_to_end(kafka.kafka_connection, kafka.topic(topics.TEMPLATES), list(range(TEST_PARTITIONS))):
        name, rec = codec().decode(m.value())
        assert name == "PromptTemplate"
        out.append((m.partition(), m.key(), rec))
    return out


def register(api: TestClient, token: str, tenant: str = A, expect: int = 201, **body: Any) -> dict[str, Any]:
    resp = api.post(f"/v1/tenants/{tenant}/templates", headers=H(token), json=body)
    assert resp.status_code == expect, resp.text
    return dict(resp.json())


def test_register_is_idempotent_immutable_and_lands_on_the_tenants_partition(
        api: TestClient, keys: Keys, kafka: KafkaSettings) -> None:
    made = register(api, keys.a_write, template_id="faq", version=1, text=TEXT)
    assert {k: v for k, v in made.items() if k not in ("registered_at_ms", "registered_by")} == {
        "tenant_id": A, "template_id": "faq", "version": 1, "ref": "faq@1", "role": "system", "text": TEXT,
        "variables": ["product", "tone"]}
    assert made["registered_by"].startswith("api:") and made["registered_at_ms"] > 0

    # The same version, text and role again: the one that exists, 200, and nothing produced.
    assert register(api, keys.a_write, expect=200, template_id="faq", version=1, text=TEXT, role="system") == made
    # Another text, or another role, under that version: immutable.
    changed = register(api, keys.a_write, expect=409, template_id="faq", version=1, text=TEXT + " Also.")
    assert changed["error"]["code"] == "conflict"
    message = changed["error"]["message"]
    assert "faq@1" in message and "text" in message and "version 2" in message
    other_role = register(api, keys.a_write, expect=409, template_id="faq", version=1, text=TEXT, role="user")
    assert "role" in other_role["error"]["message"] and "text" not in other_role["error"]["message"].split("(")[0]

    # A new version, by an admin key; the same id and version in another tenant is that tenant's own.
    v2 = register(api, keys.admin, template_id="faq", version=2, text="Hello {name}", role="developer")
    assert (v2["variables"], v2["role"]) == (["name"], "developer")
    register(api, keys.b_write, tenant=B, template_id="faq", version=1, text="globex's own")

    records = published(kafka)
    assert [(p, k) for p, k, _ in records if k.startswith(b"acme/")] == [
        (murmur2_partition(A.encode(), TEST_PARTITIONS), b"acme/faq@1"),
        (murmur2_partition(A.encode(), TEST_PARTITIONS), b"acme/faq@2")]  # one record per version: no repeat
    assert [(p, k) for p, k, _ in records if k.startswith(b"globex/")] == [
        (murmur2_partition(B.encode(), TEST_PARTITIONS), b"globex/faq@1")]
    rec = next(r for _, k, r in records if k == b"acme/faq@1")
    assert rec == {"tenant_id": A, "template_id": "faq", "version": 1, "role": "system", "text": TEXT,
                   "variables": ["product", "tone"], "registered_at_ms": made["registered_at_ms"],
                   "registered_by": made["registered_by"]}


def test_a_text_or_field_the_rule_refuses_is_422(api: TestClient, keys: Keys, kafka: KafkaSettings) -> None:
    bad = register(api, keys.a_write, expect=422, template_id="faq", version=1, text="{unclosed")
    assert bad["error"]["code"] == "invalid_request"
    assert bad["error"]["message"].startswith("body.text: ") and "lone '{'" in bad["error"]["message"]
    assert "Capital" in register(api, keys.a_write, expect=422, template_id="faq", version=1,
                                 text="Hi {Capital}")["error"]["message"]
    too_many = " ".join(f"{{v{i}}}" for i in range(65))
    assert "at most 64 variables" in register(api, keys.a_write, expect=422, template_id="faq", version=1,
                                              text=too_many)["error"]["message"]
    for body in ({"template_id": "has space", "version": 1, "text": "x"},
                 {"template_id": "", "version": 1, "text": "x"},
                 {"template_id": "faq", "version": 0, "text": "x"},
                 {"template_id": "faq", "version": 2**31, "text": "x"},
                 {"template_id": "faq", "version": "1", "text": "x"},
                 {"template_id": "faq", "version": 1, "text": ""},
                 {"template_id": "faq", "version": 1, "text": "nul \x00 here"},
                 {"template_id": "faq", "version": 1, "text": "\x1b[31mred"},  # a control character
                 {"template_id": "faq", "version": 1, "text": "a \u202e bidi override"},
                 {"template_id": "faq", "version": 1, "text": "x", "role": "assistant"},
                 {"template_id": "faq", "version": 1, "text": "x", "extra": 1},
                 {"version": 1, "text": "x"}):
        assert register(api, keys.a_write, expect=422, **body)["error"]["code"] == "invalid_request", body
    assert "template_id may hold only" in register(api, keys.a_write, expect=422, template_id="a/b", version=1,
                                                   text="x")["error"]["message"]
    assert "'\\x1b' at character 0" in register(api, keys.a_write, expect=422, template_id="faq", version=1,
                                              text="\x1b[31m")["error"]["message"]
    assert published(kafka) == []
    # Lines and tabs are a prompt's own: accepted.
    multi = register(api, keys.a_write, template_id="faq", version=1, text="Line one {x}\n\tLine two\r\n")
    assert multi["variables"] == ["x"]


def test_listing_reading_and_who_may(api: TestClient, keys: Keys) -> None:
    path = f"/v1/tenants/{A}/templates"
    assert get_json(api, keys.a_read, path) == {"items": [], "next_cursor": None}
    for template_id, version in (("support", 1), ("faq", 3), ("faq", 1), ("faq", 10)):
        register(api, keys.a_write, template_id=template_id, version=version, text=f"{template_id} v{version} {{x}}")
    register(api, keys.b_write, tenant=B, template_id="zeta", version=1, text="globex")

    listing = get_json(api, keys.a_read, path)
    assert [(t["template_id"], t["version"]) for t in listing["items"]] == [
        ("faq", 1), ("faq", 3), ("faq", 10), ("support", 1)]  # by id, then version as a number
    assert listing["next_cursor"] is None and {t["tenant_id"] for t in listing["items"]} == {A}
    assert listing["items"][0]["text"] == "faq v1 {x}" and listing["items"][0]["variables"] == ["x"]
    assert [t["version"] for t in get_json(api, keys.a_read, path, template_id="faq")["items"]] == [1, 3, 10]
    first = get_json(api, keys.a_read, path, limit=3)
    rest = get_json(api, keys.a_read, path, limit=3, cursor=first["next_cursor"])
    assert [t["ref"] for t in first["items"] + rest["items"]] == ["faq@1", "faq@3", "faq@10", "support@1"]
    assert rest["next_cursor"] is None
    assert api.get(path, headers=H(keys.a_read), params={"cursor": "garbage"}).status_code == 422

    one = get_json(api, keys.a_read, f"{path}/faq/3")
    assert (one["ref"], one["text"]) == ("faq@3", "faq v3 {x}")
    for missing in ("faq/2", "nope/1"):
        resp = api.get(f"{path}/{missing}", headers=H(keys.a_read))
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found", missing
    assert api.get(f"/v1/tenants/{B}/templates/zeta/1", headers=H(keys.a_read)).status_code == 403
    for bad in ("faq/0", "faq/x", f"faq/{2**31}", "has%20space/1"):
        assert api.get(f"{path}/{bad}", headers=H(keys.a_read)).status_code == 422, bad

    # Reading needs any key of the tenant; registering a write key of it, or an admin key.
    assert get_json(api, keys.admin, path)["items"] == listing["items"]
    assert api.get(path, headers=H(keys.b_read)).status_code == 403
    assert api.get(path).status_code == 401
    body = {"template_id": "faq", "version": 4, "text": "x"}
    assert register(api, keys.a_read, expect=403, **body)["error"]["code"] == "forbidden"
    assert register(api, keys.b_write, expect=403, **body)["error"]["code"] == "forbidden"


def test_a_tenant_holds_a_bounded_number_of_versions(api: TestClient, keys: Keys,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_templates, "MAX_VERSIONS_PER_TENANT", 2)
    for version in (1, 2):
        register(api, keys.a_write, template_id="faq", version=version, text="x")
    full = register(api, keys.a_write, expect=409, template_id="faq", version=3, text="x")
    assert "2 template versions" in full["error"]["message"]
    register(api, keys.a_write, expect=200, template_id="faq", version=2, text="x")  # an existing one still answers
    register(api, keys.b_write, tenant=B, template_id="faq", version=3, text="x")  # per tenant


def test_two_registrations_at_once_leave_one_record(kafka: KafkaSettings, api_db: str) -> None:
    """Two API instances registering one version at once: the tenant's lock makes them take turns, so one
    registers and the other sees it (the same text: not created; another text: 409), one record each."""
    registries = [TemplateRegistry(kafka, CommandPublisher(kafka, 10.0)) for _ in range(2)]
    outcomes: dict[str, list[Any]] = {"same": [], "other": []}
    barrier = threading.Barrier(2)

    def writer(i: int, case: str, version: int) -> None:
        text = "x" if case == "same" else f"x{i}"
        try:
            with psycopg.connect(api_db) as conn:
                barrier.wait()
                outcomes[case].append(registries[i].register(conn, A, "faq", version, text, "system", f"t{i}")[1])
        except ApiError as exc:
            outcomes[case].append(exc)

    try:
        for case, version in (("same", 1), ("other", 2)):
            threads = [threading.Thread(target=writer, args=(i, case, version)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        for r in registries:
            r.publisher.close()
    assert sorted(outcomes["same"]) == [False, True]
    assert sorted(type(o).__name__ for o in outcomes["other"]) == ["Conflict", "bool"] and True in outcomes["other"]
    assert [k for _, k, _ in published(kafka)] == [b"acme/faq@1", b"acme/faq@2"]


# --- spend by template ---------------------------------------------------------------------------------

NOW = 1_795_824_000_000  # 2026-11-28T00:00Z
PERIOD = "2026-11"


def _settled(tenant: str, rid: str, cost: int, template: str, *, model: str = "gpt-4o") -> list[LedgerEntry]:
    placed = ReservationPlaced(f"{rid}/reservation", tenant, PERIOD, NOW, rid, "wf", "a", model, model, "premium",
                               0, 9_000, 30, 500, "2026-11-01", 0, "NORMAL", None, NOW + 60_000, "s" * 64, NOW,
                               1_000_000, template=template)
    settled = ReservationSettled(f"{rid}/settlement", tenant, PERIOD, NOW + 5, rid, "wf", model, 9_000, cost,
                                 9_000 - cost, 0, Usage(30, 0, 40, 0), False, "2026-11-01")
    return [placed, settled]


def test_the_spend_report_groups_by_template(api: TestClient, api_db: str, keys: Keys) -> None:
    hit = CacheHitRecorded("h1/reservation", A, PERIOD, NOW + 10, "h1", "wf", "agent-1", "gpt-4o", "r0/cache",
                           "ab" * 32, 12, 7, 4_000, 0, "cd" * 32, NOW + 7, 1_000_000)
    entries = [*_settled(A, "r1", 5_000, "faq@1"), *_settled(A, "r2", 2_000, "faq@1", model="gpt-4o-mini"),
               *_settled(A, "r3", 700, "faq@2"), *_settled(A, "r4", 300, ""),
               # the same request id in another tenant, under a template: not acme's
               *_settled(B, "r4", 99_999, "faq@1"), hit]
    batch = Batch()
    for offset, entry in enumerate(entries):
        batch.consumed("ledger", 0, offset)
        batch.add_ledger(entry, to_record(entry)[1], 0, offset)
    with psycopg.connect(api_db, autocommit=True) as conn:
        sql.prepare(conn)
        sql.write(conn, "p", batch, {})
        # The projector keeps the whole record: the reservation's row holds its template.
        assert conn.execute("SELECT body ->> 'template' FROM ledger_entries WHERE tenant_id = %s "
                            "AND entry_type = 'ReservationPlaced' ORDER BY request_id", (A,)).fetchall() == [
            ("faq@1",), ("faq@1",), ("faq@2",), ("",)]
    path = f"/v1/tenants/{A}/reports/spend"
    body = get_json(api, keys.a_read, path, period=PERIOD, group_by="template")
    assert body["group_by"] == "template"
    assert [(r["key"], r["requests"], r["input_tokens"], r["spend_micro_usd"], r["cache_hits"], r["saved_micro_usd"])
            for r in body["rows"]] == [("(none)", 1, 30, 300, 0, 0), ("faq@1", 2, 60, 7_000, 0, 0),
                                       ("faq@2", 1, 30, 700, 0, 0)]
    # Hits name no template: they are in the totals only.
    assert (body["total_micro_usd"], body["cache_hits"], body["saved_micro_usd"]) == (8_000, 1, 4_000)
    csv_text = api.get(path, headers=H(keys.a_read),
                       params={"period": PERIOD, "group_by": "template", "format": "csv"}).text
    assert csv_text.splitlines()[1:] == ["(none),1,30,0,40,0,300,0,0", "faq@1,2,60,0,80,0,7000,0,0",
                                         "faq@2,1,30,0,40,0,700,0,0"]
    assert [r["key"] for r in get_json(api, keys.b_read, f"/v1/tenants/{B}/reports/spend", period=PERIOD,
                                       group_by="template")["rows"]] == ["faq@1"]
