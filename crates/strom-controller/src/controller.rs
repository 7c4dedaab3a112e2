//! The controller: validates metadata changes by Kafka's rules, makes them
//! durable in the metadata log and publishes the new image.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use strom_protocol::error_code::ErrorCode;
use strom_protocol::topic::illegal_topic_name;
use strom_storage::{AppendOrigin, Clock, PartitionLog};
use tokio::sync::watch;
use uuid::Uuid;

use crate::image::{ConfigResource, MetadataImage};
use crate::records::{MetadataRecord, decode_batch, encode_batch};

pub use strom_protocol::topic::METADATA_TOPIC;
/// Bound on one decoded metadata batch: a controller operation writes one
/// batch, and even 100,000 partition records are far below this.
pub const MAX_METADATA_BATCH_BYTES: usize = 256 << 20;
/// Bound on the partitions of one topic: each is a log with files and memory;
/// far beyond what a topic needs, it stops one request from asking for
/// millions of logs.
pub const MAX_PARTITIONS_PER_TOPIC: i32 = 100_000;
/// Bound on the metadata records of one user operation (a CreateTopics or
/// CreatePartitions request, a config change), Kafka's controller's
/// `MAX_RECORDS_PER_USER_OP`: an operation is one metadata batch, written and
/// replayed whole. Beyond it the request is refused with POLICY_VIOLATION, as
/// Kafka does. A topic of n partitions takes n + 1 records.
pub const MAX_RECORDS_PER_USER_OP: usize = 10_000;
/// Bound on one metadata batch's size on disk, Kafka's KRaft batch limit
/// (8 MiB): the metadata log's `max.message.bytes`. 10,000 partition records
/// take about 2 MiB; only huge config values come near it, and they are
/// refused with POLICY_VIOLATION rather than failing in the log.
pub const METADATA_BATCH_BYTES_MAX: u32 = 8 << 20;
/// The metadata log's settings: the defaults, with room for the largest
/// batch one operation may write.
pub fn metadata_log_config() -> strom_storage::LogConfig {
    strom_storage::LogConfig {
        max_message_bytes: METADATA_BATCH_BYTES_MAX,
        ..strom_storage::LogConfig::default()
    }
}

/// Kafka's answer when one operation needs more records than it may write.
const TOO_LARGE_OPERATION: &str = "Unable to perform excessively large batch operation.";
/// Producer ids handed to a broker at a time, as Kafka's controller does.
pub const PRODUCER_ID_BLOCK_SIZE: i64 = 1000;

/// A refused metadata change: the Kafka error code and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {}", message.as_deref().unwrap_or(""))]
pub struct ControllerError {
    pub code: ErrorCode,
    pub message: Option<String>,
}

impl ControllerError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: Some(message.into()),
        }
    }
}

/// A CreateTopics entry. `num_partitions` and `replication_factor` of -1 mean
/// the broker defaults; `assignments` (partition -> replicas) replaces both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateTopicRequest {
    pub name: String,
    pub num_partitions: i32,
    pub replication_factor: i16,
    pub assignments: Vec<(i32, Vec<i32>)>,
    /// Already validated by the caller (the broker knows the config definitions).
    pub configs: BTreeMap<String, String>,
}

/// What a created (or validated) topic looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedTopic {
    pub topic_id: Uuid,
    pub num_partitions: i32,
    pub replication_factor: i16,
}

/// A CreatePartitions entry: grow `name` to `count` partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatePartitionsRequest {
    pub name: String,
    pub count: i32,
    pub assignments: Option<Vec<Vec<i32>>>,
}

/// A block of producer ids `[start, start + len)` for one broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerIdBlock {
    pub start: i64,
    pub len: i64,
}

/// Defaults the controller applies (broker configs of the same names).
#[derive(Debug, Clone, Copy)]
pub struct ControllerConfig {
    /// `num.partitions`.
    pub num_partitions: i32,
    /// `default.replication.factor`.
    pub default_replication_factor: i16,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            num_partitions: 1,
            default_replication_factor: 1,
        }
    }
}

/// The single controller of this node's cluster.
#[derive(Debug)]
pub struct Controller {
    node_id: i32,
    config: ControllerConfig,
    log: Arc<PartitionLog>,
    clock: Arc<dyn Clock>,
    /// Serialises changes: validate against the latest image, then commit.
    write: Mutex<()>,
    image: watch::Sender<Arc<MetadataImage>>,
}

impl Controller {
    /// Opens the controller on its metadata log: replays every record into the
    /// image, and on a new log writes the cluster id.
    pub fn open(
        node_id: i32,
        config: ControllerConfig,
        log: Arc<PartitionLog>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ControllerError> {
        let mut image = MetadataImage::default();
        image.controller_id = node_id;
        let mut failure = None;
        log.for_each_batch_from(log.log_start_offset(), |_, header, bytes| {
            if failure.is_some() {
                return;
            }
            match decode_batch(&Bytes::copy_from_slice(bytes)) {
                Ok(records) => {
                    for (i, r) in records.iter().enumerate() {
                        image.apply(r, header.base_offset + i as i64);
                    }
                }
                Err(e) => {
                    failure = Some(format!(
                        "metadata batch at offset {}: {e}",
                        header.base_offset
                    ))
                }
            }
        })
        .map_err(|e| ControllerError::new(ErrorCode::KafkaStorageError, e.to_string()))?;
        if let Some(reason) = failure {
            // The log passed CRC checks, so this is a record we cannot read:
            // refuse to start rather than serve a wrong image.
            return Err(ControllerError::new(ErrorCode::UnknownServerError, reason));
        }
        let (image_tx, _) = watch::channel(Arc::new(image));
        let controller = Self {
            node_id,
            config,
            log,
            clock,
            write: Mutex::new(()),
            image: image_tx,
        };
        if controller.image().cluster_id.is_empty() {
            let _guard = controller.write.lock();
            let cluster_id = kafka_uuid_string(&random_kafka_uuid());
            controller.commit(vec![MetadataRecord::ClusterId { cluster_id }])?;
        }
        Ok(controller)
    }

    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    /// The current image.
    pub fn image(&self) -> Arc<MetadataImage> {
        Arc::clone(&self.image.borrow())
    }

    /// Receives every new image.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.image.subscribe()
    }

    /// Records where broker `broker_id` is reached, if that changed.
    pub fn register_broker(
        &self,
        broker_id: i32,
        host: &str,
        port: u16,
        rack: Option<String>,
    ) -> Result<(), ControllerError> {
        let _guard = self.write.lock();
        let image = self.image();
        if let Some(b) = image.brokers.get(&broker_id)
            && b.host == host
            && b.port == port
            && b.rack == rack
        {
            return Ok(());
        }
        self.commit(vec![MetadataRecord::RegisterBroker {
            broker_id,
            host: host.to_owned(),
            port,
            rack,
        }])
        .map(|_| ())
    }

    /// Creates topics, each on its own (one failing does not stop the others).
    /// With `validate_only` nothing changes, but the answers are the same.
    pub fn create_topics(
        &self,
        requests: Vec<CreateTopicRequest>,
        validate_only: bool,
    ) -> Vec<Result<CreatedTopic, ControllerError>> {
        let _guard = self.write.lock();
        // Kafka writes one request's topics as one operation, bounded by
        // MAX_RECORDS_PER_USER_OP: over it, no topic of the request is created.
        let image = self.image();
        let planned: usize = requests
            .iter()
            .filter_map(|r| self.plan_topic(&image, r).ok())
            .map(|(records, _)| records.len())
            .sum();
        if planned > MAX_RECORDS_PER_USER_OP {
            return requests
                .iter()
                .map(|_| Err(too_large_operation(planned)))
                .collect();
        }
        let mut seen = BTreeSet::new();
        requests
            .into_iter()
            .map(|request| {
                if !seen.insert(request.name.clone()) {
                    return Err(ControllerError::new(
                        ErrorCode::InvalidRequest,
                        format!(
                            "Topic {} appears more than once in the request",
                            request.name
                        ),
                    ));
                }
                let image = self.image();
                let (records, created) = self.plan_topic(&image, &request)?;
                if !validate_only {
                    self.commit(records)?;
                    return Ok(created);
                }
                Ok(CreatedTopic {
                    topic_id: Uuid::nil(),
                    ..created
                })
            })
            .collect()
    }

    fn plan_topic(
        &self,
        image: &MetadataImage,
        request: &CreateTopicRequest,
    ) -> Result<(Vec<MetadataRecord>, CreatedTopic), ControllerError> {
        let name = &request.name;
        validate_new_topic_name(image, name)?;
        let brokers: Vec<i32> = image.brokers.keys().copied().collect();
        let assignments: Vec<Vec<i32>> = if request.assignments.is_empty() {
            let partitions = match request.num_partitions {
                -1 => self.config.num_partitions,
                n if n <= 0 => {
                    return Err(ControllerError::new(
                        ErrorCode::InvalidPartitions,
                        "Number of partitions was set to an invalid non-positive value.",
                    ));
                }
                n => n,
            };
            if partitions > MAX_PARTITIONS_PER_TOPIC {
                return Err(ControllerError::new(
                    ErrorCode::InvalidPartitions,
                    format!(
                        "Number of partitions {partitions} is above the limit of {MAX_PARTITIONS_PER_TOPIC}."
                    ),
                ));
            }
            let replication_factor = match request.replication_factor {
                -1 => self.config.default_replication_factor,
                n if n <= 0 => {
                    return Err(ControllerError::new(
                        ErrorCode::InvalidReplicationFactor,
                        "Replication factor must be larger than 0, or -1 to use the default value.",
                    ));
                }
                n => n,
            };
            let rf = usize::try_from(replication_factor).unwrap_or(0);
            if rf > brokers.len() {
                return Err(ControllerError::new(
                    ErrorCode::InvalidReplicationFactor,
                    format!(
                        "Unable to replicate the partition {replication_factor} time(s): The target replication factor of {replication_factor} cannot be reached because only {} broker(s) are registered.",
                        brokers.len()
                    ),
                ));
            }
            assign_replicas(&brokers, partitions, rf)
        } else {
            if request.num_partitions != -1 || request.replication_factor != -1 {
                return Err(ControllerError::new(
                    ErrorCode::InvalidRequest,
                    "Both numPartitions or replicationFactor and replicasAssignments were set. Both cannot be used at the same time.",
                ));
            }
            let mut by_partition = request.assignments.clone();
            by_partition.sort_by_key(|(p, _)| *p);
            let count = i32::try_from(by_partition.len()).unwrap_or(i32::MAX);
            if count > MAX_PARTITIONS_PER_TOPIC {
                return Err(ControllerError::new(
                    ErrorCode::InvalidPartitions,
                    "Too many partitions.",
                ));
            }
            for (i, (p, _)) in by_partition.iter().enumerate() {
                if usize::try_from(*p).ok() != Some(i) {
                    return Err(ControllerError::new(
                        ErrorCode::InvalidReplicaAssignment,
                        "Partitions should be a consecutive 0-based integer sequence",
                    ));
                }
            }
            let assignments: Vec<Vec<i32>> = by_partition.into_iter().map(|(_, r)| r).collect();
            validate_assignments(image, &assignments)?;
            assignments
        };
        let topic_id = random_kafka_uuid();
        let mut records = vec![MetadataRecord::Topic {
            name: name.clone(),
            topic_id,
        }];
        for (p, replicas) in assignments.iter().enumerate() {
            records.push(MetadataRecord::Partition {
                topic_id,
                partition: i32::try_from(p).unwrap_or(i32::MAX),
                replicas: replicas.clone(),
                isr: replicas.clone(),
                leader: replicas.first().copied().unwrap_or(-1),
                leader_epoch: 0,
                partition_epoch: 0,
            });
        }
        for (key, value) in &request.configs {
            records.push(MetadataRecord::Config {
                resource: ConfigResource::Topic(name.clone()),
                name: key.clone(),
                value: Some(value.clone()),
            });
        }
        let created = CreatedTopic {
            topic_id,
            num_partitions: i32::try_from(assignments.len()).unwrap_or(i32::MAX),
            replication_factor: assignments
                .first()
                .map_or(0, |r| i16::try_from(r.len()).unwrap_or(i16::MAX)),
        };
        Ok((records, created))
    }

    /// Deletes topics by name; each answer is the deleted topic's id.
    pub fn delete_topics(&self, names: &[String]) -> Vec<Result<Uuid, ControllerError>> {
        let _guard = self.write.lock();
        names
            .iter()
            .map(|name| {
                let image = self.image();
                let topic = image.topic(name).ok_or_else(|| {
                    ControllerError::new(
                        ErrorCode::UnknownTopicOrPartition,
                        "This server does not host this topic-partition.",
                    )
                })?;
                let topic_id = topic.id;
                self.commit(vec![MetadataRecord::RemoveTopic { topic_id }])?;
                Ok(topic_id)
            })
            .collect()
    }

    /// Grows topics to the requested partition counts.
    pub fn create_partitions(
        &self,
        requests: Vec<CreatePartitionsRequest>,
        validate_only: bool,
    ) -> Vec<Result<(), ControllerError>> {
        let _guard = self.write.lock();
        let image = self.image();
        let added: usize = requests
            .iter()
            .filter_map(|r| {
                let current = image.topic(&r.name)?.partitions.len();
                usize::try_from(r.count).ok()?.checked_sub(current)
            })
            .sum();
        if added > MAX_RECORDS_PER_USER_OP {
            return requests
                .iter()
                .map(|_| Err(too_large_operation(added)))
                .collect();
        }
        requests
            .into_iter()
            .map(|request| {
                let image = self.image();
                let topic = image.topic(&request.name).ok_or_else(|| {
                    ControllerError::new(
                        ErrorCode::UnknownTopicOrPartition,
                        "This server does not host this topic-partition.",
                    )
                })?;
                let current = i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX);
                if request.count < current {
                    return Err(ControllerError::new(
                        ErrorCode::InvalidPartitions,
                        format!("Topic currently has {current} partitions, which is higher than the requested {}.", request.count),
                    ));
                }
                if request.count == current {
                    return Err(ControllerError::new(
                        ErrorCode::InvalidPartitions,
                        format!("Topic already has {current} partitions."),
                    ));
                }
                if request.count > MAX_PARTITIONS_PER_TOPIC {
                    return Err(ControllerError::new(ErrorCode::InvalidPartitions, "Too many partitions."));
                }
                let added = usize::try_from(request.count - current).unwrap_or(0);
                let assignments = match request.assignments {
                    Some(a) => {
                        if a.len() != added {
                            return Err(ControllerError::new(
                                ErrorCode::InvalidReplicaAssignment,
                                format!("Increasing the number of partitions by {added} but {} assignments provided.", a.len()),
                            ));
                        }
                        validate_assignments(&image, &a)?;
                        a
                    }
                    None => {
                        let rf = topic.partitions.first().map_or(1, |p| p.replicas.len());
                        let brokers: Vec<i32> = image.brokers.keys().copied().collect();
                        if rf > brokers.len() {
                            return Err(ControllerError::new(
                                ErrorCode::InvalidReplicationFactor,
                                "Not enough brokers for the topic's replication factor.",
                            ));
                        }
                        let all = assign_replicas(&brokers, request.count, rf);
                        all.into_iter().skip(topic.partitions.len()).collect()
                    }
                };
                if validate_only {
                    return Ok(());
                }
                let records = assignments
                    .into_iter()
                    .enumerate()
                    .map(|(i, replicas)| MetadataRecord::Partition {
                        topic_id: topic.id,
                        partition: current + i32::try_from(i).unwrap_or(0),
                        isr: replicas.clone(),
                        leader: replicas.first().copied().unwrap_or(-1),
                        replicas,
                        leader_epoch: 0,
                        partition_epoch: 0,
                    })
                    .collect();
                self.commit(records).map(|_| ())
            })
            .collect()
    }

    /// Sets (`Some`) or removes (`None`) config values, all or nothing.
    pub fn alter_configs(
        &self,
        changes: Vec<(ConfigResource, String, Option<String>)>,
    ) -> Result<(), ControllerError> {
        let _guard = self.write.lock();
        let image = self.image();
        for (resource, _, _) in &changes {
            if let ConfigResource::Topic(name) = resource
                && image.topic(name).is_none()
            {
                return Err(ControllerError::new(
                    ErrorCode::UnknownTopicOrPartition,
                    format!("Topic {name} does not exist."),
                ));
            }
        }
        let records = changes
            .into_iter()
            .map(|(resource, name, value)| MetadataRecord::Config {
                resource,
                name,
                value,
            })
            .collect::<Vec<_>>();
        if records.is_empty() {
            return Ok(());
        }
        self.commit(records).map(|_| ())
    }

    /// Hands broker `broker_id` the next block of producer ids.
    pub fn allocate_producer_ids(
        &self,
        broker_id: i32,
    ) -> Result<ProducerIdBlock, ControllerError> {
        let _guard = self.write.lock();
        let start = self.image().next_producer_id_block;
        self.commit(vec![MetadataRecord::ProducerIds {
            broker_id,
            next_block_start: start + PRODUCER_ID_BLOCK_SIZE,
        }])?;
        Ok(ProducerIdBlock {
            start,
            len: PRODUCER_ID_BLOCK_SIZE,
        })
    }

    /// Appends `records` as one batch, fsyncs it and publishes the new image.
    /// The caller holds the write lock.
    fn commit(&self, records: Vec<MetadataRecord>) -> Result<Arc<MetadataImage>, ControllerError> {
        let storage = |e: String| {
            ControllerError::new(ErrorCode::KafkaStorageError, format!("metadata log: {e}"))
        };
        if records.len() > MAX_RECORDS_PER_USER_OP {
            return Err(too_large_operation(records.len()));
        }
        let batch = encode_batch(&records, self.clock.now_ms()).map_err(storage)?;
        if batch.len() > METADATA_BATCH_BYTES_MAX as usize {
            return Err(ControllerError::new(
                ErrorCode::PolicyViolation,
                format!(
                    "{TOO_LARGE_OPERATION} The change takes {} bytes of metadata, above the limit of {METADATA_BATCH_BYTES_MAX}.",
                    batch.len()
                ),
            ));
        }
        let info = self
            .log
            .append_as_leader(&batch, 0, AppendOrigin::Coordinator)
            .map_err(|e| storage(e.to_string()))?;
        self.log.flush().map_err(|e| storage(e.to_string()))?;
        let mut image = (*self.image()).clone();
        for (i, r) in records.iter().enumerate() {
            image.apply(r, info.first_offset + i as i64);
        }
        let image = Arc::new(image);
        self.image.send_replace(Arc::clone(&image));
        Ok(image)
    }
}

/// POLICY_VIOLATION for an operation of `records` metadata records.
fn too_large_operation(records: usize) -> ControllerError {
    ControllerError::new(
        ErrorCode::PolicyViolation,
        format!(
            "{TOO_LARGE_OPERATION} The request needs {records} metadata records, above the limit of {MAX_RECORDS_PER_USER_OP} per operation (a topic takes one record plus one per partition)."
        ),
    )
}

/// Kafka's topic name rules for new topics.
fn validate_new_topic_name(image: &MetadataImage, name: &str) -> Result<(), ControllerError> {
    if let Some(why) = illegal_topic_name(name) {
        return Err(ControllerError::new(ErrorCode::InvalidTopicException, why));
    }
    if name == METADATA_TOPIC {
        return Err(ControllerError::new(
            ErrorCode::InvalidTopicException,
            format!("Topic name {name} is reserved for the cluster metadata."),
        ));
    }
    if image.topic(name).is_some() {
        return Err(ControllerError::new(
            ErrorCode::TopicAlreadyExists,
            format!("Topic '{name}' already exists."),
        ));
    }
    // Kafka: '.' and '_' collide in metric names, so topics differing only in
    // them cannot coexist.
    let normalized = name.replace('.', "_");
    if let Some(other) = image
        .topics()
        .find(|t| t.name.replace('.', "_") == normalized)
    {
        return Err(ControllerError::new(
            ErrorCode::InvalidTopicException,
            format!(
                "Topic '{name}' collides with existing topic: {}",
                other.name
            ),
        ));
    }
    Ok(())
}

fn validate_assignments(
    image: &MetadataImage,
    assignments: &[Vec<i32>],
) -> Result<(), ControllerError> {
    let mut rf = None;
    for replicas in assignments {
        if replicas.is_empty() {
            return Err(ControllerError::new(
                ErrorCode::InvalidReplicaAssignment,
                "Empty replica assignment.",
            ));
        }
        let unique: BTreeSet<_> = replicas.iter().collect();
        if unique.len() != replicas.len() {
            return Err(ControllerError::new(
                ErrorCode::InvalidReplicaAssignment,
                "Duplicate brokers in a replica assignment.",
            ));
        }
        if let Some(b) = replicas.iter().find(|b| !image.brokers.contains_key(b)) {
            return Err(ControllerError::new(
                ErrorCode::InvalidReplicaAssignment,
                format!("Replica assignment names broker {b}, which is not registered."),
            ));
        }
        if *rf.get_or_insert(replicas.len()) != replicas.len() {
            return Err(ControllerError::new(
                ErrorCode::InvalidReplicaAssignment,
                "All partitions should have the same number of replicas.",
            ));
        }
    }
    Ok(())
}

/// Spreads `partitions` partitions of `rf` replicas round-robin over
/// `brokers`, each partition led by a different broker in turn.
fn assign_replicas(brokers: &[i32], partitions: i32, rf: usize) -> Vec<Vec<i32>> {
    let n = brokers.len().max(1);
    (0..usize::try_from(partitions).unwrap_or(0))
        .map(|p| (0..rf).map(|j| brokers[(p + j) % n]).collect())
        .collect()
}

/// A random UUID as Kafka makes them: never the nil UUID, never the metadata
/// topic's reserved id, never one whose string form starts with '-'.
pub fn random_kafka_uuid() -> Uuid {
    loop {
        let id = Uuid::new_v4();
        let reserved = id.as_u128() <= 1;
        if !reserved && !kafka_uuid_string(&id).starts_with('-') {
            return id;
        }
    }
}

/// Kafka's string form of a UUID: URL-safe base64 without padding (22 chars).
pub fn kafka_uuid_string(id: &Uuid) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = id.as_bytes();
    let mut out = String::with_capacity(22);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// Parses Kafka's string form of a UUID (see [`kafka_uuid_string`]).
pub fn parse_kafka_uuid(s: &str) -> Option<Uuid> {
    if s.len() != 22 {
        return None;
    }
    let mut bits: u128 = 0;
    let mut count = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        count += 6;
        if count <= 128 {
            bits = (bits << 6) | u128::from(v);
        } else {
            // The last character carries 2 bits of data and 4 of padding.
            if v & 0x0f != 0 {
                return None;
            }
            bits = (bits << 2) | u128::from(v >> 4);
        }
    }
    Some(Uuid::from_u128(bits))
}

#[cfg(test)]
mod tests {
    use strom_storage::{FileCache, LoadOptions, SystemClock};

    use super::*;

    pub(super) fn open(dir: &std::path::Path) -> Controller {
        let log = PartitionLog::open(
            dir,
            metadata_log_config(),
            Arc::new(FileCache::default()),
            Arc::new(SystemClock),
            LoadOptions::default(),
        )
        .unwrap();
        let controller = Controller::open(
            1,
            ControllerConfig::default(),
            Arc::new(log),
            Arc::new(SystemClock),
        )
        .unwrap();
        controller
            .register_broker(1, "127.0.0.1", 9092, None)
            .unwrap();
        controller
    }

    pub(super) fn topic(name: &str, partitions: i32, rf: i16) -> CreateTopicRequest {
        CreateTopicRequest {
            name: name.to_owned(),
            num_partitions: partitions,
            replication_factor: rf,
            assignments: vec![],
            configs: BTreeMap::new(),
        }
    }

    #[test]
    fn topics_follow_kafkas_rules_and_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cluster_id;
        let orders_id;
        {
            let c = open(dir.path());
            cluster_id = c.image().cluster_id.clone();
            assert_eq!(cluster_id.len(), 22);
            let results = c.create_topics(
                vec![
                    topic("orders", 3, 1),
                    topic("bad name", 1, 1),
                    topic("replicated", 1, 3),
                    topic("zero", 0, 1),
                    topic("defaults", -1, -1),
                    topic(METADATA_TOPIC, 1, 1),
                ],
                false,
            );
            orders_id = results[0].as_ref().unwrap().topic_id;
            assert_eq!(
                results[1].as_ref().unwrap_err().code,
                ErrorCode::InvalidTopicException
            );
            assert_eq!(
                results[2].as_ref().unwrap_err().code,
                ErrorCode::InvalidReplicationFactor
            );
            assert_eq!(
                results[3].as_ref().unwrap_err().code,
                ErrorCode::InvalidPartitions
            );
            assert_eq!(results[4].as_ref().unwrap().num_partitions, 1);
            assert_eq!(
                results[5].as_ref().unwrap_err().code,
                ErrorCode::InvalidTopicException
            );
            let again = c.create_topics(vec![topic("orders", 1, 1), topic("orders_", 1, 1)], false);
            assert_eq!(
                again[0].as_ref().unwrap_err().code,
                ErrorCode::TopicAlreadyExists
            );
            assert!(again[1].is_ok());
            let collides = c.create_topics(vec![topic("orders.", 1, 1)], false);
            assert_eq!(
                collides[0].as_ref().unwrap_err().code,
                ErrorCode::InvalidTopicException
            );
            let validated = c.create_topics(vec![topic("dry", 2, 1)], true);
            assert!(validated[0].is_ok());
            assert!(c.image().topic("dry").is_none());
            assert!(
                c.create_partitions(
                    vec![CreatePartitionsRequest {
                        name: "orders".into(),
                        count: 5,
                        assignments: None
                    }],
                    false
                )[0]
                .is_ok()
            );
            assert_eq!(
                c.delete_topics(&["defaults".to_owned()])[0]
                    .as_ref()
                    .map(|_| ()),
                Ok(())
            );
            let first = c.allocate_producer_ids(1).unwrap();
            let second = c.allocate_producer_ids(1).unwrap();
            assert_eq!(second.start, first.start + PRODUCER_ID_BLOCK_SIZE);
        }
        let c = open(dir.path());
        let image = c.image();
        assert_eq!(image.cluster_id, cluster_id);
        let orders = image.topic("orders").unwrap();
        assert_eq!(orders.id, orders_id);
        assert_eq!(orders.partitions.len(), 5);
        assert_eq!(orders.partitions[4].leader, 1);
        assert!(image.topic("defaults").is_none());
        assert!(image.topic_by_id(&orders_id).is_some());
        assert_eq!(
            c.allocate_producer_ids(1).unwrap().start,
            2 * PRODUCER_ID_BLOCK_SIZE
        );
    }

    #[test]
    fn uuid_strings_are_kafkas() {
        let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        // Kafka's Uuid.toString(): URL-safe base64 of the 16 bytes, no padding.
        assert_eq!(kafka_uuid_string(&id), "ASNFZ4mrze8BI0VniavN7w");
        assert_eq!(parse_kafka_uuid("ASNFZ4mrze8BI0VniavN7w"), Some(id));
        for _ in 0..100 {
            let id = random_kafka_uuid();
            assert_eq!(parse_kafka_uuid(&kafka_uuid_string(&id)), Some(id));
        }
        assert_eq!(parse_kafka_uuid("not a uuid"), None);
    }
}

#[cfg(test)]
mod operation_bound_tests {
    use super::tests::{open, topic};
    use super::*;

    #[test]
    fn one_operation_takes_up_to_max_records_per_user_op_and_no_more() {
        let dir = tempfile::tempdir().unwrap();
        let controller = open(dir.path());
        // 10,000 partitions: 10,001 records, one too many.
        let refused = controller.create_topics(vec![topic("huge", 10_000, 1)], false);
        let e = refused[0].clone().unwrap_err();
        assert_eq!(e.code, ErrorCode::PolicyViolation);
        assert!(e.message.unwrap().contains("10001"));
        // Over the request: each topic fits, both together do not.
        let refused = controller.create_topics(
            vec![topic("half-1", 6_000, 1), topic("half-2", 6_000, 1)],
            false,
        );
        assert!(
            refused
                .iter()
                .all(|r| r.as_ref().unwrap_err().code == ErrorCode::PolicyViolation)
        );
        assert_eq!(controller.image().topic_count(), 0);
        // Exactly the bound: one batch of 10,000 records, replayed whole.
        let created = controller.create_topics(vec![topic("big", 9_999, 1)], false);
        assert_eq!(created[0].as_ref().unwrap().num_partitions, 9_999);
        let refused = controller.create_partitions(
            vec![CreatePartitionsRequest {
                name: "big".to_owned(),
                count: 9_999 + 10_001,
                assignments: None,
            }],
            false,
        );
        assert_eq!(
            refused[0].clone().unwrap_err().code,
            ErrorCode::PolicyViolation
        );
        // A config value too big for one metadata batch.
        let huge = "x".repeat(METADATA_BATCH_BYTES_MAX as usize);
        let e = controller
            .alter_configs(vec![(
                ConfigResource::Topic("big".to_owned()),
                "retention.ms".to_owned(),
                Some(huge),
            )])
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::PolicyViolation);
        drop(controller);
        let reopened = open(dir.path());
        let image = reopened.image();
        assert_eq!(image.topic_count(), 1);
        assert_eq!(image.topic("big").unwrap().partitions.len(), 9_999);
    }
}
