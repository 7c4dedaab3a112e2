//! The controller side of replication against three real voters in one
//! process (each with its metadata log on disk, over TCP on loopback), the
//! brokers played by calls on a controller that is not the active one, so
//! every operation is forwarded: AlterPartition changes the ISR only as
//! Kafka allows, ElectLeaders moves a leadership back to the preferred
//! replica, and the automatic rebalance does the same by itself.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strom_controller::controller::{BrokerHeartbeat, ControllerConfig};
use strom_controller::propose::BrokerRegistration;
use strom_controller::quorum::QuorumConfig;
use strom_controller::{
    AlterPartitionRequest, Controller, ControllerError, CreateTopicRequest, ElectionType,
    PartitionImage,
};
use strom_protocol::error_code::ErrorCode;
use strom_storage::{PartitionLog, SystemClock};
use tokio::net::TcpListener;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(30);
const TOPIC: &str = "replicated";

fn open_log(dir: &Path) -> Result<Arc<PartitionLog>, strom_storage::StorageError> {
    strom_controller::open_metadata_log(dir, Arc::new(SystemClock))
}

/// Sessions long enough that the brokers played here, which heartbeat only
/// when told, are never fenced by the clock.
fn config(auto_leader_rebalance_enable: bool) -> ControllerConfig {
    ControllerConfig {
        write_timeout_ms: 10_000,
        broker_session_timeout_ms: 600_000,
        auto_leader_rebalance_enable,
        leader_imbalance_check_interval_seconds: 1,
        ..ControllerConfig::default()
    }
}

struct Voters {
    controllers: Vec<Arc<Controller>>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Voters {
    async fn start(config: ControllerConfig) -> Self {
        let mut listeners = Vec::new();
        for id in 1..=3 {
            listeners.push((id, TcpListener::bind("127.0.0.1:0").await.unwrap()));
        }
        let voters: BTreeMap<i32, String> = listeners
            .iter()
            .map(|(id, l)| (*id, l.local_addr().unwrap().to_string()))
            .collect();
        let mut controllers = Vec::new();
        let mut dirs = Vec::new();
        for (id, listener) in listeners {
            let dir = tempfile::tempdir().unwrap();
            let controller = Controller::start(
                id,
                config,
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
            controllers.push(controller);
            dirs.push(dir);
        }
        Self {
            controllers,
            _dirs: dirs,
        }
    }

    /// A voter that is not the active controller, once there is one.
    async fn follower(&self) -> Arc<Controller> {
        eventually("an active controller", || {
            let active = self.controllers[0].active_controller()?;
            self.controllers
                .iter()
                .find(|c| c.node_id() != active)
                .cloned()
        })
        .await
    }

    /// The active controller (it has applied every commit).
    async fn active(&self) -> Arc<Controller> {
        eventually("an active controller", || {
            let active = self.controllers[0].active_controller()?;
            self.controllers
                .iter()
                .find(|c| c.node_id() == active && c.quorum().is_some_and(|q| q.is_leader()))
                .cloned()
        })
        .await
    }

    async fn shutdown(self) {
        for c in &self.controllers {
            c.shutdown().await;
        }
    }
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

/// Registers broker `id` and heartbeats until it is unfenced; its epoch.
async fn join(c: &Controller, id: i32) -> i64 {
    let epoch = c
        .register_broker(BrokerRegistration {
            broker_id: id,
            incarnation_id: Uuid::new_v4(),
            host: "127.0.0.1".to_owned(),
            port: 9000,
            rack: None,
            clean_shutdown: true,
        })
        .await
        .unwrap();
    unfence(c, id, epoch).await;
    epoch
}

async fn heartbeat(c: &Controller, id: i32, epoch: i64, want_fence: bool) -> bool {
    c.heartbeat(BrokerHeartbeat {
        broker_id: id,
        broker_epoch: epoch,
        metadata_offset: c.image().offset,
        want_fence,
        want_shutdown: false,
    })
    .await
    .unwrap()
    .is_fenced
}

async fn unfence(c: &Controller, id: i32, epoch: i64) {
    let deadline = Instant::now() + DEADLINE;
    while heartbeat(c, id, epoch, false).await {
        assert!(Instant::now() < deadline, "broker {id} never unfenced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The topic's only partition as the active controller last committed it
/// and `c` has applied it.
async fn partition(
    c: &Controller,
    what: &str,
    check: impl Fn(&PartitionImage) -> bool,
) -> PartitionImage {
    eventually(what, || {
        c.image().partition(TOPIC, 0).filter(|p| check(p)).cloned()
    })
    .await
}

/// Three brokers and topic [`TOPIC`] (one partition, replicas 1, 2, 3);
/// the brokers' epochs by id.
async fn three_brokers_and_a_topic(c: &Controller) -> BTreeMap<i32, i64> {
    let mut epochs = BTreeMap::new();
    for id in 1..=3 {
        epochs.insert(id, join(c, id).await);
    }
    let created = c
        .create_topics(
            vec![CreateTopicRequest {
                name: TOPIC.to_owned(),
                num_partitions: -1,
                replication_factor: -1,
                assignments: vec![(0, vec![1, 2, 3])],
                configs: BTreeMap::new(),
            }],
            false,
        )
        .await;
    assert!(created[0].is_ok(), "{created:?}");
    partition(c, "the topic", |p| p.leader == 1).await;
    epochs
}

fn alter(
    c: &Controller,
    p: &PartitionImage,
    epochs: &BTreeMap<i32, i64>,
    new_isr: Vec<i32>,
) -> AlterPartitionRequest {
    AlterPartitionRequest {
        broker_id: p.leader,
        broker_epoch: epochs[&p.leader],
        topic_id: c.image().topic(TOPIC).unwrap().id,
        partition: 0,
        leader_epoch: p.leader_epoch,
        new_isr,
        partition_epoch: p.partition_epoch,
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, ControllerError>) -> ErrorCode {
    r.unwrap_err().code
}

async fn elect(c: &Controller, election: ElectionType) -> ErrorCode {
    let results = c
        .elect_leaders(election, Some(vec![(TOPIC.to_owned(), vec![0])]))
        .await
        .unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].partitions.len(), 1);
    match &results[0].partitions[0].1 {
        Ok(()) => ErrorCode::None,
        Err(e) => e.code,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isr_changes_commit_only_from_the_current_leader_at_the_current_epochs() {
    let voters = Voters::start(config(false)).await;
    let c = voters.follower().await;
    let epochs = three_brokers_and_a_topic(&c).await;
    let start = partition(&c, "the topic", |_| true).await;
    assert_eq!(
        (start.isr.clone(), start.partition_epoch),
        (vec![1, 2, 3], 0)
    );

    // A stale partition epoch: another change went first.
    let shrink = alter(&c, &start, &epochs, vec![1, 2]);
    let stale = AlterPartitionRequest {
        partition_epoch: start.partition_epoch - 1,
        ..shrink.clone()
    };
    assert_eq!(
        code(c.alter_partition(stale).await),
        ErrorCode::InvalidUpdateVersion
    );
    // Not the leader; a broker epoch of another process.
    let from_follower = AlterPartitionRequest {
        broker_id: 2,
        broker_epoch: epochs[&2],
        ..shrink.clone()
    };
    assert_eq!(
        code(c.alter_partition(from_follower).await),
        ErrorCode::InvalidRequest
    );
    let stale_broker = AlterPartitionRequest {
        broker_epoch: epochs[&1] + 1000,
        ..shrink.clone()
    };
    assert_eq!(
        code(c.alter_partition(stale_broker).await),
        ErrorCode::StaleBrokerEpoch
    );

    // A good shrink commits: same leader and leader epoch, next partition
    // epoch, on every voter.
    let shrunk = c.alter_partition(shrink.clone()).await.unwrap();
    assert_eq!(shrunk.isr, vec![1, 2]);
    assert_eq!(
        (shrunk.leader, shrunk.leader_epoch, shrunk.partition_epoch),
        (1, start.leader_epoch, start.partition_epoch + 1)
    );
    for voter in &voters.controllers {
        partition(voter, "the shrink on every voter", |p| *p == shrunk).await;
    }
    // The same request again is now stale.
    assert_eq!(
        code(c.alter_partition(shrink).await),
        ErrorCode::InvalidUpdateVersion
    );
    // Broker 3 fenced may not come back into the ISR; unfenced it may.
    heartbeat(&c, 3, epochs[&3], true).await;
    let expand = alter(&c, &shrunk, &epochs, vec![1, 2, 3]);
    assert_eq!(
        code(c.alter_partition(expand.clone()).await),
        ErrorCode::IneligibleReplica
    );
    unfence(&c, 3, epochs[&3]).await;
    let expanded = c.alter_partition(expand.clone()).await.unwrap();
    assert_eq!(expanded.isr, vec![1, 2, 3]);
    assert_eq!(expanded.leader_epoch, start.leader_epoch);
    assert_eq!(expanded.partition_epoch, shrunk.partition_epoch + 1);
    // A request that changes nothing writes nothing and answers the state.
    let active = voters.active().await;
    let offset = active.image().offset;
    let same = alter(&c, &expanded, &epochs, vec![1, 2, 3]);
    assert_eq!(c.alter_partition(same).await.unwrap(), expanded);
    assert_eq!(active.image().offset, offset);
    voters.shutdown().await;
}

/// Broker 1 (the preferred replica, leading) is fenced and comes back: it
/// is out of the ISR until the leader's AlterPartition takes it back.
async fn preferred_replica_fenced_and_back_in_sync(c: &Controller, epochs: &BTreeMap<i32, i64>) {
    heartbeat(c, 1, epochs[&1], true).await;
    let moved = partition(c, "the leadership moves", |p| p.leader == 2).await;
    assert_eq!(moved.isr, vec![2, 3]);
    unfence(c, 1, epochs[&1]).await;
    let back = c
        .alter_partition(alter(c, &moved, epochs, vec![2, 3, 1]))
        .await
        .unwrap();
    assert_eq!((back.leader, back.isr), (2, vec![2, 3, 1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preferred_election_moves_the_leadership_back_once_the_replica_is_in_sync() {
    let voters = Voters::start(config(false)).await;
    let c = voters.follower().await;
    let epochs = three_brokers_and_a_topic(&c).await;
    assert_eq!(
        elect(&c, ElectionType::Preferred).await,
        ErrorCode::ElectionNotNeeded
    );
    heartbeat(&c, 1, epochs[&1], true).await;
    let moved = partition(&c, "the leadership moves", |p| p.leader == 2).await;
    assert_eq!(
        elect(&c, ElectionType::Preferred).await,
        ErrorCode::PreferredLeaderNotAvailable
    );
    assert_eq!(
        elect(&c, ElectionType::Unclean).await,
        ErrorCode::ElectionNotNeeded
    );
    unfence(&c, 1, epochs[&1]).await;
    // Live but out of sync.
    assert_eq!(
        elect(&c, ElectionType::Preferred).await,
        ErrorCode::PreferredLeaderNotAvailable
    );
    let in_sync = c
        .alter_partition(alter(&c, &moved, &epochs, vec![2, 3, 1]))
        .await
        .unwrap();
    assert_eq!(elect(&c, ElectionType::Preferred).await, ErrorCode::None);
    let back = partition(&c, "the leadership is back", |p| p.leader == 1).await;
    assert_eq!(back.leader_epoch, in_sync.leader_epoch + 1);
    assert_eq!(back.partition_epoch, in_sync.partition_epoch + 1);
    assert_eq!(
        elect(&c, ElectionType::Preferred).await,
        ErrorCode::ElectionNotNeeded
    );
    // Every partition: none needs an election, so none is answered.
    let all = c
        .elect_leaders(ElectionType::Preferred, None)
        .await
        .unwrap();
    assert!(all.iter().all(|t| t.partitions.is_empty()), "{all:?}");
    voters.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_controller_rebalances_leaders_by_itself() {
    let voters = Voters::start(config(true)).await;
    let c = voters.follower().await;
    let epochs = three_brokers_and_a_topic(&c).await;
    preferred_replica_fenced_and_back_in_sync(&c, &epochs).await;
    // Broker 1 leads none of the one partition it is preferred for: 100%
    // is above 10%, and within a check interval it leads again.
    partition(&c, "the rebalance moves the leadership back", |p| {
        p.leader == 1
    })
    .await;
    voters.shutdown().await;
}
