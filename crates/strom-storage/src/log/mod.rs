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
//! client appends and is kept in step with every change of the log.

pub(crate) mod cleaner;
mod epoch_cache;
mod index;
mod producer_state;
mod scan;
mod segment;
mod txn_index;

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File};
use std::io::{self, IoSlice};
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use strom_protocol::record;
use strom_protocol::record_batch::{
    self, BatchError, BatchHeader, MAGIC_V2, RECORD_BATCH_OVERHEAD, TimestampType,
};

pub use self::epoch_cache::EpochEntry;
use self::epoch_cache::LeaderEpochCache;
use self::producer_state::{
    Checked, CompletedTxn, ProducerBatch, ProducerStateManager, ProducerUpdate,
};
pub use self::producer_state::{
    MAX_PRODUCERS_PER_PARTITION, NUM_BATCHES_TO_RETAIN, ProducerStateView,
};
pub(crate) use self::producer_state::{TxnMarker, read_marker};
use self::scan::{BatchScanner, Scanned};
use self::segment::{
    AppendFailure, AppendedBatch, CLEANED_SUFFIX, DELETED_SUFFIX, INDEX_SUFFIX, LOG_SUFFIX,
    SWAP_SUFFIX, ScanRules, Segment, TIME_INDEX_SUFFIX, TXN_INDEX_SUFFIX, staged_path,
};
pub use self::txn_index::AbortedTxn;
use crate::checkpoint;
use crate::clock::Clock;
use crate::config::LogConfig;
use crate::error::{AppendError, ReadError, StorageError};
use crate::file_cache::{FileCache, FileKind};

/// Bound on the decompressed size of one batch when the log looks inside it
/// (timestamp lookups). Kafka's producers cap batches at `max.message.bytes`
/// compressed; 256 MiB leaves room for any sane compression ratio while a
/// crafted "zip bomb" batch cannot exhaust memory.
pub const MAX_DECOMPRESSED_BATCH_BYTES: usize = 256 << 20;

/// Bound on the batches of one append: a produce request carries one batch per
/// partition, a replica fetch response at most `replica.fetch.max.bytes`
/// (1 MiB) of them; 65,536 minimal batches would be 4 MiB.
pub const MAX_BATCHES_PER_APPEND: usize = 65_536;

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

/// Who is appending; decides which rules apply (as Kafka's `AppendOrigin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOrigin {
    /// A producer: base offset 0, record count consistent, no control batches.
    Client,
    /// The broker's own coordinators: may write control batches.
    Coordinator,
}

/// How the log was left and what was checkpointed about it.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// The previous process shut down cleanly: skip recovery.
    pub clean_shutdown: bool,
    /// Offset below which data is known to be fsynced; recovery starts at the
    /// segment holding it. 0 when unknown (recover everything).
    pub recovery_point: i64,
    /// Checkpointed log start offset, if any.
    pub log_start_offset: Option<i64>,
    /// The cleaner has compacted this log (it has a cleaner checkpoint):
    /// offsets may have gaps whatever its `cleanup.policy` is now.
    pub offset_gaps: bool,
}

/// The result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record appended.
    pub first_offset: i64,
    /// Offset of the last record appended.
    pub last_offset: i64,
    /// When the log appended the batches, in ms. Kafka's ProduceResponse
    /// reports it only for `LogAppendTime` topics (and -1 otherwise).
    pub log_append_time_ms: i64,
    /// The timestamp type the batches were stored with.
    pub timestamp_type: TimestampType,
    /// Largest timestamp among the appended batches, as stored.
    pub max_timestamp: i64,
    /// Number of records appended (by the batch headers).
    pub record_count: u64,
    /// Bytes appended.
    pub bytes: u64,
    /// The log start offset after the append.
    pub log_start_offset: i64,
    /// The batch was a producer's retry of a batch already in the log:
    /// nothing was written, and the offsets, timestamps and append time are
    /// the original batch's (Kafka answers such a produce with error NONE and
    /// the original base offset). `record_count` and `bytes` are 0.
    pub duplicate: bool,
}

/// A timestamp lookup's answer: the first record at or after a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampOffset {
    pub timestamp: i64,
    pub offset: i64,
}

/// What one retention pass ([`PartitionLog::delete_retained_segments`]) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionOutcome {
    /// Segments taken out of the log (their files go after
    /// `file.delete.delay.ms`).
    pub segments_deleted: usize,
    /// Bytes of log data in those segments.
    pub bytes_deleted: u64,
    /// The log start offset after the pass.
    pub log_start_offset: i64,
}

/// Whole stored batches to send to a reader, by reference to the segment file
/// that holds them. Nothing is read until [`LogSlice::read`] (or, later, a
/// `sendfile` from [`LogSlice::file_region`]): callers never need to change
/// when serving becomes zero-copy.
#[derive(Debug, Clone, Default)]
pub struct LogSlice {
    segment: Option<Arc<Segment>>,
    position: u64,
    len: u64,
    /// The segment's truncation generation when the positions were resolved.
    generation: u64,
}

impl LogSlice {
    /// Bytes in the slice.
    pub fn len(&self) -> usize {
        usize::try_from(self.len).unwrap_or(usize::MAX)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file, position and length of the slice, for zero-copy sending.
    pub fn file_region(&self) -> io::Result<Option<(Arc<File>, u64, u64)>> {
        match &self.segment {
            Some(segment) if self.len > 0 => Ok(Some((
                segment.file(FileKind::Log)?,
                self.position,
                self.len,
            ))),
            _ => Ok(None),
        }
    }

    /// Appends the slice's bytes to `buf`.
    pub fn read_into(&self, buf: &mut BytesMut) -> io::Result<()> {
        let Some((file, position, len)) = self.file_region()? else {
            return Ok(());
        };
        let start = buf.len();
        let len = usize::try_from(len).map_err(|_| io::Error::other("slice too large"))?;
        buf.resize(start + len, 0);
        let read = file.read_exact_at(&mut buf[start..], position);
        // A truncation (replication) since the positions were resolved may
        // have put other batches there: never hand those out as whole ones.
        let truncated = self
            .segment
            .as_ref()
            .is_some_and(|s| s.generation() != self.generation);
        if read.is_err() || truncated {
            buf.truncate(start);
            return match read {
                Err(e) => Err(e),
                Ok(()) => Err(io::Error::other(
                    "the log was truncated during the read; read again",
                )),
            };
        }
        Ok(())
    }

    /// The slice's bytes.
    pub fn read(&self) -> io::Result<Bytes> {
        let mut buf = BytesMut::with_capacity(self.len());
        self.read_into(&mut buf)?;
        Ok(buf.freeze())
    }
}

/// The answer to a read.
#[derive(Debug, Clone)]
pub struct LogRead {
    pub records: LogSlice,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
}

/// State only the writer touches.
#[derive(Debug)]
struct Writer {
    active: Arc<Segment>,
    epochs: LeaderEpochCache,
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
    dir: Arc<Path>,
    config: RwLock<Arc<LogConfig>>,
    files: Arc<FileCache>,
    clock: Arc<dyn Clock>,
    writer: Mutex<Writer>,
    segments: RwLock<BTreeMap<i64, Arc<Segment>>>,
    log_end_offset: AtomicI64,
    log_start_offset: AtomicI64,
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
    /// Opens the log in `dir`, creating it if it does not exist. After an
    /// unclean shutdown, recovers every segment from the one holding
    /// `options.recovery_point`: validates each batch (length, magic, CRC,
    /// offsets, leader epoch), truncates at the first invalid byte, rebuilds
    /// the indexes and drops the segments after a truncation. Then loads the
    /// producer state: the newest valid snapshot at or below the log end
    /// offset, and the batch headers after it.
    pub fn open(
        dir: impl Into<PathBuf>,
        config: LogConfig,
        files: Arc<FileCache>,
        clock: Arc<dyn Clock>,
        options: LoadOptions,
    ) -> Result<Self, StorageError> {
        let dir: PathBuf = dir.into();
        fs::create_dir_all(&dir).map_err(|e| StorageError::io(&dir, e))?;
        let dir: Arc<Path> = Arc::from(dir.as_path());
        let now = clock.now_ms();
        let (bases, snapshots) = list_segments(&dir)?;
        let is_new = bases.is_empty();
        let mut epochs = if is_new {
            LeaderEpochCache::create(&dir).map_err(|e| StorageError::io(&dir, e))?
        } else {
            LeaderEpochCache::load(&dir)
        };
        let mut segments = BTreeMap::new();
        for (base, size) in bases {
            segments.insert(
                base,
                Arc::new(Segment::existing(
                    Arc::clone(&dir),
                    base,
                    Arc::clone(&files),
                    size,
                    now,
                )),
            );
        }

        // Recovery refuses offset gaps in logs that were never compacted; a
        // log the cleaner has rewritten keeps its gaps even after its policy
        // changed to delete.
        let scan_config = LogConfig {
            compact: config.compact || options.offset_gaps,
            ..config.clone()
        };
        // Recovered segments have their transaction indexes emptied; the
        // producer state replay writes them again.
        let mut rebuild_txn_index_from = None;
        if !is_new && !options.clean_shutdown {
            rebuild_txn_index_from = recover(
                &dir,
                &scan_config,
                &mut segments,
                &mut epochs,
                options.recovery_point,
            )?;
        }

        let active = match segments.last_key_value() {
            Some((_, segment)) => Arc::clone(segment),
            None => {
                let base = options.log_start_offset.unwrap_or(0).max(0);
                let segment = Segment::create(Arc::clone(&dir), base, Arc::clone(&files), now)
                    .map_err(|e| StorageError::io(&dir, e))?;
                let segment = Arc::new(segment);
                segments.insert(base, Arc::clone(&segment));
                segment
            }
        };
        if !is_new && options.clean_shutdown {
            rebuild_txn_index_from = check_active_segment(&dir, &scan_config, &active, &epochs)?;
        }
        if !epochs.is_trusted() {
            rebuild_epochs(&dir, &segments, &mut epochs)?;
        }
        let log_end_offset = active
            .next_offset()
            .map_err(|e| StorageError::io(active.path(FileKind::Log), e))?
            .unwrap_or(active.base_offset());
        epochs
            .truncate_from_end(log_end_offset)
            .map_err(|e| StorageError::io(&dir, e))?;
        let first_base = segments.first_key_value().map_or(0, |(base, _)| *base);
        let log_start_offset = options
            .log_start_offset
            .unwrap_or(first_base)
            .max(first_base)
            .min(log_end_offset);

        let log = Self {
            dir,
            config: RwLock::new(Arc::new(config)),
            files,
            clock,
            writer: Mutex::new(Writer {
                active,
                epochs,
                last_flush_ms: now,
                pending_flush: Vec::new(),
                pending_delete: Vec::new(),
                dir_dirty: is_new,
                producers: ProducerStateManager::new(snapshots, MAX_PRODUCERS_PER_PARTITION),
            }),
            segments: RwLock::new(segments),
            log_end_offset: AtomicI64::new(log_end_offset),
            log_start_offset: AtomicI64::new(log_start_offset),
            recovery_point: AtomicI64::new(log_end_offset),
            high_watermark: AtomicI64::new(HIGH_WATERMARK_UNSET),
            truncations: AtomicU64::new(0),
            first_ongoing_offset: AtomicI64::new(NO_OPEN_TXN),
            unreplicated_txns: Mutex::new(VecDeque::new()),
            offline: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        };
        {
            let mut writer = log.writer.lock();
            log.load_producer_state(&mut writer, rebuild_txn_index_from)?;
        }
        Ok(log)
    }

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

    /// Appends batches from a producer or a coordinator: validates each
    /// (length, magic, size, CRC32C, and Kafka's rules for client batches),
    /// assigns offsets from the log end offset and stamps `leader_epoch` by
    /// rewriting those header fields, and writes the bytes otherwise
    /// unchanged. With `message.timestamp.type=LogAppendTime` the batch's max
    /// timestamp and timestamp type are set too (and its CRC recomputed);
    /// records are never re-encoded.
    ///
    /// Batches of idempotent producers from a client are checked against the
    /// producer state first (epoch, duplicate, sequence, as Kafka): an older
    /// epoch is [`AppendError::InvalidProducerEpoch`], a sequence that does
    /// not continue is [`AppendError::OutOfOrderSequence`], and a retry of one
    /// of the producer's last [`NUM_BATCHES_TO_RETAIN`] batches returns the
    /// original batch's offsets with [`AppendInfo::duplicate`] set, writing
    /// nothing. Coordinator appends update the state unchecked.
    pub fn append_as_leader(
        &self,
        records: &[u8],
        leader_epoch: i32,
        origin: AppendOrigin,
    ) -> Result<AppendInfo, AppendError> {
        let config = self.config();
        let batches = validate_batches(records, &config, Some(origin))?;
        let mut writer = self.writer.lock();
        self.check_online()?;
        let now = self.clock.now_ms();
        let log_append_time = config.message_timestamp_type == TimestampType::LogAppendTime;

        // Offsets continue from the log end offset.
        let first_offset = self.log_end_offset();
        let mut next = first_offset;
        let mut headers: Vec<[u8; RECORD_BATCH_OVERHEAD]> = Vec::with_capacity(batches.len());
        let mut max_timestamps = Vec::with_capacity(batches.len());
        let mut producer_batches = Vec::new();
        for (header, bytes) in &batches {
            let mut copy = [0u8; RECORD_BATCH_OVERHEAD];
            copy.copy_from_slice(&bytes[..RECORD_BATCH_OVERHEAD]);
            record_batch::set_base_offset(&mut copy, next);
            record_batch::set_partition_leader_epoch(&mut copy, leader_epoch);
            let max_timestamp = if log_append_time {
                record_batch::set_log_append_time_parts(
                    &mut copy,
                    &bytes[RECORD_BATCH_OVERHEAD..],
                    now,
                );
                now
            } else {
                header.max_timestamp
            };
            max_timestamps.push(max_timestamp);
            producer_batches.extend(ProducerBatch::of(header, bytes, next, max_timestamp));
            headers.push(copy);
            next = next
                .checked_add(i64::from(header.last_offset_delta) + 1)
                .ok_or(AppendError::InvalidRecord(
                    "offsets beyond the largest offset",
                ))?;
        }
        let last_offset = next - 1;
        // One append goes into one segment, whose offsets are 32-bit relative
        // to its base: a wider range cannot be stored (Kafka refuses it too).
        if last_offset - first_offset > i64::from(i32::MAX) {
            return Err(AppendError::InvalidRecord(
                "batches span more offsets than a segment can hold",
            ));
        }
        let total: u64 = batches.iter().map(|(_, b)| b.len() as u64).sum();
        let first_max_timestamp = max_timestamps
            .iter()
            .copied()
            .max()
            .unwrap_or(record_batch::NO_TIMESTAMP);
        // As Kafka, producer state is checked after the batches are validated
        // and before anything is rolled or written: a refused or duplicate
        // batch leaves no trace.
        let producer_update = match origin {
            AppendOrigin::Client => {
                match writer.producers.check_client_append(&producer_batches)? {
                    Checked::Duplicate(original) => {
                        return Ok(AppendInfo {
                            first_offset: original.first_offset(),
                            last_offset: original.last_offset,
                            // Kafka answers with the original batch's timestamp.
                            log_append_time_ms: original.max_timestamp,
                            timestamp_type: config.message_timestamp_type,
                            max_timestamp: original.max_timestamp,
                            record_count: 0,
                            bytes: 0,
                            log_start_offset: self.log_start_offset(),
                            duplicate: true,
                        });
                    }
                    Checked::Append(update) => update,
                }
            }
            AppendOrigin::Coordinator => writer
                .producers
                .check_coordinator_append(&producer_batches)?,
        };
        self.maybe_roll(
            &mut writer,
            &config,
            first_offset,
            last_offset,
            total,
            first_max_timestamp,
            now,
        )?;
        // Nothing is written yet and a failed assign leaves the epochs as they
        // were: the log stays usable (a full disk refuses this append only).
        writer
            .epochs
            .assign(leader_epoch, first_offset)
            .map_err(AppendError::Io)?;

        let mut slices = Vec::with_capacity(batches.len() * 2);
        let mut appended = Vec::with_capacity(batches.len());
        let mut position = writer.active.size();
        let mut offset = first_offset;
        for (((header, bytes), copy), max_timestamp) in
            batches.iter().zip(&headers).zip(&max_timestamps)
        {
            slices.push(IoSlice::new(copy));
            slices.push(IoSlice::new(&bytes[RECORD_BATCH_OVERHEAD..]));
            let last = offset + i64::from(header.last_offset_delta);
            appended.push(AppendedBatch {
                position,
                size: bytes.len() as u64,
                last_offset: last,
                max_timestamp: *max_timestamp,
            });
            position += bytes.len() as u64;
            offset = last + 1;
        }
        self.write(
            &mut writer,
            &config,
            &mut slices,
            &appended,
            next,
            producer_update,
        )?;
        Ok(AppendInfo {
            first_offset,
            last_offset,
            log_append_time_ms: now,
            timestamp_type: config.message_timestamp_type,
            max_timestamp: first_max_timestamp,
            record_count: batches
                .iter()
                .map(|(h, _)| u64::try_from(h.record_count).unwrap_or(0))
                .sum(),
            bytes: total,
            log_start_offset: self.log_start_offset(),
            duplicate: false,
        })
    }

    /// Appends batches replicated from a leader, keeping their offsets and
    /// epochs. Their offsets must not go back below the log end offset.
    /// Producer state follows the batches without checks (the leader made
    /// them).
    pub fn append_as_follower(&self, records: &[u8]) -> Result<AppendInfo, AppendError> {
        let config = self.config();
        let batches = validate_batches(records, &config, None)?;
        let mut writer = self.writer.lock();
        self.check_online()?;
        let now = self.clock.now_ms();
        let mut min_next = self.log_end_offset();
        for (header, _) in &batches {
            if header.base_offset < min_next {
                return Err(AppendError::OffsetOutOfOrder {
                    base_offset: header.base_offset,
                    log_end_offset: min_next,
                });
            }
            let last = header
                .checked_last_offset()
                .ok_or(AppendError::InvalidRecord(
                    "offsets beyond the largest offset",
                ))?;
            min_next = last + 1;
        }
        // A log that is never compacted has no offset gaps inside a segment
        // (recovery relies on that): a gap from the leader starts a segment.
        let mut runs: Vec<&[(BatchHeader, &[u8])]> = Vec::new();
        let mut run_start = 0;
        for i in 1..batches.len() {
            if !config.compact && batches[i].0.base_offset != batches[i - 1].0.next_offset() {
                runs.push(&batches[run_start..i]);
                run_start = i;
            }
        }
        runs.push(&batches[run_start..]);
        for run in runs {
            self.append_follower_run(&mut writer, &config, run, now)?;
        }
        let (first, _) = batches[0];
        Ok(AppendInfo {
            first_offset: first.base_offset,
            last_offset: min_next - 1,
            log_append_time_ms: now,
            timestamp_type: first.timestamp_type(),
            max_timestamp: batches
                .iter()
                .map(|(h, _)| h.max_timestamp)
                .max()
                .unwrap_or(-1),
            record_count: batches
                .iter()
                .map(|(h, _)| u64::try_from(h.record_count).unwrap_or(0))
                .sum(),
            bytes: batches.iter().map(|(_, b)| b.len() as u64).sum(),
            log_start_offset: self.log_start_offset(),
            duplicate: false,
        })
    }

    /// Appends replicated batches with contiguous offsets into one segment.
    fn append_follower_run(
        &self,
        writer: &mut Writer,
        config: &LogConfig,
        batches: &[(BatchHeader, &[u8])],
        now: i64,
    ) -> Result<(), AppendError> {
        let Some(((first, _), (last, _))) = batches.first().zip(batches.last()) else {
            return Ok(());
        };
        let last_offset = last.last_offset();
        if last_offset - first.base_offset > i64::from(i32::MAX) {
            return Err(AppendError::InvalidRecord(
                "batches span more offsets than a segment can hold",
            ));
        }
        let total: u64 = batches.iter().map(|(_, b)| b.len() as u64).sum();
        let max_timestamp = batches
            .iter()
            .map(|(h, _)| h.max_timestamp)
            .max()
            .unwrap_or(-1);
        self.maybe_roll(
            writer,
            config,
            first.base_offset,
            last_offset,
            total,
            max_timestamp,
            now,
        )?;
        for (header, _) in batches {
            writer
                .epochs
                .assign(header.partition_leader_epoch, header.base_offset)
                .map_err(|e| self.fail(e))?;
        }
        let producer_batches: Vec<ProducerBatch> = batches
            .iter()
            .filter_map(|(h, b)| ProducerBatch::of(h, b, h.base_offset, h.max_timestamp))
            .collect();
        let producer_update = writer.producers.prepare_unchecked(&producer_batches);
        let mut slices: Vec<IoSlice<'_>> = batches.iter().map(|(_, b)| IoSlice::new(b)).collect();
        let mut position = writer.active.size();
        let appended: Vec<AppendedBatch> = batches
            .iter()
            .map(|(h, b)| {
                let batch = AppendedBatch {
                    position,
                    size: b.len() as u64,
                    last_offset: h.last_offset(),
                    max_timestamp: h.max_timestamp,
                };
                position += b.len() as u64;
                batch
            })
            .collect();
        self.write(
            writer,
            config,
            &mut slices,
            &appended,
            last_offset + 1,
            producer_update,
        )
    }

    /// Writes prepared batches to the active segment, publishes the new log
    /// end offset and puts the producer state they leave in place; fsyncs if
    /// `flush.messages` says so.
    fn write(
        &self,
        writer: &mut Writer,
        config: &LogConfig,
        slices: &mut [IoSlice<'_>],
        appended: &[AppendedBatch],
        next_offset: i64,
        producer_update: ProducerUpdate,
    ) -> Result<(), AppendError> {
        let index_interval_bytes = u64::from(config.index_interval_bytes);
        match writer.active.append(slices, appended, index_interval_bytes) {
            Ok(()) => {}
            // The segment cut the failed write back: the log stays usable.
            Err(AppendFailure::Undone(e)) => return Err(AppendError::Io(e)),
            // The file's tail is unknown: no more appends.
            Err(AppendFailure::Torn(e)) => return Err(self.fail(e)),
        }
        self.log_end_offset.store(next_offset, Ordering::Release);
        // The batches are in the log now, even if the fsync below fails: the
        // state must know them, or a retry would be written twice.
        let completed = writer.producers.apply(producer_update);
        if !completed.is_empty() {
            let active = Arc::clone(&writer.active);
            self.complete_txns(writer, &active, &completed)
                .map_err(|e| self.fail(e))?;
        }
        self.publish_ongoing(writer);
        if let Some(flush_messages) = config.flush_messages {
            let unflushed = u64::try_from(next_offset - self.recovery_point()).unwrap_or(0);
            if unflushed >= flush_messages {
                self.flush_locked(writer).map_err(AppendError::Io)?;
            }
        }
        Ok(())
    }

    /// Records transactions that markers in `segment` ended: an aborted one
    /// goes into the segment's transaction index with the last stable offset
    /// after it (Kafka's `ProducerStateManager.lastStableOffset`: the first
    /// offset of the oldest transaction still open before the marker, else
    /// the offset after the marker); each stays unstable until the high
    /// watermark passes its marker.
    fn complete_txns(
        &self,
        writer: &Writer,
        segment: &Segment,
        completed: &[CompletedTxn],
    ) -> io::Result<()> {
        let ongoing = writer.producers.first_ongoing_offset();
        for txn in completed {
            if txn.aborted {
                let last_stable_offset = ongoing
                    .filter(|first| *first < txn.last_offset)
                    .unwrap_or(txn.last_offset + 1);
                segment.append_aborted_txn(&AbortedTxn {
                    producer_id: txn.producer_id,
                    first_offset: txn.first_offset,
                    last_offset: txn.last_offset,
                    last_stable_offset,
                })?;
            }
        }
        let mut unreplicated = self.unreplicated_txns.lock();
        unreplicated.extend(completed.iter().map(|t| (t.first_offset, t.last_offset)));
        while unreplicated.len() > MAX_UNREPLICATED_TXNS {
            unreplicated.pop_front();
        }
        Ok(())
    }

    /// Publishes the first offset of the oldest open transaction for readers.
    fn publish_ongoing(&self, writer: &Writer) {
        self.first_ongoing_offset.store(
            writer
                .producers
                .first_ongoing_offset()
                .unwrap_or(NO_OPEN_TXN),
            Ordering::Release,
        );
    }

    /// The partition's first unstable offset (Kafka's): the first offset of
    /// the oldest transaction that is open, or ended by a marker the high
    /// watermark has not passed yet; never below the log start offset.
    /// `None` when there is no such transaction.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        let high_watermark = self.high_watermark();
        let mut first = self.first_ongoing_offset.load(Ordering::Acquire);
        {
            let mut unreplicated = self.unreplicated_txns.lock();
            while unreplicated
                .front()
                .is_some_and(|(_, last)| *last < high_watermark)
            {
                unreplicated.pop_front();
            }
            for (txn_first, _) in unreplicated.iter() {
                first = first.min(*txn_first);
            }
        }
        (first != NO_OPEN_TXN).then(|| first.max(self.log_start_offset()))
    }

    /// The last stable offset (KIP-98): the high watermark, or the first
    /// unstable offset when that is lower. read_committed consumers read
    /// below it.
    pub fn last_stable_offset(&self) -> i64 {
        let high_watermark = self.high_watermark();
        self.first_unstable_offset()
            .map_or(high_watermark, |first| first.min(high_watermark))
    }

    /// The aborted transactions that overlap `[fetch_offset, upper_bound)`,
    /// in the order their markers were written (Kafka's
    /// `collectAbortedTransactions`): the indexes of the segment holding
    /// `fetch_offset` and of later ones, until an entry shows that every
    /// transaction overlapping the range had ended.
    pub fn aborted_transactions(
        &self,
        fetch_offset: i64,
        upper_bound: i64,
    ) -> Result<Vec<AbortedTxn>, ReadError> {
        let mut aborted = Vec::new();
        for segment in self.segments_from(fetch_offset) {
            let found = segment.aborted_txns(fetch_offset, upper_bound)?;
            aborted.extend(found.aborted);
            if found.complete {
                break;
            }
        }
        Ok(aborted)
    }

    /// Rolls to a new segment if the next append would not fit the active
    /// one, by Kafka's rules: `segment.bytes`, `segment.ms` (measured from the
    /// first batch's timestamp to this one's), index full, relative offset
    /// overflow.
    #[allow(clippy::too_many_arguments)]
    fn maybe_roll(
        &self,
        writer: &mut Writer,
        config: &LogConfig,
        first_offset: i64,
        last_offset: i64,
        bytes: u64,
        max_timestamp: i64,
        now: i64,
    ) -> Result<(), AppendError> {
        let segment_bytes = config.effective_segment_bytes();
        if bytes > segment_bytes {
            return Err(AppendError::LargerThanSegment {
                size: usize::try_from(bytes).unwrap_or(usize::MAX),
                max: segment_bytes,
            });
        }
        let active = &writer.active;
        let size = active.size();
        let reason = if size == 0 {
            // An empty segment takes any append whose offsets fit it.
            (first_offset != active.base_offset()).then_some("empty segment at another offset")
        } else if size + bytes > segment_bytes {
            Some("segment.bytes")
        } else if !config.compact && first_offset != self.log_end_offset() {
            // Replicated batches after a gap: offsets inside a segment of a
            // log that is never compacted stay contiguous.
            Some("offset gap")
        } else if last_offset - active.base_offset() > i64::from(i32::MAX) {
            Some("relative offset overflow")
        } else {
            let (offset_index, time_index) = active.index_bytes().map_err(|e| self.fail(e))?;
            // One more entry of each index must fit.
            let index_max = u64::from(config.segment_index_bytes);
            if offset_index + 8 > index_max || time_index + 12 > index_max {
                Some("segment.index.bytes")
            } else {
                let first_ts = active.first_batch_timestamp().map_err(|e| self.fail(e))?;
                let waited = match first_ts {
                    // Producer-chosen timestamps: saturate, never overflow.
                    Some(first) if first >= 0 => max_timestamp.saturating_sub(first),
                    _ => now.saturating_sub(active.created_ms()),
                };
                (waited > config.segment_ms.saturating_sub(config.segment_jitter_ms))
                    .then_some("segment.ms")
            }
        };
        let Some(reason) = reason else { return Ok(()) };
        self.roll(writer, first_offset, reason, now)
            .map_err(|e| self.fail(e))
    }

    /// Starts a new active segment at `base_offset`. The old one is sealed now
    /// and fsynced by the next flush (the log manager runs it in the
    /// background, as Kafka flushes rolled segments asynchronously).
    fn roll(
        &self,
        writer: &mut Writer,
        base_offset: i64,
        reason: &str,
        now: i64,
    ) -> io::Result<()> {
        let old = Arc::clone(&writer.active);
        let new = Arc::new(Segment::create(
            Arc::clone(&self.dir),
            base_offset,
            Arc::clone(&self.files),
            now,
        )?);
        {
            let mut segments = self.segments.write();
            if old.size() == 0 {
                // Nothing to keep: an empty segment is replaced, as Kafka does.
                segments.remove(&old.base_offset());
                old.mark_deleted()?;
                old.delete_files()?;
            }
            segments.insert(base_offset, Arc::clone(&new));
        }
        if old.size() > 0 {
            old.seal()?;
            writer.pending_flush.push(Arc::clone(&old));
            old.unload_indexes();
        }
        tracing::debug!(log = %self.dir.display(), base_offset, reason, "rolled segment");
        writer.active = new;
        writer.dir_dirty = true;
        // The state now covers every batch below the new segment. A failed
        // snapshot costs only a longer rebuild at the next start, so it does
        // not fail the append.
        if let Err(e) = writer.producers.take_snapshot(&self.dir, base_offset) {
            tracing::warn!(log = %self.dir.display(), base_offset, error = %e, "writing a producer state snapshot failed");
        }
        Ok(())
    }

    /// Reads whole batches starting with the one that holds `start_offset`,
    /// up to `max_bytes` (at least one batch when `min_one_batch`, as Fetch
    /// v3+ needs), and only batches that end below `max_offset` (the high
    /// watermark or last stable offset) when given. Returns data from one
    /// segment: the next read continues where this one ended.
    pub fn read(
        &self,
        start_offset: i64,
        max_bytes: usize,
        max_offset: Option<i64>,
        min_one_batch: bool,
    ) -> Result<LogRead, ReadError> {
        if self.is_offline() {
            return Err(ReadError::Offline);
        }
        let log_end_offset = self.log_end_offset();
        let log_start_offset = self.log_start_offset();
        if start_offset < log_start_offset || start_offset > log_end_offset {
            return Err(ReadError::OffsetOutOfRange {
                offset: start_offset,
                log_start_offset,
                log_end_offset,
            });
        }
        let empty = LogRead {
            records: LogSlice::default(),
            log_start_offset,
            log_end_offset,
        };
        let end_offset = max_offset.map_or(log_end_offset, |m| m.min(log_end_offset));
        if start_offset >= end_offset {
            return Ok(empty);
        }
        let mut segment = self.floor_segment(start_offset);
        while let Some(current) = segment {
            if current.base_offset() >= end_offset {
                break;
            }
            // Only batches that end below `end_offset` are visible. Usually the
            // whole published segment qualifies and no lookup is needed.
            // Before any position is resolved (see LogSlice::read_into).
            let generation = current.generation();
            let (size, next_offset) = current.published();
            let limit = if next_offset.is_some_and(|next| next <= end_offset) {
                size
            } else {
                match current.find_batch(end_offset, size)? {
                    Some((position, _)) => position,
                    None => size,
                }
            };
            if let Some((position, header)) = current.find_batch(start_offset, limit)? {
                let first_size = header.total_size() as u64;
                let max_bytes = max_bytes as u64;
                let end = if first_size > max_bytes {
                    if !min_one_batch {
                        return Ok(empty);
                    }
                    position + first_size
                } else {
                    current.batch_end_within(position, max_bytes, limit)?
                };
                return Ok(LogRead {
                    records: LogSlice {
                        segment: Some(current),
                        position,
                        len: end - position,
                        generation,
                    },
                    log_start_offset,
                    log_end_offset,
                });
            }
            segment = self.next_segment(current.base_offset());
        }
        Ok(empty)
    }

    /// The first record whose timestamp is >= `timestamp`, at or above the log
    /// start offset and below `max_offset` if given (ListOffsets by time).
    pub fn offset_for_timestamp(
        &self,
        timestamp: i64,
        max_offset: Option<i64>,
    ) -> Result<Option<TimestampOffset>, ReadError> {
        let log_start = self.log_start_offset();
        let end_offset = max_offset.map_or(self.log_end_offset(), |m| m.min(self.log_end_offset()));
        for segment in self.segments_from(log_start) {
            if segment.base_offset() >= end_offset {
                break;
            }
            let (max_ts, _) = segment.max_timestamp()?;
            if max_ts < timestamp {
                continue;
            }
            let from = segment
                .time_search_start(timestamp, end_offset)?
                .max(log_start);
            let size = segment.size();
            let Some((position, _)) = segment.find_batch(from, size)? else {
                continue;
            };
            let log = segment.file(FileKind::Log)?;
            let mut scanner = BatchScanner::new(&log, position, size);
            while let Scanned::Batch { header, bytes, .. } = scanner.next_batch()? {
                if header.base_offset >= end_offset {
                    return Ok(None);
                }
                if header.last_offset() < log_start || header.max_timestamp < timestamp {
                    continue;
                }
                let found =
                    first_record_at_or_after(&header, bytes, log_start, end_offset, |ts| {
                        ts >= timestamp
                    })?;
                if found.is_some() {
                    return Ok(found);
                }
            }
        }
        Ok(None)
    }

    /// The record with the largest timestamp (ListOffsets `-3`, KIP-734): the
    /// first record holding it.
    pub fn max_timestamp_offset(&self) -> Result<Option<TimestampOffset>, ReadError> {
        let log_start = self.log_start_offset();
        let mut best: Option<(i64, i64, Arc<Segment>)> = None;
        for segment in self.segments_from(log_start) {
            let (max_ts, offset) = segment.max_timestamp()?;
            if offset >= 0 && best.as_ref().is_none_or(|(ts, _, _)| max_ts > *ts) {
                best = Some((max_ts, offset, segment));
            }
        }
        let Some((max_ts, offset, segment)) = best else {
            return Ok(None);
        };
        let size = segment.size();
        let Some((position, header)) = segment.find_batch(offset, size)? else {
            return Ok(None);
        };
        let mut bytes = vec![0u8; header.total_size()];
        segment
            .file(FileKind::Log)?
            .read_exact_at(&mut bytes, position)?;
        let found =
            first_record_at_or_after(&header, &bytes, log_start, i64::MAX, |ts| ts == max_ts)?;
        Ok(found.or(Some(TimestampOffset {
            timestamp: max_ts,
            offset: header.last_offset(),
        })))
    }

    /// Calls `f` with the header of every batch from the one holding `offset`
    /// to the log end (producer state rebuild, log dump).
    pub fn for_each_batch_from(
        &self,
        offset: i64,
        mut f: impl FnMut(u64, &BatchHeader, &[u8]),
    ) -> Result<(), ReadError> {
        for segment in self.segments_from(offset) {
            let size = segment.size();
            let start = match segment.find_batch(offset, size)? {
                Some((position, _)) => position,
                None => continue,
            };
            let log = segment.file(FileKind::Log)?;
            let mut scanner = BatchScanner::new(&log, start, size);
            while let Scanned::Batch {
                position,
                header,
                bytes,
            } = scanner.next_batch()?
            {
                f(position, &header, bytes);
            }
        }
        Ok(())
    }

    /// Drops every batch whose last offset is >= `offset` (replication: a
    /// follower cutting back to the leader's log). Batches are removed whole,
    /// so the log end offset becomes the end of the last batch kept, which is
    /// `offset` when it falls on a batch boundary (as leader epoch end offsets
    /// do). Below the log start offset, the log is emptied and restarts at
    /// `offset`.
    ///
    /// The recovery point is lowered in memory only: with a log manager, use
    /// [`crate::LogManager::truncate_to`], which also checkpoints it.
    pub fn truncate_to(&self, offset: i64) -> Result<(), StorageError> {
        let mut writer = self.writer.lock();
        self.check_online().map_err(|_| StorageError::Offline)?;
        if offset >= self.log_end_offset() {
            return Ok(());
        }
        // Segments may already be renamed away when a step fails: the log
        // can no longer be trusted to take writes.
        self.truncate_locked(&mut writer, offset)
            .inspect_err(|e| self.take_offline(e))
    }

    fn truncate_locked(&self, writer: &mut Writer, offset: i64) -> Result<(), StorageError> {
        let now = self.clock.now_ms();
        let io = |e| StorageError::io(&*self.dir, e);
        if offset < self.log_start_offset() {
            return self.truncate_fully_and_start_at(writer, offset);
        }
        // Epochs first: a crash in between leaves batches the cache does not
        // cover, which recovery then truncates, exactly as asked.
        writer.epochs.truncate_from_end(offset).map_err(io)?;
        let doomed: Vec<Arc<Segment>> = {
            let segments = self.segments.read();
            let keep_base = segments.range(..=offset).next_back().map(|(b, _)| *b);
            segments
                .range((
                    Bound::Excluded(keep_base.unwrap_or(i64::MIN)),
                    Bound::Unbounded,
                ))
                .map(|(_, s)| Arc::clone(s))
                .collect()
        };
        let delay = self.config().file_delete_delay_ms;
        self.remove_segments(writer, &doomed, now + delay)
            .map_err(io)?;
        let Some(target) = self.floor_segment(offset) else {
            return self.truncate_fully_and_start_at(writer, offset);
        };
        let next = target.truncate_to(offset).map_err(io)?;
        writer.pending_flush.retain(|s| !Arc::ptr_eq(s, &target));
        writer.active = Arc::clone(&target);
        let log_end_offset = next.unwrap_or(target.base_offset());
        self.truncations.fetch_add(1, Ordering::AcqRel);
        self.log_end_offset.store(log_end_offset, Ordering::Release);
        self.lower_high_watermark(log_end_offset);
        self.recovery_point
            .fetch_min(log_end_offset, Ordering::AcqRel);
        writer
            .epochs
            .truncate_from_end(log_end_offset)
            .map_err(io)?;
        // Kafka's truncateAndReload: the state must forget the batches cut
        // away, or their retries would be taken for duplicates.
        // The transaction indexes lost their entries at and above the new
        // end with the segments (`Segment::truncate_to`); the marker-ended
        // transactions there are gone too.
        self.unreplicated_txns
            .lock()
            .retain(|(_, last)| *last < log_end_offset);
        self.load_producer_state(writer, None)
    }

    fn truncate_fully_and_start_at(
        &self,
        writer: &mut Writer,
        offset: i64,
    ) -> Result<(), StorageError> {
        let io = |e| StorageError::io(&*self.dir, e);
        let now = self.clock.now_ms();
        let all: Vec<Arc<Segment>> = self.segments.read().values().cloned().collect();
        writer.epochs.truncate_from_end(i64::MIN).map_err(io)?;
        let delay = self.config().file_delete_delay_ms;
        self.remove_segments(writer, &all, now + delay)
            .map_err(io)?;
        // Nothing of the old log's producers remains (Kafka's
        // truncateFullyAndStartAt). Deleted durably: a snapshot that came back
        // after a crash would look valid once the new log passed its offset.
        writer.producers.clear();
        self.unreplicated_txns.lock().clear();
        self.publish_ongoing(writer);
        if writer
            .producers
            .delete_all_snapshots(&self.dir)
            .map_err(io)?
        {
            checkpoint::sync_dir(&self.dir).map_err(io)?;
        }
        let segment = Arc::new(
            Segment::create(Arc::clone(&self.dir), offset, Arc::clone(&self.files), now)
                .map_err(io)?,
        );
        self.segments.write().insert(offset, Arc::clone(&segment));
        writer.active = segment;
        writer.dir_dirty = true;
        self.truncations.fetch_add(1, Ordering::AcqRel);
        self.log_start_offset.store(offset, Ordering::Release);
        self.log_end_offset.store(offset, Ordering::Release);
        self.recovery_point.store(offset, Ordering::Release);
        if self.high_watermark.load(Ordering::Acquire) != HIGH_WATERMARK_UNSET {
            self.high_watermark.store(offset, Ordering::Release);
        }
        Ok(())
    }

    /// Moves the log start offset up to `offset` (DeleteRecords, retention)
    /// and deletes the segments wholly below it. The active segment stays.
    pub fn advance_log_start_offset(&self, offset: i64) -> Result<(), StorageError> {
        let mut writer = self.writer.lock();
        self.check_online().map_err(|_| StorageError::Offline)?;
        let log_end_offset = self.log_end_offset();
        if offset > log_end_offset {
            return Err(StorageError::InvalidRequest(format!(
                "log start offset {offset} would be above the log end offset {log_end_offset}"
            )));
        }
        if offset <= self.log_start_offset() {
            return Ok(());
        }
        self.log_start_offset.store(offset, Ordering::Release);
        self.remove_below_log_start(&mut writer, offset)
            .inspect_err(|e| self.take_offline(e))
    }

    fn remove_below_log_start(&self, writer: &mut Writer, offset: i64) -> Result<(), StorageError> {
        let doomed: Vec<Arc<Segment>> = {
            let segments = self.segments.read();
            let bases: Vec<i64> = segments.keys().copied().collect();
            bases
                .windows(2)
                .filter(|w| w[1] <= offset)
                .filter_map(|w| segments.get(&w[0]).cloned())
                .collect()
        };
        self.remove_prefix(writer, &doomed, offset)
    }

    /// Removes `doomed`, the oldest segments, now that the log starts at
    /// `offset`: the leader epoch cache forgets what lies below it, and
    /// producer snapshots below it go.
    fn remove_prefix(
        &self,
        writer: &mut Writer,
        doomed: &[Arc<Segment>],
        offset: i64,
    ) -> Result<(), StorageError> {
        let io = |e| StorageError::io(&*self.dir, e);
        writer.epochs.truncate_from_start(offset).map_err(io)?;
        let due = self
            .clock
            .now_ms()
            .saturating_add(self.config().file_delete_delay_ms);
        self.remove_segments(writer, doomed, due).map_err(io)?;
        // Producers stay known (KIP-360: their state outlives their data);
        // snapshots below the new start are kept only while they are the newest.
        writer
            .producers
            .delete_snapshots_below(&self.dir, offset)
            .map_err(io)
    }

    /// Deletes old segments as Kafka's `UnifiedLog.deleteOldSegments` does,
    /// oldest first, in three passes over what is left:
    ///
    /// 1. segments wholly below the log start offset (every cleanup policy);
    /// 2. with `cleanup.policy=delete`, while the log is larger than
    ///    `retention.bytes` by at least the segment's size;
    /// 3. with `cleanup.policy=delete`, segments whose largest timestamp (the
    ///    file's modification time if they hold none) is more than
    ///    `retention.ms` before now.
    ///
    /// Only a segment whose end (the next segment's base offset, or the log
    /// end offset for the active one) is at or below the high watermark can
    /// go, and an empty active segment never goes. When every segment would
    /// go, a new empty active segment is rolled first, so the log always
    /// keeps one. The log start offset then moves up (never down) to the
    /// base offset of the first segment left. The removed segments' files
    /// are renamed `*.deleted` and removed after `file.delete.delay.ms`.
    pub fn delete_retained_segments(&self) -> Result<RetentionOutcome, StorageError> {
        let config = self.config();
        let mut writer = self.writer.lock();
        self.check_online().map_err(|_| StorageError::Offline)?;
        let now = self.clock.now_ms();
        let log_start_offset = self.log_start_offset();
        let log_end_offset = self.log_end_offset();
        let bounds = RetentionBounds {
            segments: self.segments.read().values().cloned().collect(),
            high_watermark: self.high_watermark(),
            log_end_offset,
        };
        let io = |e| StorageError::io(&*self.dir, e);
        let mut deletable = bounds.deletable_from(0, |i| {
            Ok(bounds
                .segments
                .get(i + 1)
                .is_some_and(|next| next.base_offset() <= log_start_offset))
        })?;
        if config.delete && config.retention_bytes >= 0 {
            let size: u64 = bounds.segments[deletable..].iter().map(|s| s.size()).sum();
            let mut excess = i64::try_from(size)
                .unwrap_or(i64::MAX)
                .saturating_sub(config.retention_bytes);
            if excess >= 0 {
                deletable = bounds.deletable_from(deletable, |i| {
                    let size = i64::try_from(bounds.segments[i].size()).unwrap_or(i64::MAX);
                    Ok(if excess - size >= 0 {
                        excess -= size;
                        true
                    } else {
                        false
                    })
                })?;
            }
        }
        if config.delete && config.retention_ms >= 0 {
            deletable = bounds.deletable_from(deletable, |i| {
                let largest = bounds.segments[i].largest_timestamp().map_err(io)?;
                Ok(now.saturating_sub(largest) > config.retention_ms)
            })?;
        }
        let outcome = RetentionOutcome {
            segments_deleted: deletable,
            bytes_deleted: bounds.segments[..deletable].iter().map(|s| s.size()).sum(),
            log_start_offset,
        };
        if deletable == 0 {
            return Ok(outcome);
        }
        let result = (|| {
            if deletable == bounds.segments.len() {
                // Kafka: a log keeps at least one segment; the active one is
                // deletable only when it holds data, so this one is new.
                self.roll(&mut writer, log_end_offset, "retention", now)
                    .map_err(io)?;
            }
            let new_start = bounds
                .segments
                .get(deletable)
                .map_or(log_end_offset, |s| s.base_offset())
                .max(log_start_offset);
            self.log_start_offset.fetch_max(new_start, Ordering::AcqRel);
            self.remove_prefix(&mut writer, &bounds.segments[..deletable], new_start)?;
            Ok(new_start)
        })();
        let new_start = result.inspect_err(|e| self.take_offline(e))?;
        tracing::info!(
            log = %self.dir.display(),
            segments = outcome.segments_deleted,
            bytes = outcome.bytes_deleted,
            log_start_offset = new_start,
            "deleted segments past retention"
        );
        Ok(RetentionOutcome {
            log_start_offset: self.log_start_offset(),
            ..outcome
        })
    }

    /// Takes segments out of the log and renames their files to `*.deleted`;
    /// the files go at `due_ms` (`file.delete.delay.ms`), so reads in flight
    /// finish first.
    fn remove_segments(
        &self,
        writer: &mut Writer,
        doomed: &[Arc<Segment>],
        due_ms: i64,
    ) -> io::Result<()> {
        if doomed.is_empty() {
            return Ok(());
        }
        {
            let mut segments = self.segments.write();
            for segment in doomed {
                segments.remove(&segment.base_offset());
            }
        }
        for segment in doomed {
            writer.pending_flush.retain(|s| !Arc::ptr_eq(s, segment));
            segment.mark_deleted()?;
            writer.pending_delete.push((due_ms, Arc::clone(segment)));
        }
        self.delete_due_segments_locked(writer, self.clock.now_ms())
    }

    fn delete_due_segments_locked(&self, writer: &mut Writer, now: i64) -> io::Result<()> {
        let mut result = Ok(());
        writer.pending_delete.retain(|(due, segment)| {
            if *due > now {
                return true;
            }
            if let Err(e) = segment.delete_files() {
                result = Err(e);
            }
            false
        });
        result
    }

    /// Deletes the files of removed segments whose delay has passed.
    pub fn delete_due_segments(&self) -> io::Result<()> {
        let mut writer = self.writer.lock();
        let now = self.clock.now_ms();
        self.delete_due_segments_locked(&mut writer, now)
    }

    /// Fsyncs everything appended so far and moves the recovery point to the
    /// log end offset.
    pub fn flush(&self) -> io::Result<()> {
        let mut writer = self.writer.lock();
        self.flush_locked(&mut writer)
    }

    fn flush_locked(&self, writer: &mut Writer) -> io::Result<()> {
        let log_end_offset = self.log_end_offset();
        self.flush_pending(writer)?;
        writer
            .active
            .sync_log()
            .inspect_err(|e| self.flush_failed(e))?;
        writer.last_flush_ms = self.clock.now_ms();
        self.recovery_point
            .fetch_max(log_end_offset, Ordering::AcqRel);
        Ok(())
    }

    /// Fsyncs the rolled segments and the directory. A segment leaves the
    /// pending list only once its fsync succeeded.
    fn flush_pending(&self, writer: &mut Writer) -> io::Result<()> {
        while let Some(segment) = writer.pending_flush.first() {
            segment.flush().inspect_err(|e| self.flush_failed(e))?;
            writer.pending_flush.remove(0);
        }
        if writer.dir_dirty {
            checkpoint::sync_dir(&self.dir).inspect_err(|e| self.flush_failed(e))?;
            writer.dir_dirty = false;
        }
        Ok(())
    }

    /// After a failed fsync the page cache may have dropped the data (Linux
    /// reports a writeback error once): as Kafka, stop using the log, and
    /// never move the recovery point past what was not synced.
    fn flush_failed(&self, e: &io::Error) {
        tracing::error!(log = %self.dir.display(), error = %e, "fsync failed; taking the log offline");
        self.offline.store(true, Ordering::Release);
    }

    /// The periodic duties a log manager runs: fsync rolled segments, fsync
    /// per `flush.ms`, delete removed segments whose delay has passed, forget
    /// producers idle for `producer.id.expiration.ms`.
    pub fn run_periodic(&self) -> io::Result<()> {
        let config = self.config();
        let mut writer = self.writer.lock();
        if self.is_offline() {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let flush_due = config.flush_ms.is_some_and(|ms| {
            now - writer.last_flush_ms >= ms && self.recovery_point() < self.log_end_offset()
        });
        if flush_due {
            self.flush_locked(&mut writer)?;
        } else if !writer.pending_flush.is_empty() {
            let new_recovery_point = writer.active.base_offset();
            self.flush_pending(&mut writer)?;
            self.recovery_point
                .fetch_max(new_recovery_point, Ordering::AcqRel);
        }
        let expired = writer
            .producers
            .remove_expired(now, config.producer_id_expiration_ms);
        if expired > 0 {
            tracing::debug!(log = %self.dir.display(), expired, "removed expired producers");
        }
        self.delete_due_segments_locked(&mut writer, now)
    }

    /// Clean close: seals the active segment's indexes, writes a producer
    /// state snapshot at the log end offset, fsyncs everything and deletes
    /// removed segments. The log takes no more writes.
    pub fn close(&self) -> io::Result<()> {
        let mut writer = self.writer.lock();
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if self.is_offline() {
            // Its files may be inconsistent: the next start must recover it,
            // so the caller must not vouch for a clean shutdown.
            return Err(io::Error::other("the log went offline after an I/O error"));
        }
        self.close_locked(&mut writer).inspect_err(|e| {
            tracing::error!(log = %self.dir.display(), error = %e, "closing the log failed");
            self.offline.store(true, Ordering::Release);
        })
    }

    fn close_locked(&self, writer: &mut Writer) -> io::Result<()> {
        writer.active.seal()?;
        // With a snapshot at the log end the next start reads no log. Not
        // needed when one is there already, nor for a log with nothing to
        // replay and nothing to remember. A failure only makes the next start
        // replay more, so it does not stop the close.
        let log_end_offset = self.log_end_offset();
        let nothing_to_rebuild = writer.producers.len() == 0
            && writer.producers.latest_snapshot_offset().is_none()
            && log_end_offset == self.log_start_offset();
        if writer.producers.latest_snapshot_offset() != Some(log_end_offset)
            && !nothing_to_rebuild
            && let Err(e) = writer.producers.take_snapshot(&self.dir, log_end_offset)
        {
            tracing::warn!(log = %self.dir.display(), log_end_offset, error = %e, "writing a producer state snapshot failed");
        }
        let active = Arc::clone(&writer.active);
        writer.pending_flush.push(active);
        self.flush_locked(writer)?;
        let pending = std::mem::take(&mut writer.pending_delete);
        for (_, segment) in pending {
            segment.delete_files()?;
        }
        self.release_files_locked(writer);
        Ok(())
    }

    /// Closes every cached handle of this log's files (they open again on
    /// demand while the log is in use). A deleted log calls it after its
    /// directory is renamed, so no read can open them again: the disk space
    /// of deleted files comes back only once their last handle is closed.
    pub fn release_files(&self) {
        let writer = self.writer.lock();
        self.release_files_locked(&writer);
    }

    fn release_files_locked(&self, writer: &Writer) {
        for segment in self.segments.read().values() {
            segment.release_files();
        }
        writer.active.release_files();
        for segment in &writer.pending_flush {
            segment.release_files();
        }
        for (_, segment) in &writer.pending_delete {
            segment.release_files();
        }
    }

    /// Rebuilds the producer state for the log as it is now (Kafka's
    /// `truncateAndReload` and `rebuildProducerState`): deletes the snapshots
    /// above the log end offset, loads the newest valid one at or below it and
    /// replays the batch headers after it, or from the log start offset when
    /// there is none. With `rebuild_txn_index_from`, the replay starts at or
    /// below that offset and writes the transaction index entries of the
    /// abort markers from there on (segments whose index recovery emptied).
    fn load_producer_state(
        &self,
        writer: &mut Writer,
        rebuild_txn_index_from: Option<i64>,
    ) -> Result<(), StorageError> {
        let result = self.replay_producer_state(writer, rebuild_txn_index_from);
        // Whatever the replay reached, readers see the state it left.
        self.publish_ongoing(writer);
        result
    }

    fn replay_producer_state(
        &self,
        writer: &mut Writer,
        rebuild_txn_index_from: Option<i64>,
    ) -> Result<(), StorageError> {
        let io = |e| StorageError::io(&*self.dir, e);
        let log_end_offset = self.log_end_offset();
        // Deleted durably: they describe batches that are gone, and once
        // appends pass their offsets again they would look valid.
        if writer
            .producers
            .delete_snapshots_above(&self.dir, log_end_offset)
            .map_err(io)?
        {
            checkpoint::sync_dir(&self.dir).map_err(io)?;
        }
        let snapshot = writer.producers.load_latest_snapshot(
            &self.dir,
            rebuild_txn_index_from.map_or(log_end_offset, |from| from.min(log_end_offset)),
            self.clock.now_ms(),
            self.config().producer_id_expiration_ms,
        );
        let from = snapshot.unwrap_or_else(|| self.log_start_offset());
        if from >= log_end_offset {
            return Ok(());
        }
        let producers = &mut writer.producers;
        let mut replayed = 0u64;
        let mut rebuilt: Vec<AbortedTxn> = Vec::new();
        self.for_each_batch_from(from, |_, header, bytes| {
            if header.last_offset() >= from
                && header.base_offset < log_end_offset
                && let Some(batch) =
                    ProducerBatch::of(header, bytes, header.base_offset, header.max_timestamp)
            {
                if let Some(txn) = producers.replay(&batch)
                    && txn.aborted
                    && rebuild_txn_index_from.is_some_and(|start| txn.last_offset >= start)
                {
                    // The last stable offset after it: the oldest transaction
                    // still open at this point of the replay.
                    rebuilt.push(AbortedTxn {
                        producer_id: txn.producer_id,
                        first_offset: txn.first_offset,
                        last_offset: txn.last_offset,
                        last_stable_offset: producers
                            .first_ongoing_offset()
                            .filter(|first| *first < txn.last_offset)
                            .unwrap_or(txn.last_offset + 1),
                    });
                }
                replayed += 1;
            }
        })?;
        for entry in &rebuilt {
            let Some(segment) = self.floor_segment(entry.last_offset) else {
                continue;
            };
            segment
                .append_aborted_txn(entry)
                .map_err(|e| StorageError::io(segment.path(FileKind::TxnIndex), e))?;
        }
        if !rebuilt.is_empty() {
            tracing::info!(log = %self.dir.display(), entries = rebuilt.len(), "rebuilt aborted-transaction index entries");
        }
        tracing::debug!(
            log = %self.dir.display(),
            snapshot = ?snapshot,
            from,
            to = log_end_offset,
            replayed,
            producers = producers.len(),
            "rebuilt producer state"
        );
        Ok(())
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

/// The segments one retention pass looks at, and what bounds it.
struct RetentionBounds {
    segments: Vec<Arc<Segment>>,
    high_watermark: i64,
    log_end_offset: i64,
}

impl RetentionBounds {
    /// Kafka's `LocalLog.deletableSegments` from segment `first` on: the
    /// index after the last segment that may go, walking while `predicate`
    /// holds, the high watermark is at or past the segment's end, and the
    /// segment is not an empty active segment.
    fn deletable_from(
        &self,
        first: usize,
        mut predicate: impl FnMut(usize) -> Result<bool, StorageError>,
    ) -> Result<usize, StorageError> {
        let mut i = first;
        while let Some(segment) = self.segments.get(i) {
            let next = self.segments.get(i + 1);
            let upper_bound = next.map_or(self.log_end_offset, |s| s.base_offset());
            let last_and_empty = next.is_none() && segment.size() == 0;
            if last_and_empty || self.high_watermark < upper_bound || !predicate(i)? {
                break;
            }
            i += 1;
        }
        Ok(i)
    }
}

/// Splits `records` into batches and checks each, in Kafka's order: length,
/// magic, size against `max.message.bytes`, CRC32C, then (for `origin`) the
/// rules for client and coordinator batches. `None` origin: replication.
fn validate_batches<'a>(
    records: &'a [u8],
    config: &LogConfig,
    origin: Option<AppendOrigin>,
) -> Result<Vec<(BatchHeader, &'a [u8])>, AppendError> {
    let mut out = Vec::new();
    for batch in record_batch::batches(records) {
        let batch = batch.map_err(AppendError::Corrupt)?;
        let header = batch.header;
        if header.magic != MAGIC_V2 {
            return Err(AppendError::UnsupportedMagic(header.magic));
        }
        if batch.bytes.len() > config.max_message_bytes as usize {
            return Err(AppendError::MessageTooLarge {
                size: batch.bytes.len(),
                max: config.max_message_bytes,
            });
        }
        match record_batch::validate_batch(batch.bytes) {
            Ok(_) => {}
            Err(BatchError::UnsupportedMagic(m)) => return Err(AppendError::UnsupportedMagic(m)),
            Err(e) => return Err(AppendError::Corrupt(e)),
        }
        if let Some(origin) = origin {
            // Kafka's LogValidator rules for batches that are not replicated.
            if origin == AppendOrigin::Client && header.base_offset != 0 {
                return Err(AppendError::InvalidRecord(
                    "the base offset of a produced batch must be 0",
                ));
            }
            if header.record_count <= 0 {
                return Err(AppendError::InvalidRecord(
                    "a produced batch must hold records",
                ));
            }
            if i64::from(header.last_offset_delta) + 1 != i64::from(header.record_count) {
                return Err(AppendError::InvalidRecord(
                    "batch offset range and record count disagree",
                ));
            }
            if origin == AppendOrigin::Client && header.is_control() {
                return Err(AppendError::InvalidRecord(
                    "clients may not write control batches",
                ));
            }
        }
        out.push((header, batch.bytes));
        if out.len() > MAX_BATCHES_PER_APPEND {
            return Err(AppendError::InvalidRecord("too many batches in one append"));
        }
    }
    if out.is_empty() {
        return Err(AppendError::Empty);
    }
    Ok(out)
}

/// The first record of a batch at or above `log_start`, below `end_offset`,
/// whose timestamp satisfies `wanted`.
fn first_record_at_or_after(
    header: &BatchHeader,
    bytes: &[u8],
    log_start: i64,
    end_offset: i64,
    wanted: impl Fn(i64) -> bool,
) -> io::Result<Option<TimestampOffset>> {
    let batch = Bytes::copy_from_slice(bytes);
    let invalid =
        |e: record::RecordError| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    // Records one by one: the search stops at the first match.
    for r in record::records(&batch, MAX_DECOMPRESSED_BATCH_BYTES).map_err(invalid)? {
        let r = r.map_err(invalid)?;
        // Stored values came from producers: saturate, never overflow.
        let offset = header.base_offset.saturating_add(i64::from(r.offset_delta));
        let timestamp = if header.timestamp_type() == TimestampType::LogAppendTime {
            header.max_timestamp
        } else {
            header.base_timestamp.saturating_add(r.timestamp_delta)
        };
        if offset >= log_start && offset < end_offset && wanted(timestamp) {
            return Ok(Some(TimestampOffset { timestamp, offset }));
        }
    }
    Ok(None)
}

/// Segments as `(base offset, log size)`, and producer state snapshot offsets.
type Listing = (Vec<(i64, u64)>, Vec<i64>);

/// The base offset and the kind of a segment file name `<20 digits>.<kind>`.
fn parse_segment_name(name: &str) -> Option<(i64, &str)> {
    let (stem, kind) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, kind))
}

/// Lists the segments in `dir` and the producer state snapshots, cleaning up
/// what an interrupted operation left: `*.deleted`, temporary and
/// `*.cleaned` files go, an interrupted cleaner swap is completed (see
/// [`complete_swap`]), index files without a log go.
fn list_segments(dir: &Path) -> Result<Listing, StorageError> {
    let io = |e| StorageError::io(dir, e);
    let mut logs = Vec::new();
    let mut snapshots = Vec::new();
    let mut indexes = Vec::new();
    let mut swaps = Vec::new();
    let mut txn_swaps = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        if name.ends_with(DELETED_SUFFIX)
            || name.ends_with(".tmp")
            || name.ends_with(CLEANED_SUFFIX)
        {
            fs::remove_file(&path).map_err(io)?;
            continue;
        }
        if let Some(unswapped) = name.strip_suffix(SWAP_SUFFIX) {
            match parse_segment_name(unswapped) {
                Some((base, "log")) => swaps.push(base),
                // Index files of a swap are rebuilt from its log, never trusted.
                Some((_, "index" | "timeindex")) => fs::remove_file(&path).map_err(io)?,
                // The transaction index cannot be rebuilt from the segment
                // alone: `complete_swap` puts it in place.
                Some((base, "txnindex")) => txn_swaps.push((base, path)),
                _ => {}
            }
            continue;
        }
        let Some((base, kind)) = parse_segment_name(name) else {
            continue;
        };
        match kind {
            "log" => logs.push((base, entry.metadata().map_err(io)?.len())),
            "index" | "timeindex" | "txnindex" => indexes.push((base, path)),
            "snapshot" => snapshots.push(base),
            _ => {}
        }
    }
    swaps.sort_unstable();
    for base in &swaps {
        complete_swap(dir, *base, &mut logs)?;
    }
    // A transaction index staged for a swap that never reached its commit
    // point.
    for (base, path) in txn_swaps {
        if swaps.binary_search(&base).is_err() {
            fs::remove_file(&path).map_err(io)?;
        }
    }
    logs.sort_unstable();
    for (base, path) in indexes {
        if logs.binary_search_by_key(&base, |(b, _)| *b).is_err() {
            tracing::warn!(path = %path.display(), "removing an index file without a log");
            match fs::remove_file(&path) {
                // Removed already, with the segments a swap replaced.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                other => other.map_err(io)?,
            }
        }
    }
    debug_assert!(logs.iter().all(|(b, _)| *b >= 0));
    Ok((logs, snapshots))
}

/// Finishes a cleaner swap that a crash interrupted, as Kafka's `LogLoader`
/// does: `<base>.log.swap` is a complete cleaned segment (it was fsynced
/// before it got that name), holding the records it kept of the segments
/// whose base offsets lie in `[base, its next offset)`. Those segments go,
/// whatever step the swap had reached, and the swap becomes `<base>.log`.
/// Its indexes are rebuilt from it when first used.
fn complete_swap(dir: &Path, base: i64, logs: &mut Vec<(i64, u64)>) -> Result<(), StorageError> {
    let io = |e| StorageError::io(dir, e);
    let swap = staged_path(dir, base, LOG_SUFFIX, SWAP_SUFFIX);
    let (valid_bytes, next_offset) = scan_swap(&swap).map_err(|e| StorageError::io(&swap, e))?;
    let replaced: Vec<i64> = logs
        .iter()
        .map(|(b, _)| *b)
        .filter(|b| *b == base || (*b > base && *b < next_offset))
        .collect();
    for old in &replaced {
        for suffix in [
            LOG_SUFFIX,
            INDEX_SUFFIX,
            TIME_INDEX_SUFFIX,
            TXN_INDEX_SUFFIX,
        ] {
            // At the swap's own base offset, a final `.txnindex` without a
            // `.txnindex.swap` is the cleaned one: the swap renames the old
            // one away before it gives the new one its final name.
            if suffix == TXN_INDEX_SUFFIX
                && *old == base
                && !staged_path(dir, base, suffix, SWAP_SUFFIX).exists()
            {
                continue;
            }
            match fs::remove_file(staged_path(dir, *old, suffix, "")) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io(e)),
                _ => {}
            }
        }
    }
    match fs::rename(
        staged_path(dir, base, TXN_INDEX_SUFFIX, SWAP_SUFFIX),
        staged_path(dir, base, TXN_INDEX_SUFFIX, ""),
    ) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io(e)),
        _ => {}
    }
    logs.retain(|(b, _)| !replaced.contains(b));
    let log = staged_path(dir, base, LOG_SUFFIX, "");
    fs::rename(&swap, &log).map_err(io)?;
    logs.push((base, valid_bytes));
    checkpoint::sync_dir(dir).map_err(io)?;
    tracing::warn!(
        log = %dir.display(),
        segment = base,
        next_offset,
        replaced = ?replaced,
        "completed a cleaner swap interrupted by a crash"
    );
    Ok(())
}

/// The valid bytes of a `.swap` log and the offset after its last batch
/// (`base` when it holds none). Bytes after the first invalid batch are cut
/// off, as recovery does (they cannot be there: the file was fsynced whole).
fn scan_swap(path: &Path) -> io::Result<(u64, i64)> {
    let file = File::options().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    let base = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_segment_name)
        .map_or(0, |(b, _)| b);
    let mut scanner = BatchScanner::new(&file, 0, len);
    let mut next_offset = base;
    let mut valid_bytes = 0;
    loop {
        match scanner.next_batch()? {
            Scanned::Batch {
                position,
                header,
                bytes,
            } if record_batch::validate_batch(bytes).is_ok()
                && header.base_offset >= next_offset =>
            {
                next_offset = header.next_offset();
                valid_bytes = position + bytes.len() as u64;
            }
            Scanned::End => break,
            _ => {
                tracing::warn!(path = %path.display(), valid_bytes, "cutting a swap file at its first invalid batch");
                file.set_len(valid_bytes)?;
                file.sync_all()?;
                break;
            }
        }
    }
    Ok((valid_bytes, next_offset))
}

/// After a clean shutdown the marker vouches for the files, but not beyond
/// what the indexes show: an active segment whose file holds bytes after its
/// last valid batch (a torn append the marker did not know about) is
/// recovered, so that appends never land after garbage (they go to the end
/// of the file, O_APPEND). Returns the base offset of the active segment when
/// it was recovered (its transaction index is then to be rebuilt).
fn check_active_segment(
    dir: &Path,
    config: &LogConfig,
    active: &Segment,
    epochs: &LeaderEpochCache,
) -> Result<Option<i64>, StorageError> {
    let io = |e| StorageError::io(active.path(FileKind::Log), e);
    // Loading checks the indexes and, if they are wrong, rebuilds them and
    // shrinks the readable size to the valid batches.
    active.next_offset().map_err(io)?;
    let file_len = active
        .file(FileKind::Log)
        .and_then(|f| f.metadata())
        .map_err(io)?
        .len();
    if file_len == active.size() {
        return Ok(None);
    }
    tracing::warn!(
        log = %dir.display(),
        valid_bytes = active.size(),
        file_bytes = file_len,
        "active segment holds more than its valid batches; recovering it"
    );
    let rules = ScanRules {
        verify: true,
        contiguous: !config.compact,
        epochs: epochs.is_trusted().then_some(epochs),
        index_interval_bytes: u64::from(config.index_interval_bytes),
    };
    active.recover(&rules).map_err(io)?;
    active
        .truncate_txn_index(active.base_offset())
        .map_err(io)?;
    active.flush().map_err(io)?;
    Ok(Some(active.base_offset()))
}

/// Rebuilds a missing or unreadable leader epoch cache from the batch headers
/// of every segment (each epoch starts at its first batch).
fn rebuild_epochs(
    dir: &Path,
    segments: &BTreeMap<i64, Arc<Segment>>,
    epochs: &mut LeaderEpochCache,
) -> Result<(), StorageError> {
    let io = |e| StorageError::io(dir, e);
    for segment in segments.values() {
        let log = segment.file(FileKind::Log).map_err(io)?;
        let mut scanner = BatchScanner::new(&log, 0, segment.size());
        while let Scanned::Batch { header, .. } = scanner.next_batch().map_err(io)? {
            epochs
                .assign(header.partition_leader_epoch, header.base_offset)
                .map_err(io)?;
        }
    }
    tracing::info!(log = %dir.display(), epochs = epochs.entries().len(), "rebuilt the leader epoch cache from the log");
    epochs.mark_trusted().map_err(io)
}

/// Recovery after an unclean shutdown (see [`PartitionLog::open`]). Returns
/// the base offset of the first recovered segment: the transaction indexes
/// of the recovered segments are emptied, to be rebuilt from the log.
fn recover(
    dir: &Path,
    config: &LogConfig,
    segments: &mut BTreeMap<i64, Arc<Segment>>,
    epochs: &mut LeaderEpochCache,
    recovery_point: i64,
) -> Result<Option<i64>, StorageError> {
    let start = segments
        .range(..=recovery_point)
        .next_back()
        .map_or(i64::MIN, |(base, _)| *base);
    let to_recover: Vec<Arc<Segment>> = segments
        .range(start..)
        .map(|(_, s)| Arc::clone(s))
        .collect();
    let trusted = epochs.is_trusted();
    let mut truncated_at: Option<i64> = None;
    for segment in to_recover {
        if let Some(base) = truncated_at {
            // Everything after a truncation point is unreachable: Kafka drops it.
            tracing::warn!(log = %dir.display(), segment = segment.base_offset(), after = base, "deleting segment after truncated data");
            segments.remove(&segment.base_offset());
            segment
                .mark_deleted()
                .and_then(|()| segment.delete_files())
                .map_err(|e| StorageError::io(dir, e))?;
            continue;
        }
        let rules = ScanRules {
            verify: true,
            contiguous: !config.compact,
            epochs: trusted.then_some(&*epochs),
            index_interval_bytes: u64::from(config.index_interval_bytes),
        };
        let outcome = segment
            .recover(&rules)
            .map_err(|e| StorageError::io(segment.path(FileKind::Log), e))?;
        segment
            .truncate_txn_index(segment.base_offset())
            .map_err(|e| StorageError::io(segment.path(FileKind::TxnIndex), e))?;
        if outcome.invalid_bytes > 0 {
            tracing::warn!(
                log = %dir.display(),
                segment = segment.base_offset(),
                valid_bytes = outcome.valid_bytes,
                truncated_bytes = outcome.invalid_bytes,
                reason = outcome.invalid_reason.as_deref().unwrap_or(""),
                "recovery truncated the log at the first invalid batch"
            );
            truncated_at = Some(segment.base_offset());
        }
        segment
            .flush()
            .map_err(|e| StorageError::io(segment.path(FileKind::Log), e))?;
    }
    // An untrusted epoch cache is rebuilt by the caller from every segment,
    // not only the recovered ones.
    // A segment left empty by truncation, other than the last, is dropped.
    let empties: Vec<i64> = segments
        .iter()
        .rev()
        .skip(1)
        .filter(|(_, s)| s.size() == 0)
        .map(|(b, _)| *b)
        .collect();
    for base in empties {
        if let Some(segment) = segments.remove(&base) {
            segment
                .mark_deleted()
                .and_then(|()| segment.delete_files())
                .map_err(|e| StorageError::io(dir, e))?;
        }
    }
    checkpoint::sync_dir(dir).map_err(|e| StorageError::io(dir, e))?;
    Ok(segments.range(start..).next().map(|(base, _)| *base))
}

#[cfg(test)]
mod tests;
