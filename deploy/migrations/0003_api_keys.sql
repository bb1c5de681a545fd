-- API keys for the admin and query API (services/api).
-- Unlike the read model, this table is a source of truth: it cannot be rebuilt from the topics.
-- Only the SHA-256 of a key is stored; the key itself is shown once when it is created.

CREATE TABLE api_keys (
    key_id        text    PRIMARY KEY,          -- public, non-secret: appears in listings and logs
    key_sha256    bytea   NOT NULL UNIQUE,      -- lookup is by hash, so the secret is never compared in SQL
    tenant_id     text,                         -- NULL exactly for admin keys
    is_admin      boolean NOT NULL DEFAULT false,
    -- Tenant keys are read-only unless created with write access: an agent platform that holds a key to
    -- read its spend must not be able to raise its own budget.
    can_write     boolean NOT NULL DEFAULT false,
    name          text    NOT NULL DEFAULT '',
    created_at_ms bigint  NOT NULL,
    revoked_at_ms bigint,
    CONSTRAINT api_keys_scope CHECK (is_admin = (tenant_id IS NULL)),
    CONSTRAINT api_keys_hash_length CHECK (octet_length(key_sha256) = 32)
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

-- GET /v1/decisions/{request_id} with an admin key looks a request id up across tenants; 0002's index
-- leads with tenant_id.
CREATE INDEX decisions_request ON decisions (request_id);

-- GET /v1/tenants/{tenant}/policy reads the tenant's latest PolicyChanged entry; policy changes are rare,
-- so this partial index stays tiny while the tenant's ledger grows without bound.
CREATE INDEX ledger_entries_policy ON ledger_entries (tenant_id, recorded_at_ms) WHERE entry_type = 'PolicyChanged';
