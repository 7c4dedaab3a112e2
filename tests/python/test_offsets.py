"""ListOffsets: earliest, latest and by time, with both clients."""

from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as CTopicPartition
from kafka import KafkaConsumer
from kafka import TopicPartition as KTopicPartition

from clients import BASE_TS, produce_confluent


def test_offsets_by_time_and_watermarks(broker):
    produce_confluent(broker.bootstrap, "times", 1_000)

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "strom-py-unused"})
    assert consumer.get_watermark_offsets(CTopicPartition("times", 0), timeout=10) == (0, 1_000)
    for ts, expected in [(0, 0), (BASE_TS + 500, 500), (BASE_TS + 999, 999), (BASE_TS + 1_000, -1)]:
        found = consumer.offsets_for_times([CTopicPartition("times", 0, ts)], timeout=10)[0]
        assert found.offset == expected, f"timestamp {ts}"
    consumer.close()

    kp = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None)
    tp = KTopicPartition("times", 0)
    assert kp.beginning_offsets([tp]) == {tp: 0}
    assert kp.end_offsets([tp]) == {tp: 1_000}
    found = kp.offsets_for_times({tp: BASE_TS + 250})[tp]
    assert (found.offset, found.timestamp) == (250, BASE_TS + 250)
    assert kp.offsets_for_times({tp: BASE_TS + 5_000})[tp] is None
    kp.close()
