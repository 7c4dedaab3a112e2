//! `strom cluster describe`: the cluster id, the controller, the controller
//! quorum (as `kafka-metadata-quorum.sh describe --status --replication`)
//! and the brokers.
//! `strom cluster local`: a local cluster of N nodes in one terminal, as
//! child processes of this binary (strom-testkit), until Ctrl-C.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;
use strom_client::admin::{ClusterDescription, QuorumInfo, QuorumReplica};
use strom_testkit::LocalCluster;

use crate::tool::{Common, Output, print_json, print_table, runtime};

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// The cluster id, the controller, the controller quorum (leader, epoch,
    /// high watermark, each voter's and observer's log end offset and lag)
    /// and every broker.
    Describe,
    /// Start a local cluster of N nodes (each a broker and a controller) as
    /// child processes on loopback; Ctrl-C or SIGTERM stops them all.
    Local(LocalArgs),
}

#[derive(Debug, Args)]
pub(crate) struct LocalArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Node i (from 0) listens on PORT + 100·i for clients and on
    /// PORT + 100·i + 1 for the controllers (9092, 9192, ... for 9092);
    /// by default free ports.
    #[arg(long, value_name = "PORT")]
    base_port: Option<u16>,
    /// Where the nodes keep their data (DIR/n1, ...) and logs
    /// (DIR/n1.stderr.log, ...); kept afterwards. By default a temporary
    /// directory, removed when the cluster stops.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// A broker property for every node; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

/// Runs `strom cluster local`: starts the nodes, prints each node's ready
/// line and then `bootstrap: HOST:PORT,...`, and stops every node (SIGTERM,
/// waiting for each) at Ctrl-C or SIGTERM, also when one arrives during the
/// start.
#[allow(clippy::print_stdout, reason = "the tool's output")]
pub(crate) fn run_local(args: LocalArgs) -> anyhow::Result<()> {
    let binary = std::env::current_exe().context("finding the strom executable")?;
    let mut builder = LocalCluster::builder(binary).nodes(args.nodes);
    for kv in &args.set {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--set {kv:?} is not KEY=VALUE"))?;
        builder = builder.set(k.trim(), v.trim());
    }
    if let Some(port) = args.base_port {
        builder = builder.ports(port);
    }
    if let Some(dir) = &args.data_dir {
        builder = builder.data_dir_root(dir);
    }
    let rt = runtime()?;
    rt.block_on(async move {
        let stop = crate::broker::stop_signal();
        tokio::pin!(stop);
        let mut cluster = tokio::select! {
            cluster = builder.start() => cluster.context("starting the local cluster")?,
            () = &mut stop => {
                // The start is dropped: its nodes are killed and reaped.
                return Ok(());
            }
        };
        let mut stdout = std::io::stdout();
        for id in cluster.node_ids() {
            if let Some(line) = cluster.ready_line(id) {
                writeln!(stdout, "{line}")?;
            }
        }
        writeln!(stdout, "bootstrap: {}", cluster.bootstrap())?;
        stdout.flush()?;
        if let Some(first) = cluster.node_ids().first() {
            let logs = cluster
                .stderr_log(*first)
                .parent()
                .map_or_else(String::new, |d| d.display().to_string());
            eprintln!("node logs in {logs}/n<id>.stderr.log; Ctrl-C stops the cluster");
        }
        stop.await;
        eprintln!("stopping {} nodes", cluster.node_ids().len());
        cluster.stop_all().await.context("stopping the nodes")?;
        Ok(())
    })
}

/// What `strom cluster describe` shows: DescribeCluster's answer and the
/// quorum's (`None` from a broker without DescribeQuorum).
struct Described {
    cluster: ClusterDescription,
    quorum: Option<QuorumInfo>,
    /// The client's wall clock when the answers came, for "ms ago".
    now_ms: i64,
}

/// Runs `strom cluster describe`: DescribeCluster and DescribeQuorum at
/// once. Brokers are DescribeCluster's (the live ones, unfenced); the
/// voters and observers the quorum names that it does not list are shown
/// as `not live` (fenced, stopped, or not a broker): DescribeCluster does
/// not say which.
#[allow(clippy::print_stdout, reason = "the tool's output")]
pub(crate) fn run(command: ClusterCommand, common: &Common) -> anyhow::Result<()> {
    if let ClusterCommand::Local(args) = command {
        return run_local(args);
    }
    let rt = runtime()?;
    let described = rt.block_on(async {
        let admin = common.admin()?;
        let (cluster, quorum) = tokio::join!(admin.describe_cluster(), admin.describe_quorum());
        let quorum = match quorum {
            Ok(q) => Some(q),
            // A broker without DescribeQuorum (not KRaft, or older).
            Err(strom_client::Error::Unsupported(_)) => None,
            Err(e) => return Err(anyhow::Error::from(e).context("describing the quorum")),
        };
        Ok::<_, anyhow::Error>(Described {
            cluster: cluster.context("describing the cluster")?,
            quorum,
            now_ms: now_ms(),
        })
    })?;
    match common.output {
        Output::Json => print_json(&described_json(&described)),
        Output::Table => print_described(&described),
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A voter's or observer's role, as `kafka-metadata-quorum.sh describe
/// --replication` names it.
fn role(quorum: &QuorumInfo, replica: &QuorumReplica, voter: bool) -> &'static str {
    match (voter, replica.replica_id == quorum.leader_id) {
        (true, true) => "Leader",
        (true, false) => "Follower",
        (false, _) => "Observer",
    }
}

/// The leader's log end offset, from which lag is counted (Kafka's
/// `--replication` does the same); the high watermark if the leader's own
/// entry is missing.
fn leader_log_end_offset(quorum: &QuorumInfo) -> i64 {
    quorum
        .leader()
        .and_then(|l| l.log_end_offset)
        .unwrap_or(quorum.high_watermark)
}

/// Every voter (leader first) and observer, with its role.
fn replicas(quorum: &QuorumInfo) -> Vec<(&QuorumReplica, &'static str)> {
    let mut voters: Vec<&QuorumReplica> = quorum.voters.iter().collect();
    voters.sort_by_key(|v| (v.replica_id != quorum.leader_id, v.replica_id));
    voters
        .into_iter()
        .map(|v| (v, role(quorum, v, true)))
        .chain(quorum.observers.iter().map(|o| (o, role(quorum, o, false))))
        .collect()
}

/// The largest lag of a follower (Kafka's `MaxFollowerLag`); 0 with no
/// follower, `None` when a follower's log end offset is not known.
fn max_follower_lag(quorum: &QuorumInfo) -> Option<i64> {
    let leo = leader_log_end_offset(quorum);
    quorum
        .voters
        .iter()
        .filter(|v| v.replica_id != quorum.leader_id)
        .map(|v| v.lag(leo))
        .try_fold(0, |max, lag| lag.map(|l| max.max(l)))
}

/// Node ids the quorum names that DescribeCluster does not list.
fn not_live(described: &Described) -> Vec<i32> {
    let Some(quorum) = &described.quorum else {
        return Vec::new();
    };
    let mut ids: Vec<i32> = quorum
        .voters
        .iter()
        .chain(&quorum.observers)
        .map(|r| r.replica_id)
        .filter(|id| !described.cluster.brokers.iter().any(|b| b.id == *id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn ago(now_ms: i64, timestamp: Option<i64>) -> String {
    timestamp.map_or_else(
        || "-".to_owned(),
        |t| format!("{} ms ago", now_ms.saturating_sub(t).max(0)),
    )
}

fn option_text<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[allow(clippy::print_stdout, reason = "the tool's output")]
fn print_described(described: &Described) {
    let cluster = &described.cluster;
    println!(
        "cluster {} (controller {})",
        cluster.cluster_id.as_deref().unwrap_or("-"),
        option_text(cluster.controller)
    );
    match &described.quorum {
        None => println!("quorum: not described (the broker has no DescribeQuorum)"),
        Some(quorum) => {
            let ids = |replicas: &[QuorumReplica]| {
                replicas
                    .iter()
                    .map(|r| r.replica_id.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            println!(
                "quorum: leader {} epoch {} high watermark {} max follower lag {} voters [{}] observers [{}]",
                quorum.leader_id,
                quorum.leader_epoch,
                quorum.high_watermark,
                option_text(max_follower_lag(quorum)),
                ids(&quorum.voters),
                ids(&quorum.observers),
            );
            let leo = leader_log_end_offset(quorum);
            print_table(
                &[
                    "NODE",
                    "ROLE",
                    "LOG-END-OFFSET",
                    "LAG",
                    "LAST-FETCH",
                    "LAST-CAUGHT-UP",
                ],
                &replicas(quorum)
                    .into_iter()
                    .map(|(r, role)| {
                        vec![
                            r.replica_id.to_string(),
                            role.to_owned(),
                            option_text(r.log_end_offset),
                            option_text(r.lag(leo)),
                            ago(described.now_ms, r.last_fetch_timestamp),
                            ago(described.now_ms, r.last_caught_up_timestamp),
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
        }
    }
    let mut rows: Vec<(i32, Vec<String>)> = cluster
        .brokers
        .iter()
        .map(|b| {
            (
                b.id,
                vec![
                    b.id.to_string(),
                    format!("{}:{}", b.host, b.port),
                    b.rack.clone().unwrap_or_else(|| "-".to_owned()),
                    "live".to_owned(),
                ],
            )
        })
        .collect();
    rows.extend(not_live(described).into_iter().map(|id| {
        (
            id,
            vec![
                id.to_string(),
                "-".to_owned(),
                "-".to_owned(),
                "not live".to_owned(),
            ],
        )
    }));
    rows.sort_by_key(|(id, _)| *id);
    print_table(
        &["BROKER", "HOST:PORT", "RACK", "STATE"],
        &rows.into_iter().map(|(_, row)| row).collect::<Vec<_>>(),
    );
}

fn described_json(described: &Described) -> serde_json::Value {
    let cluster = &described.cluster;
    let replica = |r: &QuorumReplica, role: &str, leo: i64| {
        json!({
            "id": r.replica_id, "role": role, "log_end_offset": r.log_end_offset,
            "lag": r.lag(leo), "last_fetch_timestamp": r.last_fetch_timestamp,
            "last_caught_up_timestamp": r.last_caught_up_timestamp,
        })
    };
    let quorum = described.quorum.as_ref().map(|q| {
        let leo = leader_log_end_offset(q);
        json!({
            "leader": q.leader_id,
            "epoch": q.leader_epoch,
            "high_watermark": q.high_watermark,
            "max_follower_lag": max_follower_lag(q),
            "voters": q.voters.iter().map(|v| replica(v, role(q, v, true), leo)).collect::<Vec<_>>(),
            "observers": q.observers.iter().map(|o| replica(o, role(q, o, false), leo)).collect::<Vec<_>>(),
            "nodes": q.nodes.iter().map(|n| json!({
                "id": n.node_id,
                "listeners": n.listeners.iter().map(|(name, host, port)| json!({
                    "name": name, "host": host, "port": port,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    });
    let mut brokers: Vec<(i32, serde_json::Value)> = cluster
        .brokers
        .iter()
        .map(|b| {
            (
                b.id,
                json!({
                    "id": b.id, "host": b.host, "port": b.port, "rack": b.rack, "state": "live",
                }),
            )
        })
        .collect();
    brokers.extend(not_live(described).into_iter().map(|id| {
        (
            id,
            json!({"id": id, "host": null, "port": null, "rack": null, "state": "not live"}),
        )
    }));
    brokers.sort_by_key(|(id, _)| *id);
    json!({
        "cluster_id": cluster.cluster_id,
        "controller": cluster.controller,
        "quorum": quorum,
        "brokers": brokers.into_iter().map(|(_, b)| b).collect::<Vec<_>>(),
    })
}
