//! `strom cluster describe`: the cluster id, the controller and the brokers.
//! `strom cluster local`: a local cluster of N nodes in one terminal, as
//! child processes of this binary (strom-testkit), until Ctrl-C.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;
use strom_testkit::LocalCluster;

use crate::tool::{Common, Output, print_json, print_table, runtime};

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// The cluster id, the controller and every broker.
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

#[allow(clippy::print_stdout, reason = "the tool's output")]
pub(crate) fn run(command: ClusterCommand, common: &Common) -> anyhow::Result<()> {
    if let ClusterCommand::Local(args) = command {
        return run_local(args);
    }
    let rt = runtime()?;
    let cluster = rt.block_on(async {
        common
            .admin()?
            .describe_cluster()
            .await
            .map_err(anyhow::Error::from)
    })?;
    match common.output {
        Output::Json => print_json(&json!({
            "cluster_id": cluster.cluster_id,
            "controller": cluster.controller,
            "brokers": cluster.brokers.iter().map(|b| json!({
                "id": b.id, "host": b.host, "port": b.port, "rack": b.rack,
            })).collect::<Vec<_>>(),
        })),
        Output::Table => {
            println!(
                "cluster {} (controller {})",
                cluster.cluster_id.as_deref().unwrap_or("-"),
                cluster
                    .controller
                    .map_or_else(|| "-".to_owned(), |c| c.to_string())
            );
            print_table(
                &["BROKER", "HOST", "PORT", "RACK"],
                &cluster
                    .brokers
                    .iter()
                    .map(|b| {
                        vec![
                            b.id.to_string(),
                            b.host.clone(),
                            b.port.to_string(),
                            b.rack.clone().unwrap_or_default(),
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
        }
    }
    Ok(())
}
