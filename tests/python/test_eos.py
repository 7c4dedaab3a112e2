"""Exactly once through crashes: a consume-transform-produce pipeline
(confluent-kafka, eos_pipeline.py) copies 100,000 records while it is killed
with SIGKILL at random points, in and between transactions; the restarted
instance fences the dead one, and a read_committed reader of the output finds
every input record exactly once.
"""

import collections
import os
import pathlib
import random
import signal
import subprocess
import sys
import threading
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

RECORDS = 100_000
PARTITIONS = 3
KILLS = 5
PIPELINE = pathlib.Path(__file__).with_name("eos_pipeline.py")
DEADLINE_S = 180


class Pipeline:
    """One pipeline process; its stdout lines are read on a thread."""

    def __init__(self, bootstrap):
        args = [sys.executable, str(PIPELINE), bootstrap, "eos-in", "eos-out", "eos-group", "eos-pipeline", str(PARTITIONS)]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = collections.deque()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.strip())

    def committed_transactions(self):
        return sum(1 for line in list(self.lines) if line.startswith("committed"))

    def wait_for(self, condition, what):
        deadline = time.monotonic() + DEADLINE_S
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"the pipeline exited ({self.process.returncode}) before {what}: {self.process.stderr.read()}")
            assert time.monotonic() < deadline, f"the pipeline did not reach {what}"
            time.sleep(0.01)

    def kill(self):
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(30)


def committed_offsets(bootstrap):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "eos-group", "enable.auto.commit": False})
    try:
        got = consumer.committed([TopicPartition("eos-in", p) for p in range(PARTITIONS)], 30)
        return sum(max(tp.offset, 0) for tp in got)
    finally:
        consumer.close()


def read_output(bootstrap):
    """Every committed output record, to the end of each partition."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "eos-reader", "enable.auto.commit": False, "enable.partition.eof": True, "isolation.level": "read_committed"})
    try:
        consumer.assign([TopicPartition("eos-out", p, 0) for p in range(PARTITIONS)])
        values, ended = [], set()
        deadline = time.monotonic() + DEADLINE_S
        while len(ended) < PARTITIONS:
            assert time.monotonic() < deadline, f"output not read to its end ({len(values)} records)"
            for m in consumer.consume(1000, 0.2):
                if m.error():
                    assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                    ended.add(m.partition())
                else:
                    values.append(m.value().decode())
        return values
    finally:
        consumer.close()


def test_exactly_once_pipeline_survives_random_kills(broker_factory):
    broker = broker_factory()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for future in admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in ("eos-in", "eos-out")]).values():
        future.result(30)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True, "linger.ms": 20})
    for i in range(RECORDS):
        while True:
            try:
                producer.produce("eos-in", key=str(i % 997).encode(), value=f"rec-{i}".encode())
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0

    seed = int(os.environ.get("STROM_EOS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    pipelines = []
    try:
        # Kill after a random number of committed transactions plus a random
        # delay of up to 50 ms: the kill lands inside or between transactions.
        for _ in range(KILLS):
            pipeline = Pipeline(broker.bootstrap)
            pipelines.append(pipeline)
            target = rng.randint(1, 12)
            pipeline.wait_for(lambda: pipeline.committed_transactions() >= target, f"{target} transactions (seed {seed})")
            time.sleep(rng.uniform(0, 0.05))
            pipeline.kill()
        last = Pipeline(broker.bootstrap)
        pipelines.append(last)
        last.wait_for(lambda: committed_offsets(broker.bootstrap) >= RECORDS, f"all {RECORDS} input offsets committed (seed {seed})")
    finally:
        for p in pipelines:
            p.kill()

    values = read_output(broker.bootstrap)
    counts = collections.Counter(values)
    duplicates = [v for v, n in counts.items() if n > 1]
    assert not duplicates, f"{len(duplicates)} records written twice, e.g. {duplicates[:3]} (seed {seed})"
    assert set(counts) == {f"out-rec-{i}" for i in range(RECORDS)}, f"{RECORDS - len(counts)} records missing (seed {seed})"
    broker.stop()
