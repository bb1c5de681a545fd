"""Token-rate limits end to end: a workflow over its tokens per minute is THROTTLE rate_limited with a
retry_after_ms and the window named; another workflow of the same tenant is not limited by it."""

from __future__ import annotations

import json
import time
import uuid

from tests.e2e.conftest import Gate

USD = 1_000_000
SMALL = [{"role": "user", "content": "Summarise the ledger."}]
POLICY = {"token_rate_limits": [{"per": "workflow", "count": "output", "tokens_per_min": 700}]}


def test_a_workflow_over_its_tokens_per_minute_is_throttled(gate: Gate) -> None:
    tenant = f"tr-{uuid.uuid4().hex[:10]}"
    gate.client.send_command(tenant, "SET_LIMIT", 100 * USD, scope_id=tenant)
    gate.client.send_command(tenant, "SET_POLICY", policy_json=json.dumps(POLICY))
    deadline = time.monotonic() + 60
    while True:  # until the policy is in force (SET_POLICY travels through the ledger)
        d = gate.client.request(tenant, SMALL, "gpt-4o-mini", 500, workflow_id="support", timeout_s=30)
        if d["outcome"] == "THROTTLE":
            break
        assert d["outcome"] == "ALLOW", d
        assert time.monotonic() < deadline, "never throttled at 700 output tokens/min"
    assert d["retry_after_ms"] > 0 and d["binding_scope"] == "tokens_per_min:workflow:support:output"
    other = gate.client.request(tenant, SMALL, "gpt-4o-mini", 500, workflow_id="billing", timeout_s=30)
    assert other["outcome"] == "ALLOW", other
    big = gate.client.request(tenant, SMALL, "gpt-4o-mini", 900, workflow_id="ops", timeout_s=30)
    assert big["outcome"] == "DENY", big


def test_a_restarted_policy_service_rebuilds_its_windows_from_the_ledger(gate: Gate) -> None:
    tenant = f"tr-{uuid.uuid4().hex[:10]}"
    gate.client.send_command(tenant, "SET_LIMIT", 100 * USD, scope_id=tenant)
    gate.client.send_command(tenant, "SET_POLICY", policy_json=json.dumps(POLICY))
    deadline = time.monotonic() + 60
    while True:  # fill the window until the limit binds
        d = gate.client.request(tenant, SMALL, "gpt-4o-mini", 300, workflow_id="support", timeout_s=30)
        if d["outcome"] == "THROTTLE":
            break
        assert d["outcome"] == "ALLOW" and time.monotonic() < deadline, d
    gate.services.kill9("policy")
    gate.services.restart("policy")
    gate.wait_ready(["policy"])
    # The new process knows nothing of the plans it did not make: only the ledger's last minute tells it.
    after = gate.client.request(tenant, SMALL, "gpt-4o-mini", 300, workflow_id="support", timeout_s=60)
    assert after["outcome"] == "THROTTLE", after
    assert after["binding_scope"] == "tokens_per_min:workflow:support:output"
