//! The sparse indexes of a segment, in Kafka's file formats:
//!
//! - `*.index`: 8-byte entries `(relative offset: u32, position: u32)`, big-endian.
//!   An entry says "the batch whose last offset is `base + relative offset`
//!   starts at byte `position` of the `.log` file".
//! - `*.timeindex`: 12-byte entries `(timestamp: i64, relative offset: u32)`.
//!   An entry says "the largest timestamp up to and including the batch whose
//!   last offset is `base + relative offset` is `timestamp`"; timestamps grow
//!   strictly from entry to entry.
//!
//! Both are sparse: an entry every `index.interval.bytes` of log. Entries grow
//! monotonically in every field, so a lookup is a binary search.
//!
//! Unlike Kafka we do not mmap the files. The entries already on disk are
//! searched with positional reads (the page cache makes that cheap), and the
//! newest entries of the active segment sit in a small in-memory tail that is
//! written out in batches. An idle partition thus holds no index memory and no
//! open descriptor. Entries read from disk are never trusted blindly: callers
//! check that an entry's position really holds the batch it names.

use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Entries kept in memory before they are written to the file in one write.
/// 512 offset entries are 4 KiB, covering 2 MiB of log at the default interval.
pub(crate) const INDEX_TAIL_MAX_ENTRIES: usize = 512;

/// One fixed-size index entry.
pub(crate) trait IndexEntry: Copy + Debug + PartialEq {
    const SIZE: usize;
    fn encode(&self, out: &mut [u8]);
    fn decode(buf: &[u8]) -> Self;
    /// The relative offset the entry names.
    fn relative_offset(&self) -> u32;
}

/// An entry of the offset index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub(crate) relative_offset: u32,
    pub(crate) position: u32,
}

impl IndexEntry for OffsetEntry {
    const SIZE: usize = 8;

    fn encode(&self, out: &mut [u8]) {
        out[..4].copy_from_slice(&self.relative_offset.to_be_bytes());
        out[4..8].copy_from_slice(&self.position.to_be_bytes());
    }

    fn decode(buf: &[u8]) -> Self {
        Self {
            relative_offset: u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]),
            position: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        }
    }

    fn relative_offset(&self) -> u32 {
        self.relative_offset
    }
}

/// An entry of the time index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub(crate) timestamp: i64,
    pub(crate) relative_offset: u32,
}

impl IndexEntry for TimeEntry {
    const SIZE: usize = 12;

    fn encode(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&self.relative_offset.to_be_bytes());
    }

    fn decode(buf: &[u8]) -> Self {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&buf[..8]);
        Self {
            timestamp: i64::from_be_bytes(ts),
            relative_offset: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
        }
    }

    fn relative_offset(&self) -> u32 {
        self.relative_offset
    }
}

/// An index file: `disk_entries` entries in the file, then `tail` in memory.
#[derive(Debug)]
pub(crate) struct IndexFile<E> {
    disk_entries: u64,
    tail: Vec<E>,
    last: Option<E>,
}

impl<E: IndexEntry> IndexFile<E> {
    pub(crate) fn empty() -> Self {
        Self {
            disk_entries: 0,
            tail: Vec::new(),
            last: None,
        }
    }

    /// Takes the entries already in `file`. Fails with `InvalidData` if its
    /// length is not a whole number of entries or the entries are out of order
    /// at the ends (full checks happen where entries are used).
    pub(crate) fn load(file: &File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        let size = E::SIZE as u64;
        if len % size != 0 {
            return Err(invalid("index length is not a multiple of the entry size"));
        }
        let mut index = Self {
            disk_entries: len / size,
            tail: Vec::new(),
            last: None,
        };
        if index.disk_entries > 0 {
            let first = index.read_disk(file, 0)?;
            let last = index.read_disk(file, index.disk_entries - 1)?;
            if last.relative_offset() < first.relative_offset() {
                return Err(invalid("index entries out of order"));
            }
            index.last = Some(last);
        }
        Ok(index)
    }

    pub(crate) fn len(&self) -> u64 {
        self.disk_entries + self.tail.len() as u64
    }

    pub(crate) fn last(&self) -> Option<E> {
        self.last
    }

    /// Bytes of the file once the tail is written.
    pub(crate) fn size_bytes(&self) -> u64 {
        self.len() * E::SIZE as u64
    }

    /// Heap memory held by the tail.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.tail.capacity() * size_of::<E>()
    }

    pub(crate) fn tail_is_full(&self) -> bool {
        self.tail.len() >= INDEX_TAIL_MAX_ENTRIES
    }

    /// Adds an entry in memory; [`Self::write_tail`] persists it.
    pub(crate) fn push(&mut self, entry: E) {
        self.tail.push(entry);
        self.last = Some(entry);
    }

    /// Appends the in-memory entries to `file`.
    pub(crate) fn write_tail(&mut self, file: &File) -> io::Result<()> {
        if self.tail.is_empty() {
            return Ok(());
        }
        let mut buf = vec![0u8; self.tail.len() * E::SIZE];
        for (entry, out) in self.tail.iter().zip(buf.chunks_exact_mut(E::SIZE)) {
            entry.encode(out);
        }
        file.write_all_at(&buf, self.disk_entries * E::SIZE as u64)?;
        self.disk_entries += self.tail.len() as u64;
        self.tail = Vec::new();
        Ok(())
    }

    /// Replaces the whole file with `entries`.
    pub(crate) fn rewrite(&mut self, file: &File, entries: Vec<E>) -> io::Result<()> {
        file.set_len(0)?;
        self.disk_entries = 0;
        self.last = entries.last().copied();
        self.tail = entries;
        self.write_tail(file)
    }

    /// The last entry for which `below` holds, where `below` holds for a prefix
    /// of the entries (true, true, ..., false, false).
    pub(crate) fn floor(
        &self,
        file: impl Fn() -> io::Result<std::sync::Arc<File>>,
        below: impl Fn(&E) -> bool,
    ) -> io::Result<Option<E>> {
        match self.last {
            None => return Ok(None),
            Some(last) if below(&last) => return Ok(Some(last)),
            Some(_) => {}
        }
        if let Some(first_tail) = self.tail.first()
            && below(first_tail)
        {
            let n = self.tail.partition_point(&below);
            return Ok(Some(self.tail[n - 1]));
        }
        if self.disk_entries == 0 {
            return Ok(None);
        }
        let file = file()?;
        // Invariant: entries [0, lo) satisfy `below`, entries [hi, n) do not.
        let (mut lo, mut hi) = (0u64, self.disk_entries);
        let mut best = None;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let entry = self.read_disk(&file, mid)?;
            if below(&entry) {
                best = Some(entry);
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(best)
    }

    /// Keeps only the entries for which `keep` holds (a prefix).
    pub(crate) fn truncate(&mut self, file: &File, keep: impl Fn(&E) -> bool) -> io::Result<()> {
        if let Some(first_tail) = self.tail.first()
            && keep(first_tail)
        {
            // Every entry on disk precedes the tail, so all of them stay.
            let n = self.tail.partition_point(&keep);
            self.tail.truncate(n);
            self.last = self.tail.last().copied();
            return Ok(());
        }
        self.tail.clear();
        let (mut lo, mut hi) = (0u64, self.disk_entries);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if keep(&self.read_disk(file, mid)?) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        file.set_len(lo * E::SIZE as u64)?;
        self.disk_entries = lo;
        self.last = if lo > 0 {
            Some(self.read_disk(file, lo - 1)?)
        } else {
            None
        };
        Ok(())
    }

    /// Entry `i` of those on disk.
    fn read_disk(&self, file: &File, i: u64) -> io::Result<E> {
        let mut buf = [0u8; 16];
        let buf = &mut buf[..E::SIZE];
        file.read_exact_at(buf, i * E::SIZE as u64)?;
        Ok(E::decode(buf))
    }

    /// Every entry, disk and tail (for tests and checks).
    #[cfg(test)]
    pub(crate) fn all(&self, file: &File) -> io::Result<Vec<E>> {
        let mut out = Vec::new();
        for i in 0..self.disk_entries {
            out.push(self.read_disk(file, i)?);
        }
        out.extend_from_slice(&self.tail);
        Ok(out)
    }
}

pub(crate) fn invalid(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::sync::Arc;

    use super::*;

    fn file(dir: &tempfile::TempDir) -> Arc<File> {
        Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(dir.path().join("x.index"))
                .unwrap(),
        )
    }

    #[test]
    fn floor_searches_disk_and_tail_alike() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(&dir);
        let mut index = IndexFile::<OffsetEntry>::empty();
        for i in 0..2000u32 {
            index.push(OffsetEntry {
                relative_offset: i * 10,
                position: i * 100,
            });
            if index.tail_is_full() {
                index.write_tail(&f).unwrap();
            }
        }
        let open = || Ok(Arc::clone(&f));
        for target in [0u32, 5, 10, 9999, 15_000, 19_990, 50_000] {
            let found = index
                .floor(open, |e| e.relative_offset <= target)
                .unwrap()
                .unwrap();
            assert_eq!(found.relative_offset, (target / 10).min(1999) * 10);
        }
        // Reloading from the file sees the written entries only.
        let written = index.len() - index.tail.len() as u64;
        let reloaded = IndexFile::<OffsetEntry>::load(&f).unwrap();
        assert_eq!(reloaded.len(), written);
    }

    #[test]
    fn truncate_drops_a_suffix_on_disk_and_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(&dir);
        let mut index = IndexFile::<TimeEntry>::empty();
        for i in 0..1000u32 {
            index.push(TimeEntry {
                timestamp: i64::from(i),
                relative_offset: i,
            });
            if index.tail_is_full() {
                index.write_tail(&f).unwrap();
            }
        }
        index.truncate(&f, |e| e.relative_offset < 700).unwrap();
        assert_eq!(index.len(), 700);
        assert_eq!(index.last().unwrap().relative_offset, 699);
        index.truncate(&f, |e| e.relative_offset < 100).unwrap();
        assert_eq!(index.all(&f).unwrap().len(), 100);
        assert_eq!(f.metadata().unwrap().len(), 100 * 12);
    }

    #[test]
    fn a_torn_index_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(&dir);
        f.write_all_at(&[0u8; 13], 0).unwrap();
        assert!(IndexFile::<OffsetEntry>::load(&f).is_err());
    }
}
