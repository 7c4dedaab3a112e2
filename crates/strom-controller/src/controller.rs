//! The controller: the single writer of the cluster metadata. Each change
//! goes through three steps: **propose** (check it against the latest image
//! and produce its records, [`crate::propose`], pure), **commit** (make the
//! records durable as one batch through the [`MetadataLog`] seam) and
//! **apply** (replay the committed records into a new image,
//! [`MetadataImage::apply_batch`], and publish it). Every so often, and at
//! clean shutdown, the image is written as a snapshot
//! ([`crate::snapshot`]) so a restart replays only the log after it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use strom_protocol::error_code::ErrorCode;
use strom_storage::{Clock, PartitionLog};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::image::{ConfigResource, MetadataImage, PartitionImage};
use crate::metadata_log::{LocalMetadataLog, MetadataLog, MetadataLogError};
use crate::observer::{MetadataChunk, Observer};
use crate::propose::{self, BrokerRegistration, Proposal, TopicElection};
use crate::quorum::{AppHandler, Quorum, QuorumConfig, QuorumError, WriteError};
use crate::quorum_description::{Observers, QuorumDescription};
use crate::reassign::{self, OngoingTopicReassignments, ReassignTopic, TopicReassignmentResult};
use crate::records::{MetadataRecord, decode_batch};
use crate::snapshot::SnapshotStore;

pub use strom_protocol::topic::METADATA_TOPIC;
/// Bound on one decoded metadata batch: a controller operation writes one
/// batch, and even 100,000 partition records are far below this.
pub const MAX_METADATA_BATCH_BYTES: usize = 256 << 20;
/// Bound on the partitions of one topic: each is a log with files and memory;
/// far beyond what a topic needs, it stops one request from asking for
/// millions of logs.
pub const MAX_PARTITIONS_PER_TOPIC: i32 = 100_000;
/// Bound on the metadata records of one user operation (a CreateTopics or
/// CreatePartitions request, a config change), Kafka's controller's
/// `MAX_RECORDS_PER_USER_OP`: an operation is one metadata batch, written and
/// replayed whole. Beyond it the request is refused with POLICY_VIOLATION, as
/// Kafka does. A topic of n partitions takes n + 1 records.
pub const MAX_RECORDS_PER_USER_OP: usize = 10_000;
/// Bound on one metadata batch's size on disk, Kafka's KRaft batch limit
/// (8 MiB): the metadata log's `max.message.bytes`. 10,000 partition records
/// take about 2 MiB; only huge config values come near it, and they are
/// refused with POLICY_VIOLATION rather than failing in the log.
pub const METADATA_BATCH_BYTES_MAX: u32 = 8 << 20;
/// The metadata log's settings: the defaults, with room for the largest
/// batch one operation may write.
pub fn metadata_log_config() -> strom_storage::LogConfig {
    strom_storage::LogConfig {
        max_message_bytes: METADATA_BATCH_BYTES_MAX,
        ..strom_storage::LogConfig::default()
    }
}

/// Open files for a metadata log: it has one active segment.
const METADATA_LOG_OPEN_FILES: usize = 8;

/// Opens the metadata log in `dir` (always recovered in full: it decides
/// what every other log is).
pub fn open_metadata_log(
    dir: &Path,
    clock: Arc<dyn Clock>,
) -> Result<Arc<PartitionLog>, strom_storage::StorageError> {
    Ok(Arc::new(PartitionLog::open(
        dir.to_path_buf(),
        metadata_log_config(),
        Arc::new(strom_storage::FileCache::new(METADATA_LOG_OPEN_FILES)),
        clock,
        strom_storage::LoadOptions::default(),
    )?))
}

/// An error code on the wire between nodes: its Kafka number.
mod error_code_number {
    use serde::{Deserialize, Deserializer, Serializer};
    use strom_protocol::error_code::ErrorCode;

    pub(super) fn serialize<S: Serializer>(code: &ErrorCode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i16(code.code())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ErrorCode, D::Error> {
        let code = i16::deserialize(d)?;
        Ok(ErrorCode::from_code(code).unwrap_or(ErrorCode::UnknownServerError))
    }
}

/// Producer ids handed to a broker at a time, as Kafka's controller does.
pub const PRODUCER_ID_BLOCK_SIZE: i64 = 1000;

/// A refused metadata change: the Kafka error code and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{code}: {}", message.as_deref().unwrap_or(""))]
pub struct ControllerError {
    #[serde(with = "error_code_number")]
    pub code: ErrorCode,
    pub message: Option<String>,
}

impl ControllerError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: Some(message.into()),
        }
    }
}

/// A CreateTopics entry. `num_partitions` and `replication_factor` of -1 mean
/// the broker defaults; `assignments` (partition -> replicas) replaces both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTopicRequest {
    pub name: String,
    pub num_partitions: i32,
    pub replication_factor: i16,
    pub assignments: Vec<(i32, Vec<i32>)>,
    /// Already validated by the caller (the broker knows the config definitions).
    pub configs: BTreeMap<String, String>,
}

/// What a created (or validated) topic looks like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedTopic {
    pub topic_id: Uuid,
    pub num_partitions: i32,
    pub replication_factor: i16,
}

/// A CreatePartitions entry: grow `name` to `count` partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatePartitionsRequest {
    pub name: String,
    pub count: i32,
    pub assignments: Option<Vec<Vec<i32>>>,
}

/// An AlterPartition request (KIP-497) for one partition: its leader,
/// `broker_id` at `broker_epoch`, asks that the ISR become `new_isr`, as of
/// the leader and partition epochs it knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlterPartitionRequest {
    pub broker_id: i32,
    pub broker_epoch: i64,
    pub topic_id: Uuid,
    pub partition: i32,
    pub leader_epoch: i32,
    pub new_isr: Vec<i32>,
    pub partition_epoch: i32,
}

/// ElectLeaders' election types (KIP-460), Kafka's `ElectionType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ElectionType {
    /// 0: the first replica leads, when it is live and in sync.
    Preferred,
    /// 1: a partition without a leader gets one, out of sync if need be.
    Unclean,
}

impl ElectionType {
    /// The type of wire value `value` (`None`: not one of Kafka's).
    pub fn from_code(value: i8) -> Option<Self> {
        match value {
            0 => Some(Self::Preferred),
            1 => Some(Self::Unclean),
            _ => None,
        }
    }
}

/// A block of producer ids `[start, start + len)` for one broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerIdBlock {
    pub start: i64,
    pub len: i64,
}

/// Metadata log bytes committed between two image snapshots: Kafka's
/// default for `metadata.log.max.record.bytes.between.snapshots` (20 MiB).
/// A restart replays at most about this much of the log (twice it if the
/// newest snapshot is unreadable); writing the whole image this rarely costs
/// little next to the commits that led to it.
pub const SNAPSHOT_INTERVAL_BYTES: u64 = 20 << 20;

/// Defaults the controller applies (broker configs of the same names).
#[derive(Debug, Clone, Copy)]
pub struct ControllerConfig {
    /// `num.partitions`.
    pub num_partitions: i32,
    /// `default.replication.factor`.
    pub default_replication_factor: i16,
    /// Metadata log bytes committed between two snapshots
    /// ([`SNAPSHOT_INTERVAL_BYTES`]; tests use less).
    pub snapshot_interval_bytes: u64,
    /// `broker.session.timeout.ms`: a broker not heard from for this long
    /// is fenced.
    pub broker_session_timeout_ms: u64,
    /// How long a metadata write (or its forwarding to the active
    /// controller) may take before it fails with REQUEST_TIMED_OUT.
    pub write_timeout_ms: u64,
    /// `unclean.leader.election.enable` of the broker's properties: the
    /// default where neither the topic nor the cluster's dynamic config
    /// says.
    pub unclean_leader_election_enable: bool,
    /// `auto.leader.rebalance.enable`, default true: the active controller
    /// moves leaderships back to preferred replicas
    /// ([`propose::rebalance_leaders`]).
    pub auto_leader_rebalance_enable: bool,
    /// `leader.imbalance.check.interval.seconds`, default 300: how often.
    pub leader_imbalance_check_interval_seconds: u64,
    /// `leader.imbalance.per.broker.percentage`, default 10: the share of a
    /// broker's preferred partitions led elsewhere that triggers the move.
    pub leader_imbalance_per_broker_percentage: i32,
    /// `min.insync.replicas` of the broker's properties, default 1: where
    /// neither the topic nor the cluster's dynamic config says, the ISR
    /// size below which replicas leaving the ISR stay eligible leaders
    /// (KIP-966).
    pub min_insync_replicas: i32,
}

/// [`ControllerConfig::write_timeout_ms`] by default: long enough for an
/// election (two election timeouts) and a commit on a loaded host, short
/// enough that an admin call without a quorum fails before the client's
/// own 30 s request timeout.
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 15_000;

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            num_partitions: 1,
            default_replication_factor: 1,
            snapshot_interval_bytes: SNAPSHOT_INTERVAL_BYTES,
            broker_session_timeout_ms: 9_000,
            write_timeout_ms: DEFAULT_WRITE_TIMEOUT_MS,
            unclean_leader_election_enable: false,
            auto_leader_rebalance_enable: true,
            leader_imbalance_check_interval_seconds: 300,
            leader_imbalance_per_broker_percentage: 10,
            min_insync_replicas: 1,
        }
    }
}

/// How the image was rebuilt at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadStats {
    /// The offset of the snapshot the image started from; `None`: the whole
    /// log was replayed.
    pub snapshot_offset: Option<i64>,
    /// Metadata log batches replayed after the snapshot (or from the start).
    pub replayed_batches: u64,
    /// Metadata records replayed after the snapshot (or from the start).
    pub replayed_records: u64,
}

/// The controller of this node: proposes changes against the newest image
/// and commits them, one at a time, through its backend: the controller
/// quorum (a cluster, or one node alone) or a plain metadata log (tests, and
/// reading a data directory from before the quorum). On a node that is not
/// the active controller, every operation is forwarded to the one that is.
#[derive(Debug)]
pub struct Controller {
    node_id: i32,
    config: ControllerConfig,
    backend: Backend,
    clock: Arc<dyn Clock>,
    /// The single writer: held from proposing a change against the latest
    /// image until its image is published, so changes are checked against
    /// every change before them and committed in order.
    write: tokio::sync::Mutex<WriterState>,
    /// When each broker was last heard from, on the active controller only
    /// (Kafka's BrokerHeartbeatManager keeps it in memory too): a new
    /// active controller gives every broker a full session.
    sessions: parking_lot::Mutex<HashMap<i32, Instant>>,
    /// What each broker's last heartbeat reported (DescribeQuorum's observers).
    observers: Observers,
    load_stats: LoadStats,
    shutdown: CancellationToken,
}

#[derive(Debug)]
enum Backend {
    /// One metadata log written by this node alone.
    Log {
        log: Arc<dyn MetadataLog>,
        /// Where image snapshots go; `None`: never snapshotted.
        snapshots: Option<SnapshotStore>,
        image: watch::Sender<Arc<MetadataImage>>,
    },
    Quorum(Arc<Quorum>),
    /// A broker-only node: the metadata fetched from the voters, every
    /// operation forwarded to the active controller.
    Observer(Arc<Observer>),
}

/// What the writer keeps between commits: when to snapshot next.
#[derive(Debug)]
struct WriterState {
    /// Batch bytes committed (or replayed at start) since the last snapshot.
    bytes_since_snapshot: u64,
    /// The offset of the newest snapshot written or loaded.
    snapshot_offset: Option<i64>,
}

type Writer<'a> = tokio::sync::MutexGuard<'a, WriterState>;

/// A broker's heartbeat (Kafka's BrokerHeartbeat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerHeartbeat {
    pub broker_id: i32,
    pub broker_epoch: i64,
    /// The offset after the last metadata record the broker applied.
    pub metadata_offset: i64,
    /// The broker asks to be fenced (it cannot serve).
    pub want_fence: bool,
    /// The broker is stopping (controlled shutdown).
    pub want_shutdown: bool,
}

/// The controller's answer to a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub is_caught_up: bool,
    pub is_fenced: bool,
    pub should_shutdown: bool,
}

/// One controller operation, as forwarded to the active controller.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Op {
    CreateTopics {
        requests: Vec<CreateTopicRequest>,
        validate_only: bool,
    },
    DeleteTopics {
        names: Vec<String>,
    },
    CreatePartitions {
        requests: Vec<CreatePartitionsRequest>,
        validate_only: bool,
    },
    AlterConfigs {
        changes: Vec<(ConfigResource, String, Option<String>)>,
    },
    AllocateProducerIds {
        broker_id: i32,
    },
    RegisterBroker(BrokerRegistration),
    Heartbeat(BrokerHeartbeat),
    /// An observer's fetch of the committed metadata after `offset`; any
    /// voter answers it.
    FetchMetadata {
        offset: i64,
    },
    DescribeQuorum,
    AlterPartition(AlterPartitionRequest),
    ElectLeaders {
        election: ElectionType,
        targets: Option<Vec<(String, Vec<i32>)>>,
    },
    AlterPartitionReassignments {
        topics: Vec<ReassignTopic>,
        allow_replication_factor_change: bool,
    },
    /// A read of the active controller's image, not behind the writer.
    ListPartitionReassignments {
        topics: Option<Vec<(String, Vec<i32>)>>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Reply {
    CreateTopics(Vec<Result<CreatedTopic, ControllerError>>),
    DeleteTopics(Vec<Result<Uuid, ControllerError>>),
    CreatePartitions(Vec<Result<(), ControllerError>>),
    AlterConfigs(Result<(), ControllerError>),
    ProducerIds(Result<ProducerIdBlock, ControllerError>),
    Registered(Result<i64, ControllerError>),
    Heartbeat(Result<HeartbeatReply, ControllerError>),
    Metadata(MetadataChunk),
    Quorum(QuorumDescription),
    AlterPartition(Result<PartitionImage, ControllerError>),
    ElectLeaders(Result<Vec<TopicElection>, ControllerError>),
    AlterPartitionReassignments(Result<Vec<TopicReassignmentResult>, ControllerError>),
    ListPartitionReassignments(Vec<OngoingTopicReassignments>),
    /// This node is not the active controller (the one it knows, if any).
    NotController {
        leader: Option<i32>,
    },
    /// The operation failed as a whole (no commit in time, a bad request).
    Failed(ControllerError),
}

/// How many election timeouts old the last entries of the node that led
/// before may be for its session to run from them (see
/// `run_active_duties`): an election takes one or two.
const PREVIOUS_LEADER_NEWS_TIMEOUTS: u32 = 3;

/// How often the active controller looks for brokers past their session,
/// and a forwarding node retries while there is no known active controller.
const LIVENESS_CHECK_INTERVAL: Duration = Duration::from_millis(200);

impl Controller {
    /// Opens the controller on this node's metadata log, with its image
    /// snapshots in the log's directory, without a quorum: loads the newest
    /// valid snapshot, replays the records after it, and on a new log
    /// writes the cluster id.
    pub fn open(
        node_id: i32,
        config: ControllerConfig,
        log: Arc<PartitionLog>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ControllerError> {
        let snapshots = SnapshotStore::new(log.dir());
        Self::open_with(
            node_id,
            config,
            Arc::new(LocalMetadataLog::new(log)),
            Some(snapshots),
            clock,
        )
    }

    /// Opens the controller on any metadata log (see [`Controller::open`]).
    pub fn open_with(
        node_id: i32,
        config: ControllerConfig,
        log: Arc<dyn MetadataLog>,
        snapshots: Option<SnapshotStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ControllerError> {
        let (image, stats, replayed_bytes) = replay(&*log, snapshots.as_ref())?;
        let (image_tx, _) = watch::channel(Arc::new(image));
        let controller = Self {
            node_id,
            config,
            backend: Backend::Log {
                log,
                snapshots,
                image: image_tx,
            },
            clock,
            write: tokio::sync::Mutex::new(WriterState {
                bytes_since_snapshot: replayed_bytes,
                snapshot_offset: stats.snapshot_offset,
            }),
            sessions: parking_lot::Mutex::new(HashMap::new()),
            observers: Observers::default(),
            load_stats: stats,
            shutdown: CancellationToken::new(),
        };
        let mut writer = controller
            .write
            .try_lock()
            .map_err(|_| ControllerError::new(ErrorCode::UnknownServerError, "writer busy"))?;
        if controller.image().cluster_id.is_empty() {
            controller.commit_to_log(&mut writer, propose::cluster_id())?;
        } else {
            controller.maybe_snapshot(&mut writer);
        }
        drop(writer);
        Ok(controller)
    }

    /// Starts the controller on the controller quorum, with the metadata
    /// log in `log_dir` (opened by `open_log`). A data directory from
    /// before the quorum (a metadata log without `quorum-state`) is read
    /// once, moved aside to `<dir>.pre-quorum`, and its image becomes the
    /// quorum's starting point; that is allowed only for a standalone node,
    /// since other voters would start from another image.
    pub async fn start(
        node_id: i32,
        config: ControllerConfig,
        quorum_config: QuorumConfig,
        log_dir: &Path,
        open_log: &(dyn Fn(&Path) -> Result<Arc<PartitionLog>, strom_storage::StorageError> + Sync),
        clock: Arc<dyn Clock>,
        listener: Option<TcpListener>,
    ) -> Result<Arc<Self>, ControllerError> {
        let storage = |e: &dyn std::fmt::Display| {
            ControllerError::new(ErrorCode::KafkaStorageError, e.to_string())
        };
        let mut log = open_log(log_dir).map_err(|e| storage(&e))?;
        let mut base = MetadataImage::default();
        let mut stats = LoadStats::default();
        if !crate::quorum::has_quorum_state(log_dir) && log.log_end_offset() > 0 {
            if !quorum_config.voters.is_empty() {
                return Err(ControllerError::new(
                    ErrorCode::InconsistentClusterId,
                    format!(
                        "{} holds the metadata of a single-node Strom from before the controller quorum; start it alone (without controller.quorum.voters) once, or give this node an empty data directory",
                        log_dir.display()
                    ),
                ));
            }
            let snapshots = SnapshotStore::new(log_dir);
            let (image, legacy_stats, _) =
                replay(&LocalMetadataLog::new(Arc::clone(&log)), Some(&snapshots))?;
            base = image;
            stats = legacy_stats;
            log.close().map_err(|e| storage(&e))?;
            drop(log);
            let aside = log_dir.with_extension("pre-quorum");
            std::fs::rename(log_dir, &aside).map_err(|e| storage(&e))?;
            tracing::info!(from = %aside.display(), offset = base.offset, "the metadata of this data directory now starts the controller quorum");
            log = open_log(log_dir).map_err(|e| storage(&e))?;
        }
        let quorum = Quorum::start(quorum_config, log, base, listener)
            .await
            .map_err(|e| match e {
                QuorumError::NotAVoter { .. } | QuorumError::VotersChanged { .. } => {
                    ControllerError::new(ErrorCode::InvalidRequest, e.to_string())
                }
                _ => storage(&e),
            })?;
        let quorum = Arc::new(quorum);
        let controller = Arc::new(Self {
            node_id,
            config,
            backend: Backend::Quorum(Arc::clone(&quorum)),
            clock,
            write: tokio::sync::Mutex::new(WriterState {
                bytes_since_snapshot: 0,
                snapshot_offset: None,
            }),
            sessions: parking_lot::Mutex::new(HashMap::new()),
            observers: Observers::default(),
            load_stats: stats,
            shutdown: CancellationToken::new(),
        });
        quorum.set_app_handler(Arc::new(Forwarded(Arc::downgrade(&controller))));
        tokio::spawn(Arc::clone(&controller).run_active_duties());
        Ok(controller)
    }

    /// Starts the controller of a broker-only node (Kafka's observer): it
    /// is not a voter; it follows the voters' committed metadata and
    /// forwards every operation to the active controller. `cluster_id` is
    /// the one this node's data directory names, if any: voters of another
    /// cluster refuse it ([`Controller::wrong_cluster`]).
    pub fn observe(
        node_id: i32,
        config: ControllerConfig,
        voters: &BTreeMap<i32, String>,
        cluster_id: Option<&str>,
        request_timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        let observer = Arc::new(Observer::new(node_id, voters, cluster_id, request_timeout));
        let controller = Arc::new(Self {
            node_id,
            config,
            backend: Backend::Observer(Arc::clone(&observer)),
            observers: Observers::default(),
            clock,
            write: tokio::sync::Mutex::new(WriterState {
                bytes_since_snapshot: 0,
                snapshot_offset: None,
            }),
            sessions: parking_lot::Mutex::new(HashMap::new()),
            load_stats: LoadStats::default(),
            shutdown: CancellationToken::new(),
        });
        let encode = |offset| serde_json::to_vec(&Op::FetchMetadata { offset }).unwrap_or_default();
        let decode = |bytes: &[u8]| match serde_json::from_slice::<Reply>(bytes) {
            Ok(Reply::Metadata(chunk)) => Some(chunk),
            _ => None,
        };
        tokio::spawn(observer.run(Box::new(encode), Box::new(decode)));
        controller
    }

    /// Ends, saying why, once this node cannot join because the voters
    /// belong to another cluster than its data directory (`None`: never,
    /// the node stopped first).
    pub fn wrong_cluster(&self) -> futures::future::BoxFuture<'static, Option<String>> {
        match &self.backend {
            Backend::Observer(o) => {
                let mut refused = o.wrong_cluster();
                Box::pin(async move {
                    refused
                        .wait_for(Option::is_some)
                        .await
                        .ok()
                        .and_then(|why| why.clone())
                })
            }
            Backend::Quorum(q) => {
                let mut refused = q.wrong_cluster();
                Box::pin(async move {
                    refused
                        .wait_for(Option::is_some)
                        .await
                        .ok()
                        .and_then(|why| why.as_ref().map(ToString::to_string))
                })
            }
            Backend::Log { .. } => Box::pin(std::future::pending()),
        }
    }

    /// The voters of the controller quorum (none for a standalone node).
    pub fn voter_ids(&self) -> Vec<i32> {
        match &self.backend {
            Backend::Quorum(q) => q.voter_ids(),
            Backend::Observer(o) => o.voter_ids(),
            Backend::Log { .. } => vec![self.node_id],
        }
    }

    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    /// How the image was rebuilt at start.
    pub fn load_stats(&self) -> LoadStats {
        self.load_stats
    }

    /// The controller quorum, when there is one.
    pub fn quorum(&self) -> Option<&Arc<Quorum>> {
        match &self.backend {
            Backend::Quorum(q) => Some(q),
            Backend::Log { .. } | Backend::Observer(_) => None,
        }
    }

    /// The active controller as this node knows it.
    pub fn active_controller(&self) -> Option<i32> {
        match &self.backend {
            Backend::Quorum(q) => q.leader(),
            Backend::Observer(o) => o.leader(),
            Backend::Log { .. } => Some(self.node_id),
        }
    }

    /// The current image.
    pub fn image(&self) -> Arc<MetadataImage> {
        match &self.backend {
            Backend::Log { image, .. } => Arc::clone(&image.borrow()),
            Backend::Quorum(q) => q.image(),
            Backend::Observer(o) => o.image(),
        }
    }

    /// Receives every new image.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MetadataImage>> {
        match &self.backend {
            Backend::Log { image, .. } => image.subscribe(),
            Backend::Quorum(q) => q.subscribe(),
            Backend::Observer(o) => o.subscribe(),
        }
    }

    /// Registers a broker process (BrokerRegistration); returns its broker
    /// epoch. A new registration starts fenced.
    pub async fn register_broker(
        &self,
        registration: BrokerRegistration,
    ) -> Result<i64, ControllerError> {
        match self.route(Op::RegisterBroker(registration)).await? {
            Reply::Registered(r) => r,
            other => Err(unexpected(&other)),
        }
    }

    /// A broker's heartbeat (BrokerHeartbeat).
    pub async fn heartbeat(
        &self,
        heartbeat: BrokerHeartbeat,
    ) -> Result<HeartbeatReply, ControllerError> {
        match self.route(Op::Heartbeat(heartbeat)).await? {
            Reply::Heartbeat(r) => r,
            other => Err(unexpected(&other)),
        }
    }

    /// Creates topics, each on its own (one failing does not stop the others).
    /// With `validate_only` nothing changes, but the answers are the same.
    pub async fn create_topics(
        &self,
        requests: Vec<CreateTopicRequest>,
        validate_only: bool,
    ) -> Vec<Result<CreatedTopic, ControllerError>> {
        let n = requests.len();
        match self
            .route(Op::CreateTopics {
                requests,
                validate_only,
            })
            .await
        {
            Ok(Reply::CreateTopics(r)) => r,
            Ok(other) => vec![Err(unexpected(&other)); n],
            Err(e) => vec![Err(e); n],
        }
    }

    /// Deletes topics by name; each answer is the deleted topic's id.
    pub async fn delete_topics(&self, names: &[String]) -> Vec<Result<Uuid, ControllerError>> {
        let n = names.len();
        match self
            .route(Op::DeleteTopics {
                names: names.to_vec(),
            })
            .await
        {
            Ok(Reply::DeleteTopics(r)) => r,
            Ok(other) => vec![Err(unexpected(&other)); n],
            Err(e) => vec![Err(e); n],
        }
    }

    /// Grows topics to the requested partition counts.
    pub async fn create_partitions(
        &self,
        requests: Vec<CreatePartitionsRequest>,
        validate_only: bool,
    ) -> Vec<Result<(), ControllerError>> {
        let n = requests.len();
        match self
            .route(Op::CreatePartitions {
                requests,
                validate_only,
            })
            .await
        {
            Ok(Reply::CreatePartitions(r)) => r,
            Ok(other) => vec![Err(unexpected(&other)); n],
            Err(e) => vec![Err(e); n],
        }
    }

    /// Sets (`Some`) or removes (`None`) config values, all or nothing.
    pub async fn alter_configs(
        &self,
        changes: Vec<(ConfigResource, String, Option<String>)>,
    ) -> Result<(), ControllerError> {
        match self.route(Op::AlterConfigs { changes }).await? {
            Reply::AlterConfigs(r) => r,
            other => Err(unexpected(&other)),
        }
    }

    /// Hands broker `broker_id` the next block of producer ids
    /// (AllocateProducerIds).
    pub async fn allocate_producer_ids(
        &self,
        broker_id: i32,
    ) -> Result<ProducerIdBlock, ControllerError> {
        match self.route(Op::AllocateProducerIds { broker_id }).await? {
            Reply::ProducerIds(r) => r,
            other => Err(unexpected(&other)),
        }
    }

    /// AlterPartition (KIP-497): the leader of a partition changes its ISR
    /// (see [`propose::alter_partition`] for what is refused, with Kafka's
    /// codes). Answers the partition as committed, or as it is when the
    /// request changes nothing.
    pub async fn alter_partition(
        &self,
        request: AlterPartitionRequest,
    ) -> Result<PartitionImage, ControllerError> {
        match self.route(Op::AlterPartition(request)).await? {
            Reply::AlterPartition(r) => r,
            other => Err(unexpected(&other)),
        }
    }

    /// ElectLeaders (KIP-460) for the partitions named (`None`: all), as
    /// [`propose::elect_leaders`]; the elections commit as one batch. `Err`:
    /// the request failed as a whole (no controller in time, too many
    /// elections for one batch).
    pub async fn elect_leaders(
        &self,
        election: ElectionType,
        targets: Option<Vec<(String, Vec<i32>)>>,
    ) -> Result<Vec<TopicElection>, ControllerError> {
        match self.route(Op::ElectLeaders { election, targets }).await? {
            Reply::ElectLeaders(r) => r,
            other => Err(unexpected(&other)),
        }
    }

    /// AlterPartitionReassignments (KIP-455): starts, replaces or cancels
    /// the reassignment of each partition named, as
    /// [`reassign::alter_partition_reassignments`]; the changes commit as
    /// one batch. `Err`: the request failed as a whole (no controller in
    /// time, too many changes for one batch).
    pub async fn alter_partition_reassignments(
        &self,
        topics: Vec<ReassignTopic>,
        allow_replication_factor_change: bool,
    ) -> Result<Vec<TopicReassignmentResult>, ControllerError> {
        let op = Op::AlterPartitionReassignments {
            topics,
            allow_replication_factor_change,
        };
        match self.route(op).await? {
            Reply::AlterPartitionReassignments(r) => r,
            other => Err(unexpected(&other)),
        }
    }

    /// ListPartitionReassignments: the reassignments in progress among the
    /// partitions named (`None`: all), as the active controller knows them.
    pub async fn list_partition_reassignments(
        &self,
        topics: Option<Vec<(String, Vec<i32>)>>,
    ) -> Result<Vec<OngoingTopicReassignments>, ControllerError> {
        match self
            .route(Op::ListPartitionReassignments { topics })
            .await?
        {
            Reply::ListPartitionReassignments(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    /// Writes a snapshot of the current image if it is newer than the
    /// newest snapshot, so the next start replays nothing (clean shutdown).
    /// A failure is logged: the next start replays more, nothing is lost.
    /// The quorum snapshots by itself.
    pub async fn snapshot_on_shutdown(&self) {
        let mut writer = self.write.lock().await;
        if let Backend::Log { .. } = self.backend
            && writer.snapshot_offset != Some(self.image().offset)
        {
            self.write_snapshot(&mut writer);
        }
    }

    /// Stops the controller's tasks and its quorum.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        match &self.backend {
            Backend::Quorum(q) => q.shutdown().await,
            Backend::Observer(o) => o.stop(),
            Backend::Log { .. } => {}
        }
    }

    /// Runs `op` on the active controller: here when this node is it,
    /// otherwise forwarded to it, retrying while there is none (an
    /// election) until the write timeout.
    async fn route(&self, op: Op) -> Result<Reply, ControllerError> {
        let timeout = Duration::from_millis(self.config.write_timeout_ms);
        let deadline = tokio::time::Instant::now() + timeout;
        if let Backend::Log { .. } = &self.backend {
            return match self.execute(op).await {
                Reply::Failed(e) => Err(e),
                reply => Ok(reply),
            };
        }
        let mut last = String::from("no active controller is known");
        loop {
            let reply = match self.active_controller() {
                Some(leader) if leader == self.node_id && self.quorum().is_some() => {
                    Some(self.execute(op.clone()).await)
                }
                Some(leader) => match self.forward(leader, &op, deadline).await {
                    Ok(reply) => Some(reply),
                    Err(e) => {
                        last = e;
                        None
                    }
                },
                None => None,
            };
            match reply {
                Some(Reply::NotController { leader }) => {
                    last = format!("the controller moved (to {leader:?})");
                }
                Some(Reply::Failed(e)) => return Err(e),
                Some(reply) => return Ok(reply),
                None => {}
            }
            if tokio::time::Instant::now() + LIVENESS_CHECK_INTERVAL >= deadline {
                return Err(ControllerError::new(
                    ErrorCode::RequestTimedOut,
                    format!("the metadata change did not commit within {timeout:?}: {last}"),
                ));
            }
            tokio::time::sleep(LIVENESS_CHECK_INTERVAL).await;
        }
    }

    async fn forward(
        &self,
        leader: i32,
        op: &Op,
        deadline: tokio::time::Instant,
    ) -> Result<Reply, String> {
        let request = serde_json::to_vec(op).map_err(|e| e.to_string())?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let called = match &self.backend {
            Backend::Quorum(q) => q.call(leader, request, left).await,
            Backend::Observer(o) => o.call(leader, request, left).await,
            Backend::Log { .. } => return Err("no controller quorum".to_owned()),
        };
        let bytes = called.map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| format!("an undecodable reply: {e}"))
    }

    /// Runs `op` here, as the active controller.
    async fn execute(&self, op: Op) -> Reply {
        if let Op::DescribeQuorum = op {
            // A read: not behind the writer.
            return self.describe_quorum_here();
        }
        if let Op::ListPartitionReassignments { topics } = &op {
            return self.list_reassignments_here(topics.as_deref());
        }
        let mut writer = self.write.lock().await;
        if let Backend::Quorum(q) = &self.backend {
            let timeout = Duration::from_millis(self.config.write_timeout_ms);
            match q.await_leader_caught_up(timeout).await {
                Ok(()) => {}
                Err(WriteError::NotLeader { leader }) => return Reply::NotController { leader },
                Err(e) => {
                    return Reply::Failed(ControllerError::new(
                        ErrorCode::RequestTimedOut,
                        e.to_string(),
                    ));
                }
            }
        }
        match op {
            Op::CreateTopics {
                requests,
                validate_only,
            } => Reply::CreateTopics(
                self.do_create_topics(&mut writer, requests, validate_only)
                    .await,
            ),
            Op::DeleteTopics { names } => {
                let mut results = Vec::with_capacity(names.len());
                for name in &names {
                    let result = match propose::delete_topic(&self.image(), name) {
                        Ok((records, topic_id)) => {
                            self.commit(&mut writer, records).await.map(|_| topic_id)
                        }
                        Err(e) => Err(e),
                    };
                    results.push(result);
                }
                Reply::DeleteTopics(results)
            }
            Op::CreatePartitions {
                requests,
                validate_only,
            } => {
                if let Err(e) = propose::create_partitions_bound(&self.image(), &requests) {
                    return Reply::CreatePartitions(
                        requests.iter().map(|_| Err(e.clone())).collect(),
                    );
                }
                let mut results = Vec::with_capacity(requests.len());
                for request in requests {
                    let result = match propose::create_partitions(&self.image(), request) {
                        Ok(_) if validate_only => Ok(()),
                        Ok(records) => self.commit(&mut writer, records).await.map(|_| ()),
                        Err(e) => Err(e),
                    };
                    results.push(result);
                }
                Reply::CreatePartitions(results)
            }
            Op::AlterConfigs { changes } => {
                Reply::AlterConfigs(match propose::alter_configs(&self.image(), changes) {
                    Ok(records) if records.is_empty() => Ok(()),
                    Ok(records) => self.commit(&mut writer, records).await.map(|_| ()),
                    Err(e) => Err(e),
                })
            }
            Op::AllocateProducerIds { broker_id } => {
                let (records, block) = propose::allocate_producer_ids(&self.image(), broker_id);
                Reply::ProducerIds(self.commit(&mut writer, records).await.map(|_| block))
            }
            Op::RegisterBroker(registration) => {
                Reply::Registered(self.do_register(&mut writer, registration).await)
            }
            Op::Heartbeat(heartbeat) => {
                Reply::Heartbeat(self.do_heartbeat(&mut writer, heartbeat).await)
            }
            Op::FetchMetadata { .. } => Reply::Failed(ControllerError::new(
                ErrorCode::InvalidRequest,
                "a metadata fetch is answered by any voter, not executed",
            )),
            // Answered above without the writer; the same answer here.
            Op::DescribeQuorum => self.describe_quorum_here(),
            Op::AlterPartition(request) => {
                Reply::AlterPartition(self.do_alter_partition(&mut writer, &request).await)
            }
            Op::ElectLeaders { election, targets } => {
                let (records, results) =
                    propose::elect_leaders(&self.image(), election, targets.as_deref());
                Reply::ElectLeaders(if records.is_empty() {
                    Ok(results)
                } else {
                    self.commit(&mut writer, records).await.map(|_| results)
                })
            }
            Op::AlterPartitionReassignments {
                topics,
                allow_replication_factor_change,
            } => {
                let (records, results) = reassign::alter_partition_reassignments(
                    &self.image(),
                    &topics,
                    allow_replication_factor_change,
                    self.config.unclean_leader_election_enable,
                    self.config.min_insync_replicas,
                );
                Reply::AlterPartitionReassignments(if records.is_empty() {
                    Ok(results)
                } else {
                    self.commit(&mut writer, records).await.map(|_| results)
                })
            }
            // Answered above without the writer; the same answer here.
            Op::ListPartitionReassignments { topics } => {
                self.list_reassignments_here(topics.as_deref())
            }
        }
    }

    /// ListPartitionReassignments from this node's image (the active
    /// controller's: everything committed).
    fn list_reassignments_here(&self, topics: Option<&[(String, Vec<i32>)]>) -> Reply {
        Reply::ListPartitionReassignments(reassign::list_partition_reassignments(
            &self.image(),
            topics,
        ))
    }

    async fn do_alter_partition(
        &self,
        writer: &mut Writer<'_>,
        request: &AlterPartitionRequest,
    ) -> Result<PartitionImage, ControllerError> {
        let image = match propose::alter_partition(
            &self.image(),
            request,
            self.config.min_insync_replicas,
        )? {
            Some(record) => self.commit(writer, vec![record]).await?,
            None => self.image(),
        };
        let partition = image
            .partition_by_id(&request.topic_id, request.partition)
            .cloned()
            .ok_or_else(|| {
                ControllerError::new(ErrorCode::UnknownTopicOrPartition, "the partition is gone")
            })?;
        if partition.leader != request.broker_id {
            // The ISR change completed a reassignment that removed the
            // sender: Kafka commits it and answers NEW_LEADER_ELECTED, so
            // the old leader waits for the metadata instead of acting on
            // the new ISR.
            return Err(ControllerError::new(
                ErrorCode::NewLeaderElected,
                format!(
                    "the ISR change completed a reassignment; the new leader is {}",
                    partition.leader
                ),
            ));
        }
        Ok(partition)
    }

    async fn do_create_topics(
        &self,
        writer: &mut Writer<'_>,
        requests: Vec<CreateTopicRequest>,
        validate_only: bool,
    ) -> Vec<Result<CreatedTopic, ControllerError>> {
        if let Err(e) = propose::create_topics_bound(&self.image(), &self.config, &requests) {
            return requests.iter().map(|_| Err(e.clone())).collect();
        }
        let mut seen = BTreeSet::new();
        let mut results = Vec::with_capacity(requests.len());
        for request in requests {
            if !seen.insert(request.name.clone()) {
                results.push(Err(ControllerError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "Topic {} appears more than once in the request",
                        request.name
                    ),
                )));
                continue;
            }
            let result = match propose::create_topic(&self.image(), &self.config, &request) {
                Ok((_, created)) if validate_only => Ok(CreatedTopic {
                    topic_id: Uuid::nil(),
                    ..created
                }),
                Ok((records, created)) => self.commit(writer, records).await.map(|_| created),
                Err(e) => Err(e),
            };
            results.push(result);
        }
        results
    }

    async fn do_register(
        &self,
        writer: &mut Writer<'_>,
        registration: BrokerRegistration,
    ) -> Result<i64, ControllerError> {
        let image = self.image();
        let session = Duration::from_millis(self.config.broker_session_timeout_ms);
        if let Some(b) = image.brokers.get(&registration.broker_id)
            && b.incarnation_id.is_some()
            && b.incarnation_id != Some(registration.incarnation_id)
            && !b.fenced
            && self
                .sessions
                .lock()
                .get(&b.id)
                .is_some_and(|last| last.elapsed() < session)
        {
            return Err(ControllerError::new(
                ErrorCode::DuplicateBrokerRegistration,
                format!(
                    "another process is registered as broker {} and its session is alive",
                    b.id
                ),
            ));
        }
        let image = match propose::register_broker(
            &image,
            &registration,
            self.config.min_insync_replicas,
        ) {
            Some(records) => self.commit(writer, records).await?,
            None => image,
        };
        self.sessions
            .lock()
            .insert(registration.broker_id, Instant::now());
        image
            .brokers
            .get(&registration.broker_id)
            .map(|b| b.epoch)
            .ok_or_else(|| ControllerError::new(ErrorCode::UnknownServerError, "registration lost"))
    }

    async fn do_heartbeat(
        &self,
        writer: &mut Writer<'_>,
        heartbeat: BrokerHeartbeat,
    ) -> Result<HeartbeatReply, ControllerError> {
        let image = self.image();
        let Some(broker) = image
            .brokers
            .get(&heartbeat.broker_id)
            .filter(|b| b.epoch == heartbeat.broker_epoch)
        else {
            return Err(ControllerError::new(
                ErrorCode::StaleBrokerEpoch,
                format!(
                    "broker {} epoch {} is not registered",
                    heartbeat.broker_id, heartbeat.broker_epoch
                ),
            ));
        };
        self.sessions.lock().insert(broker.id, Instant::now());
        self.observers.heard(
            broker.id,
            heartbeat.metadata_offset,
            image.offset,
            self.clock.now_ms(),
        );
        // Caught up: the broker has applied its own registration.
        let is_caught_up = heartbeat.metadata_offset > broker.epoch;
        let mut fenced = broker.fenced;
        // Kafka answers `should_shutdown` once the broker has applied its own
        // fencing (and so seen its leaderships move): the offset after it.
        let mut fenced_by = i64::MAX;
        if heartbeat.want_shutdown || heartbeat.want_fence {
            // A controlled shutdown or a broker asking to be fenced: clean
            // elections only.
            fenced_by = match propose::fence_broker(
                &image,
                broker.id,
                None,
                self.config.min_insync_replicas,
            ) {
                Some(records) => self.commit(writer, records).await?.offset,
                None => image.offset,
            };
            fenced = true;
        } else if fenced
            && is_caught_up
            && let Some(records) = propose::unfence_broker(
                &image,
                broker.id,
                self.config.unclean_leader_election_enable,
                self.config.min_insync_replicas,
            )
        {
            self.commit(writer, records).await?;
            fenced = false;
        }
        Ok(HeartbeatReply {
            is_caught_up,
            is_fenced: fenced,
            should_shutdown: heartbeat.want_shutdown && heartbeat.metadata_offset >= fenced_by,
        })
    }

    /// The active controller's own work, while this node is it: write the
    /// cluster id into a new cluster, fence brokers whose session expired
    /// (`broker.session.timeout.ms` without a heartbeat), and with
    /// `auto.leader.rebalance.enable` move leaderships back to preferred
    /// replicas every `leader.imbalance.check.interval.seconds`.
    async fn run_active_duties(self: Arc<Self>) {
        let Some(quorum) = self.quorum().cloned() else {
            return;
        };
        let session = Duration::from_millis(self.config.broker_session_timeout_ms);
        let rebalance_interval =
            Duration::from_secs(self.config.leader_imbalance_check_interval_seconds);
        let mut was_leader = false;
        // When the next leader rebalance is due (`None`: never).
        let mut next_rebalance = None;
        // The next check: at the interval, or sooner when a session runs
        // out before it (fencing waits for no tick).
        let mut next_check = Instant::now() + LIVENESS_CHECK_INTERVAL;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(next_check.into()) => {}
            }
            next_check = Instant::now() + LIVENESS_CHECK_INTERVAL;
            let leader = quorum.is_leader();
            if leader && !was_leader {
                // A new active controller: every broker gets a full session,
                // and the first rebalance is one interval away, as Kafka
                // schedules it. Except the node that led the quorum before:
                // a combined node's controller and broker go together, and
                // its broker has been silent since its last entries reached
                // this node. Its session runs from then (Kafka's runs from
                // now, so a failover that takes the active controller along
                // takes an election longer); alive, it heartbeats here as
                // soon as it learns of this leader, well within its session.
                let mut sessions = self.sessions.lock();
                sessions.clear();
                // Only recent news: a leader that went away is replaced
                // within a few election timeouts; older entries came from a
                // leader before it (this node was cut off meanwhile), which
                // may well be alive.
                if let Some((previous, heard)) = quorum.last_append_from()
                    && previous != self.node_id
                    && heard.elapsed() <= quorum.election_timeout() * PREVIOUS_LEADER_NEWS_TIMEOUTS
                {
                    sessions.insert(previous, heard);
                }
                drop(sessions);
                next_rebalance = Instant::now().checked_add(rebalance_interval);
            }
            was_leader = leader;
            if !leader {
                continue;
            }
            if self.image().cluster_id.is_empty() {
                let mut writer = self.write.lock().await;
                if quorum.await_leader_caught_up(session).await.is_ok()
                    && self.image().cluster_id.is_empty()
                    && let Err(e) = self.commit(&mut writer, propose::cluster_id()).await
                {
                    tracing::warn!(error = %e, "writing the cluster id failed; retrying");
                }
                continue;
            }
            let expired: Vec<i32> = {
                let image = self.image();
                let mut sessions = self.sessions.lock();
                let mut expired = Vec::new();
                for b in image.live_brokers() {
                    let heard = *sessions.entry(b.id).or_insert_with(Instant::now);
                    if heard.elapsed() > session {
                        expired.push(b.id);
                    } else {
                        next_check = next_check.min(heard + session + Duration::from_millis(1));
                    }
                }
                expired
            };
            for broker_id in expired {
                let mut writer = self.write.lock().await;
                if quorum.await_leader_caught_up(session).await.is_err() {
                    break;
                }
                if let Some(records) = propose::fence_broker(
                    &self.image(),
                    broker_id,
                    Some(self.config.unclean_leader_election_enable),
                    self.config.min_insync_replicas,
                ) {
                    tracing::warn!(
                        broker_id,
                        ?session,
                        "fencing a broker that missed its session"
                    );
                    if let Err(e) = self.commit(&mut writer, records).await {
                        tracing::warn!(broker_id, error = %e, "fencing failed; retrying");
                    }
                }
            }
            if self.config.auto_leader_rebalance_enable
                && next_rebalance.is_some_and(|due| Instant::now() >= due)
            {
                let more = self.rebalance_leaders(&quorum, session).await;
                // The bound was reached: go on at the next tick, as Kafka
                // reschedules at once.
                next_rebalance = if more {
                    Some(Instant::now())
                } else {
                    Instant::now().checked_add(rebalance_interval)
                };
            }
        }
    }

    /// One automatic leader rebalance ([`propose::rebalance_leaders`]);
    /// true when it elected as many leaders as one check may.
    async fn rebalance_leaders(&self, quorum: &Quorum, timeout: Duration) -> bool {
        let mut writer = self.write.lock().await;
        if quorum.await_leader_caught_up(timeout).await.is_err() {
            return false;
        }
        let records = propose::rebalance_leaders(
            &self.image(),
            self.config.leader_imbalance_per_broker_percentage,
        );
        if records.is_empty() {
            return false;
        }
        let elections = records.len();
        tracing::info!(
            elections,
            "moving leaderships back to their preferred replicas"
        );
        if let Err(e) = self.commit(&mut writer, records).await {
            tracing::warn!(error = %e, "the leader rebalance failed; retrying at the next check");
            return false;
        }
        elections >= propose::MAX_ELECTIONS_PER_IMBALANCE
    }

    /// Commits one operation's records and applies them: the records,
    /// proposed against the latest image (the caller holds the writer), are
    /// made durable (by the quorum, or the metadata log) and replayed into
    /// a new image, which is published.
    async fn commit(
        &self,
        writer: &mut Writer<'_>,
        records: Vec<MetadataRecord>,
    ) -> Result<Arc<MetadataImage>, ControllerError> {
        match &self.backend {
            Backend::Log { .. } => self.commit_to_log(writer, records),
            Backend::Quorum(q) => {
                // Checks the batch bound as the log would.
                let current = self.image();
                Proposal::new(records.clone(), &current, self.clock.now_ms())?;
                let timeout = Duration::from_millis(self.config.write_timeout_ms);
                match q.write(records, timeout).await {
                    Ok(_) => Ok(q.image()),
                    Err(WriteError::NotLeader { leader }) => Err(ControllerError::new(
                        ErrorCode::NotController,
                        format!("this node is no longer the active controller (now {leader:?})"),
                    )),
                    Err(WriteError::Storage(e)) => Err(ControllerError::new(
                        ErrorCode::KafkaStorageError,
                        format!("metadata log: {e}"),
                    )),
                    Err(e) => Err(ControllerError::new(
                        ErrorCode::RequestTimedOut,
                        e.to_string(),
                    )),
                }
            }
            Backend::Observer(_) => Err(ControllerError::new(
                ErrorCode::NotController,
                "a broker-only node is never the active controller",
            )),
        }
    }

    fn commit_to_log(
        &self,
        writer: &mut Writer<'_>,
        records: Vec<MetadataRecord>,
    ) -> Result<Arc<MetadataImage>, ControllerError> {
        let Backend::Log {
            log, image: images, ..
        } = &self.backend
        else {
            unreachable!("only the log backend commits to the log")
        };
        let current = self.image();
        let proposal = Proposal::new(records, &current, self.clock.now_ms())?;
        // Single writer: nothing was committed since the records were
        // proposed, and the log ends where the image does.
        debug_assert_eq!(proposal.based_on(), current.offset);
        debug_assert_eq!(log.log_end_offset(), current.offset);
        let base_offset = log.commit(proposal.batch()).map_err(storage_error)?;
        let mut image = (*current).clone();
        image.apply_batch(base_offset, proposal.records());
        let image = Arc::new(image);
        images.send_replace(Arc::clone(&image));
        writer.bytes_since_snapshot += proposal.batch().len() as u64;
        self.maybe_snapshot(writer);
        Ok(image)
    }

    /// Snapshots the image once enough has been committed since the last one.
    fn maybe_snapshot(&self, writer: &mut Writer<'_>) {
        if writer.bytes_since_snapshot >= self.config.snapshot_interval_bytes {
            self.write_snapshot(writer);
        }
    }

    fn write_snapshot(&self, writer: &mut Writer<'_>) {
        let Backend::Log {
            snapshots: Some(store),
            ..
        } = &self.backend
        else {
            return;
        };
        let image = self.image();
        match store.write(&image) {
            Ok(path) => {
                tracing::debug!(path = %path.display(), offset = image.offset, "metadata snapshot written");
                writer.bytes_since_snapshot = 0;
                writer.snapshot_offset = Some(image.offset);
            }
            // Not fatal: the log has every record; the next start replays more.
            Err(e) => {
                tracing::warn!(error = %e, offset = image.offset, "writing a metadata snapshot failed")
            }
        }
    }

    /// The quorum as the active controller describes it (DescribeQuorum):
    /// asked of the active controller, here or forwarded, as Kafka's
    /// brokers forward DescribeQuorum to it; retried while there is none,
    /// until the write timeout (then REQUEST_TIMED_OUT).
    pub async fn quorum_description(&self) -> Result<QuorumDescription, ControllerError> {
        match self.route(Op::DescribeQuorum).await? {
            Reply::Quorum(description) => Ok(description),
            other => Err(unexpected(&other)),
        }
    }

    /// [`Self::quorum_description`] on this node, if it is the leader.
    fn describe_quorum_here(&self) -> Reply {
        let now_ms = self.clock.now_ms();
        let (status, voters) = match &self.backend {
            Backend::Quorum(q) => (q.status(), q.voter_ids()),
            Backend::Observer(o) => return Reply::NotController { leader: o.leader() },
            // One node writing its own log: the only voter, always caught up.
            Backend::Log { .. } => {
                let offset = self.image().offset;
                let status = crate::quorum::QuorumStatus {
                    leader: Some(self.node_id),
                    epoch: 0,
                    high_watermark: offset,
                    log_end_offset: offset,
                    voters: Vec::new(),
                };
                (status, vec![self.node_id])
            }
        };
        if status.leader != Some(self.node_id) {
            return Reply::NotController {
                leader: status.leader,
            };
        }
        let acks = self.quorum().map(|q| q.follower_acks()).unwrap_or_default();
        Reply::Quorum(crate::quorum_description::describe_with_acks(
            &status,
            &voters,
            &self.observers,
            now_ms,
            &acks,
        ))
    }
}

fn unexpected(reply: &Reply) -> ControllerError {
    ControllerError::new(
        ErrorCode::UnknownServerError,
        format!("an unexpected controller reply: {reply:?}"),
    )
}

/// Loads the image of a metadata log without a quorum: the newest valid
/// snapshot and the records after it.
fn replay(
    log: &dyn MetadataLog,
    snapshots: Option<&SnapshotStore>,
) -> Result<(MetadataImage, LoadStats, u64), ControllerError> {
    let log_start_offset = log.log_start_offset();
    let snapshot = snapshots.and_then(|s| s.load_newest(log_start_offset, log.log_end_offset()));
    let mut stats = LoadStats {
        snapshot_offset: snapshot.as_ref().map(|image| image.offset),
        ..LoadStats::default()
    };
    let mut image = snapshot.unwrap_or_default();
    let mut replayed_bytes = 0u64;
    let mut failure = None;
    log.replay(
        image.offset.max(log_start_offset),
        &mut |base_offset, bytes| {
            if failure.is_some() {
                return;
            }
            match decode_batch(&Bytes::copy_from_slice(bytes)) {
                Ok(records) => {
                    // The batch holding the snapshot's offset is replayed
                    // from it: records below are in the image already.
                    let skip = usize::try_from(image.offset - base_offset).unwrap_or(0);
                    let tail = records.get(skip..).unwrap_or_default();
                    image.apply_batch(base_offset + skip as i64, tail);
                    stats.replayed_batches += 1;
                    stats.replayed_records += tail.len() as u64;
                    replayed_bytes += bytes.len() as u64;
                }
                Err(e) => failure = Some(format!("metadata batch at offset {base_offset}: {e}")),
            }
        },
    )
    .map_err(|e| ControllerError::new(ErrorCode::KafkaStorageError, e.to_string()))?;
    if let Some(reason) = failure {
        // The log passed CRC checks, so this is a record we cannot read:
        // refuse to start rather than serve a wrong image.
        return Err(ControllerError::new(ErrorCode::UnknownServerError, reason));
    }
    tracing::info!(
        offset = image.offset,
        snapshot = ?stats.snapshot_offset,
        replayed_records = stats.replayed_records,
        "metadata image loaded"
    );
    Ok((image, stats, replayed_bytes))
}

/// Answers operations forwarded from other nodes.
#[derive(Debug)]
struct Forwarded(std::sync::Weak<Controller>);

impl AppHandler for Forwarded {
    fn handle(&self, _from: u64, request: Vec<u8>) -> futures::future::BoxFuture<'static, Vec<u8>> {
        let controller = self.0.upgrade();
        Box::pin(async move {
            let reply = match (controller, serde_json::from_slice::<Op>(&request)) {
                (Some(c), Ok(Op::FetchMetadata { offset })) => match c.quorum() {
                    Some(q) => Reply::Metadata(MetadataChunk::serve(q, offset).await),
                    None => Reply::NotController { leader: None },
                },
                (Some(c), Ok(op)) => {
                    if c.quorum().is_some_and(|q| q.is_leader()) {
                        c.execute(op).await
                    } else {
                        Reply::NotController {
                            leader: c.active_controller(),
                        }
                    }
                }
                (None, _) => Reply::NotController { leader: None },
                (Some(_), Err(e)) => Reply::Failed(ControllerError::new(
                    ErrorCode::InvalidRequest,
                    format!("an undecodable controller request: {e}"),
                )),
            };
            serde_json::to_vec(&reply).unwrap_or_default()
        })
    }
}
/// KAFKA_STORAGE_ERROR for a metadata log that failed.
fn storage_error(e: MetadataLogError) -> ControllerError {
    ControllerError::new(ErrorCode::KafkaStorageError, format!("metadata log: {e}"))
}

/// A random UUID as Kafka makes them: never the nil UUID, never the metadata
/// topic's reserved id, never one whose string form starts with '-'.
pub fn random_kafka_uuid() -> Uuid {
    loop {
        let id = Uuid::new_v4();
        let reserved = id.as_u128() <= 1;
        if !reserved && !kafka_uuid_string(&id).starts_with('-') {
            return id;
        }
    }
}

/// Kafka's string form of a UUID: URL-safe base64 without padding (22 chars).
pub fn kafka_uuid_string(id: &Uuid) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = id.as_bytes();
    let mut out = String::with_capacity(22);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// Parses Kafka's string form of a UUID (see [`kafka_uuid_string`]).
pub fn parse_kafka_uuid(s: &str) -> Option<Uuid> {
    if s.len() != 22 {
        return None;
    }
    let mut bits: u128 = 0;
    let mut count = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        count += 6;
        if count <= 128 {
            bits = (bits << 6) | u128::from(v);
        } else {
            // The last character carries 2 bits of data and 4 of padding.
            if v & 0x0f != 0 {
                return None;
            }
            bits = (bits << 2) | u128::from(v >> 4);
        }
    }
    Some(Uuid::from_u128(bits))
}

#[cfg(test)]
mod tests {
    use strom_storage::{FileCache, LoadOptions, SystemClock};

    use super::*;

    pub(super) async fn open(dir: &std::path::Path) -> Controller {
        let log = PartitionLog::open(
            dir,
            metadata_log_config(),
            Arc::new(FileCache::default()),
            Arc::new(SystemClock),
            LoadOptions::default(),
        )
        .unwrap();
        let controller = Controller::open(
            1,
            ControllerConfig::default(),
            Arc::new(log),
            Arc::new(SystemClock),
        )
        .unwrap();
        join(&controller, None).await;
        controller
    }

    /// Registers broker 1 and heartbeats it, unfenced.
    pub(super) async fn join(c: &Controller, rack: Option<String>) {
        let epoch = c.register_broker(registration(rack)).await.unwrap();
        let reply = c
            .heartbeat(BrokerHeartbeat {
                broker_id: 1,
                broker_epoch: epoch,
                metadata_offset: c.image().offset,
                want_fence: false,
                want_shutdown: false,
            })
            .await
            .unwrap();
        assert!(!reply.is_fenced);
    }

    pub(super) fn registration(rack: Option<String>) -> BrokerRegistration {
        BrokerRegistration {
            broker_id: 1,
            incarnation_id: Uuid::from_u128(1),
            host: "localhost".to_owned(),
            port: 9092,
            rack,
            clean_shutdown: true,
        }
    }

    pub(super) fn topic(name: &str, partitions: i32, rf: i16) -> CreateTopicRequest {
        CreateTopicRequest {
            name: name.to_owned(),
            num_partitions: partitions,
            replication_factor: rf,
            assignments: vec![],
            configs: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn topics_follow_kafkas_rules_and_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cluster_id;
        let orders_id;
        {
            let c = open(dir.path()).await;
            cluster_id = c.image().cluster_id.clone();
            assert_eq!(cluster_id.len(), 22);
            let results = c
                .create_topics(
                    vec![
                        topic("orders", 3, 1),
                        topic("bad name", 1, 1),
                        topic("replicated", 1, 3),
                        topic("zero", 0, 1),
                        topic("defaults", -1, -1),
                        topic(METADATA_TOPIC, 1, 1),
                    ],
                    false,
                )
                .await;
            orders_id = results[0].as_ref().unwrap().topic_id;
            assert_eq!(
                results[1].as_ref().unwrap_err().code,
                ErrorCode::InvalidTopicException
            );
            assert_eq!(
                results[2].as_ref().unwrap_err().code,
                ErrorCode::InvalidReplicationFactor
            );
            assert_eq!(
                results[3].as_ref().unwrap_err().code,
                ErrorCode::InvalidPartitions
            );
            assert_eq!(results[4].as_ref().unwrap().num_partitions, 1);
            assert_eq!(
                results[5].as_ref().unwrap_err().code,
                ErrorCode::InvalidTopicException
            );
            let again = c
                .create_topics(vec![topic("orders", 1, 1), topic("orders_", 1, 1)], false)
                .await;
            assert_eq!(
                again[0].as_ref().unwrap_err().code,
                ErrorCode::TopicAlreadyExists
            );
            assert!(again[1].is_ok());
            let collides = c.create_topics(vec![topic("orders.", 1, 1)], false).await;
            assert_eq!(
                collides[0].as_ref().unwrap_err().code,
                ErrorCode::InvalidTopicException
            );
            let validated = c.create_topics(vec![topic("dry", 2, 1)], true).await;
            assert!(validated[0].is_ok());
            assert!(c.image().topic("dry").is_none());
            assert!(
                c.create_partitions(
                    vec![CreatePartitionsRequest {
                        name: "orders".into(),
                        count: 5,
                        assignments: None
                    }],
                    false
                )
                .await[0]
                    .is_ok()
            );
            assert_eq!(
                c.delete_topics(&["defaults".to_owned()]).await[0]
                    .as_ref()
                    .map(|_| ()),
                Ok(())
            );
            let first = c.allocate_producer_ids(1).await.unwrap();
            let second = c.allocate_producer_ids(1).await.unwrap();
            assert_eq!(second.start, first.start + PRODUCER_ID_BLOCK_SIZE);
        }
        let c = open(dir.path()).await;
        let image = c.image();
        assert_eq!(image.cluster_id, cluster_id);
        let orders = image.topic("orders").unwrap();
        assert_eq!(orders.id, orders_id);
        assert_eq!(orders.partitions.len(), 5);
        assert_eq!(orders.partitions[4].leader, 1);
        assert!(image.topic("defaults").is_none());
        assert!(image.topic_by_id(&orders_id).is_some());
        assert_eq!(
            c.allocate_producer_ids(1).await.unwrap().start,
            2 * PRODUCER_ID_BLOCK_SIZE
        );
    }

    #[tokio::test]
    async fn uuid_strings_are_kafkas() {
        let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        // Kafka's Uuid.toString(): URL-safe base64 of the 16 bytes, no padding.
        assert_eq!(kafka_uuid_string(&id), "ASNFZ4mrze8BI0VniavN7w");
        assert_eq!(parse_kafka_uuid("ASNFZ4mrze8BI0VniavN7w"), Some(id));
        for _ in 0..100 {
            let id = random_kafka_uuid();
            assert_eq!(parse_kafka_uuid(&kafka_uuid_string(&id)), Some(id));
        }
        assert_eq!(parse_kafka_uuid("not a uuid"), None);
    }
}

#[cfg(test)]
mod operation_bound_tests {
    use super::tests::{open, topic};
    use super::*;

    #[tokio::test]
    async fn one_operation_takes_up_to_max_records_per_user_op_and_no_more() {
        let dir = tempfile::tempdir().unwrap();
        let controller = open(dir.path()).await;
        // 10,000 partitions: 10,001 records, one too many.
        let refused = controller
            .create_topics(vec![topic("huge", 10_000, 1)], false)
            .await;
        let e = refused[0].clone().unwrap_err();
        assert_eq!(e.code, ErrorCode::PolicyViolation);
        assert!(e.message.unwrap().contains("10001"));
        // Over the request: each topic fits, both together do not.
        let refused = controller
            .create_topics(
                vec![topic("half-1", 6_000, 1), topic("half-2", 6_000, 1)],
                false,
            )
            .await;
        assert!(
            refused
                .iter()
                .all(|r| r.as_ref().unwrap_err().code == ErrorCode::PolicyViolation)
        );
        assert_eq!(controller.image().topic_count(), 0);
        // Exactly the bound: one batch of 10,000 records, replayed whole.
        let created = controller
            .create_topics(vec![topic("big", 9_999, 1)], false)
            .await;
        assert_eq!(created[0].as_ref().unwrap().num_partitions, 9_999);
        let refused = controller
            .create_partitions(
                vec![CreatePartitionsRequest {
                    name: "big".to_owned(),
                    count: 9_999 + 10_001,
                    assignments: None,
                }],
                false,
            )
            .await;
        assert_eq!(
            refused[0].clone().unwrap_err().code,
            ErrorCode::PolicyViolation
        );
        // A config value too big for one metadata batch.
        let huge = "x".repeat(METADATA_BATCH_BYTES_MAX as usize);
        let e = controller
            .alter_configs(vec![(
                ConfigResource::Topic("big".to_owned()),
                "retention.ms".to_owned(),
                Some(huge),
            )])
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::PolicyViolation);
        drop(controller);
        let reopened = open(dir.path()).await;
        let image = reopened.image();
        assert_eq!(image.topic_count(), 1);
        assert_eq!(image.topic("big").unwrap().partitions.len(), 9_999);
    }
}

#[cfg(test)]
mod seam_tests {
    use strom_storage::SystemClock;

    use super::tests::{join, topic};
    use super::*;
    use crate::metadata_log::MemoryMetadataLog;

    fn open_on(log: &Arc<MemoryMetadataLog>) -> Controller {
        let log: Arc<dyn MetadataLog> = Arc::clone(log) as Arc<dyn MetadataLog>;
        Controller::open_with(
            1,
            ControllerConfig::default(),
            log,
            None,
            Arc::new(SystemClock),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn each_operation_is_one_committed_batch_and_replays_to_the_same_image() {
        let log = Arc::new(MemoryMetadataLog::new());
        let controller = open_on(&log);
        join(&controller, None).await;
        // Cluster id, the broker registered, the broker unfenced.
        assert_eq!(log.batch_count(), 3);
        let results = controller
            .create_topics(vec![topic("a", 2, 1), topic("b", 1, 1)], false)
            .await;
        assert!(results.iter().all(Result::is_ok));
        // One batch per topic, each checked against the image after the one before.
        assert_eq!(log.batch_count(), 5);
        assert_eq!(
            controller
                .create_topics(vec![topic("a", 1, 1)], false)
                .await[0]
                .clone()
                .unwrap_err()
                .code,
            ErrorCode::TopicAlreadyExists
        );
        // A validation-only request and a refused one commit nothing.
        controller
            .create_topics(vec![topic("dry", 1, 1)], true)
            .await;
        assert_eq!(log.batch_count(), 5);
        controller
            .alter_configs(vec![(
                ConfigResource::Topic("a".to_owned()),
                "retention.ms".to_owned(),
                Some("1".to_owned()),
            )])
            .await
            .unwrap();
        assert_eq!(controller.image().offset, log.log_end_offset());
        let again = open_on(&log);
        assert_eq!(*again.image(), *controller.image());
        assert_eq!(again.load_stats().snapshot_offset, None);
        assert_eq!(
            again.load_stats().replayed_records,
            u64::try_from(log.log_end_offset()).unwrap()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_operations_are_committed_one_at_a_time_in_order() {
        let log = Arc::new(MemoryMetadataLog::new());
        let controller = Arc::new(open_on(&log));
        join(&controller, None).await;
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let controller = Arc::clone(&controller);
                tokio::spawn(async move {
                    for i in 0..10 {
                        // Every task also races for the same name: one wins.
                        controller
                            .create_topics(vec![topic(&format!("t{t}-{i}"), 1, 1)], false)
                            .await;
                        controller
                            .create_topics(vec![topic(&format!("shared-{i}"), 1, 1)], false)
                            .await;
                        controller.allocate_producer_ids(1).await.unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.await.unwrap();
        }
        let image = controller.image();
        assert_eq!(image.topic_count(), 40 + 10);
        assert_eq!(image.next_producer_id_block, 40 * PRODUCER_ID_BLOCK_SIZE);
        assert_eq!(image.offset, log.log_end_offset());
        assert_eq!(*open_on(&log).image(), *image);
    }
}

#[cfg(test)]
mod snapshot_restart_tests {
    use std::path::Path;

    use strom_storage::{FileCache, LoadOptions, SystemClock};

    use super::tests::{join, topic};
    use super::*;
    use crate::snapshot::{SnapshotStore, snapshot_file_name};

    /// Small enough that the operations below take several snapshots.
    const TEST_SNAPSHOT_INTERVAL_BYTES: u64 = 16 << 10;

    fn partition_log(dir: &Path) -> Arc<PartitionLog> {
        Arc::new(
            PartitionLog::open(
                dir,
                metadata_log_config(),
                Arc::new(FileCache::default()),
                Arc::new(SystemClock),
                LoadOptions::default(),
            )
            .unwrap(),
        )
    }

    fn config() -> ControllerConfig {
        ControllerConfig {
            snapshot_interval_bytes: TEST_SNAPSHOT_INTERVAL_BYTES,
            ..ControllerConfig::default()
        }
    }

    /// Opens with snapshots, as a broker does.
    fn open(dir: &Path) -> Controller {
        Controller::open(1, config(), partition_log(dir), Arc::new(SystemClock)).unwrap()
    }

    /// The image a replay of the whole log gives (snapshots not read).
    fn full_replay(dir: &Path) -> Controller {
        Controller::open_with(
            1,
            config(),
            Arc::new(LocalMetadataLog::new(partition_log(dir))),
            None,
            Arc::new(SystemClock),
        )
        .unwrap()
    }

    /// Many operations of every kind; returns the records committed.
    async fn many_operations(c: &Controller) -> u64 {
        join(c, Some("r1".to_owned())).await;
        for i in 0..150 {
            let name = format!("topic-{i}");
            assert!(c.create_topics(vec![topic(&name, 3, 1)], false).await[0].is_ok());
            c.alter_configs(vec![
                (
                    ConfigResource::Topic(name.clone()),
                    "retention.ms".to_owned(),
                    Some(i.to_string()),
                ),
                (
                    ConfigResource::Broker(Some(1)),
                    "log.retention.ms".to_owned(),
                    Some(i.to_string()),
                ),
            ])
            .await
            .unwrap();
            if i % 3 == 0 {
                assert!(c.delete_topics(std::slice::from_ref(&name)).await[0].is_ok());
            }
            if i % 5 == 0 && i > 0 {
                assert!(
                    c.create_partitions(
                        vec![CreatePartitionsRequest {
                            name: "topic-1".to_owned(),
                            count: 3 + i / 5,
                            assignments: None,
                        }],
                        false
                    )
                    .await[0]
                        .is_ok()
                );
                c.allocate_producer_ids(1).await.unwrap();
            }
        }
        c.alter_configs(vec![(
            ConfigResource::Broker(None),
            "log.retention.ms".to_owned(),
            Some("7".to_owned()),
        )])
        .await
        .unwrap();
        u64::try_from(c.image().offset).unwrap()
    }

    #[tokio::test]
    async fn a_restart_replays_only_the_records_after_the_newest_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let records = {
            let c = open(dir.path());
            many_operations(&c).await
            // Dropped without a shutdown snapshot, as in a crash.
        };
        let snapshots = SnapshotStore::new(dir.path()).list().unwrap();
        assert_eq!(snapshots.len(), 2, "{snapshots:?}");
        let newest = snapshots[1].0;
        let reopened = open(dir.path());
        let stats = reopened.load_stats();
        assert_eq!(stats.snapshot_offset, Some(newest));
        assert_eq!(
            stats.replayed_records,
            records - u64::try_from(newest).unwrap()
        );
        assert!(
            stats.replayed_records < records / 4,
            "{stats:?} of {records}"
        );
        let image = reopened.image();
        drop(reopened);
        let full = full_replay(dir.path());
        assert_eq!(full.load_stats().replayed_records, records);
        assert_eq!(*full.image(), *image);
        assert!(image.topic("topic-1").is_some() && image.topic("topic-0").is_none());
        drop(full);

        // After a clean shutdown nothing is replayed, and the image is the same.
        let c = open(dir.path());
        assert!(c.create_topics(vec![topic("after", 1, 1)], false).await[0].is_ok());
        c.snapshot_on_shutdown().await;
        let before = c.image();
        drop(c);
        let c = open(dir.path());
        assert_eq!(c.load_stats().snapshot_offset, Some(before.offset));
        assert_eq!(c.load_stats().replayed_records, 0);
        assert_eq!(*c.image(), *before);
    }

    #[tokio::test]
    async fn a_damaged_snapshot_is_ignored_and_the_log_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let records = {
            let c = open(dir.path());
            let records = many_operations(&c).await;
            c.snapshot_on_shutdown().await;
            records
        };
        let expected = full_replay(dir.path()).image();
        let store = SnapshotStore::new(dir.path());
        let snapshots = store.list().unwrap();
        let (newest, older) = (&snapshots[1], &snapshots[0]);
        assert_eq!(newest.0, i64::try_from(records).unwrap());

        // Bytes flipped in the newest: the older one is used.
        let mut bytes = std::fs::read(&newest.1).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&newest.1, &bytes).unwrap();
        let c = open(dir.path());
        assert_eq!(c.load_stats().snapshot_offset, Some(older.0));
        assert_eq!(*c.image(), *expected);
        drop(c);

        // The older one truncated too: the whole log is replayed.
        let len = std::fs::metadata(&older.1).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&older.1)
            .unwrap()
            .set_len(len - 10)
            .unwrap();
        let c = open(dir.path());
        assert_eq!(c.load_stats().snapshot_offset, None);
        assert_eq!(c.load_stats().replayed_records, records);
        assert_eq!(*c.image(), *expected);

        // It replayed more than the snapshot interval: it wrote one at once.
        drop(c);
        let c = open(dir.path());
        assert_eq!(c.load_stats().snapshot_offset, Some(newest.0));
        assert_eq!(c.load_stats().replayed_records, 0);
        drop(c);

        // Garbage under the newest snapshot's name, and an empty file under
        // another: not trusted either.
        std::fs::write(&newest.1, b"{}").unwrap();
        std::fs::write(dir.path().join(snapshot_file_name(2, 0)), b"").unwrap();
        let c = open(dir.path());
        assert_eq!(c.load_stats().snapshot_offset, None);
        assert_eq!(*c.image(), *expected);
        drop(c);
        assert_eq!(open(dir.path()).load_stats().replayed_records, 0);
    }
}
