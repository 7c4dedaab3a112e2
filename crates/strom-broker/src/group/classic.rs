//! Classic consumer groups: JoinGroup, SyncGroup, Heartbeat and LeaveGroup,
//! with the state machine of Kafka's group coordinator.
//!
//! ```text
//! Empty ──join──> PreparingRebalance ──all joined / timeout──> CompletingRebalance
//!   ^                   ^   ^                                     │ leader's SyncGroup
//!   └── last member ────┘   └── join, leave, expiry, metadata ────┤
//!                                                                 v
//!                                                               Stable
//! ```
//!
//! The group is pure state: it never does I/O. Replies to parked JoinGroup and
//! SyncGroup requests go into an [`Outbox`] that the coordinator delivers
//! after it has persisted the group, as Kafka answers SyncGroup only once the
//! assignment is in the offsets topic.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use indexmap::IndexMap;
use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::Decodable;
use strom_protocol::messages::kafka::ConsumerProtocolSubscription;
use tokio::sync::oneshot;

use super::store::{ClassicMemberValue, GroupValue, ProtocolValue};
use super::{GroupConfig, remove_if_held};

/// The states of a classic group, named as Kafka names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassicState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl ClassicState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Empty => "Empty",
            Self::PreparingRebalance => "PreparingRebalance",
            Self::CompletingRebalance => "CompletingRebalance",
            Self::Stable => "Stable",
            Self::Dead => "Dead",
        }
    }
}

/// A JoinGroup request, version-independent.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new member first gets MEMBER_ID_REQUIRED and its id.
    pub require_known_member_id: bool,
}

/// The answer to a JoinGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResult {
    pub error: ErrorCode,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// For the leader: every member with its metadata for the chosen protocol.
    pub members: Vec<(String, Option<String>, Bytes)>,
    /// KIP-814: a static leader that rejoined a stable group keeps the current
    /// assignment and need not compute one.
    pub skip_assignment: bool,
}

impl JoinResult {
    pub fn error(error: ErrorCode, member_id: &str) -> Self {
        Self {
            error,
            generation: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_owned(),
            members: Vec::new(),
            skip_assignment: false,
        }
    }
}

/// The answer to a SyncGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncResult {
    pub error: ErrorCode,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    pub fn error(error: ErrorCode) -> Self {
        Self {
            error,
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

/// Answered now, or later through the receiver.
#[derive(Debug)]
pub enum Reply<T> {
    Now(T),
    Later(oneshot::Receiver<T>),
}

/// Replies to parked requests, delivered after the group is persisted.
#[derive(Debug, Default)]
pub struct Outbox {
    joins: Vec<(oneshot::Sender<JoinResult>, JoinResult)>,
    syncs: Vec<(oneshot::Sender<SyncResult>, SyncResult)>,
    /// The group's persisted state changed.
    pub persist: bool,
}

impl Outbox {
    /// Turns every SyncGroup answer into `error` (the assignment could not
    /// be written).
    pub fn fail_syncs(&mut self, error: ErrorCode) {
        for (_, result) in &mut self.syncs {
            *result = SyncResult::error(error);
        }
    }

    /// Delivers every reply (a client that went away is no error).
    pub fn deliver(self) {
        for (tx, r) in self.joins {
            let _ = tx.send(r);
        }
        for (tx, r) in self.syncs {
            let _ = tx.send(r);
        }
    }
}

#[derive(Debug)]
struct Member {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    protocol_type: String,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    join_waiter: Option<oneshot::Sender<JoinResult>>,
    sync_waiter: Option<oneshot::Sender<SyncResult>>,
    /// The member is gone if it does not heartbeat by then (unless it has a
    /// request parked: members awaiting a join or sync are kept alive).
    session_deadline_ms: i64,
}

impl Member {
    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map_or_else(Bytes::new, |(_, m)| m.clone())
    }

    fn same_protocols(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }
}

/// `group.initial.rebalance.delay.ms`: the first rebalance of an empty group
/// waits for more members, extended while they keep coming.
#[derive(Debug, Clone, Copy)]
struct InitialDelay {
    deadline_ms: i64,
    max_deadline_ms: i64,
    member_added: bool,
}

/// A classic group.
#[derive(Debug)]
pub struct ClassicGroup {
    pub id: String,
    pub state: ClassicState,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub generation: i32,
    leader: Option<String>,
    /// In join order (the first member leads when no leader survives).
    members: IndexMap<String, Member>,
    /// Members told MEMBER_ID_REQUIRED, and when their id lapses.
    pending: HashMap<String, i64>,
    static_members: HashMap<String, String>,
    rebalance_deadline_ms: Option<i64>,
    initial_delay: Option<InitialDelay>,
    sync_deadline_ms: Option<i64>,
    /// When the group last became empty (offset expiry counts from here).
    pub empty_since_ms: i64,
}

impl ClassicGroup {
    pub fn new(id: &str, now_ms: i64) -> Self {
        Self {
            id: id.to_owned(),
            state: ClassicState::Empty,
            protocol_type: None,
            protocol_name: None,
            generation: 0,
            leader: None,
            members: IndexMap::new(),
            pending: HashMap::new(),
            static_members: HashMap::new(),
            rebalance_deadline_ms: None,
            initial_delay: None,
            sync_deadline_ms: None,
            empty_since_ms: now_ms,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    pub fn has_member(&self, member_id: &str) -> bool {
        self.members.contains_key(member_id)
    }

    /// The member's static instance id check: FENCED_INSTANCE_ID when another
    /// member now holds the instance id.
    fn fenced(&self, member_id: &str, instance_id: Option<&str>) -> bool {
        instance_id.is_some_and(|i| {
            self.static_members
                .get(i)
                .is_some_and(|holder| holder != member_id)
        })
    }

    /// Validates a commit or fetch by a member of this group: Kafka's rules
    /// for classic groups.
    pub fn validate_commit(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ErrorCode> {
        if generation < 0 && self.members.is_empty() {
            // An admin or a standalone consumer (with or without a member
            // id): only while nobody is in the group, as Kafka's ClassicGroup.
            return Ok(());
        }
        if generation < 0 && member_id.is_empty() {
            return Err(ErrorCode::UnknownMemberId);
        }
        if self.fenced(member_id, instance_id) {
            return Err(ErrorCode::FencedInstanceId);
        }
        if !self.members.contains_key(member_id) {
            return Err(ErrorCode::UnknownMemberId);
        }
        if generation != self.generation {
            return Err(ErrorCode::IllegalGeneration);
        }
        if self.state == ClassicState::CompletingRebalance {
            // Kafka: commits wait until the new assignment is known.
            return Err(ErrorCode::RebalanceInProgress);
        }
        Ok(())
    }

    /// JoinGroup.
    pub fn join(
        &mut self,
        request: JoinRequest,
        now_ms: i64,
        config: &GroupConfig,
        out: &mut Outbox,
    ) -> Reply<JoinResult> {
        if self.state == ClassicState::Dead {
            return Reply::Now(JoinResult::error(
                ErrorCode::CoordinatorNotAvailable,
                &request.member_id,
            ));
        }
        if !self.members.is_empty() && !self.compatible(&request.protocol_type, &request.protocols)
        {
            return Reply::Now(JoinResult::error(
                ErrorCode::InconsistentGroupProtocol,
                &request.member_id,
            ));
        }
        if request.member_id.is_empty() {
            self.join_unknown(request, now_ms, config, out)
        } else {
            self.join_known(request, now_ms, config, out)
        }
    }

    fn compatible(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self
            .protocol_type
            .as_deref()
            .is_some_and(|t| t != protocol_type)
        {
            return false;
        }
        // Some protocol must be supported by every member and this one.
        protocols.iter().any(|(name, _)| {
            self.members
                .values()
                .all(|m| m.protocols.iter().any(|(n, _)| n == name))
        })
    }

    fn join_unknown(
        &mut self,
        request: JoinRequest,
        now_ms: i64,
        config: &GroupConfig,
        out: &mut Outbox,
    ) -> Reply<JoinResult> {
        if config.max_size.is_some_and(|max| self.members.len() >= max) {
            return Reply::Now(JoinResult::error(ErrorCode::GroupMaxSizeReached, ""));
        }
        let new_id = format!(
            "{}-{}",
            request.instance_id.as_deref().unwrap_or(&request.client_id),
            strom_protocol::messages::Uuid::new_v4()
        );
        if let Some(instance) = request.instance_id.clone() {
            if let Some(old_id) = self.static_members.get(&instance).cloned() {
                return self.replace_static_member(&old_id, new_id, request, now_ms, config, out);
            }
            self.static_members.insert(instance, new_id.clone());
            return self.add_member_and_rebalance(new_id, request, now_ms, config, out);
        }
        if request.require_known_member_id {
            // KIP-394: the client rejoins with this id; until then it is pending.
            let deadline = now_ms + i64::from(request.session_timeout_ms);
            self.pending.insert(new_id.clone(), deadline);
            return Reply::Now(JoinResult::error(ErrorCode::MemberIdRequired, &new_id));
        }
        self.add_member_and_rebalance(new_id, request, now_ms, config, out)
    }

    fn join_known(
        &mut self,
        request: JoinRequest,
        now_ms: i64,
        config: &GroupConfig,
        out: &mut Outbox,
    ) -> Reply<JoinResult> {
        let member_id = request.member_id.clone();
        if self.pending.remove(&member_id).is_some() {
            return self.add_member_and_rebalance(member_id, request, now_ms, config, out);
        }
        if self.fenced(&member_id, request.instance_id.as_deref()) {
            return Reply::Now(JoinResult::error(ErrorCode::FencedInstanceId, &member_id));
        }
        if !self.members.contains_key(&member_id) {
            return Reply::Now(JoinResult::error(ErrorCode::UnknownMemberId, &member_id));
        }
        match self.state {
            ClassicState::PreparingRebalance => {
                let (tx, rx) = oneshot::channel();
                self.update_member(&member_id, &request, Some(tx), now_ms);
                self.maybe_complete_join(now_ms, out);
                Reply::Later(rx)
            }
            ClassicState::CompletingRebalance | ClassicState::Stable => {
                let unchanged = self
                    .members
                    .get(&member_id)
                    .is_some_and(|m| m.same_protocols(&request.protocols));
                let is_leader = self.leader.as_deref() == Some(member_id.as_str());
                if unchanged && (self.state == ClassicState::CompletingRebalance || !is_leader) {
                    // Nothing changed: answer with the current generation.
                    if let Some(m) = self.members.get_mut(&member_id) {
                        m.session_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
                    }
                    return Reply::Now(self.join_result(&member_id, false));
                }
                let (tx, rx) = oneshot::channel();
                self.update_member(&member_id, &request, Some(tx), now_ms);
                self.prepare_rebalance(now_ms, config, out);
                self.maybe_complete_join(now_ms, out);
                Reply::Later(rx)
            }
            ClassicState::Empty | ClassicState::Dead => {
                Reply::Now(JoinResult::error(ErrorCode::UnknownMemberId, &member_id))
            }
        }
    }

    /// A static member rejoined under its instance id with a new member id:
    /// the old member is fenced; a stable group keeps its assignment and
    /// skips the rebalance when nothing else changed (KIP-345).
    fn replace_static_member(
        &mut self,
        old_id: &str,
        new_id: String,
        request: JoinRequest,
        now_ms: i64,
        config: &GroupConfig,
        out: &mut Outbox,
    ) -> Reply<JoinResult> {
        let Some(mut old) = self.members.shift_remove(old_id) else {
            // Known instance, member gone: treat as new.
            if let Some(instance) = &request.instance_id {
                self.static_members.insert(instance.clone(), new_id.clone());
            }
            return self.add_member_and_rebalance(new_id, request, now_ms, config, out);
        };
        if let Some(tx) = old.join_waiter.take() {
            out.joins
                .push((tx, JoinResult::error(ErrorCode::FencedInstanceId, old_id)));
        }
        if let Some(tx) = old.sync_waiter.take() {
            out.syncs
                .push((tx, SyncResult::error(ErrorCode::FencedInstanceId)));
        }
        let unchanged = old.same_protocols(&request.protocols);
        old.id = new_id.clone();
        old.client_id = request.client_id.clone();
        old.client_host = request.client_host.clone();
        old.session_timeout_ms = request.session_timeout_ms;
        old.rebalance_timeout_ms = request.rebalance_timeout_ms;
        old.session_deadline_ms = now_ms + i64::from(request.session_timeout_ms);
        let was_leader = self.leader.as_deref() == Some(old_id);
        self.members.insert(new_id.clone(), old);
        if let Some(instance) = &request.instance_id {
            self.static_members.insert(instance.clone(), new_id.clone());
        }
        if was_leader {
            self.leader = Some(new_id.clone());
        }
        if self.state == ClassicState::Stable && unchanged {
            out.persist = true;
            // The leader learns the members but keeps the assignment as it is.
            return Reply::Now(self.join_result(&new_id, was_leader));
        }
        let (tx, rx) = oneshot::channel();
        self.update_member(&new_id, &request, Some(tx), now_ms);
        self.prepare_rebalance(now_ms, config, out);
        self.maybe_complete_join(now_ms, out);
        Reply::Later(rx)
    }

    fn add_member_and_rebalance(
        &mut self,
        member_id: String,
        request: JoinRequest,
        now_ms: i64,
        config: &GroupConfig,
        out: &mut Outbox,
    ) -> Reply<JoinResult> {
        if config.max_size.is_some_and(|max| self.members.len() >= max) {
            return Reply::Now(JoinResult::error(
                ErrorCode::GroupMaxSizeReached,
                &member_id,
            ));
        }
        let (tx, rx) = oneshot::channel();
        if self.members.is_empty() {
            self.protocol_type = Some(request.protocol_type.clone());
        }
        self.members.insert(
            member_id.clone(),
            Member {
                id: member_id,
                instance_id: request.instance_id.clone(),
                client_id: request.client_id.clone(),
                client_host: request.client_host.clone(),
                session_timeout_ms: request.session_timeout_ms,
                rebalance_timeout_ms: request.rebalance_timeout_ms,
                protocol_type: request.protocol_type.clone(),
                protocols: request.protocols.clone(),
                assignment: Bytes::new(),
                join_waiter: Some(tx),
                sync_waiter: None,
                session_deadline_ms: now_ms + i64::from(request.session_timeout_ms),
            },
        );
        if let Some(delay) = &mut self.initial_delay {
            delay.member_added = true;
        }
        if self.state != ClassicState::PreparingRebalance {
            self.prepare_rebalance(now_ms, config, out);
        }
        self.maybe_complete_join(now_ms, out);
        Reply::Later(rx)
    }

    fn update_member(
        &mut self,
        member_id: &str,
        request: &JoinRequest,
        waiter: Option<oneshot::Sender<JoinResult>>,
        now_ms: i64,
    ) {
        if let Some(m) = self.members.get_mut(member_id) {
            m.protocols = request.protocols.clone();
            m.protocol_type = request.protocol_type.clone();
            m.session_timeout_ms = request.session_timeout_ms;
            m.rebalance_timeout_ms = request.rebalance_timeout_ms;
            m.client_id = request.client_id.clone();
            m.client_host = request.client_host.clone();
            m.session_deadline_ms = now_ms + i64::from(request.session_timeout_ms);
            // A newer join replaces a parked one (Kafka answers the old with the new result too; the client only reads the latest).
            m.join_waiter = waiter;
        }
    }

    fn max_rebalance_timeout_ms(&self) -> i64 {
        self.members
            .values()
            .map(|m| i64::from(m.rebalance_timeout_ms))
            .max()
            .unwrap_or(0)
    }

    fn prepare_rebalance(&mut self, now_ms: i64, config: &GroupConfig, out: &mut Outbox) {
        if self.state == ClassicState::CompletingRebalance {
            // The assignment being handed out is void: members rejoin.
            for m in self.members.values_mut() {
                if let Some(tx) = m.sync_waiter.take() {
                    out.syncs
                        .push((tx, SyncResult::error(ErrorCode::RebalanceInProgress)));
                }
            }
        }
        self.sync_deadline_ms = None;
        let was_empty = self.state == ClassicState::Empty;
        self.state = ClassicState::PreparingRebalance;
        if was_empty && config.initial_rebalance_delay_ms > 0 {
            self.initial_delay = Some(InitialDelay {
                deadline_ms: now_ms + config.initial_rebalance_delay_ms,
                max_deadline_ms: now_ms
                    + self
                        .max_rebalance_timeout_ms()
                        .max(config.initial_rebalance_delay_ms),
                member_added: false,
            });
            self.rebalance_deadline_ms = None;
        } else {
            self.initial_delay = None;
            self.rebalance_deadline_ms = Some(now_ms + self.max_rebalance_timeout_ms());
        }
    }

    /// Completes the join phase once every member has rejoined (and no new
    /// member is still to come back with its id).
    fn maybe_complete_join(&mut self, now_ms: i64, out: &mut Outbox) {
        if self.state == ClassicState::PreparingRebalance
            && self.initial_delay.is_none()
            && self.pending.is_empty()
            && self.members.values().all(|m| m.join_waiter.is_some())
        {
            self.complete_join(now_ms, out);
        }
    }

    fn complete_join(&mut self, now_ms: i64, out: &mut Outbox) {
        // Dynamic members that did not rejoin in time are gone; static ones
        // stay (they may come back under their instance id).
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_waiter.is_none() && m.instance_id.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in gone {
            self.remove(&id, out);
        }
        self.rebalance_deadline_ms = None;
        self.initial_delay = None;
        self.generation += 1;
        if self.members.is_empty() {
            // Only an emptied group is written here (as Kafka): a group with
            // members is written with its assignment at the leader's
            // SyncGroup, so a restart in between brings back the previous
            // generation, whose members then rejoin.
            out.persist = true;
            // The protocol type stays: it tells offset expiry this was a
            // group with members, not a standalone consumer's.
            self.state = ClassicState::Empty;
            self.protocol_name = None;
            self.leader = None;
            self.empty_since_ms = now_ms;
            return;
        }
        self.protocol_name = self.select_protocol();
        let leader_joined = self
            .leader
            .as_ref()
            .and_then(|l| self.members.get(l))
            .is_some_and(|m| m.join_waiter.is_some());
        if !leader_joined {
            self.leader = self
                .members
                .values()
                .find(|m| m.join_waiter.is_some())
                .map(|m| m.id.clone());
        }
        self.state = ClassicState::CompletingRebalance;
        self.sync_deadline_ms = Some(now_ms + self.max_rebalance_timeout_ms());
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let result = self.join_result(&id, false);
            if let Some(m) = self.members.get_mut(&id) {
                m.session_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
                m.assignment = Bytes::new();
                if let Some(tx) = m.join_waiter.take() {
                    out.joins.push((tx, result));
                }
            }
        }
    }

    /// The protocol every member supports that most members prefer (ties
    /// go to the leader's preference order).
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(n, _)| n)
            .filter(|n| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(x, _)| x == *n))
            })
            .collect();
        let mut votes: HashMap<&String, usize> = HashMap::new();
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(&n)) {
                *votes.entry(name).or_default() += 1;
            }
        }
        let best = candidates
            .iter()
            .map(|c| votes.get(c).copied().unwrap_or(0))
            .max()?;
        candidates
            .into_iter()
            .find(|c| votes.get(c).copied().unwrap_or(0) == best)
            .cloned()
    }

    fn join_result(&self, member_id: &str, skip_assignment: bool) -> JoinResult {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members
                .values()
                .map(|m| (m.id.clone(), m.instance_id.clone(), m.metadata(&protocol)))
                .collect()
        } else {
            Vec::new()
        };
        JoinResult {
            error: ErrorCode::None,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader,
            member_id: member_id.to_owned(),
            members,
            skip_assignment,
        }
    }

    /// SyncGroup.
    #[allow(clippy::too_many_arguments)]
    pub fn sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Vec<(String, Bytes)>,
        now_ms: i64,
        out: &mut Outbox,
    ) -> Reply<SyncResult> {
        if self.fenced(member_id, instance_id) {
            return Reply::Now(SyncResult::error(ErrorCode::FencedInstanceId));
        }
        if !self.members.contains_key(member_id) || self.state == ClassicState::Dead {
            return Reply::Now(SyncResult::error(ErrorCode::UnknownMemberId));
        }
        if generation != self.generation {
            return Reply::Now(SyncResult::error(ErrorCode::IllegalGeneration));
        }
        if protocol_type.is_some_and(|t| Some(t) != self.protocol_type.as_deref())
            || protocol_name.is_some_and(|n| Some(n) != self.protocol_name.as_deref())
        {
            return Reply::Now(SyncResult::error(ErrorCode::InconsistentGroupProtocol));
        }
        if let Some(m) = self.members.get_mut(member_id) {
            m.session_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
        }
        match self.state {
            ClassicState::Empty | ClassicState::Dead => {
                Reply::Now(SyncResult::error(ErrorCode::UnknownMemberId))
            }
            ClassicState::PreparingRebalance => {
                Reply::Now(SyncResult::error(ErrorCode::RebalanceInProgress))
            }
            ClassicState::Stable => Reply::Now(self.sync_result(member_id)),
            ClassicState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(m) = self.members.get_mut(member_id) {
                    m.sync_waiter = Some(tx);
                }
                if self.leader.as_deref() == Some(member_id) {
                    let mut given: HashMap<String, Bytes> = assignments.into_iter().collect();
                    for m in self.members.values_mut() {
                        m.assignment = given.remove(&m.id).unwrap_or_default();
                    }
                    self.state = ClassicState::Stable;
                    self.sync_deadline_ms = None;
                    out.persist = true;
                    let ids: Vec<String> = self.members.keys().cloned().collect();
                    for id in ids {
                        let result = self.sync_result(&id);
                        if let Some(tx) =
                            self.members.get_mut(&id).and_then(|m| m.sync_waiter.take())
                        {
                            out.syncs.push((tx, result));
                        }
                    }
                }
                Reply::Later(rx)
            }
        }
    }

    fn sync_result(&self, member_id: &str) -> SyncResult {
        SyncResult {
            error: ErrorCode::None,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment: self
                .members
                .get(member_id)
                .map_or_else(Bytes::new, |m| m.assignment.clone()),
        }
    }

    /// After the group could not be written: an assignment just handed out
    /// is void, so the members join again (Kafka resets the assignment and
    /// prepares a rebalance).
    pub fn rebalance_after_failed_write(
        &mut self,
        now_ms: i64,
        config: &GroupConfig,
        out: &mut Outbox,
    ) {
        if self.state == ClassicState::Stable {
            for m in self.members.values_mut() {
                m.assignment = Bytes::new();
            }
            self.prepare_rebalance(now_ms, config, out);
            self.maybe_complete_join(now_ms, out);
        }
    }

    /// Heartbeat.
    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now_ms: i64,
    ) -> ErrorCode {
        if self.fenced(member_id, instance_id) {
            return ErrorCode::FencedInstanceId;
        }
        if matches!(self.state, ClassicState::Empty | ClassicState::Dead) {
            return ErrorCode::UnknownMemberId;
        }
        let Some(m) = self.members.get_mut(member_id) else {
            return ErrorCode::UnknownMemberId;
        };
        if generation != self.generation {
            return ErrorCode::IllegalGeneration;
        }
        m.session_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
        if self.state == ClassicState::PreparingRebalance {
            ErrorCode::RebalanceInProgress
        } else {
            ErrorCode::None
        }
    }

    /// LeaveGroup for one member (by id, or by instance id).
    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        now_ms: i64,
        config: &GroupConfig,
        out: &mut Outbox,
    ) -> ErrorCode {
        let id = match instance_id {
            Some(instance) => match self.static_members.get(instance) {
                None => return ErrorCode::UnknownMemberId,
                Some(holder) if !member_id.is_empty() && holder != member_id => {
                    return ErrorCode::FencedInstanceId;
                }
                Some(holder) => holder.clone(),
            },
            None => member_id.to_owned(),
        };
        if self.pending.remove(&id).is_some() {
            self.maybe_complete_join(now_ms, out);
            return ErrorCode::None;
        }
        if !self.members.contains_key(&id) {
            return ErrorCode::UnknownMemberId;
        }
        self.remove(&id, out);
        self.after_removal(now_ms, config, out);
        ErrorCode::None
    }

    fn remove(&mut self, member_id: &str, out: &mut Outbox) {
        if let Some(mut m) = self.members.shift_remove(member_id) {
            if let Some(instance) = &m.instance_id {
                remove_if_held(&mut self.static_members, instance, member_id);
            }
            if let Some(tx) = m.join_waiter.take() {
                out.joins
                    .push((tx, JoinResult::error(ErrorCode::UnknownMemberId, member_id)));
            }
            if let Some(tx) = m.sync_waiter.take() {
                out.syncs
                    .push((tx, SyncResult::error(ErrorCode::UnknownMemberId)));
            }
        }
        if self.leader.as_deref() == Some(member_id) {
            self.leader = None;
        }
    }

    fn after_removal(&mut self, now_ms: i64, config: &GroupConfig, out: &mut Outbox) {
        match self.state {
            ClassicState::Stable | ClassicState::CompletingRebalance => {
                self.prepare_rebalance(now_ms, config, out);
                self.maybe_complete_join(now_ms, out);
            }
            ClassicState::PreparingRebalance => self.maybe_complete_join(now_ms, out),
            ClassicState::Empty | ClassicState::Dead => {}
        }
    }

    /// Timers: pending member ids lapse, the initial delay and the rebalance
    /// timeout end the join phase, a leader that never syncs restarts the
    /// rebalance, members that stop heartbeating leave.
    pub fn tick(&mut self, now_ms: i64, config: &GroupConfig, out: &mut Outbox) {
        let lapsed: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, deadline)| **deadline <= now_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &lapsed {
            self.pending.remove(id);
        }
        if let Some(delay) = self.initial_delay
            && delay.deadline_ms <= now_ms
        {
            if delay.member_added && now_ms < delay.max_deadline_ms {
                self.initial_delay = Some(InitialDelay {
                    deadline_ms: (now_ms + config.initial_rebalance_delay_ms)
                        .min(delay.max_deadline_ms),
                    max_deadline_ms: delay.max_deadline_ms,
                    member_added: false,
                });
            } else {
                self.initial_delay = None;
                self.rebalance_deadline_ms = Some(now_ms + self.max_rebalance_timeout_ms());
                self.maybe_complete_join(now_ms, out);
            }
        }
        if self.state == ClassicState::PreparingRebalance
            && self.rebalance_deadline_ms.is_some_and(|d| d <= now_ms)
        {
            self.complete_join(now_ms, out);
        }
        if self.state == ClassicState::CompletingRebalance
            && self.sync_deadline_ms.is_some_and(|d| d <= now_ms)
        {
            // Members that never sent SyncGroup are gone; the rest rejoin.
            let gone: Vec<String> = self
                .members
                .values()
                .filter(|m| m.sync_waiter.is_none())
                .map(|m| m.id.clone())
                .collect();
            for id in gone {
                self.remove(&id, out);
            }
            self.prepare_rebalance(now_ms, config, out);
            self.maybe_complete_join(now_ms, out);
        }
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                m.join_waiter.is_none()
                    && m.sync_waiter.is_none()
                    && m.session_deadline_ms <= now_ms
            })
            .map(|m| m.id.clone())
            .collect();
        if !expired.is_empty() {
            for id in &expired {
                tracing::info!(group = %self.id, member = %id, "member session expired");
                self.remove(id, out);
            }
            self.after_removal(now_ms, config, out);
        }
        if !lapsed.is_empty() {
            self.maybe_complete_join(now_ms, out);
        }
    }

    /// Topics the members of a `consumer` group subscribe to (from their
    /// subscription metadata), for OffsetDelete.
    pub fn subscribed_topics(&self) -> BTreeSet<String> {
        let mut topics = BTreeSet::new();
        if self.protocol_type.as_deref() != Some("consumer") {
            return topics;
        }
        let protocol = self.protocol_name.clone().unwrap_or_default();
        for m in self.members.values() {
            let metadata = m.metadata(&protocol);
            if let Some(subscription) = decode_subscription(&metadata) {
                topics.extend(subscription.topics.into_iter().map(|t| t.to_string()));
            }
        }
        topics
    }

    /// Members for DescribeGroups: id, instance, client id, host, metadata,
    /// assignment.
    #[allow(clippy::type_complexity)]
    pub fn describe_members(&self) -> Vec<(String, Option<String>, String, String, Bytes, Bytes)> {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        self.members
            .values()
            .map(|m| {
                (
                    m.id.clone(),
                    m.instance_id.clone(),
                    m.client_id.clone(),
                    m.client_host.clone(),
                    m.metadata(&protocol),
                    m.assignment.clone(),
                )
            })
            .collect()
    }

    /// The persisted form.
    pub fn to_value(&self) -> GroupValue {
        GroupValue::Classic {
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            generation: self.generation,
            leader: self.leader.clone(),
            empty_since_ms: Some(self.empty_since_ms),
            members: self
                .members
                .values()
                .map(|m| ClassicMemberValue {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout_ms: m.session_timeout_ms,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    protocols: m
                        .protocols
                        .iter()
                        .map(|(n, b)| ProtocolValue {
                            name: n.clone(),
                            metadata: b.to_vec(),
                        })
                        .collect(),
                    assignment: m.assignment.to_vec(),
                })
                .collect(),
        }
    }

    /// Restores a persisted group: stable with its members, who get a fresh
    /// session to heartbeat in (as Kafka after loading a group).
    pub fn from_value(id: &str, value: GroupValue, now_ms: i64) -> Option<Self> {
        let GroupValue::Classic {
            protocol_type,
            protocol_name,
            generation,
            leader,
            members,
            empty_since_ms,
        } = value
        else {
            return None;
        };
        let mut group = Self::new(id, now_ms);
        group.empty_since_ms = empty_since_ms.unwrap_or(now_ms);
        group.protocol_type = protocol_type;
        group.protocol_name = protocol_name;
        group.generation = generation;
        group.leader = leader;
        for m in members {
            if let Some(instance) = &m.instance_id {
                group
                    .static_members
                    .insert(instance.clone(), m.member_id.clone());
            }
            group.members.insert(
                m.member_id.clone(),
                Member {
                    id: m.member_id,
                    instance_id: m.instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout_ms: m.session_timeout_ms,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    protocol_type: group.protocol_type.clone().unwrap_or_default(),
                    protocols: m
                        .protocols
                        .into_iter()
                        .map(|p| (p.name, Bytes::from(p.metadata)))
                        .collect(),
                    assignment: Bytes::from(m.assignment),
                    join_waiter: None,
                    sync_waiter: None,
                    session_deadline_ms: now_ms + i64::from(m.session_timeout_ms),
                },
            );
        }
        group.state = if group.members.is_empty() {
            ClassicState::Empty
        } else {
            ClassicState::Stable
        };
        Some(group)
    }
}

/// A consumer protocol subscription: i16 version, then the versioned body.
pub fn decode_subscription(metadata: &Bytes) -> Option<ConsumerProtocolSubscription> {
    let mut buf = metadata.clone();
    if buf.len() < 2 {
        return None;
    }
    let version = i16::from_be_bytes([buf[0], buf[1]]);
    let _ = bytes::Buf::copy_to_bytes(&mut buf, 2);
    // Newer versions keep the older fields first: read as the highest we know.
    ConsumerProtocolSubscription::decode(&mut buf, version.clamp(0, 3)).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn config(delay_ms: i64) -> GroupConfig {
        let mut c = GroupConfig::from_properties(&BTreeMap::new()).unwrap();
        c.initial_rebalance_delay_ms = delay_ms;
        c
    }

    fn request(member: &str, instance: Option<&str>) -> JoinRequest {
        JoinRequest {
            member_id: member.into(),
            instance_id: instance.map(Into::into),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 20_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"m"))],
            require_known_member_id: true,
        }
    }

    fn now<T>(reply: Reply<T>) -> T {
        match reply {
            Reply::Now(r) => r,
            Reply::Later(_) => panic!("expected an answer now"),
        }
    }

    fn later<T>(reply: Reply<T>, out: Outbox) -> T {
        out.deliver();
        match reply {
            Reply::Now(_) => panic!("expected a parked request"),
            Reply::Later(mut rx) => rx.try_recv().expect("answered"),
        }
    }

    /// Joins a new dynamic member (MEMBER_ID_REQUIRED first); the parked join.
    fn join_new(
        g: &mut ClassicGroup,
        at: i64,
        config: &GroupConfig,
    ) -> (String, Reply<JoinResult>, Outbox) {
        let mut out = Outbox::default();
        let first = now(g.join(request("", None), at, config, &mut out));
        assert_eq!(first.error, ErrorCode::MemberIdRequired);
        let mut out = Outbox::default();
        let reply = g.join(request(&first.member_id, None), at, config, &mut out);
        (first.member_id, reply, out)
    }

    #[test]
    fn a_second_member_makes_the_group_rebalance_and_the_leader_assigns() {
        let config = config(0);
        let mut g = ClassicGroup::new("g", 0);
        let (a, reply, out) = join_new(&mut g, 0, &config);
        let joined = later(reply, out);
        assert_eq!((joined.generation, joined.leader.as_str()), (1, a.as_str()));
        let mut out = Outbox::default();
        let synced = g.sync(
            &a,
            None,
            1,
            None,
            None,
            vec![(a.clone(), Bytes::from_static(b"all"))],
            0,
            &mut out,
        );
        assert_eq!(later(synced, out).assignment, Bytes::from_static(b"all"));
        assert_eq!(g.state, ClassicState::Stable);

        let (b, b_join, _) = join_new(&mut g, 1, &config);
        assert_eq!(g.state, ClassicState::PreparingRebalance);
        assert_eq!(g.heartbeat(&a, None, 1, 2), ErrorCode::RebalanceInProgress);
        assert_eq!(
            g.validate_commit(&a, None, 1),
            Ok(()),
            "commits go on while members rejoin"
        );
        let mut out = Outbox::default();
        let a_join = g.join(request(&a, None), 3, &config, &mut out);
        assert!(matches!(b_join, Reply::Later(_)));
        let leader = later(a_join, out);
        assert_eq!((leader.generation, leader.members.len()), (2, 2));
        assert_eq!(
            g.validate_commit(&a, None, 1),
            Err(ErrorCode::IllegalGeneration)
        );
        assert_eq!(
            g.validate_commit(&a, None, 2),
            Err(ErrorCode::RebalanceInProgress)
        );

        let mut out = Outbox::default();
        let b_sync = g.sync(&b, None, 2, None, None, vec![], 4, &mut out);
        let plan = vec![
            (a.clone(), Bytes::from_static(b"p0")),
            (b.clone(), Bytes::from_static(b"p1")),
        ];
        let a_sync = g.sync(&a, None, 2, None, None, plan, 5, &mut out);
        out.deliver();
        let (Reply::Later(mut b_rx), Reply::Later(mut a_rx)) = (b_sync, a_sync) else {
            panic!("both parked");
        };
        assert_eq!(
            b_rx.try_recv().unwrap().assignment,
            Bytes::from_static(b"p1")
        );
        assert_eq!(
            a_rx.try_recv().unwrap().assignment,
            Bytes::from_static(b"p0")
        );
        assert_eq!(g.heartbeat(&b, None, 2, 6), ErrorCode::None);
    }

    #[test]
    fn the_initial_delay_waits_for_more_members() {
        let config = config(3_000);
        let mut g = ClassicGroup::new("g", 0);
        let (_, a, mut out) = join_new(&mut g, 0, &config);
        g.tick(1_000, &config, &mut out);
        assert_eq!(g.state, ClassicState::PreparingRebalance);
        let (_, b, out_b) = join_new(&mut g, 2_000, &config);
        out_b.deliver();
        // The delay is extended once for the new member, then the join ends.
        g.tick(3_000, &config, &mut out);
        assert_eq!(g.state, ClassicState::PreparingRebalance);
        g.tick(6_000, &config, &mut out);
        assert_eq!(g.state, ClassicState::CompletingRebalance);
        out.deliver();
        let (Reply::Later(mut a), Reply::Later(mut b)) = (a, b) else {
            panic!("both parked");
        };
        assert_eq!(a.try_recv().unwrap().generation, 1);
        assert_eq!(b.try_recv().unwrap().generation, 1);
    }

    #[test]
    fn a_static_member_rejoining_a_stable_group_causes_no_rebalance() {
        let config = config(0);
        let mut g = ClassicGroup::new("g", 0);
        let mut out = Outbox::default();
        let first = g.join(request("", Some("i")), 0, &config, &mut out);
        let joined = later(first, out);
        let mut out = Outbox::default();
        let sync = g.sync(
            &joined.member_id,
            Some("i"),
            1,
            None,
            None,
            vec![(joined.member_id.clone(), Bytes::from_static(b"x"))],
            0,
            &mut out,
        );
        later(sync, out);

        let mut out = Outbox::default();
        let again = now(g.join(request("", Some("i")), 10, &config, &mut out));
        assert_eq!(
            (again.error, again.generation),
            (ErrorCode::None, 1),
            "same generation"
        );
        assert_ne!(again.member_id, joined.member_id);
        assert_eq!(g.state, ClassicState::Stable);
        assert_eq!(
            g.heartbeat(&joined.member_id, Some("i"), 1, 11),
            ErrorCode::FencedInstanceId
        );
        let mut out = Outbox::default();
        let sync = now(g.sync(
            &again.member_id,
            Some("i"),
            1,
            None,
            None,
            vec![],
            12,
            &mut out,
        ));
        assert_eq!(
            sync.assignment,
            Bytes::from_static(b"x"),
            "the assignment is kept"
        );
    }

    #[test]
    fn a_silent_member_expires_and_the_group_empties() {
        let config = config(0);
        let mut g = ClassicGroup::new("g", 0);
        let (a, reply, out) = join_new(&mut g, 0, &config);
        later(reply, out);
        let mut out = Outbox::default();
        later(g.sync(&a, None, 1, None, None, vec![], 0, &mut out), out);
        let mut out = Outbox::default();
        g.tick(9_999, &config, &mut out);
        assert!(g.has_member(&a));
        g.tick(10_000, &config, &mut out);
        assert!(g.is_empty());
        assert_eq!(g.state, ClassicState::Empty);
        assert_eq!(
            g.protocol_type.as_deref(),
            Some("consumer"),
            "kept for offset expiry"
        );
    }

    #[test]
    fn only_an_assigned_or_emptied_group_is_written() {
        let config = config(0);
        let mut g = ClassicGroup::new("g", 0);
        let (a, reply, out) = join_new(&mut g, 0, &config);
        // The join phase ended with a member: nothing to write until the
        // leader's assignment (a restart now brings back the previous
        // generation, whose members rejoin).
        assert!(!out.persist);
        later(reply, out);
        let mut out = Outbox::default();
        let sync = g.sync(&a, None, 1, None, None, vec![], 0, &mut out);
        assert!(out.persist);
        later(sync, out);
        let mut out = Outbox::default();
        assert_eq!(g.leave(&a, None, 1, &config, &mut out), ErrorCode::None);
        assert!(out.persist, "the emptied group is written");
        let value = g.to_value();
        let restored = ClassicGroup::from_value("g", value.clone(), 99).unwrap();
        assert_eq!(restored.to_value(), value);
        assert_eq!(restored.empty_since_ms, 1);
    }

    #[test]
    fn the_group_size_limit_holds_for_members_that_rejoin_with_their_id() {
        let mut config = config(0);
        config.max_size = Some(1);
        let mut g = ClassicGroup::new("g", 0);
        let mut out = Outbox::default();
        let first = now(g.join(request("", None), 0, &config, &mut out));
        let second = now(g.join(request("", None), 0, &config, &mut out));
        assert_eq!(
            (first.error, second.error),
            (ErrorCode::MemberIdRequired, ErrorCode::MemberIdRequired)
        );
        let _parked = g.join(request(&first.member_id, None), 0, &config, &mut out);
        let refused = now(g.join(request(&second.member_id, None), 0, &config, &mut out));
        assert_eq!(refused.error, ErrorCode::GroupMaxSizeReached);
        assert_eq!(g.member_count(), 1);
    }
}
