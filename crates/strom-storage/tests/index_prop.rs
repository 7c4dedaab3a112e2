//! Property test: offset and timestamp lookups through the sparse indexes give
//! exactly what a linear scan of every record gives, before and after a clean
//! reopen and after recovery.
#![allow(clippy::cast_possible_truncation, clippy::unwrap_used)]

mod common;

use common::{open_clean, open_unclean};
use proptest::prelude::*;
use strom_protocol::builder::RecordBatchBuilder;
use strom_protocol::compression::Compression;
use strom_protocol::record_batch;
use strom_storage::{AppendOrigin, LogConfig, PartitionLog};

/// One batch to append: record timestamps and a value size.
#[derive(Debug, Clone)]
struct BatchSpec {
    timestamps: Vec<i64>,
    value_len: usize,
    compressed: bool,
}

fn batch_spec() -> impl Strategy<Value = BatchSpec> {
    (
        prop::collection::vec(0i64..5_000, 1..12),
        0usize..400,
        any::<bool>(),
    )
        .prop_map(|(timestamps, value_len, compressed)| BatchSpec {
            timestamps,
            value_len,
            compressed,
        })
}

/// `(offset, timestamp)` of every record, in offset order.
fn build(log: &PartitionLog, specs: &[BatchSpec]) -> Vec<(i64, i64)> {
    let mut records = Vec::new();
    for spec in specs {
        let codec = if spec.compressed {
            Compression::Lz4
        } else {
            Compression::None
        };
        let mut builder = RecordBatchBuilder::new(codec);
        for ts in &spec.timestamps {
            builder.push(*ts, None, Some(&vec![7u8; spec.value_len]), &[]);
        }
        let info = log
            .append_as_leader(&builder.build().unwrap(), 0, AppendOrigin::Client)
            .unwrap();
        for (i, ts) in spec.timestamps.iter().enumerate() {
            records.push((info.first_offset + i as i64, *ts));
        }
    }
    records
}

fn check(
    log: &PartitionLog,
    records: &[(i64, i64)],
    offsets: &[usize],
    timestamps: &[i64],
    max_bytes: &[usize],
) {
    let end = records.len() as i64;
    assert_eq!(log.log_end_offset(), end);
    for o in offsets {
        let offset = (*o as u64 % end as u64) as i64;
        let bytes = log
            .read(offset, 1, None, true)
            .unwrap()
            .records
            .read()
            .unwrap();
        let header = record_batch::validate_batch(&bytes).unwrap();
        assert!(
            header.base_offset <= offset && offset <= header.last_offset(),
            "offset {offset} read batch {}..={}",
            header.base_offset,
            header.last_offset()
        );
    }
    // Reads of any size: whole batches only, starting with the one holding
    // the offset, contiguous, within max_bytes unless a single batch.
    for (o, max) in offsets.iter().zip(max_bytes) {
        let offset = (*o as u64 % end as u64) as i64;
        let bytes = log
            .read(offset, *max, None, true)
            .unwrap()
            .records
            .read()
            .unwrap();
        let mut next = None;
        let mut count = 0;
        for b in record_batch::batches(&bytes) {
            let b = b.expect("whole batches");
            let header = record_batch::validate_batch(b.bytes).unwrap();
            match next {
                None => assert!(header.base_offset <= offset && offset <= header.last_offset()),
                Some(n) => assert_eq!(header.base_offset, n, "contiguous batches"),
            }
            next = Some(header.next_offset());
            count += 1;
        }
        assert!(count >= 1);
        assert!(
            bytes.len() <= *max || count == 1,
            "{} bytes for max {max}",
            bytes.len()
        );
    }
    for t in timestamps {
        let expected = records.iter().find(|(_, ts)| ts >= t).copied();
        let found = log
            .offset_for_timestamp(*t, None)
            .unwrap()
            .map(|r| (r.offset, r.timestamp));
        assert_eq!(found, expected, "timestamp {t}");
    }
    let max = records.iter().map(|(_, ts)| *ts).max().unwrap();
    let first_max = records.iter().find(|(_, ts)| *ts == max).copied();
    let found = log
        .max_timestamp_offset()
        .unwrap()
        .map(|r| (r.offset, r.timestamp));
    assert_eq!(found, first_max);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn lookups_equal_a_linear_scan(
        specs in prop::collection::vec(batch_spec(), 1..120),
        offsets in prop::collection::vec(any::<usize>(), 50),
        max_bytes in prop::collection::vec(1usize..30_000, 50),
        timestamps in prop::collection::vec(-10i64..5_100, 50),
        interval in 1u32..2_000,
        segment_bytes in 6_000u32..40_000,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            index_interval_bytes: interval,
            segment_bytes,
            ..LogConfig::default()
        };
        let log = open_clean(dir.path(), config.clone());
        let records = build(&log, &specs);
        check(&log, &records, &offsets, &timestamps, &max_bytes);

        // A crash: nothing sealed or flushed; recovery rebuilds every index.
        drop(log);
        let log = open_unclean(dir.path(), config.clone());
        check(&log, &records, &offsets, &timestamps, &max_bytes);

        // A clean close and start: the indexes as written are used.
        log.close().unwrap();
        drop(log);
        let log = open_clean(dir.path(), config);
        check(&log, &records, &offsets, &timestamps, &max_bytes);
    }
}
