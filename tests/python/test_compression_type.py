"""Topic-level `compression.type`: the broker stores batches in the topic's codec.

A topic whose compression.type names a codec (or `uncompressed`) has every batch
recompressed into it when a producer used another codec; `producer` keeps each
batch as it came. Producers of both stacks send batches in every codec (the
idempotent defaults of both: recompression keeps producer ids and sequences),
consumers of both stacks read every record back intact (offset, key, value,
headers, timestamp), and the codec of every stored batch is read from the
partition's segment files (its leader's, in a cluster), which are in Kafka's on-disk format.
"""

import struct

import kafka.codec
import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic
from kafka.admin import KafkaAdminClient
from kafka.protocol.admin import DescribeConfigsRequest

from clients import check, consume_confluent, consume_kafka_python, produce_confluent, produce_kafka_python
from conftest import REPLICATION_FACTOR, wait_until

TOPIC_RESOURCE = 2  # ConfigResource type on the wire


def wait_every_node_has(broker, topic, name, value):
    """In a cluster, each node applies a config change from the metadata log after the client's
    answer (as in Kafka): waits until every node describes the topic's `name` as `value`, so that
    the leader compresses the next batch by it."""
    if len(broker.nodes) < 2:
        return
    kadmin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    request = DescribeConfigsRequest(
        resources=[(TOPIC_RESOURCE, topic, [name])], include_synonyms=False, include_documentation=False
    )
    seen = {}

    def applied():
        for node in broker.nodes:

            async def send(node_id=node.node_id):
                return await kadmin._manager.send(request, node_id=node_id)

            (result,) = kadmin._manager.run(send).results
            seen[node.node_id] = [c.value for c in result.configs if c.name == name]
        return all(v == [value] for v in seen.values())

    try:
        assert wait_until(applied, 30), f"{name}={value} not applied on every node after 30 s: {seen}"
    finally:
        kadmin.close()

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
# Kafka's codec ids (the low three bits of a batch's attributes).
CODEC_ID = {"none": 0, "uncompressed": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}

KAFKA_PYTHON_CODEC = {
    "none": lambda: True,
    "gzip": kafka.codec.has_gzip,
    "snappy": kafka.codec.has_snappy,
    "lz4": kafka.codec.has_lz4,
    "zstd": kafka.codec.has_zstd,
}

PER_PRODUCER = 200
# Record indices 3,400.. cover a 64 KiB value (4,321), null keys (3,500, 4,500) and null values (3,600, 4,600).
FIRST_RECORD = 3_400

TOPICS = [
    # (topic compression.type, more topic configs)
    ("zstd", {}),
    ("uncompressed", {}),
    ("gzip", {"compression.gzip.level": "9"}),
    # The control: batches stay as each producer sent them.
    ("producer", {}),
]


def stored_batches(partition_dir):
    """[(base offset, last offset, codec id)] of every batch in the partition's segments, in log order.

    v2 batch header: baseOffset int64, batchLength int32 (bytes after this
    field), partitionLeaderEpoch int32, magic int8, crc uint32, attributes int16,
    lastOffsetDelta int32, ...
    """
    batches = []
    for segment in sorted(partition_dir.glob("*.log")):
        data = segment.read_bytes()
        pos = 0
        while pos + 61 <= len(data):
            base_offset, length = struct.unpack_from(">qi", data, pos)
            magic = data[pos + 16]
            attributes, last_delta = struct.unpack_from(">hi", data, pos + 21)
            assert magic == 2, f"{segment.name} at {pos}: magic {magic}"
            if pos + 12 + length > len(data):
                break
            batches.append((base_offset, base_offset + last_delta, attributes & 0x07))
            pos += 12 + length
    return batches


def codecs_of(batches, first, last):
    """The codec ids of the batches holding offsets first..last."""
    return {codec for base, end, codec in batches if base <= last and end >= first}


def senders():
    """(client, codec) of every producer, in the order they send."""
    return [("kafka-python", c) for c in CODECS] + [("confluent", c) for c in CODECS]


def produce(bootstrap, topic, client, codec, start):
    if client == "kafka-python":
        if not KAFKA_PYTHON_CODEC[codec]():
            pytest.skip(f"kafka-python has no {codec} support here: install the package named in requirements.txt")
        config = {} if codec == "none" else {"compression_type": codec}
        return produce_kafka_python(bootstrap, topic, PER_PRODUCER, start=start, **config)
    # Small batches, so each producer sends several; a short metadata refresh lets librdkafka's
    # idempotent producer get its producer id at once instead of on its next timer.
    config = {"compression.type": codec, "enable.idempotence": True, "batch.num.messages": 50, "topic.metadata.refresh.interval.ms": 100}
    return produce_confluent(bootstrap, topic, PER_PRODUCER, start=start, **config)


@pytest.mark.parametrize("topic_codec,configs", TOPICS, ids=[t[0] for t in TOPICS])
def test_topic_compression_type(broker, topic_codec, configs):
    topic = f"compressed-{topic_codec}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, 1, REPLICATION_FACTOR, config={"compression.type": topic_codec, **configs})])[topic].result(30)

    ranges = []
    for k, (client, codec) in enumerate(senders()):
        first = k * PER_PRODUCER
        offsets = produce(broker.bootstrap, topic, client, codec, FIRST_RECORD + first)
        assert offsets == list(range(first, first + PER_PRODUCER)), f"{client} {codec}: offsets {offsets[:3]}..{offsets[-3:]}"
        ranges.append((client, codec, first, first + PER_PRODUCER - 1))
    n = len(ranges) * PER_PRODUCER

    check(consume_confluent(broker.bootstrap, topic, n), n, start=FIRST_RECORD)
    check(consume_kafka_python(broker.bootstrap, topic, n), n, start=FIRST_RECORD)

    batches = stored_batches(broker.partition_dir(topic))
    assert batches and batches[0][0] == 0 and batches[-1][1] == n - 1, batches[:2] + batches[-2:]
    wrong = []
    for client, codec, first, last in ranges:
        got = codecs_of(batches, first, last)
        if topic_codec != "producer":
            ok = got == {CODEC_ID[topic_codec]}
        else:
            # Both clients send a batch uncompressed when compressing would make it larger (the 64 KiB random value).
            ok = CODEC_ID[codec] in got and got <= {CODEC_ID[codec], CODEC_ID["none"]}
        if not ok:
            wrong.append(f"{client} {codec} (offsets {first}..{last}): stored codecs {sorted(got)}")
    assert not wrong, f"topic compression.type {topic_codec}: " + "; ".join(wrong)


def test_changing_compression_type_applies_to_the_next_batch(broker):
    """Batches already stored keep their codec; the first batch after the change is in the new one."""
    topic = "compression-changed"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, 1, REPLICATION_FACTOR)])[topic].result(30)

    def set_codec(*configs):
        entries = [ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET) for name, value in configs]
        (future,) = admin.incremental_alter_configs([ConfigResource("topic", topic, incremental_configs=entries)]).values()
        future.result(30)
        for name, value in configs:
            wait_every_node_has(broker, topic, name, value)

    # (topic compression.type set before the produce, producer codec, stored codec)
    steps = [
        (None, "gzip", "gzip"),
        (("lz4", ("compression.lz4.level", "12")), "gzip", "lz4"),
        (("snappy",), "zstd", "snappy"),
        (("uncompressed",), "gzip", "none"),
        (("producer",), "lz4", "lz4"),
    ]
    n = 100
    for k, (change, producer_codec, _) in enumerate(steps):
        if change:
            set_codec(("compression.type", change[0]), *change[1:])
        if k % 2:
            produce_kafka_python(broker.bootstrap, topic, n, start=k * n, compression_type=producer_codec)
        else:
            produce_confluent(broker.bootstrap, topic, n, start=k * n, **{"compression.type": producer_codec})

    batches = stored_batches(broker.partition_dir(topic))
    stored = [codecs_of(batches, k * n, k * n + n - 1) for k in range(len(steps))]
    assert stored[:-1] == [{CODEC_ID[want]} for _, _, want in steps[:-1]], stored
    # Back to "producer": kept as sent (a client sends a batch uncompressed when compressing does not pay).
    assert CODEC_ID["lz4"] in stored[-1] and stored[-1] <= {CODEC_ID["lz4"], CODEC_ID["none"]}, stored[-1]
    total = n * len(steps)
    check(consume_kafka_python(broker.bootstrap, topic, total), total)
    check(consume_confluent(broker.bootstrap, topic, total), total)
