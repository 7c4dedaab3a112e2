"""The broker's Prometheus endpoint, read as Prometheus reads it.

Every scrape goes through the Prometheus project's own OpenMetrics parser
(`prometheus_client.openmetrics.parser`), which rejects what a real scraper
would reject: a bad escape, a missing TYPE line, a duplicate sample, no EOF.
Traffic comes from kafka-python and confluent-kafka, and the numbers are
checked against what those clients did: records in and out per topic, log end
offsets, a group's committed offsets and lag, requests per API. Group ids and
client ids come from clients: one with a quote, a backslash and a newline
must not break the exposition.

In the cluster pass every node is scraped and the scrapes are merged: each
node counts what it served (a partition's records in on its leader, a group's
offsets on its coordinator), so counters (`*_total`) are summed over the nodes;
every replica reports its partition's offsets, a follower's possibly behind the
leader's, so other samples take the largest value. What a node learns after the
clients' answer (a follower's high watermark, a topic's deletion) is polled for,
up to a deadline; against one broker it must hold at once.
"""

import urllib.error
import urllib.request

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as CTopicPartition
from confluent_kafka.admin import NewTopic
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KTopicPartition
from kafka.structs import OffsetAndMetadata
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from conftest import CLUSTER_NODES, REPLICATION_FACTOR, module_broker, wait_until

broker = module_broker()

DEADLINE_S = 30


def scrape_node(url):
    """{(sample name, frozenset of labels): value} from one strictly parsed scrape."""
    with urllib.request.urlopen(url, timeout=DEADLINE_S) as response:
        assert response.status == 200
        content_type = response.headers["Content-Type"]
        assert content_type.startswith("application/openmetrics-text"), content_type
        text = response.read().decode("utf-8")
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return samples


def scrape(broker):
    """Every node's scrape, merged: counters summed, other samples their largest value."""
    merged = {}
    for node in broker.nodes:
        for key, v in scrape_node(node.metrics_url).items():
            if key not in merged:
                merged[key] = v
            elif key[0].endswith("_total"):
                merged[key] += v
            else:
                merged[key] = max(merged[key], v)
    return merged


def scraped(broker, condition):
    """The first scrape where condition(samples) holds: the first scrape against one broker; in a
    cluster, polled up to DEADLINE_S (nodes learn of offsets and deletions after the clients' answer)."""
    last = {}

    def holds():
        last["samples"] = scrape(broker)
        try:
            return condition(last["samples"])
        except AssertionError:
            return False

    wait_until(holds, DEADLINE_S if CLUSTER_NODES else 0)
    return last["samples"]


def value(samples, name, **labels):
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no {name}{labels} in the scrape"
    return samples[key]


def total(samples, name, **labels):
    """Sum of `name` over the samples whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


def create(admin, topic, partitions):
    (future,) = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=REPLICATION_FACTOR)]).values()
    future.result(timeout=DEADLINE_S)


def test_records_in_and_out_per_topic_with_both_clients(broker, admin):
    create(admin, "metrics-orders", 2)
    before = scrape(broker)
    produce_requests_before = value(before, "strom_requests_total", api="Produce")

    confluent = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    for i in range(150):
        confluent.produce("metrics-orders", value=b"c" * 100, partition=0)
    assert confluent.flush(DEADLINE_S) == 0
    kafka = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for i in range(50):
        kafka.send("metrics-orders", value=b"k" * 100, partition=1)
    kafka.flush(timeout=DEADLINE_S)
    kafka.close()

    after = scrape(broker)
    assert value(after, "strom_topic_in_messages_total", topic="metrics-orders") == 200
    assert value(after, "strom_topic_in_bytes_total", topic="metrics-orders") >= 200 * 100
    assert value(after, "strom_log_end_offset", topic="metrics-orders", partition="0") == 150
    assert value(after, "strom_log_end_offset", topic="metrics-orders", partition="1") == 50
    assert value(after, "strom_high_watermark", topic="metrics-orders", partition="1") == 50
    assert value(after, "strom_requests_total", api="Produce") > produce_requests_before

    reader = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, consumer_timeout_ms=DEADLINE_S * 1000)
    reader.assign([KTopicPartition("metrics-orders", 0), KTopicPartition("metrics-orders", 1)])
    reader.seek_to_beginning()
    seen = 0
    for _ in reader:
        seen += 1
        if seen == 200:
            break
    reader.close()
    assert seen == 200
    out = scrape(broker)
    assert value(out, "strom_topic_out_messages_total", topic="metrics-orders") >= 200
    assert value(out, "strom_topic_out_bytes_total", topic="metrics-orders") >= value(
        out, "strom_topic_in_bytes_total", topic="metrics-orders"
    )


def test_group_lag_is_what_the_group_has_not_consumed(broker, admin):
    create(admin, "metrics-lag", 1)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(90):
        producer.produce("metrics-lag", value=str(i).encode(), partition=0)
    assert producer.flush(DEADLINE_S) == 0

    # A confluent group member reads 30 records and commits them.
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": "metrics-billing",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([CTopicPartition("metrics-lag", 0, 0)])
    read = [0]

    def read_30():
        while read[0] < 30:
            message = consumer.poll(0.2)
            if message is None:
                return False
            assert message.error() is None, message.error()
            read[0] += 1
        return True

    assert wait_until(read_30, DEADLINE_S), f"read {read[0]} of 30"
    consumer.commit(offsets=[CTopicPartition("metrics-lag", 0, 30)], asynchronous=False)
    consumer.close()
    labels = dict(group="metrics-billing", topic="metrics-lag", partition="0")
    samples = scraped(broker, lambda s: value(s, "strom_group_lag", **labels) == 60)
    assert value(samples, "strom_group_committed_offset", **labels) == 30
    assert value(samples, "strom_group_lag", **labels) == 60

    # kafka-python commits for the same group: the lag follows.
    kconsumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="metrics-billing", enable_auto_commit=False)
    kconsumer.commit({KTopicPartition("metrics-lag", 0): OffsetAndMetadata(85, "", -1)})
    kconsumer.close()
    samples = scraped(broker, lambda s: value(s, "strom_group_lag", **labels) == 5)
    assert value(samples, "strom_group_lag", **labels) == 5
    assert total(samples, "strom_group_lag", group="metrics-billing") == 5


def test_a_hostile_group_id_does_not_break_the_exposition(broker, admin):
    create(admin, "metrics-hostile", 1)
    group = 'evil"group\\with\nnewline'
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False)
    consumer.commit({KTopicPartition("metrics-hostile", 0): OffsetAndMetadata(0, "", -1)})
    consumer.close()
    samples = scrape(broker)  # the strict parser would raise on a bad escape
    assert value(samples, "strom_group_committed_offset", group=group, topic="metrics-hostile", partition="0") == 0


def test_a_deleted_topic_leaves_no_series_and_no_offsets(broker, admin):
    create(admin, "metrics-gone", 1)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce("metrics-gone", value=b"x", partition=0)
    assert producer.flush(DEADLINE_S) == 0
    committer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="metrics-gone-group", enable_auto_commit=False)
    committer.commit({KTopicPartition("metrics-gone", 0): OffsetAndMetadata(1, "", -1)})
    committer.close()
    lag = dict(group="metrics-gone-group", topic="metrics-gone", partition="0")
    samples = scraped(broker, lambda s: value(s, "strom_group_lag", **lag) == 0)
    assert value(samples, "strom_group_lag", **lag) == 0

    (future,) = admin.delete_topics(["metrics-gone"]).values()
    future.result(timeout=DEADLINE_S)

    def series_of_the_topic(samples):
        return [key for key in samples if ("topic", "metrics-gone") in key[1]]

    samples = scraped(broker, lambda s: not series_of_the_topic(s))
    left = series_of_the_topic(samples)
    assert left == []

    # As in Kafka, the group's offsets of the deleted topic went with it: a
    # topic created again under the name starts without them.
    create(admin, "metrics-gone", 1)
    reader = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "metrics-gone-group"})
    (committed,) = reader.committed([CTopicPartition("metrics-gone", 0)], timeout=DEADLINE_S)
    reader.close()
    assert committed.offset < 0, committed


def test_connections_are_counted_while_open(broker_factory):
    broker = broker_factory()  # its own: no other test's clients connected
    assert value(scrape(broker), "strom_connections_active") == 0
    consumers = [KafkaConsumer(bootstrap_servers=broker.bootstrap) for _ in range(3)]
    for consumer in consumers:
        consumer.topics()  # connects
    assert value(scrape(broker), "strom_connections_active") >= 3
    accepted = value(scrape(broker), "strom_connections_accepted_total")
    assert accepted >= 3
    for consumer in consumers:
        consumer.close()
    assert wait_until(lambda: value(scrape(broker), "strom_connections_active") == 0, DEADLINE_S)
    assert value(scrape(broker), "strom_connections_accepted_total") == accepted


def test_unknown_paths_are_not_found(broker):
    url = broker.metrics_url.rsplit("/", 1)[0] + "/nope"
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(url, timeout=DEADLINE_S)
    assert error.value.code == 404
