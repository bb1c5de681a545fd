"""Zombies: a transactional or single-writer instance is paused (SIGSTOP) until its partitions move to
a second instance, the second takes traffic, then the first is woken (SIGCONT) in the middle of what it
was doing. Its transaction (or, for the projector, its compare-and-set on stored offsets) is fenced:
no request gets two reservations or two different decisions, no tenant overspends, the audit chain
neither forks nor gaps (the replay verifies it), and the ledger fold equals both the budget-manager's
balances and the PostgreSQL projection."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ledgergate import topics
from ledgergate.tools.replay import AuditReplay, ReplayOptions
from ledgergate.tools.servicerunner import ServiceSet
from tests.e2e.conftest import Projected
from tests.e2e.readmodel import wait_ledger_quiet, wait_projection_matches

LIMIT_MICRO_USD = 5_000  # a few gpt-4o calls, then downgrades, then denials: the limits bind
MESSAGES = [{"role": "user", "content": "Summarise the incident timeline in three lines."}]
TENANTS = [f"zombie-{i}" for i in range(8)]
RATE_PER_S = 40
PARTITIONS = 6


def _assigned(log: Path) -> set[str] | None:
    """What a log says the instance owns now: the running union of its `partitions_assigned` lines
    (partition numbers, or under cooperative assignment the topic:partition keys, which arrive as
    increments) less its `partitions_revoked` lines; None before the first assignment."""
    owned: set[str] | None = None
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        if '"partitions_assigned"' in line or '"partitions_revoked"' in line:
            rec = json.loads(line)
            named = {str(p) for p in rec.get("topic_partitions") or rec.get("partitions") or []}
            owned = (owned or set()) | named if rec["event"] == "partitions_assigned" else (owned or set()) - named
    return owned


def _wait(what: str, check: Any, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


class _Traffic(threading.Thread):
    """Requests at RATE_PER_S until stopped; a second thread settles each allowed one as its decision
    arrives, so spend is posted while the traffic runs and the limits bind."""

    def __init__(self, projected: Projected) -> None:
        super().__init__(daemon=True)
        self.gate = projected.gate
        self.futures: list[Any] = []
        self.decisions: list[dict[str, Any]] = []
        self.halt = threading.Event()
        self.settler = threading.Thread(target=self._settle, daemon=True)

    def run(self) -> None:
        self.settler.start()
        i = 0
        started = time.monotonic()
        while not self.halt.is_set():
            tenant = TENANTS[i % len(TENANTS)]
            self.futures.append(self.gate.client.submit(tenant, MESSAGES, "gpt-4o", 200, timeout_s=240))
            i += 1
            time.sleep(max(0.0, started + i / RATE_PER_S - time.monotonic()))

    def _settle(self) -> None:
        done = 0
        while not (self.halt.is_set() and done == len(self.futures)):
            if done == len(self.futures):
                time.sleep(0.05)
                continue
            d = self.futures[done].result(timeout=300)
            done += 1
            self.decisions.append(d)
            if d["outcome"] in ("ALLOW", "DOWNGRADE"):
                self.gate.client.complete(d["tenant_id"], d["request_id"], d["deployment"]["model"], {
                    "input_tokens": 15, "cached_input_tokens": 0, "output_tokens": 120, "reasoning_tokens": 0})

    def settle_all(self) -> list[dict[str, Any]]:
        self.settler.join(timeout=320)
        assert not self.settler.is_alive(), "decisions still outstanding"
        return self.decisions


@pytest.mark.parametrize("victim", ["budget-manager", "router", "projector"])
def test_a_woken_zombie_is_fenced(projected: Projected, tmp_path: Path, victim: str) -> None:
    gate = projected.gate
    for tenant in TENANTS:
        gate.client.send_command(tenant, "SET_LIMIT", LIMIT_MICRO_USD)
    env = {"LEDGERGATE_KAFKA_BOOTSTRAP": gate.kafka.kafka_bootstrap, "LEDGERGATE_TOPIC_PREFIX": gate.kafka.topic_prefix,
           "LEDGERGATE_INSTANCE_ID": "1", "LEDGERGATE_PG_DSN": projected.dsn,
           "LEDGERGATE_STATE_DUMP_PATH": str(tmp_path / "second-state.json")}
    second = ServiceSet(env, tmp_path / "second")
    traffic = _Traffic(projected)
    first_log = gate.services.log_path(victim)
    zombie_pid = gate.services.pid(victim)
    assert zombie_pid is not None
    every = 3 * PARTITIONS if victim == "projector" else PARTITIONS  # the projector names topic:partition
    with second:
        second.start([victim])
        _wait("the second instance shares the partitions", lambda: bool(_assigned(second.log_path(victim))))
        time.sleep(1.0)  # the first instance's side of the rebalance (its rebuild) done too
        traffic.start()
        time.sleep(2.0)
        os.kill(zombie_pid, signal.SIGSTOP)
        try:
            # session.timeout.ms passes without a heartbeat: the coordinator hands everything to the second.
            _wait("the second instance owns every partition",
                  lambda: len(_assigned(second.log_path(victim)) or ()) == every)
            time.sleep(3.0)  # the second decides (or projects) traffic the zombie had polled before it froze
        finally:
            os.kill(zombie_pid, signal.SIGCONT)
        time.sleep(6.0)  # the woken zombie finishes its batch, is fenced, rejoins
        traffic.halt.set()
        traffic.join()
        decisions = traffic.settle_all()
    # The second instance left: the first (or its restarted successor) owns every partition again.
    _wait("the first instance owns every partition again", lambda: len(_assigned(first_log) or ()) == every)
    assert len(decisions) == len(traffic.futures) > RATE_PER_S * 10

    # Invariant 4: every request decided; copies of a decision identical.
    published: dict[str, list[dict[str, Any]]] = {}
    for d in gate.decisions():
        published.setdefault(d["request_id"], []).append(d)
    for fut in traffic.futures:
        copies = published[fut.request_id]
        assert all(c == copies[0] for c in copies), f"{fut.request_id} got different decisions: {copies}"

    # Invariant 2: one reservation and at most one settlement per request id.
    wait_ledger_quiet(projected)
    ledger = gate.ledger()
    placed = Counter(r["request_id"] for _, n, r in ledger if n == "ReservationPlaced")
    settled = Counter(r["request_id"] for _, n, r in ledger if n == "ReservationSettled")
    assert max(placed.values()) == 1 and max(settled.values()) == 1
    allowed = sum(d["outcome"] in ("ALLOW", "DOWNGRADE") for d in decisions)
    assert allowed and len(placed) == allowed and sum(d["outcome"] == "DENY" for d in decisions), \
        "the limits bind: some requests allowed, some denied"

    # No overspend (invariant 1): what is posted and held never passes a limit, overage aside (a hold that
    # expired while the pause held its decision back is still charged when it settles, flagged as overage).
    # The fold asserts the same after every entry.
    fold = gate.fold()
    overage = Counter()
    for _, n, r in ledger:
        if n == "ReservationSettled":
            overage[r["tenant_id"]] += r["overage_micro_usd"]
    for tenant in TENANTS:
        b = fold[tenant][next(scope for scope in fold[tenant] if scope.endswith(f"/TENANT/{tenant}"))]
        assert b["posted_micro_usd"] + b["pending_micro_usd"] - overage[tenant] <= b["limit_micro_usd"], \
            f"{tenant} overspent: {b}, overage {overage[tenant]}"

    # The audit chain neither forks nor gaps, and covers the ledger.
    report = AuditReplay(ReplayOptions(gate.kafka.kafka_bootstrap, gate.kafka.topic(topics.AUDIT),
                                       gate.kafka.topic(topics.LEDGER))).run()
    assert report["ok"] and report["coverage_problems"] == 0, report

    # Invariant 3: the fold equals the service's balances and the PostgreSQL projection.
    gate.wait_fold_matches_service()
    wait_projection_matches(projected)
