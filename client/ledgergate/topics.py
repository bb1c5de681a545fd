"""The topics' logical names. schemas/topics.yaml defines them (partitions, retention); a unit test
keeps this list and that file equal. A deployment may prefix every name (`LEDGERGATE_TOPIC_PREFIX`)."""

from __future__ import annotations

REQUESTS = "invocation.requests"
COUNTED = "invocation.counted"
PLANNED = "invocation.planned"
COMMANDS = "budget.commands"
LEDGER = "budget.ledger"
DECISIONS = "gate.decisions"
COMPLETIONS = "invocation.completions"
METERED = "usage.metered"
ALERTS = "budget.alerts"
AUDIT = "audit.log"
CREDENTIALS = "tenant.credentials"
DEADLETTER = "deadletter"
SNAPSHOTS = "budget.snapshots"
CACHE = "cache.entries"  # the response cache's entries (docs/decisions/0013)
TEMPLATES = "prompt.templates"  # the tenants' registered prompt templates (ledgergate.templates)
REDACTION = "tenant.redaction"  # each tenant's redact patterns, from its policy (shared/redaction.py)
# The anomaly detector's (a faust app, services/anomaly/): closed windows between its two agents, and the
# changelogs of its two tables, which faust names <app id>-<table>-changelog.
ANOMALY_WINDOWS = "anomaly.windows"
ANOMALY_RATES_CHANGELOG = "ledgergate-anomaly-rates-changelog"
ANOMALY_BANDS_CHANGELOG = "ledgergate-anomaly-bands-changelog"

ALL = (REQUESTS, COUNTED, PLANNED, COMMANDS, LEDGER, DECISIONS, COMPLETIONS, METERED, ALERTS, AUDIT, CREDENTIALS,
       DEADLETTER, SNAPSHOTS, CACHE, TEMPLATES, REDACTION,
       ANOMALY_WINDOWS, ANOMALY_RATES_CHANGELOG, ANOMALY_BANDS_CHANGELOG)
