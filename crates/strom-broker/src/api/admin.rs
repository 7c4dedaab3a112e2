//! Topic administration and cluster description: CreateTopics, DeleteTopics,
//! CreatePartitions, ElectLeaders, DescribeCluster.
//!
//! Changes go through the controller (validated as Kafka's controller does,
//! durable in the metadata log); the local logs follow the new image before
//! the response is sent, so a client can produce right after.

use std::collections::BTreeMap;
use std::sync::Arc;

use strom_controller::{
    ControllerError, CreatePartitionsRequest as ControllerCreatePartitions, CreateTopicRequest,
    ElectionType,
};
use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::kafka::create_partitions_response::CreatePartitionsTopicResult;
use strom_protocol::messages::kafka::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use strom_protocol::messages::kafka::delete_topics_response::DeletableTopicResult;
use strom_protocol::messages::kafka::describe_cluster_response::DescribeClusterBroker;
use strom_protocol::messages::kafka::elect_leaders_response::{
    PartitionResult, ReplicaElectionResult,
};
use strom_protocol::messages::kafka::{
    BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeClusterRequest,
    DescribeClusterResponse, ElectLeadersRequest, ElectLeadersResponse, TopicName,
};
use strom_protocol::messages::{StrBytes, Uuid};

use super::RequestContext;
use super::metadata::CLUSTER_OPERATIONS;
use crate::broker::Broker;
use crate::config::{TOPIC_CONFIGS, validate_topic_config};

/// DescribeCluster endpoint types (KIP-919).
const ENDPOINT_BROKER: i8 = 1;

fn message(e: &ControllerError) -> Option<StrBytes> {
    e.message.clone().map(StrBytes::from_string)
}

pub async fn create_topics(
    broker: &Arc<Broker>,
    request: CreateTopicsRequest,
    ctx: &RequestContext<'_>,
) -> CreateTopicsResponse {
    let version = ctx.api_version();
    let mut results: Vec<Option<CreatableTopicResult>> = Vec::new();
    let mut requests = Vec::new();
    let mut positions = Vec::new();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let mut configs = BTreeMap::new();
        let mut invalid = None;
        for c in &topic.configs {
            let Some(value) = &c.value else {
                invalid = Some(format!(
                    "Null value not supported for topic configs: {}",
                    c.name.as_str()
                ));
                break;
            };
            if let Err(e) = validate_topic_config(&c.name, value) {
                invalid = Some(e.0);
                break;
            }
            configs.insert(c.name.to_string(), value.to_string());
        }
        if invalid.is_none() {
            let image = broker.image();
            let value = |name: &str| {
                crate::config::topic_config_def(name)
                    .map(|def| broker.config.topic_value(def, &image, &configs).value)
                    .unwrap_or_default()
            };
            invalid = crate::config::validate_topic_configs(&value)
                .err()
                .map(|e| e.0);
        }
        if let Some(why) = invalid {
            results.push(Some(failed_topic(
                topic.name,
                ErrorCode::InvalidConfig,
                Some(why),
            )));
            continue;
        }
        positions.push(results.len());
        results.push(None);
        requests.push(CreateTopicRequest {
            name,
            num_partitions: topic.num_partitions,
            replication_factor: topic.replication_factor,
            assignments: topic
                .assignments
                .into_iter()
                .map(|a| {
                    (
                        a.partition_index,
                        a.broker_ids.into_iter().map(|b| b.0).collect(),
                    )
                })
                .collect(),
            configs,
        });
    }
    let names: Vec<String> = requests.iter().map(|r| r.name.clone()).collect();
    let validate_only = request.validate_only;
    let created = broker
        .controller
        .create_topics(requests, validate_only)
        .await;
    // The partitions exist once the publisher has applied the change (one
    // that fails is logged and retried by it).
    broker.await_metadata().await;
    let image = broker.image();
    for ((position, name), result) in positions.into_iter().zip(names).zip(created) {
        let topic_name = TopicName(StrBytes::from_string(name.clone()));
        let storage_error = if validate_only {
            None
        } else {
            broker.replicas.topic_storage_error(&name)
        };
        results[position] = Some(match result {
            // In the metadata, but its log could not be created here: say so
            // (Kafka answers KAFKA_STORAGE_ERROR for a failed log directory)
            // rather than success for partitions that cannot take a record.
            Ok(_) if let Some((partition, e)) = storage_error => failed_topic(
                topic_name,
                ErrorCode::KafkaStorageError,
                Some(storage_error_message(&name, partition, &e)),
            ),
            Ok(created) => {
                let overrides = image
                    .topic(&name)
                    .map(|t| t.configs.clone())
                    .unwrap_or_default();
                let configs = (version >= 5).then(|| {
                    TOPIC_CONFIGS
                        .iter()
                        .map(|def| {
                            let value = broker.config.topic_value(def, &image, &overrides);
                            CreatableTopicConfigs::default()
                                .with_name(StrBytes::from_static_str(def.name))
                                .with_value(Some(StrBytes::from_string(value.value)))
                                .with_config_source(value.source.code())
                                .with_read_only(false)
                                .with_is_sensitive(false)
                        })
                        .collect()
                });
                CreatableTopicResult::default()
                    .with_name(topic_name)
                    .with_topic_id(created.topic_id)
                    .with_num_partitions(created.num_partitions)
                    .with_replication_factor(created.replication_factor)
                    .with_configs(configs)
            }
            Err(e) => failed_topic(topic_name, e.code, e.message),
        });
    }
    let topics = results
        .into_iter()
        .flatten()
        .map(|mut t| {
            // Fields a version does not carry stay at their defaults.
            let defaults = CreatableTopicResult::default();
            if version < 7 {
                t.topic_id = defaults.topic_id;
            }
            if version < 5 {
                t.num_partitions = defaults.num_partitions;
                t.replication_factor = defaults.replication_factor;
                t.configs = defaults.configs;
                t.topic_config_error_code = defaults.topic_config_error_code;
            }
            t
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}

/// Why a created topic's partitions are not online: the topic exists, and
/// the broker keeps trying.
fn storage_error_message(topic: &str, partition: i32, error: &str) -> String {
    format!(
        "Topic {topic} was created, but the log of its partition {partition} could not be \
         created on this broker: {error}. The broker retries; the partitions come online \
         once the storage error is resolved"
    )
}

fn failed_topic(name: TopicName, code: ErrorCode, message: Option<String>) -> CreatableTopicResult {
    CreatableTopicResult::default()
        .with_name(name)
        .with_error_code(code.code())
        .with_error_message(message.map(StrBytes::from_string))
        .with_num_partitions(-1)
        .with_replication_factor(-1)
        .with_configs(None)
}

pub async fn delete_topics(
    broker: &Arc<Broker>,
    request: DeleteTopicsRequest,
    ctx: &RequestContext<'_>,
) -> DeleteTopicsResponse {
    let version = ctx.api_version();
    let image = broker.image();
    // v6 names topics by name or id; older versions by name only.
    let targets: Vec<(Option<String>, Uuid)> = if version >= 6 {
        request
            .topics
            .into_iter()
            .map(|t| match t.name {
                Some(name) => (Some(name.0.to_string()), Uuid::nil()),
                None => (
                    image
                        .topic_by_id(&t.topic_id)
                        .map(|topic| topic.name.clone()),
                    t.topic_id,
                ),
            })
            .collect()
    } else {
        request
            .topic_names
            .into_iter()
            .map(|n| (Some(n.0.to_string()), Uuid::nil()))
            .collect()
    };
    let names: Vec<String> = targets.iter().filter_map(|(n, _)| n.clone()).collect();
    let mut deleted = broker.controller.delete_topics(&names).await.into_iter();
    broker.await_metadata().await;
    let responses: Vec<DeletableTopicResult> = targets
        .into_iter()
        .map(|(name, requested_id)| match name {
            None => DeletableTopicResult::default()
                .with_topic_id(requested_id)
                .with_error_code(ErrorCode::UnknownTopicId.code()),
            Some(name) => {
                let result = deleted.next().unwrap_or_else(|| {
                    Err(ControllerError::new(
                        ErrorCode::UnknownServerError,
                        "deletion did not run",
                    ))
                });
                if result.is_ok() {
                    broker.metrics.forget_topic(&name);
                }
                let base = DeletableTopicResult::default()
                    .with_name(Some(TopicName(StrBytes::from_string(name))));
                match result {
                    Ok(id) => base.with_topic_id(id),
                    Err(e) => base
                        .with_topic_id(requested_id)
                        .with_error_code(e.code.code())
                        .with_error_message(message(&e)),
                }
            }
        })
        .collect();
    let responses = responses
        .into_iter()
        .map(|mut r: DeletableTopicResult| {
            // Fields a version does not carry stay at their defaults.
            if version < 6 {
                r.topic_id = Uuid::nil();
            }
            if version < 5 {
                r.error_message = None;
            }
            r
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}

pub async fn create_partitions(
    broker: &Arc<Broker>,
    request: CreatePartitionsRequest,
    _ctx: &RequestContext<'_>,
) -> CreatePartitionsResponse {
    let names: Vec<TopicName> = request.topics.iter().map(|t| t.name.clone()).collect();
    let requests = request
        .topics
        .into_iter()
        .map(|t| ControllerCreatePartitions {
            name: t.name.0.to_string(),
            count: t.count,
            assignments: t.assignments.map(|a| {
                a.into_iter()
                    .map(|r| r.broker_ids.into_iter().map(|b| b.0).collect())
                    .collect()
            }),
        })
        .collect();
    let validate_only = request.validate_only;
    let results = broker
        .controller
        .create_partitions(requests, validate_only)
        .await;
    broker.await_metadata().await;
    let results = names
        .into_iter()
        .zip(results)
        .map(|(name, result)| {
            let storage_error = if validate_only {
                None
            } else {
                broker.replicas.topic_storage_error(name.0.as_str())
            };
            let r = CreatePartitionsTopicResult::default().with_name(name.clone());
            match result {
                Ok(()) if let Some((partition, e)) = storage_error => r
                    .with_error_code(ErrorCode::KafkaStorageError.code())
                    .with_error_message(Some(StrBytes::from_string(storage_error_message(
                        name.0.as_str(),
                        partition,
                        &e,
                    )))),
                Ok(()) => r,
                Err(e) => r
                    .with_error_code(e.code.code())
                    .with_error_message(message(&e)),
            }
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}

/// ElectLeaders (KIP-460), forwarded to the active controller as Kafka's
/// brokers forward it: PREFERRED (0) or UNCLEAN (1, v1+; v0 is always
/// PREFERRED) elections for the partitions named, or every partition when
/// the list is null (then only those that needed an election are
/// answered). A request that fails as a whole (an unknown election type,
/// no controller in time) answers its error at the top (v1+) and for every
/// partition named, as Kafka's `ElectLeadersRequest.getErrorResponse`. The
/// answer waits until this broker has applied the new leaders, so its
/// Metadata shows them.
pub async fn elect_leaders(
    broker: &Arc<Broker>,
    request: ElectLeadersRequest,
    ctx: &RequestContext<'_>,
) -> ElectLeadersResponse {
    let version = ctx.api_version();
    let election_type = if version >= 1 {
        request.election_type
    } else {
        0
    };
    let targets: Option<Vec<(String, Vec<i32>)>> = request.topic_partitions.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.topic.0.to_string(), t.partitions))
            .collect()
    });
    let result = match ElectionType::from_code(election_type) {
        Some(election) => {
            broker
                .controller
                .elect_leaders(election, targets.clone())
                .await
        }
        None => Err(ControllerError::new(
            ErrorCode::InvalidRequest,
            format!("Unknown election type {election_type}"),
        )),
    };
    let partition_result = |partition: i32, result: Result<(), ControllerError>| {
        let r = PartitionResult::default().with_partition_id(partition);
        match result {
            Ok(()) => r,
            Err(e) => r
                .with_error_code(e.code.code())
                .with_error_message(message(&e)),
        }
    };
    let topic_result = |topic: String, partitions: Vec<PartitionResult>| {
        ReplicaElectionResult::default()
            .with_topic(TopicName(StrBytes::from_string(topic)))
            .with_partition_result(partitions)
    };
    match result {
        Ok(topics) => {
            broker.await_metadata().await;
            ElectLeadersResponse::default().with_replica_election_results(
                topics
                    .into_iter()
                    .map(|t| {
                        let partitions = t
                            .partitions
                            .into_iter()
                            .map(|(p, r)| partition_result(p, r))
                            .collect();
                        topic_result(t.topic, partitions)
                    })
                    .collect(),
            )
        }
        Err(e) => {
            let results = targets
                .unwrap_or_default()
                .into_iter()
                .map(|(topic, partitions)| {
                    let partitions = partitions
                        .into_iter()
                        .map(|p| partition_result(p, Err(e.clone())))
                        .collect();
                    topic_result(topic, partitions)
                })
                .collect();
            let response = ElectLeadersResponse::default().with_replica_election_results(results);
            if version >= 1 {
                response.with_error_code(e.code.code())
            } else {
                response
            }
        }
    }
}

pub fn describe_cluster(
    broker: &Broker,
    request: DescribeClusterRequest,
    _ctx: &RequestContext<'_>,
) -> DescribeClusterResponse {
    let image = broker.image();
    let response = DescribeClusterResponse::default()
        .with_endpoint_type(ENDPOINT_BROKER)
        .with_cluster_id(StrBytes::from_string(image.cluster_id.clone()))
        .with_controller_id(BrokerId(broker.controller_id_for_clients(&image)))
        .with_cluster_authorized_operations(if request.include_cluster_authorized_operations {
            CLUSTER_OPERATIONS
        } else {
            i32::MIN
        });
    if request.endpoint_type != ENDPOINT_BROKER && request.endpoint_type != 0 {
        return response
            .with_error_code(ErrorCode::MismatchedEndpointType.code())
            .with_error_message(Some(StrBytes::from_static_str(
                "The request was sent to a broker endpoint",
            )));
    }
    response.with_brokers(
        image
            .live_brokers()
            .map(|b| {
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(b.id))
                    .with_host(StrBytes::from_string(b.host.clone()))
                    .with_port(i32::from(b.port))
                    .with_rack(b.rack.clone().map(StrBytes::from_string))
            })
            .collect(),
    )
}
