-- What the projector (services/projector) writes beyond 0001, and the indexes the API's queries use.
-- Like 0001, every table here is rebuilt from the topics; none is a source of truth.

-- Entry ids are unique per tenant, not globally: the budget-manager derives them from the client's
-- request id ("<request_id>/reservation"), and two tenants may well pick the same request id.
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_pkey;
ALTER TABLE ledger_entries ADD PRIMARY KEY (tenant_id, entry_id);
DROP INDEX ledger_entries_request;
CREATE INDEX ledger_entries_request ON ledger_entries (tenant_id, request_id);
CREATE INDEX ledger_entries_tenant_workflow_time ON ledger_entries (tenant_id, workflow_id, recorded_at_ms);
CREATE INDEX ledger_entries_tenant_model_time ON ledger_entries (tenant_id, model, recorded_at_ms);

-- A limit belongs to a scope in every period (BudgetLimitSet changes it for all of them), so it lives
-- here; balances.limit_micro_usd mirrors it on each of the scope's rows for convenience.
CREATE TABLE limits (
    tenant_id       text   NOT NULL,
    scope_type      text   NOT NULL,
    scope_id        text   NOT NULL,
    limit_micro_usd bigint NOT NULL,
    entry_id        text   NOT NULL,                  -- the BudgetLimitSet that set it last
    updated_at_ms   bigint NOT NULL,
    PRIMARY KEY (tenant_id, scope_type, scope_id)
);

-- NULL: no limit was ever set for the scope (a tenant without one is denied `no_budget`; a workflow
-- without one is bounded by its tenant only). 0 is a real limit, so it cannot mean "unset".
ALTER TABLE balances ALTER COLUMN limit_micro_usd DROP NOT NULL;
ALTER TABLE balances ALTER COLUMN limit_micro_usd DROP DEFAULT;
CREATE INDEX balances_tenant_period ON balances (tenant_id, period_id);

-- ThresholdCrossed entries (50/80/100 %), for the API to list.
CREATE TABLE alerts (
    tenant_id       text   NOT NULL,
    entry_id        text   NOT NULL,
    period_id       text   NOT NULL,
    scope_type      text   NOT NULL,
    scope_id        text   NOT NULL,
    threshold_pct   int    NOT NULL,
    spent_micro_usd bigint NOT NULL,
    limit_micro_usd bigint NOT NULL,
    recorded_at_ms  bigint NOT NULL,
    PRIMARY KEY (tenant_id, entry_id)
);
CREATE INDEX alerts_tenant_time ON alerts (tenant_id, recorded_at_ms);

-- One row per distinct gate decision. A request id can have two: its decision and a later
-- `idempotency_conflict` DENY for different content under the same id. Repeats of a request are
-- byte-identical to the original and carry its ledger_entry_id, so they collapse into its row.
-- The request's own decision is the earliest row whose reason is not idempotency_conflict.
ALTER TABLE decisions ADD COLUMN ledger_entry_id text;
UPDATE decisions SET ledger_entry_id = body ->> 'ledger_entry_id';
ALTER TABLE decisions ALTER COLUMN ledger_entry_id SET NOT NULL;
ALTER TABLE decisions DROP CONSTRAINT decisions_pkey;
ALTER TABLE decisions ADD PRIMARY KEY (tenant_id, ledger_entry_id);
ALTER TABLE decisions ADD COLUMN granted_output_tokens bigint;
CREATE INDEX decisions_tenant_request ON decisions (tenant_id, request_id);
CREATE INDEX decisions_tenant_time ON decisions (tenant_id, decided_at_ms);

-- One row per ReservationSettled. tier comes from the request's ReservationPlaced; day is the UTC
-- day of the settlement, generated so that no writer or reader can compute it differently.
ALTER TABLE usage DROP CONSTRAINT usage_pkey;
ALTER TABLE usage ADD PRIMARY KEY (tenant_id, request_id);
ALTER TABLE usage
    ADD COLUMN entry_id text,
    ADD COLUMN period_id text,
    ADD COLUMN tier text,
    ADD COLUMN reserved_micro_usd bigint,
    ADD COLUMN overage_micro_usd bigint,
    ADD COLUMN day date GENERATED ALWAYS AS
        ((timestamp '1970-01-01' + settled_at_ms * interval '1 millisecond')::date) STORED;
CREATE INDEX usage_tenant_day ON usage (tenant_id, day, model);
CREATE INDEX usage_tenant_workflow_day ON usage (tenant_id, workflow_id, day);

-- The whole audit record, so the chain can be re-verified from PostgreSQL (shared.audit.record_hash).
ALTER TABLE audit_records
    ADD COLUMN audit_id text,
    ADD COLUMN event_type text,
    ADD COLUMN source_topic text,
    ADD COLUMN source_partition int,
    ADD COLUMN source_offset bigint,
    ADD COLUMN event_sha256 text,
    ADD COLUMN summary_json text;
CREATE INDEX audit_records_tenant_time ON audit_records (tenant_id, recorded_at_ms);

-- Messages the projector could not decode: recorded (in the transaction that moves past them) rather
-- than stalling their partition or vanishing silently.
CREATE TABLE projection_errors (
    consumer    text   NOT NULL,
    topic       text   NOT NULL,
    partition   int    NOT NULL,
    "offset"    bigint NOT NULL,
    error_code  text   NOT NULL,
    error       text   NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition, "offset")
);
