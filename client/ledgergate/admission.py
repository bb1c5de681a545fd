"""Gate one model call: ask, call with what was decided, settle. What every integration is built on (the
OpenAI wrapper, the proxy, the LangChain and LiteLLM hooks).

    gate = Gate(GateClient(), GateSettings(tenant_id="acme", workflow_id="support"))
    grant = gate.admit(messages, "gpt-4o", 256)          # GateDeniedError / GateThrottledError / GateUnavailableError
    ... call grant.model with at most grant.max_output_tokens ...
    grant.settle(usage, completion_text=text)            # or grant.settle_from_text(text) / grant.void()

DENY raises GateDeniedError (reason, binding scope); THROTTLE waits its retry_after and asks again under a
new request id (a repeated id gets the same decision back), or raises GateThrottledError
(`on_throttle="raise"`). When no decision comes (the broker or the gate is away or slow) the call fails
closed (GateUnavailableError) unless both this client (`on_unavailable="open"`) and the tenant's policy (the
`fail_open_micro_usd_per_min` its last decision carried; 0 forbids it) allow failing open: then the call goes
ahead within a local envelope of micro-USD per minute, is journalled, and is reported once the gate answers
again, as a completion that names itself a fail-open call (the ledger settles it without a reservation and
marks it). While the gate is away at most one caller at a time waits for it (a probe, once per
`probe_interval_ms`); the others fail open (or closed) at once.

The response cache (docs/decisions/0013): a CACHE_HIT is a Grant too, `grant.cache_hit`, whose
`cached_response` is the tenant's earlier answer: call nothing, use the text; nothing was reserved, so its
settle / void is a no-op. A CACHE_HIT without text (its entry was gone) is asked again at once under a new
request id with the label {"cache": "bypass"}. `settle` passes the answer's text on only when the decision
asked for it (`cache_store`) and the call ended OK; otherwise the text is dropped, never sent.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledgergate.client import GateClient
from ledgergate.errors import (
    GateClientError,
    GateDeniedError,
    GateOverloadedError,
    GateThrottledError,
    GateTimeoutError,
    GateUnavailableError,
    InvalidRequestError,
    LedgergateError,
)
from ledgergate.ids import CACHE_BYPASS, CACHE_LABEL

__all__ = ["CACHE_HIT", "FAIL_OPEN", "Gate", "GateSettings", "Grant"]

FAIL_OPEN = "FAIL_OPEN"  # a Grant's outcome when the call went ahead without a decision
CACHE_HIT = "CACHE_HIT"  # a Grant's outcome when the gate answered from the tenant's response cache
GRANTED = ("ALLOW", "DOWNGRADE")  # the outcomes that reserved a call to make
THROTTLE_MODES = ("wait", "raise")
UNAVAILABLE_MODES = ("closed", "open")
ENVELOPE_WINDOW_MS = 60_000
MODELS_REMEMBERED_MAX = 1_000
_log = logging.getLogger("ledgergate.admission")


@dataclass(frozen=True, slots=True)
class GateSettings:
    """Who is asking and how to behave when the gate says no or says nothing."""

    tenant_id: str
    workflow_id: str = ""
    agent_id: str = ""
    priority: str = "NORMAL"
    region: str | None = None
    # The output cap asked for when the call names none (the gate may grant less).
    default_max_output_tokens: int = 1024
    decision_timeout_ms: int = 5_000
    on_throttle: str = "wait"
    throttle_wait_ms_max: int = 30_000  # in all, over every THROTTLE of one call
    on_unavailable: str = "closed"
    # The local envelope while failing open (the tenant's policy may lower it, never raise it).
    fail_open_micro_usd_per_min: int = 0
    # What one fail-open call is assumed to cost against the envelope when the caller gave no max cost and no
    # decision for the model was seen yet (otherwise: the last reservation the gate made for that model).
    fail_open_call_estimate_micro_usd: int = 50_000
    fail_open_calls_max: int = 10_000  # journalled calls waiting to be reported
    # A file that keeps the journal across a restart of this process (None: memory only).
    fail_open_journal_path: str | None = None
    probe_interval_ms: int = 2_000

    def __post_init__(self) -> None:
        if self.on_throttle not in THROTTLE_MODES:
            raise GateClientError(f"on_throttle must be one of {THROTTLE_MODES}, not {self.on_throttle!r}")
        if self.on_unavailable not in UNAVAILABLE_MODES:
            raise GateClientError(f"on_unavailable must be one of {UNAVAILABLE_MODES}, not {self.on_unavailable!r}")
        for name in ("default_max_output_tokens", "decision_timeout_ms", "fail_open_calls_max", "probe_interval_ms"):
            if getattr(self, name) < 1:
                raise GateClientError(f"{name} must be at least 1")
        for name in ("throttle_wait_ms_max", "fail_open_micro_usd_per_min", "fail_open_call_estimate_micro_usd"):
            if getattr(self, name) < 0:
                raise GateClientError(f"{name} must not be negative")


class Grant:
    """Permission for one call. Settle it exactly once: `settle` with the provider's usage, `settle_from_text`
    when the call broke or was abandoned without usage (the gate counts the text: marked estimated), or `void`
    when it failed before any output. Later calls are ignored. A cache hit (`cache_hit`) is no call: its answer
    is `cached_response`, and settling it reports nothing."""

    def __init__(self, gate: Gate, request_id: str, requested_model: str, model: str, max_output_tokens: int,
                 outcome: str, decision: Mapping[str, Any] | None, workflow_id: str, agent_id: str,
                 called_at_ms: int, cached_response: str | None = None) -> None:
        self.request_id = request_id
        self.requested_model = requested_model
        self.model = model  # the one to call (a cache hit: the requested one, with max_output_tokens 0)
        self.max_output_tokens = max_output_tokens
        self.outcome = outcome  # ALLOW, DOWNGRADE, FAIL_OPEN or CACHE_HIT
        self.decision = decision
        self.cached_response = cached_response  # the answer of a CACHE_HIT; None for every other outcome
        self.workflow_id = workflow_id
        self.agent_id = agent_id
        self.called_at_ms = called_at_ms
        self._gate = gate
        self._settled = threading.Event()

    @property
    def fail_open(self) -> bool:
        return self.outcome == FAIL_OPEN

    @property
    def cache_hit(self) -> bool:
        return self.outcome == CACHE_HIT

    @property
    def cache_store(self) -> bool:
        """Whether the tenant's policy caches this call's answer: then `settle` sends its text."""
        return bool(self.decision and self.decision.get("cache_store"))

    @property
    def settled(self) -> bool:
        return self._settled.is_set()

    def settle(self, usage: Mapping[str, int], completion_text: str | None = None, status: str = "OK") -> None:
        """`completion_text`: the answer, sent only when the decision asked for it (`cache_store`) and the call
        ended OK (the cache stores only whole answers); otherwise dropped here (prompts and answers are data
        to minimise: the gate needs no text when the usage is known)."""
        self._finish(dict(usage), completion_text if self.cache_store and status == "OK" else None, status)

    def settle_from_text(self, text: str, status: str = "TRUNCATED") -> None:
        self._finish(None, text, status)

    def void(self) -> None:
        self._finish({"input_tokens": 0, "cached_input_tokens": 0, "output_tokens": 0, "reasoning_tokens": 0},
                     None, "CANCELLED")

    def _finish(self, usage: dict[str, int] | None, text: str | None, status: str) -> None:
        if self._settled.is_set():
            return
        self._settled.set()
        if self.cache_hit:
            return  # nothing was reserved and nothing was called: nothing to settle
        self._gate._report(self, usage, text, status)


@dataclass(slots=True)
class _Ask:
    """One admission in progress: GateClient.request's arguments, and the throttle waits so far."""

    request: dict[str, Any]
    waited_ms: int = 0


class Gate:
    def __init__(self, client: GateClient, settings: GateSettings) -> None:
        self.client = client
        self.settings = settings
        self._lock = threading.Lock()
        self._away_since: float | None = None
        self._probe_at = 0.0
        self._probing = False
        self._tenant_cap: int | None = None  # the tenant's fail-open cap, from its last decision
        self._model_cost: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._spent: collections.deque[tuple[float, int]] = collections.deque()  # (monotonic s, micro-USD)
        self._journal: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._journal_file = Path(settings.fail_open_journal_path) if settings.fail_open_journal_path else None
        self.fail_open_calls = 0
        self.throttle_waited_ms = 0
        self.fail_open_reported = 0
        self.cache_hits = 0  # calls answered from the tenant's response cache
        self.cache_entries_gone = 0  # CACHE_HITs without text, asked again with the cache bypassed
        if self._journal_file is not None:
            self._load_journal(self._journal_file)

    # --- admission -----------------------------------------------------------------------------

    def admit(self, messages: Sequence[Mapping[str, Any]], model: str, max_output_tokens: int | None = None, *,
              request_id: str | None = None, workflow_id: str | None = None, agent_id: str | None = None,
              labels: Mapping[str, str] | None = None, tools: Any = None,
              max_cost_micro_usd: int | None = None, sampling: Mapping[str, Any] | None = None) -> Grant:
        ask = self._ask(messages, model, max_output_tokens, request_id, workflow_id, agent_id, labels, tools,
                        max_cost_micro_usd, sampling)
        while True:
            if not self._may_ask():
                return self._fail_open(ask, GateUnavailableError(
                    f"the gate is away (no decision since {self._away_for_s():.1f} s ago)"))
            try:
                decision = self.client.request(**ask.request)
            except (InvalidRequestError, GateOverloadedError):
                raise  # the caller's mistake or this process's own bound, not the gate's absence
            except (GateTimeoutError, GateClientError) as exc:
                self._went_away()
                return self._fail_open(ask, exc)
            step = self._on_decision(ask, decision)
            if isinstance(step, Grant):
                return step
            time.sleep(step / 1000)

    async def admit_async(self, messages: Sequence[Mapping[str, Any]], model: str,
                          max_output_tokens: int | None = None, *, request_id: str | None = None,
                          workflow_id: str | None = None, agent_id: str | None = None,
                          labels: Mapping[str, str] | None = None, tools: Any = None,
                          max_cost_micro_usd: int | None = None, sampling: Mapping[str, Any] | None = None,
                          ) -> Grant:
        """`admit` without blocking the event loop: it awaits the decision (and any throttle wait)."""
        ask = self._ask(messages, model, max_output_tokens, request_id, workflow_id, agent_id, labels, tools,
                        max_cost_micro_usd, sampling)
        while True:
            if not self._may_ask():
                return self._fail_open(ask, GateUnavailableError(
                    f"the gate is away (no decision since {self._away_for_s():.1f} s ago)"))
            try:
                decision = await self.client.request_async(**ask.request)
            except (InvalidRequestError, GateOverloadedError):
                raise
            except (GateTimeoutError, GateClientError) as exc:
                self._went_away()
                return self._fail_open(ask, exc)
            step = self._on_decision(ask, decision)
            if isinstance(step, Grant):
                return step
            await asyncio.sleep(step / 1000)

    def _ask(self, messages: Sequence[Mapping[str, Any]], model: str, max_output_tokens: int | None,
             request_id: str | None, workflow_id: str | None, agent_id: str | None,
             labels: Mapping[str, str] | None, tools: Any, max_cost_micro_usd: int | None,
             sampling: Mapping[str, Any] | None) -> _Ask:
        s = self.settings
        workflow = s.workflow_id if workflow_id is None else workflow_id
        agent = s.agent_id if agent_id is None else agent_id
        request = {"tenant_id": s.tenant_id, "messages": messages, "model": model,
                   "max_output_tokens": max_output_tokens or s.default_max_output_tokens,
                   "request_id": request_id or str(uuid.uuid4()), "workflow_id": workflow, "agent_id": agent,
                   "priority": s.priority, "region": s.region, "max_cost_micro_usd": max_cost_micro_usd,
                   "labels": labels, "tools": tools, "sampling": sampling, "timeout_s": s.decision_timeout_ms / 1000}
        return _Ask(request)

    def _on_decision(self, ask: _Ask, decision: dict[str, Any]) -> Grant | int:
        """A Grant, or how long to wait (ms) before asking again under a new request id; raises a DENY."""
        self._came_back()
        self._learn(decision)
        outcome = decision["outcome"]
        req = ask.request
        if outcome in GRANTED:
            deployment = decision.get("deployment") or {}
            return Grant(self, req["request_id"], req["model"], deployment.get("model") or req["model"],
                         int(decision["granted_output_tokens"]), outcome, decision, req["workflow_id"],
                         req["agent_id"], int(decision["requested_at_ms"]))
        if outcome == CACHE_HIT:
            text = decision.get("cached_response")
            if text is not None:
                self.cache_hits += 1
                return Grant(self, req["request_id"], req["model"], req["model"], 0, outcome, decision,
                             req["workflow_id"], req["agent_id"], int(decision["requested_at_ms"]), text)
            labels = dict(req["labels"] or {})
            if labels.get(CACHE_LABEL) == CACHE_BYPASS:  # the gate broke its own rule: do not ask forever
                raise GateClientError(f"the gate answered request {req['request_id']}, which bypassed the cache, "
                                      "with a CACHE_HIT without text")
            # The entry was gone between plan and decision (or this repeats a hit's request id, whose repeat
            # carries no text): ask again at once, under a new id, away from the cache.
            self.cache_entries_gone += 1
            req["labels"] = {**labels, CACHE_LABEL: CACHE_BYPASS}
            req["request_id"] = str(uuid.uuid4())
            return 0
        if outcome == "THROTTLE":
            retry_ms = int(decision.get("retry_after_ms") or 100)
            if self.settings.on_throttle == "raise" or ask.waited_ms + retry_ms > self.settings.throttle_wait_ms_max:
                raise GateThrottledError(decision, ask.waited_ms)
            ask.waited_ms += retry_ms
            self.throttle_waited_ms += retry_ms
            req["request_id"] = str(uuid.uuid4())  # the same id would get the same THROTTLE back
            return retry_ms
        raise GateDeniedError(decision)

    # --- the gate's presence -------------------------------------------------------------------

    def _may_ask(self) -> bool:
        """Present: ask. Away: one caller per probe interval asks (the probe); the rest do not wait."""
        with self._lock:
            if self._away_since is None:
                return True
            now = time.monotonic()
            if self._probing or now < self._probe_at:
                return False
            self._probing = True
            self._probe_at = now + self.settings.probe_interval_ms / 1000
            return True

    def _went_away(self) -> None:
        with self._lock:
            self._probing = False
            if self._away_since is None:
                self._away_since = time.monotonic()
                self._probe_at = self._away_since + self.settings.probe_interval_ms / 1000
                _log.warning("gate_unavailable", extra={"tenant_id": self.settings.tenant_id})

    def _came_back(self) -> None:
        with self._lock:
            was_away = self._away_since is not None
            self._away_since, self._probing = None, False
        if was_away:
            _log.warning("gate_available_again", extra={"tenant_id": self.settings.tenant_id})
        self.report_journal()

    def _away_for_s(self) -> float:
        since = self._away_since
        return 0.0 if since is None else time.monotonic() - since

    @property
    def available(self) -> bool:
        return self._away_since is None

    def _learn(self, decision: Mapping[str, Any]) -> None:
        cap = decision.get("fail_open_micro_usd_per_min")
        with self._lock:
            if decision["outcome"] != CACHE_HIT:  # a hit's ledger entry carries no fail-open cap (its 0 is not one)
                self._tenant_cap = None if cap is None else int(cap)
            if decision["outcome"] in GRANTED and decision.get("reserved_micro_usd"):
                self._model_cost[decision["requested_model"]] = int(decision["reserved_micro_usd"])
                self._model_cost.move_to_end(decision["requested_model"])
                if len(self._model_cost) > MODELS_REMEMBERED_MAX:
                    self._model_cost.popitem(last=False)

    # --- failing open --------------------------------------------------------------------------

    def envelope_micro_usd_per_min(self) -> int:
        """What this process may spend per minute while the gate is away: the client's setting, lowered by
        the tenant's policy as its last decision carried it; 0 when this client fails closed."""
        if self.settings.on_unavailable != "open":
            return 0
        cap = self._tenant_cap
        own = self.settings.fail_open_micro_usd_per_min
        return own if cap is None else min(own, cap)

    def _fail_open(self, ask: _Ask, cause: LedgergateError) -> Grant:
        req = ask.request
        request_id, model, max_cost_micro_usd = req["request_id"], req["model"], req["max_cost_micro_usd"]
        envelope = self.envelope_micro_usd_per_min()
        if envelope <= 0:
            raise GateUnavailableError(f"no gate decision for request {request_id} and failing open is off "
                                       f"for tenant {self.settings.tenant_id}: {cause.message}")
        with self._lock:
            estimate = max_cost_micro_usd or self._model_cost.get(model) or \
                self.settings.fail_open_call_estimate_micro_usd
            now = time.monotonic()
            while self._spent and self._spent[0][0] <= now - ENVELOPE_WINDOW_MS / 1000:
                self._spent.popleft()
            spent = sum(amount for _, amount in self._spent)
            if spent + estimate > envelope:
                raise GateUnavailableError(
                    f"no gate decision for request {request_id}, and the fail-open envelope is spent "
                    f"({spent} + {estimate} > {envelope} micro-USD in the last minute): {cause.message}")
            if len(self._journal) >= self.settings.fail_open_calls_max:
                raise GateUnavailableError(f"no gate decision for request {request_id}, and "
                                           f"{len(self._journal)} fail-open calls already wait to be reported")
            self._spent.append((now, estimate))
            self.fail_open_calls += 1
        _log.warning("fail_open_call", extra={"tenant_id": self.settings.tenant_id, "request_id": request_id,
                                               "estimate_micro_usd": estimate})
        return Grant(self, request_id, model, model, req["max_output_tokens"], FAIL_OPEN, None, req["workflow_id"],
                     req["agent_id"], _now_ms())

    # --- settlement ----------------------------------------------------------------------------

    def _report(self, grant: Grant, usage: dict[str, int] | None, text: str | None, status: str) -> None:
        if not grant.fail_open:
            self.client.complete(self.settings.tenant_id, grant.request_id, grant.model, usage, text, status,
                                 agent_id=grant.agent_id)
            return
        if status == "CANCELLED" and usage is not None and not any(usage.values()):
            return  # voided before any output: nothing was spent, so there is nothing to report
        entry = {"request_id": grant.request_id, "model": grant.model, "usage": usage, "text": text,
                 "status": status, "fail_open": {"workflow_id": grant.workflow_id, "agent_id": grant.agent_id,
                                                 "requested_model": grant.requested_model,
                                                 "called_at_ms": grant.called_at_ms}}
        with self._lock:
            self._journal[grant.request_id] = entry
            self._append_journal({"op": "call", **entry})
        if self.available:
            self.report_journal()

    def report_journal(self, flush_timeout_s: float = 10.0) -> int:
        """Report every journalled fail-open call (once delivered, each leaves the journal); returns how many
        still wait. Called whenever a decision arrives; call it yourself before exiting."""
        with self._lock:
            pending = list(self._journal.values())
        if not pending:
            return 0
        for entry in pending:
            self.client.complete(self.settings.tenant_id, entry["request_id"], entry["model"], entry["usage"],
                                 entry["text"], entry["status"], agent_id=entry["fail_open"]["agent_id"],
                                 fail_open=entry["fail_open"])
        if self.client.flush(flush_timeout_s) != 0:
            return len(pending)  # not delivered yet: they stay, and go again (a repeat settles nothing twice)
        with self._lock:
            for entry in pending:
                if self._journal.pop(entry["request_id"], None) is not None:
                    self._append_journal({"op": "reported", "request_id": entry["request_id"]})
                    self.fail_open_reported += 1
            return len(self._journal)

    @property
    def journalled(self) -> int:
        return len(self._journal)

    def _append_journal(self, line: dict[str, Any]) -> None:
        if self._journal_file is None:
            return
        with self._journal_file.open("a", encoding="utf-8") as f:
            f.write(json.dumps(line, separators=(",", ":")) + "\n")
            f.flush()

    def _load_journal(self, path: Path) -> None:
        if not path.exists():
            return
        for raw in path.read_text(encoding="utf-8").splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue  # a line cut by a crash mid-write: the call before it is whole
            if line.get("op") == "call":
                self._journal[line["request_id"]] = {k: v for k, v in line.items() if k != "op"}
            elif line.get("op") == "reported":
                self._journal.pop(line["request_id"], None)
        # Rewrite it with what is still owed, so the file does not grow without bound.
        path.write_text("".join(json.dumps({"op": "call", **e}, separators=(",", ":")) + "\n"
                                for e in self._journal.values()), encoding="utf-8")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
