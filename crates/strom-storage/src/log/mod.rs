//! The log of one partition: a directory of segments named by base offset.
//!
//! ```text
//! orders-0/
//!   00000000000000000000.log         batches, end to end
//!   00000000000000000000.index       offset -> position, sparse
//!   00000000000000000000.timeindex   timestamp -> offset, sparse
//!   00000000000000052817.log         the active segment (appends go here)
//!   00000000000000052817.snapshot    producer state below offset 52817
//!   ...
//!   leader-epoch-checkpoint          epoch -> start offset
//! ```
//!
//! One writer at a time (a mutex serialises appends, rolls, truncation and
//! flushes); any number of readers beside it. Readers see only whole batches:
//! a segment publishes its new size after the bytes are written. The writer
//! also owns the idempotent producers' state (`producer_state`), which checks
//! client appends (sequences, epochs, and KIP-890's verification guards for
//! transactional ones) and is kept in step with every change of the log.
//!
//! # Layout
//!
//! [`PartitionLog`] is defined here, with its fields, its accessors and the
//! helpers every part uses; each concern adds its methods in an
//! `impl PartitionLog` block of its own module:
//!
//! - `append`: leader and follower appends, validation, rolling segments,
//!   the transactions the markers end.
//! - `read`: reads, timestamp lookups, the last stable offset and the aborted
//!   transactions a read_committed fetch needs.
//! - `retention`: time and size retention, the log start offset
//!   (DeleteRecords), removing and deleting segments.
//! - `recovery`: opening a directory (completing interrupted swaps,
//!   recovering segments after an unclean shutdown), truncation, rebuilding
//!   the producer state.
//! - `flush`: fsyncs and the recovery point, the periodic duties, close.
//! - `compaction`: compacting one log, the cleaner's work on it.
//!
//! Below them: `segment` (one `.log` with its indexes), `index` (the sparse
//! index formats), `scan` (sequential batch reading), `epoch_cache`,
//! `producer_state`, `txn_index`.

mod append;
pub(crate) mod compaction;
mod epoch_cache;
mod flush;
mod index;
mod producer_state;
mod read;
mod recovery;
mod retention;
mod scan;
mod segment;
mod txn_index;

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

pub use self::append::{AppendInfo, AppendOrigin, MAX_BATCHES_PER_APPEND};
pub use self::epoch_cache::EpochEntry;
use self::epoch_cache::LeaderEpochCache;
use self::producer_state::ProducerStateManager;
pub use self::producer_state::{
    MAX_PRODUCERS_PER_PARTITION, MAX_VERIFICATIONS_PER_PARTITION, NUM_BATCHES_TO_RETAIN,
    ProducerStateView, TxnVerification, VerificationGuard,
};
pub(crate) use self::producer_state::{TxnMarker, read_marker};
pub use self::read::{LogRead, LogSlice, TimestampOffset};
pub use self::recovery::LoadOptions;
pub use self::retention::RetentionOutcome;
use self::segment::Segment;
pub use self::txn_index::AbortedTxn;
use crate::clock::Clock;
use crate::config::LogConfig;
use crate::error::{AppendError, StorageError};
use crate::file_cache::FileCache;

/// Bound on the decompressed size of one batch when the log looks inside it
/// (timestamp lookups). Kafka's producers cap batches at `max.message.bytes`
/// compressed; 256 MiB leaves room for any sane compression ratio while a
/// crafted "zip bomb" batch cannot exhaust memory.
pub const MAX_DECOMPRESSED_BATCH_BYTES: usize = 256 << 20;

/// The stored high watermark before the broker sets one: the log end offset
/// stands in for it.
const HIGH_WATERMARK_UNSET: i64 = -1;

/// `first_ongoing_offset` when no transaction is open.
const NO_OPEN_TXN: i64 = i64::MAX;

/// Bound on transactions ended by markers the high watermark has not passed
/// yet. On a leader the watermark passes them as soon as the followers fetch;
/// a follower far behind its leader's watermark could collect more. Past the
/// bound the oldest are forgotten, which can only move the last stable offset
/// up early for them (a marker already written, so their outcome is known).
const MAX_UNREPLICATED_TXNS: usize = MAX_PRODUCERS_PER_PARTITION;

/// State only the writer touches.
#[derive(Debug)]
struct Writer {
    /// The segment appends go to, the last one in `segments`; only the writer
    /// switches it (roll, truncation).
    active: Arc<Segment>,
    /// The leader epoch cache (`leader-epoch-checkpoint`): appends extend it,
    /// truncation and retention cut it, so it changes with the log, under
    /// the same lock.
    epochs: LeaderEpochCache,
    /// When the log was last fsynced: `flush.ms` counts from here.
    last_flush_ms: i64,
    /// Rolled segments not yet fsynced.
    pending_flush: Vec<Arc<Segment>>,
    /// Segments renamed to `*.deleted`, with the time their files go.
    pending_delete: Vec<(i64, Arc<Segment>)>,
    /// A new segment file was created since the directory was last fsynced.
    dir_dirty: bool,
    /// Idempotent producers' state, covering exactly the batches below the
    /// log end offset.
    producers: ProducerStateManager,
}

/// The log of one partition. Share it with `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct PartitionLog {
    /// The partition's directory (`topic-N/`), shared with every segment,
    /// which names its files in it.
    dir: Arc<Path>,
    /// The topic's log settings, replaced whole by a dynamic config change:
    /// an operation takes one `Arc` and sees one consistent set.
    config: RwLock<Arc<LogConfig>>,
    /// The bounded cache of open file handles shared by every log of the
    /// data directory; segments open their files through it.
    files: Arc<FileCache>,
    /// The time seam: rolls, retention, append time and delete delays read
    /// it, so that tests can move time.
    clock: Arc<dyn Clock>,
    /// The writer's state, behind the one mutex that serialises appends,
    /// rolls, truncation, retention, flushes and the cleaner's swap.
    writer: Mutex<Writer>,
    /// Every segment by base offset, the active one last. Readers hold the
    /// lock only to pick segments and read them without it; the writer
    /// changes the map.
    segments: RwLock<BTreeMap<i64, Arc<Segment>>>,
    /// Offset of the next record to append; stored after the bytes are
    /// written, so readers never look past whole batches.
    log_end_offset: AtomicI64,
    /// First offset readers may read. Moves up (retention, DeleteRecords);
    /// only a truncation below it restarts the log lower.
    log_start_offset: AtomicI64,
    /// Offset below which everything is fsynced: recovery after an unclean
    /// shutdown starts at the segment holding it (the log manager
    /// checkpoints it).
    recovery_point: AtomicI64,
    /// The broker's high watermark ([`PartitionLog::set_high_watermark`]);
    /// [`HIGH_WATERMARK_UNSET`] until it sets one. Retention and the cleaner
    /// never touch data at or above it.
    high_watermark: AtomicI64,
    /// Bumped by every truncation, so that the cleaner can tell a log that
    /// was cut back (and maybe refilled) while it worked.
    truncations: AtomicU64,
    /// First offset of the oldest open transaction ([`NO_OPEN_TXN`] if none),
    /// published by the writer after every change of the producer state.
    first_ongoing_offset: AtomicI64,
    /// `(first offset, marker offset)` of transactions ended by a marker at
    /// or above the high watermark, in marker order (Kafka's
    /// `unreplicatedTxns`): still unstable until the watermark passes them.
    unreplicated_txns: Mutex<VecDeque<(i64, i64)>>,
    /// An I/O failure left the log in a state that must not take writes.
    offline: AtomicBool,
    /// Closed cleanly: no more writes.
    closed: AtomicBool,
}

impl PartitionLog {
    /// The partition's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current settings.
    pub fn config(&self) -> Arc<LogConfig> {
        Arc::clone(&self.config.read())
    }

    /// Replaces the settings (dynamic topic config); applies from the next append.
    pub fn set_config(&self, config: LogConfig) {
        *self.config.write() = Arc::new(config);
    }

    /// Offset of the next record to be appended.
    pub fn log_end_offset(&self) -> i64 {
        self.log_end_offset.load(Ordering::Acquire)
    }

    /// Offset of the first record a reader may read.
    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset.load(Ordering::Acquire)
    }

    /// Offset below which everything is fsynced.
    pub fn recovery_point(&self) -> i64 {
        self.recovery_point.load(Ordering::Acquire)
    }

    /// Whether an I/O failure took the log offline.
    pub fn is_offline(&self) -> bool {
        self.offline.load(Ordering::Acquire)
    }

    /// Whether the log was closed (or deleted): it takes no more writes.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Tells the log where the partition's high watermark is; the broker
    /// calls it whenever the watermark moves. Retention and the cleaner only
    /// touch data below it (Kafka: a segment is deleted only once the high
    /// watermark has passed its end).
    pub fn set_high_watermark(&self, offset: i64) {
        self.high_watermark.store(offset.max(0), Ordering::Release);
    }

    /// The high watermark as the log uses it: the last one set, within
    /// `[log start, log end]`, or the log end offset if none was set.
    pub fn high_watermark(&self) -> i64 {
        let log_end_offset = self.log_end_offset();
        match self.high_watermark.load(Ordering::Acquire) {
            HIGH_WATERMARK_UNSET => log_end_offset,
            hw => hw.clamp(self.log_start_offset().min(log_end_offset), log_end_offset),
        }
    }

    /// After a truncation to `offset`: a high watermark above it comes down
    /// (Kafka's `truncateTo` does the same).
    fn lower_high_watermark(&self, offset: i64) {
        let _ = self
            .high_watermark
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |hw| {
                (hw != HIGH_WATERMARK_UNSET && hw > offset).then_some(offset)
            });
    }

    /// Bytes of log data in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.read().values().map(|s| s.size()).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.read().len()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_base_offsets(&self) -> Vec<i64> {
        self.segments.read().keys().copied().collect()
    }

    /// Heap memory the log holds (structures, loaded index state, producer
    /// state), for sizing many-partition brokers.
    pub fn memory_bytes(&self) -> usize {
        let producers = self.writer.lock().producers.memory_bytes();
        let segments = self.segments.read();
        size_of::<Self>()
            + segments.len() * (size_of::<i64>() + size_of::<Arc<Segment>>() + 16)
            + segments.values().map(|s| s.memory_bytes()).sum::<usize>()
            + producers
    }

    /// The leader epoch cache: `(epoch, start offset)` pairs.
    pub fn leader_epochs(&self) -> Vec<EpochEntry> {
        self.writer.lock().epochs.entries().to_vec()
    }

    /// The newest leader epoch in the cache (a follower's last fetched
    /// epoch), if any.
    pub fn latest_leader_epoch(&self) -> Option<i32> {
        self.writer.lock().epochs.latest().map(|e| e.epoch)
    }

    /// The state of every idempotent producer the log knows, by producer id
    /// (DescribeProducers).
    pub fn producer_states(&self) -> Vec<ProducerStateView> {
        self.writer.lock().producers.views()
    }

    /// The end offset of `epoch` (OffsetsForLeaderEpoch): `(epoch, end offset)`.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        self.writer
            .lock()
            .epochs
            .end_offset_for(epoch, self.log_end_offset())
    }

    fn check_online(&self) -> Result<(), AppendError> {
        if self.is_offline() || self.closed.load(Ordering::Acquire) {
            Err(AppendError::Offline)
        } else {
            Ok(())
        }
    }

    /// A maintenance operation failed half-way: no more writes.
    fn take_offline(&self, e: &StorageError) {
        tracing::error!(log = %self.dir.display(), error = %e, "log maintenance failed; taking the log offline");
        self.offline.store(true, Ordering::Release);
    }

    /// An I/O error in the middle of a write operation: the log state may be
    /// inconsistent, so no more writes.
    fn fail(&self, e: io::Error) -> AppendError {
        tracing::error!(log = %self.dir.display(), error = %e, "log I/O failure; taking the log offline");
        self.offline.store(true, Ordering::Release);
        AppendError::Io(e)
    }

    fn floor_segment(&self, offset: i64) -> Option<Arc<Segment>> {
        let segments = self.segments.read();
        segments
            .range(..=offset)
            .next_back()
            .or_else(|| segments.iter().next())
            .map(|(_, s)| Arc::clone(s))
    }

    fn next_segment(&self, base_offset: i64) -> Option<Arc<Segment>> {
        self.segments
            .read()
            .range((Bound::Excluded(base_offset), Bound::Unbounded))
            .next()
            .map(|(_, s)| Arc::clone(s))
    }

    /// The segments from the one holding `offset` on, as of now.
    fn segments_from(&self, offset: i64) -> Vec<Arc<Segment>> {
        let segments = self.segments.read();
        let start = segments
            .range(..=offset)
            .next_back()
            .map_or(i64::MIN, |(b, _)| *b);
        segments
            .range(start..)
            .map(|(_, s)| Arc::clone(s))
            .collect()
    }

    /// Index entries of a segment, for tests of the index format.
    #[cfg(test)]
    fn segment(&self, base_offset: i64) -> Option<Arc<Segment>> {
        self.segments.read().get(&base_offset).cloned()
    }
}

#[cfg(test)]
mod tests;
