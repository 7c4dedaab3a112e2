//! Reads: whole batches by offset (as a [`LogSlice`] of a segment file),
//! timestamp lookups, and what read_committed readers need: the last stable
//! offset and the aborted transactions of a range.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use strom_protocol::record;
use strom_protocol::record_batch::{BatchHeader, TimestampType};

use super::scan::{BatchScanner, Scanned};
use super::segment::Segment;
use super::{AbortedTxn, MAX_DECOMPRESSED_BATCH_BYTES, NO_OPEN_TXN, PartitionLog};
use crate::error::ReadError;
use crate::file_cache::FileKind;

/// A timestamp lookup's answer: the first record at or after a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampOffset {
    pub timestamp: i64,
    pub offset: i64,
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

    /// Whether the positions still hold the batches they were resolved to:
    /// false once the log was truncated (replication) since. A zero-copy
    /// send checks it before the last byte leaves, so that no reader gets a
    /// whole frame with other batches in it.
    pub fn is_current(&self) -> bool {
        self.segment
            .as_ref()
            .is_none_or(|s| s.generation() == self.generation)
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
        if read.is_err() || !self.is_current() {
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

impl PartitionLog {
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
