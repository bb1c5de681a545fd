"""Topic metadata and time-based start offsets for the offline tools (audit replay, invoice reconcile).

Outside any consumer group, like shared/kafka/reader.py: the tools read, they never commit.
"""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from ledgergate.connection import KafkaConnection
from ledgergate.errors import TopicConfigError
from ledgergate.kafka_config import admin_config, consumer_config
from ledgergate.shared.kafka.reader import end_offsets


def partition_count(connection: KafkaConnection, topic: str, timeout_s: float = 10.0) -> int:
    """How many partitions `topic` has; TopicConfigError when it does not exist."""
    meta = AdminClient(admin_config(connection)).list_topics(topic, timeout=timeout_s).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        why = "no metadata" if meta is None else (meta.error or "no partitions")
        raise TopicConfigError(f"topic {topic} does not exist on {connection.describe()} ({why})")
    return len(meta.partitions)


def offsets_at(connection: KafkaConnection, topic: str, partitions: list[int], ts_ms: int,
               timeout_s: float = 30.0) -> dict[int, int]:
    """Per partition, the first offset whose message timestamp is >= ts_ms; a partition with nothing
    that late starts at its end (so the caller reads nothing from it, rather than waiting on OFFSET_END)."""
    if not partitions:
        return {}
    ends = end_offsets(connection, topic, partitions)
    consumer = Consumer(consumer_config(connection, "ledgergate-seek", **{"enable.auto.commit": False}))
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                found = consumer.offsets_for_times([TopicPartition(topic, p, ts_ms) for p in partitions],
                                                   timeout=max(1.0, deadline - time.monotonic()))
                break
            except KafkaException:
                # A leader election just after topic creation answers with a retriable error for a moment.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        consumer.close()
    starts: dict[int, int] = {}
    for tp in found:
        if tp.error is not None:
            raise TopicConfigError(f"offsets_for_times on {topic}[{tp.partition}] failed: {tp.error}")
        starts[tp.partition] = ends[tp.partition] if tp.offset < 0 else tp.offset
    return starts


def low_watermarks(connection: KafkaConnection, topic: str, partitions: list[int]) -> dict[int, int]:
    """The first offset still stored per partition (above 0 once retention has deleted the head)."""
    consumer = Consumer(consumer_config(connection, "ledgergate-seek", **{"enable.auto.commit": False}))
    try:
        return {p: int(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0]) for p in partitions}
    finally:
        consumer.close()
