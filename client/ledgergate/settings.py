"""Where the gate is: the cluster (a KafkaConnection: address and security) and the topic prefix, from
arguments or the same `LEDGERGATE_*` environment variables the services read
(ledgergate.shared.settings.KafkaSettings uses these defaults and this rule). Plain stdlib, so the public
package needs no settings library."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ledgergate.connection import DEFAULT_BOOTSTRAP, KafkaConnection
from ledgergate.errors import GateClientError

__all__ = ["DEFAULT_BOOTSTRAP", "TOPIC_PREFIX_MAX_CHARS", "TOPIC_PREFIX_PATTERN", "ClientSettings"]

TOPIC_PREFIX_PATTERN = r"^[A-Za-z0-9._-]*$"
TOPIC_PREFIX_MAX_CHARS = 64


@dataclass(frozen=True, slots=True)
class ClientSettings:
    # Where the cluster is and how to authenticate to it; the default is the local stack (PLAINTEXT).
    kafka_connection: KafkaConnection = field(default_factory=KafkaConnection)
    # Prepended to every topic name, so tests and demos can share a broker without reading each other's ledgers.
    topic_prefix: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.kafka_connection, KafkaConnection):
            raise GateClientError(f"kafka_connection must be a KafkaConnection, not {self.kafka_connection!r}")
        if len(self.topic_prefix) > TOPIC_PREFIX_MAX_CHARS or not re.match(TOPIC_PREFIX_PATTERN, self.topic_prefix):
            raise GateClientError(f"topic_prefix {self.topic_prefix!r} must be at most {TOPIC_PREFIX_MAX_CHARS} "
                                  "characters of A-Z a-z 0-9 . _ -")

    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka_connection.bootstrap

    @classmethod
    def from_env(cls, kafka_bootstrap: str | None = None, topic_prefix: str | None = None,
                 kafka_connection: KafkaConnection | None = None) -> ClientSettings:
        """An argument wins over the environment, which wins over the defaults: `kafka_connection` over
        every LEDGERGATE_KAFKA_* variable (KafkaConnection.from_env), `kafka_bootstrap` over
        LEDGERGATE_KAFKA_BOOTSTRAP alone (the security settings still come from the environment),
        `topic_prefix` over LEDGERGATE_TOPIC_PREFIX. A kafka_bootstrap that is not the kafka_connection's
        bootstrap is an error: one of them would be ignored."""
        if kafka_bootstrap and not kafka_bootstrap.strip():
            raise GateClientError("kafka_bootstrap is blank; give host:port[,host:port...]")
        if kafka_connection is None:
            kafka_connection = KafkaConnection.from_env(bootstrap=kafka_bootstrap or None)
        elif kafka_bootstrap and kafka_bootstrap != kafka_connection.bootstrap:
            raise GateClientError(f"kafka_bootstrap {kafka_bootstrap!r} is not the kafka_connection's bootstrap "
                                  f"{kafka_connection.bootstrap!r}; give one of them")
        env = os.environ
        return cls(kafka_connection=kafka_connection,
                   topic_prefix=topic_prefix if topic_prefix is not None else env.get("LEDGERGATE_TOPIC_PREFIX", ""))

    def topic(self, logical_name: str) -> str:
        return self.topic_prefix + logical_name
