//! The aborted-transaction index of a segment (Kafka's `.txnindex`).
//!
//! When an abort marker is appended, the log adds an entry to the index of the
//! segment that holds the marker: the producer id, the first offset of the
//! aborted transaction, the offset of the marker (its last offset) and the
//! last stable offset just after the marker. A read_committed Fetch asks for
//! the aborted transactions that overlap the offsets it returns, so that the
//! consumer can drop their records (KIP-98).
//!
//! # Format (Kafka's `AbortedTxn`, version 0)
//!
//! Entries of 34 bytes, end to end, in the order their markers were appended
//! (so by increasing last offset). Integers are big-endian.
//!
//! ```text
//!   version               i16   0
//!   producer_id           i64
//!   first_offset          i64   first offset of the transaction
//!   last_offset           i64   offset of the abort marker
//!   last_stable_offset    i64   the partition's last stable offset after it
//! ```
//!
//! The file exists only once a segment has an entry (as in Kafka). A torn
//! tail (length not a multiple of 34) is ignored when read and overwritten by
//! the next append; an unclean shutdown rebuilds the index of every recovered
//! segment from the log anyway.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Version of the entries this code writes and reads.
const ENTRY_VERSION: i16 = 0;

// One entry, as chained offsets.
const VERSION_OFFSET: usize = 0;
const PRODUCER_ID_OFFSET: usize = VERSION_OFFSET + size_of::<i16>();
const FIRST_OFFSET_OFFSET: usize = PRODUCER_ID_OFFSET + size_of::<i64>();
const LAST_OFFSET_OFFSET: usize = FIRST_OFFSET_OFFSET + size_of::<i64>();
const LAST_STABLE_OFFSET_OFFSET: usize = LAST_OFFSET_OFFSET + size_of::<i64>();
/// Bytes of one entry.
pub(crate) const ENTRY_BYTES: usize = LAST_STABLE_OFFSET_OFFSET + size_of::<i64>();
const _: () = assert!(ENTRY_BYTES == 34);

/// Entries read from disk per positional read while searching: 64 KiB of
/// buffer whatever the size of the index (a segment of 1 GiB of minimal
/// abort markers could hold hundreds of MiB of entries).
const ENTRIES_PER_READ: usize = 1927;
const _: () = assert!(ENTRIES_PER_READ * ENTRY_BYTES <= 64 << 10);

/// One aborted transaction, as Fetch reports it (plus where it ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    /// Offset of the transaction's first batch in this partition.
    pub first_offset: i64,
    /// Offset of the abort marker.
    pub last_offset: i64,
    /// The partition's last stable offset once the marker was written.
    pub last_stable_offset: i64,
}

impl AbortedTxn {
    pub(crate) fn encode(&self) -> [u8; ENTRY_BYTES] {
        let mut buf = [0u8; ENTRY_BYTES];
        buf[VERSION_OFFSET..PRODUCER_ID_OFFSET].copy_from_slice(&ENTRY_VERSION.to_be_bytes());
        buf[PRODUCER_ID_OFFSET..FIRST_OFFSET_OFFSET]
            .copy_from_slice(&self.producer_id.to_be_bytes());
        buf[FIRST_OFFSET_OFFSET..LAST_OFFSET_OFFSET]
            .copy_from_slice(&self.first_offset.to_be_bytes());
        buf[LAST_OFFSET_OFFSET..LAST_STABLE_OFFSET_OFFSET]
            .copy_from_slice(&self.last_offset.to_be_bytes());
        buf[LAST_STABLE_OFFSET_OFFSET..].copy_from_slice(&self.last_stable_offset.to_be_bytes());
        buf
    }

    /// Reads one entry; `None` for a version this code does not know or
    /// offsets that cannot be (first after last): such an entry is corrupt.
    pub(crate) fn decode(buf: &[u8; ENTRY_BYTES]) -> Option<Self> {
        let i64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[at..at + 8]);
            i64::from_be_bytes(b)
        };
        let version = i16::from_be_bytes([buf[0], buf[1]]);
        let entry = Self {
            producer_id: i64_at(PRODUCER_ID_OFFSET),
            first_offset: i64_at(FIRST_OFFSET_OFFSET),
            last_offset: i64_at(LAST_OFFSET_OFFSET),
            last_stable_offset: i64_at(LAST_STABLE_OFFSET_OFFSET),
        };
        (version == ENTRY_VERSION
            && entry.first_offset >= 0
            && entry.first_offset <= entry.last_offset)
            .then_some(entry)
    }
}

/// What a search of one index found (Kafka's `TxnIndexSearchResult`).
#[derive(Debug, Default)]
pub(crate) struct TxnSearch {
    pub(crate) aborted: Vec<AbortedTxn>,
    /// An entry's last stable offset reached the upper bound: every
    /// transaction overlapping the range ended before it, so later segments
    /// need not be searched.
    pub(crate) complete: bool,
}

/// Bytes of whole entries in a file of `len` bytes.
fn whole_entries_len(len: u64) -> u64 {
    len - len % ENTRY_BYTES as u64
}

/// Appends `entry` after the last whole entry of `file`.
pub(crate) fn append(file: &File, entry: &AbortedTxn) -> io::Result<()> {
    let end = whole_entries_len(file.metadata()?.len());
    file.write_all_at(&entry.encode(), end)?;
    // A torn tail overwritten by a shorter write cannot remain: entries have
    // one size, so the file now ends with this entry.
    Ok(())
}

/// Calls `f` on every entry in order until it returns `false`. A corrupt
/// entry ends the walk (everything after it is untrusted).
fn for_each(file: &File, mut f: impl FnMut(&AbortedTxn) -> bool) -> io::Result<()> {
    let len = whole_entries_len(file.metadata()?.len());
    let mut buf = vec![0u8; ENTRIES_PER_READ * ENTRY_BYTES];
    let mut position = 0u64;
    while position < len {
        let chunk = usize::try_from((len - position).min(buf.len() as u64)).unwrap_or(buf.len());
        file.read_exact_at(&mut buf[..chunk], position)?;
        for raw in buf[..chunk].chunks_exact(ENTRY_BYTES) {
            let Some(entry) = raw
                .first_chunk::<ENTRY_BYTES>()
                .and_then(AbortedTxn::decode)
            else {
                tracing::warn!(
                    position,
                    "corrupt aborted-transaction index entry; ignoring the rest"
                );
                return Ok(());
            };
            if !f(&entry) {
                return Ok(());
            }
        }
        position += chunk as u64;
    }
    Ok(())
}

/// The aborted transactions that overlap `[fetch_offset, upper_bound)`
/// (Kafka's `TransactionIndex.collectAbortedTxns`).
pub(crate) fn search(file: &File, fetch_offset: i64, upper_bound: i64) -> io::Result<TxnSearch> {
    let mut result = TxnSearch::default();
    for_each(file, |entry| {
        if entry.last_offset >= fetch_offset && entry.first_offset < upper_bound {
            result.aborted.push(*entry);
        }
        if entry.last_stable_offset >= upper_bound {
            result.complete = true;
            return false;
        }
        true
    })?;
    Ok(result)
}

/// Every entry (tests, cleaner copies).
pub(crate) fn entries(file: &File) -> io::Result<Vec<AbortedTxn>> {
    let mut all = Vec::new();
    for_each(file, |e| {
        all.push(*e);
        true
    })?;
    Ok(all)
}

/// Removes the entries whose marker is at or above `offset` (truncation).
pub(crate) fn truncate_to(file: &File, offset: i64) -> io::Result<()> {
    let mut keep = 0u64;
    let mut corrupt_or_later = false;
    for_each(file, |e| {
        if e.last_offset >= offset {
            corrupt_or_later = true;
            return false;
        }
        keep += ENTRY_BYTES as u64;
        true
    })?;
    let len = file.metadata()?.len();
    if keep < len || corrupt_or_later {
        file.set_len(keep)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pid: i64, first: i64, last: i64, lso: i64) -> AbortedTxn {
        AbortedTxn {
            producer_id: pid,
            first_offset: first,
            last_offset: last,
            last_stable_offset: lso,
        }
    }

    #[test]
    fn round_trips_searches_and_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.txnindex");
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let a = entry(1, 0, 10, 11);
        let b = entry(2, 5, 20, 21);
        let c = entry(3, 30, 40, 41);
        for e in [a, b, c] {
            append(&file, &e).unwrap();
        }
        assert_eq!(file.metadata().unwrap().len(), 3 * 34);
        assert_eq!(entries(&file).unwrap(), vec![a, b, c]);

        // [11, 25): a ended at 10, b overlaps; b's LSO 21 < 25, c's 41 >= 25.
        let found = search(&file, 11, 25).unwrap();
        assert_eq!(found.aborted, vec![b]);
        assert!(found.complete);
        // [0, 100): all overlap, none complete.
        let found = search(&file, 0, 100).unwrap();
        assert_eq!(found.aborted, vec![a, b, c]);
        assert!(!found.complete);

        // A torn tail is ignored and overwritten.
        file.write_all_at(&[0u8; 7], 3 * 34).unwrap();
        assert_eq!(entries(&file).unwrap().len(), 3);
        let d = entry(4, 41, 50, 51);
        append(&file, &d).unwrap();
        assert_eq!(entries(&file).unwrap(), vec![a, b, c, d]);

        truncate_to(&file, 40).unwrap();
        assert_eq!(entries(&file).unwrap(), vec![a, b]);
        truncate_to(&file, 0).unwrap();
        assert!(entries(&file).unwrap().is_empty());
    }

    #[test]
    fn a_corrupt_entry_ends_the_walk() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("x"))
            .unwrap();
        append(&file, &entry(1, 0, 1, 2)).unwrap();
        let mut bad = entry(2, 3, 4, 5).encode();
        bad[0] = 0x7f; // unknown version
        file.write_all_at(&bad, 34).unwrap();
        append(&file, &entry(3, 5, 6, 7)).unwrap();
        assert_eq!(entries(&file).unwrap(), vec![entry(1, 0, 1, 2)]);
    }
}
