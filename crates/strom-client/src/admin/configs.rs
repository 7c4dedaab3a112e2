//! Configs of topics and brokers: DescribeConfigs and
//! IncrementalAlterConfigs (KIP-339).

use std::collections::BTreeMap;

use strom_protocol::messages::kafka::{
    DescribeConfigsRequest, IncrementalAlterConfigsRequest,
    describe_configs_request::DescribeConfigsResource,
    describe_configs_response::DescribeConfigsResourceResult,
    incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig},
};

use crate::error::{Error, Result};

use super::Admin;
use super::routing::{Dest, Sent, str_bytes};

const DESCRIBE_CONFIGS_VERSION: i16 = 4;
const INCREMENTAL_ALTER_CONFIGS_VERSION: i16 = 1;

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

impl Admin {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
