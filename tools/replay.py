"""`ledgergate audit replay`: prove audit.log whole, and reconcile the spend it records.

Per audit.log partition (all of them, or the one that holds `--tenant`), record by record so a long
log never sits in memory:
- the hash chain, with `ledgergate.shared.audit.verify_chain` (the one definition of a valid chain). From the
  beginning the chain must start at genesis; from a time (or once retention removed the head) the
  first record read is trusted as the anchor, and the report says so: records before it are unproven;
- completeness against budget.ledger: every ledger entry in the audited range has exactly one LEDGER
  audit record carrying the entry's SHA-256, and no audit record names an entry the ledger lacks.
Then spend per tenant, model and UTC day is rebuilt from the audit's ReservationSettled records and
reconciled against a fold of budget.ledger and, with a DSN, the PostgreSQL `usage` table.
A chain shared by the tenants of a partition is verified whole even when one tenant is asked for;
only the spend is filtered.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from confluent_kafka import Message

from ledgergate.codec import codec
from ledgergate.connection import KafkaConnection
from ledgergate.errors import CodecError, TopicConfigError, TruncatedMessageError
from ledgergate.partitioning import murmur2_partition
from ledgergate.shared.audit import GENESIS_HASH, verify_chain
from ledgergate.shared.kafka.reader import offset_of, partition_of, read_to_end
from ledgergate.shared.kafka.seek import low_watermarks, offsets_at, partition_count
from ledgergate.shared.units import utc_day
from ledgergate.tools.pg_usage import spend_by_tenant_model_day

SpendKey = tuple[str, str, str]  # (tenant, model, day)
# Audit and ledger messages carry their producers' clocks, recorded_at_ms the budget-manager's: seek
# this much earlier than --from and filter on recorded_at_ms, so skew between hosts loses nothing.
SEEK_MARGIN_MS = 5 * 60_000
MAX_LISTED_PROBLEMS = 100


@dataclass(frozen=True)
class ReplayOptions:
    connection: KafkaConnection
    audit_topic: str
    ledger_topic: str
    from_ms: int | None = None
    tenant: str | None = None
    pg_dsn: str | None = None
    progress_every: int = 100_000
    seek_margin_ms: int = SEEK_MARGIN_MS
    # Ledger entries this recent may lack their audit record because the router is behind; older
    # ones without one are a gap (an audit tail lost, or a router that skipped them).
    audit_lag_allowance_ms: int = 5 * 60_000
    progress: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr, flush=True))


@dataclass
class PartitionCheck:
    partition: int
    records: int = 0
    ledger_records: int = 0
    decision_records: int = 0
    first_offset: int | None = None
    last_offset: int | None = None
    first_sequence: int | None = None
    last_sequence: int | None = None
    anchor: str = ""
    problem: dict[str, Any] | None = None  # the first gap or edit: {"offset", "error"}
    prev_hash: str = GENESIS_HASH  # chain tail as verified so far (not reported)
    next_sequence: int = 0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["prev_hash"], out["next_sequence"]
        return out


class AuditReplay:
    def __init__(self, opts: ReplayOptions) -> None:
        self.options = opts
        self.checks: dict[int, PartitionCheck] = {}
        self.genesis: dict[int, bool] = {}
        # (ledger partition, ledger offset) -> (event sha256, audit partition, audit offset), popped as the
        # ledger is read; memory grows with the LEDGER records of the replayed range.
        self.audited: dict[tuple[int, int], tuple[str, int, int]] = {}
        self.coverage: list[dict[str, Any]] = []
        self.coverage_count = 0
        self.unaudited_tail: dict[int, int] = {}
        self.audit_spend: dict[SpendKey, list[int]] = {}
        self.ledger_spend: dict[SpendKey, list[int]] = {}
        self._read = 0
        self._started = time.monotonic()
        self._started_ms = int(time.time() * 1000)

    # --- driving -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        o = self.options
        count = partition_count(o.connection, o.audit_topic)
        ledger_count = partition_count(o.connection, o.ledger_topic)
        if ledger_count != count:
            raise TopicConfigError(f"{o.audit_topic} has {count} partitions and {o.ledger_topic} {ledger_count}; "
                                   "audit chains follow ledger partitions, so the counts must match")
        partitions = [murmur2_partition(o.tenant.encode(), count)] if o.tenant else list(range(count))
        self.checks = {p: PartitionCheck(p) for p in partitions}
        if o.from_ms is None:
            starts = None
            lows = low_watermarks(o.connection, o.audit_topic, partitions)
            self.genesis = {p: lows[p] == 0 for p in partitions}
        else:
            starts = offsets_at(o.connection, o.audit_topic, partitions, o.from_ms - o.seek_margin_ms)
            self.genesis = dict.fromkeys(partitions, False)
        for msg in read_to_end(o.connection, o.audit_topic, partitions, starts):
            self._audit(msg)
            self._tick(o.audit_topic)
        self._ledger(partitions)
        return self._report(partitions)

    def _tick(self, topic: str) -> None:
        self._read += 1
        if self.options.progress_every and self._read % self.options.progress_every == 0:
            rate = self._read / max(1e-6, time.monotonic() - self._started)
            self.options.progress(f"replay: {self._read:,} records read, now {topic} ({rate:,.0f} records/s)")

    # --- audit.log -----------------------------------------------------------------------------

    def _audit(self, msg: Message) -> None:
        p, offset = partition_of(msg), offset_of(msg)
        check = self.checks[p]
        check.records += 1
        check.first_offset = offset if check.first_offset is None else check.first_offset
        check.last_offset = offset
        try:
            name, rec = codec().decode(msg.value())
            if name != "AuditRecord":
                raise CodecError(f"a {name}, not an AuditRecord")
        except CodecError as exc:
            self._fail(check, offset, f"offset {offset}: undecodable record ({exc.message})")
            return
        seq = rec["chain_sequence"]
        if check.first_sequence is None:
            check.first_sequence = seq
            if self.genesis[p] or seq == 0:  # sequence 0 must then carry the genesis prev_hash
                check.anchor = "genesis"
            else:
                # Mid-chain: nothing earlier was read, so this record's prev_hash is taken on trust.
                check.prev_hash, check.next_sequence = rec["prev_hash"], seq
                check.anchor = (f"trusted prev_hash of sequence {seq} at offset {offset}: the replay started "
                                "mid-chain, records before it are not verified")
        check.last_sequence = seq
        if check.problem is None:
            if rec["chain_partition"] != p:
                self._fail(check, offset, f"offset {offset}: record of chain {rec['chain_partition']} on partition {p}")
            else:
                error = verify_chain([(offset, rec)], check.prev_hash, check.next_sequence)
                if error is None:
                    check.prev_hash, check.next_sequence = rec["hash"], seq + 1
                else:
                    self._fail(check, offset, error)
        if rec["kind"] == "DECISION":
            check.decision_records += 1
            return
        check.ledger_records += 1
        if rec["source_topic"] == self.options.ledger_topic:
            ref = (rec["source_partition"], rec["source_offset"])
            if ref in self.audited:
                self._uncovered(f"ledger entry {ref[0]}/{ref[1]} has a second audit record at {p}/{offset}")
            self.audited[ref] = (rec["event_sha256"], p, offset)
        if rec["event_type"] == "ReservationSettled" and self._wanted(rec["tenant_id"], rec["recorded_at_ms"]):
            try:
                summary = json.loads(rec["summary_json"])
                model, actual = str(summary["model"]), int(summary["actual_micro_usd"])
            except (ValueError, KeyError, TypeError):
                self._fail(check, offset, f"offset {offset}: summary_json of a ReservationSettled is unreadable")
                return
            _add(self.audit_spend, (rec["tenant_id"], model, utc_day(rec["recorded_at_ms"])), actual)

    def _wanted(self, tenant: str, recorded_at_ms: int) -> bool:
        return (self.options.tenant is None or tenant == self.options.tenant) and (
            self.options.from_ms is None or recorded_at_ms >= self.options.from_ms)

    @staticmethod
    def _fail(check: PartitionCheck, offset: int, error: str) -> None:
        if check.problem is None:  # the first problem is the one that matters; the rest follow from it
            check.problem = {"partition": check.partition, "offset": offset, "error": error}

    def _uncovered(self, text: str) -> None:
        self.coverage_count += 1
        if len(self.coverage) < MAX_LISTED_PROBLEMS:
            self.coverage.append({"error": text})

    # --- budget.ledger -------------------------------------------------------------------------

    def _ledger(self, partitions: list[int]) -> None:
        o = self.options
        starts = None if o.from_ms is None else offsets_at(o.connection, o.ledger_topic, partitions,
                                                           o.from_ms - o.seek_margin_ms)
        lo: dict[int, int] = {}
        hi: dict[int, int] = {}
        for lp, loff in self.audited:
            lo[lp], hi[lp] = min(lo.get(lp, loff), loff), max(hi.get(lp, loff), loff)
        for msg in read_to_end(o.connection, o.ledger_topic, partitions, starts):
            self._tick(o.ledger_topic)
            p, off, raw = partition_of(msg), offset_of(msg), msg.value()
            if raw is None:  # the codec would refuse it below too; the SHA-256 comparison cannot take it
                raise TruncatedMessageError(f"ledger entry {p}/{off} has no value")
            if off > hi.get(p, -1):
                self._tail(p, off, raw)
                continue  # beyond what the audit covers: outside the spend comparison too
            ref = self.audited.pop((p, off), None)
            if ref is None:
                if off >= (0 if self.genesis.get(p) else lo.get(p, off + 1)):
                    self._uncovered(f"ledger entry {p}/{off} has no audit record")
            elif ref[0] != hashlib.sha256(raw).hexdigest():
                self._uncovered(f"ledger entry {p}/{off} differs from the SHA-256 in its audit record "
                                f"{ref[1]}/{ref[2]}")
            if codec().peek_name(raw) != "ReservationSettled":
                continue
            _, rec = codec().decode(raw)
            if self._wanted(rec["tenant_id"], rec["recorded_at_ms"]):
                _add(self.ledger_spend, (rec["tenant_id"], rec["model"], utc_day(rec["recorded_at_ms"])),
                     rec["actual_micro_usd"])
        for (lp, loff), (_, ap, aoff) in sorted(self.audited.items()):
            # With --from the audit range may begin slightly before the ledger range: not a problem.
            if starts is None or loff >= starts.get(lp, 0):
                self._uncovered(f"audit record {ap}/{aoff} names ledger entry {lp}/{loff}, which the ledger lacks")

    def _tail(self, p: int, off: int, raw: bytes) -> None:
        """A ledger entry after the last audited one: the router is behind, unless the entry is old."""
        recorded_at_ms = codec().decode(raw)[1]["recorded_at_ms"]
        age_s = (self._started_ms - recorded_at_ms) // 1000
        if age_s * 1000 > self.options.audit_lag_allowance_ms:
            self._uncovered(f"ledger entry {p}/{off} has no audit record {age_s} s after it was recorded")
        else:
            self.unaudited_tail[p] = self.unaudited_tail.get(p, 0) + 1

    # --- report --------------------------------------------------------------------------------

    def _report(self, partitions: list[int]) -> dict[str, Any]:
        o = self.options
        checks = [self.checks[p] for p in partitions]
        problems = [c.problem for c in checks if c.problem is not None]
        vs_ledger = diff_totals(self.audit_spend, self.ledger_spend, "ledger")
        postgres: dict[str, Any] = {"checked": False, "reason": "no --pg-dsn given", "differences": []}
        if o.pg_dsn:
            pg, why = spend_by_tenant_model_day(o.pg_dsn, o.tenant, o.from_ms)
            if pg is None:
                postgres["reason"] = why
            else:
                postgres = {"checked": True, "reason": why, "differences": diff_totals(
                    self.audit_spend, {k: list(v) for k, v in pg.items()}, "postgres")}
        chain_ok = not problems and self.coverage_count == 0
        totals_ok = not vs_ledger and not postgres["differences"]
        return {
            "audit_topic": o.audit_topic, "ledger_topic": o.ledger_topic, "from_ms": o.from_ms, "tenant": o.tenant,
            "records_read": self._read, "seconds": round(time.monotonic() - self._started, 3),
            "chain_ok": chain_ok, "totals_ok": totals_ok, "ok": chain_ok and totals_ok,
            "first_problem": min(problems, key=lambda x: (x["partition"], x["offset"])) if problems else None,
            "partitions": [c.to_json() for c in checks],
            "coverage_problems": self.coverage_count, "coverage": self.coverage,
            "unaudited_ledger_tail": {str(p): n for p, n in sorted(self.unaudited_tail.items())},
            "spend": [{"tenant_id": t, "model": m, "day": d, "settlements": n, "actual_micro_usd": s}
                      for (t, m, d), (n, s) in sorted(self.audit_spend.items())],
            "reconciliation": {"ledger": {"checked": True, "differences": vs_ledger}, "postgres": postgres},
        }


def _add(totals: dict[SpendKey, list[int]], key: SpendKey, micro: int) -> None:
    slot = totals.setdefault(key, [0, 0])
    slot[0] += 1
    slot[1] += micro


def diff_totals(audit: dict[SpendKey, list[int]], other: dict[SpendKey, list[int]],
                name: str) -> list[dict[str, Any]]:
    """Every (tenant, model, day) whose settlement count or micro-USD differs between the two."""
    out = []
    for key in sorted(audit.keys() | other.keys()):
        a, b = audit.get(key, [0, 0]), other.get(key, [0, 0])
        if list(a) != list(b):
            out.append({"tenant_id": key[0], "model": key[1], "day": key[2], "audit_settlements": a[0],
                        "audit_micro_usd": a[1], f"{name}_settlements": b[0], f"{name}_micro_usd": b[1]})
    return out
