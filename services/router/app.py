"""router adapter: budget.ledger -> gate.decisions (one per request) and audit.log (hash-chained).

Decisions, audit records and the ledger offsets commit in one transaction, so the chain never has a
gap and no decision is published twice for one ledger entry. A new owner of a partition resumes the
chain from the last committed audit record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import OrderedDict

from confluent_kafka import Message

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.events import GateDecision
from ledgergate.services.router import core
from ledgergate.shared import cache_topic, metrics
from ledgergate.shared.cache import CacheStore
from ledgergate.shared.catalogue import deployments
from ledgergate.shared.kafka.headers import stamped
from ledgergate.shared.kafka.outbox import Outbox
from ledgergate.shared.kafka.reader import last_message, offset_of, partition_of, read_to_end, topic_of
from ledgergate.shared.kafka.runtime import run_service
from ledgergate.shared.ledger.entries import (
    CacheHitRecorded,
    LedgerEntry,
    ReservationDenied,
    ReservationPlaced,
    ReservationRepeated,
    from_record,
)
from ledgergate.shared.logging import configure
from ledgergate.shared.settings import RouterSettings
from ledgergate.shared.tracing import Tracing, header_carrier

DECIDING = (ReservationPlaced, ReservationDenied, CacheHitRecorded)
DECIDING_NAMES = tuple(cls.__name__ for cls in DECIDING)
ANSWERED = (*DECIDING, ReservationRepeated)  # the entries that become a decision: a "router decide" span


class Router:
    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.log = configure("router")
        self.tracing = Tracing("router", settings)
        self.deployments = deployments()
        self.topic_ledger = settings.topic(topics.LEDGER)
        self.topic_decisions = settings.topic(topics.DECISIONS)
        self.topic_audit = settings.topic(topics.AUDIT)
        self.topic_cache = settings.topic(topics.CACHE)
        # The response cache's entries of the owned tenants: a CACHE_HIT decision carries the answer's text.
        self.cache = CacheStore(settings.cache_entries_per_tenant_max, settings.cache_bytes_max)
        self.chains: dict[int, core.Chain] = {}
        self.decisions: OrderedDict[str, GateDecision] = OrderedDict()  # entry id -> decision, bounded
        self.refilled: set[int] = set()  # partitions whose memory holds the window before their first repeat

    def assigned(self, partitions: list[int]) -> dict[tuple[str, int], int]:
        ends = cache_topic.load(self.settings.kafka_connection, self.topic_cache, partitions, self.cache,
                                time.time_ns() // 1_000_000)
        for p in partitions:
            chain = core.Chain(p)
            last = last_message(self.settings.kafka_connection, self.topic_audit, p)
            if last is not None:
                _, rec = codec().decode(last.value())
                chain.next_sequence, chain.last_hash = rec["chain_sequence"] + 1, rec["hash"]
            self.chains[p] = chain
        # The memory of recent decisions (to answer a repeated request id identically) is refilled when a
        # partition first sees a repeat, not here: a restart then costs no fold on its way to a decision.
        self.log.info("router_resumed", partitions=partitions,
                      chains={p: self.chains[p].next_sequence for p in partitions})
        self.refilled -= set(partitions)
        # The cache's consumer continues where the load ended.
        return {(self.topic_cache, p): ends[p] for p in partitions}

    def _refill(self, p: int, before_offset: int) -> None:
        """The decisions of the `rebuild_window` ledger entries before this offset, once per assignment."""
        started = time.monotonic()
        start = max(0, before_offset - self.settings.rebuild_window)
        count = 0
        for msg in read_to_end(self.settings.kafka_connection, self.topic_ledger, [p], {p: start},
                               end={p: before_offset}):
            if codec().peek_name(msg.value()) in DECIDING_NAMES:
                entry = from_record(*codec().decode(msg.value()))
                if entry.entry_id not in self.decisions:  # a newer copy is already there
                    self._remember(entry.entry_id, core.decision_for(
                        entry, self.deployments, header_carrier(msg)))  # type: ignore[arg-type]
                count += 1
        self.refilled.add(p)
        self.log.info("router_memory_refilled", partition=p, from_offset=start, to_offset=before_offset,
                      decisions=count, seconds=round(time.monotonic() - started, 3))

    def revoked(self, partitions: list[int]) -> None:
        for p in partitions:
            self.chains.pop(p, None)

    def idle(self, now_ms: int, out: Outbox) -> None:
        metrics.cache_held(len(self.cache), self.cache.size_bytes, self.cache.evictions, self.cache.expirations)

    def _remember(self, entry_id: str, decision: GateDecision) -> None:
        if self.settings.remembered_decisions == 0:
            return
        if decision.cached_response is not None:
            # Not the answer's text (up to 256 KiB each): a repeat of a hit is answered without it, and the SDK
            # asks again with the cache bypassed, as it does for a hit whose entry is gone.
            decision = dataclasses.replace(decision, cached_response=None,
                                           reason_codes=(*decision.reason_codes, core.CACHE_ENTRY_GONE_REASON))
        self.decisions[entry_id] = decision
        if len(self.decisions) > self.settings.remembered_decisions:
            self.decisions.popitem(last=False)

    def handle(self, msg: Message, out: Outbox) -> None:
        if msg.topic() == self.topic_cache:
            cache_topic.apply(self.cache, msg, time.time_ns() // 1_000_000)
            return
        raw = msg.value()
        name, rec = codec().decode(raw)
        assert raw is not None  # decode refuses a message without a value
        entry = from_record(name, rec)
        answered = isinstance(entry, ANSWERED)
        with self.tracing.hop("decide" if answered else "audit", msg, root=answered) as hop:
            hop.describe(entry)
            decision = self._route(msg, out, raw, name, entry)
            if decision is not None:
                hop.describe(decision)

    def _route(self, msg: Message, out: Outbox, raw: bytes, name: str, entry: LedgerEntry) -> GateDecision | None:
        """The entry's audit record, and its decision (returned) with that decision's audit record."""
        p = partition_of(msg)
        chain = self.chains.setdefault(p, core.Chain(p))
        headers = stamped(msg, "route")
        out.emit(self.topic_audit, msg.key(), codec().encode("AuditRecord", core.audit_record(
            chain, kind="LEDGER", event_type=name, subject_id=entry.entry_id, source_topic=topic_of(msg),
            source_partition=p, source_offset=offset_of(msg), event_sha256=hashlib.sha256(raw).hexdigest(),
            summary_json=core.summary_of(entry), tenant_id=entry.tenant_id,
            recorded_at_ms=entry.recorded_at_ms).to_record()), partition=p)
        decision: GateDecision | None = None
        if isinstance(entry, DECIDING):
            cached = None
            if isinstance(entry, CacheHitRecorded):
                # Judged at the entry's own time and policy version, so a replay judges it alike.
                cached = self.cache.get(entry.tenant_id, entry.cache_key, entry.recorded_at_ms, entry.policy_version)
            decision = core.decision_for(entry, self.deployments, header_carrier(msg), cached)
            self._remember(entry.entry_id, decision)
        elif isinstance(entry, ReservationRepeated):
            decision = self.decisions.get(entry.original_entry_id)
            if decision is None and p not in self.refilled:
                self._refill(p, offset_of(msg))
                decision = self.decisions.get(entry.original_entry_id)
            if decision is None:
                self.log.warning("repeat_of_forgotten_decision", tenant_id=entry.tenant_id,
                                 request_id=entry.request_id)
                decision = _forgotten(entry, header_carrier(msg))
        if decision is None:
            return None
        encoded = codec().encode("GateDecision", decision.to_record())
        # Early: a function of the committed ledger entry, so the client need not wait for the commit.
        out.emit_early(self.topic_decisions, msg.key(), encoded, headers)
        metrics.observe_decision(decision.outcome, entry.tier if isinstance(entry, ReservationPlaced) else "",
                                 decision.deployment.model if decision.deployment else None, decision.reason_codes,
                                 decision.tenant_id, headers, decision.requested_at_ms)
        out.emit(self.topic_audit, msg.key(), codec().encode("AuditRecord", core.audit_record(
            chain, kind="DECISION", event_type="GateDecision", subject_id=decision.request_id,
            source_topic=self.topic_decisions, source_partition=p, source_offset=-1,
            event_sha256=hashlib.sha256(encoded).hexdigest(),
            summary_json=json.dumps({"outcome": decision.outcome,
                                     "model": decision.deployment.model if decision.deployment else None,
                                     "reason_codes": list(decision.reason_codes),
                                     "binding_scope": decision.binding_scope}, sort_keys=True),
            tenant_id=entry.tenant_id, recorded_at_ms=entry.recorded_at_ms).to_record()), partition=p)
        return decision


def _forgotten(entry: ReservationRepeated, trace_context: dict[str, str]) -> GateDecision:
    """A repeat older than the router's memory: answer DENY rather than guess the original outcome."""
    return GateDecision(entry.request_id, entry.tenant_id, entry.workflow_id, "", "DENY", "", None, 0, 0, 0,
                        ("repeat_of_forgotten_request",), "conflict", None, None, entry.entry_id, 0,
                        entry.requested_at_ms, entry.recorded_at_ms, trace_context)


def run(settings: RouterSettings | None = None) -> None:
    s = settings or RouterSettings()
    router = Router(s)
    # The decisions are early records (on the request's way at once). With a commit interval (off by
    # default, docs/decisions/0006) the audit records and offsets commit on that cadence instead of per
    # batch, so the router then takes a lone message at once rather than lingering for a batch.
    run_service("router", s, router, [router.topic_ledger, router.topic_cache], router.log,
                commit_interval_ms=s.audit_commit_interval_ms,
                early_records=True,
                batch_linger_s=0.0 if s.audit_commit_interval_ms else s.batch_linger_ms / 1000)
