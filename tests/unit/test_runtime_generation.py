"""The runtime reads the group generation out of librdkafka's consumer group metadata to refuse a batch
read outside the group (docs/decisions/0007): a client that has not joined (or was expelled) holds -1."""

from __future__ import annotations

import sys

from confluent_kafka import Consumer

from ledgergate.connection import KafkaConnection
from ledgergate.kafka_config import consumer_config
from ledgergate.shared.kafka.fence import CGMD_MAGIC, generation_of


def test_a_client_outside_its_group_holds_generation_minus_one() -> None:
    consumer = Consumer(consumer_config(KafkaConnection("127.0.0.1:1"), "lg-generation-test"))
    try:
        metadata = consumer.consumer_group_metadata()
        assert isinstance(metadata, bytes) and metadata.startswith(CGMD_MAGIC)
        assert generation_of(metadata) == -1
    finally:
        consumer.close()


def test_a_joined_generation_and_an_unknown_format() -> None:
    assert generation_of(CGMD_MAGIC + (7).to_bytes(4, sys.byteorder, signed=True) + b"group\x00member\x00\x01") == 7
    # A format this does not know leaves the check to the broker.
    assert generation_of(b"CGMDv9:whatever") == 0 and generation_of(object()) == 0
