//! The coordinator with no broker around: real partitions of
//! `__consumer_offsets` on real logs in a temporary directory, elected and
//! resigned as the metadata publisher would.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use strom_protocol::builder::end_txn_marker_batch;
use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::Uuid;
use strom_protocol::record::EndTxnMarker;
use strom_storage::{
    AppendOrigin, Clock, FileCache, LoadOptions, LogConfig, ManualClock, PartitionLog,
};

use super::classic::{JoinRequest, JoinResult, Outbox, Reply};
use super::store::{OFFSETS_TOPIC, OffsetValue, partition_for};
use super::{GroupConfig, GroupCoordinator, GroupShard};
use crate::partition::Partition;

/// This broker.
const NODE: i32 = 1;
/// Another broker, the leader after a move.
const OTHER: i32 = 2;
/// Partitions of the offsets topic in these tests.
const PARTITIONS: i32 = 2;
/// Open files for the partitions' logs.
const OPEN_FILES: usize = 16;

struct Fixture {
    /// The partitions' logs; removed when the test ends.
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    coordinator: GroupCoordinator,
    partitions: BTreeMap<i32, Arc<Partition>>,
}

impl Fixture {
    /// Both partitions led by this broker at `epoch`, and elected.
    fn new(epoch: i32) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = Arc::new(ManualClock::new(1_000_000));
        let files = Arc::new(FileCache::new(OPEN_FILES));
        let partitions: BTreeMap<i32, Arc<Partition>> = (0..PARTITIONS)
            .map(|index| {
                let log = PartitionLog::open(
                    dir.path().join(format!("{OFFSETS_TOPIC}-{index}")),
                    LogConfig::default(),
                    Arc::clone(&files),
                    Arc::clone(&clock) as Arc<dyn Clock>,
                    LoadOptions::default(),
                )
                .expect("open log");
                let partition = Partition::new(
                    Arc::from(OFFSETS_TOPIC),
                    index,
                    Uuid::from_u128(1),
                    Arc::new(log),
                    NODE,
                    (epoch, NODE),
                );
                (index, Arc::new(partition))
            })
            .collect();
        let config = GroupConfig::from_properties(&BTreeMap::from([(
            "offsets.topic.num.partitions".to_owned(),
            PARTITIONS.to_string(),
        )]))
        .expect("config");
        let coordinator = GroupCoordinator::new(config, Arc::clone(&clock) as Arc<dyn Clock>);
        coordinator.sync(&partitions);
        Self {
            _dir: dir,
            clock,
            coordinator,
            partitions,
        }
    }

    fn shard(&self, group: &str) -> Result<Arc<GroupShard>, ErrorCode> {
        self.coordinator.shard_of(group, PARTITIONS)
    }

    /// Partition `index` now has `leader` at `epoch`, and the coordinator
    /// is told (as the metadata publisher will).
    fn move_leader(&self, index: i32, epoch: i32, leader: i32) {
        self.partitions[&index]
            .apply_state(&crate::partition::PartitionState::single(leader, epoch), 0);
        self.coordinator.sync(&self.partitions);
    }

    async fn commit(&self, group: &str, offset: i64) -> Result<(), ErrorCode> {
        let shard = self.shard(group)?;
        let mut state = shard.lock().await;
        let value = OffsetValue {
            offset,
            leader_epoch: 0,
            metadata: None,
            commit_timestamp_ms: self.clock.now_ms(),
        };
        shard
            .commit_offsets(&mut state, group, vec![(("orders".to_owned(), 0), value)])
            .await
    }

    /// The committed offset of `group` for orders-0, as its shard has it.
    async fn committed(&self, group: &str) -> Result<Option<i64>, ErrorCode> {
        let shard = self.shard(group)?;
        let state = shard.lock().await;
        Ok(state
            .offsets
            .get(group)
            .and_then(|o| o.get(&("orders".to_owned(), 0)))
            .map(|v| v.offset))
    }
}

/// A group id that hashes to partition `index`.
fn group_of(index: i32) -> String {
    (0..)
        .map(|n| format!("group-{n}"))
        .find(|g| partition_for(g, PARTITIONS) == index)
        .expect("some group hashes to every partition")
}

#[tokio::test]
async fn a_resigned_partition_answers_not_coordinator_and_comes_back_from_its_log() {
    let f = Fixture::new(0);
    let (g0, g1) = (group_of(0), group_of(1));
    f.commit(&g0, 10).await.expect("commit to partition 0");
    f.commit(&g1, 20).await.expect("commit to partition 1");
    {
        // A group with members' state, not only offsets.
        let shard = f.shard(&g0).expect("shard 0");
        let mut state = shard.lock().await;
        let group = state.classic_or_create(&g0, f.clock.now_ms()).expect("new");
        group.protocol_type = Some("consumer".to_owned());
        let record = state.group_record(&g0, &f.coordinator.config);
        shard.persist(vec![record]).await.expect("persist group");
    }
    let old_shard = f.shard(&g0).expect("shard 0");

    // Another broker leads partition 0 now.
    f.move_leader(0, 1, OTHER);
    assert_eq!(f.shard(&g0).err(), Some(ErrorCode::NotCoordinator));
    assert_eq!(f.commit(&g0, 11).await, Err(ErrorCode::NotCoordinator));
    assert_eq!(
        f.committed(&g1).await,
        Ok(Some(20)),
        "partition 1 still served"
    );
    assert_eq!(f.commit(&g1, 21).await, Ok(()));
    // Back to this broker: the shard is loaded from the partition.
    f.move_leader(0, 2, NODE);
    // A request that found the shard before the move writes nothing, even
    // now that the partition is led here again.
    {
        let mut state = old_shard.lock().await;
        let value = OffsetValue {
            offset: 99,
            leader_epoch: 0,
            metadata: None,
            commit_timestamp_ms: 0,
        };
        let late = old_shard
            .commit_offsets(&mut state, &g0, vec![(("orders".to_owned(), 0), value)])
            .await;
        assert_eq!(late, Err(ErrorCode::NotCoordinator));
    }

    assert_eq!(f.committed(&g0).await, Ok(Some(10)));
    let shard = f.shard(&g0).expect("shard 0 again");
    let state = shard.lock().await;
    match state.groups.get(&g0) {
        Some(super::Group::Classic(g)) => {
            assert_eq!(g.protocol_type.as_deref(), Some("consumer"));
        }
        other => panic!("group not restored: {other:?}"),
    }
    drop(state);
    assert_eq!(f.committed(&g1).await, Ok(Some(21)));
}

#[tokio::test]
async fn a_group_known_only_by_its_offsets_is_an_empty_classic_group_after_a_load() {
    let f = Fixture::new(0);
    let g0 = group_of(0);
    f.commit(&g0, 5).await.expect("commit");
    f.move_leader(0, 1, OTHER);
    f.move_leader(0, 2, NODE);
    let shard = f.shard(&g0).expect("shard");
    let state = shard.lock().await;
    let group = state.groups.get(&g0).expect("group restored");
    assert!(group.is_empty());
    assert_eq!(group.group_type(), "classic");
}

#[tokio::test]
async fn a_load_or_resignation_at_a_stale_epoch_changes_nothing() {
    let f = Fixture::new(5);
    let g0 = group_of(0);
    f.commit(&g0, 7).await.expect("commit");
    let shard = f.shard(&g0).expect("shard");
    let log = Arc::clone(&f.partitions[&0]) as Arc<dyn crate::coordinator::CoordinatorLog>;

    assert!(
        !f.coordinator.on_elected(0, 4, Arc::clone(&log)),
        "older epoch"
    );
    assert!(!f.coordinator.on_elected(0, 5, log), "same epoch");
    f.coordinator.on_resigned(0, Some(4));
    let still = f.shard(&g0).expect("still served");
    assert!(Arc::ptr_eq(&shard, &still), "the same shard, not reloaded");
    assert_eq!(f.committed(&g0).await, Ok(Some(7)));
    // Syncing again with nothing changed is a no-op too.
    f.coordinator.sync(&f.partitions);
    assert!(Arc::ptr_eq(&shard, &f.shard(&g0).expect("shard")));
}

#[tokio::test]
async fn a_parked_join_is_answered_not_coordinator_when_its_shard_unloads() {
    let f = Fixture::new(0);
    let g0 = group_of(0);
    let shard = f.shard(&g0).expect("shard");
    let reply = {
        let mut state = shard.lock().await;
        let now = f.clock.now_ms();
        let group = state.classic_or_create(&g0, now).expect("new");
        let mut out = Outbox::default();
        let join = JoinRequest {
            member_id: String::new(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 20_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"m"))],
            require_known_member_id: false,
        };
        // The first member waits out group.initial.rebalance.delay.ms.
        let reply = group.join(join, now, &f.coordinator.config, &mut out);
        out.deliver();
        reply
    };
    let Reply::Later(rx) = reply else {
        panic!("the join should be parked");
    };
    f.move_leader(0, 1, OTHER);
    let answer = shard
        .wait(
            rx,
            JoinResult::error(ErrorCode::UnknownMemberId, ""),
            JoinResult::error(ErrorCode::NotCoordinator, ""),
        )
        .await;
    assert_eq!(answer.error, ErrorCode::NotCoordinator);
}

#[tokio::test]
async fn transactional_offsets_stay_pending_across_a_load_and_count_after_the_commit_marker() {
    let f = Fixture::new(0);
    let g1 = group_of(1);
    let (producer_id, producer_epoch) = (4000, 0);
    {
        let shard = f.shard(&g1).expect("shard");
        let mut state = shard.lock().await;
        let value = OffsetValue {
            offset: 30,
            leader_epoch: 0,
            metadata: None,
            commit_timestamp_ms: f.clock.now_ms(),
        };
        shard
            .persist_txn_offsets(
                &mut state,
                &g1,
                producer_id,
                producer_epoch,
                vec![("orders".to_owned(), 0, value)],
            )
            .await
            .expect("txn offsets");
    }
    f.move_leader(1, 1, OTHER);
    f.move_leader(1, 2, NODE);
    assert_eq!(
        f.committed(&g1).await,
        Ok(None),
        "not visible before the marker"
    );
    {
        let shard = f.shard(&g1).expect("shard");
        let state = shard.lock().await;
        assert!(
            state.has_pending_offsets(&g1),
            "pending again after the load"
        );
    }

    // The transaction commits: the marker reaches partition 1.
    let marker = end_txn_marker_batch(
        0,
        f.clock.now_ms(),
        2,
        producer_id,
        producer_epoch,
        EndTxnMarker {
            commit: true,
            coordinator_epoch: 0,
        },
    );
    f.partitions[&1]
        .append_as_leader(&marker, AppendOrigin::Coordinator)
        .expect("marker");
    f.coordinator.complete_txn(producer_id, 1, true).await;
    assert_eq!(f.committed(&g1).await, Ok(Some(30)));

    // And a load replays the marker the same way.
    f.move_leader(1, 3, OTHER);
    f.move_leader(1, 4, NODE);
    assert_eq!(f.committed(&g1).await, Ok(Some(30)));
}

#[tokio::test]
async fn a_partition_gone_from_the_broker_is_resigned() {
    let mut f = Fixture::new(0);
    let g1 = group_of(1);
    f.commit(&g1, 3).await.expect("commit");
    f.partitions.remove(&1);
    f.coordinator.sync(&f.partitions);
    assert_eq!(f.shard(&g1).err(), Some(ErrorCode::NotCoordinator));
    assert!(f.shard(&group_of(0)).is_ok());
    assert_eq!(f.coordinator.active_shards().len(), 1);
}
