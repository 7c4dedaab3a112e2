//! `strom cluster describe`: the cluster id, the controller and the brokers.

use clap::Subcommand;
use serde_json::json;

use crate::tool::{Common, Output, print_json, print_table, runtime};

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// The cluster id, the controller and every broker.
    Describe,
}

#[allow(clippy::print_stdout, reason = "the tool's output")]
pub(crate) fn run(command: ClusterCommand, common: &Common) -> anyhow::Result<()> {
    let ClusterCommand::Describe = command;
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
