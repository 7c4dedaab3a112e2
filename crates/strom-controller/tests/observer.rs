//! A broker-only node's controller (an observer) against three real voters
//! in one process, each with its own metadata log on disk, over TCP on
//! loopback: it follows the committed metadata, and its operations are
//! forwarded to the active controller, also across a change of controller.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strom_controller::controller::{BrokerHeartbeat, ControllerConfig};
use strom_controller::propose::BrokerRegistration;
use strom_controller::quorum::QuorumConfig;
use strom_controller::{Controller, CreateTopicRequest};
use strom_storage::{PartitionLog, SystemClock};
use tokio::net::TcpListener;

const DEADLINE: Duration = Duration::from_secs(30);
const OBSERVER: i32 = 4;

fn open_log(dir: &Path) -> Result<Arc<PartitionLog>, strom_storage::StorageError> {
    strom_controller::open_metadata_log(dir, Arc::new(SystemClock))
}

fn config() -> ControllerConfig {
    ControllerConfig {
        write_timeout_ms: 10_000,
        ..ControllerConfig::default()
    }
}

async fn voters() -> (
    Vec<(i32, tempfile::TempDir, Arc<Controller>)>,
    BTreeMap<i32, String>,
) {
    let mut listeners = Vec::new();
    for id in 1..=3 {
        listeners.push((id, TcpListener::bind("127.0.0.1:0").await.unwrap()));
    }
    let voters: BTreeMap<i32, String> = listeners
        .iter()
        .map(|(id, l)| (*id, l.local_addr().unwrap().to_string()))
        .collect();
    let mut nodes = Vec::new();
    for (id, listener) in listeners {
        let dir = tempfile::tempdir().unwrap();
        let controller = Controller::start(
            id,
            config(),
            QuorumConfig {
                node_id: id,
                voters: voters.clone(),
                election_timeout_ms: 300,
                request_timeout_ms: 1000,
            },
            &dir.path().join("__cluster_metadata-0"),
            &open_log,
            Arc::new(SystemClock),
            Some(listener),
        )
        .await
        .unwrap();
        nodes.push((id, dir, controller));
    }
    (nodes, voters)
}

async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(t) = check() {
            return t;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn topic(name: &str) -> CreateTopicRequest {
    CreateTopicRequest {
        name: name.to_owned(),
        num_partitions: 2,
        replication_factor: 1,
        assignments: Vec::new(),
        configs: BTreeMap::new(),
    }
}

/// Registers the observer's broker and heartbeats until it is unfenced.
async fn register(observer: &Controller) {
    let epoch = observer
        .register_broker(BrokerRegistration {
            broker_id: OBSERVER,
            incarnation_id: uuid::Uuid::new_v4(),
            host: "127.0.0.1".to_owned(),
            port: 9999,
            rack: None,
            clean_shutdown: true,
        })
        .await
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let reply = observer
            .heartbeat(BrokerHeartbeat {
                broker_id: OBSERVER,
                broker_epoch: epoch,
                metadata_offset: observer.image().offset,
                want_fence: false,
                want_shutdown: false,
            })
            .await
            .unwrap();
        if !reply.is_fenced {
            return;
        }
        assert!(Instant::now() < deadline, "never unfenced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_follows_the_voters_and_its_writes_reach_every_controller() {
    let (mut nodes, voters) = voters().await;
    let observer = Controller::observe(
        OBSERVER,
        config(),
        &voters,
        None,
        Duration::from_secs(1),
        Arc::new(SystemClock),
    );
    let cluster_id = eventually("the observer learns the cluster id", || {
        let id = observer.image().cluster_id.clone();
        (!id.is_empty()).then_some(id)
    })
    .await;
    assert_eq!(cluster_id, nodes[0].2.image().cluster_id);
    assert!(observer.quorum().is_none(), "an observer is not a voter");

    register(&observer).await;
    let created = observer.create_topics(vec![topic("orders")], false).await;
    assert!(created[0].is_ok(), "{created:?}");
    // Forwarded writes are committed by the quorum: every voter and the
    // observer end with the same image.
    for (_, _, voter) in &nodes {
        eventually("the voter has the topic", || {
            voter.image().topic("orders").map(|_| ())
        })
        .await;
    }
    let offset = eventually("the observer caught up", || {
        let image = observer.image();
        image.topic("orders").map(|_| image.offset)
    })
    .await;
    assert_eq!(
        observer.image().topic("orders").unwrap().partitions[0].replicas,
        vec![OBSERVER]
    );
    assert!(offset > 0);

    // The active controller stops: the observer learns of the next one and
    // its writes go there.
    let old = eventually("an active controller", || observer.active_controller()).await;
    let index = nodes.iter().position(|(id, _, _)| *id == old).unwrap();
    let (_, _dir, stopped) = nodes.remove(index);
    stopped.shutdown().await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let created = observer.create_topics(vec![topic("after")], false).await;
        match &created[0] {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "never created: {e}"),
        }
    }
    let new = eventually("another active controller", || {
        observer.active_controller().filter(|c| *c != old)
    })
    .await;
    assert_ne!(new, old);
    eventually("the observer has the new topic", || {
        observer.image().topic("after").map(|_| ())
    })
    .await;
    for (_, _, voter) in &nodes {
        eventually("the voter has the new topic", || {
            voter.image().topic("after").map(|_| ())
        })
        .await;
        assert_eq!(voter.image().topic_count(), 2);
    }
    observer.shutdown().await;
    for (_, _, voter) in &nodes {
        voter.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_of_another_cluster_is_refused_and_says_why() {
    let (nodes, voters) = voters().await;
    let observe = || {
        Controller::observe(
            OBSERVER,
            config(),
            &voters,
            Some("AAAAAAAAAAAAAAAAAAAAAA"),
            Duration::from_secs(1),
            Arc::new(SystemClock),
        )
    };
    // One asks before the voters know their cluster id (they take its
    // fetches and answer once they do), one after (they refuse it).
    let early = observe();
    eventually("a cluster id", || {
        nodes
            .iter()
            .all(|(_, _, voter)| !voter.image().cluster_id.is_empty())
            .then_some(())
    })
    .await;
    let late = observe();
    for observer in [early, late] {
        let why = tokio::time::timeout(DEADLINE, observer.wrong_cluster())
            .await
            .expect("refused in time")
            .expect("a reason");
        assert!(why.contains("AAAAAAAAAAAAAAAAAAAAAA"), "{why}");
        assert!(observer.image().cluster_id.is_empty(), "it never followed");
        observer.shutdown().await;
    }
    for (_, _, voter) in &nodes {
        voter.shutdown().await;
    }
}
