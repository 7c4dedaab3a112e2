//! Partition reassignment (KIP-455) across processes: a partition on
//! brokers [1, 2, 3] moves to [2, 3, 4] while an idempotent librdkafka
//! producer writes at acks=all. ListPartitionReassignments shows the move
//! until the new replica is in sync; then every node's metadata names the
//! new replicas, the leadership has left broker 1, broker 1 has deleted its
//! copy, and a consumer reads every acknowledged record once, in order.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::cluster::{eventually, strom_bin};
use common::numbered::{Writer, read_all};
use common::raw::RawConnection;
use strom_protocol::messages::kafka::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    CreateTopicsRequest, CreateTopicsResponse, ListPartitionReassignmentsRequest,
    ListPartitionReassignmentsResponse, MetadataRequest, MetadataResponse, TopicName,
    alter_partition_reassignments_request::{ReassignablePartition, ReassignableTopic},
    create_topics_request::{CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig},
    metadata_request::MetadataRequestTopic,
};
use strom_protocol::messages::{ApiKey, StrBytes};
use strom_testkit::LocalCluster;

const TOPIC: &str = "moving";
/// Records acknowledged before the move, during it, and after it.
const PER_PHASE: usize = 100;
/// Kafka's error codes the test expects.
const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
const NO_REASSIGNMENT_IN_PROGRESS: i16 = 85;

fn raw(addr: SocketAddr) -> RawConnection {
    RawConnection::connect(addr, Duration::from_secs(20)).unwrap()
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

/// Voters 1-3 (combined) and broker-only node 4, with the short timers of
/// the other cluster tests. Node 4 is not a voter, so stopping it never
/// touches the quorum.
async fn four_brokers() -> LocalCluster {
    let builder = LocalCluster::builder(strom_bin());
    let builder = match std::env::var_os("STROM_TEST_KEEP_DIR") {
        Some(dir) => builder.data_dir_root(dir),
        None => builder,
    };
    builder
        .nodes(3)
        .brokers(1)
        .set("broker.session.timeout.ms", "3000")
        .set("broker.heartbeat.interval.ms", "500")
        .set("controller.quorum.election.timeout.ms", "500")
        .start()
        .await
        .unwrap()
}

/// CreateTopics with one partition placed on `replicas` and
/// `min.insync.replicas=2`: the error code.
fn create_placed(addr: SocketAddr, replicas: &[i32]) -> i16 {
    let topic = CreatableTopic::default()
        .with_name(name(TOPIC))
        .with_num_partitions(-1)
        .with_replication_factor(-1)
        .with_assignments(vec![
            CreatableReplicaAssignment::default()
                .with_partition_index(0)
                .with_broker_ids(replicas.iter().copied().map(BrokerId).collect()),
        ])
        .with_configs(vec![
            CreatableTopicConfig::default()
                .with_name(StrBytes::from_static_str("min.insync.replicas"))
                .with_value(Some(StrBytes::from_static_str("2"))),
        ]);
    let request = CreateTopicsRequest::default()
        .with_topics(vec![topic])
        .with_timeout_ms(30_000);
    let response: CreateTopicsResponse = raw(addr).call(ApiKey::CreateTopics, 7, &request).unwrap();
    response.topics[0].error_code
}

/// AlterPartitionReassignments v1 of partition 0 to `target` (`None`:
/// cancel): the top-level and the partition's error codes.
fn reassign(addr: SocketAddr, target: Option<&[i32]>) -> (i16, i16) {
    let request = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(30_000)
        .with_allow_replication_factor_change(false)
        .with_topics(vec![
            ReassignableTopic::default()
                .with_name(name(TOPIC))
                .with_partitions(vec![
                    ReassignablePartition::default()
                        .with_partition_index(0)
                        .with_replicas(target.map(|t| t.iter().copied().map(BrokerId).collect())),
                ]),
        ]);
    let response: AlterPartitionReassignmentsResponse = raw(addr)
        .call(ApiKey::AlterPartitionReassignments, 1, &request)
        .unwrap();
    (
        response.error_code,
        response.responses[0].partitions[0].error_code,
    )
}

/// The reassignments in progress (all topics) as the node at `addr`
/// lists them: (topic, partition, replicas, adding, removing).
type Ongoing = (String, i32, Vec<i32>, Vec<i32>, Vec<i32>);

fn ongoing(addr: SocketAddr) -> Option<Vec<Ongoing>> {
    let request = ListPartitionReassignmentsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(None);
    let response: ListPartitionReassignmentsResponse =
        RawConnection::connect(addr, Duration::from_secs(20))
            .ok()?
            .call(ApiKey::ListPartitionReassignments, 0, &request)
            .ok()?;
    if response.error_code != 0 {
        return None;
    }
    let ids = |v: &[BrokerId]| v.iter().map(|b| b.0).collect::<Vec<_>>();
    Some(
        response
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(|p| {
                    (
                        t.name.0.to_string(),
                        p.partition_index,
                        ids(&p.replicas),
                        ids(&p.adding_replicas),
                        ids(&p.removing_replicas),
                    )
                })
            })
            .collect(),
    )
}

/// Partition 0's (leader, replicas, sorted ISR) in the metadata of the node
/// at `addr`.
fn partition_view(addr: SocketAddr) -> Option<(i32, Vec<i32>, Vec<i32>)> {
    let request = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(name(TOPIC))),
        ]))
        .with_allow_auto_topic_creation(false);
    let response: MetadataResponse = RawConnection::connect(addr, Duration::from_secs(5))
        .ok()?
        .call(ApiKey::Metadata, 12, &request)
        .ok()?;
    let topic = response.topics.first().filter(|t| t.error_code == 0)?;
    let p = topic.partitions.first().filter(|p| p.error_code == 0)?;
    let mut isr: Vec<i32> = p.isr_nodes.iter().map(|b| b.0).collect();
    isr.sort_unstable();
    Some((
        p.leader_id.0,
        p.replica_nodes.iter().map(|b| b.0).collect(),
        isr,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_moves_to_a_new_broker_without_losing_an_acknowledged_record() {
    let cluster = four_brokers().await;
    let addr1 = cluster.addr(1);
    eventually("every node sees four brokers", move || {
        let (_, brokers) = RawConnection::connect(addr1, Duration::from_secs(5))
            .ok()?
            .describe_cluster()
            .ok()?;
        (brokers.len() == 4).then_some(())
    })
    .await;
    assert_eq!(create_placed(cluster.addr(1), &[1, 2, 3]), 0);
    let addr2 = cluster.addr(2);
    eventually(
        "the partition is led by broker 1 with all in sync",
        move || {
            let (leader, replicas, isr) = partition_view(addr2)?;
            (leader == 1 && replicas == [1, 2, 3] && isr == [1, 2, 3]).then_some(())
        },
    )
    .await;

    let writer = Writer::start(&cluster.bootstrap(), TOPIC, 3 * PER_PHASE);
    writer.wait_for(PER_PHASE).await;

    // Broker 4 is stopped while the move starts, so it cannot catch up
    // and the reassignment is seen in progress.
    cluster.pause(4).unwrap();
    assert_eq!(reassign(cluster.addr(3), Some(&[2, 3, 4])), (0, 0));
    let listed = ongoing(cluster.addr(2)).expect("ListPartitionReassignments answers");
    assert_eq!(
        listed,
        vec![(TOPIC.to_owned(), 0, vec![2, 3, 4, 1], vec![4], vec![1])]
    );
    // The other replicas keep acknowledging while 4 is away.
    writer.wait_for(2 * PER_PHASE).await;
    assert_eq!(
        ongoing(cluster.addr(1)).expect("ListPartitionReassignments answers"),
        listed,
        "still in progress while the new replica is stopped"
    );
    cluster.resume(4).unwrap();

    let addr3 = cluster.addr(3);
    eventually("the reassignment completes", move || {
        ongoing(addr3).filter(Vec::is_empty)
    })
    .await;
    let addrs: Vec<SocketAddr> = cluster
        .node_ids()
        .into_iter()
        .map(|id| cluster.addr(id))
        .collect();
    let leader = eventually(
        "every node names replicas [2, 3, 4], all in sync, led by one of them",
        move || {
            let views: Vec<(i32, Vec<i32>, Vec<i32>)> = addrs
                .iter()
                .map(|a| partition_view(*a))
                .collect::<Option<_>>()?;
            let agreed = views.windows(2).all(|w| w[0] == w[1]);
            let (leader, replicas, isr) = &views[0];
            (agreed && *replicas == [2, 3, 4] && *isr == [2, 3, 4]).then_some(*leader)
        },
    )
    .await;
    assert!(
        [2, 3, 4].contains(&leader),
        "the leadership left broker 1 (now {leader})"
    );
    let removed_copy = cluster.data_dir(1).join(format!("{TOPIC}-0"));
    eventually("broker 1 deletes its copy of the partition", move || {
        (!removed_copy.exists()).then_some(())
    })
    .await;
    assert!(cluster.data_dir(4).join(format!("{TOPIC}-0")).exists());

    let (acked, errors) = writer.finish().await;
    assert!(
        errors.is_empty(),
        "the idempotent producer failed: {errors:?}"
    );
    let bootstrap = cluster.addr(leader).to_string();
    let read = tokio::task::spawn_blocking(move || read_all(&bootstrap, TOPIC))
        .await
        .unwrap();
    let unique: BTreeSet<u64> = read.iter().copied().collect();
    assert_eq!(unique.len(), read.len(), "a record was read twice");
    assert!(read.windows(2).all(|w| w[0] < w[1]), "records out of order");
    let lost: Vec<u64> = acked
        .iter()
        .filter(|n| !unique.contains(n))
        .copied()
        .collect();
    assert!(lost.is_empty(), "acknowledged records lost: {lost:?}");

    // Nothing in progress now: a cancel is refused, and so is a target
    // naming a broker that is not registered.
    assert_eq!(
        reassign(cluster.addr(2), None),
        (0, NO_REASSIGNMENT_IN_PROGRESS)
    );
    assert_eq!(
        reassign(cluster.addr(1), Some(&[2, 3, 9])),
        (0, INVALID_REPLICA_ASSIGNMENT)
    );
    assert_eq!(
        partition_view(cluster.addr(1)).map(|(_, replicas, _)| replicas),
        Some(vec![2, 3, 4]),
        "a refused reassignment changes nothing"
    );
}
