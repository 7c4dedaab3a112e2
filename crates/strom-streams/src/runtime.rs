//! One task at run time: the nodes of a sub-topology, type-erased, with the
//! task's stream time, wall clock and punctuation schedules. The test driver
//! runs these today; the broker runtime will run the same tasks.
//!
//! Records travel between nodes as [`ErasedRecord`]s (boxed `Any` keys and
//! values); typed adapters around each user processor, source and sink
//! convert at the edges, so the public API stays typed.

use std::any::{Any, type_name};
use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;

use crate::error::StreamsError;
use crate::processor::{
    Cancellable, Data, Headers, Processor, ProcessorContext, ProcessorSupplier, PunctuationType,
    Record, RecordContext, RecordMetadata, ScheduleId, TaskId, TopicNameExtractor,
};
use crate::serdes::{Serde, SerdeError};
use crate::state::KeyValueStore;
use crate::state::builder::TaskStore;
use crate::topology::{NodeKind, SinkTopicName, Topology};

/// A key or value of any [`Data`] type.
pub(crate) trait AnyData: Any + Send {
    fn clone_box(&self) -> Box<dyn AnyData>;
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
    fn type_name(&self) -> &'static str;
}

impl<T: Data> AnyData for T {
    fn clone_box(&self) -> Box<dyn AnyData> {
        Box::new(self.clone())
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }

    fn type_name(&self) -> &'static str {
        type_name::<T>()
    }
}

fn downcast<T: 'static>(value: Box<dyn AnyData>, node: &str) -> Result<T, StreamsError> {
    let actual = value.as_ref().type_name();
    match value.into_any().downcast::<T>() {
        Ok(v) => Ok(*v),
        Err(_) => Err(StreamsError::TypeMismatch {
            node: node.to_owned(),
            expected: type_name::<T>(),
            actual,
        }),
    }
}

pub(crate) struct ErasedRecord {
    key: Box<dyn AnyData>,
    value: Box<dyn AnyData>,
    timestamp_ms: i64,
    headers: Headers,
}

impl Clone for ErasedRecord {
    fn clone(&self) -> Self {
        Self {
            key: self.key.as_ref().clone_box(),
            value: self.value.as_ref().clone_box(),
            timestamp_ms: self.timestamp_ms,
            headers: self.headers.clone(),
        }
    }
}

impl ErasedRecord {
    pub(crate) fn from_typed<K: Data, V: Data>(record: Record<K, V>) -> Self {
        Self {
            key: Box::new(record.key),
            value: Box::new(record.value),
            timestamp_ms: record.timestamp_ms,
            headers: record.headers,
        }
    }

    fn into_typed<K: Data, V: Data>(self, node: &str) -> Result<Record<K, V>, StreamsError> {
        Ok(Record {
            key: downcast(self.key, node)?,
            value: downcast(self.value, node)?,
            timestamp_ms: self.timestamp_ms,
            headers: self.headers,
        })
    }
}

/// A record a sink produced, serialized.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProducedRecord {
    pub(crate) topic: String,
    pub(crate) key: Option<Bytes>,
    pub(crate) value: Option<Bytes>,
    pub(crate) timestamp_ms: i64,
    pub(crate) headers: Headers,
}

pub(crate) trait ErasedProcessor: Send {
    fn init(&mut self, ctx: NodeContext<'_>) -> Result<(), StreamsError>;
    fn process(&mut self, ctx: NodeContext<'_>, record: ErasedRecord) -> Result<(), StreamsError>;
    fn punctuate(
        &mut self,
        ctx: NodeContext<'_>,
        schedule: ScheduleId,
        timestamp_ms: i64,
    ) -> Result<(), StreamsError>;
    fn close(&mut self);
}

struct ProcessorAdapter<KIn, VIn, KOut, VOut> {
    inner: Box<dyn Processor<KIn, VIn, KOut, VOut>>,
}

impl<KIn: Data, VIn: Data, KOut: Data, VOut: Data> ErasedProcessor
    for ProcessorAdapter<KIn, VIn, KOut, VOut>
{
    fn init(&mut self, ctx: NodeContext<'_>) -> Result<(), StreamsError> {
        self.inner.init(&mut ProcessorContext::new(ctx))
    }

    fn process(&mut self, ctx: NodeContext<'_>, record: ErasedRecord) -> Result<(), StreamsError> {
        let record = record.into_typed::<KIn, VIn>(ctx.node_name())?;
        self.inner.process(&mut ProcessorContext::new(ctx), record)
    }

    fn punctuate(
        &mut self,
        ctx: NodeContext<'_>,
        schedule: ScheduleId,
        timestamp_ms: i64,
    ) -> Result<(), StreamsError> {
        self.inner
            .punctuate(&mut ProcessorContext::new(ctx), schedule, timestamp_ms)
    }

    fn close(&mut self) {
        self.inner.close();
    }
}

/// Makes type-erased processors from a typed supplier.
pub(crate) trait ErasedSupplier: Send + Sync {
    fn get(&self) -> Box<dyn ErasedProcessor>;
}

pub(crate) struct SupplierAdapter<S, KIn, VIn, KOut, VOut> {
    supplier: S,
    _types: PhantomData<fn(KIn, VIn, KOut, VOut)>,
}

impl<S, KIn, VIn, KOut, VOut> SupplierAdapter<S, KIn, VIn, KOut, VOut> {
    pub(crate) fn new(supplier: S) -> Self {
        Self {
            supplier,
            _types: PhantomData,
        }
    }
}

impl<S, KIn: Data, VIn: Data, KOut: Data, VOut: Data> ErasedSupplier
    for SupplierAdapter<S, KIn, VIn, KOut, VOut>
where
    S: ProcessorSupplier<KIn, VIn, KOut, VOut>,
{
    fn get(&self) -> Box<dyn ErasedProcessor> {
        Box::new(ProcessorAdapter {
            inner: self.supplier.get(),
        })
    }
}

/// A decoded key and value.
type Decoded = (Box<dyn AnyData>, Box<dyn AnyData>);

/// Decodes a source topic's bytes into the source's key and value types.
pub(crate) trait ErasedSource: Send + Sync {
    fn read(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<Decoded, SerdeError>;
}

pub(crate) struct SourceAdapter<KS, VS> {
    pub(crate) key_serde: KS,
    pub(crate) value_serde: VS,
}

impl<KS: Serde, VS: Serde> ErasedSource for SourceAdapter<KS, VS> {
    fn read(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<Decoded, SerdeError> {
        let key = self.key_serde.deserialize(topic, key)?;
        let value = self.value_serde.deserialize(topic, value)?;
        Ok((Box::new(key), Box::new(value)))
    }
}

/// Encodes records for a sink's topic.
pub(crate) trait ErasedSink: Send + Sync {
    /// Encodes `record` for the sink's topic, or for `topic` when given
    /// (an internal topic's name on the cluster).
    fn write(
        &self,
        node: &str,
        record: ErasedRecord,
        input: Option<&RecordMetadata>,
        topic: Option<&str>,
    ) -> Result<ProducedRecord, StreamsError>;
}

pub(crate) enum SinkTopic<K, V> {
    Static(String),
    Extractor(Box<dyn TopicNameExtractor<K, V>>),
}

pub(crate) struct SinkAdapter<KS: Serde, VS: Serde> {
    pub(crate) topic: SinkTopic<KS::Target, VS::Target>,
    pub(crate) key_serde: KS,
    pub(crate) value_serde: VS,
}

impl<KS: Serde, VS: Serde> ErasedSink for SinkAdapter<KS, VS> {
    fn write(
        &self,
        node: &str,
        record: ErasedRecord,
        input: Option<&RecordMetadata>,
        runtime_topic: Option<&str>,
    ) -> Result<ProducedRecord, StreamsError> {
        let record = record.into_typed::<KS::Target, VS::Target>(node)?;
        if record.timestamp_ms < 0 {
            // Java's `Record` refuses one ("Malformed Record").
            return Err(StreamsError::InvalidOutputTimestamp {
                node: node.to_owned(),
                timestamp_ms: record.timestamp_ms,
            });
        }
        let topic = match (&self.topic, runtime_topic) {
            (_, Some(topic)) => topic.to_owned(),
            (SinkTopic::Static(topic), None) => topic.clone(),
            (SinkTopic::Extractor(extractor), None) => {
                let context = RecordContext {
                    timestamp_ms: record.timestamp_ms,
                    headers: &record.headers,
                    input,
                };
                extractor.extract(&record.key, &record.value, &context)
            }
        };
        let failed = |source| StreamsError::Serialization {
            node: node.to_owned(),
            topic: topic.clone(),
            source,
        };
        let key = self
            .key_serde
            .serialize(&topic, &record.key)
            .map_err(failed)?;
        let value = self
            .value_serde
            .serialize(&topic, &record.value)
            .map_err(failed)?;
        Ok(ProducedRecord {
            topic,
            key,
            value,
            timestamp_ms: record.timestamp_ms,
            headers: record.headers,
        })
    }
}

pub(crate) enum RuntimeNode {
    Source(Arc<dyn ErasedSource>),
    /// `None` while the processor is running (taken out of the task so that
    /// its context can borrow the rest of the task).
    Processor(Option<Box<dyn ErasedProcessor>>),
    /// A sink, with its topic's name on the cluster when that differs from
    /// the topology's (an internal topic).
    Sink(Arc<dyn ErasedSink>, Option<String>),
}

pub(crate) trait ErasedPunctuator: Send {
    fn punctuate(&mut self, ctx: NodeContext<'_>, timestamp_ms: i64) -> Result<(), StreamsError>;
}

pub(crate) struct PunctuatorAdapter<F, KOut, VOut> {
    punctuator: F,
    _types: PhantomData<fn(KOut, VOut)>,
}

impl<F, KOut, VOut> PunctuatorAdapter<F, KOut, VOut> {
    pub(crate) fn new(punctuator: F) -> Self {
        Self {
            punctuator,
            _types: PhantomData,
        }
    }
}

impl<F, KOut: Data, VOut: Data> ErasedPunctuator for PunctuatorAdapter<F, KOut, VOut>
where
    F: FnMut(&mut ProcessorContext<'_, KOut, VOut>, i64) -> Result<(), StreamsError>
        + Send
        + 'static,
{
    fn punctuate(&mut self, ctx: NodeContext<'_>, timestamp_ms: i64) -> Result<(), StreamsError> {
        (self.punctuator)(&mut ProcessorContext::new(ctx), timestamp_ms)
    }
}

pub(crate) enum PunctuationTarget {
    Closure(Box<dyn ErasedPunctuator>),
    /// The scheduling node's own `Processor::punctuate`.
    Processor,
}

struct Schedule {
    id: ScheduleId,
    node: usize,
    kind: PunctuationType,
    /// When it fires next (stream time or wall clock, ms).
    next_ms: i64,
    interval_ms: i64,
    cancelled: Arc<AtomicBool>,
    target: PunctuationTarget,
}

/// Kafka's `PunctuationSchedule.next`: the next boundary after `now`, so a
/// jump over several intervals punctuates once, not once per interval.
/// `None` when that is past `i64::MAX` (the schedule can never fire again;
/// Java overflows there and would punctuate forever).
fn next_punctuation_ms(scheduled_ms: i64, interval_ms: i64, now_ms: i64) -> Option<i64> {
    let next = scheduled_ms.checked_add(interval_ms)?;
    if now_ms >= next {
        let missed = (now_ms - scheduled_ms) / interval_ms;
        scheduled_ms.checked_add(missed.checked_add(1)?.checked_mul(interval_ms)?)
    } else {
        Some(next)
    }
}

/// One task: a sub-topology's nodes for one partition, with its clocks.
pub(crate) struct TaskState {
    pub(crate) task_id: TaskId,
    pub(crate) names: Vec<String>,
    /// Children of each node, in the order the children were added to the
    /// topology (Kafka forwards in that order).
    pub(crate) children: Vec<Vec<usize>>,
    pub(crate) nodes: Vec<RuntimeNode>,
    /// Largest timestamp processed; `None` before the first record.
    pub(crate) stream_time_ms: Option<i64>,
    pub(crate) wall_clock_ms: i64,
    /// The input record being processed.
    pub(crate) current: Option<RecordMetadata>,
    schedules: Vec<Schedule>,
    next_schedule_id: u64,
    /// What the sinks wrote since the driver last collected.
    pub(crate) produced: Vec<ProducedRecord>,
    /// This task's instances of the stores its processors use, by name.
    pub(crate) stores: BTreeMap<String, TaskStore>,
    /// The stores each node may use (connected in the topology).
    pub(crate) node_stores: Vec<Vec<String>>,
}

impl TaskState {
    pub(crate) fn new(
        task_id: TaskId,
        names: Vec<String>,
        children: Vec<Vec<usize>>,
        nodes: Vec<RuntimeNode>,
        wall_clock_ms: i64,
    ) -> Self {
        assert_eq!(names.len(), nodes.len(), "one name per node");
        assert_eq!(children.len(), nodes.len(), "one child list per node");
        Self {
            task_id,
            names,
            children,
            nodes,
            stream_time_ms: None,
            wall_clock_ms,
            current: None,
            schedules: Vec::new(),
            next_schedule_id: 0,
            produced: Vec::new(),
            stores: BTreeMap::new(),
            node_stores: Vec::new(),
        }
    }

    /// The store writes since the last call, for the changelog topics of
    /// the stores that log: (topic, writes in order).
    pub(crate) fn take_changelog(&mut self) -> Vec<(String, Vec<crate::state::logged::Change>)> {
        self.stores
            .values_mut()
            .filter_map(|store| {
                let changes = store.store.take_pending();
                (!changes.is_empty()).then(|| (store.changelog.clone(), changes))
            })
            .collect()
    }

    /// Calls `init` on every processor, in topology order.
    pub(crate) fn init(&mut self) -> Result<(), StreamsError> {
        for node in 0..self.nodes.len() {
            if let Some(mut processor) = self.take_processor(node)? {
                let result = processor.init(NodeContext { task: self, node });
                self.nodes[node] = RuntimeNode::Processor(Some(processor));
                result?;
            }
        }
        Ok(())
    }

    /// Takes a processor out of its slot; `Ok(None)` for sources and sinks.
    fn take_processor(
        &mut self,
        node: usize,
    ) -> Result<Option<Box<dyn ErasedProcessor>>, StreamsError> {
        match &mut self.nodes[node] {
            RuntimeNode::Processor(slot) => match slot.take() {
                Some(processor) => Ok(Some(processor)),
                None => Err(StreamsError::Reentrant(self.names[node].clone())),
            },
            RuntimeNode::Source(_) | RuntimeNode::Sink(..) => Ok(None),
        }
    }

    /// Decodes one input record at source `node` and runs it through the
    /// sub-topology. Stream time moves first: it includes the record being
    /// processed, as in Kafka.
    pub(crate) fn process_input(
        &mut self,
        node: usize,
        metadata: RecordMetadata,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: Headers,
    ) -> Result<(), StreamsError> {
        let RuntimeNode::Source(source) = &self.nodes[node] else {
            unreachable!("input for {} which is not a source", self.names[node]);
        };
        let (key, value) = source.read(&metadata.topic, key, value).map_err(|source| {
            StreamsError::Deserialization {
                node: self.names[node].clone(),
                topic: metadata.topic.clone(),
                source,
            }
        })?;
        let timestamp_ms = metadata.timestamp_ms;
        self.stream_time_ms = Some(
            self.stream_time_ms
                .map_or(timestamp_ms, |t| t.max(timestamp_ms)),
        );
        self.current = Some(metadata);
        let record = ErasedRecord {
            key,
            value,
            timestamp_ms,
            headers,
        };
        let result = NodeContext { task: self, node }.forward(record, None);
        self.current = None;
        result
    }

    fn deliver(&mut self, node: usize, record: ErasedRecord) -> Result<(), StreamsError> {
        match &self.nodes[node] {
            RuntimeNode::Source(_) => NodeContext { task: self, node }.forward(record, None),
            RuntimeNode::Sink(sink, topic) => {
                let (sink, topic) = (Arc::clone(sink), topic.clone());
                let produced = sink.write(
                    &self.names[node],
                    record,
                    self.current.as_ref(),
                    topic.as_deref(),
                )?;
                self.produced.push(produced);
                Ok(())
            }
            RuntimeNode::Processor(_) => {
                let Some(mut processor) = self.take_processor(node)? else {
                    unreachable!("a processor slot holds a processor");
                };
                let result = processor.process(NodeContext { task: self, node }, record);
                self.nodes[node] = RuntimeNode::Processor(Some(processor));
                result
            }
        }
    }

    /// Runs every schedule of `kind` that is due at `now_ms`, earliest first
    /// (Kafka's `PunctuationQueue.mayPunctuate`); each fires at most once.
    /// Returns whether any fired.
    pub(crate) fn may_punctuate(
        &mut self,
        kind: PunctuationType,
        now_ms: i64,
    ) -> Result<bool, StreamsError> {
        let mut punctuated = false;
        loop {
            self.schedules
                .retain(|s| !s.cancelled.load(Ordering::Relaxed));
            let due = self
                .schedules
                .iter()
                .enumerate()
                .filter(|(_, s)| s.kind == kind && s.next_ms <= now_ms)
                .min_by_key(|(_, s)| (s.next_ms, s.id))
                .map(|(i, _)| i);
            let Some(index) = due else {
                return Ok(punctuated);
            };
            let mut schedule = self.schedules.swap_remove(index);
            // A punctuation has no input record.
            let input = self.current.take();
            let node = schedule.node;
            let result = match &mut schedule.target {
                PunctuationTarget::Closure(punctuator) => {
                    punctuator.punctuate(NodeContext { task: self, node }, now_ms)
                }
                PunctuationTarget::Processor => match self.take_processor(node) {
                    Ok(Some(mut processor)) => {
                        let result = processor.punctuate(
                            NodeContext { task: self, node },
                            schedule.id,
                            now_ms,
                        );
                        self.nodes[node] = RuntimeNode::Processor(Some(processor));
                        result
                    }
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                },
            };
            self.current = input;
            punctuated = true;
            if !schedule.cancelled.load(Ordering::Relaxed)
                && let Some(next_ms) =
                    next_punctuation_ms(schedule.next_ms, schedule.interval_ms, now_ms)
            {
                debug_assert!(next_ms > now_ms, "a schedule fires once per call");
                schedule.next_ms = next_ms;
                self.schedules.push(schedule);
            }
            result?;
        }
    }

    /// Closes every processor (in topology order).
    pub(crate) fn close(&mut self) {
        for node in &mut self.nodes {
            if let RuntimeNode::Processor(Some(processor)) = node {
                processor.close();
            }
        }
        self.schedules.clear();
    }
}

/// The task `task_id` of the sub-topology made of `members` (node indices
/// of `topology`, in topology order), with fresh processors, not yet
/// initialised; and the source node (index within the task) of each of the
/// sub-topology's source topics, by their names on the cluster (internal
/// topics carry `application_id` as a prefix).
pub(crate) fn build_task(
    topology: &Topology,
    members: &[usize],
    task_id: TaskId,
    wall_clock_ms: i64,
    application_id: &str,
) -> (TaskState, Vec<(String, usize)>) {
    let local: HashMap<usize, usize> = members.iter().enumerate().map(|(i, &m)| (m, i)).collect();
    let mut names = Vec::with_capacity(members.len());
    let mut nodes = Vec::with_capacity(members.len());
    let mut children = vec![Vec::new(); members.len()];
    let mut sources = Vec::new();
    let mut stores = BTreeMap::new();
    let mut node_stores = Vec::with_capacity(members.len());
    for (i, &m) in members.iter().enumerate() {
        let def = &topology.nodes[m];
        names.push(def.name.clone());
        for store in &def.stores {
            if let Some(store_def) = topology.stores.get(store) {
                stores.entry(store.clone()).or_insert_with(|| {
                    store_def.build(crate::state::changelog_topic(application_id, store))
                });
            }
        }
        node_stores.push(def.stores.clone());
        for parent in &def.parents {
            // A sub-topology holds every parent of its nodes.
            if let Some(&p) = local.get(parent) {
                children[p].push(i);
            }
        }
        nodes.push(match &def.kind {
            NodeKind::Source { topics, source } => {
                sources.extend(
                    topics
                        .iter()
                        .map(|topic| (topology.runtime_topic(application_id, topic), i)),
                );
                RuntimeNode::Source(Arc::clone(source))
            }
            NodeKind::Processor { supplier } => RuntimeNode::Processor(Some(supplier.get())),
            NodeKind::Sink { sink, topic } => {
                let runtime = match topic {
                    SinkTopicName::Static(topic)
                        if topology.repartition_topics.contains_key(topic) =>
                    {
                        Some(topology.runtime_topic(application_id, topic))
                    }
                    _ => None,
                };
                RuntimeNode::Sink(Arc::clone(sink), runtime)
            }
        });
    }
    let mut task = TaskState::new(task_id, names, children, nodes, wall_clock_ms);
    task.stores = stores;
    task.node_stores = node_stores;
    (task, sources)
}

/// A node's view of its task (the untyped half of `ProcessorContext`).
pub(crate) struct NodeContext<'a> {
    pub(crate) task: &'a mut TaskState,
    pub(crate) node: usize,
}

impl NodeContext<'_> {
    pub(crate) fn node_name(&self) -> &str {
        &self.task.names[self.node]
    }

    /// The typed view of store `name`, which this node must be connected to
    /// (Kafka refuses a processor access to a store it is not connected to).
    pub(crate) fn key_value_store<K: Data, V: Data>(
        &mut self,
        name: &str,
    ) -> Result<KeyValueStore<'_, K, V>, StreamsError> {
        let node = self.node;
        if !self.task.node_stores[node].iter().any(|s| s == name) {
            return Err(StreamsError::IllegalState(format!(
                "Processor {} has no access to StateStore {name} as the store is not connected to the processor.",
                self.task.names[node]
            )));
        }
        match self.task.stores.get_mut(name) {
            Some(store) => store.typed(),
            None => Err(StreamsError::IllegalState(format!(
                "StateStore {name} is not in task {}",
                self.task.task_id
            ))),
        }
    }

    pub(crate) fn forward(
        &mut self,
        record: ErasedRecord,
        child: Option<&str>,
    ) -> Result<(), StreamsError> {
        let task = &mut *self.task;
        let from = self.node;
        if let Some(child) = child {
            let Some(&to) = task.children[from]
                .iter()
                .find(|&&c| task.names[c] == child)
            else {
                return Err(StreamsError::UnknownChild {
                    node: task.names[from].clone(),
                    child: child.to_owned(),
                });
            };
            return task.deliver(to, record);
        }
        let count = task.children[from].len();
        for i in 0..count {
            let to = task.children[from][i];
            if i + 1 == count {
                return task.deliver(to, record);
            }
            task.deliver(to, record.clone())?;
        }
        Ok(())
    }

    pub(crate) fn schedule(
        &mut self,
        interval: Duration,
        kind: PunctuationType,
        target: PunctuationTarget,
    ) -> Result<Cancellable, StreamsError> {
        let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        if interval_ms < 1 {
            return Err(StreamsError::InvalidInterval(interval));
        }
        let task = &mut *self.task;
        let next_ms = match kind {
            // Kafka: "align punctuation to 0L, punctuate as soon as we have data".
            PunctuationType::StreamTime => 0,
            // Kafka: "align punctuation to now, punctuate after interval has elapsed".
            PunctuationType::WallClockTime => task.wall_clock_ms.saturating_add(interval_ms),
        };
        let id = ScheduleId(task.next_schedule_id);
        task.next_schedule_id += 1;
        let cancelled = Arc::new(AtomicBool::new(false));
        task.schedules.push(Schedule {
            id,
            node: self.node,
            kind,
            next_ms,
            interval_ms,
            cancelled: Arc::clone(&cancelled),
            target,
        });
        Ok(Cancellable { id, cancelled })
    }
}

#[cfg(test)]
mod tests {
    use super::next_punctuation_ms;

    #[test]
    fn a_jump_over_several_intervals_punctuates_once() {
        assert_eq!(next_punctuation_ms(0, 10, 0), Some(10));
        assert_eq!(next_punctuation_ms(0, 10, 5), Some(10));
        assert_eq!(next_punctuation_ms(0, 10, 10), Some(20));
        assert_eq!(next_punctuation_ms(0, 10, 35), Some(40));
        assert_eq!(next_punctuation_ms(10, 10, 10), Some(20));
    }

    #[test]
    fn a_schedule_past_the_end_of_time_stops() {
        assert_eq!(next_punctuation_ms(0, 10, i64::MAX), None);
        assert_eq!(next_punctuation_ms(i64::MAX - 5, 10, i64::MAX - 5), None);
        assert_eq!(
            next_punctuation_ms(i64::MAX - 20, 10, i64::MAX - 20),
            Some(i64::MAX - 10)
        );
    }
}
