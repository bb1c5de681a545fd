"""Read routes against a seeded read model (real PostgreSQL): balances, ledger paging, decisions, spend
reports (JSON and CSV), alerts, tenants, policy."""

from __future__ import annotations

import csv
import io

import pytest
from fastapi.testclient import TestClient

from ledgergate.services.api.routes.balances import days_elapsed
from tests.integration.apiharness import (  # noqa: F401  (fixtures)
    A_LEDGER,
    NOW_MS,
    PERIOD,
    A,
    B,
    Keys,
    api_db_fixture,
    api_fixture,
    get_json,
    keys_fixture,
    seed,
)

pytestmark = pytest.mark.integration
H = Keys.h


@pytest.fixture(name="seeded")
def seeded_fixture(api: TestClient, api_db: str) -> TestClient:
    seed(api_db)
    return api


_get = get_json


def test_balances_join_limits_and_compute_remaining_and_burn(seeded: TestClient, keys: Keys) -> None:
    body = _get(seeded, keys.a_read, f"/v1/tenants/{A}/balances")
    days = days_elapsed(PERIOD, NOW_MS)
    assert body["period_id"] == PERIOD and body["days_elapsed"] == days >= 1
    by_scope = {(b["scope_type"], b["scope_id"]): b for b in body["items"]}
    assert list(by_scope) == [("TENANT", A), ("WORKFLOW", "wf-a"), ("WORKFLOW", "wf-b")]
    tenant = by_scope[("TENANT", A)]
    assert tenant["limit_micro_usd"] == 100_000_000
    assert tenant["remaining_micro_usd"] == 100_000_000 + 5_000_000 - 30_000_000 - 2_000_000
    assert tenant["burn_rate_micro_usd_per_day"] == 30_000_000 // days
    unlimited = by_scope[("WORKFLOW", "wf-a")]
    assert unlimited["limit_micro_usd"] is None and unlimited["remaining_micro_usd"] is None
    limit_only = by_scope[("WORKFLOW", "wf-b")]  # a limit set, nothing spent yet this period
    assert (limit_only["limit_micro_usd"], limit_only["posted_micro_usd"], limit_only["remaining_micro_usd"]) == (
        20_000_000, 0, 20_000_000)
    other = _get(seeded, keys.a_read, f"/v1/tenants/{A}/balances", period="2001-01")
    assert other["days_elapsed"] == 31
    assert [(b["scope_id"], b["posted_micro_usd"]) for b in other["items"]] == [(A, 0), ("wf-b", 0)]


def test_balance_period_arithmetic() -> None:
    jan = 978_307_200_000  # 2001-01-01T00:00Z
    assert days_elapsed("2001-01", jan) == 1
    assert days_elapsed("2001-01", jan + 86_400_000) == 1
    assert days_elapsed("2001-01", jan + 86_400_001) == 2
    assert days_elapsed("2001-02", jan) == 0
    assert days_elapsed("2000-12", jan) == 31


def test_ledger_pages_by_cursor_and_offset_without_gaps_or_repeats(seeded: TestClient, keys: Keys) -> None:
    path = f"/v1/tenants/{A}/ledger"
    expected = [r[0] for r in sorted(A_LEDGER, key=lambda r: (r[8], r[0]))]
    seen, cursor, pages = [], None, 0
    while True:
        page = _get(seeded, keys.a_read, path, limit=3, **({"cursor": cursor} if cursor else {}))
        seen += [e["entry_id"] for e in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected and pages == 3
    assert [e["entry_id"] for e in _get(seeded, keys.a_read, path, offset=2, limit=2)["items"]] == expected[2:4]
    newest = _get(seeded, keys.a_read, path, order="desc", limit=2)
    assert [e["entry_id"] for e in newest["items"]] == expected[::-1][:2]
    older = _get(seeded, keys.a_read, path, order="desc", limit=2, cursor=newest["next_cursor"])
    assert [e["entry_id"] for e in older["items"]] == expected[::-1][2:4]
    wf_b = _get(seeded, keys.a_read, path, workflow="wf-b")["items"]
    assert {e["workflow_id"] for e in wf_b} == {"wf-b"} and len(wf_b) == 3
    mini = _get(seeded, keys.a_read, path, model="gpt-4o-mini")["items"]
    assert [e["amount_micro_usd"] for e in mini] == [300, 250, 700]
    t = A_LEDGER[2][8]
    window = _get(seeded, keys.a_read, path, from_ms=t, to_ms=t + 2000)["items"]
    assert [e["recorded_at_ms"] for e in window] == [t, t + 1000]
    settled = _get(seeded, keys.a_read, path, entry_type="ReservationSettled")["items"]
    assert len(settled) == 2 and settled[0]["body"]["tenant_id"] == A
    # globex has entries with the very same ids; acme's listing must not contain a single one of them.
    amounts = {e["amount_micro_usd"] for e in _get(seeded, keys.a_read, path, limit=500)["items"]}
    assert not amounts & {123456, 654321}


def test_decisions_list_filters_and_single_lookup(seeded: TestClient, keys: Keys, api_db: str) -> None:
    items = _get(seeded, keys.a_read, f"/v1/tenants/{A}/decisions")["items"]
    assert [d["request_id"] for d in items] == ["req-1", "req-shared", "req-3", "req-2", "req-1"]  # newest first
    assert {d["tenant_id"] for d in items} == {A}
    denies = _get(seeded, keys.a_read, f"/v1/tenants/{A}/decisions", outcome="DENY")["items"]
    assert [d["reason_codes"] for d in denies] == [["idempotency_conflict"], ["budget_exhausted"]]
    page = _get(seeded, keys.a_read, f"/v1/tenants/{A}/decisions", limit=2, order="asc")
    rest = _get(seeded, keys.a_read, f"/v1/tenants/{A}/decisions", limit=10, order="asc", cursor=page["next_cursor"])
    assert len(page["items"]) + len(rest["items"]) == 5 and rest["next_cursor"] is None
    assert _get(seeded, keys.a_read, f"/v1/tenants/{A}/decisions", workflow="wf-b")["items"][0]["request_id"] == "req-3"
    # A request's own decision, not the later idempotency conflict under its id.
    own = _get(seeded, keys.a_read, "/v1/decisions/req-1")
    assert own["outcome"] == "ALLOW" and own["ledger_entry_id"] == "req-1/reservation"
    assert _get(seeded, keys.a_read, f"/v1/tenants/{A}/decisions/req-1")["outcome"] == "ALLOW"
    assert _get(seeded, keys.a_read, "/v1/decisions/req-shared")["tenant_id"] == A
    assert _get(seeded, keys.b_read, "/v1/decisions/req-shared")["tenant_id"] == B
    # Another tenant's request id answers exactly like an unknown one.
    foreign = seeded.get("/v1/decisions/req-g1", headers=H(keys.a_read))
    unknown = seeded.get("/v1/decisions/req-nope", headers=H(keys.a_read))
    assert foreign.status_code == unknown.status_code == 404
    strip = lambda r: {**r.json()["error"], "request_id": None, "message": r.json()["error"]["message"][:15]}  # noqa: E731
    assert strip(foreign) == strip(unknown)
    assert seeded.get("/v1/decisions/req-g1", headers=H(keys.a_read), params={"tenant_id": B}).status_code == 404
    # Admins see any tenant; an id two tenants use needs the tenant named.
    assert _get(seeded, keys.admin, "/v1/decisions/req-g1")["tenant_id"] == B
    assert seeded.get("/v1/decisions/req-shared", headers=H(keys.admin)).status_code == 422
    assert _get(seeded, keys.admin, "/v1/decisions/req-shared", tenant_id=B)["outcome"] == "DENY"


def test_spend_report_groups_and_exports_csv(seeded: TestClient, keys: Keys) -> None:
    path = f"/v1/tenants/{A}/reports/spend"
    by_model = _get(seeded, keys.a_read, path, group_by="model")
    assert by_model["total_micro_usd"] == 1000 + 200 + 3000 + 50  # globex's 999_999 is not in it
    assert {r["key"]: r["spend_micro_usd"] for r in by_model["rows"]} == {
        "gpt-4o": 4000, "gpt-4o-mini": 200, '=HYPERLINK("http://x")': 50}
    tiers = {r["key"]: (r["requests"], r["spend_micro_usd"]) for r in _get(seeded, keys.a_read, path,
                                                                          group_by="tier")["rows"]}
    assert tiers == {"premium": (2, 4000), "standard": (1, 200), "": (1, 50)}
    workflows = {r["key"]: r["input_tokens"] for r in _get(seeded, keys.a_read, path, group_by="workflow")["rows"]}
    assert workflows == {"wf-a": 3000, "wf-b": 3010}
    days = _get(seeded, keys.a_read, path, group_by="day")["rows"]
    assert len(days) == 2 and days[0]["key"] == f"{PERIOD}-01" and days[0]["spend_micro_usd"] == 1200
    assert _get(seeded, keys.a_read, path, period="2001-01")["rows"] == []
    # Nothing seeded was a fail-open call: all of it was decided (tests/e2e/test_fail_open.py has the rest).
    assert [(r["key"], r["requests"]) for r in _get(seeded, keys.a_read, path, group_by="fail_open")["rows"]] == [
        ("decided", 4)]
    resp = seeded.get(path, headers=H(keys.a_read), params={"group_by": "model", "format": "csv"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    assert "attachment" in resp.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert [r["key"] for r in rows] == ["'=HYPERLINK(\"http://x\")", "gpt-4o", "gpt-4o-mini"]  # no live formula
    assert sum(int(r["spend_micro_usd"]) for r in rows) == 4250


def test_alerts_tenants_and_policy(seeded: TestClient, keys: Keys) -> None:
    alerts = _get(seeded, keys.a_read, f"/v1/tenants/{A}/alerts")["items"]
    assert [a["threshold_pct"] for a in alerts] == [80, 50]
    assert [a["alert_id"] for a in _get(seeded, keys.a_read, f"/v1/tenants/{A}/alerts", min_pct=80)["items"]] == ["t80"]
    first = _get(seeded, keys.admin, "/v1/tenants", limit=1)
    second = _get(seeded, keys.admin, "/v1/tenants", limit=1, cursor=first["next_cursor"])
    assert [t["tenant_id"] for t in first["items"] + second["items"]] == [A, B] and second["next_cursor"] is None
    policy = _get(seeded, keys.a_read, f"/v1/tenants/{A}/policy")
    assert policy["policy_version"] == 2 and policy["document"] == {"max_output_tokens": 512}
    assert policy["effective"]["max_output_tokens"] == 512
    fresh = _get(seeded, keys.b_read, f"/v1/tenants/{B}/policy")
    assert fresh["policy_version"] == 0 and fresh["document"] == {} and fresh["effective"]
