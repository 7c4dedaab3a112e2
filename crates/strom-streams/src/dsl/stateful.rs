//! The stateful DSL, first part: [`KStream::group_by_key`] into a
//! [`KGroupedStream`], then `count`, `reduce` or `aggregate` into a
//! [`KTable`] kept in a key-value store, and [`KTable::to_stream`] (Java's
//! `KGroupedStream`, `KTable`, `Materialized`).
//!
//! Names follow Kafka's `KGroupedStreamImpl`: the aggregation node is
//! `KSTREAM-AGGREGATE-n` (`KSTREAM-REDUCE-n` for `reduce`), its store
//! `KSTREAM-AGGREGATE-STATE-STORE-n` (`KSTREAM-REDUCE-STATE-STORE-n`) unless
//! [`Materialized::as_`] names it, taking its number first; `to_stream`
//! adds `KTABLE-TOSTREAM-n`.
//!
//! Every update is forwarded at once, as Kafka does with the record cache
//! off (`statestore.cache.max.bytes=0`); the cache comes later, and so do
//! old values (Kafka's `Change`), which only KTable operations after a
//! `groupBy` need.

use std::marker::PhantomData;
use std::sync::Arc;

use super::repartition::PendingRepartition;
use super::{KStream, Named, lock};
use crate::error::StreamsError;
use crate::processor::{Data, Processor, ProcessorContext, Record};
use crate::serdes::{I64Serde, Serde};
use crate::state::StoreBuilder;

const AGGREGATE_NAME: &str = "KSTREAM-AGGREGATE-";
const REDUCE_NAME: &str = "KSTREAM-REDUCE-";
const TOSTREAM_NAME: &str = "KTABLE-TOSTREAM-";
const STATE_STORE: &str = "STATE-STORE-";

/// The store behind a KTable: its name (generated when `None`), serdes,
/// and whether it logs to a changelog (Java's `Materialized`).
#[derive(Debug)]
pub struct Materialized<KS, VS> {
    name: Option<String>,
    key_serde: KS,
    value_serde: VS,
    logging: bool,
}

impl<KS: Serde, VS: Serde> Materialized<KS, VS> {
    /// A store with a generated name.
    pub fn with(key_serde: KS, value_serde: VS) -> Self {
        Self {
            name: None,
            key_serde,
            value_serde,
            logging: true,
        }
    }

    /// A store named `name` (queryable under it, changelog
    /// `<application.id>-<name>-changelog`).
    pub fn as_(name: impl Into<String>, key_serde: KS, value_serde: VS) -> Self {
        Self {
            name: Some(name.into()),
            ..Self::with(key_serde, value_serde)
        }
    }

    pub fn with_logging_disabled(mut self) -> Self {
        self.logging = false;
        self
    }
}

impl<K: Data, V: Data> KStream<K, V> {
    /// Groups by the current key, for an aggregation (Java's
    /// `groupByKey()`). After a key-changing operation (`map`, `flat_map`,
    /// `select_key`, `process`) Kafka puts a repartition topic in between,
    /// so that each key is counted in one task, written with the default
    /// serdes; strom-streams has no default serdes, so there `build()`
    /// reports [`TopologyError::RepartitionRequired`]: use
    /// [`KStream::group_by_key_with`] and give them.
    ///
    /// [`TopologyError::RepartitionRequired`]: crate::TopologyError::RepartitionRequired
    pub fn group_by_key(&self) -> KGroupedStream<K, V> {
        if self.repartition_required {
            let mut state = lock(&self.state);
            let error = crate::TopologyError::RepartitionRequired(self.node.clone());
            state.keep(Err(error));
        }
        KGroupedStream::new(self.clone(), None)
    }
}

/// A stream grouped by key, waiting for an aggregation (Java's
/// `KGroupedStream`).
#[derive(Debug, Clone)]
pub struct KGroupedStream<K, V> {
    stream: KStream<K, V>,
    /// The repartition topic the aggregation reads, when the key changed.
    repartition: Option<PendingRepartition>,
}

impl<K: Data, V: Data> KGroupedStream<K, V> {
    pub(super) fn new(stream: KStream<K, V>, repartition: Option<PendingRepartition>) -> Self {
        Self {
            stream,
            repartition,
        }
    }

    /// Counts the records of each key.
    pub fn count<KS>(&self, materialized: Materialized<KS, I64Serde>) -> KTable<K, i64>
    where
        KS: Serde<Target = K>,
    {
        self.aggregate_with(
            AGGREGATE_NAME,
            None,
            || 0_i64,
            |_key: &K, _value: V, count: i64| count.saturating_add(1),
            materialized,
        )
    }

    /// Combines each key's values, the first one as is (Java's `reduce`).
    pub fn reduce<KS, VS>(
        &self,
        reducer: impl Fn(V, V) -> V + Send + Sync + 'static,
        materialized: Materialized<KS, VS>,
    ) -> KTable<K, V>
    where
        KS: Serde<Target = K>,
        VS: Serde<Target = V>,
    {
        self.build(
            REDUCE_NAME,
            None,
            move |_key: &K, value: V, old: Option<V>| match old {
                Some(old) => reducer(old, value),
                None => value,
            },
            materialized,
        )
    }

    /// Folds each key's values into an aggregate that starts as
    /// `initializer()` (Java's `aggregate`).
    pub fn aggregate<VA: Data, VAS>(
        &self,
        initializer: impl Fn() -> VA + Send + Sync + 'static,
        aggregator: impl Fn(&K, V, VA) -> VA + Send + Sync + 'static,
        materialized: Materialized<impl Serde<Target = K>, VAS>,
    ) -> KTable<K, VA>
    where
        VAS: Serde<Target = VA>,
    {
        self.aggregate_with(AGGREGATE_NAME, None, initializer, aggregator, materialized)
    }

    fn aggregate_with<VA: Data, KS, VAS>(
        &self,
        prefix: &str,
        named: Option<Named>,
        initializer: impl Fn() -> VA + Send + Sync + 'static,
        aggregator: impl Fn(&K, V, VA) -> VA + Send + Sync + 'static,
        materialized: Materialized<KS, VAS>,
    ) -> KTable<K, VA>
    where
        KS: Serde<Target = K>,
        VAS: Serde<Target = VA>,
    {
        self.build(
            prefix,
            named,
            move |key: &K, value: V, old: Option<VA>| {
                aggregator(key, value, old.unwrap_or_else(&initializer))
            },
            materialized,
        )
    }

    /// Adds the store and the aggregation node that updates it.
    fn build<VA: Data, KS, VAS>(
        &self,
        prefix: &str,
        named: Option<Named>,
        update: impl Fn(&K, V, Option<VA>) -> VA + Send + Sync + 'static,
        materialized: Materialized<KS, VAS>,
    ) -> KTable<K, VA>
    where
        KS: Serde<Target = K>,
        VAS: Serde<Target = VA>,
    {
        let state = Arc::clone(&self.stream.state);
        let mut guard = lock(&state);
        // Kafka names the store first (MaterializedInternal), then the node.
        let queryable = materialized.name.clone();
        let store = match materialized.name {
            Some(name) => name,
            None => guard.new_name(&format!("{prefix}{STATE_STORE}")),
        };
        let node = guard.name_or_generate(named.map(|n| n.0), prefix);
        // Then the repartition topic, named after the store unless Grouped
        // named it (Kafka's GroupedStreamAggregateBuilder).
        let parent = match &self.repartition {
            Some(repartition) => repartition.add(&mut guard, &store, &self.stream.node),
            None => self.stream.node.clone(),
        };
        let update = Arc::new(update);
        let store_name = store.clone();
        let supplier = move || Aggregate {
            store: store_name.clone(),
            update: Arc::clone(&update),
            _types: PhantomData,
        };
        let mut builder = StoreBuilder::in_memory_key_value(
            store.clone(),
            materialized.key_serde,
            materialized.value_serde,
        );
        if !materialized.logging {
            builder = builder.with_logging_disabled();
        }
        let result = guard
            .topology
            .add_processor(&node, supplier, &[parent.as_str()])
            .and_then(|t| t.add_state_store(builder, &[node.as_str()]))
            .map(|_| ());
        guard.keep(result);
        drop(guard);
        KTable {
            stream: KStream::new(state, node),
            queryable,
        }
    }
}

/// The aggregation node: reads the key's aggregate, updates it, writes it
/// back and forwards the new one.
struct Aggregate<K, V, VA, F> {
    store: String,
    update: Arc<F>,
    _types: PhantomData<fn(K, V) -> VA>,
}

impl<K, V, VA, F> Processor<K, V, K, VA> for Aggregate<K, V, VA, F>
where
    K: Data,
    V: Data,
    VA: Data,
    F: Fn(&K, V, Option<VA>) -> VA + Send + Sync + 'static,
{
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, K, VA>,
        record: Record<K, V>,
    ) -> Result<(), StreamsError> {
        let Record {
            key,
            value,
            timestamp_ms,
            headers,
        } = record;
        let new = {
            let mut store = ctx.key_value_store::<K, VA>(&self.store)?;
            if store.is_null_key(&key)? {
                // Kafka's aggregations skip these (and count them as
                // dropped records).
                tracing::warn!(store = %self.store, "skipping a record with a null key");
                return Ok(());
            }
            let new = (self.update)(&key, value, store.get(&key)?);
            store.put(&key, &new)?;
            new
        };
        ctx.forward(Record {
            key,
            value: new,
            timestamp_ms,
            headers,
        })
    }
}

/// A changelog stream: the latest value per key, kept in a store (Java's
/// `KTable`).
#[derive(Debug, Clone)]
pub struct KTable<K, V> {
    stream: KStream<K, V>,
    /// Named by `Materialized::as_`: queryable under it.
    queryable: Option<String>,
}

impl<K: Data, V: Data> KTable<K, V> {
    /// The name to query the table's store by, when `Materialized::as_`
    /// named it (`None` for a generated name, as Kafka's
    /// `queryableStoreName` returns null).
    pub fn queryable_store_name(&self) -> Option<&str> {
        self.queryable.as_deref()
    }

    /// Every update of the table as a record (Java's `toStream()`).
    pub fn to_stream(&self) -> KStream<K, V> {
        self.to_stream_named(None::<Named>)
    }

    pub fn to_stream_named(&self, named: impl Into<Option<Named>>) -> KStream<K, V> {
        self.stream
            .stateless(TOSTREAM_NAME, named.into(), |ctx, r: Record<K, V>| {
                ctx.forward(r)
            })
    }
}
