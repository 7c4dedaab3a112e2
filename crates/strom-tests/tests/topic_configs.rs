//! Topic configs, DeleteRecords and log cleanup against librdkafka (the
//! `rdkafka` crate's bundled build) and the real broker binary.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod common;

use std::time::Duration;

use common::{BrokerProcess, assign, flush, wait_until};
use rdkafka::admin::{AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A record as read back: offset, key, value (`None`: a tombstone).
type Stored = (i64, Vec<u8>, Option<Vec<u8>>);

/// A topic config as librdkafka's DescribeConfigs sees it.
fn describe(broker: &BrokerProcess, topic: &str, name: &str) -> (Option<String>, String) {
    let (admin, runtime) = broker.admin();
    let results = runtime
        .block_on(admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new()))
        .unwrap();
    let resource = results[0].as_ref().unwrap();
    let entry = resource
        .get(name)
        .unwrap_or_else(|| panic!("{name} is described"));
    (entry.value.clone(), format!("{:?}", entry.source))
}

#[test]
fn librdkafka_describes_and_alters_configs_as_kafka_answers() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &["log.retention.hours=2"]);
    let (admin, runtime) = broker.admin();
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    broker.create_topic_with("configured", 1, &[("cleanup.policy", "compact")]);

    assert_eq!(
        describe(&broker, "configured", "cleanup.policy"),
        (Some("compact".to_owned()), "DynamicTopic".to_owned())
    );
    assert_eq!(
        describe(&broker, "configured", "retention.ms"),
        (Some("7200000".to_owned()), "Default".to_owned()),
        "log.retention.hours in ms; Kafka's source for a value only log.retention.hours sets"
    );
    assert_eq!(
        describe(&broker, "configured", "segment.bytes"),
        (Some("1073741824".to_owned()), "Default".to_owned())
    );

    // librdkafka's AlterConfigs replaces the topic's overrides.
    let alter = AlterConfig::new(ResourceSpecifier::Topic("configured"))
        .set("retention.ms", "60000")
        .set("compression.type", "lz4");
    let altered = runtime
        .block_on(admin.alter_configs(&[alter], &options))
        .unwrap();
    assert!(altered[0].is_ok(), "{altered:?}");
    assert_eq!(
        describe(&broker, "configured", "retention.ms"),
        (Some("60000".to_owned()), "DynamicTopic".to_owned())
    );
    assert_eq!(
        describe(&broker, "configured", "cleanup.policy"),
        (Some("delete".to_owned()), "Default".to_owned()),
        "an override left out of AlterConfigs is removed"
    );

    // The rdkafka crate reports every AlterConfigs resource as a success
    // (it never reads the per-resource error), so what shows the refusal is
    // that nothing changed.
    for (name, value) in [("retention.ms", "-9"), ("colour", "blue")] {
        let bad = AlterConfig::new(ResourceSpecifier::Topic("configured")).set(name, value);
        runtime
            .block_on(admin.alter_configs(&[bad], &options))
            .unwrap();
        assert_eq!(
            describe(&broker, "configured", "retention.ms"),
            (Some("60000".to_owned()), "DynamicTopic".to_owned()),
            "{name}={value} is refused"
        );
    }

    // A produced gzip batch is stored as lz4, and reads back intact.
    let producer = broker.producer(&[("compression.codec", "gzip")]);
    for i in 0..100 {
        let key = format!("k{i}");
        let value = format!("value {i}").repeat(10);
        producer
            .send(BaseRecord::to("configured").key(&key).payload(&value))
            .unwrap();
    }
    flush(&producer);
    let consumer = broker.consumer();
    assign(&consumer, "configured", 0, 0);
    let mut seen = 0;
    assert!(wait_until(TIMEOUT, || {
        while let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            assert_eq!(m.offset(), seen);
            assert_eq!(
                m.payload().unwrap(),
                format!("value {seen}").repeat(10).as_bytes()
            );
            seen += 1;
        }
        seen == 100
    }));
    broker.stop();
}

#[test]
fn delete_records_moves_the_start_and_consumers_reset() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    broker.create_topic("trim", 1);
    let producer = broker.producer(&[]);
    for i in 0..50 {
        let value = format!("v{i}");
        producer
            .send(BaseRecord::<(), _>::to("trim").payload(&value))
            .unwrap();
    }
    flush(&producer);
    let (admin, runtime) = broker.admin();
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset("trim", 0, Offset::Offset(20))
        .unwrap();
    let result = runtime
        .block_on(admin.delete_records(&offsets, &AdminOptions::new()))
        .unwrap();
    let low = result.find_partition("trim", 0).unwrap();
    assert_eq!(low.offset(), Offset::Offset(20));
    assert!(low.error().is_ok());
    let consumer = broker.consumer();
    assert_eq!(
        consumer.fetch_watermarks("trim", 0, TIMEOUT).unwrap(),
        (20, 50)
    );

    // A consumer starting below the log start resets to it (earliest).
    let reset: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", "unused")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    assign(&reset, "trim", 0, 5);
    let mut first = None;
    assert!(wait_until(TIMEOUT, || {
        if let Some(m) = reset.poll(Duration::from_millis(100)) {
            first = Some(m.unwrap().offset());
        }
        first.is_some()
    }));
    assert_eq!(first, Some(20));

    let mut beyond = TopicPartitionList::new();
    beyond
        .add_partition_offset("trim", 0, Offset::Offset(51))
        .unwrap();
    let result = runtime.block_on(admin.delete_records(&beyond, &AdminOptions::new()));
    let failed = match result {
        Ok(list) => list.find_partition("trim", 0).unwrap().error().err(),
        Err(e) => Some(e),
    };
    assert_eq!(
        failed.and_then(|e| e.rdkafka_error_code()),
        Some(RDKafkaErrorCode::OffsetOutOfRange)
    );
    // The high watermark did not move under the producer.
    producer
        .send(BaseRecord::<(), _>::to("trim").payload("more"))
        .unwrap();
    producer.flush(TIMEOUT).unwrap();
    assert_eq!(
        consumer.fetch_watermarks("trim", 0, TIMEOUT).unwrap(),
        (20, 51)
    );
    broker.stop();
}

/// Every record of partition 0 from the log start to the high watermark:
/// `(offset, key, value)`. Retention may move the log start while it reads:
/// the consumer then resets to the new start, as a user's would.
fn read_all(broker: &BrokerProcess, topic: &str) -> Vec<Stored> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", "strom-tests-unused")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let (low, high) = consumer.fetch_watermarks(topic, 0, TIMEOUT).unwrap();
    let mut out = Vec::new();
    if low == high {
        return out;
    }
    assign(&consumer, topic, 0, low);
    assert!(
        wait_until(TIMEOUT, || {
            while let Some(m) = consumer.poll(Duration::from_millis(50)) {
                let m = m.unwrap();
                out.push((
                    m.offset(),
                    m.key().unwrap_or_default().to_vec(),
                    m.payload().map(<[u8]>::to_vec),
                ));
                if m.offset() + 1 >= high {
                    return true;
                }
            }
            false
        }),
        "read {topic} up to {high}"
    );
    out
}

#[test]
fn retention_by_size_and_time_deletes_segments_and_consumers_reset() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &["log.retention.check.interval.ms=100"],
    );
    // About ten 1 KiB records per segment.
    broker.create_topic_with("sized", 1, &[("segment.bytes", "10000")]);
    let producer = broker.producer(&[("linger.ms", "0"), ("batch.num.messages", "1")]);
    for i in 0..200 {
        let value = format!("{i:04}").repeat(256);
        producer
            .send(BaseRecord::<(), _>::to("sized").payload(&value))
            .unwrap();
        producer.poll(Duration::ZERO);
    }
    flush(&producer);
    // Keep about three segments. Set once every record is in, one
    // retention pass leaves the log as it stays: no later pass moves the
    // log start under the reader.
    let (admin, runtime) = broker.admin();
    let retain = AlterConfig::new(ResourceSpecifier::Topic("sized"))
        .set("segment.bytes", "10000")
        .set("retention.bytes", "30000");
    let altered = runtime
        .block_on(admin.alter_configs(&[retain], &AdminOptions::new()))
        .unwrap();
    assert!(altered[0].is_ok(), "{altered:?}");
    let consumer = broker.consumer();
    let mut low = 0;
    assert!(
        wait_until(TIMEOUT, || {
            low = consumer.fetch_watermarks("sized", 0, TIMEOUT).unwrap().0;
            low >= 150
        }),
        "retention.bytes moved the log start to {low}"
    );
    let kept = read_all(&broker, "sized");
    assert_eq!(
        kept.first().unwrap().0,
        low,
        "reading starts at the log start"
    );
    assert_eq!(kept.last().unwrap().0, 199);
    assert!(
        kept.len() < 60,
        "about 30 KB kept, not {} records",
        kept.len()
    );
    for (offset, _, value) in &kept {
        assert_eq!(
            value.as_deref().unwrap(),
            format!("{offset:04}").repeat(256).as_bytes()
        );
    }

    // Records a day old in a topic keeping a minute go, the active segment
    // too (it is rolled first); newer records stay.
    broker.create_topic_with(
        "timed",
        1,
        &[("retention.ms", "60000"), ("segment.ms", "3600000")],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for i in 0..20 {
        let value = format!("old {i}");
        producer
            .send(
                BaseRecord::<(), _>::to("timed")
                    .payload(&value)
                    .timestamp(now - 86_400_000),
            )
            .unwrap();
    }
    flush(&producer);
    assert!(wait_until(TIMEOUT, || {
        consumer.fetch_watermarks("timed", 0, TIMEOUT).unwrap() == (20, 20)
    }));
    for i in 0..5 {
        let value = format!("new {i}");
        producer
            .send(
                BaseRecord::<(), _>::to("timed")
                    .payload(&value)
                    .timestamp(now),
            )
            .unwrap();
    }
    flush(&producer);
    let kept = read_all(&broker, "timed");
    let values: Vec<_> = kept
        .iter()
        .map(|(o, _, v)| (*o, v.clone().unwrap()))
        .collect();
    assert_eq!(
        values,
        (0..5)
            .map(|i| (20 + i, format!("new {i}").into_bytes()))
            .collect::<Vec<_>>()
    );

    // A consumer at offset 0 with auto.offset.reset=earliest resets to the start.
    let reset: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", "unused")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    assign(&reset, "sized", 0, 0);
    let mut first = None;
    assert!(wait_until(TIMEOUT, || {
        if let Some(m) = reset.poll(Duration::from_millis(100)) {
            first = Some(m.unwrap().offset());
        }
        first.is_some()
    }));
    assert!(
        first.unwrap() >= low,
        "reset to the log start, got {first:?}"
    );
    // Clients close while the broker still answers (closing against a
    // stopped one waits out librdkafka's timeouts).
    drop((reset, consumer, producer, admin));
    broker.stop();
}

/// Sends `updates` rounds of values for keys `0..keys` (`codec`, in small
/// batches), then tombstones for the keys below `deleted`, then two records
/// of `filler` bytes (over half a segment) under their own keys, so that
/// everything before them sits in closed segments. Returns the latest value
/// of each key (`None`: deleted).
fn produce_compacted(
    broker: &BrokerProcess,
    topic: &str,
    (keys, updates, deleted): (usize, usize, usize),
    codec: &str,
    filler: usize,
) -> std::collections::BTreeMap<String, Option<Vec<u8>>> {
    // Batches must fit a segment (a larger one is RECORD_LIST_TOO_LARGE).
    let producer = broker.producer(&[("compression.codec", codec), ("batch.size", "4096")]);
    let mut latest = std::collections::BTreeMap::new();
    for round in 0..updates {
        for k in 0..keys {
            let key = format!("key-{k:05}");
            let value = format!("{key} round {round} ").repeat(8).into_bytes();
            producer
                .send(BaseRecord::to(topic).key(&key).payload(&value))
                .unwrap();
            producer.poll(Duration::ZERO);
            latest.insert(key, Some(value));
        }
    }
    for k in 0..deleted {
        let key = format!("key-{k:05}");
        producer
            .send(BaseRecord::<_, ()>::to(topic).key(&key))
            .unwrap();
        latest.insert(key, None);
    }
    flush(&producer);
    // Incompressible, so that it fills the segment whatever the codec.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let big: Vec<u8> = (0..filler)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    for key in ["filler-1", "filler-2"] {
        producer
            .send(BaseRecord::to(topic).key(key).payload(&big))
            .unwrap();
        flush(&producer);
        latest.insert(key.to_owned(), Some(big.clone()));
    }
    latest
}

/// Whether `records` are exactly the latest state: offsets ascending, each
/// key once, with its latest value; a deleted key absent or a tombstone.
fn is_compacted(
    records: &[Stored],
    latest: &std::collections::BTreeMap<String, Option<Vec<u8>>>,
) -> bool {
    assert!(
        records.windows(2).all(|w| w[0].0 < w[1].0),
        "offsets ascend"
    );
    let mut seen = std::collections::BTreeMap::new();
    for (_, key, value) in records {
        let key = String::from_utf8(key.clone()).unwrap();
        if seen.insert(key.clone(), value.clone()).is_some() {
            return false;
        }
    }
    latest.iter().all(|(key, value)| match value {
        Some(v) => seen.get(key) == Some(&Some(v.clone())),
        None => matches!(seen.get(key), None | Some(None)),
    }) && seen.keys().all(|k| latest.contains_key(k))
}

#[test]
fn compaction_keeps_the_latest_value_of_each_key() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &["log.cleaner.backoff.ms=50"]);
    broker.create_topic_with(
        "compacted",
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.bytes", "16384"),
            ("min.cleanable.dirty.ratio", "0.01"),
        ],
    );
    let latest = produce_compacted(&broker, "compacted", (200, 5, 20), "lz4", 10_000);
    let mut records = Vec::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            records = read_all(&broker, "compacted");
            is_compacted(&records, &latest)
        }),
        "compacted to the latest values; read {} records",
        records.len()
    );
    // Records keep their offsets: the last value of key 199 was the 1000th record.
    let last = records
        .iter()
        .find(|(_, k, _)| k.as_slice() == b"key-00199")
        .unwrap();
    assert_eq!(last.0, 999);
    broker.stop();
}

#[test]
fn kill_9_while_compacting_leaves_a_valid_log_that_is_then_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A slow cleaner (1 MB/s; like Kafka's, the throttle looks at intervals
    // of 300 ms, so the log must take longer than that) is caught in the
    // middle of its work.
    let broker = BrokerProcess::start(
        &data,
        &[
            "log.cleaner.backoff.ms=50",
            "log.cleaner.io.max.bytes.per.second=1000000",
        ],
    );
    // Written first, compacted after: the whole log is dirty at once.
    broker.create_topic_with("crashy", 1, &[("segment.bytes", "1048576")]);
    let latest = produce_compacted(&broker, "crashy", (5000, 10, 500), "none", 600_000);
    let (admin, runtime) = broker.admin();
    let compact = AlterConfig::new(ResourceSpecifier::Topic("crashy"))
        .set("segment.bytes", "1048576")
        .set("cleanup.policy", "compact")
        .set("min.cleanable.dirty.ratio", "0.01");
    runtime
        .block_on(admin.alter_configs(&[compact], &AdminOptions::new()))
        .unwrap();
    let partition_dir = data.join("crashy-0");
    let cleaning = || {
        std::fs::read_dir(&partition_dir).unwrap().any(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.ends_with(".cleaned") || name.ends_with(".swap")
        })
    };
    assert!(
        wait_until(Duration::from_secs(60), cleaning),
        "the cleaner started: {}",
        broker.stderr()
    );
    broker.kill9();

    let broker = BrokerProcess::start(&data, &["log.cleaner.backoff.ms=50"]);
    // Right after recovery every value is still there (maybe not compacted yet).
    let records = read_all(&broker, "crashy");
    let mut last = std::collections::BTreeMap::new();
    for (_, key, value) in &records {
        last.insert(String::from_utf8(key.clone()).unwrap(), value.clone());
    }
    for (key, value) in &latest {
        assert_eq!(last.get(key), Some(value), "{key} after recovery");
    }
    let mut records = Vec::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            records = read_all(&broker, "crashy");
            is_compacted(&records, &latest)
        }),
        "the restarted cleaner finished; read {} records",
        records.len()
    );
    assert!(!cleaning(), "no leftovers of the interrupted clean");
    broker.stop();
}
