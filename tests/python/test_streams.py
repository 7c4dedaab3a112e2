"""strom-streams' word_count example (crates/strom-streams/examples/word_count.rs)
against the broker, judged by confluent-kafka: the last count of every word in
the output topic equals a Python Counter over the 10,000 input lines; the
internal topics exist with Kafka Streams' names, partition counts and configs;
after a SIGKILL with everything committed, the restarted application restores
its counts from the changelog and goes on to exact counts; after a SIGKILL
mid-run, at least once, counts may come out too high (records processed
again, as in Kafka Streams) but never too low.

The example binary is found through STROM_WORD_COUNT_BIN (the test command
builds it), else in target/debug/examples.
"""

import collections
import os
import pathlib
import random
import signal
import struct
import subprocess
import tempfile
import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from conftest import REPLICATION_FACTOR, REPO, wait_until

LINES = 10_000
PARTITIONS = 3
DEADLINE_S = 120
STOP_TIMEOUT_S = 30
# Words from a small vocabulary, so that counts grow large; some upper case,
# which the application lowers.
VOCABULARY = [f"w{i}" for i in range(300)] + ["Kafka", "STROM", "streams"]


def word_count_binary():
    binary = pathlib.Path(os.environ.get("STROM_WORD_COUNT_BIN") or REPO / "target" / "debug" / "examples" / "word_count")
    if not binary.is_file():
        pytest.fail(f"no word_count example at {binary}: run `cargo build -p strom-streams --example word_count`")
    return binary


def make_lines(seed, n):
    rng = random.Random(seed)
    return [" ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(1, 8))) for _ in range(n)]


def expected_counts(lines):
    return collections.Counter(word.lower() for line in lines for word in line.split())


class App:
    """One word_count process, its stderr in a file; stopped by its pid."""

    def __init__(self, bootstrap, input_topic, output_topic, app_id, log_path):
        self.log_path = log_path
        # A killed member's partitions move on after the group's smallest
        # session timeout rather than Kafka's default 45 s.
        args = [str(word_count_binary()), "--bootstrap", bootstrap, "--input", input_topic, "--output", output_topic,
                "--application-id", app_id, "--set", "commit.interval.ms=500",
                "--set", "consumer.session.timeout.ms=6000", "--set", "consumer.heartbeat.interval.ms=1000"]
        with open(log_path, "ab") as log:
            env = {**os.environ, "NO_COLOR": "1", "RUST_LOG": "info"}
            self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=env)

    def log(self):
        return pathlib.Path(self.log_path).read_text(errors="replace")

    def assert_running(self):
        code = self.process.poll()
        assert code is None, f"word_count exited with {code}:\n{self.log()[-4000:]}"

    def stop(self):
        """SIGTERM: the application commits and exits 0."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(STOP_TIMEOUT_S)
        assert code == 0, f"word_count exited with {code} on SIGTERM:\n{self.log()[-4000:]}"

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(STOP_TIMEOUT_S)


@pytest.fixture
def app_factory():
    apps = []
    workdir = tempfile.mkdtemp(prefix="strom-streams-py-")

    def start(*args):
        app = App(*args, log_path=os.path.join(workdir, f"app-{len(apps)}.log"))
        apps.append(app)
        return app

    try:
        yield start
    finally:
        for app in apps:
            app.kill()
        for path in pathlib.Path(workdir).iterdir():
            path.unlink()
        os.rmdir(workdir)


def create_topics(bootstrap, *names):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, PARTITIONS, REPLICATION_FACTOR) for n in names], operation_timeout=30)
    for future in futures.values():
        future.result(30)


def produce_lines(bootstrap, topic, lines, start=0):
    """Keyed by line number, so that lines spread over the partitions; every delivery checked."""
    errors = []

    def report(err, _msg):
        if err is not None:
            errors.append(err)

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    for i, line in enumerate(lines, start):
        while True:
            try:
                producer.produce(topic, key=str(i).encode(), value=line.encode(), on_delivery=report)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0, "lines left undelivered"
    assert not errors, errors[:3]


class OutputReader:
    """Reads the output topic from the start with confluent-kafka: the last count per word
    (keys strings, values Java longs: 8 bytes big-endian) and the updates of each word."""

    def __init__(self, bootstrap, topic):
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"judge-{topic}",
                                  "enable.auto.commit": False, "enable.partition.eof": False})
        self.consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        self.latest = {}
        self.updates = collections.defaultdict(list)
        self.records = 0

    def read_until(self, expected, app):
        deadline = time.monotonic() + DEADLINE_S
        while self.latest != expected:
            assert time.monotonic() < deadline, f"{self.diff(expected)}\nword_count's log:\n{app.log()[-6000:]}"
            app.assert_running()
            self._read(0.2)

    def poll_some(self, app):
        """Reads what is there now; returns how many records came."""
        app.assert_running()
        before = self.records
        self._read(0.2)
        return self.records - before

    def _read(self, timeout_s):
        for msg in self.consumer.consume(1000, timeout_s):
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                continue
            assert len(msg.value()) == 8, f"value {msg.value()!r} is not a Java long"
            word = msg.key().decode()
            count = struct.unpack(">q", msg.value())[0]
            self.latest[word] = count
            self.updates[word].append(count)
            self.records += 1

    def read_until_at_least(self, expected, app):
        """Reads until every word's count is at least the expected one."""
        deadline = time.monotonic() + DEADLINE_S
        while any(self.latest.get(w, 0) < n for w, n in expected.items()):
            assert time.monotonic() < deadline, f"{self.diff(expected)}\nword_count's log:\n{app.log()[-6000:]}"
            app.assert_running()
            self._read(0.2)
        assert set(self.latest) == set(expected), self.diff(expected)

    def diff(self, expected):
        wrong = {w: (self.latest.get(w), n) for w, n in expected.items() if self.latest.get(w) != n}
        extra = set(self.latest) - set(expected)
        return f"{len(wrong)} words with (read, expected) counts, e.g. {list(wrong.items())[:5]}; extra words {sorted(extra)[:5]}"

    def close(self):
        self.consumer.close()


def test_word_count_matches_a_python_counter_and_creates_kafka_streams_internal_topics(broker, app_factory):
    bootstrap = broker.bootstrap
    create_topics(bootstrap, "wc-lines", "wc-counts")
    lines = make_lines(1, LINES)
    produce_lines(bootstrap, "wc-lines", lines)
    expected = expected_counts(lines)

    app = app_factory(bootstrap, "wc-lines", "wc-counts", "wc")
    reader = OutputReader(bootstrap, "wc-counts")
    try:
        reader.read_until(expected, app)
        # No fault, so no record was processed twice: one update per word
        # occurrence, each word's counts 1, 2, 3, ... in order.
        assert reader.records == sum(expected.values())
        for word, updates in reader.updates.items():
            assert updates == list(range(1, expected[word] + 1)), word
    finally:
        reader.close()

    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = admin.list_topics(timeout=30).topics
    internal = {"wc-counts-repartition": {"cleanup.policy": "delete", "retention.ms": "-1", "segment.bytes": "52428800"},
                "wc-counts-changelog": {"cleanup.policy": "compact"}}
    for name, configs in internal.items():
        assert name in topics, sorted(topics)
        assert len(topics[name].partitions) == PARTITIONS, name
        assert all(len(p.replicas) == REPLICATION_FACTOR for p in topics[name].partitions.values()), name
        described = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, name)])
        entries = next(iter(described.values())).result(30)
        for key, value in configs.items():
            assert entries[key].value == value, (name, key, entries[key].value)
    app.stop()


def committed_everything(bootstrap, group, topics):
    """Whether `group` committed the end offset of every partition of `topics`."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
        committed = consumer.committed(partitions, timeout=10)
        for tp in committed:
            _, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
            if tp.offset != high and not (high == 0 and tp.offset < 0):
                return False
        return True
    finally:
        consumer.close()


def test_word_count_restores_its_counts_after_a_sigkill(broker, app_factory):
    bootstrap = broker.bootstrap
    create_topics(bootstrap, "wck-lines", "wck-counts")
    batches = [make_lines(seed, LINES // 5) for seed in (2, 3, 4)]
    produce_lines(bootstrap, "wck-lines", batches[0])

    app = app_factory(bootstrap, "wck-lines", "wck-counts", "wck")
    reader = OutputReader(bootstrap, "wck-counts")
    try:
        reader.read_until(expected_counts(batches[0]), app)
        # Killed once all it did is committed, its counts in memory only:
        # they live on in the changelog, and the restarted application goes
        # on from them, to exactly the right counts.
        assert wait_until(lambda: committed_everything(bootstrap, "wck", ["wck-lines", "wck-counts-repartition"]),
                          timeout_s=60), "the group never committed the ends of its input and repartition topics"
        app.kill()
        produce_lines(bootstrap, "wck-lines", batches[1], start=LINES // 5)
        app = app_factory(bootstrap, "wck-lines", "wck-counts", "wck")
        reader.read_until(expected_counts(batches[0] + batches[1]), app)
        assert "restored store from its changelog" in app.log(), app.log()[-4000:]

        # Killed mid-run: at least once, records processed but not committed
        # are processed again after the restart, so a count may come out too
        # high (as in Kafka Streams; exactly-once is issue 21), never too low.
        produce_lines(bootstrap, "wck-lines", batches[2], start=2 * LINES // 5)
        assert wait_until(lambda: reader.poll_some(app) > 0, timeout_s=60), "no output for the third batch"
        app.kill()
        mid_run = reader.latest != expected_counts(batches[0] + batches[1] + batches[2])
        app = app_factory(bootstrap, "wck-lines", "wck-counts", "wck")
        expected = expected_counts(batches[0] + batches[1] + batches[2])
        reader.read_until_at_least(expected, app)
        over = sum(reader.latest[w] - n for w, n in expected.items())
        print(f"{'mid-run' if mid_run else 'caught-up'} kill: {reader.records} updates read, "
              f"final counts {over} above the exact ones in total")
    finally:
        reader.close()
    app.stop()
