"""The policy's view of a tenant's burn survives rebalances: a partition moved to a second policy
instance and back is folded from scratch, not on top of what the first instance already held (which
double-counted the burn and downgraded a tenant at 45 % as if it were at 90 %)."""

from __future__ import annotations

import time
from pathlib import Path

from ledgergate.tools.servicerunner import ServiceSet
from tests.e2e.conftest import Gate

USD = 1_000_000
SMALL = [{"role": "user", "content": "ok?"}]


def _rebuilds(gate: Gate) -> int:
    return gate.services.log_path("policy").read_text().count('"policy_state_rebuilt"')


def _wait(what: str, check, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


def test_a_partition_moved_away_and_back_does_not_double_the_burn(gate: Gate, tmp_path: Path) -> None:
    tenant = "rebal"
    gate.client.send_command(tenant, "SET_LIMIT", 1 * USD)
    d = gate.client.request(tenant, SMALL, "gpt-4o", 100, timeout_s=30)
    assert d["outcome"] == "ALLOW", d
    # 45 % of the budget: 45,000 output tokens of gpt-4o at $10/M.
    gate.client.complete(tenant, d["request_id"], "gpt-4o",
                         {"input_tokens": 0, "cached_input_tokens": 0, "output_tokens": 45_000, "reasoning_tokens": 0})
    _wait("spend posted", lambda: gate.reported().get(tenant, {}) and any(
        b.get("posted_micro_usd", 0) >= 450_000 for b in gate.reported()[tenant].values()))
    time.sleep(1.0)  # the policy folds the same settlement from budget.ledger

    before = _rebuilds(gate)
    second = ServiceSet({"LEDGERGATE_KAFKA_BOOTSTRAP": gate.kafka.kafka_bootstrap,
                         "LEDGERGATE_TOPIC_PREFIX": gate.kafka.topic_prefix, "LEDGERGATE_INSTANCE_ID": "1"},
                        tmp_path / "policy-2")
    with second:
        second.start(["policy"])
        _wait("the second instance joined", lambda: "partitions_assigned" in second.tail("policy", 200))
        _wait("the first instance rebalanced", lambda: _rebuilds(gate) > before)
    # The second instance left: the first takes every partition back and folds them again.
    _wait("the first instance took the partitions back", lambda: _rebuilds(gate) >= before + 2)

    # Burn is 45 %, under NORMAL's 80 % rule: the premium model stays allowed. Doubled, it would be
    # 90 % (or 135 %) and the request would be downgraded.
    for _ in range(3):
        d = gate.client.request(tenant, SMALL, "gpt-4o", 100, priority="NORMAL", timeout_s=30)
        assert d["outcome"] == "ALLOW" and d["deployment"]["model"] == "gpt-4o", d
