//! One partition on this broker: the object request handlers talk to.
//!
//! # Layout
//!
//! - [`Partition`] (this file): the log, the leader epoch, the one high
//!   watermark, the last stable offset and the fetches waiting for data.
//! - [`high_watermark`]: Kafka's high-watermark rule as a pure function of
//!   the replicas' states, tested from a table of cases
//!   (`testdata/high_watermark.txt`).
//! - [`replica_selector`]: KIP-392's choice of the replica a consumer
//!   reads from (Kafka's `RackAwareReplicaSelector`), a pure function over
//!   the views [`Partition::read_replica_candidates`] gives.
//! - [`log_dir`]: what a failed write does to the broker's log directory
//!   (in a cluster, Kafka's offline directory: no more appends, the broker
//!   stops).
//! - [`validation`]: Kafka's LogValidator checks of produced records (and
//!   recompression to the topic's `compression.type`), within the broker's
//!   decompression budget.
//!
//! Every leader append goes through [`Partition::append_as_leader`], and the
//! partition decides its leadership itself ([`Partition::is_leader`]) from
//! the state the metadata gives it ([`PartitionState`], applied by
//! [`Partition::apply_state`]): its [`Role`] is leader, with what it knows of
//! each follower ([`high_watermark::ReplicaState`], moved by
//! [`Partition::update_follower`]), or follower of a given leader and epoch.
//! The high watermark moves only by Kafka's rule over those states, and a
//! produce with acks=all waits for it ([`Partition::wait_for_high_watermark`]).
//! The topic's configs that produce checks need are resolved into typed
//! `validation::ProduceChecks` when the metadata changes, not per request.

pub mod high_watermark;
pub mod log_dir;
pub mod replica_selector;
pub mod validation;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::Uuid;
use strom_storage::{
    AppendError, AppendInfo, AppendOrigin, LogManager, PartitionLog, StorageError, TopicPartition,
    TxnVerification,
};
use tokio::sync::Notify;

use high_watermark::{
    DEFAULT_REPLICA_LAG_TIME_MAX_MS, HighWatermarkInputs, ReplicaState, effective_min_isr,
    next_high_watermark,
};
use validation::ProduceChecks;

/// Bound on long-poll fetches waiting on one partition; beyond it the oldest
/// waiters are dropped (they time out and answer with what they have).
const MAX_WAITERS_PER_PARTITION: usize = 10_000;

/// The partition as the metadata image gives it (Kafka's
/// `PartitionRegistration`, the part a replica acts on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub leader: i32,
    pub leader_epoch: i32,
    /// Bumped by every change of the partition (Kafka's partition epoch):
    /// an AlterPartition names the one it changes.
    pub partition_epoch: i32,
    /// Every replica, in preference order.
    pub replicas: Vec<i32>,
    /// The in-sync replicas, the leader included.
    pub isr: Vec<i32>,
    /// The replicas a reassignment in progress removes (KIP-455): still
    /// followers, but not counted in the replication factor, which is the
    /// target's (Kafka's `OngoingReassignmentState.replicationFactor`).
    pub removing_replicas: Vec<i32>,
    /// Replicas whose brokers are fenced (dead, cut off, shutting down) or
    /// not registered: not ISR-eligible (KIP-841), so a leader does not wait
    /// for them to reach its high watermark even while their last fetch is
    /// within `replica.lag.time.max.ms`, as Kafka's `isReplicaIsrEligible`.
    pub ineligible: Vec<i32>,
}

impl PartitionState {
    /// A partition whose only replica is `leader`.
    pub fn single(leader: i32, leader_epoch: i32) -> Self {
        Self {
            leader,
            leader_epoch,
            partition_epoch: 0,
            replicas: vec![leader],
            removing_replicas: Vec::new(),
            isr: vec![leader],
            ineligible: Vec::new(),
        }
    }
}

/// What this broker is for the partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// It leads: the ISR, and what it knows of each follower (plain data,
    /// moved by their fetches).
    Leader {
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<i32>,
        replication_factor: usize,
        followers: Vec<ReplicaState>,
        /// The log end offset when this leadership began: its epoch's start
        /// offset. A follower joins the ISR only past it, and ListOffsets
        /// answers OFFSET_NOT_AVAILABLE until the high watermark reaches it.
        epoch_start_offset: i64,
        /// The ISR an AlterPartition sent to the controller asks for, until
        /// it is answered: one change in flight (KIP-497). The high
        /// watermark counts the union of it and `isr` (the maximal ISR).
        pending_isr: Option<Vec<i32>>,
    },
    /// It follows `leader` (-1: none) at `leader_epoch`.
    Follower { leader: i32, leader_epoch: i32 },
}

/// An ISR change for the controller (Kafka's AlterPartition): this
/// leader, at `leader_epoch`, asks that the partition at `partition_epoch`
/// get `new_isr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrChange {
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub new_isr: Vec<i32>,
}

/// A follower a consumer could read from instead of the leader (KIP-392),
/// as the leader last heard from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadReplicaCandidate {
    pub broker_id: i32,
    pub log_end_offset: i64,
    /// Since the follower last caught up with the leader's log end.
    pub time_since_caught_up_ms: i64,
}

/// The ISR sizes acks=all is checked against ([`Partition::in_sync`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InSync {
    pub(crate) isr: usize,
    pub(crate) maximal: usize,
    pub(crate) min: usize,
}

/// Why a follower's fetch position was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FollowerError {
    #[error("this broker does not lead the partition")]
    NotLeader,
    #[error("broker {0} is not a replica of the partition")]
    UnknownReplica(i32),
}

/// One partition held by this broker.
#[derive(Debug)]
pub struct Partition {
    pub topic: Arc<str>,
    pub index: i32,
    pub topic_id: Uuid,
    pub log: Arc<PartitionLog>,
    /// This broker's id: the partition leads when the leader is this id.
    local_id: i32,
    /// The leader epoch (high 32 bits) and the leader's broker id (low 32
    /// bits), as the metadata image gives them: one atomic, so that no
    /// reader sees a new epoch with the old leader.
    leadership: AtomicI64,
    /// The role, with the followers' states: changed by the metadata and by
    /// followers' fetches, read to move the high watermark. A lock, not an
    /// atomic: the high watermark is computed from the whole of it.
    role: Mutex<Role>,
    /// Held (read) across a leader append and (write) while the role
    /// changes, as Kafka's `leaderIsrUpdateLock`: an append checked against
    /// one leadership never lands after the partition became a follower.
    leader_appends: RwLock<()>,
    /// Offset below which every in-sync replica has the data (on a single
    /// node, where the leader is the ISR, the log end offset).
    high_watermark: AtomicI64,
    /// The topic's configs as produce checks them, resolved when the
    /// metadata changes (shared by every request until the next change).
    checks: RwLock<Arc<ProduceChecks>>,
    /// Consumer fetches waiting for the high watermark to move.
    waiters: Mutex<Vec<Weak<Notify>>>,
    /// Followers' fetches waiting for appends (they read to the log end).
    replica_waiters: Mutex<Vec<Weak<Notify>>>,
    /// `replica.lag.time.max.ms`: how long a follower may stay behind the
    /// log end before it leaves the ISR.
    replica_lag_time_max_ms: AtomicI64,
    /// Produces with acks=all waiting for the high watermark to pass their
    /// records (or for the leadership to change).
    high_watermark_moved: Notify,
    /// The broker's log directory: an I/O error here may fail it, and a
    /// failed directory takes no appends.
    log_dir: Arc<log_dir::LogDirHealth>,
}

impl Partition {
    /// A partition over `log`, at `leader_epoch`, with the high watermark at
    /// the log end offset (a single node's in-sync replicas are itself).
    #[cfg(test)]
    pub(crate) fn new(
        topic: Arc<str>,
        index: i32,
        topic_id: Uuid,
        log: Arc<PartitionLog>,
        local_id: i32,
        leadership: (i32, i32),
    ) -> Self {
        let log_end_offset = log.log_end_offset();
        let partition = Self::with_high_watermark(
            topic,
            index,
            topic_id,
            log,
            local_id,
            leadership,
            log_end_offset,
        );
        partition.apply_state(&PartitionState::single(leadership.1, leadership.0), 0);
        partition
    }

    /// [`Self::new`] with the high watermark from `replication-offset-checkpoint`
    /// (clamped to the log), as a replicated partition starts: records above
    /// it may not be committed, and stay hidden until the leader says so.
    pub(crate) fn with_high_watermark(
        topic: Arc<str>,
        index: i32,
        topic_id: Uuid,
        log: Arc<PartitionLog>,
        local_id: i32,
        (leader_epoch, leader): (i32, i32),
        high_watermark: i64,
    ) -> Self {
        let high_watermark = high_watermark.clamp(
            log.log_start_offset().min(log.log_end_offset()),
            log.log_end_offset(),
        );
        log.set_high_watermark(high_watermark);
        let checks = Arc::new(ProduceChecks::from_log_config((*log.config()).clone()));
        // A follower of `leader` until the caller applies the partition's
        // state: taking a lone leader's role here would move the high
        // watermark to the log end before the real replicas are known.
        let follower_of = if leader == local_id { -1 } else { leader };
        Self {
            topic,
            index,
            topic_id,
            log,
            local_id,
            leadership: AtomicI64::new(pack(leader_epoch, follower_of)),
            role: Mutex::new(Role::Follower {
                leader: follower_of,
                leader_epoch,
            }),
            leader_appends: RwLock::new(()),
            high_watermark: AtomicI64::new(high_watermark),
            checks: RwLock::new(checks),
            waiters: Mutex::new(Vec::new()),
            replica_waiters: Mutex::new(Vec::new()),
            replica_lag_time_max_ms: AtomicI64::new(DEFAULT_REPLICA_LAG_TIME_MAX_MS),
            high_watermark_moved: Notify::new(),
            log_dir: log_dir::LogDirHealth::standalone(),
        }
    }

    /// Takes the partition's state from the metadata: becomes leader (at a
    /// new epoch: with every follower's position unknown until it fetches,
    /// as Kafka's `makeLeader`, and the epoch's start recorded in the leader
    /// epoch cache at once), stays leader with a new ISR, or becomes a
    /// follower. Produces waiting for the high watermark are woken (a lost
    /// leadership answers them NOT_LEADER_OR_FOLLOWER).
    pub fn apply_state(&self, state: &PartitionState, now_ms: i64) {
        let mut new_epoch = None;
        {
            let _appends = self.leader_appends.write();
            let mut role = self.role.lock();
            // The same leadership at an older partition epoch (an image from
            // before an ISR change this leader already has) changes nothing.
            if let Role::Leader {
                leader_epoch,
                partition_epoch,
                ..
            } = &*role
                && state.leader == self.local_id
                && *leader_epoch == state.leader_epoch
                && state.partition_epoch < *partition_epoch
            {
                return;
            }
            let next = if state.leader == self.local_id {
                let current = match &*role {
                    Role::Leader {
                        leader_epoch,
                        followers,
                        epoch_start_offset,
                        pending_isr,
                        partition_epoch,
                        ..
                    } if *leader_epoch == state.leader_epoch => Some((
                        followers.clone(),
                        *epoch_start_offset,
                        pending_isr.clone(),
                        *partition_epoch,
                    )),
                    _ => None,
                };
                let followers = state
                    .replicas
                    .iter()
                    .filter(|id| **id != self.local_id)
                    .map(|id| {
                        let known = current
                            .as_ref()
                            .and_then(|(followers, ..)| {
                                followers.iter().find(|f| f.broker_id == *id)
                            })
                            .copied()
                            .map(|mut f| {
                                // A fenced follower stops counting now; an
                                // unfenced one again at its next fetch.
                                if state.ineligible.contains(id) {
                                    f.isr_eligible = false;
                                }
                                f
                            });
                        known.unwrap_or(ReplicaState {
                            broker_id: *id,
                            log_end_offset: -1,
                            log_start_offset: -1,
                            // In-sync followers count as caught up now, so the
                            // ISR does not shrink before they can fetch.
                            last_caught_up_time_ms: if state.isr.contains(id) { now_ms } else { 0 },
                            isr_eligible: !state.ineligible.contains(id),
                            last_fetch_leader_log_end_offset: -1,
                            last_fetch_time_ms: 0,
                        })
                    })
                    .collect();
                let (epoch_start_offset, pending_isr) = match current {
                    // The same leadership: a committed change of the
                    // partition answers the pending ISR change (or replaces
                    // it); otherwise it stays pending.
                    Some((_, start, pending, partition_epoch)) => (
                        start,
                        pending.filter(|_| state.partition_epoch == partition_epoch),
                    ),
                    None => {
                        new_epoch = Some(state.leader_epoch);
                        (self.log.log_end_offset(), None)
                    }
                };
                Role::Leader {
                    leader_epoch: state.leader_epoch,
                    partition_epoch: state.partition_epoch,
                    isr: state.isr.clone(),
                    replication_factor: state
                        .replicas
                        .len()
                        .saturating_sub(state.removing_replicas.len())
                        .max(1),
                    followers,
                    epoch_start_offset,
                    pending_isr,
                }
            } else {
                Role::Follower {
                    leader: state.leader,
                    leader_epoch: state.leader_epoch,
                }
            };
            *role = next;
            // Under the role's lock, so that leadership and role agree for
            // anyone who takes it.
            self.leadership
                .store(pack(state.leader_epoch, state.leader), Ordering::Release);
            if let Some(epoch) = new_epoch
                && let Err(e) = self.log.assign_leader_epoch(epoch)
            {
                // The epoch is recorded with the first batch appended at it
                // anyway; until then a diverging follower is found one
                // round later, by the older epochs.
                tracing::warn!(topic = %self.topic, partition = self.index, epoch, error = %e, "recording the new leader epoch's start failed");
            }
        }
        self.advance_high_watermark_at(Some(now_ms));
        self.high_watermark_moved.notify_waiters();
        self.wake_waiters();
    }

    /// The role now (a copy).
    pub fn role(&self) -> Role {
        self.role.lock().clone()
    }

    /// The size of the in-sync replica set, as this broker knows it: 0 when
    /// it does not lead.
    pub fn isr_size(&self) -> usize {
        match &*self.role.lock() {
            Role::Leader { isr, .. } => isr.len(),
            Role::Follower { .. } => 0,
        }
    }

    /// What acks=all is checked against, under one look at the role: the
    /// ISR's size, the maximal ISR's (with a pending change's additions,
    /// Kafka's `checkEnoughReplicasReachOffset`), and the effective
    /// `min.insync.replicas` (bounded by the replication factor). All 0/1
    /// when this broker does not lead.
    pub(crate) fn in_sync(&self, checks: &ProduceChecks) -> InSync {
        let (isr, maximal, replication_factor) = match &*self.role.lock() {
            Role::Leader {
                isr,
                pending_isr,
                replication_factor,
                ..
            } => (
                isr.len(),
                maximal_isr(isr, pending_isr.as_deref()).len(),
                *replication_factor,
            ),
            Role::Follower { .. } => (0, 0, 1),
        };
        InSync {
            isr,
            maximal,
            min: effective_min_isr(checks.min_insync_replicas, replication_factor),
        }
    }

    /// The start offset of this leader's epoch, when it leads.
    pub fn leader_epoch_start_offset(&self) -> Option<i64> {
        match &*self.role.lock() {
            Role::Leader {
                epoch_start_offset, ..
            } => Some(*epoch_start_offset),
            Role::Follower { .. } => None,
        }
    }

    /// Puts the partition in the broker's log directory `health`.
    #[must_use]
    pub(crate) fn in_log_dir(mut self, health: Arc<log_dir::LogDirHealth>) -> Self {
        self.log_dir = health;
        self
    }

    /// Appends go through here: refused while the log directory is failed,
    /// and an I/O error reported to it.
    fn append_checked(
        &self,
        append: impl FnOnce(&PartitionLog) -> Result<AppendInfo, AppendError>,
    ) -> Result<AppendInfo, AppendError> {
        if self.log_dir.is_failed() {
            return Err(AppendError::Offline);
        }
        append(&self.log).inspect_err(|e| {
            self.log_dir.check(&self.topic, self.index, &self.log, e);
        })
    }

    /// `replica.lag.time.max.ms` for this partition's followers.
    pub(crate) fn set_replica_lag_time_max_ms(&self, ms: i64) {
        self.replica_lag_time_max_ms.store(ms, Ordering::Relaxed);
    }

    fn replica_lag_time_max_ms(&self) -> i64 {
        self.replica_lag_time_max_ms.load(Ordering::Relaxed)
    }

    /// A follower fetched: its log end offset is `log_end_offset` (Kafka's
    /// `updateFollowerFetchState`). It counts as caught up when that reaches
    /// the leader's log end offset; the high watermark moves if it can.
    /// `eligible`: whether the follower may join the ISR (registered,
    /// unfenced, its broker epoch current: KIP-841, KIP-903).
    ///
    /// `Ok(true)` when the fetch made the follower join the ISR (Kafka's
    /// `maybeExpandIsr`): an ISR change is pending for the caller to send
    /// ([`Self::pending_isr_change`]).
    pub fn update_follower(
        &self,
        broker_id: i32,
        log_end_offset: i64,
        now_ms: i64,
        eligible: bool,
    ) -> Result<bool, FollowerError> {
        let expand = {
            let mut role = self.role.lock();
            let Role::Leader {
                followers,
                isr,
                pending_isr,
                epoch_start_offset,
                ..
            } = &mut *role
            else {
                return Err(FollowerError::NotLeader);
            };
            let follower = followers
                .iter_mut()
                .find(|f| f.broker_id == broker_id)
                .ok_or(FollowerError::UnknownReplica(broker_id))?;
            follower.log_end_offset = log_end_offset;
            follower.isr_eligible = eligible;
            // Kafka's `updateFetchStateOrThrow`: caught up now when at the
            // leader's log end, or since its previous fetch when it reached
            // the log end the leader had then (under steady appends a
            // follower is always one fetch behind the current end).
            let leader_log_end_offset = self.log.log_end_offset();
            if log_end_offset >= leader_log_end_offset {
                follower.last_caught_up_time_ms = follower.last_caught_up_time_ms.max(now_ms);
            } else if log_end_offset >= follower.last_fetch_leader_log_end_offset
                && follower.last_fetch_leader_log_end_offset >= 0
            {
                follower.last_caught_up_time_ms = follower
                    .last_caught_up_time_ms
                    .max(follower.last_fetch_time_ms);
            }
            follower.last_fetch_leader_log_end_offset = leader_log_end_offset;
            follower.last_fetch_time_ms = now_ms;
            // Caught up to the high watermark and into this leader's epoch.
            let expand = pending_isr.is_none()
                && eligible
                && !isr.contains(&broker_id)
                && log_end_offset >= self.high_watermark()
                && log_end_offset >= *epoch_start_offset;
            if expand {
                let mut new_isr = isr.clone();
                new_isr.push(broker_id);
                *pending_isr = Some(new_isr);
            }
            expand
        };
        self.advance_high_watermark_at(Some(now_ms));
        Ok(expand)
    }

    /// A follower's log start offset, as its fetch gives it (Kafka's
    /// `updateFollowerFetchState` keeps it with the log end offset). Not
    /// leading, or an unknown replica: nothing to record.
    pub fn update_follower_log_start_offset(&self, broker_id: i32, log_start_offset: i64) {
        if let Role::Leader { followers, .. } = &mut *self.role.lock()
            && let Some(follower) = followers.iter_mut().find(|f| f.broker_id == broker_id)
        {
            follower.log_start_offset = log_start_offset;
        }
    }

    /// KIP-392: the followers a consumer fetching at `fetch_offset` could
    /// read from instead of this leader, and this leader's log end offset
    /// (Kafka's `findPreferredReadReplica`): those in the ISR whose last
    /// fetch showed they hold the offset (log start ≤ it ≤ log end).
    /// `None` when this broker does not lead.
    pub fn read_replica_candidates(
        &self,
        fetch_offset: i64,
        now_ms: i64,
    ) -> Option<(i64, Vec<ReadReplicaCandidate>)> {
        let role = self.role.lock();
        let Role::Leader { followers, isr, .. } = &*role else {
            return None;
        };
        let candidates = followers
            .iter()
            .filter(|f| {
                isr.contains(&f.broker_id)
                    && f.log_start_offset >= 0
                    && f.log_start_offset <= fetch_offset
                    && f.log_end_offset >= fetch_offset
            })
            .map(|f| ReadReplicaCandidate {
                broker_id: f.broker_id,
                log_end_offset: f.log_end_offset,
                time_since_caught_up_ms: now_ms.saturating_sub(f.last_caught_up_time_ms).max(0),
            })
            .collect();
        Some((self.log.log_end_offset(), candidates))
    }

    /// Kafka's `maybeShrinkIsr`: the in-sync followers that have not caught
    /// up within `replica.lag.time.max.ms` leave the ISR. `true` when an ISR
    /// change is now pending for the caller to send.
    pub fn maybe_shrink_isr(&self, now_ms: i64) -> bool {
        let lag_max_ms = self.replica_lag_time_max_ms();
        let log_end_offset = self.log.log_end_offset();
        let mut role = self.role.lock();
        let Role::Leader {
            followers,
            isr,
            pending_isr,
            ..
        } = &mut *role
        else {
            return false;
        };
        if pending_isr.is_some() {
            return false;
        }
        let lagging: Vec<i32> = followers
            .iter()
            .filter(|f| isr.contains(&f.broker_id))
            .filter(|f| !f.is_caught_up(log_end_offset, now_ms, lag_max_ms))
            .map(|f| f.broker_id)
            .collect();
        if lagging.is_empty() {
            return false;
        }
        tracing::info!(topic = %self.topic, partition = self.index, ?lagging, lag_max_ms, "shrinking the ISR: followers did not catch up in time");
        *pending_isr = Some(
            isr.iter()
                .copied()
                .filter(|id| !lagging.contains(id))
                .collect(),
        );
        true
    }

    /// The ISR change waiting to be sent, if this broker leads and has one.
    pub fn pending_isr_change(&self) -> Option<IsrChange> {
        match &*self.role.lock() {
            Role::Leader {
                leader_epoch,
                partition_epoch,
                pending_isr: Some(new_isr),
                ..
            } => Some(IsrChange {
                leader_epoch: *leader_epoch,
                partition_epoch: *partition_epoch,
                new_isr: new_isr.clone(),
            }),
            _ => None,
        }
    }

    /// The controller answered `sent`: with the partition's new ISR and
    /// partition epoch (`Some`), or refused it (`None`; the metadata brings
    /// the state that won). Either way nothing is pending any more, if this
    /// is still the leadership that sent it.
    pub fn complete_isr_change(&self, sent: &IsrChange, committed: Option<(Vec<i32>, i32)>) {
        {
            let mut role = self.role.lock();
            let Role::Leader {
                leader_epoch,
                partition_epoch,
                isr,
                pending_isr,
                ..
            } = &mut *role
            else {
                return;
            };
            if *leader_epoch != sent.leader_epoch || pending_isr.as_ref() != Some(&sent.new_isr) {
                return;
            }
            *pending_isr = None;
            if let Some((new_isr, new_partition_epoch)) = committed
                && new_partition_epoch > *partition_epoch
            {
                *isr = new_isr;
                *partition_epoch = new_partition_epoch;
            }
        }
        self.advance_high_watermark();
        self.high_watermark_moved.notify_waiters();
    }

    /// Appends batches fetched from `leader` at `leader_epoch`, keeping
    /// their offsets and epochs: refused (NOT_LEADER_OR_FOLLOWER) unless
    /// this broker still follows that leader at that epoch, so a fetch
    /// answered by an old leader never lands after a change.
    pub fn append_as_follower(
        &self,
        records: &[u8],
        leader: i32,
        leader_epoch: i32,
    ) -> Result<AppendInfo, AppendError> {
        // Held through the append: the role cannot change under it.
        let role = self.role.lock();
        if *role
            != (Role::Follower {
                leader,
                leader_epoch,
            })
        {
            return Err(AppendError::NotLeader);
        }
        self.append_checked(|log| log.append_as_follower(records))
    }

    /// Cuts this follower's log back to `offset` (where it diverges from
    /// `leader`'s at `leader_epoch`), through `logs` so the lowered recovery
    /// point is checkpointed, or, with `start_at`, empties it and restarts
    /// it at `offset` (the leader's log starts past this log's end). Refused
    /// unless this broker still follows that leader at that epoch.
    pub fn truncate_as_follower(
        &self,
        logs: &LogManager,
        offset: i64,
        start_at: bool,
        (leader, leader_epoch): (i32, i32),
    ) -> Result<(), StorageError> {
        let role = self.role.lock();
        if *role
            != (Role::Follower {
                leader,
                leader_epoch,
            })
        {
            return Ok(());
        }
        let tp = TopicPartition::new(self.topic.as_ref(), self.index);
        if start_at {
            logs.truncate_fully_and_start_at(&tp, offset)?;
        } else {
            logs.truncate_to(&tp, offset)?;
        }
        let log_end_offset = self.log.log_end_offset();
        self.high_watermark
            .fetch_min(log_end_offset, Ordering::AcqRel);
        if start_at {
            self.high_watermark
                .fetch_max(log_end_offset, Ordering::AcqRel);
        }
        self.log.set_high_watermark(self.high_watermark());
        Ok(())
    }

    /// A follower's high watermark after a fetch: the leader's, bounded by
    /// what this log holds (`ReplicaFetcherThread.processPartitionData`),
    /// never lower than it was unless the log itself is shorter.
    pub fn set_follower_high_watermark(
        &self,
        leader_high_watermark: i64,
        (leader, leader_epoch): (i32, i32),
    ) {
        // Under the role's lock: a fetch answered by the old leader never
        // sets the high watermark of a partition that leads by now.
        let role = self.role.lock();
        if *role
            != (Role::Follower {
                leader,
                leader_epoch,
            })
        {
            return;
        }
        let log_end_offset = self.log.log_end_offset();
        let next = leader_high_watermark.min(log_end_offset);
        if next > self.high_watermark() {
            self.high_watermark.store(next, Ordering::Release);
            self.log.set_high_watermark(next);
            drop(role);
            self.wake_waiters();
        }
    }

    /// The topic's configs as produce checks them.
    pub(crate) fn produce_checks(&self) -> Arc<ProduceChecks> {
        Arc::clone(&self.checks.read())
    }

    /// The topic's configs changed (or were resolved for the first time).
    pub(crate) fn set_produce_checks(&self, checks: ProduceChecks) {
        if **self.checks.read() != checks {
            *self.checks.write() = Arc::new(checks);
        }
    }

    pub fn leader_epoch(&self) -> i32 {
        unpack(self.leadership.load(Ordering::Acquire)).0
    }

    /// Whether this broker leads the partition: decided here, from the
    /// partition's own leadership, not by comparing an image with the node
    /// id in each handler.
    pub fn is_leader(&self) -> bool {
        unpack(self.leadership.load(Ordering::Acquire)).1 == self.local_id
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

    /// Appends `records` as this partition's leader, at its leader epoch,
    /// and moves the high watermark: the one way records enter a partition
    /// here (clients, coordinators, transaction markers).
    pub fn append_as_leader(
        &self,
        records: &[u8],
        origin: AppendOrigin,
    ) -> Result<AppendInfo, AppendError> {
        self.append_as_leader_verified(records, origin, TxnVerification::Unchecked)
    }

    /// [`Self::append_as_leader`] with KIP-890's check of a producer's
    /// transactional batches against the partition's verification guard
    /// (see [`PartitionLog::append_as_leader_verified`]): the produce path.
    pub fn append_as_leader_verified(
        &self,
        records: &[u8],
        origin: AppendOrigin,
        verification: TxnVerification,
    ) -> Result<AppendInfo, AppendError> {
        let info = {
            let _leadership_held = self.leader_appends.read();
            // One load: the leadership checked is the one whose epoch is
            // stamped (a handler's earlier check may be stale by now).
            let (leader_epoch, leader) = unpack(self.leadership.load(Ordering::Acquire));
            if leader != self.local_id {
                return Err(AppendError::NotLeader);
            }
            self.append_checked(|log| {
                log.append_as_leader_verified(records, leader_epoch, origin, verification)
            })?
        };
        // Followers' fetches read to the log end: new data for them now.
        wake(&self.replica_waiters);
        self.advance_high_watermark();
        Ok(info)
    }

    /// After an append: the high watermark moves as far as the in-sync
    /// replicas allow (on a single node, to the log end offset).
    pub fn advance_high_watermark(&self) {
        self.advance_high_watermark_at(None);
    }

    /// Kafka's rule over the leader's view of its replicas, at `now_ms`.
    /// A follower leaves its high watermark where it is (the leader's
    /// fetch responses move it, with replication).
    /// `now_ms` `None`: read the wall clock, and only when followers' lag
    /// matters (a single replica reads none).
    fn advance_high_watermark_at(&self, now_ms: Option<i64>) {
        let log_end_offset = self.log.log_end_offset();
        let current = self.high_watermark();
        let target = {
            let role = self.role.lock();
            let Role::Leader {
                isr,
                replication_factor,
                followers,
                pending_isr,
                ..
            } = &*role
            else {
                return;
            };
            let now_ms = match now_ms {
                Some(now_ms) => now_ms,
                None if followers.is_empty() => 0,
                None => wall_clock_ms(),
            };
            let maximal_isr: Vec<i32> = maximal_isr(isr, pending_isr.as_deref())
                .into_iter()
                .filter(|id| *id != self.local_id)
                .collect();
            next_high_watermark(&HighWatermarkInputs {
                leader_log_end_offset: log_end_offset,
                current,
                followers,
                isr_size: isr.len(),
                maximal_isr_followers: &maximal_isr,
                replication_factor: *replication_factor,
                min_insync_replicas: self.checks.read().min_insync_replicas,
                now_ms,
                replica_lag_time_max_ms: self.replica_lag_time_max_ms(),
            })
        };
        if target <= current {
            return;
        }
        // Two appends may advance at once: the larger target wins here, and
        // neither may pass the log end (which only grows).
        let previous = self.high_watermark.fetch_max(target, Ordering::AcqRel);
        let high_watermark = previous.max(target);
        debug_assert!(high_watermark <= self.log.log_end_offset());
        // Retention and the cleaner never pass the high watermark (a racing
        // store may leave the log's copy a moment behind, never ahead).
        self.log.set_high_watermark(high_watermark);
        wake(&self.waiters);
        self.high_watermark_moved.notify_waiters();
    }

    /// Waits until the high watermark reaches `offset` (a produce with
    /// acks=all waits for its last offset + 1): `Ok` then, or
    /// NOT_ENOUGH_REPLICAS_AFTER_APPEND if the maximal ISR is below
    /// `min.insync.replicas` by then; NOT_LEADER_OR_FOLLOWER if this broker
    /// stops leading at the epoch it appended at; REQUEST_TIMED_OUT after
    /// `timeout` (Kafka's DelayedProduce).
    pub async fn wait_for_high_watermark(
        &self,
        offset: i64,
        leader_epoch: i32,
        timeout: Duration,
    ) -> Result<(), ErrorCode> {
        let wait = async {
            loop {
                let moved = self.high_watermark_moved.notified();
                tokio::pin!(moved);
                // Registered before the checks, so no change slips between.
                moved.as_mut().enable();
                if !self.is_leader() || self.leader_epoch() != leader_epoch {
                    return Err(ErrorCode::NotLeaderOrFollower);
                }
                if self.high_watermark() >= offset {
                    // The checks are copied out first: the role's lock is
                    // never taken under the checks' lock.
                    let in_sync = self.in_sync(&self.produce_checks());
                    if in_sync.maximal < in_sync.min {
                        return Err(ErrorCode::NotEnoughReplicasAfterAppend);
                    }
                    return Ok(());
                }
                moved.await;
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Err(ErrorCode::RequestTimedOut))
    }

    /// Registers a fetch to be woken when data arrives: a consumer's when
    /// the high watermark moves, a follower's (`replica`) on every append.
    pub fn add_waiter(&self, waiter: &Arc<Notify>, replica: bool) {
        let mut waiters = if replica {
            self.replica_waiters.lock()
        } else {
            self.waiters.lock()
        };
        waiters.retain(|w| w.strong_count() > 0);
        if waiters.len() >= MAX_WAITERS_PER_PARTITION {
            waiters.remove(0);
        }
        waiters.push(Arc::downgrade(waiter));
    }

    /// Wakes every waiting fetch (new data, a new role, or the partition is
    /// going away).
    pub(crate) fn wake_waiters(&self) {
        wake(&self.waiters);
        wake(&self.replica_waiters);
    }
}

/// Wakes and forgets every waiter of `waiters`.
fn wake(waiters: &Mutex<Vec<Weak<Notify>>>) {
    let waiters = std::mem::take(&mut *waiters.lock());
    for waiter in waiters.iter().filter_map(Weak::upgrade) {
        waiter.notify_one();
    }
}

/// The ISR with the replicas a pending change adds (Kafka's maximal ISR:
/// a shrink counts the old members until it commits, an expansion the new
/// one at once).
fn maximal_isr(isr: &[i32], pending: Option<&[i32]>) -> Vec<i32> {
    let mut all = isr.to_vec();
    for id in pending.unwrap_or_default() {
        if !all.contains(id) {
            all.push(*id);
        }
    }
    all
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Leader epoch and leader id in one `i64` (epoch high, leader low).
fn pack(leader_epoch: i32, leader: i32) -> i64 {
    (i64::from(leader_epoch) << 32) | i64::from(leader.cast_unsigned())
}

/// The inverse of [`pack`].
#[allow(clippy::cast_possible_truncation)] // each half is 32 bits by construction
fn unpack(packed: i64) -> (i32, i32) {
    ((packed >> 32) as i32, (packed as u64 as u32).cast_signed())
}

#[cfg(test)]
mod tests {
    use strom_protocol::builder::RecordBatchBuilder;
    use strom_protocol::compression::Compression;
    use strom_storage::{FileCache, LoadOptions, LogConfig, SystemClock};

    use super::*;

    const LOCAL: i32 = 1;

    fn partition(dir: &std::path::Path) -> Partition {
        let log = PartitionLog::open(
            dir.join("t-0"),
            LogConfig::default(),
            Arc::new(FileCache::default()),
            Arc::new(SystemClock),
            LoadOptions::default(),
        )
        .unwrap();
        Partition::new(
            Arc::from("t"),
            0,
            Uuid::nil(),
            Arc::new(log),
            LOCAL,
            (0, LOCAL),
        )
    }

    fn append(partition: &Partition) {
        let mut builder = RecordBatchBuilder::new(Compression::None);
        builder.push(0, Some(b"k"), Some(b"v"), &[]);
        let batch = builder.build().unwrap();
        partition
            .append_as_leader(&batch, AppendOrigin::Client)
            .unwrap();
    }

    fn state(leader: i32, leader_epoch: i32, replicas: &[i32], isr: &[i32]) -> PartitionState {
        PartitionState {
            leader,
            leader_epoch,
            partition_epoch: 0,
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
            removing_replicas: Vec::new(),
            ineligible: Vec::new(),
        }
    }

    /// A follower killed while caught up: its fencing takes it out of the
    /// ISR, and the high watermark moves on without it at once, not when
    /// its last fetch is `replica.lag.time.max.ms` old (an acks=all produce
    /// waited that long).
    #[test]
    fn a_fenced_follower_no_longer_holds_the_high_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let p = partition(dir.path());
        p.apply_state(&state(LOCAL, 0, &[LOCAL, 2, 3], &[LOCAL, 2, 3]), 1_000);
        append(&p);
        p.update_follower(2, 1, 1_001, true).unwrap();
        p.update_follower(3, 1, 1_001, true).unwrap();
        assert_eq!(p.high_watermark(), 1);
        append(&p);
        p.update_follower(2, 2, 1_002, true).unwrap();
        assert_eq!(p.high_watermark(), 1, "follower 3 has not fetched 1");
        let mut fenced = state(LOCAL, 0, &[LOCAL, 2, 3], &[LOCAL, 2]);
        fenced.partition_epoch = 1;
        fenced.ineligible = vec![3];
        p.apply_state(&fenced, 1_003);
        assert_eq!(p.high_watermark(), 2);
    }

    #[test]
    fn a_single_replica_leader_commits_what_it_appends() {
        let dir = tempfile::tempdir().unwrap();
        let p = partition(dir.path());
        assert!(p.is_leader());
        append(&p);
        append(&p);
        assert_eq!(p.high_watermark(), 2);
        assert_eq!(p.isr_size(), 1);
    }

    #[test]
    fn the_high_watermark_waits_for_every_in_sync_follower() {
        let dir = tempfile::tempdir().unwrap();
        let p = partition(dir.path());
        p.apply_state(&state(LOCAL, 0, &[LOCAL, 2, 3], &[LOCAL, 2, 3]), 1_000);
        append(&p);
        append(&p);
        assert_eq!(p.high_watermark(), 0, "no follower has fetched");
        p.update_follower(2, 2, 1_001, true).unwrap();
        assert_eq!(p.high_watermark(), 0, "follower 3 has not fetched");
        p.update_follower(3, 1, 1_002, true).unwrap();
        assert_eq!(p.high_watermark(), 1);
        p.update_follower(3, 2, 1_003, true).unwrap();
        assert_eq!(p.high_watermark(), 2);
        // The ISR shrinks to the leader and follower 2 (positions known at
        // this epoch are kept). Follower 3 still counts while it is caught
        // up (within replica.lag.time.max.ms), as in Kafka, and no longer
        // once it lags longer.
        p.apply_state(&state(LOCAL, 0, &[LOCAL, 2, 3], &[LOCAL, 2]), 1_004);
        append(&p);
        p.update_follower(2, 3, 1_005, true).unwrap();
        assert_eq!(p.high_watermark(), 2, "follower 3 is caught up");
        p.update_follower(2, 3, 1_003 + DEFAULT_REPLICA_LAG_TIME_MAX_MS + 1, true)
            .unwrap();
        assert_eq!(p.high_watermark(), 3);
        assert_eq!(
            p.update_follower(9, 3, 1_006, true),
            Err(FollowerError::UnknownReplica(9))
        );
    }

    #[test]
    fn a_follower_neither_leads_nor_takes_follower_positions() {
        let dir = tempfile::tempdir().unwrap();
        let p = partition(dir.path());
        append(&p);
        p.apply_state(&state(2, 1, &[LOCAL, 2], &[LOCAL, 2]), 0);
        assert!(!p.is_leader());
        assert_eq!(p.leader_epoch(), 1);
        assert_eq!(
            p.role(),
            Role::Follower {
                leader: 2,
                leader_epoch: 1
            }
        );
        assert_eq!(
            p.update_follower(2, 1, 0, true),
            Err(FollowerError::NotLeader)
        );
        assert_eq!(p.isr_size(), 0);
        assert_eq!(p.high_watermark(), 1, "a new role never moves it back");
    }

    #[tokio::test]
    async fn an_acks_all_wait_ends_when_committed_on_leadership_loss_or_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let p = Arc::new(partition(dir.path()));
        p.apply_state(&state(LOCAL, 0, &[LOCAL, 2], &[LOCAL, 2]), 0);
        append(&p);
        let waiting = {
            let p = Arc::clone(&p);
            tokio::spawn(async move {
                p.wait_for_high_watermark(1, 0, Duration::from_secs(60))
                    .await
            })
        };
        p.update_follower(2, 1, 0, true).unwrap();
        assert_eq!(waiting.await.unwrap(), Ok(()));

        append(&p);
        assert_eq!(
            p.wait_for_high_watermark(2, 0, Duration::from_millis(10))
                .await,
            Err(ErrorCode::RequestTimedOut)
        );
        let waiting = {
            let p = Arc::clone(&p);
            tokio::spawn(async move {
                p.wait_for_high_watermark(2, 0, Duration::from_secs(60))
                    .await
            })
        };
        p.apply_state(&state(2, 1, &[LOCAL, 2], &[2]), 0);
        assert_eq!(waiting.await.unwrap(), Err(ErrorCode::NotLeaderOrFollower));
    }

    #[test]
    fn leadership_packs_both_halves_exactly() {
        for (epoch, leader) in [(0, 1), (-1, -1), (i32::MAX, i32::MIN), (7, -1), (-5, 3)] {
            assert_eq!(unpack(pack(epoch, leader)), (epoch, leader));
        }
    }
}
