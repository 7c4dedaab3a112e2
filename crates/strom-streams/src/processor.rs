//! The Processor API: [`Record`], [`Processor`], [`ProcessorSupplier`] and the
//! [`ProcessorContext`] a processor forwards through and schedules
//! punctuations with (Java's `org.apache.kafka.streams.processor.api`).
//!
//! # Time
//!
//! *Stream time* of a task is the largest record timestamp it has processed;
//! it never goes backwards, and it includes the record being processed.
//! Punctuations follow Kafka's `StreamTask.schedule` and `PunctuationQueue`:
//! - [`PunctuationType::StreamTime`] schedules are aligned to 0 and checked
//!   after each processed record, so the first one fires with the first
//!   record; afterwards one fires when stream time reaches the next multiple
//!   of the interval. A jump over several intervals fires *once*, and the
//!   next punctuation is the first boundary after the current stream time.
//!   Wall-clock time never fires them.
//! - [`PunctuationType::WallClockTime`] schedules first fire `interval` after
//!   the time they were made, then every interval, checked when the driver's
//!   clock moves (`advance_wall_clock_time` in the test driver), with the same
//!   skip-missed rule.
//!
//! The timestamp passed to a punctuator is the current stream time or wall
//! clock, not the boundary.

use std::any::{TypeId, type_name};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;

use crate::error::StreamsError;
use crate::runtime::{self, NodeContext, PunctuationTarget};

/// What keys and values in a topology must be: records are cloned when a
/// node forwards to several children (Java shares one object), and tasks
/// will run on stream threads.
pub trait Data: Clone + Send + 'static {}

impl<T: Clone + Send + 'static> Data for T {}

/// Record headers, in order, with nullable values (as on the wire and in
/// `strom_client`'s records).
pub type Headers = Vec<(String, Option<Bytes>)>;

/// One record flowing through a topology (Java's `api.Record`).
#[derive(Debug, Clone, PartialEq)]
pub struct Record<K, V> {
    pub key: K,
    pub value: V,
    /// Milliseconds since the epoch; the sink writes it as the record's
    /// create time.
    pub timestamp_ms: i64,
    pub headers: Headers,
}

impl<K, V> Record<K, V> {
    pub fn new(key: K, value: V, timestamp_ms: i64) -> Self {
        Self {
            key,
            value,
            timestamp_ms,
            headers: Headers::new(),
        }
    }

    pub fn with_key<K2>(self, key: K2) -> Record<K2, V> {
        Record {
            key,
            value: self.value,
            timestamp_ms: self.timestamp_ms,
            headers: self.headers,
        }
    }

    pub fn with_value<V2>(self, value: V2) -> Record<K, V2> {
        Record {
            key: self.key,
            value,
            timestamp_ms: self.timestamp_ms,
            headers: self.headers,
        }
    }

    pub fn with_timestamp(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = timestamp_ms;
        self
    }

    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    pub fn with_header(mut self, key: impl Into<String>, value: Option<Bytes>) -> Self {
        self.headers.push((key.into(), value));
        self
    }
}

/// Where the input record being processed came from (Java's
/// `RecordMetadata`, plus the input's own timestamp). There is none during a
/// punctuation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The input record's timestamp (a forwarded record may carry another).
    pub timestamp_ms: i64,
}

/// A task: sub-topology `subtopology` working on partition `partition` of its
/// source topics. Displays as Kafka's `0_1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    pub subtopology: u32,
    pub partition: i32,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.subtopology, self.partition)
    }
}

/// Which clock drives a punctuation (Java's `PunctuationType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PunctuationType {
    /// Fires only as processed records advance stream time.
    StreamTime,
    /// Fires as the wall clock advances, with or without input.
    WallClockTime,
}

/// Identifies a schedule made with [`ProcessorContext::schedule_processor`];
/// passed to [`Processor::punctuate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScheduleId(pub u64);

/// Cancels a schedule (Java's `Cancellable`). Dropping it does not cancel.
#[derive(Debug, Clone)]
pub struct Cancellable {
    pub(crate) id: ScheduleId,
    pub(crate) cancelled: Arc<AtomicBool>,
}

impl Cancellable {
    pub fn id(&self) -> ScheduleId {
        self.id
    }

    /// Stops the schedule; a punctuator may cancel its own schedule.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
}

/// A node's handle on its task while it processes a record, initialises or
/// punctuates: forward records to children, read the input's metadata and
/// the clocks, schedule punctuations.
pub struct ProcessorContext<'a, KOut, VOut> {
    pub(crate) inner: NodeContext<'a>,
    _types: PhantomData<fn(KOut, VOut)>,
}

impl<KOut, VOut> fmt::Debug for ProcessorContext<'_, KOut, VOut> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessorContext")
            .field("task_id", &self.inner.task.task_id)
            .field("node", &self.inner.node_name())
            .finish_non_exhaustive()
    }
}

impl<'a, KOut: Data, VOut: Data> ProcessorContext<'a, KOut, VOut> {
    pub(crate) fn new(inner: NodeContext<'a>) -> Self {
        Self {
            inner,
            _types: PhantomData,
        }
    }

    /// Sends a record to every child of this node, in the order the children
    /// were added to the topology.
    pub fn forward(&mut self, record: Record<KOut, VOut>) -> Result<(), StreamsError> {
        self.inner
            .forward(runtime::ErasedRecord::from_typed(record), None)
    }

    /// Sends a record to the named child only.
    pub fn forward_to(
        &mut self,
        child: &str,
        record: Record<KOut, VOut>,
    ) -> Result<(), StreamsError> {
        self.inner
            .forward(runtime::ErasedRecord::from_typed(record), Some(child))
    }

    /// The input record being processed; `None` during `init` and punctuations.
    pub fn record_metadata(&self) -> Option<&RecordMetadata> {
        self.inner.task.current.as_ref()
    }

    pub fn topic(&self) -> Option<&str> {
        self.record_metadata().map(|m| m.topic.as_str())
    }

    pub fn partition(&self) -> Option<i32> {
        self.record_metadata().map(|m| m.partition)
    }

    pub fn offset(&self) -> Option<i64> {
        self.record_metadata().map(|m| m.offset)
    }

    /// The input record's timestamp; `None` outside `process`.
    pub fn record_timestamp_ms(&self) -> Option<i64> {
        self.record_metadata().map(|m| m.timestamp_ms)
    }

    /// The task's stream time; `None` until it has processed a record (Java
    /// returns -1 then).
    pub fn stream_time(&self) -> Option<i64> {
        self.inner.task.stream_time_ms
    }

    /// The driver's wall clock in milliseconds.
    pub fn current_system_time_ms(&self) -> i64 {
        self.inner.task.wall_clock_ms
    }

    pub fn task_id(&self) -> TaskId {
        self.inner.task.task_id
    }

    /// The task's instance of key-value store `name` (Java's
    /// `getStateStore`), which must be connected to this processor
    /// ([`Topology::add_state_store`](crate::Topology::add_state_store)) and
    /// hold keys `K` and values `V`.
    pub fn key_value_store<K: Data, V: Data>(
        &mut self,
        name: &str,
    ) -> Result<crate::state::KeyValueStore<'_, K, V>, StreamsError> {
        self.inner.key_value_store(name)
    }

    /// Schedules `punctuator` every `interval` on the given clock (see the
    /// module docs for when it fires). The punctuator gets this node's
    /// context and the current stream time or wall clock.
    pub fn schedule<F>(
        &mut self,
        interval: Duration,
        kind: PunctuationType,
        punctuator: F,
    ) -> Result<Cancellable, StreamsError>
    where
        F: FnMut(&mut ProcessorContext<'_, KOut, VOut>, i64) -> Result<(), StreamsError>
            + Send
            + 'static,
    {
        let target =
            PunctuationTarget::Closure(Box::new(runtime::PunctuatorAdapter::<F, KOut, VOut>::new(
                punctuator,
            )));
        self.inner.schedule(interval, kind, target)
    }

    /// Schedules calls of this node's own [`Processor::punctuate`], which
    /// can use the processor's state (a closure given to
    /// [`schedule`](Self::schedule) cannot borrow the processor).
    pub fn schedule_processor(
        &mut self,
        interval: Duration,
        kind: PunctuationType,
    ) -> Result<Cancellable, StreamsError> {
        self.inner
            .schedule(interval, kind, PunctuationTarget::Processor)
    }
}

/// A node of the topology that receives records of type `Record<KIn, VIn>`
/// and forwards `Record<KOut, VOut>` (Java's `api.Processor`).
pub trait Processor<KIn, VIn, KOut, VOut>: Send + 'static {
    /// Called once before the first record, in topology order.
    fn init(&mut self, ctx: &mut ProcessorContext<'_, KOut, VOut>) -> Result<(), StreamsError> {
        let _ = ctx;
        Ok(())
    }

    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, KOut, VOut>,
        record: Record<KIn, VIn>,
    ) -> Result<(), StreamsError>;

    /// Called for schedules made with
    /// [`ProcessorContext::schedule_processor`].
    fn punctuate(
        &mut self,
        ctx: &mut ProcessorContext<'_, KOut, VOut>,
        schedule: ScheduleId,
        timestamp_ms: i64,
    ) -> Result<(), StreamsError> {
        let _ = (ctx, schedule, timestamp_ms);
        Ok(())
    }

    /// Called once when the task closes.
    fn close(&mut self) {}
}

/// Makes a fresh processor per task (Java's `ProcessorSupplier`). Any
/// `Fn() -> P` closure is one.
pub trait ProcessorSupplier<KIn, VIn, KOut, VOut>: Send + Sync + 'static {
    fn get(&self) -> Box<dyn Processor<KIn, VIn, KOut, VOut>>;
}

impl<F, P, KIn, VIn, KOut, VOut> ProcessorSupplier<KIn, VIn, KOut, VOut> for F
where
    F: Fn() -> P + Send + Sync + 'static,
    P: Processor<KIn, VIn, KOut, VOut>,
{
    fn get(&self) -> Box<dyn Processor<KIn, VIn, KOut, VOut>> {
        Box::new(self())
    }
}

/// What a sink's [`TopicNameExtractor`] sees besides key and value (Java's
/// `RecordContext`).
#[derive(Debug)]
pub struct RecordContext<'a> {
    pub timestamp_ms: i64,
    pub headers: &'a Headers,
    /// The input record being processed, if any (none in a punctuation).
    pub input: Option<&'a RecordMetadata>,
}

/// Chooses a sink's topic per record (Java's `TopicNameExtractor`).
pub trait TopicNameExtractor<K, V>: Send + Sync + 'static {
    fn extract(&self, key: &K, value: &V, context: &RecordContext<'_>) -> String;

    /// What `describe()` prints as `(extractor class: ...)`. Java prints the
    /// extractor object's `toString()` (a class name and a hash code); here it
    /// is the Rust type name, stable for a given build, or the name given to
    /// [`FnExtractor::new`].
    fn class_name(&self) -> String {
        type_name::<Self>().to_owned()
    }
}

/// A closure as a [`TopicNameExtractor`], with the name `describe()` prints.
pub struct FnExtractor<F> {
    class_name: String,
    extract: F,
}

impl<F> FnExtractor<F> {
    pub fn new<K, V>(class_name: impl Into<String>, extract: F) -> Self
    where
        F: Fn(&K, &V, &RecordContext<'_>) -> String + Send + Sync + 'static,
    {
        Self {
            class_name: class_name.into(),
            extract,
        }
    }
}

impl<F> fmt::Debug for FnExtractor<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnExtractor")
            .field("class_name", &self.class_name)
            .finish_non_exhaustive()
    }
}

impl<K, V, F> TopicNameExtractor<K, V> for FnExtractor<F>
where
    F: Fn(&K, &V, &RecordContext<'_>) -> String + Send + Sync + 'static,
{
    fn extract(&self, key: &K, value: &V, context: &RecordContext<'_>) -> String {
        (self.extract)(key, value, context)
    }

    fn class_name(&self) -> String {
        self.class_name.clone()
    }
}

/// The key and value types a node reads or writes, compared when nodes are
/// connected so that a mismatch is a build error, not a runtime surprise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordTypes {
    key: TypeId,
    value: TypeId,
    pub(crate) key_name: &'static str,
    pub(crate) value_name: &'static str,
}

impl RecordTypes {
    pub(crate) fn of<K: 'static, V: 'static>() -> Self {
        Self {
            key: TypeId::of::<K>(),
            value: TypeId::of::<V>(),
            key_name: type_name::<K>(),
            value_name: type_name::<V>(),
        }
    }

    pub(crate) fn matches(&self, other: &Self) -> bool {
        self.key == other.key && self.value == other.value
    }
}

impl fmt::Display for RecordTypes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Record<{}, {}>", self.key_name, self.value_name)
    }
}
