"""token-counter adapter: invocation.requests -> invocation.counted, invocation.completions -> usage.metered,
with tenant.credentials (co-partitioned) folded in memory to authenticate both.

Range assignment, like the policy service: one member gets the same partition numbers of all three
inputs, so the credential states it holds are exactly those of the tenants whose messages it reads. On
assignment it reads its partitions of tenant.credentials to their end before it handles anything, then
consumes that topic beside the others, so a revoke applies within one fetch (fetch.wait.max.ms, 100 ms,
when idle; behind at most the batch in hand when busy). A message that is not on its tenant's partition
is refused (a request as unauthenticated, a completion dead-lettered): its tenant's credentials live with
another partition, and judging it by this one's would let a producer pick a partition where the tenant
has no state. Authentication comes before the rest of the edge rule, so what a forger sends, malformed or
not, is unauthenticated and never a request id's final outcome.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import tiktoken
from confluent_kafka import Message

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.errors import CodecError, LedgergateError, MalformedMessageError
from ledgergate.events import InvocationCompleted, InvocationCounted, InvocationRequested, Signature, UsageMetered
from ledgergate.ids import id_problem, name_problem, printable
from ledgergate.partitioning import murmur2_partition
from ledgergate.services.token_counter import core
from ledgergate.services.token_counter.redaction import RedactionStore
from ledgergate.services.token_counter.templates import TemplateStore
from ledgergate.shared import metrics
from ledgergate.shared.catalogue import prices
from ledgergate.shared.credentials import TenantCredentials
from ledgergate.shared.errors import TokenizerError, UnauthenticatedError, UnknownModelError
from ledgergate.shared.kafka.headers import headers_of, stamped
from ledgergate.shared.kafka.outbox import Outbox
from ledgergate.shared.kafka.reader import end_offsets, partition_count, partition_of, read_to_end
from ledgergate.shared.kafka.runtime import run_service
from ledgergate.shared.logging import configure
from ledgergate.shared.settings import TokenCounterSettings
from ledgergate.shared.tokenizers import encoding_for_model
from ledgergate.shared.tracing import Tracing, Untraced
from ledgergate.signing import key_sequence, message_canonical_bytes
from ledgergate.templates import TemplateError

MAX_HOME_CACHE = 100_000  # tenant -> partition memo; cleared when full (one murmur2 each to refill)


def _header(msg: Message, name: str) -> str | None:
    for key, value in headers_of(msg):
        if key == name and value:
            return value.decode(errors="replace") if isinstance(value, bytes) else value
    return None


class TokenCounter:
    def __init__(self, settings: TokenCounterSettings) -> None:
        self.settings = settings
        self.log = configure("token-counter")
        self.tracing = Tracing("token-counter", settings)
        self.topic_requests = settings.topic(topics.REQUESTS)
        self.topic_completions = settings.topic(topics.COMPLETIONS)
        self.topic_counted = settings.topic(topics.COUNTED)
        self.topic_metered = settings.topic(topics.METERED)
        self.topic_credentials = settings.topic(topics.CREDENTIALS)
        self.topic_templates = settings.topic(topics.TEMPLATES)
        self.templates = TemplateStore()
        self.topic_redaction = settings.topic(topics.REDACTION)
        self.redaction = RedactionStore()
        self.template_counts = core.TemplateCounts()
        self.encodings: dict[str, tiktoken.Encoding] = {}
        # request id -> (input tokens, workflow id), bounded: the count fills in a completion without usage,
        # the workflow goes on its usage.metered record (the anomaly detector's per-workflow rates).
        self.remembered: OrderedDict[str, tuple[int, str]] = OrderedDict()
        self.drift: dict[str, core.Drift] = {}
        master_key = settings.master_key_bytes()
        self.auth = core.Authenticator(master_key, "REQUIRED" if settings.auth_default_mode == "required"
                                       else "OPTIONAL")
        # partition -> tenant -> its last credential state (per partition: a partition assigned again
        # is read from scratch, and a revoked one's states go with it).
        self.credentials: dict[int, dict[str, core.TenantKeys]] = {}
        self.partitions: int | None = None  # every topic's count, read at the first assignment
        self.home: dict[str, int] = {}
        if master_key is None:
            self.log.warning("credentials_off", note="no LEDGERGATE_CREDENTIAL_MASTER_KEY: every signed message "
                             "is refused, unsigned ones pass where the tenant's mode allows")
        self._warm_encodings()

    def _warm_encodings(self) -> None:
        """Build the catalogue's encodings before the first request, not on it: o200k_base alone takes
        0.5 s (measured here), which a restarted token-counter's first decision would wait out."""
        for model in sorted({m for version in prices().versions for m in version.models}):
            with contextlib.suppress(UnknownModelError):
                self.encoding_for(model)

    def assigned(self, partitions: list[int]) -> dict[tuple[str, int], int]:
        # Drift restarts from zero and counts need no state; credentials are folded to the end first.
        bootstrap = self.settings.kafka_connection
        if self.partitions is None:
            self.partitions = partition_count(bootstrap, self.topic_requests)
        for p in partitions:
            self.credentials[p] = {}
        ends = end_offsets(bootstrap, self.topic_credentials, partitions)
        for msg in read_to_end(bootstrap, self.topic_credentials, partitions, end=ends):
            try:
                self._apply_credentials(msg, quiet=True)
            except LedgergateError as exc:  # the API is the only writer: a bug there, said loudly, not a stop
                self.log.error("credentials_unreadable", partition=msg.partition(), offset=msg.offset(),
                               error=exc.message)
        template_ends = self.templates.load(bootstrap, self.topic_templates, partitions)
        redaction_ends = self.redaction.load(bootstrap, self.topic_redaction, partitions)
        self.log.info("credentials_loaded", partitions=partitions,
                      tenants=sum(len(self.credentials[p]) for p in partitions), templates=len(self.templates))
        return {**{(self.topic_credentials, p): ends[p] for p in partitions},
                **{(self.topic_templates, p): template_ends[p] for p in partitions},
                **{(self.topic_redaction, p): redaction_ends[p] for p in partitions}}

    def revoked(self, partitions: list[int]) -> None:
        for p in partitions:
            self.credentials.pop(p, None)
        self.templates.revoked(partitions)
        self.redaction.revoked(partitions)

    def _apply_credentials(self, msg: Message, quiet: bool = False) -> None:
        """The message's tenant state replaces the one held. `quiet` at assignment: a line per tenant there
        would be a line per tenant the partitions ever had; the summary line says how many."""
        key = msg.key()
        tenant_id = key.decode(errors="replace") if key else ""
        states = self.credentials.setdefault(partition_of(msg), {})
        if msg.value() is None:
            states[tenant_id] = core.FAIL_CLOSED
            self.log.warning("credentials_tombstone", tenant_id=tenant_id, note="every key refused until the API "
                             "publishes the tenant's credentials again")
            return
        name, rec = codec().decode(msg.value())
        if name != "TenantCredentials":
            raise MalformedMessageError(f"{name} does not belong on {msg.topic()}")
        state = TenantCredentials.from_record(rec)
        if state.tenant_id != tenant_id:
            raise MalformedMessageError("TenantCredentials keyed by another tenant than its tenant_id")
        states[tenant_id] = core.tenant_keys(state, self.auth.master_key)
        if quiet:
            return
        self.log.info("credentials_applied", tenant_id=tenant_id, version=state.version, change=state.change.kind,
                      key_id=state.change.key_id, keys=len(state.keys), mode=state.mode)

    def redaction_for(self, msg: Message) -> tuple[str, ...]:
        """The redact patterns of the message's tenant (its key), for the text a dead letter would keep."""
        return self.redaction.patterns(partition_of(msg), (msg.key() or b"").decode(errors="replace"))

    def _keys(self, msg: Message, tenant_id: str) -> core.TenantKeys | None:
        return self.credentials.get(partition_of(msg), {}).get(tenant_id)

    def _misrouted(self, msg: Message, tenant_id: str) -> str | None:
        """Why a message is not on its tenant's partition, or None (where producers with Kafka's default
        partitioner, or librdkafka's murmur2_random, put it)."""
        assert self.partitions is not None, "a message before the first assignment"
        home = self.home.get(tenant_id)
        if home is None:
            if len(self.home) >= MAX_HOME_CACHE:
                self.home.clear()
            home = self.home[tenant_id] = murmur2_partition(tenant_id.encode(), self.partitions)
        partition = partition_of(msg)
        if partition == home:
            return None
        return (f"on partition {partition}, but tenant {tenant_id}'s partition is {home} (Kafka's murmur2 of the key; "
                "librdkafka producers need partitioner=murmur2_random)")

    def _authentic(self, msg: Message, name: str, rec: dict[str, Any], req: InvocationRequested) -> str | None:
        """Why a request is not its tenant's, or None; checked before the rest of the edge rule, so that
        whatever a forger sends (malformed too) is `unauthenticated`: never a request id's final outcome.
        Only the ids it needs are checked first (derivation must not meet a NUL); a request whose ids do
        not pass is answered by the edge rule, or dead-lettered."""
        if core.addressable(req.request_id, req.tenant_id) or id_problem("agent_id", req.agent_id, required=False):
            return None
        misrouted = self._misrouted(msg, req.tenant_id)
        if misrouted is None:
            return self._authenticate(msg, name, rec, req.tenant_id, req.agent_id, req.signature, req.request_id)
        # Off its tenant's partition its credentials are not here to judge it by: unauthenticated, unless its
        # key is not its tenant either, which the edge rule answers (`invalid_request`, as documented).
        key = msg.key()
        return misrouted if key is not None and key == req.tenant_id.encode() else None

    def _authenticate(self, msg: Message, name: str, rec: dict[str, Any], tenant_id: str, agent_id: str,
                      signature: Signature | None, request_id: str) -> str | None:
        value = msg.value()
        assert value is not None  # decoded already

        def canonical() -> bytes:
            return message_canonical_bytes(name, value, rec)

        what = "request" if name == "InvocationRequested" else "completion"
        why = core.authenticate(self.auth, self._keys(msg, tenant_id), tenant_id, agent_id, signature, canonical,
                                what)
        if why is not None:
            # Never the secret, the signature or prompt text: the key id only when it has the shape of one.
            key_id = signature.key_id if signature is not None and key_sequence(signature.key_id) else None
            self.log.info("unauthenticated", tenant_id=tenant_id, request_id=request_id, what=what, key_id=key_id,
                          reason=why)
        return why

    def idle(self, now_ms: int, out: Outbox) -> None:
        pass

    def encoding_for(self, model: str) -> tiktoken.Encoding:
        enc = self.encodings.get(model)
        if enc is None:
            enc = self.encodings[model] = encoding_for_model(model, self.settings.tokenizer_fallback)
        return enc

    def handle(self, msg: Message, out: Outbox) -> None:
        topic = msg.topic()
        if topic == self.topic_requests:
            with self.tracing.hop("count", msg) as hop:
                self._count(msg, out, hop)
        elif topic == self.topic_credentials:
            self._apply_credentials(msg)
        elif topic == self.topic_redaction:
            self.redaction.apply(msg)
        elif topic == self.topic_templates:
            template = self.templates.apply(msg)
            if template is not None:
                self.log.info("template_applied", template=template.ref, partition=partition_of(msg))
        else:
            with self.tracing.hop("meter", msg) as hop:
                self._meter(msg, out, hop)

    def _count(self, msg: Message, out: Outbox, hop: Untraced) -> None:
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
            # An unreadable body carries no signature anyone can check: for a tenant that requires them it
            # is not the tenant's request (and takes none of its request ids), else invalid as before.
            code = (core.UNAUTHENTICATED if self._misrouted(msg, key_tenant) is None
                    and core.requires_signature(self.auth, self._keys(msg, key_tenant)) else None)
            hop.outcome(code or "invalid_request", tenant_id=key_tenant, request_id=request_id)
            out.emit(self.topic_counted, msg.key(), self._invalid(request_id, key_tenant, exc.message, code=code,
                                                                  trace_context=hop.valid_context),
                     stamped(msg, "count"))
            return
        req = InvocationRequested.from_record(rec)
        hop.continues(req.trace_context)
        reason, code = self._authentic(msg, name, rec, req), None
        if reason is not None:
            code = core.UNAUTHENTICATED
        else:
            reason = core.validate(req, key_tenant, self.settings.max_messages)
        counted = None
        template = None
        if reason is None and req.template is not None:
            template = self.templates.get(partition_of(msg), req.tenant_id, req.template.ref)
            if template is None:
                reason = f"the tenant has no prompt template {req.template.ref}"
        if reason is None:
            try:
                counted = core.count_request(req, self.encoding_for, self.settings.max_output_tokens, template,
                                             self.template_counts)
            except TokenizerError as exc:
                reason = exc.message
            except TemplateError as exc:
                reason = f"template {template.ref if template else ''}: {exc}"
        if reason is not None:
            # The body's tenant, else the key's; if neither is a valid id (or the request id is not),
            # nobody can be answered: dead-letter it, naming why.
            tenant = req.tenant_id if core.addressable(req.request_id, req.tenant_id) is None else key_tenant
            unaddressable = core.addressable(req.request_id, tenant)
            if unaddressable is not None:
                raise MalformedMessageError(f"{unaddressable}; {reason}")
            assert tenant is not None
            if code is None:
                self.log.info("invalid_request", tenant_id=tenant, request_id=req.request_id, reason=reason)
            hop.outcome(code or "invalid_request", tenant_id=tenant, request_id=req.request_id)
            out.emit(self.topic_counted, tenant.encode(),
                     self._invalid(req.request_id, tenant, reason, req, code, hop.valid_context), stamped(msg, "count"))
            return
        assert counted is not None
        self._remember(req.request_id, counted.input_tokens, req.workflow_id)
        body = InvocationCounted(
            req.request_id, req.tenant_id, req.workflow_id, req.agent_id, req.requested_model, req.max_output_tokens,
            req.priority, req.region, req.max_cost_micro_usd, req.labels, req.requested_at_ms, hop.context,
            counted.input_tokens, counted.accounting_input_tokens, counted.encoding, counted.estimated_output_tokens,
            counted.request_sha256, None, time.time_ns() // 1_000_000, cache_key=counted.cache_key,
            cache_deterministic=counted.cache_deterministic, template=counted.template)
        hop.describe(body)
        # Re-keyed by the tenant in the body: every later hop and the ledger rely on that key.
        out.emit(self.topic_counted, req.tenant_id.encode(), codec().encode("InvocationCounted", body.to_record()),
                 stamped(msg, "count"))

    def _invalid(self, request_id: str, tenant_id: str, reason: str, req: InvocationRequested | None = None,
                 code: str | None = None, trace_context: Mapping[str, str] | None = None) -> bytes:
        """A DENY-to-be, `code` its reason (None: invalid_request). Only fields that pass the edge rule are
        carried on: the reason may be that one of them holds a NUL, and the decision and the read model
        must not (the trace context is one the W3C rules accept, or none)."""
        now_ms = time.time_ns() // 1_000_000
        workflow, agent, model = (req.workflow_id, req.agent_id, req.requested_model) if req else ("", "", "")
        body = InvocationCounted(
            request_id, tenant_id, workflow if id_problem("workflow_id", workflow, required=False) is None else "",
            agent if id_problem("agent_id", agent, required=False) is None else "",
            model if name_problem("model", model, required=False) is None else "", 0,
            req.priority if req else "NORMAL", None, None, {}, req.requested_at_ms if req else now_ms,
            dict(trace_context or {}), 0, 0, "", 0, "", printable(reason)[:500], now_ms, code)
        return codec().encode("InvocationCounted", body.to_record())

    def _remember(self, request_id: str, input_tokens: int, workflow_id: str) -> None:
        if self.settings.remembered_requests == 0:
            return
        self.remembered[request_id] = (input_tokens, workflow_id)
        if len(self.remembered) > self.settings.remembered_requests:
            self.remembered.popitem(last=False)

    def _meter(self, msg: Message, out: Outbox, hop: Untraced) -> None:
        name, rec = codec().decode(msg.value())
        if name != "InvocationCompleted":
            raise MalformedMessageError(f"{name} does not belong on {msg.topic()}")
        completion = InvocationCompleted.from_record(rec)
        hop.continues(completion.trace_context)
        # A completion settles money: one with an invalid id or model, or sent under another tenant's
        # key, is dead-lettered with the reason, never metered.
        problem = core.addressable(completion.request_id, completion.tenant_id) or name_problem(
            "model", completion.model) or id_problem("agent_id", completion.agent_id, required=False)
        call = completion.fail_open
        if problem is None and call is not None:
            problem = id_problem("fail_open.workflow_id", call.workflow_id, required=False) or id_problem(
                "fail_open.agent_id", call.agent_id, required=False) or name_problem(
                "fail_open.requested_model", call.requested_model) or (
                "fail_open.called_at_ms must be positive" if call.called_at_ms <= 0 else None)
        key = msg.key()
        key_tenant = key.decode(errors="replace") if key else None
        if problem is None and key_tenant != completion.tenant_id:
            problem = "the message key must be the tenant_id"
        if problem is None:
            problem = self._misrouted(msg, completion.tenant_id)
        if problem is not None:
            raise MalformedMessageError(f"completion refused: {problem}")
        # Only the tenant's own credentials settle its budget: a completion that fails is dead-lettered
        # under the code `unauthenticated`, and nothing downstream ever sees it.
        why = self._authenticate(msg, name, rec, completion.tenant_id, completion.agent_id, completion.signature,
                                 completion.request_id)
        if why is not None:
            raise UnauthenticatedError(f"completion refused: {why}")
        try:
            encoding = self.encoding_for(completion.model)
        except TokenizerError as exc:
            raise LedgergateError(exc.message) from exc
        input_tokens, workflow_id = self.remembered.get(completion.request_id, (None, ""))
        if completion.fail_open is not None and not workflow_id:
            workflow_id = completion.fail_open.workflow_id  # its request may never have reached the gate
        metered = core.meter(completion, encoding, input_tokens)
        drift = self.drift.setdefault(completion.model, core.Drift())
        if not metered.estimated and metered.counted_output_tokens:
            drift.add(metered.usage.output_tokens, metered.counted_output_tokens)
        body = UsageMetered(completion.request_id, completion.tenant_id, completion.model, completion.status,
                            metered.usage, metered.estimated, metered.counted_output_tokens, drift.ppm,
                            completion.completed_at_ms, time.time_ns() // 1_000_000, workflow_id,
                            completion.fail_open, core.cacheable_text(completion))
        hop.describe(body)
        # usage.metered has no trace_context field: the settlement's parent rides in the headers.
        out.emit(self.topic_metered, completion.tenant_id.encode(), codec().encode("UsageMetered", body.to_record()),
                 hop.headers(stamped(msg, "meter")))
        metrics.observe_usage(completion.tenant_id, completion.model, metered.usage, metered.estimated)


def run(settings: TokenCounterSettings | None = None) -> None:
    s = settings or TokenCounterSettings()
    counter = TokenCounter(s)
    # Range assignment (the runtime's default): the credentials it folds must be the same partitions as the
    # requests and completions it reads (co-partitioned), which cooperative-sticky does not promise.
    run_service("token-counter", s, counter, [counter.topic_requests, counter.topic_completions,
                                              counter.topic_credentials, counter.topic_templates,
                                              counter.topic_redaction], counter.log,
                delivery="produce-then-commit")
