"""Steady traffic against the gate while its instances come and go, and the invariants checked after:
shared by the zombie tests (one instance paused and woken) and the scale-out test (instances joining,
leaving and killed)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ledgergate import topics
from ledgergate.tools.replay import AuditReplay, ReplayOptions
from tests.e2e.conftest import Projected
from tests.e2e.readmodel import wait_ledger_quiet, wait_projection_matches

LIMIT_MICRO_USD = 5_000  # a few gpt-4o calls, then downgrades, then denials: the limits bind
MESSAGES = [{"role": "user", "content": "Summarise the incident timeline in three lines."}]


def owned_by(log: Path) -> set[str] | None:
    """What a log says the instance owns now: the running union of its `partitions_assigned` lines
    (partition numbers, or under cooperative assignment the topic:partition keys, which arrive as
    increments) less its `partitions_revoked` lines, since the last life began; None before its first
    assignment."""
    owned: set[str] | None = None
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        if '"stream_starting"' in line:  # a new life (after a kill -9 nothing was revoked)
            owned = None
        elif '"partitions_assigned"' in line or '"partitions_revoked"' in line:
            rec = json.loads(line)
            named = {str(p) for p in rec.get("topic_partitions") or rec.get("partitions") or []}
            owned = (owned or set()) | named if rec["event"] == "partitions_assigned" else (owned or set()) - named
    return owned


def wait_for(what: str, check: Any, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


class Traffic(threading.Thread):
    """Requests at `rate_per_s` over `tenants` until halted; a second thread settles each allowed one as its
    decision arrives, so spend is posted while the traffic runs and the limits bind."""

    def __init__(self, projected: Projected, tenants: list[str], rate_per_s: float) -> None:
        super().__init__(daemon=True)
        self.gate = projected.gate
        self.tenants = tenants
        self.rate_per_s = rate_per_s
        self.futures: list[Any] = []
        self.decisions: list[dict[str, Any]] = []
        self.halt = threading.Event()
        self.settler = threading.Thread(target=self._settle, daemon=True)

    def set_limits(self) -> None:
        for tenant in self.tenants:
            self.gate.client.send_command(tenant, "SET_LIMIT", LIMIT_MICRO_USD)

    def run(self) -> None:
        self.settler.start()
        i = 0
        started = time.monotonic()
        while not self.halt.is_set():
            tenant = self.tenants[i % len(self.tenants)]
            self.futures.append(self.gate.client.submit(tenant, MESSAGES, "gpt-4o", 200, timeout_s=240))
            i += 1
            time.sleep(max(0.0, started + i / self.rate_per_s - time.monotonic()))

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

    def stop_and_settle(self) -> list[dict[str, Any]]:
        self.halt.set()
        self.join()
        self.settler.join(timeout=320)
        assert not self.settler.is_alive(), "decisions still outstanding"
        return self.decisions


def check_invariants(projected: Projected, traffic: Traffic, decisions: list[dict[str, Any]]) -> None:
    """After the churn, with one instance of each service owning every partition again."""
    gate = projected.gate
    # Invariant 4: every request decided; copies of a decision identical (a router replaying a batch it
    # had published before a kill or a fence writes the same bytes again, docs/decisions/0006).
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
    # expired while a pause or a kill held its decision back is still charged when it settles, flagged as
    # overage). The fold asserts the same after every entry.
    fold = gate.fold()
    overage: Counter[str] = Counter()
    for _, n, r in ledger:
        if n == "ReservationSettled":
            overage[r["tenant_id"]] += r["overage_micro_usd"]
    for tenant in traffic.tenants:
        b = fold[tenant][next(scope for scope in fold[tenant] if scope.endswith(f"/TENANT/{tenant}"))]
        assert b["posted_micro_usd"] + b["pending_micro_usd"] - overage[tenant] <= b["limit_micro_usd"], \
            f"{tenant} overspent: {b}, overage {overage[tenant]}"

    # The audit chain neither forks nor gaps, and covers the ledger.
    report = AuditReplay(ReplayOptions(gate.kafka.kafka_connection, gate.kafka.topic(topics.AUDIT),
                                       gate.kafka.topic(topics.LEDGER))).run()
    assert report["ok"] and report["coverage_problems"] == 0, report

    # Invariant 3: the fold equals the service's balances and the PostgreSQL projection.
    gate.wait_fold_matches_service()
    wait_projection_matches(projected)
