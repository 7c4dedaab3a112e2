"""Round trips through the broker with both client stacks and every codec."""

import pytest

from clients import check, consume_confluent, consume_kafka_python, produce_confluent, produce_kafka_python

N = 20_000
CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


@pytest.mark.parametrize("codec", CODECS)
def test_kafka_python_round_trip(broker, codec):
    topic = f"kp-{codec}"
    config = {} if codec == "none" else {"compression_type": codec}
    offsets = produce_kafka_python(broker.bootstrap, topic, N, **config)
    assert offsets == list(range(N))
    check(consume_kafka_python(broker.bootstrap, topic, N), N)


@pytest.mark.parametrize("codec", CODECS)
def test_confluent_idempotent_round_trip(broker, codec):
    topic = f"ck-{codec}"
    offsets = produce_confluent(
        broker.bootstrap, topic, N, **{"compression.type": codec, "enable.idempotence": True, "acks": "all"}
    )
    assert sorted(offsets) == list(range(N))
    check(consume_confluent(broker.bootstrap, topic, N), N)


@pytest.mark.parametrize("acks", ["0", "1"])
def test_confluent_acks(broker, acks):
    topic = f"acks-{acks}"
    produce_confluent(broker.bootstrap, topic, 2_000, acks=acks)
    check(consume_confluent(broker.bootstrap, topic, 2_000), 2_000)


def test_kafka_python_to_confluent_and_back(broker):
    produce_kafka_python(broker.bootstrap, "cross-a", 3_000, compression_type="lz4")
    check(consume_confluent(broker.bootstrap, "cross-a", 3_000), 3_000)
    produce_confluent(broker.bootstrap, "cross-b", 3_000, **{"compression.type": "snappy"})
    check(consume_kafka_python(broker.bootstrap, "cross-b", 3_000), 3_000)
