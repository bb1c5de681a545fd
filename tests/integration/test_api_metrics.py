"""The API's GET /metrics (its own app): requests counted by route template, never by raw path."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.apiharness import A, Keys, api_db_fixture, api_fixture, keys_fixture  # noqa: F401

pytestmark = pytest.mark.integration


def _http_requests(api: TestClient) -> dict[tuple[str, str, str], float]:
    resp = api.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            if s.name == "ledgergate_http_requests_total":
                found[(s.labels["method"], s.labels["route"], s.labels["status"])] = s.value
    return found


def test_api_metrics_count_requests_by_route_template_and_status(api: TestClient, keys: Keys) -> None:
    before = _http_requests(api)
    for _ in range(3):
        assert api.get(f"/v1/tenants/{A}/balances", headers=Keys.h(keys.a_read)).status_code == 200
    assert api.get(f"/v1/tenants/{A}/balances").status_code == 401
    assert api.get("/no/such/route").status_code == 404
    after = _http_requests(api)

    def delta(key: tuple[str, str, str]) -> float:
        return after.get(key, 0) - before.get(key, 0)

    template = "/v1/tenants/{tenant_id}/balances"
    assert delta(("GET", template, "200")) == 3
    assert delta(("GET", template, "401")) == 1
    assert delta(("GET", "unmatched", "404")) == 1
    assert not any(A in route for _, route, _ in after)  # the tenant id never becomes a label value
    text = api.get("/metrics").text
    assert A not in text  # unauthenticated like /healthz: no tenant id anywhere in it
    assert "ledgergate_http_request_duration_seconds_bucket" in text
    assert "ledgergate_process_resident_memory_bytes" in text
