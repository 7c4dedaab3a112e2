//! `strom topic create|list|describe|delete|alter-config|add-partitions`, as
//! Kafka's kafka-topics.sh and kafka-configs.sh for topics.

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;
use strom_client::admin::{ConfigResource, NewTopic};
use strom_client::{Admin, PartitionInfo, TopicInfo};

use crate::config_cmd;
use crate::tool::{Common, Output, key_value, print_json, runtime};

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
    /// Partitions, leaders, leader epochs, replicas and in-sync replicas of
    /// topics (every topic when none is named), as kafka-topics --describe.
    Describe {
        topics: Vec<String>,
        /// Only partitions whose in-sync replicas are fewer than their
        /// replicas.
        #[arg(long)]
        under_replicated_partitions: bool,
        /// Only partitions without a live leader.
        #[arg(long)]
        unavailable_partitions: bool,
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
        TopicCommand::Describe {
            topics,
            under_replicated_partitions,
            unavailable_partitions,
        } => {
            let filter = Filter {
                under_replicated: under_replicated_partitions,
                unavailable: unavailable_partitions,
            };
            let described = rt.block_on(describe(&admin, topics))?;
            match common.output {
                Output::Json => print_json(&described_json(&described, filter)),
                Output::Table => {
                    for line in described_lines(&described, filter) {
                        println!("{line}");
                    }
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

/// Which partitions `topic describe` shows: all, or (either flag, as
/// kafka-topics) those under-replicated or unavailable.
#[derive(Debug, Clone, Copy, Default)]
struct Filter {
    under_replicated: bool,
    unavailable: bool,
}

impl Filter {
    fn any(self) -> bool {
        self.under_replicated || self.unavailable
    }

    fn shows(self, state: PartitionState) -> bool {
        !self.any()
            || (self.under_replicated && state.under_replicated)
            || (self.unavailable && state.offline)
    }
}

/// A partition's health, as kafka-topics judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PartitionState {
    /// No leader, or a leader that is not a live broker: nobody can
    /// produce to or fetch from it.
    offline: bool,
    /// Fewer in-sync replicas than replicas.
    under_replicated: bool,
}

fn partition_state(p: &PartitionInfo, live: Option<&[i32]>) -> PartitionState {
    PartitionState {
        offline: p.leader < 0 || live.is_some_and(|live| !live.contains(&p.leader)),
        under_replicated: p.isr.len() < p.replicas.len(),
    }
}

/// What `topic describe` read: the topics, and the live brokers (`None`
/// when the cluster could not be described; then only "no leader" counts
/// as offline).
#[derive(Debug)]
struct Described {
    topics: Vec<TopicInfo>,
    live: Option<Vec<i32>>,
}

/// Reads `topics` (every non-internal topic when empty) and the live
/// brokers at once.
async fn describe(admin: &Admin, mut topics: Vec<String>) -> anyhow::Result<Described> {
    if topics.is_empty() {
        topics = admin
            .list_topics(false)
            .await?
            .into_iter()
            .map(|t| t.name)
            .collect();
        topics.sort();
    }
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let (mut described, cluster) =
        tokio::join!(admin.describe_topics(&names), admin.describe_cluster());
    let mut infos = Vec::with_capacity(topics.len());
    for name in &topics {
        let info = described
            .remove(name)
            .context("no answer")?
            .with_context(|| format!("topic {name}"))?;
        infos.push(info);
    }
    Ok(Described {
        topics: infos,
        live: cluster
            .ok()
            .map(|c| c.brokers.iter().map(|b| b.id).collect()),
    })
}

fn id_list(ids: &[i32]) -> String {
    ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}

/// kafka-topics --describe's layout: a line per topic, then a tab-indented
/// line per partition with its flags, then a summary line. With a filter,
/// as kafka-topics, only the partitions it keeps are listed (no topic
/// lines).
fn described_lines(described: &Described, filter: Filter) -> Vec<String> {
    let mut lines = Vec::new();
    let (mut partitions, mut offline, mut under_replicated) = (0usize, 0usize, 0usize);
    for topic in &described.topics {
        if !filter.any() {
            let replication_factor = topic.partitions.first().map_or(0, |p| p.replicas.len());
            lines.push(format!(
                "Topic: {}\tTopicId: {}\tPartitionCount: {}\tReplicationFactor: {}",
                topic.name,
                // Kafka's form: URL-safe base64, 22 characters.
                strom_controller::controller::kafka_uuid_string(&topic.id),
                topic.partitions.len(),
                replication_factor
            ));
        }
        for p in &topic.partitions {
            let state = partition_state(p, described.live.as_deref());
            partitions += 1;
            offline += usize::from(state.offline);
            under_replicated += usize::from(state.under_replicated);
            if !filter.shows(state) {
                continue;
            }
            let leader = if p.leader < 0 {
                "none".to_owned()
            } else {
                p.leader.to_string()
            };
            let mut line = format!(
                "\tTopic: {}\tPartition: {}\tLeader: {leader}\tLeaderEpoch: {}\tReplicas: {}\tIsr: {}",
                topic.name,
                p.partition,
                p.leader_epoch,
                id_list(&p.replicas),
                id_list(&p.isr)
            );
            if state.offline {
                line.push_str("\tOffline");
            }
            if state.under_replicated {
                line.push_str("\tUnder-replicated");
            }
            lines.push(line);
        }
    }
    let topics = described.topics.len();
    lines.push(format!(
        "{topics} topic{}, {partitions} partition{}: {offline} offline, {under_replicated} under-replicated",
        if topics == 1 { "" } else { "s" },
        if partitions == 1 { "" } else { "s" },
    ));
    lines
}

fn described_json(described: &Described, filter: Filter) -> serde_json::Value {
    let (mut partitions, mut offline, mut under_replicated) = (0usize, 0usize, 0usize);
    let topics: Vec<serde_json::Value> = described
        .topics
        .iter()
        .map(|topic| {
            let shown: Vec<serde_json::Value> = topic
                .partitions
                .iter()
                .filter_map(|p| {
                    let state = partition_state(p, described.live.as_deref());
                    partitions += 1;
                    offline += usize::from(state.offline);
                    under_replicated += usize::from(state.under_replicated);
                    filter.shows(state).then(|| {
                        json!({
                            "partition": p.partition,
                            "leader": p.leader,
                            "leader_epoch": p.leader_epoch,
                            "replicas": p.replicas,
                            "isr": p.isr,
                            "offline": state.offline,
                            "under_replicated": state.under_replicated,
                        })
                    })
                })
                .collect();
            json!({
                "topic": topic.name,
                "topic_id": topic.id.to_string(),
                "partitions": shown,
            })
        })
        .collect();
    json!({
        "topics": topics,
        "summary": {
            "topics": described.topics.len(),
            "partitions": partitions,
            "offline": offline,
            "under_replicated": under_replicated,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use strom_protocol::messages::Uuid;

    fn partition(partition: i32, leader: i32, replicas: &[i32], isr: &[i32]) -> PartitionInfo {
        PartitionInfo {
            partition,
            leader,
            leader_epoch: 4,
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
            offline_replicas: Vec::new(),
        }
    }

    fn described() -> Described {
        Described {
            topics: vec![TopicInfo {
                name: "orders".into(),
                id: Uuid::nil(),
                internal: false,
                partitions: vec![
                    partition(0, 1, &[1, 2, 3], &[1, 2, 3]),
                    partition(1, 2, &[2, 3, 1], &[2, 1]),
                    partition(2, -1, &[3], &[3]),
                    // Led by a broker that is gone but not yet fenced.
                    partition(3, 3, &[3], &[3]),
                ],
            }],
            live: Some(vec![1, 2]),
        }
    }

    #[test]
    fn partitions_are_listed_as_kafka_topics_does_with_their_flags_and_a_summary() {
        let lines = described_lines(&described(), Filter::default());
        assert_eq!(
            lines,
            [
                format!(
                    "Topic: orders\tTopicId: {}\tPartitionCount: 4\tReplicationFactor: 3",
                    strom_controller::controller::kafka_uuid_string(&Uuid::nil())
                ),
                "\tTopic: orders\tPartition: 0\tLeader: 1\tLeaderEpoch: 4\tReplicas: 1,2,3\tIsr: 1,2,3".into(),
                "\tTopic: orders\tPartition: 1\tLeader: 2\tLeaderEpoch: 4\tReplicas: 2,3,1\tIsr: 2,1\tUnder-replicated".into(),
                "\tTopic: orders\tPartition: 2\tLeader: none\tLeaderEpoch: 4\tReplicas: 3\tIsr: 3\tOffline".into(),
                "\tTopic: orders\tPartition: 3\tLeader: 3\tLeaderEpoch: 4\tReplicas: 3\tIsr: 3\tOffline".into(),
                "1 topic, 4 partitions: 2 offline, 1 under-replicated".into(),
            ]
        );
    }

    #[test]
    fn filters_keep_only_the_partitions_they_name() {
        let d = described();
        let under = Filter {
            under_replicated: true,
            unavailable: false,
        };
        let lines = described_lines(&d, under);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("Partition: 1\t"), "{lines:?}");
        let unavailable = Filter {
            under_replicated: false,
            unavailable: true,
        };
        let json = described_json(&d, unavailable);
        let shown: Vec<i64> = json["topics"][0]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["partition"].as_i64().unwrap())
            .collect();
        assert_eq!(shown, [2, 3]);
        assert_eq!(json["summary"]["offline"], 2);
        assert_eq!(json["summary"]["under_replicated"], 1);
        // Without the live brokers, only "no leader" is offline.
        let unknown = Described {
            live: None,
            ..described()
        };
        assert_eq!(
            described_json(&unknown, unavailable)["summary"]["offline"],
            1
        );
    }
}
