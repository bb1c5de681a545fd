"""The dashboard's JSON against the API's other routes on a seeded read model (real PostgreSQL): every
figure equals what the balances, spend report, alerts, decisions and ledger routes answer; tenant keys
reach their own tenant only; the page and its assets are served from the package with a strict CSP.
The browser test is tests/e2e/test_dashboard.py."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ledgergate.services.api.dashboard import runway
from tests.integration.apiharness import (  # noqa: F401  (fixtures)
    A,
    B,
    Keys,
    api_db_fixture,
    api_fixture,
    get_json,
    keys_fixture,
)
from tests.integration.dashboardseed import B_SPEND, seed

pytestmark = pytest.mark.integration
H = Keys.h


@pytest.fixture(name="seeded")
def seeded_fixture(api: TestClient, api_db: str) -> TestClient:
    seed(api_db)
    return api


_get = get_json


def percentile_disc(values: list[int], p: float) -> int:
    """PostgreSQL's percentile_disc: the first value whose cumulative share reaches p."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def expected_from_routes(client: TestClient, key: str, tenant: str, dash: dict[str, Any]) -> dict[str, Any]:
    """The dashboard's figures, rebuilt from the API's other routes alone (narrowed to the dashboard's
    workflow where it is)."""
    wf = {"workflow": dash["workflow_id"]} if dash["workflow_id"] else {}
    balances = _get(client, key, f"/v1/tenants/{tenant}/balances")
    by_model = _get(client, key, f"/v1/tenants/{tenant}/reports/spend", group_by="model", **wf)["rows"]
    by_workflow = _get(client, key, f"/v1/tenants/{tenant}/reports/spend", group_by="workflow")["rows"]
    alerts = _get(client, key, f"/v1/tenants/{tenant}/alerts", limit=10)["items"]
    window = {"from_ms": dash["window_from_ms"], "to_ms": dash["window_to_ms"]}
    decisions = _get(client, key, f"/v1/tenants/{tenant}/decisions", limit=500, **window, **wf)["items"]
    placed = {e["entry_id"]: e["body"].get("tier") or "" for e in _get(
        client, key, f"/v1/tenants/{tenant}/ledger", limit=500, entry_type="ReservationPlaced")["items"]}
    bucket_ms = dash["timeline"]["bucket_ms"]
    series = {o: [0] * 24 for o in ("ALLOW", "DOWNGRADE", "DENY", "THROTTLE", "CACHE_HIT")}
    for d in decisions:
        series[d["outcome"]][(d["decided_at_ms"] - dash["window_from_ms"]) // bucket_ms] += 1
    bound = Counter((d["outcome"], d["binding_scope"] or "", d["reason_codes"][-1]) for d in decisions
                    if d["outcome"] in ("DENY", "THROTTLE", "DOWNGRADE"))
    latencies: dict[str, list[int]] = {}
    for d in decisions:
        tier = placed.get(d["ledger_entry_id"], "")
        latencies.setdefault(tier, []).append(d["decided_at_ms"] - d["requested_at_ms"])
    days = balances["days_elapsed"]
    return {
        "budgets": [{**b, "days_left": runway(b["remaining_micro_usd"], b["burn_rate_micro_usd_per_day"],
                                              dash["generated_at_ms"])[0]} for b in balances["items"]],
        "tokens": {r["key"]: (r["requests"], r["input_tokens"], r["output_tokens"], r["spend_micro_usd"],
                              r["input_tokens"] // days) for r in by_workflow},
        "top_models": [(r["key"], r["spend_micro_usd"]) for r in sorted(by_model, key=lambda r: (-r["spend_micro_usd"],
                                                                                              r["key"]))],
        "series": series,
        "bound": sorted(((o, s, r, n) for (o, s, r), n in bound.items()), key=lambda x: (-x[3], x[0], x[1], x[2])),
        "latency": {t: (len(v), percentile_disc(v, 0.5), percentile_disc(v, 0.95), max(v))
                    for t, v in latencies.items()},
        "alerts": alerts,
    }


def test_dashboard_figures_equal_the_other_routes(seeded: TestClient, keys: Keys) -> None:
    for key, tenant, workflow in ((keys.a_read, A, None), (keys.admin, A, None), (keys.admin, B, None),
                                  (keys.a_read, A, "wf-b"), (keys.a_read, A, "wf-none")):
        dash = _get(seeded, key, f"/v1/tenants/{tenant}/dashboard", **({"workflow": workflow} if workflow else {}))
        want = expected_from_routes(seeded, key, tenant, dash)
        assert dash["tenant_id"] == tenant and dash["window_h"] == 24 and dash["workflow_id"] == workflow
        assert [{k: v for k, v in b.items() if k != "runs_out_on"} for b in dash["budgets"]] == want["budgets"]
        assert {t["workflow_id"]: (t["requests"], t["input_tokens"], t["output_tokens"], t["spend_micro_usd"],
                                   t["input_tokens_per_day"]) for t in dash["tokens"]} == want["tokens"]
        assert [(m["model"], m["spend_micro_usd"]) for m in dash["top_models"]] == want["top_models"]
        assert dash["timeline"]["series"] == want["series"]
        assert dash["timeline"]["totals"] == {o: sum(c) for o, c in want["series"].items()}
        assert [(b["outcome"], b["binding_scope"], b["reason"], b["decisions"]) for b in dash["bound"]] == want["bound"]
        assert {r["tier"]: (r["decisions"], r["p50_ms"], r["p95_ms"], r["max_ms"]) for r in dash["latency"]} == (
            want["latency"])
        assert dash["alerts"] == want["alerts"]


def test_dashboard_seeded_values(seeded: TestClient, keys: Keys) -> None:
    """The seed's own numbers, so the comparison above cannot pass on two equally empty answers."""
    dash = _get(seeded, keys.a_read, f"/v1/tenants/{A}/dashboard")
    tenant = dash["budgets"][0]
    assert (tenant["scope_type"], tenant["remaining_micro_usd"]) == ("TENANT", 20_000_000 + 1_000_000
                                                                     - 4_820_000 - 500_000)
    assert tenant["burn_rate_micro_usd_per_day"] == 4_820_000 // dash["days_elapsed"]
    assert tenant["days_left"] == tenant["remaining_micro_usd"] // tenant["burn_rate_micro_usd_per_day"]
    assert tenant["runs_out_on"] is not None
    assert {b["scope_id"]: b["runs_out_on"] for b in dash["budgets"]}["wf-b"] is None  # no limit, no run-out
    assert dash["timeline"]["totals"] == {"ALLOW": 2, "DOWNGRADE": 1, "DENY": 3, "THROTTLE": 1, "CACHE_HIT": 0}
    assert [(m["model"], m["spend_micro_usd"]) for m in dash["top_models"]] == [
        ("gpt-4o", 4_250_000), ("claude-x", 420_000), ("gpt-4o-mini", 150_000)]
    assert {r["tier"]: r["decisions"] for r in dash["latency"]} == {"": 4, "premium": 2, "standard": 1}
    assert {r["tier"]: r["max_ms"] for r in dash["latency"]}["premium"] == 30  # r0's 999 ms is outside the window
    assert {(b["outcome"], b["binding_scope"]) for b in dash["bound"]} == {
        ("DENY", "TENANT"), ("DENY", "WORKFLOW"), ("DENY", ""), ("THROTTLE", ""), ("DOWNGRADE", "")}
    assert [a["alert_id"] for a in dash["alerts"]] == ["wf-a/50"]
    assert str(B_SPEND) not in seeded.get(f"/v1/tenants/{A}/dashboard", headers=H(keys.admin)).text
    wf_b = _get(seeded, keys.a_read, f"/v1/tenants/{A}/dashboard", workflow="wf-b")
    assert wf_b["timeline"]["totals"] == {"ALLOW": 0, "DOWNGRADE": 1, "DENY": 1, "THROTTLE": 1, "CACHE_HIT": 0}
    assert [(m["model"], m["spend_micro_usd"]) for m in wf_b["top_models"]] == [("gpt-4o", 3_000_000),
                                                                                ("claude-x", 420_000)]
    assert {r["tier"] for r in wf_b["latency"]} == {"", "standard"}
    assert wf_b["budgets"] == dash["budgets"] and wf_b["tokens"] == dash["tokens"]  # every scope, always
    hour = _get(seeded, keys.a_read, f"/v1/tenants/{A}/dashboard", window_h=1)
    assert hour["timeline"]["bucket_ms"] == 150_000 and hour["window_to_ms"] - hour["window_from_ms"] == 3_600_000


def test_dashboard_keys_and_tenant_isolation(seeded: TestClient, keys: Keys) -> None:
    assert _get(seeded, keys.a_read, "/v1/whoami") == {"key_id": keys.a_read.split("_")[1], "admin": False,
                                                       "tenant_id": A, "can_write": False}
    assert _get(seeded, keys.admin, "/v1/whoami")["admin"] is True
    other = seeded.get(f"/v1/tenants/{B}/dashboard", headers=H(keys.a_read))
    assert other.status_code == 403 and other.json()["error"]["code"] == "forbidden"
    assert str(B_SPEND) not in other.text
    assert seeded.get(f"/v1/tenants/{A}/dashboard").status_code == 401
    assert seeded.get("/v1/whoami", headers=H("lgk_000000000000_" + "x" * 43)).status_code == 401
    bad = seeded.get(f"/v1/tenants/{A}/dashboard", headers=H(keys.a_read), params={"window_h": 0})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
    assert seeded.get(f"/v1/tenants/{A}/dashboard", headers=H(keys.a_read),
                      params={"window_h": 745}).status_code == 422
    assert seeded.get(f"/v1/tenants/{A}/dashboard", headers=H(keys.a_read),
                      params={"period": "2026-13"}).status_code == 422
    assert seeded.get(f"/v1/tenants/{A}/dashboard", headers=H(keys.a_read),
                      params={"workflow": "bad id!"}).status_code == 422


def test_dashboard_page_and_assets_are_served_from_the_package(seeded: TestClient) -> None:
    page = seeded.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
    assert "http://" not in page.text and "https://" not in page.text  # nothing from another origin
    for asset, kind in (("dashboard.js", "javascript"), ("dashboard.css", "text/css"),
                        ("vendor/chartjs/chart.umd.min.js", "javascript")):
        resp = seeded.get(f"/dashboard/assets/{asset}")
        assert resp.status_code == 200 and kind in resp.headers["content-type"], asset
    assert "Chart.js v4.6.1" in seeded.get("/dashboard/assets/vendor/chartjs/chart.umd.min.js").text[:200]
    assert seeded.get("/dashboard/assets/../app.py").status_code == 404
    assert seeded.get("/dashboard/", follow_redirects=False).status_code == 308
