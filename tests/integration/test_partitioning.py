"""Our murmur2_partition agrees with where a real confluent-kafka producer (partitioner murmur2_random,
from ledgergate.kafka_config) put each key on the real broker."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, Message, Producer

from ledgergate.kafka_config import producer_config
from ledgergate.partitioning import murmur2_partition
from ledgergate.shared.settings import KafkaSettings
from ledgergate.topics import LEDGER

pytestmark = pytest.mark.integration

KEYS = [f"tenant-{i:04d}".encode() for i in range(200)] + [
    b"acme", b"globex", b"initech", b"umbrella", b"hooli", b"demo-probe", "tënant-ü".encode(), b"x"]


def test_producer_partitions_match_murmur2_partition(kafka: KafkaSettings) -> None:
    topic = kafka.topic(LEDGER)
    producer = Producer(producer_config(kafka.kafka_connection))
    placed: dict[bytes, int] = {}

    def remember(err: KafkaError | None, msg: Message) -> None:
        assert err is None, err
        placed[msg.key()] = msg.partition()

    for key in KEYS:
        producer.produce(topic, key=key, value=b"v", on_delivery=remember)
    assert producer.flush(30) == 0
    partitions = len(producer.list_topics(topic, timeout=10).topics[topic].partitions)
    assert partitions > 1
    assert len(placed) == len(KEYS)
    mismatches = {k: (p, murmur2_partition(k, partitions)) for k, p in placed.items()
                  if p != murmur2_partition(k, partitions)}
    assert not mismatches
    assert len(set(placed.values())) == partitions, "200 keys should reach every partition"
