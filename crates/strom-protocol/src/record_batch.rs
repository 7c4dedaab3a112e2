//! The v2 record batch (magic 2) header: a zero-copy view, validation and the
//! in-place rewrites a broker makes.
//!
//! Layout, as Kafka's `DefaultRecordBatch` (all integers big-endian):
//!
//! ```text
//! baseOffset: i64            ─┐ outside the CRC: a broker assigns offsets and
//! batchLength: i32            │ the leader epoch in place without touching the
//! partitionLeaderEpoch: i32  ─┘ records
//! magic: i8                  (2)
//! crc: u32                   CRC32C over everything from attributes to the end
//! attributes: i16            compression, timestamp type, transactional, control
//! lastOffsetDelta: i32
//! baseTimestamp: i64
//! maxTimestamp: i64
//! producerId: i64
//! producerEpoch: i16
//! baseSequence: i32
//! recordCount: i32           then the records themselves (maybe compressed)
//! ```
//!
//! `batchLength` counts the bytes after the length field, so a stored batch
//! takes `LOG_OVERHEAD + batchLength` bytes.

use std::mem::size_of;

use crate::compression::Compression;

pub const BASE_OFFSET_OFFSET: usize = 0;
pub const LENGTH_OFFSET: usize = BASE_OFFSET_OFFSET + size_of::<i64>();
/// Bytes in front of what `batchLength` counts: base offset and the length itself.
/// Kafka calls this `LOG_OVERHEAD`; it is also the prefix every log entry has.
pub const LOG_OVERHEAD: usize = LENGTH_OFFSET + size_of::<i32>();
pub const PARTITION_LEADER_EPOCH_OFFSET: usize = LOG_OVERHEAD;
pub const MAGIC_OFFSET: usize = PARTITION_LEADER_EPOCH_OFFSET + size_of::<i32>();
pub const CRC_OFFSET: usize = MAGIC_OFFSET + size_of::<i8>();
pub const ATTRIBUTES_OFFSET: usize = CRC_OFFSET + size_of::<u32>();
pub const LAST_OFFSET_DELTA_OFFSET: usize = ATTRIBUTES_OFFSET + size_of::<i16>();
pub const BASE_TIMESTAMP_OFFSET: usize = LAST_OFFSET_DELTA_OFFSET + size_of::<i32>();
pub const MAX_TIMESTAMP_OFFSET: usize = BASE_TIMESTAMP_OFFSET + size_of::<i64>();
pub const PRODUCER_ID_OFFSET: usize = MAX_TIMESTAMP_OFFSET + size_of::<i64>();
pub const PRODUCER_EPOCH_OFFSET: usize = PRODUCER_ID_OFFSET + size_of::<i64>();
pub const BASE_SEQUENCE_OFFSET: usize = PRODUCER_EPOCH_OFFSET + size_of::<i16>();
pub const RECORDS_COUNT_OFFSET: usize = BASE_SEQUENCE_OFFSET + size_of::<i32>();
/// Size of the whole header; the first record starts here.
pub const RECORD_BATCH_OVERHEAD: usize = RECORDS_COUNT_OFFSET + size_of::<i32>();
const _: () = assert!(
    RECORD_BATCH_OVERHEAD == 61,
    "the v2 batch header is 61 bytes"
);

/// Smallest legal value of the `batchLength` field: a header with no records.
#[allow(clippy::cast_possible_truncation, reason = "49 fits")]
pub const MIN_BATCH_LENGTH: i32 = (RECORD_BATCH_OVERHEAD - LOG_OVERHEAD) as i32;

pub const MAGIC_V2: i8 = 2;
pub const NO_PARTITION_LEADER_EPOCH: i32 = -1;
pub const NO_PRODUCER_ID: i64 = -1;
pub const NO_PRODUCER_EPOCH: i16 = -1;
pub const NO_SEQUENCE: i32 = -1;
pub const NO_TIMESTAMP: i64 = -1;

const COMPRESSION_CODEC_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_MASK: i16 = 0x08;
const TRANSACTIONAL_FLAG_MASK: i16 = 0x10;
const CONTROL_FLAG_MASK: i16 = 0x20;
const DELETE_HORIZON_FLAG_MASK: i16 = 0x40;

/// Which clock a batch's timestamps come from (attribute bit 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimestampType {
    /// Set by the producer.
    CreateTime,
    /// Set by the broker when it appended the batch: `maxTimestamp` holds it and
    /// applies to every record of the batch.
    LogAppendTime,
}

/// The batch attributes field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Attributes(pub i16);

impl Attributes {
    /// The codec id in bits 0-2; [`Compression::from_id`] names it.
    pub fn compression_id(self) -> u8 {
        (self.0 & COMPRESSION_CODEC_MASK) as u8
    }

    /// The codec, or `None` for an id Kafka does not define (5..=7).
    pub fn compression(self) -> Option<Compression> {
        Compression::from_id(self.compression_id())
    }

    pub fn timestamp_type(self) -> TimestampType {
        if self.0 & TIMESTAMP_TYPE_MASK != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    pub fn is_transactional(self) -> bool {
        self.0 & TRANSACTIONAL_FLAG_MASK != 0
    }

    pub fn is_control(self) -> bool {
        self.0 & CONTROL_FLAG_MASK != 0
    }

    /// KIP-534: the base timestamp holds the delete horizon of a cleaned batch.
    pub fn has_delete_horizon(self) -> bool {
        self.0 & DELETE_HORIZON_FLAG_MASK != 0
    }

    #[must_use]
    pub fn with_compression(self, compression: Compression) -> Self {
        Self((self.0 & !COMPRESSION_CODEC_MASK) | i16::from(compression.id()))
    }

    #[must_use]
    pub fn with_timestamp_type(self, timestamp_type: TimestampType) -> Self {
        match timestamp_type {
            TimestampType::CreateTime => Self(self.0 & !TIMESTAMP_TYPE_MASK),
            TimestampType::LogAppendTime => Self(self.0 | TIMESTAMP_TYPE_MASK),
        }
    }

    #[must_use]
    pub fn with_transactional(self, on: bool) -> Self {
        Self::with_flag(self, TRANSACTIONAL_FLAG_MASK, on)
    }

    #[must_use]
    pub fn with_control(self, on: bool) -> Self {
        Self::with_flag(self, CONTROL_FLAG_MASK, on)
    }

    #[must_use]
    pub fn with_delete_horizon(self, on: bool) -> Self {
        Self::with_flag(self, DELETE_HORIZON_FLAG_MASK, on)
    }

    fn with_flag(self, mask: i16, on: bool) -> Self {
        if on {
            Self(self.0 | mask)
        } else {
            Self(self.0 & !mask)
        }
    }
}

/// Why bytes are not a valid v2 record batch.
///
/// Small and `Copy` so that the hot path never allocates to report one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// Fewer bytes than the header or the stated length needs.
    #[error("record batch truncated: needs {needed} bytes, {available} available")]
    Truncated { needed: usize, available: usize },
    /// The `batchLength` field is below the header size or beyond what we accept.
    #[error("record batch length field {0} is out of range")]
    InvalidLength(i32),
    /// The batch is valid in size but not magic 2.
    #[error("record batch magic {0} is not supported (only magic 2)")]
    UnsupportedMagic(i8),
    /// The stored CRC32C does not match the bytes it covers.
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    /// `lastOffsetDelta` or `recordCount` is negative, or the codec id is undefined.
    #[error("record batch header is inconsistent: {0}")]
    InvalidHeader(&'static str),
}

/// The decoded 61-byte header of a v2 record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: Attributes,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Reads the header fields from the first 61 bytes of `buf`. Checks nothing
    /// beyond the length of `buf`: see [`validate_batch`] for that.
    pub fn parse(buf: &[u8]) -> Result<Self, BatchError> {
        let Some(h) = buf.get(..RECORD_BATCH_OVERHEAD) else {
            return Err(BatchError::Truncated {
                needed: RECORD_BATCH_OVERHEAD,
                available: buf.len(),
            });
        };
        Ok(Self {
            base_offset: read_i64(h, BASE_OFFSET_OFFSET),
            batch_length: read_i32(h, LENGTH_OFFSET),
            partition_leader_epoch: read_i32(h, PARTITION_LEADER_EPOCH_OFFSET),
            magic: h[MAGIC_OFFSET] as i8,
            crc: read_i32(h, CRC_OFFSET) as u32,
            attributes: Attributes(read_i16(h, ATTRIBUTES_OFFSET)),
            last_offset_delta: read_i32(h, LAST_OFFSET_DELTA_OFFSET),
            base_timestamp: read_i64(h, BASE_TIMESTAMP_OFFSET),
            max_timestamp: read_i64(h, MAX_TIMESTAMP_OFFSET),
            producer_id: read_i64(h, PRODUCER_ID_OFFSET),
            producer_epoch: read_i16(h, PRODUCER_EPOCH_OFFSET),
            base_sequence: read_i32(h, BASE_SEQUENCE_OFFSET),
            record_count: read_i32(h, RECORDS_COUNT_OFFSET),
        })
    }

    /// Writes all header fields, the stored `crc` included, into `buf[..61]`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`RECORD_BATCH_OVERHEAD`].
    pub fn write_to(&self, buf: &mut [u8]) {
        assert!(
            buf.len() >= RECORD_BATCH_OVERHEAD,
            "header buffer too short"
        );
        buf[BASE_OFFSET_OFFSET..LENGTH_OFFSET].copy_from_slice(&self.base_offset.to_be_bytes());
        buf[LENGTH_OFFSET..LOG_OVERHEAD].copy_from_slice(&self.batch_length.to_be_bytes());
        buf[PARTITION_LEADER_EPOCH_OFFSET..MAGIC_OFFSET]
            .copy_from_slice(&self.partition_leader_epoch.to_be_bytes());
        buf[MAGIC_OFFSET] = self.magic as u8;
        buf[CRC_OFFSET..ATTRIBUTES_OFFSET].copy_from_slice(&self.crc.to_be_bytes());
        buf[ATTRIBUTES_OFFSET..LAST_OFFSET_DELTA_OFFSET]
            .copy_from_slice(&self.attributes.0.to_be_bytes());
        buf[LAST_OFFSET_DELTA_OFFSET..BASE_TIMESTAMP_OFFSET]
            .copy_from_slice(&self.last_offset_delta.to_be_bytes());
        buf[BASE_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET]
            .copy_from_slice(&self.base_timestamp.to_be_bytes());
        buf[MAX_TIMESTAMP_OFFSET..PRODUCER_ID_OFFSET]
            .copy_from_slice(&self.max_timestamp.to_be_bytes());
        buf[PRODUCER_ID_OFFSET..PRODUCER_EPOCH_OFFSET]
            .copy_from_slice(&self.producer_id.to_be_bytes());
        buf[PRODUCER_EPOCH_OFFSET..BASE_SEQUENCE_OFFSET]
            .copy_from_slice(&self.producer_epoch.to_be_bytes());
        buf[BASE_SEQUENCE_OFFSET..RECORDS_COUNT_OFFSET]
            .copy_from_slice(&self.base_sequence.to_be_bytes());
        buf[RECORDS_COUNT_OFFSET..RECORD_BATCH_OVERHEAD]
            .copy_from_slice(&self.record_count.to_be_bytes());
    }

    /// Bytes the whole batch takes, header included. Only meaningful once the
    /// length field has been checked (it is by [`validate_batch`] and [`batches`]).
    pub fn total_size(&self) -> usize {
        LOG_OVERHEAD + usize::try_from(self.batch_length).unwrap_or(0)
    }

    /// Offset of the last record (compaction may have removed it, the delta
    /// stays). Saturates rather than overflowing on hostile headers; callers
    /// that accept batches refuse ranges that do not fit (see
    /// [`BatchHeader::checked_last_offset`]).
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }

    /// The offset after this batch: where the next batch starts (saturating).
    pub fn next_offset(&self) -> i64 {
        self.last_offset().saturating_add(1)
    }

    /// The last offset, or `None` when the batch's offsets do not fit in an
    /// `i64` with room for the offset after it.
    pub fn checked_last_offset(&self) -> Option<i64> {
        let last = self
            .base_offset
            .checked_add(i64::from(self.last_offset_delta))?;
        last.checked_add(1).map(|_| last)
    }

    pub fn compression(&self) -> Option<Compression> {
        self.attributes.compression()
    }

    pub fn timestamp_type(&self) -> TimestampType {
        self.attributes.timestamp_type()
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes.is_transactional()
    }

    pub fn is_control(&self) -> bool {
        self.attributes.is_control()
    }

    /// Whether the batch came from an idempotent or transactional producer.
    pub fn has_producer_id(&self) -> bool {
        self.producer_id >= 0
    }

    /// Sequence of the last record, wrapping past `i32::MAX` as Kafka does.
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence == NO_SEQUENCE {
            NO_SEQUENCE
        } else {
            // Kafka: sequences wrap to 0 after Int.MaxValue.
            let last = i64::from(self.base_sequence) + i64::from(self.last_offset_delta);
            i32::try_from(last % (i64::from(i32::MAX) + 1)).unwrap_or(NO_SEQUENCE)
        }
    }
}

/// Reads only the base offset and the total size of the batch at the start of
/// `buf`, which needs [`LOG_OVERHEAD`] bytes. This is all a log scan needs to
/// step from batch to batch.
///
/// Returns `None` when `buf` is too short; the size is not range-checked.
pub fn peek_offset_and_size(buf: &[u8]) -> Option<(i64, i64)> {
    let prefix = buf.get(..LOG_OVERHEAD)?;
    let base_offset = read_i64(prefix, BASE_OFFSET_OFFSET);
    let batch_length = read_i32(prefix, LENGTH_OFFSET);
    Some((base_offset, LOG_OVERHEAD as i64 + i64::from(batch_length)))
}

/// Checks the length field of the batch at the start of `buf` against
/// `max_batch_size` (whole batch, header included) and the header size, and
/// returns the batch's total size. Does not need the whole batch in `buf`.
pub fn checked_batch_size(
    header: &BatchHeader,
    max_batch_size: usize,
) -> Result<usize, BatchError> {
    let length = header.batch_length;
    if length < MIN_BATCH_LENGTH {
        return Err(BatchError::InvalidLength(length));
    }
    let total =
        LOG_OVERHEAD + usize::try_from(length).map_err(|_| BatchError::InvalidLength(length))?;
    if total > max_batch_size {
        return Err(BatchError::InvalidLength(length));
    }
    Ok(total)
}

/// CRC32C of the bytes the batch CRC covers: attributes to the end.
///
/// # Panics
/// If `batch` is shorter than the header.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..])
}

/// CRC32C of a batch held in two pieces: a (rewritten) copy of its 61-byte
/// header and the records that follow it. Lets a broker restamp the header
/// without copying or touching the producer's records.
///
/// # Panics
/// If `header` is shorter than the header.
pub fn compute_crc_of_parts(header: &[u8], records: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&header[ATTRIBUTES_OFFSET..RECORD_BATCH_OVERHEAD]);
    crc32c::crc32c_append(crc, records)
}

/// Recomputes the CRC field after a change to a covered field.
///
/// # Panics
/// If `batch` is shorter than the header.
pub fn update_crc(batch: &mut [u8]) {
    let crc = compute_crc(batch);
    batch[CRC_OFFSET..ATTRIBUTES_OFFSET].copy_from_slice(&crc.to_be_bytes());
}

/// Validates one complete batch: `batch` must be exactly the batch's bytes.
///
/// Checks, in Kafka's order: the header fits, the length field matches the
/// slice, magic is 2, the CRC32C matches, and the header's counts are not
/// negative and its codec is defined. Records are not decoded.
pub fn validate_batch(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(batch)?;
    let total = checked_batch_size(&header, usize::MAX)?;
    if total != batch.len() {
        return if total > batch.len() {
            Err(BatchError::Truncated {
                needed: total,
                available: batch.len(),
            })
        } else {
            Err(BatchError::InvalidLength(header.batch_length))
        };
    }
    if header.magic != MAGIC_V2 {
        return Err(BatchError::UnsupportedMagic(header.magic));
    }
    let computed = compute_crc(batch);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    if header.last_offset_delta < 0 {
        return Err(BatchError::InvalidHeader("negative last offset delta"));
    }
    if header.record_count < 0 {
        return Err(BatchError::InvalidHeader("negative record count"));
    }
    if header.compression().is_none() {
        return Err(BatchError::InvalidHeader("undefined compression codec"));
    }
    Ok(header)
}

/// Rewrites the base offset in place (outside the CRC).
///
/// # Panics
/// If `batch` is shorter than [`LOG_OVERHEAD`].
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[BASE_OFFSET_OFFSET..LENGTH_OFFSET].copy_from_slice(&base_offset.to_be_bytes());
}

/// Rewrites the partition leader epoch in place (outside the CRC).
///
/// # Panics
/// If `batch` is shorter than the header.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[PARTITION_LEADER_EPOCH_OFFSET..MAGIC_OFFSET].copy_from_slice(&epoch.to_be_bytes());
}

/// Stamps the batch with the broker's append time, as Kafka does for topics with
/// `message.timestamp.type=LogAppendTime`: sets the timestamp-type bit and
/// `maxTimestamp`, leaves the records alone and recomputes the CRC.
///
/// # Panics
/// If `batch` is shorter than the header.
pub fn set_log_append_time(batch: &mut [u8], timestamp_ms: i64) {
    let (header, records) = batch.split_at_mut(RECORD_BATCH_OVERHEAD);
    set_log_append_time_parts(header, records, timestamp_ms);
}

/// [`set_log_append_time`] on a batch held as a header copy and its records.
///
/// # Panics
/// If `header` is shorter than the header.
pub fn set_log_append_time_parts(header: &mut [u8], records: &[u8], timestamp_ms: i64) {
    let attributes = Attributes(read_i16(header, ATTRIBUTES_OFFSET))
        .with_timestamp_type(TimestampType::LogAppendTime);
    header[ATTRIBUTES_OFFSET..LAST_OFFSET_DELTA_OFFSET]
        .copy_from_slice(&attributes.0.to_be_bytes());
    header[MAX_TIMESTAMP_OFFSET..PRODUCER_ID_OFFSET].copy_from_slice(&timestamp_ms.to_be_bytes());
    let crc = compute_crc_of_parts(header, records);
    header[CRC_OFFSET..ATTRIBUTES_OFFSET].copy_from_slice(&crc.to_be_bytes());
}

/// One batch found in a buffer by [`batches`]: its header and its bytes.
#[derive(Debug, Clone, Copy)]
pub struct RawBatch<'a> {
    pub header: BatchHeader,
    /// The whole batch, header included.
    pub bytes: &'a [u8],
    /// Where the batch starts in the buffer given to [`batches`].
    pub position: usize,
}

/// Iterates over the batches laid end to end in `buf`, checking only that each
/// length field is sane and fits in the buffer (not magic or CRC: call
/// [`validate_batch`] on `bytes` for that). After the first error it yields
/// nothing more. A `buf` that ends exactly after a batch ends the iteration.
pub fn batches(buf: &[u8]) -> Batches<'_> {
    Batches {
        buf,
        position: 0,
        failed: false,
    }
}

/// Iterator returned by [`batches`].
#[derive(Debug, Clone)]
pub struct Batches<'a> {
    buf: &'a [u8],
    position: usize,
    failed: bool,
}

impl<'a> Batches<'a> {
    /// Byte position of the next batch; after the iteration, how far valid
    /// batches reached.
    pub fn position(&self) -> usize {
        self.position
    }
}

impl<'a> Iterator for Batches<'a> {
    type Item = Result<RawBatch<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.position >= self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.position..];
        let item = BatchHeader::parse(rest).and_then(|header| {
            let total = checked_batch_size(&header, usize::MAX)?;
            let bytes = rest.get(..total).ok_or(BatchError::Truncated {
                needed: total,
                available: rest.len(),
            })?;
            Ok(RawBatch {
                header,
                bytes,
                position: self.position,
            })
        });
        match &item {
            Ok(batch) => self.position += batch.bytes.len(),
            Err(_) => self.failed = true,
        }
        Some(item)
    }
}

fn read_i64(buf: &[u8], at: usize) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    i64::from_be_bytes(b)
}

fn read_i32(buf: &[u8], at: usize) -> i32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    i32::from_be_bytes(b)
}

fn read_i16(buf: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([buf[at], buf[at + 1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header-only batch (no records) with a correct CRC.
    fn empty_batch(base_offset: i64) -> Vec<u8> {
        let header = BatchHeader {
            base_offset,
            batch_length: MIN_BATCH_LENGTH,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            magic: MAGIC_V2,
            crc: 0,
            attributes: Attributes::default(),
            last_offset_delta: 0,
            base_timestamp: 1_700_000_000_000,
            max_timestamp: 1_700_000_000_000,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            base_sequence: NO_SEQUENCE,
            record_count: 0,
        };
        let mut buf = vec![0u8; RECORD_BATCH_OVERHEAD];
        header.write_to(&mut buf);
        update_crc(&mut buf);
        buf
    }

    #[test]
    fn header_round_trips_and_validates() {
        let buf = empty_batch(42);
        let header = validate_batch(&buf).unwrap();
        assert_eq!(header.base_offset, 42);
        assert_eq!(header.total_size(), RECORD_BATCH_OVERHEAD);
        let mut again = vec![0u8; RECORD_BATCH_OVERHEAD];
        header.write_to(&mut again);
        assert_eq!(again, buf);
    }

    #[test]
    fn offset_and_epoch_rewrite_keeps_crc_valid() {
        let mut buf = empty_batch(0);
        set_base_offset(&mut buf, 1234);
        set_partition_leader_epoch(&mut buf, 7);
        let header = validate_batch(&buf).unwrap();
        assert_eq!(
            (header.base_offset, header.partition_leader_epoch),
            (1234, 7)
        );
    }

    #[test]
    fn log_append_time_sets_type_and_crc() {
        let mut buf = empty_batch(0);
        set_log_append_time(&mut buf, 99);
        let header = validate_batch(&buf).unwrap();
        assert_eq!(header.timestamp_type(), TimestampType::LogAppendTime);
        assert_eq!(header.max_timestamp, 99);
    }

    #[test]
    fn every_single_bit_flip_in_covered_bytes_is_caught() {
        let buf = empty_batch(0);
        for byte in MAGIC_OFFSET..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    validate_batch(&bad).is_err(),
                    "flip at byte {byte} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn distinct_errors_for_magic_crc_and_length() {
        let mut bad_magic = empty_batch(0);
        bad_magic[MAGIC_OFFSET] = 1;
        assert_eq!(
            validate_batch(&bad_magic),
            Err(BatchError::UnsupportedMagic(1))
        );

        let mut bad_crc = empty_batch(0);
        bad_crc[RECORDS_COUNT_OFFSET] ^= 0x40;
        assert!(matches!(
            validate_batch(&bad_crc),
            Err(BatchError::CrcMismatch { .. })
        ));

        let mut bad_len = empty_batch(0);
        bad_len[LENGTH_OFFSET..LOG_OVERHEAD].copy_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(validate_batch(&bad_len), Err(BatchError::InvalidLength(-5)));

        assert!(matches!(
            validate_batch(&empty_batch(0)[..30]),
            Err(BatchError::Truncated { .. })
        ));
    }

    #[test]
    fn iterates_batches_and_stops_at_a_torn_tail() {
        let mut buf = empty_batch(0);
        buf.extend(empty_batch(1));
        let torn = empty_batch(2);
        buf.extend(&torn[..20]);
        let mut it = batches(&buf);
        assert_eq!(it.next().unwrap().unwrap().header.base_offset, 0);
        assert_eq!(it.next().unwrap().unwrap().header.base_offset, 1);
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
        assert_eq!(it.position(), 2 * RECORD_BATCH_OVERHEAD);
    }

    #[test]
    fn sequences_wrap_like_kafka() {
        let mut header = BatchHeader::parse(&empty_batch(0)).unwrap();
        header.base_sequence = i32::MAX - 1;
        header.last_offset_delta = 3;
        assert_eq!(header.last_sequence(), 1);
    }
}
