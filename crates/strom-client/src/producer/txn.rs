//! The transactional producer (KIP-98), as the Java client drives it:
//! `init_transactions` fences older instances of the `transactional.id` and
//! gets the producer id; between `begin_transaction` and
//! `commit_transaction`/`abort_transaction`, every partition written is first
//! added to the transaction (AddPartitionsToTxn, sent by the sender task
//! before the partition's first batch), and consumed offsets join it with
//! `send_offsets_to_transaction` (AddOffsetsToTxn, then TxnOffsetCommit to the
//! group coordinator). The transaction protocol used is Kafka's version 1
//! (AddPartitionsToTxn up to v3, EndTxn up to v4), which every broker since
//! 0.11 speaks.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strom_protocol::messages::StrBytes;
use strom_protocol::messages::kafka::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, EndTxnRequest, GroupId,
    InitProducerIdRequest, ProducerId, TopicName, TransactionalId, TxnOffsetCommitRequest,
    add_partitions_to_txn_request::AddPartitionsToTxnTopic,
    txn_offset_commit_request::{TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic},
};

use super::{INIT_PRODUCER_ID_VERSION, Producer, Shared, TopicPartition};
use crate::cluster::{GROUP_KEY, Route, TRANSACTION_KEY};
use crate::consumer::{ConsumerGroupMetadata, TopicPartition as ConsumerTopicPartition};
use crate::error::{Error, ErrorCode, Result};

/// Versions of transaction protocol version 1: newer ones belong to KIP-890's
/// version 2 (AddPartitionsToTxn v4+ is for brokers only).
const ADD_PARTITIONS_VERSION: i16 = 3;
const ADD_OFFSETS_VERSION: i16 = 3;
const END_TXN_VERSION: i16 = 4;
const TXN_OFFSET_COMMIT_VERSION: i16 = 4;

/// The Java client's short retry for CONCURRENT_TRANSACTIONS: the previous
/// transaction's markers are usually written within milliseconds.
const CONCURRENT_TRANSACTIONS_BACKOFF: Duration = Duration::from_millis(20);

/// A transactional producer's progress.
#[derive(Debug, Default)]
pub(super) struct TxnState {
    coordinator: Option<i32>,
    initialized: bool,
    pub(super) in_transaction: bool,
    /// Partitions added to the ongoing transaction.
    pub(super) added: HashSet<TopicPartition>,
    /// The first failure inside the transaction: it can only be aborted.
    pub(super) error: Option<Error>,
}

fn txn_id(shared: &Shared) -> Result<String> {
    shared
        .settings
        .transactional_id
        .clone()
        .ok_or_else(|| Error::State("the producer has no transactional.id".into()))
}

/// Sends to the transaction coordinator with Kafka's retries: find it again
/// when it moved, wait while it loads or the last transaction completes,
/// until `max.block.ms`.
async fn with_coordinator<T, F, Fut>(shared: &Shared, mut call: F) -> Result<T>
where
    F: FnMut(i32) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + shared.settings.max_block;
    let id = txn_id(shared)?;
    loop {
        let known = shared.state.lock().txn.as_ref().and_then(|t| t.coordinator);
        let node = match known {
            Some(node) => Ok(node),
            None => shared.cluster.find_coordinator(TRANSACTION_KEY, &id).await,
        };
        let result = match node {
            Ok(node) => {
                if let Some(txn) = shared.state.lock().txn.as_mut() {
                    txn.coordinator = Some(node);
                }
                call(node).await
            }
            Err(e) => Err(e),
        };
        let error = match result {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let backoff = match error.code() {
            Some(ErrorCode::ConcurrentTransactions) => CONCURRENT_TRANSACTIONS_BACKOFF,
            Some(ErrorCode::CoordinatorLoadInProgress) => shared.cluster.net().retry_backoff,
            Some(ErrorCode::NotCoordinator | ErrorCode::CoordinatorNotAvailable) => {
                forget_coordinator(shared);
                shared.cluster.net().retry_backoff
            }
            _ if matches!(error, Error::Io { .. } | Error::Timeout(_)) => {
                forget_coordinator(shared);
                shared.cluster.net().retry_backoff
            }
            _ => return Err(error),
        };
        if Instant::now() + backoff >= deadline {
            return Err(Error::Timeout(format!("transaction coordinator: {error}")));
        }
        tokio::time::sleep(backoff).await;
    }
}

fn forget_coordinator(shared: &Shared) {
    if let Some(txn) = shared.state.lock().txn.as_mut() {
        txn.coordinator = None;
    }
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

/// Fails with the error that ends the producer or the transaction, if any.
fn check_usable(shared: &Shared, need_transaction: bool) -> Result<()> {
    let state = shared.state.lock();
    if let Some(error) = &state.fatal {
        return Err(error.clone());
    }
    let txn = state
        .txn
        .as_ref()
        .ok_or_else(|| Error::State("the producer has no transactional.id".into()))?;
    if !txn.initialized {
        return Err(Error::State("call init_transactions first".into()));
    }
    if need_transaction && !txn.in_transaction {
        return Err(Error::State(
            "no transaction in progress: call begin_transaction first".into(),
        ));
    }
    Ok(())
}

/// InitProducerId for the transactional id; with the current id and epoch
/// after an abortable error, which bumps the epoch (KIP-360).
async fn init_producer_id(shared: &Shared, bump: bool) -> Result<()> {
    let id = txn_id(shared)?;
    let timeout_ms =
        i32::try_from(shared.settings.transaction_timeout.as_millis()).unwrap_or(i32::MAX);
    let (current_id, current_epoch) = {
        let state = shared.state.lock();
        if bump {
            (state.producer_id, state.producer_epoch)
        } else {
            (-1, -1)
        }
    };
    let response = with_coordinator(shared, |node| {
        let request = InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(str_bytes(&id))))
            .with_transaction_timeout_ms(timeout_ms)
            .with_producer_id(ProducerId(current_id))
            .with_producer_epoch(current_epoch);
        async move {
            let response = shared
                .cluster
                .send(Route::Coordinator(node), INIT_PRODUCER_ID_VERSION, &request)
                .await?;
            Error::check(response.error_code, None).map(|()| response)
        }
    })
    .await;
    let response = match response {
        Ok(response) => response,
        Err(error) => {
            if matches!(
                error.code(),
                Some(
                    ErrorCode::ProducerFenced
                        | ErrorCode::InvalidProducerEpoch
                        | ErrorCode::TransactionalIdAuthorizationFailed
                        | ErrorCode::InvalidTransactionTimeout
                )
            ) {
                shared.state.lock().fatal = Some(error.clone());
            }
            return Err(error);
        }
    };
    let mut state = shared.state.lock();
    state.producer_id = response.producer_id.0;
    state.producer_epoch = response.producer_epoch;
    state.reset_producer_id = false;
    for queue in state.partitions.values_mut() {
        queue.next_sequence = 0;
        queue.acked_sequence = 0;
    }
    if let Some(txn) = state.txn.as_mut() {
        txn.initialized = true;
    }
    Ok(())
}

impl Producer {
    /// Registers the `transactional.id` with its coordinator: fences older
    /// producers with the same id (their pending transaction is aborted) and
    /// takes the producer id and epoch.
    pub async fn init_transactions(&self) -> Result<()> {
        let shared = self.shared();
        txn_id(shared)?;
        init_producer_id(shared, false).await
    }

    /// Starts a transaction: records sent from now on commit or abort
    /// together.
    pub fn begin_transaction(&self) -> Result<()> {
        check_usable(self.shared(), false)?;
        let mut state = self.shared().state.lock();
        let txn = state.txn.as_mut().expect("checked: transactional");
        if txn.in_transaction {
            return Err(Error::State("a transaction is already in progress".into()));
        }
        txn.in_transaction = true;
        txn.added.clear();
        txn.error = None;
        Ok(())
    }

    /// Adds consumed `offsets` (the next offset to read, per partition) to
    /// the transaction: the group sees them only if it commits.
    pub async fn send_offsets_to_transaction(
        &self,
        offsets: &BTreeMap<ConsumerTopicPartition, i64>,
        group: &ConsumerGroupMetadata,
    ) -> Result<()> {
        let shared = self.shared();
        check_usable(shared, true)?;
        let id = txn_id(shared)?;
        let (producer_id, epoch) = {
            let state = shared.state.lock();
            (state.producer_id, state.producer_epoch)
        };
        let result = async {
            with_coordinator(shared, |node| {
                let request = AddOffsetsToTxnRequest::default()
                    .with_transactional_id(TransactionalId(str_bytes(&id)))
                    .with_producer_id(ProducerId(producer_id))
                    .with_producer_epoch(epoch)
                    .with_group_id(GroupId(str_bytes(&group.group_id)));
                async move {
                    let response = shared
                        .cluster
                        .send(Route::Coordinator(node), ADD_OFFSETS_VERSION, &request)
                        .await?;
                    Error::check(response.error_code, None)
                }
            })
            .await?;
            txn_offset_commit(shared, &id, producer_id, epoch, offsets, group).await
        }
        .await;
        if let Err(error) = &result {
            self.note_txn_error(error);
        }
        result
    }

    /// Sends everything buffered, then commits the transaction. Fails if a
    /// record of the transaction failed: the transaction must be aborted.
    pub async fn commit_transaction(&self) -> Result<()> {
        let shared = self.shared();
        check_usable(shared, true)?;
        self.flush().await?;
        if let Some(error) = shared
            .state
            .lock()
            .txn
            .as_ref()
            .and_then(|t| t.error.clone())
        {
            return Err(error);
        }
        self.end_transaction(true).await
    }

    /// Aborts the transaction: records not yet sent fail, records sent are
    /// never seen by read_committed consumers.
    pub async fn abort_transaction(&self) -> Result<()> {
        let shared = self.shared();
        check_usable(shared, true)?;
        let unsent: Vec<super::Batch> = {
            let mut state = shared.state.lock();
            let mut unsent = Vec::new();
            for queue in state.partitions.values_mut() {
                let mut keep = std::collections::VecDeque::new();
                for batch in queue.queue.drain(..) {
                    if batch.sequence.is_none() {
                        unsent.push(batch);
                    } else {
                        keep.push_back(batch);
                    }
                }
                queue.queue = keep;
            }
            unsent
        };
        for batch in unsent {
            super::complete(
                shared,
                batch,
                Err(Error::State("the transaction was aborted".into())),
            );
        }
        // What was sent is answered before the abort marker goes out.
        self.flush().await?;
        self.end_transaction(false).await?;
        if shared.state.lock().reset_producer_id {
            init_producer_id(shared, true).await?;
        }
        Ok(())
    }

    async fn end_transaction(&self, commit: bool) -> Result<()> {
        let shared = self.shared();
        let id = txn_id(shared)?;
        let (producer_id, epoch) = {
            let state = shared.state.lock();
            (state.producer_id, state.producer_epoch)
        };
        let result = with_coordinator(shared, |node| {
            let request = EndTxnRequest::default()
                .with_transactional_id(TransactionalId(str_bytes(&id)))
                .with_producer_id(ProducerId(producer_id))
                .with_producer_epoch(epoch)
                .with_committed(commit);
            async move {
                let response = shared
                    .cluster
                    .send(Route::Coordinator(node), END_TXN_VERSION, &request)
                    .await?;
                Error::check(response.error_code, None)
            }
        })
        .await;
        match &result {
            Ok(()) => {
                let mut state = shared.state.lock();
                if let Some(txn) = state.txn.as_mut() {
                    txn.in_transaction = false;
                    txn.added.clear();
                    txn.error = None;
                }
            }
            Err(error) => self.note_txn_error(error),
        }
        result
    }

    fn note_txn_error(&self, error: &Error) {
        let mut state = self.shared().state.lock();
        if matches!(
            error.code(),
            Some(ErrorCode::ProducerFenced | ErrorCode::InvalidProducerEpoch)
        ) {
            state.fatal = Some(error.clone());
        } else if let Some(txn) = state.txn.as_mut() {
            txn.error.get_or_insert_with(|| error.clone());
        }
    }
}

/// TxnOffsetCommit to the group's coordinator.
async fn txn_offset_commit(
    shared: &Shared,
    id: &str,
    producer_id: i64,
    epoch: i16,
    offsets: &BTreeMap<ConsumerTopicPartition, i64>,
    group: &ConsumerGroupMetadata,
) -> Result<()> {
    let mut topics: BTreeMap<&str, Vec<TxnOffsetCommitRequestPartition>> = BTreeMap::new();
    for (tp, &offset) in offsets {
        topics.entry(&tp.topic).or_default().push(
            TxnOffsetCommitRequestPartition::default()
                .with_partition_index(tp.partition)
                .with_committed_offset(offset)
                .with_committed_leader_epoch(-1),
        );
    }
    let request = TxnOffsetCommitRequest::default()
        .with_transactional_id(TransactionalId(str_bytes(id)))
        .with_group_id(GroupId(str_bytes(&group.group_id)))
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(epoch)
        .with_generation_id(group.generation_id)
        .with_member_id(str_bytes(&group.member_id))
        .with_group_instance_id(group.group_instance_id.as_deref().map(str_bytes))
        .with_topics(
            topics
                .into_iter()
                .map(|(name, partitions)| {
                    TxnOffsetCommitRequestTopic::default()
                        .with_name(TopicName(str_bytes(name)))
                        .with_partitions(partitions)
                })
                .collect(),
        );
    let deadline = Instant::now() + shared.settings.max_block;
    let mut coordinator = None;
    loop {
        let result = async {
            let node = match coordinator {
                Some(node) => node,
                None => {
                    shared
                        .cluster
                        .find_coordinator(GROUP_KEY, &group.group_id)
                        .await?
                }
            };
            coordinator = Some(node);
            let response = shared
                .cluster
                .send(
                    Route::Coordinator(node),
                    TXN_OFFSET_COMMIT_VERSION,
                    &request,
                )
                .await?;
            for topic in &response.topics {
                for p in &topic.partitions {
                    Error::check(p.error_code, None)?;
                }
            }
            Ok::<(), Error>(())
        }
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(error) if error.is_retriable() && Instant::now() < deadline => {
                if error.needs_metadata_refresh() {
                    coordinator = None;
                }
                tokio::time::sleep(shared.cluster.net().retry_backoff).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Adds the partitions that have records waiting and are not yet in the
/// transaction; called by the sender before it drains.
pub(super) async fn add_partitions(shared: &Arc<Shared>) {
    let (missing, producer_id, epoch) = {
        let state = shared.state.lock();
        let Some(txn) = state
            .txn
            .as_ref()
            .filter(|t| t.in_transaction && t.error.is_none())
        else {
            return;
        };
        let missing: Vec<TopicPartition> = state
            .partitions
            .iter()
            .filter(|(tp, q)| !q.queue.is_empty() && !txn.added.contains(*tp))
            .map(|(tp, _)| tp.clone())
            .collect();
        (missing, state.producer_id, state.producer_epoch)
    };
    if missing.is_empty() {
        return;
    }
    let Ok(id) = txn_id(shared) else {
        return;
    };
    let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in &missing {
        topics.entry(topic).or_default().push(*partition);
    }
    let request_topics: Vec<AddPartitionsToTxnTopic> = topics
        .into_iter()
        .map(|(name, partitions)| {
            AddPartitionsToTxnTopic::default()
                .with_name(TopicName(str_bytes(name)))
                .with_partitions(partitions)
        })
        .collect();
    let result = with_coordinator(shared, |node| {
        let request = AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(str_bytes(&id)))
            .with_v3_and_below_producer_id(ProducerId(producer_id))
            .with_v3_and_below_producer_epoch(epoch)
            .with_v3_and_below_topics(request_topics.clone());
        async move {
            let response = shared
                .cluster
                .send(Route::Coordinator(node), ADD_PARTITIONS_VERSION, &request)
                .await?;
            Error::check(response.error_code, None)?;
            for topic in &response.results_by_topic_v3_and_below {
                for p in &topic.results_by_partition {
                    Error::check(p.partition_error_code, None)?;
                }
            }
            Ok(())
        }
    })
    .await;
    let mut state = shared.state.lock();
    match result {
        Ok(()) => {
            if let Some(txn) = state.txn.as_mut() {
                txn.added.extend(missing);
            }
        }
        Err(error) => {
            tracing::warn!(%error, "adding partitions to the transaction failed");
            if matches!(
                error.code(),
                Some(ErrorCode::ProducerFenced | ErrorCode::InvalidProducerEpoch)
            ) {
                state.fatal = Some(error.clone());
            }
            // The records waiting for these partitions fail; the transaction
            // can only be aborted.
            let mut failed = Vec::new();
            for tp in &missing {
                if let Some(queue) = state.partitions.get_mut(tp) {
                    failed.extend(queue.queue.drain(..).filter(|b| b.sequence.is_none()));
                }
            }
            if let Some(txn) = state.txn.as_mut() {
                txn.error.get_or_insert_with(|| error.clone());
            }
            drop(state);
            for batch in failed {
                super::complete(shared, batch, Err(error.clone()));
            }
        }
    }
}
