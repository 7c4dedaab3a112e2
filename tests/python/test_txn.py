"""Transactions with confluent-kafka and kafka-python: commit and abort across
three topics, read_committed against read_uncommitted consumers of both
stacks, offsets sent to a transaction, and a kill -9 of the broker in the
middle of a transaction (all or nothing after the restart).
"""

import time

from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka import TopicPartition as CTopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KTopicPartition

from conftest import REPLICATION_FACTOR

TOPICS = ["txn-orders", "txn-payments", "txn-shipments"]
DEADLINE_S = 30


def create_topics(bootstrap, names):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, 1, REPLICATION_FACTOR) for name in names])
    for future in futures.values():
        future.result(30)


def txn_producer(bootstrap, transactional_id, timeout_ms=60_000):
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": transactional_id, "transaction.timeout.ms": timeout_ms, "linger.ms": 1})
    producer.init_transactions(30)
    return producer


def send_all(producer, topics, prefix, n):
    for topic in topics:
        for i in range(n):
            producer.produce(topic, value=f"{prefix}-{i}".encode(), partition=0)
    assert producer.flush(30) == 0


def expected(prefix, n):
    return [f"{prefix}-{i}" for i in range(n)]


def read_confluent(bootstrap, topic, isolation):
    """Values of `topic`/0 from the start to the end librdkafka reports (the LSO for read_committed)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "strom-py-txn", "enable.auto.commit": False, "enable.partition.eof": True, "isolation.level": isolation})
    try:
        consumer.assign([CTopicPartition(topic, 0, 0)])
        out = []
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                return out
            out.append(msg.value().decode())
        raise AssertionError(f"{isolation} consumer of {topic} did not reach the end")
    finally:
        consumer.close()


def read_kafka_python(bootstrap, topic, isolation):
    """Values of `topic`/0 up to its end offset as kafka-python sees it (the LSO for read_committed)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation, enable_auto_commit=False)
    try:
        tp = KTopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        out = []
        deadline = time.monotonic() + DEADLINE_S
        while consumer.position(tp) < end:
            assert time.monotonic() < deadline, f"{isolation} consumer of {topic} stuck at {consumer.position(tp)} < {end}"
            for records in consumer.poll(timeout_ms=200).values():
                out.extend(r.value.decode() for r in records)
        return out
    finally:
        consumer.close()


def test_txn_commit_and_abort_across_three_topics(broker):
    create_topics(broker.bootstrap, TOPICS)
    producer = txn_producer(broker.bootstrap, "py-three-topics")
    producer.begin_transaction()
    send_all(producer, TOPICS, "first", 15)
    producer.commit_transaction(30)
    producer.begin_transaction()
    send_all(producer, TOPICS, "aborted", 15)
    producer.abort_transaction(30)
    producer.begin_transaction()
    send_all(producer, TOPICS, "second", 15)
    producer.commit_transaction(30)

    committed = expected("first", 15) + expected("second", 15)
    everything = expected("first", 15) + expected("aborted", 15) + expected("second", 15)
    for topic in TOPICS:
        assert read_confluent(broker.bootstrap, topic, "read_committed") == committed
        assert read_confluent(broker.bootstrap, topic, "read_uncommitted") == everything
        assert read_kafka_python(broker.bootstrap, topic, "read_committed") == committed
        assert read_kafka_python(broker.bootstrap, topic, "read_uncommitted") == everything


def test_txn_kafka_python_producer(broker):
    create_topics(broker.bootstrap, ["txn-kp"])
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id="kp-txn", linger_ms=1)
    producer.init_transactions()
    producer.begin_transaction()
    for i in range(5):
        producer.send("txn-kp", value=f"kept-{i}".encode(), partition=0)
    producer.commit_transaction()
    producer.begin_transaction()
    for i in range(5):
        producer.send("txn-kp", value=f"dropped-{i}".encode(), partition=0)
    # Sent before the abort (an abort drops what is still unsent).
    producer.flush()
    producer.abort_transaction()
    producer.close()
    assert read_confluent(broker.bootstrap, "txn-kp", "read_committed") == expected("kept", 5)
    assert read_kafka_python(broker.bootstrap, "txn-kp", "read_committed") == expected("kept", 5)
    assert len(read_kafka_python(broker.bootstrap, "txn-kp", "read_uncommitted")) == 10


def test_txn_offsets_visible_only_on_commit(broker):
    create_topics(broker.bootstrap, ["txn-in", "txn-out"])
    # read_uncommitted: OffsetFetch without require_stable, so the committed
    # offset can be read while a transaction holds a new one (a read_committed
    # consumer waits on UNSTABLE_OFFSET_COMMIT until the transaction ends).
    group = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "py-eos", "enable.auto.commit": False, "isolation.level": "read_uncommitted"})
    try:
        metadata = group.consumer_group_metadata()
        producer = txn_producer(broker.bootstrap, "py-eos")

        def committed():
            return group.committed([CTopicPartition("txn-in", 0)], timeout=10)[0].offset

        producer.begin_transaction()
        send_all(producer, ["txn-out"], "aborted", 2)
        producer.send_offsets_to_transaction([CTopicPartition("txn-in", 0, 5)], metadata, 30)
        producer.abort_transaction(30)
        assert committed() < 0

        producer.begin_transaction()
        send_all(producer, ["txn-out"], "committed", 2)
        producer.send_offsets_to_transaction([CTopicPartition("txn-in", 0, 9)], metadata, 30)
        assert committed() < 0
        producer.commit_transaction(30)
        assert committed() == 9
        assert read_confluent(broker.bootstrap, "txn-out", "read_committed") == expected("committed", 2)
    finally:
        group.close()


def test_txn_kill_9_mid_transaction(broker_factory):
    broker = broker_factory()
    create_topics(broker.bootstrap, TOPICS)
    producer = txn_producer(broker.bootstrap, "py-crash")
    producer.begin_transaction()
    send_all(producer, TOPICS, "done", 10)
    producer.commit_transaction(30)
    producer.begin_transaction()
    send_all(producer, TOPICS, "open", 10)
    broker.kill()
    del producer

    broker = broker_factory()
    for topic in TOPICS:
        assert read_confluent(broker.bootstrap, topic, "read_committed") == expected("done", 10)
    # The producer's successor aborts the open transaction at once.
    successor = txn_producer(broker.bootstrap, "py-crash")
    successor.begin_transaction()
    send_all(successor, TOPICS, "next", 10)
    successor.commit_transaction(30)
    for topic in TOPICS:
        assert read_kafka_python(broker.bootstrap, topic, "read_committed") == expected("done", 10) + expected("next", 10)
        assert len(read_confluent(broker.bootstrap, topic, "read_uncommitted")) == 30
    broker.stop()


def test_offsets_sent_to_a_transaction_go_with_their_deleted_topic(broker_factory):
    """TxnOffsetCommit, then the topic is deleted, then the transaction commits:
    as in Kafka, the deleted topic's offsets are gone (a topic created again
    under the name starts without them), and stay gone after a restart, which
    replays the transaction from the offsets topic."""
    broker = broker_factory()
    create_topics(broker.bootstrap, ["txn-doomed", "txn-kept", "txn-sink"])
    group = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "py-doomed", "enable.auto.commit": False})
    metadata = group.consumer_group_metadata()
    group.close()
    producer = txn_producer(broker.bootstrap, "py-doomed")
    producer.begin_transaction()
    send_all(producer, ["txn-sink"], "out", 1)
    producer.send_offsets_to_transaction([CTopicPartition("txn-doomed", 0, 7), CTopicPartition("txn-kept", 0, 3)], metadata, 30)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    (future,) = admin.delete_topics(["txn-doomed"]).values()
    future.result(30)
    producer.commit_transaction(30)
    create_topics(broker.bootstrap, ["txn-doomed"])

    def committed(bootstrap):
        reader = Consumer({"bootstrap.servers": bootstrap, "group.id": "py-doomed"})
        try:
            tps = reader.committed([CTopicPartition("txn-doomed", 0), CTopicPartition("txn-kept", 0)], timeout=DEADLINE_S)
            return [tp.offset for tp in tps]
        finally:
            reader.close()

    doomed, kept = committed(broker.bootstrap)
    assert doomed < 0, "the recreated topic inherited an offset committed for the deleted one"
    assert kept == 3
    broker.stop()
    broker = broker_factory()
    doomed, kept = committed(broker.bootstrap)
    assert doomed < 0, "the restart brought back an offset of the deleted topic"
    assert kept == 3
