"""Round trips through the broker with both client stacks, every codec and every acks level.

Each test produces a deterministic stream (clients.record) to partition 0 of its
own topic, reads it back by assignment from the earliest offset and checks every
offset, key, value, header and timestamp, with no gap, no duplicate and nothing
after the last record.
"""

import kafka.codec
import pytest

from clients import (
    await_leader,
    check,
    consume_confluent,
    consume_kafka_python,
    produce_confluent,
    produce_kafka_python,
)

N = 20_000
CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]

# kafka-python compresses with optional packages (see requirements.txt).
KAFKA_PYTHON_CODEC = {
    "none": lambda: True,
    "gzip": kafka.codec.has_gzip,
    "snappy": kafka.codec.has_snappy,  # python-snappy (on cramjam)
    "lz4": kafka.codec.has_lz4,  # lz4
    "zstd": kafka.codec.has_zstd,  # zstandard
}


def kafka_python_codec(codec):
    if not KAFKA_PYTHON_CODEC[codec]():
        pytest.skip(f"kafka-python has no {codec} support here: install the package named in requirements.txt")
    return {} if codec == "none" else {"compression_type": codec}


@pytest.mark.parametrize("codec", CODECS)
def test_kafka_python_round_trip(broker, codec):
    # kafka-python 3 defaults to enable_idempotence=True and acks=all.
    topic = f"kp-round-trip-{codec}"
    offsets = produce_kafka_python(broker.bootstrap, topic, N, **kafka_python_codec(codec))
    assert offsets == list(range(N))
    check(consume_kafka_python(broker.bootstrap, topic, N), N)


@pytest.mark.parametrize("acks", [0, 1])
def test_kafka_python_acks_without_idempotence(broker, acks):
    topic = f"kp-acks-{acks}"
    n = 5_000
    await_leader(broker.bootstrap, topic)
    offsets = produce_kafka_python(broker.bootstrap, topic, n, acks=acks, enable_idempotence=False, compression_type="gzip")
    # With acks=0 the broker answers nothing and kafka-python makes the offsets up.
    if acks == 1:
        assert offsets == list(range(n))
    check(consume_kafka_python(broker.bootstrap, topic, n), n)


@pytest.mark.parametrize("codec", CODECS)
def test_confluent_idempotent_round_trip(broker, codec):
    topic = f"ck-round-trip-{codec}"
    config = {"compression.type": codec, "enable.idempotence": True, "acks": "all"}
    offsets = produce_confluent(broker.bootstrap, topic, N, **config)
    # Idempotence keeps order: delivery reports come back in offset order.
    assert offsets == list(range(N))
    check(consume_confluent(broker.bootstrap, topic, N), N)


@pytest.mark.parametrize("acks", ["0", "1"])
def test_confluent_acks(broker, acks):
    topic = f"ck-acks-{acks}"
    n = 5_000
    await_leader(broker.bootstrap, topic)
    offsets = produce_confluent(broker.bootstrap, topic, n, acks=acks, **{"enable.idempotence": False, "compression.type": "lz4"})
    if acks == "1":
        assert offsets == list(range(n))
    check(consume_confluent(broker.bootstrap, topic, n), n)


@pytest.mark.parametrize("codec", CODECS)
def test_kafka_python_to_confluent(broker, codec):
    topic = f"kp-to-ck-{codec}"
    n = 3_000
    assert produce_kafka_python(broker.bootstrap, topic, n, **kafka_python_codec(codec)) == list(range(n))
    check(consume_confluent(broker.bootstrap, topic, n), n)


@pytest.mark.parametrize("codec", CODECS)
def test_confluent_to_kafka_python(broker, codec):
    topic = f"ck-to-kp-{codec}"
    n = 3_000
    kafka_python_codec(codec)  # kafka-python must decompress it
    assert produce_confluent(broker.bootstrap, topic, n, **{"compression.type": codec}) == list(range(n))
    check(consume_kafka_python(broker.bootstrap, topic, n), n)


def test_mixed_producers_and_codecs_in_one_partition(broker):
    """Four producers, two stacks, four codecs, one after the other into one partition:
    offsets continue across producers and both consumers read every batch."""
    topic = "mixed"
    chunk = 1_000
    plan = [
        ("kafka-python", {"compression_type": "zstd"}),
        ("confluent", {"compression.type": "snappy", "enable.idempotence": True}),
        ("kafka-python", {"enable_idempotence": False, "acks": 1}),
        ("confluent", {"compression.type": "gzip", "acks": "1"}),
        ("kafka-python", {"compression_type": "lz4"}),
    ]
    for k, (stack, config) in enumerate(plan):
        start = k * chunk
        if stack == "kafka-python":
            if "compression_type" in config:
                kafka_python_codec(config["compression_type"])
            offsets = produce_kafka_python(broker.bootstrap, topic, chunk, start=start, **config)
        else:
            offsets = produce_confluent(broker.bootstrap, topic, chunk, start=start, **config)
        assert offsets == list(range(start, start + chunk)), f"producer {k} ({stack})"
    n = chunk * len(plan)
    check(consume_confluent(broker.bootstrap, topic, n), n)
    check(consume_kafka_python(broker.bootstrap, topic, n), n)
    # Reading from the middle of the partition starts exactly there.
    middle = 2_345
    check(consume_confluent(broker.bootstrap, topic, n - middle, from_offset=middle), n - middle, start=middle, first_offset=middle)
    check(consume_kafka_python(broker.bootstrap, topic, n - middle, from_offset=middle), n - middle, start=middle, first_offset=middle)
