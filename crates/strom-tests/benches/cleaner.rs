//! Log cleaner benchmark with librdkafka as the client, both on this
//! machine: how fast the broker compacts a dirty log (MB of log per second,
//! from the moment the topic becomes compacted to the cleaner's checkpoint
//! reaching the active segment), and produce latency percentiles to another
//! topic of the records sent while the cleaner worked, against the same span
//! of a broker with the cleaner disabled.
//!
//! `cargo bench -p strom-tests --bench cleaner`. `STROM_BENCH_RUNS` (default 3)
//! and `STROM_BENCH_CLEANER_MB` (dirty log size, default 2048) adjust it.
#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use common::BrokerProcess;
use rdkafka::admin::{AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::producer::Producer;
use support::{env_usize, percentiles, produce_latency_samples, producer, stats};

/// Distinct keys in the dirty log: what survives compaction (10 MB of 1 KiB values).
const KEYS: usize = 10_000;
/// Produce rate and duration of the latency probe (longer than a clean).
const PROBE_MB_PER_S: f64 = 20.0;
const PROBE_SECS: f64 = 5.0;

/// Fills `topic` with `mb` MB of 1 KiB values over [`KEYS`] keys.
fn fill(broker: &BrokerProcess, topic: &str, mb: usize) {
    let (producer, reports) = producer(broker, "1", "5");
    let payload = vec![b'd'; 1024];
    for i in 0..(mb << 20) / 1024 {
        let key = format!("key-{:06}", i % KEYS);
        let mut record = rdkafka::producer::BaseRecord::with_opaque_to(topic, Box::new(None))
            .key(&key)
            .payload(&payload);
        while let Err((_, r)) = producer.send(record) {
            record = r;
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    producer.flush(Duration::from_secs(300)).unwrap();
    assert_eq!(
        reports.failures.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// The offset the cleaner checkpointed for partition 0 of `topic`.
fn cleaned_up_to(data: &Path, topic: &str) -> Option<i64> {
    let text = std::fs::read_to_string(data.join("cleaner-offset-checkpoint")).ok()?;
    text.lines().skip(2).find_map(|line| {
        let mut parts = line.split_whitespace();
        (parts.next()? == topic && parts.next()? == "0")
            .then(|| parts.next()?.parse().ok())
            .flatten()
    })
}

/// The base offset of the active (last) segment of partition 0 of `topic`.
fn active_base(data: &Path, topic: &str) -> i64 {
    std::fs::read_dir(data.join(format!("{topic}-0")))
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".log")?.parse::<i64>().ok()
        })
        .max()
        .unwrap_or(0)
}

struct Run {
    /// Produce latency percentiles over the span the cleaner worked.
    latency: Vec<f64>,
    /// Seconds to compact, with the cleaner on.
    clean_secs: Option<f64>,
}

/// One broker, with or without the cleaner; `window` is the span (from the
/// change to `compact`) whose produce latencies count when the cleaner is
/// off: the time the cleaner took in the run before.
fn run(root: &Path, mb: usize, cleaner: bool, window: Option<f64>) -> Run {
    let data = root.join(if cleaner { "on" } else { "off" });
    let enable = format!("log.cleaner.enable={cleaner}");
    let broker = BrokerProcess::start(&data, &[&enable, "log.cleaner.backoff.ms=100"]);
    let segment = ("segment.bytes", "67108864");
    broker.create_topic_with("dirty", 1, &[segment]);
    broker.create_topic_with("probe", 1, &[]);
    fill(&broker, "dirty", mb);
    let (admin, runtime) = broker.admin();
    let compact = AlterConfig::new(ResourceSpecifier::Topic("dirty"))
        .set(segment.0, segment.1)
        .set("cleanup.policy", "compact")
        .set("min.cleanable.dirty.ratio", "0.01");
    let target = active_base(&data, "dirty");
    let start = Instant::now();
    runtime
        .block_on(admin.alter_configs(&[compact], &AdminOptions::new()))
        .unwrap();
    // The cleaner's progress is watched beside the probe, from the change on.
    let watcher = cleaner.then(|| {
        let data = data.clone();
        std::thread::spawn(move || {
            while cleaned_up_to(&data, "dirty").is_none_or(|o| o < target) {
                assert!(
                    start.elapsed() < Duration::from_secs(600),
                    "cleaning finished"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            start.elapsed().as_secs_f64()
        })
    });
    let samples =
        produce_latency_samples(&broker, "probe", 1024, PROBE_MB_PER_S, PROBE_SECS, "all");
    let clean_secs = watcher.map(|w| w.join().unwrap());
    // Only what was sent while the cleaner worked (the same span without it).
    let window = clean_secs.or(window).unwrap_or(f64::MAX);
    let latency = percentiles(&samples, start, window);
    broker.stop();
    std::fs::remove_dir_all(&data).unwrap();
    Run {
        latency,
        clean_secs,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = env_usize("STROM_BENCH_RUNS", 3);
    let mb = env_usize("STROM_BENCH_CLEANER_MB", 2048);
    let root = tempfile::tempdir().unwrap();
    println!(
        "strom log cleaner benchmark: {runs} runs, {mb} MB dirty log of 1 KiB values over {KEYS} keys; \
         probe: 1 KiB records at {PROBE_MB_PER_S} MB/s for {PROBE_SECS} s, acks=all"
    );
    let mut throughput = Vec::new();
    let mut spans = Vec::new();
    let mut latencies: [Vec<Vec<f64>>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        // The cleaner first: its span is the window of the run without it.
        let on = run(root.path(), mb, true, None);
        let secs = on.clean_secs.unwrap();
        throughput.push(mb as f64 / secs);
        spans.push(secs);
        latencies[1].push(on.latency);
        latencies[0].push(run(root.path(), mb, false, Some(secs)).latency);
    }
    println!("cleaner throughput MB/s       {}", stats(throughput));
    println!(
        "seconds the cleaner worked (the latency window) {}",
        stats(spans)
    );
    for (i, name) in ["cleaner off", "cleaner on "].iter().enumerate() {
        for (j, p) in ["p50", "p99", "p99.9", "max"].iter().enumerate() {
            let v = latencies[i].iter().map(|l| l[j]).collect();
            println!("produce latency ms {name} {p:<5} {}", stats(v));
        }
    }
}
