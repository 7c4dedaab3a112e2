"""Consumer groups with both clients: joining, rebalancing, committing, resuming.

What a user of a group notices: a subscribed consumer starts reading promptly;
the members of a group split the partitions and read every record once; a
member that leaves hands its partitions to the others; committed offsets (and
their metadata strings) survive a broker crash; the admin APIs of both clients
show, list and delete groups; KIP-848 groups (`group.protocol=consumer`) and
static members (KIP-345) work with librdkafka.

The module's broker starts groups without the initial rebalance delay and asks
KIP-848 members to heartbeat every 500 ms; librdkafka's classic members
heartbeat every 500 ms too, so a rebalance is noticed within a second. No test
asserts a duration: every wait is a poll loop against a deadline.

Exactly-once reading in a group. A group gives at-least-once delivery in
general: a partition that moves to another member is read from the last
committed offset, so whatever its previous owner read after its last commit is
read again. The tests that assert exactly-once therefore produce only when the
group is settled (every member holds its final assignment), and commit
synchronously before any member leaves: then a moved partition resumes exactly
where its previous owner stopped, and a duplicate or a gap is a broker bug (a
lost commit, a wrong committed offset or a wrong assignment).
"""

import collections
import time

import pytest
from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    ConsumerGroupType,
    KafkaError,
    Producer,
)
from confluent_kafka import TopicPartition as CTopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer
from kafka import TopicPartition as KTopicPartition
from kafka.admin import KafkaAdminClient
from kafka.structs import OffsetAndMetadata

from clients import check, confluent_error, produce_kafka_python
from conftest import NODE_IDS, REPLICATION_FACTOR, module_broker, wait_until

GROUP_PROPERTIES = (
    # Without this, the first JoinGroup of every group waits 3 s for more members.
    "group.initial.rebalance.delay.ms=0",
    # KIP-848 members heartbeat at the interval the broker tells them.
    "group.consumer.heartbeat.interval.ms=500",
)
broker = module_broker(*GROUP_PROPERTIES)

DEADLINE_S = 30  # for anything a group must reach; generous for a debug broker on two cores
FIRST_RECORD_DEADLINE_S = 20
# After the last expected record, every member keeps polling this long, so a
# duplicate or stray record (one re-read after a rebalance) would be seen. It is
# an observation window, not a timing assertion.
DRAIN_S = 1.0


# ---------------------------------------------------------------- helpers


def create_topic(bootstrap, topic, partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until its future resolves
    admin.create_topics([NewTopic(topic, partitions, REPLICATION_FACTOR)])[topic].result(30)
    # A consumer subscribing right away must see every partition.
    assert wait_until(lambda: len(admin.list_topics(topic=topic, timeout=10).topics[topic].partitions) == partitions, 10)


def kafka_python_member(bootstrap, topic, **config):
    """A kafka-python group consumer subscribed to `topic` once it knows the topic's partitions.

    kafka-python joins a group without first fetching the metadata of a plain
    (non-pattern) subscription (see KAFKA-3949 in its coordinator). With
    group.initial.rebalance.delay.ms=0 the group can then form before that metadata
    arrives: the leader assigns the topic to nobody ("No partition metadata for
    topic") and waits for its next periodic metadata refresh, minutes away.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, **config)
    assert wait_until(lambda: consumer.partitions_for_topic(topic), DEADLINE_S), f"kafka-python never saw {topic}"
    consumer.subscribe([topic])
    return consumer


def produce_values(bootstrap, topic, values_by_partition):
    """Produces {partition: [value, ...]} with librdkafka, each value to its partition; fails on any error."""
    errors = []
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    count = 0
    for partition, values in values_by_partition.items():
        for value in values:
            producer.produce(topic, value, partition=partition, on_delivery=lambda err, msg: errors.append(err) if err else None)
            count += 1
        producer.poll(0)
    assert producer.flush(DEADLINE_S) == 0, f"records left undelivered after {DEADLINE_S} s"
    assert not errors, f"{len(errors)} of {count} records failed, first ones: {errors[:3]}"


def batch(tag, partitions, per_partition):
    """{partition: [b'<tag>-p<partition>-<i>', ...]}: values that name their batch and partition."""
    return {p: [b"%s-p%d-%d" % (tag.encode(), p, i) for i in range(per_partition)] for p in range(partitions)}


def close_quietly(consumer):
    try:
        consumer.close()
    except RuntimeError:
        pass  # confluent-kafka refuses to close a closed consumer


@pytest.fixture
def cleanup():
    """Consumers and admin clients a test opened; closed at its end, also when it fails."""
    opened = []
    yield opened
    for client in reversed(opened):
        close_quietly(client)


class Member:
    """One librdkafka group member: the records it read and the rebalance callbacks it saw."""

    def __init__(self, bootstrap, group, topic, name, **config):
        self.name = name
        self.records = []  # (partition, offset, value)
        self.events = []  # ("assign" | "revoke" | "lost", [partition, ...])
        self.closed = False
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "client.id": name,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                **config,
            }
        )
        self.consumer.subscribe(
            [topic],
            on_assign=lambda c, tps: self.events.append(("assign", sorted(tp.partition for tp in tps))),
            on_revoke=lambda c, tps: self.events.append(("revoke", sorted(tp.partition for tp in tps))),
            on_lost=lambda c, tps: self.events.append(("lost", sorted(tp.partition for tp in tps))),
        )

    def poll(self, timeout_s):
        """One round: serves rebalance callbacks and collects records; fails on a consume error."""
        for m in self.consumer.consume(num_messages=500, timeout=timeout_s):
            if m.error() is not None:
                raise AssertionError(f"{self.name}: consume error {m.error()}")
            self.records.append((m.partition(), m.offset(), m.value()))

    def partitions(self):
        return sorted(tp.partition for tp in self.consumer.assignment())

    def values(self):
        return [value for _, _, value in self.records]

    def close(self):
        self.closed = True
        self.consumer.close()

    def __repr__(self):
        state = "closed" if self.closed else f"partitions {self.partitions()}"
        return f"<{self.name}: {state}, {len(self.records)} records, events {self.events}>"


def poll_until(members, condition, what, timeout_s=DEADLINE_S):
    """Polls every open member in turn (each must poll to join and to rebalance) until condition()."""
    deadline = time.monotonic() + timeout_s
    while True:
        for m in members:
            if not m.closed:
                m.poll(0.05)
        if condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout_s} s: {members}")


def drain(members, seconds=DRAIN_S):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for m in members:
            if not m.closed:
                m.poll(0.05)


def settled(members, per_member, partitions):
    """Every open member holds per_member partitions and together they hold all of them."""

    def condition():
        held = [m.partitions() for m in members if not m.closed]
        return all(len(p) == per_member for p in held) and sorted(sum(held, [])) == list(range(partitions))

    return condition


def assert_each_read_once(members, values_by_partition):
    """Every value was read exactly once, by the member that holds its partition."""
    read = collections.Counter(v for m in members for v in m.values())
    wanted = collections.Counter(v for values in values_by_partition.values() for v in values)
    missing = wanted - read
    extra = read - wanted
    assert not missing and not extra, (
        f"{sum(missing.values())} records missing (first {sorted(missing)[:5]}), "
        f"{sum(extra.values())} duplicate or unexpected (first {sorted(extra)[:5]}); members {members}"
    )
    for m in members:
        if not m.closed:
            foreign = {p for p, _, _ in m.records} - set(m.partitions())
            assert not foreign, f"{m.name} read partitions {sorted(foreign)} it does not hold ({m.partitions()})"


def read_kafka_python(consumer, n, deadline_s=DEADLINE_S):
    """Polls a subscribed kafka-python consumer until n records; returns them as check() tuples, per partition."""
    out = collections.defaultdict(list)
    deadline = time.monotonic() + deadline_s
    while sum(map(len, out.values())) < n and time.monotonic() < deadline:
        for tp, records in consumer.poll(timeout_ms=200).items():
            out[tp.partition] += [(r.offset, r.key, r.value, [(k, v) for k, v in r.headers], r.timestamp) for r in records]
    return out


def read_confluent(consumer, n, deadline_s=DEADLINE_S):
    out = collections.defaultdict(list)
    deadline = time.monotonic() + deadline_s
    while sum(map(len, out.values())) < n and time.monotonic() < deadline:
        for m in consumer.consume(num_messages=500, timeout=0.2):
            if m.error() is not None:
                raise AssertionError(f"consume error {m.error()}")
            out[m.partition()].append((m.offset(), m.key(), m.value(), list(m.headers() or []), m.timestamp()[1]))
    return out


def describe_for_failure(bootstrap, group):
    """The broker's view of a group, for a failure message."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return admin.describe_groups([group])[group]
    except Exception as e:  # a failure message must not fail
        return f"(DescribeGroups failed: {e!r})"
    finally:
        admin.close()


# ---------------------------------------------------------------- tests


def test_kafka_python_subscribes_commits_and_a_successor_resumes(broker, cleanup):
    topic, group = "kp-resume", "kp-resume-group"
    create_topic(broker.bootstrap, topic, 1)
    n = 600
    produce_kafka_python(broker.bootstrap, topic, n)

    # Kafka-python's defaults (45 s session, 3 s heartbeat): only the commit is made explicit.
    first = kafka_python_member(broker.bootstrap, topic, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False)
    cleanup.append(first)
    got = read_kafka_python(first, 1, FIRST_RECORD_DEADLINE_S)
    assert got[0], (
        f"no record within {FIRST_RECORD_DEADLINE_S} s of subscribing: assignment {first.assignment()}, "
        f"member {first.group_metadata()}, group as the broker describes it: {describe_for_failure(broker.bootstrap, group)}"
    )
    more = read_kafka_python(first, n - len(got[0]))
    consumed = got[0] + more[0]
    assert set(more) <= {0}
    # Nothing beyond the n records: one more poll returns none.
    assert not first.poll(timeout_ms=500), "records beyond the ones produced"
    check(consumed, n)
    tp = KTopicPartition(topic, 0)
    first.commit()
    assert first.committed(tp) == n
    first.close()  # sends LeaveGroup: the successor need not wait for a session timeout

    produce_kafka_python(broker.bootstrap, topic, 40, start=n)
    second = kafka_python_member(broker.bootstrap, topic, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False)
    cleanup.append(second)
    assert second.committed(tp) == n
    resumed = read_kafka_python(second, 40)
    assert not second.poll(timeout_ms=500), "records beyond the ones produced"
    # Only the new records, from the committed offset on: nothing of the first batch again.
    check(resumed[0], 40, start=n, first_offset=n)
    second.commit()
    assert second.committed(tp) == n + 40
    second.close()


def test_confluent_three_members_split_partitions_and_take_over_on_leave(broker, cleanup):
    topic, group, partitions = "ck-trio", "ck-trio-group", 6
    create_topic(broker.bootstrap, topic, partitions)
    members = [Member(broker.bootstrap, group, topic, f"trio-{i}", **{"heartbeat.interval.ms": 500, "session.timeout.ms": 10_000}) for i in range(3)]
    cleanup.extend(m.consumer for m in members)

    # Records are produced once every member holds its final two partitions: a
    # partition moved in an earlier generation would be read again by its next
    # owner (nothing was committed yet), which is at-least-once, not a bug.
    poll_until(members, settled(members, 2, partitions), "three members with two partitions each")
    first = batch("first", partitions, 50)
    produce_values(broker.bootstrap, topic, first)
    poll_until(members, lambda: sum(len(m.records) for m in members) >= 300, "all 300 records read")
    drain(members)
    assert_each_read_once(members, first)
    for m in members:
        assert len(m.records) == 100, m  # two partitions of 50 records each
        m.consumer.commit(asynchronous=False)
    committed = members[0].consumer.committed([CTopicPartition(topic, p) for p in range(partitions)], timeout=10)
    assert [(tp.partition, tp.offset, tp.error) for tp in committed] == [(p, 50, None) for p in range(partitions)]

    # One member leaves (librdkafka sends LeaveGroup for a dynamic member); the
    # other two take over its partitions and resume at the committed offsets.
    leaving = members[2]
    orphaned = leaving.partitions()
    leaving.close()
    remaining = members[:2]
    for m in remaining:
        m.records.clear()
    poll_until(remaining, settled(remaining, 3, partitions), "two members with three partitions each after one left")
    assert set(orphaned) <= set(remaining[0].partitions() + remaining[1].partitions())

    # Every record of the second batch is read exactly once, and nothing of the
    # first batch is read again: every partition, moved or not, resumed at 50.
    second = batch("second", partitions, 30)
    produce_values(broker.bootstrap, topic, second)
    poll_until(remaining, lambda: sum(len(m.records) for m in remaining) >= 180, "all 180 records of the second batch read")
    drain(remaining)
    assert_each_read_once(remaining, second)
    assert all(offset >= 50 for m in remaining for _, offset, _ in m.records)
    for m in remaining:
        m.consumer.commit(asynchronous=False)
        m.close()


def test_committed_offsets_and_metadata_survive_kill_9(broker_factory, cleanup):
    """An acknowledged OffsetCommit is in __consumer_offsets before the answer, so
    a SIGKILL (which loses nothing written to the page cache; no per-message
    fsync is configured) keeps it: after a restart on the same data directory,
    committed() and a new member of each client start at the committed offsets."""
    broker = broker_factory(GROUP_PROPERTIES)
    topic = "crash-resume"
    create_topic(broker.bootstrap, topic, 2)
    # Partition 0 holds records 0..19, partition 1 records 20..39, each at offsets 0..19.
    produce_kafka_python(broker.bootstrap, topic, 20, partition=0)
    produce_kafka_python(broker.bootstrap, topic, 20, partition=1, start=20)
    tp0, tp1 = KTopicPartition(topic, 0), KTopicPartition(topic, 1)
    # Metadata is a Kafka STRING: UTF-8, up to offset.metadata.max.bytes (4096).
    kp_commits = {tp0: OffsetAndMetadata(7, "kafka-python p0 \u2713", -1), tp1: OffsetAndMetadata(4, "kp-p1:" + "x" * 1000, -1)}
    ck_commits = [CTopicPartition(topic, 0, 3, metadata="librdkafka p0 \u00e9"), CTopicPartition(topic, 1, 11, metadata="")]

    kp = kafka_python_member(broker.bootstrap, topic, group_id="crash-kp", enable_auto_commit=False, heartbeat_interval_ms=500)
    cleanup.append(kp)
    assert wait_until(lambda: kp.poll(timeout_ms=100) is not None and kp.assignment() == {tp0, tp1}, DEADLINE_S), kp.assignment()
    kp.commit(kp_commits)
    kp.close()
    ck = Member(broker.bootstrap, "crash-ck", topic, "crash-ck")
    cleanup.append(ck.consumer)
    poll_until([ck], lambda: ck.partitions() == [0, 1], "the librdkafka member assigned both partitions")
    ck.consumer.commit(offsets=ck_commits, asynchronous=False)
    ck.close()

    broker.kill()
    broker = broker_factory(GROUP_PROPERTIES)

    # kafka-python: committed() returns offsets and metadata; a new member resumes there.
    kp = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="crash-kp", enable_auto_commit=False, heartbeat_interval_ms=500)
    cleanup.append(kp)
    for tp, want in kp_commits.items():
        got = kp.committed(tp, metadata=True)
        assert (got.offset, got.metadata) == (want.offset, want.metadata), f"{tp}: {got}"
    kp.subscribe([topic])
    got = read_kafka_python(kp, 13 + 16)
    assert not kp.poll(timeout_ms=300), "records beyond the ones after the committed offsets"
    check(got[0], 13, start=7, first_offset=7)
    check(got[1], 16, start=24, first_offset=4)
    kp.close()

    # librdkafka: the same for the group it committed in.
    ck = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "crash-ck", "enable.auto.commit": False, "heartbeat.interval.ms": 500})
    cleanup.append(ck)
    committed = ck.committed([CTopicPartition(topic, 0), CTopicPartition(topic, 1)], timeout=10)
    assert [(tp.partition, tp.offset, tp.metadata, tp.error) for tp in committed] == [
        (0, 3, "librdkafka p0 \u00e9", None),
        (1, 11, "", None),
    ]
    ck.subscribe([topic])
    got = read_confluent(ck, 17 + 9)
    assert not [m for m in ck.consume(num_messages=10, timeout=0.3) if m.error() is None], "records beyond the ones after the committed offsets"
    check(got[0], 17, start=3, first_offset=3)
    check(got[1], 9, start=31, first_offset=11)
    ck.close()

    # The admin clients read the committed offsets after the restart too.
    # kafka-python reads what librdkafka committed: confluent-kafka 2.16.1 sends
    # a metadata string with its C terminator (confluent_kafka.c, py_to_c_parts:
    # `metadata_size = strlen(tp->metadata) + 1`) and strips it when reading
    # back; the broker keeps the bytes it was sent, so kafka-python sees the NUL.
    # The other way round is not checked: confluent-kafka's AdminClient hands
    # metadata to Python as a C string (c_part_to_py ignores metadata_size), so
    # metadata committed by another client, without a terminator, comes back with
    # whatever follows it in memory.
    kadmin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    cleanup.append(kadmin)
    offsets = kadmin.list_group_offsets(["crash-ck", "crash-kp"])
    assert {tp: (o.offset, o.metadata) for tp, o in offsets["crash-ck"].items()} == {tp0: (3, "librdkafka p0 \u00e9\x00"), tp1: (11, "\x00")}
    assert {tp: (o.offset, o.metadata) for tp, o in offsets["crash-kp"].items()} == {tp: (o.offset, o.metadata) for tp, o in kp_commits.items()}
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    listed = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions("crash-ck")])["crash-ck"].result(30)
    assert sorted((tp.partition, tp.offset, tp.metadata) for tp in listed.topic_partitions) == [(0, 3, "librdkafka p0 \u00e9"), (1, 11, "")]
    broker.stop()


def test_kafka_python_admin_lists_describes_and_deletes_groups(broker, cleanup):
    """kafka-python 3.0.12 names the group admin calls list_groups, describe_groups,
    list_group_offsets and delete_groups (2.x: list_consumer_groups and so on)."""
    topic, group = "kp-admin", "kp-admin-group"
    create_topic(broker.bootstrap, topic, 2)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    cleanup.append(admin)
    consumers = [
        kafka_python_member(broker.bootstrap, topic, group_id=group, client_id=f"kp-admin-{i}", auto_offset_reset="earliest", enable_auto_commit=False, heartbeat_interval_ms=500)
        for i in range(2)
    ]
    cleanup.extend(consumers)
    read = collections.Counter()

    def poll_all():
        for c in consumers:
            for records in c.poll(timeout_ms=50).values():
                read.update(r.value for r in records)
        return all(len(c.assignment()) == 1 for c in consumers) and {tp for c in consumers for tp in c.assignment()} == {
            KTopicPartition(topic, 0),
            KTopicPartition(topic, 1),
        }

    assert wait_until(poll_all, DEADLINE_S, 0), [c.assignment() for c in consumers]
    produce_values(broker.bootstrap, topic, batch("kp-admin", 2, 5))
    assert wait_until(lambda: poll_all() and sum(read.values()) >= 10, DEADLINE_S, 0), read
    for c in consumers:
        c.commit()

    listed = {g["group_id"]: g for g in admin.list_groups()}
    assert group in listed, listed
    assert (listed[group]["protocol_type"], listed[group]["group_state"]) == ("consumer", "Stable")
    description = admin.describe_groups([group])[group]
    assert (description["error"], description["group_state"], description["protocol_type"]) == (None, "Stable", "consumer")
    assert description["protocol_data"] in ("range", "roundrobin")
    members = {m["member_id"]: m for m in description["members"]}
    assert set(members) == {c.group_metadata().member_id for c in consumers}
    for c in consumers:
        m = members[c.group_metadata().member_id]
        assert m["client_id"] == c.config["client_id"]
        assigned = {KTopicPartition(t["topic"], p) for t in m["member_assignment"]["assigned_partitions"] for p in t["partitions"]}
        assert assigned == c.assignment(), m
        assert m["member_metadata"]["topics"] == [topic]
    offsets = admin.list_group_offsets(group)[group]
    assert {tp: o.offset for tp, o in offsets.items()} == {KTopicPartition(topic, 0): 5, KTopicPartition(topic, 1): 5}

    # A group with members cannot be deleted, and refusing keeps its offsets.
    assert admin.delete_groups([group]) == {group: "NonEmptyGroupError"}
    assert {tp: o.offset for tp, o in admin.list_group_offsets(group)[group].items()} == {KTopicPartition(topic, 0): 5, KTopicPartition(topic, 1): 5}

    for c in consumers:
        c.close()  # LeaveGroup each: the group is empty at once, not after a session timeout
    description = admin.describe_groups([group])[group]
    assert (description["error"], description["group_state"], description["members"]) == (None, "Empty", [])
    assert {g["group_id"]: g["group_state"] for g in admin.list_groups()}.get(group) == "Empty"
    assert admin.delete_groups([group]) == {group: "OK"}
    assert group not in {g["group_id"] for g in admin.list_groups()}
    assert admin.list_group_offsets(group) == {group: {}}
    assert admin.describe_groups([group])[group]["group_state"] == "Dead"


def test_confluent_admin_lists_describes_and_deletes_groups(broker, cleanup):
    topic, group = "ck-admin", "ck-admin-group"
    create_topic(broker.bootstrap, topic, 2)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    members = [Member(broker.bootstrap, group, topic, f"ck-admin-{i}", **{"heartbeat.interval.ms": 500}) for i in range(2)]
    cleanup.extend(m.consumer for m in members)
    poll_until(members, settled(members, 1, 2), "two members with one partition each")
    values = batch("ck-admin", 2, 5)
    produce_values(broker.bootstrap, topic, values)
    poll_until(members, lambda: sum(len(m.records) for m in members) >= 10, "all 10 records read")
    assert_each_read_once(members, values)
    for m in members:
        m.consumer.commit(asynchronous=False)

    listing = {g.group_id: g for g in admin.list_consumer_groups().result(30).valid}
    assert group in listing, listing
    assert (listing[group].state, listing[group].is_simple_consumer_group) == (ConsumerGroupState.STABLE, False)
    assert listing[group].type == ConsumerGroupType.CLASSIC
    stable_only = admin.list_consumer_groups(states={ConsumerGroupState.STABLE}).result(30).valid
    assert group in {g.group_id for g in stable_only}

    description = admin.describe_consumer_groups([group])[group].result(30)
    assert (description.group_id, description.state, description.is_simple_consumer_group) == (group, ConsumerGroupState.STABLE, False)
    assert description.partition_assignor in ("range", "roundrobin")
    assert description.coordinator.id in NODE_IDS
    by_id = {d.member_id: d for d in description.members}
    assert set(by_id) == {m.consumer.memberid() for m in members}
    for m in members:
        d = by_id[m.consumer.memberid()]
        assert d.client_id == m.name
        assert sorted(tp.partition for tp in d.assignment.topic_partitions if tp.topic == topic) == m.partitions()

    offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(30)
    assert sorted((tp.topic, tp.partition, tp.offset) for tp in offsets.topic_partitions) == [(topic, 0, 5), (topic, 1, 5)]

    assert confluent_error(admin.delete_consumer_groups([group])[group]) == KafkaError.NON_EMPTY_GROUP
    for m in members:
        m.close()
    description = admin.describe_consumer_groups([group])[group].result(30)
    assert (description.state, description.members) == (ConsumerGroupState.EMPTY, [])
    assert confluent_error(admin.delete_consumer_groups([group])[group]) is None
    assert group not in {g.group_id for g in admin.list_consumer_groups().result(30).valid}


def test_offsets_of_a_group_that_never_existed(broker, cleanup):
    """OffsetFetch for an unknown group is no error: offset -1 (None, OFFSET_INVALID), and no group appears."""
    topic = "never-grouped"
    create_topic(broker.bootstrap, topic, 1)
    produce_values(broker.bootstrap, topic, batch("never", 1, 3))
    tp = KTopicPartition(topic, 0)

    kadmin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    cleanup.append(kadmin)
    offsets = kadmin.list_group_offsets({"never-existed-1": [tp]})
    assert {tp: (o.offset, o.metadata) for tp, o in offsets["never-existed-1"].items()} == {tp: (-1, "")}

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="never-existed-2", enable_auto_commit=False)
    cleanup.append(consumer)
    assert consumer.committed(tp) is None
    consumer.close()

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    listed = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions("never-existed-3", [CTopicPartition(topic, 0)])])
    result = listed["never-existed-3"].result(30)
    assert [(t.partition, t.offset, t.error) for t in result.topic_partitions] == [(0, OFFSET_INVALID, None)]
    ck = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "never-existed-4", "enable.auto.commit": False})
    cleanup.append(ck)
    assert [(t.offset, t.error) for t in ck.committed([CTopicPartition(topic, 0)], timeout=10)] == [(OFFSET_INVALID, None)]
    ck.close()

    # Asking for offsets creates no group.
    names = {g["group_id"] for g in kadmin.list_groups()}
    assert not names & {"never-existed-1", "never-existed-2", "never-existed-3", "never-existed-4"}, names


def test_kip848_consumer_protocol_splits_partitions(broker, cleanup):
    topic, group, partitions = "kip848", "kip848-group", 4
    create_topic(broker.bootstrap, topic, partitions)
    # The broker sets the heartbeat interval (group.consumer.heartbeat.interval.ms);
    # librdkafka refuses the classic session and heartbeat settings with this protocol.
    members = [Member(broker.bootstrap, group, topic, f"kip848-{i}", **{"group.protocol": "consumer"}) for i in range(2)]
    cleanup.extend(m.consumer for m in members)
    poll_until(members, settled(members, 2, partitions), "two KIP-848 members with two partitions each")
    values = batch("kip848", partitions, 100)
    produce_values(broker.bootstrap, topic, values)
    poll_until(members, lambda: sum(len(m.records) for m in members) >= 400, "all 400 records read")
    drain(members)
    assert_each_read_once(members, values)
    for m in members:
        m.consumer.commit(asynchronous=False)

    # librdkafka 2.16 describes a consumer-type group with ConsumerGroupDescribe.
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    description = admin.describe_consumer_groups([group])[group].result(30)
    assert (description.type, description.state) == (ConsumerGroupType.CONSUMER, ConsumerGroupState.STABLE)
    by_id = {d.member_id: d for d in description.members}
    assert set(by_id) == {m.consumer.memberid() for m in members}
    for m in members:
        assert sorted(tp.partition for tp in by_id[m.consumer.memberid()].assignment.topic_partitions) == m.partitions()
    listing = {g.group_id: g for g in admin.list_consumer_groups().result(30).valid}
    assert listing[group].type == ConsumerGroupType.CONSUMER

    offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(30)
    assert sorted((tp.partition, tp.offset) for tp in offsets.topic_partitions) == [(p, 100) for p in range(partitions)]

    # A member leaves (a heartbeat with member epoch -1); the other is assigned
    # all four partitions and resumes each at its committed offset.
    members[1].close()
    remaining = members[:1]
    remaining[0].records.clear()
    poll_until(remaining, settled(remaining, 4, partitions), "the remaining KIP-848 member holding all four partitions")
    values = batch("kip848-after-leave", partitions, 20)
    produce_values(broker.bootstrap, topic, values)
    poll_until(remaining, lambda: len(remaining[0].records) >= 80, "all 80 records after the leave read")
    drain(remaining)
    assert_each_read_once(remaining, values)
    assert all(offset >= 100 for _, offset, _ in remaining[0].records)
    remaining[0].close()
    assert wait_until(lambda: admin.describe_consumer_groups([group])[group].result(30).state == ConsumerGroupState.EMPTY, DEADLINE_S)


@pytest.mark.parametrize("restarted_role", ["follower", "leader"])
def test_static_member_rejoins_with_its_partitions_and_no_rebalance(broker, cleanup, restarted_role):
    """KIP-345: a static member that comes back within session.timeout.ms gets its
    partitions again without a rebalance. The group's leader is its first member
    (it computes the assignment); either role must rejoin without a rebalance:
    the coordinator hands back the stored assignment (Kafka 3.2+, KIP-814, tells
    a returning leader to skip the assignment; an older JoinGroup version makes
    it assign again, and the coordinator keeps the stored assignment)."""
    topic = group = f"static-{restarted_role}"
    partitions = 4
    create_topic(broker.bootstrap, topic, partitions)
    config = {"heartbeat.interval.ms": 500, "session.timeout.ms": 15_000}
    joined = {}
    # The member that joins first leads; the second joins once the first holds every partition.
    for name in ("static-a", "static-other") if restarted_role == "leader" else ("static-other", "static-a"):
        instance = {"group.instance.id": name} if name == "static-a" else {}
        joined[name] = Member(broker.bootstrap, group, topic, name, **config, **instance)
        cleanup.append(joined[name].consumer)
        if len(joined) == 1:
            poll_until([joined[name]], lambda m=joined[name]: m.partitions() == list(range(partitions)), f"{name} (joining first) holding every partition")
    static, other = joined["static-a"], joined["static-other"]
    poll_until([other, static], settled([other, static], 2, partitions), "two members with two partitions each")
    values = batch("static-1", partitions, 10)
    produce_values(broker.bootstrap, topic, values)
    poll_until([other, static], lambda: len(other.records) + len(static.records) >= 40, "all 40 records read")
    assert_each_read_once([other, static], values)
    static.consumer.commit(asynchronous=False)
    other.consumer.commit(asynchronous=False)
    held = static.partitions()
    other_held = other.partitions()
    other.events.clear()

    # librdkafka sends no LeaveGroup for a static member: the group keeps its
    # place (and its partitions) until session.timeout.ms.
    static.close()
    restarted = Member(broker.bootstrap, group, topic, "static-a-again", **{**config, "group.instance.id": "static-a"})
    cleanup.append(restarted.consumer)
    poll_until([other, restarted], lambda: restarted.partitions() == held, f"the restarted static member holding {held} again")
    assert restarted.events == [("assign", held)], restarted

    # Records produced now reach the same owners, from the committed offsets.
    values = batch("static-2", partitions, 10)
    produce_values(broker.bootstrap, topic, values)
    other.records.clear()
    poll_until([other, restarted], lambda: len(other.records) + len(restarted.records) >= 40, "all 40 new records read")
    drain([other, restarted], 2.0)  # several heartbeats: a rebalance would reach the other member
    assert_each_read_once([other, restarted], values)
    assert other.partitions() == other_held
    assert other.events == [], f"the other member saw a rebalance when the static member came back: {other.events}"

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    description = admin.describe_consumer_groups([group])[group].result(30)
    assert description.state == ConsumerGroupState.STABLE
    instances = {d.group_instance_id: d for d in description.members}
    assert set(instances) == {None, "static-a"}, instances
    assert instances["static-a"].member_id == restarted.consumer.memberid()
    assert sorted(tp.partition for tp in instances["static-a"].assignment.topic_partitions) == held
    restarted.close()
    other.close()
