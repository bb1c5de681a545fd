"""The token-counter's prompt templates: every version the owned tenants registered (prompt.templates, written
by the API only), read whole on assignment and then live, as tenant.credentials are. A request names a
version; the counter renders it (ledgergate.templates) as the request's first message."""

from __future__ import annotations

from confluent_kafka import Message

from ledgergate.codec import codec
from ledgergate.connection import KafkaConnection
from ledgergate.errors import MalformedMessageError
from ledgergate.shared.kafka.reader import load_state, partition_of
from ledgergate.templates import Template, record_key


class TemplateStore:
    def __init__(self) -> None:
        # partition -> tenant -> "<id>@<version>" -> template. Per partition: a revoked one's go with it.
        self.partitions: dict[int, dict[str, dict[str, Template]]] = {}

    def load(self, connection: KafkaConnection, topic: str, partitions: list[int]) -> dict[int, int]:
        """Every template of `partitions`; their end offsets, where the live consumer continues."""
        for p in partitions:
            self.partitions[p] = {}
        return load_state(connection, topic, partitions, self.apply)

    def revoked(self, partitions: list[int]) -> None:
        for p in partitions:
            self.partitions.pop(p, None)

    def apply(self, msg: Message) -> Template | None:
        value = msg.value()
        if value is None:  # a tombstone: the API withdrew a version
            tenant_id, _, ref = (msg.key() or b"").decode(errors="replace").partition("/")
            self.partitions.get(partition_of(msg), {}).get(tenant_id, {}).pop(ref, None)
            return None
        name, rec = codec().decode(value)
        if name != "PromptTemplate":
            raise MalformedMessageError(f"{name} does not belong on {msg.topic()}")
        if msg.key() != record_key(rec["tenant_id"], rec["template_id"], rec["version"]):
            raise MalformedMessageError(f"a PromptTemplate keyed {msg.key()!r}, not by its tenant, id and version")
        template = Template(rec["template_id"], rec["version"], rec["text"], rec["role"])
        tenants = self.partitions.setdefault(partition_of(msg), {})
        tenants.setdefault(rec["tenant_id"], {})[template.ref] = template
        return template

    def get(self, partition: int, tenant_id: str, ref: str) -> Template | None:
        return self.partitions.get(partition, {}).get(tenant_id, {}).get(ref)

    def __len__(self) -> int:
        return sum(len(t) for tenants in self.partitions.values() for t in tenants.values())
