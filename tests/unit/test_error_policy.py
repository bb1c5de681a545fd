"""The stream runtime's error policies are pure: (message, exception, attempt) -> verdict
(shared/kafka/errorpolicy.py, docs/decisions/0008-one-stream-runtime.md)."""

from __future__ import annotations

import pytest
from confluent_kafka import Message

from ledgergate.errors import MalformedMessageError
from ledgergate.services.alerter.app import Alerter
from ledgergate.shared.errors import DeliveryError
from ledgergate.shared.kafka.errorpolicy import DeadLetter, Retry, Stop, dead_letter_first, error_code
from ledgergate.shared.settings import AlerterSettings

MSG = Message(topic="budget.alerts", partition=3, offset=41, value=b"x")


def test_the_services_dead_letter_everything_but_a_broken_invariant() -> None:
    assert dead_letter_first(MSG, AssertionError("pending went negative"), 1) == Stop()
    assert dead_letter_first(MSG, MalformedMessageError("bad bytes"), 1) == DeadLetter()
    assert dead_letter_first(MSG, ValueError("surprise"), 1) == DeadLetter()
    assert error_code(MalformedMessageError("bad bytes")) == ("malformed_message", "bad bytes")
    assert error_code(ValueError("surprise")) == ("internal_error", "ValueError('surprise')")


def _alerter(attempts: int) -> Alerter:
    return Alerter(AlerterSettings(alert_webhook_url="https://hooks.example/secret-token", alert_max_attempts=attempts,
                                   alert_backoff_initial_ms=150, alert_backoff_max_ms=1000))


def test_the_alerter_retries_a_failed_post_with_backoff_then_dead_letters_it_naming_the_attempts() -> None:
    policy = _alerter(4).on_error
    failure = DeliveryError("HTTP 503 Service Unavailable")
    assert [policy(MSG, failure, n) for n in (1, 2, 3)] == [Retry(150), Retry(300), Retry(600)]
    last = policy(MSG, failure, 4)
    assert isinstance(last, DeadLetter) and last.note.startswith("4 attempt(s) to https://hooks.example/...")
    assert "secret-token" not in last.note
    # The server's Retry-After wins when longer, within the cap.
    assert policy(MSG, DeliveryError("HTTP 429", retry_after_ms=5000), 1) == Retry(1000)


def test_the_alerter_dead_letters_permanent_failures_and_foreign_records_at_once() -> None:
    policy = _alerter(6).on_error
    assert isinstance(policy(MSG, DeliveryError("HTTP 404 Not Found", permanent=True), 1), DeadLetter)
    assert policy(MSG, MalformedMessageError("not an alert"), 1) == DeadLetter()
    assert policy(MSG, AssertionError("broken"), 1) == Stop()


def test_a_retry_wait_is_bounded() -> None:
    with pytest.raises(AssertionError):
        Retry(-1)
    with pytest.raises(AssertionError):
        Retry(600_001)
