//! Transaction markers: the port the coordinator sends them through
//! ([`MarkerSender`], Kafka's `TransactionMarkerChannelManager` and its
//! WriteTxnMarkers requests) and the append of one marker to a partition this
//! broker leads ([`append_marker`], the work of the WriteTxnMarkers handler).
//!
//! A marker request names a producer, its epoch, the outcome, the
//! coordinator epoch and the partitions of the transaction. Each partition's
//! leader appends a control batch holding the end-transaction marker; a
//! marker in `__consumer_offsets` also makes the group coordinator commit (or
//! drop) the offsets the producer committed in the transaction. The local
//! sender (`api::txn::LocalMarkerSender`) does that for the partitions this
//! broker leads and answers NOT_LEADER_OR_FOLLOWER for the others, which stay
//! pending (the coordinator retries them); a cluster's sender groups the
//! partitions by leader and sends WriteTxnMarkers to each.

use futures::future::BoxFuture;
use strom_protocol::builder::end_txn_marker_batch;
use strom_protocol::error_code::ErrorCode;
use strom_protocol::record::EndTxnMarker;
use strom_storage::AppendOrigin;

use crate::partition::Partition;

/// One transaction's markers (a `WritableTxnMarker`).
#[derive(Debug, Clone)]
pub struct MarkerRequest {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
    pub coordinator_epoch: i32,
    pub partitions: Vec<(String, i32)>,
}

/// The outcome per partition.
pub type MarkerResults = Vec<((String, i32), ErrorCode)>;

/// Where the coordinator's markers go.
pub trait MarkerSender: Send + Sync {
    /// Writes the markers of one transaction's end to each of its data
    /// partitions; answers each partition's outcome (NONE once its marker is
    /// in its log). A partition missing from the answer counts as not
    /// written.
    fn send<'a>(&'a self, request: &'a MarkerRequest) -> BoxFuture<'a, MarkerResults>;
}

/// Appends the marker of `request` to `partition`, which this broker leads:
/// its offset and the leader epoch it was appended at, to wait for its
/// replication. Blocking (a disk write). A stale producer epoch
/// (INVALID_PRODUCER_EPOCH) or coordinator epoch
/// (TRANSACTION_COORDINATOR_FENCED) is answered as such; any other failure
/// is KAFKA_STORAGE_ERROR (the coordinator retries).
pub fn append_marker(
    partition: &Partition,
    request: &MarkerRequest,
    now_ms: i64,
) -> Result<(i64, i32), ErrorCode> {
    // Kafka writes markers with acks=all: too small an ISR refuses them
    // before the append (the coordinator retries).
    if !crate::coordinator::CoordinatorLog::enough_replicas(partition) {
        return Err(ErrorCode::NotEnoughReplicas);
    }
    let leader_epoch = partition.leader_epoch();
    let batch = end_txn_marker_batch(
        0,
        now_ms,
        leader_epoch,
        request.producer_id,
        request.producer_epoch,
        EndTxnMarker {
            commit: request.commit,
            coordinator_epoch: request.coordinator_epoch,
        },
    );
    match partition.append_as_leader(&batch, AppendOrigin::Coordinator) {
        Ok(info) => Ok((info.last_offset, leader_epoch)),
        Err(e) => Err(match e.error_code() {
            code @ (ErrorCode::InvalidProducerEpoch | ErrorCode::TransactionCoordinatorFenced) => {
                code
            }
            _ => {
                tracing::warn!(topic = %partition.topic, partition = partition.index, producer_id = request.producer_id, error = %e, "writing a transaction marker failed");
                ErrorCode::KafkaStorageError
            }
        }),
    }
}
