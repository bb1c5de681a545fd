"""What `ledgergate bench` runs, phase by phase, and where the results go.

Phases run one at a time so none measures another's load: CPU-only work first (tokenizer, memory),
then Kafka without services (echo floors), the gate, the PostgreSQL baseline, the ledger rebuild, and
the proxy's latency over the stand-in and the gate.
Each phase records how much CPU went to processes that are not ours (other engineers' tests on a
shared 2-core machine); a phase above NOISY_CORES marks the whole run as polluted.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledgergate import topics
from ledgergate.shared.kafka import provision
from ledgergate.shared.settings import PROJECT_ROOT, KafkaSettings, PostgresSettings, SnapshotterSettings, StateSettings
from ledgergate.tools.bench import (
    cache,
    egress,
    floors,
    ledger,
    metrics_cost,
    pgbaseline,
    procstats,
    proxy,
    report,
    restart,
)
from ledgergate.tools.bench.gate import GateBench, GateOptions, say
from ledgergate.tools.bench.workload import request_record, workload

RESULTS_DIR = PROJECT_ROOT / "tools" / "bench" / "results"
NOISY_CORES = 0.3
MAX_RATES = (250.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0)
# `metrics` is not part of `all`: it runs the gate four times (metrics on and off, ABBA).
MODES = ("all", "max", "rate", "floors", "ledger", "baseline", "hot", "scale", "restart", "egress", "proxy",
         "cache", "metrics")


@dataclass
class BenchOptions:
    mode: str = "all"
    smoke: bool = False
    rate: float = 1000.0
    duration_s: float = 20.0
    step_s: float = 4.0
    rates: tuple[float, ...] = MAX_RATES
    tenants: int = 1000
    seed: int = 7
    output: Path | None = None
    quiet_wait_s: float = 0.0
    noisy_retries: int = 0
    command: str = "ledgergate bench"
    sizes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        full = {"warmup": (100.0, 3.0), "race": (200, 20), "echo": (1000.0, 5.0), "tokenizer": (2000, 3),
                "memory": 1_000_000, "memory_unpacked": 100_000, "memory_traced": 50_000, "rebuild": (1_000_000, 2000),
                # (entries, tenants, months, tail): a long ledger whose tail is one snapshot interval.
                "restart": (10_000_000, 10_000, 24, SnapshotterSettings.model_fields["snapshot_every_entries"].default),
                # (client counts, requests/s, seconds) per mode (every partition, the tenant's own)
                "egress": ((1, 10, 50), 50.0, 10.0),
                "proxy": proxy.ProxyBenchOptions(calls=500, warmup=30, block=50),
                "cache": cache.CacheBenchOptions(calls=1000, warmup=50, block=50),
                "pg": {"rate": self.rate, "seconds": min(self.duration_s, 10.0), "capacity": 5000, "workers": 16},
                # The hot-tenant shape: a max search through the gate, a capacity run through the baseline.
                "hot": {"rates": (500.0, 1000.0, 2000.0, 4000.0), "step_s": 4.0, "pg_requests": 5000}}
        smoke = {"warmup": (20.0, 1.0), "race": (40, 5), "echo": (200.0, 1.0), "tokenizer": (100, 1),
                 "memory": 5000, "memory_unpacked": 2000, "memory_traced": 2000, "rebuild": (20_000, 1000),
                 "restart": (20_000, 200, 3, 2_000),
                 "egress": ((1, 3), 20.0, 1.5),
                 "proxy": proxy.ProxyBenchOptions(calls=20, warmup=5, block=10),
                 "cache": cache.CacheBenchOptions(calls=40, warmup=10, block=10),
                 "pg": {"rate": 50.0, "seconds": 2.0, "capacity": 200, "workers": 4},
                 "hot": {"rates": (40.0,), "step_s": 1.5, "pg_requests": 200}}
        self.sizes = {**(smoke if self.smoke else full), **self.sizes}
        if self.smoke:
            self.tenants, self.rates, self.step_s = min(self.tenants, 50), (40.0, 80.0), 1.5
            self.rate, self.duration_s = 40.0, 2.0


class Bench:
    def __init__(self, opts: BenchOptions) -> None:
        self.options = opts
        self.kafka = KafkaSettings()
        self.run_id = time.strftime("%Y%m%d-%H%M%S")
        self.results: dict[str, Any] = {"run": self.run_id, "mode": opts.mode, "smoke": opts.smoke,
                                        "command": opts.command, "machine": procstats.machine(), "phases": {}}

    def phase(self, name: str, job: Callable[[], None]) -> None:
        """Run one phase; while other people's CPU use during it exceeds NOISY_CORES, run it again (up
        to --noisy-retries times) and keep the cleanest attempt."""
        best: dict[str, Any] | None = None
        for attempt in range(1, self.options.noisy_retries + 2):
            # PostgreSQL counts as ours only where we use it; elsewhere its CPU is other people's tests.
            stack = procstats.stack_pids() if name in ("baseline", "hot_baseline") else procstats.broker()
            children0 = procstats.reaped_children_cpu_seconds()
            window = procstats.CpuWindow({**stack, "bench": os.getpid()})
            job()
            cpu = window.close(extra_s=procstats.reaped_children_cpu_seconds() - children0)
            self.results["phases"][name] = {**cpu, "attempts": attempt}
            if best is None or cpu["foreign_cores"] < best["phases"][name]["foreign_cores"]:
                best = copy.deepcopy(self.results)
            if cpu["foreign_cores"] <= NOISY_CORES or attempt > self.options.noisy_retries:
                break
            say(f"bench: {name} shared the machine with {cpu['foreign_cores']:.2f} cores of other work; again")
        assert best is not None
        best["phases"][name]["attempts"] = self.results["phases"][name]["attempts"]
        self.results = best

    def run(self) -> dict[str, Any]:
        mode, o = self.options.mode, self.options
        if o.quiet_wait_s:
            say(f"bench: waiting up to {o.quiet_wait_s:g} s for the machine to go quiet")
            self.results["busy_cores_before_start"] = procstats.wait_quiet(o.quiet_wait_s, NOISY_CORES)
        started = time.monotonic()
        if mode in ("all", "floors"):
            self.phase("tokenizer", self._floors_tokenizer)
        if mode in ("all", "ledger"):
            self.phase("memory", self._memory)
        if mode in ("all", "floors"):
            self.phase("echo", self._echo)
        if mode in ("all", "max", "rate", "scale"):  # scale compares with the one-instance max search
            self.phase("gate", self._gate)
        if mode in ("all", "scale"):
            self.phase("scale", self._scale)
        if mode in ("all", "baseline"):
            self.phase("baseline", self._baseline)
        if mode in ("all", "hot"):
            self.phase("hot", self._hot_gate)
            self.phase("hot_baseline", self._hot_baseline)
        if mode in ("all", "ledger"):
            self.phase("rebuild", self._rebuild)
        if mode in ("all", "restart"):
            self.phase("restart", self._restart)
        if mode in ("all", "egress"):
            self.phase("egress", self._egress)
        if mode in ("all", "proxy"):
            self.phase("proxy", self._proxy)
        if mode in ("all", "cache"):
            self.phase("cache", self._cache)
        if mode == "metrics":
            self.phase("metrics", self._metrics)
        self.results["total_s"] = round(time.monotonic() - started, 1)
        self.results["noisy"] = any(p["foreign_cores"] > NOISY_CORES for p in self.results["phases"].values())
        return self.results

    # --- phases --------------------------------------------------------------------------------

    def _floors_tokenizer(self) -> None:
        count, repeats = self.options.sizes["tokenizer"]
        say(f"floors: tiktoken vs count_request on {count} gate prompts")
        work = workload(self.options.tenants, "tok", count, self.options.seed)
        records = [request_record(work, i, "tok", 0) for i in range(count)]
        self.results.setdefault("floors", {})["tokenizer"] = floors.tokenizer_floor(records, repeats)

    def _memory(self) -> None:
        led = self.results.setdefault("ledger", {})
        hot_max = StateSettings.model_fields["hot_tenants_max"].default
        say(f"ledger: memory of {self.options.sizes['memory']:,} tenants' state as the budget-manager holds it "
            f"({hot_max:,} unpacked; fresh process)")
        led["memory"] = ledger.run_child("memory", {"tenants": self.options.sizes["memory"], "hot_max": hot_max})
        say(f"ledger: memory of {self.options.sizes['memory_unpacked']:,} tenants' state, every one unpacked")
        led["memory_unpacked"] = ledger.run_child("memory", {"tenants": self.options.sizes["memory_unpacked"]})
        led["memory_traced"] = ledger.run_child("memory", {"tenants": self.options.sizes["memory_traced"],
                                                           "tracemalloc": True})

    def _echo(self) -> None:
        rate, seconds = self.options.sizes["echo"]
        prefix = f"bench{uuid.uuid4().hex[:6]}."
        partitions = provision.load_specs(partitions=self.kafka.kafka_partitions)[0].partitions
        self.results.setdefault("floors", {})["echo"] = floors.echo_floors(
            self.kafka.kafka_connection, prefix, partitions, rate, seconds, low_rate=self.options.sizes["warmup"][0])

    def _gate(self) -> None:
        o = self.options
        steps = [(r, o.step_s) for r in o.rates] if o.mode in ("all", "max", "scale") else []
        rate = (o.rate, o.duration_s) if o.mode in ("all", "rate") else None
        race = self.options.sizes["race"] if o.mode == "all" else (0, 0)
        gate_opts = GateOptions(tenants=o.tenants, seed=o.seed, warmup=self.options.sizes["warmup"], steps=steps,
                                rate=rate,
                                race_requests=race[0], race_affords=race[1], idle_s=1.0 if o.smoke else 3.0)
        self.results["gate"] = GateBench(self.kafka, gate_opts).run()

    def _scale(self) -> None:
        """The max search again with two instances of each service: on two cores this shows what the second
        instance costs (rebalances, fetches, a second rebuild), not what it adds (docs/scaling.md)."""
        o = self.options
        say("scale: the gate with two instances of each service, max search")
        opts = GateOptions(tenants=o.tenants, seed=o.seed, warmup=o.sizes["warmup"],
                           steps=[(r, o.step_s) for r in o.rates], race_requests=0,
                           idle_s=1.0 if o.smoke else 3.0, instances=2)
        self.results["scale"] = GateBench(self.kafka, opts).run()

    def _baseline(self) -> None:
        pg = self.options.sizes["pg"]
        count = int(pg["rate"] * pg["seconds"])
        say(f"baseline: PostgreSQL gate, capacity over {pg['capacity']} requests, then {pg['rate']:g}/s "
            f"for {pg['seconds']:g} s, then the races")
        work = workload(self.options.tenants, "pg", pg["capacity"] + count, self.options.seed)
        race_requests, race_affords = self.options.sizes["race"]
        self.results["baseline"] = pgbaseline.run_baseline(
            PostgresSettings().pg_dsn, work, uuid.uuid4().hex[:6], 0, count, pg["rate"], pg["capacity"],
            pg["workers"], race_requests, race_affords)

    def _hot_gate(self) -> None:
        hot = self.options.sizes["hot"]
        say(f"hot tenant: the gate, half the traffic from one tenant, the rest Zipf over {self.options.tenants}")
        opts = GateOptions(tenants=self.options.tenants, seed=self.options.seed, warmup=self.options.sizes["warmup"],
                           steps=[(r, hot["step_s"]) for r in hot["rates"]], race_requests=0,
                           idle_s=1.0 if self.options.smoke else 3.0, shape="hot")
        self.results["hot"] = GateBench(self.kafka, opts).run()

    def _hot_baseline(self) -> None:
        hot = self.options.sizes["hot"]
        count = hot["pg_requests"]
        say(f"hot tenant: the PostgreSQL baseline, {count} requests queued at once")
        work = workload(self.options.tenants, "pghot", count, self.options.seed, "hot")
        self.results["hot_baseline"] = pgbaseline.run_hot(PostgresSettings().pg_dsn, work, uuid.uuid4().hex[:6],
                                                          count, self.options.sizes["pg"]["workers"])

    def _rebuild(self) -> None:
        entries, tenants = self.options.sizes["rebuild"]
        prefix = f"bench{uuid.uuid4().hex[:6]}.rebuild."
        spec = next(s for s in provision.load_specs(partitions=self.kafka.kafka_partitions, prefix=prefix)
                    if s.name == prefix + topics.LEDGER)
        connection = self.kafka.kafka_connection
        provision.apply(connection, [spec])
        try:
            say(f"ledger: producing {entries:,} synthetic entries for {tenants} tenants into {spec.name}")
            made = ledger.produce_ledger(connection, spec.name, entries, tenants)
            say(f"ledger: produced in {made['produce_s']} s; folding from offset 0 as the budget-manager does")
            rebuild = ledger.run_child("fold", {"bootstrap": connection.bootstrap, "topic": spec.name,
                                                "partitions": spec.partitions})
            self.results.setdefault("ledger", {})["rebuild"] = {**rebuild, "generated": made}
        finally:
            floors.delete_topics(connection, [spec.name])


    def _restart(self) -> None:
        entries, tenants, months, tail = self.options.sizes["restart"]
        # The floor beside it: the same cold start on an empty ledger (process start, group joins).
        empty = restart.run_restart(self.kafka, 0, 0, 1, 0)
        long = restart.run_restart(self.kafka, entries, tenants, months, tail)
        self.results["restart"] = {"empty_ledger": empty, "long_ledger": long}


    def _egress(self) -> None:
        counts, rate, seconds = self.options.sizes["egress"]
        self.results["egress"] = egress.run_egress(self.kafka, tuple(counts), rate, seconds)


    def _proxy(self) -> None:
        self.results["proxy"] = proxy.run_proxy_bench(self.kafka, self.options.sizes["proxy"])


    def _cache(self) -> None:
        self.results["cache"] = cache.run_cache_bench(self.kafka, self.options.sizes["cache"])

    def _metrics(self) -> None:
        """The max search and the fixed-rate run with the services' metrics on and off (tools/bench/metrics_cost.py)."""
        o = self.options
        opts = GateOptions(tenants=o.tenants, seed=o.seed, warmup=o.sizes["warmup"],
                           steps=[(r, o.step_s) for r in o.rates], rate=(o.rate, o.duration_s), race_requests=0,
                           idle_s=1.0 if o.smoke else 3.0)
        self.results["metrics"] = metrics_cost.run_metrics_cost(self.kafka, opts, pairs=1 if o.smoke else 2)


def write(results: dict[str, Any], output: Path | None) -> Path:
    path = output or RESULTS_DIR / f"{results['run']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    results["output"] = str(path)
    path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return path


def run_bench(opts: BenchOptions) -> dict[str, Any]:
    results = Bench(opts).run()
    write(results, opts.output)
    print(report.table(results), flush=True)
    sys.stdout.flush()
    return results
