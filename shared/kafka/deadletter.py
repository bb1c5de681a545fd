"""The dead-letter record: one writer for every process that gives up on a message (the stream runtime,
the alerter), so one tool reads them all. The envelope keeps the original bytes and coordinates; the
headers repeat the coordinates and the error so a reader can filter without decoding."""

from __future__ import annotations

import time

from confluent_kafka import Message

from ledgergate.codec import codec
from ledgergate.shared.kafka.headers import Headers

# Bounds on the error text: the envelope keeps enough to diagnose, the header stays small.
ERROR_MESSAGE_MAX_CHARS = 2000
ERROR_HEADER_MAX_CHARS = 500


def dead_letter(msg: Message, service: str, code: str, message: str,
                original: bytes | None = None) -> tuple[bytes, Headers]:
    """(DeadLetter value, headers) for a message `service` could not handle, with its error code and text.
    `original`: the bytes to keep instead of the message's (its tenant's redaction, shared/redaction.py)."""
    partition, offset = msg.partition(), msg.offset()
    assert partition is not None and offset is not None, "a consumed message has coordinates"
    return dead_letter_at(msg.topic() or "", partition, offset, msg.key(),
                          msg.value() if original is None else original, service, code, message)


def dead_letter_at(topic: str, partition: int, offset: int, key: bytes | None, original: bytes | None, service: str,
                   code: str, message: str) -> tuple[bytes, Headers]:
    """The same from the coordinates and bytes alone (the faust-based anomaly detector has no librdkafka
    Message)."""
    value = codec().encode("DeadLetter", {
        "original_topic": topic, "original_partition": partition, "original_offset": offset,
        "original_key": key, "original_value": original, "error_code": code,
        "error_message": message[:ERROR_MESSAGE_MAX_CHARS], "service": service,
        "failed_at_ms": time.time_ns() // 1_000_000})
    headers: Headers = [("original_topic", topic.encode()), ("original_partition", str(partition).encode()),
               ("original_offset", str(offset).encode()), ("error_code", code.encode()),
               ("error", message[:ERROR_HEADER_MAX_CHARS].encode())]
    return value, headers
