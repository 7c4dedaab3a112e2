//! The controller quorum: the metadata log replicated by Raft among the
//! controller nodes (the voters of `controller.quorum.voters`), with
//! openraft doing the consensus (leader election, log replication,
//! snapshots) behind this small interface.
//!
//! - The Raft log is the `__cluster_metadata` partition log, one batch per
//!   entry ([`log_store`]); the vote is in `quorum-state`.
//! - The state machine is the [`MetadataImage`] ([`state_machine`]):
//!   committed entries are applied and each new image is published.
//! - Nodes talk over the controller listener ([`network`]): Raft's RPCs,
//!   and the controller's own requests ([`AppHandler`]), which the
//!   controller layer uses to forward writes to the leader.
//!
//! Terms are KRaft's epochs: one leader per term (openraft's standard
//! leader id), and a snapshot is named `<offset>-<epoch>`. A standalone node
//! (one voter, no controller listener) runs the same code with no network.
//!
//! Tests can replace TCP with a simulated network
//! ([`Quorum::start_with_transport`], `tests/quorum_sim.rs`): the same log
//! store, state machine and openraft run over it.

mod log_store;
mod network;
mod runtime;
mod state_machine;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::rt::WatchReceiver;
use openraft::{BasicNode, Raft, ServerState};
use serde::{Deserialize, Serialize};
use strom_storage::PartitionLog;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::image::MetadataImage;
use crate::records::MetadataRecord;
use crate::snapshot::SnapshotStore;

pub use network::{AppHandler, CallError, MAX_PEER_FRAME_BYTES, VoterClient, WrongCluster};
#[doc(hidden)]
pub use network::{FrameHandler, Transport};
#[doc(hidden)]
pub use runtime::seed_thread_rng;
pub(crate) use state_machine::StateMachine;

/// How long a restarted node waits for openraft to publish the membership
/// it loaded from its log (a local read) before starting without checking
/// it against the configured voters.
const MEMBERSHIP_LOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// One entry's worth of metadata records: one controller operation, applied
/// whole or not at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub records: Vec<MetadataRecord>,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} metadata records", self.records.len())
    }
}

/// What a write returns once applied: the image's offset after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub offset: i64,
}

openraft::declare_raft_types!(
    /// The quorum's Raft types: node ids are Kafka node ids; one leader per
    /// term, as KRaft.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = u64,
        Node = BasicNode,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
        AsyncRuntime = runtime::Runtime,
);

pub(crate) type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub(crate) type Vote = openraft::alias::VoteOf<TypeConfig>;
pub(crate) type Entry = openraft::alias::EntryOf<TypeConfig>;
pub(crate) type Snap = openraft::alias::SnapshotOf<TypeConfig, std::io::Cursor<Vec<u8>>>;
pub(crate) type SnapMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;

/// Raft entries between two snapshots. A metadata entry is one operation
/// (a few hundred bytes, up to the 8 MiB batch bound); the image is written
/// whole, so snapshotting every few thousand operations keeps both the
/// replay at start and the snapshot cost small.
pub const SNAPSHOT_INTERVAL_ENTRIES: u64 = 5_000;
/// Entries kept below a snapshot, so a voter that is a little behind
/// catches up from the log rather than by a whole snapshot.
pub const ENTRIES_KEPT_BELOW_SNAPSHOT: u64 = 1_000;

/// The quorum's settings.
#[derive(Debug, Clone)]
pub struct QuorumConfig {
    pub node_id: i32,
    /// The voters and their controller addresses (`controller.quorum.voters`).
    /// Empty: standalone, this node alone with no network.
    pub voters: BTreeMap<i32, String>,
    /// `controller.quorum.election.timeout.ms`: a follower that hears
    /// nothing from a leader for this long (up to twice it, randomised)
    /// stands for election.
    pub election_timeout_ms: u64,
    /// `controller.quorum.request.timeout.ms`: how long one RPC may take.
    pub request_timeout_ms: u64,
}

/// Why the quorum could not start.
#[derive(Debug, thiserror::Error)]
pub enum QuorumError {
    #[error("quorum storage: {0}")]
    Storage(#[from] std::io::Error),
    #[error("quorum: {0}")]
    Raft(String),
    #[error(
        "node {node_id} is not among the voters {voters:?} of controller.quorum.voters but has the controller role"
    )]
    NotAVoter { node_id: i32, voters: Vec<i32> },
    #[error(
        "the metadata log was written by a quorum of the voters {logged:?}, but controller.quorum.voters names {configured:?}; Strom cannot change a quorum's voters yet: give the voters their own settings back, or this node an empty data directory"
    )]
    VotersChanged {
        logged: Vec<i32>,
        configured: Vec<i32>,
    },
}

/// Why a write did not commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// This node is not the leader; the leader, if known.
    #[error("not the active controller (the leader is {leader:?})")]
    NotLeader { leader: Option<i32> },
    /// No commit within the timeout: no quorum, or a leader change. The
    /// entry may still commit later.
    #[error("the metadata write did not commit within {0:?}")]
    Timeout(Duration),
    /// The quorum stopped (shutdown or a storage failure).
    #[error("the controller quorum stopped: {0}")]
    Stopped(String),
    /// The metadata log cannot be written here (a full disk): the entry is
    /// retried and may still commit once the disk has room.
    #[error("the metadata log cannot be written: {0}")]
    Storage(String),
}

/// A voter's or observer's replication state, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub node_id: i32,
    /// The offset after the last entry known replicated there (-1: none).
    pub log_end_offset: i64,
}

/// The quorum as this node sees it (DescribeQuorum).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumStatus {
    pub leader: Option<i32>,
    /// The current term (KRaft's epoch).
    pub epoch: i32,
    /// The offset after the last committed entry.
    pub high_watermark: i64,
    /// This node's log end offset.
    pub log_end_offset: i64,
    /// Known only on the leader: every voter's replication state.
    pub voters: Vec<ReplicaStatus>,
}

/// The running quorum on this node.
pub struct Quorum {
    node_id: i32,
    raft: Raft<TypeConfig, StateMachine>,
    images: watch::Receiver<Arc<MetadataImage>>,
    network: network::Network,
    log: log_store::LogStore,
    /// The partition log under the Raft log (closed by its owner at shutdown).
    metadata_log: Arc<PartitionLog>,
    /// The receiving side, which the controller listener (or a simulated
    /// network) hands requests to.
    server: network::Server,
    config: QuorumConfig,
    shutdown: CancellationToken,
    listener_task: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// How the quorum reaches the other voters.
enum Wire {
    /// TCP: the controller listener, if any, and connections to the
    /// voters' addresses.
    Tcp(Option<TcpListener>),
    /// A simulated network.
    Transport(Arc<dyn Transport>),
}

impl fmt::Debug for Quorum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Quorum")
            .field("node_id", &self.node_id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn node(id: i32) -> u64 {
    // Kafka node ids are non-negative (the config refuses others).
    u64::try_from(id).unwrap_or(u64::MAX)
}

fn kafka_id(id: u64) -> i32 {
    i32::try_from(id).unwrap_or(-1)
}

impl Quorum {
    /// Starts the quorum on this node's metadata log: loads the newest
    /// snapshot (or `base`, the image of a data directory from before the
    /// quorum, or an empty one), serves the controller listener, and on a
    /// log never written joins the voters' initial membership. Every voter
    /// does that with the same membership, which is safe (one leader per
    /// term decides); nodes can so start in any order.
    pub async fn start(
        config: QuorumConfig,
        log: Arc<PartitionLog>,
        base: MetadataImage,
        listener: Option<TcpListener>,
    ) -> Result<Self, QuorumError> {
        Self::start_on(config, log, base, Wire::Tcp(listener)).await
    }

    /// Starts the quorum as [`Quorum::start`] does, with `transport` in
    /// place of TCP: requests to other voters go through it, and the
    /// transport delivers requests for this node to [`Quorum::frame_handler`].
    /// For simulations; production nodes use TCP.
    #[doc(hidden)]
    pub async fn start_with_transport(
        config: QuorumConfig,
        log: Arc<PartitionLog>,
        base: MetadataImage,
        transport: Arc<dyn Transport>,
    ) -> Result<Self, QuorumError> {
        Self::start_on(config, log, base, Wire::Transport(transport)).await
    }

    async fn start_on(
        config: QuorumConfig,
        log: Arc<PartitionLog>,
        base: MetadataImage,
        wire: Wire,
    ) -> Result<Self, QuorumError> {
        let standalone = config.voters.is_empty();
        let voters: BTreeMap<u64, BasicNode> = if standalone {
            BTreeMap::from([(node(config.node_id), BasicNode::new(""))])
        } else {
            config
                .voters
                .iter()
                .map(|(id, addr)| (node(*id), BasicNode::new(addr)))
                .collect()
        };
        if !voters.contains_key(&node(config.node_id)) {
            return Err(QuorumError::NotAVoter {
                node_id: config.node_id,
                voters: config.voters.keys().copied().collect(),
            });
        }
        let dir = log.dir().to_path_buf();
        let metadata_log = Arc::clone(&log);
        let log_store = log_store::LogStore::open(log, &dir)?;
        let fresh = log_store.is_empty();
        let state_machine = StateMachine::open(SnapshotStore::new(&dir), base);
        if fresh {
            state_machine.save_base()?;
        }
        let images = state_machine.subscribe();
        let (listener, transport) = match wire {
            Wire::Tcp(listener) => (listener, None),
            Wire::Transport(transport) => (None, Some(transport)),
        };
        let peers = voters
            .iter()
            .filter(|(id, _)| **id != node(config.node_id))
            .map(|(id, n)| {
                let peer = match &transport {
                    None => network::Peer::new(*id, n.addr.clone()),
                    Some(t) => network::Peer::with_transport(*id, n.addr.clone(), Arc::clone(t)),
                };
                (*id, Arc::new(peer))
            })
            .collect();
        let guard = Arc::new(network::ClusterGuard::new(
            node(config.node_id),
            voters.keys().copied().collect(),
        ));
        let network = network::Network {
            node: node(config.node_id),
            images: images.clone(),
            peers: Arc::new(peers),
            transport,
            guard: Arc::clone(&guard),
            request_timeout: Duration::from_millis(config.request_timeout_ms.max(1)),
        };
        let election = config.election_timeout_ms.max(10);
        let raft_config = openraft::Config {
            cluster_name: "strom".to_owned(),
            // openraft's followers honour the leader's lease (the longest
            // election timeout) before they campaign, then wait a random
            // timeout: between half and all of `election` each, so a new
            // leader is elected 1.5 to 2 election timeouts after the old
            // one dies, as Kafka's `controller.quorum.election.timeout.ms`
            // leads users to expect.
            election_timeout_min: (election / 2).max(10),
            election_timeout_max: election.max(20),
            heartbeat_interval: (election / 10).max(5),
            // A voter whose data directory was replaced by an empty one is
            // sent the log again instead of being refused for ever (the
            // leader remembers it further along). Its forgotten vote is the
            // risk Kafka's static quorums share; see docs/broker.md.
            allow_log_reversion: Some(true),
            install_snapshot_timeout: config.request_timeout_ms.max(election) * 5,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(SNAPSHOT_INTERVAL_ENTRIES),
            max_in_snapshot_log_to_keep: ENTRIES_KEPT_BELOW_SNAPSHOT,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(|e| QuorumError::Raft(e.to_string()))?;
        let raft = Raft::new(
            node(config.node_id),
            Arc::new(raft_config),
            network.clone(),
            log_store.clone(),
            state_machine,
        )
        .await
        .map_err(|e| QuorumError::Raft(e.to_string()))?;
        if !fresh {
            // The voters are static: a log of another voter set (a
            // single-node directory given voters, or voters edited) would
            // keep its own quorum and never reach the configured one.
            // Raft::new returns before its core has published the
            // membership it loaded: wait for it (it is in the log).
            let loaded = raft
                .wait(Some(MEMBERSHIP_LOAD_TIMEOUT))
                .metrics(
                    |m| {
                        m.membership_config
                            .membership()
                            .voter_ids()
                            .next()
                            .is_some()
                    },
                    "the membership loaded from the log",
                )
                .await;
            let logged: Vec<i32> = match loaded {
                Ok(m) => m
                    .membership_config
                    .membership()
                    .voter_ids()
                    .filter_map(|id| i32::try_from(id).ok())
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "the membership of the metadata log is not known yet");
                    Vec::new()
                }
            };
            let configured: Vec<i32> = voters
                .keys()
                .filter_map(|id| i32::try_from(*id).ok())
                .collect();
            let mut sorted = logged.clone();
            sorted.sort_unstable();
            if !logged.is_empty() && sorted != configured {
                let _ = raft.shutdown().await;
                return Err(QuorumError::VotersChanged {
                    logged: sorted,
                    configured,
                });
            }
        }
        if fresh {
            match raft.initialize(voters).await {
                Ok(()) => {}
                // Another voter's entries arrived first: already a member.
                Err(RaftError::APIError(e)) => {
                    tracing::debug!(error = %e, "quorum already initialized")
                }
                Err(e) => return Err(QuorumError::Raft(e.to_string())),
            }
        }
        let server = network::Server {
            raft: raft.clone(),
            images: images.clone(),
            app: Arc::new(OnceLock::new()),
            guard,
            last_append: Arc::default(),
        };
        let shutdown = CancellationToken::new();
        let listener_task = listener.map(|listener| {
            tokio::spawn(network::serve(listener, server.clone(), shutdown.clone()))
        });
        Ok(Self {
            node_id: config.node_id,
            raft,
            images,
            network,
            log: log_store,
            metadata_log,
            server,
            config,
            shutdown,
            listener_task: parking_lot::Mutex::new(listener_task),
        })
    }

    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    /// The partition log holding the Raft log.
    pub fn metadata_log(&self) -> &Arc<PartitionLog> {
        &self.metadata_log
    }

    /// Whether this node runs without voters elsewhere.
    pub fn is_standalone(&self) -> bool {
        self.config.voters.is_empty()
    }

    /// The voters' ids.
    pub fn voter_ids(&self) -> Vec<i32> {
        if self.is_standalone() {
            vec![self.node_id]
        } else {
            self.config.voters.keys().copied().collect()
        }
    }

    /// Sets who answers the controller's own requests from other nodes.
    /// Once only; later calls are ignored.
    pub fn set_app_handler(&self, handler: Arc<dyn AppHandler>) {
        let _ = self.server.app.set(handler);
    }

    /// This node's receiving side, for a simulated network started with
    /// [`Quorum::start_with_transport`] to deliver requests to.
    #[doc(hidden)]
    pub fn frame_handler(&self) -> FrameHandler {
        FrameHandler(self.server.clone())
    }

    /// Set once this node can never join its quorum because voters belong
    /// to another cluster: so many voters answered (or called) with another
    /// cluster id that the rest, with this node, are no majority. That is
    /// the node whose data directory is from another cluster (or whose
    /// `controller.quorum.voters` names another cluster's nodes); the
    /// voters of the healthy majority only log the stray one and are not
    /// told here. Stays set.
    pub fn wrong_cluster(&self) -> watch::Receiver<Option<WrongCluster>> {
        self.server.guard.subscribe()
    }

    /// The newest applied image.
    pub fn image(&self) -> Arc<MetadataImage> {
        Arc::clone(&self.images.borrow())
    }

    /// Receives every applied image.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.images.clone()
    }

    /// The leader as this node knows it.
    pub fn leader(&self) -> Option<i32> {
        self.raft
            .metrics()
            .borrow_watched()
            .current_leader
            .map(kafka_id)
    }

    /// The node that last sent this one log entries or a heartbeat as its
    /// leader, and when: how long a leader that went away has been silent.
    pub fn last_append_from(&self) -> Option<(i32, std::time::Instant)> {
        self.server
            .last_append
            .lock()
            .map(|(node, at)| (kafka_id(node), at))
    }

    /// `controller.quorum.election.timeout.ms`.
    pub fn election_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.config.election_timeout_ms)
    }

    /// Whether this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// Receives a value on every change of leader or term.
    pub fn watch_leader(&self) -> watch::Receiver<Option<i32>> {
        self.watch_metrics(|m| m.current_leader.map(kafka_id))
    }

    /// A watch of `view` of this node's Raft metrics, sent on every change
    /// of it until the quorum stops or every receiver is gone.
    fn watch_metrics<T: PartialEq + Send + Sync + 'static>(
        &self,
        view: fn(&openraft::RaftMetrics<TypeConfig>) -> T,
    ) -> watch::Receiver<T> {
        let mut metrics = self.raft.metrics();
        let (tx, rx) = watch::channel(view(&metrics.borrow_watched()));
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = metrics.changed() => if changed.is_err() { return },
                }
                let value = view(&metrics.borrow_watched());
                tx.send_if_modified(|old| {
                    let changed = *old != value;
                    *old = value;
                    changed
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        rx
    }

    /// Waits until this node is the leader and its image holds every entry
    /// of its log, so a proposal made against the image sees every write
    /// that may commit before it (a timed-out write of this term included).
    pub async fn await_leader_caught_up(&self, timeout: Duration) -> Result<(), WriteError> {
        let mut metrics = self.raft.metrics();
        let wait = async {
            loop {
                {
                    let m = metrics.borrow_and_update();
                    if m.state != ServerState::Leader {
                        return Err(WriteError::NotLeader {
                            leader: m.current_leader.map(kafka_id),
                        });
                    }
                    let applied = m.last_applied.map(|l| l.index);
                    let in_term = m
                        .cluster_committed
                        .is_some_and(|c| c.leader_id.term == m.current_term);
                    if in_term && applied == m.last_log_index {
                        return Ok(());
                    }
                }
                if metrics.changed().await.is_err() {
                    return Err(WriteError::Stopped("the quorum stopped".to_owned()));
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Err(WriteError::Timeout(timeout)))
    }

    /// Replicates `records` as one entry and waits until it is committed and
    /// applied; returns the image offset after it. Only the leader writes.
    pub async fn write(
        &self,
        records: Vec<MetadataRecord>,
        timeout: Duration,
    ) -> Result<i64, WriteError> {
        let mut storage = self.log.storage_errors();
        let failed = async move {
            let found = storage
                .wait_for(Option::is_some)
                .await
                .map(|e| e.clone().unwrap_or_default());
            match found {
                Ok(e) => e,
                Err(_) => std::future::pending().await,
            }
        };
        let write = async {
            tokio::select! {
                written = self.raft.client_write(Command { records }) => Ok(written),
                e = failed => Err(e),
            }
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(Err(e)) => Err(WriteError::Storage(e)),
            Ok(Ok(Ok(response))) => Ok(response.data.offset),
            Ok(Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))))) => {
                Err(WriteError::NotLeader {
                    leader: f.leader_id.map(kafka_id),
                })
            }
            Ok(Ok(Err(e))) => Err(WriteError::Stopped(e.to_string())),
            Err(_) => Err(WriteError::Timeout(timeout)),
        }
    }

    /// Sends a controller request to node `node`'s [`AppHandler`].
    pub async fn call(
        &self,
        node_id: i32,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        self.network.call_app(node(node_id), request, timeout).await
    }

    /// The quorum as this node sees it.
    pub fn status(&self) -> QuorumStatus {
        status_of(&self.raft.metrics().borrow_watched())
    }

    /// On the leader, how long ago each follower last acknowledged it
    /// (DescribeQuorum's last fetch times); empty elsewhere.
    pub fn follower_acks(&self) -> BTreeMap<i32, Duration> {
        use openraft::Instant as _;
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        m.heartbeat
            .iter()
            .flatten()
            .filter_map(|(id, at)| {
                let at = at.as_ref()?;
                Some((i32::try_from(*id).ok()?, at.elapsed()))
            })
            .collect()
    }

    /// Receives this node's [`QuorumStatus`] on every change of its Raft
    /// state (a term, a leader, an append, a commit). A reader that falls
    /// behind sees only the newest.
    pub fn watch_status(&self) -> watch::Receiver<QuorumStatus> {
        self.watch_metrics(status_of)
    }

    /// Every entry of this node's Raft log still kept, as `(index, term,
    /// records)` (blank and membership entries have no records): for
    /// comparing the logs of the nodes.
    pub fn log_entries(&self) -> Vec<(u64, u64, Option<Vec<MetadataRecord>>)> {
        self.log
            .entries(..)
            .into_iter()
            .map(|e| {
                let (index, term) = (e.log_id.index, e.log_id.leader_id.term);
                (index, term, entry_records(e))
            })
            .collect()
    }

    /// The applied entries from Raft index `from` on, at most `max` of them,
    /// as `(index, records)` (blank and membership entries have none); `None`
    /// when this node no longer keeps entry `from` (a snapshot replaced it).
    /// What observers catch up from.
    pub fn applied_entries(
        &self,
        from: u64,
        max: usize,
    ) -> Option<Vec<(u64, Option<Vec<MetadataRecord>>)>> {
        let applied_end = u64::try_from(self.image().offset).unwrap_or(0);
        if from >= applied_end {
            return Some(Vec::new());
        }
        let end = applied_end.min(from.saturating_add(max as u64));
        let entries = self.log.entries(from..end);
        if entries.first().map(|e| e.log_id.index) != Some(from) {
            return None;
        }
        Some(
            entries
                .into_iter()
                .map(|e| (e.log_id.index, entry_records(e)))
                .collect(),
        )
    }

    /// Stops the quorum: no more elections or replication from this node,
    /// and the controller listener closes.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.log.stop();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "the quorum stopped abnormally");
        }
        let listener_task = self.listener_task.lock().take();
        if let Some(task) = listener_task {
            let _ = task.await;
        }
    }
}

/// The quorum as openraft's metrics describe it.
/// An entry's metadata records (blank and membership entries have none).
fn entry_records(entry: Entry) -> Option<Vec<MetadataRecord>> {
    match entry.payload {
        openraft::EntryPayload::Normal(c) => Some(c.records),
        _ => None,
    }
}

fn status_of(m: &openraft::RaftMetrics<TypeConfig>) -> QuorumStatus {
    let offset = |index: Option<u64>| index.map_or(0, |i| i64::try_from(i + 1).unwrap_or(i64::MAX));
    let voters = m
        .replication
        .as_ref()
        .map(|r| {
            r.iter()
                .map(|(id, matched)| ReplicaStatus {
                    node_id: kafka_id(*id),
                    log_end_offset: offset(matched.map(|l| l.index)),
                })
                .collect()
        })
        .unwrap_or_default();
    QuorumStatus {
        leader: m.current_leader.map(kafka_id),
        epoch: i32::try_from(m.current_term).unwrap_or(i32::MAX),
        high_watermark: offset(m.cluster_committed.map(|c| c.index)),
        log_end_offset: offset(m.last_log_index),
        voters,
    }
}

/// Whether the metadata log in `dir` belongs to the quorum (it has the
/// quorum's state file); a written log without it is from before the quorum.
pub fn has_quorum_state(dir: &Path) -> bool {
    dir.join(log_store::QUORUM_STATE_FILE).exists()
}
