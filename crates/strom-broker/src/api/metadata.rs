//! Metadata: brokers, the cluster id, the controller, and topics with their
//! partitions, leaders, replicas, in-sync replicas and leader epochs; and
//! DescribeTopicPartitions, the same topic view paged by a cursor (KIP-966).
//!
//! Asking for a topic that does not exist creates it (with `num.partitions`
//! and `default.replication.factor`) when `auto.create.topics.enable` is on
//! and the request allows it, as Kafka does. Creation is synchronous here, so
//! the answer already carries the new topic's partitions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use strom_controller::{CreateTopicRequest, MetadataImage, TopicImage};
use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::kafka::describe_topic_partitions_response::{
    self, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use strom_protocol::messages::kafka::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use strom_protocol::messages::kafka::{
    BrokerId, DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse, MetadataRequest,
    MetadataResponse, TopicName,
};
use strom_protocol::messages::{StrBytes, Uuid};
use strom_storage::manager::is_legal_topic_name;

use super::RequestContext;
use crate::broker::Broker;

/// Kafka's AclOperation codes that apply to topics: READ, WRITE, CREATE,
/// DELETE, ALTER, DESCRIBE, DESCRIBE_CONFIGS, ALTER_CONFIGS. With no
/// authorizer every one is allowed.
const TOPIC_OPERATIONS: i32 =
    (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);
/// Cluster operations: CREATE, ALTER, DESCRIBE, CLUSTER_ACTION,
/// DESCRIBE_CONFIGS, ALTER_CONFIGS, IDEMPOTENT_WRITE, CREATE_TOKENS,
/// DESCRIBE_TOKENS.
pub const CLUSTER_OPERATIONS: i32 = (1 << 5)
    | (1 << 7)
    | (1 << 8)
    | (1 << 9)
    | (1 << 10)
    | (1 << 11)
    | (1 << 12)
    | (1 << 13)
    | (1 << 14);
/// The schema default meaning "not requested".
const OPERATIONS_NOT_REQUESTED: i32 = i32::MIN;

pub async fn handle(
    broker: &Arc<Broker>,
    request: MetadataRequest,
    ctx: &RequestContext<'_>,
) -> MetadataResponse {
    let version = ctx.api_version();
    // v0 has no null: an empty list means all topics. v1+: null means all.
    let all_topics = match &request.topics {
        None => true,
        Some(t) => t.is_empty() && version == 0,
    };
    let allow_auto_create = (version < 4 || request.allow_auto_topic_creation)
        && broker.config.settings.auto_create_topics_enable;

    let mut image = broker.image();
    if !all_topics && allow_auto_create {
        let missing: Vec<String> = request
            .topics
            .iter()
            .flatten()
            .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
            .filter(|n| is_legal_topic_name(n) && image.topic(n).is_none())
            .collect();
        if !missing.is_empty() {
            image = auto_create(broker, missing).await;
        }
    }

    let topic_ops = if request.include_topic_authorized_operations {
        TOPIC_OPERATIONS
    } else {
        OPERATIONS_NOT_REQUESTED
    };
    let topics: Vec<MetadataResponseTopic> = if all_topics {
        image
            .topics()
            .map(|t| describe_topic(t, topic_ops, version))
            .collect()
    } else {
        request
            .topics
            .iter()
            .flatten()
            .map(|requested| match &requested.name {
                Some(name) => match image.topic(name) {
                    Some(t) => describe_topic(t, topic_ops, version),
                    None => {
                        let code = if is_legal_topic_name(name) {
                            ErrorCode::UnknownTopicOrPartition
                        } else {
                            ErrorCode::InvalidTopicException
                        };
                        MetadataResponseTopic::default()
                            .with_name(Some(name.clone()))
                            .with_error_code(code.code())
                            .with_topic_authorized_operations(topic_ops)
                    }
                },
                None => match image.topic_by_id(&requested.topic_id) {
                    Some(t) => describe_topic(t, topic_ops, version),
                    None => MetadataResponseTopic::default()
                        .with_topic_id(requested.topic_id)
                        .with_error_code(ErrorCode::UnknownTopicId.code())
                        .with_topic_authorized_operations(topic_ops),
                },
            })
            .collect()
    };
    // Fields a version does not carry stay at their defaults: the encoder
    // refuses them otherwise (as Kafka's generated serializers omit them).
    MetadataResponse::default()
        .with_brokers(brokers(
            &image,
            &broker.publisher.recently_fenced(&image),
            version,
        ))
        .with_cluster_id((version >= 2).then(|| StrBytes::from_string(image.cluster_id.clone())))
        .with_controller_id(BrokerId(if version >= 1 {
            broker.controller_id_for_clients(&image)
        } else {
            -1
        }))
        .with_topics(topics)
        .with_cluster_authorized_operations(if request.include_cluster_authorized_operations {
            CLUSTER_OPERATIONS
        } else {
            OPERATIONS_NOT_REQUESTED
        })
}

/// Creates the missing topics with the broker defaults; failures (a race
/// with another creator, say) just leave the topic out.
async fn auto_create(broker: &Arc<Broker>, names: Vec<String>) -> Arc<MetadataImage> {
    {
        let requests = names
            .into_iter()
            .map(|name| CreateTopicRequest {
                name,
                num_partitions: -1,
                replication_factor: -1,
                assignments: Vec::new(),
                configs: BTreeMap::new(),
            })
            .collect();
        for result in broker.controller.create_topics(requests, false).await {
            if let Err(e) = result
                && e.code != ErrorCode::TopicAlreadyExists
            {
                tracing::info!(error = %e, "auto topic creation failed");
            }
        }
    }
    // The new partitions exist once the publisher has applied the change.
    broker.await_metadata().await;
    broker.image()
}

/// The brokers clients are offered: registered and not fenced, and those
/// in `recently_fenced` (see [`crate::publisher::FENCED_BROKER_OFFERED_FOR`]).
pub fn brokers(
    image: &MetadataImage,
    recently_fenced: &[i32],
    version: i16,
) -> Vec<MetadataResponseBroker> {
    image
        .brokers
        .values()
        .filter(|b| !b.fenced || recently_fenced.contains(&b.id))
        .map(|b| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.id))
                .with_host(StrBytes::from_string(b.host.clone()))
                .with_port(i32::from(b.port))
                .with_rack(if version >= 1 {
                    b.rack.clone().map(StrBytes::from_string)
                } else {
                    None
                })
        })
        .collect()
}

fn describe_topic(topic: &TopicImage, topic_ops: i32, version: i16) -> MetadataResponseTopic {
    let partitions = topic
        .partitions
        .iter()
        .map(|p| {
            MetadataResponsePartition::default()
                .with_partition_index(p.partition)
                .with_leader_id(BrokerId(p.leader))
                .with_leader_epoch(if version >= 7 { p.leader_epoch } else { -1 })
                .with_replica_nodes(p.replicas.iter().copied().map(BrokerId).collect())
                .with_isr_nodes(p.isr.iter().copied().map(BrokerId).collect())
                .with_offline_replicas(Vec::new())
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(topic.name.clone()))))
        .with_topic_id(if version >= 10 { topic.id } else { Uuid::nil() })
        .with_is_internal(version >= 1 && topic.is_internal())
        .with_partitions(partitions)
        .with_topic_authorized_operations(topic_ops)
}

/// DescribeTopicPartitions (KIP-966): topics and their partitions, at most
/// `min(ResponsePartitionLimit, max.request.partition.size.limit)` partitions
/// per answer, sorted by topic name; when more remain, `NextCursor` names the
/// topic and partition to ask for next.
///
/// As Kafka: an empty topic list means every topic (and unknown names cannot
/// occur); named topics that do not exist come back with
/// UNKNOWN_TOPIC_OR_PARTITION (INVALID_TOPIC_EXCEPTION for illegal names); a
/// cursor must name one of the requested topics and a partition >= 0, else
/// every requested topic gets INVALID_REQUEST.
pub fn describe_topic_partitions(
    broker: &Arc<Broker>,
    request: DescribeTopicPartitionsRequest,
    _ctx: &RequestContext<'_>,
) -> DescribeTopicPartitionsResponse {
    let image = broker.image();
    let fetch_all = request.topics.is_empty();
    let cursor_topic = request
        .cursor
        .as_ref()
        .map_or("", |c| c.topic_name.0.as_str());
    let topics: BTreeSet<&str> = if fetch_all {
        image
            .topics()
            .map(|t| t.name.as_str())
            .filter(|n| *n >= cursor_topic)
            .collect()
    } else {
        request
            .topics
            .iter()
            .map(|t| t.name.0.as_str())
            .filter(|n| *n >= cursor_topic)
            .collect()
    };
    let invalid = |message: &str| {
        tracing::debug!("DescribeTopicPartitions refused: {message}");
        DescribeTopicPartitionsResponse::default().with_topics(
            request
                .topics
                .iter()
                .map(|t| {
                    DescribeTopicPartitionsResponseTopic::default()
                        .with_name(Some(t.name.clone()))
                        .with_error_code(ErrorCode::InvalidRequest.code())
                })
                .collect(),
        )
    };
    if let Some(cursor) = &request.cursor {
        if !fetch_all && !topics.contains(cursor_topic) {
            return invalid("the topic list does not contain the cursor topic");
        }
        if cursor.partition_index < 0 {
            return invalid("the cursor partition is negative");
        }
    }
    let configured = broker.config.settings.max_request_partition_size_limit;
    let mut remaining = request.response_partition_limit.min(configured).max(1);
    let mut response = DescribeTopicPartitionsResponse::default();
    for name in topics {
        if remaining == 0 {
            // The next answer starts at this topic's first partition.
            response.next_cursor = Some(
                describe_topic_partitions_response::Cursor::default()
                    .with_topic_name(TopicName(StrBytes::from_string(name.to_owned())))
                    .with_partition_index(0),
            );
            break;
        }
        let Some(topic) = image.topic(name) else {
            if !fetch_all {
                let code = if is_legal_topic_name(name) {
                    ErrorCode::UnknownTopicOrPartition
                } else {
                    ErrorCode::InvalidTopicException
                };
                response.topics.push(
                    DescribeTopicPartitionsResponseTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(name.to_owned()))))
                        .with_error_code(code.code())
                        .with_is_internal(super::group::is_internal(name))
                        .with_topic_authorized_operations(TOPIC_OPERATIONS),
                );
            }
            continue;
        };
        let start = if name == cursor_topic {
            request.cursor.as_ref().map_or(0, |c| c.partition_index)
        } else {
            0
        };
        let count = i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX);
        let end = count.min(start.saturating_add(remaining));
        let partitions: Vec<DescribeTopicPartitionsResponsePartition> = topic
            .partitions
            .iter()
            .filter(|p| p.partition >= start && p.partition < end)
            .map(|p| {
                DescribeTopicPartitionsResponsePartition::default()
                    .with_partition_index(p.partition)
                    .with_leader_id(BrokerId(p.leader))
                    .with_leader_epoch(p.leader_epoch)
                    .with_replica_nodes(p.replicas.iter().copied().map(BrokerId).collect())
                    .with_isr_nodes(p.isr.iter().copied().map(BrokerId).collect())
                    .with_eligible_leader_replicas(Some(
                        p.elr.iter().copied().map(BrokerId).collect(),
                    ))
                    .with_last_known_elr(Some(Vec::new()))
                    .with_offline_replicas(Vec::new())
            })
            .collect();
        remaining -= i32::try_from(partitions.len()).unwrap_or(remaining);
        response.topics.push(
            DescribeTopicPartitionsResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(topic.name.clone()))))
                .with_topic_id(topic.id)
                .with_is_internal(topic.is_internal())
                .with_partitions(partitions)
                .with_topic_authorized_operations(TOPIC_OPERATIONS),
        );
        if end < count {
            response.next_cursor = Some(
                describe_topic_partitions_response::Cursor::default()
                    .with_topic_name(TopicName(StrBytes::from_string(topic.name.clone())))
                    .with_partition_index(end),
            );
            break;
        }
    }
    response
}
