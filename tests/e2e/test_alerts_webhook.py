"""Thresholds end to end: spend through the gate crosses 50 % and 80 % of a tenant's budget, the
budget-manager writes budget.alerts, and the alerter (its own process) POSTs each to a real webhook."""

from __future__ import annotations

import time
from pathlib import Path

from ledgergate.tools.servicerunner import ServiceSet
from tests.e2e.conftest import Gate
from tests.webhook import webhook

USD = 1_000_000
PROMPT = [{"role": "user", "content": "Draft the quarterly budget note."}]


def test_threshold_crossings_reach_the_webhook_once_each(gate: Gate, tmp_path: Path) -> None:
    with webhook(lambda n: 200) as hook:
        alerter = ServiceSet({"LEDGERGATE_KAFKA_BOOTSTRAP": gate.kafka.kafka_bootstrap,
                              "LEDGERGATE_TOPIC_PREFIX": gate.kafka.topic_prefix,
                              "LEDGERGATE_ALERT_WEBHOOK_URL": hook.url}, tmp_path / "alerter-logs")
        alerter.start(["alerter"])
        try:
            gate.client.send_command("alerty", "SET_LIMIT", 1 * USD)
            # gpt-4o output at $10/M: 55,000 tokens = 0.55 USD (50 % crossed), then 30,000 more (80 %).
            for output_tokens in (55_000, 30_000):
                d = gate.client.request("alerty", PROMPT, "gpt-4o", 100, priority="HIGH", timeout_s=30)
                assert d["outcome"] in ("ALLOW", "DOWNGRADE"), d
                gate.client.complete("alerty", d["request_id"], d["deployment"]["model"],
                                     {"input_tokens": 0, "cached_input_tokens": 0, "output_tokens": output_tokens,
                                      "reasoning_tokens": 0})
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(hook.bodies()) < 2:
                time.sleep(0.2)
            bodies = hook.bodies()
            assert [(b["tenant_id"], b["scope_type"], b["threshold_pct"]) for b in bodies] == [
                ("alerty", "TENANT", 50), ("alerty", "TENANT", 80)], bodies
            assert bodies[1]["spent_micro_usd"] >= 800_000 and bodies[1]["limit_usd"] == "1.000000"
            time.sleep(1.0)
            assert len(hook.bodies()) == 2, "each threshold once"
        finally:
            alerter.stop_all()
