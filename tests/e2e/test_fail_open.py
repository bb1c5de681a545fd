"""Failing open while the broker is away (ledgergate.admission, issue 13 §4), on the real broker.

A tenant whose policy allows failing open keeps working through a broker outage within its envelope (the
lower of the client's setting and the policy's cap, which every decision carries); a tenant whose policy
does not fails closed. Every call made while open is journalled, reported once the gate answers again,
and settled by the ledger without a reservation, marked `fail_open` in the ledger and in the read model,
exactly once, with the balances still the fold of the ledger.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from ledgergate import FAIL_OPEN, Gate, GateSettings, GateUnavailableError
from ledgergate.shared import readmodel_usage
from ledgergate.shared.catalogue import prices
from ledgergate.shared.settings import StackSettings
from ledgergate.tools.devstack import kafka as broker
from tests.e2e.conftest import Projected

USD = 1_000_000
ASK = [{"role": "user", "content": "Draft the status update."}]
USAGE = {"input_tokens": 400, "cached_input_tokens": 0, "output_tokens": 200, "reasoning_tokens": 0}
POLICY_CAP_MICRO_USD_PER_MIN = 3 * USD
CALLS_WHILE_AWAY = 3


def _tenant(projected: Projected, policy: dict[str, int]) -> str:
    tenant = f"fo-{uuid.uuid4().hex[:8]}"
    projected.gate.client.send_command(tenant, "SET_LIMIT", 100 * USD)
    projected.gate.client.send_command(tenant, "SET_POLICY", policy_json=json.dumps(policy))
    return tenant


def _gate(projected: Projected, tenant: str, journal: Path | None = None) -> Gate:
    return Gate(projected.gate.client, GateSettings(
        tenant_id=tenant, workflow_id="wf-fo", on_unavailable="open", fail_open_micro_usd_per_min=10 * USD,
        decision_timeout_ms=1_500, probe_interval_ms=500, fail_open_call_estimate_micro_usd=USD // 10,
        fail_open_journal_path=None if journal is None else str(journal)))


def _settlements(projected: Projected, request_ids: set[str], timeout_s: float = 60.0) -> dict[str, dict]:
    deadline = time.monotonic() + timeout_s
    found: dict[str, dict] = {}
    while time.monotonic() < deadline:
        found = {r["request_id"]: r for _, name, r in projected.gate.ledger()
                 if name == "ReservationSettled" and r["request_id"] in request_ids}
        if set(found) == request_ids:
            return found
        time.sleep(0.5)
    raise AssertionError(f"settled {sorted(found)} of {sorted(request_ids)}")


def _wait_admitted(gate: Gate, timeout_s: float = 90.0):  # the first decision after the outage
    deadline = time.monotonic() + timeout_s
    while True:
        grant = gate.admit(ASK, "gpt-4o-mini", 64)
        if not grant.fail_open:
            return grant
        grant.void()  # journalled as a zero-usage call; settles nothing
        assert time.monotonic() < deadline, "no decision after the broker came back"
        time.sleep(0.5)


def test_calls_fail_open_within_the_envelope_and_settle_once_the_gate_is_back(
        projected: Projected, stack: StackSettings, tmp_path: Path) -> None:
    open_tenant = _tenant(projected, {"fail_open_micro_usd_per_min": POLICY_CAP_MICRO_USD_PER_MIN})
    closed_tenant = _tenant(projected, {})  # the default policy: 0, fail closed
    journal = tmp_path / "fail-open.jsonl"
    opened, closed = _gate(projected, open_tenant, journal), _gate(projected, closed_tenant)

    # Present: ordinary decisions, which carry each tenant's cap to its client (once the policy service has
    # folded the SET_POLICY from the ledger: it races the first request).
    for gate in (opened, closed):
        grant = gate.admit(ASK, "gpt-4o-mini", 64)
        assert grant.outcome == "ALLOW"
        grant.settle(USAGE)
    deadline = time.monotonic() + 30
    while opened.envelope_micro_usd_per_min() != POLICY_CAP_MICRO_USD_PER_MIN:  # the policy lowers 10 USD
        assert time.monotonic() < deadline, "the policy's fail-open cap never reached a decision"
        time.sleep(0.3)
        opened.admit(ASK, "gpt-4o-mini", 64).settle(USAGE)
    assert closed.envelope_micro_usd_per_min() == 0

    broker.stop(stack)
    try:
        made = []
        for _ in range(CALLS_WHILE_AWAY):
            grant = opened.admit(ASK, "gpt-4o-mini", 64)
            assert grant.outcome == FAIL_OPEN and grant.decision is None
            grant.settle(USAGE)
            made.append(grant.request_id)
        assert opened.fail_open_calls == CALLS_WHILE_AWAY and opened.journalled == CALLS_WHILE_AWAY
        assert len(journal.read_text().splitlines()) == CALLS_WHILE_AWAY  # survives a restart of the process
        with pytest.raises(GateUnavailableError, match="failing open is off"):
            closed.admit(ASK, "gpt-4o-mini", 64)
        # The envelope is per minute: a call that would pass it fails closed even for the open tenant.
        with pytest.raises(GateUnavailableError, match="envelope is spent"):
            opened.admit(ASK, "gpt-4o-mini", 64, max_cost_micro_usd=POLICY_CAP_MICRO_USD_PER_MIN)
    finally:
        broker.start(stack)

    back = _wait_admitted(opened)
    back.settle(USAGE)
    # The first decision reported the journal; its delivery may still be under way on a busy machine.
    deadline = time.monotonic() + 60
    while opened.report_journal(flush_timeout_s=5.0):
        assert time.monotonic() < deadline, f"{opened.journalled} fail-open calls still unreported"
    assert opened.fail_open_reported >= CALLS_WHILE_AWAY

    settled = _settlements(projected, set(made))
    version = prices().at(int(time.time() * 1000)).version
    expected = prices().cost_micro_usd(version, "gpt-4o-mini", 400, 0, 200, reasoning_tokens=0)
    for rec in settled.values():
        assert rec["fail_open"] is True, rec
        assert rec["workflow_id"] == "wf-fo" and rec["actual_micro_usd"] == expected
        # Its request may have reached the gate once the broker was back (the SDK's producer kept it): then
        # the call settles that hold; otherwise it had none and all of it is overage.
        assert rec["overage_micro_usd"] == max(0, expected - rec["reserved_micro_usd"])
    ledger = projected.gate.ledger()
    assert sum(1 for _, n, r in ledger if n == "ReservationSettled" and r["request_id"] in settled) == len(made)
    # The balances are the fold of the ledger, and the read model marks the calls.
    projected.gate.wait_fold_matches_service()
    deadline = time.monotonic() + 60
    while True:
        with psycopg.connect(projected.dsn) as conn:
            rows = dict(conn.execute("SELECT request_id, fail_open FROM usage WHERE tenant_id = %s",
                                     (open_tenant,)).fetchall())
        if {*made, back.request_id} <= set(rows):
            break
        assert time.monotonic() < deadline, f"read model has {rows}"
        time.sleep(0.5)
    assert all(rows[rid] for rid in made) and rows[back.request_id] is False
    # The spend report tells the calls made without a decision apart (GET .../reports/spend?group_by=fail_open).
    with psycopg.connect(projected.dsn) as conn:
        sums = {s.key[0]: s for s in readmodel_usage.usage_sums(conn, ("fail_open",), tenant_id=open_tenant)}
    assert sums["fail_open"].requests == len(made) and sums["fail_open"].cost_micro_usd == len(made) * expected
