"""End-to-end fixtures: the four services as real processes on fresh, prefixed topics."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.client import GateClient
from shared.codec import codec
from shared.kafka import topics as T
from shared.kafka.reader import read_to_end
from shared.ledger.entries import from_record
from shared.ledger.state import TenantState, balances_view, evolve
from shared.servicerunner import ServiceSet
from shared.settings import KafkaSettings

GATE_SERVICES = ["token-counter", "policy", "budget-manager", "router"]
RESERVATION_TTL_MS = 4000


@dataclass
class Gate:
    kafka: KafkaSettings
    services: ServiceSet
    client: GateClient
    state_dump: Path

    def _read(self, logical_topic: str) -> list[tuple[int, str, dict[str, Any]]]:
        """Every committed record of a topic, from offset 0: (partition, type, record)."""
        return [(m.partition(), *codec().decode(m.value()))
                for m in read_to_end(self.kafka.kafka_bootstrap, self.kafka.topic(logical_topic), list(range(6)))]

    def ledger(self) -> list[tuple[int, str, dict[str, Any]]]:
        return self._read(T.LEDGER)

    def fold(self) -> dict[str, dict[str, dict[str, int]]]:
        """Invariant 3: balances from folding budget.ledger from offset 0."""
        states: dict[str, TenantState] = {}
        for _, name, rec in self.ledger():
            state = states.setdefault(rec["tenant_id"], TenantState(rec["tenant_id"]))
            evolve(state, from_record(name, rec))
        return {tenant: balances_view(state) for tenant, state in states.items()}

    def reported(self) -> dict[str, Any]:
        return json.loads(self.state_dump.read_text()) if self.state_dump.exists() else {}

    def wait_fold_matches_service(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """The budget-manager's own balances equal the fold of the ledger, once it is quiet."""
        deadline = time.monotonic() + timeout_s
        fold, reported = {}, {}
        while time.monotonic() < deadline:
            # Tenants without any balance yet (a probe that was only denied) are left out on both sides.
            fold = {t: v for t, v in self.fold().items() if v}
            reported = {t: v for t, v in self.reported().items() if v}
            if fold and fold == reported:
                return fold
            time.sleep(0.5)
        raise AssertionError(f"service balances never matched the ledger fold:\nfold={fold}\nservice={reported}")

    def dead_letters(self) -> list[dict[str, Any]]:
        return [rec for _, _, rec in self._read(T.DEADLETTER)]

    def decisions(self) -> list[dict[str, Any]]:
        return [rec for _, _, rec in self._read(T.DECISIONS)]


def wait_ready(client: GateClient, timeout_s: float = 120.0) -> None:
    """Readiness is a real decision for a probe request, not a sleep."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.request("probe", [{"role": "user", "content": "ping"}], "gpt-4o-mini", 8, timeout_s=10)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise


@pytest.fixture
def gate(kafka: KafkaSettings, tmp_path: Path) -> Iterator[Gate]:
    dump = tmp_path / "budget-state.json"
    env = {"LEDGERGATE_KAFKA_BOOTSTRAP": kafka.kafka_bootstrap, "LEDGERGATE_TOPIC_PREFIX": kafka.topic_prefix,
           "LEDGERGATE_RESERVATION_TTL_MS": str(RESERVATION_TTL_MS), "LEDGERGATE_EXPIRY_INTERVAL_MS": "200",
           "LEDGERGATE_STATE_DUMP_PATH": str(dump)}
    services = ServiceSet(env, tmp_path / "logs")
    services.start(GATE_SERVICES)
    client = GateClient(kafka.kafka_bootstrap, topic_prefix=kafka.topic_prefix, timeout_s=30)
    try:
        wait_ready(client)
        yield Gate(kafka, services, client, dump)
    finally:
        client.close()
        services.stop_all()
