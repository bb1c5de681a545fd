"""The demo's integrations act prints one line per call and where the proxy is (tools/demo_integrations.py)."""

from __future__ import annotations

from ledgergate.tools.demo_integrations import format_rows


def test_the_act_prints_a_row_per_call_and_the_proxys_address() -> None:
    act = {"rows": [{"via": "gated OpenAI client", "asked": "gpt-4o", "outcome": "granted", "model": "gpt-4o",
                     "tokens": 80},
                    {"via": "proxy, a tenant with no budget", "asked": "gpt-4o",
                     "outcome": "402 denied by budget: no_budget (bound by tenant:x)", "model": "", "tokens": 0}],
           "proxy": "http://127.0.0.1:8100/v1", "tenant_key": "lgk_x"}
    text = format_rows(act)
    assert "gated OpenAI client" in text and "402 denied by budget" in text and "http://127.0.0.1:8100/v1" in text
    assert "skipped" in format_rows(None)
