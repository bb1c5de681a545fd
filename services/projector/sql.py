"""projector's PostgreSQL side: one transaction per batch, rows and consumer offsets together.

Each batch is COPYed into per-connection temp tables (ON COMMIT DELETE ROWS) and moved into the read
model with one set-based INSERT ... SELECT per table, so the cost per transaction is a fixed number of
round trips whatever the batch size. Balances and limits change only for ledger entries that this
transaction newly inserted into ledger_entries: even a replay past the stored offsets (an operator
resetting consumer_offsets) cannot apply an entry twice.
"""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
from psycopg.types.json import set_json_dumps

from ledgergate.services.projector.core import Batch
from ledgergate.shared.errors import StaleOffsetsError

# name -> (columns with types); the COPY column order is the order of core.Batch's tuples.
STAGES: dict[str, str] = {
    "stage_ledger": "tenant_id text, entry_id text, period_id text, entry_type text, request_id text, "
                    "workflow_id text, model text, amount_micro_usd bigint, recorded_at_ms bigint, "
                    "source_partition int, source_offset bigint, body jsonb",
    "stage_new": "tenant_id text, entry_id text",
    "stage_deltas": "tenant_id text, entry_id text, scope_type text, scope_id text, period_id text, "
                    "credit bigint, posted bigint, pending bigint, at_ms bigint",
    "stage_limits": "tenant_id text, entry_id text, scope_type text, scope_id text, limit_micro_usd bigint, "
                    "seq bigint, at_ms bigint",
    "stage_usage": "tenant_id text, entry_id text, request_id text, workflow_id text, model text, period_id text, "
                   "input_tokens bigint, cached_input_tokens bigint, output_tokens bigint, reasoning_tokens bigint, "
                   "estimated boolean, reserved_micro_usd bigint, actual_micro_usd bigint, "
                   "overage_micro_usd bigint, price_version text, settled_at_ms bigint, fail_open boolean",
    "stage_alerts": "tenant_id text, entry_id text, period_id text, scope_type text, scope_id text, "
                    "threshold_pct int, spent_micro_usd bigint, limit_micro_usd bigint, recorded_at_ms bigint",
    "stage_cache_hits": "tenant_id text, entry_id text, request_id text, workflow_id text, model text, "
                        "period_id text, cache_entry_id text, input_tokens bigint, output_tokens bigint, "
                        "avoided_micro_usd bigint, recorded_at_ms bigint",
    "stage_decisions": "tenant_id text, ledger_entry_id text, request_id text, workflow_id text, agent_id text, "
                       "outcome text, requested_model text, model text, binding_scope text, reason_codes text[], "
                       "reserved_micro_usd bigint, granted_output_tokens bigint, requested_at_ms bigint, "
                       "decided_at_ms bigint, body jsonb",
    "stage_audit": "chain_partition int, chain_sequence bigint, tenant_id text, kind text, subject_id text, "
                   "hash text, prev_hash text, recorded_at_ms bigint, audit_id text, event_type text, "
                   "source_topic text, source_partition int, source_offset bigint, event_sha256 text, "
                   "summary_json text",
}


def _names(stage: str) -> str:
    return ", ".join(col.split()[0] for col in STAGES[stage].split(", "))


def _types(stage: str) -> list[str]:
    return [{"int": "int4"}.get(t, t) for t in (col.split(" ", 1)[1] for col in STAGES[stage].split(", "))]


INSERT_LEDGER = f"""
WITH ins AS (
    INSERT INTO ledger_entries ({_names("stage_ledger")}) SELECT * FROM stage_ledger
    ON CONFLICT (tenant_id, entry_id) DO NOTHING RETURNING tenant_id, entry_id)
INSERT INTO stage_new SELECT tenant_id, entry_id FROM ins"""

UPSERT_LIMITS = """
INSERT INTO limits (tenant_id, scope_type, scope_id, limit_micro_usd, entry_id, updated_at_ms)
SELECT DISTINCT ON (l.tenant_id, l.scope_type, l.scope_id)
       l.tenant_id, l.scope_type, l.scope_id, l.limit_micro_usd, l.entry_id, l.at_ms
FROM stage_limits l JOIN stage_new USING (tenant_id, entry_id)
ORDER BY l.tenant_id, l.scope_type, l.scope_id, l.seq DESC
ON CONFLICT (tenant_id, scope_type, scope_id) DO UPDATE
SET limit_micro_usd = excluded.limit_micro_usd, entry_id = excluded.entry_id, updated_at_ms = excluded.updated_at_ms"""

# A limit holds for its scope in every period: mirror it onto all of the scope's balance rows.
MIRROR_LIMITS = """
UPDATE balances b SET limit_micro_usd = l.limit_micro_usd
FROM limits l
WHERE b.tenant_id = l.tenant_id AND b.scope_type = l.scope_type AND b.scope_id = l.scope_id
  AND (l.tenant_id, l.scope_type, l.scope_id) IN (
      SELECT tenant_id, scope_type, scope_id FROM stage_limits JOIN stage_new USING (tenant_id, entry_id))"""

UPSERT_BALANCES = """
INSERT INTO balances (tenant_id, scope_type, scope_id, period_id, limit_micro_usd, credit_micro_usd,
                      posted_micro_usd, pending_micro_usd, updated_at_ms)
SELECT d.tenant_id, d.scope_type, d.scope_id, d.period_id, l.limit_micro_usd,
       sum(d.credit)::bigint, sum(d.posted)::bigint, sum(d.pending)::bigint, max(d.at_ms)
FROM stage_deltas d JOIN stage_new USING (tenant_id, entry_id)
LEFT JOIN limits l ON l.tenant_id = d.tenant_id AND l.scope_type = d.scope_type AND l.scope_id = d.scope_id
GROUP BY d.tenant_id, d.scope_type, d.scope_id, d.period_id, l.limit_micro_usd
ORDER BY d.tenant_id, d.scope_type, d.scope_id, d.period_id
ON CONFLICT (tenant_id, scope_type, scope_id, period_id) DO UPDATE
SET credit_micro_usd = balances.credit_micro_usd + excluded.credit_micro_usd,
    posted_micro_usd = balances.posted_micro_usd + excluded.posted_micro_usd,
    pending_micro_usd = balances.pending_micro_usd + excluded.pending_micro_usd,
    updated_at_ms = greatest(balances.updated_at_ms, excluded.updated_at_ms)"""

# tier is not on the settlement: it is the tier of the model the request's reservation placed.
INSERT_USAGE = """
INSERT INTO usage (tenant_id, entry_id, request_id, workflow_id, model, period_id, input_tokens, cached_input_tokens,
                   output_tokens, reasoning_tokens, estimated, reserved_micro_usd, actual_micro_usd,
                   overage_micro_usd, price_version, settled_at_ms, fail_open, tier)
SELECT u.*, (SELECT le.body ->> 'tier' FROM ledger_entries le
             WHERE le.tenant_id = u.tenant_id AND le.request_id = u.request_id
               AND le.entry_type = 'ReservationPlaced'
             ORDER BY le.source_offset DESC LIMIT 1)
FROM stage_usage u
ON CONFLICT (tenant_id, request_id) DO NOTHING"""

INSERT_ALERTS = f"""
INSERT INTO alerts ({_names("stage_alerts")}) SELECT * FROM stage_alerts ON CONFLICT DO NOTHING"""

INSERT_CACHE_HITS = f"""
INSERT INTO cache_hits ({_names("stage_cache_hits")}) SELECT * FROM stage_cache_hits ON CONFLICT DO NOTHING"""

INSERT_DECISIONS = f"""
INSERT INTO decisions ({_names("stage_decisions")}) SELECT * FROM stage_decisions ON CONFLICT DO NOTHING"""

INSERT_AUDIT = f"""
INSERT INTO audit_records ({_names("stage_audit")}) SELECT * FROM stage_audit ON CONFLICT DO NOTHING"""

INSERT_ERRORS = """
INSERT INTO projection_errors (consumer, topic, partition, "offset", error_code, error)
VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"""

# Compare-and-set: advance each partition's offset only from the value this instance read. A second
# owner of the partition blocks on the row lock and then fails the comparison, so two instances can
# never both commit the same messages. expected = -1 means "no row yet".
ADVANCE_OFFSETS = """
WITH input (topic, partition, next_offset, expected) AS (
    SELECT * FROM unnest(%(topics)s::text[], %(partitions)s::int[], %(offsets)s::bigint[], %(expected)s::bigint[]))
INSERT INTO consumer_offsets (consumer, topic, partition, next_offset)
SELECT %(consumer)s, topic, partition, next_offset FROM input ORDER BY topic, partition
ON CONFLICT (consumer, topic, partition) DO UPDATE SET next_offset = excluded.next_offset
WHERE consumer_offsets.next_offset = (
    SELECT i.expected FROM input i WHERE i.topic = excluded.topic AND i.partition = excluded.partition)
RETURNING topic, partition"""

STORED_OFFSETS = """
SELECT topic, partition, next_offset FROM consumer_offsets WHERE consumer = %s AND topic = ANY(%s)"""


def prepare(conn: psycopg.Connection[Any]) -> None:
    """Create this connection's staging tables (temp tables live as long as the connection)."""
    set_json_dumps(orjson.dumps, conn)  # bodies are dicts; orjson is ~10x the json module
    # Safe to lose the last commits in a PostgreSQL crash: each carries its own consumer offsets, so
    # what is lost is re-read from Kafka, and not waiting for the WAL flush saves a disk sync per batch.
    conn.execute("SET synchronous_commit = off")
    with conn.transaction():
        for name, columns in STAGES.items():
            conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {name} ({columns}) ON COMMIT DELETE ROWS")


def stored_offsets(conn: psycopg.Connection[Any], consumer: str, topics: list[str]) -> dict[tuple[str, int], int]:
    with conn.transaction():
        rows = conn.execute(STORED_OFFSETS, (consumer, topics)).fetchall()
    return {(topic, partition): offset for topic, partition, offset in rows}


def _copy(cur: psycopg.Cursor[Any], stage: str, rows: list[tuple[Any, ...]]) -> None:
    # Binary COPY: no text formatting here and no parsing in the server.
    with cur.copy(f"COPY {stage} ({_names(stage)}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(_types(stage))
        for row in rows:
            copy.write_row(row)


def write(conn: psycopg.Connection[Any], consumer: str, batch: Batch, expected: dict[tuple[str, int], int]) -> None:
    """Commit the batch's rows and its consumer offsets in one transaction, or raise and change nothing."""
    keys = sorted(batch.offsets)
    with conn.transaction(), conn.cursor() as cur:
        # Offsets first: a competing owner waits here, before doing any work, rather than after.
        done = cur.execute(ADVANCE_OFFSETS, {
            "consumer": consumer, "topics": [t for t, _ in keys], "partitions": [p for _, p in keys],
            "offsets": [batch.offsets[k] for k in keys], "expected": [expected.get(k, -1) for k in keys]}).fetchall()
        if len(done) != len(keys):
            lost = sorted(set(keys) - {(t, p) for t, p in done})
            raise StaleOffsetsError(f"consumer_offsets moved under {consumer} for {lost}")
        if batch.ledger:
            _copy(cur, "stage_ledger", batch.ledger)
            cur.execute(INSERT_LEDGER)
            if batch.limits:
                _copy(cur, "stage_limits", batch.limits)
                cur.execute(UPSERT_LIMITS)
                cur.execute(MIRROR_LIMITS)
            if batch.deltas:
                _copy(cur, "stage_deltas", batch.deltas)
                cur.execute(UPSERT_BALANCES)
            if batch.usage:
                _copy(cur, "stage_usage", batch.usage)
                cur.execute(INSERT_USAGE)
            if batch.alerts:
                _copy(cur, "stage_alerts", batch.alerts)
                cur.execute(INSERT_ALERTS)
            if batch.cache_hits:
                _copy(cur, "stage_cache_hits", batch.cache_hits)
                cur.execute(INSERT_CACHE_HITS)
        if batch.decisions:
            _copy(cur, "stage_decisions", batch.decisions)
            cur.execute(INSERT_DECISIONS)
        if batch.audit:
            _copy(cur, "stage_audit", batch.audit)
            cur.execute(INSERT_AUDIT)
        if batch.errors:
            cur.executemany(INSERT_ERRORS, batch.errors)
