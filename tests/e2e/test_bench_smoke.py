"""`ledgergate bench --smoke`: the harness works end to end on the real stack. It checks that every
request is answered and every figure is present and positive, never how fast anything is (the
machine is shared; speed is for BENCHMARKS.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ledgergate.shared.settings import StackSettings
from ledgergate.tools import cli
from ledgergate.tools.bench.report import table as cli_report

pytestmark = pytest.mark.e2e


def _positive(figures: dict[str, Any], *keys: str) -> None:
    for key in keys:
        assert figures[key] > 0, f"{key} = {figures[key]!r}"


def test_bench_smoke_answers_every_request_and_reports_every_figure(stack: StackSettings, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--smoke", "--output", str(out)]) == 0
    r = json.loads(out.read_text())

    gate = r["gate"]
    steps = [gate["warmup"], *gate["max"]["steps"], gate["rate"]]
    for step in steps:
        assert step["sent"] == step["planned"] > 0 or step["aborted"], step["label"]
        assert step["missing"] == 0 and step["duplicates"] == 0, step["label"]
        assert step["decided"] == step["sent"] == sum(step["outcomes"].values()), step["label"]
        _positive(step, "decisions_per_s")
        _positive(step["latency_ms"], "p50", "p90", "p99", "p99_9", "max")
        assert step["completions_sent"] == step["outcomes"].get("ALLOW", 0) + step["outcomes"].get("DOWNGRADE", 0)
        for hop, figures in step["hops_ms"].items():
            assert figures["n"] == step["decided"], hop
            _positive(figures, "max")
        _positive(step["cpu"]["cpu_s"], "token-counter", "policy", "budget-manager", "router", "loadgen")
    for name in ("token-counter", "policy", "budget-manager", "router"):
        _positive(gate["processes"][name], "cpu_s", "peak_rss_mb")
    race = gate["race"]
    assert race["answered"] == race["requests"] and race["allowed"] == race["affordable"]
    assert race["overspend_micro_usd"] == 0  # invariant 1, read from the ledger

    floors = r["floors"]
    for name, echo in floors["echo"].items():
        assert echo["received"] == echo["sent"] > 0, name
        _positive(echo["latency_ms"], "p50", "p99")
    _positive(floors["tokenizer"]["tokens_per_s"], "raw", "count_chat", "count_request")
    _positive(floors["tokenizer"], "ratio_count_request_to_raw")

    led = r["ledger"]
    assert led["rebuild"]["entries"] == led["rebuild"]["generated"]["entries"] > 0
    _positive(led["rebuild"], "entries_per_s", "read_only_entries_per_s")
    _positive(led["rebuild"]["us_per_entry"], "kafka_read", "avro_decode", "from_record", "evolve")
    _positive(led["memory"], "bytes_per_tenant", "projected_1m_tenants_mb")
    _positive(led["memory_traced"], "bytes_per_tenant")
    _positive(led["memory_unpacked"], "bytes_per_tenant")

    # A cold start on a snapshotted ledger (and on an empty one beside it) reaches its first decision.
    restart = r["restart"]
    for run in (restart["empty_ledger"], restart["long_ledger"]):
        _positive(run, "first_decision_s")
    long = restart["long_ledger"]
    for run in r["egress"]["runs"]:  # every request decided, every client's bytes counted
        assert run["decisions"] > 0 and run["rx_bytes"] > 0, run
        assert run["partitions_read_per_client"] == (1 if run["mode"] == "tenant" else r["egress"]["partitions"])
    proxied = r["proxy"]  # direct, gate alone, through the proxy (and streamed): every call answered
    for mode, figures in proxied["latency_ms"].items():
        assert figures["n"] == proxied["calls_per_mode"] > 0, mode
        _positive(figures, "p50", "p99")
    assert set(proxied["latency_ms"]) == {"direct", "gate", "proxy", "direct_stream", "proxy_stream"}
    _positive(proxied["cpu_us_per_call"]["proxy"], "proxy")
    assert proxied["proxy"]["gate_ms_p50"] > 0 and len(proxied["proxy"]["overhead_over_gate_ms_p50_ci95"]) == 2
    cached = r["cache"]  # the cache-on tenant's repeats answered CACHE_HIT; the cache-off tenant never
    assert cached["hits"] > 0 and cached["hits_of_off"] == 0 and cached["avoided_micro_usd"] > 0, cached
    _positive(cached["latency_ms"]["on_miss"], "p50")
    _positive(cached["latency_ms"]["off"], "p50")
    assert long["ledger_entries"] > long["tail_entries"] > 0
    for name in ("budget-manager", "policy"):
        assert long["restored"][name]["snapshot_tenants"] > 0, long["restored"]
        assert long["restored"][name]["tail_entries"] == long["tail_entries"], long["restored"]

    base = r["baseline"]
    for run in (base["capacity"], base["rate"]):
        assert run["decided"] == run["sent"] > 0
        _positive(run, "decisions_per_s")
        _positive(run["latency_ms"], "p50", "p99")
    assert base["race"]["SELECT ... FOR UPDATE"]["overspend_micro_usd"] == 0

    # The hot-tenant shape through both: every request answered, the hot tenant sent about half of them,
    # and neither the ledger nor the baseline's rows show an overspend.
    hot, hot_base = r["hot"], r["hot_baseline"]
    for step in [hot["warmup"], *hot["max"]["steps"]]:
        assert step["missing"] == 0 and step["decided"] == step["sent"] > 0, step["label"]
    assert 0.4 <= hot["hot_tenant"]["share_of_requests"] <= 0.7, hot["hot_tenant"]
    assert hot["hot_tenant"]["overspend_micro_usd"] == 0
    assert hot_base["capacity"]["decided"] == hot_base["capacity"]["sent"] > 0
    assert hot_base["overspend_micro_usd"] == 0
    # Two instances of each service: every request answered once through the shared partitions.
    for step in [r["scale"]["warmup"], *r["scale"]["max"]["steps"]]:
        assert step["missing"] == 0 and step["decided"] == step["sent"] > 0, step["label"]
    report = cli_report(r)
    for target in ("PostgreSQL row lock", "4 plain relays", "p99 <=", "hot tenant: neither overspends",
                   "SCALE: the same max search with two instances", "PROXY:", "proxy adds <= 2 ms p50", "CACHE:"):
        assert target in report, target
    for phase in ("tokenizer", "memory", "echo", "gate", "scale", "baseline", "hot", "hot_baseline", "rebuild",
                  "proxy", "cache"):
        assert r["phases"][phase]["wall_s"] > 0
    _positive(r["machine"], "nproc", "memory_gb")
