"""The anomaly detector as a real process (`ledgergate run anomaly`, a faust worker) on the real broker: a
steady tenant and a spiking one send usage.metered records as the token-counter writes them, in 2 s
windows; the spiking tenant gets exactly one ANOMALY alert per series for its episode, the steady one
none; after a kill -9 and restart (faust restores its tables from their changelogs and reprocesses what it
had not committed) the episode is not alerted again, and the next episode is."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Producer

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.events import Usage, UsageMetered
from ledgergate.kafka_config import producer_config
from ledgergate.shared import db
from ledgergate.shared.kafka.reader import read_to_end
from ledgergate.shared.settings import KafkaSettings, PostgresSettings
from ledgergate.tools.servicerunner import ServiceSet
from tests.conftest import TEST_PARTITIONS
from tests.fresh_db import fresh_database

pytestmark = pytest.mark.e2e

WINDOW_S = 2
TICK_S = 0.25
STEADY, SPIKY = "steady-co", "spiky-co"
# Short warm-up and a quick EWMA: the test has seconds, not an hour. min_spend is out of reach, so only the
# token series alert (two: the tenant's and its workflow's).
POLICY = {"anomaly": {"warmup_windows": 5, "cooldown_windows": 3, "ewma_alpha": 0.5,
                      "min_spend_micro_usd_per_min": 10**12}}


@pytest.fixture
def read_model(postgres: PostgresSettings) -> Iterator[str]:
    with fresh_database(postgres.pg_dsn) as dsn:
        db.migrate(dsn)
        with psycopg.connect(dsn) as conn:
            for n, tenant in enumerate((STEADY, SPIKY)):
                # The tenant's PolicyChanged as the projector stores it (the detector reads the latest one).
                body = {"entry_id": f"policy-{tenant}", "tenant_id": tenant, "policy_version": 1,
                        "policy_json": json.dumps(POLICY), "command_id": f"c-{tenant}"}
                conn.execute("INSERT INTO ledger_entries (entry_id, tenant_id, period_id, entry_type, "
                             "recorded_at_ms, source_partition, source_offset, body) "
                             "VALUES (%s, %s, '2026-12', 'PolicyChanged', %s, 0, %s, %s)",
                             (f"policy-{tenant}", tenant, 1, n, json.dumps(body)))
        yield dsn


def metered(tenant: str, n: int, tokens: int) -> bytes:
    now_ms = time.time_ns() // 1_000_000
    body = UsageMetered(f"{tenant}-{n}", tenant, "gpt-4o-mini", "OK", Usage(tokens // 2, 0, tokens - tokens // 2, 0),
                        False, tokens - tokens // 2, 1_000_000, now_ms, now_ms, "wf-main")
    return codec().encode("UsageMetered", body.to_record())


def anomaly_alerts(kafka: KafkaSettings) -> list[dict]:
    out = []
    for msg in read_to_end(kafka.kafka_connection, kafka.topic(topics.ALERTS), list(range(TEST_PARTITIONS))):
        name, rec = codec().decode(msg.value())
        assert name == "BudgetAlert" and msg.key() == rec["tenant_id"].encode()
        out.append(rec)
    return out


def drive(producer: Producer, kafka: KafkaSettings, windows: list[int], rng: random.Random, start: int) -> int:
    """One window per entry: STEADY at 1x, SPIKY at the entry's multiple; returns the next record number."""
    n = start
    per_window = round(WINDOW_S / TICK_S)
    time.sleep(WINDOW_S - time.time() % WINDOW_S + TICK_S / 2)  # the ticks of one entry fill one window
    for multiple in windows:
        for _ in range(per_window):
            for tenant, times in ((STEADY, 1), (SPIKY, multiple)):
                for _ in range(times):
                    n += 1
                    producer.produce(kafka.topic(topics.METERED), key=tenant.encode(),
                                     value=metered(tenant, n, round(rng.gauss(1000, 80))))
            producer.poll(0)
            time.sleep(TICK_S)
    assert producer.flush(30) == 0
    return n


def test_one_anomaly_alert_per_episode_and_none_on_steady_load(kafka: KafkaSettings, read_model: str,
                                                               tmp_path: Path) -> None:
    env = {"LEDGERGATE_KAFKA_BOOTSTRAP": kafka.kafka_bootstrap, "LEDGERGATE_TOPIC_PREFIX": kafka.topic_prefix,
           "LEDGERGATE_PG_DSN": read_model, "LEDGERGATE_ANOMALY_WINDOW_S": str(WINDOW_S),
           "LEDGERGATE_ANOMALY_LATE_S": "1", "LEDGERGATE_ANOMALY_SWEEP_S": "0.5",
           "LEDGERGATE_ANOMALY_START_FROM": "earliest", "LEDGERGATE_ANOMALY_SESSION_TIMEOUT_S": "8",
           # The pause around the restart leaves a few empty windows, how many depends on the machine's speed;
           # folded as zeros they would sink the band (alpha 0.5) and the next steady window would alert. With
           # no gap allowed, any idle window means the band is learnt again (warm-up): the same every run.
           "LEDGERGATE_ANOMALY_MAX_GAP_WINDOWS": "0",
           "LEDGERGATE_ANOMALY_DATA_DIR": str(tmp_path / "faust")}
    producer = Producer(producer_config(kafka.kafka_connection))
    rng = random.Random(7)
    with ServiceSet(env, tmp_path / "logs") as services:
        services.start(["anomaly"])
        try:
            # Eight windows of steady load (the warm-up and more), a 10x spike for two, steady again for six.
            n = drive(producer, kafka, [1] * 8 + [10] * 2 + [1] * 6, rng, 0)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(anomaly_alerts(kafka)) < 2:
                assert not services.dead(), services.tail("anomaly", 40)
                time.sleep(1)
            time.sleep(2 * WINDOW_S)  # the last windows close: nothing more may come
            alerts = anomaly_alerts(kafka)
            log = services.tail("anomaly", 40)
            assert {a["tenant_id"] for a in alerts} == {SPIKY}, f"{alerts}\n{log}"
            assert sorted((a["scope_type"], a["scope_id"], a["metric"]) for a in alerts) == [
                ("TENANT", SPIKY, "tokens_per_min"), ("WORKFLOW", "wf-main", "tokens_per_min")], f"{alerts}\n{log}"
            for a in alerts:
                assert a["kind"] == "ANOMALY" and a["window_ms"] == WINDOW_S * 1000
                assert a["observed_per_min"] > a["band_upper_per_min"] > a["expected_per_min"] > 0
                # 10x of ~8,000 tokens per 2 s window, per minute.
                assert a["observed_per_min"] > 5 * a["expected_per_min"]
            first = {a["alert_id"] for a in alerts}

            # kill -9 and a new worker: it restores both tables from their changelogs and reprocesses what the
            # old one had not committed. Then steady load past the cool-down and a second spike: the worker
            # is live (two new alerts, for the new episode) and the first episode is not alerted again.
            services.kill9("anomaly")
            services.start(["anomaly"])
            drive(producer, kafka, [1] * 5 + [10] * 2 + [1] * 3, rng, n)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and len({a["alert_id"] for a in anomaly_alerts(kafka)}) < 4:
                assert not services.dead(), services.tail("anomaly", 40)
                time.sleep(1)
            time.sleep(2 * WINDOW_S)
            after = anomaly_alerts(kafka)
            log = services.tail("anomaly", 40)
            second = {a["alert_id"] for a in after} - first
            assert {a["alert_id"] for a in after} >= first and len(second) == 2, f"{after}\n{log}"
            assert sorted((a["scope_type"], a["metric"]) for a in after if a["alert_id"] in second) == [
                ("TENANT", "tokens_per_min"), ("WORKFLOW", "tokens_per_min")], f"{after}\n{log}"
            first_start = max(a["window_start_ms"] for a in alerts)
            assert all(a["window_start_ms"] > first_start for a in after if a["alert_id"] in second)
            # A repeat of an alert (at least once) carries the same id, so receivers drop it; none is expected.
            assert len(after) == 4, f"repeated alerts: {after}"
        finally:
            services.stop_all()
