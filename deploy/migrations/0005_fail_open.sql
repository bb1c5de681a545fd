-- Settlements of calls an SDK made without a gate decision while the gate was away (fail-open,
-- ledgergate.admission): no reservation held them, so their whole cost is overage. Marked so spend reports
-- can tell them apart and an operator can see how much went through while the gate was unreachable.
ALTER TABLE usage ADD COLUMN fail_open boolean NOT NULL DEFAULT false;
