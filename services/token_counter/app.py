"""token-counter adapter: invocation.requests -> invocation.counted, invocation.completions -> usage.metered."""

from __future__ import annotations

import time
from collections import OrderedDict

import tiktoken
from confluent_kafka import Message

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.errors import CodecError, LedgergateError, MalformedMessageError
from ledgergate.events import InvocationCompleted, InvocationCounted, InvocationRequested, UsageMetered
from ledgergate.ids import id_problem, name_problem, printable
from ledgergate.services.token_counter import core
from ledgergate.shared.errors import TokenizerError
from ledgergate.shared.kafka.headers import headers_of, stamped
from ledgergate.shared.kafka.outbox import Outbox
from ledgergate.shared.kafka.runtime import run_service
from ledgergate.shared.logging import configure
from ledgergate.shared.settings import TokenCounterSettings
from ledgergate.shared.tokenizers import encoding_for_model


def _header(msg: Message, name: str) -> str | None:
    for key, value in headers_of(msg):
        if key == name and value:
            return value.decode(errors="replace") if isinstance(value, bytes) else value
    return None


class TokenCounter:
    def __init__(self, settings: TokenCounterSettings) -> None:
        self.settings = settings
        self.log = configure("token-counter")
        self.topic_requests = settings.topic(topics.REQUESTS)
        self.topic_completions = settings.topic(topics.COMPLETIONS)
        self.topic_counted = settings.topic(topics.COUNTED)
        self.topic_metered = settings.topic(topics.METERED)
        self.encodings: dict[str, tiktoken.Encoding] = {}
        self.input_tokens: OrderedDict[str, int] = OrderedDict()  # request id -> input tokens, bounded
        self.drift: dict[str, core.Drift] = {}

    def assigned(self, partitions: list[int]) -> None:
        pass  # drift restarts from zero; counts need no state

    def revoked(self, partitions: list[int]) -> None:
        pass

    def idle(self, now_ms: int, out: Outbox) -> None:
        pass

    def encoding_for(self, model: str) -> tiktoken.Encoding:
        enc = self.encodings.get(model)
        if enc is None:
            enc = self.encodings[model] = encoding_for_model(model, self.settings.tokenizer_fallback)
        return enc

    def handle(self, msg: Message, out: Outbox) -> None:
        if msg.topic() == self.topic_requests:
            self._count(msg, out)
        else:
            self._meter(msg, out)

    def _count(self, msg: Message, out: Outbox) -> None:
        key = msg.key()
        key_tenant = key.decode(errors="replace") if key else None
        try:
            name, rec = codec().decode(msg.value())
            if name != "InvocationRequested":
                raise MalformedMessageError(f"{name} does not belong on {msg.topic()}")
        except CodecError as exc:
            # Unreadable body: answer DENY invalid_request if the key and header still say who asked.
            request_id = _header(msg, "request_id")
            if core.addressable(request_id, key_tenant) is not None:
                raise
            assert request_id is not None and key_tenant is not None
            out.emit(self.topic_counted, msg.key(), self._invalid(request_id, key_tenant, exc.message),
                     stamped(msg, "count"))
            return
        req = InvocationRequested.from_record(rec)
        reason = core.validate(req, key_tenant, self.settings.max_messages)
        counted = None
        if reason is None:
            try:
                counted = core.count_request(req, self.encoding_for, self.settings.max_output_tokens)
            except TokenizerError as exc:
                reason = exc.message
        if reason is not None:
            # The body's tenant, else the key's; if neither is a valid id (or the request id is not),
            # nobody can be answered: dead-letter it, naming why.
            tenant = req.tenant_id if core.addressable(req.request_id, req.tenant_id) is None else key_tenant
            unaddressable = core.addressable(req.request_id, tenant)
            if unaddressable is not None:
                raise MalformedMessageError(f"{unaddressable}; {reason}")
            assert tenant is not None
            self.log.info("invalid_request", tenant_id=tenant, request_id=req.request_id, reason=reason)
            out.emit(self.topic_counted, tenant.encode(),
                     self._invalid(req.request_id, tenant, reason, req), stamped(msg, "count"))
            return
        assert counted is not None
        self._remember(req.request_id, counted.input_tokens)
        body = InvocationCounted(
            req.request_id, req.tenant_id, req.workflow_id, req.agent_id, req.requested_model, req.max_output_tokens,
            req.priority, req.region, req.max_cost_micro_usd, req.labels, req.requested_at_ms, req.trace_context,
            counted.input_tokens, counted.accounting_input_tokens, counted.encoding, counted.estimated_output_tokens,
            counted.request_sha256, None, time.time_ns() // 1_000_000)
        # Re-keyed by the tenant in the body: every later hop and the ledger rely on that key.
        out.emit(self.topic_counted, req.tenant_id.encode(), codec().encode("InvocationCounted", body.to_record()),
                 stamped(msg, "count"))

    def _invalid(self, request_id: str, tenant_id: str, reason: str, req: InvocationRequested | None = None) -> bytes:
        """A DENY-to-be. Only fields that pass the edge rule are carried on: the reason may be that
        one of them holds a NUL, and the decision and the read model must not."""
        now_ms = time.time_ns() // 1_000_000
        workflow, agent, model = (req.workflow_id, req.agent_id, req.requested_model) if req else ("", "", "")
        body = InvocationCounted(
            request_id, tenant_id, workflow if id_problem("workflow_id", workflow, required=False) is None else "",
            agent if id_problem("agent_id", agent, required=False) is None else "",
            model if name_problem("model", model, required=False) is None else "", 0,
            req.priority if req else "NORMAL", None, None, {}, req.requested_at_ms if req else now_ms, {},
            0, 0, "", 0, "", printable(reason)[:500], now_ms)
        return codec().encode("InvocationCounted", body.to_record())

    def _remember(self, request_id: str, input_tokens: int) -> None:
        if self.settings.remembered_requests == 0:
            return
        self.input_tokens[request_id] = input_tokens
        if len(self.input_tokens) > self.settings.remembered_requests:
            self.input_tokens.popitem(last=False)

    def _meter(self, msg: Message, out: Outbox) -> None:
        name, rec = codec().decode(msg.value())
        if name != "InvocationCompleted":
            raise MalformedMessageError(f"{name} does not belong on {msg.topic()}")
        completion = InvocationCompleted.from_record(rec)
        # A completion settles money: one with an invalid id or model, or sent under another tenant's
        # key, is dead-lettered with the reason, never metered.
        problem = core.addressable(completion.request_id, completion.tenant_id) or name_problem(
            "model", completion.model)
        key = msg.key()
        key_tenant = key.decode(errors="replace") if key else None
        if problem is None and key_tenant != completion.tenant_id:
            problem = "the message key must be the tenant_id"
        if problem is not None:
            raise MalformedMessageError(f"completion refused: {problem}")
        try:
            encoding = self.encoding_for(completion.model)
        except TokenizerError as exc:
            raise LedgergateError(exc.message) from exc
        metered = core.meter(completion, encoding, self.input_tokens.get(completion.request_id))
        drift = self.drift.setdefault(completion.model, core.Drift())
        if not metered.estimated and metered.counted_output_tokens:
            drift.add(metered.usage.output_tokens, metered.counted_output_tokens)
        body = UsageMetered(completion.request_id, completion.tenant_id, completion.model, completion.status,
                            metered.usage, metered.estimated, metered.counted_output_tokens, drift.ppm,
                            completion.completed_at_ms, time.time_ns() // 1_000_000)
        out.emit(self.topic_metered, completion.tenant_id.encode(), codec().encode("UsageMetered", body.to_record()),
                 stamped(msg, "meter"))


def run(settings: TokenCounterSettings | None = None) -> None:
    s = settings or TokenCounterSettings()
    counter = TokenCounter(s)
    run_service("token-counter", s, counter, [counter.topic_requests, counter.topic_completions], counter.log,
                assignment_strategy="cooperative-sticky", delivery="produce-then-commit")
