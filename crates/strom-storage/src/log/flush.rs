//! Durability and shutdown: fsyncing appended data and rolled segments (and
//! moving the recovery point), the periodic duties a log manager runs, the
//! clean close, and releasing cached file handles.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{PartitionLog, Writer};
use crate::checkpoint;

impl PartitionLog {
    /// Fsyncs everything appended so far and moves the recovery point to the
    /// log end offset.
    pub fn flush(&self) -> io::Result<()> {
        let mut writer = self.writer.lock();
        self.flush_locked(&mut writer)
    }

    pub(super) fn flush_locked(&self, writer: &mut Writer) -> io::Result<()> {
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
}
