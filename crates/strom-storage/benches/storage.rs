//! Storage engine benchmark: append, read, recovery and open figures, with
//! `dd` measured on the same disk in the same run for the ratio.
//!
//! `cargo bench -p strom-storage` (release). Environment:
//! `STROM_BENCH_DIR` (default: the system temp dir), `STROM_BENCH_RUNS`
//! (default 5), `STROM_BENCH_GIB` (data per run, default 1),
//! `STROM_BENCH_PARTITIONS` (default 10000).
#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::cast_possible_truncation
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use strom_protocol::builder::RecordBatchBuilder;
use strom_protocol::compression::Compression;
use strom_storage::{
    AppendOrigin, FileCache, LoadOptions, LogConfig, LogManager, LogManagerConfig, PartitionLog,
    SystemClock, TopicPartition,
};

const RECORD_BYTES: usize = 1024;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A batch of `records` 1 KiB records.
fn batch(records: usize) -> bytes::Bytes {
    let mut builder = RecordBatchBuilder::new(Compression::None);
    let value: Vec<u8> = (0..RECORD_BYTES).map(|i| (i * 7) as u8).collect();
    for i in 0..records {
        builder.push(1_700_000_000_000 + i as i64, None, Some(&value), &[]);
    }
    builder.build().unwrap()
}

fn log_config() -> LogConfig {
    LogConfig {
        max_message_bytes: 4 << 20,
        segment_bytes: i32::MAX as u32,
        ..LogConfig::default()
    }
}

fn open(dir: &Path, options: LoadOptions) -> PartitionLog {
    PartitionLog::open(
        dir,
        log_config(),
        Arc::new(FileCache::default()),
        Arc::new(SystemClock),
        options,
    )
    .unwrap()
}

/// Writes back all dirty pages, so that one phase's writeback does not slow
/// the next: every phase starts from the same clean page cache.
fn settle() {
    let _ = Command::new("sync").status();
}

/// MB/s of `dd` writing `bytes` in blocks of `block` into the page cache.
fn dd(dir: &Path, bytes: u64, block: u64) -> f64 {
    let path = dir.join("dd.bin");
    settle();
    let start = Instant::now();
    let status = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", path.display()))
        .arg(format!("bs={block}"))
        .arg(format!("count={}", bytes / block))
        .arg("status=none")
        .status()
        .expect("dd runs");
    let elapsed = start.elapsed();
    assert!(status.success());
    std::fs::remove_file(&path).unwrap();
    bytes as f64 / elapsed.as_secs_f64() / 1e6
}

/// Appends `total` bytes of `batch` to a fresh log; returns MB/s and the dir.
fn append(dir: &Path, batch: &[u8], total: u64) -> f64 {
    let log = open(dir, LoadOptions::default());
    let n = total / batch.len() as u64;
    settle();
    let start = Instant::now();
    for _ in 0..n {
        log.append_as_leader(batch, 0, AppendOrigin::Client)
            .unwrap();
    }
    let elapsed = start.elapsed();
    drop(log); // unclean on purpose: the recovery benchmark reopens it
    (n * batch.len() as u64) as f64 / elapsed.as_secs_f64() / 1e6
}

/// Reads the whole log in 1 MiB fetches; returns MB/s.
fn read_all(dir: &Path) -> f64 {
    let log = open(
        dir,
        LoadOptions {
            clean_shutdown: true,
            ..LoadOptions::default()
        },
    );
    let mut buf = BytesMut::with_capacity(2 << 20);
    let mut offset = 0;
    let mut bytes = 0u64;
    let start = Instant::now();
    while offset < log.log_end_offset() {
        let read = log.read(offset, 1 << 20, None, true).unwrap();
        buf.clear();
        read.records.read_into(&mut buf).unwrap();
        bytes += buf.len() as u64;
        let mut last_next = offset;
        for b in strom_protocol::record_batch::batches(&buf) {
            last_next = b.unwrap().header.next_offset();
        }
        offset = last_next;
    }
    bytes as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// Reopens a log left without a clean close; returns (seconds, bytes).
fn recover(dir: &Path) -> (f64, u64) {
    let start = Instant::now();
    let log = open(dir, LoadOptions::default());
    let elapsed = start.elapsed();
    (elapsed.as_secs_f64(), log.size_bytes())
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Stats {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}

fn report(name: &str, unit: &str, v: Vec<f64>) {
    let s = stats(v);
    println!(
        "{name:<44} median {:>9.2} {unit}  (min {:.2}, max {:.2})",
        s.median, s.min, s.max
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists; nothing to list
    }
    let base: PathBuf =
        std::env::var_os("STROM_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let runs = env_usize("STROM_BENCH_RUNS", 5);
    let total = env_usize("STROM_BENCH_GIB", 1) as u64 * (1 << 30);
    let root = tempfile::tempdir_in(&base).unwrap();
    println!(
        "strom-storage benchmark: {runs} runs, {} MiB per run, in {}",
        total >> 20,
        base.display()
    );

    let small = batch(16); // 16 KiB batches
    let large = batch(1024); // 1 MiB batches
    let (mut dd_1m, mut dd_16k, mut app_16k, mut app_1m, mut reads, mut recovery) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut ratio_16k, mut ratio_1m, mut dd_std) = (vec![], vec![], vec![]);
    for run in 0..runs {
        // Each append phase right after dd with the very write sizes the log
        // makes (a batch is not a whole number of pages); dd bs=1M as the
        // usual page-cache figure.
        let d16 = dd(root.path(), total, small.len() as u64);
        let dir = root.path().join(format!("small-{run}"));
        let a16 = append(&dir, &small, total);
        std::fs::remove_dir_all(&dir).unwrap();
        let d1 = dd(root.path(), total, large.len() as u64);
        let dir = root.path().join(format!("large-{run}"));
        let a1 = append(&dir, &large, total);
        let (secs, bytes) = recover(&dir);
        recovery.push(bytes as f64 / secs / 1e6);
        reads.push(read_all(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
        dd_std.push(dd(root.path(), total, 1 << 20));
        println!(
            "run {run}: dd {}B {d16:.0} MB/s, append 16 KiB batches {a16:.0} MB/s, dd {}B {d1:.0} MB/s, append 1 MiB batches {a1:.0} MB/s, recovery {:.2} s",
            small.len(),
            large.len(),
            secs
        );
        dd_1m.push(d1);
        dd_16k.push(d16);
        app_16k.push(a16);
        app_1m.push(a1);
        ratio_16k.push(a16 / d16);
        ratio_1m.push(a1 / d1);
    }
    println!();
    report("dd bs=1M into page cache", "MB/s", dd_std);
    report(
        &format!("dd bs={} (16 KiB batch size)", small.len()),
        "MB/s",
        dd_16k,
    );
    report(
        &format!("dd bs={} (1 MiB batch size)", large.len()),
        "MB/s",
        dd_1m,
    );
    report("append, 1 KiB records in 16 KiB batches", "MB/s", app_16k);
    report("append, 1 KiB records in 1 MiB batches", "MB/s", app_1m);
    report("ratio append / dd, 16 KiB batches (per run)", "", ratio_16k);
    report("ratio append / dd, 1 MiB batches (per run)", "", ratio_1m);
    report("read from page cache, 1 MiB fetches", "MB/s", reads);
    report("recovery of a 1 GiB segment", "MB/s", recovery);

    // Opening many partitions.
    let partitions = env_usize("STROM_BENCH_PARTITIONS", 10_000);
    let dir = root.path().join("many");
    {
        let manager = LogManager::open(LogManagerConfig::new(&dir), Arc::new(SystemClock), &|_| {
            LogConfig::default()
        })
        .unwrap();
        let one = batch(1);
        for p in 0..partitions {
            let tp = TopicPartition::new(format!("topic{}", p / 100), (p % 100) as i32);
            let log = manager.get_or_create(&tp, LogConfig::default()).unwrap();
            log.append_as_leader(&one, 0, AppendOrigin::Client).unwrap();
        }
        manager.shutdown().unwrap();
    }
    let mut open_times = vec![];
    for _ in 0..runs.min(3) {
        let fds_before = open_fds();
        let rss_before = rss_bytes();
        let start = Instant::now();
        let manager = LogManager::open(LogManagerConfig::new(&dir), Arc::new(SystemClock), &|_| {
            LogConfig::default()
        })
        .unwrap();
        let elapsed = start.elapsed();
        open_times.push(elapsed.as_secs_f64() * 1000.0);
        let rss = rss_bytes().saturating_sub(rss_before);
        println!(
            "opened {partitions} partitions in {:.0} ms: {} files open (cache bound {}), process fds +{}, RSS +{:.1} MiB ({} bytes per partition), accounted heap {} bytes per partition",
            elapsed.as_secs_f64() * 1000.0,
            manager.file_cache().open_files(),
            manager.file_cache().capacity(),
            open_fds().saturating_sub(fds_before),
            rss as f64 / (1 << 20) as f64,
            rss / partitions as u64,
            manager.memory_bytes() / partitions,
        );
        manager.shutdown().unwrap();
        drop(manager);
        std::thread::sleep(Duration::from_millis(10));
    }
    report(
        &format!("open {partitions} partitions (clean)"),
        "ms",
        open_times,
    );
}
