//! KIP-848 consumer groups: ConsumerGroupHeartbeat with server-side
//! assignment.
//!
//! The group has an epoch that goes up whenever what the assignment depends
//! on changes (members, subscriptions, the partitions of subscribed topics).
//! The coordinator then computes a target assignment with the group's
//! assignor, stamped with that epoch, and brings each member to its target
//! one heartbeat at a time:
//!
//! ```text
//! Stable ──target changed──> UnrevokedPartitions ──client owns none of them──┐
//!   ^                         (revoke first; keep epoch)                     │
//!   │                                                                        v
//!   └──────── all target partitions free ─── UnreleasedPartitions <── new epoch
//!                                            (wait for other members
//!                                             to give partitions up)
//! ```
//!
//! A partition is given to a member only once no other member owns it (has
//! it assigned or still has to confirm its revocation), so no partition is
//! ever consumed by two members at once.
//!
//! A member subscribes to topic names, to a regular expression
//! (`SubscribedTopicRegex`), or both. As Kafka 4, the broker evaluates the
//! expression with RE2 syntax against every topic name, matching whole names
//! (`orders-.*` matches `orders-eu`, not `my-orders-eu`), and evaluates it
//! again whenever the metadata image changed, so topics created or deleted
//! later join or leave the subscription at the next heartbeat.
//!
//! The group is pure state, as [`super::classic`]: the coordinator persists
//! it and answers.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use strom_controller::MetadataImage;
use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::Uuid;

use super::assignor::{Assignor, MemberSpec, TopicMetadata};
use super::store::{ConsumerMemberValue, GroupValue};
use super::{GroupConfig, remove_if_held};

/// Bound on a `SubscribedTopicRegex`'s length: an expression is a handful
/// of topic patterns (librdkafka joins a subscription's patterns into one),
/// never megabytes; a longer one is refused before it is parsed.
pub const MAX_SUBSCRIBED_REGEX_BYTES: usize = 32 * 1024;
/// Bound on the compiled size of one expression (the `regex` crate's
/// `size_limit`): matching stays linear in the topic name, and this caps the
/// memory a hostile expression like `(a{1000}){1000}` can take.
const SUBSCRIBED_REGEX_COMPILED_BYTES_MAX: usize = 1 << 20;

/// Compiles a `SubscribedTopicRegex` to match whole topic names (Kafka's
/// RE2/J `matches()`), or says why it is not a valid expression.
pub fn compile_topic_regex(regex: &str) -> Result<regex::Regex, String> {
    if regex.len() > MAX_SUBSCRIBED_REGEX_BYTES {
        return Err(format!(
            "SubscribedTopicRegex is {} bytes long, above the limit of {MAX_SUBSCRIBED_REGEX_BYTES}.",
            regex.len()
        ));
    }
    regex::RegexBuilder::new(&format!("^(?:{regex})$"))
        .size_limit(SUBSCRIBED_REGEX_COMPILED_BYTES_MAX)
        .build()
        .map_err(|e| {
            format!(
                "SubscribedTopicRegex `{regex}` is not a valid regular expression: {}.",
                e.to_string().lines().last().unwrap_or_default().trim()
            )
        })
}

/// Partitions by topic id.
pub type Partitions = BTreeMap<Uuid, BTreeSet<i32>>;

/// The member epoch a member sends to leave the group.
pub const LEAVE_EPOCH: i32 = -1;
/// The member epoch a static member sends to leave for a while (KIP-345):
/// it keeps its assignment until its session times out.
pub const LEAVE_STATIC_EPOCH: i32 = -2;

/// Where a member is on its way to its target assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    Stable,
    /// The member must give partitions up before it moves on.
    UnrevokedPartitions,
    /// The member waits for partitions other members still own.
    UnreleasedPartitions,
}

/// A ConsumerGroupHeartbeat, version-independent.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    /// -1: unchanged.
    pub rebalance_timeout_ms: i32,
    /// `None`: unchanged.
    pub subscribed_topic_names: Option<Vec<String>>,
    /// `None`: unchanged; `Some("")`: no regex any more.
    pub subscribed_topic_regex: Option<String>,
    pub server_assignor: Option<String>,
    /// What the client owns now; `None`: unchanged.
    pub owned: Option<Vec<(Uuid, Vec<i32>)>>,
    pub client_id: String,
    pub client_host: String,
}

/// The answer to a ConsumerGroupHeartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatResult {
    pub error: ErrorCode,
    pub message: Option<String>,
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: i32,
    /// Sent on a full request and whenever the assignment changed.
    pub assignment: Option<Partitions>,
}

impl HeartbeatResult {
    pub fn error(error: ErrorCode, message: impl Into<String>, member_id: &str) -> Self {
        Self {
            error,
            message: Some(message.into()),
            member_id: member_id.to_owned(),
            member_epoch: 0,
            heartbeat_interval_ms: 0,
            assignment: None,
        }
    }
}

#[derive(Debug, Clone)]
struct Member {
    id: String,
    instance_id: Option<String>,
    rack_id: Option<String>,
    client_id: String,
    client_host: String,
    rebalance_timeout_ms: i32,
    /// Topics subscribed to by name.
    subscribed: BTreeSet<String>,
    /// The regular expression subscribed to, if any (its matches are in
    /// [`ConsumerGroup::resolved_regexes`]).
    subscribed_regex: Option<String>,
    server_assignor: Option<String>,
    epoch: i32,
    previous_epoch: i32,
    state: MemberState,
    assigned: Partitions,
    pending_revocation: Partitions,
    session_deadline_ms: i64,
    /// Set while the member is revoking: it is fenced if still revoking then.
    revocation_deadline_ms: Option<i64>,
    /// A static member that left with epoch -2: its instance may come back
    /// under a new member id and take its place.
    left_static: bool,
}

/// A KIP-848 consumer group.
#[derive(Debug)]
pub struct ConsumerGroup {
    pub id: String,
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    members: BTreeMap<String, Member>,
    /// Static instance id -> member id.
    static_members: HashMap<String, String>,
    target: BTreeMap<String, Partitions>,
    /// Which member owns a partition (assigned, or still to confirm its
    /// revocation).
    owners: HashMap<(Uuid, i32), String>,
    /// The subscribed topics (id -> partition count) the target was
    /// computed for: a change bumps the group epoch.
    subscribed_metadata: BTreeMap<Uuid, i32>,
    /// Every regex a member subscribes to, compiled, with the topics it
    /// matches in the image at `regexes_resolved_at`. Bounded by the members
    /// (`group.consumer.max.size`) and each regex's compiled size.
    resolved_regexes: BTreeMap<String, (regex::Regex, BTreeSet<String>)>,
    /// The metadata image offset the regexes were last matched against.
    regexes_resolved_at: i64,
    /// When the group last became empty (offset expiry counts from here).
    pub empty_since_ms: i64,
}

fn owned_set(owned: &[(Uuid, Vec<i32>)]) -> BTreeSet<(Uuid, i32)> {
    owned
        .iter()
        .flat_map(|(t, ps)| ps.iter().map(move |p| (*t, *p)))
        .collect()
}

fn flatten(p: &Partitions) -> impl Iterator<Item = (Uuid, i32)> + '_ {
    p.iter()
        .flat_map(|(t, ps)| ps.iter().map(move |p| (*t, *p)))
}

fn insert(p: &mut Partitions, topic: Uuid, partition: i32) {
    p.entry(topic).or_default().insert(partition);
}

impl ConsumerGroup {
    pub fn new(id: &str, now_ms: i64) -> Self {
        Self {
            id: id.to_owned(),
            group_epoch: 0,
            assignment_epoch: 0,
            members: BTreeMap::new(),
            static_members: HashMap::new(),
            target: BTreeMap::new(),
            owners: HashMap::new(),
            subscribed_metadata: BTreeMap::new(),
            resolved_regexes: BTreeMap::new(),
            regexes_resolved_at: -1,
            empty_since_ms: now_ms,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Kafka's state names for consumer groups.
    pub fn state_name(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.group_epoch > self.assignment_epoch {
            "Assigning"
        } else if self
            .members
            .values()
            .any(|m| m.epoch != self.assignment_epoch || m.state != MemberState::Stable)
        {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    /// The assignor the group uses: the one most members ask for, else the
    /// broker's first configured one.
    pub fn assignor(&self, config: &GroupConfig) -> Assignor {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some(name) = &m.server_assignor {
                *votes.entry(name.as_str()).or_default() += 1;
            }
        }
        votes
            .iter()
            .max_by_key(|(_, v)| **v)
            .and_then(|(name, _)| Assignor::from_name(name))
            .or_else(|| config.consumer_assignors.first().copied())
            .unwrap_or(Assignor::DEFAULT)
    }

    /// Topics any member subscribes to, by name or by regex.
    pub fn subscribed_topics(&self) -> BTreeSet<String> {
        self.members
            .values()
            .flat_map(|m| self.member_topics(m))
            .collect()
    }

    /// The topics a member subscribes to: its names and its regex's matches.
    fn member_topics(&self, m: &Member) -> BTreeSet<String> {
        let mut topics = m.subscribed.clone();
        if let Some((_, matched)) = m
            .subscribed_regex
            .as_ref()
            .and_then(|r| self.resolved_regexes.get(r))
        {
            topics.extend(matched.iter().cloned());
        }
        topics
    }

    /// Brings the regexes' matches up to date: compiles new ones, forgets
    /// unused ones, and matches them against every topic when the image
    /// changed since the last look. Returns whether any match changed (the
    /// caller bumps the group epoch).
    fn refresh_regexes(&mut self, image: &MetadataImage) -> bool {
        let in_use: BTreeSet<&String> = self
            .members
            .values()
            .filter_map(|m| m.subscribed_regex.as_ref())
            .collect();
        let before = self.resolved_regexes.len();
        self.resolved_regexes.retain(|r, _| in_use.contains(r));
        let mut changed = self.resolved_regexes.len() != before;
        let mut added = false;
        for r in in_use {
            if self.resolved_regexes.contains_key(r) {
                continue;
            }
            match compile_topic_regex(r) {
                Ok(compiled) => {
                    self.resolved_regexes
                        .insert(r.clone(), (compiled, BTreeSet::new()));
                    added = true;
                }
                // Checked when the member sent it; a persisted one that no
                // longer compiles matches nothing.
                Err(e) => {
                    tracing::warn!(group = %self.id, error = %e, "ignoring a subscribed regex")
                }
            }
        }
        if !added && self.regexes_resolved_at == image.offset {
            return changed;
        }
        self.regexes_resolved_at = image.offset;
        for (compiled, matched) in self.resolved_regexes.values_mut() {
            let now: BTreeSet<String> = image
                .topics()
                .filter(|t| compiled.is_match(&t.name))
                .map(|t| t.name.clone())
                .collect();
            if now != *matched {
                *matched = now;
                changed = true;
            }
        }
        changed
    }

    /// Validates an offset commit or a fetch with a member epoch.
    pub fn validate_commit(
        &self,
        member_id: &str,
        epoch: i32,
        stale: ErrorCode,
    ) -> Result<(), ErrorCode> {
        if member_id.is_empty() && epoch < 0 {
            // An admin or a standalone consumer: only while nobody is in the group.
            return if self.members.is_empty() {
                Ok(())
            } else {
                Err(ErrorCode::UnknownMemberId)
            };
        }
        let m = self
            .members
            .get(member_id)
            .ok_or(ErrorCode::UnknownMemberId)?;
        if epoch != m.epoch {
            return Err(stale);
        }
        Ok(())
    }

    /// ConsumerGroupHeartbeat. Returns the answer and whether the group's
    /// persisted state changed.
    pub fn heartbeat(
        &mut self,
        request: Heartbeat,
        now_ms: i64,
        image: &MetadataImage,
        config: &GroupConfig,
    ) -> (HeartbeatResult, bool) {
        let mut persist = false;
        let result = match self.heartbeat_inner(request, now_ms, image, config, &mut persist) {
            Ok(r) => r,
            Err((error, message, member_id)) => HeartbeatResult::error(error, message, &member_id),
        };
        (result, persist)
    }

    fn heartbeat_inner(
        &mut self,
        request: Heartbeat,
        now_ms: i64,
        image: &MetadataImage,
        config: &GroupConfig,
        persist: &mut bool,
    ) -> Result<HeartbeatResult, (ErrorCode, String, String)> {
        let fail =
            |code: ErrorCode, message: &str| (code, message.to_owned(), request.member_id.clone());
        if let Some(name) = &request.server_assignor
            && !config.consumer_assignors.iter().any(|a| a.name() == name)
        {
            return Err(fail(
                ErrorCode::UnsupportedAssignor,
                &format!(
                    "ServerAssignor {name} is not supported. Supported assignors: {}.",
                    config.assignor_names()
                ),
            ));
        }
        // A regex the group already uses is known to compile; a new one is
        // compiled here (under the coordinator's lock, hence its size bounds).
        if let Some(r) = request
            .subscribed_topic_regex
            .as_deref()
            .filter(|r| !r.is_empty())
            && !self.resolved_regexes.contains_key(r)
            && let Err(message) = compile_topic_regex(r)
        {
            return Err(fail(ErrorCode::InvalidRegularExpression, &message));
        }
        if request.member_epoch == LEAVE_EPOCH || request.member_epoch == LEAVE_STATIC_EPOCH {
            return self.leave(&request, now_ms, image, config, persist);
        }
        if request.member_epoch < 0 {
            return Err(fail(ErrorCode::InvalidRequest, "MemberEpoch is invalid."));
        }
        let full = request.member_epoch == 0
            || (request.rebalance_timeout_ms != -1
                && request.subscribed_topic_names.is_some()
                && request.owned.is_some());
        let members_before = self.members.len();
        let member_id = if request.member_epoch == 0 {
            self.join(&request, now_ms, config, persist)?
        } else {
            self.check_epoch(&request)?;
            request.member_id.clone()
        };
        let joined = self.members.len() > members_before;
        let Some(member) = self.members.get_mut(&member_id) else {
            return Err(fail(
                ErrorCode::UnknownMemberId,
                "The member is not in the group.",
            ));
        };
        member.session_deadline_ms = now_ms + i64::from(config.consumer_session_timeout_ms);
        member.client_id.clone_from(&request.client_id);
        member.client_host.clone_from(&request.client_host);
        if request.rebalance_timeout_ms >= 0
            && member.rebalance_timeout_ms != request.rebalance_timeout_ms
        {
            member.rebalance_timeout_ms = request.rebalance_timeout_ms;
            *persist = true;
        }
        if request.rack_id.is_some() && member.rack_id != request.rack_id {
            member.rack_id.clone_from(&request.rack_id);
            *persist = true;
        }
        // What the assignment depends on changed: one new group epoch.
        let mut bump = joined;
        if request.server_assignor.is_some() && member.server_assignor != request.server_assignor {
            member.server_assignor.clone_from(&request.server_assignor);
            bump = true;
        }
        if let Some(names) = &request.subscribed_topic_names {
            let subscribed: BTreeSet<String> = names.iter().cloned().collect();
            if subscribed != member.subscribed {
                member.subscribed = subscribed;
                bump = true;
            }
        }
        if let Some(r) = &request.subscribed_topic_regex {
            let regex = Some(r.clone()).filter(|r| !r.is_empty());
            if regex != member.subscribed_regex {
                member.subscribed_regex = regex;
                bump = true;
            }
        }
        bump |= self.refresh_regexes(image);
        bump |= self.refresh_metadata(image);
        if bump {
            self.group_epoch += 1;
            *persist = true;
        }
        if self.group_epoch > self.assignment_epoch {
            self.compute_target(image, config);
            *persist = true;
        }
        let before = self.members.get(&member_id).map(|m| m.assigned.clone());
        if self.reconcile(&member_id, request.owned.as_deref(), now_ms) {
            *persist = true;
        }
        let member = self.members.get(&member_id).ok_or_else(|| {
            fail(
                ErrorCode::UnknownMemberId,
                "The member is not in the group.",
            )
        })?;
        let changed = before.as_ref() != Some(&member.assigned);
        Ok(HeartbeatResult {
            error: ErrorCode::None,
            message: None,
            member_id: member_id.clone(),
            member_epoch: member.epoch,
            heartbeat_interval_ms: config.consumer_heartbeat_interval_ms,
            assignment: (full || changed).then(|| member.assigned.clone()),
        })
    }

    /// A member joining (epoch 0): new, rejoining, or a static member
    /// coming back under a new member id.
    fn join(
        &mut self,
        request: &Heartbeat,
        now_ms: i64,
        config: &GroupConfig,
        persist: &mut bool,
    ) -> Result<String, (ErrorCode, String, String)> {
        let fail =
            |code: ErrorCode, message: &str| (code, message.to_owned(), request.member_id.clone());
        if request.subscribed_topic_names.is_none() && request.subscribed_topic_regex.is_none() {
            return Err(fail(
                ErrorCode::InvalidRequest,
                "SubscribedTopicNames or SubscribedTopicRegex must be set in first request.",
            ));
        }
        if request.rebalance_timeout_ms < 0 {
            return Err(fail(
                ErrorCode::InvalidRequest,
                "RebalanceTimeoutMs must be provided in first request.",
            ));
        }
        if request
            .owned
            .as_ref()
            .is_some_and(|o| o.iter().any(|(_, ps)| !ps.is_empty()))
        {
            return Err(fail(
                ErrorCode::InvalidRequest,
                "TopicPartitions must be empty when (re-)joining.",
            ));
        }
        let member_id = if request.member_id.is_empty() {
            // Version 0: the coordinator names the member.
            Uuid::new_v4().to_string()
        } else {
            request.member_id.clone()
        };
        if let Some(instance) = &request.instance_id
            && let Some(holder) = self.static_members.get(instance).cloned()
            && holder != member_id
        {
            let Some(old) = self.members.get(&holder) else {
                self.static_members.remove(instance);
                return self.add_member(member_id, request, now_ms, config, persist);
            };
            if !old.left_static {
                return Err(fail(
                    ErrorCode::UnreleasedInstanceId,
                    &format!(
                        "Static member {holder} with instance id {instance} is still in the group."
                    ),
                ));
            }
            // KIP-345: the instance comes back and takes its place, with its
            // assignment and epoch, and no rebalance.
            if let Some(mut m) = self.members.remove(&holder) {
                m.id.clone_from(&member_id);
                m.left_static = false;
                for (t, p) in flatten(&m.assigned).chain(flatten(&m.pending_revocation)) {
                    self.owners.insert((t, p), member_id.clone());
                }
                if let Some(target) = self.target.remove(&holder) {
                    self.target.insert(member_id.clone(), target);
                }
                self.members.insert(member_id.clone(), m);
            }
            self.static_members
                .insert(instance.clone(), member_id.clone());
            *persist = true;
            return Ok(member_id);
        }
        if self.members.contains_key(&member_id) {
            // The member lost its state (or a response): it gets its
            // current assignment again.
            return Ok(member_id);
        }
        self.add_member(member_id, request, now_ms, config, persist)
    }

    fn add_member(
        &mut self,
        member_id: String,
        request: &Heartbeat,
        now_ms: i64,
        config: &GroupConfig,
        persist: &mut bool,
    ) -> Result<String, (ErrorCode, String, String)> {
        if config
            .consumer_max_size
            .is_some_and(|max| self.members.len() >= max)
        {
            return Err((
                ErrorCode::GroupMaxSizeReached,
                format!(
                    "The consumer group has reached its maximum capacity of {} members.",
                    self.members.len()
                ),
                member_id,
            ));
        }
        if let Some(instance) = &request.instance_id {
            self.static_members
                .insert(instance.clone(), member_id.clone());
        }
        self.members.insert(
            member_id.clone(),
            Member {
                id: member_id.clone(),
                instance_id: request.instance_id.clone(),
                rack_id: request.rack_id.clone(),
                client_id: request.client_id.clone(),
                client_host: request.client_host.clone(),
                rebalance_timeout_ms: request.rebalance_timeout_ms,
                subscribed: BTreeSet::new(),
                subscribed_regex: None,
                server_assignor: None,
                epoch: 0,
                previous_epoch: 0,
                state: MemberState::Stable,
                assigned: Partitions::new(),
                pending_revocation: Partitions::new(),
                session_deadline_ms: now_ms + i64::from(config.consumer_session_timeout_ms),
                revocation_deadline_ms: None,
                left_static: false,
            },
        );
        *persist = true;
        Ok(member_id)
    }

    /// Kafka's fencing: a member may lag one epoch behind only when what it
    /// owns is still a subset of its assignment (the response bumping its
    /// epoch was lost).
    fn check_epoch(&self, request: &Heartbeat) -> Result<(), (ErrorCode, String, String)> {
        let fail =
            |code: ErrorCode, message: &str| (code, message.to_owned(), request.member_id.clone());
        let Some(m) = self.members.get(&request.member_id) else {
            return Err(fail(
                ErrorCode::UnknownMemberId,
                &format!(
                    "Member {} is not a member of group {}.",
                    request.member_id, self.id
                ),
            ));
        };
        let fenced = || {
            fail(
                ErrorCode::FencedMemberEpoch,
                &format!(
                    "The consumer group member has a smaller member epoch ({}) than the one known by the group coordinator ({}). The member must abandon all its partitions and rejoin.",
                    request.member_epoch, m.epoch
                ),
            )
        };
        if request.member_epoch > m.epoch {
            return Err(fail(
                ErrorCode::FencedMemberEpoch,
                &format!(
                    "The consumer group member has a greater member epoch ({}) than the one known by the group coordinator ({}). The member must abandon all its partitions and rejoin.",
                    request.member_epoch, m.epoch
                ),
            ));
        }
        if request.member_epoch < m.epoch {
            if request.member_epoch != m.previous_epoch {
                return Err(fenced());
            }
            if let Some(owned) = &request.owned {
                let assigned: BTreeSet<(Uuid, i32)> = flatten(&m.assigned).collect();
                if !owned_set(owned).is_subset(&assigned) {
                    return Err(fenced());
                }
            }
        }
        if let Some(instance) = &request.instance_id
            && self
                .static_members
                .get(instance)
                .is_some_and(|h| *h != request.member_id)
        {
            return Err(fail(
                ErrorCode::FencedInstanceId,
                "The instance id is held by another member.",
            ));
        }
        Ok(())
    }

    fn leave(
        &mut self,
        request: &Heartbeat,
        now_ms: i64,
        image: &MetadataImage,
        config: &GroupConfig,
        persist: &mut bool,
    ) -> Result<HeartbeatResult, (ErrorCode, String, String)> {
        let member_id = if request.member_id.is_empty() {
            request
                .instance_id
                .as_ref()
                .and_then(|i| self.static_members.get(i).cloned())
                .unwrap_or_default()
        } else {
            request.member_id.clone()
        };
        let Some(member) = self.members.get_mut(&member_id) else {
            return Err((
                ErrorCode::UnknownMemberId,
                format!("Member {member_id} is not a member of group {}.", self.id),
                member_id,
            ));
        };
        if request.member_epoch == LEAVE_STATIC_EPOCH && member.instance_id.is_some() {
            // The instance may come back within its session timeout.
            member.left_static = true;
            member.session_deadline_ms = now_ms + i64::from(config.consumer_session_timeout_ms);
            *persist = true;
        } else {
            self.remove(&member_id, now_ms);
            self.refresh_regexes(image);
            self.refresh_metadata(image);
            self.compute_target(image, config);
            *persist = true;
        }
        Ok(HeartbeatResult {
            error: ErrorCode::None,
            message: None,
            member_id,
            member_epoch: request.member_epoch,
            heartbeat_interval_ms: 0,
            assignment: None,
        })
    }

    fn remove(&mut self, member_id: &str, now_ms: i64) {
        if let Some(m) = self.members.remove(member_id) {
            for tp in flatten(&m.assigned).chain(flatten(&m.pending_revocation)) {
                remove_if_held(&mut self.owners, &tp, member_id);
            }
            if let Some(instance) = &m.instance_id {
                remove_if_held(&mut self.static_members, instance, member_id);
            }
        }
        self.target.remove(member_id);
        self.group_epoch += 1;
        if self.members.is_empty() {
            self.empty_since_ms = now_ms;
        }
    }

    /// Whether a subscribed topic appeared, went or changed its partition
    /// count since the last look (the caller bumps the group epoch).
    fn refresh_metadata(&mut self, image: &MetadataImage) -> bool {
        let now: BTreeMap<Uuid, i32> = self
            .subscribed_topics()
            .iter()
            .filter_map(|name| image.topic(name))
            .map(|t| (t.id, i32::try_from(t.partitions.len()).unwrap_or(i32::MAX)))
            .collect();
        if now == self.subscribed_metadata {
            return false;
        }
        self.subscribed_metadata = now;
        true
    }

    fn compute_target(&mut self, image: &MetadataImage, config: &GroupConfig) {
        let mut topics = BTreeMap::new();
        let members: BTreeMap<String, MemberSpec> = self
            .members
            .values()
            .map(|m| {
                let subscribed: BTreeSet<Uuid> = self
                    .member_topics(m)
                    .iter()
                    .filter_map(|name| image.topic(name))
                    .map(|t| {
                        topics.insert(
                            t.id,
                            TopicMetadata {
                                id: t.id,
                                name: t.name.clone(),
                                partitions: i32::try_from(t.partitions.len()).unwrap_or(i32::MAX),
                            },
                        );
                        t.id
                    })
                    .collect();
                (
                    m.id.clone(),
                    MemberSpec {
                        subscribed,
                        current: m.assigned.clone(),
                        rack: m.rack_id.clone(),
                    },
                )
            })
            .collect();
        self.target = self.assignor(config).assign(&members, &topics);
        self.assignment_epoch = self.group_epoch;
    }

    /// Moves a member towards its target (see the module docs). Returns
    /// whether its state changed.
    fn reconcile(
        &mut self,
        member_id: &str,
        owned: Option<&[(Uuid, Vec<i32>)]>,
        now_ms: i64,
    ) -> bool {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let assignment_epoch = self.assignment_epoch;
        let Some(m) = self.members.get_mut(member_id) else {
            return false;
        };
        let mut changed = false;
        if m.state == MemberState::UnrevokedPartitions {
            let Some(owned) = owned else {
                return false;
            };
            let owned = owned_set(owned);
            if flatten(&m.pending_revocation).any(|tp| owned.contains(&tp)) {
                return false;
            }
            // Revocation done: the partitions are free for others.
            for tp in flatten(&m.pending_revocation) {
                remove_if_held(&mut self.owners, &tp, member_id);
            }
            m.pending_revocation.clear();
            m.revocation_deadline_ms = None;
            m.state = MemberState::Stable;
            changed = true;
            // The epoch moves on once nothing is left to revoke.
            if m.epoch != assignment_epoch {
                m.previous_epoch = m.epoch;
                m.epoch = assignment_epoch;
            }
        }
        if m.epoch == assignment_epoch && m.state == MemberState::Stable && m.assigned == target {
            return changed;
        }
        let mut keep = Partitions::new();
        let mut revoke = Partitions::new();
        for (t, p) in flatten(&m.assigned) {
            if target.get(&t).is_some_and(|ps| ps.contains(&p)) {
                insert(&mut keep, t, p);
            } else {
                insert(&mut revoke, t, p);
            }
        }
        if !revoke.is_empty() {
            m.assigned = keep;
            m.pending_revocation = revoke;
            m.state = MemberState::UnrevokedPartitions;
            m.revocation_deadline_ms = Some(now_ms + i64::from(m.rebalance_timeout_ms.max(0)));
            return true;
        }
        let mut unreleased = false;
        for (t, p) in flatten(&target) {
            if m.assigned.get(&t).is_some_and(|ps| ps.contains(&p)) {
                continue;
            }
            match self.owners.get(&(t, p)) {
                Some(owner) if owner != member_id => unreleased = true,
                _ => {
                    self.owners.insert((t, p), member_id.to_owned());
                    insert(&mut m.assigned, t, p);
                    changed = true;
                }
            }
        }
        if m.epoch != assignment_epoch {
            m.previous_epoch = m.epoch;
            m.epoch = assignment_epoch;
            changed = true;
        }
        let state = if unreleased {
            MemberState::UnreleasedPartitions
        } else {
            MemberState::Stable
        };
        changed |= m.state != state;
        m.state = state;
        changed
    }

    /// Timers: members that stop heartbeating, and members that do not
    /// revoke within their rebalance timeout, leave the group. Returns
    /// whether the group changed.
    pub fn tick(&mut self, now_ms: i64, image: &MetadataImage, config: &GroupConfig) -> bool {
        let gone: Vec<(String, &'static str)> = self
            .members
            .values()
            .filter_map(|m| {
                if m.session_deadline_ms <= now_ms {
                    Some((m.id.clone(), "session timed out"))
                } else if m.revocation_deadline_ms.is_some_and(|d| d <= now_ms) {
                    Some((
                        m.id.clone(),
                        "did not revoke its partitions within the rebalance timeout",
                    ))
                } else {
                    None
                }
            })
            .collect();
        if gone.is_empty() {
            return false;
        }
        for (id, why) in &gone {
            tracing::info!(group = %self.id, member = %id, "consumer group member removed: {why}");
            self.remove(id, now_ms);
        }
        self.refresh_regexes(image);
        self.refresh_metadata(image);
        self.compute_target(image, config);
        true
    }

    /// Members for ConsumerGroupDescribe.
    pub fn describe_members(&self) -> Vec<DescribedMember> {
        self.members
            .values()
            .map(|m| DescribedMember {
                member_id: m.id.clone(),
                instance_id: m.instance_id.clone(),
                rack_id: m.rack_id.clone(),
                member_epoch: m.epoch,
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                subscribed_topic_names: m.subscribed.iter().cloned().collect(),
                subscribed_topic_regex: m.subscribed_regex.clone(),
                assignment: m.assigned.clone(),
                target: self.target.get(&m.id).cloned().unwrap_or_default(),
            })
            .collect()
    }

    /// The persisted form.
    pub fn to_value(&self, config: &GroupConfig) -> GroupValue {
        let list = |p: &Partitions| -> Vec<(Uuid, Vec<i32>)> {
            p.iter()
                .map(|(t, ps)| (*t, ps.iter().copied().collect()))
                .collect()
        };
        GroupValue::Consumer {
            group_epoch: self.group_epoch,
            assignment_epoch: self.assignment_epoch,
            assignor: self.assignor(config).name().to_owned(),
            members: self
                .members
                .values()
                .map(|m| ConsumerMemberValue {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    rack_id: m.rack_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    subscribed_topic_names: m.subscribed.iter().cloned().collect(),
                    subscribed_topic_regex: m.subscribed_regex.clone(),
                    server_assignor: m.server_assignor.clone(),
                    member_epoch: m.epoch,
                    previous_member_epoch: m.previous_epoch,
                    assigned: list(&m.assigned),
                    pending_revocation: list(&m.pending_revocation),
                    left_static: m.left_static,
                })
                .collect(),
            target: self
                .target
                .iter()
                .map(|(id, p)| (id.clone(), list(p)))
                .collect(),
            empty_since_ms: Some(self.empty_since_ms),
        }
    }

    /// Restores a persisted group; members get a fresh session.
    pub fn from_value(
        id: &str,
        value: GroupValue,
        now_ms: i64,
        config: &GroupConfig,
    ) -> Option<Self> {
        let GroupValue::Consumer {
            group_epoch,
            assignment_epoch,
            members,
            target,
            empty_since_ms,
            ..
        } = value
        else {
            return None;
        };
        let map = |list: Vec<(Uuid, Vec<i32>)>| -> Partitions {
            list.into_iter()
                .map(|(t, ps)| (t, ps.into_iter().collect()))
                .collect()
        };
        let mut group = Self::new(id, now_ms);
        group.empty_since_ms = empty_since_ms.unwrap_or(now_ms);
        group.group_epoch = group_epoch;
        group.assignment_epoch = assignment_epoch;
        group.target = target.into_iter().map(|(m, p)| (m, map(p))).collect();
        for v in members {
            let assigned = map(v.assigned);
            let pending = map(v.pending_revocation);
            for (t, p) in flatten(&assigned).chain(flatten(&pending)) {
                group.owners.insert((t, p), v.member_id.clone());
            }
            if let Some(instance) = &v.instance_id {
                group
                    .static_members
                    .insert(instance.clone(), v.member_id.clone());
            }
            let state = if pending.is_empty() {
                MemberState::Stable
            } else {
                MemberState::UnrevokedPartitions
            };
            group.members.insert(
                v.member_id.clone(),
                Member {
                    id: v.member_id,
                    instance_id: v.instance_id,
                    rack_id: v.rack_id,
                    client_id: v.client_id,
                    client_host: v.client_host,
                    rebalance_timeout_ms: v.rebalance_timeout_ms,
                    subscribed: v.subscribed_topic_names.into_iter().collect(),
                    subscribed_regex: v.subscribed_topic_regex,
                    server_assignor: v.server_assignor,
                    epoch: v.member_epoch,
                    previous_epoch: v.previous_member_epoch,
                    state,
                    assigned,
                    revocation_deadline_ms: (!pending.is_empty())
                        .then(|| now_ms + i64::from(v.rebalance_timeout_ms.max(0))),
                    pending_revocation: pending,
                    session_deadline_ms: now_ms + i64::from(config.consumer_session_timeout_ms),
                    left_static: v.left_static,
                },
            );
        }
        Some(group)
    }
}

/// A member as ConsumerGroupDescribe shows it.
#[derive(Debug, Clone)]
pub struct DescribedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub member_epoch: i32,
    pub client_id: String,
    pub client_host: String,
    pub subscribed_topic_names: Vec<String>,
    pub subscribed_topic_regex: Option<String>,
    pub assignment: Partitions,
    pub target: Partitions,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use strom_controller::MetadataRecord;

    use super::*;

    const T: Uuid = Uuid::from_u128(7);

    fn image(partitions: i32) -> MetadataImage {
        let mut image = MetadataImage::default();
        image.apply(
            &MetadataRecord::Topic {
                name: "t".into(),
                topic_id: T,
            },
            0,
        );
        for p in 0..partitions {
            image.apply(
                &MetadataRecord::Partition {
                    topic_id: T,
                    partition: p,
                    replicas: vec![1],
                    isr: vec![1],
                    leader: 1,
                    leader_epoch: 0,
                    partition_epoch: 0,
                    adding_replicas: vec![],
                    removing_replicas: vec![],
                    elr: Vec::new(),
                },
                1,
            );
        }
        image
    }

    fn config() -> GroupConfig {
        GroupConfig::from_properties(&BTreeMap::new()).unwrap()
    }

    fn join(member: &str) -> Heartbeat {
        Heartbeat {
            member_id: member.into(),
            member_epoch: 0,
            rebalance_timeout_ms: 30_000,
            subscribed_topic_names: Some(vec!["t".into()]),
            owned: Some(vec![]),
            ..Heartbeat::default()
        }
    }

    fn beat(member: &str, epoch: i32, owned: &Partitions) -> Heartbeat {
        Heartbeat {
            member_id: member.into(),
            member_epoch: epoch,
            rebalance_timeout_ms: -1,
            owned: Some(
                owned
                    .iter()
                    .map(|(t, ps)| (*t, ps.iter().copied().collect()))
                    .collect(),
            ),
            ..Heartbeat::default()
        }
    }

    fn parts(p: &Option<Partitions>) -> BTreeSet<i32> {
        p.as_ref()
            .and_then(|a| a.get(&T))
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn a_joining_member_waits_for_partitions_until_their_owner_revokes_them() {
        let (image, config) = (image(4), config());
        let mut g = ConsumerGroup::new("g", 0);
        let (a, _) = g.heartbeat(join("a"), 0, &image, &config);
        assert_eq!((a.error, a.member_epoch), (ErrorCode::None, 1));
        assert_eq!(parts(&a.assignment), BTreeSet::from([0, 1, 2, 3]));
        assert_eq!(g.state_name(), "Stable");

        // b joins: the new target splits the partitions, but a still owns
        // them all, so b gets nothing yet.
        let (b, _) = g.heartbeat(join("b"), 10, &image, &config);
        assert_eq!(b.member_epoch, 2);
        assert!(parts(&b.assignment).is_empty());
        assert_eq!(g.state_name(), "Reconciling");

        // a is told to give two up (its epoch stays until it has).
        let owned_by_a = a.assignment.clone().unwrap();
        let (a2, _) = g.heartbeat(beat("a", 1, &owned_by_a), 20, &image, &config);
        assert_eq!(a2.member_epoch, 1);
        let kept = parts(&a2.assignment);
        assert_eq!(kept.len(), 2);
        // Still owning them: nothing moves.
        let (a3, _) = g.heartbeat(beat("a", 1, &owned_by_a), 30, &image, &config);
        assert_eq!((a3.member_epoch, a3.assignment), (1, None));
        // Revoked: a moves to epoch 2, and b gets the released partitions.
        let (a4, _) = g.heartbeat(
            beat("a", 1, a2.assignment.as_ref().unwrap()),
            40,
            &image,
            &config,
        );
        assert_eq!(a4.member_epoch, 2);
        let (b2, _) = g.heartbeat(beat("b", 2, &Partitions::new()), 50, &image, &config);
        let given = parts(&b2.assignment);
        assert_eq!(given.len(), 2);
        assert!(given.is_disjoint(&kept));
        assert_eq!(g.state_name(), "Stable");
    }

    #[test]
    fn stale_and_future_epochs_are_fenced() {
        let (image, config) = (image(2), config());
        let mut g = ConsumerGroup::new("g", 0);
        let (a, _) = g.heartbeat(join("a"), 0, &image, &config);
        let owned = a.assignment.unwrap();
        let (r, _) = g.heartbeat(beat("a", 5, &owned), 1, &image, &config);
        assert_eq!(r.error, ErrorCode::FencedMemberEpoch);
        let (r, _) = g.heartbeat(beat("nobody", 1, &owned), 1, &image, &config);
        assert_eq!(r.error, ErrorCode::UnknownMemberId);
        let (r, _) = g.heartbeat(beat("a", 0, &owned), 1, &image, &config);
        assert_eq!(r.error, ErrorCode::InvalidRequest, "a rejoin owns nothing");

        // a revokes one partition for b and moves to epoch 2.
        g.heartbeat(join("b"), 2, &image, &config);
        let (r, _) = g.heartbeat(beat("a", 1, &owned), 3, &image, &config);
        let kept = r.assignment.unwrap();
        let (r, _) = g.heartbeat(beat("a", 1, &kept), 4, &image, &config);
        assert_eq!(r.member_epoch, 2);
        // The response with epoch 2 was lost: epoch 1 owning a subset of
        // the assignment is accepted; owning more is fenced.
        let (r, _) = g.heartbeat(beat("a", 1, &kept), 5, &image, &config);
        assert_eq!((r.error, r.member_epoch), (ErrorCode::None, 2));
        let (r, _) = g.heartbeat(beat("a", 1, &owned), 6, &image, &config);
        assert_eq!(r.error, ErrorCode::FencedMemberEpoch);
    }

    #[test]
    fn leaving_hands_partitions_to_the_others() {
        let (image, config) = (image(4), config());
        let mut g = ConsumerGroup::new("g", 0);
        g.heartbeat(join("a"), 0, &image, &config);
        g.heartbeat(join("b"), 0, &image, &config);
        let mut leave = beat("a", 0, &Partitions::new());
        leave.member_epoch = LEAVE_EPOCH;
        let (r, persist) = g.heartbeat(leave, 1, &image, &config);
        assert_eq!(
            (r.error, r.member_epoch, persist),
            (ErrorCode::None, LEAVE_EPOCH, true)
        );
        let (b, _) = g.heartbeat(beat("b", 2, &Partitions::new()), 2, &image, &config);
        assert_eq!(parts(&b.assignment), BTreeSet::from([0, 1, 2, 3]));
        assert_eq!(b.member_epoch, g.group_epoch);
    }

    #[test]
    fn a_static_member_coming_back_keeps_its_assignment_and_epoch() {
        let (image, config) = (image(2), config());
        let mut g = ConsumerGroup::new("g", 0);
        let mut first = join("a");
        first.instance_id = Some("i".into());
        let (a, _) = g.heartbeat(first, 0, &image, &config);
        let epoch = g.group_epoch;
        let mut leave = beat("a", LEAVE_STATIC_EPOCH, &Partitions::new());
        leave.instance_id = Some("i".into());
        assert_eq!(
            g.heartbeat(leave, 1, &image, &config).0.member_epoch,
            LEAVE_STATIC_EPOCH
        );
        let mut back = join("a-again");
        back.instance_id = Some("i".into());
        let (again, _) = g.heartbeat(back, 2, &image, &config);
        assert_eq!(again.error, ErrorCode::None);
        assert_eq!(
            (again.member_epoch, again.assignment),
            (a.member_epoch, a.assignment)
        );
        assert_eq!(g.group_epoch, epoch, "no rebalance");
        // While the instance is held, another member cannot take it.
        let mut thief = join("thief");
        thief.instance_id = Some("i".into());
        assert_eq!(
            g.heartbeat(thief, 3, &image, &config).0.error,
            ErrorCode::UnreleasedInstanceId
        );
    }

    #[test]
    fn silent_members_expire_and_unknown_assignors_are_refused() {
        let (image, config) = (image(2), config());
        let mut g = ConsumerGroup::new("g", 0);
        g.heartbeat(join("a"), 0, &image, &config);
        assert!(!g.tick(1_000, &image, &config));
        assert!(g.tick(
            i64::from(config.consumer_session_timeout_ms),
            &image,
            &config
        ));
        assert!(g.is_empty());
        let mut odd = join("b");
        odd.server_assignor = Some("sticky".into());
        assert_eq!(
            g.heartbeat(odd, 0, &image, &config).0.error,
            ErrorCode::UnsupportedAssignor
        );
    }

    #[test]
    fn new_partitions_bump_the_epoch_and_are_assigned() {
        let config = config();
        let mut g = ConsumerGroup::new("g", 0);
        let (a, _) = g.heartbeat(join("a"), 0, &image(2), &config);
        let (r, _) = g.heartbeat(
            beat("a", a.member_epoch, a.assignment.as_ref().unwrap()),
            1,
            &image(3),
            &config,
        );
        assert!(r.member_epoch > a.member_epoch);
        assert_eq!(parts(&r.assignment), BTreeSet::from([0, 1, 2]));
    }

    #[test]
    fn the_persisted_form_restores_the_group() {
        let (image, config) = (image(4), config());
        let mut g = ConsumerGroup::new("g", 0);
        g.heartbeat(join("a"), 0, &image, &config);
        g.heartbeat(join("b"), 0, &image, &config);
        let value = g.to_value(&config);
        let restored = ConsumerGroup::from_value("g", value.clone(), 5, &config).unwrap();
        assert_eq!(restored.to_value(&config), value);
        assert_eq!(restored.state_name(), g.state_name());
    }

    /// Adds topic `name` with id `id` and `partitions` partitions to `image`.
    fn add_topic(image: &mut MetadataImage, name: &str, id: Uuid, partitions: i32) {
        let offset = image.offset;
        image.apply(
            &MetadataRecord::Topic {
                name: name.into(),
                topic_id: id,
            },
            offset,
        );
        for p in 0..partitions {
            image.apply(
                &MetadataRecord::Partition {
                    topic_id: id,
                    partition: p,
                    replicas: vec![1],
                    isr: vec![1],
                    leader: 1,
                    leader_epoch: 0,
                    partition_epoch: 0,
                    adding_replicas: vec![],
                    removing_replicas: vec![],
                    elr: Vec::new(),
                },
                offset + 1,
            );
        }
    }

    #[test]
    fn a_regex_subscription_matches_whole_names_and_follows_new_topics() {
        let config = config();
        let mut image = image(1);
        let orders_eu = Uuid::from_u128(11);
        add_topic(&mut image, "orders-eu", orders_eu, 2);
        add_topic(&mut image, "my-orders-x", Uuid::from_u128(12), 1);
        let mut g = ConsumerGroup::new("g", 0);

        // An invalid expression is refused with Kafka's error and a reason.
        let bad = Heartbeat {
            subscribed_topic_names: None,
            subscribed_topic_regex: Some("orders-(".into()),
            ..join("a")
        };
        let (r, _) = g.heartbeat(bad, 0, &image, &config);
        assert_eq!(r.error, ErrorCode::InvalidRegularExpression);
        assert!(r.message.unwrap().contains("orders-("));
        let long = Heartbeat {
            subscribed_topic_names: None,
            subscribed_topic_regex: Some("a".repeat(MAX_SUBSCRIBED_REGEX_BYTES + 1)),
            ..join("a")
        };
        assert_eq!(
            g.heartbeat(long, 0, &image, &config).0.error,
            ErrorCode::InvalidRegularExpression
        );

        // `orders-.*` matches the whole of "orders-eu", not "my-orders-x".
        let regex = Heartbeat {
            subscribed_topic_names: None,
            subscribed_topic_regex: Some("orders-.*".into()),
            ..join("a")
        };
        let (a, _) = g.heartbeat(regex, 0, &image, &config);
        assert_eq!(a.error, ErrorCode::None);
        let assigned = a.assignment.unwrap();
        assert_eq!(
            assigned.keys().copied().collect::<Vec<_>>(),
            vec![orders_eu]
        );
        assert_eq!(
            g.describe_members()[0].subscribed_topic_regex.as_deref(),
            Some("orders-.*")
        );

        // A matching topic created later joins at the next heartbeat.
        let orders_us = Uuid::from_u128(13);
        add_topic(&mut image, "orders-us", orders_us, 1);
        let (a, _) = g.heartbeat(beat("a", a.member_epoch, &assigned), 1, &image, &config);
        let assigned = a.assignment.unwrap();
        assert_eq!(
            assigned.keys().copied().collect::<BTreeSet<_>>(),
            BTreeSet::from([orders_eu, orders_us])
        );

        // The regex survives a restart of the coordinator.
        let value = g.to_value(&config);
        let mut restored = ConsumerGroup::from_value("g", value, 2, &config).unwrap();
        assert_eq!(
            restored.subscribed_topics(),
            BTreeSet::new(),
            "not matched yet"
        );
        let (a, _) = restored.heartbeat(beat("a", a.member_epoch, &assigned), 3, &image, &config);
        assert_eq!(a.error, ErrorCode::None);
        assert_eq!(
            restored.subscribed_topics(),
            BTreeSet::from(["orders-eu".to_owned(), "orders-us".to_owned()])
        );

        // An empty regex ends the subscription.
        let clear = Heartbeat {
            subscribed_topic_regex: Some(String::new()),
            ..beat("a", a.member_epoch, &assigned)
        };
        let (a, _) = restored.heartbeat(clear, 4, &image, &config);
        assert_eq!(a.error, ErrorCode::None);
        assert!(restored.subscribed_topics().is_empty());
    }
}
