//! Partition reassignment (KIP-455): AlterPartitionReassignments and
//! ListPartitionReassignments, forwarded to the active controller, which
//! checks and commits them as Kafka's does (`strom_controller::reassign`).
//! The replicas move by themselves once the metadata names them: a new
//! replica creates its log and fetches from the leader, the leader adds it
//! to the ISR, and the controller completes the reassignment with that ISR
//! change; a removed replica deletes its log.

use std::sync::Arc;

use strom_controller::{ControllerError, OngoingTopicReassignments, ReassignTopic};
use strom_protocol::messages::StrBytes;
use strom_protocol::messages::kafka::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use strom_protocol::messages::kafka::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use strom_protocol::messages::kafka::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};

use super::RequestContext;
use crate::broker::Broker;

fn message(e: &ControllerError) -> Option<StrBytes> {
    e.message.clone().map(StrBytes::from_string)
}

fn broker_ids(ids: &[i32]) -> Vec<BrokerId> {
    ids.iter().copied().map(BrokerId).collect()
}

/// AlterPartitionReassignments (45): v1 adds `allow_replication_factor_change`
/// (KIP-860; v0 requests allow it). The partitions' results come back in
/// request order; a failure of the whole request (no controller in time, a
/// change too large for one metadata batch) is the top-level error and each
/// partition's.
pub async fn alter_partition_reassignments(
    broker: &Arc<Broker>,
    request: AlterPartitionReassignmentsRequest,
    _ctx: &RequestContext<'_>,
) -> AlterPartitionReassignmentsResponse {
    let allow_replication_factor_change = request.allow_replication_factor_change;
    let topics: Vec<ReassignTopic> = request
        .topics
        .into_iter()
        .map(|t| ReassignTopic {
            topic: t.name.0.to_string(),
            partitions: t
                .partitions
                .into_iter()
                .map(|p| {
                    let target = p.replicas.map(|r| r.into_iter().map(|b| b.0).collect());
                    (p.partition_index, target)
                })
                .collect(),
        })
        .collect();
    let partition_response = |partition: i32, result: Result<(), ControllerError>| {
        let r = ReassignablePartitionResponse::default().with_partition_index(partition);
        match result {
            Ok(()) => r,
            Err(e) => r
                .with_error_code(e.code.code())
                .with_error_message(message(&e)),
        }
    };
    let topic_response = |topic: String, partitions| {
        ReassignableTopicResponse::default()
            .with_name(TopicName(StrBytes::from_string(topic)))
            .with_partitions(partitions)
    };
    let response = AlterPartitionReassignmentsResponse::default()
        .with_allow_replication_factor_change(allow_replication_factor_change);
    match broker
        .controller
        .alter_partition_reassignments(topics.clone(), allow_replication_factor_change)
        .await
    {
        Ok(results) => {
            // The new replicas are known here before the client hears back.
            broker.await_metadata().await;
            response.with_responses(
                results
                    .into_iter()
                    .map(|t| {
                        let partitions = t
                            .partitions
                            .into_iter()
                            .map(|(p, r)| partition_response(p, r))
                            .collect();
                        topic_response(t.topic, partitions)
                    })
                    .collect(),
            )
        }
        Err(e) => response
            .with_error_code(e.code.code())
            .with_error_message(message(&e))
            .with_responses(
                topics
                    .into_iter()
                    .map(|t| {
                        let partitions = t
                            .partitions
                            .into_iter()
                            .map(|(p, _)| partition_response(p, Err(e.clone())))
                            .collect();
                        topic_response(t.topic, partitions)
                    })
                    .collect(),
            ),
    }
}

/// ListPartitionReassignments (46): the reassignments in progress among
/// the partitions named (null topics: all), as the active controller has
/// them. Partitions that are not being reassigned, and unknown ones, are
/// left out, as Kafka does.
pub async fn list_partition_reassignments(
    broker: &Arc<Broker>,
    request: ListPartitionReassignmentsRequest,
    _ctx: &RequestContext<'_>,
) -> ListPartitionReassignmentsResponse {
    let topics: Option<Vec<(String, Vec<i32>)>> = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    match broker.controller.list_partition_reassignments(topics).await {
        Ok(ongoing) => ListPartitionReassignmentsResponse::default()
            .with_topics(ongoing.into_iter().map(ongoing_topic).collect()),
        Err(e) => ListPartitionReassignmentsResponse::default()
            .with_error_code(e.code.code())
            .with_error_message(message(&e)),
    }
}

fn ongoing_topic(t: OngoingTopicReassignments) -> OngoingTopicReassignment {
    OngoingTopicReassignment::default()
        .with_name(TopicName(StrBytes::from_string(t.topic)))
        .with_partitions(
            t.partitions
                .into_iter()
                .map(|p| {
                    OngoingPartitionReassignment::default()
                        .with_partition_index(p.partition)
                        .with_replicas(broker_ids(&p.replicas))
                        .with_adding_replicas(broker_ids(&p.adding_replicas))
                        .with_removing_replicas(broker_ids(&p.removing_replicas))
                })
                .collect(),
        )
}
