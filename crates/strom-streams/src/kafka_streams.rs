//! [`KafkaStreams`]: runs a [`Topology`] against Kafka (Strom or Apache
//! Kafka; only the wire protocol is used), at least once.
//!
//! Each stream thread (`num.stream.threads`, one tokio task each) is a
//! member of the consumer group `application.id`, subscribed to every
//! source topic. For each assigned partition it runs the task of the
//! sub-topology reading that topic (task `<subtopology>_<partition>`, one
//! task for all co-partitioned topics of a sub-topology, as in Kafka). A
//! record polled is processed to the end by its task, what the sinks write
//! is sent with the thread's producer, stream-time punctuations run after
//! each record and wall-clock ones on every loop.
//!
//! **At least once.** Every `commit.interval.ms` (30 s, as in Kafka) the
//! thread flushes its producer, checks that every record sent was
//! acknowledged, and only then commits the positions of the records it
//! processed: a crash or a rebalance may process records again (their
//! output appears twice), never skip one. A send that failed stops the
//! thread (Kafka's default production exception handler) before anything
//! past it is committed.
//!
//! Before a poll that rejoins the group (a rebalance), the thread commits
//! first, so the partitions' next owner does not redo its work.
//!
//! **Internal topics.** At start the application creates its repartition
//! topics and the changelogs of its logging stores, named
//! `<application.id>-<name>-repartition` and
//! `<application.id>-<store>-changelog` with Kafka Streams' configs; a
//! repartition topic has the partition count asked for, or as many
//! partitions as the sub-topology writing it has tasks. A task restores its
//! stores from their changelogs before it processes anything.
//!
//! Not yet: persistent stores, exactly-once, standby tasks, purging
//! repartition topics, several instances sharing tasks by a Streams
//! assignor (several instances do share partitions, by the consumer's
//! `range` assignor, which keeps co-partitioned topics together).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use strom_client::admin::{IsolationLevel, NewTopic, OffsetSpec};
use strom_client::{
    Admin, ClientConfig, Consumer, ConsumerRecord, DeliveryFuture, ErrorCode, Offset, Producer,
    ProducerRecord, TopicPartition,
};
use tokio::sync::watch;

use crate::error::StreamsError;
use crate::processor::{Data, PunctuationType, RecordMetadata, TaskId};
use crate::runtime::{TaskState, build_task};
use crate::state::ReadOnlyKeyValueStore;
use crate::state::query::{Registration, StoreRegistry};
use crate::topology::{NodeKind, SinkTopicName, Topology};

/// Records sent but not yet known acknowledged, per thread, before the
/// thread commits early: each holds a delivery future until the commit
/// checks it, so the bound caps that memory (about 100 bytes each) when
/// `commit.interval.ms` is long and the input fast.
pub const MAX_UNCOMMITTED_SENDS: usize = 100_000;

/// The most stream threads an instance runs (Kafka has no limit; beyond
/// the cores there is nothing to gain, and each thread holds connections).
pub const MAX_STREAM_THREADS: usize = 64;

/// What a failure to deserialize an input record does
/// (`deserialization.exception.handler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeserializationHandler {
    /// Stop the thread (Kafka's default, `LogAndFailExceptionHandler`).
    LogAndFail,
    /// Log the record's position and skip it (`LogAndContinueExceptionHandler`).
    LogAndContinue,
}

/// The settings of a [`KafkaStreams`] instance, with Kafka's names.
#[derive(Debug, Clone)]
pub struct StreamsConfig {
    /// `application.id`: the group id, and the prefix of client ids and of
    /// internal topics.
    pub application_id: String,
    /// Client properties for the consumer and producer: at least
    /// `bootstrap.servers`.
    pub client: ClientConfig,
    /// `num.stream.threads` (1).
    pub num_stream_threads: usize,
    /// `commit.interval.ms` (30000 under at-least-once).
    pub commit_interval: Duration,
    /// `poll.ms` (100): how long a thread's poll waits for records.
    pub poll: Duration,
    pub deserialization_handler: DeserializationHandler,
    /// `consumer.`-prefixed properties, for the consumers only.
    pub consumer: Vec<(String, String)>,
    /// `producer.`-prefixed properties, for the producers only.
    pub producer: Vec<(String, String)>,
    /// `replication.factor` of the internal topics the application creates
    /// (changelogs); -1, Kafka Streams' default, takes the broker's.
    pub replication_factor: i16,
}

/// The properties [`StreamsConfig::from_properties`] reads itself; the
/// common client ones (`bootstrap.servers`, `client.id`, timeouts) go to
/// the clients.
const STREAMS_PROPERTIES: &[&str] = &[
    "application.id",
    "num.stream.threads",
    "commit.interval.ms",
    "poll.ms",
    "processing.guarantee",
    "deserialization.exception.handler",
    "default.deserialization.exception.handler",
    "replication.factor",
];

impl StreamsConfig {
    /// `application.id` and `bootstrap.servers`, everything else Kafka's
    /// default.
    pub fn new(application_id: &str, bootstrap_servers: &str) -> Self {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", bootstrap_servers);
        Self {
            application_id: application_id.to_owned(),
            client,
            num_stream_threads: 1,
            commit_interval: Duration::from_secs(30),
            poll: Duration::from_millis(100),
            deserialization_handler: DeserializationHandler::LogAndFail,
            consumer: Vec::new(),
            producer: Vec::new(),
            replication_factor: -1,
        }
    }

    /// From properties with Kafka Streams' names. `processing.guarantee`
    /// may only be `at_least_once` for now.
    pub fn from_properties<'a>(
        properties: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, StreamsError> {
        let properties: BTreeMap<&str, &str> = properties.into_iter().collect();
        let invalid = |name: &str, reason: String| StreamsError::Config {
            name: name.to_owned(),
            reason,
        };
        let application_id = properties
            .get("application.id")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| invalid("application.id", "is required".into()))?;
        let bootstrap = properties
            .get("bootstrap.servers")
            .ok_or_else(|| invalid("bootstrap.servers", "is required".into()))?;
        let mut config = Self::new(application_id, bootstrap);
        for (&name, &value) in &properties {
            let number = || {
                value
                    .trim()
                    .parse::<u64>()
                    .map_err(|e| invalid(name, format!("{value:?}: {e}")))
            };
            match name {
                "application.id" | "bootstrap.servers" => {}
                "num.stream.threads" => {
                    let threads = usize::try_from(number()?).unwrap_or(usize::MAX);
                    if !(1..=MAX_STREAM_THREADS).contains(&threads) {
                        return Err(invalid(
                            name,
                            format!("{threads} is not 1 to {MAX_STREAM_THREADS}"),
                        ));
                    }
                    config.num_stream_threads = threads;
                }
                "commit.interval.ms" => config.commit_interval = Duration::from_millis(number()?),
                "replication.factor" => {
                    config.replication_factor = value
                        .trim()
                        .parse::<i16>()
                        .ok()
                        .filter(|rf| *rf == -1 || *rf >= 1)
                        .ok_or_else(|| {
                            invalid(name, format!("{value:?} is not -1 or at least 1"))
                        })?;
                }
                "poll.ms" => config.poll = Duration::from_millis(number()?),
                "processing.guarantee" => {
                    if value.trim() != "at_least_once" {
                        return Err(invalid(
                            name,
                            format!("{value:?}: only at_least_once for now"),
                        ));
                    }
                }
                "deserialization.exception.handler"
                | "default.deserialization.exception.handler" => {
                    config.deserialization_handler = match value.trim().rsplit('.').next() {
                        Some("LogAndFailExceptionHandler" | "LogAndFail") => {
                            DeserializationHandler::LogAndFail
                        }
                        Some("LogAndContinueExceptionHandler" | "LogAndContinue") => {
                            DeserializationHandler::LogAndContinue
                        }
                        _ => {
                            return Err(invalid(
                                name,
                                format!("{value:?} is not LogAndFail or LogAndContinue"),
                            ));
                        }
                    }
                }
                other if STREAMS_PROPERTIES.contains(&other) => {}
                // The group and its assignment are the runtime's own.
                "group.id"
                | "consumer.group.id"
                | "group.instance.id"
                | "consumer.group.instance.id"
                | "group.protocol"
                | "consumer.group.protocol"
                | "partition.assignment.strategy"
                | "consumer.partition.assignment.strategy"
                | "enable.auto.commit"
                | "consumer.enable.auto.commit" => {
                    return Err(invalid(
                        name,
                        "is set by Kafka Streams itself (application.id names the group)".into(),
                    ));
                }
                // Kafka Streams' prefixes: for one client only.
                other => match (
                    other.strip_prefix("consumer."),
                    other.strip_prefix("producer."),
                ) {
                    (Some(property), _) => config
                        .consumer
                        .push((property.to_owned(), value.to_owned())),
                    (_, Some(property)) => config
                        .producer
                        .push((property.to_owned(), value.to_owned())),
                    // Unprefixed: the properties every client takes
                    // (connection, timeouts, retries).
                    (None, None) => {
                        config.client.set(other, value);
                    }
                },
            }
        }
        Ok(config)
    }

    fn consumer_config(&self, thread: usize) -> ClientConfig {
        let mut config = self.client.clone();
        config
            .set("group.id", &self.application_id)
            .set(
                "client.id",
                format!(
                    "{}-StreamThread-{}-consumer",
                    self.application_id,
                    thread + 1
                ),
            )
            .set("enable.auto.commit", "false")
            // Kafka Streams' consumer defaults.
            .set("auto.offset.reset", "earliest")
            .set("max.poll.records", "1000");
        for (name, value) in &self.consumer {
            config.set(name, value);
        }
        // Range keeps co-partitioned topics' partitions on one member.
        config.set("partition.assignment.strategy", "range");
        config
    }

    fn producer_config(&self, thread: usize) -> ClientConfig {
        let mut config = self.client.clone();
        config
            .set(
                "client.id",
                format!(
                    "{}-StreamThread-{}-producer",
                    self.application_id,
                    thread + 1
                ),
            )
            // Kafka Streams' producer default.
            .set("linger.ms", "100");
        for (name, value) in &self.producer {
            config.set(name, value);
        }
        config
    }
}

/// The life of a [`KafkaStreams`] instance (Kafka's `KafkaStreams.State`,
/// without the rebalancing detail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Created,
    Running,
    PendingShutdown,
    NotRunning,
    /// A stream thread stopped on an error ([`KafkaStreams::close`] says
    /// which).
    Error,
}

impl State {
    /// Kafka's name of the state (`KafkaStreams.State`).
    pub fn as_kafka_name(self) -> &'static str {
        match self {
            Self::Created => "CREATED",
            Self::Running => "RUNNING",
            Self::PendingShutdown => "PENDING_SHUTDOWN",
            Self::NotRunning => "NOT_RUNNING",
            Self::Error => "ERROR",
        }
    }
}

/// Told about store restorations (Kafka's `StateRestoreListener`): each
/// changelog partition of a new task starts (from its log start offset)
/// and ends, with the batches restored in between (none for an empty one;
/// counts leave out records without a key, which are skipped). A
/// restoration cut short by a stop or an error gets no end. Calls come
/// from the stream threads, so they should be quick. While a thread
/// restores, its group consumer is not polled: a restoration longer than
/// `max.poll.interval.ms` costs the member its place in the group, as in
/// Kafka before KIP-429's state updater.
pub trait StateRestoreListener: Send + Sync {
    /// Restoration of `store` from `partition` begins, to `ending_offset`
    /// (exclusive).
    fn on_restore_start(
        &self,
        partition: &TopicPartition,
        store: &str,
        starting_offset: i64,
        ending_offset: i64,
    ) {
        let _ = (partition, store, starting_offset, ending_offset);
    }

    /// `restored` records up to `batch_end_offset` went into the store.
    fn on_batch_restored(
        &self,
        partition: &TopicPartition,
        store: &str,
        batch_end_offset: i64,
        restored: u64,
    ) {
        let _ = (partition, store, batch_end_offset, restored);
    }

    /// Restoration from `partition` is done, `total_restored` records.
    fn on_restore_end(&self, partition: &TopicPartition, store: &str, total_restored: u64) {
        let _ = (partition, store, total_restored);
    }
}

/// A [`StateRestoreListener`] as the instance keeps it.
#[derive(Clone)]
struct RestoreListener(Arc<dyn StateRestoreListener>);

impl std::fmt::Debug for RestoreListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateRestoreListener")
    }
}

impl std::ops::Deref for RestoreListener {
    type Target = dyn StateRestoreListener;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}

/// A running application: see the module docs.
#[derive(Debug)]
pub struct KafkaStreams {
    topology: Arc<Topology>,
    config: StreamsConfig,
    /// The local tasks' stores, for interactive queries.
    stores: Arc<StoreRegistry>,
    restore_listener: Option<RestoreListener>,
    state: watch::Sender<State>,
    stop: watch::Sender<bool>,
    threads: Vec<tokio::task::JoinHandle<Result<(), StreamsError>>>,
}

impl KafkaStreams {
    pub fn new(topology: Topology, config: StreamsConfig) -> Self {
        Self {
            topology: Arc::new(topology),
            config,
            stores: Arc::default(),
            restore_listener: None,
            state: watch::Sender::new(State::Created),
            stop: watch::Sender::new(false),
            threads: Vec::new(),
        }
    }

    /// Checks the topology against the cluster (every source topic exists;
    /// the source topics of each sub-topology have as many partitions), then
    /// starts the stream threads. Must run inside a tokio runtime.
    pub async fn start(&mut self) -> Result<(), StreamsError> {
        if *self.state.borrow() != State::Created {
            return Err(StreamsError::IllegalState(
                "start is called once, on a new instance".into(),
            ));
        }
        let partitions = check_source_topics(&self.topology, &self.config).await?;
        create_internal_topics(&self.topology, &self.config, &partitions).await?;
        for thread in 0..self.config.num_stream_threads {
            if let Err(e) = self.start_thread(thread) {
                // Those already started stop too.
                self.stop.send_replace(true);
                for started in self.threads.drain(..) {
                    let _ = started.await;
                }
                self.state.send_replace(State::NotRunning);
                return Err(e);
            }
        }
        self.state.send_if_modified(|s| {
            let created = *s == State::Created;
            if created {
                *s = State::Running;
            }
            created
        });
        Ok(())
    }

    fn start_thread(&mut self, thread: usize) -> Result<(), StreamsError> {
        let consumer = Consumer::new(&self.config.consumer_config(thread))?;
        let producer = Producer::new(&self.config.producer_config(thread))?;
        let sources = Arc::new(
            self.topology
                .runtime_source_topics(&self.config.application_id),
        );
        let topics: Vec<&str> = sources.keys().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        let mut restore_config = self.config.client.clone();
        restore_config
            .set(
                "client.id",
                format!(
                    "{}-StreamThread-{}-restore-consumer",
                    self.config.application_id,
                    thread + 1
                ),
            )
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false");
        let worker = StreamThread {
            index: thread,
            topology: Arc::clone(&self.topology),
            sources,
            config: self.config.clone(),
            consumer,
            producer,
            restore: Consumer::new(&restore_config)?,
            restore_listener: self.restore_listener.clone(),
            admin: Admin::new(&self.config.client)?,
            stopping: self.stop.subscribe(),
            tasks: BTreeMap::new(),
            stores: Arc::clone(&self.stores),
            route: None,
            partitions: HashMap::new(),
            uncommitted: BTreeMap::new(),
            sends: Vec::new(),
        };
        let stop = self.stop.clone();
        let state = self.state.clone();
        self.threads.push(tokio::spawn(async move {
            let result = worker.run(stop.subscribe()).await;
            if let Err(e) = &result {
                // The whole instance stops (Kafka's default
                // uncaught-exception response, SHUTDOWN_CLIENT).
                tracing::error!(thread, error = %e, "stream thread stopped");
                state.send_replace(State::Error);
                stop.send_replace(true);
            }
            result
        }));
        Ok(())
    }

    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    /// A read-only view of key-value store `name` over this instance's
    /// tasks (Java's `store(StoreQueryParameters.fromNameAndType(name,
    /// keyValueStore()))`): only while running (Kafka's
    /// `InvalidStateStoreException` otherwise), with the store's own key
    /// and value types (`TypeMismatch` otherwise). Each call on the view
    /// reads the tasks this instance holds at that moment; with none (all
    /// moved elsewhere, or a rebalance), it fails with `InvalidStateStore`,
    /// as Kafka's does.
    pub fn store<K: Data, V: Data>(
        &self,
        name: &str,
    ) -> Result<ReadOnlyKeyValueStore<K, V>, StreamsError> {
        let state = self.state();
        if state != State::Running {
            return Err(StreamsError::InvalidStateStore(format!(
                "KafkaStreams is not running. State is {}.",
                state.as_kafka_name()
            )));
        }
        let Some(def) = self.topology.stores.get(name) else {
            return Err(StreamsError::UnknownStateStore(name.to_owned()));
        };
        ReadOnlyKeyValueStore::new(
            name,
            crate::state::changelog_topic(&self.config.application_id, name),
            Arc::clone(&self.stores),
            def.serdes(),
            self.state.subscribe(),
        )
    }

    /// Follows the state (Kafka's state listener).
    pub fn subscribe_state(&self) -> watch::Receiver<State> {
        self.state.subscribe()
    }

    /// Tells `listener` about every store restoration (Kafka's
    /// `setGlobalStateRestoreListener`); only before `start`.
    pub fn set_global_state_restore_listener(
        &mut self,
        listener: Arc<dyn StateRestoreListener>,
    ) -> Result<(), StreamsError> {
        if self.state() != State::Created {
            return Err(StreamsError::IllegalState(
                "Can only set GlobalStateRestoreListener before calling start(). Current state is: not CREATED"
                    .into(),
            ));
        }
        self.restore_listener = Some(RestoreListener(listener));
        Ok(())
    }

    /// Stops the threads: each commits what it processed and leaves the
    /// group. Returns the first error a thread stopped on.
    pub async fn close(mut self) -> Result<(), StreamsError> {
        if *self.state.borrow() != State::Error {
            self.state.send_replace(State::PendingShutdown);
        }
        self.stop.send_replace(true);
        let mut first = None;
        for thread in self.threads.drain(..) {
            let result = match thread.await {
                Ok(result) => result,
                Err(e) => Err(StreamsError::IllegalState(format!(
                    "a stream thread panicked: {e}"
                ))),
            };
            if let Err(e) = result {
                first.get_or_insert(e);
            }
        }
        match first {
            Some(e) => {
                self.state.send_replace(State::Error);
                Err(e)
            }
            None => {
                self.state.send_replace(State::NotRunning);
                Ok(())
            }
        }
    }
}

impl Drop for KafkaStreams {
    fn drop(&mut self) {
        for thread in &self.threads {
            thread.abort();
        }
    }
}

/// Kafka's checks at assignment, done at start: the source topics exist,
/// each repartition topic gets its partition count (as asked, or as many
/// as the sub-topology writing it has tasks), and co-partitioned topics (of
/// one sub-topology) have as many partitions. Returns the partition count
/// of every source topic, internal ones included, by topology name.
async fn check_source_topics(
    topology: &Topology,
    config: &StreamsConfig,
) -> Result<BTreeMap<String, usize>, StreamsError> {
    let admin = Admin::new(&config.client)?;
    let topics: Vec<&str> = topology
        .source_topics
        .keys()
        .filter(|t| !topology.repartition_topics.contains_key(*t))
        .map(String::as_str)
        .collect();
    let described = admin.describe_topics(&topics).await;
    let mut counts = BTreeMap::new();
    for (topic, info) in described {
        let info = info.map_err(|e| StreamsError::MissingSourceTopic {
            topic: topic.clone(),
            reason: e.to_string(),
        })?;
        counts.insert(topic, info.partitions.len());
    }
    repartition_partitions(topology, &mut counts)?;
    for members in topology.subtopologies() {
        let topics: BTreeMap<&String, usize> = topology
            .source_topics
            .iter()
            .filter(|(_, node)| members.contains(node))
            .map(|(topic, _)| (topic, counts.get(topic).copied().unwrap_or(0)))
            .collect();
        let distinct: BTreeSet<usize> = topics.values().copied().collect();
        if distinct.len() > 1 {
            return Err(StreamsError::NotCopartitioned(
                topics
                    .iter()
                    .map(|(t, n)| format!("{t} ({n} partitions)"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
        }
    }
    Ok(counts)
}

/// Adds each repartition topic's partition count to `counts` (which holds
/// the external source topics'): the one asked for, or the most partitions
/// among the source topics of the sub-topology writing it, as Kafka's
/// `RepartitionTopics` computes them; repeated until nothing changes, since
/// a writer may itself read a repartition topic.
fn repartition_partitions(
    topology: &Topology,
    counts: &mut BTreeMap<String, usize>,
) -> Result<(), StreamsError> {
    for (topic, partitions) in &topology.repartition_topics {
        if let Some(n) = partitions {
            counts.insert(topic.clone(), *n);
        }
    }
    let subtopologies = topology.subtopologies();
    loop {
        let mut changed = false;
        for members in &subtopologies {
            let tasks = topology
                .source_topics
                .iter()
                .filter(|(_, node)| members.contains(node))
                .filter_map(|(topic, _)| counts.get(topic).copied())
                .max();
            let Some(tasks) = tasks else { continue };
            for &m in members {
                if let NodeKind::Sink {
                    topic: SinkTopicName::Static(topic),
                    ..
                } = &topology.nodes[m].kind
                    && topology.repartition_topics.contains_key(topic)
                    && !counts.contains_key(topic)
                {
                    counts.insert(topic.clone(), tasks);
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    match topology
        .repartition_topics
        .keys()
        .find(|t| !counts.contains_key(*t))
    {
        Some(topic) => Err(StreamsError::IllegalState(format!(
            "no partition count for repartition topic {topic}: no sub-topology with known source topics writes it"
        ))),
        None => Ok(()),
    }
}

/// The changelog topics of the stores that log, each with as many
/// partitions as its sub-topology has tasks: (topic on the cluster,
/// partitions).
fn changelog_topics(
    topology: &Topology,
    application_id: &str,
    source_partitions: &BTreeMap<String, usize>,
) -> Vec<(String, usize)> {
    let mut topics = Vec::new();
    for members in topology.subtopologies() {
        let partitions = topology
            .source_topics
            .iter()
            .filter(|(_, node)| members.contains(node))
            .filter_map(|(topic, _)| source_partitions.get(topic).copied())
            .max()
            .unwrap_or(0);
        let stores: BTreeSet<&String> = members
            .iter()
            .flat_map(|&m| &topology.nodes[m].stores)
            .collect();
        for store in stores {
            if topology.stores.get(store).is_some_and(|s| s.logging) {
                topics.push((
                    crate::state::changelog_topic(application_id, store),
                    partitions,
                ));
            }
        }
    }
    topics
}

/// A topic's configs: (name, value).
type TopicConfigs = &'static [(&'static str, &'static str)];

/// Kafka Streams' repartition topic configs (`RepartitionTopicConfig`):
/// kept until purged, in 50 MB segments.
const REPARTITION_TOPIC_CONFIGS: TopicConfigs = &[
    ("cleanup.policy", "delete"),
    ("retention.ms", "-1"),
    ("segment.bytes", "52428800"),
    ("message.timestamp.type", "CreateTime"),
];

/// Kafka Streams' changelog topic configs for key-value stores
/// (`UnwindowedUnversionedChangelogTopicConfig`).
const CHANGELOG_TOPIC_CONFIGS: TopicConfigs = &[
    ("cleanup.policy", "compact"),
    ("message.timestamp.type", "CreateTime"),
];

/// Creates the internal topics that do not exist yet (repartition topics
/// and changelogs, named `<application.id>-...`), as Kafka Streams creates
/// them at the first rebalance. One that exists with another partition
/// count is an error (Kafka's `InternalTopicManager` refuses it too).
async fn create_internal_topics(
    topology: &Topology,
    config: &StreamsConfig,
    partitions: &BTreeMap<String, usize>,
) -> Result<(), StreamsError> {
    let application_id = &config.application_id;
    let mut wanted: Vec<(String, usize, TopicConfigs)> = topology
        .repartition_topics
        .keys()
        .map(|topic| {
            (
                topology.runtime_topic(application_id, topic),
                partitions.get(topic).copied().unwrap_or(1),
                REPARTITION_TOPIC_CONFIGS,
            )
        })
        .collect();
    wanted.extend(
        changelog_topics(topology, application_id, partitions)
            .into_iter()
            .map(|(topic, n)| (topic, n, CHANGELOG_TOPIC_CONFIGS)),
    );
    if wanted.is_empty() {
        return Ok(());
    }
    let admin = Admin::new(&config.client)?;
    let names: Vec<&str> = wanted.iter().map(|(t, _, _)| t.as_str()).collect();
    let existing = admin.describe_topics(&names).await;
    let mut create = Vec::new();
    for (topic, partitions, configs) in &wanted {
        match existing.get(topic) {
            Some(Ok(info)) if info.partitions.len() != *partitions => {
                return Err(StreamsError::IllegalState(format!(
                    "internal topic {topic} has {} partitions, the application needs {partitions}",
                    info.partitions.len()
                )));
            }
            Some(Ok(_)) => {}
            _ => {
                let mut new = NewTopic::new(
                    topic.clone(),
                    i32::try_from(*partitions).unwrap_or(i32::MAX),
                    config.replication_factor,
                );
                for (name, value) in *configs {
                    new = new.config(*name, *value);
                }
                create.push(new);
            }
        }
    }
    let mut created = Vec::new();
    for (topic, result) in admin.create_topics(&create, false).await {
        match result {
            Ok(_) => {
                tracing::info!(%topic, "created internal topic");
                created.push(topic);
            }
            Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => created.push(topic),
            Err(e) => {
                return Err(StreamsError::IllegalState(format!(
                    "creating internal topic {topic}: {e}"
                )));
            }
        }
    }
    // As Kafka's InternalTopicManager.makeReady: the threads subscribe
    // next, and a topic missing from their first metadata would leave its
    // partitions unassigned for a while.
    let deadline = Instant::now() + INTERNAL_TOPICS_READY_TIMEOUT;
    loop {
        let names: Vec<&str> = created.iter().map(String::as_str).collect();
        let described = admin.describe_topics(&names).await;
        let ready = |topic: &String| {
            described.get(topic).is_some_and(|info| {
                info.as_ref().is_ok_and(|i| {
                    !i.partitions.is_empty() && i.partitions.iter().all(|p| p.leader >= 0)
                })
            })
        };
        created.retain(|topic| !ready(topic));
        if created.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(StreamsError::IllegalState(format!(
                "internal topics {} have no leader {} s after creation",
                created.join(", "),
                INTERNAL_TOPICS_READY_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long `start` waits for the internal topics it created to have
/// leaders (Kafka Streams retries up to its `max.poll.interval.ms`-based
/// deadline; a cluster that takes longer is not healthy enough to start).
const INTERNAL_TOPICS_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the records of one input partition go.
struct Route {
    topic: Arc<str>,
    partition: i32,
    tp: TopicPartition,
    task: TaskId,
    /// The source node, within the task.
    node: usize,
}

/// A task at run time, with its source nodes.
struct RunningTask {
    /// Its stores in the instance's registry, while it lives (first, so
    /// that they leave the registry before the task's state is dropped).
    _registration: Registration,
    state: TaskState,
    /// Source node (within the task) of each source topic.
    sources: HashMap<String, usize>,
}

struct StreamThread {
    index: usize,
    topology: Arc<Topology>,
    /// The source node of each source topic, by its name on the cluster.
    sources: Arc<HashMap<String, usize>>,
    config: StreamsConfig,
    consumer: Consumer,
    producer: Producer,
    /// Reads changelogs back into the stores of new tasks (no group).
    restore: Consumer,
    restore_listener: Option<RestoreListener>,
    admin: Admin,
    /// Whether the instance is stopping, looked at during restoration.
    stopping: watch::Receiver<bool>,
    tasks: BTreeMap<TaskId, RunningTask>,
    /// Where the tasks' stores are registered for interactive queries.
    stores: Arc<StoreRegistry>,
    /// The task and source node of the partition of the last record
    /// processed (cleared whenever the tasks change).
    route: Option<Route>,
    /// The task of each assigned partition.
    partitions: HashMap<TopicPartition, TaskId>,
    /// The next offset of each partition processed since the last commit.
    uncommitted: BTreeMap<TopicPartition, i64>,
    /// Records sent since the last commit.
    sends: Vec<DeliveryFuture>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl StreamThread {
    async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<(), StreamsError> {
        let result = self.work(&mut stop).await;
        // Whatever happened, what was processed and acknowledged counts.
        let committed = if result.is_ok() {
            self.commit().await
        } else {
            Ok(())
        };
        for task in self.tasks.values_mut() {
            task.state.close();
        }
        // Their stores leave the registry with them.
        self.tasks.clear();
        let _ = self.restore.close().await;
        let closed = self.consumer.close().await;
        let flushed = self.producer.close().await;
        result?;
        committed?;
        closed?;
        flushed?;
        Ok(())
    }

    async fn work(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), StreamsError> {
        let mut last_commit = Instant::now();
        while !*stop.borrow() {
            if self.consumer.rebalance_pending()
                && (!self.uncommitted.is_empty() || !self.sends.is_empty())
            {
                // The partitions may move in this poll: commit what was
                // processed first, so their next owner does not redo it.
                self.commit().await?;
                last_commit = Instant::now();
            }
            let records = tokio::select! {
                records = self.consumer.poll(self.config.poll) => records?,
                _ = stop.changed() => break,
            };
            self.reconcile().await?;
            for record in records {
                self.process(record).await?;
            }
            let now = now_ms();
            for task in self.tasks.values_mut() {
                task.state.wall_clock_ms = now;
                task.state
                    .may_punctuate(PunctuationType::WallClockTime, now)?;
            }
            self.send_produced().await?;
            if self.sends.len() >= MAX_UNCOMMITTED_SENDS {
                self.drop_acknowledged_sends()?;
            }
            if last_commit.elapsed() >= self.config.commit_interval
                || self.sends.len() >= MAX_UNCOMMITTED_SENDS
            {
                self.commit().await?;
                last_commit = Instant::now();
            }
        }
        Ok(())
    }

    /// Makes the tasks of newly assigned partitions and closes those whose
    /// partitions went (their uncommitted progress is dropped: the next
    /// owner processes those records again).
    async fn reconcile(&mut self) -> Result<(), StreamsError> {
        // While the group rebalances the assignment is empty or stale: the
        // tasks (and their restored stores) wait for the new one, as Kafka
        // suspends them rather than closing.
        if self.consumer.rebalance_in_progress() {
            return Ok(());
        }
        let assigned: BTreeSet<TopicPartition> = self.consumer.assignment().into_iter().collect();
        let known: BTreeSet<TopicPartition> = self.partitions.keys().cloned().collect();
        if assigned == known {
            return Ok(());
        }
        self.route = None;
        let subtopologies = self.topology.subtopologies();
        let mut wanted: BTreeMap<TaskId, Vec<TopicPartition>> = BTreeMap::new();
        for tp in &assigned {
            let Some(&node) = self.sources.get(&tp.topic) else {
                continue;
            };
            let Some(subtopology) = subtopologies.iter().position(|m| m.contains(&node)) else {
                continue;
            };
            let task = TaskId {
                subtopology: u32::try_from(subtopology).unwrap_or(u32::MAX),
                partition: tp.partition,
            };
            wanted.entry(task).or_default().push(tp.clone());
        }
        let gone: Vec<TaskId> = self
            .tasks
            .keys()
            .filter(|id| !wanted.contains_key(id))
            .copied()
            .collect();
        if !gone.is_empty() {
            // What the leaving tasks wrote (output and changelog) is
            // acknowledged before their next owner restores from it.
            self.commit().await?;
        }
        for id in gone {
            if let Some(mut task) = self.tasks.remove(&id) {
                tracing::info!(thread = self.index, task = %id, "task revoked");
                task.state.close();
            }
        }
        self.uncommitted.retain(|tp, _| assigned.contains(tp));
        self.partitions.clear();
        let now = now_ms();
        // Queries wait while this thread restores new tasks.
        let _restoring = wanted
            .keys()
            .any(|id| !self.tasks.contains_key(id))
            .then(|| self.stores.restoring());
        let mut new_tasks = Vec::new();
        for (id, tps) in wanted {
            for tp in tps {
                self.partitions.insert(tp, id);
            }
            if self.tasks.contains_key(&id) {
                continue;
            }
            let members = &subtopologies[id.subtopology as usize];
            new_tasks.push(build_task(
                &self.topology,
                members,
                id,
                now,
                &self.config.application_id,
            ));
        }
        let mut states: Vec<&mut TaskState> = new_tasks.iter_mut().map(|(s, _)| s).collect();
        if !self.restore_stores(&mut states).await? {
            // Stopping: the loop ends before the next poll.
            return Ok(());
        }
        for (mut state, sources) in new_tasks {
            let id = state.task_id;
            state.init()?;
            let registration = self.stores.register(
                id,
                state
                    .stores
                    .iter()
                    .map(|(name, store)| (name.clone(), store.queryable()))
                    .collect(),
            );
            tracing::info!(thread = self.index, task = %id, "task assigned");
            self.tasks.insert(
                id,
                RunningTask {
                    state,
                    sources: sources.into_iter().collect(),
                    _registration: registration,
                },
            );
        }
        Ok(())
    }

    /// The start (`Earliest`) or end (`Latest`) offsets of changelog
    /// partitions now.
    async fn listed_offsets(
        &mut self,
        tps: impl Iterator<Item = TopicPartition>,
        spec: OffsetSpec,
    ) -> Result<BTreeMap<TopicPartition, i64>, StreamsError> {
        let specs: BTreeMap<TopicPartition, OffsetSpec> = tps.map(|tp| (tp, spec)).collect();
        let mut listed = self
            .admin
            .list_offsets(&specs, IsolationLevel::ReadUncommitted)
            .await;
        let mut ends = BTreeMap::new();
        for tp in specs.into_keys() {
            match listed.remove(&tp) {
                Some(Ok(offset)) => {
                    ends.insert(tp, offset.offset);
                }
                Some(Err(e)) => return Err(e.into()),
                // Starting empty would let the next writes replace what
                // the changelog holds: never guess.
                None => {
                    return Err(StreamsError::IllegalState(format!(
                        "no end offset for changelog partition {}-{}",
                        tp.topic, tp.partition
                    )));
                }
            }
        }
        Ok(ends)
    }

    /// Fills the new tasks' logging stores from their changelog partitions,
    /// from the beginning to the end offset, all partitions at once (Kafka
    /// restores before processing; in-memory stores have no checkpoint, so
    /// always from the beginning). When a poll brings nothing, the ends of
    /// the partitions not yet done are listed again: a changelog cut short
    /// (an unclean election, a re-created topic) ends its restoration
    /// instead of waiting forever. Returns `false` when the instance began
    /// stopping meanwhile (the tasks are not made).
    async fn restore_stores(&mut self, tasks: &mut [&mut TaskState]) -> Result<bool, StreamsError> {
        // Each changelog partition: its task (index) and store.
        let mut owners: BTreeMap<TopicPartition, (usize, String)> = BTreeMap::new();
        for (index, task) in tasks.iter().enumerate() {
            for (name, store) in &task.stores {
                if store.logging {
                    let topic = crate::state::changelog_topic(&self.config.application_id, name);
                    owners.insert(
                        TopicPartition::new(&topic, task.task_id.partition),
                        (index, name.clone()),
                    );
                }
            }
        }
        if owners.is_empty() {
            return Ok(true);
        }
        let started = Instant::now();
        let mut ends = self
            .listed_offsets(owners.keys().cloned(), OffsetSpec::Latest)
            .await?;
        let mut restored: BTreeMap<TopicPartition, (u64, usize)> =
            owners.keys().map(|tp| (tp.clone(), (0, 0))).collect();
        let mut pending: Vec<TopicPartition> = ends
            .iter()
            .filter(|(_, end)| **end > 0)
            .map(|(tp, _)| tp.clone())
            .collect();
        if let Some(listener) = self.restore_listener.clone() {
            // Kafka tells about every changelog, empty ones included, from
            // the log start offset.
            let starts = self
                .listed_offsets(owners.keys().cloned(), OffsetSpec::Earliest)
                .await?;
            for (tp, (_, name)) in &owners {
                let end = ends.get(tp).copied().unwrap_or(0);
                listener.on_restore_start(
                    tp,
                    name,
                    starts.get(tp).copied().unwrap_or(0).min(end),
                    end,
                );
                if !pending.contains(tp) {
                    listener.on_restore_end(tp, name, 0);
                }
            }
        }
        if !pending.is_empty() {
            self.restore.assign(&pending);
            for tp in &pending {
                self.restore.seek(tp, Offset::Beginning)?;
            }
        }
        while !pending.is_empty() {
            if *self.stopping.borrow() {
                self.restore.assign(&[]);
                return Ok(false);
            }
            let records = self.restore.poll(self.config.poll).await?;
            // Records come in runs of one partition, in offset order.
            for run in records.chunk_by(|a, b| a.topic == b.topic && a.partition == b.partition) {
                let tp = TopicPartition::new(&run[0].topic, run[0].partition);
                let Some((index, name)) = owners.get(&tp) else {
                    continue;
                };
                let Some(store) = tasks[*index].stores.get_mut(name) else {
                    continue;
                };
                // Up to the end offset listed, as Kafka's changelog reader
                // restores; what comes after is the task's own to write.
                let end = ends.get(&tp).copied().unwrap_or(0);
                let run = &run[..run.partition_point(|r| r.offset < end)];
                let Some(last) = run.last() else {
                    continue;
                };
                let skipped = store
                    .store
                    .restore(run.iter().map(|r| (r.key.as_deref(), r.value.as_deref())));
                let applied = (run.len() - skipped) as u64;
                if let Some(counts) = restored.get_mut(&tp) {
                    counts.0 += applied;
                    counts.1 += skipped;
                }
                if let Some(listener) = &self.restore_listener {
                    listener.on_batch_restored(&tp, name, last.offset, applied);
                }
            }
            let before = pending.clone();
            pending.retain(|tp| {
                self.restore.position(tp).unwrap_or(0) < ends.get(tp).copied().unwrap_or(0)
            });
            if records.is_empty() && !pending.is_empty() {
                let relisted = self
                    .listed_offsets(pending.iter().cloned(), OffsetSpec::Latest)
                    .await?;
                ends.extend(relisted);
                pending.retain(|tp| {
                    self.restore.position(tp).unwrap_or(0) < ends.get(tp).copied().unwrap_or(0)
                });
            }
            if pending.len() != before.len() {
                self.restore.assign(&pending);
                if let Some(listener) = &self.restore_listener {
                    for tp in before.iter().filter(|tp| !pending.contains(tp)) {
                        if let Some((_, name)) = owners.get(tp) {
                            listener.on_restore_end(tp, name, restored.get(tp).map_or(0, |r| r.0));
                        }
                    }
                }
            }
        }
        self.restore.assign(&[]);
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        for (tp, (index, name)) in &owners {
            let (records, skipped) = restored.get(tp).copied().unwrap_or((0, 0));
            let task = tasks[*index].task_id;
            if skipped > 0 {
                tracing::warn!(
                    %task,
                    store = %name,
                    skipped,
                    "changelog records without a key skipped during restoration"
                );
            }
            tracing::info!(
                thread = self.index,
                %task,
                store = %name,
                records,
                end_offset = ends.get(tp).copied().unwrap_or(0),
                elapsed_ms,
                "restored store from its changelog"
            );
        }
        Ok(true)
    }

    async fn process(&mut self, record: ConsumerRecord) -> Result<(), StreamsError> {
        // Records come in runs of one partition: look its task and source
        // up once per run.
        let cached = self.route.as_ref().is_some_and(|r| {
            r.partition == record.partition
                && (Arc::ptr_eq(&r.topic, &record.topic) || r.topic == record.topic)
        });
        if !cached {
            let tp = TopicPartition::new(&record.topic, record.partition);
            let Some(&task) = self.partitions.get(&tp) else {
                // Polled before a rebalance took the partition away.
                return Ok(());
            };
            let Some(&node) = self
                .tasks
                .get(&task)
                .and_then(|t| t.sources.get(&*record.topic))
            else {
                return Ok(());
            };
            self.route = Some(Route {
                topic: Arc::clone(&record.topic),
                partition: record.partition,
                tp,
                task,
                node,
            });
        }
        let Some(route) = &self.route else {
            return Ok(());
        };
        let (id, node) = (route.task, route.node);
        let Some(task) = self.tasks.get_mut(&id) else {
            return Ok(());
        };
        let metadata = RecordMetadata {
            topic: record.topic.to_string(),
            partition: record.partition,
            offset: record.offset,
            timestamp_ms: record.timestamp,
        };
        let result = if record.timestamp < 0 {
            Err(StreamsError::InvalidTimestamp {
                topic: record.topic.to_string(),
                timestamp_ms: record.timestamp,
            })
        } else {
            task.state.process_input(
                node,
                metadata,
                record.key.as_deref(),
                record.value.as_deref(),
                record.headers,
            )
        };
        match result {
            Ok(()) => {}
            Err(e @ StreamsError::Deserialization { .. })
                if self.config.deserialization_handler
                    == DeserializationHandler::LogAndContinue =>
            {
                tracing::warn!(
                    topic = %record.topic,
                    partition = record.partition,
                    offset = record.offset,
                    error = %e,
                    "skipped a record that does not deserialize"
                );
            }
            Err(e) => return Err(e),
        }
        if let Some(stream_time) = task.state.stream_time_ms {
            task.state
                .may_punctuate(PunctuationType::StreamTime, stream_time)?;
        }
        let next = record.offset.saturating_add(1);
        if let Some(route) = &self.route {
            match self.uncommitted.get_mut(&route.tp) {
                Some(offset) => *offset = next,
                None => {
                    self.uncommitted.insert(route.tp.clone(), next);
                }
            }
        }
        self.send_produced_by(id, Some(record.timestamp)).await
    }

    /// Sends what every task's sinks wrote (after punctuations, which may
    /// run in any task).
    async fn send_produced(&mut self) -> Result<(), StreamsError> {
        let ids: Vec<TaskId> = self.tasks.keys().copied().collect();
        for id in ids {
            self.send_produced_by(id, None).await?;
        }
        Ok(())
    }

    /// Sends what task `id`'s sinks and stores wrote: after a record, only
    /// its task can have written anything. Store writes carry the input
    /// record's `timestamp` (Kafka's changelogging stores use the record
    /// context's), or the send time after a punctuation.
    async fn send_produced_by(
        &mut self,
        id: TaskId,
        timestamp: Option<i64>,
    ) -> Result<(), StreamsError> {
        let Some(task) = self.tasks.get_mut(&id) else {
            return Ok(());
        };
        let partition = task.state.task_id.partition;
        let changelog = task.state.take_changelog();
        for record in std::mem::take(&mut task.state.produced) {
            let mut out = ProducerRecord::new(record.topic).timestamp(record.timestamp_ms);
            out.key = record.key;
            out.value = record.value;
            out.headers = record.headers;
            self.sends.push(self.producer.send(out).await?);
        }
        // Store writes go to the task's partition of each changelog, in the
        // order they were made; the commit waits for them like any send.
        for (topic, changes) in changelog {
            for (key, value) in changes {
                let mut out = ProducerRecord::new(topic.clone());
                out.partition = Some(partition);
                out.timestamp = timestamp;
                out.key = Some(key);
                out.value = value;
                self.sends.push(self.producer.send(out).await?);
            }
        }
        Ok(())
    }

    /// Forgets the sends already acknowledged, without waiting for the
    /// others; a failed one stops the thread, as at a commit. Only when
    /// too many are still in flight does the thread commit early (and so
    /// wait for all of them).
    fn drop_acknowledged_sends(&mut self) -> Result<(), StreamsError> {
        let mut failed = None;
        self.sends.retain_mut(|send| match send.try_result() {
            None => true,
            Some(Ok(_)) => false,
            Some(Err(e)) => {
                failed.get_or_insert(e);
                false
            }
        });
        match failed {
            Some(e) => Err(StreamsError::Production(e)),
            None => Ok(()),
        }
    }

    /// Flushes the producer, checks every send was acknowledged, then
    /// commits the positions processed. A rebalance in between only costs
    /// duplicates (the commit is refused, the next owner starts earlier).
    async fn commit(&mut self) -> Result<(), StreamsError> {
        self.producer.flush().await?;
        for send in self.sends.drain(..) {
            send.await.map_err(StreamsError::Production)?;
        }
        if self.uncommitted.is_empty() {
            return Ok(());
        }
        let offsets = std::mem::take(&mut self.uncommitted);
        match self.consumer.commit_offsets(&offsets).await {
            Ok(()) => Ok(()),
            // The group moved on (a rebalance) or the coordinator is away:
            // try again at the next commit, for the partitions still owned.
            Err(e)
                if e.is_retriable()
                    || matches!(
                        e.code(),
                        Some(
                            ErrorCode::RebalanceInProgress
                                | ErrorCode::IllegalGeneration
                                | ErrorCode::UnknownMemberId
                        )
                    ) =>
            {
                tracing::warn!(thread = self.index, error = %e, "commit failed; trying again at the next one");
                for (tp, offset) in offsets {
                    let next = self.uncommitted.entry(tp).or_insert(offset);
                    *next = (*next).max(offset);
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_follow_kafka_streams_names_and_prefixes() {
        let config = StreamsConfig::from_properties([
            ("application.id", "app"),
            ("bootstrap.servers", "b:9092"),
            ("num.stream.threads", "3"),
            ("commit.interval.ms", "250"),
            ("consumer.max.poll.records", "50"),
            ("producer.acks", "1"),
            ("request.timeout.ms", "5000"),
            (
                "default.deserialization.exception.handler",
                "org.apache.kafka.streams.errors.LogAndContinueExceptionHandler",
            ),
        ])
        .unwrap();
        assert_eq!(config.num_stream_threads, 3);
        assert_eq!(config.commit_interval, Duration::from_millis(250));
        assert_eq!(
            config.deserialization_handler,
            DeserializationHandler::LogAndContinue
        );
        let consumer = config.consumer_config(0);
        assert_eq!(consumer.get("max.poll.records"), Some("50"));
        assert_eq!(consumer.get("group.id"), Some("app"));
        assert_eq!(
            consumer.get("client.id"),
            Some("app-StreamThread-1-consumer")
        );
        assert_eq!(consumer.get("partition.assignment.strategy"), Some("range"));
        assert_eq!(consumer.get("acks"), None);
        let producer = config.producer_config(1);
        assert_eq!(producer.get("acks"), Some("1"));
        assert_eq!(producer.get("request.timeout.ms"), Some("5000"));
        assert_eq!(producer.get("max.poll.records"), None);
    }

    #[test]
    fn what_the_runtime_owns_or_lacks_is_refused() {
        let refused = |name: &str, value: &str| {
            StreamsConfig::from_properties([
                ("application.id", "app"),
                ("bootstrap.servers", "b:9092"),
                (name, value),
            ])
            .is_err()
        };
        assert!(refused("group.id", "other"));
        assert!(refused("consumer.group.instance.id", "me"));
        assert!(refused("processing.guarantee", "exactly_once_v2"));
        assert!(refused("num.stream.threads", "0"));
        assert!(refused("deserialization.exception.handler", "Ignore"));
        assert!(StreamsConfig::from_properties([("bootstrap.servers", "b:9092")]).is_err());
    }
}
