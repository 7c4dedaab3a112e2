//! Strom's storage engine: every partition is an append-only log on disk, in
//! the shape Kafka uses, so that a produce appends the producer's bytes and a
//! fetch serves stored bytes without re-encoding.
//!
//! # Layout
//!
//! - [`manager`]: [`LogManager`], a data directory of partition logs
//!   (`topic-N/`), the clean-shutdown marker, recovery-point and log-start
//!   checkpoints, and the background thread that fsyncs rolled segments,
//!   honours `flush.ms` and deletes removed segments.
//! - [`log`]: [`PartitionLog`], one partition: append (leader and follower),
//!   read, timestamp lookup, truncation, log start offset, flush, recovery.
//!   Inside it: `segment` (one `.log` with its indexes), `index` (the sparse
//!   `.index` and `.timeindex` formats), `scan` (sequential batch reading),
//!   `epoch_cache` (`leader-epoch-checkpoint`), `producer_state` (idempotent
//!   producers' epochs and sequences, and their `.snapshot` files).
//!   Retention is [`PartitionLog::delete_retained_segments`].
//! - [`file_cache`]: the bounded cache of open file handles shared by all logs.
//! - [`config`]: [`LogConfig`], Kafka's per-topic log settings and defaults.
//! - [`checkpoint`]: Kafka's small checkpoint file format, written atomically.
//! - [`clock`]: the time seam.
//! - [`error`]: [`AppendError`], [`ReadError`], [`StorageError`].

#![cfg_attr(test, allow(clippy::cast_possible_truncation))]

pub mod checkpoint;
pub mod clock;
pub mod config;
pub mod error;
pub mod file_cache;
pub mod log;
pub mod manager;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::LogConfig;
pub use error::{AppendError, ReadError, StorageError};
pub use file_cache::FileCache;
pub use log::{
    AppendInfo, AppendOrigin, LoadOptions, LogRead, LogSlice, PartitionLog, ProducerStateView,
    RetentionOutcome, TimestampOffset,
};
pub use manager::{LogManager, LogManagerConfig, TopicPartition};
