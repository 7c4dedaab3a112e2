"""Topic administration with both clients, and Kafka's error answers."""

import pytest
from confluent_kafka import KafkaError
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource, NewPartitions, NewTopic
import kafka.errors
from kafka.admin import ConfigResource as KConfigResource
from kafka.admin import ConfigResourceType, KafkaAdminClient
from kafka.admin import NewPartitions as KNewPartitions
from kafka.admin import NewTopic as KNewTopic

from conftest import wait_until


def test_confluent_admin_lifecycle_and_errors(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    futures = admin.create_topics([NewTopic("ck-admin", num_partitions=3, replication_factor=1, config={"retention.ms": "60000"})])
    futures["ck-admin"].result(30)
    topic = admin.list_topics(topic="ck-admin", timeout=10).topics["ck-admin"]
    assert len(topic.partitions) == 3
    assert all(p.leader == 1 and p.replicas == [1] and p.isrs == [1] for p in topic.partitions.values())

    configs = admin.describe_configs([ConfigResource("topic", "ck-admin")])
    entries = next(iter(configs.values())).result(30)
    assert entries["retention.ms"].value == "60000"
    assert entries["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert entries["segment.bytes"].value == "1073741824"
    assert entries["segment.bytes"].source == ConfigSource.DEFAULT_CONFIG.value

    admin.create_partitions([NewPartitions("ck-admin", 5)])["ck-admin"].result(30)
    assert wait_until(lambda: len(admin.list_topics(topic="ck-admin", timeout=10).topics["ck-admin"].partitions) == 5)

    def error_of(new_topic):
        with pytest.raises(Exception) as info:
            admin.create_topics([new_topic])[new_topic.topic].result(30)
        return info.value.args[0].code()

    assert error_of(NewTopic("ck-admin", 1, 1)) == KafkaError.TOPIC_ALREADY_EXISTS
    assert error_of(NewTopic("ck-rf3", 1, 3)) == KafkaError.INVALID_REPLICATION_FACTOR
    assert error_of(NewTopic("bad name!", 1, 1)) == KafkaError.TOPIC_EXCEPTION
    assert error_of(NewTopic("ck-bad-config", 1, 1, config={"no.such.config": "1"})) == KafkaError.INVALID_CONFIG

    admin.delete_topics(["ck-admin"])["ck-admin"].result(30)
    assert wait_until(lambda: "ck-admin" not in admin.list_topics(timeout=10).topics)


def test_kafka_python_admin_lifecycle_and_errors(broker):
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([KNewTopic("kp-admin", 2, 1, topic_configs={"cleanup.policy": "compact"})])
    described = admin.describe_topics(["kp-admin"])[0]
    assert described["error_code"] == 0
    assert [p["leader_id"] for p in described["partitions"]] == [1, 1]

    configs = admin.describe_configs([KConfigResource(ConfigResourceType.TOPIC, "kp-admin")], config_filter="all")
    topic = configs["topic"]["kp-admin"]
    assert topic["cleanup.policy"]["value"] == "compact"
    assert topic["cleanup.policy"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
    assert topic["max.message.bytes"]["config_source"] == "DEFAULT_CONFIG"

    admin.create_partitions({"kp-admin": KNewPartitions(4)})
    assert len(admin.describe_topics(["kp-admin"])[0]["partitions"]) == 4
    with pytest.raises(kafka.errors.InvalidPartitionsError):
        admin.create_partitions({"kp-admin": KNewPartitions(2)})
    with pytest.raises(kafka.errors.TopicAlreadyExistsError):
        admin.create_topics([KNewTopic("kp-admin", 1, 1)])
    with pytest.raises(kafka.errors.InvalidReplicationFactorError):
        admin.create_topics([KNewTopic("kp-rf2", 1, 2)])
    with pytest.raises(kafka.errors.InvalidConfigurationError):
        admin.create_topics([KNewTopic("kp-bad", 1, 1, topic_configs={"retention.ms": "soon"})])

    cluster = admin.describe_cluster()
    assert cluster["controller_id"] == 1 and len(cluster["cluster_id"]) == 22

    admin.delete_topics(["kp-admin"])
    assert "kp-admin" not in admin.list_topics()
    with pytest.raises(kafka.errors.UnknownTopicOrPartitionError):
        admin.delete_topics(["kp-admin"])


def test_no_auto_creation_when_disabled(broker_factory):
    broker = broker_factory(["auto.create.topics.enable=false"])
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    metadata = admin.list_topics(topic="nothing-here", timeout=10)
    assert metadata.topics["nothing-here"].error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    assert "nothing-here" not in admin.list_topics(timeout=10).topics
