//! One shard of the transaction coordinator: the transactional ids hashed to
//! one partition of `__transaction_state`, loaded from that partition when
//! this broker became its leader and written back to it on every change.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strom_protocol::error_code::ErrorCode;
use strom_storage::{AppendError, ReadError};
use tokio::sync::{Mutex, MutexGuard};

use super::TxnState;
use super::store::{self, TRANSACTION_STATE_TOPIC, TxnRecord, TxnValue};
use crate::coordinator::CoordinatorLog;

/// The transactional ids of one partition of `__transaction_state`.
/// How long a transaction state write may wait to be replicated: Kafka's
/// transaction coordinator waits `request.timeout.ms` (30 s by default).
const TXN_STATE_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct TxnShard {
    /// The partition's index in `__transaction_state`.
    index: i32,
    /// The partition's leader epoch when this broker was elected: Kafka's
    /// coordinator epoch, sent with every marker so that the partitions
    /// refuse markers from a coordinator that lost the partition since.
    coordinator_epoch: i32,
    /// The partition the changes are appended to (and were replayed from).
    log: Arc<dyn CoordinatorLog>,
    /// The ids' state. Async because it is held across the append of each
    /// change and across the markers of a transaction's end, so the log
    /// order is the order of the changes and a transaction ends once.
    state: Mutex<TxnState>,
}

impl fmt::Debug for TxnShard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxnShard")
            .field("index", &self.index)
            .field("coordinator_epoch", &self.coordinator_epoch)
            .finish_non_exhaustive()
    }
}

impl TxnShard {
    /// Replays `log` (the latest record of each id wins; a null value
    /// deletes the id). Blocking.
    pub(crate) fn load(
        index: i32,
        coordinator_epoch: i32,
        log: Arc<dyn CoordinatorLog>,
    ) -> Result<Self, ReadError> {
        let mut state = TxnState::default();
        log.replay(&mut |header, bytes| {
            if header.is_control() {
                return;
            }
            for r in store::decode(&Bytes::copy_from_slice(bytes)) {
                match r.value {
                    Some(v) => {
                        state.ids.insert(r.transactional_id, v);
                    }
                    None => {
                        state.ids.remove(&r.transactional_id);
                    }
                }
            }
        })?;
        Ok(Self {
            index,
            coordinator_epoch,
            log,
            state: Mutex::new(state),
        })
    }

    /// The ids a load found (its log line): the shard is not shared yet.
    pub(crate) fn ids_loaded(&mut self) -> usize {
        self.state.get_mut().ids.len()
    }

    /// The partition's index in `__transaction_state`.
    pub fn index(&self) -> i32 {
        self.index
    }

    /// The coordinator epoch markers are sent with.
    pub fn coordinator_epoch(&self) -> i32 {
        self.coordinator_epoch
    }

    /// The ids' state, locked.
    pub async fn lock(&self) -> MutexGuard<'_, TxnState> {
        self.state.lock().await
    }

    /// Appends the change of `transactional_id` to `value` (`None` deletes
    /// it: a tombstone) and then applies it to `state` (this shard's, held
    /// locked): the state changes only once the record is in the log.
    pub(crate) async fn persist(
        &self,
        state: &mut TxnState,
        transactional_id: &str,
        value: Option<TxnValue>,
        now_ms: i64,
    ) -> Result<(), ErrorCode> {
        let record = TxnRecord {
            transactional_id: transactional_id.to_owned(),
            value: value.clone(),
        };
        let batch = store::encode(std::slice::from_ref(&record), now_ms).map_err(|e| {
            tracing::error!(error = %e, "cannot encode a transaction state record");
            ErrorCode::UnknownServerError
        })?;
        let log = Arc::clone(&self.log);
        let epoch = self.coordinator_epoch;
        let index = self.index;
        let last_offset = tokio::task::spawn_blocking(move || {
            // A shard writes only while its partition is led at its epoch:
            // a newer leader (elsewhere, or here again) owns the ids now.
            if !log.is_leader() || log.leader_epoch() != epoch {
                return Err(ErrorCode::NotCoordinator);
            }
            if !log.enough_replicas() {
                return Err(ErrorCode::CoordinatorNotAvailable);
            }
            log.append(&batch).map_err(|e| append_error(index, &e))
        })
        .await
        .unwrap_or(Err(ErrorCode::UnknownServerError))?;
        // The state changes once the record is replicated: a coordinator
        // elected elsewhere replays it then.
        self.log
            .replicated(last_offset, epoch, TXN_STATE_WRITE_TIMEOUT)
            .await
            .map_err(|code| {
                tracing::info!(partition = index, error = %code, "a transaction state write was not replicated");
                crate::coordinator::replication_error(code)
            })?;
        match value {
            Some(v) => {
                state.ids.insert(transactional_id.to_owned(), v);
            }
            None => {
                state.ids.remove(transactional_id);
            }
        }
        Ok(())
    }
}

/// The error a request gets when its change cannot be appended: a record
/// too large for the partition is the request's fault (INVALID_REQUEST); an
/// offline log or a lost leadership is NOT_COORDINATOR (the client looks
/// it up again); anything else means this coordinator cannot write now
/// (COORDINATOR_NOT_AVAILABLE: the client retries).
fn append_error(index: i32, e: &AppendError) -> ErrorCode {
    let code = crate::coordinator::append_error_code(
        e,
        &[],
        ErrorCode::InvalidRequest,
        ErrorCode::CoordinatorNotAvailable,
    );
    if code == ErrorCode::CoordinatorNotAvailable {
        tracing::error!(partition = index, error = %e, "appending to {TRANSACTION_STATE_TOPIC} failed");
    }
    code
}
