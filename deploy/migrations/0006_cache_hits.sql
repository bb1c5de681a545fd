-- Requests answered from a tenant's response cache (docs/decisions/0013): one row per CacheHitRecorded
-- ledger entry. A hit moves no money; avoided_micro_usd is what the answer cost when it was made, which
-- spend reports show as savings. model is the requested model (a hit calls none). day is the UTC day of
-- the hit, generated as usage's is (0002). Like every read-model table, rebuilt from budget.ledger.
CREATE TABLE cache_hits (
    tenant_id         text   NOT NULL,
    entry_id          text   NOT NULL,
    request_id        text   NOT NULL,
    workflow_id       text   NOT NULL,
    model             text   NOT NULL,
    period_id         text   NOT NULL,
    cache_entry_id    text   NOT NULL,                -- the cache entry that answered
    input_tokens      bigint NOT NULL,
    output_tokens     bigint NOT NULL,
    avoided_micro_usd bigint NOT NULL,
    recorded_at_ms    bigint NOT NULL,
    day date GENERATED ALWAYS AS
        ((timestamp '1970-01-01' + recorded_at_ms * interval '1 millisecond')::date) STORED,
    PRIMARY KEY (tenant_id, entry_id)
);
CREATE INDEX cache_hits_tenant_time ON cache_hits (tenant_id, recorded_at_ms);

-- The read model holds no answer text (docs/privacy.md): a CACHE_HIT decision projected before the
-- projector dropped cached_response loses it here.
UPDATE decisions SET body = jsonb_set(body, '{cached_response}', 'null')
WHERE outcome = 'CACHE_HIT' AND body ->> 'cached_response' IS NOT NULL;
