"""Ledger entry dataclasses mirror their Avro schemas field for field, and round-trip through the codec."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from typing import Any

import pytest

from ledgergate.codec import codec
from ledgergate.events import Usage
from ledgergate.shared.ledger.entries import (
    ENTRY_TYPES,
    BudgetLimitSet,
    CacheHitRecorded,
    CreditGranted,
    LedgerEntry,
    PeriodOpened,
    PolicyChanged,
    ReservationDenied,
    ReservationExpired,
    ReservationPlaced,
    ReservationRepeated,
    ReservationSettled,
    ReservationVoided,
    ThresholdCrossed,
    from_record,
    to_record,
)
from ledgergate.shared.settings import PROJECT_ROOT

AVRO_DIR = PROJECT_ROOT / "schemas" / "avro"
T0 = 1_794_000_000_000  # 2026-11-06, inside the first price version


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _schema(name: str) -> dict[str, Any]:
    return json.loads((AVRO_DIR / f"{_snake(name)}.avsc").read_text())


def test_snake_names() -> None:
    assert _snake("BudgetLimitSet") == "budget_limit_set"
    assert _snake("ReservationSettled") == "reservation_settled"


def test_entry_types_cover_the_twelve_ledger_entries() -> None:
    assert set(ENTRY_TYPES) == {
        "BudgetLimitSet", "CreditGranted", "PeriodOpened", "PolicyChanged", "ReservationPlaced",
        "ReservationDenied", "CacheHitRecorded", "ReservationRepeated", "ReservationSettled", "ReservationVoided",
        "ReservationExpired", "ThresholdCrossed"}
    for name, cls in ENTRY_TYPES.items():
        assert cls.__name__ == name


@pytest.mark.parametrize("name", sorted(ENTRY_TYPES))
def test_dataclass_fields_equal_schema_fields(name: str) -> None:
    path = AVRO_DIR / f"{_snake(name)}.avsc"
    assert path.exists(), f"no schema file {path.name} for {name}"
    schema = _schema(name)
    assert schema["name"] == name
    schema_fields = [f["name"] for f in schema["fields"]]
    class_fields = [f.name for f in fields(ENTRY_TYPES[name])]
    assert len(schema_fields) == len(set(schema_fields))
    assert set(class_fields) == set(schema_fields), (
        f"{name}: only in class {set(class_fields) - set(schema_fields)}, "
        f"only in schema {set(schema_fields) - set(class_fields)}")


def test_usage_fields_equal_the_nested_usage_record() -> None:
    usage_field = next(f for f in _schema("ReservationSettled")["fields"] if f["name"] == "usage")
    assert {f["name"] for f in usage_field["type"]["fields"]} == {f.name for f in fields(Usage)}


SAMPLES: list[LedgerEntry] = [
    BudgetLimitSet("cmd/c1", "t1", "2026-11", T0, "TENANT", "t1", "RAISED", 5_000_000, 1_000_000, "c1"),
    CreditGranted("cmd/c2", "t1", "2026-11", T0, "WORKFLOW", "wf", 250_000, "goodwill", "c2"),
    PeriodOpened("period/t1/2026-11", "t1", "2026-11", T0, 1_793_491_200_000, 1_796_083_200_000),
    PolicyChanged("cmd/c3", "t1", "2026-11", T0, 3, '{"max_output_tokens": 100}', "c3"),
    ReservationPlaced("r1/reservation", "t1", "2026-11", T0, "r1", "wf", "agent-7", "gpt-4o", "gpt-4o-mini",
                      "standard", 1, 1234, 321, 512, "2026-11-01", 2, "HIGH", "eu-west", T0 + 60_000, "ab" * 32,
                      T0 - 5, 98_765),
    ReservationPlaced("r9/reservation", "t1", "2026-11", T0, "r9", "", "", "gpt-4o", "gpt-4o", "premium", 0,
                      1, 1, 1, "2026-11-01", 0, "NORMAL", None, T0 + 1, "cd" * 32, T0, 0),
    ReservationDenied("r2/reservation", "t1", "2026-11", T0, "r2", "wf", "a", "gpt-4o", "rate_limited", "over 5/s",
                      "rate", 1500, 1, "ef" * 32, T0, -3),
    ReservationDenied("r3/reservation", "t1", "2026-11", T0, "r3", "", "a", "gpt-4o", "budget_exhausted", "d",
                      "tenant:t1", None, 0, "01" * 32, T0, 0),
    CacheHitRecorded("r6/reservation", "t1", "2026-11", T0, "r6", "wf", "a", "gpt-4o", "r0/cache", "ab" * 32, 120,
                     40, 900, 3, "23" * 32, T0 - 2, 5_000),
    ReservationRepeated("r1/repeat@0:17", "t1", "2026-11", T0, "r1", "wf", "r1/reservation", T0 - 1),
    ReservationSettled("r1/settlement", "t1", "2026-11", T0, "r1", "wf", "gpt-4o-mini", 1234, 2000, 0, 766,
                       Usage(100, 20, 300, 40), True, "2026-11-01"),
    ReservationVoided("r4/void", "t1", "2026-11", T0, "r4", "wf", 77, "cancelled before any usage"),
    ReservationExpired("r5/expiry", "t1", "2026-11", T0, "r5", "", 88),
    ThresholdCrossed("threshold/t1/2026-11/TENANT/t1/80", "t1", "2026-11", T0, "TENANT", "t1", 80, 4_100_000,
                     5_000_000),
]


def test_samples_cover_every_entry_type() -> None:
    assert {type(e).__name__ for e in SAMPLES} == set(ENTRY_TYPES)


@pytest.mark.parametrize("entry", SAMPLES, ids=lambda e: f"{type(e).__name__}:{e.entry_id}")
def test_record_round_trips_through_the_codec(entry: LedgerEntry) -> None:
    name, record = to_record(entry)
    assert name == type(entry).__name__
    data = codec().encode(name, record)
    decoded_name, decoded = codec().decode(data)
    assert decoded_name == name
    assert decoded == record
    back = from_record(decoded_name, decoded)
    assert back == entry
    assert type(back) is type(entry)
    if isinstance(entry, ReservationSettled):
        assert isinstance(back.usage, Usage)  # type: ignore[union-attr]
        assert record["usage"] == {"input_tokens": 100, "cached_input_tokens": 20, "output_tokens": 300,
                                   "reasoning_tokens": 40}


def test_from_record_does_not_mutate_its_input() -> None:
    name, record = to_record(next(e for e in SAMPLES if isinstance(e, ReservationSettled)))
    snapshot = json.dumps(record, sort_keys=True)
    from_record(name, record)
    assert json.dumps(record, sort_keys=True) == snapshot
    assert isinstance(record["usage"], dict)


def test_from_record_rejects_unknown_name() -> None:
    with pytest.raises(KeyError):
        from_record("NotAnEntry", {})
