"""The response cache's pure core (shared/cache.py): keys, what a policy lets through, redaction, the store."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledgergate.shared.cache import (
    CacheEntry,
    CacheRule,
    CacheStore,
    cache_key,
    deterministic,
    redact,
    refusal,
    store_refusal,
)

ASK = [{"role": "user", "content": "What is our refund window?", "name": None}]
GREEDY = {"temperature": 0}
T0 = 1_796_000_000_000


def entry(tenant: str = "acme", key: str = "k1", text: str = "30 days.", *, ttl_ms: int = 60_000,
          policy_version: int = 1, at_ms: int = T0) -> CacheEntry:
    return CacheEntry(tenant, key, f"{tenant}/{key}/{at_ms}", "gpt-4o-mini", text, 12, 4, 90, at_ms, at_ms + ttl_ms,
                      policy_version)


def test_the_key_covers_what_changes_an_answer_and_nothing_else() -> None:
    base = cache_key("acme", "gpt-4o", ASK, None, GREEDY)
    assert base == cache_key("acme", "gpt-4o", [dict(ASK[0])], None, {"temperature": 0, "user": "u-7"})
    assert len({
        base,
        cache_key("globex", "gpt-4o", ASK, None, GREEDY),  # another tenant: never the same key
        cache_key("acme", "gpt-4o-mini", ASK, None, GREEDY),
        cache_key("acme", "gpt-4o", [{**ASK[0], "content": "What is our refund window"}], None, GREEDY),
        cache_key("acme", "gpt-4o", ASK, '[{"type": "function", "function": {"name": "lookup"}}]', GREEDY),
        cache_key("acme", "gpt-4o", ASK, None, {"temperature": 0, "seed": 7}),
        cache_key("acme", "gpt-4o", ASK, None, GREEDY, template=("refunds", 2)),
        cache_key("acme", "gpt-4o", ASK, None, GREEDY, template=("refunds", 3)),  # a new template version
    }) == 8


def test_the_policy_decides_what_may_be_cached() -> None:
    on = CacheRule(enabled=True)
    assert refusal(CacheRule(), "wf", {}, deterministic(GREEDY)) == "cache_off"  # off by default
    assert refusal(on, "wf", {}, deterministic(GREEDY)) is None
    assert refusal(on, "wf", {"pii": "yes"}, deterministic(GREEDY)) == "label_forbids_cache:pii"
    assert refusal(on, "wf", {}, deterministic({"temperature": 0.7})) == "nondeterministic"
    assert refusal(on, "wf", {}, deterministic({})) == "nondeterministic"  # providers default to temperature 1
    assert refusal(replace(on, serve_nondeterministic=True), "wf", {}, deterministic({"temperature": 0.7})) is None
    assert refusal(replace(on, workflows=frozenset({"faq"})), "wf", {}, deterministic(GREEDY)) == "workflow_not_cached"
    assert deterministic({"temperature": 0.0}) and not deterministic({"temperature": 0, "n": 2})
    small = replace(on, max_entry_bytes=8)
    assert store_refusal(small, "OK", "30 days.") is None and store_refusal(small, "OK", "thirty days") == (
        "entry_too_large")
    assert store_refusal(on, "TRUNCATED", "30 d") == "incomplete_answer" and store_refusal(on, "OK", None) == "no_text"


def test_redaction_runs_every_pattern() -> None:
    text = "Call ana@example.com or +1 555 0100 about order 88."
    assert redact(text, [r"[\w.]+@[\w.]+", r"\+\d[\d ]{6,}\d"]) == "Call [redacted] or [redacted] about order 88."
    assert redact(text, []) == text


def test_an_entry_is_not_served_past_its_ttl_or_under_another_policy_version() -> None:
    store = CacheStore()
    store.put(entry(ttl_ms=1_000))
    assert store.get("acme", "k1", T0 + 999, policy_version=1) is not None
    assert store.get("acme", "k1", T0 + 1_000, policy_version=1) is None and store.expirations == 1
    store.put(entry(policy_version=1))
    assert store.get("acme", "k1", T0 + 1, policy_version=2) is None  # the policy changed: invalidated
    assert len(store) == 0 and store.size_bytes == 0


def test_the_least_recently_used_go_first_within_each_bound() -> None:
    store = CacheStore(entries_per_tenant_max=2)
    for key in ("a", "b"):
        store.put(entry(key=key))
    assert store.get("acme", "a", T0, 1) is not None  # a is now the most recently used
    store.put(entry(key="c"))
    assert store.get("acme", "b", T0, 1) is None and store.get("acme", "a", T0, 1) is not None
    assert store.evictions == 1
    one = entry(tenant="t-a", key="x").size_bytes
    small = CacheStore(bytes_max=2 * one)
    for tenant in ("t-a", "t-b", "t-c"):
        small.put(entry(tenant=tenant, key="x"))
    assert small.get("t-a", "x", T0, 1) is None and small.size_bytes <= 2 * one and small.evictions == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["acme", "globex", "initech"]), st.sampled_from(["k1", "k2", "k3"]),
                          st.booleans()), max_size=60))
def test_a_tenant_never_reads_another_tenants_entry(ops: list[tuple[str, str, bool]]) -> None:
    store = CacheStore(entries_per_tenant_max=2, bytes_max=5 * entry().size_bytes + 40)
    for tenant, key, write in ops:
        if write:
            store.put(entry(tenant=tenant, key=key, text=f"answer for {tenant}"))
        found = store.get(tenant, key, T0, 1)
        assert found is None or (found.tenant_id == tenant and found.response_text == f"answer for {tenant}")
        assert store.size_bytes <= store.bytes_max and len(store) <= 3 * 2


def test_the_policy_document_carries_the_cache_rule_and_refuses_a_bad_pattern() -> None:
    from ledgergate.shared.errors import PolicyError
    from ledgergate.shared.policy import default_policy, parse_policy

    assert default_policy().cache.to_rule() == CacheRule()  # off, and pii never cached
    policy = parse_policy('{"cache": {"enabled": true, "ttl_s": 60, "workflows": ["faq"]}}', default_policy())
    rule = policy.cache.to_rule()
    assert rule.enabled and rule.ttl_ms == 60_000 and rule.workflows == frozenset({"faq"})
    assert rule.forbidden_labels == frozenset({"pii"})  # the base's, merged key by key
    with pytest.raises(PolicyError, match="not a regular expression"):
        parse_policy('{"cache": {"redact_patterns": ["("]}}', default_policy())
