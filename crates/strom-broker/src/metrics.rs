//! The broker's metrics, served in Prometheus' text format (OpenMetrics) on
//! an HTTP listener of their own (`metrics.listener`, `GET /metrics`).
//!
//! Two kinds:
//!
//! - **Recorded** as things happen: requests and their latency per API,
//!   bytes and records in and out per topic, connections, requests waiting
//!   in purgatory. These live in [`Metrics`] and cost an atomic add each.
//! - **Read at scrape time** from the broker's state: partitions, their log
//!   size, offsets and high watermark, consumer group committed offsets and
//!   lag, under-replicated partitions. Nothing is kept between scrapes, so
//!   a deleted topic or group disappears from the next scrape.
//!
//! Names follow Prometheus' conventions (`strom_` prefix, base units,
//! `_total` for counters) and say which Kafka MBean they stand for in their
//! help text, so that dashboards built for Kafka translate one to one.
//! docs/broker.md lists them.

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use strom_protocol::messages::ApiKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::group::GroupCoordinator;
use crate::partition::Role;
use crate::replica::ReplicaManager;

/// Request latency buckets: 0.5 ms doubling to 32 s, which covers a
/// metadata request on a idle broker up to a long-poll fetch or a JoinGroup
/// waiting out a rebalance (17 buckets).
const LATENCY_BUCKET_START_S: f64 = 0.0005;
const LATENCY_BUCKET_COUNT: u16 = 17;
/// Committed-offset series (group, topic, partition) in one scrape. Group ids
/// come from clients and are unbounded; past this a scrape reports the
/// number left out instead of growing without limit (20 000 series are
/// about 3 MB of text).
pub const MAX_GROUP_OFFSET_SERIES: usize = 20_000;
pub use crate::config::DEFAULT_METRICS_PORT;
/// How long shutdown waits for scrapes in progress before cutting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Open connections to the metrics listener. A Prometheus server keeps one;
/// beyond this, a new connection takes the slot of the oldest idle one, or
/// waits in the backlog while all are busy, so clients that connect and
/// idle cannot exhaust the broker's descriptors nor keep scrapers out.
const MAX_METRICS_CONNECTIONS: usize = 64;
/// A metrics connection is closed this long after it was accepted, in the
/// middle of reading or writing if need be: a client trickling bytes (or
/// reading none) holds a slot no longer. Prometheus reconnects for its next
/// scrape; its default scrape timeout is 10 s.
const METRICS_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// A metrics connection must send a whole request header this soon after it
/// connects, and after each answer: a scraper sends its request at once,
/// and a socket that sends nothing gives its slot back within seconds, not
/// at the end of its lifetime. Prometheus, whose connections idle between
/// scrapes, reconnects.
const METRICS_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Accept queue of the metrics listener: connections wait here while every
/// slot is busy; a few scrapers and health checks need far fewer.
const METRICS_LISTEN_BACKLOG: u32 = 128;

/// A label value from outside (a topic, a group id): escaped as the text
/// format requires, since prometheus-client writes label values verbatim
/// and a group id may hold a quote or a newline.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Text(Arc<str>);

/// The characters the text format escapes in a label value.
const ESCAPED: [char; 3] = ['\\', '"', '\n'];

impl Text {
    pub fn new(value: &str) -> Self {
        if !value.contains(ESCAPED) {
            return Self(Arc::from(value));
        }
        let mut escaped = String::with_capacity(value.len() + 8);
        for c in value.chars() {
            match c {
                '\\' => escaped.push_str("\\\\"),
                '"' => escaped.push_str("\\\""),
                '\n' => escaped.push_str("\\n"),
                c => escaped.push(c),
            }
        }
        Self(Arc::from(escaped))
    }
}

impl From<&Arc<str>> for Text {
    /// Shares the string when it needs no escaping (every legal topic name).
    fn from(value: &Arc<str>) -> Self {
        if value.contains(ESCAPED) {
            Self::new(value)
        } else {
            Self(Arc::clone(value))
        }
    }
}

impl EncodeLabelValue for Text {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, &self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    api: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: Text,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: Text,
    partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupPartitionLabels {
    group: Text,
    topic: Text,
    partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

/// What waits in purgatory (Kafka's `DelayedOperationPurgatory` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purgatory {
    /// Fetches long-polling for `fetch.min.bytes`.
    Fetch,
    /// acks=all produces waiting for followers (none until replication).
    Produce,
    /// JoinGroup and SyncGroup waiting for their rebalance.
    Rebalance,
}

impl Purgatory {
    /// In the order of their discriminants (they index [`Metrics::purgatory`]).
    const ALL: [Self; 3] = [Self::Fetch, Self::Produce, Self::Rebalance];

    fn name(self) -> &'static str {
        match self {
            Self::Fetch => "Fetch",
            Self::Produce => "Produce",
            Self::Rebalance => "Rebalance",
        }
    }
}

/// Counts one thing (an open connection, a parked request) in a gauge
/// while it lives, however it ends (a cancelled future drops it too).
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One API's request count and latency.
#[derive(Debug, Clone)]
struct ApiMetrics {
    requests: Counter,
    latency: Histogram,
}

/// The recorded metrics, and the registry they are served from.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// By API key.
    apis: Vec<Option<ApiMetrics>>,
    bytes_in: Family<TopicLabels, Counter>,
    bytes_out: Family<TopicLabels, Counter>,
    messages_in: Family<TopicLabels, Counter>,
    messages_out: Family<TopicLabels, Counter>,
    connections_active: Gauge,
    connections_accepted: Counter,
    /// By [`Purgatory`] discriminant.
    purgatory: [Gauge; 3],
}

impl Metrics {
    /// Registers every recorded metric; `apis` are the API keys answered
    /// (the broker passes the rows of the API table, `api::SUPPORTED_APIS`),
    /// each registered up front so that every API shows from the start.
    pub fn new(apis: &[ApiKey], node_id: i32) -> Self {
        let mut registry = Registry::with_prefix("strom");
        registry.register(
            "build",
            "The broker's version and node id",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ("node_id", node_id.to_string()),
            ]),
        );
        let requests: Family<ApiLabels, Counter> = Family::default();
        let latency: Family<ApiLabels, Histogram> = Family::new_with_constructor(|| {
            Histogram::new(exponential_buckets(
                LATENCY_BUCKET_START_S,
                2.0,
                LATENCY_BUCKET_COUNT,
            ))
        });
        let mut by_key: Vec<Option<ApiMetrics>> = Vec::new();
        for &key in apis {
            let index = api_index(key);
            if by_key.len() <= index {
                by_key.resize(index + 1, None);
            }
            let labels = ApiLabels {
                api: format!("{key:?}"),
            };
            by_key[index] = Some(ApiMetrics {
                requests: requests.get_or_create_owned(&labels),
                latency: latency.get_or_create_owned(&labels),
            });
        }
        registry.register(
            "requests",
            "Requests answered, per API (Kafka: RequestMetrics RequestsPerSec)",
            requests,
        );
        registry.register_with_unit(
            "request_duration",
            "Time from a request's arrival at the handler to its answer, per API, including time parked (Kafka: RequestMetrics TotalTimeMs)",
            Unit::Seconds,
            latency,
        );
        let bytes_in = Family::<TopicLabels, Counter>::default();
        let bytes_out = Family::<TopicLabels, Counter>::default();
        let messages_in = Family::<TopicLabels, Counter>::default();
        let messages_out = Family::<TopicLabels, Counter>::default();
        registry.register_with_unit(
            "topic_in",
            "Record batch bytes appended by producers, per topic (Kafka: BrokerTopicMetrics BytesInPerSec)",
            Unit::Bytes,
            bytes_in.clone(),
        );
        registry.register_with_unit(
            "topic_out",
            "Record batch bytes sent to consumers, per topic (Kafka: BrokerTopicMetrics BytesOutPerSec)",
            Unit::Bytes,
            bytes_out.clone(),
        );
        registry.register(
            "topic_in_messages",
            "Records appended by producers, per topic (Kafka: BrokerTopicMetrics MessagesInPerSec)",
            messages_in.clone(),
        );
        registry.register(
            "topic_out_messages",
            "Records sent to consumers (whole batches, as the batch headers count them), per topic",
            messages_out.clone(),
        );
        let connections_active = Gauge::default();
        let connections_accepted = Counter::default();
        registry.register(
            "connections_active",
            "Open client connections (Kafka: socket-server-metrics connection-count)",
            connections_active.clone(),
        );
        registry.register(
            "connections_accepted",
            "Client connections accepted since start (Kafka: connection-creation-total)",
            connections_accepted.clone(),
        );
        let purgatory_family = Family::<OperationLabels, Gauge>::default();
        let purgatory = Purgatory::ALL.map(|p| {
            purgatory_family.get_or_create_owned(&OperationLabels {
                operation: p.name(),
            })
        });
        registry.register(
            "purgatory_size",
            "Requests waiting in purgatory, per operation (Kafka: DelayedOperationPurgatory PurgatorySize)",
            purgatory_family,
        );
        Self {
            registry,
            apis: by_key,
            bytes_in,
            bytes_out,
            messages_in,
            messages_out,
            connections_active,
            connections_accepted,
            purgatory,
        }
    }

    /// One request of `key` answered after `elapsed`.
    pub fn record_request(&self, key: ApiKey, elapsed: Duration) {
        if let Some(Some(api)) = self.apis.get(api_index(key)) {
            api.requests.inc();
            api.latency.observe(elapsed.as_secs_f64());
        }
    }

    /// A producer's records appended to `topic`.
    pub fn record_in(&self, topic: &Arc<str>, bytes: u64, records: u64) {
        let labels = TopicLabels {
            topic: Text::from(topic),
        };
        self.bytes_in.get_or_create(&labels).inc_by(bytes);
        self.messages_in.get_or_create(&labels).inc_by(records);
    }

    /// Records of `topic` sent to a consumer.
    pub fn record_out(&self, topic: &Arc<str>, bytes: u64, records: u64) {
        let labels = TopicLabels {
            topic: Text::from(topic),
        };
        self.bytes_out.get_or_create(&labels).inc_by(bytes);
        self.messages_out.get_or_create(&labels).inc_by(records);
    }

    /// Drops a deleted topic's counters (a topic created again under the
    /// name starts from zero, as a new counter should).
    pub fn forget_topic(&self, topic: &str) {
        let labels = TopicLabels {
            topic: Text::new(topic),
        };
        for family in [
            &self.bytes_in,
            &self.bytes_out,
            &self.messages_in,
            &self.messages_out,
        ] {
            family.remove(&labels);
        }
    }

    /// Counts a request in `purgatory` until the guard drops.
    pub fn enter_purgatory(&self, purgatory: Purgatory) -> GaugeGuard {
        GaugeGuard::new(&self.purgatory[purgatory as usize])
    }

    /// Counts an accepted connection, and holds it in the open
    /// connections until the guard drops.
    pub fn open_connection(&self) -> GaugeGuard {
        self.connections_accepted.inc();
        GaugeGuard::new(&self.connections_active)
    }
}

/// Where an API's metrics are in [`Metrics::apis`]: its key.
fn api_index(key: ApiKey) -> usize {
    usize::try_from(key as i16).unwrap_or(0)
}

/// What a scrape reads: the metrics recorded as requests go, and the state
/// read at scrape time (the partitions, the groups' committed offsets). The
/// broker hands these to the listener; nothing else of it.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub recorded: Arc<Metrics>,
    pub replicas: Arc<ReplicaManager>,
    pub groups: Arc<GroupCoordinator>,
}

/// Whether a partition in `role` counts as under-replicated here: as in
/// Kafka, only its leader counts it (so a cluster's sum counts each
/// partition once), when its ISR is smaller than its replica set.
fn is_under_replicated(role: &Role) -> bool {
    match role {
        Role::Leader {
            isr,
            replication_factor,
            ..
        } => isr.len() < *replication_factor,
        Role::Follower { .. } => false,
    }
}

/// Reads the scrape-time metrics into a registry of their own.
async fn scrape_state(scrape: &Scrape) -> Registry {
    let mut registry = Registry::with_prefix("strom");
    let partitions = scrape.replicas.partitions();
    let log_size = Family::<PartitionLabels, Gauge>::default();
    let log_end_offset = Family::<PartitionLabels, Gauge>::default();
    let log_start_offset = Family::<PartitionLabels, Gauge>::default();
    let high_watermark = Family::<PartitionLabels, Gauge>::default();
    let segments = Family::<PartitionLabels, Gauge>::default();
    let mut offline = 0i64;
    let mut leaders = 0i64;
    let mut under_replicated = 0i64;
    let mut high_watermarks: std::collections::HashMap<(&str, i32), i64> =
        std::collections::HashMap::with_capacity(partitions.len());
    for p in &partitions {
        let hw = p.high_watermark();
        let labels = PartitionLabels {
            topic: Text::from(&p.topic),
            partition: p.index,
        };
        let size = i64::try_from(p.log.size_bytes()).unwrap_or(i64::MAX);
        log_size.get_or_create(&labels).set(size);
        log_end_offset
            .get_or_create(&labels)
            .set(p.log.log_end_offset());
        log_start_offset
            .get_or_create(&labels)
            .set(p.log.log_start_offset());
        high_watermark.get_or_create(&labels).set(hw);
        segments
            .get_or_create(&labels)
            .set(i64::try_from(p.log.segment_count()).unwrap_or(i64::MAX));
        if p.log.is_offline() {
            offline += 1;
        }
        let role = p.role();
        leaders += i64::from(matches!(role, Role::Leader { .. }));
        under_replicated += i64::from(is_under_replicated(&role));
        high_watermarks.insert((&p.topic, p.index), hw);
    }
    let gauge = |value: i64| {
        let g: Gauge = Gauge::default();
        g.set(value);
        g
    };
    registry.register(
        "partitions",
        "Partitions this broker holds (Kafka: ReplicaManager PartitionCount)",
        gauge(i64::try_from(partitions.len()).unwrap_or(i64::MAX)),
    );
    registry.register(
        "leader_partitions",
        "Partitions this broker leads (Kafka: ReplicaManager LeaderCount)",
        gauge(leaders),
    );
    registry.register(
        "under_replicated_partitions",
        "Partitions this broker leads whose in-sync replicas are fewer than their replicas (Kafka: ReplicaManager UnderReplicatedPartitions)",
        gauge(under_replicated),
    );
    registry.register(
        "offline_partitions",
        "Partitions whose log an I/O error took offline (Kafka: OfflinePartitionsCount)",
        gauge(offline),
    );
    registry.register_with_unit(
        "log_size",
        "Bytes of log data in a partition's segments (Kafka: Log Size)",
        Unit::Bytes,
        log_size,
    );
    registry.register(
        "log_end_offset",
        "Offset the next record appended to the partition gets (Kafka: Log LogEndOffset)",
        log_end_offset,
    );
    registry.register(
        "log_start_offset",
        "First offset a consumer can read (Kafka: Log LogStartOffset)",
        log_start_offset,
    );
    registry.register(
        "high_watermark",
        "Offset up to which all in-sync replicas have the partition's records; consumers read below it",
        high_watermark,
    );
    registry.register(
        "log_segments",
        "Segments in a partition's log (Kafka: Log NumLogSegments)",
        segments,
    );

    let committed = Family::<GroupPartitionLabels, Gauge>::default();
    let lag = Family::<GroupPartitionLabels, Gauge>::default();
    let mut left_out = 0usize;
    {
        // Every shard's lock, taken in partition order (nothing else takes
        // two), so the scrape sees each shard's offsets at one moment.
        let shards = scrape.groups.active_shards();
        let mut states = Vec::with_capacity(shards.len());
        for shard in &shards {
            states.push(shard.lock().await);
        }
        // In group order, so that past the bound the same series are left
        // out from one scrape to the next.
        let mut groups: Vec<_> = states.iter().flat_map(|s| s.offsets.iter()).collect();
        groups.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut series = 0usize;
        for (group, offsets) in groups {
            let group_label = Text::new(group);
            for ((topic, partition), value) in offsets {
                if series >= MAX_GROUP_OFFSET_SERIES {
                    left_out += 1;
                    continue;
                }
                series += 1;
                let labels = GroupPartitionLabels {
                    group: group_label.clone(),
                    topic: Text::new(topic),
                    partition: *partition,
                };
                committed.get_or_create(&labels).set(value.offset);
                if let Some(hw) = high_watermarks.get(&(topic.as_str(), *partition)) {
                    lag.get_or_create(&labels)
                        .set(hw.saturating_sub(value.offset).max(0));
                }
            }
        }
    }
    registry.register(
        "group_committed_offset",
        "A consumer group's committed offset of a partition",
        committed,
    );
    registry.register(
        "group_lag",
        "Records a consumer group has yet to consume: high watermark minus committed offset, never below 0 (kafka-consumer-groups' LAG)",
        lag,
    );
    registry.register(
        "group_offset_series_left_out",
        "Committed offsets left out of this scrape past its bound of series",
        gauge(i64::try_from(left_out).unwrap_or(i64::MAX)),
    );
    registry
}

/// The whole exposition: recorded metrics, then those read now.
pub async fn render(scrape: &Scrape) -> Result<String, std::fmt::Error> {
    let state = scrape_state(scrape).await;
    let mut text = String::with_capacity(64 * 1024);
    encode_registry(&mut text, &scrape.recorded.registry)?;
    encode_registry(&mut text, &state)?;
    encode_eof(&mut text)?;
    Ok(text)
}

/// OpenMetrics' content type, which Prometheus asks for and understands.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn metrics_handler(State(scrape): State<Scrape>) -> Response {
    match render(&scrape).await {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding the metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding the metrics failed\n",
            )
                .into_response()
        }
    }
}

async fn index_handler() -> &'static str {
    "Strom broker. Metrics: GET /metrics\n"
}

/// The bound metrics listener, ready to serve.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
    pub local_addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = crate::listener::bind(addr, METRICS_LISTEN_BACKLOG)?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
        })
    }

    /// Serves `/metrics` until the broker shuts down.
    pub fn spawn(self, scrape: Scrape, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let router = Router::new()
            .route("/metrics", get(metrics_handler))
            .route("/", get(index_handler))
            .with_state(scrape);
        let listener = BoundedListener::new(self.listener, MAX_METRICS_CONNECTIONS);
        tokio::spawn(async move {
            let serve = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                .into_future();
            tokio::pin!(serve);
            tokio::select! {
                result = &mut serve => {
                    if let Err(e) = result {
                        tracing::error!(error = %e, "metrics listener failed");
                    }
                }
                // A scrape that hangs (a client that never reads) must not
                // hold up shutdown.
                () = async {
                    shutdown.cancelled().await;
                    tokio::time::sleep(SHUTDOWN_GRACE).await;
                } => {}
            }
        })
    }
}

/// The metrics listener with its bounds: at most
/// [`MAX_METRICS_CONNECTIONS`] open, each for at most
/// [`METRICS_CONNECTION_LIFETIME`], each given [`METRICS_HEADER_TIMEOUT`] to
/// send a whole request header (after it connects, and again after each
/// answer); and when every slot is taken, a new connection takes the slot
/// of the oldest one still waiting for its request, so that idle sockets
/// cannot keep a scraper out.
#[derive(Debug)]
struct BoundedListener {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    /// The open connections, oldest first (pruned as they close).
    open: VecDeque<Arc<ConnectionState>>,
}

impl BoundedListener {
    fn new(listener: TcpListener, max_connections: usize) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(max_connections)),
            open: VecDeque::new(),
        }
    }

    /// Closes the oldest connection that is waiting for a request; `false`
    /// if every open connection is busy with one.
    fn evict_idle(&mut self) -> bool {
        self.open.retain(|c| !c.closed.load(Ordering::Acquire));
        let Some(at) = self
            .open
            .iter()
            .position(|c| c.awaiting_header.load(Ordering::Acquire))
        else {
            return false;
        };
        if let Some(idle) = self.open.remove(at) {
            idle.evict.cancel();
        }
        true
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = BoundedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let permit = match Arc::clone(&self.slots).try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    if !self.evict_idle() {
                        tracing::debug!(%peer, "metrics listener: every connection busy, waiting for a slot");
                    }
                    // The evicted connection's slot comes back as it closes;
                    // otherwise the first to finish frees one.
                    let Ok(permit) = Arc::clone(&self.slots).acquire_owned().await else {
                        // The semaphore is never closed; wait for shutdown instead.
                        return std::future::pending().await;
                    };
                    permit
                }
            };
            let state = Arc::new(ConnectionState {
                awaiting_header: AtomicBool::new(true),
                closed: AtomicBool::new(false),
                evict: CancellationToken::new(),
            });
            // Forget connections that have closed, so that the list holds at
            // most the open ones (max connections) however many come and go.
            self.open.retain(|c| !c.closed.load(Ordering::Acquire));
            self.open.push_back(Arc::clone(&state));
            let stream = BoundedStream {
                stream,
                deadline: Box::pin(tokio::time::sleep(METRICS_CONNECTION_LIFETIME)),
                header_deadline: Some(Box::pin(tokio::time::sleep(METRICS_HEADER_TIMEOUT))),
                header_tail: [0; 3],
                evicted: Box::pin(state.evict.clone().cancelled_owned()),
                state,
                _permit: permit,
            };
            return (stream, peer);
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// What the listener knows of an open connection.
#[derive(Debug)]
struct ConnectionState {
    /// No whole request header has come since it connected or was last
    /// answered: it may be closed to make room.
    awaiting_header: AtomicBool,
    /// The connection is gone (its stream dropped).
    closed: AtomicBool,
    /// Cancelled to close the connection for a newer one.
    evict: CancellationToken,
}

/// A metrics connection: its slot, and the times it must be done by.
struct BoundedStream {
    stream: TcpStream,
    deadline: Pin<Box<Sleep>>,
    /// Running while a request header is awaited: set on accept, cleared
    /// when the header's blank line arrives, started again by the first
    /// read after an answer was written.
    header_deadline: Option<Pin<Box<Sleep>>>,
    /// The last bytes read, to see a header's `\r\n\r\n` split across reads.
    header_tail: [u8; 3],
    evicted: Pin<Box<WaitForCancellationFutureOwned>>,
    state: Arc<ConnectionState>,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for BoundedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedStream")
            .field("stream", &self.stream)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl BoundedStream {
    /// Why the connection must close now, if it must.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        let timed_out =
            |why: &str| std::io::Error::new(std::io::ErrorKind::TimedOut, why.to_owned());
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Some(timed_out("metrics connection open too long"));
        }
        if self
            .header_deadline
            .as_mut()
            .is_some_and(|d| d.as_mut().poll(cx).is_ready())
        {
            return Some(timed_out("no whole request header in time"));
        }
        if self.evicted.as_mut().poll(cx).is_ready() {
            return Some(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "idle metrics connection closed for a new one",
            ));
        }
        None
    }

    /// Notes bytes read while a header is awaited; the header is whole at
    /// its blank line (requests here have no body: only GET is served).
    fn saw(&mut self, bytes: &[u8]) {
        const END: &[u8; 4] = b"\r\n\r\n";
        if self.header_deadline.is_none() || bytes.is_empty() {
            return;
        }
        // The blank line may straddle the previous read and this one.
        let mut seam = [0u8; 6];
        seam[..3].copy_from_slice(&self.header_tail);
        let head = bytes.len().min(3);
        seam[3..3 + head].copy_from_slice(&bytes[..head]);
        let whole =
            seam[..3 + head].windows(4).any(|w| w == END) || bytes.windows(4).any(|w| w == END);
        if whole {
            self.header_deadline = None;
            self.state.awaiting_header.store(false, Ordering::Release);
        }
        // Keep the last three bytes seen.
        let keep = bytes.len().min(3);
        self.header_tail.rotate_left(keep);
        self.header_tail[3 - keep..].copy_from_slice(&bytes[bytes.len() - keep..]);
    }
}

impl Drop for BoundedStream {
    fn drop(&mut self) {
        self.state.closed.store(true, Ordering::Release);
    }
}

impl AsyncRead for BoundedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.header_deadline.is_none() && self.state.awaiting_header.load(Ordering::Acquire) {
            // An answer was written: the next header is awaited from now.
            self.header_deadline = Some(Box::pin(tokio::time::sleep(METRICS_HEADER_TIMEOUT)));
            self.header_tail = [0; 3];
        }
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            self.saw(&buf.filled()[before..]);
        }
        result
    }
}

impl AsyncWrite for BoundedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        // Answering: once this is written, the connection waits for its
        // next request.
        self.state.awaiting_header.store(true, Ordering::Release);
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_leader_with_a_short_isr_counts_as_under_replicated() {
        let leader = |isr: &[i32], replication_factor| Role::Leader {
            leader_epoch: 3,
            partition_epoch: 0,
            isr: isr.to_vec(),
            replication_factor,
            followers: Vec::new(),
            epoch_start_offset: 0,
            pending_isr: None,
        };
        assert!(!is_under_replicated(&leader(&[1, 2, 3], 3)));
        assert!(is_under_replicated(&leader(&[1, 2], 3)));
        assert!(!is_under_replicated(&leader(&[1], 1)));
        assert!(!is_under_replicated(&Role::Follower {
            leader: 1,
            leader_epoch: 3
        }));
    }

    #[test]
    fn label_values_from_clients_are_escaped() {
        assert_eq!(&*Text::new("orders").0, "orders");
        assert_eq!(&*Text::new("a\"b\\c\nd").0, "a\\\"b\\\\c\\nd");
    }

    #[tokio::test(start_paused = true)]
    async fn metrics_connections_are_bounded_in_number_and_lifetime() {
        use axum::serve::Listener;
        use std::io::ErrorKind;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut bounded = BoundedListener::new(listener, 1);
        let mut buf = [0u8; 64];

        // A client that sends nothing is cut once the header timeout has
        // passed, long before the connection's lifetime.
        let _silent = TcpStream::connect(addr).await.unwrap();
        let (mut stream, _) = bounded.accept().await;
        let err = tokio::time::timeout(METRICS_CONNECTION_LIFETIME / 2, stream.read(&mut buf))
            .await
            .expect("cut by the header timeout")
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut);
        drop(stream);

        // One slot, held by a connection waiting for its request: a newer
        // connection takes it.
        let _idle = TcpStream::connect(addr).await.unwrap();
        let (mut idle, _) = bounded.accept().await;
        let reading = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            idle.read(&mut buf).await.map_err(|e| e.kind())
        });
        let mut scraper = TcpStream::connect(addr).await.unwrap();
        let (mut busy, _) = tokio::time::timeout(Duration::from_secs(1), bounded.accept())
            .await
            .expect("the idle connection makes room");
        assert_eq!(
            reading.await.unwrap().unwrap_err(),
            ErrorKind::ConnectionAborted
        );

        // A connection whose request is being answered keeps its slot: the
        // next one waits.
        scraper
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut request = Vec::new();
        while !request.ends_with(b"\r\n\r\n") {
            let n = busy.read(&mut buf).await.unwrap();
            request.extend_from_slice(&buf[..n]);
        }
        let _waiting = TcpStream::connect(addr).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_secs(1), bounded.accept())
                .await
                .is_err()
        );
        // Once answered, it may wait for its next request only as long as
        // for its first.
        busy.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        let err = tokio::time::timeout(METRICS_CONNECTION_LIFETIME / 2, busy.read(&mut buf))
            .await
            .expect("cut by the header timeout")
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut);
        drop(busy);
        let _next = TcpStream::connect(addr).await.unwrap();
        let (_stream, _) = tokio::time::timeout(Duration::from_secs(1), bounded.accept())
            .await
            .expect("the freed slot takes the waiting connection");
    }

    #[test]
    fn every_purgatory_shows_even_when_empty() {
        let metrics = Metrics::new(&[ApiKey::Produce], 1);
        let guard = metrics.enter_purgatory(Purgatory::Fetch);
        let mut text = String::new();
        encode_registry(&mut text, &metrics.registry).unwrap();
        assert!(
            text.contains("strom_purgatory_size{operation=\"Fetch\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("strom_purgatory_size{operation=\"Rebalance\"} 0"),
            "{text}"
        );
        drop(guard);
        text.clear();
        encode_registry(&mut text, &metrics.registry).unwrap();
        assert!(
            text.contains("strom_purgatory_size{operation=\"Fetch\"} 0"),
            "{text}"
        );
    }
}
