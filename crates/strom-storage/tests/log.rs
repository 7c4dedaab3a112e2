//! Behaviour of one partition log: appends, reads, rolls, limits, truncation.
#![allow(clippy::cast_possible_truncation, clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{batch, open_clean, open_unclean, read_all};
use strom_protocol::compression::Compression;
use strom_protocol::record_batch::{
    self, BatchError, CRC_OFFSET, LENGTH_OFFSET, MAGIC_OFFSET, MAX_TIMESTAMP_OFFSET, TimestampType,
};
use strom_storage::{
    AppendError, AppendOrigin, FileCache, LoadOptions, LogConfig, ManualClock, PartitionLog,
    ReadError,
};

const CODECS: [Compression; 5] = Compression::ALL;

#[test]
fn stored_batches_equal_input_except_offset_and_epoch_for_every_codec() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), LogConfig::default());
    let mut inputs = Vec::new();
    for codec in CODECS {
        for (count, value_len) in [(1, 0), (1, 10), (10, 1024), (1000, 100), (3, 100_000)] {
            let input = batch(count, value_len, 1_700_000_000_000, codec);
            let info = log
                .append_as_leader(&input, 7, AppendOrigin::Client)
                .unwrap();
            assert_eq!(info.last_offset - info.first_offset + 1, count as i64);
            inputs.push((info.first_offset, input));
        }
    }
    let stored = read_all(&log);
    assert_eq!(stored.len(), inputs.len());
    for (stored, (first_offset, input)) in stored.iter().zip(&inputs) {
        assert_eq!(stored.len(), input.len());
        let header = record_batch::validate_batch(stored).unwrap();
        assert_eq!(header.base_offset, *first_offset);
        assert_eq!(header.partition_leader_epoch, 7);
        // Base offset [0, 8) and leader epoch [12, 16) are rewritten; the
        // length and everything from magic on are the producer's bytes.
        assert_eq!(stored[LENGTH_OFFSET..12], input[LENGTH_OFFSET..12]);
        assert_eq!(stored[MAGIC_OFFSET..], input[MAGIC_OFFSET..]);
        assert_eq!(common::values(stored), common::values(input));
    }
}

#[test]
fn refuses_bad_magic_bad_crc_oversized_and_non_client_batches_distinctly() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        max_message_bytes: 2000,
        ..LogConfig::default()
    };
    let log = open_clean(dir.path(), config);
    let good = batch(2, 10, 0, Compression::None);

    let mut magic = good.to_vec();
    magic[MAGIC_OFFSET] = 1;
    assert!(matches!(
        log.append_as_leader(&magic, 0, AppendOrigin::Client),
        Err(AppendError::UnsupportedMagic(1))
    ));

    let mut crc = good.to_vec();
    let last = crc.len() - 1;
    crc[last] ^= 0xff;
    assert!(matches!(
        log.append_as_leader(&crc, 0, AppendOrigin::Client),
        Err(AppendError::Corrupt(BatchError::CrcMismatch { .. }))
    ));

    let big = batch(1, 3000, 0, Compression::None);
    assert!(matches!(
        log.append_as_leader(&big, 0, AppendOrigin::Client),
        Err(AppendError::MessageTooLarge { max: 2000, .. })
    ));

    let mut torn = good.to_vec();
    torn.truncate(good.len() - 3);
    assert!(matches!(
        log.append_as_leader(&torn, 0, AppendOrigin::Client),
        Err(AppendError::Corrupt(BatchError::Truncated { .. }))
    ));

    let mut nonzero_base = good.to_vec();
    record_batch::set_base_offset(&mut nonzero_base, 5);
    assert!(matches!(
        log.append_as_leader(&nonzero_base, 0, AppendOrigin::Client),
        Err(AppendError::InvalidRecord(_))
    ));
    assert!(matches!(
        log.append_as_leader(&[], 0, AppendOrigin::Client),
        Err(AppendError::Empty)
    ));

    // Nothing was written by any refused append.
    assert_eq!(log.log_end_offset(), 0);
    assert_eq!(log.size_bytes(), 0);
    log.append_as_leader(&good, 0, AppendOrigin::Client)
        .unwrap();
    assert_eq!(log.log_end_offset(), 2);
}

#[test]
fn log_append_time_restamps_the_header_only() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_234_567));
    let config = LogConfig {
        message_timestamp_type: TimestampType::LogAppendTime,
        ..LogConfig::default()
    };
    let log = PartitionLog::open(
        dir.path(),
        config,
        Arc::new(FileCache::default()),
        clock,
        LoadOptions::default(),
    )
    .unwrap();
    let input = batch(5, 50, 1000, Compression::Lz4);
    let info = log
        .append_as_leader(&input, 0, AppendOrigin::Client)
        .unwrap();
    assert_eq!(info.log_append_time_ms, 1_234_567);
    assert_eq!(info.timestamp_type, TimestampType::LogAppendTime);
    let stored = &read_all(&log)[0];
    let header = record_batch::validate_batch(stored).unwrap();
    assert_eq!(header.timestamp_type(), TimestampType::LogAppendTime);
    assert_eq!(header.max_timestamp, 1_234_567);
    // Records untouched.
    assert_eq!(
        stored[MAX_TIMESTAMP_OFFSET + 8..],
        input[MAX_TIMESTAMP_OFFSET + 8..]
    );
    assert_ne!(
        stored[CRC_OFFSET..CRC_OFFSET + 4],
        input[CRC_OFFSET..CRC_OFFSET + 4]
    );
}

#[test]
fn rolls_at_segment_bytes_and_reads_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 10_000,
        index_interval_bytes: 500,
        ..LogConfig::default()
    };
    let log = open_clean(dir.path(), config.clone());
    for i in 0..100 {
        log.append_as_leader(
            &batch(3, 300, i, Compression::None),
            0,
            AppendOrigin::Client,
        )
        .unwrap();
    }
    assert!(
        log.segment_count() > 5,
        "expected rolls, got {} segments",
        log.segment_count()
    );
    let bases = log.segment_base_offsets();
    assert_eq!(bases[0], 0);
    for name in bases.iter().map(|b| format!("{b:020}.log")) {
        assert!(dir.path().join(&name).exists(), "{name} missing");
    }
    // Reads return data from one segment at a time and never cross a batch.
    for offset in 0..300 {
        let read = log.read(offset, 2500, None, true).unwrap();
        let bytes = read.records.read().unwrap();
        let first = record_batch::batches(&bytes)
            .next()
            .unwrap()
            .unwrap()
            .header;
        assert!(first.base_offset <= offset && offset <= first.last_offset());
        assert!(bytes.len() <= 2500);
        assert!(
            record_batch::batches(&bytes).all(|b| b.is_ok()),
            "whole batches only"
        );
    }
    assert_eq!(read_all(&log).len(), 100);
    drop(log);
    let reopened = open_clean(dir.path(), config);
    assert_eq!(reopened.log_end_offset(), 300);
    assert_eq!(read_all(&reopened).len(), 100);
}

#[test]
fn rolls_when_record_timestamps_span_segment_ms() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_ms: 1000,
        ..LogConfig::default()
    };
    let log = open_clean(dir.path(), config);
    log.append_as_leader(
        &batch(1, 10, 10_000, Compression::None),
        0,
        AppendOrigin::Client,
    )
    .unwrap();
    log.append_as_leader(
        &batch(1, 10, 10_900, Compression::None),
        0,
        AppendOrigin::Client,
    )
    .unwrap();
    assert_eq!(log.segment_count(), 1);
    log.append_as_leader(
        &batch(1, 10, 11_001, Compression::None),
        0,
        AppendOrigin::Client,
    )
    .unwrap();
    assert_eq!(log.segment_base_offsets(), vec![0, 2]);
}

#[test]
fn read_limits_bound_and_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), LogConfig::default());
    let sizes: Vec<usize> = (0..10)
        .map(|i| {
            let b = batch(2, 100 * (i + 1), 0, Compression::None);
            log.append_as_leader(&b, 0, AppendOrigin::Client).unwrap();
            b.len()
        })
        .collect();
    // max_bytes takes only whole batches.
    let read = log.read(0, sizes[0] + sizes[1] + 10, None, true).unwrap();
    assert_eq!(read.records.len(), sizes[0] + sizes[1]);
    // A first batch larger than max_bytes comes whole with min_one_batch ...
    let read = log.read(0, 10, None, true).unwrap();
    assert_eq!(read.records.len(), sizes[0]);
    // ... and not at all without.
    assert!(log.read(0, 10, None, false).unwrap().records.is_empty());
    // max_offset (a high watermark) hides batches at and above it.
    let read = log.read(0, 1 << 20, Some(6), true).unwrap();
    assert_eq!(read.records.len(), sizes[..3].iter().sum::<usize>());
    assert!(
        log.read(6, 1 << 20, Some(6), true)
            .unwrap()
            .records
            .is_empty()
    );
    // At the log end: empty; beyond or below the log: out of range.
    assert!(log.read(20, 100, None, true).unwrap().records.is_empty());
    assert!(matches!(
        log.read(21, 100, None, true),
        Err(ReadError::OffsetOutOfRange { .. })
    ));
    assert!(matches!(
        log.read(-1, 100, None, true),
        Err(ReadError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn truncate_and_advance_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 2_000,
        file_delete_delay_ms: 0,
        ..LogConfig::default()
    };
    let log = open_clean(dir.path(), config.clone());
    for i in 0..40 {
        log.append_as_leader(
            &batch(2, 100, i, Compression::None),
            i as i32 / 10,
            AppendOrigin::Client,
        )
        .unwrap();
    }
    assert_eq!(log.log_end_offset(), 80);
    let segments_before = log.segment_count();
    assert!(segments_before > 3);

    // Truncation at a batch boundary keeps exactly the offsets below it.
    log.truncate_to(50).unwrap();
    assert_eq!(log.log_end_offset(), 50);
    assert_eq!(read_all(&log).len(), 25);
    assert_eq!(log.leader_epochs().last().unwrap().epoch, 2);
    // Inside a batch: the whole batch goes.
    log.truncate_to(45).unwrap();
    assert_eq!(log.log_end_offset(), 44);
    let info = log
        .append_as_leader(
            &batch(2, 100, 0, Compression::None),
            5,
            AppendOrigin::Client,
        )
        .unwrap();
    assert_eq!(info.first_offset, 44);
    assert_eq!(log.end_offset_for_epoch(2), Some((2, 44)));

    // The log start moves; whole segments below it are deleted.
    log.advance_log_start_offset(30).unwrap();
    assert_eq!(log.log_start_offset(), 30);
    assert!(log.segment_base_offsets()[0] <= 30);
    assert!(log.segment_count() < segments_before);
    assert!(matches!(
        log.read(29, 100, None, true),
        Err(ReadError::OffsetOutOfRange { .. })
    ));
    let first = read_all(&log)[0].clone();
    let header = record_batch::validate_batch(&first).unwrap();
    assert!(header.base_offset <= 30 && 30 <= header.last_offset());
    assert!(log.advance_log_start_offset(1000).is_err());
    let deleted: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".deleted"))
        .collect();
    assert!(deleted.is_empty(), "file.delete.delay.ms=0 deletes at once");

    // All of it survives a clean close and an unclean reopen alike.
    log.close().unwrap();
    drop(log);
    let reopened = common::open_with(
        dir.path(),
        config.clone(),
        LoadOptions {
            clean_shutdown: true,
            recovery_point: 0,
            log_start_offset: Some(30),
            offset_gaps: false,
        },
    );
    assert_eq!(
        (reopened.log_start_offset(), reopened.log_end_offset()),
        (30, 46)
    );
    drop(reopened);
    let recovered = open_unclean(dir.path(), config);
    assert_eq!(recovered.log_end_offset(), 46);
}

#[test]
fn follower_appends_keep_offsets_and_refuse_going_back() {
    let dir = tempfile::tempdir().unwrap();
    let leader_dir = tempfile::tempdir().unwrap();
    let leader = open_clean(leader_dir.path(), LogConfig::default());
    for i in 0..5 {
        leader
            .append_as_leader(&batch(3, 20, i, Compression::Gzip), 4, AppendOrigin::Client)
            .unwrap();
    }
    let fetched = leader
        .read(0, 1 << 20, None, true)
        .unwrap()
        .records
        .read()
        .unwrap();
    let follower = open_clean(dir.path(), LogConfig::default());
    let info = follower.append_as_follower(&fetched).unwrap();
    assert_eq!((info.first_offset, info.last_offset), (0, 14));
    assert_eq!(read_all(&follower), read_all(&leader));
    assert_eq!(follower.leader_epochs()[0].epoch, 4);
    assert!(matches!(
        follower.append_as_follower(&fetched),
        Err(AppendError::OffsetOutOfOrder { .. })
    ));
}

#[test]
fn flush_messages_moves_the_recovery_point() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        flush_messages: Some(5),
        ..LogConfig::default()
    };
    let log = open_clean(dir.path(), config);
    log.append_as_leader(&batch(3, 10, 0, Compression::None), 0, AppendOrigin::Client)
        .unwrap();
    assert_eq!(log.recovery_point(), 0);
    log.append_as_leader(&batch(3, 10, 0, Compression::None), 0, AppendOrigin::Client)
        .unwrap();
    assert_eq!(log.recovery_point(), 6);
}

#[test]
fn timestamp_lookups() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(
        dir.path(),
        LogConfig {
            segment_bytes: 1500,
            index_interval_bytes: 100,
            ..LogConfig::default()
        },
    );
    // Timestamps go up, then one batch jumps back in time.
    for ts in [100, 200, 300, 150, 400, 500] {
        let b = common::batch_with_timestamps(&[ts, ts + 5, ts + 10], 200, Compression::Zstd);
        log.append_as_leader(&b, 0, AppendOrigin::Client).unwrap();
    }
    let at = |t| {
        log.offset_for_timestamp(t, None)
            .unwrap()
            .map(|r| (r.offset, r.timestamp))
    };
    assert_eq!(at(0), Some((0, 100)));
    assert_eq!(at(101), Some((1, 105)));
    assert_eq!(at(150), Some((3, 200)));
    assert_eq!(at(310), Some((8, 310)));
    assert_eq!(at(311), Some((12, 400)));
    assert_eq!(at(511), None);
    let max = log.max_timestamp_offset().unwrap().unwrap();
    assert_eq!((max.offset, max.timestamp), (17, 510));
    // Bounded by a high watermark.
    assert_eq!(log.offset_for_timestamp(400, Some(12)).unwrap(), None);
}
