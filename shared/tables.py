"""Small helpers the operator reports share: UTC days from epoch milliseconds, micro-USD as text,
and plain-text tables. Integer arithmetic only, so a printed total equals the summed ledger exactly."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

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


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned text columns; numbers right-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(r[i]) for r in cells[1:]) and len(cells) > 1 for i in range(len(headers))]
    lines = []
    for row in cells:
        lines.append("  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric,
                                                                                     strict=True)).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _is_number(text: str) -> bool:
    return text.replace(".", "", 1).replace("-", "", 1).replace("+", "", 1).replace("%", "", 1).isdigit()
