"""Per-hop timing headers: every service stamps when it handled a request, so `make bench` can show
which stage is slow. Values are microseconds since the epoch, ASCII digits."""

from __future__ import annotations

import time

from confluent_kafka import Message

Headers = list[tuple[str, bytes]]
PREFIX = "lg-t-"
MAX_HEADERS = 16  # a bound on what we carry forward, whatever arrives


def stamped(msg: Message | None, stage: str) -> Headers:
    carried: Headers = [(k, v) for k, v in (msg.headers() or [])[:MAX_HEADERS]] if msg is not None else []
    carried.append((PREFIX + stage, str(time.time_ns() // 1000).encode()))  # microseconds
    return carried


def stage_times_us(headers: Headers | None) -> dict[str, int]:
    times = {}
    for key, value in headers or []:
        if key.startswith(PREFIX) and value:
            times[key[len(PREFIX):]] = int(value)
    return times
