//! The consumer protocol on the classic group protocol: subscriptions and
//! assignments in the consumer protocol's format, the leader's assignment
//! with a [`PartitionAssignor`], and offset commits and fetches.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use strom_protocol::messages::kafka::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, GroupId, OffsetCommitRequest,
    OffsetFetchRequest, TopicName, consumer_protocol_assignment,
    offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic},
    offset_fetch_request::OffsetFetchRequestTopic,
};
use strom_protocol::messages::{Decodable, Encodable};

use super::TopicPartition;
use super::assignor::{Assignment, PartitionAssignor, Subscription};
use crate::cluster::{Cluster, Route};
use crate::error::{Error, Result};
use crate::group::{
    self as classic, GroupLeader, GroupSettings, JoinedMember, Membership, Protocol,
    check_coordinator, coordinator, str_bytes,
};

/// v8+ batches groups; one group per request needs no more.
const OFFSET_FETCH_VERSION: i16 = 7;
/// v9+ carries KIP-848 member epochs; a classic member needs v8 at most.
const OFFSET_COMMIT_VERSION: i16 = 8;
const OFFSET_COMMIT_VERSION_KIP848: i16 = 9;

/// The consumer protocol's metadata and assignment versions written: v0 is
/// what every client reads.
const CONSUMER_PROTOCOL_VERSION: i16 = 0;

/// The newest consumer protocol version this client reads (v3 adds the
/// rack id); newer ones are read as it, since fields are only added at
/// the end.
const CONSUMER_PROTOCOL_VERSION_READ: i16 = 3;

/// Joins the group (JoinGroup then SyncGroup) subscribed to `topics`,
/// offering `assignors`, and returns the partitions assigned to this member.
pub(crate) async fn join(
    cluster: &Arc<Cluster>,
    membership: &mut Membership,
    settings: &GroupSettings,
    topics: &BTreeSet<String>,
    assignors: &[Arc<dyn PartitionAssignor>],
) -> Result<Vec<TopicPartition>> {
    let protocols = assignors
        .iter()
        .map(|assignor| {
            let subscription = ConsumerProtocolSubscription::default()
                .with_topics(topics.iter().map(|t| str_bytes(t)).collect())
                .with_user_data(assignor.user_data(topics));
            encode_versioned(&subscription).map(|metadata| Protocol::new(assignor.name(), metadata))
        })
        .collect::<Result<Vec<_>>>()?;
    let leader = ConsumerLeader { cluster, assignors };
    let generation = classic::join(
        cluster, membership, settings, "consumer", &protocols, &leader,
    )
    .await?;
    let assignment = decode_assignment(generation.assignment)?;
    if let Some(assignor) = assignors.iter().find(|a| a.name() == generation.protocol) {
        assignor.on_assignment(&assignment, generation.generation_id);
    }
    Ok(assignment.partitions)
}

/// The leader's work: every member's subscription, the partition counts of
/// their topics, the chosen assignor's answer.
struct ConsumerLeader<'a> {
    cluster: &'a Cluster,
    assignors: &'a [Arc<dyn PartitionAssignor>],
}

impl GroupLeader for ConsumerLeader<'_> {
    fn assign<'a>(
        &'a self,
        protocol: &'a str,
        members: &'a [JoinedMember],
    ) -> BoxFuture<'a, Result<BTreeMap<String, Bytes>>> {
        Box::pin(async move {
            let assignor = self
                .assignors
                .iter()
                .find(|a| a.name() == protocol)
                .ok_or_else(|| {
                    Error::State(format!(
                        "the group chose {protocol:?}, which this member lacks"
                    ))
                })?;
            let mut subscriptions = BTreeMap::new();
            for member in members {
                subscriptions.insert(
                    member.member_id.clone(),
                    decode_subscription(&member.metadata)?,
                );
            }
            let names: Vec<String> = subscriptions
                .values()
                .flat_map(|s| s.topics.iter().cloned())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let topics = self.cluster.fetch_metadata(Some(&names), false).await?;
            let partitions: BTreeMap<String, i32> = topics
                .iter()
                .filter(|t| !t.partitions.is_empty())
                .map(|t| {
                    (
                        t.name.clone(),
                        i32::try_from(t.partitions.len()).unwrap_or(0),
                    )
                })
                .collect();
            let mut assigned = assignor.assign(&partitions, &subscriptions)?;
            // A member the assignor left out gets an encoded empty
            // assignment: other clients may not read zero bytes as one.
            for member in subscriptions.keys() {
                assigned.entry(member.clone()).or_default();
            }
            assigned
                .into_iter()
                .filter(|(member, _)| subscriptions.contains_key(member))
                .map(|(member, assignment)| encode_assignment(&assignment).map(|a| (member, a)))
                .collect()
        })
    }
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
    let version = buf.get_i16();
    if version < 0 {
        return Err(Error::Protocol(format!(
            "consumer protocol data of version {version}"
        )));
    }
    T::decode(buf, version.min(CONSUMER_PROTOCOL_VERSION_READ))
        .map_err(|e| Error::Protocol(format!("consumer protocol data: {e}")))
}

fn decode_subscription(metadata: &Bytes) -> Result<Subscription> {
    let subscription: ConsumerProtocolSubscription = decode_versioned(&mut metadata.clone())?;
    Ok(Subscription {
        topics: subscription
            .topics
            .iter()
            .map(ToString::to_string)
            .collect(),
        user_data: subscription.user_data,
        owned_partitions: subscription
            .owned_partitions
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|&p| TopicPartition::new(&t.topic.0, p))
            })
            .collect(),
    })
}

fn encode_assignment(assignment: &Assignment) -> Result<Bytes> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in &assignment.partitions {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    let encoded = ConsumerProtocolAssignment::default()
        .with_assigned_partitions(
            by_topic
                .into_iter()
                .map(|(topic, partitions)| {
                    consumer_protocol_assignment::TopicPartition::default()
                        .with_topic(TopicName(str_bytes(topic)))
                        .with_partitions(partitions)
                })
                .collect(),
        )
        .with_user_data(assignment.user_data.clone());
    encode_versioned(&encoded)
}

fn decode_assignment(mut bytes: Bytes) -> Result<Assignment> {
    // An empty assignment (no partitions for this member) may be no bytes.
    if bytes.is_empty() {
        return Ok(Assignment::default());
    }
    let assignment: ConsumerProtocolAssignment = decode_versioned(&mut bytes)?;
    Ok(Assignment {
        partitions: assignment
            .assigned_partitions
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|&p| TopicPartition::new(&t.topic.0, p))
            })
            .collect(),
        user_data: assignment.user_data,
    })
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
    fn assignments_round_trip_with_user_data_and_empty_means_none() {
        let partitions = vec![
            TopicPartition::new("a", 0),
            TopicPartition::new("b", 2),
            TopicPartition::new("a", 1),
        ];
        let assignment = Assignment {
            partitions: partitions.clone(),
            user_data: Some(Bytes::from_static(b"tasks")),
        };
        let mut decoded = decode_assignment(encode_assignment(&assignment).unwrap()).unwrap();
        decoded.partitions.sort();
        let mut expected = partitions;
        expected.sort();
        assert_eq!(decoded.partitions, expected);
        assert_eq!(decoded.user_data.as_deref(), Some(&b"tasks"[..]));
        assert_eq!(
            decode_assignment(Bytes::new()).unwrap(),
            Assignment::default()
        );
        assert!(decode_assignment(Bytes::from_static(&[0])).is_err());
        assert!(decode_assignment(Bytes::from_static(&[0, 0, 0x7f, 0xff, 0xff, 0xff])).is_err());
        assert!(decode_assignment(Bytes::from_static(&[0xff, 0xff, 0, 0, 0, 0])).is_err());
    }

    #[test]
    fn subscriptions_keep_user_data_and_read_newer_versions() {
        let written = ConsumerProtocolSubscription::default()
            .with_topics(vec![str_bytes("t"), str_bytes("u")])
            .with_user_data(Some(Bytes::from_static(b"me")));
        let decoded = decode_subscription(&encode_versioned(&written).unwrap()).unwrap();
        assert_eq!(
            decoded.topics,
            BTreeSet::from(["t".to_owned(), "u".to_owned()])
        );
        assert_eq!(decoded.user_data.as_deref(), Some(&b"me"[..]));
        // A v1 subscription (the Java client's cooperative protocol) names
        // the partitions the member owns.
        let mut buf = BytesMut::new();
        buf.put_i16(1);
        written
            .with_owned_partitions(vec![
                strom_protocol::messages::kafka::consumer_protocol_subscription::TopicPartition::default()
                    .with_topic(TopicName(str_bytes("t")))
                    .with_partitions(vec![0, 2]),
            ])
            .encode(&mut buf, 1)
            .unwrap();
        let decoded = decode_subscription(&buf.freeze()).unwrap();
        assert_eq!(
            decoded.owned_partitions,
            [TopicPartition::new("t", 0), TopicPartition::new("t", 2)]
        );
    }
}
