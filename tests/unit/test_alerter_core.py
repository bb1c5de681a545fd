"""alerter's pure core: payload, signature, backoff schedule, retry classification, URL handling."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from ledgergate.events import BudgetAlert
from ledgergate.services.alerter import core
from ledgergate.shared.errors import AlerterConfigError

ALERT = BudgetAlert("acme/2026-11/TENANT/acme/80", "acme", "TENANT", "acme", "2026-11", 80, 812_345, 1_000_000,
                    1_795_000_000_123)


def test_payload_carries_the_alert_with_usd_strings_and_iso_time() -> None:
    body = json.loads(core.payload(ALERT))
    assert {k: body[k] for k in ALERT.to_record()} == ALERT.to_record()
    assert body["type"] == "budget.threshold_crossed"
    assert (body["spent_usd"], body["limit_usd"]) == ("0.812345", "1.000000")
    assert body["crossed_at"].endswith(".123Z")


def test_headers_carry_the_idempotency_key_and_an_hmac_when_a_secret_is_set() -> None:
    body = core.payload(ALERT)
    plain = core.headers(ALERT, body, None)
    assert plain["Idempotency-Key"] == ALERT.alert_id and "X-Ledgergate-Signature" not in plain
    signed = core.headers(ALERT, body, "s3cret")
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert signed["X-Ledgergate-Signature"] == f"sha256={expected}"


def test_backoff_doubles_up_to_the_cap_and_honours_retry_after_within_it() -> None:
    assert [core.backoff_ms(a, 100, 1000) for a in range(1, 7)] == [100, 200, 400, 800, 1000, 1000]
    assert core.backoff_ms(1, 100, 1000, retry_after_ms=700) == 700
    assert core.backoff_ms(1, 100, 1000, retry_after_ms=60_000) == 1000, "a server cannot park an alert for long"
    assert core.backoff_ms(3, 100, 1000, retry_after_ms=50) == 400
    assert core.worst_case_ms(3, 100, 1000, 2.0) == 2000 + 6000


@pytest.mark.parametrize(("status", "permanent"), [
    (500, False), (502, False), (503, False), (408, False), (429, False), (425, False),
    (400, True), (401, True), (404, True), (410, True), (301, True), (307, True)])
def test_client_errors_and_redirects_are_permanent_server_errors_are_not(status: int, permanent: bool) -> None:
    assert core.classify_status(status) is permanent


def test_retry_after_seconds_only() -> None:
    assert core.parse_retry_after("3") == 3000
    assert core.parse_retry_after(" 0 ") == 0
    assert core.parse_retry_after("Wed, 21 Oct 2026 07:28:00 GMT") is None
    assert core.parse_retry_after(None) is None


def test_webhook_url_must_be_http_and_is_never_shown_whole() -> None:
    assert core.check_url("https://hooks.example.com/T0/B0/secret-token") == "https://hooks.example.com/T0/B0/secret-token"
    for bad in ("", "file:///etc/passwd", "ftp://example.com/x", "https:///nohost", "hooks.example.com/x"):
        with pytest.raises(AlerterConfigError):
            core.check_url(bad)
    shown = core.redacted("https://hooks.example.com:8443/T0/B0/secret-token?key=abc")
    assert shown == "https://hooks.example.com:8443/..." and "secret" not in shown and "abc" not in shown
    with pytest.raises(AlerterConfigError) as err:
        core.check_url("file:///run/secret-token")
    assert "secret-token" not in err.value.message


def test_an_anomaly_goes_out_as_budget_anomaly_with_observed_and_expected_rates() -> None:
    anomaly = BudgetAlert("anomaly/acme/TENANT/acme/spend_micro_usd_per_min/1795000020000", "acme", "TENANT", "acme",
                          "2026-11", 0, 0, 0, 1_795_000_025_000, kind="ANOMALY", metric="spend_micro_usd_per_min",
                          observed_per_min=2_500_000, expected_per_min=400_000, band_upper_per_min=1_200_000,
                          window_start_ms=1_795_000_020_000, window_ms=60_000)
    body = json.loads(core.payload(anomaly))
    assert body["type"] == "budget.anomaly" and body["kind"] == "ANOMALY"
    assert (body["observed_per_min"], body["expected_per_min"]) == (2_500_000, 400_000)
    assert (body["observed_usd_per_min"], body["expected_usd_per_min"]) == ("2.500000", "0.400000")
    assert "spent_usd" not in body and body["window_start"].endswith("Z")
    headers = core.headers(anomaly, core.payload(anomaly), None)
    assert headers["X-Ledgergate-Event"] == "budget.anomaly" and headers["Idempotency-Key"] == anomaly.alert_id
    assert json.loads(core.payload(ALERT))["kind"] == "THRESHOLD", "a threshold alert keeps its type and fields"
