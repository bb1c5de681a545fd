"""GET a tenant's balances for one period: every scope with a balance in it or a limit on it."""

from __future__ import annotations

import time

import psycopg
from fastapi import APIRouter

from ledgergate.services.api.deps import DbConn, ReadableTenant
from ledgergate.services.api.errors import Unprocessable
from ledgergate.services.api.models import BalancePublic, BalancesPublic
from ledgergate.services.api.paging import Period
from ledgergate.shared import readmodel
from ledgergate.shared.ledger.periods import period_bounds, period_of
from ledgergate.shared.units import MS_PER_DAY

router = APIRouter(prefix="/v1/tenants/{tenant_id}", tags=["balances"])

def days_elapsed(period_id: str, now_ms: int) -> int:
    """Days of the period begun by now_ms: 1 on its first day, the whole month once it is over, 0 before."""
    try:
        start_ms, end_ms = period_bounds(period_id)
    except ValueError as exc:
        raise Unprocessable(f"period: {exc}") from None
    if now_ms < start_ms:
        return 0
    return -(-(min(now_ms, end_ms) - start_ms) // MS_PER_DAY) or 1  # ceiling division, integers only


def balances_public(db: psycopg.Connection, tenant_id: str, period: str | None, now_ms: int) -> BalancesPublic:
    """The tenant's balances in `period` (default: the month of now_ms); the dashboard answers the same."""
    period_id = period or period_of(now_ms)[0]
    days = days_elapsed(period_id, now_ms)
    items = []
    for b in readmodel.balances(db, tenant_id, period_id):
        limit, credit, posted, pending = b.limit_micro_usd, b.credit_micro_usd, b.posted_micro_usd, b.pending_micro_usd
        items.append(BalancePublic(
            scope_type=b.scope_type, scope_id=b.scope_id, period_id=period_id, limit_micro_usd=limit,
            credit_micro_usd=credit, posted_micro_usd=posted, pending_micro_usd=pending,
            remaining_micro_usd=None if limit is None else limit + credit - posted - pending,
            burn_rate_micro_usd_per_day=posted // days if days else 0, updated_at_ms=b.updated_at_ms))
    return BalancesPublic(tenant_id=tenant_id, period_id=period_id, days_elapsed=days, items=items)


@router.get("/balances", response_model=BalancesPublic, summary="Balances per scope for a period")
def get_balances(tenant_id: ReadableTenant, db: DbConn, period: Period = None) -> BalancesPublic:
    """`period` defaults to the current month."""
    return balances_public(db, tenant_id, period, time.time_ns() // 1_000_000)
