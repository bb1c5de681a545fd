"""The spend dashboard's response model and its arithmetic (pure: no I/O), for routes/dashboard.py.

Money is integer micro-USD and every rate is an integer division, like the balances route's burn rate,
so each figure here is exactly the one the API's other routes answer or can be summed from.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from ledgergate.services.api.models import AlertPublic, BalancePublic
from ledgergate.shared.units import MS_PER_DAY, utc_day

HOUR_MS = 3_600_000
TIMELINE_BUCKETS = 24
MAX_WINDOW_H = 31 * 24  # a month of decisions at most: the window is for "what is happening", reports for history
TOP_MODELS = 8
RECENT_ALERTS = 10
# Beyond this a run-out date means nothing (and a date past year 9999 does not exist).
MAX_RUNWAY_DAYS = 36_500


def runway(remaining_micro_usd: int | None, burn_micro_usd_per_day: int, now_ms: int) -> tuple[int | None, str | None]:
    """(whole days of budget left at the burn rate, the UTC day it runs out) for a scope.

    (None, None) when the scope has no limit or nothing is burning; (0, today) when nothing remains; no
    date when the budget would outlast MAX_RUNWAY_DAYS. The run-out instant is now + remaining / rate,
    rounded down to the millisecond (integers only)."""
    if remaining_micro_usd is None or burn_micro_usd_per_day <= 0:
        return None, None
    if remaining_micro_usd <= 0:
        return 0, utc_day(now_ms)
    days = remaining_micro_usd // burn_micro_usd_per_day
    if days > MAX_RUNWAY_DAYS:
        return days, None
    return days, utc_day(now_ms + remaining_micro_usd * MS_PER_DAY // burn_micro_usd_per_day)


def window(now_ms: int, window_h: int) -> tuple[int, int]:
    """(from_ms, bucket_ms) of a window of `window_h` hours cut into TIMELINE_BUCKETS equal buckets, the last
    of which holds now_ms. Buckets are aligned to multiples of their width since the epoch, so two polls in
    the same bucket count the same buckets."""
    assert 1 <= window_h <= MAX_WINDOW_H, window_h
    bucket_ms = window_h * HOUR_MS // TIMELINE_BUCKETS
    from_ms = (now_ms // bucket_ms + 1 - TIMELINE_BUCKETS) * bucket_ms
    assert from_ms <= now_ms < from_ms + TIMELINE_BUCKETS * bucket_ms
    return from_ms, bucket_ms


def per_day(amount: int, days: int) -> int:
    """An amount of the period divided by its days elapsed, as the balances route divides posted spend."""
    return amount // days if days else 0


class ScopeBudget(BalancePublic):
    """One scope's balance as GET /balances answers it, with the day it runs out at its burn rate."""

    days_left: int | None = Field(description="whole days of remaining budget at the burn rate; null: no limit "
                                  "or no burn")
    runs_out_on: str | None = Field(description="UTC day (YYYY-MM-DD) the remaining budget is spent at the burn rate")


class TokenRate(BaseModel):
    """Settled usage of one workflow this period (the spend report grouped by workflow), and its daily rate."""

    workflow_id: str
    requests: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    spend_micro_usd: int
    input_tokens_per_day: int
    output_tokens_per_day: int


class ModelSpend(BaseModel):
    model: str
    requests: int
    input_tokens: int
    output_tokens: int
    spend_micro_usd: int


class Timeline(BaseModel):
    from_ms: int
    bucket_ms: int
    buckets: int
    series: dict[str, list[int]] = Field(description="outcome -> decisions per bucket (every outcome, zeros included)")
    totals: dict[str, int] = Field(description="outcome -> decisions in the whole window")


class BoundPublic(BaseModel):
    outcome: str
    binding_scope: str = Field(description="the scope that bound a DENY/THROTTLE; empty when none is named")
    reason: str = Field(description="the decision's last reason code (downgraded_by_budget, budget_exhausted...)")
    decisions: int


class LatencyPublic(BaseModel):
    tier: str = Field(description="the placement's model tier; empty for decisions that placed nothing")
    decisions: int
    p50_ms: int
    p95_ms: int
    max_ms: int


class DashboardPublic(BaseModel):
    tenant_id: str
    workflow_id: str | None = Field(description="the workflow the top models and decision panels are narrowed "
                                    "to; null: every workflow")
    generated_at_ms: int
    period_id: str
    period_from_ms: int
    period_to_ms: int
    days_elapsed: int
    window_h: int
    window_from_ms: int
    window_to_ms: int
    budgets: list[ScopeBudget] = Field(description="the period's balances per scope (GET /balances), with run-out")
    tokens: list[TokenRate] = Field(description="the period's settled usage per workflow")
    top_models: list[ModelSpend] = Field(description=f"the period's settled spend per model, top {TOP_MODELS}")
    timeline: Timeline = Field(description="decisions per outcome in the window's buckets")
    bound: list[BoundPublic] = Field(description="DENY, THROTTLE and DOWNGRADE decisions of the window by what "
                                     "bound them")
    latency: list[LatencyPublic] = Field(description="request-to-decision latency per tier, in the window")
    alerts: list[AlertPublic] = Field(description=f"the {RECENT_ALERTS} latest thresholds crossed (GET /alerts)")
