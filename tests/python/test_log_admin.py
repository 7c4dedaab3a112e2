"""DeleteRecords and DescribeLogDirs with both clients.

DeleteRecords moves a partition's log start offset (Kafka's low watermark): the
records below it can no longer be read, ListOffsets earliest answers the new
start, and a consumer positioned below it gets OFFSET_OUT_OF_RANGE, handled by
its auto.offset.reset. DescribeLogDirs (kafka-python only: confluent-kafka
2.16 has no describe_log_dirs) reports the size each partition takes on disk.

In the cluster pass every node answers DescribeLogDirs for its own replicas;
the sizes checked are node 1's, read once every replica of the asked partitions
reports the same size and no lag (a follower's copy catches up after the
producer's answer).
"""

import time

import confluent_kafka
import kafka.errors as kerr
import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka import TopicPartition as CTopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec
from kafka import KafkaConsumer
from kafka import TopicPartition as KTopicPartition

from clients import DEADLINE_S, check, confluent_error, consume_confluent, consume_kafka_python, produce_confluent, produce_kafka_python
from conftest import CLUSTER_NODES, NODE_IDS, REPLICATION_FACTOR, wait_until


def create_topic(admin, topic, partitions=1, configs=None):
    admin.create_topics([NewTopic(topic, partitions, REPLICATION_FACTOR, config=configs or {})])[topic].result(30)


def delete_confluent(admin, topic, partition, offset):
    """confluent-kafka DeleteRecords: the new low watermark."""
    tp = CTopicPartition(topic, partition, offset)
    return admin.delete_records([tp])[tp].result(30).low_watermark


def delete_kafka_python(kadmin, topic, partition, offset):
    tp = KTopicPartition(topic, partition)
    result = kadmin.delete_records({tp: offset})[tp]
    assert result["error_code"] == 0, result
    return result["low_watermark"]


def watermarks(bootstrap, topic, partition=0):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "strom-py-unused"})
    try:
        return consumer.get_watermark_offsets(CTopicPartition(topic, partition), timeout=10, cached=False)
    finally:
        consumer.close()


def earliest(admin, kconsumer, topic, partition=0):
    """ListOffsets earliest from both clients; fails if they disagree."""
    tp = CTopicPartition(topic, partition)
    offset = admin.list_offsets({tp: OffsetSpec.earliest()})[tp].result(30).offset
    ktp = KTopicPartition(topic, partition)
    assert kconsumer.beginning_offsets([ktp]) == {ktp: offset}
    return offset


@pytest.fixture
def kconsumer(broker):
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False)
    try:
        yield c
    finally:
        c.close()


# ---------------------------------------------------------------- DeleteRecords


def test_delete_records_moves_the_log_start(broker, admin, kadmin, kconsumer):
    topic = "deleted-below"
    create_topic(admin, topic, partitions=2)
    produce_confluent(broker.bootstrap, topic, 1_000)
    produce_kafka_python(broker.bootstrap, topic, 500, partition=1)

    assert delete_confluent(admin, topic, 0, 300) == 300
    assert watermarks(broker.bootstrap, topic) == (300, 1_000)
    assert earliest(admin, kconsumer, topic) == 300
    assert delete_kafka_python(kadmin, topic, 1, 120) == 120
    assert watermarks(broker.bootstrap, topic, 1) == (120, 500)
    assert earliest(admin, kconsumer, topic, 1) == 120

    # What is left reads back intact, from the new start, with both clients.
    check(consume_confluent(broker.bootstrap, topic, 700), 700, start=300, first_offset=300)
    check(consume_kafka_python(broker.bootstrap, topic, 380, partition=1), 380, start=120, first_offset=120)

    # Moving the start backwards is no error and changes nothing.
    assert delete_confluent(admin, topic, 0, 100) == 300
    assert delete_kafka_python(kadmin, topic, 1, 0) == 120
    # The end is where it was: new records continue the offsets.
    assert produce_kafka_python(broker.bootstrap, topic, 5, start=1_000) == list(range(1_000, 1_005))
    assert watermarks(broker.bootstrap, topic) == (300, 1_005)


def test_delete_records_up_to_the_high_watermark(broker, admin, kadmin, kconsumer):
    topic = "deleted-all"
    create_topic(admin, topic, partitions=2)
    produce_confluent(broker.bootstrap, topic, 200)
    produce_confluent(broker.bootstrap, topic, 100, partition=1)
    # -1 (OFFSET_END in confluent-kafka) means the high watermark.
    assert delete_confluent(admin, topic, 0, confluent_kafka.OFFSET_END) == 200
    assert delete_kafka_python(kadmin, topic, 1, -1) == 100
    assert watermarks(broker.bootstrap, topic) == (200, 200)
    assert earliest(admin, kconsumer, topic, 1) == 100
    # The partition is empty but keeps its offsets.
    assert consume_confluent(broker.bootstrap, topic, 0) == []
    assert produce_confluent(broker.bootstrap, topic, 1, start=200) == [200]
    check(consume_kafka_python(broker.bootstrap, topic, 1), 1, start=200, first_offset=200)


def test_delete_records_errors(broker, admin, kadmin):
    topic = "delete-errors"
    create_topic(admin, topic)
    produce_confluent(broker.bootstrap, topic, 50)
    # Above the high watermark.
    tp = CTopicPartition(topic, 0, 51)
    assert confluent_error(admin.delete_records([tp])[tp]) == KafkaError.OFFSET_OUT_OF_RANGE
    with pytest.raises(kerr.OffsetOutOfRangeError):
        kadmin.delete_records({KTopicPartition(topic, 0): 1_000})
    # An unknown partition, sent to the broker anyway (both clients stop it themselves otherwise).
    with pytest.raises(kerr.UnknownTopicOrPartitionError):
        kadmin.delete_records({KTopicPartition(topic, 5): 1}, partition_leader_id=1)
    # A compacted topic keeps its records: Kafka refuses with POLICY_VIOLATION.
    create_topic(admin, "delete-compacted", configs={"cleanup.policy": "compact"})
    produce_confluent(broker.bootstrap, "delete-compacted", 10)
    tp = CTopicPartition("delete-compacted", 0, 5)
    assert confluent_error(admin.delete_records([tp])[tp]) == KafkaError.POLICY_VIOLATION
    with pytest.raises(kerr.PolicyViolationError):
        kadmin.delete_records({KTopicPartition("delete-compacted", 0): 5})
    assert watermarks(broker.bootstrap, topic) == (0, 50)
    assert watermarks(broker.bootstrap, "delete-compacted") == (0, 10)


def first_confluent_event(consumer):
    """The first record or error a confluent consumer delivers."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        m = consumer.poll(0.5)
        if m is not None:
            return m
    raise AssertionError(f"nothing consumed within {DEADLINE_S} s")


def test_reading_below_the_log_start(broker, admin):
    """A position below the log start is OFFSET_OUT_OF_RANGE: earliest resets to the new start, none fails."""
    topic = "read-below-start"
    create_topic(admin, topic)
    produce_confluent(broker.bootstrap, topic, 400)
    assert delete_confluent(admin, topic, 0, 250) == 250
    config = {"bootstrap.servers": broker.bootstrap, "group.id": "strom-py-unused", "enable.auto.commit": False}

    # confluent-kafka, earliest: resets to 250 and reads every remaining record.
    for position in [0, 249]:
        check(consume_confluent(broker.bootstrap, topic, 150, from_offset=position, **{"auto.offset.reset": "earliest"}), 150, start=250, first_offset=250)
    # latest: resets to the end, nothing read.
    consumer = Consumer({**config, "auto.offset.reset": "latest", "enable.partition.eof": True})
    try:
        consumer.assign([CTopicPartition(topic, 0, 0)])
        m = first_confluent_event(consumer)
        assert m.error() is not None and m.error().code() == KafkaError._PARTITION_EOF, m.error() or m.offset()
        assert m.offset() == 400
    finally:
        consumer.close()
    # error: the broker's OFFSET_OUT_OF_RANGE surfaces as a failed automatic reset.
    consumer = Consumer({**config, "auto.offset.reset": "error"})
    try:
        consumer.assign([CTopicPartition(topic, 0, 10)])
        m = first_confluent_event(consumer)
        assert m.error() is not None, f"read offset {m.offset()} below the log start"
        assert m.error().code() == KafkaError._AUTO_OFFSET_RESET and "out of range" in m.error().str().lower(), m.error()
    finally:
        consumer.close()

    # kafka-python, earliest (consume_kafka_python resets with earliest).
    check(consume_kafka_python(broker.bootstrap, topic, 150, from_offset=0), 150, start=250, first_offset=250)
    # none: OffsetOutOfRangeError from poll.
    kc = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="none")
    try:
        tp = KTopicPartition(topic, 0)
        kc.assign([tp])
        kc.seek(tp, 100)
        with pytest.raises(kerr.OffsetOutOfRangeError):
            deadline = time.monotonic() + DEADLINE_S
            while time.monotonic() < deadline:
                assert not kc.poll(timeout_ms=500), "records below the log start"
        # seek_to_beginning asks the broker for the earliest offset: the new start.
        kc.seek_to_beginning(tp)
        assert kc.position(tp) == 250
    finally:
        kc.close()


def test_delete_records_survives_a_restart(broker_factory):
    broker = broker_factory()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    create_topic(admin, "deleted-then-restarted")
    produce_confluent(broker.bootstrap, "deleted-then-restarted", 300)
    assert delete_confluent(admin, "deleted-then-restarted", 0, 123) == 123
    broker.kill()
    broker = broker_factory()
    assert watermarks(broker.bootstrap, "deleted-then-restarted") == (123, 300)
    check(consume_kafka_python(broker.bootstrap, "deleted-then-restarted", 177), 177, start=123, first_offset=123)
    broker.stop()


# ---------------------------------------------------------------- DescribeLogDirs


def node_log_dirs(answer):
    """One node's DescribeLogDirs answer: (log dir, {(topic, partition): (size in bytes, offset lag)}, total and usable bytes)."""
    (log_dir,) = answer["log_dirs"]
    assert log_dir["error_code"] == 0, log_dir
    sizes = {}
    for t in log_dir["topics"]:
        for p in t["partitions"]:
            assert not p["is_future_key"], p
            sizes[(t["name"], p["partition_index"])] = (p["partition_size"], p["offset_lag"])
    return log_dir["log_dir"], sizes, log_dir["total_bytes"], log_dir["usable_bytes"]


def log_dir_sizes(kadmin, topics=None):
    """kafka-python DescribeLogDirs: node 1's (log dir, {(topic, partition): size in bytes}, total and usable bytes).

    It asks every node; in a cluster, until every node holds the same partitions at the same
    sizes with no offset lag, for up to DEADLINE_S.
    """
    answers = {}

    def replicas_agree():
        answers.clear()
        answers.update((a["broker"], node_log_dirs(a)) for a in kadmin.describe_log_dirs(topics))
        assert sorted(answers) == NODE_IDS, f"DescribeLogDirs answered by nodes {sorted(answers)}"
        return all(dirs[1] == answers[1][1] for dirs in answers.values()) and all(lag == 0 for _, lag in answers[1][1].values())

    agreed = wait_until(replicas_agree, DEADLINE_S if CLUSTER_NODES else 0)
    path, sizes, total, usable = answers[1]
    lagging = {tp: lag for tp, (_, lag) in sizes.items() if lag != 0}
    assert not lagging, f"node 1 reports offset lags {lagging}; every node: {answers}"
    assert agreed, f"the replicas' sizes differ after {DEADLINE_S} s: {answers}"
    return path, {tp: size for tp, (size, _) in sizes.items()}, total, usable


def test_describe_log_dirs_sizes_grow(broker, admin, kadmin):
    topic = "log-dir-sizes"
    create_topic(admin, topic, partitions=3)
    path, sizes, total, usable = log_dir_sizes(kadmin, [topic])
    assert broker.data_dir.samefile(path), path
    assert total >= usable > 0, (total, usable)
    assert {tp: size for tp, size in sizes.items()} == {(topic, 0): 0, (topic, 1): 0, (topic, 2): 0}

    produce_confluent(broker.bootstrap, topic, 500)
    produce_kafka_python(broker.bootstrap, topic, 200, partition=1)
    _, after, _, _ = log_dir_sizes(kadmin, [topic])
    assert after[(topic, 0)] > after[(topic, 1)] > 0 and after[(topic, 2)] == 0, after

    produce_kafka_python(broker.bootstrap, topic, 300, partition=1, start=200)
    _, grown, _, _ = log_dir_sizes(kadmin, [topic])
    assert grown[(topic, 1)] > after[(topic, 1)], (after, grown)
    assert grown[(topic, 0)] == after[(topic, 0)]
    # The size is what the partition's segment files hold.
    on_disk = sum(f.stat().st_size for f in (broker.data_dir / f"{topic}-1").glob("*.log"))
    assert grown[(topic, 1)] == on_disk

    # Asking for one partition answers for that one; asking for all includes this topic.
    _, one, _, _ = log_dir_sizes(kadmin, {topic: [2]})
    assert one == {(topic, 2): 0}
    _, everything, _, _ = log_dir_sizes(kadmin)
    assert {tp: s for tp, s in everything.items() if tp[0] == topic} == grown


def test_deleted_records_free_whole_segments(broker, admin, kadmin):
    """Segments wholly below the new log start are deleted: the partition's size shrinks."""
    topic = "log-dir-shrinks"
    create_topic(admin, topic, configs={"segment.bytes": "1048576"})
    n = 4_000
    # Idempotent, and every delivery report checked: the record of value i must
    # be at offset i for the reads below to mean anything (a plain producer's
    # retry after a timeout may store a batch twice, as in Kafka).
    delivered, errors = {}, []

    def report(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered[int(msg.value()[:6])] = msg.offset()

    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5, "enable.idempotence": True})
    for i in range(n):
        producer.produce(topic, b"%06d" % i + b"." * 1_000, partition=0, on_delivery=report)
        producer.poll(0)
    assert producer.flush(DEADLINE_S) == 0
    assert not errors, f"{len(errors)} delivery errors, first ones: {errors[:3]}"
    assert delivered == {i: i for i in range(n)}, f"values stored away from their offsets: {sorted((i, o) for i, o in delivered.items() if i != o)[:5]}"
    _, before, _, _ = log_dir_sizes(kadmin, [topic])
    assert before[(topic, 0)] > n * 1_000, before
    assert len(list((broker.data_dir / f"{topic}-0").glob("*.log"))) >= 3

    assert delete_confluent(admin, topic, 0, n - 100) == n - 100
    assert wait_until(lambda: log_dir_sizes(kadmin, [topic])[1][(topic, 0)] < before[(topic, 0)] // 2, timeout_s=30), (
        f"size still {log_dir_sizes(kadmin, [topic])[1]} after deleting {n - 100} of {n} records (was {before})"
    )
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "strom-py-unused", "enable.partition.eof": True})
    try:
        consumer.assign([CTopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
        got = []
        while True:
            m = first_confluent_event(consumer)
            if m.error() is not None:
                assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                # A leader elected meanwhile may show a stale high watermark for a moment.
                if m.offset() >= n:
                    break
                continue
            got.append((m.offset(), m.value()[:6]))
        assert got == [(i, b"%06d" % i) for i in range(n - 100, n)], f"{len(got)} records read: {got[:2]} ... {got[-2:]}"
    finally:
        consumer.close()
