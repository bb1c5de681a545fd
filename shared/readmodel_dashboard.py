"""The spend dashboard's queries (services/api/routes/dashboard.py), beside ledgergate.shared.readmodel.

The dashboard reuses readmodel's queries wherever an API route already answers the same figure (balances,
spend by model or workflow, alerts), so its numbers are those routes' numbers. What is here aggregates the
`decisions` table over a time window, for figures no other route sums: decisions per outcome in time
buckets, denials and downgrades by what bound them, and request-to-decision latency per model tier.

Like readmodel, nothing here writes; every value is a bound parameter and every query is scoped to one
tenant in SQL.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg


@dataclass(frozen=True, slots=True)
class OutcomeBucket:
    bucket: int  # 0-based index of the bucket: [from_ms + bucket * bucket_ms, ... + bucket_ms)
    outcome: str
    decisions: int


# Each query below takes an optional workflow id: None counts every workflow of the tenant.
_WORKFLOW = "(%(wf)s::text IS NULL OR workflow_id = %(wf)s)"


def outcome_buckets(conn: psycopg.Connection, tenant_id: str, *, from_ms: int, bucket_ms: int, buckets: int,
                    workflow_id: str | None = None) -> list[OutcomeBucket]:
    """Decisions made in [from_ms, from_ms + buckets * bucket_ms), counted per bucket and outcome, the
    empty ones left out. Every row of `decisions` counts, as in the decisions route's listing (a later
    idempotency_conflict DENY under a request id is a decision of its own)."""
    assert bucket_ms > 0 and buckets > 0, (bucket_ms, buckets)
    rows = conn.execute(
        "SELECT (decided_at_ms - %(lo)s) / %(width)s, outcome, count(*) FROM decisions "
        f"WHERE tenant_id = %(t)s AND decided_at_ms >= %(lo)s AND decided_at_ms < %(hi)s AND {_WORKFLOW} "
        "GROUP BY 1, 2 ORDER BY 1, 2",
        {"t": tenant_id, "lo": from_ms, "hi": from_ms + buckets * bucket_ms, "width": bucket_ms,
         "wf": workflow_id}).fetchall()
    return [OutcomeBucket(int(r[0]), r[1], r[2]) for r in rows]


@dataclass(frozen=True, slots=True)
class BoundCount:
    """Denials (and throttles) by the budget scope that bound them, downgrades by their reason."""

    outcome: str
    binding_scope: str  # "" when the decision names none (a DOWNGRADE, a policy DENY)
    reason: str  # the decision's last reason code: the DENY's reason, or downgraded_by_budget / _by_policy
    decisions: int


def bound_counts(conn: psycopg.Connection, tenant_id: str, *, from_ms: int, to_ms: int,
                 workflow_id: str | None = None) -> list[BoundCount]:
    """DENY, THROTTLE and DOWNGRADE decisions in [from_ms, to_ms), per (outcome, binding scope, reason),
    most frequent first."""
    rows = conn.execute(
        "SELECT outcome, coalesce(binding_scope, ''), coalesce(reason_codes[cardinality(reason_codes)], ''), "
        "count(*) FROM decisions "
        f"WHERE tenant_id = %(t)s AND decided_at_ms >= %(lo)s AND decided_at_ms < %(hi)s AND {_WORKFLOW} "
        "AND outcome IN ('DENY', 'THROTTLE', 'DOWNGRADE') "
        "GROUP BY 1, 2, 3 ORDER BY 4 DESC, 1, 2, 3",
        {"t": tenant_id, "lo": from_ms, "hi": to_ms, "wf": workflow_id}).fetchall()
    return [BoundCount(*r) for r in rows]


@dataclass(frozen=True, slots=True)
class TierLatency:
    """Request-to-decision latency (decided_at_ms - requested_at_ms) of one model tier's decisions."""

    tier: str  # the placement's tier; "" for decisions that placed nothing (DENY, THROTTLE)
    decisions: int
    p50_ms: int
    p95_ms: int
    max_ms: int


# The tier is the ReservationPlaced entry's (the decision's ledger entry), as the projector takes it for
# `usage` (services/projector/sql.py). percentile_disc answers a latency that occurred, never an interpolation;
# both percentiles from one sort.
_LATENCY = """
SELECT coalesce(le.body ->> 'tier', ''), count(*),
       percentile_disc(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY d.decided_at_ms - d.requested_at_ms),
       max(d.decided_at_ms - d.requested_at_ms)
FROM decisions d
LEFT JOIN ledger_entries le ON le.tenant_id = d.tenant_id AND le.entry_id = d.ledger_entry_id
                           AND le.entry_type = 'ReservationPlaced'
WHERE d.tenant_id = %(t)s AND d.decided_at_ms >= %(lo)s AND d.decided_at_ms < %(hi)s
  AND (%(wf)s::text IS NULL OR d.workflow_id = %(wf)s)
GROUP BY 1 ORDER BY 1
"""


def latency_by_tier(conn: psycopg.Connection, tenant_id: str, *, from_ms: int, to_ms: int,
                    workflow_id: str | None = None) -> list[TierLatency]:
    """Latency percentiles per tier of the decisions made in [from_ms, to_ms)."""
    params = {"t": tenant_id, "lo": from_ms, "hi": to_ms, "wf": workflow_id}
    return [TierLatency(r[0], r[1], int(r[2][0]), int(r[2][1]), int(r[3])) for r in conn.execute(_LATENCY, params)]
