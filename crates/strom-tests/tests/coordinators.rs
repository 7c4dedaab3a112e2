//! Coordinators in a cluster: the group coordinator of a group is the
//! leader of its partition of `__consumer_offsets`, and what it acknowledges
//! is replicated, so it survives that leader's death.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::cluster::{eventually, three_nodes_builder};
use common::numbered::leader_and_isr;
use common::raw::RawConnection;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use strom_protocol::messages::kafka::{
    GroupId, OffsetCommitRequest, OffsetCommitResponse, TopicName, offset_commit_request,
};
use strom_protocol::messages::{ApiKey, StrBytes};

const TOPIC: &str = "input";
const GROUP: &str = "replicated-commits";
const OFFSETS: &str = "__consumer_offsets";

fn consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

fn commit(bootstrap: &str, offset: i64) -> Result<(), String> {
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(TOPIC, 0, Offset::Offset(offset))
        .unwrap();
    consumer(bootstrap)
        .commit(&offsets, CommitMode::Sync)
        .map_err(|e| e.to_string())
}

fn committed(bootstrap: &str) -> Option<i64> {
    let mut asked = TopicPartitionList::new();
    asked.add_partition(TOPIC, 0);
    let found = consumer(bootstrap)
        .committed_offsets(asked, Duration::from_secs(5))
        .ok()?;
    match found.find_partition(TOPIC, 0)?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// OffsetCommit (v8) of `offset` straight to `coordinator`: its error code.
fn raw_commit(coordinator: SocketAddr, offset: i64) -> i16 {
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str(GROUP)))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![
            offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
                .with_partitions(vec![
                    offset_commit_request::OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(offset),
                ]),
        ]);
    let response: OffsetCommitResponse =
        RawConnection::connect(coordinator, Duration::from_secs(20))
            .unwrap()
            .call(ApiKey::OffsetCommit, 8, &request)
            .unwrap();
    response.topics[0].partitions[0].error_code
}

/// An offset commit is acknowledged once its record is on the in-sync
/// replicas, not when the coordinator has it alone: with both followers of
/// the group's offsets partition stopped, the commit fails
/// (COORDINATOR_NOT_AVAILABLE after `offsets.commit.timeout.ms`). The offset
/// acknowledged before survives the kill -9 of the coordinator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_commit_is_acknowledged_only_once_replicated() {
    let mut cluster = three_nodes_builder()
        .set("offsets.topic.num.partitions", "1")
        .set("offsets.commit.timeout.ms", "1000")
        .start()
        .await
        .unwrap();
    let code = RawConnection::connect(cluster.addr(1), Duration::from_secs(20))
        .unwrap()
        .create_topic(TOPIC, 1, 3)
        .unwrap();
    assert_eq!(code.0, 0, "{code:?}");
    let bootstrap = cluster.bootstrap();
    // The first commit creates the offsets topic (three replicas).
    let b = bootstrap.clone();
    eventually("the first commit", move || commit(&b, 5).ok()).await;
    let addr = cluster.addr(1);
    let (leader, isr) = eventually("the offsets partition fully in sync", move || {
        leader_and_isr(addr, OFFSETS).filter(|(l, isr)| *l > 0 && isr.len() == 3)
    })
    .await;
    let followers: Vec<i32> = isr.into_iter().filter(|id| *id != leader).collect();
    for id in &followers {
        cluster.pause(*id).unwrap();
    }
    let coordinator = cluster.addr(leader);
    let code = tokio::task::spawn_blocking(move || raw_commit(coordinator, 10))
        .await
        .unwrap();
    for id in &followers {
        cluster.resume(*id).unwrap();
    }
    assert_ne!(
        code, 0,
        "a commit no follower could replicate was acknowledged"
    );
    cluster.kill(leader).await.unwrap();
    // The unacknowledged commit may have reached the followers since; the
    // acknowledged one must not be lost.
    let offset = eventually("the committed offset from the new coordinator", move || {
        committed(&bootstrap)
    })
    .await;
    assert!(
        offset == 5 || offset == 10,
        "committed offset {offset} after the coordinator's death (acknowledged: 5)"
    );
}
