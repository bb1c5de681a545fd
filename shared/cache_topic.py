"""The response cache on Kafka (docs/decisions/0013): `cache.entries` records to and from `CacheEntry`, and the
load of a service's partitions into its `CacheStore` on assignment (the policy service and the router each
keep the entries of the tenants they own). The pure parts are in shared/cache.py."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

from confluent_kafka import Message

from ledgergate.codec import codec
from ledgergate.connection import KafkaConnection
from ledgergate.errors import MalformedMessageError
from ledgergate.shared.cache import CacheEntry, CacheStore
from ledgergate.shared.kafka.reader import load_state

_FIELDS = tuple(f.name for f in dataclasses.fields(CacheEntry))


def record_key(tenant_id: str, key: str) -> bytes:
    """The compaction key: one record per tenant and request key (the partition is the tenant's own)."""
    return f"{tenant_id}/{key}".encode()


def encode(entry: CacheEntry) -> bytes:
    return codec().encode("CacheEntry", {name: getattr(entry, name) for name in _FIELDS})


def decode(record: dict[str, Any]) -> CacheEntry:
    return CacheEntry(**record)


def apply(store: CacheStore, msg: Message, now_ms: int) -> CacheEntry | None:
    """One cache.entries record into `store`: an entry (unless already expired), or a tombstone's removal.
    Returns the entry put, if any."""
    value = msg.value()
    if value is None:  # a tombstone: the key names the tenant and the entry
        tenant_id, _, key = (msg.key() or b"").decode(errors="replace").partition("/")
        store.remove(tenant_id, key)
        return None
    name, record = codec().decode(value)
    if name != "CacheEntry":
        raise MalformedMessageError(f"{name} does not belong on {msg.topic()}")
    entry = decode(record)
    if msg.key() != record_key(entry.tenant_id, entry.key):
        raise MalformedMessageError(f"cache entry {entry.entry_id} keyed {msg.key()!r}, not by its tenant and key")
    if entry.expires_at_ms <= now_ms:
        return None
    store.put(entry)
    return entry


def load(connection: KafkaConnection, topic: str, partitions: list[int], store: CacheStore,
         now_ms: int) -> dict[int, int]:
    """Every live entry of `partitions` into `store`; returns each partition's end offset (where a consumer
    of the topic continues). A record that is not an entry is skipped: the live consumer dead-letters it."""
    def put(msg: Message) -> None:
        with contextlib.suppress(MalformedMessageError):
            apply(store, msg, now_ms)
    return load_state(connection, topic, partitions, put)
