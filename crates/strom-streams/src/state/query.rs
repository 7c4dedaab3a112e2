//! Interactive queries: a read-only view of one store over every task of
//! this instance that holds it (Java's `KafkaStreams.store(...)` with
//! `QueryableStoreTypes.keyValueStore()`, a `CompositeReadOnlyKeyValueStore`).
//!
//! Each task registers its stores once they are restored, and its
//! registration removes them when the task goes (closed, or its thread
//! ended, panicked or was aborted); a view looks the tasks up at every
//! call, so it follows rebalances, and fails while any thread restores
//! (Kafka's threads are not RUNNING then) or the instance is not running.
//! During a rebalance the tasks kept serve queries (Kafka's "stale
//! stores"). Reads take each store's lock, as the stream thread does for
//! each write, so a query sees whole writes only; `range` and `all` copy
//! a task's entries under its lock, holding that task's processing
//! meanwhile.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use bytes::Bytes;

use super::builder::{KvSerdes, SharedBytesStore, lock_store, typed_serdes};
use crate::error::StreamsError;
use crate::kafka_streams::State;
use crate::processor::{Data, TaskId};

/// The queryable stores of an instance, and whether any thread is
/// restoring tasks (queries wait for that, as Kafka's only see threads in
/// state RUNNING).
#[derive(Default)]
pub(crate) struct StoreRegistry {
    /// By store name, by task.
    stores: Mutex<BTreeMap<String, BTreeMap<TaskId, SharedBytesStore>>>,
    restoring: AtomicUsize,
}

impl fmt::Debug for StoreRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never waits: a Debug inside a query must not deadlock.
        let stores = match self.stores.try_lock() {
            Ok(map) => format!(
                "{:?}",
                map.iter()
                    .map(|(name, tasks)| (name, tasks.keys().collect::<Vec<_>>()))
                    .collect::<BTreeMap<_, _>>()
            ),
            Err(_) => "<locked>".to_owned(),
        };
        f.debug_struct("StoreRegistry")
            .field("stores", &stores)
            .field("restoring", &self.restoring.load(Ordering::SeqCst))
            .finish()
    }
}

impl StoreRegistry {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, BTreeMap<TaskId, SharedBytesStore>>> {
        self.stores.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes a restored task's stores queryable until the returned
    /// registration is dropped (the task closed, its thread ended, panicked
    /// or was aborted).
    pub(crate) fn register(
        self: &Arc<Self>,
        task: TaskId,
        stores: Vec<(String, SharedBytesStore)>,
    ) -> Registration {
        let mut map = self.lock();
        for (name, store) in &stores {
            map.entry(name.clone())
                .or_default()
                .insert(task, Arc::clone(store));
        }
        Registration {
            registry: Arc::clone(self),
            task,
            stores,
        }
    }

    /// Marks a thread as restoring until the returned guard is dropped.
    pub(crate) fn restoring(self: &Arc<Self>) -> Restoring {
        self.restoring.fetch_add(1, Ordering::SeqCst);
        Restoring(Arc::clone(self))
    }
}

/// A task's stores in the registry; dropping it removes them, unless
/// another thread registered the same task since (a task that moved
/// between two threads of the instance).
pub(crate) struct Registration {
    registry: Arc<StoreRegistry>,
    task: TaskId,
    stores: Vec<(String, SharedBytesStore)>,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("task", &self.task)
            .finish_non_exhaustive()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self.registry.lock();
        for (name, store) in &self.stores {
            if let Some(tasks) = map.get_mut(name) {
                if tasks.get(&self.task).is_some_and(|s| Arc::ptr_eq(s, store)) {
                    tasks.remove(&self.task);
                }
                if tasks.is_empty() {
                    map.remove(name);
                }
            }
        }
    }
}

/// A thread restoring tasks: queries fail meanwhile.
#[derive(Debug)]
pub(crate) struct Restoring(Arc<StoreRegistry>);

impl Drop for Restoring {
    fn drop(&mut self) {
        self.0.restoring.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A read-only key-value store over every local task holding store `name`
/// (Java's `ReadOnlyKeyValueStore`). Keys and values go through the store's
/// serdes; `range` and `all` are ordered by serialized key across tasks.
pub struct ReadOnlyKeyValueStore<K, V> {
    name: String,
    /// The changelog topic: the serdes' topic, as in the store itself.
    topic: String,
    registry: Arc<StoreRegistry>,
    serdes: Arc<KvSerdes<K, V>>,
    /// The instance's state, checked at every call.
    state: watch::Receiver<State>,
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
        registry: Arc<StoreRegistry>,
        serdes: &Arc<dyn std::any::Any + Send + Sync>,
        state: watch::Receiver<State>,
    ) -> Result<Self, StreamsError> {
        Ok(Self {
            name: name.to_owned(),
            topic,
            registry,
            serdes: typed_serdes::<K, V>(serdes, name)?,
            state,
            _types: PhantomData,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The local tasks' instances of the store, now.
    fn stores(&self) -> Result<Vec<SharedBytesStore>, StreamsError> {
        let state = *self.state.borrow();
        if state != State::Running {
            return Err(StreamsError::InvalidStateStore(format!(
                "KafkaStreams is not running. State is {}.",
                state.as_kafka_name()
            )));
        }
        if self.registry.restoring.load(Ordering::SeqCst) > 0 {
            return Err(StreamsError::InvalidStateStore(format!(
                "Cannot get state store {} because a stream thread is restoring its tasks, not RUNNING.",
                self.name
            )));
        }
        let map = self.registry.lock();
        match map.get(&self.name) {
            Some(tasks) if !tasks.is_empty() => Ok(tasks.values().map(Arc::clone).collect()),
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
