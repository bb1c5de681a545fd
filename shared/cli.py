"""The `ledgergate` command: stack control, topic provisioning, running services, and operator tools."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

from shared.errors import LedgergateError

if TYPE_CHECKING:
    from shared.client import GateClient


def _stack(args: argparse.Namespace) -> int:
    from shared.devstack import stack
    from shared.settings import StackSettings

    action: Callable[[StackSettings], list[str]] = getattr(stack, args.action)
    for line in action(StackSettings()):
        print(line)
    return 0


def _topics(args: argparse.Namespace) -> int:
    from shared.kafka import topics
    from shared.settings import KafkaSettings

    settings = KafkaSettings()
    if args.action == "apply":
        specs = topics.load_specs(partitions=settings.kafka_partitions, prefix=settings.topic_prefix)
        for line in topics.apply(settings.kafka_bootstrap, specs):
            print(line)
    else:
        for name, count in sorted(topics.describe(settings.kafka_bootstrap).items()):
            print(f"{name:40s} {count:4d} partitions")
    return 0


def _db(args: argparse.Namespace) -> int:
    from shared import db
    from shared.settings import PostgresSettings

    applied = db.migrate(PostgresSettings().pg_dsn)
    print("applied: " + ", ".join(applied) if applied else "database schema is up to date")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from shared.demo import run_demo
    from shared.settings import KafkaSettings

    summary = run_demo(KafkaSettings(), agents=args.agents, tenants=args.tenants, duration_s=args.duration_s,
                       rate_per_s=args.rate, seed=args.seed, start_services=not args.no_services)
    # Every request must get exactly one decision; a timeout means the pipeline lost one.
    return 1 if summary["timeouts"] or summary["errors"] else 0


def _client(timeout_s: float = 10.0) -> GateClient:
    from shared.client import GateClient
    from shared.settings import KafkaSettings

    settings = KafkaSettings()
    return GateClient(settings.kafka_bootstrap, settings.topic_prefix, timeout_s=timeout_s)


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

    from shared.codec import codec
    from shared.errors import TopicConfigError
    from shared.kafka.config import admin_config
    from shared.kafka.partitioning import murmur2_partition
    from shared.kafka.reader import read_to_end
    from shared.kafka.topics import LEDGER
    from shared.ledger.entries import ENTRY_TYPES, from_record
    from shared.ledger.state import TenantState, balances_view, evolve
    from shared.settings import KafkaSettings

    settings = KafkaSettings()
    topic = settings.topic(LEDGER)
    meta = AdminClient(admin_config(settings.kafka_bootstrap)).list_topics(topic, timeout=10).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise TopicConfigError(f"topic {topic} does not exist; run `ledgergate topics apply`")
    # The tenant's entries all sit on the partition Kafka's murmur2 partitioner chose for its key.
    partition = murmur2_partition(tenant.encode(), len(meta.partitions))
    state = TenantState(tenant)
    key = tenant.encode()
    for msg in read_to_end(settings.kafka_bootstrap, topic, [partition]):
        if msg.key() != key or msg.value() is None:
            continue
        name, record = codec().decode(msg.value())
        if name in ENTRY_TYPES:
            evolve(state, from_record(name, record))
    print(json.dumps({"tenant_id": tenant, "period_id": state.period_id, "ledger_entries": state.entries,
                      "policy_version": state.policy_version, "open_reservations": len(state.holds),
                      "balances": balances_view(state)}, indent=2))
    return 0


def _run(args: argparse.Namespace) -> int:
    from shared import run

    run.run(args.service)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ledgergate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run one service in the foreground (token-counter, policy, budget-manager, router)")
    p.add_argument("service")
    p.set_defaults(func=_run)

    p = sub.add_parser("stack", help="start, stop or report the local Kafka + PostgreSQL stack")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=_stack)

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
    p.set_defaults(func=_demo)

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
