//! The in-memory key-value store (Kafka's `InMemoryKeyValueStore`): a
//! `BTreeMap` of key bytes to value bytes, lost at every restart and rebuilt
//! from the changelog.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;

use super::KeyValueBytesStore;

#[derive(Debug, Clone, Default)]
pub struct InMemoryStore {
    name: String,
    entries: BTreeMap<Bytes, Bytes>,
}

impl InMemoryStore {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            entries: BTreeMap::new(),
        }
    }
}

impl KeyValueBytesStore for InMemoryStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.entries.get(key).cloned()
    }

    fn put(&mut self, key: Bytes, value: Option<Bytes>) {
        match value {
            Some(value) => {
                self.entries.insert(key, value);
            }
            None => {
                self.entries.remove(&key);
            }
        }
    }

    fn range(&self, from: &[u8], to: &[u8]) -> Vec<(Bytes, Bytes)> {
        // Kafka returns nothing (and logs) for from > to.
        if from > to {
            return Vec::new();
        }
        self.entries
            .range::<[u8], _>((Bound::Included(from), Bound::Included(to)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn all(&self) -> Vec<(Bytes, Bytes)> {
        self.entries
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn approximate_num_entries(&self) -> u64 {
        self.entries.len() as u64
    }

    fn persistent(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn puts_deletes_and_ranges_in_key_byte_order() {
        let mut store = InMemoryStore::new("counts");
        for k in ["b", "a", "c", "aa"] {
            store.put(b(k), Some(b(&k.to_uppercase())));
        }
        assert_eq!(store.get(b"a"), Some(b("A")));
        assert_eq!(store.approximate_num_entries(), 4);
        let keys = |entries: Vec<(Bytes, Bytes)>| -> Vec<Bytes> {
            entries.into_iter().map(|(k, _)| k).collect()
        };
        assert_eq!(keys(store.all()), vec![b("a"), b("aa"), b("b"), b("c")]);
        // Both bounds inclusive.
        assert_eq!(keys(store.range(b"aa", b"b")), vec![b("aa"), b("b")]);
        assert!(store.range(b"c", b"a").is_empty());
        store.put(b("aa"), None);
        assert_eq!(store.get(b"aa"), None);
        assert_eq!(keys(store.all()), vec![b("a"), b("b"), b("c")]);
        assert!(!store.persistent());
    }
}
