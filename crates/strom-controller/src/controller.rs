//! The controller: the single writer of the cluster metadata. Each change
//! goes through three steps: **propose** (check it against the latest image
//! and produce its records, [`crate::propose`], pure), **commit** (make the
//! records durable as one batch through the [`MetadataLog`] seam) and
//! **apply** (replay the committed records into a new image,
//! [`MetadataImage::apply_batch`], and publish it). Every so often, and at
//! clean shutdown, the image is written as a snapshot
//! ([`crate::snapshot`]) so a restart replays only the log after it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use strom_protocol::error_code::ErrorCode;
use strom_storage::{Clock, PartitionLog};
use tokio::sync::watch;
use uuid::Uuid;

use crate::image::{ConfigResource, MetadataImage};
use crate::metadata_log::{LocalMetadataLog, MetadataLog, MetadataLogError};
use crate::propose::{self, Proposal};
use crate::records::{MetadataRecord, decode_batch};
use crate::snapshot::SnapshotStore;

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

/// Metadata log bytes committed between two image snapshots: Kafka's
/// default for `metadata.log.max.record.bytes.between.snapshots` (20 MiB).
/// A restart replays at most about this much of the log (twice it if the
/// newest snapshot is unreadable); writing the whole image this rarely costs
/// little next to the commits that led to it.
pub const SNAPSHOT_INTERVAL_BYTES: u64 = 20 << 20;

/// Defaults the controller applies (broker configs of the same names).
#[derive(Debug, Clone, Copy)]
pub struct ControllerConfig {
    /// `num.partitions`.
    pub num_partitions: i32,
    /// `default.replication.factor`.
    pub default_replication_factor: i16,
    /// Metadata log bytes committed between two snapshots
    /// ([`SNAPSHOT_INTERVAL_BYTES`]; tests use less).
    pub snapshot_interval_bytes: u64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            num_partitions: 1,
            default_replication_factor: 1,
            snapshot_interval_bytes: SNAPSHOT_INTERVAL_BYTES,
        }
    }
}

/// How the image was rebuilt at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadStats {
    /// The offset of the snapshot the image started from; `None`: the whole
    /// log was replayed.
    pub snapshot_offset: Option<i64>,
    /// Metadata log batches replayed after the snapshot (or from the start).
    pub replayed_batches: u64,
    /// Metadata records replayed after the snapshot (or from the start).
    pub replayed_records: u64,
}

/// The single controller of this node's cluster.
#[derive(Debug)]
pub struct Controller {
    node_id: i32,
    config: ControllerConfig,
    log: Arc<dyn MetadataLog>,
    /// Where image snapshots go; `None`: never snapshotted (a log in memory).
    snapshots: Option<SnapshotStore>,
    clock: Arc<dyn Clock>,
    /// The single writer: held from proposing a change against the latest
    /// image until its image is published, so changes are checked against
    /// every change before them and committed in order.
    write: Mutex<WriterState>,
    image: watch::Sender<Arc<MetadataImage>>,
    load_stats: LoadStats,
}

/// What the writer keeps between commits: when to snapshot next.
#[derive(Debug)]
struct WriterState {
    /// Batch bytes committed (or replayed at start) since the last snapshot.
    bytes_since_snapshot: u64,
    /// The offset of the newest snapshot written or loaded.
    snapshot_offset: Option<i64>,
}

type Writer<'a> = MutexGuard<'a, WriterState>;

impl Controller {
    /// Opens the controller on this node's metadata log, with its image
    /// snapshots in the log's directory: loads the newest valid snapshot,
    /// replays the records after it, and on a new log writes the cluster id.
    pub fn open(
        node_id: i32,
        config: ControllerConfig,
        log: Arc<PartitionLog>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ControllerError> {
        let snapshots = SnapshotStore::new(log.dir());
        Self::open_with(
            node_id,
            config,
            Arc::new(LocalMetadataLog::new(log)),
            Some(snapshots),
            clock,
        )
    }

    /// Opens the controller on any metadata log (see [`Controller::open`]).
    pub fn open_with(
        node_id: i32,
        config: ControllerConfig,
        log: Arc<dyn MetadataLog>,
        snapshots: Option<SnapshotStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ControllerError> {
        let log_start_offset = log.log_start_offset();
        let snapshot = snapshots
            .as_ref()
            .and_then(|s| s.load_newest(log_start_offset, log.log_end_offset()));
        let mut stats = LoadStats {
            snapshot_offset: snapshot.as_ref().map(|image| image.offset),
            ..LoadStats::default()
        };
        let mut image = snapshot.unwrap_or_default();
        image.controller_id = node_id;
        let mut replayed_bytes = 0u64;
        let mut failure = None;
        log.replay(
            image.offset.max(log_start_offset),
            &mut |base_offset, bytes| {
                if failure.is_some() {
                    return;
                }
                match decode_batch(&Bytes::copy_from_slice(bytes)) {
                    Ok(records) => {
                        // The batch holding the snapshot's offset is replayed
                        // from it: records below are in the image already.
                        let skip = usize::try_from(image.offset - base_offset).unwrap_or(0);
                        let tail = records.get(skip..).unwrap_or_default();
                        image.apply_batch(base_offset + skip as i64, tail);
                        stats.replayed_batches += 1;
                        stats.replayed_records += tail.len() as u64;
                        replayed_bytes += bytes.len() as u64;
                    }
                    Err(e) => {
                        failure = Some(format!("metadata batch at offset {base_offset}: {e}"))
                    }
                }
            },
        )
        .map_err(|e| ControllerError::new(ErrorCode::KafkaStorageError, e.to_string()))?;
        if let Some(reason) = failure {
            // The log passed CRC checks, so this is a record we cannot read:
            // refuse to start rather than serve a wrong image.
            return Err(ControllerError::new(ErrorCode::UnknownServerError, reason));
        }
        tracing::info!(
            offset = image.offset,
            snapshot = ?stats.snapshot_offset,
            replayed_records = stats.replayed_records,
            "metadata image loaded"
        );
        let (image_tx, _) = watch::channel(Arc::new(image));
        let controller = Self {
            node_id,
            config,
            log,
            snapshots,
            clock,
            write: Mutex::new(WriterState {
                bytes_since_snapshot: replayed_bytes,
                snapshot_offset: stats.snapshot_offset,
            }),
            image: image_tx,
            load_stats: stats,
        };
        let mut writer = controller.write.lock();
        if controller.image().cluster_id.is_empty() {
            controller.commit(&mut writer, propose::cluster_id())?;
        } else {
            controller.maybe_snapshot(&mut writer);
        }
        drop(writer);
        Ok(controller)
    }

    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    /// How the image was rebuilt at start.
    pub fn load_stats(&self) -> LoadStats {
        self.load_stats
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
        let mut writer = self.write.lock();
        match propose::register_broker(&self.image(), broker_id, host, port, rack) {
            Some(records) => self.commit(&mut writer, records).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Creates topics, each on its own (one failing does not stop the others).
    /// With `validate_only` nothing changes, but the answers are the same.
    pub fn create_topics(
        &self,
        requests: Vec<CreateTopicRequest>,
        validate_only: bool,
    ) -> Vec<Result<CreatedTopic, ControllerError>> {
        let mut writer = self.write.lock();
        if let Err(e) = propose::create_topics_bound(&self.image(), &self.config, &requests) {
            return requests.iter().map(|_| Err(e.clone())).collect();
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
                let (records, created) =
                    propose::create_topic(&self.image(), &self.config, &request)?;
                if !validate_only {
                    self.commit(&mut writer, records)?;
                    return Ok(created);
                }
                Ok(CreatedTopic {
                    topic_id: Uuid::nil(),
                    ..created
                })
            })
            .collect()
    }

    /// Deletes topics by name; each answer is the deleted topic's id.
    pub fn delete_topics(&self, names: &[String]) -> Vec<Result<Uuid, ControllerError>> {
        let mut writer = self.write.lock();
        names
            .iter()
            .map(|name| {
                let (records, topic_id) = propose::delete_topic(&self.image(), name)?;
                self.commit(&mut writer, records)?;
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
        let mut writer = self.write.lock();
        if let Err(e) = propose::create_partitions_bound(&self.image(), &requests) {
            return requests.iter().map(|_| Err(e.clone())).collect();
        }
        requests
            .into_iter()
            .map(|request| {
                let records = propose::create_partitions(&self.image(), request)?;
                if validate_only {
                    return Ok(());
                }
                self.commit(&mut writer, records).map(|_| ())
            })
            .collect()
    }

    /// Sets (`Some`) or removes (`None`) config values, all or nothing.
    pub fn alter_configs(
        &self,
        changes: Vec<(ConfigResource, String, Option<String>)>,
    ) -> Result<(), ControllerError> {
        let mut writer = self.write.lock();
        let records = propose::alter_configs(&self.image(), changes)?;
        if records.is_empty() {
            return Ok(());
        }
        self.commit(&mut writer, records).map(|_| ())
    }

    /// Hands broker `broker_id` the next block of producer ids.
    pub fn allocate_producer_ids(
        &self,
        broker_id: i32,
    ) -> Result<ProducerIdBlock, ControllerError> {
        let mut writer = self.write.lock();
        let (records, block) = propose::allocate_producer_ids(&self.image(), broker_id);
        self.commit(&mut writer, records)?;
        Ok(block)
    }

    /// Writes a snapshot of the current image if it is newer than the
    /// newest snapshot, so the next start replays nothing (clean shutdown).
    /// A failure is logged: the next start replays more, nothing is lost.
    pub fn snapshot_on_shutdown(&self) {
        let mut writer = self.write.lock();
        if writer.snapshot_offset != Some(self.image().offset) {
            self.write_snapshot(&mut writer);
        }
    }

    /// Commits one operation's records and applies them: the records,
    /// proposed against the latest image (the caller holds the writer), are
    /// sealed into one batch, made durable by the metadata log, replayed into
    /// a new image, and that image is published.
    fn commit(
        &self,
        writer: &mut Writer<'_>,
        records: Vec<MetadataRecord>,
    ) -> Result<Arc<MetadataImage>, ControllerError> {
        let current = self.image();
        let proposal = Proposal::new(records, &current, self.clock.now_ms())?;
        // Single writer: nothing was committed since the records were
        // proposed, and the log ends where the image does.
        debug_assert_eq!(proposal.based_on(), current.offset);
        debug_assert_eq!(self.log.log_end_offset(), current.offset);
        let base_offset = self.log.commit(proposal.batch()).map_err(storage_error)?;
        let mut image = (*current).clone();
        image.apply_batch(base_offset, proposal.records());
        let image = Arc::new(image);
        self.image.send_replace(Arc::clone(&image));
        writer.bytes_since_snapshot += proposal.batch().len() as u64;
        self.maybe_snapshot(writer);
        Ok(image)
    }

    /// Snapshots the image once enough has been committed since the last one.
    fn maybe_snapshot(&self, writer: &mut Writer<'_>) {
        if writer.bytes_since_snapshot >= self.config.snapshot_interval_bytes {
            self.write_snapshot(writer);
        }
    }

    fn write_snapshot(&self, writer: &mut Writer<'_>) {
        let Some(store) = &self.snapshots else { return };
        let image = self.image();
        match store.write(&image) {
            Ok(path) => {
                tracing::debug!(path = %path.display(), offset = image.offset, "metadata snapshot written");
                writer.bytes_since_snapshot = 0;
                writer.snapshot_offset = Some(image.offset);
            }
            // Not fatal: the log has every record; the next start replays more.
            Err(e) => {
                tracing::warn!(error = %e, offset = image.offset, "writing a metadata snapshot failed")
            }
        }
    }
}

/// KAFKA_STORAGE_ERROR for a metadata log that failed.
fn storage_error(e: MetadataLogError) -> ControllerError {
    ControllerError::new(ErrorCode::KafkaStorageError, format!("metadata log: {e}"))
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

#[cfg(test)]
mod seam_tests {
    use strom_storage::SystemClock;

    use super::tests::topic;
    use super::*;
    use crate::metadata_log::MemoryMetadataLog;

    fn open_on(log: &Arc<MemoryMetadataLog>) -> Controller {
        let log: Arc<dyn MetadataLog> = Arc::clone(log) as Arc<dyn MetadataLog>;
        Controller::open_with(
            1,
            ControllerConfig::default(),
            log,
            None,
            Arc::new(SystemClock),
        )
        .unwrap()
    }

    #[test]
    fn each_operation_is_one_committed_batch_and_replays_to_the_same_image() {
        let log = Arc::new(MemoryMetadataLog::new());
        let controller = open_on(&log);
        controller
            .register_broker(1, "localhost", 9092, None)
            .unwrap();
        // Cluster id, broker.
        assert_eq!(log.batch_count(), 2);
        let results = controller.create_topics(vec![topic("a", 2, 1), topic("b", 1, 1)], false);
        assert!(results.iter().all(Result::is_ok));
        // One batch per topic, each checked against the image after the one before.
        assert_eq!(log.batch_count(), 4);
        assert_eq!(
            controller.create_topics(vec![topic("a", 1, 1)], false)[0]
                .clone()
                .unwrap_err()
                .code,
            ErrorCode::TopicAlreadyExists
        );
        // A validation-only request and a refused one commit nothing.
        controller.create_topics(vec![topic("dry", 1, 1)], true);
        assert_eq!(log.batch_count(), 4);
        controller
            .alter_configs(vec![(
                ConfigResource::Topic("a".to_owned()),
                "retention.ms".to_owned(),
                Some("1".to_owned()),
            )])
            .unwrap();
        assert_eq!(controller.image().offset, log.log_end_offset());
        let again = open_on(&log);
        assert_eq!(*again.image(), *controller.image());
        assert_eq!(again.load_stats().snapshot_offset, None);
        assert_eq!(
            again.load_stats().replayed_records,
            u64::try_from(log.log_end_offset()).unwrap()
        );
    }

    #[test]
    fn concurrent_operations_are_committed_one_at_a_time_in_order() {
        let log = Arc::new(MemoryMetadataLog::new());
        let controller = Arc::new(open_on(&log));
        controller
            .register_broker(1, "localhost", 9092, None)
            .unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let controller = Arc::clone(&controller);
                std::thread::spawn(move || {
                    for i in 0..10 {
                        // Every thread also races for the same name: one wins.
                        controller.create_topics(vec![topic(&format!("t{t}-{i}"), 1, 1)], false);
                        controller.create_topics(vec![topic(&format!("shared-{i}"), 1, 1)], false);
                        controller.allocate_producer_ids(1).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let image = controller.image();
        assert_eq!(image.topic_count(), 40 + 10);
        assert_eq!(image.next_producer_id_block, 40 * PRODUCER_ID_BLOCK_SIZE);
        assert_eq!(image.offset, log.log_end_offset());
        assert_eq!(*open_on(&log).image(), *image);
    }
}

#[cfg(test)]
mod snapshot_restart_tests {
    use std::path::Path;

    use strom_storage::{FileCache, LoadOptions, SystemClock};

    use super::tests::topic;
    use super::*;
    use crate::snapshot::{SnapshotStore, snapshot_file_name};

    /// Small enough that the operations below take several snapshots.
    const TEST_SNAPSHOT_INTERVAL_BYTES: u64 = 16 << 10;

    fn partition_log(dir: &Path) -> Arc<PartitionLog> {
        Arc::new(
            PartitionLog::open(
                dir,
                metadata_log_config(),
                Arc::new(FileCache::default()),
                Arc::new(SystemClock),
                LoadOptions::default(),
            )
            .unwrap(),
        )
    }

    fn config() -> ControllerConfig {
        ControllerConfig {
            snapshot_interval_bytes: TEST_SNAPSHOT_INTERVAL_BYTES,
            ..ControllerConfig::default()
        }
    }

    /// Opens with snapshots, as a broker does.
    fn open(dir: &Path) -> Controller {
        Controller::open(1, config(), partition_log(dir), Arc::new(SystemClock)).unwrap()
    }

    /// The image a replay of the whole log gives (snapshots not read).
    fn full_replay(dir: &Path) -> Controller {
        Controller::open_with(
            1,
            config(),
            Arc::new(LocalMetadataLog::new(partition_log(dir))),
            None,
            Arc::new(SystemClock),
        )
        .unwrap()
    }

    /// Many operations of every kind; returns the records committed.
    fn many_operations(c: &Controller) -> u64 {
        c.register_broker(1, "localhost", 9092, Some("r1".to_owned()))
            .unwrap();
        for i in 0..150 {
            let name = format!("topic-{i}");
            assert!(c.create_topics(vec![topic(&name, 3, 1)], false)[0].is_ok());
            c.alter_configs(vec![
                (
                    ConfigResource::Topic(name.clone()),
                    "retention.ms".to_owned(),
                    Some(i.to_string()),
                ),
                (
                    ConfigResource::Broker(Some(1)),
                    "log.retention.ms".to_owned(),
                    Some(i.to_string()),
                ),
            ])
            .unwrap();
            if i % 3 == 0 {
                assert!(c.delete_topics(std::slice::from_ref(&name))[0].is_ok());
            }
            if i % 5 == 0 && i > 0 {
                assert!(
                    c.create_partitions(
                        vec![CreatePartitionsRequest {
                            name: "topic-1".to_owned(),
                            count: 3 + i / 5,
                            assignments: None,
                        }],
                        false
                    )[0]
                    .is_ok()
                );
                c.allocate_producer_ids(1).unwrap();
            }
        }
        c.alter_configs(vec![(
            ConfigResource::Broker(None),
            "log.retention.ms".to_owned(),
            Some("7".to_owned()),
        )])
        .unwrap();
        u64::try_from(c.image().offset).unwrap()
    }

    #[test]
    fn a_restart_replays_only_the_records_after_the_newest_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let records = {
            let c = open(dir.path());
            many_operations(&c)
            // Dropped without a shutdown snapshot, as in a crash.
        };
        let snapshots = SnapshotStore::new(dir.path()).list().unwrap();
        assert_eq!(snapshots.len(), 2, "{snapshots:?}");
        let newest = snapshots[1].0;
        let reopened = open(dir.path());
        let stats = reopened.load_stats();
        assert_eq!(stats.snapshot_offset, Some(newest));
        assert_eq!(
            stats.replayed_records,
            records - u64::try_from(newest).unwrap()
        );
        assert!(
            stats.replayed_records < records / 4,
            "{stats:?} of {records}"
        );
        let image = reopened.image();
        drop(reopened);
        let full = full_replay(dir.path());
        assert_eq!(full.load_stats().replayed_records, records);
        assert_eq!(*full.image(), *image);
        assert!(image.topic("topic-1").is_some() && image.topic("topic-0").is_none());
        drop(full);

        // After a clean shutdown nothing is replayed, and the image is the same.
        let c = open(dir.path());
        assert!(c.create_topics(vec![topic("after", 1, 1)], false)[0].is_ok());
        c.snapshot_on_shutdown();
        let before = c.image();
        drop(c);
        let c = open(dir.path());
        assert_eq!(c.load_stats().snapshot_offset, Some(before.offset));
        assert_eq!(c.load_stats().replayed_records, 0);
        assert_eq!(*c.image(), *before);
    }

    #[test]
    fn a_damaged_snapshot_is_ignored_and_the_log_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let records = {
            let c = open(dir.path());
            let records = many_operations(&c);
            c.snapshot_on_shutdown();
            records
        };
        let expected = full_replay(dir.path()).image();
        let store = SnapshotStore::new(dir.path());
        let snapshots = store.list().unwrap();
        let (newest, older) = (&snapshots[1], &snapshots[0]);
        assert_eq!(newest.0, i64::try_from(records).unwrap());

        // Bytes flipped in the newest: the older one is used.
        let mut bytes = std::fs::read(&newest.1).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&newest.1, &bytes).unwrap();
        let c = open(dir.path());
        assert_eq!(c.load_stats().snapshot_offset, Some(older.0));
        assert_eq!(*c.image(), *expected);
        drop(c);

        // The older one truncated too: the whole log is replayed.
        let len = std::fs::metadata(&older.1).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&older.1)
            .unwrap()
            .set_len(len - 10)
            .unwrap();
        let c = open(dir.path());
        assert_eq!(c.load_stats().snapshot_offset, None);
        assert_eq!(c.load_stats().replayed_records, records);
        assert_eq!(*c.image(), *expected);

        // It replayed more than the snapshot interval: it wrote one at once.
        drop(c);
        let c = open(dir.path());
        assert_eq!(c.load_stats().snapshot_offset, Some(newest.0));
        assert_eq!(c.load_stats().replayed_records, 0);
        drop(c);

        // Garbage under the newest snapshot's name, and an empty file under
        // another: not trusted either.
        std::fs::write(&newest.1, b"{}").unwrap();
        std::fs::write(dir.path().join(snapshot_file_name(2, 0)), b"").unwrap();
        let c = open(dir.path());
        assert_eq!(c.load_stats().snapshot_offset, None);
        assert_eq!(*c.image(), *expected);
        drop(c);
        assert_eq!(open(dir.path()).load_stats().replayed_records, 0);
    }
}
