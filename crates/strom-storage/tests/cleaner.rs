//! The log cleaner on real files: what compaction keeps, when it runs, and
//! that the log reads, looks up timestamps and reopens as before.
#![allow(clippy::cast_possible_truncation, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use strom_protocol::builder::RecordBatchBuilder;
use strom_protocol::compression::Compression;
use strom_protocol::record;
use strom_protocol::record_batch::{self, BatchHeader};
use strom_storage::cleaner::CLEANER_OFFSET_CHECKPOINT;
use strom_storage::{
    AppendOrigin, CleanOutcome, CleanStats, CleanerConfig, LogConfig, LogManager, LogManagerConfig,
    ManualClock, PartitionLog, TopicPartition,
};

const T0: i64 = 1_700_000_000_000;

/// One stored record: key and value, by offset.
type Contents = BTreeMap<i64, (Option<Bytes>, Option<Bytes>)>;

struct Fixture {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    manager: Arc<LogManager>,
}

fn open_manager(dir: &Path, clock: &Arc<ManualClock>) -> Arc<LogManager> {
    let config = LogManagerConfig {
        cleaner: CleanerConfig {
            enabled: false,
            ..CleanerConfig::default()
        },
        // The background thread never starts a round during a test, so
        // dropping the manager is a crash at a known point.
        periodic_interval_ms: 3_600_000,
        ..LogManagerConfig::new(dir)
    };
    LogManager::open(config, clock.clone(), &|_| compacted()).unwrap()
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let manager = open_manager(dir.path(), &clock);
        Self {
            dir,
            clock,
            manager,
        }
    }

    fn log(&self, config: LogConfig) -> Arc<PartitionLog> {
        self.manager.get_or_create(&tp(), config).unwrap()
    }

    /// Shuts down (`clean`) or just drops (a crash) the manager and opens
    /// the data directory again.
    fn reopen(self, clean: bool) -> Self {
        let Self {
            dir,
            clock,
            manager,
        } = self;
        if clean {
            manager.shutdown().unwrap();
        }
        drop(manager);
        let manager = open_manager(dir.path(), &clock);
        Self {
            dir,
            clock,
            manager,
        }
    }

    fn clean(&self) -> CleanStats {
        let stats = self.manager.clean_once().expect("a log to clean");
        assert_eq!(stats.outcome, CleanOutcome::Completed, "{stats:?}");
        stats
    }
}

fn tp() -> TopicPartition {
    TopicPartition::new("compacted", 0)
}

fn compacted() -> LogConfig {
    LogConfig {
        compact: true,
        delete: false,
        segment_bytes: 4_000,
        index_interval_bytes: 256,
        min_cleanable_dirty_ratio: 0.0,
        ..LogConfig::default()
    }
}

/// A batch of `(key, value)` records at `timestamp_ms` and up.
fn keyed(records: &[(&str, Option<&str>)], timestamp_ms: i64, codec: Compression) -> Bytes {
    let mut builder = RecordBatchBuilder::new(codec);
    for (i, (key, value)) in records.iter().enumerate() {
        builder.push(
            timestamp_ms + i as i64,
            Some(key.as_bytes()),
            value.map(str::as_bytes),
            &[("h", Some(b"v"))],
        );
    }
    builder.build().unwrap()
}

fn append(log: &PartitionLog, records: &[(&str, Option<&str>)], timestamp_ms: i64) {
    log.append_as_leader(
        &keyed(records, timestamp_ms, Compression::None),
        0,
        AppendOrigin::Client,
    )
    .unwrap();
}

/// Writes `rounds` rounds of one record for each of `keys` keys, a value of
/// `value_len` bytes naming the round, one batch per record.
fn write_rounds(
    log: &PartitionLog,
    keys: usize,
    rounds: usize,
    value_len: usize,
    timestamp_ms: i64,
) {
    for round in 0..rounds {
        for k in 0..keys {
            let value = format!("r{round}-{}", "v".repeat(value_len));
            append(
                log,
                &[(&format!("k{k}"), Some(&value))],
                timestamp_ms + round as i64,
            );
        }
    }
}

/// Rolls the active segment by filling it with records of a key used nowhere
/// else, so that everything before becomes cleanable.
fn roll(log: &PartitionLog, timestamp_ms: i64) {
    let before = log.segment_count();
    while log.segment_count() == before {
        append(log, &[("filler", Some(&"f".repeat(500)))], timestamp_ms);
    }
}

/// Every stored batch, read through `read` as a fetch would.
fn batches(log: &PartitionLog) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let bytes = log
            .read(offset, 1 << 20, None, true)
            .unwrap()
            .records
            .read()
            .unwrap();
        if bytes.is_empty() {
            break;
        }
        for batch in record_batch::batches(&bytes) {
            let batch = batch.unwrap();
            record_batch::validate_batch(batch.bytes).unwrap();
            assert!(batch.header.base_offset >= offset, "offsets only grow");
            offset = batch.header.next_offset();
            out.push(bytes.slice_ref(batch.bytes));
        }
    }
    out
}

fn contents(log: &PartitionLog) -> Contents {
    let mut out = Contents::new();
    for batch in batches(log) {
        let header = BatchHeader::parse(&batch).unwrap();
        for r in record::decode_records(&batch, 1 << 24).unwrap() {
            assert!(out.insert(r.offset(&header), (r.key, r.value)).is_none());
        }
    }
    out
}

/// The offset and value of each key's last record.
fn latest(contents: &Contents) -> BTreeMap<Bytes, (i64, Option<Bytes>)> {
    let mut out = BTreeMap::new();
    for (offset, (key, value)) in contents {
        out.insert(key.clone().unwrap(), (*offset, value.clone()));
    }
    out
}

fn key_offsets(contents: &Contents, key: &str) -> Vec<i64> {
    contents
        .iter()
        .filter(|(_, (k, _))| k.as_deref() == Some(key.as_bytes()))
        .map(|(o, _)| *o)
        .collect()
}

#[test]
fn the_latest_value_of_each_key_survives_at_its_offset() {
    let f = Fixture::new();
    let log = f.log(compacted());
    write_rounds(&log, 20, 10, 100, T0);
    roll(&log, T0);
    let before = contents(&log);
    let active_base = *log.segment_base_offsets().last().unwrap();
    let stats = f.clean();
    assert_eq!(stats.end_offset, active_base);
    assert!(stats.records_removed() > 0 && stats.bytes_written < stats.bytes_read);
    let after = contents(&log);
    // Below the active segment, exactly one record per key: its last.
    let cleaned: Contents = after
        .range(..active_base)
        .map(|(o, r)| (*o, r.clone()))
        .collect();
    assert_eq!(
        latest(&cleaned),
        latest(
            &before
                .range(..active_base)
                .map(|(o, r)| (*o, r.clone()))
                .collect()
        )
    );
    assert_eq!(cleaned.len(), 21, "20 keys and the filler");
    for (offset, record) in &after {
        assert_eq!(
            before.get(offset),
            Some(record),
            "records keep their offsets"
        );
    }
    assert_eq!(latest(&after), latest(&before));
    assert_eq!(log.log_end_offset(), *before.keys().last().unwrap() + 1);
    assert_eq!(f.manager.cleaner_checkpoint(&tp()), Some(active_base));
    let text = std::fs::read_to_string(f.dir.path().join(CLEANER_OFFSET_CHECKPOINT)).unwrap();
    assert_eq!(text, format!("0\n1\ncompacted 0 {active_base}\n"));
    // Nothing left to do until more is written.
    assert!(f.manager.clean_once().is_none());

    // Reopening after a clean shutdown or a crash keeps everything.
    drop(log);
    let f = f.reopen(true);
    assert_eq!(contents(&f.manager.get(&tp()).unwrap()), after);
    assert_eq!(f.manager.cleaner_checkpoint(&tp()), Some(active_base));
    let f = f.reopen(false);
    assert_eq!(contents(&f.manager.get(&tp()).unwrap()), after);
}

#[test]
fn later_cleans_merge_new_data_into_the_clean_part() {
    let f = Fixture::new();
    let log = f.log(compacted());
    write_rounds(&log, 10, 5, 50, T0);
    roll(&log, T0);
    f.clean();
    write_rounds(&log, 10, 5, 50, T0 + 100);
    roll(&log, T0 + 100);
    let segments_before = log.segment_count();
    let before = contents(&log);
    let stats = f.clean();
    assert!(stats.first_dirty_offset > 0);
    let after = contents(&log);
    assert_eq!(latest(&after), latest(&before));
    for k in 0..10 {
        assert_eq!(key_offsets(&after, &format!("k{k}")).len(), 1, "k{k}");
    }
    // Small cleaned segments were grouped into fewer.
    assert!(
        log.segment_count() < segments_before,
        "{:?}",
        log.segment_base_offsets()
    );
}

#[test]
fn tombstones_stay_for_delete_retention_ms_after_their_first_clean() {
    let f = Fixture::new();
    let config = LogConfig {
        delete_retention_ms: 10_000,
        ..compacted()
    };
    let log = f.log(config);
    append(&log, &[("gone", Some("v1")), ("kept", Some("v1"))], T0);
    append(&log, &[("gone", None)], T0);
    roll(&log, T0);
    f.clean();
    let tombstone = key_offsets(&contents(&log), "gone");
    assert_eq!(tombstone.len(), 1, "only the tombstone of `gone` is left");
    assert_eq!(contents(&log)[&tombstone[0]].1, None);

    // Before the horizon (first clean + delete.retention.ms) it stays.
    f.clock.advance_ms(9_999);
    append(&log, &[("other", Some("x"))], T0);
    roll(&log, T0);
    f.clean();
    assert_eq!(key_offsets(&contents(&log), "gone"), tombstone);

    // After it, it goes; other keys stay.
    f.clock.advance_ms(1);
    append(&log, &[("other", Some("y"))], T0);
    roll(&log, T0);
    f.clean();
    let after = contents(&log);
    assert!(key_offsets(&after, "gone").is_empty());
    assert_eq!(key_offsets(&after, "kept").len(), 1);
}

#[test]
fn min_compaction_lag_protects_young_records() {
    let f = Fixture::new();
    let config = LogConfig {
        min_compaction_lag_ms: 60_000,
        ..compacted()
    };
    let log = f.log(config);
    write_rounds(&log, 5, 5, 50, T0);
    roll(&log, T0);
    let before = contents(&log);
    assert!(
        f.manager.clean_once().is_none(),
        "every segment is too young"
    );
    assert_eq!(contents(&log), before);
    // The newest record written is at T0 + 4: cleanable once now - lag
    // reaches it.
    f.clock.advance_ms(60_003);
    assert!(
        f.manager.clean_once().is_none(),
        "not older than the lag yet"
    );
    f.clock.advance_ms(1);
    f.clean();
    assert_eq!(latest(&contents(&log)), latest(&before));
    assert!(contents(&log).len() < before.len());
}

#[test]
fn min_compaction_lag_stops_at_the_first_young_segment() {
    let f = Fixture::new();
    let config = LogConfig {
        min_compaction_lag_ms: 60_000,
        ..compacted()
    };
    let log = f.log(config);
    write_rounds(&log, 5, 5, 50, T0 - 120_000);
    roll(&log, T0 - 120_000);
    let young_base = *log.segment_base_offsets().last().unwrap();
    write_rounds(&log, 5, 5, 50, T0);
    roll(&log, T0);
    let stats = f.clean();
    assert_eq!(stats.first_uncleanable_offset, young_base);
    let after = contents(&log);
    // Young duplicates remain; of the old ones, only the last (the young
    // records are not in the offset map, so they supersede nothing yet).
    assert_eq!(
        key_offsets(&after, "k0")
            .iter()
            .filter(|o| **o >= young_base)
            .count(),
        5
    );
    assert_eq!(
        key_offsets(&after, "k0")
            .iter()
            .filter(|o| **o < young_base)
            .count(),
        1
    );
}

#[test]
fn the_dirty_ratio_threshold_is_respected() {
    let f = Fixture::new();
    let config = LogConfig {
        min_cleanable_dirty_ratio: 0.5,
        ..compacted()
    };
    let log = f.log(config);
    // Distinct keys: cleaning keeps everything, so the clean part stays large.
    for k in 0..40 {
        append(&log, &[(&format!("d{k}"), Some(&"x".repeat(200)))], T0);
    }
    roll(&log, T0);
    let first = f.clean();
    assert!((first.dirty_ratio - 1.0).abs() < 1e-9);
    // A little new data: well below half the log.
    for k in 0..5 {
        append(&log, &[(&format!("d{k}"), Some(&"y".repeat(200)))], T0);
    }
    roll(&log, T0);
    assert!(
        f.manager.clean_once().is_none(),
        "below min.cleanable.dirty.ratio"
    );
    // Enough new data to pass it.
    for round in 0..6 {
        for k in 0..10 {
            append(
                &log,
                &[(
                    &format!("d{k}"),
                    Some(&format!("{round}{}", "z".repeat(200))),
                )],
                T0,
            );
        }
    }
    roll(&log, T0);
    let second = f.clean();
    assert!(second.dirty_ratio >= 0.5, "{}", second.dirty_ratio);
}

#[test]
fn max_compaction_lag_forces_a_clean_below_the_ratio() {
    let f = Fixture::new();
    let config = LogConfig {
        min_cleanable_dirty_ratio: 0.99,
        ..compacted()
    };
    let log = f.log(config.clone());
    for k in 0..40 {
        append(&log, &[(&format!("d{k}"), Some(&"x".repeat(200)))], T0);
    }
    roll(&log, T0);
    // Everything is dirty at first: the first clean passes any ratio.
    f.clean();
    append(&log, &[("d1", Some("new"))], T0);
    roll(&log, T0);
    assert!(f.manager.clean_once().is_none(), "ratio far below 0.99");
    log.set_config(LogConfig {
        max_compaction_lag_ms: 60_000,
        ..config
    });
    assert!(f.manager.clean_once().is_none(), "not yet past the lag");
    f.clock.advance_ms(60_001);
    let stats = f.clean();
    assert!(stats.dirty_ratio < 0.99);
    assert_eq!(key_offsets(&contents(&log), "d1").len(), 1);
}

#[test]
fn compressed_batches_keep_codec_and_producer_fields() {
    for codec in [
        Compression::Gzip,
        Compression::Lz4,
        Compression::Zstd,
        Compression::Snappy,
    ] {
        let f = Fixture::new();
        let log = f.log(compacted());
        let mut sequence = 0;
        for round in 0..4 {
            let mut builder = RecordBatchBuilder::new(codec).producer(77, 3, sequence);
            for k in 0..6 {
                let value = format!("{codec}-{round}-{k}-{}", "c".repeat(100));
                builder.push(
                    T0 + round,
                    Some(format!("k{k}").as_bytes()),
                    Some(value.as_bytes()),
                    &[],
                );
            }
            sequence += 6;
            log.append_as_leader(&builder.build().unwrap(), 0, AppendOrigin::Client)
                .unwrap();
        }
        // Half the keys again, so that the last batch keeps some records.
        let mut builder = RecordBatchBuilder::new(codec).producer(77, 3, sequence);
        for k in 0..3 {
            builder.push(T0 + 9, Some(format!("k{k}").as_bytes()), Some(b"last"), &[]);
        }
        log.append_as_leader(&builder.build().unwrap(), 0, AppendOrigin::Client)
            .unwrap();
        roll(&log, T0);
        let before = contents(&log);
        f.clean();
        let after = contents(&log);
        assert_eq!(latest(&after), latest(&before), "{codec}");
        let producer_batches: Vec<BatchHeader> = batches(&log)
            .iter()
            .map(|b| BatchHeader::parse(b).unwrap())
            .filter(|h| h.producer_id == 77)
            .collect();
        assert_eq!(
            producer_batches.len(),
            2,
            "{codec}: the round with k3..k5 and the last"
        );
        for h in &producer_batches {
            assert_eq!(h.compression(), Some(codec), "{codec}");
            assert_eq!(
                (h.producer_epoch, h.last_offset_delta),
                (
                    3,
                    if h.record_count == 3 && h.base_sequence == 24 {
                        2
                    } else {
                        5
                    }
                )
            );
            assert_eq!(h.base_offset % 6, 0, "{codec}: base offsets kept");
            assert_eq!(
                h.base_sequence,
                i32::try_from(h.base_offset).unwrap(),
                "{codec}"
            );
        }
        // The state rebuilt from the cleaned log takes the next sequence.
        drop(log);
        let f = f.reopen(false);
        let log = f.manager.get(&tp()).unwrap();
        let mut builder = RecordBatchBuilder::new(codec).producer(77, 3, sequence + 3);
        builder.push(T0, Some(b"k0"), Some(b"after"), &[]);
        log.append_as_leader(&builder.build().unwrap(), 0, AppendOrigin::Client)
            .unwrap();
    }
}

#[test]
fn a_producers_last_batch_stays_even_when_emptied() {
    let f = Fixture::new();
    let log = f.log(compacted());
    let mut builder = RecordBatchBuilder::new(Compression::Lz4).producer(5, 0, 0);
    for k in ["a", "b", "c"] {
        builder.push(T0, Some(k.as_bytes()), Some(b"old"), &[]);
    }
    log.append_as_leader(&builder.build().unwrap(), 0, AppendOrigin::Client)
        .unwrap();
    append(
        &log,
        &[("a", Some("new")), ("b", Some("new")), ("c", Some("new"))],
        T0,
    );
    roll(&log, T0);
    f.clean();
    let headers: Vec<BatchHeader> = batches(&log)
        .iter()
        .map(|b| BatchHeader::parse(b).unwrap())
        .collect();
    let empty = headers.iter().find(|h| h.producer_id == 5).expect("kept");
    assert_eq!(
        (
            empty.record_count,
            empty.base_offset,
            empty.last_offset_delta
        ),
        (0, 0, 2)
    );
    assert_eq!((empty.base_sequence, empty.last_sequence()), (0, 2));
    assert_eq!(
        contents(&log).len(),
        3 + key_offsets(&contents(&log), "filler").len()
    );
    // Without snapshots the state comes from the batches: the empty one
    // still says sequence 2 was the last.
    drop(log);
    let f = f.reopen(false);
    for entry in std::fs::read_dir(f.dir.path().join("compacted-0")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "snapshot") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let f = f.reopen(false);
    let log = f.manager.get(&tp()).unwrap();
    let mut retry = RecordBatchBuilder::new(Compression::Lz4).producer(5, 0, 0);
    for k in ["a", "b", "c"] {
        retry.push(T0, Some(k.as_bytes()), Some(b"old"), &[]);
    }
    let info = log
        .append_as_leader(&retry.build().unwrap(), 0, AppendOrigin::Client)
        .unwrap();
    assert!(
        info.duplicate,
        "a retry of the emptied batch is still recognised"
    );
    let mut next = RecordBatchBuilder::new(Compression::Lz4).producer(5, 0, 3);
    next.push(T0, Some(b"a"), Some(b"newer"), &[]);
    log.append_as_leader(&next.build().unwrap(), 0, AppendOrigin::Client)
        .unwrap();
}

#[test]
fn reads_and_timestamp_lookups_work_after_cleaning() {
    let f = Fixture::new();
    let log = f.log(compacted());
    // Keys whose old values go: gaps at the start; then distinct keys at rising timestamps.
    for round in 0..5 {
        append(&log, &[("dup", Some(&format!("{round}")))], T0 + round);
    }
    for i in 0..30i64 {
        append(
            &log,
            &[(&format!("u{i}"), Some(&"t".repeat(100)))],
            T0 + 1_000 + i * 10,
        );
    }
    roll(&log, T0 + 2_000);
    f.clean();
    let after = contents(&log);
    assert_eq!(key_offsets(&after, "dup"), vec![4]);
    // A fetch from a removed offset returns the next batch.
    let read = log.read(0, 1 << 20, None, true).unwrap();
    let first = BatchHeader::parse(&read.records.read().unwrap()).unwrap();
    assert_eq!(first.base_offset, 4);
    // Timestamp lookups find the first record at or after a time.
    let found = log
        .offset_for_timestamp(T0 + 1_000 + 55, None)
        .unwrap()
        .unwrap();
    assert_eq!((found.offset, found.timestamp), (5 + 6, T0 + 1_000 + 60));
    let found = log.offset_for_timestamp(T0, None).unwrap().unwrap();
    assert_eq!(found.offset, 4, "the removed records are not found");
    assert_eq!(
        log.max_timestamp_offset().unwrap().unwrap().timestamp,
        T0 + 2_000
    );
}

#[test]
fn the_high_watermark_bounds_the_clean() {
    let f = Fixture::new();
    let log = f.log(compacted());
    write_rounds(&log, 5, 8, 200, T0);
    let bases = log.segment_base_offsets();
    assert!(bases.len() >= 3, "{bases:?}");
    write_rounds(&log, 5, 4, 200, T0);
    roll(&log, T0);
    let before = contents(&log);
    log.set_high_watermark(bases[2]);
    let stats = f.clean();
    assert_eq!(stats.first_uncleanable_offset, bases[2]);
    assert_eq!(stats.end_offset, bases[2]);
    let after = contents(&log);
    // Above the high watermark nothing changed.
    assert_eq!(
        after.range(bases[2]..).collect::<Vec<_>>(),
        before.range(bases[2]..).collect::<Vec<_>>()
    );
}

#[test]
fn a_full_offset_map_cleans_in_several_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let config = LogManagerConfig {
        cleaner: CleanerConfig {
            enabled: false,
            // Room for 18 keys.
            dedupe_buffer_size: 24 * 20,
            ..CleanerConfig::default()
        },
        periodic_interval_ms: 3_600_000,
        ..LogManagerConfig::new(dir.path())
    };
    let manager = LogManager::open(config, clock, &|_| compacted()).unwrap();
    let log = manager.get_or_create(&tp(), compacted()).unwrap();
    write_rounds(&log, 50, 3, 20, T0);
    roll(&log, T0);
    let before = contents(&log);
    let active_base = *log.segment_base_offsets().last().unwrap();
    let mut rounds = 0;
    while let Some(stats) = manager.clean_once() {
        assert_eq!(stats.outcome, CleanOutcome::Completed);
        assert!(stats.map_keys <= 18);
        rounds += 1;
        assert!(rounds < 50, "cleaning makes progress");
        if stats.end_offset == active_base {
            break;
        }
    }
    assert!(rounds > 3, "{rounds}");
    let after = contents(&log);
    assert_eq!(latest(&after), latest(&before));
    for k in 0..50 {
        assert_eq!(key_offsets(&after, &format!("k{k}")).len(), 1, "k{k}");
    }
}

#[test]
fn records_without_a_key_are_removed() {
    let f = Fixture::new();
    let log = f.log(compacted());
    let mut builder = RecordBatchBuilder::new(Compression::None);
    builder.push(T0, None, Some(b"keyless"), &[]);
    builder.push(T0, Some(b"k"), Some(b"keyed"), &[]);
    log.append_as_leader(&builder.build().unwrap(), 0, AppendOrigin::Client)
        .unwrap();
    roll(&log, T0);
    let stats = f.clean();
    assert_eq!(stats.invalid_records, 1);
    assert!(contents(&log).values().all(|(k, _)| k.is_some()));
}

#[test]
fn logs_that_are_not_compacted_are_not_cleaned() {
    let f = Fixture::new();
    let log = f.log(LogConfig {
        compact: false,
        delete: true,
        ..compacted()
    });
    write_rounds(&log, 5, 5, 100, T0);
    roll(&log, T0);
    assert!(f.manager.clean_once().is_none());
}

#[test]
fn deletion_forgets_the_checkpoint_and_truncation_lowers_it() {
    let f = Fixture::new();
    let log = f.log(compacted());
    write_rounds(&log, 10, 10, 200, T0);
    roll(&log, T0);
    let end = f.clean().end_offset;
    assert_eq!(f.manager.cleaner_checkpoint(&tp()), Some(end));
    // Truncating below the checkpoint brings it down to the new active
    // segment, so what is appended again gets cleaned.
    f.manager.truncate_to(&tp(), 5).unwrap();
    let active_base = *log.segment_base_offsets().last().unwrap();
    assert!(active_base <= 5);
    assert_eq!(f.manager.cleaner_checkpoint(&tp()), Some(active_base));
    write_rounds(&log, 10, 10, 200, T0);
    roll(&log, T0);
    f.clean();
    let after = contents(&log);
    for k in 0..10 {
        assert_eq!(key_offsets(&after, &format!("k{k}")).len(), 1, "k{k}");
    }
    assert!(f.manager.delete(&tp()).unwrap());
    assert_eq!(f.manager.cleaner_checkpoint(&tp()), None);
    let text = std::fs::read_to_string(f.dir.path().join(CLEANER_OFFSET_CHECKPOINT)).unwrap();
    assert_eq!(text, "0\n0\n");
    // A new log of the same name starts dirty from 0.
    let log = f.log(compacted());
    write_rounds(&log, 3, 3, 10, T0);
    roll(&log, T0);
    assert_eq!(f.clean().first_dirty_offset, 0);
}

/// The cleaner thread runs while topics are written, truncated, deleted and
/// created again: nothing panics, a deleted log leaves nothing behind, and
/// what is there at the end reads back whole after a restart.
#[test]
fn the_cleaner_thread_runs_beside_deletion_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let manager_config = LogManagerConfig {
        cleaner: CleanerConfig {
            enabled: true,
            backoff_ms: 1,
            ..CleanerConfig::default()
        },
        ..LogManagerConfig::new(dir.path())
    };
    let manager =
        LogManager::open(manager_config.clone(), clock.clone(), &|_| compacted()).unwrap();
    let churn = TopicPartition::new("churn", 0);
    let steady = TopicPartition::new("steady", 0);
    let steady_log = manager.get_or_create(&steady, compacted()).unwrap();
    for round in 0..40 {
        let log = manager.get_or_create(&churn, compacted()).unwrap();
        write_rounds(&log, 10, 4, 200, T0);
        write_rounds(&steady_log, 10, 1, 200, T0);
        roll(&log, T0);
        if round % 3 == 0 {
            manager.truncate_to(&churn, 9).unwrap();
            // Whole batches go: after a clean, the last batch kept below 9
            // may end well before it.
            assert!(log.log_end_offset() <= 9);
            let left = contents(&log);
            assert!(left.keys().all(|o| *o < log.log_end_offset()));
        }
        assert!(manager.delete(&churn).unwrap());
        drop(log);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            !names.iter().any(|n| n.starts_with("churn")),
            "round {round}: {names:?}"
        );
    }
    roll(&steady_log, T0);
    let before = latest(&contents(&steady_log));
    let steady_dir = steady_log.dir().to_path_buf();
    drop(steady_log);
    manager.shutdown().unwrap();
    drop(manager);
    // A clean stopped by the shutdown removed what it had written aside.
    let aside = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".cleaned") || n.ends_with(".swap"))
            .collect()
    };
    assert!(aside(&steady_dir).is_empty(), "{:?}", aside(&steady_dir));
    // Reopened without the cleaner thread, so that nothing is being written
    // aside while the directory is listed.
    let quiet = LogManagerConfig {
        cleaner: CleanerConfig {
            enabled: false,
            ..CleanerConfig::default()
        },
        ..manager_config
    };
    let manager = LogManager::open(quiet, clock, &|_| compacted()).unwrap();
    assert_eq!(manager.logs().len(), 1);
    let log = manager.get(&steady).unwrap();
    assert_eq!(latest(&contents(&log)), before);
    assert!(aside(log.dir()).is_empty());
    manager.shutdown().unwrap();
}

/// Stands in for what the transactions work will plug in: producer 9's
/// data counts as aborted, and the first unstable offset is fixed.
#[derive(Debug)]
struct AbortProducerNine {
    first_unstable_offset: Option<i64>,
}

struct AbortPass;

impl strom_storage::TxnCleanPass for AbortPass {
    fn discard(&mut self, header: &BatchHeader, _batch: &[u8]) -> bool {
        header.producer_id == 9 && !header.is_control()
    }
}

impl strom_storage::TxnCleanHooks for AbortProducerNine {
    fn first_unstable_offset(&self, _log: &PartitionLog) -> Option<i64> {
        self.first_unstable_offset
    }

    fn begin_pass<'a>(
        &'a self,
        _log: &'a PartitionLog,
        _from: i64,
        _to: i64,
    ) -> Box<dyn strom_storage::TxnCleanPass + 'a> {
        Box::new(AbortPass)
    }
}

#[test]
fn transaction_hooks_drop_aborted_data_and_cap_the_dirty_section() {
    let f = Fixture::new();
    let log = f.log(compacted());
    append(&log, &[("a", Some("committed"))], T0);
    let mut aborted = RecordBatchBuilder::new(Compression::None)
        .producer(9, 0, 0)
        .transactional(true);
    aborted.push(T0, Some(b"a"), Some(b"aborted"), &[]);
    aborted.push(T0, Some(b"b"), Some(b"aborted"), &[]);
    log.append_as_leader(&aborted.build().unwrap(), 0, AppendOrigin::Client)
        .unwrap();
    let marker = strom_protocol::builder::end_txn_marker_batch(
        0,
        T0,
        0,
        9,
        0,
        record::EndTxnMarker {
            commit: false,
            coordinator_epoch: 1,
        },
    );
    log.append_as_leader(&marker, 0, AppendOrigin::Coordinator)
        .unwrap();
    append(&log, &[("c", Some("later"))], T0);
    roll(&log, T0);
    let active_base = *log.segment_base_offsets().last().unwrap();

    // By default transactional data and markers are kept like any other.
    let before = contents(&log);
    f.manager.set_txn_clean_hooks(Arc::new(AbortProducerNine {
        first_unstable_offset: Some(4),
    }));
    let stats = f.clean();
    assert_eq!(
        stats.first_uncleanable_offset, 4,
        "capped at the first unstable offset"
    );
    let after = contents(&log);
    // The aborted records are gone (their batch stays empty: it is the
    // producer's last data batch); "a" keeps its committed value; the
    // marker stays.
    assert_eq!(after[&0].1.as_deref(), Some(&b"committed"[..]));
    assert!(!after.contains_key(&1) && !after.contains_key(&2));
    let headers: Vec<BatchHeader> = batches(&log)
        .iter()
        .map(|b| BatchHeader::parse(b).unwrap())
        .collect();
    assert!(
        headers
            .iter()
            .any(|h| h.producer_id == 9 && h.record_count == 0 && !h.is_control())
    );
    assert!(headers.iter().any(|h| h.is_control()), "markers are kept");
    assert_eq!(after.len(), before.len() - 2);
    assert!(stats.end_offset <= active_base);
}

#[test]
fn the_aborted_transaction_index_survives_cleaning_and_restarts() {
    let f = Fixture::new();
    let log = f.log(compacted());
    write_rounds(&log, 5, 10, 100, T0);
    let mut aborted = RecordBatchBuilder::new(Compression::None)
        .producer(9, 0, 0)
        .transactional(true);
    aborted.push(T0, Some(b"k1"), Some(b"aborted"), &[]);
    let first = log
        .append_as_leader(&aborted.build().unwrap(), 0, AppendOrigin::Client)
        .unwrap()
        .first_offset;
    write_rounds(&log, 5, 10, 100, T0);
    let marker = strom_protocol::builder::end_txn_marker_batch(
        0,
        T0,
        0,
        9,
        0,
        record::EndTxnMarker {
            commit: false,
            coordinator_epoch: 1,
        },
    );
    let marker_offset = log
        .append_as_leader(&marker, 0, AppendOrigin::Coordinator)
        .unwrap()
        .first_offset;
    write_rounds(&log, 5, 10, 100, T0);
    roll(&log, T0);
    let expected = log.aborted_transactions(0, log.log_end_offset()).unwrap();
    assert_eq!(
        expected
            .iter()
            .map(|t| (t.producer_id, t.first_offset, t.last_offset))
            .collect::<Vec<_>>(),
        vec![(9, first, marker_offset)]
    );
    let stats = f.clean();
    assert!(stats.segments_written > 0 && stats.records_kept < stats.records_read);
    assert_eq!(
        log.aborted_transactions(0, log.log_end_offset()).unwrap(),
        expected
    );
    drop(log);
    // A crash after the clean: recovery rebuilds what it recovers, the
    // cleaned segment keeps its index.
    let f = f.reopen(false);
    let log = f.log(compacted());
    assert_eq!(
        log.aborted_transactions(0, log.log_end_offset()).unwrap(),
        expected
    );
    drop(log);
    let f = f.reopen(true);
    let log = f.log(compacted());
    assert_eq!(
        log.aborted_transactions(0, log.log_end_offset()).unwrap(),
        expected
    );
}

/// A marker ending `producer_id`'s transaction, as the coordinator writes it.
fn marker(log: &PartitionLog, producer_id: i64, commit: bool) {
    let batch = strom_protocol::builder::end_txn_marker_batch(
        0,
        T0,
        0,
        producer_id,
        0,
        record::EndTxnMarker {
            commit,
            coordinator_epoch: 0,
        },
    );
    log.append_as_leader(&batch, 0, AppendOrigin::Coordinator)
        .unwrap();
}

fn producer_batch(
    producer_id: i64,
    sequence: i32,
    transactional: bool,
    records: &[(&str, &str)],
) -> Bytes {
    let mut builder = RecordBatchBuilder::new(Compression::None)
        .producer(producer_id, 0, sequence)
        .transactional(transactional);
    for (k, v) in records {
        builder.push(T0, Some(k.as_bytes()), Some(v.as_bytes()), &[]);
    }
    builder.build().unwrap()
}

#[test]
fn default_hooks_remove_aborted_data_then_obsolete_markers() {
    let f = Fixture::new();
    let log = f.log(compacted());
    append(&log, &[("a", Some("plain"))], T0);
    let append_client = |batch: Bytes| {
        log.append_as_leader(&batch, 0, AppendOrigin::Client)
            .unwrap();
    };
    // Producer 9 aborts; producer 8 commits; producer 9 then writes plainly.
    append_client(producer_batch(
        9,
        0,
        true,
        &[("a", "aborted"), ("b", "aborted")],
    ));
    append_client(producer_batch(8, 0, true, &[("c", "committed")]));
    marker(&log, 9, false);
    marker(&log, 8, true);
    append_client(producer_batch(9, 2, false, &[("d", "later")]));
    roll(&log, T0);
    let aborted = log.aborted_transactions(0, log.log_end_offset()).unwrap();
    assert_eq!(aborted.len(), 1);

    f.clean();
    let values = |log: &PartitionLog| -> Vec<String> {
        contents(log)
            .values()
            .filter_map(|(_, v)| v.as_ref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect()
    };
    let controls = |log: &PartitionLog| -> usize {
        batches(log)
            .iter()
            .filter(|b| BatchHeader::parse(b).unwrap().is_control())
            .count()
    };
    let after = values(&log);
    assert!(
        !after.iter().any(|v| v == "aborted"),
        "aborted data goes: {after:?}"
    );
    assert!(after.iter().any(|v| v == "plain") && after.iter().any(|v| v == "committed"));
    // The abort marker stays for this clean (it still found the data), the
    // commit marker stays while its transaction's batch is there.
    assert_eq!(controls(&log), 2);
    assert_eq!(
        log.aborted_transactions(0, log.log_end_offset()).unwrap(),
        aborted
    );

    // The next clean finds no data of the aborted transaction: its marker
    // gets a delete horizon, and a clean after the horizon removes it and
    // its index entry.
    append(&log, &[("e", Some("more"))], T0);
    roll(&log, T0);
    f.clean();
    assert_eq!(controls(&log), 2, "not before delete.retention.ms");
    f.clock.advance_ms(compacted().delete_retention_ms + 1);
    append(&log, &[("e", Some("again"))], T0);
    roll(&log, T0);
    f.clean();
    assert_eq!(
        controls(&log),
        1,
        "the abort marker went; the commit marker stays"
    );
    assert!(
        log.aborted_transactions(0, log.log_end_offset())
            .unwrap()
            .is_empty()
    );
    assert!(values(&log).iter().any(|v| v == "committed"));
    // The producer state rebuilt from the cleaned log has no open transaction.
    drop(log);
    let f = f.reopen(false);
    let log = f.log(compacted());
    assert_eq!(log.first_unstable_offset(), None);
}

#[test]
fn a_cleaned_log_keeps_its_gaps_through_recovery_after_a_switch_to_delete() {
    let f = Fixture::new();
    let log = f.log(compacted());
    write_rounds(&log, 20, 10, 100, T0);
    roll(&log, T0);
    f.clean();
    let after = contents(&log);
    // The topic becomes `cleanup.policy=delete`, then the broker crashes
    // with no recovery point: every segment is checked again.
    drop(log);
    let Fixture {
        dir,
        clock,
        manager,
    } = f;
    drop(manager);
    std::fs::remove_file(dir.path().join("recovery-point-offset-checkpoint")).ok();
    let config = LogManagerConfig {
        cleaner: CleanerConfig {
            enabled: false,
            ..CleanerConfig::default()
        },
        periodic_interval_ms: 3_600_000,
        ..LogManagerConfig::new(dir.path())
    };
    let manager = LogManager::open(config, clock, &|_| LogConfig::default()).unwrap();
    let log = manager.get(&tp()).unwrap();
    assert!(!log.config().compact);
    assert_eq!(contents(&log), after, "recovery kept every cleaned record");
}
