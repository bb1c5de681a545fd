"""The read model's usage queries: settled usage (the `usage` table, migration 0002), cache hits
(`cache_hits`, 0006) and the spend report that puts the two side by side, grouped by trusted expressions only
(USAGE_GROUPS). The rest of the read model's queries, and the rules they all follow: shared/readmodel.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import psycopg

from ledgergate.shared.readmodel import time_filters
from ledgergate.shared.units import MS_PER_DAY

# --- usage ---------------------------------------------------------------------------------------

UsageGroup = Literal["tenant", "model", "tier", "workflow", "day", "settled_day", "estimated", "fail_open",
                     "template"]
UsageKey = str | int | bool
# Trusted SQL per grouping: callers pick a key of this map, never write the expression.
USAGE_GROUPS: dict[UsageGroup, str] = {
    "tenant": "tenant_id",  # text
    "model": "model",  # text
    "tier": "coalesce(tier, '')",  # text
    "workflow": "workflow_id",  # text
    "day": "to_char(day, 'YYYY-MM-DD')",  # text: the UTC date column generated from settled_at_ms (0002)
    # int, days since the epoch: integer division of the settlement's time, which the tools turn into a day
    # with ledgergate.shared.units.utc_day so it matches their own Kafka-side counting exactly.
    "settled_day": f"settled_at_ms / {MS_PER_DAY}",
    "estimated": "estimated",  # bool
    # text: calls made without a decision while the gate was away (ledgergate.admission), apart from the rest
    "fail_open": "CASE WHEN fail_open THEN 'fail_open' ELSE 'decided' END",
    # text: the prompt template the request named, "<template_id>@<version>", from its ReservationPlaced (the
    # settlement does not carry it; as the projector takes the tier, services/projector/sql.py), "(none)"
    # without one (not an id: ledgergate.ids allows no parentheses). One probe of 0002's ledger_entries_request
    # index (tenant_id, request_id) per usage row.
    "template": "coalesce(nullif((SELECT le.body ->> 'template' FROM ledger_entries le "
                "WHERE le.tenant_id = usage.tenant_id AND le.request_id = usage.request_id "
                "AND le.entry_type = 'ReservationPlaced' ORDER BY le.source_offset DESC LIMIT 1), ''), '(none)')",
}


@dataclass(frozen=True, slots=True)
class UsageSums:
    """Settled usage summed over one group of `usage` rows (one row per ReservationSettled)."""

    key: tuple[UsageKey, ...]  # one value per grouping asked for, in its order
    requests: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_micro_usd: int  # the settled actual_micro_usd


def _scope_filters(time_column: str, tenant_id: str | None, from_ms: int | None, to_ms: int | None,
                   workflow_id: str | None) -> tuple[list[str], list[object]]:
    where: list[str] = [] if tenant_id is None else ["tenant_id = %s"]
    params: list[object] = [] if tenant_id is None else [tenant_id]
    if workflow_id is not None:
        where.append("workflow_id = %s")
        params.append(workflow_id)
    time_where, time_params = time_filters(time_column, from_ms, to_ms)
    return where + time_where, params + time_params


def _usage_query(group_by: Sequence[UsageGroup], tenant_id: str | None, from_ms: int | None, to_ms: int | None,
                 workflow_id: str | None) -> tuple[str, list[object]]:
    if not group_by:
        raise ValueError("usage_sums needs at least one grouping")
    where, params = _scope_filters("settled_at_ms", tenant_id, from_ms, to_ms, workflow_id)
    keys = ", ".join(USAGE_GROUPS[g] for g in group_by)
    positions = ", ".join(str(i) for i in range(1, len(group_by) + 1))
    return (f"SELECT {keys}, count(*), sum(input_tokens)::bigint, sum(cached_input_tokens)::bigint, "
            "sum(output_tokens)::bigint, sum(reasoning_tokens)::bigint, sum(actual_micro_usd)::bigint "
            f"FROM usage WHERE {' AND '.join(where) or 'TRUE'} GROUP BY {positions} ORDER BY {positions}", params)


def usage_sums(conn: psycopg.Connection, group_by: Sequence[UsageGroup], *, tenant_id: str | None = None,
               from_ms: int | None = None, to_ms: int | None = None,
               workflow_id: str | None = None) -> list[UsageSums]:
    """Usage settled in [from_ms, to_ms) (either bound optional), of one tenant or all (and of one workflow
    when given), summed per group of `group_by` and ordered by it."""
    sql, params = _usage_query(group_by, tenant_id, from_ms, to_ms, workflow_id)
    rows = conn.execute(sql, params).fetchall()
    n = len(group_by)
    return [UsageSums(tuple(r[:n]), *r[n:]) for r in rows]


# --- cache hits (one row per CacheHitRecorded, migration 0006) ----------------------------------------

CacheHitGroup = Literal["model", "workflow", "day"]
# The groupings a hit has: its requested model, its workflow, its UTC day, as text like USAGE_GROUPS'
# (a hit has no tier, reserves nothing and is never made fail-open).
CACHE_HIT_GROUPS: dict[CacheHitGroup, str] = {
    "model": "model",
    "workflow": "workflow_id",
    "day": "to_char(day, 'YYYY-MM-DD')",
}


@dataclass(frozen=True, slots=True)
class CacheHitSums:
    """Requests answered from the response cache, summed over one group of `cache_hits` rows."""

    key: tuple[str, ...]  # one value per grouping asked for, in its order; () for the totals
    hits: int
    input_tokens: int
    output_tokens: int
    avoided_micro_usd: int  # what the answers cost when they were made: what the hits saved


def _cache_hit_query(group_by: Sequence[CacheHitGroup], tenant_id: str | None, from_ms: int | None,
                     to_ms: int | None, workflow_id: str | None) -> tuple[str, list[object]]:
    where, params = _scope_filters("recorded_at_ms", tenant_id, from_ms, to_ms, workflow_id)
    keys = "".join(f"{CACHE_HIT_GROUPS[g]}, " for g in group_by)
    positions = ", ".join(str(i) for i in range(1, len(group_by) + 1))
    grouped = f" GROUP BY {positions} ORDER BY {positions}" if group_by else ""
    return (f"SELECT {keys}count(*), coalesce(sum(input_tokens), 0)::bigint, "
            "coalesce(sum(output_tokens), 0)::bigint, coalesce(sum(avoided_micro_usd), 0)::bigint "
            f"FROM cache_hits WHERE {' AND '.join(where) or 'TRUE'}{grouped}", params)


def cache_hit_sums(conn: psycopg.Connection, group_by: Sequence[CacheHitGroup] = (), *,
                   tenant_id: str | None = None, from_ms: int | None = None, to_ms: int | None = None,
                   workflow_id: str | None = None) -> list[CacheHitSums]:
    """Cache hits recorded in [from_ms, to_ms), of one tenant or all (and of one workflow when given),
    summed per group of `group_by` and ordered by it; no grouping: one row of totals (zeros when none)."""
    sql, params = _cache_hit_query(group_by, tenant_id, from_ms, to_ms, workflow_id)
    n = len(group_by)
    return [CacheHitSums(tuple(r[:n]), *r[n:]) for r in conn.execute(sql, params).fetchall()]


# --- spend: settled usage beside what cache hits saved ----------------------------------------------

SpendGroup = Literal["model", "tier", "workflow", "day", "fail_open", "template"]
# The spend groupings a cache hit has too.
_HIT_GROUPING: dict[SpendGroup, CacheHitGroup] = {"model": "model", "workflow": "workflow", "day": "day"}


@dataclass(frozen=True, slots=True)
class SpendSums:
    """One group's settled usage (as UsageSums) and its cache hits (0 for groupings hits do not have)."""

    key: str
    requests: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_micro_usd: int
    cache_hits: int
    saved_micro_usd: int


def spend_sums(conn: psycopg.Connection, group_by: SpendGroup, *, tenant_id: str, from_ms: int | None = None,
               to_ms: int | None = None, workflow_id: str | None = None) -> list[SpendSums]:
    """A tenant's settled usage per group of `group_by` (as usage_sums), and for model, workflow and day the
    cache hits of the same range and group beside it: a key with hits and no settled usage is a row of zero
    spend. Ordered by key, in the database's order. Tier, fail_open and template rows carry no hits (a
    CacheHitRecorded names no tier or template; cache_hit_sums without grouping has their totals)."""
    hit_group = _HIT_GROUPING.get(group_by)
    if hit_group is None:
        return [SpendSums(str(u.key[0]), u.requests, u.input_tokens, u.cached_input_tokens, u.output_tokens,
                          u.reasoning_tokens, u.cost_micro_usd, 0, 0)
                for u in usage_sums(conn, (group_by,), tenant_id=tenant_id, from_ms=from_ms, to_ms=to_ms,
                                    workflow_id=workflow_id)]
    usage_sql, usage_params = _usage_query((group_by,), tenant_id, from_ms, to_ms, workflow_id)
    hits_sql, hits_params = _cache_hit_query((hit_group,), tenant_id, from_ms, to_ms, workflow_id)
    # Every grouping here is text on both sides (USAGE_GROUPS, CACHE_HIT_GROUPS), so the keys compare.
    rows = conn.execute(
        f"WITH u (key, requests, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, cost) "
        f"AS ({usage_sql}), h (key, hits, in_tokens, out_tokens, saved) AS ({hits_sql}) "
        "SELECT coalesce(u.key, h.key), coalesce(u.requests, 0), coalesce(u.input_tokens, 0), "
        "coalesce(u.cached_input_tokens, 0), coalesce(u.output_tokens, 0), coalesce(u.reasoning_tokens, 0), "
        "coalesce(u.cost, 0), coalesce(h.hits, 0), coalesce(h.saved, 0) "
        "FROM u FULL OUTER JOIN h ON u.key = h.key ORDER BY 1",
        [*usage_params, *hits_params]).fetchall()
    return [SpendSums(*r) for r in rows]


def usage_columns(conn: psycopg.Connection) -> set[str] | None:
    """The columns of the `usage` table, or None when there is no such table."""
    row = conn.execute("SELECT to_regclass('public.usage')").fetchone()
    if row is None or row[0] is None:
        return None
    return {r[0] for r in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = 'usage'")}
