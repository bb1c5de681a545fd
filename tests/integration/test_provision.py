"""`topics apply` on the real broker: a new install gets the asked count; an existing install keeps its
own (growing a topic would move tenants between partitions) and gives it to a topic added later; an
explicit count the install does not have is refused with the reason."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from ledgergate.connection import KafkaConnection
from ledgergate.errors import TopicConfigError
from ledgergate.shared.kafka import provision
from ledgergate.shared.settings import StackSettings


@pytest.fixture
def prefix(stack: StackSettings) -> Iterator[str]:
    name = f"t{uuid.uuid4().hex[:10]}."
    yield name
    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{stack.kafka_port}"})
    topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(name)]
    for fut in (admin.delete_topics(topics, operation_timeout=30) if topics else {}).values():
        with contextlib.suppress(Exception):
            fut.result()


def test_an_install_keeps_its_partition_count(stack: StackSettings, prefix: str) -> None:
    bootstrap = f"127.0.0.1:{stack.kafka_port}"
    local = KafkaConnection(bootstrap)
    default = provision.load_specs(prefix=prefix)
    assert {s.partitions for s in default} == {12}, "a new install's default"

    provision.apply(local, provision.load_specs(partitions=3, prefix=prefix))
    assert set(provision.describe(local).get(s.name) for s in default) == {3}

    # The default (12) asked of an install with 3: kept, and a topic added later gets 3 as well.
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.delete_topics([default[-1].name], operation_timeout=30)[default[-1].name].result()
    deadline = time.monotonic() + 30
    while default[-1].name in admin.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, "the deleted topic never went"
        time.sleep(0.2)
    report = provision.apply(local, default)
    assert any(line.startswith("kept    3 partitions") for line in report), report
    counts = provision.describe(local)
    assert {counts[s.name] for s in default} == {3}

    # Asked explicitly (LEDGERGATE_KAFKA_PARTITIONS): refused, saying why, and nothing changes.
    with pytest.raises(TopicConfigError, match="growing one moves tenants"):
        provision.apply(local, default, require_count=True)
    assert {provision.describe(local)[s.name] for s in default} == {3}


def _retention_ms(admin: AdminClient, topic: str, expected: str, timeout_s: float = 15.0) -> str:
    """The topic's retention.ms once it reads `expected` (a broker answers the old value for a moment after
    an alter), else the last value read."""
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    deadline = time.monotonic() + timeout_s
    while True:
        value = str(admin.describe_configs([resource])[resource].result()["retention.ms"].value)
        if value == expected or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_the_prompt_retention_setting_reaches_the_broker_and_moves_with_it(stack: StackSettings,
                                                                            prefix: str) -> None:
    local = KafkaConnection(f"127.0.0.1:{stack.kafka_port}")
    admin = AdminClient({"bootstrap.servers": local.bootstrap})
    provision.apply(local, provision.load_specs(partitions=3, prefix=prefix))
    assert _retention_ms(admin, f"{prefix}invocation.requests", "21600000") == "21600000"  # 6 h by default
    # Changed later (LEDGERGATE_PROMPT_RETENTION_MS): `topics apply` aligns the existing install.
    provision.apply(local, provision.load_specs(partitions=3, prefix=prefix, prompt_retention_ms=3_600_000))
    for logical in ("invocation.requests", "invocation.completions", "deadletter"):
        assert _retention_ms(admin, f"{prefix}{logical}", "3600000") == "3600000", logical
    assert _retention_ms(admin, f"{prefix}budget.ledger", "-1") == "-1"
