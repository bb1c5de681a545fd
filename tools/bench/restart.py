"""Restart to first decision with a long ledger: the budget-manager and the policy service (the two that
fold budget.ledger) started on a ledger of `entries` entries spread over `periods` months while the
token-counter and the router run, restoring from budget.snapshots and folding the tail.

The ledger is produced once, folded as it goes (the same `evolve`), and snapshotted `tail` entries before
its end with the snapshotter's own record writer (shared/snapshots.py: the bytes the snapshotter would
write for that fold); the last `tail` entries come after, so a restore folds a tail as it would after a
crash between two snapshots. Then the two start, a request is sent at once, and the clock stops when
its decision arrives; the same run on an empty ledger is the floor beside it. The services' logs give
the restore's parts (snapshot read, tail fold).
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from ledgergate import topics
from ledgergate.client import GateClient
from ledgergate.codec import codec
from ledgergate.connection import KafkaConnection
from ledgergate.kafka_config import consumer_config, producer_config
from ledgergate.partitioning import murmur2_partition
from ledgergate.shared.errors import StackError
from ledgergate.shared.kafka import provision
from ledgergate.shared.kafka.headers import headers_of, stage_times_us
from ledgergate.shared.ledger.entries import to_record
from ledgergate.shared.ledger.state import TenantState, evolve
from ledgergate.shared.settings import PROJECT_ROOT, KafkaSettings
from ledgergate.shared.snapshots import snapshot_records
from ledgergate.tools.bench import floors, procstats
from ledgergate.tools.bench.gate import say
from ledgergate.tools.bench.ledger import history_ledger
from ledgergate.tools.servicerunner import ServiceSet

PROBE = [{"role": "user", "content": "ping"}]
STATEFUL = ("budget-manager", "policy")


def _produce(producer: Producer, topic: str, key: bytes, value: bytes, partition: int, headers: Any = None) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key, partition=partition, headers=headers)
            return
        except BufferError:
            producer.poll(0.05)


def build(connection: KafkaConnection, prefix: str, partitions: int, entries: int, tenants: int, periods: int,
          tail: int) -> dict[str, Any]:
    """The ledger and, `tail` entries before its end, every tenant's snapshot and each partition's marker."""
    ledger, snapshots = prefix + topics.LEDGER, prefix + topics.SNAPSHOTS
    producer = Producer(producer_config(connection, **{"linger.ms": 50, "batch.size": 1_000_000,
                                                     "queue.buffering.max.messages": 500_000}))
    states: list[dict[str, TenantState]] = [{} for _ in range(partitions)]
    counts = [0] * partitions
    of_tenant: dict[str, int] = {}
    cut = max(0, entries - tail)
    started, made, snapshot_bytes = time.perf_counter(), 0, 0
    encode = codec().encode
    # A prefix of the history, exactly `entries` long (a prefix of a coherent ledger is one).
    for entry in itertools.islice(history_ledger(entries, tenants, 11, periods), entries):
        if made == cut:
            now_ms = time.time_ns() // 1_000_000
            for p in range(partitions):
                pairs = ((s, counts[p]) for s in states[p].values())
                for key, value, headers, part in snapshot_records(p, pairs, counts[p], 0, len(states[p]), "bench",
                                                                  now_ms):
                    snapshot_bytes += len(value)
                    _produce(producer, snapshots, key, value, part, headers)
        found = of_tenant.get(entry.tenant_id)
        p = found if found is not None else of_tenant.setdefault(
            entry.tenant_id, murmur2_partition(entry.tenant_id.encode(), partitions))
        if made < cut:
            state = states[p].get(entry.tenant_id)
            if state is None:
                state = states[p][entry.tenant_id] = TenantState(entry.tenant_id)
            evolve(state, entry)
        _produce(producer, ledger, entry.tenant_id.encode(), encode(*to_record(entry)), p)
        counts[p] += 1
        made += 1
        if made % 20_000 == 0:
            producer.poll(0)
        if made % 1_000_000 == 0:
            say(f"restart: {made:,} ledger entries produced ({time.perf_counter() - started:.0f} s)")
    if producer.flush(300) != 0:
        raise StackError("the restart bench's ledger was not fully delivered within 300 s")
    _caught_up(connection, prefix, ledger, counts)
    return {"ledger_entries": made, "tail_entries": made - cut, "tenants": tenants, "periods": periods,
            "snapshot_mb": round(snapshot_bytes / 2**20, 1), "build_s": round(time.perf_counter() - started, 1)}


def _caught_up(connection: KafkaConnection, prefix: str, ledger: str, ends: list[int]) -> None:
    """The router's group at the ledger's end, as in an install whose router kept up: the bench restarts
    a gate that was running, not one meeting a ledger for the first time."""
    consumer = Consumer(consumer_config(connection, f"{prefix}ledgergate-router"))
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                consumer.commit(offsets=[TopicPartition(ledger, p, end) for p, end in enumerate(ends)],
                                asynchronous=False)
                return
            except KafkaException as exc:
                # A topic created a moment ago may be unknown to the group coordinator for a while (seen
                # on a loaded machine): retried, within a bound.
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        consumer.close()


def _events(log: Path, event: str) -> list[dict[str, Any]]:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return [json.loads(line) for line in lines if f'"{event}"' in line]


def _wait_logged(services: ServiceSet, name: str, event: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not _events(services.log_path(name), event):
        if time.monotonic() > deadline or not services.alive(name):
            raise StackError(f"{name} did not log {event} within {timeout_s:.0f} s: {services.tail(name)}")
        time.sleep(0.1)


def restart(connection: KafkaConnection, prefix: str, log_dir: Path, timeout_s: float = 300.0) -> dict[str, Any]:
    """The two services that fold the ledger (budget-manager, policy) started while the token-counter and
    the router run, as after a crash or a deploy of them; a request sent at once; its decision timed."""
    services = ServiceSet({**connection.env_vars(), "LEDGERGATE_TOPIC_PREFIX": prefix}, log_dir)
    client = GateClient(topic_prefix=prefix, timeout_s=timeout_s, connection=connection)
    try:
        services.start(["token-counter", "router"])
        _wait_logged(services, "token-counter", "partitions_assigned", timeout_s)
        _wait_logged(services, "router", "router_resumed", timeout_s)
        started, started_us = time.monotonic(), time.time_ns() // 1000
        services.start(list(STATEFUL))
        decision = client.request("lt00001", PROBE, "gpt-4o-mini", 8, timeout_s=timeout_s)
        first_s = time.monotonic() - started
        done_us = time.time_ns() // 1000
        rss = {name: round(procstats.rss_bytes(services.pid(name)) / 2**20) for name in STATEFUL}
        restored = {name: (_events(services.log_path(name), "state_restored") or [{}])[-1] for name in STATEFUL}
        return {"first_decision_s": round(first_s, 2), "outcome": decision["outcome"], "rss_mb": rss,
                "timeline_s": _timeline(connection, prefix, services, started_us, done_us),
                "restored": {name: {k: r.get(k) for k in ("seconds", "snapshot_read_s", "snapshot_tenants",
                                                          "tail_entries", "tail_skipped")}
                             for name, r in restored.items()}}
    finally:
        client.close()
        services.stop_all()


def _timeline(connection: KafkaConnection, prefix: str, services: ServiceSet, started_us: int,
              done_us: int) -> dict[str, float]:
    """Where the first decision's time went, in seconds from the start of the two services: each
    process's own log events (started, partitions assigned, state restored) and the probe's hop stamps
    (the lg-t-* headers on its decision), so a slow restart names its slow part."""
    marks: dict[str, float] = {}
    for name in STATEFUL:
        for event in ("stream_starting", "partitions_assigned", "state_restored"):
            found = _events(services.log_path(name), event)
            if found:
                at = datetime.fromisoformat(found[-1]["timestamp"].replace("Z", "+00:00")).timestamp()
                marks[f"{name}.{event}"] = round(at - started_us / 1e6, 3)
    consumer = Consumer(consumer_config(connection, f"{prefix}restart-timeline", **{"enable.auto.commit": False}))
    try:
        decisions = prefix + topics.DECISIONS
        parts = consumer.list_topics(decisions, timeout=10).topics[decisions].partitions
        consumer.assign([TopicPartition(decisions, p, 0) for p in parts])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                for stage, at_us in stage_times_us(headers_of(msg)).items():
                    marks[f"hop.{stage}"] = round((at_us - started_us) / 1e6, 3)
                break
    finally:
        consumer.close()
    marks["decision_received"] = round((done_us - started_us) / 1e6, 3)
    return dict(sorted(marks.items(), key=lambda kv: kv[1]))


def run_restart(kafka: KafkaSettings, entries: int, tenants: int, periods: int, tail: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    prefix = f"bench{tag}.restart."
    specs = provision.load_specs(partitions=kafka.kafka_partitions, prefix=prefix)
    connection = kafka.kafka_connection
    provision.apply(connection, specs)
    try:
        say(f"restart: producing a {entries:,}-entry ledger over {periods} months for {tenants:,} tenants, "
            f"snapshotted {tail:,} entries before its end")
        built = build(connection, prefix, specs[0].partitions, entries, tenants, periods, tail)
        say(f"restart: built in {built['build_s']} s; starting budget-manager and policy beside a running "
            "token-counter and router")
        return {**built, **restart(connection, prefix, PROJECT_ROOT / ".data" / "bench" / tag)}
    finally:
        floors.delete_topics(connection, [s.name for s in specs])
