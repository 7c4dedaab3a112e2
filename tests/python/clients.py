"""Producing and consuming with both client stacks, and checking what came back.

Record i of a test stream is fully determined by `record(i)`, so a consumer's
output can be checked record by record against what was produced: offset, key,
value, headers (in order, duplicates kept) and timestamp.
"""

import random
import time

import confluent_kafka
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as CTopicPartition
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KTopicPartition

BASE_TS = 1_700_000_000_000  # 2023-11-14, well inside Kafka's default timestamp window
DEADLINE_S = 60
CREATE_TIME = 0  # kafka-python's timestamp_type for CreateTime
LOG_APPEND_TIME = 1

_POOL = random.Random(20261125).randbytes(1 << 17)


def record(i):
    """(key, value, headers, timestamp) of record i of a test stream.

    Keys and values vary in length and compressibility; every 1000th record has
    no key and another has no value (a tombstone); some values are large (64 KiB,
    beyond the producers' default batch size); headers repeat a key (Kafka keeps
    both, in order), have empty values and non-ASCII keys; timestamps sometimes
    step backwards (negative deltas inside a batch).
    """
    key = None if i % 1000 == 500 else b"key-%d" % i
    if i % 1000 == 600:
        value = None
    else:
        start = (i * 7919) % (len(_POOL) - 70_000)
        size = 65_536 if i % 5000 == 4321 else i % 300
        value = b"value-%08d|" % i + (b"z" * (i % 50)) + _POOL[start : start + size]
    headers = [("idx", b"%d" % i)]
    if i % 2:
        headers += [("dup", b"first"), ("dup", b"second")]
    if i % 5 == 0:
        headers += [("empty", b""), ("\u00fcml\u00e4ut", b"\x00\xff\x01")]
    timestamp = BASE_TS + 2 * i - (1_000 if i % 7 == 3 else 0)
    return key, value, headers, timestamp


def expected(i, offset=None):
    key, value, headers, ts = record(i)
    return (i if offset is None else offset, key, value, headers, ts)


# ---------------------------------------------------------------- producers


def await_leader(bootstrap, topic, partitions=1):
    """Creates `topic` (if new) and waits until its partitions' leaders answer for them.

    acks=0 producers get no error back: records sent to a broker that has not yet taken up a new
    partition's leadership (in a cluster, every broker applies the new metadata on its own) are
    dropped, as in Kafka. A test that counts acks=0 records first waits for this.
    """
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until its futures resolve
    futures = admin.create_topics([NewTopic(topic, partitions)])
    for future in futures.values():
        try:
            future.result(timeout=DEADLINE_S)
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"await-{topic}"})
    try:
        deadline = time.monotonic() + DEADLINE_S
        for p in range(partitions):
            while True:
                try:
                    consumer.get_watermark_offsets(CTopicPartition(topic, p), timeout=5)
                    break
                except KafkaException:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
    finally:
        consumer.close()


def produce_kafka_python(bootstrap, topic, n, partition=0, start=0, **config):
    """Sends records start..start+n-1 with kafka-python; returns their offsets in send order."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, **config)
    try:
        futures = []
        for i in range(start, start + n):
            key, value, headers, ts = record(i)
            futures.append(producer.send(topic, key=key, value=value, headers=headers, partition=partition, timestamp_ms=ts))
        producer.flush(DEADLINE_S)
        return [f.get(timeout=DEADLINE_S).offset for f in futures]
    finally:
        producer.close(timeout=10)


def produce_confluent(bootstrap, topic, n, partition=0, start=0, **config):
    """Sends records start..start+n-1 with librdkafka; returns delivered offsets in report order.

    Fails on any delivery error or any record left undelivered.
    """
    errors = []
    offsets = []

    def report(err, msg):
        if err is not None:
            errors.append(err)
        else:
            offsets.append(msg.offset())

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, **config})
    for i in range(start, start + n):
        key, value, headers, ts = record(i)
        while True:
            try:
                producer.produce(topic, key=key, value=value, headers=headers, partition=partition, timestamp=ts, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(DEADLINE_S)
    assert left == 0, f"{left} records left undelivered after {DEADLINE_S} s"
    assert not errors, f"{len(errors)} delivery errors, first ones: {errors[:3]}"
    assert len(offsets) == n, f"{len(offsets)} delivery reports for {n} records"
    return offsets


# ---------------------------------------------------------------- consumers


def consume_kafka_python(bootstrap, topic, n, partition=0, from_offset=None):
    """Reads n records by assignment (from the earliest offset unless told), then checks the end offset."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        check_crcs=True,
    )
    try:
        tp = KTopicPartition(topic, partition)
        consumer.assign([tp])
        if from_offset is None:
            consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, from_offset)
        out = []
        deadline = time.monotonic() + DEADLINE_S
        while len(out) < n and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for m in records:
                    assert m.timestamp_type == CREATE_TIME, f"offset {m.offset}: timestamp type {m.timestamp_type}"
                    out.append((m.offset, m.key, m.value, [(k, v) for k, v in m.headers], m.timestamp))
        # Nothing beyond what was expected: one more poll returns no record.
        extra = [m.offset for rs in consumer.poll(timeout_ms=200).values() for m in rs]
        assert not extra, f"records beyond the expected {n}: offsets {extra[:5]}"
        return out
    finally:
        consumer.close()


def _confluent_headers(msg):
    return [(k, v) for k, v in (msg.headers() or [])]


def consume_confluent(bootstrap, topic, n, partition=0, from_offset=confluent_kafka.OFFSET_BEGINNING, **config):
    """Reads by assignment until the partition end after n records; fails on any error or extra record."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            # Required by the client; never used: no subscribe, no commit.
            "group.id": "strom-py-unused",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            **config,
        }
    )
    try:
        consumer.assign([CTopicPartition(topic, partition, from_offset)])
        out = []
        deadline = time.monotonic() + DEADLINE_S
        at_end = False
        while time.monotonic() < deadline and not (at_end and len(out) >= n):
            for m in consumer.consume(num_messages=1000, timeout=0.5):
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        at_end = True
                        continue
                    raise AssertionError(f"consume error: {m.error()}")
                at_end = False
                ts_type, ts = m.timestamp()
                assert ts_type == confluent_kafka.TIMESTAMP_CREATE_TIME, f"offset {m.offset()}: timestamp type {ts_type}"
                out.append((m.offset(), m.key(), m.value(), _confluent_headers(m), ts))
        assert at_end, f"no end of partition after {len(out)} records within {DEADLINE_S} s"
        return out
    finally:
        consumer.close()


# ---------------------------------------------------------------- checks


def check(consumed, n, start=0, first_offset=0):
    """Records start..start+n-1 at offsets first_offset.., in order, with no gap and no duplicate."""
    assert len(consumed) == n, (
        f"consumed {len(consumed)} records, expected {n}; "
        f"offsets {[c[0] for c in consumed[:3]]}..{[c[0] for c in consumed[-3:]]}"
    )
    for j, got in enumerate(consumed):
        want = expected(start + j, first_offset + j)
        if got != want:
            names = ["offset", "key", "value", "headers", "timestamp"]
            diffs = [f"{name}: got {g!r:.200} want {w!r:.200}" for name, g, w in zip(names, got, want) if g != w]
            raise AssertionError(f"record {j} (offset {got[0]}) differs: " + "; ".join(diffs))


def confluent_error(future):
    """The Kafka error code a confluent admin future fails with (None if it succeeds)."""
    try:
        future.result(30)
    except KafkaException as e:
        return e.args[0].code()
    return None
