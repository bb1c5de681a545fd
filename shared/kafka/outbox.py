"""What a stream handler sees of the runtime: the Outbox it emits into and the Handler contract the
runtime calls (shared/kafka/runtime.py runs it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from confluent_kafka import Message

from ledgergate.shared.kafka.headers import Headers

Record = tuple[str, bytes | None, bytes, Headers | None, int | None]


@dataclass
class Outbox:
    """What one batch will produce: `records` inside the batch's transaction, `early` before it."""

    records: list[Record] = field(default_factory=list)
    early: list[Record] = field(default_factory=list)

    def emit(self, topic: str, key: bytes | None, value: bytes, headers: Headers | None = None,
             partition: int | None = None) -> None:
        """`partition` pins a record (the audit chain is per partition); otherwise the key decides."""
        self.records.append((topic, key, value, headers, partition))

    def emit_early(self, topic: str, key: bytes | None, value: bytes, headers: Headers | None = None) -> None:
        """A record whose content is a function of committed input alone (the handler reads only committed
        records, and its state is rebuilt from them): it is produced at once, outside the transaction, and
        acknowledged before the batch commits. A batch that aborts or a process that dies before its commit
        is replayed and writes it again, the same bytes, so a reader may see it twice but never two
        versions, and never loses it (docs/decisions/0006-one-commit-on-the-way.md)."""
        self.early.append((topic, key, value, headers, None))


class Handler(Protocol):
    def assigned(self, partitions: list[int]) -> dict[tuple[str, int], int] | None:
        """Rebuild state for these input partition numbers (co-partitioned across topics). May return
        start offsets for some input (topic, partition)s, overriding the committed ones: a service that
        folds an input topic at assignment continues from where its fold ended."""

    def revoked(self, partitions: list[int]) -> None: ...

    def handle(self, msg: Message, out: Outbox) -> None:
        """Decode, decide, evolve, emit. Raise LedgergateError for input that cannot be processed."""

    def idle(self, now_ms: int, out: Outbox) -> None:
        """Called about every `idle_interval_ms` inside a transaction (expiry, periodic work).

        Optional, not part of the protocol: `redaction_for(msg) -> Sequence[str]`, the redact patterns of the
        message's tenant, applied to its bytes before a dead letter keeps them (shared/redaction.py)."""
