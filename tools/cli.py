"""The `ledgergate` command: stack control, topic provisioning, running services, and operator tools."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

from ledgergate.errors import LedgergateError

if TYPE_CHECKING:
    from ledgergate.client import GateClient


def _stack(args: argparse.Namespace) -> int:
    from ledgergate.shared.settings import StackSettings
    from ledgergate.tools.devstack import stack

    action: Callable[[StackSettings], list[str]] = getattr(stack, args.action)
    for line in action(StackSettings()):
        print(line)
    return 0


def _kafka_tool(args: argparse.Namespace) -> int:
    import subprocess

    from ledgergate.shared.settings import KafkaSettings, StackSettings
    from ledgergate.tools.devstack import kafka

    cmd = kafka.tool_command(StackSettings(), args.tool, args.args, KafkaSettings().kafka_connection)
    return subprocess.run(cmd, check=False).returncode


def _topics(args: argparse.Namespace) -> int:
    from ledgergate.shared.kafka import provision
    from ledgergate.shared.settings import KafkaSettings

    settings = KafkaSettings()
    if args.action == "apply":
        specs = provision.load_specs(partitions=settings.kafka_partitions, prefix=settings.topic_prefix,
                                     prompt_retention_ms=settings.prompt_retention_ms)
        explicit = settings.kafka_partitions is not None
        for line in provision.apply(settings.kafka_connection, specs, require_count=explicit):
            print(line)
    else:
        for name, count in sorted(provision.describe(settings.kafka_connection).items()):
            print(f"{name:40s} {count:4d} partitions")
    return 0


def _db(args: argparse.Namespace) -> int:
    from ledgergate.shared import db
    from ledgergate.shared.settings import PostgresSettings

    applied = db.migrate(PostgresSettings().pg_dsn)
    print("applied: " + ", ".join(applied) if applied else "database schema is up to date")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ledgergate.shared.settings import KafkaSettings
    from ledgergate.tools.demo import run_demo

    summary = run_demo(KafkaSettings(), agents=args.agents, tenants=args.tenants, duration_s=args.duration_s,
                       rate_per_s=args.rate, seed=args.seed, start_services=not args.no_services,
                       keep_up=not args.exit)
    # Every request must get exactly one decision; a timeout means the pipeline lost one.
    return 1 if summary["timeouts"] or summary["errors"] else 0


def _bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ledgergate.tools.bench.runner import BenchOptions, run_bench

    if args.mode == "rate" and args.rate is None:
        raise LedgergateError("`ledgergate bench rate` needs a rate, e.g. `ledgergate bench rate 1000 --duration-s 20`")
    opts = BenchOptions(mode=args.mode, smoke=args.smoke, rate=args.rate or 1000.0, duration_s=args.duration_s,
                        step_s=args.step_s, tenants=args.tenants, output=Path(args.output) if args.output else None,
                        quiet_wait_s=args.quiet_wait_s, noisy_retries=args.noisy_retries,
                        command="ledgergate " + " ".join(sys.argv[1:]))
    if args.rates:
        opts.rates = tuple(float(r) for r in args.rates.split(","))
    results = run_bench(opts)
    # Harness correctness only: a lost decision fails the run, a slow one does not.
    gates = [results[run] for run in ("gate", "hot") if run in results]
    gates += [r["gate"] for r in results.get("metrics", {}).get("runs", [])]
    steps = [step for g in gates for step in (
        g["warmup"], *g.get("max", {}).get("steps", []), *([g["rate"]] if "rate" in g else []))]
    return 1 if any(s["missing"] and not s["aborted"] for s in steps) else 0


def _client(timeout_s: float = 10.0) -> GateClient:
    from ledgergate.client import GateClient
    from ledgergate.shared.settings import KafkaSettings

    settings = KafkaSettings()
    return GateClient(topic_prefix=settings.topic_prefix, timeout_s=timeout_s, connection=settings.kafka_connection)


def _request(args: argparse.Namespace) -> int:
    with _client(args.timeout_s) as client:
        decision = client.request(args.tenant, [{"role": "user", "content": args.prompt}], args.model,
                                  args.max_output_tokens, workflow_id=args.workflow or "",
                                  timeout_s=args.timeout_s)
    print(json.dumps(decision, indent=2, sort_keys=True))
    return 0


def _usd(text: str) -> int:
    """Dollars as typed ("100.5") to integer micro-USD, without a detour through float."""
    try:
        micro = Decimal(text) * 1_000_000
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an amount in USD: {text!r}") from None
    if not micro.is_finite() or micro < 0 or micro != micro.to_integral_value():
        raise argparse.ArgumentTypeError(f"USD amount must be >= 0 with at most 6 decimals: {text!r}")
    return int(micro)


def _budget(args: argparse.Namespace) -> int:
    if args.action == "set":
        scope = ("WORKFLOW", args.workflow) if args.workflow else ("TENANT", args.tenant)
        with _client() as client:
            print(client.send_command(args.tenant, "SET_LIMIT", args.usd, scope_type=scope[0], scope_id=scope[1],
                                      reason=args.reason))
        return 0
    return _budget_show(args.tenant)


def _budget_show(tenant: str) -> int:
    from confluent_kafka.admin import AdminClient

    from ledgergate.codec import codec
    from ledgergate.errors import TopicConfigError
    from ledgergate.kafka_config import admin_config
    from ledgergate.partitioning import murmur2_partition
    from ledgergate.shared.kafka.reader import read_to_end
    from ledgergate.shared.ledger.entries import ENTRY_TYPES, from_record
    from ledgergate.shared.ledger.state import TenantState, balances_view, evolve
    from ledgergate.shared.settings import KafkaSettings
    from ledgergate.topics import LEDGER

    settings = KafkaSettings()
    topic = settings.topic(LEDGER)
    meta = AdminClient(admin_config(settings.kafka_connection)).list_topics(topic, timeout=10).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise TopicConfigError(f"topic {topic} does not exist; run `ledgergate topics apply`")
    # The tenant's entries all sit on the partition Kafka's murmur2 partitioner chose for its key.
    partition = murmur2_partition(tenant.encode(), len(meta.partitions))
    state = TenantState(tenant)
    key = tenant.encode()
    for msg in read_to_end(settings.kafka_connection, topic, [partition]):
        if msg.key() != key or msg.value() is None:
            continue
        name, record = codec().decode(msg.value())
        if name in ENTRY_TYPES:
            evolve(state, from_record(name, record))
    print(json.dumps({"tenant_id": tenant, "period_id": state.period_id, "ledger_entries": state.entries,
                      "policy_version": state.policy_version, "open_reservations": len(state.holds),
                      "balances": balances_view(state)}, indent=2))
    return 0


def _state(args: argparse.Namespace) -> int:
    from ledgergate.tools.state import run_verify

    return run_verify(args.partition)


def _audit(args: argparse.Namespace) -> int:
    from ledgergate.tools.reports import run_replay

    return run_replay(args)


def _reconcile(args: argparse.Namespace) -> int:
    from ledgergate.tools.reports import run_reconcile

    return run_reconcile(args)


def _instant(text: str) -> int:
    from ledgergate.shared.units import parse_instant_ms

    try:
        return parse_instant_ms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _pct(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = Decimal(-1)
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"threshold must be a percentage >= 0: {text!r}")
    return value


def _apikey(args: argparse.Namespace) -> int:
    import psycopg

    from ledgergate.shared import apikeys as auth
    from ledgergate.shared import db
    from ledgergate.shared.settings import PostgresSettings

    dsn = PostgresSettings().pg_dsn
    db.migrate(dsn)  # idempotent: the api_keys table exists before the first key (bootstrap of an admin)
    with psycopg.connect(dsn) as conn:
        key = auth.create_key(conn, tenant_id=None if args.admin else args.tenant, is_admin=args.admin,
                              can_write=args.write, name=args.name)
    access = "admin" if key.is_admin else f"tenant {key.tenant_id}, {'read-write' if key.can_write else 'read-only'}"
    print(f"key id {key.key_id} ({access}); the key is shown only now:", file=sys.stderr)
    print(key.token)
    return 0


def _acls(args: argparse.Namespace) -> int:
    from ledgergate.tools import acls

    print(acls.render(args.prefix), end="")
    return 0


def _k8s(args: argparse.Namespace) -> int:
    from ledgergate.tools import k8s

    for path in k8s.write():
        print(path)
    return 0


def _monitoring(args: argparse.Namespace) -> int:
    from ledgergate.tools import monitoring

    for path in monitoring.write():
        print(path)
    return 0


def _run(args: argparse.Namespace) -> int:
    from ledgergate.tools import run

    if args.instances == 1:
        run.run(args.service)
        return 0
    return run.run_instances(args.service, args.instances)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ledgergate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run one service in the foreground (token-counter, policy, budget-manager, router, "
                                   "alerter, ...)")
    p.add_argument("service")
    p.add_argument("--instances", type=int, default=1, choices=range(1, 65), metavar="N",
                   help="run N instances (ids 0..N-1) under a supervisor that restarts any that exits; their "
                        "logs go to <data dir>/logs/<service>[@i].log. Useful up to the topics' partition count")
    p.set_defaults(func=_run)

    p = sub.add_parser("acls", help="print the kafka-acls.sh commands of a secured cluster (deploy/ACLS.md)")
    p.add_argument("--prefix", default="${LEDGERGATE_TOPIC_PREFIX}",
                   help="the install's topic prefix (default: left to the shell variable)")
    p.set_defaults(func=_acls)

    p = sub.add_parser("k8s", help="render the Kubernetes manifests into deploy/k8s/ (generated from the code)")
    p.add_argument("action", choices=["render"])
    p.set_defaults(func=_k8s)

    p = sub.add_parser("monitoring", help="render deploy/prometheus/prometheus.yml and the Grafana dashboard in "
                                          "deploy/grafana/ (generated from the code)")
    p.add_argument("action", choices=["render"])
    p.set_defaults(func=_monitoring)

    p = sub.add_parser("stack", help="start, stop or report the local Kafka + PostgreSQL stack; clean = stop and "
                                     "delete its data directory (LEDGERGATE_DATA_DIR)")
    p.add_argument("action", choices=["up", "down", "status", "clean"])
    p.set_defaults(func=_stack)

    p = sub.add_parser("kafka-tool", help="run one of Kafka's command-line tools from .cache/kafka-libs, e.g. "
                                          "`ledgergate kafka-tool topics --list` (--bootstrap-server defaults to "
                                          "LEDGERGATE_KAFKA_BOOTSTRAP)")
    p.add_argument("tool", choices=["console-consumer", "console-producer", "consumer-groups", "topics",
                                    "get-offsets"])
    p.add_argument("args", nargs=argparse.REMAINDER, help="passed to the tool unchanged")
    p.set_defaults(func=_kafka_tool)

    p = sub.add_parser("topics", help="create/align topics from schemas/topics.yaml, or list them")
    p.add_argument("action", choices=["apply", "list"])
    p.set_defaults(func=_topics)

    p = sub.add_parser("db", help="apply PostgreSQL migrations from deploy/migrations")
    p.add_argument("action", choices=["migrate"])
    p.set_defaults(func=_db)

    p = sub.add_parser("demo", help="start the services, run a simulated agent fleet through them, print a summary")
    p.add_argument("--agents", type=int, default=300)
    p.add_argument("--tenants", type=int, default=5)
    p.add_argument("--duration-s", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=150.0, help="requests per second, open loop")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-services", action="store_true", help="use services that are already running")
    p.add_argument("--exit", action="store_true",
                   help="end after the summary instead of leaving the dashboard and /metrics up until Ctrl-C")
    p.set_defaults(func=_demo)

    p = sub.add_parser("bench", help="measure the gate on the local stack beside its floors (see BENCHMARKS.md)")
    p.add_argument("mode", nargs="?", default="all",
                   choices=["all", "max", "rate", "floors", "ledger", "baseline", "hot", "scale", "restart", "egress",
                            "proxy", "cache", "metrics"],
                   help="all (default): max search, rate 1000/s, race, floors, ledger, PostgreSQL baseline, "
                        "hot tenant (gate and baseline), scale (the max search with two instances of each "
                        "service), restart (to the first decision on a long snapshotted ledger), egress (bytes "
                        "per decision to 1/10/50 clients), proxy (what the OpenAI-compatible proxy adds over "
                        "calling the stand-in directly and over the gate), cache (hit rate, hit and miss "
                        "latency and cost avoided with 20 %% repeated prompts, beside a tenant without the "
                        "cache); metrics (not in all: the max search and "
                        "the rate run with the services' metrics on and off, ABBA, as ratios)")
    p.add_argument("rate", nargs="?", type=float, help="requests per second for `bench rate R`")
    p.add_argument("--duration-s", type=float, default=20.0, help="length of the fixed-rate run")
    p.add_argument("--step-s", type=float, default=4.0, help="length of each max-search step")
    p.add_argument("--rates", default="", help="max-search rates, comma separated (default 250,...,8000)")
    p.add_argument("--tenants", type=int, default=1000)
    p.add_argument("--smoke", action="store_true", help="a few seconds of small load: checks the harness only")
    p.add_argument("--output", default="", help="JSON path (default tools/bench/results/<timestamp>.json)")
    p.add_argument("--quiet-wait-s", type=float, default=0.0,
                   help="first wait up to this long for the machine to be idle (shared machines)")
    p.add_argument("--noisy-retries", type=int, default=0,
                   help="run a phase again (up to N times) when other processes took > 0.3 cores during it")
    p.set_defaults(func=_bench)

    p = sub.add_parser("request", help="ask the gate once and print its decision as JSON")
    p.add_argument("--tenant", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-output-tokens", type=int, default=256)
    p.add_argument("--workflow", default="")
    p.add_argument("--timeout-s", type=float, default=10.0)
    p.set_defaults(func=_request)

    p = sub.add_parser("budget", help="set a tenant or workflow budget, or show a tenant's balances")
    budget = p.add_subparsers(dest="action", required=True)
    b = budget.add_parser("set", help="send SET_LIMIT for the tenant (or one of its workflows); prints the command id")
    b.add_argument("--tenant", required=True)
    b.add_argument("--usd", type=_usd, required=True, help="monthly limit in USD, e.g. 100.0")
    b.add_argument("--workflow", default="")
    b.add_argument("--reason", default="")
    b = budget.add_parser("show", help="fold the tenant's budget.ledger partition and print its balances")
    b.add_argument("--tenant", required=True)
    p.set_defaults(func=_budget)

    p = sub.add_parser("apikey", help="create an API key for the admin API (prints the key once)")
    keys = p.add_subparsers(dest="action", required=True)
    k = keys.add_parser("create", help="store the key's SHA-256 in PostgreSQL and print the key on stdout")
    who = k.add_mutually_exclusive_group(required=True)
    who.add_argument("--tenant", help="a key that reaches only this tenant")
    who.add_argument("--admin", action="store_true", help="a key that reaches every tenant and admin routes")
    k.add_argument("--write", action="store_true", help="tenant key may also change budgets and policy")
    k.add_argument("--name", default="", help="a label, e.g. who holds the key")
    p.set_defaults(func=_apikey)

    p = sub.add_parser("audit", help="governance tools on the hash-chained audit.log")
    audit = p.add_subparsers(dest="action", required=True)
    a = audit.add_parser("replay", help="verify every partition's hash chain, rebuild spend per tenant/model/day "
                                        "and reconcile it with the ledger fold (and PostgreSQL); exit 1 on a problem")
    a.add_argument("--from", dest="from_ms", type=_instant, metavar="TIME",
                   help="ISO 8601 time (UTC if naive) or epoch ms")
    a.add_argument("--tenant", help="only this tenant's partition (its chain is verified whole)")
    a.add_argument("--topic", help="audit topic to read (default: audit.log under LEDGERGATE_TOPIC_PREFIX)")
    a.add_argument("--ledger-topic", help="ledger topic (default: budget.ledger under the prefix)")
    a.add_argument("--json", help="also write the full report to this file")
    a.add_argument("--pg-dsn", help="also reconcile against the PostgreSQL usage table at this DSN")
    a.add_argument("--progress-every", type=int, default=100_000, help="progress line on stderr every N records")
    p.set_defaults(func=_audit)

    p = sub.add_parser("reconcile", help="compare a provider's usage export (docs/invoice-csv.md) with metered "
                                         "usage per day and model; exit 1 when drift exceeds the threshold")
    p.add_argument("--invoice", required=True, help="CSV: date,model,input_tokens,cached_input_tokens,"
                                                    "output_tokens,reasoning_tokens,cost_usd")
    p.add_argument("--threshold-pct", type=_pct, default=Decimal(2))
    p.add_argument("--pg-dsn", help="read the PostgreSQL usage table (else, or when it is missing, usage.metered)")
    p.add_argument("--topic", help="usage topic (default: usage.metered under LEDGERGATE_TOPIC_PREFIX)")
    p.add_argument("--json", help="also write the full report to this file")
    p.add_argument("--progress-every", type=int, default=100_000)
    p.set_defaults(func=_reconcile)

    p = sub.add_parser("state", help="operators' checks of the services' state")
    st = p.add_subparsers(dest="action", required=True)
    v = st.add_parser("verify", help="fold budget.ledger from offset 0 and compare it with the latest snapshots on "
                                     "budget.snapshots; exit 1 on a mismatch or an unusable record")
    v.add_argument("--partition", type=int, action="append", help="only this partition (repeatable)")
    p.set_defaults(func=_state)

    from ledgergate.tools import prices

    prices.register(sub)  # `prices import | diff | show`, in tools/prices.py
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except LedgergateError as exc:
        print(f"ledgergate: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
