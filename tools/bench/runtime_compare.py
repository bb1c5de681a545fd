"""Cost per message of the two stream runtimes on this machine, against the real local broker.

A processor that does what a ledgergate service does: consume a keyed message, decode it with the
project codec, change it a little, encode it, produce it with the same key to an output topic.

  A   faust-streaming 0.15 agent (at_least_once, raw serializers), `python -m faust ... worker`
  B   confluent-kafka loop, consume(num_messages=500), one Kafka transaction per batch
      (send_offsets_to_transaction), ledgergate.kafka_config.transactional_producer_config as it stands
  B50 B with consume(num_messages=50): ten times the transactions, to separate the per-transaction
      cost from the per-message cost (a latency-bound service commits small batches)
  B50_100  B50 with librdkafka's default retry.backoff.ms=100 / retry.backoff.max.ms=1000 instead of
      the project's 1 / 100 (the coordinator's CONCURRENT_TRANSACTIONS retry; KAFKA-5477)
  B2  the loop without transactions (produce, then commit offsets asynchronously)

Each variant runs as its own subprocess against a pre-filled input topic (a backlog, so this measures
capacity, not latency). Measured per run: startup (process start -> first output message), steady
throughput (first output -> N outputs), the worker's CPU seconds from /proc/<pid>/stat over the
steady phase (so CPU per message), and the broker's CPU over the same window.

Progress is the sum of the output topic's high watermarks, except for the transactional variants:
transaction markers occupy offsets there, so their progress is the worker group's committed input
offsets, which Kafka commits atomically with the outputs. Every run's output is then read back
(read_committed) and checked: exactly N records, no duplicate request id, every record modified.

The machine is shared, so each run first waits for it to be nearly idle, measures the CPU every other
process used during the steady phase, and counts as disturbed above --disturbed-cores; a disturbed run
is repeated (--disturbed-retries) and the medians are taken over undisturbed runs. Broker CPU per
message is net of the broker's own CPU while nothing but this driver's polling runs (measured for
--baseline-s right before each run, since other clients of a shared broker change it).

  .venv/bin/python tools/bench/runtime_compare.py --messages 50000 [--repeats 1] [--variants A,B,B50,B50_100,B2]

The same file is the worker of each variant: `--role ck-worker` runs B/B2, and the faust worker loads
`runtime_compare:faust_app` (built from RTC_* environment variables) with bench/ on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ledgergate.connection import KafkaConnection

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PARTITIONS = 6
TENANTS = 200
BATCH = 500  # consume(num_messages=...) for B / B2
RESULTS = ROOT / "bench" / "results" / "runtime_compare.json"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# librdkafka retries a transactional request that meets CONCURRENT_TRANSACTIONS (the previous commit's
# markers are still being written) after retry.backoff.ms, 100 ms by default; the Java client uses 20 ms
# for exactly this case (KAFKA-5477), the project's transactional config 1 ms. B50_100 puts the default back.
LIBRDKAFKA_DEFAULT_BACKOFF = {"retry.backoff.ms": "100", "retry.backoff.max.ms": "1000"}
VARIANTS: dict[str, dict[str, Any]] = {
    "A": {"runtime": "faust-streaming agent (at_least_once)", "kind": "faust"},
    "B": {"runtime": "confluent-kafka, txn per batch<=500", "kind": "ck", "batch": BATCH, "txn": True},
    "B50": {"runtime": "confluent-kafka, txn per batch<=50", "kind": "ck", "batch": 50, "txn": True},
    "B50_100": {"runtime": "confluent-kafka, txn per batch<=50, backoff 100ms", "kind": "ck", "batch": 50,
                "txn": True, "overrides": LIBRDKAFKA_DEFAULT_BACKOFF},
    "B2": {"runtime": "confluent-kafka, no transactions", "kind": "ck", "batch": BATCH, "txn": False},
}


def _connection() -> KafkaConnection:
    from ledgergate.shared.settings import KafkaSettings

    return KafkaSettings().kafka_connection


def _modify(record: dict[str, Any]) -> None:
    """The 'small change' every variant makes (the verifier checks for it)."""
    record["estimated_output_tokens"] += 1
    record["counted_at_ms"] = int(time.time() * 1000)


# ---------------------------------------------------------------------------------------------------
# Variant A: the faust app. `python -m faust -A runtime_compare:faust_app worker` resolves the attribute
# through the module __getattr__ below, so importing this file elsewhere never imports faust.

_FAUST_APP = None


def _build_faust_app() -> Any:
    import faust

    from ledgergate.codec import codec

    env = os.environ
    app = faust.App(
        env["RTC_APP_ID"],
        broker=f"kafka://{env['RTC_BOOTSTRAP']}",
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        datadir=env["RTC_DATADIR"],
        web_enabled=False,
        topic_partitions=PARTITIONS,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger=0.001,  # the project's linger.ms=1
    )
    source = app.topic(env["RTC_IN"], partitions=PARTITIONS, key_type=bytes, value_type=bytes)
    sink = app.topic(env["RTC_OUT"], partitions=PARTITIONS, key_type=bytes, value_type=bytes)
    c = codec()

    @app.agent(source)
    async def process(stream: Any) -> None:
        async for key, value in stream.items():
            name, record = c.decode(value)
            _modify(record)
            await sink.send(key=key, value=c.encode(name, record))

    return app


def __getattr__(name: str) -> Any:
    global _FAUST_APP
    if name == "faust_app":
        if _FAUST_APP is None:
            _FAUST_APP = _build_faust_app()
        return _FAUST_APP
    raise AttributeError(name)


# ---------------------------------------------------------------------------------------------------
# Variants B and B2: the confluent-kafka loop.


def ck_worker(args: argparse.Namespace) -> int:
    from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

    from ledgergate.codec import codec
    from ledgergate.connection import KafkaConnection
    from ledgergate.kafka_config import consumer_config, producer_config, transactional_producer_config
    from ledgergate.shared.kafka.reader import offset_of, partition_of

    stopping = False

    def _stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    transactional = args.transactional
    # The address from the driver, the security settings from the environment inherited from it.
    connection = KafkaConnection.from_env(bootstrap=args.bootstrap)
    consumer = Consumer(consumer_config(connection, args.group, **{"isolation.level": "read_committed"}))
    if transactional:
        overrides = dict(kv.split("=", 1) for kv in args.producer_override)
        producer = Producer(transactional_producer_config(connection, args.txn_id, **overrides))
        producer.init_transactions(30)
    else:
        producer = Producer(producer_config(connection))
    consumer.subscribe([args.input])
    c = codec()
    decode, encode, produce, out = c.decode, c.encode, producer.produce, args.out_topic
    batches = messages = 0
    txn_wait_s = 0.0  # time blocked in send_offsets_to_transaction + commit_transaction
    while not stopping:
        msgs = consumer.consume(num_messages=args.batch, timeout=0.05)
        if not msgs:
            producer.poll(0)
            continue
        if transactional:
            producer.begin_transaction()
        offsets: dict[int, int] = {}
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    print(f"consume error: {err}", file=sys.stderr)
                continue
            name, record = decode(m.value())
            _modify(record)
            produce(out, encode(name, record), m.key())
            offsets[partition_of(m)] = offset_of(m) + 1
        if not offsets:
            if transactional:
                producer.abort_transaction()
            continue
        tps = [TopicPartition(args.input, p, o) for p, o in offsets.items()]
        if transactional:
            t0 = time.perf_counter()
            producer.send_offsets_to_transaction(tps, consumer.consumer_group_metadata())
            producer.commit_transaction()
            txn_wait_s += time.perf_counter() - t0
        else:
            producer.poll(0)
            consumer.commit(offsets=tps, asynchronous=True)
        batches += 1
        messages += len(msgs)
    producer.flush(10)
    consumer.close()
    stats = {"batches": batches, "messages": messages, "txn_wait_s": round(txn_wait_s, 3)}
    print(json.dumps({"worker_stats": stats}), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------
# The driver.


def _cpu_seconds(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # fields after "pid (comm)"; state is index 0 (field 3)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime (14) + stime (15)


def _system_busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine (all cores), from the first line of /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def _broker_pid() -> int | None:
    from ledgergate.shared.settings import StackSettings

    try:
        pid = int((StackSettings().data_dir / "kafka" / "kafka.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def _record(i: int, rnd: random.Random, now_ms: int) -> tuple[str, dict[str, Any]]:
    tenant = f"tenant-{rnd.randrange(TENANTS):03d}"
    tokens = rnd.randrange(50, 4000)
    return tenant, {
        "request_id": f"req-{i:09d}",
        "tenant_id": tenant,
        "workflow_id": f"wf-{rnd.randrange(20):02d}",
        "agent_id": f"agent-{rnd.randrange(50):02d}",
        "requested_model": rnd.choice(["gpt-4o", "gpt-4o-mini", "claude-sonnet"]),
        "max_output_tokens": 1024,
        "priority": rnd.choice(["LOW", "NORMAL", "HIGH"]),
        "region": rnd.choice([None, "eu-west-1", "us-east-1"]),
        "max_cost_micro_usd": rnd.choice([None, 50_000]),
        "labels": {"team": f"team-{rnd.randrange(10)}", "env": "bench"},
        "requested_at_ms": now_ms,
        "trace_context": {"traceparent": f"00-{uuid.UUID(int=rnd.getrandbits(128)).hex}-{rnd.getrandbits(64):016x}-01"},
        "input_tokens": tokens,
        "accounting_input_tokens": tokens,
        "encoding": "o200k_base",
        "estimated_output_tokens": 100 + i % 500,
        "request_sha256": f"{rnd.getrandbits(256):064x}",
        "invalid_reason": None,
        "counted_at_ms": now_ms,
    }


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from confluent_kafka import Consumer
        from confluent_kafka.admin import AdminClient

        from ledgergate.kafka_config import admin_config, consumer_config

        self.args = args
        self.n = args.messages
        self.connection = _connection()
        self.bootstrap = self.connection.bootstrap
        self.run_id = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.input = f"bench.rtc.{self.run_id}.in"
        self.admin = AdminClient(admin_config(self.connection))
        self.topics: list[str] = []
        self.groups: list[str] = []
        self.app_ids: list[str] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="rtc-"))
        self.broker_pid = _broker_pid()
        self.watch = Consumer(consumer_config(self.connection, f"rtc-watch-{self.run_id}"))

    # topics ----------------------------------------------------------------------------------------
    def create_topic(self, name: str) -> None:
        from confluent_kafka.admin import NewTopic

        for fut in self.admin.create_topics([NewTopic(name, PARTITIONS, 1)], operation_timeout=30).values():
            fut.result()
        self.topics.append(name)
        # Creation returns before every partition has a leader; wait until offsets can be listed.
        deadline = time.monotonic() + 30
        while True:
            try:
                # Asking for the topic's metadata refreshes the client's cached view of it.
                meta = self.watch.list_topics(name, timeout=5).topics[name]
                if meta.error is not None or len(meta.partitions) < PARTITIONS:
                    raise RuntimeError(f"{name} not ready: {meta.error}")
                self.high_watermarks(name, retry=False)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def prefill(self) -> float:
        from confluent_kafka import Producer

        from ledgergate.codec import codec
        from ledgergate.kafka_config import producer_config

        c = codec()
        producer = Producer(producer_config(self.connection))
        rnd = random.Random(42)
        now_ms = int(time.time() * 1000)
        t0 = time.monotonic()
        for i in range(self.n):
            key, record = _record(i, rnd, now_ms)
            while True:
                try:
                    producer.produce(self.input, c.encode("InvocationCounted", record), key.encode())
                    break
                except BufferError:
                    producer.poll(0.05)
            if i % 1000 == 0:
                producer.poll(0)
        if producer.flush(60) != 0:
            raise RuntimeError("pre-fill did not complete")
        return time.monotonic() - t0

    def wait_quiet(self) -> float:
        """Wait (up to --quiet-wait s) until the machine is nearly idle; returns the busy cores seen last."""
        deadline = time.monotonic() + self.args.quiet_wait
        while True:
            b0, t0 = _system_busy_seconds(), time.monotonic()
            time.sleep(1.0)
            busy = (_system_busy_seconds() - b0) / (time.monotonic() - t0)
            if busy <= self.args.quiet_cores or time.monotonic() > deadline:
                return round(busy, 2)

    def broker_baseline(self, seconds: float) -> float | None:
        """Broker CPU (cores) with nothing running but this driver's progress polling."""
        from confluent_kafka import Consumer, TopicPartition

        from ledgergate.kafka_config import consumer_config

        if self.broker_pid is None:
            return None
        probe = Consumer(consumer_config(self.connection, f"rtc-watch-{self.run_id}",
                                         **{"isolation.level": "read_uncommitted"}))
        tps = [TopicPartition(self.input, p) for p in range(PARTITIONS)]
        b0, t0 = _cpu_seconds(self.broker_pid), time.monotonic()
        while time.monotonic() - t0 < seconds:
            self.high_watermarks(self.input)
            probe.committed(tps, timeout=5)
            time.sleep(self.args.poll)
        b1, t1 = _cpu_seconds(self.broker_pid), time.monotonic()
        probe.close()
        if b0 is None or b1 is None:
            raise RuntimeError(f"broker process {self.broker_pid} exited while its baseline was measured")
        return (b1 - b0) / (t1 - t0)

    def high_watermarks(self, topic: str, retry: bool = True) -> int:
        from confluent_kafka import KafkaException, TopicPartition

        for attempt in range(20 if retry else 1):
            try:
                return sum(self.watch.get_watermark_offsets(TopicPartition(topic, p), timeout=5, cached=False)[1]
                           for p in range(PARTITIONS))
            except KafkaException:
                if attempt == (19 if retry else 0):
                    raise
                time.sleep(0.05)
        raise AssertionError("unreachable")

    # one run -------------------------------------------------------------------------------------
    def run(self, variant: str, rep: int, attempt: int = 1) -> dict[str, Any]:
        from confluent_kafka import Consumer, TopicPartition

        from ledgergate.kafka_config import consumer_config

        tag = f"{variant.lower()}-{rep}" + (f"-{attempt}" if attempt > 1 else "")
        out = f"bench.rtc.{self.run_id}.out.{tag}"
        group = f"rtc-{self.run_id}-{tag}"
        self.create_topic(out)
        self.groups.append(group)
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "bench")])}
        spec = VARIANTS[variant]
        if spec["kind"] == "faust":
            # faust configures its aiokafka clients itself; this comparison gives it only an address.
            if self.connection.security_protocol != "PLAINTEXT":
                raise SystemExit("variant A (faust) runs against a PLAINTEXT broker only; leave it out "
                                 f"(--variants) for {self.connection.describe()}")
            self.app_ids.append(group)
            datadir = self.tmp / f"faust-{tag}"
            env.update(RTC_APP_ID=group, RTC_BOOTSTRAP=self.bootstrap, RTC_IN=self.input, RTC_OUT=out,
                       RTC_DATADIR=str(datadir))
            cmd = [sys.executable, "-m", "faust", "-A", "runtime_compare:faust_app", "worker", "-l", "warn",
                   "--without-web"]
        else:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--role", "ck-worker", "--bootstrap",
                   self.bootstrap, "--input", self.input, "--out-topic", out, "--group", group,
                   "--txn-id", f"rtc-{self.run_id}-{tag}", "--batch", str(spec["batch"])]
            if spec["txn"]:
                cmd.append("--transactional")
            for key, value in spec.get("overrides", {}).items():
                cmd += ["--producer-override", f"{key}={value}"]
        transactional = spec.get("txn", False)
        # read_uncommitted: OffsetFetch without require_stable, so a pending transaction's offsets are not
        # waited for (librdkafka retries UNSTABLE_OFFSET_COMMIT for a read_committed client); the answer is
        # the last committed, i.e. stable, offsets either way.
        probe = (Consumer(consumer_config(self.connection, group, **{"isolation.level": "read_uncommitted"}))
                 if transactional else None)
        in_tps = [TopicPartition(self.input, p) for p in range(PARTITIONS)]

        def progress(hw: int) -> int:
            if probe is None:
                return hw
            return sum(max(tp.offset, 0) for tp in probe.committed(in_tps, timeout=5))

        quiet = self.wait_quiet()
        # Other clients of the shared broker change its idle load; take its baseline right before each run.
        baseline = self.broker_baseline(self.args.baseline_s)
        log_path = self.tmp / f"{tag}.log"
        log = log_path.open("w")  # closed in the finally below
        broker0 = _cpu_seconds(self.broker_pid)
        me0 = time.process_time()
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.tmp)
        t_first = t_done = None
        cpu_first = cpu_done = broker_first = broker_done = None
        done_first = 0
        hw = 0
        samples: list[tuple[float, int]] = []
        deadline = t0 + self.args.timeout
        max_poll_s = 0.0
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{variant} worker exited with {proc.returncode}; see {log_path}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{variant} did not finish within {self.args.timeout}s; see {log_path}")
                p0 = time.monotonic()
                hw = self.high_watermarks(out)
                done = progress(hw) if hw > 0 else 0
                # Timestamps and CPU snapshots are taken right after the readings they belong to.
                now = time.monotonic()
                max_poll_s = max(max_poll_s, now - p0)
                if t_first is None and hw > 0:
                    cpu_first, broker_first = _cpu_seconds(proc.pid), _cpu_seconds(self.broker_pid)
                    sys_first, me_first = _system_busy_seconds(), time.process_time()
                    t_first, done_first = now, done
                if t_first is not None:
                    samples.append((round(now - t0, 3), done))
                    if done >= self.n:
                        cpu_done, broker_done = _cpu_seconds(proc.pid), _cpu_seconds(self.broker_pid)
                        sys_done, me_done = _system_busy_seconds(), time.process_time()
                        t_done = now
                        break
                time.sleep(self.args.poll)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
            if probe is not None:
                probe.close()
        me1 = time.process_time()
        broker1 = _cpu_seconds(self.broker_pid)
        worker_stats = None
        log_text = log_path.read_text()
        for line in log_text.splitlines():
            if line.startswith('{"worker_stats"'):
                worker_stats = json.loads(line)["worker_stats"]
        steady_msgs = self.n - done_first
        steady_s = t_done - t_first
        if cpu_first is None or cpu_done is None:
            raise RuntimeError(f"{variant} worker exited while its CPU was read; see {log_path}")
        steady_cpu = cpu_done - cpu_first
        if steady_msgs < self.n // 2 or steady_s <= 0:
            # The first output was seen late (a slow poll on a busy machine): no steady phase to measure.
            print(f"  {variant} run {rep}.{attempt}: only {steady_msgs} messages after the first output was seen; "
                  "not measurable (raise --messages if this repeats)", flush=True)
            return {"variant": variant, "repeat": rep, "attempt": attempt, "invalid": True, "disturbed": True,
                    "steady_messages": steady_msgs, "verify": self.verify(out)}
        result: dict[str, Any] = {
            "variant": variant,
            "runtime": spec["runtime"],
            "repeat": rep,
            "attempt": attempt,
            "messages": self.n,
            "startup_s": round(t_first - t0, 3),
            "wall_s": round(t_done - t0, 3),
            "steady_messages": steady_msgs,
            "steady_s": round(steady_s, 3),
            "steady_msgs_per_s": round(steady_msgs / steady_s, 1),
            "overall_msgs_per_s": round(self.n / (t_done - t0), 1),
            "worker_cpu_total_s": round(cpu_done, 3),
            "worker_cpu_startup_s": round(cpu_first, 3),
            "worker_cpu_steady_s": round(steady_cpu, 3),
            "worker_cpu_us_per_msg": round(steady_cpu / steady_msgs * 1e6, 1),
            "worker_cores_busy": round(steady_cpu / steady_s, 2),
            "output_high_watermark": hw,
            "driver_cpu_s": round(me1 - me0, 3),
            "driver_max_poll_s": round(max_poll_s, 3),
            "machine_idle_cores_before": quiet,
        }
        # Everything else the machine did during the steady phase (other processes, other broker
        # clients show up in the broker's CPU instead): a run with much of it is disturbed.
        others = (sys_done - sys_first) - steady_cpu - (me_done - me_first)
        if broker_first is not None and broker_done is not None:
            others -= broker_done - broker_first
        result["other_cores_steady"] = round(others / steady_s, 2)
        # A progress poll that took long leaves the steady window's ends imprecise: also disturbed.
        result["disturbed"] = result["other_cores_steady"] > self.args.disturbed_cores or max_poll_s > 0.5
        if broker_first is not None and broker_done is not None:
            result["broker_cpu_steady_s"] = round(broker_done - broker_first, 3)
            result["broker_cpu_us_per_msg"] = round((broker_done - broker_first) / steady_msgs * 1e6, 1)
            if broker0 is None or broker1 is None:
                raise RuntimeError(f"broker process {self.broker_pid} exited during the {variant} run")
            result["broker_cpu_run_s"] = round(broker1 - broker0, 3)
            if baseline is not None:
                result["broker_baseline_cores"] = round(baseline, 3)
                net = broker_done - broker_first - baseline * steady_s
                result["broker_cpu_net_us_per_msg"] = round(net / steady_msgs * 1e6, 1)
        if worker_stats:
            result["worker_batches"] = worker_stats["batches"]
            result["avg_batch"] = round(worker_stats["messages"] / max(worker_stats["batches"], 1), 1)
            if transactional:
                per_txn = worker_stats["txn_wait_s"] / max(worker_stats["batches"], 1)
                result["txn_commit_ms_avg"] = round(per_txn * 1e3, 2)
        result["verify"] = self.verify(out)
        result["progress_samples"] = samples[:: max(1, len(samples) // 40)]
        if not result["verify"]["ok"]:
            result["worker_log_tail"] = log_text[-3000:]
        return result

    def verify(self, topic: str) -> dict[str, Any]:
        """Read the output back (read_committed): N records, unique request ids, each one modified."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

        from ledgergate.codec import codec
        from ledgergate.kafka_config import consumer_config
        from ledgergate.shared.kafka.reader import partition_of

        c = codec()
        consumer = Consumer(consumer_config(self.connection, f"rtc-verify-{uuid.uuid4().hex}",
                                            **{"enable.partition.eof": True, "isolation.level": "read_committed"}))
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        eof: set[int] = set()
        seen: set[str] = set()
        count = dupes = unmodified = bad_keys = 0
        deadline = time.monotonic() + 120
        while len(eof) < PARTITIONS and time.monotonic() < deadline:
            for m in consumer.consume(num_messages=1000, timeout=0.5):
                err = m.error()
                if err:
                    if err.code() == KafkaError._PARTITION_EOF:
                        eof.add(partition_of(m))
                    continue
                count += 1
                _, record = c.decode(m.value())
                rid = record["request_id"]
                if rid in seen:
                    dupes += 1
                seen.add(rid)
                if record["estimated_output_tokens"] != 100 + int(rid[4:]) % 500 + 1:
                    unmodified += 1
                if m.key() != record["tenant_id"].encode():
                    bad_keys += 1
        consumer.close()
        return {"records": count, "duplicates": dupes, "unmodified": unmodified, "bad_keys": bad_keys,
                "ok": count == self.n and dupes == 0 and unmodified == 0 and bad_keys == 0
                and len(eof) == PARTITIONS}

    # cleanup ---------------------------------------------------------------------------------------
    def cleanup(self) -> None:
        import shutil

        try:
            existing = set(self.admin.list_topics(timeout=10).topics)
        except Exception:
            existing = set(self.topics)
        # faust declares <app id>-__assignor-__leader (and would declare changelogs) itself.
        doomed = [t for t in existing if t in self.topics or any(t.startswith(a + "-") for a in self.app_ids)]
        if doomed:
            for topic, fut in self.admin.delete_topics(doomed, operation_timeout=30).items():
                try:
                    fut.result()
                except Exception as exc:
                    print(f"could not delete topic {topic}: {exc}", file=sys.stderr)
        groups = [*self.groups, f"rtc-watch-{self.run_id}"]
        # A group that never committed does not exist; failing to delete one is not an error here.
        with contextlib.suppress(Exception):
            for fut in self.admin.delete_consumer_groups(groups, request_timeout=10).values():
                with contextlib.suppress(Exception):
                    fut.result()
        self.watch.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        print(f"deleted {len(doomed)} topics: {', '.join(sorted(doomed))}")


def _machine() -> dict[str, Any]:
    import platform

    import aiokafka
    import confluent_kafka
    import faust

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "faust_streaming": faust.__version__,
        "confluent_kafka": confluent_kafka.__version__,
        "aiokafka": aiokafka.__version__,
        "librdkafka": confluent_kafka.libversion()[0],
        "load_avg_at_start": os.getloadavg(),
    }


def _configs_shown() -> dict[str, Any]:
    from ledgergate.connection import KafkaConnection
    from ledgergate.kafka_config import (
        CONNECTION_KEY_PREFIXES,
        consumer_config,
        producer_config,
        transactional_producer_config,
    )

    def strip(config: dict[str, Any]) -> dict[str, Any]:
        # The tuning only: never the connection's keys (an address, and credentials on a secured cluster).
        return {k: v for k, v in config.items()
                if not k.startswith(CONNECTION_KEY_PREFIXES) and k not in ("transactional.id", "group.id")}

    shown = KafkaConnection("-")
    return {"consumer": strip(consumer_config(shown, "-")), "producer": strip(producer_config(shown)),
            "transactional_producer": strip(transactional_producer_config(shown, "-"))}


def _summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    keys = ["startup_s", "steady_msgs_per_s", "worker_cpu_us_per_msg", "broker_cpu_us_per_msg",
            "broker_cpu_net_us_per_msg", "broker_baseline_cores",
            "worker_cores_busy", "worker_cpu_startup_s", "wall_s", "avg_batch", "txn_commit_ms_avg",
            "other_cores_steady"]
    out: dict[str, dict[str, float]] = {}
    for variant in VARIANTS:
        every = [r for r in runs if r["variant"] == variant and not r.get("invalid")]
        # Medians over undisturbed runs; over all runs only when no run of the variant was undisturbed.
        mine = [r for r in every if not r["disturbed"]] or every
        if mine:
            out[variant] = {k: round(statistics.median(r[k] for r in mine), 2)
                            for k in keys if all(k in r for r in mine)}
            out[variant]["runs_in_median"] = len(mine)
            out[variant]["runs_undisturbed"] = sum(not r["disturbed"] for r in every)
            out[variant]["runs_total"] = len(every)
    return out


def _derived(summary: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Split B's and B50's worker+broker CPU per message into a per-message and a per-transaction part:
    cost(batch) = per_msg + per_txn / batch, solved from the two batch sizes."""
    b, b50 = summary.get("B"), summary.get("B50")
    if not b or not b50 or "broker_cpu_net_us_per_msg" not in b or "avg_batch" not in b:
        return {}
    cost = {k: v["worker_cpu_us_per_msg"] + v["broker_cpu_net_us_per_msg"] for k, v in (("B", b), ("B50", b50))}
    inv = 1 / b50["avg_batch"] - 1 / b["avg_batch"]
    per_txn = (cost["B50"] - cost["B"]) / inv
    return {"txn_cpu_us_per_transaction": round(per_txn, 0),
            "txn_cpu_us_per_message_excl_txn": round(cost["B"] - per_txn / b["avg_batch"], 1),
            "note": "worker+broker CPU, fitted from B and B50 medians: cost(batch) = per_msg + per_txn / batch"}


def _table(summary: dict[str, dict[str, float]]) -> str:
    nan = float("nan")
    head = (f"{'variant':<56} {'startup':>8} {'steady':>8} {'worker':>7} {'broker':>7} {'sum':>7} "
            f"{'worker':>7} {'txn':>6} {'others':>7} {'runs':>5}")
    sub = (f"{'':<56} {'s':>8} {'msg/s':>8} {'us/msg':>7} {'us/msg':>7} {'us/msg':>7} {'cores':>7} {'ms':>6} "
           f"{'cores':>7} {'used':>5}")
    lines = [head, sub, "-" * len(head)]
    for variant, s in summary.items():
        broker = s.get("broker_cpu_net_us_per_msg", s.get("broker_cpu_us_per_msg", nan))
        lines.append(f"{variant + '  ' + VARIANTS[variant]['runtime']:<56} {s['startup_s']:>8.2f} "
                     f"{s['steady_msgs_per_s']:>8,.0f} {s['worker_cpu_us_per_msg']:>7.1f} {broker:>7.1f} "
                     f"{s['worker_cpu_us_per_msg'] + broker:>7.1f} {s['worker_cores_busy']:>7.2f} "
                     f"{s.get('txn_commit_ms_avg', nan):>6.1f} {s.get('other_cores_steady', nan):>7.2f} "
                     f"{s['runs_in_median']:>2.0f}/{s['runs_total']:<2.0f}")
    lines.append("broker us/msg is net of the broker's CPU while only the driver polls (measured before each run); "
                 "txn ms = send_offsets_to_transaction + commit_transaction per batch;\n"
                 "others = CPU used by other processes on the machine meanwhile; medians over undisturbed runs "
                 "(runs used/total)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=50_000)
    p.add_argument("--repeats", type=int, default=1, help="runs per variant, interleaved; medians reported")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--timeout", type=float, default=300, help="seconds per run before it counts as failed")
    p.add_argument("--poll", type=float, default=0.05, help="progress poll interval, seconds")
    p.add_argument("--quiet-cores", type=float, default=0.3,
                   help="before each run wait until the machine is busy on at most this many cores ...")
    p.add_argument("--quiet-wait", type=float, default=120, help="... but no longer than this, seconds")
    p.add_argument("--baseline-s", type=float, default=3.0,
                   help="seconds of broker baseline (driver polling only) measured before each run")
    p.add_argument("--disturbed-cores", type=float, default=0.25,
                   help="a run during which other processes used more CPU than this is 'disturbed' ...")
    p.add_argument("--disturbed-retries", type=int, default=2,
                   help="... and is repeated up to this many times; medians use undisturbed runs only")
    p.add_argument("--output", type=Path, default=RESULTS)
    # worker role (internal)
    p.add_argument("--role", choices=["driver", "ck-worker"], default="driver", help=argparse.SUPPRESS)
    p.add_argument("--bootstrap", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--out-topic", help=argparse.SUPPRESS)
    p.add_argument("--group", help=argparse.SUPPRESS)
    p.add_argument("--txn-id", help=argparse.SUPPRESS)
    p.add_argument("--transactional", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--producer-override", action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=BATCH, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role == "ck-worker":
        return ck_worker(args)

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; choose from {sorted(VARIANTS)}")
    bench = Bench(args)
    runs: list[dict[str, Any]] = []
    t_start = time.monotonic()
    try:
        bench.create_topic(bench.input)
        prefill_s = bench.prefill()
        print(f"pre-filled {bench.input} with {args.messages:,} InvocationCounted records in {prefill_s:.1f}s "
              f"(high watermark {bench.high_watermarks(bench.input):,})", flush=True)
        for rep in range(1, args.repeats + 1):
            # Rotate the order each repeat, so no variant always runs first on a cold broker.
            shift = (rep - 1) % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                for attempt in range(1, args.disturbed_retries + 2):
                    r = bench.run(variant, rep, attempt)
                    runs.append(r)
                    v = r["verify"]
                    if r.get("invalid"):
                        continue
                    print(f"  {variant} run {rep}.{attempt}: startup {r['startup_s']:.2f}s, "
                          f"steady {r['steady_msgs_per_s']:,.0f} msg/s, "
                          f"worker {r['worker_cpu_us_per_msg']:.1f} us/msg, "
                          f"broker {r.get('broker_cpu_net_us_per_msg', 0):.1f} us/msg "
                          f"(baseline {r.get('broker_baseline_cores', 0):.2f} cores), "
                          f"others {r['other_cores_steady']:.2f} cores{' (disturbed)' if r['disturbed'] else ''}, "
                          f"verify {'ok' if v['ok'] else 'FAILED ' + json.dumps(v)}", flush=True)
                    if not r["disturbed"]:
                        break
    finally:
        bench.cleanup()
    summary = _summary(runs)
    print()
    print(_table(summary))
    doc = {
        "command": "python tools/bench/runtime_compare.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "run_id": bench.run_id,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "total_s": round(time.monotonic() - t_start, 1),
        "machine": _machine(),
        "partitions": PARTITIONS,
        "tenants": TENANTS,
        "client_configs": _configs_shown(),
        "variants": VARIANTS,
        "summary_median": summary,
        "derived": _derived(summary),
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")
    return 0 if all(r["verify"]["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
