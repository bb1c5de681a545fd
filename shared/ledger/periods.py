"""Budget periods are calendar months in UTC, named 'YYYY-MM'."""

from __future__ import annotations

from datetime import UTC, datetime


def period_of(now_ms: int) -> tuple[str, int, int]:
    """(period id, start ms, end ms exclusive) of the month containing now_ms."""
    moment = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    end = datetime(moment.year + (moment.month == 12), moment.month % 12 + 1, 1, tzinfo=UTC)
    return f"{moment.year:04d}-{moment.month:02d}", int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def period_bounds(period_id: str) -> tuple[int, int]:
    """(start ms, end ms exclusive) of a 'YYYY-MM' period; ValueError names a malformed id."""
    try:
        start = datetime.strptime(period_id, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"period {period_id!r} is not YYYY-MM") from None
    _, start_ms, end_ms = period_of(int(start.timestamp() * 1000))
    return start_ms, end_ms
