"""Starting and stopping the real strom broker for the tests."""

import os
import pathlib
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
READY = re.compile(r"listening on (\S+):(\d+)")
READY_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30


class Broker:
    """A `strom broker` process on a free port with its own data directory."""

    def __init__(self, data_dir, properties=()):
        self.data_dir = pathlib.Path(data_dir)
        self.properties = list(properties)
        self.process = None
        self.bootstrap = None
        self._stderr = None

    def start(self):
        binary = os.environ.get("STROM_BIN", str(REPO / "target" / "debug" / "strom"))
        args = [binary, "broker", "--listen", "127.0.0.1:0", "--data-dir", str(self.data_dir)]
        for p in self.properties:
            args += ["--set", p]
        self._stderr = open(self.data_dir.parent / f"{self.data_dir.name}.stderr.log", "ab")
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._stderr)
        ready = {}

        def read_ready():
            line = self.process.stdout.readline().decode()
            match = READY.search(line)
            if match:
                ready["addr"] = f"{match.group(1)}:{match.group(2)}"
            # Keep draining stdout so the broker never blocks on it.
            for _ in self.process.stdout:
                pass

        reader = threading.Thread(target=read_ready, daemon=True)
        reader.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "addr" not in ready:
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.kill()
                raise RuntimeError(f"broker did not start:\n{self.stderr()}")
            time.sleep(0.01)
        self.bootstrap = ready["addr"]
        return self

    def stop(self):
        """SIGTERM and wait for a clean exit."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=STOP_TIMEOUT_S)
        self.process = None
        assert code == 0, f"broker exited with {code}:\n{self.stderr()}"

    def kill(self):
        """SIGKILL: a crash."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait(timeout=STOP_TIMEOUT_S)
        self.process = None

    def stderr(self):
        path = self.data_dir.parent / f"{self.data_dir.name}.stderr.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def workdir():
    path = tempfile.mkdtemp(prefix="strom-py-")
    try:
        yield pathlib.Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def broker_factory(workdir):
    """Starts brokers (on the same data dir if asked) and kills leftovers."""
    started = []

    def start(properties=(), data="data"):
        b = Broker(workdir / data, properties).start()
        started.append(b)
        return b

    yield start
    for b in started:
        b.kill()


@pytest.fixture(scope="module")
def broker():
    """One broker per test module."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="strom-py-"))
    b = Broker(path / "data").start()
    try:
        yield b
    finally:
        try:
            b.stop()
        finally:
            b.kill()
            shutil.rmtree(path, ignore_errors=True)


def wait_until(condition, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()
