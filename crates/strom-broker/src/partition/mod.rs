//! One partition on this broker: the object request handlers talk to.
//!
//! # Layout
//!
//! - [`Partition`] (this file): the log, the leader epoch, the one high
//!   watermark, the last stable offset and the fetches waiting for data.
//! - [`high_watermark`]: Kafka's high-watermark rule as a pure function of
//!   the replicas' states, tested from a table of cases
//!   (`testdata/high_watermark.txt`).
//! - [`validation`]: Kafka's LogValidator checks of produced records (and
//!   recompression to the topic's `compression.type`), within the broker's
//!   decompression budget.
//!
//! Every leader append goes through [`Partition::append_as_leader`], and the
//! partition decides its leadership itself ([`Partition::is_leader`]). Still
//! to come here (issue "Reshape the broker for the cluster"): the role
//! (leader with per-follower [`high_watermark::ReplicaState`], or follower
//! of a given leader and epoch) and the topic's typed configs, resolved when
//! the image changes rather than per request.

pub mod high_watermark;
pub mod validation;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use strom_protocol::messages::Uuid;
use strom_storage::{AppendError, AppendInfo, AppendOrigin, PartitionLog, TxnVerification};
use tokio::sync::Notify;

use high_watermark::{HighWatermarkInputs, next_high_watermark};

/// Bound on long-poll fetches waiting on one partition; beyond it the oldest
/// waiters are dropped (they time out and answer with what they have).
const MAX_WAITERS_PER_PARTITION: usize = 10_000;

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
    /// Offset below which every in-sync replica has the data. On a single
    /// node the in-sync replica set is the leader alone: the log end offset.
    high_watermark: AtomicI64,
    /// Fetches waiting for data on this partition.
    waiters: Mutex<Vec<Weak<Notify>>>,
}

impl Partition {
    /// A partition over `log`, at `leader_epoch`, with the high watermark at
    /// the log end offset (a single node's in-sync replicas are itself).
    pub(crate) fn new(
        topic: Arc<str>,
        index: i32,
        topic_id: Uuid,
        log: Arc<PartitionLog>,
        local_id: i32,
        (leader_epoch, leader): (i32, i32),
    ) -> Self {
        let high_watermark = log.log_end_offset();
        log.set_high_watermark(high_watermark);
        Self {
            topic,
            index,
            topic_id,
            log,
            local_id,
            leadership: AtomicI64::new(pack(leader_epoch, leader)),
            high_watermark: AtomicI64::new(high_watermark),
            waiters: Mutex::new(Vec::new()),
        }
    }

    /// The leader epoch and leader the metadata image gives this partition
    /// now.
    pub(crate) fn set_leadership(&self, leader_epoch: i32, leader: i32) {
        self.leadership
            .store(pack(leader_epoch, leader), Ordering::Release);
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
        let info = self.log.append_as_leader_verified(
            records,
            self.leader_epoch(),
            origin,
            verification,
        )?;
        self.advance_high_watermark();
        Ok(info)
    }

    /// After an append: the in-sync replicas (just this broker) have the data.
    pub fn advance_high_watermark(&self) {
        let log_end_offset = self.log.log_end_offset();
        // Kafka's rule with the leader as the only replica (no followers,
        // the in-sync replicas are the leader): the log end offset.
        let target = next_high_watermark(&HighWatermarkInputs {
            leader_log_end_offset: log_end_offset,
            current: self.high_watermark(),
            ..HighWatermarkInputs::single_replica()
        });
        let previous = self.high_watermark.fetch_max(target, Ordering::AcqRel);
        // Retention and the cleaner never pass the high watermark.
        self.log.set_high_watermark(previous.max(target));
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

    /// Wakes every waiting fetch (new data, or the partition is going away).
    pub(crate) fn wake_waiters(&self) {
        let waiters = std::mem::take(&mut *self.waiters.lock());
        for waiter in waiters.iter().filter_map(Weak::upgrade) {
            waiter.notify_one();
        }
    }
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
    use super::*;

    #[test]
    fn leadership_packs_both_halves_exactly() {
        for (epoch, leader) in [(0, 1), (-1, -1), (i32::MAX, i32::MIN), (7, -1), (-5, 3)] {
            assert_eq!(unpack(pack(epoch, leader)), (epoch, leader));
        }
    }
}
