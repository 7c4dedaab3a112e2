//! One run: a cluster in network namespaces, the workloads, the nemesis
//! schedule, healing, the final reads, and the checker's verdict; and a
//! soak of many seeded runs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;
use strom_client::admin::{Admin, NewTopic};
use strom_testkit::{LocalCluster, Tmpfs};

use crate::checker::{self, Report};
use crate::history::{self, Isolation};
use crate::nemesis::{self, Fault, Step, Target};
use crate::net::Network;
use crate::workload::{self, Clients, Recorder, wall_us};

/// The broker session timeout of the run's cluster: short, so that a
/// paused or dead broker is fenced within seconds.
const SESSION_TIMEOUT_MS: u64 = 3_000;
/// How long the workloads run before the first fault.
const WARMUP: Duration = Duration::from_secs(5);
/// How long the healed cluster runs before the workloads stop.
const SETTLE: Duration = Duration::from_secs(5);
/// How long a node may take to be ready after a restart.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the final reads may take, per topic.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The size of each node's data directory when the disk-full fault is in
/// the schedule (a tmpfs): small enough to fill in a moment.
const DISK_MB: u64 = 256;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub seed: u64,
    pub nodes: usize,
    pub faults: Vec<Fault>,
    /// How many faults; with `each_once`, every kind of `faults` once.
    pub count: usize,
    pub each_once: bool,
    /// The run's directory: history, report, node logs.
    pub out: PathBuf,
    /// The `strom` binary.
    pub strom: PathBuf,
    /// A Python with confluent-kafka, for the Python workload.
    pub python: Option<PathBuf>,
    /// A bug to plant in the brokers (`strom broker --set
    /// test.plant.bug=NAME`), to show the checker catches it.
    pub plant: Option<String>,
}

/// A fault as injected.
#[derive(Debug, Clone, Serialize)]
pub struct Injected {
    pub fault: Fault,
    pub target: Target,
    /// The nodes it struck.
    pub nodes: Vec<usize>,
    pub start_us: u64,
    pub end_us: u64,
}

/// What a run did and found.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub seed: u64,
    pub injected: Vec<Injected>,
    pub seconds: f64,
    /// Whether every final read got to the end of its partitions.
    pub drained: bool,
    pub report: Report,
}

/// The Python workload, stopped (SIGTERM, then waited for) on drop.
#[derive(Debug)]
struct PythonWorkload(Child);

impl PythonWorkload {
    fn stop(&mut self) {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.0.id()).unwrap_or(0));
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for PythonWorkload {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The Python workload's script, beside this crate's sources.
fn python_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/workload.py")
}

/// Runs one seeded run; see the module docs.
pub async fn run(config: &RunConfig) -> Result<Summary> {
    let began = Instant::now();
    fs::create_dir_all(&config.out)
        .with_context(|| format!("creating {}", config.out.display()))?;
    let out = fs::canonicalize(&config.out)?;
    let mut rng = StdRng::seed_from_u64(config.seed);
    let steps = nemesis::schedule(&mut rng, &config.faults, config.count, config.each_once);
    fs::write(
        out.join("schedule.json"),
        serde_json::to_string_pretty(&steps)?,
    )?;

    let mut net = Network::create(config.nodes)?;
    let data = out.join("data");
    let _ = fs::remove_dir_all(&data);
    let node_dirs: Vec<PathBuf> = (1..=config.nodes)
        .map(|n| data.join(format!("n{n}")))
        .collect();
    // A tmpfs on each node's data directory, unmounted on drop.
    let _mounts = if config.faults.contains(&Fault::DiskFull) {
        let size = format!("size={DISK_MB}m");
        let mounts: Result<Vec<Tmpfs>, String> = node_dirs
            .iter()
            .map(|d| Tmpfs::mount_on(d, &size))
            .collect();
        Some(mounts.map_err(anyhow::Error::msg)?)
    } else {
        fs::create_dir_all(&data)?;
        None
    };
    let mut builder = LocalCluster::builder(&config.strom)
        .nodes(config.nodes)
        .network_namespaces(net.hosts())
        .data_dir_root(&data)
        .ready_timeout(READY_TIMEOUT)
        .set("broker.session.timeout.ms", SESSION_TIMEOUT_MS.to_string())
        .set("broker.heartbeat.interval.ms", "500")
        .set("controller.quorum.election.timeout.ms", "1000")
        .set("replica.lag.time.max.ms", "10000");
    if let Some(bug) = &config.plant {
        builder = builder.set("test.plant.bug", bug.clone());
    }
    // Each node's wall clock under a file of its own, at offset 0 until a
    // clock-skew fault writes another.
    let clock_files: Vec<PathBuf> = if config.faults.contains(&Fault::ClockSkew) {
        let library = nemesis::faketime_library()?;
        let files: Vec<PathBuf> = (1..=config.nodes)
            .map(|n| data.join(format!("n{n}.faketime")))
            .collect();
        for (n, file) in (1..).zip(&files) {
            nemesis::set_clock_offset(file, 0)?;
            for (key, value) in nemesis::faketime_env(&library, file) {
                builder = builder.node_env(n, key, value);
            }
        }
        files
    } else {
        Vec::new()
    };
    let mut cluster = builder.start().await.context("starting the cluster")?;
    let bootstrap = cluster.bootstrap();

    let replication = i16::try_from(config.nodes.min(3)).unwrap_or(3);
    let admin = Admin::new(
        &[("bootstrap.servers", bootstrap.as_str())]
            .into_iter()
            .collect(),
    )?;
    let topics: Vec<NewTopic> = [workload::TOPIC, workload::TXN_TOPIC, workload::PY_TOPIC]
        .iter()
        .map(|t| {
            NewTopic::new(*t, workload::PARTITIONS, replication).config("min.insync.replicas", "2")
        })
        .collect();
    for (topic, result) in admin.create_topics(&topics, false).await {
        result.with_context(|| format!("creating topic {topic}"))?;
    }

    let base_us = wall_us();
    let recorder = Arc::new(Recorder::create(&out.join("history-rust.jsonl"), base_us)?);
    let clients = Clients::start(&bootstrap, &recorder, config.seed, 2, 2);
    let py_history = out.join("history-python.jsonl");
    let mut python = match &config.python {
        Some(python) => Some(PythonWorkload(
            Command::new(python)
                .arg(python_script())
                .args(["--bootstrap", &bootstrap])
                .args(["--history", &py_history.to_string_lossy()])
                .args(["--base-us", &base_us.to_string()])
                .args(["--first-value", &workload::PY_VALUES.to_string()])
                .args(["--process", &workload::PY_PROCESSES.to_string()])
                .args(["--topic", workload::PY_TOPIC])
                .args(["--partitions", &workload::PARTITIONS.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(out.join("python.stderr.log"))?)
                .spawn()
                .context("starting the Python workload")?,
        )),
        None => None,
    };

    tokio::time::sleep(WARMUP).await;
    let mut injected = Vec::new();
    let mut failure = None;
    for step in &steps {
        match inject(
            step,
            &mut cluster,
            &mut net,
            &admin,
            &bootstrap,
            &NodeFiles {
                data: &node_dirs,
                clocks: &clock_files,
            },
            &recorder,
            &mut rng,
        )
        .await
        {
            Ok(i) => {
                tracing::info!(fault = %i.fault, nodes = ?i.nodes, "injected");
                injected.push(i);
            }
            Err(e) => {
                failure = Some(e.context(format!("injecting {}", step.fault)));
                break;
            }
        }
        tokio::time::sleep(step.quiet).await;
    }
    // Heal everything, whatever happened: links, paused nodes, full disks,
    // nodes that are down.
    net.heal()?;
    for file in &clock_files {
        nemesis::set_clock_offset(file, 0)?;
    }
    for n in cluster.node_ids() {
        if let Some(dir) = usize::try_from(n).ok().and_then(|i| node_dirs.get(i - 1)) {
            nemesis::unfill(dir)?;
        }
        if cluster.exited(n) {
            cluster.restart(n).await?;
        } else {
            let _ = cluster.resume(n);
        }
    }
    tokio::time::sleep(SETTLE).await;
    tokio::task::spawn_blocking(move || clients.stop()).await?;
    if let Some(p) = python.as_mut() {
        p.stop();
    }
    let drained = {
        let (b, r) = (bootstrap.clone(), Arc::clone(&recorder));
        tokio::task::spawn_blocking(move || -> Result<bool> {
            let mut all = true;
            for (topic, isolation) in [
                (workload::TOPIC, Isolation::ReadUncommitted),
                (workload::TXN_TOPIC, Isolation::ReadCommitted),
                (workload::PY_TOPIC, Isolation::ReadUncommitted),
            ] {
                all &= workload::drain(&b, &r, topic, isolation, DRAIN_TIMEOUT)?;
            }
            Ok(all)
        })
        .await??
    };
    recorder.flush()?;
    let _ = cluster.stop_all().await;
    drop(cluster);
    drop(net);
    if let Some(e) = failure {
        return Err(e);
    }

    let ops = merge(&out.join("history-rust.jsonl"), &py_history)?;
    let mut text = String::new();
    for op in &ops {
        text.push_str(&serde_json::to_string(op)?);
        text.push('\n');
    }
    fs::write(out.join("history.jsonl"), text)?;
    let mut report = checker::check(&ops);
    let logs = crate::replicas::Logs::read(
        &node_dirs,
        &[workload::TOPIC, workload::TXN_TOPIC, workload::PY_TOPIC],
    )?;
    for anomaly in &mut report.anomalies {
        if anomaly.kind == checker::Kind::Duplicate && logs.is_epoch_bump_resend(&anomaly.places) {
            anomaly.kind = checker::Kind::EpochBumpDuplicate;
            anomaly.message.push_str(
                " (sent again by the producer under a higher epoch: librdkafka's epoch bump, librdkafka issue #4953)",
            );
        }
    }
    report.anomalies.extend(logs.divergences());
    let summary = Summary {
        seed: config.seed,
        injected,
        seconds: began.elapsed().as_secs_f64(),
        drained,
        report,
    };
    fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    Ok(summary)
}

/// The Rust and Python histories as one, in the order operations ended
/// (each client's operations stay in their order), numbered again.
fn merge(rust: &Path, python: &Path) -> Result<Vec<history::Op>> {
    let mut ops = history::parse(&fs::read_to_string(rust)?).map_err(anyhow::Error::msg)?;
    ops.sort_by_key(|op| op.index);
    if let Ok(text) = fs::read_to_string(python) {
        ops.extend(history::parse(&text).map_err(anyhow::Error::msg)?);
    }
    ops.sort_by_key(|op| op.end_us);
    for (i, op) in ops.iter_mut().enumerate() {
        op.index = u64::try_from(i)?;
    }
    Ok(ops)
}

/// The node a step's target names now (a random one when it cannot be
/// found out).
async fn target_node(
    target: Target,
    admin: &Admin,
    bootstrap: &str,
    nodes: usize,
    rng: &mut StdRng,
) -> usize {
    let random = rng.random_range(1..=nodes);
    let partition = rng.random_range(0..workload::PARTITIONS);
    let found = match target {
        Target::Controller => admin
            .describe_quorum()
            .await
            .ok()
            .and_then(|q| usize::try_from(q.leader_id).ok()),
        Target::PartitionLeader => {
            let bootstrap = bootstrap.to_owned();
            tokio::task::spawn_blocking(move || {
                let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", &bootstrap)
                    .create()
                    .ok()?;
                let metadata = consumer
                    .fetch_metadata(Some(workload::TOPIC), Duration::from_secs(5))
                    .ok()?;
                let topic = metadata.topics().first()?;
                let p = topic.partitions().iter().find(|p| p.id() == partition)?;
                usize::try_from(p.leader()).ok()
            })
            .await
            .ok()
            .flatten()
        }
        Target::Random => None,
    };
    found.filter(|n| (1..=nodes).contains(n)).unwrap_or(random)
}

/// Each node's files a fault may touch, by node (node `n` at `n - 1`).
struct NodeFiles<'a> {
    /// Data directories.
    data: &'a [PathBuf],
    /// Wall-clock offset files (empty without clock-skew faults).
    clocks: &'a [PathBuf],
}

/// Injects one step's fault, holds it, and undoes it.
#[allow(clippy::too_many_arguments)]
async fn inject(
    step: &Step,
    cluster: &mut LocalCluster,
    net: &mut Network,
    admin: &Admin,
    bootstrap: &str,
    files: &NodeFiles<'_>,
    recorder: &Recorder,
    rng: &mut StdRng,
) -> Result<Injected> {
    let node_dirs = files.data;
    let nodes = node_dirs.len();
    let node = target_node(step.target, admin, bootstrap, nodes, rng).await;
    let id = i32::try_from(node)?;
    let start_us = recorder.now();
    let mut struck = vec![node];
    match step.fault {
        Fault::Kill => {
            cluster.kill(id).await?;
            tokio::time::sleep(step.hold).await;
            cluster.restart(id).await?;
        }
        Fault::LoseUnflushed => {
            cluster.kill(id).await?;
            let cut = nemesis::lose_unflushed(&node_dirs[node - 1])?;
            tracing::info!(node, cut, "cut unflushed bytes");
            tokio::time::sleep(step.hold).await;
            cluster.restart(id).await?;
        }
        Fault::Pause => {
            cluster.pause(id)?;
            let hold = step
                .hold
                .max(Duration::from_millis(SESSION_TIMEOUT_MS + 2_000));
            tokio::time::sleep(hold).await;
            cluster.resume(id)?;
        }
        Fault::Isolate => {
            net.split(&[node])?;
            tokio::time::sleep(step.hold).await;
            net.heal()?;
        }
        Fault::Split => {
            let others: Vec<usize> = (1..=nodes).filter(|n| *n != node).collect();
            let minority = (nodes - 1) / 2;
            struck.extend(others.choose_multiple(rng, minority.saturating_sub(1)));
            net.split(&struck)?;
            tokio::time::sleep(step.hold).await;
            net.heal()?;
        }
        Fault::CutLink => {
            let others: Vec<usize> = (1..=nodes).filter(|n| *n != node).collect();
            if let Some(other) = others.choose(rng) {
                struck.push(*other);
                net.cut(node, *other)?;
            }
            tokio::time::sleep(step.hold).await;
            net.heal()?;
        }
        Fault::DiskFull => {
            let dir = &node_dirs[node - 1];
            let filled = nemesis::fill(dir)?;
            tracing::info!(node, filled, "filled the data directory");
            // Long enough for a node whose append failed to stop (the
            // broker bounds that stop by the session plus 5 s), so that it
            // is restarted below and not only at the end of the run.
            let hold = step
                .hold
                .max(Duration::from_millis(SESSION_TIMEOUT_MS + 6_000));
            tokio::time::sleep(hold).await;
            nemesis::unfill(dir)?;
        }
        Fault::ClockSkew => {
            let file = files
                .clocks
                .get(node - 1)
                .context("clock-skew without a clock file")?;
            let minutes: i64 = rng.random_range(1..=10);
            let seconds = if rng.random_bool(0.5) { 60 } else { -60 } * minutes;
            nemesis::set_clock_offset(file, seconds)?;
            tracing::info!(node, seconds, "stepped the wall clock");
            tokio::time::sleep(step.hold).await;
            nemesis::set_clock_offset(file, 0)?;
        }
    }
    // A node that died of its fault (a full disk, say) starts again.
    if cluster.exited(id) {
        cluster.restart(id).await?;
    }
    Ok(Injected {
        fault: step.fault,
        target: step.target,
        nodes: struck,
        start_us,
        end_us: recorder.now(),
    })
}

/// Prints a run's verdict: the faults, the counts, and each anomaly.
pub fn print_summary(summary: &Summary, replay: &str) -> String {
    let mut s = String::new();
    let r = &summary.report;
    let faults: BTreeMap<&str, usize> =
        summary.injected.iter().fold(BTreeMap::new(), |mut m, i| {
            *m.entry(i.fault.name()).or_default() += 1;
            m
        });
    s.push_str(&format!(
        "seed {}: {:.0} s, faults {faults:?}, {} operations, {} values acknowledged, {} read{}\n",
        summary.seed,
        summary.seconds,
        r.ops,
        r.acknowledged,
        r.read,
        if summary.drained {
            ""
        } else {
            " (the final reads did not reach the end)"
        }
    ));
    for a in &r.anomalies {
        s.push_str(&format!(
            "  {}: {} (ops {:?})\n",
            a.kind.name(),
            a.message,
            a.ops
        ));
    }
    if !r.is_clean() {
        s.push_str(&format!("  replay: {replay}\n"));
    }
    s
}
