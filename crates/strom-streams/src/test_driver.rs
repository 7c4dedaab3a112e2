//! [`TopologyTestDriver`]: runs a [`Topology`] without a broker (Java's
//! `TopologyTestDriver`, `TestInputTopic`, `TestOutputTopic`).
//!
//! Each piped record is processed to the end, synchronously, by the task of
//! its source's sub-topology (one task per sub-topology, partition 0; Java's
//! driver runs the whole topology as one task, so stream time here is per
//! sub-topology, as on a real cluster). After each record the task's
//! stream-time punctuations are checked; wall-clock punctuations run only
//! in [`TopologyTestDriver::advance_wall_clock_time`]. Records a sink writes
//! to a topic that a source of the topology reads are fed back in, as Java's
//! driver does, after the record that produced them.
//!
//! The wall clock starts at 0 (Java's starts at the system time) and input
//! topics start at timestamp 0 unless told otherwise, so tests are
//! deterministic.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::StreamsError;
use crate::processor::{Data, Headers, PunctuationType, Record, RecordMetadata, TaskId};
use crate::runtime::{ProducedRecord, TaskState, build_task};
use crate::serdes::Serde;
use crate::topology::Topology;

/// Records processed for one piped record, counting the ones fed back
/// through the topology's own topics; beyond it the topology loops.
pub const RECORDS_PER_INPUT_MAX: usize = 100_000;

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

struct Pending {
    topic: String,
    key: Option<Bytes>,
    value: Option<Bytes>,
    timestamp_ms: i64,
    headers: Headers,
}

/// The application id the driver's changelog topics are named with
/// (Kafka's driver falls back to the same one).
pub const TEST_DRIVER_APPLICATION_ID: &str = "dummy-topology-test-driver-app-id";

struct DriverState {
    tasks: Vec<TaskState>,
    /// Task index and source node (within the task) of each source topic.
    sources: HashMap<String, (usize, usize)>,
    /// What sinks wrote, per topic, not yet read by a test output topic.
    outputs: HashMap<String, VecDeque<ProducedRecord>>,
    /// Next offset of each topic (inputs and outputs alike; partition 0).
    next_offsets: HashMap<String, i64>,
    wall_clock_ms: i64,
    /// After [`TopologyTestDriver::close`]: processors are closed, and
    /// nothing more runs.
    closed: bool,
}

impl DriverState {
    fn next_offset(&mut self, topic: &str) -> i64 {
        let next = self.next_offsets.entry(topic.to_owned()).or_insert(0);
        let offset = *next;
        *next += 1;
        offset
    }

    /// Processes `first` and everything it feeds back, in order.
    fn run(&mut self, first: Option<Pending>) -> Result<(), StreamsError> {
        if self.closed {
            return Err(StreamsError::Closed);
        }
        let mut queue: VecDeque<Pending> = first.into_iter().collect();
        self.collect_outputs(&mut queue);
        let mut processed = 0usize;
        while let Some(record) = queue.pop_front() {
            processed += 1;
            if processed > RECORDS_PER_INPUT_MAX {
                return Err(StreamsError::TooManyRecords(RECORDS_PER_INPUT_MAX));
            }
            let result = self.process(record);
            self.collect_outputs(&mut queue);
            result?;
        }
        Ok(())
    }

    fn process(&mut self, record: Pending) -> Result<(), StreamsError> {
        let Some(&(task, node)) = self.sources.get(&record.topic) else {
            return Err(StreamsError::UnknownTopic(record.topic));
        };
        if record.timestamp_ms < 0 {
            return Err(StreamsError::InvalidTimestamp {
                topic: record.topic,
                timestamp_ms: record.timestamp_ms,
            });
        }
        let offset = self.next_offset(&record.topic);
        let metadata = RecordMetadata {
            topic: record.topic,
            partition: 0,
            offset,
            timestamp_ms: record.timestamp_ms,
        };
        let task = &mut self.tasks[task];
        task.process_input(
            node,
            metadata,
            record.key.as_deref(),
            record.value.as_deref(),
            record.headers,
        )?;
        if let Some(stream_time_ms) = task.stream_time_ms {
            task.may_punctuate(PunctuationType::StreamTime, stream_time_ms)?;
        }
        Ok(())
    }

    /// Moves what the sinks wrote to the output topics, and queues the
    /// records for topics the topology reads.
    fn collect_outputs(&mut self, queue: &mut VecDeque<Pending>) {
        for t in 0..self.tasks.len() {
            let produced = std::mem::take(&mut self.tasks[t].produced);
            for record in produced {
                if self.sources.contains_key(&record.topic) {
                    queue.push_back(Pending {
                        topic: record.topic.clone(),
                        key: record.key.clone(),
                        value: record.value.clone(),
                        timestamp_ms: record.timestamp_ms,
                        headers: record.headers.clone(),
                    });
                } else {
                    self.next_offset(&record.topic);
                }
                self.outputs
                    .entry(record.topic.clone())
                    .or_default()
                    .push_back(record);
            }
        }
    }
}

impl DriverState {
    fn close(&mut self) {
        if !std::mem::replace(&mut self.closed, true) {
            for task in &mut self.tasks {
                task.close();
            }
        }
    }
}

impl Drop for DriverState {
    fn drop(&mut self) {
        self.close();
    }
}

/// Runs a topology in memory (see the module docs).
pub struct TopologyTestDriver {
    state: Rc<RefCell<DriverState>>,
}

impl fmt::Debug for TopologyTestDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.borrow();
        f.debug_struct("TopologyTestDriver")
            .field(
                "tasks",
                &state.tasks.iter().map(|t| t.task_id).collect::<Vec<_>>(),
            )
            .field("wall_clock_ms", &state.wall_clock_ms)
            .finish_non_exhaustive()
    }
}

impl TopologyTestDriver {
    /// Makes one task per sub-topology and initialises its processors; the
    /// wall clock starts at 0.
    pub fn new(topology: &Topology) -> Result<Self, StreamsError> {
        Self::with_wall_clock_ms(topology, 0)
    }

    pub fn with_wall_clock_ms(
        topology: &Topology,
        wall_clock_ms: i64,
    ) -> Result<Self, StreamsError> {
        let mut tasks = Vec::new();
        let mut sources = HashMap::new();
        for (id, members) in topology.subtopologies().iter().enumerate() {
            let subtopology = u32::try_from(id).unwrap_or(u32::MAX);
            let task_id = TaskId {
                subtopology,
                partition: 0,
            };
            let (task, task_sources) = build_task(
                topology,
                members,
                task_id,
                wall_clock_ms,
                TEST_DRIVER_APPLICATION_ID,
            );
            for (topic, node) in task_sources {
                sources.insert(topic, (tasks.len(), node));
            }
            tasks.push(task);
        }
        let mut state = DriverState {
            tasks,
            sources,
            outputs: HashMap::new(),
            next_offsets: HashMap::new(),
            wall_clock_ms,
            closed: false,
        };
        for task in &mut state.tasks {
            task.init()?;
        }
        // Punctuators scheduled in init may not write, but init may forward.
        state.run(None)?;
        Ok(Self {
            state: Rc::new(RefCell::new(state)),
        })
    }

    /// An input topic starting at timestamp 0 that does not advance by itself.
    pub fn create_input_topic<KS: Serde, VS: Serde>(
        &self,
        topic: &str,
        key_serde: KS,
        value_serde: VS,
    ) -> TestInputTopic<KS, VS> {
        self.create_input_topic_with_time(topic, key_serde, value_serde, 0, Duration::ZERO)
    }

    /// An input topic whose records start at `start_timestamp_ms` and advance
    /// by `auto_advance` after each record piped without a timestamp.
    pub fn create_input_topic_with_time<KS: Serde, VS: Serde>(
        &self,
        topic: &str,
        key_serde: KS,
        value_serde: VS,
        start_timestamp_ms: i64,
        auto_advance: Duration,
    ) -> TestInputTopic<KS, VS> {
        TestInputTopic {
            state: Rc::clone(&self.state),
            topic: topic.to_owned(),
            key_serde,
            value_serde,
            current_time_ms: start_timestamp_ms,
            auto_advance_ms: duration_ms(auto_advance),
        }
    }

    pub fn create_output_topic<KS: Serde, VS: Serde>(
        &self,
        topic: &str,
        key_serde: KS,
        value_serde: VS,
    ) -> TestOutputTopic<KS, VS> {
        TestOutputTopic {
            state: Rc::clone(&self.state),
            topic: topic.to_owned(),
            key_serde,
            value_serde,
        }
    }

    /// Moves the wall clock and runs the wall-clock punctuations now due, in
    /// every task, whether or not any input arrived.
    pub fn advance_wall_clock_time(&self, advance: Duration) -> Result<(), StreamsError> {
        let mut state = self.state.borrow_mut();
        if state.closed {
            return Err(StreamsError::Closed);
        }
        state.wall_clock_ms = state.wall_clock_ms.saturating_add(duration_ms(advance));
        let now_ms = state.wall_clock_ms;
        let mut result = Ok(());
        for task in &mut state.tasks {
            task.wall_clock_ms = now_ms;
            if result.is_ok() {
                result = task
                    .may_punctuate(PunctuationType::WallClockTime, now_ms)
                    .map(|_| ());
            }
        }
        let fed_back = state.run(None);
        result.and(fed_back)
    }

    pub fn wall_clock_ms(&self) -> i64 {
        self.state.borrow().wall_clock_ms
    }

    /// The entries of key-value store `name`, in serialized-key order (what
    /// Java's `getKeyValueStore(name).all()` returns); `None` when no
    /// processor uses a store of that name.
    pub fn key_value_store_entries<K: Data, V: Data>(
        &self,
        name: &str,
    ) -> Result<Option<Vec<(K, V)>>, StreamsError> {
        let mut state = self.state.borrow_mut();
        for task in &mut state.tasks {
            if let Some(store) = task.stores.get_mut(name) {
                return store.typed::<K, V>()?.all().map(Some);
            }
        }
        Ok(None)
    }

    /// What the stores wrote for their changelog topics since the last
    /// call, by topic, in write order (what the runtime sends at a commit).
    pub fn take_changelog(&self) -> Vec<(String, Vec<crate::state::logged::Change>)> {
        let mut state = self.state.borrow_mut();
        state
            .tasks
            .iter_mut()
            .flat_map(TaskState::take_changelog)
            .collect()
    }

    /// Topics that sinks have written to, including ones already read.
    pub fn produced_topic_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.state.borrow().outputs.keys().cloned().collect();
        names.sort();
        names
    }

    /// Closes every processor now (as Java's `close()`), even while test
    /// topics are still held; piping afterwards is an error. Output topics
    /// can still be read.
    pub fn close(self) {
        self.state.borrow_mut().close();
    }
}

/// A record of a test topic's types.
pub type TypedRecord<KS, VS> = Record<<KS as Serde>::Target, <VS as Serde>::Target>;

/// A key and value of a test topic's types.
pub type TypedKeyValue<KS, VS> = (<KS as Serde>::Target, <VS as Serde>::Target);

/// Pipes typed records into one topic (Java's `TestInputTopic`).
pub struct TestInputTopic<KS, VS> {
    state: Rc<RefCell<DriverState>>,
    topic: String,
    key_serde: KS,
    value_serde: VS,
    /// Timestamp of the next record piped without one.
    current_time_ms: i64,
    auto_advance_ms: i64,
}

impl<KS, VS> fmt::Debug for TestInputTopic<KS, VS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestInputTopic")
            .field("topic", &self.topic)
            .field("current_time_ms", &self.current_time_ms)
            .finish_non_exhaustive()
    }
}

impl<KS: Serde, VS: Serde> TestInputTopic<KS, VS> {
    /// Pipes a record at the topic's current time, then advances it.
    pub fn pipe_input(&mut self, key: KS::Target, value: VS::Target) -> Result<(), StreamsError> {
        let timestamp_ms = self.current_time_ms;
        self.current_time_ms = self.current_time_ms.saturating_add(self.auto_advance_ms);
        self.pipe_record(Record::new(key, value, timestamp_ms))
    }

    pub fn pipe_input_with_timestamp(
        &mut self,
        key: KS::Target,
        value: VS::Target,
        timestamp_ms: i64,
    ) -> Result<(), StreamsError> {
        self.pipe_record(Record::new(key, value, timestamp_ms))
    }

    pub fn pipe_key_value_list(
        &mut self,
        records: impl IntoIterator<Item = (KS::Target, VS::Target)>,
    ) -> Result<(), StreamsError> {
        for (key, value) in records {
            self.pipe_input(key, value)?;
        }
        Ok(())
    }

    /// Pipes a record with its own timestamp and headers.
    pub fn pipe_record(
        &mut self,
        record: Record<KS::Target, VS::Target>,
    ) -> Result<(), StreamsError> {
        let failed = |source| StreamsError::Serialization {
            node: "TestInputTopic".to_owned(),
            topic: self.topic.clone(),
            source,
        };
        let key = self
            .key_serde
            .serialize(&self.topic, &record.key)
            .map_err(failed)?;
        let value = self
            .value_serde
            .serialize(&self.topic, &record.value)
            .map_err(failed)?;
        self.state.borrow_mut().run(Some(Pending {
            topic: self.topic.clone(),
            key,
            value,
            timestamp_ms: record.timestamp_ms,
            headers: record.headers,
        }))
    }

    /// Moves the timestamp of the next record piped without one.
    pub fn advance_time(&mut self, advance: Duration) {
        self.current_time_ms = self.current_time_ms.saturating_add(duration_ms(advance));
    }
}

/// Reads typed records a topology wrote to one topic (Java's `TestOutputTopic`).
pub struct TestOutputTopic<KS, VS> {
    state: Rc<RefCell<DriverState>>,
    topic: String,
    key_serde: KS,
    value_serde: VS,
}

impl<KS, VS> fmt::Debug for TestOutputTopic<KS, VS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestOutputTopic")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl<KS: Serde, VS: Serde> TestOutputTopic<KS, VS> {
    /// The next record, with timestamp and headers.
    pub fn read_record(&self) -> Result<Record<KS::Target, VS::Target>, StreamsError> {
        let produced = self
            .state
            .borrow_mut()
            .outputs
            .get_mut(&self.topic)
            .and_then(VecDeque::pop_front)
            .ok_or_else(|| StreamsError::NoRecord(self.topic.clone()))?;
        let failed = |source| StreamsError::Output {
            topic: self.topic.clone(),
            source,
        };
        Ok(Record {
            key: self
                .key_serde
                .deserialize(&self.topic, produced.key.as_deref())
                .map_err(failed)?,
            value: self
                .value_serde
                .deserialize(&self.topic, produced.value.as_deref())
                .map_err(failed)?,
            timestamp_ms: produced.timestamp_ms,
            headers: produced.headers,
        })
    }

    pub fn read_key_value(&self) -> Result<(KS::Target, VS::Target), StreamsError> {
        self.read_record().map(|r| (r.key, r.value))
    }

    pub fn read_value(&self) -> Result<VS::Target, StreamsError> {
        self.read_record().map(|r| r.value)
    }

    pub fn read_records_to_list(&self) -> Result<Vec<TypedRecord<KS, VS>>, StreamsError> {
        let mut records = Vec::with_capacity(self.queue_size());
        while !self.is_empty() {
            records.push(self.read_record()?);
        }
        Ok(records)
    }

    pub fn read_key_values_to_list(&self) -> Result<Vec<TypedKeyValue<KS, VS>>, StreamsError> {
        Ok(self
            .read_records_to_list()?
            .into_iter()
            .map(|r| (r.key, r.value))
            .collect())
    }

    pub fn read_values_to_list(&self) -> Result<Vec<VS::Target>, StreamsError> {
        Ok(self
            .read_records_to_list()?
            .into_iter()
            .map(|r| r.value)
            .collect())
    }

    pub fn queue_size(&self) -> usize {
        self.state
            .borrow()
            .outputs
            .get(&self.topic)
            .map_or(0, VecDeque::len)
    }

    pub fn is_empty(&self) -> bool {
        self.queue_size() == 0
    }
}
