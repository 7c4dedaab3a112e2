//! The group APIs: FindCoordinator, the classic group protocol (JoinGroup,
//! SyncGroup, Heartbeat, LeaveGroup), KIP-848 (ConsumerGroupHeartbeat,
//! ConsumerGroupDescribe), offsets (OffsetCommit, OffsetFetch,
//! OffsetDelete) and group administration (DescribeGroups, ListGroups,
//! DeleteGroups).
//!
//! Each handler checks what the request says, finds the group's shard (the
//! coordinator's state of the group's partition of `__consumer_offsets`),
//! lets its state machine decide, and maps its answer onto the version asked
//! for (fields a version does not have stay at their defaults).
//!
//! Creating `__consumer_offsets` lives here, not in the coordinator: it
//! needs the controller, and the coordinator only ever sees the partitions
//! the metadata publisher hands it ([`crate::group::GroupCoordinator::sync`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use strom_controller::MetadataImage;
use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::StrBytes;
use strom_protocol::messages::kafka::{BrokerId, GroupId, TopicName};
use strom_protocol::messages::kafka::{
    consumer_group_describe_request::ConsumerGroupDescribeRequest,
    consumer_group_describe_response::{self as cgd, ConsumerGroupDescribeResponse},
    consumer_group_heartbeat_request::ConsumerGroupHeartbeatRequest,
    consumer_group_heartbeat_response::{self as cgh, ConsumerGroupHeartbeatResponse},
    delete_groups_request::DeleteGroupsRequest,
    delete_groups_response::{DeletableGroupResult, DeleteGroupsResponse},
    describe_groups_request::DescribeGroupsRequest,
    describe_groups_response::{DescribeGroupsResponse, DescribedGroup, DescribedGroupMember},
    find_coordinator_request::FindCoordinatorRequest,
    find_coordinator_response::{Coordinator, FindCoordinatorResponse},
    heartbeat_request::HeartbeatRequest,
    heartbeat_response::HeartbeatResponse,
    join_group_request::JoinGroupRequest,
    join_group_response::{JoinGroupResponse, JoinGroupResponseMember},
    leave_group_request::LeaveGroupRequest,
    leave_group_response::{LeaveGroupResponse, MemberResponse},
    list_groups_request::ListGroupsRequest,
    list_groups_response::{ListGroupsResponse, ListedGroup},
    offset_commit_request::OffsetCommitRequest,
    offset_commit_response::{
        OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
    },
    offset_delete_request::OffsetDeleteRequest,
    offset_delete_response::{
        OffsetDeleteResponse, OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
    },
    offset_fetch_request::{OffsetFetchRequest, OffsetFetchRequestGroup},
    offset_fetch_response::{
        OffsetFetchResponse, OffsetFetchResponseGroup, OffsetFetchResponsePartition,
        OffsetFetchResponsePartitions, OffsetFetchResponseTopic, OffsetFetchResponseTopics,
    },
    sync_group_request::SyncGroupRequest,
    sync_group_response::SyncGroupResponse,
};

use super::RequestContext;
use crate::broker::Broker;
use crate::group::classic::{JoinRequest, JoinResult, Outbox, Reply, SyncResult};
use crate::group::consumer::{self, Partitions};
use crate::group::store::{OFFSETS_TOPIC, OffsetValue, Record};
use crate::group::{Group, GroupShard, GroupState, offsets_partition};
use crate::metrics::Purgatory;

/// FindCoordinator key types.
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

/// A coordinator (node, host, port), or why there is none.
type Lookup = Result<(i32, String, i32), (ErrorCode, String)>;
/// Committed offsets by topic: (partition, offset, leader epoch, metadata).
type Committed = Vec<(String, Vec<(i32, i64, i32, String)>)>;

fn s(text: impl Into<String>) -> StrBytes {
    StrBytes::from_string(text.into())
}

fn opt(text: Option<&StrBytes>) -> Option<String> {
    text.map(|t| t.to_string())
}

/// Kafka's client host: the Java `InetAddress` form.
fn client_host(peer: SocketAddr) -> String {
    format!("/{}", peer.ip())
}

fn client_id(client: Option<&StrBytes>) -> String {
    client.map(|c| c.to_string()).unwrap_or_default()
}

/// Waits for a parked reply (counted in the rebalance purgatory): `gone`
/// when the group dropped it, `unloaded` when the shard was unloaded (this
/// broker no longer coordinates the group).
async fn wait<T>(broker: &Broker, shard: &GroupShard, reply: Reply<T>, gone: T, unloaded: T) -> T {
    match reply {
        Reply::Now(r) => r,
        Reply::Later(rx) => {
            let _parked = broker.metrics.enter_purgatory(Purgatory::Rebalance);
            shard.wait(rx, gone, unloaded).await
        }
    }
}

/// The shard of `group_id` for a request that writes: `__consumer_offsets`
/// is created first when it does not exist yet.
pub(crate) async fn group_shard(
    broker: &Arc<Broker>,
    group_id: &str,
) -> Result<Arc<GroupShard>, ErrorCode> {
    if group_id.is_empty() {
        return Err(ErrorCode::InvalidGroupId);
    }
    if broker.image().topic(OFFSETS_TOPIC).is_none() {
        let broker_for_task = Arc::clone(broker);
        super::blocking(move || ensure_offsets_topic(&broker_for_task))
            .await
            .unwrap_or(Err(ErrorCode::UnknownServerError))?;
    }
    route(broker, group_id).await
}

/// The shard of `group_id` for a request that only reads, or `None` while
/// `__consumer_offsets` does not exist (no group has anything stored: the
/// request is answered as for an unknown group).
async fn find_shard(
    broker: &Arc<Broker>,
    group_id: &str,
) -> Result<Option<Arc<GroupShard>>, ErrorCode> {
    if group_id.is_empty() {
        return Err(ErrorCode::InvalidGroupId);
    }
    if broker.image().topic(OFFSETS_TOPIC).is_none() {
        return Ok(None);
    }
    route(broker, group_id).await.map(Some)
}

/// Reads group `group_id` under its shard's lock: `read` gets the group, or
/// `None` when there is none (or no offsets topic yet).
async fn read_group<R>(
    broker: &Arc<Broker>,
    group_id: &str,
    read: impl FnOnce(Option<&Group>) -> R,
) -> Result<R, ErrorCode> {
    let shard = find_shard(broker, group_id).await?;
    let state = match &shard {
        Some(shard) => Some(shard.lock().await),
        None => None,
    };
    Ok(read(
        state.as_ref().and_then(|state| state.groups.get(group_id)),
    ))
}

/// The coordinator's shard of `group_id`. A request can come between a
/// change of the offsets topic (another request just created it) and the
/// publisher's loading of the shards; rather than bounce it with an error
/// the coordinator would not give a moment later, it waits for the
/// publisher to have applied the current image, and is routed again.
async fn route(broker: &Arc<Broker>, group_id: &str) -> Result<Arc<GroupShard>, ErrorCode> {
    match broker.groups.shard_for(&broker.image(), group_id) {
        Err(ErrorCode::NotCoordinator | ErrorCode::CoordinatorLoadInProgress) => {
            broker.await_metadata().await;
            broker.groups.shard_for(&broker.image(), group_id)
        }
        other => other,
    }
}

/// Creates `__consumer_offsets` if it is missing (Kafka does so on the first
/// FindCoordinator or commit), opens its local partitions and loads the
/// coordinator's shards of those this broker leads; returns the image that
/// has the topic. Blocking.
fn ensure_offsets_topic(broker: &Broker) -> Result<Arc<MetadataImage>, ErrorCode> {
    super::ensure_internal_topic(broker, OFFSETS_TOPIC, |brokers| {
        broker.groups.config.offsets_topic_request(brokers)
    })
}

/// The leader of `group_id`'s partition of the offsets topic, creating the
/// topic when it does not exist yet (FindCoordinator, AddOffsetsToTxn).
/// Blocking.
pub(crate) fn coordinator_for(broker: &Broker, group_id: &str) -> Result<i32, ErrorCode> {
    let image = ensure_offsets_topic(broker)?;
    let (_, partition) =
        offsets_partition(&image, group_id).ok_or(ErrorCode::CoordinatorNotAvailable)?;
    if partition.leader < 0 {
        return Err(ErrorCode::CoordinatorNotAvailable);
    }
    Ok(partition.leader)
}

/// Runs a group change (lock, state machine, append, replies) in a tracked
/// task, so that a request cut short (its client gone, the broker stopping)
/// never leaves it half done; shutdown waits for it.
async fn critical<T: Send + 'static>(
    broker: &Arc<Broker>,
    change: impl Future<Output = T> + Send + 'static,
) -> Option<T> {
    match broker.tasks.spawn(change).await {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(error = %e, "a group change failed");
            None
        }
    }
}

/// Persists the group after a change made under `state`, then delivers the
/// replies it parked. When the group cannot be written, an assignment being
/// handed out is not: its members get the error and rebalance again, as in
/// Kafka.
async fn finish(
    broker: &Broker,
    shard: &GroupShard,
    state: &mut GroupState,
    group_id: &str,
    mut out: Outbox,
) {
    let coordinator = &broker.groups;
    if out.persist {
        let record = state.group_record(group_id, &coordinator.config);
        if let Err(e) = shard.persist(vec![record]).await {
            tracing::warn!(group = %group_id, error = ?e, "could not persist a group change; rebalancing");
            out.fail_syncs(ErrorCode::CoordinatorNotAvailable);
            if let Some(Group::Classic(group)) = state.groups.get_mut(group_id) {
                group.rebalance_after_failed_write(
                    broker.clock.now_ms(),
                    &coordinator.config,
                    &mut out,
                );
            }
        }
    }
    out.deliver();
}

// ---------------------------------------------------------------- FindCoordinator

pub async fn find_coordinator(
    broker: &Arc<Broker>,
    req: FindCoordinatorRequest,
    ctx: &RequestContext<'_>,
) -> FindCoordinatorResponse {
    let version = ctx.api_version();
    let keys: Vec<String> = if version >= 4 {
        req.coordinator_keys.iter().map(|k| k.to_string()).collect()
    } else {
        vec![req.key.to_string()]
    };
    let key_type = req.key_type;
    let broker_for_task = Arc::clone(broker);
    let found: Vec<(String, Lookup)> = super::blocking(move || {
        keys.into_iter()
            .map(|key| {
                let found = match key_type {
                    KEY_TYPE_GROUP => Ok(coordinator_for(&broker_for_task, &key)),
                    KEY_TYPE_TRANSACTION => Ok(super::txn::coordinator_for(&broker_for_task, &key)),
                    other => Err((
                        ErrorCode::InvalidRequest,
                        format!("Unknown coordinator type {other}."),
                    )),
                };
                let unavailable = "The coordinator is not available.";
                let answer = found.and_then(|node| {
                    node.map_err(|e| (e, unavailable.to_owned()))
                        .and_then(|node| {
                            endpoint(&broker_for_task, node)
                                .ok_or((ErrorCode::CoordinatorNotAvailable, unavailable.to_owned()))
                        })
                });
                (key, answer)
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    let mut response = FindCoordinatorResponse::default();
    if version >= 4 {
        response.coordinators = found
            .into_iter()
            .map(|(key, answer)| {
                let mut c = Coordinator::default();
                c.key = s(key);
                match answer {
                    Ok((node, host, port)) => {
                        c.node_id = BrokerId(node);
                        c.host = s(host);
                        c.port = port;
                    }
                    Err((code, message)) => {
                        c.node_id = BrokerId(-1);
                        c.port = -1;
                        c.error_code = code as i16;
                        c.error_message = Some(s(message));
                    }
                }
                c
            })
            .collect();
        return response;
    }
    match found.into_iter().next().map(|(_, a)| a) {
        Some(Ok((node, host, port))) => {
            response.node_id = BrokerId(node);
            response.host = s(host);
            response.port = port;
            if version >= 1 {
                response.error_message = Some(s("NONE"));
            }
        }
        Some(Err((code, message))) => {
            response.error_code = code as i16;
            response.node_id = BrokerId(-1);
            response.port = -1;
            if version >= 1 {
                response.error_message = Some(s(message));
            }
        }
        None => {
            response.error_code = ErrorCode::CoordinatorNotAvailable as i16;
            response.node_id = BrokerId(-1);
            response.port = -1;
        }
    }
    response
}

fn endpoint(broker: &Broker, node: i32) -> Option<(i32, String, i32)> {
    if node == broker.node_id {
        return Some((
            node,
            broker.advertised_host.clone(),
            i32::from(broker.advertised_port),
        ));
    }
    let image = broker.image();
    let b = image.brokers.get(&node)?;
    Some((node, b.host.clone(), i32::from(b.port)))
}

// ---------------------------------------------------------------- classic protocol

fn join_response(result: JoinResult, version: i16) -> JoinGroupResponse {
    let mut r = JoinGroupResponse::default();
    r.error_code = result.error as i16;
    r.generation_id = result.generation;
    if version >= 7 {
        r.protocol_type = result.protocol_type.map(s);
    }
    r.protocol_name = if version >= 7 {
        result.protocol_name.map(s)
    } else {
        Some(s(result.protocol_name.unwrap_or_default()))
    };
    r.leader = s(result.leader);
    if version >= 9 {
        r.skip_assignment = result.skip_assignment;
    }
    r.member_id = s(result.member_id);
    r.members = result
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            let mut m = JoinGroupResponseMember::default();
            m.member_id = s(id);
            if version >= 5 {
                m.group_instance_id = instance.map(s);
            }
            m.metadata = metadata;
            m
        })
        .collect();
    r
}

pub async fn join_group(
    broker: &Arc<Broker>,
    req: JoinGroupRequest,
    ctx: &RequestContext<'_>,
) -> JoinGroupResponse {
    let version = ctx.api_version();
    let group_id = req.group_id.to_string();
    let member_id = req.member_id.to_string();
    let fail = |code: ErrorCode| join_response(JoinResult::error(code, &member_id), version);
    let shard = match group_shard(broker, &group_id).await {
        Ok(shard) => shard,
        Err(code) => return fail(code),
    };
    let config = &broker.groups.config;
    if req.session_timeout_ms < config.min_session_timeout_ms
        || req.session_timeout_ms > config.max_session_timeout_ms
    {
        return fail(ErrorCode::InvalidSessionTimeout);
    }
    if req.protocol_type.is_empty() || req.protocols.is_empty() {
        return fail(ErrorCode::InconsistentGroupProtocol);
    }
    let request = JoinRequest {
        member_id: member_id.clone(),
        instance_id: if version >= 5 {
            opt(req.group_instance_id.as_ref())
        } else {
            None
        },
        client_id: client_id(ctx.client_id()),
        client_host: client_host(ctx.peer()),
        session_timeout_ms: req.session_timeout_ms,
        // Version 0 has no rebalance timeout: the session timeout is it.
        rebalance_timeout_ms: if version >= 1 {
            req.rebalance_timeout_ms
        } else {
            req.session_timeout_ms
        },
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let broker_for_task = Arc::clone(broker);
    let shard_for_task = Arc::clone(&shard);
    let reply = critical(broker, async move {
        let broker = &broker_for_task;
        let shard = &shard_for_task;
        let config = &broker.groups.config;
        let mut state = shard.lock().await;
        let now = broker.clock.now_ms();
        let existed = state.groups.contains_key(&group_id);
        let Some(group) = state.classic_or_create(&group_id, now) else {
            return Reply::Now(JoinResult::error(
                ErrorCode::InconsistentGroupProtocol,
                &request.member_id,
            ));
        };
        let mut out = Outbox::default();
        let reply = group.join(request, now, config, &mut out);
        let unused = !existed
            && group.is_empty()
            && matches!(&reply, Reply::Now(r) if r.error != ErrorCode::MemberIdRequired);
        if unused && !state.offsets.contains_key(&group_id) {
            state.groups.remove(&group_id);
        }
        finish(broker, shard, &mut state, &group_id, out).await;
        reply
    })
    .await
    .unwrap_or(Reply::Now(JoinResult::error(
        ErrorCode::CoordinatorNotAvailable,
        &member_id,
    )));
    let result = wait(
        broker,
        &shard,
        reply,
        JoinResult::error(ErrorCode::UnknownMemberId, &member_id),
        JoinResult::error(ErrorCode::NotCoordinator, &member_id),
    )
    .await;
    join_response(result, version)
}

fn sync_response(result: SyncResult, version: i16) -> SyncGroupResponse {
    let mut r = SyncGroupResponse::default();
    r.error_code = result.error as i16;
    if version >= 5 {
        r.protocol_type = result.protocol_type.map(s);
        r.protocol_name = result.protocol_name.map(s);
    }
    r.assignment = result.assignment;
    r
}

pub async fn sync_group(
    broker: &Arc<Broker>,
    req: SyncGroupRequest,
    ctx: &RequestContext<'_>,
) -> SyncGroupResponse {
    let version = ctx.api_version();
    let group_id = req.group_id.to_string();
    let shard = match find_shard(broker, &group_id).await {
        Ok(Some(shard)) => shard,
        // No offsets topic: no group, so no member.
        Ok(None) => return sync_response(SyncResult::error(ErrorCode::UnknownMemberId), version),
        Err(code) => return sync_response(SyncResult::error(code), version),
    };
    let member_id = req.member_id.to_string();
    let instance_id = if version >= 3 {
        opt(req.group_instance_id.as_ref())
    } else {
        None
    };
    let (protocol_type, protocol_name) = if version >= 5 {
        (
            opt(req.protocol_type.as_ref()),
            opt(req.protocol_name.as_ref()),
        )
    } else {
        (None, None)
    };
    let generation = req.generation_id;
    let assignments: Vec<(String, Bytes)> = req
        .assignments
        .iter()
        .map(|a| (a.member_id.to_string(), a.assignment.clone()))
        .collect();
    let broker_for_task = Arc::clone(broker);
    let shard_for_task = Arc::clone(&shard);
    let reply = critical(broker, async move {
        let broker = &broker_for_task;
        let shard = &shard_for_task;
        let mut state = shard.lock().await;
        let now = broker.clock.now_ms();
        let Some(Group::Classic(group)) = state.groups.get_mut(&group_id) else {
            return Reply::Now(SyncResult::error(ErrorCode::UnknownMemberId));
        };
        let mut out = Outbox::default();
        let reply = group.sync(
            &member_id,
            instance_id.as_deref(),
            generation,
            protocol_type.as_deref(),
            protocol_name.as_deref(),
            assignments,
            now,
            &mut out,
        );
        finish(broker, shard, &mut state, &group_id, out).await;
        reply
    })
    .await
    .unwrap_or(Reply::Now(SyncResult::error(
        ErrorCode::CoordinatorNotAvailable,
    )));
    sync_response(
        wait(
            broker,
            &shard,
            reply,
            SyncResult::error(ErrorCode::UnknownMemberId),
            SyncResult::error(ErrorCode::NotCoordinator),
        )
        .await,
        version,
    )
}

pub async fn heartbeat(
    broker: &Arc<Broker>,
    req: HeartbeatRequest,
    ctx: &RequestContext<'_>,
) -> HeartbeatResponse {
    let version = ctx.api_version();
    let group_id = req.group_id.to_string();
    let mut response = HeartbeatResponse::default();
    let shard = match find_shard(broker, &group_id).await {
        Ok(Some(shard)) => shard,
        Ok(None) => {
            response.error_code = ErrorCode::UnknownMemberId as i16;
            return response;
        }
        Err(code) => {
            response.error_code = code as i16;
            return response;
        }
    };
    let instance_id = if version >= 3 {
        opt(req.group_instance_id.as_ref())
    } else {
        None
    };
    let mut state = shard.lock().await;
    let now = broker.clock.now_ms();
    let code = match state.groups.get_mut(&group_id) {
        Some(Group::Classic(group)) => group.heartbeat(
            &req.member_id,
            instance_id.as_deref(),
            req.generation_id,
            now,
        ),
        _ => ErrorCode::UnknownMemberId,
    };
    response.error_code = code as i16;
    response
}

pub async fn leave_group(
    broker: &Arc<Broker>,
    req: LeaveGroupRequest,
    ctx: &RequestContext<'_>,
) -> LeaveGroupResponse {
    let version = ctx.api_version();
    let group_id = req.group_id.to_string();
    let mut response = LeaveGroupResponse::default();
    let shard = match find_shard(broker, &group_id).await {
        Ok(shard) => shard,
        Err(code) => {
            response.error_code = code as i16;
            return response;
        }
    };
    let leaving: Vec<(String, Option<String>)> = if version >= 3 {
        req.members
            .iter()
            .map(|m| (m.member_id.to_string(), opt(m.group_instance_id.as_ref())))
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    let coordinator = &broker.groups;
    let Some(shard) = shard else {
        return unknown_leavers(response, leaving, version);
    };
    let mut state = shard.lock().await;
    let now = broker.clock.now_ms();
    let Some(Group::Classic(group)) = state.groups.get_mut(&group_id) else {
        return unknown_leavers(response, leaving, version);
    };
    let mut out = Outbox::default();
    let results: Vec<(String, Option<String>, ErrorCode)> = leaving
        .into_iter()
        .map(|(member, instance)| {
            let code = group.leave(
                &member,
                instance.as_deref(),
                now,
                &coordinator.config,
                &mut out,
            );
            (member, instance, code)
        })
        .collect();
    // A leave that removed nobody changes nothing to write.
    out.persist |= results.iter().any(|(_, _, code)| *code == ErrorCode::None);
    finish(broker, &shard, &mut state, &group_id, out).await;
    if version >= 3 {
        response.members = results
            .into_iter()
            .map(|(member, instance, code)| {
                let mut m = MemberResponse::default();
                m.member_id = s(member);
                m.group_instance_id = instance.map(s);
                m.error_code = code as i16;
                m
            })
            .collect();
    } else if let Some((_, _, code)) = results.first() {
        response.error_code = *code as i16;
    }
    response
}

/// LeaveGroup's answer when the group does not exist: Kafka's v3+ answers
/// each member; older versions have one code.
fn unknown_leavers(
    mut response: LeaveGroupResponse,
    leaving: Vec<(String, Option<String>)>,
    version: i16,
) -> LeaveGroupResponse {
    if version >= 3 {
        response.members = leaving
            .into_iter()
            .map(|(member, instance)| {
                let mut m = MemberResponse::default();
                m.member_id = s(member);
                m.group_instance_id = instance.map(s);
                m.error_code = ErrorCode::UnknownMemberId as i16;
                m
            })
            .collect();
    } else {
        response.error_code = ErrorCode::UnknownMemberId as i16;
    }
    response
}

// ---------------------------------------------------------------- offsets

/// Validates a commit against the group; creates an empty group for a
/// standalone consumer's first commit.
fn validate_commit(
    state: &mut GroupState,
    group_id: &str,
    member_id: &str,
    instance_id: Option<&str>,
    generation: i32,
    version: i16,
    now: i64,
) -> Result<(), ErrorCode> {
    match state.groups.get(group_id) {
        // Kafka: a commit with no generation (-1) comes from an admin or a
        // consumer that assigns its partitions itself, whatever member id it
        // sends (librdkafka's KIP-848 consumers send theirs): it creates a
        // simple group. Only commits that claim a membership need the group.
        None if generation < 0 => {
            state.classic_or_create(group_id, now);
            Ok(())
        }
        // Kafka's new coordinator says so from v9; older clients expect
        // ILLEGAL_GENERATION.
        None if version >= 9 => Err(ErrorCode::GroupIdNotFound),
        None => Err(ErrorCode::IllegalGeneration),
        Some(Group::Classic(g)) => g.validate_commit(member_id, instance_id, generation),
        // KIP-848 members commit with their member epoch, from v9.
        Some(Group::Consumer(_)) if version < 9 && !member_id.is_empty() => {
            Err(ErrorCode::UnsupportedVersion)
        }
        // As Kafka's ConsumerGroup: epoch -1 commits while nobody is in the group.
        Some(Group::Consumer(g)) if generation < 0 && g.is_empty() => Ok(()),
        Some(Group::Consumer(g)) => {
            let stale = if version >= 9 {
                ErrorCode::StaleMemberEpoch
            } else {
                ErrorCode::IllegalGeneration
            };
            g.validate_commit(member_id, generation, stale)
        }
    }
}

pub async fn offset_commit(
    broker: &Arc<Broker>,
    req: OffsetCommitRequest,
    ctx: &RequestContext<'_>,
) -> OffsetCommitResponse {
    let version = ctx.api_version();
    let group_id = req.group_id.to_string();
    let coordinator = &broker.groups;
    let respond = |f: &dyn Fn(&str, i32) -> ErrorCode| {
        let mut response = OffsetCommitResponse::default();
        response.topics = req
            .topics
            .iter()
            .map(|t| {
                let mut topic = OffsetCommitResponseTopic::default();
                topic.name = t.name.clone();
                topic.partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let mut r = OffsetCommitResponsePartition::default();
                        r.partition_index = p.partition_index;
                        r.error_code = f(&t.name, p.partition_index) as i16;
                        r
                    })
                    .collect();
                topic
            })
            .collect();
        response
    };
    let shard = match group_shard(broker, &group_id).await {
        Ok(shard) => shard,
        Err(code) => return respond(&|_, _| code),
    };
    let mut state = shard.lock().await;
    // The image is read under the lock: a topic deleted before it was taken
    // is seen as gone, so no offset of it is written after the deletion
    // removed the group's offsets of it.
    let image = broker.image();
    let now = broker.clock.now_ms();
    let instance_id = if version >= 7 {
        opt(req.group_instance_id.as_ref())
    } else {
        None
    };
    if let Err(code) = validate_commit(
        &mut state,
        &group_id,
        &req.member_id,
        instance_id.as_deref(),
        req.generation_id_or_member_epoch,
        version,
        now,
    ) {
        return respond(&|_, _| code);
    }
    let mut errors: BTreeMap<(String, i32), ErrorCode> = BTreeMap::new();
    let mut accepted = Vec::new();
    for t in &req.topics {
        for p in &t.partitions {
            let key = (t.name.to_string(), p.partition_index);
            let metadata = p.committed_metadata.as_ref().map(|m| m.to_string());
            let code = if image.partition(&t.name, p.partition_index).is_none() {
                ErrorCode::UnknownTopicOrPartition
            } else if metadata
                .as_ref()
                .is_some_and(|m| m.len() > coordinator.config.offset_metadata_max_bytes)
            {
                ErrorCode::OffsetMetadataTooLarge
            } else {
                let value = OffsetValue {
                    offset: p.committed_offset,
                    leader_epoch: if version >= 6 {
                        p.committed_leader_epoch
                    } else {
                        -1
                    },
                    metadata,
                    commit_timestamp_ms: now,
                };
                accepted.push((key.clone(), value));
                ErrorCode::None
            };
            errors.insert(key, code);
        }
    }
    let keys: Vec<(String, i32)> = accepted.iter().map(|(key, _)| key.clone()).collect();
    if let Err(code) = shard.commit_offsets(&mut state, &group_id, accepted).await {
        for key in keys {
            errors.insert(key, code);
        }
    }
    drop(state);
    respond(&|topic, partition| {
        errors
            .get(&(topic.to_owned(), partition))
            .copied()
            .unwrap_or(ErrorCode::None)
    })
}

/// One group's committed offsets for the requested partitions (all when
/// `topics` is `None`); a group or partition with nothing committed gets
/// offset -1 and no error, as clients expect.
fn committed(
    state: &GroupState,
    group_id: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> Committed {
    let offsets = state.offsets.get(group_id);
    let wanted: Vec<(String, Vec<i32>)> = match topics {
        Some(t) => t,
        None => {
            let mut all: BTreeMap<String, Vec<i32>> = BTreeMap::new();
            for (topic, partition) in offsets.into_iter().flat_map(|o| o.keys()) {
                all.entry(topic.clone()).or_default().push(*partition);
            }
            all.into_iter().collect()
        }
    };
    wanted
        .into_iter()
        .map(|(topic, partitions)| {
            let list = partitions
                .into_iter()
                .map(|p| match offsets.and_then(|o| o.get(&(topic.clone(), p))) {
                    Some(v) => (
                        p,
                        v.offset,
                        v.leader_epoch,
                        v.metadata.clone().unwrap_or_default(),
                    ),
                    None => (p, -1, -1, String::new()),
                })
                .collect();
            (topic, list)
        })
        .collect()
}

/// Whether an open transaction has committed an offset of `group` for the
/// partition (OffsetFetch with `require_stable` then answers
/// UNSTABLE_OFFSET_COMMIT, which clients retry, as Kafka does).
fn has_pending_txn_offset(state: &GroupState, group_id: &str, topic: &str, partition: i32) -> bool {
    state.pending_txn_offsets.values().any(|groups| {
        groups
            .get(group_id)
            .is_some_and(|offsets| offsets.contains_key(&(topic.to_owned(), partition)))
    })
}

pub async fn offset_fetch(
    broker: &Arc<Broker>,
    req: OffsetFetchRequest,
    ctx: &RequestContext<'_>,
) -> OffsetFetchResponse {
    let version = ctx.api_version();
    let mut response = OffsetFetchResponse::default();
    if version < 8 {
        let group_id = req.group_id.to_string();
        let shard = match find_shard(broker, &group_id).await {
            Ok(shard) => shard,
            Err(code) => {
                offset_fetch_v1_error(&mut response, &req, code, version);
                return response;
            }
        };
        let topics = req.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name.to_string(), t.partition_indexes))
                .collect()
        });
        let empty = GroupState::default();
        let guard = match &shard {
            Some(shard) => Some(shard.lock().await),
            None => None,
        };
        let state = guard.as_deref().unwrap_or(&empty);
        let require_stable = version >= 7 && req.require_stable;
        response.topics = committed(state, &group_id, topics)
            .into_iter()
            .map(|(name, partitions)| {
                let mut topic = OffsetFetchResponseTopic::default();
                topic.partitions = partitions
                    .into_iter()
                    .map(|(p, offset, epoch, metadata)| {
                        let mut r = OffsetFetchResponsePartition::default();
                        r.partition_index = p;
                        if require_stable && has_pending_txn_offset(state, &group_id, &name, p) {
                            r.committed_offset = -1;
                            r.error_code = ErrorCode::UnstableOffsetCommit as i16;
                            return r;
                        }
                        r.committed_offset = offset;
                        if version >= 5 {
                            r.committed_leader_epoch = epoch;
                        }
                        r.metadata = Some(s(metadata));
                        r
                    })
                    .collect();
                topic.name = TopicName(s(name));
                topic
            })
            .collect();
        return response;
    }
    let empty = GroupState::default();
    for g in req.groups {
        let group_id = g.group_id.to_string();
        let mut out = OffsetFetchResponseGroup::default();
        out.group_id = g.group_id.clone();
        let shard = match find_shard(broker, &group_id).await {
            Ok(shard) => shard,
            Err(code) => {
                out.error_code = code as i16;
                response.groups.push(out);
                continue;
            }
        };
        let guard = match &shard {
            Some(shard) => Some(shard.lock().await),
            None => None,
        };
        let state = guard.as_deref().unwrap_or(&empty);
        response
            .groups
            .push(fetch_group(state, g, version, req.require_stable));
    }
    response
}

/// One group's answer to OffsetFetch v8+, from its shard's state.
fn fetch_group(
    state: &GroupState,
    g: OffsetFetchRequestGroup,
    version: i16,
    require_stable: bool,
) -> OffsetFetchResponseGroup {
    let group_id = g.group_id.to_string();
    let mut out = OffsetFetchResponseGroup::default();
    out.group_id = g.group_id.clone();
    // Version 9: a KIP-848 member fetching must be current.
    if version >= 9
        && let Some(member) = g.member_id.as_ref().filter(|m| !m.is_empty())
        && let Some(Group::Consumer(cg)) = state.groups.get(&group_id)
        && let Err(code) = cg.validate_commit(member, g.member_epoch, ErrorCode::StaleMemberEpoch)
    {
        out.error_code = code as i16;
        return out;
    }
    let topics = g.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.to_string(), t.partition_indexes))
            .collect()
    });
    out.topics = committed(state, &group_id, topics)
        .into_iter()
        .map(|(name, partitions)| {
            let mut topic = OffsetFetchResponseTopics::default();
            topic.partitions = partitions
                .into_iter()
                .map(|(p, offset, epoch, metadata)| {
                    let mut r = OffsetFetchResponsePartitions::default();
                    r.partition_index = p;
                    if require_stable && has_pending_txn_offset(state, &group_id, &name, p) {
                        r.committed_offset = -1;
                        r.error_code = ErrorCode::UnstableOffsetCommit as i16;
                        return r;
                    }
                    r.committed_offset = offset;
                    r.committed_leader_epoch = epoch;
                    r.metadata = Some(s(metadata));
                    r
                })
                .collect();
            topic.name = TopicName(s(name));
            topic
        })
        .collect();
    out
}

/// OffsetFetch before v8 when the group cannot be served here: version 1
/// has only per-partition errors.
fn offset_fetch_v1_error(
    response: &mut OffsetFetchResponse,
    req: &OffsetFetchRequest,
    code: ErrorCode,
    version: i16,
) {
    if version >= 2 {
        response.error_code = code as i16;
    } else {
        // Version 1 has only per-partition errors.
        response.topics = req
            .topics
            .iter()
            .flatten()
            .map(|t| {
                let mut topic = OffsetFetchResponseTopic::default();
                topic.name = t.name.clone();
                topic.partitions = t
                    .partition_indexes
                    .iter()
                    .map(|p| {
                        let mut r = OffsetFetchResponsePartition::default();
                        r.partition_index = *p;
                        r.committed_offset = -1;
                        r.error_code = code as i16;
                        r
                    })
                    .collect();
                topic
            })
            .collect();
    }
}

pub async fn offset_delete(
    broker: &Arc<Broker>,
    req: OffsetDeleteRequest,
    _ctx: &RequestContext<'_>,
) -> OffsetDeleteResponse {
    let group_id = req.group_id.to_string();
    let mut response = OffsetDeleteResponse::default();
    let shard = match find_shard(broker, &group_id).await {
        Ok(Some(shard)) => shard,
        Ok(None) => {
            response.error_code = ErrorCode::GroupIdNotFound as i16;
            return response;
        }
        Err(code) => {
            response.error_code = code as i16;
            return response;
        }
    };
    let mut state = shard.lock().await;
    let Some(group) = state.groups.get(&group_id) else {
        response.error_code = ErrorCode::GroupIdNotFound as i16;
        return response;
    };
    if let Group::Classic(g) = group
        && !g.is_empty()
        && g.protocol_type.as_deref() != Some("consumer")
    {
        response.error_code = ErrorCode::NonEmptyGroup as i16;
        return response;
    }
    let mut records = Vec::new();
    let mut results = Vec::new();
    for t in &req.topics {
        let subscribed = group.subscribes_to(&t.name);
        let mut topic = OffsetDeleteResponseTopic::default();
        topic.name = t.name.clone();
        for p in &t.partitions {
            let mut r = OffsetDeleteResponsePartition::default();
            r.partition_index = p.partition_index;
            if subscribed {
                r.error_code = ErrorCode::GroupSubscribedToTopic as i16;
            } else if state
                .offsets
                .get(&group_id)
                .is_some_and(|o| o.contains_key(&(t.name.to_string(), p.partition_index)))
            {
                records.push(Record::offset(&group_id, &t.name, p.partition_index, None));
            }
            topic.partitions.push(r);
        }
        results.push(topic);
    }
    if let Err(code) = shard.persist(records.clone()).await {
        response.error_code = code as i16;
        return response;
    }
    state.forget_pending_offsets(&records);
    if let Some(offsets) = state.offsets.get_mut(&group_id) {
        for r in &records {
            if let crate::group::store::RecordKey::Offset {
                topic, partition, ..
            } = r.key()
            {
                offsets.remove(&(topic.clone(), *partition));
            }
        }
    }
    response.topics = results;
    response
}

// ---------------------------------------------------------------- group administration

pub async fn describe_groups(
    broker: &Arc<Broker>,
    req: DescribeGroupsRequest,
    ctx: &RequestContext<'_>,
) -> DescribeGroupsResponse {
    let version = ctx.api_version();
    let mut response = DescribeGroupsResponse::default();
    for group_id in &req.groups {
        let unanswered = || {
            let mut d = DescribedGroup::default();
            d.group_id = group_id.clone();
            d
        };
        let described = read_group(broker, group_id, |group| {
            describe_group(unanswered(), group, version)
        })
        .await;
        response.groups.push(described.unwrap_or_else(|code| {
            let mut d = unanswered();
            d.error_code = code as i16;
            d
        }));
    }
    response
}

/// One group's answer to DescribeGroups (`group` is `None` when unknown).
fn describe_group(mut d: DescribedGroup, group: Option<&Group>, version: i16) -> DescribedGroup {
    let group_id = d.group_id.clone();
    {
        {
            match group {
                Some(Group::Classic(g)) => {
                    d.group_state = s(g.state.name());
                    d.protocol_type = s(g.protocol_type.clone().unwrap_or_default());
                    let stable = g.state == crate::group::classic::ClassicState::Stable;
                    d.protocol_data = s(if stable {
                        g.protocol_name.clone().unwrap_or_default()
                    } else {
                        String::new()
                    });
                    d.members = g
                        .describe_members()
                        .into_iter()
                        .map(|(id, instance, client, host, metadata, assignment)| {
                            let mut m = DescribedGroupMember::default();
                            m.member_id = s(id);
                            if version >= 4 {
                                m.group_instance_id = instance.map(s);
                            }
                            m.client_id = s(client);
                            m.client_host = s(host);
                            // Kafka sends metadata and assignment only when stable.
                            if stable {
                                m.member_metadata = metadata;
                                m.member_assignment = assignment;
                            }
                            m
                        })
                        .collect();
                }
                Some(Group::Consumer(_)) | None => {
                    d.group_state = s("Dead");
                    if version >= 6 {
                        d.error_code = ErrorCode::GroupIdNotFound as i16;
                        d.error_message = Some(s(match group {
                            Some(_) => {
                                format!("Group {} is not a classic group.", group_id.as_str())
                            }
                            None => format!("Group {} not found.", group_id.as_str()),
                        }));
                    }
                }
            }
        }
    }
    d
}

pub async fn list_groups(
    broker: &Arc<Broker>,
    req: ListGroupsRequest,
    ctx: &RequestContext<'_>,
) -> ListGroupsResponse {
    let version = ctx.api_version();
    let states: BTreeSet<String> = req
        .states_filter
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let types: BTreeSet<String> = req
        .types_filter
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    // Every active shard's groups, one shard locked at a time.
    let mut groups: Vec<ListedGroup> = Vec::new();
    for shard in broker.groups.active_shards() {
        let state = shard.lock().await;
        groups.extend(
            state
                .groups
                .iter()
                .filter(|(_, g)| {
                    states.is_empty() || states.contains(&g.state_name().to_ascii_lowercase())
                })
                .filter(|(_, g)| types.is_empty() || types.contains(g.group_type()))
                .map(|(id, g)| {
                    let mut l = ListedGroup::default();
                    l.group_id = GroupId(s(id.clone()));
                    l.protocol_type = s(g.protocol_type());
                    if version >= 4 {
                        l.group_state = s(g.state_name());
                    }
                    if version >= 5 {
                        l.group_type = s(g.group_type());
                    }
                    l
                }),
        );
    }
    groups.sort_by(|a, b| a.group_id.0.cmp(&b.group_id.0));
    let mut response = ListGroupsResponse::default();
    response.groups = groups;
    response
}

pub async fn delete_groups(
    broker: &Arc<Broker>,
    req: DeleteGroupsRequest,
    _ctx: &RequestContext<'_>,
) -> DeleteGroupsResponse {
    let mut response = DeleteGroupsResponse::default();
    for group_id in &req.groups_names {
        let id = group_id.to_string();
        let code = match find_shard(broker, &id).await {
            Err(code) => code,
            Ok(None) => ErrorCode::GroupIdNotFound,
            Ok(Some(shard)) => delete_group(&shard, &id).await,
        };
        let mut r = DeletableGroupResult::default();
        r.group_id = group_id.clone();
        r.error_code = code as i16;
        response.results.push(r);
    }
    response
}

/// Deletes `id` and its offsets if it is empty (DeleteGroups).
async fn delete_group(shard: &GroupShard, id: &str) -> ErrorCode {
    let mut state = shard.lock().await;
    match state.groups.get(id) {
        None => ErrorCode::GroupIdNotFound,
        Some(g) if !g.is_empty() => ErrorCode::NonEmptyGroup,
        Some(_) => {
            let mut records: Vec<Record> = state
                .offsets
                .get(id)
                .into_iter()
                .flat_map(|o| o.keys())
                .map(|(topic, partition)| Record::offset(id, topic, *partition, None))
                .collect();
            records.push(Record::group(id, None));
            match shard.persist(records.clone()).await {
                Ok(()) => {
                    state.forget_pending_offsets(&records);
                    state.groups.remove(id);
                    state.offsets.remove(id);
                    ErrorCode::None
                }
                Err(code) => code,
            }
        }
    }
}

// ---------------------------------------------------------------- KIP-848

fn topic_partitions(p: &Partitions) -> Vec<cgh::TopicPartitions> {
    p.iter()
        .map(|(t, ps)| {
            let mut tp = cgh::TopicPartitions::default();
            tp.topic_id = *t;
            tp.partitions = ps.iter().copied().collect();
            tp
        })
        .collect()
}

pub async fn consumer_group_heartbeat(
    broker: &Arc<Broker>,
    req: ConsumerGroupHeartbeatRequest,
    ctx: &RequestContext<'_>,
) -> ConsumerGroupHeartbeatResponse {
    let version = ctx.api_version();
    let group_id = req.group_id.to_string();
    let mut response = ConsumerGroupHeartbeatResponse::default();
    let fail = |mut response: ConsumerGroupHeartbeatResponse, code: ErrorCode, message: String| {
        response.error_code = code as i16;
        response.error_message = Some(s(message));
        response
    };
    let shard = match group_shard(broker, &group_id).await {
        Ok(shard) => shard,
        Err(code) => {
            return fail(
                response,
                code,
                format!("The group coordinator for {group_id} is not available here."),
            );
        }
    };
    if version >= 1 && req.member_epoch == 0 && req.member_id.is_empty() {
        return fail(
            response,
            ErrorCode::InvalidRequest,
            "MemberId can't be empty.".into(),
        );
    }
    let request = consumer::Heartbeat {
        member_id: req.member_id.to_string(),
        member_epoch: req.member_epoch,
        instance_id: opt(req.instance_id.as_ref()),
        rack_id: opt(req.rack_id.as_ref()),
        rebalance_timeout_ms: req.rebalance_timeout_ms,
        subscribed_topic_names: req
            .subscribed_topic_names
            .as_ref()
            .map(|names| names.iter().map(|n| n.to_string()).collect()),
        subscribed_topic_regex: opt(req.subscribed_topic_regex.as_ref()),
        server_assignor: opt(req.server_assignor.as_ref()),
        owned: req.topic_partitions.as_ref().map(|tps| {
            tps.iter()
                .map(|tp| (tp.topic_id, tp.partitions.clone()))
                .collect()
        }),
        client_id: client_id(ctx.client_id()),
        client_host: client_host(ctx.peer()),
    };
    let coordinator = &broker.groups;
    let image = broker.image();
    let mut state = shard.lock().await;
    let now = broker.clock.now_ms();
    let Some(group) = state.consumer_or_create(&group_id, now) else {
        return fail(
            response,
            ErrorCode::GroupIdNotFound,
            format!("Group {group_id} is not a consumer group."),
        );
    };
    let (result, persist) = group.heartbeat(request, now, &image, &coordinator.config);
    if persist {
        let record = state.group_record(&group_id, &coordinator.config);
        if let Err(e) = shard.persist(vec![record]).await {
            tracing::warn!(group = %group_id, error = ?e, "could not persist a consumer group change");
        }
    }
    // A group that never got a member (its first heartbeat failed) is not kept.
    if state.groups.get(&group_id).is_some_and(Group::is_empty)
        && !state.offsets.contains_key(&group_id)
        && result.error != ErrorCode::None
    {
        state.groups.remove(&group_id);
    }
    drop(state);
    response.error_code = result.error as i16;
    response.error_message = result.message.map(s);
    response.member_id = Some(s(result.member_id));
    response.member_epoch = result.member_epoch;
    response.heartbeat_interval_ms = result.heartbeat_interval_ms;
    response.assignment = result.assignment.map(|a| {
        let mut assignment = cgh::Assignment::default();
        assignment.topic_partitions = topic_partitions(&a);
        assignment
    });
    response
}

pub async fn consumer_group_describe(
    broker: &Arc<Broker>,
    req: ConsumerGroupDescribeRequest,
    ctx: &RequestContext<'_>,
) -> ConsumerGroupDescribeResponse {
    let version = ctx.api_version();
    let image = broker.image();
    let named = |p: &Partitions| -> cgd::Assignment {
        let mut a = cgd::Assignment::default();
        a.topic_partitions = p
            .iter()
            .map(|(id, ps)| {
                let mut tp = cgd::TopicPartitions::default();
                tp.topic_id = *id;
                tp.topic_name = TopicName(s(image
                    .topic_by_id(id)
                    .map(|t| t.name.clone())
                    .unwrap_or_default()));
                tp.partitions = ps.iter().copied().collect();
                tp
            })
            .collect();
        a
    };
    let config = &broker.groups.config;
    let mut response = ConsumerGroupDescribeResponse::default();
    for group_id in &req.group_ids {
        let unanswered = || {
            let mut d = cgd::DescribedGroup::default();
            d.group_id = group_id.clone();
            d
        };
        let described = read_group(broker, group_id, |group| {
            let mut d = unanswered();
            match group {
                Some(Group::Consumer(g)) => {
                    d.group_state = s(g.state_name());
                    d.group_epoch = g.group_epoch;
                    d.assignment_epoch = g.assignment_epoch;
                    d.assignor_name = s(g.assignor(config).name());
                    d.members = g
                        .describe_members()
                        .into_iter()
                        .map(|m| {
                            let mut member = cgd::Member::default();
                            member.member_id = s(m.member_id);
                            member.instance_id = m.instance_id.map(s);
                            member.rack_id = m.rack_id.map(s);
                            member.member_epoch = m.member_epoch;
                            member.client_id = s(m.client_id);
                            member.client_host = s(m.client_host);
                            member.subscribed_topic_names = m
                                .subscribed_topic_names
                                .into_iter()
                                .map(|n| TopicName(s(n)))
                                .collect();
                            member.subscribed_topic_regex = m.subscribed_topic_regex.map(s);
                            member.assignment = named(&m.assignment);
                            member.target_assignment = named(&m.target);
                            if version >= 1 {
                                // KIP-1099: 1 = consumer protocol member.
                                member.member_type = 1;
                            }
                            member
                        })
                        .collect();
                }
                Some(Group::Classic(_)) => {
                    d.error_code = ErrorCode::GroupIdNotFound as i16;
                    d.error_message = Some(s(format!(
                        "Group {} is not a consumer group.",
                        group_id.as_str()
                    )));
                }
                None => {
                    d.error_code = ErrorCode::GroupIdNotFound as i16;
                    d.error_message = Some(s(format!("Group {} not found.", group_id.as_str())));
                }
            }
            d
        })
        .await;
        response.groups.push(described.unwrap_or_else(|code| {
            let mut d = unanswered();
            d.error_code = code as i16;
            d
        }));
    }
    response
}

/// Topics this broker refuses to take client writes for.
pub fn is_internal(topic: &str) -> bool {
    topic == crate::txn::store::TRANSACTION_STATE_TOPIC || topic == OFFSETS_TOPIC
}
