"""Invariant 5, tenant isolation, over EVERY route the app serves: enumerated from the app itself, so a route
added later is covered (or fails the classification below) without anyone remembering this test."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.shared.kafka.reader import read_to_end
from ledgergate.shared.settings import KafkaSettings
from tests.integration.apiharness import (  # noqa: F401  (fixtures)
    A,
    B,
    Keys,
    api_db_fixture,
    api_fixture,
    keys_fixture,
    seed,
)

pytestmark = pytest.mark.integration
H = Keys.h
# Plausible values for the other path parameters, so only the tenant can make the answer differ.
PATH_VALUES = {"request_id": "req-shared", "key_id": "0123456789ab",  # req-shared: both tenants have it
               "credential_id": "lgc_1_0123456789abcdef",  # seeded below for both tenants
               "template_id": "faq", "version": "1"}  # B's POST below registers it before B's GET reads it
# A valid body per write route: the refusal must come from the tenant check, not from validation.
BODIES = {"budgets": {"limit_micro_usd": 1}, "raise": {"amount_micro_usd": 1}, "lower": {"amount_micro_usd": 1},
          "credits": {"amount_micro_usd": 1}, "void": {}, "policy": {"max_output_tokens": 100},
          "credentials": {}, "mode": {"mode": "REQUIRED"},
          "templates": {"template_id": "faq", "version": 1, "text": "Hello {name}"}}
# The dashboard's page is static (its figures come from the tenant routes, with the key typed into it).
# /metrics, like /healthz, is for the scraper: the API's families are labelled by route template, never a
# tenant (tests/integration/test_api_metrics.py checks no tenant id is in it).
PUBLIC = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
          "/dashboard", "/dashboard/"}
ADMIN_ONLY = {("GET", "/v1/tenants"), ("GET", "/v1/api-keys"), ("POST", "/v1/api-keys"),
              ("DELETE", "/v1/api-keys/{key_id}")}
# Not under /v1/tenants/{tenant_id}: scoped by the key's own tenant instead (another tenant's id is a 404).
PRINCIPAL_SCOPED = {("GET", "/v1/decisions/{request_id}")}
# About the calling key itself, nothing else.
SELF = {("GET", "/v1/whoami")}


def _routes(client: TestClient) -> list[tuple[str, str]]:
    app: Any = client.app
    found = []
    for route in iter_route_contexts(app.routes):
        for method in sorted((route.methods or set()) - {"HEAD"}):
            found.append((method, route.path))
    return found


def _fill(path: str, tenant: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: tenant if m.group(1) == "tenant_id" else PATH_VALUES[m.group(1)], path)


def _body(path: str) -> Any:
    return BODIES.get(path.rstrip("/").rsplit("/", 1)[-1])


def _commands(kafka: KafkaSettings) -> list[dict[str, Any]]:
    return [codec().decode(m.value())[1]
            for m in read_to_end(kafka.kafka_connection, kafka.topic(topics.COMMANDS), list(range(6)))]


def test_every_route_is_classified(api: TestClient) -> None:
    for method, path in _routes(api):
        assert (path in PUBLIC or "{tenant_id}" in path or (method, path) in ADMIN_ONLY
                or (method, path) in PRINCIPAL_SCOPED or (method, path) in SELF), (
            f"{method} {path}: how is this route tenant-isolated?")


def test_tenant_b_cannot_reach_tenant_a_through_any_route(api: TestClient, api_db: str, keys: Keys,
                                                          kafka: KafkaSettings) -> None:
    seed(api_db)
    with psycopg.connect(api_db) as conn:  # a live credential each, so B's own revoke below has one to revoke
        for tenant in (A, B):
            conn.execute("INSERT INTO credential_tenants (tenant_id, issued_through, updated_at_ms) VALUES (%s, 1, 0)",
                         (tenant,))
            conn.execute("INSERT INTO credentials (tenant_id, key_id, sequence, created_at_ms, created_by) "
                         "VALUES (%s, %s, 1, 0, 'seed')", (tenant, PATH_VALUES["credential_id"]))
    routes = _routes(api)
    tenant_routes = [(m, p) for m, p in routes if "{tenant_id}" in p]
    assert len(tenant_routes) >= 18, tenant_routes  # 9 writes, 9 reads at the time of writing
    # The same requests on B's own tenant succeed (so 403 below is the tenant check, not a broken request).
    for method, path in tenant_routes:
        resp = api.request(method, _fill(path, B), headers=H(keys.b_write), json=_body(path))
        assert 200 <= resp.status_code < 300, f"{method} {path}: {resp.status_code} {resp.text}"
    commands_before = len(_commands(kafka))
    a_marks = ("acme", "wf-b", "req-3", "100000000", "=HYPERLINK")
    for key in (keys.b_read, keys.b_write):
        for method, path in tenant_routes:
            for variant in (_fill(path, A), _fill(path, A) + "?tenant_id=globex"):
                resp = api.request(method, variant, headers=H(key), json=_body(path))
                assert resp.status_code == 403, f"{method} {variant}: {resp.status_code} {resp.text}"
                assert resp.json()["error"]["code"] == "forbidden"
                leaked = [m for m in a_marks if m in resp.text.replace(f"tenant {A!r}", "")]
                assert not leaked, f"{method} {variant} leaked {leaked}: {resp.text}"
        for method, path in sorted(ADMIN_ONLY):
            resp = api.request(method, _fill(path, A), headers=H(key), json={"tenant_id": B})
            assert resp.status_code == 403, f"{method} {path}: {resp.status_code}"
        for method, path in PRINCIPAL_SCOPED:
            for rid in ("req-3", "req-2"):  # acme's; globex has no such request ids
                resp = api.request(method, path.replace("{request_id}", rid), headers=H(key))
                assert resp.status_code == 404 and A not in resp.text, resp.text
                resp = api.request(method, path.replace("{request_id}", rid), headers=H(key),
                                   params={"tenant_id": A})
                assert resp.status_code == 404 and A not in resp.text, resp.text
        for method, path in SELF:
            resp = api.request(method, path, headers=H(key))
            assert resp.status_code == 200 and resp.json()["tenant_id"] == B and A not in resp.text, resp.text
    # Not one forbidden write reached budget.commands, and B's accepted ones carry B only.
    commands = _commands(kafka)
    assert len(commands) == commands_before
    assert {c["tenant_id"] for c in commands} == {B}
    # Nor any credential change: every state on tenant.credentials is B's.
    states = [codec().decode(m.value())[1]
              for m in read_to_end(kafka.kafka_connection, kafka.topic(topics.CREDENTIALS), list(range(6)))]
    assert states and {s["tenant_id"] for s in states} == {B}
    # Nor any template: every record on prompt.templates is B's.
    registered = [codec().decode(m.value())[1]
                  for m in read_to_end(kafka.kafka_connection, kafka.topic(topics.TEMPLATES), list(range(6)))]
    assert registered and {t["tenant_id"] for t in registered} == {B}
