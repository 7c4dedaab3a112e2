//! Retention and the log start offset: Kafka's time and size retention
//! (`retention.ms`, `retention.bytes`), moving the log start offset up
//! (DeleteRecords), and taking segments out of the log with their files
//! deleted after `file.delete.delay.ms`.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::segment::Segment;
use super::{PartitionLog, Writer};
use crate::error::StorageError;

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

impl PartitionLog {
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

    /// Takes segments out of the log and renames their files to `*.deleted`;
    /// the files go at `due_ms` (`file.delete.delay.ms`), so reads in flight
    /// finish first.
    pub(super) fn remove_segments(
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

    /// Deletes the files of removed segments whose delay has passed.
    pub fn delete_due_segments(&self) -> io::Result<()> {
        let mut writer = self.writer.lock();
        let now = self.clock.now_ms();
        self.delete_due_segments_locked(&mut writer, now)
    }

    pub(super) fn delete_due_segments_locked(
        &self,
        writer: &mut Writer,
        now: i64,
    ) -> io::Result<()> {
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
