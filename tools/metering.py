"""Metered usage per (UTC day, model, estimated), from PostgreSQL's `usage` table or from usage.metered,
for `ledgergate reconcile`.

usage.metered carries tokens but no cost, so the Kafka path prices each record with the catalogue
version in force at its completion (base price: the region a call ran in is on the reservation, not
here). The PostgreSQL path has each settlement's exact cost, which is why it is preferred.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

from ledgergate.codec import codec
from ledgergate.connection import KafkaConnection
from ledgergate.errors import CodecError
from ledgergate.shared.catalogue import UnknownPriceError, prices
from ledgergate.shared.kafka.reader import read_to_end
from ledgergate.shared.kafka.seek import offsets_at, partition_count
from ledgergate.shared.units import MS_PER_DAY, day_start_ms, utc_day
from ledgergate.tools.pg_usage import usage_by_day_model
from ledgergate.tools.reconcile import Amounts, Metered

# Messages carry the token-counter's clock and completed_at_ms the agent's: seek this much early.
SEEK_MARGIN_MS = 15 * 60_000


@dataclass
class MeteringSource:
    name: str
    rows: list[Metered]
    notes: list[str] = field(default_factory=list)


def from_postgres(dsn: str, first: date, last: date) -> tuple[MeteringSource | None, str]:
    """The table's usage, or (None, why it cannot serve) so the caller can fall back to Kafka."""
    rows, why = usage_by_day_model(dsn, first, last)
    if rows is None:
        return None, why
    return MeteringSource(why, [Metered(r.day, r.model, r.estimated, r.requests, Amounts(
        r.input_tokens, r.cached_input_tokens, r.output_tokens, r.reasoning_tokens, r.cost_micro_usd)) for r in rows],
        ["days are settlement days (settled_at_ms, UTC); costs are the settled actual_micro_usd"]), why


def from_kafka(connection: KafkaConnection, topic: str, first: date, last: date, progress_every: int = 100_000,
               progress: Callable[[str], None] | None = None) -> MeteringSource:
    lo, hi = day_start_ms(first), day_start_ms(last) + MS_PER_DAY
    partitions = list(range(partition_count(connection, topic)))
    starts = offsets_at(connection, topic, partitions, lo - SEEK_MARGIN_MS)
    catalogue = prices()
    groups: dict[tuple[str, str, bool], list[int]] = {}  # -> [requests, in, cached, out, reasoning, cost]
    seen: set[str] = set()
    duplicates = unpriced = undecodable = read = 0
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    for msg in read_to_end(connection, topic, partitions, starts):
        read += 1
        if progress_every and read % progress_every == 0:
            say(f"reconcile: {read:,} usage.metered records read")
        try:
            name, rec = codec().decode(msg.value())
        except CodecError:
            undecodable += 1  # the token-counter dead-letters what it cannot read; nothing billable here
            continue
        if name != "UsageMetered" or not lo <= rec["completed_at_ms"] < hi:
            continue
        # A completion reported twice is one provider call: the budget-manager settles it once, so do we.
        if rec["request_id"] in seen:
            duplicates += 1
            continue
        seen.add(rec["request_id"])
        u = rec["usage"]
        try:
            version = catalogue.at(rec["completed_at_ms"]).version
            cost = catalogue.cost_micro_usd(version, rec["model"], u["input_tokens"], u["cached_input_tokens"],
                                            u["output_tokens"], reasoning_tokens=u["reasoning_tokens"])
        except UnknownPriceError:
            unpriced, cost = unpriced + 1, 0
        slot = groups.setdefault((utc_day(rec["completed_at_ms"]), rec["model"], rec["estimated"]), [0] * 6)
        for i, value in enumerate((1, u["input_tokens"], u["cached_input_tokens"], u["output_tokens"],
                                   u["reasoning_tokens"], cost)):
            slot[i] += value
    notes = ["days are completion days (completed_at_ms, UTC); costs priced from the catalogue at base region"]
    if duplicates:
        notes.append(f"{duplicates} repeated completion reports ignored (same request id)")
    if unpriced:
        notes.append(f"{unpriced} records of models without a catalogue price counted at cost 0")
    if undecodable:
        notes.append(f"{undecodable} undecodable records skipped")
    rows = [Metered(d, m, e, s[0], Amounts(*s[1:])) for (d, m, e), s in sorted(groups.items())]
    return MeteringSource(f"Kafka {topic}", rows, notes)
