"""The policy service's response cache (docs/decisions/0013): it answers a request from the tenant's cached
answer, remembers which planned requests may be stored, and turns their metered answers into entries.

State: the entries of the owned partitions (`CacheStore`, loaded from cache.entries on assignment, bounded)
and the requests awaiting their answer (`pending`, bounded, oldest forgotten first). Nothing here decides
what a policy allows: shared/cache.py does (`refusal`, `store_refusal`, `redact`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from ledgergate.events import CacheHit, InvocationCounted, PlanCandidate, UsageMetered
from ledgergate.shared import cache_topic
from ledgergate.shared.cache import CacheEntry, CacheRule, CacheStore, redact, refusal, store_refusal
from ledgergate.shared.catalogue import PriceCatalogue
from ledgergate.shared.settings import PolicySettings


@dataclass(frozen=True, slots=True)
class Pending:
    """What storing a planned request's answer needs: its key, the model asked for, its price key."""

    key: str
    model: str
    price_key: str
    policy_version: int


@dataclass(slots=True)
class Counts:
    hits: int = 0
    stored: int = 0
    not_stored: int = 0  # an answer that came but may not be stored (its reason is logged)
    forgotten: int = 0  # pending requests dropped for room before their answer came


class PolicyCache:
    def __init__(self, settings: PolicySettings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self.store = CacheStore(settings.cache_entries_per_tenant_max, settings.cache_bytes_max)
        self.pending: OrderedDict[str, Pending] = OrderedDict()
        self.counts = Counts()

    def load(self, partitions: list[int], now_ms: int) -> None:
        cache_topic.load(self.settings.kafka_connection, self.topic, partitions, self.store, now_ms)

    def key_for(self, counted: InvocationCounted, rule: CacheRule) -> str:
        """The request's cache key when the tenant's rule lets it be served from and stored into the cache."""
        if not counted.cache_key or not rule.enabled:
            return ""  # the common case: one attribute test, no lookup
        why = refusal(rule, counted.workflow_id, counted.labels, counted.cache_deterministic)
        return counted.cache_key if why is None else ""

    def hit(self, tenant_id: str, key: str, now_ms: int, policy_version: int) -> CacheHit | None:
        entry = self.store.get(tenant_id, key, now_ms, policy_version)
        if entry is None:
            return None
        self.counts.hits += 1
        return CacheHit(entry.entry_id, entry.key, entry.model, entry.input_tokens, entry.output_tokens,
                        entry.cost_micro_usd)

    def await_answer(self, request_id: str, key: str, candidates: tuple[PlanCandidate, ...],
                     requested_model: str, policy_version: int) -> None:
        """Remember a cacheable request planned without a hit: its answer, if it comes, becomes an entry.
        Only the requested model's answer is stored (a hit must answer what was asked)."""
        first = candidates[0] if candidates else None
        if first is None or first.model != requested_model or self.settings.cache_pending_max == 0:
            return
        self.pending[request_id] = Pending(key, requested_model, first.price_version, policy_version)
        if len(self.pending) > self.settings.cache_pending_max:
            self.pending.popitem(last=False)
            self.counts.forgotten += 1

    def answered(self, metered: UsageMetered, rule: CacheRule, policy_version: int, prices: PriceCatalogue,
                 now_ms: int) -> tuple[CacheEntry | None, str | None]:
        """The entry a metered answer becomes, or why it does not (None, None: nothing was awaited)."""
        pending = self.pending.pop(metered.request_id, None)
        if pending is None:
            return None, None
        why = store_refusal(rule, metered.status, metered.response_text) if rule.enabled else "cache_off"
        if why is None and metered.model != pending.model:
            why = "answered_by_another_model"
        if why is None and policy_version != pending.policy_version:
            why = "policy_changed"
        if why is not None or metered.response_text is None:
            self.counts.not_stored += 1
            return None, why or "no_text"
        usage = metered.usage
        cost = prices.cost_micro_usd(pending.price_key, pending.model, usage.input_tokens, usage.cached_input_tokens,
                                     usage.output_tokens, reasoning_tokens=usage.reasoning_tokens)
        entry = CacheEntry(metered.tenant_id, pending.key, f"{metered.request_id}/cache", pending.model,
                           redact(metered.response_text, rule.redact_patterns), usage.input_tokens,
                           usage.output_tokens + usage.reasoning_tokens, cost, now_ms, now_ms + rule.ttl_ms,
                           policy_version)
        self.store.put(entry)
        self.counts.stored += 1
        return entry, None
