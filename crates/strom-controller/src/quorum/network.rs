//! The quorum's network: Raft RPCs and the controller's own requests between
//! nodes, on the controller listener.
//!
//! A connection carries frames of a 4-byte big-endian length and a JSON
//! body, one request then its response, in turn. Every request names the
//! sender's cluster id when it knows one; a node refuses requests from
//! another cluster (a data directory of another cluster must never vote or
//! replicate here). Frames are bounded by [`MAX_PEER_FRAME_BYTES`].
//!
//! The frames travel over TCP ([`Peer::new`], [`serve`]). A simulation
//! replaces the wire with a [`Transport`] that hands each request frame to
//! the target's [`FrameHandler`], the same decoding, cluster check and
//! dispatch the listener runs; everything above the wire is the same code.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::io;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft, RaftNetworkV2};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::state_machine::StateMachine;
use super::{Snap, TypeConfig, Vote};
use crate::image::MetadataImage;
use crate::snapshot::SNAPSHOT_BYTES_MAX;

/// Bound on one frame: the largest snapshot (an image of a million
/// partitions) with room for its JSON envelope. Anything larger is not from
/// a Strom node, and the connection is closed.
pub const MAX_PEER_FRAME_BYTES: u64 = SNAPSHOT_BYTES_MAX + (16 << 20);
/// Bound on connections the controller listener serves at once: the voters
/// and brokers of a cluster, with room; more are refused (closed at once).
pub(crate) const MAX_PEER_CONNECTIONS: usize = 1024;

/// How one node's request frames reach another node, in place of TCP (a
/// simulated network in tests). Not for production use: the TCP path does
/// not go through it.
#[doc(hidden)]
pub trait Transport: Send + Sync + fmt::Debug {
    /// Delivers one request frame (an encoded envelope) from node `from` to
    /// node `to` and returns the response frame. An error is a connection
    /// failure (refused, reset); a lost message or response never returns,
    /// and the caller's timeout ends the wait, as on TCP.
    fn exchange(
        &self,
        from: i32,
        to: i32,
        request: Vec<u8>,
    ) -> BoxFuture<'static, io::Result<Vec<u8>>>;
}

/// A node of another cluster met on the controller network: one side's
/// data directory belongs to another cluster. See
/// [`super::Quorum::wrong_cluster`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrongCluster {
    /// The voter of the other cluster.
    pub peer: i32,
    /// Its cluster id.
    pub theirs: String,
    /// This node's cluster id.
    pub ours: String,
}

impl fmt::Display for WrongCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "this node's metadata belongs to cluster {}, but voter {} belongs to cluster {}: \
             the data directory is from another cluster, or controller.quorum.voters names \
             another cluster's nodes",
            self.ours, self.peer, self.theirs
        )
    }
}

/// Which voters disagree with this node about the cluster id, and whether
/// that leaves this node unable to form a majority. Both sides of a
/// disagreement see it; only the side that cannot reach a majority of
/// voters of its own cluster (the stray node, not the healthy majority) is
/// told, through `report`, since it can never join.
#[derive(Debug)]
pub(crate) struct ClusterGuard {
    node: u64,
    voters: BTreeSet<u64>,
    /// The voters last seen with another cluster id (cleared by a later
    /// exchange that agrees, e.g. after the other node's directory was fixed).
    foreign: parking_lot::Mutex<BTreeMap<u64, WrongCluster>>,
    report: watch::Sender<Option<WrongCluster>>,
}

impl ClusterGuard {
    pub(crate) fn new(node: u64, voters: BTreeSet<u64>) -> Self {
        Self {
            node,
            voters,
            foreign: parking_lot::Mutex::new(BTreeMap::new()),
            report: watch::channel(None).0,
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<WrongCluster>> {
        self.report.subscribe()
    }

    fn refused(&self, peer: u64, theirs: String, ours: String) {
        let seen = WrongCluster {
            peer: i32::try_from(peer).unwrap_or(-1),
            theirs,
            ours,
        };
        if !self.voters.contains(&peer) || peer == self.node {
            tracing::error!(peer, theirs = %seen.theirs, ours = %seen.ours, "a node of another cluster on the controller network");
            return;
        }
        let mut foreign = self.foreign.lock();
        if foreign.insert(peer, seen.clone()).is_none() {
            tracing::error!(peer, theirs = %seen.theirs, ours = %seen.ours, "a voter belongs to another cluster");
        }
        // This node and every voter not known to disagree: a majority of
        // the voters, or no leader can ever count this node in.
        let majority = self.voters.len() / 2 + 1;
        if self.voters.len() - foreign.len() < majority && self.report.borrow().is_none() {
            self.report.send_replace(Some(seen));
        }
    }

    fn agreed(&self, peer: u64) {
        let mut foreign = self.foreign.lock();
        if !foreign.is_empty() {
            foreign.remove(&peer);
        }
    }
}

/// Answers the controller's own requests (forwarded metadata writes,
/// broker registration and heartbeats): bytes in, bytes out; the
/// controller layer owns their format.
pub trait AppHandler: Send + Sync + std::fmt::Debug {
    fn handle(&self, from: u64, request: Vec<u8>) -> BoxFuture<'static, Vec<u8>>;
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    /// The sender's cluster id, when it knows one.
    cluster_id: Option<String>,
    from: u64,
    request: PeerRequest,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
enum PeerRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    Snapshot {
        vote: Vote,
        meta: super::SnapMeta,
        data: Vec<u8>,
    },
    App(Vec<u8>),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
enum PeerResponse {
    Append(AppendEntriesResponse<TypeConfig>),
    Vote(VoteResponse<TypeConfig>),
    Snapshot(SnapshotResponse<TypeConfig>),
    App(Vec<u8>),
    /// The request was refused: the node is stopping, or another error.
    Error(String),
    /// The receiver belongs to another cluster (its id).
    WrongCluster(String),
}

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot reach node {node} at {addr}: {source}")]
    Unreachable {
        node: u64,
        addr: String,
        source: io::Error,
    },
    #[error("node {node} timed out")]
    Timeout { node: u64 },
    #[error("node {node} refused: {reason}")]
    Refused { node: u64, reason: String },
    #[error("node {node} belongs to cluster {theirs}, not {ours}")]
    WrongCluster {
        node: u64,
        theirs: String,
        ours: String,
    },
}

async fn write_frame<W: AsyncWriteExt + Unpin>(w: &mut W, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| u64::from(*l) <= MAX_PEER_FRAME_BYTES)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(body).await?;
    w.flush().await
}

async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len);
    if u64::from(len) > MAX_PEER_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes, above the limit of {MAX_PEER_FRAME_BYTES}"),
        ));
    }
    // Grown as bytes arrive, not allocated from the claimed length: a
    // length alone (from anyone who can reach the port) costs nothing.
    let mut body = Vec::with_capacity((len as usize).min(FRAME_READ_CHUNK_BYTES));
    let read = r.take(u64::from(len)).read_to_end(&mut body).await?;
    if read != len as usize {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("a frame of {len} bytes ended after {read}"),
        ));
    }
    Ok(body)
}

/// The first allocation for a frame's body; a longer one grows as it
/// arrives.
const FRAME_READ_CHUNK_BYTES: usize = 1 << 20;

type Conn = (
    BufReader<tokio::net::tcp::OwnedReadHalf>,
    BufWriter<tokio::net::tcp::OwnedWriteHalf>,
);

/// One node's way to another: a connection opened on first use and again
/// after a failure; one request at a time.
#[derive(Debug)]
pub(crate) struct Peer {
    node: u64,
    addr: String,
    link: Link,
}

#[derive(Debug)]
enum Link {
    Tcp(Mutex<Option<Conn>>),
    /// A [`Transport`]; the lock keeps one request at a time, as on TCP.
    Transport(Arc<dyn Transport>, Mutex<()>),
}

impl Peer {
    pub(crate) fn new(node: u64, addr: String) -> Self {
        Self {
            node,
            addr,
            link: Link::Tcp(Mutex::new(None)),
        }
    }

    pub(crate) fn with_transport(node: u64, addr: String, transport: Arc<dyn Transport>) -> Self {
        Self {
            node,
            addr,
            link: Link::Transport(transport, Mutex::new(())),
        }
    }

    async fn call(
        &self,
        from: u64,
        cluster_id: Option<String>,
        request: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, CallError> {
        let ours = cluster_id.clone();
        let envelope = Envelope {
            cluster_id,
            from,
            request,
        };
        let body = serde_json::to_vec(&envelope).map_err(|e| CallError::Refused {
            node: self.node,
            reason: e.to_string(),
        })?;
        let unreachable = |source: io::Error| CallError::Unreachable {
            node: self.node,
            addr: self.addr.clone(),
            source,
        };
        let bytes = match &self.link {
            Link::Tcp(conn) => self.exchange_tcp(conn, &body, timeout).await?,
            Link::Transport(transport, turn) => {
                let exchange = async {
                    let _turn = turn.lock().await;
                    let (from, to) = (super::kafka_id(from), super::kafka_id(self.node));
                    transport.exchange(from, to, body).await
                };
                match tokio::time::timeout(timeout, exchange).await {
                    Ok(result) => result.map_err(unreachable)?,
                    Err(_) => return Err(CallError::Timeout { node: self.node }),
                }
            }
        };
        let response: PeerResponse =
            serde_json::from_slice(&bytes).map_err(|e| CallError::Refused {
                node: self.node,
                reason: format!("undecodable response: {e}"),
            })?;
        match response {
            PeerResponse::Error(reason) => Err(CallError::Refused {
                node: self.node,
                reason,
            }),
            PeerResponse::WrongCluster(theirs) => Err(CallError::WrongCluster {
                node: self.node,
                theirs,
                ours: ours.unwrap_or_default(),
            }),
            other => Ok(other),
        }
    }

    /// One request and its response on the TCP connection.
    async fn exchange_tcp(
        &self,
        conn: &Mutex<Option<Conn>>,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let unreachable = |source: io::Error| CallError::Unreachable {
            node: self.node,
            addr: self.addr.clone(),
            source,
        };
        let exchange = async {
            let mut slot = conn.lock().await;
            // The connection is out of its slot for the whole exchange and
            // goes back only after a whole response: a call dropped halfway
            // (a timeout here or in openraft, a cancelled caller) drops the
            // socket with it, so no later call reads this call's response.
            let (mut r, mut w) = match slot.take() {
                Some(c) => c,
                None => {
                    let stream = TcpStream::connect(&self.addr).await.map_err(unreachable)?;
                    let _ = stream.set_nodelay(true);
                    let (r, w) = stream.into_split();
                    (BufReader::new(r), BufWriter::new(w))
                }
            };
            let result = async {
                write_frame(&mut w, body).await?;
                read_frame(&mut r).await
            }
            .await;
            match result {
                Ok(bytes) => {
                    *slot = Some((r, w));
                    Ok(bytes)
                }
                Err(e) => Err(unreachable(e)),
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout { node: self.node }),
        }
    }
}

/// What every connection of this node shares: its id, its cluster id (from
/// the newest image) and the peers.
#[derive(Debug, Clone)]
pub(crate) struct Network {
    pub(crate) node: u64,
    pub(crate) images: watch::Receiver<Arc<MetadataImage>>,
    pub(crate) peers: Arc<BTreeMap<u64, Arc<Peer>>>,
    /// In place of TCP, for a peer not among `peers` (None: TCP).
    pub(crate) transport: Option<Arc<dyn Transport>>,
    pub(crate) guard: Arc<ClusterGuard>,
    /// The least time a Raft RPC gets (`controller.quorum.request.timeout.ms`):
    /// openraft offers only its heartbeat interval, too short for an append
    /// that includes a follower's fsync on a slow disk.
    pub(crate) request_timeout: Duration,
}

impl Network {
    fn cluster_id(&self) -> Option<String> {
        let id = &self.images.borrow().cluster_id;
        (!id.is_empty()).then(|| id.clone())
    }

    fn peer(&self, node: u64, addr: &str) -> Arc<Peer> {
        match (self.peers.get(&node), &self.transport) {
            (Some(p), _) => Arc::clone(p),
            (None, None) => Arc::new(Peer::new(node, addr.to_owned())),
            (None, Some(t)) => Arc::new(Peer::with_transport(node, addr.to_owned(), Arc::clone(t))),
        }
    }

    /// Sends `request` to `peer` as this node, noting whether the peer
    /// agrees about the cluster.
    async fn send(
        &self,
        peer: &Peer,
        request: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, CallError> {
        let result = peer
            .call(self.node, self.cluster_id(), request, timeout)
            .await;
        match &result {
            Ok(_) => self.guard.agreed(peer.node),
            Err(CallError::WrongCluster { theirs, ours, .. }) => {
                self.guard.refused(peer.node, theirs.clone(), ours.clone());
            }
            Err(_) => {}
        }
        result
    }

    /// Calls the controller layer of node `node`.
    pub(crate) async fn call_app(
        &self,
        node: u64,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let peer = self.peers.get(&node).cloned().ok_or(CallError::Refused {
            node,
            reason: "not a voter of this quorum".to_owned(),
        })?;
        match self.send(&peer, PeerRequest::App(request), timeout).await? {
            PeerResponse::App(bytes) => Ok(bytes),
            other => Err(CallError::Refused {
                node,
                reason: format!("unexpected response {other:?}"),
            }),
        }
    }
}

/// openraft's client to one target.
pub(crate) struct RaftClient {
    net: Network,
    peer: Arc<Peer>,
}

fn rpc_error(e: CallError) -> RPCError<TypeConfig> {
    match e {
        CallError::Unreachable { .. } | CallError::WrongCluster { .. } => {
            RPCError::Unreachable(Unreachable::from_string(e.to_string()))
        }
        CallError::Timeout { .. } | CallError::Refused { .. } => {
            RPCError::Network(NetworkError::from_string(e.to_string()))
        }
    }
}

impl RaftClient {
    async fn call(
        &self,
        request: PeerRequest,
        option: &RPCOption,
    ) -> Result<PeerResponse, CallError> {
        let timeout = option.soft_ttl().max(self.net.request_timeout);
        self.net.send(&self.peer, request, timeout).await
    }
}

fn unexpected(r: PeerResponse) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(format!(
        "unexpected response {r:?}"
    )))
}

impl RaftNetworkV2<TypeConfig> for RaftClient {
    type SnapshotData = std::io::Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(PeerRequest::Append(rpc), &option)
            .await
            .map_err(rpc_error)?
        {
            PeerResponse::Append(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(PeerRequest::Vote(rpc), &option)
            .await
            .map_err(rpc_error)?
        {
            PeerResponse::Vote(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(PeerRequest::PreVote(rpc), &option)
            .await
            .map_err(rpc_error)?
        {
            PeerResponse::Vote(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snap,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let request = PeerRequest::Snapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot.into_inner(),
        };
        // A snapshot can be large: give it the hard deadline, not the soft.
        let option = RPCOption::new(option.hard_ttl());
        match self.call(request, &option).await {
            Ok(PeerResponse::Snapshot(r)) => Ok(r),
            Ok(other) => Err(StreamingError::Network(NetworkError::from_string(format!(
                "unexpected response {other:?}"
            )))),
            Err(e) => Err(StreamingError::Unreachable(Unreachable::from_string(
                e.to_string(),
            ))),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = RaftClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Self::Network {
        RaftClient {
            net: self.clone(),
            peer: self.peer(target, &node.addr),
        }
    }
}

/// The receiving side of this node: decodes a request frame, refuses
/// another cluster's, dispatches to Raft or the [`AppHandler`] and encodes
/// the response. The controller listener runs it per frame; a simulated
/// network calls it directly ([`FrameHandler`]).
#[derive(Clone)]
pub(crate) struct Server {
    pub(crate) raft: Raft<TypeConfig, StateMachine>,
    pub(crate) images: watch::Receiver<Arc<MetadataImage>>,
    pub(crate) app: Arc<OnceLock<Arc<dyn AppHandler>>>,
    pub(crate) guard: Arc<ClusterGuard>,
    /// The node that last sent this one entries (a leader) and when.
    pub(crate) last_append: Arc<parking_lot::Mutex<Option<(u64, Instant)>>>,
}

impl Server {
    async fn handle(&self, body: &[u8]) -> io::Result<Vec<u8>> {
        let envelope: Envelope = serde_json::from_slice(body).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("undecodable request: {e}"),
            )
        })?;
        let ours = self.images.borrow().cluster_id.clone();
        let response = match &envelope.cluster_id {
            Some(theirs) if !ours.is_empty() && *theirs != ours => {
                tracing::error!(from = envelope.from, theirs = %theirs, ours = %ours, "refused a request from a node of another cluster");
                self.guard
                    .refused(envelope.from, theirs.clone(), ours.clone());
                PeerResponse::WrongCluster(ours)
            }
            _ => {
                self.guard.agreed(envelope.from);
                if matches!(envelope.request, PeerRequest::Append(_)) {
                    *self.last_append.lock() = Some((envelope.from, Instant::now()));
                }
                dispatch(&self.raft, &self.app, envelope).await
            }
        };
        serde_json::to_vec(&response).map_err(io::Error::other)
    }
}

/// A node's receiving side for a simulated network: the frames a
/// [`Transport`] delivers to this node go here.
#[doc(hidden)]
#[derive(Clone)]
pub struct FrameHandler(pub(crate) Server);

impl fmt::Debug for FrameHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameHandler").finish_non_exhaustive()
    }
}

impl FrameHandler {
    /// Handles one request frame and returns the response frame; an error
    /// is a frame that does not decode (TCP would close the connection).
    pub fn handle(&self, request: Vec<u8>) -> BoxFuture<'static, io::Result<Vec<u8>>> {
        let server = self.0.clone();
        Box::pin(async move { server.handle(&request).await })
    }
}

/// Serves the controller listener until `shutdown`.
pub(crate) async fn serve(listener: TcpListener, server: Server, shutdown: CancellationToken) {
    let tasks = TaskTracker::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_PEER_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "controller listener accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::warn!(%addr, "too many controller connections; closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = shutdown.cancelled() => {}
                result = serve_connection(stream, &server) => {
                    if let Err(e) = result && e.kind() != io::ErrorKind::UnexpectedEof {
                        tracing::debug!(%addr, error = %e, "controller connection closed");
                    }
                }
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}

async fn serve_connection(stream: TcpStream, server: &Server) -> io::Result<()> {
    let (r, w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut w = BufWriter::new(w);
    loop {
        let body = read_frame(&mut r).await?;
        let bytes = server.handle(&body).await?;
        write_frame(&mut w, &bytes).await?;
    }
}

async fn dispatch(
    raft: &Raft<TypeConfig, StateMachine>,
    app: &OnceLock<Arc<dyn AppHandler>>,
    envelope: Envelope,
) -> PeerResponse {
    let refused = |e: &dyn std::fmt::Display| PeerResponse::Error(e.to_string());
    match envelope.request {
        PeerRequest::Append(rpc) => match raft.append_entries(rpc).await {
            Ok(r) => PeerResponse::Append(r),
            Err(e) => refused(&e),
        },
        PeerRequest::Vote(rpc) => match raft.vote(rpc).await {
            Ok(r) => PeerResponse::Vote(r),
            Err(e) => refused(&e),
        },
        PeerRequest::PreVote(rpc) => match raft.pre_vote(rpc).await {
            Ok(r) => PeerResponse::Vote(r),
            Err(e) => refused(&e),
        },
        PeerRequest::Snapshot { vote, meta, data } => {
            let snapshot = Snap {
                meta,
                snapshot: std::io::Cursor::new(data),
            };
            match raft.install_full_snapshot(vote, snapshot).await {
                Ok(r) => PeerResponse::Snapshot(r),
                Err(e) => refused(&e),
            }
        }
        PeerRequest::App(request) => match app.get() {
            Some(handler) => PeerResponse::App(handler.handle(envelope.from, request).await),
            None => PeerResponse::Error("the controller is starting".to_owned()),
        },
    }
}

/// A node that is not a voter (a broker-only node, Kafka's observer) calls
/// the voters' controller layers with this: one connection per voter, one
/// request at a time on each (so long polls get a client of their own).
#[derive(Debug)]
pub struct VoterClient {
    node: u64,
    peers: std::collections::BTreeMap<i32, Peer>,
    cluster_id: parking_lot::Mutex<Option<String>>,
}

impl VoterClient {
    /// A client of `voters` (id to `HOST:PORT`) for node `node_id`.
    pub fn new(node_id: i32, voters: &std::collections::BTreeMap<i32, String>) -> Self {
        Self {
            node: u64::try_from(node_id).unwrap_or_default(),
            peers: voters
                .iter()
                .map(|(id, addr)| {
                    let node = u64::try_from(*id).unwrap_or_default();
                    (*id, Peer::new(node, addr.clone()))
                })
                .collect(),
            cluster_id: parking_lot::Mutex::new(None),
        }
    }

    /// The voters' ids.
    pub fn voter_ids(&self) -> Vec<i32> {
        self.peers.keys().copied().collect()
    }

    /// Names this node's cluster in every request from now on: voters of
    /// another cluster then refuse them ([`CallError::WrongCluster`]).
    pub fn set_cluster_id(&self, cluster_id: &str) {
        *self.cluster_id.lock() = (!cluster_id.is_empty()).then(|| cluster_id.to_owned());
    }

    /// Sends a controller request to voter `voter`'s [`AppHandler`].
    pub async fn call(
        &self,
        voter: i32,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let node = u64::try_from(voter).unwrap_or_default();
        let peer = self.peers.get(&voter).ok_or(CallError::Refused {
            node,
            reason: "not a voter of this quorum".to_owned(),
        })?;
        let cluster_id = self.cluster_id.lock().clone();
        match peer
            .call(self.node, cluster_id, PeerRequest::App(request), timeout)
            .await?
        {
            PeerResponse::App(bytes) => Ok(bytes),
            other => Err(CallError::Refused {
                node,
                reason: format!("unexpected response {other:?}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_a_claimed_length_is_not_trusted() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"hello").await.unwrap();
        assert_eq!(read_frame(&mut wire.as_slice()).await.unwrap(), b"hello");
        // A header claiming close to the limit, then a few bytes and the
        // end: refused as cut short (and not allocated up front).
        let mut short = u32::try_from(MAX_PEER_FRAME_BYTES - 1)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        short.extend_from_slice(b"abc");
        let e = read_frame(&mut short.as_slice()).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        // Above the limit: refused from the header alone.
        if let Ok(over) = u32::try_from(MAX_PEER_FRAME_BYTES + 1) {
            let e = read_frame(&mut over.to_be_bytes().as_slice())
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        }
    }
}
