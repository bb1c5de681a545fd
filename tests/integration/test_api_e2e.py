"""End to end: a budget set through the API is applied by the real budget-manager (a process, via ServiceSet)
to budget.ledger, and the real projector makes it readable through the API again."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fastapi.testclient import TestClient

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.shared.kafka.reader import read_to_end
from ledgergate.shared.settings import KafkaSettings
from ledgergate.tools.servicerunner import ServiceSet
from tests.integration.apiharness import A, Keys, api_db_fixture, api_fixture, keys_fixture  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
H = Keys.h
R = TypeVar("R")


def _eventually(what: str, probe: Callable[[], R | None], services: ServiceSet, timeout_s: float = 90.0) -> R:
    """Poll until `probe` returns a value; fail early, with its log, if a service died."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = probe()
        if found is not None:
            return found
        dead = services.dead()
        if dead or time.monotonic() > deadline:
            logs = "\n".join(f"--- {n}\n{services.tail(n, 30)}" for n in services.names())
            raise AssertionError(f"{what}: {'died: ' + str(dead) if dead else 'timed out'}\n{logs}")
        time.sleep(0.25)


@pytest.fixture(name="services")
def services_fixture(kafka: KafkaSettings, api_db: str, tmp_path: Path) -> Iterator[ServiceSet]:
    env = {"LEDGERGATE_KAFKA_BOOTSTRAP": kafka.kafka_bootstrap, "LEDGERGATE_TOPIC_PREFIX": kafka.topic_prefix,
           "LEDGERGATE_PG_DSN": api_db}
    services = ServiceSet(env, tmp_path / "logs")
    services.start(["budget-manager", "projector"])
    try:
        yield services
    finally:
        services.stop_all()


def _ledger(kafka: KafkaSettings) -> dict[str, dict[str, Any]]:
    out = {}
    for m in read_to_end(kafka.kafka_connection, kafka.topic(topics.LEDGER), list(range(6))):
        name, rec = codec().decode(m.value())
        out[rec["entry_id"]] = {"type": name, **rec}
    return out


def test_budget_set_through_the_api_reaches_ledger_and_read_model(api: TestClient, keys: Keys,
                                                                   kafka: KafkaSettings,
                                                                   services: ServiceSet) -> None:
    admin = H(keys.admin)

    def command(path: str, body: dict[str, Any], method: str = "POST") -> str:
        resp = api.request(method, f"/v1/tenants/{A}/{path}", headers=admin, json=body)
        assert resp.status_code == 202, resp.text
        return str(resp.json()["command_id"])

    set_id = command("budgets", {"limit_micro_usd": 5_000_000, "reason": "e2e"})
    wf_id = command("budgets", {"limit_micro_usd": 1_000_000, "scope": "WORKFLOW", "workflow_id": "wf-e2e"})
    raise_id = command("budgets/raise", {"amount_micro_usd": 2_000_000})
    credit_id = command("credits", {"amount_micro_usd": 300_000})
    policy_id = command("policy", {"max_output_tokens": 777}, method="PUT")

    # 1. The budget-manager (single writer) turned each command into its ledger entry.
    wanted = {f"cmd/{c}" for c in (set_id, wf_id, raise_id, credit_id, policy_id)}
    ledger = _eventually("commands on budget.ledger",
                         lambda: (lambda led: led if wanted <= set(led) else None)(_ledger(kafka)), services)
    assert ledger[f"cmd/{set_id}"]["type"] == "BudgetLimitSet"
    assert ledger[f"cmd/{set_id}"]["limit_micro_usd"] == 5_000_000
    assert (ledger[f"cmd/{raise_id}"]["change"], ledger[f"cmd/{raise_id}"]["limit_micro_usd"]) == ("RAISED", 7_000_000)
    assert ledger[f"cmd/{wf_id}"]["scope_id"] == "wf-e2e"
    assert ledger[f"cmd/{policy_id}"]["type"] == "PolicyChanged"

    # 2. The projector wrote them to PostgreSQL, so the API's reads show the effect.
    def balances() -> dict[str, Any] | None:
        body = api.get(f"/v1/tenants/{A}/balances", headers=H(keys.a_read)).json()
        items = {(b["scope_type"], b["scope_id"]): b for b in body["items"]}
        tenant = items.get(("TENANT", A))
        if tenant is None or tenant["limit_micro_usd"] != 7_000_000 or tenant["credit_micro_usd"] != 300_000:
            return None
        return items

    items = _eventually("balances through the API", balances, services)
    assert items[("TENANT", A)]["remaining_micro_usd"] == 7_300_000
    assert items[("WORKFLOW", "wf-e2e")]["limit_micro_usd"] == 1_000_000
    entries = api.get(f"/v1/tenants/{A}/ledger", headers=H(keys.a_read), params={"limit": 500}).json()["items"]
    assert wanted <= {e["entry_id"] for e in entries}
    policy = _eventually("policy through the API", lambda: (lambda p: p if p["policy_version"] == 1 else None)(
        api.get(f"/v1/tenants/{A}/policy", headers=H(keys.a_read)).json()), services)
    assert policy["document"] == {"max_output_tokens": 777}
    tenants = api.get("/v1/tenants", headers=admin).json()["items"]
    assert {"tenant_id": A} in tenants
