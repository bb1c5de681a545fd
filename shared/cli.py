"""The `ledgergate` command: stack control, topic provisioning, running services, and operator tools."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from shared.errors import LedgergateError


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ledgergate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stack", help="start, stop or report the local Kafka + PostgreSQL stack")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=_stack)

    p = sub.add_parser("topics", help="create/align topics from schemas/topics.yaml, or list them")
    p.add_argument("action", choices=["apply", "list"])
    p.set_defaults(func=_topics)

    p = sub.add_parser("db", help="apply PostgreSQL migrations from deploy/migrations")
    p.add_argument("action", choices=["migrate"])
    p.set_defaults(func=_db)
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
