//! The v2 record format inside a batch (after the 61-byte header), as Kafka's
//! `DefaultRecord`:
//!
//! ```text
//! length: varint             bytes after this field
//! attributes: i8             unused, 0
//! timestampDelta: varlong    from the batch's base timestamp
//! offsetDelta: varint        from the batch's base offset
//! keyLength: varint          -1 = null
//! key: bytes
//! valueLength: varint        -1 = null (a tombstone)
//! value: bytes
//! headerCount: varint
//!   headerKeyLength: varint, headerKey: UTF-8 (never null),
//!   headerValueLength: varint (-1 = null), headerValue: bytes
//! ```
//!
//! Control batches (transaction markers, KRaft's own records) hold control
//! records: key = version i16 + type i16; the value's schema depends on the type.

use std::iter::FusedIterator;

use bytes::{BufMut, Bytes};

use crate::compression::{self, Compression, CompressionError};
use crate::record_batch::{
    BatchError, BatchHeader, LOG_OVERHEAD, MAGIC_V2, MIN_BATCH_LENGTH, NO_SEQUENCE,
    RECORD_BATCH_OVERHEAD, TimestampType,
};
use crate::varint::{self, VarintError};

/// Fewest bytes a record takes: a one-byte length, then attributes, timestamp
/// delta, offset delta, key length, value length and header count of one
/// byte each.
const MIN_RECORD_BYTES: usize = 7;
/// Fewest bytes a record header takes: two one-byte lengths.
const MIN_HEADER_BYTES: usize = 2;

/// A record header. Kafka allows a key to repeat; order is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub key: String,
    pub value: Option<Bytes>,
}

/// One decoded record. Key, value and header values are slices of the
/// (decompressed) batch: decoding copies no payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Added to the batch's base offset gives the record's offset. Compaction
    /// leaves gaps, so it is not always the record's index in the batch.
    pub offset_delta: i32,
    /// Added to the batch's base timestamp gives the record's create time.
    pub timestamp_delta: i64,
    /// `None` is a null key, distinct from an empty one.
    pub key: Option<Bytes>,
    /// `None` is a null value: a tombstone for compaction.
    pub value: Option<Bytes>,
    pub headers: Vec<RecordHeader>,
    /// Unused by Kafka (written as 0); kept so records re-encode unchanged.
    pub attributes: i8,
}

impl Record {
    /// The record's offset in a batch with this header.
    pub fn offset(&self, header: &BatchHeader) -> i64 {
        header
            .base_offset
            .wrapping_add(i64::from(self.offset_delta))
    }

    /// The record's timestamp. With LogAppendTime every record has the
    /// broker's append time, which the batch keeps as its max timestamp.
    pub fn timestamp(&self, header: &BatchHeader) -> i64 {
        match header.timestamp_type() {
            TimestampType::LogAppendTime => header.max_timestamp,
            TimestampType::CreateTime => header.base_timestamp.wrapping_add(self.timestamp_delta),
        }
    }

    /// The record's producer sequence number, or [`NO_SEQUENCE`] for a batch
    /// without one. Sequences wrap to 0 after `i32::MAX`, as Kafka's do.
    pub fn sequence(&self, header: &BatchHeader) -> i32 {
        if header.base_sequence < 0 {
            return NO_SEQUENCE;
        }
        let wrap = i64::from(i32::MAX) + 1;
        let sequence =
            (i64::from(header.base_sequence) + i64::from(self.offset_delta)).rem_euclid(wrap);
        i32::try_from(sequence).unwrap_or(NO_SEQUENCE)
    }

    /// Appends the record, encoded, to `buf`; see [`encode_record`].
    ///
    /// # Panics
    /// If the record is 2 GiB or larger.
    pub fn encode(&self, buf: &mut impl BufMut) {
        encode_parts(
            buf,
            self.attributes,
            self.offset_delta,
            self.timestamp_delta,
            self.key.as_deref(),
            self.value.as_deref(),
            self.headers
                .iter()
                .map(|h| (h.key.as_bytes(), h.value.as_deref())),
        );
    }
}

/// Why records could not be decoded. Small and allocation-free except for the
/// codec's own error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The batch header is unusable: too short, wrong length or magic, bad counts.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// The records section ends inside a record.
    #[error("record truncated")]
    Truncated,
    /// A varint is too long or overflows.
    #[error("bad varint in record: {0}")]
    Varint(VarintError),
    /// A length below -1, a negative record length or header count, or a
    /// null header key.
    #[error("invalid {field} length {length}")]
    NegativeLength { field: &'static str, length: i32 },
    /// Kafka header keys are strings.
    #[error("record header key is not UTF-8")]
    HeaderKeyNotUtf8,
    /// The record's fields took more or fewer bytes than its length says.
    #[error("record fields do not fill its declared length of {declared} bytes")]
    LengthMismatch { declared: usize },
    /// The records section ended after `found` of the `expected` records.
    #[error("batch header declares {expected} records, the batch holds {found}")]
    TooFewRecords { expected: i32, found: i32 },
    /// Bytes remain after the records the header declares.
    #[error("{remaining} bytes remain after the {expected} records the batch header declares")]
    TrailingBytes { expected: i32, remaining: usize },
    /// The decompressed records would exceed the caller's bound.
    #[error("decompressed records exceed {max} bytes")]
    TooLarge { max: usize },
    /// The attributes name a codec id Kafka does not define (5..=7).
    #[error("undefined compression codec id {0}")]
    UndefinedCodec(u8),
    /// The compressed records section is corrupt.
    #[error(transparent)]
    Codec(CompressionError),
    /// A control record's key or value does not follow its schema.
    #[error("invalid control record: {0}")]
    InvalidControl(&'static str),
}

impl From<CompressionError> for RecordError {
    fn from(e: CompressionError) -> Self {
        match e {
            CompressionError::TooLarge { max } => Self::TooLarge { max },
            e => Self::Codec(e),
        }
    }
}

/// The records of `batch`, which holds exactly one whole batch (header
/// included), decompressed first if need be, to at most
/// `max_decompressed_bytes`.
///
/// Checks the batch's length field, magic and record count, not its CRC:
/// [`validate_batch`](crate::record_batch::validate_batch) does that. The
/// iterator yields each record, then an error if the records section does not
/// hold exactly `record_count` records, and stops after its first error.
pub fn records(batch: &Bytes, max_decompressed_bytes: usize) -> Result<RecordIter, RecordError> {
    records_budgeted(batch, max_decompressed_bytes, &mut |_| true)
}

/// [`records`], asking `grow` before the decompressed records take more
/// memory, as [`compression::decompress_budgeted`] does; a refusal is
/// `RecordError::Codec(CompressionError::OverBudget)`.
pub fn records_budgeted(
    batch: &Bytes,
    max_decompressed_bytes: usize,
    grow: &mut dyn FnMut(usize) -> bool,
) -> Result<RecordIter, RecordError> {
    let header = BatchHeader::parse(batch)?;
    if header.batch_length < MIN_BATCH_LENGTH {
        return Err(BatchError::InvalidLength(header.batch_length).into());
    }
    let total = usize::try_from(header.batch_length)
        .ok()
        .and_then(|length| length.checked_add(LOG_OVERHEAD))
        .ok_or(BatchError::InvalidLength(header.batch_length))?;
    if total > batch.len() {
        return Err(BatchError::Truncated {
            needed: total,
            available: batch.len(),
        }
        .into());
    }
    if total < batch.len() {
        return Err(BatchError::InvalidLength(header.batch_length).into());
    }
    if header.magic != MAGIC_V2 {
        return Err(BatchError::UnsupportedMagic(header.magic).into());
    }
    if header.record_count < 0 {
        return Err(BatchError::InvalidHeader("negative record count").into());
    }
    let section = batch.slice(RECORD_BATCH_OVERHEAD..);
    let codec = header.compression().ok_or(RecordError::UndefinedCodec(
        header.attributes.compression_id(),
    ))?;
    let data = match codec {
        Compression::None => section,
        // An empty batch (the cleaner keeps some to remember producer state)
        // has nothing to decompress, whatever its codec bits say.
        _ if section.is_empty() && header.record_count == 0 => section,
        codec => {
            let mut out = Vec::new();
            compression::decompress_budgeted(
                codec,
                &section,
                max_decompressed_bytes,
                &mut out,
                grow,
            )?;
            Bytes::from(out)
        }
    };
    Ok(RecordIter {
        header,
        data,
        position: 0,
        remaining: header.record_count,
        done: false,
    })
}

/// All records of `batch`; see [`records`].
pub fn decode_records(
    batch: &Bytes,
    max_decompressed_bytes: usize,
) -> Result<Vec<Record>, RecordError> {
    let iter = records(batch, max_decompressed_bytes)?;
    // The header's count is untrusted: size the vector by what the bytes can hold.
    let count = usize::try_from(iter.header.record_count).unwrap_or(0);
    let mut out = Vec::with_capacity(count.min(iter.data.len() / MIN_RECORD_BYTES));
    for record in iter {
        out.push(record?);
    }
    Ok(out)
}

/// Iterates the records of one batch; see [`records`].
#[derive(Debug, Clone)]
pub struct RecordIter {
    header: BatchHeader,
    /// The records section, decompressed.
    data: Bytes,
    position: usize,
    /// Records the header says are still to come.
    remaining: i32,
    done: bool,
}

impl RecordIter {
    /// The header of the batch being iterated.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }
}

impl Iterator for RecordIter {
    type Item = Result<Record, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.remaining == 0 {
            self.done = true;
            let trailing = self.data.len() - self.position;
            return (trailing != 0).then_some(Err(RecordError::TrailingBytes {
                expected: self.header.record_count,
                remaining: trailing,
            }));
        }
        if self.position == self.data.len() {
            self.done = true;
            return Some(Err(RecordError::TooFewRecords {
                expected: self.header.record_count,
                found: self.header.record_count - self.remaining,
            }));
        }
        match decode_record(&self.data, self.position) {
            Ok((record, end)) => {
                self.position = end;
                self.remaining -= 1;
                Some(Ok(record))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            (0, Some(0))
        } else {
            // The remaining records, then maybe one error.
            let remaining = usize::try_from(self.remaining).unwrap_or(0);
            (0, Some(remaining + 1))
        }
    }
}

impl FusedIterator for RecordIter {}

/// Decodes the record at `data[at..]`; returns it and where it ends.
fn decode_record(data: &Bytes, at: usize) -> Result<(Record, usize), RecordError> {
    let mut cursor = &data[at..];
    let length = varint::read_varint(&mut cursor).map_err(|e| match e {
        VarintError::Truncated => RecordError::Truncated,
        e => RecordError::Varint(e),
    })?;
    let declared = usize::try_from(length).map_err(|_| RecordError::NegativeLength {
        field: "record",
        length,
    })?;
    if declared > cursor.len() {
        return Err(RecordError::Truncated);
    }
    let start = data.len() - cursor.len();
    let mut r = FieldReader {
        data,
        start,
        at: start,
        end: start + declared,
    };
    let attributes = i8::from_be_bytes([r.byte()?]);
    let timestamp_delta = r.varlong()?;
    let offset_delta = r.varint()?;
    let key = r.nullable_bytes("key")?;
    let value = r.nullable_bytes("value")?;
    let header_count = r.varint()?;
    let header_count = usize::try_from(header_count).map_err(|_| RecordError::NegativeLength {
        field: "header count",
        length: header_count,
    })?;
    // Bound the allocation by the bytes, not by the count the input declares.
    if header_count > r.left() / MIN_HEADER_BYTES {
        return Err(RecordError::LengthMismatch { declared });
    }
    let mut headers = Vec::with_capacity(header_count);
    for _ in 0..header_count {
        let key_length = r.varint()?;
        let key_length = usize::try_from(key_length).map_err(|_| RecordError::NegativeLength {
            field: "header key",
            length: key_length,
        })?;
        let key = r.take(key_length)?;
        let key = std::str::from_utf8(&key).map_err(|_| RecordError::HeaderKeyNotUtf8)?;
        let value = r.nullable_bytes("header value")?;
        headers.push(RecordHeader {
            key: key.to_owned(),
            value,
        });
    }
    if r.left() != 0 {
        return Err(RecordError::LengthMismatch { declared });
    }
    let record = Record {
        offset_delta,
        timestamp_delta,
        key,
        value,
        headers,
        attributes,
    };
    Ok((record, r.end))
}

/// Reads the fields of one record from `data[at..end]`, `end` being where the
/// record's length says it ends: a field running past it is a length mismatch.
struct FieldReader<'a> {
    data: &'a Bytes,
    /// Where the record's fields start (after its length).
    start: usize,
    at: usize,
    end: usize,
}

impl FieldReader<'_> {
    fn left(&self) -> usize {
        self.end - self.at
    }

    fn mismatch(&self) -> RecordError {
        RecordError::LengthMismatch {
            declared: self.end - self.start,
        }
    }

    fn byte(&mut self) -> Result<u8, RecordError> {
        let Some(&b) = self.data[self.at..self.end].first() else {
            return Err(self.mismatch());
        };
        self.at += 1;
        Ok(b)
    }

    fn read<T>(
        &mut self,
        read: impl FnOnce(&mut &[u8]) -> Result<T, VarintError>,
    ) -> Result<T, RecordError> {
        let mut cursor = &self.data[self.at..self.end];
        let before = cursor.len();
        match read(&mut cursor) {
            Ok(v) => {
                self.at += before - cursor.len();
                Ok(v)
            }
            Err(VarintError::Truncated) => Err(self.mismatch()),
            Err(e) => Err(RecordError::Varint(e)),
        }
    }

    fn varint(&mut self) -> Result<i32, RecordError> {
        self.read(varint::read_varint)
    }

    fn varlong(&mut self) -> Result<i64, RecordError> {
        self.read(varint::read_varlong)
    }

    fn take(&mut self, len: usize) -> Result<Bytes, RecordError> {
        if len > self.left() {
            return Err(self.mismatch());
        }
        let out = self.data.slice(self.at..self.at + len);
        self.at += len;
        Ok(out)
    }

    fn nullable_bytes(&mut self, field: &'static str) -> Result<Option<Bytes>, RecordError> {
        let length = self.varint()?;
        if length == -1 {
            return Ok(None);
        }
        let len =
            usize::try_from(length).map_err(|_| RecordError::NegativeLength { field, length })?;
        self.take(len).map(Some)
    }
}

/// Appends one encoded record to `buf`: attributes 0, the given deltas, key,
/// value and headers (in order; keys may repeat).
///
/// # Panics
/// If the record is 2 GiB or larger.
pub fn encode_record(
    buf: &mut impl BufMut,
    offset_delta: i32,
    timestamp_delta: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&str, Option<&[u8]>)],
) {
    encode_parts(
        buf,
        0,
        offset_delta,
        timestamp_delta,
        key,
        value,
        headers.iter().map(|(k, v)| (k.as_bytes(), *v)),
    );
}

/// Bytes [`encode_record`] appends for these fields.
///
/// # Panics
/// If the record is 2 GiB or larger.
pub fn encoded_record_len(
    offset_delta: i32,
    timestamp_delta: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&str, Option<&[u8]>)],
) -> usize {
    let body = body_len(
        offset_delta,
        timestamp_delta,
        key,
        value,
        headers.iter().map(|(k, v)| (k.as_bytes(), *v)),
    );
    varint::varint_len(len_i32(body)) + body
}

fn len_i32(len: usize) -> i32 {
    i32::try_from(len).expect("record fields are below 2 GiB")
}

fn nullable_len(v: Option<&[u8]>) -> usize {
    match v {
        None => varint::varint_len(-1),
        Some(b) => varint::varint_len(len_i32(b.len())) + b.len(),
    }
}

fn put_nullable(buf: &mut impl BufMut, v: Option<&[u8]>) {
    match v {
        None => varint::put_varint(buf, -1),
        Some(b) => {
            varint::put_varint(buf, len_i32(b.len()));
            buf.put_slice(b);
        }
    }
}

fn body_len<'h>(
    offset_delta: i32,
    timestamp_delta: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: impl ExactSizeIterator<Item = (&'h [u8], Option<&'h [u8]>)>,
) -> usize {
    let mut body = 1 + varint::varlong_len(timestamp_delta) + varint::varint_len(offset_delta);
    body += nullable_len(key) + nullable_len(value);
    body += varint::varint_len(len_i32(headers.len()));
    for (k, v) in headers {
        body += nullable_len(Some(k)) + nullable_len(v);
    }
    body
}

fn encode_parts<'h, H>(
    buf: &mut impl BufMut,
    attributes: i8,
    offset_delta: i32,
    timestamp_delta: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: H,
) where
    H: ExactSizeIterator<Item = (&'h [u8], Option<&'h [u8]>)> + Clone,
{
    let body = body_len(offset_delta, timestamp_delta, key, value, headers.clone());
    varint::put_varint(buf, len_i32(body));
    buf.put_i8(attributes);
    varint::put_varlong(buf, timestamp_delta);
    varint::put_varint(buf, offset_delta);
    put_nullable(buf, key);
    put_nullable(buf, value);
    varint::put_varint(buf, len_i32(headers.len()));
    for (k, v) in headers {
        put_nullable(buf, Some(k));
        put_nullable(buf, v);
    }
}

/// The type of a control record, from its key (version i16, type i16), as
/// Kafka's `ControlRecordType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlRecordType {
    /// A transaction ended by abort.
    Abort,
    /// A transaction ended by commit.
    Commit,
    /// KRaft: a new quorum leader.
    LeaderChange,
    /// KRaft: first record of a snapshot.
    SnapshotHeader,
    /// KRaft: last record of a snapshot.
    SnapshotFooter,
    /// KRaft: the `kraft.version` feature level.
    KRaftVersion,
    /// KRaft: the voter set.
    KRaftVoters,
    /// A type this code does not know; readers skip such records.
    Unknown(i16),
}

/// The control record key version this code writes.
pub const CONTROL_KEY_VERSION: i16 = 0;
/// The end-transaction marker value version this code writes.
pub const END_TXN_MARKER_VERSION: i16 = 0;

impl ControlRecordType {
    pub fn from_id(id: i16) -> Self {
        match id {
            0 => Self::Abort,
            1 => Self::Commit,
            2 => Self::LeaderChange,
            3 => Self::SnapshotHeader,
            4 => Self::SnapshotFooter,
            5 => Self::KRaftVersion,
            6 => Self::KRaftVoters,
            other => Self::Unknown(other),
        }
    }

    pub fn id(self) -> i16 {
        match self {
            Self::Abort => 0,
            Self::Commit => 1,
            Self::LeaderChange => 2,
            Self::SnapshotHeader => 3,
            Self::SnapshotFooter => 4,
            Self::KRaftVersion => 5,
            Self::KRaftVoters => 6,
            Self::Unknown(id) => id,
        }
    }

    /// The 4-byte control record key: version 0 and the type.
    pub fn key(self) -> [u8; 4] {
        let mut key = [0u8; 4];
        key[..2].copy_from_slice(&CONTROL_KEY_VERSION.to_be_bytes());
        key[2..].copy_from_slice(&self.id().to_be_bytes());
        key
    }

    /// Reads a control record key. As Kafka: at least 4 bytes, a negative
    /// version is corrupt, a newer version is read as version 0 (versions
    /// only add fields).
    pub fn parse(key: &[u8]) -> Result<Self, RecordError> {
        let Some(&[v0, v1, t0, t1]) = key.first_chunk::<4>() else {
            return Err(RecordError::InvalidControl(
                "control record key shorter than 4 bytes",
            ));
        };
        if i16::from_be_bytes([v0, v1]) < 0 {
            return Err(RecordError::InvalidControl(
                "negative control record key version",
            ));
        }
        Ok(Self::from_id(i16::from_be_bytes([t0, t1])))
    }
}

/// The end-of-transaction marker a partition leader writes when a transaction
/// ends: a control batch with one control record, key [`ControlRecordType`]
/// Commit or Abort, value version i16 (0) + coordinator epoch i32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndTxnMarker {
    pub commit: bool,
    /// Epoch of the transaction coordinator that wrote the marker: lets the
    /// leader fence markers from a stale coordinator.
    pub coordinator_epoch: i32,
}

impl EndTxnMarker {
    pub fn record_type(&self) -> ControlRecordType {
        if self.commit {
            ControlRecordType::Commit
        } else {
            ControlRecordType::Abort
        }
    }

    /// The marker's record key.
    pub fn key(&self) -> [u8; 4] {
        self.record_type().key()
    }

    /// The marker's record value: version 0 and the coordinator epoch.
    pub fn value(&self) -> [u8; 6] {
        let mut value = [0u8; 6];
        value[..2].copy_from_slice(&END_TXN_MARKER_VERSION.to_be_bytes());
        value[2..].copy_from_slice(&self.coordinator_epoch.to_be_bytes());
        value
    }

    /// Reads a marker from a control record's key and value, as Kafka's
    /// `EndTransactionMarker`: the key must be Commit or Abort, the value at
    /// least 6 bytes with a version that is not negative (a newer one is read
    /// as version 0).
    pub fn decode(key: &[u8], value: &[u8]) -> Result<Self, RecordError> {
        let commit = match ControlRecordType::parse(key)? {
            ControlRecordType::Commit => true,
            ControlRecordType::Abort => false,
            _ => return Err(RecordError::InvalidControl("not a transaction marker")),
        };
        let Some(&[v0, v1, e0, e1, e2, e3]) = value.first_chunk::<6>() else {
            return Err(RecordError::InvalidControl(
                "transaction marker value shorter than 6 bytes",
            ));
        };
        if i16::from_be_bytes([v0, v1]) < 0 {
            return Err(RecordError::InvalidControl(
                "negative transaction marker version",
            ));
        }
        Ok(Self {
            commit,
            coordinator_epoch: i32::from_be_bytes([e0, e1, e2, e3]),
        })
    }

    /// Reads a marker from a decoded control record.
    pub fn from_record(record: &Record) -> Result<Self, RecordError> {
        match (&record.key, &record.value) {
            (Some(key), Some(value)) => Self::decode(key, value),
            _ => Err(RecordError::InvalidControl(
                "transaction marker without key or value",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::record_batch::{Attributes, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, update_crc};

    /// A batch with a valid header (length, CRC) around `section`, which is
    /// taken as already compressed with `codec`.
    fn batch_with_section(section: &[u8], record_count: i32, codec: Compression) -> Bytes {
        let header = BatchHeader {
            base_offset: 1000,
            batch_length: i32::try_from(RECORD_BATCH_OVERHEAD - LOG_OVERHEAD + section.len())
                .unwrap(),
            partition_leader_epoch: 0,
            magic: MAGIC_V2,
            crc: 0,
            attributes: Attributes::default().with_compression(codec),
            last_offset_delta: record_count.max(1) - 1,
            base_timestamp: 5_000,
            max_timestamp: 5_000,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            base_sequence: NO_SEQUENCE,
            record_count,
        };
        let mut batch = vec![0u8; RECORD_BATCH_OVERHEAD];
        header.write_to(&mut batch);
        batch.extend_from_slice(section);
        update_crc(&mut batch);
        Bytes::from(batch)
    }

    fn encoded(offset_delta: i32, key: Option<&[u8]>, value: Option<&[u8]>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_record(&mut out, offset_delta, 3, key, value, &[("h", Some(b"v"))]);
        out
    }

    fn decode_section(section: &[u8], record_count: i32) -> Result<Vec<Record>, RecordError> {
        decode_records(
            &batch_with_section(section, record_count, Compression::None),
            1 << 20,
        )
    }

    #[test]
    fn encode_and_decode_agree_field_by_field() {
        let mut section = Vec::new();
        let headers: &[(&str, Option<&[u8]>)] = &[("k", Some(b"1")), ("k", None), ("é", Some(b""))];
        encode_record(&mut section, 0, -7, None, Some(b""), headers);
        assert_eq!(
            section.len(),
            encoded_record_len(0, -7, None, Some(b""), headers)
        );
        encode_record(&mut section, 1, i64::MAX, Some(b"key"), None, &[]);
        let records = decode_section(&section, 2).unwrap();
        assert_eq!(
            records[0],
            Record {
                offset_delta: 0,
                timestamp_delta: -7,
                key: None,
                value: Some(Bytes::new()),
                headers: vec![
                    RecordHeader {
                        key: "k".into(),
                        value: Some(Bytes::from_static(b"1"))
                    },
                    RecordHeader {
                        key: "k".into(),
                        value: None
                    },
                    RecordHeader {
                        key: "é".into(),
                        value: Some(Bytes::new())
                    },
                ],
                attributes: 0,
            }
        );
        assert_eq!(records[1].key.as_deref(), Some(&b"key"[..]));
        assert_eq!(records[1].value, None);
        assert_eq!(records[1].timestamp_delta, i64::MAX);
    }

    #[test]
    fn offsets_timestamps_and_sequences_follow_the_header() {
        let batch = batch_with_section(&encoded(2, None, None), 1, Compression::None);
        let mut header = BatchHeader::parse(&batch).unwrap();
        let record = decode_records(&batch, 0).unwrap().remove(0);
        assert_eq!(record.offset(&header), 1002);
        assert_eq!(record.timestamp(&header), 5_003);
        assert_eq!(record.sequence(&header), NO_SEQUENCE);
        header.base_sequence = i32::MAX - 1;
        assert_eq!(record.sequence(&header), 0, "wraps to 0 after i32::MAX");
        header.base_sequence = 10;
        assert_eq!(record.sequence(&header), 12);
        header.attributes = header
            .attributes
            .with_timestamp_type(TimestampType::LogAppendTime);
        header.max_timestamp = 9_999;
        assert_eq!(record.timestamp(&header), 9_999);
        header.base_offset = i64::MAX;
        let _ = record.offset(&header); // hostile headers do not panic
    }

    #[test]
    fn record_level_errors_name_what_is_wrong() {
        let good = encoded(0, Some(b"key"), Some(b"value"));
        // Body: attributes 0, timestamp delta 3 (0x06), offset delta 0, ...
        let with = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut section = good.clone();
            edit(&mut section);
            decode_section(&section, 1)
        };
        let declared = good.len() - 1;
        assert!(matches!(
            with(&|s| s[0] = 0x01),
            Err(RecordError::NegativeLength {
                field: "record",
                length: -1
            })
        ));
        assert!(matches!(
            with(&|s| s.truncate(5)),
            Err(RecordError::Truncated)
        ));
        // Length one short of the fields, then one long (with a byte to spare).
        assert!(matches!(
            with(&|s| { s[0] -= 2; s.push(0) }),
            Err(RecordError::LengthMismatch { declared: d }) if d == declared - 1
        ));
        assert!(matches!(
            with(&|s| { s[0] += 2; s.push(0) }),
            Err(RecordError::LengthMismatch { declared: d }) if d == declared + 1
        ));
        // Key length -2.
        assert!(matches!(
            with(&|s| s[4] = 0x03),
            Err(RecordError::NegativeLength {
                field: "key",
                length: -2
            })
        ));
        // The header: count at 14, key length at 15, key at 16.
        assert_eq!(good[14..], [0x02, 0x02, b'h', 0x02, b'v']);
        assert!(matches!(
            with(&|s| s[15] = 0x01),
            Err(RecordError::NegativeLength {
                field: "header key",
                length: -1
            })
        ));
        assert!(matches!(
            with(&|s| s[16] = 0xff),
            Err(RecordError::HeaderKeyNotUtf8)
        ));
        assert!(matches!(
            with(&|s| s[14] = 0x01),
            Err(RecordError::NegativeLength {
                field: "header count",
                length: -1
            })
        ));
        // A header count of 2^31 - 1 in a 20-byte record: refused, not allocated.
        assert!(matches!(
            with(&|s| {
                s.splice(14..15, [0xfe, 0xff, 0xff, 0xff, 0x0f]);
                s[0] += 8;
            }),
            Err(RecordError::LengthMismatch { .. })
        ));
        // An 11-byte timestamp delta.
        assert!(matches!(
            with(&|s| {
                s.splice(2..3, [0xff; 11]);
                s[0] += 20;
            }),
            Err(RecordError::Varint(VarintError::TooLong(10)))
        ));
    }

    #[test]
    fn the_record_count_must_match() {
        let mut two = encoded(0, None, Some(b"a"));
        two.extend(encoded(1, None, Some(b"b")));
        assert_eq!(decode_section(&two, 2).unwrap().len(), 2);
        assert!(matches!(
            decode_section(&two, 3),
            Err(RecordError::TooFewRecords {
                expected: 3,
                found: 2
            })
        ));
        assert!(matches!(
            decode_section(&two, 1),
            Err(RecordError::TrailingBytes { expected: 1, remaining }) if remaining == two.len() / 2
        ));
        assert!(matches!(
            decode_section(&two, -1),
            Err(RecordError::Batch(BatchError::InvalidHeader(_)))
        ));
        // The iterator yields what decodes, then the error, then nothing.
        let batch = batch_with_section(&two, 3, Compression::None);
        let mut iter = records(&batch, 0).unwrap();
        assert_eq!(iter.size_hint(), (0, Some(4)));
        assert!(iter.next().unwrap().is_ok());
        assert!(iter.next().unwrap().is_ok());
        assert!(iter.next().unwrap().is_err());
        assert!(iter.next().is_none());
        assert!(iter.next().is_none());
    }

    #[test]
    fn batch_level_errors() {
        let section = encoded(0, None, Some(b"a"));
        let good = batch_with_section(&section, 1, Compression::None);
        let edit = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.to_vec();
            f(&mut b);
            decode_records(&Bytes::from(b), 1 << 20)
        };
        assert!(matches!(
            edit(&|b| b[16] = 1),
            Err(RecordError::Batch(BatchError::UnsupportedMagic(1)))
        ));
        assert!(matches!(
            edit(&|b| b.push(0)),
            Err(RecordError::Batch(BatchError::InvalidLength(_)))
        ));
        assert!(matches!(
            edit(&|b| {
                b.pop();
            }),
            Err(RecordError::Batch(BatchError::Truncated { .. }))
        ));
        assert!(matches!(
            edit(&|b| b.truncate(30)),
            Err(RecordError::Batch(BatchError::Truncated { .. }))
        ));
        assert!(matches!(
            edit(&|b| b[8..12].copy_from_slice(&(-3i32).to_be_bytes())),
            Err(RecordError::Batch(BatchError::InvalidLength(-3)))
        ));
        assert!(matches!(
            edit(&|b| b[22] |= 5),
            Err(RecordError::UndefinedCodec(5))
        ));
    }

    #[test]
    fn compressed_sections_are_bounded_and_checked() {
        let mut section = Vec::new();
        for i in 0..100 {
            section.extend(encoded(i, None, Some(&[7u8; 100])));
        }
        for codec in Compression::ALL.into_iter().skip(1) {
            let mut compressed = Vec::new();
            compression::compress(codec, None, &section, &mut compressed).unwrap();
            let batch = batch_with_section(&compressed, 100, codec);
            assert_eq!(decode_records(&batch, section.len()).unwrap().len(), 100);
            assert!(matches!(
                decode_records(&batch, section.len() - 1),
                Err(RecordError::TooLarge { max }) if max == section.len() - 1
            ));
            let garbled = batch_with_section(&compressed[..compressed.len() / 2], 100, codec);
            assert!(decode_records(&garbled, 1 << 20).is_err(), "{codec}");
            // An empty batch needs no decompression whatever its codec.
            assert!(
                decode_records(&batch_with_section(&[], 0, codec), 0)
                    .unwrap()
                    .is_empty()
            );
        }
    }

    #[test]
    fn every_truncation_and_corruption_is_handled() {
        let mut section = encoded(0, Some(b"key"), Some(b"value"));
        section.extend(encoded(1, None, None));
        for cut in 0..section.len() {
            assert!(decode_section(&section[..cut], 2).is_err(), "cut at {cut}");
        }
        for i in 0..section.len() {
            for v in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut bad = section.clone();
                bad[i] = v;
                let _ = decode_section(&bad, 2);
            }
        }
    }

    #[test]
    fn control_record_keys_follow_kafka() {
        for id in -2..9 {
            let t = ControlRecordType::from_id(id);
            assert_eq!(t.id(), id);
            assert_eq!(ControlRecordType::parse(&t.key()).unwrap(), t);
        }
        assert_eq!(ControlRecordType::Abort.key(), [0, 0, 0, 0]);
        assert_eq!(ControlRecordType::Commit.key(), [0, 0, 0, 1]);
        assert_eq!(
            ControlRecordType::from_id(3),
            ControlRecordType::SnapshotHeader
        );
        assert_eq!(ControlRecordType::from_id(7), ControlRecordType::Unknown(7));
        // A newer key version is read as version 0, a negative one is corrupt.
        assert_eq!(
            ControlRecordType::parse(&[0, 1, 0, 1, 9]).unwrap(),
            ControlRecordType::Commit
        );
        assert!(ControlRecordType::parse(&[0xff, 0xff, 0, 1]).is_err());
        assert!(ControlRecordType::parse(&[0, 0, 0]).is_err());
    }

    #[test]
    fn end_txn_markers_follow_kafka() {
        let marker = EndTxnMarker {
            commit: false,
            coordinator_epoch: -5,
        };
        assert_eq!(marker.key(), [0, 0, 0, 0]);
        assert_eq!(marker.value(), [0, 0, 0xff, 0xff, 0xff, 0xfb]);
        assert_eq!(
            EndTxnMarker::decode(&marker.key(), &marker.value()).unwrap(),
            marker
        );
        let commit = ControlRecordType::Commit.key();
        assert!(
            EndTxnMarker::decode(&commit, &[0, 0, 0, 0, 1]).is_err(),
            "short value"
        );
        assert!(
            EndTxnMarker::decode(&commit, &[0x80, 0, 0, 0, 0, 1]).is_err(),
            "negative version"
        );
        assert_eq!(
            EndTxnMarker::decode(&commit, &[0, 1, 0, 0, 0, 1, 42]).unwrap(),
            EndTxnMarker {
                commit: true,
                coordinator_epoch: 1
            },
            "a newer version is read as version 0"
        );
        assert!(matches!(
            EndTxnMarker::decode(&ControlRecordType::LeaderChange.key(), &marker.value()),
            Err(RecordError::InvalidControl("not a transaction marker"))
        ));
    }

    proptest! {
        #[test]
        fn random_batches_never_panic(data in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_records(&Bytes::from(data), 1 << 20);
        }

        #[test]
        fn random_record_sections_never_panic(
            section in prop::collection::vec(any::<u8>(), 0..300),
            count in -2i32..20,
            codec in 0u8..5,
        ) {
            let codec = Compression::from_id(codec).unwrap();
            let batch = batch_with_section(&section, count, codec);
            if let Ok(records) = decode_records(&batch, 1 << 16) {
                prop_assert_eq!(records.len(), usize::try_from(count).unwrap());
            }
        }

        #[test]
        fn mutated_valid_sections_never_panic(
            flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            codec in 0u8..5,
        ) {
            let codec = Compression::from_id(codec).unwrap();
            let mut section = Vec::new();
            for i in 0..5 {
                section.extend(encoded(i, Some(b"k"), Some(b"value")));
            }
            let mut compressed = Vec::new();
            compression::compress(codec, None, &section, &mut compressed).unwrap();
            for (at, byte) in flips {
                let at = at % compressed.len();
                compressed[at] = byte;
            }
            let _ = decode_records(&batch_with_section(&compressed, 5, codec), 1 << 16);
        }
    }
}
