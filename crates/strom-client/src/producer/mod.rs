//! The producer: records in, acknowledged offsets out.
//!
//! [`Producer::send`] picks the record's partition (the explicit one, or the
//! [`DefaultPartitioner`]), reserves its bytes from `buffer.memory` (waiting
//! up to `max.block.ms` while the buffer is full), and appends it to the
//! partition's open batch. A background sender task drains batches that are
//! full (`batch.size`), have waited `linger.ms`, or are being flushed: one
//! Produce request per leader with at most one batch per partition, at most
//! `max.in.flight.requests.per.connection` requests in flight per broker.
//!
//! # Idempotence
//!
//! On by default (`enable.idempotence=true`, `acks=all`), as in the Java
//! client since 3.0. The producer gets an id from InitProducerId and numbers
//! each partition's records; a batch gets its sequence when first sent and
//! keeps it through retries, so the broker writes each batch once and in
//! order however many requests are in flight. A batch that fails with a
//! retriable error goes back into its partition's queue in sequence order,
//! and a retried batch is sent only once nothing else of its partition is in
//! flight, so a retry never overtakes its predecessors. OUT_OF_ORDER_SEQUENCE
//! for a batch whose predecessor also failed is retried; for the first
//! unacknowledged batch (the broker lost its state) and UNKNOWN_PRODUCER_ID,
//! the batch fails and the producer takes a new id once nothing is in
//! flight, numbering every partition from 0 again (the Java client's epoch
//! bump of KIP-360).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use strom_protocol::builder::RecordBatchBuilder;
use strom_protocol::compression::Compression;
use strom_protocol::messages::StrBytes;
use strom_protocol::messages::kafka::{
    InitProducerIdRequest, ProduceRequest, ProduceResponse, ProducerId, TopicName, TransactionalId,
    produce_request::{PartitionProduceData, TopicProduceData},
};
use strom_protocol::record::encoded_record_len;
use strom_protocol::record_batch::{BatchHeader, RECORD_BATCH_OVERHEAD, update_crc};
use tokio::sync::{Notify, Semaphore, oneshot};

use crate::cluster::{BrokerInfo, Cluster, Route};
use crate::config::{COMMON, ClientConfig, NetworkConfig};
use crate::error::{Error, ErrorCode, Result};
use crate::partitioner::DefaultPartitioner;

mod txn;

/// Newest Produce version sent: v12 names topics (v13 switches to topic ids).
const PRODUCE_VERSION: i16 = 12;

/// Newest InitProducerId version sent.
pub(crate) const INIT_PRODUCER_ID_VERSION: i16 = 5;

/// The most `max.in.flight.requests.per.connection` may be with idempotence:
/// the broker remembers the last five batches per producer and partition
/// for duplicate detection (Kafka's rule).
const MAX_IN_FLIGHT_IDEMPOTENT: usize = 5;

/// The properties the producer reads, besides [`COMMON`].
const PRODUCER: &[&str] = &[
    "acks",
    "batch.size",
    "buffer.memory",
    "compression.type",
    "delivery.timeout.ms",
    "enable.idempotence",
    "linger.ms",
    "max.block.ms",
    "max.in.flight.requests.per.connection",
    "max.request.size",
    "partitioner.ignore.keys",
    "retries",
    "allow.auto.create.topics",
    "transactional.id",
    "transaction.timeout.ms",
];

/// The producer's settings, Kafka's defaults where unset.
#[derive(Debug, Clone)]
struct Settings {
    acks: i16,
    batch_size: usize,
    buffer_memory: usize,
    compression: Compression,
    delivery_timeout: Duration,
    idempotent: bool,
    linger: Duration,
    max_block: Duration,
    max_in_flight: usize,
    max_request_size: usize,
    ignore_keys: bool,
    retries: u32,
    auto_create: bool,
    transactional_id: Option<String>,
    transaction_timeout: Duration,
}

impl Settings {
    fn from_config(config: &ClientConfig) -> Result<Self> {
        config.check_known(&[COMMON, PRODUCER])?;
        let acks = match config.get("acks").map(str::trim) {
            None | Some("all" | "-1") => -1,
            Some("0") => 0,
            Some("1") => 1,
            Some(other) => {
                return Err(Error::config(
                    "acks",
                    format!("{other:?} is not all, -1, 0 or 1"),
                ));
            }
        };
        let compression = match config.get("compression.type") {
            None => Compression::None,
            Some(name) => Compression::from_name(name.trim()).ok_or_else(|| {
                Error::config("compression.type", format!("unknown codec {name:?}"))
            })?,
        };
        let max_in_flight: usize = config.number("max.in.flight.requests.per.connection", 5)?;
        let explicit_idempotence = config.get("enable.idempotence").is_some();
        let mut idempotent = config.boolean("enable.idempotence", true)?;
        // As the Java client: idempotence is a default that yields to
        // settings it cannot work with, but an explicit request refuses them.
        let transactional_id = config
            .get("transactional.id")
            .map(str::to_owned)
            .filter(|t| !t.is_empty());
        if transactional_id.is_some() && explicit_idempotence && !idempotent {
            return Err(Error::config(
                "enable.idempotence",
                "a transactional producer is idempotent",
            ));
        }
        if acks != -1 || max_in_flight > MAX_IN_FLIGHT_IDEMPOTENT {
            if transactional_id.is_some() {
                return Err(Error::config(
                    "transactional.id",
                    format!(
                        "needs acks=all and max.in.flight.requests.per.connection <= {MAX_IN_FLIGHT_IDEMPOTENT}"
                    ),
                ));
            }
            if explicit_idempotence && idempotent {
                return Err(Error::config(
                    "enable.idempotence",
                    format!(
                        "needs acks=all and max.in.flight.requests.per.connection <= {MAX_IN_FLIGHT_IDEMPOTENT}"
                    ),
                ));
            }
            idempotent = false;
        }
        let settings = Self {
            acks,
            batch_size: config.number("batch.size", crate::partitioner::DEFAULT_BATCH_SIZE)?,
            buffer_memory: config.number("buffer.memory", 32 * 1024 * 1024)?,
            compression,
            delivery_timeout: config.millis("delivery.timeout.ms", 120_000)?,
            idempotent,
            // Kafka 4.0's default (KIP-1030).
            linger: config.millis("linger.ms", 5)?,
            max_block: config.millis("max.block.ms", 60_000)?,
            max_in_flight: max_in_flight.max(1),
            max_request_size: config.number("max.request.size", 1024 * 1024)?,
            ignore_keys: config.boolean("partitioner.ignore.keys", false)?,
            retries: config.number("retries", u32::try_from(i32::MAX).unwrap_or(u32::MAX))?,
            auto_create: config.boolean("allow.auto.create.topics", true)?,
            transactional_id,
            transaction_timeout: config.millis("transaction.timeout.ms", 60_000)?,
        };
        if settings.buffer_memory == 0 || settings.buffer_memory > Semaphore::MAX_PERMITS {
            return Err(Error::config("buffer.memory", "must be positive"));
        }
        Ok(settings)
    }
}

/// A record to send.
#[derive(Debug, Clone, Default)]
pub struct ProducerRecord {
    pub topic: String,
    /// `None` lets the partitioner choose.
    pub partition: Option<i32>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// Header keys may repeat; order is kept.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Create time in ms since the epoch; `None` is now.
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    pub fn new(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            ..Self::default()
        }
    }

    #[must_use]
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    #[must_use]
    pub fn value(mut self, value: impl Into<Bytes>) -> Self {
        self.value = Some(value.into());
        self
    }

    #[must_use]
    pub fn header(mut self, key: impl Into<String>, value: Option<Bytes>) -> Self {
        self.headers.push((key.into(), value));
        self
    }

    #[must_use]
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    #[must_use]
    pub fn timestamp(mut self, timestamp_ms: i64) -> Self {
        self.timestamp = Some(timestamp_ms);
        self
    }
}

/// Where an acknowledged record was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    pub topic: String,
    pub partition: i32,
    /// -1 with `acks=0`, where the broker does not answer.
    pub offset: i64,
    /// The record's timestamp: its create time, or the broker's append time
    /// for a LogAppendTime topic.
    pub timestamp: i64,
}

/// Resolves when the record is acknowledged (or has failed for good).
#[derive(Debug)]
pub struct DeliveryFuture {
    rx: oneshot::Receiver<Result<RecordMetadata>>,
}

impl DeliveryFuture {
    /// The outcome if it is known already, without waiting (`None` while
    /// the record is in flight).
    pub fn try_result(&mut self) -> Option<Result<RecordMetadata>> {
        match self.rx.try_recv() {
            Ok(result) => Some(result),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(Error::Closed)),
        }
    }
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::Closed)))
    }
}

type TopicPartition = (Arc<str>, i32);

/// A record waiting for its batch's answer.
#[derive(Debug)]
struct Waiter {
    tx: oneshot::Sender<Result<RecordMetadata>>,
    timestamp: i64,
}

/// Records on their way to one partition.
#[derive(Debug)]
struct Batch {
    id: u64,
    topic: Arc<str>,
    partition: i32,
    /// Open for appends until first drained; `None` once built.
    builder: Option<RecordBatchBuilder>,
    built: Option<Bytes>,
    waiters: Vec<Waiter>,
    /// Bytes taken from `buffer.memory`, given back when the batch is done.
    reserved: usize,
    created: Instant,
    attempts: u32,
    /// The first record's sequence number, fixed at first send.
    sequence: Option<i32>,
}

impl Batch {
    fn count(&self) -> i32 {
        i32::try_from(self.waiters.len()).unwrap_or(i32::MAX)
    }

    fn size(&self) -> usize {
        match (&self.builder, &self.built) {
            (Some(b), _) => b.estimated_size(),
            (None, Some(b)) => b.len(),
            (None, None) => 0,
        }
    }
}

#[derive(Debug, Default)]
struct PartitionQueue {
    /// Batches not sent, or sent and to be retried, in sequence order.
    queue: VecDeque<Batch>,
    in_flight: usize,
    /// The sequence of the next new batch.
    next_sequence: i32,
    /// The sequence the broker expects next: after the last acknowledged
    /// batch.
    acked_sequence: i32,
    /// No send before this (the retry backoff).
    not_before: Option<Instant>,
}

#[derive(Debug)]
struct State {
    partitions: HashMap<TopicPartition, PartitionQueue>,
    /// Per topic: its name shared by its partitions' keys, and the
    /// partitioner of its keyless records.
    topics: HashMap<String, (Arc<str>, DefaultPartitioner)>,
    producer_id: i64,
    producer_epoch: i16,
    /// Set when the producer must take a new id before sending more.
    reset_producer_id: bool,
    in_flight: HashMap<i32, usize>,
    next_batch_id: u64,
    incomplete: BTreeSet<u64>,
    /// Batches up to this id are sent without waiting for `linger.ms`.
    flush_upto: Option<u64>,
    closing: bool,
    /// An error that ends the producer (fenced, unsupported, out of ids).
    fatal: Option<Error>,
    /// A transactional producer's transaction.
    txn: Option<txn::TxnState>,
}

#[derive(Debug)]
struct Shared {
    cluster: Arc<Cluster>,
    settings: Settings,
    state: Mutex<State>,
    /// Wakes the sender: a batch filled or opened, a request finished.
    wake: Notify,
    /// Signalled whenever a batch completes (flush waits on it).
    progress: Notify,
    memory: Semaphore,
}

/// An asynchronous Kafka producer. Cheap to clone; clones share batches and
/// connections. Dropping the last clone sends what is buffered, as
/// [`Producer::close`] does, but without waiting.
#[derive(Debug, Clone)]
pub struct Producer {
    handle: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.state.lock().closing = true;
        self.shared.wake.notify_one();
    }
}

impl Producer {
    /// A producer with `config`'s properties. Connects lazily; must be called
    /// inside a tokio runtime (it spawns the sender task).
    pub fn new(config: &ClientConfig) -> Result<Self> {
        let settings = Settings::from_config(config)?;
        let cluster = Arc::new(Cluster::new(NetworkConfig::from_config(config)?));
        let settings_txn = settings.transactional_id.is_some();
        let shared = Arc::new(Shared {
            cluster,
            memory: Semaphore::new(settings.buffer_memory),
            settings,
            state: Mutex::new(State {
                partitions: HashMap::new(),
                topics: HashMap::new(),
                producer_id: -1,
                producer_epoch: -1,
                reset_producer_id: false,
                in_flight: HashMap::new(),
                next_batch_id: 0,
                incomplete: BTreeSet::new(),
                flush_upto: None,
                closing: false,
                fatal: None,
                txn: settings_txn.then(txn::TxnState::default),
            }),
            wake: Notify::new(),
            progress: Notify::new(),
        });
        tokio::spawn(run_sender(Arc::clone(&shared)));
        Ok(Self {
            handle: Arc::new(Handle { shared }),
        })
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// Queues `record` and returns a future of its acknowledgement. Waits
    /// while the topic's metadata is fetched and while `buffer.memory` is
    /// full, each at most `max.block.ms`.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture> {
        let shared = self.shared();
        let settings = &shared.settings;
        if let Some(error) = shared.state.lock().fatal.clone() {
            return Err(error);
        }
        let deadline = Instant::now() + settings.max_block;
        let topic = shared
            .cluster
            .topic(&record.topic, settings.auto_create, deadline)
            .await?;
        let partition_count = u32::try_from(topic.partitions.len()).unwrap_or(0);
        if partition_count == 0 {
            return Err(Error::kafka(
                ErrorCode::LeaderNotAvailable.code(),
                Some("the topic has no partitions"),
            ));
        }
        let raw_len = record.key.as_ref().map_or(0, Bytes::len)
            + record.value.as_ref().map_or(0, Bytes::len)
            + record
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len))
                .sum::<usize>();
        if raw_len > settings.max_request_size || raw_len > settings.buffer_memory {
            return Err(record_too_large(raw_len, settings));
        }
        let timestamp = record.timestamp.unwrap_or_else(now_ms);
        let headers: Vec<(&str, Option<&[u8]>)> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        let size = encoded_record_len(
            0,
            0,
            record.key.as_deref(),
            record.value.as_deref(),
            &headers,
        ) + RECORD_BATCH_OVERHEAD;
        if size > settings.max_request_size || size > settings.buffer_memory {
            return Err(record_too_large(size, settings));
        }
        let permits = u32::try_from(size).map_err(|_| record_too_large(size, settings))?;
        match tokio::time::timeout_at(deadline.into(), shared.memory.acquire_many(permits)).await {
            Ok(Ok(permit)) => permit.forget(),
            Ok(Err(_)) => return Err(Error::Closed),
            Err(_) => {
                return Err(Error::Timeout(format!(
                    "no room in buffer.memory for {size} bytes within max.block.ms"
                )));
            }
        }
        let (tx, rx) = oneshot::channel();
        let mut state = shared.state.lock();
        if let Some(error) = state.fatal.clone() {
            shared.memory.add_permits(size);
            return Err(error);
        }
        if let Some(txn) = &state.txn
            && !txn.in_transaction
        {
            shared.memory.add_permits(size);
            return Err(Error::State(
                "no transaction in progress: call begin_transaction first".into(),
            ));
        }
        let partition = match record.partition {
            Some(p) if p >= 0 && u32::try_from(p).is_ok_and(|p| p < partition_count) => p,
            Some(p) => {
                shared.memory.add_permits(size);
                return Err(Error::kafka(
                    ErrorCode::UnknownTopicOrPartition.code(),
                    Some(&format!("topic {} has no partition {p}", record.topic)),
                ));
            }
            None => {
                let key = if settings.ignore_keys {
                    None
                } else {
                    record.key.as_deref()
                };
                let partitioner = &mut topic_entry(&mut state.topics, &record.topic, settings).1;
                i32::try_from(partitioner.partition(key, size, partition_count)).unwrap_or(0)
            }
        };
        // The topic's shared name: no allocation per record.
        let topic_name = Arc::clone(&topic_entry(&mut state.topics, &record.topic, settings).0);
        let State {
            partitions,
            next_batch_id,
            incomplete,
            ..
        } = &mut *state;
        let tp: TopicPartition = (topic_name, partition);
        let queue = partitions.entry(tp.clone()).or_default();
        let fits = queue.queue.back().is_some_and(|b| {
            b.builder.as_ref().is_some_and(|builder| {
                builder.estimated_size() + size - RECORD_BATCH_OVERHEAD <= settings.batch_size
            })
        });
        let mut wake = false;
        if !fits {
            let id = *next_batch_id;
            *next_batch_id += 1;
            incomplete.insert(id);
            queue.queue.push_back(Batch {
                id,
                topic: tp.0,
                partition,
                builder: Some(RecordBatchBuilder::new(settings.compression)),
                built: None,
                waiters: Vec::new(),
                reserved: 0,
                created: Instant::now(),
                attempts: 0,
                sequence: None,
            });
            wake = true;
        }
        let batch = queue.queue.back_mut().expect("a batch was just ensured");
        let builder = batch
            .builder
            .as_mut()
            .expect("the open batch has a builder");
        builder.push(
            timestamp,
            record.key.as_deref(),
            record.value.as_deref(),
            &headers,
        );
        batch.reserved += size;
        batch.waiters.push(Waiter { tx, timestamp });
        wake |= builder.estimated_size() >= settings.batch_size;
        drop(state);
        if wake {
            shared.wake.notify_one();
        }
        Ok(DeliveryFuture { rx })
    }

    /// Sends every record queued so far without waiting for `linger.ms`, and
    /// waits until each is acknowledged or failed.
    pub async fn flush(&self) -> Result<()> {
        let shared = self.shared();
        let upto = {
            let mut state = shared.state.lock();
            let Some(last) = state.next_batch_id.checked_sub(1) else {
                return Ok(());
            };
            state.flush_upto = Some(state.flush_upto.map_or(last, |u| u.max(last)));
            last
        };
        shared.wake.notify_one();
        loop {
            let progress = shared.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            {
                let state = shared.state.lock();
                if state.incomplete.first().is_none_or(|&first| first > upto) {
                    return Ok(());
                }
            }
            progress.await;
        }
    }

    /// Flushes, then stops the sender.
    pub async fn close(self) -> Result<()> {
        self.flush().await
    }

    /// The partitions of `topic`, from fresh metadata.
    pub async fn partitions_for(&self, topic: &str) -> Result<Vec<crate::PartitionInfo>> {
        let cluster = &self.shared().cluster;
        let deadline = Instant::now() + self.shared().settings.max_block;
        Ok(cluster
            .topic(topic, false, deadline)
            .await?
            .partitions
            .clone())
    }
}

/// The topic's entry in `topics`, made on first use.
fn topic_entry<'a>(
    topics: &'a mut HashMap<String, (Arc<str>, DefaultPartitioner)>,
    topic: &str,
    settings: &Settings,
) -> &'a mut (Arc<str>, DefaultPartitioner) {
    if !topics.contains_key(topic) {
        let entry = (
            Arc::from(topic),
            DefaultPartitioner::new(settings.batch_size),
        );
        topics.insert(topic.to_owned(), entry);
    }
    topics.get_mut(topic).expect("the topic was just inserted")
}

fn record_too_large(size: usize, settings: &Settings) -> Error {
    Error::Kafka {
        code: ErrorCode::MessageTooLarge,
        message: Some(format!(
            "a record of {size} bytes exceeds max.request.size ({}) or buffer.memory ({})",
            settings.max_request_size, settings.buffer_memory
        )),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Batches drained for one broker.
#[derive(Debug)]
struct Drained {
    node: i32,
    batches: Vec<Batch>,
}

/// The sender task: drains ready batches into Produce requests until the
/// producer is closed and everything buffered is done.
async fn run_sender(shared: Arc<Shared>) {
    loop {
        if let Err(error) = shared.cluster.maybe_refresh().await {
            tracing::debug!(%error, "metadata refresh failed");
        }
        if needs_producer_id(&shared)
            && let Err(error) = init_producer_id(&shared).await
        {
            if error.is_retriable() {
                tracing::debug!(%error, "InitProducerId failed; retrying");
                tokio::time::sleep(shared.cluster.net().retry_backoff).await;
            } else {
                fail_everything(&shared, error);
            }
            continue;
        }
        if shared.settings.transactional_id.is_some() {
            txn::add_partitions(&shared).await;
        }
        let (drained, next_wake, done) = drain(&shared, Instant::now());
        // Written here, in drain order, so that a partition's batches reach
        // its leader in sequence order; only the answers are awaited apart.
        for request in drained {
            send_request(&shared, request).await;
        }
        if done {
            return;
        }
        let sleep = next_wake.map_or(Duration::from_secs(1), |at| {
            at.saturating_duration_since(Instant::now())
        });
        tokio::select! {
            () = shared.wake.notified() => {}
            () = tokio::time::sleep(sleep) => {}
        }
    }
}

fn needs_producer_id(shared: &Shared) -> bool {
    // A transactional producer takes its id in init_transactions.
    if !shared.settings.idempotent || shared.settings.transactional_id.is_some() {
        return false;
    }
    let state = shared.state.lock();
    state.fatal.is_none()
        && (state.producer_id < 0
            || (state.reset_producer_id && state.in_flight.values().all(|&n| n == 0)))
        && !state.partitions.is_empty()
}

async fn init_producer_id(shared: &Shared) -> Result<()> {
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(i32::MAX)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let response = shared
        .cluster
        .send_any(INIT_PRODUCER_ID_VERSION, &request)
        .await?;
    Error::check(response.error_code, None)?;
    let mut state = shared.state.lock();
    state.producer_id = response.producer_id.0;
    state.producer_epoch = response.producer_epoch;
    if state.reset_producer_id {
        state.reset_producer_id = false;
        let (id, epoch) = (state.producer_id, state.producer_epoch);
        for queue in state.partitions.values_mut() {
            // Number again from 0; batches already numbered keep their order.
            let mut next = 0i32;
            for batch in &mut queue.queue {
                if let (Some(_), Some(built)) = (batch.sequence, &batch.built) {
                    batch.built = Some(restamp(built, id, epoch, next));
                    batch.sequence = Some(next);
                    next = next.wrapping_add(batch.count()) & i32::MAX;
                }
            }
            queue.next_sequence = next;
            queue.acked_sequence = 0;
        }
    }
    tracing::debug!(
        producer_id = state.producer_id,
        epoch = state.producer_epoch,
        "producer id"
    );
    Ok(())
}

/// A built batch with another producer id, epoch and base sequence.
fn restamp(batch: &Bytes, producer_id: i64, epoch: i16, sequence: i32) -> Bytes {
    let mut buf = BytesMut::from(&batch[..]);
    if let Ok(mut header) = BatchHeader::parse(&buf) {
        header.producer_id = producer_id;
        header.producer_epoch = epoch;
        header.base_sequence = sequence;
        header.write_to(&mut buf);
        update_crc(&mut buf);
    }
    buf.freeze()
}

/// Takes the batches that may go now; returns them per broker, when to look
/// again, and whether the producer is closed with nothing left.
fn drain(shared: &Shared, now: Instant) -> (Vec<Drained>, Option<Instant>, bool) {
    let settings = &shared.settings;
    let mut state = shared.state.lock();
    let State {
        partitions,
        producer_id,
        producer_epoch,
        reset_producer_id,
        in_flight,
        flush_upto,
        closing,
        fatal,
        incomplete,
        txn,
        ..
    } = &mut *state;
    if *closing && incomplete.is_empty() {
        return (Vec::new(), None, true);
    }
    let mut requests: HashMap<i32, (Vec<Batch>, usize)> = HashMap::new();
    let mut next_wake: Option<Instant> = None;
    let mut wake_at = |at: Instant| next_wake = Some(next_wake.map_or(at, |w: Instant| w.min(at)));
    let mut expired = Vec::new();
    let waiting_for_id = settings.idempotent && (*producer_id < 0 || *reset_producer_id);
    for ((topic, partition), queue) in partitions.iter_mut() {
        // Batches that outlived delivery.timeout.ms waiting in the queue
        // fail: never sent, or waiting for a retry (their leader gone, say).
        while queue
            .queue
            .front()
            .is_some_and(|b| now.duration_since(b.created) >= settings.delivery_timeout)
        {
            let batch = queue.queue.pop_front().expect("the front batch exists");
            if batch.sequence.is_some() {
                // A numbered batch that may or may not have been written
                // leaves a gap in the numbering (the Java client's unresolved
                // sequence): start again under a new id, as for a failed
                // retry in `retry_or_fail`.
                match txn.as_mut() {
                    Some(txn) => {
                        txn.error.get_or_insert_with(|| expiry_error(settings));
                    }
                    None => *reset_producer_id = true,
                }
            }
            expired.push(batch);
        }
        let Some(front) = queue.queue.front() else {
            continue;
        };
        if fatal.is_some() || waiting_for_id {
            continue;
        }
        // A transactional batch waits until its partition joined the transaction.
        if let Some(txn) = txn.as_ref()
            && !txn.added.contains(&(Arc::clone(topic), *partition))
        {
            continue;
        }
        let linger_done = front.created + settings.linger;
        let ready = queue.queue.len() > 1
            || front.builder.is_none()
            || front.size() >= settings.batch_size
            || now >= linger_done
            || flush_upto.is_some_and(|u| front.id <= u)
            || *closing;
        if !ready {
            wake_at(linger_done);
            continue;
        }
        if let Some(at) = queue.not_before.filter(|&at| at > now) {
            wake_at(at);
            continue;
        }
        // A retry goes alone, after everything before it has answered.
        if front.sequence.is_some() && queue.in_flight > 0 {
            continue;
        }
        let leader = match shared.cluster.cached_topic(topic) {
            Some(Ok(info)) => info.partition(*partition).map_or(-1, |p| p.leader),
            _ => -1,
        };
        if leader < 0 {
            shared.cluster.mark_stale();
            wake_at(now + shared.cluster.net().retry_backoff);
            continue;
        }
        let node_in_flight = in_flight.get(&leader).copied().unwrap_or(0);
        let (batches, bytes) = requests.entry(leader).or_default();
        if batches.is_empty() && node_in_flight >= settings.max_in_flight {
            continue;
        }
        if !batches.is_empty() && *bytes + front.size() > settings.max_request_size {
            wake_at(now);
            continue;
        }
        let mut batch = queue.queue.pop_front().expect("the front batch exists");
        if let Some(builder) = batch.builder.take() {
            let builder = if settings.idempotent {
                let sequence = queue.next_sequence;
                queue.next_sequence = sequence.wrapping_add(batch.count()) & i32::MAX;
                batch.sequence = Some(sequence);
                builder
                    .producer(*producer_id, *producer_epoch, sequence)
                    .transactional(txn.is_some())
            } else {
                builder
            };
            match builder.build() {
                Ok(bytes) => batch.built = Some(bytes),
                Err(e) => {
                    complete(
                        shared,
                        batch,
                        Err(Error::Protocol(format!("building a batch: {e}"))),
                    );
                    continue;
                }
            }
        }
        queue.in_flight += 1;
        *bytes += batch.size();
        batches.push(batch);
    }
    let mut drained = Vec::new();
    for (node, (batches, _)) in requests {
        if batches.is_empty() {
            continue;
        }
        *in_flight.entry(node).or_default() += 1;
        drained.push(Drained { node, batches });
    }
    if let Some(upto) = *flush_upto
        && incomplete.first().is_none_or(|&first| first > upto)
    {
        *flush_upto = None;
    }
    drop(state);
    for batch in expired {
        complete(shared, batch, Err(expiry_error(settings)));
    }
    (drained, next_wake, false)
}

/// What a batch that outlived `delivery.timeout.ms` in the queue fails with.
fn expiry_error(settings: &Settings) -> Error {
    Error::Timeout(format!(
        "record expired after delivery.timeout.ms ({:?}) without being acknowledged",
        settings.delivery_timeout
    ))
}

/// Writes one Produce request and settles its batches when it is answered.
async fn send_request(shared: &Arc<Shared>, request: Drained) {
    let settings = &shared.settings;
    let mut topics: Vec<TopicProduceData> = Vec::new();
    for batch in &request.batches {
        let data = PartitionProduceData::default()
            .with_index(batch.partition)
            .with_records(batch.built.clone());
        match topics.iter_mut().find(|t| *t.name.0 == *batch.topic) {
            Some(topic) => topic.partition_data.push(data),
            None => topics.push(
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(batch.topic.to_string())))
                    .with_partition_data(vec![data]),
            ),
        }
    }
    let timeout_ms =
        i32::try_from(shared.cluster.net().request_timeout.as_millis()).unwrap_or(i32::MAX);
    let produce = ProduceRequest::default()
        .with_transactional_id(
            settings
                .transactional_id
                .as_deref()
                .map(|id| TransactionalId(StrBytes::from_string(id.to_owned()))),
        )
        .with_acks(settings.acks)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(topics);
    let route = Route::Node(request.node);
    if settings.acks == 0 {
        let result = match shared.cluster.connection(route).await {
            Ok(conn) => conn
                .send_no_response(PRODUCE_VERSION, &produce)
                .await
                .map(|()| None),
            Err(e) => Err(e),
        };
        settle(shared, request, result);
        shared.wake.notify_one();
        return;
    }
    match shared.cluster.start(route, PRODUCE_VERSION, &produce).await {
        Ok(in_flight) => {
            let shared = Arc::clone(shared);
            tokio::spawn(async move {
                let result = in_flight.response().await;
                if matches!(&result, Err(e) if e.needs_metadata_refresh()) {
                    shared.cluster.mark_stale();
                }
                settle(&shared, request, result.map(Some));
                shared.wake.notify_one();
            });
        }
        Err(error) => {
            settle(shared, request, Err(error));
            shared.wake.notify_one();
        }
    }
}

/// One partition's part of a Produce response: error code and message, base
/// offset, log append time.
type PartitionAnswer = (i16, Option<String>, i64, i64);

/// Applies a Produce answer (or failure) to the batches it carried.
fn settle(shared: &Shared, request: Drained, result: Result<Option<ProduceResponse>>) {
    let mut answers: HashMap<(String, i32), PartitionAnswer> = HashMap::new();
    let request_error = match result {
        Ok(None) => None,
        Ok(Some(response)) => {
            let endpoints: HashMap<i32, BrokerInfo> = response
                .node_endpoints
                .iter()
                .map(|n| {
                    let info = BrokerInfo {
                        id: n.node_id.0,
                        host: n.host.to_string(),
                        port: n.port,
                        rack: n.rack.as_ref().map(ToString::to_string),
                    };
                    (info.id, info)
                })
                .collect();
            for topic in response.responses {
                let name = topic.name.0.to_string();
                for p in topic.partition_responses {
                    // KIP-951: an error answer (v10+) may name the new
                    // leader; the retry then goes there without waiting for
                    // a Metadata round trip.
                    if p.error_code != 0 {
                        let leader = p.current_leader.leader_id.0;
                        shared.cluster.update_leader(
                            &name,
                            p.index,
                            leader,
                            p.current_leader.leader_epoch,
                            endpoints.get(&leader).cloned(),
                        );
                    }
                    let message = p.error_message.as_deref().map(str::to_owned);
                    answers.insert(
                        (name.clone(), p.index),
                        (p.error_code, message, p.base_offset, p.log_append_time_ms),
                    );
                }
            }
            None
        }
        Err(error) => Some(error),
    };
    let acks_zero = shared.settings.acks == 0;
    let mut done = Vec::new();
    {
        let mut state = shared.state.lock();
        if let Some(n) = state.in_flight.get_mut(&request.node) {
            *n = n.saturating_sub(1);
        }
        for batch in request.batches {
            let tp: TopicPartition = (Arc::clone(&batch.topic), batch.partition);
            if let Some(queue) = state.partitions.get_mut(&tp) {
                queue.in_flight = queue.in_flight.saturating_sub(1);
            }
            let outcome = if let Some(error) = &request_error {
                Err(error.clone())
            } else if acks_zero {
                Ok((-1, -1))
            } else {
                match answers.remove(&(batch.topic.to_string(), batch.partition)) {
                    None => Err(Error::Protocol(
                        "the produce response left out a partition".into(),
                    )),
                    Some((0, _, base, append)) => Ok((base, append)),
                    // The broker had written this batch already; its offset
                    // is no longer known.
                    Some((code, _, _, append))
                        if code == ErrorCode::DuplicateSequenceNumber.code() =>
                    {
                        Ok((-1, append))
                    }
                    Some((code, message, _, _)) => Err(Error::kafka(code, message.as_deref())),
                }
            };
            match outcome {
                Ok((base, append)) => {
                    if let (Some(queue), Some(sequence)) =
                        (state.partitions.get_mut(&tp), batch.sequence)
                    {
                        queue.acked_sequence = sequence.wrapping_add(batch.count()) & i32::MAX;
                    }
                    done.push((batch, Ok((base, append))));
                }
                Err(error) => {
                    if let Some(batch) = retry_or_fail(shared, &mut state, batch, &error) {
                        done.push((batch, Err(error)));
                    }
                }
            }
        }
    }
    for (batch, outcome) in done {
        match outcome {
            Ok((base, append)) => complete(shared, batch, Ok((base, append))),
            Err(error) => complete(shared, batch, Err(error)),
        }
    }
}

/// Puts `batch` back for a retry when `error` allows one; otherwise hands
/// it back to be failed.
fn retry_or_fail(
    shared: &Shared,
    state: &mut State,
    mut batch: Batch,
    error: &Error,
) -> Option<Batch> {
    let settings = &shared.settings;
    let tp: TopicPartition = (Arc::clone(&batch.topic), batch.partition);
    let queue = state.partitions.entry(tp).or_default();
    let code = error.code();
    let out_of_order = code == Some(ErrorCode::OutOfOrderSequenceNumber);
    // Out of order after a failed predecessor: that one's retry comes first.
    let predecessor_failed =
        out_of_order && batch.sequence.is_some_and(|s| s != queue.acked_sequence);
    let retriable = (error.is_retriable() || predecessor_failed) && settings.acks != 0;
    let expired = batch.created.elapsed() >= settings.delivery_timeout;
    if retriable && batch.attempts < settings.retries && !expired {
        batch.attempts += 1;
        if error.needs_metadata_refresh() {
            shared.cluster.mark_stale();
        }
        // `retry.backoff.ms` doubling per attempt up to `retry.backoff.max.ms`
        // (KIP-580); the batch keeps its sequence, so a retry of a batch the
        // broker did write is answered as a duplicate, not written twice.
        queue.not_before = Some(Instant::now() + shared.cluster.retry_backoff(batch.attempts));
        // Back in sequence order, ahead of batches not yet numbered.
        let at = queue
            .queue
            .iter()
            .position(|b| b.sequence.is_none_or(|s| Some(s) > batch.sequence))
            .unwrap_or(queue.queue.len());
        queue.queue.insert(at, batch);
        return None;
    }
    if settings.idempotent
        && (out_of_order || code == Some(ErrorCode::UnknownProducerId) || batch.sequence.is_some())
    {
        match code {
            Some(
                ErrorCode::ProducerFenced
                | ErrorCode::InvalidProducerEpoch
                | ErrorCode::ClusterAuthorizationFailed,
            ) => {
                state.fatal = Some(error.clone());
            }
            // A gap in the numbering: start again under a new id.
            _ => state.reset_producer_id = true,
        }
    }
    if let Some(txn) = state.txn.as_mut() {
        txn.error.get_or_insert_with(|| error.clone());
    }
    Some(batch)
}

/// Resolves every record of `batch` and gives its buffer space back.
fn complete(shared: &Shared, batch: Batch, outcome: Result<(i64, i64)>) {
    for (i, waiter) in batch.waiters.into_iter().enumerate() {
        let result = match &outcome {
            Ok((base, append_time)) => Ok(RecordMetadata {
                topic: batch.topic.to_string(),
                partition: batch.partition,
                offset: if *base < 0 {
                    -1
                } else {
                    base.saturating_add(i64::try_from(i).unwrap_or(0))
                },
                timestamp: if *append_time >= 0 {
                    *append_time
                } else {
                    waiter.timestamp
                },
            }),
            Err(error) => Err(error.clone()),
        };
        let _ = waiter.tx.send(result);
    }
    shared.memory.add_permits(batch.reserved);
    shared.state.lock().incomplete.remove(&batch.id);
    shared.progress.notify_waiters();
}

/// Fails every queued record with `error` and refuses new ones.
fn fail_everything(shared: &Shared, error: Error) {
    let batches: Vec<Batch> = {
        let mut state = shared.state.lock();
        state.fatal = Some(error.clone());
        state
            .partitions
            .values_mut()
            .flat_map(|q| q.queue.drain(..))
            .collect()
    };
    for batch in batches {
        complete(shared, batch, Err(error.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings> {
        let mut config: ClientConfig = pairs.iter().copied().collect();
        config.set("bootstrap.servers", "127.0.0.1:9");
        Settings::from_config(&config)
    }

    #[test]
    fn idempotence_is_a_default_that_yields_unless_asked_for() {
        let s = settings(&[]).unwrap();
        assert!(s.idempotent && s.acks == -1 && s.linger == Duration::from_millis(5));
        assert!(!settings(&[("acks", "1")]).unwrap().idempotent);
        assert!(settings(&[("acks", "1"), ("enable.idempotence", "true")]).is_err());
        assert!(
            settings(&[
                ("max.in.flight.requests.per.connection", "6"),
                ("enable.idempotence", "true")
            ])
            .is_err()
        );
        assert!(settings(&[("compression.type", "brotli")]).is_err());
        assert!(settings(&[("lingr.ms", "1")]).is_err());
        assert_eq!(
            settings(&[("compression.type", "zstd")])
                .unwrap()
                .compression,
            Compression::Zstd
        );
    }

    /// A producer's shared state without its sender task.
    fn shared(pairs: &[(&str, &str)]) -> Shared {
        let mut config: ClientConfig = pairs.iter().copied().collect();
        config.set("bootstrap.servers", "127.0.0.1:9");
        let settings = Settings::from_config(&config).unwrap();
        Shared {
            cluster: Arc::new(Cluster::new(NetworkConfig::from_config(&config).unwrap())),
            memory: Semaphore::new(settings.buffer_memory),
            settings,
            state: Mutex::new(State {
                partitions: HashMap::new(),
                topics: HashMap::new(),
                producer_id: 7,
                producer_epoch: 0,
                reset_producer_id: false,
                in_flight: HashMap::new(),
                next_batch_id: 1,
                incomplete: BTreeSet::from([0]),
                flush_upto: None,
                closing: false,
                fatal: None,
                txn: None,
            }),
            wake: Notify::new(),
            progress: Notify::new(),
        }
    }

    /// A batch of one record that was sent once with sequence 0 and waits
    /// for its retry; and the receiver of its record's outcome.
    fn retried_batch(created: Instant) -> (Batch, oneshot::Receiver<Result<RecordMetadata>>) {
        let mut builder = RecordBatchBuilder::new(Compression::None).producer(7, 0, 0);
        builder.push(1, None, Some(b"v"), &[]);
        let (tx, rx) = oneshot::channel();
        let batch = Batch {
            id: 0,
            topic: Arc::from("t"),
            partition: 0,
            builder: None,
            built: Some(builder.build().unwrap()),
            waiters: vec![Waiter { tx, timestamp: 1 }],
            reserved: 0,
            created,
            attempts: 1,
            sequence: Some(0),
        };
        (batch, rx)
    }

    #[test]
    fn a_retry_waiting_for_a_leader_expires_at_the_delivery_timeout_and_renumbers() {
        let shared = shared(&[("delivery.timeout.ms", "1000")]);
        let created = Instant::now();
        let (batch, mut rx) = retried_batch(created);
        shared
            .state
            .lock()
            .partitions
            .entry((Arc::from("t"), 0))
            .or_default()
            .queue
            .push_back(batch);
        // Before the timeout the batch stays queued (its partition has no
        // known leader, so nothing is sent either).
        let (drained, _, _) = drain(&shared, created + Duration::from_millis(500));
        assert!(drained.is_empty());
        assert!(rx.try_recv().is_err(), "no outcome yet");
        assert_eq!(
            shared.state.lock().partitions[&(Arc::from("t"), 0)]
                .queue
                .len(),
            1
        );
        // After it, the record fails with a timeout, and since the batch was
        // numbered (the broker may have written it), the producer takes a
        // new id before sending more.
        let (drained, _, _) = drain(&shared, created + Duration::from_millis(1001));
        assert!(drained.is_empty());
        assert!(matches!(rx.try_recv(), Ok(Err(Error::Timeout(_)))));
        let state = shared.state.lock();
        assert!(state.partitions[&(Arc::from("t"), 0)].queue.is_empty());
        assert!(state.reset_producer_id && state.incomplete.is_empty());
    }

    #[test]
    fn a_retriable_error_requeues_the_batch_with_its_sequence_and_marks_metadata_stale() {
        let shared = shared(&[]);
        let (batch, mut rx) = retried_batch(Instant::now());
        let mut state = shared.state.lock();
        let error = Error::kafka(ErrorCode::NotLeaderOrFollower.code(), None);
        assert!(retry_or_fail(&shared, &mut state, batch, &error).is_none());
        let queue = &state.partitions[&(Arc::from("t"), 0)];
        let requeued = queue.queue.front().unwrap();
        assert_eq!((requeued.sequence, requeued.attempts), (Some(0), 2));
        // It waits out the retry backoff (`Cluster::retry_backoff`).
        assert!(queue.not_before.is_some());
        assert!(!state.reset_producer_id);
        drop(state);
        assert!(rx.try_recv().is_err(), "not failed");
        assert!(shared.cluster.meta_is_stale());
        // A non-retriable error fails the batch.
        let (batch, _rx) = retried_batch(Instant::now());
        let mut state = shared.state.lock();
        let error = Error::kafka(ErrorCode::MessageTooLarge.code(), None);
        assert!(retry_or_fail(&shared, &mut state, batch, &error).is_some());
    }

    #[test]
    fn restamping_rewrites_producer_fields_and_keeps_the_batch_valid() {
        let mut builder = RecordBatchBuilder::new(Compression::None).producer(7, 1, 40);
        builder.push(1, Some(b"k"), Some(b"v"), &[]);
        let batch = builder.build().unwrap();
        let again = restamp(&batch, 9, 0, 0);
        let header = strom_protocol::record_batch::validate_batch(&again).unwrap();
        assert_eq!(
            (
                header.producer_id,
                header.producer_epoch,
                header.base_sequence
            ),
            (9, 0, 0)
        );
        assert_eq!(again.len(), batch.len());
    }
}
