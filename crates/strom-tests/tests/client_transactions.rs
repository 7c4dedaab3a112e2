//! strom-client's transactional producer against the real broker, judged by
//! an independent client: librdkafka's read_committed consumer sees exactly
//! the committed transactions across three topics, its read_uncommitted
//! consumer sees everything; offsets sent to a transaction reach the group
//! only on commit; a second instance of the transactional id fences the first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{BrokerProcess, assign};
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use strom_client::{
    ClientConfig, Consumer, ConsumerGroupMetadata, Error, ErrorCode, Offset, Producer,
    ProducerRecord, TopicPartition,
};

const TOPICS: [&str; 3] = ["txn-a", "txn-b", "txn-c"];

fn config(broker: &BrokerProcess, settings: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &broker.bootstrap);
    for (k, v) in settings {
        config.set(*k, *v);
    }
    config
}

/// The values of `topic`/0 up to its end, read by librdkafka at `isolation`.
fn rd_values(broker: &BrokerProcess, topic: &str, isolation: &str) -> Vec<String> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", "unused")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    assign(&consumer, topic, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut values = Vec::new();
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => values.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap()),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return values,
            _ => {}
        }
    }
    panic!("no end of {topic} within 30 s; read {values:?}");
}

async fn send_to_all(producer: &Producer, label: &str) {
    for topic in TOPICS {
        for i in 0..3 {
            producer
                .send(
                    ProducerRecord::new(topic)
                        .partition(0)
                        .value(format!("{label}-{i}")),
                )
                .await
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_and_aborted_transactions_across_three_topics() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    tokio::task::block_in_place(|| {
        for topic in TOPICS {
            broker.create_topic(topic, 1);
        }
    });
    let producer =
        Producer::new(&config(&broker, &[("transactional.id", "orders-writer")])).unwrap();
    // Sending outside a transaction is refused.
    let refused = producer
        .send(ProducerRecord::new(TOPICS[0]).value("x"))
        .await;
    assert!(matches!(refused, Err(Error::State(_))), "{refused:?}");
    producer.init_transactions().await.unwrap();

    producer.begin_transaction().unwrap();
    send_to_all(&producer, "first").await;
    producer.commit_transaction().await.unwrap();

    producer.begin_transaction().unwrap();
    send_to_all(&producer, "aborted").await;
    producer.flush().await.unwrap();
    producer.abort_transaction().await.unwrap();

    producer.begin_transaction().unwrap();
    send_to_all(&producer, "third").await;
    producer.commit_transaction().await.unwrap();

    let committed: Vec<String> = ["first", "third"]
        .iter()
        .flat_map(|l| (0..3).map(move |i| format!("{l}-{i}")))
        .collect();
    for topic in TOPICS {
        let (read_committed, read_uncommitted) = tokio::task::block_in_place(|| {
            (
                rd_values(&broker, topic, "read_committed"),
                rd_values(&broker, topic, "read_uncommitted"),
            )
        });
        assert_eq!(read_committed, committed, "{topic}");
        assert_eq!(read_uncommitted.len(), 9, "{topic}: {read_uncommitted:?}");
        // Our consumer agrees with librdkafka's.
        let ours =
            Consumer::new(&config(&broker, &[("isolation.level", "read_committed")])).unwrap();
        let tp = TopicPartition::new(topic, 0);
        ours.assign(std::slice::from_ref(&tp));
        ours.seek(&tp, Offset::Beginning).unwrap();
        let mut values = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while values.len() < committed.len() && Instant::now() < deadline {
            for r in ours.poll(Duration::from_millis(200)).await.unwrap() {
                values.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
            }
        }
        assert!(
            ours.poll(Duration::from_millis(300))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(values, committed, "{topic}");
    }
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_sent_to_a_transaction_reach_the_group_only_on_commit() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    tokio::task::block_in_place(|| {
        broker.create_topic("out", 1);
        broker.create_topic("in", 1);
    });
    let producer = Producer::new(&config(&broker, &[("transactional.id", "pipeline")])).unwrap();
    producer.init_transactions().await.unwrap();
    let group = ConsumerGroupMetadata::new("pipeline-group");
    let tp = TopicPartition::new("in", 0);
    let committed = |offset| BTreeMap::from([(tp.clone(), offset)]);

    producer.begin_transaction().unwrap();
    producer
        .send(ProducerRecord::new("out").partition(0).value("a"))
        .await
        .unwrap();
    producer
        .send_offsets_to_transaction(&committed(10), &group)
        .await
        .unwrap();
    producer.abort_transaction().await.unwrap();
    let reader = Consumer::new(&config(&broker, &[("group.id", "pipeline-group")])).unwrap();
    assert_eq!(
        reader.committed(std::slice::from_ref(&tp)).await.unwrap()[&tp],
        None
    );

    producer.begin_transaction().unwrap();
    producer
        .send(ProducerRecord::new("out").partition(0).value("b"))
        .await
        .unwrap();
    producer
        .send_offsets_to_transaction(&committed(20), &group)
        .await
        .unwrap();
    producer.commit_transaction().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = reader.committed(std::slice::from_ref(&tp)).await.unwrap()[&tp];
        if got == Some(20) {
            break;
        }
        assert!(Instant::now() < deadline, "committed offset {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_fences_the_old_and_aborts_its_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    tokio::task::block_in_place(|| broker.create_topic("fenced", 1));
    let settings = [("transactional.id", "zombie")];
    let old = Producer::new(&config(&broker, &settings)).unwrap();
    old.init_transactions().await.unwrap();
    old.begin_transaction().unwrap();
    old.send(
        ProducerRecord::new("fenced")
            .partition(0)
            .value("from-the-zombie"),
    )
    .await
    .unwrap();
    old.flush().await.unwrap();

    let new = Producer::new(&config(&broker, &settings)).unwrap();
    new.init_transactions().await.unwrap();
    new.begin_transaction().unwrap();
    new.send(
        ProducerRecord::new("fenced")
            .partition(0)
            .value("from-the-successor"),
    )
    .await
    .unwrap();
    new.commit_transaction().await.unwrap();

    let error = old.commit_transaction().await.unwrap_err();
    assert!(
        matches!(
            error.code(),
            Some(ErrorCode::ProducerFenced | ErrorCode::InvalidProducerEpoch)
        ),
        "{error:?}"
    );
    let values = tokio::task::block_in_place(|| rd_values(&broker, "fenced", "read_committed"));
    assert_eq!(values, ["from-the-successor"]);
    let all: BTreeSet<String> =
        tokio::task::block_in_place(|| rd_values(&broker, "fenced", "read_uncommitted"))
            .into_iter()
            .collect();
    assert!(all.contains("from-the-zombie"));
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_read_committed_consumer_skips_librdkafkas_aborted_transactions() {
    use rdkafka::producer::{BaseRecord, Producer as _};
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    tokio::task::block_in_place(|| {
        broker.create_topic("from-rdkafka", 1);
        let producer = broker.producer(&[
            ("transactional.id", "rd-writer"),
            ("compression.type", "lz4"),
        ]);
        producer.init_transactions(Duration::from_secs(30)).unwrap();
        for (label, commit) in [("one", true), ("two", false), ("three", true)] {
            producer.begin_transaction().unwrap();
            for i in 0..50 {
                let value = format!("{label}-{i}");
                producer
                    .send(
                        BaseRecord::<str, str>::to("from-rdkafka")
                            .partition(0)
                            .key("k")
                            .payload(&value),
                    )
                    .unwrap();
            }
            if commit {
                producer
                    .commit_transaction(Duration::from_secs(30))
                    .unwrap();
            } else {
                producer.flush(Duration::from_secs(30)).unwrap();
                producer.abort_transaction(Duration::from_secs(30)).unwrap();
            }
        }
    });
    let expected: Vec<String> = ["one", "three"]
        .iter()
        .flat_map(|l| (0..50).map(move |i| format!("{l}-{i}")))
        .collect();
    for (isolation, count) in [("read_committed", 100), ("read_uncommitted", 150)] {
        let ours = Consumer::new(&config(
            &broker,
            &[
                ("isolation.level", isolation),
                ("auto.offset.reset", "earliest"),
            ],
        ))
        .unwrap();
        ours.assign(&[TopicPartition::new("from-rdkafka", 0)]);
        let mut values = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while values.len() < count && Instant::now() < deadline {
            for r in ours.poll(Duration::from_millis(200)).await.unwrap() {
                values.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
            }
        }
        assert!(
            ours.poll(Duration::from_millis(300))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(values.len(), count, "{isolation}");
        if isolation == "read_committed" {
            assert_eq!(values, expected);
        }
    }
    broker.stop();
}
