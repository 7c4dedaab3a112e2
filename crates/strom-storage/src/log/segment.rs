//! One segment: a `.log` file of record batches laid end to end, named by the
//! base offset of its first batch, with its `.index` and `.timeindex`.
//!
//! Concurrency: the partition log's writer lock serialises every change; many
//! readers run beside it. The writer appends bytes first and then publishes the
//! new size (`Release`); readers load the size (`Acquire`) and never read past
//! it, so they never see half a batch. Index entries are added after the size
//! is published and always point below it.

use std::fs::{self, File};
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{RwLock, RwLockWriteGuard};
use strom_protocol::record_batch::{
    self, BatchHeader, MAGIC_V2, NO_TIMESTAMP, RECORD_BATCH_OVERHEAD, checked_batch_size,
};

use super::epoch_cache::LeaderEpochCache;
use super::index::{IndexFile, OffsetEntry, TimeEntry, invalid};
use super::scan::{BatchScanner, Scanned};
use super::txn_index::{self, AbortedTxn, TxnSearch};
use crate::file_cache::{FileCache, FileKind};

pub(crate) const LOG_SUFFIX: &str = ".log";
pub(crate) const INDEX_SUFFIX: &str = ".index";
pub(crate) const TIME_INDEX_SUFFIX: &str = ".timeindex";
pub(crate) const TXN_INDEX_SUFFIX: &str = ".txnindex";
/// Appended to a segment's file names when it is scheduled for deletion.
pub(crate) const DELETED_SUFFIX: &str = ".deleted";
/// Appended to the files of a segment the cleaner is writing aside; such
/// files are incomplete by definition and deleted when a log opens.
pub(crate) const CLEANED_SUFFIX: &str = ".cleaned";
/// Appended to the files of a complete cleaned segment that is being swapped
/// in; a log that opens with one finishes the swap (Kafka's `.swap`).
pub(crate) const SWAP_SUFFIX: &str = ".swap";

/// Every file a segment may have.
const ALL_KINDS: [FileKind; 4] = [
    FileKind::Log,
    FileKind::OffsetIndex,
    FileKind::TimeIndex,
    FileKind::TxnIndex,
];

/// Kafka's file name for a segment file: the base offset, 20 digits.
/// `next_offset` of a segment whose indexes are not loaded yet.
const UNKNOWN_OFFSET: i64 = i64::MAX;

pub(crate) fn file_name(base_offset: i64, suffix: &str) -> String {
    format!("{base_offset:020}{suffix}")
}

/// The in-memory state derived from a segment's indexes and batches. Loaded
/// lazily: an idle segment costs only its `Segment` struct.
#[derive(Debug)]
pub(crate) struct Indexes {
    pub(crate) offset: IndexFile<OffsetEntry>,
    pub(crate) time: IndexFile<TimeEntry>,
    /// Largest batch max timestamp in the segment, or `NO_TIMESTAMP`.
    pub(crate) max_timestamp: i64,
    /// Last offset of the first batch holding `max_timestamp`.
    pub(crate) offset_of_max_timestamp: i64,
    /// Max timestamp of the first batch: the start of `segment.ms` (as Kafka).
    pub(crate) first_batch_timestamp: Option<i64>,
    /// Offset after the last batch, `None` when the segment is empty.
    pub(crate) next_offset: Option<i64>,
    bytes_since_last_entry: u64,
}

impl Indexes {
    fn empty() -> Self {
        Self {
            offset: IndexFile::empty(),
            time: IndexFile::empty(),
            max_timestamp: NO_TIMESTAMP,
            offset_of_max_timestamp: -1,
            first_batch_timestamp: None,
            next_offset: None,
            bytes_since_last_entry: 0,
        }
    }
}

/// What a scan of a segment found; see [`Segment::scan`].
#[derive(Debug, Default)]
pub(crate) struct ScanOutcome {
    /// Bytes from the start of the segment that hold valid batches.
    pub(crate) valid_bytes: u64,
    /// Bytes after `valid_bytes` that were cut off (recovery) or are unreadable.
    pub(crate) invalid_bytes: u64,
    /// Why the scan stopped before the end, if it did.
    pub(crate) invalid_reason: Option<String>,
    pub(crate) batches: u64,
}

/// Which checks a scan applies to every batch.
#[derive(Debug)]
pub(crate) struct ScanRules<'a> {
    /// Check magic, CRC and header consistency (recovery); otherwise structure only.
    pub(crate) verify: bool,
    /// Offsets continue without gaps (logs that are never compacted).
    pub(crate) contiguous: bool,
    /// A trusted leader epoch cache every batch's epoch must fit.
    pub(crate) epochs: Option<&'a LeaderEpochCache>,
    pub(crate) index_interval_bytes: u64,
}

/// Why [`Segment::append`] failed.
#[derive(Debug)]
pub(crate) enum AppendFailure {
    /// Nothing of the append remains in the file.
    Undone(io::Error),
    /// The file or its indexes are in an unknown state: no more appends.
    Torn(io::Error),
}

/// A batch as it was appended: where it went and what the indexes need.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AppendedBatch {
    pub(crate) position: u64,
    pub(crate) size: u64,
    pub(crate) last_offset: i64,
    pub(crate) max_timestamp: i64,
}

#[derive(Debug)]
pub(crate) struct Segment {
    base_offset: i64,
    /// Key of this segment's files in the shared cache.
    id: u64,
    dir: Arc<Path>,
    files: Arc<FileCache>,
    /// Bytes of the `.log` that hold whole, published batches.
    size: AtomicU64,
    /// Offset after the last published batch, `UNKNOWN_OFFSET` until the
    /// indexes are loaded. Stored before `size` grows and after it shrinks, so
    /// a reader that loads `size` and then this sees an offset at or above the
    /// end of every batch within that size.
    next_offset: AtomicI64,
    /// The files carry the `.deleted` suffix.
    deleted: AtomicBool,
    /// Truncations so far (see [`Segment::generation`]).
    generation: AtomicU64,
    /// When this object was created (segment.ms for empty-timestamp segments).
    created_ms: i64,
    indexes: RwLock<Option<Indexes>>,
}

impl Segment {
    /// A segment that exists on disk with `size` bytes of log; nothing is read yet.
    pub(crate) fn existing(
        dir: Arc<Path>,
        base_offset: i64,
        files: Arc<FileCache>,
        size: u64,
        now_ms: i64,
    ) -> Self {
        Self {
            base_offset,
            id: files.next_segment_id(),
            dir,
            files,
            size: AtomicU64::new(size),
            next_offset: AtomicI64::new(if size == 0 {
                base_offset
            } else {
                UNKNOWN_OFFSET
            }),
            deleted: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            created_ms: now_ms,
            indexes: RwLock::new(None),
        }
    }

    /// Creates the three empty files of a new segment. Leftover files of the
    /// same name (from a truncation interrupted by a crash) are replaced.
    pub(crate) fn create(
        dir: Arc<Path>,
        base_offset: i64,
        files: Arc<FileCache>,
        now_ms: i64,
    ) -> io::Result<Self> {
        let segment = Self::existing(dir, base_offset, files, 0, now_ms);
        for kind in ALL_KINDS {
            let path = segment.path(kind);
            match fs::remove_file(&path) {
                Ok(()) => {
                    tracing::warn!(path = %path.display(), "replaced a leftover segment file")
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            // The transaction index is created with its first entry.
            if kind != FileKind::TxnIndex {
                segment.files.create(segment.id, kind, &path)?;
            }
        }
        *segment.indexes.write() = Some(Indexes::empty());
        Ok(segment)
    }

    pub(crate) fn base_offset(&self) -> i64 {
        self.base_offset
    }

    /// Bytes of whole batches readers may read.
    pub(crate) fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    pub(crate) fn created_ms(&self) -> i64 {
        self.created_ms
    }

    pub(crate) fn path(&self, kind: FileKind) -> PathBuf {
        let suffix = match kind {
            FileKind::Log => LOG_SUFFIX,
            FileKind::OffsetIndex => INDEX_SUFFIX,
            FileKind::TimeIndex => TIME_INDEX_SUFFIX,
            FileKind::TxnIndex => TXN_INDEX_SUFFIX,
        };
        let mut name = file_name(self.base_offset, suffix);
        if self.deleted.load(Ordering::Acquire) {
            name.push_str(&self.deleted_suffix());
        }
        self.dir.join(name)
    }

    /// `.<id>.deleted`: the id keeps two removed segments of the same base
    /// offset (truncated twice within `file.delete.delay.ms`) apart.
    fn deleted_suffix(&self) -> String {
        format!(".{}{DELETED_SUFFIX}", self.id)
    }

    /// Bumped by every truncation: a reader that resolved positions before it
    /// must not trust them after.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn file(&self, kind: FileKind) -> io::Result<Arc<File>> {
        match self.files.get(self.id, kind, || self.path(kind)) {
            // The segment may have been renamed for deletion between computing
            // the path and opening it; the renamed file is still readable.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound && self.deleted.load(Ordering::Acquire) =>
            {
                self.files.get(self.id, kind, || self.path(kind))
            }
            other => other,
        }
    }

    /// The file of `kind`, created empty if it is missing (an index being rebuilt).
    fn file_or_create(&self, kind: FileKind) -> io::Result<Arc<File>> {
        match self.file(kind) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.files.create(self.id, kind, &self.path(kind))
            }
            other => other,
        }
    }

    /// Runs `f` on the index state, loading it first if needed.
    pub(crate) fn with_indexes<R>(
        &self,
        f: impl FnOnce(&Indexes) -> io::Result<R>,
    ) -> io::Result<R> {
        {
            let guard = self.indexes.read();
            if let Some(indexes) = guard.as_ref() {
                return f(indexes);
            }
        }
        let guard = self.loaded_write()?;
        let guard = RwLockWriteGuard::downgrade(guard);
        match guard.as_ref() {
            Some(indexes) => f(indexes),
            None => Err(invalid("segment indexes vanished")),
        }
    }

    fn loaded_write(&self) -> io::Result<RwLockWriteGuard<'_, Option<Indexes>>> {
        let mut guard = self.indexes.write();
        if guard.is_none() {
            let indexes = self.load_indexes()?;
            self.next_offset.store(
                indexes.next_offset.unwrap_or(self.base_offset),
                Ordering::Release,
            );
            *guard = Some(indexes);
        }
        Ok(guard)
    }

    fn with_indexes_mut<R>(&self, f: impl FnOnce(&mut Indexes) -> io::Result<R>) -> io::Result<R> {
        let mut guard = self.loaded_write()?;
        match guard.as_mut() {
            Some(indexes) => f(indexes),
            None => Err(invalid("segment indexes vanished")),
        }
    }

    /// Loads the indexes from disk after checking them; rebuilds them from the
    /// log when they are missing, torn or inconsistent.
    fn load_indexes(&self) -> io::Result<Indexes> {
        match self.load_checked_indexes() {
            Ok(indexes) => Ok(indexes),
            Err(e)
                if e.kind() == io::ErrorKind::InvalidData
                    || e.kind() == io::ErrorKind::NotFound =>
            {
                tracing::warn!(segment = %self.path(FileKind::Log).display(), error = %e, "rebuilding segment indexes");
                self.rebuild_indexes()
            }
            Err(e) => Err(e),
        }
    }

    fn load_checked_indexes(&self) -> io::Result<Indexes> {
        let size = self.size();
        let offset = IndexFile::<OffsetEntry>::load(&*self.file(FileKind::OffsetIndex)?)?;
        let time = IndexFile::<TimeEntry>::load(&*self.file(FileKind::TimeIndex)?)?;
        let mut indexes = Indexes {
            offset,
            time,
            ..Indexes::empty()
        };
        let log = self.file(FileKind::Log)?;
        // The last offset entry must name a batch that is really there.
        let mut position = 0;
        if let Some(last) = indexes.offset.last() {
            let header = self
                .header_at(&log, u64::from(last.position), size)?
                .ok_or_else(|| invalid("offset index points past the log"))?;
            if header.last_offset() != self.base_offset + i64::from(last.relative_offset) {
                return Err(invalid(
                    "offset index entry does not match the batch it points to",
                ));
            }
            position = u64::from(last.position);
        }
        if let Some(last) = indexes.time.last() {
            indexes.max_timestamp = last.timestamp;
            indexes.offset_of_max_timestamp = self.base_offset + i64::from(last.relative_offset);
        }
        if size >= RECORD_BATCH_OVERHEAD as u64 {
            let first = self
                .header_at(&log, 0, size)?
                .ok_or_else(|| invalid("first batch unreadable"))?;
            indexes.first_batch_timestamp = Some(first.max_timestamp);
        }
        // Batches after the last offset entry are not in the indexes: walk them.
        let mut walked = false;
        while position < size {
            let header = self
                .header_at(&log, position, size)?
                .ok_or_else(|| invalid("batch after the last index entry unreadable"))?;
            if header.base_offset < self.base_offset || header.magic != MAGIC_V2 {
                return Err(invalid("batch after the last index entry is inconsistent"));
            }
            if header.max_timestamp > indexes.max_timestamp {
                indexes.max_timestamp = header.max_timestamp;
                indexes.offset_of_max_timestamp = header.last_offset();
            }
            indexes.next_offset = Some(header.next_offset());
            position += header.total_size() as u64;
            walked = true;
        }
        if !walked && let Some(last) = indexes.offset.last() {
            indexes.next_offset = Some(self.base_offset + i64::from(last.relative_offset) + 1);
        }
        if position != size {
            return Err(invalid("batches overrun the log size"));
        }
        if indexes.time.last().is_some()
            && indexes
                .next_offset
                .is_none_or(|next| indexes.offset_of_max_timestamp >= next)
        {
            return Err(invalid("time index names an offset beyond the log"));
        }
        // The last time entry gives the segment's max timestamp: it must name
        // a batch with exactly that max timestamp.
        if let Some(last) = indexes.time.last() {
            let offset = self.base_offset + i64::from(last.relative_offset);
            let base = self.base_offset;
            let mut at = indexes
                .offset
                .floor(
                    || self.file(FileKind::OffsetIndex),
                    |e| base + i64::from(e.relative_offset) <= offset,
                )?
                .map_or(0, |e| u64::from(e.position));
            let mut matches = false;
            while let Some(h) = self.header_at(&log, at, size)? {
                if h.last_offset() >= offset {
                    matches = h.base_offset <= offset && h.max_timestamp == last.timestamp;
                    break;
                }
                at += h.total_size() as u64;
            }
            if !matches {
                return Err(invalid("time index entry does not match its batch"));
            }
        }
        indexes.bytes_since_last_entry =
            size - indexes.offset.last().map_or(0, |e| u64::from(e.position));
        Ok(indexes)
    }

    /// Rebuilds both indexes from the batches on disk without checking CRCs
    /// (the data is trusted; the index was not). If the batches themselves end
    /// early, only the valid prefix stays readable.
    fn rebuild_indexes(&self) -> io::Result<Indexes> {
        let rules = ScanRules {
            verify: false,
            contiguous: false,
            epochs: None,
            index_interval_bytes: u64::from(crate::config::DEFAULT_INDEX_INTERVAL_BYTES),
        };
        let (indexes, outcome) = self.scan_into_indexes(&rules, self.size())?;
        if outcome.invalid_bytes > 0 {
            tracing::error!(
                segment = %self.path(FileKind::Log).display(),
                valid_bytes = outcome.valid_bytes,
                invalid_bytes = outcome.invalid_bytes,
                reason = outcome.invalid_reason.as_deref().unwrap_or(""),
                "segment holds unreadable data; serving only its valid prefix"
            );
            self.size.store(outcome.valid_bytes, Ordering::Release);
        }
        Ok(indexes)
    }

    /// Recovery after an unclean shutdown: checks every batch by `rules`,
    /// truncates the log at the first invalid byte and rewrites both indexes.
    pub(crate) fn recover(&self, rules: &ScanRules<'_>) -> io::Result<ScanOutcome> {
        let mut guard = self.indexes.write();
        let file_len = self.file(FileKind::Log)?.metadata()?.len();
        let (indexes, outcome) = self.scan_into_indexes(rules, file_len)?;
        if outcome.invalid_bytes > 0 {
            self.file(FileKind::Log)?.set_len(outcome.valid_bytes)?;
        }
        self.next_offset.store(
            indexes.next_offset.unwrap_or(self.base_offset),
            Ordering::Release,
        );
        self.size.store(outcome.valid_bytes, Ordering::Release);
        *guard = Some(indexes);
        Ok(outcome)
    }

    /// Scans the log file up to `file_len`, checking batches by `rules`, and
    /// writes fresh index files for the valid prefix. The caller holds the
    /// index write lock, so appends wait for the rebuilt indexes.
    fn scan_into_indexes(
        &self,
        rules: &ScanRules<'_>,
        file_len: u64,
    ) -> io::Result<(Indexes, ScanOutcome)> {
        let log = self.file(FileKind::Log)?;
        let mut scanner = BatchScanner::new(&log, 0, file_len);
        let mut indexes = Indexes::empty();
        let mut offset_entries = Vec::new();
        let mut time_entries: Vec<TimeEntry> = Vec::new();
        let mut outcome = ScanOutcome::default();
        let mut expected_next: Option<i64> = rules.contiguous.then_some(self.base_offset);
        let mut min_next = self.base_offset;
        let mut last_epoch: Option<i32> = None;
        // End of the last batch that passed every check.
        let mut valid_bytes = 0;
        loop {
            let (position, header, bytes) = match scanner.next_batch()? {
                Scanned::End => break,
                Scanned::Invalid { error, .. } => {
                    outcome.invalid_reason = Some(error.to_string());
                    break;
                }
                Scanned::Batch {
                    position,
                    header,
                    bytes,
                } => (position, header, bytes),
            };
            if let Err(reason) = check_batch(
                self.base_offset,
                &header,
                bytes,
                rules,
                expected_next,
                min_next,
                last_epoch,
            ) {
                outcome.invalid_reason = Some(reason);
                break;
            }
            last_epoch = Some(header.partition_leader_epoch);
            let size = bytes.len() as u64;
            index_batch(
                &mut indexes,
                self.base_offset,
                rules.index_interval_bytes,
                AppendedBatch {
                    position,
                    size,
                    last_offset: header.last_offset(),
                    max_timestamp: header.max_timestamp,
                },
                &mut |e| offset_entries.push(e),
                &mut |e| time_entries.push(e),
            );
            if indexes.first_batch_timestamp.is_none() {
                indexes.first_batch_timestamp = Some(header.max_timestamp);
            }
            indexes.next_offset = Some(header.next_offset());
            if rules.contiguous {
                expected_next = Some(header.next_offset());
            }
            min_next = header.next_offset();
            outcome.batches += 1;
            valid_bytes = position + size;
        }
        debug_assert!(valid_bytes <= scanner.position());
        outcome.valid_bytes = valid_bytes;
        outcome.invalid_bytes = file_len - outcome.valid_bytes;
        indexes.offset.rewrite(
            &*self.file_or_create(FileKind::OffsetIndex)?,
            offset_entries,
        )?;
        indexes
            .time
            .rewrite(&*self.file_or_create(FileKind::TimeIndex)?, time_entries)?;
        Ok((indexes, outcome))
    }

    /// Appends `bufs` (whole batches, described by `batches`) at the end of
    /// the log, publishes them to readers and indexes them. The caller holds
    /// the log's writer lock. On a write error the file is cut back to its
    /// previous size before the error is returned.
    pub(crate) fn append(
        &self,
        bufs: &mut [IoSlice<'_>],
        batches: &[AppendedBatch],
        index_interval_bytes: u64,
    ) -> Result<(), AppendFailure> {
        let log = self.file(FileKind::Log).map_err(AppendFailure::Undone)?;
        let before = self.size();
        let total: u64 = batches.iter().map(|b| b.size).sum();
        debug_assert_eq!(batches.first().map(|b| b.position), Some(before));
        if let Err(e) = write_all_vectored(&log, bufs) {
            // Put the file back so the next append starts at a batch boundary.
            return match log.set_len(before) {
                Ok(()) => Err(AppendFailure::Undone(e)),
                Err(undo) => {
                    tracing::error!(error = %undo, "could not undo a failed append");
                    Err(AppendFailure::Torn(e))
                }
            };
        }
        if let Some(last) = batches.last() {
            self.next_offset
                .store(last.last_offset + 1, Ordering::Release);
        }
        self.size.store(before + total, Ordering::Release);
        self.with_indexes_mut(|indexes| {
            let mut offset_new = Vec::new();
            let mut time_new = Vec::new();
            for batch in batches {
                index_batch(
                    indexes,
                    self.base_offset,
                    index_interval_bytes,
                    *batch,
                    &mut |e| offset_new.push(e),
                    &mut |e| time_new.push(e),
                );
                if indexes.first_batch_timestamp.is_none() {
                    indexes.first_batch_timestamp = Some(batch.max_timestamp);
                }
                indexes.next_offset = Some(batch.last_offset + 1);
            }
            for e in offset_new {
                if indexes
                    .offset
                    .last()
                    .is_none_or(|l| e.relative_offset > l.relative_offset)
                {
                    indexes.offset.push(e);
                }
            }
            for e in time_new {
                if indexes
                    .time
                    .last()
                    .is_none_or(|l| e.timestamp > l.timestamp)
                {
                    indexes.time.push(e);
                }
            }
            if indexes.offset.tail_is_full() {
                indexes
                    .offset
                    .write_tail(&*self.file(FileKind::OffsetIndex)?)?;
            }
            if indexes.time.tail_is_full() {
                indexes.time.write_tail(&*self.file(FileKind::TimeIndex)?)?;
            }
            Ok(())
        })
        // The batches are in the log and visible: an index failure now must
        // not be reported as "nothing written" (the producer would retry).
        .map_err(AppendFailure::Torn)
    }

    /// Bytes of the offset and time index files, pending entries included:
    /// for the `segment.index.bytes` roll check.
    pub(crate) fn index_bytes(&self) -> io::Result<(u64, u64)> {
        self.with_indexes(|ix| Ok((ix.offset.size_bytes(), ix.time.size_bytes())))
    }

    /// Reads the header of the batch at `position`, if a whole header and a
    /// sane length lie below `limit`. `None` at or past the end.
    pub(crate) fn header_at(
        &self,
        log: &File,
        position: u64,
        limit: u64,
    ) -> io::Result<Option<BatchHeader>> {
        if position.saturating_add(RECORD_BATCH_OVERHEAD as u64) > limit {
            return Ok(None);
        }
        let mut buf = [0u8; RECORD_BATCH_OVERHEAD];
        log.read_exact_at(&mut buf, position)?;
        let header = BatchHeader::parse(&buf).map_err(|_| invalid("short batch header"))?;
        let remaining = usize::try_from(limit - position).unwrap_or(usize::MAX);
        match checked_batch_size(&header, remaining) {
            Ok(_) => Ok(Some(header)),
            Err(_) => Err(invalid("batch length out of range")),
        }
    }

    /// Position and header of the first batch whose last offset is >= `offset`,
    /// looking only below `limit` bytes.
    pub(crate) fn find_batch(
        &self,
        offset: i64,
        limit: u64,
    ) -> io::Result<Option<(u64, BatchHeader)>> {
        let log = self.file(FileKind::Log)?;
        let mut position = self.index_floor_position(&log, offset, limit)?;
        loop {
            let Some(header) = self.header_at(&log, position, limit)? else {
                return Ok(None);
            };
            if header.last_offset() >= offset {
                return Ok(Some((position, header)));
            }
            position += header.total_size() as u64;
        }
    }

    /// The position of an indexed batch at or before the one holding
    /// `offset`, checked against the log; 0 when no entry applies.
    fn index_floor_position(&self, log: &File, offset: i64, limit: u64) -> io::Result<u64> {
        let base = self.base_offset;
        let entry = self.with_indexes(|ix| {
            ix.offset.floor(
                || self.file(FileKind::OffsetIndex),
                |e| base + i64::from(e.relative_offset) <= offset && u64::from(e.position) < limit,
            )
        })?;
        let Some(entry) = entry else { return Ok(0) };
        let position = u64::from(entry.position);
        match self.header_at(log, position, limit) {
            Ok(Some(h)) if h.last_offset() == base + i64::from(entry.relative_offset) => {
                Ok(position)
            }
            _ => {
                tracing::warn!(segment = %self.path(FileKind::Log).display(), "offset index disagrees with the log; rebuilding it");
                let mut guard = self.indexes.write();
                *guard = Some(self.rebuild_indexes()?);
                Ok(0)
            }
        }
    }

    /// The end of the whole batches that start at `start` and fit in
    /// `max_bytes`, below `limit`. Uses the offset index (positions grow with
    /// offsets) to skip most of the walk.
    pub(crate) fn batch_end_within(
        &self,
        start: u64,
        max_bytes: u64,
        limit: u64,
    ) -> io::Result<u64> {
        let target = start.saturating_add(max_bytes).min(limit);
        if target == limit {
            return Ok(limit);
        }
        let log = self.file(FileKind::Log)?;
        let base = self.base_offset;
        let entry = self.with_indexes(|ix| {
            ix.offset.floor(
                || self.file(FileKind::OffsetIndex),
                |e| u64::from(e.position) <= target,
            )
        })?;
        let mut position = start;
        if let Some(entry) = entry
            && u64::from(entry.position) > start
            && let Ok(Some(h)) = self.header_at(&log, u64::from(entry.position), limit)
            && h.last_offset() == base + i64::from(entry.relative_offset)
        {
            position = u64::from(entry.position);
        }
        loop {
            let Some(header) = self.header_at(&log, position, limit)? else {
                return Ok(position);
            };
            let next = position + header.total_size() as u64;
            if next > target {
                return Ok(position);
            }
            position = next;
        }
    }

    /// The offset to start a timestamp search at: the batch named by the last
    /// time index entry whose timestamp is <= `timestamp` (every batch before
    /// it has a smaller max timestamp), or the segment start.
    pub(crate) fn time_search_start(&self, timestamp: i64, below_offset: i64) -> io::Result<i64> {
        let base = self.base_offset;
        let floor = || {
            self.with_indexes(|ix| {
                ix.time.floor(
                    || self.file(FileKind::TimeIndex),
                    |e| {
                        e.timestamp <= timestamp
                            && base + i64::from(e.relative_offset) < below_offset
                    },
                )
            })
        };
        let Some(entry) = floor()? else {
            return Ok(base);
        };
        if self.time_entry_matches(entry)? {
            return Ok(base + i64::from(entry.relative_offset));
        }
        // Never trusted: an entry must name a batch with exactly its max
        // timestamp (it was written from that batch).
        tracing::warn!(segment = %self.path(FileKind::Log).display(), "time index disagrees with the log; rebuilding it");
        {
            let mut guard = self.indexes.write();
            *guard = Some(self.rebuild_indexes()?);
        }
        match floor()? {
            Some(entry) if self.time_entry_matches(entry)? => {
                Ok(base + i64::from(entry.relative_offset))
            }
            _ => Ok(base),
        }
    }

    /// Whether the batch holding the entry's offset has the entry's timestamp
    /// as its max timestamp.
    fn time_entry_matches(&self, entry: TimeEntry) -> io::Result<bool> {
        let offset = self.base_offset + i64::from(entry.relative_offset);
        Ok(match self.find_batch(offset, self.size())? {
            Some((_, header)) => {
                header.base_offset <= offset && header.max_timestamp == entry.timestamp
            }
            None => false,
        })
    }

    /// Largest timestamp in the segment and the last offset of its batch.
    pub(crate) fn max_timestamp(&self) -> io::Result<(i64, i64)> {
        self.with_indexes(|ix| Ok((ix.max_timestamp, ix.offset_of_max_timestamp)))
    }

    /// Max timestamp of the first batch, the start of the `segment.ms` clock.
    pub(crate) fn first_batch_timestamp(&self) -> io::Result<Option<i64>> {
        self.with_indexes(|ix| Ok(ix.first_batch_timestamp))
    }

    /// The segment's max timestamp and its first batch's, for retention and
    /// the cleaner, which look at every segment of every log now and then:
    /// index state loaded only for this is dropped again, so an idle
    /// partition keeps holding no index memory.
    pub(crate) fn timestamps(&self) -> io::Result<SegmentTimestamps> {
        let was_loaded = self.indexes.read().is_some();
        let timestamps = self.with_indexes(|ix| {
            Ok(SegmentTimestamps {
                max_timestamp: ix.max_timestamp,
                first_batch_timestamp: ix.first_batch_timestamp,
            })
        })?;
        if !was_loaded {
            self.unload_indexes();
        }
        Ok(timestamps)
    }

    /// Kafka's `LogSegment.largestTimestamp`: the largest record timestamp,
    /// or for a segment without any, the time its log file was last modified.
    pub(crate) fn largest_timestamp(&self) -> io::Result<i64> {
        let max = self.timestamps()?.max_timestamp;
        if max >= 0 {
            return Ok(max);
        }
        Ok(self.last_modified_ms().unwrap_or(self.created_ms))
    }

    /// When the log file was last modified, in ms since the epoch.
    pub(crate) fn last_modified_ms(&self) -> Option<i64> {
        let modified = self
            .file(FileKind::Log)
            .ok()?
            .metadata()
            .ok()?
            .modified()
            .ok()?;
        system_time_ms(modified)
    }

    /// Bytes of the offset and time index files on disk (sealed segments
    /// have no pending entries), for grouping segments when cleaning.
    pub(crate) fn index_file_bytes(&self) -> (u64, u64) {
        let len = |kind| fs::metadata(self.path(kind)).map_or(0, |m| m.len());
        (len(FileKind::OffsetIndex), len(FileKind::TimeIndex))
    }

    /// Offset after the last batch, if the segment holds any.
    pub(crate) fn next_offset(&self) -> io::Result<Option<i64>> {
        self.with_indexes(|ix| Ok(ix.next_offset))
    }

    /// Size and an offset at or above the end of every batch within it, as
    /// published to readers; the offset is `None` while unknown.
    pub(crate) fn published(&self) -> (u64, Option<i64>) {
        let size = self.size();
        let next = self.next_offset.load(Ordering::Acquire);
        (size, (next != UNKNOWN_OFFSET).then_some(next))
    }

    /// Removes every batch whose last offset is >= `offset`. Returns the offset
    /// after the last batch kept (or `None` when nothing is kept).
    pub(crate) fn truncate_to(&self, offset: i64) -> io::Result<Option<i64>> {
        let size = self.size();
        let Some((position, _)) = self.find_batch(offset, size)? else {
            return self.next_offset();
        };
        let log = self.file(FileKind::Log)?;
        // Readers that resolved positions before this must not trust them.
        self.generation.fetch_add(1, Ordering::AcqRel);
        // Shrink what readers may see first, then the file.
        self.size.store(position, Ordering::Release);
        log.set_len(position)?;
        let base = self.base_offset;
        self.truncate_txn_index(offset)?;
        let offset_file = self.file(FileKind::OffsetIndex)?;
        let time_file = self.file(FileKind::TimeIndex)?;
        self.with_indexes_mut(|ix| {
            ix.offset
                .truncate(&offset_file, |e| u64::from(e.position) < position)?;
            ix.time
                .truncate(&time_file, |e| base + i64::from(e.relative_offset) < offset)?;
            (ix.max_timestamp, ix.offset_of_max_timestamp) = match ix.time.last() {
                Some(e) => (e.timestamp, base + i64::from(e.relative_offset)),
                None => (NO_TIMESTAMP, -1),
            };
            ix.next_offset = None;
            if position == 0 {
                ix.first_batch_timestamp = None;
            }
            // Batches after the last offset entry are not covered by the time
            // index: walk them for the max timestamp and the end offset.
            let mut at = ix.offset.last().map_or(0, |e| u64::from(e.position));
            while let Some(h) = self.header_at(&log, at, position)? {
                if h.max_timestamp > ix.max_timestamp {
                    ix.max_timestamp = h.max_timestamp;
                    ix.offset_of_max_timestamp = h.last_offset();
                }
                ix.next_offset = Some(h.next_offset());
                at += h.total_size() as u64;
            }
            ix.bytes_since_last_entry =
                position - ix.offset.last().map_or(0, |e| u64::from(e.position));
            self.next_offset
                .store(ix.next_offset.unwrap_or(base), Ordering::Release);
            Ok(ix.next_offset)
        })
    }

    /// Closes the segment for appends: adds the final time index entry (the
    /// segment's max timestamp, as Kafka does on roll) and writes pending
    /// index entries. Does not fsync; [`Self::flush`] does.
    pub(crate) fn seal(&self) -> io::Result<()> {
        let base = self.base_offset;
        if self.indexes.read().is_none() {
            return Ok(());
        }
        self.with_indexes_mut(|ix| {
            if ix.max_timestamp != NO_TIMESTAMP
                && ix
                    .time
                    .last()
                    .is_none_or(|l| ix.max_timestamp > l.timestamp)
                && let Ok(relative_offset) = u32::try_from(ix.offset_of_max_timestamp - base)
            {
                ix.time.push(TimeEntry {
                    timestamp: ix.max_timestamp,
                    relative_offset,
                });
            }
            ix.offset.write_tail(&*self.file(FileKind::OffsetIndex)?)?;
            ix.time.write_tail(&*self.file(FileKind::TimeIndex)?)
        })
    }

    /// Makes the segment durable: writes pending index entries, then fsyncs
    /// the log and both indexes.
    pub(crate) fn flush(&self) -> io::Result<()> {
        if self.indexes.read().is_some() {
            self.with_indexes_mut(|ix| {
                ix.offset.write_tail(&*self.file(FileKind::OffsetIndex)?)?;
                ix.time.write_tail(&*self.file(FileKind::TimeIndex)?)
            })?;
        }
        self.file(FileKind::OffsetIndex)?.sync_data()?;
        self.file(FileKind::TimeIndex)?.sync_data()?;
        if let Some(txn) = self.txn_index_file()? {
            txn.sync_data()?;
        }
        self.file(FileKind::Log)?.sync_data()
    }

    /// The transaction index file, `None` when the segment has none.
    fn txn_index_file(&self) -> io::Result<Option<Arc<File>>> {
        match self.file(FileKind::TxnIndex) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Adds an aborted transaction whose marker is in this segment.
    pub(crate) fn append_aborted_txn(&self, entry: &AbortedTxn) -> io::Result<()> {
        txn_index::append(&*self.file_or_create(FileKind::TxnIndex)?, entry)
    }

    /// The aborted transactions of this segment's index that overlap
    /// `[fetch_offset, upper_bound)`.
    pub(crate) fn aborted_txns(
        &self,
        fetch_offset: i64,
        upper_bound: i64,
    ) -> io::Result<TxnSearch> {
        match self.txn_index_file()? {
            Some(file) => txn_index::search(&file, fetch_offset, upper_bound),
            None => Ok(TxnSearch::default()),
        }
    }

    /// Every entry of the transaction index.
    pub(crate) fn aborted_txn_entries(&self) -> io::Result<Vec<AbortedTxn>> {
        match self.txn_index_file()? {
            Some(file) => txn_index::entries(&file),
            None => Ok(Vec::new()),
        }
    }

    /// Drops the transaction index entries whose marker is at or above
    /// `offset`; with `offset` at the base, empties it (before a rebuild).
    pub(crate) fn truncate_txn_index(&self, offset: i64) -> io::Result<()> {
        match self.txn_index_file()? {
            Some(file) => txn_index::truncate_to(&file, offset),
            None => Ok(()),
        }
    }

    /// Only the log data, for `flush.messages` and `flush.ms`: indexes of the
    /// active segment are rebuilt by recovery anyway.
    pub(crate) fn sync_log(&self) -> io::Result<()> {
        self.file(FileKind::Log)?.sync_data()
    }

    /// Renames the files to `*.deleted`; readers holding the segment keep
    /// working until [`Self::delete_files`].
    pub(crate) fn mark_deleted(&self) -> io::Result<()> {
        if self.deleted.load(Ordering::Acquire) {
            return Ok(());
        }
        self.files.forget(self.id);
        for kind in ALL_KINDS {
            let from = self.path(kind);
            let mut to = from.clone().into_os_string();
            to.push(self.deleted_suffix());
            match fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.deleted.store(true, Ordering::Release);
        Ok(())
    }

    /// Closes the cached handles of this segment's files (they open again
    /// on demand). A deleted file's space is freed only once its last handle
    /// is closed.
    pub(crate) fn release_files(&self) {
        self.files.forget(self.id);
    }

    /// Removes the files (after [`Self::mark_deleted`]).
    pub(crate) fn delete_files(&self) -> io::Result<()> {
        self.files.forget(self.id);
        for kind in ALL_KINDS {
            match fs::remove_file(self.path(kind)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Heap bytes this segment holds beyond its struct.
    pub(crate) fn memory_bytes(&self) -> usize {
        let indexes = self.indexes.read();
        size_of::<Self>()
            + indexes.as_ref().map_or(0, |ix| {
                size_of::<Indexes>() + ix.offset.memory_bytes() + ix.time.memory_bytes()
            })
    }

    /// Drops the loaded index state of a segment that takes no appends, so an
    /// idle partition holds no index memory.
    pub(crate) fn unload_indexes(&self) {
        let mut guard = self.indexes.write();
        if let Some(ix) = guard.as_mut() {
            let offset_file = self.file(FileKind::OffsetIndex);
            let time_file = self.file(FileKind::TimeIndex);
            if let (Ok(o), Ok(t)) = (offset_file, time_file)
                && ix.offset.write_tail(&o).is_ok()
                && ix.time.write_tail(&t).is_ok()
            {
                *guard = None;
            }
        }
    }

    /// Whether the index state is in memory.
    #[cfg(test)]
    pub(crate) fn indexes_loaded(&self) -> bool {
        self.indexes.read().is_some()
    }

    #[cfg(test)]
    pub(crate) fn index_entries(&self) -> io::Result<(Vec<OffsetEntry>, Vec<TimeEntry>)> {
        let o = self.file(FileKind::OffsetIndex)?;
        let t = self.file(FileKind::TimeIndex)?;
        self.with_indexes(|ix| Ok((ix.offset.all(&o)?, ix.time.all(&t)?)))
    }
}

/// A segment's max timestamp and its first batch's max timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentTimestamps {
    /// `NO_TIMESTAMP` when the segment holds no batch with a timestamp.
    pub(crate) max_timestamp: i64,
    pub(crate) first_batch_timestamp: Option<i64>,
}

/// Milliseconds since the epoch of a file time; `None` before 1970.
pub(crate) fn system_time_ms(time: SystemTime) -> Option<i64> {
    let since = time.duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(since.as_millis()).ok()
}

/// `<dir>/<base><suffix><stage>`, e.g. `00000000000000000000.log.cleaned`.
pub(crate) fn staged_path(dir: &Path, base_offset: i64, suffix: &str, stage: &str) -> PathBuf {
    let mut name = file_name(base_offset, suffix);
    name.push_str(stage);
    dir.join(name)
}

/// Bytes of written log buffered before a write to a cleaned segment: large
/// writes without holding more than a small, fixed amount of memory.
const SEGMENT_WRITER_BUFFER_BYTES: usize = 1 << 20;

/// A segment the cleaner writes aside: `<base>.log.cleaned` with its
/// `.index.cleaned` and `.timeindex.cleaned`, indexed by the rules appends
/// follow. Nothing reads it until the cleaner swaps it into the log.
#[derive(Debug)]
pub(crate) struct SegmentWriter {
    base_offset: i64,
    log: io::BufWriter<File>,
    offset_file: File,
    time_file: File,
    /// Always written, even empty: a swap that a crash interrupts is
    /// completed with it (see `complete_swap`), so an old segment's index
    /// of the same base offset must never stand in for it.
    txn_file: File,
    aborted: Vec<AbortedTxn>,
    indexes: Indexes,
    index_interval_bytes: u64,
    size: u64,
}

impl SegmentWriter {
    /// Creates the three `.cleaned` files, replacing leftovers of an earlier
    /// attempt at the same base offset.
    pub(crate) fn create(
        dir: &Path,
        base_offset: i64,
        index_interval_bytes: u64,
    ) -> io::Result<Self> {
        let create = |suffix: &str| -> io::Result<File> {
            let path = staged_path(dir, base_offset, suffix, CLEANED_SUFFIX);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
        };
        let log = create(LOG_SUFFIX)?;
        let offset_file = create(INDEX_SUFFIX)?;
        let time_file = create(TIME_INDEX_SUFFIX)?;
        let txn_file = create(TXN_INDEX_SUFFIX)?;
        Ok(Self {
            base_offset,
            log: io::BufWriter::with_capacity(SEGMENT_WRITER_BUFFER_BYTES, log),
            offset_file,
            time_file,
            txn_file,
            aborted: Vec::new(),
            indexes: Indexes::empty(),
            index_interval_bytes,
            size: 0,
        })
    }

    /// Aborted transactions whose markers the cleaned segment keeps.
    pub(crate) fn add_aborted_txns(&mut self, entries: Vec<AbortedTxn>) {
        self.aborted.extend(entries);
    }

    /// Appends one whole batch whose header is `header`. Fails (and writes
    /// nothing) if the segment could not index it: 32-bit relative offsets
    /// and positions, as a segment of the log.
    pub(crate) fn append(&mut self, batch: &[u8], header: &BatchHeader) -> io::Result<()> {
        let fits_offsets = header.checked_last_offset().is_some_and(|last| {
            header.base_offset >= self.base_offset && last - self.base_offset <= i64::from(i32::MAX)
        });
        let end = self.size + batch.len() as u64;
        if !fits_offsets || end > i32::MAX as u64 {
            return Err(invalid(
                "a cleaned segment would overflow its 32-bit offsets or positions",
            ));
        }
        self.log.write_all(batch)?;
        let appended = AppendedBatch {
            position: self.size,
            size: batch.len() as u64,
            last_offset: header.last_offset(),
            max_timestamp: header.max_timestamp,
        };
        self.size = end;
        let mut offset_new = None;
        let mut time_new = None;
        index_batch(
            &mut self.indexes,
            self.base_offset,
            self.index_interval_bytes,
            appended,
            &mut |e| offset_new = Some(e),
            &mut |e| time_new = Some(e),
        );
        let ix = &mut self.indexes;
        if ix.first_batch_timestamp.is_none() {
            ix.first_batch_timestamp = Some(header.max_timestamp);
        }
        ix.next_offset = Some(header.next_offset());
        if let Some(e) = offset_new
            && ix
                .offset
                .last()
                .is_none_or(|l| e.relative_offset > l.relative_offset)
        {
            ix.offset.push(e);
        }
        if let Some(e) = time_new
            && ix.time.last().is_none_or(|l| e.timestamp > l.timestamp)
        {
            ix.time.push(e);
        }
        if ix.offset.tail_is_full() {
            ix.offset.write_tail(&self.offset_file)?;
        }
        if ix.time.tail_is_full() {
            ix.time.write_tail(&self.time_file)?;
        }
        Ok(())
    }

    /// Writes what is buffered, the last time index entry (as a roll does)
    /// and the index tails, sets the log's modification time to `modified`
    /// (Kafka keeps the replaced segments' time, which retention may use)
    /// and fsyncs all three files. Returns the log's size.
    pub(crate) fn finish(mut self, modified: Option<SystemTime>) -> io::Result<u64> {
        self.log.flush()?;
        let ix = &mut self.indexes;
        if ix.max_timestamp != NO_TIMESTAMP
            && ix
                .time
                .last()
                .is_none_or(|l| ix.max_timestamp > l.timestamp)
            && let Ok(relative_offset) =
                u32::try_from(ix.offset_of_max_timestamp - self.base_offset)
        {
            ix.time.push(TimeEntry {
                timestamp: ix.max_timestamp,
                relative_offset,
            });
        }
        ix.offset.write_tail(&self.offset_file)?;
        ix.time.write_tail(&self.time_file)?;
        let log = self.log.get_ref();
        if let Some(modified) = modified {
            log.set_modified(modified)?;
        }
        let mut txn = Vec::with_capacity(self.aborted.len() * txn_index::ENTRY_BYTES);
        for entry in &self.aborted {
            txn.extend_from_slice(&entry.encode());
        }
        self.txn_file.write_all_at(&txn, 0)?;
        log.sync_all()?;
        self.offset_file.sync_all()?;
        self.time_file.sync_all()?;
        self.txn_file.sync_all()?;
        Ok(self.size)
    }

    /// The files this writer creates, for cleaning up after a failure.
    pub(crate) fn remove_files(dir: &Path, base_offset: i64) -> io::Result<()> {
        for suffix in [
            LOG_SUFFIX,
            INDEX_SUFFIX,
            TIME_INDEX_SUFFIX,
            TXN_INDEX_SUFFIX,
        ] {
            match fs::remove_file(staged_path(dir, base_offset, suffix, CLEANED_SUFFIX)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

/// The index bookkeeping of one appended batch, exactly as Kafka's
/// `LogSegment.append`: update the max timestamp, then add entries if more
/// than `index.interval.bytes` were appended since the last entry.
fn index_batch(
    ix: &mut Indexes,
    base_offset: i64,
    index_interval_bytes: u64,
    batch: AppendedBatch,
    offset_entry: &mut dyn FnMut(OffsetEntry),
    time_entry: &mut dyn FnMut(TimeEntry),
) {
    if batch.max_timestamp > ix.max_timestamp {
        ix.max_timestamp = batch.max_timestamp;
        ix.offset_of_max_timestamp = batch.last_offset;
    }
    if ix.bytes_since_last_entry > index_interval_bytes {
        // Relative offsets and positions fit in 32 bits: the log rolls before
        // either could overflow.
        if let (Ok(relative_offset), Ok(position)) = (
            u32::try_from(batch.last_offset - base_offset),
            u32::try_from(batch.position),
        ) {
            offset_entry(OffsetEntry {
                relative_offset,
                position,
            });
        }
        if let Ok(relative_offset) = u32::try_from(ix.offset_of_max_timestamp - base_offset) {
            time_entry(TimeEntry {
                timestamp: ix.max_timestamp,
                relative_offset,
            });
        }
        ix.bytes_since_last_entry = 0;
    }
    ix.bytes_since_last_entry += batch.size;
}

/// Checks one batch found by a scan against `rules`.
fn check_batch(
    segment_base: i64,
    header: &BatchHeader,
    bytes: &[u8],
    rules: &ScanRules<'_>,
    expected_next: Option<i64>,
    min_next: i64,
    last_epoch: Option<i32>,
) -> Result<(), String> {
    if rules.verify {
        record_batch::validate_batch(bytes).map_err(|e| e.to_string())?;
    } else if header.magic != MAGIC_V2 {
        return Err(format!("magic {} is not 2", header.magic));
    }
    if header.last_offset_delta < 0 {
        return Err("negative last offset delta".to_owned());
    }
    if header.base_offset < min_next {
        return Err(format!(
            "batch base offset {} goes back before {min_next}",
            header.base_offset
        ));
    }
    if let Some(expected) = expected_next
        && header.base_offset != expected
    {
        return Err(format!(
            "batch base offset {} where {expected} was expected",
            header.base_offset
        ));
    }
    let Some(last_offset) = header.checked_last_offset() else {
        return Err("batch offsets overflow".to_owned());
    };
    if last_offset - segment_base > i64::from(i32::MAX) {
        return Err("batch offsets overflow the segment's relative offsets".to_owned());
    }
    if !rules.verify {
        return Ok(());
    }
    // Leaders stamp their epoch and epochs only grow: a batch whose epoch
    // goes back (or below -1) is corrupt whatever the cache says.
    let epoch = header.partition_leader_epoch;
    if epoch < record_batch::NO_PARTITION_LEADER_EPOCH
        || last_epoch.is_some_and(|last| epoch < last)
    {
        return Err(format!("leader epoch {epoch} goes backwards"));
    }
    match rules.epochs {
        Some(cache) if !cache.covers(epoch, header.base_offset) => Err(format!(
            "leader epoch {epoch} does not fit the leader epoch cache at offset {}",
            header.base_offset
        )),
        _ => Ok(()),
    }
}

fn write_all_vectored(file: &File, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    let mut writer = file;
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match writer.write_vectored(bufs) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "log file accepted no bytes",
                ));
            }
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
