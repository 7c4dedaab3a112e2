//! Cluster benchmark: three combined nodes (broker and controller) of the
//! `strom` binary on this machine through strom-testkit, measured from
//! outside over plain Kafka requests to one node at a time:
//!
//! 1. **Controller failover**: kill -9 of the active controller, then the
//!    time until both survivors name the same new controller (DescribeCluster
//!    polled every few ms), and until a CreateTopics sent to a survivor at
//!    the kill succeeds (the survivor forwards it and retries while there is
//!    no leader). The killed node is restarted between rounds.
//! 2. **Metadata write latency**: sequential CreateTopics of one partition,
//!    RF 1 and RF 3, sent to the active controller and to another node
//!    (which forwards it): p50, p99, max.
//! 3. **Startup with 1,000 partitions** (10 topics × 100, RF 3, so every
//!    node hosts 1,000 replicas): a node other than the controller stopped
//!    and started again, from spawn to its ready line and to its listing in
//!    another node's Metadata; after SIGTERM, after kill -9 (once fenced),
//!    and with its data directory wiped (a voter that lost its disk); and a
//!    new broker-only node joining with an empty directory.
//!
//! `cargo bench -p strom-tests --bench cluster` (the bench profile builds
//! `strom-e2e` optimized; `STROM_BIN` names another `strom` binary).
//! `STROM_BENCH_QUICK=1` is a smoke run (3 rounds, 20 topics, 100
//! partitions). `STROM_BENCH_ROUNDS` (default 10) failover rounds,
//! `STROM_BENCH_CREATES` (default 200) topics per latency row,
//! `STROM_BENCH_RUNS` (default 3) restarts per startup row,
//! `STROM_BENCH_ELECTION_MS` (default 1000, Kafka's
//! `controller.quorum.election.timeout.ms`; a list such as `1000,500` runs
//! the failover once per value), `STROM_BENCH_SECTIONS` (e.g. `1,3`),
//! `STROM_BENCH_DATA_DIR` (keep the nodes' directories and logs there, one
//! subdirectory per cluster).
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
use std::time::{Duration, Instant};

use common::raw::RawConnection;
use strom_testkit::LocalCluster;
use support::{env_usize, stats, wanted};

/// How long any one wait in the benchmark may take before it fails.
const WAIT_MAX: Duration = Duration::from_secs(120);
/// How often a waiting loop asks again.
const POLL: Duration = Duration::from_millis(5);
/// How long one request may take (the controller's write timeout is 15 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const TOPIC_ALREADY_EXISTS: i16 = 36;

struct Settings {
    rounds: usize,
    creates: usize,
    runs: usize,
    topics: usize,
    partitions_per_topic: i32,
    election_ms: Vec<usize>,
}

impl Settings {
    fn from_env() -> Self {
        let quick = std::env::var("STROM_BENCH_QUICK").is_ok_and(|v| v != "0");
        let election_ms = std::env::var("STROM_BENCH_ELECTION_MS")
            .ok()
            .map(|v| v.split(',').filter_map(|e| e.trim().parse().ok()).collect())
            .filter(|v: &Vec<usize>| !v.is_empty())
            .unwrap_or_else(|| vec![1000]);
        Self {
            rounds: env_usize("STROM_BENCH_ROUNDS", if quick { 3 } else { 10 }),
            creates: env_usize("STROM_BENCH_CREATES", if quick { 20 } else { 200 }),
            runs: env_usize("STROM_BENCH_RUNS", if quick { 1 } else { 3 }),
            topics: 10,
            partitions_per_topic: if quick { 10 } else { 100 },
            election_ms,
        }
    }
}

fn strom_bin() -> PathBuf {
    std::env::var_os("STROM_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_strom-e2e")),
        PathBuf::from,
    )
}

async fn three_nodes(name: &str, election_ms: usize) -> LocalCluster {
    let mut builder = LocalCluster::builder(strom_bin());
    if let Some(root) = std::env::var_os("STROM_BENCH_DATA_DIR") {
        builder = builder.data_dir_root(PathBuf::from(root).join(name));
    }
    builder
        .nodes(3)
        .set(
            "controller.quorum.election.timeout.ms",
            election_ms.to_string(),
        )
        .set("auto.create.topics.enable", "false")
        .start()
        .await
        .unwrap()
}

fn connect(addr: SocketAddr) -> Option<RawConnection> {
    RawConnection::connect(addr, REQUEST_TIMEOUT).ok()
}

/// Polls `check` every [`POLL`] until it holds, for at most `timeout`.
fn try_wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("not within {timeout:?}: {what}"));
        }
        std::thread::sleep(POLL);
    }
}

/// [`try_wait_for`] up to [`WAIT_MAX`], panicking after it.
fn wait_for<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    try_wait_for(what, WAIT_MAX, check).unwrap_or_else(|e| panic!("{e}"))
}

/// The controller every node in `addrs` names, once they all name the same
/// one (a node with no leader names itself, so agreement means a leader).
fn agreed_controller(addrs: &[SocketAddr]) -> Option<i32> {
    let mut seen = Vec::with_capacity(addrs.len());
    for addr in addrs {
        seen.push(connect(*addr)?.describe_cluster().ok()?.0);
    }
    (seen[0] >= 0 && seen.iter().all(|c| *c == seen[0])).then_some(seen[0])
}

/// Waits until every node names one controller and lists every broker;
/// returns the controller.
fn settled(cluster: &LocalCluster) -> i32 {
    let addrs: Vec<SocketAddr> = cluster
        .node_ids()
        .iter()
        .map(|id| cluster.addr(*id))
        .collect();
    let ids = cluster.node_ids();
    wait_for("the cluster settled", || {
        let controller = agreed_controller(&addrs)?;
        for addr in &addrs {
            let (_, brokers) = connect(*addr)?.topics_and_brokers().ok()?;
            if brokers != ids {
                return None;
            }
        }
        Some(controller)
    })
}

/// Sends CreateTopics to `addr` until one succeeds (or finds the topic
/// already made by an earlier attempt that timed out).
fn create_until_done(addr: SocketAddr, name: &str, partitions: i32, rf: i16) {
    wait_for(&format!("topic {name} created"), || {
        let (code, _) = connect(addr)?.create_topic(name, partitions, rf).ok()?;
        (code == 0 || code == TOPIC_ALREADY_EXISTS).then_some(())
    });
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Section 1: kill -9 of the active controller, `rounds` times.
async fn failover(settings: &Settings, election_ms: usize) {
    println!(
        "\n1. controller failover after kill -9 of the active controller \
         (controller.quorum.election.timeout.ms={election_ms}), {} rounds",
        settings.rounds
    );
    let mut cluster = three_nodes(&format!("failover-{election_ms}"), election_ms).await;
    let mut elected = Vec::new();
    let mut writable = Vec::new();
    let mut restarts = Vec::new();
    for round in 0..settings.rounds {
        let old = settled(&cluster);
        let survivors: Vec<SocketAddr> = cluster
            .node_ids()
            .into_iter()
            .filter(|id| *id != old)
            .map(|id| cluster.addr(id))
            .collect();
        let killed_at = Instant::now();
        cluster.kill(old).await.unwrap();
        let addrs = survivors.clone();
        let election = std::thread::spawn(move || {
            let mut conns: Vec<Option<RawConnection>> = addrs.iter().map(|_| None).collect();
            wait_for("a new controller", || {
                let mut seen = Vec::with_capacity(addrs.len());
                for (addr, conn) in addrs.iter().zip(conns.iter_mut()) {
                    if conn.is_none() {
                        *conn = connect(*addr);
                    }
                    match conn.as_mut()?.describe_cluster() {
                        Ok((controller, _)) => seen.push(controller),
                        Err(_) => {
                            *conn = None;
                            return None;
                        }
                    }
                }
                let agreed = seen[0] >= 0 && seen[0] != old && seen.iter().all(|c| *c == seen[0]);
                agreed.then(|| (seen[0], killed_at.elapsed()))
            })
        });
        let through = survivors[round % survivors.len()];
        let name = format!("failover-{election_ms}-{round}");
        let write = std::thread::spawn(move || {
            create_until_done(through, &name, 1, 1);
            killed_at.elapsed()
        });
        let (new, election) = election.join().unwrap();
        let write = write.join().unwrap();
        println!(
            "  round {round}: node {old} killed, node {new} named by both survivors after {:.1} ms, \
             CreateTopics succeeded after {:.1} ms",
            ms(election),
            ms(write)
        );
        elected.push(ms(election));
        writable.push(ms(write));
        let restart_at = Instant::now();
        cluster.restart(old).await.unwrap();
        restarts.push(ms(restart_at.elapsed()));
    }
    settled(&cluster);
    println!(
        "  new controller named by both survivors  {} ms",
        stats(elected)
    );
    println!(
        "  CreateTopics succeeds again             {} ms",
        stats(writable)
    );
    println!(
        "  (restart of the killed node to ready    {} ms)",
        stats(restarts)
    );
}

/// p50, p99 and max of `samples` (ms).
fn percentiles(mut samples: Vec<f64>) -> String {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    format!(
        "p50 {:>7.2}  p99 {:>7.2}  max {:>7.2} ms",
        at(0.5),
        at(0.99),
        samples[samples.len() - 1]
    )
}

/// Section 2: sequential CreateTopics of one partition.
async fn create_latency(settings: &Settings) {
    println!(
        "\n2. CreateTopics latency: 1 partition, {} sequential requests per row, one connection",
        settings.creates
    );
    let cluster = three_nodes("latency", 1000).await;
    let controller = settled(&cluster);
    let other = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != controller)
        .unwrap();
    let rows = [
        ("RF 1 to the active controller", controller, 1i16),
        ("RF 3 to the active controller", controller, 3),
        ("RF 1 to another node (forwarded)", other, 1),
        ("RF 3 to another node (forwarded)", other, 3),
    ];
    for (row, (label, node, rf)) in rows.iter().enumerate() {
        let mut conn = connect(cluster.addr(*node)).unwrap();
        // Warm up: the connection, the forwarding path, the page cache.
        for i in 0..5 {
            let (code, message) = conn
                .create_topic(&format!("warm-{row}-{i}"), 1, *rf)
                .unwrap();
            assert_eq!(code, 0, "{message:?}");
        }
        let mut samples = Vec::with_capacity(settings.creates);
        for i in 0..settings.creates {
            let name = format!("latency-{row}-{i}");
            let start = Instant::now();
            let (code, message) = conn.create_topic(&name, 1, *rf).unwrap();
            samples.push(ms(start.elapsed()));
            assert_eq!(code, 0, "{name}: {message:?}");
        }
        println!("  {label:<34} {}", percentiles(samples));
    }
}

/// How a node goes down before it is started again.
#[derive(Debug, Clone, Copy)]
enum Down {
    /// SIGTERM, a clean shutdown.
    Stopped,
    /// kill -9.
    Killed,
    /// SIGTERM, then its whole data directory removed.
    Wiped,
}

/// Section 3: restarts of a node hosting 1,000 partition replicas.
async fn startup(settings: &Settings) {
    let partitions = settings.topics as i32 * settings.partitions_per_topic;
    println!(
        "\n3. node startup with {partitions} partitions ({} topics × {}, RF 3: every node hosts them all), {} runs per row",
        settings.topics, settings.partitions_per_topic, settings.runs
    );
    let mut cluster = three_nodes("startup", 1000).await;
    let controller = settled(&cluster);
    let controller_addr = cluster.addr(controller);
    let made = Instant::now();
    for t in 0..settings.topics {
        create_until_done(
            controller_addr,
            &format!("startup-{t}"),
            settings.partitions_per_topic,
            3,
        );
    }
    println!("  created in {:.1} ms", ms(made.elapsed()));
    let node = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != controller)
        .unwrap();
    let watcher = cluster.addr(controller);
    let listed = move |id: i32| -> Option<bool> {
        let (_, brokers) = connect(watcher)?.topics_and_brokers().ok()?;
        Some(brokers.contains(&id))
    };
    for down in [Down::Stopped, Down::Killed, Down::Wiped] {
        let mut ready = Vec::new();
        let mut in_metadata = Vec::new();
        let mut fenced = Vec::new();
        let mut failure = None;
        for _ in 0..settings.runs {
            match down {
                Down::Stopped | Down::Wiped => cluster.stop(node).await.unwrap(),
                Down::Killed => cluster.kill(node).await.unwrap(),
            }
            if let Down::Wiped = down {
                std::fs::remove_dir_all(cluster.data_dir(node)).unwrap();
            }
            // Gone from the others' Metadata first (fenced), so that its
            // return is seen.
            let down_at = Instant::now();
            wait_for("the node fenced", || {
                listed(node).map(|l| !l).filter(|gone| *gone)
            });
            fenced.push(ms(down_at.elapsed()));
            let spawned = Instant::now();
            if let Err(e) = cluster.restart(node).await {
                failure = Some(e.to_string());
                break;
            }
            ready.push(ms(spawned.elapsed()));
            let shown = try_wait_for("the node listed in Metadata", WAIT_MAX / 4, || {
                listed(node).filter(|l| *l)
            });
            if let Err(e) = shown {
                failure = Some(e);
                break;
            }
            in_metadata.push(ms(spawned.elapsed()));
            settled(&cluster);
        }
        let label = match down {
            Down::Stopped => "restart after SIGTERM",
            Down::Killed => "restart after kill -9 (once fenced)",
            Down::Wiped => "restart with an empty data directory",
        };
        if let Some(e) = failure {
            // The first line: the testkit's error goes on with the node's
            // stderr, which is in its log file.
            println!(
                "  {label:<38} FAILED: {}",
                e.lines().next().unwrap_or_default()
            );
            continue;
        }
        println!("  {label:<38} ready line  {} ms", stats(ready));
        println!("  {:<38} in Metadata {} ms", "", stats(in_metadata));
        println!("  {:<38} (down to fenced {} ms)", "", stats(fenced));
        if let Down::Wiped = down {
            let dirs = std::fs::read_dir(cluster.data_dir(node))
                .unwrap()
                .filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.starts_with("startup-"))
                })
                .count();
            println!("  {:<38} partition directories recreated: {dirs}", "");
        }
    }
    // A broker-only node joining with an empty directory: it fetches the
    // metadata of every partition from the voters and registers.
    let mut ready = Vec::new();
    let mut in_metadata = Vec::new();
    for _ in 0..settings.runs {
        let spawned = Instant::now();
        let id = cluster.add_broker().await.unwrap();
        ready.push(ms(spawned.elapsed()));
        wait_for("the new broker listed in Metadata", || {
            listed(id).filter(|l| *l)
        });
        in_metadata.push(ms(spawned.elapsed()));
    }
    let label = "a broker-only node joins (empty dir)";
    println!("  {label:<38} ready line  {} ms", stats(ready));
    println!("  {:<38} in Metadata {} ms", "", stats(in_metadata));
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let settings = Settings::from_env();
    println!(
        "strom cluster benchmark: 3 combined nodes (broker + controller) of {} on this machine",
        strom_bin().display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if wanted("STROM_BENCH_SECTIONS", 1) {
            for election_ms in settings.election_ms.clone() {
                failover(&settings, election_ms).await;
            }
        }
        if wanted("STROM_BENCH_SECTIONS", 2) {
            create_latency(&settings).await;
        }
        if wanted("STROM_BENCH_SECTIONS", 3) {
            startup(&settings).await;
        }
    });
}
