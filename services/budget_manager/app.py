"""budget-manager adapter: decode, call the pure core, fold the entries, produce them to the ledger.

It is the only writer of budget.ledger for its partitions. State is a fold of the ledger: on partition
assignment it restores from budget.snapshots and folds the ledger's tail (shared/snapshots.py; offset 0
without a usable snapshot), and its ledger appends commit in the
same Kafka transaction as its input offsets, so a crash at any moment neither loses nor repeats an
effect (invariant 2).
"""

from __future__ import annotations

import heapq
import json
import os
import time
from typing import Any

from confluent_kafka import Message

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.errors import MalformedMessageError
from ledgergate.events import InvocationPlanned, UsageMetered
from ledgergate.ids import id_problem, name_problem
from ledgergate.shared import metrics
from ledgergate.shared.catalogue import prices
from ledgergate.shared.kafka.headers import stamped
from ledgergate.shared.kafka.outbox import Outbox
from ledgergate.shared.kafka.reader import offset_of, partition_of
from ledgergate.shared.kafka.runtime import run_service
from ledgergate.shared.ledger import decide
from ledgergate.shared.ledger.entries import LedgerEntry, PolicyChanged, ReservationPlaced, ThresholdCrossed, to_record
from ledgergate.shared.ledger.packing import TenantStore, next_expiry_ms
from ledgergate.shared.ledger.state import TenantState, balances_view, evolve, scope_problem
from ledgergate.shared.logging import configure
from ledgergate.shared.metrics.holds import HoldCounter
from ledgergate.shared.policy import PolicyError, default_policy, parse_policy
from ledgergate.shared.settings import BudgetManagerSettings
from ledgergate.shared.snapshots import restore
from ledgergate.shared.tracing import Tracing, Untraced

# The span of each input's handling: "budget-manager reserve", ... (shared/tracing.py).
OPERATIONS = {"InvocationPlanned": "reserve", "UsageMetered": "settle", "BudgetCommand": "command"}
# Holds released per idle call (one transaction), so a backlog of due holds never holds requests back long.
EXPIRIES_PER_IDLE_MAX = 500


def reserve_from_plan(planned: InvocationPlanned) -> decide.Reserve:
    rejection = planned.rejection
    for problem in (scope_problem(s) for c in planned.candidates for s in c.scopes):
        if problem is not None:
            raise MalformedMessageError(f"invalid candidate: {problem}")
    return decide.Reserve(
        request_id=planned.request_id, tenant_id=planned.tenant_id, workflow_id=planned.workflow_id,
        agent_id=planned.agent_id, requested_model=planned.requested_model, priority=planned.priority,
        region=planned.region, requested_at_ms=planned.requested_at_ms, request_sha256=planned.request_sha256,
        input_tokens=planned.input_tokens, envelope_micro_usd=planned.max_cost_micro_usd,
        policy_version=planned.policy_version,
        candidates=tuple(decide.Candidate(c.model, c.tier, c.estimated_cost_micro_usd, c.granted_output_tokens,
                                          c.price_version, tuple(c.scopes)) for c in planned.candidates),
        rejection_reason=rejection.reason if rejection else None,
        rejection_detail=rejection.detail if rejection else "",
        rejection_scope=rejection.binding_scope if rejection else "policy",
        retry_after_ms=rejection.retry_after_ms if rejection else None,
        fail_open_micro_usd_per_min=planned.fail_open_micro_usd_per_min,
        cache_store=bool(planned.cache_key) and planned.cache_hit is None, cache_hit=planned.cache_hit,
        template=planned.template)


def settle_from_usage(metered: UsageMetered) -> decide.Settle:
    return decide.Settle(metered.request_id, metered.tenant_id, metered.model, metered.usage, metered.estimated,
                         metered.status == "CANCELLED", metered.fail_open)


def command_problem(rec: dict[str, Any]) -> str | None:
    """The edge rule (client/ledgergate/ids.py) for an operator command that did not come through the API
    (which checks the same rule): its strings end up in ledger entries and the read model."""
    return (id_problem("command_id", rec["command_id"]) or id_problem("tenant_id", rec["tenant_id"])
            or id_problem("scope_id", rec["scope_id"], required=False)
            or id_problem("request_id", rec["request_id"] or "", required=False)
            or name_problem("reason", rec["reason"], required=False, max_chars=256)
            or ("policy_json holds a NUL character" if "\x00" in (rec["policy_json"] or "") else None))


def command_from_record(rec: dict[str, Any]) -> decide.Command:
    problem = command_problem(rec)
    if problem is not None:
        raise MalformedMessageError(f"command refused: {problem}")
    return decide.Command(rec["command_id"], rec["tenant_id"], rec["kind"], rec["scope_type"], rec["scope_id"],
                        rec["amount_micro_usd"], rec["request_id"], rec["policy_json"], rec["reason"])


class BudgetManager:
    def __init__(self, settings: BudgetManagerSettings) -> None:
        self.settings = settings
        self.log = configure("budget-manager")
        self.tracing = Tracing("budget-manager", settings)
        self.prices = prices()
        self.topic_planned = settings.topic(topics.PLANNED)
        self.topic_metered = settings.topic(topics.METERED)
        self.topic_commands = settings.topic(topics.COMMANDS)
        self.topic_ledger = settings.topic(topics.LEDGER)
        self.topic_alerts = settings.topic(topics.ALERTS)
        self.topic_snapshots = settings.topic(topics.SNAPSHOTS)
        self.topic_redaction = settings.topic(topics.REDACTION)
        self.redactions: dict[str, tuple[int, tuple[str, ...]]] = {}  # tenant -> (policy version, its patterns)
        self.tenants: dict[int, TenantStore] = {}
        self.expiry_heap: list[tuple[int, int, str, str]] = []  # (expires_at_ms, partition, tenant, request)
        self.dirty = False
        self.holds = HoldCounter()  # the open-holds gauges
        self.base_policy = default_policy()

    # --- rebuild -------------------------------------------------------------------------------

    def assigned(self, partitions: list[int]) -> None:
        # The revoke-all of an eager rebalance dropped every partition; restores start from scratch.
        self.expiry_heap = [e for e in self.expiry_heap if e[1] not in partitions]
        heapq.heapify(self.expiry_heap)
        self.holds.assigned(partitions)
        restored = restore(self.settings.kafka_connection, self.topic_snapshots, self.topic_ledger, partitions,
                           self.settings.hot_tenants_max, self.log, on_entry=self._restored_entry,
                           snapshots=self.settings.restore_from_snapshots)
        for p in partitions:
            self.tenants[p] = restored.stores[p]
            # A tenant restored packed has holds the fold did not see: one wake-up at its earliest expiry.
            for tenant_id, usable in restored.restores[p].tenants.items():
                if usable.next_expiry_ms > 0:
                    heapq.heappush(self.expiry_heap, (usable.next_expiry_ms, p, tenant_id, ""))
                    self.holds.restored(p, tenant_id)
        self.dirty = True

    def revoked(self, partitions: list[int]) -> None:
        for p in partitions:
            self.tenants.pop(p, None)
        self.holds.revoked(partitions)
        self.expiry_heap = [e for e in self.expiry_heap if e[1] not in partitions]
        heapq.heapify(self.expiry_heap)

    def _state(self, partition: int, tenant_id: str) -> TenantState:
        store = self.tenants.get(partition)
        if store is None:
            store = self.tenants[partition] = TenantStore(self.settings.hot_tenants_max)
        state = store.get_or_create(tenant_id)
        self.holds.touched(partition, state)
        return state

    def _scheduled(self, partition: int, offset: int, entry: LedgerEntry) -> None:
        if isinstance(entry, ReservationPlaced):
            heapq.heappush(self.expiry_heap, (entry.expires_at_ms, partition, entry.tenant_id, entry.request_id))

    def _restored_entry(self, partition: int, offset: int, entry: LedgerEntry) -> None:
        self._scheduled(partition, offset, entry)
        if isinstance(entry, ReservationPlaced):
            self.holds.restored(partition, entry.tenant_id)

    def _apply(self, partition: int, entry: LedgerEntry) -> None:
        state = self._state(partition, entry.tenant_id)
        request_id = getattr(entry, "request_id", None)
        before = state.holds.get(request_id) if request_id else None
        evolve(state, entry)
        self.holds.changed(partition, before, state.holds.get(request_id) if request_id else None)
        metrics.observe_ledger_entry(entry, self.prices.tier_of)
        self._scheduled(partition, -1, entry)

    # --- handling ------------------------------------------------------------------------------

    def handle(self, msg: Message, out: Outbox) -> None:
        name, rec = codec().decode(msg.value())
        with self.tracing.hop(OPERATIONS.get(name, "handle"), msg) as hop:
            self._handle(msg, out, name, rec, hop)

    def _handle(self, msg: Message, out: Outbox, name: str, rec: dict[str, Any], hop: Untraced) -> None:
        if msg.key() != rec["tenant_id"].encode():
            # State lives under the input partition and entries go to the tenant's ledger partition:
            # the two agree only when the key is the tenant id.
            raise MalformedMessageError(f"{name} keyed {msg.key()!r}, not by its tenant_id")
        now_ms = time.time_ns() // 1_000_000
        partition = partition_of(msg)
        state = self._state(partition, rec["tenant_id"])
        if name == "InvocationPlanned":
            planned = InvocationPlanned.from_record(rec)
            hop.continues(planned.trace_context)
            entries: list[LedgerEntry] | decide.Rejected = decide.decide_reserve(
                state, reserve_from_plan(planned), now_ms, self.settings.reservation_ttl_ms,
                f"{partition}:{offset_of(msg)}")
        elif name == "UsageMetered":  # its trace context is in the headers (shared/tracing.py)
            metered = UsageMetered.from_record(rec)
            hop.describe(metered)
            entries = decide.decide_settle(state, settle_from_usage(metered), now_ms, self.prices)
            if not entries:
                hop.outcome("ignored")
                self.log.info("settlement_ignored", tenant_id=rec["tenant_id"], request_id=rec["request_id"],
                              why="no reservation or already settled")
        elif name == "BudgetCommand":
            entries = decide.decide_command(state, command_from_record(rec), now_ms)
        else:
            raise MalformedMessageError(f"{name} does not belong on {msg.topic()}")
        if isinstance(entries, decide.Rejected):
            raise MalformedMessageError(f"{entries.code}: {entries.message}")
        hop.describe(*entries)
        # Ledger entries have no trace_context field: the hop's context rides in the headers, to the router.
        self._append(partition, entries, out, hop.headers(stamped(msg, "budget")))

    def _append(self, partition: int, entries: list[LedgerEntry], out: Outbox, headers: list) -> None:
        for entry in entries:
            self._apply(partition, entry)
            name, record = to_record(entry)
            key = entry.tenant_id.encode()
            out.emit(self.topic_ledger, key, codec().encode(name, record), headers)
            if isinstance(entry, PolicyChanged):
                # The token-counter holds no policies: it learns the tenant's redaction from this record.
                out.emit(self.topic_redaction, key, codec().encode("TenantRedaction", {
                    "tenant_id": entry.tenant_id, "policy_version": entry.policy_version,
                    "patterns": list(self._redaction(entry.tenant_id, entry.policy_version, entry.policy_json)),
                    "changed_at_ms": entry.recorded_at_ms}))
            if isinstance(entry, ThresholdCrossed):
                out.emit(self.topic_alerts, key, codec().encode("BudgetAlert", {
                    "alert_id": entry.entry_id, "tenant_id": entry.tenant_id, "scope_type": entry.scope_type,
                    "scope_id": entry.scope_id, "period_id": entry.period_id, "threshold_pct": entry.threshold_pct,
                    "spent_micro_usd": entry.spent_micro_usd, "limit_micro_usd": entry.limit_micro_usd,
                    "crossed_at_ms": entry.recorded_at_ms}))
        if entries:
            self.dirty = True

    def _redaction(self, tenant_id: str, version: int, policy_json: str) -> tuple[str, ...]:
        known = self.redactions.get(tenant_id)
        if known is not None and known[0] == version:
            return known[1]
        try:
            patterns = parse_policy(policy_json, self.base_policy).redact_patterns if policy_json else ()
        except PolicyError as exc:
            self.log.warning("tenant_policy_invalid", tenant_id=tenant_id, error=exc.message)
            patterns = ()
        self.redactions[tenant_id] = (version, patterns)
        return patterns

    def redaction_for(self, msg: Message) -> tuple[str, ...]:
        """The redact patterns of the message's tenant (its key), for the text a dead letter would keep."""
        tenant_id = (msg.key() or b"").decode(errors="replace")
        store = self.tenants.get(partition_of(msg))
        state = store.get(tenant_id) if store is not None else None
        if state is None or not state.policy_json:
            return ()
        return self._redaction(tenant_id, state.policy_version, state.policy_json)

    def idle(self, now_ms: int, out: Outbox) -> None:
        # Bounded per call: after a long stop thousands of holds can be due at once, and requests wait
        # behind an idle call's transaction; the rest are expired on the next calls, interleaved.
        released = 0
        while self.expiry_heap and self.expiry_heap[0][0] <= now_ms and released < EXPIRIES_PER_IDLE_MAX:
            released += 1
            _, partition, tenant_id, request_id = heapq.heappop(self.expiry_heap)
            store = self.tenants.get(partition)
            state = store.get(tenant_id) if store is not None else None
            if state is None:
                continue
            self.holds.touched(partition, state)
            # The heap may name holds since settled or voided: decide_expire says [].
            if request_id:
                self._append(partition, decide.decide_expire(state, request_id, now_ms), out, stamped(None, "budget"))
                continue
            # A restored tenant's wake-up: everything due, then its next one.
            self._append(partition, decide.decide_expiry(state, now_ms), out, stamped(None, "budget"))
            following = next_expiry_ms(state)
            if following > 0:
                heapq.heappush(self.expiry_heap, (following, partition, tenant_id, ""))
        if self.dirty and self.settings.state_dump_path is not None:
            self.dump_state()
            self.dirty = False

    def dump_state(self) -> None:
        view = {state.tenant_id: balances_view(state) for store in self.tenants.values() for state in store.states()}
        path = self.settings.state_dump_path
        assert path is not None
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(view, sort_keys=True))
        os.replace(tmp, path)


def run(settings: BudgetManagerSettings | None = None) -> None:
    s = settings or BudgetManagerSettings()
    manager = BudgetManager(s)
    run_service("budget-manager", s, manager, [manager.topic_commands, manager.topic_planned, manager.topic_metered],
                manager.log, idle_interval_ms=s.expiry_interval_ms)
