//! Topics and partitions: CreateTopics, DeleteTopics, Metadata (list and
//! describe), CreatePartitions.

use std::collections::BTreeMap;

use strom_protocol::messages::Uuid;
use strom_protocol::messages::kafka::{
    CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest,
    create_partitions_request::CreatePartitionsTopic,
    create_topics_request::{CreatableTopic, CreatableTopicConfig},
    create_topics_response::{CreatableTopicConfigs, CreatableTopicResult},
    delete_topics_request::DeleteTopicState,
};

use crate::cluster::TopicInfo;
use crate::error::{Error, Result};

use super::Admin;
use super::configs::{ConfigEntry, ConfigSource};
use super::routing::{Dest, Round, str_bytes, topic_name, unknown_topic, within};

const CREATE_TOPICS_VERSION: i16 = 7;
/// v6 takes topics as (name, id) pairs; names only here.
const DELETE_TOPICS_VERSION: i16 = 6;
const CREATE_PARTITIONS_VERSION: i16 = 3;

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

impl Admin {
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
