//! strom-streams against the real broker, judged by librdkafka: a stateless
//! topology's output is every input record transformed, on the partition
//! Java's partitioner picks, with the input's timestamp and headers; the
//! group's committed offsets cover exactly what was processed, so a
//! restarted application goes on where the last one stopped; wall-clock
//! punctuation runs with idle input; sub-topologies reading topics of
//! different partition counts are refused at start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{BrokerProcess, flush};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Header, Headers as _, Message, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};
use strom_client::TopicPartition;
use strom_streams::dsl::{Consumed, Materialized, Produced, StreamsBuilder};
use strom_streams::kafka_streams::State;
use strom_streams::processor::{Processor, ProcessorContext, PunctuationType, Record};
use strom_streams::serdes::{I64Serde, StringSerde};
use strom_streams::{KafkaStreams, StateRestoreListener, StreamsConfig, StreamsError, Topology};

const DEADLINE: Duration = Duration::from_secs(60);

/// A record as librdkafka read it: key, value, timestamp, header "n".
type Stored = (String, String, i64, Option<String>);

/// What librdkafka read from a topic, by (partition, offset).
type Read = BTreeMap<(i32, i64), Stored>;

/// Everything in `topic`'s `partitions` from the start, read by librdkafka
/// until `count` records came.
fn read_with_librdkafka(
    broker: &BrokerProcess,
    topic: &str,
    partitions: i32,
    count: usize,
) -> Read {
    let consumer: BaseConsumer = broker.consumer();
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).unwrap();
    let mut out = Read::new();
    let deadline = Instant::now() + DEADLINE;
    while out.len() < count && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = message.unwrap();
        let header = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == "n")
                .and_then(|h| h.value.map(|v| String::from_utf8(v.to_vec()).unwrap()))
        });
        out.insert(
            (m.partition(), m.offset()),
            (
                String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
                String::from_utf8(m.payload().unwrap_or_default().to_vec()).unwrap(),
                m.timestamp().to_millis().unwrap(),
                header,
            ),
        );
    }
    out
}

/// Everything in `topic`'s `partitions` up to their high watermarks now.
fn read_to_end(broker: &BrokerProcess, topic: &str, partitions: i32) -> Read {
    let consumer: BaseConsumer = broker.consumer();
    let total: i64 = (0..partitions)
        .map(|p| {
            let (low, high) = consumer.fetch_watermarks(topic, p, DEADLINE).unwrap();
            high - low
        })
        .sum();
    read_with_librdkafka(broker, topic, partitions, usize::try_from(total).unwrap())
}

/// Produces `values` with librdkafka: key `k{i % 7}`, header `n` = i,
/// timestamp 1_000_000 + i.
fn produce(broker: &BrokerProcess, topic: &str, values: &[(usize, String)]) {
    // Java's partitioner (librdkafka's default hashes with CRC32).
    let producer = broker.producer(&[("partitioner", "murmur2_random")]);
    for (i, value) in values {
        let key = format!("k{}", i % 7);
        let n = i.to_string();
        producer
            .send(
                BaseRecord::to(topic)
                    .key(&key)
                    .payload(value)
                    .timestamp(1_000_000 + *i as i64)
                    .headers(OwnedHeaders::new().insert(Header {
                        key: "n",
                        value: Some(n.as_bytes()),
                    })),
            )
            .unwrap();
    }
    flush(&producer);
}

fn shouting() -> Topology {
    let builder = StreamsBuilder::new();
    builder
        .stream(&["lines"], Consumed::with(StringSerde, StringSerde))
        .filter(|_, line| !line.starts_with('#'))
        .map_values(|line: String| line.to_uppercase())
        .to("shouted", Produced::with(StringSerde, StringSerde));
    builder.build().unwrap()
}

fn config(broker: &BrokerProcess, threads: &str) -> StreamsConfig {
    StreamsConfig::from_properties([
        ("application.id", "shouting"),
        ("bootstrap.servers", broker.bootstrap.as_str()),
        ("commit.interval.ms", "100"),
        ("num.stream.threads", threads),
    ])
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateless_topology_transforms_every_record_and_a_restart_goes_on_from_its_commits() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &["group.initial.rebalance.delay.ms=0"],
    );
    tokio::task::block_in_place(|| {
        broker.create_topic("lines", 3);
        broker.create_topic("shouted", 3);
    });
    // Every fifth line is a comment, which the topology drops.
    let line = |i: usize| {
        if i.is_multiple_of(5) {
            format!("# comment {i}")
        } else {
            format!("line {i}")
        }
    };
    let first: Vec<(usize, String)> = (0..1000).map(|i| (i, line(i))).collect();
    tokio::task::block_in_place(|| produce(&broker, "lines", &first));

    // One thread: no rebalance while it works, so exactly once here.
    let mut streams = KafkaStreams::new(shouting(), config(&broker, "1"));
    streams.start().await.unwrap();
    assert_eq!(streams.state(), State::Running);
    let input = tokio::task::block_in_place(|| read_with_librdkafka(&broker, "lines", 3, 1000));
    let output = tokio::task::block_in_place(|| read_with_librdkafka(&broker, "shouted", 3, 800));
    assert_eq!(output.len(), 800, "every line but the comments");
    // Each output record is its input's: same key and partition (Java's
    // partitioner on the same key), same timestamp and headers, the value
    // upper-cased; in the input's order within a partition.
    let by_n: BTreeMap<String, (i32, i64, &Stored)> = input
        .iter()
        .map(|((p, o), r)| (r.3.clone().unwrap(), (*p, *o, r)))
        .collect();
    let mut last_input_offset: BTreeMap<i32, i64> = BTreeMap::new();
    for ((partition, _), (key, value, timestamp, n)) in &output {
        let n = n.as_ref().expect("the header came along");
        let (in_partition, in_offset, (in_key, in_value, in_timestamp, _)) = by_n[n];
        assert_eq!(*partition, in_partition, "record {n}");
        assert_eq!((key, timestamp), (in_key, in_timestamp), "record {n}");
        assert_eq!(*value, in_value.to_uppercase());
        assert!(!in_value.starts_with('#'));
        let last = last_input_offset.entry(*partition).or_insert(-1);
        assert!(in_offset > *last, "order kept in partition {partition}");
        *last = in_offset;
    }
    streams.close().await.unwrap();

    // The group committed every input record.
    let committed = tokio::task::block_in_place(|| {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &broker.bootstrap)
            .set("group.id", "shouting")
            .create()
            .unwrap();
        let mut list = TopicPartitionList::new();
        for p in 0..3 {
            list.add_partition("lines", p);
        }
        let committed = consumer.committed_offsets(list, DEADLINE).unwrap();
        (0..3)
            .map(|p| {
                let high = consumer.fetch_watermarks("lines", p, DEADLINE).unwrap().1;
                let offset = committed
                    .find_partition("lines", p)
                    .unwrap()
                    .offset()
                    .to_raw()
                    .unwrap();
                (offset, high)
            })
            .collect::<Vec<_>>()
    });
    for (offset, high) in committed {
        assert_eq!(offset, high, "committed up to the end");
    }

    // A new instance of the application, with two threads, reads only
    // what came since, once, though the second thread's join moves
    // partitions away from the first.
    let more: Vec<(usize, String)> = (1000..1100).map(|i| (i, format!("line {i}"))).collect();
    tokio::task::block_in_place(|| produce(&broker, "lines", &more));
    let mut again = KafkaStreams::new(shouting(), config(&broker, "2"));
    again.start().await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    while Instant::now() < deadline && counts.len() < 900 {
        let output = tokio::task::block_in_place(|| read_to_end(&broker, "shouted", 3));
        counts.clear();
        for (_, (_, _, _, n)) in output {
            *counts.entry(n.unwrap().parse().unwrap()).or_default() += 1;
        }
    }
    assert_eq!(counts.len(), 900, "every line but the comments");
    // The thread that had every partition committed before giving some
    // up in the rebalance: nothing was done twice.
    let repeated: Vec<(&usize, &usize)> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(repeated.is_empty(), "processed twice: {repeated:?}");
    assert!((1000..1100).all(|n| counts.contains_key(&n)));
    again.close().await.unwrap();
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_joining_mid_stream_takes_over_partitions_without_redoing_work() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &["group.initial.rebalance.delay.ms=0"],
    );
    tokio::task::block_in_place(|| {
        broker.create_topic("lines", 3);
        broker.create_topic("shouted", 3);
    });
    // Commits only at the rebalance and at close: whatever the first
    // instance processed before the second joined is committed then, or
    // the second would process it again.
    let config = || {
        StreamsConfig::from_properties([
            ("application.id", "shouting"),
            ("bootstrap.servers", broker.bootstrap.as_str()),
            ("commit.interval.ms", "600000"),
            ("consumer.heartbeat.interval.ms", "200"),
        ])
        .unwrap()
    };
    let total = 6000;
    // The input keeps coming while the instances start and rebalance.
    let bootstrap = broker.bootstrap.clone();
    let feeder = std::thread::spawn(move || {
        let producer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("partitioner", "murmur2_random")
            .create()
            .unwrap();
        for i in 0..total {
            let (key, value) = (format!("k{}", i % 7), format!("line {i}"));
            let n = i.to_string();
            let record = BaseRecord::to("lines").key(&key).payload(&value).headers(
                OwnedHeaders::new().insert(Header {
                    key: "n",
                    value: Some(n.as_bytes()),
                }),
            );
            producer.send(record).map_err(|(e, _)| e).unwrap();
            producer.poll(Duration::ZERO);
            if i % 200 == 199 {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        flush(&producer);
    });
    let mut first = KafkaStreams::new(shouting(), config());
    first.start().await.unwrap();
    // The first instance is under way...
    let deadline = Instant::now() + DEADLINE;
    while tokio::task::block_in_place(|| read_to_end(&broker, "shouted", 3)).len() < 500 {
        assert!(
            Instant::now() < deadline,
            "the first instance never got going"
        );
    }
    // ...when the second joins.
    let mut second = KafkaStreams::new(shouting(), config());
    second.start().await.unwrap();
    feeder.join().unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    while Instant::now() < deadline && counts.len() < total {
        counts.clear();
        for (_, (_, _, _, n)) in tokio::task::block_in_place(|| read_to_end(&broker, "shouted", 3))
        {
            *counts.entry(n.unwrap().parse().unwrap()).or_default() += 1;
        }
    }
    assert_eq!(counts.len(), total, "every line");
    let repeated: Vec<(&usize, &usize)> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        repeated.is_empty(),
        "processed twice: {} lines",
        repeated.len()
    );
    first.close().await.unwrap();
    second.close().await.unwrap();
    broker.stop();
}

/// Forwards a `tick` on every wall-clock punctuation, and passes records on.
struct Ticker;

impl Processor<String, String, String, String> for Ticker {
    fn init(&mut self, ctx: &mut ProcessorContext<'_, String, String>) -> Result<(), StreamsError> {
        ctx.schedule(
            Duration::from_millis(200),
            PunctuationType::WallClockTime,
            |ctx, now| ctx.forward(Record::new("tick".to_owned(), now.to_string(), now)),
        )?;
        ctx.schedule(
            Duration::from_millis(200),
            PunctuationType::StreamTime,
            |ctx, time| {
                ctx.forward(Record::new(
                    "stream-time".to_owned(),
                    time.to_string(),
                    time,
                ))
            },
        )?;
        Ok(())
    }

    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, String, String>,
        record: Record<String, String>,
    ) -> Result<(), StreamsError> {
        ctx.forward(record)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_clock_punctuation_runs_with_idle_input_and_stream_time_only_with_data() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &["group.initial.rebalance.delay.ms=0"],
    );
    tokio::task::block_in_place(|| {
        broker.create_topic("idle", 1);
        broker.create_topic("ticks", 1);
    });
    let builder = StreamsBuilder::new();
    builder
        .stream(&["idle"], Consumed::with(StringSerde, StringSerde))
        .process(|| Ticker)
        .to("ticks", Produced::with(StringSerde, StringSerde));
    let config = StreamsConfig::from_properties([
        ("application.id", "ticker"),
        ("bootstrap.servers", broker.bootstrap.as_str()),
        ("commit.interval.ms", "100"),
    ])
    .unwrap();
    let mut streams = KafkaStreams::new(builder.build().unwrap(), config);
    streams.start().await.unwrap();
    // No input at all: ticks still come, stream-time punctuations do not.
    let ticks = tokio::task::block_in_place(|| read_with_librdkafka(&broker, "ticks", 1, 3));
    assert!(ticks.len() >= 3, "{ticks:?}");
    assert!(ticks.values().all(|(key, ..)| key == "tick"), "{ticks:?}");
    // One record moves stream time: its punctuation fires once.
    tokio::task::block_in_place(|| produce(&broker, "idle", &[(0, "data".to_owned())]));
    let deadline = Instant::now() + DEADLINE;
    let mut read = Read::new();
    while Instant::now() < deadline {
        // Ticks keep coming: read everything there is each time.
        read = tokio::task::block_in_place(|| read_to_end(&broker, "ticks", 1));

        if read.values().filter(|(key, ..)| key != "tick").count() >= 2 {
            break;
        }
    }
    let others: Vec<&String> = read
        .values()
        .filter(|(key, ..)| key != "tick")
        .map(|(key, ..)| key)
        .collect();
    assert_eq!(
        others,
        ["k0", "stream-time"],
        "the record, then one stream-time punctuation"
    );
    streams.close().await.unwrap();
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_topology_over_topics_of_different_partition_counts_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    tokio::task::block_in_place(|| {
        broker.create_topic("left", 3);
        broker.create_topic("right", 2);
    });
    let builder = StreamsBuilder::new();
    let left = builder.stream(&["left"], Consumed::with(StringSerde, StringSerde));
    let right = builder.stream(&["right"], Consumed::with(StringSerde, StringSerde));
    left.merge(&right)
        .to("merged", Produced::with(StringSerde, StringSerde));
    let config = StreamsConfig::from_properties([
        ("application.id", "merging"),
        ("bootstrap.servers", broker.bootstrap.as_str()),
    ])
    .unwrap();
    let mut streams = KafkaStreams::new(builder.build().unwrap(), config);
    let error = streams.start().await.unwrap_err();
    assert!(
        matches!(&error, StreamsError::NotCopartitioned(topics) if topics.contains("left (3 partitions)") && topics.contains("right (2 partitions)")),
        "{error}"
    );
    // A topic that does not exist is named too.
    let builder = StreamsBuilder::new();
    builder
        .stream(&["nowhere"], Consumed::with(StringSerde, StringSerde))
        .to("merged", Produced::with(StringSerde, StringSerde));
    let config = StreamsConfig::from_properties([
        ("application.id", "lost"),
        ("bootstrap.servers", broker.bootstrap.as_str()),
    ])
    .unwrap();
    let error = KafkaStreams::new(builder.build().unwrap(), config)
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StreamsError::MissingSourceTopic { topic, .. } if topic == "nowhere"),
        "{error}"
    );
    broker.stop();
}

/// The last value per key in `topic` (all partitions, up to their high
/// watermarks now), values as Java's LongSerializer writes them, and how
/// many records there were.
fn last_counts(
    broker: &BrokerProcess,
    topic: &str,
    partitions: i32,
) -> (BTreeMap<String, i64>, usize) {
    let consumer: BaseConsumer = broker.consumer();
    let mut ends = BTreeMap::new();
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(topic, p, DEADLINE).unwrap();
        ends.insert(p, high);
        list.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).unwrap();
    let mut last = BTreeMap::new();
    let mut read = 0;
    let mut next: BTreeMap<i32, i64> = (0..partitions).map(|p| (p, 0)).collect();
    let deadline = Instant::now() + DEADLINE;
    while next.iter().any(|(p, o)| *o < ends[p]) && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = message.unwrap();
        let value: [u8; 8] = m.payload().unwrap().try_into().unwrap();
        last.insert(
            String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
            i64::from_be_bytes(value),
        );
        next.insert(m.partition(), m.offset() + 1);
        read += 1;
    }
    (last, read)
}

/// What a restore listener was told: per changelog partition, the end
/// offset at the start and the records restored at the end.
#[derive(Default)]
struct Restorations {
    seen: std::sync::Mutex<BTreeMap<i32, (i64, u64)>>,
}

impl StateRestoreListener for Restorations {
    fn on_restore_start(&self, tp: &TopicPartition, store: &str, _start: i64, end: i64) {
        assert_eq!(store, "counts");
        assert_eq!(tp.topic, "counting-counts-changelog");
        self.seen.lock().unwrap().insert(tp.partition, (end, 0));
    }

    fn on_restore_end(&self, tp: &TopicPartition, _store: &str, total: u64) {
        if let Some(entry) = self.seen.lock().unwrap().get_mut(&tp.partition) {
            entry.1 = total;
        }
    }
}

fn counting() -> Topology {
    let builder = StreamsBuilder::new();
    builder
        .stream(&["words"], Consumed::with(StringSerde, StringSerde))
        .group_by_key()
        .count(Materialized::as_("counts", StringSerde, I64Serde))
        .to_stream()
        .to("word-counts", Produced::with(StringSerde, I64Serde));
    builder.build().unwrap()
}

/// `count()` keeps its counts in a store whose writes go to the compacted
/// changelog `counting-counts-changelog`; a new instance (in-memory store,
/// nothing local) restores the counts from it and goes on counting, and
/// its interactive queries agree with the output topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_restores_its_store_from_the_changelog_and_goes_on() {
    const WORDS: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &["group.initial.rebalance.delay.ms=0"],
    );
    tokio::task::block_in_place(|| {
        broker.create_topic("words", 3);
        broker.create_topic("word-counts", 3);
    });
    let keyed = |range: std::ops::Range<usize>| -> Vec<(String, String)> {
        range
            .map(|i| (format!("w{}", i % WORDS), format!("line {i}")))
            .collect()
    };
    let send = |records: Vec<(String, String)>| {
        let producer = broker.producer(&[("partitioner", "murmur2_random")]);
        for (key, value) in &records {
            producer
                .send(BaseRecord::to("words").key(key).payload(value))
                .unwrap();
        }
        flush(&producer);
    };
    tokio::task::block_in_place(|| send(keyed(0..3000)));
    let config = || {
        StreamsConfig::from_properties([
            ("application.id", "counting"),
            ("bootstrap.servers", broker.bootstrap.as_str()),
            ("commit.interval.ms", "100"),
        ])
        .unwrap()
    };
    let wait_for_output = |count: usize| {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let (last, read) = last_counts(&broker, "word-counts", 3);
            if read >= count || Instant::now() > deadline {
                return (last, read);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    let mut streams = KafkaStreams::new(counting(), config());
    streams.start().await.unwrap();
    let (last, read) = tokio::task::block_in_place(|| wait_for_output(3000));
    // One update per input record (a commit retried under at-least-once
    // could repeat some; the counts below would show it).
    assert!(read >= 3000, "{read} updates");
    assert_eq!(last.len(), WORDS);
    assert!(last.values().all(|c| *c == 60), "{last:?}");
    streams.close().await.unwrap();

    // The changelog exists with Kafka Streams' name, one partition per
    // task, compacted, and holds every update.
    let (policy, changelog_partitions) = tokio::task::block_in_place(|| {
        let (admin, runtime) = broker.admin();
        let described = runtime
            .block_on(admin.describe_configs(
                &[rdkafka::admin::ResourceSpecifier::Topic(
                    "counting-counts-changelog",
                )],
                &rdkafka::admin::AdminOptions::new(),
            ))
            .unwrap();
        let policy = described[0].as_ref().unwrap().entry_map()["cleanup.policy"]
            .value
            .clone();
        let consumer: BaseConsumer = broker.consumer();
        let metadata = consumer
            .fetch_metadata(Some("counting-counts-changelog"), DEADLINE)
            .unwrap();
        (policy, metadata.topics()[0].partitions().len())
    });
    assert_eq!(policy.as_deref(), Some("compact"));
    assert_eq!(changelog_partitions, 3);

    // More input, a new instance: the counts go on from 60, not from 0.
    tokio::task::block_in_place(|| send(keyed(3000..3500)));
    let mut streams = KafkaStreams::new(counting(), config());
    assert!(
        matches!(
            streams.store::<String, i64>("counts"),
            Err(StreamsError::InvalidStateStore(_))
        ),
        "queried before start"
    );
    let listener = Arc::new(Restorations::default());
    streams
        .set_global_state_restore_listener(listener.clone())
        .unwrap();
    streams.start().await.unwrap();
    let (last, read) = tokio::task::block_in_place(|| wait_for_output(3500));
    assert!(read >= 3500, "{read} updates");
    assert!(
        last.values().all(|c| *c == 70),
        "restored and counted on: {last:?}"
    );

    // The listener saw each changelog partition restored, 3000 records in
    // all (one per update of the first run).
    {
        let seen = listener.seen.lock().unwrap();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(
            seen.values()
                .all(|(end, total)| *end > 0 && *end as u64 == *total),
            "{seen:?}"
        );
        assert_eq!(seen.values().map(|(_, total)| total).sum::<u64>(), 3000);
    }

    // Interactive queries see what the output topic says, over the three
    // tasks' stores.
    let store = streams.store::<String, i64>("counts").unwrap();
    let all: BTreeMap<String, i64> = store.all().unwrap().into_iter().collect();
    assert_eq!(all, last);
    assert_eq!(store.get(&"w7".to_owned()).unwrap(), Some(70));
    assert_eq!(store.get(&"nobody".to_owned()).unwrap(), None);
    let range = store.range(&"w1".to_owned(), &"w12".to_owned()).unwrap();
    assert_eq!(
        range.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["w1", "w10", "w11", "w12"]
    );
    assert_eq!(store.approximate_num_entries().unwrap(), 50);
    assert!(matches!(
        streams.store::<String, i64>("no-such-store"),
        Err(StreamsError::UnknownStateStore(_))
    ));
    assert!(matches!(
        streams.store::<String, String>("counts"),
        Err(StreamsError::TypeMismatch { .. })
    ));
    streams.close().await.unwrap();
    // Closed tasks leave the registry: the old view finds no store.
    assert!(matches!(
        store.get(&"w7".to_owned()),
        Err(StreamsError::InvalidStateStore(_))
    ));
}
