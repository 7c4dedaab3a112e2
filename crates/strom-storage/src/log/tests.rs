//! Unit tests of the on-disk index format, against Kafka's semantics.

use std::sync::Arc;

use bytes::Bytes;
use strom_protocol::builder::RecordBatchBuilder;
use strom_protocol::compression::Compression;

use super::*;
use crate::clock::SystemClock;

fn batch(records: usize, value_len: usize, timestamp: i64) -> Bytes {
    let mut builder = RecordBatchBuilder::new(Compression::None);
    for i in 0..records {
        builder.push(timestamp + i as i64, None, Some(&vec![1u8; value_len]), &[]);
    }
    builder.build().unwrap()
}

fn open(dir: &Path, config: LogConfig) -> PartitionLog {
    PartitionLog::open(
        dir,
        config,
        Arc::new(FileCache::default()),
        Arc::new(SystemClock),
        LoadOptions {
            clean_shutdown: true,
            ..LoadOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn index_entries_follow_kafkas_rules() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        index_interval_bytes: 1000,
        segment_bytes: 100_000,
        ..LogConfig::default()
    };
    let log = open(dir.path(), config);
    let mut positions = Vec::new();
    // Timestamps rise, except every fifth batch goes back in time.
    for i in 0..100i64 {
        positions.push(log.size_bytes());
        let ts = if i % 5 == 4 { 0 } else { 1000 + i * 10 };
        log.append_as_leader(&batch(2, 200, ts), 0, AppendOrigin::Client)
            .unwrap();
    }
    log.close().unwrap();
    let segment = log.segment(0).unwrap();
    let (offsets, times) = segment.index_entries().unwrap();
    assert!(!offsets.is_empty());
    let batch_size = positions[1] - positions[0];
    let mut previous = None;
    for e in &offsets {
        // Each entry names a batch's last offset and that batch's position.
        let batch_index = (e.relative_offset / 2) as usize;
        assert_eq!(
            e.relative_offset % 2,
            1,
            "entries name the last offset of a batch"
        );
        assert_eq!(u64::from(e.position), positions[batch_index]);
        if let Some(p) = previous {
            // More than index.interval.bytes between entries, and at most one batch more.
            let gap = u64::from(e.position) - u64::from(p);
            assert!(gap > 1000 && gap <= 1000 + 2 * batch_size, "gap {gap}");
        }
        previous = Some(e.position);
    }
    assert!(
        times.windows(2).all(
            |w| w[0].timestamp < w[1].timestamp && w[0].relative_offset <= w[1].relative_offset
        )
    );
    // The final entry (written when the segment was sealed) holds the max.
    let last = times.last().unwrap();
    assert_eq!(last.timestamp, 1000 + 98 * 10 + 1);
    assert_eq!(last.relative_offset, 98 * 2 + 1);
    // The files are exactly the entries: no preallocated tail.
    let index_len = std::fs::metadata(dir.path().join("00000000000000000000.index"))
        .unwrap()
        .len();
    assert_eq!(index_len, offsets.len() as u64 * 8);
}

#[test]
fn rolled_segments_drop_their_index_memory() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        index_interval_bytes: 100,
        segment_bytes: 5_000,
        ..LogConfig::default()
    };
    let log = open(dir.path(), config);
    for i in 0..50 {
        log.append_as_leader(&batch(1, 300, i), 0, AppendOrigin::Client)
            .unwrap();
    }
    let bases = log.segment_base_offsets();
    assert!(bases.len() > 2);
    let old = log.segment(bases[0]).unwrap();
    assert!(!old.indexes_loaded(), "sealed segments keep no index state");
    // Using it loads the state again, from the files.
    let read = log.read(0, 10, None, true).unwrap();
    assert_eq!(read.records.read().unwrap().len(), batch(1, 300, 0).len());
    assert!(old.indexes_loaded());
}
