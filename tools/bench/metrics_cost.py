"""What the Prometheus metrics cost the hot path (`ledgergate bench metrics`): the gate's max search and
fixed-rate run with the services' metrics on (the default) and off (LEDGERGATE_METRICS_ENABLED=false:
nothing recorded), in the order on, off, off, on (ABBA), so that a machine that warms up or gets busier
during the run weighs on both sides alike. The smoke run does one pair.

Three figures, each as with / without: the throughput while saturated (decisions/s at the first step the
gate could not sustain: a capacity figure, unlike the highest sustained step, which moves in steps of
2x), the fixed-rate run's p50 and p99, and the CPU per decision of each service at the fixed rate. Plus
two that no broker noise reaches: the router's handler on the same synthetic ledger entries in this
process, on and off alternately (the best of several rounds each), and what one scrape costs the scrape
thread (render of a populated registry).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

from ledgergate.codec import codec
from ledgergate.shared import metrics
from ledgergate.shared.kafka.headers import Headers
from ledgergate.shared.kafka.outbox import Outbox
from ledgergate.shared.ledger.entries import ReservationPlaced, to_record
from ledgergate.shared.settings import KafkaSettings, RouterSettings
from ledgergate.tools.bench.gate import GateBench, GateOptions, say

SERVICES = ("token-counter", "policy", "budget-manager", "router")


def _summary(gate: dict[str, Any]) -> dict[str, Any]:
    m, rate = gate.get("max", {}), gate.get("rate", {})
    return {"highest_sustained_per_s": m.get("highest_sustained_per_s"),
            "saturated_per_s": m.get("throughput_when_saturated_per_s"),
            "rate_p50_ms": rate.get("latency_ms", {}).get("p50"), "rate_p99_ms": rate.get("latency_ms", {}).get("p99"),
            "rate_sustained": rate.get("sustained"),
            "rate_cpu_us_per_decision": {k: v for k, v in rate.get("cpu_us_per_decision", {}).items() if k in SERVICES}}


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def _side(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs of one side (on or off), averaged."""
    sums = [r["summary"] for r in runs]
    cpu = {s: _mean([x["rate_cpu_us_per_decision"].get(s) for x in sums]) for s in SERVICES}
    return {"runs": len(runs), **{k: _mean([x[k] for x in sums]) for k in
                                  ("highest_sustained_per_s", "saturated_per_s", "rate_p50_ms", "rate_p99_ms")},
            "rate_cpu_us_per_decision": cpu,
            "rate_cpu_us_per_decision_services": sum(v for v in cpu.values() if v is not None)}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 4)


@dataclass
class _Message:
    """What the router's handler reads of a consumed message."""

    _value: bytes
    _offset: int
    _headers: Headers

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return b"bench-tenant"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def topic(self) -> str:
        return "bench.budget.ledger"

    def headers(self) -> Headers:
        return self._headers


def _ledger_messages(count: int) -> list[_Message]:
    now_us = time.time_ns() // 1000
    out = []
    for i in range(count):
        entry = ReservationPlaced(
            entry_id=f"r{i}/reservation", tenant_id="bench-tenant", period_id="2026-12", recorded_at_ms=now_us // 1000,
            request_id=f"r{i}", workflow_id="", agent_id="agent", requested_model="gpt-4o-mini", model="gpt-4o-mini",
            tier="standard", candidate_index=0, amount_micro_usd=1_000, input_tokens=100, granted_output_tokens=256,
            price_version="2026-11-01", policy_version=1, priority="NORMAL", region=None, expires_at_ms=0,
            request_sha256="0" * 64, requested_at_ms=now_us // 1000, tenant_remaining_micro_usd=1_000_000)
        headers: Headers = [("request_id", f"r{i}".encode())]
        headers += [(f"lg-t-{stage}", str(now_us + 1000 * k).encode())
                    for k, stage in enumerate(("send", "count", "policy", "budget"))]
        out.append(_Message(codec().encode(*to_record(entry)), i, headers))
    return out


def handler_cost(count: int = 2000, rounds: int = 8) -> dict[str, Any]:
    """Microseconds per decision in the router's handler, metrics on and off, in this process: the order
    alternates per round (on-off, off-on, ...) and the best and the median of the rounds are kept."""
    from ledgergate.services.router.app import Router

    messages = _ledger_messages(count)
    runs: dict[bool, list[float]] = {True: [], False: []}
    for i in range(rounds):
        for enabled in ((True, False) if i % 2 == 0 else (False, True)):
            metrics.configure("router", RouterSettings(metrics_enabled=enabled))
            router = Router(RouterSettings(remembered_decisions=0))
            out = Outbox()
            started = time.perf_counter()
            for msg in messages:
                router.handle(msg, out)  # type: ignore[arg-type]
            runs[enabled].append((time.perf_counter() - started) * 1e6 / count)
    metrics.configure("bench", RouterSettings(metrics_enabled=False))
    best = {k: min(v) for k, v in runs.items()}
    median = {k: statistics.median(v) for k, v in runs.items()}
    return {"router_handle_us_with": round(best[True], 2), "router_handle_us_without": round(best[False], 2),
            "ratio": round(best[True] / best[False], 4), "median_ratio": round(median[True] / median[False], 4),
            "decisions": count, "rounds": rounds}


def scrape_cost(repeats: int = 20) -> dict[str, Any]:
    """Milliseconds one /metrics render takes for a router-sized registry (on the HTTP thread, not the loop)."""
    m = metrics.Metrics("bench", known_models=frozenset({"gpt-4o", "gpt-4o-mini"}))
    for outcome in ("ALLOW", "DOWNGRADE", "DENY", "THROTTLE"):
        for model in ("gpt-4o", "gpt-4o-mini", "none"):
            for reason in ("within_budget", "downgraded_by_budget", "budget_exhausted", "rate_limited"):
                m.decisions.add((outcome, "standard", model, reason))
    for stage in ("count", "policy", "budget", "route"):
        m.hop_latency.observe((stage,), 0.002)
    for p in range(12):
        m.lag.set(("g", "budget.ledger", str(p)), 0)
    from prometheus_client import generate_latest

    started = time.perf_counter()
    for _ in range(repeats):
        size = len(generate_latest(m.registry))
    return {"render_ms": round((time.perf_counter() - started) * 1000 / repeats, 3), "bytes": size}


def run_metrics_cost(kafka: KafkaSettings, base: GateOptions, pairs: int) -> dict[str, Any]:
    """`pairs` = 1: on, off; 2: on, off, off, on."""
    order = [True, False] if pairs == 1 else [True, False, False, True]
    runs = []
    for i, enabled in enumerate(order):
        say(f"metrics: run {i + 1}/{len(order)}, services with metrics {'on' if enabled else 'off'}")
        opts = GateOptions(**{**vars(base), "env": {**base.env,
                                                    "LEDGERGATE_METRICS_ENABLED": "true" if enabled else "false"}})
        gate = GateBench(kafka, opts).run()
        runs.append({"metrics_enabled": enabled, "order": i, "summary": _summary(gate), "gate": gate})
    on, off = _side([r for r in runs if r["metrics_enabled"]]), _side([r for r in runs if not r["metrics_enabled"]])
    return {"order": ["on" if e else "off" for e in order], "with": on, "without": off, "runs": runs,
            "ratios": {"saturated_throughput": _ratio(on["saturated_per_s"], off["saturated_per_s"]),
                       "highest_sustained": _ratio(on["highest_sustained_per_s"], off["highest_sustained_per_s"]),
                       "rate_p50": _ratio(on["rate_p50_ms"], off["rate_p50_ms"]),
                       "rate_p99": _ratio(on["rate_p99_ms"], off["rate_p99_ms"]),
                       "rate_cpu_per_decision": _ratio(on["rate_cpu_us_per_decision_services"],
                                                       off["rate_cpu_us_per_decision_services"])},
            "scrape": scrape_cost(), "handler": handler_cost()}
