"""Read-only queries on the projector's PostgreSQL `usage` table (one row per ReservationSettled), for
the audit replay and the invoice reconciliation. The SQL is ledgergate.shared.readmodel's: the same
aggregation as the API's spend report.

The projector owns the table; these queries look at its columns first and answer "not available"
(with the reason) rather than fail when it is missing or shaped differently, because both tools can
still do their main job from Kafka. Days are computed with integer division of `settled_at_ms`, the
settlement's recorded time, so they match `ledgergate.tools.tables.utc_day` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

import psycopg

from ledgergate.shared import readmodel_usage
from ledgergate.shared.errors import UsageTableError
from ledgergate.shared.units import MS_PER_DAY, day_start_ms, utc_day

SpendKey = tuple[str, str, str]  # (tenant, model, day)
NEEDED = {"tenant_id", "model", "actual_micro_usd", "settled_at_ms", "estimated", "input_tokens",
          "cached_input_tokens", "output_tokens", "reasoning_tokens"}


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Summed usage of one (day, model, estimated) group."""

    day: str
    model: str
    estimated: bool
    requests: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_micro_usd: int


def _connect(dsn: str) -> psycopg.Connection:
    try:
        return psycopg.connect(dsn, connect_timeout=10)
    except psycopg.Error as exc:
        raise UsageTableError(f"cannot connect to PostgreSQL: {exc}") from exc


def _unavailable(conn: psycopg.Connection) -> str | None:
    """Why the table cannot serve, or None when it can."""
    columns = readmodel_usage.usage_columns(conn)
    if columns is None:
        return "PostgreSQL has no usage table (projector migrations not applied?)"
    missing = NEEDED - columns
    return f"usage table lacks columns {sorted(missing)}" if missing else None


def _usage_sums(dsn: str, group_by: tuple[readmodel_usage.UsageGroup, ...], **filters: Any
                ) -> tuple[list[readmodel_usage.UsageSums] | None, str | None]:
    """The read model's usage sums, or (None, why the table cannot answer)."""
    try:
        with _connect(dsn) as conn:
            why = _unavailable(conn)
            if why is not None:
                return None, why
            return readmodel_usage.usage_sums(conn, group_by, **filters), None
    except psycopg.Error as exc:
        raise UsageTableError(f"querying the usage table failed: {exc}") from exc


def spend_by_tenant_model_day(dsn: str, tenant: str | None, from_ms: int | None
                              ) -> tuple[dict[SpendKey, tuple[int, int]] | None, str]:
    """{(tenant, model, day): (settlements, micro-USD)} or (None, why not)."""
    sums, why = _usage_sums(dsn, ("tenant", "model", "settled_day"), tenant_id=tenant, from_ms=from_ms)
    if sums is None:
        return None, why or ""
    totals = {(str(t), str(m), utc_day(int(d) * MS_PER_DAY)): (s.requests, s.cost_micro_usd)
              for s in sums for t, m, d in [s.key]}
    return totals, "usage table"


def usage_by_day_model(dsn: str, first: date, last: date) -> tuple[list[UsageRow] | None, str]:
    """Usage per (day, model, estimated) between two UTC days inclusive, or (None, why not)."""
    sums, why = _usage_sums(dsn, ("settled_day", "model", "estimated"), from_ms=day_start_ms(first),
                            to_ms=day_start_ms(last) + MS_PER_DAY)
    if sums is None:
        return None, why or ""
    return [UsageRow(utc_day(int(d) * MS_PER_DAY), str(m), bool(e), s.requests, s.input_tokens, s.cached_input_tokens,
                     s.output_tokens, s.reasoning_tokens, s.cost_micro_usd)
            for s in sums for d, m, e in [s.key]], "PostgreSQL usage table"
