"""Physical floors, measured in the same run on the same broker with the same client settings.

Kafka echo: the client publishes to a topic and times the message back, directly (one hop) or through
four consumer->producer relays, the gate's shape (4 services, 5 topics). Relays are processes, as the
services are, in three variants: plain (no transactions), transactional (a minimal consume-produce-
commit loop, one transaction per poll batch), and the ledgergate runtime itself with an echo handler,
each relay exactly-once or not as the service in its place runs (GATE_EXACTLY_ONCE), so the gate's
latency minus this one is the cost of the services' own work.

Tokenizer: raw tiktoken o200k_base `encode_ordinary` over the gate's prompts against the token-counter's
counting function (services/token_counter/core.count_request) over the same requests.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from ledgergate.connection import KafkaConnection
from ledgergate.events import InvocationRequested
from ledgergate.kafka_config import admin_config, consumer_config, producer_config, transactional_producer_config
from ledgergate.shared.errors import ReadTimeoutError
from ledgergate.shared.kafka.headers import headers_of, stage_times_us, stamped
from ledgergate.shared.kafka.reader import offset_of, partition_of, topic_of
from ledgergate.shared.settings import PROJECT_ROOT, ServiceSettings
from ledgergate.tools.bench import procstats, stats
from ledgergate.tools.bench.loadgen import CLIENT_CONSUMER, assign_at_end, now_us

RELAYS = 4
# How each service runs its hop, in pipeline order (token-counter, policy, budget-manager, router):
# True = exactly once (a Kafka transaction per batch). Keep in step with services/*/app.py run().
GATE_EXACTLY_ONCE = (False, False, True, True)
PAYLOAD_BYTES = 600  # about an encoded invocation request with a short prompt
KEYS = 1000


# --- relay processes: `python -m ledgergate.tools.bench.floors relay '<json>'` --------------------------------


class _Echo:
    """A runtime handler that forwards every message unchanged but for its timing stamp, as the
    services stamp theirs: the runtime's cost and nothing else."""

    def __init__(self, out_topic: str, stage: str) -> None:
        self.out_topic, self.stage = out_topic, stage

    def assigned(self, partitions: list[int]) -> None:
        return None

    def revoked(self, partitions: list[int]) -> None:
        pass

    def idle(self, now_ms: int, out: Any) -> None:
        pass

    def handle(self, msg: Message, out: Any) -> None:
        out.emit(self.out_topic, msg.key(), msg.value(), stamped(msg, self.stage))


def relay(spec: dict[str, Any]) -> None:
    # A child process: the address comes in the spec, the security settings from the environment it
    # inherited (LEDGERGATE_KAFKA_*), the same the parent read its own connection from.
    connection = KafkaConnection.from_env(bootstrap=spec["bootstrap"])
    src, dst, mode = spec["in"], spec["out"], spec["mode"]
    if mode == "runtime":
        from ledgergate.shared.kafka.options import RuntimeOptions
        from ledgergate.shared.kafka.runtime import StreamRuntime

        s = ServiceSettings()
        options = RuntimeOptions(service="floor-relay", instance_id=spec["id"], connection=connection,
                                 group_id=spec["group"], topics=[src], deadletter_topic=dst,
                                 max_batch=s.max_batch, poll_timeout_s=s.poll_timeout_ms / 1000,
                                 delivery="kafka-transaction" if spec["exactly_once"] else "produce-then-commit")
        StreamRuntime(options, _Echo(dst, f"r{spec['id']}")).run()
        return
    running = True

    def _stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, _stop)
    txn = mode == "txn"
    consumer = Consumer(consumer_config(connection, spec["group"], **({} if txn else {"enable.auto.commit": True})))
    if txn:
        producer = Producer(transactional_producer_config(connection, f"{spec['group']}-{spec['id']}"))
        producer.init_transactions(30)
    else:
        producer = Producer(producer_config(connection))
    consumer.subscribe([src])
    batches, messages, commit_us = 0, 0, []
    while running:
        # poll returns on the first message (consume(n, t) would wait out t); then drain what is there.
        first = consumer.poll(0.1)
        if first is None:
            producer.poll(0)
            continue
        batch = [m for m in [first, *consumer.consume(500, 0)] if m.error() is None]
        if txn:
            producer.begin_transaction()
        for m in batch:
            producer.produce(dst, value=m.value(), key=m.key(), headers=stamped(m, f"r{spec['id']}"))
        if txn:
            # Timed: offsets + commit is what a transactional hop adds over a plain one.
            t0 = now_us()
            offsets = {(topic_of(m), partition_of(m)): offset_of(m) + 1 for m in batch}
            producer.send_offsets_to_transaction([TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                                 consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(30)
            commit_us.append(now_us() - t0)
        producer.poll(0)
        batches, messages = batches + 1, messages + len(batch)
    producer.flush(10)
    consumer.close()
    print(json.dumps({"batches": batches, "messages": messages,
                      "commit_ms": stats.p50_p99_ms(commit_us) if txn else None}), flush=True)


# --- the echo measurement ---------------------------------------------------------------------------


def _create_topics(connection: KafkaConnection, names: list[str], partitions: int) -> None:
    admin = AdminClient(admin_config(connection))
    for fut in admin.create_topics([NewTopic(n, partitions, 1) for n in names], operation_timeout=30).values():
        fut.result()


def delete_topics(connection: KafkaConnection, names: list[str]) -> None:
    admin = AdminClient(admin_config(connection, log_level=4))  # no info lines on close
    for fut in admin.delete_topics(names, operation_timeout=30).values():
        with contextlib.suppress(Exception):  # cleanup only: a leftover prefixed topic harms nothing
            fut.result()


def _echo(connection: KafkaConnection, first: str, last: str, rate: float, seconds: float,
          warm_s: float = 1.0) -> dict[str, Any]:
    """Open loop at `rate`: latency is receipt minus the scheduled send time. The first `warm_s` of
    traffic is sent but not counted (connections, fetch sessions and batches settle first)."""
    producer = Producer(producer_config(connection))
    consumer = Consumer(consumer_config(connection, f"bench-echo-{uuid.uuid4().hex}", **CLIENT_CONSUMER))
    assign_at_end(consumer, last)
    payload = bytes(PAYLOAD_BYTES)
    # Readiness: relays joining their groups take a moment; a probe must come back before timing starts.
    deadline, back = time.monotonic() + 60, False
    while not back:
        if time.monotonic() > deadline:
            raise ReadTimeoutError(f"no echo from {first} to {last} within 60 s; did the relays start?")
        producer.produce(first, value=payload, key=b"probe", headers=[("probe", b"1")])
        producer.flush(5)
        end = time.monotonic() + 0.5
        while not back and time.monotonic() < end:
            msg = consumer.poll(0.05)
            back = msg is not None and msg.error() is None
    warm, count = int(rate * warm_s), int(rate * (seconds + warm_s))
    sched, recv = [0] * count, [0] * count
    stamps: list[dict[str, int]] = [{} for _ in range(count)]
    start = now_us() + 200_000

    def send() -> None:
        for i in range(count):
            due = start + int(i * 1e6 / rate)
            wait = due - now_us()
            if wait > 0:
                time.sleep(wait / 1e6)
            sched[i] = due
            producer.produce(first, value=payload, key=f"k{i % KEYS}".encode(),
                             headers=[("seq", str(i).encode()), ("lg-t-send", str(now_us()).encode())])
            producer.poll(0)
        producer.flush(10)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    got, give_up = 0, None
    while got < count:
        msg = consumer.poll(0.05)
        t = now_us()
        for m in [msg, *consumer.consume(1000, 0)] if msg is not None else []:
            seq = dict(m.headers() or []).get("seq") if m.error() is None else None
            if seq is not None and not recv[int(seq)]:
                recv[int(seq)] = t
                stamps[int(seq)] = stage_times_us(headers_of(m))
                got += 1
        if not sender.is_alive():
            give_up = give_up or time.monotonic() + 15
            if time.monotonic() > give_up:
                break
    sender.join()
    consumer.close()
    lat = stats.summary_ms([r - s for s, r in zip(sched[warm:], recv[warm:], strict=True) if r])
    # Per hop from the relays' stamps, laid out like the gate's (send -> r0 .. r3 -> recv).
    names = ["send", *sorted({k for st in stamps for k in st if k.startswith("r")}), "recv"]
    for i in range(warm, count):
        stamps[i]["recv"] = recv[i]
    hops = {f"{a}->{b}": stats.p50_p99_ms([st[b] - st[a] for st in stamps[warm:] if st.get(a) and st.get(b)])
            for a, b in itertools.pairwise(names)}
    return {"rate_per_s": rate, "sent": count - warm, "received": sum(1 for r in recv[warm:] if r), "latency_ms": lat,
            "hops_ms": hops}


def echo_floors(connection: KafkaConnection, prefix: str, partitions: int, rate: float, seconds: float,
                low_rate: float | None = None) -> dict[str, Any]:
    """Each variant at `rate`; with `low_rate`, the runtime variant again at that rate, to set beside
    the gate's own low-load step (a hop's cost depends on how full its batches are)."""
    variants: list[tuple[str, str | None, float]] = [
        ("1 hop", None, rate), ("4 relays, no transactions", "plain", rate), ("4 relays, transactional", "txn", rate),
        ("4 relays, ledgergate runtime as the gate runs it", "runtime", rate)]
    if low_rate:
        variants.append((f"4 relays, ledgergate runtime as the gate runs it, {low_rate:g}/s", "runtime", low_rate))
    out: dict[str, Any] = {}
    for n, (name, mode, at) in enumerate(variants):
        key = f"{mode or 'direct'}{n}"
        topics = [f"{prefix}floor.{key}.{i}" for i in range(RELAYS + 1 if mode else 1)]
        _create_topics(connection, topics, partitions)
        procs: list[subprocess.Popen[str]] = []
        try:
            for i in range(RELAYS if mode else 0):
                spec = {"bootstrap": connection.bootstrap, "in": topics[i], "out": topics[i + 1], "mode": mode,
                        "group": f"{prefix}floor-{key}-{i}", "id": str(i), "exactly_once": GATE_EXACTLY_ONCE[i]}
                procs.append(subprocess.Popen([sys.executable, "-m", "ledgergate.tools.bench.floors", "relay",
                                               json.dumps(spec)],
                                              cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                              text=True))
            print(f"floors: echo {name} at {at:g} msg/s for {seconds:g} s", file=sys.stderr, flush=True)
            window = procstats.CpuWindow({**{f"relay{i}": p.pid for i, p in enumerate(procs)}, **procstats.broker(),
                                          "bench": os.getpid()})
            out[name] = _echo(connection, topics[0], topics[-1], at, seconds)
            out[name]["cpu"] = window.close()
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            relays = []
            for proc in procs:
                try:
                    stdout, _ = proc.communicate(timeout=15)
                    relays.append(json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else {})
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if name in out and mode != "runtime":
                out[name]["relays"] = relays  # per relay: batches, messages, and commit time if transactional
            delete_topics(connection, topics)
    return out


# --- tokenizer ---------------------------------------------------------------------------------------


def tokenizer_floor(records: list[dict[str, Any]], repeats: int = 3) -> dict[str, Any]:
    """Tokens per second of raw tiktoken vs the token-counter's count_request on the same requests;
    best of `repeats` alternating passes, so a burst of someone else's load hurts both alike."""
    from ledgergate.services.token_counter import core
    from ledgergate.shared.tokenizers import count_chat, encoding_for_model, get_encoding

    enc = get_encoding("o200k_base")
    texts = [m["content"] for r in records for m in r["messages"]]
    cache: dict[str, Any] = {}

    def encoding_for(model: str) -> Any:  # the token-counter memoises per model, as here
        found = cache.get(model)
        if found is None:
            found = cache[model] = encoding_for_model(model, "o200k_base")
        return found

    def raw() -> int:
        return sum(len(enc.encode_ordinary(t)) for t in texts)

    def chat_only() -> int:
        return sum(count_chat(r["messages"], r["requested_model"], encoding=encoding_for(r["requested_model"]))
                   for r in records)

    requests = [InvocationRequested.from_record(r) for r in records]  # as the adapter hands them to the core

    def ours() -> int:
        return sum(core.count_request(r, encoding_for, 1_000_000).input_tokens for r in requests)

    best = {"raw": float("inf"), "count_chat": float("inf"), "count_request": float("inf")}
    tokens = raw()
    for _ in range(repeats):
        for name, fn in (("raw", raw), ("count_chat", chat_only), ("count_request", ours)):
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    per_s = {name: round(tokens / secs) for name, secs in best.items()}
    return {"requests": len(records), "tokens": tokens, "tokens_per_s": per_s,
            "us_per_request": {name: round(secs * 1e6 / len(records), 1) for name, secs in best.items()},
            "ratio_count_request_to_raw": round(best["raw"] / best["count_request"], 3),
            "ratio_count_chat_to_raw": round(best["raw"] / best["count_chat"], 3)}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "relay":
        relay(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: python -m ledgergate.tools.bench.floors relay '<json spec>'")
