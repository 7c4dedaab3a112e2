//! What the group and transaction coordinators need from the broker, and
//! nothing more: the ports they are built on.
//!
//! ```text
//!   metadata publisher ──elected / resigned──> Shards<S>  (one S per internal partition)
//!                                                 │
//!   request ──> shard_for(key) ──> S (its own lock) ──> CoordinatorLog::append
//! ```
//!
//! A coordinator is sharded by the partitions of its internal topic
//! (`__consumer_offsets`, `__transaction_state`), as in Kafka's
//! `CoordinatorRuntime`: each partition this broker leads has its own state,
//! loaded (replayed from the partition) when the broker becomes its leader
//! and dropped when it stops being the leader. Requests for a partition that
//! is loading get COORDINATOR_LOAD_IN_PROGRESS; for one this broker does not
//! lead, NOT_COORDINATOR.
//!
//! The ports:
//! - [`CoordinatorLog`]: the internal partition a shard appends to and
//!   replays (a [`Partition`] here; its appends complete when committed);
//! - `Clock` (from storage): the time, so tests drive it;
//! - the metadata image, handed in by whoever calls (the publisher, a
//!   handler), never read from a broker.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use parking_lot::RwLock;
use strom_protocol::error_code::ErrorCode;
use strom_protocol::record_batch::BatchHeader;
use strom_storage::{AppendError, AppendOrigin, ReadError};

use crate::partition::Partition;

/// The internal partition behind one coordinator shard.
pub trait CoordinatorLog: Send + Sync + fmt::Debug {
    /// The partition's index in its internal topic.
    fn index(&self) -> i32;
    /// The leader epoch this broker leads the partition at (for the
    /// transaction coordinator, its coordinator epoch).
    fn leader_epoch(&self) -> i32;
    /// Whether this broker still leads the partition.
    fn is_leader(&self) -> bool;
    /// Appends one batch as the partition's leader; returns the batch's
    /// last offset once the write is committed. Blocking (a disk write):
    /// call it off the async threads.
    fn append(&self, batch: &[u8]) -> Result<i64, AppendError>;
    /// Calls `f` with every batch from the start of the log, in offset
    /// order: a shard's load. Blocking.
    fn replay(&self, f: &mut dyn FnMut(&BatchHeader, &[u8])) -> Result<(), ReadError>;
    /// Whether the ISR has `min.insync.replicas` members: a write is refused
    /// before it is appended otherwise (Kafka's acks=all append answers
    /// NOT_ENOUGH_REPLICAS), rather than appended and never replicated.
    fn enough_replicas(&self) -> bool;
    /// Waits until the batch ending at `last_offset`, appended while this
    /// broker led at `leader_epoch`, is replicated (the high watermark
    /// passed it): a coordinator's write completes only then, as Kafka's
    /// coordinators append with acks=all. NOT_LEADER_OR_FOLLOWER once the
    /// leadership moved, NOT_ENOUGH_REPLICAS_AFTER_APPEND, or
    /// REQUEST_TIMED_OUT after `timeout`.
    fn replicated(
        &self,
        last_offset: i64,
        leader_epoch: i32,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<(), ErrorCode>>;
}

impl CoordinatorLog for Partition {
    fn index(&self) -> i32 {
        self.index
    }

    fn leader_epoch(&self) -> i32 {
        Partition::leader_epoch(self)
    }

    fn is_leader(&self) -> bool {
        Partition::is_leader(self)
    }

    fn append(&self, batch: &[u8]) -> Result<i64, AppendError> {
        self.append_as_leader(batch, AppendOrigin::Coordinator)
            .map(|info| info.last_offset)
    }

    fn replay(&self, f: &mut dyn FnMut(&BatchHeader, &[u8])) -> Result<(), ReadError> {
        let from = self.log.log_start_offset();
        self.log
            .for_each_batch_from(from, |_, header, bytes| f(header, bytes))
    }

    fn enough_replicas(&self) -> bool {
        let in_sync = self.in_sync(&self.produce_checks());
        in_sync.isr >= in_sync.min
    }

    fn replicated(
        &self,
        last_offset: i64,
        leader_epoch: i32,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<(), ErrorCode>> {
        Box::pin(self.wait_for_high_watermark(last_offset + 1, leader_epoch, timeout))
    }
}

/// What a coordinator's client is told when its write was appended but not
/// replicated (Kafka's coordinators translate the same codes): the
/// leadership moved, NOT_COORDINATOR (the client looks the coordinator up
/// again); too few in-sync replicas or no replication in time,
/// COORDINATOR_NOT_AVAILABLE (it retries).
pub fn replication_error(code: ErrorCode) -> ErrorCode {
    match code {
        ErrorCode::NotLeaderOrFollower | ErrorCode::KafkaStorageError => ErrorCode::NotCoordinator,
        _ => ErrorCode::CoordinatorNotAvailable,
    }
}

/// The error a coordinator answers when appending its own records (group
/// state, offset commits, transaction state, markers) fails: the append's
/// code ([`AppendError::error_code`]) when the caller's client can act on it
/// (`passed`), `too_large` for a batch over `max.message.bytes` or the
/// segment (Kafka's coordinators answer INVALID_COMMIT_OFFSET_SIZE for a
/// too-large commit), NOT_COORDINATOR when the partition's log is offline
/// or no longer led here (as Kafka's coordinators answer
/// KAFKA_STORAGE_ERROR and NOT_LEADER_OR_FOLLOWER: the client looks the
/// coordinator up again), and `otherwise` for the rest (the coordinator
/// cannot write now: the client retries).
pub fn append_error_code(
    e: &AppendError,
    passed: &[ErrorCode],
    too_large: ErrorCode,
    otherwise: ErrorCode,
) -> ErrorCode {
    match e.error_code() {
        code if passed.contains(&code) => code,
        ErrorCode::MessageTooLarge | ErrorCode::RecordListTooLarge => too_large,
        ErrorCode::NotLeaderOrFollower | ErrorCode::KafkaStorageError => ErrorCode::NotCoordinator,
        _ => otherwise,
    }
}

/// Where one shard is in its life (Kafka's `CoordinatorState`, less the
/// failed state: a load that fails leaves the slot empty and logged).
#[derive(Debug)]
enum Slot<S> {
    /// Elected; the partition is being replayed.
    Loading { epoch: i32 },
    /// Loaded; requests go to it.
    Active { epoch: i32, shard: Arc<S> },
}

/// The shards of one coordinator, by internal partition index.
///
/// The map's lock is held only to look up, insert or remove a slot, never
/// while a shard works: each shard has its own lock inside `S`.
pub struct Shards<S> {
    slots: RwLock<BTreeMap<i32, Slot<S>>>,
}

impl<S> fmt::Debug for Shards<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slots = self.slots.read();
        f.debug_struct("Shards")
            .field(
                "active",
                &slots
                    .values()
                    .filter(|s| matches!(s, Slot::Active { .. }))
                    .count(),
            )
            .field(
                "loading",
                &slots
                    .values()
                    .filter(|s| matches!(s, Slot::Loading { .. }))
                    .count(),
            )
            .finish()
    }
}

impl<S> Default for Shards<S> {
    fn default() -> Self {
        Self {
            slots: RwLock::new(BTreeMap::new()),
        }
    }
}

impl<S> Shards<S> {
    /// The shard of partition `index`: NOT_COORDINATOR when this broker does
    /// not lead it, COORDINATOR_LOAD_IN_PROGRESS while it loads.
    pub fn get(&self, index: i32) -> Result<Arc<S>, ErrorCode> {
        match self.slots.read().get(&index) {
            Some(Slot::Active { shard, .. }) => Ok(Arc::clone(shard)),
            Some(Slot::Loading { .. }) => Err(ErrorCode::CoordinatorLoadInProgress),
            None => Err(ErrorCode::NotCoordinator),
        }
    }

    /// This broker became leader of partition `index` at `epoch`: the slot
    /// is loading until [`Shards::loaded`]. Returns false (nothing to load)
    /// when the partition is already loading or loaded at this epoch or a
    /// newer one.
    pub fn elected(&self, index: i32, epoch: i32) -> bool {
        let mut slots = self.slots.write();
        match slots.get(&index) {
            Some(Slot::Loading { epoch: e } | Slot::Active { epoch: e, .. }) if *e >= epoch => {
                false
            }
            _ => {
                slots.insert(index, Slot::Loading { epoch });
                true
            }
        }
    }

    /// The load of partition `index` at `epoch` finished. Ignored (and
    /// false) when the partition was resigned or re-elected meanwhile.
    pub fn loaded(&self, index: i32, epoch: i32, shard: S) -> bool {
        let mut slots = self.slots.write();
        match slots.get(&index) {
            Some(Slot::Loading { epoch: e }) if *e == epoch => {
                slots.insert(
                    index,
                    Slot::Active {
                        epoch,
                        shard: Arc::new(shard),
                    },
                );
                true
            }
            _ => false,
        }
    }

    /// The load of partition `index` at `epoch` failed: the slot empties,
    /// so requests get NOT_COORDINATOR rather than waiting forever.
    pub fn load_failed(&self, index: i32, epoch: i32) {
        let mut slots = self.slots.write();
        if matches!(slots.get(&index), Some(Slot::Loading { epoch: e }) if *e == epoch) {
            slots.remove(&index);
        }
    }

    /// This broker stopped leading partition `index` (a newer leader epoch
    /// elsewhere, `epoch` None for "whatever epoch", or the topic went):
    /// the shard is dropped and returned, so its owner can fail its
    /// waiting work with NOT_COORDINATOR.
    pub fn resigned(&self, index: i32, epoch: Option<i32>) -> Option<Arc<S>> {
        let mut slots = self.slots.write();
        let current = match slots.get(&index)? {
            Slot::Loading { epoch } | Slot::Active { epoch, .. } => *epoch,
        };
        if epoch.is_some_and(|e| e < current) {
            return None;
        }
        match slots.remove(&index)? {
            Slot::Active { shard, .. } => Some(shard),
            Slot::Loading { .. } => None,
        }
    }

    /// Every loaded shard, by partition index (timers, listing groups).
    pub fn active(&self) -> Vec<(i32, Arc<S>)> {
        self.slots
            .read()
            .iter()
            .filter_map(|(index, slot)| match slot {
                Slot::Active { shard, .. } => Some((*index, Arc::clone(shard))),
                Slot::Loading { .. } => None,
            })
            .collect()
    }

    /// The index of every slot, loading or loaded: what a sync compares with
    /// the partitions this broker leads, to resign the others.
    pub fn indexes(&self) -> Vec<i32> {
        self.slots.read().keys().copied().collect()
    }

    /// The epoch partition `index` is loading or loaded at.
    pub fn epoch(&self, index: i32) -> Option<i32> {
        match self.slots.read().get(&index)? {
            Slot::Loading { epoch } | Slot::Active { epoch, .. } => Some(*epoch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinators_translate_append_errors_as_kafkas_do() {
        let too_large = AppendError::MessageTooLarge { size: 2, max: 1 };
        let fenced = AppendError::InvalidProducerEpoch {
            producer_id: 1,
            epoch: 0,
            current_epoch: 1,
        };
        let io = AppendError::Io(std::io::Error::other("disk"));
        let translate = |e: &AppendError| {
            append_error_code(
                e,
                &[ErrorCode::InvalidProducerEpoch],
                ErrorCode::InvalidCommitOffsetSize,
                ErrorCode::CoordinatorNotAvailable,
            )
        };
        assert_eq!(translate(&too_large), ErrorCode::InvalidCommitOffsetSize);
        assert_eq!(translate(&fenced), ErrorCode::InvalidProducerEpoch);
        assert_eq!(translate(&io), ErrorCode::NotCoordinator);
        assert_eq!(translate(&AppendError::Offline), ErrorCode::NotCoordinator);
        assert_eq!(
            translate(&AppendError::NotLeader),
            ErrorCode::NotCoordinator
        );
        assert_eq!(
            translate(&AppendError::Empty),
            ErrorCode::CoordinatorNotAvailable
        );
    }

    #[test]
    fn a_shard_answers_only_once_loaded_and_until_resigned() {
        let shards: Shards<&str> = Shards::default();
        assert_eq!(shards.get(3).err(), Some(ErrorCode::NotCoordinator));
        assert!(shards.elected(3, 5));
        assert_eq!(
            shards.get(3).err(),
            Some(ErrorCode::CoordinatorLoadInProgress)
        );
        assert!(shards.loaded(3, 5, "groups of partition 3"));
        assert_eq!(
            shards.get(3).ok().as_deref(),
            Some(&"groups of partition 3")
        );
        assert_eq!(shards.get(4).err(), Some(ErrorCode::NotCoordinator));
        assert_eq!(shards.active().len(), 1);
        assert!(shards.resigned(3, Some(6)).is_some());
        assert_eq!(shards.get(3).err(), Some(ErrorCode::NotCoordinator));
        assert!(shards.active().is_empty());
    }

    #[test]
    fn a_stale_load_or_resignation_changes_nothing() {
        let shards: Shards<u32> = Shards::default();
        assert!(shards.elected(0, 1));
        // Re-elected at a newer epoch while the first load ran.
        assert!(shards.elected(0, 2));
        assert!(!shards.loaded(0, 1, 10), "the epoch-1 load is stale");
        assert!(!shards.elected(0, 2), "already loading at epoch 2");
        assert!(shards.loaded(0, 2, 20));
        assert!(shards.resigned(0, Some(1)).is_none(), "older resignation");
        assert_eq!(shards.get(0).ok().as_deref(), Some(&20));
        assert_eq!(shards.epoch(0), Some(2));
        assert_eq!(shards.indexes(), vec![0]);
    }

    #[test]
    fn indexes_name_loading_and_loaded_slots_until_resigned() {
        let shards: Shards<u32> = Shards::default();
        assert!(shards.elected(4, 1));
        assert!(shards.elected(2, 1));
        assert!(shards.loaded(2, 1, 0));
        assert_eq!(shards.indexes(), vec![2, 4]);
        assert!(shards.resigned(2, None).is_some());
        assert_eq!(shards.indexes(), vec![4]);
    }

    #[test]
    fn a_failed_load_leaves_no_coordinator_and_a_late_load_is_dropped() {
        let shards: Shards<u32> = Shards::default();
        assert!(shards.elected(1, 1));
        shards.load_failed(1, 1);
        assert_eq!(shards.get(1).err(), Some(ErrorCode::NotCoordinator));
        assert!(shards.elected(2, 1));
        assert!(shards.resigned(2, None).is_none(), "it was only loading");
        assert!(!shards.loaded(2, 1, 7), "resigned while loading");
        assert_eq!(shards.get(2).err(), Some(ErrorCode::NotCoordinator));
    }
}
