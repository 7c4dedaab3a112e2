//! Membership of a classic group (Kafka's JoinGroup/SyncGroup protocol),
//! for any protocol type: what the consumer is built on, and what a
//! Connect worker (`connect`) or a Streams instance builds on.
//!
//! A [`GroupMember`] joins with the protocols it offers, each with its
//! metadata bytes. The coordinator picks one protocol every member offers
//! (a member offering none of the group's gets INCONSISTENT_GROUP_PROTOCOL)
//! and names a leader; the leader's [`GroupLeader`] turns every member's
//! metadata into an assignment (bytes) per member, and each member gets its
//! own back from SyncGroup. Heartbeats then run in the background until the
//! coordinator says the group rebalances ([`GroupMember::rebalance`]), when
//! the member joins again.
//!
//! ```no_run
//! # async fn run() -> strom_client::Result<()> {
//! use std::collections::BTreeMap;
//! use bytes::Bytes;
//! use strom_client::ClientConfig;
//! use strom_client::group::{GroupMember, JoinedMember, Protocol};
//!
//! let mut config = ClientConfig::new();
//! config.set("bootstrap.servers", "localhost:9092").set("group.id", "workers");
//! let member = GroupMember::new(&config, "connect")?;
//! let protocols = [Protocol::new("v1", Bytes::from_static(b"worker-a"))];
//! // The leader gives every member the list of all members.
//! let leader = |_protocol: &str, members: &[JoinedMember]| {
//!     let all: Vec<&str> = members.iter().map(|m| m.member_id.as_str()).collect();
//!     let plan = Bytes::from(all.join(","));
//!     Ok(members.iter().map(|m| (m.member_id.clone(), plan.clone())).collect::<BTreeMap<_, _>>())
//! };
//! loop {
//!     let generation = member.join(&protocols, &leader).await?;
//!     println!("generation {}: {:?}", generation.generation_id, generation.assignment);
//!     let why = member.rebalance().await;
//!     println!("rejoining: {why}");
//! }
//! # }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use strom_protocol::messages::StrBytes;
use strom_protocol::messages::kafka::{
    GroupId, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest, SyncGroupRequest,
    join_group_request::JoinGroupRequestProtocol, leave_group_request::MemberIdentity,
    sync_group_request::SyncGroupRequestAssignment,
};
use tokio::sync::watch;

use crate::cluster::{Cluster, GROUP_KEY, Route};
use crate::config::{COMMON, ClientConfig, NetworkConfig};
use crate::error::{Error, ErrorCode, Result};

const JOIN_GROUP_VERSION: i16 = 9;
const SYNC_GROUP_VERSION: i16 = 5;
const HEARTBEAT_VERSION: i16 = 4;
const LEAVE_GROUP_VERSION: i16 = 5;

/// Extra time a JoinGroup may take beyond the rebalance timeout, as the Java
/// client allows.
const JOIN_GROUP_GRACE: Duration = Duration::from_secs(5);

/// The most protocols a member may offer. The broker keeps every member's
/// protocols in memory, and no client offers more than a handful.
pub const MAX_PROTOCOLS: usize = 64;

/// The properties a [`GroupMember`] reads, besides the common ones.
const MEMBER: &[&str] = &[
    "group.id",
    "group.instance.id",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "rebalance.timeout.ms",
];

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

    /// Forgets the member id and generation: the coordinator no longer
    /// knows this member, so it joins as a new one.
    pub(crate) fn reset(&mut self) {
        self.member_id.clear();
        self.generation = -1;
    }
}

/// The timeouts a member sends with JoinGroup.
#[derive(Debug, Clone)]
pub(crate) struct GroupSettings {
    pub(crate) session_timeout: Duration,
    pub(crate) rebalance_timeout: Duration,
}

/// A protocol a member offers: its name, and the metadata the leader reads
/// when the group settles on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protocol {
    pub name: String,
    pub metadata: Bytes,
}

impl Protocol {
    pub fn new(name: &str, metadata: Bytes) -> Self {
        Self {
            name: name.to_owned(),
            metadata,
        }
    }
}

/// A member of the group as the leader sees it: its metadata for the
/// protocol the group chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Bytes,
}

/// What a finished join gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub generation_id: i32,
    pub member_id: String,
    pub leader_id: String,
    /// The protocol the group chose.
    pub protocol: String,
    /// This member's assignment, as the leader made it.
    pub assignment: Bytes,
}

impl Generation {
    pub fn is_leader(&self) -> bool {
        self.member_id == self.leader_id
    }
}

/// The leader's part: every member's metadata in, each member's assignment
/// out. A member left out of the answer gets an empty assignment.
///
/// A closure `Fn(&str, &[JoinedMember]) -> Result<BTreeMap<String, Bytes>>`
/// is one; implement the trait when the assignment needs to await (as the
/// consumer's leader does, to learn partition counts).
pub trait GroupLeader: Send + Sync {
    fn assign<'a>(
        &'a self,
        protocol: &'a str,
        members: &'a [JoinedMember],
    ) -> BoxFuture<'a, Result<BTreeMap<String, Bytes>>>;
}

impl<F> GroupLeader for F
where
    F: Fn(&str, &[JoinedMember]) -> Result<BTreeMap<String, Bytes>> + Send + Sync,
{
    fn assign<'a>(
        &'a self,
        protocol: &'a str,
        members: &'a [JoinedMember],
    ) -> BoxFuture<'a, Result<BTreeMap<String, Bytes>>> {
        let result = self(protocol, members);
        Box::pin(std::future::ready(result))
    }
}

pub(crate) fn str_bytes(s: &str) -> StrBytes {
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

/// One JoinGroup and SyncGroup: joins with `protocols` under
/// `protocol_type`, runs `leader` when this member leads, and returns what
/// the group gave this member.
pub(crate) async fn join(
    cluster: &Cluster,
    membership: &mut Membership,
    settings: &GroupSettings,
    protocol_type: &str,
    protocols: &[Protocol],
    leader: &dyn GroupLeader,
) -> Result<Generation> {
    if protocols.is_empty() || protocols.len() > MAX_PROTOCOLS {
        return Err(Error::State(format!(
            "a member offers 1 to {MAX_PROTOCOLS} protocols, not {}",
            protocols.len()
        )));
    }
    let node = coordinator(cluster, membership).await?;
    let offered = protocols
        .iter()
        .map(|p| {
            JoinGroupRequestProtocol::default()
                .with_name(str_bytes(&p.name))
                .with_metadata(p.metadata.clone())
        })
        .collect();
    let mut request = JoinGroupRequest::default()
        .with_group_id(GroupId(str_bytes(&membership.group)))
        .with_session_timeout_ms(millis(settings.session_timeout))
        .with_rebalance_timeout_ms(millis(settings.rebalance_timeout))
        .with_member_id(str_bytes(&membership.member_id))
        .with_group_instance_id(membership.instance_id.as_deref().map(str_bytes))
        .with_protocol_type(str_bytes(protocol_type))
        .with_protocols(offered);
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
            membership.reset();
        }
        Error::check(response.error_code, None)?;
        break response;
    };
    membership.member_id = response.member_id.to_string();
    membership.generation = response.generation_id;
    // v7+ always names the protocol; older brokers name it too (it is only
    // null in a v7+ answer to a member of a group being emptied).
    let protocol = match response.protocol_name.as_deref() {
        Some(name) => name.to_owned(),
        None => protocols[0].name.clone(),
    };
    let assignments = if response.leader == response.member_id && !response.skip_assignment {
        let members: Vec<JoinedMember> = response
            .members
            .iter()
            .map(|m| JoinedMember {
                member_id: m.member_id.to_string(),
                instance_id: m.group_instance_id.as_ref().map(ToString::to_string),
                metadata: m.metadata.clone(),
            })
            .collect();
        leader
            .assign(&protocol, &members)
            .await?
            .into_iter()
            .map(|(member, assignment)| {
                SyncGroupRequestAssignment::default()
                    .with_member_id(str_bytes(&member))
                    .with_assignment(assignment)
            })
            .collect()
    } else {
        Vec::new()
    };
    let sync = SyncGroupRequest::default()
        .with_group_id(GroupId(str_bytes(&membership.group)))
        .with_generation_id(membership.generation)
        .with_member_id(str_bytes(&membership.member_id))
        .with_group_instance_id(membership.instance_id.as_deref().map(str_bytes))
        .with_protocol_type(Some(str_bytes(protocol_type)))
        .with_protocol_name(Some(str_bytes(&protocol)))
        .with_assignments(assignments);
    let synced = cluster
        .start(Route::Coordinator(node), SYNC_GROUP_VERSION, &sync)
        .await?
        .with_timeout(settings.rebalance_timeout + JOIN_GROUP_GRACE)
        .response()
        .await?;
    Error::check(synced.error_code, None)?;
    Ok(Generation {
        generation_id: response.generation_id,
        member_id: membership.member_id.clone(),
        leader_id: response.leader.to_string(),
        protocol,
        assignment: synced.assignment,
    })
}

/// Forgets what a heartbeat's `error` says is stale: the coordinator, or
/// the member id and generation.
pub(crate) fn forget_stale(membership: &mut Membership, error: &Error) -> Result<()> {
    check_coordinator(membership, error);
    match error.code() {
        Some(ErrorCode::UnknownMemberId) => membership.reset(),
        // Another instance took this `group.instance.id`: rejoining would
        // fence it in turn, and the two would take turns for ever. Fatal,
        // as in the Java client.
        Some(ErrorCode::FencedInstanceId) => return Err(error.clone()),
        _ => {}
    }
    Ok(())
}

/// What a failed join leaves to do: `Ok` to try again (after forgetting
/// what the error says is stale), `Err` to give up with the error.
pub(crate) fn after_failed_join(membership: &mut Membership, error: Error) -> Result<Error> {
    check_coordinator(membership, &error);
    match error.code() {
        Some(ErrorCode::UnknownMemberId | ErrorCode::IllegalGeneration) => {
            membership.reset();
            Ok(error)
        }
        Some(ErrorCode::RebalanceInProgress) => Ok(error),
        _ if error.is_retriable() => Ok(error),
        _ => Err(error),
    }
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

/// Heartbeats every `interval` until one says the member must rejoin, and
/// returns why. A coordinator that moved or cannot be reached is looked up
/// again and the heartbeats go on (as the Java client does, without
/// rejoining); with no heartbeat answered for `session`, the coordinator
/// has expired this member, so it must rejoin.
pub(crate) async fn heartbeat_until_rejoin(
    cluster: &Cluster,
    mut membership: Membership,
    interval: Duration,
    session: Duration,
) -> Error {
    let mut answered = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(interval).await;
        let result = match coordinator(cluster, &mut membership).await {
            Ok(_) => heartbeat(cluster, &membership).await,
            Err(error) => Err(error),
        };
        let error = match result {
            Ok(()) => {
                answered = tokio::time::Instant::now();
                continue;
            }
            Err(error) => error,
        };
        let coordinator_trouble = matches!(error, Error::Io { .. } | Error::Timeout(_))
            || matches!(
                error.code(),
                Some(ErrorCode::NotCoordinator | ErrorCode::CoordinatorNotAvailable)
            );
        if coordinator_trouble && answered.elapsed() < session {
            check_coordinator(&mut membership, &error);
            continue;
        }
        tracing::debug!(%error, group = %membership.group, "heartbeat: rejoining");
        return error;
    }
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

/// A member of a classic group of any protocol type.
///
/// Reads `group.id` (required), `group.instance.id` (static membership),
/// `session.timeout.ms` (10 s), `heartbeat.interval.ms` (3 s) and
/// `rebalance.timeout.ms` (60 s: how long the coordinator waits for every
/// member to rejoin), with Kafka Connect's defaults, besides the common
/// client properties. Must be created inside a tokio runtime.
#[derive(Debug)]
pub struct GroupMember {
    cluster: Arc<Cluster>,
    protocol_type: String,
    settings: GroupSettings,
    heartbeat_interval: Duration,
    membership: tokio::sync::Mutex<Membership>,
    /// Why the member must join again; `Some` from the start (it has not
    /// joined yet) and after the heartbeats learn of a rebalance.
    rejoin: watch::Sender<Option<Error>>,
    heartbeat: parking_lot::Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        if let Some(heartbeat) = self.heartbeat.lock().take() {
            heartbeat.abort();
        }
    }
}

impl GroupMember {
    /// A member of `config`'s `group.id` with protocol type `protocol_type`
    /// (`consumer`, `connect`, or another agreed on by the members).
    pub fn new(config: &ClientConfig, protocol_type: &str) -> Result<Self> {
        config.check_known(&[COMMON, MEMBER])?;
        let group = config
            .get("group.id")
            .filter(|g| !g.is_empty())
            .ok_or_else(|| Error::config("group.id", "a group member needs a group id"))?;
        if protocol_type.is_empty() {
            return Err(Error::State("the protocol type is empty".into()));
        }
        let settings = GroupSettings {
            session_timeout: config.millis("session.timeout.ms", 10_000)?,
            rebalance_timeout: config.millis("rebalance.timeout.ms", 60_000)?,
        };
        let heartbeat_interval = config.millis("heartbeat.interval.ms", 3_000)?;
        if heartbeat_interval >= settings.session_timeout {
            return Err(Error::config(
                "heartbeat.interval.ms",
                "must be lower than session.timeout.ms",
            ));
        }
        let membership = Membership::new(
            group.to_owned(),
            config.get("group.instance.id").map(str::to_owned),
        );
        Ok(Self {
            cluster: Arc::new(Cluster::new(NetworkConfig::from_config(config)?)),
            protocol_type: protocol_type.to_owned(),
            settings,
            heartbeat_interval,
            membership: tokio::sync::Mutex::new(membership),
            rejoin: watch::Sender::new(Some(Error::State("not joined yet".into()))),
            heartbeat: parking_lot::Mutex::new(None),
        })
    }

    /// Joins (or rejoins) the group offering `protocols`, in order of
    /// preference, and returns this member's assignment once every member
    /// has one; heartbeats then keep the membership. Retries what can be
    /// retried (a coordinator moving, a rebalance starting again, a member
    /// id the coordinator forgot); other errors, such as
    /// INCONSISTENT_GROUP_PROTOCOL when the group's members offer none of
    /// `protocols`, end the join.
    pub async fn join(
        &self,
        protocols: &[Protocol],
        leader: &dyn GroupLeader,
    ) -> Result<Generation> {
        let mut membership = self.membership.lock().await;
        self.stop_heartbeats();
        let why = self.rejoin.borrow().clone();
        if let Some(why) = why {
            forget_stale(&mut membership, &why)?;
        }
        let generation = loop {
            let result = join(
                &self.cluster,
                &mut membership,
                &self.settings,
                &self.protocol_type,
                protocols,
                leader,
            )
            .await;
            match result {
                Ok(generation) => break generation,
                Err(error) => {
                    let error = after_failed_join(&mut membership, error)?;
                    tracing::debug!(%error, group = %membership.group, "joining failed; retrying");
                    tokio::time::sleep(self.cluster.net().retry_backoff).await;
                }
            }
        };
        self.rejoin.send_replace(None);
        *self.heartbeat.lock() = Some(self.spawn_heartbeats(membership.clone()));
        Ok(generation)
    }

    /// Waits until the group wants this member to join again (it rebalances,
    /// or forgot this member), and says why. At once when the member has not
    /// joined yet.
    pub async fn rebalance(&self) -> Error {
        let mut rejoin = self.rejoin.subscribe();
        match rejoin.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or(Error::State("rejoin".into())),
            Err(_) => Error::State("the member is gone".into()),
        }
    }

    /// Whether the member must join again before its assignment counts.
    pub fn needs_rejoin(&self) -> bool {
        self.rejoin.borrow().is_some()
    }

    /// Leaves the group: the others rebalance without waiting for this
    /// member's session to expire (a static member stays, as in Kafka).
    pub async fn leave(&self) -> Result<()> {
        let mut membership = self.membership.lock().await;
        self.stop_heartbeats();
        let result = leave(&self.cluster, &membership).await;
        membership.reset();
        self.rejoin
            .send_replace(Some(Error::State("left the group".into())));
        result
    }

    fn stop_heartbeats(&self) {
        if let Some(heartbeat) = self.heartbeat.lock().take() {
            heartbeat.abort();
        }
    }

    /// Heartbeats in the background until one says to rejoin.
    fn spawn_heartbeats(&self, membership: Membership) -> tokio::task::AbortHandle {
        let cluster = Arc::clone(&self.cluster);
        let (interval, session) = (self.heartbeat_interval, self.settings.session_timeout);
        let rejoin = self.rejoin.clone();
        tokio::spawn(async move {
            let why = heartbeat_until_rejoin(&cluster, membership, interval, session).await;
            rejoin.send_replace(Some(why));
        })
        .abort_handle()
    }
}
