//! Regression tests for defects found in review: each one failed before its
//! fix. F-numbers are the review's.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod common;

use std::fs;

use bytes::Bytes;
use common::{batch, open_clean, open_unclean};
use strom_protocol::builder::RecordBatchBuilder;
use strom_protocol::compression::Compression;
use strom_protocol::record_batch::{
    self, LAST_OFFSET_DELTA_OFFSET, MAX_TIMESTAMP_OFFSET, RECORDS_COUNT_OFFSET,
};
use strom_storage::{AppendOrigin, LogConfig};

fn one(ts: i64) -> Bytes {
    batch(1, 20, ts, Compression::None)
}

/// F1: DeleteRecords / retention moves the epoch cache's first entry up and
/// drops older epochs, but the retained segment still holds batches of those
/// epochs; recovery then finds an epoch "not in the cache" and truncates.
#[test]
fn f1_advance_log_start_then_crash_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), LogConfig::default());
    for i in 0..10 {
        log.append_as_leader(&one(i), i as i32 / 5, AppendOrigin::Client)
            .unwrap();
    }
    assert_eq!(log.log_end_offset(), 10);
    log.advance_log_start_offset(7).unwrap(); // inside epoch 1, same (only) segment
    log.flush().unwrap();
    drop(log); // crash
    let log = open_unclean(dir.path(), LogConfig::default());
    assert_eq!(
        log.log_end_offset(),
        10,
        "recovery truncated acknowledged data"
    );
}

/// F2: an active segment with an unreadable tail that is opened without
/// recovery (clean marker, e.g. written by shutdown after the log went offline
/// with a Torn append) is "served up to the corruption" in memory only; the
/// file keeps the garbage and O_APPEND writes land after it.
#[test]
fn f2_append_after_rebuilt_torn_tail_is_readable() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), LogConfig::default());
    for i in 0..3 {
        log.append_as_leader(&one(i), 0, AppendOrigin::Client)
            .unwrap();
    }
    log.close().unwrap();
    drop(log);
    // A torn last batch: the first 100 bytes of a batch.
    let path = dir.path().join(format!("{:020}.log", 0));
    let torn = batch(5, 100, 0, Compression::None);
    let f = fs::OpenOptions::new().append(true).open(&path).unwrap();
    use std::io::Write;
    (&f).write_all(&torn[..100]).unwrap();
    drop(f);
    let log = open_clean(dir.path(), LogConfig::default());
    assert_eq!(log.log_end_offset(), 3);
    let input = one(42);
    let info = log
        .append_as_leader(&input, 0, AppendOrigin::Client)
        .unwrap();
    assert_eq!(info.first_offset, 3);
    let got = log
        .read(3, 1 << 20, None, true)
        .unwrap()
        .records
        .read()
        .unwrap();
    let header = record_batch::validate_batch(&got).expect("acknowledged batch reads back intact");
    assert_eq!(header.base_offset, 3);
}

fn claims_i32_max_records() -> Vec<u8> {
    let mut b = one(0).to_vec();
    b[LAST_OFFSET_DELTA_OFFSET..LAST_OFFSET_DELTA_OFFSET + 4]
        .copy_from_slice(&(i32::MAX - 1).to_be_bytes());
    b[RECORDS_COUNT_OFFSET..RECORDS_COUNT_OFFSET + 4].copy_from_slice(&i32::MAX.to_be_bytes());
    record_batch::update_crc(&mut b);
    b
}

/// F3: batches whose headers claim 2^31-1 records each: one append cannot
/// span more offsets than a segment's 32-bit relative offsets (it used to be
/// acknowledged and then cut away by recovery with everything after it); one
/// such batch fits, and what follows goes to the next segment.
#[test]
fn f3_appends_wider_than_a_segment_are_refused_and_the_rest_survives_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), LogConfig::default());
    let mut two = claims_i32_max_records();
    two.extend(claims_i32_max_records());
    assert!(log.append_as_leader(&two, 0, AppendOrigin::Client).is_err());
    assert_eq!(
        log.log_end_offset(),
        0,
        "nothing of a refused append is written"
    );
    log.append_as_leader(&claims_i32_max_records(), 0, AppendOrigin::Client)
        .unwrap();
    log.append_as_leader(&one(1), 0, AppendOrigin::Client)
        .unwrap();
    let leo = log.log_end_offset();
    assert_eq!(leo, i64::from(i32::MAX) + 1);
    drop(log); // crash
    let log = open_unclean(dir.path(), LogConfig::default());
    assert_eq!(
        log.log_end_offset(),
        leo,
        "recovery dropped acknowledged batches"
    );
}

/// F4: a follower accepts offset gaps on a non-compacted log, but recovery
/// requires contiguous offsets there and truncates at the gap.
#[test]
fn f4_follower_gap_survives_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), LogConfig::default());
    let mut a = RecordBatchBuilder::new(Compression::None)
        .base_offset(0)
        .partition_leader_epoch(1);
    a.push(0, None, Some(b"a"), &[]);
    let mut b = RecordBatchBuilder::new(Compression::None)
        .base_offset(10)
        .partition_leader_epoch(1);
    b.push(0, None, Some(b"b"), &[]);
    let mut bytes = a.build().unwrap().to_vec();
    bytes.extend_from_slice(&b.build().unwrap());
    log.append_as_follower(&bytes).unwrap();
    assert_eq!(log.log_end_offset(), 11);
    drop(log);
    let log = open_unclean(dir.path(), LogConfig::default());
    assert_eq!(
        log.log_end_offset(),
        11,
        "recovery truncated at the follower's gap"
    );
}

/// F5: a missing/garbage leader-epoch-checkpoint is only rebuilt by recovery;
/// after a clean start the cache stays empty, the next epoch is persisted
/// alone, and the next unclean recovery truncates every older-epoch batch.
#[test]
fn f5_lost_epoch_checkpoint_then_crash_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), LogConfig::default());
    for i in 0..6 {
        log.append_as_leader(&one(i), i as i32 / 3, AppendOrigin::Client)
            .unwrap();
    }
    log.close().unwrap();
    drop(log);
    fs::remove_file(dir.path().join("leader-epoch-checkpoint")).unwrap();
    let log = open_clean(dir.path(), LogConfig::default());
    log.append_as_leader(&one(9), 2, AppendOrigin::Client)
        .unwrap();
    log.flush().unwrap();
    drop(log); // crash
    let log = open_unclean(dir.path(), LogConfig::default());
    assert_eq!(
        log.log_end_offset(),
        7,
        "recovery truncated acknowledged data"
    );
}

/// F6: a garbage time index that is in range passes the load checks and
/// decides answers: here the segment's max timestamp is taken from it.
#[test]
fn f6_garbage_time_index_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        index_interval_bytes: 1,
        ..LogConfig::default()
    };
    let log = open_clean(dir.path(), config.clone());
    for i in 0..10 {
        // 100, 200, ..., 900, then 50
        let ts = if i == 9 { 50 } else { 100 * (i + 1) };
        log.append_as_leader(&one(ts), 0, AppendOrigin::Client)
            .unwrap();
    }
    let want = log.offset_for_timestamp(500, None).unwrap();
    assert!(want.is_some());
    log.close().unwrap();
    drop(log);
    let path = dir.path().join(format!("{:020}.timeindex", 0));
    let mut entry = Vec::new();
    entry.extend_from_slice(&150i64.to_be_bytes());
    entry.extend_from_slice(&1u32.to_be_bytes());
    fs::write(&path, &entry).unwrap();
    let log = open_clean(dir.path(), config);
    assert_eq!(log.offset_for_timestamp(500, None).unwrap(), want);
}

/// F7: base offsets are added to without checks (follower input, disk).
#[test]
fn f7_follower_batch_near_i64_max_is_refused_not_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), LogConfig::default());
    let mut b = RecordBatchBuilder::new(Compression::None).base_offset(i64::MAX - 1);
    for _ in 0..5 {
        b.push(0, None, Some(b"x"), &[]);
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        log.append_as_follower(&b.build().unwrap())
    }));
    assert!(r.is_ok(), "append_as_follower panicked");
    assert!(
        log.log_end_offset() >= 0,
        "log end offset wrapped: {}",
        log.log_end_offset()
    );
}

/// F8: segment.ms arithmetic on a producer-controlled max timestamp.
#[test]
fn f8_hostile_max_timestamp_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), LogConfig::default());
    log.append_as_leader(&one(1_700_000_000_000), 0, AppendOrigin::Client)
        .unwrap();
    let mut b = one(0).to_vec();
    b[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&i64::MIN.to_be_bytes());
    record_batch::update_crc(&mut b);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        log.append_as_leader(&b, 0, AppendOrigin::Client)
    }));
    assert!(r.is_ok(), "append panicked");
}

/// F9: ListOffsets arithmetic on producer-controlled record timestamps.
#[test]
fn f9_timestamp_lookup_on_hostile_base_timestamp_does_not_panic() {
    use strom_protocol::record_batch::BASE_TIMESTAMP_OFFSET;
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), LogConfig::default());
    let mut b = common::batch_with_timestamps(&[0, 10], 5, Compression::None).to_vec();
    b[BASE_TIMESTAMP_OFFSET..BASE_TIMESTAMP_OFFSET + 8]
        .copy_from_slice(&(i64::MAX - 5).to_be_bytes());
    b[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&i64::MAX.to_be_bytes());
    record_batch::update_crc(&mut b);
    log.append_as_leader(&b, 0, AppendOrigin::Client).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        log.offset_for_timestamp(i64::MAX, None)
    }));
    assert!(r.is_ok(), "offset_for_timestamp panicked");
}

/// F10: a LogSlice is resolved lazily against the file; a truncation plus new
/// appends in between used to make it return bytes that are not whole batches.
#[test]
fn f10_slice_read_after_truncate_and_reappend_is_whole_batches() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), LogConfig::default());
    for i in 0..3 {
        log.append_as_leader(
            &batch(1, 100, i, Compression::None),
            0,
            AppendOrigin::Client,
        )
        .unwrap();
    }
    let slice = log.read(0, 1 << 20, None, true).unwrap().records; // 3 whole batches
    log.truncate_to(1).unwrap();
    // The new leader's batches at 1.. have other sizes.
    let mut bytes = Vec::new();
    for (o, len) in [(1i64, 150usize), (2, 150)] {
        let mut b = RecordBatchBuilder::new(Compression::None)
            .base_offset(o)
            .partition_leader_epoch(1);
        b.push(0, None, Some(&vec![9u8; len]), &[]);
        bytes.extend_from_slice(&b.build().unwrap());
    }
    log.append_as_follower(&bytes).unwrap();
    // The positions were resolved before the truncation: the read is
    // refused (the reader reads again) rather than return half a batch.
    assert!(slice.read().is_err(), "a stale slice must not be served");
    let again = log
        .read(0, 1 << 20, None, true)
        .unwrap()
        .records
        .read()
        .unwrap();
    for b in record_batch::batches(&again) {
        b.expect("a reader never sees half a batch");
    }
}

/// F11: a log taken offline by an I/O error is "closed" with Ok, so shutdown
/// writes the clean-shutdown marker and the next start skips its recovery.
#[test]
fn f11_shutdown_with_an_offline_log_writes_no_clean_marker() {
    use std::sync::Arc;
    use strom_storage::{LogManager, LogManagerConfig, SystemClock, TopicPartition};
    let dir = tempfile::tempdir().unwrap();
    let manager = LogManager::open(
        LogManagerConfig::new(dir.path()),
        Arc::new(SystemClock),
        &|_| LogConfig::default(),
    )
    .unwrap();
    let tp = TopicPartition::new("t", 0);
    let log = manager.get_or_create(&tp, LogConfig::default()).unwrap();
    log.append_as_leader(&one(0), 0, AppendOrigin::Client)
        .unwrap();
    // Make the next epoch checkpoint write fail (EISDIR on the temp file).
    fs::create_dir(log.dir().join("leader-epoch-checkpoint.tmp")).unwrap();
    // As leader nothing is written before the epoch: only that append fails.
    assert!(
        log.append_as_leader(&one(1), 1, AppendOrigin::Client)
            .is_err()
    );
    assert!(!log.is_offline());
    // As follower, batches of several epochs go in one write: a failure
    // after some epochs were recorded leaves the log in doubt.
    let mut follower = RecordBatchBuilder::new(Compression::None)
        .base_offset(1)
        .partition_leader_epoch(2);
    follower.push(0, None, Some(b"x"), &[]);
    assert!(log.append_as_follower(&follower.build().unwrap()).is_err());
    assert!(log.is_offline());
    let r = manager.shutdown();
    assert!(
        r.is_err()
            || !dir
                .path()
                .join(strom_storage::manager::CLEAN_SHUTDOWN_FILE)
                .exists(),
        "clean-shutdown marker written although a log is offline"
    );
}

/// F12: an I/O error in the middle of truncate_to leaves the log online with
/// the removed (renamed *.deleted, deletion pending) segment as the active one:
/// later appends are acknowledged into a file that is going to be deleted.
#[test]
fn f12_failed_truncation_does_not_ack_into_a_deleted_segment() {
    use std::sync::Arc;
    use strom_storage::{FileCache, LoadOptions, PartitionLog, SystemClock};
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 1000,
        ..LogConfig::default()
    };
    let log = PartitionLog::open(
        dir.path(),
        config,
        Arc::new(FileCache::new(1)),
        Arc::new(SystemClock),
        LoadOptions {
            clean_shutdown: true,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    for i in 0..12 {
        log.append_as_leader(
            &batch(1, 200, i, Compression::None),
            0,
            AppendOrigin::Client,
        )
        .unwrap();
    }
    assert!(log.segment_count() > 2);
    // The first segment's time index becomes unopenable (EISDIR).
    let ti = dir.path().join(format!("{:020}.timeindex", 0));
    fs::remove_file(&ti).unwrap();
    fs::create_dir(&ti).unwrap();
    assert!(log.truncate_to(1).is_err());
    // Half-truncated, the log takes no more writes.
    assert!(log.is_offline());
    fs::remove_dir(&ti).unwrap(); // the fault goes away
    assert!(
        log.append_as_leader(&one(99), 0, AppendOrigin::Client)
            .is_err()
    );
}
