//! The log cleaner's work on one log, as Kafka's `Cleaner`: find the
//! cleanable section, map each key of its dirty part to the offset of the
//! key's last record, rewrite the segments from the log start up to the end
//! of what was mapped keeping only what the map and the rules below allow,
//! and swap the rewritten segments in crash-safely.
//!
//! # What a clean keeps
//!
//! A record is kept unless the map holds its key at a higher offset. Records
//! past the mapped section are always kept; records without a key go (Kafka
//! counts them as invalid: a compacted topic takes only keyed records).
//! Tombstones (null values) follow KIP-534: the first clean that sees a
//! batch holding a tombstone sets the batch's delete horizon (the `now +
//! delete.retention.ms` of that clean, stored in the base timestamp with
//! attribute bit 6); tombstones of a batch whose horizon has passed go.
//! Records keep their offsets; a rewritten batch keeps its base offset, last
//! offset delta (so the producer's last sequence survives), producer id,
//! epoch and base sequence, partition leader epoch, timestamp type,
//! transactional and control flags and compression codec (recompressed at
//! the codec's default level). A batch all of whose records are kept and
//! that needs no horizon is copied byte for byte.
//!
//! A batch left without records goes, except (Kafka's `RETAIN_EMPTY`) the
//! last data batch of a producer the log knows, a producer's last marker
//! when it has no data left, and the batch that ends the cleanable section:
//! those stay as header-only batches, so producer state and the end of the
//! cleaned range survive.
//!
//! Transactions: every batch is shown to a [`TxnCleanPass`] that may discard
//! aborted data and mark a marker with no data left, which then gets a
//! delete horizon and goes once it has passed (Kafka's
//! `CleanedTransactionMetadata`; the log manager's default is
//! [`crate::cleaner::TransactionCleanHooks`]). The aborted-transaction index
//! entries of the markers a group keeps go into its cleaned segment's
//! `.txnindex`.
//!
//! # Crash safety (Kafka's `.cleaned` and `.swap` files)
//!
//! Each group of segments is written aside as `<base>.log.cleaned` with
//! `<base>.index.cleaned` and `<base>.timeindex.cleaned`, `<base>` being the
//! group's first base offset, and fsynced. Then, under the log's writer lock,
//! after checking that the log did not change meanwhile:
//!
//! 1. the index files and then the log are renamed to `.swap`, and the
//!    directory fsynced: from here a restart completes the swap;
//! 2. the old segments are renamed `*.deleted` (readers holding them keep
//!    reading; the files go after `file.delete.delay.ms`);
//! 3. the `.swap` files are renamed to their final names, the log last;
//! 4. the segment map switches to the new segment, and the directory is
//!    fsynced.
//!
//! Opening a log deletes `.cleaned` files and completes every `<base>.log.swap`
//! (see `complete_swap` in `log::recovery`): the segments it replaces go, it
//! becomes `<base>.log`, its indexes are rebuilt. A crash at any point thus
//! leaves either the old segments or the cleaned one, both holding every
//! record's latest value at its offset.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use strom_protocol::compression::{self, Compression};
use strom_protocol::record::{self, Record, RecordError};
use strom_protocol::record_batch::{
    self, BatchHeader, LOG_OVERHEAD, MIN_BATCH_LENGTH, NO_TIMESTAMP, RECORD_BATCH_OVERHEAD,
    TimestampType,
};

use super::producer_state::LastRecord;
use super::scan::{BatchScanner, Scanned};
use super::segment::{
    CLEANED_SUFFIX, INDEX_SUFFIX, LOG_SUFFIX, SWAP_SUFFIX, Segment, SegmentWriter,
    TIME_INDEX_SUFFIX, TXN_INDEX_SUFFIX, staged_path,
};
use super::{MAX_DECOMPRESSED_BATCH_BYTES, PartitionLog};
use crate::checkpoint;
use crate::cleaner::{CleanStats, OffsetMap, TxnCleanHooks, TxnCleanPass};
use crate::error::StorageError;
use crate::file_cache::FileKind;

/// The part of a log one clean looks at (Kafka's `LogToClean`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CleanableSection {
    /// The log start offset when the section was computed.
    pub(crate) log_start_offset: i64,
    /// Where the records not yet cleaned begin: the cleaner checkpoint, or
    /// the log start offset when there is none or it is out of range.
    pub(crate) first_dirty_offset: i64,
    /// The cleaner stops below this: the lowest of the active segment's base
    /// offset, the high watermark, the first unstable offset (transactions)
    /// and the first segment younger than `min.compaction.lag.ms`.
    pub(crate) first_uncleanable_offset: i64,
    /// Bytes of the segments below the one holding the first dirty offset.
    pub(crate) clean_bytes: u64,
    /// Bytes of the segments from that one up to the first uncleanable offset.
    pub(crate) dirty_bytes: u64,
    /// How long past `max.compaction.lag.ms` the oldest dirty segment's
    /// first batch is (KIP-354); above 0 the log must be cleaned now.
    pub(crate) max_compaction_delay_ms: i64,
}

impl CleanableSection {
    /// Kafka's cleanable ratio: dirty bytes over clean and dirty bytes.
    #[allow(clippy::cast_precision_loss)]
    pub(crate) fn dirty_ratio(&self) -> f64 {
        let total = self.clean_bytes + self.dirty_bytes;
        if total == 0 {
            0.0
        } else {
            self.dirty_bytes as f64 / total as f64
        }
    }
}

/// Why a clean stopped before the end.
#[derive(Debug)]
pub(crate) enum CleanError {
    /// The cleaner was told to stop (shutdown, topic deletion, truncation).
    Aborted,
    /// The log changed under the clean (truncated, its start moved, its
    /// segments replaced, closed); nothing was swapped in for the rest, and
    /// a later round starts again.
    Abandoned(&'static str),
    /// Bad data or an I/O failure: the log is not cleaned again until restart.
    Failed(StorageError),
    /// A test stopped the clean as a crash would (files left as they are).
    #[cfg(test)]
    Crashed,
}

impl CleanError {
    fn io(log: &PartitionLog, e: io::Error) -> Self {
        Self::Failed(StorageError::io(&*log.dir, e))
    }

    fn corrupt(what: impl std::fmt::Display) -> Self {
        Self::Failed(StorageError::Corruption(what.to_string()))
    }
}

/// What the cleaner running a clean provides: a stop signal and the I/O
/// throttle.
pub(crate) trait CleanControl {
    /// `Err(Aborted)` once the clean must stop.
    fn check(&self) -> Result<(), CleanError>;
    /// Counts bytes read or written; pauses when they come too fast.
    fn throttle(&mut self, bytes: u64);
}

/// The steps of a clean at which a test can simulate a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CrashPoint {
    /// Part of the `.cleaned` log written.
    WritingCleaned,
    /// All `.cleaned` files written and fsynced.
    CleanedWritten,
    /// The index files renamed to `.swap`, the log still `.cleaned`.
    IndexesSwapped,
    /// The log renamed to `.swap`: the commit point.
    LogSwapped,
    /// The first old segment renamed `*.deleted`.
    FirstOldDeleted,
    /// Every old segment renamed `*.deleted`.
    OldDeleted,
    /// The index files renamed to their final names, the log still `.swap`.
    IndexesFinal,
    /// The log renamed to its final name, before the directory fsync.
    LogFinal,
}

impl CrashPoint {
    /// Every step, in order.
    #[cfg(test)]
    pub(crate) const ALL: [CrashPoint; 8] = [
        Self::WritingCleaned,
        Self::CleanedWritten,
        Self::IndexesSwapped,
        Self::LogSwapped,
        Self::FirstOldDeleted,
        Self::OldDeleted,
        Self::IndexesFinal,
        Self::LogFinal,
    ];
}

/// Everything one clean uses besides the log.
pub(crate) struct CleanJob<'a> {
    pub(crate) map: &'a mut OffsetMap,
    pub(crate) control: &'a mut dyn CleanControl,
    pub(crate) hooks: &'a dyn TxnCleanHooks,
    /// The time the clean runs at (delete horizons).
    pub(crate) now_ms: i64,
    pub(crate) stats: &'a mut CleanStats,
    /// Stop as a crash would at this step of this group (0 = the first).
    #[cfg(test)]
    pub(crate) crash_at: Option<(usize, CrashPoint)>,
}

/// What must not change while a clean runs: a log whose start moved or that
/// was truncated is not swapped into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChangeMarker {
    log_start_offset: i64,
    truncations: u64,
}

impl PartitionLog {
    fn change_marker(&self) -> ChangeMarker {
        ChangeMarker {
            log_start_offset: self.log_start_offset(),
            truncations: self.truncations.load(Ordering::Acquire),
        }
    }

    /// The section a clean would work on now, given the cleaner checkpoint
    /// (Kafka's `LogCleanerManager.cleanableOffsets` and `LogToClean`).
    pub(crate) fn cleanable_section(
        &self,
        checkpoint: Option<i64>,
        hooks: &dyn TxnCleanHooks,
        now_ms: i64,
    ) -> io::Result<CleanableSection> {
        let config = self.config();
        let log_start_offset = self.log_start_offset();
        let log_end_offset = self.log_end_offset();
        // Kafka: a checkpoint below the log start or past the log end (data
        // lost at the tail) is not trusted; clean from the log start.
        let first_dirty_offset = match checkpoint {
            Some(c) if c >= log_start_offset && c <= log_end_offset => c,
            _ => log_start_offset,
        };
        let segments: Vec<Arc<Segment>> = self.segments.read().values().cloned().collect();
        let mut section = CleanableSection {
            log_start_offset,
            first_dirty_offset,
            first_uncleanable_offset: first_dirty_offset,
            clean_bytes: 0,
            dirty_bytes: 0,
            max_compaction_delay_ms: 0,
        };
        let Some((active, _)) = segments.split_last() else {
            return Ok(section);
        };
        let mut first_uncleanable = active.base_offset().min(self.high_watermark());
        // Kafka: never past the first unstable offset.
        if let Some(unstable) = hooks.first_unstable_offset(self) {
            first_uncleanable = first_uncleanable.min(unstable);
        }
        let floor = segments
            .partition_point(|s| s.base_offset() <= first_dirty_offset)
            .saturating_sub(1);
        let dirty_inactive = &segments[floor.min(segments.len() - 1)..segments.len() - 1];
        if config.min_compaction_lag_ms > 0 {
            let young_after = now_ms.saturating_sub(config.min_compaction_lag_ms);
            for segment in dirty_inactive {
                if segment.largest_timestamp()? > young_after {
                    first_uncleanable = first_uncleanable.min(segment.base_offset());
                    break;
                }
            }
        }
        let clean_until = now_ms.saturating_sub(config.max_compaction_lag_ms.max(0));
        if clean_until > 0 {
            let mut earliest = i64::MAX;
            for segment in dirty_inactive {
                if let Some(ts) = segment.timestamps()?.first_batch_timestamp
                    && ts > 0
                {
                    earliest = earliest.min(ts);
                }
            }
            if earliest < clean_until {
                section.max_compaction_delay_ms = clean_until - earliest;
            }
        }
        section.first_uncleanable_offset = first_uncleanable.max(first_dirty_offset);
        section.clean_bytes = segments[..floor].iter().map(|s| s.size()).sum();
        section.dirty_bytes = segments[floor..]
            .iter()
            .take_while(|s| s.base_offset() < section.first_uncleanable_offset)
            .filter(|_| section.first_uncleanable_offset > first_dirty_offset)
            .map(|s| s.size())
            .sum();
        Ok(section)
    }

    /// Cleans `section` (see the module documentation). Returns the offset
    /// the next clean's dirty section starts at: the first uncleanable
    /// offset, or less when the offset map filled first.
    pub(crate) fn clean(
        &self,
        section: &CleanableSection,
        job: &mut CleanJob<'_>,
    ) -> Result<i64, CleanError> {
        let marker = self.change_marker();
        if marker.log_start_offset != section.log_start_offset {
            return Err(CleanError::Abandoned("the log start offset moved"));
        }
        let started = Instant::now();
        let end_offset = self.build_offset_map(
            section.first_dirty_offset,
            section.first_uncleanable_offset,
            job,
        )?;
        job.stats.map_duration = started.elapsed();
        job.stats.end_offset = end_offset;
        #[allow(clippy::cast_possible_truncation)]
        {
            job.stats.map_keys = job.map.len() as u64;
        }
        job.stats.map_utilization = job.map.utilization();
        if end_offset <= section.first_dirty_offset {
            return Ok(end_offset);
        }

        let config = self.config();
        let last_records = self.writer.lock().producers.last_records();
        // Every segment with data below the end offset; never the active one
        // (the end offset is at most its base offset).
        let (segments, next_bases): (Vec<Arc<Segment>>, Vec<i64>) = {
            let all = self.segments.read();
            let bases: Vec<i64> = all.keys().copied().collect();
            all.values()
                .zip(bases.iter().skip(1))
                .filter(|(s, _)| s.base_offset() < end_offset)
                .map(|(s, next)| (Arc::clone(s), *next))
                .unzip()
        };
        let groups = group_segments(
            &segments,
            &next_bases,
            config.effective_segment_bytes(),
            u64::from(config.segment_index_bytes),
        );
        let filter = Filter {
            map: job.map,
            now_ms: job.now_ms,
            delete_retention_ms: config.delete_retention_ms,
            last_records: &last_records,
            upper_bound: section.first_uncleanable_offset,
            end_offset,
        };
        let first = segments.first().map_or(end_offset, |s| s.base_offset());
        let mut pass = job.hooks.begin_pass(self, first, end_offset);
        let mut control = Control {
            control: &mut *job.control,
            stats: &mut *job.stats,
            #[cfg(test)]
            crash_at: job.crash_at,
        };
        for (i, group) in groups.iter().enumerate() {
            self.clean_group(
                i,
                group,
                &filter,
                pass.as_mut(),
                &mut control,
                marker,
                &config,
            )?;
        }
        Ok(end_offset)
    }

    /// Maps the keys of `[from, to)` (Kafka's `buildOffsetMap`). Returns the
    /// end of what was mapped: `to`, or the offset after the last record
    /// mapped when the map filled.
    fn build_offset_map(
        &self,
        from: i64,
        to: i64,
        job: &mut CleanJob<'_>,
    ) -> Result<i64, CleanError> {
        let mut pass = job.hooks.begin_pass(self, from, to);
        let mut end = to;
        'segments: for segment in self.segments_from(from) {
            if segment.base_offset() >= to {
                break;
            }
            let size = segment.size();
            let found = segment
                .find_batch(from, size)
                .map_err(|e| CleanError::io(self, e))?;
            let Some((position, _)) = found else {
                continue;
            };
            let log = segment
                .file(FileKind::Log)
                .map_err(|e| CleanError::io(self, e))?;
            let mut scanner = BatchScanner::new(&log, position, size);
            loop {
                let (header, bytes) =
                    match scanner.next_batch().map_err(|e| CleanError::io(self, e))? {
                        Scanned::End => break,
                        Scanned::Invalid { error } => {
                            return Err(CleanError::corrupt(format_args!(
                                "segment {} at {}: {error}",
                                segment.base_offset(),
                                scanner.position()
                            )));
                        }
                        Scanned::Batch { header, bytes, .. } => (header, bytes),
                    };
                if header.last_offset() >= to {
                    // A batch is mapped whole or not at all.
                    if header.base_offset < to {
                        end = header.base_offset.max(from);
                    }
                    break 'segments;
                }
                job.control.check()?;
                job.control.throttle(bytes.len() as u64);
                job.stats.map_bytes_read += bytes.len() as u64;
                let discard = pass.discard(&header, bytes);
                if !header.is_control() && !discard {
                    let batch = Bytes::copy_from_slice(bytes);
                    for r in record::records(&batch, MAX_DECOMPRESSED_BATCH_BYTES)
                        .map_err(CleanError::corrupt)?
                    {
                        let r = r.map_err(CleanError::corrupt)?;
                        job.stats.map_records_read += 1;
                        let offset = r.offset(&header);
                        if let Some(key) = &r.key
                            && offset >= from
                        {
                            if job.map.is_full() {
                                return Ok(job.map.latest_offset() + 1);
                            }
                            job.map.put(key, offset);
                        }
                    }
                }
                if header.last_offset() >= from {
                    job.map.update_latest_offset(header.last_offset());
                }
            }
        }
        // Kafka: past gaps, the map covers everything up to the end.
        job.map.update_latest_offset(end - 1);
        Ok(end)
    }

    /// Rewrites one group of segments into one and swaps it in.
    #[allow(clippy::too_many_arguments)]
    fn clean_group(
        &self,
        index: usize,
        group: &[Arc<Segment>],
        filter: &Filter<'_>,
        pass: &mut dyn TxnCleanPass,
        control: &mut Control<'_>,
        marker: ChangeMarker,
        config: &crate::config::LogConfig,
    ) -> Result<(), CleanError> {
        let Some(base) = group.first().map(|s| s.base_offset()) else {
            return Ok(());
        };
        let mut committed = false;
        let result = self.write_and_swap(
            index,
            group,
            filter,
            pass,
            control,
            marker,
            config,
            &mut committed,
        );
        match &result {
            #[cfg(test)]
            Err(CleanError::Crashed) => {}
            Err(_) if !committed => {
                // Nothing was swapped: the files written aside go.
                remove_aside_files(&self.dir, base);
            }
            _ => {}
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn write_and_swap(
        &self,
        index: usize,
        group: &[Arc<Segment>],
        filter: &Filter<'_>,
        pass: &mut dyn TxnCleanPass,
        control: &mut Control<'_>,
        marker: ChangeMarker,
        config: &crate::config::LogConfig,
        committed: &mut bool,
    ) -> Result<(), CleanError> {
        let io = |e| CleanError::io(self, e);
        let base = group[0].base_offset();
        let mut out =
            SegmentWriter::create(&self.dir, base, u64::from(config.index_interval_bytes))
                .map_err(io)?;
        // Aborted-transaction entries stay with the markers they name.
        let mut aborted = Vec::new();
        let mut kept_markers = std::collections::HashSet::new();
        for segment in group {
            aborted.extend(segment.aborted_txn_entries().map_err(io)?);
            let size = segment.size();
            let log = segment.file(FileKind::Log).map_err(io)?;
            let mut scanner = BatchScanner::new(&log, 0, size);
            loop {
                let (header, bytes) = match scanner.next_batch().map_err(io)? {
                    Scanned::End => break,
                    Scanned::Invalid { error } => {
                        return Err(CleanError::corrupt(format_args!(
                            "segment {} at {}: {error}",
                            segment.base_offset(),
                            scanner.position()
                        )));
                    }
                    Scanned::Batch { header, bytes, .. } => (header, bytes),
                };
                control.control.check()?;
                control.control.throttle(bytes.len() as u64);
                control.stats.bytes_read += bytes.len() as u64;
                let filtered = filter.filter(&header, bytes, pass, control.stats)?;
                if header.is_control() && !matches!(filtered, Filtered::Drop) {
                    kept_markers.insert(header.last_offset());
                }
                let written = match filtered {
                    Filtered::Keep => {
                        out.append(bytes, &header).map_err(io)?;
                        bytes.len()
                    }
                    Filtered::Replace(batch) => {
                        let header = BatchHeader::parse(&batch).map_err(CleanError::corrupt)?;
                        out.append(&batch, &header).map_err(io)?;
                        batch.len()
                    }
                    Filtered::Drop => 0,
                };
                control.control.throttle(written as u64);
                control.stats.bytes_written += written as u64;
            }
            control.crash(index, CrashPoint::WritingCleaned)?;
        }
        out.add_aborted_txns(
            aborted
                .into_iter()
                .filter(|t| kept_markers.contains(&t.last_offset))
                .collect(),
        );
        control.stats.segments_read += group.len();
        let modified = group
            .last()
            .and_then(|s| s.file(FileKind::Log).ok())
            .and_then(|f| f.metadata().ok())
            .and_then(|m| m.modified().ok());
        let size = out.finish(modified).map_err(io)?;
        control.crash(index, CrashPoint::CleanedWritten)?;
        self.swap_in(index, group, size, marker, control, config, committed)?;
        control.stats.segments_written += 1;
        Ok(())
    }

    /// Replaces `group` with the cleaned segment at its base offset (see the
    /// module documentation for the steps).
    #[allow(clippy::too_many_arguments)]
    fn swap_in(
        &self,
        index: usize,
        group: &[Arc<Segment>],
        size: u64,
        marker: ChangeMarker,
        control: &Control<'_>,
        config: &crate::config::LogConfig,
        committed: &mut bool,
    ) -> Result<(), CleanError> {
        let base = group[0].base_offset();
        let dir = &*self.dir;
        let mut writer = self.writer.lock();
        if self.is_closed() || self.is_offline() {
            return Err(CleanError::Abandoned("the log was closed"));
        }
        if self.change_marker() != marker {
            return Err(CleanError::Abandoned(
                "the log was truncated or its start offset moved",
            ));
        }
        {
            let segments = self.segments.read();
            let unchanged = group.iter().all(|s| {
                segments
                    .get(&s.base_offset())
                    .is_some_and(|current| Arc::ptr_eq(current, s))
            });
            if !unchanged || group.iter().any(|s| Arc::ptr_eq(s, &writer.active)) {
                return Err(CleanError::Abandoned("the segments changed"));
            }
        }
        let rename = |suffix: &str, from: &str, to: &str| {
            fs::rename(
                staged_path(dir, base, suffix, from),
                staged_path(dir, base, suffix, to),
            )
        };
        let io = |e| CleanError::io(self, e);
        // 1. The commit point: the log's `.swap` name, after its indexes'.
        for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX, TXN_INDEX_SUFFIX] {
            rename(suffix, CLEANED_SUFFIX, SWAP_SUFFIX).map_err(io)?;
        }
        control.crash(index, CrashPoint::IndexesSwapped)?;
        rename(LOG_SUFFIX, CLEANED_SUFFIX, SWAP_SUFFIX).map_err(io)?;
        *committed = true;
        control.crash(index, CrashPoint::LogSwapped)?;
        // From here a failure leaves a swap that the next start completes:
        // the log must take no more writes until then.
        let now = self.clock.now_ms();
        let steps = || -> Result<(), CleanError> {
            checkpoint::sync_dir(dir).map_err(io)?;
            // 2. The old segments are renamed away.
            for (i, old) in group.iter().enumerate() {
                old.mark_deleted().map_err(io)?;
                if i == 0 {
                    control.crash(index, CrashPoint::FirstOldDeleted)?;
                }
            }
            control.crash(index, CrashPoint::OldDeleted)?;
            // 3. The swap takes its final names, the log last.
            for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX, TXN_INDEX_SUFFIX] {
                rename(suffix, SWAP_SUFFIX, "").map_err(io)?;
            }
            control.crash(index, CrashPoint::IndexesFinal)?;
            rename(LOG_SUFFIX, SWAP_SUFFIX, "").map_err(io)?;
            control.crash(index, CrashPoint::LogFinal)?;
            checkpoint::sync_dir(dir).map_err(io)
        };
        match steps() {
            Ok(()) => {}
            #[cfg(test)]
            Err(CleanError::Crashed) => return Err(CleanError::Crashed),
            Err(e) => {
                tracing::error!(log = %dir.display(), segment = base, error = ?e, "swapping in a cleaned segment failed; taking the log offline (a restart completes the swap)");
                self.offline.store(true, Ordering::Release);
                return Err(e);
            }
        }
        // 4. Readers switch to the new segment.
        let new = Arc::new(Segment::existing(
            Arc::clone(&self.dir),
            base,
            Arc::clone(&self.files),
            size,
            now,
        ));
        {
            let mut segments = self.segments.write();
            for old in group {
                segments.remove(&old.base_offset());
            }
            segments.insert(base, new);
        }
        let due = now.saturating_add(config.file_delete_delay_ms);
        for old in group {
            writer.pending_flush.retain(|s| !Arc::ptr_eq(s, old));
            writer.pending_delete.push((due, Arc::clone(old)));
        }
        if let Err(e) = self.delete_due_segments_locked(&mut writer, now) {
            tracing::warn!(log = %dir.display(), error = %e, "deleting replaced segments failed; retrying later");
        }
        tracing::debug!(log = %dir.display(), segment = base, replaced = group.len(), bytes = size, "swapped in a cleaned segment");
        Ok(())
    }
}

/// The clean's control and statistics, with the crash point for tests.
struct Control<'a> {
    control: &'a mut dyn CleanControl,
    stats: &'a mut CleanStats,
    #[cfg(test)]
    crash_at: Option<(usize, CrashPoint)>,
}

impl Control<'_> {
    #[cfg(test)]
    fn crash(&self, group: usize, point: CrashPoint) -> Result<(), CleanError> {
        if self.crash_at == Some((group, point)) {
            Err(CleanError::Crashed)
        } else {
            Ok(())
        }
    }

    #[cfg(not(test))]
    #[allow(clippy::unused_self, clippy::unnecessary_wraps)]
    fn crash(&self, _group: usize, _point: CrashPoint) -> Result<(), CleanError> {
        Ok(())
    }
}

/// Removes what a clean that did not commit left of the group at `base`.
fn remove_aside_files(dir: &std::path::Path, base: i64) {
    let mut result = SegmentWriter::remove_files(dir, base);
    for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX, TXN_INDEX_SUFFIX] {
        match fs::remove_file(staged_path(dir, base, suffix, SWAP_SUFFIX)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => result = Err(e),
            _ => {}
        }
    }
    if let Err(e) = result {
        // A restart deletes them.
        tracing::warn!(log = %dir.display(), segment = base, error = %e, "could not remove a cleaned segment that was not swapped in");
    }
}

/// Kafka's `groupSegmentsBySize`: consecutive segments go into one cleaned
/// segment while their log bytes stay within `segment.bytes`, each index
/// within `segment.index.bytes`, and their offsets within the 32-bit range
/// relative to the group's base offset (bounded by the next segment's base
/// offset, `next_bases[i]`).
fn group_segments(
    segments: &[Arc<Segment>],
    next_bases: &[i64],
    max_bytes: u64,
    max_index_bytes: u64,
) -> Vec<Vec<Arc<Segment>>> {
    let mut groups = Vec::new();
    let mut i = 0;
    while i < segments.len() {
        let first = &segments[i];
        let group_base = first.base_offset();
        let (mut offset_index, mut time_index) = first.index_file_bytes();
        let mut log_bytes = first.size();
        let mut group = vec![Arc::clone(first)];
        i += 1;
        while let Some(next) = segments.get(i) {
            let (o, t) = next.index_file_bytes();
            let last_offset = next_bases[i].saturating_sub(1);
            let fits = log_bytes + next.size() <= max_bytes
                && offset_index + o <= max_index_bytes
                && time_index + t <= max_index_bytes
                && (next.size() == 0 || last_offset - group_base <= i64::from(i32::MAX));
            if !fits {
                break;
            }
            log_bytes += next.size();
            offset_index += o;
            time_index += t;
            group.push(Arc::clone(next));
            i += 1;
        }
        groups.push(group);
    }
    groups
}

/// The fate of one batch (Kafka's `BatchRetention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retention {
    /// The batch goes whole.
    Delete,
    /// The batch goes if no record is kept.
    DeleteEmpty,
    /// The batch stays, header only if no record is kept.
    RetainEmpty,
}

/// What to write for one batch.
#[derive(Debug)]
enum Filtered {
    /// The batch as it is.
    Keep,
    /// A rewritten batch.
    Replace(Vec<u8>),
    /// Nothing.
    Drop,
}

/// The rules of one clean (Kafka's `cleanInto` filter and `shouldRetainRecord`).
struct Filter<'a> {
    map: &'a OffsetMap,
    now_ms: i64,
    delete_retention_ms: i64,
    last_records: &'a HashMap<i64, LastRecord>,
    /// Kafka's `upperBoundOffsetOfCleaningRound`: the first uncleanable offset.
    upper_bound: i64,
    /// The end of the mapped section: batches from here on are copied.
    end_offset: i64,
}

impl Filter<'_> {
    fn filter(
        &self,
        header: &BatchHeader,
        bytes: &[u8],
        pass: &mut dyn TxnCleanPass,
        stats: &mut CleanStats,
    ) -> Result<Filtered, CleanError> {
        if header.base_offset >= self.end_offset {
            // Beyond this round: the next one looks at it.
            return Ok(Filtered::Keep);
        }
        let can_discard = pass.discard(header, bytes);
        let horizon = delete_horizon(header);
        let discard_records = if header.is_control() {
            // Markers go only after their delete horizon (piggy-backing on
            // tombstone retention, as Kafka does).
            can_discard && horizon.is_some_and(|h| h <= self.now_ms)
        } else {
            can_discard
        };
        let retention = if header.has_producer_id() && self.is_last_of_producer(header) {
            Retention::RetainEmpty
        } else if header.next_offset() == self.upper_bound {
            // The end of the cleaned range stays visible.
            Retention::RetainEmpty
        } else if discard_records {
            Retention::Delete
        } else {
            Retention::DeleteEmpty
        };
        let count = u64::try_from(header.record_count).unwrap_or(0);
        if retention == Retention::Delete {
            stats.records_read += count;
            return Ok(Filtered::Drop);
        }
        if header.record_count == 0 {
            return Ok(match retention {
                Retention::RetainEmpty => Filtered::Keep,
                _ => Filtered::Drop,
            });
        }
        let batch = Bytes::copy_from_slice(bytes);
        let mut kept: Vec<Record> = Vec::new();
        let mut all_kept = true;
        let mut has_tombstones = false;
        for r in
            record::records(&batch, MAX_DECOMPRESSED_BATCH_BYTES).map_err(corrupt_batch(header))?
        {
            let r = r.map_err(corrupt_batch(header))?;
            stats.records_read += 1;
            let retain = if discard_records {
                false
            } else if header.is_control() {
                true
            } else {
                self.retain_record(header, &r, horizon, stats)
            };
            if retain {
                has_tombstones |= r.value.is_none();
                kept.push(r);
            } else {
                all_kept = false;
            }
        }
        stats.records_kept += kept.len() as u64;
        if kept.is_empty() {
            return Ok(match retention {
                Retention::RetainEmpty => Filtered::Replace(empty_batch(header)),
                _ => Filtered::Drop,
            });
        }
        let set_horizon =
            (has_tombstones || (can_discard && header.is_control())) && horizon.is_none();
        if all_kept && !set_horizon {
            return Ok(Filtered::Keep);
        }
        let horizon = if set_horizon {
            Some(self.now_ms.saturating_add(self.delete_retention_ms))
        } else {
            horizon
        };
        encode_retained(header, &mut kept, horizon).map(Filtered::Replace)
    }

    /// Kafka's `shouldRetainRecord` for v2 batches.
    fn retain_record(
        &self,
        header: &BatchHeader,
        r: &Record,
        horizon: Option<i64>,
        stats: &mut CleanStats,
    ) -> bool {
        let offset = r.offset(header);
        if offset > self.map.latest_offset() {
            return true;
        }
        let Some(key) = &r.key else {
            stats.invalid_records += 1;
            return false;
        };
        let latest_for_key = self.map.get(key).is_none_or(|found| offset >= found);
        let retain_deletes = horizon.is_none_or(|h| self.now_ms < h);
        latest_for_key && (r.value.is_some() || retain_deletes)
    }

    /// Whether the batch is what keeps its producer's state: its last data
    /// batch, or its last marker when no data batch is known.
    fn is_last_of_producer(&self, header: &BatchHeader) -> bool {
        self.last_records
            .get(&header.producer_id)
            .is_some_and(|last| match last.last_data_offset {
                Some(offset) => header.last_offset() == offset,
                None => header.is_control() && header.producer_epoch == last.producer_epoch,
            })
    }
}

fn corrupt_batch(header: &BatchHeader) -> impl Fn(RecordError) -> CleanError + '_ {
    move |e| CleanError::corrupt(format_args!("batch at offset {}: {e}", header.base_offset))
}

/// KIP-534: the delete horizon of a batch that has one.
fn delete_horizon(header: &BatchHeader) -> Option<i64> {
    header
        .attributes
        .has_delete_horizon()
        .then_some(header.base_timestamp)
}

/// The batch `header` holding only `kept`, as Kafka's
/// `buildRetainedRecordsInto` builds it: same base offset, last offset delta,
/// producer fields, epoch, flags and codec; the base timestamp is the delete
/// horizon when there is one (KIP-534), else the first record's timestamp.
fn encode_retained(
    header: &BatchHeader,
    kept: &mut [Record],
    horizon: Option<i64>,
) -> Result<Vec<u8>, CleanError> {
    let codec = header
        .compression()
        .ok_or_else(|| CleanError::corrupt("undefined compression codec"))?;
    let timestamps: Vec<i64> = kept.iter().map(|r| r.timestamp(header)).collect();
    let first_timestamp = timestamps.first().copied().unwrap_or(NO_TIMESTAMP);
    let base_timestamp = horizon.unwrap_or(first_timestamp);
    let max_timestamp = match header.timestamp_type() {
        TimestampType::LogAppendTime => header.max_timestamp,
        TimestampType::CreateTime => timestamps.iter().copied().max().unwrap_or(NO_TIMESTAMP),
    };
    let mut section = Vec::new();
    for (r, ts) in kept.iter_mut().zip(&timestamps) {
        r.timestamp_delta = ts.wrapping_sub(base_timestamp);
        r.encode(&mut section);
    }
    let mut batch = vec![0u8; RECORD_BATCH_OVERHEAD];
    compression::compress(codec, None, &section, &mut batch).map_err(CleanError::corrupt)?;
    let batch_length = i32::try_from(batch.len() - LOG_OVERHEAD)
        .map_err(|_| CleanError::corrupt("a cleaned batch would exceed 2 GiB"))?;
    let record_count = i32::try_from(kept.len())
        .map_err(|_| CleanError::corrupt("a cleaned batch would hold too many records"))?;
    BatchHeader {
        batch_length,
        crc: 0,
        attributes: header.attributes.with_delete_horizon(horizon.is_some()),
        base_timestamp,
        max_timestamp,
        record_count,
        ..*header
    }
    .write_to(&mut batch);
    record_batch::update_crc(&mut batch);
    debug_assert!(
        record_batch::validate_batch(&batch).is_ok(),
        "built an invalid batch"
    );
    Ok(batch)
}

/// The header-only batch that stands for `header` when none of its records
/// is kept (Kafka's `DefaultRecordBatch.writeEmptyHeader`): uncompressed, no
/// base timestamp, the original max timestamp and offset range.
fn empty_batch(header: &BatchHeader) -> Vec<u8> {
    let mut batch = vec![0u8; RECORD_BATCH_OVERHEAD];
    BatchHeader {
        batch_length: MIN_BATCH_LENGTH,
        crc: 0,
        attributes: header
            .attributes
            .with_compression(Compression::None)
            .with_delete_horizon(false),
        base_timestamp: NO_TIMESTAMP,
        record_count: 0,
        ..*header
    }
    .write_to(&mut batch);
    record_batch::update_crc(&mut batch);
    batch
}

#[cfg(test)]
mod tests;
