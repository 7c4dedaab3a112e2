//! strom-client's consumer against the real broker and an independent
//! client: it reads what librdkafka wrote, exactly, by assignment and in a
//! group; it seeks, pauses and commits; and a group of our consumers and
//! librdkafka consumers shares the partitions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BrokerProcess, Poller, flush};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use strom_client::{
    ClientConfig, Consumer, ConsumerRecord, Offset, RebalanceListener, TopicPartition,
};

const DEADLINE: Duration = Duration::from_secs(60);

fn config(broker: &BrokerProcess, settings: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &broker.bootstrap);
    for (k, v) in settings {
        config.set(*k, *v);
    }
    config
}

/// Produces `count` keyed, headered records with librdkafka, timestamps
/// 1000 + i; returns nothing, the records are a function of i.
fn produce(broker: &BrokerProcess, topic: &str, count: usize, codec: &str) {
    let producer = broker.producer(&[
        ("compression.type", codec),
        ("partitioner", "murmur2_random"),
    ]);
    for i in 0..count {
        let key = format!("key-{i}");
        let value = format!("value-{i}");
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "i",
                value: Some(i.to_string().as_bytes()),
            })
            .insert(Header {
                key: "none",
                value: None::<&[u8]>,
            });
        loop {
            let record = BaseRecord::to(topic)
                .key(&key)
                .payload(&value)
                .headers(headers.clone())
                .timestamp(1_000 + i as i64);
            match producer.send(record) {
                Ok(()) => break,
                Err(_) => {
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    flush(&producer);
}

/// Polls until `count` records came or the deadline passed.
async fn read(consumer: &Consumer, count: usize) -> Vec<ConsumerRecord> {
    let deadline = Instant::now() + DEADLINE;
    let mut out = Vec::new();
    while out.len() < count && Instant::now() < deadline {
        out.extend(consumer.poll(Duration::from_millis(200)).await.unwrap());
    }
    out
}

/// Polls until the position of `tp` is known (after a seek to the end or
/// to a time) and returns it; no records may come meanwhile.
async fn position_once_known(consumer: &Consumer, tp: &TopicPartition) -> i64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(position) = consumer.position(tp) {
            return position;
        }
        assert!(Instant::now() < deadline, "no position for {tp:?}");
        let records = consumer.poll(Duration::from_millis(100)).await.unwrap();
        assert!(
            records.is_empty(),
            "{} records before the position was known",
            records.len()
        );
    }
}

fn index(record: &ConsumerRecord) -> usize {
    std::str::from_utf8(record.value.as_deref().unwrap())
        .unwrap()
        .strip_prefix("value-")
        .unwrap()
        .parse()
        .unwrap()
}

fn check(record: &ConsumerRecord) {
    let i = index(record);
    assert_eq!(record.key.as_deref(), Some(format!("key-{i}").as_bytes()));
    assert_eq!(record.timestamp, 1_000 + i as i64);
    let headers: Vec<(String, Option<Vec<u8>>)> = record
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.as_ref().map(|v| v.to_vec())))
        .collect();
    assert_eq!(
        headers,
        [
            ("i".to_owned(), Some(i.to_string().into_bytes())),
            ("none".to_owned(), None)
        ]
    );
}

/// Every record once, each partition's in offset order without gaps.
fn check_all(records: &[ConsumerRecord], count: usize) {
    let mut seen = BTreeSet::new();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for r in records {
        check(r);
        assert!(seen.insert(index(r)), "record {} twice", index(r));
        let expected = next.entry(r.partition).or_insert(0);
        assert_eq!(
            r.offset, *expected,
            "partition {} out of order",
            r.partition
        );
        *expected += 1;
    }
    assert_eq!(seen.len(), count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_librdkafkas_records_by_assignment_in_every_codec_and_seeks() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("from-rdkafka-{codec}");
        tokio::task::block_in_place(|| {
            broker.create_topic(&topic, 3);
            produce(&broker, &topic, 3_000, codec);
        });
        let consumer =
            Consumer::new(&config(&broker, &[("auto.offset.reset", "earliest")])).unwrap();
        let partitions: Vec<TopicPartition> =
            (0..3).map(|p| TopicPartition::new(&topic, p)).collect();
        consumer.assign(&partitions);
        let records = read(&consumer, 3_000).await;
        check_all(&records, 3_000);
        assert!(
            consumer
                .poll(Duration::from_millis(300))
                .await
                .unwrap()
                .is_empty()
        );
    }

    // Seeks on one partition: to an offset, a timestamp, the beginning, the end.
    let topic = "from-rdkafka-none";
    let tp = TopicPartition::new(topic, 0);
    let consumer = Consumer::new(&config(&broker, &[])).unwrap();
    consumer.assign(std::slice::from_ref(&tp));
    consumer.seek(&tp, Offset::Beginning).unwrap();
    let all = read(&consumer, 1).await;
    assert_eq!(all[0].offset, 0);
    // The end first, then every record up to it.
    consumer.seek(&tp, Offset::End).unwrap();
    let end = position_once_known(&consumer, &tp).await;
    assert!(end > 10, "partition 0 has {end} records");
    consumer.seek(&tp, Offset::At(0)).unwrap();
    let all_p0 = read(&consumer, usize::try_from(end).unwrap()).await;
    assert_eq!(all_p0.len() as i64, end);
    assert!(all_p0.iter().enumerate().all(|(i, r)| r.offset == i as i64));
    consumer.seek(&tp, Offset::At(5)).unwrap();
    assert_eq!(read(&consumer, 1).await[0].offset, 5);
    let target = &all_p0[7];
    consumer
        .seek(&tp, Offset::Timestamp(target.timestamp))
        .unwrap();
    let got = read(&consumer, 1).await;
    assert_eq!(
        got[0].offset, target.offset,
        "the first record at or after the timestamp"
    );
    // A timestamp after every record: the end.
    consumer.seek(&tp, Offset::Timestamp(i64::MAX / 2)).unwrap();
    assert_eq!(position_once_known(&consumer, &tp).await, end);

    // Paused partitions return nothing until resumed.
    consumer.seek(&tp, Offset::At(0)).unwrap();
    consumer.pause(std::slice::from_ref(&tp));
    assert!(
        consumer
            .poll(Duration::from_millis(500))
            .await
            .unwrap()
            .is_empty()
    );
    consumer.resume(std::slice::from_ref(&tp));
    assert_eq!(read(&consumer, 1).await[0].offset, 0);
    broker.stop();
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
}

impl RebalanceListener for Recorder {
    fn on_partitions_revoked(&self, partitions: &[TopicPartition]) {
        self.events
            .lock()
            .unwrap()
            .push(format!("revoked {}", partitions.len()));
    }

    fn on_partitions_assigned(&self, partitions: &[TopicPartition]) {
        self.events
            .lock()
            .unwrap()
            .push(format!("assigned {}", partitions.len()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribed_consumer_commits_and_a_successor_resumes_after_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &["group.initial.rebalance.delay.ms=0"],
    );
    tokio::task::block_in_place(|| {
        broker.create_topic("orders", 3);
        produce(&broker, "orders", 600, "lz4");
    });
    let settings = [
        ("group.id", "billing"),
        ("auto.offset.reset", "earliest"),
        ("enable.auto.commit", "false"),
        // Longer than the wait below: only leaving can empty the group.
        ("session.timeout.ms", "60000"),
    ];
    let consumer = Consumer::new(&config(&broker, &settings)).unwrap();
    let listener = Arc::new(Recorder::default());
    consumer
        .subscribe_with_listener(
            &["orders"],
            Arc::clone(&listener) as Arc<dyn RebalanceListener>,
        )
        .unwrap();
    let records = read(&consumer, 600).await;
    check_all(&records, 600);
    assert_eq!(*listener.events.lock().unwrap(), ["assigned 3"]);
    consumer.commit_sync().await.unwrap();
    let partitions: Vec<TopicPartition> =
        (0..3).map(|p| TopicPartition::new("orders", p)).collect();
    let committed = consumer.committed(&partitions).await.unwrap();
    let total: i64 = committed.values().map(|o| o.unwrap()).sum();
    assert_eq!(total, 600);
    consumer.close().await.unwrap();
    // The member left (LeaveGroup), it did not wait out its session.
    let left = tokio::task::block_in_place(|| {
        let c: BaseConsumer = broker.group_config("billing").create().unwrap();
        common::wait_until(Duration::from_secs(30), || {
            c.fetch_group_list(Some("billing"), Duration::from_secs(5))
                .is_ok_and(|list| list.groups().iter().all(|g| g.members().is_empty()))
        })
    });
    assert!(left, "the closed consumer is still a member of billing");

    // librdkafka sees the same commits.
    let rd_committed: i64 = tokio::task::block_in_place(|| {
        let c: BaseConsumer = broker.group_config("billing").create().unwrap();
        let mut list = rdkafka::TopicPartitionList::new();
        for p in 0..3 {
            list.add_partition("orders", p);
        }
        let got = c.committed_offsets(list, Duration::from_secs(30)).unwrap();
        got.elements()
            .iter()
            .map(|e| e.offset().to_raw().unwrap())
            .sum()
    });
    assert_eq!(rd_committed, 600);

    // A successor reads only what came after the commit.
    tokio::task::block_in_place(|| produce(&broker, "orders", 10, "none"));
    let successor = Consumer::new(&config(&broker, &settings)).unwrap();
    successor.subscribe(&["orders"]).unwrap();
    let more = read(&successor, 10).await;
    assert_eq!(more.len(), 10);
    assert!(
        successor
            .poll(Duration::from_millis(500))
            .await
            .unwrap()
            .is_empty()
    );
    successor.close().await.unwrap();
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_our_consumers_and_librdkafkas_shares_the_partitions() {
    mixed_group("classic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kip848_group_of_our_consumers_and_librdkafkas_shares_the_partitions() {
    mixed_group("consumer").await;
}

/// Two of our consumers and a librdkafka consumer in one group of
/// `protocol` share six partitions: disjoint, every record once.
async fn mixed_group(protocol: &str) {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &[
            "group.initial.rebalance.delay.ms=0",
            "group.consumer.heartbeat.interval.ms=500",
        ],
    );
    const PARTITIONS: i32 = 6;
    tokio::task::block_in_place(|| broker.create_topic("shared", PARTITIONS));
    let settings = [
        ("group.id", "mixed"),
        ("auto.offset.reset", "earliest"),
        ("heartbeat.interval.ms", "300"),
        ("group.protocol", protocol),
    ];
    let ours: Vec<Consumer> = (0..2)
        .map(|_| Consumer::new(&config(&broker, &settings)).unwrap())
        .collect();
    for c in &ours {
        c.subscribe(&["shared"]).unwrap();
    }
    let theirs: BaseConsumer = {
        let mut config = broker.group_config("mixed");
        config.set("group.protocol", protocol);
        if protocol == "classic" {
            config.set("heartbeat.interval.ms", "300");
        }
        config.create().unwrap()
    };
    theirs.subscribe(&["shared"]).unwrap();
    let their_records = Arc::new(Mutex::new(Vec::new()));
    let poller = {
        let their_records = Arc::clone(&their_records);
        Poller::spawn(theirs, move |c, m| {
            use rdkafka::message::Message;
            let assigned = c.assignment().map(|a| a.count()).unwrap_or(0);
            their_records
                .lock()
                .unwrap()
                .push((m.partition(), m.offset(), assigned));
        })
    };
    // Keep polling ours until the three members hold disjoint assignments
    // covering every partition.
    let deadline = Instant::now() + DEADLINE;
    let mut our_records: Vec<ConsumerRecord> = Vec::new();
    let mut produced = false;
    loop {
        for c in &ours {
            our_records.extend(c.poll(Duration::from_millis(100)).await.unwrap());
        }
        let ours_assigned: Vec<TopicPartition> =
            ours.iter().flat_map(Consumer::assignment).collect();
        let stable = ours.iter().all(|c| !c.assignment().is_empty())
            && ours_assigned.len() < PARTITIONS as usize;
        if stable && !produced {
            // Give librdkafka's member time to hold the rest, then produce.
            let distinct: BTreeSet<&TopicPartition> = ours_assigned.iter().collect();
            assert_eq!(
                distinct.len(),
                ours_assigned.len(),
                "our members overlap: {ours_assigned:?}"
            );
            tokio::task::block_in_place(|| produce(&broker, "shared", 1_200, "zstd"));
            produced = true;
        }
        let theirs_count = their_records.lock().unwrap().len();
        if produced && our_records.len() + theirs_count >= 1_200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ours read {}, librdkafka {theirs_count}",
            our_records.len()
        );
    }
    poller.close();
    // Every record once across the group, partitions split between clients.
    let mut seen: BTreeSet<(i32, i64)> = BTreeSet::new();
    for r in &our_records {
        check(r);
        assert!(seen.insert((r.partition, r.offset)));
    }
    let their_partitions: BTreeSet<i32> = their_records
        .lock()
        .unwrap()
        .iter()
        .map(|(p, _, _)| *p)
        .collect();
    for (p, o, _) in their_records.lock().unwrap().iter() {
        assert!(seen.insert((*p, *o)), "{p}/{o} read by both clients");
    }
    assert_eq!(seen.len(), 1_200);
    let our_partitions: BTreeSet<i32> = our_records.iter().map(|r| r.partition).collect();
    assert!(our_partitions.is_disjoint(&their_partitions));
    assert!(!their_partitions.is_empty() && !our_partitions.is_empty());
    for c in ours {
        c.close().await.unwrap();
    }
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_yields_records_in_order_and_auto_and_async_commits_reach_the_group() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &["group.initial.rebalance.delay.ms=0"],
    );
    tokio::task::block_in_place(|| {
        broker.create_topic("streamed", 1);
        produce(&broker, "streamed", 200, "gzip");
    });
    let tp = TopicPartition::new("streamed", 0);
    let consumer = Consumer::new(&config(
        &broker,
        &[
            ("group.id", "streamers"),
            ("auto.offset.reset", "earliest"),
            ("enable.auto.commit", "true"),
            ("auto.commit.interval.ms", "100"),
        ],
    ))
    .unwrap();
    consumer.subscribe(&["streamed"]).unwrap();
    // Take 150 records from the stream: in offset order, and the position
    // is after the last one yielded, not after what was fetched.
    let taken: Vec<ConsumerRecord> = consumer
        .stream()
        .take(150)
        .map(Result::unwrap)
        .collect()
        .await;
    assert!(taken.iter().enumerate().all(|(i, r)| r.offset == i as i64));
    assert_eq!(consumer.position(&tp), Some(150));
    // Auto commit, driven by polls, commits the position.
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(
            consumer
                .poll(Duration::from_millis(50))
                .await
                .unwrap()
                .len()
                <= 50
        );
        let committed = consumer.committed(std::slice::from_ref(&tp)).await.unwrap()[&tp];
        if committed == consumer.position(&tp) && committed >= Some(150) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "auto commit reached {committed:?}"
        );
    }
    // An asynchronous commit of a position moved by a seek.
    consumer.seek(&tp, Offset::At(42)).unwrap();
    let records = read(&consumer, 1).await;
    assert_eq!(records[0].offset, 42);
    let assign_only = Consumer::new(&config(&broker, &[("group.id", "streamers")])).unwrap();
    consumer.commit_async();
    let deadline = Instant::now() + DEADLINE;
    while assign_only
        .committed(std::slice::from_ref(&tp))
        .await
        .unwrap()[&tp]
        != consumer.position(&tp)
    {
        assert!(
            Instant::now() < deadline,
            "the asynchronous commit never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    consumer.close().await.unwrap();
    broker.stop();
}
