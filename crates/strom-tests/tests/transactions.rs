//! Transactions with librdkafka (the `rdkafka` crate's bundled build) against
//! the real broker binary: commit and abort across three topics,
//! read_committed against read_uncommitted consumers, offsets sent to a
//! transaction, producers fenced or timed out mid-transaction, and a kill -9
//! of the broker mid-transaction.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{BrokerProcess, wait_until};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);
const TOPICS: [&str; 3] = ["orders", "payments", "shipments"];

fn txn_producer(broker: &BrokerProcess, id: &str, timeout_ms: &str) -> BaseProducer {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("transactional.id", id)
        .set("transaction.timeout.ms", timeout_ms)
        .set("linger.ms", "1")
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(TIMEOUT)
        .expect("init_transactions");
    producer
}

/// Sends `n` records `<prefix>-<i>` to partition 0 of each of `topics`.
fn send_all(producer: &BaseProducer, topics: &[&str], prefix: &str, n: usize) {
    for topic in topics {
        for i in 0..n {
            let payload = format!("{prefix}-{i}");
            let mut record = BaseRecord::<(), _>::to(topic)
                .partition(0)
                .payload(&payload);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        producer.poll(Duration::from_millis(10));
                        record = r;
                    }
                }
            }
        }
    }
    producer.flush(TIMEOUT).expect("records delivered");
}

fn consumer(broker: &BrokerProcess, isolation: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", "strom-txn-tests")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer")
}

/// Every record a consumer with `isolation` reads from the start of each of
/// `topics` until librdkafka reports the partition's end (the last stable
/// offset for read_committed, the high watermark otherwise), by topic.
fn read_all(
    broker: &BrokerProcess,
    isolation: &str,
    topics: &[&str],
) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for topic in topics {
        // One consumer per topic: the end-of-partition event names only the
        // partition number.
        let consumer = consumer(broker, isolation);
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(topic, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&list).unwrap();
        let mut records = Vec::new();
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "{isolation}: {topic} reached its end"
            );
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    records.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap());
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => panic!("{isolation}: {topic}: {e}"),
                None => {}
            }
        }
        out.insert((*topic).to_owned(), records);
    }
    out
}

fn expected(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[test]
fn commit_and_abort_across_three_topics() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    for t in TOPICS {
        broker.create_topic(t, 1);
    }
    let producer = txn_producer(&broker, "three-topics", "60000");
    producer.begin_transaction().unwrap();
    send_all(&producer, &TOPICS, "first", 20);
    producer.commit_transaction(TIMEOUT).unwrap();
    producer.begin_transaction().unwrap();
    send_all(&producer, &TOPICS, "aborted", 20);
    producer.abort_transaction(TIMEOUT).unwrap();
    producer.begin_transaction().unwrap();
    send_all(&producer, &TOPICS, "second", 20);
    producer.commit_transaction(TIMEOUT).unwrap();

    let committed = read_all(&broker, "read_committed", &TOPICS);
    let uncommitted = read_all(&broker, "read_uncommitted", &TOPICS);
    for t in TOPICS {
        let mut want = expected("first", 20);
        want.extend(expected("second", 20));
        assert_eq!(
            committed[t], want,
            "{t}: read_committed sees only committed"
        );
        let mut all = expected("first", 20);
        all.extend(expected("aborted", 20));
        all.extend(expected("second", 20));
        assert_eq!(uncommitted[t], all, "{t}: read_uncommitted sees all");
    }
    broker.stop();
}

#[test]
fn offsets_sent_to_a_transaction_count_only_on_commit() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    broker.create_topic("input", 1);
    broker.create_topic("output", 1);
    // read_uncommitted: OffsetFetch without require_stable, so the committed
    // offset can be looked at while a transaction holds a new one (a
    // read_committed consumer waits: UNSTABLE_OFFSET_COMMIT, checked below).
    let group: BaseConsumer = broker
        .group_config("eos-group")
        .set("isolation.level", "read_uncommitted")
        .create()
        .unwrap();
    let metadata = group.group_metadata().expect("group metadata");
    let producer = txn_producer(&broker, "eos", "60000");
    let committed = |group: &BaseConsumer| -> Offset {
        let mut list = TopicPartitionList::new();
        list.add_partition("input", 0);
        group
            .committed_offsets(list, TIMEOUT)
            .unwrap()
            .find_partition("input", 0)
            .unwrap()
            .offset()
    };
    let offsets = |offset: i64| {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset("input", 0, Offset::Offset(offset))
            .unwrap();
        list
    };

    producer.begin_transaction().unwrap();
    send_all(&producer, &["output"], "aborted", 3);
    producer
        .send_offsets_to_transaction(&offsets(5), &metadata, TIMEOUT)
        .unwrap();
    producer.abort_transaction(TIMEOUT).unwrap();
    assert_eq!(
        committed(&group),
        Offset::Invalid,
        "aborted offsets never count"
    );

    producer.begin_transaction().unwrap();
    send_all(&producer, &["output"], "committed", 3);
    producer
        .send_offsets_to_transaction(&offsets(7), &metadata, TIMEOUT)
        .unwrap();
    assert_eq!(committed(&group), Offset::Invalid, "not before the commit");
    let stable: BaseConsumer = broker.group_config("eos-group").create().unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition("input", 0);
    assert!(
        stable
            .committed_offsets(list, Duration::from_secs(2))
            .is_err(),
        "a read_committed consumer waits for the transaction"
    );
    producer.commit_transaction(TIMEOUT).unwrap();
    assert_eq!(committed(&stable), Offset::Offset(7));
    assert_eq!(committed(&group), Offset::Offset(7));
    let out = read_all(&broker, "read_committed", &["output"]);
    assert_eq!(out["output"], expected("committed", 3));
    drop(producer);
    drop(group);

    // The committed offset survives a restart (replayed from the offsets topic).
    broker.stop();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let group: BaseConsumer = broker.group_config("eos-group").create().unwrap();
    assert_eq!(committed(&group), Offset::Offset(7));
    broker.stop();
}

#[test]
fn an_abandoned_transaction_is_aborted_on_reinit_or_after_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &["transaction.abort.timed.out.transaction.cleanup.interval.ms=200"],
    );
    broker.create_topic("events", 1);

    // A producer that dies mid-transaction: its successor's init aborts it.
    let first = txn_producer(&broker, "worker", "60000");
    first.begin_transaction().unwrap();
    send_all(&first, &["events"], "lost", 5);
    std::mem::forget(first);
    let second = txn_producer(&broker, "worker", "60000");
    second.begin_transaction().unwrap();
    send_all(&second, &["events"], "kept", 5);
    second.commit_transaction(TIMEOUT).unwrap();
    assert_eq!(
        read_all(&broker, "read_committed", &["events"])["events"],
        expected("kept", 5)
    );

    // A producer that stalls: the coordinator aborts after its timeout.
    let stalled = txn_producer(&broker, "staller", "1000");
    stalled.begin_transaction().unwrap();
    send_all(&stalled, &["events"], "stalled", 5);
    let after = txn_producer(&broker, "after", "60000");
    after.begin_transaction().unwrap();
    send_all(&after, &["events"], "after", 5);
    after.commit_transaction(TIMEOUT).unwrap();
    // The stalled transaction holds the last stable offset back until the
    // coordinator aborts it.
    assert!(wait_until(TIMEOUT, || {
        let got = read_all(&broker, "read_committed", &["events"]);
        got["events"].len() == 10
    }));
    let got = read_all(&broker, "read_committed", &["events"]);
    let mut want = expected("kept", 5);
    want.extend(expected("after", 5));
    assert_eq!(got["events"], want);
    // The stalled producer was fenced.
    assert!(stalled.commit_transaction(TIMEOUT).is_err());
    broker.stop();
}

#[test]
fn kill_9_mid_transaction_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start(&data, &[]);
    for t in TOPICS {
        broker.create_topic(t, 1);
    }
    let producer = txn_producer(&broker, "crash", "60000");
    producer.begin_transaction().unwrap();
    send_all(&producer, &TOPICS, "done", 10);
    producer.commit_transaction(TIMEOUT).unwrap();
    producer.begin_transaction().unwrap();
    send_all(&producer, &TOPICS, "open", 10);
    broker.kill9();
    std::mem::forget(producer);

    let broker = BrokerProcess::start(&data, &[]);
    // The open transaction still holds the last stable offset back.
    let committed = read_all(&broker, "read_committed", &TOPICS);
    for t in TOPICS {
        assert_eq!(committed[t], expected("done", 10), "{t}");
    }
    // The producer's successor aborts it; the committed one stays whole.
    let successor = txn_producer(&broker, "crash", "60000");
    successor.begin_transaction().unwrap();
    send_all(&successor, &TOPICS, "next", 10);
    successor.commit_transaction(TIMEOUT).unwrap();
    let committed = read_all(&broker, "read_committed", &TOPICS);
    let uncommitted = read_all(&broker, "read_uncommitted", &TOPICS);
    for t in TOPICS {
        let mut want = expected("done", 10);
        want.extend(expected("next", 10));
        assert_eq!(committed[t], want, "{t}");
        assert_eq!(uncommitted[t].len(), 30, "{t}");
    }
    broker.stop();
}
