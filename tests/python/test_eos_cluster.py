"""Exactly once through broker failover: the confluent-kafka consume-transform-produce
pipeline of test_eos.py (eos_pipeline.py, its own process) runs on a three-node cluster
(topics with three replicas and min.insync.replicas=2) while, in turn, the leader of the
`__transaction_state` partition that coordinates its transactional id (FindCoordinator,
checked against Kafka's hash of the id), the leader of an output partition (the pipeline
is killed with it, so its open transaction must be aborted while that partition has no
leader) and the leader of an input partition are killed with SIGKILL.

An idempotent producer writes the 20,000 input records in slices, one before the
pipeline starts and one per round, each at once: the pipeline works through a backlog
of transactions, and each kill comes just after the first of them, while the next one
is open. After each kill the pipeline must commit three more transactions, and then
every output partition's last stable offset (ListOffsets, read_committed) must reach
the high watermark read at that moment: nothing left open at the kill hangs. Then the
node is restarted and waited for until it is back in the ISR of every partition of the
pipeline's topics and of `__transaction_state` and `__consumer_offsets`. The pipeline
may die with a broker (a timed-out commit, an abortable error it does not handle): it
is started again, and the new instance fences the old one and aborts its open
transaction.

At the end the group's committed offsets reach the input's end; within
transaction.timeout.ms the coordinator describes the transaction as closed
(DescribeTransactions) and the last stable offset of every output partition reaches its
high watermark (no hanging transaction); and a read_committed reader reaches the high
watermarks and finds each output partition to be exactly its input partition
transformed, in order: every record once, nothing from an aborted transaction, nothing
missing.
"""

import collections
import pathlib
import subprocess
import sys
import threading
import time

from confluent_kafka import Consumer, IsolationLevel, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec
from kafka.admin import KafkaAdminClient

PIPELINE = pathlib.Path(__file__).with_name("eos_pipeline.py")
IN, OUT, GROUP, TRANSACTIONAL_ID = "eosc-in", "eosc-out", "eosc-group", "eosc-pipeline"
PARTITIONS = 3
# Whose leader is killed in each round, and whether the pipeline is killed with it (its
# open transaction must then be aborted, with the partition's leader dead).
ROUNDS = (("transaction coordinator", False), ("output partition leader", True), ("input partition leader", False))
# After the commit of a transaction, the next one is open and writing its records.
KILL_DELAY_S = 0.015
# The input: a first slice before the pipeline starts, then one slice per round.
SLICE = 5_000
RECORDS = SLICE * (len(ROUNDS) + 1)
# eos_pipeline.py keeps librdkafka's default transaction.timeout.ms (60 s): an open
# transaction the coordinator has not aborted by then (plus its cleanup interval and
# some slack) is a hanging one.
TRANSACTION_TIMEOUT_S = 60
HANGING_DEADLINE_S = TRANSACTION_TIMEOUT_S + 20
ROUND_DEADLINE_S = 60
MAX_PIPELINE_STARTS = 20
INTERNAL = ("__transaction_state", "__consumer_offsets")
CLOSED = ("CompleteCommit", "CompleteAbort", "Empty")


def java_hash(s):
    """Java's String.hashCode (UTF-16 code units), as a signed 32-bit int."""
    h = 0
    data = s.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + int.from_bytes(data[i:i + 2], "big")) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def coordinator_partition(transactional_id, partitions):
    """Kafka's `Utils.abs(transactionalId.hashCode()) % transaction.state.log.num.partitions`
    (Utils.abs maps Integer.MIN_VALUE to 0)."""
    h = java_hash(transactional_id)
    return (0 if h == -(1 << 31) else abs(h)) % partitions


class Feeder:
    """An idempotent acks=all producer of the input on a thread, never past `allow(n)`
    records; record i is `rec-i` in partition i % PARTITIONS."""

    def __init__(self, bootstrap):
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5})
        self.allowed = 0
        self.sent = 0
        self.errors = []
        self.done = threading.Event()
        self.stop = threading.Event()
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def allow(self, n):
        with self.cond:
            self.allowed = n
            self.cond.notify_all()

    def _delivered(self, err, msg):
        if err is not None:
            self.errors.append(f"{msg.value()!r}: {err}")

    def _run(self):
        try:
            while self.sent < RECORDS and not self.stop.is_set():
                with self.cond:
                    while self.sent >= self.allowed and not self.stop.is_set():
                        self.producer.poll(0)
                        self.cond.wait(0.05)
                    upto = self.allowed
                for i in range(self.sent, upto):
                    while True:
                        try:
                            self.producer.produce(IN, key=str(i % 997).encode(), value=f"rec-{i}".encode(),
                                                  partition=i % PARTITIONS, on_delivery=self._delivered)
                            break
                        except BufferError:
                            self.producer.poll(0.05)
                self.sent = upto
                self.producer.poll(0)
            left = self.producer.flush(120)
            if left:
                self.errors.append(f"{left} records still undelivered after 120 s")
        except Exception as e:  # reported by the test, which joins the thread
            self.errors.append(repr(e))
        finally:
            self.done.set()


class Pipelines:
    """eos_pipeline.py, started again whenever it exits; its stdout lines (with the time
    each was read) collected on a thread, its stderr (librdkafka's complaints about dead
    brokers) written to a file."""

    def __init__(self, bootstrap, workdir):
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.instances = []
        self.exits = []
        self.lines = collections.deque()
        self.start()

    def start(self):
        assert len(self.instances) < MAX_PIPELINE_STARTS, f"the pipeline was started {len(self.instances)} times: {self.exits}"
        args = [sys.executable, str(PIPELINE), self.bootstrap, IN, OUT, GROUP, TRANSACTIONAL_ID, str(PARTITIONS)]
        stderr_path = self.workdir / f"pipeline-{len(self.instances)}.stderr.log"
        with open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, text=True)
        self.instances.append((process, stderr_path))
        threading.Thread(target=self._read, args=(process,), daemon=True).start()

    def _read(self, process):
        for line in process.stdout:
            self.lines.append((time.monotonic(), line.strip()))

    def check(self):
        """Starts the pipeline again if it exited (a restart fences the dead instance)."""
        process, stderr_path = self.instances[-1]
        if process.poll() is not None:
            tail = stderr_path.read_text(errors="replace").strip().splitlines()[-3:]
            self.exits.append((process.returncode, tail))
            self.start()

    def kill_and_restart(self):
        """SIGKILL of the running instance (in or between transactions), and its successor."""
        process, _ = self.instances[-1]
        process.kill()
        process.wait(30)
        self.exits.append((process.returncode, ["killed by the test"]))
        self.start()

    def committed_transactions(self):
        return sum(1 for _, line in list(self.lines) if line.startswith("committed"))

    def first_commit_after(self, t):
        return next((at for at, line in list(self.lines) if at > t and line.startswith("committed")), None)

    def stderr_tail(self, lines=20):
        process, stderr_path = self.instances[-1]
        text = stderr_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def kill(self):
        for process, _ in self.instances:
            if process.poll() is None:
                process.kill()
            process.wait(30)


def wait_for(condition, timeout_s, what, pipelines=None, details=lambda: "", interval_s=0.1):
    """Polls `condition` until it holds, restarting the pipeline if it exited; fails at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        if pipelines is not None:
            pipelines.check()
        if condition():
            return
        if time.monotonic() > deadline:
            extra = ""
            if pipelines is not None:
                extra = (f"\npipeline: {pipelines.committed_transactions()} transactions committed, "
                         f"{len(pipelines.instances)} started, exits {pipelines.exits}\n"
                         f"last pipeline stderr:\n{pipelines.stderr_tail()}")
            raise AssertionError(f"not within {timeout_s} s: {what}; {details()}{extra}")
        time.sleep(interval_s)


def poll_value(get, timeout_s, what):
    """The first value of `get()` that is not None, polled up to a deadline."""
    deadline = time.monotonic() + timeout_s
    while (value := get()) is None:
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.1)
    return value


def partitions_of(admin, topic):
    """The partitions of `topic` in the cluster's metadata (empty if it is not there yet)."""
    md = admin.list_topics(topic=topic, timeout=10).topics.get(topic)
    if md is None or md.error is not None:
        return {}
    return md.partitions


def leaders(admin, topic):
    return {p: md.leader for p, md in partitions_of(admin, topic).items()}


def offsets(bootstrap, topic, isolation):
    """The end offset (the high watermark, or the last stable offset for read_committed) of
    each partition whose leader answers. A new client each time: one that keeps a dead
    leader in its metadata answers -1001 for its partitions for a while."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    request = {TopicPartition(topic, p): OffsetSpec.latest() for p in range(PARTITIONS)}
    futures = admin.list_offsets(request, isolation_level=isolation, request_timeout=5)
    got = {}
    for tp, future in futures.items():
        try:
            offset = future.result(10).offset
        except KafkaException:
            continue
        if offset >= 0:  # -1001 while the client still names a dead leader
            got[tp.partition] = offset
    return got


def complete(by_partition):
    """`by_partition` if it has every partition, else None."""
    return by_partition if len(by_partition) == PARTITIONS else None


def high_watermarks(bootstrap, topic):
    return offsets(bootstrap, topic, IsolationLevel.READ_UNCOMMITTED)


def last_stable_offsets(bootstrap, topic):
    return offsets(bootstrap, topic, IsolationLevel.READ_COMMITTED)


def out_of_sync(admin, node_id):
    """Partitions of the pipeline's and the internal topics whose ISR is not all their
    replicas, or that lack `node_id` in it; None while the node is not a live broker."""
    md = admin.list_topics(timeout=10)
    if node_id not in md.brokers:
        return None
    bad = []
    for topic in (IN, OUT, *INTERNAL):
        for p, pm in partitions_of(admin, topic).items():
            if pm.leader < 0 or sorted(pm.isrs) != sorted(pm.replicas) or node_id not in pm.isrs:
                bad.append((topic, p, pm.leader, sorted(pm.replicas), sorted(pm.isrs)))
    return bad


def transaction_coordinator(bootstrap, admin):
    """The node coordinating TRANSACTIONAL_ID: FindCoordinator (kafka-python's
    describe_transactions, which also gives the transaction's state), checked against the
    leader of its `__transaction_state` partition in the metadata."""
    k = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        described = k.describe_transactions([TRANSACTIONAL_ID])[TRANSACTIONAL_ID]
    finally:
        k.close()
    state_partitions = partitions_of(admin, "__transaction_state")
    partition = coordinator_partition(TRANSACTIONAL_ID, len(state_partitions))
    leader = state_partitions[partition].leader
    assert described.coordinator_id == leader, (
        f"FindCoordinator names node {described.coordinator_id} for {TRANSACTIONAL_ID!r}, but __transaction_state-{partition} is led by {leader}")
    return leader, partition, described


def transaction_state(bootstrap):
    """The coordinator's state of TRANSACTIONAL_ID (DescribeTransactions), or why it has none."""
    try:
        k = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    except Exception as e:  # no node answered yet
        return repr(e)
    try:
        return k.describe_transactions([TRANSACTIONAL_ID])[TRANSACTIONAL_ID].state.value
    except Exception as e:  # a coordinator moving: asked again
        return repr(e)
    finally:
        k.close()


def read_partitions(bootstrap, topic, isolation):
    """Each partition's values from offset 0 up to the end a consumer of that isolation
    reaches (librdkafka's end-of-partition event), and that end offset."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "eosc-reader", "enable.auto.commit": False,
                         "enable.partition.eof": True, "isolation.level": isolation})
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        values = {p: [] for p in range(PARTITIONS)}
        ends = {}
        deadline = time.monotonic() + 60
        while len(ends) < PARTITIONS:
            assert time.monotonic() < deadline, f"{isolation} reader of {topic} did not reach the end of {set(values) - set(ends)} ({ends})"
            for m in consumer.consume(1000, 0.2):
                if m.error():
                    assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                    ends[m.partition()] = m.offset()
                else:
                    values[m.partition()].append(m.value().decode())
        return values, ends
    finally:
        consumer.close()


def test_exactly_once_pipeline_survives_killed_coordinator_and_leaders(cluster_factory, tmp_path):
    started = time.monotonic()
    cluster = cluster_factory(3)
    bootstrap = cluster.bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [NewTopic(t, PARTITIONS, 3, config={"min.insync.replicas": "2"}) for t in (IN, OUT)]
    for future in admin.create_topics(topics, request_timeout=30).values():
        future.result(30)
    wait_for(lambda: all(len(leaders(admin, t)) == PARTITIONS and min(leaders(admin, t).values()) > 0 for t in (IN, OUT)),
             30, "leaders for the new topics")

    feeder = Feeder(bootstrap)
    pipelines = None
    killed = []
    try:
        feeder.allow(SLICE)
        pipelines = Pipelines(bootstrap, tmp_path)
        wait_for(lambda: pipelines.committed_transactions() >= 1, ROUND_DEADLINE_S, "the pipeline's first transaction", pipelines)

        for round_no, (what, with_pipeline) in enumerate(ROUNDS, 1):
            if what == "transaction coordinator":
                victim, partition, _ = transaction_coordinator(bootstrap, admin)
                detail = f"__transaction_state-{partition}"
            else:
                topic = OUT if what == "output partition leader" else IN
                by_partition = leaders(admin, topic)
                # A node not killed yet where possible: each dies in turn.
                partition = min(by_partition, key=lambda p: (by_partition[p] in killed, p))
                victim = by_partition[partition]
                detail = f"{topic}-{partition}"
            node = next(b for b in cluster.brokers if b.node_id == victim)

            # The next slice of input at once: a backlog of transactions. The kill comes
            # just after the first of them, while the pipeline is in the next one.
            base = pipelines.committed_transactions()
            feeder.allow(SLICE * (round_no + 1))
            wait_for(lambda: pipelines.committed_transactions() > base, ROUND_DEADLINE_S,
                     f"round {round_no}: a transaction of the new slice", pipelines, interval_s=0.002)
            time.sleep(KILL_DELAY_S)
            node.kill()
            killed_at = time.monotonic()
            commits_before = pipelines.committed_transactions()
            killed.append(victim)
            if with_pipeline:
                pipelines.kill_and_restart()

            # Progress without the node: more transactions, and then every output
            # partition's last stable offset at least at its high watermark of that
            # moment, which the transactions open at the kill lie below (none left open).
            wait_for(lambda: pipelines.committed_transactions() >= commits_before + 3, ROUND_DEADLINE_S,
                     f"round {round_no}: transactions with node {victim} ({what}, {detail}) dead", pipelines)
            hw_after = poll_value(lambda: complete(high_watermarks(bootstrap, OUT)), 30, "the output's high watermarks")
            lso_now = {}

            def stable_past():
                lso_now.update(last_stable_offsets(bootstrap, OUT))
                return all(lso_now.get(p, -1) >= hw_after[p] for p in range(PARTITIONS))

            wait_for(stable_past, HANGING_DEADLINE_S, f"round {round_no}: output LSO past the high watermarks {hw_after}",
                     pipelines, lambda: f"output LSO {lso_now} with node {victim} ({what}, {detail}) dead")
            progressed_at = time.monotonic()

            node.start()
            lag = []

            def in_sync():
                nonlocal lag
                lag = out_of_sync(admin, victim)
                return lag == []

            wait_for(in_sync, ROUND_DEADLINE_S, f"round {round_no}: node {victim} back in every ISR", pipelines,
                     lambda: f"not in sync: {lag if lag is None else lag[:10]}")
            first = pipelines.first_commit_after(killed_at)
            print(f"round {round_no}: killed node {victim} (leader of {detail}){' and the pipeline' if with_pipeline else ''}; "
                  f"first commit after {first - killed_at:.1f} s, output LSO past its high watermarks after {progressed_at - killed_at:.1f} s, "
                  f"back in every ISR after {time.monotonic() - killed_at:.1f} s", flush=True)

        # Everything in, everything consumed, then the pipeline stopped while idle.
        feeder.allow(RECORDS)
        wait_for(feeder.done.is_set, 150, "the feeder's last delivery", pipelines)
        assert not feeder.errors, f"input not delivered: {feeder.errors[:5]}"
        in_ends = poll_value(lambda: complete(high_watermarks(bootstrap, IN)), 30, "the input's end offsets")
        assert sum(in_ends.values()) == RECORDS, f"input end offsets {in_ends}, {RECORDS} records sent"
        group_offsets = {}

        def consumed_everything():
            nonlocal group_offsets
            c = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP, "enable.auto.commit": False})
            try:
                got = c.committed([TopicPartition(IN, p) for p in range(PARTITIONS)], 10)
                group_offsets = {tp.partition: tp.offset for tp in got}
            except KafkaException:
                return False
            finally:
                c.close()
            return group_offsets == in_ends

        wait_for(consumed_everything, ROUND_DEADLINE_S, "the group's committed offsets at the input's end", pipelines,
                 lambda: f"committed {group_offsets}, input ends {in_ends}")
    finally:
        feeder.stop.set()
        if pipelines is not None:
            pipelines.kill()
        feeder.thread.join(30)

    # No hanging transaction: the coordinator has closed the last one, and every output
    # partition's last stable offset reaches its high watermark.
    hw, lso, state = {}, {}, None

    def stable():
        nonlocal hw, lso, state
        hw = high_watermarks(bootstrap, OUT)
        lso = last_stable_offsets(bootstrap, OUT)
        state = transaction_state(bootstrap)
        return len(hw) == PARTITIONS and lso == hw and state in CLOSED

    wait_for(stable, HANGING_DEADLINE_S, "no open transaction",
             details=lambda: f"transaction {state}, output LSO {lso}, high watermarks {hw}")

    inputs, _ = read_partitions(bootstrap, IN, "read_uncommitted")
    committed, ends = read_partitions(bootstrap, OUT, "read_committed")
    uncommitted, _ = read_partitions(bootstrap, OUT, "read_uncommitted")
    summary = (f"pipeline exits {[(code, tail[-1:]) for code, tail in pipelines.exits]}, killed nodes {killed}, "
               f"{sum(map(len, uncommitted.values())) - sum(map(len, committed.values()))} output records aborted, "
               f"{time.monotonic() - started:.0f} s")
    print(summary, flush=True)
    assert ends == hw, f"a read_committed reader stops at {ends}, the high watermarks are {hw}"

    assert sorted(v for vs in inputs.values() for v in vs) == sorted(f"rec-{i}" for i in range(RECORDS)), \
        "the input is not every record once (the idempotent feeder)"
    counts = collections.Counter(v for vs in committed.values() for v in vs)
    duplicates = [v for v, n in counts.items() if n > 1]
    assert not duplicates, f"{len(duplicates)} records committed twice, e.g. {duplicates[:3]} ({summary})"
    expected = {f"out-rec-{i}" for i in range(RECORDS)}
    missing = expected - set(counts)
    assert not missing, f"{len(missing)} records missing, e.g. {sorted(missing)[:3]} ({summary})"
    assert set(counts) == expected, f"unexpected output records {sorted(set(counts) - expected)[:3]} ({summary})"
    for p in range(PARTITIONS):
        assert committed[p] == ["out-" + v for v in inputs[p]], f"{OUT}-{p} is not {IN}-{p} transformed, in order ({summary})"
    cluster.stop()
