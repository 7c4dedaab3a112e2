//! The group coordinator: consumer groups (classic and KIP-848) and their
//! committed offsets.
//!
//! ```text
//! request ──> lock the coordinator ──> group state machine ──> records
//!                                                              │
//!             answer <── deliver parked replies <── append to __consumer_offsets
//! ```
//!
//! Every change that must survive a restart (a committed offset, a group's
//! members and assignment) is appended to the group's partition of the
//! internal compacted topic `__consumer_offsets` before anyone is answered,
//! while the coordinator lock is held, so the log order is the order of the
//! changes. At start the coordinator replays those partitions.
//!
//! One lock for all groups keeps this simple and correct; appends are
//! page-cache writes of a few hundred bytes, so the lock is held for
//! microseconds. Long waits (a JoinGroup parked until the rebalance ends)
//! never hold it: they wait on a channel the group answers later.

pub mod assignor;
pub mod classic;
pub mod consumer;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strom_controller::controller::CreateTopicRequest;
use strom_controller::{MetadataImage, PartitionImage};
use strom_protocol::error_code::ErrorCode;
use strom_storage::{AppendError, AppendOrigin};
use tokio::sync::Mutex;

use crate::broker::Broker;
use crate::config::{ConfigError, parse_prop as prop};
use crate::replica::ReplicaManager;
use assignor::Assignor;
use classic::{ClassicGroup, Outbox};
use consumer::ConsumerGroup;
use store::{GroupValue, OFFSETS_TOPIC, OffsetValue, Record};

/// How often timers run (session expiry, rebalance and join timeouts).
const TICK: Duration = Duration::from_millis(100);
/// Offset tombstones in one append to the offsets topic: a tombstone's key
/// (group id, topic, partition) is at most about 540 bytes, so 1000 of them
/// stay within the topic's default `max.message.bytes` of 1 MiB.
const MAX_TOMBSTONES_PER_BATCH: usize = 1000;
/// Bound on timer settings, so deadlines computed from them cannot overflow
/// (Kafka's are ints: about 24 days).
const MAX_TIMER_MS: i64 = i32::MAX as i64;
/// Kafka's `offsets.topic.segment.bytes` default.
const OFFSETS_SEGMENT_BYTES: &str = "104857600";

/// Removes `key` from `map` only while it still maps to `holder` (a static
/// instance id or a partition that may have moved on to someone else).
fn remove_if_held<K: std::hash::Hash + Eq>(map: &mut HashMap<K, String>, key: &K, holder: &str) {
    if map.get(key).is_some_and(|h| h == holder) {
        map.remove(key);
    }
}

/// The coordinator's settings, from broker properties with Kafka's names.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// `group.min.session.timeout.ms`, default 6 s.
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`, default 30 minutes.
    pub max_session_timeout_ms: i32,
    /// `group.initial.rebalance.delay.ms`, default 3 s.
    pub initial_rebalance_delay_ms: i64,
    /// `group.max.size` (classic), default unbounded.
    pub max_size: Option<usize>,
    /// `offsets.topic.num.partitions`, default 50.
    pub offsets_partitions: i32,
    /// `offsets.topic.replication.factor`, default 3 (capped by the brokers
    /// there are when the topic is created).
    pub offsets_replication_factor: i16,
    /// `offsets.retention.minutes`, default 7 days, in ms.
    pub offsets_retention_ms: i64,
    /// `offsets.retention.check.interval.ms`, default 10 minutes.
    pub offsets_retention_check_interval_ms: i64,
    /// `offset.metadata.max.bytes`, default 4096.
    pub offset_metadata_max_bytes: usize,
    /// `group.consumer.heartbeat.interval.ms`, default 5 s.
    pub consumer_heartbeat_interval_ms: i32,
    /// `group.consumer.session.timeout.ms`, default 45 s.
    pub consumer_session_timeout_ms: i32,
    /// `group.consumer.max.size`, default unbounded.
    pub consumer_max_size: Option<usize>,
    /// `group.consumer.assignors`, default `uniform,range`; the first is
    /// the default.
    pub consumer_assignors: Vec<Assignor>,
}

fn positive<T: PartialOrd + Default + std::fmt::Display>(
    name: &str,
    v: T,
) -> Result<T, ConfigError> {
    if v > T::default() {
        Ok(v)
    } else {
        Err(ConfigError(format!("{name}: must be positive, got {v}")))
    }
}

impl GroupConfig {
    /// Reads and checks the group properties.
    pub fn from_properties(props: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let max_size = |name: &str| -> Result<Option<usize>, ConfigError> {
            let v: i64 = prop(props, name, i64::from(i32::MAX))?;
            let v = positive(name, v)?;
            Ok(usize::try_from(v).ok().filter(|v| *v < i32::MAX as usize))
        };
        let assignors = props
            .get("group.consumer.assignors")
            .map_or("uniform,range", String::as_str)
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|name| {
                // Kafka also accepts the class names.
                let short = name
                    .rsplit('.')
                    .next()
                    .unwrap_or(name)
                    .trim_end_matches("Assignor")
                    .to_ascii_lowercase();
                Assignor::from_name(&short).ok_or_else(|| {
                    ConfigError(format!(
                        "group.consumer.assignors: unknown assignor {name:?} (uniform and range exist)"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if assignors.is_empty() {
            return Err(ConfigError(
                "group.consumer.assignors: must name at least one assignor".into(),
            ));
        }
        let mut config = Self {
            min_session_timeout_ms: positive(
                "group.min.session.timeout.ms",
                prop(props, "group.min.session.timeout.ms", 6_000)?,
            )?,
            max_session_timeout_ms: positive(
                "group.max.session.timeout.ms",
                prop(props, "group.max.session.timeout.ms", 1_800_000)?,
            )?,
            initial_rebalance_delay_ms: prop::<i64>(
                props,
                "group.initial.rebalance.delay.ms",
                3_000,
            )?
            .max(0),
            max_size: max_size("group.max.size")?,
            offsets_partitions: positive(
                "offsets.topic.num.partitions",
                prop(props, "offsets.topic.num.partitions", 50)?,
            )?,
            offsets_replication_factor: positive(
                "offsets.topic.replication.factor",
                prop(props, "offsets.topic.replication.factor", 3)?,
            )?,
            offsets_retention_ms: positive(
                "offsets.retention.minutes",
                prop::<i64>(props, "offsets.retention.minutes", 10_080)?,
            )?
            .saturating_mul(60_000),
            offsets_retention_check_interval_ms: positive(
                "offsets.retention.check.interval.ms",
                prop(props, "offsets.retention.check.interval.ms", 600_000)?,
            )?,
            offset_metadata_max_bytes: prop(props, "offset.metadata.max.bytes", 4096)?,
            consumer_heartbeat_interval_ms: positive(
                "group.consumer.heartbeat.interval.ms",
                prop(props, "group.consumer.heartbeat.interval.ms", 5_000)?,
            )?,
            consumer_session_timeout_ms: positive(
                "group.consumer.session.timeout.ms",
                prop(props, "group.consumer.session.timeout.ms", 45_000)?,
            )?,
            consumer_max_size: max_size("group.consumer.max.size")?,
            consumer_assignors: assignors,
        };
        config.initial_rebalance_delay_ms =
            config.initial_rebalance_delay_ms.clamp(0, MAX_TIMER_MS);
        config.offsets_retention_check_interval_ms =
            config.offsets_retention_check_interval_ms.min(MAX_TIMER_MS);
        if config.min_session_timeout_ms > config.max_session_timeout_ms {
            return Err(ConfigError(
                "group.min.session.timeout.ms must not exceed group.max.session.timeout.ms".into(),
            ));
        }
        Ok(config)
    }

    /// `uniform, range`, for error messages.
    pub fn assignor_names(&self) -> String {
        self.consumer_assignors
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join(", ")
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
    /// the same; [`GroupCoordinator::open`] mirrors it).
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

/// The group coordinator of this broker.
#[derive(Debug)]
pub struct GroupCoordinator {
    pub config: GroupConfig,
    state: Mutex<GroupState>,
}

impl GroupCoordinator {
    /// Rebuilds the groups and offsets from the local partitions of the
    /// offsets topic. Transactional offset commits count once their commit
    /// marker follows; those of transactions still open stay pending.
    pub fn open(config: GroupConfig, replicas: &ReplicaManager, now_ms: i64) -> Self {
        let mut state = GroupState::default();
        let mut records = 0usize;
        for (index, partition) in replicas.topic_partitions(OFFSETS_TOPIC) {
            let from = partition.log.log_start_offset();
            // Records of open transactions in this partition, by producer.
            let mut open_txns: HashMap<i64, Vec<Record>> = HashMap::new();
            let result = partition.log.for_each_batch_from(from, |_, header, bytes| {
                if header.is_control() {
                    let pending = open_txns.remove(&header.producer_id).unwrap_or_default();
                    if store::is_commit_marker(bytes) {
                        for record in pending {
                            state.apply(record, &config, now_ms);
                        }
                    }
                    return;
                }
                let decoded = store::decode(&Bytes::copy_from_slice(bytes));
                records += decoded.len();
                if header.is_transactional() {
                    open_txns
                        .entry(header.producer_id)
                        .or_default()
                        .extend(decoded);
                    return;
                }
                for record in decoded {
                    if let Some((group, topic, partition)) = record.offset_tombstone() {
                        for pending in open_txns.values_mut() {
                            pending.retain(|r| !r.is_offset_of(group, topic, partition));
                        }
                    }
                    state.apply(record, &config, now_ms);
                }
            });
            if let Err(e) = result {
                tracing::error!(partition = index, error = %e, "reading the offsets topic failed; groups in this partition may be incomplete");
            }
            for (producer_id, pending) in open_txns {
                for record in pending {
                    if let Record::Offset(
                        store::RecordKey::Offset {
                            group,
                            topic,
                            partition,
                        },
                        Some(value),
                    ) = record
                    {
                        state
                            .pending_txn_offsets
                            .entry(producer_id)
                            .or_default()
                            .entry(group)
                            .or_default()
                            .insert((topic, partition), value);
                    }
                }
            }
        }
        // A group known only by its offsets is an empty classic group.
        let offset_groups: Vec<String> = state.offsets.keys().cloned().collect();
        for group in offset_groups {
            state
                .groups
                .entry(group.clone())
                .or_insert_with(|| Group::Classic(ClassicGroup::new(&group, now_ms)));
        }
        if records > 0 {
            tracing::info!(
                groups = state.groups.len(),
                records,
                "group coordinator loaded {OFFSETS_TOPIC}"
            );
        }
        state.next_expiry_check_ms = now_ms + config.offsets_retention_check_interval_ms;
        Self {
            config,
            state: Mutex::new(state),
        }
    }

    /// The coordinator state, locked. Keep the guard while persisting the
    /// changes made under it ([`GroupCoordinator::persist`]).
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, GroupState> {
        self.state.lock().await
    }

    /// Runs timers until the broker shuts down.
    pub async fn run_timers(broker: Arc<Broker>) {
        broker.groups.drop_offsets_of_missing_topics(&broker).await;
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = broker.shutdown.cancelled() => return,
                _ = interval.tick() => broker.groups.tick(&broker).await,
            }
        }
    }

    async fn tick(&self, broker: &Arc<Broker>) {
        let mut state = self.lock().await;
        let now = broker.clock.now_ms();
        let image = broker.image();
        let mut outbox = Vec::new();
        let mut changed = Vec::new();
        for (id, group) in &mut state.groups {
            let persist = match group {
                Group::Classic(g) => {
                    let mut out = Outbox::default();
                    g.tick(now, &self.config, &mut out);
                    let persist = out.persist;
                    outbox.push(out);
                    persist
                }
                Group::Consumer(g) => g.tick(now, &image, &self.config),
            };
            if persist {
                changed.push(id.clone());
            }
        }
        for id in changed {
            let record = state.group_record(&id, &self.config);
            if let Err(e) = self.persist(broker, &id, vec![record]).await {
                tracing::warn!(group = %id, error = ?e, "could not persist a group change");
            }
        }
        for out in outbox {
            out.deliver();
        }
        if now >= state.next_expiry_check_ms {
            state.next_expiry_check_ms = now + self.config.offsets_retention_check_interval_ms;
            self.expire(broker, &mut state, now).await;
        }
    }

    /// Offsets past `offsets.retention.minutes` go; so do empty groups with
    /// no offsets left (Kafka's rules: an empty group's offsets count from
    /// when it became empty, a standalone consumer's from the commit, and
    /// offsets of topics a live group subscribes to never expire).
    async fn expire(&self, broker: &Arc<Broker>, state: &mut GroupState, now: i64) {
        let retention = self.config.offsets_retention_ms;
        let mut per_group: Vec<(String, Vec<Record>)> = Vec::new();
        let group_ids: BTreeSet<String> = state
            .groups
            .keys()
            .chain(state.offsets.keys())
            .cloned()
            .collect();
        for id in group_ids {
            let group = state.groups.get(&id);
            let mut records = Vec::new();
            if let Some(offsets) = state.offsets.get_mut(&id) {
                let expired: Vec<(String, i32)> = offsets
                    .iter()
                    .filter(|((topic, _), v)| {
                        let base = match group {
                            Some(Group::Classic(g)) if g.protocol_type.is_none() => {
                                v.commit_timestamp_ms
                            }
                            Some(g) if g.is_empty() => g.empty_since_ms(),
                            Some(g) if g.subscribes_to(topic) => return false,
                            Some(_) | None => v.commit_timestamp_ms,
                        };
                        now.saturating_sub(base) >= retention
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                for (topic, partition) in expired {
                    offsets.remove(&(topic.clone(), partition));
                    records.push(Record::offset(&id, &topic, partition, None));
                }
            }
            let no_offsets = state.offsets.get(&id).is_none_or(BTreeMap::is_empty);
            if no_offsets {
                state.offsets.remove(&id);
                if state.groups.get(&id).is_some_and(Group::is_empty) {
                    state.groups.remove(&id);
                    records.push(Record::group(&id, None));
                }
            }
            if !records.is_empty() {
                per_group.push((id, records));
            }
        }
        for (id, records) in per_group {
            tracing::info!(group = %id, records = records.len(), "expired offsets or group");
            state.forget_pending_offsets(&records);
            if let Err(e) = self.persist(broker, &id, records).await {
                tracing::warn!(group = %id, error = ?e, "could not persist expired offsets");
            }
        }
    }

    /// After topics are deleted: every group's offsets of them go, committed
    /// ones and those pending in open transactions (tombstones in the offsets
    /// topic), and so do empty groups left with no offsets, as Kafka's
    /// `onPartitionsDeleted` does, so that a topic created again under the
    /// name does not inherit old positions.
    pub async fn on_topics_deleted(&self, broker: &Arc<Broker>, topics: &BTreeSet<String>) {
        if topics.is_empty() {
            return;
        }
        let mut state = self.lock().await;
        // Per group, the partitions of deleted topics it has offsets of.
        let mut doomed: BTreeMap<String, BTreeSet<(String, i32)>> = BTreeMap::new();
        for (group, offsets) in &state.offsets {
            for key in offsets.keys().filter(|(topic, _)| topics.contains(topic)) {
                doomed.entry(group.clone()).or_default().insert(key.clone());
            }
        }
        for groups in state.pending_txn_offsets.values() {
            for (group, offsets) in groups {
                for key in offsets.keys().filter(|(topic, _)| topics.contains(topic)) {
                    doomed.entry(group.clone()).or_default().insert(key.clone());
                }
            }
        }
        for (id, keys) in doomed {
            let mut records: Vec<Record> = keys
                .iter()
                .map(|(topic, partition)| Record::offset(&id, topic, *partition, None))
                .collect();
            state.forget_pending_offsets(&records);
            if let Some(offsets) = state.offsets.get_mut(&id) {
                offsets.retain(|key, _| !keys.contains(key));
                if offsets.is_empty() {
                    state.offsets.remove(&id);
                }
            }
            if !state.offsets.contains_key(&id)
                && !state.has_pending_offsets(&id)
                && state.groups.get(&id).is_some_and(Group::is_empty)
            {
                state.groups.remove(&id);
                records.push(Record::group(&id, None));
            }
            // In batches the offsets topic takes (its max.message.bytes).
            while !records.is_empty() {
                let rest = records.split_off(records.len().min(MAX_TOMBSTONES_PER_BATCH));
                if let Err(e) = self.persist(broker, &id, records).await {
                    // The next start drops them again (offsets of topics
                    // that no longer exist), and writes the tombstones.
                    tracing::warn!(group = %id, error = ?e, "could not remove the offsets of deleted topics");
                }
                records = rest;
            }
        }
    }

    /// At start: offsets of topics that no longer exist (their deletion's
    /// tombstones were not written before a crash) go as if the topics were
    /// deleted now.
    async fn drop_offsets_of_missing_topics(&self, broker: &Arc<Broker>) {
        let image = broker.image();
        let missing: BTreeSet<String> = {
            let state = self.lock().await;
            let pending = state
                .pending_txn_offsets
                .values()
                .flat_map(|groups| groups.values());
            state
                .offsets
                .values()
                .chain(pending)
                .flat_map(|offsets| offsets.keys())
                .filter(|(topic, _)| image.topic(topic).is_none())
                .map(|(topic, _)| topic.clone())
                .collect()
        };
        if !missing.is_empty() {
            tracing::info!(topics = ?missing, "dropping committed offsets of deleted topics");
            self.on_topics_deleted(broker, &missing).await;
        }
    }

    /// Appends `records` to the group's partition of the offsets topic
    /// (creating the topic on first use). Call with the state lock held.
    pub async fn persist(
        &self,
        broker: &Arc<Broker>,
        group_id: &str,
        records: Vec<Record>,
    ) -> Result<(), ErrorCode> {
        if records.is_empty() {
            return Ok(());
        }
        let broker_for_task = Arc::clone(broker);
        let group = group_id.to_owned();
        let config = self.config.clone();
        crate::api::blocking(move || append(&broker_for_task, &config, &group, &records))
            .await
            .unwrap_or(Err(ErrorCode::UnknownServerError))
    }

    /// Appends offsets committed in a transaction (TxnOffsetCommit) to the
    /// group's partition as a transactional batch of the producer, and keeps
    /// them pending until the transaction ends. Call with the state lock held.
    pub async fn persist_txn_offsets(
        &self,
        broker: &Arc<Broker>,
        state: &mut GroupState,
        group_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        offsets: Vec<(String, i32, OffsetValue)>,
    ) -> Result<(), ErrorCode> {
        if offsets.is_empty() {
            return Ok(());
        }
        let records: Vec<Record> = offsets
            .iter()
            .map(|(t, p, v)| Record::offset(group_id, t, *p, Some(v.clone())))
            .collect();
        let broker_for_task = Arc::clone(broker);
        let group = group_id.to_owned();
        let config = self.config.clone();
        crate::api::blocking(move || {
            append_txn(
                &broker_for_task,
                &config,
                &group,
                &records,
                producer_id,
                producer_epoch,
            )
        })
        .await
        .unwrap_or(Err(ErrorCode::UnknownServerError))?;
        let pending = state
            .pending_txn_offsets
            .entry(producer_id)
            .or_default()
            .entry(group_id.to_owned())
            .or_default();
        for (t, p, v) in offsets {
            pending.insert((t, p), v);
        }
        Ok(())
    }

    /// A transaction marker of `producer_id` reached `partition` of the
    /// offsets topic: the producer's pending offsets of the groups there take
    /// effect (commit) or go (abort).
    pub async fn complete_txn(
        &self,
        broker: &Broker,
        producer_id: i64,
        partition: i32,
        commit: bool,
    ) {
        let partitions = broker
            .image()
            .topic(OFFSETS_TOPIC)
            .map_or(self.config.offsets_partitions, |t| {
                i32::try_from(t.partitions.len()).unwrap_or(i32::MAX)
            });
        let mut state = self.lock().await;
        let Some(mut by_group) = state.pending_txn_offsets.remove(&producer_id) else {
            return;
        };
        let now = broker.clock.now_ms();
        let ended: Vec<String> = by_group
            .keys()
            .filter(|g| store::partition_for(g, partitions) == partition)
            .cloned()
            .collect();
        for group in ended {
            let Some(offsets) = by_group.remove(&group) else {
                continue;
            };
            if commit {
                if !state.groups.contains_key(&group) {
                    state.classic_or_create(&group, now);
                }
                state.offsets.entry(group).or_default().extend(offsets);
            }
        }
        if !by_group.is_empty() {
            state.pending_txn_offsets.insert(producer_id, by_group);
        }
    }

    /// Why this broker cannot coordinate `group_id`, if it cannot.
    pub fn coordinator_error(&self, broker: &Broker, group_id: &str) -> Option<ErrorCode> {
        let image = broker.image();
        let partitions = image.topic(OFFSETS_TOPIC).map(|t| t.partitions.len())?;
        let index = store::partition_for(group_id, i32::try_from(partitions).unwrap_or(i32::MAX));
        match image.partition(OFFSETS_TOPIC, index) {
            Some(p) if p.leader == broker.node_id => None,
            Some(p) if p.leader < 0 => Some(ErrorCode::CoordinatorNotAvailable),
            _ => Some(ErrorCode::NotCoordinator),
        }
    }
}

/// The leader of `group_id`'s partition of the offsets topic, creating the
/// topic when it does not exist yet.
pub fn coordinator_for(
    broker: &Broker,
    config: &GroupConfig,
    group_id: &str,
) -> Result<i32, ErrorCode> {
    let image = ensure_offsets_topic(broker, config)?;
    let (_, partition) =
        offsets_partition(&image, group_id).ok_or(ErrorCode::CoordinatorNotAvailable)?;
    if partition.leader < 0 {
        return Err(ErrorCode::CoordinatorNotAvailable);
    }
    Ok(partition.leader)
}

fn offsets_partition<'a>(
    image: &'a MetadataImage,
    group_id: &str,
) -> Option<(i32, &'a PartitionImage)> {
    let count = image.topic(OFFSETS_TOPIC)?.partitions.len();
    let index = store::partition_for(group_id, i32::try_from(count).ok()?);
    Some((index, image.partition(OFFSETS_TOPIC, index)?))
}

/// Creates `__consumer_offsets` if it is missing (Kafka does so on the first
/// FindCoordinator or commit), and returns the image that has it.
fn ensure_offsets_topic(
    broker: &Broker,
    config: &GroupConfig,
) -> Result<Arc<MetadataImage>, ErrorCode> {
    let image = broker.image();
    if image.topic(OFFSETS_TOPIC).is_some() {
        return Ok(image);
    }
    let brokers = i16::try_from(image.brokers.len())
        .unwrap_or(i16::MAX)
        .max(1);
    let request = CreateTopicRequest {
        name: OFFSETS_TOPIC.to_owned(),
        num_partitions: config.offsets_partitions,
        replication_factor: config.offsets_replication_factor.min(brokers),
        assignments: Vec::new(),
        configs: BTreeMap::from([
            ("cleanup.policy".to_owned(), "compact".to_owned()),
            ("compression.type".to_owned(), "producer".to_owned()),
            ("segment.bytes".to_owned(), OFFSETS_SEGMENT_BYTES.to_owned()),
        ]),
    };
    let created = broker.controller.create_topics(vec![request], false);
    match created.into_iter().next() {
        Some(Ok(_)) => tracing::info!("created {OFFSETS_TOPIC}"),
        Some(Err(e)) if e.code == ErrorCode::TopicAlreadyExists => {}
        Some(Err(e)) => {
            tracing::error!(error = %e, "cannot create {OFFSETS_TOPIC}");
            return Err(ErrorCode::CoordinatorNotAvailable);
        }
        None => return Err(ErrorCode::CoordinatorNotAvailable),
    }
    // Failures elsewhere are logged and retried by the replica manager;
    // only this topic's matter here.
    let _ = broker.apply_metadata();
    if let Some((partition, e)) = broker.replicas.topic_storage_error(OFFSETS_TOPIC) {
        tracing::error!(partition, error = %e, "cannot open the partitions of {OFFSETS_TOPIC}");
        return Err(ErrorCode::CoordinatorNotAvailable);
    }
    Ok(broker.image())
}

/// Appends the transactional batch of a TxnOffsetCommit. The producer's
/// epoch is checked by the log (an older one is fenced); sequences are not
/// (Kafka writes these batches with sequence 0 too).
fn append_txn(
    broker: &Broker,
    config: &GroupConfig,
    group_id: &str,
    records: &[Record],
    producer_id: i64,
    producer_epoch: i16,
) -> Result<(), ErrorCode> {
    let image = ensure_offsets_topic(broker, config)?;
    let (index, meta) =
        offsets_partition(&image, group_id).ok_or(ErrorCode::CoordinatorNotAvailable)?;
    if meta.leader != broker.node_id {
        return Err(ErrorCode::NotCoordinator);
    }
    let partition = broker
        .replicas
        .get(OFFSETS_TOPIC, index)
        .ok_or(ErrorCode::CoordinatorNotAvailable)?;
    let batch = store::encode_txn(records, broker.clock.now_ms(), producer_id, producer_epoch)
        .map_err(|e| {
            tracing::error!(error = %e, "cannot encode group records");
            ErrorCode::UnknownServerError
        })?;
    match partition.append_as_leader(&batch, AppendOrigin::Coordinator) {
        Ok(_) => Ok(()),
        Err(e) => Err(offsets_append_error(
            &e,
            index,
            &[ErrorCode::InvalidProducerEpoch],
        )),
    }
}

fn append(
    broker: &Broker,
    config: &GroupConfig,
    group_id: &str,
    records: &[Record],
) -> Result<(), ErrorCode> {
    let image = ensure_offsets_topic(broker, config)?;
    let (index, meta) =
        offsets_partition(&image, group_id).ok_or(ErrorCode::CoordinatorNotAvailable)?;
    if meta.leader != broker.node_id {
        return Err(ErrorCode::NotCoordinator);
    }
    let partition = broker
        .replicas
        .get(OFFSETS_TOPIC, index)
        .ok_or(ErrorCode::CoordinatorNotAvailable)?;
    let batch = store::encode(records, broker.clock.now_ms()).map_err(|e| {
        tracing::error!(error = %e, "cannot encode group records");
        ErrorCode::UnknownServerError
    })?;
    match partition.append_as_leader(&batch, AppendOrigin::Coordinator) {
        Ok(_) => Ok(()),
        Err(e) => Err(offsets_append_error(&e, index, &[])),
    }
}

/// The group coordinator's answer when appending to its partition `index`
/// of the offsets topic fails: a too-large batch is
/// INVALID_COMMIT_OFFSET_SIZE, as in Kafka; what the coordinator cannot
/// write is logged and COORDINATOR_NOT_AVAILABLE.
fn offsets_append_error(e: &AppendError, index: i32, passed: &[ErrorCode]) -> ErrorCode {
    let code = crate::api::produce::coordinator_append_error(
        e,
        passed,
        ErrorCode::InvalidCommitOffsetSize,
        ErrorCode::CoordinatorNotAvailable,
    );
    if code == ErrorCode::CoordinatorNotAvailable {
        tracing::error!(partition = index, error = %e, "appending to {OFFSETS_TOPIC} failed");
    }
    code
}
