"""Projector throughput: how fast a backlog of ledger entries, decisions and audit records becomes rows.

Produces a synthetic but coherent history (per request: a ReservationPlaced or ReservationDenied, most
placements settled, the router's decision and one audit record per ledger entry and per decision) into
fresh prefixed topics, then starts `ledgergate run projector` against a fresh database and times it
until every message is a row. Run with the stack up:

    .venv/bin/python tools/bench/projector_throughput.py --requests 100000 --tenants 1000
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.events import Usage
from ledgergate.kafka_config import admin_config, producer_config
from ledgergate.partitioning import murmur2_partition
from ledgergate.services.router.core import Chain, audit_record, decision_for, summary_of
from ledgergate.shared.catalogue import deployments
from ledgergate.shared.db import migrate
from ledgergate.shared.kafka import provision
from ledgergate.shared.ledger.entries import (
    BudgetLimitSet,
    LedgerEntry,
    ReservationDenied,
    ReservationPlaced,
    ReservationSettled,
    to_record,
)
from ledgergate.shared.ledger.periods import period_of
from ledgergate.shared.settings import KafkaSettings, PostgresSettings
from ledgergate.tools.servicerunner import ServiceSet

PARTITIONS = 6


def history(requests: int, tenants: int, seed: int) -> list[LedgerEntry]:
    rng = random.Random(seed)
    now = time.time_ns() // 1_000_000
    period = period_of(now)[0]
    names = [f"bt{i:05d}" for i in range(tenants)]
    out: list[LedgerEntry] = [BudgetLimitSet(f"cmd/{t}", t, period, now, "TENANT", t, "SET", 10**12, 0, f"c-{t}")
                              for t in names]
    for i in range(requests):
        t, rid, wf, now = rng.choice(names), f"r{i:08d}", ("", "etl", "chat")[i % 3], now + 1
        if rng.random() < 0.08:
            out.append(ReservationDenied(f"{rid}/reservation", t, period, now, rid, wf, "a", "gpt-4o", "rate_limited",
                                         "", "tenant", 250, 0, "ab" * 32, now, 0))
            continue
        amount = rng.randrange(1_000, 40_000)
        out.append(ReservationPlaced(f"{rid}/reservation", t, period, now, rid, wf, "a", "gpt-4o", "gpt-4o",
                                     "premium", 0, amount, 300, 500, "2026-11-01", 0, "NORMAL", None, now + 600_000,
                                     "ab" * 32, now, 10**9))
        if rng.random() < 0.9:
            actual = amount * rng.randint(20, 100) // 100
            out.append(ReservationSettled(f"{rid}/settlement", t, period, now + 1, rid, wf, "gpt-4o", amount, actual,
                                          amount - actual, 0, Usage(300, 0, 120, 0), i % 5 == 0, "2026-11-01"))
    return out


def produce(kafka: KafkaSettings, entries: list[LedgerEntry]) -> dict[str, int]:
    producer = Producer(producer_config(kafka.kafka_connection, **{"linger.ms": 50,
                                                                    "queue.buffering.max.messages": 1_000_000}))
    chains = {p: Chain(p) for p in range(PARTITIONS)}
    catalogue, counts = deployments(), {"ledger": 0, "decisions": 0, "audit": 0}

    def send(topic: str, key: bytes, value: bytes, partition: int) -> None:
        while True:
            try:
                producer.produce(kafka.topic(topic), key=key, value=value, partition=partition)
                return
            except BufferError:
                producer.poll(0.05)

    for offset_hint, entry in enumerate(entries):
        key = entry.tenant_id.encode()
        p = murmur2_partition(key, PARTITIONS)
        raw = codec().encode(*to_record(entry))
        send(topics.LEDGER, key, raw, p)
        audit = [("LEDGER", type(entry).__name__, entry.entry_id, hashlib.sha256(raw).hexdigest(), summary_of(entry))]
        counts["ledger"] += 1
        if isinstance(entry, ReservationPlaced | ReservationDenied):
            decision = codec().encode("GateDecision", decision_for(entry, catalogue).to_record())
            send(topics.DECISIONS, key, decision, p)
            counts["decisions"] += 1
            audit.append(("DECISION", "GateDecision", entry.request_id, hashlib.sha256(decision).hexdigest(), "{}"))
        for kind, event_type, subject, sha, summary in audit:
            record = audit_record(chains[p], kind=kind, event_type=event_type, subject_id=subject,
                                  tenant_id=entry.tenant_id, source_topic=kafka.topic(topics.LEDGER),
                                  source_partition=p,
                                  source_offset=offset_hint, event_sha256=sha, summary_json=summary,
                                  recorded_at_ms=entry.recorded_at_ms)
            send(topics.AUDIT, key, codec().encode("AuditRecord", record.to_record()), p)
            counts["audit"] += 1
        if offset_hint % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError("not every message was delivered")
    return counts


def cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a live process (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backend_pids(dsn: str) -> list[int]:
    """PostgreSQL server processes serving the projector (every other session on the bench database)."""
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                           "AND pid <> pg_backend_pid()")]


def rows(dsn: str) -> tuple[int, int, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT (SELECT count(*) FROM ledger_entries), (SELECT count(*) FROM decisions), "
                           "(SELECT count(*) FROM audit_records)").fetchone()
    return (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--tenants", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    kafka = KafkaSettings(topic_prefix=f"pb{uuid.uuid4().hex[:8]}.")
    specs = provision.load_specs(prefix=kafka.topic_prefix, partitions=PARTITIONS)
    provision.apply(kafka.kafka_connection, specs)
    admin_dsn = PostgresSettings().pg_dsn
    db = f"lg_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    dsn = f"{admin_dsn.rpartition('/')[0]}/{db}"
    try:
        migrate(dsn)  # before the clock starts: the projector would otherwise do it
        entries = history(args.requests, args.tenants, args.seed)
        t0 = time.perf_counter()
        counts = produce(kafka, entries)
        produce_s = time.perf_counter() - t0
        want = (counts["ledger"], counts["decisions"], counts["audit"])
        env = {**kafka.kafka_connection.env_vars(), "LEDGERGATE_TOPIC_PREFIX": kafka.topic_prefix,
               "LEDGERGATE_PG_DSN": dsn, "LEDGERGATE_PROJECTOR_BATCH": str(args.batch)}
        with tempfile.TemporaryDirectory() as logs, ServiceSet(env, Path(logs)) as services:
            started = time.perf_counter()
            services.start(["projector"])
            first, backends = None, []
            while (have := rows(dsn)) != want:
                if first is None and any(have):
                    first, backends = time.perf_counter(), backend_pids(dsn)
                if time.perf_counter() - started > 1800 or not services.alive("projector"):
                    raise RuntimeError(f"projector stalled at {have} of {want}: {services.tail('projector')}")
                time.sleep(0.1)
            done = time.perf_counter()
            projector_cpu = cpu_s(services.pid("projector"))
            postgres_cpu = sum(c for c in map(cpu_s, backends) if c is not None)
        messages = sum(want)
        usage = sum(isinstance(e, ReservationSettled) for e in entries)
        table_rows = messages + usage  # ledger_entries + decisions + audit_records + usage
        steady = done - (first or started)
        print(json.dumps({
            "messages": messages, **counts, "usage_rows": usage, "table_rows": table_rows, "batch": args.batch,
            "produce_s": round(produce_s, 1), "total_s_incl_start": round(done - started, 2),
            "steady_s": round(steady, 2), "messages_per_s": round(messages / steady),
            "table_rows_per_s": round(table_rows / steady),
            # CPU is what the projector costs whatever else runs on the machine: the wall-clock rates above
            # shrink when other processes compete for the cores, messages per CPU-second do not.
            "projector_cpu_s_incl_start": projector_cpu and round(projector_cpu, 2),
            "postgres_backend_cpu_s": round(postgres_cpu, 2), "load_avg_1m": os.getloadavg()[0]}, indent=2))
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin = AdminClient(admin_config(kafka.kafka_connection))
        for fut in admin.delete_topics([s.name for s in specs], operation_timeout=30).values():
            with contextlib.suppress(Exception):
                fut.result()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
