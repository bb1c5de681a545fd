"""librdkafka's error callback, one for every long-running process: transport errors while the broker
is away are logged and left to the client's own retries; the first fatal error is kept, and the loop
raises it as FatalClientError so the process exits for its supervisor (docs/decisions/0004). Also the
readiness probe's question every consumer loop asks: is input waiting on an owned partition?"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException

from ledgergate.shared.errors import FatalClientError
from ledgergate.shared.health import Health


class ClientErrors:
    def __init__(self, service: str, health: Health, log: Any) -> None:
        self.service = service
        self.health = health
        self.log = log
        self.fatal: KafkaError | None = None

    def on_error(self, err: KafkaError) -> None:
        """The `error_cb` of every client of the process (runs on librdkafka's threads)."""
        if err.fatal():
            self.record(err)
        elif err.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
            self.log.warning("kafka_unreachable", error=str(err))
        else:
            self.log.warning("kafka_error", error=str(err))

    def record(self, err: KafkaError) -> None:
        if self.fatal is None:
            self.fatal = err
            self.health.failed(str(err))
            self.log.error("kafka_fatal_error", error=str(err))

    def check(self) -> None:
        if self.fatal is not None:
            raise FatalClientError(f"{self.service}: fatal Kafka client error: {self.fatal}")

    def fail(self, err: KafkaError) -> None:
        """A fatal error a consume call returned: keep it and raise it."""
        self.record(err)
        self.check()

    def consumed_error(self, err: KafkaError) -> None:
        """An error a consume call returned in place of a message: raise a fatal one, log any other but
        the end of a partition, and let the caller skip it (every consume loop does the same)."""
        if err.fatal():
            self.fail(err)
        if err.code() != KafkaError._PARTITION_EOF:
            self.log.warning("consume_error", error=str(err))


def input_waiting(consumer: Consumer) -> bool:
    """Does an owned partition have records past the consumer's position? From the watermarks the
    last fetches brought, so no broker round trip; True when it cannot tell (a stall is then reported
    once it has lasted stall_after_ms)."""
    try:
        assignment = consumer.assignment()
        positions = consumer.position(assignment) if assignment else []
        return any(consumer.get_watermark_offsets(tp, cached=True)[1] > tp.offset >= 0 for tp in positions)
    except KafkaException:
        return True
