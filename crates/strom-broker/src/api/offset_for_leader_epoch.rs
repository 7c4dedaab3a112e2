//! OffsetForLeaderEpoch (API 23): where a leader epoch ends in the leader's
//! log. Followers used it to find where to truncate before Fetch v12
//! carried DivergingEpoch (KIP-101, KIP-279); consumers use it after a
//! leader change to check that their position is still in the log
//! (KIP-320), and truncate or reset when it is not.
//!
//! Kafka's semantics (`ReplicaManager.lastOffsetForLeaderEpoch` →
//! `Partition.lastOffsetForLeaderEpoch`), per partition:
//! - the largest epoch at or below the requested one that the log knows,
//!   and its end offset: the start of the next epoch, or the log end offset
//!   for the latest epoch; the requested epoch with the first epoch's start
//!   when it is older than every epoch; UNDEFINED (-1, -1) when it is newer
//!   than the latest or the log has no epochs;
//! - `current_leader_epoch` (-1: not given) fenced as Fetch and ListOffsets
//!   fence it: FENCED_LEADER_EPOCH when older than ours,
//!   UNKNOWN_LEADER_EPOCH when newer;
//! - only the leader answers, whoever asks (Kafka calls it with
//!   `fetchOnlyFromLeader = true` for consumers, followers and debugging
//!   tools alike): NOT_LEADER_OR_FOLLOWER elsewhere;
//! - UNKNOWN_TOPIC_OR_PARTITION for partitions the metadata does not have;
//!   a partition named twice is answered twice, as Kafka does.
//!
//! Versions 2-4: Kafka 4.0 removed 0 and 1 (KIP-896), and the codec has
//! only these.

use std::sync::Arc;

use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::kafka::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use strom_protocol::messages::kafka::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use super::RequestContext;
use super::list_offsets::check_leader_epoch;
use crate::broker::Broker;

/// Kafka's UNDEFINED_EPOCH and UNDEFINED_EPOCH_OFFSET.
const UNDEFINED_EPOCH: i32 = -1;
const UNDEFINED_EPOCH_OFFSET: i64 = -1;

pub async fn handle(
    broker: &Arc<Broker>,
    request: OffsetForLeaderEpochRequest,
    _ctx: &RequestContext<'_>,
) -> OffsetForLeaderEpochResponse {
    let broker = Arc::clone(broker);
    super::blocking(move || answer(&broker, request))
        .await
        .unwrap_or_default()
}

fn answer(broker: &Broker, request: OffsetForLeaderEpochRequest) -> OffsetForLeaderEpochResponse {
    let image = broker.image();
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let name = topic.topic.0.as_str();
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let answer = EpochEndOffset::default()
                        .with_partition(p.partition)
                        .with_leader_epoch(UNDEFINED_EPOCH)
                        .with_end_offset(UNDEFINED_EPOCH_OFFSET);
                    let error = |code: ErrorCode| answer.clone().with_error_code(code.code());
                    if image.partition(name, p.partition).is_none() {
                        return error(ErrorCode::UnknownTopicOrPartition);
                    }
                    let Some(partition) = broker.replicas.get(name, p.partition) else {
                        return error(super::missing_partition(broker, name, p.partition).0);
                    };
                    // Kafka's `getLocalLog`: the epoch first, then the leadership.
                    if let Some(code) =
                        check_leader_epoch(p.current_leader_epoch, partition.leader_epoch())
                    {
                        return error(code);
                    }
                    if !partition.is_leader() {
                        return error(ErrorCode::NotLeaderOrFollower);
                    }
                    match partition.log.end_offset_for_epoch(p.leader_epoch) {
                        Some((epoch, end_offset)) if end_offset >= 0 => {
                            answer.with_leader_epoch(epoch).with_end_offset(end_offset)
                        }
                        _ => answer,
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
