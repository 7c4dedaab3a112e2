//! Failover without loss: an idempotent librdkafka producer writes numbered
//! records at acks=all to a partition with three replicas and
//! `min.insync.replicas=2` while its leader is killed (kill -9) or stopped
//! past its session (SIGSTOP). Afterwards a consumer reads every
//! acknowledged record exactly once and in order, and the three replicas
//! hold the same bytes.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{DEADLINE, eventually, three_nodes};
use common::raw::RawConnection;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use strom_testkit::LocalCluster;

const TOPIC: &str = "failover";
/// Records in flight at once from the producer.
const IN_FLIGHT: usize = 5;
/// Records acknowledged before a fault, and again after it.
const PER_PHASE: usize = 150;

fn raw(addr: SocketAddr) -> RawConnection {
    RawConnection::connect(addr, Duration::from_secs(20)).unwrap()
}

/// The partition's leader as any live node names it (not `except`).
async fn leader(cluster: &LocalCluster, except: Option<i32>) -> i32 {
    let addrs: Vec<SocketAddr> = cluster
        .node_ids()
        .into_iter()
        .filter(|id| Some(*id) != except)
        .map(|id| cluster.addr(id))
        .collect();
    eventually("the partition has a live leader", move || {
        addrs.iter().find_map(|addr| {
            let (leaders, _) = RawConnection::connect(*addr, Duration::from_secs(5))
                .ok()?
                .leaders(TOPIC)
                .ok()?;
            (leaders[0] > 0 && Some(leaders[0]) != except).then_some(leaders[0])
        })
    })
    .await
}

/// The leader and ISR librdkafka reads from the node at `addr` (its own
/// metadata, which a node just back from a pause may still have stale).
fn leader_and_isr(addr: SocketAddr) -> Option<(i32, Vec<i32>)> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", addr.to_string())
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(TOPIC), Duration::from_secs(5))
        .ok()?;
    let partition = metadata.topics().first()?.partitions().first()?;
    let mut isr = partition.isr().to_vec();
    isr.sort_unstable();
    Some((partition.leader(), isr))
}

/// Writes numbered records until `stop` has been set and `after_stop` more
/// were acknowledged; returns the acknowledged numbers.
struct Writer {
    acked: Arc<Mutex<Vec<u64>>>,
    /// Set to stop sending (what is in flight still completes).
    stopped: Arc<std::sync::atomic::AtomicBool>,
    errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(bootstrap: &str, total: usize) -> Self {
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.timeout.ms", "120000")
            .set("request.timeout.ms", "10000")
            // librdkafka's request timeout: a request to a paused leader is
            // given up (and retried at the new one) after this.
            .set("socket.timeout.ms", "10000")
            .create()
            .unwrap();
        let acked = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (acked_in, errors_in, stopped_in) = (
            Arc::clone(&acked),
            Arc::clone(&errors),
            Arc::clone(&stopped),
        );
        let task = tokio::spawn(async move {
            let mut in_flight = FuturesOrdered::new();
            let mut next: u64 = 0;
            loop {
                while in_flight.len() < IN_FLIGHT
                    && acked_in.lock().unwrap().len() < total
                    && !stopped_in.load(std::sync::atomic::Ordering::Relaxed)
                {
                    let n = next;
                    next += 1;
                    let producer = producer.clone();
                    in_flight.push_back(async move {
                        let value = n.to_string();
                        let sent = producer
                            .send(
                                FutureRecord::<(), str>::to(TOPIC)
                                    .partition(0)
                                    .payload(&value),
                                Duration::from_secs(120),
                            )
                            .await;
                        (n, sent.map(|_| ()).map_err(|(e, _)| e.to_string()))
                    });
                }
                let Some((n, outcome)) = in_flight.next().await else {
                    return;
                };
                match outcome {
                    Ok(()) => acked_in.lock().unwrap().push(n),
                    Err(e) => errors_in.lock().unwrap().push(format!("{n}: {e}")),
                }
            }
        });
        Self {
            acked,
            stopped,
            errors,
            task,
        }
    }

    fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn wait_for(&self, count: usize) {
        let deadline = Instant::now() + DEADLINE;
        while self.acked() < count {
            assert!(
                Instant::now() < deadline,
                "only {} of {count} acknowledged; errors: {:?}",
                self.acked(),
                self.errors.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn finish(self) -> (Vec<u64>, Vec<String>) {
        tokio::time::timeout(DEADLINE * 2, self.task)
            .await
            .expect("the writer finishes")
            .unwrap();
        let acked = self.acked.lock().unwrap().clone();
        let errors = self.errors.lock().unwrap().clone();
        (acked, errors)
    }
}

/// Every value of the partition from the start, read by librdkafka until
/// the high watermark.
fn read_all(bootstrap: &str) -> Vec<u64> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "failover-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let (_, high) = consumer
        .fetch_watermarks(TOPIC, 0, Duration::from_secs(10))
        .unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(TOPIC, 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut values = Vec::new();
    let mut position = 0;
    while position < high && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            position = m.offset() + 1;
            let text = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            values.push(text.parse().unwrap());
        }
    }
    assert_eq!(position, high, "read up to the high watermark");
    values
}

/// The partition's log bytes under `data_dir`, segments in offset order.
fn log_bytes(data_dir: &Path) -> Vec<u8> {
    let dir = data_dir.join(format!("{TOPIC}-0"));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect()
}

/// Checks what a consumer reads against what was acknowledged, once every
/// replica is back in sync, and that the replicas are byte-identical.
async fn check(mut cluster: LocalCluster, acked: Vec<u64>) {
    // Every node names the same leader, with all three in sync: the node
    // that was cut off has caught up with the metadata and the log.
    let addrs: Vec<SocketAddr> = cluster
        .node_ids()
        .into_iter()
        .map(|id| cluster.addr(id))
        .collect();
    let leader = eventually("every node sees all three replicas in sync", move || {
        let views: Vec<(i32, Vec<i32>)> = addrs
            .iter()
            .map(|a| leader_and_isr(*a))
            .collect::<Option<_>>()?;
        let agreed = views.windows(2).all(|w| w[0] == w[1]) && views[0].1 == vec![1, 2, 3];
        agreed.then_some(views[0].0)
    })
    .await;
    let bootstrap_leader = cluster.addr(leader).to_string();
    let read = tokio::task::spawn_blocking(move || read_all(&bootstrap_leader))
        .await
        .unwrap();
    let unique: BTreeSet<u64> = read.iter().copied().collect();
    assert_eq!(
        unique.len(),
        read.len(),
        "a record was read twice: {read:?}"
    );
    assert!(
        read.windows(2).all(|w| w[0] < w[1]),
        "records out of order: {read:?}"
    );
    let lost: Vec<u64> = acked
        .iter()
        .filter(|n| !unique.contains(n))
        .copied()
        .collect();
    if !lost.is_empty() {
        diagnose(&cluster);
        eprintln!("read {} values, last {:?}", read.len(), read.last());
    }
    assert!(lost.is_empty(), "acknowledged records lost: {lost:?}");
    cluster.stop_all().await.unwrap();
    let logs: Vec<Vec<u8>> = cluster
        .node_ids()
        .into_iter()
        .map(|id| log_bytes(cluster.data_dir(id)))
        .collect();
    assert!(!logs[0].is_empty());
    if !(logs[0] == logs[1] && logs[0] == logs[2]) {
        diagnose(&cluster);
        for (id, log) in cluster.node_ids().into_iter().zip(&logs) {
            let epochs = std::fs::read_to_string(
                cluster
                    .data_dir(id)
                    .join(format!("{TOPIC}-0/leader-epoch-checkpoint")),
            )
            .unwrap_or_default();
            eprintln!("node {id}: {} log bytes, epochs {epochs:?}", log.len());
        }
    }
    assert!(
        logs[0] == logs[1] && logs[0] == logs[2],
        "the replicas differ"
    );
}

/// Prints what the nodes logged about leaders, the ISR and truncation.
fn diagnose(cluster: &LocalCluster) {
    for id in cluster.node_ids() {
        let log = std::fs::read_to_string(cluster.stderr_log(id)).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                [
                    "ISR",
                    "truncat",
                    "diverg",
                    "replica fetch",
                    "fenc",
                    "out of",
                ]
                .iter()
                .any(|w| l.contains(w))
            })
            .collect();
        eprintln!("--- node {id}:\n{}", lines.join("\n"));
    }
}

async fn setup() -> (LocalCluster, String) {
    let cluster = three_nodes().await;
    let code = raw(cluster.addr(1))
        .create_topic_with_configs(TOPIC, 1, 3, &[("min.insync.replicas", "2")])
        .unwrap();
    assert_eq!(code, 0);
    leader(&cluster, None).await;
    let bootstrap = cluster.bootstrap();
    (cluster, bootstrap)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_twice_loses_no_acknowledged_record() {
    let (mut cluster, bootstrap) = setup().await;
    let writer = Writer::start(&bootstrap, 3 * PER_PHASE);
    for round in 1..=2 {
        writer.wait_for(round * PER_PHASE).await;
        let victim = leader(&cluster, None).await;
        cluster.kill(victim).await.unwrap();
        let next = leader(&cluster, Some(victim)).await;
        assert_ne!(next, victim);
        writer.wait_for(round * PER_PHASE + PER_PHASE / 2).await;
        cluster.restart(victim).await.unwrap();
    }
    let (acked, errors) = writer.finish().await;
    assert!(
        errors.is_empty(),
        "the idempotent producer failed: {errors:?}"
    );
    check(cluster, acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_past_its_session_loses_no_acknowledged_record() {
    let (cluster, bootstrap) = setup().await;
    let writer = Writer::start(&bootstrap, 2 * PER_PHASE);
    writer.wait_for(PER_PHASE).await;
    let victim = leader(&cluster, None).await;
    cluster.pause(victim).unwrap();
    let next = leader(&cluster, Some(victim)).await;
    assert_ne!(next, victim);
    writer.wait_for(PER_PHASE + PER_PHASE / 2).await;
    cluster.resume(victim).unwrap();
    let (acked, errors) = writer.finish().await;
    assert!(
        errors.is_empty(),
        "the idempotent producer failed: {errors:?}"
    );
    check(cluster, acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_down_for_thirty_seconds_catches_up_and_rejoins_the_isr() {
    /// How long the follower stays down while the writer goes on (the
    /// fault's length, as the issue states it).
    const DOWN: Duration = Duration::from_secs(30);
    let (mut cluster, bootstrap) = setup().await;
    let writer = Writer::start(&bootstrap, usize::MAX);
    writer.wait_for(PER_PHASE).await;
    let leader_id = leader(&cluster, None).await;
    let follower = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != leader_id)
        .unwrap();
    cluster.kill(follower).await.unwrap();
    let at_leader = cluster.addr(leader_id);
    eventually(
        "the leader drops the dead follower from the ISR",
        move || {
            let (_, isr) = leader_and_isr(at_leader)?;
            (!isr.contains(&follower)).then_some(())
        },
    )
    .await;
    let down_since = Instant::now();
    let acked_at_kill = writer.acked();
    while down_since.elapsed() < DOWN {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        writer.acked() > acked_at_kill,
        "the writer went on while the follower was down"
    );
    cluster.restart(follower).await.unwrap();
    eventually("the follower rejoins the ISR", move || {
        let (_, isr) = leader_and_isr(at_leader)?;
        isr.contains(&follower).then_some(())
    })
    .await;
    let more = writer.acked() + PER_PHASE;
    writer.wait_for(more).await;
    writer.stop();
    let (acked, errors) = writer.finish().await;
    assert!(
        errors.is_empty(),
        "the idempotent producer failed: {errors:?}"
    );
    check(cluster, acked).await;
}
