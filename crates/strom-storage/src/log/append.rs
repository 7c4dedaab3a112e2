//! Appends: a leader's (producers' and coordinators' batches, given offsets
//! and the leader epoch here) and a follower's (replicated batches, kept as
//! they are); the checks before them, rolling to a new segment, and the
//! transactions the appended markers end.

use std::io::{self, IoSlice};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use strom_protocol::record_batch::{
    self, BatchError, BatchHeader, MAGIC_V2, RECORD_BATCH_OVERHEAD, TimestampType,
};

use super::producer_state::{
    Checked, CompletedTxn, ProducerBatch, ProducerUpdate, TxnVerification, VerificationGuard,
};
use super::segment::{AppendFailure, AppendedBatch, Segment};
use super::{AbortedTxn, MAX_UNREPLICATED_TXNS, NO_OPEN_TXN, PartitionLog, Writer};
use crate::config::LogConfig;
use crate::error::AppendError;

/// Bound on the batches of one append: a produce request carries one batch per
/// partition, a replica fetch response at most `replica.fetch.max.bytes`
/// (1 MiB) of them; 65,536 minimal batches would be 4 MiB.
pub const MAX_BATCHES_PER_APPEND: usize = 65_536;

/// Who is appending; decides which rules apply (as Kafka's `AppendOrigin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOrigin {
    /// A producer: base offset 0, record count consistent, no control batches.
    Client,
    /// The broker's own coordinators: may write control batches.
    Coordinator,
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

impl PartitionLog {
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
    /// of the producer's last
    /// [`NUM_BATCHES_TO_RETAIN`](super::NUM_BATCHES_TO_RETAIN) batches returns
    /// the original batch's offsets with [`AppendInfo::duplicate`] set,
    /// writing nothing. Coordinator appends update the state unchecked.
    pub fn append_as_leader(
        &self,
        records: &[u8],
        leader_epoch: i32,
        origin: AppendOrigin,
    ) -> Result<AppendInfo, AppendError> {
        self.append_as_leader_verified(records, leader_epoch, origin, TxnVerification::Unchecked)
    }

    /// KIP-890 part 1, before a transactional produce asks the transaction
    /// coordinator whether `producer_id` may write here: `None` when its
    /// transaction is already ongoing in this partition at `producer_epoch`
    /// (nothing to ask), otherwise the guard to pass to
    /// [`Self::append_as_leader_verified`] once the coordinator said yes.
    pub fn maybe_start_txn_verification(
        &self,
        producer_id: i64,
        producer_epoch: i16,
    ) -> Option<VerificationGuard> {
        self.writer
            .lock()
            .producers
            .maybe_start_verification(producer_id, producer_epoch)
    }

    /// [`Self::append_as_leader`] with the KIP-890 check of `verification`:
    /// a client's transactional batch that would start its producer's
    /// transaction here is refused ([`AppendError::InvalidTxnState`]) unless
    /// it carries the producer's current guard. The check and the append are
    /// one step under the log's write lock, and a marker removes the guard,
    /// so a batch verified before a marker cannot land after it.
    pub fn append_as_leader_verified(
        &self,
        records: &[u8],
        leader_epoch: i32,
        origin: AppendOrigin,
        verification: TxnVerification,
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
                    Checked::Append(update) => {
                        writer
                            .producers
                            .check_verification(&producer_batches, verification)?;
                        update
                    }
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
    pub(super) fn publish_ongoing(&self, writer: &Writer) {
        self.first_ongoing_offset.store(
            writer
                .producers
                .first_ongoing_offset()
                .unwrap_or(NO_OPEN_TXN),
            Ordering::Release,
        );
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
    pub(super) fn roll(
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
