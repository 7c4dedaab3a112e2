//! The clients a run drives, all through librdkafka (the `rdkafka` crate),
//! each recording every operation in the history:
//!
//! - idempotent producers at acks=all writing unique numbers to [`TOPIC`];
//! - consumers in group [`GROUP`] reading [`TOPIC`] and committing every
//!   second, reading their committed offsets back after each assignment;
//! - a transactional producer writing 1 to 4 numbers per transaction to
//!   [`TXN_TOPIC`], committing most and aborting some;
//! - a read_committed consumer assigned every partition of [`TXN_TOPIC`];
//! - at the end, [`drain`]: fresh consumers read every partition from the
//!   start to its end, so that a write nobody read is a lost write.
//!
//! A client's operations run one after another, except the producers',
//! which keep [`PRODUCER_WINDOW`] sends in flight.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::history::{Action, Isolation, Op, Outcome, Partition, Position, Read, Sent};

/// The topic of the idempotent producers and the group.
pub const TOPIC: &str = "chaos";
/// The topic of the transactional producer.
pub const TXN_TOPIC: &str = "chaos-txn";
/// The topic the Python workload writes.
pub const PY_TOPIC: &str = "chaos-py";
/// Partitions of every topic.
pub const PARTITIONS: i32 = 3;
/// The consumer group.
pub const GROUP: &str = "chaos-group";
/// Sends a producer keeps unacknowledged: enough for batches in flight when
/// a fault strikes, few enough for the history to stay readable.
pub const PRODUCER_WINDOW: usize = 8;
/// Pause between two sends of one producer (about 100 records a second
/// each): faults, not load, are the point.
const SEND_INTERVAL: Duration = Duration::from_millis(10);
/// How long librdkafka tries to deliver a record before giving up (its
/// outcome is then unknown).
const MESSAGE_TIMEOUT_MS: &str = "20000";
/// How often a group member commits what it has read.
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// Values of producer `k` start at `k * VALUE_RANGE`; the transactional
/// producer's at [`TXN_VALUES`], the Python workload's at [`PY_VALUES`].
const VALUE_RANGE: u64 = 1_000_000_000;
const TXN_VALUES: u64 = 100 * VALUE_RANGE;
/// First value of the Python workload.
pub const PY_VALUES: u64 = 200 * VALUE_RANGE;
/// First process number of the Python workload (ours count from 1).
pub const PY_PROCESSES: u32 = 10_000;
/// How long a client call that blocks (commit, committed, transactions)
/// may take before its outcome is unknown.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Microseconds since the Unix epoch.
pub fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Writes operations to the history as they complete.
#[derive(Debug)]
pub struct Recorder {
    /// The run's start, microseconds since the Unix epoch.
    base_us: u64,
    next_index: AtomicU64,
    next_process: AtomicU32,
    out: Mutex<BufWriter<File>>,
}

impl Recorder {
    /// A history written to `path`, timed from `base_us`.
    pub fn create(path: &Path, base_us: u64) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            base_us,
            next_index: AtomicU64::new(0),
            next_process: AtomicU32::new(1),
            out: Mutex::new(BufWriter::new(file)),
        })
    }

    /// Microseconds since the run began.
    pub fn now(&self) -> u64 {
        wall_us().saturating_sub(self.base_us)
    }

    /// A new client instance's process number.
    pub fn process(&self) -> u32 {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }

    /// Appends one operation.
    pub fn record(
        &self,
        process: u32,
        start_us: u64,
        outcome: Outcome,
        action: Action,
        error: Option<String>,
    ) {
        let op = Op {
            index: self.next_index.fetch_add(1, Ordering::Relaxed),
            process,
            start_us,
            end_us: self.now(),
            outcome,
            action,
            error,
        };
        if let Ok(line) = serde_json::to_string(&op)
            && let Ok(mut out) = self.out.lock()
        {
            let _ = writeln!(out, "{line}");
        }
    }

    /// Writes what is buffered to the file.
    pub fn flush(&self) -> Result<()> {
        let mut out = self
            .out
            .lock()
            .map_err(|_| anyhow::anyhow!("history writer poisoned"))?;
        out.flush().context("writing the history")
    }
}

/// librdkafka's own log lines, as the harness's (`STROM_CHAOS_RDKAFKA_DEBUG`
/// names librdkafka `debug` contexts to turn on, e.g. `eos,msg`).
struct LogContext;

impl ClientContext for LogContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::info!(?level, fac, "librdkafka: {message}");
    }
}

/// Settings every client shares: quick to notice a broker's death and to
/// look for the new leader.
fn base_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("socket.connection.setup.timeout.ms", "3000")
        .set("reconnect.backoff.max.ms", "1000")
        .set("topic.metadata.refresh.interval.ms", "2000")
        .set("request.timeout.ms", "5000")
        .set("log_level", "3");
    config
}

/// The running clients of a run.
#[derive(Debug)]
pub struct Clients {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Clients {
    /// Starts `producers` idempotent producers, `members` group consumers,
    /// the transactional producer and the read_committed consumer.
    pub fn start(
        bootstrap: &str,
        recorder: &Arc<Recorder>,
        seed: u64,
        producers: u64,
        members: usize,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for k in 0..producers {
            let (b, r, s) = (
                bootstrap.to_owned(),
                Arc::clone(recorder),
                Arc::clone(&stop),
            );
            threads.push(std::thread::spawn(move || {
                produce(&b, &r, &s, seed.wrapping_add(k), (k + 1) * VALUE_RANGE);
            }));
        }
        for _ in 0..members {
            let (b, r, s) = (
                bootstrap.to_owned(),
                Arc::clone(recorder),
                Arc::clone(&stop),
            );
            threads.push(std::thread::spawn(move || group_member(&b, &r, &s)));
        }
        let (b, r, s) = (
            bootstrap.to_owned(),
            Arc::clone(recorder),
            Arc::clone(&stop),
        );
        threads.push(std::thread::spawn(move || transact(&b, &r, &s, seed)));
        let (b, r, s) = (
            bootstrap.to_owned(),
            Arc::clone(recorder),
            Arc::clone(&stop),
        );
        threads.push(std::thread::spawn(move || read_committed(&b, &r, &s)));
        Self { stop, threads }
    }

    /// Stops every client, waiting for what is in flight to come out.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A run that fails half-way must not leave clients writing into the next
/// run of a soak (same value ranges, same transactional id and group).
impl Drop for Clients {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// One idempotent producer: sends `first`, `first + 1`, ... to random
/// partitions of [`TOPIC`] until `stop`.
fn produce(bootstrap: &str, recorder: &Recorder, stop: &AtomicBool, seed: u64, first: u64) {
    let process = recorder.process();
    let mut config = base_config(bootstrap);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", MESSAGE_TIMEOUT_MS);
    if let Ok(debug) = std::env::var("STROM_CHAOS_RDKAFKA_DEBUG") {
        config
            .set("debug", debug)
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
    }
    let producer: FutureProducer<LogContext> = match config.create_with_context(LogContext) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "creating a producer");
            return;
        }
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pending: VecDeque<(u64, u64, i32, rdkafka::producer::DeliveryFuture)> = VecDeque::new();
    let mut value = first;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if pending.len() >= PRODUCER_WINDOW || (stopping && !pending.is_empty()) {
            let Some((start, v, partition, delivery)) = pending.pop_front() else {
                break;
            };
            let result: Result<rdkafka::producer::future_producer::OwnedDeliveryResult, _> =
                futures::executor::block_on(delivery);
            let (outcome, offset, error) = match result {
                Ok(Ok(d)) => (Outcome::Ok, Some(d.offset), None),
                Ok(Err((e, _))) => (Outcome::Unknown, None, Some(e.to_string())),
                Err(_) => (Outcome::Unknown, None, Some("delivery canceled".to_owned())),
            };
            recorder.record(
                process,
                start,
                outcome,
                Action::Send(Sent {
                    topic: TOPIC.to_owned(),
                    partition: Some(partition),
                    value: v,
                    offset,
                }),
                error,
            );
            continue;
        }
        if stopping {
            break;
        }
        let partition = rng.random_range(0..PARTITIONS);
        let payload = value.to_string();
        let start = recorder.now();
        match producer.send_result(
            FutureRecord::<(), _>::to(TOPIC)
                .partition(partition)
                .payload(&payload),
        ) {
            Ok(delivery) => {
                pending.push_back((start, value, partition, delivery));
                value += 1;
            }
            Err(_) => std::thread::sleep(SEND_INTERVAL),
        }
        std::thread::sleep(SEND_INTERVAL);
    }
}

/// The partitions of a rebalance, as the history names them.
fn partitions(list: &TopicPartitionList) -> Vec<Partition> {
    list.elements()
        .iter()
        .map(|e| Partition {
            topic: e.topic().to_owned(),
            partition: e.partition(),
        })
        .collect()
}

/// Records a group member's assignments as they change.
struct MemberContext {
    recorder: Arc<Recorder>,
    process: u32,
    /// Set on every assignment, for the member to read its committed
    /// offsets back.
    assigned: Mutex<Option<Vec<Partition>>>,
}

impl ClientContext for MemberContext {}

impl ConsumerContext for MemberContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let now = self.recorder.now();
        let parts = match rebalance {
            Rebalance::Assign(list) => partitions(list),
            Rebalance::Revoke(_) | Rebalance::Error(_) => Vec::new(),
        };
        if let Ok(mut assigned) = self.assigned.lock() {
            *assigned = Some(parts.clone());
        }
        self.recorder.record(
            self.process,
            now,
            Outcome::Ok,
            Action::Assign { partitions: parts },
            None,
        );
    }
}

/// One record of a poll, if its value is one of ours.
fn read_of(message: &rdkafka::message::BorrowedMessage<'_>) -> Option<Read> {
    let value = std::str::from_utf8(message.payload()?).ok()?.parse().ok()?;
    Some(Read {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        value,
    })
}

/// A member of [`GROUP`] reading [`TOPIC`]: polls, commits its positions
/// every second, and reads its committed offsets back after every
/// assignment.
fn group_member(bootstrap: &str, recorder: &Arc<Recorder>, stop: &AtomicBool) {
    let process = recorder.process();
    let context = MemberContext {
        recorder: Arc::clone(recorder),
        process,
        assigned: Mutex::new(None),
    };
    let consumer: BaseConsumer<MemberContext> = match base_config(bootstrap)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .create_with_context(context)
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "creating a group member");
            return;
        }
    };
    if let Err(e) = consumer.subscribe(&[TOPIC]) {
        tracing::error!(error = %e, "subscribing");
        return;
    }
    // The next offset to read of each partition read since the last
    // assignment.
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut last_commit = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let start = recorder.now();
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                if let Some(read) = read_of(&message) {
                    next.insert((read.topic.clone(), read.partition), read.offset + 1);
                    recorder.record(
                        process,
                        start,
                        Outcome::Ok,
                        Action::Poll {
                            isolation: Isolation::ReadUncommitted,
                            records: vec![read],
                        },
                        None,
                    );
                }
            }
            Some(Err(e)) => tracing::debug!(error = %e, "poll"),
            None => {}
        }
        let assigned = consumer
            .context()
            .assigned
            .lock()
            .ok()
            .and_then(|mut a| a.take());
        if let Some(assigned) = assigned {
            next.retain(|(t, p), _| assigned.iter().any(|a| a.topic == *t && a.partition == *p));
            committed(&consumer, recorder, process, &assigned);
        }
        if last_commit.elapsed() >= COMMIT_INTERVAL && !next.is_empty() {
            last_commit = Instant::now();
            commit(&consumer, recorder, process, &next);
        }
    }
    consumer.unsubscribe();
}

/// Commits `next` synchronously and records it.
fn commit(
    consumer: &BaseConsumer<MemberContext>,
    recorder: &Recorder,
    process: u32,
    next: &BTreeMap<(String, i32), i64>,
) {
    let mut list = TopicPartitionList::new();
    let mut offsets = Vec::new();
    for ((topic, partition), offset) in next {
        if list
            .add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .is_ok()
        {
            offsets.push(Position {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
            });
        }
    }
    let start = recorder.now();
    let (outcome, error) = match consumer.commit(&list, CommitMode::Sync) {
        Ok(()) => (Outcome::Ok, None),
        Err(e) => (Outcome::Unknown, Some(e.to_string())),
    };
    recorder.record(
        process,
        start,
        outcome,
        Action::Commit {
            group: GROUP.to_owned(),
            offsets,
        },
        error,
    );
}

/// Reads the group's committed offsets of `assigned` and records them.
fn committed(
    consumer: &BaseConsumer<MemberContext>,
    recorder: &Recorder,
    process: u32,
    assigned: &[Partition],
) {
    if assigned.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for p in assigned {
        list.add_partition(&p.topic, p.partition);
    }
    let start = recorder.now();
    match consumer.committed_offsets(list, CALL_TIMEOUT) {
        Ok(list) => {
            let offsets = list
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some(Position {
                        topic: e.topic().to_owned(),
                        partition: e.partition(),
                        offset: o,
                    }),
                    _ => None,
                })
                .collect();
            recorder.record(
                process,
                start,
                Outcome::Ok,
                Action::Committed {
                    group: GROUP.to_owned(),
                    offsets,
                },
                None,
            );
        }
        Err(e) => recorder.record(
            process,
            start,
            Outcome::Failed,
            Action::Committed {
                group: GROUP.to_owned(),
                offsets: Vec::new(),
            },
            Some(e.to_string()),
        ),
    }
}

/// A transactional producer for [`TXN_TOPIC`]: transactions of 1 to 4
/// values, 70% committed, the rest aborted. After an error it cannot
/// recover from, a new producer with the same transactional id (a new
/// process) fences the old one and carries on.
fn transact(bootstrap: &str, recorder: &Recorder, stop: &AtomicBool, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x0074_786e);
    let mut value = TXN_VALUES;
    let transactional_id = "chaos-txn-0".to_owned();
    'producer: while !stop.load(Ordering::Relaxed) {
        let process = recorder.process();
        let producer: FutureProducer = match base_config(bootstrap)
            .set("transactional.id", &transactional_id)
            .set("transaction.timeout.ms", "20000")
            .set("message.timeout.ms", MESSAGE_TIMEOUT_MS)
            .create()
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "creating the transactional producer");
                return;
            }
        };
        if let Err(e) = producer.init_transactions(CALL_TIMEOUT) {
            tracing::debug!(error = %e, "init_transactions");
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        while !stop.load(Ordering::Relaxed) {
            let start = recorder.now();
            if let Err(e) = producer.begin_transaction() {
                tracing::debug!(error = %e, "begin_transaction");
                continue 'producer;
            }
            let count = rng.random_range(1..=4);
            let mut sends = Vec::new();
            let mut failed = None;
            for _ in 0..count {
                let partition = rng.random_range(0..PARTITIONS);
                let payload = value.to_string();
                let mut sent = Sent {
                    topic: TXN_TOPIC.to_owned(),
                    partition: Some(partition),
                    value,
                    offset: None,
                };
                value += 1;
                match producer.send_result(
                    FutureRecord::<(), _>::to(TXN_TOPIC)
                        .partition(partition)
                        .payload(&payload),
                ) {
                    Ok(delivery) => match futures::executor::block_on(delivery) {
                        Ok(Ok(d)) => sent.offset = Some(d.offset),
                        Ok(Err((e, _))) => failed = Some(e),
                        Err(_) => failed = Some(KafkaError::Canceled),
                    },
                    Err((e, _)) => failed = Some(e),
                }
                sends.push(sent);
                if failed.is_some() {
                    break;
                }
            }
            let abort = failed.is_some() || rng.random_bool(0.3);
            let commit_start = recorder.now();
            let result = if abort {
                producer.abort_transaction(CALL_TIMEOUT)
            } else {
                producer.commit_transaction(CALL_TIMEOUT)
            };
            let (outcome, error, fenced) = match result {
                Ok(()) if abort => (Outcome::Failed, failed.map(|e| e.to_string()), false),
                Ok(()) => (Outcome::Ok, None, false),
                Err(e) => {
                    let aborted = !abort
                        && matches!(&e, KafkaError::Transaction(t) if t.txn_requires_abort())
                        && producer.abort_transaction(CALL_TIMEOUT).is_ok();
                    if aborted {
                        (Outcome::Failed, Some(e.to_string()), false)
                    } else {
                        (Outcome::Unknown, Some(e.to_string()), true)
                    }
                }
            };
            recorder.record(
                process,
                start,
                outcome,
                Action::Txn {
                    transactional_id: transactional_id.clone(),
                    sends,
                    commit_start_us: (!abort).then_some(commit_start),
                },
                error,
            );
            if fenced {
                continue 'producer;
            }
        }
    }
}

/// A read_committed consumer assigned every partition of [`TXN_TOPIC`]
/// from the start.
fn read_committed(bootstrap: &str, recorder: &Recorder, stop: &AtomicBool) {
    let process = recorder.process();
    let Some(consumer) = assigned_consumer(bootstrap, TXN_TOPIC, Isolation::ReadCommitted) else {
        return;
    };
    record_assign(recorder, process, TXN_TOPIC);
    while !stop.load(Ordering::Relaxed) {
        poll_one(&consumer, recorder, process, Isolation::ReadCommitted);
    }
}

fn assigned_consumer(bootstrap: &str, topic: &str, isolation: Isolation) -> Option<BaseConsumer> {
    let level = match isolation {
        Isolation::ReadCommitted => "read_committed",
        Isolation::ReadUncommitted => "read_uncommitted",
    };
    let consumer: BaseConsumer = base_config(bootstrap)
        .set("group.id", "chaos-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", level)
        .create()
        .map_err(|e| tracing::error!(error = %e, "creating a reader"))
        .ok()?;
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition_offset(topic, p, Offset::Beginning)
            .ok()?;
    }
    consumer.assign(&list).ok()?;
    Some(consumer)
}

fn record_assign(recorder: &Recorder, process: u32, topic: &str) {
    let now = recorder.now();
    recorder.record(
        process,
        now,
        Outcome::Ok,
        Action::Assign {
            partitions: (0..PARTITIONS)
                .map(|partition| Partition {
                    topic: topic.to_owned(),
                    partition,
                })
                .collect(),
        },
        None,
    );
}

/// Polls once; records the record read, if any. Returns its position.
fn poll_one(
    consumer: &BaseConsumer,
    recorder: &Recorder,
    process: u32,
    isolation: Isolation,
) -> Option<(i32, i64)> {
    let start = recorder.now();
    let message = consumer.poll(Duration::from_millis(100))?.ok()?;
    let read = read_of(&message)?;
    let at = (read.partition, read.offset);
    recorder.record(
        process,
        start,
        Outcome::Ok,
        Action::Poll {
            isolation,
            records: vec![read],
        },
        None,
    );
    Some(at)
}

/// Reads every partition of `topic` from the start to its end (the high
/// watermark, or for read_committed the last stable offset, as the
/// consumer's position shows) with a fresh consumer, within `timeout`, and
/// records where each log ends. Returns whether it got to the end of every
/// partition.
pub fn drain(
    bootstrap: &str,
    recorder: &Recorder,
    topic: &str,
    isolation: Isolation,
    timeout: Duration,
) -> Result<bool> {
    let process = recorder.process();
    let consumer =
        assigned_consumer(bootstrap, topic, isolation).context("creating the draining consumer")?;
    record_assign(recorder, process, topic);
    let deadline = Instant::now() + timeout;
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    for p in 0..PARTITIONS {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, CALL_TIMEOUT)
            .with_context(|| format!("the end of {topic}-{p}"))?;
        ends.insert(p, high);
    }
    let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
    let done = |positions: &BTreeMap<i32, i64>, consumer: &BaseConsumer| {
        ends.iter().all(|(p, end)| {
            *end == 0
                || positions.get(p).is_some_and(|o| o + 1 >= *end)
                || consumer.position().ok().is_some_and(|l| {
                    l.find_partition(topic, *p)
                        .is_some_and(|e| matches!(e.offset(), Offset::Offset(o) if o >= *end))
                })
        })
    };
    let mut reached = false;
    while Instant::now() < deadline {
        if let Some((p, o)) = poll_one(&consumer, recorder, process, isolation) {
            positions.insert(p, o);
        } else if done(&positions, &consumer) {
            reached = true;
            break;
        }
    }
    let reached = reached || done(&positions, &consumer);
    if reached {
        // Where each log ends: an acknowledged offset at or past it was
        // lost (the checker's lost-write).
        for (p, end) in &ends {
            let start = recorder.now();
            recorder.record(
                process,
                start,
                Outcome::Ok,
                Action::End {
                    topic: topic.to_owned(),
                    partition: *p,
                    offset: *end,
                },
                None,
            );
        }
    }
    Ok(reached)
}
