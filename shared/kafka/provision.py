"""Idempotent topic provisioning from schemas/topics.yaml with confluent-kafka's AdminClient."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from ledgergate.codec import schemas_dir
from ledgergate.connection import KafkaConnection
from ledgergate.errors import TopicConfigError
from ledgergate.kafka_config import admin_config

MAX_PARTITIONS = 256
# Prompt-bearing topics keep their records at least a minute (anything less loses requests in a restart)
# and at most 30 days (the longest the project ever kept them).
PROMPT_RETENTION_MS_MIN = 60_000
PROMPT_RETENTION_MS_MAX = 30 * 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)


def load_specs(path: Path | None = None, partitions: int | None = None, prefix: str = "",
               prompt_retention_ms: int | None = None) -> list[TopicSpec]:
    """The topics of schemas/topics.yaml; `prompt_retention_ms` (None: the file's) is the retention of every
    topic marked `prompts: true`."""
    path = path or schemas_dir() / "topics.yaml"
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TopicConfigError(f"cannot read {path}: {exc}") from exc
    defaults: dict[str, Any] = doc.get("defaults", {})
    prompt_ms = int(prompt_retention_ms if prompt_retention_ms is not None else doc["prompt_retention_ms"])
    if not PROMPT_RETENTION_MS_MIN <= prompt_ms <= PROMPT_RETENTION_MS_MAX:
        raise TopicConfigError(f"prompt retention must be {PROMPT_RETENTION_MS_MIN}..{PROMPT_RETENTION_MS_MAX} ms, "
                               f"got {prompt_ms}")
    specs = []
    for name, body in (doc.get("topics") or {}).items():
        body = body or {}
        count = int(partitions or body.get("partitions", defaults.get("partitions", 1)))
        if not 1 <= count <= MAX_PARTITIONS:
            raise TopicConfigError(f"{name}: partitions must be 1..{MAX_PARTITIONS}, got {count}")
        config = {**defaults.get("config", {}), **body.get("config", {})}
        if body.get("prompts"):
            assert "retention.ms" not in body.get("config", {}), f"{name}: a prompt topic's retention is the setting"
            config["retention.ms"] = str(prompt_ms)
        replication = int(body.get("replication_factor", defaults.get("replication_factor", 1)))
        specs.append(TopicSpec(prefix + name, count, replication, {k: str(v) for k, v in config.items()}))
    counts = {s.partitions for s in specs}
    if len(counts) != 1:
        raise TopicConfigError(f"all topics must share one partition count (co-partitioning); found {sorted(counts)}")
    return specs


def apply(connection: KafkaConnection, specs: list[TopicSpec], timeout_s: float = 30.0,
          require_count: bool = False) -> list[str]:
    """Create missing topics and align configs. Never deletes, shrinks or grows a topic: adding partitions
    moves keys (murmur2 modulo the count), so a tenant's ledger history would sit on one partition and its
    new entries on another, under two single writers. The partition count is chosen when an install's
    topics are first created; an existing install keeps its count, and topics added later get it too.
    `require_count`: the caller asked for this count explicitly (LEDGERGATE_KAFKA_PARTITIONS), so an
    install with another count is an error rather than kept."""
    admin = AdminClient(admin_config(connection))
    existing = admin.list_topics(timeout=timeout_s).topics
    report: list[str] = []
    have = {s.name: len(existing[s.name].partitions) for s in specs if s.name in existing}
    counts = set(have.values())
    if len(counts) > 1:
        raise TopicConfigError(f"the existing topics disagree on their partition count ({sorted(counts)}), "
                               f"so tenants are not co-partitioned: {have}")
    asked = specs[0].partitions if specs else 0
    if counts and (install := counts.pop()) != asked:
        if require_count:
            raise TopicConfigError(f"the topics have {install} partitions, not the {asked} asked; Kafka cannot "
                                   f"shrink a topic and growing one moves tenants between partitions "
                                   f"(docs/scaling.md: a new install, or a migration)")
        report.append(f"kept    {install} partitions of the existing install (asked {asked}; growing moves keys)")
        specs = [replace(s, partitions=install) for s in specs]
    to_create = [NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor,
                          config=s.config) for s in specs if s.name not in existing]
    # A topic the metadata did not list yet (created a moment ago, by us or another `topics apply`) answers
    # TOPIC_ALREADY_EXISTS: it exists, so its configs are aligned like the others'.
    already: set[str] = set()
    if to_create:
        for name, fut in admin.create_topics(to_create, operation_timeout=timeout_s).items():
            try:
                fut.result()
                report.append(f"created {name}")
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise TopicConfigError(f"creating {name} failed: {exc}") from exc
                report.append(f"exists  {name}")
                already.add(name)
    resources = [ConfigResource(ConfigResource.Type.TOPIC, s.name, set_config=s.config)
                 for s in specs if s.name in existing or s.name in already]
    if resources:
        for res, fut in admin.alter_configs(resources).items():
            fut.result()
            report.append(f"aligned {res.name}")
    return report


def describe(connection: KafkaConnection, timeout_s: float = 10.0) -> dict[str, int]:
    admin = AdminClient(admin_config(connection))
    return {name: len(t.partitions) for name, t in admin.list_topics(timeout=timeout_s).topics.items()
            if not name.startswith("__")}
