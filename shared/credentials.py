"""Signing credentials on the server: how a secret is derived, what a key id looks like, and the
TenantCredentials record (schemas/avro/tenant_credentials.avsc) that carries a tenant's credential state
from the API, its only writer, to the token-counter on the compacted topic tenant.credentials.

No secret is stored anywhere. The API and the token-counter share one master key
(LEDGERGATE_CREDENTIAL_MASTER_KEY) and each derives a key's secret from it:

    HMAC-SHA256(master key, b"ledgergate-credential-v1" 0x00 tenant 0x00 agent scope 0x00 key id)

The agent scope ("" for a tenant-wide key) is part of the derivation, so a key scoped to one agent has no
secret for any other: the token-counter can verify a key it has not heard of yet (issued after the last
record it read) by deriving it for the request's agent and for the whole tenant, and the scope holds.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Self

from ledgergate.errors import MalformedMessageError
from ledgergate.ids import id_problem
from ledgergate.signing import SECRET_BYTES, key_sequence

DERIVATION_DOMAIN = b"ledgergate-credential-v1"
MASTER_KEY_MIN_BYTES = 32
MAX_LIVE_KEYS = 16  # per tenant: two during a rotation, a few agents; more is a leak waiting to happen
MAX_KEY_SEQUENCE = 999_999_999  # what the key id pattern holds (ledgergate.signing.KEY_ID_PATTERN)
AuthMode = Literal["OPTIONAL", "REQUIRED"]
AUTH_MODES: tuple[AuthMode, ...] = ("OPTIONAL", "REQUIRED")
ChangeKind = Literal["ISSUED", "REVOKED", "MODE_SET"]


def derive_secret(master_key: bytes, tenant_id: str, agent_scope: str, key_id: str) -> bytes:
    assert len(master_key) >= MASTER_KEY_MIN_BYTES, "the credential master key is at least 32 bytes"
    assert "\x00" not in tenant_id + agent_scope + key_id, "ids never hold NUL (ledgergate.ids)"
    message = b"\x00".join((DERIVATION_DOMAIN, tenant_id.encode(), agent_scope.encode(), key_id.encode()))
    secret = hmac.digest(master_key, message, hashlib.sha256)
    assert len(secret) == SECRET_BYTES
    return secret


def new_key_id(sequence: int) -> str:
    """The public id of the tenant's `sequence`-th key; the random part keeps ids unique across tenants."""
    assert 1 <= sequence <= MAX_KEY_SEQUENCE, sequence
    key_id = f"lgc_{sequence}_{secrets.token_hex(8)}"
    assert key_sequence(key_id) == sequence, key_id
    return key_id


@dataclass(frozen=True, slots=True)
class CredentialKey:
    key_id: str
    agent_id: str  # "": any agent of the tenant
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class CredentialChange:
    kind: ChangeKind
    key_id: str | None
    by: str
    at_ms: int


def state_problem(tenant_id: str, issued_through: int, keys: tuple[CredentialKey, ...]) -> str | None:
    """Why a credential state cannot be right, or None."""
    if problem := id_problem("tenant_id", tenant_id):
        return problem
    if len(keys) > MAX_LIVE_KEYS:
        return f"{len(keys)} live keys, more than {MAX_LIVE_KEYS}"
    if not 0 <= issued_through <= MAX_KEY_SEQUENCE:
        return f"issued_through {issued_through} out of range"
    for key in keys:
        sequence = key_sequence(key.key_id)
        if sequence is None or sequence > issued_through:
            return "a live key id is malformed or above issued_through"
        if id_problem("agent_id", key.agent_id, required=False):
            return "a key's agent scope is not an id"
    return None


@dataclass(frozen=True, slots=True)
class TenantCredentials:
    """One tenant's credential state after one change (the last record per tenant wins)."""

    tenant_id: str
    mode: AuthMode | None  # None: the token-counter's default mode
    version: int
    issued_through: int
    keys: tuple[CredentialKey, ...]
    change: CredentialChange

    def __post_init__(self) -> None:
        # Built by the API from its own rows, or by from_record after its check: a problem here is a bug.
        assert (problem := state_problem(self.tenant_id, self.issued_through, self.keys)) is None, problem
        assert self.mode is None or self.mode in AUTH_MODES, self.mode

    def to_record(self) -> dict[str, Any]:
        return {"tenant_id": self.tenant_id, "mode": self.mode, "version": self.version,
                "issued_through": self.issued_through,
                "keys": [{"key_id": k.key_id, "agent_id": k.agent_id, "created_at_ms": k.created_at_ms}
                         for k in self.keys],
                "change": {"kind": self.change.kind, "key_id": self.change.key_id, "by": self.change.by,
                           "at_ms": self.change.at_ms}}

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> Self:
        """Decoded from tenant.credentials. Input that cannot be a credential state is refused with a
        MalformedMessageError (the token-counter dead-letters it) before it is built."""
        keys = tuple(CredentialKey(**k) for k in rec["keys"])
        if problem := state_problem(rec["tenant_id"], rec["issued_through"], keys):
            raise MalformedMessageError(f"TenantCredentials refused: {problem}")
        return cls(rec["tenant_id"], rec["mode"], rec["version"], rec["issued_through"], keys,
                   CredentialChange(**rec["change"]))
