//! How a topology declares a store (Java's `StoreBuilder` from `Stores`),
//! and the typed view a processor reads and writes it through.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

use super::KeyValueBytesStore;
use super::logged::ChangeLogged;
use super::memory::InMemoryStore;
use crate::error::StreamsError;
use crate::processor::Data;
use crate::serdes::Serde;

/// A key-value store to add to a topology: its name, serdes, and whether
/// its writes go to a changelog topic (on by default, as in Kafka).
pub struct StoreBuilder<KS: Serde, VS: Serde> {
    name: String,
    key_serde: KS,
    value_serde: VS,
    logging: bool,
}

impl<KS: Serde, VS: Serde> fmt::Debug for StoreBuilder<KS, VS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreBuilder")
            .field("name", &self.name)
            .field("logging", &self.logging)
            .finish_non_exhaustive()
    }
}

impl<KS: Serde, VS: Serde> StoreBuilder<KS, VS> {
    /// An in-memory key-value store (Kafka's
    /// `Stores.keyValueStoreBuilder(Stores.inMemoryKeyValueStore(name), ...)`).
    pub fn in_memory_key_value(name: impl Into<String>, key_serde: KS, value_serde: VS) -> Self {
        Self {
            name: name.into(),
            key_serde,
            value_serde,
            logging: true,
        }
    }

    /// No changelog: the store starts empty after every restart.
    pub fn with_logging_disabled(mut self) -> Self {
        self.logging = false;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn into_def(self) -> StoreDef {
        let name = self.name.clone();
        StoreDef {
            name: self.name,
            logging: self.logging,
            serdes: Arc::new(KvSerdes::<KS::Target, VS::Target> {
                key: Arc::new(self.key_serde),
                value: Arc::new(self.value_serde),
            }),
            make: Arc::new(move || Box::new(InMemoryStore::new(name.clone()))),
        }
    }
}

/// A store as the topology keeps it: type-erased serdes and a factory that
/// makes each task its own store.
#[derive(Clone)]
pub(crate) struct StoreDef {
    pub(crate) name: String,
    pub(crate) logging: bool,
    /// A `KvSerdes<K, V>`.
    serdes: Arc<dyn Any + Send + Sync>,
    make: Arc<dyn Fn() -> Box<dyn KeyValueBytesStore> + Send + Sync>,
}

impl fmt::Debug for StoreDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreDef")
            .field("name", &self.name)
            .field("logging", &self.logging)
            .finish_non_exhaustive()
    }
}

impl StoreDef {
    pub(crate) fn serdes(&self) -> &Arc<dyn Any + Send + Sync> {
        &self.serdes
    }

    /// A task's new, empty store, logging to `changelog` (its
    /// `<application.id>-<store>-changelog` topic).
    pub(crate) fn build(&self, changelog: String) -> TaskStore {
        let shared: SharedBytesStore = Arc::new(Mutex::new((self.make)()));
        let own = SharedStore {
            name: self.name.clone(),
            inner: Arc::clone(&shared),
        };
        TaskStore {
            store: ChangeLogged::new(Box::new(own), self.logging),
            shared,
            serdes: Arc::clone(&self.serdes),
            logging: self.logging,
            changelog,
        }
    }
}

pub(crate) struct KvSerdes<K, V> {
    key: Arc<dyn Serde<Target = K>>,
    value: Arc<dyn Serde<Target = V>>,
}

impl<K: Data, V: Data> KvSerdes<K, V> {
    /// `key`'s bytes in store `store` (changelog `topic`); a key that
    /// serializes to null cannot be stored.
    pub(crate) fn key_bytes(
        &self,
        store: &str,
        topic: &str,
        key: &K,
    ) -> Result<Bytes, StreamsError> {
        match self.key.serialize(topic, key) {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(StreamsError::IllegalState(format!(
                "store {store}: a key serialized to null"
            ))),
            Err(source) => Err(serde_error(store, source)),
        }
    }

    pub(crate) fn decode(
        &self,
        store: &str,
        topic: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<(K, V), StreamsError> {
        Ok((
            self.key
                .deserialize(topic, Some(key))
                .map_err(|e| serde_error(store, e))?,
            self.value
                .deserialize(topic, Some(value))
                .map_err(|e| serde_error(store, e))?,
        ))
    }
}

fn serde_error(store: &str, source: crate::serdes::SerdeError) -> StreamsError {
    StreamsError::Store {
        store: store.to_owned(),
        source,
    }
}

/// The serdes of a store, if `K` and `V` are its types.
pub(crate) fn typed_serdes<K: Data, V: Data>(
    serdes: &Arc<dyn Any + Send + Sync>,
    store: &str,
) -> Result<Arc<KvSerdes<K, V>>, StreamsError> {
    Arc::clone(serdes)
        .downcast::<KvSerdes<K, V>>()
        .map_err(|_| StreamsError::TypeMismatch {
            node: format!("store {store}"),
            expected: std::any::type_name::<(K, V)>(),
            actual: "the store's key and value types",
        })
}

/// A task's store as shared with interactive queries: the processor writes
/// through it, queries read it from other threads.
/// (A mutex: stores are `Send` but not `Sync`.)
pub(crate) type SharedBytesStore = Arc<Mutex<Box<dyn KeyValueBytesStore>>>;

/// Locks a shared store. A panic while the lock was held (a bug in a
/// store) poisons it; the store is used as it is, as the task is gone by
/// then and its registration with it.
pub(crate) fn lock_store(store: &SharedBytesStore) -> MutexGuard<'_, Box<dyn KeyValueBytesStore>> {
    store.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A [`SharedBytesStore`] as the task's own store.
struct SharedStore {
    name: String,
    inner: SharedBytesStore,
}

impl SharedStore {
    /// The store, locked (for reads and writes alike: it is a mutex).
    fn locked(&self) -> MutexGuard<'_, Box<dyn KeyValueBytesStore>> {
        lock_store(&self.inner)
    }
}

impl KeyValueBytesStore for SharedStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.locked().get(key)
    }

    fn put(&mut self, key: Bytes, value: Option<Bytes>) {
        self.locked().put(key, value);
    }

    fn put_all(&mut self, entries: &mut dyn Iterator<Item = (Bytes, Option<Bytes>)>) {
        self.locked().put_all(entries);
    }

    fn range(&self, from: &[u8], to: &[u8]) -> Vec<(Bytes, Bytes)> {
        self.locked().range(from, to)
    }

    fn all(&self) -> Vec<(Bytes, Bytes)> {
        self.locked().all()
    }

    fn approximate_num_entries(&self) -> u64 {
        self.locked().approximate_num_entries()
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.locked().flush()
    }

    fn persistent(&self) -> bool {
        self.locked().persistent()
    }
}

/// One task's instance of a store.
pub(crate) struct TaskStore {
    pub(crate) store: ChangeLogged<Box<dyn KeyValueBytesStore>>,
    /// The store behind `store`, for interactive queries.
    shared: SharedBytesStore,
    serdes: Arc<dyn Any + Send + Sync>,
    pub(crate) logging: bool,
    /// The changelog topic, named once (also the serdes' topic).
    pub(crate) changelog: String,
}

impl TaskStore {
    /// The typed view, if `K` and `V` are the store's types.
    pub(crate) fn typed<K: Data, V: Data>(
        &mut self,
    ) -> Result<KeyValueStore<'_, K, V>, StreamsError> {
        let serdes = typed_serdes::<K, V>(&self.serdes, self.store.name())?;
        Ok(KeyValueStore {
            store: &mut self.store,
            serdes,
            topic: &self.changelog,
        })
    }
}

impl TaskStore {
    /// This store as interactive queries read it.
    pub(crate) fn queryable(&self) -> SharedBytesStore {
        Arc::clone(&self.shared)
    }
}

impl KeyValueBytesStore for Box<dyn KeyValueBytesStore> {
    fn name(&self) -> &str {
        self.as_ref().name()
    }

    fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.as_ref().get(key)
    }

    fn put(&mut self, key: Bytes, value: Option<Bytes>) {
        self.as_mut().put(key, value);
    }

    fn put_all(&mut self, entries: &mut dyn Iterator<Item = (Bytes, Option<Bytes>)>) {
        self.as_mut().put_all(entries);
    }

    fn range(&self, from: &[u8], to: &[u8]) -> Vec<(Bytes, Bytes)> {
        self.as_ref().range(from, to)
    }

    fn all(&self) -> Vec<(Bytes, Bytes)> {
        self.as_ref().all()
    }

    fn approximate_num_entries(&self) -> u64 {
        self.as_ref().approximate_num_entries()
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.as_mut().flush()
    }

    fn persistent(&self) -> bool {
        self.as_ref().persistent()
    }
}

/// A processor's typed view of a key-value store (Java's
/// `KeyValueStore<K, V>`): keys and values go through the store's serdes,
/// with the changelog topic as the serdes' topic, as Kafka's
/// `MeteredKeyValueStore` does. Ranges are in the order of the serialized
/// keys.
pub struct KeyValueStore<'a, K, V> {
    store: &'a mut ChangeLogged<Box<dyn KeyValueBytesStore>>,
    serdes: Arc<KvSerdes<K, V>>,
    topic: &'a str,
}

impl<K, V> fmt::Debug for KeyValueStore<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyValueStore")
            .field("name", &self.store.name())
            .field("changelog", &self.topic)
            .finish_non_exhaustive()
    }
}

impl<K: Data, V: Data> KeyValueStore<'_, K, V> {
    pub fn name(&self) -> &str {
        self.store.name()
    }

    /// Whether `key` serializes to null (a store cannot hold it: Kafka's
    /// aggregations skip such records).
    pub fn is_null_key(&self, key: &K) -> Result<bool, StreamsError> {
        match self.serdes.key.serialize(self.topic, key) {
            Ok(bytes) => Ok(bytes.is_none()),
            Err(source) => Err(self.serde_error(source)),
        }
    }

    fn key_bytes(&self, key: &K) -> Result<Bytes, StreamsError> {
        self.serdes.key_bytes(self.store.name(), self.topic, key)
    }

    fn serde_error(&self, source: crate::serdes::SerdeError) -> StreamsError {
        serde_error(self.store.name(), source)
    }

    fn decode(&self, key: &[u8], value: &[u8]) -> Result<(K, V), StreamsError> {
        self.serdes
            .decode(self.store.name(), self.topic, key, value)
    }

    pub fn get(&self, key: &K) -> Result<Option<V>, StreamsError> {
        let key = self.key_bytes(key)?;
        match self.store.get(&key) {
            Some(bytes) => Ok(Some(self.decode(&key, &bytes)?.1)),
            None => Ok(None),
        }
    }

    /// Writes `value` for `key`. A value that serializes to null deletes the
    /// key, as Kafka's stores treat a null value.
    pub fn put(&mut self, key: &K, value: &V) -> Result<(), StreamsError> {
        let key = self.key_bytes(key)?;
        let value = self
            .serdes
            .value
            .serialize(self.topic, value)
            .map_err(|e| self.serde_error(e))?;
        self.store.put(key, value);
        Ok(())
    }

    pub fn delete(&mut self, key: &K) -> Result<Option<V>, StreamsError> {
        let key = self.key_bytes(key)?;
        let old = match self.store.get(&key) {
            Some(bytes) => Some(self.decode(&key, &bytes)?.1),
            None => None,
        };
        self.store.put(key, None);
        Ok(old)
    }

    /// Entries with `from <= key <= to` by serialized key.
    pub fn range(&self, from: &K, to: &K) -> Result<Vec<(K, V)>, StreamsError> {
        let (from, to) = (self.key_bytes(from)?, self.key_bytes(to)?);
        self.store
            .range(&from, &to)
            .iter()
            .map(|(k, v)| self.decode(k, v))
            .collect()
    }

    pub fn all(&self) -> Result<Vec<(K, V)>, StreamsError> {
        self.store
            .all()
            .iter()
            .map(|(k, v)| self.decode(k, v))
            .collect()
    }

    pub fn approximate_num_entries(&self) -> u64 {
        self.store.approximate_num_entries()
    }
}
