"""Publishes BudgetCommands to budget.commands, and tenants' credential states to tenant.credentials. The API
never writes the ledger: the budget-manager stays its single writer and turns each command into ledger
entries (or dead-letters it, e.g. a void of an unknown reservation). Of tenant.credentials the API is the
only writer (services/api/credentials.py).

One idempotent producer for the whole process, shared by every request thread. A command is answered
202 only after Kafka acknowledged it (acks=all), so an accepted command id is never lost.
GateClient.send_command is not reused: it also builds a decisions consumer and flushes the whole
producer per call, which serialises concurrent requests behind each other's deliveries.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import replace

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.commands import BudgetCommand
from ledgergate.kafka_config import producer_config, topic_unready
from ledgergate.services.api.errors import Unavailable
from ledgergate.services.api.log import log
from ledgergate.shared.credentials import TenantCredentials
from ledgergate.shared.settings import KafkaSettings


class CommandPublisher:
    def __init__(self, settings: KafkaSettings, timeout_s: float) -> None:
        self.topic = settings.topic(topics.COMMANDS)
        self.topic_credentials = settings.topic(topics.CREDENTIALS)
        self.timeout_s = timeout_s
        # librdkafka gives up on a message when the request does, instead of retrying it for its default
        # five minutes: a command answered 503 should not quietly apply long afterwards.
        self._producer = Producer(producer_config(settings.kafka_connection,
                                                  **{"message.timeout.ms": int(timeout_s * 1000)}))
        self._stop = threading.Event()
        # Delivery callbacks run inside poll(); a dedicated thread serves them so a waiting request
        # thread never has to poll (and so never runs another request's callback).
        self._thread = threading.Thread(target=self._serve, name="api-command-deliveries", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def publish(self, cmd: BudgetCommand, issued_by: str) -> str:
        """Produce and wait for the broker's acknowledgement; returns the command id."""
        cmd = replace(cmd, issued_by=issued_by)
        command_id = cmd.command_id
        # Keyed by tenant: commands land on the tenant's partition, where its budget-manager owns it.
        self.send(self.topic, cmd.tenant_id.encode(), cmd.encode(), command_id, f"command {command_id}")
        log().info("command_published", tenant_id=cmd.tenant_id, command_id=command_id, kind=cmd.kind,
                  issued_by=issued_by)
        return command_id

    def publish_credentials(self, state: TenantCredentials) -> None:
        """The tenant's whole credential state, acknowledged by Kafka before this returns (the caller holds
        the tenant's row lock meanwhile, so the partition holds the states in the order they were made)."""
        value = codec().encode("TenantCredentials", state.to_record())
        label = f"credentials v{state.version} of tenant {state.tenant_id}"
        self.send(self.topic_credentials, state.tenant_id.encode(), value, f"credentials-v{state.version}", label)

    def send(self, topic: str, key: bytes, value: bytes, header_id: str, label: str,
             partition: int | None = None) -> None:
        """Produce one record and wait for Kafka's acknowledgement; Unavailable (503) when it does not come.
        `partition`: pinned (a record keyed by more than its tenant, on the tenant's partition)."""
        delivered: Future[None] = Future()

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                delivered.set_result(None)
            else:
                delivered.set_exception(KafkaException(err))

        try:
            self._producer.produce(topic, key=key, value=value, on_delivery=on_delivery,
                                   headers=[("request_id", header_id.encode())],
                                   partition=-1 if partition is None else partition)  # -1: by the key
        except (BufferError, KafkaException) as exc:
            raise Unavailable(f"{label} could not be queued for Kafka: {exc}") from exc
        try:
            delivered.result(timeout=self.timeout_s)
        except FutureTimeoutError:
            # It may still be delivered later; the caller must not assume either outcome.
            raise Unavailable(f"Kafka did not acknowledge {label} within {self.timeout_s:.0f} s; "
                              "it may or may not apply") from None
        except KafkaException as exc:
            raise Unavailable(f"{label} was not delivered: {exc.args[0]}") from exc

    def ready(self, timeout_s: float = 2.0) -> str | None:
        """None when budget.commands has partitions with leaders; else what is wrong."""
        return topic_unready(self._producer, self.topic, timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join()
        self._producer.flush(timeout_s)
