"""Zombies: a transactional or single-writer instance is paused (SIGSTOP) until its partitions move to
a second instance, the second takes traffic, then the first is woken (SIGCONT) in the middle of what it
was doing. Its transaction (or, for the projector, its compare-and-set on stored offsets) is fenced:
no request gets two reservations or two different decisions, no tenant overspends, the audit chain
neither forks nor gaps (the replay verifies it), and the ledger fold equals both the budget-manager's
balances and the PostgreSQL projection."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from ledgergate.tools.servicerunner import ServiceSet
from tests.e2e.conftest import Projected
from tests.e2e.fleet import Traffic, check_invariants, owned_by, wait_for

TENANTS = [f"zombie-{i}" for i in range(8)]
RATE_PER_S = 40
PARTITIONS = 6


@pytest.mark.parametrize("victim", ["budget-manager", "router", "projector"])
def test_a_woken_zombie_is_fenced(projected: Projected, tmp_path: Path, victim: str) -> None:
    gate = projected.gate
    traffic = Traffic(projected, TENANTS, RATE_PER_S)
    traffic.set_limits()
    env = {"LEDGERGATE_KAFKA_BOOTSTRAP": gate.kafka.kafka_bootstrap, "LEDGERGATE_TOPIC_PREFIX": gate.kafka.topic_prefix,
           "LEDGERGATE_INSTANCE_ID": "1", "LEDGERGATE_PG_DSN": projected.dsn,
           "LEDGERGATE_STATE_DUMP_PATH": str(tmp_path / "second-state.json")}
    second = ServiceSet(env, tmp_path / "second")
    first_log = gate.services.log_path(victim)
    zombie_pid = gate.services.pid(victim)
    assert zombie_pid is not None
    every = 3 * PARTITIONS if victim == "projector" else PARTITIONS  # the projector names topic:partition
    with second:
        second.start([victim])
        wait_for("the second instance shares the partitions", lambda: bool(owned_by(second.log_path(victim))))
        time.sleep(1.0)  # the first instance's side of the rebalance (its rebuild) done too
        traffic.start()
        time.sleep(2.0)
        os.kill(zombie_pid, signal.SIGSTOP)
        try:
            # session.timeout.ms passes without a heartbeat: the coordinator hands everything to the second.
            wait_for("the second instance owns every partition",
                  lambda: len(owned_by(second.log_path(victim)) or ()) == every)
            time.sleep(3.0)  # the second decides (or projects) traffic the zombie had polled before it froze
        finally:
            os.kill(zombie_pid, signal.SIGCONT)
        time.sleep(6.0)  # the woken zombie finishes its batch, is fenced, rejoins
        decisions = traffic.stop_and_settle()
    # The second instance left: the first (or its restarted successor) owns every partition again.
    wait_for("the first instance owns every partition again", lambda: len(owned_by(first_log) or ()) == every)
    assert len(decisions) == len(traffic.futures) > RATE_PER_S * 10
    check_invariants(projected, traffic, decisions)
