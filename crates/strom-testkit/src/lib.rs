//! Local Strom clusters for integration tests: what Kafka's
//! `EmbeddedKafkaCluster` and testcontainers' Kafka module are for Java
//! users, and what Strom's own multi-node tests run on.
//!
//! A [`LocalCluster`] is N child processes of the `strom` binary on
//! loopback, each a combined broker and controller, started exactly as a
//! user starts a cluster by hand:
//!
//! ```text
//! strom broker --node-id 1 --listen 127.0.0.1:P1 --controller-listen 127.0.0.1:C1 \
//!   --voters 1@127.0.0.1:C1,2@127.0.0.1:C2,3@127.0.0.1:C3 --data-dir ROOT/n1 \
//!   --metrics 127.0.0.1:0 [--set KEY=VALUE ...]
//! ```
//!
//! Ports are free ports picked up front, at random from 20000–32767, below
//! Linux's ephemeral range, so a node restarted on its port finds it still
//! free (or `base + 100·i` and
//! `base + 100·i + 1` with [`ClusterBuilder::ports`], as in the README's
//! three-node example). Every node's data directory is `ROOT/n<id>` and its
//! stderr goes to `ROOT/n<id>.stderr.log`; ROOT is a temporary directory
//! removed when the cluster is dropped, unless
//! [`ClusterBuilder::data_dir_root`] names one to keep.
//!
//! [`ClusterBuilder::start`] starts every process first and then waits for
//! all of them at once: a node prints its ready line (`Strom broker <id>
//! listening on ...`) only once it has joined the cluster, which with three
//! voters needs a quorum. A node that exits or is not ready in time (60 s by
//! default) fails the start with the tail of its stderr and the path of its
//! log.
//!
//! Nodes are voters running the broker too (combined mode) by default;
//! [`ClusterBuilder::controller_only`] makes the voters controllers alone,
//! [`ClusterBuilder::brokers`] adds broker-only nodes, and
//! [`LocalCluster::add_broker`] starts one more that joins a running cluster.
//!
//! With [`ClusterBuilder::with_link_proxies`], every node reaches each
//! other voter through a proxy of its own ([`links`]), and a test cuts and
//! heals links between voters: [`LocalCluster::cut`],
//! [`LocalCluster::isolate`], [`LocalCluster::heal`]. Without it (the
//! default) the voters connect to each other directly.
//!
//! Dropping the cluster kills every node (SIGKILL), waits for them, and then
//! removes the temporary directory; so does a panic in the test that holds
//! it. (A test process killed with SIGKILL cannot run any cleanup: its
//! nodes then stay until killed; they are the `strom broker` processes whose
//! `--data-dir` is under the vanished temporary directory.)
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use strom_testkit::LocalCluster;
//!
//! # async fn example() -> Result<(), strom_testkit::TestkitError> {
//! // In a test of the strom-tests crate: env!("CARGO_BIN_EXE_strom-e2e");
//! // elsewhere, the path of a built `strom`.
//! let mut cluster = LocalCluster::builder("target/debug/strom")
//!     .nodes(3)
//!     .set("num.partitions", "3")
//!     .start()
//!     .await?;
//! let bootstrap = cluster.bootstrap(); // "127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3"
//! // ... point any Kafka client at `bootstrap` ...
//! cluster.kill(2).await?; // kill -9 node 2
//! cluster.restart(2).await?; // same ports, same data, ready again
//! cluster.pause(3)?; // SIGSTOP: a node that stops answering
//! cluster.resume(3)?;
//! cluster.wait_ready(3, Duration::from_secs(30)).await?;
//! # let _ = bootstrap;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - this file: the builder, the cluster and its processes;
//! - [`links`]: the proxies between voters that cut and heal links.

pub mod links;
pub mod tmpfs;

pub use tmpfs::Tmpfs;

use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use links::LinkProxies;
pub use links::LinkState;

/// How long [`ClusterBuilder::start`] and [`LocalCluster::restart`] wait for
/// the ready lines by default: a debug build recovering its logs on a busy
/// 2-core machine takes a while.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long [`LocalCluster::stop`] waits for a clean exit after SIGTERM
/// before it sends SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How many stderr lines an error shows.
const TAIL_LINES: usize = 20;

/// Why a cluster or a node did not start, stop or take a signal.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    #[error("the cluster has no node {0}")]
    UnknownNode(i32),
    #[error("node {0} is not running")]
    NotRunning(i32),
    #[error("the cluster was started without link proxies (ClusterBuilder::with_link_proxies)")]
    NoLinkProxies,
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "node {node} did not print its ready line within {timeout:?} (stderr in {}); its stderr ends with:\n{tail}",
        log.display()
    )]
    NotReady {
        node: i32,
        timeout: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "node {node} exited ({status}) before it was ready (stderr in {}); its stderr ends with:\n{tail}",
        log.display()
    )]
    Exited {
        node: i32,
        status: String,
        log: PathBuf,
        tail: String,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestkitError {
    let what = what.into();
    move |source| TestkitError::Io { what, source }
}

/// How many times [`ClusterBuilder::start`] tries when a free port was
/// taken by another process before a node bound it.
pub const START_ATTEMPTS: usize = 3;

/// Settings of a cluster to start: [`LocalCluster::builder`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    binary: PathBuf,
    nodes: usize,
    properties: Vec<(String, String)>,
    /// Properties of one node each: `(node id, key, value)`.
    node_properties: Vec<(i32, String, String)>,
    node_env: Vec<(i32, String, String)>,
    data_dir_root: Option<PathBuf>,
    base_port: Option<u16>,
    ready_timeout: Duration,
    link_proxies: bool,
    controller_only: bool,
    brokers: usize,
    /// Node `i + 1` runs inside network namespace `hosts[i].0` on address
    /// `hosts[i].1`: [`ClusterBuilder::network_namespaces`].
    hosts: Vec<(String, Ipv4Addr)>,
}

/// The client and controller ports of a node in a network namespace of
/// its own (the namespace's address is the node's alone, so every node
/// takes Kafka's usual port).
pub const NAMESPACE_PORTS: (u16, u16) = (9092, 9093);

/// What a node of a [`LocalCluster`] runs (`process.roles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A voter and a broker (`broker,controller`, the default).
    Combined,
    /// A voter that serves no clients (`controller`).
    Controller,
    /// A broker that follows the voters (`broker`).
    Broker,
}

impl Role {
    fn is_broker(self) -> bool {
        self != Self::Controller
    }
}

impl ClusterBuilder {
    /// Runs node `i + 1` inside the network namespace named `hosts[i].0`
    /// (`ip netns exec`), listening on `hosts[i].1` with
    /// [`NAMESPACE_PORTS`]. The namespaces must exist, each with its
    /// address, and reach each other; the caller cuts links between them
    /// with routes of its own. One entry per node (voters, then brokers).
    #[must_use]
    pub fn network_namespaces(mut self, hosts: Vec<(String, Ipv4Addr)>) -> Self {
        self.hosts = hosts;
        self
    }

    /// How many voters (default 3), with ids 1 to N.
    #[must_use]
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// An extra broker property for every node (`--set key=value`). The
    /// flags the testkit passes (listeners, voters, data directory, metrics)
    /// take precedence over the same properties set here.
    #[must_use]
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((key.into(), value.into()));
        self
    }

    /// An environment variable for node `node`'s process (at every start
    /// and restart): `LD_PRELOAD` of a library, say.
    #[must_use]
    pub fn node_env(mut self, node: i32, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.node_env.push((node, key.into(), value.into()));
        self
    }

    /// An extra broker property for node `node` only (`broker.rack` of
    /// each node, say); it comes after the properties for every node
    /// ([`set`](Self::set)), so it overrides them on that node.
    #[must_use]
    pub fn set_node(mut self, node: i32, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.node_properties.push((node, key.into(), value.into()));
        self
    }

    /// Where the nodes' directories go (`n1/`, `n1.stderr.log`, ...); kept
    /// after the cluster is dropped. By default a temporary directory,
    /// removed on drop.
    #[must_use]
    pub fn data_dir_root(mut self, path: impl Into<PathBuf>) -> Self {
        self.data_dir_root = Some(path.into());
        self
    }

    /// Fixed ports: node `i` (from 0) listens for clients on `base + 100·i`
    /// and for the controller quorum on `base + 100·i + 1` (9092/9093,
    /// 9192/9193, ... for base 9092). By default, free ports.
    #[must_use]
    pub fn ports(mut self, base: u16) -> Self {
        self.base_port = Some(base);
        self
    }

    /// How long to wait for every node's ready line (default
    /// [`DEFAULT_READY_TIMEOUT`]).
    #[must_use]
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Puts a proxy on every directed link between voters, so that links
    /// can be cut and healed ([`LocalCluster::cut`], [`LocalCluster::isolate`],
    /// [`LocalCluster::heal`]): node `i`'s `--voters` names, for each other
    /// voter `j`, a proxy for the link `i → j` on a free port. The proxies
    /// run on the runtime that calls [`start`](Self::start) and stop with
    /// the cluster. Off by default: voters then connect directly.
    #[must_use]
    pub fn with_link_proxies(mut self) -> Self {
        self.link_proxies = true;
        self
    }

    /// The voters run only the controller (`process.roles=controller`) and
    /// serve no clients; add brokers with [`brokers`](Self::brokers).
    #[must_use]
    pub fn controller_only(mut self) -> Self {
        self.controller_only = true;
        self
    }

    /// Broker-only nodes (`process.roles=broker`) besides the voters, with
    /// the ids after theirs (default none).
    #[must_use]
    pub fn brokers(mut self, n: usize) -> Self {
        self.brokers = n;
        self
    }

    /// Starts every node, then waits until all are ready. On failure every
    /// node started is killed and the temporary directory removed.
    ///
    /// Free ports are found by binding port 0 and letting go, so another
    /// process can take one before its node binds it: a start that fails
    /// for that reason (the node says "Address already in use") is tried
    /// again with new ports and a new directory, up to
    /// [`START_ATTEMPTS`] times, unless ports or the directory are fixed.
    pub async fn start(self) -> Result<LocalCluster, TestkitError> {
        let retriable =
            self.base_port.is_none() && self.data_dir_root.is_none() && self.hosts.is_empty();
        let mut attempt = 1;
        loop {
            match self.clone().start_once().await {
                Err(TestkitError::Exited { tail, .. })
                    if retriable
                        && attempt < START_ATTEMPTS
                        && tail.contains("Address already in use") =>
                {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn start_once(self) -> Result<LocalCluster, TestkitError> {
        if self.nodes == 0 {
            return Err(TestkitError::Invalid(
                "a cluster needs at least one node".to_owned(),
            ));
        }
        let total = self.nodes + self.brokers;
        let count = i32::try_from(total)
            .ok()
            .filter(|n| *n <= 100)
            .ok_or_else(|| TestkitError::Invalid(format!("{total} nodes: at most 100")))?;
        let voter_count = i32::try_from(self.nodes).unwrap_or(count);
        let voter_role = if self.controller_only {
            Role::Controller
        } else {
            Role::Combined
        };
        let (temp, root) = match &self.data_dir_root {
            Some(root) => {
                std::fs::create_dir_all(root)
                    .map_err(io_error(format!("creating {}", root.display())))?;
                (None, root.clone())
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("strom-cluster-")
                    .tempdir()
                    .map_err(io_error("creating a temporary directory"))?;
                let root = temp.path().to_path_buf();
                (Some(temp), root)
            }
        };
        if !self.hosts.is_empty() && self.hosts.len() != total {
            return Err(TestkitError::Invalid(format!(
                "{total} nodes but {} network namespaces",
                self.hosts.len()
            )));
        }
        let ports = match self.base_port {
            _ if !self.hosts.is_empty() => vec![NAMESPACE_PORTS; total],
            Some(base) => fixed_ports(base, total)?,
            None => free_ports(total * 2)
                .map_err(io_error("picking free ports on 127.0.0.1"))?
                .chunks(2)
                .map(|pair| (pair[0], pair[1]))
                .collect(),
        };
        let hosts = &self.hosts;
        let host = |id: i32| {
            usize::try_from(id - 1)
                .ok()
                .and_then(|i| hosts.get(i))
                .map_or(Ipv4Addr::LOCALHOST, |h| h.1)
        };
        let mut nodes = (1..=count)
            .zip(ports)
            .map(|(id, (client, controller))| Node {
                namespace: usize::try_from(id - 1)
                    .ok()
                    .and_then(|i| hosts.get(i))
                    .map(|h| h.0.clone()),
                id,
                role: if id <= voter_count {
                    voter_role
                } else {
                    Role::Broker
                },
                addr: SocketAddr::from((host(id), client)),
                controller_addr: SocketAddr::from((host(id), controller)),
                voters: String::new(),
                data_dir: root.join(format!("n{id}")),
                stderr_log: root.join(format!("n{id}.stderr.log")),
                child: None,
                ready: watch::channel(None).1,
                metrics_url: watch::channel(None).1,
            })
            .collect::<Vec<_>>();
        let real: Vec<(i32, SocketAddr)> = nodes
            .iter()
            .filter(|n| n.role != Role::Broker)
            .map(|n| (n.id, n.controller_addr))
            .collect();
        let links = if self.link_proxies {
            Some(
                LinkProxies::start(&real)
                    .await
                    .map_err(io_error("starting the link proxies on 127.0.0.1"))?,
            )
        } else {
            None
        };
        for node in &mut nodes {
            let links = links.as_ref().filter(|_| node.role != Role::Broker);
            node.voters = real
                .iter()
                .map(|&(peer, controller)| {
                    // A node's own entry is its listener; peers are reached
                    // through the link's proxy when there is one.
                    let addr = links
                        .and_then(|l| l.addr(node.id, peer))
                        .unwrap_or(controller);
                    format!("{peer}@{addr}")
                })
                .collect::<Vec<_>>()
                .join(",");
        }
        let mut cluster = LocalCluster {
            binary: self.binary,
            properties: self.properties,
            node_properties: self.node_properties,
            node_env: self.node_env,
            ready_timeout: self.ready_timeout,
            nodes,
            links,
            _temp: temp,
        };
        // Every process first: none is ready before a quorum is up.
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i)?;
        }
        let timeout = cluster.ready_timeout;
        let results =
            futures::future::join_all(cluster.nodes.iter_mut().map(|n| n.wait_ready(timeout)))
                .await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        Ok(cluster)
    }
}

/// `(client, controller)` ports for `nodes` nodes from `base`.
fn fixed_ports(base: u16, nodes: usize) -> Result<Vec<(u16, u16)>, TestkitError> {
    (0..nodes)
        .map(|i| {
            let client = u16::try_from(i * 100)
                .ok()
                .and_then(|offset| base.checked_add(offset))
                .filter(|p| *p != 0);
            let controller = client.and_then(|p| p.checked_add(1));
            client.zip(controller).ok_or_else(|| {
                TestkitError::Invalid(format!(
                    "base port {base} leaves no room for {nodes} nodes (ports base + 100·i and base + 100·i + 1 up to 65535)"
                ))
            })
        })
        .collect()
}

/// Where nodes' free ports are picked: below Linux's default ephemeral
/// range (32768–60999), so that a node that is down for a while and comes
/// back on the same port cannot find it taken by an outgoing connection or
/// by a listener on port 0 (another test's broker) in the meantime.
const NODE_PORTS: std::ops::Range<u16> = 20_000..32_768;

/// Random picks from [`NODE_PORTS`] per port wanted before falling back to
/// port 0 (the range is nearly full).
const NODE_PORT_TRIES: usize = 200;

/// `n` distinct free ports on 127.0.0.1, from [`NODE_PORTS`] at random
/// (port 0's choice if none is free): all bound at once (so no two are
/// the same), then released for the nodes to bind.
fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let mut state = u64::from(std::process::id()).rotate_left(32)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()) ^ d.as_secs());
    let mut next = || {
        // xorshift64*: good enough to spread picks over the range.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let span = u64::from(NODE_PORTS.end - NODE_PORTS.start);
    let mut sockets: Vec<TcpListener> = Vec::with_capacity(n);
    let mut tries = 0;
    while sockets.len() < n {
        tries += 1;
        let socket = if tries <= n * NODE_PORT_TRIES {
            let offset = u16::try_from(next() % span).unwrap_or(0);
            match TcpListener::bind((Ipv4Addr::LOCALHOST, NODE_PORTS.start + offset)) {
                Ok(socket) => socket,
                Err(_) => continue,
            }
        } else {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        };
        sockets.push(socket);
    }
    sockets
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()))
        .collect()
}

/// A running local cluster; see the [crate docs](crate). Nodes are numbered
/// from 1. Methods taking a node id panic on ids not in
/// [`node_ids`](Self::node_ids) where they return no `Result` (a test's
/// mistake, not an input), and return [`TestkitError::UnknownNode`] where
/// they do.
#[derive(Debug)]
pub struct LocalCluster {
    binary: PathBuf,
    properties: Vec<(String, String)>,
    node_properties: Vec<(i32, String, String)>,
    node_env: Vec<(i32, String, String)>,
    ready_timeout: Duration,
    nodes: Vec<Node>,
    /// The proxies between voters, when the builder asked for them.
    links: Option<LinkProxies>,
    /// Dropped after [`Drop::drop`] has reaped the nodes.
    _temp: Option<tempfile::TempDir>,
}

#[derive(Debug)]
struct Node {
    id: i32,
    role: Role,
    /// The network namespace it runs in, if not the caller's.
    namespace: Option<String>,
    addr: SocketAddr,
    controller_addr: SocketAddr,
    /// This node's `--voters`: the same for every node, except that with
    /// link proxies each names its own proxies for its peers.
    voters: String,
    data_dir: PathBuf,
    stderr_log: PathBuf,
    child: Option<Child>,
    /// The ready line, once the current process has printed it.
    ready: watch::Receiver<Option<String>>,
    /// `http://HOST:PORT/metrics`, once the current process has printed its
    /// metrics line (the line after the ready line).
    metrics_url: watch::Receiver<Option<String>>,
}

impl LocalCluster {
    /// A cluster of the `strom` binary at `strom_binary`.
    pub fn builder(strom_binary: impl Into<PathBuf>) -> ClusterBuilder {
        ClusterBuilder {
            binary: strom_binary.into(),
            nodes: 3,
            properties: Vec::new(),
            node_properties: Vec::new(),
            node_env: Vec::new(),
            data_dir_root: None,
            base_port: None,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            link_proxies: false,
            controller_only: false,
            brokers: 0,
            hosts: Vec::new(),
        }
    }

    /// The bootstrap servers: `127.0.0.1:p1,127.0.0.1:p2,...` (the nodes
    /// that run a broker).
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.role.is_broker())
            .map(|n| n.addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node ids, 1 to N.
    pub fn node_ids(&self) -> Vec<i32> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// What the node runs.
    pub fn role(&self, node: i32) -> Role {
        self.node(node).role
    }

    /// Starts one more broker-only node (the next id) that joins the
    /// running cluster, and waits until it is ready; returns its id.
    pub async fn add_broker(&mut self) -> Result<i32, TestkitError> {
        let ports = free_ports(1).map_err(io_error("picking a free port on 127.0.0.1"))?;
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let voters = self
            .nodes
            .iter()
            .filter(|n| n.role != Role::Broker)
            .map(|n| format!("{}@{}", n.id, n.controller_addr))
            .collect::<Vec<_>>()
            .join(",");
        let root = self
            .nodes
            .first()
            .and_then(|n| n.data_dir.parent())
            .map(Path::to_path_buf)
            .ok_or_else(|| TestkitError::Invalid("a cluster without nodes".to_owned()))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ports[0]));
        self.nodes.push(Node {
            id,
            role: Role::Broker,
            namespace: None,
            addr,
            controller_addr: addr,
            voters,
            data_dir: root.join(format!("n{id}")),
            stderr_log: root.join(format!("n{id}.stderr.log")),
            child: None,
            ready: watch::channel(None).1,
            metrics_url: watch::channel(None).1,
        });
        let i = self.nodes.len() - 1;
        self.spawn(i)?;
        let timeout = self.ready_timeout;
        self.nodes[i].wait_ready(timeout).await?;
        Ok(id)
    }

    /// The node's client listener.
    pub fn addr(&self, node: i32) -> SocketAddr {
        self.node(node).addr
    }

    /// The node's controller listener (its entry in the voters).
    pub fn controller_addr(&self, node: i32) -> SocketAddr {
        self.node(node).controller_addr
    }

    /// The node's `--voters` list (with link proxies, its own).
    pub fn voters(&self, node: i32) -> &str {
        &self.node(node).voters
    }

    /// The node's data directory.
    pub fn data_dir(&self, node: i32) -> &Path {
        &self.node(node).data_dir
    }

    /// The file the node's stderr (its log) goes to, kept across restarts.
    pub fn stderr_log(&self, node: i32) -> &Path {
        &self.node(node).stderr_log
    }

    /// The node's ready line (`Strom broker <id> listening on ...`) once
    /// its current process has printed it.
    pub fn ready_line(&self, node: i32) -> Option<String> {
        self.node(node).ready.borrow().clone()
    }

    /// The node's metrics endpoint (`http://HOST:PORT/metrics`, a free
    /// port per process) once its current process has printed it, just
    /// after its ready line.
    pub fn metrics_url(&self, node: i32) -> Option<String> {
        self.node(node).metrics_url.borrow().clone()
    }

    /// The node's process id while it runs.
    pub fn pid(&self, node: i32) -> Option<u32> {
        self.node(node).child.as_ref().and_then(Child::id)
    }

    /// Whether the node's current process has exited (by itself or by a
    /// signal) or was never started; reaps it if it has.
    pub fn exited(&mut self, node: i32) -> bool {
        match self.node_mut(node) {
            Ok(n) => n
                .child
                .as_mut()
                .is_none_or(|c| !matches!(c.try_wait(), Ok(None))),
            Err(_) => true,
        }
    }

    /// `kill -9` the node and wait for it to exit.
    pub async fn kill(&mut self, node: i32) -> Result<(), TestkitError> {
        let n = self.node_mut(node)?;
        let Some(child) = n.child.take() else {
            return Ok(());
        };
        kill_and_reap(node, child).await
    }

    /// Stops the node as an operator does (SIGTERM: a clean shutdown) and
    /// waits for it to exit; after [`STOP_TIMEOUT`] it is killed. A paused
    /// node is resumed so that it can stop.
    pub async fn stop(&mut self, node: i32) -> Result<(), TestkitError> {
        let n = self.node_mut(node)?;
        let Some(child) = n.child.take() else {
            return Ok(());
        };
        terminate(node, &child)?;
        finish_stop(node, child, tokio::time::Instant::now() + STOP_TIMEOUT).await
    }

    /// Stops every node at once (SIGTERM to all, as [`stop`](Self::stop))
    /// and waits for all of them; those still running after
    /// [`STOP_TIMEOUT`] are killed.
    pub async fn stop_all(&mut self) -> Result<(), TestkitError> {
        let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
        let mut stopping = Vec::new();
        for node in &mut self.nodes {
            if let Some(child) = node.child.take() {
                // Even if one signal fails, the others are stopped, and the
                // child is kept to be waited for.
                let sent = terminate(node.id, &child);
                stopping.push((node.id, child, sent));
            }
        }
        let results =
            futures::future::join_all(stopping.into_iter().map(|(id, child, sent)| async move {
                let waited = finish_stop(id, child, deadline).await;
                sent.and(waited)
            }))
            .await;
        results.into_iter().collect()
    }

    /// SIGSTOP: the node stops answering anyone, as a long GC pause or a
    /// stalled VM would make it, until [`resume`](Self::resume).
    pub fn pause(&self, node: i32) -> Result<(), TestkitError> {
        let pid = self.running_pid(node)?;
        signal(node, pid, rustix::process::Signal::STOP)
    }

    /// SIGCONT: a paused node runs again.
    pub fn resume(&self, node: i32) -> Result<(), TestkitError> {
        let pid = self.running_pid(node)?;
        signal(node, pid, rustix::process::Signal::CONT)
    }

    /// Starts the node again with the same ports and data directory (after
    /// stopping it if it runs) and waits for its ready line.
    pub async fn restart(&mut self, node: i32) -> Result<(), TestkitError> {
        self.stop(node).await?;
        let i = self.index(node)?;
        self.spawn(i)?;
        let timeout = self.ready_timeout;
        self.nodes[i].wait_ready(timeout).await
    }

    /// Sets the directed link `from → to` (the connections `from` opens to
    /// `to`'s controller listener); see [`links`].
    pub fn set_link(&self, from: i32, to: i32, state: LinkState) -> Result<(), TestkitError> {
        let links = self.links.as_ref().ok_or(TestkitError::NoLinkProxies)?;
        for node in [from, to] {
            self.index(node)?;
        }
        if from == to || !links.set(from, to, state) {
            return Err(TestkitError::Invalid(format!(
                "no link from {from} to {to}"
            )));
        }
        Ok(())
    }

    /// The state of the directed link `from → to`.
    pub fn link(&self, from: i32, to: i32) -> Result<LinkState, TestkitError> {
        let links = self.links.as_ref().ok_or(TestkitError::NoLinkProxies)?;
        links
            .state(from, to)
            .ok_or_else(|| TestkitError::Invalid(format!("no link from {from} to {to}")))
    }

    /// A network partition between `a` and `b`: both directions
    /// blackholed (open connections closed, new ones never answered).
    pub fn cut(&self, a: i32, b: i32) -> Result<(), TestkitError> {
        self.set_link(a, b, LinkState::Blackholed)?;
        self.set_link(b, a, LinkState::Blackholed)
    }

    /// Cuts `node` from every other voter, both ways. Its client listener
    /// stays reachable.
    pub fn isolate(&self, node: i32) -> Result<(), TestkitError> {
        self.index(node)?;
        for other in self.node_ids() {
            if other != node {
                self.cut(node, other)?;
            }
        }
        Ok(())
    }

    /// Every link up again.
    pub fn heal(&self) -> Result<(), TestkitError> {
        self.links
            .as_ref()
            .ok_or(TestkitError::NoLinkProxies)?
            .heal();
        Ok(())
    }

    /// Waits until the node's current process has printed its ready line.
    pub async fn wait_ready(&mut self, node: i32, timeout: Duration) -> Result<(), TestkitError> {
        self.node_mut(node)?.wait_ready(timeout).await
    }

    fn index(&self, node: i32) -> Result<usize, TestkitError> {
        self.nodes
            .iter()
            .position(|n| n.id == node)
            .ok_or(TestkitError::UnknownNode(node))
    }

    fn node(&self, node: i32) -> &Node {
        match self.index(node) {
            Ok(i) => &self.nodes[i],
            Err(_) => panic!(
                "the cluster has no node {node}; its nodes are {:?}",
                self.node_ids()
            ),
        }
    }

    fn node_mut(&mut self, node: i32) -> Result<&mut Node, TestkitError> {
        let i = self.index(node)?;
        Ok(&mut self.nodes[i])
    }

    fn running_pid(&self, node: i32) -> Result<u32, TestkitError> {
        let i = self.index(node)?;
        self.nodes[i]
            .child
            .as_ref()
            .and_then(Child::id)
            .ok_or(TestkitError::NotRunning(node))
    }

    /// Starts node `i`'s process; its stdout is read for the ready line.
    fn spawn(&mut self, i: usize) -> Result<(), TestkitError> {
        let node = &mut self.nodes[i];
        std::fs::create_dir_all(&node.data_dir)
            .map_err(io_error(format!("creating {}", node.data_dir.display())))?;
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.stderr_log)
            .map_err(io_error(format!("opening {}", node.stderr_log.display())))?;
        let mut command = match &node.namespace {
            // `ip netns exec` execs the binary: the child's pid is the
            // node's, so signals reach it.
            Some(namespace) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", namespace]).arg(&self.binary);
                command
            }
            None => Command::new(&self.binary),
        };
        command
            .arg("broker")
            .args(["--node-id", &node.id.to_string()]);
        if node.role.is_broker() {
            command.args(["--listen", &node.addr.to_string()]);
        }
        if node.role != Role::Broker {
            command.args(["--controller-listen", &node.controller_addr.to_string()]);
        }
        command
            .args(["--voters", &node.voters])
            .args(["--metrics", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&node.data_dir);
        match node.role {
            Role::Combined => {}
            Role::Controller => {
                command.args(["--set", "process.roles=controller"]);
            }
            Role::Broker => {
                command.args(["--set", "process.roles=broker"]);
            }
        }
        for (key, value) in &self.properties {
            command.arg("--set").arg(format!("{key}={value}"));
        }
        for (_, key, value) in self
            .node_properties
            .iter()
            .filter(|(id, ..)| *id == node.id)
        {
            command.arg("--set").arg(format!("{key}={value}"));
        }
        if std::env::var_os("STROM_LOG").is_none() {
            command.env("STROM_LOG", "info");
        }
        for (_, key, value) in self.node_env.iter().filter(|(id, ..)| *id == node.id) {
            command.env(key, value);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            // A test that panics drops its cluster; this covers a cluster
            // dropped while a node is half started.
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(io_error(format!(
            "starting node {} ({})",
            node.id,
            self.binary.display()
        )))?;
        let (tx, rx) = watch::channel(None);
        let (metrics_tx, metrics_rx) = watch::channel(None);
        if let Some(stdout) = child.stdout.take() {
            let kind = if node.role.is_broker() {
                "broker"
            } else {
                "controller"
            };
            let prefix = format!("Strom {kind} {} listening on", node.id);
            let metrics_prefix = format!("Strom {kind} {} metrics on ", node.id);
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                // Read to the end, so the node never blocks on a full pipe.
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.starts_with(&prefix) {
                        tx.send_replace(Some(line));
                    } else if let Some(url) = line.strip_prefix(&metrics_prefix) {
                        metrics_tx.send_replace(Some(url.trim().to_owned()));
                    }
                }
            });
        }
        node.ready = rx;
        node.metrics_url = metrics_rx;
        node.child = Some(child);
        Ok(())
    }
}

impl Node {
    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), TestkitError> {
        let id = self.id;
        let mut ready = self.ready.clone();
        let Some(child) = self.child.as_mut() else {
            return Err(TestkitError::NotRunning(id));
        };
        let deadline = Instant::now() + timeout;
        let exited = tokio::select! {
            // Only whether the line came: the borrow `wait_for` returns
            // must not live across the await below (it is not `Send`, and
            // a cluster is started from spawned tasks too).
            printed = async { ready.wait_for(Option::is_some).await.is_ok() } => {
                if printed {
                    return Ok(());
                }
                // Stdout closed without the line: the process is exiting.
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::time::timeout(left, child.wait()).await.ok()
            }
            status = child.wait() => Some(status),
            () = tokio::time::sleep(timeout) => None,
        };
        let tail = tail(&self.stderr_log);
        let log = self.stderr_log.clone();
        Err(match exited {
            Some(status) => {
                self.child = None;
                TestkitError::Exited {
                    node: id,
                    status: status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                    log,
                    tail,
                }
            }
            None => TestkitError::NotReady {
                node: id,
                timeout,
                log,
                tail,
            },
        })
    }
}

/// SIGTERM, and SIGCONT in case the node is paused (a stopped process
/// handles SIGTERM only once it runs again).
fn terminate(node: i32, child: &Child) -> Result<(), TestkitError> {
    if let Some(pid) = child.id() {
        signal(node, pid, rustix::process::Signal::TERM)?;
        signal(node, pid, rustix::process::Signal::CONT)?;
    }
    Ok(())
}

/// Waits for a node told to stop until `deadline`, then kills it.
async fn finish_stop(
    node: i32,
    mut child: Child,
    deadline: tokio::time::Instant,
) -> Result<(), TestkitError> {
    if let Ok(status) = tokio::time::timeout_at(deadline, child.wait()).await {
        return status
            .map(drop)
            .map_err(io_error(format!("waiting for node {node}")));
    }
    kill_and_reap(node, child).await
}

/// SIGKILL, then waits for the process to be gone.
async fn kill_and_reap(node: i32, mut child: Child) -> Result<(), TestkitError> {
    child
        .start_kill()
        .map_err(io_error(format!("killing node {node}")))?;
    child
        .wait()
        .await
        .map(drop)
        .map_err(io_error(format!("waiting for node {node}")))
}

/// The last lines of a log file, for an error.
fn tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
        }
        Err(e) => format!("(cannot read it: {e})"),
    }
}

fn signal(node: i32, pid: u32, sig: rustix::process::Signal) -> Result<(), TestkitError> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| TestkitError::Invalid(format!("node {node}: bad process id {pid}")))?;
    rustix::process::kill_process(pid, sig).map_err(|e| TestkitError::Io {
        what: format!("sending {sig:?} to node {node}"),
        source: e.into(),
    })
}

impl Drop for LocalCluster {
    /// Kills every node, then waits for each to exit (bounded), so that no
    /// process outlives the cluster and the temporary directory is removed
    /// only once nothing writes to it.
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                let _ = child.start_kill();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for node in &mut self.nodes {
            let Some(mut child) = node.child.take() else {
                continue;
            };
            // Drop cannot await: poll the exit with a deadline.
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_ports_follow_the_readmes_layout_and_stop_at_65535() {
        assert_eq!(
            fixed_ports(9092, 3).ok(),
            Some(vec![(9092, 9093), (9192, 9193), (9292, 9293)])
        );
        let err = fixed_ports(65_450, 2).expect_err("past 65535").to_string();
        assert!(err.contains("65450"), "{err}");
        assert!(
            fixed_ports(65_535, 1).is_err(),
            "no room for the controller port"
        );
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(8).expect("free ports");
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 8, "{ports:?}");
        assert!(!ports.contains(&0));
    }

    /// A cluster can be started and driven from a spawned task.
    #[test]
    fn the_futures_are_send() {
        fn send<T: Send>(_: &T) {}
        let start = LocalCluster::builder("strom").start();
        send(&start);
    }

    #[tokio::test]
    async fn a_cluster_of_no_nodes_is_an_error() {
        let err = LocalCluster::builder("strom")
            .nodes(0)
            .start()
            .await
            .expect_err("no nodes")
            .to_string();
        assert!(err.contains("at least one node"), "{err}");
    }
}
