//! Crash safety of the cleaner's swap: a crash simulated at every step of
//! every group, then an unclean reopen, must leave a valid log holding every
//! key's latest record at its offset and nothing that was not there, and a
//! later clean must complete.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use strom_protocol::builder::RecordBatchBuilder;

use super::*;
use crate::cleaner::{CleanStats, NoTxnCleanHooks, OffsetMap};
use crate::clock::ManualClock;
use crate::config::LogConfig;
use crate::file_cache::FileCache;
use crate::log::{AppendOrigin, LoadOptions};
use crate::manager::TopicPartition;

const NOW_MS: i64 = 1_000_000;

/// Record contents by offset: key and value.
type Contents = BTreeMap<i64, (Vec<u8>, Option<Vec<u8>>)>;

struct NoControl;

impl CleanControl for NoControl {
    fn check(&self) -> Result<(), CleanError> {
        Ok(())
    }

    fn throttle(&mut self, _bytes: u64) {}
}

fn config() -> LogConfig {
    LogConfig {
        compact: true,
        delete: false,
        // Small segments while writing; the clean groups them by a larger size.
        segment_bytes: 1_500,
        index_interval_bytes: 200,
        min_cleanable_dirty_ratio: 0.0,
        ..LogConfig::default()
    }
}

fn open(dir: &Path, clean_shutdown: bool) -> PartitionLog {
    PartitionLog::open(
        dir,
        config(),
        Arc::new(FileCache::default()),
        Arc::new(ManualClock::new(NOW_MS)),
        LoadOptions {
            clean_shutdown,
            ..LoadOptions::default()
        },
    )
    .unwrap()
}

/// 60 batches of 3 records over 10 keys, every seventh record a tombstone.
fn fill(log: &PartitionLog) {
    let mut i = 0u32;
    for batch in 0..60i64 {
        let mut builder = RecordBatchBuilder::new(Compression::None);
        for _ in 0..3 {
            let key = format!("key-{}", i % 10);
            let value = format!("value-{i}-{}", "x".repeat(40));
            let value = (i % 7 != 6).then_some(value.as_bytes());
            builder.push(NOW_MS - 1000 + batch, Some(key.as_bytes()), value, &[]);
            i += 1;
        }
        log.append_as_leader(&builder.build().unwrap(), 0, AppendOrigin::Client)
            .unwrap();
    }
}

fn contents(log: &PartitionLog) -> Contents {
    let mut out = Contents::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let read = log.read(offset, 1 << 20, None, true).unwrap();
        let bytes = read.records.read().unwrap();
        if bytes.is_empty() {
            break;
        }
        for batch in record_batch::batches(&bytes) {
            let batch = batch.unwrap();
            record_batch::validate_batch(batch.bytes).unwrap();
            let header = batch.header;
            assert!(header.base_offset >= offset, "offsets only grow");
            for r in record::decode_records(&bytes.slice_ref(batch.bytes), 1 << 20).unwrap() {
                let previous = out.insert(
                    r.offset(&header),
                    (r.key.unwrap().to_vec(), r.value.map(|v| v.to_vec())),
                );
                assert!(previous.is_none(), "each offset once");
            }
            offset = header.next_offset();
        }
    }
    out
}

/// What a complete clean keeps: below `end`, each key's last record; from
/// `end` on, everything.
fn compacted(original: &Contents, end: i64) -> Contents {
    let mut latest: BTreeMap<&[u8], i64> = BTreeMap::new();
    for (offset, (key, _)) in original.range(..end) {
        latest.insert(key, *offset);
    }
    original
        .iter()
        .filter(|(offset, (key, _))| **offset >= end || latest[key.as_slice()] == **offset)
        .map(|(o, r)| (*o, r.clone()))
        .collect()
}

fn run_clean(
    log: &PartitionLog,
    crash_at: Option<(usize, CrashPoint)>,
) -> (Result<i64, CleanError>, CleanStats) {
    let hooks = NoTxnCleanHooks;
    let section = log.cleanable_section(None, &hooks, NOW_MS).unwrap();
    let mut map = OffsetMap::new(1 << 20, 1 << 16);
    let mut stats = CleanStats::new(TopicPartition::new("t", 0));
    let result = log.clean(
        &section,
        &mut CleanJob {
            map: &mut map,
            control: &mut NoControl,
            hooks: &hooks,
            now_ms: NOW_MS,
            stats: &mut stats,
            crash_at,
        },
    );
    (result, stats)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| {
            n.ends_with(CLEANED_SUFFIX) || n.ends_with(SWAP_SUFFIX) || n.ends_with(".deleted")
        })
        .collect()
}

#[test]
fn a_crash_at_any_step_of_the_swap_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let pristine = root.path().join("pristine");
    let (original, active_base, log_end) = {
        let log = open(&pristine, true);
        fill(&log);
        log.set_config(LogConfig {
            segment_bytes: 3_500,
            ..config()
        });
        let bases = log.segment_base_offsets();
        assert!(bases.len() > 6, "several segments: {bases:?}");
        let original = contents(&log);
        log.close().unwrap();
        (original, *bases.last().unwrap(), log.log_end_offset())
    };
    let expected = compacted(&original, active_base);
    assert!(expected.len() < original.len());

    // A clean without a crash, as the reference.
    let reference = root.path().join("reference");
    copy_dir(&pristine, &reference);
    let groups = {
        let log = open(&reference, true);
        log.set_config(LogConfig {
            segment_bytes: 3_500,
            ..config()
        });
        let (result, stats) = run_clean(&log, None);
        assert_eq!(result.unwrap(), active_base);
        assert!(stats.segments_written >= 2, "several groups: {stats:?}");
        assert!(
            stats.segments_read > stats.segments_written,
            "groups of several segments: {stats:?}"
        );
        assert_eq!(contents(&log), expected);
        stats.segments_written
    };

    for group in 0..groups.min(2) {
        for point in CrashPoint::ALL {
            let what = format!("crash at {point:?} of group {group}");
            let dir = root.path().join(format!("crash-{group}-{point:?}"));
            copy_dir(&pristine, &dir);
            {
                let log = open(&dir, true);
                log.set_config(LogConfig {
                    segment_bytes: 3_500,
                    ..config()
                });
                let (result, _) = run_clean(&log, Some((group, point)));
                assert!(matches!(result, Err(CleanError::Crashed)), "{what}");
                // The process dies here: nothing else runs.
            }
            let log = open(&dir, false);
            assert_eq!(log.log_end_offset(), log_end, "{what}");
            assert!(leftovers(&dir).is_empty(), "{what}: {:?}", leftovers(&dir));
            let recovered = contents(&log);
            for (offset, record) in &recovered {
                assert_eq!(
                    original.get(offset),
                    Some(record),
                    "{what}: only original records"
                );
            }
            for (offset, record) in &expected {
                assert_eq!(
                    recovered.get(offset),
                    Some(record),
                    "{what}: every latest record"
                );
            }
            // Before the commit point the old segments stay; from it on the
            // restart completes the swap.
            let committed = point as usize >= CrashPoint::LogSwapped as usize;
            if group == 0 {
                assert_eq!(recovered.len() < original.len(), committed, "{what}");
            }
            // A later clean completes and gives the reference result.
            let (result, _) = run_clean(&log, None);
            assert_eq!(result.unwrap(), active_base, "{what}");
            assert_eq!(contents(&log), expected, "{what}");
            log.close().unwrap();
            drop(log);
            for clean_shutdown in [true, false] {
                let log = open(&dir, clean_shutdown);
                assert_eq!(contents(&log), expected, "{what}, reopened");
            }
        }
    }
}

/// Moves the log start offset the first time the clean checks in, as a
/// DeleteRecords racing the clean would.
struct MoveLogStart<'a> {
    log: &'a PartitionLog,
    moved: bool,
}

impl CleanControl for MoveLogStart<'_> {
    fn check(&self) -> Result<(), CleanError> {
        Ok(())
    }

    fn throttle(&mut self, _bytes: u64) {
        if !self.moved {
            self.moved = true;
            self.log.advance_log_start_offset(3).unwrap();
        }
    }
}

#[test]
fn a_clean_raced_by_a_log_start_move_is_abandoned_without_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), true);
    fill(&log);
    let before = contents(&log);
    let hooks = NoTxnCleanHooks;
    let section = log.cleanable_section(None, &hooks, NOW_MS).unwrap();
    let mut map = OffsetMap::new(1 << 20, 1 << 16);
    let mut stats = CleanStats::new(TopicPartition::new("t", 0));
    let result = log.clean(
        &section,
        &mut CleanJob {
            map: &mut map,
            control: &mut MoveLogStart {
                log: &log,
                moved: false,
            },
            hooks: &hooks,
            now_ms: NOW_MS,
            stats: &mut stats,
            crash_at: None,
        },
    );
    assert!(
        matches!(result, Err(CleanError::Abandoned(_))),
        "{result:?}"
    );
    assert!(stats.bytes_read > 0, "the first group was rewritten first");
    let aside: Vec<String> = leftovers(dir.path())
        .into_iter()
        .filter(|n| !n.ends_with(".deleted"))
        .collect();
    assert!(aside.is_empty(), "{aside:?}");
    let after = contents(&log);
    assert_eq!(
        after,
        before.range(3..).map(|(o, r)| (*o, r.clone())).collect()
    );
}

/// Keyed data with aborted transactions of producer 9 spread over the
/// segments (each transaction's batch and marker a few batches apart).
fn fill_with_aborts(log: &PartitionLog) {
    let mut sequence = 0;
    for batch in 0..60i64 {
        let mut builder = RecordBatchBuilder::new(Compression::None);
        let key = format!("key-{}", batch % 10);
        builder.push(
            NOW_MS - 1000 + batch,
            Some(key.as_bytes()),
            Some(&[b'x'; 40]),
            &[],
        );
        log.append_as_leader(&builder.build().unwrap(), 0, AppendOrigin::Client)
            .unwrap();
        if batch % 9 == 0 {
            let mut txn = RecordBatchBuilder::new(Compression::None)
                .producer(9, 0, sequence)
                .transactional(true);
            sequence += 1;
            txn.push(NOW_MS, Some(b"txn"), Some(b"aborted"), &[]);
            log.append_as_leader(&txn.build().unwrap(), 0, AppendOrigin::Client)
                .unwrap();
        }
        if batch % 9 == 4 {
            let marker = strom_protocol::builder::end_txn_marker_batch(
                0,
                NOW_MS,
                0,
                9,
                0,
                record::EndTxnMarker {
                    commit: false,
                    coordinator_epoch: 0,
                },
            );
            log.append_as_leader(&marker, 0, AppendOrigin::Coordinator)
                .unwrap();
        }
    }
}

#[test]
fn a_crash_at_any_step_of_the_swap_keeps_the_aborted_transaction_index() {
    let root = tempfile::tempdir().unwrap();
    let pristine = root.path().join("pristine");
    let (expected, log_end) = {
        let log = open(&pristine, true);
        fill_with_aborts(&log);
        log.set_config(LogConfig {
            segment_bytes: 3_500,
            ..config()
        });
        let expected = log.aborted_transactions(0, log.log_end_offset()).unwrap();
        assert!(expected.len() >= 5, "{expected:?}");
        log.close().unwrap();
        (expected, log.log_end_offset())
    };
    let groups = {
        let dir = root.path().join("reference");
        copy_dir(&pristine, &dir);
        let log = open(&dir, true);
        let (result, stats) = run_clean(&log, None);
        result.unwrap();
        assert_eq!(log.aborted_transactions(0, log_end).unwrap(), expected);
        stats.segments_written
    };
    for group in 0..groups.min(2) {
        for point in CrashPoint::ALL {
            let what = format!("crash at {point:?} of group {group}");
            let dir = root.path().join(format!("crash-{group}-{point:?}"));
            copy_dir(&pristine, &dir);
            {
                let log = open(&dir, true);
                let (result, _) = run_clean(&log, Some((group, point)));
                assert!(matches!(result, Err(CleanError::Crashed)), "{what}");
            }
            // Everything but the active segment was flushed before the
            // clean: recovery starts there, so the swapped segments keep
            // the indexes the swap left.
            let log = PartitionLog::open(
                &dir,
                config(),
                Arc::new(FileCache::default()),
                Arc::new(ManualClock::new(NOW_MS)),
                LoadOptions {
                    clean_shutdown: false,
                    recovery_point: log_end,
                    ..LoadOptions::default()
                },
            )
            .unwrap();
            assert!(leftovers(&dir).is_empty(), "{what}: {:?}", leftovers(&dir));
            assert_eq!(
                log.aborted_transactions(0, log_end).unwrap(),
                expected,
                "{what}"
            );
        }
    }
}
