//! The health of this broker's log directory: what an I/O error in a
//! partition's write does to the broker.
//!
//! Kafka takes a log directory offline at its first I/O error
//! (`LogDirFailureChannel`): every partition in it answers
//! KAFKA_STORAGE_ERROR, and a broker whose every log directory failed halts
//! (`LogManager`: "Shutdown broker because all log dirs ... have failed"),
//! so that the controller moves its leaderships to replicas that can write.
//! A Strom broker has one log directory, and in a cluster it does the same:
//! the first failed write fails the directory, every later append here is
//! refused with KAFKA_STORAGE_ERROR, and the broker stops (a controlled
//! shutdown first, so leaderships move at once; then exit status 1).
//!
//! Refusing every later append matters for idempotent producers: a write
//! undone after an I/O error followed by the producer's next pipelined batch
//! would otherwise answer OUT_OF_ORDER_SEQUENCE, on which librdkafka bumps
//! the producer's epoch and re-sends, under new sequence numbers, batches
//! that may already be stored (duplicates, found by `strom-chaos`'s
//! disk-full fault). KAFKA_STORAGE_ERROR is retriable with the same
//! sequence numbers.
//!
//! A broker with no replica elsewhere to take over (a single node) keeps
//! Strom's gentler behaviour: the failed write is refused, the log stays
//! online when the write was undone, and records are taken again once a
//! full disk has space.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use strom_storage::{AppendError, PartitionLog};
use tokio_util::sync::CancellationToken;

/// Whether other brokers could lead this broker's partitions (asked at the
/// failure, as the cluster may have grown since the start).
pub type HasPeers = Arc<dyn Fn() -> bool + Send + Sync>;

/// The log directory's health, shared by every partition on the broker.
pub struct LogDirHealth {
    dir: PathBuf,
    has_peers: HasPeers,
    /// Set at the first failure in a cluster: no more appends.
    failed: AtomicBool,
    /// The first failure, for the broker's exit message.
    why: Mutex<Option<String>>,
    /// Cancelled at the first failure in a cluster: the broker stops.
    stop: CancellationToken,
}

impl std::fmt::Debug for LogDirHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogDirHealth")
            .field("dir", &self.dir)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl LogDirHealth {
    /// The health of `dir`; `has_peers` says whether a failure should fail
    /// the directory and stop the broker.
    pub fn new(dir: impl Into<PathBuf>, has_peers: HasPeers) -> Arc<Self> {
        Arc::new(Self {
            dir: dir.into(),
            has_peers,
            failed: AtomicBool::new(false),
            why: Mutex::new(None),
            stop: CancellationToken::new(),
        })
    }

    /// A directory that never fails as a whole (a single node, tests).
    pub fn standalone() -> Arc<Self> {
        Self::new(PathBuf::new(), Arc::new(|| false))
    }

    /// Whether the directory failed: every append is refused.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Why the directory failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.why.lock().clone()
    }

    /// Cancelled when the directory fails: the broker must stop.
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Called with every refused append of `log`: an I/O error (or a log
    /// an earlier I/O error took offline) fails the directory when other
    /// brokers can take over.
    pub fn check(&self, topic: &str, partition: i32, log: &PartitionLog, error: &AppendError) {
        let io = match error {
            AppendError::Io(e) => e.to_string(),
            // A closed log (deleted, shutting down) is not a failure.
            AppendError::Offline if log.is_offline() => "the log is offline".to_owned(),
            _ => return,
        };
        if self.is_failed() || !(self.has_peers)() {
            return;
        }
        let why = format!("{topic}-{partition}: {io}");
        {
            let mut first = self.why.lock();
            if first.is_some() {
                return;
            }
            *first = Some(why.clone());
        }
        self.failed.store(true, Ordering::Release);
        tracing::error!(
            dir = %self.dir.display(),
            error = %why,
            "the log directory failed: refusing every append (KAFKA_STORAGE_ERROR) and stopping the broker so that its leaderships move (Kafka halts a broker whose log directories all failed)"
        );
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> (tempfile::TempDir, Arc<PartitionLog>) {
        let dir = tempfile::tempdir().unwrap();
        let logs = strom_storage::LogManager::open(
            strom_storage::LogManagerConfig::new(dir.path()),
            Arc::new(strom_storage::SystemClock),
            &|_| strom_storage::LogConfig::default(),
        )
        .unwrap();
        let log = logs
            .get_or_create(
                &strom_storage::TopicPartition::new("t", 0),
                strom_storage::LogConfig::default(),
            )
            .unwrap();
        (dir, log)
    }

    fn io() -> AppendError {
        AppendError::Io(std::io::Error::other("No space left on device"))
    }

    #[test]
    fn an_io_error_in_a_cluster_fails_the_directory_once() {
        let (_dir, log) = log();
        let health = LogDirHealth::new("/data", Arc::new(|| true));
        let stop = health.stopping();
        health.check(
            "t",
            0,
            &log,
            &AppendError::OutOfOrderSequence {
                producer_id: 1,
                expected: 1,
                found: 2,
            },
        );
        assert!(!health.is_failed(), "a refusal is not an I/O error");
        health.check("t", 0, &log, &io());
        assert!(health.is_failed());
        assert!(stop.is_cancelled());
        health.check("t", 1, &log, &io());
        assert_eq!(
            health.failure().as_deref(),
            Some("t-0: No space left on device"),
            "the first failure is the one told"
        );
    }

    #[test]
    fn a_single_node_keeps_its_directory() {
        let (_dir, log) = log();
        let health = LogDirHealth::new("/data", Arc::new(|| false));
        health.check("t", 0, &log, &io());
        assert!(!health.is_failed());
        assert!(!health.stopping().is_cancelled());
    }

    #[test]
    fn a_closed_log_is_not_a_failure() {
        let (_dir, log) = log();
        let health = LogDirHealth::new("/data", Arc::new(|| true));
        log.close().unwrap();
        health.check("t", 0, &log, &AppendError::Offline);
        assert!(!health.is_failed());
    }
}
