"""anomaly's pure core: what a metered completion adds to which series, and the detector that turns a series'
closed windows into at most one alert per episode. No I/O; app.py runs it on faust.

A series is one tenant (scope TENANT) or one of its workflows (scope WORKFLOW) and one metric: spend
(micro-USD, priced from the catalogue like the ledger's settlement) or tokens (input + output + reasoning).
Rates are per minute whatever the window's length, so thresholds mean the same in a test's 2 s windows
and production's 60 s ones.

The detector is an EWMA of the rate and of its variance (the plain running mean and variance during the
warm-up). A window is anomalous when the series is warm (`warmup_windows` seen, empty ones included), the
rate reaches the metric's minimum, and it is above the band, max(mean + z * std, mean * min_ratio). The
first anomalous window opens an episode and is the one alert; the episode ends after `cooldown_windows`
windows back inside the band. An anomalous window moves the baseline only as far as the band's edge (a
winsorised update), so a spike does not hide itself, yet a lasting new level is learnt in a few dozen windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

from ledgergate.events import UsageMetered
from ledgergate.shared.policy import AnomalyRule

Metric = Literal["spend_micro_usd_per_min", "tokens_per_min"]
METRICS: tuple[Metric, ...] = ("spend_micro_usd_per_min", "tokens_per_min")
SEP = "|"  # ids are A-Z a-z 0-9 . _ : @ - (client/ledgergate/ids.py): never a '|'
MINUTE_MS = 60_000


@dataclass(frozen=True, slots=True)
class Series:
    tenant_id: str
    scope_type: Literal["TENANT", "WORKFLOW"]
    scope_id: str
    metric: Metric

    def key(self) -> str:
        return SEP.join((self.tenant_id, self.scope_type, self.scope_id, self.metric))

    @classmethod
    def parse(cls, key: str) -> Series:
        tenant_id, scope_type, scope_id, metric = key.split(SEP)
        assert scope_type in ("TENANT", "WORKFLOW") and metric in METRICS, key
        return cls(tenant_id, scope_type, scope_id, metric)  # type: ignore[arg-type]


def contributions(usage: UsageMetered, spend_micro_usd: int) -> list[tuple[Series, int]]:
    """What one metered completion adds to each of its series: the tenant's, and its workflow's if known."""
    assert spend_micro_usd >= 0
    u = usage.usage
    tokens = u.input_tokens + u.output_tokens + u.reasoning_tokens
    scopes: list[tuple[Literal["TENANT", "WORKFLOW"], str]] = [("TENANT", usage.tenant_id)]
    if usage.workflow_id:
        scopes.append(("WORKFLOW", usage.workflow_id))
    amounts: tuple[tuple[Metric, int], ...] = (("spend_micro_usd_per_min", spend_micro_usd), ("tokens_per_min", tokens))
    return [(Series(usage.tenant_id, scope_type, scope_id, metric), amount)
            for scope_type, scope_id in scopes for metric, amount in amounts if amount > 0]


def per_minute(total: int, window_ms: int) -> float:
    assert window_ms > 0 and total >= 0
    return total * MINUTE_MS / window_ms


@dataclass(frozen=True, slots=True)
class Band:
    """One series' detector state; a plain record for faust's changelog (to_record / from_record)."""

    windows: int = 0  # windows seen since the last reset, empty ones included
    mean: float = 0.0  # per minute
    var: float = 0.0
    last_window_start_ms: int = -1  # the newest window folded in; an older or equal one is a replay
    in_episode: bool = False
    calm_windows: int = 0  # consecutive in-band windows during an episode
    episode_window_start_ms: int = -1  # the window that opened the current (or last) episode

    def to_record(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Band:
        return cls(**rec)


@dataclass(frozen=True, slots=True)
class Anomaly:
    series: Series
    window_start_ms: int
    window_ms: int
    observed_per_min: float
    expected_per_min: float
    band_upper_per_min: float

    @property
    def alert_id(self) -> str:
        """Deterministic per episode (the receivers' idempotency key): a replay of the window that opened it,
        from any state, names the same episode."""
        s = self.series
        return f"anomaly/{s.tenant_id}/{s.scope_type}/{s.scope_id}/{s.metric}/{self.window_start_ms}"


def minimum(rule: AnomalyRule, metric: Metric) -> int:
    return rule.min_spend_micro_usd_per_min if metric == "spend_micro_usd_per_min" else rule.min_tokens_per_min


def upper(band: Band, rule: AnomalyRule) -> float:
    return max(band.mean + rule.z_threshold * math.sqrt(band.var), band.mean * rule.min_ratio)


def _step(band: Band, rate: float, rule: AnomalyRule, floor: int) -> tuple[Band, bool]:
    """Fold one window's rate; True when it is anomalous. During the warm-up the mean and variance are the
    plain running ones (Welford): an EWMA started from one window underestimates the spread for its first
    1/alpha windows, which on a small, noisy series (a workflow with a few requests a window) is a false
    alert waiting to happen."""
    if band.windows < rule.warmup_windows:
        n = band.windows + 1
        mean = band.mean + (rate - band.mean) / n
        var = (band.var * band.windows + (rate - band.mean) * (rate - mean)) / n
        return replace(band, windows=n, mean=mean, var=max(0.0, var)), False
    edge = upper(band, rule)
    anomalous = rate >= floor and rate > edge
    x = min(rate, edge) if anomalous else rate
    a = rule.ewma_alpha
    diff = x - band.mean
    mean = band.mean + a * diff
    var = (1 - a) * (band.var + a * diff * diff)
    out = replace(band, windows=band.windows + 1, mean=mean, var=var)
    assert out.mean >= 0 and out.var >= 0, out
    return out, anomalous


def observe(band: Band, series: Series, window_start_ms: int, window_ms: int, total: int, rule: AnomalyRule,
            max_gap_windows: int) -> tuple[Band, Anomaly | None]:
    """Fold one closed window (and the empty windows before it) into the band; the alert, if this window
    opens an episode. A window at or before the newest one folded is a replay and changes nothing."""
    assert window_ms > 0 and total >= 0 and max_gap_windows >= 0
    if window_start_ms <= band.last_window_start_ms:
        return band, None
    if band.last_window_start_ms >= 0:
        empty = (window_start_ms - band.last_window_start_ms) // window_ms - 1
        if empty > max_gap_windows:
            band = Band()  # idle for long: learn the series again (warm-up) rather than fold a day of zeros
        else:
            for _ in range(empty):
                band = _calm(_step(band, 0.0, rule, 0)[0], rule)
    rate = per_minute(total, window_ms)
    expected, edge = band.mean, upper(band, rule)
    band, anomalous = _step(band, rate, rule, minimum(rule, series.metric))
    band = replace(band, last_window_start_ms=window_start_ms)
    if not anomalous:
        return _calm(band, rule), None
    if band.in_episode:
        return replace(band, calm_windows=0), None
    band = replace(band, in_episode=True, calm_windows=0, episode_window_start_ms=window_start_ms)
    anomaly = Anomaly(series, window_start_ms, window_ms, rate, expected, edge)
    assert anomaly.observed_per_min > anomaly.expected_per_min
    return band, anomaly


def _calm(band: Band, rule: AnomalyRule) -> Band:
    """An in-band window: during an episode it counts towards its end."""
    if not band.in_episode:
        return band
    calm = band.calm_windows + 1
    if calm >= rule.cooldown_windows:
        return replace(band, in_episode=False, calm_windows=0)
    return replace(band, calm_windows=calm)


def alert_record(anomaly: Anomaly, period_id: str, now_ms: int) -> dict[str, Any]:
    """The BudgetAlert (schemas/avro/budget_alert.avsc) for an anomaly, as the Avro writer takes it."""
    s = anomaly.series
    return {"alert_id": anomaly.alert_id, "tenant_id": s.tenant_id, "scope_type": s.scope_type,
            "scope_id": s.scope_id, "period_id": period_id, "threshold_pct": 0, "spent_micro_usd": 0,
            "limit_micro_usd": 0, "crossed_at_ms": now_ms, "kind": "ANOMALY", "metric": s.metric,
            "observed_per_min": round(anomaly.observed_per_min), "expected_per_min": round(anomaly.expected_per_min),
            "band_upper_per_min": round(anomaly.band_upper_per_min), "window_start_ms": anomaly.window_start_ms,
            "window_ms": anomaly.window_ms}
