"""shared/metrics: the naming rules, the tenant-label rule, the families' exposition, the hop latencies,
consumer lag from librdkafka statistics, the open-holds gauges, and GET /metrics on the health listener."""

from __future__ import annotations

import json
import random
import re
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ledgergate.shared import metrics
from ledgergate.shared.health import Health
from ledgergate.shared.metrics import Metrics
from ledgergate.shared.metrics.families import Counts, Hist, Spec
from ledgergate.shared.metrics.holds import HoldCounter
from ledgergate.shared.metrics.lag import lag_from_stats
from ledgergate.shared.metrics.tenants import OTHER, RERANK_EVERY, TenantLabels
from ledgergate.shared.settings import RouterSettings

# Units that are not Prometheus base units, as a name part (seconds and bytes are; micro-USD is the
# ledger's own integer unit, named in full, see shared/metrics/__init__.py).
NOT_BASE_UNITS = {"ms", "us", "ns", "millis", "milliseconds", "microseconds", "nanoseconds", "minutes", "hours",
                  "days", "kb", "mb", "gb", "kilobytes", "megabytes", "gigabytes", "percent"}


@pytest.fixture
def active() -> Iterator[Metrics]:
    """A process's metrics as a service configures them; off again afterwards."""
    m = metrics.configure("router", RouterSettings(metrics_tenant_label="off"))
    assert m is not None
    yield m
    metrics.configure("router", RouterSettings(metrics_enabled=False))


def exposed(m: Metrics) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The text exposition parsed back: sample name -> sorted labels -> value."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(metrics.render()[0].decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


# --- naming -------------------------------------------------------------------------------------

@pytest.mark.parametrize("tenant_mode", ["off", "top", "all"])
def test_every_metric_is_prefixed_counters_end_in_total_and_units_are_base_units(tenant_mode: str) -> None:
    m = Metrics("test", tenant_mode, 5)
    assert len(m.families) >= 20
    names = [f.spec.name for f in m.families]
    assert len(names) == len(set(names))
    for family in m.families:
        name = family.spec.name
        assert name.startswith("ledgergate_"), name
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", name), name
        assert (family.kind == "counter") == name.endswith("_total"), name
        assert not NOT_BASE_UNITS & set(name.split("_")), f"{name}: not in base units"
        if isinstance(family, Hist):
            assert name.endswith("_seconds"), name
        assert "tenant" not in family.spec.labels or tenant_mode != "off", name
        assert family.spec.help
    # What the registry really exposes (the process collector too) follows the same rules.
    for family in m.registry.collect():
        assert family.name.startswith("ledgergate_"), family.name
        for sample in family.samples:
            assert sample.name.startswith("ledgergate_"), sample.name


def test_tenant_label_only_on_the_tenant_families_and_only_when_on() -> None:
    with_tenant = {f.spec.name for f in Metrics("test", "top", 5).families if "tenant" in f.spec.labels}
    assert with_tenant == {"ledgergate_decisions_total", "ledgergate_spend_micro_usd_total", "ledgergate_tokens_total",
                           "ledgergate_cache_hits_total", "ledgergate_cache_saved_micro_usd_total"}
    assert not any("tenant" in f.spec.labels for f in Metrics("test", "off", 5).families)


# --- the tenant-label rule ----------------------------------------------------------------------

def test_off_and_all() -> None:
    assert not TenantLabels("off", 3).enabled
    everyone = TenantLabels("all", 3)
    assert [everyone.label(f"t{i}") for i in range(10)] == [f"t{i}" for i in range(10)]


def test_top_labels_the_busiest_tenants_never_the_first_seen() -> None:
    labels = TenantLabels("top", 3)
    rng = random.Random(1)
    early = [f"early{i}" for i in range(5)]  # seen first, then rarely
    for tenant in early:
        assert labels.label(tenant) == OTHER  # nobody is labelled before the first re-rank
    busy = ["busy-a", "busy-b", "busy-c"]
    stream = [rng.choice(busy) if rng.random() < 0.6 else f"tail{rng.randrange(5000)}" for _ in range(3 * RERANK_EVERY)]
    values = [labels.label(t) for t in stream]
    assert labels.labelled == set(busy)
    assert set(values) <= {*busy, OTHER}  # at most N + 1 values, whatever the number of tenants
    assert all(labels.label(t) == OTHER for t in early)
    assert labels.label("busy-b") == "busy-b"
    # Once every label is given the counting stops: bounded memory, one set lookup per call.
    assert labels.counts == {}
    later = "late-but-busy"
    assert all(labels.label(later) == OTHER for _ in range(5 * RERANK_EVERY))  # documented: sticky labels


def test_top_with_fewer_tenants_than_labels_labels_each_after_the_first_rerank() -> None:
    labels = TenantLabels("top", 10)
    for i in range(RERANK_EVERY):
        labels.label(f"t{i % 4}")
    assert labels.labelled == {"t0", "t1", "t2", "t3"}
    assert labels.label("t2") == "t2" and labels.label("new") in ("new", OTHER)
    assert len(labels.labelled) <= 10


def test_space_saving_memory_is_bounded() -> None:
    labels = TenantLabels("top", 5)
    for i in range(RERANK_EVERY - 1):
        labels.label(f"tenant{i}")  # all distinct: the counter stays at 4N slots
        assert len(labels.counts) <= labels.slots


# --- families and exposition --------------------------------------------------------------------

def test_counter_and_histogram_exposition() -> None:
    c = Counts(Spec("ledgergate_things_total", "things", ("kind",)))
    c.add(("a",))
    c.add(("a",), 2)
    with pytest.raises(AssertionError):
        c.add(("a",), -1)
    h = Hist(Spec("ledgergate_wait_seconds", "waits"), (0.01, 0.1))
    for v in (0.005, 0.01, 0.05, 3.0):
        h.observe((), v)
    family = h.collect()
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    assert buckets == {"0.01": 2, "0.1": 3, "+Inf": 4}  # cumulative, upper bounds inclusive
    assert next(s.value for s in family.samples if s.name.endswith("_sum")) == pytest.approx(3.065)
    assert next(s.value for s in c.collect().samples if s.name == "ledgergate_things_total") == 3


def test_decision_counts_and_hop_latencies(active: Metrics) -> None:
    stamps = [("request_id", b"r1"), ("lg-t-send", b"1000000"), ("lg-t-count", b"1002000"),
              ("lg-t-policy", b"1003000"), ("lg-t-budget", b"1007000"), ("lg-t-route", b"1010000"),
              ("lg-t-made-up", b"5")]
    for _ in range(3):
        metrics.observe_decision("ALLOW", "standard", "gpt-4o-mini", ("within_budget",), "t1", stamps, 0)
    metrics.observe_decision("DENY", "", None, ("budget_exceeded",), "t1", stamps, 0)
    metrics.observe_decision("ALLOW", "standard", "not-a-catalogue-model", ("within_budget",), "t1", stamps, 0)
    seen = exposed(active)
    decisions = seen["ledgergate_decisions_total"]
    key = (("model", "gpt-4o-mini"), ("outcome", "ALLOW"), ("reason", "within_budget"), ("tier", "standard"))
    assert decisions[key] == 3
    assert decisions[(("model", "none"), ("outcome", "DENY"), ("reason", "budget_exceeded"), ("tier", "none"))] == 1
    assert decisions[(("model", "other"), ("outcome", "ALLOW"), ("reason", "within_budget"), ("tier", "standard"))] == 1
    assert seen["ledgergate_request_to_decision_seconds_count"][()] == 5
    assert seen["ledgergate_request_to_decision_seconds_sum"][()] == pytest.approx(5 * 0.010)
    hops = seen["ledgergate_hop_latency_seconds_sum"]
    assert {dict(k)["stage"]: v / 5 for k, v in hops.items()} == pytest.approx(
        {"count": 0.002, "policy": 0.001, "budget": 0.004, "route": 0.003})


def test_request_to_decision_falls_back_to_requested_at(active: Metrics) -> None:
    metrics.observe_decision("ALLOW", "", "gpt-4o-mini", (), "t", [("lg-t-route", b"5000000")], 4_990)
    seen = exposed(active)
    assert seen["ledgergate_request_to_decision_seconds_sum"][()] == pytest.approx(0.010)


def test_off_records_nothing() -> None:
    assert metrics.configure("router", RouterSettings(metrics_enabled=False)) is None
    metrics.observe_decision("ALLOW", "", "gpt-4o-mini", (), "t", [("lg-t-route", b"5")], 0)
    metrics.transaction("committed")
    assert metrics.render()[0] == b""
    assert metrics.consumer_options("g", 5000) == {}


def test_tenant_values_in_the_exposition_follow_the_setting() -> None:
    m = metrics.configure("router", RouterSettings(metrics_tenant_label="all"))
    assert m is not None
    try:
        metrics.observe_decision("ALLOW", "", "gpt-4o-mini", (), "acme", None, 0)
        (key,) = exposed(m)["ledgergate_decisions_total"]
        assert ("tenant", "acme") in key
    finally:
        metrics.configure("router", RouterSettings(metrics_enabled=False))


# --- consumer lag -------------------------------------------------------------------------------

def test_lag_from_librdkafka_statistics() -> None:
    stats = {"type": "consumer", "topics": {"p.budget.ledger": {"partitions": {
        "0": {"desired": True, "ls_offset": 120, "hi_offset": 125, "app_offset": 100, "committed_offset": 90},
        "1": {"desired": True, "ls_offset": 50, "hi_offset": 50, "app_offset": -1001, "committed_offset": 40},
        "2": {"desired": False, "ls_offset": 9, "hi_offset": 9, "app_offset": 1, "committed_offset": 1},
        "3": {"desired": True, "ls_offset": 0, "hi_offset": 0, "app_offset": -1001, "committed_offset": -1001},
        "4": {"desired": True, "ls_offset": 7, "hi_offset": 7, "app_offset": -1001, "committed_offset": -1001},
        "-1": {"desired": False, "ls_offset": -1, "hi_offset": -1, "app_offset": -1, "committed_offset": -1}}}}}
    lag = lag_from_stats(json.dumps(stats), "grp")
    assert lag == {("grp", "p.budget.ledger", "0"): 20.0,  # the last stable offset, not the high watermark
                   ("grp", "p.budget.ledger", "1"): 10.0,  # committed before the first message
                   ("grp", "p.budget.ledger", "3"): 0.0}   # empty; 2 unassigned, 4 unknown, -1 internal
    assert lag_from_stats(json.dumps({"type": "producer"}), "grp") == {}


def test_consumer_options_feed_the_lag_gauge(active: Metrics) -> None:
    assert metrics.consumer_options("grp", 0) == {}
    options = metrics.consumer_options("grp", 5000)
    assert options["statistics.interval.ms"] == 5000
    options["stats_cb"](json.dumps({"type": "consumer", "topics": {"t": {"partitions": {
        "0": {"desired": True, "ls_offset": 10, "app_offset": 4}}}}}))
    seen = exposed(active)["ledgergate_consumer_lag_messages"]
    assert seen == {(("group", "grp"), ("partition", "0"), ("topic", "t")): 6.0}


# --- open holds ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class FakeHold:
    amount_micro_usd: int


@dataclass
class FakeState:
    tenant_id: str
    holds: dict[str, FakeHold]


def test_open_holds_count_live_changes_and_restored_tenants_once(active: Metrics) -> None:
    counter = HoldCounter()
    counter.assigned([3])
    restored = FakeState("t-restored", {"r1": FakeHold(100), "r2": FakeHold(50)})
    counter.restored(3, restored.tenant_id)
    hold = FakeHold(70)
    counter.changed(3, None, hold)           # placed
    counter.changed(3, hold, hold)           # an entry that left it alone
    counter.touched(3, restored)             # first use of the restored tenant: its holds count
    counter.touched(3, restored)             # ... once
    counter.changed(3, restored.holds["r1"], None)  # settled
    assert active.open.values == {("3",): 2} and active.open_amount.values == {("3",): 120}
    counter.revoked([3])
    assert active.open.values == {} and active.open_amount.values == {}


# --- the health listener ------------------------------------------------------------------------

def test_health_listener_serves_metrics(active: Metrics) -> None:
    metrics.transaction("committed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = Health("router", 1000).serve("127.0.0.1", port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            text = response.read().decode()
    finally:
        server.shutdown()
    assert 'ledgergate_transactions_total{result="committed",service="router"} 1.0' in text
    assert "ledgergate_process_cpu_seconds_total" in text


# --- settings -----------------------------------------------------------------------------------

def test_metrics_settings_are_typed_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from ledgergate.shared.settings import ApiSettings, ProjectorSettings

    assert RouterSettings().metrics_enabled and RouterSettings().metrics_tenant_label == "off"
    monkeypatch.setenv("LEDGERGATE_METRICS_ENABLED", "false")
    monkeypatch.setenv("LEDGERGATE_METRICS_TENANT_LABEL", "top")
    assert not ProjectorSettings().metrics_enabled and ApiSettings().metrics_tenant_label == "top"
    for bad in ({"metrics_tenant_label": "some"}, {"metrics_tenant_top_n": 0}, {"metrics_tenant_top_n": 501},
                {"metrics_lag_interval_ms": 10}):
        with pytest.raises(ValidationError):
            RouterSettings(**bad)


def test_the_runtime_options_carry_the_statistics_interval() -> None:
    from ledgergate.shared.kafka.options import options_for

    assert options_for("router", RouterSettings(), ["t"]).statistics_interval_ms == 5000
    assert options_for("router", RouterSettings(metrics_lag_interval_ms=1000), ["t"]).statistics_interval_ms == 1000
    assert options_for("router", RouterSettings(metrics_enabled=False), ["t"]).statistics_interval_ms == 0
