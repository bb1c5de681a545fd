"""GateClient against the real broker: a small responder thread plays the services' part (it consumes
invocation.requests and publishes one GateDecision per request), so no broker is faked."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from ledgergate.client import GateClient, GateOverloadedError
from ledgergate.codec import codec
from ledgergate.errors import GateClientError, GateTimeoutError
from ledgergate.kafka_config import consumer_config, producer_config
from ledgergate.shared.settings import KafkaSettings
from ledgergate.topics import COMMANDS, COMPLETIONS, DECISIONS, REQUESTS

pytestmark = pytest.mark.integration
SILENT_TENANT = "tenant-nobody-answers"


def _decision_for(request: dict[str, Any]) -> dict[str, Any]:
    now = time.time_ns() // 1_000_000
    return {
        "request_id": request["request_id"], "tenant_id": request["tenant_id"],
        "workflow_id": request["workflow_id"], "agent_id": request["agent_id"], "outcome": "ALLOW",
        "requested_model": request["requested_model"],
        "deployment": {"model": request["requested_model"], "endpoint": "https://us-east.provider.local/v1/x",
                       "region": "us-east"},
        "granted_output_tokens": request["max_output_tokens"], "reserved_micro_usd": 1234,
        "remaining_micro_usd": 5_000_000, "reason_codes": ["within_budget"], "binding_scope": None,
        "retry_after_ms": None, "reservation_id": request["request_id"],
        "ledger_entry_id": f"placed-{request['request_id']}", "policy_version": 0,
        "requested_at_ms": request["requested_at_ms"], "decided_at_ms": now,
    }


class Responder(threading.Thread):
    """Answers every request except those of SILENT_TENANT; records the request_id headers it saw."""

    def __init__(self, settings: KafkaSettings) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.headers: dict[str, bytes] = {}

    def run(self) -> None:
        consumer = Consumer(consumer_config(self.settings.kafka_connection, f"responder-{uuid.uuid4().hex}"))
        producer = Producer(producer_config(self.settings.kafka_connection))
        consumer.subscribe([self.settings.topic(REQUESTS)], on_assign=lambda *_: self.ready.set())
        try:
            while not self.stop.is_set():
                for msg in consumer.consume(100, 0.05):
                    if msg.error() is not None:
                        continue
                    _name, request = codec().decode(msg.value())
                    self.headers[request["request_id"]] = dict(msg.headers() or []).get("request_id", b"")
                    if request["tenant_id"] == SILENT_TENANT:
                        continue
                    producer.produce(self.settings.topic(DECISIONS), key=msg.key(),
                                     value=codec().encode("GateDecision", _decision_for(request)))
                producer.poll(0)
            producer.flush(10)
        finally:
            consumer.close()


@pytest.fixture
def responder(kafka: KafkaSettings) -> Iterator[Responder]:
    thread = Responder(kafka)
    thread.start()
    assert thread.ready.wait(30), "responder never got its partitions"
    yield thread
    thread.stop.set()
    thread.join(30)


@pytest.fixture
def client(kafka: KafkaSettings) -> Iterator[GateClient]:
    with GateClient(kafka.kafka_bootstrap, topic_prefix=kafka.topic_prefix, timeout_s=15.0) as c:
        yield c


def _read_all(settings: KafkaSettings, topic: str, count: int, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    consumer = Consumer(consumer_config(settings.kafka_connection, f"reader-{uuid.uuid4().hex}"))
    consumer.subscribe([settings.topic(topic)])
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < count and time.monotonic() < deadline:
            got.extend(codec().decode(m.value())[1] for m in consumer.consume(100, 0.2) if m.error() is None)
    finally:
        consumer.close()
    return got


MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hi."}]


def test_request_returns_its_own_decision(client: GateClient, responder: Responder) -> None:
    decision = client.request("acme", MESSAGES, "gpt-4o", 128, workflow_id="wf-1", agent_id="a-1",
                              labels={"team": "search"})
    assert decision["outcome"] == "ALLOW"
    assert decision["tenant_id"] == "acme"
    assert decision["workflow_id"] == "wf-1"
    assert decision["deployment"]["model"] == "gpt-4o"
    assert responder.headers[decision["request_id"]] == decision["request_id"].encode()


def test_many_concurrent_requests_each_get_the_matching_decision(client: GateClient, responder: Responder) -> None:
    futures = {f"req-{i}-{uuid.uuid4().hex[:6]}": None for i in range(300)}
    for i, rid in enumerate(futures):
        futures[rid] = client.submit(f"tenant-{i % 17}", MESSAGES, "gpt-4o-mini", 64 + i, request_id=rid)
    for i, (rid, fut) in enumerate(futures.items()):
        decision = fut.result(timeout=30)
        assert decision["request_id"] == rid
        assert decision["tenant_id"] == f"tenant-{i % 17}"
        assert decision["granted_output_tokens"] == 64 + i
        assert fut.latency_s is not None and fut.latency_s >= 0
    assert client.outstanding == 0


async def test_request_async(client: GateClient, responder: Responder) -> None:
    decisions = await asyncio.gather(*(client.request_async("globex", MESSAGES, "gpt-4.1", 32) for _ in range(5)))
    assert len({d["request_id"] for d in decisions}) == 5


def test_unanswered_request_times_out_within_the_timeout(client: GateClient, responder: Responder) -> None:
    rid = f"silent-{uuid.uuid4().hex}"
    started = time.monotonic()
    with pytest.raises(GateTimeoutError) as info:
        client.request(SILENT_TENANT, MESSAGES, "gpt-4o", 64, request_id=rid, timeout_s=1.5)
    elapsed = time.monotonic() - started
    assert 1.4 <= elapsed < 3.0
    assert rid in info.value.message and "1.5" in info.value.message
    assert client.outstanding == 0


def test_outstanding_waiters_are_bounded(kafka: KafkaSettings, responder: Responder) -> None:
    with GateClient(kafka.kafka_bootstrap, kafka.topic_prefix, timeout_s=1.0, max_outstanding=2) as small:
        first = [small.submit(SILENT_TENANT, MESSAGES, "gpt-4o", 8) for _ in range(2)]
        with pytest.raises(GateOverloadedError, match="bound 2"):
            small.submit(SILENT_TENANT, MESSAGES, "gpt-4o", 8)
        for fut in first:
            assert isinstance(fut.exception(timeout=10), GateTimeoutError)
        assert small.request("acme", MESSAGES, "gpt-4o", 8)["outcome"] == "ALLOW"  # room again after expiry


def test_complete_lands_on_completions_and_decodes(client: GateClient, kafka: KafkaSettings) -> None:
    usage = {"input_tokens": 120, "cached_input_tokens": 64, "output_tokens": 40, "reasoning_tokens": 0}
    client.complete("acme", "req-a", "gpt-4o", usage)
    client.complete("acme", "req-b", "gpt-4o-mini", None, completion_text="partial words", status="TRUNCATED")
    assert client.flush(10) == 0
    got = {r["request_id"]: r for r in _read_all(kafka, COMPLETIONS, 2)}
    assert got["req-a"]["usage"] == usage and got["req-a"]["status"] == "OK"
    assert got["req-b"]["usage"] is None and got["req-b"]["completion_text"] == "partial words"
    assert got["req-b"]["status"] == "TRUNCATED"


def test_send_command_lands_on_commands_and_decodes(client: GateClient, kafka: KafkaSettings) -> None:
    set_id = client.send_command("acme", "SET_LIMIT", 25_000_000, reason="demo")
    wf_id = client.send_command("acme", "SET_LIMIT", 5_000_000, scope_type="WORKFLOW", scope_id="wf-1")
    policy_id = client.send_command("acme", "SET_POLICY", policy_json='{"rate_limit_per_s": 50}')
    got = {r["command_id"]: r for r in _read_all(kafka, COMMANDS, 3)}
    assert got[set_id]["kind"] == "SET_LIMIT" and got[set_id]["amount_micro_usd"] == 25_000_000
    assert got[set_id]["scope_type"] == "TENANT" and got[set_id]["scope_id"] == "acme"
    assert got[wf_id]["scope_type"] == "WORKFLOW" and got[wf_id]["scope_id"] == "wf-1"
    assert got[policy_id]["kind"] == "SET_POLICY" and got[policy_id]["policy_json"] == '{"rate_limit_per_s": 50}'
    assert all(r["issued_by"] == "cli" and r["tenant_id"] == "acme" for r in got.values())


def test_bootstrap_and_prefix_default_from_the_environment(kafka: KafkaSettings, responder: Responder,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGERGATE_KAFKA_BOOTSTRAP", kafka.kafka_bootstrap)
    monkeypatch.setenv("LEDGERGATE_TOPIC_PREFIX", kafka.topic_prefix)
    with GateClient(timeout_s=15.0) as from_env:
        assert from_env.request("acme", MESSAGES, "gpt-4o", 16)["outcome"] == "ALLOW"


def test_explicit_bootstrap_and_prefix_win_over_the_environment(kafka: KafkaSettings, responder: Responder,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # Neither exists: a client that read them would fail to find its topics or its broker.
    monkeypatch.setenv("LEDGERGATE_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("LEDGERGATE_TOPIC_PREFIX", f"absent{uuid.uuid4().hex[:8]}.")
    with GateClient(kafka.kafka_bootstrap, kafka.topic_prefix, timeout_s=15.0) as explicit:
        assert explicit.request("acme", MESSAGES, "gpt-4o", 16)["outcome"] == "ALLOW"


def test_a_client_reads_only_the_partitions_of_its_tenants(kafka: KafkaSettings, responder: Responder) -> None:
    """Broker egress grows with a client's own tenants, not with every client's decisions."""
    from ledgergate.partitioning import murmur2_partition
    from tests.conftest import TEST_PARTITIONS

    tenants = [f"part-{i}" for i in range(40)]
    by_partition: dict[int, str] = {}
    for tenant in tenants:
        by_partition.setdefault(murmur2_partition(tenant.encode(), TEST_PARTITIONS), tenant)
    first, second = list(by_partition.values())[:2]
    with GateClient(kafka.kafka_bootstrap, topic_prefix=kafka.topic_prefix, timeout_s=15.0) as own, \
            GateClient(kafka.kafka_bootstrap, topic_prefix=kafka.topic_prefix, timeout_s=15.0,
                       partitions="all") as every:
        assert own.reading_partitions == [] and every.reading_partitions == list(range(TEST_PARTITIONS))
        assert own.request(first, MESSAGES, "gpt-4o", 16)["tenant_id"] == first
        assert own.reading_partitions == [murmur2_partition(first.encode(), TEST_PARTITIONS)]
        # A decision for a tenant on another partition, asked by the client reading every partition...
        assert every.request(second, MESSAGES, "gpt-4o", 16)["tenant_id"] == second
        assert len(own.reading_partitions) == 1
        # ...and the first client's next tenant, on that other partition, is read from then on.
        assert own.request(second, MESSAGES, "gpt-4o", 16)["tenant_id"] == second
        assert sorted(own.reading_partitions) == sorted(murmur2_partition(t.encode(), TEST_PARTITIONS)
                                                        for t in (first, second))
    with pytest.raises(GateClientError, match="partitions must be one of"):
        GateClient(kafka.kafka_bootstrap, topic_prefix=kafka.topic_prefix, partitions="some")
