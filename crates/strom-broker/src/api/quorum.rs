//! DescribeQuorum (API 55), what `kafka-metadata-quorum.sh describe` asks:
//! the controller quorum's leader, epoch and high watermark, each voter's
//! and observer's progress on the metadata log, and (v2) the voters'
//! controller listeners.
//!
//! Kafka's brokers forward DescribeQuorum to the active controller, the only
//! node that knows every voter's progress; so does this handler
//! (`Controller::quorum_description`), so every node answers the same. The
//! request must name exactly `__cluster_metadata` partition 0, as Kafka's
//! raft client checks (`RaftUtil.hasValidTopicPartition`); otherwise each
//! partition asked for gets UNKNOWN_TOPIC_OR_PARTITION. When no active
//! controller answers in time the top-level error says why (Kafka's
//! forwarding answers REQUEST_TIMED_OUT as well).

use std::sync::Arc;

use strom_controller::{METADATA_TOPIC, QuorumDescription, ReplicaDescription};
use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::kafka::describe_quorum_response::{
    Listener, Node, PartitionData, ReplicaState, TopicData,
};
use strom_protocol::messages::kafka::{
    BrokerId, DescribeQuorumRequest, DescribeQuorumResponse, TopicName,
};
use strom_protocol::messages::{StrBytes, Uuid};

use super::RequestContext;
use crate::broker::Broker;
use crate::config::cluster::controller_listener_names;

/// The metadata log's one partition.
const METADATA_PARTITION: i32 = 0;

/// Whether `request` asks for exactly `__cluster_metadata` partition 0.
fn asks_for_metadata_partition(request: &DescribeQuorumRequest) -> bool {
    match request.topics.as_slice() {
        [topic] => {
            topic.topic_name.0.as_str() == METADATA_TOPIC
                && matches!(topic.partitions.as_slice(), [p] if p.partition_index == METADATA_PARTITION)
        }
        _ => false,
    }
}

pub async fn describe_quorum(
    broker: &Arc<Broker>,
    request: DescribeQuorumRequest,
    ctx: &RequestContext<'_>,
) -> DescribeQuorumResponse {
    let version = ctx.api_version();
    if !asks_for_metadata_partition(&request) {
        return unknown_partitions(&request, version);
    }
    match broker.controller.quorum_description().await {
        Ok(description) => answer(broker, &description, version),
        Err(e) => {
            DescribeQuorumResponse::default()
                .with_error_code(e.code.code())
                .with_error_message((version >= 2).then(|| {
                    StrBytes::from_string(e.message.unwrap_or_else(|| e.code.to_string()))
                }))
        }
    }
}

/// UNKNOWN_TOPIC_OR_PARTITION for every partition asked for (Kafka's
/// `DescribeQuorumRequest.getPartitionLevelErrorResponse`).
fn unknown_partitions(request: &DescribeQuorumRequest, version: i16) -> DescribeQuorumResponse {
    let message = |topic: &str, partition: i32| {
        (version >= 2).then(|| {
            StrBytes::from_string(format!(
                "{topic}-{partition} is not the metadata log; DescribeQuorum describes {METADATA_TOPIC}-{METADATA_PARTITION}"
            ))
        })
    };
    let topics = request
        .topics
        .iter()
        .map(|t| {
            TopicData::default()
                .with_topic_name(t.topic_name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            PartitionData::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(ErrorCode::UnknownTopicOrPartition.code())
                                .with_error_message(message(
                                    t.topic_name.0.as_str(),
                                    p.partition_index,
                                ))
                                .with_leader_id(BrokerId(-1))
                                .with_leader_epoch(-1)
                                .with_high_watermark(-1)
                        })
                        .collect(),
                )
        })
        .collect();
    DescribeQuorumResponse::default()
        .with_error_message(None)
        .with_topics(topics)
}

fn replica_state(r: &ReplicaDescription) -> ReplicaState {
    ReplicaState::default()
        .with_replica_id(BrokerId(r.replica_id))
        // Strom does not track log directory ids (KIP-853): the zero UUID,
        // Kafka's ReplicaKey.NO_DIRECTORY_ID.
        .with_replica_directory_id(Uuid::nil())
        .with_log_end_offset(r.log_end_offset)
        .with_last_fetch_timestamp(r.last_fetch_timestamp_ms)
        .with_last_caught_up_timestamp(r.last_caught_up_timestamp_ms)
}

/// The answer for `description` at `version`; v2 adds the voters'
/// controller listeners, from `controller.quorum.voters` (every node has
/// the same voters, so any node can name them).
fn answer(
    broker: &Broker,
    description: &QuorumDescription,
    version: i16,
) -> DescribeQuorumResponse {
    let partition = PartitionData::default()
        .with_partition_index(METADATA_PARTITION)
        .with_error_message(None)
        .with_leader_id(BrokerId(description.leader_id))
        .with_leader_epoch(description.leader_epoch)
        .with_high_watermark(description.high_watermark)
        .with_current_voters(description.voters.iter().map(replica_state).collect())
        .with_observers(description.observers.iter().map(replica_state).collect());
    let response = DescribeQuorumResponse::default()
        .with_error_message(None)
        .with_topics(vec![
            TopicData::default()
                .with_topic_name(TopicName(StrBytes::from_static_str(METADATA_TOPIC)))
                .with_partitions(vec![partition]),
        ]);
    if version < 2 {
        return response;
    }
    response.with_nodes(nodes(broker, description))
}

/// Each voter with its controller listener (named by the first of
/// `controller.listener.names`, as Kafka names the listeners of statically
/// configured voters). A standalone node has no controller listener: it is
/// listed without one.
fn nodes(broker: &Broker, description: &QuorumDescription) -> Vec<Node> {
    let name = controller_listener_names(&broker.config.properties)
        .into_iter()
        .next()
        .unwrap_or_default();
    description
        .voters
        .iter()
        .map(|v| {
            let listeners = broker
                .config
                .voters
                .iter()
                .filter(|c| c.id == v.replica_id)
                .map(|c| {
                    Listener::default()
                        .with_name(StrBytes::from_string(name.clone()))
                        .with_host(StrBytes::from_string(c.host.clone()))
                        .with_port(c.port)
                })
                .collect();
            Node::default()
                .with_node_id(BrokerId(v.replica_id))
                .with_listeners(listeners)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use strom_protocol::messages::kafka::describe_quorum_request;

    use super::*;

    fn request(topics: &[(&str, &[i32])]) -> DescribeQuorumRequest {
        DescribeQuorumRequest::default().with_topics(
            topics
                .iter()
                .map(|(name, partitions)| {
                    describe_quorum_request::TopicData::default()
                        .with_topic_name(TopicName(StrBytes::from_string((*name).to_owned())))
                        .with_partitions(
                            partitions
                                .iter()
                                .map(|p| {
                                    describe_quorum_request::PartitionData::default()
                                        .with_partition_index(*p)
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
    }

    #[test]
    fn only_the_metadata_logs_one_partition_is_described() {
        assert!(asks_for_metadata_partition(&request(&[(
            METADATA_TOPIC,
            &[0]
        )])));
        for bad in [
            request(&[]),
            request(&[(METADATA_TOPIC, &[1])]),
            request(&[(METADATA_TOPIC, &[0, 1])]),
            request(&[("orders", &[0])]),
            request(&[(METADATA_TOPIC, &[0]), (METADATA_TOPIC, &[0])]),
        ] {
            assert!(!asks_for_metadata_partition(&bad), "{bad:?}");
            for version in 0..=2 {
                let response = unknown_partitions(&bad, version);
                assert_eq!(response.error_code, 0);
                let asked: usize = bad.topics.iter().map(|t| t.partitions.len()).sum();
                let answered: Vec<i16> = response
                    .topics
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
                    .collect();
                assert_eq!(answered.len(), asked);
                assert!(
                    answered
                        .iter()
                        .all(|c| *c == ErrorCode::UnknownTopicOrPartition.code())
                );
                // Encodes at every version (no v2 field set below v2).
                strom_protocol::messages::encode_response(
                    strom_protocol::messages::ApiKey::DescribeQuorum,
                    version,
                    1,
                    &response,
                )
                .unwrap();
            }
        }
    }
}
