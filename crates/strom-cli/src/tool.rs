//! What the client subcommands share: where the cluster is, client
//! properties, the output format, and a runtime for strom-client.

use anyhow::Context;
use clap::{Args, ValueEnum};
use strom_client::{Admin, ClientConfig, TopicPartition};

/// How long an admin call keeps retrying when `-X default.api.timeout.ms` is
/// not given: a tool should fail in seconds, not Kafka's minute.
const TOOL_API_TIMEOUT_MS: &str = "15000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts.
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct Common {
    /// A broker to start from (several: comma-separated).
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:9092",
        value_name = "HOST:PORT"
    )]
    pub(crate) bootstrap: String,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value = "table")]
    pub(crate) output: Output,
    /// Any client property with Kafka's name (`-X linger.ms=10`); repeatable.
    #[arg(short = 'X', global = true, value_name = "KEY=VALUE")]
    pub(crate) properties: Vec<String>,
}

impl Common {
    /// The client config: bootstrap, the tool's defaults, then `-X`.
    pub(crate) fn config(&self, defaults: &[(&str, &str)]) -> anyhow::Result<ClientConfig> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        config.set("client.id", "strom-cli");
        for (k, v) in defaults {
            config.set(*k, *v);
        }
        for kv in &self.properties {
            let (k, v) = key_value(kv).context("-X")?;
            config.set(&k, &v);
        }
        Ok(config)
    }

    /// The config of an admin client.
    pub(crate) fn admin(&self) -> anyhow::Result<strom_client::Admin> {
        let config = self.config(&[("default.api.timeout.ms", TOOL_API_TIMEOUT_MS)])?;
        Ok(strom_client::Admin::new(&config)?)
    }
}

/// `KEY=VALUE`, both trimmed.
pub(crate) fn key_value(kv: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = kv
        .split_once('=')
        .with_context(|| format!("{kv:?} is not KEY=VALUE"))?;
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

/// Every partition of `topic`, as the cluster describes it.
pub(crate) async fn partitions_of(
    admin: &Admin,
    topic: &str,
) -> anyhow::Result<Vec<TopicPartition>> {
    let info = admin
        .describe_topics(&[topic])
        .await
        .remove(topic)
        .context("no answer")?
        .with_context(|| format!("topic {topic}"))?;
    Ok(info
        .partitions
        .iter()
        .map(|p| TopicPartition::new(topic, p.partition))
        .collect())
}

/// A runtime for one subcommand.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Prints rows under headers, each column as wide as its widest cell.
#[allow(clippy::print_stdout, reason = "the tool's output")]
pub(crate) fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Prints `value` as one line of JSON.
#[allow(clippy::print_stdout, reason = "the tool's output")]
pub(crate) fn print_json(value: &serde_json::Value) {
    println!("{value}");
}
