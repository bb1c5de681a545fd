"""Signed requests and completions: invariant 5, only a tenant's own credentials spend or settle its budget.

A credential is a public key id and a secret, issued by the admin API (`POST /v1/tenants/{t}/credentials`,
the secret shown once) and scoped to one tenant, optionally to one agent. The sender signs every
InvocationRequested and InvocationCompleted it publishes; the token-counter verifies the signature
before it counts or meters anything, and a request that fails is answered `DENY unauthenticated`, a
completion that fails is dead-lettered and settles nothing.

The signature is HMAC-SHA256, keyed by the secret's 32 bytes, of `canonical_bytes`:

    b"ledgergate-signature-v1" 0x00 <event name, UTF-8> 0x00 <8-byte writer schema fingerprint>
    <the Avro binary body of the record with its `signature` field null, under that writer schema>

carried in the record's own `signature` field as {key_id, hmac_sha256: 64 lowercase hex}. The body is
the same bytes the message carries apart from that field, so any Kafka client can sign: encode the
record with `signature` null, HMAC the tag + name + fingerprint + body, set the field, encode again.
The server re-encodes the decoded record under the writer's schema (the fingerprint in the message
header), so a client on an older schema version verifies against a newer server. The signature covers
every field, the request id and the tenant included: a copied signature fits no other request, and a
replayed one gets the original decision (the request id is the idempotency key).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ledgergate.codec import HEADER_LEN, codec
from ledgergate.errors import CodecError, GateClientError

DOMAIN = b"ledgergate-signature-v1"
SIGNED_EVENTS = frozenset({"InvocationRequested", "InvocationCompleted"})
SECRET_BYTES = 32
HMAC_HEX_CHARS = 64
# lgc_<the tenant's key sequence number, 1..999,999,999>_<16 hex>: the API issues them (the sequence is what
# lets the token-counter tell a revoked key from one issued after the last credential set it read).
KEY_ID_PATTERN = r"^lgc_([1-9][0-9]{0,8})_[0-9a-f]{16}$"
MAX_KEY_ID_CHARS = 30
_KEY_ID = re.compile(KEY_ID_PATTERN)
_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Credential:
    """A signing credential as the API issued it. `secret` is the 64 hex digits shown once; it never
    appears in a repr (so not in a log line or a traceback either)."""

    key_id: str
    secret: str = field(repr=False)

    def __post_init__(self) -> None:
        if key_sequence(self.key_id) is None:
            raise GateClientError("credential key_id must look like lgc_<sequence>_<16 hex>, as the API issues it")
        if _HEX.fullmatch(self.secret) is None:
            raise GateClientError(f"credential secret must be {HMAC_HEX_CHARS} lowercase hex digits "
                                  f"({SECRET_BYTES} bytes), as the API issues it")

    @property
    def secret_bytes(self) -> bytes:
        return bytes.fromhex(self.secret)


def key_sequence(key_id: str) -> int | None:
    """The tenant's sequence number a key id carries, or None when it is not a key id at all."""
    match = _KEY_ID.fullmatch(key_id) if len(key_id) <= MAX_KEY_ID_CHARS else None
    return int(match.group(1)) if match else None


def canonical_bytes(name: str, record: Mapping[str, Any], fingerprint: bytes | None = None) -> bytes:
    """What a signature covers (see the module doc). `fingerprint` names the writer schema version: the
    verifier passes the one in the message header; a signer leaves it None (the current version)."""
    if name not in SIGNED_EVENTS:
        raise CodecError(f"{name} is not a signed event; signed: {', '.join(sorted(SIGNED_EVENTS))}")
    writer = fingerprint if fingerprint is not None else codec().schema(name).fingerprint
    body = codec().encode_body(name, {**record, "signature": None}, writer)
    return b"".join((DOMAIN, b"\x00", name.encode(), b"\x00", writer, body))


def message_canonical_bytes(name: str, value: bytes, record: Mapping[str, Any]) -> bytes:
    """`canonical_bytes` of a message as it arrived (`value`, its single-object encoding) and decoded
    (`record`), the verifier's form. When `signature` is the writer schema's last field (every version
    so far) the body with the signature null is the message's own body up to the signature's encoding,
    then the null branch (one 0x00 byte): a slice instead of a second Avro encoding, which measured 15-20 us
    of a short request's 25 us of verification. Any other layout encodes again; both are the same bytes
    (tests/unit/test_signing.py)."""
    fingerprint = codec().fingerprint_of(value)
    signature = record.get("signature")
    if signature is not None and codec().last_field(fingerprint) == "signature":
        # Avro: union branch 1 (zigzag varint 0x02), then each string as a zigzag varint length and UTF-8.
        tail = b"\x02" + _avro_string(signature["key_id"]) + _avro_string(signature["hmac_sha256"])
        if len(value) >= HEADER_LEN + len(tail) and value.endswith(tail):
            body = value[HEADER_LEN:len(value) - len(tail)]
            return b"".join((DOMAIN, b"\x00", name.encode(), b"\x00", fingerprint, body, b"\x00"))
    return canonical_bytes(name, record, fingerprint)


def _avro_string(text: str) -> bytes:
    data = text.encode()
    n = len(data) << 1  # zigzag of a non-negative length
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + data


def hmac_hex(secret: bytes, message: bytes) -> str:
    assert len(secret) == SECRET_BYTES, "a credential secret is 32 bytes"
    return hmac.digest(secret, message, hashlib.sha256).hex()


def sign(name: str, record: Mapping[str, Any], credential: Credential) -> dict[str, Any]:
    """A copy of `record` (an InvocationRequested or InvocationCompleted as the codec takes it) carrying
    its signature by `credential`."""
    mac = hmac_hex(credential.secret_bytes, canonical_bytes(name, record))
    return {**record, "signature": {"key_id": credential.key_id, "hmac_sha256": mac}}


def verify(secret: bytes, message: bytes, claimed_hex: str) -> bool:
    """Whether `claimed_hex` is the HMAC of `message` under `secret`, in constant time (compare_digest)
    once the claim has the shape of one; a malformed claim is simply false."""
    if len(claimed_hex) != HMAC_HEX_CHARS or _HEX.fullmatch(claimed_hex) is None:
        return False
    assert len(secret) == SECRET_BYTES, "a credential secret is 32 bytes"
    return hmac.compare_digest(hmac.digest(secret, message, hashlib.sha256), bytes.fromhex(claimed_hex))
