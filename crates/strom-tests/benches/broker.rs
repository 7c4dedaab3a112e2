//! Broker benchmark with librdkafka as the client, both on this machine:
//! produce throughput (acks=1 and all, 100 B and 1 KiB records, 1 and 16
//! partitions), consume throughput, produce latency percentiles at a fixed
//! 50 MB/s, and the storage engine's raw append rate in the same run.
//!
//! `cargo bench -p strom-tests --bench broker`. `STROM_BENCH_RUNS` (default 3)
//! and `STROM_BENCH_MB` (data per throughput run, default 512) adjust it;
//! `STROM_BENCH_PARTITIONS` (e.g. `16`) and `STROM_BENCH_SIZES` (e.g.
//! `1024`) restrict the scenarios, `STROM_BENCH_LATENCY=0` skips latency.
//!
//! `STROM_BENCH_BASELINE=OLD/strom` compares instead: in each run, the
//! baseline binary and this build serve the same throughput scenarios in
//! turn (which goes first alternates between runs), and the report gives
//! both medians and the per-run ratio this build / baseline, so that a
//! change is judged on figures taken side by side on a noisy machine.
//! `STROM_BENCH_CANDIDATE=OTHER/strom` replaces this build (the baseline
//! itself gives an A/A run: the spread of the ratios is the noise).
#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::BrokerProcess;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use strom_protocol::builder::RecordBatchBuilder;
use strom_protocol::compression::Compression;
use support::{env_usize, produce_latency, producer, send, stats, wanted};

/// MB/s and msgs/s producing `count` records of `size` bytes.
fn produce_throughput(
    broker: &BrokerProcess,
    topic: &str,
    partitions: i32,
    size: usize,
    count: usize,
    acks: &str,
) -> (f64, f64) {
    let (producer, reports) = producer(broker, acks, "5");
    let payload = vec![b'x'; size];
    let start = Instant::now();
    for i in 0..count {
        send(
            &producer,
            topic,
            (i % partitions as usize) as i32,
            &payload,
            None,
        );
    }
    producer.flush(Duration::from_secs(300)).unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        reports.failures.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    ((count * size) as f64 / secs / 1e6, count as f64 / secs)
}

/// MB/s and msgs/s consuming `count` records from the start of `topic`.
fn consume_throughput(
    broker: &BrokerProcess,
    topic: &str,
    partitions: i32,
    count: usize,
) -> (f64, f64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", "bench-unused")
        .set("enable.auto.commit", "false")
        // librdkafka's defaults for fetch sizes (fetch.max.bytes 50 MiB,
        // max.partition.fetch.bytes 1 MiB), as applications run them.
        .set("queued.max.messages.kbytes", "1048576")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, Offset::Offset(0))
            .unwrap();
    }
    consumer.assign(&list).unwrap();
    let start = Instant::now();
    let (mut n, mut bytes) = (0usize, 0usize);
    while n < count {
        let m = consumer
            .poll(Duration::from_secs(30))
            .expect("records")
            .unwrap();
        bytes += m.payload().map_or(0, <[u8]>::len);
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    (bytes as f64 / secs / 1e6, n as f64 / secs)
}

/// The storage engine alone: MB/s appending 1 KiB records in 64 KiB batches.
fn raw_append(dir: &std::path::Path, total: usize) -> f64 {
    let log = strom_storage::PartitionLog::open(
        dir,
        strom_storage::LogConfig::default(),
        Arc::new(strom_storage::FileCache::default()),
        Arc::new(strom_storage::SystemClock),
        strom_storage::LoadOptions::default(),
    )
    .unwrap();
    let mut builder = RecordBatchBuilder::new(Compression::None);
    for i in 0..64 {
        builder.push(i, None, Some(&[b'z'; 1024]), &[]);
    }
    let batch = builder.build().unwrap();
    let n = total / batch.len();
    let start = Instant::now();
    for _ in 0..n {
        log.append_as_leader(&batch, 0, strom_storage::AppendOrigin::Client)
            .unwrap();
    }
    (n * batch.len()) as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// One throughput figure of a run: scenario name, MB/s, msgs/s.
type Figure = (String, f64, f64);

/// Every produce and consume throughput scenario on `broker`.
fn throughput(broker: &BrokerProcess, mb: usize) -> Vec<Figure> {
    let mut figures = Vec::new();
    for acks in ["1", "all"] {
        for size in [100usize, 1024]
            .into_iter()
            .filter(|s| wanted("STROM_BENCH_SIZES", *s))
        {
            for partitions in [1i32, 16]
                .into_iter()
                .filter(|p| wanted("STROM_BENCH_PARTITIONS", *p as usize))
            {
                let topic = format!("t-{acks}-{size}-{partitions}");
                broker.create_topic(&topic, partitions);
                let count = (mb << 20) / size / if size == 100 { 4 } else { 1 };
                let (mbs, msgs) = produce_throughput(broker, &topic, partitions, size, count, acks);
                figures.push((
                    format!("produce acks={acks:<3} {size:>4} B {partitions:>2} partitions"),
                    mbs,
                    msgs,
                ));
                if acks == "1" {
                    let (mbs, msgs) = consume_throughput(broker, &topic, partitions, count);
                    figures.push((
                        format!("consume          {size:>4} B {partitions:>2} partitions"),
                        mbs,
                        msgs,
                    ));
                }
            }
        }
    }
    figures
}

/// `STROM_BENCH_BASELINE`: this build against a baseline binary, in turn.
fn compare(baseline: &std::path::Path, runs: usize, mb: usize, root: &std::path::Path) {
    println!(
        "strom broker comparison (librdkafka client, same machine): this build vs {}, {runs} runs, {mb} MB per throughput run",
        baseline.display()
    );
    /// One scenario: name, baseline MB/s, candidate MB/s, their ratios.
    type Compared = (String, Vec<f64>, Vec<f64>, Vec<f64>);
    let mut table: Vec<Compared> = Vec::new();
    for run in 0..runs {
        let mut figures: [Vec<Figure>; 2] = [Vec::new(), Vec::new()];
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let dir = root.join(format!("{}-{run}", ["baseline", "candidate"][which]));
            let binary = if which == 0 {
                baseline.to_path_buf()
            } else {
                // `STROM_BENCH_CANDIDATE` (the baseline again, say, for an
                // A/A run that shows the noise) instead of this build.
                std::env::var_os("STROM_BENCH_CANDIDATE").map_or_else(
                    || std::path::PathBuf::from(env!("CARGO_BIN_EXE_strom-e2e")),
                    std::path::PathBuf::from,
                )
            };
            let broker = BrokerProcess::start_binary(&binary, &dir, "127.0.0.1:0", &[]);
            figures[which] = throughput(&broker, mb);
            broker.stop();
            std::fs::remove_dir_all(&dir).ok();
        }
        for (i, ((name, base, _), (_, candidate, _))) in
            figures[0].iter().zip(&figures[1]).enumerate()
        {
            println!("  run {run} {name}: ratio {:.3}", candidate / base);
            if run == 0 {
                table.push((name.clone(), vec![], vec![], vec![]));
            }
            table[i].1.push(*base);
            table[i].2.push(*candidate);
            table[i].3.push(candidate / base);
        }
        println!("run {run} done");
    }
    println!();
    for (name, base, candidate, ratios) in table {
        println!("{name:<44} baseline  {} MB/s", stats(base));
        println!("{:<44} this      {} MB/s", "", stats(candidate));
        let mut sorted = ratios.clone();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{:<44} ratio     median {:>9.3}  (min {:.3}, max {:.3})",
            "",
            sorted[sorted.len() / 2],
            sorted[0],
            sorted[sorted.len() - 1]
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = env_usize("STROM_BENCH_RUNS", 3);
    let mb = env_usize("STROM_BENCH_MB", 512);
    let root = tempfile::tempdir().unwrap();
    if let Some(baseline) = std::env::var_os("STROM_BENCH_BASELINE") {
        compare(std::path::Path::new(&baseline), runs, mb, root.path());
        return;
    }
    println!(
        "strom broker benchmark (librdkafka client, same machine): {runs} runs, {mb} MB per throughput run"
    );

    let mut raw = Vec::new();
    let mut rows: Vec<(String, Vec<f64>, Vec<f64>)> = Vec::new();
    let mut consume_rows: Vec<(String, Vec<f64>, Vec<f64>)> = Vec::new();
    let mut latency_rows: Vec<(String, Vec<Vec<f64>>)> = Vec::new();
    for run in 0..runs {
        raw.push(raw_append(
            &root.path().join(format!("raw-{run}")),
            mb << 20,
        ));
        let broker = BrokerProcess::start(&root.path().join(format!("broker-{run}")), &[]);
        for (name, mbs, msgs) in throughput(&broker, mb) {
            let rows = if name.starts_with("consume") {
                &mut consume_rows
            } else {
                &mut rows
            };
            match rows.iter_mut().find(|(n, _, _)| *n == name) {
                Some(row) => {
                    row.1.push(mbs);
                    row.2.push(msgs);
                }
                None => rows.push((name, vec![mbs], vec![msgs])),
            }
        }
        let latency = std::env::var("STROM_BENCH_LATENCY").map_or(true, |v| v != "0");
        for (i, acks) in ["1", "all"].iter().enumerate().filter(|_| latency) {
            let topic = format!("latency-{acks}");
            broker.create_topic(&topic, 1);
            let percentiles = produce_latency(&broker, &topic, 1024, 50.0, 5.0, acks);
            if run == 0 {
                latency_rows.push((format!("latency acks={acks} 1 KiB at 50 MB/s"), vec![]));
            }
            latency_rows[i].1.push(percentiles);
        }
        broker.stop();
        println!("run {run} done");
    }
    println!();
    println!(
        "{:<44} {} MB/s",
        "storage raw append (1 KiB in 64 KiB batches)",
        stats(raw.clone())
    );
    let raw_median = {
        let mut r = raw.clone();
        r.sort_by(|a, b| a.partial_cmp(b).unwrap());
        r[r.len() / 2]
    };
    for (name, mbs, msgs) in rows.iter().chain(&consume_rows) {
        let mut sorted = mbs.clone();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{name:<44} {} MB/s, {} msgs/s, {:.2}x raw append",
            stats(mbs.clone()),
            stats(msgs.clone()),
            sorted[sorted.len() / 2] / raw_median
        );
    }
    for (name, runs) in &latency_rows {
        let col = |i: usize| stats(runs.iter().map(|r| r[i]).collect());
        println!("{name:<44} p50 {} ms", col(0));
        println!("{:<44} p99 {} ms", "", col(1));
        println!("{:<44} p99.9 {} ms", "", col(2));
        println!("{:<44} max {} ms", "", col(3));
    }
}
