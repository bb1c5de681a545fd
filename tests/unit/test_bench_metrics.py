"""`ledgergate bench metrics`' parts that need no broker: the per-side averages and ratios, its table,
and the router's handler figure in-process (real handler, synthetic ledger entries). The gate runs
themselves are the same GateBench the smoke bench checks (tests/e2e/test_bench_smoke.py)."""

from __future__ import annotations

from typing import Any

from ledgergate.shared import metrics
from ledgergate.tools.bench import metrics_cost, report


def _gate(saturated: float, p50: float, router_us: int) -> dict[str, Any]:
    return {"max": {"highest_sustained_per_s": 1000.0, "throughput_when_saturated_per_s": saturated},
            "rate": {"latency_ms": {"p50": p50, "p99": 4 * p50}, "sustained": True,
                     "cpu_us_per_decision": {"router": router_us, "policy": 100, "kafka": 900}}}


def test_sides_are_averaged_and_compared_as_ratios() -> None:
    runs = [{"metrics_enabled": e, "summary": metrics_cost._summary(_gate(s, p, r))}
            for e, s, p, r in ((True, 1900.0, 9.0, 210), (False, 2000.0, 8.0, 200),
                               (False, 2000.0, 8.0, 200), (True, 1940.0, 9.0, 190))]
    on = metrics_cost._side([r for r in runs if r["metrics_enabled"]])
    off = metrics_cost._side([r for r in runs if not r["metrics_enabled"]])
    assert on["saturated_per_s"] == 1920.0 and off["saturated_per_s"] == 2000.0
    assert on["rate_cpu_us_per_decision"]["router"] == 200 and "kafka" not in on["rate_cpu_us_per_decision"]
    assert on["rate_cpu_us_per_decision_services"] == 300
    assert metrics_cost._ratio(on["saturated_per_s"], off["saturated_per_s"]) == 0.96
    assert metrics_cost._ratio(None, 1.0) is None and metrics_cost._ratio(1.0, 0) is None
    cost = {"order": ["on", "off", "off", "on"], "with": on, "without": off,
            "ratios": {"saturated_throughput": 0.96}, "scrape": {"render_ms": 1.5, "bytes": 1000},
            "handler": {"rounds": 2, "router_handle_us_with": 110.0, "router_handle_us_without": 100.0,
                        "ratio": 1.1, "median_ratio": 1.1}}
    text = "\n".join(report._metrics(cost) + report.targets({"metrics": cost}))
    assert "METRICS COST" in text and "0.960" in text and "MISSES target" in text  # 4 % > the 3 % allowed


def test_handler_figure_runs_the_real_router_both_ways() -> None:
    figure = metrics_cost.handler_cost(count=50, rounds=2)
    assert figure["router_handle_us_with"] > 0 and figure["router_handle_us_without"] > 0
    assert metrics.active() is None  # it leaves the process's metrics off
    assert metrics_cost.scrape_cost(repeats=2)["bytes"] > 0
