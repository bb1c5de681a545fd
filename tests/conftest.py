"""Test fixtures. Integration and e2e tests use the real local stack, which this starts if needed."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest

from ledgergate.shared.settings import KafkaSettings, PostgresSettings, StackSettings

TEST_PARTITIONS = 6


@pytest.fixture(scope="session")
def stack() -> StackSettings:
    """Kafka and PostgreSQL, really running: `stack.up` is idempotent and waits on real requests."""
    from ledgergate.tools.devstack import stack as devstack

    settings = StackSettings()
    devstack.up(settings)
    return settings


@contextlib.contextmanager
def fresh_topics(stack: StackSettings) -> Iterator[KafkaSettings]:
    """A fresh set of every ledgergate topic under a unique prefix, deleted afterwards."""
    from confluent_kafka.admin import AdminClient

    from ledgergate.shared.kafka import provision

    settings = KafkaSettings(kafka_bootstrap=f"127.0.0.1:{stack.kafka_port}",
                             topic_prefix=f"t{uuid.uuid4().hex[:10]}.")
    # Fewer partitions than a new install's 12 keep rebuilds and rebalances short in the suite; the
    # scale-out and zombie tests run two instances, well within six.
    specs = provision.load_specs(partitions=TEST_PARTITIONS, prefix=settings.topic_prefix)
    provision.apply(settings.kafka_connection, specs)
    yield settings
    if os.environ.get("LEDGERGATE_TEST_KEEP_TOPICS"):  # to read a failed test's topics afterwards
        return
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    for fut in admin.delete_topics([s.name for s in specs], operation_timeout=30).values():
        # Cleanup only: a leftover prefixed topic harms nothing.
        with contextlib.suppress(Exception):
            fut.result()


@pytest.fixture
def kafka(stack: StackSettings) -> Iterator[KafkaSettings]:
    with fresh_topics(stack) as settings:
        yield settings


@pytest.fixture(scope="module")
def kafka_module(stack: StackSettings) -> Iterator[KafkaSettings]:
    """`kafka` shared by a module's tests (each test then uses tenants of its own)."""
    with fresh_topics(stack) as settings:
        yield settings


@pytest.fixture(scope="session")
def postgres(stack: StackSettings) -> PostgresSettings:

    return PostgresSettings(pg_dsn=stack.dsn())
