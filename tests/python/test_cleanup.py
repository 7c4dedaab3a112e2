"""Retention and the log cleaner, seen from both clients.

Compacted topics keep the latest record of each key at the offset it was
produced at (with gaps between), tombstones (null values) stay for
`delete.retention.ms` after the clean that first finds them (KIP-534) and go at a
later clean; `compact,delete` topics are compacted and held to `retention.bytes`;
retention by `retention.ms` (also when changed on a live topic) moves the log
start, and consumers below it reset per `auto.offset.reset`.

The cleaner compacts closed segments only, so every compacted stream here ends
with two records of incompressible bytes (each over half of `segment.bytes`,
under its own key, in its own batch): whatever came before them sits in closed
segments. Producer batches stay well under `segment.bytes` (a larger one is
RECORD_LIST_TOO_LARGE). Nothing waits for a fixed time: every wait polls what a
client can see, up to a deadline; where "no retention ran yet" must be shown, a
witness topic's log start proves that retention passes ran.
"""

import itertools
import random
import time

import confluent_kafka
import kafka.errors as kerr
import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka import TopicPartition as CTopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KTopicPartition
from kafka.admin import KafkaAdminClient

from conftest import REPLICATION_FACTOR, module_broker, wait_until

# Retention checked every 100 ms, the cleaner looking for work every 50 ms.
broker = module_broker("log.retention.check.interval.ms=100", "log.cleaner.backoff.ms=50")

DEADLINE_S = 30
SEGMENT_BYTES = 16_384
FILLER_BYTES = 10_000  # over half a segment: two of them never share one
BATCH_BYTES = 4_096  # producer batches, well under a segment
DAY_MS = 86_400_000

_RANDOM = random.Random(20261125)
_WITNESSES = itertools.count()


def now_ms():
    return int(time.time() * 1000)


@pytest.fixture(scope="module")
def admin(broker):
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def create_topic(admin, topic, configs):
    admin.create_topics([NewTopic(topic, 1, REPLICATION_FACTOR, config=configs)])[topic].result(30)


def compacted_configs(**more):
    return {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.01", "segment.bytes": str(SEGMENT_BYTES), **more}


# ---------------------------------------------------------------- producing


def send_kafka_python(bootstrap, topic, items, one_per_batch=False, **config):
    """Sends (key, value[, timestamp ms]) items with kafka-python; returns {offset: (key, value)}."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0 if one_per_batch else 5, batch_size=BATCH_BYTES, **config)
    try:
        sent = []
        for key, value, *ts in items:
            future = producer.send(topic, key=key, value=value, partition=0, timestamp_ms=ts[0] if ts else None)
            if one_per_batch:
                future.get(timeout=DEADLINE_S)
            sent.append((future, key, value))
        producer.flush(DEADLINE_S)
        return {f.get(timeout=DEADLINE_S).offset: (key, value) for f, key, value in sent}
    finally:
        producer.close(timeout=10)


def send_confluent(bootstrap, topic, items, one_per_batch=False, **config):
    """Sends (key, value[, timestamp ms]) items with librdkafka; returns {offset: (key, value)} from delivery reports."""
    delivered = {}
    errors = []

    def report(err, msg):
        if err is not None:
            errors.append(err)
        else:
            assert msg.offset() not in delivered, f"offset {msg.offset()} reported twice"
            delivered[msg.offset()] = (msg.key(), msg.value())

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.size": BATCH_BYTES, **config})
    for key, value, *ts in items:
        producer.produce(topic, key=key, value=value, partition=0, timestamp=ts[0] if ts else 0, on_delivery=report)
        if one_per_batch:
            assert producer.flush(DEADLINE_S) == 0
        else:
            producer.poll(0)
    assert producer.flush(DEADLINE_S) == 0, "records left undelivered"
    assert not errors, f"delivery errors: {errors[:3]}"
    assert len(delivered) == len(items), f"{len(delivered)} delivery reports for {len(items)} records"
    return delivered


def fillers(tag=b""):
    """Two records of incompressible bytes, one batch each: everything before them is in closed segments.

    The second stays in the active segment, which is never cleaned: a later
    stream needs fillers under other keys (`tag`) to be compacted completely.
    """
    return [(b"filler-%s1" % tag, _RANDOM.randbytes(FILLER_BYTES)), (b"filler-%s2" % tag, _RANDOM.randbytes(FILLER_BYTES))]


def latest_of(produced):
    """{key: (offset, value)} of the highest offset of each key: what a compacted log keeps."""
    latest = {}
    for offset in sorted(produced):
        key, value = produced[offset]
        latest[key] = (offset, value)
    return latest


# ---------------------------------------------------------------- consuming


def read_confluent(bootstrap, topic, from_offset=confluent_kafka.OFFSET_BEGINNING, **config):
    """Every record from from_offset to the end of partition 0 as (offset, key, value); fails on any error."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "strom-py-unused", "enable.auto.commit": False, "enable.partition.eof": True, **config}
    )
    try:
        consumer.assign([CTopicPartition(topic, 0, from_offset)])
        out = []
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            for m in consumer.consume(num_messages=1000, timeout=0.1):
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        return out
                    raise AssertionError(f"consume error: {m.error()}")
                out.append((m.offset(), m.key(), m.value()))
        raise AssertionError(f"no end of partition after {len(out)} records within {DEADLINE_S} s")
    finally:
        consumer.close()


def read_kafka_python(bootstrap, topic):
    """Every record of partition 0 from its log start to its high watermark as (offset, key, value)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        tp = KTopicPartition(topic, 0)
        consumer.assign([tp])
        end = consumer.end_offsets([tp])[tp]
        consumer.seek_to_beginning(tp)
        out = []
        deadline = time.monotonic() + DEADLINE_S
        while consumer.position(tp) < end:
            assert time.monotonic() < deadline, f"kafka-python at {consumer.position(tp)} of {end} after {DEADLINE_S} s"
            for records in consumer.poll(timeout_ms=200).values():
                out += [(m.offset, m.key, m.value) for m in records]
        return out
    finally:
        consumer.close()


def confluent_watermarks(bootstrap, topic):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "strom-py-unused"})
    try:
        return consumer.get_watermark_offsets(CTopicPartition(topic, 0), timeout=10, cached=False)
    finally:
        consumer.close()


def watermarks(bootstrap, topic):
    """(log start, high watermark) from both clients; fails if they disagree.

    Asked of confluent-kafka before and after kafka-python, so that retention or
    a produce in between is told apart from a disagreement.
    """
    tp = KTopicPartition(topic, 0)
    kconsumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            before = confluent_watermarks(bootstrap, topic)
            kmarks = (kconsumer.beginning_offsets([tp])[tp], kconsumer.end_offsets([tp])[tp])
            after = confluent_watermarks(bootstrap, topic)
            if before == after or time.monotonic() > deadline:
                break
    finally:
        kconsumer.close()
    assert kmarks == after, f"kafka-python says {kmarks}, confluent-kafka {after}"
    return after


def log_start(bootstrap, topic):
    return confluent_watermarks(bootstrap, topic)[0]


def partition_bytes(bootstrap, topic):
    """kafka-python DescribeLogDirs: the bytes partition 0 takes on disk (in a cluster, on the
    replica that takes the most: every replica applies retention to its own copy)."""
    kadmin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        answers = kadmin.describe_log_dirs({topic: [0]})
    finally:
        kadmin.close()
    sizes = []
    for answer in answers:
        (log_dir,) = answer["log_dirs"]
        ((partition,),) = [t["partitions"] for t in log_dir["topics"]]
        sizes.append(partition["partition_size"])
    return max(sizes)


def retention_ran(admin, bootstrap, passes=2):
    """Returns once `passes` retention checks have run since the call.

    A witness topic keeping a minute gets a day-old record and its log start moves
    past it at the next check; the next witness record is produced only after
    that, so its deletion means the check that removed the first had finished.
    """
    topic = f"retention-witness-{next(_WITNESSES)}"
    create_topic(admin, topic, {"retention.ms": "60000"})
    for i in range(passes):
        send_confluent(bootstrap, topic, [(None, b"old", now_ms() - DAY_MS)])
        assert wait_until(lambda: log_start(bootstrap, topic) == i + 1, timeout_s=DEADLINE_S), f"witness {topic} kept record {i}"


# ---------------------------------------------------------------- checks


def check_records(records, produced):
    """What must hold of any read, compacted or not: offsets ascend and each record is one produced there."""
    offsets = [r[0] for r in records]
    assert all(a < b for a, b in zip(offsets, offsets[1:])), f"offsets do not ascend: {offsets[:20]}"
    for offset, key, value in records:
        assert produced.get(offset) == (key, value), f"offset {offset} holds {key!r}={value!r:.60}, produced {produced.get(offset)!r:.80}"


def compaction_problems(records, produced, tombstones="either"):
    """What keeps `records` from being the compacted log of `produced`: empty when each key appears
    once with its latest value at its offset. A deleted key's tombstone is "kept", "gone" or "either"."""
    check_records(records, produced)
    seen = {}
    problems = []
    for offset, key, value in records:
        if key in seen:
            problems.append(f"{key!r} at offsets {seen[key][0]} and {offset}")
        else:
            seen[key] = (offset, value)
    for key, (offset, value) in latest_of(produced).items():
        got = seen.get(key)
        if value is not None:
            allowed = [(offset, value)]
        else:
            allowed = {"kept": [(offset, None)], "gone": [None], "either": [(offset, None), None]}[tombstones]
        if got not in allowed:
            problems.append(f"{key!r}: read {got!r:.60}, want one of {allowed!r:.60}")
    return problems


def wait_compacted(read, produced, tombstones="either"):
    """Reads until the log is compacted; returns the last read."""
    records, problems = [], ["not read"]

    def compacted():
        nonlocal records, problems
        records = read()
        problems = compaction_problems(records, produced, tombstones)
        return not problems

    assert wait_until(compacted, timeout_s=DEADLINE_S, interval_s=0.1), (
        f"not compacted after {DEADLINE_S} s: {len(records)} records of {len(produced)}, {len(problems)} problems: {problems[:5]}"
    )
    return records


# ---------------------------------------------------------------- compaction


def test_compaction_keeps_the_latest_value_of_each_key(broker, admin):
    """Five rounds over 200 keys (kafka-python gzip, confluent-kafka zstd), tombstones, a key deleted and
    written again: both consumers read each key once, with its latest value, at the offset it was produced at."""
    topic = "compacted-updates"
    create_topic(admin, topic, compacted_configs())
    keys = [b"key-%03d" % k for k in range(200)]

    def value(key, round_):
        return (b"%s round %d|" % (key, round_)) * 8

    produced = send_kafka_python(broker.bootstrap, topic, [(k, value(k, r)) for r in range(3) for k in keys], compression_type="gzip")
    produced |= send_confluent(broker.bootstrap, topic, [(k, value(k, 3)) for k in keys], **{"compression.codec": "zstd"})
    # Round 4 updates the even keys only: the odd ones keep their round-3 value.
    produced |= send_confluent(broker.bootstrap, topic, [(k, value(k, 4)) for k in keys[::2]], **{"compression.codec": "zstd"})
    # Deleted: keys 3, 13, 23, ...; deleted and written again: keys 7, 17, 27, ...
    deleted = keys[3::10]
    revived = keys[7::10]
    produced |= send_kafka_python(broker.bootstrap, topic, [(k, None) for k in deleted + revived], compression_type="gzip")
    produced |= send_kafka_python(broker.bootstrap, topic, [(k, value(k, 5)) for k in revived], compression_type="gzip")
    produced |= send_confluent(broker.bootstrap, topic, fillers(), one_per_batch=True, **{"compression.codec": "zstd"})
    assert sorted(produced) == list(range(len(produced))), "offsets as produced are contiguous"
    assert len(produced) == 5 * 200 - 100 + 40 + 20 + 2

    # delete.retention.ms is a day by default: the tombstones are read as null values.
    records = wait_compacted(lambda: read_confluent(broker.bootstrap, topic), produced, tombstones="kept")
    # Compaction leaves gaps; the last record of every key stays where it was written.
    latest = latest_of(produced)
    survivors = {key for key, (_, v) in latest.items() if v is not None}
    assert len(survivors) == 200 - 20 + 2
    assert {k for _, k, v in records if v is not None} == survivors
    assert len(records) == len(survivors) + len(deleted) < len(produced) // 4
    assert dict((k, (o, v)) for o, k, v in records if v is not None) == {k: latest[k] for k in survivors}
    # The other client reads the same compacted log.
    assert read_kafka_python(broker.bootstrap, topic) == records
    # Nothing of it went: the log start stays at 0 (compaction never moves it).
    assert watermarks(broker.bootstrap, topic) == (0, len(produced))


def test_tombstones_go_after_delete_retention_ms(broker, admin):
    """A tombstone is read after the clean that first finds it, also at cleans before delete.retention.ms
    has passed since; a clean after that removes it: the deleted key is gone entirely."""
    topic = "tombstone-horizon"
    delete_retention_ms = 3_000
    create_topic(admin, topic, compacted_configs(**{"delete.retention.ms": str(delete_retention_ms)}))
    keys = [b"k-%03d" % k for k in range(100)]
    deleted = keys[::4]
    # No clean can have found a tombstone before this moment; its horizon is at least this plus delete.retention.ms.
    horizon_min_s = time.time() + delete_retention_ms / 1000
    produced = send_confluent(broker.bootstrap, topic, [(k, b"%s first|" % k * 10) for k in keys], **{"compression.codec": "lz4"})
    produced |= send_confluent(broker.bootstrap, topic, [(k, None) for k in deleted], **{"compression.codec": "lz4"})
    produced |= send_confluent(broker.bootstrap, topic, fillers(), one_per_batch=True)

    def read():
        records = read_kafka_python(broker.bootstrap, topic)
        gone = [k for k in deleted if k not in {key for _, key, _ in records}]
        assert not gone or time.time() >= horizon_min_s, f"tombstones of {gone[:5]} gone before delete.retention.ms passed"
        return records

    # After the first clean: the deleted keys' values are gone, their tombstones read as null values.
    records = wait_compacted(read, produced, tombstones="kept")
    assert [(k, v) for _, k, v in records if k in deleted] == [(k, None) for k in deleted]

    # New data makes the log dirty again; each round waits for the clean that compacts it, then looks at the tombstones.
    rounds_before_horizon = 0
    deadline = time.monotonic() + DEADLINE_S
    for round_ in itertools.count(1):
        assert time.monotonic() < deadline, f"tombstones still there after {round_ - 1} more cleans"
        produced |= send_confluent(broker.bootstrap, topic, [(k, b"%s round %d|" % (k, round_) * 10) for k in keys[1::4]])
        produced |= send_confluent(broker.bootstrap, topic, fillers(b"%d-" % round_), one_per_batch=True)
        records = wait_compacted(read, produced)
        kept = [k for _, k, v in records if k in deleted]
        if time.time() < horizon_min_s:
            rounds_before_horizon += 1
            assert kept == deleted, "a clean before the horizon removed tombstones"
        if not kept:
            break
    assert rounds_before_horizon >= 1, "no clean finished before delete.retention.ms passed: nothing shown about keeping tombstones"
    # Gone for both clients; every other key keeps its latest value.
    records = read_confluent(broker.bootstrap, topic)
    assert not compaction_problems(records, produced, tombstones="gone")
    fillers_sent = {k for k, _ in produced.values() if k.startswith(b"filler-")}
    assert {k for _, k, _ in records} == set(keys) - set(deleted) | fillers_sent


def test_compact_delete_compacts_and_keeps_retention_bytes(broker, admin):
    """cleanup.policy=compact,delete: duplicates go (compaction) and the oldest segments go (retention.bytes)."""
    topic = "compact-and-delete"
    retention_bytes = 30_000
    create_topic(admin, topic, compacted_configs(**{"cleanup.policy": "compact,delete", "retention.bytes": str(retention_bytes)}))
    # 300 distinct keys (about 40 KB that compaction cannot shrink), then five rounds over 40 hot keys.
    produced = send_kafka_python(broker.bootstrap, topic, [(b"once-%03d" % i, b"%03d" % i * 33) for i in range(300)])
    hot = [(b"hot-%02d" % k, b"%02d round %d|" % (k, r) * 10) for r in range(5) for k in range(40)]
    produced |= send_kafka_python(broker.bootstrap, topic, hot)
    produced |= send_kafka_python(broker.bootstrap, topic, fillers(), one_per_batch=True)
    total = len(produced)

    state = {}

    def done():
        start = log_start(broker.bootstrap, topic)
        records = read_confluent(broker.bootstrap, topic)
        size = partition_bytes(broker.bootstrap, topic)
        # What compaction keeps of the records from the log start on.
        above = {o: kv for o, kv in produced.items() if o >= start}
        state.update(start=start, size=size, problems=compaction_problems(records, above, tombstones="gone"), records=records)
        # retention.bytes: no segment goes that would leave the partition under it, so at most one segment more stays.
        return start > 0 and not state["problems"] and size < retention_bytes + SEGMENT_BYTES

    assert wait_until(done, timeout_s=DEADLINE_S, interval_s=0.1), (
        f"log start {state.get('start')}, {state.get('size')} bytes, problems {state.get('problems', [])[:5]}"
    )
    start, records = state["start"], state["records"]
    assert records[0][0] >= start
    # The newest value of every hot key and the fillers are still there, each once.
    keys = [k for _, k, _ in records]
    assert len(keys) == len(set(keys))
    assert len([k for k in keys if k.startswith(b"hot-")]) == 40, "200 hot records compacted to one per key"
    latest = latest_of(produced)
    for key in [b"hot-%02d" % k for k in range(40)] + [b"filler-1", b"filler-2"]:
        assert (latest[key][0], key, latest[key][1]) in records, f"{key!r} lost"
    assert read_kafka_python(broker.bootstrap, topic) == records
    assert watermarks(broker.bootstrap, topic) == (start, total)


# ---------------------------------------------------------------- retention by time


def test_retention_by_time_moves_the_log_start(broker, admin):
    """Day-old records in a topic keeping a minute all go (the active segment too); fresh ones stay;
    consumers at offset 0 reset to the new start (earliest) or fail (none)."""
    topic = "retention-by-time"
    create_topic(admin, topic, {"retention.ms": "60000"})
    old = [(b"old-%02d" % i, b"old value %d" % i, now_ms() - DAY_MS) for i in range(20)]
    assert sorted(send_kafka_python(broker.bootstrap, topic, old)) == list(range(20))
    assert wait_until(lambda: confluent_watermarks(broker.bootstrap, topic) == (20, 20), timeout_s=DEADLINE_S), (
        f"watermarks {confluent_watermarks(broker.bootstrap, topic)} after 20 day-old records"
    )
    assert watermarks(broker.bootstrap, topic) == (20, 20)
    fresh = [(b"new-%d" % i, b"new value %d" % i, now_ms()) for i in range(5)]
    produced = send_confluent(broker.bootstrap, topic, fresh)
    assert sorted(produced) == list(range(20, 25))
    retention_ran(admin, broker.bootstrap)
    assert watermarks(broker.bootstrap, topic) == (20, 25), "fresh records were deleted"
    expected = [(o, *produced[o]) for o in range(20, 25)]

    # confluent-kafka at offset 0, auto.offset.reset=earliest: from the new start.
    assert read_confluent(broker.bootstrap, topic, from_offset=0, **{"auto.offset.reset": "earliest"}) == expected
    # kafka-python with auto_offset_reset='none': OffsetOutOfRangeError, then seek_to_beginning finds offset 20.
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="none")
    try:
        tp = KTopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        with pytest.raises(kerr.OffsetOutOfRangeError):
            deadline = time.monotonic() + DEADLINE_S
            while time.monotonic() < deadline:
                assert not consumer.poll(timeout_ms=200), "records below the log start"
        consumer.seek_to_beginning(tp)
        assert consumer.position(tp) == 20
        got = []
        deadline = time.monotonic() + DEADLINE_S
        while len(got) < 5 and time.monotonic() < deadline:
            got += [(m.offset, m.key, m.value) for rs in consumer.poll(timeout_ms=200).values() for m in rs]
        assert got == expected
    finally:
        consumer.close()


def test_lowering_retention_ms_deletes_at_the_next_check(broker, admin):
    """Two-hour-old records stay under the default retention (7 days); retention.ms set to one hour on the
    live topic removes their segments at the next check, and only those."""
    topic = "retention-lowered"
    # Old batches of about 370 bytes, two per segment; each fresh batch (about 970 bytes) starts a segment.
    create_topic(admin, topic, {"segment.bytes": "1024"})
    two_hours_ago = now_ms() - 2 * 3_600_000
    produced = send_kafka_python(broker.bootstrap, topic, [(b"old-%02d" % i, b"o" * 300, two_hours_ago + i) for i in range(12)], one_per_batch=True)
    produced |= send_kafka_python(broker.bootstrap, topic, [(b"new-%d" % i, b"n" * 900, now_ms()) for i in range(5)], one_per_batch=True)
    assert sorted(produced) == list(range(17))
    # The leader's files (a follower's copy may lag).
    segments = sorted(int(p.stem) for p in broker.partition_dir(topic, 0).glob("*.log"))
    assert segments == [0, 2, 4, 6, 8, 10, 12, 13, 14, 15, 16], segments

    retention_ran(admin, broker.bootstrap)
    assert watermarks(broker.bootstrap, topic) == (0, 17), "two-hour-old records deleted under a 7-day retention"

    entry = ConfigEntry("retention.ms", "3600000", incremental_operation=AlterConfigOpType.SET)
    (future,) = admin.incremental_alter_configs([ConfigResource("topic", topic, incremental_configs=[entry])]).values()
    future.result(30)
    assert wait_until(lambda: log_start(broker.bootstrap, topic) > 0, timeout_s=DEADLINE_S), "retention.ms=1h deleted nothing"
    retention_ran(admin, broker.bootstrap)
    assert watermarks(broker.bootstrap, topic) == (12, 17)
    assert read_confluent(broker.bootstrap, topic) == [(o, *produced[o]) for o in range(12, 17)]
    assert read_kafka_python(broker.bootstrap, topic) == [(o, *produced[o]) for o in range(12, 17)]
