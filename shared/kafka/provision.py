"""Idempotent topic provisioning from schemas/topics.yaml with confluent-kafka's AdminClient."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic

from ledgergate.codec import schemas_dir
from ledgergate.errors import TopicConfigError
from ledgergate.kafka_config import admin_config

MAX_PARTITIONS = 256


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)


def load_specs(path: Path | None = None, partitions: int | None = None, prefix: str = "") -> list[TopicSpec]:
    path = path or schemas_dir() / "topics.yaml"
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TopicConfigError(f"cannot read {path}: {exc}") from exc
    defaults: dict[str, Any] = doc.get("defaults", {})
    specs = []
    for name, body in (doc.get("topics") or {}).items():
        body = body or {}
        count = int(partitions or body.get("partitions", defaults.get("partitions", 1)))
        if not 1 <= count <= MAX_PARTITIONS:
            raise TopicConfigError(f"{name}: partitions must be 1..{MAX_PARTITIONS}, got {count}")
        config = {**defaults.get("config", {}), **body.get("config", {})}
        replication = int(body.get("replication_factor", defaults.get("replication_factor", 1)))
        specs.append(TopicSpec(prefix + name, count, replication, {k: str(v) for k, v in config.items()}))
    counts = {s.partitions for s in specs}
    if len(counts) != 1:
        raise TopicConfigError(f"all topics must share one partition count (co-partitioning); found {sorted(counts)}")
    return specs


def apply(bootstrap: str, specs: list[TopicSpec], timeout_s: float = 30.0) -> list[str]:
    """Create missing topics, grow partition counts, align configs. Never deletes or shrinks."""
    admin = AdminClient(admin_config(bootstrap))
    existing = admin.list_topics(timeout=timeout_s).topics
    report: list[str] = []
    to_create = [NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor,
                          config=s.config) for s in specs if s.name not in existing]
    if to_create:
        for name, fut in admin.create_topics(to_create, operation_timeout=timeout_s).items():
            try:
                fut.result()
                report.append(f"created {name}")
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise TopicConfigError(f"creating {name} failed: {exc}") from exc
                report.append(f"exists  {name}")
    grow = []
    for s in specs:
        if s.name not in existing:
            continue
        have = len(existing[s.name].partitions)
        if have > s.partitions:
            raise TopicConfigError(f"{s.name} has {have} partitions, more than the {s.partitions} asked; "
                                   f"Kafka cannot shrink a topic")
        if have < s.partitions:
            grow.append(NewPartitions(s.name, s.partitions))
    for name, fut in (admin.create_partitions(grow, operation_timeout=timeout_s) if grow else {}).items():
        fut.result()
        report.append(f"grew    {name}")
    resources = [ConfigResource(ConfigResource.Type.TOPIC, s.name, set_config=s.config)
                 for s in specs if s.name in existing]
    if resources:
        for res, fut in admin.alter_configs(resources).items():
            fut.result()
            report.append(f"aligned {res.name}")
    return report


def describe(bootstrap: str, timeout_s: float = 10.0) -> dict[str, int]:
    admin = AdminClient(admin_config(bootstrap))
    return {name: len(t.partitions) for name, t in admin.list_topics(timeout=timeout_s).topics.items()
            if not name.startswith("__")}
