//! The partitions this broker holds: their logs, leader epochs and high
//! watermarks, kept in line with the metadata image.
//!
//! A partition directory carries Kafka's `partition.metadata` file naming its
//! topic id, so a log left over from a deleted topic (a crash between the
//! metadata change and the deletion of the files) is never served as part of
//! a new topic of the same name. Only a file naming another topic id
//! condemns a log: a missing, empty or unreadable one is rewritten from the
//! metadata image and the data kept.
//!
//! A partition whose log cannot be created or deleted (a full disk, an I/O
//! error) does not hold up the others: the failure is remembered, answered
//! to clients as `KAFKA_STORAGE_ERROR`, and the metadata publisher applies
//! the image again on the next change and every [`STORAGE_RETRY_INTERVAL`]
//! until it succeeds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use strom_controller::{METADATA_TOPIC, MetadataImage, PartitionImage};
use strom_protocol::messages::Uuid;
use strom_storage::{Clock, LogConfig, LogManager, StorageError, TopicPartition};

use crate::config::BrokerConfig;
pub use crate::partition::Partition;
use crate::partition::PartitionState;
use crate::partition::log_dir::LogDirHealth;
use crate::partition::validation::ProduceChecks;

/// The state of partition `p` that this broker acts on.
fn partition_state(p: &PartitionImage, image: &MetadataImage) -> PartitionState {
    PartitionState {
        leader: p.leader,
        leader_epoch: p.leader_epoch,
        partition_epoch: p.partition_epoch,
        replicas: p.replicas.clone(),
        isr: p.isr.clone(),
        removing_replicas: p.removing_replicas.clone(),
        ineligible: p
            .replicas
            .iter()
            .copied()
            .filter(|id| !image.is_live(*id))
            .collect(),
    }
}

/// The produce checks of a topic with `overrides`, resolved once per image.
fn produce_checks(
    config: &BrokerConfig,
    image: &MetadataImage,
    overrides: &BTreeMap<String, String>,
    log_config: &LogConfig,
) -> ProduceChecks {
    let value = |key: &str| -> String {
        crate::config::topic_config_def(key)
            .map(|def| config.topic_value(def, image, overrides).value)
            .unwrap_or_default()
    };
    ProduceChecks::resolve(log_config.clone(), &value)
}

/// Kafka's per-partition file holding the topic id.
const PARTITION_METADATA_FILE: &str = "partition.metadata";
/// Kafka's file of high watermarks, one per partition, in the data
/// directory: a restarted broker hides what may not be committed.
pub const REPLICATION_OFFSET_CHECKPOINT: &str = "replication-offset-checkpoint";
/// How often partitions whose log could not be created or deleted are tried
/// again: often enough that a freed disk brings them back within seconds,
/// rare enough that a failing disk is not hammered.
pub const STORAGE_RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// A partition by topic name and index.
type PartitionKey = (Arc<str>, i32);

/// The set of partitions on this broker.
#[derive(Debug)]
pub struct ReplicaManager {
    node_id: i32,
    logs: Arc<LogManager>,
    partitions: RwLock<HashMap<PartitionKey, Arc<Partition>>>,
    /// Partitions the last applied image could not bring in line (their log
    /// could not be created, opened or deleted), with the storage error:
    /// answered to clients, and retried.
    failed: RwLock<HashMap<PartitionKey, Failure>>,
    /// Serialises applying images (creating and deleting logs).
    apply: Mutex<()>,
    /// For the followers' caught-up times when a role changes.
    clock: Arc<dyn Clock>,
    /// `replica.lag.time.max.ms`, given to every partition.
    replica_lag_time_max_ms: i64,
    /// The high watermarks of the last `replication-offset-checkpoint` at
    /// start, for partitions opened from it; `None` when there was no file
    /// (a log from before replication, whose end is its high watermark).
    checkpointed: Option<HashMap<PartitionKey, i64>>,
    /// Serialises writing the checkpoint.
    checkpoint: Mutex<()>,
    /// The log directory every partition here is in.
    log_dir: Arc<LogDirHealth>,
}

impl ReplicaManager {
    pub fn new(node_id: i32, logs: Arc<LogManager>, clock: Arc<dyn Clock>) -> Self {
        let checkpointed = read_high_watermarks(logs.data_dir());
        Self {
            node_id,
            logs,
            partitions: RwLock::new(HashMap::new()),
            failed: RwLock::new(HashMap::new()),
            apply: Mutex::new(()),
            clock,
            replica_lag_time_max_ms:
                crate::partition::high_watermark::DEFAULT_REPLICA_LAG_TIME_MAX_MS,
            checkpointed,
            checkpoint: Mutex::new(()),
            log_dir: LogDirHealth::standalone(),
        }
    }

    /// Puts the partitions opened from now in the log directory `health`.
    #[must_use]
    pub fn with_log_dir(mut self, health: Arc<LogDirHealth>) -> Self {
        self.log_dir = health;
        self
    }

    /// The log directory's health.
    pub fn log_dir(&self) -> &Arc<LogDirHealth> {
        &self.log_dir
    }

    /// Sets `replica.lag.time.max.ms` for the partitions opened from now.
    #[must_use]
    pub fn with_replica_lag_time_max_ms(mut self, ms: i64) -> Self {
        self.replica_lag_time_max_ms = ms;
        self
    }

    /// Writes every partition's high watermark to
    /// `replication-offset-checkpoint` (every
    /// `replica.high.watermark.checkpoint.interval.ms`, and at shutdown).
    pub fn checkpoint_high_watermarks(&self) -> std::io::Result<()> {
        let _guard = self.checkpoint.lock();
        let mut lines: Vec<String> = self
            .partitions
            .read()
            .iter()
            .map(|((topic, index), p)| format!("{topic} {index} {}", p.high_watermark()))
            .collect();
        lines.sort();
        strom_storage::checkpoint::write(
            &self.logs.data_dir().join(REPLICATION_OFFSET_CHECKPOINT),
            &lines,
        )
    }

    pub fn get(&self, topic: &str, partition: i32) -> Option<Arc<Partition>> {
        self.partitions
            .read()
            .get(&(Arc::from(topic), partition))
            .cloned()
    }

    pub fn partition_count(&self) -> usize {
        self.partitions.read().len()
    }

    /// Makes the local partitions match `image`: creates the logs of new
    /// partitions this broker replicates, updates configs and leader epochs,
    /// and deletes logs of topics that are gone (or were recreated).
    ///
    /// A partition that fails does not stop the others; the failures are
    /// remembered (see [`Self::storage_error`]) and returned, and
    /// [`Self::has_storage_errors`] tells the broker to apply again later.
    pub fn apply_image(
        &self,
        image: &MetadataImage,
        config: &BrokerConfig,
    ) -> Result<(), ApplyError> {
        let _guard = self.apply.lock();
        let now_ms = self.clock.now_ms();
        let mut failed: HashMap<PartitionKey, Failure> = HashMap::new();
        let mut wanted: HashSet<PartitionKey> = HashSet::new();
        for topic in image.topics() {
            let name: Arc<str> = Arc::from(topic.name.as_str());
            let log_config = config.log_config(image, &topic.configs);
            let mut checks = None;
            for p in &topic.partitions {
                if !p.replicas.contains(&self.node_id) {
                    continue;
                }
                let key = (Arc::clone(&name), p.partition);
                wanted.insert(key.clone());
                let existing = self.partitions.read().get(&key).cloned();
                match existing {
                    Some(partition) if partition.topic_id == topic.id => {
                        partition.apply_state(&partition_state(p, image), now_ms);
                        if *partition.log.config() != log_config {
                            partition.log.set_config(log_config.clone());
                        }
                        let checks = checks.get_or_insert_with(|| {
                            produce_checks(config, image, &topic.configs, &log_config)
                        });
                        partition.set_produce_checks(checks.clone());
                    }
                    stale => {
                        let opened = stale.map_or(Ok(()), |_| self.remove(&key)).and_then(|()| {
                            self.open_partition(
                                &name,
                                p.partition,
                                topic.id,
                                (p.leader_epoch, p.leader),
                                &log_config,
                            )
                        });
                        match opened {
                            Ok(partition) => {
                                partition.apply_state(&partition_state(p, image), now_ms);
                                let checks = checks.get_or_insert_with(|| {
                                    produce_checks(config, image, &topic.configs, &log_config)
                                });
                                partition.set_produce_checks(checks.clone());
                                self.partitions.write().insert(key, partition);
                            }
                            Err(e) => {
                                failed.insert(key, Failure::new("opening or creating", &e));
                            }
                        }
                    }
                }
            }
        }
        let gone: Vec<PartitionKey> = self
            .partitions
            .read()
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Err(e) = self.remove(&key) {
                failed.insert(key, Failure::new("deleting", &e));
            }
        }
        // Logs on disk that no partition owns: left by a crash mid-deletion.
        for (tp, _) in self.logs.logs() {
            let key: PartitionKey = (Arc::from(tp.topic.as_str()), tp.partition);
            if tp.topic != METADATA_TOPIC && !wanted.contains(&key) {
                tracing::info!(partition = %tp, "deleting a log whose topic no longer exists");
                if let Err(e) = self.logs.delete(&tp) {
                    failed.insert(key, Failure::new("deleting", &e));
                }
            }
        }
        let result = if failed.is_empty() {
            Ok(())
        } else {
            Err(ApplyError {
                failed: failed
                    .iter()
                    .map(|((topic, partition), f)| {
                        (
                            TopicPartition::new(topic.as_ref(), *partition),
                            f.error.clone(),
                        )
                    })
                    .collect(),
            })
        };
        // Retries run every few seconds: a failure is an ERROR line when it
        // appears or changes, not on every retry.
        for (key, failure) in &failed {
            let (topic, partition) = (&key.0, key.1);
            if self.failed.read().get(key) == Some(failure) {
                tracing::debug!(%topic, partition, action = failure.action, error = %failure.error, "the partition's log still fails");
            } else {
                tracing::error!(%topic, partition, action = failure.action, error = %failure.error, "the partition's log failed; retrying every {} s", STORAGE_RETRY_INTERVAL.as_secs());
            }
        }
        let previous = std::mem::replace(&mut *self.failed.write(), failed);
        for key in previous.keys() {
            if !self.failed.read().contains_key(key) {
                tracing::info!(topic = %key.0, partition = key.1, "the partition's storage error is resolved");
            }
        }
        result
    }

    /// Whether the last applied image left partitions with a storage error
    /// (the broker then applies it again every [`STORAGE_RETRY_INTERVAL`]).
    pub fn has_storage_errors(&self) -> bool {
        !self.failed.read().is_empty()
    }

    /// The storage error that keeps `topic`'s partition `partition` from
    /// being served here, if any.
    pub fn storage_error(&self, topic: &str, partition: i32) -> Option<String> {
        self.failed
            .read()
            .get(&(Arc::from(topic), partition))
            .map(|f| f.error.clone())
    }

    /// The first storage error among `topic`'s partitions, if any.
    pub fn topic_storage_error(&self, topic: &str) -> Option<(i32, String)> {
        self.failed
            .read()
            .iter()
            .filter(|((t, _), _)| t.as_ref() == topic)
            .map(|((_, p), f)| (*p, f.error.clone()))
            .min_by_key(|(p, _)| *p)
    }

    fn open_partition(
        &self,
        topic: &Arc<str>,
        index: i32,
        topic_id: Uuid,
        (leader_epoch, leader): (i32, i32),
        log_config: &strom_storage::LogConfig,
    ) -> Result<Arc<Partition>, StorageError> {
        let tp = TopicPartition::new(topic.as_ref(), index);
        if let Some(existing) = self.logs.get(&tp) {
            match read_topic_id(existing.dir()) {
                StoredTopicId::Id(id) if id == topic_id => {}
                StoredTopicId::Id(_) => {
                    tracing::warn!(partition = %tp, "deleting a log of an earlier topic of the same name");
                    self.logs.delete(&tp)?;
                }
                // Never delete data for want of this file: it is written
                // before the first append, so the log belongs to the topic
                // of this name unless it names another.
                StoredTopicId::Missing => {
                    tracing::error!(partition = %tp, file = PARTITION_METADATA_FILE, "the partition's metadata file is missing; keeping the log and rewriting the file with the topic id from the metadata image");
                }
                StoredTopicId::Unreadable(why) => {
                    tracing::error!(partition = %tp, file = PARTITION_METADATA_FILE, error = %why, "the partition's metadata file is unreadable; keeping the log and rewriting the file with the topic id from the metadata image");
                }
            }
        }
        let log = self.logs.get_or_create(&tp, log_config.clone())?;
        if *log.config() != *log_config {
            log.set_config(log_config.clone());
        }
        write_topic_id(log.dir(), topic_id).map_err(|e| StorageError::Io {
            path: log.dir().display().to_string(),
            source: e,
        })?;
        // Kafka starts a partition's high watermark from the checkpoint
        // (0 when it is not there); a log from before this file existed had
        // everything committed.
        let high_watermark = match &self.checkpointed {
            None => log.log_end_offset(),
            Some(map) => map.get(&(Arc::clone(topic), index)).copied().unwrap_or(0),
        };
        let partition = Partition::with_high_watermark(
            Arc::clone(topic),
            index,
            topic_id,
            log,
            self.node_id,
            (leader_epoch, leader),
            high_watermark,
        )
        .in_log_dir(Arc::clone(&self.log_dir));
        partition.set_replica_lag_time_max_ms(self.replica_lag_time_max_ms);
        Ok(Arc::new(partition))
    }

    fn remove(&self, key: &PartitionKey) -> Result<(), StorageError> {
        if let Some(partition) = self.partitions.write().remove(key) {
            partition.wake_waiters();
        }
        self.logs
            .delete(&TopicPartition::new(key.0.as_ref(), key.1))?;
        Ok(())
    }

    /// Every partition, for metrics and tests.
    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions.read().values().cloned().collect()
    }

    /// Partitions of `topic`, by index.
    pub fn topic_partitions(&self, topic: &str) -> BTreeMap<i32, Arc<Partition>> {
        self.partitions
            .read()
            .iter()
            .filter(|((t, _), _)| t.as_ref() == topic)
            .map(|((_, p), partition)| (*p, Arc::clone(partition)))
            .collect()
    }
}

/// The high watermarks of `replication-offset-checkpoint` in `data_dir`:
/// `None` when there is no file (a data directory from before replication:
/// every log's end counts; the broker writes the file at start, so a later
/// crash finds it), none at all when it is unreadable (the error is logged).
fn read_high_watermarks(data_dir: &Path) -> Option<HashMap<PartitionKey, i64>> {
    let path = data_dir.join(REPLICATION_OFFSET_CHECKPOINT);
    let parsed = strom_storage::checkpoint::read(&path).and_then(|entries| {
        entries
            .map(|e| strom_storage::checkpoint::parse_partition_offsets(&e))
            .transpose()
    });
    match parsed {
        Ok(entries) => entries.map(|entries| {
            entries
                .into_iter()
                .map(|(topic, partition, offset)| ((Arc::from(topic.as_str()), partition), offset))
                .collect()
        }),
        Err(e) => {
            // Not the log ends: what they hold past the real high watermarks
            // may never have been committed. Leaders of one replica move to
            // their log end at once; the others learn it from their leader.
            tracing::error!(path = %path.display(), error = %e, "the high watermark checkpoint is unreadable; starting every partition's high watermark at 0");
            Some(HashMap::new())
        }
    }
}

/// Kafka's `partition.metadata`: `version: 0` and `topic_id: <id>`.
fn write_topic_id(dir: &Path, topic_id: Uuid) -> std::io::Result<()> {
    let path = dir.join(PARTITION_METADATA_FILE);
    let text = format!(
        "version: 0\ntopic_id: {}\n",
        strom_controller::controller::kafka_uuid_string(&topic_id)
    );
    if fs::read_to_string(&path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut file = fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
    }
    fs::rename(&tmp, &path)?;
    strom_storage::checkpoint::sync_dir(dir)
}

/// What a partition directory's `partition.metadata` says.
#[derive(Debug, PartialEq, Eq)]
enum StoredTopicId {
    Id(Uuid),
    Missing,
    /// Present but empty, garbled or unreadable: why.
    Unreadable(String),
}

fn read_topic_id(dir: &Path) -> StoredTopicId {
    let text = match fs::read(dir.join(PARTITION_METADATA_FILE)) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return StoredTopicId::Missing,
        Err(e) => return StoredTopicId::Unreadable(e.to_string()),
    };
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("topic_id:"))
        .map(str::trim);
    match id.and_then(strom_controller::controller::parse_kafka_uuid) {
        Some(id) => StoredTopicId::Id(id),
        None if text.is_empty() => StoredTopicId::Unreadable("the file is empty".to_owned()),
        None => StoredTopicId::Unreadable("no valid topic_id line".to_owned()),
    }
}

/// Why a partition's log could not be brought in line with the image.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    /// What was tried, for the log line.
    action: &'static str,
    /// The storage error, as clients are told it.
    error: String,
}

impl Failure {
    fn new(action: &'static str, error: &StorageError) -> Self {
        Self {
            action,
            error: error.to_string(),
        }
    }
}

/// Partitions an image could not be applied to, with their storage errors.
#[derive(Debug, thiserror::Error)]
#[error("{} partition(s) failed: {}", failed.len(), summary(failed))]
pub struct ApplyError {
    /// Each failed partition and its storage error.
    pub failed: Vec<(TopicPartition, String)>,
}

/// The first few failures, for a log line of bounded length.
fn summary(failed: &[(TopicPartition, String)]) -> String {
    /// Failures named in one message; the rest are counted.
    const NAMED_MAX: usize = 3;
    let mut named: Vec<String> = failed
        .iter()
        .take(NAMED_MAX)
        .map(|(tp, e)| format!("{tp}: {e}"))
        .collect();
    if failed.len() > NAMED_MAX {
        named.push(format!("and {} more", failed.len() - NAMED_MAX));
    }
    named.join("; ")
}
