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
//! configs go to that broker, topic configs and DescribeQuorum to any broker
//! (which forwards DescribeQuorum to the active controller); group operations
//! go to the group's coordinator from FindCoordinator; per-partition
//! operations (ListOffsets, DeleteRecords) go to each partition's leader, one
//! request per leader, all leaders at once. Every request is sent at the
//! newest version both sides support, capped by the `*_VERSION` constants
//! of each family's module: each the newest the vendored protocol crate
//! knows that still names topics (not only topic ids).
//!
//! # Layout
//!
//! One module per API family, each adding its calls to [`Admin`] and
//! defining the types they take and answer (re-exported here):
//!
//! - `topics`: create, delete, list and describe topics; create partitions.
//! - `configs`: describe and incrementally alter configs of topics and
//!   brokers.
//! - `groups`: list, describe and delete groups; list, alter and delete
//!   their committed offsets.
//! - `records`: delete records and list offsets, on each partition's leader.
//! - `cluster`: describe the cluster.
//! - `quorum`: describe the controller quorum (DescribeQuorum).
//! - `routing`: where each item's request goes, the retry engine every call
//!   runs on, and small helpers the families share.

use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::config::{COMMON, ClientConfig, NetworkConfig};
/// The consumer's partition type, here too.
pub use crate::consumer::TopicPartition;
use crate::error::{Error, Result};

mod cluster;
mod configs;
mod groups;
mod quorum;
mod records;
mod routing;
mod topics;

pub use cluster::ClusterDescription;
pub use configs::{
    AlterConfigOp, AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource, ConfigSynonym,
    ResourceType,
};
pub use groups::{CommittedOffset, GroupDescription, GroupListing, MemberDescription};
pub use quorum::{QuorumInfo, QuorumNode, QuorumReplica};
pub use records::{IsolationLevel, ListedOffset, OffsetSpec};
pub use topics::{CreatedTopic, NewTopic, TopicListing};

/// The properties the admin client reads, besides [`COMMON`].
const ADMIN: &[&str] = &["default.api.timeout.ms"];

/// Kafka's default for `default.api.timeout.ms`.
const DEFAULT_API_TIMEOUT_MS: u64 = 60_000;

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

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
