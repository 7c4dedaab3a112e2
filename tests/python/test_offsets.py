"""ListOffsets with both clients: earliest, latest, max timestamp and by time; timestamp types.

Kafka's answer to a lookup by time t is the first offset (in offset order) whose
record timestamp is >= t, with that record's timestamp, or none (-1) when no
record is that late. The expected answers here are computed by brute force over
the timestamps produced, across several segments and with out-of-order
timestamps too.
"""

import time

import confluent_kafka
import kafka.errors as kerr
import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka import TopicPartition as CTopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KTopicPartition

from clients import BASE_TS, LOG_APPEND_TIME
from conftest import REPLICATION_FACTOR

ORDERED = "times-ordered"
ORDERED_N = 3_000
JUMBLED = "times-jumbled"
JUMBLED_N = 2_000
VALUE = b"v" * 1_000  # 3,000 of these fill about three 1 MiB segments


def ordered_ts(i):
    return BASE_TS + 10 * i


def jumbled_ts(i):
    # A permutation of 0..1999 (7919 is prime): every timestamp unique, order scrambled.
    return BASE_TS + 10 * ((i * 7919) % JUMBLED_N)


def first_offset_at_or_after(timestamps, t):
    """Kafka's answer by brute force: (offset, timestamp) or None."""
    for offset, ts in enumerate(timestamps):
        if ts >= t:
            return offset, ts
    return None


def produce_timed(bootstrap, topic, timestamps, partition=0):
    delivered = []
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.num.messages": 100})
    for i, ts in enumerate(timestamps):
        producer.produce(topic, VALUE, key=b"%d" % i, partition=partition, timestamp=ts, on_delivery=lambda err, msg: delivered.append((err, msg.offset())))
        producer.poll(0)
    assert producer.flush(60) == 0
    assert delivered == [(None, i) for i in range(len(timestamps))]


@pytest.fixture(scope="module")
def topics(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    futures = admin.create_topics(
        [
            NewTopic(ORDERED, 2, REPLICATION_FACTOR, config={"segment.bytes": "1048576"}),
            NewTopic(JUMBLED, 1, REPLICATION_FACTOR, config={"segment.bytes": "1048576"}),
        ]
    )
    for f in futures.values():
        f.result(30)
    ordered = [ordered_ts(i) for i in range(ORDERED_N)]
    jumbled = [jumbled_ts(i) for i in range(JUMBLED_N)]
    produce_timed(broker.bootstrap, ORDERED, ordered)
    produce_timed(broker.bootstrap, JUMBLED, jumbled)
    return {ORDERED: ordered, JUMBLED: jumbled}


@pytest.fixture
def consumer(broker):
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "strom-py-unused", "enable.auto.commit": False})
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def kconsumer(broker):
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False)
    try:
        yield c
    finally:
        c.close()


def targets(timestamps):
    """Times to look up: before everything, every exact timestamp of a sample, between records, after everything."""
    lo, hi = min(timestamps), max(timestamps)
    sample = sorted(set(timestamps[:: max(1, len(timestamps) // 60)] + [timestamps[0], timestamps[-1], lo, hi]))
    return [0, lo - 1] + sample + [t + 1 for t in sample] + [t - 1 for t in sample] + [hi + 1, hi + 10_000]


def test_log_spans_several_segments(broker, topics):
    # A precondition for the lookups below to cross segment boundaries.
    segments = sorted(broker.partition_dir(ORDERED, 0).glob("*.log"))
    assert len(segments) >= 3, f"expected the ordered topic to roll segments, found {segments}"


def test_earliest_and_latest(broker, topics, consumer, kconsumer):
    assert consumer.get_watermark_offsets(CTopicPartition(ORDERED, 0), timeout=10, cached=False) == (0, ORDERED_N)
    assert consumer.get_watermark_offsets(CTopicPartition(ORDERED, 1), timeout=10, cached=False) == (0, 0)
    assert consumer.get_watermark_offsets(CTopicPartition(JUMBLED, 0), timeout=10, cached=False) == (0, JUMBLED_N)

    tps = [KTopicPartition(ORDERED, 0), KTopicPartition(ORDERED, 1), KTopicPartition(JUMBLED, 0)]
    assert kconsumer.beginning_offsets(tps) == dict.fromkeys(tps, 0)
    assert kconsumer.end_offsets(tps) == {tps[0]: ORDERED_N, tps[1]: 0, tps[2]: JUMBLED_N}

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for spec, want in [(OffsetSpec.earliest(), 0), (OffsetSpec.latest(), ORDERED_N)]:
        result = admin.list_offsets({CTopicPartition(ORDERED, 0): spec})[CTopicPartition(ORDERED, 0)].result(30)
        assert result.offset == want, spec


def test_max_timestamp(broker, topics):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for topic, timestamps in topics.items():
        tp = CTopicPartition(topic, 0)
        result = admin.list_offsets({tp: OffsetSpec.max_timestamp()})[tp].result(30)
        newest = max(timestamps)
        assert (result.offset, result.timestamp) == (timestamps.index(newest), newest), topic


@pytest.mark.parametrize("topic", [ORDERED, JUMBLED])
def test_offsets_for_times_confluent(topics, consumer, topic):
    timestamps = topics[topic]
    wrong = []
    for t in targets(timestamps):
        found = consumer.offsets_for_times([CTopicPartition(topic, 0, t)], timeout=10)[0]
        assert found.error is None, found.error
        want = first_offset_at_or_after(timestamps, t)
        # librdkafka reports "no such record" as OFFSET_END (-1).
        if found.offset != (want[0] if want else confluent_kafka.OFFSET_END):
            wrong.append((t - BASE_TS, found.offset, want))
    assert not wrong, f"(t - BASE_TS, got offset, want (offset, timestamp)): {wrong[:10]}"
    # An empty partition has no offset for any time.
    if topic == ORDERED:
        assert consumer.offsets_for_times([CTopicPartition(topic, 1, BASE_TS)], timeout=10)[0].offset == confluent_kafka.OFFSET_END


@pytest.mark.parametrize("topic", [ORDERED, JUMBLED])
def test_offsets_for_times_kafka_python(topics, kconsumer, topic):
    timestamps = topics[topic]
    tp = KTopicPartition(topic, 0)
    wrong = []
    for t in targets(timestamps):
        found = kconsumer.offsets_for_times({tp: t})[tp]
        got = None if found is None else (found.offset, found.timestamp)
        want = first_offset_at_or_after(timestamps, t)
        if got != want:
            wrong.append((t - BASE_TS, got, want))
    assert not wrong, f"(t - BASE_TS, got, want) as (offset, timestamp): {wrong[:10]}"
    if topic == ORDERED:
        empty = KTopicPartition(topic, 1)
        assert kconsumer.offsets_for_times({empty: BASE_TS})[empty] is None


def test_log_append_time_topic(broker):
    """message.timestamp.type=LogAppendTime: the broker's clock replaces the producer's timestamps."""
    topic = "log-append-time"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, 1, REPLICATION_FACTOR, config={"message.timestamp.type": "LogAppendTime"})])[topic].result(30)
    before = int(time.time() * 1000)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for i in range(10):
        producer.send(topic, b"%d" % i, partition=0, timestamp_ms=BASE_TS + i)
    producer.flush(30)
    producer.close()
    after = int(time.time() * 1000)

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, auto_offset_reset="earliest")
    try:
        consumer.assign([KTopicPartition(topic, 0)])
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 10 and time.monotonic() < deadline:
            got += [m for rs in consumer.poll(timeout_ms=500).values() for m in rs]
    finally:
        consumer.close()
    assert [m.value for m in got] == [b"%d" % i for i in range(10)]
    for m in got:
        assert m.timestamp_type == LOG_APPEND_TIME, m
        assert before - 1_000 <= m.timestamp <= after + 1_000, (m.offset, m.timestamp, before, after)


def test_timestamps_outside_the_allowed_window_are_refused(broker):
    """message.timestamp.before/after.max.ms: INVALID_TIMESTAMP, and nothing is appended."""
    topic = "timestamp-window"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    config = {"message.timestamp.before.max.ms": "60000", "message.timestamp.after.max.ms": "60000"}
    admin.create_topics([NewTopic(topic, 1, REPLICATION_FACTOR, config=config)])[topic].result(30)
    now = int(time.time() * 1000)
    for ts in [now - 3_600_000, now + 3_600_000]:
        errors = []
        producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": False, "retries": 0})
        producer.produce(topic, b"x", partition=0, timestamp=ts, on_delivery=lambda err, msg: errors.append(err))
        assert producer.flush(30) == 0
        assert len(errors) == 1 and errors[0] is not None and errors[0].code() == KafkaError.INVALID_TIMESTAMP, (ts - now, errors)

        kp = KafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False, retries=0)
        try:
            with pytest.raises(kerr.InvalidTimestampError):
                kp.send(topic, b"x", partition=0, timestamp_ms=ts).get(timeout=30)
        finally:
            kp.close(timeout=5)
    # A timestamp inside the window is accepted at offset 0: nothing was appended before.
    delivered = []
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce(topic, b"ok", partition=0, timestamp=now, on_delivery=lambda err, msg: delivered.append((err, msg.offset())))
    assert producer.flush(30) == 0
    assert delivered == [(None, 0)]
