//! The transaction coordinator (KIP-98): transactional ids, their producer
//! ids and epochs, and the state of their transactions.
//!
//! ```text
//! InitProducerId ──> Empty ──AddPartitionsToTxn/AddOffsetsToTxn──> Ongoing
//!                      ^                                              │
//!                      │                     EndTxn, timeout, fencing │
//!                      │                                              v
//!              CompleteCommit/Abort <── markers written ── PrepareCommit/Abort
//! ```
//!
//! # Layout
//!
//! - this file: [`TxnCoordinator`], its settings ([`TxnConfig`]), its ports
//!   ([`ProducerIdSource`]) and the transactions' state
//!   machine;
//! - [`shard`]: [`TxnShard`], the transactional ids of one partition of
//!   `__transaction_state`, loaded from and written to that partition;
//! - [`markers`]: the [`MarkerSender`] port (Kafka's
//!   WriteTxnMarkers) and the append of one marker to a local partition;
//! - [`store`]: the records of `__transaction_state` (Kafka's schema).
//!
//! The coordinator is sharded by the partitions of `__transaction_state`
//! (Kafka's `TransactionStateManager`, with [`crate::coordinator::Shards`]):
//! a transactional id belongs to the partition its hash names, and the shard
//! of that partition exists while this broker leads it. [`TxnCoordinator::sync`]
//! elects the local partitions this broker leads (each is replayed: its
//! shard loads) and resigns the others; a shard's coordinator epoch is the
//! partition's leader epoch, sent with its markers. Requests for an id whose
//! shard is loading get COORDINATOR_LOAD_IN_PROGRESS; for one this broker
//! does not lead, NOT_COORDINATOR.
//!
//! Every change is appended to the shard's partition (see [`store`]) before
//! the client is answered, under the shard's lock, so the log order is the
//! order of the changes. Transactions a load finds in a Prepare state get
//! their markers written again by the timer, woken by the load (markers are
//! idempotent for the partitions: a second one ends nothing).
//!
//! Markers go through a [`MarkerSender`] the caller
//! hands in (the local one appends to this broker's partitions; a cluster's
//! sends WriteTxnMarkers). They are written before EndTxn is answered; a
//! partition whose marker cannot be written leaves the transaction in its
//! Prepare state, and the timer retries it (clients meanwhile get
//! CONCURRENT_TRANSACTIONS, which they retry).
//!
//! The timer also aborts transactions open longer than their timeout: the
//! producer's epoch is bumped first, so the producer is fenced, then the abort
//! markers are written with the new epoch (Kafka's behaviour).
//!
//! KIP-890 part 1: a transactional produce asks the data partition's
//! producer state first, and asks the id's coordinator (`api::txn::verify_txn`:
//! [`TxnCoordinator::verify_partitions`] here, AddPartitionsToTxn
//! `verify_only` on another broker) only
//! when the producer has no transaction ongoing there; the partition then
//! needs the verification guard it handed out for the append, and the
//! transaction's marker removes the guard (see `strom_storage`'s producer
//! state). A produce never takes a coordinator lock.
//!
//! Nothing here knows the broker: the metadata image comes as an argument,
//! producer ids from a [`ProducerIdSource`], markers go through a
//! [`MarkerSender`], and each shard writes to its
//! [`CoordinatorLog`]. Creating `__transaction_state` is the API layer's
//! (`api::txn`), as in Kafka's request handlers.

pub mod markers;
pub mod shard;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use strom_controller::MetadataImage;
use strom_protocol::error_code::ErrorCode;
use strom_storage::Clock;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use crate::config::TxnConfig;
use crate::coordinator::{CoordinatorLog, Shards};
use crate::partition::Partition;
use markers::{MarkerRequest, MarkerSender};
pub use shard::TxnShard;
use store::{TRANSACTION_STATE_TOPIC, TxnStatus, TxnValue};

/// Kafka's limit on partitions a transaction may hold is none; a request adds
/// what fits a frame. Bound the set per transaction so a client cannot grow
/// the coordinator's memory without limit: far above what Kafka Streams
/// applications use (hundreds).
pub const MAX_PARTITIONS_PER_TXN: usize = 100_000;

/// What one shard knows: the state of each transactional id hashed to its
/// partition.
#[derive(Debug, Default)]
pub struct TxnState {
    pub ids: HashMap<String, TxnValue>,
}

impl TxnState {
    /// KIP-890 part 1: whether `producer_id` at `epoch`, as `transactional_id`,
    /// may write transactionally to `topic`-`partition` now: its transaction
    /// is ongoing and holds the partition.
    pub fn verify(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: i32,
    ) -> Result<(), ErrorCode> {
        let Some(txn) = self.ids.get(transactional_id) else {
            return Err(ErrorCode::InvalidProducerIdMapping);
        };
        if txn.producer_id != producer_id {
            return Err(ErrorCode::InvalidProducerIdMapping);
        }
        if txn.producer_epoch != epoch {
            return Err(ErrorCode::InvalidProducerEpoch);
        }
        if txn.status != TxnStatus::Ongoing
            || !txn.partitions.contains(&(topic.to_owned(), partition))
        {
            return Err(ErrorCode::InvalidTxnState);
        }
        Ok(())
    }
}

/// The error for a producer whose epoch is not the transactional id's: Kafka
/// answers PRODUCER_FENCED from the versions that know it (KIP-588) and
/// INVALID_PRODUCER_EPOCH before.
pub fn fenced(fenced_from_version: i16, version: i16) -> ErrorCode {
    if version >= fenced_from_version {
        ErrorCode::ProducerFenced
    } else {
        ErrorCode::InvalidProducerEpoch
    }
}

/// Where new producer ids come from (Kafka's `ProducerIdManager`: blocks of
/// ids from the controller). Blocking: the coordinator calls it off the
/// async threads.
pub trait ProducerIdSource: Send + Sync + fmt::Debug {
    /// A producer id no producer had; COORDINATOR_NOT_AVAILABLE (or another
    /// retriable code) when none can be had now.
    fn next_producer_id(&self) -> Result<i64, ErrorCode>;
}

/// The transaction coordinator of this broker: one shard per partition of
/// `__transaction_state` it leads.
pub struct TxnCoordinator {
    /// The settings: timeouts, expiry, the topic's partition count.
    pub config: TxnConfig,
    /// The time of transactions' starts and updates, and of timeouts.
    clock: Arc<dyn Clock>,
    /// Fresh producer ids for new transactional ids and exhausted epochs.
    producer_ids: Arc<dyn ProducerIdSource>,
    /// The loaded partitions. Its lock is only held to find a shard; each
    /// shard locks its own ids.
    shards: Shards<TxnShard>,
    /// Woken when a shard loads, so the timer completes the transactions
    /// the load found in a Prepare state without waiting a period.
    loaded: Notify,
}

impl fmt::Debug for TxnCoordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxnCoordinator")
            .field("config", &self.config)
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

impl TxnCoordinator {
    /// A coordinator with no shard yet: [`Self::sync`] loads them.
    pub fn new(
        config: TxnConfig,
        clock: Arc<dyn Clock>,
        producer_ids: Arc<dyn ProducerIdSource>,
    ) -> Self {
        Self {
            config,
            clock,
            producer_ids,
            shards: Shards::default(),
            loaded: Notify::new(),
        }
    }

    /// This broker became the leader of partition `index` at `epoch`:
    /// replays `log` into the partition's shard (Kafka's `onElection`).
    /// Blocking. Returns whether a shard was loaded (false when the
    /// partition is already loaded at this epoch or a newer one, or the
    /// load failed or was overtaken).
    pub fn on_elected(&self, index: i32, epoch: i32, log: Arc<dyn CoordinatorLog>) -> bool {
        if !self.shards.elected(index, epoch) {
            return false;
        }
        match TxnShard::load(index, epoch, log) {
            Ok(mut shard) => {
                let ids = shard.ids_loaded();
                if !self.shards.loaded(index, epoch, shard) {
                    return false;
                }
                tracing::info!(
                    partition = index,
                    coordinator_epoch = epoch,
                    transactional_ids = ids,
                    "transaction coordinator loaded a partition of {TRANSACTION_STATE_TOPIC}"
                );
                self.loaded.notify_one();
                true
            }
            Err(e) => {
                tracing::error!(partition = index, error = %e, "cannot load a partition of {TRANSACTION_STATE_TOPIC}; its transactional ids get NOT_COORDINATOR");
                self.shards.load_failed(index, epoch);
                false
            }
        }
    }

    /// This broker stopped leading partition `index` (`epoch`: the newer
    /// leader epoch, `None` when the partition is gone): its shard is
    /// dropped (Kafka's `onResignation`). Work holding the shard finishes
    /// against a log it no longer leads, which refuses it.
    pub fn on_resigned(&self, index: i32, epoch: Option<i32>) {
        if self.shards.resigned(index, epoch).is_some() {
            tracing::info!(
                partition = index,
                "transaction coordinator resigned a partition of {TRANSACTION_STATE_TOPIC}"
            );
        }
    }

    /// Brings the shards in line with the local partitions of
    /// `__transaction_state` (by index): elects those this broker leads,
    /// at their leader epoch, and resigns the rest. Idempotent; blocking (a
    /// load replays a partition). The metadata publisher calls it on every
    /// change.
    pub fn sync(&self, partitions: &BTreeMap<i32, Arc<Partition>>) {
        for (index, partition) in partitions {
            if partition.is_leader() {
                let log: Arc<dyn CoordinatorLog> = Arc::clone(partition) as _;
                self.on_elected(*index, partition.leader_epoch(), log);
            }
        }
        for index in self.shards.indexes() {
            match partitions.get(&index) {
                Some(p) if p.is_leader() => {}
                Some(p) => self.on_resigned(index, Some(p.leader_epoch())),
                None => self.on_resigned(index, None),
            }
        }
    }

    /// The shard of `transactional_id`, by the partition count of
    /// `__transaction_state` in `image`.
    pub fn shard(
        &self,
        image: &MetadataImage,
        transactional_id: &str,
    ) -> Result<Arc<TxnShard>, ErrorCode> {
        let count = image
            .topic(TRANSACTION_STATE_TOPIC)
            .ok_or(ErrorCode::CoordinatorNotAvailable)?
            .partitions
            .len();
        let count = i32::try_from(count).map_err(|_| ErrorCode::CoordinatorNotAvailable)?;
        self.shards
            .get(store::partition_for(transactional_id, count))
    }

    /// Every loaded shard (ListTransactions).
    pub fn shards(&self) -> Vec<Arc<TxnShard>> {
        self.shards.active().into_iter().map(|(_, s)| s).collect()
    }

    /// Runs the timer until `shutdown`: first completes the transactions the
    /// loads found in a Prepare state, then every
    /// `abort_timed_out_interval_ms` (and after each load) retries pending
    /// markers, aborts transactions past their timeout and forgets expired
    /// ids.
    pub async fn run_timers(&self, markers: &dyn MarkerSender, shutdown: CancellationToken) {
        self.tick(markers).await;
        let period = Duration::from_millis(
            u64::try_from(self.config.abort_timed_out_interval_ms).unwrap_or(10_000),
        );
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = interval.tick() => self.tick(markers).await,
                () = self.loaded.notified() => self.tick(markers).await,
            }
        }
    }

    /// One round of the timer over every loaded shard.
    pub async fn tick(&self, markers: &dyn MarkerSender) {
        for shard in self.shards() {
            self.tick_shard(&shard, markers).await;
        }
    }

    async fn tick_shard(&self, shard: &TxnShard, markers: &dyn MarkerSender) {
        let mut state = shard.lock().await;
        let now = self.clock.now_ms();
        let ids: Vec<String> = state.ids.keys().cloned().collect();
        for id in ids {
            let Some(txn) = state.ids.get(&id).cloned() else {
                continue;
            };
            let result = match txn.status {
                TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => {
                    self.complete(shard, &mut state, &id, markers).await
                }
                TxnStatus::Ongoing
                    if now.saturating_sub(txn.start_ms) > i64::from(txn.timeout_ms) =>
                {
                    tracing::info!(transactional_id = %id, producer_id = txn.producer_id, "aborting a transaction past its timeout");
                    self.fence_and_abort(shard, &mut state, &id, markers).await
                }
                TxnStatus::Empty | TxnStatus::CompleteCommit | TxnStatus::CompleteAbort
                    if now.saturating_sub(txn.last_update_ms) > self.config.id_expiration_ms =>
                {
                    tracing::info!(transactional_id = %id, producer_id = txn.producer_id, "forgetting an expired transactional id");
                    shard.persist(&mut state, &id, None, now).await
                }
                _ => Ok(()),
            };
            if let Err(e) = result {
                tracing::warn!(transactional_id = %id, error = ?e, "could not end a transaction; retrying later");
            }
        }
    }

    /// A fresh producer id from the [`ProducerIdSource`].
    async fn new_producer_id(&self) -> Result<i64, ErrorCode> {
        let ids = Arc::clone(&self.producer_ids);
        tokio::task::spawn_blocking(move || ids.next_producer_id())
            .await
            .unwrap_or(Err(ErrorCode::CoordinatorNotAvailable))
    }

    /// InitProducerId with a transactional id: the id's producer id with a
    /// bumped epoch (a new producer id when the epoch is exhausted, a fresh
    /// one for a new id). An open transaction is aborted first, with the
    /// epoch bumped so that the previous instance is fenced. `expected`
    /// (KIP-360, v3+) must be the id's current producer id and epoch, or its
    /// previous epoch for a retried bump.
    pub async fn init_producer_id(
        &self,
        image: &MetadataImage,
        markers: &dyn MarkerSender,
        transactional_id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        version: i16,
    ) -> Result<(i64, i16), ErrorCode> {
        let shard = self.shard(image, transactional_id)?;
        let mut state = shard.lock().await;
        let now = self.clock.now_ms();
        let Some(current) = state.ids.get(transactional_id).cloned() else {
            let producer_id = self.new_producer_id().await?;
            let value = TxnValue {
                producer_id,
                producer_epoch: 0,
                timeout_ms,
                status: TxnStatus::Empty,
                partitions: BTreeSet::new(),
                last_update_ms: now,
                start_ms: -1,
            };
            shard
                .persist(&mut state, transactional_id, Some(value), now)
                .await?;
            return Ok((producer_id, 0));
        };
        if let Some((pid, epoch)) = expected
            && (pid != current.producer_id || epoch != current.producer_epoch)
        {
            return Err(fenced(4, version));
        }
        match current.status {
            TxnStatus::PrepareCommit | TxnStatus::PrepareAbort | TxnStatus::PrepareEpochFence => {
                drop(state);
                return Err(ErrorCode::ConcurrentTransactions);
            }
            TxnStatus::Ongoing => {
                // The previous instance's transaction goes, and it is fenced.
                if let Err(e) = self
                    .fence_and_abort(&shard, &mut state, transactional_id, markers)
                    .await
                {
                    tracing::warn!(transactional_id, error = ?e, "could not abort the open transaction of a re-initialised producer");
                    return Err(ErrorCode::ConcurrentTransactions);
                }
            }
            _ => {}
        }
        let Some(current) = state.ids.get(transactional_id).cloned() else {
            return Err(ErrorCode::CoordinatorNotAvailable);
        };
        let (producer_id, producer_epoch) = if current.producer_epoch >= i16::MAX - 1 {
            // The epoch is exhausted: a new producer id starts at 0.
            (self.new_producer_id().await?, 0)
        } else {
            (current.producer_id, current.producer_epoch + 1)
        };
        let value = TxnValue {
            producer_id,
            producer_epoch,
            timeout_ms,
            status: TxnStatus::Empty,
            partitions: BTreeSet::new(),
            last_update_ms: now,
            start_ms: -1,
        };
        shard
            .persist(&mut state, transactional_id, Some(value), now)
            .await?;
        Ok((producer_id, producer_epoch))
    }

    /// Checks that the request's producer is the id's current one.
    fn check_producer(
        state: &TxnState,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        fenced_error: ErrorCode,
    ) -> Result<TxnValue, ErrorCode> {
        let txn = state
            .ids
            .get(transactional_id)
            .ok_or(ErrorCode::InvalidProducerIdMapping)?;
        if txn.producer_id != producer_id {
            return Err(ErrorCode::InvalidProducerIdMapping);
        }
        if txn.producer_epoch != epoch {
            return Err(fenced_error);
        }
        Ok(txn.clone())
    }

    /// AddPartitionsToTxn / AddOffsetsToTxn: adds `partitions` to the
    /// transaction, which becomes (or stays) ongoing.
    pub async fn add_partitions(
        &self,
        image: &MetadataImage,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
        fenced_error: ErrorCode,
    ) -> Result<(), ErrorCode> {
        let shard = self.shard(image, transactional_id)?;
        let mut state = shard.lock().await;
        let mut txn =
            Self::check_producer(&state, transactional_id, producer_id, epoch, fenced_error)?;
        match txn.status {
            TxnStatus::PrepareCommit | TxnStatus::PrepareAbort | TxnStatus::PrepareEpochFence => {
                return Err(ErrorCode::ConcurrentTransactions);
            }
            TxnStatus::Dead => return Err(ErrorCode::InvalidTxnState),
            TxnStatus::Ongoing if partitions.iter().all(|p| txn.partitions.contains(p)) => {
                return Ok(());
            }
            _ => {}
        }
        let now = self.clock.now_ms();
        if txn.status != TxnStatus::Ongoing {
            txn.status = TxnStatus::Ongoing;
            txn.partitions.clear();
            txn.start_ms = now;
        }
        txn.partitions.extend(partitions.iter().cloned());
        if txn.partitions.len() > MAX_PARTITIONS_PER_TXN {
            return Err(ErrorCode::InvalidRequest);
        }
        txn.last_update_ms = now;
        shard
            .persist(&mut state, transactional_id, Some(txn), now)
            .await
    }

    /// AddPartitionsToTxn with verify_only (v4+, KIP-890): whether each
    /// partition is in the ongoing transaction. An id whose shard is not
    /// here gets the shard's error (INVALID_PRODUCER_ID_MAPPING when there
    /// is no `__transaction_state` at all: no id is known).
    pub async fn verify_partitions(
        &self,
        image: &MetadataImage,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
    ) -> Vec<ErrorCode> {
        let shard = match self.shard(image, transactional_id) {
            Ok(shard) => shard,
            Err(e) => {
                let e = if image.topic(TRANSACTION_STATE_TOPIC).is_none() {
                    ErrorCode::InvalidProducerIdMapping
                } else {
                    e
                };
                return vec![e; partitions.len()];
            }
        };
        let state = shard.lock().await;
        partitions
            .iter()
            .map(
                |(t, p)| match state.verify(transactional_id, producer_id, epoch, t, *p) {
                    Ok(()) => ErrorCode::None,
                    Err(e) => e,
                },
            )
            .collect()
    }

    /// EndTxn: commits or aborts the ongoing transaction. The outcome is
    /// persisted (Prepare) before the markers are written, and the
    /// transaction completes once every partition has its marker.
    #[allow(clippy::too_many_arguments)] // the request's fields and the two ports
    pub async fn end_txn(
        &self,
        image: &MetadataImage,
        markers: &dyn MarkerSender,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        fenced_error: ErrorCode,
    ) -> Result<(), ErrorCode> {
        let shard = self.shard(image, transactional_id)?;
        let mut state = shard.lock().await;
        let mut txn =
            Self::check_producer(&state, transactional_id, producer_id, epoch, fenced_error)?;
        match (txn.status, commit) {
            (TxnStatus::Ongoing, _) => {}
            // A retry of an EndTxn that completed.
            (TxnStatus::CompleteCommit, true) | (TxnStatus::CompleteAbort, false) => {
                return Ok(());
            }
            (TxnStatus::PrepareCommit, true) | (TxnStatus::PrepareAbort, false) => {
                return Err(ErrorCode::ConcurrentTransactions);
            }
            (TxnStatus::PrepareEpochFence, _) => return Err(ErrorCode::ConcurrentTransactions),
            _ => return Err(ErrorCode::InvalidTxnState),
        }
        txn.status = if commit {
            TxnStatus::PrepareCommit
        } else {
            TxnStatus::PrepareAbort
        };
        let now = self.clock.now_ms();
        txn.last_update_ms = now;
        shard
            .persist(&mut state, transactional_id, Some(txn), now)
            .await?;
        // The outcome is decided; markers that fail are retried by the timer.
        if let Err(e) = self
            .complete(&shard, &mut state, transactional_id, markers)
            .await
        {
            tracing::warn!(transactional_id, error = ?e, "markers not written yet; the timer retries");
        }
        Ok(())
    }

    /// Fences the producer (epoch + 1, unless exhausted) and aborts its
    /// ongoing transaction: a timeout, or a new instance of the producer.
    async fn fence_and_abort(
        &self,
        shard: &TxnShard,
        state: &mut TxnState,
        transactional_id: &str,
        markers: &dyn MarkerSender,
    ) -> Result<(), ErrorCode> {
        let Some(mut txn) = state.ids.get(transactional_id).cloned() else {
            return Ok(());
        };
        if txn.status != TxnStatus::Ongoing {
            return Ok(());
        }
        if txn.producer_epoch < i16::MAX - 1 {
            txn.producer_epoch += 1;
        }
        txn.status = TxnStatus::PrepareAbort;
        let now = self.clock.now_ms();
        txn.last_update_ms = now;
        shard
            .persist(state, transactional_id, Some(txn), now)
            .await?;
        self.complete(shard, state, transactional_id, markers).await
    }

    /// Writes the markers of a transaction in a Prepare state and completes
    /// it once every partition has one.
    async fn complete(
        &self,
        shard: &TxnShard,
        state: &mut TxnState,
        transactional_id: &str,
        markers: &dyn MarkerSender,
    ) -> Result<(), ErrorCode> {
        let Some(mut txn) = state.ids.get(transactional_id).cloned() else {
            return Ok(());
        };
        let commit = match txn.status {
            TxnStatus::PrepareCommit => true,
            TxnStatus::PrepareAbort => false,
            _ => return Ok(()),
        };
        let request = MarkerRequest {
            producer_id: txn.producer_id,
            producer_epoch: txn.producer_epoch,
            commit,
            coordinator_epoch: shard.coordinator_epoch(),
            partitions: txn.partitions.iter().cloned().collect(),
        };
        let results = markers.send(&request).await;
        let mut pending = BTreeSet::new();
        for ((topic, partition), code) in results {
            match code {
                // Gone partitions have nothing to end; a newer epoch in the
                // partition means the marker is obsolete.
                ErrorCode::None
                | ErrorCode::UnknownTopicOrPartition
                | ErrorCode::InvalidProducerEpoch => {}
                other => {
                    tracing::debug!(transactional_id, topic, partition, error = ?other, "marker not written");
                    pending.insert((topic, partition));
                }
            }
        }
        let now = self.clock.now_ms();
        if !pending.is_empty() {
            // Only the partitions still without a marker are retried.
            if pending != txn.partitions {
                txn.partitions = pending;
                shard
                    .persist(state, transactional_id, Some(txn), now)
                    .await?;
            }
            return Err(ErrorCode::ConcurrentTransactions);
        }
        txn.status = if commit {
            TxnStatus::CompleteCommit
        } else {
            TxnStatus::CompleteAbort
        };
        txn.partitions.clear();
        txn.last_update_ms = now;
        shard.persist(state, transactional_id, Some(txn), now).await
    }
}

#[cfg(test)]
mod tests;
