"""The demo's spike: the last tenant's share of requests jumps inside SPIKE_SPAN only, and the summary lists
the anomaly alerts."""

from __future__ import annotations

from ledgergate.tools import demo


def test_the_last_tenant_spikes_inside_the_span_only() -> None:
    names = [f"{t}-x" for t in demo.TENANTS]
    work = demo.build_workload(names, 300, 3000, 42)
    first, last = (int(f * len(work.schedule)) for f in demo.SPIKE_SPAN)

    def share(lo: int, hi: int) -> float:
        picks = work.schedule[lo:hi]
        return sum(work.agents[a].tenant == names[-1] for a, *_ in picks) / len(picks)

    before, during = share(0, first), share(first, last)
    assert 0.05 < before < 0.2, before
    assert during > 4 * before, (before, during)


def test_the_summary_lists_the_anomaly_alerts() -> None:
    summary = {"run": "r", "requests": 1, "elapsed_s": 1.0, "offered_rate_per_s": 1, "decisions": 1, "timeouts": 0,
               "errors": 0, "outcomes": {"ALLOW": 1}, "tenants": {}, "workflow_budgets_usd": {},
               "denials_by_scope": {}, "completions": {}, "downgrades": 0,
               "latency_ms": {"p50": 1.0, "p99": 1.0, "max": 1.0},
               "anomalies": [{"tenant_id": "hooli-x", "scope_type": "TENANT", "scope_id": "hooli-x",
                              "metric": "spend_micro_usd_per_min", "observed_per_min": 2_500_000,
                              "expected_per_min": 400_000}]}
    text = demo.format_summary(summary)
    assert "anomaly alerts (budget.alerts, kind ANOMALY): 1" in text
    assert "hooli-x" in text and "$2.5000/min" in text and "$0.4000/min" in text
