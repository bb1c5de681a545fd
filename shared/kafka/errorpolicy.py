"""The stream runtime's error policy, pluggable per service (in the manner of quix-streams'
`on_processing_error`): when a handler raises on a message, the policy says what happens to it.

- `Retry(after_ms)`: handle the same message again after a wait (the alerter's webhook); the loop stays
  alive meanwhile, and a SIGTERM during the wait ends the process without committing the batch;
- `DeadLetter(note)`: the message goes to the dead-letter topic with its origin and the error, in the
  batch's own delivery (never dropped, never a stuck partition);
- `Skip()`: the policy has recorded the message itself (the projector writes it to projection_errors
  in the same PostgreSQL transaction) and the batch moves past it;
- `Stop()`: the exception propagates, nothing of the batch commits, and the process exits for a fresh
  instance that rebuilds from the topics (a broken invariant).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Message

from ledgergate.errors import LedgergateError

# A policy that retries forever would wedge a partition: the runtime dead-letters past this many attempts.
ATTEMPTS_MAX = 50


@dataclass(frozen=True)
class Retry:
    after_ms: int

    def __post_init__(self) -> None:
        assert 0 <= self.after_ms <= 600_000, f"retry wait out of bounds: {self.after_ms} ms"


@dataclass(frozen=True)
class DeadLetter:
    note: str = ""  # put before the error's message in the dead letter (the alerter: how many attempts)


@dataclass(frozen=True)
class Skip:
    pass


@dataclass(frozen=True)
class Stop:
    pass


Verdict = Retry | DeadLetter | Skip | Stop
# (the message, what the handler raised, the attempt that raised it: 1 for the first) -> what to do.
ErrorPolicy = Callable[[Message, Exception, int], Verdict]


def dead_letter_first(_msg: Message, exc: Exception, _attempt: int) -> Verdict:
    """The stream services' policy: a broken invariant stops the process; anything else the input
    caused, typed (LedgergateError) or not, goes to the dead letters, so one poison message cannot stop
    a tenant partition."""
    if isinstance(exc, AssertionError):
        return Stop()
    return DeadLetter()


def error_code(exc: Exception) -> tuple[str, str]:
    """The code and message a dead letter or an error row records for what a handler raised."""
    if isinstance(exc, LedgergateError):
        return exc.code, exc.message
    return "internal_error", repr(exc)
