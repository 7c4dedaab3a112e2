//! Writing transaction markers: Kafka's WriteTxnMarkers, as the coordinator's
//! internal path and as the API another broker's coordinator would call.
//!
//! A marker request names a producer, its epoch, the outcome and the
//! partitions of the transaction. Each partition's leader appends a control
//! batch holding the end-transaction marker; a marker in `__consumer_offsets`
//! also makes the group coordinator commit (or drop) the offsets the producer
//! committed in the transaction. The coordinator groups the partitions by
//! leader: those led here are written directly; a partition led elsewhere
//! needs a WriteTxnMarkers request to that broker, which a cluster of one
//! never has (such partitions get NOT_LEADER_OR_FOLLOWER and stay pending, so
//! the coordinator retries them).

use std::collections::BTreeMap;
use std::sync::Arc;

use strom_protocol::builder::end_txn_marker_batch;
use strom_protocol::error_code::ErrorCode;
use strom_protocol::record::EndTxnMarker;
use strom_storage::AppendOrigin;

use crate::api::produce::coordinator_append_error;
use crate::broker::Broker;
use crate::group::store::OFFSETS_TOPIC;

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

/// Writes the markers of `request`: the partitions this broker leads are
/// appended here; the others answer NOT_LEADER_OR_FOLLOWER (a cluster would
/// send them to their leaders).
pub async fn write(broker: &Arc<Broker>, request: &MarkerRequest) -> MarkerResults {
    let image = broker.image();
    let mut by_leader: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
    let mut results = Vec::new();
    for (topic, partition) in &request.partitions {
        match image.partition(topic, *partition) {
            // A deleted topic's partitions have nothing to end.
            None => results.push((
                (topic.clone(), *partition),
                ErrorCode::UnknownTopicOrPartition,
            )),
            Some(meta) => by_leader
                .entry(meta.leader)
                .or_default()
                .push((topic.clone(), *partition)),
        }
    }
    for (leader, partitions) in by_leader {
        if leader == broker.node_id {
            let local = MarkerRequest {
                partitions,
                ..request.clone()
            };
            results.extend(write_local(broker, &local).await);
        } else {
            results.extend(
                partitions
                    .into_iter()
                    .map(|p| (p, ErrorCode::NotLeaderOrFollower)),
            );
        }
    }
    results
}

/// Appends the markers of `request` to the partitions this broker leads
/// (the WriteTxnMarkers handler's work).
pub async fn write_local(broker: &Arc<Broker>, request: &MarkerRequest) -> MarkerResults {
    let broker_for_task = Arc::clone(broker);
    let request_for_task = request.clone();
    let results = crate::api::blocking(move || {
        request_for_task
            .partitions
            .iter()
            .map(|(topic, partition)| {
                let code = append_marker(&broker_for_task, &request_for_task, topic, *partition);
                ((topic.clone(), *partition), code)
            })
            .collect::<MarkerResults>()
    })
    .await
    .unwrap_or_else(|| {
        request
            .partitions
            .iter()
            .map(|p| (p.clone(), ErrorCode::UnknownServerError))
            .collect()
    });
    // Offsets committed in the transaction become visible (or go) with the
    // marker in their partition of the offsets topic.
    for ((topic, partition), code) in &results {
        if topic == OFFSETS_TOPIC && *code == ErrorCode::None {
            broker
                .groups
                .complete_txn(request.producer_id, *partition, request.commit)
                .await;
        }
    }
    results
}

fn append_marker(broker: &Broker, request: &MarkerRequest, topic: &str, index: i32) -> ErrorCode {
    let image = broker.image();
    if image.partition(topic, index).is_none() {
        return ErrorCode::UnknownTopicOrPartition;
    }
    let Some(partition) = broker.replicas.get(topic, index).filter(|p| p.is_leader()) else {
        return ErrorCode::NotLeaderOrFollower;
    };
    let batch = end_txn_marker_batch(
        0,
        broker.clock.now_ms(),
        partition.leader_epoch(),
        request.producer_id,
        request.producer_epoch,
        EndTxnMarker {
            commit: request.commit,
            coordinator_epoch: request.coordinator_epoch,
        },
    );
    match partition.append_as_leader(&batch, AppendOrigin::Coordinator) {
        Ok(_) => ErrorCode::None,
        Err(e) => {
            let code = coordinator_append_error(
                &e,
                &[
                    ErrorCode::InvalidProducerEpoch,
                    ErrorCode::TransactionCoordinatorFenced,
                ],
                ErrorCode::KafkaStorageError,
                ErrorCode::KafkaStorageError,
            );
            if code == ErrorCode::KafkaStorageError {
                tracing::warn!(topic, partition = index, producer_id = request.producer_id, error = %e, "writing a transaction marker failed");
            }
            code
        }
    }
}
