//! Partition replication between real broker processes: the brokers' replica
//! fetchers copy the leader's log, the high watermark follows the in-sync
//! replicas, acks=all completes once they have the records, and what a
//! leader refuses to a fetcher. Producers and consumers are librdkafka's;
//! followers are also played by raw Fetch requests where the leader's answer
//! to a given position is the point.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::cluster::{eventually, strom_bin, three_nodes};
use common::raw::RawConnection;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use strom_testkit::LocalCluster;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Kafka's OFFSET_OUT_OF_RANGE and NOT_LEADER_OR_FOLLOWER.
const OFFSET_OUT_OF_RANGE: i16 = 1;
const NOT_LEADER_OR_FOLLOWER: i16 = 6;

fn raw(addr: SocketAddr) -> RawConnection {
    RawConnection::connect(addr, REQUEST_TIMEOUT).unwrap()
}

/// The high watermark librdkafka reads (ListOffsets latest) through `bootstrap`.
fn high_watermark(bootstrap: &str, topic: &str) -> Option<i64> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .ok()
        .map(|w| w.1)
}

fn producer(bootstrap: &str, acks: &str, timeout_ms: &str) -> FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", acks)
        .set("linger.ms", "0")
        .set("message.timeout.ms", timeout_ms)
        .create()
        .unwrap()
}

/// Sends `value` to partition 0 of `topic` and waits for the answer: its
/// offset, or the error as librdkafka reports it.
async fn send(producer: &FutureProducer, topic: &str, value: &str) -> Result<i64, String> {
    producer
        .send(
            FutureRecord::<(), str>::to(topic)
                .partition(0)
                .payload(value),
            Duration::from_secs(60),
        )
        .await
        .map(|d| d.offset)
        .map_err(|(e, _)| e.to_string())
}

/// Creates `topic` with one partition, RF 3 and `min.insync.replicas=2`
/// through node 1, and waits until node 1 names its leader.
async fn replicated_topic(cluster: &LocalCluster, topic: &'static str) -> i32 {
    let addr = cluster.addr(1);
    let code = raw(addr)
        .create_topic_with_configs(topic, 1, 3, &[("min.insync.replicas", "2")])
        .unwrap();
    assert_eq!(code, 0, "CreateTopics");
    eventually("the topic has a leader", move || {
        let (leaders, _) = raw(addr).leaders(topic).ok()?;
        (leaders[0] > 0).then_some(leaders[0])
    })
    .await
}

/// Every value of partition 0 of `topic`, in offset order, read by a
/// librdkafka consumer from the start until `count` are read.
fn consume(bootstrap: &str, topic: &str, count: usize) -> Vec<(i64, String)> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{topic}"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let deadline = std::time::Instant::now() + common::cluster::DEADLINE;
    let mut read = Vec::new();
    while read.len() < count && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            read.push((m.offset(), value));
        }
    }
    read
}

/// The bytes of every segment of `topic`'s partition 0 under `data_dir`, by
/// file name.
fn segments(data_dir: &Path, topic: &str) -> BTreeMap<String, Vec<u8>> {
    let dir = data_dir.join(format!("{topic}-0"));
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_copy_the_leaders_log_and_acks_all_waits_for_them() {
    let mut cluster = three_nodes().await;
    let leader = replicated_topic(&cluster, "replicated").await;
    let bootstrap = cluster.bootstrap();

    let acks_all = producer(&bootstrap, "all", "60000");
    let mut offsets = Vec::new();
    for i in 0..50 {
        let delivered = send(&acks_all, "replicated", &format!("v{i}")).await;
        offsets.push(delivered.unwrap());
    }
    assert_eq!(offsets, (0..50).collect::<Vec<i64>>());
    let b = bootstrap.clone();
    let hw = tokio::task::spawn_blocking(move || high_watermark(&b, "replicated"))
        .await
        .unwrap();
    assert_eq!(hw, Some(50), "every acknowledged record is committed");
    let b = bootstrap.clone();
    let read = tokio::task::spawn_blocking(move || consume(&b, "replicated", 50))
        .await
        .unwrap();
    let expected: Vec<(i64, String)> = (0..50).map(|i| (i, format!("v{i}"))).collect();
    assert_eq!(read, expected);

    // The leader refuses positions it cannot take: past its log end, and
    // from a broker that is not a replica.
    let at = cluster.addr(leader);
    let follower = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    let (code, hw) = raw(at)
        .replica_fetch(follower, "replicated", 0, 1000)
        .unwrap();
    assert_eq!((code, hw), (OFFSET_OUT_OF_RANGE, 50));
    let (code, _) = raw(at).replica_fetch(99, "replicated", 0, 3).unwrap();
    assert_eq!(code, NOT_LEADER_OR_FOLLOWER);

    // Every replica holds the same bytes.
    cluster.stop_all().await.unwrap();
    let logs: Vec<BTreeMap<String, Vec<u8>>> = cluster
        .node_ids()
        .into_iter()
        .map(|id| segments(cluster.data_dir(id), "replicated"))
        .collect();
    assert!(!logs[0].is_empty());
    assert!(logs[0].values().map(Vec::len).sum::<usize>() > 0);
    assert_eq!(logs[0], logs[1], "replicas 1 and 2 differ");
    assert_eq!(logs[0], logs[2], "replicas 1 and 3 differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_of_three_replicas_down_acks_all_never_succeeds_and_acks_one_does() {
    let mut cluster = LocalCluster::builder(strom_bin())
        .nodes(3)
        .set("broker.session.timeout.ms", "3000")
        .set("broker.heartbeat.interval.ms", "500")
        .set("controller.quorum.election.timeout.ms", "500")
        .start()
        .await
        .unwrap();
    let leader = replicated_topic(&cluster, "two-down").await;
    let bootstrap = cluster.addr(leader).to_string();
    let acks_all = producer(&bootstrap, "all", "60000");
    send(&acks_all, "two-down", "before").await.unwrap();
    for id in cluster.node_ids() {
        if id != leader {
            cluster.kill(id).await.unwrap();
        }
    }
    let b = bootstrap.clone();
    let before = tokio::task::spawn_blocking(move || high_watermark(&b, "two-down"))
        .await
        .unwrap();
    assert_eq!(before, Some(1));

    // acks=all: refused (NOT_ENOUGH_REPLICAS once the ISR shrank) or timed
    // out, never acknowledged.
    let short = producer(&bootstrap, "all", "5000");
    for i in 0..3 {
        let outcome = short
            .send(
                FutureRecord::<(), str>::to("two-down")
                    .partition(0)
                    .payload(&format!("all{i}")),
                Duration::from_secs(30),
            )
            .await;
        assert!(
            outcome.is_err(),
            "acks=all acknowledged with one replica: {outcome:?}"
        );
    }
    // acks=1 still works; the high watermark stays where it was.
    let acks_one = producer(&bootstrap, "1", "30000");
    let delivered = send(&acks_one, "two-down", "one").await;
    assert!(delivered.is_ok(), "acks=1 refused: {delivered:?}");
    let b = bootstrap.clone();
    let after = tokio::task::spawn_blocking(move || high_watermark(&b, "two-down"))
        .await
        .unwrap();
    assert_eq!(
        after,
        Some(1),
        "the high watermark moved without the followers"
    );
}

/// The concatenated segments of `topic`'s partition 0 under `data_dir`, in
/// offset order.
fn log_bytes(data_dir: &Path, topic: &str) -> Vec<u8> {
    segments(data_dir, topic).into_values().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_truncates_its_acks_one_writes_once_healed() {
    let mut cluster = LocalCluster::builder(strom_bin())
        .nodes(3)
        .with_link_proxies()
        .set("broker.session.timeout.ms", "3000")
        .set("broker.heartbeat.interval.ms", "500")
        .set("controller.quorum.election.timeout.ms", "500")
        .start()
        .await
        .unwrap();
    let old = replicated_topic(&cluster, "cut").await;
    let at_old = cluster.addr(old).to_string();
    let acks_all = producer(&cluster.bootstrap(), "all", "60000");
    for i in 0..20 {
        send(&acks_all, "cut", &format!("kept{i}")).await.unwrap();
    }

    // Cut off from the quorum (its client listener stays reachable), the
    // old leader is fenced and another replica leads at a new epoch.
    cluster.isolate(old).unwrap();
    let others: Vec<SocketAddr> = cluster
        .node_ids()
        .into_iter()
        .filter(|id| *id != old)
        .map(|id| cluster.addr(id))
        .collect();
    let new = eventually("the others elect another leader", move || {
        let views: Vec<i32> = others
            .iter()
            .map(|a| {
                RawConnection::connect(*a, REQUEST_TIMEOUT)
                    .ok()?
                    .leaders("cut")
                    .ok()
                    .map(|l| l.0[0])
            })
            .collect::<Option<_>>()?;
        (views.iter().all(|l| *l == views[0]) && views[0] > 0 && views[0] != old)
            .then_some(views[0])
    })
    .await;
    // The old leader does not know: it takes acks=1 writes nobody copies.
    let stale = producer(&at_old, "1", "30000");
    for i in 0..5 {
        send(&stale, "cut", &format!("lost{i}")).await.unwrap();
    }
    // The new leader goes on with acks=all.
    let at_new = producer(&cluster.addr(new).to_string(), "all", "60000");
    for i in 20..30 {
        send(&at_new, "cut", &format!("kept{i}")).await.unwrap();
    }

    // Healed, the old leader follows, truncates what diverged and copies
    // the new leader's log.
    cluster.heal().unwrap();
    let addrs: Vec<SocketAddr> = cluster
        .node_ids()
        .into_iter()
        .map(|id| cluster.addr(id))
        .collect();
    eventually("every node names the new leader", move || {
        addrs
            .iter()
            .all(|a| {
                RawConnection::connect(*a, REQUEST_TIMEOUT)
                    .ok()
                    .and_then(|mut c| c.leaders("cut").ok())
                    .is_some_and(|l| l.0[0] == new)
            })
            .then_some(())
    })
    .await;
    let bootstrap_new = cluster.addr(new).to_string();
    let read = tokio::task::spawn_blocking(move || consume(&bootstrap_new, "cut", 30))
        .await
        .unwrap();
    let values: Vec<String> = read.into_iter().map(|(_, v)| v).collect();
    let expected: Vec<String> = (0..30).map(|i| format!("kept{i}")).collect();
    assert_eq!(
        values, expected,
        "the acks=1 writes to the cut-off leader are gone"
    );
    let data_dir_new = cluster.data_dir(new).to_owned();
    let data_dir_old = cluster.data_dir(old).to_owned();
    eventually("the old leader's log equals the new leader's", move || {
        let (a, b) = (
            log_bytes(&data_dir_new, "cut"),
            log_bytes(&data_dir_old, "cut"),
        );
        (a == b).then_some(())
    })
    .await;
    cluster.stop_all().await.unwrap();
    let logs: Vec<Vec<u8>> = cluster
        .node_ids()
        .into_iter()
        .map(|id| log_bytes(cluster.data_dir(id), "cut"))
        .collect();
    assert!(
        logs[0] == logs[1] && logs[0] == logs[2],
        "the replicas differ"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_is_refused_with_not_enough_replicas_once_the_isr_shrank_below_the_minimum() {
    let mut cluster = three_nodes().await;
    let addr = cluster.addr(1);
    let code = raw(addr)
        .create_topic_with_configs("strict", 1, 3, &[("min.insync.replicas", "3")])
        .unwrap();
    assert_eq!(code, 0);
    let leader = eventually("the topic has a leader", move || {
        let (leaders, _) = raw(addr).leaders("strict").ok()?;
        (leaders[0] > 0).then_some(leaders[0])
    })
    .await;
    let bootstrap = cluster.addr(leader).to_string();
    let all = producer(&bootstrap, "all", "30000");
    send(&all, "strict", "in sync").await.unwrap();
    let follower = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    cluster.kill(follower).await.unwrap();
    let at_leader = cluster.addr(leader);
    eventually("the dead follower leaves the ISR", move || {
        let isr = common::numbered::leader_and_isr(at_leader, "strict")?.1;
        (isr.len() == 2).then_some(())
    })
    .await;
    // No retries: librdkafka reports the broker's error as it came.
    let once: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("retries", "0")
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap();
    let refused = once
        .send(
            FutureRecord::<(), str>::to("strict")
                .partition(0)
                .payload("short"),
            Duration::from_secs(30),
        )
        .await;
    let error = refused.expect_err("acks=all with 2 of 3 in sync and min.insync.replicas=3");
    assert_eq!(
        error.0.rdkafka_error_code(),
        Some(rdkafka::types::RDKafkaErrorCode::NotEnoughReplicas),
        "{error:?}"
    );
    let b = bootstrap.clone();
    let hw = tokio::task::spawn_blocking(move || high_watermark(&b, "strict"))
        .await
        .unwrap();
    assert_eq!(hw, Some(1), "nothing was appended");
}
