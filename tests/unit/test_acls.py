"""deploy/ACLS.md is what tools/acls.py renders, and the grants fit schemas/topics.yaml and the single-writer
rules: every topic written and read by someone, the ledger, decisions, audit chain and credential states
each writable by one service principal only, agents writing nothing but requests and completions."""

from __future__ import annotations

import re

from ledgergate import topics
from ledgergate.shared.kafka.provision import load_specs
from ledgergate.shared.settings import PROJECT_ROOT
from ledgergate.tools import acls

DOC = PROJECT_ROOT / "deploy" / "ACLS.md"


def _block(name: str) -> str:
    match = re.search(rf"<!-- acls:{name} [^>]*-->\n(.*?)<!-- /acls:{name} -->", DOC.read_text(), re.S)
    assert match, f"deploy/ACLS.md has no acls:{name} block"
    return match.group(1)


def test_the_page_shows_what_the_table_renders() -> None:
    assert _block("table") == acls.table()
    assert _block("commands") == f"```bash\n{acls.render()}```\n"


def test_every_topic_is_covered_and_no_grant_names_an_unknown_one() -> None:
    declared = {spec.name for spec in load_specs()}
    assert set(topics.ALL) == declared
    services = {n: a for n, a in acls.PRINCIPALS.items() if n != "operator"}
    for topic in declared:
        assert any(topic in a.writes for a in services.values()), f"nobody writes {topic}"
        if topic != topics.DEADLETTER:  # read by operators only
            assert any(topic in a.reads for a in services.values()), f"no service reads {topic}"
    for access in acls.PRINCIPALS.values():
        assert set(access.reads) | set(access.writes) <= declared


def test_single_writers_stay_single() -> None:
    writers = {t: {n for n, a in acls.PRINCIPALS.items() if t in a.writes} for t in topics.ALL}
    assert writers[topics.CREDENTIALS] == {"api"}
    assert writers[topics.LEDGER] == {"budget-manager"}
    assert writers[topics.SNAPSHOTS] == {"snapshotter"}
    assert writers[topics.DECISIONS] == writers[topics.AUDIT] == {"router"}
    assert set(acls.PRINCIPALS["agent"].writes) == {topics.REQUESTS, topics.COMPLETIONS}
    assert {n for n, a in acls.PRINCIPALS.items() if topics.CREDENTIALS in a.reads} == {"token-counter", "operator"}


def test_the_commands_name_the_codes_groups_and_transactional_ids() -> None:
    text = acls.render("p.")
    for service in ("token-counter", "policy", "budget-manager", "router", "projector", "alerter", "snapshotter"):
        assert f'--group "p.ledgergate-{service}"' in text  # shared/kafka/options.py: <prefix>ledgergate-<service>
    for service in ("budget-manager", "router"):  # the kafka-transaction services (shared/kafka/transaction.py)
        assert f'--transactional-id "p.ledgergate-{service}-" --resource-pattern-type prefixed' in text
    assert text.count("kafka-acls.sh") == len(acls.commands())
