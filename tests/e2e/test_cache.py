"""The response cache end to end (docs/decisions/0013): real broker, the four services as processes, the SDK's
client. A tenant whose policy caches gets CACHE_HIT with its own earlier (redacted) answer, nothing reserved,
the avoided cost in the ledger and the audit log; another tenant with the identical prompt never does; a
bypass label, a sampled request and a policy change each keep a request away from the entry."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import psycopg

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.services.api.commands import CommandPublisher
from ledgergate.services.api.templates import TemplateRegistry
from ledgergate.shared.settings import PostgresSettings
from ledgergate.shared.tokenizers import count_chat
from ledgergate.templates import Template, messages_with
from tests.e2e.conftest import Gate

USD = 1_000_000
ASK = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "When is card 4242 renewed?"}]
ANSWER = "Card 4242-1111 renews on 1 March."
USAGE = {"input_tokens": 24, "cached_input_tokens": 0, "output_tokens": 9, "reasoning_tokens": 0}
GREEDY = {"temperature": 0}
POLICY = {"cache": {"enabled": True, "ttl_s": 600, "redact_patterns": [r"\b\d{4}-\d{4}\b"]}}


def _tenant(gate: Gate, policy: dict[str, Any]) -> str:
    tenant = f"cache-{uuid.uuid4().hex[:8]}"
    gate.client.send_command(tenant, "SET_LIMIT", 10 * USD)
    gate.client.send_command(tenant, "SET_POLICY", policy_json=json.dumps(policy))
    return tenant


def _ask(gate: Gate, tenant: str, sampling: dict[str, Any] | None = GREEDY, **kwargs: Any) -> dict[str, Any]:
    return gate.client.request(tenant, ASK, "gpt-4o-mini", 64, sampling=sampling, timeout_s=30, **kwargs)


def _until(what: str, attempt, timeout_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = attempt()
        if found is not None:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _answered(gate: Gate, tenant: str) -> dict[str, Any]:
    """The first call of the prompt, once the policy service has folded the tenant's policy (a race with the
    first request): its decision asks for the answer's text, which the completion then carries."""
    def attempt() -> dict[str, Any] | None:
        d = _ask(gate, tenant)
        assert d["outcome"] == "ALLOW", d
        gate.client.complete(tenant, d["request_id"], "gpt-4o-mini", USAGE,
                             completion_text=ANSWER if d["cache_store"] else None)
        return d if d["cache_store"] else None
    return _until("a decision that asks for the answer", attempt)


def _hit(gate: Gate, tenant: str) -> dict[str, Any]:
    def attempt() -> dict[str, Any] | None:  # the entry is written after the completion is metered
        d = _ask(gate, tenant)
        if d["outcome"] == "ALLOW":
            gate.client.complete(tenant, d["request_id"], "gpt-4o-mini", USAGE)
            return None
        return d
    return _until("a CACHE_HIT", attempt)


def test_a_tenant_is_answered_from_its_own_cache_and_never_from_anothers(gate_module: Gate) -> None:
    gate = gate_module
    owner, neighbour = _tenant(gate, POLICY), _tenant(gate, POLICY)
    first = _answered(gate, owner)
    hit = _hit(gate, owner)
    assert hit["outcome"] == "CACHE_HIT" and hit["reason_codes"] == ["cache_hit"]
    assert hit["cached_response"] == "Card [redacted] renews on 1 March."  # redacted before it was stored
    assert hit["reserved_micro_usd"] == 0 and hit["deployment"] is None and hit["granted_output_tokens"] == 0
    assert hit["avoided_micro_usd"] > 0 and hit["cache_entry_id"] == f"{first['request_id']}/cache"

    # The neighbour asks the identical prompt under the identical policy: a miss, its own answer awaited.
    other = _answered(gate, neighbour)
    assert other["outcome"] == "ALLOW" and other["cached_response"] is None

    # A repeat of the hit's request id gets the same outcome (without the text: the SDK asks again bypassed).
    again = _ask(gate, owner, request_id=hit["request_id"])
    assert again["outcome"] == "CACHE_HIT" and again["ledger_entry_id"] == hit["ledger_entry_id"]

    # Kept away from the entry: the bypass label and a sampled request (neither served nor stored).
    bypassed = _ask(gate, owner, labels={"cache": "bypass"})
    sampled = _ask(gate, owner, sampling={"temperature": 0.7})
    for d in (bypassed, sampled):
        assert d["outcome"] == "ALLOW" and not d["cache_store"], d
        gate.client.complete(owner, d["request_id"], "gpt-4o-mini", USAGE)

    # The ledger records the hit moving no money, with what it avoided; the audit chain has its decision.
    recorded = [r for _, name, r in gate.ledger() if name == "CacheHitRecorded"]
    assert [r["request_id"] for r in recorded] == [hit["request_id"]]
    assert recorded[0]["avoided_micro_usd"] == hit["avoided_micro_usd"] and recorded[0]["tenant_id"] == owner
    assert not any(r["tenant_id"] == neighbour for r in recorded)
    decisions = [json.loads(a["summary_json"]) for a in gate.audit()
                 if a["kind"] == "DECISION" and a["subject_id"] == hit["request_id"]]
    assert decisions and all(d["outcome"] == "CACHE_HIT" for d in decisions)
    gate.wait_fold_matches_service()

    # Entries live on the tenant's partition of cache.entries, keyed by tenant and request key.
    entries = [(p, r) for p, name, r in gate.read(topics.CACHE) if name == "CacheEntry"]
    by_tenant = {r["tenant_id"]: p for p, r in entries}
    assert set(by_tenant) == {owner, neighbour}
    assert by_tenant[owner] == next(p for p, name, r in gate.ledger() if r["tenant_id"] == owner)


def test_a_policy_change_invalidates_the_tenants_entries(gate_module: Gate) -> None:
    gate = gate_module
    tenant = _tenant(gate, POLICY)
    _answered(gate, tenant)
    _hit(gate, tenant)
    gate.client.send_command(tenant, "SET_POLICY", policy_json=json.dumps({**POLICY, "max_output_tokens": 2048}))

    def after_change() -> dict[str, Any] | None:
        d = _ask(gate, tenant)
        if d["outcome"] == "CACHE_HIT":  # the policy service has not folded the change yet
            return None
        gate.client.complete(tenant, d["request_id"], "gpt-4o-mini", USAGE)
        return d
    miss = _until("a miss under the new policy version", after_change)
    assert miss["outcome"] == "ALLOW" and miss["cache_store"] and miss["policy_version"] > 0


CARD = r"\b\d{4}-\d{4}-\d{4}-\d{4}\b"


def test_a_tenants_redaction_reaches_the_dead_letters_of_the_token_counter(gate_module: Gate) -> None:
    """The token-counter holds no policies: it learns the tenant's patterns from tenant.redaction, which the
    budget-manager writes as it appends the PolicyChanged; a completion it must refuse is dead-lettered with
    its text redacted."""
    gate = gate_module
    tenant = _tenant(gate, {"redact_patterns": [CARD]})
    _until("the tenant's redaction on tenant.redaction", lambda: next(
        (r for _, name, r in gate.read(topics.REDACTION) if name == "TenantRedaction" and r["tenant_id"] == tenant),
        None))

    def refused() -> dict[str, Any] | None:
        request_id = f"bad-{uuid.uuid4().hex[:8]}"
        # A model name with a NUL: the token-counter refuses the completion (a dead letter, never metered).
        gate.client.complete(tenant, request_id, "gpt\x00-4o", USAGE, completion_text="card 4111-1111-1111-1111 ok")
        gate.client.flush(10)
        time.sleep(0.5)
        for letter in gate.dead_letters():
            _, original = codec().decode(letter["original_value"])
            if original["request_id"] == request_id:
                return original if original["completion_text"] == "card [redacted] ok" else None
        return None
    original = _until("a dead letter with the card redacted", refused, timeout_s=60)
    assert original["tenant_id"] == tenant and "4111" not in original["completion_text"]


def test_a_request_naming_a_template_is_rendered_counted_and_reserved_under_it(
        gate_module: Gate, postgres: PostgresSettings) -> None:
    """The API's registry writes the version; the token-counter renders it as the first message, counts it
    exactly, and the reservation names it (spend by template); an unknown version or a missing value is a
    DENY invalid_request naming it."""
    gate = gate_module
    tenant = _tenant(gate, {})
    text = "You answer questions about {product} for the {team} team. Be brief."
    publisher = CommandPublisher(gate.kafka, timeout_s=10)
    try:
        with psycopg.connect(postgres.pg_dsn, autocommit=True) as conn:
            TemplateRegistry(gate.kafka, publisher).register(conn, tenant, "faq", 1, text, "system", "e2e")
    finally:
        publisher.close()
    values = {"product": "ledgergate", "team": "finance"}
    ask = [{"role": "user", "content": "What is a reservation?"}]

    def decided() -> dict[str, Any] | None:  # the token-counter reads the new version live
        d = gate.client.request(tenant, ask, "gpt-4o-mini", 32, template=("faq", 1, values), timeout_s=30)
        return None if d["outcome"] == "DENY" else d  # invalid_request until it has the version
    d = _until("the template to reach the token-counter", decided)
    assert d["outcome"] == "ALLOW", d
    placed = next(r for _, name, r in gate.ledger()
                  if name == "ReservationPlaced" and r["request_id"] == d["request_id"])
    rendered = messages_with(Template("faq", 1, text), values, ask)
    assert placed["template"] == "faq@1" and placed["input_tokens"] == count_chat(rendered, "gpt-4o-mini")

    unknown = gate.client.request(tenant, ask, "gpt-4o-mini", 32, template=("faq", 2, values), timeout_s=30)
    short = gate.client.request(tenant, ask, "gpt-4o-mini", 32, template=("faq", 1, {"product": "x"}), timeout_s=30)
    for denied, says in ((unknown, "faq@2"), (short, "missing")):
        assert denied["outcome"] == "DENY" and denied["reason_codes"] == ["invalid_request"], denied
        details = [r["detail"] for _, name, r in gate.ledger()
                   if name == "ReservationDenied" and r["request_id"] == denied["request_id"]]
        assert details and says in details[0], details
