"""Producing and consuming with both client stacks, and checking records."""

import time

from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as CTopicPartition
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KTopicPartition

BASE_TS = 1_700_000_000_000
POLL_TIMEOUT_S = 30


def record(i):
    """Key, value, headers and timestamp of record i."""
    key = f"key-{i}".encode()
    value = f"value-{i:08d}-".encode() + b"p" * (i % 97)
    headers = [("idx", str(i).encode()), ("dup", b"a"), ("dup", b"b")]
    return key, value, headers, BASE_TS + i


def produce_kafka_python(bootstrap, topic, n, **config):
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, **config)
    futures = []
    for i in range(n):
        key, value, headers, ts = record(i)
        futures.append(producer.send(topic, key=key, value=value, headers=headers, partition=0, timestamp_ms=ts))
    producer.flush(60)
    offsets = [f.get(timeout=60).offset for f in futures]
    producer.close()
    return offsets


def produce_confluent(bootstrap, topic, n, **config):
    errors = []
    offsets = []

    def report(err, msg):
        if err is not None:
            errors.append(err)
        else:
            offsets.append(msg.offset())

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, **config})
    for i in range(n):
        key, value, headers, ts = record(i)
        while True:
            try:
                producer.produce(topic, key=key, value=value, headers=headers, partition=0, timestamp=ts, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0, "messages left undelivered"
    assert not errors, errors[:3]
    return offsets


def consume_kafka_python(bootstrap, topic, n):
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=POLL_TIMEOUT_S * 1000,
    )
    tp = KTopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    out = []
    for m in consumer:
        out.append((m.offset, m.key, m.value, [(k, v) for k, v in m.headers], m.timestamp))
        if len(out) == n:
            break
    consumer.close()
    return out


def consume_confluent(bootstrap, topic, n):
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            # Required by the client; never used: no subscribe, no commit.
            "group.id": "strom-py-unused",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([CTopicPartition(topic, 0, 0)])
    out = []
    deadline = time.monotonic() + POLL_TIMEOUT_S * 4
    while len(out) < n and time.monotonic() < deadline:
        m = consumer.poll(1.0)
        if m is None:
            continue
        assert m.error() is None, m.error()
        out.append((m.offset(), m.key(), m.value(), list(m.headers() or []), m.timestamp()[1]))
    consumer.close()
    return out


def check(consumed, n):
    """Every record in order, with its key, value, headers and timestamp."""
    assert len(consumed) == n, f"consumed {len(consumed)} of {n}"
    for i, (offset, key, value, headers, ts) in enumerate(consumed):
        exp_key, exp_value, exp_headers, exp_ts = record(i)
        assert offset == i
        assert (key, value, ts) == (exp_key, exp_value, exp_ts), f"record {i}"
        assert headers == exp_headers, f"record {i}: duplicate header keys are kept in order"
