"""`ledgergate monitoring render`: deploy/prometheus/prometheus.yml and the Grafana dashboard
(deploy/grafana/), generated so they cannot drift from the code: the scrape targets are the processes
tools/run.py knows (each serves /metrics on its health port, the API on its own), the panels query the
families shared/metrics defines. tests/unit/test_monitoring.py checks the committed files equal what this
renders and that every metric and label a panel names exists.

docker-compose.yml runs both under the `observability` profile (`docker compose --profile observability
up`): Prometheus on localhost:9090, Grafana on localhost:3000 with this dashboard provisioned.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ledgergate.shared.settings import PROJECT_ROOT
from ledgergate.tools.run import SERVICES

PROMETHEUS_FILE = PROJECT_ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD_FILE = PROJECT_ROOT / "deploy" / "grafana" / "dashboards" / "ledgergate.json"
HEALTH_PORT = 8080  # LEDGERGATE_HEALTH_PORT in docker-compose.yml
# The HTTP processes serve /metrics on their own port (the settings' defaults); the rest on the health port.
HTTP_PORTS = {"api": 8000, "proxy": 8100}
SCRAPE_INTERVAL = "5s"
DASHBOARD_UID = "ledgergate-gate"

# (title, unit, [(PromQL, legend)]): a panel each, two to a row.
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Decisions by outcome", "reqps",
     [("sum by (outcome) (rate(ledgergate_decisions_total[1m]))", "{{outcome}}")]),
    ("Request to decision", "s",
     [("histogram_quantile(0.5, sum by (le) (rate(ledgergate_request_to_decision_seconds_bucket[5m])))", "p50"),
      ("histogram_quantile(0.99, sum by (le) (rate(ledgergate_request_to_decision_seconds_bucket[5m])))", "p99")]),
    ("Hop latency p99", "s",
     [("histogram_quantile(0.99, sum by (le, stage) (rate(ledgergate_hop_latency_seconds_bucket[5m])))",
       "{{stage}}")]),
    ("Denials and downgrades by reason", "reqps",
     [("sum by (outcome, reason) (rate(ledgergate_decisions_total{outcome=~\"DENY|DOWNGRADE|THROTTLE\"}[5m]))",
       "{{outcome}} {{reason}}")]),
    ("Spend by model (USD per hour)", "currencyUSD",
     [("sum by (model) (rate(ledgergate_spend_micro_usd_total[5m])) * 3600 / 1e6", "{{model}}")]),
    ("Spend by tier (USD per hour)", "currencyUSD",
     [("sum by (tier) (rate(ledgergate_spend_micro_usd_total[5m])) * 3600 / 1e6", "{{tier}}")]),
    ("Response cache: hits and savings", "short",
     [("sum by (model) (rate(ledgergate_cache_hits_total[5m]))", "hits/s {{model}}"),
      ("sum(rate(ledgergate_cache_saved_micro_usd_total[5m])) * 3600 / 1e6", "USD saved per hour")]),
    ("Tokens by type", "short",
     [("sum by (token_type, source) (rate(ledgergate_tokens_total[1m]))", "{{token_type}} ({{source}})")]),
    ("Reservations open", "short",
     [("sum(ledgergate_reservations_open)", "holds"),
      ("sum(ledgergate_reservations_open_micro_usd) / 1e6", "USD held")]),
    ("Expiries, voids, overages", "short",
     [("sum(rate(ledgergate_reservations_expired_total[5m]))", "expired/s"),
      ("sum(rate(ledgergate_reservations_voided_total[5m]))", "voided/s"),
      ("sum(rate(ledgergate_overages_total[5m]))", "overages/s")]),
    ("Threshold alerts", "short",
     [("sum by (scope_type, threshold_pct) (increase(ledgergate_threshold_alerts_total[1h]))",
       "{{scope_type}} {{threshold_pct}}%")]),
    ("Anomaly alerts (episodes)", "short",
     [("sum by (scope_type, metric) (increase(ledgergate_anomaly_alerts_total[1h]))", "{{scope_type}} {{metric}}")]),
    ("Consumer lag by group", "short",
     [("sum by (group) (ledgergate_consumer_lag_messages)", "{{group}}")]),
    ("Dead letters", "short",
     [("sum by (service, error_code) (increase(ledgergate_dead_letters_total[5m]))", "{{service}} {{error_code}}")]),
    ("Transactions", "short",
     [("sum by (service, result) (rate(ledgergate_transactions_total[1m]))", "{{service}} {{result}}")]),
    ("Rebuilds (restore from snapshots)", "s",
     [("max by (service) (rate(ledgergate_rebuild_duration_seconds_sum[1h]) / "
       "rate(ledgergate_rebuild_duration_seconds_count[1h]))", "{{service}}")]),
    ("API requests by status", "reqps",
     [("sum by (status) (rate(ledgergate_http_requests_total[1m]))", "{{status}}")]),
    ("Process CPU", "percentunit",
     [("rate(ledgergate_process_cpu_seconds_total[1m])", "{{job}} {{instance}}")]),
]


def targets() -> dict[str, list[str]]:
    """Scrape job -> host:port, by the compose service names."""
    return {name: [f"{name}:{HTTP_PORTS.get(name, HEALTH_PORT)}"] for name in SERVICES}


def prometheus() -> dict[str, Any]:
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [{"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": hosts}]}
                           for job, hosts in targets().items()],
    }


def _panel(index: int, title: str, unit: str, queries: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "id": index + 1, "type": "timeseries", "title": title,
        "datasource": {"type": "prometheus", "uid": "prometheus"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
                     "datasource": {"type": "prometheus", "uid": "prometheus"}}
                    for i, (expr, legend) in enumerate(queries)],
    }


def dashboard() -> dict[str, Any]:
    return {
        "uid": DASHBOARD_UID, "title": "ledgergate: the gate", "schemaVersion": 39, "version": 1,
        "editable": True, "refresh": "10s", "time": {"from": "now-1h", "to": "now"}, "tags": ["ledgergate"],
        "panels": [_panel(i, *p) for i, p in enumerate(PANELS)],
    }


def render() -> dict[Path, str]:
    header = "# Generated by `ledgergate monitoring render` (tools/monitoring.py): edit that, not this.\n"
    return {PROMETHEUS_FILE: header + yaml.safe_dump(prometheus(), sort_keys=False),
            DASHBOARD_FILE: json.dumps(dashboard(), indent=2) + "\n"}


def write() -> list[Path]:
    written = []
    for path, text in render().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
