"""GET a tenant's balances for one period: every scope with a balance in it or a limit on it."""

from __future__ import annotations

import time

from fastapi import APIRouter

from ledgergate.services.api.deps import DbConn, ReadableTenant
from ledgergate.services.api.errors import Unprocessable
from ledgergate.services.api.models import BalancePublic, BalancesPublic
from ledgergate.services.api.paging import Period
from ledgergate.shared.ledger.periods import period_bounds, period_of
from ledgergate.shared.units import MS_PER_DAY

router = APIRouter(prefix="/v1/tenants/{tenant_id}", tags=["balances"])

# limits holds a scope's limit for every period (0002); a FULL JOIN also lists scopes that have a limit
# but no spend yet this period, and spend on scopes without a limit (a workflow bounded only by its tenant).
_SQL = """
WITH b AS (SELECT * FROM balances WHERE tenant_id = %(tenant)s AND period_id = %(period)s),
     l AS (SELECT * FROM limits WHERE tenant_id = %(tenant)s)
SELECT coalesce(b.scope_type, l.scope_type), coalesce(b.scope_id, l.scope_id),
       coalesce(l.limit_micro_usd, b.limit_micro_usd),
       coalesce(b.credit_micro_usd, 0), coalesce(b.posted_micro_usd, 0), coalesce(b.pending_micro_usd, 0),
       greatest(coalesce(b.updated_at_ms, 0), coalesce(l.updated_at_ms, 0))
FROM b FULL OUTER JOIN l ON b.scope_type = l.scope_type AND b.scope_id = l.scope_id
ORDER BY 1, 2  -- TENANT before WORKFLOW
"""


def days_elapsed(period_id: str, now_ms: int) -> int:
    """Days of the period begun by now_ms: 1 on its first day, the whole month once it is over, 0 before."""
    try:
        start_ms, end_ms = period_bounds(period_id)
    except ValueError as exc:
        raise Unprocessable(f"period: {exc}") from None
    if now_ms < start_ms:
        return 0
    return -(-(min(now_ms, end_ms) - start_ms) // MS_PER_DAY) or 1  # ceiling division, integers only


@router.get("/balances", response_model=BalancesPublic, summary="Balances per scope for a period")
def get_balances(tenant_id: ReadableTenant, db: DbConn, period: Period = None) -> BalancesPublic:
    """`period` defaults to the current month."""
    now_ms = time.time_ns() // 1_000_000
    period_id = period or period_of(now_ms)[0]
    days = days_elapsed(period_id, now_ms)
    items = []
    for scope_type, scope_id, limit, credit, posted, pending, updated in db.execute(
            _SQL, {"tenant": tenant_id, "period": period_id}):
        items.append(BalancePublic(
            scope_type=scope_type, scope_id=scope_id, period_id=period_id, limit_micro_usd=limit,
            credit_micro_usd=credit, posted_micro_usd=posted, pending_micro_usd=pending,
            remaining_micro_usd=None if limit is None else limit + credit - posted - pending,
            burn_rate_micro_usd_per_day=posted // days if days else 0, updated_at_ms=updated))
    return BalancesPublic(tenant_id=tenant_id, period_id=period_id, days_elapsed=days, items=items)
