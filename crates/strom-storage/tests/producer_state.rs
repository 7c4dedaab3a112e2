//! Idempotent producers: Kafka's sequence and epoch checks on client appends,
//! duplicate detection, and the state surviving restarts, crashes,
//! truncation, corrupt snapshots and expiry.
#![allow(clippy::cast_possible_truncation, clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::{open_clean, open_unclean};
use strom_protocol::builder::RecordBatchBuilder;
use strom_protocol::compression::Compression;
use strom_protocol::record_batch;
use strom_storage::{
    AppendError, AppendInfo, AppendOrigin, Clock, FileCache, LoadOptions, LogConfig, ManualClock,
    PartitionLog, SystemClock,
};

const LEADER_EPOCH: i32 = 0;

/// A batch of `records` records from producer `producer_id` at `epoch`,
/// starting at sequence `base_sequence`.
fn producer_batch(
    producer_id: i64,
    epoch: i16,
    base_sequence: i32,
    records: usize,
    timestamp_ms: i64,
) -> Bytes {
    let mut builder =
        RecordBatchBuilder::new(Compression::None).producer(producer_id, epoch, base_sequence);
    for i in 0..records {
        builder.push(timestamp_ms + i as i64, None, Some(b"value"), &[]);
    }
    builder.build().unwrap()
}

fn now_ms() -> i64 {
    SystemClock.now_ms()
}

fn produce(log: &PartitionLog, batch: &[u8]) -> Result<AppendInfo, AppendError> {
    log.append_as_leader(batch, LEADER_EPOCH, AppendOrigin::Client)
}

/// `count` batches of two records from producer 1 at epoch 0, sequences
/// chained from 0, each with what its append returned.
fn history(log: &PartitionLog, count: usize) -> Vec<(Bytes, AppendInfo)> {
    (0..count)
        .map(|i| {
            let batch = producer_batch(1, 0, 2 * i as i32, 2, now_ms());
            let info = produce(log, &batch).unwrap();
            assert!(!info.duplicate);
            (batch, info)
        })
        .collect()
}

/// Retries of the last five batches are answered with the original offsets
/// and write nothing.
fn assert_last_five_are_duplicates(log: &PartitionLog, history: &[(Bytes, AppendInfo)]) {
    let log_end_offset = log.log_end_offset();
    let size = log.size_bytes();
    for (batch, original) in history.iter().rev().take(5) {
        let info = produce(log, batch).unwrap();
        assert!(info.duplicate, "retry of {original:?} must be a duplicate");
        assert_eq!(
            (info.first_offset, info.last_offset),
            (original.first_offset, original.last_offset)
        );
        assert_eq!((info.record_count, info.bytes), (0, 0));
    }
    assert_eq!(
        log.log_end_offset(),
        log_end_offset,
        "duplicates append nothing"
    );
    assert_eq!(log.size_bytes(), size, "duplicates append nothing");
}

fn snapshot_offsets(dir: &Path) -> Vec<i64> {
    let mut offsets: Vec<i64> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".snapshot").map(|s| s.parse().unwrap())
        })
        .collect();
    offsets.sort_unstable();
    offsets
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Segments of a few batches each, so that rolls write snapshots.
fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 400,
        ..LogConfig::default()
    }
}

fn open_with_clock(dir: &Path, clock: Arc<dyn Clock>, clean_shutdown: bool) -> PartitionLog {
    PartitionLog::open(
        dir,
        LogConfig::default(),
        Arc::new(FileCache::default()),
        clock,
        LoadOptions {
            clean_shutdown,
            ..LoadOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn in_order_batches_are_accepted_and_a_gap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), LogConfig::default());
    let ts = now_ms();
    // An unknown producer may start at any sequence (Kafka 2.5+).
    produce(&log, &producer_batch(1, 0, 42, 3, ts)).unwrap();
    produce(&log, &producer_batch(1, 0, 45, 2, ts)).unwrap();
    let end = log.log_end_offset();
    let err = produce(&log, &producer_batch(1, 0, 48, 1, ts)).unwrap_err();
    assert!(
        matches!(
            err,
            AppendError::OutOfOrderSequence {
                producer_id: 1,
                expected: 47,
                found: 48
            }
        ),
        "{err:?}"
    );
    assert_eq!(log.log_end_offset(), end, "a refused batch is not written");
    let info = produce(&log, &producer_batch(1, 0, 47, 1, ts)).unwrap();
    assert_eq!(info.first_offset, 5);
    // Producers do not interfere, and batches without a producer id are not
    // checked: the same one is appended twice.
    produce(&log, &producer_batch(2, 0, 0, 1, ts)).unwrap();
    let plain = common::batch(1, 10, ts, Compression::None);
    produce(&log, &plain).unwrap();
    assert!(!produce(&log, &plain).unwrap().duplicate);
    let states = log.producer_states();
    assert_eq!(states.len(), 2);
    assert_eq!((states[0].producer_id, states[0].last_sequence), (1, 47));
    assert_eq!((states[1].producer_id, states[1].last_sequence), (2, 0));
}

#[test]
fn retries_of_the_last_five_batches_are_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), LogConfig::default());
    let history = history(&log, 6);
    assert_last_five_are_duplicates(&log, &history);
    // The sixth most recent batch is no longer remembered: as in Kafka, its
    // retry is out of sequence.
    let err = produce(&log, &history[0].0).unwrap_err();
    assert!(
        matches!(
            err,
            AppendError::OutOfOrderSequence {
                expected: 12,
                found: 0,
                ..
            }
        ),
        "{err:?}"
    );
    // A retry with the same first sequence but another range is no duplicate.
    let err = produce(&log, &producer_batch(1, 0, 10, 1, now_ms())).unwrap_err();
    assert!(
        matches!(err, AppendError::OutOfOrderSequence { .. }),
        "{err:?}"
    );
    // A duplicate from a client mixed with new batches: Kafka answers the
    // whole append with the original batch.
    let mut both = history[5].0.to_vec();
    both.extend_from_slice(&producer_batch(1, 0, 12, 1, now_ms()));
    let info = produce(&log, &both).unwrap();
    assert!(info.duplicate);
    assert_eq!(log.log_end_offset(), 12);
}

#[test]
fn epochs_fence_and_restart_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), LogConfig::default());
    let ts = now_ms();
    produce(&log, &producer_batch(1, 3, 0, 5, ts)).unwrap();
    // A new epoch must start at sequence 0.
    let err = produce(&log, &producer_batch(1, 4, 5, 1, ts)).unwrap_err();
    assert!(
        matches!(
            err,
            AppendError::OutOfOrderSequence {
                producer_id: 1,
                expected: 0,
                found: 5
            }
        ),
        "{err:?}"
    );
    produce(&log, &producer_batch(1, 4, 0, 1, ts)).unwrap();
    assert_eq!(log.producer_states()[0].producer_epoch, 4);
    // The old epoch is fenced, even for what would be a duplicate of it.
    for seq in [0, 5] {
        let err = produce(&log, &producer_batch(1, 3, seq, 5, ts)).unwrap_err();
        assert!(
            matches!(
                err,
                AppendError::InvalidProducerEpoch {
                    producer_id: 1,
                    epoch: 3,
                    current_epoch: 4
                }
            ),
            "{err:?}"
        );
    }
    assert_eq!(log.log_end_offset(), 6);
}

#[test]
fn sequences_wrap_after_i32_max() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), LogConfig::default());
    let ts = now_ms();
    produce(&log, &producer_batch(1, 0, i32::MAX - 1, 2, ts)).unwrap();
    assert_eq!(log.producer_states()[0].last_sequence, i32::MAX);
    let err = produce(&log, &producer_batch(1, 0, 1, 1, ts)).unwrap_err();
    assert!(
        matches!(
            err,
            AppendError::OutOfOrderSequence {
                expected: 0,
                found: 1,
                ..
            }
        ),
        "{err:?}"
    );
    produce(&log, &producer_batch(1, 0, 0, 1, ts)).unwrap();
    // A batch whose range wraps: i32::MAX, 0, 1.
    produce(&log, &producer_batch(2, 0, i32::MAX, 3, ts)).unwrap();
    assert_eq!(log.producer_states()[1].last_sequence, 1);
    let retry = produce(&log, &producer_batch(2, 0, i32::MAX, 3, ts)).unwrap();
    assert!(retry.duplicate);
    produce(&log, &producer_batch(2, 0, 2, 1, ts)).unwrap();
}

#[test]
fn batches_of_one_append_must_chain() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), LogConfig::default());
    let ts = now_ms();
    produce(&log, &producer_batch(1, 0, 0, 2, ts)).unwrap();
    let mut chained = producer_batch(1, 0, 2, 2, ts).to_vec();
    chained.extend_from_slice(&producer_batch(1, 0, 4, 1, ts));
    let info = produce(&log, &chained).unwrap();
    assert_eq!((info.first_offset, info.last_offset), (2, 4));
    let mut gap = producer_batch(1, 0, 5, 1, ts).to_vec();
    gap.extend_from_slice(&producer_batch(1, 0, 7, 1, ts));
    let err = produce(&log, &gap).unwrap_err();
    assert!(
        matches!(
            err,
            AppendError::OutOfOrderSequence {
                expected: 6,
                found: 7,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(log.log_end_offset(), 5);
    assert_eq!(log.producer_states()[0].last_sequence, 4);
}

#[test]
fn replicated_and_coordinator_appends_update_state_unchecked() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), LogConfig::default());
    let ts = now_ms();
    // A follower takes what the leader wrote, gaps and old epochs included.
    let replicated = |base_offset: i64, epoch: i16, seq: i32| {
        let mut b = RecordBatchBuilder::new(Compression::None)
            .base_offset(base_offset)
            .partition_leader_epoch(LEADER_EPOCH)
            .producer(1, epoch, seq);
        b.push(ts, None, Some(b"v"), &[]);
        b.push(ts, None, Some(b"v"), &[]);
        b.build().unwrap()
    };
    log.append_as_follower(&replicated(0, 2, 0)).unwrap();
    log.append_as_follower(&replicated(2, 2, 9)).unwrap();
    let state = log.producer_states()[0];
    assert_eq!((state.producer_epoch, state.last_sequence), (2, 10));
    // Become leader: a client's retry of a replicated batch is a duplicate.
    let retry = produce(&log, &producer_batch(1, 2, 9, 2, ts)).unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.first_offset, 2);
    // The coordinator's writes are not checked either.
    log.append_as_leader(
        &producer_batch(1, 2, 30, 1, ts),
        LEADER_EPOCH,
        AppendOrigin::Coordinator,
    )
    .unwrap();
    assert_eq!(log.producer_states()[0].last_sequence, 30);
}

#[test]
fn a_transactional_batch_opens_a_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), LogConfig::default());
    let ts = now_ms();
    produce(&log, &producer_batch(1, 0, 0, 2, ts)).unwrap();
    let txn = |seq: i32| {
        let mut b = RecordBatchBuilder::new(Compression::None)
            .producer(1, 0, seq)
            .transactional(true);
        b.push(ts, None, Some(b"v"), &[]);
        b.build().unwrap()
    };
    produce(&log, &txn(2)).unwrap();
    produce(&log, &txn(3)).unwrap();
    assert_eq!(log.producer_states()[0].current_txn_first_offset, Some(2));
    log.close().unwrap();
    let log = open_clean(dir.path(), LogConfig::default());
    assert_eq!(log.producer_states()[0].current_txn_first_offset, Some(2));
    drop(log);
    for snapshot in snapshot_offsets(dir.path()) {
        fs::remove_file(dir.path().join(format!("{snapshot:020}.snapshot"))).unwrap();
    }
    let log = open_unclean(dir.path(), LogConfig::default());
    assert_eq!(log.producer_states()[0].current_txn_first_offset, Some(2));
}

#[test]
fn state_survives_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), LogConfig::default());
    let history = history(&log, 8);
    produce(&log, &producer_batch(2, 5, 0, 1, now_ms())).unwrap();
    let states = log.producer_states();
    let log_end_offset = log.log_end_offset();
    log.close().unwrap();
    assert_eq!(snapshot_offsets(dir.path()), vec![log_end_offset]);

    // The state must come from the snapshot, not from reading the log: give
    // every stored batch another producer id (a clean start checks no CRC),
    // so a replay would find only producer 99.
    let segment = dir.path().join("00000000000000000000.log");
    let mut bytes = fs::read(&segment).unwrap();
    let positions: Vec<usize> = record_batch::batches(&bytes)
        .map(|b| b.unwrap().position)
        .collect();
    assert_eq!(positions.len(), 9);
    for position in positions {
        let at = position + record_batch::PRODUCER_ID_OFFSET;
        bytes[at..at + 8].copy_from_slice(&99i64.to_be_bytes());
    }
    fs::write(&segment, &bytes).unwrap();

    let log = open_clean(dir.path(), LogConfig::default());
    assert_eq!(log.producer_states(), states);
    assert_last_five_are_duplicates(&log, &history);
    produce(&log, &producer_batch(1, 0, 16, 1, now_ms())).unwrap();
    log.close().unwrap();
    assert_eq!(
        snapshot_offsets(dir.path()),
        vec![log_end_offset, log_end_offset + 1]
    );
    // Closing again without appends writes no new snapshot.
    let log = open_clean(dir.path(), LogConfig::default());
    log.close().unwrap();
    assert_eq!(
        snapshot_offsets(dir.path()),
        vec![log_end_offset, log_end_offset + 1]
    );
}

#[test]
fn state_survives_a_crash_from_a_snapshot_and_the_log_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), small_segments());
    let history = history(&log, 30);
    let states = log.producer_states();
    assert!(log.segment_count() > 4);
    drop(log); // no close: a crash

    let snapshots = snapshot_offsets(dir.path());
    assert_eq!(
        snapshots.len(),
        3,
        "the newest three are kept: {snapshots:?}"
    );
    let log = open_unclean(dir.path(), small_segments());
    assert!(
        *snapshots.last().unwrap() < log.log_end_offset(),
        "the batches after the snapshot must be replayed"
    );
    assert_eq!(log.producer_states(), states);
    assert_last_five_are_duplicates(&log, &history);
    produce(&log, &producer_batch(1, 0, 60, 1, now_ms())).unwrap();
}

#[test]
fn state_is_rebuilt_from_the_log_without_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), small_segments());
    let history = history(&log, 30);
    let states = log.producer_states();
    log.close().unwrap();
    for snapshot in snapshot_offsets(dir.path()) {
        fs::remove_file(dir.path().join(format!("{snapshot:020}.snapshot"))).unwrap();
    }
    for clean in [true, false] {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), copy.path());
        let log = if clean {
            open_clean(copy.path(), small_segments())
        } else {
            open_unclean(copy.path(), small_segments())
        };
        assert_eq!(log.producer_states(), states, "clean: {clean}");
        assert_last_five_are_duplicates(&log, &history);
        let err = produce(&log, &producer_batch(1, 0, 61, 1, now_ms())).unwrap_err();
        assert!(matches!(
            err,
            AppendError::OutOfOrderSequence { expected: 60, .. }
        ));
    }
}

#[test]
fn a_snapshot_above_the_recovered_log_end_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), LogConfig::default());
    let history = history(&log, 6);
    log.close().unwrap();
    assert_eq!(snapshot_offsets(dir.path()), vec![12]);
    // The last batch is lost (say, never reached the disk), the snapshot
    // that knows it survived.
    let segment = dir.path().join("00000000000000000000.log");
    let len = fs::metadata(&segment).unwrap().len();
    let file = fs::OpenOptions::new().write(true).open(&segment).unwrap();
    file.set_len(len - history[5].0.len() as u64 + 10).unwrap();
    drop(file);

    let log = open_unclean(dir.path(), LogConfig::default());
    assert_eq!(log.log_end_offset(), 10);
    assert!(
        snapshot_offsets(dir.path()).is_empty(),
        "the stale snapshot is deleted"
    );
    // The lost batch is new to the log, not a duplicate.
    let info = produce(&log, &history[5].0).unwrap();
    assert!(!info.duplicate);
    assert_eq!(info.first_offset, 10);
}

#[test]
fn truncation_rebuilds_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), small_segments());
    let history = history(&log, 30);
    let cut = history[20].1.first_offset;
    assert!(
        snapshot_offsets(dir.path()).iter().any(|s| *s > cut),
        "a snapshot above the truncation point"
    );
    log.truncate_to(cut).unwrap();
    assert_eq!(log.log_end_offset(), cut);
    assert!(snapshot_offsets(dir.path()).iter().all(|s| *s <= cut));
    assert_eq!(log.producer_states()[0].last_sequence, 39);
    // The batch cut away is new again; the one before it is still a duplicate.
    let retry = produce(&log, &history[19].0).unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.first_offset, history[19].1.first_offset);
    let info = produce(&log, &history[20].0).unwrap();
    assert!(!info.duplicate);
    assert_eq!(info.first_offset, cut);
    let err = produce(&log, &history[22].0).unwrap_err();
    assert!(matches!(
        err,
        AppendError::OutOfOrderSequence {
            expected: 42,
            found: 44,
            ..
        }
    ));

    // A restart after the truncation agrees.
    let states = log.producer_states();
    log.close().unwrap();
    let log = open_clean(dir.path(), small_segments());
    assert_eq!(log.producer_states(), states);
}

#[test]
fn truncation_below_the_log_start_forgets_every_producer() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), small_segments());
    history(&log, 30);
    log.advance_log_start_offset(40).unwrap();
    log.truncate_to(10).unwrap();
    assert_eq!(log.log_end_offset(), 10);
    assert!(log.producer_states().is_empty());
    assert!(snapshot_offsets(dir.path()).is_empty());
    produce(&log, &producer_batch(1, 0, 7, 1, now_ms())).unwrap();
}

#[test]
fn advancing_the_log_start_keeps_producers_and_the_newest_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), small_segments());
    let history = history(&log, 30);
    let snapshots = snapshot_offsets(dir.path());
    assert_eq!(snapshots.len(), 3);
    log.advance_log_start_offset(snapshots[1] + 1).unwrap();
    assert_eq!(snapshot_offsets(dir.path()), snapshots[2..].to_vec());
    log.advance_log_start_offset(log.log_end_offset()).unwrap();
    assert_eq!(snapshot_offsets(dir.path()), snapshots[2..].to_vec());
    // Producers outlive their data (KIP-360).
    assert_last_five_are_duplicates(&log, &history);
}

#[test]
fn corrupt_snapshots_are_deleted_and_the_state_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), small_segments());
    let history = history(&log, 30);
    let states = log.producer_states();
    log.close().unwrap();
    let snapshots = snapshot_offsets(dir.path());
    let newest = *snapshots.last().unwrap();
    let pristine = fs::read(dir.path().join(format!("{newest:020}.snapshot"))).unwrap();

    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, Damage); 5] = [
        ("garbage", |b| {
            b.iter_mut().for_each(|x| *x = x.wrapping_mul(31) ^ 0x5a)
        }),
        ("truncated", |b| b.truncate(b.len() / 2)),
        ("empty", Vec::clear),
        ("bad CRC", |b| {
            let last = b.len() - 1;
            b[last] ^= 1;
        }),
        ("unknown version", |b| b[1] = 9),
    ];
    for (what, damage) in damages {
        for only_snapshot in [true, false] {
            let copy = tempfile::tempdir().unwrap();
            copy_dir(dir.path(), copy.path());
            if only_snapshot {
                for older in &snapshots[..snapshots.len() - 1] {
                    fs::remove_file(copy.path().join(format!("{older:020}.snapshot"))).unwrap();
                }
            }
            let mut bytes = pristine.clone();
            damage(&mut bytes);
            fs::write(copy.path().join(format!("{newest:020}.snapshot")), &bytes).unwrap();

            let log = open_clean(copy.path(), small_segments());
            assert_eq!(log.producer_states(), states, "{what}");
            assert_last_five_are_duplicates(&log, &history);
            let left = snapshot_offsets(copy.path());
            assert!(
                !left.contains(&newest),
                "{what}: the corrupt snapshot is deleted"
            );
            assert_eq!(left.len(), if only_snapshot { 0 } else { 2 }, "{what}");
        }
    }
    // A directory in place of a snapshot cannot be read: skipped too.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    let path = copy.path().join(format!("{newest:020}.snapshot"));
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    let log = open_clean(copy.path(), small_segments());
    assert_eq!(log.producer_states(), states);
}

#[test]
fn idle_producers_expire() {
    let dir = tempfile::tempdir().unwrap();
    let start = 1_700_000_000_000;
    let clock = Arc::new(ManualClock::new(start));
    let log = open_with_clock(dir.path(), clock.clone(), true);
    let expiration = LogConfig::default().producer_id_expiration_ms;
    assert_eq!(expiration, 86_400_000);
    produce(&log, &producer_batch(1, 0, 0, 1, start)).unwrap();
    clock.advance_ms(expiration - 1);
    produce(&log, &producer_batch(2, 0, 0, 1, clock.now_ms())).unwrap();
    log.run_periodic().unwrap();
    assert_eq!(log.producer_states().len(), 2, "not yet idle long enough");
    clock.advance_ms(1);
    log.run_periodic().unwrap();
    let states = log.producer_states();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].producer_id, 2);
    // An expired producer is unknown: any sequence starts it again.
    produce(&log, &producer_batch(1, 0, 17, 1, clock.now_ms())).unwrap();

    // The setting applies as changed; and a snapshot's expired producers are
    // not loaded.
    log.set_config(LogConfig {
        producer_id_expiration_ms: 1_000,
        ..LogConfig::default()
    });
    clock.advance_ms(1_000);
    log.run_periodic().unwrap();
    assert!(log.producer_states().is_empty());
    produce(&log, &producer_batch(3, 0, 0, 1, clock.now_ms())).unwrap();
    log.close().unwrap();
    clock.advance_ms(expiration);
    let log = open_with_clock(dir.path(), clock.clone(), true);
    assert!(log.producer_states().is_empty());
}
