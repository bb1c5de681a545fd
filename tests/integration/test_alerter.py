"""The alerter as a real process on the real broker, POSTing to a real HTTP server on 127.0.0.1: a
webhook that fails its first attempts gets every alert after backoff; one that always fails sends the
alert to the deadletter topic with the error; offsets are committed only after either."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.kafka_config import consumer_config, producer_config
from ledgergate.partitioning import murmur2_partition
from ledgergate.shared.kafka.reader import read_to_end
from ledgergate.shared.settings import KafkaSettings
from ledgergate.tools.servicerunner import ServiceSet
from tests.scrape import Samples, free_port, scrape, total
from tests.webhook import webhook


def _alert(tenant: str, pct: int) -> dict[str, Any]:
    return {"alert_id": f"{tenant}/2026-11/TENANT/{tenant}/{pct}", "tenant_id": tenant, "scope_type": "TENANT",
            "scope_id": tenant, "period_id": "2026-11", "threshold_pct": pct, "spent_micro_usd": pct * 10_000,
            "limit_micro_usd": 1_000_000, "crossed_at_ms": int(time.time() * 1000)}


def _publish(kafka: KafkaSettings, *alerts: dict[str, Any]) -> None:
    producer = Producer(producer_config(kafka.kafka_connection))
    for a in alerts:
        producer.produce(kafka.topic(topics.ALERTS), key=a["tenant_id"].encode(),
                         value=codec().encode("BudgetAlert", a))
    assert producer.flush(10) == 0


def _wait(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _committed(kafka: KafkaSettings, partition: int) -> int:
    consumer = Consumer(consumer_config(kafka.kafka_connection, f"{kafka.topic_prefix}ledgergate-alerter"))
    try:
        return consumer.committed([TopicPartition(kafka.topic(topics.ALERTS), partition)], timeout=10)[0].offset
    finally:
        consumer.close()


def _alerter(kafka: KafkaSettings, url: str, logs: Path, attempts: int = 4, health_port: int = 0) -> ServiceSet:
    services = ServiceSet({"LEDGERGATE_KAFKA_BOOTSTRAP": kafka.kafka_bootstrap,
                           "LEDGERGATE_HEALTH_PORT": str(health_port),  # /metrics; 0: none
                           "LEDGERGATE_TOPIC_PREFIX": kafka.topic_prefix, "LEDGERGATE_ALERT_WEBHOOK_URL": url,
                           "LEDGERGATE_ALERT_WEBHOOK_SECRET": "test-secret",
                           "LEDGERGATE_ALERT_MAX_ATTEMPTS": str(attempts),
                           "LEDGERGATE_ALERT_BACKOFF_INITIAL_MS": "150", "LEDGERGATE_ALERT_BACKOFF_MAX_MS": "2000"},
                          logs)
    services.start(["alerter"])
    return services


def test_flaky_webhook_gets_every_alert_after_backoff(kafka: KafkaSettings, tmp_path: Path) -> None:
    first, second = _alert("acme", 50), _alert("globex", 80)
    _publish(kafka, first, second)
    with webhook(lambda n: 503 if n <= 2 else 200) as hook:
        services = _alerter(kafka, hook.url, tmp_path / "logs")
        try:
            _wait(lambda: len(hook.bodies(200)) == 2, 60, "both alerts delivered")
            assert {b["alert_id"] for b in hook.bodies(200)} == {first["alert_id"], second["alert_id"]}
            # The first alert read failed twice, then got through: 150 ms, then 300 ms of backoff.
            with hook.lock:
                times = [t for t, _, b, _ in hook.received if b["alert_id"] == hook.received[0][2]["alert_id"]]
            assert len(times) == 3 and times[1] - times[0] >= 0.14 and times[2] - times[1] >= 0.29
            headers = hook.received[-1][1]
            assert headers["X-Ledgergate-Signature"].startswith("sha256=") and headers["Idempotency-Key"]
            for a in (first, second):
                p = murmur2_partition(a["tenant_id"].encode(), 6)
                _wait(lambda p=p: _committed(kafka, p) == 1, 10, f"offset committed on partition {p}")
            assert services.stop("alerter") == 0
            # Restarted, it resumes after the committed alerts: only the new one arrives.
            third = _alert("acme", 80)
            _publish(kafka, third)
            services.start(["alerter"])
            _wait(lambda: any(b["alert_id"] == third["alert_id"] for b in hook.bodies(200)), 60, "third alert")
            assert [b["alert_id"] for b in hook.bodies(200)].count(first["alert_id"]) == 1
            assert "not-logged" not in services.tail("alerter", 200)
        finally:
            services.stop_all()


def test_dead_webhook_dead_letters_the_alert_with_the_error(kafka: KafkaSettings, tmp_path: Path) -> None:
    failing, gone = _alert("initech", 100), _alert("hooli", 50)
    _publish(kafka, failing)
    with webhook(lambda n: 404 if n == 4 else 500) as hook:
        port = free_port()
        services = _alerter(kafka, hook.url, tmp_path / "logs", attempts=3, health_port=port)
        try:
            dead = _wait(lambda: [codec().decode(m.value())[1] for m in read_to_end(
                kafka.kafka_connection, kafka.topic(topics.DEADLETTER), list(range(6)))], 60, "dead letter")
            assert len(hook.received) == 3, "bounded: max_attempts POSTs, then the dead letter"
            (letter,) = dead
            assert letter["original_topic"] == kafka.topic(topics.ALERTS) and letter["service"] == "alerter"
            assert letter["error_code"] == "webhook_failed" and "HTTP 500" in letter["error_message"]
            assert "3 attempt(s)" in letter["error_message"] and "not-logged" not in letter["error_message"]
            original = codec().decode(letter["original_value"])[1]
            # The fields it was written with, and the defaults of the ones BudgetAlert gained since (a threshold).
            assert original.items() >= failing.items() and original["kind"] == "THRESHOLD"
            p = murmur2_partition(b"initech", 6)
            _wait(lambda: _committed(kafka, p) == letter["original_offset"] + 1, 10, "offset committed")
            # A permanent failure (404) is not retried: one POST, straight to the dead letters.
            _publish(kafka, gone)
            _wait(lambda: len(list(read_to_end(kafka.kafka_connection, kafka.topic(topics.DEADLETTER),
                                               list(range(6))))) == 2, 30, "second dead letter")
            assert len(hook.received) == 4
            # Its /metrics on the health listener: both given up, both dead-lettered under their code.
            def given_up() -> Samples | None:
                now = scrape(port)
                return now if total(now, "ledgergate_alert_deliveries_total", result="dead_lettered") == 2 else None

            seen = _wait(given_up, 10, "the alerter's metrics")
            assert total(seen, "ledgergate_dead_letters_total", service="alerter", error_code="webhook_failed") == 2
            assert total(seen, "ledgergate_alert_deliveries_total", result="delivered") == 0
        finally:
            services.stop_all()
