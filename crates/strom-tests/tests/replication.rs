//! Partition replication, leader side: a follower's fetch position is its
//! log end offset, and the leader's high watermark follows the slowest
//! in-sync replica (Kafka's rule), so acks=all completes and consumers see
//! records once every in-sync follower has fetched them. The followers are
//! played here by single raw Fetch requests with their replica ids (the
//! brokers' own replica fetchers are the next step); the producer and the
//! watermarks are librdkafka's.

#![allow(clippy::unwrap_used)]

mod common;

use common::cluster::strom_bin;

use std::net::SocketAddr;
use std::time::Duration;

use common::raw::RawConnection;
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
fn high_watermark(bootstrap: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap()
        .1
}

fn producer(bootstrap: &str, acks: &str) -> FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", acks)
        .set("linger.ms", "0")
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_high_watermark_follows_the_slowest_in_sync_follower_and_releases_acks_all() {
    let cluster = LocalCluster::builder(strom_bin())
        .nodes(3)
        .start()
        .await
        .unwrap();
    let (code, _) = raw(cluster.addr(1))
        .create_topic("replicated", 1, 3)
        .unwrap();
    assert_eq!(code, 0);
    let first = cluster.addr(1);
    let leader = {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((leaders, _)) = raw(first).leaders("replicated")
                && leaders[0] > 0
            {
                break leaders[0];
            }
            assert!(std::time::Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let followers: Vec<i32> = cluster
        .node_ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    let at = cluster.addr(leader);
    let bootstrap = at.to_string();

    // acks=1: appended on the leader, not committed while no follower has it.
    let acks_one = producer(&bootstrap, "1");
    for i in 0..3 {
        acks_one
            .send(
                FutureRecord::<(), str>::to("replicated")
                    .partition(0)
                    .payload(&format!("r{i}")),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
    }
    let b = bootstrap.clone();
    let hw = tokio::task::spawn_blocking(move || high_watermark(&b, "replicated"))
        .await
        .unwrap();
    assert_eq!(hw, 0, "committed before any follower fetched");

    // The first follower has all three, the second none: the slowest decides.
    let (code, hw) = raw(at)
        .replica_fetch(followers[0], "replicated", 0, 3)
        .unwrap();
    assert_eq!((code, hw), (0, 0));
    let (code, hw) = raw(at)
        .replica_fetch(followers[1], "replicated", 0, 1)
        .unwrap();
    assert_eq!((code, hw), (0, 1));
    // A position past the leader's log end moves nothing; a broker that is
    // not a replica is refused.
    let (code, hw) = raw(at)
        .replica_fetch(followers[1], "replicated", 0, 10)
        .unwrap();
    assert_eq!((code, hw), (OFFSET_OUT_OF_RANGE, 1));
    let (code, _) = raw(at).replica_fetch(99, "replicated", 0, 3).unwrap();
    assert_eq!(code, NOT_LEADER_OR_FOLLOWER);
    let (code, hw) = raw(at)
        .replica_fetch(followers[1], "replicated", 0, 3)
        .unwrap();
    assert_eq!((code, hw), (0, 3));
    let b = bootstrap.clone();
    let hw = tokio::task::spawn_blocking(move || high_watermark(&b, "replicated"))
        .await
        .unwrap();
    assert_eq!(hw, 3, "librdkafka sees the committed records");

    // acks=all waits for both followers, and completes once they fetched.
    let acks_all = producer(&bootstrap, "all");
    let sent = tokio::spawn(async move {
        acks_all
            .send(
                FutureRecord::<(), str>::to("replicated")
                    .partition(0)
                    .payload("all"),
                Duration::from_secs(30),
            )
            .await
            .map(|d| (d.partition, d.offset))
            .map_err(|(e, _)| e.to_string())
    });
    // Both followers fetch from 4 once the record is on the leader (its
    // offset is 3); until then a fetch at 4 is out of range.
    for follower in &followers {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (code, _) = raw(at)
                .replica_fetch(*follower, "replicated", 0, 4)
                .unwrap();
            if code == 0 {
                break;
            }
            assert_eq!(code, OFFSET_OUT_OF_RANGE);
            assert!(std::time::Instant::now() < deadline, "never appended");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let delivered = tokio::time::timeout(Duration::from_secs(60), sent)
        .await
        .expect("acks=all answered")
        .unwrap();
    assert_eq!(delivered, Ok((0, 3)));
}
