"""Prometheus metrics of one ledgergate process: the one home of their names, labels and the tenant rule.

Adapters and the stream runtime call the small `observe_*` functions below; the cores stay pure. A process
calls `configure(service, settings)` once at start (the stream runtime's run_service, the API's
create_app); before that, or with LEDGERGATE_METRICS_ENABLED=false, every function returns at once and
nothing is recorded. `render()` is what GET /metrics answers (shared/health.py, the API's app).

Names follow Prometheus conventions: the `ledgergate_` prefix, base units (seconds; money in the
ledger's own integer unit, micro-USD, named in the metric), `_total` on counters. Token counts follow
the OpenTelemetry GenAI convention's `gen_ai.client.token.usage` by `gen_ai.token.type`. The list, with
labels, is in the README (section "Metrics"); tests/unit/test_metrics.py checks the naming rules.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest

from ledgergate.shared.catalogue import deployments, prices
from ledgergate.shared.kafka.headers import PREFIX as HOP_PREFIX
from ledgergate.shared.kafka.headers import Headers
from ledgergate.shared.metrics.families import (
    LATENCY_BUCKETS_S,
    REBUILD_BUCKETS_S,
    Counts,
    FamilyCollector,
    Gauges,
    Hist,
)
from ledgergate.shared.metrics.families import Spec as S
from ledgergate.shared.metrics.lag import lag_from_stats
from ledgergate.shared.metrics.tenants import Mode, TenantLabels
from ledgergate.shared.settings import MetricsSettings

PREFIX = "ledgergate_"
OTHER_MODEL = "other"
NONE = "none"
# The hop stamps (shared/kafka/headers.py) a decision's latency is measured from, in pipeline order:
# `send` by the SDK (and the load generator), then one per service. Other lg-t-* headers are ignored,
# so what a producer adds cannot grow the label set.
STAGES = ("send", "count", "policy", "budget", "route")
_STAGE_INDEX = {HOP_PREFIX + stage: i for i, stage in enumerate(STAGES)}
_STAGE_KEYS = [(stage,) for stage in STAGES]
# The usage record's token kinds, named as the OpenTelemetry GenAI convention's gen_ai.token.type values
# where it has them (input, output); cached input and reasoning tokens as kinds of their own.
TOKEN_TYPES = ("input", "cached_input", "output", "reasoning")


class Metrics:
    """Every family of one process, and the rules its labels follow."""

    def __init__(self, service: str, tenant_mode: Mode = "off", tenant_top_n: int = 20,
                 known_models: frozenset[str] = frozenset()) -> None:
        self.service = service
        self.tenants = TenantLabels(tenant_mode, tenant_top_n)
        self.known_models = known_models
        self.tenant_labels = self.tenants.enabled  # an attribute, read on every decision
        t: tuple[str, ...] = ("tenant",) if self.tenant_labels else ()
        p = PREFIX
        # --- the decision (router)
        self.decisions = Counts(S(p + "decisions_total", "Gate decisions by outcome, tier, model and reason "
                                  "(the decision's last reason code).", ("outcome", "tier", "model", "reason", *t)))
        self.decision_latency = Hist(S(p + "request_to_decision_seconds", "From the request's send stamp (else "
                                       "its requested_at) to the router publishing its decision."), LATENCY_BUCKETS_S)
        self.hop_latency = Hist(S(p + "hop_latency_seconds", "From the previous hop stamp to this stage's, per "
                                  "decision (stage: count, policy, budget, route).", ("stage",)), LATENCY_BUCKETS_S)
        # --- the ledger (budget-manager)
        self.entries = Counts(S(p + "ledger_entries_total", "Ledger entries appended, by entry type.", ("type",)))
        self.spend = Counts(S(p + "spend_micro_usd_total", "Settled cost in micro-USD (the ledger's integer unit), "
                              "by model and tier.", ("model", "tier", *t)))
        self.expired = Counts(S(p + "reservations_expired_total", "Holds released by their TTL."))
        self.voided = Counts(S(p + "reservations_voided_total", "Holds voided by an operator command."))
        self.overages = Counts(S(p + "overages_total", "Settlements above their hold (flagged overage).", ("model",)))
        self.overage_amount = Counts(S(p + "overage_micro_usd_total", "Cost above the hold, micro-USD.", ("model",)))
        self.cache_hits = Counts(S(p + "cache_hits_total", "Requests answered from the tenant's response cache "
                                   "(CacheHitRecorded ledger entries), by requested model.", ("model", *t)))
        self.cache_saved = Counts(S(p + "cache_saved_micro_usd_total", "What cache hits avoided spending, micro-USD "
                                    "(the cost of the calls that produced their entries).", ("model", *t)))
        # --- the response cache's memory (policy, router)
        self.cache_entries = Gauges(S(p + "cache_entries", "Response-cache entries held in memory."))
        self.cache_bytes = Gauges(S(p + "cache_bytes", "Bytes of response-cache entries held in memory (bounded "
                                    "by LEDGERGATE_CACHE_BYTES_MAX)."))
        self.cache_evictions = Counts(S(p + "cache_evictions_total", "Entries evicted for room (least recently "
                                        "used first), and entries dropped as expired or of an older policy.",
                                        ("why",)))
        self.thresholds = Counts(S(p + "threshold_alerts_total", "Budget thresholds crossed (each a budget.alerts "
                                   "record).", ("scope_type", "threshold_pct")))
        self.open = Gauges(S(p + "reservations_open", "Holds open on each owned ledger partition.", ("partition",)))
        self.open_amount = Gauges(S(p + "reservations_open_micro_usd", "Micro-USD held by the open holds.",
                                    ("partition",)))
        # --- tokens (token-counter, from settled usage)
        self.tokens = Counts(S(p + "tokens_total", "Tokens of metered completions by gen_ai.token.type and model; "
                               "source: measured (provider-reported) or estimated (counted from the text).",
                               ("token_type", "model", "source", *t)))
        # --- every stream process (the runtime)
        self.batches = Counts(S(p + "batches_total", "Batches handled by the stream loop.", ("service",)))
        self.messages = Counts(S(p + "messages_total", "Input messages handled by the stream loop.", ("service",)))
        self.dead_letters = Counts(S(p + "dead_letters_total", "Messages sent to the dead-letter topic, by error "
                                     "code.", ("service", "error_code")))
        self.transactions = Counts(S(p + "transactions_total", "Kafka transactions, by result (committed, "
                                     "aborted).", ("service", "result")))
        self.lag = Gauges(S(p + "consumer_lag_messages", "Messages on an assigned partition not yet handed to the "
                            "handler (librdkafka statistics).", ("group", "topic", "partition")))
        self.rebuild = Hist(S(p + "rebuild_duration_seconds", "State rebuilds at assignment: snapshots read and the "
                              "ledger's tail folded.", ("service",)), REBUILD_BUCKETS_S)
        self.rebuild_entries = Counts(S(p + "rebuild_entries_folded_total", "Ledger entries folded by rebuilds.",
                                        ("service",)))
        # --- the anomaly detector
        self.anomaly_windows = Counts(S(p + "anomaly_windows_total", "Closed rate windows the anomaly detector "
                                        "folded, by metric (spend, tokens).", ("metric",)))
        self.anomalies = Counts(S(p + "anomaly_alerts_total", "ANOMALY alerts emitted (one per episode), by scope "
                                  "type and metric.", ("scope_type", "metric")))
        # --- the alerter and the API
        self.alerts = Counts(S(p + "alert_deliveries_total", "Alerts POSTed to the webhook, by result (delivered, "
                               "dead_lettered).", ("result",)))
        self.http = Counts(S(p + "http_requests_total", "API requests by method, route template and status.",
                             ("method", "route", "status")))
        self.http_latency = Hist(S(p + "http_request_duration_seconds", "API request handling time.",
                                   ("method", "route")), LATENCY_BUCKETS_S)
        self.families = [v for v in vars(self).values() if isinstance(v, Counts | Gauges | Hist)]
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(FamilyCollector(self.families))
        # CPU, memory, open files of the process, under the same prefix.
        ProcessCollector(namespace="ledgergate", registry=self.registry)

    def model(self, name: str | None) -> str:
        """A model label value: a catalogue model, else `other` (a request may name anything)."""
        if not name:
            return NONE
        return name if name in self.known_models else OTHER_MODEL


_active: Metrics | None = None


def configure(service: str, settings: MetricsSettings) -> Metrics | None:
    """Start recording for this process (replacing what an earlier call set up); None when metrics are off."""
    global _active
    if not settings.metrics_enabled:
        _active = None
        return None
    known = {m for v in prices().versions for m in v.models} | set(deployments().by_model)
    _active = Metrics(service, settings.metrics_tenant_label, settings.metrics_tenant_top_n, frozenset(known))
    return _active


def active() -> Metrics | None:
    return _active


def render() -> tuple[bytes, str]:
    """(body, content type) of GET /metrics; an empty exposition while metrics are off."""
    m = _active
    return (generate_latest(m.registry) if m is not None else b""), CONTENT_TYPE_LATEST


def consumer_options(group: str, interval_ms: int) -> dict[str, Any]:
    """librdkafka options for a stream consumer: statistics every `interval_ms` (RuntimeOptions'
    statistics_interval_ms), parsed into the lag gauge; none while metrics are off or the interval is 0."""
    m = _active
    if m is None or interval_ms <= 0:
        return {}

    def on_stats(stats_json: str) -> None:
        m.lag.replace(lag_from_stats(stats_json, group))

    return {"statistics.interval.ms": interval_ms, "stats_cb": on_stats}


# --- the stream runtime --------------------------------------------------------------------------

def observe_batch(messages: int) -> None:
    m = _active
    if m is not None:
        key = (m.service,)
        m.batches.add(key)
        m.messages.add(key, messages)


def dead_lettered(error_code: str) -> None:
    m = _active
    if m is not None:
        m.dead_letters.add((m.service, error_code))


def transaction(result: str) -> None:
    assert result in ("committed", "aborted"), result
    m = _active
    if m is not None:
        m.transactions.add((m.service, result))


def observe_rebuild(seconds: float, entries_folded: int) -> None:
    m = _active
    if m is not None:
        m.rebuild.observe((m.service,), seconds)
        m.rebuild_entries.add((m.service,), entries_folded)


# --- the decision (router) -----------------------------------------------------------------------

def observe_decision(outcome: str, tier: str, model: str | None, reasons: tuple[str, ...], tenant_id: str,
                     headers: Headers | None, requested_at_ms: int) -> None:
    """One decision published: its count, and its latencies from the hop stamps its headers carry (the
    router's own `route` stamp last). Negative spans (clocks of two hosts) count as 0. Written for the
    router's hot path: one pass over the headers, no intermediate dict, the label tuples made once."""
    m = _active
    if m is None:
        return
    key: tuple[str, ...] = (outcome, tier or NONE, m.model(model), reasons[-1] if reasons else NONE)
    if m.tenant_labels:
        key = (*key, m.tenants.label(tenant_id))
    m.decisions.add(key)
    at: list[int] = [0] * len(STAGES)
    for name, value in headers or ():
        i = _STAGE_INDEX.get(name)
        if i is not None and value:
            at[i] = int(value)
    route_us = at[-1]
    if not route_us:
        return
    start_us = at[0] or requested_at_ms * 1000
    m.decision_latency.observe((), (route_us - start_us) / 1e6 if route_us > start_us else 0.0)
    previous, hops = 0, m.hop_latency
    for i in range(len(STAGES)):
        now_us = at[i]
        if not now_us:
            continue
        if previous:
            hops.observe(_STAGE_KEYS[i], (now_us - previous) / 1e6 if now_us > previous else 0.0)
        previous = now_us


# --- the ledger (budget-manager) ------------------------------------------------------------------

def observe_ledger_entry(entry: Any, tier_of: Any) -> None:
    """One entry appended to budget.ledger. `tier_of(model, price_version)` names a settled model's tier."""
    m = _active
    if m is None:
        return
    kind = type(entry).__name__
    m.entries.add((kind,))
    if kind == "ReservationSettled":
        model = m.model(entry.model)
        try:
            tier = tier_of(entry.model, entry.price_version)
        except Exception:  # a price the catalogue no longer has: spend still counts, under no tier
            tier = NONE
        key: tuple[str, ...] = (model, tier)
        if m.tenant_labels:
            key = (*key, m.tenants.label(entry.tenant_id))
        m.spend.add(key, entry.actual_micro_usd)
        if entry.overage_micro_usd > 0:
            m.overages.add((model,))
            m.overage_amount.add((model,), entry.overage_micro_usd)
    elif kind == "CacheHitRecorded":
        hit_key: tuple[str, ...] = (m.model(entry.requested_model),)
        if m.tenant_labels:
            hit_key = (*hit_key, m.tenants.label(entry.tenant_id))
        m.cache_hits.add(hit_key)
        m.cache_saved.add(hit_key, entry.avoided_micro_usd)
    elif kind == "ReservationExpired":
        m.expired.add(())
    elif kind == "ReservationVoided":
        m.voided.add(())
    elif kind == "ThresholdCrossed":
        m.thresholds.add((entry.scope_type, str(entry.threshold_pct)))


def cache_held(entries: int, size_bytes: int, evictions: int, expirations: int) -> None:
    """The response cache's state in this process (its running eviction and expiry counts, made monotonic)."""
    m = _active
    if m is None:
        return
    m.cache_entries.set((), entries)
    m.cache_bytes.set((), size_bytes)
    for why, total in (("evicted", evictions), ("expired", expirations)):
        seen = m.cache_evictions.values.get((why,), 0)
        if total > seen:
            m.cache_evictions.add((why,), total - seen)


def holds_changed(partition: int, count: int, amount_micro_usd: int) -> None:
    """Holds opened (positive) or closed (negative) on a partition's tenants."""
    m = _active
    if m is None:
        return
    key = (str(partition),)
    m.open.set(key, m.open.values.get(key, 0) + count)
    m.open_amount.set(key, m.open_amount.values.get(key, 0) + amount_micro_usd)


def holds_forget(partitions: list[int]) -> None:
    """These partitions were revoked, or are being rebuilt: their holds count again from zero."""
    m = _active
    if m is None:
        return
    gone = {str(p) for p in partitions}
    m.open.drop(lambda k: k[0] not in gone)
    m.open_amount.drop(lambda k: k[0] not in gone)


# --- tokens (token-counter) -----------------------------------------------------------------------

def observe_usage(tenant_id: str, model: str, usage: Any, estimated: bool) -> None:
    """One completion metered: its tokens by kind."""
    m = _active
    if m is None:
        return
    base: tuple[str, ...] = (m.model(model), "estimated" if estimated else "measured")
    if m.tenant_labels:
        base = (*base, m.tenants.label(tenant_id))
    for token_type, count in zip(TOKEN_TYPES, (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens,
                                               usage.reasoning_tokens), strict=True):
        if count:
            m.tokens.add((token_type, *base), count)


# --- the anomaly detector -------------------------------------------------------------------------

def observe_window(metric: str, scope_type: str, alerted: bool) -> None:
    m = _active
    if m is not None:
        m.anomaly_windows.add((metric,))
        if alerted:
            m.anomalies.add((scope_type, metric))


# --- the alerter and the API ----------------------------------------------------------------------

def observe_alert(result: str) -> None:
    assert result in ("delivered", "dead_lettered"), result
    m = _active
    if m is not None:
        m.alerts.add((result,))


def observe_http(method: str, route: str, status: int, seconds: float) -> None:
    m = _active
    if m is not None:
        m.http.add((method, route, str(status)))
        m.http_latency.observe((method, route), seconds)


__all__ = [
    "Metrics",
    "active",
    "cache_held",
    "configure",
    "consumer_options",
    "dead_lettered",
    "holds_changed",
    "holds_forget",
    "observe_alert",
    "observe_batch",
    "observe_decision",
    "observe_http",
    "observe_ledger_entry",
    "observe_rebuild",
    "observe_usage",
    "render",
    "transaction",
]
