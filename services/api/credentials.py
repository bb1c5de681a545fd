"""Signing credentials: issue, revoke, and a tenant's auth mode (deploy/migrations/0004_credentials.sql).

Event-sourced with one writer per tenant: every change runs in one PostgreSQL transaction that holds the
tenant's credential_tenants row lock, changes the rows, appends its credential_events row, and publishes
the tenant's whole new state (TenantCredentials) to tenant.credentials, keyed by tenant, waiting for
Kafka's acknowledgement, before it commits. Two API instances changing one tenant therefore publish in
the order they changed it, and the compacted topic's last record per tenant is its state. A failure
rolls the rows back; only one narrow window remains, Kafka acknowledging and the commit then failing,
which leaves the topic one change ahead of PostgreSQL and the caller an error: the same call again
converges (a revoke or mode set again applies to the rows as they are and publishes them; an issue again
takes the same sequence number with a new id).

The secret of a key is derived, never stored (ledgergate.shared.credentials.derive_secret), and returned
once, by `issue`. Rotation without downtime: issue a second key (both are valid), move the clients to
it, revoke the first. A new key verifies at once, before its record reaches the token-counter; a revoke
applies when it does (docs/decisions/0009-signed-requests.md).
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass

import psycopg

from ledgergate.services.api.commands import CommandPublisher
from ledgergate.services.api.errors import Conflict, NotFound, Unavailable
from ledgergate.services.api.log import log
from ledgergate.shared.credentials import (
    MAX_KEY_SEQUENCE,
    MAX_LIVE_KEYS,
    AuthMode,
    ChangeKind,
    CredentialChange,
    CredentialKey,
    TenantCredentials,
    derive_secret,
    new_key_id,
)


@dataclass(frozen=True, slots=True)
class Issued:
    key_id: str
    secret_hex: str  # shown once, never stored
    agent_id: str
    name: str
    created_at_ms: int
    version: int


@dataclass(frozen=True, slots=True)
class _Tenant:
    mode: AuthMode | None
    version: int
    issued_through: int


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _transaction(conn: psycopg.Connection) -> AbstractContextManager[psycopg.Transaction]:
    """A real transaction, not a savepoint: the caller's key lookup has left one open, and what is
    committed here must be committed before the answer (the secret) leaves."""
    conn.commit()
    return conn.transaction()


def _locked(conn: psycopg.Connection, tenant_id: str, now_ms: int) -> _Tenant:
    conn.execute("INSERT INTO credential_tenants (tenant_id, updated_at_ms) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                 (tenant_id, now_ms))
    row = conn.execute("SELECT mode, version, issued_through FROM credential_tenants WHERE tenant_id = %s "
                       "FOR UPDATE", (tenant_id,)).fetchone()
    assert row is not None, tenant_id
    return _Tenant(row[0], row[1], row[2])


def _commit_change(conn: psycopg.Connection, publisher: CommandPublisher, tenant_id: str, tenant: _Tenant,
                   change: CredentialChange) -> int:
    """Record the change, publish the state it leaves, and return the new version. Inside the locked
    transaction; raises (and so rolls back) when Kafka does not acknowledge."""
    version = tenant.version + 1
    conn.execute("UPDATE credential_tenants SET mode = %s, version = %s, issued_through = %s, updated_at_ms = %s "
                 "WHERE tenant_id = %s", (tenant.mode, version, tenant.issued_through, change.at_ms, tenant_id))
    conn.execute("INSERT INTO credential_events (tenant_id, version, kind, key_id, mode, by_whom, at_ms) "
                 "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                 (tenant_id, version, change.kind, change.key_id, tenant.mode, change.by, change.at_ms))
    keys = tuple(CredentialKey(*r) for r in conn.execute(
        "SELECT key_id, agent_id, created_at_ms FROM credentials WHERE tenant_id = %s AND revoked_at_ms IS NULL "
        "ORDER BY sequence", (tenant_id,)).fetchall())
    assert len(keys) <= MAX_LIVE_KEYS, (tenant_id, len(keys))
    publisher.publish_credentials(TenantCredentials(tenant_id, tenant.mode, version, tenant.issued_through, keys,
                                                    change))
    log().info("credentials_changed", tenant_id=tenant_id, version=version, change=change.kind,
               key_id=change.key_id, mode=tenant.mode, keys=len(keys), by=change.by)
    return version


def _change(kind: ChangeKind, key_id: str | None, by: str, at_ms: int) -> CredentialChange:
    return CredentialChange(kind, key_id, by, at_ms)


def issue(conn: psycopg.Connection, publisher: CommandPublisher, master_key: bytes | None, tenant_id: str,
          agent_id: str, name: str, by: str) -> Issued:
    if master_key is None:
        raise Unavailable("credentials are off: set LEDGERGATE_CREDENTIAL_MASTER_KEY (the same value on the API "
                          "and the token-counter)")
    now_ms = _now_ms()
    with _transaction(conn):
        tenant = _locked(conn, tenant_id, now_ms)
        row = conn.execute("SELECT count(*) FROM credentials WHERE tenant_id = %s AND revoked_at_ms IS NULL",
                           (tenant_id,)).fetchone()
        live = int(row[0]) if row else 0
        if live >= MAX_LIVE_KEYS:
            raise Conflict(f"tenant {tenant_id} has {live} live credentials, the most it may hold; revoke one first")
        if tenant.issued_through >= MAX_KEY_SEQUENCE:
            raise Conflict(f"tenant {tenant_id} has used every credential sequence number")
        sequence = tenant.issued_through + 1
        key_id = new_key_id(sequence)
        conn.execute("INSERT INTO credentials (tenant_id, key_id, sequence, agent_id, name, created_at_ms, "
                     "created_by) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                     (tenant_id, key_id, sequence, agent_id, name, now_ms, by))
        tenant = _Tenant(tenant.mode, tenant.version, sequence)
        version = _commit_change(conn, publisher, tenant_id, tenant, _change("ISSUED", key_id, by, now_ms))
    secret = derive_secret(master_key, tenant_id, agent_id, key_id)
    return Issued(key_id, secret.hex(), agent_id, name, now_ms, version)


def revoke(conn: psycopg.Connection, publisher: CommandPublisher, tenant_id: str, key_id: str, by: str) -> int:
    now_ms = _now_ms()
    with _transaction(conn):
        tenant = _locked(conn, tenant_id, now_ms)
        cur = conn.execute("UPDATE credentials SET revoked_at_ms = %s, revoked_by = %s "
                           "WHERE tenant_id = %s AND key_id = %s AND revoked_at_ms IS NULL",
                           (now_ms, by, tenant_id, key_id))
        if cur.rowcount != 1:
            raise NotFound(f"tenant {tenant_id} has no live credential {key_id}")
        return _commit_change(conn, publisher, tenant_id, tenant, _change("REVOKED", key_id, by, now_ms))


def set_mode(conn: psycopg.Connection, publisher: CommandPublisher, tenant_id: str, mode: AuthMode | None,
             by: str) -> int:
    """REQUIRED, OPTIONAL, or None (the gate's default). Published even when unchanged: the same call
    again is how an operator re-publishes a tenant's state (see the module doc)."""
    now_ms = _now_ms()
    with _transaction(conn):
        tenant = _locked(conn, tenant_id, now_ms)
        return _commit_change(conn, publisher, tenant_id, _Tenant(mode, tenant.version, tenant.issued_through),
                              _change("MODE_SET", None, by, now_ms))
