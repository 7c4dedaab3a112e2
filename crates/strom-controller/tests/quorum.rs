//! The controller quorum with real nodes: three quorums in one process, each
//! with its own metadata log on disk, talking over TCP on loopback.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strom_controller::quorum::{Quorum, QuorumConfig, WriteError, WrongCluster};
use strom_controller::{MetadataImage, MetadataRecord};
use strom_storage::{PartitionLog, SystemClock};
use tokio::net::TcpListener;

const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const DEADLINE: Duration = Duration::from_secs(30);

fn open_log(dir: &Path) -> Arc<PartitionLog> {
    strom_controller::open_metadata_log(&dir.join("__cluster_metadata-0"), Arc::new(SystemClock))
        .expect("open the metadata log")
}

struct Node {
    id: i32,
    dir: tempfile::TempDir,
    addr: std::net::SocketAddr,
    quorum: Option<Quorum>,
}

async fn start(
    id: i32,
    dir: &Path,
    addr: std::net::SocketAddr,
    voters: &BTreeMap<i32, String>,
) -> Quorum {
    start_in_cluster(id, dir, addr, voters, "").await
}

/// Starts a node whose metadata names `cluster_id` ("": none yet).
async fn start_in_cluster(
    id: i32,
    dir: &Path,
    addr: std::net::SocketAddr,
    voters: &BTreeMap<i32, String>,
    cluster_id: &str,
) -> Quorum {
    let listener = TcpListener::bind(addr)
        .await
        .expect("bind the controller listener");
    let mut base = MetadataImage::default();
    base.cluster_id = cluster_id.to_owned();
    Quorum::start(
        QuorumConfig {
            node_id: id,
            voters: voters.clone(),
            election_timeout_ms: 300,
            request_timeout_ms: 1000,
        },
        open_log(dir),
        base,
        Some(listener),
    )
    .await
    .expect("start the quorum")
}

async fn cluster(n: i32) -> (Vec<Node>, BTreeMap<i32, String>) {
    cluster_with_ids(&vec![""; usize::try_from(n).unwrap()]).await
}

/// One node per entry of `cluster_ids`, each with that cluster id.
async fn cluster_with_ids(cluster_ids: &[&str]) -> (Vec<Node>, BTreeMap<i32, String>) {
    let n = i32::try_from(cluster_ids.len()).unwrap();
    let mut nodes = Vec::new();
    for id in 1..=n {
        // Take a free port, then give it to the quorum.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        nodes.push(Node {
            id,
            dir: tempfile::tempdir().unwrap(),
            addr,
            quorum: None,
        });
    }
    let voters: BTreeMap<i32, String> = nodes.iter().map(|n| (n.id, n.addr.to_string())).collect();
    for (node, cluster_id) in nodes.iter_mut().zip(cluster_ids) {
        node.quorum =
            Some(start_in_cluster(node.id, node.dir.path(), node.addr, &voters, cluster_id).await);
    }
    (nodes, voters)
}

/// Waits until the running nodes agree on one leader among them.
async fn await_leader(nodes: &[Node]) -> i32 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let running: Vec<&Quorum> = nodes.iter().filter_map(|n| n.quorum.as_ref()).collect();
        let leaders: Vec<i32> = running
            .iter()
            .filter(|q| q.is_leader())
            .map(|q| q.node_id())
            .collect();
        if let [leader] = leaders[..]
            && running.iter().all(|q| q.leader() == Some(leader))
        {
            return leader;
        }
        assert!(Instant::now() < deadline, "no single leader: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn topic(name: &str) -> Vec<MetadataRecord> {
    vec![MetadataRecord::Topic {
        name: name.to_owned(),
        topic_id: uuid::Uuid::new_v4(),
    }]
}

async fn write_on_leader(nodes: &[Node], records: Vec<MetadataRecord>) -> i64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let leader = await_leader(nodes).await;
        let q = nodes
            .iter()
            .find(|n| n.id == leader)
            .and_then(|n| n.quorum.as_ref())
            .unwrap();
        match q.write(records.clone(), WRITE_TIMEOUT).await {
            Ok(offset) => return offset,
            Err(e @ (WriteError::NotLeader { .. } | WriteError::Timeout(_))) => {
                assert!(Instant::now() < deadline, "write never committed: {e}");
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
}

async fn await_topic(q: &Quorum, name: &str) {
    let mut images = q.subscribe();
    tokio::time::timeout(DEADLINE, images.wait_for(|i| i.topic(name).is_some()))
        .await
        .unwrap_or_else(|_| panic!("node {} never applied topic {name}", q.node_id()))
        .unwrap();
}

/// The committed entries every node holds, compared on the shortest log.
fn assert_same_logs(nodes: &[Node]) {
    let logs: Vec<_> = nodes
        .iter()
        .filter_map(|n| n.quorum.as_ref())
        .map(|q| q.log_entries())
        .collect();
    let shortest = logs.iter().map(Vec::len).min().unwrap();
    for log in &logs[1..] {
        assert_eq!(&log[..shortest], &logs[0][..shortest], "the logs diverge");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_elect_one_leader_replicate_and_survive_the_loss_of_the_leader() {
    let (mut nodes, voters) = cluster(3).await;
    write_on_leader(&nodes, topic("a")).await;
    for n in &nodes {
        await_topic(n.quorum.as_ref().unwrap(), "a").await;
    }
    // Stop the leader: the other two elect a new one and keep writing.
    let old = await_leader(&nodes).await;
    let node = nodes.iter_mut().find(|n| n.id == old).unwrap();
    node.quorum.take().unwrap().shutdown().await;
    let new = await_leader(&nodes).await;
    assert_ne!(new, old);
    write_on_leader(&nodes, topic("b")).await;
    // The old leader comes back with its log and catches up.
    let node = nodes.iter_mut().find(|n| n.id == old).unwrap();
    node.quorum = Some(start(node.id, node.dir.path(), node.addr, &voters).await);
    for n in &nodes {
        await_topic(n.quorum.as_ref().unwrap(), "b").await;
    }
    assert_same_logs(&nodes);
    for n in &mut nodes {
        n.quorum.take().unwrap().shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_majority_nothing_commits_and_with_it_back_writes_resume() {
    let (mut nodes, voters) = cluster(3).await;
    write_on_leader(&nodes, topic("a")).await;
    let leader = await_leader(&nodes).await;
    // Stop both followers: the leader alone must not commit.
    for n in nodes.iter_mut().filter(|n| n.id != leader) {
        n.quorum.take().unwrap().shutdown().await;
    }
    let q = nodes
        .iter()
        .find(|n| n.id == leader)
        .unwrap()
        .quorum
        .as_ref()
        .unwrap();
    let result = q.write(topic("lost"), Duration::from_secs(2)).await;
    assert!(
        matches!(
            result,
            Err(WriteError::Timeout(_) | WriteError::NotLeader { .. })
        ),
        "a write without a majority: {result:?}"
    );
    assert!(q.image().topic("lost").is_none());
    // One follower returns: a majority again.
    let back = nodes
        .iter_mut()
        .find(|n| n.id != leader && n.quorum.is_none())
        .unwrap();
    back.quorum = Some(start(back.id, back.dir.path(), back.addr, &voters).await);
    write_on_leader(&nodes, topic("c")).await;
    assert_same_logs(&nodes);
    for n in &mut nodes {
        if let Some(q) = n.quorum.take() {
            q.shutdown().await;
        }
    }
}

#[tokio::test]
async fn a_standalone_node_elects_itself_and_keeps_its_image_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let config = QuorumConfig {
        node_id: 1,
        voters: BTreeMap::new(),
        election_timeout_ms: 100,
        request_timeout_ms: 1000,
    };
    let q = Quorum::start(
        config.clone(),
        open_log(dir.path()),
        MetadataImage::default(),
        None,
    )
    .await
    .unwrap();
    let nodes = [Node {
        id: 1,
        dir: tempfile::tempdir().unwrap(),
        addr: "127.0.0.1:1".parse().unwrap(),
        quorum: Some(q),
    }];
    write_on_leader(&nodes, topic("kept")).await;
    let [
        Node {
            quorum: Some(q), ..
        },
    ] = nodes
    else {
        unreachable!()
    };
    q.shutdown().await;
    drop(q);
    let q = Quorum::start(config, open_log(dir.path()), MetadataImage::default(), None)
        .await
        .unwrap();
    await_topic(&q, "kept").await;
    q.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_other_voters_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let alone = QuorumConfig {
        node_id: 1,
        voters: BTreeMap::new(),
        election_timeout_ms: 100,
        request_timeout_ms: 1000,
    };
    let q = Quorum::start(
        alone.clone(),
        open_log(dir.path()),
        MetadataImage::default(),
        None,
    )
    .await
    .unwrap();
    let deadline = Instant::now() + DEADLINE;
    while q.write(topic("alone"), WRITE_TIMEOUT).await.is_err() {
        assert!(Instant::now() < deadline, "the standalone node never wrote");
    }
    q.shutdown().await;
    drop(q);
    // The same directory given three voters: its log's quorum is {1}.
    let three = QuorumConfig {
        voters: (1..=3).map(|id| (id, format!("127.0.0.1:{id}"))).collect(),
        ..alone
    };
    let refused = Quorum::start(three, open_log(dir.path()), MetadataImage::default(), None)
        .await
        .expect_err("refused");
    let message = refused.to_string();
    assert!(
        message.contains("[1]") && message.contains("[1, 2, 3]"),
        "{message}"
    );
}

async fn await_wrong_cluster(q: &Quorum) -> WrongCluster {
    let mut rx = q.wrong_cluster();
    tokio::time::timeout(DEADLINE, rx.wait_for(Option::is_some))
        .await
        .unwrap_or_else(|_| panic!("node {} never reported another cluster", q.node_id()))
        .unwrap()
        .clone()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_is_told_it_cannot_join_and_the_majority_carries_on() {
    // Node 3's data directory belongs to cluster "other".
    let (mut nodes, _) = cluster_with_ids(&["ours", "ours", "other"]).await;
    let stray = nodes[2].quorum.as_ref().unwrap();
    let seen = await_wrong_cluster(stray).await;
    assert!(seen.peer == 1 || seen.peer == 2, "{seen:?}");
    assert_eq!(
        (seen.theirs.as_str(), seen.ours.as_str()),
        ("ours", "other")
    );
    let message = seen.to_string();
    assert!(
        !message.contains('\n') && message.contains("ours") && message.contains("other"),
        "{message}"
    );
    // Nodes 1 and 2 are a majority: they elect, commit, and are not told.
    let majority: Vec<Node> = nodes.drain(..2).collect();
    write_on_leader(&majority, topic("a")).await;
    for n in &majority {
        let q = n.quorum.as_ref().unwrap();
        await_topic(q, "a").await;
        assert_eq!(*q.wrong_cluster().borrow(), None, "node {}", n.id);
    }
    assert!(
        nodes[0]
            .quorum
            .as_ref()
            .unwrap()
            .image()
            .topic("a")
            .is_none()
    );
    for mut n in majority.into_iter().chain(nodes) {
        n.quorum.take().unwrap().shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_of_different_clusters_both_report_it() {
    let (mut nodes, _) = cluster_with_ids(&["blue", "green"]).await;
    let blue = await_wrong_cluster(nodes[0].quorum.as_ref().unwrap()).await;
    let green = await_wrong_cluster(nodes[1].quorum.as_ref().unwrap()).await;
    assert_eq!(
        blue,
        WrongCluster {
            peer: 2,
            theirs: "green".to_owned(),
            ours: "blue".to_owned()
        }
    );
    assert_eq!(
        green,
        WrongCluster {
            peer: 1,
            theirs: "blue".to_owned(),
            ours: "green".to_owned()
        }
    );
    for n in &mut nodes {
        n.quorum.take().unwrap().shutdown().await;
    }
}
