"""The Python workload of a strom-chaos run: an idempotent confluent-kafka
(librdkafka) producer at acks=all writing unique numbers to a topic, each
send recorded in the run's history format (one JSON object per line; see
crates/strom-chaos/src/history.rs). Stops on SIGTERM after its deliveries
come out."""

import argparse
import json
import random
import signal
import time

from confluent_kafka import Producer

WINDOW = 8  # sends in flight at most, as the Rust producers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--history", required=True)
    ap.add_argument("--base-us", type=int, required=True)
    ap.add_argument("--first-value", type=int, required=True)
    ap.add_argument("--process", type=int, required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--partitions", type=int, required=True)
    args = ap.parse_args()

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    out = open(args.history, "w", buffering=1)
    index = [0]

    def now_us():
        return time.time_ns() // 1000 - args.base_us

    def record(start, outcome, partition, value, offset, error=None):
        op = {
            "index": index[0],
            "process": args.process,
            "start_us": start,
            "end_us": now_us(),
            "outcome": outcome,
            "f": "send",
            "topic": args.topic,
            "partition": partition,
            "value": value,
            "offset": offset,
        }
        if error is not None:
            op["error"] = error
        index[0] += 1
        out.write(json.dumps(op) + "\n")

    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": 20000,
            "request.timeout.ms": 5000,
            "socket.connection.setup.timeout.ms": 3000,
            "reconnect.backoff.max.ms": 1000,
            "topic.metadata.refresh.interval.ms": 2000,
        }
    )
    in_flight = [0]

    def delivered(start, partition, value):
        def cb(err, msg):
            in_flight[0] -= 1
            if err is None:
                record(start, "ok", msg.partition(), value, msg.offset())
            else:
                record(start, "unknown", partition, value, None, str(err))

        return cb

    rng = random.Random(args.first_value)
    value = args.first_value
    while not stopping:
        if in_flight[0] >= WINDOW:
            producer.poll(0.05)
            continue
        partition = rng.randrange(args.partitions)
        start = now_us()
        try:
            producer.produce(
                args.topic,
                value=str(value).encode(),
                partition=partition,
                on_delivery=delivered(start, partition, value),
            )
            in_flight[0] += 1
            value += 1
        except BufferError:
            pass
        producer.poll(0.01)
    producer.flush(30)
    out.close()


if __name__ == "__main__":
    main()
