//! ListOffsets: offsets by special timestamp (earliest -2, latest -1, max
//! timestamp -3, earliest local -4, latest tiered -5) or by time (the first
//! record at or after the timestamp).

use std::collections::HashSet;
use std::sync::Arc;

use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::kafka::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use strom_protocol::messages::kafka::{ListOffsetsRequest, ListOffsetsResponse};

use super::RequestContext;
use crate::broker::Broker;
use crate::replica::Partition;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;
/// `replica_id` of a consumer (not a follower).
const CONSUMER_REPLICA_ID: i32 = -1;
/// `isolation_level` READ_COMMITTED.
pub const READ_COMMITTED: i8 = 1;

pub async fn handle(
    broker: &Arc<Broker>,
    request: ListOffsetsRequest,
    ctx: &RequestContext<'_>,
) -> ListOffsetsResponse {
    let version = ctx.api_version();
    let broker = Arc::clone(broker);
    super::blocking(move || answer(&broker, request, version))
        .await
        .unwrap_or_default()
}

fn answer(broker: &Broker, request: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    let image = broker.image();
    let consumer = request.replica_id.0 == CONSUMER_REPLICA_ID;
    let mut seen = HashSet::new();
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let name = topic.name.0.to_string();
            let partitions = topic
                .partitions
                .into_iter()
                .map(|p| {
                    let response = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_timestamp(-1)
                        .with_offset(-1)
                        .with_leader_epoch(-1);
                    if !seen.insert((name.clone(), p.partition_index)) {
                        return response.with_error_code(ErrorCode::InvalidRequest.code());
                    }
                    if image.partition(&name, p.partition_index).is_none() {
                        return response.with_error_code(ErrorCode::UnknownTopicOrPartition.code());
                    }
                    let Some(partition) = broker.replicas.get(&name, p.partition_index) else {
                        return response.with_error_code(
                            super::missing_partition(broker, &name, p.partition_index)
                                .0
                                .code(),
                        );
                    };
                    if !partition.is_leader() {
                        return response.with_error_code(ErrorCode::NotLeaderOrFollower.code());
                    }
                    if let Some(code) =
                        check_leader_epoch(p.current_leader_epoch, partition.leader_epoch())
                    {
                        return response.with_error_code(code.code());
                    }
                    let bound = if !consumer {
                        partition.log.log_end_offset()
                    } else if version >= 2 && request.isolation_level == READ_COMMITTED {
                        partition.last_stable_offset()
                    } else {
                        partition.high_watermark()
                    };
                    // A new leader whose high watermark has not reached the
                    // start of its epoch does not know the committed end
                    // yet (Kafka's `fetchOffsetForTimestamp`).
                    if consumer
                        && p.timestamp == LATEST
                        && partition
                            .leader_epoch_start_offset()
                            .is_some_and(|start| start > partition.high_watermark())
                    {
                        return response.with_error_code(ErrorCode::OffsetNotAvailable.code());
                    }
                    match lookup(&partition, p.timestamp, bound) {
                        Ok((timestamp, offset)) => response
                            .with_timestamp(timestamp)
                            .with_offset(offset)
                            .with_leader_epoch(if offset < 0 || version < 4 {
                                -1
                            } else {
                                epoch_for_offset(&partition, offset)
                            }),
                        Err(code) => response.with_error_code(code.code()),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

/// Kafka's leader epoch fencing: a client that knows a newer epoch than ours
/// talks to a stale leader; an older one has stale metadata.
pub fn check_leader_epoch(requested: i32, current: i32) -> Option<ErrorCode> {
    if requested < 0 || requested == current {
        None
    } else if requested > current {
        Some(ErrorCode::UnknownLeaderEpoch)
    } else {
        Some(ErrorCode::FencedLeaderEpoch)
    }
}

fn lookup(partition: &Partition, timestamp: i64, bound: i64) -> Result<(i64, i64), ErrorCode> {
    let log = &partition.log;
    let storage = |e: strom_storage::ReadError| {
        tracing::error!(topic = %partition.topic, partition = partition.index, error = %e, "offset lookup failed");
        ErrorCode::KafkaStorageError
    };
    match timestamp {
        LATEST => Ok((-1, bound)),
        EARLIEST | EARLIEST_LOCAL => Ok((-1, log.log_start_offset())),
        LATEST_TIERED => Ok((-1, -1)),
        MAX_TIMESTAMP => match log.max_timestamp_offset().map_err(storage)? {
            Some(found) if found.offset < bound => Ok((found.timestamp, found.offset)),
            _ => Ok((-1, -1)),
        },
        ts => match log.offset_for_timestamp(ts, Some(bound)).map_err(storage)? {
            Some(found) => Ok((found.timestamp, found.offset)),
            None => Ok((-1, -1)),
        },
    }
}

/// The leader epoch in force at `offset`, from the leader epoch cache.
pub fn epoch_for_offset(partition: &Partition, offset: i64) -> i32 {
    let epochs = partition.log.leader_epochs();
    epochs
        .iter()
        .rev()
        .find(|e| e.start_offset <= offset)
        .or(epochs.first())
        .map_or(partition.leader_epoch(), |e| e.epoch)
}
