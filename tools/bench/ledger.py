"""Ledger rebuild rate and memory per tenant.

(a) A synthetic ledger (placed / settled / denied / expired / voided / threshold entries across many
tenants, each tenant's history coherent) is produced into a prefixed budget.ledger topic, then folded
from offset 0 exactly as the budget-manager rebuilds: ledgergate.shared.kafka.reader.read_to_end, codec decode,
from_record, ledgergate.shared.ledger.state.evolve. A second read-only pass and in-memory passes over a sample
split the time into Kafka reading, Avro decoding, record->entry, and the fold itself.
(b) Memory: many tenants' entries folded in-process without Kafka; RSS growth per tenant, and a
tracemalloc count on a sample, each in a fresh process so nothing else sits in the heap.

The fold and the memory runs are subprocesses: `python -m ledgergate.tools.bench.ledger fold|memory '<json>'`.
"""

from __future__ import annotations

import gc
import heapq
import json
import random
import subprocess
import sys
import time
import tracemalloc
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from ledgergate.codec import codec
from ledgergate.connection import KafkaConnection
from ledgergate.errors import LedgergateError
from ledgergate.events import Usage
from ledgergate.kafka_config import producer_config
from ledgergate.shared.errors import StackError
from ledgergate.shared.ledger.entries import (
    BudgetLimitSet,
    LedgerEntry,
    PeriodOpened,
    ReservationDenied,
    ReservationExpired,
    ReservationPlaced,
    ReservationSettled,
    ReservationVoided,
    ThresholdCrossed,
    from_record,
    to_record,
)
from ledgergate.shared.ledger.packing import TenantStore
from ledgergate.shared.ledger.periods import period_of
from ledgergate.shared.ledger.state import TENANT, TenantState, evolve
from ledgergate.shared.settings import PROJECT_ROOT
from ledgergate.tools.bench.procstats import rss_bytes

WORKFLOWS = ("research", "support", "codegen", "triage")


def _placed(tenant: str, period: str, now: int, rid: str, wf: str, amount: int) -> ReservationPlaced:
    return ReservationPlaced(
        entry_id=f"{rid}/reservation", tenant_id=tenant, period_id=period, recorded_at_ms=now, request_id=rid,
        workflow_id=wf, agent_id="agent-1", requested_model="gpt-4o", model="gpt-4o", tier="premium",
        candidate_index=0, amount_micro_usd=amount, input_tokens=1200, granted_output_tokens=512,
        price_version="2026-11-01", policy_version=0, priority="NORMAL", region=None, expires_at_ms=now + 600_000,
        request_sha256="ab" * 32, requested_at_ms=now, tenant_remaining_micro_usd=10_000_000)


def _settled(tenant: str, period: str, now: int, rid: str, wf: str, amount: int, actual: int) -> ReservationSettled:
    return ReservationSettled(
        entry_id=f"{rid}/settlement", tenant_id=tenant, period_id=period, recorded_at_ms=now, request_id=rid,
        workflow_id=wf, model="gpt-4o", reserved_micro_usd=amount, actual_micro_usd=actual,
        released_micro_usd=max(0, amount - actual), overage_micro_usd=max(0, actual - amount),
        usage=Usage(1200, 0, 300, 0), usage_estimated=False, price_version="2026-11-01")


def _denied(tenant: str, period: str, now: int, rid: str, wf: str) -> ReservationDenied:
    return ReservationDenied(
        entry_id=f"{rid}/reservation", tenant_id=tenant, period_id=period, recorded_at_ms=now, request_id=rid,
        workflow_id=wf, agent_id="agent-1", requested_model="gpt-4o", reason="budget_exhausted",
        detail="cheapest candidate costs 9000 micro-USD", binding_scope=f"tenant:{tenant}", retry_after_ms=None,
        policy_version=0, request_sha256="cd" * 32, requested_at_ms=now, tenant_remaining_micro_usd=1000)


def history_ledger(entries: int, tenants: int, seed: int, periods: int) -> Iterator[LedgerEntry]:
    """`synthetic_ledger` spread over `periods` months ending with the current one: a long history whose
    state (the idempotency window keeps this period and the last) does not grow with its length."""
    assert periods >= 1, periods
    starts = [period_of(time.time_ns() // 1_000_000)[1]]
    while len(starts) < periods:
        starts.insert(0, period_of(starts[0] - 1)[1])
    for k, start_ms in enumerate(starts):
        share = entries // periods if k < periods - 1 else entries - (periods - 1) * (entries // periods)
        # Entries are 1 ms apart; the current period ends just before now, read when it begins (building a
        # long history takes longer than a hold's TTL), so its live holds are not yet due at the restart:
        # in a running ledger due holds were expired as they came due.
        now_ms = time.time_ns() // 1_000_000
        at_ms = start_ms + 3_600_000 if k < periods - 1 else max(start_ms, now_ms - share - 60_000)
        made = 0
        for entry in synthetic_ledger(share, tenants, seed + k, now_ms=at_ms, tag=f"p{k}-",
                                      setup=k == 0, close=k < periods - 1, limits_seed=seed):
            made += 1
            yield entry
        # Each period exactly its share, closing expiries included: a history cut short would end in a past
        # month with its holds open, an expiry storm at the restart that no running ledger has (a run of
        # `bench restart` measured one: 907 holds of July expired in front of the probe).
        assert made == share, (k, made, share)


def synthetic_ledger(entries: int, tenants: int, seed: int, now_ms: int | None = None, tag: str = "",
                     setup: bool = True, close: bool = False, limits_seed: int | None = None) -> Iterator[LedgerEntry]:
    """A coherent mix: about 45 % placed, 42 % settled, 8 % denied, 2 % expired/voided, and the 50/80/100 %
    threshold crossings that settlements cause. Every settle/expire/void follows its own placement.
    `setup` opens with each tenant's limit; `close` expires the holds still open at the end (a period
    that ended); request ids carry `tag`, so several calls make one coherent history."""
    rng = random.Random(seed)
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    period, start, end = period_of(now)
    names = [f"lt{i:05d}" for i in range(tenants)]
    limit_rng = random.Random(seed if limits_seed is None else limits_seed)
    limits = {t: limit_rng.randrange(2_000_000, 8_000_000) for t in names}
    posted = dict.fromkeys(names, 0)
    holds: dict[str, deque[tuple[str, str, int]]] = {t: deque() for t in names}
    crossed: set[tuple[str, int]] = set()
    made = 0
    for t in names:
        yield PeriodOpened(f"period/{t}/{period}", t, period, now, start, end)
        made += 1
        if setup:
            yield BudgetLimitSet(f"cmd/{t}", t, period, now, TENANT, t, "SET", limits[t], 0, f"c-{t}")
            made += 1
    seq = 0
    held = 0  # holds open now: a closing period's expiries of them are entries too, counted in `entries`
    while made + (held if close else 0) < entries:
        t = names[rng.randrange(tenants)]
        roll, open_ = rng.random(), holds[t]
        now += 1
        if open_ and roll < 0.44:
            rid, wf, amount = open_.popleft()
            held -= 1
            actual = amount * rng.randint(20, 100) // 100
            yield _settled(t, period, now, rid, wf, amount, actual)
            made += 1
            before, posted[t] = posted[t], posted[t] + actual
            for pct in (50, 80, 100):
                mark = limits[t] * pct // 100
                if before < mark <= posted[t] and (t, pct) not in crossed:
                    crossed.add((t, pct))
                    yield ThresholdCrossed(f"threshold/{t}/{period}/TENANT/{t}/{pct}", t, period, now, TENANT, t, pct,
                                           posted[t], limits[t])
                    made += 1
        elif open_ and roll < 0.46:
            rid, wf, amount = open_.popleft()
            held -= 1
            cls = ReservationExpired if roll < 0.45 else ReservationVoided
            yield (ReservationExpired(f"{rid}/expiry", t, period, now, rid, wf, amount) if cls is ReservationExpired
                   else ReservationVoided(f"{rid}/void", t, period, now, rid, wf, amount, "cancelled"))
            made += 1
        else:
            seq += 1
            rid, wf = f"{tag}r{seq:08d}", WORKFLOWS[seq % 4]
            amount = rng.randrange(1_000, 40_000)
            # A placement the limit does not cover is denied, as the budget-manager would (the fold asserts
            # invariant 1 after every entry).
            # The last entry of a closing period is no hold: its expiry would be one entry too many.
            last = close and made + held + 2 > entries
            if last or roll > 0.92 or posted[t] + sum(h[2] for h in open_) + amount > limits[t]:
                yield _denied(t, period, now, rid, wf)
            else:
                open_.append((rid, wf, amount))
                held += 1
                yield _placed(t, period, now, rid, wf, amount)
            made += 1
    if close:  # a period that ended: what was still held expired in it
        for t in names:
            for rid, wf, amount in holds[t]:
                now += 1
                yield ReservationExpired(f"{rid}/expiry", t, period, now, rid, wf, amount)


def produce_ledger(connection: KafkaConnection, topic: str, entries: int, tenants: int,
                   seed: int = 11) -> dict[str, Any]:
    """Batch-produce the synthetic ledger (not transactional: it is input data, produced once)."""
    producer = Producer(producer_config(connection, **{"linger.ms": 50, "batch.size": 1_000_000,
                                                      "queue.buffering.max.messages": 500_000}))
    started, count, size = time.perf_counter(), 0, 0
    kinds: dict[str, int] = {}
    encode = codec().encode
    for entry in synthetic_ledger(entries, tenants, seed):
        name, record = to_record(entry)
        value = encode(name, record)
        kinds[name] = kinds.get(name, 0) + 1
        size += len(value)
        while True:
            try:
                producer.produce(topic, value=value, key=entry.tenant_id.encode())
                break
            except BufferError:
                producer.poll(0.05)
        count += 1
        if count % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120) != 0:
        raise StackError("the synthetic ledger was not fully delivered to Kafka within 120 s")
    return {"entries": count, "tenants": tenants, "mean_bytes": round(size / max(1, count)), "mix": kinds,
            "produce_s": round(time.perf_counter() - started, 1)}


# --- subprocess side ------------------------------------------------------------------------------------


def fold(spec: dict[str, Any]) -> dict[str, Any]:
    """The budget-manager's rebuild path, timed; then the same bytes split by stage."""
    from ledgergate.shared.kafka.reader import partition_of, read_to_end

    # A child process: the address from the spec, the security settings from the inherited environment.
    connection = KafkaConnection.from_env(bootstrap=spec["bootstrap"])
    topic, parts = spec["topic"], list(range(spec["partitions"]))
    decode = codec().decode
    tenants: dict[int, dict[str, TenantState]] = {p: {} for p in parts}
    sample: list[bytes] = []
    keep = spec.get("sample", 200_000)
    started, count = time.perf_counter(), 0
    for msg in read_to_end(connection, topic, parts):
        value = msg.value()
        name, rec = decode(value)
        entry = from_record(name, rec)
        states = tenants[partition_of(msg)]
        state = states.get(entry.tenant_id)
        if state is None:
            state = states[entry.tenant_id] = TenantState(entry.tenant_id)
        evolve(state, entry)
        count += 1
        if len(sample) < keep and value is not None:  # never None here: decode() refuses a tombstone
            sample.append(value)
    total_s = time.perf_counter() - started
    rss_mb = rss_bytes() / 2**20
    started = time.perf_counter()
    read_only = sum(1 for _ in read_to_end(connection, topic, parts))
    read_s = time.perf_counter() - started
    # Per-stage clocks on the kept sample, entry by entry as the rebuild does (no big intermediate
    # lists: they would add garbage-collector passes the real path does not pay).
    clock, spent = time.perf_counter_ns, [0, 0, 0]
    scratch: dict[str, TenantState] = {}
    for value in sample:
        t0 = clock()
        name, rec = decode(value)
        t1 = clock()
        entry = from_record(name, rec)
        t2 = clock()
        state = scratch.get(entry.tenant_id)
        if state is None:
            state = scratch[entry.tenant_id] = TenantState(entry.tenant_id)
        evolve(state, entry)
        t3 = clock()
        spent[0] += t1 - t0
        spent[1] += t2 - t1
        spent[2] += t3 - t2
    n = max(1, len(sample))
    return {"entries": count, "seconds": round(total_s, 2), "entries_per_s": round(count / total_s),
            "tenants": sum(len(s) for s in tenants.values()), "rss_after_mb": round(rss_mb),
            "read_only_entries_per_s": round(read_only / read_s),
            "us_per_entry": {"kafka_read": round(read_s * 1e6 / max(1, read_only), 2),
                             "avro_decode": round(spent[0] / 1000 / n, 2),
                             "from_record": round(spent[1] / 1000 / n, 2),
                             "evolve": round(spent[2] / 1000 / n, 2),
                             "all": round(total_s * 1e6 / max(1, count), 2)}}


def _fresh(text: str) -> str:
    """A new string object with this text, as fastavro gives every decoded field its own."""
    return text.encode().decode()


def _tenant_entries(i: int, period: str, now: int) -> list[LedgerEntry]:
    """One tenant as the budget-manager would hold it mid-month: a tenant limit, a settled call and a
    live hold on one workflow. Every field is its own string object, as after decoding."""
    t, wf, f = f"m{i:07d}", WORKFLOWS[i % 4], _fresh
    return [PeriodOpened(f(f"period/{t}/{period}"), f(t), f(period), now, now, now + 1),
            BudgetLimitSet(f(f"cmd/{t}"), f(t), f(period), now, TENANT, f(t), "SET", 5_000_000, 0, f(f"c-{t}")),
            _placed(f(t), f(period), now, f(f"r{i}a"), f(wf), 20_000),
            _settled(f(t), f(period), now, f(f"r{i}a"), f(wf), 20_000, 9_000),
            _placed(f(t), f(period), now, f(f"r{i}b"), f(wf), 15_000)]


def memory(spec: dict[str, Any]) -> dict[str, Any]:
    n, traced = spec["tenants"], spec.get("tracemalloc", False)
    now = time.time_ns() // 1_000_000
    period = period_of(now)[0]
    gc.collect()
    if traced:
        tracemalloc.start()
    base = rss_bytes()
    started = time.perf_counter()
    hot_max = spec.get("hot_max")
    states: dict[str, TenantState] = {}
    # The budget-manager's own layout when `hot_max` is given: a TenantStore (the least recently used
    # tenants packed) and the expiry heap's entry per live hold.
    store = TenantStore(hot_max) if hot_max else None
    heap: list[tuple[int, int, str, str]] = []
    for i in range(n):
        entries = _tenant_entries(i, period, now)
        tenant_id = entries[0].tenant_id
        if store is None:
            state = states[tenant_id] = TenantState(tenant_id)
        else:
            state = store.get_or_create(tenant_id)
        for entry in entries:
            evolve(state, entry)
            if store is not None and isinstance(entry, ReservationPlaced):
                heapq.heappush(heap, (entry.expires_at_ms, 0, tenant_id, entry.request_id))
    seconds = time.perf_counter() - started
    gc.collect()
    top: list[dict[str, Any]] = []
    if traced:
        used = tracemalloc.get_traced_memory()[0]
        # Where the bytes are: the allocating lines (state.py's containers, entries.py's records...).
        for stat in tracemalloc.take_snapshot().statistics("lineno")[:8]:
            frame = stat.traceback[0]
            top.append({"where": f"{Path(frame.filename).name}:{frame.lineno}",
                        "bytes_per_tenant": round(stat.size / n)})
        tracemalloc.stop()
    else:
        used = rss_bytes() - base
    per = used / n
    return {"tenants": n, "method": "tracemalloc" if traced else "rss_delta", "bytes_per_tenant": round(per),
            "projected_1m_tenants_mb": round(per * 1_000_000 / 2**20), "fold_s": round(seconds, 1),
            "tenant_holds": "limit, 2 balances (tenant + workflow), 1 settled call, 1 live hold",
            "layout": f"TenantStore, {hot_max:,} unpacked, the rest packed; expiry heap" if hot_max
            else "every tenant unpacked (TenantState)", "top_allocations": top}


def run_child(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "ledgergate.tools.bench.ledger", kind, json.dumps(spec)],
                         cwd=PROJECT_ROOT,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise LedgergateError(f"ledger {kind} process failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])  # the child's one JSON object
    return result


if __name__ == "__main__":
    job = {"fold": fold, "memory": memory}.get(sys.argv[1] if len(sys.argv) > 1 else "")
    if job is None or len(sys.argv) != 3:
        sys.exit("usage: python -m ledgergate.tools.bench.ledger fold|memory '<json spec>'")
    print(json.dumps(job(json.loads(sys.argv[2]))))
