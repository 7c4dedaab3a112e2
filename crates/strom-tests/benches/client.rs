//! strom-client against librdkafka on the same broker and machine: produce
//! and consume throughput at 100 B and 1 KiB records, both clients with
//! acks=all, idempotence, linger.ms=5 and 1 MB batches (librdkafka's
//! default batch size), no compression, 4 partitions. Each run measures both
//! clients one after the other on fresh topics, and reports our rate over
//! theirs for that run, so machine noise hits both sides alike.
//!
//! `cargo bench -p strom-tests --bench client`. `STROM_BENCH_RUNS` (default 3),
//! `STROM_BENCH_MB` (data per measurement, default 128) and
//! `STROM_BENCH_SIZES` (e.g. `100`) adjust it.
#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::BrokerProcess;
use rdkafka::ClientConfig as RdConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use rdkafka::{Offset as RdOffset, TopicPartitionList};
use strom_client::{ClientConfig, Consumer, Producer, ProducerRecord, TopicPartition};
use support::{env_usize, stats, wanted};

const PARTITIONS: i32 = 4;

fn ours_produce(
    broker: &BrokerProcess,
    rt: &tokio::runtime::Runtime,
    topic: &str,
    size: usize,
    count: usize,
) -> f64 {
    rt.block_on(async {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &broker.bootstrap)
            .set("linger.ms", "5")
            .set("batch.size", "1000000")
            .set("buffer.memory", "268435456");
        let producer = Producer::new(&config).unwrap();
        let payload = Bytes::from(vec![b'x'; size]);
        let start = Instant::now();
        let mut checks = Vec::new();
        for i in 0..count {
            let record = ProducerRecord::new(topic)
                .partition((i % PARTITIONS as usize) as i32)
                .value(payload.clone());
            let delivery = producer.send(record).await.unwrap();
            if i % 10_000 == 0 || i + 1 == count {
                checks.push(delivery);
            }
        }
        producer.flush().await.unwrap();
        let secs = start.elapsed().as_secs_f64();
        for delivery in checks {
            delivery.await.unwrap();
        }
        count as f64 / secs
    })
}

fn theirs_produce(broker: &BrokerProcess, topic: &str, size: usize, count: usize) -> f64 {
    let producer: ThreadedProducer<DefaultProducerContext> = RdConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("enable.idempotence", "true")
        .set("queue.buffering.max.kbytes", "262144")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let payload = vec![b'x'; size];
    let start = Instant::now();
    for i in 0..count {
        let mut record = BaseRecord::<(), [u8]>::to(topic)
            .partition((i % PARTITIONS as usize) as i32)
            .payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(300)).unwrap();
    count as f64 / start.elapsed().as_secs_f64()
}

fn ours_consume(
    broker: &BrokerProcess,
    rt: &tokio::runtime::Runtime,
    topic: &str,
    count: usize,
) -> f64 {
    rt.block_on(async {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &broker.bootstrap)
            .set("auto.offset.reset", "earliest");
        let consumer = Consumer::new(&config).unwrap();
        let partitions: Vec<TopicPartition> = (0..PARTITIONS)
            .map(|p| TopicPartition::new(topic, p))
            .collect();
        let start = Instant::now();
        consumer.assign(&partitions);
        let mut n = 0;
        while n < count {
            let records = consumer.poll(Duration::from_secs(30)).await.unwrap();
            assert!(!records.is_empty(), "no records within 30 s");
            n += records.len();
        }
        count as f64 / start.elapsed().as_secs_f64()
    })
}

fn theirs_consume(broker: &BrokerProcess, topic: &str, count: usize) -> f64 {
    let consumer: BaseConsumer = RdConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", "bench-unused")
        .set("enable.auto.commit", "false")
        .set("queued.max.messages.kbytes", "1048576")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition_offset(topic, p, RdOffset::Offset(0))
            .unwrap();
    }
    let start = Instant::now();
    consumer.assign(&list).unwrap();
    let mut n = 0;
    while n < count {
        let m = consumer
            .poll(Duration::from_secs(30))
            .expect("records")
            .unwrap();
        std::hint::black_box(m.payload());
        n += 1;
    }
    count as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = env_usize("STROM_BENCH_RUNS", 3);
    let mb = env_usize("STROM_BENCH_MB", 128);
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "strom-client vs librdkafka, {runs} runs of {mb} MB each, {PARTITIONS} partitions (msgs/s; ratio = ours / librdkafka)"
    );
    for size in [100usize, 1024] {
        if !wanted("STROM_BENCH_SIZES", size) {
            continue;
        }
        let count = mb * 1_000_000 / size;
        let (mut ours_p, mut theirs_p, mut ratio_p) = (Vec::new(), Vec::new(), Vec::new());
        let (mut ours_c, mut theirs_c, mut ratio_c) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            let (ours_topic, theirs_topic) =
                (format!("ours-{size}-{run}"), format!("theirs-{size}-{run}"));
            broker.create_topic(&ours_topic, PARTITIONS);
            broker.create_topic(&theirs_topic, PARTITIONS);
            let o = ours_produce(&broker, &rt, &ours_topic, size, count);
            let t = theirs_produce(&broker, &theirs_topic, size, count);
            ours_p.push(o);
            theirs_p.push(t);
            ratio_p.push(o / t);
            // Each consumer reads the other's topic too: same bytes either way.
            let o = ours_consume(&broker, &rt, &theirs_topic, count);
            let t = theirs_consume(&broker, &ours_topic, count);
            ours_c.push(o);
            theirs_c.push(t);
            ratio_c.push(o / t);
        }
        println!("{size:>5} B produce  ours       {}", stats(ours_p));
        println!("{size:>5} B produce  librdkafka {}", stats(theirs_p));
        println!(
            "{size:>5} B produce  ratio      {}",
            stats(ratio_p.iter().map(|r| r * 100.0).collect())
        );
        println!("{size:>5} B consume  ours       {}", stats(ours_c));
        println!("{size:>5} B consume  librdkafka {}", stats(theirs_c));
        println!(
            "{size:>5} B consume  ratio      {}",
            stats(ratio_c.iter().map(|r| r * 100.0).collect())
        );
    }
    broker.stop();
}
