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
//! Every change is appended to the transactional id's partition of the
//! internal compacted topic `__transaction_state` (see [`store`]) before the
//! client is answered, under the coordinator lock, so the log order is the
//! order of the changes. At start the coordinator replays those partitions;
//! transactions found in a Prepare state get their markers written again
//! (markers are idempotent for the partitions: a second one ends nothing).
//!
//! Markers go through [`markers`], the WriteTxnMarkers path. They are written
//! before EndTxn is answered; a partition whose marker cannot be written
//! leaves the transaction in its Prepare state, and the timer retries it
//! (clients meanwhile get CONCURRENT_TRANSACTIONS, which they retry).
//!
//! The timer also aborts transactions open longer than their timeout: the
//! producer's epoch is bumped first, so the producer is fenced, then the abort
//! markers are written with the new epoch (Kafka's behaviour).
//!
//! KIP-890 part 1: a transactional produce is checked against the ongoing
//! transaction ([`TxnState::verify`]); the produce path holds the
//! coordinator lock from the check until its append is in the log, so a
//! marker cannot slip in between (on one node this replaces Kafka's
//! verification guards).

pub mod markers;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strom_controller::controller::CreateTopicRequest;
use strom_controller::{MetadataImage, PartitionImage};
use strom_protocol::error_code::ErrorCode;
use strom_storage::AppendOrigin;
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::api::produce::coordinator_append_error;
use crate::broker::Broker;
use crate::config::{ConfigError, parse_prop as prop};
use crate::replica::ReplicaManager;
use markers::MarkerRequest;
use store::{TRANSACTION_STATE_TOPIC, TxnRecord, TxnStatus, TxnValue};

/// Kafka's `transaction.state.log.segment.bytes` default.
const TXN_STATE_SEGMENT_BYTES: &str = "104857600";
/// Bound on timer settings (Kafka's are ints).
const MAX_TIMER_MS: i64 = i32::MAX as i64;
/// Kafka's limit on partitions a transaction may hold is none; a request adds
/// what fits a frame. Bound the set per transaction so a client cannot grow
/// the coordinator's memory without limit: far above what Kafka Streams
/// applications use (hundreds).
pub const MAX_PARTITIONS_PER_TXN: usize = 100_000;

/// The coordinator's settings, from broker properties with Kafka's names.
#[derive(Debug, Clone)]
pub struct TxnConfig {
    /// `transaction.state.log.num.partitions`, default 50.
    pub partitions: i32,
    /// `transaction.state.log.replication.factor`, default 3 (capped by the
    /// brokers there are when the topic is created).
    pub replication_factor: i16,
    /// `transaction.max.timeout.ms`, default 15 minutes.
    pub max_timeout_ms: i32,
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`,
    /// default 10 s: how often timed-out transactions are looked for.
    pub abort_timed_out_interval_ms: i64,
    /// `transactional.id.expiration.ms`, default 7 days: a transactional id
    /// with no transaction open and no change for this long is forgotten
    /// (what bounds the coordinator's memory, as in Kafka).
    pub id_expiration_ms: i64,
}

impl TxnConfig {
    pub fn from_properties(props: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let positive = |name: &str, v: i64| -> Result<i64, ConfigError> {
            if v > 0 {
                Ok(v)
            } else {
                Err(ConfigError(format!("{name}: must be positive, got {v}")))
            }
        };
        let partitions = positive(
            "transaction.state.log.num.partitions",
            prop(props, "transaction.state.log.num.partitions", 50)?,
        )?;
        let replication = positive(
            "transaction.state.log.replication.factor",
            prop(props, "transaction.state.log.replication.factor", 3)?,
        )?;
        Ok(Self {
            partitions: i32::try_from(partitions).map_err(|_| {
                ConfigError("transaction.state.log.num.partitions: too large".into())
            })?,
            replication_factor: i16::try_from(replication).map_err(|_| {
                ConfigError("transaction.state.log.replication.factor: too large".into())
            })?,
            max_timeout_ms: i32::try_from(positive(
                "transaction.max.timeout.ms",
                prop(props, "transaction.max.timeout.ms", 900_000)?,
            )?)
            .map_err(|_| ConfigError("transaction.max.timeout.ms: too large".into()))?,
            abort_timed_out_interval_ms: positive(
                "transaction.abort.timed.out.transaction.cleanup.interval.ms",
                prop(
                    props,
                    "transaction.abort.timed.out.transaction.cleanup.interval.ms",
                    10_000,
                )?,
            )?
            .min(MAX_TIMER_MS),
            id_expiration_ms: positive(
                "transactional.id.expiration.ms",
                prop(props, "transactional.id.expiration.ms", 604_800_000)?,
            )?,
        })
    }
}

/// Everything the coordinator knows: the state of each transactional id.
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

/// The transaction coordinator of this broker.
#[derive(Debug)]
pub struct TxnCoordinator {
    pub config: TxnConfig,
    state: Arc<Mutex<TxnState>>,
}

impl TxnCoordinator {
    /// Rebuilds the state from the local partitions of `__transaction_state`.
    pub fn open(config: TxnConfig, replicas: &ReplicaManager) -> Self {
        let mut state = TxnState::default();
        let mut records = 0usize;
        for (index, partition) in replicas.topic_partitions(TRANSACTION_STATE_TOPIC) {
            let from = partition.log.log_start_offset();
            let result = partition.log.for_each_batch_from(from, |_, header, bytes| {
                if header.is_control() {
                    return;
                }
                for r in store::decode(&Bytes::copy_from_slice(bytes)) {
                    records += 1;
                    match r.value {
                        Some(v) => {
                            state.ids.insert(r.transactional_id, v);
                        }
                        None => {
                            state.ids.remove(&r.transactional_id);
                        }
                    }
                }
            });
            if let Err(e) = result {
                tracing::error!(partition = index, error = %e, "reading {TRANSACTION_STATE_TOPIC} failed; transactional ids in this partition may be incomplete");
            }
        }
        if records > 0 {
            tracing::info!(
                transactional_ids = state.ids.len(),
                records,
                "transaction coordinator loaded {TRANSACTION_STATE_TOPIC}"
            );
        }
        Self {
            config,
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// The state, locked.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, TxnState> {
        self.state.lock().await
    }

    /// The state, locked, with a guard that may move into blocking work
    /// (the produce path holds it across its appends).
    pub async fn lock_owned(&self) -> OwnedMutexGuard<TxnState> {
        Arc::clone(&self.state).lock_owned().await
    }

    /// Runs the timer until the broker shuts down: first completes the
    /// transactions a restart found in a Prepare state, then every
    /// `abort_timed_out_interval_ms` retries pending markers and aborts
    /// transactions past their timeout.
    pub async fn run_timers(broker: Arc<Broker>) {
        broker.txn.tick(&broker).await;
        let period = Duration::from_millis(
            u64::try_from(broker.txn.config.abort_timed_out_interval_ms).unwrap_or(10_000),
        );
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = broker.shutdown.cancelled() => return,
                _ = interval.tick() => broker.txn.tick(&broker).await,
            }
        }
    }

    async fn tick(&self, broker: &Arc<Broker>) {
        let mut state = self.lock().await;
        let now = broker.clock.now_ms();
        let ids: Vec<String> = state.ids.keys().cloned().collect();
        for id in ids {
            let Some(txn) = state.ids.get(&id).cloned() else {
                continue;
            };
            let result = match txn.status {
                TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => {
                    self.complete(broker, &mut state, &id).await
                }
                TxnStatus::Ongoing
                    if now.saturating_sub(txn.start_ms) > i64::from(txn.timeout_ms) =>
                {
                    tracing::info!(transactional_id = %id, producer_id = txn.producer_id, "aborting a transaction past its timeout");
                    self.fence_and_abort(broker, &mut state, &id).await
                }
                TxnStatus::Empty | TxnStatus::CompleteCommit | TxnStatus::CompleteAbort
                    if now.saturating_sub(txn.last_update_ms) > self.config.id_expiration_ms =>
                {
                    tracing::info!(transactional_id = %id, producer_id = txn.producer_id, "forgetting an expired transactional id");
                    self.forget(broker, &mut state, &id).await
                }
                _ => Ok(()),
            };
            if let Err(e) = result {
                tracing::warn!(transactional_id = %id, error = ?e, "could not end a transaction; retrying later");
            }
        }
    }

    /// Why this broker cannot coordinate `transactional_id`, if it cannot
    /// (the topic is created first if it does not exist yet).
    pub async fn coordinator_error(
        &self,
        broker: &Arc<Broker>,
        transactional_id: &str,
    ) -> Option<ErrorCode> {
        let image = broker.image();
        if let Some((_, p)) = txn_partition(&image, transactional_id) {
            return match p.leader {
                node if node == broker.node_id => None,
                node if node < 0 => Some(ErrorCode::CoordinatorNotAvailable),
                _ => Some(ErrorCode::NotCoordinator),
            };
        }
        let broker_for_task = Arc::clone(broker);
        let config = self.config.clone();
        let id = transactional_id.to_owned();
        let leader = crate::api::blocking(move || coordinator_for(&broker_for_task, &config, &id))
            .await
            .unwrap_or(Err(ErrorCode::CoordinatorNotAvailable));
        match leader {
            Ok(node) if node == broker.node_id => None,
            Ok(_) => Some(ErrorCode::NotCoordinator),
            Err(e) => Some(e),
        }
    }

    /// Whether this broker coordinates `transactional_id` now.
    pub fn coordinates(&self, broker: &Broker, transactional_id: &str) -> bool {
        let image = broker.image();
        txn_partition(&image, transactional_id).is_some_and(|(_, p)| p.leader == broker.node_id)
    }

    /// Persists `value` (or the deletion) of `transactional_id`. Call with
    /// the state lock held; the state changes only once this succeeded.
    async fn persist(
        &self,
        broker: &Arc<Broker>,
        state: &mut TxnState,
        transactional_id: &str,
        value: TxnValue,
    ) -> Result<(), ErrorCode> {
        let broker_for_task = Arc::clone(broker);
        let config = self.config.clone();
        let record = TxnRecord {
            transactional_id: transactional_id.to_owned(),
            value: Some(value.clone()),
        };
        crate::api::blocking(move || append(&broker_for_task, &config, &record))
            .await
            .unwrap_or(Err(ErrorCode::UnknownServerError))?;
        state.ids.insert(transactional_id.to_owned(), value);
        Ok(())
    }

    /// Deletes `transactional_id` (a tombstone in `__transaction_state`).
    async fn forget(
        &self,
        broker: &Arc<Broker>,
        state: &mut TxnState,
        transactional_id: &str,
    ) -> Result<(), ErrorCode> {
        let broker_for_task = Arc::clone(broker);
        let config = self.config.clone();
        let record = TxnRecord {
            transactional_id: transactional_id.to_owned(),
            value: None,
        };
        crate::api::blocking(move || append(&broker_for_task, &config, &record))
            .await
            .unwrap_or(Err(ErrorCode::UnknownServerError))?;
        state.ids.remove(transactional_id);
        Ok(())
    }

    /// InitProducerId with a transactional id: the id's producer id with a
    /// bumped epoch (a new producer id when the epoch is exhausted, a fresh
    /// one for a new id). An open transaction is aborted first, with the
    /// epoch bumped so that the previous instance is fenced. `expected`
    /// (KIP-360, v3+) must be the id's current producer id and epoch, or its
    /// previous epoch for a retried bump.
    pub async fn init_producer_id(
        &self,
        broker: &Arc<Broker>,
        transactional_id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        version: i16,
    ) -> Result<(i64, i16), ErrorCode> {
        if let Some(e) = self.coordinator_error(broker, transactional_id).await {
            return Err(e);
        }
        let mut state = self.lock().await;
        let now = broker.clock.now_ms();
        let Some(current) = state.ids.get(transactional_id).cloned() else {
            let producer_id = new_producer_id(broker).await?;
            let value = TxnValue {
                producer_id,
                producer_epoch: 0,
                timeout_ms,
                status: TxnStatus::Empty,
                partitions: BTreeSet::new(),
                last_update_ms: now,
                start_ms: -1,
            };
            self.persist(broker, &mut state, transactional_id, value)
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
                    .fence_and_abort(broker, &mut state, transactional_id)
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
            (new_producer_id(broker).await?, 0)
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
        self.persist(broker, &mut state, transactional_id, value)
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
        broker: &Arc<Broker>,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
        fenced_error: ErrorCode,
    ) -> Result<(), ErrorCode> {
        if let Some(e) = self.coordinator_error(broker, transactional_id).await {
            return Err(e);
        }
        let mut state = self.lock().await;
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
        let now = broker.clock.now_ms();
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
        self.persist(broker, &mut state, transactional_id, txn)
            .await
    }

    /// AddPartitionsToTxn with verify_only (v4+, KIP-890): whether each
    /// partition is in the ongoing transaction.
    pub async fn verify_partitions(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
    ) -> Vec<ErrorCode> {
        let state = self.lock().await;
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
    pub async fn end_txn(
        &self,
        broker: &Arc<Broker>,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        fenced_error: ErrorCode,
    ) -> Result<(), ErrorCode> {
        if let Some(e) = self.coordinator_error(broker, transactional_id).await {
            return Err(e);
        }
        let mut state = self.lock().await;
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
        txn.last_update_ms = broker.clock.now_ms();
        self.persist(broker, &mut state, transactional_id, txn)
            .await?;
        // The outcome is decided; markers that fail are retried by the timer.
        if let Err(e) = self.complete(broker, &mut state, transactional_id).await {
            tracing::warn!(transactional_id, error = ?e, "markers not written yet; the timer retries");
        }
        Ok(())
    }

    /// Fences the producer (epoch + 1, unless exhausted) and aborts its
    /// ongoing transaction: a timeout, or a new instance of the producer.
    async fn fence_and_abort(
        &self,
        broker: &Arc<Broker>,
        state: &mut TxnState,
        transactional_id: &str,
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
        txn.last_update_ms = broker.clock.now_ms();
        self.persist(broker, state, transactional_id, txn).await?;
        self.complete(broker, state, transactional_id).await
    }

    /// Writes the markers of a transaction in a Prepare state and completes
    /// it once every partition has one.
    async fn complete(
        &self,
        broker: &Arc<Broker>,
        state: &mut TxnState,
        transactional_id: &str,
    ) -> Result<(), ErrorCode> {
        let Some(mut txn) = state.ids.get(transactional_id).cloned() else {
            return Ok(());
        };
        let commit = match txn.status {
            TxnStatus::PrepareCommit => true,
            TxnStatus::PrepareAbort => false,
            _ => return Ok(()),
        };
        let coordinator_epoch = {
            let image = broker.image();
            txn_partition(&image, transactional_id).map_or(0, |(_, p)| p.leader_epoch)
        };
        let request = MarkerRequest {
            producer_id: txn.producer_id,
            producer_epoch: txn.producer_epoch,
            commit,
            coordinator_epoch,
            partitions: txn.partitions.iter().cloned().collect(),
        };
        let results = markers::write(broker, &request).await;
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
        if !pending.is_empty() {
            // Only the partitions still without a marker are retried.
            if pending != txn.partitions {
                txn.partitions = pending;
                self.persist(broker, state, transactional_id, txn).await?;
            }
            return Err(ErrorCode::ConcurrentTransactions);
        }
        txn.status = if commit {
            TxnStatus::CompleteCommit
        } else {
            TxnStatus::CompleteAbort
        };
        txn.partitions.clear();
        txn.last_update_ms = broker.clock.now_ms();
        self.persist(broker, state, transactional_id, txn).await
    }
}

/// A fresh producer id from this broker's block.
async fn new_producer_id(broker: &Arc<Broker>) -> Result<i64, ErrorCode> {
    let broker = Arc::clone(broker);
    match crate::api::blocking(move || broker.next_producer_id()).await {
        Some(Ok(id)) => Ok(id),
        Some(Err(e)) => {
            tracing::error!(error = %e, "allocating a producer id failed");
            Err(ErrorCode::CoordinatorNotAvailable)
        }
        None => Err(ErrorCode::CoordinatorNotAvailable),
    }
}

/// The leader of `transactional_id`'s partition of `__transaction_state`,
/// creating the topic when it does not exist yet.
pub fn coordinator_for(
    broker: &Broker,
    config: &TxnConfig,
    transactional_id: &str,
) -> Result<i32, ErrorCode> {
    let image = ensure_topic(broker, config)?;
    let (_, partition) =
        txn_partition(&image, transactional_id).ok_or(ErrorCode::CoordinatorNotAvailable)?;
    if partition.leader < 0 {
        return Err(ErrorCode::CoordinatorNotAvailable);
    }
    Ok(partition.leader)
}

fn txn_partition<'a>(
    image: &'a MetadataImage,
    transactional_id: &str,
) -> Option<(i32, &'a PartitionImage)> {
    let count = image.topic(TRANSACTION_STATE_TOPIC)?.partitions.len();
    let index = store::partition_for(transactional_id, i32::try_from(count).ok()?);
    Some((index, image.partition(TRANSACTION_STATE_TOPIC, index)?))
}

/// Creates `__transaction_state` if it is missing (Kafka does so on the first
/// FindCoordinator for a transactional id), and returns the image that has it.
fn ensure_topic(broker: &Broker, config: &TxnConfig) -> Result<Arc<MetadataImage>, ErrorCode> {
    let image = broker.image();
    if image.topic(TRANSACTION_STATE_TOPIC).is_some() {
        return Ok(image);
    }
    let brokers = i16::try_from(image.brokers.len())
        .unwrap_or(i16::MAX)
        .max(1);
    let request = CreateTopicRequest {
        name: TRANSACTION_STATE_TOPIC.to_owned(),
        num_partitions: config.partitions,
        replication_factor: config.replication_factor.min(brokers),
        assignments: Vec::new(),
        configs: BTreeMap::from([
            ("cleanup.policy".to_owned(), "compact".to_owned()),
            ("compression.type".to_owned(), "uncompressed".to_owned()),
            (
                "segment.bytes".to_owned(),
                TXN_STATE_SEGMENT_BYTES.to_owned(),
            ),
            ("min.insync.replicas".to_owned(), "1".to_owned()),
        ]),
    };
    let created = broker.controller.create_topics(vec![request], false);
    match created.into_iter().next() {
        Some(Ok(_)) => tracing::info!("created {TRANSACTION_STATE_TOPIC}"),
        Some(Err(e)) if e.code == ErrorCode::TopicAlreadyExists => {}
        Some(Err(e)) => {
            tracing::error!(error = %e, "cannot create {TRANSACTION_STATE_TOPIC}");
            return Err(ErrorCode::CoordinatorNotAvailable);
        }
        None => return Err(ErrorCode::CoordinatorNotAvailable),
    }
    // Failures elsewhere are logged and retried by the replica manager;
    // only this topic's matter here.
    let _ = broker.apply_metadata();
    if let Some((partition, e)) = broker.replicas.topic_storage_error(TRANSACTION_STATE_TOPIC) {
        tracing::error!(partition, error = %e, "cannot open the partitions of {TRANSACTION_STATE_TOPIC}");
        return Err(ErrorCode::CoordinatorNotAvailable);
    }
    Ok(broker.image())
}

fn append(broker: &Broker, config: &TxnConfig, record: &TxnRecord) -> Result<(), ErrorCode> {
    let image = ensure_topic(broker, config)?;
    let (index, meta) = txn_partition(&image, &record.transactional_id)
        .ok_or(ErrorCode::CoordinatorNotAvailable)?;
    if meta.leader != broker.node_id {
        return Err(ErrorCode::NotCoordinator);
    }
    let partition = broker
        .replicas
        .get(TRANSACTION_STATE_TOPIC, index)
        .ok_or(ErrorCode::CoordinatorNotAvailable)?;
    let batch =
        store::encode(std::slice::from_ref(record), broker.clock.now_ms()).map_err(|e| {
            tracing::error!(error = %e, "cannot encode a transaction state record");
            ErrorCode::UnknownServerError
        })?;
    match partition.append_as_leader(&batch, AppendOrigin::Coordinator) {
        Ok(_) => Ok(()),
        Err(e) => {
            let code = coordinator_append_error(
                &e,
                &[],
                ErrorCode::InvalidRequest,
                ErrorCode::CoordinatorNotAvailable,
            );
            if code == ErrorCode::CoordinatorNotAvailable {
                tracing::error!(partition = index, error = %e, "appending to {TRANSACTION_STATE_TOPIC} failed");
            }
            Err(code)
        }
    }
}
