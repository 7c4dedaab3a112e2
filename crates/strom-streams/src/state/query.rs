//! Interactive queries: a read-only view of one store over every task of
//! this instance that holds it (Java's `KafkaStreams.store(...)` with
//! `QueryableStoreTypes.keyValueStore()`, a `CompositeReadOnlyKeyValueStore`).
//!
//! Each task registers its stores once they are restored, and removes them
//! when the task closes; a view looks the tasks up at every call, so it
//! follows rebalances. Reads take each store's lock briefly, as the stream
//! thread does for each write, so a query sees every write made before it
//! and never a half-made one.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use super::builder::{KvSerdes, QueryableStore, SharedBytesStore, lock_store, typed_serdes};
use crate::error::StreamsError;
use crate::processor::{Data, TaskId};

/// The queryable stores of an instance: by store name, by task.
pub(crate) type StoreRegistry = Arc<Mutex<BTreeMap<String, BTreeMap<TaskId, QueryableStore>>>>;

/// Adds or removes a task's stores.
pub(crate) fn register(
    registry: &StoreRegistry,
    task: TaskId,
    stores: Vec<(String, QueryableStore)>,
) {
    let mut map = registry.lock().unwrap_or_else(PoisonError::into_inner);
    for (name, store) in stores {
        map.entry(name).or_default().insert(task, store);
    }
}

pub(crate) fn unregister(registry: &StoreRegistry, task: TaskId) {
    let mut map = registry.lock().unwrap_or_else(PoisonError::into_inner);
    for tasks in map.values_mut() {
        tasks.remove(&task);
    }
    map.retain(|_, tasks| !tasks.is_empty());
}

/// A read-only key-value store over every local task holding store `name`
/// (Java's `ReadOnlyKeyValueStore`). Keys and values go through the store's
/// serdes; `range` and `all` are ordered by serialized key across tasks.
pub struct ReadOnlyKeyValueStore<K, V> {
    name: String,
    /// The changelog topic: the serdes' topic, as in the store itself.
    topic: String,
    registry: StoreRegistry,
    serdes: Arc<KvSerdes<K, V>>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> fmt::Debug for ReadOnlyKeyValueStore<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadOnlyKeyValueStore")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<K: Data, V: Data> ReadOnlyKeyValueStore<K, V> {
    pub(crate) fn new(
        name: &str,
        topic: String,
        registry: StoreRegistry,
        serdes: &Arc<dyn std::any::Any + Send + Sync>,
    ) -> Result<Self, StreamsError> {
        Ok(Self {
            name: name.to_owned(),
            topic,
            registry,
            serdes: typed_serdes::<K, V>(serdes, name)?,
            _types: PhantomData,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The local tasks' instances of the store, now.
    fn stores(&self) -> Result<Vec<SharedBytesStore>, StreamsError> {
        let map = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get(&self.name) {
            Some(tasks) if !tasks.is_empty() => {
                Ok(tasks.values().map(|q| Arc::clone(&q.store)).collect())
            }
            _ => Err(StreamsError::InvalidStateStore(format!(
                "The state store, {}, may have migrated to another instance.",
                self.name
            ))),
        }
    }

    /// The value of `key` in whichever local task holds it.
    pub fn get(&self, key: &K) -> Result<Option<V>, StreamsError> {
        let key = self.serdes.key_bytes(&self.name, &self.topic, key)?;
        for store in self.stores()? {
            let found = lock_store(&store).get(&key);
            if let Some(value) = found {
                return Ok(Some(
                    self.serdes.decode(&self.name, &self.topic, &key, &value)?.1,
                ));
            }
        }
        Ok(None)
    }

    fn decode_sorted(&self, mut entries: Vec<(Bytes, Bytes)>) -> Result<Vec<(K, V)>, StreamsError> {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries
            .iter()
            .map(|(k, v)| self.serdes.decode(&self.name, &self.topic, k, v))
            .collect()
    }

    /// Entries with `from <= key <= to` by serialized key.
    pub fn range(&self, from: &K, to: &K) -> Result<Vec<(K, V)>, StreamsError> {
        let from = self.serdes.key_bytes(&self.name, &self.topic, from)?;
        let to = self.serdes.key_bytes(&self.name, &self.topic, to)?;
        let mut entries = Vec::new();
        for store in self.stores()? {
            entries.extend(lock_store(&store).range(&from, &to));
        }
        self.decode_sorted(entries)
    }

    /// Every entry of every local task's store.
    pub fn all(&self) -> Result<Vec<(K, V)>, StreamsError> {
        let mut entries = Vec::new();
        for store in self.stores()? {
            entries.extend(lock_store(&store).all());
        }
        self.decode_sorted(entries)
    }

    pub fn approximate_num_entries(&self) -> Result<u64, StreamsError> {
        Ok(self
            .stores()?
            .iter()
            .map(|s| lock_store(s).approximate_num_entries())
            .fold(0, u64::saturating_add))
    }
}
