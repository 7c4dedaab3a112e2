//! The controller quorum: DescribeQuorum (what the Java client's
//! `describeMetadataQuorum` and `kafka-metadata-quorum.sh describe` use).

use strom_protocol::messages::kafka::{
    DescribeQuorumRequest, DescribeQuorumResponse, TopicName, describe_quorum_request,
    describe_quorum_response,
};
use strom_protocol::messages::{StrBytes, Uuid};

use crate::error::{Error, ErrorCode, Result};

use super::Admin;
use super::routing::{Dest, no_answer};

/// v1 adds the fetch and caught-up timestamps, v2 the directory ids, the
/// voters' listeners and error messages (KIP-853).
const DESCRIBE_QUORUM_VERSION: i16 = 2;
/// The metadata log, the quorum's one partition.
const METADATA_TOPIC: &str = "__cluster_metadata";
const METADATA_PARTITION: i32 = 0;

/// The controller quorum as its leader describes it (Java's `QuorumInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumInfo {
    pub leader_id: i32,
    pub leader_epoch: i32,
    /// The offset after the last committed entry of the metadata log.
    pub high_watermark: i64,
    /// By id.
    pub voters: Vec<QuorumReplica>,
    /// The non-voters following the metadata log (brokers), by id.
    pub observers: Vec<QuorumReplica>,
    /// The voters' controller listeners (v2; empty from older brokers).
    pub nodes: Vec<QuorumNode>,
}

/// One voter's or observer's progress (Java's `QuorumInfo.ReplicaState`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumReplica {
    pub replica_id: i32,
    /// The replica's log directory id (v2); `None` when not known (the
    /// zero UUID).
    pub directory_id: Option<Uuid>,
    /// The offset after the last entry the leader knows is there; `None`
    /// when not known.
    pub log_end_offset: Option<i64>,
    /// The leader's wall clock (ms) at the replica's last fetch.
    pub last_fetch_timestamp: Option<i64>,
    /// The leader's wall clock (ms) when the replica last had everything
    /// the leader had.
    pub last_caught_up_timestamp: Option<i64>,
}

impl QuorumReplica {
    /// How many entries the replica is behind the leader's `log_end_offset`
    /// (`kafka-metadata-quorum.sh --status`'s lag); `None` when its own log
    /// end offset is not known.
    pub fn lag(&self, leader_log_end_offset: i64) -> Option<i64> {
        self.log_end_offset
            .map(|o| leader_log_end_offset.saturating_sub(o).max(0))
    }
}

/// A voter and its listeners (v2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumNode {
    pub node_id: i32,
    /// `(listener name, host, port)`.
    pub listeners: Vec<(String, String, u16)>,
}

impl QuorumInfo {
    /// The leader's own entry among the voters.
    pub fn leader(&self) -> Option<&QuorumReplica> {
        self.voters.iter().find(|v| v.replica_id == self.leader_id)
    }
}

/// Kafka's -1 for "not known".
fn known(value: i64) -> Option<i64> {
    (value >= 0).then_some(value)
}

fn replica(r: &describe_quorum_response::ReplicaState) -> QuorumReplica {
    QuorumReplica {
        replica_id: r.replica_id.0,
        directory_id: (!r.replica_directory_id.is_nil()).then_some(r.replica_directory_id),
        log_end_offset: known(r.log_end_offset),
        last_fetch_timestamp: known(r.last_fetch_timestamp),
        last_caught_up_timestamp: known(r.last_caught_up_timestamp),
    }
}

/// The quorum from a response: its top-level error, else the metadata
/// partition's error, else its description.
fn parse(response: DescribeQuorumResponse) -> Result<QuorumInfo> {
    Error::check(response.error_code, response.error_message.as_deref())?;
    let partition = response
        .topics
        .iter()
        .filter(|t| t.topic_name.0.as_str() == METADATA_TOPIC)
        .flat_map(|t| t.partitions.iter())
        .find(|p| p.partition_index == METADATA_PARTITION)
        .ok_or_else(|| {
            Error::kafka(
                ErrorCode::UnknownServerError.code(),
                Some("the DescribeQuorum response does not describe the metadata log"),
            )
        })?;
    Error::check(partition.error_code, partition.error_message.as_deref())?;
    let mut voters: Vec<QuorumReplica> = partition.current_voters.iter().map(replica).collect();
    voters.sort_by_key(|r| r.replica_id);
    let mut observers: Vec<QuorumReplica> = partition.observers.iter().map(replica).collect();
    observers.sort_by_key(|r| r.replica_id);
    let mut nodes: Vec<QuorumNode> = response
        .nodes
        .iter()
        .map(|n| QuorumNode {
            node_id: n.node_id.0,
            listeners: n
                .listeners
                .iter()
                .map(|l| (l.name.to_string(), l.host.to_string(), l.port))
                .collect(),
        })
        .collect();
    nodes.sort_by_key(|n| n.node_id);
    Ok(QuorumInfo {
        leader_id: partition.leader_id.0,
        leader_epoch: partition.leader_epoch,
        high_watermark: partition.high_watermark,
        voters,
        observers,
        nodes,
    })
}

impl Admin {
    /// The controller quorum: its leader, epoch and high watermark, and
    /// every voter's and observer's progress on the metadata log
    /// (DescribeQuorum, which any broker forwards to the active controller).
    /// NOT_LEADER_OR_FOLLOWER and timeouts (an election) are retried until
    /// the API timeout.
    pub async fn describe_quorum(&self) -> Result<QuorumInfo> {
        let deadline = self.deadline();
        let mut answers = self
            .each(
                deadline,
                [()],
                DESCRIBE_QUORUM_VERSION,
                |()| Dest::Any,
                |_, _| {
                    DescribeQuorumRequest::default().with_topics(vec![
                        describe_quorum_request::TopicData::default()
                            .with_topic_name(TopicName(StrBytes::from_static_str(METADATA_TOPIC)))
                            .with_partitions(vec![
                                describe_quorum_request::PartitionData::default()
                                    .with_partition_index(METADATA_PARTITION),
                            ]),
                    ])
                },
                |_, response| vec![((), parse(response))],
            )
            .await;
        answers
            .remove(&())
            .unwrap_or_else(|| Err(no_answer("DescribeQuorum")))
    }
}

#[cfg(test)]
mod tests {
    use strom_protocol::messages::kafka::BrokerId;

    use super::*;

    fn state(id: i32, leo: i64, fetch: i64) -> describe_quorum_response::ReplicaState {
        describe_quorum_response::ReplicaState::default()
            .with_replica_id(BrokerId(id))
            .with_log_end_offset(leo)
            .with_last_fetch_timestamp(fetch)
    }

    fn response(error: i16) -> DescribeQuorumResponse {
        DescribeQuorumResponse::default().with_topics(vec![
            describe_quorum_response::TopicData::default()
                .with_topic_name(TopicName(StrBytes::from_static_str(METADATA_TOPIC)))
                .with_partitions(vec![
                    describe_quorum_response::PartitionData::default()
                        .with_error_code(error)
                        .with_error_message(None)
                        .with_leader_id(BrokerId(2))
                        .with_leader_epoch(5)
                        .with_high_watermark(10)
                        .with_current_voters(vec![
                            state(3, -1, -1),
                            state(2, 12, 99),
                            state(1, 9, -1),
                        ])
                        .with_observers(vec![state(4, 8, 50)]),
                ]),
        ])
    }

    #[test]
    fn unknowns_are_none_and_lag_is_from_the_leader() {
        let q = parse(response(0)).unwrap();
        assert_eq!((q.leader_id, q.leader_epoch, q.high_watermark), (2, 5, 10));
        let ids: Vec<i32> = q.voters.iter().map(|v| v.replica_id).collect();
        assert_eq!(ids, [1, 2, 3]);
        let leader = q.leader().unwrap();
        assert_eq!(leader.last_fetch_timestamp, Some(99));
        let leo = leader.log_end_offset.unwrap();
        let lags: Vec<Option<i64>> = q.voters.iter().map(|v| v.lag(leo)).collect();
        assert_eq!(lags, [Some(3), Some(0), None]);
        assert_eq!(q.voters[2].last_fetch_timestamp, None);
        assert_eq!(q.voters[0].directory_id, None);
        assert_eq!(q.observers[0].lag(leo), Some(4));
    }

    #[test]
    fn errors_are_the_top_levels_then_the_partitions() {
        let e = parse(response(ErrorCode::NotLeaderOrFollower.code())).unwrap_err();
        assert!(e.is_retriable(), "{e}");
        let e = parse(
            response(0)
                .with_error_code(ErrorCode::RequestTimedOut.code())
                .with_error_message(Some(StrBytes::from_static_str("no quorum"))),
        )
        .unwrap_err();
        assert!(e.to_string().contains("no quorum"), "{e}");
        let e = parse(DescribeQuorumResponse::default()).unwrap_err();
        assert!(e.to_string().contains("metadata log"), "{e}");
    }
}
