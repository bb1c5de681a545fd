"""Time units and exact text for money: UTC days from epoch milliseconds, ISO instants, micro-USD as
dollars. Integer arithmetic only, so a printed total equals the summed ledger exactly. The one home of
these conversions for the services, the API and the tools."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

_EPOCH = date(1970, 1, 1)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
MS_PER_DAY = 86_400_000


def utc_day(ms: int) -> str:
    """'YYYY-MM-DD' of an epoch-millisecond instant in UTC (floor division: no float rounding at midnight)."""
    return (_EPOCH + timedelta(days=ms // MS_PER_DAY)).isoformat()


def iso_ms(ms: int) -> str:
    """An epoch-millisecond instant as ISO 8601 UTC, exactly."""
    return (_EPOCH_UTC + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def day_start_ms(day: date) -> int:
    return (day - _EPOCH).days * MS_PER_DAY


def usd(micro: int) -> str:
    """Micro-USD as dollars with six decimals, exactly (no float on the way)."""
    sign = "-" if micro < 0 else ""
    micro = abs(micro)
    return f"{sign}{micro // 1_000_000}.{micro % 1_000_000:06d}"


def parse_instant_ms(text: str) -> int:
    """Epoch milliseconds from an integer (already ms) or an ISO 8601 date/time; naive times are UTC."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not epoch milliseconds or an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH_UTC) // timedelta(milliseconds=1)  # exact: timedelta arithmetic is integral
