//! A store whose writes are also kept for its changelog topic (Kafka's
//! `ChangeLoggingKeyValueBytesStore`): every `put` is recorded, in order,
//! until the task takes the pending changes and sends them to
//! `<application.id>-<store>-changelog`, partition = the task's partition.
//! Restoration writes into the inner store directly, without recording.

use std::collections::VecDeque;

use bytes::Bytes;

use super::KeyValueBytesStore;

/// One write for the changelog: a key and its new value (`None`: a
/// tombstone, the key was deleted).
pub type Change = (Bytes, Option<Bytes>);

/// A changelog record as read back: its key and value, either null.
pub type RawRecord<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// Bound on the changes a store holds between two takes. The broker
/// runtime takes them after every record, so it never comes near; a test
/// driver that never takes them keeps the newest this many, dropping the
/// oldest (with a warning once), so memory stays bounded.
pub const MAX_PENDING_CHANGES: usize = 100_000;

#[derive(Debug)]
pub struct ChangeLogged<S> {
    inner: S,
    /// Whether writes are recorded at all (a store with logging disabled
    /// records nothing).
    logging: bool,
    pending: VecDeque<Change>,
    warned: bool,
}

impl<S: KeyValueBytesStore> ChangeLogged<S> {
    pub fn new(inner: S, logging: bool) -> Self {
        Self {
            inner,
            logging,
            pending: VecDeque::new(),
            warned: false,
        }
    }

    /// The changes since the last take, in write order.
    pub fn take_pending(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.pending).into()
    }

    /// Applies changelog records (key, value or tombstone) read back during
    /// restoration, without logging them again. A record without a key
    /// cannot be a store entry and is skipped, as Kafka's restore callback
    /// would fail on it; the caller counts those.
    pub fn restore<'a>(&mut self, records: impl IntoIterator<Item = RawRecord<'a>>) -> usize {
        let mut skipped = 0;
        let mut entries = records.into_iter().filter_map(|(key, value)| match key {
            Some(key) => Some((
                Bytes::copy_from_slice(key),
                value.map(Bytes::copy_from_slice),
            )),
            None => {
                skipped += 1;
                None
            }
        });
        self.inner.put_all(&mut entries);
        drop(entries);
        skipped
    }
}

impl<S: KeyValueBytesStore> KeyValueBytesStore for ChangeLogged<S> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.inner.get(key)
    }

    fn put(&mut self, key: Bytes, value: Option<Bytes>) {
        if self.logging {
            if self.pending.len() >= MAX_PENDING_CHANGES {
                self.pending.pop_front();
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(
                        store = self.inner.name(),
                        "changelog writes not taken: dropping the oldest beyond {MAX_PENDING_CHANGES}"
                    );
                }
            }
            self.pending.push_back((key.clone(), value.clone()));
        }
        self.inner.put(key, value);
    }

    fn range(&self, from: &[u8], to: &[u8]) -> Vec<(Bytes, Bytes)> {
        self.inner.range(from, to)
    }

    fn all(&self) -> Vec<(Bytes, Bytes)> {
        self.inner.all()
    }

    fn approximate_num_entries(&self) -> u64 {
        self.inner.approximate_num_entries()
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }

    fn persistent(&self) -> bool {
        self.inner.persistent()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::memory::InMemoryStore;

    #[test]
    fn writes_are_logged_in_order_and_restoration_is_not() {
        let mut store = ChangeLogged::new(InMemoryStore::new("counts"), true);
        store.put(Bytes::from_static(b"a"), Some(Bytes::from_static(b"1")));
        store.put(Bytes::from_static(b"a"), None);
        store.put(Bytes::from_static(b"b"), Some(Bytes::from_static(b"2")));
        assert_eq!(
            store.take_pending(),
            vec![
                (Bytes::from_static(b"a"), Some(Bytes::from_static(b"1"))),
                (Bytes::from_static(b"a"), None),
                (Bytes::from_static(b"b"), Some(Bytes::from_static(b"2"))),
            ]
        );
        assert!(store.take_pending().is_empty());

        // A fresh store restored from that changelog holds the same state.
        let mut restored = ChangeLogged::new(InMemoryStore::new("counts"), true);
        let log: Vec<RawRecord<'_>> = vec![
            (Some(b"a"), Some(b"1")),
            (Some(b"a"), None),
            (Some(b"b"), Some(b"2")),
            (None, Some(b"x")),
        ];
        assert_eq!(restored.restore(log), 1, "the keyless record is skipped");
        assert!(restored.take_pending().is_empty());
        assert_eq!(restored.all(), store.all());
    }
}
