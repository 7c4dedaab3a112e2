//! The quorum's Raft log on disk: the `__cluster_metadata` partition log,
//! one record batch per Raft entry at base offset = Raft index, with the
//! batch's partition leader epoch = the Raft term (as KRaft stores its log).
//! The record's value is the entry as JSON. The vote, the last committed
//! entry and the last purged entry live in `quorum-state` next to the log
//! (Kafka's file name), written atomically.
//!
//! Every append is fsynced before openraft is told it is durable: the
//! metadata log decides every other log, so it never waits in the page cache.
//! The entries are also kept in memory (the metadata log is small, and
//! snapshots trim it), so reads never touch the disk.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use openraft::RaftLogReader;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use strom_protocol::builder::RecordBatchBuilder;
use strom_protocol::compression::Compression;
use strom_protocol::record;
use strom_storage::PartitionLog;

use super::{Entry, LogId, TypeConfig, Vote};

/// The file holding the vote, the committed and the purged log ids.
pub(crate) const QUORUM_STATE_FILE: &str = "quorum-state";

/// What `quorum-state` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct QuorumState {
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
}

/// The Raft log: shared by the writer openraft drives and its readers.
#[derive(Clone)]
pub(crate) struct LogStore {
    inner: Arc<Mutex<Inner>>,
    /// The last append failure, until an append succeeds.
    storage_error: Arc<tokio::sync::watch::Sender<Option<String>>>,
    /// Set at shutdown: a failing append stops retrying.
    stopping: tokio_util::sync::CancellationToken,
}

/// How long a failed metadata log append waits before it is tried again.
const APPEND_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

impl fmt::Debug for LogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.lock();
        f.debug_struct("LogStore")
            .field("entries", &inner.entries.len())
            .field("state", &inner.state)
            .finish()
    }
}

struct Inner {
    log: Arc<PartitionLog>,
    /// Every entry above the last purged one, by index.
    entries: BTreeMap<u64, Entry>,
    state: QuorumState,
    state_path: PathBuf,
}

fn io_error(e: impl fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl LogStore {
    /// Opens the Raft log on `log` with its state file in `dir`, reading
    /// every entry into memory. An entry that does not decode stops the
    /// start: the log passed its CRC checks, so it is one this code cannot
    /// read, and guessing would risk the quorum's safety.
    pub(crate) fn open(log: Arc<PartitionLog>, dir: &Path) -> io::Result<Self> {
        let state_path = dir.join(QUORUM_STATE_FILE);
        let state = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io_error(format!(
                    "{}: not a quorum state file: {e}",
                    state_path.display()
                ))
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => QuorumState::default(),
            Err(e) => return Err(e),
        };
        let mut entries = BTreeMap::new();
        let mut failure = None;
        log.for_each_batch_from(log.log_start_offset(), |_, header, bytes| {
            if failure.is_some() {
                return;
            }
            match decode_entry(bytes) {
                Ok(entry) => {
                    entries.insert(entry.log_id.index, entry);
                }
                Err(e) => {
                    failure = Some(format!("Raft entry at offset {}: {e}", header.base_offset))
                }
            }
        })
        .map_err(io_error)?;
        if let Some(reason) = failure {
            return Err(io_error(reason));
        }
        let purged = state.last_purged.map(|l| l.index);
        entries.retain(|index, _| purged.is_none_or(|p| *index > p));
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                log,
                entries,
                state,
                state_path,
            })),
            storage_error: Arc::new(tokio::sync::watch::channel(None).0),
            stopping: tokio_util::sync::CancellationToken::new(),
        })
    }

    /// Receives the last append failure (`None` once appends succeed).
    pub(crate) fn storage_errors(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.storage_error.subscribe()
    }

    /// Stops retrying failed appends (shutdown).
    pub(crate) fn stop(&self) {
        self.stopping.cancel();
    }

    /// Whether the log was ever written (a vote, an entry, a purge).
    pub(crate) fn is_empty(&self) -> bool {
        let inner = self.inner.lock();
        inner.entries.is_empty() && inner.state.vote.is_none() && inner.state.last_purged.is_none()
    }

    /// The entries with index in `range` (for checks and tests).
    pub(crate) fn entries(&self, range: impl RangeBounds<u64>) -> Vec<Entry> {
        self.inner
            .lock()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect()
    }
}

impl Inner {
    /// Appends encoded entries starting at `first_offset` and fsyncs;
    /// on failure the log is cut back so a retry starts clean.
    fn write(&mut self, first_offset: i64, buf: &[u8]) -> io::Result<()> {
        // openraft truncates a conflicting suffix before it appends, so
        // this only cuts entries it no longer has (or a failed attempt's
        // leftovers). A gap forward is fine (after a snapshot was
        // installed in place of entries).
        if self.log.log_end_offset() > first_offset {
            self.log.truncate_to(first_offset).map_err(io_error)?;
        }
        self.log.append_as_follower(buf).map_err(io_error)?;
        self.log.flush().map_err(io_error)
    }

    fn save_state(&self) -> io::Result<()> {
        let bytes = serde_json::to_vec(&self.state).map_err(io_error)?;
        let tmp = self.state_path.with_extension("tmp");
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &self.state_path)?;
        if let Some(dir) = self.state_path.parent() {
            strom_storage::checkpoint::sync_dir(dir)?;
        }
        Ok(())
    }
}

/// One entry as one record batch at base offset = index, epoch = term.
fn encode_entry(entry: &Entry) -> io::Result<Bytes> {
    let value = serde_json::to_vec(entry).map_err(io_error)?;
    let index = i64::try_from(entry.log_id.index).map_err(io_error)?;
    let term = i32::try_from(entry.log_id.leader_id.term).map_err(io_error)?;
    let mut builder = RecordBatchBuilder::new(Compression::None)
        .base_offset(index)
        .partition_leader_epoch(term);
    builder.push(0, None, Some(&value), &[]);
    builder.build().map_err(io_error)
}

fn decode_entry(batch: &[u8]) -> Result<Entry, String> {
    let batch = Bytes::copy_from_slice(batch);
    let mut records = record::records(&batch, crate::controller::MAX_METADATA_BATCH_BYTES)
        .map_err(|e| e.to_string())?;
    let first = records
        .next()
        .ok_or("a batch without records")?
        .map_err(|e| e.to_string())?;
    let value = first.value.ok_or("a record without a value")?;
    serde_json::from_slice(&value).map_err(|e| e.to_string())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self.entries(range))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.inner.lock().state.vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let inner = self.inner.lock();
        let last = inner.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: inner.state.last_purged,
            last_log_id: last.or(inner.state.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let mut inner = self.inner.lock();
        inner.state.vote = Some(*vote);
        inner.save_state()
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let mut inner = self.inner.lock();
        inner.state.committed = committed;
        // A hint only (it lets a restart apply committed entries before a
        // leader says so): a failure (a full disk) must not stop the quorum.
        if let Err(e) = inner.save_state() {
            tracing::warn!(error = %e, "saving the committed quorum offset failed");
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.inner.lock().state.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut buf = Vec::new();
        let mut appended = Vec::new();
        for entry in entries {
            buf.extend_from_slice(&encode_entry(&entry)?);
            appended.push(entry);
        }
        let Some(first) = appended.first() else {
            callback.io_completed(Ok(()));
            return Ok(());
        };
        let first_offset = i64::try_from(first.log_id.index).map_err(io_error)?;
        // openraft stops for good on a storage error; a full disk is
        // transient, so the write is retried until it is durable, and the
        // error is reported meanwhile (writes fail fast with it).
        loop {
            let result = self.inner.lock().write(first_offset, &buf);
            match result {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = %e, "writing the metadata log failed; retrying");
                    self.storage_error.send_replace(Some(e.to_string()));
                    if self.stopping.is_cancelled() {
                        callback.io_completed(Err(io_error(&e)));
                        return Err(e);
                    }
                    tokio::select! {
                        _ = self.stopping.cancelled() => {}
                        _ = tokio::time::sleep(APPEND_RETRY) => {}
                    }
                }
            }
        }
        self.storage_error.send_replace(None);
        let mut inner = self.inner.lock();
        for entry in appended {
            inner.entries.insert(entry.log_id.index, entry);
        }
        drop(inner);
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let mut inner = self.inner.lock();
        let keep_below = last_log_id.map_or(0, |l| l.index + 1);
        let offset = i64::try_from(keep_below).map_err(io_error)?;
        if offset < inner.log.log_end_offset() {
            inner.log.truncate_to(offset).map_err(io_error)?;
            inner.log.flush().map_err(io_error)?;
        }
        inner.entries.retain(|index, _| *index < keep_below);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mut inner = self.inner.lock();
        // The state first: a crash between the two leaves entries the
        // state says are purged, which the next open drops.
        inner.state.last_purged = Some(log_id);
        inner.save_state()?;
        inner.entries.retain(|index, _| *index > log_id.index);
        let start = i64::try_from(log_id.index + 1).map_err(io_error)?;
        if start <= inner.log.log_end_offset() {
            inner
                .log
                .advance_log_start_offset(start)
                .map_err(io_error)?;
        }
        Ok(())
    }
}
