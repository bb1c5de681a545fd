"""A tenant's state as bytes, and the store that keeps cold tenants that way.

One encoding (the TenantSnapshot Avro record, schemas/avro/tenant_snapshot.avsc) serves two ends:
snapshots on budget.snapshots, and the in-memory form of tenants not touched lately. A TenantState
costs about 2.4 KB as Python objects and about 300 B packed, so a million mostly idle tenants fit in
well under 1 GB when only the recently used ones are unpacked (TenantStore).

Pure: no I/O. `unpack(pack(s))` equals `s` for every state a fold can reach (tests/unit/test_snapshots.py).
"""

from __future__ import annotations

import struct
import sys
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

from ledgergate.codec import HEADER_LEN, codec
from ledgergate.errors import CodecError
from ledgergate.shared.ledger.entries import LedgerEntry
from ledgergate.shared.ledger.state import Balance, Hold, TenantState, evolve

SNAPSHOT = "TenantSnapshot"
MARKER = "SnapshotMarker"
# The marker's key: not a valid tenant id (ids start with a letter or digit), so no tenant's record
# replaces it under compaction.
MARKER_KEY = b"#marker"
CHECKSUM_HEADER = "lg-crc32"
_intern = sys.intern


class SnapshotError(CodecError):
    """A snapshot record that cannot be used: wrong checksum, not a TenantSnapshot, or cut short."""


def checksum(data: bytes) -> bytes:
    return struct.pack(">I", zlib.crc32(data))


def _hold_record(request_id: str, h: Hold) -> dict[str, Any]:
    return {"request_id": request_id, "period_id": h.period_id, "workflow_id": h.workflow_id, "model": h.model,
            "amount_micro_usd": h.amount_micro_usd, "price_version": h.price_version,
            "expires_at_ms": h.expires_at_ms, "scopes": list(h.scopes)}


def _hold(r: dict[str, Any]) -> Hold:
    return Hold(_intern(r["period_id"]), _intern(r["workflow_id"]), _intern(r["model"]), r["amount_micro_usd"],
                _intern(r["price_version"]), r["expires_at_ms"], tuple(_intern(s) for s in r.get("scopes") or ()))


def _digest(sha: str) -> bytes | str:
    """A lowercase hex SHA-256 as its 32 bytes (half the size), anything else as it is: exact either way."""
    if len(sha) == 64:
        try:
            raw = bytes.fromhex(sha)
        except ValueError:
            return sha
        if raw.hex() == sha:
            return raw
    return sha


def _hex(sha: bytes | str) -> str:
    return sha.hex() if isinstance(sha, bytes) else sha


def _outcomes(outcomes: dict[str, str]) -> list[dict[str, bytes | str]]:
    return [{"request_id": r, "request_sha256": _digest(s)} for r, s in sorted(outcomes.items())]


def next_expiry_ms(state: TenantState) -> int:
    """The earliest live hold's expiry, 0 without one: what a restored cold tenant schedules."""
    return min((h.expires_at_ms for h in state.holds.values()), default=0)


def pack(state: TenantState, covered_offset: int = 0) -> bytes:
    """The canonical encoding (every list sorted): one state, one byte string."""
    record = {
        "tenant_id": state.tenant_id, "covered_offset": covered_offset, "next_expiry_ms": next_expiry_ms(state),
        "period_id": state.period_id,
        "limits": [{"scope_type": t, "scope_id": i, "limit_micro_usd": v}
                   for (t, i), v in sorted(state.limits.items())],
        "balances": [{"period_id": p, "scope_type": t, "scope_id": i, "credit_micro_usd": b.credit_micro_usd,
                      "posted_micro_usd": b.posted_micro_usd, "pending_micro_usd": b.pending_micro_usd}
                     for (p, t, i), b in sorted(state.balances.items())],
        "holds": [_hold_record(rid, h) for rid, h in sorted(state.holds.items())],
        "expired": [_hold_record(rid, h) for rid, h in sorted(state.expired.items())],
        "outcomes": _outcomes(state.outcomes), "previous_outcomes": _outcomes(state.previous_outcomes),
        "settled": sorted(state.settled), "previous_settled": sorted(state.previous_settled),
        "thresholds": [{"period_id": p, "scope_type": t, "scope_id": i, "threshold_pct": pct}
                       for p, t, i, pct in sorted(state.thresholds)],
        "commands": sorted(state.commands), "policy_version": state.policy_version,
        "policy_json": state.policy_json, "entries": state.entries,
    }
    return codec().encode(SNAPSHOT, record)


def unpack(data: bytes) -> tuple[TenantState, int]:
    """(state, covered offset). Raises SnapshotError for bytes that are not a TenantSnapshot."""
    try:
        name, r = codec().decode(data)
    except CodecError as exc:
        raise SnapshotError(f"not a readable snapshot: {exc}") from exc
    if name != SNAPSHOT:
        raise SnapshotError(f"a {name} where a {SNAPSHOT} was expected")
    s = TenantState(r["tenant_id"], _intern(r["period_id"]))
    # Empty containers stay the shared read-only empties TenantState starts with (state._writable).
    if r["limits"]:
        s.limits = {(_intern(x["scope_type"]), _intern(x["scope_id"])): x["limit_micro_usd"] for x in r["limits"]}
    if r["balances"]:
        s.balances = {(_intern(x["period_id"]), _intern(x["scope_type"]), _intern(x["scope_id"])): Balance(
            x["credit_micro_usd"], x["posted_micro_usd"], x["pending_micro_usd"]) for x in r["balances"]}
    if r["holds"]:
        s.holds = {x["request_id"]: _hold(x) for x in r["holds"]}
    if r["expired"]:
        s.expired = {x["request_id"]: _hold(x) for x in r["expired"]}
    if r["outcomes"]:
        s.outcomes = {x["request_id"]: _hex(x["request_sha256"]) for x in r["outcomes"]}
    if r["previous_outcomes"]:
        s.previous_outcomes = {x["request_id"]: _hex(x["request_sha256"]) for x in r["previous_outcomes"]}
    if r["settled"]:
        s.settled = set(r["settled"])
    if r["previous_settled"]:
        s.previous_settled = set(r["previous_settled"])
    if r["thresholds"]:
        s.thresholds = {(_intern(x["period_id"]), _intern(x["scope_type"]), _intern(x["scope_id"]), x["threshold_pct"])
                        for x in r["thresholds"]}
    if r["commands"]:
        s.commands = set(r["commands"])
    s.policy_version, s.policy_json, s.entries = r["policy_version"], r["policy_json"], r["entries"]
    return s, r["covered_offset"]


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """One Avro long (zig-zag varint) at `at`: (value, next position)."""
    shift = result = 0
    while True:
        if at >= len(data) or shift > 63:
            raise SnapshotError("a snapshot's header fields end early")
        byte = data[at]
        at += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (result >> 1) ^ -(result & 1), at
        shift += 7


def peek(data: bytes) -> tuple[int, int]:
    """(covered offset, next expiry) of a packed tenant without decoding it: the two fields after
    tenant_id, which the schema keeps first so a restore reads a million records quickly."""
    if data[2:HEADER_LEN] != codec().schema(SNAPSHOT).fingerprint:
        raise SnapshotError("not a TenantSnapshot of the current schema")
    length, at = _varint(data, HEADER_LEN)
    covered, at = _varint(data, at + length)
    expiry, _ = _varint(data, at)
    return covered, expiry


# Deferred entries are decoded records held in memory (~0.5 KB each): bounded per tenant and in all.
PENDING_PER_TENANT_MAX = 32
PENDING_MAX = 50_000


class TenantStore:
    """One partition's tenants: the `hot_max` most recently used as TenantState, the others packed, and
    entries deferred for tenants not unpacked yet (a restore's tail: `defer`).

    A state handed out by `get` stays valid until `hot_max` other tenants are touched; callers use one
    tenant at a time (a message, an expiry), so with `hot_max` in the thousands none is packed under them.
    """

    __slots__ = ("cold", "hot", "hot_max", "pending", "pending_count")

    def __init__(self, hot_max: int) -> None:
        assert hot_max >= 1, hot_max
        self.hot: OrderedDict[str, TenantState] = OrderedDict()
        self.cold: dict[str, bytes] = {}
        # Entries of tenants that are packed (or have no state yet), folded in when the tenant is next
        # unpacked: a restore's tail then costs a decode per entry, not an unpack per tenant it touches.
        self.pending: dict[str, list[LedgerEntry]] = {}
        self.pending_count = 0
        self.hot_max = hot_max

    def __len__(self) -> int:
        return len(self.hot) + len(self.cold) + sum(1 for t in self.pending if t not in self.cold)

    def __contains__(self, tenant_id: str) -> bool:
        return tenant_id in self.hot or tenant_id in self.cold or tenant_id in self.pending

    def get(self, tenant_id: str) -> TenantState | None:
        state = self.hot.get(tenant_id)
        if state is not None:
            self.hot.move_to_end(tenant_id)
            return state
        data = self.cold.pop(tenant_id, None)
        if data is None and tenant_id not in self.pending:
            return None
        entries = self.pending.pop(tenant_id, [])
        self.pending_count -= len(entries)
        state = self._materialized(tenant_id, data, entries)
        self._admit(tenant_id, state)
        return state

    def get_or_create(self, tenant_id: str) -> TenantState:
        state = self.get(tenant_id)
        if state is None:
            state = TenantState(tenant_id)
            self._admit(tenant_id, state)
        return state

    def defer(self, tenant_id: str, entry: LedgerEntry) -> None:
        """Fold an entry now if the tenant is unpacked or has no packed state (nothing to unpack: a fold
        from offset 0), else when it is next unpacked. Bounded: a tenant with PENDING_PER_TENANT_MAX
        entries waiting, or any tenant once PENDING_MAX wait in all, is unpacked and folded at once."""
        state = self.hot.get(tenant_id)
        if state is None and tenant_id not in self.cold:
            state = self.get_or_create(tenant_id)
        if state is not None:
            evolve(state, entry)
            return
        entries = self.pending.setdefault(tenant_id, [])
        entries.append(entry)
        self.pending_count += 1
        if len(entries) >= PENDING_PER_TENANT_MAX or self.pending_count > PENDING_MAX:
            self.get(tenant_id)
        assert self.pending_count <= PENDING_MAX, self.pending_count

    def put_packed(self, tenant_id: str, data: bytes) -> None:
        """A restored tenant, kept packed until first used."""
        assert tenant_id not in self.pending, tenant_id  # records come before the tail they precede
        self.hot.pop(tenant_id, None)
        self.cold[tenant_id] = data

    @staticmethod
    def _materialized(tenant_id: str, data: bytes | None, entries: Iterable[LedgerEntry]) -> TenantState:
        state = unpack(data)[0] if data is not None else TenantState(tenant_id)
        for entry in entries:
            evolve(state, entry)
        return state

    def _admit(self, tenant_id: str, state: TenantState) -> None:
        assert state.tenant_id == tenant_id, (state.tenant_id, tenant_id)
        self.hot[tenant_id] = state
        while len(self.hot) > self.hot_max:
            old_id, old = self.hot.popitem(last=False)
            self.cold[old_id] = pack(old)

    def peek(self, tenant_id: str) -> TenantState | None:
        """The tenant's state without promoting it: a cold one is an unpacked copy, to read, not to change."""
        state = self.hot.get(tenant_id)
        if state is not None:
            return state
        data = self.cold.get(tenant_id)
        if data is None and tenant_id not in self.pending:
            return None
        return self._materialized(tenant_id, data, self.pending.get(tenant_id, ()))

    def tenant_ids(self) -> list[str]:
        return [*self.hot, *self.cold, *(t for t in self.pending if t not in self.cold)]

    def states(self) -> Iterator[TenantState]:
        """Every tenant's state, cold ones unpacked as copies (not promoted): for reports and verification."""
        yield from self.hot.values()
        for tenant_id in [*self.cold, *(t for t in self.pending if t not in self.cold)]:
            state = self.peek(tenant_id)
            assert state is not None, tenant_id
            yield state
