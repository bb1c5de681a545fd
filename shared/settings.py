"""Typed, frozen settings. Every value can be set from the environment with the `LEDGERGATE_` prefix.

One settings object per concern; each service composes the ones it needs, so a process reads its
configuration once at start and nothing changes underneath it while it runs.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _config(prefix: str = "LEDGERGATE_") -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, frozen=True, extra="ignore")


class KafkaSettings(BaseSettings):
    model_config = _config()

    kafka_bootstrap: str = "127.0.0.1:9092"
    # Prepended to every topic name, so tests and demos can run side by side on one broker
    # without reading each other's ledgers.
    topic_prefix: str = Field(default="", max_length=64, pattern=r"^[A-Za-z0-9._-]*$")

    def topic(self, logical_name: str) -> str:
        return self.topic_prefix + logical_name
    # Every topic has the same count (co-partitioned by tenant); schemas/topics.yaml holds the default.
    kafka_partitions: int | None = Field(default=None, ge=1, le=256)


class PostgresSettings(BaseSettings):
    model_config = _config()

    pg_dsn: str = "postgresql://ledgergate:ledgergate@127.0.0.1:5433/ledgergate"


class StackSettings(BaseSettings):
    """Where and how `make up` runs the local Kafka broker and PostgreSQL cluster."""

    model_config = _config()

    data_dir: Path = PROJECT_ROOT / ".data"
    kafka_libs_dir: Path = PROJECT_ROOT / ".cache" / "kafka-libs"
    kafka_port: int = Field(default=9092, ge=1024, le=65535)
    kafka_controller_port: int = Field(default=9093, ge=1024, le=65535)
    kafka_heap_mb: int = Field(default=512, ge=256, le=8192)
    pg_port: int = Field(default=5433, ge=1024, le=65535)
    pg_user: str = "ledgergate"
    pg_password: str = "ledgergate"
    pg_database: str = "ledgergate"
    # A broker that is not answering metadata requests after this long has failed to start.
    start_timeout_s: float = Field(default=90.0, gt=0, le=600)
    # Below this much free disk the broker would start and then fail on its first segment roll.
    min_free_disk_mb: int = Field(default=1024, ge=0)
