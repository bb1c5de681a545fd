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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ledgergate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stack", help="start, stop or report the local Kafka + PostgreSQL stack")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=_stack)
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
