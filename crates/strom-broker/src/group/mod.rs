//! The group coordinator: consumer groups (classic and KIP-848) and their
//! committed offsets, sharded by the partitions of `__consumer_offsets`.
//!
//! ```text
//! request ──> shard of the group's partition ──> lock the shard ──> group state machine ──> records
//!                                                                                            │
//!             answer <── deliver parked replies <── append to the shard's partition <───────┘
//! ```
//!
//! # Layout
//!
//! - this file: [`GroupConfig`], [`Group`], [`GroupState`] (what one shard
//!   knows) and [`GroupCoordinator`]: routing a group to its shard, loading
//!   and unloading shards as this broker gains and loses the leadership of
//!   offsets partitions (`on_elected`, `on_resigned`, `sync`), and the timers.
//! - [`shard`]: [`GroupShard`], one partition's groups behind their own lock,
//!   its appends, timers and expiry, and the replay that loads it.
//! - [`classic`], [`consumer`], [`assignor`]: the group state machines
//!   (classic protocol, KIP-848, server-side assignors). They never do I/O.
//! - [`store`]: the records kept in `__consumer_offsets` and the partition
//!   of a group (Kafka's hash).
//!
//! Every change that must survive a restart (a committed offset, a group's
//! members and assignment) is appended to the group's partition of the
//! internal compacted topic `__consumer_offsets` before anyone is answered,
//! while the lock of that partition's shard is held, so the log order is the
//! order of the changes. When this broker becomes the leader of a partition
//! the shard is loaded by replaying it (Kafka's `CoordinatorRuntime`); while
//! it loads its groups answer COORDINATOR_LOAD_IN_PROGRESS, and once this
//! broker no longer leads it, NOT_COORDINATOR.
//!
//! One lock per shard: a group's changes are serialised with those of the
//! other groups of its partition only, and groups of other partitions never
//! wait for it. Appends are page-cache writes of a few hundred bytes, so a
//! shard's lock is held for microseconds. Long waits (a JoinGroup parked
//! until the rebalance ends) never hold it: they wait on a channel the group
//! answers later, or the shard's unloading.
//!
//! Nothing here sees the broker: the coordinator is handed the partitions
//! ([`crate::coordinator::CoordinatorLog`]), the clock and the metadata
//! image. Creating `__consumer_offsets` (the controller) is the API layer's
//! (`api::group`); [`GroupConfig::offsets_topic_request`] says what to create.

pub mod assignor;
pub mod classic;
pub mod consumer;
pub mod shard;
pub mod store;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use strom_controller::controller::CreateTopicRequest;
use strom_controller::{MetadataImage, PartitionImage};
use strom_protocol::error_code::ErrorCode;
use strom_storage::Clock;
use tokio_util::sync::CancellationToken;

pub use crate::config::GroupConfig;
use crate::coordinator::{CoordinatorLog, Shards};
use crate::partition::Partition;
use classic::ClassicGroup;
use consumer::ConsumerGroup;
pub use shard::GroupShard;
use store::{GroupValue, OFFSETS_TOPIC, OffsetValue, Record};

/// How often timers run (session expiry, rebalance and join timeouts).
const TICK: Duration = Duration::from_millis(100);
/// Offset tombstones in one append to the offsets topic: a tombstone's key
/// (group id, topic, partition) is at most about 540 bytes, so 1000 of them
/// stay within the topic's default `max.message.bytes` of 1 MiB.
pub(crate) const MAX_TOMBSTONES_PER_BATCH: usize = 1000;
/// Kafka's `offsets.topic.segment.bytes` default.
const OFFSETS_SEGMENT_BYTES: &str = "104857600";

/// Removes `key` from `map` only while it still maps to `holder` (a static
/// instance id or a partition that may have moved on to someone else).
fn remove_if_held<K: std::hash::Hash + Eq>(map: &mut HashMap<K, String>, key: &K, holder: &str) {
    if map.get(key).is_some_and(|h| h == holder) {
        map.remove(key);
    }
}

impl GroupConfig {
    /// How `__consumer_offsets` is created (Kafka does so on the first
    /// FindCoordinator or commit), when `brokers` brokers are registered:
    /// compacted, with Kafka's segment size, replicated at most on every
    /// broker there is.
    pub fn offsets_topic_request(&self, brokers: usize) -> CreateTopicRequest {
        let brokers = i16::try_from(brokers).unwrap_or(i16::MAX).max(1);
        CreateTopicRequest {
            name: OFFSETS_TOPIC.to_owned(),
            num_partitions: self.offsets_partitions,
            replication_factor: self.offsets_replication_factor.min(brokers),
            assignments: Vec::new(),
            configs: BTreeMap::from([
                ("cleanup.policy".to_owned(), "compact".to_owned()),
                ("compression.type".to_owned(), "producer".to_owned()),
                ("segment.bytes".to_owned(), OFFSETS_SEGMENT_BYTES.to_owned()),
            ]),
        }
    }
}

/// A group of either protocol.
#[derive(Debug)]
pub enum Group {
    Classic(ClassicGroup),
    Consumer(ConsumerGroup),
}

impl Group {
    pub fn is_empty(&self) -> bool {
        match self {
            Self::Classic(g) => g.is_empty(),
            Self::Consumer(g) => g.is_empty(),
        }
    }

    pub fn state_name(&self) -> &'static str {
        match self {
            Self::Classic(g) => g.state.name(),
            Self::Consumer(g) => g.state_name(),
        }
    }

    /// ListGroups' protocol type: `consumer` for KIP-848 groups.
    pub fn protocol_type(&self) -> String {
        match self {
            Self::Classic(g) => g.protocol_type.clone().unwrap_or_default(),
            Self::Consumer(_) => "consumer".to_owned(),
        }
    }

    /// ListGroups' group type (KIP-848).
    pub fn group_type(&self) -> &'static str {
        match self {
            Self::Classic(_) => "classic",
            Self::Consumer(_) => "consumer",
        }
    }

    fn empty_since_ms(&self) -> i64 {
        match self {
            Self::Classic(g) => g.empty_since_ms,
            Self::Consumer(g) => g.empty_since_ms,
        }
    }

    /// Whether offsets of `topic` are in use (never expire, cannot be
    /// deleted): a member subscribes to it.
    pub fn subscribes_to(&self, topic: &str) -> bool {
        match self {
            Self::Classic(g) => g.subscribed_topics().contains(topic),
            Self::Consumer(g) => g.subscribed_topics().contains(topic),
        }
    }

    fn to_value(&self, config: &GroupConfig) -> GroupValue {
        match self {
            Self::Classic(g) => g.to_value(),
            Self::Consumer(g) => g.to_value(config),
        }
    }
}

/// Committed offsets of one group, by topic and partition.
pub type GroupOffsets = BTreeMap<(String, i32), OffsetValue>;

/// Everything the coordinator knows.
#[derive(Debug, Default)]
pub struct GroupState {
    pub groups: HashMap<String, Group>,
    pub offsets: HashMap<String, GroupOffsets>,
    /// Offsets committed in open transactions (TxnOffsetCommit), by producer
    /// id and group: they take effect when the transaction's marker reaches
    /// the group's partition of the offsets topic, and go when it aborts.
    /// Bounded by the transactions' partitions (each entry was appended to
    /// the log first, under `offsets.topic`'s size limits).
    pub pending_txn_offsets: HashMap<i64, HashMap<String, GroupOffsets>>,
    next_expiry_check_ms: i64,
}

impl GroupState {
    /// After offset tombstones are in the log: offsets of the same
    /// partitions pending in open transactions go too, so that a later
    /// commit does not bring them back (Kafka's replay of a tombstone does
    /// the same; the replay in [`shard`] mirrors it).
    pub fn forget_pending_offsets(&mut self, tombstones: &[Record]) {
        for (group, topic, partition) in tombstones.iter().filter_map(Record::offset_tombstone) {
            let key = (topic.to_owned(), partition);
            self.pending_txn_offsets.retain(|_, groups| {
                if let Some(offsets) = groups.get_mut(group) {
                    offsets.remove(&key);
                    if offsets.is_empty() {
                        groups.remove(group);
                    }
                }
                !groups.is_empty()
            });
        }
    }

    /// Whether an open transaction holds offsets of `group`.
    pub fn has_pending_offsets(&self, group: &str) -> bool {
        self.pending_txn_offsets
            .values()
            .any(|groups| groups.contains_key(group))
    }

    /// The group's record, as it is now (a tombstone once it is gone).
    pub fn group_record(&self, group_id: &str, config: &GroupConfig) -> Record {
        Record::group(
            group_id,
            self.groups.get(group_id).map(|g| g.to_value(config)),
        )
    }

    /// The classic group `group_id`, created empty when missing (or when an
    /// empty KIP-848 group of that name is taken over). `None` when a
    /// non-empty KIP-848 group has the name.
    pub fn classic_or_create(&mut self, group_id: &str, now_ms: i64) -> Option<&mut ClassicGroup> {
        let replace = match self.groups.get(group_id) {
            None => true,
            Some(Group::Consumer(g)) => g.is_empty(),
            Some(Group::Classic(_)) => false,
        };
        if replace {
            self.groups.insert(
                group_id.to_owned(),
                Group::Classic(ClassicGroup::new(group_id, now_ms)),
            );
        }
        match self.groups.get_mut(group_id) {
            Some(Group::Classic(g)) => Some(g),
            _ => None,
        }
    }

    /// The KIP-848 group `group_id`, created when missing (or when an empty
    /// classic group of that name is taken over). `None` when a non-empty
    /// classic group has the name.
    pub fn consumer_or_create(
        &mut self,
        group_id: &str,
        now_ms: i64,
    ) -> Option<&mut ConsumerGroup> {
        let replace = match self.groups.get(group_id) {
            None => true,
            Some(Group::Classic(g)) => g.is_empty(),
            Some(Group::Consumer(_)) => false,
        };
        if replace {
            self.groups.insert(
                group_id.to_owned(),
                Group::Consumer(ConsumerGroup::new(group_id, now_ms)),
            );
        }
        match self.groups.get_mut(group_id) {
            Some(Group::Consumer(g)) => Some(g),
            _ => None,
        }
    }

    fn apply(&mut self, record: Record, config: &GroupConfig, now_ms: i64) {
        match record {
            Record::Offset(
                store::RecordKey::Offset {
                    group,
                    topic,
                    partition,
                },
                value,
            ) => match value {
                Some(v) => {
                    self.offsets
                        .entry(group)
                        .or_default()
                        .insert((topic, partition), v);
                }
                None => {
                    if let Some(offsets) = self.offsets.get_mut(&group) {
                        offsets.remove(&(topic, partition));
                    }
                }
            },
            Record::Group(store::RecordKey::Group { group }, value) => {
                let restored = value.and_then(|v| match &v {
                    GroupValue::Classic { .. } => {
                        ClassicGroup::from_value(&group, v, now_ms).map(Group::Classic)
                    }
                    GroupValue::Consumer { .. } => {
                        ConsumerGroup::from_value(&group, v, now_ms, config).map(Group::Consumer)
                    }
                });
                match restored {
                    Some(g) => {
                        self.groups.insert(group, g);
                    }
                    None => {
                        self.groups.remove(&group);
                    }
                }
            }
            other => {
                tracing::warn!(key = ?other.key(), "skipping a mismatched record in the offsets topic")
            }
        }
    }
}

/// The group coordinator of this broker: one shard per partition of
/// `__consumer_offsets` this broker leads.
#[derive(Debug)]
pub struct GroupCoordinator {
    /// The group and offset settings, read once at start.
    pub config: GroupConfig,
    /// The time of every deadline, commit and expiry (a seam for tests);
    /// each shard gets a clone for the timestamps of its records.
    clock: Arc<dyn Clock>,
    /// The shards by partition index: a partition's groups are served only
    /// while its shard is active (this broker leads it and has replayed it).
    shards: Shards<GroupShard>,
}

impl GroupCoordinator {
    /// A coordinator with no shard: nothing is served until partitions are
    /// elected ([`Self::sync`], [`Self::on_elected`]).
    pub fn new(config: GroupConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            config,
            clock,
            shards: Shards::default(),
        }
    }

    /// The shard of offsets partition `index`: NOT_COORDINATOR when this
    /// broker does not lead it, COORDINATOR_LOAD_IN_PROGRESS while it loads.
    pub fn shard(&self, index: i32) -> Result<Arc<GroupShard>, ErrorCode> {
        self.shards.get(index)
    }

    /// The shard of `group_id` when `__consumer_offsets` has
    /// `partition_count` partitions.
    pub fn shard_of(
        &self,
        group_id: &str,
        partition_count: i32,
    ) -> Result<Arc<GroupShard>, ErrorCode> {
        self.shards
            .get(store::partition_for(group_id, partition_count))
    }

    /// The shard of `group_id` as `image` places it: COORDINATOR_NOT_AVAILABLE
    /// when the offsets topic is missing or the partition has no leader (as
    /// before the coordinator was sharded), else [`Self::shard`]'s answer.
    pub fn shard_for(
        &self,
        image: &MetadataImage,
        group_id: &str,
    ) -> Result<Arc<GroupShard>, ErrorCode> {
        let (index, partition) =
            offsets_partition(image, group_id).ok_or(ErrorCode::CoordinatorNotAvailable)?;
        match self.shards.get(index) {
            Err(ErrorCode::NotCoordinator) if partition.leader < 0 => {
                Err(ErrorCode::CoordinatorNotAvailable)
            }
            other => other,
        }
    }

    /// Every loaded shard, in partition order (listing groups, metrics).
    pub fn active_shards(&self) -> Vec<Arc<GroupShard>> {
        self.shards
            .active()
            .into_iter()
            .map(|(_, shard)| shard)
            .collect()
    }

    /// This broker became the leader of offsets partition `index` at
    /// `epoch`: replays `log` into a fresh shard and makes it active (Kafka's
    /// `onElection`). Blocking (reads the partition). Returns whether a
    /// shard was loaded: not when the partition is already loading or
    /// loaded at this epoch or a newer one, nor when it was resigned while
    /// loading.
    pub fn on_elected(&self, index: i32, epoch: i32, log: Arc<dyn CoordinatorLog>) -> bool {
        if !self.shards.elected(index, epoch) {
            return false;
        }
        let now = self.clock.now_ms();
        let state = shard::load(log.as_ref(), &self.config, now);
        let shard = GroupShard::new(
            log,
            Arc::clone(&self.clock),
            state,
            Duration::from_millis(self.config.offsets_commit_timeout_ms),
        );
        let loaded = self.shards.loaded(index, epoch, shard);
        if loaded {
            tracing::debug!(partition = index, epoch, "group coordinator shard active");
        }
        loaded
    }

    /// This broker no longer leads offsets partition `index` (`epoch` is the
    /// newer leader epoch, `None` when the partition went): its shard is
    /// dropped (Kafka's `onResignation`). JoinGroup and SyncGroup requests
    /// parked in its groups are answered NOT_COORDINATOR, and a change in
    /// flight is not appended; clients look the coordinator up again.
    pub fn on_resigned(&self, index: i32, epoch: Option<i32>) {
        if let Some(shard) = self.shards.resigned(index, epoch) {
            shard.unload();
            tracing::debug!(
                partition = index,
                ?epoch,
                "group coordinator shard unloaded"
            );
        }
    }

    /// Brings the shards in line with the local partitions of
    /// `__consumer_offsets` (by index): elects those this broker leads, at
    /// their leader epoch, and resigns the rest and those gone. Idempotent;
    /// blocking (loads replay partitions): call it off the async threads.
    pub fn sync(&self, partitions: &BTreeMap<i32, Arc<Partition>>) {
        for index in self.shards.indexes() {
            if !partitions.contains_key(&index) {
                self.on_resigned(index, None);
            }
        }
        for (&index, partition) in partitions {
            // A partition deleted and created again is another log: the
            // shard over the old one goes first.
            if let Ok(shard) = self.shards.get(index)
                && !shard.is_over(partition)
            {
                self.on_resigned(index, None);
            }
            if partition.is_leader() {
                let log: Arc<dyn CoordinatorLog> = Arc::clone(partition) as _;
                self.on_elected(index, partition.leader_epoch(), log);
            } else {
                self.on_resigned(index, Some(partition.leader_epoch()));
            }
        }
    }

    /// Runs the timers of every active shard (session expiry, rebalance and
    /// join timeouts, offset expiry) until `shutdown`, with the metadata
    /// image `image` gives at each tick.
    pub async fn run_timers(
        &self,
        image: impl Fn() -> Arc<MetadataImage>,
        shutdown: CancellationToken,
    ) {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = interval.tick() => self.tick(&image()).await,
            }
        }
    }

    /// One round of timers over the active shards, one shard at a time.
    pub async fn tick(&self, image: &MetadataImage) {
        for shard in self.active_shards() {
            shard.tick(image, &self.config).await;
        }
    }

    /// After topics are deleted: every group's offsets of them go, in every
    /// active shard (see [`GroupShard::on_topics_deleted`]).
    pub async fn on_topics_deleted(&self, topics: &BTreeSet<String>) {
        if topics.is_empty() {
            return;
        }
        // Together: each waits for its tombstones' replication (up to
        // `offsets.commit.timeout.ms`), and the publisher waits for all.
        let shards = self.active_shards();
        futures::future::join_all(shards.iter().map(|shard| shard.on_topics_deleted(topics))).await;
    }

    /// A transaction marker of `producer_id` reached `partition` of the
    /// offsets topic: the producer's pending offsets of the groups there take
    /// effect (commit) or go (abort). Nothing to do when this broker does
    /// not coordinate the partition: its next load replays the marker.
    pub async fn complete_txn(&self, producer_id: i64, partition: i32, commit: bool) {
        if let Ok(shard) = self.shards.get(partition) {
            shard.complete_txn(producer_id, commit).await;
        }
    }
}

/// The partition of `__consumer_offsets` holding `group_id`, by index, as
/// `image` has it.
pub fn offsets_partition<'a>(
    image: &'a MetadataImage,
    group_id: &str,
) -> Option<(i32, &'a PartitionImage)> {
    let count = image.topic(OFFSETS_TOPIC)?.partitions.len();
    let index = store::partition_for(group_id, i32::try_from(count).ok()?);
    Some((index, image.partition(OFFSETS_TOPIC, index)?))
}
