//! The client's picture of the cluster: which brokers exist, which topics and
//! partitions, who leads each partition; and one connection per broker.
//!
//! Metadata is fetched with a Metadata request for the topics the client has
//! used (every topic when a caller asks for all), refreshed when it is older
//! than `metadata.max.age.ms` or when a caller learns it is stale (a
//! NOT_LEADER_OR_FOLLOWER, a lost connection; [`Error::needs_metadata_refresh`]).
//! Concurrent refreshes collapse into one: a caller that waited for a
//! refresh in progress does not start another. Refreshes for staleness are
//! rate-limited as in the Java client (KIP-580): at least `retry.backoff.ms`
//! after the previous refresh, doubling while callers keep finding the
//! metadata stale (a partition without a leader while its broker is down),
//! up to `retry.backoff.max.ms`, with ±20 % jitter.
//!
//! A Produce answer may name a partition's new leader (KIP-951
//! `CurrentLeader` and `NodeEndpoints`); [`Cluster::update_leader`] takes it
//! into the cached metadata at once, so a retry goes to the new leader
//! without waiting for a Metadata round trip.
//!
//! Connections are keyed by [`Route`]: the bootstrap addresses, each broker,
//! and each broker again as a group or transaction coordinator. The second
//! connection keeps a consumer's long-polling fetches from delaying its
//! heartbeats, as the Java client does with its `Integer.MAX_VALUE - id` node.
//! A failed connection is opened again on next use, after
//! `reconnect.backoff.ms` doubling per failure up to `reconnect.backoff.max.ms`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use rand::Rng;
use strom_protocol::messages::kafka::{
    BrokerId, FindCoordinatorRequest, MetadataRequest, TopicName,
    metadata_request::MetadataRequestTopic,
};
use strom_protocol::messages::{Request, StrBytes, Uuid};
use strom_protocol::topic::illegal_topic_name;

use crate::config::NetworkConfig;
use crate::conn::{Connection, InFlight};
use crate::error::{Error, ErrorCode, Result};

/// Newest Metadata version asked: v12 carries topic ids and is what Kafka 4
/// clients send (v13 only adds a top-level error code).
const METADATA_VERSION: i16 = 12;

/// Newest FindCoordinator version asked: v4+ looks up several keys at once,
/// v6 adds share groups, which this client has no use for.
const FIND_COORDINATOR_VERSION: i16 = 5;

/// FindCoordinator's key types.
pub(crate) const GROUP_KEY: i8 = 0;
pub(crate) const TRANSACTION_KEY: i8 = 1;

/// Which connection a request travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Route {
    /// The n-th `bootstrap.servers` address.
    Bootstrap(usize),
    /// A broker, for produce, fetch, metadata and admin requests.
    Node(i32),
    /// A broker in its role as group or transaction coordinator.
    Coordinator(i32),
}

/// A broker as the metadata names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    pub id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

impl BrokerInfo {
    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// A partition as the metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: i32,
    /// -1 while the partition has no leader.
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub offline_replicas: Vec<i32>,
}

/// A topic as the metadata describes it; partitions in partition order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub id: Uuid,
    pub internal: bool,
    pub partitions: Vec<PartitionInfo>,
}

impl TopicInfo {
    /// The partition `partition`, if the topic has it.
    pub fn partition(&self, partition: i32) -> Option<&PartitionInfo> {
        usize::try_from(partition)
            .ok()
            .and_then(|i| self.partitions.get(i))
            .filter(|p| p.partition == partition)
            .or_else(|| self.partitions.iter().find(|p| p.partition == partition))
    }
}

/// The last metadata answer, merged.
#[derive(Debug, Default)]
struct Snapshot {
    cluster_id: Option<String>,
    controller: i32,
    brokers: HashMap<i32, BrokerInfo>,
    topics: HashMap<String, Arc<TopicInfo>>,
    /// Topics the broker answered with an error (unknown, no leader yet).
    topic_errors: HashMap<String, Error>,
    /// The topics every refresh asks for: those the client has used.
    wanted: BTreeSet<String>,
    refreshed_at: Option<Instant>,
    /// Counts refreshes, so a caller can tell whether one happened since it
    /// looked.
    generation: u64,
    /// Set when a caller found the metadata stale; the next
    /// [`Cluster::maybe_refresh`] refreshes (after the retry backoff).
    stale: bool,
    /// Refreshes in a row made because the metadata was stale; the wait
    /// before the next one doubles with each. Back to 0 once a refresh
    /// leaves nobody finding the metadata stale.
    stale_refreshes: u32,
}

#[derive(Debug, Default)]
struct Slot {
    conn: Option<Arc<Connection>>,
    failures: u32,
    last_failure: Option<Instant>,
}

/// Metadata and connections, shared by everything one client does.
#[derive(Debug)]
pub(crate) struct Cluster {
    net: NetworkConfig,
    meta: RwLock<Snapshot>,
    refreshing: tokio::sync::Mutex<()>,
    slots: Mutex<HashMap<Route, Arc<tokio::sync::Mutex<Slot>>>>,
}

impl Cluster {
    pub(crate) fn new(net: NetworkConfig) -> Self {
        Self {
            net,
            meta: RwLock::new(Snapshot {
                controller: -1,
                ..Snapshot::default()
            }),
            refreshing: tokio::sync::Mutex::new(()),
            slots: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn net(&self) -> &NetworkConfig {
        &self.net
    }

    /// A live connection for `route`, opened (after the reconnect backoff) if
    /// there is none.
    pub(crate) async fn connection(&self, route: Route) -> Result<Arc<Connection>> {
        let slot = Arc::clone(self.slots.lock().entry(route).or_default());
        let mut slot = slot.lock().await;
        if let Some(conn) = slot.conn.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(conn));
        }
        slot.conn = None;
        if let Some(last) = slot.last_failure {
            let wait = self.reconnect_backoff(slot.failures);
            tokio::time::sleep_until((last + wait).into()).await;
        }
        let addr = self.address(route)?;
        let net = &self.net;
        match Connection::connect(
            &addr,
            &net.client_id,
            net.connect_timeout,
            net.request_timeout,
        )
        .await
        {
            Ok(conn) => {
                let conn = Arc::new(conn);
                slot.conn = Some(Arc::clone(&conn));
                slot.failures = 0;
                slot.last_failure = None;
                Ok(conn)
            }
            Err(error) => {
                slot.failures = slot.failures.saturating_add(1);
                slot.last_failure = Some(Instant::now());
                tracing::debug!(%addr, %error, "connecting failed");
                Err(error)
            }
        }
    }

    /// `reconnect.backoff.ms` doubled per failure after the first, at most
    /// `reconnect.backoff.max.ms`, with the Java client's ±20 % jitter.
    fn reconnect_backoff(&self, failures: u32) -> Duration {
        jitter(exponential_backoff(
            self.net.reconnect_backoff,
            self.net.reconnect_backoff_max,
            failures.saturating_sub(1),
        ))
    }

    /// The wait before the next try after `failures` failed ones in a row:
    /// `retry.backoff.ms` doubled per failure after the first, at most
    /// `retry.backoff.max.ms`, ±20 % (KIP-580). For 0 failures, no wait.
    pub(crate) fn retry_backoff(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        jitter(exponential_backoff(
            self.net.retry_backoff,
            self.net.retry_backoff_max,
            failures - 1,
        ))
    }

    fn address(&self, route: Route) -> Result<String> {
        match route {
            Route::Bootstrap(i) => self
                .net
                .bootstrap
                .get(i)
                .cloned()
                .ok_or_else(|| Error::State(format!("no bootstrap address {i}"))),
            Route::Node(id) | Route::Coordinator(id) => self
                .meta
                .read()
                .brokers
                .get(&id)
                .map(BrokerInfo::addr)
                .ok_or_else(|| {
                    Error::kafka(
                        ErrorCode::BrokerNotAvailable.code(),
                        Some(&format!("broker {id} is not in the metadata")),
                    )
                }),
        }
    }

    /// Sends `request` on `route`.
    pub(crate) async fn send<R: Request>(
        &self,
        route: Route,
        max: i16,
        request: &R,
    ) -> Result<R::Response> {
        let conn = self.connection(route).await?;
        let response = conn.send(max, request).await;
        if matches!(&response, Err(e) if e.needs_metadata_refresh()) {
            self.mark_stale();
        }
        response
    }

    /// Writes `request` on `route` and returns its response to wait for;
    /// requests started one after another are written in that order.
    pub(crate) async fn start<R: Request>(
        &self,
        route: Route,
        max: i16,
        request: &R,
    ) -> Result<InFlight<R>> {
        let conn = self.connection(route).await?;
        conn.start(max, request).await
    }

    /// Sends `request` to any broker that answers: the known brokers in a
    /// random order, then the bootstrap addresses.
    pub(crate) async fn send_any<R: Request>(&self, max: i16, request: &R) -> Result<R::Response> {
        let mut last_error = None;
        for route in self.any_routes() {
            match self.connection(route).await {
                Ok(conn) => match conn.send(max, request).await {
                    Err(e @ (Error::Io { .. } | Error::Timeout(_))) => last_error = Some(e),
                    other => return other,
                },
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or(Error::State("no broker address known".to_owned())))
    }

    fn any_routes(&self) -> Vec<Route> {
        let mut routes: Vec<Route> = {
            let meta = self.meta.read();
            meta.brokers.keys().map(|&id| Route::Node(id)).collect()
        };
        // Prefer brokers with a live connection, then any in random order.
        let live: Vec<Route> = {
            let slots = self.slots.lock();
            routes
                .iter()
                .copied()
                .filter(|r| {
                    slots.get(r).is_some_and(|s| {
                        s.try_lock()
                            .is_ok_and(|s| s.conn.as_ref().is_some_and(|c| !c.is_closed()))
                    })
                })
                .collect()
        };
        let offset = rand::rng().random_range(0..routes.len().max(1));
        let len = routes.len();
        routes.rotate_left(offset.min(len));
        routes.retain(|r| !live.contains(r));
        let mut ordered = live;
        ordered.extend(routes);
        ordered.extend((0..self.net.bootstrap.len()).map(Route::Bootstrap));
        ordered
    }

    /// Notes that the metadata is stale; the next [`Cluster::maybe_refresh`]
    /// refreshes it.
    pub(crate) fn mark_stale(&self) {
        self.meta.write().stale = true;
    }

    /// Whether a caller marked the metadata stale since the last refresh.
    #[cfg(test)]
    pub(crate) fn meta_is_stale(&self) -> bool {
        self.meta.read().stale
    }

    /// Adds topics every later refresh asks for; a topic not wanted before
    /// makes the metadata stale, so the next refresh comes at once.
    pub(crate) fn want(&self, topics: impl IntoIterator<Item = String>) {
        let mut meta = self.meta.write();
        for topic in topics {
            if meta.wanted.insert(topic) {
                meta.stale = true;
            }
        }
    }

    /// The metadata refresh count, to pass to [`Cluster::refresh_after`].
    pub(crate) fn generation(&self) -> u64 {
        self.meta.read().generation
    }

    /// Refreshes if the metadata was marked stale or is older than
    /// `metadata.max.age.ms`.
    pub(crate) async fn maybe_refresh(&self) -> Result<()> {
        let due = {
            let mut meta = self.meta.write();
            if !meta.stale {
                // Nobody found the last refresh wanting.
                meta.stale_refreshes = 0;
            }
            let since = meta.refreshed_at.map(|at| at.elapsed());
            // The backoff of the refresh in a row this one would be.
            let backoff = self.retry_backoff(meta.stale_refreshes.saturating_add(1));
            refresh_due(meta.stale, since, backoff, self.net.metadata_max_age)
        };
        if due {
            self.refresh_after(self.generation(), false).await?;
        }
        Ok(())
    }

    /// Refreshes the metadata of the wanted topics, unless a refresh finished
    /// since `generation` was read (then that one is as good).
    pub(crate) async fn refresh_after(&self, generation: u64, auto_create: bool) -> Result<()> {
        let _single_flight = self.refreshing.lock().await;
        if self.generation() != generation {
            return Ok(());
        }
        let wanted: Vec<String> = self.meta.read().wanted.iter().cloned().collect();
        self.fetch_metadata(Some(&wanted), auto_create)
            .await
            .map(|_| ())
    }

    /// Asks for the metadata of `topics` (all topics for `None`), merges it,
    /// and returns the topics answered without error.
    pub(crate) async fn fetch_metadata(
        &self,
        topics: Option<&[String]>,
        auto_create: bool,
    ) -> Result<Vec<Arc<TopicInfo>>> {
        let request = MetadataRequest::default()
            .with_topics(topics.map(|names| {
                names
                    .iter()
                    .map(|name| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(name.clone()))))
                    })
                    .collect()
            }))
            .with_allow_auto_topic_creation(auto_create);
        let response = self.send_any(METADATA_VERSION, &request).await?;
        let mut answered = Vec::new();
        let mut meta = self.meta.write();
        meta.cluster_id = response.cluster_id.map(|c| c.to_string());
        meta.controller = response.controller_id.0;
        meta.brokers = response
            .brokers
            .into_iter()
            .map(|b| {
                let info = BrokerInfo {
                    id: b.node_id.0,
                    host: b.host.to_string(),
                    port: b.port,
                    rack: b.rack.map(|r| r.to_string()),
                };
                (info.id, info)
            })
            .collect();
        if topics.is_none() {
            meta.topics.clear();
        }
        for topic in response.topics {
            let Some(name) = topic.name.map(|n| n.0.to_string()) else {
                continue;
            };
            if topic.error_code != 0 {
                meta.topics.remove(&name);
                // Metadata carries no message; say which rule an illegal
                // name breaks, in the words CreateTopics would use.
                let why = (topic.error_code == ErrorCode::InvalidTopicException.code())
                    .then(|| illegal_topic_name(&name))
                    .flatten();
                meta.topic_errors
                    .insert(name, Error::kafka(topic.error_code, why.as_deref()));
                continue;
            }
            let mut partitions: Vec<PartitionInfo> = topic
                .partitions
                .into_iter()
                .map(|p| PartitionInfo {
                    partition: p.partition_index,
                    // A partition answered with an error has no usable leader.
                    leader: if p.error_code == 0
                        || p.error_code == ErrorCode::ReplicaNotAvailable.code()
                    {
                        p.leader_id.0
                    } else {
                        -1
                    },
                    leader_epoch: p.leader_epoch,
                    replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                    isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                    offline_replicas: p.offline_replicas.iter().map(|b| b.0).collect(),
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            let info = Arc::new(TopicInfo {
                name: name.clone(),
                id: topic.topic_id,
                internal: topic.is_internal,
                partitions,
            });
            meta.topic_errors.remove(&name);
            meta.topics.insert(name, Arc::clone(&info));
            answered.push(info);
        }
        meta.refreshed_at = Some(Instant::now());
        meta.generation += 1;
        if meta.stale {
            meta.stale_refreshes = meta.stale_refreshes.saturating_add(1);
        }
        meta.stale = false;
        Ok(answered)
    }

    /// Takes a partition's leader from a response that names it (KIP-951:
    /// `CurrentLeader` in a Produce or Fetch error, with the leader's
    /// endpoint when the client may not know it). Only a newer leader epoch
    /// than the cached one is taken, so a late answer never moves the
    /// leader back; returns whether the cache changed.
    pub(crate) fn update_leader(
        &self,
        topic: &str,
        partition: i32,
        leader: i32,
        leader_epoch: i32,
        endpoint: Option<BrokerInfo>,
    ) -> bool {
        if leader < 0 || leader_epoch < 0 {
            return false;
        }
        let mut meta = self.meta.write();
        let Some(info) = meta.topics.get(topic).map(Arc::clone) else {
            return false;
        };
        let Some(current) = info.partition(partition) else {
            return false;
        };
        if current.leader_epoch >= leader_epoch {
            return false;
        }
        if let std::collections::hash_map::Entry::Vacant(entry) = meta.brokers.entry(leader) {
            match endpoint.filter(|b| b.id == leader) {
                Some(broker) => {
                    entry.insert(broker);
                }
                // A leader the client cannot reach: a refresh must say where.
                None => return false,
            }
        }
        let mut updated = TopicInfo::clone(&info);
        if let Some(p) = updated
            .partitions
            .iter_mut()
            .find(|p| p.partition == partition)
        {
            p.leader = leader;
            p.leader_epoch = leader_epoch;
        }
        meta.topics.insert(topic.to_owned(), Arc::new(updated));
        true
    }

    /// The cached metadata of `topic`, or the error the broker gave for it.
    pub(crate) fn cached_topic(&self, topic: &str) -> Option<Result<Arc<TopicInfo>>> {
        let meta = self.meta.read();
        meta.topics
            .get(topic)
            .map(|t| Ok(Arc::clone(t)))
            .or_else(|| meta.topic_errors.get(topic).map(|e| Err(e.clone())))
    }

    /// The metadata of `topic`, fetched (and the topic auto-created, if asked
    /// and the broker allows) when not cached; waits out retriable errors
    /// such as LEADER_NOT_AVAILABLE of a topic just created, until `deadline`.
    pub(crate) async fn topic(
        &self,
        topic: &str,
        auto_create: bool,
        deadline: Instant,
    ) -> Result<Arc<TopicInfo>> {
        if let Some(Ok(info)) = self.cached_topic(topic) {
            return Ok(info);
        }
        self.want([topic.to_owned()]);
        loop {
            let generation = self.generation();
            self.refresh_after(generation, auto_create).await?;
            match self.cached_topic(topic) {
                Some(Ok(info)) => return Ok(info),
                Some(Err(error)) if !error.is_retriable() => return Err(error),
                _ if Instant::now() >= deadline => {
                    return Err(Error::Timeout(format!("metadata of topic {topic}")));
                }
                _ => tokio::time::sleep(self.net.retry_backoff).await,
            }
        }
    }

    /// The broker with `id`, if the metadata knows it.
    pub(crate) fn broker(&self, id: i32) -> Option<BrokerInfo> {
        self.meta.read().brokers.get(&id).cloned()
    }

    /// Every broker the metadata knows, by id.
    pub(crate) fn brokers(&self) -> Vec<BrokerInfo> {
        let mut brokers: Vec<BrokerInfo> = self.meta.read().brokers.values().cloned().collect();
        brokers.sort_by_key(|b| b.id);
        brokers
    }

    /// A broker for a request any broker answers: the metadata's brokers by
    /// id, those whose last connection attempt failed last (the one that
    /// failed longest ago first), so that a broker just found down (killed,
    /// not yet out of the metadata) is not asked again while others are up.
    pub(crate) fn any_broker(&self) -> Option<i32> {
        let ids: Vec<i32> = {
            let mut ids: Vec<i32> = self.meta.read().brokers.keys().copied().collect();
            ids.sort_unstable();
            ids
        };
        let slots = self.slots.lock();
        let last_failure = |id: i32| {
            slots
                .get(&Route::Node(id))
                // A slot in use is connecting or connected: not failed.
                .and_then(|slot| slot.try_lock().ok().and_then(|s| s.last_failure))
        };
        ids.into_iter()
            .min_by_key(|id| (last_failure(*id).is_some(), last_failure(*id)))
    }

    /// The cluster id and the controller's id from the last metadata.
    pub(crate) fn cluster_id_and_controller(&self) -> (Option<String>, i32) {
        let meta = self.meta.read();
        (meta.cluster_id.clone(), meta.controller)
    }

    /// Finds the coordinator of `key` (a group id or transactional id) and
    /// makes it known as a broker.
    pub(crate) async fn find_coordinator(&self, key_type: i8, key: &str) -> Result<i32> {
        let mut response = None;
        let mut last_error = None;
        for route in self.any_routes() {
            let conn = match self.connection(route).await {
                Ok(conn) => conn,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            // v4+ asks by a list of keys, older versions by one key.
            let version = conn.version::<FindCoordinatorRequest>(FIND_COORDINATOR_VERSION)?;
            let key = StrBytes::from_string(key.to_owned());
            let request = if version >= 4 {
                FindCoordinatorRequest::default().with_coordinator_keys(vec![key])
            } else {
                FindCoordinatorRequest::default().with_key(key)
            }
            .with_key_type(key_type);
            match conn.send_at(version, &request).await {
                Err(e @ (Error::Io { .. } | Error::Timeout(_))) => last_error = Some(e),
                other => {
                    response = Some(other?);
                    break;
                }
            }
        }
        let response = response.ok_or_else(|| {
            last_error.unwrap_or(Error::State("no broker address known".to_owned()))
        })?;
        let (node, host, port) = match response.coordinators.into_iter().next() {
            // v4+: one answer per key.
            Some(c) => {
                Error::check(c.error_code, c.error_message.as_deref())?;
                (c.node_id, c.host, c.port)
            }
            None => {
                Error::check(response.error_code, response.error_message.as_deref())?;
                (response.node_id, response.host, response.port)
            }
        };
        let BrokerId(id) = node;
        self.meta
            .write()
            .brokers
            .entry(id)
            .or_insert_with(|| BrokerInfo {
                id,
                host: host.to_string(),
                port,
                rack: None,
            });
        Ok(id)
    }
}

/// `base` doubled `doublings` times, at most `max`.
fn exponential_backoff(base: Duration, max: Duration, doublings: u32) -> Duration {
    base.saturating_mul(1 << doublings.min(16)).min(max)
}

/// `wait` ±20 %, as the Java client spreads retries (KIP-580), so that
/// clients that failed together do not retry together.
fn jitter(wait: Duration) -> Duration {
    wait.mul_f64(rand::rng().random_range(0.8..1.2))
}

/// Whether a metadata refresh is due: a stale picture once `backoff` has
/// passed since the last refresh (`None`: never refreshed), or a picture
/// older than `max_age`.
fn refresh_due(stale: bool, since: Option<Duration>, backoff: Duration, max_age: Duration) -> bool {
    match since {
        None => true,
        Some(since) => (stale && since >= backoff) || since >= max_age,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientConfig;

    fn cluster_with(pairs: &[(&str, &str)]) -> Cluster {
        let mut config: ClientConfig = pairs.iter().copied().collect();
        config.set("bootstrap.servers", "127.0.0.1:1");
        Cluster::new(NetworkConfig::from_config(&config).unwrap())
    }

    #[test]
    fn retry_backoff_doubles_per_failure_to_the_max() {
        let cluster = cluster_with(&[
            ("retry.backoff.ms", "100"),
            ("retry.backoff.max.ms", "1000"),
        ]);
        assert_eq!(cluster.retry_backoff(0), Duration::ZERO);
        for (failures, expected_ms) in [
            (1, 100.0),
            (2, 200.0),
            (3, 400.0),
            (4, 800.0),
            (5, 1000.0),
            (40, 1000.0),
        ] {
            let ms = cluster.retry_backoff(failures).as_secs_f64() * 1000.0;
            assert!(
                (expected_ms * 0.8..=expected_ms * 1.2).contains(&ms),
                "{failures} failures: {ms} ms"
            );
        }
        // Kafka's defaults: 100 ms growing to 1 s.
        let ms = cluster_with(&[]).retry_backoff(20).as_secs_f64() * 1000.0;
        assert!((800.0..=1200.0).contains(&ms), "{ms} ms");
    }

    #[test]
    fn stale_metadata_is_refreshed_only_after_the_backoff() {
        let ms = Duration::from_millis;
        let max_age = ms(300_000);
        // Never refreshed: at once.
        assert!(refresh_due(false, None, ms(100), max_age));
        // Stale, but the last refresh was just now: wait.
        assert!(!refresh_due(true, Some(ms(10)), ms(100), max_age));
        assert!(refresh_due(true, Some(ms(100)), ms(100), max_age));
        // Fresh and young: no refresh; old: refresh.
        assert!(!refresh_due(false, Some(ms(10_000)), ms(100), max_age));
        assert!(refresh_due(false, Some(max_age), ms(100), max_age));
    }

    #[tokio::test]
    async fn refreshes_for_staleness_back_off_while_the_metadata_stays_stale() {
        let cluster = cluster_with(&[
            ("retry.backoff.ms", "100"),
            ("retry.backoff.max.ms", "1000"),
        ]);
        {
            let mut meta = cluster.meta.write();
            meta.refreshed_at = Some(Instant::now());
            meta.stale = true;
            meta.stale_refreshes = 4;
        }
        // The fifth refresh in a row waits about a second: maybe_refresh
        // returns without asking any broker (none listens at the bootstrap
        // address, so a request would fail).
        cluster.maybe_refresh().await.unwrap();
        assert_eq!(cluster.generation(), 0);
        // A caller finds things working: the streak ends.
        cluster.meta.write().stale = false;
        cluster.maybe_refresh().await.unwrap();
        assert_eq!(cluster.meta.read().stale_refreshes, 0);
    }

    fn topic_led_by(leader: i32, leader_epoch: i32) -> TopicInfo {
        TopicInfo {
            name: "t".into(),
            id: Uuid::nil(),
            internal: false,
            partitions: vec![PartitionInfo {
                partition: 0,
                leader,
                leader_epoch,
                replicas: vec![1, 2],
                isr: vec![1, 2],
                offline_replicas: vec![],
            }],
        }
    }

    #[test]
    fn a_newer_leader_named_in_a_response_is_taken_and_an_older_one_is_not() {
        let cluster = cluster_with(&[]);
        {
            let mut meta = cluster.meta.write();
            meta.topics.insert("t".into(), Arc::new(topic_led_by(1, 5)));
            meta.brokers.insert(
                1,
                BrokerInfo {
                    id: 1,
                    host: "127.0.0.1".into(),
                    port: 1,
                    rack: None,
                },
            );
        }
        let leader = || {
            let p = cluster.cached_topic("t").unwrap().unwrap().partitions[0].clone();
            (p.leader, p.leader_epoch)
        };
        // An older or equal epoch, an unknown leader, an unknown broker
        // without its endpoint: nothing changes.
        assert!(!cluster.update_leader("t", 0, 2, 5, None));
        assert!(!cluster.update_leader("t", 0, -1, 6, None));
        assert!(!cluster.update_leader("t", 0, 2, 6, None));
        assert!(!cluster.update_leader("other", 0, 2, 6, None));
        assert_eq!(leader(), (1, 5));
        // The new leader with its endpoint: taken, and the broker known.
        let endpoint = BrokerInfo {
            id: 2,
            host: "127.0.0.1".into(),
            port: 2,
            rack: None,
        };
        assert!(cluster.update_leader("t", 0, 2, 6, Some(endpoint.clone())));
        assert_eq!(leader(), (2, 6));
        assert_eq!(cluster.broker(2), Some(endpoint));
        // A late answer naming the old leader does not move it back.
        assert!(!cluster.update_leader("t", 0, 1, 5, None));
        assert_eq!(leader(), (2, 6));
    }

    #[test]
    fn backoff_doubles_to_the_max_with_jitter() {
        let config: ClientConfig = [
            ("bootstrap.servers", "127.0.0.1:1"),
            ("reconnect.backoff.ms", "100"),
            ("reconnect.backoff.max.ms", "1000"),
        ]
        .into_iter()
        .collect();
        let cluster = Cluster::new(NetworkConfig::from_config(&config).unwrap());
        for (failures, expected_ms) in [(1, 100.0), (2, 200.0), (3, 400.0), (4, 800.0), (9, 1000.0)]
        {
            let ms = cluster.reconnect_backoff(failures).as_secs_f64() * 1000.0;
            assert!(
                (expected_ms * 0.8..=expected_ms * 1.2).contains(&ms),
                "{failures} failures: {ms} ms"
            );
        }
    }

    #[test]
    fn partitions_are_found_by_index_or_search() {
        let partition = |p| PartitionInfo {
            partition: p,
            leader: 1,
            leader_epoch: 0,
            replicas: vec![1],
            isr: vec![1],
            offline_replicas: vec![],
        };
        let topic = TopicInfo {
            name: "t".into(),
            id: Uuid::nil(),
            internal: false,
            partitions: vec![partition(0), partition(2)],
        };
        assert_eq!(topic.partition(2).map(|p| p.partition), Some(2));
        assert!(topic.partition(1).is_none() && topic.partition(-1).is_none());
    }
}
