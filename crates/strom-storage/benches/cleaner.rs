//! Log cleaner benchmark: MB of log compacted per second.
//!
//! `cargo bench -p strom-storage --bench cleaner` (release). Each run writes a
//! fresh compacted log of 1 KiB values over 10,000 distinct keys, in 16 KiB
//! batches, rolls it so that all of it but the active segment is cleanable,
//! fsyncs, and times one `LogManager::clean_once` (offset map, rewrite,
//! swap). Throughput is the log bytes the clean covered (its rewrite read)
//! over the whole clean's time. Environment: `STROM_BENCH_DIR` (default:
//! the system temp dir), `STROM_BENCH_RUNS` (default 3), `STROM_CLEANER_BENCH_MB`
//! (record data per run, default 200).
#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strom_protocol::builder::RecordBatchBuilder;
use strom_protocol::compression::Compression;
use strom_storage::{
    AppendOrigin, CleanOutcome, CleanStats, CleanerConfig, Clock, LogConfig, LogManager,
    LogManagerConfig, SystemClock, TopicPartition,
};

const VALUE_BYTES: usize = 1024;
const KEYS: u64 = 10_000;
const RECORDS_PER_BATCH: usize = 16;
const SEGMENT_BYTES: u32 = 16 << 20;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn log_config() -> LogConfig {
    LogConfig {
        compact: true,
        delete: false,
        segment_bytes: SEGMENT_BYTES,
        max_message_bytes: 4 << 20,
        ..LogConfig::default()
    }
}

/// Writes at least `bytes` of record data as random keys with
/// half-compressible values, up to a roll; returns the log size on disk.
fn fill(
    manager: &LogManager,
    tp: &TopicPartition,
    codec: Compression,
    bytes: usize,
    seed: u64,
) -> u64 {
    let log = manager.get_or_create(tp, log_config()).unwrap();
    let mut rng = SmallRng::seed_from_u64(seed);
    let now = SystemClock.now_ms();
    let records = bytes / VALUE_BYTES;
    let mut value = vec![0u8; VALUE_BYTES];
    let mut written = 0;
    let segments = log.segment_count();
    // Then on until the log rolls, so that all of it is below the active
    // segment and cleanable.
    while written < records || log.segment_count() == segments {
        let mut builder = RecordBatchBuilder::new(codec);
        for _ in 0..RECORDS_PER_BATCH {
            let key = format!("key-{:05}", rng.random_range(0..KEYS));
            rng.fill(&mut value[..VALUE_BYTES / 2]);
            for (j, b) in value[VALUE_BYTES / 2..].iter_mut().enumerate() {
                *b = (written + j / 16) as u8;
            }
            builder.push(now, Some(key.as_bytes()), Some(&value), &[]);
            written += 1;
        }
        log.append_as_leader(&builder.build().unwrap(), 0, AppendOrigin::Client)
            .unwrap();
    }
    log.flush().unwrap();
    log.size_bytes()
}

fn settle() {
    let _ = Command::new("sync").status();
}

fn one_run(root: &Path, codec: Compression, bytes: usize, run: usize) -> (CleanStats, u64, u64) {
    let dir = root.join(format!("{codec}-{run}"));
    let config = LogManagerConfig {
        cleaner: CleanerConfig {
            enabled: false,
            ..CleanerConfig::default()
        },
        ..LogManagerConfig::new(&dir)
    };
    let manager = LogManager::open(config, Arc::new(SystemClock), &|_| log_config()).unwrap();
    let tp = TopicPartition::new("bench", 0);
    let before = fill(&manager, &tp, codec, bytes, run as u64);
    settle();
    let stats = manager.clean_once().unwrap();
    assert_eq!(stats.outcome, CleanOutcome::Completed, "{stats:?}");
    let after = manager.get(&tp).unwrap().size_bytes();
    manager.shutdown().unwrap();
    drop(manager);
    std::fs::remove_dir_all(&dir).unwrap();
    (stats, before, after)
}

fn median_min_max(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let base: PathBuf =
        std::env::var_os("STROM_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let runs = env_usize("STROM_BENCH_RUNS", 3).max(1);
    let bytes = env_usize("STROM_CLEANER_BENCH_MB", 200) << 20;
    let root = tempfile::tempdir_in(&base).unwrap();
    println!(
        "strom-storage cleaner benchmark: {runs} runs, {} MiB of 1 KiB values over {KEYS} keys per run, in {}",
        bytes >> 20,
        base.display()
    );
    for codec in [Compression::None, Compression::Lz4] {
        let mut rates = Vec::new();
        let mut record_rates = Vec::new();
        for run in 0..runs {
            let (stats, before, after) = one_run(root.path(), codec, bytes, run);
            let secs = stats.duration.as_secs_f64();
            let rate = stats.bytes_read as f64 / secs / 1e6;
            println!(
                "{codec} run {run}: log {:.1} MB -> {:.1} MB, cleaned {:.1} MB in {:.2} s ({rate:.0} MB/s; map {:.2} s over {:.1} MB, {} keys), records {} -> {}",
                before as f64 / 1e6,
                after as f64 / 1e6,
                stats.bytes_read as f64 / 1e6,
                secs,
                stats.map_duration.as_secs_f64(),
                stats.map_bytes_read as f64 / 1e6,
                stats.map_keys,
                stats.records_read,
                stats.records_kept,
            );
            rates.push(rate);
            record_rates.push(stats.records_read as f64 / secs / 1e6);
        }
        let (median, min, max) = median_min_max(rates);
        println!(
            "cleaner, {codec:<4}: median {median:.0} MB/s of log (min {min:.0}, max {max:.0})"
        );
        let (median, min, max) = median_min_max(record_rates);
        println!(
            "cleaner, {codec:<4}: median {median:.2} M records/s (min {min:.2}, max {max:.2})"
        );
    }
}
