"""Scale-out: two instances of each of the four services and two projectors share the partitions while
steady traffic flows, and every few seconds an instance leaves (SIGTERM), joins, or dies (kill -9) and
is started again. Afterwards, with one instance of each owning everything again: every request decided
(copies of a decision identical), one reservation and at most one settlement per request id, no
overspend, the audit chain verified, and the ledger fold equal to the budget-manager's balances and to
the PostgreSQL projection."""

from __future__ import annotations

import time
from pathlib import Path

from ledgergate.tools.servicerunner import GATE_SERVICES, instance_name
from tests.conftest import TEST_PARTITIONS
from tests.e2e.conftest import Projected
from tests.e2e.fleet import Traffic, check_invariants, owned_by, wait_for

SERVICES = [*GATE_SERVICES, "projector"]
TENANTS = [f"scale-{i}" for i in range(12)]
RATE_PER_S = 30
CHURN_EVERY_S = 3.0
# (what, which): "kill9" kills the instance and starts it again at once (the same instance id, so its
# transactional id fences what the dead one left open); "stop" leaves the group cleanly; "start" rejoins.
CHURN = [("kill9", "budget-manager"), ("stop", "router@1"), ("kill9", "token-counter@1"), ("start", "router@1"),
         ("stop", "policy"), ("kill9", "projector@1"), ("start", "policy"), ("kill9", "router"),
         ("stop", "budget-manager@1"), ("start", "budget-manager@1")]


# Under cooperative assignment the log names topic:partition: the projector reads three topics; the others
# (the token-counter too, since it folds tenant.credentials) are range-assigned and log partition numbers.
COOPERATIVE_TOPICS = {"projector": 3}


def _owns_all(log: Path, name: str) -> bool:
    return len(owned_by(log) or ()) == COOPERATIVE_TOPICS.get(name, 1) * TEST_PARTITIONS


def test_instances_join_leave_and_die_under_load(projected: Projected, tmp_path: Path) -> None:
    services = projected.gate.services
    seconds = [instance_name(s, 1) for s in SERVICES]
    services.env_for["budget-manager@1"] = {"LEDGERGATE_STATE_DUMP_PATH": str(tmp_path / "second-state.json")}
    traffic = Traffic(projected, TENANTS, RATE_PER_S)
    traffic.set_limits()
    services.start(seconds)
    wait_for("every second instance owns partitions", lambda: all(owned_by(services.log_path(n)) for n in seconds))
    wait_for("every first instance kept some", lambda: all(owned_by(services.log_path(n)) for n in SERVICES))
    traffic.start()
    try:
        for what, name in CHURN:
            time.sleep(CHURN_EVERY_S)
            if what == "kill9":
                services.kill9(name)
                services.start([name])
            elif what == "stop":
                services.stop(name)
            else:
                services.start([name])
        time.sleep(CHURN_EVERY_S)
    finally:
        decisions = traffic.stop_and_settle()
    assert len(decisions) == len(traffic.futures) > RATE_PER_S * len(CHURN) * CHURN_EVERY_S * 0.8

    # The second instances leave; the first own every partition again, and the checks read one of each.
    for name in seconds:
        services.stop(name)
    for name in SERVICES:
        wait_for(f"{name} owns every partition again", lambda n=name: _owns_all(services.log_path(n), n))
    check_invariants(projected, traffic, decisions)
