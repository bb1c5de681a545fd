"""The API's edges on real PostgreSQL + Kafka: health, authentication, 401/403/404/413/422, API keys."""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.integration.apiharness import A, B, Keys, api_db_fixture, api_fixture, keys_fixture  # noqa: F401

pytestmark = pytest.mark.integration
H = Keys.h


def _error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    assert body["error"]["request_id"] == resp.headers["x-request-id"]
    return body["error"]


def test_health_readiness_and_docs(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"postgres": "ok", "kafka": "ok"}
    assert api.get("/docs").status_code == 200
    paths = api.get("/openapi.json").json()["paths"]
    assert "/v1/tenants/{tenant_id}/balances" in paths and "/v1/api-keys" in paths
    # The caller's request id is echoed when it looks like one, replaced when it does not.
    assert api.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    assert api.get("/healthz", headers={"X-Request-ID": "bad id\n"}).headers["x-request-id"] != "bad id\n"


def test_missing_malformed_unknown_and_revoked_keys_are_401(api: TestClient, keys: Keys) -> None:
    path = f"/v1/tenants/{A}/balances"
    err = _error(api.get(path), 401, "unauthorized")
    assert "missing API key" in err["message"]
    assert api.get(path).headers["www-authenticate"] == "Bearer"
    for headers in ({"Authorization": "Bearer nope"}, {"X-API-Key": "lgk_000000000000_" + "x" * 43},
                    {"Authorization": f"Basic {keys.a_read}"}, {"Authorization": "Bearer "}):
        _error(api.get(path, headers=headers), 401, "unauthorized")
    assert api.get(path, headers={"X-API-Key": keys.a_read}).status_code == 200
    assert api.get(path, headers=H(keys.a_read)).status_code == 200
    created = api.post("/v1/api-keys", headers=H(keys.admin), json={"tenant_id": A}).json()
    assert api.get(path, headers=H(created["key"])).status_code == 200
    assert api.delete(f"/v1/api-keys/{created['key_id']}", headers=H(keys.admin)).status_code == 204
    _error(api.get(path, headers=H(created["key"])), 401, "unauthorized")
    _error(api.delete(f"/v1/api-keys/{created['key_id']}", headers=H(keys.admin)), 404, "not_found")


def test_tenant_keys_are_scoped_and_read_only_by_default(api: TestClient, keys: Keys) -> None:
    _error(api.get(f"/v1/tenants/{B}/balances", headers=H(keys.a_read)), 403, "forbidden")
    _error(api.get(f"/v1/tenants/{B}/balances", headers=H(keys.a_write)), 403, "forbidden")
    body = {"limit_micro_usd": 1_000_000}
    err = _error(api.post(f"/v1/tenants/{A}/budgets", headers=H(keys.a_read), json=body), 403, "forbidden")
    assert "read-only" in err["message"]
    assert api.post(f"/v1/tenants/{A}/budgets", headers=H(keys.a_write), json=body).status_code == 202
    assert api.post(f"/v1/tenants/{B}/budgets", headers=H(keys.admin), json=body).status_code == 202
    for method, path in (("GET", "/v1/tenants"), ("GET", "/v1/api-keys"), ("POST", "/v1/api-keys"),
                         ("DELETE", "/v1/api-keys/0123456789ab")):
        _error(api.request(method, path, headers=H(keys.a_write), json={"tenant_id": A}), 403, "forbidden")


@pytest.mark.parametrize(("path", "body", "where"), [
    ("budgets", {"limit_micro_usd": 10**15 + 1}, "limit_micro_usd"),
    ("budgets", {"limit_micro_usd": -1}, "limit_micro_usd"),
    ("budgets", {"limit_micro_usd": 1.5}, "limit_micro_usd"),
    ("budgets", {"limit_micro_usd": "100"}, "limit_micro_usd"),
    ("budgets", {}, "limit_micro_usd"),
    ("budgets", {"limit_micro_usd": 1, "scope": "WORKFLOW"}, "workflow_id"),
    ("budgets", {"limit_micro_usd": 1, "workflow_id": "wf"}, "workflow_id"),
    ("budgets", {"limit_micro_usd": 1, "scope": "REQUEST", "workflow_id": "wf"}, "scope"),
    ("budgets", {"limit_micro_usd": 1, "colour": "red"}, "colour"),
    ("budgets", {"limit_micro_usd": 1, "scope": "REGION"}, "region"),
    ("budgets", {"limit_micro_usd": 1, "scope": "REGION", "region": "eu west"}, "region"),
    ("budgets", {"limit_micro_usd": 1, "scope": "CANARY", "workflow_id": "wf"}, "canary"),
    ("budgets", {"limit_micro_usd": 1, "reason": "x" * 257}, "reason"),
    ("budgets/raise", {"amount_micro_usd": 0}, "amount_micro_usd"),
    ("budgets/lower", {"amount_micro_usd": 10**16}, "amount_micro_usd"),
    ("credits", {"amount_micro_usd": 1, "scope": "WORKFLOW", "workflow_id": "x" * 129}, "workflow_id"),
])
def test_invalid_command_bodies_are_422(api: TestClient, keys: Keys, path: str, body: dict[str, Any],
                                        where: str) -> None:
    err = _error(api.post(f"/v1/tenants/{A}/{path}", headers=H(keys.admin), json=body), 422, "invalid_request")
    assert where in err["message"] or any(where in ".".join(d["loc"]) for d in err["details"]), err
    assert all("input" not in d for d in err["details"])  # the caller's payload is never echoed


def test_invalid_queries_paths_and_policies_are_422(api: TestClient, keys: Keys) -> None:
    admin = H(keys.admin)
    for path in (f"/v1/tenants/{A}/ledger?limit=0", f"/v1/tenants/{A}/ledger?limit=501",
                 f"/v1/tenants/{A}/ledger?cursor=bm9wZQ", f"/v1/tenants/{A}/ledger?cursor=WzEsMl0&offset=3",
                 f"/v1/tenants/{A}/decisions?outcome=MAYBE", f"/v1/tenants/{A}/reports/spend?group_by=agent",
                 f"/v1/tenants/{A}/balances?period=2024-13", "/v1/tenants/bad%20tenant/balances",
                 f"/v1/tenants/{'t' * 129}/balances", f"/v1/tenants/{A}/reports/spend?from_ms=10&to_ms=5"):
        _error(api.get(path, headers=admin), 422, "invalid_request")
    err = _error(api.put(f"/v1/tenants/{A}/policy", headers=admin, json={"max_output_tokens": 0}), 422,
                 "invalid_request")
    assert "max_output_tokens" in err["message"]
    err = _error(api.put(f"/v1/tenants/{A}/policy", headers=admin, json={"allowed_modles": ["x"]}), 422,
                 "invalid_request")
    assert "allowed_modles" in err["message"]
    err = _error(api.put(f"/v1/tenants/{A}/policy", headers=admin, json={"anomaly": {"ewma_alpha": 2}}), 422,
                 "invalid_request")
    assert "anomaly.ewma_alpha" in err["message"], err
    _error(api.put(f"/v1/tenants/{A}/policy", headers=admin, json=["not", "an", "object"]), 422, "invalid_request")
    _error(api.post(f"/v1/tenants/{A}/budgets", headers={**admin, "content-type": "application/json"},
                    content=b"{not json"), 422, "invalid_request")


def test_unknown_routes_and_methods_answer_json(api: TestClient, keys: Keys) -> None:
    _error(api.get("/v1/nothing-here", headers=H(keys.admin)), 404, "not_found")
    _error(api.delete(f"/v1/tenants/{A}/balances", headers=H(keys.admin)), 405, "method_not_allowed")


def test_bodies_over_the_limit_are_413(api: TestClient, keys: Keys) -> None:
    big = {"limit_micro_usd": 1, "reason": "x" * (70 * 1024)}
    _error(api.post(f"/v1/tenants/{A}/budgets", headers=H(keys.admin), json=big), 413, "payload_too_large")

    def chunks() -> Any:  # no Content-Length: the limit must cut the stream, not trust a header
        for _ in range(100):
            yield b"x" * 1024

    _error(api.put(f"/v1/tenants/{A}/policy", headers={**H(keys.admin), "content-type": "application/json"},
                   content=chunks()), 413, "payload_too_large")
    # Unauthenticated callers are refused before their body is read too.
    _error(api.post(f"/v1/tenants/{A}/budgets", json=big), 413, "payload_too_large")


def test_api_keys_are_shown_once_and_stored_as_hashes(api: TestClient, keys: Keys, api_db: str) -> None:
    resp = api.post("/v1/api-keys", headers=H(keys.admin), json={"tenant_id": B, "can_write": True, "name": "ops"})
    assert resp.status_code == 201, resp.text
    created = resp.json()
    assert created["key"].startswith("lgk_") and created["tenant_id"] == B and created["can_write"]
    listed = api.get("/v1/api-keys", headers=H(keys.admin), params={"tenant_id": B}).json()
    assert created["key_id"] in {k["key_id"] for k in listed} and all("key" not in k for k in listed)
    with psycopg.connect(api_db) as conn:
        stored = conn.execute("SELECT key_sha256 FROM api_keys WHERE key_id = %s", (created["key_id"],)).fetchone()
        dump = str(conn.execute("SELECT array_agg(t::text) FROM api_keys t").fetchone())
    assert bytes(stored[0]) == hashlib.sha256(created["key"].encode()).digest()
    assert created["key"] not in dump
    admin_key = api.post("/v1/api-keys", headers=H(keys.admin), json={"admin": True}).json()
    assert admin_key["admin"] and admin_key["tenant_id"] is None
    assert api.get("/v1/tenants", headers=H(admin_key["key"])).status_code == 200
    for bad in ({"tenant_id": A, "admin": True}, {}, {"tenant_id": "no spaces"}, {"tenant_id": A, "name": "n" * 129}):
        _error(api.post("/v1/api-keys", headers=H(keys.admin), json=bad), 422, "invalid_request")
