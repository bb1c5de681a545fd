"""The audit replay's per-record checks, fed real encoded audit records without a broker: anchors,
gaps, edits, reorders, foreign and undecodable records, the spend it rebuilds, and the helpers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest

from ledgergate.codec import codec
from ledgergate.connection import KafkaConnection
from ledgergate.services.router.core import Chain, audit_record
from ledgergate.shared.units import day_start_ms, iso_ms, parse_instant_ms, usd, utc_day
from ledgergate.tools.replay import AuditReplay, PartitionCheck, ReplayOptions, diff_totals

T0 = 1_795_000_000_000  # 2026-11-18T..Z
LEDGER = "p.budget.ledger"


@dataclass
class FakeMessage:
    _partition: int
    _offset: int
    _value: bytes

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value


def chain_records(n: int, partition: int = 0, tenant: str = "acme") -> list[dict[str, Any]]:
    chain = Chain(partition)
    out = []
    for i in range(n):
        settled = i % 2 == 1
        summary = {"model": "gpt-4o", "actual_micro_usd": 100 + i} if settled else {"period_id": "2026-11"}
        out.append(audit_record(chain, kind="LEDGER", event_type="ReservationSettled" if settled else "PeriodOpened",
                                subject_id=f"e{i}", tenant_id=tenant, source_topic=LEDGER,
                                source_partition=partition, source_offset=i, event_sha256="0" * 64,
                                summary_json=json.dumps(summary), recorded_at_ms=T0 + i).to_record())
    return out


def replay(records: list[dict[str, Any]], genesis: bool = True, partition: int = 0, **opts: Any) -> AuditReplay:
    r = AuditReplay(ReplayOptions(KafkaConnection("unused:9092"), "p.audit.log", LEDGER, **opts))
    r.checks, r.genesis = {partition: PartitionCheck(partition)}, {partition: genesis}
    for offset, rec in enumerate(records):
        value = rec if isinstance(rec, bytes) else codec().encode("AuditRecord", rec)
        r._audit(FakeMessage(partition, offset, value))  # type: ignore[arg-type]
    return r


def test_whole_chain_from_genesis_passes_and_rebuilds_spend() -> None:
    r = replay(chain_records(6))
    check = r.checks[0]
    assert check.problem is None and check.anchor == "genesis" and (check.first_sequence, check.last_sequence) == (0, 5)
    assert r.audit_spend == {("acme", "gpt-4o", utc_day(T0)): [3, 101 + 103 + 105]}
    assert set(r.audited) == {(0, i) for i in range(6)}


def test_removed_record_is_a_gap_at_the_next_offset() -> None:
    recs = chain_records(6)
    r = replay(recs[:2] + recs[3:])
    assert r.checks[0].problem == {"partition": 0, "offset": 2,
                                   "error": "offset 2: sequence 3, expected 2 (a record is missing)"}


def test_removed_head_is_caught_from_the_beginning_but_trusted_mid_chain() -> None:
    recs = chain_records(4)
    assert "missing" in replay(recs[1:]).checks[0].problem["error"]
    trusted = replay(recs[1:], genesis=False).checks[0]
    assert trusted.problem is None and "mid-chain" in trusted.anchor and "sequence 1" in trusted.anchor


def test_edit_and_reorder_and_recomputed_link_are_caught() -> None:
    recs = chain_records(5)
    edited = [*recs[:3], {**recs[3], "summary_json": json.dumps({"model": "gpt-4o", "actual_micro_usd": 1})}, recs[4]]
    assert replay(edited).checks[0].problem["error"] == "offset 3: hash does not match the record's content (edited)"
    swapped = [recs[0], recs[2], recs[1], *recs[3:]]
    assert replay(swapped).checks[0].problem["offset"] == 1
    # Re-sequencing after a deletion does not help: the next record's prev_hash still names the removed one.
    forged = [*recs[:2], {**recs[3], "chain_sequence": 2}]
    assert replay(forged).checks[0].problem["offset"] == 2


def test_undecodable_and_foreign_records_are_problems() -> None:
    recs = chain_records(3)
    assert "undecodable" in replay([recs[0], b"\xc3\x01junk", recs[1]]).checks[0].problem["error"]
    other = chain_records(2, partition=1)
    assert "chain 1 on partition 0" in replay([recs[0], other[1]]).checks[0].problem["error"]


def test_only_the_first_problem_is_kept() -> None:
    recs = chain_records(6)
    r = replay([recs[0], recs[2], recs[3], recs[5]])
    assert r.checks[0].problem["offset"] == 1


def test_tenant_and_time_filters_apply_to_spend_not_to_the_chain() -> None:
    recs = chain_records(6)
    r = replay(recs, tenant="other")
    assert r.checks[0].problem is None and r.audit_spend == {}
    r = replay(recs, from_ms=T0 + 4)
    assert r.audit_spend == {("acme", "gpt-4o", utc_day(T0)): [1, 105]}


def test_second_audit_record_of_one_ledger_entry_is_a_coverage_problem() -> None:
    recs = chain_records(3)
    chain = Chain(0, 3, recs[-1]["hash"])
    dup = audit_record(chain, kind="LEDGER", event_type="PeriodOpened", subject_id="again", tenant_id="acme",
                       source_topic=LEDGER, source_partition=0, source_offset=1, event_sha256="0" * 64,
                       summary_json="{}", recorded_at_ms=T0 + 9).to_record()
    r = replay([*recs, dup])
    assert r.checks[0].problem is None and r.coverage_count == 1 and "second audit record" in r.coverage[0]["error"]


def test_diff_totals_names_each_differing_key() -> None:
    a = {("t", "m", "2026-11-01"): [2, 300], ("t", "m", "2026-11-02"): [1, 5]}
    b = {("t", "m", "2026-11-01"): [2, 300], ("t", "n", "2026-11-02"): [1, 5]}
    diff = diff_totals(a, b, "ledger")
    assert [(d["model"], d["audit_micro_usd"], d["ledger_micro_usd"]) for d in diff] == [("m", 5, 0), ("n", 0, 5)]
    assert diff_totals(a, dict(a), "ledger") == []


def test_time_and_money_helpers_are_exact() -> None:
    assert utc_day(day_start_ms(date(2026, 11, 29)) - 1) == "2026-11-28"
    assert utc_day(day_start_ms(date(2026, 11, 29))) == "2026-11-29"
    assert parse_instant_ms("2026-11-29T00:00:00.001Z") == day_start_ms(date(2026, 11, 29)) + 1
    assert parse_instant_ms("2026-11-29") == parse_instant_ms("2026-11-29T00:00:00+00:00")
    assert parse_instant_ms("2026-11-29T01:00:00+01:00") == day_start_ms(date(2026, 11, 29))
    assert parse_instant_ms(str(T0)) == T0 and iso_ms(T0 + 7).endswith(".007Z")
    assert usd(1_234_567) == "1.234567" and usd(-5) == "-0.000005" and usd(0) == "0.000000"
    with pytest.raises(ValueError):
        parse_instant_ms("yesterday")


def test_unaudited_ledger_tail_is_lag_when_recent_and_a_gap_when_old() -> None:
    from ledgergate.shared.ledger.entries import PeriodOpened, to_record

    r = replay([])
    now = r._started_ms

    def entry(recorded_at_ms: int) -> bytes:
        return codec().encode(*to_record(PeriodOpened(entry_id="e", tenant_id="acme", period_id="2026-11",
                                                      recorded_at_ms=recorded_at_ms, starts_at_ms=0, ends_at_ms=1)))

    r._tail(0, 7, entry(now - 1_000))
    assert r.unaudited_tail == {0: 1} and r.coverage_count == 0
    r._tail(0, 8, entry(now - 10 * 60_000))
    assert r.coverage_count == 1 and "ledger entry 0/8 has no audit record 600 s after" in r.coverage[0]["error"]
