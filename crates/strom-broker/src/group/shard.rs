//! One partition of `__consumer_offsets` and the groups it holds: their
//! state behind the shard's own lock, the appends that make their changes
//! durable, their timers, and the replay that loads them when this broker
//! becomes the partition's leader.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use strom_controller::MetadataImage;
use strom_protocol::error_code::ErrorCode;
use strom_storage::{AppendError, Clock};
use tokio::sync::{Mutex, MutexGuard, oneshot};
use tokio_util::sync::CancellationToken;

use super::classic::{ClassicGroup, Outbox};
use super::store::{self, OFFSETS_TOPIC, OffsetValue, Record};
use super::{Group, GroupConfig, GroupState, MAX_TOMBSTONES_PER_BATCH};
use crate::coordinator::CoordinatorLog;
use crate::partition::Partition;

/// The groups of one offsets partition this broker leads.
#[derive(Debug)]
pub struct GroupShard {
    /// The partition the groups' records are appended to, and were replayed
    /// from when the shard loaded.
    log: Arc<dyn CoordinatorLog>,
    /// The timestamp of the batches appended (the coordinator's clock).
    clock: Arc<dyn Clock>,
    /// The groups and offsets of this partition. An async lock because it is
    /// held across the append of the records a change makes (so the log's
    /// order is the order of the changes); groups of other partitions never
    /// wait for it.
    state: Mutex<GroupState>,
    /// Cancelled when this broker stops coordinating the partition: parked
    /// JoinGroup and SyncGroup requests are answered NOT_COORDINATOR and no
    /// further append is made from this shard.
    unloaded: CancellationToken,
    /// How long a write may wait to be replicated
    /// (`offsets.commit.timeout.ms`).
    write_timeout: Duration,
    /// Set at load, cleared by the first timer tick, which drops the offsets
    /// of topics that no longer exist (a deletion whose tombstones were not
    /// written before a crash or a move of the partition).
    check_missing_topics: AtomicBool,
}

impl GroupShard {
    pub(super) fn new(
        log: Arc<dyn CoordinatorLog>,
        clock: Arc<dyn Clock>,
        state: GroupState,
        write_timeout: Duration,
    ) -> Self {
        Self {
            log,
            clock,
            state: Mutex::new(state),
            unloaded: CancellationToken::new(),
            write_timeout,
            check_missing_topics: AtomicBool::new(true),
        }
    }

    /// The partition's index in `__consumer_offsets`.
    pub fn index(&self) -> i32 {
        self.log.index()
    }

    /// Whether this shard appends to `partition` (and not to an earlier log
    /// of the same index).
    pub(super) fn is_over(&self, partition: &Arc<Partition>) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.log), Arc::as_ptr(partition))
    }

    /// The broker stopped coordinating the partition.
    pub(super) fn unload(&self) {
        self.unloaded.cancel();
    }

    /// The groups of this partition, locked. Keep the guard while persisting
    /// the changes made under it ([`Self::persist`]).
    pub async fn lock(&self) -> MutexGuard<'_, GroupState> {
        self.state.lock().await
    }

    /// Waits for a parked JoinGroup or SyncGroup reply: `gone` when the group
    /// dropped it, `unloaded` when the shard was unloaded first.
    pub async fn wait<T>(&self, rx: oneshot::Receiver<T>, gone: T, unloaded: T) -> T {
        tokio::select! {
            biased;
            reply = rx => reply.unwrap_or(gone),
            () = self.unloaded.cancelled() => unloaded,
        }
    }

    /// Appends `records` to the partition; returns once they are committed.
    /// Call with the state lock held.
    pub async fn persist(&self, records: Vec<Record>) -> Result<(), ErrorCode> {
        if records.is_empty() {
            return Ok(());
        }
        let batch = store::encode(&records, self.clock.now_ms()).map_err(|e| {
            tracing::error!(error = %e, "cannot encode group records");
            ErrorCode::UnknownServerError
        })?;
        self.append(batch, &[]).await
    }

    /// Commits `offsets` of `group_id` (OffsetCommit): appends them, then
    /// they take effect. Call with the state lock held.
    pub async fn commit_offsets(
        &self,
        state: &mut GroupState,
        group_id: &str,
        offsets: Vec<((String, i32), OffsetValue)>,
    ) -> Result<(), ErrorCode> {
        let records = offsets
            .iter()
            .map(|((topic, partition), value)| {
                Record::offset(group_id, topic, *partition, Some(value.clone()))
            })
            .collect();
        self.persist(records).await?;
        if !offsets.is_empty() {
            state
                .offsets
                .entry(group_id.to_owned())
                .or_default()
                .extend(offsets);
        }
        Ok(())
    }

    /// Appends offsets committed in a transaction (TxnOffsetCommit) as a
    /// transactional batch of the producer, and keeps them pending until the
    /// transaction ends. The producer's epoch is checked by the log (an
    /// older one is fenced); sequences are not (Kafka writes these batches
    /// with sequence 0 too). Call with the state lock held.
    pub async fn persist_txn_offsets(
        &self,
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
        let batch = store::encode_txn(&records, self.clock.now_ms(), producer_id, producer_epoch)
            .map_err(|e| {
            tracing::error!(error = %e, "cannot encode group records");
            ErrorCode::UnknownServerError
        })?;
        self.append(batch, &[ErrorCode::InvalidProducerEpoch])
            .await?;
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

    /// Appends one batch as the partition's leader, off the async threads,
    /// and waits until it is replicated. Refused with NOT_COORDINATOR once
    /// the shard is unloaded or the partition has another leader; `passed`
    /// are the append errors the client is told as they are.
    async fn append(&self, batch: Bytes, passed: &'static [ErrorCode]) -> Result<(), ErrorCode> {
        if self.unloaded.is_cancelled() || !self.log.is_leader() {
            return Err(ErrorCode::NotCoordinator);
        }
        if !self.log.enough_replicas() {
            return Err(ErrorCode::CoordinatorNotAvailable);
        }
        let epoch = self.log.leader_epoch();
        let log = Arc::clone(&self.log);
        let index = log.index();
        match tokio::task::spawn_blocking(move || log.append(&batch)).await {
            Ok(Ok(last_offset)) => self
                .log
                .replicated(last_offset, epoch, self.write_timeout)
                .await
                .map_err(|code| {
                    tracing::info!(partition = index, error = %code, "a group coordinator write was not replicated");
                    crate::coordinator::replication_error(code)
                }),
            Ok(Err(e)) => Err(offsets_append_error(&e, index, passed)),
            Err(e) => {
                tracing::error!(error = %e, "a blocking task failed");
                Err(ErrorCode::UnknownServerError)
            }
        }
    }

    /// A transaction marker of `producer_id` reached this partition: the
    /// producer's pending offsets of its groups take effect (commit) or go
    /// (abort). Every group here hashes to this partition, so all of the
    /// producer's pending offsets in this shard end.
    pub async fn complete_txn(&self, producer_id: i64, commit: bool) {
        let mut state = self.lock().await;
        let Some(by_group) = state.pending_txn_offsets.remove(&producer_id) else {
            return;
        };
        if !commit {
            return;
        }
        let now = self.clock.now_ms();
        for (group, offsets) in by_group {
            if !state.groups.contains_key(&group) {
                state.classic_or_create(&group, now);
            }
            state.offsets.entry(group).or_default().extend(offsets);
        }
    }

    /// One round of this shard's timers: group deadlines, then (at
    /// `offsets.retention.check.interval.ms`) offset expiry; after a load,
    /// first the offsets of topics that no longer exist go.
    pub(super) async fn tick(&self, image: &MetadataImage, config: &GroupConfig) {
        if self.check_missing_topics.swap(false, Ordering::AcqRel) {
            self.drop_offsets_of_missing_topics(image).await;
        }
        let mut state = self.lock().await;
        let now = self.clock.now_ms();
        let mut outbox = Vec::new();
        let mut changed = Vec::new();
        for (id, group) in &mut state.groups {
            let persist = match group {
                Group::Classic(g) => {
                    let mut out = Outbox::default();
                    g.tick(now, config, &mut out);
                    let persist = out.persist;
                    outbox.push(out);
                    persist
                }
                Group::Consumer(g) => g.tick(now, image, config),
            };
            if persist {
                changed.push(id.clone());
            }
        }
        for id in changed {
            let record = state.group_record(&id, config);
            if let Err(e) = self.persist(vec![record]).await {
                tracing::warn!(group = %id, error = ?e, "could not persist a group change");
            }
        }
        for out in outbox {
            out.deliver();
        }
        if now >= state.next_expiry_check_ms {
            state.next_expiry_check_ms = now + config.offsets_retention_check_interval_ms;
            self.expire(&mut state, now, config).await;
        }
    }

    /// Offsets past `offsets.retention.minutes` go; so do empty groups with
    /// no offsets left (Kafka's rules: an empty group's offsets count from
    /// when it became empty, a standalone consumer's from the commit, and
    /// offsets of topics a live group subscribes to never expire).
    async fn expire(&self, state: &mut GroupState, now: i64, config: &GroupConfig) {
        let retention = config.offsets_retention_ms;
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
            if let Err(e) = self.persist(records).await {
                tracing::warn!(group = %id, error = ?e, "could not persist expired offsets");
            }
        }
    }

    /// After topics are deleted: every group's offsets of them go, committed
    /// ones and those pending in open transactions (tombstones in the offsets
    /// topic), and so do empty groups left with no offsets, as Kafka's
    /// `onPartitionsDeleted` does, so that a topic created again under the
    /// name does not inherit old positions.
    pub async fn on_topics_deleted(&self, topics: &BTreeSet<String>) {
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
                if let Err(e) = self.persist(records).await {
                    // The next load drops them again (offsets of topics that
                    // no longer exist), and writes the tombstones.
                    tracing::warn!(group = %id, error = ?e, "could not remove the offsets of deleted topics");
                }
                records = rest;
            }
        }
    }

    /// After a load: offsets of topics that no longer exist (their
    /// deletion's tombstones were not written) go as if the topics were
    /// deleted now.
    async fn drop_offsets_of_missing_topics(&self, image: &MetadataImage) {
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
            tracing::info!(partition = self.index(), topics = ?missing, "dropping committed offsets of deleted topics");
            self.on_topics_deleted(&missing).await;
        }
    }
}

/// Replays an offsets partition into the state of its groups (a shard's
/// load). Transactional offset commits count once their commit marker
/// follows; those of transactions still open stay pending. Blocking.
///
/// A partition that cannot be read to its end is logged and loaded with
/// what was read, as the coordinator did before it was sharded.
pub(super) fn load(log: &dyn CoordinatorLog, config: &GroupConfig, now_ms: i64) -> GroupState {
    let mut state = GroupState::default();
    let mut records = 0usize;
    // Records of open transactions in this partition, by producer.
    let mut open_txns: HashMap<i64, Vec<Record>> = HashMap::new();
    let result = log.replay(&mut |header, bytes| {
        if header.is_control() {
            let pending = open_txns.remove(&header.producer_id).unwrap_or_default();
            if store::is_commit_marker(bytes) {
                for record in pending {
                    state.apply(record, config, now_ms);
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
            state.apply(record, config, now_ms);
        }
    });
    if let Err(e) = result {
        tracing::error!(partition = log.index(), error = %e, "reading the offsets topic failed; groups in this partition may be incomplete");
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
            partition = log.index(),
            groups = state.groups.len(),
            records,
            "group coordinator loaded its partition of {OFFSETS_TOPIC}"
        );
    }
    state.next_expiry_check_ms = now_ms + config.offsets_retention_check_interval_ms;
    state
}

/// The group coordinator's answer when appending to its partition `index`
/// of the offsets topic fails: the append's own code when the client can act
/// on it (`passed`), INVALID_COMMIT_OFFSET_SIZE for a too-large batch, as in
/// Kafka, NOT_COORDINATOR for an offline log or a lost leadership, and
/// COORDINATOR_NOT_AVAILABLE (logged) for what the coordinator cannot write.
fn offsets_append_error(e: &AppendError, index: i32, passed: &[ErrorCode]) -> ErrorCode {
    let code = crate::coordinator::append_error_code(
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
