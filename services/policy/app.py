"""policy adapter: invocation.counted (+ the tenant's budget.ledger, co-partitioned) -> invocation.planned;
usage.metered answers the tenant's cache rule lets it store -> cache.entries (services/policy/cache.py).

The ledger gives each tenant's policy document (PolicyChanged) and budget burn; it is folded with the
same `evolve` the budget-manager uses, restored like the budget-manager's from budget.snapshots and the
ledger's tail (shared/snapshots.py). Burn seen here may trail the budget-manager by a few entries:
that only shifts a tier choice, never a limit, which the budget-manager enforces exactly.
"""

from __future__ import annotations

import time
from dataclasses import fields

from confluent_kafka import Message

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.errors import MalformedMessageError
from ledgergate.events import CacheHit, InvocationCounted, InvocationPlanned, PlanRejection, UsageMetered
from ledgergate.services.policy import core, tokenrate
from ledgergate.services.policy.cache import PolicyCache
from ledgergate.shared import cache_topic, metrics
from ledgergate.shared.cache import CacheRule
from ledgergate.shared.catalogue import deployments, prices
from ledgergate.shared.kafka.headers import stamped
from ledgergate.shared.kafka.outbox import Outbox
from ledgergate.shared.kafka.reader import partition_of, read_to_end
from ledgergate.shared.kafka.runtime import run_service
from ledgergate.shared.kafka.seek import offsets_at
from ledgergate.shared.ledger.entries import (
    ReservationDenied,
    ReservationPlaced,
    ReservationSettled,
    ReservationVoided,
    from_record,
)
from ledgergate.shared.ledger.packing import TenantStore
from ledgergate.shared.ledger.periods import period_of
from ledgergate.shared.ledger.state import REGION, TENANT, TenantState, evolve
from ledgergate.shared.logging import configure
from ledgergate.shared.policy import Policy, PolicyError, default_policy, parse_policy
from ledgergate.shared.settings import PolicySettings
from ledgergate.shared.snapshots import restore
from ledgergate.shared.tracing import Tracing, Untraced


class PolicyService:
    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings
        self.log = configure("policy")
        self.tracing = Tracing("policy", settings)
        self.prices = prices()
        self.deployments = deployments()
        self.base = default_policy(settings.default_policy_path) if settings.default_policy_path else default_policy()
        self.base_rule = self.base.cache.to_rule(self.base.redact_patterns)
        self.topic_counted = settings.topic(topics.COUNTED)
        self.topic_ledger = settings.topic(topics.LEDGER)
        self.topic_planned = settings.topic(topics.PLANNED)
        self.topic_snapshots = settings.topic(topics.SNAPSHOTS)
        self.topic_metered = settings.topic(topics.METERED)
        self.topic_cache = settings.topic(topics.CACHE)
        self.cache = PolicyCache(settings, self.topic_cache)
        # partition -> its tenants, the fold of that partition's ledger. Per partition, so that a partition
        # assigned again (after a rebalance moved it away and back) is restored from scratch: folding it
        # on top of the states already held counted every entry twice.
        self.tenants: dict[int, TenantStore] = {}
        self.policies: dict[str, tuple[int, Policy, CacheRule]] = {}  # tenant -> (version, parsed, its cache rule)
        self.buckets: dict[str, core.Bucket] = {}
        self.token_windows = tokenrate.Windows()

    def assigned(self, partitions: list[int]) -> dict[tuple[str, int], int]:
        restored = restore(self.settings.kafka_connection, self.topic_snapshots, self.topic_ledger, partitions,
                           self.settings.hot_tenants_max, self.log, snapshots=self.settings.restore_from_snapshots)
        self.tenants.update(restored.stores)
        self.cache.load(partitions, time.time_ns() // 1_000_000)
        self._rebuild_token_windows(partitions, restored.ends, time.time_ns() // 1_000_000)
        self.log.info("policy_state_rebuilt", partitions=partitions,
                      tenants=sum(len(self.tenants[p]) for p in partitions), cache_entries=len(self.cache.store))
        # The fold continues from where the restore ended, on the ledger the service also consumes.
        return {(self.topic_ledger, p): restored.ends[p] for p in partitions}

    def revoked(self, partitions: list[int]) -> None:
        for p in partitions:
            store = self.tenants.pop(p, None)
            # A tenant with a cache rule has a policy, so its state is in the partition's store.
            for tenant_id in store.tenant_ids() if store is not None else ():
                self.cache.store.forget(tenant_id)

    def idle(self, now_ms: int, out: Outbox) -> None:
        store = self.cache.store
        metrics.cache_held(len(store), store.size_bytes, store.evictions, store.expirations)

    def _fold(self, msg: Message) -> None:
        name, rec = codec().decode(msg.value())
        p = partition_of(msg)
        store = self.tenants.get(p)
        if store is None:
            store = self.tenants[p] = TenantStore(self.settings.hot_tenants_max)
        entry = from_record(name, rec)
        evolve(store.get_or_create(rec["tenant_id"]), entry)
        released = isinstance(entry, ReservationDenied | ReservationVoided)
        if released and self.token_windows.requests:
            # A counted plan the ledger denied, or voided before any usage, used no tokens. An expired hold
            # keeps its estimate: its call may well have run (only its report is missing). A settlement's actual
            # usage arrives on usage.metered too; whichever comes first replaces the estimate, once.
            tokenrate.settle(self.token_windows, getattr(entry, "request_id", ""), None, None)

    def _rebuild_token_windows(self, partitions: list[int], ends: dict[int, int], now_ms: int) -> None:
        """The token-rate windows of the tenants these partitions hold, rebuilt from the ledger's last window:
        each reservation placed in it counts its estimate, its settlement corrects it, a void removes it; so a
        restarted or rebalanced instance limits as the one before it did. Read only when a tenant of these
        partitions has token-rate limits, and only that tenant's entries are decoded."""
        limited: set[bytes] = set()
        for p in partitions:
            store = self.tenants.get(p)
            for tenant_id in store.tenant_ids() if store is not None else ():
                state = store.get(tenant_id) if store is not None else None
                if state is not None and "token_rate_limits" in state.policy_json:
                    limited.add(tenant_id.encode())
        if not limited:
            return
        since_ms = now_ms - tokenrate.WINDOW_MS
        starts = offsets_at(self.settings.kafka_connection, self.topic_ledger, partitions, since_ms)
        counted = 0
        for msg in read_to_end(self.settings.kafka_connection, self.topic_ledger, partitions, starts, end=ends):
            if msg.key() not in limited:
                continue
            name, rec = codec().decode(msg.value())
            if name not in ("ReservationPlaced", "ReservationSettled", "ReservationVoided"):
                continue
            entry = from_record(name, rec)
            if isinstance(entry, ReservationPlaced):
                policy = self.policy_for(entry.tenant_id, self._state(partition_of(msg), entry.tenant_id))
                tokenrate.count(self.token_windows, tokenrate.rules_of(policy), entry.request_id, entry.tenant_id,
                                entry.workflow_id, entry.requested_model, entry.input_tokens,
                                entry.granted_output_tokens, entry.recorded_at_ms)
                counted += 1
            elif isinstance(entry, ReservationSettled):
                tokenrate.settle(self.token_windows, entry.request_id, entry.usage.input_tokens,
                                 entry.usage.output_tokens + entry.usage.reasoning_tokens)
            elif isinstance(entry, ReservationVoided):
                tokenrate.settle(self.token_windows, entry.request_id, None, None)
        self.log.info("token_windows_rebuilt", partitions=partitions, tenants=len(limited), reservations=counted,
                      windows={s: self.token_windows.used(s, now_ms) for s in list(self.token_windows.slots)[-8:]})

    def _state(self, partition: int, tenant_id: str) -> TenantState | None:
        store = self.tenants.get(partition)
        return store.get(tenant_id) if store is not None else None

    def policy_for(self, tenant_id: str, state: TenantState | None) -> Policy:
        return self._policy(tenant_id, state)[0]

    def _policy(self, tenant_id: str, state: TenantState | None) -> tuple[Policy, CacheRule]:
        if state is None or not state.policy_json:
            return self.base, self.base_rule
        cached = self.policies.get(tenant_id)
        if cached is None or cached[0] != state.policy_version:
            try:
                parsed = parse_policy(state.policy_json, self.base)
            except PolicyError as exc:
                # A bad document was already accepted into the ledger: keep serving with the default
                # rather than stopping the tenant, and say so.
                self.log.warning("tenant_policy_invalid", tenant_id=tenant_id, error=exc.message)
                parsed = self.base
            cached = self.policies[tenant_id] = (state.policy_version, parsed,
                                                 parsed.cache.to_rule(parsed.redact_patterns))
        return cached[1], cached[2]

    def redaction_for(self, msg: Message) -> tuple[str, ...]:
        """The redact patterns of the message's tenant (its key), for the text a dead letter would keep."""
        tenant_id = (msg.key() or b"").decode(errors="replace")
        return self._policy(tenant_id, self._state(partition_of(msg), tenant_id))[0].redact_patterns

    @staticmethod
    def burn(tenant_id: str, state: TenantState | None, now_ms: int) -> core.Burn:
        if state is None:
            return core.Burn(0, None)
        period = period_of(now_ms)[0]
        scope = (TENANT, tenant_id)
        limit = state.limits.get(scope)
        b = state.peek(period, scope)
        total = None if limit is None else limit + b.credit_micro_usd
        return core.Burn(b.posted_micro_usd + b.pending_micro_usd, total)

    def handle(self, msg: Message, out: Outbox) -> None:
        if msg.topic() == self.topic_ledger:
            self._fold(msg)
            return
        if msg.topic() == self.topic_metered:
            self._settle_tokens(msg)
            if self.cache.pending:  # no tenant awaits an answer to store: not even a decode
                self._store(msg, out)
            return
        with self.tracing.hop("plan", msg) as hop:
            self._plan(msg, out, hop)

    def _plan(self, msg: Message, out: Outbox, hop: Untraced) -> None:
        name, rec = codec().decode(msg.value())
        if name != "InvocationCounted":
            raise MalformedMessageError(f"{name} does not belong on {msg.topic()}")
        counted = InvocationCounted.from_record(rec)
        hop.continues(counted.trace_context)
        now_ms = time.time_ns() // 1_000_000
        tenant_id = counted.tenant_id
        # Co-partitioned: the tenant's ledger entries are on the same partition number as this message.
        state = self._state(partition_of(msg), tenant_id)
        policy, rule = self._policy(tenant_id, state)
        policy_version = state.policy_version if state else 0
        candidates, rejection = core.plan(counted, policy, self.burn(tenant_id, state, now_ms), self.prices, now_ms,
                                          self.deployments, _region_budgets(state))
        cache_key = self.cache.key_for(counted, rule) if rejection is None else ""
        hit: CacheHit | None = None
        if cache_key:
            hit = self.cache.hit(tenant_id, cache_key, now_ms, policy_version)
            if hit is not None:
                # Answered from the tenant's own earlier answer: nothing to reserve, and no provider call for
                # the rate limit to pace (the bucket is left as it was).
                candidates = ()
                self.log.info("cache_hit", tenant_id=tenant_id, request_id=counted.request_id,
                              entry_id=hit.entry_id)
        if rejection is None and hit is None:
            bucket = self.buckets.setdefault(tenant_id, core.Bucket(policy.rate_burst * 1000, now_ms))
            wait_ms = core.take_rate(bucket, policy, now_ms)
            if wait_ms is not None:
                candidates, rejection = (), PlanRejection("rate_limited", f"over {policy.rate_limit_per_s}/s",
                                                          wait_ms, "rate")
            else:
                rejection = self._take_tokens(counted, policy, now_ms)
                if rejection is not None:
                    candidates = ()
            if rejection is None and cache_key:  # a miss: its answer, when metered, becomes an entry
                self.cache.await_answer(counted.request_id, cache_key, candidates, counted.requested_model,
                                        policy_version)
        envelope = _min_known(counted.max_cost_micro_usd, policy.request_envelope_micro_usd)
        carried = {name: getattr(counted, name) for name in _CARRIED}
        planned = InvocationPlanned(**{**carried, "max_cost_micro_usd": envelope, "trace_context": hop.context,
                                       "cache_key": cache_key if rejection is None else ""},
                                    candidates=candidates, rejection=rejection, policy_version=policy_version,
                                    planned_at_ms=now_ms, cache_hit=hit,
                                    fail_open_micro_usd_per_min=policy.fail_open_micro_usd_per_min)
        hop.describe(planned)
        out.emit(self.topic_planned, msg.key(), codec().encode("InvocationPlanned", planned.to_record()),
                 stamped(msg, "policy"))

    def _take_tokens(self, counted: InvocationCounted, policy: Policy, now_ms: int) -> PlanRejection | None:
        """The tenant's token-rate limits: a plan that fits is counted now (its estimate), one that does not
        is THROTTLE (rate_limited, retried with the same id) or, bigger than the whole limit, DENY."""
        if not policy.token_rate_limits:
            return None
        rules = tokenrate.rules_of(policy)
        granted_out = min(counted.estimated_output_tokens, counted.max_output_tokens, policy.max_output_tokens)
        args = (counted.tenant_id, counted.workflow_id, counted.requested_model, counted.input_tokens, granted_out)
        verdict = tokenrate.check(self.token_windows, rules, *args, now_ms)
        if verdict is None:
            tokenrate.count(self.token_windows, rules, counted.request_id, *args, now_ms)
            return None
        self.log.info("token_rate_limited", tenant_id=counted.tenant_id, request_id=counted.request_id,
                      scope=verdict.scope, wait_ms=verdict.wait_ms, deny=verdict.deny)
        if verdict.deny is not None:
            return PlanRejection("token_rate_exceeded", verdict.deny, None, verdict.scope)
        return PlanRejection("rate_limited", f"over {verdict.scope}", verdict.wait_ms, verdict.scope)

    def _settle_tokens(self, msg: Message) -> None:
        """The actual usage replaces the estimate in the slot where the plan was counted."""
        if not self.token_windows.requests:
            return
        name, rec = codec().decode(msg.value())
        if name != "UsageMetered":
            return
        metered = UsageMetered.from_record(rec)
        tokenrate.settle(self.token_windows, metered.request_id, metered.usage.input_tokens,
                         metered.usage.output_tokens + metered.usage.reasoning_tokens)

    def _store(self, msg: Message, out: Outbox) -> None:
        """A metered answer the tenant's cache rule lets this service store becomes an entry on cache.entries,
        on the tenant's partition (co-partitioned: the key's hash is not used)."""
        name, rec = codec().decode(msg.value())
        if name != "UsageMetered":
            raise MalformedMessageError(f"{name} does not belong on {msg.topic()}")
        metered = UsageMetered.from_record(rec)
        if metered.request_id not in self.cache.pending:
            return
        now_ms = time.time_ns() // 1_000_000
        state = self._state(partition_of(msg), metered.tenant_id)
        _, rule = self._policy(metered.tenant_id, state)
        entry, why = self.cache.answered(metered, rule, state.policy_version if state else 0, self.prices, now_ms)
        if entry is None:
            self.log.info("cache_not_stored", tenant_id=metered.tenant_id, request_id=metered.request_id, why=why)
            return
        out.emit(self.topic_cache, cache_topic.record_key(entry.tenant_id, entry.key), cache_topic.encode(entry),
                 stamped(msg, "policy"), partition=partition_of(msg))
        self.log.info("cache_stored", tenant_id=entry.tenant_id, request_id=metered.request_id,
                      entry_id=entry.entry_id, bytes=entry.size_bytes)


# What a plan carries over from its counted request: every field but the count's own time (and the cache
# key, which a plan carries only when the tenant's cache rule lets the request use the cache).
_CARRIED = tuple(f.name for f in fields(InvocationCounted) if f.name not in ("counted_at_ms", "cache_key"))


def _region_budgets(state: TenantState | None) -> frozenset[str]:
    """The regions the tenant has a REGION budget for (its candidates there hold on that scope)."""
    if state is None or not state.limits:
        return frozenset()
    return frozenset(scope_id for scope_type, scope_id in state.limits if scope_type == REGION)


def _min_known(a: int | None, b: int | None) -> int | None:
    known = [x for x in (a, b) if x is not None]
    return min(known) if known else None


def run(settings: PolicySettings | None = None) -> None:
    s = settings or PolicySettings()
    service = PolicyService(s)
    # At least once: a re-planned request reaches the budget-manager as a repeat of the same id and
    # content, which it answers with ReservationRepeated (an identical decision), never a second hold.
    run_service("policy", s, service, [service.topic_counted, service.topic_ledger, service.topic_metered], service.log,
                delivery="produce-then-commit")
