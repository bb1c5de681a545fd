"""`ledgergate bench`: the gate measured on the real local stack, beside its physical floors.

Modules: `runner` (what `ledgergate bench` runs), `gate` (services + open-loop load), `loadgen` (the
load generator process), `floors` (raw Kafka echo and tiktoken), `ledger` (rebuild rate and memory),
`pgbaseline` (a PostgreSQL check-and-debit gate), `report` (table and JSON), `procstats`, `stats`.
Method and figures: BENCHMARKS.md.
"""
