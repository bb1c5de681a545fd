"""What the OpenAI-compatible proxy adds (`ledgergate bench proxy`; design target: <= 2 ms p50 over the gate).

Three processes beside the measuring one: the OpenAI stand-in (tools/openai_standin.py, its own process so
its CPU is not ours), the gate's four services, and `ledgergate run proxy` forwarding to the stand-in. This
process then times, closed loop (one call at a time), the same small chat call three ways:

  direct  the real `openai` package -> the stand-in
  gate    Gate.admit + Grant.settle against the same tenant (what the proxy does, without HTTP or the upstream)
  proxy   the real `openai` package with base_url = the proxy and the tenant's key -> gate -> stand-in

and the same for `stream=True` (direct_stream, proxy_stream: the whole stream read). The modes run in
blocks that take turns (rotating which goes first), so drift on a shared machine falls on every mode
alike; the CPU each process spends during each mode's blocks gives where a call's time goes.

    proxy_added_ms_p50           = proxy p50 - direct p50           (what a client sees the proxy add)
    proxy_overhead_over_gate_ms  = proxy p50 - direct p50 - gate p50 (what the proxy adds over the gate itself)
"""

from __future__ import annotations

import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import openai
import psycopg

from ledgergate import topics
from ledgergate.admission import Gate, GateSettings
from ledgergate.client import GateClient
from ledgergate.errors import GateTimeoutError
from ledgergate.integrations.wire import usage_from_openai
from ledgergate.shared import apikeys
from ledgergate.shared.errors import ServiceStartError
from ledgergate.shared.kafka import provision
from ledgergate.shared.settings import PROJECT_ROOT, KafkaSettings, PostgresSettings
from ledgergate.tools.bench import floors, procstats, stats
from ledgergate.tools.bench.gate import say
from ledgergate.tools.bench.workload import wait_for_commands
from ledgergate.tools.servicerunner import GATE_SERVICES, ServiceSet

MODEL = "gpt-4o-mini"
MAX_TOKENS = 16
ASK = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Summarise the ledger."}]
MODES = ("direct", "gate", "proxy", "direct_stream", "proxy_stream")
# (the full call, its direct twin) for the figures over the gate; the gate's own call is the same for both.
VIA_PROXY = {"proxy": "direct", "proxy_stream": "direct_stream"}
TARGET_OVER_GATE_MS = 2.0
BOOTSTRAP_RESAMPLES = 200
LIMIT_MICRO_USD = 10**9  # $1,000: never the binding constraint in a run
START_TIMEOUT_S = 120.0
CALL_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ProxyBenchOptions:
    calls: int = 500  # per mode, after warmup
    warmup: int = 30  # per mode, not recorded
    block: int = 50  # calls of one mode before the next mode's turn
    modes: tuple[str, ...] = MODES  # a subset to profile one path (py-spy on the proxy's pid)


# --- the figures (pure) ---------------------------------------------------------------------------

def _ms(us: float) -> float:
    return round(us / 1000, 3)


def _p50(samples: Sequence[int]) -> float:
    return stats.pct(sorted(samples), 0.5)


def overhead_interval_us(via: Sequence[int], direct: Sequence[int], gate: Sequence[int],
                         resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 7) -> tuple[float, float]:
    """A 95 % bootstrap interval of p50(via) - p50(direct) - p50(gate): how far the difference of three
    medians of wide distributions (the gate's spans tens of ms) can be trusted."""
    rng = random.Random(seed)
    draws = sorted(_p50(rng.choices(via, k=len(via))) - _p50(rng.choices(direct, k=len(direct)))
                   - _p50(rng.choices(gate, k=len(gate))) for _ in range(resamples))
    return stats.pct(draws, 0.025), stats.pct(draws, 0.975)


def summarise(samples_us: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """p50/p99 per mode, and for each proxied mode what the proxy adds over its direct twin and over the gate,
    as ms and as a ratio to the gate's p50, with a 95 % bootstrap interval. `paired_*`: the median over aligned
    calls (the i-th of each mode ran in the same turn) of proxy - direct - gate, a check on the difference of
    medians."""
    out: dict[str, Any] = {"latency_ms": {m: stats.summary_ms(s, {"p50": 0.5, "p90": 0.9, "p99": 0.99})
                                          for m, s in samples_us.items()}}
    gate = list(samples_us.get("gate", ()))
    gate_p50_us = _p50(gate)
    for via, direct in VIA_PROXY.items():
        if not samples_us.get(via) or not samples_us.get(direct) or not gate:
            continue
        added_us = _p50(samples_us[via]) - _p50(samples_us[direct])
        over_us = added_us - gate_p50_us
        low_us, high_us = overhead_interval_us(samples_us[via], samples_us[direct], gate)
        paired = [p - d - g for p, d, g in zip(samples_us[via], samples_us[direct], samples_us["gate"], strict=False)]
        out[via] = {"proxy_added_ms_p50": _ms(added_us), "proxy_overhead_over_gate_ms_p50": _ms(over_us),
                    "gate_ms_p50": _ms(gate_p50_us),
                    "proxy_added_to_gate_p50": round(added_us / gate_p50_us, 3) if gate_p50_us else None,
                    "overhead_over_gate_to_gate_p50": round(over_us / gate_p50_us, 3) if gate_p50_us else None,
                    "overhead_over_gate_ms_p50_ci95": [_ms(low_us), _ms(high_us)],
                    "paired_overhead_over_gate_ms_p50": _ms(statistics.median(paired)) if paired else None,
                    "meets_target": over_us / 1000 <= TARGET_OVER_GATE_MS}
    return out


def cpu_per_call_us(cpu_s: Mapping[str, Mapping[str, float]], calls: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """CPU seconds each process spent during a mode's turns -> microseconds per call of that mode."""
    return {mode: {proc: round(s * 1e6 / max(1, calls.get(mode, 0))) for proc, s in by_proc.items()}
            for mode, by_proc in cpu_s.items()}


# --- the processes --------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


class Standin:
    """The stand-in as a child process; it exits when we close its stdin (or we die)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "ledgergate.tools.openai_standin", "--port", "0"],
                                     cwd=PROJECT_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise ServiceStartError(f"the OpenAI stand-in exited before serving (exit {self.proc.wait()})")
        self.base_url: str = json.loads(line)["base_url"]

    def stop(self) -> None:
        stdin: IO[str] | None = self.proc.stdin
        if stdin is not None:
            stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait_gate(client: GateClient, services: ServiceSet, tag: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if services.dead():
            raise ServiceStartError(f"{', '.join(services.dead())} exited; logs: {services.describe_logs()}")
        try:
            client.request(f"probe-{tag}", [{"role": "user", "content": "ping"}], MODEL, 8, timeout_s=5)
            return
        except GateTimeoutError:
            continue
    raise ServiceStartError(f"no decision within {START_TIMEOUT_S:.0f} s; logs: {services.describe_logs()}")


def _wait_proxy(port: int, services: ServiceSet) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while _status(f"http://127.0.0.1:{port}/readyz") != 200:
        if services.dead() or time.monotonic() > deadline:
            raise ServiceStartError(f"the proxy is not ready; logs: {services.describe_logs()}")
        time.sleep(0.2)


# --- the calls ------------------------------------------------------------------------------------

class Calls:
    """One callable per mode, each a whole call as its user makes it; raise on anything but an answer."""

    def __init__(self, standin_url: str, proxy_url: str, key: str, gate: Gate) -> None:
        self.direct = openai.OpenAI(base_url=standin_url, api_key="standin", max_retries=0, timeout=CALL_TIMEOUT_S)
        self.proxied = openai.OpenAI(base_url=proxy_url, api_key=key, max_retries=0, timeout=CALL_TIMEOUT_S)
        self.gate = gate
        # What the stand-in reports for this call: the gate's settlement carries the same.
        self.usage = usage_from_openai({"prompt_tokens": 12, "completion_tokens": MAX_TOKENS}) or {}

    def by_mode(self) -> dict[str, Callable[[], None]]:
        return {"direct": lambda: self._once(self.direct), "gate": self._gate,
                "proxy": lambda: self._once(self.proxied),
                "direct_stream": lambda: self._stream(self.direct), "proxy_stream": lambda: self._stream(self.proxied)}

    @staticmethod
    def _once(client: openai.OpenAI) -> None:
        reply = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=MAX_TOKENS)  # type: ignore[arg-type]
        assert reply.choices[0].message.content

    @staticmethod
    def _stream(client: openai.OpenAI) -> None:
        chunks = 0
        for _chunk in client.chat.completions.create(model=MODEL, messages=ASK,  # type: ignore[arg-type]
                                                     max_tokens=MAX_TOKENS, stream=True):
            chunks += 1
        assert chunks > MAX_TOKENS  # the role chunk, one per word, the finish

    def _gate(self) -> None:
        self.gate.admit(ASK, MODEL, MAX_TOKENS).settle(self.usage)

    def close(self) -> None:
        self.direct.close()
        self.proxied.close()


def measure(calls: dict[str, Callable[[], None]], opts: ProxyBenchOptions,
            pids: Mapping[str, int]) -> tuple[dict[str, list[int]], dict[str, dict[str, float]]]:
    """Warm every mode, then `opts.calls` of each in turns of `opts.block`; latency samples (us) and the CPU
    seconds each of `pids` spent during each mode's turns."""
    for fn in calls.values():
        for _ in range(opts.warmup):
            fn()
    modes = list(calls)
    samples: dict[str, list[int]] = {m: [] for m in modes}
    cpu: dict[str, dict[str, float]] = {m: dict.fromkeys(pids, 0.0) for m in modes}
    turn = 0
    while any(len(s) < opts.calls for s in samples.values()):
        for mode in modes[turn % len(modes):] + modes[:turn % len(modes)]:
            n = min(opts.block, opts.calls - len(samples[mode]))
            fn, out = calls[mode], samples[mode]
            before = {name: procstats.cpu_seconds(pid) or 0.0 for name, pid in pids.items()}
            for _ in range(n):
                t0 = time.perf_counter_ns()
                fn()
                out.append((time.perf_counter_ns() - t0) // 1000)
            for name, pid in pids.items():
                cpu[mode][name] += (procstats.cpu_seconds(pid) or 0.0) - before[name]
        turn += 1
    return samples, cpu


# --- the phase ------------------------------------------------------------------------------------

def run_proxy_bench(kafka: KafkaSettings, opts: ProxyBenchOptions) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    prefix = f"bench{tag}.proxy."
    connection = kafka.kafka_connection
    specs = provision.load_specs(partitions=kafka.kafka_partitions, prefix=prefix)
    provision.apply(connection, specs)
    dsn = PostgresSettings().pg_dsn
    port = _free_port()
    standin = Standin()
    services = ServiceSet({**connection.env_vars(), "LEDGERGATE_TOPIC_PREFIX": prefix},
                          PROJECT_ROOT / ".data" / "bench" / tag,
                          env_for={"proxy": {"LEDGERGATE_PG_DSN": dsn, "LEDGERGATE_PROXY_PORT": str(port),
                                             "LEDGERGATE_PROXY_UPSTREAM_BASE_URL": standin.base_url}})
    client: GateClient | None = None
    calls: Calls | None = None
    try:
        names = [*GATE_SERVICES, "proxy"]
        services.start(names)
        # As the proxy reads decisions: every partition, so no call waits for an assignment.
        client = GateClient(topic_prefix=prefix, timeout_s=30, connection=connection, partitions="all")
        started = time.monotonic()
        wait_gate(client, services, tag)
        _wait_proxy(port, services)
        tenant = f"pxb-{tag}"
        ids = {client.send_command(tenant, "SET_LIMIT", LIMIT_MICRO_USD, reason="bench", issued_by="bench")}
        if wait_for_commands(connection, prefix + topics.LEDGER, ids, 30):
            raise ServiceStartError("the tenant's budget did not reach the ledger within 30 s")
        with psycopg.connect(dsn, autocommit=True) as conn:
            key = apikeys.create_key(conn, tenant_id=tenant, is_admin=False, name="bench").token
        say(f"proxy: gate and proxy answered after {time.monotonic() - started:.1f} s; {opts.warmup} warm-up then "
            f"{opts.calls} closed-loop calls per mode ({', '.join(opts.modes)}), in turns of {opts.block}")
        gate = Gate(client, GateSettings(tenant_id=tenant, on_throttle="raise"))
        calls = Calls(standin.base_url, f"http://127.0.0.1:{port}/v1", key, gate)
        pids = {name: pid for name in names if (pid := services.pid(name)) is not None}
        pids.update({"standin": standin.proc.pid, "bench": os.getpid(), **procstats.broker()})
        t0 = time.monotonic()
        samples, cpu_s = measure({m: fn for m, fn in calls.by_mode().items() if m in opts.modes}, opts, pids)
        out = summarise(samples)
        out.update({"calls_per_mode": opts.calls, "warmup_per_mode": opts.warmup, "block": opts.block,
                    "seconds": round(time.monotonic() - t0, 1), "model": MODEL, "max_tokens": MAX_TOKENS,
                    "cpu_us_per_call": cpu_per_call_us(cpu_s, {m: len(s) for m, s in samples.items()}),
                    "prefix": prefix, "logs": services.describe_logs()})
        lat = out["latency_ms"]
        for via, direct in VIA_PROXY.items():
            f = out.get(via)
            if f:
                say(f"proxy: {via} p50 {lat[via]['p50']:.2f} ms, {direct} {lat[direct]['p50']:.2f} ms, gate "
                    f"{f['gate_ms_p50']:.2f} ms: adds {f['proxy_added_ms_p50']:.2f} ms, "
                    f"{f['proxy_overhead_over_gate_ms_p50']:.2f} ms over the gate (95 % "
                    f"{f['overhead_over_gate_ms_p50_ci95'][0]:.1f}..{f['overhead_over_gate_ms_p50_ci95'][1]:.1f}; "
                    f"target <= {TARGET_OVER_GATE_MS:g})")
        return out
    finally:
        if calls is not None:
            calls.close()
        if client is not None:
            client.close()
        services.stop_all()
        standin.stop()
        floors.delete_topics(connection, [s.name for s in specs])
