//! Strom's storage engine: every partition is an append-only log on disk, in
//! the shape Kafka uses, so that a produce appends the producer's bytes and a
//! fetch serves stored bytes without re-encoding.
//!
//! # Layout
//!
//! - [`manager`]: [`LogManager`], a data directory of partition logs
//!   (`topic-N/`), the clean-shutdown marker, recovery-point and log-start
//!   checkpoints, the background thread that fsyncs rolled segments, honours
//!   `flush.ms`, deletes removed segments and runs retention, and the log
//!   cleaner's thread.
//! - [`log`]: [`PartitionLog`], one partition. Its struct, fields and shared
//!   helpers are in `log/mod.rs`; each concern adds methods from its own
//!   module: `append` (leader and follower appends, validation, rolling
//!   segments), `read` (reads, timestamp lookups, the last stable offset and
//!   aborted transactions), `retention` (time and size retention, the log
//!   start offset, DeleteRecords; [`PartitionLog::delete_retained_segments`]),
//!   `recovery` (opening, recovering segments, completing an interrupted
//!   swap, truncation, rebuilding producer state), `flush` (fsync, the
//!   recovery point, periodic duties, close) and `compaction` (compacting one
//!   log: the rewrite and the crash-safe `.cleaned`/`.swap` protocol). Below
//!   them: `segment` (one `.log` with its indexes), `index` (the sparse
//!   `.index` and `.timeindex` formats), `scan` (sequential batch reading),
//!   `epoch_cache` (`leader-epoch-checkpoint`), `producer_state` (idempotent
//!   producers' epochs and sequences, open transactions, KIP-890
//!   verification guards, and their `.snapshot` files), `txn_index` (the aborted-transaction `.txnindex`).
//! - [`cleaner`]: the log cleaner of a data directory ([`manager`]'s cleaner
//!   thread runs it): choosing the filthiest compacted log,
//!   `cleaner-offset-checkpoint`, the bounded offset map, the I/O throttle,
//!   the hooks transactions fill ([`TxnCleanHooks`]). The work on one log is
//!   `log::compaction`.
//! - [`file_cache`]: the bounded cache of open file handles shared by all logs.
//! - [`config`]: [`LogConfig`], Kafka's per-topic log settings and defaults.
//! - [`checkpoint`]: Kafka's small checkpoint file format, written atomically.
//! - [`clock`]: the time seam.
//! - [`error`]: [`AppendError`], [`ReadError`], [`StorageError`].

#![cfg_attr(test, allow(clippy::cast_possible_truncation))]

pub mod checkpoint;
pub mod cleaner;
pub mod clock;
pub mod config;
pub mod error;
pub mod file_cache;
pub mod log;
pub mod manager;

pub use cleaner::{
    CleanOutcome, CleanStats, CleanerConfig, NoTxnCleanHooks, TransactionCleanHooks, TxnCleanHooks,
    TxnCleanPass,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::LogConfig;
pub use error::{AppendError, ReadError, StorageError};
pub use file_cache::FileCache;
pub use log::{
    AppendInfo, AppendOrigin, LoadOptions, LogRead, LogSlice, PartitionLog, ProducerStateView,
    RetentionOutcome, TimestampOffset, TxnVerification, VerificationGuard,
};
pub use manager::{LogManager, LogManagerConfig, TopicPartition};
