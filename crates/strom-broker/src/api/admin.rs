//! Topic administration and cluster description: CreateTopics, DeleteTopics,
//! CreatePartitions, DescribeCluster, DescribeConfigs.
//!
//! Changes go through the controller (validated as Kafka's controller does,
//! durable in the metadata log); the local logs follow the new image before
//! the response is sent, so a client can produce right after.

use std::collections::BTreeMap;
use std::sync::Arc;

use strom_controller::{
    ControllerError, CreatePartitionsRequest as ControllerCreatePartitions, CreateTopicRequest,
};
use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::kafka::create_partitions_response::CreatePartitionsTopicResult;
use strom_protocol::messages::kafka::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use strom_protocol::messages::kafka::delete_topics_response::DeletableTopicResult;
use strom_protocol::messages::kafka::describe_cluster_response::DescribeClusterBroker;
use strom_protocol::messages::kafka::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use strom_protocol::messages::kafka::{
    BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeClusterRequest,
    DescribeClusterResponse, DescribeConfigsRequest, DescribeConfigsResponse, TopicName,
};
use strom_protocol::messages::{StrBytes, Uuid};

use super::metadata::CLUSTER_OPERATIONS;
use crate::broker::Broker;
use crate::config::{ConfigSource, ConfigType, TOPIC_CONFIGS, validate_topic_config};

/// DescribeConfigs resource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// DescribeCluster endpoint types (KIP-919).
const ENDPOINT_BROKER: i8 = 1;

fn message(e: &ControllerError) -> Option<StrBytes> {
    e.message.clone().map(StrBytes::from_string)
}

pub async fn create_topics(
    broker: &Arc<Broker>,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
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
    let broker_for_task = Arc::clone(broker);
    let created = super::blocking(move || {
        let results = broker_for_task
            .controller
            .create_topics(requests, validate_only);
        if !validate_only && let Err(e) = broker_for_task.apply_metadata() {
            tracing::error!(error = %e, "creating logs for new topics failed");
        }
        results
    })
    .await
    .unwrap_or_default();
    let image = broker.image();
    for ((position, name), result) in positions.into_iter().zip(names).zip(created) {
        let topic_name = TopicName(StrBytes::from_string(name.clone()));
        results[position] = Some(match result {
            Ok(created) => {
                let overrides = image
                    .topic(&name)
                    .map(|t| t.configs.clone())
                    .unwrap_or_default();
                let configs = (version >= 5).then(|| {
                    TOPIC_CONFIGS
                        .iter()
                        .map(|def| {
                            let (value, _) = broker.config.topic_config_value(def, &overrides);
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
    version: i16,
) -> DeleteTopicsResponse {
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
    let broker_for_task = Arc::clone(broker);
    let mut deleted = super::blocking(move || {
        let results = broker_for_task.controller.delete_topics(&names);
        if let Err(e) = broker_for_task.apply_metadata() {
            tracing::error!(error = %e, "deleting logs of deleted topics failed");
        }
        results
    })
    .await
    .unwrap_or_default()
    .into_iter();
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
    let broker_for_task = Arc::clone(broker);
    let results = super::blocking(move || {
        let results = broker_for_task
            .controller
            .create_partitions(requests, validate_only);
        if !validate_only && let Err(e) = broker_for_task.apply_metadata() {
            tracing::error!(error = %e, "creating logs for new partitions failed");
        }
        results
    })
    .await
    .unwrap_or_default();
    let results = names
        .into_iter()
        .zip(results)
        .map(|(name, result)| {
            let r = CreatePartitionsTopicResult::default().with_name(name);
            match result {
                Ok(()) => r,
                Err(e) => r
                    .with_error_code(e.code.code())
                    .with_error_message(message(&e)),
            }
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}

pub fn describe_cluster(
    broker: &Broker,
    request: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let image = broker.image();
    let response = DescribeClusterResponse::default()
        .with_endpoint_type(ENDPOINT_BROKER)
        .with_cluster_id(StrBytes::from_string(image.cluster_id.clone()))
        .with_controller_id(BrokerId(image.controller_id))
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
            .brokers
            .values()
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

/// Broker configs DescribeConfigs lists: name, type, Kafka's default (or
/// `None` for no value), whether it can change at runtime, documentation.
const BROKER_CONFIGS: &[(&str, ConfigType, Option<&str>, &str)] = &[
    (
        "advertised.listeners",
        ConfigType::String,
        None,
        "Listeners to publish to clients.",
    ),
    (
        "auto.create.topics.enable",
        ConfigType::Boolean,
        Some("true"),
        "Enable auto creation of topic on the server.",
    ),
    (
        "broker.rack",
        ConfigType::String,
        None,
        "Rack of the broker.",
    ),
    (
        "compression.type",
        ConfigType::String,
        Some("producer"),
        "Final compression type for topics.",
    ),
    (
        "connections.max.idle.ms",
        ConfigType::Long,
        Some("600000"),
        "Idle connections timeout.",
    ),
    (
        "default.replication.factor",
        ConfigType::Int,
        Some("1"),
        "Default replication factor for automatically created topics.",
    ),
    (
        "fetch.max.bytes",
        ConfigType::Int,
        Some("57671680"),
        "The maximum number of bytes returned for a fetch request.",
    ),
    (
        "listeners",
        ConfigType::String,
        Some("PLAINTEXT://127.0.0.1:9092"),
        "Listener URIs.",
    ),
    (
        "log.cleanup.policy",
        ConfigType::List,
        Some("delete"),
        "The default cleanup policy for segments beyond the retention window.",
    ),
    (
        "log.dirs",
        ConfigType::String,
        Some("./strom-data"),
        "The directory in which the log data is kept.",
    ),
    (
        "log.flush.interval.messages",
        ConfigType::Long,
        Some("9223372036854775807"),
        "Messages accumulated on a log partition before messages are flushed to disk.",
    ),
    (
        "log.flush.interval.ms",
        ConfigType::Long,
        None,
        "Maximum time a message is kept in memory before being flushed to disk.",
    ),
    (
        "log.index.interval.bytes",
        ConfigType::Int,
        Some("4096"),
        "The interval with which we add an entry to the offset index.",
    ),
    (
        "log.index.size.max.bytes",
        ConfigType::Int,
        Some("10485760"),
        "The maximum size in bytes of the offset index.",
    ),
    (
        "log.message.timestamp.type",
        ConfigType::String,
        Some("CreateTime"),
        "Whether the timestamp in the message is create time or log append time.",
    ),
    (
        "log.retention.bytes",
        ConfigType::Long,
        Some("-1"),
        "The maximum size of the log before deleting it.",
    ),
    (
        "log.retention.hours",
        ConfigType::Int,
        Some("168"),
        "The number of hours to keep a log file before deleting it.",
    ),
    (
        "log.retention.ms",
        ConfigType::Long,
        None,
        "The number of milliseconds to keep a log file before deleting it.",
    ),
    (
        "log.roll.hours",
        ConfigType::Int,
        Some("168"),
        "The maximum time before a new log segment is rolled out.",
    ),
    (
        "log.segment.bytes",
        ConfigType::Int,
        Some("1073741824"),
        "The maximum size of a single log file.",
    ),
    (
        "max.connections",
        ConfigType::Int,
        Some("10000"),
        "The maximum number of connections the broker accepts.",
    ),
    (
        "max.incremental.fetch.session.cache.slots",
        ConfigType::Int,
        Some("1000"),
        "The maximum number of incremental fetch sessions.",
    ),
    (
        "message.max.bytes",
        ConfigType::Int,
        Some("1048588"),
        "The largest record batch size allowed.",
    ),
    (
        "min.insync.replicas",
        ConfigType::Int,
        Some("1"),
        "Minimum in-sync replicas for acks=all.",
    ),
    (
        "node.id",
        ConfigType::Int,
        Some("1"),
        "The node id of this broker.",
    ),
    (
        "num.partitions",
        ConfigType::Int,
        Some("1"),
        "The default number of log partitions per topic.",
    ),
    (
        "num.recovery.threads.per.data.dir",
        ConfigType::Int,
        Some("2"),
        "Threads per data directory for log recovery at startup.",
    ),
    (
        "producer.id.expiration.ms",
        ConfigType::Int,
        Some("86400000"),
        "Time a producer id stays after its last write.",
    ),
    (
        "socket.request.max.bytes",
        ConfigType::Int,
        Some("104857600"),
        "The maximum number of bytes in a socket request.",
    ),
    (
        "transaction.max.timeout.ms",
        ConfigType::Int,
        Some("900000"),
        "The maximum allowed timeout for transactions.",
    ),
    (
        "unclean.leader.election.enable",
        ConfigType::Boolean,
        Some("false"),
        "Whether replicas not in the ISR may be elected leader.",
    ),
];

pub fn describe_configs(
    broker: &Broker,
    request: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let image = broker.image();
    let with_synonyms = version >= 1 && request.include_synonyms;
    let with_docs = version >= 3 && request.include_documentation;
    // config_type and documentation exist from v3 on.
    let typed = version >= 3;
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            // Null or empty: every config (Kafka's ConfigHelper does the same).
            let keys: Option<Vec<String>> = resource
                .configuration_keys
                .as_ref()
                .filter(|k| !k.is_empty())
                .map(|k| k.iter().map(|s| s.to_string()).collect());
            let wanted = |name: &str| keys.as_ref().is_none_or(|k| k.iter().any(|n| n == name));
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            match resource.resource_type {
                RESOURCE_TOPIC => {
                    let name = resource.resource_name.as_str();
                    let Some(topic) = image.topic(name) else {
                        let code = if strom_storage::manager::is_legal_topic_name(name) {
                            ErrorCode::UnknownTopicOrPartition
                        } else {
                            ErrorCode::InvalidTopicException
                        };
                        return result
                            .with_error_code(code.code())
                            .with_error_message(Some(StrBytes::from_string(format!("Topic {name} does not exist"))));
                    };
                    let configs = TOPIC_CONFIGS
                        .iter()
                        .filter(|def| wanted(def.name))
                        .map(|def| {
                            let (value, chain) = broker.config.topic_config_value(def, &topic.configs);
                            entry(def.name, Some(value.value), value.source, def.config_type, false, (def.doc, with_docs, typed))
                                .with_synonyms(if with_synonyms { synonyms(&chain) } else { Vec::new() })
                        })
                        .collect();
                    result.with_configs(configs)
                }
                RESOURCE_BROKER => {
                    let name = resource.resource_name.as_str();
                    if !name.is_empty() && name.parse::<i32>().ok() != Some(broker.node_id) {
                        return result.with_error_code(ErrorCode::InvalidRequest.code()).with_error_message(Some(
                            StrBytes::from_string(format!("Unexpected broker id, expected {} or empty string, but received {name}", broker.node_id)),
                        ));
                    }
                    let defaults_only = name.is_empty();
                    let configs = BROKER_CONFIGS
                        .iter()
                        .filter(|(n, ..)| wanted(n))
                        .filter_map(|(n, t, default, doc)| {
                            let static_value = broker.config.properties.get(*n).cloned();
                            if defaults_only {
                                // Only dynamic cluster-wide defaults (none yet) show for "".
                                return None;
                            }
                            let (value, source) = match static_value {
                                Some(v) => (Some(v), ConfigSource::StaticBroker),
                                None => (default.map(str::to_owned), ConfigSource::Default),
                            };
                            let value = match *n {
                                "node.id" => Some(broker.node_id.to_string()),
                                "advertised.listeners" => {
                                    Some(format!("PLAINTEXT://{}:{}", broker.advertised_host, broker.advertised_port))
                                }
                                _ => value,
                            };
                            let syns = vec![crate::config::ConfigValue {
                                name: (*n).to_owned(),
                                value: value.clone().unwrap_or_default(),
                                source,
                            }];
                            Some(
                                entry(n, value, source, *t, true, (doc, with_docs, typed))
                                    .with_synonyms(if with_synonyms { synonyms(&syns) } else { Vec::new() }),
                            )
                        })
                        .collect();
                    result.with_configs(configs)
                }
                other => result.with_error_code(ErrorCode::InvalidRequest.code()).with_error_message(Some(
                    StrBytes::from_string(format!("Unsupported resource type {other}")),
                )),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn entry(
    name: &str,
    value: Option<String>,
    source: ConfigSource,
    config_type: ConfigType,
    read_only: bool,
    (doc, with_docs, typed): (&str, bool, bool),
) -> DescribeConfigsResourceResult {
    DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_string(name.to_owned()))
        .with_value(value.map(StrBytes::from_string))
        .with_read_only(read_only)
        .with_config_source(source.code())
        .with_is_sensitive(config_type == ConfigType::Password)
        .with_config_type(if typed { config_type.code() } else { 0 })
        .with_documentation(with_docs.then(|| StrBytes::from_string(doc.to_owned())))
}

fn synonyms(chain: &[crate::config::ConfigValue]) -> Vec<DescribeConfigsSynonym> {
    chain
        .iter()
        .map(|v| {
            DescribeConfigsSynonym::default()
                .with_name(StrBytes::from_string(v.name.clone()))
                .with_value(Some(StrBytes::from_string(v.value.clone())))
                .with_source(v.source.code())
        })
        .collect()
}
