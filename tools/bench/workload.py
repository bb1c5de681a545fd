"""The benchmark's traffic: the demo's fleet generator (ledgergate.tools.demo.build_workload) scaled to many
tenants, the request records it sends, and the budgets it runs against.

Every process that needs the traffic (the orchestrator, each load-generator step, the baselines)
rebuilds the same workload from the same arguments, so a request is named by its index alone.
"""

from __future__ import annotations

import functools
import random
import time
import uuid
from collections import Counter
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.commands import BudgetCommand
from ledgergate.connection import KafkaConnection
from ledgergate.kafka_config import consumer_config, producer_config
from ledgergate.shared import catalogue
from ledgergate.shared.errors import ServiceStartError, StackError
from ledgergate.tools.demo import CHAT_OVERHEAD_TOKENS, Workload, build_workload, demand

AGENTS_PER_TENANT = 3
BUDGET_SHARE = 3.0  # limit as a multiple of a tenant's expected demand: most requests are allowed
TIGHT_EVERY = 20  # every 20th tenant gets TIGHT_SHARE instead, so downgrade and denial paths run too
TIGHT_SHARE = 0.1  # runs out within the first part of a run: denials and downgrades appear early
MIN_LIMIT_MICRO_USD = 10_000  # a floor against a zero limit, low enough not to undo TIGHT_SHARE
# Names in request ids and labels: short, so they cost the pipeline what a real id would.
RID_PREFIX = "b"
# The hot-tenant shape (the hot-path issue): one tenant sends HOT_SHARE of the traffic, the rest is Zipf
# (exponent ZIPF_S) over the others. The hot tenant's budget is HOT_BUDGET_SHARE of its demand over the
# whole planned schedule (a max search stops early), so it runs out within the first steps and the
# overspend check has a binding limit to hold against concurrent requests.
HOT_SHARE = 0.5
ZIPF_S = 1.0
HOT_BUDGET_SHARE = 0.1
SHAPES = ("fleet", "hot")

__all__ = ["CHAT_OVERHEAD_TOKENS", "Workload"]


def tenant_names(count: int, tag: str) -> list[str]:
    return [f"t{i:05d}-{tag}" for i in range(count)]


@functools.cache
def workload(tenants: int, tag: str, requests: int, seed: int, shape: str = "fleet") -> Workload:
    """Cached: the orchestrator asks for it several times with the same arguments. `shape` "hot" keeps
    the fleet's agents and prompts and redraws who sends each request (hot_schedule)."""
    if shape not in SHAPES:
        raise ValueError(f"workload shape {shape!r} is not one of {SHAPES}")
    names = tenant_names(tenants, tag)
    work = build_workload(names, max(len(names), tenants * AGENTS_PER_TENANT), requests, seed)
    return work if shape == "fleet" else Workload(work.systems, work.users, work.agents, hot_schedule(work, seed))


def hot_schedule(work: Workload, seed: int) -> list[tuple[int, int, str, int]]:
    """The same requests, each sent by an agent of the hot tenant (the first) with probability HOT_SHARE,
    else by an agent of a tenant drawn Zipf over the others (rank r weighs 1 / r**ZIPF_S)."""
    rng = random.Random(f"hot-{seed}")
    by_tenant: dict[str, list[int]] = {}
    for a, agent in enumerate(work.agents):
        by_tenant.setdefault(agent.tenant, []).append(a)
    hot = hot_tenant(work)
    ranked = sorted(set(by_tenant) - {hot}) or [hot]
    weights = [1 / (rank + 1) ** ZIPF_S for rank in range(len(ranked))]
    senders = rng.choices(ranked, weights, k=len(work.schedule))
    schedule = []
    for (_a, user, prio, max_out), tenant in zip(work.schedule, senders, strict=True):
        tenant = hot if rng.random() < HOT_SHARE else tenant
        sender = rng.choice(by_tenant[tenant])
        lo, hi = work.agents[sender].sizes
        schedule.append((sender, min(hi, max(lo, user)), prio, max_out))
    return schedule


def hot_tenant(work: Workload) -> str:
    """The hot-tenant shape's hot tenant: the first by name."""
    return min(agent.tenant for agent in work.agents)


def request_id(tag: str, index: int) -> str:
    return f"{RID_PREFIX}{tag}-{index}"


def index_of(rid: str, tag: str) -> int | None:
    prefix = f"{RID_PREFIX}{tag}-"
    if not rid.startswith(prefix):
        return None
    try:
        return int(rid[len(prefix):])
    except ValueError:
        return None


def messages(work: Workload, index: int) -> list[dict[str, Any]]:
    a, user, _prio, _max_out = work.schedule[index]
    agent = work.agents[a]
    return [{"role": "system", "content": work.systems[agent.system][0], "name": None},
            {"role": "user", "content": work.users[user][0], "name": None}]


def request_record(work: Workload, index: int, tag: str, now_ms: int) -> dict[str, Any]:
    """The InvocationRequested record the SDK would publish for schedule entry `index`."""
    a, _user, prio, max_out = work.schedule[index]
    agent = work.agents[a]
    return {"request_id": request_id(tag, index), "tenant_id": agent.tenant, "workflow_id": agent.workflow,
            "agent_id": agent.agent_id, "requested_model": agent.model, "messages": messages(work, index),
            "tools_json": None, "max_output_tokens": max_out, "priority": prio, "region": None,
            "max_cost_micro_usd": None, "labels": {"bench": tag}, "requested_at_ms": now_ms, "trace_context": {}}


def prompt_tokens(work: Workload, index: int) -> int:
    a, user, _prio, _max_out = work.schedule[index]
    return work.prompt_tokens(work.agents[a], user)


def limits(work: Workload, hot: str | None = None) -> dict[str, int]:
    """Per-tenant limits: BUDGET_SHARE x expected demand, TIGHT_SHARE for every TIGHT_EVERY-th tenant,
    HOT_BUDGET_SHARE for the `hot` tenant."""
    per_tenant: Counter[str] = Counter()
    for (tenant, _wf), cost in demand(work).items():
        per_tenant[tenant] += cost
    tenants = sorted({agent.tenant for agent in work.agents})
    out = {}
    for i, tenant in enumerate(tenants):
        share = TIGHT_SHARE if i % TIGHT_EVERY == TIGHT_EVERY - 1 else BUDGET_SHARE
        share = HOT_BUDGET_SHARE if tenant == hot else share
        out[tenant] = max(MIN_LIMIT_MICRO_USD, int(per_tenant[tenant] * share))
    return out


def mix(work: Workload, start: int, count: int) -> dict[str, Any]:
    """What a slice of the schedule asks for: prompt sizes and models, for the report."""
    sizes = sorted(prompt_tokens(work, i) for i in range(start, start + count))
    models = Counter(work.agents[work.schedule[i][0]].model for i in range(start, start + count))
    prices = catalogue.prices()
    version = prices.at(time.time_ns() // 1_000_000).version
    tiers = Counter(prices.tier_of(m, version) for m in models.elements())
    return {"prompt_tokens": {"min": sizes[0], "p50": sizes[len(sizes) // 2], "mean": round(sum(sizes) / len(sizes)),
                              "max": sizes[-1]} if sizes else {},
            "models": dict(models), "tiers": dict(tiers)}


def seed_budgets(connection: KafkaConnection, prefix: str, tenant_limits: dict[str, int],
                 timeout_s: float = 60.0) -> float:
    """SET_LIMIT for every tenant in one batch, then wait until budget.ledger holds each; returns seconds."""
    started = time.monotonic()
    producer = Producer(producer_config(connection, **{"linger.ms": 20}))
    ids: set[str] = set()
    now_ms = time.time_ns() // 1_000_000
    for tenant, limit in tenant_limits.items():
        command = BudgetCommand(tenant, "SET_LIMIT", amount_micro_usd=limit, reason="bench", issued_by="bench",
                                issued_at_ms=now_ms)
        ids.add(command.command_id)
        producer.produce(prefix + topics.COMMANDS, value=command.encode(), key=tenant.encode())
        producer.poll(0)
    if producer.flush(timeout_s) != 0:
        raise StackError("budget commands were not delivered to Kafka")
    missing = wait_for_commands(connection, prefix + topics.LEDGER, ids, timeout_s)
    if missing:
        raise ServiceStartError(f"{len(missing)} of {len(ids)} budget commands never reached the ledger; "
                              "is the budget-manager running?")
    return time.monotonic() - started


def wait_for_commands(connection: KafkaConnection, ledger: str, ids: set[str], timeout_s: float) -> set[str]:
    """Read the ledger from the start until every command id has an entry; returns those that did not."""
    waiting = set(ids)
    consumer = Consumer(consumer_config(connection, f"bench-seed-{uuid.uuid4().hex}"))
    try:
        parts = consumer.list_topics(ledger, timeout=10).topics[ledger].partitions
        consumer.assign([TopicPartition(ledger, p, 0) for p in parts])
        deadline = time.monotonic() + timeout_s
        while waiting and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.2):
                if msg.error() is None:
                    name, rec = codec().decode(msg.value())
                    if name in ("BudgetLimitSet", "CreditGranted", "PolicyChanged"):  # entries of a command
                        waiting.discard(rec["command_id"])
        return waiting
    finally:
        consumer.close()
