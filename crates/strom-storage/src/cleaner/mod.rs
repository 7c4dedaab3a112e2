//! The log cleaner of a data directory, as Kafka's `LogCleaner` and
//! `LogCleanerManager`: which compacted log to clean next, the
//! `cleaner-offset-checkpoint` file, the offset map's memory, the I/O
//! throttle, and coordination with topic deletion and truncation. The work
//! on one log (what is kept, the crash-safe swap) is in `log::compaction`.
//!
//! # Choosing a log
//!
//! For every log with `cleanup.policy` containing `compact`, the dirty
//! section runs from the cleaner checkpoint (or the log start offset) to the
//! first uncleanable offset: the lowest of the active segment's base offset,
//! the high watermark, the first unstable offset ([`TxnCleanHooks`]) and the
//! base offset of the first segment whose largest timestamp is within
//! `min.compaction.lag.ms` of now. A log is eligible when its dirty ratio
//! (dirty bytes over clean and dirty bytes) is at least
//! `min.cleanable.dirty.ratio`, or when its oldest dirty segment's first
//! batch is older than `max.compaction.lag.ms` (KIP-354), and its dirty
//! section is not empty. The filthiest (highest ratio) is cleaned first.
//!
//! # Files
//!
//! `cleaner-offset-checkpoint` in the data directory holds, in Kafka's
//! checkpoint format, `topic partition offset` for every log cleaned so far:
//! where its dirty section starts. It is written after each clean, drops
//! deleted logs, and comes down when a log is truncated below it.

mod offset_map;
mod throttler;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use strom_protocol::record_batch::BatchHeader;

pub(crate) use self::offset_map::OffsetMap;
pub(crate) use self::throttler::Throttler;
use crate::checkpoint;
use crate::log::compaction::{CleanControl, CleanError, CleanJob, CleanableSection};
use crate::log::{AbortedTxn, PartitionLog, TxnMarker, read_marker};
use crate::manager::{LogManager, TopicPartition, read_offsets};

/// Kafka's name for the cleaner's checkpoint file in the data directory.
pub const CLEANER_OFFSET_CHECKPOINT: &str = "cleaner-offset-checkpoint";
/// Kafka's `log.cleaner.dedupe.buffer.size` default: 128 MiB.
pub const DEFAULT_DEDUPE_BUFFER_SIZE: u64 = 128 << 20;
/// Kafka's `log.cleaner.backoff.ms` default.
pub const DEFAULT_CLEANER_BACKOFF_MS: u64 = 15_000;

/// Settings of the log cleaner, named and defaulted as Kafka's broker configs.
#[derive(Debug, Clone, PartialEq)]
pub struct CleanerConfig {
    /// `log.cleaner.enable`: whether [`LogManager::open`] starts the cleaner
    /// thread. [`LogManager::clean_once`] cleans either way.
    pub enabled: bool,
    /// `log.cleaner.io.max.bytes.per.second`: bytes read plus written per
    /// second. Kafka's default, `Double.MaxValue`, means no limit; so does
    /// any value that is not finite and positive.
    pub io_max_bytes_per_second: f64,
    /// `log.cleaner.dedupe.buffer.size`: the offset map's memory, 24 bytes
    /// per key. A clean maps at most 90 % of that many keys; the rest of the
    /// dirty section waits for the next clean.
    pub dedupe_buffer_size: u64,
    /// `log.cleaner.backoff.ms`: how long the thread sleeps when no log needs
    /// cleaning.
    pub backoff_ms: u64,
}

impl Default for CleanerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            io_max_bytes_per_second: f64::MAX,
            dedupe_buffer_size: DEFAULT_DEDUPE_BUFFER_SIZE,
            backoff_ms: DEFAULT_CLEANER_BACKOFF_MS,
        }
    }
}

/// What transactions plug into the cleaner: the first unstable offset it must
/// not pass, and which batches it may drop (Kafka's last stable offset and
/// `CleanedTransactionMetadata`). The default keeps every transactional
/// batch and marker (and their aborted-transaction index entries) and stops
/// the dirty section at the log's first unstable offset.
pub trait TxnCleanHooks: Send + Sync + fmt::Debug {
    /// The offset of the first record of the log's oldest open transaction;
    /// the cleaner stops below it. `None`: no open transaction. The log's
    /// own first unstable offset (open transactions and markers the high
    /// watermark has not passed) by default.
    fn first_unstable_offset(&self, log: &PartitionLog) -> Option<i64> {
        log.first_unstable_offset()
    }

    /// A walk over `log`'s batches in offset order, covering `[from, to)`:
    /// once to build the offset map, once to rewrite the segments.
    fn begin_pass<'a>(
        &'a self,
        _log: &'a PartitionLog,
        _from: i64,
        _to: i64,
    ) -> Box<dyn TxnCleanPass + 'a> {
        Box::new(KeepTransactions)
    }
}

/// One walk of the cleaner over a log; see [`TxnCleanHooks::begin_pass`].
pub trait TxnCleanPass {
    /// Called for every batch, in offset order. For a data batch, `true`
    /// drops its records (aborted data). For a control batch, `true` says its
    /// transaction has no data left, so the marker gets a delete horizon and
    /// goes once that has passed.
    fn discard(&mut self, header: &BatchHeader, batch: &[u8]) -> bool;
}

/// Hooks that keep every transactional batch and marker (the dirty section
/// still ends at the first unstable offset).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTxnCleanHooks;

impl TxnCleanHooks for NoTxnCleanHooks {}

/// Kafka's transaction rules for the cleaner (`CleanedTransactionMetadata`),
/// the default: the data batches of aborted transactions go; an abort marker
/// stays while the clean still finds data of its transaction and may go
/// (after `delete.retention.ms`, like a tombstone) once none is left; a
/// commit marker may go once the clean finds no data of its transaction left
/// either (its records are then plain records, compacted like any other).
#[derive(Debug, Default, Clone, Copy)]
pub struct TransactionCleanHooks;

impl TxnCleanHooks for TransactionCleanHooks {
    fn begin_pass<'a>(
        &'a self,
        log: &'a PartitionLog,
        from: i64,
        to: i64,
    ) -> Box<dyn TxnCleanPass + 'a> {
        let mut aborted = log.aborted_transactions(from, to).unwrap_or_else(|e| {
            // Without the index, nothing can be known aborted: keep it all.
            tracing::warn!(log = %log.dir().display(), error = %e, "reading the aborted-transaction index failed; this clean keeps every transaction");
            Vec::new()
        });
        aborted.sort_by_key(|t| t.first_offset);
        Box::new(TransactionPass {
            aborted: aborted.into(),
            ongoing_aborted: HashMap::new(),
            ongoing_committed: HashSet::new(),
        })
    }
}

/// One walk of [`TransactionCleanHooks`].
struct TransactionPass {
    /// Aborted transactions not reached yet, by first offset.
    aborted: std::collections::VecDeque<AbortedTxn>,
    /// Producers inside an aborted transaction at this point of the walk,
    /// and whether a data batch of it was seen.
    ongoing_aborted: HashMap<i64, bool>,
    /// Producers inside a (to be) committed transaction with data seen.
    ongoing_committed: HashSet<i64>,
}

impl TxnCleanPass for TransactionPass {
    fn discard(&mut self, header: &BatchHeader, batch: &[u8]) -> bool {
        while self
            .aborted
            .front()
            .is_some_and(|t| t.first_offset <= header.last_offset())
        {
            if let Some(t) = self.aborted.pop_front() {
                self.ongoing_aborted.insert(t.producer_id, false);
            }
        }
        let producer_id = header.producer_id;
        if header.is_control() {
            return match read_marker(batch).map(|m| m.kind) {
                // Kept while data of the transaction was still found.
                Some(TxnMarker::Abort) => {
                    !self.ongoing_aborted.remove(&producer_id).unwrap_or(false)
                }
                Some(TxnMarker::Commit) => !self.ongoing_committed.remove(&producer_id),
                // An empty control batch was cleaned already.
                None => true,
            };
        }
        if !header.is_transactional() {
            return false;
        }
        match self.ongoing_aborted.get_mut(&producer_id) {
            Some(seen) => {
                *seen = true;
                true
            }
            None => {
                self.ongoing_committed.insert(producer_id);
                false
            }
        }
    }
}

struct KeepTransactions;

impl TxnCleanPass for KeepTransactions {
    fn discard(&mut self, _header: &BatchHeader, _batch: &[u8]) -> bool {
        false
    }
}

/// How a clean ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CleanOutcome {
    /// Cleaned up to [`CleanStats::end_offset`], where the checkpoint now is.
    Completed,
    /// Stopped early: shutdown, deletion or truncation of the log asked for
    /// it, or the log changed under the clean. Groups already swapped in stay
    /// (they hold the same latest values); the rest is cleaned later.
    Abandoned(String),
    /// The log could not be cleaned (corrupt data, an I/O failure); the
    /// cleaner skips it until the next start.
    Failed(String),
}

/// Figures of one clean, as Kafka's `CleanerStats`.
#[derive(Debug, Clone)]
pub struct CleanStats {
    pub topic_partition: TopicPartition,
    pub outcome: CleanOutcome,
    /// Dirty bytes over clean and dirty bytes when the log was chosen.
    pub dirty_ratio: f64,
    pub first_dirty_offset: i64,
    pub first_uncleanable_offset: i64,
    /// Where the next clean's dirty section starts: the first uncleanable
    /// offset, or less when the offset map filled.
    pub end_offset: i64,
    /// Bytes and records read to build the offset map.
    pub map_bytes_read: u64,
    pub map_records_read: u64,
    /// Keys in the offset map and the share of its slots they took.
    pub map_keys: u64,
    pub map_utilization: f64,
    /// Bytes of log read and written by the rewrite.
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Records read and kept by the rewrite.
    pub records_read: u64,
    pub records_kept: u64,
    /// Records without a key, which a compacted log cannot keep.
    pub invalid_records: u64,
    /// Segments rewritten, and cleaned segments swapped in for them.
    pub segments_read: usize,
    pub segments_written: usize,
    pub map_duration: Duration,
    /// The whole clean, map included.
    pub duration: Duration,
    /// Time spent paused by `log.cleaner.io.max.bytes.per.second`.
    pub throttled: Duration,
}

impl CleanStats {
    pub fn new(topic_partition: TopicPartition) -> Self {
        Self {
            topic_partition,
            outcome: CleanOutcome::Completed,
            dirty_ratio: 0.0,
            first_dirty_offset: 0,
            first_uncleanable_offset: 0,
            end_offset: 0,
            map_bytes_read: 0,
            map_records_read: 0,
            map_keys: 0,
            map_utilization: 0.0,
            bytes_read: 0,
            bytes_written: 0,
            records_read: 0,
            records_kept: 0,
            invalid_records: 0,
            segments_read: 0,
            segments_written: 0,
            map_duration: Duration::ZERO,
            duration: Duration::ZERO,
            throttled: Duration::ZERO,
        }
    }

    /// Records the rewrite dropped.
    pub fn records_removed(&self) -> u64 {
        self.records_read - self.records_kept.min(self.records_read)
    }
}

/// Who is being cleaned, who must not be, and where each log's dirty
/// section starts.
#[derive(Debug, Default)]
struct CleanerState {
    /// The cleaner checkpoint: first dirty offset per log.
    checkpoints: HashMap<TopicPartition, i64>,
    in_progress: Option<TopicPartition>,
    /// Logs being truncated or deleted: not cleaned. A count, as pauses nest.
    paused: HashMap<TopicPartition, u32>,
    /// Logs whose clean failed: skipped until restart.
    uncleanable: HashSet<TopicPartition>,
}

/// The cleaner of one data directory; [`LogManager`] owns it.
#[derive(Debug)]
pub(crate) struct LogCleaner {
    config: CleanerConfig,
    checkpoint_path: PathBuf,
    state: Mutex<CleanerState>,
    /// Signalled when a clean ends, and on abort and stop, which also wake
    /// the cleaner from a throttle pause or its backoff.
    changed: Condvar,
    /// The clean in progress must stop (its log is being truncated or deleted).
    abort: AtomicBool,
    stopped: AtomicBool,
    /// Held for a whole clean, so cleans run one at a time.
    run: Mutex<Throttler>,
    hooks: RwLock<Arc<dyn TxnCleanHooks>>,
}

impl LogCleaner {
    /// A cleaner for the logs of `data_dir`, starting from its checkpoint
    /// (an unreadable one is ignored: every log is then cleaned from its
    /// start, which is slower and safe).
    pub(crate) fn new(data_dir: &Path, config: CleanerConfig) -> Self {
        let checkpoint_path = data_dir.join(CLEANER_OFFSET_CHECKPOINT);
        let checkpoints = read_offsets(&checkpoint_path);
        Self {
            run: Mutex::new(Throttler::new(config.io_max_bytes_per_second)),
            config,
            checkpoint_path,
            state: Mutex::new(CleanerState {
                checkpoints,
                ..CleanerState::default()
            }),
            changed: Condvar::new(),
            abort: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            hooks: RwLock::new(Arc::new(TransactionCleanHooks)),
        }
    }

    pub(crate) fn set_hooks(&self, hooks: Arc<dyn TxnCleanHooks>) {
        *self.hooks.write() = hooks;
    }

    /// Where `tp`'s dirty section starts, if it was ever cleaned.
    pub(crate) fn checkpoint_of(&self, tp: &TopicPartition) -> Option<i64> {
        self.state.lock().checkpoints.get(tp).copied()
    }

    /// Stops the cleaner: the clean in progress aborts, the thread ends.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        let _state = self.state.lock();
        self.changed.notify_all();
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Waits `log.cleaner.backoff.ms`, or less if stopped.
    pub(crate) fn backoff(&self) {
        let deadline = Instant::now() + Duration::from_millis(self.config.backoff_ms);
        let mut state = self.state.lock();
        while !self.is_stopped() {
            if self.changed.wait_until(&mut state, deadline).timed_out() {
                break;
            }
        }
    }

    /// A throttle pause, cut short by an abort or stop.
    fn pause(&self, duration: Duration) {
        let deadline = Instant::now() + duration;
        let mut state = self.state.lock();
        while !self.abort.load(Ordering::Acquire) && !self.is_stopped() {
            if self.changed.wait_until(&mut state, deadline).timed_out() {
                break;
            }
        }
    }

    /// Cleans the filthiest eligible log of `manager`, if any; see the module
    /// documentation. Runs in the caller's thread.
    pub(crate) fn clean_once(&self, manager: &LogManager) -> Option<CleanStats> {
        let mut throttler = self.run.lock();
        if self.is_stopped() {
            return None;
        }
        let now = manager.clock().now_ms();
        let hooks = Arc::clone(&self.hooks.read());
        let (tp, log, section) = self.grab_filthiest(manager, hooks.as_ref(), now)?;
        // Before the first swap can leave offset gaps in this log, its
        // checkpoint entry must exist: recovery tolerates gaps only in logs
        // that are compacted now or have an entry (the policy may change).
        {
            let mut state = self.state.lock();
            if !state.checkpoints.contains_key(&tp) {
                state
                    .checkpoints
                    .insert(tp.clone(), section.first_dirty_offset);
                self.write_checkpoint(manager, &state);
            }
        }
        let started = Instant::now();
        let mut stats = CleanStats::new(tp.clone());
        stats.dirty_ratio = section.dirty_ratio();
        stats.first_dirty_offset = section.first_dirty_offset;
        stats.first_uncleanable_offset = section.first_uncleanable_offset;
        let span = section.first_uncleanable_offset - section.first_dirty_offset;
        let mut map = OffsetMap::new(
            self.config.dedupe_buffer_size,
            u64::try_from(span).unwrap_or(0),
        );
        let mut control = Control {
            cleaner: self,
            throttler: &mut throttler,
            throttled: Duration::ZERO,
        };
        let result = log.clean(
            &section,
            &mut CleanJob {
                map: &mut map,
                control: &mut control,
                hooks: hooks.as_ref(),
                now_ms: now,
                stats: &mut stats,
                #[cfg(test)]
                crash_at: None,
            },
        );
        stats.throttled = control.throttled;
        stats.duration = started.elapsed();
        drop(map);

        let mut state = self.state.lock();
        state.in_progress = None;
        self.abort.store(false, Ordering::Release);
        stats.outcome = match result {
            Ok(end_offset) => {
                if end_offset > section.first_dirty_offset {
                    state.checkpoints.insert(tp.clone(), end_offset);
                    self.write_checkpoint(manager, &state);
                }
                tracing::info!(
                    log = %tp,
                    first_dirty_offset = section.first_dirty_offset,
                    end_offset,
                    dirty_ratio = stats.dirty_ratio,
                    read_bytes = stats.bytes_read,
                    written_bytes = stats.bytes_written,
                    records_read = stats.records_read,
                    records_kept = stats.records_kept,
                    elapsed_ms = stats.duration.as_millis(),
                    "cleaned log"
                );
                CleanOutcome::Completed
            }
            Err(CleanError::Aborted) => {
                tracing::info!(log = %tp, "log cleaning aborted");
                CleanOutcome::Abandoned("aborted".to_owned())
            }
            Err(CleanError::Abandoned(why)) => {
                tracing::info!(log = %tp, why, "log cleaning abandoned");
                CleanOutcome::Abandoned(why.to_owned())
            }
            Err(CleanError::Failed(e)) => {
                tracing::error!(log = %tp, error = %e, "log cleaning failed; the log is not cleaned again until restart");
                state.uncleanable.insert(tp.clone());
                CleanOutcome::Failed(e.to_string())
            }
            #[cfg(test)]
            Err(CleanError::Crashed) => CleanOutcome::Failed("simulated crash".to_owned()),
        };
        self.changed.notify_all();
        Some(stats)
    }

    /// Picks the filthiest eligible log and marks it in progress.
    fn grab_filthiest(
        &self,
        manager: &LogManager,
        hooks: &dyn TxnCleanHooks,
        now: i64,
    ) -> Option<(TopicPartition, Arc<PartitionLog>, CleanableSection)> {
        let (checkpoints, skipped): (HashMap<TopicPartition, i64>, HashSet<TopicPartition>) = {
            let state = self.state.lock();
            let skipped = state
                .paused
                .keys()
                .chain(state.uncleanable.iter())
                .cloned()
                .collect();
            (state.checkpoints.clone(), skipped)
        };
        let mut best: Option<(TopicPartition, Arc<PartitionLog>, CleanableSection)> = None;
        for (tp, log) in manager.logs() {
            let config = log.config();
            if !config.compact || log.is_offline() || log.is_closed() || skipped.contains(&tp) {
                continue;
            }
            let section = match log.cleanable_section(checkpoints.get(&tp).copied(), hooks, now) {
                Ok(section) => section,
                Err(e) => {
                    tracing::warn!(log = %tp, error = %e, "could not measure a log for cleaning");
                    continue;
                }
            };
            let ratio = section.dirty_ratio();
            let eligible = section.dirty_bytes > 0
                // Kafka's LogCleanerManager: strictly above the ratio.
                && (ratio > config.min_cleanable_dirty_ratio
                    || section.max_compaction_delay_ms > 0);
            if eligible
                && best
                    .as_ref()
                    .is_none_or(|(_, _, b)| ratio > b.dirty_ratio())
            {
                best = Some((tp, log, section));
            }
        }
        let (tp, log, section) = best?;
        let mut state = self.state.lock();
        // Deleted or paused since it was measured: not now.
        let live = manager.get(&tp).is_some_and(|l| Arc::ptr_eq(&l, &log));
        if !live || state.paused.contains_key(&tp) || self.is_stopped() {
            return None;
        }
        state.in_progress = Some(tp.clone());
        Some((tp, log, section))
    }

    /// Keeps the cleaner off `tp` until [`Self::resume`]: a clean of it in
    /// progress is aborted, and this returns once it has stopped (Kafka's
    /// `abortAndPauseCleaning`).
    pub(crate) fn abort_and_pause(&self, tp: &TopicPartition) {
        let mut state = self.state.lock();
        *state.paused.entry(tp.clone()).or_default() += 1;
        if state.in_progress.as_ref() == Some(tp) {
            self.abort.store(true, Ordering::Release);
            self.changed.notify_all();
            while state.in_progress.as_ref() == Some(tp) {
                self.changed.wait(&mut state);
            }
        }
    }

    /// Undoes one [`Self::abort_and_pause`].
    pub(crate) fn resume(&self, tp: &TopicPartition) {
        let mut state = self.state.lock();
        if let Some(count) = state.paused.get_mut(tp) {
            *count -= 1;
            if *count == 0 {
                state.paused.remove(tp);
            }
        }
    }

    /// After `tp` was truncated: a checkpoint above `offset` comes down to it
    /// (Kafka's `maybeTruncateCheckpoint`), so data appended again there is
    /// cleaned.
    pub(crate) fn truncate_checkpoint(
        &self,
        manager: &LogManager,
        tp: &TopicPartition,
        offset: i64,
    ) {
        let mut state = self.state.lock();
        if let Some(checkpoint) = state.checkpoints.get_mut(tp)
            && *checkpoint > offset
        {
            *checkpoint = offset;
            self.write_checkpoint(manager, &state);
        }
    }

    /// Forgets a deleted log: its pause, checkpoint and failure.
    pub(crate) fn forget(&self, manager: &LogManager, tp: &TopicPartition) {
        let mut state = self.state.lock();
        state.paused.remove(tp);
        state.uncleanable.remove(tp);
        if state.checkpoints.remove(tp).is_some() {
            self.write_checkpoint(manager, &state);
        }
    }

    /// Writes the checkpoint of every log the manager still has.
    fn write_checkpoint(&self, manager: &LogManager, state: &CleanerState) {
        let mut lines: Vec<String> = state
            .checkpoints
            .iter()
            .filter(|(tp, _)| manager.get(tp).is_some())
            .map(|(tp, offset)| format!("{} {} {offset}", tp.topic, tp.partition))
            .collect();
        lines.sort();
        if let Err(e) = checkpoint::write(&self.checkpoint_path, &lines) {
            // The next clean from an older checkpoint redoes work, no harm.
            tracing::warn!(path = %self.checkpoint_path.display(), error = %e, "writing the cleaner checkpoint failed");
        }
    }
}

/// [`CleanControl`] for a clean the cleaner runs.
struct Control<'a> {
    cleaner: &'a LogCleaner,
    throttler: &'a mut Throttler,
    throttled: Duration,
}

impl CleanControl for Control<'_> {
    fn check(&self) -> Result<(), CleanError> {
        if self.cleaner.abort.load(Ordering::Acquire) || self.cleaner.is_stopped() {
            Err(CleanError::Aborted)
        } else {
            Ok(())
        }
    }

    fn throttle(&mut self, bytes: u64) {
        if let Some(pause) = self.throttler.observe(bytes) {
            self.throttled += pause;
            self.cleaner.pause(pause);
        }
    }
}
