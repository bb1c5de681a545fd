"""The readable table `ledgergate bench` prints, beside the design's targets and floors."""

from __future__ import annotations

from typing import Any

TARGET_DPS = 5000
TARGET_P50_MS, TARGET_P99_MS = 8.0, 25.0
TARGET_TOKENIZER_RATIO = 0.70
TARGET_REBUILD_PER_S = 200_000
TARGET_1M_TENANTS_MB = 1024


def _lat(lat: dict[str, float]) -> str:
    return "  ".join(f"{lat.get(k, 0):8.1f}" for k in ("p50", "p90", "p99", "p99_9", "max"))


def _mark(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


HOPS = ("sched->send", "send->count", "count->policy", "policy->budget", "budget->route", "route->recv")
PROCESSES = ("token-counter", "policy", "budget-manager", "router", "kafka", "loadgen")


def _gate(g: dict[str, Any]) -> list[str]:
    w = g.get("workload", {})
    tokens = w.get("prompt_tokens", {})
    models = ", ".join(sorted(w.get("models", {})))
    lines = [f"GATE: 4 services as processes, real Kafka, {g['tenants']} tenants, prompts {tokens.get('min')}.."
             f"{tokens.get('max')} tokens (median {tokens.get('p50')}), models {models}",
             f"  {'step':<16}{'offered/s':>10}{'decided/s':>10}  {'p50':>8}  {'p90':>8}  {'p99':>8}  {'p99.9':>8}"
             f"  {'max':>8}  sustained  foreign-cpu"]
    steps = [g["warmup"], *g.get("max", {}).get("steps", []), *([g["rate"]] if "rate" in g else [])]
    for s in steps:
        noise = s.get("cpu", {}).get("foreign_cores", 0.0)
        lines.append(f"  {s['label']:<16}{s['offered_per_s']:>10.0f}{s['decisions_per_s']:>10.0f}  "
                     f"{_lat(s['latency_ms'])}  {'yes' if s['sustained'] else 'NO':<9}  {noise:.2f} cores")
    if "max" in g:
        m = g["max"]
        sat = m["throughput_when_saturated_per_s"]
        lines.append(f"  highest sustained: {m['highest_sustained_per_s']:.0f} decisions/s "
                     f"(target >= {TARGET_DPS}: {_mark(m['highest_sustained_per_s'] >= TARGET_DPS)})"
                     + (f"; {sat:.0f}/s while saturated" if sat is not None else ""))
    focus = g.get("rate") or (g.get("max", {}).get("steps") or [g["warmup"]])[-1]
    lat = focus["latency_ms"]
    if "rate" in g:
        ok = lat["p50"] <= TARGET_P50_MS and lat["p99"] <= TARGET_P99_MS and focus["sustained"]
        lines.append(f"  {focus['label']}: p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms "
                     f"(target p50 <= {TARGET_P50_MS:g}, p99 <= {TARGET_P99_MS:g}: {_mark(ok)})")
    # Every step side by side: a hop that grows with load is where the queue forms.
    head = "".join(f"{s['label'][-13:]:>14}" for s in steps)
    lines.append(f"  per hop, p50/p99 ms {head}")
    for hop in HOPS:
        cells = "".join(f"{s['hops_ms'][hop]['p50']:>7.1f}/{s['hops_ms'][hop]['p99']:<6.1f}" for s in steps)
        lines.append(f"    {hop:<17}{cells}")
    lines.append(f"  CPU us/decision   {head}")
    for proc in PROCESSES:
        cells = "".join(f"{s.get('cpu_us_per_decision', {}).get(proc, 0):>14}" for s in steps)
        lines.append(f"    {proc:<17}{cells}")
    busy = "".join(f"{s.get('cpu', {}).get('machine_busy_cores', 0):>14.2f}" for s in steps)
    lines.append(f"    {'machine busy cores':<17}{busy}")
    if "idle" in g:
        idle = g["idle"]["cores"]
        lines.append("  idle (services up, no traffic), cores: " + ", ".join(f"{p} {idle.get(p, 0):.2f}"
                                                                          for p in PROCESSES if p in idle)
                     + f"; broker before the services started {g['idle'].get('broker_cores_before_services', 0):.2f}")
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(focus["outcomes"].items()))
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(focus["not_allowed_reasons"].items())) or "none"
    lines.append(f"  outcomes ({focus['label']}): {outcomes}; not allowed because: {reasons}; "
                 f"completions sent {focus['completions_sent']}")
    lines.append("  per service over the whole run: " + ", ".join(
        f"{name} {p['cpu_s']:.1f} CPU-s / {p['peak_rss_mb']} MB peak" for name, p in g.get("processes", {}).items()))
    return lines


def _floors(f: dict[str, Any]) -> list[str]:
    lines = ["FLOORS (same broker, same client settings, no service logic)"]
    for name, e in f.get("echo", {}).items():
        lat = e["latency_ms"]
        label = name.rsplit(", ", 1)[0] if name.endswith("/s") else name
        lines.append(f"  echo {label:<48} {e['rate_per_s']:>5.0f} msg/s: p50 {lat['p50']:7.2f}  p99 {lat['p99']:8.2f}  "
                     f"max {lat['max']:8.2f} ms  (foreign cpu {e.get('cpu', {}).get('foreign_cores', 0):.2f})")
        if len(e.get("hops_ms", {})) > 1:  # relays stamp as the services do: the same hop split
            lines.append("      per hop p50/p99: " + ", ".join(f"{hop} {v['p50']:.1f}/{v['p99']:.1f}"
                                                               for hop, v in e["hops_ms"].items()))
        commits = [r["commit_ms"]["p50"] for r in e.get("relays", []) if r.get("commit_ms")]
        if commits:
            lines.append("      transaction commit p50 per relay (ms): " + ", ".join(f"{c:.1f}" for c in commits))
    if "tokenizer" in f:
        t = f["tokenizer"]
        ratio, per_s = t["ratio_count_request_to_raw"], t["tokens_per_s"]
        lines.append(f"  tokens/s on {t['requests']} gate prompts: raw tiktoken {per_s['raw']:,}, "
                     f"count_chat {per_s['count_chat']:,}, count_request {per_s['count_request']:,} -> ratio "
                     f"{ratio:.2f} (target >= {TARGET_TOKENIZER_RATIO}: {_mark(ratio >= TARGET_TOKENIZER_RATIO)})")
    return lines


def _ledger(led: dict[str, Any]) -> list[str]:
    lines = ["LEDGER"]
    if "rebuild" in led:
        r = led["rebuild"]
        us = r["us_per_entry"]
        ok = r["entries_per_s"] >= TARGET_REBUILD_PER_S
        lines.append(f"  rebuild of {r['entries']:,} entries ({r['tenants']} tenants): {r['entries_per_s']:,} "
                     f"entries/s (target >= {TARGET_REBUILD_PER_S:,}: {_mark(ok)})")
        lines.append(f"    us/entry: all {us['all']}; split: kafka read {us['kafka_read']}, "
                     f"avro decode {us['avro_decode']}, from_record {us['from_record']}, evolve {us['evolve']}")
    if "memory" in led:
        m = led["memory"]
        lines.append(f"  memory: {m['bytes_per_tenant']:,} B/tenant over {m['tenants']:,} tenants ({m['method']}) -> "
                     f"{m['projected_1m_tenants_mb']:,} MB per 1M tenants (target <= {TARGET_1M_TENANTS_MB}: "
                     f"{_mark(m['projected_1m_tenants_mb'] <= TARGET_1M_TENANTS_MB)})")
    if "memory_traced" in led:
        m = led["memory_traced"]
        lines.append(f"  tracemalloc over {m['tenants']:,} tenants: {m['bytes_per_tenant']:,} B/tenant; top: "
                     + ", ".join(f"{a['where']} {a['bytes_per_tenant']}" for a in m["top_allocations"][:5]))
    return lines


def _baseline(b: dict[str, Any], ours: dict[str, Any] | None) -> list[str]:
    cap, rate = b["capacity"], b["rate"]
    lines = [f"BASELINE: PostgreSQL row per tenant, SELECT ... FOR UPDATE + reserve + settle, {b['workers']} threads",
             f"  capacity {cap['decisions_per_s']:.0f} decisions/s; at {rate['offered_per_s']:g}/s: "
             f"{_lat(rate['latency_ms'])} ms (p50 p90 p99 p99.9 max), sustained={not rate['aborted']}; "
             f"mean us: count {rate['mean_us']['count_tokens']}, txn {rate['mean_us']['reserve_txn']}",
             ""]
    races = dict(b["race"])
    if ours:
        races["ledgergate (overspend from the ledger fold)"] = ours
    first = next(iter(races.values()))
    lines.append(f"RACE: {first['requests']} concurrent requests against a budget for {first['affordable']}")
    lines.append(f"  {'design':<48}{'allowed':>8}{'affordable':>11}{'overspend uUSD':>16}{'overspend %':>12}")
    for name, r in races.items():
        pct = 100 * r["overspend_micro_usd"] / max(1, r["limit_micro_usd"])
        lines.append(f"  {name:<48}{r['allowed']:>8}{r['affordable']:>11}{r['overspend_micro_usd']:>16,}{pct:>11.0f}%")
    return lines


def table(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [f"ledgergate bench {r['run']} ({r['mode']}): {m['nproc']} x {m['cpu_model']}, {m['memory_gb']} GB, "
             f"load avg at start {m['load_avg_at_start']}", f"command: {r['command']}", ""]
    if "gate" in r:
        lines += [*_gate(r["gate"]), ""]
    if "floors" in r:
        lines += [*_floors(r["floors"]), ""]
    if "ledger" in r:
        lines += [*_ledger(r["ledger"]), ""]
    if "baseline" in r:
        lines += [*_baseline(r["baseline"], r.get("gate", {}).get("race")), ""]
    noise = {k: v.get("foreign_cores") for k, v in r.get("phases", {}).items()}
    lines.append("other work on the machine during each phase (cores not ours): "
                 + ", ".join(f"{k} {v:.2f}" for k, v in noise.items() if v is not None))
    if r.get("noisy"):
        lines.append("WARNING: more than 0.3 cores went to other processes in some phase; figures are polluted")
    lines.append(f"results: {r.get('output', '-')}")
    return "\n".join(lines)
