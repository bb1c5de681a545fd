"""Writes become BudgetCommands on budget.commands (real Kafka), keyed and partitioned by tenant, answered 202
only once the broker has them; and `ledgergate apikey create` prints a working key once."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.partitioning import murmur2_partition
from ledgergate.shared.kafka.reader import read_to_end
from ledgergate.shared.settings import PROJECT_ROOT, KafkaSettings
from tests.integration.apiharness import (  # noqa: F401  (fixtures)
    A,
    Keys,
    api_db_fixture,
    api_fixture,
    api_settings,
    keys_fixture,
)

pytestmark = pytest.mark.integration
H = Keys.h


def _commands(kafka: KafkaSettings) -> dict[str, tuple[int, bytes, dict[str, Any]]]:
    """command id -> (partition, key, record)"""
    out = {}
    for m in read_to_end(kafka.kafka_connection, kafka.topic(topics.COMMANDS), list(range(6))):
        name, rec = codec().decode(m.value())
        assert name == "BudgetCommand"
        out[rec["command_id"]] = (m.partition(), m.key(), rec)
    return out


def test_each_write_publishes_one_command(api: TestClient, keys: Keys, kafka: KafkaSettings) -> None:
    calls = [
        ("post", "budgets", {"limit_micro_usd": 250_000_000, "reason": "q3"},
         {"kind": "SET_LIMIT", "scope_type": "TENANT", "scope_id": A, "amount_micro_usd": 250_000_000,
          "reason": "q3"}),
        ("post", "budgets", {"limit_micro_usd": 0, "scope": "WORKFLOW", "workflow_id": "wf-x"},
         {"kind": "SET_LIMIT", "scope_type": "WORKFLOW", "scope_id": "wf-x", "amount_micro_usd": 0}),
        ("post", "budgets/raise", {"amount_micro_usd": 10**15},
         {"kind": "RAISE_LIMIT", "scope_id": A, "amount_micro_usd": 10**15}),
        ("post", "budgets/lower", {"amount_micro_usd": 5, "scope": "WORKFLOW", "workflow_id": "wf-x"},
         {"kind": "LOWER_LIMIT", "scope_type": "WORKFLOW", "scope_id": "wf-x", "amount_micro_usd": 5}),
        ("post", "budgets", {"limit_micro_usd": 9, "scope": "REGION", "region": "eu-west"},
         {"kind": "SET_LIMIT", "scope_type": "REGION", "scope_id": "eu-west", "amount_micro_usd": 9}),
        ("post", "budgets", {"limit_micro_usd": 3, "scope": "CANARY", "workflow_id": "wf-x", "canary": "new-model"},
         {"kind": "SET_LIMIT", "scope_type": "CANARY", "scope_id": "wf-x/new-model", "amount_micro_usd": 3}),
        ("post", "credits", {"amount_micro_usd": 7, "reason": "goodwill"},
         {"kind": "GRANT_CREDIT", "scope_id": A, "amount_micro_usd": 7, "reason": "goodwill"}),
        ("post", "reservations/req-9/void", {"reason": "agent crashed"},
         {"kind": "VOID_RESERVATION", "request_id": "req-9", "reason": "agent crashed"}),
        ("post", "reservations/req-10/void", None, {"kind": "VOID_RESERVATION", "request_id": "req-10"}),
        ("put", "policy", {"max_output_tokens": 1024, "allowed_models": ["gpt-4o-mini"]},
         {"kind": "SET_POLICY", "policy_json": '{"allowed_models":["gpt-4o-mini"],"max_output_tokens":1024}'}),
    ]
    accepted = []
    for method, path, body, expected in calls:
        resp = api.request(method.upper(), f"/v1/tenants/{A}/{path}", headers=H(keys.a_write), json=body)
        assert resp.status_code == 202, resp.text
        out = resp.json()
        assert out["status"] == "accepted" and out["tenant_id"] == A and out["kind"] == expected["kind"]
        accepted.append((out["command_id"], expected))
    key_id = json.loads(api.get("/v1/api-keys", headers=H(keys.admin), params={"tenant_id": A}).text)
    writer = next(k["key_id"] for k in key_id if k["can_write"])
    commands = _commands(kafka)  # acknowledged before 202, so all are there now without waiting
    assert len(commands) == len(calls)
    partition = murmur2_partition(A.encode(), 6)
    for command_id, expected in accepted:
        part, key, rec = commands[command_id]
        assert (part, key) == (partition, A.encode())  # the tenant's partition, where its budget-manager is
        assert rec["tenant_id"] == A and rec["issued_by"] == f"api:{writer}"
        for field, value in expected.items():
            assert rec[field] == value, (field, rec)


def test_commands_fail_with_503_when_kafka_has_no_topic(api_db: str, keys: Keys, kafka: KafkaSettings) -> None:
    from ledgergate.services.api.app import create_app

    missing = KafkaSettings(kafka_bootstrap=kafka.kafka_bootstrap, topic_prefix="no-such-prefix.")
    settings = api_settings(missing, api_db, api_command_timeout_s=2.0)
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "budget.commands" in ready.json()["checks"]["kafka"]
        resp = client.post(f"/v1/tenants/{A}/budgets", headers=H(keys.admin), json={"limit_micro_usd": 1})
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "unavailable"
        # Reads do not need Kafka.
        assert client.get(f"/v1/tenants/{A}/balances", headers=H(keys.admin)).status_code == 200


def test_cli_creates_a_key_shown_once(api: TestClient, api_db: str) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ledgergate.tools.cli", "apikey", "create", *args],
                              cwd=PROJECT_ROOT,
                              env={"LEDGERGATE_PG_DSN": api_db, "PATH": "/usr/bin:/bin"}, capture_output=True,
                              text=True, timeout=60, check=False)

    made = cli("--tenant", A, "--name", "reporting")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("lgk_") and "\n" not in token and "shown only now" in made.stderr
    assert api.get(f"/v1/tenants/{A}/balances", headers=H(token)).status_code == 200
    assert api.post(f"/v1/tenants/{A}/budgets", headers=H(token), json={"limit_micro_usd": 1}).status_code == 403
    admin = cli("--admin").stdout.strip()
    assert api.get("/v1/tenants", headers=H(admin)).status_code == 200
    assert cli("--tenant", "has space").returncode == 2
    assert cli("--tenant", A, "--admin").returncode == 2  # argparse: one or the other
