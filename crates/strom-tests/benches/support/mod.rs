//! What the broker benchmarks share: a librdkafka producer that records
//! delivery latencies, paced sends, percentiles and summary statistics.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use crate::common::BrokerProcess;

/// Whether `value` passes the comma-separated filter in env var `name`.
pub fn wanted(name: &str, value: usize) -> bool {
    std::env::var(name).map_or(true, |list| {
        list.split(',').any(|v| v.trim() == value.to_string())
    })
}

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Delivery reports: count failures, record latencies when timing (when
/// each timed record was sent, and its latency in µs).
pub struct Reports {
    pub failures: std::sync::atomic::AtomicU64,
    pub latencies: std::sync::Mutex<Vec<(Instant, u64)>>,
}

pub struct Ctx(pub Arc<Reports>);
impl ClientContext for Ctx {}
impl ProducerContext for Ctx {
    type DeliveryOpaque = Box<Option<Instant>>;
    fn delivery(&self, result: &DeliveryResult<'_>, sent: Self::DeliveryOpaque) {
        if result.is_err() {
            self.0
                .failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(sent) = *sent {
            self.0
                .latencies
                .lock()
                .unwrap()
                .push((sent, sent.elapsed().as_micros() as u64));
        }
    }
}

pub fn producer(
    broker: &BrokerProcess,
    acks: &str,
    linger_ms: &str,
) -> (ThreadedProducer<Ctx>, Arc<Reports>) {
    producer_at(&broker.bootstrap, acks, linger_ms)
}

/// [`producer`] to the brokers at `bootstrap`.
pub fn producer_at(
    bootstrap: &str,
    acks: &str,
    linger_ms: &str,
) -> (ThreadedProducer<Ctx>, Arc<Reports>) {
    let reports = Arc::new(Reports {
        failures: Default::default(),
        latencies: Default::default(),
    });
    let producer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", acks)
        .set("linger.ms", linger_ms)
        .set("batch.size", "1000000")
        .set("batch.num.messages", "100000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("queue.buffering.max.messages", "1000000")
        .set("enable.idempotence", "false")
        .create_with_context(Ctx(Arc::clone(&reports)))
        .unwrap();
    (producer, reports)
}

pub fn send(
    producer: &ThreadedProducer<Ctx>,
    topic: &str,
    partition: i32,
    payload: &[u8],
    sent: Option<Instant>,
) {
    let mut record = BaseRecord::with_opaque_to(topic, Box::new(sent))
        .partition(partition)
        .payload(payload);
    loop {
        match producer.send::<(), [u8]>(record) {
            Ok(()) => return,
            Err((_, r)) => {
                record = r;
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
}

/// Latency percentiles (ms) producing `size`-byte records at `mb_per_s` for `secs`.
pub fn produce_latency(
    broker: &BrokerProcess,
    topic: &str,
    size: usize,
    mb_per_s: f64,
    secs: f64,
    acks: &str,
) -> Vec<f64> {
    let start = Instant::now();
    let samples = produce_latency_samples(broker, topic, size, mb_per_s, secs, acks);
    percentiles(&samples, start, f64::MAX)
}

/// Produces `size`-byte records at `mb_per_s` for `secs`, and returns when
/// each was sent and its latency in µs.
pub fn produce_latency_samples(
    broker: &BrokerProcess,
    topic: &str,
    size: usize,
    mb_per_s: f64,
    secs: f64,
    acks: &str,
) -> Vec<(Instant, u64)> {
    produce_latency_samples_at(&broker.bootstrap, topic, size, mb_per_s, secs, acks)
}

/// [`produce_latency_samples`] to the brokers at `bootstrap`.
pub fn produce_latency_samples_at(
    bootstrap: &str,
    topic: &str,
    size: usize,
    mb_per_s: f64,
    secs: f64,
    acks: &str,
) -> Vec<(Instant, u64)> {
    let (producer, reports) = producer_at(bootstrap, acks, "0");
    let payload = vec![b'y'; size];
    let per_sec = mb_per_s * 1e6 / size as f64;
    let total = (per_sec * secs) as usize;
    // Paced in 1 ms ticks with sleeps: a spinning pacer would take a whole
    // core from the broker and the client on a small machine.
    let start = Instant::now();
    let mut sent = 0usize;
    while sent < total {
        let due = ((start.elapsed().as_secs_f64() + 0.001) * per_sec) as usize;
        while sent < due.min(total) {
            send(&producer, topic, 0, &payload, Some(Instant::now()));
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    reports.latencies.lock().unwrap().clone()
}

/// p50, p99, p99.9 and max latency (ms) of the samples sent within
/// `window_secs` of `start`.
pub fn percentiles(samples: &[(Instant, u64)], start: Instant, window_secs: f64) -> Vec<f64> {
    let mut latencies: Vec<u64> = samples
        .iter()
        .filter(|(sent, _)| sent.saturating_duration_since(start).as_secs_f64() < window_secs)
        .map(|(_, l)| *l)
        .collect();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)] as f64 / 1000.0
    };
    vec![
        pct(0.5),
        pct(0.99),
        pct(0.999),
        *latencies.last().unwrap() as f64 / 1000.0,
    ]
}

pub fn stats(mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    format!(
        "median {:>9.1}  (min {:.1}, max {:.1})",
        v[v.len() / 2],
        v[0],
        v[v.len() - 1]
    )
}
