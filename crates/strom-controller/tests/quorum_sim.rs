//! A deterministic simulation of the controller quorum: the real quorum
//! (openraft, our log store on real `PartitionLog`s in temp dirs with fsync,
//! our state machine) over a simulated network ([`Transport`]), on a
//! current-thread tokio runtime with paused time, so timeouts are virtual
//! and ten virtual seconds of faults take a fraction of a real one.
//!
//! Per seed: 3 or 5 voters; clients write topic records through whichever
//! node they think leads; a nemesis delays, drops and duplicates messages,
//! partitions the voters (one node isolated, or a minority split off),
//! holds a node's traffic (a pause as the network sees it: its own timers
//! keep running), crashes nodes (the quorum stopped wherever it is, its log
//! dropped with or without a clean close) and restarts them from their
//! directories, and isolates a leader with writes pending, then crashes it.
//! Then everything heals and the checks run. The invariants, checked as the
//! run goes and at the end:
//!
//! 1. election safety: at most one leader per term, and no node's term goes
//!    back (across restarts too);
//! 2. log matching: an index committed on two nodes, or seen committed at two
//!    times, holds the same entry (term and records);
//! 3. durability: every acknowledged write is, after healing, at its offset
//!    in every node's committed log and in its image, and no write is in a
//!    log twice;
//! 4. convergence: after healing every node applies the same image;
//! 5. no write is acknowledged by a node that could not reach a majority
//!    during the write (the nodes it shared a side with at some point of
//!    the write, itself included, are fewer than a majority: a leader may
//!    gather its majority across changing partitions, but not from fewer);
//!
//! and liveness: a write commits within a minute of healing. openraft also
//! checks its own state at every step in a debug build.
//!
//! Replay: the seed decides the cluster size, the faults, every message's
//! delay and fate, the clients' choices and openraft's election timeouts
//! (`seed_thread_rng`); with one thread, virtual time and watch channels that
//! wake in order, a seed replays the same run (`a_seed_replays_the_same_run`).
//! Not modelled: losing what the page cache held (every append is fsynced,
//! but an in-process crash keeps the page cache anyway), and a process
//! pause that stops the node's own timers.
//!
//! `STROM_SIM_SEEDS=N` runs N seeds (from `STROM_SIM_FIRST_SEED`, default 0);
//! `STROM_SIM_SEED=S` replays one and prints its faults and trace (with
//! `--no-capture`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strom_controller::quorum::{
    FrameHandler, Quorum, QuorumConfig, Transport, WriteError, seed_thread_rng,
};
use strom_controller::{MetadataImage, MetadataRecord};
use strom_storage::{PartitionLog, SystemClock};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

/// Seeds run by default: enough to meet every fault kind many times, few
/// enough that the test stays well under a minute in a debug build on a
/// busy 2-core machine.
const DEFAULT_SEEDS: u64 = 40;
/// Virtual time under faults, then everything heals.
const CHAOS: Duration = Duration::from_secs(10);
/// A write must commit within this (virtual) time after healing.
const LIVENESS: Duration = Duration::from_secs(60);
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
const ELECTION_TIMEOUT_MS: u64 = 1000;
const CLIENTS: usize = 3;
const CLUSTER_ID: &str = "sim-cluster";

// ---------------------------------------------------------------------------
// The checker: pure, fed with observations, so it can be tested on
// fabricated histories.

/// A log entry as `Quorum::log_entries` gives it: (index, term, records;
/// None for blank and membership entries).
type Entry = (u64, u64, Option<Vec<MetadataRecord>>);

/// An acknowledged write.
#[derive(Debug, Clone)]
struct Ack {
    node: i32,
    records: Vec<MetadataRecord>,
    /// The image offset after it: the entry is at index `offset - 1`.
    offset: i64,
    /// When the write started, from the start of the run.
    started: Duration,
    /// The nodes the acknowledging node shared a partition side with at
    /// some point of the write, itself included.
    reachable: BTreeSet<i32>,
    /// How many voters there are.
    voters: usize,
}

#[derive(Debug, Default)]
struct Checker {
    /// Per term, the leader named and the first node that named it.
    leaders: BTreeMap<i32, (i32, i32)>,
    /// Per node, the highest term it reported.
    terms: BTreeMap<i32, i32>,
    /// Per index, the committed entry and the first node seen with it.
    committed: BTreeMap<u64, (u64, Option<Vec<MetadataRecord>>, i32)>,
    acks: Vec<Ack>,
    violations: Vec<String>,
}

impl Checker {
    /// Node `node` says `leader` leads term `term`.
    fn saw_leader(&mut self, node: i32, term: i32, leader: Option<i32>) {
        let highest = self.terms.entry(node).or_insert(term);
        if term < *highest {
            self.violations.push(format!(
                "election safety: node {node}'s term went back from {highest} to {term}"
            ));
        }
        *highest = (*highest).max(term);
        let Some(leader) = leader else { return };
        match self.leaders.get(&term) {
            None => {
                self.leaders.insert(term, (leader, node));
            }
            Some(&(known, by)) if known != leader => self.violations.push(format!(
                "election safety: term {term} has two leaders: {known} (seen by node {by}) and {leader} (seen by node {node})"
            )),
            Some(_) => {}
        }
    }

    /// `entries` are committed on node `node` (applied there).
    fn saw_committed(&mut self, node: i32, entries: &[Entry]) {
        for (index, term, records) in entries {
            match self.committed.get(index) {
                None => {
                    self.committed
                        .insert(*index, (*term, records.clone(), node));
                }
                Some((t, r, by)) if t != term || r != records => self.violations.push(format!(
                    "log matching: index {index} committed as term {t} {r:?} on node {by}, as term {term} {records:?} on node {node}"
                )),
                Some(_) => {}
            }
        }
    }

    fn acked(&mut self, ack: Ack) {
        if ack.reachable.len() < ack.voters / 2 + 1 {
            self.violations.push(format!(
                "isolation: node {} acknowledged {:?} at offset {}, a write started at {:?}, although it could reach only {:?} of {} voters meanwhile",
                ack.node, ack.records, ack.offset, ack.started, ack.reachable, ack.voters
            ));
        }
        self.acks.push(ack);
    }

    /// The end of a run, after healing: every node's committed entries
    /// and image.
    fn check_final(&mut self, finals: &[(i32, Vec<Entry>, Arc<MetadataImage>)]) {
        for (node, entries, _) in finals {
            self.saw_committed(*node, entries);
        }
        if let Some((first, _, image)) = finals.first() {
            for (node, _, other) in &finals[1..] {
                if other != image {
                    self.violations.push(format!(
                        "convergence: node {node}'s image (offset {}) differs from node {first}'s (offset {})",
                        other.offset, image.offset
                    ));
                }
            }
        }
        for (node, entries, image) in finals {
            let by_index: BTreeMap<u64, &Option<Vec<MetadataRecord>>> =
                entries.iter().map(|(i, _, r)| (*i, r)).collect();
            for ack in &self.acks {
                for r in &ack.records {
                    if let MetadataRecord::Topic { name, .. } = r
                        && image.topic(name).is_none()
                    {
                        self.violations.push(format!(
                            "durability: topic {name} acknowledged by node {} at offset {} is not in node {node}'s image",
                            ack.node, ack.offset
                        ));
                    }
                }
                let index = u64::try_from(ack.offset - 1).unwrap_or(u64::MAX);
                let found = by_index.get(&index);
                if found.is_none_or(|r| r.as_ref() != Some(&ack.records)) {
                    self.violations.push(format!(
                        "durability: {:?} acknowledged by node {} at offset {} is not there on node {node} (found {found:?})",
                        ack.records, ack.node, ack.offset
                    ));
                }
            }
            let mut seen = BTreeSet::new();
            for (index, _, records) in entries {
                for r in records.iter().flatten() {
                    if let MetadataRecord::Topic { name, .. } = r
                        && !seen.insert(name.clone())
                    {
                        self.violations.push(format!(
                            "durability: topic {name} written twice on node {node} (again at index {index})"
                        ));
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The simulated network.

/// How lossy and slow the network is.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Weather {
    drop: f64,
    duplicate: f64,
    delay_ms_max: u64,
}

const CALM: Weather = Weather {
    drop: 0.0,
    duplicate: 0.0,
    delay_ms_max: 3,
};

#[derive(Debug, Default)]
struct Endpoint {
    /// None while the node is down.
    handler: Option<FrameHandler>,
    /// Bumped at every crash: a message sent to an earlier incarnation is
    /// never delivered to a later one (its TCP connection was reset).
    incarnation: u64,
}

#[derive(Debug)]
struct NetState {
    /// Every message's delay and fate, in the order messages are sent.
    rng: StdRng,
    weather: Weather,
    endpoints: BTreeMap<i32, Endpoint>,
    /// The partition side of each voter: two nodes talk iff on one side.
    side: BTreeMap<i32, u32>,
    /// Nodes whose traffic waits (in both directions) until released.
    held: BTreeSet<i32>,
    /// Every partition from the start: since when, each voter's side.
    sides: Vec<(Instant, BTreeMap<i32, u32>)>,
    delivered: u64,
    lost: u64,
    duplicated: u64,
}

#[derive(Debug)]
struct NetInner {
    state: Mutex<NetState>,
    /// Told at every change of sides or holds: held messages look again.
    /// (A `Notify` wakes its waiters in order; a tokio `watch` in a random
    /// one, which would make runs differ.)
    changes: Notify,
}

#[derive(Debug, Clone)]
struct SimNet(Arc<NetInner>);

/// What happens to one request and its response, drawn when it is sent.
struct Plan {
    request_delay: Duration,
    request_lost: bool,
    response_delay: Duration,
    response_lost: bool,
    duplicate_after: Option<Duration>,
    incarnation: u64,
}

impl SimNet {
    fn new(seed: u64, voters: &[i32]) -> Self {
        let state = NetState {
            rng: StdRng::seed_from_u64(seed ^ 0x6e65_7477_6f72_6b00),
            weather: CALM,
            endpoints: voters.iter().map(|v| (*v, Endpoint::default())).collect(),
            side: voters.iter().map(|v| (*v, 0)).collect(),
            held: BTreeSet::new(),
            sides: vec![(Instant::now(), voters.iter().map(|v| (*v, 0)).collect())],
            delivered: 0,
            lost: 0,
            duplicated: 0,
        };
        Self(Arc::new(NetInner {
            state: Mutex::new(state),
            changes: Notify::new(),
        }))
    }

    fn changed(&self) {
        self.0.changes.notify_waiters();
    }

    fn attach(&self, node: i32, handler: FrameHandler) {
        let mut s = self.0.state.lock();
        let e = s.endpoints.get_mut(&node).unwrap();
        e.handler = Some(handler);
    }

    fn detach(&self, node: i32) {
        let mut s = self.0.state.lock();
        let e = s.endpoints.get_mut(&node).unwrap();
        e.handler = None;
        e.incarnation += 1;
    }

    fn set_weather(&self, weather: Weather) {
        self.0.state.lock().weather = weather;
    }

    /// Puts every voter on side `side_of(voter)`.
    fn partition(&self, side_of: impl Fn(i32) -> u32) {
        {
            let mut s = self.0.state.lock();
            let voters: Vec<i32> = s.side.keys().copied().collect();
            for v in &voters {
                s.side.insert(*v, side_of(*v));
            }
            let sides = s.side.clone();
            s.sides.push((Instant::now(), sides));
        }
        self.changed();
    }

    fn hold(&self, node: i32, held: bool) {
        {
            let mut s = self.0.state.lock();
            if held {
                s.held.insert(node);
            } else {
                s.held.remove(&node);
            }
        }
        self.changed();
    }

    fn heal(&self) {
        self.set_weather(CALM);
        self.partition(|_| 0);
        self.0.state.lock().held.clear();
        self.changed();
    }

    /// The nodes `node` shared a side with at some point since `since`,
    /// itself included: the only ones a message could pass between.
    fn reachable_since(&self, node: i32, since: Instant) -> BTreeSet<i32> {
        let s = self.0.state.lock();
        // The partition in force at `since`, and every later one.
        let first = s.sides.iter().rposition(|(t, _)| *t <= since).unwrap_or(0);
        s.sides[first..]
            .iter()
            .flat_map(|(_, sides)| {
                sides
                    .iter()
                    .filter(|(_, side)| **side == sides[&node])
                    .map(|(v, _)| *v)
            })
            .collect()
    }

    fn plan(&self, to: i32) -> Plan {
        let mut s = self.0.state.lock();
        let w = s.weather;
        let incarnation = s.endpoints[&to].incarnation;
        let rng = &mut s.rng;
        let mut delay = || Duration::from_micros(rng.random_range(0..=w.delay_ms_max * 1000));
        let (request_delay, response_delay) = (delay(), delay());
        let duplicate_after = delay();
        Plan {
            request_delay,
            response_delay,
            request_lost: w.drop > 0.0 && s.rng.random_bool(w.drop),
            response_lost: w.drop > 0.0 && s.rng.random_bool(w.drop),
            duplicate_after: (w.duplicate > 0.0 && s.rng.random_bool(w.duplicate))
                .then_some(duplicate_after),
            incarnation,
        }
    }

    /// Waits while `a` or `b` is held, then says whether they talk.
    async fn pass(&self, a: i32, b: i32) -> bool {
        loop {
            let changed = self.0.changes.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            {
                let s = self.0.state.lock();
                if !s.held.contains(&a) && !s.held.contains(&b) {
                    return s.side[&a] == s.side[&b];
                }
            }
            changed.await;
        }
    }

    fn handler(&self, to: i32, incarnation: u64) -> io::Result<FrameHandler> {
        let s = self.0.state.lock();
        let e = &s.endpoints[&to];
        if e.incarnation != incarnation {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        e.handler
            .clone()
            .ok_or_else(|| io::ErrorKind::ConnectionRefused.into())
    }

    fn count(&self, f: impl FnOnce(&mut NetState)) {
        f(&mut self.0.state.lock());
    }

    /// Carries one request and its response. Runs as its own task: a
    /// request the sender stopped waiting for still arrives, as one
    /// already in the receiver's socket buffer would.
    async fn deliver(
        self,
        from: i32,
        to: i32,
        request: Vec<u8>,
        reply: oneshot::Sender<io::Result<Vec<u8>>>,
    ) {
        let plan = self.plan(to);
        tokio::time::sleep(plan.request_delay).await;
        if !self.pass(from, to).await || plan.request_lost {
            self.count(|s| s.lost += 1);
            return;
        }
        let handler = match self.handler(to, plan.incarnation) {
            Ok(h) => h,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        if let Some(after) = plan.duplicate_after {
            let (net, handler, copy) = (self.clone(), handler.clone(), request.clone());
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                if net.pass(from, to).await && net.handler(to, plan.incarnation).is_ok() {
                    net.count(|s| s.duplicated += 1);
                    let _ = handler.handle(copy).await;
                }
            });
        }
        let response = handler.handle(request).await;
        tokio::time::sleep(plan.response_delay).await;
        if !self.pass(to, from).await || plan.response_lost {
            self.count(|s| s.lost += 1);
            return;
        }
        self.count(|s| s.delivered += 1);
        let _ = reply.send(response);
    }
}

impl Transport for SimNet {
    fn exchange(
        &self,
        from: i32,
        to: i32,
        request: Vec<u8>,
    ) -> BoxFuture<'static, io::Result<Vec<u8>>> {
        let (tx, rx) = oneshot::channel();
        tokio::spawn(self.clone().deliver(from, to, request, tx));
        Box::pin(async move {
            match rx.await {
                Ok(result) => result,
                // Lost: only the caller's timeout ends the wait.
                Err(_) => std::future::pending().await,
            }
        })
    }
}

// ---------------------------------------------------------------------------
// The cluster under test.

struct Node {
    dir: PathBuf,
    quorum: Option<Arc<Quorum>>,
    log: Option<Arc<PartitionLog>>,
    /// A start is under way (two restarts scheduled by two faults must not
    /// both open the directory).
    starting: bool,
}

struct Cluster {
    seed: u64,
    net: SimNet,
    voters: BTreeMap<i32, String>,
    nodes: Mutex<BTreeMap<i32, Node>>,
    checker: Mutex<Checker>,
    /// What the nemesis did, for the report and the replay digest.
    events: Mutex<Vec<String>>,
    /// What the clients and nodes saw (writes, leaders), printed when one
    /// seed runs alone or fails.
    trace: Mutex<Vec<String>>,
    start: Instant,
    _dirs: tempfile::TempDir,
}

/// The nodes' directories: on tmpfs when there is one. The log store still
/// fsyncs every append; on tmpfs that costs nothing, and a crash here never
/// loses the page cache anyway, so the disk would add only wall time.
fn temp_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let builder = tempfile::Builder::new().prefix("strom-sim-").clone();
    if shm.is_dir()
        && let Ok(dir) = builder.tempdir_in(shm)
    {
        return dir;
    }
    builder.tempdir().unwrap()
}

fn open_log(dir: &std::path::Path) -> Arc<PartitionLog> {
    strom_controller::open_metadata_log(&dir.join("__cluster_metadata-0"), Arc::new(SystemClock))
        .expect("open the metadata log")
}

fn topic(seed: u64, name: String, n: u64) -> Vec<MetadataRecord> {
    vec![MetadataRecord::Topic {
        name,
        topic_id: uuid::Uuid::from_u64_pair(seed, n),
    }]
}

impl Cluster {
    fn new(seed: u64, size: i32) -> Arc<Self> {
        let dirs = temp_dir();
        let ids: Vec<i32> = (1..=size).collect();
        let nodes = ids
            .iter()
            .map(|id| {
                let dir = dirs.path().join(format!("node-{id}"));
                std::fs::create_dir_all(&dir).unwrap();
                (
                    *id,
                    Node {
                        dir,
                        quorum: None,
                        log: None,
                        starting: false,
                    },
                )
            })
            .collect();
        Arc::new(Self {
            seed,
            net: SimNet::new(seed, &ids),
            voters: ids.iter().map(|id| (*id, format!("sim:{id}"))).collect(),
            nodes: Mutex::new(nodes),
            checker: Mutex::new(Checker::default()),
            events: Mutex::new(Vec::new()),
            trace: Mutex::new(Vec::new()),
            start: Instant::now(),
            _dirs: dirs,
        })
    }

    fn ids(&self) -> Vec<i32> {
        self.voters.keys().copied().collect()
    }

    fn elapsed(&self) -> Duration {
        Instant::now() - self.start
    }

    fn event(&self, what: String) {
        let line = format!("{:>8.3}s {what}", self.elapsed().as_secs_f64());
        self.events.lock().push(line);
    }

    fn trace(&self, what: String) {
        let line = format!("{:>8.3}s {what}", self.elapsed().as_secs_f64());
        self.trace.lock().push(line);
    }

    fn quorum(&self, id: i32) -> Option<Arc<Quorum>> {
        self.nodes.lock()[&id].quorum.clone()
    }

    fn running(&self) -> Vec<(i32, Arc<Quorum>)> {
        self.nodes
            .lock()
            .iter()
            .filter_map(|(id, n)| n.quorum.clone().map(|q| (*id, q)))
            .collect()
    }

    /// Starts node `id` from its directory unless it runs or is starting;
    /// says whether it did.
    async fn start_node(self: &Arc<Self>, id: i32) -> bool {
        let dir = {
            let mut nodes = self.nodes.lock();
            let node = nodes.get_mut(&id).unwrap();
            if node.quorum.is_some() || node.starting {
                return false;
            }
            node.starting = true;
            node.dir.clone()
        };
        let log = open_log(&dir);
        let mut base = MetadataImage::default();
        base.cluster_id = CLUSTER_ID.to_owned();
        let config = QuorumConfig {
            node_id: id,
            voters: self.voters.clone(),
            election_timeout_ms: ELECTION_TIMEOUT_MS,
            request_timeout_ms: 500,
        };
        let quorum = Quorum::start_with_transport(
            config,
            Arc::clone(&log),
            base,
            Arc::new(self.net.clone()),
        )
        .await
        .expect("start the quorum");
        let quorum = Arc::new(quorum);
        self.net.attach(id, quorum.frame_handler());
        // Every change of term or leader this node reports, as it happens.
        let mut status = quorum.watch_status();
        let mut wrong_cluster = quorum.wrong_cluster();
        let cluster = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let (epoch, leader) = {
                    let s = status.borrow_and_update();
                    (s.epoch, s.leader)
                };
                let known = cluster.checker.lock().leaders.get(&epoch).map(|(l, _)| *l);
                if leader.is_some() && known.is_none() {
                    cluster.trace(format!("node {id}: leader {leader:?} in term {epoch}"));
                }
                cluster.checker.lock().saw_leader(id, epoch, leader);
                tokio::select! {
                    biased;
                    changed = status.changed() => if changed.is_err() { return },
                    _ = wrong_cluster.changed() => {
                        let seen = wrong_cluster.borrow().clone();
                        cluster.checker.lock().violations.push(format!("node {id} reported another cluster: {seen:?}"));
                    }
                }
            }
        });
        let mut nodes = self.nodes.lock();
        let node = nodes.get_mut(&id).unwrap();
        node.quorum = Some(quorum);
        node.log = Some(log);
        node.starting = false;
        true
    }

    /// Stops node `id` as a crash would: nothing more is delivered to it,
    /// its quorum stops wherever it is, and its log is dropped (closed
    /// first when `clean`).
    async fn crash(&self, id: i32, clean: bool) {
        let (quorum, log) = {
            let mut nodes = self.nodes.lock();
            let node = nodes.get_mut(&id).unwrap();
            (node.quorum.take(), node.log.take())
        };
        let (Some(quorum), Some(log)) = (quorum, log) else {
            return;
        };
        self.net.detach(id);
        quorum.shutdown().await;
        if clean {
            let _ = log.close();
        }
    }

    /// Records the committed entries of every running node.
    fn observe_commits(&self) {
        for (id, q) in self.running() {
            let entries = committed_entries(&q);
            self.checker.lock().saw_committed(id, &entries);
        }
    }
}

/// The entries of `q`'s log below its applied offset (so committed).
fn committed_entries(q: &Quorum) -> Vec<Entry> {
    let applied = u64::try_from(q.image().offset).unwrap_or(0);
    q.log_entries()
        .into_iter()
        .filter(|(index, _, _)| *index < applied)
        .collect()
}

async fn client(cluster: Arc<Cluster>, c: usize, until: Instant) {
    let mut rng = StdRng::seed_from_u64(cluster.seed ^ (0x636c_6965_6e74_0000 + c as u64));
    let ids = cluster.ids();
    let mut target = ids[rng.random_range(0..ids.len())];
    let mut n = 0;
    while Instant::now() < until {
        let Some(q) = cluster.quorum(target) else {
            target = ids[rng.random_range(0..ids.len())];
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        n += 1;
        let records = topic(cluster.seed, format!("c{c}-{n}"), ((c as u64) << 32) | n);
        let (started, started_at) = (cluster.elapsed(), Instant::now());
        let result = q.write(records.clone(), WRITE_TIMEOUT).await;
        cluster.trace(format!(
            "client {c}: write c{c}-{n} to node {target}: {result:?}"
        ));
        match result {
            Ok(offset) => {
                let reachable = cluster.net.reachable_since(target, started_at);
                cluster.checker.lock().acked(Ack {
                    node: target,
                    records,
                    offset,
                    started,
                    reachable,
                    voters: ids.len(),
                });
            }
            Err(WriteError::NotLeader {
                leader: Some(leader),
            }) if leader != target => target = leader,
            Err(_) => {
                target = ids[rng.random_range(0..ids.len())];
                tokio::time::sleep(Duration::from_millis(rng.random_range(10..100))).await;
            }
        }
        // Think time: a few writes a second per client, so a run holds
        // a few hundred (each costs the whole path on every node).
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..400))).await;
    }
}

/// The faults, one every few hundred virtual milliseconds until `until`;
/// returns once every restart and release it scheduled has happened.
async fn nemesis(cluster: Arc<Cluster>, until: Instant) {
    // Later halves of faults (a restart, a release), awaited at the end so
    // that healing starts with none pending.
    let mut pending = Vec::new();
    let mut rng = StdRng::seed_from_u64(cluster.seed ^ 0x6e65_6d65_7369_7300);
    let ids = cluster.ids();
    let pick = |rng: &mut StdRng| ids[rng.random_range(0..ids.len())];
    let leader = |cluster: &Cluster| {
        cluster
            .running()
            .into_iter()
            .find(|(_, q)| q.is_leader())
            .map(|(id, _)| id)
    };
    loop {
        let wait = Duration::from_millis(rng.random_range(200..2000));
        if Instant::now() + wait >= until {
            for task in pending {
                let _ = task.await;
            }
            return;
        }
        tokio::time::sleep(wait).await;
        match rng.random_range(0..100) {
            // Isolate one node, the leader half the time.
            0..18 => {
                let victim = match leader(&cluster) {
                    Some(l) if rng.random_bool(0.5) => l,
                    _ => pick(&mut rng),
                };
                cluster.event(format!("isolate node {victim}"));
                cluster.net.partition(|v| u32::from(v == victim));
            }
            // Split off a random minority (with the leader a third of the time).
            18..30 => {
                let mut minority = BTreeSet::new();
                if let Some(l) = leader(&cluster).filter(|_| rng.random_bool(0.33)) {
                    minority.insert(l);
                }
                let size = rng.random_range(1..=(ids.len() - 1) / 2);
                while minority.len() < size {
                    minority.insert(pick(&mut rng));
                }
                cluster.event(format!("split off {minority:?}"));
                cluster.net.partition(|v| u32::from(minority.contains(&v)));
            }
            30..45 => {
                cluster.event("heal partitions".to_owned());
                cluster.net.partition(|_| 0);
            }
            // Crash a node (the leader half the time) and restart it later.
            45..62 => {
                let victim = match leader(&cluster) {
                    Some(l) if rng.random_bool(0.5) => l,
                    _ => pick(&mut rng),
                };
                if cluster.quorum(victim).is_none() {
                    continue;
                }
                let clean = rng.random_bool(0.3);
                let down = Duration::from_millis(rng.random_range(50..4000));
                cluster.event(format!(
                    "crash node {victim} ({}) for {down:?}",
                    if clean { "clean close" } else { "log dropped" }
                ));
                cluster.crash(victim, clean).await;
                let c = Arc::clone(&cluster);
                pending.push(tokio::spawn(async move {
                    tokio::time::sleep(down).await;
                    if c.start_node(victim).await {
                        c.event(format!("restarted node {victim}"));
                    }
                }));
            }
            // Isolate the leader while clients still write to it, then
            // crash it with that uncommitted tail and restart it: its
            // restart must not apply the tail, and the new leader must
            // truncate it.
            62..70 => {
                let Some(victim) = leader(&cluster) else {
                    continue;
                };
                let isolated = Duration::from_millis(rng.random_range(200..1500));
                let down = Duration::from_millis(rng.random_range(50..2000));
                cluster.event(format!(
                    "isolate leader {victim}, crash it after {isolated:?}, restart after {down:?}"
                ));
                cluster.net.partition(|v| u32::from(v == victim));
                let c = Arc::clone(&cluster);
                pending.push(tokio::spawn(async move {
                    tokio::time::sleep(isolated).await;
                    c.event(format!("crash node {victim} (log dropped)"));
                    c.crash(victim, false).await;
                    tokio::time::sleep(down).await;
                    if c.start_node(victim).await {
                        c.event(format!("restarted node {victim}"));
                    }
                }));
            }
            // Hold a node's traffic (it looks paused to the others).
            70..78 => {
                let victim = pick(&mut rng);
                let held = Duration::from_millis(rng.random_range(50..3000));
                cluster.event(format!("hold node {victim} for {held:?}"));
                cluster.net.hold(victim, true);
                let c = Arc::clone(&cluster);
                pending.push(tokio::spawn(async move {
                    tokio::time::sleep(held).await;
                    c.net.hold(victim, false);
                }));
            }
            // Change the weather. openraft gives an append RPC the
            // heartbeat interval (election timeout / 5, so 100 ms here,
            // 75 ms to answer): up to ~35 ms a hop replication flows.
            _ => {
                let weather = match rng.random_range(0..8) {
                    0 | 1 => CALM,
                    2 => Weather {
                        drop: 0.1,
                        duplicate: 0.1,
                        delay_ms_max: 20,
                    },
                    3 => Weather {
                        drop: 0.3,
                        duplicate: 0.05,
                        delay_ms_max: 5,
                    },
                    4 | 5 => Weather {
                        drop: 0.02,
                        duplicate: 0.02,
                        delay_ms_max: 35,
                    },
                    6 => Weather {
                        drop: 0.0,
                        duplicate: 0.3,
                        delay_ms_max: 10,
                    },
                    // A storm: slower than every timeout, until the next change.
                    _ => Weather {
                        drop: 0.05,
                        duplicate: 0.02,
                        delay_ms_max: ELECTION_TIMEOUT_MS,
                    },
                };
                cluster.event(format!("weather {weather:?}"));
                cluster.net.set_weather(weather);
            }
        }
    }
}

/// What one seed's run gave.
struct Outcome {
    violations: Vec<String>,
    events: Vec<String>,
    trace: Vec<String>,
    /// A digest of the run (faults, acknowledged writes, final log), to
    /// compare two runs of one seed.
    digest: u64,
    summary: String,
}

impl Outcome {
    /// The summary with the run's digest.
    fn line(&self) -> String {
        format!("{} (digest {:016x})", self.summary, self.digest)
    }
}

async fn simulate(seed: u64) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let size = if rng.random_bool(0.3) { 5 } else { 3 };
    let cluster = Cluster::new(seed, size);
    for id in cluster.ids() {
        cluster.start_node(id).await;
    }
    let until = Instant::now() + CHAOS;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        tasks.push(tokio::spawn(client(Arc::clone(&cluster), c, until)));
    }
    tasks.push(tokio::spawn(nemesis(Arc::clone(&cluster), until)));
    // Committed entries, compared as the run goes.
    let observer = {
        let cluster = Arc::clone(&cluster);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                cluster.observe_commits();
            }
        })
    };
    for t in tasks {
        t.await.unwrap();
    }

    // Heal: the network, and every node up.
    cluster.event("heal everything".to_owned());
    cluster.net.heal();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for id in cluster.ids() {
        if cluster.start_node(id).await {
            cluster.event(format!("restarted node {id}"));
        }
    }
    let healed = Instant::now();
    let mut barrier = None;
    let mut attempt = 0;
    while barrier.is_none() && Instant::now() < healed + LIVENESS {
        let leader = cluster.running().into_iter().find(|(_, q)| q.is_leader());
        if let Some((_, q)) = leader {
            // A new name per attempt: one that timed out may still commit.
            attempt += 1;
            let records = topic(seed, format!("barrier-{attempt}"), u64::MAX - attempt);
            if let Ok(offset) = q.write(records, WRITE_TIMEOUT).await {
                barrier = Some(offset);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(barrier) = barrier else {
        let mut c = cluster.checker.lock();
        c.violations.push(format!(
            "liveness: nothing committed within {LIVENESS:?} of healing"
        ));
        return finish(&cluster, &mut c, seed, None);
    };
    // Every node applies up to the barrier and no further entry comes.
    let converged = async {
        loop {
            let offsets: BTreeSet<i64> = cluster
                .running()
                .iter()
                .map(|(_, q)| q.image().offset)
                .collect();
            if offsets.len() == 1 && offsets.first().is_some_and(|o| *o >= barrier) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(LIVENESS, converged).await.is_err() {
        cluster.checker.lock().violations.push(format!(
            "liveness: the nodes did not all apply offset {barrier}"
        ));
    }
    observer.abort();
    let finals: Vec<(i32, Vec<Entry>, Arc<MetadataImage>)> = cluster
        .running()
        .iter()
        .map(|(id, q)| (*id, committed_entries(q), q.image()))
        .collect();
    for (_, q) in cluster.running() {
        q.shutdown().await;
    }
    let mut c = cluster.checker.lock();
    c.check_final(&finals);
    let log = finals.first().map(|(_, entries, _)| entries.clone());
    finish(&cluster, &mut c, seed, log)
}

fn finish(cluster: &Cluster, c: &mut Checker, seed: u64, log: Option<Vec<Entry>>) -> Outcome {
    let events = cluster.events.lock().clone();
    let trace = cluster.trace.lock().clone();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    events.hash(&mut hasher);
    // Records have no Hash; their debug form is exact enough.
    format!("{:?}", c.acks).hash(&mut hasher);
    format!("{log:?}").hash(&mut hasher);
    let net = cluster.net.0.state.lock();
    Outcome {
        violations: std::mem::take(&mut c.violations),
        events,
        trace,
        digest: hasher.finish(),
        summary: format!(
            "seed {seed}: {} voters, {} acknowledged writes, {} leader terms, {} messages delivered, {} lost, {} duplicated, {:?} virtual",
            cluster.voters.len(),
            c.acks.len(),
            c.leaders.len(),
            net.delivered,
            net.lost,
            net.duplicated,
            cluster.elapsed(),
        ),
    }
}

/// Runs one seed on its own current-thread runtime with paused time, with
/// openraft's random draws (election timeouts) seeded too.
fn run_seed(seed: u64) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    seed_thread_rng(Some(seed ^ 0x6f70_656e_7261_6674));
    let outcome = rt.block_on(simulate(seed));
    seed_thread_rng(None);
    outcome
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
    )
}

#[test]
fn the_quorum_keeps_its_invariants_under_faults_over_many_seeds() {
    let seeds: Vec<u64> = match env_u64("STROM_SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let first = env_u64("STROM_SIM_FIRST_SEED").unwrap_or(0);
            let count = env_u64("STROM_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
            (first..first + count).collect()
        }
    };
    let verbose = seeds.len() == 1;
    // Seeds are independent: run them on every core, each on its own
    // current-thread runtime.
    let next = AtomicU64::new(0);
    let failures = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&seed) = seeds.get(usize::try_from(i).unwrap()) else {
                        return;
                    };
                    let outcome = std::panic::catch_unwind(|| run_seed(seed));
                    match outcome {
                        Ok(o) if o.violations.is_empty() => {
                            println!("{}", o.line());
                            if verbose {
                                println!("  faults:");
                                for e in &o.events {
                                    println!("  {e}");
                                }
                                println!("  trace:");
                                for e in &o.trace {
                                    println!("  {e}");
                                }
                            }
                        }
                        Ok(o) => failures.lock().push(format!(
                            "{}\n  violations:\n    {}\n  faults:\n    {}\n  trace (the end):\n    {}\n  replay with STROM_SIM_SEED={seed}",
                            o.summary,
                            o.violations.join("\n    "),
                            o.events.join("\n    "),
                            o.trace[o.trace.len().saturating_sub(40)..].join("\n    "),
                        )),
                        Err(_) => failures.lock().push(format!(
                            "seed {seed} panicked (see above); replay with STROM_SIM_SEED={seed}"
                        )),
                    }
                }
            });
        }
    });
    let failures = failures.into_inner();
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed:\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n\n")
    );
}

#[test]
fn a_seed_replays_the_same_run() {
    let seed = env_u64("STROM_SIM_SEED").unwrap_or(3);
    let (a, b) = (run_seed(seed), run_seed(seed));
    assert!(a.violations.is_empty(), "{:?}", a.violations);
    assert_eq!(
        a.events, b.events,
        "seed {seed}: the faults differ between two runs"
    );
    assert_eq!(a.digest, b.digest, "seed {seed}: two runs differ");
}

// ---------------------------------------------------------------------------
// The checker catches broken histories.

fn records(name: &str) -> Option<Vec<MetadataRecord>> {
    Some(topic(0, name.to_owned(), 0))
}

#[test]
fn the_checker_catches_two_leaders_in_one_term_and_a_term_going_back() {
    let mut c = Checker::default();
    c.saw_leader(1, 3, Some(1));
    c.saw_leader(2, 3, Some(1));
    c.saw_leader(3, 3, None);
    assert!(c.violations.is_empty(), "{:?}", c.violations);
    c.saw_leader(3, 3, Some(3));
    assert!(
        c.violations[0].contains("term 3 has two leaders"),
        "{:?}",
        c.violations
    );
    c.saw_leader(2, 2, Some(2));
    assert!(
        c.violations[1].contains("term went back"),
        "{:?}",
        c.violations
    );
}

#[test]
fn the_checker_catches_a_committed_entry_that_differs_or_changes() {
    let mut c = Checker::default();
    c.saw_committed(1, &[(0, 1, None), (1, 1, records("a"))]);
    c.saw_committed(
        2,
        &[(0, 1, None), (1, 1, records("a")), (2, 2, records("b"))],
    );
    assert!(c.violations.is_empty(), "{:?}", c.violations);
    // Another term at one index, then other records at one index.
    c.saw_committed(3, &[(0, 1, None), (1, 2, records("a"))]);
    c.saw_committed(1, &[(2, 2, records("c"))]);
    assert_eq!(c.violations.len(), 2, "{:?}", c.violations);
    assert!(c.violations.iter().all(|v| v.starts_with("log matching")));
}

#[test]
fn the_checker_catches_a_lost_write_a_duplicate_diverged_images_and_an_ack_without_a_majority() {
    let mut image = MetadataImage::default();
    image.apply_batch(1, &records("a").unwrap());
    let image = Arc::new(image);
    let ack = |offset, node| Ack {
        node,
        records: records("a").unwrap(),
        offset,
        started: Duration::from_secs(2),
        reachable: BTreeSet::from([1, 2, 3]),
        voters: 3,
    };
    // Clean: the write is at its offset everywhere, images agree.
    let mut c = Checker::default();
    c.acked(ack(2, 1));
    let log = vec![(0, 1, None), (1, 1, records("a"))];
    c.check_final(&[
        (1, log.clone(), Arc::clone(&image)),
        (2, log.clone(), Arc::clone(&image)),
    ]);
    assert!(c.violations.is_empty(), "{:?}", c.violations);

    // Lost on one node (a lagging log without the entry).
    let mut c = Checker::default();
    c.acked(ack(2, 1));
    c.check_final(&[
        (1, log.clone(), Arc::clone(&image)),
        (2, vec![(0, 1, None)], Arc::clone(&image)),
    ]);
    assert!(
        c.violations
            .iter()
            .any(|v| v.starts_with("durability") && v.contains("node 2")),
        "{:?}",
        c.violations
    );

    // In the log but not applied to an image.
    let mut c = Checker::default();
    c.acked(ack(2, 1));
    let empty = Arc::new(MetadataImage::default());
    c.check_final(&[
        (1, log.clone(), Arc::clone(&empty)),
        (2, log.clone(), empty),
    ]);
    assert!(
        c.violations
            .iter()
            .any(|v| v.contains("not in node 1's image")),
        "{:?}",
        c.violations
    );

    // Twice in a log.
    let mut c = Checker::default();
    c.check_final(&[(
        1,
        vec![(1, 1, records("a")), (2, 1, records("a"))],
        Arc::clone(&image),
    )]);
    assert!(
        c.violations.iter().any(|v| v.contains("written twice")),
        "{:?}",
        c.violations
    );

    // Images differ.
    let mut c = Checker::default();
    let mut other = (*image).clone();
    other.offset = 7;
    let other = Arc::new(other);
    c.check_final(&[(1, vec![], Arc::clone(&image)), (2, vec![], other)]);
    assert!(
        c.violations.iter().any(|v| v.starts_with("convergence")),
        "{:?}",
        c.violations
    );

    // Acknowledged by a node that reached only itself and one other of
    // five voters; three of five (one at a time) is a majority.
    let mut c = Checker::default();
    c.acked(Ack {
        reachable: BTreeSet::from([3, 4, 5]),
        voters: 5,
        ..ack(2, 3)
    });
    assert!(c.violations.is_empty(), "{:?}", c.violations);
    c.acked(Ack {
        reachable: BTreeSet::from([3, 4]),
        voters: 5,
        ..ack(2, 3)
    });
    assert!(
        c.violations[0].starts_with("isolation"),
        "{:?}",
        c.violations
    );
}
