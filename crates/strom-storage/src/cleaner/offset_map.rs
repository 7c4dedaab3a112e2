//! The cleaner's map from key to the offset of the key's last record in the
//! dirty section, as Kafka's `SkimpyOffsetMap`: an open-addressing table of
//! fixed-size slots holding a 128-bit digest of the key, never the key, so
//! its memory is bounded by `log.cleaner.dedupe.buffer.size` however large
//! the keys are.
//!
//! Digests: two SipHash-1-3 runs (std's `DefaultHasher`, fixed keys) over the
//! key with different domain prefixes. A collision would make the cleaner
//! drop the older record of another key; at 128 bits that is as unlikely as
//! Kafka's MD5 collisions, and, unlike MD5's, nobody can craft one cheaply
//! without the 2^64 work a birthday search on the pair needs.

use std::hash::{DefaultHasher, Hasher};

/// One slot: the digest and the offset (Kafka: a 16-byte MD5 and an 8-byte
/// offset, 24 bytes).
#[derive(Debug, Clone, Copy)]
struct Slot {
    digest: [u64; 2],
    /// [`EMPTY`] for a free slot.
    offset: i64,
}

/// Bytes one slot takes: what `log.cleaner.dedupe.buffer.size` is divided by.
pub(crate) const SLOT_BYTES: u64 = size_of::<Slot>() as u64;
const _: () = assert!(SLOT_BYTES == 24);

/// Kafka's `log.cleaner.io.buffer.load.factor` default: the map counts as
/// full at 90 % of its slots, which keeps linear probe runs short.
pub(crate) const LOAD_FACTOR: f64 = 0.9;

/// Offset of a free slot (real offsets are never negative).
const EMPTY: i64 = -1;

/// Key digest -> offset, bounded in memory.
#[derive(Debug)]
pub(crate) struct OffsetMap {
    slots: Vec<Slot>,
    entries: usize,
    /// `LOAD_FACTOR` of the slots, at least 1 so that a clean always makes
    /// progress.
    max_entries: usize,
    /// The last offset the map covers (Kafka's `latestOffset`): records
    /// above it were not looked at, so the cleaner keeps them.
    latest_offset: i64,
}

impl OffsetMap {
    /// A map of at most `memory_bytes`, and no larger than `records` keys
    /// need (the dirty section's offset span bounds its records, so a small
    /// dirty section does not allocate the whole dedupe buffer).
    pub(crate) fn new(memory_bytes: u64, records: u64) -> Self {
        let budget = (memory_bytes / SLOT_BYTES).max(2);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let wanted = ((records as f64 / LOAD_FACTOR) as u64).saturating_add(2);
        let slots = usize::try_from(budget.min(wanted)).unwrap_or(usize::MAX);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let max_entries = ((slots as f64 * LOAD_FACTOR) as usize).clamp(1, slots - 1);
        Self {
            slots: vec![
                Slot {
                    digest: [0; 2],
                    offset: EMPTY,
                };
                slots
            ],
            entries: 0,
            max_entries,
            latest_offset: -1,
        }
    }

    /// Keys held.
    pub(crate) fn len(&self) -> usize {
        self.entries
    }

    /// The map holds as many keys as it may: the cleaner stops mapping.
    pub(crate) fn is_full(&self) -> bool {
        self.entries >= self.max_entries
    }

    /// Records `offset` as the latest for `key`. The caller checks
    /// [`Self::is_full`] first; a put into a full map is ignored unless the
    /// key is already there.
    pub(crate) fn put(&mut self, key: &[u8], offset: i64) {
        debug_assert!(offset >= 0, "offsets are not negative");
        let digest = digest(key);
        let at = self.find(&digest);
        let full = self.is_full();
        let slot = &mut self.slots[at];
        if slot.offset == EMPTY {
            if full {
                return;
            }
            slot.digest = digest;
            self.entries += 1;
        }
        slot.offset = offset;
        self.latest_offset = self.latest_offset.max(offset);
    }

    /// The offset of `key`'s last record in the mapped section.
    pub(crate) fn get(&self, key: &[u8]) -> Option<i64> {
        let digest = digest(key);
        let slot = self.slots[self.find(&digest)];
        (slot.offset != EMPTY).then_some(slot.offset)
    }

    pub(crate) fn latest_offset(&self) -> i64 {
        self.latest_offset
    }

    /// Moves the covered range up to `offset` (batches without keys, gaps).
    pub(crate) fn update_latest_offset(&mut self, offset: i64) {
        self.latest_offset = self.latest_offset.max(offset);
    }

    /// Share of the slots in use.
    #[allow(clippy::cast_precision_loss)]
    pub(crate) fn utilization(&self) -> f64 {
        self.entries as f64 / self.slots.len() as f64
    }

    /// The slot holding `digest`, or the free slot where it would go. The
    /// table is never full (`max_entries` < slots), so the probe ends.
    fn find(&self, digest: &[u64; 2]) -> usize {
        let n = self.slots.len();
        #[allow(clippy::cast_possible_truncation)]
        let mut at = (digest[0] % n as u64) as usize;
        loop {
            let slot = &self.slots[at];
            if slot.offset == EMPTY || slot.digest == *digest {
                return at;
            }
            at += 1;
            if at == n {
                at = 0;
            }
        }
    }
}

fn digest(key: &[u8]) -> [u64; 2] {
    let half = |domain: u8| {
        let mut hasher = DefaultHasher::new();
        hasher.write_u8(domain);
        hasher.write(key);
        hasher.finish()
    };
    [half(1), half(2)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_offset_per_key_and_stops_when_full() {
        let mut map = OffsetMap::new(24 * 100, u64::MAX);
        assert_eq!(map.slots.len(), 100);
        for round in 0..3i64 {
            for k in 0..50i64 {
                map.put(format!("key-{k}").as_bytes(), round * 100 + k);
            }
        }
        assert_eq!(map.len(), 50);
        assert_eq!(map.get(b"key-7"), Some(207));
        assert_eq!(map.get(b"absent"), None);
        assert_eq!(map.latest_offset(), 249);
        for k in 50..1000i64 {
            if map.is_full() {
                break;
            }
            map.put(format!("key-{k}").as_bytes(), 1000 + k);
        }
        assert!(map.is_full());
        assert_eq!(map.len(), 90);
        // A full map still updates keys it holds.
        map.put(b"key-7", 5000);
        assert_eq!(map.get(b"key-7"), Some(5000));
        assert!(map.utilization() <= LOAD_FACTOR);
    }

    #[test]
    fn sized_by_the_records_it_may_see_within_the_budget() {
        let map = OffsetMap::new(128 << 20, 10);
        assert!(map.slots.len() < 20);
        let tiny = OffsetMap::new(0, 1_000_000);
        assert_eq!(tiny.slots.len(), 2);
        assert_eq!(tiny.max_entries, 1, "always room for one key");
        // Keys that differ only in length or a byte get different slots' digests.
        assert_ne!(digest(b""), digest(b"\0"));
        assert_ne!(digest(b"ab"), digest(b"ba"));
    }
}
