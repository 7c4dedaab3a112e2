//! The v2 record format inside a batch (after the 61-byte header):
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
//!   headerKeyLength: varint, headerKey: UTF-8, headerValueLength: varint (-1 = null), value
//! ```

use bytes::{BufMut, Bytes};

use crate::compression::{self, Compression, CompressionError};
use crate::record_batch::{
    BatchError, BatchHeader, RECORD_BATCH_OVERHEAD, TimestampType, checked_batch_size,
};
use crate::varint::{self, VarintError};

/// A record header. Keys may repeat; order is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub key: String,
    pub value: Option<Bytes>,
}

/// One decoded record. Key, value and header values are slices of the
/// (decompressed) batch: decoding copies no payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub attributes: i8,
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<RecordHeader>,
}

impl Record {
    /// The record's offset in a batch with this header.
    pub fn offset(&self, header: &BatchHeader) -> i64 {
        header.base_offset + i64::from(self.offset_delta)
    }

    /// The record's timestamp: with LogAppendTime every record has the batch's
    /// max timestamp.
    pub fn timestamp(&self, header: &BatchHeader) -> i64 {
        match header.timestamp_type() {
            TimestampType::LogAppendTime => header.max_timestamp,
            TimestampType::CreateTime => header.base_timestamp.wrapping_add(self.timestamp_delta),
        }
    }
}

/// Why records could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("record truncated")]
    Truncated,
    #[error("bad varint in record: {0}")]
    Varint(#[from] VarintError),
    #[error("invalid record: {0}")]
    Invalid(&'static str),
    #[error("header key is not UTF-8")]
    HeaderKeyNotUtf8,
    #[error("record count mismatch: header says {expected}, batch holds {found}")]
    CountMismatch { expected: i32, found: i32 },
    #[error("undefined compression codec")]
    UndefinedCodec,
    #[error(transparent)]
    Compression(#[from] CompressionError),
}

/// Iterates the records of one batch; see [`records`].
#[derive(Debug, Clone)]
pub struct RecordIter {
    header: BatchHeader,
    data: Bytes,
    position: usize,
    decoded: i32,
    done: bool,
}

impl RecordIter {
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }
}

/// The records of `batch`, which holds one whole batch (header included),
/// decompressed first if need be, to at most `max_decompressed_bytes`.
pub fn records(batch: &Bytes, max_decompressed_bytes: usize) -> Result<RecordIter, RecordError> {
    let header = BatchHeader::parse(batch)?;
    let total = checked_batch_size(&header, batch.len())?;
    if header.record_count < 0 {
        return Err(RecordError::Invalid("negative record count"));
    }
    let body = batch.slice(RECORD_BATCH_OVERHEAD..total);
    let data = match header.compression().ok_or(RecordError::UndefinedCodec)? {
        Compression::None => body,
        codec => {
            let mut out = Vec::new();
            compression::decompress(codec, &body, max_decompressed_bytes, &mut out)?;
            Bytes::from(out)
        }
    };
    Ok(RecordIter {
        header,
        data,
        position: 0,
        decoded: 0,
        done: false,
    })
}

/// All records of `batch`; see [`records`].
pub fn decode_records(
    batch: &Bytes,
    max_decompressed_bytes: usize,
) -> Result<Vec<Record>, RecordError> {
    records(batch, max_decompressed_bytes)?.collect()
}

impl Iterator for RecordIter {
    type Item = Result<Record, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.decoded == self.header.record_count {
            self.done = true;
            if self.position != self.data.len() {
                return Some(Err(RecordError::Invalid("bytes after the last record")));
            }
            return None;
        }
        if self.position >= self.data.len() {
            self.done = true;
            return Some(Err(RecordError::CountMismatch {
                expected: self.header.record_count,
                found: self.decoded,
            }));
        }
        let result = decode_one(&self.data, &mut self.position);
        match &result {
            Ok(_) => self.decoded += 1,
            Err(_) => self.done = true,
        }
        Some(result)
    }
}

/// Decodes the record at `*position` of `data`, advancing the position.
fn decode_one(data: &Bytes, position: &mut usize) -> Result<Record, RecordError> {
    let mut cursor = &data[*position..];
    let length = varint::read_varint(&mut cursor)?;
    let length =
        usize::try_from(length).map_err(|_| RecordError::Invalid("negative record length"))?;
    let start = data.len() - cursor.len();
    let end = start
        .checked_add(length)
        .filter(|e| *e <= data.len())
        .ok_or(RecordError::Truncated)?;
    let mut r = Reader {
        data,
        at: start,
        end,
    };
    let attributes = r.byte()? as i8;
    let timestamp_delta = r.varlong()?;
    let offset_delta = r.varint()?;
    let key = r.nullable_bytes()?;
    let value = r.nullable_bytes()?;
    let header_count = r.varint()?;
    let header_count =
        usize::try_from(header_count).map_err(|_| RecordError::Invalid("negative header count"))?;
    // Each header takes at least two bytes: bound the allocation by the input.
    let mut headers = Vec::with_capacity(header_count.min((end - r.at) / 2));
    for _ in 0..header_count {
        let key_len = r.varint()?;
        let key_len =
            usize::try_from(key_len).map_err(|_| RecordError::Invalid("null header key"))?;
        let key = r.take(key_len)?;
        let key = std::str::from_utf8(&key)
            .map_err(|_| RecordError::HeaderKeyNotUtf8)?
            .to_owned();
        let value = r.nullable_bytes()?;
        headers.push(RecordHeader { key, value });
    }
    if r.at != end {
        return Err(RecordError::Invalid(
            "record length does not match its fields",
        ));
    }
    *position = end;
    Ok(Record {
        attributes,
        timestamp_delta,
        offset_delta,
        key,
        value,
        headers,
    })
}

/// A bounded reader over `data[at..end]`.
struct Reader<'a> {
    data: &'a Bytes,
    at: usize,
    end: usize,
}

impl Reader<'_> {
    fn rest(&self) -> &[u8] {
        &self.data[self.at..self.end]
    }

    fn byte(&mut self) -> Result<u8, RecordError> {
        let b = *self.rest().first().ok_or(RecordError::Truncated)?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<i32, RecordError> {
        let mut cursor = self.rest();
        let before = cursor.len();
        let v = varint::read_varint(&mut cursor)?;
        self.at += before - cursor.len();
        Ok(v)
    }

    fn varlong(&mut self) -> Result<i64, RecordError> {
        let mut cursor = self.rest();
        let before = cursor.len();
        let v = varint::read_varlong(&mut cursor)?;
        self.at += before - cursor.len();
        Ok(v)
    }

    fn take(&mut self, len: usize) -> Result<Bytes, RecordError> {
        if len > self.end - self.at {
            return Err(RecordError::Truncated);
        }
        let out = self.data.slice(self.at..self.at + len);
        self.at += len;
        Ok(out)
    }

    fn nullable_bytes(&mut self) -> Result<Option<Bytes>, RecordError> {
        match self.varint()? {
            -1 => Ok(None),
            len if len < -1 => Err(RecordError::Invalid("negative length")),
            len => self.take(len as usize).map(Some),
        }
    }
}

fn nullable_len(v: Option<&[u8]>) -> usize {
    match v {
        None => varint::varint_len(-1),
        Some(b) => varint::varint_len(len_i32(b.len())) + b.len(),
    }
}

fn len_i32(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(i32::MAX)
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

/// Appends one encoded record to `buf`.
///
/// # Panics
/// If a key, value or header is 2 GiB or larger.
pub fn encode_record(
    buf: &mut impl BufMut,
    offset_delta: i32,
    timestamp_delta: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&str, Option<&[u8]>)],
) {
    let mut body = 1 + varint::varlong_len(timestamp_delta) + varint::varint_len(offset_delta);
    body += nullable_len(key) + nullable_len(value);
    body += varint::varint_len(len_i32(headers.len()));
    for (k, v) in headers {
        body += nullable_len(Some(k.as_bytes())) + nullable_len(*v);
    }
    let body = i32::try_from(body).expect("record below 2 GiB");
    varint::put_varint(buf, body);
    buf.put_i8(0);
    varint::put_varlong(buf, timestamp_delta);
    varint::put_varint(buf, offset_delta);
    put_nullable(buf, key);
    put_nullable(buf, value);
    varint::put_varint(buf, len_i32(headers.len()));
    for (k, v) in headers {
        put_nullable(buf, Some(k.as_bytes()));
        put_nullable(buf, *v);
    }
}

/// The type of a control record (key: version i16, type i16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRecordType {
    /// A transaction ended by abort.
    Abort,
    /// A transaction ended by commit.
    Commit,
    /// Any other type (KRaft's own control records).
    Other(i16),
}

impl ControlRecordType {
    pub fn id(self) -> i16 {
        match self {
            Self::Abort => 0,
            Self::Commit => 1,
            Self::Other(id) => id,
        }
    }

    /// The 4-byte control record key: version 0 and the type.
    pub fn key(self) -> [u8; 4] {
        let mut key = [0u8; 4];
        key[2..].copy_from_slice(&self.id().to_be_bytes());
        key
    }

    /// Parses a control record key; `None` if it is too short.
    pub fn parse(key: &[u8]) -> Option<Self> {
        let id = i16::from_be_bytes([*key.get(2)?, *key.get(3)?]);
        Some(match id {
            0 => Self::Abort,
            1 => Self::Commit,
            other => Self::Other(other),
        })
    }
}

/// The end-of-transaction marker written into each partition of a
/// transaction: a control batch with one control record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndTxnMarker {
    pub commit: bool,
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

    /// The marker's value: version 0 and the coordinator epoch.
    pub fn value(&self) -> [u8; 6] {
        let mut value = [0u8; 6];
        value[2..].copy_from_slice(&self.coordinator_epoch.to_be_bytes());
        value
    }

    /// Reads a marker from a control record's key and value.
    pub fn decode(key: &[u8], value: &[u8]) -> Result<Self, RecordError> {
        let commit = match ControlRecordType::parse(key) {
            Some(ControlRecordType::Commit) => true,
            Some(ControlRecordType::Abort) => false,
            _ => return Err(RecordError::Invalid("not a transaction marker")),
        };
        let epoch: [u8; 4] = value
            .get(2..6)
            .and_then(|b| b.try_into().ok())
            .ok_or(RecordError::Invalid("transaction marker value too short"))?;
        Ok(Self {
            commit,
            coordinator_epoch: i32::from_be_bytes(epoch),
        })
    }
}
