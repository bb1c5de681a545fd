"""A broken invariant stops a stream service loudly and commits nothing of its batch: the runtime, on the
real broker, with a handler that emits an output for every message and fails an assertion on one. (A
separate process: the runtime takes over the stop signals of the process it runs in.)"""

from __future__ import annotations

import subprocess
import sys
import uuid

from confluent_kafka import Producer

from ledgergate import topics
from ledgergate.kafka_config import producer_config, transactional_producer_config
from ledgergate.shared.kafka.reader import read_to_end
from ledgergate.shared.settings import KafkaSettings

SERVICE = r"""
import sys
from ledgergate.connection import KafkaConnection
from ledgergate.shared.kafka.options import RuntimeOptions
from ledgergate.shared.kafka.runtime import StreamRuntime
from ledgergate.shared.logging import configure

bootstrap, group, source, sink, deadletter = sys.argv[1:6]


class Echo:
    def assigned(self, partitions): return None
    def revoked(self, partitions): pass
    def idle(self, now_ms, out): pass
    def handle(self, msg, out):
        out.emit(sink, msg.key(), msg.value())
        assert msg.value() != b"boom", "pending went negative"  # stands in for a ledger invariant


options = RuntimeOptions(service="invariants", instance_id="0", connection=KafkaConnection(bootstrap),
                         group_id=group,
                         topics=[source], deadletter_topic=deadletter, batch_linger_s=0.5)
StreamRuntime(options, Echo(), configure("invariants")).run(max_seconds=60)
"""


def test_an_assertion_in_a_handler_stops_the_process_and_commits_nothing(kafka: KafkaSettings) -> None:
    source, sink, deadletter = (kafka.topic(t) for t in (topics.REQUESTS, topics.COUNTED, topics.DEADLETTER))
    producer = Producer(producer_config(kafka.kafka_connection))
    for value in (b"one", b"two", b"boom", b"three"):
        producer.produce(source, key=b"tenant", value=value)
    assert producer.flush(10) == 0
    group = f"invariants-{uuid.uuid4().hex[:8]}"
    out = subprocess.run([sys.executable, "-c", SERVICE, kafka.kafka_bootstrap, group, source, sink, deadletter],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode != 0, out.stderr[-2000:]
    assert "invariant_broken" in out.stdout + out.stderr and "pending went negative" in out.stderr
    # The next instance's init_transactions aborts what the dead one left open; then nothing of that
    # batch is visible to a read_committed reader, not the outputs before the failure, not a dead letter.
    successor = Producer(transactional_producer_config(kafka.kafka_connection, f"{group}-0"))
    successor.init_transactions(30)
    partitions = list(range(6))
    assert [m.value() for m in read_to_end(kafka.kafka_connection, sink, partitions)] == []
    assert [m.value() for m in read_to_end(kafka.kafka_connection, deadletter, partitions)] == []
