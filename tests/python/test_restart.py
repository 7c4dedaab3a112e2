"""kill -9 with a flush per batch: every acknowledged record survives."""

from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as CTopicPartition

from clients import check, consume_confluent, produce_confluent


def test_acknowledged_records_survive_kill_9(broker_factory):
    flush = ["log.flush.interval.messages=1"]
    broker = broker_factory(flush)
    produce_confluent(broker.bootstrap, "durable", 3_000, acks="all", **{"enable.idempotence": True})
    broker.kill()

    broker = broker_factory(flush)
    check(consume_confluent(broker.bootstrap, "durable", 3_000), 3_000)
    # Offsets continue where they were.
    delivered = []
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    producer.produce("durable", b"after", partition=0, on_delivery=lambda err, m: delivered.append((err, m.offset())))
    assert producer.flush(30) == 0
    assert delivered == [(None, 3_000)]
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "strom-py-unused"})
    assert consumer.get_watermark_offsets(CTopicPartition("durable", 0), timeout=10) == (0, 3_001)
    consumer.close()
    broker.stop()
