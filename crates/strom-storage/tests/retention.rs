//! Retention (Kafka's `deleteOldSegments`): by time, by size, below the log
//! start offset, never past the high watermark, and the active segment.
#![allow(clippy::cast_possible_truncation, clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{batch_with_timestamps, read_all};
use strom_protocol::compression::Compression;
use strom_storage::{
    AppendOrigin, CleanerConfig, FileCache, LoadOptions, LogConfig, LogManager, LogManagerConfig,
    ManualClock, PartitionLog, TopicPartition,
};

const T0: i64 = 1_700_000_000_000;
/// Each batch is one 300-byte record; five batches fill a segment.
const SEGMENT_BYTES: u32 = 5 * 370;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES,
        retention_ms: -1,
        retention_bytes: -1,
        file_delete_delay_ms: 1_000,
        ..LogConfig::default()
    }
}

fn open(
    dir: &Path,
    config: LogConfig,
    clock: &Arc<ManualClock>,
    log_start: Option<i64>,
) -> PartitionLog {
    PartitionLog::open(
        dir,
        config,
        Arc::new(FileCache::default()),
        clock.clone(),
        LoadOptions {
            clean_shutdown: true,
            log_start_offset: log_start,
            ..LoadOptions::default()
        },
    )
    .unwrap()
}

/// Appends one record at each timestamp, one batch each.
fn append_at(log: &PartitionLog, timestamps: impl IntoIterator<Item = i64>) {
    for ts in timestamps {
        log.append_as_leader(
            &batch_with_timestamps(&[ts], 300, Compression::None),
            0,
            AppendOrigin::Client,
        )
        .unwrap();
    }
}

fn deleted_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_str()
                .unwrap()
                .ends_with(".deleted")
        })
        .count()
}

#[test]
fn segments_older_than_retention_ms_go_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let log = open(
        dir.path(),
        LogConfig {
            retention_ms: 10_000,
            ..config()
        },
        &clock,
        None,
    );
    // Segment i holds timestamps T0 + i * 1000 .. + 4.
    for segment in 0..4i64 {
        append_at(&log, (0..5).map(|i| T0 + segment * 1_000 + i));
    }
    let bases = log.segment_base_offsets();
    assert_eq!(bases, vec![0, 5, 10, 15]);
    clock.set_ms(T0 + 10_000 + 4);
    assert_eq!(log.delete_retained_segments().unwrap().segments_deleted, 0);
    // Past retention by 1 ms for the first segment only: largest timestamp T0 + 4.
    clock.set_ms(T0 + 10_005);
    let outcome = log.delete_retained_segments().unwrap();
    assert_eq!(outcome.segments_deleted, 1);
    assert_eq!(outcome.log_start_offset, 5);
    assert_eq!(log.log_start_offset(), 5);
    assert_eq!(log.segment_base_offsets(), vec![5, 10, 15]);
    assert!(outcome.bytes_deleted > 0);
    // The files wait for file.delete.delay.ms as `.deleted`.
    assert_eq!(deleted_files(dir.path()), 3);
    clock.advance_ms(1_000);
    log.run_periodic().unwrap();
    assert_eq!(deleted_files(dir.path()), 0);
    // Two more by time.
    clock.set_ms(T0 + 12_005);
    assert_eq!(log.delete_retained_segments().unwrap().segments_deleted, 2);
    assert_eq!(log.log_start_offset(), 15);
    assert_eq!(read_all(&log).len(), 5);
}

#[test]
fn a_segment_out_of_order_stops_deletion_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let log = open(
        dir.path(),
        LogConfig {
            retention_ms: 10_000,
            ..config()
        },
        &clock,
        None,
    );
    append_at(&log, (0..5).map(|i| T0 + i));
    append_at(&log, (0..5).map(|i| T0 + 100_000 + i)); // a young segment
    append_at(&log, (0..5).map(|i| T0 + i)); // old again
    append_at(&log, [T0 + 100_000]);
    clock.set_ms(T0 + 50_000);
    // Only the prefix of old segments goes: the young one stops the walk.
    assert_eq!(log.delete_retained_segments().unwrap().segments_deleted, 1);
    assert_eq!(log.log_start_offset(), 5);
}

#[test]
fn retention_bytes_keeps_the_log_below_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let log = open(dir.path(), config(), &clock, None);
    append_at(&log, (0..5).map(|i| T0 + i));
    let segment_size = log.size_bytes();
    append_at(&log, (5..22).map(|i| T0 + i));
    assert_eq!(log.segment_count(), 5);
    let total = log.size_bytes();
    // A limit that needs exactly two full segments to go.
    log.set_config(LogConfig {
        retention_bytes: i64::try_from(total - 2 * segment_size).unwrap(),
        ..config()
    });
    let outcome = log.delete_retained_segments().unwrap();
    assert_eq!(outcome.segments_deleted, 2, "{outcome:?}");
    assert_eq!(log.log_start_offset(), 10);
    assert_eq!(log.size_bytes(), total - 2 * segment_size);
    // One byte over the limit: a segment goes only if the log stays at or
    // above the limit without it (Kafka: `size - segment.size >= retention.bytes`).
    log.set_config(LogConfig {
        retention_bytes: i64::try_from(total - 2 * segment_size - 1).unwrap(),
        ..config()
    });
    assert_eq!(log.delete_retained_segments().unwrap().segments_deleted, 0);
    log.set_config(LogConfig {
        retention_bytes: i64::try_from(total - 3 * segment_size).unwrap(),
        ..config()
    });
    assert_eq!(log.delete_retained_segments().unwrap().segments_deleted, 1);
    assert_eq!(log.log_start_offset(), 15);
    // With compact only, retention settings do not apply.
    log.set_config(LogConfig {
        retention_bytes: 0,
        retention_ms: 0,
        delete: false,
        compact: true,
        ..config()
    });
    assert_eq!(log.delete_retained_segments().unwrap().segments_deleted, 0);
}

#[test]
fn the_high_watermark_holds_segments_back() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let log = open(
        dir.path(),
        LogConfig {
            retention_ms: 1_000,
            ..config()
        },
        &clock,
        None,
    );
    append_at(&log, (0..17).map(|i| T0 + i));
    assert_eq!(log.segment_base_offsets(), vec![0, 5, 10, 15]);
    clock.advance_ms(1_000_000);
    // The first segment ends at 5: a high watermark of 4 keeps it.
    log.set_high_watermark(4);
    assert_eq!(log.delete_retained_segments().unwrap().segments_deleted, 0);
    log.set_high_watermark(12);
    assert_eq!(log.delete_retained_segments().unwrap().segments_deleted, 2);
    assert_eq!(log.log_start_offset(), 10);
    // Truncation brings the high watermark down with the log end.
    log.truncate_to(11).unwrap();
    assert_eq!(log.high_watermark(), 11);
}

#[test]
fn an_expired_active_segment_goes_after_a_roll() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let log = open(
        dir.path(),
        LogConfig {
            retention_ms: 1_000,
            ..config()
        },
        &clock,
        None,
    );
    append_at(&log, (0..7).map(|i| T0 + i));
    assert_eq!(log.segment_base_offsets(), vec![0, 5]);
    clock.advance_ms(5_000);
    let outcome = log.delete_retained_segments().unwrap();
    assert_eq!(outcome.segments_deleted, 2);
    assert_eq!(outcome.log_start_offset, 7);
    // A new, empty active segment at the log end; appends continue there.
    assert_eq!(log.segment_base_offsets(), vec![7]);
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (7, 7));
    // An empty active segment is never deleted.
    clock.advance_ms(1_000_000);
    assert_eq!(log.delete_retained_segments().unwrap().segments_deleted, 0);
    append_at(&log, [T0 + 2_000_000]);
    assert_eq!(read_all(&log).len(), 1);
    assert_eq!(log.log_end_offset(), 8);
    // The log reopens at the new start.
    log.close().unwrap();
    drop(log);
    let log = open(dir.path(), config(), &clock, Some(7));
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (7, 8));
}

#[test]
fn segments_below_the_log_start_go_whatever_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let compact = LogConfig {
        compact: true,
        delete: false,
        ..config()
    };
    {
        let log = open(dir.path(), compact.clone(), &clock, None);
        append_at(&log, (0..17).map(|i| T0 + i));
        log.close().unwrap();
    }
    // A checkpointed log start offset above two segments (DeleteRecords
    // moved it, then the process stopped before they were deleted).
    let log = open(dir.path(), compact, &clock, Some(11));
    assert_eq!(log.segment_base_offsets(), vec![0, 5, 10, 15]);
    let outcome = log.delete_retained_segments().unwrap();
    assert_eq!(outcome.segments_deleted, 2);
    assert_eq!(log.segment_base_offsets(), vec![10, 15]);
    // Never backwards: the start stays at 11, inside segment 10.
    assert_eq!(log.log_start_offset(), 11);
}

#[test]
fn the_manager_runs_retention_and_checkpoints_the_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let manager_config = LogManagerConfig {
        cleaner: CleanerConfig {
            enabled: false,
            ..CleanerConfig::default()
        },
        periodic_interval_ms: 3_600_000,
        ..LogManagerConfig::new(dir.path())
    };
    let manager = LogManager::open(manager_config, clock.clone(), &|_| config()).unwrap();
    let tp = TopicPartition::new("events", 0);
    let log = manager
        .get_or_create(
            &tp,
            LogConfig {
                retention_ms: 1_000,
                ..config()
            },
        )
        .unwrap();
    append_at(&log, (0..12).map(|i| T0 + i));
    assert_eq!(manager.run_retention(), 0);
    clock.advance_ms(2_000);
    log.set_high_watermark(10);
    assert_eq!(manager.run_retention(), 2);
    let text = std::fs::read_to_string(dir.path().join("log-start-offset-checkpoint")).unwrap();
    assert!(text.contains("events 0 10"), "{text}");
}
