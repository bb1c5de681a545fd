"""End-to-end fixtures: the four services as real processes on fresh, prefixed topics."""

from __future__ import annotations

import contextlib
import json
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ledgergate import topics
from ledgergate.client import GateClient
from ledgergate.codec import codec
from ledgergate.shared.kafka.reader import read_to_end
from ledgergate.shared.ledger.entries import from_record
from ledgergate.shared.ledger.state import TenantState, balances_view, evolve
from ledgergate.shared.settings import KafkaSettings, PostgresSettings
from ledgergate.tools.servicerunner import ServiceSet

GATE_SERVICES = ["token-counter", "policy", "budget-manager", "router"]
RESERVATION_TTL_MS = 4000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_set(env: dict[str, str], log_dir: Path, names: list[str]) -> tuple[ServiceSet, dict[str, int]]:
    """The services as the dev stack runs them: supervised (a child that exits on its own is started
    again) and each serving /healthz and /readyz on a port of its own."""
    ports = {name: free_port() for name in names}
    services = ServiceSet(env, log_dir, supervise=True,
                          env_for={name: {"LEDGERGATE_HEALTH_PORT": str(port)} for name, port in ports.items()})
    return services, ports


def probe(port: int, path: str = "/readyz") -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of a health endpoint; (0, {}) when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except OSError:
        return 0, {}


@dataclass
class Gate:
    kafka: KafkaSettings
    services: ServiceSet
    client: GateClient
    state_dump: Path
    health_ports: dict[str, int]

    def wait_ready(self, names: list[str], timeout_s: float = 60.0) -> dict[str, dict[str, Any]]:
        """Every named process answers /readyz 200; their reports."""
        deadline = time.monotonic() + timeout_s
        while True:
            reports = {name: probe(self.health_ports[name]) for name in names}
            if all(status == 200 for status, _ in reports.values()):
                return {name: body for name, (_, body) in reports.items()}
            if time.monotonic() > deadline:
                raise AssertionError(f"not ready after {timeout_s:.0f} s: {reports}")
            time.sleep(0.5)

    def read(self, logical_topic: str) -> list[tuple[int, str, dict[str, Any]]]:
        """Every committed record of a topic, from offset 0: (partition, type, record)."""
        return [(m.partition(), *codec().decode(m.value()))
                for m in read_to_end(self.kafka.kafka_connection, self.kafka.topic(logical_topic), list(range(6)))]

    def ledger(self) -> list[tuple[int, str, dict[str, Any]]]:
        return self.read(topics.LEDGER)

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
        return [rec for _, _, rec in self.read(topics.DEADLETTER)]

    def audit(self) -> list[dict[str, Any]]:
        return [rec for _, _, rec in self.read(topics.AUDIT)]

    def decisions(self) -> list[dict[str, Any]]:
        return [rec for _, _, rec in self.read(topics.DECISIONS)]


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


@contextlib.contextmanager
def running_gate(kafka: KafkaSettings, work_dir: Path) -> Iterator[Gate]:
    """The four gate services as processes on `kafka`'s topics, and a client; ready for a decision."""
    dump = work_dir / "budget-state.json"
    env = {"LEDGERGATE_KAFKA_BOOTSTRAP": kafka.kafka_bootstrap, "LEDGERGATE_TOPIC_PREFIX": kafka.topic_prefix,
           "LEDGERGATE_RESERVATION_TTL_MS": str(RESERVATION_TTL_MS), "LEDGERGATE_EXPIRY_INTERVAL_MS": "200",
           "LEDGERGATE_STATE_DUMP_PATH": str(dump)}
    services, ports = service_set(env, work_dir / "logs", GATE_SERVICES)
    services.start(GATE_SERVICES)
    client = GateClient(kafka.kafka_bootstrap, topic_prefix=kafka.topic_prefix, timeout_s=30)
    try:
        wait_ready(client)
        yield Gate(kafka, services, client, dump, ports)
    finally:
        client.close()
        services.close()


@pytest.fixture
def gate(kafka: KafkaSettings, tmp_path: Path) -> Iterator[Gate]:
    with running_gate(kafka, tmp_path) as running:
        yield running


@pytest.fixture(scope="module")
def gate_module(kafka_module: KafkaSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gate]:
    """`gate` shared by a module's tests: they must use tenants of their own."""
    with running_gate(kafka_module, tmp_path_factory.mktemp("gate")) as running:
        yield running


@dataclass
class Projected:
    gate: Gate
    dsn: str


@pytest.fixture
def projected(kafka: KafkaSettings, postgres: PostgresSettings, tmp_path: Path) -> Iterator[Projected]:
    """The four gate services and the projector, writing into a fresh PostgreSQL database."""
    name = f"lg_proj_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres.pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{postgres.pg_dsn.rpartition('/')[0]}/{name}"
    dump = tmp_path / "budget-state.json"
    env = {"LEDGERGATE_KAFKA_BOOTSTRAP": kafka.kafka_bootstrap, "LEDGERGATE_TOPIC_PREFIX": kafka.topic_prefix,
           "LEDGERGATE_RESERVATION_TTL_MS": str(RESERVATION_TTL_MS), "LEDGERGATE_EXPIRY_INTERVAL_MS": "200",
           "LEDGERGATE_STATE_DUMP_PATH": str(dump), "LEDGERGATE_PG_DSN": dsn}
    names = [*GATE_SERVICES, "projector"]
    services, ports = service_set(env, tmp_path / "logs", names)
    client: GateClient | None = None
    try:
        services.start(names)
        client = GateClient(kafka.kafka_bootstrap, topic_prefix=kafka.topic_prefix, timeout_s=30)
        wait_ready(client)
        yield Projected(Gate(kafka, services, client, dump, ports), dsn)
    finally:
        if client is not None:
            client.close()
        services.close()
        with psycopg.connect(postgres.pg_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
