"""The response cache in the read model (docs/decisions/0013), on the real PostgreSQL (and broker):

- a CacheHitRecorded becomes one cache_hits row and a ledger row about its requested model and avoided
  cost, once, however often it is replayed;
- a CACHE_HIT decision's row holds no answer text (docs/privacy.md), not even a text PostgreSQL could not
  store: the projector process projects it and records no error;
- the spend report counts hits and what they saved: in its totals for every grouping, per row for model,
  workflow and day (a model with hits only is a row of zero spend), in CSV too.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from fastapi.testclient import TestClient

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.events import Usage
from ledgergate.kafka_config import producer_config
from ledgergate.services.projector import sql
from ledgergate.services.projector.core import Batch
from ledgergate.services.router.core import decision_for
from ledgergate.shared.cache import CacheEntry
from ledgergate.shared.catalogue import deployments
from ledgergate.shared.ledger.entries import (
    BudgetLimitSet,
    CacheHitRecorded,
    LedgerEntry,
    ReservationPlaced,
    ReservationSettled,
    to_record,
)
from ledgergate.shared.settings import KafkaSettings
from ledgergate.tools.servicerunner import ServiceSet
from tests.integration.apiharness import (  # noqa: F401  (fixtures)
    Keys,
    api_db_fixture,
    api_fixture,
    get_json,
    keys_fixture,
)

pytestmark = pytest.mark.integration

NOW = 1_795_824_000_000  # 2026-11-28T00:00Z
DAY = 86_400_000
PERIOD = "2026-11"
ANSWER = "Paris is the capital of France."
KEY = "ab" * 32


def _hit(tenant: str, rid: str, model: str, avoided: int, *, at: int = NOW + 10, workflow: str = "wf",
         period: str = PERIOD) -> CacheHitRecorded:
    return CacheHitRecorded(f"{rid}/reservation", tenant, period, at, rid, workflow, "agent-1", model, "r0/cache",
                            KEY, 12, 7, avoided, 0, "cd" * 32, at - 3, 1_000_000)


def _settled(tenant: str, rid: str, model: str, cost: int, *, at: int = NOW, workflow: str = "wf") -> list[LedgerEntry]:
    placed = ReservationPlaced(f"{rid}/reservation", tenant, PERIOD, at, rid, workflow, "a", model, model,
                               "premium", 0, 9_000, 30, 500, "2026-11-01", 0, "NORMAL", None, at + 60_000,
                               "s" * 64, at, 1_000_000)
    settled = ReservationSettled(f"{rid}/settlement", tenant, PERIOD, at + 5, rid, workflow, model, 9_000, cost,
                                 9_000 - cost, 0, Usage(30, 0, 40, 0), False, "2026-11-01")
    return [placed, settled]


def _batch(entries: list[LedgerEntry], first_offset: int = 0) -> Batch:
    batch = Batch()
    for offset, entry in enumerate(entries, first_offset):
        batch.consumed("ledger", 0, offset)
        batch.add_ledger(entry, to_record(entry)[1], 0, offset)
    return batch


def _cache_hit_decision(entry: CacheHitRecorded, text: str = ANSWER) -> dict[str, Any]:
    """The router's CACHE_HIT decision with the answer's text, as the projector decodes it from gate.decisions."""
    cached = CacheEntry(entry.tenant_id, KEY, entry.cache_entry_id, entry.requested_model, ANSWER, 12, 7,
                        entry.avoided_micro_usd, NOW - 10, NOW + DAY, 0)
    record = decision_for(entry, deployments(), None, cached).to_record()
    record["cached_response"] = text
    name, decoded = codec().decode(codec().encode("GateDecision", record))
    assert name == "GateDecision" and decoded["cached_response"] == text  # the topic does carry it
    return decoded


def _cache_rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT tenant_id, entry_id, request_id, workflow_id, model, period_id, cache_entry_id, "
                        "input_tokens, output_tokens, avoided_micro_usd, recorded_at_ms, day "
                        "FROM cache_hits ORDER BY 1, 2").fetchall()


def test_a_cache_hit_is_projected_once_and_its_decision_holds_no_text(api_db: str) -> None:
    hit = _hit("acme", "r2", "gpt-4o", 4_000)
    # The same request id in another tenant: the same entry id, a row of its own.
    other = _hit("globex", "r2", "gpt-4o-mini", 300)
    batch = _batch([*_settled("acme", "r1", "gpt-4o", 5_000), hit, other, hit])  # hit twice: staged once
    batch.add_decision(_cache_hit_decision(hit))
    assert (len(batch.cache_hits), batch.rows) == (2, len(batch.ledger) + len(batch.deltas) + len(batch.usage) + 3)
    with psycopg.connect(api_db, autocommit=True) as conn:
        sql.prepare(conn)
        sql.write(conn, "p", batch, {})
        rows = _cache_rows(conn)
        assert [r[:11] for r in rows] == [
            ("acme", "r2/reservation", "r2", "wf", "gpt-4o", PERIOD, "r0/cache", 12, 7, 4_000, NOW + 10),
            ("globex", "r2/reservation", "r2", "wf", "gpt-4o-mini", PERIOD, "r0/cache", 12, 7, 300, NOW + 10)]
        assert str(rows[0][11]) == "2026-11-28"
        # The ledger listing names what the hit is about: the model asked for and the cost it avoided.
        assert conn.execute("SELECT model, amount_micro_usd FROM ledger_entries "
                            "WHERE entry_type = 'CacheHitRecorded' ORDER BY tenant_id").fetchall() == [
            ("gpt-4o", 4_000), ("gpt-4o-mini", 300)]
        # No money moved: only the settlement is posted.
        assert conn.execute("SELECT sum(posted_micro_usd), sum(pending_micro_usd) FROM balances "
                            "WHERE scope_type = 'TENANT'").fetchone() == (5_000, 0)
        # The decision row: every field of the record but the answer's text, which is nowhere in the row.
        outcome, body, cache_entry = conn.execute(
            "SELECT outcome, body, body ->> 'cache_entry_id' FROM decisions").fetchone()  # type: ignore[misc]
        assert (outcome, cache_entry, body["avoided_micro_usd"]) == ("CACHE_HIT", "r0/cache", 4_000)
        assert "cached_response" in body and body["cached_response"] is None
        assert conn.execute("SELECT count(*) FROM decisions WHERE decisions::text LIKE %s",
                            ("%Paris%",)).fetchone() == (0,)

        # Replayed from offset 0 (an operator reset the offsets): not one row more, not one changed.
        before = {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
                  for t in ("cache_hits", "ledger_entries", "balances", "decisions")}
        conn.execute("UPDATE consumer_offsets SET next_offset = 0")
        again = _batch([*_settled("acme", "r1", "gpt-4o", 5_000), hit, other])
        again.add_decision(_cache_hit_decision(hit))
        sql.write(conn, "p", again, {("ledger", 0): 0})
        assert {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in before} == before


def _produce(kafka: KafkaSettings, topic: str, key: bytes, values: list[bytes]) -> None:
    producer = Producer(producer_config(kafka.kafka_connection))
    for value in values:
        producer.produce(kafka.topic(topic), key=key, value=value)
    assert producer.flush(10) == 0


def test_the_projector_stores_a_cache_hit_decision_without_its_text(kafka: KafkaSettings, api_db: str,
                                                                     tmp_path: Path) -> None:
    # A NUL in the answer: PostgreSQL could store neither it nor the record, but nothing of it is stored.
    hit = _hit("acme", "r2", "gpt-4o", 4_000)
    limit = BudgetLimitSet("cmd/acme", "acme", PERIOD, NOW - 5, "TENANT", "acme", "SET", 1_000_000, 0, "c")
    _produce(kafka, topics.LEDGER, b"acme", [codec().encode(*to_record(e)) for e in (limit, hit)])
    _produce(kafka, topics.DECISIONS, b"acme",
             [codec().encode("GateDecision", _cache_hit_decision(hit, f"{ANSWER}\x00 and more"))])
    env = {"LEDGERGATE_KAFKA_BOOTSTRAP": kafka.kafka_bootstrap, "LEDGERGATE_TOPIC_PREFIX": kafka.topic_prefix,
           "LEDGERGATE_PG_DSN": api_db}
    with ServiceSet(env, tmp_path / "logs") as services, psycopg.connect(api_db, autocommit=True) as conn:
        services.start(["projector"])
        deadline = time.monotonic() + 60
        while True:
            counts = conn.execute("SELECT (SELECT count(*) FROM ledger_entries), (SELECT count(*) FROM cache_hits), "
                                  "(SELECT count(*) FROM decisions), (SELECT count(*) FROM projection_errors)"
                                  ).fetchone()
            if counts == (2, 1, 1, 0) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert counts == (2, 1, 1, 0), services.tail("projector")
        body = conn.execute("SELECT body FROM decisions").fetchone()[0]  # type: ignore[index]
        assert body["outcome"] == "CACHE_HIT" and body["cached_response"] is None
        assert conn.execute("SELECT count(*) FROM decisions WHERE decisions::text LIKE %s",
                            ("%Paris%",)).fetchone() == (0,)


def test_the_spend_report_counts_cache_hits_and_savings(api: TestClient, api_db: str, keys: Keys) -> None:
    entries: list[LedgerEntry] = [
        *_settled("acme", "s1", "gpt-4o", 5_000, workflow="wf-a"),
        *_settled("acme", "s2", "gpt-4o", 2_000, at=NOW + DAY // 2, workflow="wf-b"),
        _hit("acme", "h1", "gpt-4o", 4_000, workflow="wf-a"),
        _hit("acme", "h2", "gpt-4o", 1_000, at=NOW + DAY + 1, workflow="wf-b"),  # the next day
        _hit("acme", "h3", "gpt-4o-mini", 300, workflow="wf-a"),  # hits only: no settled usage
        _hit("acme", "h4", "gpt-4o", 70_000, at=NOW - 40 * DAY, period="2026-10"),  # not in the range
        _hit("globex", "h1", "gpt-4o", 99_999)]  # another tenant's
    with psycopg.connect(api_db, autocommit=True) as conn:
        sql.prepare(conn)
        sql.write(conn, "p", _batch(entries), {})
    path = "/v1/tenants/acme/reports/spend"

    def report(**params: Any) -> Any:
        return get_json(api, keys.a_read, path, period=PERIOD, **params)

    def rows(body: Any) -> dict[str, tuple[int, int, int, int]]:
        return {r["key"]: (r["requests"], r["spend_micro_usd"], r["cache_hits"], r["saved_micro_usd"])
                for r in body["rows"]}

    by_model = report(group_by="model")
    assert (by_model["total_micro_usd"], by_model["cache_hits"], by_model["saved_micro_usd"]) == (7_000, 3, 5_300)
    assert [r["key"] for r in by_model["rows"]] == ["gpt-4o", "gpt-4o-mini"]
    assert rows(by_model) == {"gpt-4o": (2, 7_000, 2, 5_000), "gpt-4o-mini": (0, 0, 1, 300)}
    assert by_model["rows"][1] == {"key": "gpt-4o-mini", "requests": 0, "input_tokens": 0, "cached_input_tokens": 0,
                                   "output_tokens": 0, "reasoning_tokens": 0, "spend_micro_usd": 0,
                                   "cache_hits": 1, "saved_micro_usd": 300}
    assert rows(report(group_by="workflow")) == {"wf-a": (1, 5_000, 2, 4_300), "wf-b": (1, 2_000, 1, 1_000)}
    assert rows(report(group_by="day")) == {"2026-11-28": (2, 7_000, 2, 4_300), "2026-11-29": (0, 0, 1, 1_000)}
    # The same filters: one workflow's hits only.
    wf_b = report(group_by="model", workflow="wf-b")
    assert (wf_b["cache_hits"], wf_b["saved_micro_usd"], rows(wf_b)) == (1, 1_000, {"gpt-4o": (1, 2_000, 1, 1_000)})
    # A hit has no tier and is never fail-open: those rows carry none, the totals carry them all.
    for group_by, key in (("tier", "premium"), ("fail_open", "decided")):
        body = report(group_by=group_by)
        assert (body["cache_hits"], body["saved_micro_usd"], rows(body)) == (3, 5_300, {key: (2, 7_000, 0, 0)})
    october = get_json(api, keys.a_read, path, period="2026-10", group_by="model")
    assert (october["cache_hits"], october["saved_micro_usd"], rows(october)) == (
        1, 70_000, {"gpt-4o": (0, 0, 1, 70_000)})
    empty = get_json(api, keys.a_read, path, period="2001-01")
    assert (empty["cache_hits"], empty["saved_micro_usd"], empty["rows"]) == (0, 0, [])

    resp = api.get(path, headers=Keys.h(keys.a_read), params={"period": PERIOD, "group_by": "model", "format": "csv"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    exported = list(csv.DictReader(io.StringIO(resp.text)))
    assert [(r["key"], r["spend_micro_usd"], r["cache_hits"], r["saved_micro_usd"]) for r in exported] == [
        ("gpt-4o", "7000", "2", "5000"), ("gpt-4o-mini", "0", "1", "300")]
