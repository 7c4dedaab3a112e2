//! strom-client's producer against the real broker, read back by an
//! independent client (librdkafka): every acknowledged offset holds exactly
//! the record sent, with key, value, headers and timestamp, in every codec.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::{BrokerProcess, assign, wait_until};
use rdkafka::message::{Headers, Message, OwnedMessage};
use strom_client::partitioner::partition_for_key;
use strom_client::{ClientConfig, Error, ErrorCode, Producer, ProducerRecord, RecordMetadata};

const PARTITIONS: i32 = 3;

fn config(broker: &BrokerProcess, settings: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &broker.bootstrap);
    for (k, v) in settings {
        config.set(*k, *v);
    }
    config
}

/// Every record of `topic`/`partition` up to `count`, read by librdkafka.
fn read_partition(
    broker: &BrokerProcess,
    topic: &str,
    partition: i32,
    count: usize,
) -> Vec<OwnedMessage> {
    let consumer = broker.consumer();
    assign(&consumer, topic, partition, 0);
    let mut read = Vec::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            while let Some(m) = consumer.poll(Duration::from_millis(50)) {
                read.push(m.unwrap().detach());
            }
            read.len() >= count
        }),
        "read {} of {count} records of {topic}/{partition}",
        read.len()
    );
    read
}

/// The i-th record of a test stream: keyed (mostly), headered, with a
/// timestamp of its own, sometimes a tombstone.
fn record(topic: &str, i: usize) -> ProducerRecord {
    let mut r = ProducerRecord::new(topic).timestamp(1_700_000_000_000 + i as i64);
    if !i.is_multiple_of(7) {
        r = r.key(format!("key-{}", i % 50));
    }
    if !i.is_multiple_of(11) {
        r = r.value(format!("value-{i}-{}", "x".repeat(i % 300)));
    }
    r.header("i", Some(Bytes::from(i.to_string())))
        .header("empty", None)
        .header("i", Some(Bytes::from_static(b"again")))
}

fn check(sent: &ProducerRecord, meta: &RecordMetadata, got: &OwnedMessage) {
    assert_eq!(got.offset(), meta.offset);
    assert_eq!(got.key(), sent.key.as_deref());
    assert_eq!(got.payload(), sent.value.as_deref());
    assert_eq!(got.timestamp().to_millis(), sent.timestamp);
    let headers: Vec<(String, Option<Vec<u8>>)> = got
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    let expected: Vec<(String, Option<Vec<u8>>)> = sent
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.as_ref().map(|v| v.to_vec())))
        .collect();
    assert_eq!(headers, expected);
    if let Some(key) = &sent.key {
        assert_eq!(
            meta.partition as u32,
            partition_for_key(key, PARTITIONS as u32)
        );
    }
}

/// Sends `count` records of the test stream and checks each against what
/// librdkafka reads at its acknowledged offset.
async fn round_trip(broker: &BrokerProcess, topic: &str, settings: &[(&str, &str)], count: usize) {
    let producer = Producer::new(&config(broker, settings)).unwrap();
    let mut futures = Vec::new();
    for i in 0..count {
        let r = record(topic, i);
        futures.push((r.clone(), producer.send(r).await.unwrap()));
    }
    producer.flush().await.unwrap();
    let mut acked: HashMap<i32, Vec<(ProducerRecord, RecordMetadata)>> = HashMap::new();
    for (r, f) in futures {
        let meta = f.await.unwrap();
        assert_eq!(meta.topic, topic);
        acked.entry(meta.partition).or_default().push((r, meta));
    }
    for (partition, records) in acked {
        let topic = topic.to_owned();
        let read = tokio::task::block_in_place(|| {
            read_partition(broker, &topic, partition, records.len())
        });
        assert_eq!(
            read.len(),
            records.len(),
            "{topic}/{partition} has no extra records"
        );
        for ((sent, meta), got) in records.iter().zip(&read) {
            check(sent, meta, got);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_codec_and_ack_mode_round_trips_through_librdkafka() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("codec-{codec}");
        tokio::task::block_in_place(|| broker.create_topic(&topic, PARTITIONS));
        round_trip(&broker, &topic, &[("compression.type", codec)], 2_000).await;
    }
    tokio::task::block_in_place(|| broker.create_topic("acks-1", PARTITIONS));
    round_trip(&broker, "acks-1", &[("acks", "1"), ("linger.ms", "0")], 500).await;
    // Small batches and many requests in flight per partition.
    tokio::task::block_in_place(|| broker.create_topic("tiny-batches", PARTITIONS));
    round_trip(
        &broker,
        "tiny-batches",
        &[("batch.size", "200"), ("linger.ms", "0")],
        2_000,
    )
    .await;
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_zero_delivers_without_offsets_and_topics_are_auto_created() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let producer = Producer::new(&config(&broker, &[("acks", "0")])).unwrap();
    let mut futures = Vec::new();
    for i in 0..100 {
        let r = ProducerRecord::new("auto-created")
            .partition(0)
            .value(format!("v{i}"));
        futures.push(producer.send(r).await.unwrap());
    }
    producer.flush().await.unwrap();
    for f in futures {
        assert_eq!(f.await.unwrap().offset, -1);
    }
    let read = tokio::task::block_in_place(|| read_partition(&broker, "auto-created", 0, 100));
    let values: Vec<String> = read
        .iter()
        .map(|m| String::from_utf8(m.payload().unwrap().to_vec()).unwrap())
        .collect();
    assert_eq!(
        values,
        (0..100).map(|i| format!("v{i}")).collect::<Vec<_>>()
    );
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_blocks_then_times_out_and_oversized_records_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    tokio::task::block_in_place(|| broker.create_topic("bounded", 1));
    let producer = Producer::new(&config(
        &broker,
        &[
            ("buffer.memory", "65536"),
            ("max.block.ms", "300"),
            ("linger.ms", "0"),
        ],
    ))
    .unwrap();
    let too_big = ProducerRecord::new("bounded").value(vec![0u8; 70_000]);
    assert!(matches!(
        producer.send(too_big).await,
        Err(Error::Kafka {
            code: ErrorCode::MessageTooLarge,
            ..
        })
    ));
    producer
        .send(ProducerRecord::new("bounded").value("first"))
        .await
        .unwrap()
        .await
        .unwrap();
    // With the broker gone nothing is acknowledged, the buffer fills, and a
    // send gives up after max.block.ms.
    broker.kill9();
    let mut outcome = Ok(());
    for _ in 0..100 {
        match producer
            .send(ProducerRecord::new("bounded").value(vec![1u8; 4_000]))
            .await
        {
            Ok(_) => {}
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    assert!(matches!(outcome, Err(Error::Timeout(_))), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_partitions_are_checked_and_unknown_topics_refused_without_auto_create() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &["auto.create.topics.enable=false"],
    );
    tokio::task::block_in_place(|| broker.create_topic("three", PARTITIONS));
    let producer = Producer::new(&config(&broker, &[("max.block.ms", "2000")])).unwrap();
    let error = producer
        .send(
            ProducerRecord::new("three")
                .partition(PARTITIONS)
                .value("v"),
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::UnknownTopicOrPartition));
    let meta = producer
        .send(ProducerRecord::new("three").partition(2).value("v"))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!((meta.partition, meta.offset), (2, 0));
    let error = producer
        .send(ProducerRecord::new("missing").value("v"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::Timeout(_) | Error::Kafka { .. }),
        "{error:?}"
    );
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstraps_past_a_dead_address_and_delivers_across_a_broker_restart_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start(&data, &[]);
    tokio::task::block_in_place(|| broker.create_topic("restart", 1));
    // A port nothing listens on: bound, then closed.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = config(
        &broker,
        &[("linger.ms", "0"), ("reconnect.backoff.max.ms", "200")],
    );
    config.set("bootstrap.servers", format!("{dead},{}", broker.bootstrap));
    let producer = Producer::new(&config).unwrap();
    let first = producer
        .send(ProducerRecord::new("restart").value("before"))
        .await
        .unwrap();
    assert_eq!(first.await.unwrap().offset, 0);
    // Records sent while the broker is down are retried until it is back.
    let listen = broker.bootstrap.clone();
    broker.kill9();
    let mut pending = Vec::new();
    for i in 0..50 {
        pending.push(
            producer
                .send(ProducerRecord::new("restart").value(format!("during-{i}")))
                .await
                .unwrap(),
        );
    }
    let broker = tokio::task::block_in_place(|| BrokerProcess::start_at(&data, &listen, &[]));
    let mut offsets = Vec::new();
    for p in pending {
        offsets.push(p.await.unwrap().offset);
    }
    assert_eq!(offsets, (1..=50).collect::<Vec<i64>>());
    let read = tokio::task::block_in_place(|| read_partition(&broker, "restart", 0, 51));
    assert_eq!(read.len(), 51, "each record exactly once");
    broker.stop();
}
