//! The commit seam: where one operation's batch of metadata records becomes
//! durable. [`MetadataLog`] is what the controller needs of the log: append a
//! batch after every batch committed before it, and read the committed
//! batches back in order. Today [`LocalMetadataLog`] appends to this node's
//! `__cluster_metadata` partition and fsyncs; a replicated quorum implements
//! the same trait with a majority write. [`MemoryMetadataLog`] keeps batches
//! in memory, for tests and simulations.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use strom_protocol::record_batch::BatchHeader;
use strom_storage::{AppendOrigin, PartitionLog};

/// Why a batch could not be committed or read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataLogError {
    /// The log's storage failed (a disk error, a closed log).
    #[error("{0}")]
    Storage(String),
    /// The batch is not a valid record batch.
    #[error("invalid metadata batch: {0}")]
    InvalidBatch(String),
}

/// The metadata log as the controller uses it.
///
/// One writer at a time: the controller commits batches in the order it
/// proposed them, each against the image every earlier batch produced.
pub trait MetadataLog: Send + Sync + fmt::Debug {
    /// Offset of the first record still in the log.
    fn log_start_offset(&self) -> i64;

    /// Offset the next committed record gets.
    fn log_end_offset(&self) -> i64;

    /// Makes `batch` (one operation's records, a v2 record batch whose base
    /// offset the log assigns) durable after every batch committed before it,
    /// and returns the offset of its first record. Once this returns `Ok`, the
    /// batch survives a crash and is replayed by [`MetadataLog::replay`].
    fn commit(&self, batch: &Bytes) -> Result<i64, MetadataLogError>;

    /// Calls `f` with every committed batch, in offset order, from the one
    /// holding offset `from`: its base offset and its bytes.
    fn replay(&self, from: i64, f: &mut dyn FnMut(i64, &[u8])) -> Result<(), MetadataLogError>;
}

/// This node's `__cluster_metadata` partition: a commit appends the batch and
/// fsyncs the log before it returns (the metadata log is never left to the
/// page cache, unlike partition logs: every other log depends on it).
#[derive(Debug, Clone)]
pub struct LocalMetadataLog {
    log: Arc<PartitionLog>,
}

impl LocalMetadataLog {
    pub fn new(log: Arc<PartitionLog>) -> Self {
        Self { log }
    }

    /// The underlying partition log.
    pub fn log(&self) -> &Arc<PartitionLog> {
        &self.log
    }
}

impl MetadataLog for LocalMetadataLog {
    fn log_start_offset(&self) -> i64 {
        self.log.log_start_offset()
    }

    fn log_end_offset(&self) -> i64 {
        self.log.log_end_offset()
    }

    fn commit(&self, batch: &Bytes) -> Result<i64, MetadataLogError> {
        let info = self
            .log
            .append_as_leader(batch, 0, AppendOrigin::Coordinator)
            .map_err(|e| MetadataLogError::Storage(e.to_string()))?;
        self.log
            .flush()
            .map_err(|e| MetadataLogError::Storage(e.to_string()))?;
        Ok(info.first_offset)
    }

    fn replay(&self, from: i64, f: &mut dyn FnMut(i64, &[u8])) -> Result<(), MetadataLogError> {
        self.log
            .for_each_batch_from(from, |_, header, bytes| f(header.base_offset, bytes))
            .map_err(|e| MetadataLogError::Storage(e.to_string()))
    }
}

/// Committed batches kept in memory: for tests of the controller without
/// files, and for simulations. Nothing survives the value.
#[derive(Debug, Default)]
pub struct MemoryMetadataLog {
    /// `(base offset, batch)` in offset order, and the next offset.
    state: Mutex<(Vec<(i64, Bytes)>, i64)>,
}

impl MemoryMetadataLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many batches were committed.
    pub fn batch_count(&self) -> usize {
        self.state.lock().0.len()
    }
}

impl MetadataLog for MemoryMetadataLog {
    fn log_start_offset(&self) -> i64 {
        0
    }

    fn log_end_offset(&self) -> i64 {
        self.state.lock().1
    }

    fn commit(&self, batch: &Bytes) -> Result<i64, MetadataLogError> {
        let header =
            BatchHeader::parse(batch).map_err(|e| MetadataLogError::InvalidBatch(e.to_string()))?;
        let count = i64::from(header.last_offset_delta) + 1;
        if count <= 0 {
            return Err(MetadataLogError::InvalidBatch(format!(
                "last offset delta {}",
                header.last_offset_delta
            )));
        }
        let mut state = self.state.lock();
        let base_offset = state.1;
        state.0.push((base_offset, batch.clone()));
        state.1 += count;
        Ok(base_offset)
    }

    fn replay(&self, from: i64, f: &mut dyn FnMut(i64, &[u8])) -> Result<(), MetadataLogError> {
        // Copied out first: `f` may take its time, and commits must not wait.
        let (batches, end) = {
            let state = self.state.lock();
            (state.0.clone(), state.1)
        };
        for (i, (base, batch)) in batches.iter().enumerate() {
            let next = batches.get(i + 1).map_or(end, |(b, _)| *b);
            if next > from {
                f(*base, batch);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{MetadataRecord, decode_batch, encode_batch};

    fn batch(n: usize) -> Bytes {
        let records: Vec<_> = (0..n)
            .map(|i| MetadataRecord::ClusterId {
                cluster_id: format!("c{i}"),
            })
            .collect();
        encode_batch(&records, 1).unwrap()
    }

    #[test]
    fn memory_log_assigns_offsets_in_commit_order_and_replays_from_a_batch() {
        let log = MemoryMetadataLog::new();
        assert_eq!(log.commit(&batch(2)).unwrap(), 0);
        assert_eq!(log.commit(&batch(3)).unwrap(), 2);
        assert_eq!(log.commit(&batch(1)).unwrap(), 5);
        assert_eq!(log.log_end_offset(), 6);
        let mut seen = Vec::new();
        log.replay(3, &mut |base, bytes| {
            let records = decode_batch(&Bytes::copy_from_slice(bytes)).unwrap();
            seen.push((base, records.len()));
        })
        .unwrap();
        // Offset 3 is inside the second batch: it is replayed whole.
        assert_eq!(seen, vec![(2, 3), (5, 1)]);
        assert!(matches!(
            log.commit(&Bytes::from_static(b"not a batch")),
            Err(MetadataLogError::InvalidBatch(_))
        ));
        assert_eq!(log.batch_count(), 3);
    }
}
