"""The response cache's pure core (docs/decisions/0013-response-cache.md): what a request's cache key is,
whether a tenant's policy lets a request be served from or stored into the cache, the redaction an entry
gets before it is stored, and the bounded per-tenant store the answering service keeps in memory.

No I/O here: the adapters load entries from the compacted cache topic, call `CacheStore.put`, and answer
with `CacheStore.get`. Isolation is structural: the tenant is part of every key's hashed input and the store
is a map per tenant, so no lookup can reach another tenant's entry whatever the prompt.
"""

from __future__ import annotations

import collections
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ledgergate.ids import CACHE_BYPASS, CACHE_LABEL, SAMPLING_PARAMS

# The sampling parameters that change an answer: two requests that differ in any of them are different
# requests to the cache (the edge rule's list: a request carries no other).
ANSWER_PARAMS = SAMPLING_PARAMS
KEY_VERSION = 1  # part of every key: a change to what a key covers invalidates every entry, by construction
REDACTION = "[redacted]"
REDACTION_PATTERNS_MAX = 32
# The largest answer any policy may cache: it rides in a usage.metered and a cache.entries record and a
# decision, each within the broker's default message limit (1 MiB) with room for the rest.
ENTRY_BYTES_MAX = 256 * 1024


def cache_key(tenant_id: str, model: str, messages: Iterable[Mapping[str, Any]], tools_json: str | None,
              sampling: Mapping[str, Any], template: tuple[str, int] | None = None) -> str:
    """The hex SHA-256 of the request's normalised form: the tenant, the model, the messages (role, content,
    name), the tools and the answer-changing sampling parameters, and the prompt template's id and version
    when the request names one. Anything else (request id, agent, labels, clocks) does not change an answer."""
    assert tenant_id, "a cache key always names its tenant"
    content = {
        "v": KEY_VERSION, "tenant_id": tenant_id, "model": model,
        "messages": [{"role": m.get("role"), "content": m.get("content"), "name": m.get("name")} for m in messages],
        "tools": orjson.loads(tools_json) if tools_json else None,
        "sampling": {k: v for k, v in sampling.items() if k in ANSWER_PARAMS and v is not None},
        "template": list(template) if template else None,
    }
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()


def deterministic(sampling: Mapping[str, Any]) -> bool:
    """Whether the request asks for a repeatable answer: temperature 0 (providers default to 1) and one choice."""
    temperature = sampling.get("temperature")
    return temperature is not None and float(temperature) == 0.0 and int(sampling.get("n") or 1) == 1


@dataclass(frozen=True, slots=True)
class CacheRule:
    """A tenant's cache settings as the policy document gives them (shared/policy.py: CacheRuleModel)."""

    enabled: bool = False
    ttl_ms: int = 3_600_000
    max_entry_bytes: int = 64 * 1024
    serve_nondeterministic: bool = False
    forbidden_labels: frozenset[str] = frozenset({"pii"})
    workflows: frozenset[str] | None = None  # None: every workflow of the tenant
    redact_patterns: tuple[str, ...] = ()


def refusal(rule: CacheRule, workflow_id: str, labels: Mapping[str, str], repeatable: bool) -> str | None:
    """Why this request may neither be served from the cache nor stored into it; None when it may.
    `repeatable`: the request asked for a repeatable answer (`deterministic` of its sampling parameters)."""
    if not rule.enabled:
        return "cache_off"
    if labels.get(CACHE_LABEL) == CACHE_BYPASS:
        return "bypassed"
    if rule.workflows is not None and workflow_id not in rule.workflows:
        return "workflow_not_cached"
    forbidden = rule.forbidden_labels & set(labels)
    if forbidden:
        return f"label_forbids_cache:{sorted(forbidden)[0]}"
    if not rule.serve_nondeterministic and not repeatable:
        return "nondeterministic"
    return None


def store_refusal(rule: CacheRule, status: str, response_text: str | None) -> str | None:
    """Why a completion's answer may not become an entry (beyond `refusal` of its request); None when it may.
    Only a whole answer (status OK) with its text, within the tenant's size bound."""
    if status != "OK":
        return "incomplete_answer"
    if not response_text:
        return "no_text"
    if len(response_text.encode()) > rule.max_entry_bytes:
        return "entry_too_large"
    return None


def redact(text: str, patterns: Iterable[str]) -> str:
    """`text` with every match of the tenant's patterns replaced, before anything stores it. The patterns
    were checked when the policy was set (compiled, bounded in number)."""
    for pattern in patterns:
        text = re.sub(pattern, REDACTION, text)
    return text


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One cached answer: immutable once written (a newer answer for the same key is a new entry)."""

    tenant_id: str
    key: str
    entry_id: str
    model: str
    response_text: str
    input_tokens: int
    output_tokens: int
    cost_micro_usd: int  # what the call that produced it cost: what a hit avoids
    created_at_ms: int
    expires_at_ms: int
    policy_version: int

    def __post_init__(self) -> None:
        assert self.expires_at_ms > self.created_at_ms and self.cost_micro_usd >= 0, self.entry_id

    @property
    def size_bytes(self) -> int:
        return len(self.response_text.encode()) + len(self.key) + len(self.entry_id) + 64


@dataclass(slots=True)
class _TenantEntries:
    entries: collections.OrderedDict[str, CacheEntry] = field(default_factory=collections.OrderedDict)
    bytes: int = 0


@dataclass(slots=True)
class CacheStore:
    """Entries per tenant, least recently used evicted first, bounded per tenant (entries) and per instance
    (bytes). `policy_version_of` is asked on every hit: an entry written under an older policy version is not
    served (a policy change invalidates what it should, lazily)."""

    entries_per_tenant_max: int = 10_000
    bytes_max: int = 256 * 1024 * 1024
    evictions: int = 0
    expirations: int = 0
    _tenants: dict[str, _TenantEntries] = field(default_factory=dict)
    _bytes: int = 0
    _order: collections.OrderedDict[tuple[str, str], None] = field(default_factory=collections.OrderedDict)

    def put(self, entry: CacheEntry) -> None:
        self._drop(entry.tenant_id, entry.key)  # first: it may empty (and so remove) the tenant's map
        tenant = self._tenants.setdefault(entry.tenant_id, _TenantEntries())
        tenant.entries[entry.key] = entry
        tenant.bytes += entry.size_bytes
        self._bytes += entry.size_bytes
        self._order[(entry.tenant_id, entry.key)] = None
        while len(tenant.entries) > self.entries_per_tenant_max:
            self._drop(entry.tenant_id, next(iter(tenant.entries)))
            self.evictions += 1
        while self._bytes > self.bytes_max and self._order:
            victim_tenant, victim_key = next(iter(self._order))
            self._drop(victim_tenant, victim_key)
            self.evictions += 1
        assert self._bytes >= 0 and len(self._order) == sum(len(t.entries) for t in self._tenants.values())

    def get(self, tenant_id: str, key: str, now_ms: int, policy_version: int) -> CacheEntry | None:
        tenant = self._tenants.get(tenant_id)
        entry = None if tenant is None else tenant.entries.get(key)
        if entry is None:
            return None
        assert entry.tenant_id == tenant_id, "an entry is only ever filed under its own tenant"
        if entry.expires_at_ms <= now_ms or entry.policy_version != policy_version:
            self._drop(tenant_id, key)
            self.expirations += 1
            return None
        tenant.entries.move_to_end(key)  # type: ignore[union-attr]  # tenant is set when entry is
        self._order.move_to_end((tenant_id, key))
        return entry

    def remove(self, tenant_id: str, key: str) -> None:
        """An entry leaves (its tombstone was read)."""
        self._drop(tenant_id, key)

    def forget(self, tenant_id: str) -> None:
        """A tenant's entries leave (its partition was revoked, or its retention asks it)."""
        for key in list(self._tenants.get(tenant_id, _TenantEntries()).entries):
            self._drop(tenant_id, key)

    def _drop(self, tenant_id: str, key: str) -> None:
        tenant = self._tenants.get(tenant_id)
        entry = None if tenant is None else tenant.entries.pop(key, None)
        if entry is None or tenant is None:
            return
        tenant.bytes -= entry.size_bytes
        self._bytes -= entry.size_bytes
        self._order.pop((tenant_id, key), None)
        if not tenant.entries:
            del self._tenants[tenant_id]  # an empty tenant costs nothing

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._order)
