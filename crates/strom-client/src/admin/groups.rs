//! Consumer groups and their offsets: ListGroups, DescribeGroups and
//! ConsumerGroupDescribe (KIP-848), DeleteGroups, OffsetFetch, OffsetCommit,
//! OffsetDelete.

use std::collections::BTreeMap;

use bytes::Bytes;
use strom_protocol::messages::kafka::{
    ConsumerGroupDescribeRequest, ConsumerProtocolAssignment, DeleteGroupsRequest,
    DescribeGroupsRequest, GroupId, ListGroupsRequest, OffsetCommitRequest, OffsetDeleteRequest,
    OffsetFetchRequest, OffsetFetchResponse, consumer_group_describe_response,
    describe_groups_response::DescribedGroup,
    offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic},
    offset_delete_request::{OffsetDeleteRequestPartition, OffsetDeleteRequestTopic},
    offset_fetch_request::{
        OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
    },
};
use strom_protocol::messages::{Decodable, StrBytes};

use crate::consumer::TopicPartition;
use crate::error::{Error, ErrorCode, Result};

use super::Admin;
use super::routing::{
    Dest, Sent, by_topic, epoch, is_coordinator_error, no_answer, str_bytes, topic_name,
};

/// v4 adds the group state, v5 the group type.
const LIST_GROUPS_VERSION: i16 = 5;
/// v6 answers GROUP_ID_NOT_FOUND instead of a "Dead" group.
const DESCRIBE_GROUPS_VERSION: i16 = 6;
const CONSUMER_GROUP_DESCRIBE_VERSION: i16 = 1;
const DELETE_GROUPS_VERSION: i16 = 2;
/// v8 batches groups; v10 would name topics by id only.
const OFFSET_FETCH_VERSION: i16 = 9;
/// v10 names topics by id only.
const OFFSET_COMMIT_VERSION: i16 = 9;
const OFFSET_DELETE_VERSION: i16 = 0;

/// A group as ListGroups names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    /// "consumer" for consumer groups, "" for a group that only commits
    /// offsets.
    pub protocol_type: String,
    /// "Stable", "Empty", ...: `None` before ListGroups v4.
    pub state: Option<String>,
    /// "classic" or "consumer" (KIP-848): `None` before ListGroups v5.
    pub group_type: Option<String>,
}

/// A group as DescribeGroups (classic) or ConsumerGroupDescribe (KIP-848
/// consumer groups) describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    /// "classic" or "consumer".
    pub group_type: String,
    /// "Stable", "PreparingRebalance", "Empty", ...
    pub state: String,
    /// "consumer" for consumer groups.
    pub protocol_type: String,
    /// The chosen assignor ("range", "uniform", ...); empty while a classic
    /// group rebalances.
    pub protocol: String,
    pub members: Vec<MemberDescription>,
    /// The coordinator's broker id.
    pub coordinator: i32,
}

/// A member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    /// Set for static members (`group.instance.id`).
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// The partitions assigned, by topic; empty while a classic group
    /// rebalances or when its protocol is not "consumer".
    pub assignment: BTreeMap<String, Vec<i32>>,
}

/// An offset committed for a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The offset of the next record to consume.
    pub offset: i64,
    pub leader_epoch: Option<i32>,
    pub metadata: String,
}

impl CommittedOffset {
    /// `offset`, without leader epoch or metadata.
    pub fn new(offset: i64) -> Self {
        Self {
            offset,
            leader_epoch: None,
            metadata: String::new(),
        }
    }
}

impl Admin {
    /// Every group of every broker, by id (ListGroups to each broker).
    /// Fails if a broker could not be asked within the timeout.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>> {
        self.list_groups_matching(&[], &[]).await
    }

    /// The groups in one of `states` ("Stable", "Empty", ...) and of one of
    /// `types` ("classic", "consumer"), either filter off when empty, as the
    /// brokers filter them (case-insensitively). [`Error::Unsupported`]
    /// from a broker too old to filter (ListGroups v4 for states, v5 for
    /// types).
    pub async fn list_groups_matching(
        &self,
        states: &[&str],
        types: &[&str],
    ) -> Result<Vec<GroupListing>> {
        let deadline = self.deadline();
        self.retrying(deadline, "listing groups", || self.cluster.maybe_refresh())
            .await?;
        let brokers: Vec<i32> = self.cluster.brokers().iter().map(|b| b.id).collect();
        let answers = self
            .each(
                deadline,
                brokers,
                LIST_GROUPS_VERSION,
                |&id| Dest::Node(id),
                |version, _| {
                    let request = ListGroupsRequest::default();
                    // The filters only where the version has them; the
                    // answer is refused below otherwise.
                    let request = if version >= 4 {
                        request.with_states_filter(states.iter().map(|s| str_bytes(s)).collect())
                    } else {
                        request
                    };
                    if version >= 5 {
                        request.with_types_filter(types.iter().map(|t| str_bytes(t)).collect())
                    } else {
                        request
                    }
                },
                |Sent { version, keys, .. }, response| {
                    let listings = if (version < 4 && !states.is_empty())
                        || (version < 5 && !types.is_empty())
                    {
                        Err(Error::Unsupported(format!(
                            "ListGroups filters (the broker has v{version})"
                        )))
                    } else {
                        Error::check(response.error_code, None).map(|()| {
                            response
                                .groups
                                .into_iter()
                                .map(|g| GroupListing {
                                    group_id: g.group_id.0.to_string(),
                                    protocol_type: g.protocol_type.to_string(),
                                    state: (version >= 4).then(|| g.group_state.to_string()),
                                    group_type: (version >= 5).then(|| g.group_type.to_string()),
                                })
                                .collect::<Vec<_>>()
                        })
                    };
                    keys.iter().map(|&k| (k, listings.clone())).collect()
                },
            )
            .await;
        let mut groups = Vec::new();
        for (_, listings) in answers {
            groups.extend(listings?);
        }
        groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        groups.dedup_by(|a, b| a.group_id == b.group_id);
        Ok(groups)
    }

    /// Describes `groups`: state, protocol, members with their assignments.
    /// Classic groups through DescribeGroups, KIP-848 consumer groups through
    /// ConsumerGroupDescribe. GROUP_ID_NOT_FOUND for a group that does not
    /// exist.
    pub async fn describe_groups(
        &self,
        groups: &[&str],
    ) -> BTreeMap<String, Result<GroupDescription>> {
        let deadline = self.deadline();
        let mut described = self
            .each(
                deadline,
                groups.iter().map(|&g| g.to_owned()),
                DESCRIBE_GROUPS_VERSION,
                |g| Dest::Coordinator(g.clone()),
                |_, keys| {
                    DescribeGroupsRequest::default()
                        .with_groups(keys.iter().map(|g| GroupId(str_bytes(g))).collect())
                },
                |sent, response| {
                    response
                        .groups
                        .into_iter()
                        .map(|g| (g.group_id.0.to_string(), classic_group(g, sent.node)))
                        .collect()
                },
            )
            .await;
        // A group DescribeGroups does not know may be a KIP-848 consumer
        // group, which only ConsumerGroupDescribe describes (the Java
        // client asks in the other order; both ends meet).
        let not_classic: Vec<String> = described
            .iter()
            .filter(|(_, r)| matches!(r, Err(e) if e.code() == Some(ErrorCode::GroupIdNotFound)))
            .map(|(g, _)| g.clone())
            .collect();
        if !not_classic.is_empty() {
            let consumer = self
                .each(
                    deadline,
                    not_classic,
                    CONSUMER_GROUP_DESCRIBE_VERSION,
                    |g| Dest::Coordinator(g.clone()),
                    |_, keys| {
                        ConsumerGroupDescribeRequest::default()
                            .with_group_ids(keys.iter().map(|g| GroupId(str_bytes(g))).collect())
                    },
                    |sent, response| {
                        response
                            .groups
                            .into_iter()
                            .map(|g| (g.group_id.0.to_string(), consumer_group(g, sent.node)))
                            .collect()
                    },
                )
                .await;
            for (group, result) in consumer {
                // Unsupported or not found again: the first answer stands.
                if result.is_ok() {
                    described.insert(group, result);
                }
            }
        }
        described
    }

    /// Deletes `groups` with their committed offsets. NON_EMPTY_GROUP while a
    /// group has members, GROUP_ID_NOT_FOUND for one that does not exist.
    pub async fn delete_groups(&self, groups: &[&str]) -> BTreeMap<String, Result<()>> {
        let deadline = self.deadline();
        self.each(
            deadline,
            groups.iter().map(|&g| g.to_owned()),
            DELETE_GROUPS_VERSION,
            |g| Dest::Coordinator(g.clone()),
            |_, keys| {
                DeleteGroupsRequest::default()
                    .with_groups_names(keys.iter().map(|g| GroupId(str_bytes(g))).collect())
            },
            |_, response| {
                response
                    .results
                    .into_iter()
                    .map(|r| (r.group_id.0.to_string(), Error::check(r.error_code, None)))
                    .collect()
            },
        )
        .await
    }

    /// The offsets `group` committed, for `partitions` (`None`: every
    /// partition it committed for). `None` for a partition without a commit.
    pub async fn list_group_offsets(
        &self,
        group: &str,
        partitions: Option<&[TopicPartition]>,
    ) -> Result<BTreeMap<TopicPartition, Option<CommittedOffset>>> {
        let deadline = self.deadline();
        let topics: Option<BTreeMap<&str, Vec<i32>>> =
            partitions.map(|ps| by_topic(ps, |p| p.partition));
        let mut answers = self
            .each(
                deadline,
                [group.to_owned()],
                OFFSET_FETCH_VERSION,
                |g| Dest::Coordinator(g.clone()),
                |version, keys| offset_fetch_request(version, keys, topics.as_ref()),
                |Sent { version, keys, .. }, response| offset_fetch_answer(version, keys, response),
            )
            .await;
        answers
            .remove(group)
            .unwrap_or_else(|| Err(no_answer(group)))
    }

    /// Commits `offsets` for `group`, as Kafka's admin client does: outside
    /// any generation (generation -1, no member id), so only while the
    /// group has no members (UNKNOWN_MEMBER_ID otherwise, per partition).
    pub async fn alter_group_offsets(
        &self,
        group: &str,
        offsets: &BTreeMap<TopicPartition, CommittedOffset>,
    ) -> Result<BTreeMap<TopicPartition, Result<()>>> {
        let deadline = self.deadline();
        let keys: Vec<TopicPartition> = offsets.keys().cloned().collect();
        let topics = by_topic(&keys, |tp| tp);
        let mut answers = self
            .each(
                deadline,
                [group.to_owned()],
                OFFSET_COMMIT_VERSION,
                |g| Dest::Coordinator(g.clone()),
                |_, groups| {
                    OffsetCommitRequest::default()
                        .with_group_id(GroupId(str_bytes(
                            groups.first().map_or("", String::as_str),
                        )))
                        .with_generation_id_or_member_epoch(-1)
                        .with_member_id(StrBytes::default())
                        .with_topics(
                            topics
                                .iter()
                                .map(|(topic, partitions)| {
                                    OffsetCommitRequestTopic::default()
                                        .with_name(topic_name(topic))
                                        .with_partitions(
                                            partitions
                                                .iter()
                                                .filter_map(|&tp| Some((tp, offsets.get(tp)?)))
                                                .map(|(tp, o)| {
                                                    OffsetCommitRequestPartition::default()
                                                        .with_partition_index(tp.partition)
                                                        .with_committed_offset(o.offset)
                                                        .with_committed_leader_epoch(
                                                            o.leader_epoch.unwrap_or(-1),
                                                        )
                                                        .with_committed_metadata(Some(str_bytes(
                                                            &o.metadata,
                                                        )))
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        )
                },
                |Sent { keys: groups, .. }, response| {
                    let partitions = response.topics.into_iter().flat_map(|t| {
                        let topic = t.name.0.to_string();
                        t.partitions.into_iter().map(move |p| {
                            (TopicPartition::new(&topic, p.partition_index), p.error_code)
                        })
                    });
                    let result = partition_results(partitions);
                    groups
                        .first()
                        .map(|g| (g.clone(), result))
                        .into_iter()
                        .collect()
                },
            )
            .await;
        answers
            .remove(group)
            .unwrap_or_else(|| Err(no_answer(group)))
    }

    /// Deletes the offsets `group` committed for `partitions` (OffsetDelete,
    /// KIP-496). GROUP_SUBSCRIBED_TO_TOPIC for a partition of a topic the
    /// group's members consume; GROUP_ID_NOT_FOUND for the group.
    pub async fn delete_group_offsets(
        &self,
        group: &str,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, Result<()>>> {
        let deadline = self.deadline();
        let topics = by_topic(partitions, |tp| tp.partition);
        let mut answers = self
            .each(
                deadline,
                [group.to_owned()],
                OFFSET_DELETE_VERSION,
                |g| Dest::Coordinator(g.clone()),
                |_, groups| {
                    OffsetDeleteRequest::default()
                        .with_group_id(GroupId(str_bytes(
                            groups.first().map_or("", String::as_str),
                        )))
                        .with_topics(
                            topics
                                .iter()
                                .map(|(topic, partitions)| {
                                    OffsetDeleteRequestTopic::default()
                                        .with_name(topic_name(topic))
                                        .with_partitions(
                                            partitions
                                                .iter()
                                                .map(|&p| {
                                                    OffsetDeleteRequestPartition::default()
                                                        .with_partition_index(p)
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        )
                },
                |Sent { keys: groups, .. }, response| {
                    let result = Error::check(response.error_code, None).and_then(|()| {
                        partition_results(response.topics.into_iter().flat_map(|t| {
                            let topic = t.name.0.to_string();
                            t.partitions.into_iter().map(move |p| {
                                (TopicPartition::new(&topic, p.partition_index), p.error_code)
                            })
                        }))
                    });
                    groups
                        .first()
                        .map(|g| (g.clone(), result))
                        .into_iter()
                        .collect()
                },
            )
            .await;
        answers
            .remove(group)
            .unwrap_or_else(|| Err(no_answer(group)))
    }
}

/// OffsetFetch for `groups` (one before v8), for `topics` or all.
fn offset_fetch_request(
    version: i16,
    groups: &[String],
    topics: Option<&BTreeMap<&str, Vec<i32>>>,
) -> OffsetFetchRequest {
    if version >= 8 {
        OffsetFetchRequest::default().with_groups(
            groups
                .iter()
                .map(|g| {
                    OffsetFetchRequestGroup::default()
                        .with_group_id(GroupId(str_bytes(g)))
                        .with_topics(topics.map(|topics| {
                            topics
                                .iter()
                                .map(|(topic, partitions)| {
                                    OffsetFetchRequestTopics::default()
                                        .with_name(topic_name(topic))
                                        .with_partition_indexes(partitions.clone())
                                })
                                .collect()
                        }))
                })
                .collect(),
        )
    } else {
        OffsetFetchRequest::default()
            .with_group_id(GroupId(str_bytes(
                groups.first().map_or("", String::as_str),
            )))
            .with_topics(topics.map(|topics| {
                topics
                    .iter()
                    .map(|(topic, partitions)| {
                        OffsetFetchRequestTopic::default()
                            .with_name(topic_name(topic))
                            .with_partition_indexes(partitions.clone())
                    })
                    .collect()
            }))
    }
}

/// A group's committed offsets; `None` for a partition without a commit.
type GroupOffsets = BTreeMap<TopicPartition, Option<CommittedOffset>>;

/// Each group's committed offsets from an OffsetFetch answer: v8+ answers
/// per group, older versions for the one group asked.
fn offset_fetch_answer(
    version: i16,
    groups: &[String],
    response: OffsetFetchResponse,
) -> Vec<(String, Result<GroupOffsets>)> {
    let committed = |offset, leader_epoch, metadata: Option<StrBytes>| CommittedOffset {
        offset,
        leader_epoch: epoch(leader_epoch),
        metadata: metadata.map(|m| m.to_string()).unwrap_or_default(),
    };
    if version >= 8 {
        response
            .groups
            .into_iter()
            .map(|g| {
                let partitions = g.topics.into_iter().flat_map(|t| {
                    let topic = t.name.0.to_string();
                    t.partitions.into_iter().map(move |p| {
                        let tp = TopicPartition::new(&topic, p.partition_index);
                        let offset =
                            committed(p.committed_offset, p.committed_leader_epoch, p.metadata);
                        (tp, p.error_code, offset)
                    })
                });
                let result =
                    Error::check(g.error_code, None).and_then(|()| committed_offsets(partitions));
                (g.group_id.0.to_string(), result)
            })
            .collect()
    } else {
        let partitions = response.topics.into_iter().flat_map(|t| {
            let topic = t.name.0.to_string();
            t.partitions.into_iter().map(move |p| {
                let tp = TopicPartition::new(&topic, p.partition_index);
                let offset = committed(p.committed_offset, p.committed_leader_epoch, p.metadata);
                (tp, p.error_code, offset)
            })
        });
        let result =
            Error::check(response.error_code, None).and_then(|()| committed_offsets(partitions));
        groups
            .first()
            .map(|g| (g.clone(), result))
            .into_iter()
            .collect()
    }
}

/// A group's committed offsets from OffsetFetch's partitions: a partition
/// without a commit is `None`, an unknown one is left out (as the Java
/// client does), a coordinator error is the group's, and any other error
/// fails the group.
fn committed_offsets(
    partitions: impl Iterator<Item = (TopicPartition, i16, CommittedOffset)>,
) -> Result<BTreeMap<TopicPartition, Option<CommittedOffset>>> {
    let mut offsets = BTreeMap::new();
    for (tp, code, offset) in partitions {
        if code == ErrorCode::UnknownTopicOrPartition.code() {
            continue;
        }
        Error::check(code, None)?;
        offsets.insert(tp, (offset.offset >= 0).then_some(offset));
    }
    Ok(offsets)
}

/// Per-partition results of a group request; a coordinator error on any
/// partition is the group's (so that the request is retried).
fn partition_results(
    partitions: impl Iterator<Item = (TopicPartition, i16)>,
) -> Result<BTreeMap<TopicPartition, Result<()>>> {
    let mut results = BTreeMap::new();
    for (tp, code) in partitions {
        if is_coordinator_error(code) {
            return Err(Error::kafka(code, None));
        }
        results.insert(tp, Error::check(code, None));
    }
    Ok(results)
}

/// A classic group from DescribeGroups. A "Dead" group (how versions before
/// v6 say "no such group") is GROUP_ID_NOT_FOUND.
fn classic_group(g: DescribedGroup, coordinator: i32) -> Result<GroupDescription> {
    let group_id = g.group_id.0.to_string();
    Error::check(g.error_code, g.error_message.as_deref())?;
    if g.group_state.as_str() == "Dead" {
        return Err(Error::kafka(
            ErrorCode::GroupIdNotFound.code(),
            Some(&format!("group {group_id} does not exist")),
        ));
    }
    let consumer = g.protocol_type.as_str() == "consumer";
    let members = g
        .members
        .into_iter()
        .map(|m| {
            let assignment = if consumer {
                decode_assignment(&m.member_assignment)?
            } else {
                BTreeMap::new()
            };
            Ok(MemberDescription {
                member_id: m.member_id.to_string(),
                group_instance_id: m.group_instance_id.map(|i| i.to_string()),
                client_id: m.client_id.to_string(),
                client_host: m.client_host.to_string(),
                assignment,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(GroupDescription {
        group_id,
        group_type: "classic".to_owned(),
        state: g.group_state.to_string(),
        protocol_type: g.protocol_type.to_string(),
        protocol: g.protocol_data.to_string(),
        members,
        coordinator,
    })
}

/// A KIP-848 consumer group from ConsumerGroupDescribe.
fn consumer_group(
    g: consumer_group_describe_response::DescribedGroup,
    coordinator: i32,
) -> Result<GroupDescription> {
    Error::check(g.error_code, g.error_message.as_deref())?;
    let members = g
        .members
        .into_iter()
        .map(|m| {
            let mut assignment: BTreeMap<String, Vec<i32>> = BTreeMap::new();
            for t in m.assignment.topic_partitions {
                let partitions = assignment.entry(t.topic_name.0.to_string()).or_default();
                partitions.extend(t.partitions);
                partitions.sort_unstable();
            }
            MemberDescription {
                member_id: m.member_id.to_string(),
                group_instance_id: m.instance_id.map(|i| i.to_string()),
                client_id: m.client_id.to_string(),
                client_host: m.client_host.to_string(),
                assignment,
            }
        })
        .collect();
    Ok(GroupDescription {
        group_id: g.group_id.0.to_string(),
        group_type: "consumer".to_owned(),
        state: g.group_state.to_string(),
        protocol_type: "consumer".to_owned(),
        protocol: g.assignor_name.to_string(),
        members,
        coordinator,
    })
}

/// The partitions of a consumer protocol assignment (an i16 version, then
/// the versioned body); empty bytes are an empty assignment.
fn decode_assignment(bytes: &Bytes) -> Result<BTreeMap<String, Vec<i32>>> {
    if bytes.is_empty() {
        return Ok(BTreeMap::new());
    }
    let version = bytes
        .get(..2)
        .map(|v| i16::from_be_bytes([v[0], v[1]]))
        .ok_or_else(|| Error::Protocol("a 1-byte consumer assignment".to_owned()))?;
    let mut body = bytes.slice(2..);
    // Newer versions keep the older fields first: read as the newest known.
    let assignment = ConsumerProtocolAssignment::decode(&mut body, version.clamp(0, 3))
        .map_err(|e| Error::Protocol(format!("consumer assignment v{version}: {e}")))?;
    let mut topics: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for t in assignment.assigned_partitions {
        let partitions = topics.entry(t.topic.0.to_string()).or_default();
        partitions.extend(t.partitions);
        partitions.sort_unstable();
    }
    Ok(topics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::routing::{unknown_topic, worth_retrying};
    use strom_protocol::messages::Encodable;
    use strom_protocol::messages::kafka::consumer_protocol_assignment::TopicPartition as Assigned;
    #[test]
    fn assignments_decode_from_the_consumer_protocol() {
        let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
            Assigned::default()
                .with_topic(topic_name("b"))
                .with_partitions(vec![2, 0]),
            Assigned::default()
                .with_topic(topic_name("a"))
                .with_partitions(vec![1]),
        ]);
        let mut bytes = 1i16.to_be_bytes().to_vec();
        assignment.encode(&mut bytes, 1).unwrap();
        let decoded = decode_assignment(&Bytes::from(bytes)).unwrap();
        assert_eq!(
            decoded,
            BTreeMap::from([("a".to_owned(), vec![1]), ("b".to_owned(), vec![0, 2])])
        );
        assert!(decode_assignment(&Bytes::new()).unwrap().is_empty());
        assert!(decode_assignment(&Bytes::from_static(&[0])).is_err());
        assert!(decode_assignment(&Bytes::from_static(&[0, 1, 0, 0, 0, 9])).is_err());
    }

    #[test]
    fn unknown_topics_are_final_and_coordinator_errors_are_the_groups() {
        assert!(!worth_retrying(&unknown_topic("t")));
        assert!(worth_retrying(&Error::kafka(
            ErrorCode::NotController.code(),
            None
        )));
        let partitions = [
            (TopicPartition::new("t", 0), 0),
            (
                TopicPartition::new("t", 1),
                ErrorCode::UnknownMemberId.code(),
            ),
        ];
        let results = partition_results(partitions.clone().into_iter()).unwrap();
        assert!(results[&TopicPartition::new("t", 0)].is_ok());
        assert_eq!(
            results[&TopicPartition::new("t", 1)]
                .as_ref()
                .unwrap_err()
                .code(),
            Some(ErrorCode::UnknownMemberId)
        );
        let moved = [(
            TopicPartition::new("t", 0),
            ErrorCode::NotCoordinator.code(),
        )];
        assert_eq!(
            partition_results(moved.into_iter()).unwrap_err().code(),
            Some(ErrorCode::NotCoordinator)
        );
    }
}
