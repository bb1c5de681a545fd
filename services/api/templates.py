"""Prompt templates (ledgergate.templates): register a version, list and read a tenant's versions.

The compacted prompt.templates topic is the store: no table holds them. A version is a PromptTemplate
record keyed `<tenant_id>/<template_id>@<version>` (services/token_counter/templates.py: record_key) and
produced to the tenant's partition explicitly (murmur2 of the tenant id, the partition every other topic
keys it to), so the token-counter owning the tenant's requests loads its templates with them. What a
tenant has is therefore what that one partition holds for it, read to its end (reader.read_to_end) on
every call: bounded by MAX_VERSIONS_PER_TENANT per tenant, and the API is the topic's only writer.

A version is immutable. A registration holds a PostgreSQL advisory transaction lock on the tenant while
it reads the partition, compares and produces (waiting for Kafka's acknowledgement), so two API instances
registering one tenant's templates take turns: the same (template_id, version) twice with the same text
and role is the one record (idempotent), with another text or role a 409, never two records the
token-counter would apply in turn.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import psycopg
from confluent_kafka import KafkaException, Message

from ledgergate import templates, topics
from ledgergate.codec import codec
from ledgergate.errors import LedgergateError, MalformedMessageError
from ledgergate.partitioning import murmur2_partition
from ledgergate.services.api.commands import CommandPublisher
from ledgergate.services.api.errors import Conflict, Unavailable
from ledgergate.services.api.log import log
from ledgergate.shared.errors import ReadTimeoutError
from ledgergate.shared.kafka.reader import offset_of, partition_count, read_to_end
from ledgergate.shared.settings import KafkaSettings
from ledgergate.templates import record_key

MAX_VERSIONS_PER_TENANT = 1_000  # every version of every template: what one registration reads, at most
VERSION_MAX = 2**31 - 1  # the record's Avro int
# pg_advisory_xact_lock(class, hashtext(tenant_id)): the two-key space, apart from shared/db.py's migration lock.
_LOCK_CLASS = 0x1E7A


@dataclass(frozen=True, slots=True)
class StoredTemplate:
    tenant_id: str
    template_id: str
    version: int
    role: str
    text: str
    variables: tuple[str, ...]
    registered_at_ms: int
    registered_by: str

    @property
    def ref(self) -> str:
        return f"{self.template_id}@{self.version}"

    def to_record(self) -> dict[str, Any]:
        return {"tenant_id": self.tenant_id, "template_id": self.template_id, "version": self.version,
                "role": self.role, "text": self.text, "variables": list(self.variables),
                "registered_at_ms": self.registered_at_ms, "registered_by": self.registered_by}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> StoredTemplate:
        return cls(rec["tenant_id"], rec["template_id"], rec["version"], rec["role"], rec["text"],
                   tuple(rec["variables"]), rec["registered_at_ms"], rec["registered_by"])


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _transaction(conn: psycopg.Connection) -> AbstractContextManager[psycopg.Transaction]:
    """A real transaction, not a savepoint (the key lookup left one open): the lock is released when it ends."""
    conn.commit()
    return conn.transaction()


class TemplateRegistry:
    """The API's reader and writer of prompt.templates; one per process, shared by the request threads. It
    produces through the API's publisher (one producer, one delivery thread per process)."""

    def __init__(self, settings: KafkaSettings, publisher: CommandPublisher) -> None:
        self.connection = settings.kafka_connection
        self.topic = settings.topic(topics.TEMPLATES)
        self.publisher = publisher
        self.timeout_s = publisher.timeout_s
        self._partitions: int | None = None

    def partition_of(self, tenant_id: str) -> int:
        """The tenant's partition: where a keyed-by-tenant record of any ledgergate topic lands."""
        if self._partitions is None:  # fixed for an install (schemas/topics.yaml): asked once
            try:
                self._partitions = partition_count(self.connection, self.topic, self.timeout_s)
            except (ReadTimeoutError, KafkaException) as exc:
                raise Unavailable(f"no partitions of {self.topic}: {exc}") from exc
        return murmur2_partition(tenant_id.encode(), self._partitions)

    def _messages(self, partition: int) -> Iterator[Message]:
        try:
            yield from read_to_end(self.connection, self.topic, [partition], stall_timeout_s=self.timeout_s)
        except (ReadTimeoutError, KafkaException) as exc:
            raise Unavailable(f"reading {self.topic}[{partition}]: {exc}") from exc

    def templates(self, tenant_id: str) -> dict[tuple[str, int], StoredTemplate]:
        """Every version the tenant registered, by (template_id, version)."""
        partition = self.partition_of(tenant_id)
        prefix = f"{tenant_id}/".encode()  # a tenant id holds no "/": the prefix is the tenant's alone
        found: dict[bytes, StoredTemplate] = {}
        for msg in self._messages(partition):
            key = msg.key() or b""
            if not key.startswith(prefix):
                continue  # another tenant of the partition
            value = msg.value()
            if value is None:  # a tombstone: the version was withdrawn
                found.pop(key, None)
                continue
            try:
                name, rec = codec().decode(value)
                if name != "PromptTemplate" or key != record_key(rec["tenant_id"], rec["template_id"], rec["version"]):
                    raise MalformedMessageError(f"a {name} keyed {key!r} is not a PromptTemplate of that key")
            except LedgergateError as exc:  # the API is the only writer: a bug, said loudly, not a 500 forever
                log().error("template_unreadable", partition=partition, offset=offset_of(msg), error=exc.message)
                continue
            found[key] = StoredTemplate.from_record(rec)
        return {(t.template_id, t.version): t for t in found.values()}

    def get(self, tenant_id: str, template_id: str, version: int) -> StoredTemplate | None:
        return self.templates(tenant_id).get((template_id, version))

    def register(self, conn: psycopg.Connection, tenant_id: str, template_id: str, version: int, text: str,
                 role: str, by: str) -> tuple[StoredTemplate, bool]:
        """The stored version and whether this call registered it (False: it existed, the same)."""
        variables = templates.variables(text)  # the caller validated it; the record carries the names
        with _transaction(conn):
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_CLASS, tenant_id))
            existing = self.templates(tenant_id)
            same = existing.get((template_id, version))
            if same is not None:
                differs = [f for f, a, b in (("text", same.text, text), ("role", same.role, role)) if a != b]
                if not differs:
                    return same, False
                latest = max(v for t, v in existing if t == template_id)
                instead = f": register version {latest + 1} instead" if latest < VERSION_MAX else ""
                raise Conflict(f"template {same.ref} of tenant {tenant_id} is registered with another "
                               f"{' and '.join(differs)} (at {same.registered_at_ms} by {same.registered_by}); "
                               f"a version is immutable{instead}")
            if len(existing) >= MAX_VERSIONS_PER_TENANT:
                raise Conflict(f"tenant {tenant_id} has {len(existing)} template versions, the most it may hold")
            stored = StoredTemplate(tenant_id, template_id, version, role, text, variables, _now_ms(), by)
            self._send(self.partition_of(tenant_id), stored)
        log().info("template_registered", tenant_id=tenant_id, template=stored.ref, role=role,
                   variables=len(variables), chars=len(text), by=by)
        return stored, True

    def _send(self, partition: int, stored: StoredTemplate) -> None:
        """Produce to the tenant's partition and wait for Kafka's acknowledgement (acks=all)."""
        self.publisher.send(self.topic, record_key(stored.tenant_id, stored.template_id, stored.version),
                            codec().encode("PromptTemplate", stored.to_record()), f"template-{stored.ref}",
                            f"template {stored.ref} of tenant {stored.tenant_id}", partition=partition)
