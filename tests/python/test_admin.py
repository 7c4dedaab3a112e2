"""Topic administration with both clients, and the errors Kafka answers with.

The module's broker has auto-creation off and `num.partitions=3`, so a deleted or
unknown topic stays gone and a topic created without a partition count gets 3.
Topics get REPLICATION_FACTOR replicas: one on the one broker, one on every node
in the cluster pass, where each partition's leader is one of them.
"""

import kafka.errors as kerr
import pytest
from confluent_kafka import KafkaError, Producer, TopicCollection
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource, NewPartitions, NewTopic
from kafka import KafkaProducer
from kafka.admin import ConfigResource as KConfigResource
from kafka.admin import ConfigResourceType

from clients import check, confluent_error, consume_confluent, consume_kafka_python, produce_confluent, produce_kafka_python
from conftest import NODE_IDS, REPLICATION_FACTOR, module_broker, wait_until

broker = module_broker("auto.create.topics.enable=false", "num.partitions=3")

SEGMENT_BYTES_DEFAULT = "1073741824"


def topic_names(admin):
    return set(admin.list_topics(timeout=10).topics)


def partition_count(admin, topic):
    return len(admin.list_topics(topic=topic, timeout=10).topics[topic].partitions)


def assert_produce_fails_confluent(bootstrap, topic):
    """Producing to a missing topic with auto-creation off fails and creates nothing."""
    errors = []
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "message.timeout.ms": 5_000,
            "topic.metadata.propagation.max.ms": 1_000,
        }
    )
    producer.produce(topic, b"after-delete", partition=0, on_delivery=lambda err, msg: errors.append(err))
    assert producer.flush(20) == 0
    assert len(errors) == 1 and errors[0] is not None, f"produce to deleted topic {topic!r} was acknowledged"
    assert errors[0].code() in (
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._MSG_TIMED_OUT,
    ), errors[0]


def assert_produce_fails_kafka_python(bootstrap, topic):
    producer = KafkaProducer(bootstrap_servers=bootstrap, max_block_ms=3_000, request_timeout_ms=5_000)
    try:
        with pytest.raises((kerr.KafkaTimeoutError, kerr.UnknownTopicOrPartitionError)):
            producer.send(topic, b"after-delete", partition=0).get(timeout=10)
    finally:
        producer.close(timeout=5)


# ---------------------------------------------------------------- lifecycles


def test_confluent_admin_lifecycle(broker, admin):
    topic = "ck-admin"
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=REPLICATION_FACTOR, config={"retention.ms": "3600000"})])[topic].result(30)

    metadata = admin.list_topics(topic=topic, timeout=10).topics[topic]
    assert metadata.error is None
    assert sorted(metadata.partitions) == [0, 1, 2]
    for p in metadata.partitions.values():
        assert (p.leader in NODE_IDS, sorted(p.replicas), sorted(p.isrs)) == (True, NODE_IDS, NODE_IDS), f"partition {p.id}: {p}"
    described = admin.describe_topics(TopicCollection([topic]))[topic].result(30)
    assert [p.leader.id for p in described.partitions] == [metadata.partitions[i].leader for i in range(3)]
    assert described.topic_id is not None and str(described.topic_id) != "AAAAAAAAAAAAAAAAAAAAAA"

    entries = admin.describe_configs([ConfigResource("topic", topic)])
    entries = next(iter(entries.values())).result(30)
    assert entries["retention.ms"].value == "3600000"
    assert entries["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert not entries["retention.ms"].is_default
    assert entries["segment.bytes"].value == SEGMENT_BYTES_DEFAULT
    assert entries["segment.bytes"].source == ConfigSource.DEFAULT_CONFIG.value
    assert entries["segment.bytes"].is_default
    assert entries["cleanup.policy"].value == "delete"

    admin.create_partitions([NewPartitions(topic, 5)])[topic].result(30)
    assert wait_until(lambda: partition_count(admin, topic) == 5)
    metadata = admin.list_topics(topic=topic, timeout=10).topics[topic]
    assert all(p.leader in NODE_IDS and sorted(p.replicas) == NODE_IDS for p in metadata.partitions.values())
    # The new partitions take records.
    produce_confluent(broker.bootstrap, topic, 100, partition=4)
    check(consume_confluent(broker.bootstrap, topic, 100, partition=4), 100)

    admin.delete_topics([topic])[topic].result(30)
    assert wait_until(lambda: topic not in topic_names(admin))
    assert_produce_fails_confluent(broker.bootstrap, topic)
    assert topic not in topic_names(admin), "producing to a deleted topic re-created it with auto-creation off"


def test_kafka_python_admin_lifecycle(broker, kadmin):
    topic = "kp-admin"
    kadmin.create_topics({topic: {"num_partitions": 3, "replication_factor": REPLICATION_FACTOR, "configs": {"retention.ms": "7200000"}}})

    (described,) = kadmin.describe_topics([topic])
    assert described["error_code"] == 0
    assert sorted(p["partition_index"] for p in described["partitions"]) == [0, 1, 2]
    for p in described["partitions"]:
        assert (p["leader_id"] in NODE_IDS, sorted(p["replica_nodes"]), sorted(p["isr_nodes"])) == (True, NODE_IDS, NODE_IDS), p

    configs = kadmin.describe_configs([KConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
    entries = configs["topic"][topic]
    assert entries["retention.ms"]["value"] == "7200000"
    assert entries["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
    assert entries["segment.bytes"]["value"] == SEGMENT_BYTES_DEFAULT
    assert entries["segment.bytes"]["config_source"] == "DEFAULT_CONFIG"
    # The default filter keeps only the overrides.
    modified = kadmin.describe_configs([KConfigResource(ConfigResourceType.TOPIC, topic)])["topic"][topic]
    assert set(modified) == {"retention.ms"}

    kadmin.create_partitions({topic: 5})
    assert wait_until(lambda: len(kadmin.describe_topics([topic])[0]["partitions"]) == 5)
    assert all(p["leader_id"] in NODE_IDS and sorted(p["replica_nodes"]) == NODE_IDS for p in kadmin.describe_topics([topic])[0]["partitions"])
    assert produce_kafka_python(broker.bootstrap, topic, 100, partition=3) == list(range(100))
    check(consume_kafka_python(broker.bootstrap, topic, 100, partition=3), 100)

    kadmin.delete_topics([topic])
    assert wait_until(lambda: topic not in kadmin.list_topics())
    assert_produce_fails_kafka_python(broker.bootstrap, topic)
    assert topic not in kadmin.list_topics(), "producing to a deleted topic re-created it with auto-creation off"


def test_recreated_topic_starts_empty(broker, admin):
    topic = "recreated"
    admin.create_topics([NewTopic(topic, 1, REPLICATION_FACTOR)])[topic].result(30)
    first_id = admin.describe_topics(TopicCollection([topic]))[topic].result(30).topic_id
    produce_confluent(broker.bootstrap, topic, 500)
    admin.delete_topics([topic])[topic].result(30)
    assert wait_until(lambda: topic not in topic_names(admin))

    admin.create_topics([NewTopic(topic, 2, REPLICATION_FACTOR)])[topic].result(30)
    assert wait_until(lambda: topic in topic_names(admin))
    assert partition_count(admin, topic) == 2
    assert str(admin.describe_topics(TopicCollection([topic]))[topic].result(30).topic_id) != str(first_id)
    # The old records are gone: new offsets start at 0, and only the new record is read.
    assert produce_confluent(broker.bootstrap, topic, 1, start=7) == [0]
    check(consume_confluent(broker.bootstrap, topic, 1), 1, start=7)
    check(consume_kafka_python(broker.bootstrap, topic, 1), 1, start=7)


def test_default_partition_count_and_replication(admin, kadmin):
    # num_partitions/replication_factor -1: the broker's num.partitions (3) and default.replication.factor
    # (1; the node count in the cluster pass).
    admin.create_topics([NewTopic("ck-defaults")])["ck-defaults"].result(30)
    kadmin.create_topics({"kp-defaults": {}})
    for topic in ["ck-defaults", "kp-defaults"]:
        metadata = admin.list_topics(topic=topic, timeout=10).topics[topic]
        assert len(metadata.partitions) == 3, topic
        assert all(sorted(p.replicas) == NODE_IDS for p in metadata.partitions.values()), topic


def test_validate_only_creates_nothing(admin, kadmin):
    futures = admin.create_topics([NewTopic("ck-validate", 2, 1, config={"retention.ms": "1000"})], validate_only=True)
    assert confluent_error(futures["ck-validate"]) is None
    kadmin.create_topics({"kp-validate": {"num_partitions": 2}}, validate_only=True)
    # validate_only still reports what a real creation would fail with.
    bad = admin.create_topics([NewTopic("ck-validate-bad", 1, 1, config={"no.such.config": "x"})], validate_only=True)
    assert confluent_error(bad["ck-validate-bad"]) == KafkaError.INVALID_CONFIG
    names = topic_names(admin)
    assert "ck-validate" not in names and "kp-validate" not in names


# ---------------------------------------------------------------- errors

CREATE_ERRORS = [
    # (case, topic, partitions, replication factor, configs, Kafka error)
    ("existing", "exists-already", 1, 1, {}, KafkaError.TOPIC_ALREADY_EXISTS),
    # More replicas than brokers: 2 on the one broker, 4 on three nodes.
    ("rf-above-broker-count", "rf-too-big", 1, REPLICATION_FACTOR + 1, {}, KafkaError.INVALID_REPLICATION_FACTOR),
    ("illegal-character", "bad name!", 1, 1, {}, KafkaError.TOPIC_EXCEPTION),
    ("dot-dot", "..", 1, 1, {}, KafkaError.TOPIC_EXCEPTION),
    ("too-long", "t" * 250, 1, 1, {}, KafkaError.TOPIC_EXCEPTION),
    ("collides-on-dot-underscore", "exists_already", 1, 1, {}, KafkaError.TOPIC_EXCEPTION),
    ("unknown-config", "unknown-config", 1, 1, {"no.such.config": "1"}, KafkaError.INVALID_CONFIG),
    ("malformed-config", "malformed-config", 1, 1, {"retention.ms": "soon"}, KafkaError.INVALID_CONFIG),
    ("zero-partitions", "zero-partitions", 0, 1, {}, KafkaError.INVALID_PARTITIONS),
]

KAFKA_PYTHON_ERROR = {
    KafkaError.TOPIC_ALREADY_EXISTS: kerr.TopicAlreadyExistsError,
    KafkaError.INVALID_REPLICATION_FACTOR: kerr.InvalidReplicationFactorError,
    KafkaError.TOPIC_EXCEPTION: kerr.InvalidTopicError,  # INVALID_TOPIC_EXCEPTION, 17
    KafkaError.INVALID_CONFIG: kerr.InvalidConfigurationError,
    KafkaError.INVALID_PARTITIONS: kerr.InvalidPartitionsError,
}


@pytest.fixture(scope="module")
def existing_topic(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("exists.already", 1, 1)])["exists.already"].result(30)
    admin.create_topics([NewTopic("exists-already", 1, 1)])["exists-already"].result(30)
    return "exists-already"


@pytest.mark.parametrize("case,topic,partitions,rf,configs,code", CREATE_ERRORS, ids=[c[0] for c in CREATE_ERRORS])
def test_confluent_create_topic_errors(admin, existing_topic, case, topic, partitions, rf, configs, code):
    before = topic_names(admin)
    futures = admin.create_topics([NewTopic(topic, partitions, rf, config=configs)])
    got = confluent_error(futures[topic])
    assert got == code, f"{case}: got {got and KafkaError(got).name()}, want {KafkaError(code).name()}"
    assert topic_names(admin) == before, "a refused creation left a topic behind"


@pytest.mark.parametrize("case,topic,partitions,rf,configs,code", CREATE_ERRORS, ids=[c[0] for c in CREATE_ERRORS])
def test_kafka_python_create_topic_errors(kadmin, existing_topic, case, topic, partitions, rf, configs, code):
    before = set(kadmin.list_topics())
    with pytest.raises(KAFKA_PYTHON_ERROR[code]):
        kadmin.create_topics({topic: {"num_partitions": partitions, "replication_factor": rf, "configs": configs}})
    assert set(kadmin.list_topics()) == before, "a refused creation left a topic behind"


def test_create_partitions_errors(admin, kadmin, existing_topic):
    # Fewer partitions than the topic has, the same number, and an unknown topic.
    admin.create_topics([NewTopic("shrink", 3, REPLICATION_FACTOR)])["shrink"].result(30)
    assert confluent_error(admin.create_partitions([NewPartitions("shrink", 2)])["shrink"]) == KafkaError.INVALID_PARTITIONS
    assert confluent_error(admin.create_partitions([NewPartitions("shrink", 3)])["shrink"]) == KafkaError.INVALID_PARTITIONS
    assert confluent_error(admin.create_partitions([NewPartitions("no-such-topic", 4)])["no-such-topic"]) == KafkaError.UNKNOWN_TOPIC_OR_PART
    with pytest.raises(kerr.InvalidPartitionsError):
        kadmin.create_partitions({"shrink": 1})
    with pytest.raises(kerr.UnknownTopicOrPartitionError):
        kadmin.create_partitions({"no-such-topic": 4})
    assert partition_count(admin, "shrink") == 3


def test_delete_and_describe_unknown_topic(admin, kadmin):
    assert confluent_error(admin.delete_topics(["no-such-topic"])["no-such-topic"]) == KafkaError.UNKNOWN_TOPIC_OR_PART
    with pytest.raises(kerr.UnknownTopicOrPartitionError):
        kadmin.delete_topics(["no-such-topic"])
    futures = admin.describe_configs([ConfigResource("topic", "no-such-topic")])
    assert confluent_error(next(iter(futures.values()))) == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_unknown_topic_is_not_auto_created(admin):
    metadata = admin.list_topics(topic="nothing-here", timeout=10)
    assert metadata.topics["nothing-here"].error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    assert "nothing-here" not in topic_names(admin)


# ---------------------------------------------------------------- cluster and broker


def test_describe_cluster(broker, admin, kadmin):
    # Node 1 alone, or every node of the cluster.
    nodes = [(b.node_id, "127.0.0.1", b.port) for b in broker.nodes]
    assert [node_id for node_id, _, _ in nodes] == NODE_IDS
    cluster = admin.describe_cluster().result(30)
    assert cluster.controller.id in NODE_IDS
    assert sorted((n.id, n.host, n.port) for n in cluster.nodes) == nodes
    assert cluster.cluster_id and len(cluster.cluster_id) == 22
    k = kadmin.describe_cluster()
    assert k["controller_id"] == cluster.controller.id
    assert k["cluster_id"] == cluster.cluster_id
    assert sorted((b["broker_id"], b["host"], b["port"]) for b in k["brokers"]) == nodes


def test_describe_broker_configs(admin):
    futures = admin.describe_configs([ConfigResource("broker", "1")])
    entries = next(iter(futures.values())).result(30)
    # Set on the command line: static broker configs, as server.properties values are in Kafka.
    assert entries["num.partitions"].value == "3"
    assert entries["num.partitions"].source == ConfigSource.STATIC_BROKER_CONFIG.value
    assert entries["auto.create.topics.enable"].value == "false"
    assert entries["auto.create.topics.enable"].source == ConfigSource.STATIC_BROKER_CONFIG.value
    assert entries["log.segment.bytes"].value == SEGMENT_BYTES_DEFAULT
    assert entries["log.segment.bytes"].source == ConfigSource.DEFAULT_CONFIG.value


def test_kafka_python_describe_topic_partitions_pages_with_a_cursor(kadmin):
    """KIP-966's DescribeTopicPartitions (API 75), as kafka-python's admin calls it."""
    kadmin.create_topics({"dtp-a": {"num_partitions": 3, "replication_factor": REPLICATION_FACTOR}})
    kadmin.create_topics({"dtp-b": {"num_partitions": 2, "replication_factor": REPLICATION_FACTOR}})
    topics = ["dtp-b", "dtp-a", "dtp-missing"]
    seen = []
    first = kadmin.describe_topic_partitions(topics, response_partition_limit=4)
    # Sorted by name; the page ends inside dtp-b and the cursor says where.
    assert [t["name"] for t in first["topics"]] == ["dtp-a", "dtp-b"]
    assert first["next_cursor"] == {"topic_name": "dtp-b", "partition_index": 1}
    seen += [(t["name"], p["partition_index"]) for t in first["topics"] for p in t["partitions"]]
    rest = kadmin.describe_topic_partitions(topics, response_partition_limit=4, cursor=first["next_cursor"])
    assert rest["next_cursor"] is None
    seen += [(t["name"], p["partition_index"]) for t in rest["topics"] for p in t["partitions"]]
    assert seen == [("dtp-a", 0), ("dtp-a", 1), ("dtp-a", 2), ("dtp-b", 0), ("dtp-b", 1)]
    missing = [t for t in rest["topics"] if t["name"] == "dtp-missing"]
    assert [t["error_code"] for t in missing] == [kerr.UnknownTopicOrPartitionError.errno]
    described = {t["name"]: t for t in first["topics"]}
    for p in described["dtp-a"]["partitions"]:
        assert (p["leader_id"] in NODE_IDS, sorted(p["replica_nodes"]), sorted(p["isr_nodes"])) == (True, NODE_IDS, NODE_IDS), p
    assert str(described["dtp-a"]["topic_id"]) != "00000000-0000-0000-0000-000000000000"


def test_kafka_python_list_config_resources(kadmin):
    """ListConfigResources (API 74, v1 in Kafka 4.1): topics and brokers by type."""
    kadmin.create_topics({"lcr-topic": {"num_partitions": 1, "replication_factor": REPLICATION_FACTOR}})
    listed = kadmin.list_config_resources()
    assert "lcr-topic" in listed["topic"]
    assert sorted(listed["broker"]) == [str(n) for n in NODE_IDS]
    assert set(kadmin.list_config_resources(["BROKER"])) == {"broker"}
