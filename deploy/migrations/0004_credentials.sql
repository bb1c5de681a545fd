-- Signing credentials (services/api/credentials.py; invariant 5). Like api_keys, a source of truth: the
-- topic tenant.credentials is published from these rows, never the other way round. No secret is stored:
-- each key's secret is derived from LEDGERGATE_CREDENTIAL_MASTER_KEY (ledgergate.shared.credentials).

-- One row per tenant that ever had a credential or an auth mode; its lock serialises the tenant's changes.
CREATE TABLE credential_tenants (
    tenant_id      text    PRIMARY KEY,
    -- NULL: the token-counter's LEDGERGATE_AUTH_DEFAULT_MODE.
    mode           text    CHECK (mode IN ('OPTIONAL', 'REQUIRED')),
    version        bigint  NOT NULL DEFAULT 0,   -- +1 per change; the published record carries it
    issued_through integer NOT NULL DEFAULT 0,   -- the highest key sequence issued, never reused
    updated_at_ms  bigint  NOT NULL
);

CREATE TABLE credentials (
    tenant_id     text    NOT NULL REFERENCES credential_tenants (tenant_id),
    key_id        text    NOT NULL,              -- public: lgc_<sequence>_<16 hex>
    sequence      integer NOT NULL,
    agent_id      text    NOT NULL DEFAULT '',   -- '': any agent of the tenant
    name          text    NOT NULL DEFAULT '',
    created_at_ms bigint  NOT NULL,
    created_by    text    NOT NULL,
    revoked_at_ms bigint,
    revoked_by    text,
    PRIMARY KEY (tenant_id, key_id),
    UNIQUE (tenant_id, sequence)
);
CREATE INDEX credentials_live ON credentials (tenant_id) WHERE revoked_at_ms IS NULL;

-- Every issue, revoke and mode change, append-only, written in the same transaction as the change
-- (the topic keeps only each tenant's last state).
CREATE TABLE credential_events (
    tenant_id text   NOT NULL,
    version   bigint NOT NULL,
    kind      text   NOT NULL CHECK (kind IN ('ISSUED', 'REVOKED', 'MODE_SET')),
    key_id    text,
    mode      text,
    by_whom   text   NOT NULL,
    at_ms     bigint NOT NULL,
    PRIMARY KEY (tenant_id, version)
);
