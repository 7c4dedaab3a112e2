//! Fetch from follower (KIP-392) and OffsetForLeaderEpoch (KIP-320) with
//! real processes and librdkafka:
//! - with `replica.selector.class` set to Kafka's rack-aware selector, a
//!   consumer whose `client.rack` is a follower's rack reads every record
//!   from that follower (its metrics count them; the leader's count none);
//! - without a selector the leader serves the same consumer;
//! - a consumer keeps its position across a kill -9 of the leader: it
//!   validates it with OffsetForLeaderEpoch at the new leader and reads on
//!   without a reset, a gap or a duplicate; the raw answers of that API
//!   at the new leader and at a follower are Kafka's.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{DEADLINE, eventually, three_nodes_builder};
use common::numbered::leader_and_isr;
use common::raw::RawConnection;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::ApiKey;
use strom_protocol::messages::StrBytes;
use strom_protocol::messages::kafka::{
    BrokerId, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, TopicName,
    offset_for_leader_epoch_request,
};
use strom_testkit::LocalCluster;

const TOPIC: &str = "ffetch";
const RACK_AWARE: &str = "org.apache.kafka.common.replica.RackAwareReplicaSelector";
/// Records produced in each phase of a test.
const RECORDS: u64 = 200;

fn raw(addr: SocketAddr) -> RawConnection {
    RawConnection::connect(addr, Duration::from_secs(20)).unwrap()
}

/// Node `id`'s rack: nodes 1, 2, 3 are in racks a, b, c.
fn rack(id: i32) -> String {
    char::from(b'a' + u8::try_from(id - 1).unwrap()).to_string()
}

/// Three nodes, one per rack, with the rack-aware selector or none.
async fn cluster(selector: bool) -> LocalCluster {
    let mut builder = three_nodes_builder();
    for id in 1..=3 {
        builder = builder.set_node(id, "broker.rack", rack(id));
    }
    if selector {
        builder = builder.set("replica.selector.class", RACK_AWARE);
    }
    builder.start().await.unwrap()
}

/// Creates the RF 3 topic and waits until librdkafka sees a leader and all
/// three replicas in sync at every node; returns the leader.
async fn create_topic(cluster: &LocalCluster) -> i32 {
    let code = raw(cluster.addr(1))
        .create_topic_with_configs(TOPIC, 1, 3, &[("min.insync.replicas", "2")])
        .unwrap();
    assert_eq!(code, 0);
    let addrs: Vec<SocketAddr> = cluster
        .node_ids()
        .into_iter()
        .map(|id| cluster.addr(id))
        .collect();
    eventually(
        "every node sees a leader and three in-sync replicas",
        move || {
            let views: Vec<(i32, Vec<i32>)> = addrs
                .iter()
                .map(|a| leader_and_isr(*a, TOPIC))
                .collect::<Option<_>>()?;
            let agreed = views.windows(2).all(|w| w[0] == w[1]);
            (agreed && views[0].0 > 0 && views[0].1 == [1, 2, 3]).then_some(views[0].0)
        },
    )
    .await
}

/// An idempotent acks=all producer that rides out a leader change.
fn producer(bootstrap: &str) -> FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0")
        .set("message.timeout.ms", "120000")
        .set("socket.timeout.ms", "10000")
        .create()
        .unwrap()
}

/// Produces the numbers `from..to` as values, in order, each acknowledged.
async fn produce(producer: &FutureProducer, from: u64, to: u64) {
    for n in from..to {
        let value = n.to_string();
        producer
            .send(
                FutureRecord::<(), str>::to(TOPIC)
                    .partition(0)
                    .payload(&value),
                Duration::from_secs(120),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("record {n} not acknowledged: {e}"));
    }
}

/// A consumer of the partition from its start that never resets its
/// position silently (`auto.offset.reset=error`: a reset shows as an error).
fn consumer(bootstrap: &str, client_rack: Option<&str>) -> BaseConsumer {
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "ffetch-reader")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "error")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .set("socket.timeout.ms", "10000");
    if let Some(rack) = client_rack {
        config.set("client.rack", rack);
    }
    let consumer: BaseConsumer = config.create().unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(TOPIC, 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    consumer
}

/// What a consumer read, shared with the test while it reads.
#[derive(Default)]
struct Reads {
    values: Mutex<Vec<u64>>,
    count: AtomicUsize,
    errors: Mutex<Vec<String>>,
}

/// Polls `consumer` until `reads` holds `total` values or the deadline.
fn read_until(consumer: &BaseConsumer, reads: &Reads, total: usize) {
    let deadline = Instant::now() + DEADLINE * 2;
    while reads.count.load(Ordering::Acquire) < total && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let text = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                reads.values.lock().unwrap().push(text.parse().unwrap());
                reads.count.fetch_add(1, Ordering::Release);
            }
            Some(Err(e)) => reads.errors.lock().unwrap().push(e.to_string()),
            None => {}
        }
    }
}

/// Asserts that `reads` are exactly `0..total`, in order.
fn assert_read_all(reads: &Reads, total: u64) {
    let values = reads.values.lock().unwrap().clone();
    let errors = reads.errors.lock().unwrap().clone();
    let expected: Vec<u64> = (0..total).collect();
    assert!(
        values == expected,
        "read {} values, expected 0..{total} once each in order; first differences: {:?}; consumer errors: {errors:?}",
        values.len(),
        values
            .iter()
            .zip(&expected)
            .filter(|(a, b)| a != b)
            .take(5)
            .collect::<Vec<_>>()
    );
}

/// `GET /metrics` on node `id`: the value of the first sample of `name`
/// whose labels include `label` (0 when there is none).
fn metric(cluster: &LocalCluster, id: i32, name: &str, label: &str) -> f64 {
    let url = cluster
        .metrics_url(id)
        .expect("the node prints its metrics URL");
    let host = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let mut stream = TcpStream::connect(&host).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let prefix = format!("{name}{{");
    response
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Records of the topic each node sent to consumers, by node id.
fn records_out(cluster: &LocalCluster) -> Vec<(i32, f64)> {
    let label = format!("topic=\"{TOPIC}\"");
    cluster
        .node_ids()
        .into_iter()
        .map(|id| {
            (
                id,
                metric(cluster, id, "strom_topic_out_messages_total", &label),
            )
        })
        .collect()
}

/// Produces [`RECORDS`] records, then reads them with a consumer in
/// `client_rack`; returns what each node served.
async fn produce_and_consume(cluster: &LocalCluster, client_rack: String) -> Vec<(i32, f64)> {
    let bootstrap = cluster.bootstrap();
    produce(&producer(&bootstrap), 0, RECORDS).await;
    let reads = tokio::task::spawn_blocking(move || {
        let consumer = consumer(&bootstrap, Some(&client_rack));
        let reads = Reads::default();
        read_until(&consumer, &reads, usize::try_from(RECORDS).unwrap());
        reads
    })
    .await
    .unwrap();
    assert_read_all(&reads, RECORDS);
    records_out(cluster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_reads_from_the_follower_in_its_rack() {
    let cluster = cluster(true).await;
    let leader = create_topic(&cluster).await;
    let follower = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    let served = produce_and_consume(&cluster, rack(follower)).await;
    // Every record came from the follower: the leader only pointed the
    // consumer there (no records with a preferred read replica).
    for (id, records) in &served {
        if *id == follower {
            assert!(
                *records >= RECORDS as f64,
                "the follower {follower} in the consumer's rack served {records} records (by node: {served:?})"
            );
        } else {
            assert!(
                *records == 0.0,
                "node {id} served {records} records; only the follower {follower} should (by node: {served:?})"
            );
        }
    }
}

/// A consumer's Fetch of the partition from offset 0 at `version` (≤ 12:
/// topics by name) from a client in `client_rack`:
/// `(error code, preferred read replica, record bytes)`.
fn raw_fetch(addr: SocketAddr, version: i16, client_rack: &str) -> (i16, i32, usize) {
    use strom_protocol::messages::kafka::{FetchRequest, FetchResponse, fetch_request};
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_rack_id(StrBytes::from_string(client_rack.to_owned()))
        .with_topics(vec![
            fetch_request::FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str(TOPIC)))
                .with_partitions(vec![
                    fetch_request::FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    let response: FetchResponse = raw(addr).call(ApiKey::Fetch, version, &request).unwrap();
    let p = &response.responses[0].partitions[0];
    (
        p.error_code,
        p.preferred_read_replica.0,
        p.records.as_ref().map_or(0, bytes::Bytes::len),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_answers_name_the_preferred_replica_and_followers_serve_v11_consumers() {
    let cluster = cluster(true).await;
    let leader = create_topic(&cluster).await;
    produce(&producer(&cluster.bootstrap()), 0, 10).await;
    let follower = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    let (leader_addr, follower_addr) = (cluster.addr(leader), cluster.addr(follower));
    // The follower knows the leader's high watermark after its next fetch.
    eventually("the follower serves the records", move || {
        let (code, _, bytes) = raw_fetch(follower_addr, 12, "");
        (code == 0 && bytes > 0).then_some(())
    })
    .await;
    // The leader points a consumer in the follower's rack there, with no
    // records; one in its own rack, or in none, it serves.
    assert_eq!(
        raw_fetch(leader_addr, 12, &rack(follower)),
        (0, follower, 0)
    );
    let (code, preferred, bytes) = raw_fetch(leader_addr, 12, &rack(leader));
    assert_eq!((code, preferred), (0, -1));
    assert!(bytes > 0);
    let (code, preferred, bytes) = raw_fetch(leader_addr, 12, "");
    assert_eq!((code, preferred), (0, -1));
    assert!(bytes > 0);
    // A follower never redirects; a consumer before v11 is answered by the
    // leader only.
    let (code, preferred, bytes) = raw_fetch(follower_addr, 11, &rack(follower));
    assert_eq!((code, preferred), (0, -1));
    assert!(bytes > 0);
    assert_eq!(
        raw_fetch(follower_addr, 10, "").0,
        ErrorCode::NotLeaderOrFollower.code()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_selector_the_leader_serves_a_consumer_in_a_followers_rack() {
    let cluster = cluster(false).await;
    let leader = create_topic(&cluster).await;
    let follower = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    let served = produce_and_consume(&cluster, rack(follower)).await;
    for (id, records) in &served {
        if *id == leader {
            assert!(
                *records >= RECORDS as f64,
                "the leader {leader} served {records} records (by node: {served:?})"
            );
        } else {
            assert!(
                *records == 0.0,
                "node {id} served {records} records without a selector (by node: {served:?})"
            );
        }
    }
}

/// OffsetForLeaderEpoch of the partition from a consumer:
/// `(error code, leader epoch, end offset)`.
fn offset_for_leader_epoch(
    addr: SocketAddr,
    current_leader_epoch: i32,
    leader_epoch: i32,
) -> (i16, i32, i64) {
    let request = OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![
            offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str(TOPIC)))
                .with_partitions(vec![
                    offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                        .with_partition(0)
                        .with_current_leader_epoch(current_leader_epoch)
                        .with_leader_epoch(leader_epoch),
                ]),
        ]);
    let response: OffsetForLeaderEpochResponse = raw(addr)
        .call(ApiKey::OffsetForLeaderEpoch, 4, &request)
        .unwrap();
    let p = &response.topics[0].partitions[0];
    (p.error_code, p.leader_epoch, p.end_offset)
}

/// The partition's leader epoch in the node at `addr`'s metadata.
fn leader_epoch(addr: SocketAddr) -> Option<(i32, i32)> {
    use strom_protocol::messages::kafka::{MetadataRequest, MetadataResponse, metadata_request};
    let request = MetadataRequest::default().with_topics(Some(vec![
        metadata_request::MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str(TOPIC)))),
    ]));
    let response: MetadataResponse = RawConnection::connect(addr, Duration::from_secs(5))
        .ok()?
        .call(ApiKey::Metadata, 12, &request)
        .ok()?;
    let p = response.topics.first()?.partitions.first()?;
    Some((p.leader_id.0, p.leader_epoch))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_keeps_its_position_across_a_leader_kill() {
    let mut cluster = cluster(false).await;
    let first_leader = create_topic(&cluster).await;
    let (_, first_epoch) = leader_epoch(cluster.addr(first_leader)).unwrap();
    let bootstrap = cluster.bootstrap();
    let producer = producer(&bootstrap);
    produce(&producer, 0, RECORDS).await;

    let reads = Arc::new(Reads::default());
    let total = usize::try_from(2 * RECORDS).unwrap();
    let reader = {
        let (reads, bootstrap) = (Arc::clone(&reads), bootstrap.clone());
        tokio::task::spawn_blocking(move || {
            let consumer = consumer(&bootstrap, None);
            read_until(&consumer, &reads, total);
        })
    };
    let first = usize::try_from(RECORDS).unwrap();
    let reads_seen = Arc::clone(&reads);
    eventually("the consumer reads the first records", move || {
        (reads_seen.count.load(Ordering::Acquire) >= first).then_some(())
    })
    .await;

    cluster.kill(first_leader).await.unwrap();
    let survivors: Vec<SocketAddr> = cluster
        .node_ids()
        .into_iter()
        .filter(|id| *id != first_leader)
        .map(|id| cluster.addr(id))
        .collect();
    let (new_leader, new_epoch) = eventually("a new leader at a new epoch", move || {
        survivors
            .iter()
            .find_map(|a| leader_epoch(*a))
            .filter(|(leader, epoch)| {
                *leader > 0 && *leader != first_leader && *epoch > first_epoch
            })
    })
    .await;
    produce(&producer, RECORDS, 2 * RECORDS).await;
    reader.await.unwrap();
    assert_read_all(&reads, 2 * RECORDS);

    // librdkafka checked its position at the new leader (KIP-320).
    let validations = metric(
        &cluster,
        new_leader,
        "strom_requests_total",
        "api=\"OffsetForLeaderEpoch\"",
    );
    assert!(
        validations >= 1.0,
        "the consumer sent no OffsetForLeaderEpoch to the new leader {new_leader}"
    );

    // The new leader's answers: the old epoch ends where the new one
    // starts (at or after the first phase's records), the new one at the
    // log end; a client with the old epoch as current is fenced.
    let leader_addr = cluster.addr(new_leader);
    let (code, epoch, end_offset) = offset_for_leader_epoch(leader_addr, -1, first_epoch);
    assert_eq!((code, epoch), (0, first_epoch));
    assert!(
        (i64::try_from(RECORDS).unwrap()..=i64::try_from(2 * RECORDS).unwrap())
            .contains(&end_offset),
        "epoch {first_epoch} ends at {end_offset}"
    );
    let (code, epoch, end_offset) = offset_for_leader_epoch(leader_addr, new_epoch, new_epoch);
    assert_eq!(
        (code, epoch, end_offset),
        (0, new_epoch, i64::try_from(2 * RECORDS).unwrap())
    );
    assert_eq!(
        offset_for_leader_epoch(leader_addr, first_epoch, first_epoch).0,
        ErrorCode::FencedLeaderEpoch.code()
    );
    assert_eq!(
        offset_for_leader_epoch(leader_addr, new_epoch + 1, first_epoch).0,
        ErrorCode::UnknownLeaderEpoch.code()
    );
    // A follower does not answer it, whoever asks (Kafka: only the leader).
    let follower = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != new_leader && *id != first_leader)
        .unwrap();
    let follower_addr = cluster.addr(follower);
    let answer = eventually("the follower knows the new epoch", move || {
        let answer = offset_for_leader_epoch(follower_addr, new_epoch, new_epoch);
        (answer.0 != ErrorCode::UnknownLeaderEpoch.code()).then_some(answer)
    })
    .await;
    assert_eq!(
        answer,
        (ErrorCode::NotLeaderOrFollower.code(), -1, -1),
        "node {follower} follows"
    );
}
