//! The leader epoch cache: which leader epoch started at which offset, kept in
//! the partition's `leader-epoch-checkpoint` file as Kafka does.
//!
//! Replication uses it to find where a follower's log diverges (KIP-101,
//! KIP-279). Recovery uses it too: the file is written before the first batch
//! of a new epoch, so a batch whose epoch does not fit the cache is corrupt
//! (the leader epoch lies outside the batch CRC, and this catches flips in it).

use std::io;
use std::path::{Path, PathBuf};

use strom_protocol::record_batch::NO_PARTITION_LEADER_EPOCH;

use crate::checkpoint;

pub(crate) const LEADER_EPOCH_CHECKPOINT: &str = "leader-epoch-checkpoint";

/// Bound on the number of epochs remembered per partition; the oldest go first.
/// Leader changes are rare; 10,000 of them is far beyond any real log.
const MAX_EPOCH_ENTRIES: usize = 10_000;

/// Epoch `epoch` began at `start_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: i32,
    pub start_offset: i64,
}

#[derive(Debug)]
pub(crate) struct LeaderEpochCache {
    path: PathBuf,
    entries: Vec<EpochEntry>,
    /// Loaded from an intact file (or created fresh by us): batches can be
    /// checked against it.
    trusted: bool,
}

impl LeaderEpochCache {
    /// A new, empty cache for a new log; writes the file.
    pub(crate) fn create(dir: &Path) -> io::Result<Self> {
        let cache = Self {
            path: dir.join(LEADER_EPOCH_CHECKPOINT),
            entries: Vec::new(),
            trusted: true,
        };
        cache.persist()?;
        Ok(cache)
    }

    /// Loads the cache of an existing log. A missing or malformed file gives an
    /// untrusted empty cache, which recovery rebuilds from the batches.
    pub(crate) fn load(dir: &Path) -> Self {
        let path = dir.join(LEADER_EPOCH_CHECKPOINT);
        let parsed = checkpoint::read(&path).and_then(|entries| match entries {
            Some(entries) => checkpoint::parse_pairs(&entries).map(Some),
            None => Ok(None),
        });
        let entries = match parsed {
            Ok(Some(pairs)) => pairs
                .into_iter()
                .map(|(epoch, start_offset)| EpochEntry {
                    epoch,
                    start_offset,
                })
                .collect::<Vec<_>>(),
            Ok(None) => {
                tracing::warn!(path = %path.display(), "leader epoch checkpoint missing; rebuilding it from the log");
                return Self::untrusted(path);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "leader epoch checkpoint unreadable; rebuilding it from the log");
                return Self::untrusted(path);
            }
        };
        let ordered = entries
            .windows(2)
            .all(|w| w[0].epoch < w[1].epoch && w[0].start_offset <= w[1].start_offset);
        if !ordered || entries.iter().any(|e| e.epoch < 0 || e.start_offset < 0) {
            tracing::warn!(path = %path.display(), "leader epoch checkpoint out of order; rebuilding it from the log");
            return Self::untrusted(path);
        }
        Self {
            path,
            entries,
            trusted: true,
        }
    }

    fn untrusted(path: PathBuf) -> Self {
        Self {
            path,
            entries: Vec::new(),
            trusted: false,
        }
    }

    pub(crate) fn is_trusted(&self) -> bool {
        self.trusted
    }

    /// Once rebuilt from the log, the cache is as good as a loaded one.
    pub(crate) fn mark_trusted(&mut self) -> io::Result<()> {
        self.trusted = true;
        self.persist()
    }

    pub(crate) fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub(crate) fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    /// Records that `epoch` starts at `start_offset`, if it is newer than the
    /// latest epoch. Persists before returning, so that the batch that follows
    /// never reaches disk ahead of its epoch. Returns whether anything changed;
    /// after an error nothing changed.
    pub(crate) fn assign(&mut self, epoch: i32, start_offset: i64) -> io::Result<bool> {
        if epoch == NO_PARTITION_LEADER_EPOCH || epoch < 0 {
            return Ok(false);
        }
        if let Some(latest) = self.latest()
            && (epoch <= latest.epoch || start_offset < latest.start_offset)
        {
            return Ok(false);
        }
        // A new epoch is rare (a leader change): the copy is cheap.
        let before = self.entries.clone();
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        if self.entries.len() > MAX_EPOCH_ENTRIES {
            self.entries.remove(0);
        }
        if let Err(e) = self.persist() {
            // The file is replaced atomically, so it still holds `before`:
            // keep memory in line, and the caller may retry (a full disk).
            self.entries = before;
            return Err(e);
        }
        Ok(true)
    }

    /// Forgets epochs that start at or after `end_offset` (log truncation).
    pub(crate) fn truncate_from_end(&mut self, end_offset: i64) -> io::Result<()> {
        let keep = self
            .entries
            .partition_point(|e| e.start_offset < end_offset);
        if keep < self.entries.len() {
            self.entries.truncate(keep);
            self.persist()?;
        }
        Ok(())
    }

    /// Drops epochs that end before `start_offset` and moves the start of the
    /// first remaining one up to it (log start offset advanced).
    pub(crate) fn truncate_from_start(&mut self, start_offset: i64) -> io::Result<()> {
        // The last entry starting at or before start_offset covers it.
        let covering = self
            .entries
            .partition_point(|e| e.start_offset <= start_offset);
        if covering == 0 {
            return Ok(());
        }
        let first = covering - 1;
        if first == 0 && self.entries[0].start_offset == start_offset {
            return Ok(());
        }
        self.entries.drain(..first);
        self.entries[0].start_offset = start_offset;
        self.persist()
    }

    /// Whether a batch of leader epoch `epoch` starting at `base_offset` fits
    /// the cache: its epoch is known and was the current one at that offset.
    /// Below the first entry's start nothing is known any more:
    /// [`Self::truncate_from_start`] drops the entries of epochs that ended
    /// before the log start while their batches may still sit in the segment
    /// holding it. There any epoch up to the first entry's passes (the scan
    /// still requires epochs not to go backwards).
    pub(crate) fn covers(&self, epoch: i32, base_offset: i64) -> bool {
        if let Some(first) = self.entries.first()
            && base_offset < first.start_offset
        {
            return epoch == NO_PARTITION_LEADER_EPOCH || (0..=first.epoch).contains(&epoch);
        }
        if epoch == NO_PARTITION_LEADER_EPOCH {
            return self.entries.is_empty();
        }
        let Some(i) = self.entries.iter().position(|e| e.epoch == epoch) else {
            return false;
        };
        let starts_before = i == 0 || self.entries[i].start_offset <= base_offset;
        let ends_after = self
            .entries
            .get(i + 1)
            .is_none_or(|next| base_offset < next.start_offset);
        starts_before && ends_after
    }

    /// The end offset of `epoch` as OffsetsForLeaderEpoch answers it
    /// (Kafka's `LeaderEpochFileCache.endOffsetFor`): for the latest epoch,
    /// `log_end_offset`; for an older one, the largest known epoch at or
    /// below it and the start of the next; for one older than every known
    /// epoch, itself and the first start. `None` (Kafka's undefined epoch and
    /// offset) when it is newer than every known epoch or nothing is known.
    pub(crate) fn end_offset_for(&self, epoch: i32, log_end_offset: i64) -> Option<(i32, i64)> {
        let latest = self.latest()?;
        if epoch == latest.epoch {
            return Some((latest.epoch, log_end_offset));
        }
        if epoch > latest.epoch || epoch < 0 {
            return None;
        }
        // The first epoch above the requested one, and the one before it.
        let next = self.entries.partition_point(|e| e.epoch <= epoch);
        let higher = self.entries.get(next)?;
        match next.checked_sub(1).map(|i| self.entries[i]) {
            Some(floor) => Some((floor.epoch, higher.start_offset)),
            None => Some((epoch, higher.start_offset)),
        }
    }

    fn persist(&self) -> io::Result<()> {
        let lines: Vec<String> = self
            .entries
            .iter()
            .map(|e| format!("{} {}", e.epoch, e.start_offset))
            .collect();
        checkpoint::write(&self.path, &lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assign_truncate_and_cover() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = LeaderEpochCache::create(dir.path()).unwrap();
        assert!(cache.covers(NO_PARTITION_LEADER_EPOCH, 0));
        assert!(cache.assign(0, 0).unwrap());
        assert!(!cache.assign(0, 10).unwrap(), "same epoch again is a no-op");
        assert!(cache.assign(3, 100).unwrap());
        assert!(cache.assign(5, 250).unwrap());
        assert!(cache.covers(0, 99));
        assert!(!cache.covers(0, 100));
        assert!(cache.covers(3, 100));
        assert!(!cache.covers(4, 150), "unknown epoch");
        assert!(!cache.covers(7, 300), "epoch newer than any known");
        assert!(!cache.covers(NO_PARTITION_LEADER_EPOCH, 5));
        assert_eq!(cache.end_offset_for(3, 400), Some((3, 250)));
        assert_eq!(cache.end_offset_for(4, 400), Some((3, 250)));
        assert_eq!(cache.end_offset_for(5, 400), Some((5, 400)));
        assert_eq!(cache.end_offset_for(9, 400), None, "newer than any known");
        assert_eq!(cache.end_offset_for(-1, 400), None);
        assert_eq!(
            cache.end_offset_for(1, 400),
            Some((0, 100)),
            "the largest known epoch at or below"
        );

        let reloaded = LeaderEpochCache::load(dir.path());
        assert!(reloaded.is_trusted());
        assert_eq!(reloaded.entries(), cache.entries());

        cache.truncate_from_end(250).unwrap();
        assert_eq!(cache.latest().unwrap().epoch, 3);
        cache.truncate_from_start(150).unwrap();
        assert_eq!(
            cache.entries(),
            &[EpochEntry {
                epoch: 3,
                start_offset: 150
            }]
        );
        assert!(
            cache.covers(3, 120),
            "batches below the moved start keep their epoch"
        );
        assert!(
            cache.covers(0, 120),
            "older epochs below the moved start are no longer known"
        );
        assert!(!cache.covers(4, 120), "but never a newer one");
        assert_eq!(
            LeaderEpochCache::load(dir.path()).entries(),
            cache.entries()
        );
    }

    #[test]
    fn garbage_file_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(LEADER_EPOCH_CHECKPOINT),
            "0\n2\n5 10\n3 20\n",
        )
        .unwrap();
        assert!(!LeaderEpochCache::load(dir.path()).is_trusted());
    }
}
