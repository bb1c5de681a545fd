"""Where the gate is: the broker and the topic prefix, from arguments or the same `LEDGERGATE_*`
environment variables the services read (ledgergate.shared.settings.KafkaSettings uses these defaults
and this rule). Plain stdlib, so the public package needs no settings library."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ledgergate.errors import GateClientError

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
TOPIC_PREFIX_PATTERN = r"^[A-Za-z0-9._-]*$"
TOPIC_PREFIX_MAX_CHARS = 64


@dataclass(frozen=True, slots=True)
class ClientSettings:
    kafka_bootstrap: str = DEFAULT_BOOTSTRAP
    # Prepended to every topic name, so tests and demos can share a broker without reading each other's ledgers.
    topic_prefix: str = ""

    def __post_init__(self) -> None:
        if not self.kafka_bootstrap.strip():
            raise GateClientError("kafka_bootstrap is empty; give host:port[,host:port...]")
        if len(self.topic_prefix) > TOPIC_PREFIX_MAX_CHARS or not re.match(TOPIC_PREFIX_PATTERN, self.topic_prefix):
            raise GateClientError(f"topic_prefix {self.topic_prefix!r} must be at most {TOPIC_PREFIX_MAX_CHARS} "
                                  "characters of A-Z a-z 0-9 . _ -")

    @classmethod
    def from_env(cls, kafka_bootstrap: str | None = None, topic_prefix: str | None = None) -> ClientSettings:
        """An argument wins over LEDGERGATE_KAFKA_BOOTSTRAP / LEDGERGATE_TOPIC_PREFIX, which win over the defaults."""
        env = os.environ
        return cls(kafka_bootstrap=kafka_bootstrap or env.get("LEDGERGATE_KAFKA_BOOTSTRAP", DEFAULT_BOOTSTRAP),
                   topic_prefix=topic_prefix if topic_prefix is not None else env.get("LEDGERGATE_TOPIC_PREFIX", ""))

    def topic(self, logical_name: str) -> str:
        return self.topic_prefix + logical_name
