"""API keys: random tokens shown once, stored only as SHA-256 hashes (deploy/migrations/0003_api_keys.sql).
Issued and checked by the admin API (services/api) and checked by the proxy (services/proxy).

A key looks like `lgk_<key id>_<secret>`. The key id is public (listings, logs); the secret is 32 random
bytes. The stored hash covers the whole token, and lookup is by that hash, so a guess costs one indexed
query and leaks nothing about real keys. Plain SHA-256 (not bcrypt) is right here: the secret has 256 bits
of entropy, so there is nothing for a slow hash to protect, and every request verifies a key.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

import psycopg

from ledgergate.ids import id_problem, name_problem
from ledgergate.shared.errors import ApiKeyError

TOKEN_PREFIX = "lgk_"
_TOKEN = re.compile(r"^lgk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an admin (every tenant) or one tenant's key."""

    key_id: str
    tenant_id: str | None
    is_admin: bool
    can_write: bool

    def may_read(self, tenant_id: str) -> bool:
        return self.is_admin or self.tenant_id == tenant_id

    def may_write(self, tenant_id: str) -> bool:
        return self.is_admin or (self.tenant_id == tenant_id and self.can_write)


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    token: str  # shown once, never stored
    tenant_id: str | None
    is_admin: bool
    can_write: bool
    name: str
    created_at_ms: int


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> tuple[str, str]:
    """(key id, token)."""
    key_id = secrets.token_hex(6)
    return key_id, f"{TOKEN_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def create_key(conn: psycopg.Connection, *, tenant_id: str | None, is_admin: bool, can_write: bool = False,
               name: str = "") -> NewKey:
    if is_admin == (tenant_id is not None):
        raise ApiKeyError("a key is either an admin key or belongs to exactly one tenant")
    # The API's routes accept only such ids, so a key for any other id could never be used.
    if tenant_id is not None and (problem := id_problem("tenant id", tenant_id)):
        raise ApiKeyError(problem)
    if problem := name_problem("a key's name", name, required=False):
        raise ApiKeyError(problem)
    if is_admin:
        can_write = True
    key_id, token = new_token()
    now_ms = time.time_ns() // 1_000_000
    conn.execute("INSERT INTO api_keys (key_id, key_sha256, tenant_id, is_admin, can_write, name, created_at_ms) "
                 "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                 (key_id, hash_token(token), tenant_id, is_admin, can_write, name, now_ms))
    return NewKey(key_id, token, tenant_id, is_admin, can_write, name, now_ms)


def looks_like_token(token: str) -> bool:
    return _TOKEN.fullmatch(token) is not None  # fullmatch: `$` alone would let a trailing newline through


def lookup(conn: psycopg.Connection, token: str) -> Principal | None:
    """The principal of a live key, or None for anything else (malformed, unknown, revoked)."""
    if not looks_like_token(token):
        return None  # no query for strings that cannot be keys
    row = conn.execute("SELECT key_id, tenant_id, is_admin, can_write FROM api_keys "
                       "WHERE key_sha256 = %s AND revoked_at_ms IS NULL", (hash_token(token),)).fetchone()
    if row is None:
        return None
    return Principal(key_id=row[0], tenant_id=row[1], is_admin=row[2], can_write=row[3])


def revoke_key(conn: psycopg.Connection, key_id: str) -> bool:
    cur = conn.execute("UPDATE api_keys SET revoked_at_ms = %s WHERE key_id = %s AND revoked_at_ms IS NULL",
                       (time.time_ns() // 1_000_000, key_id))
    return cur.rowcount == 1
