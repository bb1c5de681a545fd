"""The load generator: one process per load step, `python -m ledgergate.tools.bench.loadgen '<json spec>'`.

Open loop: a sender thread publishes request i at start + i/rate whatever the gate does, and stamps
the scheduled time (`lg-t-sched`) and the actual send time (`lg-t-send`) as headers. The services
carry headers forward and add their own stamps, so each decision arrives with the whole timeline.
Latency is receipt minus the *scheduled* time: a sender that falls behind, or a gate that backs up,
shows as latency instead of quietly sending less (coordinated omission). Every allowed decision gets
a completion with provider stand-in usage, so settlements load the pipeline as they would in use.

A lean confluent-kafka producer/consumer pair with the SDK's settings (ledgergate.kafka_config plus the
GateClient consumer overrides); the SDK itself drops the headers that carry the per-hop times.
Prints `{"ready": true}` once the consumer is positioned, progress on stderr, and the result as the
last stdout line.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections import Counter
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.connection import KafkaConnection
from ledgergate.errors import TopicConfigError
from ledgergate.kafka_config import consumer_config, producer_config
from ledgergate.shared.kafka.headers import headers_of, stage_times_us
from ledgergate.tools.bench import stats
from ledgergate.tools.bench.workload import index_of, prompt_tokens, request_record, workload
from ledgergate.tools.provider_standin import standin_call

ALLOWED = ("ALLOW", "DOWNGRADE")
# Client send -> the four services' stamps -> client receive; `sched` -> `send` is the sender's own lag.
STAGES = ("sched", "send", "count", "policy", "budget", "route")
# As GateClient's consumer (client/ledgergate/client.py), on consumer_config's fetch wait.
CLIENT_CONSUMER = {"enable.auto.commit": False, "isolation.level": "read_committed",
                   "enable.partition.eof": False, "auto.offset.reset": "latest"}


def now_us() -> int:
    return time.time_ns() // 1000


def assign_at_end(consumer: Consumer, topic: str, timeout_s: float = 30.0) -> None:
    """Explicit end offsets, as the SDK does: every message written after this returns is read."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            if meta.error is None and meta.partitions:
                consumer.assign([TopicPartition(topic, p, consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=10)[1]) for p in sorted(meta.partitions)])
                return
        except KafkaException:
            pass  # a topic just created may have no leader yet
        if time.monotonic() > deadline:
            raise TopicConfigError(f"cannot position a consumer at the end of {topic}; does it exist?")
        time.sleep(0.1)


class LoadStep:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.tag: str = spec["tag"]
        self.rate = float(spec["rate"])
        self.offset = int(spec["start"])
        self.n = int(spec["count"])
        self.work = workload(spec["tenants"], self.tag, spec["requests"], spec["seed"], spec.get("shape", "fleet"))
        # A child process: the address from the spec, the security settings from the inherited environment.
        connection, prefix = KafkaConnection.from_env(bootstrap=spec["bootstrap"]), spec["prefix"]
        self.topic_requests, self.topic_completions = prefix + topics.REQUESTS, prefix + topics.COMPLETIONS
        self.producer = Producer(producer_config(connection))
        self.consumer = Consumer(consumer_config(connection, f"bench-loadgen-{self.tag}", **CLIENT_CONSUMER))
        assign_at_end(self.consumer, prefix + topics.DECISIONS)
        self.times = {stage: [0] * self.n for stage in STAGES}
        self.recv = [0] * self.n
        self.sent = 0
        self.sender_done = threading.Event()
        self.stop = threading.Event()
        self.outcomes: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.completions = self.duplicates = 0
        self.aborted = False
        self.rng = random.Random(spec["seed"] + self.offset)

    # --- sending -------------------------------------------------------------------------------

    def _send(self, start_us: int) -> None:
        interval_us = 1e6 / self.rate
        encode, produce, topic = codec().encode, self.producer.produce, self.topic_requests
        i = 0
        try:
            while i < self.n and not self.stop.is_set():
                now = now_us()
                due = min(self.n, int((now - start_us) / interval_us) + 1) if now >= start_us else 0
                while i < due:
                    j = self.offset + i
                    sched = start_us + int(i * interval_us)
                    rec = request_record(self.work, j, self.tag, now // 1000)
                    value = encode("InvocationRequested", rec)
                    sent_at = now_us()
                    headers = [("request_id", rec["request_id"].encode()), ("lg-t-sched", str(sched).encode()),
                               ("lg-t-send", str(sent_at).encode())]
                    while True:
                        try:
                            produce(topic, value=value, key=rec["tenant_id"].encode(), headers=headers)
                            break
                        except BufferError:  # local queue full: let librdkafka drain it
                            self.producer.poll(0.01)
                    self.times["sched"][i], self.times["send"][i] = sched, sent_at
                    i += 1
                    self.sent = i
                self.producer.poll(0)
                wait_us = start_us + int(i * interval_us) - now_us()
                if wait_us > 0:
                    time.sleep(min(wait_us, 5000) / 1e6)
        finally:
            self.sender_done.set()

    # --- receiving -----------------------------------------------------------------------------

    def _on_decision(self, msg: Message, received: int) -> None:
        if msg.error() is not None:
            return
        name, rec = codec().decode(msg.value())
        j = index_of(rec["request_id"], self.tag) if name == "GateDecision" else None
        i = -1 if j is None else j - self.offset
        if not 0 <= i < self.n:
            return  # a decision for another step or a probe
        if self.recv[i]:
            self.duplicates += 1
            return
        self.recv[i] = received
        for stage, t in stage_times_us(headers_of(msg)).items():
            if stage in self.times and stage not in ("sched", "send"):
                self.times[stage][i] = t
        outcome = rec["outcome"]
        self.outcomes[outcome] += 1
        if outcome not in ALLOWED:
            self.reasons[(rec["reason_codes"] or ["?"])[0]] += 1
        elif self.spec.get("complete", True):
            self._complete(rec, j)  # type: ignore[arg-type]

    def _complete(self, decision: dict[str, Any], j: int) -> None:
        agent = self.work.agents[self.work.schedule[j][0]]
        model = decision["deployment"]["model"] if decision["deployment"] else decision["requested_model"]
        result = standin_call(model, prompt_tokens(self.work, j), decision["granted_output_tokens"], self.rng,
                              cacheable_prefix_tokens=self.work.systems[agent.system][1])
        value = codec().encode("InvocationCompleted", {
            "request_id": decision["request_id"], "tenant_id": decision["tenant_id"], "model": model,
            "status": result.status, "usage": result.usage, "completion_text": result.completion_text,
            "completed_at_ms": time.time_ns() // 1_000_000, "trace_context": {}})
        self.producer.produce(self.topic_completions, value=value, key=decision["tenant_id"].encode())
        self.completions += 1

    def run(self) -> dict[str, Any]:
        print(json.dumps({"ready": True}), flush=True)
        start_us = now_us() + 100_000
        sender = threading.Thread(target=self._send, args=(start_us,), name="bench-sender", daemon=True)
        sender.start()
        decided, last_progress, drain_deadline = 0, time.monotonic(), None
        limit = max(self.spec.get("max_backlog_s", 1.0) * self.rate, 100)
        while True:
            msg = self.consumer.poll(0.02)
            if msg is not None:
                received = now_us()
                self._on_decision(msg, received)
                for more in self.consumer.consume(1000, 0):
                    self._on_decision(more, received)
                decided = self.outcomes.total()
            self.producer.poll(0)
            elapsed_s = (now_us() - start_us) / 1e6
            if not self.sender_done.is_set():
                if elapsed_s > 1.0 and self.sent - decided > limit:
                    self.aborted = True  # the queue holds more than max_backlog_s of traffic: not sustained
                    self.stop.set()
            else:
                # Drain while decisions keep coming: a backed-up gate is slow, not lossy; only a stall
                # of drain_timeout_s with nothing new ends the wait (and leaves requests missing).
                if drain_deadline is None or msg is not None:
                    drain_deadline = time.monotonic() + self.spec.get("drain_timeout_s", 15.0)
                if decided >= self.sent or time.monotonic() > drain_deadline:
                    break
            if time.monotonic() - last_progress >= 1.0:
                last_progress = time.monotonic()
                print(f"  [{self.spec['label']} {elapsed_s:5.1f}s] sent {self.sent} decided {decided}",
                      file=sys.stderr, flush=True)
        sender.join()
        self.producer.flush(30)
        self.consumer.close()
        return self.result()

    # --- figures -------------------------------------------------------------------------------

    def result(self) -> dict[str, Any]:
        sent = self.sent
        sched, recv = self.times["sched"][:sent], self.recv[:sent]
        done = [i for i in range(sent) if recv[i]]
        t0, t1 = (sched[0], sched[-1]) if sent else (0, 0)
        warm = min(1_000_000, (t1 - t0) // 5)
        in_window = sum(1 for i in done if t0 + warm <= recv[i] <= t1)
        window_s = max(1e-6, (t1 - t0 - warm) / 1e6)
        dps = in_window / window_s
        queue = stats.backlog(sched, [recv[i] for i in done], t0, t1)
        growing = len(queue) > 2 and queue[-1] - queue[1] > 0.1 * self.rate and queue[-1] > 0.25 * self.rate
        hops = {}
        for a, b in zip(("sched", "send", "count", "policy", "budget", "route"),
                        ("send", "count", "policy", "budget", "route", "recv"), strict=True):
            after = self.recv if b == "recv" else self.times[b]
            hops[f"{a}->{b}"] = stats.p50_p99_ms([after[i] - self.times[a][i] for i in done
                                                  if after[i] and self.times[a][i]])
        missing = sent - len(done)
        return {
            "label": self.spec["label"], "offered_per_s": self.rate, "planned": self.n, "sent": sent,
            "decided": len(done), "missing": missing, "duplicates": self.duplicates, "aborted": self.aborted,
            "window_s": round((t1 - t0) / 1e6, 2), "decisions_per_s": round(dps, 1), "backlog": queue,
            "backlog_growing": growing,
            "sustained": not self.aborted and missing == 0 and dps >= 0.95 * self.rate and not growing,
            "latency_ms": stats.summary_ms([recv[i] - sched[i] for i in done]),
            "hops_ms": hops, "outcomes": dict(self.outcomes), "not_allowed_reasons": dict(self.reasons),
            "completions_sent": self.completions, "loadgen_cpu_s": round(time.process_time(), 3),
        }


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    print(json.dumps(LoadStep(spec).run()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
