"""The gate under load: the four services as processes on a fresh topic prefix, budgets for every
tenant, then open-loop load steps (each its own load-generator process), a concurrency race on one
budget, and each service's CPU and peak memory. Topics are deleted at the end."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from ledgergate import topics
from ledgergate.client import GateClient
from ledgergate.codec import codec
from ledgergate.errors import GateTimeoutError
from ledgergate.kafka_config import admin_config
from ledgergate.partitioning import murmur2_partition
from ledgergate.shared.errors import ServiceStartError
from ledgergate.shared.kafka import provision
from ledgergate.shared.kafka.reader import read_to_end
from ledgergate.shared.ledger.entries import from_record
from ledgergate.shared.ledger.state import TENANT, TenantState, evolve
from ledgergate.shared.settings import PROJECT_ROOT, KafkaSettings
from ledgergate.tools.bench import procstats
from ledgergate.tools.bench.workload import hot_tenant, limits, mix, seed_budgets, wait_for_commands, workload
from ledgergate.tools.servicerunner import GATE_SERVICES, ServiceSet, instance_name

RACE_MODEL = "gpt-4.1-nano"  # no downgrade candidates: a request either fits the budget or is denied
RACE_PROMPT = [{"role": "user", "content": "Summarise the quarterly ledger for the finance team in three bullets."}]
RACE_MAX_OUTPUT = 256


@dataclass
class GateOptions:
    tenants: int = 1000
    seed: int = 7
    warmup: tuple[float, float] = (100.0, 3.0)  # (rate/s, seconds), reported but not judged
    steps: list[tuple[float, float]] = field(default_factory=list)  # max search: stop at the first unsustained
    rate: tuple[float, float] | None = None  # the fixed-rate run
    max_backlog_s: float = 1.0  # a max-search step stops once this much traffic is queued
    rate_max_backlog_s: float = 10.0
    race_requests: int = 200
    race_affords: int = 20
    idle_s: float = 3.0
    shape: str = "fleet"  # "hot": one tenant sends half the traffic (tools/bench/workload.py)
    instances: int = 1  # of each of the four services (`service`, `service@1`, ...)
    env: dict[str, str] = field(default_factory=dict)  # laid over every service's environment
    log_dir: Path = PROJECT_ROOT / ".data" / "bench"


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class GateBench:
    def __init__(self, kafka: KafkaSettings, opts: GateOptions) -> None:
        self.kafka, self.options = kafka, opts
        self.tag = uuid.uuid4().hex[:6]
        self.prefix = f"bench{self.tag}."
        self.connection = kafka.kafka_connection
        self.specs = provision.load_specs(partitions=kafka.kafka_partitions, prefix=self.prefix)
        plan = [opts.warmup, *opts.steps, *([opts.rate] if opts.rate else [])]
        self.total = sum(int(rate * secs) for rate, secs in plan)
        self.offset = 0
        self.names = [instance_name(s, i) for s in GATE_SERVICES for i in range(opts.instances)]
        self.services = ServiceSet({**self.connection.env_vars(), "LEDGERGATE_TOPIC_PREFIX": self.prefix,
                                    **opts.env}, opts.log_dir / self.tag)
        # The broker only: PostgreSQL plays no part in the gate, so its CPU here is someone else's.
        self.stack = procstats.broker()

    def run(self) -> dict[str, Any]:
        provision.apply(self.connection, self.specs)
        client: GateClient | None = None
        # The broker is shared: what it burns before our services start is someone else's (or idle).
        before = procstats.CpuWindow(self.stack)
        time.sleep(self.options.idle_s)
        broker_before = before.close()
        try:
            self.services.start(self.names)
            client = GateClient(topic_prefix=self.prefix, timeout_s=30, connection=self.connection)
            started = time.monotonic()
            self._wait_ready(client)
            work = workload(self.options.tenants, self.tag, self.total, self.options.seed, self.options.shape)
            hot = hot_tenant(work) if self.options.shape == "hot" else None
            tenant_limits = limits(work, hot)
            seed_s = seed_budgets(self.connection, self.prefix, tenant_limits)
            say(f"gate: services answered after {time.monotonic() - started:.1f} s; "
                f"{self.options.tenants} budgets set in {seed_s:.1f} s")
            out: dict[str, Any] = {"prefix": self.prefix, "tenants": self.options.tenants, "shape": self.options.shape,
                                   "requests_planned": self.total,
                                   "workload": mix(work, 0, min(self.total, 20_000)),
                                   "logs": self.services.describe_logs()}
            out["idle"] = self._idle(self.options.idle_s)
            out["idle"]["broker_cores_before_services"] = round(
                broker_before["cpu_s"].get("kafka", 0.0) / broker_before["wall_s"], 3)
            out["warmup"] = self._step("warmup", *self.options.warmup, self.options.max_backlog_s)
            if self.options.steps:
                out["max"] = self._max_search()
            if self.options.rate:
                out["rate"] = self._step(f"rate {self.options.rate[0]:g}/s", *self.options.rate,
                                         self.options.rate_max_backlog_s)
            if self.options.race_requests:
                out["race"] = self._race(client)
            if hot is not None:
                out["hot_tenant"] = self._hot_account(work, hot, tenant_limits[hot])
            out["processes"] = self._process_figures()
            return out
        finally:
            if client is not None:
                client.close()
            self.services.stop_all()
            self._delete_topics()

    # --- steps ---------------------------------------------------------------------------------

    def _max_search(self) -> dict[str, Any]:
        steps, best = [], None
        for rate, secs in self.options.steps:
            step = self._step(f"max {rate:g}/s", rate, secs, self.options.max_backlog_s)
            steps.append(step)
            if step["sustained"]:
                best = step
            else:
                break
        saturated = next((s for s in steps if not s["sustained"]), None)
        return {"steps": steps, "highest_sustained_per_s": best["decisions_per_s"] if best else 0.0,
                "highest_sustained_offered_per_s": best["offered_per_s"] if best else 0.0,
                # While a step is backed up, decisions leave at the pipeline's capacity.
                "throughput_when_saturated_per_s": saturated["decisions_per_s"] if saturated else None}

    def _step(self, label: str, rate: float, secs: float, max_backlog_s: float) -> dict[str, Any]:
        count = int(rate * secs)
        # The loadgen child reads its security settings from the environment it inherits (as this did).
        spec = {"bootstrap": self.connection.bootstrap, "prefix": self.prefix, "tag": self.tag,
                "tenants": self.options.tenants, "requests": self.total, "seed": self.options.seed,
                "start": self.offset, "count": count, "rate": rate,
                "label": label, "max_backlog_s": max_backlog_s, "drain_timeout_s": 15.0, "complete": True,
                "shape": self.options.shape}
        self.offset += count
        say(f"gate: {label} for {secs:g} s ({count} requests)")
        proc = subprocess.Popen([sys.executable, "-m", "ledgergate.tools.bench.loadgen", json.dumps(spec)],
                                cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        window = None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if window is None and line.startswith('{"ready"'):
                window = procstats.CpuWindow({**self._service_pids(), **self.stack, "loadgen": proc.pid})
        if proc.wait() != 0 or not lines:
            raise ServiceStartError(f"load generator for {label} failed (exit {proc.returncode})")
        result: dict[str, Any] = json.loads(lines[-1])
        if window is not None:
            cpu = window.close({"loadgen": result["loadgen_cpu_s"]})
            result["cpu"] = cpu
            decided = max(1, result["decided"])
            result["cpu_us_per_decision"] = {k: round(v * 1e6 / decided) for k, v in cpu["cpu_s"].items()}
        lat = result["latency_ms"]
        say(f"gate: {label}: {result['decided']}/{result['sent']} decided, {result['decisions_per_s']:.0f}/s, "
            f"p50 {lat['p50']:.1f} ms p99 {lat['p99']:.1f} ms, sustained={result['sustained']}")
        time.sleep(1.0)  # let settlements of the last completions through before the next step
        return result

    def _idle(self, seconds: float) -> dict[str, Any]:
        """CPU with the services up and no traffic: what polling alone costs (fetch.wait.max.ms, idle
        transactions), the floor under every per-decision CPU figure."""
        window = procstats.CpuWindow({**self._service_pids(), **self.stack})
        time.sleep(seconds)
        cpu = window.close()
        cores = {k: round(v / cpu["wall_s"], 3) for k, v in cpu["cpu_s"].items()}
        say("gate: idle cores " + ", ".join(f"{k} {v:.2f}" for k, v in cores.items()))
        return {"seconds": cpu["wall_s"], "cores": cores, "foreign_cores": cpu["foreign_cores"]}

    # --- race ----------------------------------------------------------------------------------

    def _race(self, client: GateClient) -> dict[str, Any]:
        """Many concurrent requests against one budget that affords a fraction of them."""
        calib, tenant = f"calib-{self.tag}", f"race-{self.tag}"
        ids = {client.send_command(calib, "SET_LIMIT", 100_000_000, reason="bench")}
        wait_for_commands(self.connection, self.prefix + topics.LEDGER, ids, 30)
        cost = client.request(calib, RACE_PROMPT, RACE_MODEL, RACE_MAX_OUTPUT, timeout_s=30)["reserved_micro_usd"]
        limit = cost * self.options.race_affords + cost // 2
        ids = {client.send_command(tenant, "SET_LIMIT", limit, reason="bench")}
        wait_for_commands(self.connection, self.prefix + topics.LEDGER, ids, 30)
        started = time.perf_counter()
        futures = [client.submit(tenant, RACE_PROMPT, RACE_MODEL, RACE_MAX_OUTPUT, request_id=f"race-{self.tag}-{i}")
                   for i in range(self.options.race_requests)]
        decisions = []
        for fut in futures:
            with contextlib.suppress(GateTimeoutError):
                decisions.append(fut.result(timeout=60))
        elapsed = time.perf_counter() - started
        allowed = [d for d in decisions if d["outcome"] in ("ALLOW", "DOWNGRADE")]
        worst = self._min_headroom(tenant)
        return {"requests": self.options.race_requests, "answered": len(decisions), "cost_micro_usd": cost,
                "limit_micro_usd": limit, "affordable": self.options.race_affords, "allowed": len(allowed),
                "reserved_micro_usd": sum(d["reserved_micro_usd"] for d in allowed),
                "overspend_micro_usd": max(0, -worst), "min_headroom_micro_usd": worst,
                "seconds": round(elapsed, 2)}

    def _hot_account(self, work: Any, tenant: str, limit_micro_usd: int) -> dict[str, Any]:
        """The hot tenant's share of what was sent, its limit, and its lowest headroom in the ledger's own
        fold (negative = overspent)."""
        sent = work.schedule[:self.offset]
        share = sum(work.agents[a].tenant == tenant for a, *_ in sent) / max(1, len(sent))
        worst = self._min_headroom(tenant)
        return {"tenant_id": tenant, "share_of_requests": round(share, 3),
                "limit_micro_usd": limit_micro_usd, "min_headroom_micro_usd": worst,
                "overspend_micro_usd": max(0, -worst)}

    def _min_headroom(self, tenant: str) -> int:
        """Fold the tenant's ledger partition from offset 0; the lowest tenant headroom after any entry
        (negative = overspent). This is the ledger's own account, not what the decisions claimed."""
        topic = self.prefix + topics.LEDGER
        partition = murmur2_partition(tenant.encode(), self.specs[0].partitions)
        state, worst = TenantState(tenant), None
        for msg in read_to_end(self.connection, topic, [partition]):
            if msg.key() != tenant.encode():
                continue
            name, rec = codec().decode(msg.value())
            evolve(state, from_record(name, rec))
            room = state.headroom(state.period_id, (TENANT, tenant))
            if room is not None:
                worst = room if worst is None else min(worst, room)
        return 0 if worst is None else worst

    # --- processes -----------------------------------------------------------------------------

    def _service_pids(self) -> dict[str, int]:
        return {name: pid for name in self.names if (pid := self.services.pid(name)) is not None}

    def _process_figures(self) -> dict[str, Any]:
        """Read before the services stop: /proc entries vanish with them."""
        return {name: {"cpu_s": round(procstats.cpu_seconds(pid) or 0.0, 2), "peak_rss_mb": procstats.peak_rss_mb(pid)}
                for name, pid in self._service_pids().items()}

    def _wait_ready(self, client: GateClient, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.services.dead():
                raise ServiceStartError(f"{', '.join(self.services.dead())} exited; logs: "
                                        f"{self.services.describe_logs()}")
            try:
                client.request(f"probe-{self.tag}", [{"role": "user", "content": "ping"}], "gpt-4o-mini", 8,
                               timeout_s=5)
                return
            except GateTimeoutError:
                continue
        raise ServiceStartError(f"no decision for a probe within {timeout_s:.0f} s; logs: "
                                f"{self.services.describe_logs()}")

    def _delete_topics(self) -> None:
        admin = AdminClient(admin_config(self.connection, log_level=4))  # no info lines on close
        for fut in admin.delete_topics([s.name for s in self.specs], operation_timeout=30).values():
            with contextlib.suppress(Exception):  # cleanup only: a leftover prefixed topic harms nothing
                fut.result()
