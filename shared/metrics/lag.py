"""Consumer lag per group and partition from librdkafka's statistics (statistics.interval.ms + stats_cb).

librdkafka already knows each assigned partition's end offsets (every fetch response carries the high
watermark and the last stable offset) and where the application is, so the lag costs no broker round
trip: the callback runs inside the loop's own poll, once per interval, and parses a few KB of JSON.

Lag here is the end of the partition the consumer may read (the last stable offset under
read_committed, which every ledgergate consumer uses; the high watermark otherwise) minus the next
offset this member hands to its handler (`app_offset`; the committed offset before the first message).
It is not lag against committed offsets: the transactional services commit their offsets through the
producer, which the consumer's statistics do not see. A transactional topic's commit markers take an
offset each, so a caught-up partition of one can show a lag of 1.
"""

from __future__ import annotations

import json
from typing import Any

from ledgergate.shared.metrics.families import Labels

INTERNAL_PARTITION = "-1"  # librdkafka's UA (unassigned) partition in the statistics


def lag_from_stats(stats_json: str, group: str) -> dict[Labels, float]:
    """(group, topic, partition) -> lag in messages, for every partition this consumer (a member of
    `group`: the statistics do not name it) has assigned."""
    stats: dict[str, Any] = json.loads(stats_json)
    if stats.get("type") != "consumer":
        return {}
    found: dict[Labels, float] = {}
    for topic, t in stats.get("topics", {}).items():
        for number, p in t.get("partitions", {}).items():
            if number == INTERNAL_PARTITION or not p.get("desired", False):
                continue
            end = p.get("ls_offset", -1)
            if end is None or end < 0:
                end = p.get("hi_offset", -1)
            position = p.get("app_offset", -1)
            if position is None or position < 0:
                position = p.get("committed_offset", -1)
            if end is None or end < 0:
                continue  # no end known yet: unknown, rather than a made-up figure
            if position is None or position < 0:
                if end > 0:
                    continue  # nothing read or committed yet: where this member starts is unknown
                position = 0  # an empty partition: nothing to read
            found[(group, topic, number)] = float(max(0, end - position))
    return found
