"""Token-rate limits, pure: a one-minute sliding window in fixed 1 s slots per (kind, key). A plan is counted
when it is made (estimate), corrected when its usage is known, removed on DENY or void (an expired hold keeps
it: its call may have run). No I/O; now_ms is passed in. Bounded: at most MAX_KEYS windows and MAX_REQUESTS
tracked request ids per instance."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

from ledgergate.shared.policy import Policy

WINDOW_MS = 60_000
SLOT_MS = 1_000
MAX_KEYS = 10_000
MAX_REQUESTS = 100_000

Count = Literal["input", "output", "total"]


@dataclass(frozen=True, slots=True)
class Rule:
    per: Literal["tenant", "workflow", "model"]
    match: str | None
    count: Count
    tokens_per_min: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """None wait_ms and None deny: allowed. deny: bigger than the whole limit (never fits)."""

    wait_ms: int | None
    deny: str | None
    scope: str


def rules_of(policy: Policy) -> tuple[Rule, ...]:
    return tuple(Rule(r.per, r.match, r.count, r.tokens_per_min) for r in policy.token_rate_limits)


def tokens(count: Count, input_tokens: int, output_tokens: int) -> int:
    assert input_tokens >= 0 and output_tokens >= 0
    return {"input": input_tokens, "output": output_tokens, "total": input_tokens + output_tokens}[count]


def scope_of(rule: Rule, tenant_id: str, workflow_id: str, model: str) -> str | None:
    """The window a request falls into under `rule`, or None when the rule does not apply to it."""
    subject = {"tenant": tenant_id, "workflow": workflow_id, "model": model}[rule.per]
    if rule.match is not None and rule.match != subject:
        return None
    return f"tokens_per_min:{rule.per}:{subject}:{rule.count}"


@dataclass(slots=True)
class Windows:
    # scope -> slot index -> tokens; request id -> (slot, ((scope, count_kind), ...), input, output)
    slots: OrderedDict[str, dict[int, int]] = field(default_factory=OrderedDict)
    requests: OrderedDict[str, tuple[int, tuple[tuple[str, Count], ...], int, int]] = field(
        default_factory=OrderedDict)
    evicted: int = 0

    def used(self, scope: str, now_ms: int) -> int:
        self._expire(scope, now_ms)
        return sum(self.slots.get(scope, {}).values())

    def _expire(self, scope: str, now_ms: int) -> None:
        window = self.slots.get(scope)
        if window is None:
            return
        oldest = now_ms // SLOT_MS - WINDOW_MS // SLOT_MS + 1
        for slot in [s for s in window if s < oldest]:
            del window[slot]

    def _add(self, scope: str, slot: int, amount: int) -> None:
        window = self.slots.setdefault(scope, {})
        self.slots.move_to_end(scope)
        window[slot] = window.get(slot, 0) + amount
        assert window[slot] >= 0
        while len(self.slots) > MAX_KEYS:
            self.slots.popitem(last=False)
            self.evicted += 1


def check(windows: Windows, rules: tuple[Rule, ...], tenant_id: str, workflow_id: str, model: str,
          input_tokens: int, output_tokens: int, now_ms: int) -> Verdict | None:
    """The first limit the request would overrun, with when it fits; None when it fits under every rule."""
    for rule in rules:
        scope = scope_of(rule, tenant_id, workflow_id, model)
        if scope is None:
            continue
        need = tokens(rule.count, input_tokens, output_tokens)
        if need > rule.tokens_per_min:
            return Verdict(None, f"{need} {rule.count} tokens exceed {rule.tokens_per_min}/min", scope)
        windows._expire(scope, now_ms)
        window = windows.slots.get(scope, {})
        used = sum(window.values())
        if used + need <= rule.tokens_per_min:
            continue
        # Wait until enough of the oldest slots leave the window for this request to fit.
        freed = 0
        for slot in sorted(window):
            freed += window[slot]
            if used - freed + need <= rule.tokens_per_min:
                leaves_ms = (slot + 1) * SLOT_MS + WINDOW_MS - SLOT_MS
                return Verdict(max(1, leaves_ms - now_ms), None, scope)
        raise AssertionError("a request within the limit fits once the window is empty")
    return None


def count(windows: Windows, rules: tuple[Rule, ...], request_id: str, tenant_id: str, workflow_id: str,
          model: str, input_tokens: int, output_tokens: int, now_ms: int) -> None:
    """Count a plan when it is made (so a burst cannot overrun while the ledger trails). Idempotent by id."""
    if request_id in windows.requests:
        return
    slot = now_ms // SLOT_MS
    scopes = tuple((s, r.count) for r in rules if (s := scope_of(r, tenant_id, workflow_id, model)) is not None)
    for scope, kind in scopes:
        windows._add(scope, slot, tokens(kind, input_tokens, output_tokens))
    windows.requests[request_id] = (slot, scopes, input_tokens, output_tokens)
    while len(windows.requests) > MAX_REQUESTS:
        windows.requests.popitem(last=False)
        windows.evicted += 1


def settle(windows: Windows, request_id: str, input_tokens: int | None, output_tokens: int | None) -> None:
    """Replace a counted estimate by the actual usage in the slot where it was counted; None usage (DENY,
    void) removes it. A request not tracked (never counted, or evicted) changes nothing."""
    entry = windows.requests.pop(request_id, None)
    if entry is None:
        return
    slot, scopes, est_in, est_out = entry
    act_in = 0 if input_tokens is None else input_tokens
    act_out = 0 if output_tokens is None else output_tokens
    for scope, kind in scopes:
        window = windows.slots.get(scope)
        if window is None or slot not in window:
            continue  # the slot already left the window
        window[slot] = max(0, window[slot] - tokens(kind, est_in, est_out) + tokens(kind, act_in, act_out))
