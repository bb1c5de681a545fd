"""The token-counter's view of each owned tenant's redact patterns (tenant.redaction, written by the
budget-manager from the tenant's PolicyChanged): what its dead letters redact (shared/redaction.py)."""

from __future__ import annotations

from confluent_kafka import Message

from ledgergate.codec import codec
from ledgergate.connection import KafkaConnection
from ledgergate.errors import MalformedMessageError
from ledgergate.shared.kafka.reader import load_state, partition_of


class RedactionStore:
    def __init__(self) -> None:
        self.partitions: dict[int, dict[str, tuple[str, ...]]] = {}  # partition -> tenant -> patterns

    def load(self, connection: KafkaConnection, topic: str, partitions: list[int]) -> dict[int, int]:
        for p in partitions:
            self.partitions[p] = {}
        return load_state(connection, topic, partitions, self.apply)

    def revoked(self, partitions: list[int]) -> None:
        for p in partitions:
            self.partitions.pop(p, None)

    def apply(self, msg: Message) -> None:
        tenant_id = (msg.key() or b"").decode(errors="replace")
        tenants = self.partitions.setdefault(partition_of(msg), {})
        if msg.value() is None:
            tenants.pop(tenant_id, None)
            return
        name, rec = codec().decode(msg.value())
        if name != "TenantRedaction" or rec["tenant_id"] != tenant_id:
            raise MalformedMessageError(f"{name} keyed {tenant_id!r} does not belong on {msg.topic()}")
        tenants[tenant_id] = tuple(rec["patterns"])

    def patterns(self, partition: int, tenant_id: str) -> tuple[str, ...]:
        return self.partitions.get(partition, {}).get(tenant_id, ())
