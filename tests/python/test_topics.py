"""Auto-created topics, several partitions, and the produce/fetch errors Kafka answers with.

The module's broker keeps auto-creation on (the default) with `num.partitions=3`.
"""

import time

import kafka.errors as kerr
import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka import TopicPartition as CTopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KTopicPartition

from clients import check, consume_confluent, consume_kafka_python, expected, produce_confluent, record
from conftest import NODE_IDS, REPLICATION_FACTOR, module_broker

broker = module_broker("num.partitions=3")


def test_auto_created_topics_get_num_partitions(broker):
    # librdkafka asks for the topic in Metadata (allow_auto_topic_creation) when it produces.
    assert produce_confluent(broker.bootstrap, "auto-ck", 10) == list(range(10))
    kp = KafkaProducer(bootstrap_servers=broker.bootstrap)
    try:
        kp.send("auto-kp", b"v", partition=0).get(timeout=30)
        assert kp.partitions_for("auto-kp") == {0, 1, 2}
    finally:
        kp.close(timeout=5)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for topic in ["auto-ck", "auto-kp"]:
        metadata = admin.list_topics(topic=topic, timeout=10).topics[topic]
        assert metadata.error is None
        assert sorted(metadata.partitions) == [0, 1, 2], topic
        # default.replication.factor: on the one broker, or on every node of the cluster pass.
        for p in metadata.partitions.values():
            assert (p.leader in NODE_IDS, sorted(p.replicas), sorted(p.isrs)) == (True, NODE_IDS, NODE_IDS), (topic, p)
    check(consume_confluent(broker.bootstrap, "auto-ck", 10), 10)


def test_illegal_topic_name_is_not_auto_created(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    metadata = admin.list_topics(topic="bad name!", timeout=10)
    assert metadata.topics["bad name!"].error.code() == KafkaError.TOPIC_EXCEPTION
    assert "bad name!" not in admin.list_topics(timeout=10).topics


def test_keyed_records_across_partitions_kafka_python_to_confluent(broker):
    """Records go to the partition the producer chose, each partition in send order from offset 0."""
    topic = "keyed-kp"
    n = 3_000
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5, compression_type="gzip")
    try:
        futures = []
        for i in range(n):
            key, value, headers, ts = record(i)
            futures.append(producer.send(topic, key=b"k%d" % i, value=value, headers=headers, timestamp_ms=ts))
        producer.flush(60)
        placed = [(f.get(timeout=60).partition, f.get(timeout=60).offset) for f in futures]
    finally:
        producer.close(timeout=10)
    by_partition = {}
    for i, (partition, offset) in enumerate(placed):
        by_partition.setdefault(partition, []).append((i, offset))
    assert sorted(by_partition) == [0, 1, 2], "murmur2 over 3,000 keys uses every partition"
    for partition, sent in by_partition.items():
        assert [offset for _, offset in sent] == list(range(len(sent))), f"partition {partition} offsets"
        got = consume_confluent(broker.bootstrap, topic, len(sent), partition=partition)
        want = [(offset, b"k%d" % i) + expected(i)[2:] for i, offset in sent]
        assert got == want, f"partition {partition}"


def test_keyed_records_across_partitions_confluent_to_kafka_python(broker):
    topic = "keyed-ck"
    n = 3_000
    placed = {}

    def report(i, err, msg):
        assert err is None, err
        placed[i] = (msg.partition(), msg.offset())

    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5, "partitioner": "murmur2_random"})
    for i in range(n):
        _, value, headers, ts = record(i)
        producer.produce(topic, key=b"k%d" % i, value=value, headers=headers, timestamp=ts, on_delivery=lambda err, msg, i=i: report(i, err, msg))
        producer.poll(0)
    assert producer.flush(60) == 0
    assert len(placed) == n
    for partition in range(3):
        sent = sorted((offset, i) for i, (p, offset) in placed.items() if p == partition)
        assert sent, f"nothing went to partition {partition}"
        assert [offset for offset, _ in sent] == list(range(len(sent))), f"partition {partition} offsets"
        got = consume_kafka_python(broker.bootstrap, topic, len(sent), partition=partition)
        assert got == [(offset, b"k%d" % i) + expected(i)[2:] for offset, i in sent], f"partition {partition}"


def test_fetch_beyond_the_log_is_out_of_range(broker):
    topic = "out-of-range"
    produce_confluent(broker.bootstrap, topic, 10)
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": "strom-py-unused",
            "enable.auto.commit": False,
            "auto.offset.reset": "error",
        }
    )
    try:
        consumer.assign([CTopicPartition(topic, 0, 1_000)])
        error = None
        deadline = time.monotonic() + 30
        while error is None and time.monotonic() < deadline:
            m = consumer.poll(0.5)
            if m is not None:
                assert m.error() is not None, f"read offset {m.offset()} beyond the log end"
                error = m.error()
        # librdkafka reports the broker's OFFSET_OUT_OF_RANGE as a failed automatic offset reset.
        assert error is not None and error.code() == KafkaError._AUTO_OFFSET_RESET, error
        assert "out of range" in error.str().lower(), error
    finally:
        consumer.close()

    kc = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, auto_offset_reset="none")
    try:
        tp = KTopicPartition(topic, 0)
        kc.assign([tp])
        kc.seek(tp, 1_000)
        with pytest.raises(kerr.OffsetOutOfRangeError):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                assert not kc.poll(timeout_ms=500), "records beyond the log end"
    finally:
        kc.close()
    # Reading exactly at the end is not an error: it waits for records.
    assert consume_confluent(broker.bootstrap, topic, 0, from_offset=10) == []


def test_record_larger_than_max_message_bytes_is_refused(broker):
    topic = "small-messages"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, 1, REPLICATION_FACTOR, config={"max.message.bytes": "10000"})])[topic].result(30)
    big = bytes(range(256)) * 80  # 20,480 bytes, sent uncompressed
    errors = []
    producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": False, "retries": 0})
    producer.produce(topic, big, partition=0, on_delivery=lambda err, msg: errors.append(err))
    assert producer.flush(30) == 0
    assert len(errors) == 1 and errors[0] is not None and errors[0].code() == KafkaError.MSG_SIZE_TOO_LARGE, errors

    kp = KafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False, retries=0)
    try:
        with pytest.raises(kerr.MessageSizeTooLargeError):
            kp.send(topic, big, partition=0).get(timeout=30)
        assert kp.send(topic, b"small", partition=0).get(timeout=30).offset == 0, "the refused batch took an offset"
    finally:
        kp.close(timeout=5)
    low_high = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "strom-py-unused"})
    try:
        assert low_high.get_watermark_offsets(CTopicPartition(topic, 0), timeout=10, cached=False) == (0, 1)
    finally:
        low_high.close()
