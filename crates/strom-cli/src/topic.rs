//! `strom topic create|list|describe|delete|alter-config|add-partitions`, as
//! Kafka's kafka-topics.sh and kafka-configs.sh for topics.

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;
use strom_client::admin::{ConfigResource, NewTopic};

use crate::config_cmd;
use crate::tool::{Common, Output, key_value, print_json, print_table, runtime};

#[derive(Debug, Subcommand)]
pub(crate) enum TopicCommand {
    /// Create a topic.
    Create {
        topic: String,
        /// Partitions (the broker's num.partitions when not given).
        #[arg(long)]
        partitions: Option<i32>,
        /// Replicas per partition (the broker's default when not given).
        #[arg(long)]
        replication_factor: Option<i16>,
        /// A topic config, KEY=VALUE; repeatable.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
    },
    /// List topics.
    List {
        /// Include Kafka's internal topics.
        #[arg(long)]
        internal: bool,
    },
    /// Partitions, leaders, replicas and in-sync replicas of topics.
    Describe {
        #[arg(required = true)]
        topics: Vec<String>,
    },
    /// Delete topics.
    Delete {
        #[arg(required = true)]
        topics: Vec<String>,
    },
    /// Set or remove topic configs.
    AlterConfig {
        topic: String,
        /// KEY=VALUE to set; repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// A config to return to its default; repeatable.
        #[arg(long = "delete", value_name = "KEY")]
        delete: Vec<String>,
    },
    /// Grow a topic to a total number of partitions.
    AddPartitions {
        topic: String,
        /// The new total.
        #[arg(long)]
        total: i32,
    },
}

#[allow(clippy::print_stdout, reason = "the tool's output")]
pub(crate) fn run(command: TopicCommand, common: &Common) -> anyhow::Result<()> {
    let rt = runtime()?;
    let admin = rt.block_on(async { common.admin() })?;
    match command {
        TopicCommand::Create {
            topic,
            partitions,
            replication_factor,
            configs,
        } => {
            let mut new = NewTopic::new(
                &topic,
                partitions.unwrap_or(-1),
                replication_factor.unwrap_or(-1),
            );
            for kv in &configs {
                let (k, v) = key_value(kv)?;
                new = new.config(k, v);
            }
            let mut results = rt.block_on(admin.create_topics(&[new], false));
            let created = results
                .remove(&topic)
                .context("no answer")?
                .with_context(|| format!("topic {topic}"))?;
            match common.output {
                Output::Json => print_json(&json!({
                    "topic": topic,
                    "topic_id": created.topic_id.to_string(),
                    "partitions": created.partitions,
                    "replication_factor": created.replication_factor,
                })),
                Output::Table => println!(
                    "created topic {topic} with {} partitions",
                    created.partitions
                ),
            }
        }
        TopicCommand::List { internal } => {
            let mut topics = rt.block_on(admin.list_topics(internal))?;
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            match common.output {
                Output::Json => print_json(&json!(
                    topics.iter().map(|t| json!({"topic": t.name, "topic_id": t.topic_id.to_string(), "internal": t.internal})).collect::<Vec<_>>()
                )),
                Output::Table => {
                    for t in &topics {
                        println!("{}", t.name);
                    }
                }
            }
        }
        TopicCommand::Describe { topics } => {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            let mut described = rt.block_on(admin.describe_topics(&names));
            let mut rows = Vec::new();
            let mut out = Vec::new();
            for name in &topics {
                let info = described
                    .remove(name)
                    .context("no answer")?
                    .with_context(|| format!("topic {name}"))?;
                let list =
                    |ids: &[i32]| ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
                for p in &info.partitions {
                    rows.push(vec![
                        info.name.clone(),
                        p.partition.to_string(),
                        p.leader.to_string(),
                        list(&p.replicas),
                        list(&p.isr),
                    ]);
                }
                out.push(json!({
                    "topic": info.name,
                    "topic_id": info.id.to_string(),
                    "partitions": info.partitions.iter().map(|p| json!({
                        "partition": p.partition, "leader": p.leader,
                        "replicas": p.replicas, "isr": p.isr,
                    })).collect::<Vec<_>>(),
                }));
            }
            match common.output {
                Output::Json => print_json(&json!(out)),
                Output::Table => {
                    print_table(&["TOPIC", "PARTITION", "LEADER", "REPLICAS", "ISR"], &rows)
                }
            }
        }
        TopicCommand::Delete { topics } => {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            let results = rt.block_on(admin.delete_topics(&names));
            for (name, result) in results {
                result.with_context(|| format!("topic {name}"))?;
                if common.output == Output::Table {
                    println!("deleted topic {name}");
                }
            }
        }
        TopicCommand::AlterConfig { topic, set, delete } => config_cmd::alter(
            &rt,
            &admin,
            ConfigResource::topic(&topic),
            &set,
            &delete,
            common.output,
        )?,
        TopicCommand::AddPartitions { topic, total } => {
            let counts = std::collections::BTreeMap::from([(topic.clone(), total)]);
            let mut results = rt.block_on(admin.create_partitions(&counts, false));
            results
                .remove(&topic)
                .context("no answer")?
                .with_context(|| format!("topic {topic}"))?;
            if common.output == Output::Table {
                println!("topic {topic} now has {total} partitions");
            }
        }
    }
    Ok(())
}
