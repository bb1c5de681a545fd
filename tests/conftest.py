"""Test fixtures. Integration and e2e tests use the real local stack, which this starts if needed."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest

from shared.settings import KafkaSettings, PostgresSettings, StackSettings


@pytest.fixture(scope="session")
def stack() -> StackSettings:
    """Kafka and PostgreSQL, really running: `stack.up` is idempotent and waits on real requests."""
    from shared.devstack import stack as devstack

    settings = StackSettings()
    devstack.up(settings)
    return settings


@pytest.fixture
def kafka(stack: StackSettings) -> Iterator[KafkaSettings]:
    """A fresh set of every ledgergate topic under a unique prefix, deleted afterwards."""
    from confluent_kafka.admin import AdminClient

    from shared.kafka import topics

    settings = KafkaSettings(kafka_bootstrap=f"127.0.0.1:{stack.kafka_port}",
                             topic_prefix=f"t{uuid.uuid4().hex[:10]}.")
    specs = topics.load_specs(prefix=settings.topic_prefix)
    topics.apply(settings.kafka_bootstrap, specs)
    yield settings
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    for fut in admin.delete_topics([s.name for s in specs], operation_timeout=30).values():
        # Cleanup only: a leftover prefixed topic harms nothing.
        with contextlib.suppress(Exception):
            fut.result()


@pytest.fixture(scope="session")
def postgres(stack: StackSettings) -> PostgresSettings:
    from shared.devstack import postgres as pg

    return PostgresSettings(pg_dsn=pg.dsn(stack))
