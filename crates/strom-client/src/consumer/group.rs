//! The classic group protocol from the member's side: find the coordinator,
//! JoinGroup, (as leader) assign, SyncGroup, heartbeat, commit and fetch
//! offsets, LeaveGroup.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use strom_protocol::messages::kafka::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, GroupId, HeartbeatRequest,
    JoinGroupRequest, LeaveGroupRequest, OffsetCommitRequest, OffsetFetchRequest, SyncGroupRequest,
    TopicName, consumer_protocol_assignment,
    join_group_request::JoinGroupRequestProtocol,
    leave_group_request::MemberIdentity,
    offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic},
    offset_fetch_request::OffsetFetchRequestTopic,
    sync_group_request::SyncGroupRequestAssignment,
};
use strom_protocol::messages::{Decodable, Encodable, StrBytes};

use super::TopicPartition;
use super::assignor::{self, ASSIGNORS, Member};
use crate::cluster::{Cluster, GROUP_KEY, Route};
use crate::error::{Error, ErrorCode, Result};

const JOIN_GROUP_VERSION: i16 = 9;
const SYNC_GROUP_VERSION: i16 = 5;
const HEARTBEAT_VERSION: i16 = 4;
const LEAVE_GROUP_VERSION: i16 = 5;
/// v8+ batches groups; one group per request needs no more.
const OFFSET_FETCH_VERSION: i16 = 7;
/// v9+ carries KIP-848 member epochs; a classic member needs v8 at most.
const OFFSET_COMMIT_VERSION: i16 = 8;
const OFFSET_COMMIT_VERSION_KIP848: i16 = 9;

/// The consumer protocol's metadata and assignment versions written: v0 is
/// what every client reads.
const CONSUMER_PROTOCOL_VERSION: i16 = 0;

/// Extra time a JoinGroup may take beyond the rebalance timeout, as the Java
/// client allows.
const JOIN_GROUP_GRACE: Duration = Duration::from_secs(5);

/// Who this member is in its group.
#[derive(Debug, Clone)]
pub(crate) struct Membership {
    pub(crate) group: String,
    pub(crate) member_id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) generation: i32,
    pub(crate) coordinator: Option<i32>,
    /// A KIP-848 member: `generation` is its member epoch.
    pub(crate) consumer_protocol: bool,
}

impl Membership {
    pub(crate) fn new(group: String, instance_id: Option<String>) -> Self {
        Self {
            group,
            member_id: String::new(),
            instance_id,
            generation: -1,
            coordinator: None,
            consumer_protocol: false,
        }
    }
}

/// The group settings a member sends.
#[derive(Debug, Clone)]
pub(crate) struct GroupSettings {
    pub(crate) session_timeout: Duration,
    pub(crate) rebalance_timeout: Duration,
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

/// The coordinator of the group, looked up if not known.
pub(crate) async fn coordinator(cluster: &Cluster, membership: &mut Membership) -> Result<i32> {
    if let Some(node) = membership.coordinator {
        return Ok(node);
    }
    let node = cluster
        .find_coordinator(GROUP_KEY, &membership.group)
        .await?;
    membership.coordinator = Some(node);
    Ok(node)
}

/// Forgets the coordinator when `error` says it moved or is gone.
pub(crate) fn check_coordinator(membership: &mut Membership, error: &Error) {
    if matches!(
        error.code(),
        Some(ErrorCode::NotCoordinator | ErrorCode::CoordinatorNotAvailable)
    ) || matches!(error, Error::Io { .. } | Error::Timeout(_))
    {
        membership.coordinator = None;
    }
}

/// Joins the group (JoinGroup then SyncGroup) subscribed to `topics`, and
/// returns the partitions assigned to this member.
pub(crate) async fn join(
    cluster: &Arc<Cluster>,
    membership: &mut Membership,
    settings: &GroupSettings,
    topics: &BTreeSet<String>,
) -> Result<Vec<TopicPartition>> {
    let node = coordinator(cluster, membership).await?;
    let subscription = encode_versioned(
        &ConsumerProtocolSubscription::default()
            .with_topics(topics.iter().map(|t| str_bytes(t)).collect()),
    )?;
    let protocols = ASSIGNORS
        .iter()
        .map(|name| {
            JoinGroupRequestProtocol::default()
                .with_name(str_bytes(name))
                .with_metadata(subscription.clone())
        })
        .collect();
    let mut request = JoinGroupRequest::default()
        .with_group_id(GroupId(str_bytes(&membership.group)))
        .with_session_timeout_ms(millis(settings.session_timeout))
        .with_rebalance_timeout_ms(millis(settings.rebalance_timeout))
        .with_member_id(str_bytes(&membership.member_id))
        .with_group_instance_id(membership.instance_id.as_deref().map(str_bytes))
        .with_protocol_type(str_bytes("consumer"))
        .with_protocols(protocols);
    let response = loop {
        let response = cluster
            .start(Route::Coordinator(node), JOIN_GROUP_VERSION, &request)
            .await?
            .with_timeout(settings.rebalance_timeout + JOIN_GROUP_GRACE)
            .response()
            .await?;
        // v4+: a new member learns its id first and joins again with it.
        if response.error_code == ErrorCode::MemberIdRequired.code() {
            membership.member_id = response.member_id.to_string();
            request.member_id = response.member_id;
            continue;
        }
        if response.error_code == ErrorCode::UnknownMemberId.code() {
            membership.member_id.clear();
        }
        Error::check(response.error_code, None)?;
        break response;
    };
    membership.member_id = response.member_id.to_string();
    membership.generation = response.generation_id;
    let protocol = response
        .protocol_name
        .as_deref()
        .unwrap_or("range")
        .to_owned();
    let assignments = if response.leader == response.member_id && !response.skip_assignment {
        leader_assignments(cluster, &protocol, &response.members)
            .await?
            .into_iter()
            .map(|(member, partitions)| {
                encode_assignment(&partitions).map(|assignment| {
                    SyncGroupRequestAssignment::default()
                        .with_member_id(str_bytes(&member))
                        .with_assignment(assignment)
                })
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let sync = SyncGroupRequest::default()
        .with_group_id(GroupId(str_bytes(&membership.group)))
        .with_generation_id(membership.generation)
        .with_member_id(str_bytes(&membership.member_id))
        .with_group_instance_id(membership.instance_id.as_deref().map(str_bytes))
        .with_protocol_type(Some(str_bytes("consumer")))
        .with_protocol_name(Some(str_bytes(&protocol)))
        .with_assignments(assignments);
    let response = cluster
        .start(Route::Coordinator(node), SYNC_GROUP_VERSION, &sync)
        .await?
        .with_timeout(settings.rebalance_timeout + JOIN_GROUP_GRACE)
        .response()
        .await?;
    Error::check(response.error_code, None)?;
    decode_assignment(response.assignment)
}

/// The leader's work: every member's subscription, the partition counts of
/// their topics, the assignor's answer.
async fn leader_assignments(
    cluster: &Cluster,
    protocol: &str,
    members: &[strom_protocol::messages::kafka::join_group_response::JoinGroupResponseMember],
) -> Result<BTreeMap<String, Vec<TopicPartition>>> {
    let mut decoded = Vec::new();
    for member in members {
        let mut buf = member.metadata.clone();
        let subscription: ConsumerProtocolSubscription = decode_versioned(&mut buf)?;
        decoded.push(Member {
            id: member.member_id.to_string(),
            topics: subscription
                .topics
                .iter()
                .map(ToString::to_string)
                .collect(),
        });
    }
    let all: BTreeSet<String> = decoded
        .iter()
        .flat_map(|m| m.topics.iter().cloned())
        .collect();
    let names: Vec<String> = all.into_iter().collect();
    let topics = cluster.fetch_metadata(Some(&names), false).await?;
    let partitions: BTreeMap<String, i32> = topics
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                i32::try_from(t.partitions.len()).unwrap_or(0),
            )
        })
        .collect();
    let name = if ASSIGNORS.contains(&protocol) {
        protocol
    } else {
        "range"
    };
    Ok(assignor::assign(name, &decoded, &partitions))
}

/// A consumer-protocol struct behind its i16 version, as JoinGroup metadata
/// and SyncGroup assignments carry them.
fn encode_versioned<T: Encodable>(value: &T) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    buf.put_i16(CONSUMER_PROTOCOL_VERSION);
    value
        .encode(&mut buf, CONSUMER_PROTOCOL_VERSION)
        .map_err(|e| Error::Protocol(format!("encoding consumer protocol data: {e}")))?;
    Ok(buf.freeze())
}

/// Reads a versioned consumer-protocol struct. Newer versions than this
/// client knows are read as the newest it knows: fields are only ever added
/// at the end.
fn decode_versioned<T: Decodable>(buf: &mut Bytes) -> Result<T> {
    if buf.remaining() < 2 {
        return Err(Error::Protocol(
            "consumer protocol data shorter than its version".into(),
        ));
    }
    let version = buf.get_i16().clamp(0, 3);
    T::decode(buf, version).map_err(|e| Error::Protocol(format!("consumer protocol data: {e}")))
}

fn encode_assignment(partitions: &[TopicPartition]) -> Result<Bytes> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in partitions {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(
        by_topic
            .into_iter()
            .map(|(topic, partitions)| {
                consumer_protocol_assignment::TopicPartition::default()
                    .with_topic(TopicName(str_bytes(topic)))
                    .with_partitions(partitions)
            })
            .collect(),
    );
    encode_versioned(&assignment)
}

fn decode_assignment(mut bytes: Bytes) -> Result<Vec<TopicPartition>> {
    // An empty assignment (no partitions for this member) may be no bytes.
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let assignment: ConsumerProtocolAssignment = decode_versioned(&mut bytes)?;
    Ok(assignment
        .assigned_partitions
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|&p| TopicPartition::new(&t.topic.0, p))
        })
        .collect())
}

/// One heartbeat; the error tells the member to rejoin or find the
/// coordinator again.
pub(crate) async fn heartbeat(cluster: &Cluster, membership: &Membership) -> Result<()> {
    let node = membership
        .coordinator
        .ok_or_else(|| Error::kafka(ErrorCode::CoordinatorNotAvailable.code(), None))?;
    let request = HeartbeatRequest::default()
        .with_group_id(GroupId(str_bytes(&membership.group)))
        .with_generation_id(membership.generation)
        .with_member_id(str_bytes(&membership.member_id))
        .with_group_instance_id(membership.instance_id.as_deref().map(str_bytes));
    let response = cluster
        .send(Route::Coordinator(node), HEARTBEAT_VERSION, &request)
        .await?;
    Error::check(response.error_code, None)
}

/// Leaves the group (a static member stays, as in Kafka).
pub(crate) async fn leave(cluster: &Cluster, membership: &Membership) -> Result<()> {
    let (Some(node), false) = (membership.coordinator, membership.member_id.is_empty()) else {
        return Ok(());
    };
    if membership.instance_id.is_some() {
        return Ok(());
    }
    let conn = cluster.connection(Route::Coordinator(node)).await?;
    let version = conn.version::<LeaveGroupRequest>(LEAVE_GROUP_VERSION)?;
    // v3+ names the leaving members in a list, older versions the one member.
    let request = LeaveGroupRequest::default().with_group_id(GroupId(str_bytes(&membership.group)));
    let request = if version >= 3 {
        request.with_members(vec![
            MemberIdentity::default().with_member_id(str_bytes(&membership.member_id)),
        ])
    } else {
        request.with_member_id(str_bytes(&membership.member_id))
    };
    let response = conn.send_at(version, &request).await?;
    Error::check(response.error_code, None)?;
    for member in &response.members {
        Error::check(member.error_code, None)?;
    }
    Ok(())
}

/// Commits `offsets`; as a member of the current generation when `member`,
/// otherwise as a standalone (assign-mode) committer.
pub(crate) async fn commit(
    cluster: &Cluster,
    membership: &mut Membership,
    member: bool,
    offsets: &BTreeMap<TopicPartition, i64>,
) -> Result<()> {
    if offsets.is_empty() {
        return Ok(());
    }
    let node = coordinator(cluster, membership).await?;
    let mut topics: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
    for (tp, &offset) in offsets {
        topics.entry(&tp.topic).or_default().push(
            OffsetCommitRequestPartition::default()
                .with_partition_index(tp.partition)
                .with_committed_offset(offset)
                .with_committed_leader_epoch(-1),
        );
    }
    let (generation, member_id) = if member {
        (membership.generation, membership.member_id.as_str())
    } else {
        (-1, "")
    };
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(str_bytes(&membership.group)))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(str_bytes(member_id))
        .with_group_instance_id(if member {
            membership.instance_id.as_deref().map(str_bytes)
        } else {
            None
        })
        .with_retention_time_ms(-1)
        .with_topics(
            topics
                .into_iter()
                .map(|(name, partitions)| {
                    OffsetCommitRequestTopic::default()
                        .with_name(TopicName(str_bytes(name)))
                        .with_partitions(partitions)
                })
                .collect(),
        );
    let result = async {
        let version = if membership.consumer_protocol {
            OFFSET_COMMIT_VERSION_KIP848
        } else {
            OFFSET_COMMIT_VERSION
        };
        let response = cluster
            .send(Route::Coordinator(node), version, &request)
            .await?;
        for topic in response.topics {
            for p in topic.partitions {
                Error::check(p.error_code, None)?;
            }
        }
        Ok(())
    }
    .await;
    if let Err(error) = &result {
        check_coordinator(membership, error);
    }
    result
}

/// The committed offsets of `partitions` (`None` where the group has none).
pub(crate) async fn committed(
    cluster: &Cluster,
    membership: &mut Membership,
    partitions: &[TopicPartition],
    require_stable: bool,
) -> Result<BTreeMap<TopicPartition, Option<i64>>> {
    let node = coordinator(cluster, membership).await?;
    let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in partitions {
        topics.entry(&tp.topic).or_default().push(tp.partition);
    }
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(str_bytes(&membership.group)))
        .with_require_stable(require_stable)
        .with_topics(Some(
            topics
                .into_iter()
                .map(|(name, partition_indexes)| {
                    OffsetFetchRequestTopic::default()
                        .with_name(TopicName(str_bytes(name)))
                        .with_partition_indexes(partition_indexes)
                })
                .collect(),
        ));
    let result = async {
        let response = cluster
            .send(Route::Coordinator(node), OFFSET_FETCH_VERSION, &request)
            .await?;
        Error::check(response.error_code, None)?;
        let mut out = BTreeMap::new();
        for topic in response.topics {
            for p in topic.partitions {
                Error::check(p.error_code, None)?;
                let offset = (p.committed_offset >= 0).then_some(p.committed_offset);
                out.insert(
                    TopicPartition::new(&topic.name.0, p.partition_index),
                    offset,
                );
            }
        }
        Ok(out)
    }
    .await;
    if let Err(error) = &result {
        check_coordinator(membership, error);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_round_trip_and_empty_means_none() {
        let partitions = vec![
            TopicPartition::new("a", 0),
            TopicPartition::new("b", 2),
            TopicPartition::new("a", 1),
        ];
        let mut decoded = decode_assignment(encode_assignment(&partitions).unwrap()).unwrap();
        decoded.sort();
        let mut expected = partitions;
        expected.sort();
        assert_eq!(decoded, expected);
        assert!(decode_assignment(Bytes::new()).unwrap().is_empty());
        assert!(decode_assignment(Bytes::from_static(&[0])).is_err());
        assert!(decode_assignment(Bytes::from_static(&[0, 0, 0x7f, 0xff, 0xff, 0xff])).is_err());
    }
}
