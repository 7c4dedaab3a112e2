//! The metadata image: the cluster metadata as of one offset of the metadata
//! log. Immutable; a change produces a new image that shares what it did not
//! change.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::records::MetadataRecord;

/// What a config belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigResource {
    Topic(String),
    /// A broker id; `None` is the cluster-wide default (Kafka's `""` broker).
    Broker(Option<i32>),
}

/// A broker and its client endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    pub id: i32,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
}

/// One partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionImage {
    pub partition: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub leader: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
}

/// A topic, its partitions and its config overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicImage {
    pub name: String,
    pub id: Uuid,
    /// Indexed by partition number.
    pub partitions: Vec<PartitionImage>,
    /// Topic-level config overrides (Kafka's DYNAMIC_TOPIC_CONFIG).
    pub configs: BTreeMap<String, String>,
}

impl TopicImage {
    /// Kafka's internal topics (`__consumer_offsets`, `__transaction_state`).
    pub fn is_internal(&self) -> bool {
        strom_protocol::topic::is_internal_topic(&self.name)
    }
}

/// The cluster metadata at `offset` of the metadata log.
#[derive(Debug, Clone, Default)]
pub struct MetadataImage {
    /// Offset after the last applied metadata record.
    pub offset: i64,
    pub cluster_id: String,
    pub controller_id: i32,
    pub brokers: BTreeMap<i32, BrokerInfo>,
    topics: BTreeMap<String, Arc<TopicImage>>,
    topic_names_by_id: HashMap<Uuid, String>,
    /// Broker-level config overrides, by broker (`None`: cluster default).
    pub broker_configs: BTreeMap<Option<i32>, BTreeMap<String, String>>,
    /// The next producer id block starts here.
    pub next_producer_id_block: i64,
}

impl MetadataImage {
    pub fn topic(&self, name: &str) -> Option<&Arc<TopicImage>> {
        self.topics.get(name)
    }

    pub fn topic_by_id(&self, id: &Uuid) -> Option<&Arc<TopicImage>> {
        self.topic_names_by_id
            .get(id)
            .and_then(|n| self.topics.get(n))
    }

    /// All topics, by name.
    pub fn topics(&self) -> impl Iterator<Item = &Arc<TopicImage>> {
        self.topics.values()
    }

    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionImage> {
        self.topic(topic)?
            .partitions
            .get(usize::try_from(partition).ok()?)
    }

    /// Applies one record, as of metadata log offset `offset`. Records that
    /// name something missing are ignored with a log line: the log is written
    /// only by the controller, which checks them first.
    pub fn apply(&mut self, record: &MetadataRecord, offset: i64) {
        self.offset = offset + 1;
        match record {
            MetadataRecord::ClusterId { cluster_id } => self.cluster_id.clone_from(cluster_id),
            MetadataRecord::RegisterBroker {
                broker_id,
                host,
                port,
                rack,
            } => {
                self.brokers.insert(
                    *broker_id,
                    BrokerInfo {
                        id: *broker_id,
                        host: host.clone(),
                        port: *port,
                        rack: rack.clone(),
                    },
                );
            }
            MetadataRecord::Topic { name, topic_id } => {
                self.topic_names_by_id.insert(*topic_id, name.clone());
                self.topics.insert(
                    name.clone(),
                    Arc::new(TopicImage {
                        name: name.clone(),
                        id: *topic_id,
                        partitions: Vec::new(),
                        configs: BTreeMap::new(),
                    }),
                );
            }
            MetadataRecord::Partition {
                topic_id,
                partition,
                replicas,
                isr,
                leader,
                leader_epoch,
                partition_epoch,
            } => {
                let Some(topic) = self.topic_mut_by_id(topic_id) else {
                    tracing::warn!(%topic_id, "metadata record for an unknown topic");
                    return;
                };
                let image = PartitionImage {
                    partition: *partition,
                    replicas: replicas.clone(),
                    isr: isr.clone(),
                    leader: *leader,
                    leader_epoch: *leader_epoch,
                    partition_epoch: *partition_epoch,
                };
                match usize::try_from(*partition) {
                    Ok(i) if i < topic.partitions.len() => topic.partitions[i] = image,
                    Ok(i) if i == topic.partitions.len() => topic.partitions.push(image),
                    _ => {
                        tracing::warn!(%topic_id, partition, "metadata record for a partition out of order")
                    }
                }
            }
            MetadataRecord::Config {
                resource,
                name,
                value,
            } => {
                let configs = match resource {
                    ConfigResource::Topic(topic) => match self.topics.get_mut(topic) {
                        Some(t) => &mut Arc::make_mut(t).configs,
                        None => return,
                    },
                    ConfigResource::Broker(id) => self.broker_configs.entry(*id).or_default(),
                };
                match value {
                    Some(v) => configs.insert(name.clone(), v.clone()),
                    None => configs.remove(name),
                };
            }
            MetadataRecord::RemoveTopic { topic_id } => {
                if let Some(name) = self.topic_names_by_id.remove(topic_id) {
                    self.topics.remove(&name);
                }
            }
            MetadataRecord::ProducerIds {
                next_block_start, ..
            } => {
                self.next_producer_id_block = self.next_producer_id_block.max(*next_block_start);
            }
        }
    }

    fn topic_mut_by_id(&mut self, id: &Uuid) -> Option<&mut TopicImage> {
        let name = self.topic_names_by_id.get(id)?;
        self.topics.get_mut(name).map(Arc::make_mut)
    }
}
