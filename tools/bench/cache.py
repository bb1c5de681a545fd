"""The response cache under a workload with repeated prompts (`ledgergate bench cache`; issue 14).

The gate's four services on fresh topics and two tenants: `on`, whose policy caches (temperature 0 requests),
and `off`, with the default policy (no cache). Closed loop, one call at a time, the two tenants taking turns in
blocks (so drift on a shared machine falls on both alike). A share of each tenant's prompts (`repeat_share`,
20 %) repeats one of its recent answered prompts; the rest are new. Every ALLOW is completed at once (with the
answer's text when the decision asks for it), so a repeat finds its entry unless the entry is not yet stored.

    hit_rate                   hits / calls of `on`
    latency_ms                 request to decision, p50 and p99: off, on_miss, on_hit
    miss_over_off_p50          on_miss p50 / off p50: what the cache costs a request it does not answer (1.0: nothing)
    hit_over_miss_p50          on_hit p50 / on_miss p50
    avoided_micro_usd          what the hits did not spend (the ledger's CacheHitRecorded amounts)
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

from ledgergate import topics
from ledgergate.client import GateClient
from ledgergate.shared.errors import ServiceStartError
from ledgergate.shared.kafka import provision
from ledgergate.shared.settings import PROJECT_ROOT, KafkaSettings
from ledgergate.tools.bench import floors, stats
from ledgergate.tools.bench.gate import say
from ledgergate.tools.bench.proxy import wait_gate
from ledgergate.tools.bench.workload import wait_for_commands
from ledgergate.tools.servicerunner import GATE_SERVICES, ServiceSet

MODEL = "gpt-4o-mini"
MAX_TOKENS = 64
LIMIT_MICRO_USD = 10**9  # $1,000: never the binding constraint in a run
USAGE = {"input_tokens": 40, "cached_input_tokens": 0, "output_tokens": 48, "reasoning_tokens": 0}
ANSWER = "The ledger holds 3 open reservations and 12 settled calls this period; no threshold was crossed."
RECENT_MAX = 50  # the prompts a repeat is drawn from


@dataclass(frozen=True)
class CacheBenchOptions:
    calls: int = 1000  # per tenant, after warmup
    warmup: int = 50  # per tenant, not recorded
    block: int = 50
    repeat_share: float = 0.2
    seed: int = 7


def _ask(i: int, tag: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are a terse assistant for a finance team."},
            {"role": "user", "content": f"Question {tag}-{i}: summarise this period's ledger for workflow {i % 17}."}]


class Tenant:
    def __init__(self, client: GateClient, tenant_id: str, rng: random.Random, repeat_share: float) -> None:
        self.client, self.tenant_id, self.rng, self.repeat_share = client, tenant_id, rng, repeat_share
        self.recent: deque[int] = deque(maxlen=RECENT_MAX)
        self.next_prompt = 0
        self.samples: dict[str, list[int]] = {"miss": [], "hit": []}
        self.avoided_micro_usd = 0
        self.repeats = 0

    def call(self, record: bool) -> None:
        repeat = bool(self.recent) and self.rng.random() < self.repeat_share
        prompt = self.rng.choice(self.recent) if repeat else self.next_prompt
        if not repeat:
            self.next_prompt += 1
        t0 = time.perf_counter_ns()
        d = self.client.request(self.tenant_id, _ask(prompt, self.tenant_id), MODEL, MAX_TOKENS,
                                sampling={"temperature": 0}, timeout_s=30)
        elapsed_us = (time.perf_counter_ns() - t0) // 1000
        hit = d["outcome"] == "CACHE_HIT"
        if hit:
            assert d["cached_response"] == ANSWER, d
        else:
            assert d["outcome"] == "ALLOW", d
            self.client.complete(self.tenant_id, d["request_id"], MODEL, USAGE,
                                 completion_text=ANSWER if d["cache_store"] else None)
            self.recent.append(prompt)
        if record:
            self.samples["hit" if hit else "miss"].append(elapsed_us)
            self.avoided_micro_usd += int(d["avoided_micro_usd"]) if hit else 0
            self.repeats += repeat


def summarise(on: Tenant, off: Tenant) -> dict[str, Any]:
    calls_on = len(on.samples["miss"]) + len(on.samples["hit"])
    lat = {"off": stats.p50_p99_ms(off.samples["miss"] + off.samples["hit"]),
           "on_miss": stats.p50_p99_ms(on.samples["miss"])}
    if on.samples["hit"]:
        lat["on_hit"] = stats.p50_p99_ms(on.samples["hit"])
    out: dict[str, Any] = {
        "calls_per_tenant": calls_on, "repeats": on.repeats, "hits": len(on.samples["hit"]),
        "hit_rate": round(len(on.samples["hit"]) / calls_on, 4) if calls_on else 0.0,
        "hits_of_off": len(off.samples["hit"]), "latency_ms": lat,
        "miss_over_off_p50": round(lat["on_miss"]["p50"] / lat["off"]["p50"], 3) if lat["off"]["p50"] else None,
        "avoided_micro_usd": on.avoided_micro_usd}
    if "on_hit" in lat and lat["on_miss"]["p50"]:
        out["hit_over_miss_p50"] = round(lat["on_hit"]["p50"] / lat["on_miss"]["p50"], 3)
    return out


def run_cache_bench(kafka: KafkaSettings, opts: CacheBenchOptions) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    prefix = f"bench{tag}.cache."
    connection = kafka.kafka_connection
    specs = provision.load_specs(partitions=kafka.kafka_partitions, prefix=prefix)
    provision.apply(connection, specs)
    services = ServiceSet({**connection.env_vars(), "LEDGERGATE_TOPIC_PREFIX": prefix},
                          PROJECT_ROOT / ".data" / "bench" / tag)
    client: GateClient | None = None
    try:
        services.start(GATE_SERVICES)
        client = GateClient(topic_prefix=prefix, timeout_s=30, connection=connection)
        wait_gate(client, services, tag)
        on_id, off_id = f"cb-on-{tag}", f"cb-off-{tag}"
        ids = {client.send_command(t, "SET_LIMIT", LIMIT_MICRO_USD, reason="bench", issued_by="bench")
               for t in (on_id, off_id)}
        ids.add(client.send_command(on_id, "SET_POLICY", reason="bench", issued_by="bench",
                                    policy_json=json.dumps({"cache": {"enabled": True, "ttl_s": 3600}})))
        if wait_for_commands(connection, prefix + topics.LEDGER, ids, 30):
            raise ServiceStartError("the tenants' budgets and policy did not reach the ledger within 30 s")
        rng = random.Random(opts.seed)
        on, off = (Tenant(client, t, rng, opts.repeat_share) for t in (on_id, off_id))
        say(f"cache: {opts.warmup} warm-up then {opts.calls} closed-loop calls per tenant (cache on, cache off), "
            f"{opts.repeat_share:.0%} of prompts repeated, in turns of {opts.block}")
        for _ in range(opts.warmup):
            for tenant in (on, off):
                tenant.call(record=False)
        t0 = time.monotonic()
        done, turn = 0, 0
        while done < opts.calls:
            n = min(opts.block, opts.calls - done)
            for tenant in ((on, off) if turn % 2 == 0 else (off, on)):
                for _ in range(n):
                    tenant.call(record=True)
            done, turn = done + n, turn + 1
        out = summarise(on, off)
        out.update({"seconds": round(time.monotonic() - t0, 1), "repeat_share": opts.repeat_share, "model": MODEL,
                    "prefix": prefix, "logs": services.describe_logs()})
        lat = out["latency_ms"]
        say(f"cache: hit rate {out['hit_rate']:.1%} ({out['hits']} of {out['calls_per_tenant']}, {out['repeats']} "
            f"repeats); p50 off {lat['off']['p50']:.2f} ms, on miss {lat['on_miss']['p50']:.2f} ms "
            f"(x{out['miss_over_off_p50']}), on hit {lat.get('on_hit', {}).get('p50', float('nan')):.2f} ms; "
            f"avoided {out['avoided_micro_usd'] / 1e6:.4f} USD")
        return out
    finally:
        if client is not None:
            client.close()
        services.stop_all()
        floors.delete_topics(connection, [s.name for s in specs])
