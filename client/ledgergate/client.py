"""The client SDK: publish an invocation request, wait for its gate decision; report completions;
send operator budget commands.

One Producer and one Consumer per client. The consumer reads gate.decisions outside any consumer
group, and only the partitions of the tenants the client has asked for (decisions are keyed by tenant,
so a tenant's all land on one partition): a fleet of clients does not multiply the broker's egress by
its size. A partition is added at its current end before the first request that needs it is published
(`_read_partition_of`); `partitions="all"` reads every one from construction on instead (a client that speaks
for many tenants). A background thread resolves waiting futures by request id, expires them at their
deadlines (GateTimeoutError) and serves the producer's delivery callbacks.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.commands import BudgetCommand
from ledgergate.connection import KafkaConnection
from ledgergate.errors import (
    CodecError,
    GateClientError,
    GateOverloadedError,
    GateTimeoutError,
    InvalidRequestError,
    TopicConfigError,
)
from ledgergate.events import ChatMessage, InvocationRequested, TemplateRef
from ledgergate.ids import request_problem
from ledgergate.kafka_config import (
    admin_config,
    assign_promptly,
    connect_now,
    consumer_config,
    producer_config,
    topic_unready,
)
from ledgergate.partitioning import murmur2_partition
from ledgergate.preflight import check_cluster
from ledgergate.settings import ClientSettings
from ledgergate.signing import Credential, sign
from ledgergate.tracecontext import TraceContextError, current_span_carrier, outgoing

MAX_OUTSTANDING = 100_000
# Request id -> the trace context its request carried, so its completion continues the same trace when
# neither an argument nor a current OpenTelemetry span says otherwise. Bounded: older ones start a new trace.
TRACES_REMEMBERED = 10_000
READ_MODES = ("tenant", "all")
REQUEST_ID_HEADER = "request_id"
# The SDK's hop stamp (the services add lg-t-count, lg-t-policy, ...: the server's shared/kafka/headers.py).
SEND_STAMP_HEADER = "lg-t-send"

# stdlib logging: a library must not configure the application's logging; structured fields go in `extra`.
_log = logging.getLogger("ledgergate.client")


class DecisionFuture(Future[dict[str, Any]]):
    """A pending gate decision. `sent_at`/`received_at` are time.perf_counter() readings taken just
    before the request was handed to the producer and when its decision was read, for latency."""

    def __init__(self, request_id: str) -> None:
        super().__init__()
        self.request_id = request_id
        self.sent_at = 0.0
        self.received_at: float | None = None
        self.trace_context: dict[str, str] = {}  # what the request carried (W3C traceparent, tracestate)

    @property
    def latency_s(self) -> float | None:
        return None if self.received_at is None else self.received_at - self.sent_at


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class GateClient:
    def __init__(self, bootstrap: str | None = None, topic_prefix: str | None = None, timeout_s: float = 10.0,
                 max_outstanding: int = MAX_OUTSTANDING, *, connection: KafkaConnection | None = None,
                 credential: Credential | None = None, partitions: str = "tenant",
                 consumer_options: Mapping[str, Any] | None = None) -> None:
        """`bootstrap` and `topic_prefix` default (None) to LEDGERGATE_KAFKA_BOOTSTRAP and
        LEDGERGATE_TOPIC_PREFIX (ClientSettings: 127.0.0.1:9092 and no prefix); an argument wins. TLS and
        SASL come from `connection` or else the LEDGERGATE_KAFKA_* variables (ledgergate.connection).
        `credential` (ledgergate.signing) signs every request and completion this client sends; assign
        `client.credential` to rotate keys while it runs (each message is signed by the one set when it is
        sent). None sends them unsigned, which a tenant in REQUIRED mode refuses.
        `partitions`: "tenant" reads the decisions partitions of the tenants this client asks for, "all"
        every partition. `consumer_options`: librdkafka options for the decisions consumer (statistics)."""
        if partitions not in READ_MODES:
            raise GateClientError(f"partitions must be one of {', '.join(READ_MODES)}, not {partitions!r}")
        self.credential = credential
        self._topics = ClientSettings.from_env(bootstrap, topic_prefix, connection)
        kafka = self._topics.kafka_connection
        check_cluster(kafka, timeout_s=max(timeout_s, 10.0))  # a refused password fails here, typed, not as a timeout
        self.timeout_s = timeout_s
        self.max_outstanding = max_outstanding
        self._requests_topic = self._topics.topic(topics.REQUESTS)
        self._decisions_topic = self._topics.topic(topics.DECISIONS)
        self._waiters: dict[str, DecisionFuture] = {}
        self._traces: OrderedDict[str, dict[str, str]] = OrderedDict()
        # (deadline, tie-breaker, request id, future, timeout it was given)
        self._deadlines: list[tuple[float, int, str, DecisionFuture, float]] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._closed = False
        self.delivery_errors = 0
        self._producer = Producer(producer_config(kafka))
        connect_now(self._producer, self._requests_topic)  # the first request is not 0.6 s late
        self._consumer = Consumer(consumer_config(kafka, f"ledgergate-client-{uuid.uuid4().hex}", **{
            "enable.auto.commit": False, "isolation.level": "read_committed",
            "enable.partition.eof": False, "auto.offset.reset": "latest", **(consumer_options or {})}))
        # End offsets come from an admin client of their own: on the consumer's connection such a request
        # waits behind its parked fetch (measured here: 92 s for the first, 100 ms for each after it).
        self._admin = AdminClient(admin_config(kafka))
        self._reading: set[int] = set()
        self._assign_lock = threading.Lock()
        self._assignments: list[tuple[list[TopicPartition], threading.Event]] = []  # for the decisions thread
        self._thread: threading.Thread | None = None
        try:
            self._partition_count = self._decisions_partitions(timeout_s=max(timeout_s, 10.0))
            if partitions == "all":
                self._read_partitions(list(range(self._partition_count)), max(timeout_s, 10.0))
        except BaseException:
            self._consumer.close()
            raise
        self._thread = threading.Thread(target=self._run, name="gate-client-decisions", daemon=True)
        self._thread.start()

    # --- lifecycle -----------------------------------------------------------------------------

    def _decisions_partitions(self, timeout_s: float) -> int:
        """gate.decisions' partition count (a tenant's partition is murmur2 of its id modulo it)."""
        topic = self._decisions_topic
        deadline = time.monotonic() + timeout_s
        while True:
            left = max(0.1, deadline - time.monotonic())
            try:
                meta = self._admin.list_topics(topic, timeout=left).topics.get(topic)
                if meta is not None and meta.error is None and meta.partitions:
                    return len(meta.partitions)
                problem = f"topic {topic} does not exist ({meta.error if meta is not None else 'no metadata'})"
            except KafkaException as exc:  # no broker yet
                problem = f"metadata of {topic} unavailable: {exc.args[0].str()}"
            if time.monotonic() >= deadline:
                raise TopicConfigError(f"{problem} on {self._topics.kafka_bootstrap} after {timeout_s:.0f} s; "
                                       "is the stack up and were topics applied (`ledgergate topics apply`)?")
            time.sleep(0.1)

    def _read_partitions(self, wanted: list[int], timeout_s: float) -> None:
        """Start reading these decisions partitions at their current ends, as explicit offsets: every
        decision written after this returns has an offset >= them, whenever the first fetch happens.
        (OFFSET_END is resolved lazily at that first fetch, and position() stays unset until a message
        arrives, so neither can prove the partition read before the first request is published.)"""
        topic = self._decisions_topic
        with self._assign_lock:
            todo = [p for p in wanted if p not in self._reading]
            if not todo:
                return
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    futures = self._admin.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in todo},
                                                       request_timeout=max(0.1, deadline - time.monotonic()))
                    ends = {tp.partition: fut.result().offset for tp, fut in futures.items()}
                    break
                except KafkaException as exc:  # e.g. no leader yet on a topic just created
                    if time.monotonic() >= deadline:
                        raise TopicConfigError(f"end offsets of {topic} unavailable after {timeout_s:.0f} s: "
                                               f"{exc.args[0].str()}") from None
                    time.sleep(0.1)
            tps = [TopicPartition(topic, p, ends[p]) for p in todo]
            if self._thread is None:  # the constructor, before the decisions thread runs
                assign_promptly(self._consumer, tps, incremental=True)
            else:
                # Only the decisions thread touches the consumer: an assign from another thread while
                # it polls blocked for minutes here (librdkafka 2.16 through confluent-kafka).
                done = threading.Event()
                with self._lock:
                    self._assignments.append((tps, done))
                if not done.wait(max(0.1, deadline - time.monotonic())):
                    raise GateClientError(f"the decisions thread did not start reading {topic} partitions "
                                          f"{todo} within {timeout_s:.0f} s")
            self._reading.update(todo)

    def _read_partition_of(self, tenant_id: str, timeout_s: float) -> None:
        p = murmur2_partition(tenant_id.encode(), self._partition_count)
        if p not in self._reading:
            self._read_partitions([p], timeout_s)

    @property
    def reading_partitions(self) -> list[int]:
        """The gate.decisions partitions this client reads."""
        return sorted(self._reading)

    def close(self, flush_timeout_s: float = 10.0) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._consumer.close()
        self._producer.flush(flush_timeout_s)
        with self._lock:
            pending = list(self._waiters.items())
            self._waiters.clear()
        for request_id, fut in pending:
            self._resolve(fut, exc=GateClientError(f"client closed before a decision for request {request_id}"))

    def __enter__(self) -> GateClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def outstanding(self) -> int:
        return len(self._waiters)

    def unready(self, timeout_s: float = 2.0) -> str | None:
        """None when the broker answers for the requests topic; else what is wrong (for readiness probes)."""
        return topic_unready(self._producer, self._requests_topic, timeout_s)

    def flush(self, timeout_s: float = 10.0) -> int:
        """Wait for every produced message's delivery; returns how many are still undelivered."""
        return int(self._producer.flush(timeout_s))

    # --- requests ------------------------------------------------------------------------------

    def submit(self, tenant_id: str, messages: Sequence[Mapping[str, Any]], model: str, max_output_tokens: int, *,
               request_id: str | None = None, workflow_id: str = "", agent_id: str = "", priority: str = "NORMAL",
               region: str | None = None, max_cost_micro_usd: int | None = None,
               labels: Mapping[str, str] | None = None, tools: Any = None,
               timeout_s: float | None = None, trace_context: Mapping[str, str] | None = None,
               sampling: Mapping[str, Any] | None = None,
               template: tuple[str, int, Mapping[str, str]] | None = None) -> DecisionFuture:
        """Publish one InvocationRequested; the future resolves to the decoded GateDecision, or fails with
        GateTimeoutError after `timeout_s` (the client's default when None). The request carries
        `trace_context` (a W3C traceparent, and tracestate), else the current OpenTelemetry span's, else a
        new trace's (ledgergate.tracecontext); the decision's "trace_context" returns it. `sampling`: the
        answer-changing parameters the call will use (ledgergate.ids.SAMPLING_PARAMS: temperature, seed, ...).
        `template`: (template id, version, values) of a prompt template the tenant registered: the gate renders
        it as the first message, before `messages` (which may then be empty; ledgergate.templates.messages_with
        gives what to send the provider)."""
        if self._closed:
            raise GateClientError("client is closed")
        request_id = request_id or str(uuid.uuid4())
        carrier = _trace_context(trace_context)
        request = InvocationRequested(
            request_id, tenant_id, workflow_id, agent_id, model,
            tuple(ChatMessage(m["role"], m["content"], m.get("name")) for m in messages), _tools_json(tools),
            max_output_tokens, priority, region, max_cost_micro_usd, dict(labels or {}), _now_ms(), carrier,
            _sampling_json(sampling), None if template is None else TemplateRef(template[0], int(template[1]),
                                                                                dict(template[2])))
        # The gate's edge rule, checked before publishing: a caller's typo is an exception here, not
        # a DENY invalid_request (or a dead letter) a round trip later.
        problem = request_problem(request)
        if problem is not None:
            raise InvalidRequestError(f"invalid request: {problem}")
        record = request.to_record()
        credential = self.credential  # read once: a rotation meanwhile applies to the next request
        if credential is not None:
            record = sign("InvocationRequested", record, credential)
        value = codec().encode("InvocationRequested", record)  # CodecError before anything waits
        wait_s = self.timeout_s if timeout_s is None else timeout_s
        self._read_partition_of(tenant_id, max(wait_s, 1.0))  # before publishing: its decision is read
        fut = DecisionFuture(request_id)
        fut.trace_context = carrier
        fut.set_running_or_notify_cancel()
        with self._lock:
            if request_id in self._waiters:
                raise GateClientError(f"request {request_id} is already waiting for a decision")
            if len(self._waiters) >= self.max_outstanding:
                raise GateOverloadedError(f"{len(self._waiters)} requests already wait for decisions "
                                          f"(bound {self.max_outstanding}); slow down or raise max_outstanding")
            self._waiters[request_id] = fut
            self._traces[request_id] = carrier
            if len(self._traces) > TRACES_REMEMBERED:
                self._traces.popitem(last=False)
            heapq.heappush(self._deadlines, (time.monotonic() + wait_s, next(self._seq), request_id, fut, wait_s))
        fut.sent_at = time.perf_counter()
        try:
            self._produce(self._requests_topic, tenant_id, value, request_id,
                          on_error=lambda err: self._fail(request_id, fut, GateClientError(
                              f"request {request_id} was not delivered to {self._requests_topic}: {err}")))
        except Exception as exc:
            self._fail(request_id, fut, exc)
            raise
        return fut

    def request(self, tenant_id: str, messages: Sequence[Mapping[str, Any]], model: str, max_output_tokens: int,
                **kwargs: Any) -> dict[str, Any]:
        """Blocking form of `submit`: the decision, or GateTimeoutError naming the request id."""
        fut = self.submit(tenant_id, messages, model, max_output_tokens, **kwargs)
        wait_s = kwargs.get("timeout_s") or self.timeout_s
        try:
            # The consumer thread fails the future at its deadline; the margin only guards against that
            # thread being gone.
            return fut.result(timeout=wait_s + 5.0)
        except FutureTimeoutError:
            raise GateTimeoutError(f"no gate decision for request {fut.request_id} within {wait_s:.1f} s") from None

    async def request_async(self, tenant_id: str, messages: Sequence[Mapping[str, Any]], model: str,
                            max_output_tokens: int, **kwargs: Any) -> dict[str, Any]:
        return await asyncio.wrap_future(self.submit(tenant_id, messages, model, max_output_tokens, **kwargs))

    # --- completions and commands ----------------------------------------------------------------

    def complete(self, tenant_id: str, request_id: str, model: str, usage: Mapping[str, int] | None,
                 completion_text: str | None = None, status: str = "OK", agent_id: str = "",
                 trace_context: Mapping[str, str] | None = None, fail_open: Mapping[str, Any] | None = None) -> None:
        """Report how a granted call ended (non-blocking; `flush` or `close` waits for delivery). `agent_id`:
        the agent of the request, which a credential scoped to one agent must name. The settlement joins the
        request's trace: `trace_context`, else the current OpenTelemetry span's, else what this client's
        request with that id carried (the last TRACES_REMEMBERED), else a new trace."""
        if not trace_context:
            with self._lock:
                remembered = self._traces.pop(request_id, None)
            trace_context = None if current_span_carrier() is not None else remembered
        record = {
            "request_id": request_id, "tenant_id": tenant_id, "model": model, "status": status,
            "usage": None if usage is None else {
                "input_tokens": int(usage["input_tokens"]),
                "cached_input_tokens": int(usage.get("cached_input_tokens", 0)),
                "output_tokens": int(usage["output_tokens"]),
                "reasoning_tokens": int(usage.get("reasoning_tokens", 0))},
            "completion_text": completion_text, "completed_at_ms": _now_ms(),
            "trace_context": _trace_context(trace_context),
            "agent_id": agent_id, "signature": None,
        }
        if fail_open is not None:  # a call made while the gate was away (ledgergate.admission)
            record["fail_open"] = dict(fail_open)
        credential = self.credential
        if credential is not None:
            record = sign("InvocationCompleted", record, credential)
        value = codec().encode("InvocationCompleted", record)
        self._produce(self._topics.topic(topics.COMPLETIONS), tenant_id, value, request_id, on_error=self._count_error)

    def send_command(self, tenant_id: str, kind: str, amount_micro_usd: int = 0, scope_type: str = "TENANT",
                     scope_id: str = "", request_id: str | None = None, policy_json: str | None = None,
                     reason: str = "", issued_by: str = "cli") -> str:
        """Publish one BudgetCommand and wait until Kafka has it; returns its command id."""
        command = BudgetCommand(tenant_id, kind, scope_type, scope_id, amount_micro_usd, request_id, policy_json,
                                reason, issued_by)
        command_id = command.command_id
        value = command.encode()
        errors: list[str] = []
        self._produce(self._topics.topic(topics.COMMANDS), tenant_id, value, command_id, on_error=errors.append)
        if self._producer.flush(self.timeout_s) != 0:
            raise GateClientError(f"command {command_id} not delivered within {self.timeout_s:.1f} s")
        if errors:
            raise GateClientError(f"command {command_id} was not delivered: {errors[0]}")
        return command_id

    # --- internals -----------------------------------------------------------------------------

    def _produce(self, topic: str, tenant_id: str, value: bytes, request_id: str,
                 on_error: Callable[[str], Any]) -> None:
        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                on_error(str(err))

        while True:
            try:
                # lg-t-send: the hop stamp the gate's request-to-decision latency is measured from
                # (microseconds since the epoch, as every service stamps its own hop).
                self._producer.produce(topic, key=tenant_id.encode(), value=value, on_delivery=delivered,
                                       headers=[(REQUEST_ID_HEADER, request_id.encode()),
                                                (SEND_STAMP_HEADER, str(time.time_ns() // 1000).encode())])
                return
            except BufferError:  # local queue full: let librdkafka drain it, then retry
                self._producer.poll(0.05)

    def _count_error(self, err: str) -> None:
        self.delivery_errors += 1
        _log.warning("delivery_failed: %s", err, extra={"error": str(err)})

    def _fail(self, request_id: str, fut: DecisionFuture, exc: BaseException) -> None:
        with self._lock:
            if self._waiters.get(request_id) is fut:
                del self._waiters[request_id]
        self._resolve(fut, exc=exc)

    @staticmethod
    def _resolve(fut: DecisionFuture, result: dict[str, Any] | None = None,
                 exc: BaseException | None = None) -> None:
        try:
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)  # type: ignore[arg-type]
        except InvalidStateError:  # cancelled by its owner or already failed: nothing to do
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._assignments:
                    with self._lock:
                        pending, self._assignments = self._assignments, []
                    for tps, done in pending:
                        assign_promptly(self._consumer, tps, incremental=True)
                        done.set()
                self._producer.poll(0)
                # poll() returns on the first message; consume(n, t) would wait out t unless n arrived,
                # adding its whole timeout to a decision's latency. Then drain what is already there.
                msg = self._consumer.poll(0.02)
                if msg is not None:
                    self._on_message(msg)
                    for more in self._consumer.consume(1000, 0):
                        self._on_message(more)
                self._expire()
            except Exception as exc:  # keep serving: a dead thread would strand every waiter
                _log.error("decision_loop_error: %r", exc)
                time.sleep(0.1)

    def _on_message(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                _log.warning("decision_consume_error: %s", err)
            return
        try:
            name, record = codec().decode(msg.value())
        except CodecError as exc:
            _log.warning("undecodable_decision at partition %s offset %s: %s", msg.partition(), msg.offset(),
                         exc.message)
            return
        if name != "GateDecision":
            return
        with self._lock:
            fut = self._waiters.pop(record["request_id"], None)
        if fut is not None:  # others' decisions share the topic; they are not ours to answer
            fut.received_at = time.perf_counter()
            self._resolve(fut, result=record)

    def _expire(self) -> None:
        now = time.monotonic()
        expired = []
        with self._lock:
            while self._deadlines and self._deadlines[0][0] <= now:
                _deadline, _seq, request_id, fut, wait_s = heapq.heappop(self._deadlines)
                if fut.done():
                    continue
                if self._waiters.get(request_id) is fut:
                    del self._waiters[request_id]
                expired.append((request_id, fut, wait_s))
        for request_id, fut, wait_s in expired:
            self._resolve(fut, exc=GateTimeoutError(
                f"no gate decision for request {request_id} within {wait_s:.1f} s"))


def _trace_context(explicit: Mapping[str, str] | None) -> dict[str, str]:
    try:
        return outgoing(explicit)
    except TraceContextError as exc:
        raise InvalidRequestError(f"invalid trace_context: {exc.message}") from None


def _sampling_json(sampling: Mapping[str, Any] | None) -> str | None:
    """The parameters that were given (None values left out), as sorted-key JSON; None when there are none."""
    given = {k: v for k, v in (sampling or {}).items() if v is not None}
    return json.dumps(given, sort_keys=True, separators=(",", ":")) if given else None


def _tools_json(tools: Any) -> str | None:
    if tools is None or isinstance(tools, str):
        return tools
    return json.dumps(tools, sort_keys=True, separators=(",", ":"))
