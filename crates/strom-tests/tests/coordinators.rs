//! Coordinators in a cluster: the group coordinator of a group is the
//! leader of its partition of `__consumer_offsets`, what it acknowledges is
//! replicated, so it survives that leader's death, and a group (classic or
//! KIP-848) carries on with the next leader.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::{eventually, three_nodes_builder};
use common::numbered::leader_and_isr;
use common::raw::RawConnection;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use strom_protocol::messages::kafka::{
    GroupId, OffsetCommitRequest, OffsetCommitResponse, TopicName, offset_commit_request,
};
use strom_protocol::messages::{ApiKey, StrBytes};

const TOPIC: &str = "input";
const GROUP: &str = "replicated-commits";
const OFFSETS: &str = "__consumer_offsets";

fn consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

fn commit(bootstrap: &str, offset: i64) -> Result<(), String> {
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(TOPIC, 0, Offset::Offset(offset))
        .unwrap();
    consumer(bootstrap)
        .commit(&offsets, CommitMode::Sync)
        .map_err(|e| e.to_string())
}

fn committed(bootstrap: &str) -> Option<i64> {
    let mut asked = TopicPartitionList::new();
    asked.add_partition(TOPIC, 0);
    let found = consumer(bootstrap)
        .committed_offsets(asked, Duration::from_secs(5))
        .ok()?;
    match found.find_partition(TOPIC, 0)?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// OffsetCommit (v8) of `offset` straight to `coordinator`: its error code.
fn raw_commit(coordinator: SocketAddr, offset: i64) -> i16 {
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str(GROUP)))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![
            offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
                .with_partitions(vec![
                    offset_commit_request::OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(offset),
                ]),
        ]);
    let response: OffsetCommitResponse =
        RawConnection::connect(coordinator, Duration::from_secs(20))
            .unwrap()
            .call(ApiKey::OffsetCommit, 8, &request)
            .unwrap();
    response.topics[0].partitions[0].error_code
}

/// An offset commit is acknowledged once its record is on the in-sync
/// replicas, not when the coordinator has it alone: with both followers of
/// the group's offsets partition stopped, the commit fails
/// (COORDINATOR_NOT_AVAILABLE after `offsets.commit.timeout.ms`). The offset
/// acknowledged before survives the kill -9 of the coordinator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_commit_is_acknowledged_only_once_replicated() {
    let mut cluster = three_nodes_builder()
        .set("offsets.topic.num.partitions", "1")
        .set("offsets.commit.timeout.ms", "1000")
        .start()
        .await
        .unwrap();
    let code = RawConnection::connect(cluster.addr(1), Duration::from_secs(20))
        .unwrap()
        .create_topic(TOPIC, 1, 3)
        .unwrap();
    assert_eq!(code.0, 0, "{code:?}");
    let bootstrap = cluster.bootstrap();
    // The first commit creates the offsets topic (three replicas).
    let b = bootstrap.clone();
    eventually("the first commit", move || commit(&b, 5).ok()).await;
    let addr = cluster.addr(1);
    let (leader, isr) = eventually("the offsets partition fully in sync", move || {
        leader_and_isr(addr, OFFSETS).filter(|(l, isr)| *l > 0 && isr.len() == 3)
    })
    .await;
    let followers: Vec<i32> = isr.into_iter().filter(|id| *id != leader).collect();
    for id in &followers {
        cluster.pause(*id).unwrap();
    }
    let coordinator = cluster.addr(leader);
    let code = tokio::task::spawn_blocking(move || raw_commit(coordinator, 10))
        .await
        .unwrap();
    for id in &followers {
        cluster.resume(*id).unwrap();
    }
    assert_ne!(
        code, 0,
        "a commit no follower could replicate was acknowledged"
    );
    cluster.kill(leader).await.unwrap();
    // The unacknowledged commit may have reached the followers since; the
    // acknowledged one must not be lost.
    let offset = eventually("the committed offset from the new coordinator", move || {
        committed(&bootstrap)
    })
    .await;
    assert!(
        offset == 5 || offset == 10,
        "committed offset {offset} after the coordinator's death (acknowledged: 5)"
    );
}

/// Records the group test writes, and its topic's partitions.
const RECORDS: u64 = 3_000;
const WORK: &str = "work";
const WORK_PARTITIONS: i32 = 6;

/// Writes the values `range` round-robin over the partitions of [`WORK`].
fn produce_numbered(bootstrap: &str, range: std::ops::Range<u64>) {
    let producer: rdkafka::producer::BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .create()
        .unwrap();
    for i in range {
        let value = i.to_string();
        let mut record = rdkafka::producer::BaseRecord::<(), str>::to(WORK)
            .partition((i % WORK_PARTITIONS as u64) as i32)
            .payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(60)).unwrap();
}

/// A group member on its own thread: reads, notes each value, commits its
/// position every few records (failures during the coordinator's move
/// are expected and retried by the next commit).
fn member(
    bootstrap: String,
    group: &'static str,
    protocol: &'static str,
    seen: Arc<Mutex<BTreeSet<u64>>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest");
        if protocol == "consumer" {
            config.set("group.protocol", "consumer");
        } else {
            config
                .set("session.timeout.ms", "6000")
                .set("heartbeat.interval.ms", "500");
        }
        let consumer: BaseConsumer = config.create().unwrap();
        consumer.subscribe(&[WORK]).unwrap();
        let mut since_commit = 0;
        while !stop.load(Ordering::SeqCst) {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    let value = message
                        .payload()
                        .and_then(|p| std::str::from_utf8(p).ok())
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap();
                    seen.lock().unwrap().insert(value);
                    since_commit += 1;
                }
                Some(Err(_)) => {}
                None => {}
            }
            if since_commit >= 20 {
                let _ = consumer.commit_consumer_state(CommitMode::Sync);
                since_commit = 0;
            }
        }
        let _ = consumer.commit_consumer_state(CommitMode::Sync);
    })
}

/// The group's committed offset of each partition of [`WORK`], as
/// OffsetFetch answers it (`None` while the coordinator cannot answer).
fn committed_work(bootstrap: &str, group: &str) -> Option<Vec<i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .ok()?;
    let mut asked = TopicPartitionList::new();
    for p in 0..WORK_PARTITIONS {
        asked.add_partition(WORK, p);
    }
    let found = consumer
        .committed_offsets(asked, Duration::from_secs(3))
        .ok()?;
    (0..WORK_PARTITIONS)
        .map(|p| match found.find_partition(WORK, p)?.offset() {
            Offset::Offset(o) => Some(o),
            _ => Some(-1),
        })
        .collect()
}

/// Three librdkafka members consume and commit while the leader of the
/// group's `__consumer_offsets` partition (its coordinator) is killed with
/// kill -9: the group carries on with the next leader, every record is
/// read, and no committed offset ever goes backwards.
async fn a_group_survives_the_kill_of_its_coordinator(protocol: &'static str) {
    let group: &'static str = if protocol == "consumer" {
        "moving-coordinator-848"
    } else {
        "moving-coordinator-classic"
    };
    let mut cluster = three_nodes_builder()
        .set("offsets.topic.num.partitions", "1")
        .start()
        .await
        .unwrap();
    let code = RawConnection::connect(cluster.addr(1), Duration::from_secs(20))
        .unwrap()
        .create_topic_with_configs(WORK, WORK_PARTITIONS, 3, &[("min.insync.replicas", "2")])
        .unwrap();
    assert_eq!(code, 0);
    let bootstrap = cluster.bootstrap();
    let b = bootstrap.clone();
    tokio::task::spawn_blocking(move || produce_numbered(&b, 0..RECORDS / 2))
        .await
        .unwrap();

    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let members: Vec<_> = (0..3)
        .map(|_| {
            member(
                bootstrap.clone(),
                group,
                protocol,
                Arc::clone(&seen),
                Arc::clone(&stop),
            )
        })
        .collect();
    // Every committed offset the group reports, per partition, in order.
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let bootstrap = bootstrap.clone();
        let watching = Arc::clone(&watching);
        std::thread::spawn(move || {
            let mut reports: Vec<Vec<i64>> = Vec::new();
            while watching.load(Ordering::SeqCst) {
                if let Some(offsets) = committed_work(&bootstrap, group) {
                    reports.push(offsets);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            reports
        })
    };

    let s = Arc::clone(&seen);
    eventually("the first half read", move || {
        (s.lock().unwrap().len() as u64 >= RECORDS / 2).then_some(())
    })
    .await;
    let addr = cluster.addr(1);
    let (coordinator, _) = eventually("the offsets partition's leader", move || {
        leader_and_isr(addr, OFFSETS).filter(|(l, _)| *l > 0)
    })
    .await;
    cluster.kill(coordinator).await.unwrap();
    // The second half is read, and committed, with the next coordinator.
    let b = bootstrap.clone();
    tokio::task::spawn_blocking(move || produce_numbered(&b, RECORDS / 2..RECORDS))
        .await
        .unwrap();
    let s = Arc::clone(&seen);
    eventually(
        "every record read after the coordinator's death",
        move || (s.lock().unwrap().len() as u64 == RECORDS).then_some(()),
    )
    .await;
    let b = bootstrap.clone();
    let per_partition = (RECORDS / WORK_PARTITIONS as u64) as i64;
    eventually("every partition committed to its end", move || {
        committed_work(&b, group)
            .filter(|offsets| offsets.iter().all(|o| *o == per_partition))
            .map(|_| ())
    })
    .await;

    stop.store(true, Ordering::SeqCst);
    for m in members {
        m.join().unwrap();
    }
    watching.store(false, Ordering::SeqCst);
    let reports = watcher.join().unwrap();
    assert!(
        reports.len() > 2,
        "the committed offsets were read while the group ran"
    );
    for pair in reports.windows(2) {
        for (p, (before, after)) in pair[0].iter().zip(&pair[1]).enumerate() {
            assert!(
                after >= before,
                "the committed offset of {WORK}-{p} went back from {before} to {after}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_group_survives_the_kill_of_its_coordinator() {
    a_group_survives_the_kill_of_its_coordinator("classic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kip_848_group_survives_the_kill_of_its_coordinator() {
    a_group_survives_the_kill_of_its_coordinator("consumer").await;
}
