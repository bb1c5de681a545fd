"""Data locality and regional budgets end to end: a tenant whose policy allows only eu-west is served
there whatever its caller's region, a model no allowed region serves (nor its downgrades) is DENY
data_locality naming the regions, and a REGION budget binds like any other scope."""

from __future__ import annotations

import json
import time
import uuid

from tests.e2e.conftest import Gate

USD = 1_000_000
SMALL = [{"role": "user", "content": "Where is my data processed?"}]


def test_allowed_regions_and_a_region_budget(gate: Gate) -> None:
    tenant = f"rg-{uuid.uuid4().hex[:10]}"
    gate.client.send_command(tenant, "SET_LIMIT", 100 * USD, scope_id=tenant)
    gate.client.send_command(tenant, "SET_POLICY", policy_json=json.dumps({"allowed_regions": ["eu-west"]}))
    deadline = time.monotonic() + 60
    while True:  # until the policy is in force (SET_POLICY travels through the ledger)
        d = gate.client.request(tenant, SMALL, "gpt-4o", 200, region="us-east", timeout_s=30)
        assert d["outcome"] == "ALLOW", d
        if d["deployment"]["region"] == "eu-west":
            break
        assert time.monotonic() < deadline, "the caller's region was still chosen"
    # gpt-4.1 and its downgrades (gpt-4.1-mini, gpt-4.1-nano) are served in us-east only
    far = gate.client.request(tenant, SMALL, "gpt-4.1", 200, region="eu-west", timeout_s=30)
    assert (far["outcome"], far["reason_codes"], far["binding_scope"]) == ("DENY", ["data_locality"], "regions:eu-west")
    # a REGION budget smaller than one call: the region binds, named
    gate.client.send_command(tenant, "SET_LIMIT", 1, scope_type="REGION", scope_id="eu-west")
    while True:
        d = gate.client.request(tenant, SMALL, "gpt-4o", 200, region="eu-west", timeout_s=30)
        if d["outcome"] == "DENY":
            break
        assert d["outcome"] == "ALLOW" and time.monotonic() < deadline, d
    assert (d["reason_codes"], d["binding_scope"]) == (["budget_exhausted"], "region:eu-west"), d
