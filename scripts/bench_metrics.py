#!/usr/bin/env python3
"""What the broker's metrics cost: produce throughput of two `strom` binaries
(say, before and after a metrics change) measured alternately in one run, and
how long a scrape takes on a broker with many partitions and group offsets.

    scripts/bench_metrics.py --baseline OLD/strom --candidate target/release/strom

Both binaries are run as brokers on free ports with fresh data directories in
a temporary directory, which is removed at the end; the load comes from the
candidate's `strom perf produce`. Prints per-run figures, medians with their
range, and the per-run ratio candidate/baseline. Only the standard library.
"""

import argparse
import json
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

READY = re.compile(r"Strom broker \d+ listening on (\S+) ")
METRICS = re.compile(r"Strom broker \d+ metrics on (\S+)")
READY_TIMEOUT_S = 60


class Broker:
    def __init__(self, binary, data_dir, properties=(), want_metrics=False):
        args = [binary, "broker", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)]
        for p in properties:
            args += ["--set", p]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.bootstrap = None
        self.metrics_url = None
        deadline = time.monotonic() + READY_TIMEOUT_S
        # A binary from before the metrics prints only the ready line.
        while time.monotonic() < deadline and (self.bootstrap is None or (want_metrics and self.metrics_url is None)):
            line = self.process.stdout.readline()
            if not line:
                break
            if m := READY.match(line):
                self.bootstrap = m.group(1)
            if m := METRICS.match(line):
                self.metrics_url = m.group(1)
        if self.bootstrap is None:
            self.stop()
            raise RuntimeError(f"{binary} did not start")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def tool(binary, bootstrap, *args):
    out = subprocess.run([binary, "--bootstrap", bootstrap, *args], check=True, capture_output=True, text=True)
    return out.stdout


def produce_rate(binary, tool_binary, workdir, run, records, size, extra):
    data_dir = Path(tempfile.mkdtemp(prefix=f"produce-{run}-", dir=workdir))
    broker = Broker(binary, data_dir)
    try:
        tool(tool_binary, broker.bootstrap, "topic", "create", "bench", "--partitions", "4")
        out = tool(
            tool_binary,
            broker.bootstrap,
            "perf", "produce", "--topic", "bench", "--num-records", str(records),
            "--record-size", str(size), "--output", "json", *extra,
        )
        return json.loads(out.strip().splitlines()[-1])["records_per_sec"]
    finally:
        broker.stop()


def spread(values):
    return f"median {statistics.median(values):,.0f} (min {min(values):,.0f}, max {max(values):,.0f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="strom binary to compare against")
    parser.add_argument("--candidate", required=True, help="strom binary with the change")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--record-size", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=2000, help="for the scrape timing")
    parser.add_argument("--groups", type=int, default=100, help="for the scrape timing; each commits every partition of a 20-partition topic")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="strom-bench-metrics-"))
    try:
        for label, extra in [
            ("batched (linger.ms=5)", []),
            ("one record per request (linger.ms=0, batch.size=1, acks=1)", ["-X", "linger.ms=0", "-X", "batch.size=1", "--acks", "1"]),
        ]:
            records = args.records if not extra else args.records // 20
            base, cand, ratios = [], [], []
            for run in range(args.runs):
                # Alternate the order so drift on a shared machine hits both.
                order = [(args.baseline, base), (args.candidate, cand)]
                if run % 2:
                    order.reverse()
                for binary, into in order:
                    into.append(produce_rate(binary, args.candidate, workdir, run, records, args.record_size, extra))
                ratios.append(cand[-1] / base[-1])
                print(f"{label} run {run + 1}: baseline {base[-1]:,.0f}/s candidate {cand[-1]:,.0f}/s ratio {ratios[-1]:.3f}", flush=True)
            print(f"{label}: baseline {spread(base)} records/s; candidate {spread(cand)} records/s;"
                  f" ratio median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")

        broker = Broker(args.candidate, workdir / "scrape", want_metrics=True)
        try:
            topics = max(1, args.partitions // 100)
            for t in range(topics):
                tool(args.candidate, broker.bootstrap, "topic", "create", f"t{t}", "--partitions", "100")
            tool(args.candidate, broker.bootstrap, "topic", "create", "grouped", "--partitions", "20")
            subprocess.run(
                [args.candidate, "--bootstrap", broker.bootstrap, "produce", "grouped"],
                input="".join(f"{i}\n" for i in range(2000)), text=True, check=True, capture_output=True,
            )
            for g in range(args.groups):
                tool(args.candidate, broker.bootstrap, "consume", "grouped", "--group", f"g{g}",
                     "--from-beginning", "--count", "10")
            times, sizes = [], []
            for _ in range(20):
                started = time.perf_counter()
                with urllib.request.urlopen(broker.metrics_url, timeout=60) as response:
                    body = response.read()
                times.append((time.perf_counter() - started) * 1000)
                sizes.append(len(body))
            series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
            print(f"scrape of {topics * 100 + 20} partitions and {args.groups} groups: {series} samples,"
                  f" {sizes[-1] / 1e6:.1f} MB, median {statistics.median(times):.1f} ms"
                  f" (min {min(times):.1f}, max {max(times):.1f}) over 20 scrapes")
        finally:
            broker.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
