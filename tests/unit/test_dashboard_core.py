"""The dashboard's pure arithmetic (services/api/dashboard.py): run-out dates and the decision window."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from ledgergate.services.api.dashboard import HOUR_MS, MAX_RUNWAY_DAYS, TIMELINE_BUCKETS, per_day, runway, window
from ledgergate.shared.units import MS_PER_DAY

JAN_1 = 978_307_200_000  # 2001-01-01T00:00Z


def test_runway_days_and_date() -> None:
    assert runway(10_000_000, 1_000_000, JAN_1) == (10, "2001-01-11")
    # 1.5 days left at noon runs out the next day but one at midnight: the instant, not the whole days.
    assert runway(1_500_000, 1_000_000, JAN_1 + MS_PER_DAY // 2) == (1, "2001-01-03")
    assert runway(999_999, 1_000_000, JAN_1) == (0, "2001-01-01")  # less than a day: today
    assert runway(0, 5, JAN_1 + 1) == (0, "2001-01-01")
    assert runway(-7, 5, JAN_1) == (0, "2001-01-01")  # overspent (flagged overage): ran out already


def test_runway_without_a_limit_a_burn_or_a_meaningful_date() -> None:
    assert runway(None, 1_000, JAN_1) == (None, None)
    assert runway(5_000, 0, JAN_1) == (None, None)
    assert runway(0, 0, JAN_1) == (None, None)  # nothing burning: no run-out, even at zero
    days, date = runway(10**15, 1, JAN_1)  # a billion dollars at a micro-dollar a day
    assert days == 10**15 and days > MAX_RUNWAY_DAYS and date is None


@pytest.mark.parametrize("window_h", [1, 24, 168, 744])
def test_window_covers_now_in_its_last_bucket(window_h: int) -> None:
    for now in (JAN_1, JAN_1 + 1, JAN_1 + 12_345_678, JAN_1 + MS_PER_DAY - 1):
        lo, width = window(now, window_h)
        assert width * TIMELINE_BUCKETS == window_h * HOUR_MS
        assert lo % width == 0  # aligned: two polls in one bucket ask for the same buckets
        assert lo + (TIMELINE_BUCKETS - 1) * width <= now < lo + TIMELINE_BUCKETS * width


def test_window_bounds_and_per_day() -> None:
    with pytest.raises(AssertionError):
        window(JAN_1, 0)
    with pytest.raises(AssertionError):
        window(JAN_1, 745)
    assert per_day(10, 3) == 3 and per_day(10, 0) == 0


def test_the_wheel_carries_every_file_of_the_page() -> None:
    """pyproject's package data names each file under services/api/static/, so a wheel serves the page."""
    root = Path(__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "ledgergate.services.api"]
    static = root / "services" / "api"
    files = {p for p in (static / "static").rglob("*") if p.is_file()}
    assert {static / "static" / "index.html", static / "static" / "vendor" / "chartjs" / "chart.umd.min.js"} <= files
    covered = {p for g in globs for p in static.glob(g)}  # glob's `*` stops at `/`, as setuptools' does
    assert sorted(str(p.relative_to(static)) for p in files - covered) == []
