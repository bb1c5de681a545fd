"""alerter's pure core: what a webhook receives for a BudgetAlert, how long to wait between attempts,
and which failures are worth retrying. No I/O; app.py does the HTTP and Kafka."""

from __future__ import annotations

import hashlib
import hmac
import json
from urllib.parse import urlsplit

from ledgergate.events import BudgetAlert
from ledgergate.shared.errors import AlerterConfigError
from ledgergate.shared.units import iso_ms, usd

EVENT_TYPE = "budget.threshold_crossed"
ANOMALY_EVENT_TYPE = "budget.anomaly"  # kind ANOMALY: a rate left its band (services/anomaly/)
# A client error will not fix itself on retry, except these: timeout, too early, rate limited.
RETRYABLE_4XX = frozenset({408, 425, 429})


def check_url(url: str) -> str:
    """The webhook URL, validated: http(s) with a host (urllib would also open file:// and ftp://)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AlerterConfigError("LEDGERGATE_ALERT_WEBHOOK_URL must be an http(s) URL with a host, "
                                 f"got {redacted(url) or 'nothing'}")
    return url


def redacted(url: str) -> str:
    """scheme://host[:port] only: webhook URLs often carry their token in the path or query."""
    parts = urlsplit(url)
    if not parts.scheme:
        return "<invalid url>" if url else ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}/..."


def event_type(alert: BudgetAlert) -> str:
    return ANOMALY_EVENT_TYPE if alert.kind == "ANOMALY" else EVENT_TYPE


def payload(alert: BudgetAlert) -> bytes:
    """The JSON body: the alert's fields plus USD strings and an ISO time for humans and chat tools; an
    anomaly's observed and expected rates, and for a spend anomaly the same in USD per minute."""
    body: dict[str, object] = {"type": event_type(alert), **alert.to_record(),
                               "crossed_at": iso_ms(alert.crossed_at_ms)}
    if alert.kind == "ANOMALY":
        body["window_start"] = iso_ms(alert.window_start_ms)
        if alert.metric == "spend_micro_usd_per_min":
            body["observed_usd_per_min"] = usd(alert.observed_per_min)
            body["expected_usd_per_min"] = usd(alert.expected_per_min)
    else:
        body["spent_usd"], body["limit_usd"] = usd(alert.spent_micro_usd), usd(alert.limit_micro_usd)
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def headers(alert: BudgetAlert, body: bytes, secret: str | None) -> dict[str, str]:
    # Delivery is at least once (a crash after the POST and before the commit repeats it), so the
    # alert id travels as an idempotency key for receivers to deduplicate on.
    out = {"Content-Type": "application/json", "User-Agent": "ledgergate-alerter/1",
           "Idempotency-Key": alert.alert_id, "X-Ledgergate-Event": event_type(alert)}
    if secret:
        out["X-Ledgergate-Signature"] = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return out


def backoff_ms(attempt: int, initial_ms: int, max_ms: int, retry_after_ms: int | None = None) -> int:
    """Wait after failed attempt number `attempt` (1-based): initial * 2^(attempt-1), capped; a server's
    Retry-After wins when longer, still capped so one alert cannot hold its partition for long."""
    delay: int = min(max_ms, initial_ms * 2 ** (attempt - 1))
    if retry_after_ms is not None:
        delay = min(max_ms, max(delay, retry_after_ms))
    return delay


def classify_status(status: int) -> bool:
    """True when an HTTP status is a permanent failure (no retry)."""
    return 300 <= status < 500 and status not in RETRYABLE_4XX


def parse_retry_after(value: str | None) -> int | None:
    """Retry-After in delta-seconds, as ms; the HTTP-date form is ignored (the backoff applies)."""
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip()) * 1000


def worst_case_ms(max_attempts: int, initial_ms: int, max_ms: int, timeout_s: float) -> int:
    """Longest time one alert can take: every attempt timing out plus every backoff."""
    waits = sum(backoff_ms(a, initial_ms, max_ms, max_ms) for a in range(1, max_attempts))
    return waits + int(max_attempts * timeout_s * 1000)
