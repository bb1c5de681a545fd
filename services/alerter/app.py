"""alerter: budget.alerts -> an HTTP POST of each alert to LEDGERGATE_ALERT_WEBHOOK_URL.

A process of its own so a slow or dead webhook never blocks the gate: the budget-manager only appends to
budget.alerts. Each alert is tried up to `alert_max_attempts` times with exponential backoff; after the
last failure (or at once, for a permanent one such as a 404) it goes to the deadletter topic with the
error. The consumer offset is committed only after the alert was delivered or dead-lettered, so a crash
repeats an alert rather than losing it: at least once, with the alert id as the idempotency key.
Alerts of one partition are handled in order, one at a time; the bounded retries keep them moving.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.errors import CodecError, MalformedMessageError
from ledgergate.events import BudgetAlert
from ledgergate.kafka_config import consumer_config, producer_config
from ledgergate.services.alerter import core
from ledgergate.shared.errors import DeadLetterError, DeliveryError, FatalClientError
from ledgergate.shared.health import Health, on_stop_signal
from ledgergate.shared.kafka.deadletter import dead_letter
from ledgergate.shared.kafka.fatal import ClientErrors
from ledgergate.shared.logging import configure
from ledgergate.shared.settings import AlerterSettings

Post = Callable[[str, bytes, dict[str, str], float], None]
COMMIT_DEADLINE_S = 90.0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would turn a redirected POST into a body-less GET and call it delivered.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def http_post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> None:
    """POST once; DeliveryError unless the answer is 2xx."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _opener.open(request, timeout=timeout_s) as response:
            response.read(65536)  # drain a little so keep-alive servers are not cut mid-answer
            return
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"HTTP {exc.code} {exc.reason}", permanent=core.classify_status(exc.code),
                                 retry_after_ms=core.parse_retry_after(exc.headers.get("Retry-After"))) from None
    except (urllib.error.URLError, OSError) as exc:  # refused, reset, DNS, timeout: all worth a retry
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(f"{type(reason).__name__}: {reason}") from None


class Alerter:
    def __init__(self, settings: AlerterSettings, post: Post = http_post) -> None:
        self.settings = settings
        self.url = core.check_url(settings.alert_webhook_url)
        self.secret = settings.alert_webhook_secret.get_secret_value() if settings.alert_webhook_secret else None
        self.post = post
        self.log = configure("alerter")
        self.topic = settings.topic(topics.ALERTS)
        self.deadletter_topic = settings.topic(topics.DEADLETTER)
        self.stopping = threading.Event()
        worst = core.worst_case_ms(settings.alert_max_attempts, settings.alert_backoff_initial_ms,
                                   settings.alert_backoff_max_ms, settings.alert_timeout_s)
        self.group_id = f"{settings.topic_prefix}ledgergate-alerter"
        self.health = Health("alerter", settings.stall_after_ms)
        self.errors = ClientErrors("alerter", self.health, self.log)
        on_stop_signal(self.stop, settings.shutdown_timeout_ms, self.log)  # before the clients' threads
        self.consumer = Consumer(consumer_config(settings.kafka_bootstrap, self.group_id, **{
            "client.id": f"alerter-{settings.instance_id}", "error_cb": self.errors.on_error,
            # One alert may spend its whole retry budget between two polls: the group must not evict us.
            "max.poll.interval.ms": max(300_000, worst + 60_000)}))
        self.producer = Producer(producer_config(settings.kafka_bootstrap, **{
            "client.id": "alerter-deadletter", "error_cb": self.errors.on_error}))

    def stop(self, *_: object) -> None:
        self.stopping.set()

    def _commit(self, msg: Message) -> None:
        """Commit past a handled alert. While the broker is away the commit is retried (up to
        COMMIT_DEADLINE_S, then the process exits for its supervisor); if the group moved the
        partition meanwhile, its new owner may send the alert again (at least once, by alert id)."""
        deadline = time.monotonic() + COMMIT_DEADLINE_S
        while True:
            try:
                self.consumer.commit(message=msg, asynchronous=False)
                return
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() in (KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID,
                                  KafkaError.REBALANCE_IN_PROGRESS):
                    self.log.warning("commit_skipped_after_rebalance", error=str(err))
                    return
                if err.fatal() or time.monotonic() > deadline:
                    raise FatalClientError(f"alerter: cannot commit past offset {msg.offset()}: {err}") from exc
                self.health.turned()
                self.log.warning("commit_retry", error=str(err))
                if self.stopping.wait(0.5):
                    return

    def run(self) -> None:
        self.health.start_watchdog(self.log)
        if self.settings.health_port:
            self.health.serve(self.settings.health_host, self.settings.health_port)
        self.consumer.subscribe([self.topic])
        self.log.info("alerter_started", topic=self.topic, webhook=core.redacted(self.url),
                      max_attempts=self.settings.alert_max_attempts)
        try:
            while not self.stopping.is_set():
                self.errors.check()
                msg = self.consumer.poll(0.5)
                self.health.turned()
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    self.errors.consumed_error(err)
                    continue
                if self.handle(msg):
                    self._commit(msg)
                    self.health.progressed()
                else:
                    # Shutting down mid-retry: the alert stays uncommitted and is tried again next start.
                    break
        finally:
            self.log.info("stopping")
            self.consumer.close()
            self.producer.flush(10)

    def handle(self, msg: Message) -> bool:
        """Deliver or dead-letter one alert; False only when a shutdown interrupted its retries."""
        try:
            name, rec = codec().decode(msg.value())
            if name != "BudgetAlert":
                raise MalformedMessageError(f"{name} does not belong on {msg.topic()}")
        except CodecError as exc:
            self._dead_letter(msg, exc.code, exc.message, {})
            return True
        alert = BudgetAlert.from_record(rec)
        body = core.payload(alert)
        headers = core.headers(alert, body, self.secret)
        context = {"tenant_id": alert.tenant_id, "alert_id": alert.alert_id}
        error: DeliveryError | None = None
        for attempt in range(1, self.settings.alert_max_attempts + 1):
            started = time.monotonic()
            try:
                self.post(self.url, body, headers, self.settings.alert_timeout_s)
                self.log.info("alert_delivered", attempt=attempt, ms=round((time.monotonic() - started) * 1000),
                              **context)
                return True
            except DeliveryError as exc:
                error = exc
            self.log.warning("alert_attempt_failed", attempt=attempt, error=error.message,
                             permanent=error.permanent, **context)
            if error.permanent or attempt == self.settings.alert_max_attempts:
                break
            delay_ms = core.backoff_ms(attempt, self.settings.alert_backoff_initial_ms,
                                       self.settings.alert_backoff_max_ms, error.retry_after_ms)
            if self.stopping.wait(delay_ms / 1000):
                return False
        assert error is not None
        self._dead_letter(msg, error.code, f"{attempt} attempt(s) to {core.redacted(self.url)}, last: {error.message}",
                          context)
        return True

    def _dead_letter(self, msg: Message, code: str, message: str, context: dict[str, str]) -> None:
        self.log.error("alert_dead_lettered", partition=msg.partition(), offset=msg.offset(), error=code, **context)
        envelope, headers = dead_letter(msg, "alerter", code, message)
        failures: list[str] = []
        self.producer.produce(self.deadletter_topic, key=msg.key(), value=envelope, headers=headers,
                              on_delivery=lambda err, _m: failures.append(str(err)) if err is not None else None)
        if self.producer.flush(30) != 0 or failures:
            raise DeadLetterError(f"dead letter for {msg.topic()}[{msg.partition()}]@{msg.offset()} not written: "
                                  f"{failures[0] if failures else 'timed out'}")


def run(settings: AlerterSettings | None = None) -> None:
    Alerter(settings or AlerterSettings()).run()
