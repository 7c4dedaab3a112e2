//! ElectLeaders (KIP-460) against real processes: one controller and three
//! brokers, so that two brokers can be down while the quorum stays up. The
//! preferred replica is killed, the leadership moves; PREFERRED answers by
//! the ISR (not available while the replica is down or out of sync), and
//! UNCLEAN brings a partition whose in-sync replicas are all down back
//! under the restarted broker, which Metadata then shows. Requests are raw
//! ElectLeaders and Metadata requests to one broker that stays up.
//!
//! Replica fetching between brokers is built alongside: whether a restarted
//! broker rejoins an ISR is not up to the controller, so every assertion
//! here holds either way, and the one answer that depends on it accepts
//! both Kafka answers.

#![allow(clippy::unwrap_used)]

mod common;

use common::cluster::{eventually, strom_bin};

use std::net::SocketAddr;
use std::time::Duration;

use common::raw::RawConnection;
use strom_protocol::messages::kafka::{
    BrokerId, CreateTopicsRequest, CreateTopicsResponse, ElectLeadersRequest, ElectLeadersResponse,
    MetadataRequest, MetadataResponse, TopicName,
    create_topics_request::{CreatableReplicaAssignment, CreatableTopic},
    elect_leaders_request::TopicPartitions,
    metadata_request::MetadataRequestTopic,
};
use strom_protocol::messages::{ApiKey, StrBytes};
use strom_testkit::LocalCluster;

/// Longer than the controller's write timeout (15 s): the broker answers
/// before the connection gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const PREFERRED: i8 = 0;
const UNCLEAN: i8 = 1;
const NONE: i16 = 0;
const PREFERRED_LEADER_NOT_AVAILABLE: i16 = 80;
const ELIGIBLE_LEADERS_NOT_AVAILABLE: i16 = 83;
const ELECTION_NOT_NEEDED: i16 = 84;

/// Replicas 2, 3, 4 (broker 2 preferred) and replicas 2, 3.
const WIDE: &str = "wide";
const NARROW: &str = "narrow";

fn raw(addr: SocketAddr) -> RawConnection {
    RawConnection::connect(addr, REQUEST_TIMEOUT).unwrap()
}

fn name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_owned()))
}

/// CreateTopics (v7) of a one-partition topic on `replicas`.
fn create(addr: SocketAddr, topic: &str, replicas: &[i32]) {
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(name(topic))
                .with_num_partitions(-1)
                .with_replication_factor(-1)
                .with_assignments(vec![
                    CreatableReplicaAssignment::default()
                        .with_partition_index(0)
                        .with_broker_ids(replicas.iter().map(|b| BrokerId(*b)).collect()),
                ]),
        ]);
    let response: CreateTopicsResponse = raw(addr).call(ApiKey::CreateTopics, 7, &request).unwrap();
    assert_eq!(response.topics[0].error_code, 0, "{response:?}");
}

/// Partition 0 of `topic` as `addr` reports it (Metadata v12): its leader
/// and ISR, and the live brokers. `None` when the request fails.
fn partition(addr: SocketAddr, topic: &str) -> Option<(i32, Vec<i32>, Vec<i32>)> {
    let request = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(name(topic))),
        ]))
        .with_allow_auto_topic_creation(false);
    let response: MetadataResponse = RawConnection::connect(addr, REQUEST_TIMEOUT)
        .ok()?
        .call(ApiKey::Metadata, 12, &request)
        .ok()?;
    let p = response.topics.first()?.partitions.first()?;
    let mut isr: Vec<i32> = p.isr_nodes.iter().map(|b| b.0).collect();
    isr.sort_unstable();
    let mut brokers: Vec<i32> = response.brokers.iter().map(|b| b.node_id.0).collect();
    brokers.sort_unstable();
    Some((p.leader_id.0, isr, brokers))
}

/// Waits until `addr` reports partition 0 of `topic` led by `leader` with
/// `isr`.
async fn until_led(addr: SocketAddr, topic: &'static str, leader: i32, isr: &[i32]) {
    let isr = isr.to_vec();
    eventually(
        &format!("{topic} led by {leader}, ISR {isr:?}"),
        move || partition(addr, topic).filter(|(l, i, _)| *l == leader && *i == isr),
    )
    .await;
}

/// ElectLeaders at `version` for partition 0 of each of `topics` (`None`:
/// every partition): the whole response.
fn elect_all(
    addr: SocketAddr,
    version: i16,
    election_type: i8,
    topics: Option<&[&str]>,
) -> ElectLeadersResponse {
    let request = ElectLeadersRequest::default()
        .with_election_type(election_type)
        .with_timeout_ms(30_000)
        .with_topic_partitions(topics.map(|topics| {
            topics
                .iter()
                .map(|t| {
                    TopicPartitions::default()
                        .with_topic(name(t))
                        .with_partitions(vec![0])
                })
                .collect()
        }));
    raw(addr)
        .call(ApiKey::ElectLeaders, version, &request)
        .unwrap()
}

/// ElectLeaders (v2) for partition 0 of `topic`: its error code.
fn elect(addr: SocketAddr, election_type: i8, topic: &str) -> i16 {
    let response = elect_all(addr, 2, election_type, Some(&[topic]));
    assert_eq!(response.error_code, 0, "{response:?}");
    let result = &response.replica_election_results[0];
    assert_eq!(result.topic.0.as_str(), topic);
    assert_eq!(result.partition_result[0].partition_id, 0);
    result.partition_result[0].error_code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elections_answer_by_the_isr_and_an_unclean_one_brings_a_restarted_broker_back() {
    let mut cluster = LocalCluster::builder(strom_bin())
        .nodes(1)
        .controller_only()
        .brokers(3)
        .set("broker.session.timeout.ms", "3000")
        .set("broker.heartbeat.interval.ms", "500")
        // Only the elections asked for here move leaders.
        .set("auto.leader.rebalance.enable", "false")
        .start()
        .await
        .unwrap();
    // Broker 4 stays up and answers every request.
    let (a, b, c) = (2, 3, 4);
    let ask = cluster.addr(c);
    eventually("three live brokers", move || {
        raw(ask)
            .describe_cluster()
            .ok()
            .filter(|(_, brokers)| *brokers == vec![a, b, c])
    })
    .await;
    create(ask, WIDE, &[a, b, c]);
    create(ask, NARROW, &[a, b]);
    until_led(ask, WIDE, a, &[a, b, c]).await;
    until_led(ask, NARROW, a, &[a, b]).await;

    // The preferred replicas lead: no election, at every version.
    for version in 0..=2 {
        let response = elect_all(ask, version, PREFERRED, Some(&[WIDE, NARROW]));
        let codes: Vec<i16> = response
            .replica_election_results
            .iter()
            .map(|t| t.partition_result[0].error_code)
            .collect();
        assert_eq!(codes, vec![ELECTION_NOT_NEEDED; 2], "v{version}");
    }
    // Every partition: only those that needed an election are answered.
    let all = elect_all(ask, 2, PREFERRED, None);
    assert_eq!(all.error_code, 0);
    assert!(
        all.replica_election_results
            .iter()
            .all(|t| t.partition_result.is_empty()),
        "{all:?}"
    );
    // An election type Kafka does not know fails the whole request.
    let unknown = elect_all(ask, 2, 7, Some(&[WIDE]));
    assert_eq!(unknown.error_code, 42, "INVALID_REQUEST: {unknown:?}");
    assert_eq!(
        unknown.replica_election_results[0].partition_result[0].error_code,
        42
    );

    // The preferred replica dies: once fenced it leaves the ISRs and the
    // next in-sync replica leads.
    cluster.kill(a).await.unwrap();
    until_led(ask, WIDE, b, &[b, c]).await;
    until_led(ask, NARROW, b, &[b]).await;
    assert_eq!(elect(ask, PREFERRED, WIDE), PREFERRED_LEADER_NOT_AVAILABLE);
    assert_eq!(elect(ask, UNCLEAN, NARROW), ELECTION_NOT_NEEDED);

    // The last in-sync replica of NARROW dies too: no leader, and no live
    // replica to elect.
    cluster.kill(b).await.unwrap();
    until_led(ask, NARROW, -1, &[b]).await;
    until_led(ask, WIDE, c, &[c]).await;
    assert_eq!(elect(ask, UNCLEAN, NARROW), ELIGIBLE_LEADERS_NOT_AVAILABLE);

    // The preferred replica restarts: live, but not in NARROW's ISR, which
    // has no leader to take it back, so only an unclean election helps.
    cluster.restart(a).await.unwrap();
    eventually("the restarted broker is live", move || {
        partition(ask, NARROW).filter(|(_, _, brokers)| *brokers == vec![a, c])
    })
    .await;
    assert_eq!(
        partition(ask, NARROW).map(|(leader, isr, _)| (leader, isr)),
        Some((-1, vec![b]))
    );
    assert_eq!(
        elect(ask, PREFERRED, NARROW),
        PREFERRED_LEADER_NOT_AVAILABLE
    );
    assert_eq!(elect(ask, UNCLEAN, NARROW), NONE);
    // Every broker's Metadata shows the new leader, the sole in-sync replica.
    until_led(ask, NARROW, a, &[a]).await;
    until_led(cluster.addr(a), NARROW, a, &[a]).await;
    assert_eq!(elect(ask, UNCLEAN, NARROW), ELECTION_NOT_NEEDED);
    assert_eq!(elect(ask, PREFERRED, NARROW), ELECTION_NOT_NEEDED);

    // WIDE: broker 4 leads; the restarted preferred replica may be back in
    // its ISR (the leader's replica fetching and AlterPartition) or not yet.
    match elect(ask, PREFERRED, WIDE) {
        NONE => {
            eventually("WIDE led by its preferred replica again", move || {
                partition(ask, WIDE).filter(|(leader, _, _)| *leader == a)
            })
            .await;
        }
        code => assert_eq!(code, PREFERRED_LEADER_NOT_AVAILABLE),
    }
}
