//! Transactional produce throughput against idempotent produce, with
//! librdkafka: 100-byte records to one partition, acks=all, idempotent
//! versus transactions of 100 and of 10,000 records (each transaction:
//! AddPartitionsToTxn, the records, EndTxn with its marker).
//!
//! `cargo bench -p strom-tests --bench txn`. `STROM_BENCH_RUNS` (default 3)
//! runs per scenario, `STROM_BENCH_RECORDS` (default 200,000) records per
//! run, `STROM_BENCH_LINGER_MS` (default 5) the producer's `linger.ms`.
//! Client and broker share the machine's cores: compare ratios.
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

use common::BrokerProcess;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use support::env_usize;

const RECORD_BYTES: usize = 100;
const TIMEOUT: Duration = Duration::from_secs(120);

/// `STROM_BENCH_LINGER_MS`, default 5 (the producer's batching delay; a
/// transaction of few records waits it out once per partition).
fn linger_ms() -> usize {
    env_usize("STROM_BENCH_LINGER_MS", 5)
}

fn send(producer: &BaseProducer, topic: &str, payload: &[u8]) {
    let mut record = BaseRecord::<(), _>::to(topic).partition(0).payload(payload);
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, r)) => {
                // Queue full: serve delivery reports and try again.
                producer.poll(Duration::from_millis(1));
                record = r;
            }
        }
    }
}

/// Waits for every delivery report, serving them as they come. The crate's
/// `flush` (which a commit also does) polls in 100 ms steps and would add up
/// to that much per call.
fn drain(producer: &BaseProducer) {
    let deadline = Instant::now() + TIMEOUT;
    while producer.in_flight_count() > 0 {
        assert!(Instant::now() < deadline, "records delivered");
        producer.poll(Duration::from_millis(1));
    }
}

/// Produces `records` records; `per_txn` of them per transaction, or
/// idempotently when `None`. Returns the elapsed time.
fn run(broker: &BrokerProcess, topic: &str, records: usize, per_txn: Option<usize>) -> Duration {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &broker.bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", linger_ms().to_string())
        .set("queue.buffering.max.messages", "1000000");
    if per_txn.is_some() {
        config.set("transactional.id", format!("bench-{topic}"));
    }
    let producer: BaseProducer = config.create().unwrap();
    if per_txn.is_some() {
        producer.init_transactions(TIMEOUT).unwrap();
    }
    let payload = vec![b'x'; RECORD_BYTES];
    // Warm up outside the clock: metadata, connections, the producer id (an
    // idempotent producer gets it lazily), one transaction.
    if per_txn.is_some() {
        producer.begin_transaction().unwrap();
    }
    send(&producer, topic, &payload);
    drain(&producer);
    if per_txn.is_some() {
        producer.commit_transaction(TIMEOUT).unwrap();
    }
    let start = Instant::now();
    match per_txn {
        None => {
            for _ in 0..records {
                send(&producer, topic, &payload);
                producer.poll(Duration::ZERO);
            }
            drain(&producer);
        }
        Some(per_txn) => {
            let mut sent = 0;
            while sent < records {
                producer.begin_transaction().unwrap();
                let n = per_txn.min(records - sent);
                for _ in 0..n {
                    send(&producer, topic, &payload);
                    producer.poll(Duration::ZERO);
                }
                drain(&producer);
                producer.commit_transaction(TIMEOUT).unwrap();
                sent += n;
            }
        }
    }
    start.elapsed()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let runs = env_usize("STROM_BENCH_RUNS", 3).max(1);
    let records = env_usize("STROM_BENCH_RECORDS", 200_000).max(1);
    let root = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&root.path().join("data"), &[]);
    let scenarios: [(&str, Option<usize>); 3] = [
        ("idempotent", None),
        ("transactions of 100", Some(100)),
        ("transactions of 10,000", Some(10_000)),
    ];
    println!(
        "{records} records of {RECORD_BYTES} B per run, acks=all, linger.ms={}, one partition, {runs} runs per scenario",
        linger_ms()
    );
    let mut medians = Vec::new();
    for (index, (name, per_txn)) in scenarios.iter().enumerate() {
        let mut rates = Vec::with_capacity(runs);
        for run_index in 0..runs {
            let topic = format!("bench-{index}-{run_index}");
            broker.create_topic(&topic, 1);
            let elapsed = run(&broker, &topic, records, *per_txn);
            rates.push(records as f64 / elapsed.as_secs_f64());
        }
        let (min, max) = rates
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        let m = median(&mut rates);
        medians.push(m);
        println!(
            "{name:>24}: median {:>9.0} records/s ({:.1} MB/s), min {:.0}, max {:.0}",
            m,
            m * RECORD_BYTES as f64 / 1e6,
            min,
            max
        );
    }
    for (i, (name, _)) in scenarios.iter().enumerate().skip(1) {
        println!(
            "{name:>24}: {:.2} of idempotent throughput",
            medians[i] / medians[0]
        );
    }
    broker.stop();
}
