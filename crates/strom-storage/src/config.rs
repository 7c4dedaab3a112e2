//! Per-log settings, named and defaulted as Kafka's topic configs.

use strom_protocol::record_batch::TimestampType;

/// Settings of one partition log. Field names are Kafka's config names with
/// dots as underscores; defaults are Kafka's.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// `segment.bytes`: roll to a new segment before the active one would grow
    /// past this. Positions in the index are 32-bit, so at most `i32::MAX`.
    pub segment_bytes: u32,
    /// `segment.ms`: roll when the active segment's records span this long.
    pub segment_ms: i64,
    /// `segment.jitter.ms`: subtracted from `segment_ms` (Kafka randomises it per
    /// segment to avoid rolling every partition at once; we take it as given).
    pub segment_jitter_ms: i64,
    /// `segment.index.bytes`: roll when either index of the active segment would
    /// grow past this.
    pub segment_index_bytes: u32,
    /// `index.interval.bytes`: bytes of log between two index entries.
    pub index_interval_bytes: u32,
    /// `max.message.bytes`: the largest record batch accepted, header included.
    pub max_message_bytes: u32,
    /// `flush.messages`: fsync after this many records; `None` leaves it to the OS.
    pub flush_messages: Option<u64>,
    /// `flush.ms`: fsync when data has waited this long; `None` leaves it to the OS.
    pub flush_ms: Option<i64>,
    /// `message.timestamp.type`.
    pub message_timestamp_type: TimestampType,
    /// `cleanup.policy` contains `compact`: batches may leave offset gaps, and
    /// the log cleaner keeps the latest record of each key.
    pub compact: bool,
    /// `cleanup.policy` contains `delete`: segments past `retention_ms` or
    /// `retention_bytes` are deleted.
    pub delete: bool,
    /// `retention.ms`: a segment whose newest record is older than this goes;
    /// negative means no time limit.
    pub retention_ms: i64,
    /// `retention.bytes`: the most a partition keeps, deleting oldest
    /// segments first; negative means no size limit.
    pub retention_bytes: i64,
    /// `delete.retention.ms`: how long a tombstone (a null value) stays in a
    /// compacted log once cleaned, so slow consumers still see the delete.
    pub delete_retention_ms: i64,
    /// `min.compaction.lag.ms`: records younger than this are never compacted.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`: a record older than this makes its log
    /// eligible for cleaning whatever the dirty ratio.
    pub max_compaction_lag_ms: i64,
    /// `min.cleanable.dirty.ratio`: clean a log only when this share of it (by
    /// bytes) has not been cleaned yet.
    pub min_cleanable_dirty_ratio: f64,
    /// `file.delete.delay.ms`: how long a deleted segment stays as `*.deleted`.
    pub file_delete_delay_ms: i64,
    /// `producer.id.expiration.ms` (a broker setting in Kafka, carried per log
    /// here): a producer whose last batch's timestamp is this much older than
    /// now, and that has no open transaction, is forgotten.
    pub producer_id_expiration_ms: i64,
}

/// Kafka's `segment.bytes` default: 1 GiB.
pub const DEFAULT_SEGMENT_BYTES: u32 = 1 << 30;
/// Kafka's `segment.ms` default: 7 days.
pub const DEFAULT_SEGMENT_MS: i64 = 7 * 24 * 60 * 60 * 1000;
/// Kafka's `segment.index.bytes` default: 10 MiB.
pub const DEFAULT_SEGMENT_INDEX_BYTES: u32 = 10 * 1024 * 1024;
/// Kafka's `index.interval.bytes` default.
pub const DEFAULT_INDEX_INTERVAL_BYTES: u32 = 4096;
/// Kafka's `max.message.bytes` default: 1 MiB plus the 12-byte log overhead.
pub const DEFAULT_MAX_MESSAGE_BYTES: u32 = 1_048_588;
/// Kafka's `file.delete.delay.ms` default.
pub const DEFAULT_FILE_DELETE_DELAY_MS: i64 = 60_000;
/// Kafka's `retention.ms` default: 7 days.
pub const DEFAULT_RETENTION_MS: i64 = 7 * 24 * 60 * 60 * 1000;
/// Kafka's `delete.retention.ms` default: 1 day.
pub const DEFAULT_DELETE_RETENTION_MS: i64 = 24 * 60 * 60 * 1000;
/// Kafka's `min.cleanable.dirty.ratio` default.
pub const DEFAULT_MIN_CLEANABLE_DIRTY_RATIO: f64 = 0.5;
/// Kafka's `producer.id.expiration.ms` default: 1 day.
pub const DEFAULT_PRODUCER_ID_EXPIRATION_MS: i64 = 24 * 60 * 60 * 1000;

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            segment_ms: DEFAULT_SEGMENT_MS,
            segment_jitter_ms: 0,
            segment_index_bytes: DEFAULT_SEGMENT_INDEX_BYTES,
            index_interval_bytes: DEFAULT_INDEX_INTERVAL_BYTES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            flush_messages: None,
            flush_ms: None,
            message_timestamp_type: TimestampType::CreateTime,
            compact: false,
            delete: true,
            retention_ms: DEFAULT_RETENTION_MS,
            retention_bytes: -1,
            delete_retention_ms: DEFAULT_DELETE_RETENTION_MS,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            min_cleanable_dirty_ratio: DEFAULT_MIN_CLEANABLE_DIRTY_RATIO,
            file_delete_delay_ms: DEFAULT_FILE_DELETE_DELAY_MS,
            producer_id_expiration_ms: DEFAULT_PRODUCER_ID_EXPIRATION_MS,
        }
    }
}

impl LogConfig {
    /// `segment_bytes` as the storage engine uses it: never above `i32::MAX`
    /// (32-bit index positions) and never below one minimal batch.
    pub(crate) fn effective_segment_bytes(&self) -> u64 {
        let min = strom_protocol::record_batch::RECORD_BATCH_OVERHEAD as u64;
        u64::from(self.segment_bytes).clamp(min, i32::MAX as u64)
    }
}
