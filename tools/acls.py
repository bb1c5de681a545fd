"""`ledgergate acls`: the Kafka ACLs of a secured cluster, one principal per process kind, as `kafka-acls.sh`
commands. The table below is the one place that says who reads and writes what; deploy/ACLS.md holds its
rendering, and tests/unit/test_acls.py keeps the two equal and checks the table against
schemas/topics.yaml (every topic has a writer and a reader, tenant.credentials has exactly one writer).

Names follow the code: a service's consumer group is `<prefix>ledgergate-<service>`, a transactional
service's transactional ids `<prefix>ledgergate-<service>-<instance id>` (shared/kafka/options.py,
shared/kafka/transaction.py), and the rebuild readers (shared/kafka/reader.py) and the SDK's decision
consumer assign partitions under the unprefixed group ids `ledgergate-reader` and `ledgergate-client-<uuid>`
without ever joining or committing; they are granted Read on those groups, which librdkafka's coordinator
lookup asks for.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledgergate import topics

PRINCIPAL_PREFIX = "User:ledgergate-"


@dataclass(frozen=True, slots=True)
class Access:
    """What one principal needs. Topics by logical name (the install's prefix is added when rendered)."""

    why: str
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    group: str | None = None  # its consumer group, <prefix>ledgergate-<group>
    transactional: bool = False  # transactional ids <prefix>ledgergate-<group>-*
    reader: bool = False  # rebuilds state with the assign-only readers (group ledgergate-reader)
    client_groups: bool = False  # the SDK's decision consumer (groups ledgergate-client-*)


ALL_TOPICS = topics.ALL
PRINCIPALS: dict[str, Access] = {
    # Agent platforms: ask, read the answers, report completions. They can name any tenant in a record
    # (Kafka ACLs stop at the topic), which is why requests and completions are signed.
    "agent": Access("an agent platform using the SDK (or any producer of requests)",
                    reads=(topics.DECISIONS,), writes=(topics.REQUESTS, topics.COMPLETIONS), client_groups=True),
    # The OpenAI-compatible gateway (`ledgergate run proxy`) is an agent platform for its callers: the same
    # access, under its own principal so its traffic can be told apart and revoked alone.
    "proxy": Access("the OpenAI-compatible gateway, asking for its callers",
                    reads=(topics.DECISIONS,), writes=(topics.REQUESTS, topics.COMPLETIONS), client_groups=True),
    "token-counter": Access("counts and authenticates requests, meters completions",
                            reads=(topics.REQUESTS, topics.COMPLETIONS, topics.CREDENTIALS, topics.TEMPLATES,
                                   topics.REDACTION),
                            writes=(topics.COUNTED, topics.METERED, topics.DEADLETTER), group="token-counter",
                            reader=True),
    "policy": Access("plans requests by the tenant's policy and burn",
                     reads=(topics.COUNTED, topics.LEDGER, topics.SNAPSHOTS, topics.METERED, topics.CACHE),
                     writes=(topics.PLANNED, topics.CACHE, topics.DEADLETTER), group="policy", reader=True),
    "budget-manager": Access("the ledger's single writer",
                             reads=(topics.PLANNED, topics.METERED, topics.COMMANDS, topics.LEDGER,
                                    topics.SNAPSHOTS),
                             writes=(topics.LEDGER, topics.ALERTS, topics.REDACTION, topics.DEADLETTER),
                             group="budget-manager",
                             transactional=True, reader=True),
    "router": Access("decisions and the audit chain",
                     reads=(topics.LEDGER, topics.AUDIT, topics.CACHE),
                     writes=(topics.DECISIONS, topics.AUDIT, topics.DEADLETTER),
                     group="router", transactional=True, reader=True),
    "projector": Access("the PostgreSQL read model",
                        reads=(topics.LEDGER, topics.DECISIONS, topics.AUDIT), writes=(topics.DEADLETTER,),
                        group="projector"),
    "snapshotter": Access("tenant states folded from the ledger, for restores",
                          reads=(topics.LEDGER, topics.SNAPSHOTS), writes=(topics.SNAPSHOTS, topics.DEADLETTER),
                          group="snapshotter", reader=True),
    "alerter": Access("budget alerts to a webhook", reads=(topics.ALERTS,), writes=(topics.DEADLETTER,),
                      group="alerter"),
    # A faust app: its group is <prefix>ledgergate-anomaly too; it writes and reads its own windows topic
    # and table changelogs (faust reads a changelog back on assignment).
    "anomaly": Access("spend and token-rate anomalies, as budget alerts",
                      reads=(topics.METERED, topics.ANOMALY_WINDOWS, topics.ANOMALY_RATES_CHANGELOG,
                             topics.ANOMALY_BANDS_CHANGELOG),
                      writes=(topics.ALERTS, topics.DEADLETTER, topics.ANOMALY_WINDOWS, topics.ANOMALY_RATES_CHANGELOG,
                              topics.ANOMALY_BANDS_CHANGELOG), group="anomaly"),
    # The only writer of tenant.credentials: nothing else may publish a tenant's keys or mode.
    "api": Access("the admin API: operators' commands, the tenants' credential states and prompt templates",
                  reads=(topics.TEMPLATES,), writes=(topics.COMMANDS, topics.CREDENTIALS, topics.TEMPLATES),
                  reader=True),
    # `ledgergate audit replay`, `budget show`, `budget set`, `kafka-tool console-consumer`; `topics apply`
    # also needs Create and AlterConfigs (usually an operator is a super user instead).
    "operator": Access("people and their tools: replay, reconcile, budget set/show, inspection",
                       reads=ALL_TOPICS, writes=(topics.COMMANDS,), reader=True, client_groups=True),
}


def _topic_args(names: tuple[str, ...], prefix: str) -> list[str]:
    return [f"--topic \"{prefix}{name}\"" for name in names]


def commands(prefix: str = "${LEDGERGATE_TOPIC_PREFIX}") -> list[list[str]]:
    """One `kafka-acls.sh --add` per principal and kind of grant, in the table's order, as its options
    (after `kafka-acls.sh --bootstrap-server $BOOTSTRAP --command-config $ADMIN_CONFIG --add`)."""
    out: list[list[str]] = []
    for name, access in PRINCIPALS.items():
        who = f"--allow-principal {PRINCIPAL_PREFIX}{name}"
        if access.reads:
            out.append([who, "--operation Read --operation Describe", *_topic_args(access.reads, prefix)])
        if access.writes:
            out.append([who, "--operation Write --operation Describe", *_topic_args(access.writes, prefix)])
        if access.group is not None:
            out.append([who, "--operation Read", f"--group \"{prefix}ledgergate-{access.group}\""])
        if access.transactional:
            out.append([who, "--operation Write --operation Describe",
                        f"--transactional-id \"{prefix}ledgergate-{access.group}-\" --resource-pattern-type prefixed"])
        if access.reader:
            out.append([who, "--operation Read", "--group ledgergate-reader"])
        if access.client_groups:
            out.append([who, "--operation Read", "--group ledgergate-client- --resource-pattern-type prefixed"])
    return out


def render(prefix: str = "${LEDGERGATE_TOPIC_PREFIX}") -> str:
    """The shell block deploy/ACLS.md shows: every command, one option per line."""
    head = "kafka-acls.sh --bootstrap-server \"$BOOTSTRAP\" --command-config \"$ADMIN_CONFIG\" --add"
    return "\n".join(" \\\n    ".join([head, *options]) for options in commands(prefix)) + "\n"


def table() -> str:
    """Principal x topic (R read, W write) as a Markdown table, for deploy/ACLS.md."""
    lines = ["| principal | " + " | ".join(f"`{t}`" for t in ALL_TOPICS) + " | groups, transactional ids |",
             "|---|" + "---|" * len(ALL_TOPICS) + "---|"]
    for name, access in PRINCIPALS.items():
        cells = [(("R" if t in access.reads else "") + ("W" if t in access.writes else "")) or "." for t in ALL_TOPICS]
        extra = [f"`ledgergate-{access.group}`" if access.group else "",
                 f"`ledgergate-{access.group}-*` (txn)" if access.transactional else "",
                 "`ledgergate-reader`" if access.reader else "",
                 "`ledgergate-client-*`" if access.client_groups else ""]
        groups = ", ".join(e for e in extra if e)
        lines.append(f"| `{PRINCIPAL_PREFIX}{name}` | " + " | ".join(cells) + f" | {groups} |")
    return "\n".join(lines) + "\n"
