"""`ledgergate bench proxy`'s parts that need no broker: the summary maths, the table and target line, the
stand-in as its own process, and the bench modes the CLI offers. Speed itself is for BENCHMARKS.md."""

from __future__ import annotations

import argparse

import openai

from ledgergate.tools import cli
from ledgergate.tools.bench import proxy, report
from ledgergate.tools.bench.runner import MODES


def _samples() -> dict[str, list[int]]:
    # us; medians: direct 2,000, gate 10,000, proxy 15,000, direct_stream 4,000, proxy_stream 20,000
    return {"direct": [1_000, 2_000, 3_000], "gate": [9_000, 10_000, 30_000], "proxy": [14_000, 15_000, 40_000],
            "direct_stream": [4_000] * 3, "proxy_stream": [19_000, 20_000, 21_000]}


def test_the_proxy_is_charged_what_it_adds_over_the_direct_call_and_the_gate() -> None:
    out = proxy.summarise(_samples())
    via, stream = out["proxy"], out["proxy_stream"]
    assert via["proxy_added_ms_p50"] == 13.0 and via["gate_ms_p50"] == 10.0
    assert via["proxy_overhead_over_gate_ms_p50"] == 3.0 and not via["meets_target"]
    assert via["proxy_added_to_gate_p50"] == 1.3 and via["overhead_over_gate_to_gate_p50"] == 0.3
    assert via["paired_overhead_over_gate_ms_p50"] == 4.0  # the median of 14-1-9, 15-2-10, 40-3-30 ms
    low, high = via["overhead_over_gate_ms_p50_ci95"]
    assert low <= 3.0 <= high
    assert stream["proxy_added_ms_p50"] == 16.0 and stream["proxy_overhead_over_gate_ms_p50"] == 6.0
    assert out["latency_ms"]["gate"]["p50"] == 10.0 and out["latency_ms"]["gate"]["n"] == 3


def test_under_the_target_it_is_met_and_a_missing_mode_is_left_out() -> None:
    samples = {"direct": [2_000] * 5, "gate": [10_000] * 5, "proxy": [13_500] * 5}
    out = proxy.summarise(samples)
    assert out["proxy"]["proxy_overhead_over_gate_ms_p50"] == 1.5 and out["proxy"]["meets_target"]
    assert out["proxy"]["overhead_over_gate_ms_p50_ci95"] == [1.5, 1.5]  # no spread, no interval
    assert "proxy_stream" not in out
    assert "proxy" not in proxy.summarise({"direct": [1], "proxy": [2]})  # no gate beside it: no figure


def test_cpu_seconds_per_mode_become_microseconds_per_call() -> None:
    per_call = proxy.cpu_per_call_us({"proxy": {"proxy": 2.0, "kafka": 0.5}, "gate": {"proxy": 0.0}},
                                     {"proxy": 500, "gate": 0})
    assert per_call == {"proxy": {"proxy": 4000, "kafka": 1000}, "gate": {"proxy": 0}}


def test_the_table_and_the_target_line_carry_the_figures() -> None:
    figures = {**proxy.summarise(_samples()), "calls_per_mode": 3, "block": 1, "model": proxy.MODEL,
               "max_tokens": proxy.MAX_TOKENS, "cpu_us_per_call": {"proxy": {"proxy": 4000}}}
    text = "\n".join(report._proxy(figures) + report.targets({"proxy": figures}))
    assert "PROXY:" in text and "over the gate 3.00 ms" in text
    assert "proxy adds <= 2 ms p50 over the gate" in text and "MISSES target" in text


def test_the_standin_runs_as_its_own_process_and_answers_the_openai_package() -> None:
    standin = proxy.Standin()
    try:
        assert standin.proc.poll() is None and standin.base_url.startswith("http://127.0.0.1:")
        client = openai.OpenAI(base_url=standin.base_url, api_key="standin", max_retries=0, timeout=10)
        reply = client.chat.completions.create(model=proxy.MODEL, messages=proxy.ASK,  # type: ignore[arg-type]
                                               max_tokens=5)
        assert reply.usage is not None and reply.usage.completion_tokens == 5
        client.close()
    finally:
        standin.stop()
    assert standin.proc.returncode == 0  # it left when its stdin closed


def test_every_bench_mode_is_a_cli_choice() -> None:
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    mode = next(a for a in sub.choices["bench"]._actions if a.dest == "mode")
    assert mode.choices is not None and tuple(mode.choices) == MODES and "proxy" in MODES
