"""Read partitions of a topic from an offset up to their current end, outside any consumer group.

Used to rebuild state (the budget-manager folds budget.ledger), to resume the audit chain, and by
replay tools. Reads only committed transactions, like every ledgergate consumer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from ledgergate.connection import KafkaConnection
from ledgergate.kafka_config import assign_promptly, consumer_config
from ledgergate.shared.errors import ReadTimeoutError

# confluent-kafka types a message's topic, partition and offset as Optional: they are None only on a
# Message built by hand or on some error events. Every message a consumer hands over with error() None
# has all three, so these narrow the types and fail loudly should that ever not hold.


def topic_of(msg: Message) -> str:
    topic = msg.topic()
    if topic is None:
        raise ValueError(f"message without a topic (error: {msg.error()})")
    return topic


def partition_of(msg: Message) -> int:
    partition = msg.partition()
    if partition is None:
        raise ValueError(f"message of {msg.topic()} without a partition (error: {msg.error()})")
    return partition


def offset_of(msg: Message) -> int:
    offset = msg.offset()
    if offset is None:
        raise ValueError(f"message of {msg.topic()}[{msg.partition()}] without an offset (error: {msg.error()})")
    return offset


def _high_watermark(consumer: Consumer, topic: str, partition: int, timeout_s: float = 30.0) -> int:
    """Retries the errors a just-created or just-moved partition gives for a moment (no leader yet)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return int(consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1])
        except KafkaException as exc:
            if time.monotonic() > deadline or (not exc.args[0].retriable() and exc.args[0].code() not in (
                    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TRANSPORT)):
                raise
            time.sleep(0.2)


def partition_count(connection: KafkaConnection, topic: str, timeout_s: float = 30.0) -> int:
    """How many partitions `topic` has (every ledgergate topic has the same count); retries a topic that
    has no metadata yet for up to `timeout_s`."""
    consumer = Consumer(consumer_config(connection, "ledgergate-reader", **{"enable.auto.commit": False}))
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
                if meta is not None and meta.error is None and meta.partitions:
                    return len(meta.partitions)
                problem = f"{meta.error if meta is not None else 'no metadata'}"
            except KafkaException as exc:
                problem = str(exc.args[0])
            if time.monotonic() > deadline:
                raise ReadTimeoutError(f"no partitions of {topic} after {timeout_s:.0f} s: {problem}")
            time.sleep(0.2)
    finally:
        consumer.close()


def end_offsets(connection: KafkaConnection, topic: str, partitions: list[int],
                timeout_s: float = 10.0) -> dict[int, int]:
    consumer = Consumer(consumer_config(connection, "ledgergate-reader", **{"enable.auto.commit": False}))
    try:
        return {p: _high_watermark(consumer, topic, p, timeout_s) for p in partitions}
    finally:
        consumer.close()


def read_to_end(connection: KafkaConnection, topic: str, partitions: list[int], start: dict[int, int] | None = None,
                stall_timeout_s: float = 60.0, batch: int = 5000,
                end: dict[int, int] | None = None) -> Iterator[Message]:
    """Yield every committed message of `partitions` from `start` (default: the beginning) to `end`
    (default: the end as it was when the call began; pass the offsets a caller already fetched, so a
    fold and the position it resumes from agree). Raises ReadTimeoutError if no progress is made for stall_timeout_s
    (for example an open transaction of a predecessor that nobody aborts)."""
    if not partitions:
        return
    consumer = Consumer(consumer_config(connection, "ledgergate-reader", **{
        "enable.auto.commit": False, "fetch.wait.max.ms": 50, "fetch.min.bytes": 1,
        "queued.max.messages.kbytes": 262144, "fetch.max.bytes": 52428800}))
    try:
        ends = dict(end) if end is not None else {p: _high_watermark(consumer, topic, p) for p in partitions}
        begin = {p: (start or {}).get(p, OFFSET_BEGINNING) for p in partitions}
        todo = {p for p in partitions if ends[p] > max(0, begin[p] if begin[p] >= 0 else 0)}
        if not todo:
            return
        assign_promptly(consumer, [TopicPartition(topic, p, begin[p]) for p in todo])
        last_progress = time.monotonic()
        while todo:
            msgs = consumer.consume(batch, 0.1)
            for msg in msgs:
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise ReadTimeoutError(f"reading {topic}: {error}")
                    continue
                if offset_of(msg) < ends[partition_of(msg)]:
                    yield msg
            # Positions move past transaction markers too, so compare positions, not message offsets.
            for tp in consumer.position([TopicPartition(topic, p) for p in list(todo)]):
                if tp.offset >= ends[tp.partition]:
                    todo.discard(tp.partition)
            if msgs:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > stall_timeout_s:
                raise ReadTimeoutError(f"reading {topic} partitions {sorted(todo)} made no progress for "
                                       f"{stall_timeout_s:.0f} s (an open transaction?)")
    finally:
        consumer.close()


def load_state(connection: KafkaConnection, topic: str, partitions: list[int],
               apply: Callable[[Message], object]) -> dict[int, int]:
    """Every record of a compacted state topic's `partitions` handed to `apply`, oldest first; returns each
    partition's end offset, where the service's live consumer of the topic continues (its `assigned` returns
    them as start offsets)."""
    ends = end_offsets(connection, topic, partitions)
    for msg in read_to_end(connection, topic, partitions, end=ends):
        apply(msg)
    return ends


def last_message(connection: KafkaConnection, topic: str, partition: int, lookback: int = 64) -> Message | None:
    """The last committed data message of one partition (skipping transaction markers)."""
    consumer = Consumer(consumer_config(connection, "ledgergate-reader", **{"enable.auto.commit": False}))
    try:
        high = _high_watermark(consumer, topic, partition)
        low = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[0]
    finally:
        consumer.close()
    if high <= low:
        return None
    start = max(low, high - lookback)
    found = None
    for msg in read_to_end(connection, topic, [partition], {partition: start}):
        found = msg
    if found is None and start > low:
        return last_message(connection, topic, partition, lookback * 8)
    return found
