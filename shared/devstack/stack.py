"""`ledgergate stack up|down|status`: the whole local stack, each part idempotent."""

from __future__ import annotations

from shared.devstack import kafka, postgres
from shared.settings import StackSettings


def up(s: StackSettings) -> list[str]:
    return [kafka.start(s), postgres.start(s)]


def down(s: StackSettings) -> list[str]:
    return [kafka.stop(s), postgres.stop(s)]


def status(s: StackSettings) -> list[str]:
    return [kafka.status(s), postgres.status(s)]
