"""What `make demo` leaves up for people to look at: the projector and the API beside the gate, each
process's /metrics on a port of its own, an admin key for the spend dashboard, and where to find them.

The demo's processes listen on loopback only. Health/metrics ports are fixed (DEMO_HEALTH_PORT_BASE + i)
so the printed addresses are the same every run; the API on LEDGERGATE_API_PORT (8000)."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from typing import Any

import psycopg

from ledgergate.shared.errors import StackError
from ledgergate.shared.settings import ApiSettings, PostgresSettings

DEMO_HEALTH_PORT_BASE = 18081
API_READY_TIMEOUT_S = 60.0
# The processes the console shows: the four that decide, the detector, and what serves the dashboard.
CONSOLE_SERVICES = ("token-counter", "policy", "budget-manager", "router", "anomaly", "projector", "api")


def health_ports(names: tuple[str, ...] = CONSOLE_SERVICES) -> dict[str, int]:
    return {name: DEMO_HEALTH_PORT_BASE + i for i, name in enumerate(n for n in names if n != "api")}


def env_for(extra: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """Each child's LEDGERGATE_HEALTH_PORT (its /metrics) over what the demo already sets for it."""
    out = {name: dict(env) for name, env in extra.items()}
    for name, port in health_ports().items():
        out.setdefault(name, {})["LEDGERGATE_HEALTH_PORT"] = str(port)
    return out


def api_url() -> str:
    s = ApiSettings()
    return f"http://{s.api_host}:{s.api_port}"


def wait_api(timeout_s: float = API_READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    problem = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{api_url()}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            problem = str(exc)
        time.sleep(0.5)
    raise StackError(f"the API at {api_url()} was not ready within {timeout_s:.0f} s ({problem}); is port "
                     f"{ApiSettings().api_port} taken? Set LEDGERGATE_API_PORT")


def admin_key(run: str) -> str:
    """A fresh admin key for this demo run (its SHA-256 in PostgreSQL, the key itself printed once)."""
    from ledgergate.shared import apikeys as auth

    with psycopg.connect(PostgresSettings().pg_dsn) as conn:
        return str(auth.create_key(conn, tenant_id=None, is_admin=True, can_write=False, name=f"demo {run}").token)


def scrape_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            return answer.status == 200 and b"ledgergate_" in answer.read()
    except (urllib.error.URLError, OSError):
        return False


def where(key: str) -> dict[str, Any]:
    metrics = {name: f"http://127.0.0.1:{port}/metrics" for name, port in health_ports().items()}
    metrics["api"] = f"{api_url()}/metrics"
    return {"dashboard": f"{api_url()}/dashboard", "admin_key": key, "metrics": metrics,
            "metrics_up": {name: scrape_ok(port) for name, port in health_ports().items()}}


def format_where(w: dict[str, Any]) -> str:
    lines = ["", f"spend dashboard: {w['dashboard']}  (paste the admin key: {w['admin_key']})", "metrics:"]
    for name, url in w["metrics"].items():
        up = w["metrics_up"].get(name, True)
        lines.append(f"  {name:<15} {url}{'' if up else '  (not answering)'}")
    return "\n".join(lines)


def hold(stop: threading.Event | None = None) -> None:
    """Until Ctrl-C (or `stop`): the services stay up for the dashboard and the metrics."""
    print("\nthe services stay up until you press Ctrl-C (`ledgergate demo --exit` ends at the summary)",
          flush=True)
    stop = stop or threading.Event()
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass

