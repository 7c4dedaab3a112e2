//! The stateless DSL: [`StreamsBuilder`] and [`KStream`] (Java's
//! `StreamsBuilder`, `KStream`, `BranchedKStream`), writing Processor API
//! nodes into a [`Topology`].
//!
//! # Names
//!
//! Nodes get Kafka's generated names, a prefix and a ten-digit number from
//! one counter per builder (`KSTREAM-SOURCE-0000000000`,
//! `KSTREAM-FILTER-0000000001`, ...), with the prefixes of Kafka's
//! `KStreamImpl`: `KSTREAM-SOURCE-`, `KSTREAM-FILTER-` (also `filter_not`),
//! `KSTREAM-MAP-`, `KSTREAM-MAPVALUES-`, `KSTREAM-FLATMAP-`,
//! `KSTREAM-FLATMAPVALUES-`, `KSTREAM-KEY-SELECT-`, `KSTREAM-PEEK-`,
//! `KSTREAM-FOREACH-`, `KSTREAM-MERGE-`, `KSTREAM-PROCESSOR-`,
//! `KSTREAM-BRANCH-`, `KSTREAM-SINK-`. A [`Named`] (or `with_name` on
//! [`Consumed`]/[`Produced`]) pins a name and uses no number.
//!
//! `split()` makes a `KSTREAM-BRANCH-n` node; its branches are pass-through
//! children named after it plus the branch's name, or its position from 1,
//! with `0` for the default branch (`KSTREAM-BRANCH-00000000031`). As in
//! Kafka, each branch still takes a number from the counter, which shows in
//! the names of the nodes after it.
//!
//! Errors (a duplicate [`Named`] name) are kept and returned by
//! [`StreamsBuilder::build`], as Kafka throws them from `build()`.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::error::StreamsError;
use crate::processor::{
    Data, Processor, ProcessorContext, ProcessorSupplier, Record, TopicNameExtractor,
};
use crate::serdes::Serde;
use crate::topology::{Topology, TopologyError};

mod repartition;
mod stateful;

pub use repartition::{Grouped, MAX_REPARTITION_PARTITIONS, Repartitioned};
pub use stateful::{KGroupedStream, KTable, Materialized};

const SOURCE_NAME: &str = "KSTREAM-SOURCE-";
const SINK_NAME: &str = "KSTREAM-SINK-";
const FILTER_NAME: &str = "KSTREAM-FILTER-";
const MAP_NAME: &str = "KSTREAM-MAP-";
const MAPVALUES_NAME: &str = "KSTREAM-MAPVALUES-";
const FLATMAP_NAME: &str = "KSTREAM-FLATMAP-";
const FLATMAPVALUES_NAME: &str = "KSTREAM-FLATMAPVALUES-";
const KEY_SELECT_NAME: &str = "KSTREAM-KEY-SELECT-";
const PEEK_NAME: &str = "KSTREAM-PEEK-";
const FOREACH_NAME: &str = "KSTREAM-FOREACH-";
const MERGE_NAME: &str = "KSTREAM-MERGE-";
const PROCESSOR_NAME: &str = "KSTREAM-PROCESSOR-";
const BRANCH_NAME: &str = "KSTREAM-BRANCH-";

/// Pins an operation's node name (Java's `Named.as`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named(String);

impl Named {
    pub fn as_(name: impl Into<String>) -> Self {
        Self(name.into())
    }
}

/// How a stream is read: serdes, and optionally the source's name (Java's
/// `Consumed`).
#[derive(Debug, Clone)]
pub struct Consumed<KS, VS> {
    key_serde: KS,
    value_serde: VS,
    name: Option<String>,
}

impl<KS: Serde, VS: Serde> Consumed<KS, VS> {
    pub fn with(key_serde: KS, value_serde: VS) -> Self {
        Self {
            key_serde,
            value_serde,
            name: None,
        }
    }

    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// How a stream is written: serdes, and optionally the sink's name (Java's
/// `Produced`).
#[derive(Debug, Clone)]
pub struct Produced<KS, VS> {
    key_serde: KS,
    value_serde: VS,
    name: Option<String>,
}

impl<KS: Serde, VS: Serde> Produced<KS, VS> {
    pub fn with(key_serde: KS, value_serde: VS) -> Self {
        Self {
            key_serde,
            value_serde,
            name: None,
        }
    }

    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// Names a branch of [`KStream::split`] (Java's `Branched.as`).
#[derive(Debug, Clone, Default)]
pub struct Branched {
    name: Option<String>,
}

impl Branched {
    pub fn as_(name: impl Into<String>) -> Self {
        Self {
            name: Some(name.into()),
        }
    }
}

struct BuilderState {
    topology: Topology,
    /// Kafka's `InternalStreamsBuilder.index`: one counter for all generated names.
    index: u64,
    /// The first error; `build` returns it.
    error: Option<TopologyError>,
}

impl BuilderState {
    fn new_name(&mut self, prefix: &str) -> String {
        let name = format!("{prefix}{:010}", self.index);
        self.index += 1;
        name
    }

    fn name_or_generate(&mut self, named: Option<String>, prefix: &str) -> String {
        named.unwrap_or_else(|| self.new_name(prefix))
    }

    fn keep(&mut self, result: Result<(), TopologyError>) {
        if let Err(e) = result
            && self.error.is_none()
        {
            self.error = Some(e);
        }
    }
}

type Shared = Arc<Mutex<BuilderState>>;

fn lock(state: &Shared) -> MutexGuard<'_, BuilderState> {
    // A panic while holding the lock leaves plain data behind; keep going.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Builds a topology with the DSL (Java's `StreamsBuilder`).
#[derive(Clone)]
pub struct StreamsBuilder {
    state: Shared,
}

impl fmt::Debug for StreamsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamsBuilder")
            .field("topology", &lock(&self.state).topology)
            .finish()
    }
}

impl Default for StreamsBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamsBuilder {
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(BuilderState {
                topology: Topology::new(),
                index: 0,
                error: None,
            })),
        }
    }

    /// A stream of the records of `topics`.
    pub fn stream<KS: Serde, VS: Serde>(
        &self,
        topics: &[&str],
        consumed: Consumed<KS, VS>,
    ) -> KStream<KS::Target, VS::Target> {
        let mut state = lock(&self.state);
        let name = state.name_or_generate(consumed.name, SOURCE_NAME);
        let result = state
            .topology
            .add_source(&name, topics, consumed.key_serde, consumed.value_serde)
            .map(|_| ());
        state.keep(result);
        drop(state);
        KStream::new(Arc::clone(&self.state), name)
    }

    /// The topology built so far, or the first error met while building it.
    pub fn build(&self) -> Result<Topology, TopologyError> {
        let state = lock(&self.state);
        match &state.error {
            Some(e) => Err(e.clone()),
            None => Ok(state.topology.clone()),
        }
    }
}

/// A processor made of one closure, shared by every task.
struct FnProcessor<F>(Arc<F>);

impl<F, KIn, VIn, KOut, VOut> Processor<KIn, VIn, KOut, VOut> for FnProcessor<F>
where
    F: Fn(&mut ProcessorContext<'_, KOut, VOut>, Record<KIn, VIn>) -> Result<(), StreamsError>
        + Send
        + Sync
        + 'static,
    KOut: Data,
    VOut: Data,
{
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, KOut, VOut>,
        record: Record<KIn, VIn>,
    ) -> Result<(), StreamsError> {
        (self.0)(ctx, record)
    }
}

/// A stream of records (Java's `KStream`). Operations add nodes to the
/// builder and return the stream below the new node.
pub struct KStream<K, V> {
    state: Shared,
    node: String,
    /// A key-changing operation came before (Kafka's `repartitionRequired`):
    /// grouping by key needs a repartition topic first.
    repartition_required: bool,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for KStream<K, V> {
    fn clone(&self) -> Self {
        Self {
            state: Arc::clone(&self.state),
            node: self.node.clone(),
            repartition_required: self.repartition_required,
            _types: PhantomData,
        }
    }
}

impl<K, V> fmt::Debug for KStream<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KStream")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl<K: Data, V: Data> KStream<K, V> {
    fn new(state: Shared, node: String) -> Self {
        Self {
            state,
            node,
            repartition_required: false,
            _types: PhantomData,
        }
    }

    /// This stream, marked as keyed differently from its input.
    fn rekeyed(mut self) -> Self {
        self.repartition_required = true;
        self
    }

    /// The name of the node this stream comes out of.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    fn add_processor<KR: Data, VR: Data>(
        &self,
        prefix: &str,
        named: Option<Named>,
        supplier: impl ProcessorSupplier<K, V, KR, VR>,
        parents: &[&str],
    ) -> KStream<KR, VR> {
        let mut state = lock(&self.state);
        let name = state.name_or_generate(named.map(|n| n.0), prefix);
        let result = state
            .topology
            .add_processor(&name, supplier, parents)
            .map(|_| ());
        state.keep(result);
        drop(state);
        // Operations that keep the key pass the mark on.
        let mut stream = KStream::new(Arc::clone(&self.state), name);
        stream.repartition_required = self.repartition_required;
        stream
    }

    fn stateless<KR: Data, VR: Data, F>(
        &self,
        prefix: &str,
        named: Option<Named>,
        f: F,
    ) -> KStream<KR, VR>
    where
        F: Fn(&mut ProcessorContext<'_, KR, VR>, Record<K, V>) -> Result<(), StreamsError>
            + Send
            + Sync
            + 'static,
    {
        let f = Arc::new(f);
        let supplier = move || FnProcessor(Arc::clone(&f));
        self.add_processor(prefix, named, supplier, &[self.node.as_str()])
    }

    /// Keeps the records for which `predicate` holds.
    pub fn filter(&self, predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> Self {
        self.filter_named(predicate, None::<Named>)
    }

    pub fn filter_named(
        &self,
        predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static,
        named: impl Into<Option<Named>>,
    ) -> Self {
        self.stateless(FILTER_NAME, named.into(), move |ctx, r| {
            if predicate(&r.key, &r.value) {
                ctx.forward(r)
            } else {
                Ok(())
            }
        })
    }

    /// Drops the records for which `predicate` holds.
    pub fn filter_not(&self, predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> Self {
        self.filter_not_named(predicate, None::<Named>)
    }

    pub fn filter_not_named(
        &self,
        predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static,
        named: impl Into<Option<Named>>,
    ) -> Self {
        self.stateless(FILTER_NAME, named.into(), move |ctx, r| {
            if predicate(&r.key, &r.value) {
                Ok(())
            } else {
                ctx.forward(r)
            }
        })
    }

    /// A new key and value per record; timestamp and headers are kept.
    pub fn map<KR: Data, VR: Data>(
        &self,
        mapper: impl Fn(K, V) -> (KR, VR) + Send + Sync + 'static,
    ) -> KStream<KR, VR> {
        self.map_named(mapper, None::<Named>)
    }

    pub fn map_named<KR: Data, VR: Data>(
        &self,
        mapper: impl Fn(K, V) -> (KR, VR) + Send + Sync + 'static,
        named: impl Into<Option<Named>>,
    ) -> KStream<KR, VR> {
        self.stateless(MAP_NAME, named.into(), move |ctx, r| {
            let (key, value) = mapper(r.key, r.value);
            ctx.forward(Record {
                key,
                value,
                timestamp_ms: r.timestamp_ms,
                headers: r.headers,
            })
        })
        .rekeyed()
    }

    /// A new value per record; key, timestamp and headers are kept.
    pub fn map_values<VR: Data>(
        &self,
        mapper: impl Fn(V) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR> {
        self.map_values_named(mapper, None::<Named>)
    }

    pub fn map_values_named<VR: Data>(
        &self,
        mapper: impl Fn(V) -> VR + Send + Sync + 'static,
        named: impl Into<Option<Named>>,
    ) -> KStream<K, VR> {
        self.stateless(MAPVALUES_NAME, named.into(), move |ctx, r: Record<K, V>| {
            let Record {
                key,
                value,
                timestamp_ms,
                headers,
            } = r;
            ctx.forward(Record {
                key,
                value: mapper(value),
                timestamp_ms,
                headers,
            })
        })
    }

    /// Zero or more records per record, each with the input's timestamp and headers.
    pub fn flat_map<KR: Data, VR: Data, I>(
        &self,
        mapper: impl Fn(K, V) -> I + Send + Sync + 'static,
    ) -> KStream<KR, VR>
    where
        I: IntoIterator<Item = (KR, VR)>,
    {
        self.flat_map_named(mapper, None::<Named>)
    }

    pub fn flat_map_named<KR: Data, VR: Data, I>(
        &self,
        mapper: impl Fn(K, V) -> I + Send + Sync + 'static,
        named: impl Into<Option<Named>>,
    ) -> KStream<KR, VR>
    where
        I: IntoIterator<Item = (KR, VR)>,
    {
        self.stateless(FLATMAP_NAME, named.into(), move |ctx, r| {
            for (key, value) in mapper(r.key, r.value) {
                ctx.forward(Record {
                    key,
                    value,
                    timestamp_ms: r.timestamp_ms,
                    headers: r.headers.clone(),
                })?;
            }
            Ok(())
        })
        .rekeyed()
    }

    /// Zero or more values per record, each with the input's key, timestamp and headers.
    pub fn flat_map_values<VR: Data, I>(
        &self,
        mapper: impl Fn(V) -> I + Send + Sync + 'static,
    ) -> KStream<K, VR>
    where
        I: IntoIterator<Item = VR>,
    {
        self.flat_map_values_named(mapper, None::<Named>)
    }

    pub fn flat_map_values_named<VR: Data, I>(
        &self,
        mapper: impl Fn(V) -> I + Send + Sync + 'static,
        named: impl Into<Option<Named>>,
    ) -> KStream<K, VR>
    where
        I: IntoIterator<Item = VR>,
    {
        self.stateless(
            FLATMAPVALUES_NAME,
            named.into(),
            move |ctx, r: Record<K, V>| {
                for value in mapper(r.value) {
                    ctx.forward(Record {
                        key: r.key.clone(),
                        value,
                        timestamp_ms: r.timestamp_ms,
                        headers: r.headers.clone(),
                    })?;
                }
                Ok(())
            },
        )
    }

    /// A new key per record (the stream is marked for repartitioning, as in
    /// Kafka: see [`KStream::group_by_key`]).
    pub fn select_key<KR: Data>(
        &self,
        mapper: impl Fn(&K, &V) -> KR + Send + Sync + 'static,
    ) -> KStream<KR, V> {
        self.select_key_named(mapper, None::<Named>)
    }

    pub fn select_key_named<KR: Data>(
        &self,
        mapper: impl Fn(&K, &V) -> KR + Send + Sync + 'static,
        named: impl Into<Option<Named>>,
    ) -> KStream<KR, V> {
        self.stateless(
            KEY_SELECT_NAME,
            named.into(),
            move |ctx, r: Record<K, V>| {
                let key = mapper(&r.key, &r.value);
                ctx.forward(r.with_key(key))
            },
        )
        .rekeyed()
    }

    /// Calls `action` on each record and passes it on.
    pub fn peek(&self, action: impl Fn(&K, &V) + Send + Sync + 'static) -> Self {
        self.peek_named(action, None::<Named>)
    }

    pub fn peek_named(
        &self,
        action: impl Fn(&K, &V) + Send + Sync + 'static,
        named: impl Into<Option<Named>>,
    ) -> Self {
        self.stateless(PEEK_NAME, named.into(), move |ctx, r| {
            action(&r.key, &r.value);
            ctx.forward(r)
        })
    }

    /// Calls `action` on each record; the end of this branch.
    pub fn foreach(&self, action: impl Fn(&K, &V) + Send + Sync + 'static) {
        self.foreach_named(action, None::<Named>);
    }

    pub fn foreach_named(
        &self,
        action: impl Fn(&K, &V) + Send + Sync + 'static,
        named: impl Into<Option<Named>>,
    ) {
        let _: KStream<K, V> =
            self.stateless(FOREACH_NAME, named.into(), move |_ctx, r: Record<K, V>| {
                action(&r.key, &r.value);
                Ok(())
            });
    }

    /// Both streams' records, in processing order.
    pub fn merge(&self, other: &KStream<K, V>) -> Self {
        self.merge_named(other, None::<Named>)
    }

    pub fn merge_named(&self, other: &KStream<K, V>, named: impl Into<Option<Named>>) -> Self {
        let f = Arc::new(|ctx: &mut ProcessorContext<'_, K, V>, r: Record<K, V>| ctx.forward(r));
        let supplier = move || FnProcessor(Arc::clone(&f));
        // A stream merged with itself has one parent (Kafka keeps parents
        // in a set), and forwards each record once.
        let parents: &[&str] = if self.node == other.node {
            &[self.node.as_str()]
        } else {
            &[self.node.as_str(), other.node.as_str()]
        };
        let mut merged: Self = self.add_processor(MERGE_NAME, named.into(), supplier, parents);
        merged.repartition_required |= other.repartition_required;
        merged
    }

    /// A Processor API node below this stream (Java's `KStream.process`).
    pub fn process<KR: Data, VR: Data>(
        &self,
        supplier: impl ProcessorSupplier<K, V, KR, VR>,
    ) -> KStream<KR, VR> {
        self.process_named(supplier, None::<Named>)
    }

    pub fn process_named<KR: Data, VR: Data>(
        &self,
        supplier: impl ProcessorSupplier<K, V, KR, VR>,
        named: impl Into<Option<Named>>,
    ) -> KStream<KR, VR> {
        // A processor may change keys: Kafka marks its output too.
        self.add_processor(
            PROCESSOR_NAME,
            named.into(),
            supplier,
            &[self.node.as_str()],
        )
        .rekeyed()
    }

    /// Splits the stream by predicates, each record going to the first branch
    /// whose predicate holds (Java's `split()`).
    pub fn split(&self) -> BranchedKStream<K, V> {
        self.split_named(None::<Named>)
    }

    pub fn split_named(&self, named: impl Into<Option<Named>>) -> BranchedKStream<K, V> {
        let branches: Arc<Mutex<Branches<K, V>>> = Arc::new(Mutex::new(Branches {
            predicates: Vec::new(),
            children: Vec::new(),
        }));
        let shared = Arc::clone(&branches);
        // Branches are added after the splitter, so the processor reads them
        // when a task is made, as Kafka's KStreamBranch shares its lists.
        let supplier = move || {
            let b = shared.lock().unwrap_or_else(PoisonError::into_inner);
            BranchProcessor {
                predicates: b.predicates.clone(),
                children: b.children.clone(),
            }
        };
        let splitter: KStream<K, V> =
            self.add_processor(BRANCH_NAME, named.into(), supplier, &[self.node.as_str()]);
        BranchedKStream {
            splitter,
            branches,
            outputs: BTreeMap::new(),
        }
    }

    /// Writes the stream to `topic`.
    pub fn to<KS, VS>(&self, topic: &str, produced: Produced<KS, VS>)
    where
        KS: Serde<Target = K>,
        VS: Serde<Target = V>,
    {
        let mut state = lock(&self.state);
        let name = state.name_or_generate(produced.name, SINK_NAME);
        let result = state
            .topology
            .add_sink(
                &name,
                topic,
                produced.key_serde,
                produced.value_serde,
                &[self.node.as_str()],
            )
            .map(|_| ());
        state.keep(result);
    }

    /// Writes each record to the topic `extractor` picks.
    pub fn to_extractor<KS, VS>(
        &self,
        extractor: impl TopicNameExtractor<K, V>,
        produced: Produced<KS, VS>,
    ) where
        KS: Serde<Target = K>,
        VS: Serde<Target = V>,
    {
        let mut state = lock(&self.state);
        let name = state.name_or_generate(produced.name, SINK_NAME);
        let result = state
            .topology
            .add_sink_with_extractor(
                &name,
                extractor,
                produced.key_serde,
                produced.value_serde,
                &[self.node.as_str()],
            )
            .map(|_| ());
        state.keep(result);
    }
}

type Predicate<K, V> = Arc<dyn Fn(&K, &V) -> bool + Send + Sync>;

struct Branches<K, V> {
    predicates: Vec<Predicate<K, V>>,
    /// One per predicate, then the default branch if there is one.
    children: Vec<String>,
}

/// Kafka's `KStreamBranch`.
struct BranchProcessor<K, V> {
    predicates: Vec<Predicate<K, V>>,
    children: Vec<String>,
}

impl<K: Data, V: Data> Processor<K, V, K, V> for BranchProcessor<K, V> {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, K, V>,
        record: Record<K, V>,
    ) -> Result<(), StreamsError> {
        for (predicate, child) in self.predicates.iter().zip(&self.children) {
            if predicate(&record.key, &record.value) {
                return ctx.forward_to(child, record);
            }
        }
        if self.children.len() > self.predicates.len()
            && let Some(default) = self.children.last()
        {
            return ctx.forward_to(default, record);
        }
        Ok(())
    }
}

/// The branches of a split stream (Java's `BranchedKStream`).
pub struct BranchedKStream<K, V> {
    splitter: KStream<K, V>,
    branches: Arc<Mutex<Branches<K, V>>>,
    outputs: BTreeMap<String, KStream<K, V>>,
}

impl<K, V> fmt::Debug for BranchedKStream<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BranchedKStream")
            .field("splitter", &self.splitter.node)
            .field("branches", &self.outputs.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl<K: Data, V: Data> BranchedKStream<K, V> {
    fn create_branch(&mut self, branched: Branched, index: usize) {
        let child_name = match branched.name {
            Some(name) => format!("{}{name}", self.splitter.node),
            None => format!("{}{index}", self.splitter.node),
        };
        // Kafka calls newProcessorName here and ignores the result: the
        // counter moves on.
        lock(&self.splitter.state).new_name(BRANCH_NAME);
        self.branches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .children
            .push(child_name.clone());
        let branch =
            self.splitter
                .stateless(BRANCH_NAME, Some(Named(child_name.clone())), |ctx, r| {
                    ctx.forward(r)
                });
        self.outputs.insert(child_name, branch);
    }

    /// Adds a branch for the records `predicate` takes (the first matching
    /// branch wins); named after the splitter plus its position from 1.
    pub fn branch(self, predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> Self {
        self.branch_with(predicate, Branched::default())
    }

    pub fn branch_with(
        mut self,
        predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static,
        branched: Branched,
    ) -> Self {
        let index = {
            let mut b = self.branches.lock().unwrap_or_else(PoisonError::into_inner);
            b.predicates.push(Arc::new(predicate));
            b.predicates.len()
        };
        self.create_branch(branched, index);
        self
    }

    /// Adds the branch for records no predicate took (named `...0`) and
    /// returns all branches by name.
    pub fn default_branch(self) -> BTreeMap<String, KStream<K, V>> {
        self.default_branch_with(Branched::default())
    }

    pub fn default_branch_with(mut self, branched: Branched) -> BTreeMap<String, KStream<K, V>> {
        self.create_branch(branched, 0);
        self.outputs
    }

    /// Returns the branches by name; records no predicate took are dropped.
    pub fn no_default_branch(self) -> BTreeMap<String, KStream<K, V>> {
        self.outputs
    }
}
