"""The spend dashboard in a real headless Chromium (Debian's /usr/bin/chromium, `make browser`, driven by
Playwright's Python API; `playwright install` is never run): the API serves on a real port (uvicorn in a
thread, against a fresh PostgreSQL database seeded as the projector writes it), the page loads with an
admin key and with a tenant key, its figures equal the API's JSON, a tenant key cannot see another
tenant in the page or through the route, the page refreshes live, makes no request off loopback and
logs no error (a CSP violation would be one). Screenshots go to the test's tmp dir and
.data/artifacts/dashboard.png."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from playwright.sync_api import Browser, Page, sync_playwright

from ledgergate.services.api.app import create_app
from ledgergate.shared.settings import KafkaSettings
from tests.e2e.conftest import free_port
from tests.integration.apiharness import (  # noqa: F401  (fixtures)
    A,
    B,
    Keys,
    api_db_fixture,
    api_settings,
    keys_fixture,
)
from tests.integration.dashboardseed import B_SPEND, add_allow, seed

pytestmark = pytest.mark.e2e
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / ".data" / "artifacts"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# Every figure cell of the page (data-field, data-value), per table and row key.
CELLS_JS = """() => {
  const out = {};
  for (const table of document.querySelectorAll('#board table')) {
    const rows = {};
    for (const tr of table.querySelectorAll('tbody tr[data-key]')) {
      const cells = {};
      for (const td of tr.querySelectorAll('td[data-field]')) cells[td.dataset.field] = td.dataset.value;
      rows[tr.dataset.key] = cells;
    }
    out[table.id] = rows;
  }
  for (const td of document.querySelectorAll('#outcomes td[data-field]')) out[td.dataset.field] = td.dataset.value;
  return out;
}"""


@pytest.fixture(name="server")
def server_fixture(kafka: KafkaSettings, api_db: str) -> Iterator[str]:
    """The API on a free loopback port, as `ledgergate run api` serves it."""
    port = free_port()
    app = create_app(api_settings(kafka, api_db, api_port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, name="api", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:  # ready = /readyz answers 200 (a real query and a Kafka metadata request)
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and thread.is_alive(), "the API did not become ready"
        time.sleep(0.2)
    yield base
    server.should_exit = True
    thread.join(timeout=20)


@pytest.fixture(name="browser")
def browser_fixture() -> Iterator[Browser]:
    assert CHROMIUM.exists(), "Debian's chromium is not installed: run `make browser` (make test does)"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


class Watched:
    """A page in a fresh browser context (its own sessionStorage), with every request and error recorded."""

    def __init__(self, browser: Browser) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page: Page = self.context.new_page()
        self.urls: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.urls.append(r.url))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def sign_in(self, base: str, key: str, fragment: str = "") -> None:
        self.page.goto(f"{base}/dashboard{fragment}")
        self.page.fill("#api-key", key)
        self.page.click("#use-key")

    def wait_loaded(self, tenant: str) -> None:
        self.page.wait_for_selector(f"body[data-state=loaded][data-tenant={tenant}]", timeout=20_000)

    def cells(self) -> dict[str, Any]:
        result: dict[str, Any] = self.page.evaluate(CELLS_JS)
        return result

    def off_loopback(self) -> list[str]:
        return [u for u in self.urls if urlsplit(u).scheme not in ("data", "about", "blob")
                and urlsplit(u).hostname not in LOOPBACK]


def _value(v: int | None) -> str:
    return "" if v is None else str(v)


def expected_cells(d: dict[str, Any]) -> dict[str, Any]:
    """What the page must show for one dashboard answer, in CELLS_JS's shape."""
    money = ("limit_micro_usd", "credit_micro_usd", "posted_micro_usd", "pending_micro_usd", "remaining_micro_usd",
             "burn_rate_micro_usd_per_day", "runs_out_on")
    out: dict[str, Any] = {
        "budgets": {f"{b['scope_type']}:{b['scope_id']}": {f: _value(b[f]) for f in money} for b in d["budgets"]},
        "tokens": {t["workflow_id"]: {f: str(t[f]) for f in ("requests", "input_tokens", "output_tokens",
                                                              "input_tokens_per_day", "output_tokens_per_day",
                                                              "spend_micro_usd")} for t in d["tokens"]},
        "models": {m["model"]: {"requests": str(m["requests"]), "spend_micro_usd": str(m["spend_micro_usd"])}
                   for m in d["top_models"]},
        "outcomes": {},
        "bound": {f"{b['outcome']}:{b['binding_scope']}:{b['reason']}": {"decisions": str(b["decisions"])}
                  for b in d["bound"]},
        "latency": {(r["tier"] or "(none)"): {f: str(r[f]) for f in ("decisions", "p50_ms", "p95_ms", "max_ms")}
                    for r in d["latency"]},
        "alerts": {a["alert_id"]: {f: str(a[f]) for f in ("crossed_at_ms", "threshold_pct", "spent_micro_usd",
                                                           "limit_micro_usd")} for a in d["alerts"]},
    }
    out.update({f"total:{o}": str(n) for o, n in d["timeline"]["totals"].items()})
    return out


def usd_text(micro: int) -> str:
    """The page's money text: dollars truncated to cents."""
    cents = abs(micro) // 10_000
    return f"{'-' if micro < 0 else ''}${cents // 100:,}.{cents % 100:02d}"


def _api(base: str, key: str, path: str) -> httpx.Response:
    return httpx.get(f"{base}{path}", headers=Keys.h(key), timeout=10)


def _dashboard(base: str, key: str, tenant: str, workflow: str | None = None) -> dict[str, Any]:
    resp = _api(base, key, f"/v1/tenants/{tenant}/dashboard" + (f"?workflow={workflow}" if workflow else ""))
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def assert_page_shows_api(watched: Watched, base: str, key: str, tenant: str, workflow: str | None = None) -> None:
    """The page's figures equal the API's answer. The page polls every 5 s and a figure may move between
    its poll and ours (a day rolling over changes the burn rate), so compare for up to 3 polls."""
    deadline = time.monotonic() + 15
    while True:
        shown, answer = watched.cells(), expected_cells(_dashboard(base, key, tenant, workflow))
        if shown == answer or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert shown == answer


def test_dashboard_in_chromium(server: str, browser: Browser, keys: Keys, api_db: str, tmp_path: Path) -> None:
    seed(api_db)

    # --- an admin: the tenant picker over every tenant, each tenant's figures equal to the API's -----------
    admin = Watched(browser)
    admin.sign_in(server, keys.admin)
    admin.wait_loaded(A)
    assert admin.page.eval_on_selector_all("#tenant option", "os => os.map(o => o.value)") == [A, B]
    assert_page_shows_api(admin, server, keys.admin, A)
    balances = _api(server, keys.admin, f"/v1/tenants/{A}/balances").json()
    remaining = balances["items"][0]["remaining_micro_usd"]
    cell = admin.page.locator('#budgets tr[data-key="TENANT:acme"] td[data-field=remaining_micro_usd]')
    assert cell.inner_text() == usd_text(remaining) == "$15.68"
    money = admin.page.evaluate("""() => [...document.querySelectorAll(
        '#board td[data-field$="_micro_usd"], #board td[data-field="burn_rate_micro_usd_per_day"]')]
        .map(td => [td.dataset.value, td.textContent])""")
    assert len(money) > 20
    for value, text in money:  # every amount's text is its exact value in dollars, truncated to cents
        assert text == ("no limit" if value == "" else usd_text(int(value))), (value, text)
    # The charts drew the same series (Chart.js, from the package).
    timeline = admin.page.evaluate("() => Chart.getChart('chart-timeline').data.datasets"
                                   ".map(d => [d.label, d.data])")
    assert dict(timeline) == _dashboard(server, keys.admin, A)["timeline"]["series"]
    assert admin.page.evaluate("() => Chart.version") == "4.6.1"
    # Live: a decision made now appears without a reload (the page polls every 5 s).
    before = int(admin.cells()["total:ALLOW"])
    add_allow(api_db, A, "live-1")
    admin.page.wait_for_function(f"() => document.querySelector('#outcomes td[data-field=\"total:ALLOW\"]')"
                                 f"?.dataset.value === '{before + 1}'", timeout=20_000)
    admin.page.screenshot(path=str(tmp_path / "dashboard-admin.png"), full_page=True)
    # One workflow: the top models and the decision panels narrow to it.
    assert admin.page.eval_on_selector_all("#workflow option", "os => os.map(o => o.value)") == ["", "wf-a", "wf-b"]
    admin.page.select_option("#workflow", "wf-b")
    admin.page.wait_for_selector("body[data-state=loaded][data-workflow=wf-b]", timeout=20_000)
    assert_page_shows_api(admin, server, keys.admin, A, "wf-b")
    assert set(admin.cells()["models"]) == {"gpt-4o", "claude-x"}
    assert admin.page.inner_text("#panel-models h2 .wf-note") == "(workflow wf-b)"
    admin.page.select_option("#tenant", B)
    admin.wait_loaded(B)
    assert_page_shows_api(admin, server, keys.admin, B)
    assert admin.cells()["budgets"][f"TENANT:{B}"]["posted_micro_usd"] == str(B_SPEND)

    # --- a tenant key: its own tenant only, no picker ------------------------------------------------------
    tenant = Watched(browser)
    tenant.sign_in(server, keys.a_read)
    tenant.wait_loaded(A)
    assert tenant.page.is_hidden("#tenant") and tenant.page.inner_text("#tenant-fixed") == A
    assert_page_shows_api(tenant, server, keys.a_read, A)
    text = tenant.page.inner_text("body")
    assert usd_text(B_SPEND) not in text and B not in text
    assert tenant.page.evaluate("() => sessionStorage.getItem('ledgergate.apiKey')") == keys.a_read
    tenant.page.screenshot(path=str(tmp_path / "dashboard-tenant.png"), full_page=True)
    # A link naming another tenant is asked for, refused by the API, and shows nothing of it.
    tenant.page.evaluate(f"() => {{ location.hash = '#tenant={B}'; location.reload(); }}")
    tenant.page.wait_for_selector("body[data-state=error]", timeout=20_000)
    assert "403" in tenant.page.inner_text("#status") and tenant.page.is_hidden("#board")
    assert tenant.cells() == {t: {} for t in ("budgets", "tokens", "models", "bound", "latency", "alerts", "outcomes")}
    assert usd_text(B_SPEND) not in tenant.page.inner_text("body")
    route = _api(server, keys.a_read, f"/v1/tenants/{B}/dashboard")
    assert route.status_code == 403 and str(B_SPEND) not in route.text

    # --- what the pages asked for: loopback only, the key never in a URL, no error logged -----------------
    for watched in (admin, tenant):
        assert watched.urls and watched.off_loopback() == []
        assert not [u for u in watched.urls if keys.admin in u or keys.a_read in u]
        assert [e for e in watched.errors if "403" not in e] == []  # the refused fetch logs its 403, nothing else
        watched.context.close()
    assert any(u.endswith("/dashboard/assets/vendor/chartjs/chart.umd.min.js") for u in admin.urls)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tmp_path / "dashboard-admin.png", ARTIFACTS / "dashboard.png")
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
