"""`make demo`: the four services as processes, a simulated agent fleet through them, a summary table.

Tenants get a per-run suffix (acme-<tag>) so every run starts from empty budgets on the shared,
never-expiring ledger. Budgets are set as shares of each tenant's expected demand over the run, so
`acme` crosses 80 % and then runs out (downgrades, then denials) whatever the rate and duration.
Prompts are generated filler text from a fixed word list; they are never logged or printed.

The anomaly detector (`ledgergate run anomaly`) runs beside them with 2 s windows: in the last part of the
run most requests go to one tenant (the last, `hooli`), a spike in its spend and token rates, and the
summary lists the ANOMALY alerts it raised on budget.alerts (one per series: the tenant and its workflows,
spend and tokens). The other tenants should get none; on an overloaded machine, where decisions come back
in bursts, some may: a burst of completions is a burst of spend.
"""

from __future__ import annotations

import contextlib
import json
import math
import queue
import random
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import Consumer, TopicPartition

from ledgergate import topics
from ledgergate.client import DecisionFuture, GateClient, GateClientError
from ledgergate.codec import codec
from ledgergate.errors import CodecError, GateTimeoutError
from ledgergate.kafka_config import consumer_config
from ledgergate.shared import catalogue, tokenizers
from ledgergate.shared.kafka.reader import read_to_end
from ledgergate.shared.kafka.seek import partition_count
from ledgergate.shared.settings import KafkaSettings, StackSettings
from ledgergate.tools import demo_console, demo_integrations
from ledgergate.tools.provider_standin import WORDS, standin_call
from ledgergate.tools.servicerunner import GATE_SERVICES, ServiceSet, ServiceStartError

TENANTS = ("acme", "globex", "initech", "umbrella", "hooli")
TRAFFIC = (0.30, 0.25, 0.20, 0.15, 0.10)  # share of agents per tenant, in TENANTS order
BUDGET_SHARE = (0.25, 1.5, 2.0, 0.8, 5.0)  # limit as a share of the tenant's expected reserved demand
MODELS = {"gpt-4o": 0.2, "gpt-4.1": 0.15, "claude-sonnet": 0.15, "gpt-4o-mini": 0.2, "gpt-4.1-mini": 0.15,
          "gpt-4.1-nano": 0.15}
WORKFLOWS = ("research", "support", "codegen", "triage")
MAX_OUTPUT = (256, 512, 1024, 2048)
PRIORITIES = {"LOW": 0.15, "NORMAL": 0.75, "HIGH": 0.10}
CHAT_OVERHEAD_TOKENS = 3 + 2 * 4  # reply priming + two messages with their role token
READY_TIMEOUT_S = 90.0
# The spike: between these fractions of the schedule, this share of requests goes to the last tenant's agents
# (about 6x its usual rate). Late enough for the detector's warm-up (10 windows of 2 s by the default policy).
SPIKE_SPAN = (0.72, 0.9)
SPIKE_SHARE = 0.6
ANOMALY_ENV = {"LEDGERGATE_ANOMALY_WINDOW_S": "2", "LEDGERGATE_ANOMALY_LATE_S": "1",
               "LEDGERGATE_ANOMALY_SWEEP_S": "0.5"}
ANOMALY_WAIT_S = 12.0  # after the fleet: the spike's last windows close (window + late + sweep)
ALLOWED = ("ALLOW", "DOWNGRADE")
K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class Agent:
    agent_id: str
    tenant: str
    workflow: str
    model: str
    system: int  # index into the system prompt pool
    sizes: tuple[int, int]  # band of the user message pool it draws from


@dataclass(frozen=True, slots=True)
class Workload:
    systems: list[tuple[str, int]]  # (text, tokens)
    users: list[tuple[str, int]]  # ascending size
    agents: list[Agent]
    schedule: list[tuple[int, int, str, int]]  # (agent, user message, priority, max output tokens)

    def prompt_tokens(self, agent: Agent, user: int) -> int:
        return self.systems[agent.system][1] + self.users[user][1] + CHAT_OVERHEAD_TOKENS


def _pick(rng: random.Random, weighted: Mapping[K, float]) -> K:
    return rng.choices(list(weighted), weights=list(weighted.values()))[0]


def _text(rng: random.Random, words: int) -> tuple[str, int]:
    out: list[str] = []
    while len(out) < words:
        sentence = [rng.choice(WORDS) for _ in range(rng.randint(6, 16))]
        out.append(sentence[0].capitalize())
        out.extend(sentence[1:-1])
        out.append(sentence[-1] + ".")
    text = " ".join(out)
    return text, tokenizers.count_text(text, "o200k_base")


def build_workload(tenants: list[str], agents: int, requests: int, seed: int) -> Workload:
    rng = random.Random(seed)
    systems = [_text(rng, int(30 * 50 ** (i / 15))) for i in range(16)]  # ~30 .. ~1,500 tokens
    users = sorted((_text(rng, int(20 * 290 ** (i / 47))) for i in range(48)), key=lambda t: t[1])  # ~20 .. ~6,500
    shares = [TRAFFIC[i] if i < len(TRAFFIC) else 0.1 for i in range(len(tenants))]
    bands = {(0, 20): 0.5, (15, 40): 0.35, (30, 47): 0.15}  # chat, retrieval, long documents
    fleet = []
    for n in range(agents):
        tenant = tenants[n % len(tenants)] if n < len(tenants) else rng.choices(tenants, shares)[0]
        fleet.append(Agent(f"agent-{n:04d}", tenant, rng.choice(WORKFLOWS), _pick(rng, MODELS),
                           rng.randrange(len(systems)), _pick(rng, bands)))
    schedule = []
    for _ in range(requests):
        a = rng.randrange(len(fleet))
        lo, hi = fleet[a].sizes
        schedule.append((a, rng.randint(lo, hi), _pick(rng, PRIORITIES), rng.choice(MAX_OUTPUT)))
    _spike(schedule, [i for i, agent in enumerate(fleet) if agent.tenant == tenants[-1]], random.Random(seed + 2))
    return Workload(systems, users, fleet, schedule)


def _spike(schedule: list[tuple[int, int, str, int]], agents: list[int], rng: random.Random) -> None:
    """Hand SPIKE_SHARE of the requests in SPIKE_SPAN to the spiking tenant's agents (same sizes and options)."""
    first, last = (int(f * len(schedule)) for f in SPIKE_SPAN)
    for i in range(first, last):
        if agents and rng.random() < SPIKE_SHARE:
            _, user, prio, max_out = schedule[i]
            schedule[i] = (rng.choice(agents), user, prio, max_out)


def demand(work: Workload) -> dict[tuple[str, str], int]:
    """Expected reserved micro-USD per (tenant, workflow) if every request were granted as asked."""
    prices = catalogue.prices()
    version = prices.at(time.time_ns() // 1_000_000).version
    out: dict[tuple[str, str], int] = defaultdict(int)
    for a, user, _prio, max_out in work.schedule:
        agent = work.agents[a]
        cost = prices.cost_micro_usd(version, agent.model, work.prompt_tokens(agent, user), 0, max_out,
                                     reasoning_tokens=0)
        out[(agent.tenant, agent.workflow)] += cost
    return out


def _policies(tenants: list[str], rate_per_s: float) -> dict[str, dict[str, Any]]:
    policies: dict[str, dict[str, Any]] = {tenants[0]: {
        "downgrades": {"gpt-4o": ["gpt-4o-mini", "gpt-4.1-nano"], "gpt-4.1": ["gpt-4.1-mini", "gpt-4.1-nano"],
                       "claude-sonnet": ["gpt-4.1-mini", "gpt-4o-mini"], "gpt-4o-mini": ["gpt-4.1-nano"],
                       "gpt-4.1-mini": ["gpt-4.1-nano"]},
        "tier_rules": [{"priority": "LOW", "burn_pct_at_least": 50, "max_tier": "economy"},
                       {"priority": "NORMAL", "burn_pct_at_least": 80, "max_tier": "standard"},
                       {"priority": "HIGH", "burn_pct_at_least": 95, "max_tier": "standard"}],
        # acme caches answers: its agents that ask what another of its agents asked are answered CACHE_HIT.
        "cache": {"enabled": True, "ttl_s": 3600}}}
    if len(tenants) > 1:
        # globex: no claude-sonnet (its downgrades apply), and a rate limit just under its offered rate.
        rate = max(1, int(rate_per_s * TRAFFIC[1] * 0.85))
        models = catalogue.prices().at(time.time_ns() // 1_000_000).models
        policies[tenants[1]] = {"allowed_models": sorted(m for m in models if m != "claude-sonnet"),
                                "rate_limit_per_s": rate, "rate_burst": rate}
    if len(tenants) > 2:
        # initech: input tokens per minute at about 35 % of what its agents would send in a minute (about
        # 1,200 a request): the demo's 30 s fill the one-minute window past it halfway through, so the rest of
        # initech's traffic is THROTTLE rate_limited with the window named (services/policy/tokenrate.py).
        tokens_per_min = max(1000, int(rate_per_s * TRAFFIC[2] * 60 * 1200 * 0.35))
        policies[tenants[2]] = {"token_rate_limits": [{"per": "tenant", "count": "input",
                                                       "tokens_per_min": tokens_per_min}]}
    if len(tenants) > 3:
        # umbrella keeps its data in eu-west: served there, and a model no eu-west deployment serves (nor its
        # downgrades: gpt-4.1, claude-sonnet) is DENY data_locality.
        policies[tenants[3]] = {"allowed_regions": ["eu-west"]}
    return policies


def _send_confirmed(settings: KafkaSettings, send: Callable[[], set[str]], timeout_s: float = 30.0) -> set[str]:
    """Run `send` (it returns command ids), then wait until budget.ledger shows an entry for each;
    returns the ids not seen in time. The ledger is read from its end as it was before sending."""
    topic = settings.topic(topics.LEDGER)
    consumer = Consumer(consumer_config(settings.kafka_connection, f"demo-{uuid.uuid4().hex}"))
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                                                 timeout=10)[1]) for p in parts])
        waiting = send()
        deadline = time.monotonic() + timeout_s
        while waiting and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.1):
                with contextlib.suppress(CodecError):
                    waiting.discard(codec().decode(msg.value())[1].get("command_id", "") if not msg.error() else "")
        return waiting
    finally:
        consumer.close()


def _wait_ready(client: GateClient, services: ServiceSet | None, run: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    for attempt in range(10_000):
        if services is not None and services.dead():
            dead = services.dead()
            raise ServiceStartError(f"{', '.join(dead)} exited while starting; logs: {services.describe_logs()}"
                                    + "".join(f"\n--- {n}:\n{services.tail(n, 8)}" for n in dead))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            decision = client.request("demo-probe", [{"role": "user", "content": "Ready?"}], "gpt-4o-mini", 16,
                                      request_id=f"probe-{run}-{attempt}", timeout_s=min(5.0, remaining))
        except GateTimeoutError:
            continue
        if decision["outcome"] in ALLOWED:
            client.complete("demo-probe", decision["request_id"], "gpt-4o-mini",
                            {"input_tokens": 8, "output_tokens": 2})
        return
    logs = services.describe_logs() if services is not None else "(services not started by the demo)"
    raise ServiceStartError(f"no decision for a probe request within {READY_TIMEOUT_S:.0f} s; logs: {logs}")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000


def run_demo(settings: KafkaSettings, agents: int = 300, tenants: int = 5, duration_s: float = 30,
             rate_per_s: float = 150, *, seed: int = 42, start_services: bool = True,
             timeout_s: float = 10.0, settle_s: float = 2.0, keep_up: bool = False) -> dict[str, Any]:
    run = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
    tag = run[-4:]
    names = [f"{TENANTS[i] if i < len(TENANTS) else f'tenant{i + 1}'}-{tag}" for i in range(max(1, tenants))]
    services = None
    if start_services:
        services = ServiceSet({**settings.kafka_connection.env_vars(),
                               "LEDGERGATE_TOPIC_PREFIX": settings.topic_prefix}, StackSettings().data_dir / "demo",
                              supervise=True, env_for=demo_console.env_for({"anomaly": ANOMALY_ENV}))
        services.start(demo_console.CONSOLE_SERVICES)
    try:
        with GateClient(topic_prefix=settings.topic_prefix, timeout_s=timeout_s,
                        connection=settings.kafka_connection) as client:
            work = build_workload(names, max(agents, len(names)), int(rate_per_s * duration_s), seed)
            _log(f"run {run}: waiting for {', '.join(GATE_SERVICES)} to answer a probe request")
            _wait_ready(client, services, run)
            budgets = _seed(client, settings, work, names, rate_per_s)
            summary = _fleet(client, work, budgets, run, rate_per_s, seed, settle_s)
            summary["anomalies"] = _anomalies(settings, names, ANOMALY_WAIT_S if services is not None else 0.0)
            print(format_summary(summary))
            if services is not None:
                # The tenant with the most budget left, so its calls are granted (one with none is shown too).
                richest = max(summary["tenants"], key=lambda n: summary["tenants"][n]["remaining_usd"] or 0.0)
                summary["integrations"] = demo_integrations.run(client, services, richest, run)
                print(demo_integrations.format_rows(summary["integrations"]), flush=True)
            if services is not None:
                demo_console.wait_api()
                summary["console"] = demo_console.where(demo_console.admin_key(run))
                print(demo_console.format_where(summary["console"]), flush=True)
                if keep_up:
                    demo_console.hold()
            return summary
    finally:
        if services is not None:
            services.close()


def _seed(client: GateClient, settings: KafkaSettings, work: Workload, names: list[str],
          rate_per_s: float) -> dict[str, Any]:
    need = demand(work)
    per_tenant: Counter[str] = Counter()
    for (tenant, _wf), cost in need.items():
        per_tenant[tenant] += cost
    budgets: dict[str, Any] = {"tenants": {}, "workflows": {}}

    def send() -> set[str]:
        sent = set()
        for i, tenant in enumerate(names):
            share = BUDGET_SHARE[i] if i < len(BUDGET_SHARE) else 3.0
            limit = budgets["tenants"][tenant] = max(100_000, -(-int(per_tenant[tenant] * share) // 10_000) * 10_000)
            sent.add(client.send_command(tenant, "SET_LIMIT", limit, reason="demo", issued_by="demo"))
        if len(names) > 2:  # a workflow budget that binds before its tenant's: initech's research
            limit = budgets["workflows"][f"{names[2]}/research"] = max(10_000, need[(names[2], "research")] * 15 // 100)
            sent.add(client.send_command(names[2], "SET_LIMIT", limit, scope_type="WORKFLOW", scope_id="research",
                                         reason="demo", issued_by="demo"))
        for tenant, policy in _policies(names, rate_per_s).items():
            sent.add(client.send_command(tenant, "SET_POLICY", policy_json=json.dumps(policy), reason="demo",
                                         issued_by="demo"))
        return sent

    missing = _send_confirmed(settings, send)
    if missing:
        _log(f"warning: {len(missing)} budget commands not in budget.ledger after 30 s; starting anyway")
    return budgets


@dataclass
class _Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    by_tenant: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    reserved: Counter[str] = field(default_factory=Counter)
    remaining: dict[str, int] = field(default_factory=dict)
    denials: Counter[str] = field(default_factory=Counter)
    completions: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    saved: Counter[str] = field(default_factory=Counter)  # what each tenant's cache hits avoided, micro-USD

    def progress(self, elapsed: float, sent: int) -> str:
        o = self.outcomes
        return (f"[{elapsed:5.1f}s] sent {sent} decided {o.total()} ALLOW {o['ALLOW']} DOWNGRADE {o['DOWNGRADE']} "
                f"DENY {o['DENY']} THROTTLE {o['THROTTLE']} CACHE_HIT {o['CACHE_HIT']} "
                f"timeouts {self.failures['timeouts']} "
                f"p50 {_pct(self.latencies, 0.5):.1f} ms p99 {_pct(self.latencies, 0.99):.1f} ms")


def _fleet(client: GateClient, work: Workload, budgets: dict[str, Any], run: str, rate_per_s: float,
           seed: int, settle_s: float) -> dict[str, Any]:
    rng = random.Random(seed + 1)
    done: queue.SimpleQueue[tuple[int, DecisionFuture]] = queue.SimpleQueue()
    tally = _Tally()

    def handle(index: int, fut: DecisionFuture) -> None:
        agent, user = work.agents[work.schedule[index][0]], work.schedule[index][1]
        if (exc := fut.exception()) is not None:
            tally.failures["timeouts" if isinstance(exc, GateTimeoutError) else "errors"] += 1
            return
        d = fut.result()
        tally.outcomes[d["outcome"]] += 1
        tally.by_tenant[agent.tenant][d["outcome"]] += 1
        tally.remaining[agent.tenant] = d["remaining_micro_usd"]
        tally.latencies.append(fut.latency_s or 0.0)
        if d["outcome"] == "DENY":
            tally.denials[d["binding_scope"] or "(none)"] += 1
        if d["outcome"] == "CACHE_HIT":  # the answer came with the decision: no call, nothing to settle
            tally.saved[agent.tenant] += d["avoided_micro_usd"]
        if d["outcome"] in ALLOWED:  # the agent makes the call it was granted, and reports how it went
            tally.reserved[agent.tenant] += d["reserved_micro_usd"]
            model = d["deployment"]["model"] if d["deployment"] else d["requested_model"]
            result = standin_call(model, work.prompt_tokens(agent, user), d["granted_output_tokens"], rng,
                                  cacheable_prefix_tokens=work.systems[agent.system][1])
            tally.completions[result.status] += 1
            text = result.completion_text  # a cut-short call's text, for counting
            if d["cache_store"] and result.status == "OK":  # the tenant's cache stores the answer: send it
                text = text or f"(the stand-in's answer to {agent.agent_id}, {agent.model})"
            client.complete(agent.tenant, d["request_id"], model, result.usage, text, result.status)

    total, sent, handled = len(work.schedule), 0, 0
    start = time.perf_counter()
    next_progress, give_up = start + 1.0, math.inf
    while handled < total:
        now = time.perf_counter()
        while sent < total and start + sent / rate_per_s <= now:  # open loop: send what is due, never wait
            a, user, prio, max_out = work.schedule[sent]
            agent = work.agents[a]
            messages = [{"role": "system", "content": work.systems[agent.system][0]},
                        {"role": "user", "content": work.users[user][0]}]
            try:
                fut = client.submit(agent.tenant, messages, agent.model, max_out, request_id=f"demo-{run}-{sent}",
                                    workflow_id=agent.workflow, agent_id=agent.agent_id, priority=prio,
                                    labels={"demo": run}, sampling={"temperature": 0})
                fut.add_done_callback(lambda f, i=sent: done.put((i, f)))  # type: ignore[misc]
            except GateClientError as exc:  # e.g. too many outstanding: counted, never hidden
                tally.failures["errors"] += 1
                handled += 1
                _log(f"request {sent} not sent: {exc.message}")
            sent += 1
        while not done.empty():
            handle(*done.get_nowait())
            handled += 1
        if now >= next_progress:
            next_progress += 1.0
            _log(tally.progress(now - start, sent))
        if sent == total:
            give_up = min(give_up, now + client.timeout_s + 10.0)
            if now > give_up:  # every future has its own deadline; this only guards a stuck client
                tally.failures["timeouts"] += total - handled
                break
        wake = start + sent / rate_per_s if sent < total else now + 0.01
        time.sleep(max(0.0, min(wake, next_progress) - time.perf_counter()))
    elapsed = time.perf_counter() - start
    client.flush(30.0)
    time.sleep(settle_s)  # let the budget-manager settle the last completions before the services stop
    return _summary(tally, budgets, run, elapsed, rate_per_s, sent)


def _anomalies(settings: KafkaSettings, names: list[str], wait_s: float) -> list[dict[str, Any]]:
    """The run's ANOMALY alerts on budget.alerts, waiting up to wait_s for the spiking tenant's own (scope
    TENANT), then a moment for its workflows' windows, which close in the same sweep or the next."""
    topic = settings.topic(topics.ALERTS)
    parts = list(range(partition_count(settings.kafka_connection, topic)))

    def read() -> list[dict[str, Any]]:
        return [rec for msg in read_to_end(settings.kafka_connection, topic, parts)
                for name, rec in [codec().decode(msg.value())]
                if name == "BudgetAlert" and rec.get("kind") == "ANOMALY" and rec["tenant_id"] in names]

    deadline = time.monotonic() + wait_s
    found = read()
    while time.monotonic() < deadline and not any(
            a["tenant_id"] == names[-1] and a["scope_type"] == "TENANT" for a in found):
        time.sleep(1.0)
        found = read()
    if wait_s:
        time.sleep(2.0)
        found = read()
    return sorted(found, key=lambda a: (a["tenant_id"] != names[-1], a["tenant_id"], a["scope_type"] != "TENANT",
                                        a["scope_id"], a["metric"]))


def _summary(t: _Tally, budgets: dict[str, Any], run: str, elapsed: float, rate: float, sent: int) -> dict[str, Any]:
    usd = 1_000_000
    return {
        "run": run, "elapsed_s": round(elapsed, 2), "offered_rate_per_s": rate, "requests": sent,
        "decisions": t.outcomes.total(), "timeouts": t.failures["timeouts"], "errors": t.failures["errors"],
        "outcomes": dict(t.outcomes), "downgrades": t.outcomes["DOWNGRADE"], "denials_by_scope": dict(t.denials),
        "latency_ms": {"p50": round(_pct(t.latencies, 0.5), 2), "p99": round(_pct(t.latencies, 0.99), 2),
                       "max": round(max(t.latencies, default=0.0) * 1000, 2)},
        "completions": dict(t.completions),
        "workflow_budgets_usd": {k: v / usd for k, v in budgets["workflows"].items()},
        "tenants": {name: {"budget_usd": limit / usd, "reserved_usd": t.reserved[name] / usd,
                           "remaining_usd": t.remaining[name] / usd if name in t.remaining else None,
                           "requests": t.by_tenant[name].total(), "outcomes": dict(t.by_tenant[name]),
                           "saved_usd": t.saved[name] / usd}
                    for name, limit in budgets["tenants"].items()},
    }


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"ledgergate demo {s['run']}: {s['requests']} requests in {s['elapsed_s']:.1f} s "
             f"({s['offered_rate_per_s']:g}/s offered), {s['decisions']} decided, {s['timeouts']} timeouts, "
             f"{s['errors']} errors", "", f"{'outcome':<12}{'count':>8}"]
    lines += [f"{k:<12}{v:>8}" for k, v in sorted(s["outcomes"].items(), key=lambda kv: -kv[1])]
    lines += ["", f"{'tenant':<18}{'budget $':>11}{'reserved $':>12}{'remaining $':>13}{'burn %':>8}{'requests':>10}"
                  f"{'allow':>7}{'downgr':>8}{'deny':>6}{'thrott':>8}{'cached':>8}{'saved $':>10}"]
    for tenant, t in s["tenants"].items():
        o = t["outcomes"]
        left = "-" if t["remaining_usd"] is None else f"{t['remaining_usd']:.4f}"
        # Burn as the last decision saw it (posted + pending); cumulative reservations can pass 100 %
        # because settlements release what a call did not use.
        burn = "-" if t["remaining_usd"] is None or not t["budget_usd"] else \
            f"{100 * (t['budget_usd'] - t['remaining_usd']) / t['budget_usd']:.1f}"
        lines.append(f"{tenant:<18}{t['budget_usd']:>11.4f}{t['reserved_usd']:>12.4f}{left:>13}{burn:>8}"
                     f"{t['requests']:>10}{o.get('ALLOW', 0):>7}{o.get('DOWNGRADE', 0):>8}{o.get('DENY', 0):>6}"
                     f"{o.get('THROTTLE', 0):>8}{o.get('CACHE_HIT', 0):>8}{t.get('saved_usd', 0.0):>10.4f}")
    lines += [f"workflow budget {k}: ${v:.4f}" for k, v in s["workflow_budgets_usd"].items()]
    scopes = ", ".join(f"{k} {v}" for k, v in sorted(s["denials_by_scope"].items())) or "none"
    ends = ", ".join(f"{k} {v}" for k, v in sorted(s["completions"].items())) or "none"
    lat = s["latency_ms"]
    lines += ["", f"downgrades: {s['downgrades']}", f"denials by binding scope: {scopes}",
              f"request->decision latency: p50 {lat['p50']:.1f} ms  p99 {lat['p99']:.1f} ms  max {lat['max']:.1f} ms",
              f"completions reported (provider stand-in): {ends}"]
    anomalies = s.get("anomalies", [])
    lines += ["", f"anomaly alerts (budget.alerts, kind ANOMALY): {len(anomalies) or 'none'}"]
    for a in anomalies:
        def rate(v: int, spend: bool = a["metric"].startswith("spend")) -> str:
            return f"${v / 1_000_000:.4f}/min" if spend else f"{v:,} tokens/min"
        lines.append(f"  {a['tenant_id']:<16} {a['scope_type']:<9}{a['scope_id']:<18}"
                     f"observed {rate(a['observed_per_min']):>20}  expected {rate(a['expected_per_min']):>20}")
    return "\n".join(lines)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
