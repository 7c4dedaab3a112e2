//! Opening a log: listing its directory (and cleaning up what an
//! interrupted operation left, completing a cleaner swap), recovering the
//! segments after an unclean shutdown, rebuilding the leader epoch cache and
//! the producer state. Truncation (a follower cutting back to its leader's
//! log) lives here too: it ends by reloading the producer state as opening
//! does.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File};
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use strom_protocol::record_batch;

use super::epoch_cache::LeaderEpochCache;
use super::producer_state::{ProducerBatch, ProducerStateManager};
use super::scan::{BatchScanner, Scanned};
use super::segment::{
    CLEANED_SUFFIX, DELETED_SUFFIX, INDEX_SUFFIX, LOG_SUFFIX, SWAP_SUFFIX, ScanRules, Segment,
    TIME_INDEX_SUFFIX, TXN_INDEX_SUFFIX, staged_path,
};
use super::{
    AbortedTxn, HIGH_WATERMARK_UNSET, MAX_PRODUCERS_PER_PARTITION, NO_OPEN_TXN, PartitionLog,
    Writer,
};
use crate::checkpoint;
use crate::clock::Clock;
use crate::config::LogConfig;
use crate::error::StorageError;
use crate::file_cache::{FileCache, FileKind};

/// How the log was left and what was checkpointed about it.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// The previous process shut down cleanly: skip recovery.
    pub clean_shutdown: bool,
    /// Offset below which data is known to be fsynced; recovery starts at the
    /// segment holding it. 0 when unknown (recover everything).
    pub recovery_point: i64,
    /// Checkpointed log start offset, if any.
    pub log_start_offset: Option<i64>,
    /// The cleaner has compacted this log (it has a cleaner checkpoint):
    /// offsets may have gaps whatever its `cleanup.policy` is now.
    pub offset_gaps: bool,
}

impl PartitionLog {
    /// Opens the log in `dir`, creating it if it does not exist. After an
    /// unclean shutdown, recovers every segment from the one holding
    /// `options.recovery_point`: validates each batch (length, magic, CRC,
    /// offsets, leader epoch), truncates at the first invalid byte, rebuilds
    /// the indexes and drops the segments after a truncation. Then loads the
    /// producer state: the newest valid snapshot at or below the log end
    /// offset, and the batch headers after it.
    pub fn open(
        dir: impl Into<PathBuf>,
        config: LogConfig,
        files: Arc<FileCache>,
        clock: Arc<dyn Clock>,
        options: LoadOptions,
    ) -> Result<Self, StorageError> {
        let dir: PathBuf = dir.into();
        fs::create_dir_all(&dir).map_err(|e| StorageError::io(&dir, e))?;
        let dir: Arc<Path> = Arc::from(dir.as_path());
        let now = clock.now_ms();
        let (bases, snapshots) = list_segments(&dir)?;
        let is_new = bases.is_empty();
        let mut epochs = if is_new {
            LeaderEpochCache::create(&dir).map_err(|e| StorageError::io(&dir, e))?
        } else {
            LeaderEpochCache::load(&dir)
        };
        let mut segments = BTreeMap::new();
        for (base, size) in bases {
            segments.insert(
                base,
                Arc::new(Segment::existing(
                    Arc::clone(&dir),
                    base,
                    Arc::clone(&files),
                    size,
                    now,
                )),
            );
        }

        // Recovery refuses offset gaps in logs that were never compacted; a
        // log the cleaner has rewritten keeps its gaps even after its policy
        // changed to delete.
        let scan_config = LogConfig {
            compact: config.compact || options.offset_gaps,
            ..config.clone()
        };
        // Recovered segments have their transaction indexes emptied; the
        // producer state replay writes them again.
        let mut rebuild_txn_index_from = None;
        if !is_new && !options.clean_shutdown {
            rebuild_txn_index_from = recover(
                &dir,
                &scan_config,
                &mut segments,
                &mut epochs,
                options.recovery_point,
            )?;
        }

        let active = match segments.last_key_value() {
            Some((_, segment)) => Arc::clone(segment),
            None => {
                let base = options.log_start_offset.unwrap_or(0).max(0);
                let segment = Segment::create(Arc::clone(&dir), base, Arc::clone(&files), now)
                    .map_err(|e| StorageError::io(&dir, e))?;
                let segment = Arc::new(segment);
                segments.insert(base, Arc::clone(&segment));
                segment
            }
        };
        if !is_new && options.clean_shutdown {
            rebuild_txn_index_from = check_active_segment(&dir, &scan_config, &active, &epochs)?;
        }
        if !epochs.is_trusted() {
            rebuild_epochs(&dir, &segments, &mut epochs)?;
        }
        let log_end_offset = active
            .next_offset()
            .map_err(|e| StorageError::io(active.path(FileKind::Log), e))?
            .unwrap_or(active.base_offset());
        epochs
            .truncate_from_end(log_end_offset)
            .map_err(|e| StorageError::io(&dir, e))?;
        let first_base = segments.first_key_value().map_or(0, |(base, _)| *base);
        let log_start_offset = options
            .log_start_offset
            .unwrap_or(first_base)
            .max(first_base)
            .min(log_end_offset);

        let log = Self {
            dir,
            config: RwLock::new(Arc::new(config)),
            files,
            clock,
            writer: Mutex::new(Writer {
                active,
                epochs,
                last_flush_ms: now,
                pending_flush: Vec::new(),
                pending_delete: Vec::new(),
                dir_dirty: is_new,
                producers: ProducerStateManager::new(snapshots, MAX_PRODUCERS_PER_PARTITION),
            }),
            segments: RwLock::new(segments),
            log_end_offset: AtomicI64::new(log_end_offset),
            log_start_offset: AtomicI64::new(log_start_offset),
            recovery_point: AtomicI64::new(log_end_offset),
            high_watermark: AtomicI64::new(HIGH_WATERMARK_UNSET),
            truncations: AtomicU64::new(0),
            first_ongoing_offset: AtomicI64::new(NO_OPEN_TXN),
            unreplicated_txns: Mutex::new(VecDeque::new()),
            offline: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        };
        {
            let mut writer = log.writer.lock();
            log.load_producer_state(&mut writer, rebuild_txn_index_from)?;
        }
        Ok(log)
    }

    /// Rebuilds the producer state for the log as it is now (Kafka's
    /// `truncateAndReload` and `rebuildProducerState`): deletes the snapshots
    /// above the log end offset, loads the newest valid one at or below it and
    /// replays the batch headers after it, or from the log start offset when
    /// there is none. With `rebuild_txn_index_from`, the replay starts at or
    /// below that offset and writes the transaction index entries of the
    /// abort markers from there on (segments whose index recovery emptied).
    fn load_producer_state(
        &self,
        writer: &mut Writer,
        rebuild_txn_index_from: Option<i64>,
    ) -> Result<(), StorageError> {
        let result = self.replay_producer_state(writer, rebuild_txn_index_from);
        // Whatever the replay reached, readers see the state it left.
        self.publish_ongoing(writer);
        result
    }

    fn replay_producer_state(
        &self,
        writer: &mut Writer,
        rebuild_txn_index_from: Option<i64>,
    ) -> Result<(), StorageError> {
        let io = |e| StorageError::io(&*self.dir, e);
        let log_end_offset = self.log_end_offset();
        // Deleted durably: they describe batches that are gone, and once
        // appends pass their offsets again they would look valid.
        if writer
            .producers
            .delete_snapshots_above(&self.dir, log_end_offset)
            .map_err(io)?
        {
            checkpoint::sync_dir(&self.dir).map_err(io)?;
        }
        let snapshot = writer.producers.load_latest_snapshot(
            &self.dir,
            rebuild_txn_index_from.map_or(log_end_offset, |from| from.min(log_end_offset)),
            self.clock.now_ms(),
            self.config().producer_id_expiration_ms,
        );
        let from = snapshot.unwrap_or_else(|| self.log_start_offset());
        if from >= log_end_offset {
            return Ok(());
        }
        let producers = &mut writer.producers;
        let mut replayed = 0u64;
        let mut rebuilt: Vec<AbortedTxn> = Vec::new();
        self.for_each_batch_from(from, |_, header, bytes| {
            if header.last_offset() >= from
                && header.base_offset < log_end_offset
                && let Some(batch) =
                    ProducerBatch::of(header, bytes, header.base_offset, header.max_timestamp)
            {
                if let Some(txn) = producers.replay(&batch)
                    && txn.aborted
                    && rebuild_txn_index_from.is_some_and(|start| txn.last_offset >= start)
                {
                    // The last stable offset after it: the oldest transaction
                    // still open at this point of the replay.
                    rebuilt.push(AbortedTxn {
                        producer_id: txn.producer_id,
                        first_offset: txn.first_offset,
                        last_offset: txn.last_offset,
                        last_stable_offset: producers
                            .first_ongoing_offset()
                            .filter(|first| *first < txn.last_offset)
                            .unwrap_or(txn.last_offset + 1),
                    });
                }
                replayed += 1;
            }
        })?;
        for entry in &rebuilt {
            let Some(segment) = self.floor_segment(entry.last_offset) else {
                continue;
            };
            segment
                .append_aborted_txn(entry)
                .map_err(|e| StorageError::io(segment.path(FileKind::TxnIndex), e))?;
        }
        if !rebuilt.is_empty() {
            tracing::info!(log = %self.dir.display(), entries = rebuilt.len(), "rebuilt aborted-transaction index entries");
        }
        tracing::debug!(
            log = %self.dir.display(),
            snapshot = ?snapshot,
            from,
            to = log_end_offset,
            replayed,
            producers = producers.len(),
            "rebuilt producer state"
        );
        Ok(())
    }

    /// Drops every batch whose last offset is >= `offset` (replication: a
    /// follower cutting back to the leader's log). Batches are removed whole,
    /// so the log end offset becomes the end of the last batch kept, which is
    /// `offset` when it falls on a batch boundary (as leader epoch end offsets
    /// do). Below the log start offset, the log is emptied and restarts at
    /// `offset`.
    ///
    /// The recovery point is lowered in memory only: with a log manager, use
    /// [`crate::LogManager::truncate_to`], which also checkpoints it.
    pub fn truncate_to(&self, offset: i64) -> Result<(), StorageError> {
        let mut writer = self.writer.lock();
        self.check_online().map_err(|_| StorageError::Offline)?;
        if offset >= self.log_end_offset() {
            // Nothing to cut, but an epoch this broker started as leader
            // without appending to it must go, or a follower would keep
            // claiming it (Kafka's `truncateTo` does the same).
            return writer
                .epochs
                .truncate_from_end(self.log_end_offset())
                .map_err(|e| StorageError::io(&*self.dir, e));
        }
        // Segments may already be renamed away when a step fails: the log
        // can no longer be trusted to take writes.
        self.truncate_locked(&mut writer, offset)
            .inspect_err(|e| self.take_offline(e))
    }

    /// Empties the log and restarts it at `offset`, which may lie above the
    /// log end (Kafka's `truncateFullyAndStartAt`): a follower whose log
    /// ends below the leader's log start offset.
    ///
    /// As with [`Self::truncate_to`], use the log manager's wrapper to
    /// checkpoint the lowered recovery point.
    pub fn truncate_fully_and_start_at(&self, offset: i64) -> Result<(), StorageError> {
        let mut writer = self.writer.lock();
        self.check_online().map_err(|_| StorageError::Offline)?;
        self.truncate_fully_and_start_at_locked(&mut writer, offset)
            .inspect_err(|e| self.take_offline(e))
    }

    /// Records that leader epoch `epoch` starts at the log end offset, if it
    /// is newer than every epoch the log knows: a new leader does this at
    /// once (Kafka's `makeLeader` → `maybeAssignEpochStartOffset`), so a
    /// follower holding batches of a later-numbered epoch that never
    /// committed finds where it diverges even before the new leader has
    /// appended anything.
    pub fn assign_leader_epoch(&self, epoch: i32) -> Result<(), StorageError> {
        let mut writer = self.writer.lock();
        self.check_online().map_err(|_| StorageError::Offline)?;
        writer
            .epochs
            .assign(epoch, self.log_end_offset())
            .map(|_| ())
            .map_err(|e| StorageError::io(&*self.dir, e))
    }

    fn truncate_locked(&self, writer: &mut Writer, offset: i64) -> Result<(), StorageError> {
        let now = self.clock.now_ms();
        let io = |e| StorageError::io(&*self.dir, e);
        if offset < self.log_start_offset() {
            return self.truncate_fully_and_start_at_locked(writer, offset);
        }
        // Epochs first: a crash in between leaves batches the cache does not
        // cover, which recovery then truncates, exactly as asked.
        writer.epochs.truncate_from_end(offset).map_err(io)?;
        let doomed: Vec<Arc<Segment>> = {
            let segments = self.segments.read();
            let keep_base = segments.range(..=offset).next_back().map(|(b, _)| *b);
            segments
                .range((
                    Bound::Excluded(keep_base.unwrap_or(i64::MIN)),
                    Bound::Unbounded,
                ))
                .map(|(_, s)| Arc::clone(s))
                .collect()
        };
        let delay = self.config().file_delete_delay_ms;
        self.remove_segments(writer, &doomed, now + delay)
            .map_err(io)?;
        let Some(target) = self.floor_segment(offset) else {
            return self.truncate_fully_and_start_at_locked(writer, offset);
        };
        let next = target.truncate_to(offset).map_err(io)?;
        writer.pending_flush.retain(|s| !Arc::ptr_eq(s, &target));
        writer.active = Arc::clone(&target);
        let log_end_offset = next.unwrap_or(target.base_offset());
        self.truncations.fetch_add(1, Ordering::AcqRel);
        self.log_end_offset.store(log_end_offset, Ordering::Release);
        self.lower_high_watermark(log_end_offset);
        self.recovery_point
            .fetch_min(log_end_offset, Ordering::AcqRel);
        writer
            .epochs
            .truncate_from_end(log_end_offset)
            .map_err(io)?;
        // Kafka's truncateAndReload: the state must forget the batches cut
        // away, or their retries would be taken for duplicates.
        // The transaction indexes lost their entries at and above the new
        // end with the segments (`Segment::truncate_to`); the marker-ended
        // transactions there are gone too.
        self.unreplicated_txns
            .lock()
            .retain(|(_, last)| *last < log_end_offset);
        self.load_producer_state(writer, None)
    }

    fn truncate_fully_and_start_at_locked(
        &self,
        writer: &mut Writer,
        offset: i64,
    ) -> Result<(), StorageError> {
        let io = |e| StorageError::io(&*self.dir, e);
        let now = self.clock.now_ms();
        let all: Vec<Arc<Segment>> = self.segments.read().values().cloned().collect();
        writer.epochs.truncate_from_end(i64::MIN).map_err(io)?;
        let delay = self.config().file_delete_delay_ms;
        self.remove_segments(writer, &all, now + delay)
            .map_err(io)?;
        // Nothing of the old log's producers remains (Kafka's
        // truncateFullyAndStartAt). Deleted durably: a snapshot that came back
        // after a crash would look valid once the new log passed its offset.
        writer.producers.clear();
        self.unreplicated_txns.lock().clear();
        self.publish_ongoing(writer);
        if writer
            .producers
            .delete_all_snapshots(&self.dir)
            .map_err(io)?
        {
            checkpoint::sync_dir(&self.dir).map_err(io)?;
        }
        let segment = Arc::new(
            Segment::create(Arc::clone(&self.dir), offset, Arc::clone(&self.files), now)
                .map_err(io)?,
        );
        self.segments.write().insert(offset, Arc::clone(&segment));
        writer.active = segment;
        writer.dir_dirty = true;
        self.truncations.fetch_add(1, Ordering::AcqRel);
        self.log_start_offset.store(offset, Ordering::Release);
        self.log_end_offset.store(offset, Ordering::Release);
        self.recovery_point.store(offset, Ordering::Release);
        if self.high_watermark.load(Ordering::Acquire) != HIGH_WATERMARK_UNSET {
            self.high_watermark.store(offset, Ordering::Release);
        }
        Ok(())
    }
}

/// Segments as `(base offset, log size)`, and producer state snapshot offsets.
type Listing = (Vec<(i64, u64)>, Vec<i64>);

/// The base offset and the kind of a segment file name `<20 digits>.<kind>`.
fn parse_segment_name(name: &str) -> Option<(i64, &str)> {
    let (stem, kind) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, kind))
}

/// Lists the segments in `dir` and the producer state snapshots, cleaning up
/// what an interrupted operation left: `*.deleted`, temporary and
/// `*.cleaned` files go, an interrupted cleaner swap is completed (see
/// [`complete_swap`]), index files without a log go.
fn list_segments(dir: &Path) -> Result<Listing, StorageError> {
    let io = |e| StorageError::io(dir, e);
    let mut logs = Vec::new();
    let mut snapshots = Vec::new();
    let mut indexes = Vec::new();
    let mut swaps = Vec::new();
    let mut txn_swaps = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        if name.ends_with(DELETED_SUFFIX)
            || name.ends_with(".tmp")
            || name.ends_with(CLEANED_SUFFIX)
        {
            fs::remove_file(&path).map_err(io)?;
            continue;
        }
        if let Some(unswapped) = name.strip_suffix(SWAP_SUFFIX) {
            match parse_segment_name(unswapped) {
                Some((base, "log")) => swaps.push(base),
                // Index files of a swap are rebuilt from its log, never trusted.
                Some((_, "index" | "timeindex")) => fs::remove_file(&path).map_err(io)?,
                // The transaction index cannot be rebuilt from the segment
                // alone: `complete_swap` puts it in place.
                Some((base, "txnindex")) => txn_swaps.push((base, path)),
                _ => {}
            }
            continue;
        }
        let Some((base, kind)) = parse_segment_name(name) else {
            continue;
        };
        match kind {
            "log" => logs.push((base, entry.metadata().map_err(io)?.len())),
            "index" | "timeindex" | "txnindex" => indexes.push((base, path)),
            "snapshot" => snapshots.push(base),
            _ => {}
        }
    }
    swaps.sort_unstable();
    for base in &swaps {
        complete_swap(dir, *base, &mut logs)?;
    }
    // A transaction index staged for a swap that never reached its commit
    // point.
    for (base, path) in txn_swaps {
        if swaps.binary_search(&base).is_err() {
            fs::remove_file(&path).map_err(io)?;
        }
    }
    logs.sort_unstable();
    for (base, path) in indexes {
        if logs.binary_search_by_key(&base, |(b, _)| *b).is_err() {
            tracing::warn!(path = %path.display(), "removing an index file without a log");
            match fs::remove_file(&path) {
                // Removed already, with the segments a swap replaced.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                other => other.map_err(io)?,
            }
        }
    }
    debug_assert!(logs.iter().all(|(b, _)| *b >= 0));
    Ok((logs, snapshots))
}

/// Finishes a cleaner swap that a crash interrupted, as Kafka's `LogLoader`
/// does: `<base>.log.swap` is a complete cleaned segment (it was fsynced
/// before it got that name), holding the records it kept of the segments
/// whose base offsets lie in `[base, its next offset)`. Those segments go,
/// whatever step the swap had reached, and the swap becomes `<base>.log`.
/// Its indexes are rebuilt from it when first used.
fn complete_swap(dir: &Path, base: i64, logs: &mut Vec<(i64, u64)>) -> Result<(), StorageError> {
    let io = |e| StorageError::io(dir, e);
    let swap = staged_path(dir, base, LOG_SUFFIX, SWAP_SUFFIX);
    let (valid_bytes, next_offset) = scan_swap(&swap).map_err(|e| StorageError::io(&swap, e))?;
    let replaced: Vec<i64> = logs
        .iter()
        .map(|(b, _)| *b)
        .filter(|b| *b == base || (*b > base && *b < next_offset))
        .collect();
    for old in &replaced {
        for suffix in [
            LOG_SUFFIX,
            INDEX_SUFFIX,
            TIME_INDEX_SUFFIX,
            TXN_INDEX_SUFFIX,
        ] {
            // At the swap's own base offset, a final `.txnindex` without a
            // `.txnindex.swap` is the cleaned one: the swap renames the old
            // one away before it gives the new one its final name.
            if suffix == TXN_INDEX_SUFFIX
                && *old == base
                && !staged_path(dir, base, suffix, SWAP_SUFFIX).exists()
            {
                continue;
            }
            match fs::remove_file(staged_path(dir, *old, suffix, "")) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io(e)),
                _ => {}
            }
        }
    }
    match fs::rename(
        staged_path(dir, base, TXN_INDEX_SUFFIX, SWAP_SUFFIX),
        staged_path(dir, base, TXN_INDEX_SUFFIX, ""),
    ) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io(e)),
        _ => {}
    }
    logs.retain(|(b, _)| !replaced.contains(b));
    let log = staged_path(dir, base, LOG_SUFFIX, "");
    fs::rename(&swap, &log).map_err(io)?;
    logs.push((base, valid_bytes));
    checkpoint::sync_dir(dir).map_err(io)?;
    tracing::warn!(
        log = %dir.display(),
        segment = base,
        next_offset,
        replaced = ?replaced,
        "completed a cleaner swap interrupted by a crash"
    );
    Ok(())
}

/// The valid bytes of a `.swap` log and the offset after its last batch
/// (`base` when it holds none). Bytes after the first invalid batch are cut
/// off, as recovery does (they cannot be there: the file was fsynced whole).
fn scan_swap(path: &Path) -> io::Result<(u64, i64)> {
    let file = File::options().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    let base = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_segment_name)
        .map_or(0, |(b, _)| b);
    let mut scanner = BatchScanner::new(&file, 0, len);
    let mut next_offset = base;
    let mut valid_bytes = 0;
    loop {
        match scanner.next_batch()? {
            Scanned::Batch {
                position,
                header,
                bytes,
            } if record_batch::validate_batch(bytes).is_ok()
                && header.base_offset >= next_offset =>
            {
                next_offset = header.next_offset();
                valid_bytes = position + bytes.len() as u64;
            }
            Scanned::End => break,
            _ => {
                tracing::warn!(path = %path.display(), valid_bytes, "cutting a swap file at its first invalid batch");
                file.set_len(valid_bytes)?;
                file.sync_all()?;
                break;
            }
        }
    }
    Ok((valid_bytes, next_offset))
}

/// After a clean shutdown the marker vouches for the files, but not beyond
/// what the indexes show: an active segment whose file holds bytes after its
/// last valid batch (a torn append the marker did not know about) is
/// recovered, so that appends never land after garbage (they go to the end
/// of the file, O_APPEND). Returns the base offset of the active segment when
/// it was recovered (its transaction index is then to be rebuilt).
fn check_active_segment(
    dir: &Path,
    config: &LogConfig,
    active: &Segment,
    epochs: &LeaderEpochCache,
) -> Result<Option<i64>, StorageError> {
    let io = |e| StorageError::io(active.path(FileKind::Log), e);
    // Loading checks the indexes and, if they are wrong, rebuilds them and
    // shrinks the readable size to the valid batches.
    active.next_offset().map_err(io)?;
    let file_len = active
        .file(FileKind::Log)
        .and_then(|f| f.metadata())
        .map_err(io)?
        .len();
    if file_len == active.size() {
        return Ok(None);
    }
    tracing::warn!(
        log = %dir.display(),
        valid_bytes = active.size(),
        file_bytes = file_len,
        "active segment holds more than its valid batches; recovering it"
    );
    let rules = ScanRules {
        verify: true,
        contiguous: !config.compact,
        epochs: epochs.is_trusted().then_some(epochs),
        index_interval_bytes: u64::from(config.index_interval_bytes),
    };
    active.recover(&rules).map_err(io)?;
    active
        .truncate_txn_index(active.base_offset())
        .map_err(io)?;
    active.flush().map_err(io)?;
    Ok(Some(active.base_offset()))
}

/// Rebuilds a missing or unreadable leader epoch cache from the batch headers
/// of every segment (each epoch starts at its first batch).
fn rebuild_epochs(
    dir: &Path,
    segments: &BTreeMap<i64, Arc<Segment>>,
    epochs: &mut LeaderEpochCache,
) -> Result<(), StorageError> {
    let io = |e| StorageError::io(dir, e);
    for segment in segments.values() {
        let log = segment.file(FileKind::Log).map_err(io)?;
        let mut scanner = BatchScanner::new(&log, 0, segment.size());
        while let Scanned::Batch { header, .. } = scanner.next_batch().map_err(io)? {
            epochs
                .assign(header.partition_leader_epoch, header.base_offset)
                .map_err(io)?;
        }
    }
    tracing::info!(log = %dir.display(), epochs = epochs.entries().len(), "rebuilt the leader epoch cache from the log");
    epochs.mark_trusted().map_err(io)
}

/// Recovery after an unclean shutdown (see [`PartitionLog::open`]). Returns
/// the base offset of the first recovered segment: the transaction indexes
/// of the recovered segments are emptied, to be rebuilt from the log.
fn recover(
    dir: &Path,
    config: &LogConfig,
    segments: &mut BTreeMap<i64, Arc<Segment>>,
    epochs: &mut LeaderEpochCache,
    recovery_point: i64,
) -> Result<Option<i64>, StorageError> {
    let start = segments
        .range(..=recovery_point)
        .next_back()
        .map_or(i64::MIN, |(base, _)| *base);
    let to_recover: Vec<Arc<Segment>> = segments
        .range(start..)
        .map(|(_, s)| Arc::clone(s))
        .collect();
    let trusted = epochs.is_trusted();
    let mut truncated_at: Option<i64> = None;
    for segment in to_recover {
        if let Some(base) = truncated_at {
            // Everything after a truncation point is unreachable: Kafka drops it.
            tracing::warn!(log = %dir.display(), segment = segment.base_offset(), after = base, "deleting segment after truncated data");
            segments.remove(&segment.base_offset());
            segment
                .mark_deleted()
                .and_then(|()| segment.delete_files())
                .map_err(|e| StorageError::io(dir, e))?;
            continue;
        }
        let rules = ScanRules {
            verify: true,
            contiguous: !config.compact,
            epochs: trusted.then_some(&*epochs),
            index_interval_bytes: u64::from(config.index_interval_bytes),
        };
        let outcome = segment
            .recover(&rules)
            .map_err(|e| StorageError::io(segment.path(FileKind::Log), e))?;
        segment
            .truncate_txn_index(segment.base_offset())
            .map_err(|e| StorageError::io(segment.path(FileKind::TxnIndex), e))?;
        if outcome.invalid_bytes > 0 {
            tracing::warn!(
                log = %dir.display(),
                segment = segment.base_offset(),
                valid_bytes = outcome.valid_bytes,
                truncated_bytes = outcome.invalid_bytes,
                reason = outcome.invalid_reason.as_deref().unwrap_or(""),
                "recovery truncated the log at the first invalid batch"
            );
            truncated_at = Some(segment.base_offset());
        }
        segment
            .flush()
            .map_err(|e| StorageError::io(segment.path(FileKind::Log), e))?;
    }
    // An untrusted epoch cache is rebuilt by the caller from every segment,
    // not only the recovered ones.
    // A segment left empty by truncation, other than the last, is dropped.
    let empties: Vec<i64> = segments
        .iter()
        .rev()
        .skip(1)
        .filter(|(_, s)| s.size() == 0)
        .map(|(b, _)| *b)
        .collect();
    for base in empties {
        if let Some(segment) = segments.remove(&base) {
            segment
                .mark_deleted()
                .and_then(|()| segment.delete_files())
                .map_err(|e| StorageError::io(dir, e))?;
        }
    }
    checkpoint::sync_dir(dir).map_err(|e| StorageError::io(dir, e))?;
    Ok(segments.range(start..).next().map(|(base, _)| *base))
}
