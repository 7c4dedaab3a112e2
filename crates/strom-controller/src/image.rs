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
    /// The offset of its registration: a broker's requests to the
    /// controller name it, and a stale one is refused.
    pub epoch: i64,
    /// Fenced brokers are not offered to clients and lead nothing new.
    pub fenced: bool,
    /// The process that registered (a restart registers anew).
    pub incarnation_id: Option<Uuid>,
}

/// One partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionImage {
    pub partition: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub leader: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    /// The replicas a reassignment in progress adds (KIP-455); `replicas`
    /// lists them, after the target's others. Empty when none is in progress.
    #[serde(default)]
    pub adding_replicas: Vec<i32>,
    /// The replicas a reassignment in progress removes once every adding
    /// replica is in sync; `replicas` lists them, last.
    #[serde(default)]
    pub removing_replicas: Vec<i32>,
    /// Eligible leader replicas (KIP-966): out of the ISR, yet holding
    /// every record up to the high watermark; they may lead when no
    /// in-sync replica can.
    #[serde(default)]
    pub elr: Vec<i32>,
}

impl PartitionImage {
    /// Whether a reassignment is in progress (Kafka's
    /// `isReassignmentInProgress`).
    pub fn is_reassigning(&self) -> bool {
        !self.adding_replicas.is_empty() || !self.removing_replicas.is_empty()
    }
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// The brokers clients may use: registered and not fenced.
    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerInfo> {
        self.brokers.values().filter(|b| !b.fenced)
    }

    /// Whether broker `id` is registered and not fenced.
    pub fn is_live(&self, id: i32) -> bool {
        self.brokers.get(&id).is_some_and(|b| !b.fenced)
    }

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

    /// Partition `partition` of the topic with id `topic_id`.
    pub fn partition_by_id(&self, topic_id: &Uuid, partition: i32) -> Option<&PartitionImage> {
        self.topic_by_id(topic_id)?
            .partitions
            .get(usize::try_from(partition).ok()?)
    }

    /// The apply step: replays one committed batch, whose first record is at
    /// metadata log offset `base_offset`. Deterministic: the same records
    /// on the same image give the same image, at start (replay) as after a
    /// commit.
    pub fn apply_batch(&mut self, base_offset: i64, records: &[MetadataRecord]) {
        for (i, record) in records.iter().enumerate() {
            self.apply(record, base_offset + i as i64);
        }
    }

    /// The records that rebuild this image on an empty one (what a snapshot
    /// stores, as Kafka's KRaft snapshots do): the cluster id, the brokers,
    /// each topic with its partitions in order and its configs, the broker
    /// configs and the producer id block. The offset and the controller id
    /// are not records: the snapshot and the node give them.
    pub fn to_records(&self) -> Vec<MetadataRecord> {
        let mut records = Vec::new();
        if !self.cluster_id.is_empty() {
            records.push(MetadataRecord::ClusterId {
                cluster_id: self.cluster_id.clone(),
            });
        }
        for b in self.brokers.values() {
            records.push(MetadataRecord::RegisterBroker {
                broker_id: b.id,
                host: b.host.clone(),
                port: b.port,
                rack: b.rack.clone(),
                fenced: b.fenced,
                incarnation_id: b.incarnation_id,
                epoch: Some(b.epoch),
            });
        }
        for t in self.topics.values() {
            records.push(MetadataRecord::Topic {
                name: t.name.clone(),
                topic_id: t.id,
            });
            for p in &t.partitions {
                records.push(MetadataRecord::Partition {
                    topic_id: t.id,
                    partition: p.partition,
                    replicas: p.replicas.clone(),
                    isr: p.isr.clone(),
                    leader: p.leader,
                    leader_epoch: p.leader_epoch,
                    partition_epoch: p.partition_epoch,
                    adding_replicas: p.adding_replicas.clone(),
                    removing_replicas: p.removing_replicas.clone(),
                    elr: p.elr.clone(),
                });
            }
            for (name, value) in &t.configs {
                records.push(MetadataRecord::Config {
                    resource: ConfigResource::Topic(t.name.clone()),
                    name: name.clone(),
                    value: Some(value.clone()),
                });
            }
        }
        for (broker, configs) in &self.broker_configs {
            for (name, value) in configs {
                records.push(MetadataRecord::Config {
                    resource: ConfigResource::Broker(*broker),
                    name: name.clone(),
                    value: Some(value.clone()),
                });
            }
        }
        if self.next_producer_id_block != 0 {
            records.push(MetadataRecord::ProducerIds {
                // Which broker took the last block is not part of the image.
                broker_id: -1,
                next_block_start: self.next_producer_id_block,
            });
        }
        records
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
                fenced,
                incarnation_id,
                epoch,
            } => {
                self.brokers.insert(
                    *broker_id,
                    BrokerInfo {
                        id: *broker_id,
                        host: host.clone(),
                        port: *port,
                        rack: rack.clone(),
                        epoch: epoch.unwrap_or(offset),
                        fenced: *fenced,
                        incarnation_id: *incarnation_id,
                    },
                );
            }
            MetadataRecord::FenceBroker { broker_id, epoch }
            | MetadataRecord::UnfenceBroker { broker_id, epoch } => {
                let fenced = matches!(record, MetadataRecord::FenceBroker { .. });
                match self.brokers.get_mut(broker_id) {
                    Some(b) if b.epoch == *epoch => b.fenced = fenced,
                    _ => tracing::warn!(
                        broker_id,
                        epoch,
                        "fencing record for an unknown broker epoch"
                    ),
                }
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
                adding_replicas,
                removing_replicas,
                elr,
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
                    adding_replicas: adding_replicas.clone(),
                    removing_replicas: removing_replicas.clone(),
                    elr: elr.clone(),
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
                // One form for "no overrides" (absent, never an empty map),
                // so an image rebuilt from a snapshot equals the replayed one.
                if let ConfigResource::Broker(id) = resource
                    && self.broker_configs.get(id).is_some_and(BTreeMap::is_empty)
                {
                    self.broker_configs.remove(id);
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn replay(batches: &[(i64, Vec<MetadataRecord>)]) -> MetadataImage {
        let mut image = MetadataImage::default();
        for (base, records) in batches {
            image.apply_batch(*base, records);
        }
        image
    }

    #[test]
    fn committed_records_in_give_the_image_out() {
        let id = Uuid::from_u128(42);
        let batches = vec![
            (
                0,
                vec![MetadataRecord::ClusterId {
                    cluster_id: "c".to_owned(),
                }],
            ),
            (
                1,
                vec![
                    MetadataRecord::Topic {
                        name: "orders".to_owned(),
                        topic_id: id,
                    },
                    MetadataRecord::Partition {
                        topic_id: id,
                        partition: 0,
                        // A reassignment from [1] to [2] in progress.
                        replicas: vec![2, 1],
                        isr: vec![1],
                        leader: 1,
                        leader_epoch: 0,
                        partition_epoch: 0,
                        adding_replicas: vec![2],
                        removing_replicas: vec![1],
                        elr: Vec::new(),
                    },
                ],
            ),
            (
                3,
                vec![
                    MetadataRecord::Config {
                        resource: ConfigResource::Broker(Some(1)),
                        name: "log.retention.ms".to_owned(),
                        value: Some("1".to_owned()),
                    },
                    MetadataRecord::Config {
                        resource: ConfigResource::Broker(Some(1)),
                        name: "log.retention.ms".to_owned(),
                        value: None,
                    },
                ],
            ),
        ];
        let image = replay(&batches);
        assert_eq!(image.offset, 5);
        assert_eq!(image.cluster_id, "c");
        assert_eq!(image.topic_by_id(&id).unwrap().name, "orders");
        let p = image.partition("orders", 0).unwrap();
        assert_eq!(p.leader, 1);
        assert!(p.is_reassigning());
        assert_eq!(
            (&p.adding_replicas[..], &p.removing_replicas[..]),
            (&[2][..], &[1][..])
        );
        // Removing the last override leaves no entry behind.
        assert!(image.broker_configs.is_empty());
        // Deterministic: the same records give the same image.
        assert_eq!(replay(&batches), image);
        // The records of an image rebuild it.
        let mut rebuilt = MetadataImage::default();
        rebuilt.apply_batch(0, &image.to_records());
        rebuilt.offset = image.offset;
        assert_eq!(rebuilt, image);
        let mut removed = image.clone();
        removed.apply_batch(5, &[MetadataRecord::RemoveTopic { topic_id: id }]);
        assert!(removed.topic("orders").is_none() && removed.topic_by_id(&id).is_none());
        assert_eq!(removed.offset, 6);
    }
}
