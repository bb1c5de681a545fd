"""Percentiles and rates over recorded samples. Samples are kept whole (no histogram buckets): a run
holds at most a few hundred thousand, and exact order statistics need no explanation."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p99_9": 0.999}


def pct(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0 for none)."""
    if not ordered:
        return 0.0
    return float(ordered[max(0, math.ceil(q * len(ordered)) - 1)])


def summary_ms(samples_us: Sequence[int], quantiles: dict[str, float] | None = None) -> dict[str, float]:
    """p50..p99.9 and max of microsecond samples, in milliseconds."""
    ordered = sorted(samples_us)
    out = {name: round(pct(ordered, q) / 1000, 2) for name, q in (quantiles or QUANTILES).items()}
    out["max"] = round((ordered[-1] if ordered else 0) / 1000, 2)
    out["n"] = len(ordered)
    return out


def p50_p99_ms(samples_us: Sequence[int]) -> dict[str, float]:
    return summary_ms(samples_us, {"p50": 0.5, "p99": 0.99})


def count_until(ordered: Sequence[int], t: int) -> int:
    """How many of the ascending `ordered` are <= t."""
    return bisect.bisect_right(ordered, t)


def backlog(sched_us: Sequence[int], recv_us: Sequence[int], t0: int, t1: int, steps: int = 8) -> list[int]:
    """Requests sent but not yet decided at evenly spaced moments of [t0, t1]: the queue in front of
    the gate. Requests that were never decided count as outstanding for ever."""
    s, r = sorted(sched_us), sorted(recv_us)
    return [count_until(s, t) - count_until(r, t)
            for t in (t0 + (t1 - t0) * (i + 1) // steps for i in range(steps))]
