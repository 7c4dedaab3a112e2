"""Starting and stopping the real `strom` broker for the interop tests.

Every broker is started on 127.0.0.1:0 with its own data directory under a fresh
temporary directory, found ready by the one line it prints on stdout, and stopped
by its process id (SIGTERM, which must exit 0; SIGKILL for crash tests and as a
last resort). Its stderr goes to a file in the temporary directory; when a test
fails, the tail of every broker log the test used is attached to the report.
"""

import os
import pathlib
import queue
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest
from confluent_kafka.admin import AdminClient
from kafka.admin import KafkaAdminClient

REPO = pathlib.Path(__file__).resolve().parents[2]
READY_LINE = re.compile(r"Strom broker (\d+) listening on (127\.0\.0\.1):(\d+) \(data in (.+)\)")
# The line after it: where GET /metrics is served.
METRICS_LINE = re.compile(r"Strom broker \d+ metrics on (http://127\.0\.0\.1:\d+/metrics)")
READY_TIMEOUT_S = 30
STOP_TIMEOUT_S = 30
LOG_TAIL_LINES = 200

# STROM_PY_CLUSTER=N runs the module-broker suites against an N-node cluster
# with default.replication.factor=N instead of one broker (the test command
# runs them both ways). Tests that start their own brokers run only in the
# single-broker pass, as do those marked single_broker_only.
CLUSTER_NODES = int(os.environ.get("STROM_PY_CLUSTER") or 0)
single_broker_only = pytest.mark.skipif(
    CLUSTER_NODES > 0, reason="about one broker's own files, metrics or restarts")
# What the suites give the topics they create (every node holds a replica of each in a
# cluster), and the ids of the nodes that hold them: the one broker is node 1.
REPLICATION_FACTOR = CLUSTER_NODES or 1
NODE_IDS = list(range(1, REPLICATION_FACTOR + 1))


def replication_bug(what):
    """Skips a test in the cluster pass for a known replication bug, named in `what`."""
    return pytest.mark.skipif(CLUSTER_NODES > 0, reason=f"replication bug: {what}")


def strom_binary():
    binary = pathlib.Path(os.environ.get("STROM_BIN") or REPO / "target" / "debug" / "strom")
    if not binary.is_file():
        pytest.exit(f"no strom binary at {binary}: run `cargo build -p strom-cli` or set STROM_BIN", returncode=2)
    return binary


class Broker:
    """One `strom broker` process: a free port, a data directory, a stderr log file.

    `node_id` is the node it must report in its ready line; `args` are more
    command-line flags (a cluster node's `--node-id`, `--controller-listen`,
    `--voters`), and `listen` its client address (a free port by default).
    """

    def __init__(self, data_dir, log_path, properties=(), node_id=1, args=(), listen="127.0.0.1:0"):
        self.data_dir = pathlib.Path(data_dir)
        self.log_path = pathlib.Path(log_path)
        self.properties = list(properties)
        self.node_id = node_id
        self.args = list(args)
        self.listen = listen
        self.process = None
        self.pid = None
        self.port = None
        self.bootstrap = None
        self.metrics_url = None
        self.returncode = None
        self._lines = None

    def start(self):
        return self.spawn().wait_ready()

    def spawn(self):
        """Starts the process without waiting for it (cluster nodes are all started before any is ready)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [str(strom_binary()), "broker", "--listen", self.listen, "--data-dir", str(self.data_dir), *self.args]
        for prop in self.properties:
            args += ["--set", prop]
        with open(self.log_path, "ab") as log:
            env = {**os.environ, "NO_COLOR": "1"}
            self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env)
        self.pid = self.process.pid
        lines = self._lines = queue.Queue()

        def read_stdout(stdout):
            # Hands every line to the starter, then EOF as None; keeps draining
            # afterwards so the broker can never block on a full pipe.
            for raw in stdout:
                lines.put(raw.decode(errors="replace").rstrip("\n"))
            lines.put(None)

        threading.Thread(target=read_stdout, args=(self.process.stdout,), daemon=True).start()
        return self

    def wait_ready(self):
        """Waits for the ready line and the metrics line after it."""
        lines = self._lines
        deadline = time.monotonic() + READY_TIMEOUT_S
        seen = []
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = lines.get(timeout=max(remaining, 0))
            except queue.Empty:
                self.kill()
                raise RuntimeError(f"broker printed no ready line within {READY_TIMEOUT_S} s; stdout {seen}\n{self.log_tail()}")
            if line is None:
                code = self.process.wait(timeout=STOP_TIMEOUT_S)
                self.process = None
                raise RuntimeError(f"broker exited with {code} before it was ready; stdout {seen}\n{self.log_tail()}")
            seen.append(line)
            match = READY_LINE.fullmatch(line)
            if match:
                break
        node, host, port, data = match.groups()
        assert node == str(self.node_id), line
        assert os.path.samefile(data, self.data_dir), f"ready line names data dir {data!r}, not {self.data_dir}"
        self.port = int(port)
        assert self.port != 0, line
        self.bootstrap = f"{host}:{self.port}"
        try:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0))
        except queue.Empty:
            line = None
        match = METRICS_LINE.fullmatch(line or "")
        assert match, f"expected the metrics line after the ready line, got {line!r}"
        self.metrics_url = match.group(1)
        return self

    @property
    def nodes(self):
        """The broker processes behind this one (the module fixture's interface; see ClusterBroker)."""
        return [self]

    def partition_dir(self, topic, partition=0):
        """The directory of the partition's segment files."""
        return self.data_dir / f"{topic}-{partition}"

    def running(self):
        return self.process is not None and self.process.poll() is None

    def stop(self):
        """SIGTERM: a clean shutdown that must exit 0."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        self.wait_stopped()

    def wait_stopped(self):
        """Waits for the exit a SIGTERM asked for, which must be 0."""
        if self.process is None:
            return
        try:
            code = self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"broker pid {self.pid} ignored SIGTERM for {STOP_TIMEOUT_S} s\n{self.log_tail()}")
        self.process = None
        self.returncode = code
        assert code == 0, f"broker pid {self.pid} exited with {code} on SIGTERM\n{self.log_tail()}"

    def kill(self):
        """SIGKILL: a crash (and the last resort of every teardown)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.returncode = self.process.wait(timeout=STOP_TIMEOUT_S)
        self.process = None

    def log_tail(self, lines=LOG_TAIL_LINES):
        if not self.log_path.exists():
            return f"(no broker log at {self.log_path})"
        text = self.log_path.read_text(errors="replace").splitlines()
        cut = f"... ({len(text) - lines} earlier lines)\n" if len(text) > lines else ""
        return f"--- broker pid {self.pid} stderr ({self.log_path}) ---\n{cut}" + "\n".join(text[-lines:])


class BrokerFactory:
    """Starts brokers for one test; `data` names the data directory so a restart can reuse it."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.brokers = []

    def __call__(self, properties=(), data="data"):
        log = self.workdir / f"broker-{len(self.brokers)}.stderr.log"
        broker = Broker(self.workdir / data, log, properties)
        self.brokers.append(broker)
        return broker.start()

    def cleanup(self):
        for broker in self.brokers:
            broker.kill()


@pytest.fixture
def broker_factory():
    """Per-test brokers (restart and crash tests); all killed and their files removed afterwards."""
    if CLUSTER_NODES:
        pytest.skip("starts its own brokers: run in the single-broker pass")
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="strom-py-"))
    factory = BrokerFactory(workdir)
    try:
        yield factory
    finally:
        try:
            factory.cleanup()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def free_ports(n):
    """`n` distinct free ports on 127.0.0.1: all bound at once, then released for the brokers to bind."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Cluster:
    """`n` combined nodes (broker and controller) of one cluster, started as a user starts them by hand:

        strom broker --node-id I --listen 127.0.0.1:P --controller-listen 127.0.0.1:C \\
          --voters 1@127.0.0.1:C1,2@... --data-dir DIR/nI --metrics 127.0.0.1:0

    Every process is started first, then each is waited for (a node is ready only once a
    majority of the voters is up).
    """

    def __init__(self, workdir, n=3, properties=()):
        ports = free_ports(2 * n)
        clients, controllers = ports[:n], ports[n:]
        voters = ",".join(f"{i + 1}@127.0.0.1:{controllers[i]}" for i in range(n))
        self.brokers = [
            Broker(
                workdir / f"n{i + 1}",
                workdir / f"n{i + 1}.stderr.log",
                properties,
                node_id=i + 1,
                listen=f"127.0.0.1:{clients[i]}",
                args=["--node-id", str(i + 1), "--controller-listen", f"127.0.0.1:{controllers[i]}",
                      "--voters", voters, "--metrics", "127.0.0.1:0"],
            )
            for i in range(n)
        ]
        self.ready_at = None

    def start(self):
        for b in self.brokers:
            b.spawn()
        for b in self.brokers:
            b.wait_ready()
        self.ready_at = time.monotonic()
        return self

    @property
    def bootstrap(self):
        return ",".join(b.bootstrap for b in self.brokers)

    def stop(self):
        """SIGTERM to every node at once, then each must exit 0."""
        for b in self.brokers:
            if b.process is not None:
                b.process.send_signal(signal.SIGTERM)
        for b in self.brokers:
            b.wait_stopped()

    def kill(self):
        for b in self.brokers:
            b.kill()


@pytest.fixture
def cluster_factory():
    """Per-test clusters; all killed and their files removed afterwards."""
    if CLUSTER_NODES:
        pytest.skip("starts its own cluster: run in the single-broker pass")
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="strom-py-cluster-"))
    clusters = []

    def start(n=3, properties=()):
        c = Cluster(workdir / f"c{len(clusters)}", n, properties)
        clusters.append(c)
        return c.start()

    start.clusters = clusters
    try:
        yield start
    finally:
        try:
            for c in clusters:
                c.kill()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


class ClusterBroker:
    """A cluster seen through the module-broker fixture's interface: `bootstrap` names every
    node; `data_dir` and `metrics_url` are node 1's (with replication factor N it holds every
    partition, though a follower's copy may lag), `nodes` are all of them, and
    `partition_dir` is the directory of the partition's current leader."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.first = cluster.brokers[0]
        self.data_dir = self.first.data_dir

    def start(self):
        self.cluster.start()
        return self

    @property
    def metrics_url(self):
        return self.first.metrics_url

    @property
    def pid(self):
        return self.first.pid

    @property
    def process(self):
        return self.first.process

    @property
    def bootstrap(self):
        return self.cluster.bootstrap

    @property
    def nodes(self):
        return self.cluster.brokers

    def partition_dir(self, topic, partition=0):
        """The segment directory of the partition's leader (a follower's copy may lag)."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        leader = admin.list_topics(topic=topic, timeout=10).topics[topic].partitions[partition].leader
        (node,) = [b for b in self.cluster.brokers if b.node_id == leader]
        return node.data_dir / f"{topic}-{partition}"

    def running(self):
        return all(b.running() for b in self.cluster.brokers)

    def stop(self):
        self.cluster.stop()

    def kill(self):
        self.cluster.kill()

    def log_tail(self, lines=LOG_TAIL_LINES):
        return "\n".join(b.log_tail(lines) for b in self.cluster.brokers)


def module_broker(*properties):
    """A fixture: one broker shared by a test module, stopped with SIGTERM (exit 0) at its end
    (with STROM_PY_CLUSTER, a cluster)."""

    @pytest.fixture(scope="module")
    def broker():
        workdir = pathlib.Path(tempfile.mkdtemp(prefix="strom-py-"))
        if CLUSTER_NODES:
            replicated = [f"default.replication.factor={CLUSTER_NODES}", *properties]
            b = ClusterBroker(Cluster(workdir, CLUSTER_NODES, replicated))
        else:
            b = Broker(workdir / "data", workdir / "broker.stderr.log", properties)
        try:
            b.start()
            yield b
            assert b.running(), f"broker pid {b.pid} died during the module (exit {b.process.returncode})\n{b.log_tail()}"
            b.stop()
        finally:
            try:
                b.kill()
            finally:
                shutil.rmtree(workdir, ignore_errors=True)

    return broker


broker = module_broker()


@pytest.fixture
def admin(broker):
    """A confluent-kafka admin client of the test's broker."""
    return AdminClient({"bootstrap.servers": broker.bootstrap})


@pytest.fixture
def kadmin(broker):
    """A kafka-python admin client of the test's broker, closed afterwards."""
    client = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        yield client
    finally:
        client.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the tail of the stderr of every broker the test used."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    funcargs = getattr(item, "funcargs", {}) or {}
    brokers = []
    for value in funcargs.values():
        if isinstance(value, Broker):
            brokers.append(value)
        elif isinstance(value, ClusterBroker):
            brokers.extend(value.cluster.brokers)
        elif isinstance(value, BrokerFactory):
            brokers.extend(value.brokers)
        elif isinstance(value, Cluster):
            brokers.extend(value.brokers)
        elif hasattr(value, "clusters"):
            brokers.extend(b for c in value.clusters for b in c.brokers)
    for b in brokers:
        report.sections.append((f"strom broker pid {b.pid} stderr", b.log_tail()))


def wait_until(condition, timeout_s=30, interval_s=0.05):
    """Polls an eventually-true condition (metadata propagation) up to a deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return condition()
