//! The partitions this broker holds: their logs, leader epochs and high
//! watermarks, kept in line with the metadata image.
//!
//! A partition directory carries Kafka's `partition.metadata` file naming its
//! topic id, so a log left over from a deleted topic (a crash between the
//! metadata change and the deletion of the files) is never served as part of
//! a new topic of the same name.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};
use strom_controller::{METADATA_TOPIC, MetadataImage};
use strom_protocol::messages::Uuid;
use strom_storage::{LogManager, PartitionLog, StorageError, TopicPartition};
use tokio::sync::Notify;

use crate::config::BrokerConfig;

/// Kafka's per-partition file holding the topic id.
const PARTITION_METADATA_FILE: &str = "partition.metadata";
/// Bound on long-poll fetches waiting on one partition; beyond it the oldest
/// waiters are dropped (they time out and answer with what they have).
const MAX_WAITERS_PER_PARTITION: usize = 10_000;

/// A partition by topic name and index.
type PartitionKey = (Arc<str>, i32);

/// One partition held by this broker.
#[derive(Debug)]
pub struct Partition {
    pub topic: Arc<str>,
    pub index: i32,
    pub topic_id: Uuid,
    pub log: Arc<PartitionLog>,
    leader_epoch: AtomicI32,
    /// Offset below which every in-sync replica has the data. On a single
    /// node the in-sync replica set is the leader alone: the log end offset.
    high_watermark: AtomicI64,
    /// Fetches waiting for data on this partition.
    waiters: Mutex<Vec<Weak<Notify>>>,
}

impl Partition {
    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch.load(Ordering::Acquire)
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    /// The last stable offset (KIP-98): the high watermark, or the first
    /// offset of the oldest transaction that is open or whose marker the
    /// high watermark has not passed, whichever is lower.
    pub fn last_stable_offset(&self) -> i64 {
        let high_watermark = self.high_watermark();
        self.log
            .first_unstable_offset()
            .map_or(high_watermark, |first| first.min(high_watermark))
    }

    /// After an append: the in-sync replicas (just this broker) have the data.
    pub fn advance_high_watermark(&self) {
        let log_end_offset = self.log.log_end_offset();
        let previous = self
            .high_watermark
            .fetch_max(log_end_offset, Ordering::AcqRel);
        // Retention and the cleaner never pass the high watermark.
        self.log.set_high_watermark(previous.max(log_end_offset));
        assert!(
            previous <= log_end_offset || self.log.log_end_offset() < previous,
            "high watermark {previous} above log end offset {log_end_offset}"
        );
        self.wake_waiters();
    }

    /// Registers a fetch to be woken when data arrives.
    pub fn add_waiter(&self, waiter: &Arc<Notify>) {
        let mut waiters = self.waiters.lock();
        waiters.retain(|w| w.strong_count() > 0);
        if waiters.len() >= MAX_WAITERS_PER_PARTITION {
            waiters.remove(0);
        }
        waiters.push(Arc::downgrade(waiter));
    }

    fn wake_waiters(&self) {
        let waiters = std::mem::take(&mut *self.waiters.lock());
        for waiter in waiters.iter().filter_map(Weak::upgrade) {
            waiter.notify_one();
        }
    }
}

/// The set of partitions on this broker.
#[derive(Debug)]
pub struct ReplicaManager {
    node_id: i32,
    logs: Arc<LogManager>,
    partitions: RwLock<HashMap<PartitionKey, Arc<Partition>>>,
    /// Serialises applying images (creating and deleting logs).
    apply: Mutex<()>,
}

impl ReplicaManager {
    pub fn new(node_id: i32, logs: Arc<LogManager>) -> Self {
        Self {
            node_id,
            logs,
            partitions: RwLock::new(HashMap::new()),
            apply: Mutex::new(()),
        }
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
    pub fn apply_image(
        &self,
        image: &MetadataImage,
        config: &BrokerConfig,
    ) -> Result<(), StorageError> {
        let _guard = self.apply.lock();
        let mut wanted: HashSet<PartitionKey> = HashSet::new();
        for topic in image.topics() {
            let name: Arc<str> = Arc::from(topic.name.as_str());
            let log_config = config.log_config(image, &topic.configs);
            for p in &topic.partitions {
                if !p.replicas.contains(&self.node_id) {
                    continue;
                }
                let key = (Arc::clone(&name), p.partition);
                wanted.insert(key.clone());
                let existing = self.partitions.read().get(&key).cloned();
                match existing {
                    Some(partition) if partition.topic_id == topic.id => {
                        partition
                            .leader_epoch
                            .store(p.leader_epoch, Ordering::Release);
                        if *partition.log.config() != log_config {
                            partition.log.set_config(log_config.clone());
                        }
                    }
                    stale => {
                        if stale.is_some() {
                            self.remove(&key)?;
                        }
                        let partition = self.open_partition(
                            &name,
                            p.partition,
                            topic.id,
                            p.leader_epoch,
                            &log_config,
                        )?;
                        self.partitions.write().insert(key, partition);
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
            self.remove(&key)?;
        }
        // Logs on disk that no partition owns: left by a crash mid-deletion.
        for (tp, _) in self.logs.logs() {
            if tp.topic != METADATA_TOPIC
                && !wanted.contains(&(Arc::from(tp.topic.as_str()), tp.partition))
            {
                tracing::info!(partition = %tp, "deleting a log whose topic no longer exists");
                self.logs.delete(&tp)?;
            }
        }
        Ok(())
    }

    fn open_partition(
        &self,
        topic: &Arc<str>,
        index: i32,
        topic_id: Uuid,
        leader_epoch: i32,
        log_config: &strom_storage::LogConfig,
    ) -> Result<Arc<Partition>, StorageError> {
        let tp = TopicPartition::new(topic.as_ref(), index);
        if let Some(existing) = self.logs.get(&tp)
            && read_topic_id(existing.dir()) != Some(topic_id)
        {
            tracing::info!(partition = %tp, "deleting a log of an earlier topic of the same name");
            self.logs.delete(&tp)?;
        }
        let log = self.logs.get_or_create(&tp, log_config.clone())?;
        if *log.config() != *log_config {
            log.set_config(log_config.clone());
        }
        write_topic_id(log.dir(), topic_id).map_err(|e| StorageError::Io {
            path: log.dir().display().to_string(),
            source: e,
        })?;
        let high_watermark = log.log_end_offset();
        log.set_high_watermark(high_watermark);
        Ok(Arc::new(Partition {
            topic: Arc::clone(topic),
            index,
            topic_id,
            log,
            leader_epoch: AtomicI32::new(leader_epoch),
            high_watermark: AtomicI64::new(high_watermark),
            waiters: Mutex::new(Vec::new()),
        }))
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

fn read_topic_id(dir: &Path) -> Option<Uuid> {
    let text = fs::read_to_string(dir.join(PARTITION_METADATA_FILE)).ok()?;
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("topic_id:"))?
        .trim();
    strom_controller::controller::parse_kafka_uuid(id)
}
