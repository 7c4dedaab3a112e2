//! The consumer: assigned or subscribed partitions in, records out.
//!
//! A background fetcher keeps one Fetch request in flight per leader for the
//! partitions that have a position, are not paused, and have less than
//! `max.partition.fetch.bytes` buffered; so while the application works
//! through what [`Consumer::poll`] returned, the next records are already on
//! their way (fetch pipelining). Positions start from the group's committed
//! offset, else from `auto.offset.reset`; a position the log no longer has
//! (OFFSET_OUT_OF_RANGE) resets the same way.
//!
//! [`Consumer::subscribe`] joins the `group.id` with the classic group
//! protocol, as the Java client does from `poll`: a rebalance (learned from
//! a heartbeat, sent every `heartbeat.interval.ms` by a background task)
//! happens in the next `poll`, which first commits (with auto commit),
//! tells the [`RebalanceListener`] what is revoked, rejoins, and tells it what
//! is assigned. The leader assigns with `range` or `roundrobin`
//! (`partition.assignment.strategy`), the two assignors librdkafka and the
//! Java client offer by default, so groups mixing these clients agree; or
//! with the application's own [`PartitionAssignor`]s
//! ([`Consumer::with_assignors`]).
//!
//! With `isolation.level=read_committed` fetches stop at the last stable
//! offset and records of aborted transactions are dropped, using the aborted
//! transactions the broker lists in each fetch response.

pub mod assignor;
mod group;
mod kip848;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use parking_lot::Mutex;
use strom_protocol::messages::StrBytes;
use strom_protocol::messages::kafka::{
    BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, TopicName,
    fetch_request::{FetchPartition, FetchTopic},
    list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
};
use strom_protocol::record::{ControlRecordType, records};
use strom_protocol::record_batch::{TimestampType, batches, validate_batch};
use tokio::sync::Notify;

use crate::cluster::{Cluster, Route};
use crate::config::{COMMON, ClientConfig, NetworkConfig};
use crate::error::{Error, ErrorCode, Result};
use crate::group::{self as classic, GroupSettings, Membership};
pub use assignor::{
    Assignment, PartitionAssignor, RangeAssignor, RoundRobinAssignor, Subscription,
};

/// Fetch v12 is the newest that names topics (v13 switches to topic ids).
const FETCH_VERSION: i16 = 12;
const LIST_OFFSETS_VERSION: i16 = 8;

/// How many fetch answers (`max.partition.fetch.bytes` each) a partition may
/// hold buffered before it is fetched again: the depth of fetch pipelining.
const PREFETCH_FETCHES: usize = 3;

/// How long a partition that had nothing new waits before it is fetched
/// again while other partitions keep the consumer busy (fetches then do not
/// long-poll): the most extra latency its next record can see then.
const IDLE_FETCH_BACKOFF: Duration = Duration::from_millis(10);

/// ListOffsets' special timestamps.
const EARLIEST: i64 = -2;
const LATEST: i64 = -1;

/// The most a single batch may decompress to. A broker's batches are bounded
/// by `message.max.bytes` (1 MiB by default, at most 2 GiB); 256 MiB covers
/// any sane topic while a hostile or corrupt batch cannot exhaust memory.
const MAX_DECOMPRESSED_BATCH: usize = 256 * 1024 * 1024;

/// The properties the consumer reads, besides [`COMMON`].
const CONSUMER: &[&str] = &[
    "group.id",
    "group.instance.id",
    "group.protocol",
    "auto.offset.reset",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "isolation.level",
    "fetch.min.bytes",
    "fetch.max.bytes",
    "fetch.max.wait.ms",
    "max.partition.fetch.bytes",
    "max.poll.records",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "partition.assignment.strategy",
    "group.remote.assignor",
    "check.crcs",
];

/// A topic and partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: topic.to_owned(),
            partition,
        }
    }
}

/// A record read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// Create time, or the broker's append time for a LogAppendTime topic.
    pub timestamp: i64,
    pub timestamp_type: TimestampType,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Who a consumer is in its group, for
/// [`Producer::send_offsets_to_transaction`](crate::Producer::send_offsets_to_transaction):
/// the group coordinator refuses offsets from a member of an older
/// generation (KIP-447).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupMetadata {
    pub group_id: String,
    /// -1 and an empty member id for a consumer outside group management.
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
}

impl ConsumerGroupMetadata {
    /// A group's metadata without a member (offsets committed by assign-mode
    /// consumers).
    pub fn new(group_id: &str) -> Self {
        Self {
            group_id: group_id.to_owned(),
            generation_id: -1,
            member_id: String::new(),
            group_instance_id: None,
        }
    }
}

/// Where [`Consumer::seek`] moves a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offset {
    Beginning,
    End,
    At(i64),
    /// The first record at or after this timestamp (ms), else the end.
    Timestamp(i64),
}

/// Told about partitions moving in and out of a subscribed consumer; called
/// from inside [`Consumer::poll`].
pub trait RebalanceListener: Send + Sync {
    /// Before a rebalance; with auto commit, positions are committed first.
    fn on_partitions_revoked(&self, _partitions: &[TopicPartition]) {}
    /// After a rebalance, before records of the new assignment are returned.
    fn on_partitions_assigned(&self, _partitions: &[TopicPartition]) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AutoReset {
    Earliest,
    Latest,
    None,
}

#[derive(Debug, Clone)]
struct Settings {
    group_id: Option<String>,
    instance_id: Option<String>,
    auto_reset: AutoReset,
    auto_commit: bool,
    auto_commit_interval: Duration,
    read_committed: bool,
    fetch_min_bytes: i32,
    fetch_max_bytes: i32,
    fetch_max_wait: Duration,
    max_partition_fetch_bytes: i32,
    max_poll_records: usize,
    group: GroupSettings,
    heartbeat_interval: Duration,
    check_crcs: bool,
    /// `group.protocol=consumer`: KIP-848's protocol.
    consumer_protocol: bool,
    remote_assignor: Option<String>,
    /// `partition.assignment.strategy`: the built-in assignors offered, in
    /// order of preference.
    strategies: Vec<String>,
}

impl Settings {
    fn from_config(config: &ClientConfig) -> Result<Self> {
        config.check_known(&[COMMON, CONSUMER])?;
        let auto_reset = match config.get("auto.offset.reset").map(str::trim) {
            None | Some("latest") => AutoReset::Latest,
            Some("earliest") => AutoReset::Earliest,
            Some("none") => AutoReset::None,
            Some(other) => {
                return Err(Error::config(
                    "auto.offset.reset",
                    format!("{other:?} is not earliest, latest or none"),
                ));
            }
        };
        let read_committed = match config.get("isolation.level").map(str::trim) {
            None | Some("read_uncommitted") => false,
            Some("read_committed") => true,
            Some(other) => {
                return Err(Error::config(
                    "isolation.level",
                    format!("{other:?} is not read_committed or read_uncommitted"),
                ));
            }
        };
        let consumer_protocol = match config.get("group.protocol").map(str::trim) {
            None | Some("classic") => false,
            Some("consumer") => true,
            Some(other) => {
                return Err(Error::config(
                    "group.protocol",
                    format!("{other:?} is not classic or consumer"),
                ));
            }
        };
        let mut strategies = Vec::new();
        if let Some(listed) = config.get("partition.assignment.strategy") {
            for s in listed.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if !assignor::BUILT_IN.contains(&s) {
                    return Err(Error::config(
                        "partition.assignment.strategy",
                        format!("{s:?} is not range or roundrobin"),
                    ));
                }
                if !strategies.iter().any(|known| known == s) {
                    strategies.push(s.to_owned());
                }
            }
        }
        if strategies.is_empty() {
            strategies = assignor::BUILT_IN.iter().map(|s| (*s).to_owned()).collect();
        }
        let group_id = config
            .get("group.id")
            .map(str::to_owned)
            .filter(|g| !g.is_empty());
        Ok(Self {
            auto_commit: config.boolean("enable.auto.commit", true)? && group_id.is_some(),
            group_id,
            instance_id: config.get("group.instance.id").map(str::to_owned),
            auto_reset,
            auto_commit_interval: config.millis("auto.commit.interval.ms", 5_000)?,
            read_committed,
            fetch_min_bytes: config.number("fetch.min.bytes", 1)?,
            fetch_max_bytes: config.number("fetch.max.bytes", 52_428_800)?,
            fetch_max_wait: config.millis("fetch.max.wait.ms", 500)?,
            max_partition_fetch_bytes: config.number("max.partition.fetch.bytes", 1_048_576)?,
            max_poll_records: config.number::<usize>("max.poll.records", 500)?.max(1),
            group: GroupSettings {
                session_timeout: config.millis("session.timeout.ms", 45_000)?,
                rebalance_timeout: config.millis("max.poll.interval.ms", 300_000)?,
            },
            heartbeat_interval: config.millis("heartbeat.interval.ms", 3_000)?,
            check_crcs: config.boolean("check.crcs", true)?,
            consumer_protocol,
            remote_assignor: config.get("group.remote.assignor").map(str::to_owned),
            strategies,
        })
    }
}

/// One assigned partition's progress.
#[derive(Debug, Default)]
struct Part {
    /// The next offset to hand to the application; `None` until known.
    position: Option<i64>,
    /// The next offset to fetch: past everything buffered.
    fetch_position: Option<i64>,
    /// Changes on every seek, so answers to older fetches are dropped.
    epoch: u64,
    paused: bool,
    in_flight: bool,
    buffered: VecDeque<ConsumerRecord>,
    buffered_bytes: usize,
    /// The position is to come from the group's committed offset.
    needs_committed: bool,
    /// The position is to come from ListOffsets at this timestamp.
    reset: Option<i64>,
    /// Not fetched before this (after an error).
    not_before: Option<Instant>,
    /// Failed fetches or offset lookups in a row; the backoff before the
    /// next doubles with each (`retry.backoff.ms` to `retry.backoff.max.ms`).
    failures: u32,
    /// An error for the application's next poll.
    error: Option<Error>,
    high_watermark: i64,
}

#[derive(Debug, Default)]
struct State {
    parts: BTreeMap<TopicPartition, Part>,
    subscription: Option<BTreeSet<String>>,
    next_epoch: u64,
    /// Leaders with a fetch in flight.
    fetching: HashSet<i32>,
    /// The group wants a rejoin (from a heartbeat, or a new subscription).
    rejoin: bool,
    /// A classic join is under way: the partitions given up for it are not
    /// assigned again yet.
    joining: bool,
    /// What the last failed heartbeat said, for the rejoin to act on.
    heartbeat_error: Option<Error>,
    /// Where the next poll starts taking records, for fairness.
    cursor: usize,
    /// The membership of the last join.
    group_metadata: Option<ConsumerGroupMetadata>,
    /// The member of a KIP-848 group.
    kip848: Option<kip848::Member>,
    closed: bool,
}

impl State {
    fn epoch(&mut self) -> u64 {
        self.next_epoch += 1;
        self.next_epoch
    }
}

/// What a finished join gives: the membership and the assigned partitions.
type Joined = (Membership, Vec<TopicPartition>);

#[derive(Debug)]
struct GroupCtx {
    membership: Membership,
    joined: bool,
    heartbeat: Option<tokio::task::AbortHandle>,
    /// A join in progress.
    joining: Option<tokio::task::JoinHandle<Result<Joined>>>,
    last_auto_commit: Instant,
}

struct Shared {
    cluster: Arc<Cluster>,
    settings: Settings,
    state: Mutex<State>,
    /// Records, errors or a rebalance for poll.
    data: Notify,
    /// The fetcher should look again.
    fetch_wake: Notify,
    /// A KIP-848 member should heartbeat now (to acknowledge a reconciliation).
    heartbeat_now: Notify,
    group: tokio::sync::Mutex<Option<GroupCtx>>,
    listener: Mutex<Option<Arc<dyn RebalanceListener>>>,
    /// The assignors offered in a classic group, in order of preference.
    assignors: Vec<Arc<dyn PartitionAssignor>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// An asynchronous Kafka consumer.
#[derive(Debug)]
pub struct Consumer {
    shared: Arc<Shared>,
    fetcher: tokio::task::JoinHandle<()>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.fetcher.abort();
        if let Ok(group) = self.shared.group.try_lock()
            && let Some(ctx) = group.as_ref()
        {
            if let Some(heartbeat) = &ctx.heartbeat {
                heartbeat.abort();
            }
            if let Some(joining) = &ctx.joining {
                joining.abort();
            }
        }
    }
}

impl Consumer {
    /// A consumer with `config`'s properties; must be called inside a tokio
    /// runtime (it spawns the fetcher).
    pub fn new(config: &ClientConfig) -> Result<Self> {
        let settings = Settings::from_config(config)?;
        let assignors = settings
            .strategies
            .iter()
            .map(|name| -> Arc<dyn PartitionAssignor> {
                if name == "roundrobin" {
                    Arc::new(RoundRobinAssignor)
                } else {
                    Arc::new(RangeAssignor)
                }
            })
            .collect();
        Self::build(settings, config, assignors)
    }

    /// A consumer whose classic group uses `assignors` (in order of
    /// preference) instead of `partition.assignment.strategy`'s built-ins:
    /// every member of the group must offer one of the same name.
    pub fn with_assignors(
        config: &ClientConfig,
        assignors: Vec<Arc<dyn PartitionAssignor>>,
    ) -> Result<Self> {
        let settings = Settings::from_config(config)?;
        let mut names = BTreeSet::new();
        if assignors.is_empty() || assignors.len() > crate::group::MAX_PROTOCOLS {
            return Err(Error::State(format!(
                "a consumer offers 1 to {} assignors, not {}",
                crate::group::MAX_PROTOCOLS,
                assignors.len()
            )));
        }
        for assignor in &assignors {
            if assignor.name().is_empty() || !names.insert(assignor.name().to_owned()) {
                return Err(Error::State(format!(
                    "assignor names must be unique and not empty: {:?}",
                    assignor.name()
                )));
            }
        }
        Self::build(settings, config, assignors)
    }

    fn build(
        settings: Settings,
        config: &ClientConfig,
        assignors: Vec<Arc<dyn PartitionAssignor>>,
    ) -> Result<Self> {
        let cluster = Arc::new(Cluster::new(NetworkConfig::from_config(config)?));
        let group = settings.group_id.clone().map(|g| GroupCtx {
            membership: Membership::new(g, settings.instance_id.clone()),
            joined: false,
            heartbeat: None,
            joining: None,
            last_auto_commit: Instant::now(),
        });
        let shared = Arc::new(Shared {
            cluster,
            settings,
            state: Mutex::new(State::default()),
            data: Notify::new(),
            fetch_wake: Notify::new(),
            heartbeat_now: Notify::new(),
            group: tokio::sync::Mutex::new(group),
            listener: Mutex::new(None),
            assignors,
        });
        let fetcher = tokio::spawn(run_fetcher(Arc::clone(&shared)));
        Ok(Self { shared, fetcher })
    }

    /// Reads exactly `partitions`, without group management. Positions come
    /// from the committed offsets when a `group.id` is set, else from
    /// `auto.offset.reset`.
    pub fn assign(&self, partitions: &[TopicPartition]) {
        let mut state = self.shared.state.lock();
        state.subscription = None;
        let has_group = self.shared.settings.group_id.is_some();
        let keep: BTreeSet<&TopicPartition> = partitions.iter().collect();
        state.parts.retain(|tp, _| keep.contains(tp));
        for tp in partitions {
            if !state.parts.contains_key(tp) {
                let epoch = state.epoch();
                state.parts.insert(
                    tp.clone(),
                    new_part(epoch, has_group, &self.shared.settings),
                );
            }
        }
        self.shared
            .cluster
            .want(partitions.iter().map(|tp| tp.topic.clone()));
        drop(state);
        self.shared.fetch_wake.notify_one();
    }

    /// Joins `group.id` for `topics`; partitions come with the next
    /// [`Consumer::poll`].
    pub fn subscribe(&self, topics: &[&str]) -> Result<()> {
        if self.shared.settings.group_id.is_none() {
            return Err(Error::config("group.id", "subscribe needs a group.id"));
        }
        let mut state = self.shared.state.lock();
        state.subscription = Some(topics.iter().map(|t| (*t).to_owned()).collect());
        state.rejoin = !self.shared.settings.consumer_protocol;
        if self.shared.settings.consumer_protocol {
            state
                .kip848
                .get_or_insert_with(kip848::Member::new)
                .subscription_changed();
        }
        self.shared
            .cluster
            .want(topics.iter().map(|t| (*t).to_owned()));
        Ok(())
    }

    /// Like [`Consumer::subscribe`], telling `listener` of each rebalance.
    pub fn subscribe_with_listener(
        &self,
        topics: &[&str],
        listener: Arc<dyn RebalanceListener>,
    ) -> Result<()> {
        *self.shared.listener.lock() = Some(listener);
        self.subscribe(topics)
    }

    /// The consumer's group membership, for transactional offset commits:
    /// the last join's generation and member id when subscribed, otherwise
    /// the group alone.
    pub fn group_metadata(&self) -> Option<ConsumerGroupMetadata> {
        let state = self.shared.state.lock();
        if let (Some(m), Some(group)) = (&state.kip848, &self.shared.settings.group_id) {
            return Some(ConsumerGroupMetadata {
                group_id: group.clone(),
                generation_id: m.epoch,
                member_id: m.member_id.clone(),
                group_instance_id: self.shared.settings.instance_id.clone(),
            });
        }
        match (&state.group_metadata, &state.subscription) {
            (Some(meta), Some(_)) => Some(meta.clone()),
            _ => self
                .shared
                .settings
                .group_id
                .as_deref()
                .map(ConsumerGroupMetadata::new),
        }
    }

    /// Whether the next [`Consumer::poll`] rejoins the classic group (a
    /// heartbeat learnt of a rebalance, or the subscription changed): the
    /// moment to commit what was processed, before the partitions may move
    /// (what Kafka Streams does in `onPartitionsRevoked`).
    pub fn rebalance_pending(&self) -> bool {
        let state = self.shared.state.lock();
        state.subscription.is_some() && state.rejoin
    }

    /// Whether a rebalance is pending or under way (a classic join in
    /// progress): the assignment is empty or stale meanwhile, so work tied
    /// to partitions (Kafka Streams' tasks) should wait for the new one
    /// rather than end.
    pub fn rebalance_in_progress(&self) -> bool {
        let state = self.shared.state.lock();
        state.joining || (state.subscription.is_some() && state.rejoin)
    }

    /// The partitions currently assigned.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.shared.state.lock().parts.keys().cloned().collect()
    }

    /// The offset of the next record `poll` returns for `tp`, once known.
    pub fn position(&self, tp: &TopicPartition) -> Option<i64> {
        self.shared
            .state
            .lock()
            .parts
            .get(tp)
            .and_then(|p| p.position)
    }

    /// Moves `tp` (which must be assigned) to `offset`.
    pub fn seek(&self, tp: &TopicPartition, offset: Offset) -> Result<()> {
        let mut state = self.shared.state.lock();
        let epoch = state.epoch();
        let part = state.parts.get_mut(tp).ok_or_else(|| {
            Error::State(format!("{}-{} is not assigned", tp.topic, tp.partition))
        })?;
        part.epoch = epoch;
        part.buffered.clear();
        part.buffered_bytes = 0;
        part.needs_committed = false;
        part.error = None;
        part.reset = None;
        match offset {
            Offset::At(o) => {
                part.position = Some(o);
                part.fetch_position = Some(o);
            }
            Offset::Beginning | Offset::End | Offset::Timestamp(_) => {
                part.position = None;
                part.fetch_position = None;
                part.reset = Some(match offset {
                    Offset::Beginning => EARLIEST,
                    Offset::Timestamp(ts) => ts,
                    _ => LATEST,
                });
            }
        }
        drop(state);
        self.shared.fetch_wake.notify_one();
        Ok(())
    }

    /// Stops returning and fetching records of `partitions` until resumed.
    pub fn pause(&self, partitions: &[TopicPartition]) {
        self.set_paused(partitions, true);
    }

    pub fn resume(&self, partitions: &[TopicPartition]) {
        self.set_paused(partitions, false);
        self.shared.fetch_wake.notify_one();
    }

    fn set_paused(&self, partitions: &[TopicPartition], paused: bool) {
        let mut state = self.shared.state.lock();
        for tp in partitions {
            if let Some(part) = state.parts.get_mut(tp) {
                part.paused = paused;
            }
        }
    }

    /// Up to `max.poll.records` records, waiting at most `timeout` for the
    /// first; empty when none came. Runs the group's rebalances and auto
    /// commits.
    pub async fn poll(&self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        self.poll_records(timeout, self.shared.settings.max_poll_records)
            .await
    }

    /// The records as a stream, one at a time; each record's position is
    /// advanced only when the stream yields it, so a commit between items
    /// never covers a record not yet seen.
    pub fn stream(&self) -> impl Stream<Item = Result<ConsumerRecord>> + '_ {
        futures::stream::unfold(self, |consumer| async move {
            loop {
                match consumer.poll_records(Duration::from_secs(1), 1).await {
                    Ok(mut records) => {
                        if let Some(record) = records.pop() {
                            return Some((Ok(record), consumer));
                        }
                    }
                    Err(error) => return Some((Err(error), consumer)),
                }
            }
        })
    }

    async fn poll_records(&self, timeout: Duration, max: usize) -> Result<Vec<ConsumerRecord>> {
        let deadline = Instant::now() + timeout;
        loop {
            // A rebalance learnt while waiting ends this poll: the next one
            // rejoins, so the application (Kafka Streams, say) can commit
            // what it processed first (see `rebalance_pending`).
            if !self.maintain_group(deadline).await? {
                return Ok(Vec::new());
            }
            self.init_positions().await?;
            let data = self.shared.data.notified();
            tokio::pin!(data);
            data.as_mut().enable();
            {
                let mut state = self.shared.state.lock();
                if state.closed {
                    return Err(Error::Closed);
                }
                if let Some(error) = state.parts.values_mut().find_map(|p| p.error.take()) {
                    return Err(error);
                }
                let records = take_records(&mut state, max);
                if !records.is_empty() {
                    drop(state);
                    self.shared.fetch_wake.notify_one();
                    return Ok(records);
                }
                if state.rejoin {
                    return Ok(Vec::new());
                }
            }
            if tokio::time::timeout_at(deadline.into(), data)
                .await
                .is_err()
                || self.shared.state.lock().rejoin
            {
                return Ok(Vec::new());
            }
        }
    }

    /// Gives partitions without a position the group's committed offset, or
    /// marks them for `auto.offset.reset`.
    async fn init_positions(&self) -> Result<()> {
        let wanted: Vec<TopicPartition> = {
            let state = self.shared.state.lock();
            state
                .parts
                .iter()
                .filter(|(_, p)| p.needs_committed)
                .map(|(tp, _)| tp.clone())
                .collect()
        };
        if wanted.is_empty() {
            return Ok(());
        }
        let committed = {
            let mut group = self.shared.group.lock().await;
            let Some(ctx) = group.as_mut() else {
                return Ok(());
            };
            match group::committed(
                &self.shared.cluster,
                &mut ctx.membership,
                &wanted,
                self.shared.settings.read_committed,
            )
            .await
            {
                Ok(c) => c,
                Err(error) if error.is_retriable() => {
                    tokio::time::sleep(self.shared.cluster.net().retry_backoff).await;
                    return Ok(());
                }
                Err(error) => return Err(error),
            }
        };
        let mut state = self.shared.state.lock();
        let reset = self.shared.settings.auto_reset;
        for tp in wanted {
            if let Some(part) = state.parts.get_mut(&tp).filter(|p| p.needs_committed) {
                part.needs_committed = false;
                match committed.get(&tp).copied().flatten() {
                    Some(offset) => {
                        part.position = Some(offset);
                        part.fetch_position = Some(offset);
                    }
                    None => apply_auto_reset(part, reset, &tp),
                }
            }
        }
        drop(state);
        self.shared.fetch_wake.notify_one();
        Ok(())
    }

    /// Rejoins the group when needed and auto-commits when due. A join runs
    /// in its own task and survives `deadline`: the broker counts a pending
    /// JoinGroup as joined, so abandoning one would lose its answer. Returns
    /// whether the consumer is ready to return records (not still joining).
    async fn maintain_group(&self, deadline: Instant) -> Result<bool> {
        let shared = &self.shared;
        let mut group = shared.group.lock().await;
        let Some(ctx) = group.as_mut() else {
            return Ok(true);
        };
        if shared.settings.consumer_protocol {
            self.maintain_kip848(ctx).await?;
            return Ok(true);
        }
        let (subscription, rejoin, heartbeat_error) = {
            let mut state = shared.state.lock();
            (
                state.subscription.clone(),
                state.rejoin,
                state.heartbeat_error.take(),
            )
        };
        if let Some(error) = &heartbeat_error {
            classic::forget_stale(&mut ctx.membership, error)?;
        }
        if let Some(topics) =
            subscription.filter(|_| (rejoin || !ctx.joined) && ctx.joining.is_none())
        {
            if let Some(heartbeat) = ctx.heartbeat.take() {
                heartbeat.abort();
            }
            let owned = self.assignment();
            if !owned.is_empty() {
                if shared.settings.auto_commit {
                    let offsets = self.positions();
                    if let Err(error) =
                        group::commit(&shared.cluster, &mut ctx.membership, ctx.joined, &offsets)
                            .await
                    {
                        tracing::warn!(%error, "committing before a rebalance failed");
                    }
                }
                if let Some(listener) = shared.listener.lock().clone() {
                    listener.on_partitions_revoked(&owned);
                }
                shared.state.lock().parts.clear();
            }
            ctx.joined = false;
            {
                let mut state = shared.state.lock();
                state.rejoin = false;
                state.joining = true;
            }
            ctx.joining = Some(tokio::spawn(join_until_done(
                Arc::clone(shared),
                ctx.membership.clone(),
                topics,
            )));
        }
        if let Some(joining) = ctx.joining.as_mut() {
            let Ok(joined) = tokio::time::timeout_at(deadline.into(), joining).await else {
                return Ok(false);
            };
            ctx.joining = None;
            shared.state.lock().joining = false;
            let (membership, assigned) =
                joined.map_err(|_| Error::State("the join task failed".into()))??;
            ctx.membership = membership;
            shared.state.lock().group_metadata = Some(ConsumerGroupMetadata {
                group_id: ctx.membership.group.clone(),
                generation_id: ctx.membership.generation,
                member_id: ctx.membership.member_id.clone(),
                group_instance_id: ctx.membership.instance_id.clone(),
            });
            {
                let mut state = shared.state.lock();
                for tp in &assigned {
                    let epoch = state.epoch();
                    state
                        .parts
                        .insert(tp.clone(), new_part(epoch, true, &shared.settings));
                }
            }
            shared
                .cluster
                .want(assigned.iter().map(|tp| tp.topic.clone()));
            ctx.joined = true;
            ctx.heartbeat = Some(spawn_heartbeat(Arc::clone(shared), ctx.membership.clone()));
            if let Some(listener) = shared.listener.lock().clone() {
                listener.on_partitions_assigned(&assigned);
            }
            shared.fetch_wake.notify_one();
        }
        if shared.settings.auto_commit
            && ctx.last_auto_commit.elapsed() >= shared.settings.auto_commit_interval
        {
            ctx.last_auto_commit = Instant::now();
            let offsets = self.positions();
            let member = ctx.joined;
            if let Err(error) =
                group::commit(&shared.cluster, &mut ctx.membership, member, &offsets).await
            {
                tracing::warn!(%error, "auto commit failed");
            }
        }
        Ok(true)
    }

    /// KIP-848: keeps the heartbeat running and reconciles a new assignment.
    async fn maintain_kip848(&self, ctx: &mut GroupCtx) -> Result<()> {
        let shared = &self.shared;
        if shared.state.lock().subscription.is_none() {
            return Ok(());
        }
        if ctx.heartbeat.is_none() {
            ctx.heartbeat = Some(kip848::spawn_heartbeat(Arc::clone(shared)));
        }
        self.sync_kip848_membership(ctx);
        if let Some(change) = kip848::plan(shared).await? {
            if !change.revoked.is_empty() {
                if shared.settings.auto_commit {
                    let revoked: BTreeSet<&TopicPartition> = change.revoked.iter().collect();
                    let offsets: BTreeMap<TopicPartition, i64> = self
                        .positions()
                        .into_iter()
                        .filter(|(tp, _)| revoked.contains(tp))
                        .collect();
                    if let Err(error) =
                        group::commit(&shared.cluster, &mut ctx.membership, true, &offsets).await
                    {
                        tracing::warn!(%error, "committing revoked partitions failed");
                    }
                }
                if let Some(listener) = shared.listener.lock().clone() {
                    listener.on_partitions_revoked(&change.revoked);
                }
            }
            kip848::complete(shared, &change);
            shared
                .cluster
                .want(change.added.iter().map(|tp| tp.topic.clone()));
            ctx.joined = true;
            if !change.added.is_empty()
                && let Some(listener) = shared.listener.lock().clone()
            {
                listener.on_partitions_assigned(&change.added);
            }
        }
        if shared.settings.auto_commit
            && ctx.last_auto_commit.elapsed() >= shared.settings.auto_commit_interval
        {
            ctx.last_auto_commit = Instant::now();
            let offsets = self.positions();
            if let Err(error) =
                group::commit(&shared.cluster, &mut ctx.membership, true, &offsets).await
            {
                tracing::warn!(%error, "auto commit failed");
            }
        }
        Ok(())
    }

    /// Commits of a KIP-848 member carry its id and epoch.
    fn sync_kip848_membership(&self, ctx: &mut GroupCtx) {
        if let Some(m) = &self.shared.state.lock().kip848 {
            ctx.membership.member_id.clone_from(&m.member_id);
            ctx.membership.generation = m.epoch;
            ctx.membership.consumer_protocol = true;
        }
    }

    /// The positions of the assigned partitions that have one.
    pub fn positions(&self) -> BTreeMap<TopicPartition, i64> {
        self.shared
            .state
            .lock()
            .parts
            .iter()
            .filter_map(|(tp, p)| p.position.map(|o| (tp.clone(), o)))
            .collect()
    }

    /// Commits the positions of every assigned partition and waits for the
    /// answer.
    pub async fn commit_sync(&self) -> Result<()> {
        let offsets = self.positions();
        self.commit_offsets(&offsets).await
    }

    /// Commits `offsets` (the next offset to read, per partition) and waits.
    pub async fn commit_offsets(&self, offsets: &BTreeMap<TopicPartition, i64>) -> Result<()> {
        let mut group = self.shared.group.lock().await;
        let ctx = group
            .as_mut()
            .ok_or_else(|| Error::config("group.id", "committing needs a group.id"))?;
        let member = ctx.joined && self.shared.state.lock().subscription.is_some();
        self.sync_kip848_membership(ctx);
        group::commit(&self.shared.cluster, &mut ctx.membership, member, offsets).await
    }

    /// Commits the current positions in the background; failures are logged.
    pub fn commit_async(&self) {
        let offsets = self.positions();
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            let mut group = shared.group.lock().await;
            if let Some(ctx) = group.as_mut() {
                let member = ctx.joined && shared.state.lock().subscription.is_some();
                if let Err(error) =
                    group::commit(&shared.cluster, &mut ctx.membership, member, &offsets).await
                {
                    tracing::warn!(%error, "asynchronous commit failed");
                }
            }
        });
    }

    /// The group's committed offsets of `partitions`.
    pub async fn committed(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, Option<i64>>> {
        let mut group = self.shared.group.lock().await;
        let ctx = group
            .as_mut()
            .ok_or_else(|| Error::config("group.id", "committed offsets need a group.id"))?;
        group::committed(&self.shared.cluster, &mut ctx.membership, partitions, false).await
    }

    /// Commits (with auto commit), leaves the group and stops fetching.
    pub async fn close(self) -> Result<()> {
        let mut result = Ok(());
        {
            let mut group = self.shared.group.lock().await;
            if let Some(ctx) = group.as_mut() {
                if let Some(heartbeat) = ctx.heartbeat.take() {
                    heartbeat.abort();
                }
                if let Some(joining) = ctx.joining.take() {
                    joining.abort();
                }
                self.sync_kip848_membership(ctx);
                if self.shared.settings.auto_commit {
                    let offsets = self.positions();
                    result = group::commit(
                        &self.shared.cluster,
                        &mut ctx.membership,
                        ctx.joined,
                        &offsets,
                    )
                    .await;
                }
                if self.shared.settings.consumer_protocol {
                    if let Err(error) = kip848::heartbeat_once(&self.shared, Some(())).await {
                        tracing::debug!(%error, "leaving the group failed");
                    }
                } else if ctx.joined
                    && let Err(error) = classic::leave(&self.shared.cluster, &ctx.membership).await
                {
                    tracing::debug!(%error, "leaving the group failed");
                }
            }
        }
        self.shared.state.lock().closed = true;
        result
    }
}

fn new_part(epoch: u64, has_group: bool, settings: &Settings) -> Part {
    let mut part = Part {
        epoch,
        needs_committed: has_group,
        high_watermark: -1,
        ..Part::default()
    };
    if !has_group {
        apply_auto_reset(&mut part, settings.auto_reset, &TopicPartition::new("", 0));
    }
    part
}

fn apply_auto_reset(part: &mut Part, reset: AutoReset, tp: &TopicPartition) {
    part.position = None;
    part.fetch_position = None;
    match reset {
        AutoReset::Earliest => part.reset = Some(EARLIEST),
        AutoReset::Latest => part.reset = Some(LATEST),
        AutoReset::None => {
            part.error = Some(Error::State(format!(
                "no offset for {}-{} and auto.offset.reset is none",
                tp.topic, tp.partition
            )));
        }
    }
}

/// Joins the group, retrying what can be retried; returns the membership
/// it ended with and the assigned partitions.
async fn join_until_done(
    shared: Arc<Shared>,
    mut membership: Membership,
    topics: BTreeSet<String>,
) -> Result<Joined> {
    loop {
        let joined = group::join(
            &shared.cluster,
            &mut membership,
            &shared.settings.group,
            &topics,
            &shared.assignors,
        )
        .await;
        match joined {
            Ok(assigned) => return Ok((membership, assigned)),
            Err(error) => {
                let error = classic::after_failed_join(&mut membership, error)?;
                tracing::debug!(%error, "joining the group failed; retrying");
                tokio::time::sleep(shared.cluster.net().retry_backoff).await;
            }
        }
    }
}

/// Takes up to `max` buffered records, partition by partition from where the
/// last call stopped, advancing positions.
fn take_records(state: &mut State, max: usize) -> Vec<ConsumerRecord> {
    let mut out = Vec::new();
    let count = state.parts.len();
    if count == 0 {
        return out;
    }
    let start = state.cursor % count;
    let mut next_cursor = start;
    let mut parts: Vec<&mut Part> = state.parts.values_mut().collect();
    parts.rotate_left(start);
    for (i, part) in parts.into_iter().enumerate() {
        let i = (i + start) % count;
        if part.paused || out.len() >= max {
            continue;
        }
        while out.len() < max {
            let Some(record) = part.buffered.pop_front() else {
                break;
            };
            part.buffered_bytes = part.buffered_bytes.saturating_sub(record_bytes(&record));
            part.position = Some(record.offset.saturating_add(1));
            out.push(record);
        }
        if part.buffered.is_empty() {
            // Past control records and aborted data the fetch skipped.
            part.position = part.fetch_position.or(part.position);
        }
        next_cursor = i + 1;
    }
    state.cursor = next_cursor;
    out
}

fn record_bytes(record: &ConsumerRecord) -> usize {
    record.key.as_ref().map_or(0, Bytes::len) + record.value.as_ref().map_or(0, Bytes::len) + 64
}

fn spawn_heartbeat(shared: Arc<Shared>, membership: Membership) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        let settings = &shared.settings;
        let error = classic::heartbeat_until_rejoin(
            &shared.cluster,
            membership,
            settings.heartbeat_interval,
            settings.group.session_timeout,
        )
        .await;
        let mut state = shared.state.lock();
        state.rejoin = true;
        state.heartbeat_error = Some(error);
        drop(state);
        shared.data.notify_waiters();
    })
    .abort_handle()
}

/// The fetcher: sends Fetch and ListOffsets requests for the assigned
/// partitions until the consumer is dropped.
async fn run_fetcher(shared: Arc<Shared>) {
    loop {
        if let Err(error) = shared.cluster.maybe_refresh().await {
            tracing::debug!(%error, "metadata refresh failed");
        }
        let now = Instant::now();
        let (fetches, resets) = plan(&shared, now);
        for (node, request) in fetches {
            match shared
                .cluster
                .start(Route::Node(node), FETCH_VERSION, &request.0)
                .await
            {
                Ok(in_flight) => {
                    let shared = Arc::clone(&shared);
                    let timeout =
                        shared.cluster.net().request_timeout + shared.settings.fetch_max_wait;
                    tokio::spawn(async move {
                        let result = in_flight.with_timeout(timeout).response().await;
                        handle_fetch(&shared, node, request.1, request.2, result);
                    });
                }
                Err(error) => handle_fetch(&shared, node, request.1, request.2, Err(error)),
            }
        }
        for (node, parts) in resets {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move { reset_offsets(&shared, node, parts).await });
        }
        tokio::select! {
            () = shared.fetch_wake.notified() => {}
            () = tokio::time::sleep(shared.cluster.net().retry_backoff) => {}
        }
    }
}

/// What one fetch asked for: partition, offset and epoch.
type Asked = Vec<(TopicPartition, i64, u64)>;

/// A fetch to send: the request, what it asks for, and whether it may wait
/// (long-poll) for data.
type FetchPlan = (FetchRequest, Asked, bool);

type Plan = (Vec<(i32, FetchPlan)>, Vec<(i32, Vec<Reset>)>);

/// An offset lookup to send: the partition, the reset timestamp, the
/// partition's seek epoch, and its leader epoch from the metadata.
#[derive(Debug)]
struct Reset {
    tp: TopicPartition,
    timestamp: i64,
    epoch: u64,
    leader_epoch: i32,
}

/// The fetches and offset lookups to send now, per leader.
fn plan(shared: &Shared, now: Instant) -> Plan {
    let settings = &shared.settings;
    let mut state = shared.state.lock();
    let State {
        parts, fetching, ..
    } = &mut *state;
    let mut fetch: HashMap<i32, Asked> = HashMap::new();
    let mut resets: HashMap<i32, Vec<Reset>> = HashMap::new();
    // Each partition's leader epoch from the metadata (v7+), sent as
    // `current_leader_epoch` (KIP-320): a leader that moved on answers
    // FENCED_LEADER_EPOCH instead of serving a deposed leader's log.
    let mut leader_epochs: HashMap<TopicPartition, i32> = HashMap::new();
    // Prefetch: a partition is fetched again while it holds less than
    // PREFETCH_FETCHES answers' worth, and all partitions together less than
    // `fetch.max.bytes` (the buffer's bound).
    let per_fetch = usize::try_from(settings.max_partition_fetch_bytes).unwrap_or(usize::MAX);
    let limit = per_fetch.saturating_mul(PREFETCH_FETCHES);
    let total_limit = usize::try_from(settings.fetch_max_bytes).unwrap_or(usize::MAX);
    let mut total: usize = parts.values().map(|p| p.buffered_bytes).sum();
    for (tp, part) in parts.iter_mut() {
        if part.in_flight
            || part.paused
            || part.error.is_some()
            || part.not_before.is_some_and(|t| t > now)
        {
            continue;
        }
        let wants_reset = part.reset.is_some() && !part.needs_committed;
        let wants_fetch = part.fetch_position.is_some()
            && part.buffered_bytes < limit
            && total.saturating_add(per_fetch) <= total_limit.max(per_fetch);
        if !wants_reset && !wants_fetch {
            continue;
        }
        let (leader, leader_epoch) = match shared.cluster.cached_topic(&tp.topic) {
            Some(Ok(info)) => info
                .partition(tp.partition)
                .map_or((-1, -1), |p| (p.leader, p.leader_epoch)),
            _ => (-1, -1),
        };
        if leader < 0 {
            shared.cluster.mark_stale();
            continue;
        }
        leader_epochs.insert(tp.clone(), leader_epoch);
        if let Some(timestamp) = part.reset.filter(|_| wants_reset) {
            part.in_flight = true;
            resets.entry(leader).or_default().push(Reset {
                tp: tp.clone(),
                timestamp,
                epoch: part.epoch,
                leader_epoch,
            });
        } else if let Some(offset) = part.fetch_position.filter(|_| !fetching.contains(&leader)) {
            total = total.saturating_add(per_fetch);
            fetch
                .entry(leader)
                .or_default()
                .push((tp.clone(), offset, part.epoch));
        }
    }
    // While the application has records to work through, a fetch must not
    // park at the broker for `fetch.max.wait.ms`: the broker answers a
    // connection's requests in order, so a parked fetch for idle partitions
    // would hold back the next fetch of the busy ones.
    let busy = parts.values().any(|p| !p.paused && !p.buffered.is_empty());
    let max_wait = if busy {
        0
    } else {
        i32::try_from(settings.fetch_max_wait.as_millis()).unwrap_or(i32::MAX)
    };
    let mut requests = Vec::new();
    for (node, asked) in fetch {
        fetching.insert(node);
        let mut topics: Vec<FetchTopic> = Vec::new();
        for (tp, offset, _) in &asked {
            if let Some(part) = parts.get_mut(tp) {
                part.in_flight = true;
            }
            let partition = FetchPartition::default()
                .with_partition(tp.partition)
                .with_current_leader_epoch(leader_epochs.get(tp).copied().unwrap_or(-1))
                .with_fetch_offset(*offset)
                .with_last_fetched_epoch(-1)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(settings.max_partition_fetch_bytes);
            match topics.iter_mut().find(|t| *t.topic.0 == *tp.topic) {
                Some(topic) => topic.partitions.push(partition),
                None => topics.push(
                    FetchTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(tp.topic.clone())))
                        .with_partitions(vec![partition]),
                ),
            }
        }
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(max_wait)
            .with_min_bytes(settings.fetch_min_bytes)
            .with_max_bytes(settings.fetch_max_bytes)
            .with_isolation_level(i8::from(settings.read_committed))
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(topics);
        requests.push((node, (request, asked, !busy)));
    }
    (requests, resets.into_iter().collect())
}

/// Applies a fetch answer: buffers the records, advances fetch positions,
/// and handles partition errors.
fn handle_fetch(
    shared: &Shared,
    node: i32,
    asked: Asked,
    waited: bool,
    result: Result<FetchResponse>,
) {
    let settings = &shared.settings;
    // Records are decoded before the state is locked, so poll keeps handing
    // out what is buffered meanwhile.
    let offsets: HashMap<(&str, i32), i64> = asked
        .iter()
        .map(|(tp, offset, _)| ((tp.topic.as_str(), tp.partition), *offset))
        .collect();
    let mut answers: HashMap<(String, i32), Answer> = HashMap::new();
    let request_error = match result {
        Ok(response) if response.error_code != 0 => Some(Error::kafka(response.error_code, None)),
        Ok(response) => {
            for topic in response.responses {
                for p in topic.partitions {
                    let key = (topic.topic.0.to_string(), p.partition_index);
                    let Some(&offset) = offsets.get(&(key.0.as_str(), key.1)) else {
                        continue;
                    };
                    let answer = if p.error_code == 0 {
                        let aborted: Vec<(i64, i64)> = p
                            .aborted_transactions
                            .unwrap_or_default()
                            .iter()
                            .map(|a| (a.producer_id.0, a.first_offset))
                            .collect();
                        let tp = TopicPartition::new(&key.0, key.1);
                        Answer::Data {
                            high_watermark: p.high_watermark,
                            decoded: decode_fetched(
                                &tp,
                                offset,
                                p.records.unwrap_or_default(),
                                settings,
                                aborted,
                            ),
                        }
                    } else {
                        Answer::Error(p.error_code)
                    };
                    answers.insert(key, answer);
                }
            }
            None
        }
        Err(error) => Some(error),
    };
    let mut state = shared.state.lock();
    state.fetching.remove(&node);
    let now = Instant::now();
    let cluster = &shared.cluster;
    // After a failure, the partition waits out its own growing backoff.
    let back_off = |part: &mut Part| {
        part.failures = part.failures.saturating_add(1);
        part.not_before = Some(now + cluster.retry_backoff(part.failures));
    };
    if request_error
        .as_ref()
        .is_some_and(Error::needs_metadata_refresh)
    {
        shared.cluster.mark_stale();
    }
    let mut got_data = false;
    for (tp, offset, epoch) in asked {
        let Some(part) = state.parts.get_mut(&tp) else {
            continue;
        };
        part.in_flight = false;
        if part.epoch != epoch || part.fetch_position != Some(offset) {
            continue;
        }
        if request_error.is_some() {
            back_off(part);
            continue;
        }
        let Some(answer) = answers.remove(&(tp.topic.clone(), tp.partition)) else {
            continue;
        };
        let (high_watermark, decoded) = match answer {
            Answer::Data {
                high_watermark,
                decoded,
            } => (high_watermark, decoded),
            Answer::Error(code) if code == ErrorCode::OffsetOutOfRange.code() => {
                tracing::info!(topic = %tp.topic, partition = tp.partition, offset, "offset out of range; resetting");
                apply_auto_reset(part, settings.auto_reset, &tp);
                got_data |= part.error.is_some();
                continue;
            }
            Answer::Error(code) => {
                let error = Error::kafka(code, None);
                // FENCED_LEADER_EPOCH (the metadata is older than the
                // broker's), NOT_LEADER_OR_FOLLOWER and the like: refresh and
                // ask the leader the new metadata names.
                if error.is_retriable() || error.needs_metadata_refresh() {
                    shared.cluster.mark_stale();
                    back_off(part);
                } else {
                    part.error = Some(error);
                    got_data = true;
                }
                continue;
            }
        };
        part.high_watermark = high_watermark;
        part.failures = 0;
        match decoded {
            Ok((records, next)) => {
                for record in records {
                    part.buffered_bytes += record_bytes(&record);
                    part.buffered.push_back(record);
                    got_data = true;
                }
                // An idle partition asked without waiting is asked again
                // a little later, not in a tight loop.
                if !waited && next == offset {
                    part.not_before = Some(now + IDLE_FETCH_BACKOFF);
                }
                part.fetch_position = Some(next);
                if part.buffered.is_empty() {
                    part.position = Some(next);
                }
            }
            Err(error) => {
                part.error = Some(error);
                got_data = true;
            }
        }
    }
    drop(state);
    if got_data {
        shared.data.notify_waiters();
    }
    shared.fetch_wake.notify_one();
}

/// One partition's part of a fetch answer, decoded.
enum Answer {
    Error(i16),
    Data {
        high_watermark: i64,
        decoded: Result<(Vec<ConsumerRecord>, i64)>,
    },
}

/// The records at or after `offset` in fetched `bytes`, and the offset to
/// fetch next. Control batches and (read_committed) aborted transactions are
/// skipped; a partial batch at the end is left for the next fetch.
fn decode_fetched(
    tp: &TopicPartition,
    offset: i64,
    bytes: Bytes,
    settings: &Settings,
    mut aborted: Vec<(i64, i64)>,
) -> Result<(Vec<ConsumerRecord>, i64)> {
    aborted.sort_by_key(|&(_, first)| first);
    let mut aborted = aborted.into_iter().peekable();
    // Producers whose aborted transaction this fetch is inside of.
    let mut aborting: HashSet<i64> = HashSet::new();
    let topic: Arc<str> = Arc::from(tp.topic.as_str());
    let mut out = Vec::new();
    let mut next = offset;
    let corrupt = |reason: String| {
        Error::kafka(
            ErrorCode::CorruptMessage.code(),
            Some(&format!(
                "{}-{} at offset {next_offset}: {reason}",
                tp.topic,
                tp.partition,
                next_offset = offset
            )),
        )
    };
    for raw in batches(&bytes) {
        let Ok(raw) = raw else {
            // A partial batch at the end of the response.
            break;
        };
        let header = raw.header;
        if header.next_offset() <= next {
            continue;
        }
        if settings.check_crcs {
            validate_batch(raw.bytes).map_err(|e| corrupt(e.to_string()))?;
        }
        if settings.read_committed {
            while let Some(&(pid, _)) = aborted
                .peek()
                .filter(|&&(_, first)| first <= header.last_offset())
            {
                aborting.insert(pid);
                aborted.next();
            }
        }
        let batch = bytes.slice(raw.position..raw.position + raw.bytes.len());
        if header.is_control() {
            if settings.read_committed && aborting.contains(&header.producer_id) {
                let is_abort = records(&batch, MAX_DECOMPRESSED_BATCH)
                    .ok()
                    .and_then(|mut it| it.next())
                    .and_then(Result::ok)
                    .and_then(|r| {
                        r.key
                            .as_deref()
                            .and_then(|k| ControlRecordType::parse(k).ok())
                    })
                    .is_some_and(|t| t == ControlRecordType::Abort);
                if is_abort {
                    aborting.remove(&header.producer_id);
                }
            }
            next = header.next_offset();
            continue;
        }
        if settings.read_committed
            && header.is_transactional()
            && aborting.contains(&header.producer_id)
        {
            next = header.next_offset();
            continue;
        }
        let iter = records(&batch, MAX_DECOMPRESSED_BATCH).map_err(|e| corrupt(e.to_string()))?;
        let log_append = header.timestamp_type() == TimestampType::LogAppendTime;
        for record in iter {
            let record = record.map_err(|e| corrupt(e.to_string()))?;
            let record_offset = record.offset(&header);
            if record_offset < next {
                continue;
            }
            out.push(ConsumerRecord {
                topic: Arc::clone(&topic),
                partition: tp.partition,
                offset: record_offset,
                timestamp: if log_append {
                    header.max_timestamp
                } else {
                    record.timestamp(&header)
                },
                timestamp_type: header.timestamp_type(),
                key: record.key,
                value: record.value,
                headers: record
                    .headers
                    .into_iter()
                    .map(|h| (h.key, h.value))
                    .collect(),
            });
        }
        next = header.next_offset();
    }
    Ok((out, next))
}

/// Looks up reset positions (earliest, latest or by time) at `node`.
async fn reset_offsets(shared: &Shared, node: i32, parts: Vec<Reset>) {
    let mut topics: Vec<ListOffsetsTopic> = Vec::new();
    for Reset {
        tp,
        timestamp,
        leader_epoch,
        ..
    } in &parts
    {
        let partition = ListOffsetsPartition::default()
            .with_partition_index(tp.partition)
            .with_current_leader_epoch(*leader_epoch)
            .with_timestamp(*timestamp);
        match topics.iter_mut().find(|t| *t.name.0 == *tp.topic) {
            Some(t) => t.partitions.push(partition),
            None => topics.push(
                ListOffsetsTopic::default()
                    .with_name(TopicName(StrBytes::from_string(tp.topic.clone())))
                    .with_partitions(vec![partition]),
            ),
        }
    }
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_isolation_level(i8::from(shared.settings.read_committed))
        .with_topics(topics);
    let result = shared
        .cluster
        .send(Route::Node(node), LIST_OFFSETS_VERSION, &request)
        .await;
    let mut answers: HashMap<(String, i32), (i16, i64)> = HashMap::new();
    // A leader that cannot be reached (killed, its connection lost) may not
    // lead any more: the next plan asks the leader fresh metadata names,
    // not the cached one again until `metadata.max.age.ms`.
    if result.as_ref().is_err_and(Error::needs_metadata_refresh) {
        shared.cluster.mark_stale();
    }
    if let Ok(response) = &result {
        for topic in &response.topics {
            for p in &topic.partitions {
                answers.insert(
                    (topic.name.0.to_string(), p.partition_index),
                    (p.error_code, p.offset),
                );
            }
        }
    }
    let now = Instant::now();
    let cluster = &shared.cluster;
    let back_off = |part: &mut Part| {
        part.failures = part.failures.saturating_add(1);
        part.not_before = Some(now + cluster.retry_backoff(part.failures));
    };
    let mut state = shared.state.lock();
    for Reset {
        tp,
        timestamp,
        epoch,
        ..
    } in parts
    {
        let Some(part) = state.parts.get_mut(&tp) else {
            continue;
        };
        part.in_flight = false;
        if part.epoch != epoch || part.reset != Some(timestamp) {
            continue;
        }
        match answers.get(&(tp.topic.clone(), tp.partition)) {
            Some(&(0, offset)) if offset >= 0 => {
                part.failures = 0;
                part.reset = None;
                part.position = Some(offset);
                part.fetch_position = Some(offset);
            }
            // No record at or after the timestamp: the end.
            Some(&(0, _)) => part.reset = Some(LATEST),
            Some(&(code, _)) => {
                let error = Error::kafka(code, None);
                if error.is_retriable() {
                    shared.cluster.mark_stale();
                    back_off(part);
                } else {
                    part.error = Some(error);
                }
            }
            None => back_off(part),
        }
    }
    drop(state);
    shared.data.notify_waiters();
    shared.fetch_wake.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;
    use strom_protocol::builder::{RecordBatchBuilder, end_txn_marker_batch};
    use strom_protocol::compression::Compression;
    use strom_protocol::record::EndTxnMarker;

    fn settings(read_committed: bool) -> Settings {
        let mut config: ClientConfig = [("bootstrap.servers", "127.0.0.1:9")].into_iter().collect();
        if read_committed {
            config.set("isolation.level", "read_committed");
        }
        Settings::from_config(&config).unwrap()
    }

    fn batch(base: i64, pid: i64, transactional: bool, values: &[&str]) -> Bytes {
        let mut b = RecordBatchBuilder::new(Compression::Lz4)
            .base_offset(base)
            .producer(pid, 0, 0)
            .transactional(transactional);
        for v in values {
            b.push(5, None, Some(v.as_bytes()), &[]);
        }
        b.build().unwrap()
    }

    #[test]
    fn read_committed_drops_aborted_transactions_and_control_batches() {
        let tp = TopicPartition::new("t", 0);
        let mut log = Vec::new();
        log.extend_from_slice(&batch(0, 1, false, &["a", "b"]));
        log.extend_from_slice(&batch(2, 7, true, &["aborted"]));
        log.extend_from_slice(&batch(3, 8, true, &["committed"]));
        log.extend_from_slice(&end_txn_marker_batch(
            4,
            9,
            0,
            7,
            0,
            EndTxnMarker {
                commit: false,
                coordinator_epoch: 0,
            },
        ));
        log.extend_from_slice(&end_txn_marker_batch(
            5,
            9,
            0,
            8,
            0,
            EndTxnMarker {
                commit: true,
                coordinator_epoch: 0,
            },
        ));
        log.extend_from_slice(&batch(6, 1, false, &["c"]));
        let full = Bytes::from(log);
        let values = |records: &[ConsumerRecord]| -> Vec<String> {
            records
                .iter()
                .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())
                .collect()
        };
        let (records, next) =
            decode_fetched(&tp, 1, full.clone(), &settings(true), vec![(7, 2)]).unwrap();
        assert_eq!(values(&records), ["b", "committed", "c"]);
        assert_eq!(records[0].offset, 1);
        assert_eq!(next, 7);
        let (records, _) = decode_fetched(&tp, 0, full.clone(), &settings(false), vec![]).unwrap();
        assert_eq!(values(&records), ["a", "b", "aborted", "committed", "c"]);
        // A partial batch at the end waits for the next fetch.
        let cut = full.slice(..full.len() - 3);
        let (records, next) = decode_fetched(&tp, 0, cut, &settings(false), vec![]).unwrap();
        assert_eq!((records.len(), next), (4, 6));
        // A flipped byte inside a batch is a corrupt message, not a panic.
        let mut bad = full.to_vec();
        bad[70] ^= 0xff;
        let error = decode_fetched(&tp, 0, Bytes::from(bad), &settings(false), vec![]).unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::CorruptMessage));
    }

    #[test]
    fn settings_follow_kafka_defaults_and_refuse_bad_values() {
        let s = settings(false);
        assert_eq!(
            (s.auto_reset, s.max_poll_records, s.auto_commit),
            (AutoReset::Latest, 500, false)
        );
        let bad: ClientConfig = [
            ("bootstrap.servers", "a:1"),
            ("auto.offset.reset", "smallest"),
        ]
        .into_iter()
        .collect();
        assert!(Settings::from_config(&bad).is_err());
        let bad: ClientConfig = [
            ("bootstrap.servers", "a:1"),
            ("partition.assignment.strategy", "sticky"),
        ]
        .into_iter()
        .collect();
        assert!(Settings::from_config(&bad).is_err());
    }
}
