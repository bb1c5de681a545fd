-- The PostgreSQL read model: a projection of budget.ledger, gate.decisions and audit.log.
-- Every table can be rebuilt from the topics; none is a source of truth.

CREATE TABLE ledger_entries (
    entry_id        text PRIMARY KEY,                 -- deterministic from its cause: a replay cannot double it
    tenant_id       text   NOT NULL,
    period_id       text   NOT NULL,
    entry_type      text   NOT NULL,
    request_id      text,
    workflow_id     text,
    model           text,
    amount_micro_usd bigint NOT NULL DEFAULT 0,
    recorded_at_ms  bigint NOT NULL,
    source_partition int   NOT NULL,
    source_offset   bigint NOT NULL,
    body            jsonb  NOT NULL
);
CREATE INDEX ledger_entries_tenant_time ON ledger_entries (tenant_id, recorded_at_ms);
CREATE INDEX ledger_entries_request ON ledger_entries (request_id);

CREATE TABLE balances (
    tenant_id        text   NOT NULL,
    scope_type       text   NOT NULL,
    scope_id         text   NOT NULL,
    period_id        text   NOT NULL,
    limit_micro_usd  bigint NOT NULL DEFAULT 0,
    credit_micro_usd bigint NOT NULL DEFAULT 0,
    posted_micro_usd bigint NOT NULL DEFAULT 0,
    pending_micro_usd bigint NOT NULL DEFAULT 0,
    updated_at_ms    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, scope_type, scope_id, period_id)
);

CREATE TABLE decisions (
    request_id      text PRIMARY KEY,
    tenant_id       text   NOT NULL,
    workflow_id     text   NOT NULL,
    agent_id        text   NOT NULL,
    outcome         text   NOT NULL,
    requested_model text   NOT NULL,
    model           text,
    binding_scope   text,
    reason_codes    text[] NOT NULL,
    reserved_micro_usd bigint NOT NULL,
    requested_at_ms bigint NOT NULL,
    decided_at_ms   bigint NOT NULL,
    body            jsonb  NOT NULL
);
CREATE INDEX decisions_tenant_outcome ON decisions (tenant_id, outcome, decided_at_ms);

CREATE TABLE usage (
    request_id      text PRIMARY KEY,
    tenant_id       text   NOT NULL,
    workflow_id     text   NOT NULL,
    model           text   NOT NULL,
    input_tokens    bigint NOT NULL,
    cached_input_tokens bigint NOT NULL,
    output_tokens   bigint NOT NULL,
    reasoning_tokens bigint NOT NULL,
    estimated       boolean NOT NULL,
    actual_micro_usd bigint NOT NULL,
    price_version   text   NOT NULL,
    settled_at_ms   bigint NOT NULL
);
CREATE INDEX usage_tenant_time ON usage (tenant_id, settled_at_ms);

CREATE TABLE audit_records (
    chain_partition int    NOT NULL,
    chain_sequence  bigint NOT NULL,
    tenant_id       text   NOT NULL,
    kind            text   NOT NULL,
    subject_id      text   NOT NULL,
    hash            text   NOT NULL,
    prev_hash       text   NOT NULL,
    recorded_at_ms  bigint NOT NULL,
    PRIMARY KEY (chain_partition, chain_sequence)
);

-- Exactly-once sink: the projector stores the next offset to read in the same transaction as the
-- rows that offset produced.
CREATE TABLE consumer_offsets (
    consumer    text NOT NULL,
    topic       text NOT NULL,
    partition   int  NOT NULL,
    next_offset bigint NOT NULL,
    PRIMARY KEY (consumer, topic, partition)
);
