"""deploy/prometheus and deploy/grafana: the committed files are what `ledgergate monitoring render` makes,
every process is scraped, and every metric and label a Grafana panel names is one shared/metrics
defines (a renamed metric fails here, not on an operator's empty panel). A broken panel fails the same
check, so it can fail."""

from __future__ import annotations

import json
import re

import yaml

from ledgergate.shared.metrics import Metrics
from ledgergate.tools import monitoring
from ledgergate.tools.run import SERVICES

# Labels Prometheus adds to every scraped series, and the ones PromQL makes.
TARGET_LABELS = {"job", "instance", "le"}
METRIC_RE = re.compile(r"\bledgergate_[a-z0-9_]+")


def _families() -> dict[str, set[str]]:
    """Every exposed sample name -> its labels (histogram and counter suffixes included)."""
    m = Metrics("test", "all", 5)
    out: dict[str, set[str]] = {}
    for family in m.families:
        labels = set(family.spec.labels)
        for suffix in ("", "_bucket", "_sum", "_count"):
            out[family.spec.name + suffix] = labels
    for family in m.registry.collect():  # the process collector
        for sample in family.samples:
            out.setdefault(sample.name, set(sample.labels))
    return out


def _problems(dashboard: dict[str, object]) -> list[str]:
    families = _families()
    problems = []
    for panel in dashboard["panels"]:  # type: ignore[attr-defined]
        for target in panel["targets"]:
            expr = target["expr"]
            names = METRIC_RE.findall(expr)
            if not names:
                problems.append(f"{panel['title']}: no ledgergate metric in {expr!r}")
            known: set[str] = set()
            for name in names:
                if name not in families:
                    problems.append(f"{panel['title']}: {name} is not a ledgergate metric")
                else:
                    known |= families[name]
            used = set(re.findall(r"by \(([^)]*)\)", expr))
            labels = {label.strip() for group in used for label in group.split(",")}
            labels |= set(re.findall(r"([a-z_]+)=~?\"", expr))
            labels |= set(re.findall(r"\{\{(\w+)\}\}", target["legendFormat"]))
            for label in labels - TARGET_LABELS:
                if label not in known:
                    problems.append(f"{panel['title']}: label {label!r} is not on {names}")
    return problems


def test_committed_files_are_the_rendered_ones() -> None:
    for path, text in monitoring.render().items():
        assert path.read_text() == text, f"{path} is stale: run `ledgergate monitoring render`"


def test_every_process_is_scraped_on_its_metrics_port() -> None:
    config = yaml.safe_load(monitoring.PROMETHEUS_FILE.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(SERVICES)
    for name, job in jobs.items():
        port = monitoring.HTTP_PORTS.get(name, monitoring.HEALTH_PORT)
        assert job["static_configs"][0]["targets"] == [f"{name}:{port}"]
        assert job["metrics_path"] == "/metrics"


def test_every_panel_queries_metrics_and_labels_that_exist() -> None:
    dashboard = json.loads(monitoring.DASHBOARD_FILE.read_text())
    assert len(dashboard["panels"]) >= 12
    assert _problems(dashboard) == []
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_a_renamed_metric_or_label_is_caught() -> None:
    broken = monitoring.dashboard()
    broken["panels"][0]["targets"][0]["expr"] = "sum by (outcome) (rate(ledgergate_decision_total[1m]))"
    broken["panels"][1]["targets"][0]["legendFormat"] = "{{tenant_name}}"
    problems = _problems(broken)
    assert any("ledgergate_decision_total" in p for p in problems), problems
    assert any("tenant_name" in p for p in problems), problems


def test_compose_mounts_the_rendered_files() -> None:
    compose = yaml.safe_load((monitoring.PROJECT_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"], name
    mounted = {v.split(":")[0] for s in ("prometheus", "grafana") for v in services[s]["volumes"]}
    assert "./deploy/prometheus/prometheus.yml" in mounted
    assert "./deploy/grafana/dashboards" in mounted and "./deploy/grafana/provisioning" in mounted
    root = monitoring.PROJECT_ROOT
    for path in mounted - {"prometheus-data"}:
        assert (root / path).exists(), path
