//! A network partition that isolates the active controller: its writes
//! never commit, the majority elects another controller and goes on, and no
//! two leaders commit in the same term. Real processes through
//! strom-testkit's link proxies: only the quorum's links are cut; every
//! node's Kafka listener stays reachable, so the test can still ask the
//! isolated controller to write.
//!
//! The check at the end reads every node's Raft log from disk
//! (`meta/__cluster_metadata-0`: one record batch per entry, base offset =
//! index, partition leader epoch = term) and the committed entry from
//! `quorum-state`.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use common::cluster::{eventually, strom_bin};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::raw::RawConnection;
use serde_json::Value;
use strom_protocol::record::records;
use strom_protocol::record_batch::batches;
use strom_testkit::LocalCluster;

/// Longer than the controller's own write timeout (15 s), so the isolated
/// controller's answer, not the client's patience, ends the request.
const ISOLATED_ANSWER_WAIT: Duration = Duration::from_secs(40);
const REQUEST_TIMED_OUT: i16 = 7;
const TOPIC_ALREADY_EXISTS: i16 = 36;
const NOT_CONTROLLER: i16 = 41;

const ISOLATED_TOPIC: &str = "through-the-isolated-controller";
const MAJORITY_TOPIC: &str = "through-the-majority";

fn connect(addr: SocketAddr) -> Option<RawConnection> {
    RawConnection::connect(addr, Duration::from_secs(5)).ok()
}

/// The controller every node in `addrs` reports, when they all report the
/// same live one. (During an election a node reports itself, so two nodes
/// agreeing means a leader they both know.)
fn agreed_controller(addrs: &[SocketAddr]) -> Option<i32> {
    let mut seen = Vec::new();
    for addr in addrs {
        let (controller, _) = connect(*addr)?.describe_cluster().ok()?;
        seen.push(controller);
    }
    (seen[0] >= 0 && seen.iter().all(|c| *c == seen[0])).then_some(seen[0])
}

/// One Raft entry as stored: its term and its JSON.
#[derive(Debug, Clone, PartialEq)]
struct StoredEntry {
    term: u64,
    /// The entry's JSON; a membership entry's node addresses are blanked,
    /// since with link proxies every voter names its peers by its own
    /// proxies (the addresses are never used to connect).
    entry: Value,
}

impl StoredEntry {
    fn mentions(&self, text: &str) -> bool {
        self.entry.to_string().contains(text)
    }
}

/// A node's Raft log: entries by index, and from its `quorum-state` the
/// last committed index and its vote.
#[derive(Debug)]
struct RaftLog {
    node: i32,
    entries: BTreeMap<u64, StoredEntry>,
    committed: Option<u64>,
    vote: Option<Vote>,
}

/// A node's vote: in `term` it follows (or is) `leader`; `committed` once a
/// quorum granted it, that is once `leader` won the term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Vote {
    term: u64,
    leader: Option<u64>,
    committed: bool,
}

/// Reads the Raft log under `data_dir`. `running`: the node may be
/// appending, so a batch cut short at the end is the end of the log;
/// otherwise every byte must be a whole batch.
fn read_raft_log(node: i32, data_dir: &Path, running: bool) -> RaftLog {
    let dir = data_dir.join("meta").join("__cluster_metadata-0");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    // Named after their base offsets, zero-padded: name order is log order.
    segments.sort();
    let mut entries = BTreeMap::new();
    for segment in &segments {
        let data = std::fs::read(segment).unwrap();
        for batch in batches(&data) {
            let batch = match batch {
                Ok(b) => b,
                Err(e) if running => {
                    eprintln!("node {node}: {} ends early ({e})", segment.display());
                    break;
                }
                Err(e) => panic!("node {node}: {}: {e}", segment.display()),
            };
            let index = u64::try_from(batch.header.base_offset).unwrap();
            let term = u64::try_from(batch.header.partition_leader_epoch).unwrap();
            let bytes = Bytes::copy_from_slice(batch.bytes);
            let record = records(&bytes, 64 << 20).unwrap().next().unwrap().unwrap();
            let mut entry: Value = serde_json::from_slice(&record.value.unwrap()).unwrap();
            assert_eq!(
                entry["log_id"]["index"].as_u64(),
                Some(index),
                "node {node}: the batch at offset {index} holds another entry: {entry}"
            );
            if let Some(nodes) = entry
                .pointer_mut("/payload/Membership/nodes")
                .and_then(Value::as_object_mut)
            {
                for node in nodes.values_mut() {
                    node["addr"] = Value::String(String::new());
                }
            }
            entries.insert(index, StoredEntry { term, entry });
        }
    }
    let state_path = data_dir
        .join("meta")
        .join("__cluster_metadata-0")
        .join("quorum-state");
    let state: Value = std::fs::read(&state_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| panic!("node {node}: no readable {}", state_path.display()));
    let committed = state["committed"]["index"].as_u64();
    let vote = state["vote"]["leader_id"]["term"]
        .as_u64()
        .map(|term| Vote {
            term,
            leader: state["vote"]["leader_id"]["voted_for"].as_u64(),
            committed: state["vote"]["committed"].as_bool() == Some(true),
        });
    RaftLog {
        node,
        entries,
        committed,
        vote,
    }
}

/// Raft's safety as it shows on disk: a term has one leader, so every
/// committed vote of a term names the same node, and one (index, term) is
/// one entry wherever it is stored (the entries name only their term, not
/// its leader: openraft's standard leader id commits the term alone); and
/// the committed prefixes agree.
fn check_logs(finals: &[RaftLog], earlier: &[RaftLog]) {
    let mut leaders: BTreeMap<u64, (i32, Option<u64>)> = BTreeMap::new();
    for log in finals.iter().chain(earlier) {
        let Some(vote) = log.vote.filter(|v| v.committed) else {
            continue;
        };
        let (node, leader) = *leaders.entry(vote.term).or_insert((log.node, vote.leader));
        assert_eq!(
            leader, vote.leader,
            "two leaders in term {}: node {node} follows {leader:?}, node {} {:?}",
            vote.term, log.node, vote.leader
        );
    }
    let mut by_id: BTreeMap<(u64, u64), (i32, &StoredEntry)> = BTreeMap::new();
    for log in finals.iter().chain(earlier) {
        for (&index, stored) in &log.entries {
            if let Some((node, first)) = by_id.get(&(index, stored.term)) {
                assert_eq!(
                    first.entry, stored.entry,
                    "two entries at index {index} in term {}: node {node} has one, node {} another",
                    stored.term, log.node
                );
            } else {
                by_id.insert((index, stored.term), (log.node, stored));
            }
        }
    }
    let committed = finals
        .iter()
        .map(|l| {
            l.committed
                .unwrap_or_else(|| panic!("node {} recorded no committed entry", l.node))
        })
        .min()
        .unwrap();
    let reference = &finals[0];
    for log in finals {
        let prefix = |l: &RaftLog| -> Vec<(u64, StoredEntry)> {
            l.entries
                .range(..=committed)
                .map(|(i, e)| (*i, e.clone()))
                .collect()
        };
        assert_eq!(
            prefix(log),
            prefix(reference),
            "nodes {} and {} differ below the committed index {committed}",
            log.node,
            reference.node
        );
    }
    let terms: std::collections::BTreeSet<u64> = by_id.keys().map(|(_, t)| *t).collect();
    eprintln!(
        "checked {} distinct entries in terms {terms:?} and the leaders {leaders:?}; the committed prefix (to index {committed}) is identical on every node",
        by_id.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_controller_commits_nothing_while_the_majority_elects_another() {
    let started = Instant::now();
    let mut cluster = LocalCluster::builder(strom_bin())
        .nodes(3)
        .set("broker.session.timeout.ms", "3000")
        .set("broker.heartbeat.interval.ms", "500")
        .set("controller.quorum.election.timeout.ms", "500")
        // Nothing but CreateTopics makes a topic: a Metadata request for a
        // missing one must not create it.
        .set("auto.create.topics.enable", "false")
        .with_link_proxies()
        .start()
        .await
        .unwrap();
    let ids = cluster.node_ids();
    let all: Vec<SocketAddr> = ids.iter().map(|id| cluster.addr(*id)).collect();
    let every = all.clone();
    let old = eventually("every node names one controller", move || {
        agreed_controller(&every)
    })
    .await;
    let majority: Vec<i32> = ids.iter().copied().filter(|id| *id != old).collect();
    let majority_addrs: Vec<SocketAddr> = majority.iter().map(|id| cluster.addr(*id)).collect();

    cluster.isolate(old).unwrap();
    let isolated_at = Instant::now();

    // The isolated controller is asked to write; it can reach no voter.
    let old_addr = cluster.addr(old);
    let isolated_write = tokio::task::spawn_blocking(move || {
        RawConnection::connect(old_addr, ISOLATED_ANSWER_WAIT)?.create_topic(ISOLATED_TOPIC, 1, 1)
    });

    // The majority elects another controller and writes through it.
    let m = majority_addrs.clone();
    let new = eventually("the majority names a new controller", move || {
        agreed_controller(&m).filter(|c| *c != old)
    })
    .await;
    let elected_in = isolated_at.elapsed();
    let through = majority_addrs[0];
    eventually("a topic created through the majority", move || {
        let (code, _) = connect(through)?.create_topic(MAJORITY_TOPIC, 1, 1).ok()?;
        // Already there: an earlier attempt committed after its answer
        // timed out.
        [0, TOPIC_ALREADY_EXISTS].contains(&code).then_some(())
    })
    .await;

    let (code, message) = isolated_write.await.unwrap().unwrap();
    assert!(
        [REQUEST_TIMED_OUT, NOT_CONTROLLER].contains(&code),
        "the isolated controller answered {code} ({message:?}) to a write it cannot commit"
    );
    eprintln!(
        "node {old} isolated: node {new} elected within {elected_in:?}; node {old} answered error {code} ({message:?}) after {:?}",
        isolated_at.elapsed()
    );

    // Its log holds the write, in its old term, above what committed.
    let isolated_view = read_raft_log(old, cluster.data_dir(old), true);
    let (&index, stored) = isolated_view
        .entries
        .iter()
        .find(|(_, e)| e.mentions(ISOLATED_TOPIC))
        .unwrap_or_else(|| panic!("node {old}'s log never held its write: {isolated_view:?}"));
    assert!(
        isolated_view.committed.is_none_or(|c| c < index),
        "node {old} marked its isolated write (index {index}) committed: {:?}",
        isolated_view.committed
    );
    let majority_view = read_raft_log(majority[0], cluster.data_dir(majority[0]), true);
    let (_, committed_there) = majority_view
        .entries
        .iter()
        .find(|(_, e)| e.mentions(MAJORITY_TOPIC))
        .unwrap();
    assert!(
        committed_there.term > stored.term,
        "the majority wrote in term {} after the isolated leader's term {}",
        committed_there.term,
        stored.term
    );

    cluster.heal().unwrap();
    let every = all.clone();
    eventually("every node agrees again", move || {
        let mut views = Vec::new();
        for addr in &every {
            views.push(connect(*addr)?.topics_and_brokers().ok()?);
        }
        let agreed = views.iter().all(|v| *v == views[0])
            && views[0].0.iter().any(|t| t == MAJORITY_TOPIC)
            && views[0].1 == vec![1, 2, 3];
        (agreed && agreed_controller(&every).is_some()).then_some(())
    })
    .await;
    for (id, addr) in ids.iter().zip(&all) {
        let (topics, _) = connect(*addr).unwrap().topics_and_brokers().unwrap();
        assert!(
            !topics.iter().any(|t| t == ISOLATED_TOPIC),
            "node {id} lists the topic whose write never committed: {topics:?}"
        );
    }

    cluster.stop_all().await.unwrap();
    let finals: Vec<RaftLog> = ids
        .iter()
        .map(|id| read_raft_log(*id, cluster.data_dir(*id), false))
        .collect();
    for log in &finals {
        assert!(
            !log.entries.values().any(|e| e.mentions(ISOLATED_TOPIC)),
            "node {} kept the isolated controller's write",
            log.node
        );
        let (&at, _) = log
            .entries
            .iter()
            .find(|(_, e)| e.mentions(MAJORITY_TOPIC))
            .unwrap_or_else(|| panic!("node {} lacks the majority's write", log.node));
        assert!(log.committed.is_some_and(|c| c >= at), "{log:?}");
    }
    check_logs(&finals, &[isolated_view, majority_view]);
    eprintln!("the partition test took {:?}", started.elapsed());
}

/// The checker itself: each kind of divergence is caught.
mod checker {
    use super::*;

    fn log(node: i32, entries: &[(u64, u64, &str)], committed: u64, vote: (u64, u64)) -> RaftLog {
        RaftLog {
            node,
            entries: entries
                .iter()
                .map(|&(index, term, text)| {
                    let entry = serde_json::json!({"log_id": {"index": index}, "payload": text});
                    (index, StoredEntry { term, entry })
                })
                .collect(),
            committed: Some(committed),
            vote: Some(Vote {
                term: vote.0,
                leader: Some(vote.1),
                committed: true,
            }),
        }
    }

    #[test]
    fn agreeing_logs_pass() {
        let a = log(1, &[(0, 0, "m"), (1, 2, "x"), (2, 3, "y")], 2, (3, 1));
        let b = log(2, &[(0, 0, "m"), (1, 2, "x"), (2, 3, "y")], 2, (3, 1));
        let stale = log(3, &[(0, 0, "m"), (1, 2, "x"), (2, 2, "lost")], 1, (2, 3));
        check_logs(&[a, b], &[stale]);
    }

    #[test]
    #[should_panic(expected = "two entries at index 2 in term 3")]
    fn two_entries_of_one_term_at_one_index_fail() {
        let a = log(1, &[(0, 0, "m"), (2, 3, "y")], 0, (3, 1));
        let b = log(2, &[(0, 0, "m"), (2, 3, "z")], 0, (3, 1));
        check_logs(&[a, b], &[]);
    }

    #[test]
    #[should_panic(expected = "two leaders in term 3")]
    fn two_leaders_of_one_term_fail() {
        let a = log(1, &[(0, 0, "m")], 0, (3, 1));
        let b = log(2, &[(0, 0, "m")], 0, (3, 2));
        check_logs(&[a, b], &[]);
    }

    #[test]
    #[should_panic(expected = "differ below the committed index")]
    fn a_missing_committed_entry_fails() {
        let a = log(1, &[(0, 0, "m"), (1, 2, "x")], 1, (2, 1));
        let b = log(2, &[(0, 0, "m")], 1, (2, 1));
        check_logs(&[a, b], &[]);
    }
}
