"""`ledgergate kafka-tool`: Kafka's own command-line tools, run from .cache/kafka-libs against the real broker."""

from __future__ import annotations

import argparse
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from ledgergate.kafka_config import consumer_config
from ledgergate.shared.settings import KafkaSettings
from ledgergate.tools import cli
from ledgergate.tools.devstack import kafka as devkafka
from ledgergate.topics import LEDGER

pytestmark = pytest.mark.integration


def _run(capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(["kafka-tool", *argv])
    out, err = capfd.readouterr()
    return rc, out, err


def test_every_tool_name_has_a_main_class() -> None:
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    tool = next(a for a in sub.choices["kafka-tool"]._actions if a.dest == "tool")
    assert list(tool.choices) == list(devkafka.TOOLS)


def test_topics_list_names_the_prefixed_topics(kafka: KafkaSettings, capfd: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGERGATE_KAFKA_BOOTSTRAP", kafka.kafka_bootstrap)  # the default --bootstrap-server
    rc, out, err = _run(capfd, "topics", "--list")
    assert rc == 0, err
    assert kafka.topic(LEDGER) in out.splitlines()


def test_consumer_groups_list_names_a_group_with_committed_offsets(
        kafka: KafkaSettings, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    group = f"{kafka.topic_prefix}tools-{uuid.uuid4().hex[:8]}"
    consumer = Consumer(consumer_config(kafka.kafka_connection, group))
    try:
        consumer.commit(offsets=[TopicPartition(kafka.topic(LEDGER), 0, 0)], asynchronous=False)
    finally:
        consumer.close()
    monkeypatch.setenv("LEDGERGATE_KAFKA_BOOTSTRAP", kafka.kafka_bootstrap)
    rc, out, err = _run(capfd, "consumer-groups", "--list")
    assert rc == 0, err
    assert group in out.splitlines()


def test_an_explicit_bootstrap_server_wins(kafka: KafkaSettings, capfd: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGERGATE_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # nothing listens there
    rc, out, err = _run(capfd, "topics", f"--bootstrap-server={kafka.kafka_bootstrap}", "--list")
    assert rc == 0, err
    assert kafka.topic(LEDGER) in out.splitlines()
