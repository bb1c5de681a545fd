"""Fault 7, the process side: readiness tells the truth, and SIGTERM ends every process in time.

- A projector whose database refuses it while input waits reports not ready (503, naming the stall)
  within its stall window, and ready again once the database is back; it never exits for it.
- With the broker away (client calls retrying), SIGTERM still ends each gate service within its
  shutdown timeout, never needing the runner's SIGKILL.
"""

from __future__ import annotations

import time
import uuid

import psycopg

from ledgergate.shared.settings import KafkaSettings, PostgresSettings, StackSettings
from ledgergate.tools.devstack import kafka as broker
from tests.e2e.conftest import GATE_SERVICES, Gate, probe, service_set

PROMPT = [{"role": "user", "content": "One line, please."}]
STALL_AFTER_MS = 2_000
SHUTDOWN_TIMEOUT_MS = 8_000


def _wait_status(port: int, want: int, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    status, body = probe(port)
    while status != want:
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz stayed {status} {body}, wanted {want}")
        time.sleep(0.3)
        status, body = probe(port)
    return body


def test_projector_is_not_ready_while_its_database_refuses_it(gate: Gate, kafka: KafkaSettings,
                                                              postgres: PostgresSettings, tmp_path) -> None:
    name = f"lg_ready_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(postgres.pg_dsn, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    env = {"LEDGERGATE_KAFKA_BOOTSTRAP": kafka.kafka_bootstrap, "LEDGERGATE_TOPIC_PREFIX": kafka.topic_prefix,
           "LEDGERGATE_PG_DSN": f"{postgres.pg_dsn.rpartition('/')[0]}/{name}",
           "LEDGERGATE_STALL_AFTER_MS": str(STALL_AFTER_MS)}
    projector, ports = service_set(env, tmp_path / "projector-logs", ["projector"])
    try:
        projector.start(["projector"])
        gate.client.request("ready-t", PROMPT, "gpt-4o-mini", 16, timeout_s=60)
        _wait_status(ports["projector"], 200, 60)

        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        for _ in range(5):  # input that cannot be written
            gate.client.request("ready-t", PROMPT, "gpt-4o-mini", 16, timeout_s=60)
        body = _wait_status(ports["projector"], 503, 30)
        assert any("input is waiting" in p for p in body["problems"]), body
        assert probe(ports["projector"], "/healthz")[0] == 200, "alive: it waits for the database, not wedged"

        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        _wait_status(ports["projector"], 200, 60)
        assert projector.alive("projector") and projector.restarts() == {}
    finally:
        projector.close()
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_sigterm_ends_every_service_within_its_shutdown_timeout_with_the_broker_away(
        kafka: KafkaSettings, stack: StackSettings, tmp_path) -> None:
    env = {"LEDGERGATE_KAFKA_BOOTSTRAP": kafka.kafka_bootstrap, "LEDGERGATE_TOPIC_PREFIX": kafka.topic_prefix,
           "LEDGERGATE_SHUTDOWN_TIMEOUT_MS": str(SHUTDOWN_TIMEOUT_MS)}
    services, ports = service_set(env, tmp_path / "logs", GATE_SERVICES)
    services.start(GATE_SERVICES)
    try:
        for name in GATE_SERVICES:
            _wait_status(ports[name], 200, 90)
        broker.stop(stack)
        time.sleep(3)  # every client is now retrying against a broker that is not there
        started = time.monotonic()
        # The runner's own SIGKILL comes only after 3x the shutdown timeout: a SIGTERM that was ignored shows.
        codes = services.stop_all(timeout_s=3 * SHUTDOWN_TIMEOUT_MS / 1000)
        elapsed_s = time.monotonic() - started
    finally:
        broker.start(stack)
        services.close()
    print(f"\nSIGTERM with the broker away: every service ended in {elapsed_s:.1f} s, exit codes {codes}")
    assert elapsed_s < SHUTDOWN_TIMEOUT_MS / 1000 + 3, codes
    assert all(code is not None and code >= 0 for code in codes.values()), f"killed by a signal: {codes}"
