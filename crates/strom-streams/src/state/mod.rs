//! State stores: what stateful processors keep per task, and how it survives
//! a crash (Java's `org.apache.kafka.streams.state`).
//!
//! - [`KeyValueBytesStore`]: a key-value store of serialized keys and
//!   values, ordered by key bytes (Kafka's `KeyValueStore<Bytes, byte[]>`,
//!   what its RocksDB and in-memory stores hold).
//! - [`memory::InMemoryStore`]: the in-memory one (a `BTreeMap`).
//! - [`logged::ChangeLogged`]: a store whose every write is also recorded
//!   for the store's changelog topic, `<application.id>-<store>-changelog`
//!   ([`changelog_topic`]), partition = the task's partition; restoration
//!   replays that topic into the store.
//! - [`query`]: interactive queries, [`ReadOnlyKeyValueStore`] over the
//!   local tasks' instances of a store.
//! - [`checkpoint`]: the `.checkpoint` file of a task directory: the
//!   changelog offsets the local stores hold, in Kafka's text format, so
//!   that a restart restores only what came after.

pub mod builder;
pub mod checkpoint;
pub mod logged;
pub mod memory;
pub mod query;

use bytes::Bytes;

pub use builder::{KeyValueStore, StoreBuilder};
pub use query::ReadOnlyKeyValueStore;

/// A key-value store of serialized keys and values, ordered by key bytes
/// (lexicographically, as Kafka's `Bytes` comparator orders them).
pub trait KeyValueBytesStore: Send {
    /// The store's name (also its changelog's middle part).
    fn name(&self) -> &str;

    fn get(&self, key: &[u8]) -> Option<Bytes>;

    /// Writes `value` for `key`; `None` deletes the key (a tombstone in the
    /// changelog).
    fn put(&mut self, key: Bytes, value: Option<Bytes>);

    /// The entries with `from <= key <= to` (both bounds inclusive, as
    /// Kafka's `range`), in key order.
    fn range(&self, from: &[u8], to: &[u8]) -> Vec<(Bytes, Bytes)>;

    /// Every entry, in key order.
    fn all(&self) -> Vec<(Bytes, Bytes)>;

    /// How many keys the store holds (exact for the in-memory store).
    fn approximate_num_entries(&self) -> u64;

    /// Writes every entry in order, as `put` would (one call for a batch
    /// of restored records, so that a store behind a lock takes it once).
    fn put_all(&mut self, entries: &mut dyn Iterator<Item = (Bytes, Option<Bytes>)>) {
        for (key, value) in entries {
            self.put(key, value);
        }
    }

    /// Makes every write so far durable locally (a no-op in memory).
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    /// Whether the store keeps its data across restarts on its own (a
    /// persistent store); an in-memory store is rebuilt from its changelog
    /// from the beginning every time.
    fn persistent(&self) -> bool;
}

/// Kafka Streams' changelog topic of store `store` in application
/// `application_id` (`ProcessorStateManager.storeChangelogTopic`).
pub fn changelog_topic(application_id: &str, store: &str) -> String {
    format!("{application_id}-{store}-changelog")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changelog_topics_are_named_as_kafka_streams_names_them() {
        assert_eq!(
            changelog_topic("word-count", "counts"),
            "word-count-counts-changelog"
        );
    }
}
