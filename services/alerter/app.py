"""alerter: budget.alerts -> an HTTP POST of each alert to LEDGERGATE_ALERT_WEBHOOK_URL.

A process of its own so a slow or dead webhook never blocks the gate: the budget-manager only appends to
budget.alerts. It runs on the one stream runtime (shared/kafka/runtime.py) with delivery
"produce-then-commit" and its own error policy: a failed POST is retried up to `alert_max_attempts`
times with exponential backoff (the runtime waits, alive, between attempts); after the last failure (or
at once, for a permanent one such as a 404) the alert goes to the deadletter topic with the error. The
offset is committed only after the alert was delivered or its dead letter acknowledged, so a crash
repeats an alert rather than losing it: at least once, with the alert id as the idempotency key. One
alert per batch, in order per partition: an alert's retries never hold another's commit.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from confluent_kafka import Message

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.errors import MalformedMessageError
from ledgergate.events import BudgetAlert
from ledgergate.services.alerter import core
from ledgergate.shared import metrics
from ledgergate.shared.errors import DeliveryError
from ledgergate.shared.kafka.errorpolicy import DeadLetter, Retry, Stop, Verdict
from ledgergate.shared.kafka.outbox import Outbox
from ledgergate.shared.kafka.runtime import run_service
from ledgergate.shared.logging import configure
from ledgergate.shared.settings import AlerterSettings

Post = Callable[[str, bytes, dict[str, str], float], None]


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
    """The alerter's handler (one POST per alert) and error policy (retry with backoff, then the dead
    letters) for the one stream runtime."""

    def __init__(self, settings: AlerterSettings, post: Post = http_post) -> None:
        self.settings = settings
        self.url = core.check_url(settings.alert_webhook_url)
        self.secret = settings.alert_webhook_secret.get_secret_value() if settings.alert_webhook_secret else None
        self.post = post
        self.log = configure("alerter")
        self.topic = settings.topic(topics.ALERTS)

    def assigned(self, partitions: list[int]) -> None:
        return None

    def revoked(self, partitions: list[int]) -> None:
        pass

    def idle(self, now_ms: int, out: Outbox) -> None:
        pass

    def handle(self, msg: Message, out: Outbox) -> None:
        """POST one alert; raise DeliveryError when the webhook does not take it (the policy decides)."""
        name, rec = codec().decode(msg.value())
        if name != "BudgetAlert":
            raise MalformedMessageError(f"{name} does not belong on {msg.topic()}")
        alert = BudgetAlert.from_record(rec)
        body = core.payload(alert)
        started = time.monotonic()
        self.post(self.url, body, core.headers(alert, body, self.secret), self.settings.alert_timeout_s)
        metrics.observe_alert("delivered")
        self.log.info("alert_delivered", ms=round((time.monotonic() - started) * 1000), tenant_id=alert.tenant_id,
                      alert_id=alert.alert_id)

    def on_error(self, msg: Message, exc: Exception, attempt: int) -> Verdict:
        if isinstance(exc, AssertionError):
            return Stop()
        if not isinstance(exc, DeliveryError):
            return DeadLetter()  # not an alert (undecodable, another event): no POST would take it
        s = self.settings
        self.log.warning("alert_attempt_failed", attempt=attempt, error=exc.message, permanent=exc.permanent,
                         partition=msg.partition(), offset=msg.offset())
        if not exc.permanent and attempt < s.alert_max_attempts:
            return Retry(core.backoff_ms(attempt, s.alert_backoff_initial_ms, s.alert_backoff_max_ms,
                                         exc.retry_after_ms))
        self.log.error("alert_dead_lettered", partition=msg.partition(), offset=msg.offset(), error=exc.code)
        metrics.observe_alert("dead_lettered")
        return DeadLetter(f"{attempt} attempt(s) to {core.redacted(self.url)}, last: ")


def run(settings: AlerterSettings | None = None) -> None:
    s = settings or AlerterSettings()
    alerter = Alerter(s)
    worst_ms = core.worst_case_ms(s.alert_max_attempts, s.alert_backoff_initial_ms, s.alert_backoff_max_ms,
                                  s.alert_timeout_s)
    alerter.log.info("alerter_started", topic=alerter.topic, webhook=core.redacted(alerter.url),
                     max_attempts=s.alert_max_attempts)
    # One alert may spend its whole retry budget between two polls: the group must not evict us meanwhile.
    run_service("alerter", s, alerter, [alerter.topic], alerter.log, on_error=alerter.on_error,
                delivery="produce-then-commit", max_batch=1,
                consumer_overrides={"max.poll.interval.ms": max(300_000, worst_ms + 60_000)})
