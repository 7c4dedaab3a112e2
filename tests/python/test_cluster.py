"""Three Strom processes as one cluster, seen by independent clients.

Three combined nodes (broker and controller each) started by hand as a user
would (`conftest.Cluster`: `--node-id`, `--listen`, `--controller-listen`,
`--voters`, free ports). Through every node, kafka-python and confluent-kafka
see the same cluster id, the same controller and three brokers; a topic with
three replicas created through a node that is not the controller shows three
replicas through every node; DescribeQuorum (kafka-python's
`describe_metadata_quorum`) names one leader and epoch everywhere; and kcat
(Debian's, librdkafka 2.0) lists the three brokers against each node within
5 s of a cluster starting from empty.
"""

import json
import pathlib
import shutil
import subprocess
import tempfile
import time

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from kafka.admin import KafkaAdminClient

from conftest import Cluster, wait_until

TIMEOUT_S = 30


@pytest.fixture(scope="module")
def cluster():
    """One three-node cluster for the module, stopped with SIGTERM (each node exits 0) at its end."""
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="strom-py-cluster-"))
    c = Cluster(workdir, 3)
    try:
        c.start()
        yield c
        for b in c.brokers:
            assert b.running(), f"node {b.node_id} died during the module\n{b.log_tail()}"
        c.stop()
    finally:
        try:
            c.kill()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def kafka_python_admin(node):
    return KafkaAdminClient(bootstrap_servers=node.bootstrap, request_timeout_ms=TIMEOUT_S * 1000)


def confluent_admin(node):
    return AdminClient({"bootstrap.servers": node.bootstrap})


def test_every_node_names_one_cluster_one_controller_and_three_brokers(cluster):
    expected_brokers = sorted((b.node_id, "127.0.0.1", b.port) for b in cluster.brokers)
    seen = []
    for node in cluster.brokers:
        k = kafka_python_admin(node)
        try:
            described = k.describe_cluster()
        finally:
            k.close()
        brokers = sorted((b["broker_id"], b["host"], b["port"]) for b in described["brokers"])
        assert brokers == expected_brokers, f"kafka-python through node {node.node_id}"
        seen.append(("kafka-python describe_cluster", node.node_id, described["cluster_id"], described["controller_id"]))

        admin = confluent_admin(node)
        result = admin.describe_cluster(request_timeout=TIMEOUT_S).result(TIMEOUT_S)
        assert sorted((n.id, n.host, n.port) for n in result.nodes) == expected_brokers, f"confluent-kafka through node {node.node_id}"
        seen.append(("confluent describe_cluster", node.node_id, result.cluster_id, result.controller.id))

        metadata = admin.list_topics(timeout=TIMEOUT_S)
        assert sorted((b.id, b.host, b.port) for b in metadata.brokers.values()) == expected_brokers
        seen.append(("confluent list_topics", node.node_id, metadata.cluster_id, metadata.controller_id))
    cluster_ids = {s[2] for s in seen}
    controllers = {s[3] for s in seen}
    assert len(cluster_ids) == 1 and len(next(iter(cluster_ids))) == 22, seen
    assert len(controllers) == 1 and next(iter(controllers)) in {b.node_id for b in cluster.brokers}, seen


def controller_id(cluster):
    k = kafka_python_admin(cluster.brokers[0])
    try:
        return k.describe_cluster()["controller_id"]
    finally:
        k.close()


def test_a_topic_with_three_replicas_created_through_a_non_controller_shows_three_replicas_everywhere(cluster):
    topic = "replicated-through-a-follower"
    controller = controller_id(cluster)
    other = next(b for b in cluster.brokers if b.node_id != controller)
    creator = confluent_admin(other)  # kept until the result is in: a dropped client cancels it
    futures = creator.create_topics([NewTopic(topic, num_partitions=3, replication_factor=3)], request_timeout=TIMEOUT_S)
    futures[topic].result(TIMEOUT_S)
    for node in cluster.brokers:
        admin = confluent_admin(node)

        def confluent_replicas():
            partitions = admin.list_topics(topic=topic, timeout=TIMEOUT_S).topics[topic].partitions
            return sorted(len(p.replicas) for p in partitions.values())

        assert wait_until(lambda: confluent_replicas() == [3, 3, 3], TIMEOUT_S), f"confluent-kafka through node {node.node_id}: {confluent_replicas()}"
        k = kafka_python_admin(node)
        try:
            (described,) = k.describe_topics([topic])
            assert described["error_code"] == 0, described
            replicas = sorted(sorted(p["replica_nodes"]) for p in described["partitions"])
            assert replicas == [[1, 2, 3]] * 3, f"kafka-python through node {node.node_id}: {described}"
        finally:
            k.close()


def test_every_node_describes_one_quorum_leader_and_epoch(cluster):
    answers = []
    for node in cluster.brokers:
        k = kafka_python_admin(node)
        try:
            quorum = k.describe_metadata_quorum()
        finally:
            k.close()
        (topic,) = quorum["topics"]
        (partition,) = topic["partitions"]
        assert (topic["topic_name"], partition["partition_index"], partition["error"]) == ("__cluster_metadata", 0, None), quorum
        voters = sorted(v["replica_id"] for v in partition["current_voters"])
        assert voters == [1, 2, 3], quorum
        assert partition["observers"] == [], "combined nodes are all voters"
        leader = next(v for v in partition["current_voters"] if v["replica_id"] == partition["leader_id"])
        assert leader["log_end_offset"] >= partition["high_watermark"] > 0, quorum
        # v2 (KIP-853): each voter with its controller listener.
        nodes = sorted((n["node_id"], [l["name"] for l in n["listeners"]]) for n in quorum["nodes"])
        assert nodes == [(1, ["CONTROLLER"]), (2, ["CONTROLLER"]), (3, ["CONTROLLER"])], quorum
        answers.append((partition["leader_id"], partition["leader_epoch"]))
    assert len(set(answers)) == 1, answers


def kcat_brokers(node):
    """The broker ids `kcat -L -J` lists through `node` alone (empty when it fails)."""
    out = subprocess.run(
        ["kcat", "-b", node.bootstrap, "-L", "-J", "-m", "5"],
        capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
    )
    if out.returncode != 0:
        return []
    return sorted(b["id"] for b in json.loads(out.stdout)["brokers"])


def test_kcat_lists_three_brokers_against_each_node_within_5_s_of_starting_from_empty(cluster_factory):
    if shutil.which("kcat") is None:
        pytest.skip("kcat is not installed (scripts/test.sh installs it with apt-get when run as root)")
    fresh = cluster_factory(3)
    for node in fresh.brokers:
        assert wait_until(lambda: kcat_brokers(node) == [1, 2, 3], timeout_s=TIMEOUT_S), f"kcat through node {node.node_id}: {kcat_brokers(node)}"
    took = time.monotonic() - fresh.ready_at
    assert took < 5, f"kcat listed the three brokers through every node only {took:.1f} s after the last ready line"
