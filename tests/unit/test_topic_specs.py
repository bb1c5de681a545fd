"""schemas/topics.yaml as provisioned: prompt-bearing topics keep their records the prompt retention only."""

from __future__ import annotations

import pytest

from ledgergate import topics
from ledgergate.errors import TopicConfigError
from ledgergate.shared.kafka.provision import load_specs
from ledgergate.shared.settings import KafkaSettings

PROMPT_TOPICS = {topics.REQUESTS, topics.COMPLETIONS, topics.DEADLETTER, topics.CACHE, topics.METERED,
                 topics.DECISIONS}
HOUR_MS = 3_600_000


def test_the_topics_that_carry_prompts_keep_them_hours_not_days() -> None:
    specs = {s.name: s for s in load_specs()}
    for name in PROMPT_TOPICS:
        assert int(specs[name].config["retention.ms"]) == 6 * HOUR_MS, name
    # What carries no prompt keeps its own retention: the ledger and the audit log forever.
    assert specs[topics.LEDGER].config["retention.ms"] == "-1" and specs[topics.AUDIT].config["retention.ms"] == "-1"
    assert int(specs[topics.COUNTED].config["retention.ms"]) > 6 * HOUR_MS


def test_the_setting_sets_every_prompt_topic_and_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGERGATE_PROMPT_RETENTION_MS", str(HOUR_MS))
    settings = KafkaSettings()
    default = {s.name: s.config for s in load_specs()}
    changed = {s.name: s.config for s in load_specs(prompt_retention_ms=settings.prompt_retention_ms)}
    assert {n for n in default if default[n] != changed[n]} == PROMPT_TOPICS
    assert all(changed[n]["retention.ms"] == str(HOUR_MS) for n in PROMPT_TOPICS)


@pytest.mark.parametrize("retention_ms", [0, 59_999, 31 * 24 * HOUR_MS])
def test_a_retention_out_of_bounds_is_refused(retention_ms: int) -> None:
    with pytest.raises(TopicConfigError, match="prompt retention"):
        load_specs(prompt_retention_ms=retention_ms)
