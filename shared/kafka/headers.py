"""Per-hop timing headers: every service stamps when it handled a request, so `make bench` can show
which stage is slow. Values are microseconds since the epoch, ASCII digits."""

from __future__ import annotations

import time

from confluent_kafka import Message

# The list form of confluent-kafka's header type, element for element: Producer.produce() takes it as is
# (lists are invariant, so a list[tuple[str, bytes]] would not do), and a header can arrive with no value.
Headers = list[tuple[str, str | bytes | None]]
PREFIX = "lg-t-"
MAX_HEADERS = 16  # a bound on what we carry forward, whatever arrives


def headers_of(msg: Message) -> Headers:
    """A consumed message's headers. librdkafka hands them over as a list; the stub also allows the dict
    that produce() accepts, which a consumed message never has."""
    headers = msg.headers()
    if headers is None:
        return []
    if not isinstance(headers, list):
        raise TypeError(f"headers of a consumed message should be a list, not {type(headers).__name__}")
    return headers


def stamped(msg: Message | None, stage: str) -> Headers:
    carried: Headers = headers_of(msg)[:MAX_HEADERS] if msg is not None else []
    carried.append((PREFIX + stage, str(time.time_ns() // 1000).encode()))  # microseconds
    return carried


def stage_times_us(headers: Headers | None) -> dict[str, int]:
    times = {}
    for key, value in headers or []:
        if key.startswith(PREFIX) and value:
            times[key[len(PREFIX):]] = int(value)
    return times
