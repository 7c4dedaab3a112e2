//! The admin client: topics, partitions, configs, consumer groups and their
//! offsets, records and the cluster, with the Java admin client's semantics.
//!
//! # Answers per item
//!
//! An operation on several items (topics, groups, partitions, config
//! resources) answers each one on its own, in a map from the item to its
//! `Result`: one topic that already exists does not fail the others. An
//! operation on one group answers with one `Result` (the group's error), which
//! may again hold per-partition results.
//!
//! # Retries
//!
//! Errors that another attempt may cure are retried after `retry.backoff.ms`
//! until `default.api.timeout.ms` has passed since the call began:
//! NOT_CONTROLLER after a metadata refresh (the controller moved),
//! NOT_COORDINATOR and COORDINATOR_NOT_AVAILABLE after looking the coordinator
//! up again, COORDINATOR_LOAD_IN_PROGRESS by waiting, NOT_LEADER_OR_FOLLOWER
//! after a metadata refresh, lost connections and request timeouts by sending
//! again. A topic the metadata does not know is reported at once (the Java
//! client does too); a leader that does not know a partition the metadata
//! sent it is asked again. An item still failing at the deadline gets an
//! [`Error::Timeout`] that names its last error.
//!
//! # Routing
//!
//! As the Java client: CreateTopics, DeleteTopics and CreatePartitions go to
//! the controller the metadata names (any broker if it names none; Strom's
//! brokers, like Kafka's in KRaft mode, forward to the quorum); a broker's
//! configs go to that broker, topic configs to any broker; group operations
//! go to the group's coordinator from FindCoordinator; per-partition
//! operations (ListOffsets, DeleteRecords) go to each partition's leader, one
//! request per leader, all leaders at once. Every request is sent at the
//! newest version both sides support, capped by the `*_VERSION` constants.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use strom_protocol::messages::kafka::{
    BrokerId, ConsumerGroupDescribeRequest, ConsumerProtocolAssignment, CreatePartitionsRequest,
    CreateTopicsRequest, DeleteGroupsRequest, DeleteRecordsRequest, DeleteTopicsRequest,
    DescribeClusterRequest, DescribeConfigsRequest, DescribeGroupsRequest, FindCoordinatorRequest,
    GroupId, IncrementalAlterConfigsRequest, ListGroupsRequest, ListOffsetsRequest,
    OffsetCommitRequest, OffsetDeleteRequest, OffsetFetchRequest, OffsetFetchResponse, TopicName,
    consumer_group_describe_response,
    create_partitions_request::CreatePartitionsTopic,
    create_topics_request::{CreatableTopic, CreatableTopicConfig},
    create_topics_response::{CreatableTopicConfigs, CreatableTopicResult},
    delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic},
    delete_topics_request::DeleteTopicState,
    describe_configs_request::DescribeConfigsResource,
    describe_configs_response::DescribeConfigsResourceResult,
    describe_groups_response::DescribedGroup,
    incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig},
    list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
    offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic},
    offset_delete_request::{OffsetDeleteRequestPartition, OffsetDeleteRequestTopic},
    offset_fetch_request::{
        OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
    },
};
use strom_protocol::messages::{Decodable, Request, StrBytes, Uuid};

use crate::cluster::{BrokerInfo, Cluster, GROUP_KEY, Route, TopicInfo};
use crate::config::{COMMON, ClientConfig, NetworkConfig};
/// The consumer's partition type, here too.
pub use crate::consumer::TopicPartition;
use crate::error::{Error, ErrorCode, Result};

/// The properties the admin client reads, besides [`COMMON`].
const ADMIN: &[&str] = &["default.api.timeout.ms"];

/// Kafka's default for `default.api.timeout.ms`.
const DEFAULT_API_TIMEOUT_MS: u64 = 60_000;

// The newest version of each request sent. Each is the newest the vendored
// protocol crate knows that still names topics (not only topic ids).
const CREATE_TOPICS_VERSION: i16 = 7;
/// v6 takes topics as (name, id) pairs; names only here.
const DELETE_TOPICS_VERSION: i16 = 6;
const CREATE_PARTITIONS_VERSION: i16 = 3;
const DESCRIBE_CONFIGS_VERSION: i16 = 4;
const INCREMENTAL_ALTER_CONFIGS_VERSION: i16 = 1;
/// v4 adds the group state, v5 the group type.
const LIST_GROUPS_VERSION: i16 = 5;
/// v6 answers GROUP_ID_NOT_FOUND instead of a "Dead" group.
const DESCRIBE_GROUPS_VERSION: i16 = 6;
const CONSUMER_GROUP_DESCRIBE_VERSION: i16 = 1;
const DELETE_GROUPS_VERSION: i16 = 2;
/// v8 batches groups; v10 would name topics by id only.
const OFFSET_FETCH_VERSION: i16 = 9;
/// v10 names topics by id only.
const OFFSET_COMMIT_VERSION: i16 = 9;
const OFFSET_DELETE_VERSION: i16 = 0;
const DESCRIBE_CLUSTER_VERSION: i16 = 2;
/// v4+ looks up several keys at once; v6 adds share groups.
const FIND_COORDINATOR_VERSION: i16 = 5;
const DELETE_RECORDS_VERSION: i16 = 2;
/// v7 adds MAX_TIMESTAMP, v10 the timeout.
const LIST_OFFSETS_VERSION: i16 = 10;

/// DescribeCluster's endpoint type for brokers (KIP-919).
const ENDPOINT_BROKERS: i8 = 1;

/// ListOffsets' special timestamps.
const EARLIEST_TIMESTAMP: i64 = -2;
const LATEST_TIMESTAMP: i64 = -1;
const MAX_TIMESTAMP: i64 = -3;
/// The first ListOffsets version that knows [`MAX_TIMESTAMP`].
const MAX_TIMESTAMP_MIN_VERSION: i16 = 7;

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopic {
    pub name: String,
    /// -1 takes the broker's `num.partitions`.
    pub partitions: i32,
    /// -1 takes the broker's `default.replication.factor`.
    pub replication_factor: i16,
    /// Topic configs (`cleanup.policy`, `retention.ms`, ...).
    pub configs: BTreeMap<String, String>,
}

impl NewTopic {
    /// A topic with `partitions` partitions of `replication_factor` replicas
    /// (-1 for either takes the broker's default).
    pub fn new(name: impl Into<String>, partitions: i32, replication_factor: i16) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication_factor,
            configs: BTreeMap::new(),
        }
    }

    /// Sets the topic config `name` to `value`.
    #[must_use]
    pub fn config(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.configs.insert(name.into(), value.into());
        self
    }
}

/// What CreateTopics reports of a topic it created (or, with
/// `validate_only`, would create).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedTopic {
    /// Nil before CreateTopics v7.
    pub topic_id: Uuid,
    /// -1 before CreateTopics v5.
    pub partitions: i32,
    /// -1 before CreateTopics v5.
    pub replication_factor: i16,
    /// The topic's configs; empty before v5 or when the broker could not
    /// give them (it is not allowed to describe them).
    pub configs: Vec<ConfigEntry>,
}

/// A topic as [`Admin::list_topics`] names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicListing {
    pub name: String,
    pub topic_id: Uuid,
    /// Kafka's own topics (`__consumer_offsets`, `__transaction_state`).
    pub internal: bool,
}

/// The kind of thing a config belongs to, with Kafka's wire codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ResourceType {
    Topic,
    Broker,
}

impl ResourceType {
    /// The wire code (ConfigResource.Type in the Java client).
    pub fn code(self) -> i8 {
        match self {
            Self::Topic => 2,
            Self::Broker => 4,
        }
    }
}

/// A topic or broker whose configs are described or altered.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigResource {
    pub resource_type: ResourceType,
    /// The topic name, or the broker id in decimal ("" for the cluster-wide
    /// broker defaults).
    pub name: String,
}

impl ConfigResource {
    /// The configs of topic `name`.
    pub fn topic(name: impl Into<String>) -> Self {
        Self {
            resource_type: ResourceType::Topic,
            name: name.into(),
        }
    }

    /// The configs of broker `id`.
    pub fn broker(id: i32) -> Self {
        Self {
            resource_type: ResourceType::Broker,
            name: id.to_string(),
        }
    }

    /// The cluster-wide defaults of dynamic broker configs.
    pub fn broker_defaults() -> Self {
        Self {
            resource_type: ResourceType::Broker,
            name: String::new(),
        }
    }
}

/// Where a config's value comes from, as DescribeConfigs v1+ says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConfigSource {
    /// A source this client does not know (or DescribeConfigs v0).
    Unknown,
    /// Set on the topic.
    DynamicTopic,
    /// Set dynamically for this broker.
    DynamicBroker,
    /// Set dynamically as the cluster-wide broker default.
    DynamicDefaultBroker,
    /// From the broker's startup properties.
    StaticBroker,
    /// Kafka's default.
    Default,
    /// A broker logger's level.
    DynamicBrokerLogger,
    /// A client metrics subscription's config.
    ClientMetrics,
    /// Set on a group.
    Group,
}

impl ConfigSource {
    /// The source of wire code `code`.
    pub fn from_code(code: i8) -> Self {
        match code {
            1 => Self::DynamicTopic,
            2 => Self::DynamicBroker,
            3 => Self::DynamicDefaultBroker,
            4 => Self::StaticBroker,
            5 => Self::Default,
            6 => Self::DynamicBrokerLogger,
            7 => Self::ClientMetrics,
            8 => Self::Group,
            _ => Self::Unknown,
        }
    }
}

/// One config of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    /// `None` for a sensitive config (the broker never sends those) or one
    /// without a value.
    pub value: Option<String>,
    pub source: ConfigSource,
    /// Whether the value is Kafka's default (not set anywhere).
    pub is_default: bool,
    /// Whether the config cannot be altered.
    pub read_only: bool,
    /// Whether the value is secret (a password).
    pub sensitive: bool,
    /// Where else the config is set, most specific first (the value in
    /// effect is the first); empty unless asked for.
    pub synonyms: Vec<ConfigSynonym>,
}

/// A place a config is set: the topic, the broker, its default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSynonym {
    /// The name there (a topic's `retention.ms` is the broker's
    /// `log.retention.ms`).
    pub name: String,
    pub value: Option<String>,
    pub source: ConfigSource,
}

/// How IncrementalAlterConfigs changes one config (KIP-339).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlterConfigOpType {
    /// Sets the value.
    Set,
    /// Removes the setting; the config falls back to its default.
    Delete,
    /// Adds to a list config.
    Append,
    /// Removes from a list config.
    Subtract,
}

impl AlterConfigOpType {
    /// The wire code.
    pub fn code(self) -> i8 {
        match self {
            Self::Set => 0,
            Self::Delete => 1,
            Self::Append => 2,
            Self::Subtract => 3,
        }
    }
}

/// One change to one config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlterConfigOp {
    pub name: String,
    pub op: AlterConfigOpType,
    /// The value to set, append or subtract; `None` for a delete.
    pub value: Option<String>,
}

impl AlterConfigOp {
    /// Sets `name` to `value`.
    pub fn set(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            op: AlterConfigOpType::Set,
            value: Some(value.into()),
        }
    }

    /// Removes the setting of `name`.
    pub fn delete(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            op: AlterConfigOpType::Delete,
            value: None,
        }
    }

    /// Appends `value` to the list config `name`.
    pub fn append(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            op: AlterConfigOpType::Append,
            value: Some(value.into()),
        }
    }

    /// Removes `value` from the list config `name`.
    pub fn subtract(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            op: AlterConfigOpType::Subtract,
            value: Some(value.into()),
        }
    }
}

/// A group as ListGroups names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    /// "consumer" for consumer groups, "" for a group that only commits
    /// offsets.
    pub protocol_type: String,
    /// "Stable", "Empty", ...: `None` before ListGroups v4.
    pub state: Option<String>,
    /// "classic" or "consumer" (KIP-848): `None` before ListGroups v5.
    pub group_type: Option<String>,
}

/// A group as DescribeGroups (classic) or ConsumerGroupDescribe (KIP-848
/// consumer groups) describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    /// "classic" or "consumer".
    pub group_type: String,
    /// "Stable", "PreparingRebalance", "Empty", ...
    pub state: String,
    /// "consumer" for consumer groups.
    pub protocol_type: String,
    /// The chosen assignor ("range", "uniform", ...); empty while a classic
    /// group rebalances.
    pub protocol: String,
    pub members: Vec<MemberDescription>,
    /// The coordinator's broker id.
    pub coordinator: i32,
}

/// A member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    /// Set for static members (`group.instance.id`).
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// The partitions assigned, by topic; empty while a classic group
    /// rebalances or when its protocol is not "consumer".
    pub assignment: BTreeMap<String, Vec<i32>>,
}

/// An offset committed for a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The offset of the next record to consume.
    pub offset: i64,
    pub leader_epoch: Option<i32>,
    pub metadata: String,
}

impl CommittedOffset {
    /// `offset`, without leader epoch or metadata.
    pub fn new(offset: i64) -> Self {
        Self {
            offset,
            leader_epoch: None,
            metadata: String::new(),
        }
    }
}

/// The cluster as DescribeCluster (or Metadata) describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDescription {
    pub cluster_id: Option<String>,
    /// `None` when the answer names no controller.
    pub controller: Option<i32>,
    /// By id.
    pub brokers: Vec<BrokerInfo>,
}

/// Which offset of a partition ListOffsets looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The log end offset (or the last stable offset, reading committed).
    Latest,
    /// The offset of the record with the largest timestamp (KIP-734).
    MaxTimestamp,
    /// The first offset whose timestamp is at least this (ms since the
    /// epoch).
    Timestamp(i64),
}

impl OffsetSpec {
    fn timestamp(self) -> i64 {
        match self {
            Self::Earliest => EARLIEST_TIMESTAMP,
            Self::Latest => LATEST_TIMESTAMP,
            Self::MaxTimestamp => MAX_TIMESTAMP,
            Self::Timestamp(ts) => ts,
        }
    }
}

/// Which records ListOffsets counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IsolationLevel {
    /// Everything written: Latest is the high watermark.
    #[default]
    ReadUncommitted,
    /// Committed transactions only: Latest is the last stable offset.
    ReadCommitted,
}

/// What ListOffsets found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListedOffset {
    /// -1 when no record matches a timestamp.
    pub offset: i64,
    /// The record's timestamp, -1 for Earliest and Latest.
    pub timestamp: i64,
    pub leader_epoch: Option<i32>,
}

/// Where a request for an item goes.
#[derive(Debug, Clone)]
enum Dest {
    /// Any broker.
    Any,
    /// The controller the metadata names, else any broker.
    Controller,
    /// The broker with this id.
    Node(i32),
    /// The coordinator of this group.
    Coordinator(String),
    /// The leader of this partition.
    Leader(TopicPartition),
}

/// The Kafka admin client.
///
/// Cheap to share by reference; each call works on its own and calls may
/// run concurrently. Needs a tokio runtime.
///
/// ```no_run
/// # async fn example() -> strom_client::Result<()> {
/// use strom_client::admin::{ConfigResource, NewTopic};
/// use strom_client::{Admin, ClientConfig, ErrorCode};
///
/// let mut config = ClientConfig::new();
/// config.set("bootstrap.servers", "127.0.0.1:9092");
/// let admin = Admin::new(&config)?;
/// let topic = NewTopic::new("orders", 3, 1).config("retention.ms", "86400000");
/// match &admin.create_topics(&[topic], false).await["orders"] {
///     Ok(created) => println!("created {}", created.topic_id),
///     Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => {}
///     Err(e) => return Err(e.clone()),
/// }
/// let orders = ConfigResource::topic("orders");
/// for entry in admin.describe_configs(&[orders.clone()], false).await[&orders].clone()? {
///     println!("{} = {:?} ({:?})", entry.name, entry.value, entry.source);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Admin {
    cluster: Cluster,
    /// `default.api.timeout.ms`: how long a call keeps retrying.
    api_timeout: Duration,
}

impl Admin {
    /// An admin client with `config`: the common properties
    /// (`bootstrap.servers`, ...) and `default.api.timeout.ms`. Connects
    /// lazily, on the first call.
    ///
    /// Fails on unknown or malformed properties, and outside a tokio runtime.
    pub fn new(config: &ClientConfig) -> Result<Self> {
        config.check_known(&[COMMON, ADMIN])?;
        tokio::runtime::Handle::try_current()
            .map_err(|_| Error::State("the admin client needs a tokio runtime".to_owned()))?;
        let net = NetworkConfig::from_config(config)?;
        let api_timeout = config.millis("default.api.timeout.ms", DEFAULT_API_TIMEOUT_MS)?;
        if api_timeout.is_zero() {
            return Err(Error::config("default.api.timeout.ms", "must be positive"));
        }
        Ok(Self {
            cluster: Cluster::new(net),
            api_timeout,
        })
    }

    /// When a call begun now gives up: `default.api.timeout.ms` from now.
    fn deadline(&self) -> Instant {
        Instant::now() + self.api_timeout
    }

    /// `default.api.timeout.ms` as a request's `timeout_ms`.
    fn timeout_ms(&self) -> i32 {
        i32::try_from(self.api_timeout.as_millis()).unwrap_or(i32::MAX)
    }

    // ---- topics ----

    /// Creates `topics`; with `validate_only`, only checks that it could.
    /// Each topic's result: TOPIC_ALREADY_EXISTS, INVALID_PARTITIONS,
    /// INVALID_REPLICATION_FACTOR, INVALID_CONFIG, INVALID_TOPIC_EXCEPTION,
    /// ... A name given twice is created once, as the last one says.
    pub async fn create_topics(
        &self,
        topics: &[NewTopic],
        validate_only: bool,
    ) -> BTreeMap<String, Result<CreatedTopic>> {
        let deadline = self.deadline();
        let by_name: BTreeMap<&str, &NewTopic> =
            topics.iter().map(|t| (t.name.as_str(), t)).collect();
        let timeout_ms = self.timeout_ms();
        self.each(
            deadline,
            by_name.keys().map(|&n| n.to_owned()),
            CREATE_TOPICS_VERSION,
            |_| Dest::Controller,
            |_, names| {
                CreateTopicsRequest::default()
                    .with_topics(
                        names
                            .iter()
                            .filter_map(|n| by_name.get(n.as_str()))
                            .map(|t| creatable_topic(t))
                            .collect(),
                    )
                    .with_timeout_ms(timeout_ms)
                    .with_validate_only(validate_only)
            },
            |_, response| {
                response
                    .topics
                    .into_iter()
                    .map(|t| (t.name.0.to_string(), created_topic(t)))
                    .collect()
            },
        )
        .await
    }

    /// Deletes `topics`; UNKNOWN_TOPIC_OR_PARTITION for one that does not
    /// exist.
    pub async fn delete_topics(&self, topics: &[&str]) -> BTreeMap<String, Result<()>> {
        let deadline = self.deadline();
        let timeout_ms = self.timeout_ms();
        self.each(
            deadline,
            topics.iter().map(|&t| t.to_owned()),
            DELETE_TOPICS_VERSION,
            |_| Dest::Controller,
            |version, names| {
                let request = DeleteTopicsRequest::default().with_timeout_ms(timeout_ms);
                if version >= 6 {
                    request.with_topics(
                        names
                            .iter()
                            .map(|n| DeleteTopicState::default().with_name(Some(topic_name(n))))
                            .collect(),
                    )
                } else {
                    request.with_topic_names(names.iter().map(|n| topic_name(n)).collect())
                }
            },
            |_, response| {
                response
                    .responses
                    .into_iter()
                    .filter_map(|t| {
                        let name = t.name?.0.to_string();
                        Some((name, Error::check(t.error_code, t.error_message.as_deref())))
                    })
                    .collect()
            },
        )
        .await
    }

    /// The topics of the cluster, by name; Kafka's internal topics only with
    /// `include_internal`.
    pub async fn list_topics(&self, include_internal: bool) -> Result<Vec<TopicListing>> {
        let deadline = self.deadline();
        let topics = self
            .retrying(deadline, "listing topics", || {
                self.cluster.fetch_metadata(None, false)
            })
            .await?;
        let mut listings: Vec<TopicListing> = topics
            .iter()
            .filter(|t| include_internal || !t.internal)
            .map(|t| TopicListing {
                name: t.name.clone(),
                topic_id: t.id,
                internal: t.internal,
            })
            .collect();
        listings.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(listings)
    }

    /// Describes `topics` from fresh metadata: id, partitions with leader,
    /// replicas and in-sync replicas. UNKNOWN_TOPIC_OR_PARTITION for one that
    /// does not exist; a topic whose leaders are still being elected is
    /// waited for.
    pub async fn describe_topics(&self, topics: &[&str]) -> BTreeMap<String, Result<TopicInfo>> {
        let deadline = self.deadline();
        let mut round = Round::new(topics.iter().map(|&t| t.to_owned()));
        while !round.pending.is_empty() {
            let names: Vec<String> = round.pending.iter().cloned().collect();
            match within(deadline, self.cluster.fetch_metadata(Some(&names), false)).await {
                Ok(_) => {
                    for name in names {
                        let result = match self.cluster.cached_topic(&name) {
                            Some(Ok(info)) => Ok(TopicInfo::clone(&info)),
                            Some(Err(e)) => Err(e),
                            None => Err(unknown_topic(&name)),
                        };
                        round.settle(&self.cluster, name, result);
                    }
                }
                Err(e) => round.request_failed(e, names),
            }
            if !self
                .backoff(&mut round, deadline, "describing topics")
                .await
            {
                break;
            }
        }
        round.done
    }

    /// Raises the partition count of each topic to the count given (Kafka
    /// only adds partitions). INVALID_PARTITIONS for a count not above the
    /// current one; with `validate_only`, only checks.
    pub async fn create_partitions(
        &self,
        counts: &BTreeMap<String, i32>,
        validate_only: bool,
    ) -> BTreeMap<String, Result<()>> {
        let deadline = self.deadline();
        let timeout_ms = self.timeout_ms();
        self.each(
            deadline,
            counts.keys().cloned(),
            CREATE_PARTITIONS_VERSION,
            |_| Dest::Controller,
            |_, names| {
                CreatePartitionsRequest::default()
                    .with_topics(
                        names
                            .iter()
                            .map(|n| {
                                CreatePartitionsTopic::default()
                                    .with_name(topic_name(n))
                                    .with_count(counts.get(n).copied().unwrap_or(0))
                                    .with_assignments(None)
                            })
                            .collect(),
                    )
                    .with_timeout_ms(timeout_ms)
                    .with_validate_only(validate_only)
            },
            |_, response| {
                response
                    .results
                    .into_iter()
                    .map(|t| {
                        let result = Error::check(t.error_code, t.error_message.as_deref());
                        (t.name.0.to_string(), result)
                    })
                    .collect()
            },
        )
        .await
    }

    // ---- configs ----

    /// The configs of each resource (every config; with `include_synonyms`,
    /// each one's synonyms too). A broker's configs are asked of that broker.
    pub async fn describe_configs(
        &self,
        resources: &[ConfigResource],
        include_synonyms: bool,
    ) -> BTreeMap<ConfigResource, Result<Vec<ConfigEntry>>> {
        let deadline = self.deadline();
        self.each(
            deadline,
            resources.iter().cloned(),
            DESCRIBE_CONFIGS_VERSION,
            config_dest,
            |_, keys| {
                DescribeConfigsRequest::default()
                    .with_resources(
                        keys.iter()
                            .map(|r| {
                                DescribeConfigsResource::default()
                                    .with_resource_type(r.resource_type.code())
                                    .with_resource_name(str_bytes(&r.name))
                                    // Null asks for every config; an empty
                                    // list would ask for none.
                                    .with_configuration_keys(None)
                            })
                            .collect(),
                    )
                    .with_include_synonyms(include_synonyms)
            },
            |Sent { keys, .. }, response| {
                response
                    .results
                    .into_iter()
                    .filter_map(|r| {
                        let key = config_key(keys, r.resource_type, &r.resource_name)?;
                        let result = Error::check(r.error_code, r.error_message.as_deref())
                            .map(|()| r.configs.into_iter().map(described_config).collect());
                        Some((key, result))
                    })
                    .collect()
            },
        )
        .await
    }

    /// Applies `changes` to each resource's configs with
    /// IncrementalAlterConfigs (KIP-339); the changes of one resource apply
    /// all or none. INVALID_CONFIG for an unknown config or bad value; with
    /// `validate_only`, only checks.
    pub async fn incremental_alter_configs(
        &self,
        changes: &BTreeMap<ConfigResource, Vec<AlterConfigOp>>,
        validate_only: bool,
    ) -> BTreeMap<ConfigResource, Result<()>> {
        let deadline = self.deadline();
        self.each(
            deadline,
            changes.keys().cloned(),
            INCREMENTAL_ALTER_CONFIGS_VERSION,
            config_dest,
            |_, keys| {
                IncrementalAlterConfigsRequest::default()
                    .with_resources(
                        keys.iter()
                            .map(|r| {
                                let ops = changes.get(r).map(Vec::as_slice).unwrap_or_default();
                                AlterConfigsResource::default()
                                    .with_resource_type(r.resource_type.code())
                                    .with_resource_name(str_bytes(&r.name))
                                    .with_configs(
                                        ops.iter()
                                            .map(|op| {
                                                AlterableConfig::default()
                                                    .with_name(str_bytes(&op.name))
                                                    .with_config_operation(op.op.code())
                                                    .with_value(op.value.as_deref().map(str_bytes))
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    )
                    .with_validate_only(validate_only)
            },
            |Sent { keys, .. }, response| {
                response
                    .responses
                    .into_iter()
                    .filter_map(|r| {
                        let key = config_key(keys, r.resource_type, &r.resource_name)?;
                        Some((key, Error::check(r.error_code, r.error_message.as_deref())))
                    })
                    .collect()
            },
        )
        .await
    }

    // ---- groups ----

    /// Every group of every broker, by id (ListGroups to each broker).
    /// Fails if a broker could not be asked within the timeout.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>> {
        self.list_groups_matching(&[], &[]).await
    }

    /// The groups in one of `states` ("Stable", "Empty", ...) and of one of
    /// `types` ("classic", "consumer"), either filter off when empty, as the
    /// brokers filter them (case-insensitively). [`Error::Unsupported`]
    /// from a broker too old to filter (ListGroups v4 for states, v5 for
    /// types).
    pub async fn list_groups_matching(
        &self,
        states: &[&str],
        types: &[&str],
    ) -> Result<Vec<GroupListing>> {
        let deadline = self.deadline();
        self.retrying(deadline, "listing groups", || self.cluster.maybe_refresh())
            .await?;
        let brokers: Vec<i32> = self.cluster.brokers().iter().map(|b| b.id).collect();
        let answers = self
            .each(
                deadline,
                brokers,
                LIST_GROUPS_VERSION,
                |&id| Dest::Node(id),
                |version, _| {
                    let request = ListGroupsRequest::default();
                    // The filters only where the version has them; the
                    // answer is refused below otherwise.
                    let request = if version >= 4 {
                        request.with_states_filter(states.iter().map(|s| str_bytes(s)).collect())
                    } else {
                        request
                    };
                    if version >= 5 {
                        request.with_types_filter(types.iter().map(|t| str_bytes(t)).collect())
                    } else {
                        request
                    }
                },
                |Sent { version, keys, .. }, response| {
                    let listings = if (version < 4 && !states.is_empty())
                        || (version < 5 && !types.is_empty())
                    {
                        Err(Error::Unsupported(format!(
                            "ListGroups filters (the broker has v{version})"
                        )))
                    } else {
                        Error::check(response.error_code, None).map(|()| {
                            response
                                .groups
                                .into_iter()
                                .map(|g| GroupListing {
                                    group_id: g.group_id.0.to_string(),
                                    protocol_type: g.protocol_type.to_string(),
                                    state: (version >= 4).then(|| g.group_state.to_string()),
                                    group_type: (version >= 5).then(|| g.group_type.to_string()),
                                })
                                .collect::<Vec<_>>()
                        })
                    };
                    keys.iter().map(|&k| (k, listings.clone())).collect()
                },
            )
            .await;
        let mut groups = Vec::new();
        for (_, listings) in answers {
            groups.extend(listings?);
        }
        groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        groups.dedup_by(|a, b| a.group_id == b.group_id);
        Ok(groups)
    }

    /// Describes `groups`: state, protocol, members with their assignments.
    /// Classic groups through DescribeGroups, KIP-848 consumer groups through
    /// ConsumerGroupDescribe. GROUP_ID_NOT_FOUND for a group that does not
    /// exist.
    pub async fn describe_groups(
        &self,
        groups: &[&str],
    ) -> BTreeMap<String, Result<GroupDescription>> {
        let deadline = self.deadline();
        let mut described = self
            .each(
                deadline,
                groups.iter().map(|&g| g.to_owned()),
                DESCRIBE_GROUPS_VERSION,
                |g| Dest::Coordinator(g.clone()),
                |_, keys| {
                    DescribeGroupsRequest::default()
                        .with_groups(keys.iter().map(|g| GroupId(str_bytes(g))).collect())
                },
                |sent, response| {
                    response
                        .groups
                        .into_iter()
                        .map(|g| (g.group_id.0.to_string(), classic_group(g, sent.node)))
                        .collect()
                },
            )
            .await;
        // A group DescribeGroups does not know may be a KIP-848 consumer
        // group, which only ConsumerGroupDescribe describes (the Java
        // client asks in the other order; both ends meet).
        let not_classic: Vec<String> = described
            .iter()
            .filter(|(_, r)| matches!(r, Err(e) if e.code() == Some(ErrorCode::GroupIdNotFound)))
            .map(|(g, _)| g.clone())
            .collect();
        if !not_classic.is_empty() {
            let consumer = self
                .each(
                    deadline,
                    not_classic,
                    CONSUMER_GROUP_DESCRIBE_VERSION,
                    |g| Dest::Coordinator(g.clone()),
                    |_, keys| {
                        ConsumerGroupDescribeRequest::default()
                            .with_group_ids(keys.iter().map(|g| GroupId(str_bytes(g))).collect())
                    },
                    |sent, response| {
                        response
                            .groups
                            .into_iter()
                            .map(|g| (g.group_id.0.to_string(), consumer_group(g, sent.node)))
                            .collect()
                    },
                )
                .await;
            for (group, result) in consumer {
                // Unsupported or not found again: the first answer stands.
                if result.is_ok() {
                    described.insert(group, result);
                }
            }
        }
        described
    }

    /// Deletes `groups` with their committed offsets. NON_EMPTY_GROUP while a
    /// group has members, GROUP_ID_NOT_FOUND for one that does not exist.
    pub async fn delete_groups(&self, groups: &[&str]) -> BTreeMap<String, Result<()>> {
        let deadline = self.deadline();
        self.each(
            deadline,
            groups.iter().map(|&g| g.to_owned()),
            DELETE_GROUPS_VERSION,
            |g| Dest::Coordinator(g.clone()),
            |_, keys| {
                DeleteGroupsRequest::default()
                    .with_groups_names(keys.iter().map(|g| GroupId(str_bytes(g))).collect())
            },
            |_, response| {
                response
                    .results
                    .into_iter()
                    .map(|r| (r.group_id.0.to_string(), Error::check(r.error_code, None)))
                    .collect()
            },
        )
        .await
    }

    /// The offsets `group` committed, for `partitions` (`None`: every
    /// partition it committed for). `None` for a partition without a commit.
    pub async fn list_group_offsets(
        &self,
        group: &str,
        partitions: Option<&[TopicPartition]>,
    ) -> Result<BTreeMap<TopicPartition, Option<CommittedOffset>>> {
        let deadline = self.deadline();
        let topics: Option<BTreeMap<&str, Vec<i32>>> =
            partitions.map(|ps| by_topic(ps, |p| p.partition));
        let mut answers = self
            .each(
                deadline,
                [group.to_owned()],
                OFFSET_FETCH_VERSION,
                |g| Dest::Coordinator(g.clone()),
                |version, keys| offset_fetch_request(version, keys, topics.as_ref()),
                |Sent { version, keys, .. }, response| offset_fetch_answer(version, keys, response),
            )
            .await;
        answers
            .remove(group)
            .unwrap_or_else(|| Err(no_answer(group)))
    }

    /// Commits `offsets` for `group`, as Kafka's admin client does: outside
    /// any generation (generation -1, no member id), so only while the
    /// group has no members (UNKNOWN_MEMBER_ID otherwise, per partition).
    pub async fn alter_group_offsets(
        &self,
        group: &str,
        offsets: &BTreeMap<TopicPartition, CommittedOffset>,
    ) -> Result<BTreeMap<TopicPartition, Result<()>>> {
        let deadline = self.deadline();
        let keys: Vec<TopicPartition> = offsets.keys().cloned().collect();
        let topics = by_topic(&keys, |tp| tp);
        let mut answers = self
            .each(
                deadline,
                [group.to_owned()],
                OFFSET_COMMIT_VERSION,
                |g| Dest::Coordinator(g.clone()),
                |_, groups| {
                    OffsetCommitRequest::default()
                        .with_group_id(GroupId(str_bytes(
                            groups.first().map_or("", String::as_str),
                        )))
                        .with_generation_id_or_member_epoch(-1)
                        .with_member_id(StrBytes::default())
                        .with_topics(
                            topics
                                .iter()
                                .map(|(topic, partitions)| {
                                    OffsetCommitRequestTopic::default()
                                        .with_name(topic_name(topic))
                                        .with_partitions(
                                            partitions
                                                .iter()
                                                .filter_map(|&tp| Some((tp, offsets.get(tp)?)))
                                                .map(|(tp, o)| {
                                                    OffsetCommitRequestPartition::default()
                                                        .with_partition_index(tp.partition)
                                                        .with_committed_offset(o.offset)
                                                        .with_committed_leader_epoch(
                                                            o.leader_epoch.unwrap_or(-1),
                                                        )
                                                        .with_committed_metadata(Some(str_bytes(
                                                            &o.metadata,
                                                        )))
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        )
                },
                |Sent { keys: groups, .. }, response| {
                    let partitions = response.topics.into_iter().flat_map(|t| {
                        let topic = t.name.0.to_string();
                        t.partitions.into_iter().map(move |p| {
                            (TopicPartition::new(&topic, p.partition_index), p.error_code)
                        })
                    });
                    let result = partition_results(partitions);
                    groups
                        .first()
                        .map(|g| (g.clone(), result))
                        .into_iter()
                        .collect()
                },
            )
            .await;
        answers
            .remove(group)
            .unwrap_or_else(|| Err(no_answer(group)))
    }

    /// Deletes the offsets `group` committed for `partitions` (OffsetDelete,
    /// KIP-496). GROUP_SUBSCRIBED_TO_TOPIC for a partition of a topic the
    /// group's members consume; GROUP_ID_NOT_FOUND for the group.
    pub async fn delete_group_offsets(
        &self,
        group: &str,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, Result<()>>> {
        let deadline = self.deadline();
        let topics = by_topic(partitions, |tp| tp.partition);
        let mut answers = self
            .each(
                deadline,
                [group.to_owned()],
                OFFSET_DELETE_VERSION,
                |g| Dest::Coordinator(g.clone()),
                |_, groups| {
                    OffsetDeleteRequest::default()
                        .with_group_id(GroupId(str_bytes(
                            groups.first().map_or("", String::as_str),
                        )))
                        .with_topics(
                            topics
                                .iter()
                                .map(|(topic, partitions)| {
                                    OffsetDeleteRequestTopic::default()
                                        .with_name(topic_name(topic))
                                        .with_partitions(
                                            partitions
                                                .iter()
                                                .map(|&p| {
                                                    OffsetDeleteRequestPartition::default()
                                                        .with_partition_index(p)
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        )
                },
                |Sent { keys: groups, .. }, response| {
                    let result = Error::check(response.error_code, None).and_then(|()| {
                        partition_results(response.topics.into_iter().flat_map(|t| {
                            let topic = t.name.0.to_string();
                            t.partitions.into_iter().map(move |p| {
                                (TopicPartition::new(&topic, p.partition_index), p.error_code)
                            })
                        }))
                    });
                    groups
                        .first()
                        .map(|g| (g.clone(), result))
                        .into_iter()
                        .collect()
                },
            )
            .await;
        answers
            .remove(group)
            .unwrap_or_else(|| Err(no_answer(group)))
    }

    // ---- cluster, records, offsets ----

    /// The cluster id, the controller and the brokers: DescribeCluster where
    /// the broker supports it, Metadata otherwise.
    pub async fn describe_cluster(&self) -> Result<ClusterDescription> {
        let deadline = self.deadline();
        let mut answers = self
            .each(
                deadline,
                [()],
                DESCRIBE_CLUSTER_VERSION,
                |()| Dest::Any,
                |_, _| DescribeClusterRequest::default().with_endpoint_type(ENDPOINT_BROKERS),
                |_, response| {
                    let result =
                        Error::check(response.error_code, response.error_message.as_deref()).map(
                            |()| {
                                let mut brokers: Vec<BrokerInfo> = response
                                    .brokers
                                    .into_iter()
                                    .map(|b| BrokerInfo {
                                        id: b.broker_id.0,
                                        host: b.host.to_string(),
                                        port: b.port,
                                        rack: b.rack.map(|r| r.to_string()),
                                    })
                                    .collect();
                                brokers.sort_by_key(|b| b.id);
                                let BrokerId(controller) = response.controller_id;
                                ClusterDescription {
                                    cluster_id: Some(response.cluster_id.to_string()),
                                    controller: (controller >= 0).then_some(controller),
                                    brokers,
                                }
                            },
                        );
                    vec![((), result)]
                },
            )
            .await;
        match answers.remove(&()) {
            Some(Err(Error::Unsupported(_))) => {
                self.retrying(deadline, "describing the cluster", || {
                    self.cluster.fetch_metadata(Some(&[]), false)
                })
                .await?;
                let (cluster_id, controller) = self.cluster.cluster_id_and_controller();
                Ok(ClusterDescription {
                    cluster_id,
                    controller: (controller >= 0).then_some(controller),
                    brokers: self.cluster.brokers(),
                })
            }
            Some(result) => result,
            None => Err(no_answer("DescribeCluster")),
        }
    }

    /// Deletes the records of each partition below the offset given (-1: the
    /// high watermark), on the partition's leader; each partition's new low
    /// watermark. OFFSET_OUT_OF_RANGE for an offset above the high watermark.
    pub async fn delete_records(
        &self,
        before: &BTreeMap<TopicPartition, i64>,
    ) -> BTreeMap<TopicPartition, Result<i64>> {
        let deadline = self.deadline();
        let timeout_ms = self.timeout_ms();
        self.each(
            deadline,
            before.keys().cloned(),
            DELETE_RECORDS_VERSION,
            |tp| Dest::Leader(tp.clone()),
            |_, keys| {
                DeleteRecordsRequest::default()
                    .with_topics(
                        by_topic(keys, |tp| tp)
                            .into_iter()
                            .map(|(topic, partitions)| {
                                DeleteRecordsTopic::default()
                                    .with_name(topic_name(topic))
                                    .with_partitions(
                                        partitions
                                            .into_iter()
                                            .map(|tp| {
                                                DeleteRecordsPartition::default()
                                                    .with_partition_index(tp.partition)
                                                    .with_offset(
                                                        before.get(tp).copied().unwrap_or(-1),
                                                    )
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    )
                    .with_timeout_ms(timeout_ms)
            },
            |_, response| {
                response
                    .topics
                    .into_iter()
                    .flat_map(|t| {
                        let topic = t.name.0.to_string();
                        t.partitions.into_iter().map(move |p| {
                            let tp = TopicPartition::new(&topic, p.partition_index);
                            (
                                tp,
                                Error::check(p.error_code, None).map(|()| p.low_watermark),
                            )
                        })
                    })
                    .collect()
            },
        )
        .await
    }

    /// Looks up an offset of each partition on its leader: the earliest, the
    /// latest, the one with the largest timestamp, or the first at a
    /// timestamp; counting committed records only with
    /// [`IsolationLevel::ReadCommitted`].
    pub async fn list_offsets(
        &self,
        specs: &BTreeMap<TopicPartition, OffsetSpec>,
        isolation: IsolationLevel,
    ) -> BTreeMap<TopicPartition, Result<ListedOffset>> {
        let deadline = self.deadline();
        let timeout_ms = self.timeout_ms();
        self.each(
            deadline,
            specs.keys().cloned(),
            LIST_OFFSETS_VERSION,
            |tp| Dest::Leader(tp.clone()),
            |version, keys| {
                let request = ListOffsetsRequest::default()
                    // A consumer, not a follower.
                    .with_replica_id(BrokerId(-1))
                    .with_topics(
                        by_topic(keys, |tp| tp)
                            .into_iter()
                            .map(|(topic, partitions)| {
                                ListOffsetsTopic::default()
                                    .with_name(topic_name(topic))
                                    .with_partitions(
                                        partitions
                                            .into_iter()
                                            .map(|tp| {
                                                let spec = specs
                                                    .get(tp)
                                                    .copied()
                                                    .unwrap_or(OffsetSpec::Latest);
                                                ListOffsetsPartition::default()
                                                    .with_partition_index(tp.partition)
                                                    .with_timestamp(spec.timestamp())
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    )
                    .with_timeout_ms(timeout_ms);
                // v1 knows only uncommitted reads.
                match isolation {
                    IsolationLevel::ReadCommitted if version >= 2 => {
                        request.with_isolation_level(1)
                    }
                    _ => request,
                }
            },
            |Sent { version, .. }, response| {
                response
                    .topics
                    .into_iter()
                    .flat_map(|t| {
                        let topic = t.name.0.to_string();
                        t.partitions.into_iter().map(move |p| {
                            let tp = TopicPartition::new(&topic, p.partition_index);
                            (tp, p.error_code, p.offset, p.timestamp, p.leader_epoch)
                        })
                    })
                    .map(|(tp, code, offset, timestamp, leader_epoch)| {
                        let spec = specs.get(&tp).copied();
                        let result = if spec == Some(OffsetSpec::MaxTimestamp)
                            && version < MAX_TIMESTAMP_MIN_VERSION
                        {
                            Err(Error::Unsupported(format!(
                                "ListOffsets for the max timestamp (v{MAX_TIMESTAMP_MIN_VERSION}+)"
                            )))
                        } else {
                            Error::check(code, None).map(|()| ListedOffset {
                                offset,
                                timestamp,
                                leader_epoch: epoch(leader_epoch),
                            })
                        };
                        (tp, result)
                    })
                    .collect()
            },
        )
        .await
    }

    // ---- the retry engine ----

    /// Runs `attempt` until it succeeds, fails for good, or `deadline`
    /// passes.
    async fn retrying<T, F, Fut>(&self, deadline: Instant, what: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        loop {
            match within(deadline, attempt()).await {
                Err(e) if e.is_retriable() => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(timed_out(what, self.api_timeout, Some(&e)));
                    }
                    tokio::time::sleep(self.cluster.net().retry_backoff.min(deadline - now)).await;
                }
                other => return other,
            }
        }
    }

    /// Waits `retry.backoff.ms` before another round, or times out what is
    /// still pending; `false` when no round is to follow.
    async fn backoff<K: Ord + Clone + Debug, T>(
        &self,
        round: &mut Round<K, T>,
        deadline: Instant,
        what: &str,
    ) -> bool {
        if round.pending.is_empty() {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            round.time_out(what, self.api_timeout);
            return false;
        }
        tokio::time::sleep(self.cluster.net().retry_backoff.min(deadline - now)).await;
        true
    }

    /// Asks about each of `keys` with requests made by `build` (one per
    /// destination broker, all at once), settles each key's answer from
    /// `parse`, and asks again about those with retriable errors until the
    /// API timeout. `build` gets the request version and the keys of that
    /// request, `parse` those and the broker that answered.
    async fn each<K, T, R>(
        &self,
        deadline: Instant,
        keys: impl IntoIterator<Item = K>,
        max: i16,
        dest: impl Fn(&K) -> Dest,
        build: impl Fn(i16, &[K]) -> R,
        parse: impl Fn(Sent<'_, K>, R::Response) -> Vec<(K, Result<T>)>,
    ) -> BTreeMap<K, Result<T>>
    where
        K: Ord + Clone + Debug,
        R: Request,
    {
        let mut round = Round::new(keys);
        let what = api_name::<R>();
        while !round.pending.is_empty() {
            let batches = match self.routes(&round.pending, &dest, deadline).await {
                Ok((batches, failed)) => {
                    for (key, error) in failed {
                        round.settle(&self.cluster, key, Err(error));
                    }
                    batches
                }
                Err(e) => {
                    let keys: Vec<K> = round.pending.iter().cloned().collect();
                    round.request_failed(e, keys);
                    HashMap::new()
                }
            };
            let build = &build;
            let answers =
                futures::future::join_all(batches.into_iter().map(|(route, keys)| async move {
                    let answer = self
                        .cluster
                        .send_built(route, max, deadline, |version| build(version, &keys))
                        .await;
                    (route, keys, answer)
                }))
                .await;
            for (route, keys, answer) in answers {
                match answer {
                    Ok((version, response)) => {
                        let mut unanswered: BTreeSet<K> = keys.iter().cloned().collect();
                        let sent = Sent {
                            version,
                            keys: &keys,
                            node: match route {
                                Route::Node(id) | Route::Coordinator(id) => id,
                                Route::Bootstrap(_) => -1,
                            },
                        };
                        for (key, result) in parse(sent, response) {
                            // Answers for something not asked are ignored.
                            if !unanswered.remove(&key) {
                                continue;
                            }
                            if matches!(dest(&key), Dest::Leader(_)) {
                                round.settle_from_leader(&self.cluster, key, result);
                            } else {
                                round.settle(&self.cluster, key, result);
                            }
                        }
                        for key in unanswered {
                            let error = no_answer(&format!("{key:?}"));
                            round.settle(&self.cluster, key, Err(error));
                        }
                    }
                    Err(e) => round.request_failed(e, keys),
                }
            }
            if !self.backoff(&mut round, deadline, &what).await {
                break;
            }
        }
        round.done
    }

    /// Where each pending key's request goes this round, refreshing the
    /// metadata (every round for leaders, when stale otherwise) and looking
    /// up coordinators; keys that cannot be routed come back with their
    /// error. Fails when the metadata cannot be had.
    #[allow(clippy::type_complexity, reason = "a private helper's two lists")]
    async fn routes<K: Ord + Clone + Debug>(
        &self,
        keys: &BTreeSet<K>,
        dest: &impl Fn(&K) -> Dest,
        deadline: Instant,
    ) -> Result<(HashMap<Route, Vec<K>>, Vec<(K, Error)>)> {
        let dests: Vec<(K, Dest)> = keys.iter().map(|k| (k.clone(), dest(k))).collect();
        let leader_topics: BTreeSet<String> = dests
            .iter()
            .filter_map(|(_, d)| match d {
                Dest::Leader(tp) => Some(tp.topic.clone()),
                _ => None,
            })
            .collect();
        if !leader_topics.is_empty() {
            let topics: Vec<String> = leader_topics.into_iter().collect();
            within(deadline, self.cluster.fetch_metadata(Some(&topics), false)).await?;
        }
        if dests.iter().any(|(_, d)| !matches!(d, Dest::Leader(_))) {
            within(deadline, self.cluster.maybe_refresh()).await?;
        }
        let groups: BTreeSet<String> = dests
            .iter()
            .filter_map(|(_, d)| match d {
                Dest::Coordinator(group) => Some(group.clone()),
                _ => None,
            })
            .collect();
        let coordinators = if groups.is_empty() {
            Ok(BTreeMap::new())
        } else {
            self.find_coordinators(&groups, deadline).await
        };
        let mut batches: HashMap<Route, Vec<K>> = HashMap::new();
        let mut failed = Vec::new();
        for (key, dest) in dests {
            let route = match dest {
                Dest::Any => Ok(self.any_route()),
                Dest::Controller => {
                    let (_, controller) = self.cluster.cluster_id_and_controller();
                    Ok(if self.cluster.broker(controller).is_some() {
                        Route::Node(controller)
                    } else {
                        self.any_route()
                    })
                }
                Dest::Node(id) => Ok(Route::Node(id)),
                Dest::Coordinator(group) => match &coordinators {
                    Ok(found) => found
                        .get(&group)
                        .cloned()
                        .unwrap_or_else(|| Err(no_answer(&format!("group {group}"))))
                        .map(Route::Coordinator),
                    Err(e) => Err(e.clone()),
                },
                Dest::Leader(tp) => self.leader_route(&tp),
            };
            match route {
                Ok(route) => batches.entry(route).or_default().push(key),
                Err(error) => failed.push((key, error)),
            }
        }
        Ok((batches, failed))
    }

    /// The coordinator of each of `groups`, each a broker the metadata
    /// knows: one FindCoordinator for all (v4+), one per group before.
    ///
    /// Not [`Cluster::find_coordinator`], which asks for one key: a call on
    /// many groups looks them all up in one request, and within the call's
    /// deadline.
    async fn find_coordinators(
        &self,
        groups: &BTreeSet<String>,
        deadline: Instant,
    ) -> Result<BTreeMap<String, Result<i32>>> {
        let groups: Vec<&String> = groups.iter().collect();
        let mut found = BTreeMap::new();
        let mut rest = groups.as_slice();
        while let Some(&first) = rest.first() {
            let (version, response) = self
                .cluster
                .send_built(
                    self.any_route(),
                    FIND_COORDINATOR_VERSION,
                    deadline,
                    |version| {
                        let request = FindCoordinatorRequest::default().with_key_type(GROUP_KEY);
                        if version >= 4 {
                            request
                                .with_coordinator_keys(rest.iter().map(|g| str_bytes(g)).collect())
                        } else {
                            request.with_key(str_bytes(first))
                        }
                    },
                )
                .await?;
            if version >= 4 {
                for c in response.coordinators {
                    let result = Error::check(c.error_code, c.error_message.as_deref())
                        .map(|()| c.node_id.0);
                    if rest.iter().any(|g| g.as_str() == c.key.as_str()) {
                        found.insert(c.key.to_string(), result);
                    }
                }
                rest = &[];
            } else {
                let result = Error::check(response.error_code, response.error_message.as_deref())
                    .map(|()| response.node_id.0);
                found.insert(first.clone(), result);
                rest = rest.get(1..).unwrap_or_default();
            }
        }
        // A coordinator newer than the metadata: learn its address.
        let unknown = |found: &BTreeMap<String, Result<i32>>| {
            found
                .values()
                .any(|r| matches!(r, Ok(id) if self.cluster.broker(*id).is_none()))
        };
        if unknown(&found) {
            within(deadline, self.cluster.fetch_metadata(Some(&[]), false)).await?;
            for result in found.values_mut() {
                if let Ok(id) = *result
                    && self.cluster.broker(id).is_none()
                {
                    *result = Err(Error::kafka(
                        ErrorCode::CoordinatorNotAvailable.code(),
                        Some(&format!("coordinator {id} is not in the metadata")),
                    ));
                }
            }
        }
        Ok(found)
    }

    /// A broker for requests any broker answers: the first the metadata
    /// knows, else the first bootstrap address.
    fn any_route(&self) -> Route {
        self.cluster
            .brokers()
            .first()
            .map_or(Route::Bootstrap(0), |b| Route::Node(b.id))
    }

    /// The leader of `tp` from the cached metadata.
    fn leader_route(&self, tp: &TopicPartition) -> Result<Route> {
        let info = match self.cluster.cached_topic(&tp.topic) {
            Some(result) => result?,
            None => return Err(unknown_topic(&tp.topic)),
        };
        let partition = info.partition(tp.partition).ok_or_else(|| {
            Error::kafka(
                ErrorCode::UnknownTopicOrPartition.code(),
                Some(&format!("{} has no partition {}", tp.topic, tp.partition)),
            )
        })?;
        if partition.leader < 0 || self.cluster.broker(partition.leader).is_none() {
            return Err(Error::kafka(
                ErrorCode::LeaderNotAvailable.code(),
                Some(&format!("{}-{} has no leader", tp.topic, tp.partition)),
            ));
        }
        Ok(Route::Node(partition.leader))
    }
}

/// What a request carried, for the parser of its answer.
#[derive(Debug, Clone, Copy)]
struct Sent<'a, K> {
    version: i16,
    keys: &'a [K],
    /// The broker that answered (-1 for a bootstrap address).
    node: i32,
}

/// The keys of one admin call still to be answered, those answered, and the
/// last retriable error seen (for the timeout's message).
#[derive(Debug)]
struct Round<K, T> {
    pending: BTreeSet<K>,
    done: BTreeMap<K, Result<T>>,
    last: Option<Error>,
}

impl<K: Ord + Clone + Debug, T> Round<K, T> {
    fn new(keys: impl IntoIterator<Item = K>) -> Self {
        Self {
            pending: keys.into_iter().collect(),
            done: BTreeMap::new(),
            last: None,
        }
    }

    fn finish(&mut self, key: K, result: Result<T>) {
        self.pending.remove(&key);
        self.done.insert(key, result);
    }

    /// Records `key`'s answer, or keeps it pending when the error is worth
    /// another attempt (marking the metadata stale if the error says it is).
    fn settle(&mut self, cluster: &Cluster, key: K, result: Result<T>) {
        self.settle_as(cluster, key, result, worth_retrying);
    }

    /// [`Round::settle`] for an answer from a partition's leader: there an
    /// unknown topic or partition is retried too, as the Java client does,
    /// since the leader may not have caught up with the metadata that sent
    /// the request to it; the next round's metadata says whether the topic
    /// exists.
    fn settle_from_leader(&mut self, cluster: &Cluster, key: K, result: Result<T>) {
        self.settle_as(cluster, key, result, Error::is_retriable);
    }

    fn settle_as(
        &mut self,
        cluster: &Cluster,
        key: K,
        result: Result<T>,
        retry: impl Fn(&Error) -> bool,
    ) {
        match result {
            Err(e) if retry(&e) => {
                if e.needs_metadata_refresh() || e.code() == Some(ErrorCode::NotController) {
                    cluster.mark_stale();
                }
                self.last = Some(e);
            }
            other => self.finish(key, other),
        }
    }

    /// A whole request for `keys` failed: retried if the error is
    /// retriable, each key's answer otherwise.
    fn request_failed(&mut self, error: Error, keys: Vec<K>) {
        if error.is_retriable() {
            // A request cut short at the deadline says less than the
            // broker's last answer.
            if !(matches!(error, Error::Timeout(_)) && self.last.is_some()) {
                self.last = Some(error);
            }
        } else {
            for key in keys {
                self.finish(key, Err(error.clone()));
            }
        }
    }

    fn time_out(&mut self, what: &str, after: Duration) {
        let error = timed_out(what, after, self.last.as_ref());
        for key in std::mem::take(&mut self.pending) {
            self.done.insert(key, Err(error.clone()));
        }
    }
}

impl Cluster {
    /// Sends the request `build` makes for the newest version both sides
    /// support up to `max` (requests whose fields differ by version are built
    /// for the version they go out in) on `route`; the version and answer.
    ///
    /// The answer is awaited until `deadline` at most (and
    /// `request.timeout.ms`): an admin call ends at its API timeout even when
    /// that is shorter. Only the wait is cut short, never the write, so the
    /// connection stays usable; a late answer is dropped by its reader.
    async fn send_built<R: Request>(
        &self,
        route: Route,
        max: i16,
        deadline: Instant,
        build: impl FnOnce(i16) -> R,
    ) -> Result<(i16, R::Response)> {
        let conn = tokio::time::timeout_at(deadline.into(), self.connection(route))
            .await
            .map_err(|_| Error::Timeout(format!("connecting for {}", api_name::<R>())))??;
        let version = conn.version::<R>(max)?;
        // `start` at the version chosen, which it keeps (it is the cap).
        let in_flight = conn.start::<R>(version, &build(version)).await?;
        let response = tokio::time::timeout_at(deadline.into(), in_flight.response())
            .await
            .unwrap_or_else(|_| {
                Err(Error::Timeout(format!(
                    "{} to {} at the API timeout",
                    api_name::<R>(),
                    conn.addr()
                )))
            });
        if matches!(&response, Err(e) if e.needs_metadata_refresh()) {
            self.mark_stale();
        }
        response.map(|r| (version, r))
    }
}

/// `step` (metadata through [`Cluster`]) cut short at `deadline`, so that a
/// call ends at its API timeout even when `request.timeout.ms` is longer.
/// Metadata requests are small enough to be written whole at once, so the
/// cut falls while waiting for the answer, which the connection drops when
/// it comes.
async fn within<T>(deadline: Instant, step: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout_at(deadline.into(), step)
        .await
        .unwrap_or_else(|_| Err(Error::Timeout("metadata at the API timeout".to_owned())))
}

/// Whether an item's error is worth another attempt: Kafka's retriable
/// codes, except an unknown topic, which the admin client reports at once
/// (so does the Java client's).
fn worth_retrying(error: &Error) -> bool {
    error.is_retriable()
        && !matches!(
            error.code(),
            Some(ErrorCode::UnknownTopicOrPartition | ErrorCode::UnknownTopicId)
        )
}

/// Whether a partition's error code is really the group's: the coordinator
/// moved or is loading, so the whole request is retried.
fn is_coordinator_error(code: i16) -> bool {
    [
        ErrorCode::NotCoordinator,
        ErrorCode::CoordinatorNotAvailable,
        ErrorCode::CoordinatorLoadInProgress,
    ]
    .iter()
    .any(|c| c.code() == code)
}

fn timed_out(what: &str, after: Duration, last: Option<&Error>) -> Error {
    Error::Timeout(match last {
        Some(e) => format!("{what} after {after:?}; last error: {e}"),
        None => format!("{what} after {after:?}"),
    })
}

fn no_answer(what: &str) -> Error {
    Error::Protocol(format!("the broker's answer left out {what}"))
}

fn unknown_topic(topic: &str) -> Error {
    Error::kafka(
        ErrorCode::UnknownTopicOrPartition.code(),
        Some(&format!("unknown topic {topic}")),
    )
}

fn api_name<R: Request>() -> String {
    strom_protocol::messages::ApiKey::try_from(R::KEY)
        .map_or_else(|()| format!("API {}", R::KEY), |k| format!("{k:?}"))
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

fn topic_name(s: &str) -> TopicName {
    TopicName(str_bytes(s))
}

/// A leader epoch; -1 is none.
fn epoch(epoch: i32) -> Option<i32> {
    (epoch >= 0).then_some(epoch)
}

/// `items` grouped by topic, in topic then item order.
fn by_topic<'a, V>(
    items: &'a [TopicPartition],
    value: impl Fn(&'a TopicPartition) -> V,
) -> BTreeMap<&'a str, Vec<V>> {
    let mut topics: BTreeMap<&str, Vec<V>> = BTreeMap::new();
    for tp in items {
        topics.entry(tp.topic.as_str()).or_default().push(value(tp));
    }
    topics
}

fn creatable_topic(topic: &NewTopic) -> CreatableTopic {
    CreatableTopic::default()
        .with_name(topic_name(&topic.name))
        .with_num_partitions(topic.partitions)
        .with_replication_factor(topic.replication_factor)
        .with_configs(
            topic
                .configs
                .iter()
                .map(|(name, value)| {
                    CreatableTopicConfig::default()
                        .with_name(str_bytes(name))
                        .with_value(Some(str_bytes(value)))
                })
                .collect(),
        )
}

fn created_topic(t: CreatableTopicResult) -> Result<CreatedTopic> {
    Error::check(t.error_code, t.error_message.as_deref())?;
    // A config error only means the configs could not be described.
    let configs = if t.topic_config_error_code == 0 {
        t.configs
            .unwrap_or_default()
            .into_iter()
            .map(|c: CreatableTopicConfigs| ConfigEntry {
                name: c.name.to_string(),
                value: c.value.map(|v| v.to_string()),
                source: ConfigSource::from_code(c.config_source),
                is_default: ConfigSource::from_code(c.config_source) == ConfigSource::Default,
                read_only: c.read_only,
                sensitive: c.is_sensitive,
                synonyms: Vec::new(),
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(CreatedTopic {
        topic_id: t.topic_id,
        partitions: t.num_partitions,
        replication_factor: t.replication_factor,
        configs,
    })
}

/// Where a resource's configs are asked: a broker's of that broker, the
/// rest of any broker.
fn config_dest(resource: &ConfigResource) -> Dest {
    match resource.resource_type {
        ResourceType::Broker => resource.name.parse().map_or(Dest::Any, Dest::Node),
        ResourceType::Topic => Dest::Any,
    }
}

/// The resource asked about that an answer names.
fn config_key(keys: &[ConfigResource], resource_type: i8, name: &str) -> Option<ConfigResource> {
    keys.iter()
        .find(|k| k.resource_type.code() == resource_type && k.name == name)
        .cloned()
}

fn described_config(c: DescribeConfigsResourceResult) -> ConfigEntry {
    let source = ConfigSource::from_code(c.config_source);
    ConfigEntry {
        name: c.name.to_string(),
        value: c.value.map(|v| v.to_string()),
        source,
        is_default: source == ConfigSource::Default,
        read_only: c.read_only,
        sensitive: c.is_sensitive,
        synonyms: c
            .synonyms
            .into_iter()
            .map(|s| ConfigSynonym {
                name: s.name.to_string(),
                value: s.value.map(|v| v.to_string()),
                source: ConfigSource::from_code(s.source),
            })
            .collect(),
    }
}

/// OffsetFetch for `groups` (one before v8), for `topics` or all.
fn offset_fetch_request(
    version: i16,
    groups: &[String],
    topics: Option<&BTreeMap<&str, Vec<i32>>>,
) -> OffsetFetchRequest {
    if version >= 8 {
        OffsetFetchRequest::default().with_groups(
            groups
                .iter()
                .map(|g| {
                    OffsetFetchRequestGroup::default()
                        .with_group_id(GroupId(str_bytes(g)))
                        .with_topics(topics.map(|topics| {
                            topics
                                .iter()
                                .map(|(topic, partitions)| {
                                    OffsetFetchRequestTopics::default()
                                        .with_name(topic_name(topic))
                                        .with_partition_indexes(partitions.clone())
                                })
                                .collect()
                        }))
                })
                .collect(),
        )
    } else {
        OffsetFetchRequest::default()
            .with_group_id(GroupId(str_bytes(
                groups.first().map_or("", String::as_str),
            )))
            .with_topics(topics.map(|topics| {
                topics
                    .iter()
                    .map(|(topic, partitions)| {
                        OffsetFetchRequestTopic::default()
                            .with_name(topic_name(topic))
                            .with_partition_indexes(partitions.clone())
                    })
                    .collect()
            }))
    }
}

/// A group's committed offsets; `None` for a partition without a commit.
type GroupOffsets = BTreeMap<TopicPartition, Option<CommittedOffset>>;

/// Each group's committed offsets from an OffsetFetch answer: v8+ answers
/// per group, older versions for the one group asked.
fn offset_fetch_answer(
    version: i16,
    groups: &[String],
    response: OffsetFetchResponse,
) -> Vec<(String, Result<GroupOffsets>)> {
    let committed = |offset, leader_epoch, metadata: Option<StrBytes>| CommittedOffset {
        offset,
        leader_epoch: epoch(leader_epoch),
        metadata: metadata.map(|m| m.to_string()).unwrap_or_default(),
    };
    if version >= 8 {
        response
            .groups
            .into_iter()
            .map(|g| {
                let partitions = g.topics.into_iter().flat_map(|t| {
                    let topic = t.name.0.to_string();
                    t.partitions.into_iter().map(move |p| {
                        let tp = TopicPartition::new(&topic, p.partition_index);
                        let offset =
                            committed(p.committed_offset, p.committed_leader_epoch, p.metadata);
                        (tp, p.error_code, offset)
                    })
                });
                let result =
                    Error::check(g.error_code, None).and_then(|()| committed_offsets(partitions));
                (g.group_id.0.to_string(), result)
            })
            .collect()
    } else {
        let partitions = response.topics.into_iter().flat_map(|t| {
            let topic = t.name.0.to_string();
            t.partitions.into_iter().map(move |p| {
                let tp = TopicPartition::new(&topic, p.partition_index);
                let offset = committed(p.committed_offset, p.committed_leader_epoch, p.metadata);
                (tp, p.error_code, offset)
            })
        });
        let result =
            Error::check(response.error_code, None).and_then(|()| committed_offsets(partitions));
        groups
            .first()
            .map(|g| (g.clone(), result))
            .into_iter()
            .collect()
    }
}

/// A group's committed offsets from OffsetFetch's partitions: a partition
/// without a commit is `None`, an unknown one is left out (as the Java
/// client does), a coordinator error is the group's, and any other error
/// fails the group.
fn committed_offsets(
    partitions: impl Iterator<Item = (TopicPartition, i16, CommittedOffset)>,
) -> Result<BTreeMap<TopicPartition, Option<CommittedOffset>>> {
    let mut offsets = BTreeMap::new();
    for (tp, code, offset) in partitions {
        if code == ErrorCode::UnknownTopicOrPartition.code() {
            continue;
        }
        Error::check(code, None)?;
        offsets.insert(tp, (offset.offset >= 0).then_some(offset));
    }
    Ok(offsets)
}

/// Per-partition results of a group request; a coordinator error on any
/// partition is the group's (so that the request is retried).
fn partition_results(
    partitions: impl Iterator<Item = (TopicPartition, i16)>,
) -> Result<BTreeMap<TopicPartition, Result<()>>> {
    let mut results = BTreeMap::new();
    for (tp, code) in partitions {
        if is_coordinator_error(code) {
            return Err(Error::kafka(code, None));
        }
        results.insert(tp, Error::check(code, None));
    }
    Ok(results)
}

/// A classic group from DescribeGroups. A "Dead" group (how versions before
/// v6 say "no such group") is GROUP_ID_NOT_FOUND.
fn classic_group(g: DescribedGroup, coordinator: i32) -> Result<GroupDescription> {
    let group_id = g.group_id.0.to_string();
    Error::check(g.error_code, g.error_message.as_deref())?;
    if g.group_state.as_str() == "Dead" {
        return Err(Error::kafka(
            ErrorCode::GroupIdNotFound.code(),
            Some(&format!("group {group_id} does not exist")),
        ));
    }
    let consumer = g.protocol_type.as_str() == "consumer";
    let members = g
        .members
        .into_iter()
        .map(|m| {
            let assignment = if consumer {
                decode_assignment(&m.member_assignment)?
            } else {
                BTreeMap::new()
            };
            Ok(MemberDescription {
                member_id: m.member_id.to_string(),
                group_instance_id: m.group_instance_id.map(|i| i.to_string()),
                client_id: m.client_id.to_string(),
                client_host: m.client_host.to_string(),
                assignment,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(GroupDescription {
        group_id,
        group_type: "classic".to_owned(),
        state: g.group_state.to_string(),
        protocol_type: g.protocol_type.to_string(),
        protocol: g.protocol_data.to_string(),
        members,
        coordinator,
    })
}

/// A KIP-848 consumer group from ConsumerGroupDescribe.
fn consumer_group(
    g: consumer_group_describe_response::DescribedGroup,
    coordinator: i32,
) -> Result<GroupDescription> {
    Error::check(g.error_code, g.error_message.as_deref())?;
    let members = g
        .members
        .into_iter()
        .map(|m| {
            let mut assignment: BTreeMap<String, Vec<i32>> = BTreeMap::new();
            for t in m.assignment.topic_partitions {
                let partitions = assignment.entry(t.topic_name.0.to_string()).or_default();
                partitions.extend(t.partitions);
                partitions.sort_unstable();
            }
            MemberDescription {
                member_id: m.member_id.to_string(),
                group_instance_id: m.instance_id.map(|i| i.to_string()),
                client_id: m.client_id.to_string(),
                client_host: m.client_host.to_string(),
                assignment,
            }
        })
        .collect();
    Ok(GroupDescription {
        group_id: g.group_id.0.to_string(),
        group_type: "consumer".to_owned(),
        state: g.group_state.to_string(),
        protocol_type: "consumer".to_owned(),
        protocol: g.assignor_name.to_string(),
        members,
        coordinator,
    })
}

/// The partitions of a consumer protocol assignment (an i16 version, then
/// the versioned body); empty bytes are an empty assignment.
fn decode_assignment(bytes: &Bytes) -> Result<BTreeMap<String, Vec<i32>>> {
    if bytes.is_empty() {
        return Ok(BTreeMap::new());
    }
    let version = bytes
        .get(..2)
        .map(|v| i16::from_be_bytes([v[0], v[1]]))
        .ok_or_else(|| Error::Protocol("a 1-byte consumer assignment".to_owned()))?;
    let mut body = bytes.slice(2..);
    // Newer versions keep the older fields first: read as the newest known.
    let assignment = ConsumerProtocolAssignment::decode(&mut body, version.clamp(0, 3))
        .map_err(|e| Error::Protocol(format!("consumer assignment v{version}: {e}")))?;
    let mut topics: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for t in assignment.assigned_partitions {
        let partitions = topics.entry(t.topic.0.to_string()).or_default();
        partitions.extend(t.partitions);
        partitions.sort_unstable();
    }
    Ok(topics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strom_protocol::messages::Encodable;
    use strom_protocol::messages::kafka::consumer_protocol_assignment::TopicPartition as Assigned;

    #[test]
    fn assignments_decode_from_the_consumer_protocol() {
        let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
            Assigned::default()
                .with_topic(topic_name("b"))
                .with_partitions(vec![2, 0]),
            Assigned::default()
                .with_topic(topic_name("a"))
                .with_partitions(vec![1]),
        ]);
        let mut bytes = 1i16.to_be_bytes().to_vec();
        assignment.encode(&mut bytes, 1).unwrap();
        let decoded = decode_assignment(&Bytes::from(bytes)).unwrap();
        assert_eq!(
            decoded,
            BTreeMap::from([("a".to_owned(), vec![1]), ("b".to_owned(), vec![0, 2])])
        );
        assert!(decode_assignment(&Bytes::new()).unwrap().is_empty());
        assert!(decode_assignment(&Bytes::from_static(&[0])).is_err());
        assert!(decode_assignment(&Bytes::from_static(&[0, 1, 0, 0, 0, 9])).is_err());
    }

    #[test]
    fn unknown_topics_are_final_and_coordinator_errors_are_the_groups() {
        assert!(!worth_retrying(&unknown_topic("t")));
        assert!(worth_retrying(&Error::kafka(
            ErrorCode::NotController.code(),
            None
        )));
        let partitions = [
            (TopicPartition::new("t", 0), 0),
            (
                TopicPartition::new("t", 1),
                ErrorCode::UnknownMemberId.code(),
            ),
        ];
        let results = partition_results(partitions.clone().into_iter()).unwrap();
        assert!(results[&TopicPartition::new("t", 0)].is_ok());
        assert_eq!(
            results[&TopicPartition::new("t", 1)]
                .as_ref()
                .unwrap_err()
                .code(),
            Some(ErrorCode::UnknownMemberId)
        );
        let moved = [(
            TopicPartition::new("t", 0),
            ErrorCode::NotCoordinator.code(),
        )];
        assert_eq!(
            partition_results(moved.into_iter()).unwrap_err().code(),
            Some(ErrorCode::NotCoordinator)
        );
    }

    #[test]
    fn a_leader_not_knowing_a_topic_is_asked_again() {
        let config: ClientConfig = [("bootstrap.servers", "127.0.0.1:1")].into_iter().collect();
        let cluster = Cluster::new(NetworkConfig::from_config(&config).unwrap());
        let mut round: Round<i32, ()> = Round::new([1, 2, 3]);
        round.settle_from_leader(&cluster, 1, Err(unknown_topic("t")));
        round.settle(&cluster, 2, Err(unknown_topic("t")));
        round.settle(&cluster, 3, Ok(()));
        assert_eq!(round.pending, BTreeSet::from([1]));
        assert_eq!(
            round.done[&2].as_ref().unwrap_err().code(),
            Some(ErrorCode::UnknownTopicOrPartition)
        );
        round.time_out("ListOffsets", Duration::from_millis(5));
        assert!(matches!(&round.done[&1], Err(Error::Timeout(m)) if m.contains("unknown topic t")));
    }

    #[test]
    fn config_resources_route_to_their_broker() {
        assert!(matches!(
            config_dest(&ConfigResource::broker(3)),
            Dest::Node(3)
        ));
        assert!(matches!(
            config_dest(&ConfigResource::broker_defaults()),
            Dest::Any
        ));
        assert!(matches!(
            config_dest(&ConfigResource::topic("t")),
            Dest::Any
        ));
        assert_eq!(ConfigSource::from_code(5), ConfigSource::Default);
        assert_eq!(ConfigSource::from_code(42), ConfigSource::Unknown);
    }

    /// Every call's future can be spawned (checked at compile time).
    #[allow(dead_code, reason = "only compiled")]
    fn futures_are_send(admin: &Admin, tp: &BTreeMap<TopicPartition, i64>) {
        fn send<T: Send>(_: T) {}
        send(admin.create_topics(&[], false));
        send(admin.delete_topics(&[]));
        send(admin.list_topics(false));
        send(admin.describe_topics(&[]));
        send(admin.create_partitions(&BTreeMap::new(), false));
        send(admin.describe_configs(&[], false));
        send(admin.incremental_alter_configs(&BTreeMap::new(), false));
        send(admin.list_groups());
        send(admin.list_groups_matching(&["Stable"], &["classic"]));
        send(admin.describe_groups(&[]));
        send(admin.delete_groups(&[]));
        send(admin.list_group_offsets("g", None));
        send(admin.alter_group_offsets("g", &BTreeMap::new()));
        send(admin.delete_group_offsets("g", &[]));
        send(admin.describe_cluster());
        send(admin.delete_records(tp));
        send(admin.list_offsets(&BTreeMap::new(), IsolationLevel::ReadCommitted));
    }

    #[test]
    fn the_admin_client_refuses_unknown_properties() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let config: ClientConfig = [("bootstrap.servers", "127.0.0.1:1"), ("linger.ms", "5")]
            .into_iter()
            .collect();
        assert!(
            matches!(Admin::new(&config), Err(Error::Config { name, .. }) if name == "linger.ms")
        );
        let config: ClientConfig = [
            ("bootstrap.servers", "127.0.0.1:1"),
            ("default.api.timeout.ms", "1000"),
        ]
        .into_iter()
        .collect();
        assert!(Admin::new(&config).is_ok());
    }
}
