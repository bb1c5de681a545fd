"""A faust-streaming worker for the partition-agreement test: it reports where each key arrived
and republishes each key with faust's own (aiokafka) producer to a second topic."""

from __future__ import annotations

import os

import faust

SOURCE = os.environ["LG_TEST_SOURCE"]
ECHO = os.environ["LG_TEST_ECHO"]

app = faust.App(
    f"lg-test-{SOURCE}",
    broker=f"kafka://{os.environ['LG_TEST_BOOTSTRAP']}",
    value_serializer="raw",
    key_serializer="raw",
    topic_disable_leader=True,
    web_enabled=False,
    producer_acks=-1,
    consumer_auto_offset_reset="earliest",
)
source = app.topic(SOURCE, value_type=bytes, key_type=bytes)
echo = app.topic(ECHO, value_type=bytes, key_type=bytes)


@app.agent(source)
async def relay(stream: faust.StreamT) -> None:
    async for event in stream.events():
        partition = str(event.message.partition).encode()
        # Sent keyed, without a partition: aiokafka's default (murmur2) partitioner chooses.
        await echo.send(key=event.key, value=event.value + b"|" + partition)
