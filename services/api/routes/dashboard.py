"""The spend dashboard: the page at /dashboard (static files of this package, nothing from elsewhere) and
the JSON it polls, GET /v1/tenants/{tenant_id}/dashboard, with the same keys and tenant checks as every
other route. GET /v1/whoami tells the page whose key it holds (an admin gets a tenant picker).

Every figure of the summary comes from the query an existing route runs (balances, spend report, alerts)
or sums the rows the decisions route lists, so the page never shows a number the API would not.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, get_args

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, RedirectResponse
from pydantic import BaseModel

from ledgergate.services.api import dashboard as dash
from ledgergate.services.api.deps import CurrentPrincipal, DbConn, ReadableTenant
from ledgergate.services.api.models import Outcome
from ledgergate.services.api.paging import FilterId, Period
from ledgergate.services.api.routes.alerts import alert_public
from ledgergate.services.api.routes.balances import balances_public
from ledgergate.services.api.routes.reports import report_range
from ledgergate.shared import readmodel, readmodel_dashboard, readmodel_usage

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
OUTCOMES: tuple[str, ...] = get_args(Outcome)  # ALLOW, DOWNGRADE, DENY, THROTTLE, CACHE_HIT
# The page runs only its own files: scripts, styles and requests to this origin, nothing inline, no frames.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Referrer-Policy": "no-referrer",
                "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}

router = APIRouter(tags=["dashboard"])


class WhoAmI(BaseModel):
    key_id: str
    admin: bool
    tenant_id: str | None
    can_write: bool


@router.get("/dashboard", include_in_schema=False)
def dashboard_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@router.get("/dashboard/", include_in_schema=False)
def dashboard_slash() -> RedirectResponse:
    return RedirectResponse("/dashboard", status_code=308)


@router.get("/v1/whoami", response_model=WhoAmI, summary="The calling key: admin, or the one tenant it reaches")
def whoami(principal: CurrentPrincipal) -> WhoAmI:
    return WhoAmI(key_id=principal.key_id, admin=principal.is_admin, tenant_id=principal.tenant_id,
                  can_write=principal.can_write)


WindowH = Annotated[int, Query(ge=1, le=dash.MAX_WINDOW_H, description="hours of decisions to chart, "
                                                                       f"1..{dash.MAX_WINDOW_H}")]


@router.get("/v1/tenants/{tenant_id}/dashboard", response_model=dash.DashboardPublic,
            summary="The spend dashboard's figures for one tenant")
def tenant_dashboard(tenant_id: ReadableTenant, db: DbConn, period: Period = None, window_h: WindowH = 24,
                     workflow: FilterId = None) -> dash.DashboardPublic:
    """Budgets, token rates and top models over `period` (default: this month); decisions, what bound them
    and latency over the last `window_h` hours. `workflow` narrows the top models and the decision panels
    to one workflow; budgets, token rates and alerts always list every scope."""
    now_ms = time.time_ns() // 1_000_000
    balances = balances_public(db, tenant_id, period, now_ms)
    period_lo, period_hi = report_range(balances.period_id, None, None, now_ms)
    days = balances.days_elapsed
    budgets = []
    for b in balances.items:
        days_left, runs_out_on = dash.runway(b.remaining_micro_usd, b.burn_rate_micro_usd_per_day, now_ms)
        budgets.append(dash.ScopeBudget(**b.model_dump(), days_left=days_left, runs_out_on=runs_out_on))
    tokens = [dash.TokenRate(workflow_id=str(s.key[0]), requests=s.requests, input_tokens=s.input_tokens,
                             cached_input_tokens=s.cached_input_tokens, output_tokens=s.output_tokens,
                             reasoning_tokens=s.reasoning_tokens, spend_micro_usd=s.cost_micro_usd,
                             input_tokens_per_day=dash.per_day(s.input_tokens, days),
                             output_tokens_per_day=dash.per_day(s.output_tokens, days))
              for s in readmodel_usage.usage_sums(db, ("workflow",), tenant_id=tenant_id, from_ms=period_lo,
                                                  to_ms=period_hi)]
    by_model = readmodel_usage.usage_sums(db, ("model",), tenant_id=tenant_id, from_ms=period_lo, to_ms=period_hi,
                                          workflow_id=workflow)
    top = sorted(by_model, key=lambda s: (-s.cost_micro_usd, str(s.key[0])))[:dash.TOP_MODELS]
    top_models = [dash.ModelSpend(model=str(s.key[0]), requests=s.requests, input_tokens=s.input_tokens,
                                  output_tokens=s.output_tokens, spend_micro_usd=s.cost_micro_usd) for s in top]

    lo, bucket_ms = dash.window(now_ms, window_h)
    hi = lo + dash.TIMELINE_BUCKETS * bucket_ms
    series = {o: [0] * dash.TIMELINE_BUCKETS for o in OUTCOMES}
    for row in readmodel_dashboard.outcome_buckets(db, tenant_id, from_ms=lo, bucket_ms=bucket_ms,
                                                   buckets=dash.TIMELINE_BUCKETS, workflow_id=workflow):
        series.setdefault(row.outcome, [0] * dash.TIMELINE_BUCKETS)[row.bucket] = row.decisions
    timeline = dash.Timeline(from_ms=lo, bucket_ms=bucket_ms, buckets=dash.TIMELINE_BUCKETS, series=series,
                             totals={o: sum(counts) for o, counts in series.items()})
    bound = [dash.BoundPublic(outcome=r.outcome, binding_scope=r.binding_scope, reason=r.reason,
                              decisions=r.decisions)
             for r in readmodel_dashboard.bound_counts(db, tenant_id, from_ms=lo, to_ms=hi, workflow_id=workflow)]
    latency = [dash.LatencyPublic(tier=r.tier, decisions=r.decisions, p50_ms=r.p50_ms, p95_ms=r.p95_ms,
                                  max_ms=r.max_ms)
               for r in readmodel_dashboard.latency_by_tier(db, tenant_id, from_ms=lo, to_ms=hi, workflow_id=workflow)]
    # As GET /alerts answers its first page: newest first, every threshold, every period.
    alert_rows = readmodel.alerts(db, tenant_id, page=readmodel.Keyset("desc"), limit=dash.RECENT_ALERTS)
    alerts = [alert_public(r) for r in alert_rows.items]
    return dash.DashboardPublic(
        tenant_id=tenant_id, workflow_id=workflow, generated_at_ms=now_ms, period_id=balances.period_id,
        period_from_ms=period_lo,
        period_to_ms=period_hi, days_elapsed=days, window_h=window_h, window_from_ms=lo, window_to_ms=hi,
        budgets=budgets, tokens=tokens, top_models=top_models, timeline=timeline, bound=bound, latency=latency,
        alerts=alerts)
