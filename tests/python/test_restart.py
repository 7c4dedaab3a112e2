"""Restarts on the same data directory: after SIGKILL every acknowledged record is there.

The brokers flush every message (`log.flush.interval.messages=1`), so an
acknowledged acks=all record is on disk when the broker dies. After a restart the
log holds every acknowledged record at its acknowledged offset, nothing is
duplicated or reordered, and new produces continue at the next offset.
"""

import threading
import time

from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as CTopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource, NewTopic

from clients import check, consume_confluent, consume_kafka_python, expected, produce_confluent, produce_kafka_python, record

FLUSH_EVERY_MESSAGE = ["log.flush.interval.messages=1"]


def watermarks(bootstrap, topic, partition=0):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "strom-py-unused"})
    try:
        return consumer.get_watermark_offsets(CTopicPartition(topic, partition), timeout=10, cached=False)
    finally:
        consumer.close()


def test_acknowledged_records_survive_kill_9(broker_factory):
    broker = broker_factory(FLUSH_EVERY_MESSAGE)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("durable", 3, 1, config={"retention.ms": "86400000"})])["durable"].result(30)
    n = 3_000
    assert produce_confluent(broker.bootstrap, "durable", n, acks="all", **{"enable.idempotence": True, "compression.type": "zstd"}) == list(range(n))
    assert produce_kafka_python(broker.bootstrap, "durable", 500, partition=2, compression_type="gzip") == list(range(500))
    del admin
    broker.kill()

    broker = broker_factory(FLUSH_EVERY_MESSAGE)
    # The topic comes back with its partitions and its config override.
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    metadata = admin.list_topics(topic="durable", timeout=10).topics["durable"]
    assert metadata.error is None and sorted(metadata.partitions) == [0, 1, 2]
    entries = next(iter(admin.describe_configs([ConfigResource("topic", "durable")]).values())).result(30)
    assert (entries["retention.ms"].value, entries["retention.ms"].source) == ("86400000", ConfigSource.DYNAMIC_TOPIC_CONFIG.value)

    check(consume_confluent(broker.bootstrap, "durable", n), n)
    check(consume_kafka_python(broker.bootstrap, "durable", 500, partition=2), 500)
    assert watermarks(broker.bootstrap, "durable", 1) == (0, 0)

    # Offsets continue where they were, for a new idempotent producer of each stack.
    assert produce_confluent(broker.bootstrap, "durable", 10, start=n, **{"enable.idempotence": True}) == list(range(n, n + 10))
    assert produce_kafka_python(broker.bootstrap, "durable", 10, start=n + 10) == list(range(n + 10, n + 20))
    assert produce_kafka_python(broker.bootstrap, "durable", 5, partition=2, start=500) == list(range(500, 505))
    check(consume_confluent(broker.bootstrap, "durable", n + 20), n + 20)
    check(consume_kafka_python(broker.bootstrap, "durable", 505, partition=2), 505)
    broker.stop()


def test_kill_9_while_producing(broker_factory):
    """SIGKILL in the middle of a stream: the log after restart is a prefix of what was sent,
    at the offsets sent, containing every acknowledged record."""
    broker = broker_factory(FLUSH_EVERY_MESSAGE)
    topic = "killed-mid-stream"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})  # kept alive until its future resolves
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    del admin
    acked = {}  # record index -> acknowledged offset
    failed = []
    lock = threading.Lock()

    def report(i, err, msg):
        with lock:
            if err is None:
                acked[i] = msg.offset()
            else:
                failed.append(err)

    producer = Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "batch.num.messages": 50,
            "message.timeout.ms": 3_000,
            "reconnect.backoff.max.ms": 200,
        }
    )
    sent = 0
    kill_after_acks = 2_000
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        key, value, headers, ts = record(sent)
        try:
            producer.produce(topic, key=key, value=value, headers=headers, partition=0, timestamp=ts, on_delivery=lambda err, msg, i=sent: report(i, err, msg))
            sent += 1
        except BufferError:
            pass
        producer.poll(0 if sent % 20 else 0.001)
        with lock:
            if len(acked) >= kill_after_acks:
                break
    assert len(acked) >= kill_after_acks, f"only {len(acked)} acknowledgements within 60 s"
    broker.kill()  # records are still in flight
    producer.flush(15)  # what was not acknowledged fails by message.timeout.ms
    del producer
    acked_offsets = dict(acked)
    assert all(acked_offsets[i] == i for i in acked_offsets), "acknowledged offsets are not the send order"
    assert sent > len(acked_offsets), "the kill came after everything was acknowledged: nothing was in flight"

    broker = broker_factory(FLUSH_EVERY_MESSAGE)
    low, high = watermarks(broker.bootstrap, topic)
    assert low == 0
    assert max(acked_offsets) < high <= sent, f"high watermark {high}: {len(acked_offsets)} acknowledged, {sent} sent"
    consumed = consume_confluent(broker.bootstrap, topic, high)
    check(consumed, high)  # records 0..high-1 at offsets 0..high-1: a prefix, no gap, no duplicate
    # Producing continues at the high watermark.
    assert produce_confluent(broker.bootstrap, topic, 3, start=high, **{"enable.idempotence": True}) == [high, high + 1, high + 2]
    assert consume_kafka_python(broker.bootstrap, topic, 3, from_offset=high) == [expected(high + j, high + j) for j in range(3)]
    broker.stop()


def test_clean_restart_keeps_everything(broker_factory):
    """SIGTERM exits 0; the next start has every record, and offsets continue."""
    broker = broker_factory()
    n = 2_000
    produce_confluent(broker.bootstrap, "clean", n, **{"compression.type": "lz4"})
    broker.stop()
    assert broker.returncode == 0
    broker = broker_factory()
    assert watermarks(broker.bootstrap, "clean") == (0, n)
    assert produce_kafka_python(broker.bootstrap, "clean", 1, start=n) == [n]
    check(consume_kafka_python(broker.bootstrap, "clean", n + 1), n + 1)
    broker.stop()
