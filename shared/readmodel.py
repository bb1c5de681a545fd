"""The read model's queries: every SELECT the API's routes and the tools run on the PostgreSQL tables the
projector writes (deploy/migrations), and on the API's own api_keys, one typed function each, taking a psycopg
connection.

The projector (services/projector/sql.py) is the only writer of the read model, shared/apikeys.py of
api_keys; nothing here writes. Callers parse and check their input (a route its query parameters and
cursor, a tool its dates) and shape what comes back; the SQL is here. Every value is bound as a parameter:
only constants (column lists, table names, the grouping expressions of readmodel_usage.USAGE_GROUPS, the
sort key of a page) are written into the text. Usage, cache hits and spend: shared/readmodel_usage.py.

A paged query takes a page size `limit` and a Keyset, fetches `limit + 1` rows and answers the first
`limit` of them with whether there was one more (Rows.more): the caller makes the next cursor from its
last item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import psycopg

T = TypeVar("T")
Order = Literal["asc", "desc"]


# --- paging --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Keyset:
    """Where a page starts, for a query ordered by (time, id): after the sort key of the previous page's
    last row (`after`, from a cursor), or else after `offset` rows."""

    order: Order = "asc"
    after: tuple[int, str] | None = None
    offset: int = 0

    def __post_init__(self) -> None:
        if self.after is not None and self.offset:
            raise ValueError("a page starts after a key or after an offset, not both")


@dataclass(frozen=True, slots=True)
class Rows(Generic[T]):
    """One page of a paged query: at most `limit` items, and whether more follow them."""

    items: list[T]
    more: bool


def time_filters(column: str, from_ms: int | None, to_ms: int | None) -> tuple[list[str], list[object]]:
    where: list[str] = []
    params: list[object] = []
    if from_ms is not None:
        where.append(f"{column} >= %s")
        params.append(from_ms)
    if to_ms is not None:
        where.append(f"{column} < %s")
        params.append(to_ms)
    return where, params


def _page(conn: psycopg.Connection, select: str, where: list[str], params: list[object], key: tuple[str, str],
          page: Keyset, limit: int) -> tuple[list[Any], bool]:
    """`select` (constant text, up to FROM) with the `where` conditions ANDed, ordered by `key` (trusted
    column names) and paged by `page`: (the first `limit` rows, whether there were more)."""
    direction = "ASC" if page.order == "asc" else "DESC"
    where, params = list(where), list(params)
    if page.after is not None:
        # Row comparison uses the composite index's order directly.
        where.append(f"({key[0]}, {key[1]}) {'>' if page.order == 'asc' else '<'} (%s, %s)")
        params.extend(page.after)
    sql = f"{select} WHERE {' AND '.join(where)} ORDER BY {key[0]} {direction}, {key[1]} {direction} LIMIT %s"
    params.append(limit + 1)
    if page.after is None and page.offset:
        sql += " OFFSET %s"
        params.append(page.offset)
    rows = conn.execute(sql, params).fetchall()
    return rows[:limit], len(rows) > limit


# --- tenants -------------------------------------------------------------------------------------

# Tenants with a limit, a balance or a decision (a tenant only ever denied has no balance). decisions can
# be large, so its distinct tenants come from a loose index scan: one index probe per tenant, not a scan.
_TENANTS = """
WITH RECURSIVE d(tenant_id, n) AS (
    (SELECT tenant_id, 1 FROM decisions WHERE tenant_id > %(after)s ORDER BY tenant_id LIMIT 1)
    UNION ALL
    SELECT (SELECT x.tenant_id FROM decisions x WHERE x.tenant_id > d.tenant_id ORDER BY x.tenant_id LIMIT 1),
           d.n + 1
    FROM d WHERE d.tenant_id IS NOT NULL AND d.n < %(limit)s  -- a page needs no more than `limit` of them
)
SELECT tenant_id FROM (
    SELECT tenant_id FROM d WHERE tenant_id IS NOT NULL
    UNION SELECT tenant_id FROM limits WHERE tenant_id > %(after)s
    UNION SELECT tenant_id FROM balances WHERE tenant_id > %(after)s
) t ORDER BY tenant_id LIMIT %(limit)s
"""


def tenant_ids(conn: psycopg.Connection, *, after: str, limit: int) -> Rows[str]:
    """Tenant ids greater than `after` ("" for the first page), in order."""
    rows = conn.execute(_TENANTS, {"after": after, "limit": limit + 1}).fetchall()
    return Rows([r[0] for r in rows[:limit]], len(rows) > limit)


# --- balances ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BalanceRow:
    scope_type: str
    scope_id: str
    limit_micro_usd: int | None  # None: no limit was ever set for the scope
    credit_micro_usd: int
    posted_micro_usd: int
    pending_micro_usd: int
    updated_at_ms: int


# limits holds a scope's limit for every period (0002); a FULL JOIN also lists scopes that have a limit
# but no spend yet this period, and spend on scopes without a limit (a workflow bounded only by its tenant).
_BALANCES = """
WITH b AS (SELECT * FROM balances WHERE tenant_id = %(tenant)s AND period_id = %(period)s),
     l AS (SELECT * FROM limits WHERE tenant_id = %(tenant)s)
SELECT coalesce(b.scope_type, l.scope_type), coalesce(b.scope_id, l.scope_id),
       coalesce(l.limit_micro_usd, b.limit_micro_usd),
       coalesce(b.credit_micro_usd, 0), coalesce(b.posted_micro_usd, 0), coalesce(b.pending_micro_usd, 0),
       greatest(coalesce(b.updated_at_ms, 0), coalesce(l.updated_at_ms, 0))
FROM b FULL OUTER JOIN l ON b.scope_type = l.scope_type AND b.scope_id = l.scope_id
ORDER BY 1, 2  -- TENANT before WORKFLOW
"""


def balances(conn: psycopg.Connection, tenant_id: str, period_id: str) -> list[BalanceRow]:
    """Every scope of the tenant with a balance in the period or a limit on it."""
    return [BalanceRow(*r) for r in conn.execute(_BALANCES, {"tenant": tenant_id, "period": period_id})]


# --- ledger entries ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LedgerEntryRow:
    entry_id: str
    entry_type: str
    period_id: str
    request_id: str | None
    workflow_id: str | None
    model: str | None
    amount_micro_usd: int
    recorded_at_ms: int
    body: dict[str, Any]


_LEDGER_COLUMNS = ("entry_id, entry_type, period_id, request_id, workflow_id, model, amount_micro_usd, "
                   "recorded_at_ms, body")


def ledger_entries(conn: psycopg.Connection, tenant_id: str, *, page: Keyset, limit: int,
                   from_ms: int | None = None, to_ms: int | None = None, workflow_id: str | None = None,
                   model: str | None = None, entry_type: str | None = None) -> Rows[LedgerEntryRow]:
    """A tenant's ledger entries recorded in [from_ms, to_ms), by (recorded_at_ms, entry_id)."""
    where, params = time_filters("recorded_at_ms", from_ms, to_ms)
    for column, value in (("workflow_id", workflow_id), ("model", model), ("entry_type", entry_type)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    # tenant_id first and always: every query of a tenant route is scoped in SQL, not after the fact.
    rows, more = _page(conn, f"SELECT {_LEDGER_COLUMNS} FROM ledger_entries", ["tenant_id = %s", *where],
                       [tenant_id, *params], ("recorded_at_ms", "entry_id"), page, limit)
    return Rows([LedgerEntryRow(*r) for r in rows], more)


@dataclass(frozen=True, slots=True)
class PolicyChangeRow:
    body: dict[str, Any]  # the PolicyChanged entry: policy_json, policy_version, ...
    recorded_at_ms: int


def latest_policy_change(conn: psycopg.Connection, tenant_id: str) -> PolicyChangeRow | None:
    """The tenant's latest PolicyChanged ledger entry, None when it never set a policy."""
    row = conn.execute("SELECT body, recorded_at_ms FROM ledger_entries "
                       "WHERE tenant_id = %s AND entry_type = 'PolicyChanged' "
                       "ORDER BY recorded_at_ms DESC, entry_id DESC LIMIT 1", (tenant_id,)).fetchone()
    return None if row is None else PolicyChangeRow(*row)


# --- decisions -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecisionRow:
    request_id: str
    ledger_entry_id: str
    tenant_id: str
    workflow_id: str
    agent_id: str
    outcome: str
    requested_model: str
    model: str | None
    binding_scope: str | None
    reason_codes: list[str]
    reserved_micro_usd: int
    granted_output_tokens: int | None
    requested_at_ms: int
    decided_at_ms: int
    body: dict[str, Any]


_DECISION_COLUMNS = ("request_id, ledger_entry_id, tenant_id, workflow_id, agent_id, outcome, requested_model, "
                     "model, binding_scope, reason_codes, reserved_micro_usd, granted_output_tokens, requested_at_ms, "
                     "decided_at_ms, body")
# The request's own decision first: conflicts last, then oldest.
_OWN_FIRST = "ORDER BY ('idempotency_conflict' = ANY(reason_codes)), decided_at_ms, ledger_entry_id"


def decisions(conn: psycopg.Connection, tenant_id: str, *, page: Keyset, limit: int, from_ms: int | None = None,
              to_ms: int | None = None, outcome: str | None = None,
              workflow_id: str | None = None) -> Rows[DecisionRow]:
    """A tenant's gate decisions made in [from_ms, to_ms), by (decided_at_ms, ledger_entry_id)."""
    where, params = time_filters("decided_at_ms", from_ms, to_ms)
    for column, value in (("outcome", outcome), ("workflow_id", workflow_id)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    rows, more = _page(conn, f"SELECT {_DECISION_COLUMNS} FROM decisions", ["tenant_id = %s", *where],
                       [tenant_id, *params], ("decided_at_ms", "ledger_entry_id"), page, limit)
    return Rows([DecisionRow(*r) for r in rows], more)


def decision(conn: psycopg.Connection, tenant_id: str, request_id: str) -> DecisionRow | None:
    """The request's own decision within the tenant (not a later idempotency_conflict DENY), or None."""
    row = conn.execute(f"SELECT {_DECISION_COLUMNS} FROM decisions WHERE tenant_id = %s AND request_id = %s "
                       f"{_OWN_FIRST} LIMIT 1", (tenant_id, request_id)).fetchone()
    return None if row is None else DecisionRow(*row)


def decision_tenants(conn: psycopg.Connection, request_id: str) -> list[str]:
    """Tenants with a decision for this request id: at most two, enough to tell one from several."""
    return [r[0] for r in conn.execute("SELECT DISTINCT tenant_id FROM decisions WHERE request_id = %s LIMIT 2",
                                       (request_id,))]


# --- alerts --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertRow:
    entry_id: str
    scope_type: str
    scope_id: str
    period_id: str
    threshold_pct: int
    spent_micro_usd: int
    limit_micro_usd: int
    recorded_at_ms: int


_ALERT_COLUMNS = ("entry_id, scope_type, scope_id, period_id, threshold_pct, spent_micro_usd, limit_micro_usd, "
                  "recorded_at_ms")


def alerts(conn: psycopg.Connection, tenant_id: str, *, page: Keyset, limit: int, min_pct: int = 0,
           period_id: str | None = None) -> Rows[AlertRow]:
    """A tenant's crossed thresholds of at least min_pct %, by (recorded_at_ms, entry_id)."""
    where: list[str] = ["threshold_pct >= %s"]
    params: list[object] = [min_pct]
    if period_id is not None:
        where.append("period_id = %s")
        params.append(period_id)
    rows, more = _page(conn, f"SELECT {_ALERT_COLUMNS} FROM alerts", ["tenant_id = %s", *where],
                       [tenant_id, *params], ("recorded_at_ms", "entry_id"), page, limit)
    return Rows([AlertRow(*r) for r in rows], more)


# --- API keys (the API's own table, written by shared/apikeys.py; read here like the rest) ------------


@dataclass(frozen=True, slots=True)
class ApiKeyRow:
    key_id: str
    tenant_id: str | None  # None exactly for admin keys
    is_admin: bool
    can_write: bool
    name: str
    created_at_ms: int


def live_api_keys(conn: psycopg.Connection, *, tenant_id: str | None, limit: int) -> list[ApiKeyRow]:
    """Unrevoked keys, of one tenant or of all (admin keys included), oldest first; at most `limit`."""
    rows = conn.execute("SELECT key_id, tenant_id, is_admin, can_write, name, created_at_ms FROM api_keys "
                        "WHERE revoked_at_ms IS NULL AND (%(t)s::text IS NULL OR tenant_id = %(t)s) "
                        "ORDER BY created_at_ms, key_id LIMIT %(n)s", {"t": tenant_id, "n": limit}).fetchall()
    return [ApiKeyRow(*r) for r in rows]


def has_api_keys_table(conn: psycopg.Connection) -> bool:
    """Whether the API's migrations are applied (its readiness check)."""
    row = conn.execute("SELECT to_regclass('api_keys') IS NOT NULL").fetchone()
    return bool(row and row[0])


# --- signing credentials (the API's own tables, written by services/api/credentials.py) -------------------


@dataclass(frozen=True, slots=True)
class CredentialRow:
    key_id: str
    agent_id: str
    name: str
    created_at_ms: int
    created_by: str


@dataclass(frozen=True, slots=True)
class CredentialState:
    mode: str | None  # None: the gate's default
    version: int
    keys: list[CredentialRow]


@dataclass(frozen=True, slots=True)
class CredentialEventRow:
    version: int
    kind: str
    key_id: str | None
    mode: str | None
    by_whom: str
    at_ms: int


def credential_state(conn: psycopg.Connection, tenant_id: str) -> CredentialState:
    """A tenant's auth mode, version and live keys (at most MAX_LIVE_KEYS, so unpaged), oldest first."""
    row = conn.execute("SELECT mode, version FROM credential_tenants WHERE tenant_id = %s", (tenant_id,)).fetchone()
    keys = conn.execute("SELECT key_id, agent_id, name, created_at_ms, created_by FROM credentials "
                        "WHERE tenant_id = %s AND revoked_at_ms IS NULL ORDER BY sequence", (tenant_id,)).fetchall()
    return CredentialState(row[0] if row else None, row[1] if row else 0, [CredentialRow(*k) for k in keys])


def credential_events(conn: psycopg.Connection, tenant_id: str, *, before_version: int | None,
                      limit: int) -> Rows[CredentialEventRow]:
    """A tenant's credential changes, newest first, below `before_version` when given."""
    rows = conn.execute("SELECT version, kind, key_id, mode, by_whom, at_ms FROM credential_events "
                        "WHERE tenant_id = %(t)s AND (%(b)s::bigint IS NULL OR version < %(b)s) "
                        "ORDER BY version DESC LIMIT %(n)s",
                        {"t": tenant_id, "b": before_version, "n": limit + 1}).fetchall()
    return Rows([CredentialEventRow(*r) for r in rows[:limit]], len(rows) > limit)
