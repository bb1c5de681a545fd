"""The audit hash chain: each audit.log record carries the previous record's hash (per partition), so a
replay detects any removed, reordered or edited record. Used by the router (writer) and replay (reader)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

GENESIS_HASH = "0" * 64
# Every field but `hash` itself, in a fixed order: adding a field to the schema must add it here.
CHAINED_FIELDS = ("audit_id", "tenant_id", "kind", "event_type", "subject_id", "source_topic", "source_partition",
                  "source_offset", "event_sha256", "summary_json", "chain_partition", "chain_sequence", "prev_hash",
                  "recorded_at_ms")


def record_hash(record: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    for name in CHAINED_FIELDS:
        # Length-prefixed, so text moved across a field boundary changes the hash (a separator
        # byte alone would not: ids may contain it).
        value = str(record[name]).encode()
        h.update(len(value).to_bytes(8, "big"))
        h.update(value)
    return h.hexdigest()


def verify_chain(records: list[tuple[int, Mapping[str, Any]]], start_hash: str = GENESIS_HASH,
                 start_sequence: int = 0) -> str | None:
    """First problem in one partition's (offset, record) list, or None when the chain is whole."""
    prev, expected_seq = start_hash, start_sequence
    for offset, rec in records:
        if rec["chain_sequence"] != expected_seq:
            return f"offset {offset}: sequence {rec['chain_sequence']}, expected {expected_seq} (a record is missing)"
        if rec["prev_hash"] != prev:
            return f"offset {offset}: prev_hash does not match the previous record's hash (gap or reorder)"
        if record_hash(rec) != rec["hash"]:
            return f"offset {offset}: hash does not match the record's content (edited)"
        prev, expected_seq = rec["hash"], expected_seq + 1
    return None
