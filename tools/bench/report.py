"""The readable table `ledgergate bench` prints, beside the design's targets and floors."""

from __future__ import annotations

from typing import Any

# The hot-path issue's targets, each a ratio to what the same run measured beside it (or, for p99 and the
# low-rate p50, a bound the issue states in ms).
TARGET_DPS_VS_BASELINE = 3.0
TARGET_P50_VS_FLOOR = 2.0  # at 1,000/s, against the 4 plain relays' p50
TARGET_P99_MS = 50.0  # at 1,000/s
TARGET_LOW_RATE_P50_MS = 10.0  # at 100/s (the warm-up step)
TARGET_HOT_VS_BASELINE = 3.0
PLAIN_RELAYS = "4 relays, no transactions"
TARGET_TOKENIZER_RATIO = 0.70
TARGET_REBUILD_PER_S = 200_000
TARGET_1M_TENANTS_MB = 1024
TARGET_RESTART_S = 5.0  # to the first decision, with a 10M-entry ledger
TARGET_METRICS_THROUGHPUT = 0.97  # with metrics / without: they cost at most 3 % of throughput
TARGET_CACHE_MISS_RATIO = 1.10  # within the noise of a closed-loop p50 on a shared machine
TARGET_PROXY_OVER_GATE_MS = 2.0  # the proxy's p50 over the stand-in called directly plus the gate's own p50


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
        lines.append(f"  highest sustained: {m['highest_sustained_per_s']:.0f} decisions/s"
                     + (f"; {sat:.0f}/s while saturated" if sat is not None else ""))
    focus = g.get("rate") or (g.get("max", {}).get("steps") or [g["warmup"]])[-1]
    lat = focus["latency_ms"]
    if "rate" in g:
        lines.append(f"  {focus['label']}: p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, "
                     f"sustained={focus['sustained']}")
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


def _target(lines: list[str], what: str, measured: str, ok: bool | None) -> None:
    verdict = "not measured in this run" if ok is None else _mark(ok)
    lines.append(f"  {what:<58} {measured:<44} {verdict}")


def _ratio(ours: float | None, base: float | None) -> float | None:
    return None if ours is None or not base else ours / base


def _vs_baseline(lines: list[str], what: str, ours: float | None, base: float | None, target: float) -> None:
    ratio = _ratio(ours, base)
    _target(lines, f"{what} >= {target:g}x the PostgreSQL row lock",
            f"{ours or 0:.0f} / {base or 0:.0f} = {ratio:.2f}x" if ratio is not None else "-",
            None if ratio is None else ratio >= target)


def targets(r: dict[str, Any]) -> list[str]:
    """Every target of the hot-path issue beside its measured ratio, and where the run stands."""
    lines = ["TARGETS (ratios to what this run measured beside the gate)"]
    gate, base = r.get("gate", {}), r.get("baseline", {})
    _vs_baseline(lines, "sustained decisions/s", gate.get("max", {}).get("highest_sustained_per_s"),
                 base.get("capacity", {}).get("decisions_per_s"), TARGET_DPS_VS_BASELINE)
    at_rate = gate.get("rate")
    floor = r.get("floors", {}).get("echo", {}).get(PLAIN_RELAYS, {}).get("latency_ms", {}).get("p50")
    if at_rate is not None:
        p50, p99 = at_rate["latency_ms"]["p50"], at_rate["latency_ms"]["p99"]
        ratio = _ratio(p50, floor)
        _target(lines, f"at {at_rate['offered_per_s']:g}/s p50 <= {TARGET_P50_VS_FLOOR:g}x the 4 plain relays",
                f"{p50:.1f} / {floor:.1f} ms = {ratio:.1f}x" if ratio is not None else f"{p50:.1f} ms, no floor",
                None if ratio is None else ratio <= TARGET_P50_VS_FLOOR and at_rate["sustained"])
        _target(lines, f"at {at_rate['offered_per_s']:g}/s p99 <= {TARGET_P99_MS:g} ms", f"{p99:.1f} ms",
                p99 <= TARGET_P99_MS and at_rate["sustained"])
    else:
        _target(lines, "at 1000/s p50 and p99", "-", None)
    if "warmup" in gate:
        low = gate["warmup"]
        _target(lines, f"at {low['offered_per_s']:g}/s p50 <= {TARGET_LOW_RATE_P50_MS:g} ms",
                f"{low['latency_ms']['p50']:.1f} ms", low["latency_ms"]["p50"] <= TARGET_LOW_RATE_P50_MS)
    hot, hot_base = r.get("hot", {}), r.get("hot_baseline", {})
    _vs_baseline(lines, "hot tenant: decisions/s", hot.get("max", {}).get("highest_sustained_per_s"),
                 hot_base.get("capacity", {}).get("decisions_per_s"), TARGET_HOT_VS_BASELINE)
    if hot and hot_base:
        over = (hot["hot_tenant"]["overspend_micro_usd"], hot_base["overspend_micro_usd"])
        _target(lines, "hot tenant: neither overspends", f"ledgergate {over[0]:,} uUSD, PostgreSQL {over[1]:,} uUSD",
                over == (0, 0))
    else:
        _target(lines, "hot tenant: neither overspends", "-", None)
    cost = r.get("metrics")
    if cost:
        ratio = cost["ratios"]["saturated_throughput"]
        _target(lines, "metrics cost <= 3 % of throughput (saturated, with / without)",
                f"{cost['with']['saturated_per_s'] or 0:.0f} / {cost['without']['saturated_per_s'] or 0:.0f} = "
                f"{ratio:.3f}" if ratio is not None else "- (no step saturated)",
                None if ratio is None else ratio >= TARGET_METRICS_THROUGHPUT)
    via = r.get("proxy", {}).get("proxy")
    if via:
        low, high = via["overhead_over_gate_ms_p50_ci95"]
        _target(lines, f"proxy adds <= {TARGET_PROXY_OVER_GATE_MS:g} ms p50 over the gate (non-streaming)",
                f"{via['proxy_overhead_over_gate_ms_p50']:.1f} ms (95 % {low:.1f}..{high:.1f}; gate "
                f"{via['gate_ms_p50']:.1f} ms)", via["proxy_overhead_over_gate_ms_p50"] <= TARGET_PROXY_OVER_GATE_MS)
    cached = r.get("cache")
    if cached:
        _target(lines, "cache: a request it does not answer is not slowed (on-miss p50 / off p50 <= 1.10)",
                f"{cached['miss_over_off_p50']} (hit rate {cached['hit_rate']:.0%})",
                None if cached["miss_over_off_p50"] is None else cached["miss_over_off_p50"] <= TARGET_CACHE_MISS_RATIO)
    restart = r.get("restart")
    if restart:
        long, empty = restart["long_ledger"], restart["empty_ledger"]
        _target(lines, f"restart to first decision <= {TARGET_RESTART_S:g} s ({long['ledger_entries']:,}-entry ledger)",
                f"{long['first_decision_s']:.1f} s (empty ledger {empty['first_decision_s']:.1f} s)",
                long["first_decision_s"] <= TARGET_RESTART_S)
    return lines


def _hot(h: dict[str, Any], b: dict[str, Any] | None) -> list[str]:
    t = h["hot_tenant"]
    last = (h.get("max", {}).get("steps") or [{}])[-1]
    lines = [f"HOT TENANT: {t['tenant_id']} sends {100 * t['share_of_requests']:.0f} % of the requests, the rest Zipf "
             f"over {h['tenants']} tenants; its limit {t['limit_micro_usd']:,} uUSD",
             f"  {'step':<16}{'offered/s':>10}{'decided/s':>10}  {'p50':>8}  {'p90':>8}  {'p99':>8}  {'p99.9':>8}"
             f"  {'max':>8}  sustained"]
    for s in [h["warmup"], *h.get("max", {}).get("steps", [])]:
        lines.append(f"  {s['label']:<16}{s['offered_per_s']:>10.0f}{s['decisions_per_s']:>10.0f}  "
                     f"{_lat(s['latency_ms'])}  {'yes' if s['sustained'] else 'NO'}")
    lines.append(f"  ledgergate: highest sustained {h.get('max', {}).get('highest_sustained_per_s', 0):.0f} "
                 f"decisions/s; hot tenant's lowest headroom in the ledger fold {t['min_headroom_micro_usd']:,} uUSD"
                 f" (not allowed in the last step, every tenant: {last.get('not_allowed_reasons', {})})")
    if b:
        cap = b["capacity"]
        lines.append(f"  PostgreSQL row lock ({b['workers']} threads, {cap['sent']} requests at once): "
                     f"{cap['decisions_per_s']:.0f} decisions/s, p50 {cap['latency_ms']['p50']:.1f} ms; "
                     f"overspend {b['overspend_micro_usd']:,} uUSD over {b['overspent_tenants']} tenants")
    return lines


def _scale(two: dict[str, Any], one: dict[str, Any] | None) -> list[str]:
    best2 = two.get("max", {}).get("highest_sustained_per_s", 0.0)
    best1 = (one or {}).get("max", {}).get("highest_sustained_per_s")
    busy = [s.get("cpu", {}).get("machine_busy_cores") for s in two.get("max", {}).get("steps", [])]
    lines = ["SCALE: the same max search with two instances of each of the four services"]
    ratio = f" = {best2 / best1:.2f}x the one instance of this run ({best1:.0f}/s)" if best1 else ""
    lines.append(f"  two instances: highest sustained {best2:.0f} decisions/s{ratio}; machine busy cores per step "
                 + ", ".join(f"{b:.2f}" for b in busy if b is not None))
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
    if "memory_unpacked" in led:
        m = led["memory_unpacked"]
        lines.append(f"  memory, every tenant unpacked: {m['bytes_per_tenant']:,} B/tenant over {m['tenants']:,} "
                     f"tenants -> {m['projected_1m_tenants_mb']:,} MB per 1M tenants")
    if "memory" in led:
        m = led["memory"]
        lines.append(f"  memory ({m.get('layout', '')}): {m['bytes_per_tenant']:,} B/tenant over {m['tenants']:,} "
                     f"tenants ({m['method']}) -> "
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


def _restart(r: dict[str, Any]) -> list[str]:
    long, empty = r["long_ledger"], r["empty_ledger"]
    lines = ["RESTART: budget-manager and policy started (token-counter, router running), a request sent at once, "
             "until its decision",
             f"  empty ledger: {empty['first_decision_s']:.1f} s (the floor: process start, imports, group joins)",
             f"  {long['ledger_entries']:,} entries over {long['periods']} months, {long['tenants']:,} tenants, "
             f"snapshot {long['snapshot_mb']} MB, tail {long['tail_entries']:,} entries: "
             f"{long['first_decision_s']:.1f} s ({long['outcome']})"]
    for name, part in long["restored"].items():
        lines.append(f"    {name}: restored in {part['seconds']} s (snapshot read {part['snapshot_read_s']} s, "
                     f"{part['snapshot_tenants']} tenants; tail {part['tail_entries']:,} folded, "
                     f"{part['tail_skipped']} skipped); RSS {long['rss_mb'].get(name)} MB")
    lines.append(f"  building that ledger (generate, fold, produce) took {long['build_s']} s")
    return lines


def _egress(e: dict[str, Any]) -> list[str]:
    lines = [f"CLIENT EGRESS: broker bytes to the clients' decision consumers per decision, each client one tenant, "
             f"{e['rate_per_s']:g} requests/s, {e['partitions']} partitions"]
    by = {(run["clients"], run["mode"]): run for run in e["runs"]}
    for clients in sorted({run["clients"] for run in e["runs"]}):
        every, own = by.get((clients, "all")), by.get((clients, "tenant"))
        if every and own:
            lines.append(f"  {clients:>3} clients: every partition {every['bytes_per_decision']:,} B/decision, "
                         f"own partition {own['bytes_per_decision']:,} B/decision "
                         f"({every['bytes_per_decision'] / max(1, own['bytes_per_decision']):.1f}x less)")
    return lines


# (process, column heading)
PROXY_PROCESSES = (("proxy", "proxy"), ("standin", "standin"), ("bench", "bench"), ("token-counter", "counter"),
                   ("policy", "policy"), ("budget-manager", "budget"), ("router", "router"), ("kafka", "kafka"))


def _cache(c: dict[str, Any]) -> list[str]:
    lat = c["latency_ms"]
    lines = [f"CACHE: {c['calls_per_tenant']} closed-loop calls per tenant ({c['model']}), {c['repeat_share']:.0%} of "
             f"prompts repeated; tenant `on` caches, `off` does not",
             f"  hit rate {c['hit_rate']:.1%} ({c['hits']} hits, {c['repeats']} repeats); avoided "
             f"{c['avoided_micro_usd']:,} micro-USD",
             f"  {'ms':<10}{'p50':>8}{'p99':>8}"]
    for name, figures in lat.items():
        lines.append(f"  {name:<10}{figures['p50']:>8.2f}{figures['p99']:>8.2f}")
    lines.append(f"  on-miss / off p50 = {c['miss_over_off_p50']}; hit / miss p50 = {c.get('hit_over_miss_p50')}")
    return lines


def _proxy(p: dict[str, Any]) -> list[str]:
    lat, cpu = p["latency_ms"], p["cpu_us_per_call"]
    lines = [f"PROXY: {p['calls_per_mode']} closed-loop calls per mode ({p['model']}, max_tokens {p['max_tokens']}), "
             f"modes taking turns of {p['block']}; the stand-in, the four services and the proxy as processes",
             f"  {'ms':<15}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}   CPU us/call"
             + "".join(f"{head:>8}" for _, head in PROXY_PROCESSES)]
    for mode, figures in lat.items():
        lines.append(f"  {mode:<15}" + "".join(f"{figures[k]:>8.2f}" for k in ("p50", "p90", "p99", "max"))
                     + " " * 14 + "".join(f"{cpu.get(mode, {}).get(n, 0):>8}" for n, _ in PROXY_PROCESSES))
    for via in ("proxy", "proxy_stream"):
        f = p.get(via)
        if f:
            low, high = f["overhead_over_gate_ms_p50_ci95"]
            lines.append(f"  {via}: adds {f['proxy_added_ms_p50']:.2f} ms p50 over calling the stand-in directly "
                         f"({f['proxy_added_to_gate_p50']:.2f}x the gate's {f['gate_ms_p50']:.2f} ms); over the gate "
                         f"{f['proxy_overhead_over_gate_ms_p50']:.2f} ms (95 % {low:.2f}..{high:.2f}, paired "
                         f"{f['paired_overhead_over_gate_ms_p50']:.2f}; {f['overhead_over_gate_to_gate_p50']:.2f}x "
                         f"the gate's p50)")
    return lines


def _metrics(c: dict[str, Any]) -> list[str]:
    on, off, ratio = c["with"], c["without"], c["ratios"]

    def cell(key: str, unit: str, fmt: str = ".0f") -> str:
        a, b = on[key], off[key]
        if a is None or b is None:
            return f"  {key}: -"
        return f"  {key:<34}{a:>10{fmt}}{b:>10{fmt}} {unit:<12}{a / b if b else 0:>8.3f}"

    lines = [f"METRICS COST: the gate with the services' metrics on and off, runs in the order {', '.join(c['order'])}",
             f"  {'':<34}{'with':>10}{'without':>10} {'':<12}{'ratio':>8}",
             cell("saturated_per_s", "decisions/s"), cell("highest_sustained_per_s", "decisions/s"),
             cell("rate_p50_ms", "ms", ".1f"), cell("rate_p99_ms", "ms", ".1f"),
             cell("rate_cpu_us_per_decision_services", "CPU us/dec")]
    for service, us in on["rate_cpu_us_per_decision"].items():
        other = off["rate_cpu_us_per_decision"].get(service)
        lines.append(f"    {service:<32}{us or 0:>10.0f}{other or 0:>10.0f} CPU us/dec")
    h = c.get("handler")
    if h:
        lines.append(f"  the router's handler in-process, best of {h['rounds']} rounds: {h['router_handle_us_with']} "
                     f"us with, {h['router_handle_us_without']} us without per decision = {h['ratio']:.3f} "
                     f"(medians: {h.get('median_ratio', 0):.3f})")
    lines.append(f"  one /metrics render (HTTP thread, not the loop): {c['scrape']['render_ms']} ms, "
                 f"{c['scrape']['bytes']:,} B; saturated throughput ratio {ratio['saturated_throughput']}")
    return lines


def table(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [f"ledgergate bench {r['run']} ({r['mode']}): {m['nproc']} x {m['cpu_model']}, {m['memory_gb']} GB, "
             f"load avg at start {m['load_avg_at_start']}", f"command: {r['command']}", ""]
    lines += [*targets(r), ""]
    if "gate" in r:
        lines += [*_gate(r["gate"]), ""]
    if "scale" in r:
        lines += [*_scale(r["scale"], r.get("gate")), ""]
    if "hot" in r:
        lines += [*_hot(r["hot"], r.get("hot_baseline")), ""]
    if "floors" in r:
        lines += [*_floors(r["floors"]), ""]
    if "ledger" in r:
        lines += [*_ledger(r["ledger"]), ""]
    if "baseline" in r:
        lines += [*_baseline(r["baseline"], r.get("gate", {}).get("race")), ""]
    if "restart" in r:
        lines += [*_restart(r["restart"]), ""]
    if "egress" in r:
        lines += [*_egress(r["egress"]), ""]
    if "proxy" in r:
        lines += [*_proxy(r["proxy"]), ""]
    if "cache" in r:
        lines += [*_cache(r["cache"]), ""]
    if "metrics" in r:
        lines += [*_metrics(r["metrics"]), ""]
    noise = {k: v.get("foreign_cores") for k, v in r.get("phases", {}).items()}
    lines.append("other work on the machine during each phase (cores not ours): "
                 + ", ".join(f"{k} {v:.2f}" for k, v in noise.items() if v is not None))
    if r.get("noisy"):
        lines.append("WARNING: more than 0.3 cores went to other processes in some phase; figures are polluted")
    lines.append(f"results: {r.get('output', '-')}")
    return "\n".join(lines)
