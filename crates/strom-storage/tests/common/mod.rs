//! Helpers shared by the storage integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use strom_protocol::builder::RecordBatchBuilder;
use strom_protocol::compression::Compression;
use strom_protocol::record;
use strom_storage::{FileCache, LoadOptions, LogConfig, PartitionLog, SystemClock};

/// A batch of `count` records of `value_len` bytes each, keyed `k<i>`,
/// timestamps from `timestamp_ms` up by 1 ms.
pub fn batch(count: usize, value_len: usize, timestamp_ms: i64, compression: Compression) -> Bytes {
    let mut builder = RecordBatchBuilder::new(compression);
    for i in 0..count {
        let key = format!("k{i}");
        let value: Vec<u8> = (0..value_len).map(|j| (i * 31 + j) as u8).collect();
        builder.push(
            timestamp_ms + i as i64,
            Some(key.as_bytes()),
            Some(&value),
            &[("h", Some(b"v"))],
        );
    }
    builder.build().expect("batch builds")
}

/// A batch whose records carry the given timestamps.
pub fn batch_with_timestamps(
    timestamps: &[i64],
    value_len: usize,
    compression: Compression,
) -> Bytes {
    let mut builder = RecordBatchBuilder::new(compression);
    for (i, ts) in timestamps.iter().enumerate() {
        let value = vec![i as u8; value_len];
        builder.push(*ts, None, Some(&value), &[]);
    }
    builder.build().expect("batch builds")
}

pub fn open_with(dir: &Path, config: LogConfig, options: LoadOptions) -> PartitionLog {
    PartitionLog::open(
        dir,
        config,
        Arc::new(FileCache::default()),
        Arc::new(SystemClock),
        options,
    )
    .expect("log opens")
}

/// Opens as after a clean shutdown (no recovery).
pub fn open_clean(dir: &Path, config: LogConfig) -> PartitionLog {
    open_with(
        dir,
        config,
        LoadOptions {
            clean_shutdown: true,
            ..LoadOptions::default()
        },
    )
}

/// Opens as after a crash: recovery of every segment.
pub fn open_unclean(dir: &Path, config: LogConfig) -> PartitionLog {
    open_with(dir, config, LoadOptions::default())
}

/// Every stored batch from the log start, read through `read`.
pub fn read_all(log: &PartitionLog) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let read = log.read(offset, 1 << 20, None, true).expect("read");
        let bytes = read.records.read().expect("read bytes");
        assert!(
            !bytes.is_empty(),
            "read at {offset} returned nothing below the log end"
        );
        for batch in strom_protocol::record_batch::batches(&bytes) {
            let batch = batch.expect("whole batches only");
            strom_protocol::record_batch::validate_batch(batch.bytes).expect("valid stored batch");
            offset = batch.header.next_offset();
            out.push(bytes.slice_ref(batch.bytes));
        }
    }
    out
}

/// The record values of a stored batch.
pub fn values(batch: &Bytes) -> Vec<Option<Bytes>> {
    record::decode_records(batch, 1 << 30)
        .expect("records decode")
        .into_iter()
        .map(|r| r.value)
        .collect()
}
