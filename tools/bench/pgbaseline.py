"""The gate users would otherwise build: a PostgreSQL balance row per tenant, checked and debited per
request, measured on the same prompts, tenants and budgets as the Kafka gate.

Per request a worker counts the prompt (tiktoken, as our token-counter does), prices the worst case,
then in one transaction: SELECT the tenant's row FOR UPDATE, check headroom, pending += cost, INSERT
the reservation keyed by request id (idempotency), COMMIT. Each allowed call is then settled in a
second transaction (post the actual cost, release the rest), as our pipeline settles completions.
N worker threads, one connection each, fed open loop; latency is from the scheduled time.

The race: many concurrent requests against one budget that affords a fraction of them, with the row
locked (FOR UPDATE) and without (read, then write: the check-then-debit most gateways ship).
Everything lives in a throw-away schema that is dropped at the end.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from typing import Any

import psycopg

from ledgergate.shared import catalogue
from ledgergate.shared.tokenizers import count_chat, get_encoding
from ledgergate.tools.bench import stats
from ledgergate.tools.bench.workload import Workload, hot_tenant, limits, messages, prompt_tokens
from ledgergate.tools.provider_standin import standin_call

DDL = """
CREATE TABLE {s}.balances (tenant_id text PRIMARY KEY, limit_micro bigint NOT NULL,
                           posted bigint NOT NULL DEFAULT 0, pending bigint NOT NULL DEFAULT 0);
CREATE TABLE {s}.reservations (request_id text PRIMARY KEY, tenant_id text NOT NULL, amount bigint NOT NULL,
                               settled boolean NOT NULL DEFAULT false);
"""


class PgGate:
    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn, self.schema = dsn, schema
        self.prices = catalogue.prices()
        self.version = self.prices.at(time.time_ns() // 1_000_000).version
        self.enc = get_encoding("o200k_base")

    def create(self, tenant_limits: dict[str, int]) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {self.schema}")
            conn.execute(DDL.format(s=self.schema))
            with conn.cursor() as cur:
                cur.executemany(f"INSERT INTO {self.schema}.balances (tenant_id, limit_micro) VALUES (%s, %s)",
                                list(tenant_limits.items()))

    def drop(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")

    def reserve(self, conn: psycopg.Connection, rid: str, tenant: str, cost: int, lock: bool = True) -> bool:
        lock_clause = " FOR UPDATE" if lock else ""
        with conn.transaction():
            row = conn.execute(f"SELECT limit_micro, posted, pending FROM {self.schema}.balances WHERE tenant_id = %s"
                               + lock_clause, (tenant,)).fetchone()
            if row is None or row[1] + row[2] + cost > row[0]:
                return False
            conn.execute(f"UPDATE {self.schema}.balances SET pending = pending + %s WHERE tenant_id = %s",
                         (cost, tenant))
            conn.execute(f"INSERT INTO {self.schema}.reservations (request_id, tenant_id, amount) VALUES (%s, %s, %s)",
                         (rid, tenant, cost))
        return True

    def settle(self, conn: psycopg.Connection, rid: str, tenant: str, actual: int) -> None:
        with conn.transaction():
            row = conn.execute(f"UPDATE {self.schema}.reservations SET settled = true WHERE request_id = %s "
                               "AND NOT settled RETURNING amount", (rid,)).fetchone()
            if row is not None:
                conn.execute(f"UPDATE {self.schema}.balances SET pending = pending - %s, posted = posted + %s "
                             "WHERE tenant_id = %s", (row[0], actual, tenant))

    def overspend(self) -> dict[str, int]:
        """Invariant 1 on the baseline's own rows: tenant -> micro-USD past its limit (posted + pending)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            rows = conn.execute(f"SELECT tenant_id, posted + pending - limit_micro FROM {self.schema}.balances "
                                "WHERE posted + pending > limit_micro").fetchall()
        return {tenant: over for tenant, over in rows}

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> int:
        return self.prices.cost_micro_usd(self.version, model, input_tokens, 0, output_tokens, reasoning_tokens=0)


def _serve(gate: PgGate, work: Workload, jobs: queue.Queue[tuple[int, int] | None], tag: str,
           results: list[tuple[int, int, bool, int, int]], seed: int) -> None:
    """One worker: (index, scheduled us) from `jobs` until None; appends (sched, done, allowed, count_ns, db_ns)."""
    rng = random.Random(seed)
    with psycopg.connect(gate.dsn, autocommit=True) as conn:
        while (job := jobs.get()) is not None:
            j, sched = job
            a, _user, _prio, max_out = work.schedule[j]
            agent = work.agents[a]
            t0 = time.perf_counter_ns()
            tokens = count_chat(messages(work, j), agent.model, encoding=gate.enc)
            t1 = time.perf_counter_ns()
            rid = f"pg{tag}-{j}"
            allowed = gate.reserve(conn, rid, agent.tenant, gate.cost(agent.model, tokens, max_out))
            done = time.time_ns() // 1000
            t2 = time.perf_counter_ns()
            if allowed:
                out = standin_call(agent.model, prompt_tokens(work, j), max_out, rng)
                usage = out.usage or {"input_tokens": tokens, "output_tokens": 0, "reasoning_tokens": 0}
                billed_output = usage["output_tokens"] + usage["reasoning_tokens"]
                actual = gate.cost(agent.model, usage["input_tokens"], billed_output)
                gate.settle(conn, rid, agent.tenant, actual)
            results.append((sched, done, allowed, t1 - t0, t2 - t1))


def run_load(gate: PgGate, work: Workload, tag: str, start: int, count: int, rate: float | None, workers: int,
             max_backlog_s: float = 5.0) -> dict[str, Any]:
    """Open loop at `rate`, or (rate None) everything queued at once to measure capacity."""
    jobs: queue.Queue[tuple[int, int] | None] = queue.Queue()
    results: list[tuple[int, int, bool, int, int]] = []
    threads = [threading.Thread(target=_serve, args=(gate, work, jobs, f"{tag}{rate or 0:g}", results, i),
                                daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    # Open loop starts 100 ms out so every worker is connected; a capacity run queues everything now.
    began = time.time_ns() // 1000 + (100_000 if rate else 0)
    aborted, sent = False, 0
    for i in range(count):
        due = began + (int(i * 1e6 / rate) if rate else 0)
        if rate:
            wait = due - time.time_ns() // 1000
            if wait > 0:
                time.sleep(wait / 1e6)
            if jobs.qsize() > max_backlog_s * rate:
                aborted = True  # the queue holds more than max_backlog_s of traffic: not sustained
                break
        jobs.put((start + i, due))
        sent += 1
    for _ in threads:
        jobs.put(None)
    for t in threads:
        t.join()
    ended = max((r[1] for r in results), default=began)
    span_s = max(1e-6, (ended - began) / 1e6)
    return {"offered_per_s": rate, "workers": workers, "sent": sent, "decided": len(results), "aborted": aborted,
            "decisions_per_s": round(len(results) / span_s, 1),
            "allowed": sum(1 for r in results if r[2]),
            "latency_ms": stats.summary_ms([r[1] - r[0] for r in results]),
            "mean_us": {"count_tokens": round(sum(r[3] for r in results) / 1000 / max(1, len(results)), 1),
                        "reserve_txn": round(sum(r[4] for r in results) / 1000 / max(1, len(results)), 1)}}


def race(gate: PgGate, lock: bool, requests: int, affords: int, concurrency: int, cost: int = 1000) -> dict[str, Any]:
    """`requests` concurrent reservations against a budget for `affords` of them."""
    tenant = f"race-{'locked' if lock else 'naive'}"
    limit = cost * affords + cost // 2
    with psycopg.connect(gate.dsn, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {gate.schema}.balances (tenant_id, limit_micro) VALUES (%s, %s)", (tenant, limit))
    barrier = threading.Barrier(concurrency)
    approved: list[int] = []

    def worker(w: int) -> None:
        with psycopg.connect(gate.dsn, autocommit=True) as conn:
            barrier.wait()  # every connection open first, so the requests really overlap
            for i in range(w, requests, concurrency):
                if gate.reserve(conn, f"{tenant}-{i}", tenant, cost, lock=lock):
                    approved.append(i)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with psycopg.connect(gate.dsn, autocommit=True) as conn:
        row = conn.execute(f"SELECT pending FROM {gate.schema}.balances WHERE tenant_id = %s", (tenant,)).fetchone()
    granted = len(approved) * cost
    return {"requests": requests, "concurrency": concurrency, "limit_micro_usd": limit, "affordable": affords,
            "allowed": len(approved), "reserved_micro_usd": granted, "overspend_micro_usd": max(0, granted - limit),
            "row_pending_micro_usd": row[0] if row else None}


def run_baseline(dsn: str, work: Workload, tag: str, start: int, count: int, rate: float, capacity_count: int,
                 workers: int, race_requests: int, race_affords: int) -> dict[str, Any]:
    gate = PgGate(dsn, f"bench_{tag}")
    gate.create(limits(work))
    try:
        capacity = run_load(gate, work, f"{tag}c", start, capacity_count, None, workers)
        at_rate = run_load(gate, work, f"{tag}r", start + capacity_count, count, rate, workers)
        races = {"naive (read, then write)": race(gate, False, race_requests, race_affords, min(64, race_requests)),
                 "SELECT ... FOR UPDATE": race(gate, True, race_requests, race_affords, min(64, race_requests))}
        return {"workers": workers, "capacity": capacity, "rate": at_rate, "race": races}
    finally:
        gate.drop()


def run_hot(dsn: str, work: Workload, tag: str, count: int, workers: int) -> dict[str, Any]:
    """The hot-tenant shape: everything queued at once (capacity), one row lock serialising the hot
    tenant's half of the traffic; then the overspend check on every row."""
    hot = hot_tenant(work)
    gate = PgGate(dsn, f"bench_{tag}")
    gate.create(limits(work, hot))
    try:
        capacity = run_load(gate, work, f"{tag}h", 0, count, None, workers)
        over = gate.overspend()
        return {"workers": workers, "hot_tenant": hot, "capacity": capacity,
                "overspend_micro_usd": sum(over.values()), "overspent_tenants": len(over)}
    finally:
        gate.drop()
