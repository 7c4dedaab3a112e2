//! A bounded cache of open file handles, shared by every log of a data directory.
//!
//! Kafka keeps one descriptor per segment open for the life of the broker, so
//! 10,000 partitions need a raised ulimit. Strom opens segment and index files
//! on demand through this cache and closes the least recently used ones past
//! `capacity`. A handle handed out stays valid while its `Arc` lives, even if
//! the cache evicts it meanwhile.

use std::fs::{File, OpenOptions};
use std::io;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use lru::LruCache;
use parking_lot::Mutex;

/// Default number of files kept open: well below Linux's common soft limit of
/// 1024 descriptors, leaving room for sockets.
pub const DEFAULT_OPEN_FILES_MAX: usize = 512;

/// Which of a segment's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum FileKind {
    /// `*.log`: opened for reading and appending.
    Log,
    /// `*.index`: opened for positional reads and writes.
    OffsetIndex,
    /// `*.timeindex`: opened for positional reads and writes.
    TimeIndex,
    /// `*.txnindex`: opened for positional reads and writes; exists only
    /// once the segment holds an abort marker.
    TxnIndex,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    segment_id: u64,
    kind: FileKind,
}

/// The shared cache of open files. Cheap to clone through `Arc`.
#[derive(Debug)]
pub struct FileCache {
    files: Mutex<LruCache<FileKey, Arc<File>>>,
    next_segment_id: AtomicU64,
}

impl Default for FileCache {
    fn default() -> Self {
        Self::new(DEFAULT_OPEN_FILES_MAX)
    }
}

impl FileCache {
    /// A cache that keeps at most `capacity` files open (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            files: Mutex::new(LruCache::new(capacity)),
            next_segment_id: AtomicU64::new(1),
        }
    }

    /// How many files the cache holds open now.
    pub fn open_files(&self) -> usize {
        self.files.lock().len()
    }

    /// The cache's bound on open files.
    pub fn capacity(&self) -> usize {
        self.files.lock().cap().get()
    }

    /// A process-unique id for a new segment object; its files are cached
    /// under it.
    pub(crate) fn next_segment_id(&self) -> u64 {
        self.next_segment_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The open file of `segment_id`'s `kind`, opening the file at `path()`
    /// if it is not cached. The file must exist.
    pub(crate) fn get(
        &self,
        segment_id: u64,
        kind: FileKind,
        path: impl FnOnce() -> PathBuf,
    ) -> io::Result<Arc<File>> {
        let key = FileKey { segment_id, kind };
        if let Some(file) = self.files.lock().get(&key) {
            return Ok(Arc::clone(file));
        }
        // Open outside the lock: opening may block on the file system. The
        // path is built only here: formatting it on every hit would cost more
        // than the lookup.
        let file = Arc::new(open_options(kind).open(path())?);
        self.files.lock().put(key, Arc::clone(&file));
        Ok(file)
    }

    /// Creates `path` (which must not exist) and caches its handle.
    pub(crate) fn create(
        &self,
        segment_id: u64,
        kind: FileKind,
        path: &Path,
    ) -> io::Result<Arc<File>> {
        let file = Arc::new(open_options(kind).create_new(true).open(path)?);
        self.files
            .lock()
            .put(FileKey { segment_id, kind }, Arc::clone(&file));
        Ok(file)
    }

    /// Drops the cached handles of a segment, before its files are renamed,
    /// replaced or deleted.
    pub(crate) fn forget(&self, segment_id: u64) {
        let mut files = self.files.lock();
        for kind in [
            FileKind::Log,
            FileKind::OffsetIndex,
            FileKind::TimeIndex,
            FileKind::TxnIndex,
        ] {
            files.pop(&FileKey { segment_id, kind });
        }
    }
}

fn open_options(kind: FileKind) -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true);
    match kind {
        // Appends go to the end with O_APPEND: a torn write can only ever be at
        // the tail, which recovery cuts off.
        FileKind::Log => options.append(true),
        // Index files take positional writes; pwrite ignores the offset on an
        // O_APPEND descriptor on Linux, so these must not use it.
        FileKind::OffsetIndex | FileKind::TimeIndex | FileKind::TxnIndex => options.write(true),
    };
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_past_capacity_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(2);
        for i in 0..5u64 {
            let path = dir.path().join(format!("{i}.log"));
            cache.create(i, FileKind::Log, &path).unwrap();
            assert!(cache.open_files() <= 2);
        }
        // Evicted files open again on demand.
        let file = cache
            .get(0, FileKind::Log, || dir.path().join("0.log"))
            .unwrap();
        assert_eq!(file.metadata().unwrap().len(), 0);
        assert_eq!(cache.open_files(), 2);
        cache.forget(0);
        assert_eq!(cache.open_files(), 1);
    }
}
