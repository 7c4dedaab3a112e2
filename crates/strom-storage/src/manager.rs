//! A data directory of partition logs, as Kafka's `LogManager` keeps one:
//!
//! ```text
//! strom-data/
//!   .lock                              held while a process uses the directory
//!   .kafka_cleanshutdown               present only after a clean shutdown
//!   recovery-point-offset-checkpoint   where each log's fsynced data ends
//!   log-start-offset-checkpoint        each log's start offset
//!   cleaner-offset-checkpoint          where each compacted log's dirty part starts
//!   orders-0/  orders-1/  ...          one PartitionLog per partition
//! ```
//!
//! At open, logs load in parallel on `recovery_threads` threads; without the
//! clean-shutdown marker each is recovered from its recovery point. A
//! background thread fsyncs rolled segments, honours `flush.ms`, deletes
//! removed segments after `file.delete.delay.ms`, writes the checkpoints and,
//! every `log.retention.check.interval.ms`, deletes segments past retention.
//! A second thread runs the log cleaner ([`crate::cleaner`]) on compacted
//! logs; its checkpoint is `cleaner-offset-checkpoint`.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};

use crate::checkpoint;
use crate::cleaner::{CleanStats, CleanerConfig, LogCleaner, TxnCleanHooks};
use crate::clock::Clock;
use crate::config::LogConfig;
use crate::error::StorageError;
use crate::file_cache::{DEFAULT_OPEN_FILES_MAX, FileCache};
use crate::log::{LoadOptions, PartitionLog};

/// Kafka's name for the marker of a clean shutdown.
pub const CLEAN_SHUTDOWN_FILE: &str = ".kafka_cleanshutdown";
pub const RECOVERY_POINT_CHECKPOINT: &str = "recovery-point-offset-checkpoint";
pub const LOG_START_OFFSET_CHECKPOINT: &str = "log-start-offset-checkpoint";
const LOCK_FILE: &str = ".lock";
/// Suffix of a partition directory whose topic was deleted.
const DELETE_DIR_SUFFIX: &str = "-delete";
/// Kafka's longest legal topic name.
const TOPIC_NAME_MAX_LEN: usize = 249;
/// Longest file name most Linux file systems take (ext4, xfs, tmpfs): the
/// directory of a deleted partition must fit it, whatever the topic name.
const FILE_NAME_MAX_BYTES: usize = 255;

/// A topic name and a partition number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }

    /// Kafka's directory name: `topic-partition`.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }

    /// Parses a directory name; `None` for anything that is not a live
    /// partition directory of a legal topic.
    pub fn from_dir_name(name: &str) -> Option<Self> {
        let (topic, partition) = name.rsplit_once('-')?;
        if partition.is_empty() || !partition.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let partition = partition.parse().ok()?;
        is_legal_topic_name(topic).then(|| Self::new(topic, partition))
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// The name a partition directory takes while it is deleted, as Kafka's
/// `UnifiedLog.logDeleteDirName`: `<topic>-<partition>.<unique>-delete`, with
/// the topic cut short so the whole name fits [`FILE_NAME_MAX_BYTES`] (a
/// 249-character topic would otherwise give a name the file system refuses).
/// `unique` tells apart successive deletions of the same partition.
pub fn delete_dir_name(tp: &TopicPartition, unique: &str) -> String {
    let suffix = format!("-{}.{unique}{DELETE_DIR_SUFFIX}", tp.partition);
    let mut keep = tp
        .topic
        .len()
        .min(FILE_NAME_MAX_BYTES.saturating_sub(suffix.len()));
    // Legal topic names are ASCII; stay on a character boundary regardless.
    while !tp.topic.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{suffix}", &tp.topic[..keep])
}

/// Kafka's rule: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn is_legal_topic_name(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= TOPIC_NAME_MAX_LEN
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Settings of a log manager.
#[derive(Debug, Clone)]
pub struct LogManagerConfig {
    /// The data directory (`log.dirs`, one directory).
    pub data_dir: PathBuf,
    /// Settings for logs created without their own.
    pub default_log_config: LogConfig,
    /// Bound on open segment and index files (see [`FileCache`]).
    pub open_files_max: usize,
    /// `num.recovery.threads.per.data.dir`: logs loaded in parallel at open.
    pub recovery_threads: usize,
    /// How often the background thread runs each log's periodic duties
    /// (Kafka's `log.flush.scheduler.interval.ms`).
    pub periodic_interval_ms: u64,
    /// `log.flush.offset.checkpoint.interval.ms`: how often the recovery points
    /// and log start offsets are checkpointed.
    pub checkpoint_interval_ms: u64,
    /// Directories in the data directory that belong to someone else (the
    /// broker's metadata log): neither loaded nor warned about.
    pub ignored_dirs: Vec<String>,
    /// `log.retention.check.interval.ms`: how often the background thread
    /// deletes segments past retention (rounded to whole periodic rounds).
    pub retention_check_interval_ms: u64,
    /// The log cleaner for compacted topics.
    pub cleaner: CleanerConfig,
}

/// Kafka's `log.retention.check.interval.ms` default: 5 minutes.
pub const DEFAULT_RETENTION_CHECK_INTERVAL_MS: u64 = 300_000;

impl LogManagerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            default_log_config: LogConfig::default(),
            open_files_max: DEFAULT_OPEN_FILES_MAX,
            recovery_threads: 2,
            periodic_interval_ms: 500,
            checkpoint_interval_ms: 60_000,
            ignored_dirs: Vec::new(),
            retention_check_interval_ms: DEFAULT_RETENTION_CHECK_INTERVAL_MS,
            cleaner: CleanerConfig::default(),
        }
    }
}

/// Stop signal for the background thread.
#[derive(Debug, Default)]
struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

/// All partition logs of one data directory.
#[derive(Debug)]
pub struct LogManager {
    config: LogManagerConfig,
    files: Arc<FileCache>,
    clock: Arc<dyn Clock>,
    logs: RwLock<HashMap<TopicPartition, Arc<PartitionLog>>>,
    stop: Arc<Stop>,
    background: Mutex<Option<JoinHandle<()>>>,
    cleaner: Arc<LogCleaner>,
    cleaner_thread: Mutex<Option<JoinHandle<()>>>,
    shut_down: AtomicBool,
    /// Renamed directories of deleted logs whose removal failed (a disk
    /// error, or left by an earlier run): the background thread retries them
    /// every round, so their space comes back once the disk allows it.
    pending_deletes: Mutex<Vec<PathBuf>>,
    /// Makes each delete directory name unique, with the time.
    delete_seq: AtomicU64,
    /// Whether the marker of a clean shutdown was there at open: the logs
    /// hold everything they held when the last process stopped.
    clean_shutdown: bool,
    /// Held (locked) for the life of the manager.
    _lock: File,
}

impl LogManager {
    /// Whether the previous process shut down cleanly (its marker was
    /// found at open). After an unclean shutdown the logs may lack records
    /// that were written but not flushed (a power loss), records the broker
    /// may have acknowledged: it must not lead on them (KIP-966).
    pub fn opened_after_clean_shutdown(&self) -> bool {
        self.clean_shutdown
    }

    /// Opens the data directory, loading (and if needed recovering) every
    /// partition log in it. `log_config` gives each existing partition its
    /// settings (topic configs live in the cluster metadata); it matters for
    /// recovery, which checks offsets are contiguous unless the topic is
    /// compacted.
    pub fn open(
        config: LogManagerConfig,
        clock: Arc<dyn Clock>,
        log_config: &(dyn Fn(&TopicPartition) -> LogConfig + Sync),
    ) -> Result<Arc<Self>, StorageError> {
        let dir = config.data_dir.clone();
        let io = |e| StorageError::io(&dir, e);
        fs::create_dir_all(&dir).map_err(io)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StorageError::InvalidRequest(format!(
                    "data directory {} is in use by another process",
                    dir.display()
                )));
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        let marker = dir.join(CLEAN_SHUTDOWN_FILE);
        let clean_shutdown = marker.exists();
        let recovery_points = read_offsets(&dir.join(RECOVERY_POINT_CHECKPOINT));
        let log_starts = read_offsets(&dir.join(LOG_START_OFFSET_CHECKPOINT));
        let cleaned = read_offsets(&dir.join(crate::cleaner::CLEANER_OFFSET_CHECKPOINT));

        let mut partitions = Vec::new();
        let mut pending_deletes = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            if !entry.file_type().map_err(io)?.is_dir() {
                continue;
            }
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if config.ignored_dirs.iter().any(|d| d == name) {
                continue;
            }
            if name.ends_with(DELETE_DIR_SUFFIX) {
                // A deletion interrupted by a crash: finish it. A failure
                // must not stop the broker: the background thread retries.
                if let Err(e) = fs::remove_dir_all(entry.path()) {
                    tracing::error!(dir = %entry.path().display(), error = %e, "removing the directory of a deleted log failed; retrying in the background");
                    pending_deletes.push(entry.path());
                }
                continue;
            }
            match TopicPartition::from_dir_name(name) {
                Some(tp) => partitions.push(tp),
                None => {
                    tracing::warn!(dir = %entry.path().display(), "ignoring a directory that is not a partition log")
                }
            }
        }
        partitions.sort();

        let files = Arc::new(FileCache::new(config.open_files_max));
        let loaded = run_parallel(&partitions, config.recovery_threads, |tp| {
            let options = LoadOptions {
                clean_shutdown,
                recovery_point: recovery_points.get(tp).copied().unwrap_or(0),
                log_start_offset: log_starts.get(tp).copied(),
                offset_gaps: cleaned.contains_key(tp),
            };
            PartitionLog::open(
                dir.join(tp.dir_name()),
                log_config(tp),
                Arc::clone(&files),
                Arc::clone(&clock),
                options,
            )
        })
        .into_iter()
        .collect::<Result<Vec<PartitionLog>, StorageError>>()?;
        if clean_shutdown {
            // The marker only vouches for the shutdown before this start.
            fs::remove_file(&marker).map_err(io)?;
        }
        checkpoint::sync_dir(&dir).map_err(io)?;
        tracing::info!(dir = %dir.display(), logs = loaded.len(), clean_shutdown, "loaded logs");

        let cleaner = Arc::new(LogCleaner::new(&dir, config.cleaner.clone()));
        let manager = Arc::new(Self {
            config,
            files,
            clock,
            logs: RwLock::new(
                partitions
                    .into_iter()
                    .zip(loaded.into_iter().map(Arc::new))
                    .collect(),
            ),
            stop: Arc::new(Stop::default()),
            background: Mutex::new(None),
            cleaner,
            cleaner_thread: Mutex::new(None),
            clean_shutdown,
            shut_down: AtomicBool::new(false),
            pending_deletes: Mutex::new(pending_deletes),
            delete_seq: AtomicU64::new(0),
            _lock: lock,
        });
        manager.checkpoint()?;
        let weak = Arc::downgrade(&manager);
        let stop = Arc::clone(&manager.stop);
        let interval = Duration::from_millis(manager.config.periodic_interval_ms.max(1));
        let periodic_ms = manager.config.periodic_interval_ms.max(1);
        let every = Every {
            checkpoint: (manager.config.checkpoint_interval_ms / periodic_ms).max(1),
            retention: (manager.config.retention_check_interval_ms / periodic_ms).max(1),
        };
        let handle = std::thread::Builder::new()
            .name("strom-log-background".to_owned())
            .spawn(move || background_loop(&weak, &stop, interval, every))
            .map_err(|e| StorageError::io(&manager.config.data_dir, e))?;
        *manager.background.lock() = Some(handle);
        if manager.config.cleaner.enabled {
            let weak = Arc::downgrade(&manager);
            let cleaner = Arc::clone(&manager.cleaner);
            let handle = std::thread::Builder::new()
                .name("strom-log-cleaner".to_owned())
                .spawn(move || cleaner_loop(&weak, &cleaner))
                .map_err(|e| StorageError::io(&manager.config.data_dir, e))?;
            *manager.cleaner_thread.lock() = Some(handle);
        }
        Ok(manager)
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn file_cache(&self) -> &Arc<FileCache> {
        &self.files
    }

    pub fn get(&self, tp: &TopicPartition) -> Option<Arc<PartitionLog>> {
        self.logs.read().get(tp).cloned()
    }

    /// The log of `tp`, created with `config` if it does not exist.
    pub fn get_or_create(
        &self,
        tp: &TopicPartition,
        config: LogConfig,
    ) -> Result<Arc<PartitionLog>, StorageError> {
        if let Some(log) = self.get(tp) {
            return Ok(log);
        }
        if !is_legal_topic_name(&tp.topic) || tp.partition < 0 {
            return Err(StorageError::InvalidRequest(format!(
                "illegal partition {tp}"
            )));
        }
        let mut logs = self.logs.write();
        if let Some(log) = logs.get(tp) {
            return Ok(Arc::clone(log));
        }
        let log = Arc::new(PartitionLog::open(
            self.config.data_dir.join(tp.dir_name()),
            config,
            Arc::clone(&self.files),
            Arc::clone(&self.clock),
            LoadOptions {
                clean_shutdown: true,
                ..LoadOptions::default()
            },
        )?);
        checkpoint::sync_dir(&self.config.data_dir)
            .map_err(|e| StorageError::io(&self.config.data_dir, e))?;
        logs.insert(tp.clone(), Arc::clone(&log));
        Ok(log)
    }

    /// Deletes the log of `tp`: closes it and every handle of its files,
    /// renames its directory to [`delete_dir_name`] (so a crash cannot bring
    /// it back) and removes it. Returns whether it existed.
    ///
    /// If the rename fails the log stays known (closed) and the error is
    /// returned: the caller retries. If only the removal fails, the log is
    /// gone for every purpose and the background thread retries the removal.
    pub fn delete(&self, tp: &TopicPartition) -> Result<bool, StorageError> {
        let Some(log) = self.logs.write().remove(tp) else {
            return Ok(false);
        };
        // A clean of it stops (and removes what it wrote aside) before the
        // directory goes; then the cleaner forgets it.
        self.cleaner.abort_and_pause(tp);
        let deleted = self.delete_files(tp, &log);
        if deleted.is_err() {
            // Still on disk under its own name: keep it known so a retry (or
            // a new topic of the same name) finds it rather than its data.
            self.logs.write().entry(tp.clone()).or_insert(log);
        }
        self.cleaner.forget(self, tp);
        deleted.map(|()| true)
    }

    fn delete_files(&self, tp: &TopicPartition, log: &PartitionLog) -> Result<(), StorageError> {
        let dir = log.dir().to_path_buf();
        if let Err(e) = log.close() {
            tracing::warn!(log = %tp, error = %e, "closing a deleted log failed");
        }
        let unique = format!(
            "{:x}{:04x}",
            self.clock.now_ms(),
            self.delete_seq.fetch_add(1, Ordering::Relaxed)
        );
        let doomed = self.config.data_dir.join(delete_dir_name(tp, &unique));
        let io = |e| StorageError::io(&dir, e);
        fs::rename(&dir, &doomed).map_err(io)?;
        // Handles a reader opened since the close go too; after the rename
        // nothing can open the files again.
        log.release_files();
        if let Err(e) = checkpoint::sync_dir(&self.config.data_dir) {
            tracing::warn!(dir = %self.config.data_dir.display(), error = %e, "fsync of the data directory failed after renaming a deleted log");
        }
        if let Err(e) = fs::remove_dir_all(&doomed) {
            tracing::error!(dir = %doomed.display(), error = %e, "removing the directory of a deleted log failed; retrying in the background");
            self.pending_deletes.lock().push(doomed);
        }
        Ok(())
    }

    /// Retries removing the directories of deleted logs that could not be
    /// removed before; returns how many remain. The background thread runs
    /// it every round; public so tests can drive it.
    pub fn retry_pending_deletes(&self) -> usize {
        let mut pending = self.pending_deletes.lock();
        pending.retain(|dir| match fs::remove_dir_all(dir) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "removed the directory of a deleted log");
                false
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "removing the directory of a deleted log failed again");
                true
            }
        });
        pending.len()
    }

    /// Every log, in no particular order.
    pub fn logs(&self) -> Vec<(TopicPartition, Arc<PartitionLog>)> {
        self.logs
            .read()
            .iter()
            .map(|(tp, log)| (tp.clone(), Arc::clone(log)))
            .collect()
    }

    /// Heap memory held by all logs.
    pub fn memory_bytes(&self) -> usize {
        self.logs.read().values().map(|l| l.memory_bytes()).sum()
    }

    /// Writes the recovery points and log start offsets of every log.
    pub fn checkpoint(&self) -> Result<(), StorageError> {
        let logs = self.logs();
        let dir = &self.config.data_dir;
        let lines = |f: &dyn Fn(&PartitionLog) -> i64| -> Vec<String> {
            let mut lines: Vec<String> = logs
                .iter()
                .map(|(tp, log)| format!("{} {} {}", tp.topic, tp.partition, f(log)))
                .collect();
            lines.sort();
            lines
        };
        checkpoint::write(
            &dir.join(RECOVERY_POINT_CHECKPOINT),
            &lines(&|l| l.recovery_point()),
        )
        .map_err(|e| StorageError::io(dir, e))?;
        checkpoint::write(
            &dir.join(LOG_START_OFFSET_CHECKPOINT),
            &lines(&|l| l.log_start_offset()),
        )
        .map_err(|e| StorageError::io(dir, e))
    }

    /// Clean shutdown: stops the background and cleaner threads (a clean in
    /// progress is abandoned; what it wrote aside goes), closes every log (fsync,
    /// sealed indexes), writes the checkpoints and then the clean-shutdown
    /// marker, so the next start skips recovery.
    pub fn shutdown(&self) -> Result<(), StorageError> {
        if self.shut_down.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.stop_background();
        // Close on the recovery threads: each close fsyncs a few files.
        let logs = self.logs();
        let closed = run_parallel(&logs, self.config.recovery_threads, |(tp, log)| {
            log.close().map_err(|e| {
                tracing::error!(log = %tp, error = %e, "closing log failed");
                StorageError::io(log.dir(), e)
            })
        });
        let first_error = closed.into_iter().find_map(Result::err);
        self.checkpoint()?;
        if let Some(e) = first_error {
            // No marker: the next start recovers.
            return Err(e);
        }
        let dir = &self.config.data_dir;
        let io = |e| StorageError::io(dir, e);
        File::create(dir.join(CLEAN_SHUTDOWN_FILE))
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        checkpoint::sync_dir(dir).map_err(io)?;
        tracing::info!(dir = %dir.display(), "logs shut down cleanly");
        Ok(())
    }

    fn stop_background(&self) {
        *self.stop.stopped.lock() = true;
        self.stop.wake.notify_all();
        // Aborts a clean in progress, wherever it runs.
        self.cleaner.stop();
        for (thread, name) in [
            (&self.background, "log background"),
            (&self.cleaner_thread, "log cleaner"),
        ] {
            let Some(handle) = thread.lock().take() else {
                continue;
            };
            // The last reference can be dropped by one of these threads itself
            // (it holds one while it works): it then just ends its loop.
            if handle.thread().id() == std::thread::current().id() {
                continue;
            }
            if handle.join().is_err() {
                tracing::error!("{name} thread panicked");
            }
        }
    }

    /// Truncates the log of `tp` (replication) and checkpoints the lowered
    /// recovery point at once, as Kafka does: a stale, higher recovery point
    /// on disk would let the next recovery skip the rewritten data.
    ///
    /// A clean of the log in progress is aborted first and none starts until
    /// the truncation is done; a cleaner checkpoint above the new active
    /// segment comes down to it (Kafka's `truncateTo`).
    pub fn truncate_to(&self, tp: &TopicPartition, offset: i64) -> Result<(), StorageError> {
        let log = self
            .get(tp)
            .ok_or_else(|| StorageError::InvalidRequest(format!("no log for {tp}")))?;
        self.cleaner.abort_and_pause(tp);
        let truncated = log.truncate_to(offset);
        if truncated.is_ok()
            && let Some(active_base) = log.segment_base_offsets().last()
        {
            self.cleaner.truncate_checkpoint(self, tp, *active_base);
        }
        self.cleaner.resume(tp);
        truncated?;
        self.checkpoint()
    }

    /// [`PartitionLog::truncate_fully_and_start_at`] for `tp`, with the
    /// checkpoints and cleaner handling of [`Self::truncate_to`].
    pub fn truncate_fully_and_start_at(
        &self,
        tp: &TopicPartition,
        offset: i64,
    ) -> Result<(), StorageError> {
        let log = self
            .get(tp)
            .ok_or_else(|| StorageError::InvalidRequest(format!("no log for {tp}")))?;
        self.cleaner.abort_and_pause(tp);
        let truncated = log.truncate_fully_and_start_at(offset);
        if truncated.is_ok() {
            self.cleaner.truncate_checkpoint(self, tp, offset);
        }
        self.cleaner.resume(tp);
        truncated?;
        self.checkpoint()
    }

    /// One round of the background duties; public so tests can drive it.
    pub fn run_periodic(&self) {
        for (tp, log) in self.logs() {
            if let Err(e) = log.run_periodic() {
                tracing::error!(log = %tp, error = %e, "periodic log duty failed");
            }
        }
    }

    /// One round of retention (Kafka's `cleanupLogs`): every log deletes the
    /// segments its retention settings and log start offset let go (see
    /// [`PartitionLog::delete_retained_segments`]); after a round that
    /// deleted any, the log start offsets are checkpointed. Returns the
    /// number of segments deleted. The background thread runs it every
    /// `retention_check_interval_ms`; public so tests can drive it.
    pub fn run_retention(&self) -> usize {
        let mut deleted = 0;
        for (tp, log) in self.logs() {
            if log.is_offline() {
                continue;
            }
            match log.delete_retained_segments() {
                Ok(outcome) => deleted += outcome.segments_deleted,
                Err(StorageError::Offline) => {}
                Err(e) => tracing::error!(log = %tp, error = %e, "retention failed"),
            }
        }
        if deleted > 0
            && let Err(e) = self.checkpoint()
        {
            tracing::error!(error = %e, "writing log checkpoints after retention failed");
        }
        deleted
    }

    /// Cleans the compacted log that needs it most, if any does, in the
    /// caller's thread, and returns what the clean did (see
    /// [`crate::cleaner`]). The cleaner thread does the same in a loop; this
    /// lets tests and benchmarks drive one clean. Cleans never overlap: this
    /// waits for one in progress.
    pub fn clean_once(&self) -> Option<CleanStats> {
        self.cleaner.clean_once(self)
    }

    /// Where the cleaner will start on `tp` next time (the cleaner
    /// checkpoint), if it has cleaned it.
    pub fn cleaner_checkpoint(&self, tp: &TopicPartition) -> Option<i64> {
        self.cleaner.checkpoint_of(tp)
    }

    /// Installs what transactions tell the cleaner (see [`TxnCleanHooks`]).
    pub fn set_txn_clean_hooks(&self, hooks: Arc<dyn TxnCleanHooks>) {
        self.cleaner.set_hooks(hooks);
    }
}

impl Drop for LogManager {
    fn drop(&mut self) {
        // Without shutdown() this is an unclean stop: no marker is written.
        self.stop_background();
    }
}

/// How many periodic rounds apart the less frequent duties run.
#[derive(Debug, Clone, Copy)]
struct Every {
    checkpoint: u64,
    retention: u64,
}

fn background_loop(
    manager: &std::sync::Weak<LogManager>,
    stop: &Stop,
    interval: Duration,
    every: Every,
) {
    let mut rounds: u64 = 0;
    loop {
        {
            let mut stopped = stop.stopped.lock();
            if !*stopped {
                stop.wake.wait_for(&mut stopped, interval);
            }
            if *stopped {
                return;
            }
        }
        let Some(manager) = manager.upgrade() else {
            return;
        };
        manager.run_periodic();
        manager.retry_pending_deletes();
        rounds += 1;
        if rounds.is_multiple_of(every.retention) {
            manager.run_retention();
        }
        if rounds.is_multiple_of(every.checkpoint)
            && let Err(e) = manager.checkpoint()
        {
            tracing::error!(error = %e, "writing log checkpoints failed");
        }
    }
}

/// The cleaner thread: cleans while there is work, backs off
/// `log.cleaner.backoff.ms` when there is none (or a clean made no
/// progress), ends when the cleaner is stopped or the manager is gone.
fn cleaner_loop(manager: &std::sync::Weak<LogManager>, cleaner: &LogCleaner) {
    while !cleaner.is_stopped() {
        let Some(manager) = manager.upgrade() else {
            return;
        };
        let stats = manager.clean_once();
        drop(manager);
        let progressed = stats.is_some_and(|s| {
            s.outcome == crate::cleaner::CleanOutcome::Completed
                && s.end_offset > s.first_dirty_offset
        });
        if !progressed {
            cleaner.backoff();
        }
    }
}

/// Reads a `topic partition offset` checkpoint; a missing or malformed file
/// gives no entries (recovery then starts from the beginning: slower, safe).
pub(crate) fn read_offsets(path: &Path) -> HashMap<TopicPartition, i64> {
    let parsed = checkpoint::read(path).and_then(|entries| match entries {
        Some(entries) => checkpoint::parse_partition_offsets(&entries),
        None => Ok(Vec::new()),
    });
    match parsed {
        Ok(entries) => entries
            .into_iter()
            .map(|(topic, partition, offset)| (TopicPartition { topic, partition }, offset))
            .collect(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable checkpoint");
            HashMap::new()
        }
    }
}

/// Runs `work` on every item on `threads` threads (at least one), keeping
/// the results in item order: opening and closing thousands of logs is
/// mostly waiting on the disk, which several threads overlap.
fn run_parallel<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    work: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, items.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { return };
                    let result = work(item);
                    *results[i].lock() = Some(result);
                }
            });
        }
    });
    // Every index below items.len() was taken by exactly one thread, and a
    // panicking thread re-panics at the end of the scope: all slots are set.
    results.into_iter().filter_map(Mutex::into_inner).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_dir_names_round_trip() {
        let tp = TopicPartition::new("my-topic.v1", 12);
        assert_eq!(TopicPartition::from_dir_name(&tp.dir_name()), Some(tp));
        assert_eq!(TopicPartition::from_dir_name("orders"), None);
        assert_eq!(TopicPartition::from_dir_name("orders-x"), None);
        assert_eq!(TopicPartition::from_dir_name("orders-0.123-delete"), None);
        assert_eq!(TopicPartition::from_dir_name("bad topic-0"), None);
        assert!(!is_legal_topic_name(".."));
        assert!(!is_legal_topic_name(&"a".repeat(250)));
    }

    #[test]
    fn delete_dir_names_fit_the_file_system() {
        let unique = "0123456789abcdef0123456789abcdef";
        let short = TopicPartition::new("orders", 3);
        assert_eq!(
            delete_dir_name(&short, unique),
            format!("orders-3.{unique}-delete")
        );
        let long = TopicPartition::new("t".repeat(TOPIC_NAME_MAX_LEN), i32::MAX);
        let name = delete_dir_name(&long, unique);
        assert_eq!(name.len(), FILE_NAME_MAX_BYTES);
        assert!(name.ends_with(&format!("-{}.{unique}-delete", i32::MAX)));
        assert_eq!(TopicPartition::from_dir_name(&name), None);
    }
}
