//! Replication benchmark: the `strom` binary on this machine through
//! strom-testkit, driven by librdkafka producers.
//!
//! 1. **Throughput**: 1 KiB records to a topic of 3 partitions as fast as
//!    one producer goes (linger 5 ms; the clock starts once a first record
//!    per partition is acknowledged), on one node with acks=1 and on three
//!    nodes with replication factor 3, `min.insync.replicas=2` and acks=all,
//!    alternating in one run: MB/s of each and their ratio.
//! 2. **acks=all latency** at 10 MB/s of 1 KiB records on the three nodes:
//!    p50, p99, p99.9, max; with the default flushing (the OS writes back)
//!    and with `flush.messages=1` (every replica fsyncs each append before
//!    the leader acknowledges it).
//! 3. **Unavailability**: a producer sends a 1 KiB record every millisecond
//!    at acks=all (idempotent) while the partition's leader is killed
//!    (kill -9) or stopped (SIGTERM, a controlled shutdown): the time from
//!    the signal to the first acknowledgement of a record sent after it, and
//!    the producer's failed deliveries. The victim is restarted and back in
//!    the ISR between rounds.
//! 4. **Rejoin**: a follower is killed for 30 s while 5 MB/s is written at
//!    acks=all, then restarted: the time from its restart to its return to
//!    the ISR.
//!
//! `cargo bench -p strom-tests --bench replication` (the bench profile builds
//! `strom-e2e` optimized; `STROM_BIN` names another `strom` binary).
//! `STROM_BENCH_QUICK=1` is a smoke run. `STROM_BENCH_RUNS` (default 3)
//! throughput pairs, `STROM_BENCH_ROUNDS` (default 10) kill rounds (half as
//! many SIGTERM rounds), `STROM_BENCH_SECTIONS` (e.g. `1,3`),
//! `STROM_BENCH_DOWN_S` (default 30) for section 4. The nodes use a 3 s
//! `broker.session.timeout.ms` with 500 ms heartbeats, as the tests do.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::raw::RawConnection;
use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use strom_testkit::LocalCluster;
use support::{env_usize, produce_latency_samples_at, producer_at, send, stats, wanted};

/// How long any one wait may take before the benchmark fails.
const WAIT_MAX: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(5);
const SESSION_MS: &str = "3000";
const RECORD: usize = 1024;

fn strom_bin() -> PathBuf {
    std::env::var_os("STROM_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_strom-e2e")),
        PathBuf::from,
    )
}

async fn cluster(nodes: usize) -> LocalCluster {
    LocalCluster::builder(strom_bin())
        .nodes(nodes)
        .set("broker.session.timeout.ms", SESSION_MS)
        .set("broker.heartbeat.interval.ms", "500")
        .set("auto.create.topics.enable", "false")
        .start()
        .await
        .unwrap()
}

fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {WAIT_MAX:?}: {what}");
        std::thread::sleep(POLL);
    }
}

/// Creates `topic` through `addr` and waits until every node in `addrs`
/// names a leader for each partition; returns partition 0's leader.
fn create(addr: SocketAddr, addrs: &[SocketAddr], topic: &str, partitions: i32, rf: i16) -> i32 {
    create_with(addr, addrs, topic, partitions, rf, &[])
}

/// [`create`] with more topic configs.
fn create_with(
    addr: SocketAddr,
    addrs: &[SocketAddr],
    topic: &str,
    partitions: i32,
    rf: i16,
    extra: &[(&str, &str)],
) -> i32 {
    let mut configs = vec![("min.insync.replicas", if rf > 1 { "2" } else { "1" })];
    configs.extend_from_slice(extra);
    let code = RawConnection::connect(addr, Duration::from_secs(30))
        .unwrap()
        .create_topic_with_configs(topic, partitions, rf, &configs)
        .unwrap();
    assert_eq!(code, 0, "creating {topic}");
    wait_for("leaders everywhere", || {
        let mut first = None;
        for a in addrs {
            let (leaders, _) = RawConnection::connect(*a, Duration::from_secs(5))
                .ok()?
                .leaders(topic)
                .ok()?;
            if leaders.iter().any(|l| *l <= 0) {
                return None;
            }
            first = Some(leaders[0]);
        }
        first
    })
}

fn addrs(cluster: &LocalCluster) -> Vec<SocketAddr> {
    cluster
        .node_ids()
        .into_iter()
        .map(|id| cluster.addr(id))
        .collect()
}

/// Leader and sorted ISR of partition 0 of `topic` as the node at `addr`
/// sees them.
fn leader_and_isr(addr: SocketAddr, topic: &str) -> Option<(i32, Vec<i32>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr.to_string())
        .create()
        .ok()?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let p = metadata.topics().first()?.partitions().first()?;
    let mut isr = p.isr().to_vec();
    isr.sort_unstable();
    Some((p.leader(), isr))
}

/// Every node names the same leader with the whole replica set in sync.
fn settled(cluster: &LocalCluster, topic: &str) -> i32 {
    let addrs = addrs(cluster);
    let all: Vec<i32> = cluster.node_ids();
    wait_for("the partition settled with every replica in sync", || {
        let views: Vec<(i32, Vec<i32>)> = addrs
            .iter()
            .map(|a| leader_and_isr(*a, topic))
            .collect::<Option<_>>()?;
        (views.windows(2).all(|w| w[0] == w[1]) && views[0].1 == all && views[0].0 > 0)
            .then_some(views[0].0)
    })
}

/// MB/s of `count` 1 KiB records to the 3 partitions of `topic`.
fn throughput(bootstrap: &str, topic: &str, acks: &str, count: usize) -> f64 {
    let (producer, reports) = producer_at(bootstrap, acks, "5");
    let payload = vec![b'x'; RECORD];
    // One record per partition first, acknowledged before the clock starts:
    // the producer's metadata and connections, and on three nodes the
    // followers' first fetches of a topic just created (a follower that
    // asked before its leader knew the partition waits
    // `replica.fetch.backoff.ms`, 1 s), are not the stream being measured.
    for partition in 0..3 {
        send(&producer, topic, partition, &payload, None);
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    let start = Instant::now();
    for i in 0..count {
        send(&producer, topic, (i % 3) as i32, &payload, None);
    }
    producer.flush(Duration::from_secs(300)).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let failures = reports.failures.load(Ordering::Relaxed);
    assert_eq!(failures, 0, "{failures} deliveries failed");
    (count * RECORD) as f64 / secs / 1e6
}

async fn section_throughput(runs: usize, count: usize) {
    println!(
        "\n1. Throughput: {count} records of 1 KiB over 3 partitions, one librdkafka producer (linger 5 ms), {runs} runs alternating"
    );
    let single = cluster(1).await;
    let three = cluster(3).await;
    let (mut ones, mut alls, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let topic = format!("single-{run}");
        create(single.addr(1), &addrs(&single), &topic, 3, 1);
        let b = single.bootstrap();
        let one = tokio::task::spawn_blocking(move || throughput(&b, &topic, "1", count))
            .await
            .unwrap();
        let topic = format!("replicated-{run}");
        create(three.addr(1), &addrs(&three), &topic, 3, 3);
        let b = three.bootstrap();
        let all = tokio::task::spawn_blocking(move || throughput(&b, &topic, "all", count))
            .await
            .unwrap();
        println!(
            "  run {run}: one node acks=1 {one:>7.1} MB/s   three nodes RF 3 acks=all {all:>7.1} MB/s   ratio {:.2}",
            all / one
        );
        ones.push(one);
        alls.push(all);
        ratios.push(all / one);
    }
    println!("  one node, acks=1 (MB/s):        {}", stats(ones));
    println!("  three nodes, RF 3, acks=all:    {}", stats(alls));
    ratios.sort_by(f64::total_cmp);
    println!(
        "  ratio (per run):                median {:.2}  (min {:.2}, max {:.2})",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
}

async fn section_latency(secs: f64) {
    println!(
        "\n2. acks=all latency at 10 MB/s of 1 KiB records for {secs} s, RF 3, min.insync.replicas=2 (ms)"
    );
    let three = cluster(3).await;
    for (topic, label, extra) in [
        ("latency", "default flushing", &[][..]),
        (
            "latency-fsync",
            "flush.messages=1",
            &[("flush.messages", "1")][..],
        ),
    ] {
        create_with(three.addr(1), &addrs(&three), topic, 1, 3, extra);
        let b = three.bootstrap();
        let samples = tokio::task::spawn_blocking(move || {
            produce_latency_samples_at(&b, topic, RECORD, 10.0, secs, "all")
        })
        .await
        .unwrap();
        // The first second warms connections and metadata up.
        let start = samples.first().map(|s| s.0).unwrap();
        let steady: Vec<(Instant, u64)> = samples
            .into_iter()
            .filter(|(sent, _)| sent.duration_since(start) > Duration::from_secs(1))
            .collect();
        let p = support::percentiles(&steady, start, f64::MAX);
        println!(
            "  {label:<18} p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}   ({} records)",
            p[0],
            p[1],
            p[2],
            p[3],
            steady.len()
        );
    }
}

/// Delivery outcomes of the steady producer: (sent, acknowledged at, ok).
struct Outcomes(Arc<Mutex<Vec<(Instant, Instant, bool)>>>);
impl ClientContext for Outcomes {
    /// librdkafka's own lines (with `STROM_BENCH_RDKAFKA_DEBUG`, its `debug`
    /// contexts), on stderr with the time: where a failover's client part
    /// goes.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        eprintln!(
            "{} librdkafka {level:?} {fac}: {log_message}",
            chrono_free_now()
        );
    }
}

/// Seconds and milliseconds since the epoch, for log lines.
fn chrono_free_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", now.as_secs(), now.subsec_millis())
}
impl ProducerContext for Outcomes {
    type DeliveryOpaque = Box<Instant>;
    fn delivery(&self, result: &DeliveryResult<'_>, sent: Self::DeliveryOpaque) {
        self.0
            .lock()
            .unwrap()
            .push((*sent, Instant::now(), result.is_ok()));
    }
}

/// A producer sending one record per millisecond to partition 0 of `topic`
/// until stopped.
fn steady_producer(
    bootstrap: String,
    topic: &'static str,
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<(Instant, Instant, bool)>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "0")
            .set("message.timeout.ms", "60000")
            .set("socket.timeout.ms", "10000")
            .set("retry.backoff.ms", "20")
            .set("retry.backoff.max.ms", "100")
            .set("topic.metadata.refresh.interval.ms", "1000")
            // A round's victim is the next round's likely new leader: its
            // reconnect backoff, grown while it was down (up to 10 s by
            // default), would otherwise delay the next round's failover.
            .set("reconnect.backoff.max.ms", "1000");
        if let Ok(contexts) = std::env::var("STROM_BENCH_RDKAFKA_DEBUG") {
            config
                .set("debug", contexts)
                .set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
        }
        let producer: ThreadedProducer<Outcomes> =
            config.create_with_context(Outcomes(outcomes)).unwrap();
        let payload = vec![b'u'; RECORD];
        while !stop.load(Ordering::Relaxed) {
            let record = BaseRecord::with_opaque_to(topic, Box::new(Instant::now()))
                .partition(0)
                .payload(&payload[..]);
            let _ = producer.send::<(), [u8]>(record);
            std::thread::sleep(Duration::from_millis(1));
        }
        producer.flush(Duration::from_secs(60)).unwrap();
    })
}

async fn section_unavailability(rounds: usize) {
    println!(
        "\n3. Unavailability of a partition (RF 3, min.insync.replicas=2) when its leader goes, one acks=all record per ms; broker.session.timeout.ms {SESSION_MS}"
    );
    let mut three = cluster(3).await;
    create(three.addr(1), &addrs(&three), "steady", 1, 3);
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let writer = steady_producer(
        three.bootstrap(),
        "steady",
        Arc::clone(&stop),
        Arc::clone(&outcomes),
    );
    // The producer has its id and connections before the first round.
    wait_for("the producer's first acknowledgement", || {
        outcomes.lock().unwrap().iter().any(|o| o.2).then_some(())
    });
    for (label, kill, n) in [
        ("kill -9", true, rounds),
        ("SIGTERM", false, rounds.div_ceil(2)),
    ] {
        let mut gaps = Vec::new();
        let mut moved = Vec::new();
        // The gaps where the victim led the partition only, and where it
        // was the active controller too (a new controller is elected first,
        // and gives every broker a full session, as Kafka's does).
        let mut leader_only = Vec::new();
        let mut with_controller = Vec::new();
        let mut failed = 0;
        for round in 0..n {
            let victim = settled(&three, "steady");
            outcomes.lock().unwrap().clear();
            let survivor = three.addr(*three.node_ids().iter().find(|id| **id != victim).unwrap());
            let (controller, _) = RawConnection::connect(survivor, Duration::from_secs(5))
                .unwrap()
                .describe_cluster()
                .unwrap();
            // When a survivor's Metadata names another leader: the brokers'
            // part of the gap (the rest is the client learning it).
            let at = Instant::now();
            let watcher = tokio::task::spawn_blocking(move || {
                let start = at;
                wait_for("a new leader in a survivor's Metadata", || {
                    let (leaders, _) = RawConnection::connect(survivor, Duration::from_secs(5))
                        .ok()?
                        .leaders("steady")
                        .ok()?;
                    (leaders[0] > 0 && leaders[0] != victim).then(|| start.elapsed())
                })
            });
            eprintln!("{} bench: signalling leader {victim}", chrono_free_now());
            if kill {
                three.kill(victim).await.unwrap();
            } else {
                three.stop(victim).await.unwrap();
            }
            moved.push(watcher.await.unwrap().as_secs_f64() * 1000.0);
            let first = wait_for("an acknowledgement after the signal", || {
                outcomes
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(sent, _, ok)| *ok && *sent >= at)
                    .map(|(_, acked, _)| *acked)
                    .min()
            });
            let gap = first.duration_since(at).as_secs_f64() * 1000.0;
            let brokers_part = moved.last().copied().unwrap_or_default();
            println!(
                "    round {round}: victim {victim}{}  new leader named {brokers_part:.0} ms  first ack {gap:.0} ms",
                if controller == victim {
                    " (the active controller)"
                } else {
                    ""
                }
            );
            if controller == victim {
                with_controller.push(gap);
            } else {
                leader_only.push(gap);
            }
            gaps.push(gap);
            three.restart(victim).await.unwrap();
            settled(&three, "steady");
            failed += outcomes.lock().unwrap().iter().filter(|o| !o.2).count();
        }
        println!(
            "  {label:<8} to the first acks=all acknowledgement (ms): {}   failed deliveries: {failed}",
            stats(gaps)
        );
        println!(
            "  {label:<8} to a new leader in a survivor's Metadata (ms): {}",
            stats(moved)
        );
        for (what, gaps) in [
            ("the leader only", leader_only),
            ("leader and active controller", with_controller),
        ] {
            if !gaps.is_empty() {
                println!(
                    "  {label:<8} victim {what} ({} rounds): {}",
                    gaps.len(),
                    stats(gaps)
                );
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
}

async fn section_rejoin(down: Duration) {
    println!(
        "\n4. A follower down for {down:?} while 5 MB/s of 1 KiB records is written at acks=all: from its restart to its return to the ISR"
    );
    let mut three = cluster(3).await;
    let leader = create(three.addr(1), &addrs(&three), "rejoin", 1, 3);
    let follower = three
        .node_ids()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    let b = three.bootstrap();
    let total = down.as_secs_f64() + 60.0;
    let writer = tokio::task::spawn_blocking(move || {
        produce_latency_samples_at(&b, "rejoin", RECORD, 5.0, total, "all").len()
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    three.kill(follower).await.unwrap();
    let down_at = Instant::now();
    while down_at.elapsed() < down {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let restart_at = Instant::now();
    three.restart(follower).await.unwrap();
    let ready = restart_at.elapsed();
    let at_leader = three.addr(leader);
    let rejoined = tokio::task::spawn_blocking(move || {
        wait_for("the follower back in the ISR", || {
            let (_, isr) = leader_and_isr(at_leader, "rejoin")?;
            isr.contains(&follower).then_some(Instant::now())
        })
    })
    .await
    .unwrap();
    println!(
        "  restart to ready line {:.2} s, restart to back in the ISR {:.2} s",
        ready.as_secs_f64(),
        rejoined.duration_since(restart_at).as_secs_f64()
    );
    let sent = writer.await.unwrap();
    println!("  ({sent} records written in all)");
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let quick = std::env::var("STROM_BENCH_QUICK").is_ok_and(|v| v != "0");
    let runs = env_usize("STROM_BENCH_RUNS", if quick { 1 } else { 3 });
    let rounds = env_usize("STROM_BENCH_ROUNDS", if quick { 2 } else { 10 });
    let down =
        Duration::from_secs(env_usize("STROM_BENCH_DOWN_S", if quick { 5 } else { 30 }) as u64);
    println!(
        "strom replication benchmark: {} on this machine",
        strom_bin().display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if wanted("STROM_BENCH_SECTIONS", 1) {
            section_throughput(runs, if quick { 20_000 } else { 200_000 }).await;
        }
        if wanted("STROM_BENCH_SECTIONS", 2) {
            section_latency(if quick { 3.0 } else { 20.0 }).await;
        }
        if wanted("STROM_BENCH_SECTIONS", 3) {
            section_unavailability(rounds).await;
        }
        if wanted("STROM_BENCH_SECTIONS", 4) {
            section_rejoin(down).await;
        }
    });
}
