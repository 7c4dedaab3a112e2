//! The real broker binary against librdkafka (the `rdkafka` crate's bundled
//! build): round trips with every codec, acks, idempotence, offsets by time,
//! auto-created and deleted topics, and a kill -9 with flush per batch.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{BrokerProcess, assign, flush, wait_until};
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Offset, Timestamp, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);

fn value(i: usize) -> Vec<u8> {
    format!("value-{i:08}-{}", "x".repeat(i % 200)).into_bytes()
}

/// Produces `n` keyed, headered, timestamped records to `topic`/0.
fn produce(broker: &BrokerProcess, topic: &str, n: usize, settings: &[(&str, &str)], base_ts: i64) {
    let producer = broker.producer(settings);
    for i in 0..n {
        let key = format!("key-{i}");
        let v = value(i);
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "idx",
                value: Some(&i.to_string()),
            })
            .insert(Header {
                key: "dup",
                value: Some("a"),
            })
            .insert(Header {
                key: "dup",
                value: None::<&str>,
            });
        let mut record = BaseRecord::to(topic)
            .partition(0)
            .key(&key)
            .payload(&v)
            .headers(headers)
            .timestamp(base_ts + i as i64);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r)) => {
                    // Queue full: serve delivery reports and try again.
                    assert!(
                        matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull
                            )
                        ),
                        "{e}"
                    );
                    producer.poll(Duration::from_millis(10));
                    record = r;
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    flush(&producer);
}

/// Consumes `n` records from `topic`/0 and checks every field.
fn consume_and_check(broker: &BrokerProcess, topic: &str, n: usize, base_ts: i64) {
    let consumer = broker.consumer();
    assign(&consumer, topic, 0, 0);
    let mut next = 0usize;
    while next < n {
        let m = consumer
            .poll(TIMEOUT)
            .unwrap_or_else(|| panic!("{topic}: no message after {next} of {n}"))
            .unwrap();
        assert_eq!(
            m.offset(),
            next as i64,
            "{topic}: offsets in order without gaps"
        );
        assert_eq!(m.key(), Some(format!("key-{next}").as_bytes()));
        assert_eq!(m.payload(), Some(&value(next)[..]));
        assert_eq!(m.timestamp(), Timestamp::CreateTime(base_ts + next as i64));
        let headers = m.headers().unwrap();
        assert_eq!(headers.count(), 3, "duplicate header keys are kept");
        assert_eq!(headers.get(0).value, Some(next.to_string().as_bytes()));
        assert_eq!((headers.get(1).key, headers.get(2).key), ("dup", "dup"));
        assert_eq!(headers.get(2).value, None);
        next += 1;
    }
}

#[test]
fn round_trip_100k_records_with_every_codec() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let base_ts = 1_700_000_000_000;
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("codec-{codec}");
        produce(
            &broker,
            &topic,
            100_000,
            &[("compression.type", codec), ("batch.size", "65536")],
            base_ts,
        );
        consume_and_check(&broker, &topic, 100_000, base_ts);
    }
    broker.stop();
}

#[test]
fn acks_zero_one_and_all_with_idempotence() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let base_ts = 1_600_000_000_000;
    for (name, settings) in [
        ("acks0", vec![("acks", "0")]),
        ("acks1", vec![("acks", "1")]),
        ("acksall", vec![("acks", "all")]),
        (
            "idempotent",
            vec![
                ("enable.idempotence", "true"),
                ("max.in.flight.requests.per.connection", "5"),
            ],
        ),
    ] {
        produce(&broker, name, 5_000, &settings, base_ts);
        consume_and_check(&broker, name, 5_000, base_ts);
    }
    broker.stop();
}

#[test]
fn offsets_for_times_and_watermarks() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    produce(&broker, "times", 1_000, &[], 10_000);
    let consumer = broker.consumer();
    let (low, high) = consumer.fetch_watermarks("times", 0, TIMEOUT).unwrap();
    assert_eq!((low, high), (0, 1_000));
    for (ts, expected) in [
        (0, Offset::Offset(0)),
        (10_500, Offset::Offset(500)),
        (10_999, Offset::Offset(999)),
        (11_000, Offset::End),
    ] {
        let mut query = TopicPartitionList::new();
        query
            .add_partition_offset("times", 0, Offset::Offset(ts))
            .unwrap();
        let answer = consumer.offsets_for_times(query, TIMEOUT).unwrap();
        assert_eq!(answer.elements()[0].offset(), expected, "timestamp {ts}");
    }
    broker.stop();
}

#[test]
fn topics_are_auto_created_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &["num.partitions=3"]);
    produce(&broker, "auto", 10, &[], 0);
    let consumer = broker.consumer();
    let metadata = consumer.fetch_metadata(Some("auto"), TIMEOUT).unwrap();
    let topic = &metadata.topics()[0];
    assert_eq!(
        topic.partitions().len(),
        3,
        "num.partitions applies to auto-created topics"
    );
    assert_eq!(topic.partitions()[0].leader(), 1);

    let (admin, runtime) = broker.admin();
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let deleted = runtime
        .block_on(admin.delete_topics(&["auto"], &options))
        .unwrap();
    assert!(deleted[0].is_ok(), "{deleted:?}");
    assert!(wait_until(TIMEOUT, || {
        let m = consumer.fetch_metadata(None, TIMEOUT).unwrap();
        m.topics().iter().all(|t| t.name() != "auto")
    }));
    // Recreated, the topic starts empty: no data of the old one leaks in.
    let created = runtime
        .block_on(admin.create_topics(
            &[NewTopic::new("auto", 1, TopicReplication::Fixed(1))],
            &options,
        ))
        .unwrap();
    assert!(created[0].is_ok(), "{created:?}");
    assert_eq!(
        consumer.fetch_watermarks("auto", 0, TIMEOUT).unwrap(),
        (0, 0)
    );
    let again = runtime
        .block_on(admin.create_topics(
            &[NewTopic::new("auto", 1, TopicReplication::Fixed(1))],
            &options,
        ))
        .unwrap();
    assert_eq!(
        again[0].as_ref().unwrap_err().1,
        rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists
    );
    let bad = runtime
        .block_on(admin.create_topics(
            &[NewTopic::new("three", 1, TopicReplication::Fixed(3))],
            &options,
        ))
        .unwrap();
    assert_eq!(
        bad[0].as_ref().unwrap_err().1,
        rdkafka::types::RDKafkaErrorCode::InvalidReplicationFactor
    );
    broker.stop();
}

/// Records which offsets the broker acknowledged, per payload.
struct AckRecorder {
    acked: Arc<Mutex<HashMap<i64, Vec<u8>>>>,
}

impl ClientContext for AckRecorder {}

impl ProducerContext for AckRecorder {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        if let Ok(m) = result {
            self.acked
                .lock()
                .unwrap()
                .insert(m.offset(), m.payload().unwrap_or_default().to_vec());
        }
    }
}

#[test]
fn kill_9_with_flush_per_batch_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let flush_every_batch = ["log.flush.interval.messages=1"];
    let broker = BrokerProcess::start(&data, &flush_every_batch);
    let acked = Arc::new(Mutex::new(HashMap::new()));
    let producer: ThreadedProducer<AckRecorder> = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .set("message.timeout.ms", "5000")
        .create_with_context(AckRecorder {
            acked: Arc::clone(&acked),
        })
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let stop = Arc::clone(&stop);
        let producer = producer.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let payload = format!("record-{i}");
                if producer
                    .send(
                        BaseRecord::<(), _>::to("durable")
                            .partition(0)
                            .payload(&payload),
                    )
                    .is_ok()
                {
                    i += 1;
                } else {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };
    assert!(wait_until(Duration::from_secs(60), || acked
        .lock()
        .unwrap()
        .len()
        >= 2_000));
    broker.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().unwrap();
    // Let delivery reports for requests that were in flight come in (they fail).
    let _ = producer.flush(Duration::from_secs(10));
    drop(producer);
    let acked = acked.lock().unwrap().clone();
    let last_acked = *acked.keys().max().unwrap();

    let broker = BrokerProcess::start(&data, &flush_every_batch);
    let consumer = broker.consumer();
    let (_, high) = consumer.fetch_watermarks("durable", 0, TIMEOUT).unwrap();
    assert!(
        high > last_acked,
        "log end {high} lost acknowledged offset {last_acked}"
    );
    assign(&consumer, "durable", 0, 0);
    let mut stored: HashMap<i64, Vec<u8>> = HashMap::new();
    while (stored.len() as i64) < high {
        let m = consumer
            .poll(TIMEOUT)
            .expect("records after restart")
            .unwrap();
        stored.insert(m.offset(), m.payload().unwrap().to_vec());
    }
    for (offset, payload) in &acked {
        assert_eq!(
            stored.get(offset),
            Some(payload),
            "acknowledged record at {offset}"
        );
    }
    // Offsets continue after the restart.
    let producer = broker.producer(&[("acks", "all")]);
    producer
        .send(
            BaseRecord::<(), _>::to("durable")
                .partition(0)
                .payload("after restart"),
        )
        .unwrap();
    flush(&producer);
    let (_, new_high) = consumer.fetch_watermarks("durable", 0, TIMEOUT).unwrap();
    assert_eq!(new_high, high + 1);
    broker.stop();
}
