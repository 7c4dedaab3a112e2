//! Configs: DescribeConfigs, AlterConfigs and IncrementalAlterConfigs for
//! topics and brokers, and ListConfigResources.
//!
//! Topic overrides and dynamic broker configs (one broker's, or the cluster
//! default under the broker name `""`) are records of the metadata log, so
//! they survive restarts. A change is validated whole (names, types, ranges,
//! the compaction lags against each other) before the controller writes it;
//! the local logs take the new settings before the response is sent.
//!
//! Dynamically changeable broker configs are the broker synonyms of the topic
//! configs (Kafka's DynamicLogConfig: `log.retention.ms`, `log.cleanup.policy`,
//! `compression.type`, ...); others are read-only, as Kafka answers for them.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use strom_controller::propose::MIN_INSYNC_REPLICAS;

use strom_controller::{ConfigResource, ControllerError, MetadataImage};
use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::StrBytes;
use strom_protocol::messages::kafka::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use strom_protocol::messages::kafka::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, ListConfigResourcesRequest,
    ListConfigResourcesResponse, alter_configs_request, alter_configs_response,
    incremental_alter_configs_request, incremental_alter_configs_response,
    list_config_resources_response,
};

use super::RequestContext;
use crate::broker::Broker;
use crate::config::{
    ConfigSource, ConfigType, ConfigValue, TOPIC_CONFIGS, TopicConfigDef, Unit, topic_config_def,
    validate_topic_config, validate_topic_configs,
};

/// Config resource types (Kafka's ConfigResource.Type).
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const RESOURCE_CLIENT_METRICS: i8 = 16;
const RESOURCE_GROUP: i8 = 32;
/// The types ListConfigResources lists (Kafka 4.1's), and lists all of when
/// the request names none.
const LISTED_RESOURCE_TYPES: [i8; 4] = [
    RESOURCE_TOPIC,
    RESOURCE_BROKER,
    RESOURCE_CLIENT_METRICS,
    RESOURCE_GROUP,
];

/// IncrementalAlterConfigs operations (Kafka's AlterConfigOp.OpType).
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// Broker configs DescribeConfigs lists besides the topic configs' broker
/// synonyms: name, type, Kafka's default (or `None` for no value),
/// documentation.
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
        "log.cleaner.backoff.ms",
        ConfigType::Long,
        Some("15000"),
        "The amount of time to sleep when there are no logs to clean.",
    ),
    (
        "log.cleaner.dedupe.buffer.size",
        ConfigType::Long,
        Some("134217728"),
        "The total memory used for log deduplication across all cleaner threads.",
    ),
    (
        "log.cleaner.enable",
        ConfigType::Boolean,
        Some("true"),
        "Enable the log cleaner process to run on the server.",
    ),
    (
        "log.cleaner.io.max.bytes.per.second",
        ConfigType::Double,
        Some("1.7976931348623157E308"),
        "The log cleaner will be throttled so that the sum of its read and write i/o will be less than this value on average.",
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
        "log.retention.check.interval.ms",
        ConfigType::Long,
        Some("300000"),
        "The frequency in milliseconds that the log cleaner checks whether any log is eligible for deletion.",
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

/// The topic config whose first broker synonym is `name`: the broker
/// configs that may change at runtime (Kafka's DynamicLogConfig takes only
/// the first synonym, `log.retention.ms` but not `log.retention.hours`).
fn synonym_of(name: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS
        .iter()
        .find(|def| def.synonyms.first().is_some_and(|(prop, _)| *prop == name))
}

/// The topic config any of whose broker synonyms is `name`.
fn any_synonym_of(name: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS
        .iter()
        .find(|def| def.synonyms.iter().any(|(prop, _)| *prop == name))
}

/// Every broker config DescribeConfigs lists for a broker: the fixed list
/// and the topic configs' broker synonyms, as `(name, type, default, doc)`.
fn broker_config_list() -> Vec<(&'static str, ConfigType, Option<&'static str>, &'static str)> {
    let mut list: Vec<_> = BROKER_CONFIGS.to_vec();
    for def in TOPIC_CONFIGS {
        for (i, (prop, unit)) in def.synonyms.iter().enumerate() {
            if list.iter().any(|(n, ..)| n == prop) {
                continue;
            }
            // The most specific synonym in the topic's unit carries the default.
            let default = (i == 0 && *unit == Unit::Same).then_some(def.default);
            let config_type = if *unit == Unit::Same {
                def.config_type
            } else {
                ConfigType::Int
            };
            list.push((prop, config_type, default, def.doc));
        }
    }
    list.sort_by_key(|(n, ..)| *n);
    list
}

/// A resource's error as the alter responses carry it.
struct Failure {
    code: ErrorCode,
    message: String,
}

impl Failure {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<ControllerError> for Failure {
    fn from(e: ControllerError) -> Self {
        Self {
            code: e.code,
            message: e.message.unwrap_or_default(),
        }
    }
}

/// Which config resource a request names, or why it cannot be altered.
fn resource(
    resource_type: i8,
    name: &str,
    image: &MetadataImage,
    node_id: i32,
) -> Result<ConfigResource, Failure> {
    match resource_type {
        RESOURCE_TOPIC => {
            if image.topic(name).is_some() {
                Ok(ConfigResource::Topic(name.to_owned()))
            } else if let Some(why) = strom_protocol::topic::illegal_topic_name(name) {
                Err(Failure::new(ErrorCode::InvalidTopicException, why))
            } else {
                Err(Failure::new(
                    ErrorCode::UnknownTopicOrPartition,
                    format!("Topic {name} does not exist."),
                ))
            }
        }
        RESOURCE_BROKER if name.is_empty() => Ok(ConfigResource::Broker(None)),
        RESOURCE_BROKER => match name.parse::<i32>() {
            Ok(id) if id == node_id => Ok(ConfigResource::Broker(Some(id))),
            Ok(id) => Err(Failure::new(
                ErrorCode::InvalidRequest,
                format!("Unexpected broker id, expected {node_id}, but received {id}"),
            )),
            Err(_) => Err(Failure::new(
                ErrorCode::InvalidRequest,
                format!("Invalid broker name {name}"),
            )),
        },
        other => Err(Failure::new(
            ErrorCode::InvalidRequest,
            format!("Unsupported resource type {other}"),
        )),
    }
}

/// The overrides a resource has now.
fn current(image: &MetadataImage, resource: &ConfigResource) -> BTreeMap<String, String> {
    match resource {
        ConfigResource::Topic(name) => image
            .topic(name)
            .map(|t| t.configs.clone())
            .unwrap_or_default(),
        ConfigResource::Broker(id) => image.broker_configs.get(id).cloned().unwrap_or_default(),
    }
}

/// Checks the overrides a resource would have after a change.
fn validate(
    broker: &Broker,
    image: &MetadataImage,
    resource: &ConfigResource,
    overrides: &BTreeMap<String, String>,
) -> Result<(), Failure> {
    let invalid = |e: crate::config::ConfigError| Failure::new(ErrorCode::InvalidConfig, e.0);
    match resource {
        ConfigResource::Topic(_) => {
            for (name, value) in overrides {
                validate_topic_config(name, value).map_err(invalid)?;
            }
            let value = |name: &str| {
                topic_config_def(name)
                    .map(|def| broker.config.topic_value(def, image, overrides).value)
                    .unwrap_or_default()
            };
            validate_topic_configs(&value).map_err(invalid)
        }
        ConfigResource::Broker(id) => {
            // The controller forms eligible leader replicas (KIP-966) by the
            // cluster's min.insync.replicas; a broker holding its high
            // watermark by another value could let an eligible replica miss
            // committed records. Kafka with ELR refuses it the same way.
            if id.is_some() && overrides.contains_key(MIN_INSYNC_REPLICAS) {
                return Err(Failure::new(
                    ErrorCode::InvalidConfig,
                    "Broker-level min.insync.replicas config is not supported when ELR is enabled.",
                ));
            }
            let mut read_only: Vec<&str> = Vec::new();
            for (name, value) in overrides {
                match synonym_of(name) {
                    // Kafka answers a bad dynamic broker value with
                    // INVALID_REQUEST (KAFKA-13609), not INVALID_CONFIG.
                    Some(def) => validate_topic_config(def.name, value).map_err(|e| {
                        Failure::new(ErrorCode::InvalidRequest, e.0.replace(def.name, name))
                    })?,
                    None => read_only.push(name),
                }
            }
            if read_only.is_empty() {
                Ok(())
            } else {
                Err(Failure::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "Cannot update these configs dynamically: {}",
                        read_only.join(", ")
                    ),
                ))
            }
        }
    }
}

/// Writes a resource's new overrides (unless `validate_only`) and brings the
/// local logs in line.
async fn commit(
    broker: &Arc<Broker>,
    resource: ConfigResource,
    before: BTreeMap<String, String>,
    after: BTreeMap<String, String>,
    validate_only: bool,
) -> Result<(), Failure> {
    if validate_only {
        return Ok(());
    }
    let mut changes = Vec::new();
    for (name, value) in &after {
        if before.get(name) != Some(value) {
            changes.push((resource.clone(), name.clone(), Some(value.clone())));
        }
    }
    for name in before.keys().filter(|n| !after.contains_key(*n)) {
        changes.push((resource.clone(), name.clone(), None));
    }
    let altered = broker.controller.alter_configs(changes).await;
    // The partitions take the new configs when the publisher applies them.
    broker.await_metadata().await;
    altered.map_err(Failure::from)
}

/// Resources named twice in one request: Kafka answers each with INVALID_REQUEST.
fn duplicates(keys: impl Iterator<Item = (i8, String)>) -> HashSet<(i8, String)> {
    let mut seen = HashSet::new();
    let mut twice = HashSet::new();
    for key in keys {
        if !seen.insert(key.clone()) {
            twice.insert(key);
        }
    }
    twice
}

/// What both alter APIs do, one resource after another: refuse resources
/// named twice, find the resource, work out its new overrides with
/// `change(resource, target, current overrides)`, validate them and
/// write them. One `(error, message)` per resource, in request order.
async fn alter_each<R>(
    broker: &Arc<Broker>,
    resources: &[R],
    key: impl Fn(&R) -> (i8, String),
    validate_only: bool,
    change: impl Fn(
        &R,
        &ConfigResource,
        BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, Failure>,
) -> Vec<(i16, Option<StrBytes>)> {
    let twice = duplicates(resources.iter().map(&key));
    let mut outcomes = Vec::with_capacity(resources.len());
    for r in resources {
        let (resource_type, name) = key(r);
        let name = name.as_str();
        let outcome = async {
            if twice.contains(&(resource_type, name.to_owned())) {
                return Err(Failure::new(
                    ErrorCode::InvalidRequest,
                    "Duplicate resource in request",
                ));
            }
            let image = broker.image();
            let target = resource(resource_type, name, &image, broker.node_id)?;
            let before = current(&image, &target);
            let after = change(r, &target, before.clone())?;
            validate(broker, &image, &target, &after)?;
            commit(broker, target, before, after, validate_only).await
        }
        .await;
        outcomes.push(match outcome {
            Ok(()) => (ErrorCode::None.code(), None),
            Err(f) => (f.code.code(), Some(StrBytes::from_string(f.message))),
        });
    }
    outcomes
}

/// AlterConfigs: each resource's overrides become exactly the given set.
pub async fn alter_configs(
    broker: &Arc<Broker>,
    request: AlterConfigsRequest,
    _ctx: &RequestContext<'_>,
) -> AlterConfigsResponse {
    let key = |r: &alter_configs_request::AlterConfigsResource| {
        (r.resource_type, r.resource_name.to_string())
    };
    let outcomes = alter_each(
        broker,
        &request.resources,
        key,
        request.validate_only,
        |r, _, _| {
            let mut after = BTreeMap::new();
            for c in &r.configs {
                let Some(value) = &c.value else {
                    return Err(Failure::new(
                        ErrorCode::InvalidRequest,
                        format!("Null value not supported for : {}", c.name),
                    ));
                };
                if after
                    .insert(c.name.to_string(), value.to_string())
                    .is_some()
                {
                    return Err(Failure::new(
                        ErrorCode::InvalidRequest,
                        "Error due to duplicate config keys",
                    ));
                }
            }
            Ok(after)
        },
    )
    .await;
    let responses = request
        .resources
        .into_iter()
        .zip(outcomes)
        .map(|(r, (code, message))| {
            alter_configs_response::AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(message)
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name)
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}

/// IncrementalAlterConfigs: SET, DELETE, APPEND and SUBTRACT on the current
/// overrides; APPEND and SUBTRACT only on list configs.
pub async fn incremental_alter_configs(
    broker: &Arc<Broker>,
    request: IncrementalAlterConfigsRequest,
    _ctx: &RequestContext<'_>,
) -> IncrementalAlterConfigsResponse {
    let key = |r: &incremental_alter_configs_request::AlterConfigsResource| {
        (r.resource_type, r.resource_name.to_string())
    };
    let outcomes = alter_each(
        broker,
        &request.resources,
        key,
        request.validate_only,
        |r, target, mut after| {
            let mut names = HashSet::new();
            if r.configs.iter().any(|c| !names.insert(c.name.as_str())) {
                return Err(Failure::new(
                    ErrorCode::InvalidRequest,
                    "Error due to duplicate config keys",
                ));
            }
            for c in &r.configs {
                apply_op(target, &mut after, c)?;
            }
            Ok(after)
        },
    )
    .await;
    let responses = request
        .resources
        .into_iter()
        .zip(outcomes)
        .map(|(r, (code, message))| {
            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(message)
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name)
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// One IncrementalAlterConfigs operation on a resource's overrides.
fn apply_op(
    target: &ConfigResource,
    after: &mut BTreeMap<String, String>,
    c: &incremental_alter_configs_request::AlterableConfig,
) -> Result<(), Failure> {
    let name = c.name.to_string();
    let is_list = match target {
        ConfigResource::Topic(_) => {
            let def = topic_config_def(&name).ok_or_else(|| {
                Failure::new(
                    ErrorCode::InvalidConfig,
                    format!("Unknown topic config name: {name}"),
                )
            })?;
            def.config_type == ConfigType::List
        }
        ConfigResource::Broker(_) => {
            synonym_of(&name).is_some_and(|def| def.config_type == ConfigType::List)
        }
    };
    let value = c.value.as_ref().map(|v| v.to_string());
    match c.config_operation {
        OP_SET => {
            let value = value.ok_or_else(|| {
                Failure::new(
                    ErrorCode::InvalidRequest,
                    format!("Null value not supported for : {name}"),
                )
            })?;
            after.insert(name, value);
        }
        OP_DELETE => {
            after.remove(&name);
        }
        op @ (OP_APPEND | OP_SUBTRACT) => {
            let append = op == OP_APPEND;
            if !is_list {
                // Kafka's controller words it so for topics; its broker path
                // keeps the older message.
                let message = match target {
                    ConfigResource::Topic(_) => format!(
                        "Can't {} to key {name} because its type is not LIST.",
                        if append { "APPEND" } else { "SUBTRACT" }
                    ),
                    ConfigResource::Broker(_) => format!(
                        "Config value {} is not allowed for config key: {name}",
                        if append { "append" } else { "subtract" }
                    ),
                };
                return Err(Failure::new(ErrorCode::InvalidConfig, message));
            }
            // As Kafka: the resource's own value, else its default.
            let base = after
                .get(&name)
                .cloned()
                .unwrap_or_else(|| default_of(target, &name));
            let items = |list: &str| -> Vec<String> {
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            };
            let mut current = items(&base);
            let given = items(value.as_deref().unwrap_or_default());
            if append {
                for g in given {
                    if !current.contains(&g) {
                        current.push(g);
                    }
                }
            } else {
                current.retain(|i| !given.contains(i));
            }
            after.insert(name, current.join(","));
        }
        other => {
            return Err(Failure::new(
                ErrorCode::InvalidRequest,
                format!("Unknown config operation {other} for {name}"),
            ));
        }
    }
    Ok(())
}

/// The default a config starts from when the resource does not set it.
fn default_of(target: &ConfigResource, name: &str) -> String {
    match target {
        ConfigResource::Topic(_) => topic_config_def(name).map(|d| d.default.to_owned()),
        ConfigResource::Broker(_) => synonym_of(name).map(|d| d.default.to_owned()),
    }
    .unwrap_or_default()
}

pub fn describe_configs(
    broker: &Broker,
    request: DescribeConfigsRequest,
    ctx: &RequestContext<'_>,
) -> DescribeConfigsResponse {
    let version = ctx.api_version();
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
                        let (code, message) = match strom_protocol::topic::illegal_topic_name(name) {
                            Some(why) => (ErrorCode::InvalidTopicException, why),
                            None => (ErrorCode::UnknownTopicOrPartition, format!("Topic {name} does not exist")),
                        };
                        return result
                            .with_error_code(code.code())
                            .with_error_message(Some(StrBytes::from_string(message)));
                    };
                    let configs = TOPIC_CONFIGS
                        .iter()
                        .filter(|def| wanted(def.name))
                        .map(|def| {
                            let (value, chain) = broker.config.topic_config_value(def, &image, &topic.configs);
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
                    let cluster_defaults = image.broker_configs.get(&None);
                    let configs = broker_config_list()
                        .into_iter()
                        .filter(|(n, ..)| wanted(n))
                        .filter_map(|(n, t, default, doc)| {
                            let read_only = synonym_of(n).is_none();
                            if name.is_empty() {
                                // The "" resource shows only the dynamic cluster defaults.
                                let value = cluster_defaults?.get(n)?;
                                let v = ConfigValue { name: n.to_owned(), value: value.clone(), source: ConfigSource::DynamicDefaultBroker };
                                return Some(
                                    entry(n, Some(value.clone()), v.source, t, read_only, (doc, with_docs, typed))
                                        .with_synonyms(if with_synonyms { synonyms(&[v]) } else { Vec::new() }),
                                );
                            }
                            let (value, source) = match broker.config.broker_value(&image, n) {
                                Some(v) => (Some(v.value), v.source),
                                None => (default.map(str::to_owned), ConfigSource::Default),
                            };
                            let value = match n {
                                "node.id" => Some(broker.node_id.to_string()),
                                "advertised.listeners" => {
                                    Some(format!("PLAINTEXT://{}:{}", broker.advertised_host, broker.advertised_port))
                                }
                                _ => value,
                            };
                            let syns = match any_synonym_of(n) {
                                Some(def) => broker.config.broker_synonyms(def, &image, n),
                                None => broker_synonyms(broker, &image, n, default),
                            };
                            Some(
                                entry(n, value, source, t, read_only, (doc, with_docs, typed))
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

/// The synonym chain of a broker config: every layer that sets it, most
/// specific first, ending with the default.
fn broker_synonyms(
    broker: &Broker,
    image: &MetadataImage,
    name: &str,
    default: Option<&str>,
) -> Vec<ConfigValue> {
    let mut chain = Vec::new();
    let layers = [
        (
            image.broker_configs.get(&Some(broker.node_id)),
            ConfigSource::DynamicBroker,
        ),
        (
            image.broker_configs.get(&None),
            ConfigSource::DynamicDefaultBroker,
        ),
        (Some(&broker.config.properties), ConfigSource::StaticBroker),
    ];
    for (props, source) in layers {
        if let Some(value) = props.and_then(|p| p.get(name)) {
            chain.push(ConfigValue {
                name: name.to_owned(),
                value: value.clone(),
                source,
            });
        }
    }
    if let Some(d) = default {
        chain.push(ConfigValue {
            name: name.to_owned(),
            value: d.to_owned(),
            source: ConfigSource::Default,
        });
    }
    chain
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

/// ListConfigResources (v0 was ListClientMetricsResources): the resources
/// that have configs, of the requested types (all four Kafka 4.1 lists when
/// none is named). Topics are every topic and brokers every registered
/// broker, as Kafka lists them; this broker keeps no group or client-metrics
/// configs, so those lists are empty. A type Kafka does not list answers
/// UNSUPPORTED_VERSION.
pub fn list_config_resources(
    broker: &Arc<Broker>,
    request: ListConfigResourcesRequest,
    ctx: &RequestContext<'_>,
) -> ListConfigResourcesResponse {
    let version = ctx.api_version();
    let types: BTreeSet<i8> = if version == 0 {
        // v0 lists client metrics resources only.
        BTreeSet::from([RESOURCE_CLIENT_METRICS])
    } else if request.resource_types.is_empty() {
        LISTED_RESOURCE_TYPES.iter().copied().collect()
    } else {
        request.resource_types.iter().copied().collect()
    };
    if let Some(t) = types.iter().find(|t| !LISTED_RESOURCE_TYPES.contains(t)) {
        tracing::debug!(
            resource_type = t,
            "ListConfigResources for a type Kafka does not list"
        );
        return ListConfigResourcesResponse::default()
            .with_error_code(ErrorCode::UnsupportedVersion.code());
    }
    let image = broker.image();
    let listed = |name: String, resource_type: i8| {
        list_config_resources_response::ConfigResource::default()
            .with_resource_name(StrBytes::from_string(name))
            .with_resource_type(if version >= 1 { resource_type } else { 0 })
    };
    let mut resources = Vec::new();
    if types.contains(&RESOURCE_TOPIC) {
        resources.extend(
            image
                .topics()
                .map(|t| listed(t.name.clone(), RESOURCE_TOPIC)),
        );
    }
    if types.contains(&RESOURCE_BROKER) {
        resources.extend(
            image
                .brokers
                .keys()
                .map(|id| listed(id.to_string(), RESOURCE_BROKER)),
        );
    }
    ListConfigResourcesResponse::default().with_config_resources(resources)
}
