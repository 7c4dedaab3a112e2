//! The consumer group protocol of KIP-848 (`group.protocol=consumer`): the
//! broker assigns, the member heartbeats with ConsumerGroupHeartbeat and
//! reconciles incrementally.
//!
//! A heartbeat task sends the member's epoch, subscription and owned
//! partitions every `heartbeat_interval_ms` the broker asks for, and stores
//! each new target assignment it receives. The next [`Consumer::poll`]
//! reconciles: it commits (with auto commit) and revokes what is no longer
//! assigned, adds what is new, tells the [`RebalanceListener`], and wakes the
//! heartbeat task to acknowledge the new ownership at once. A fenced member
//! (FENCED_MEMBER_EPOCH, UNKNOWN_MEMBER_ID) loses its partitions and joins
//! again with epoch 0.
//!
//! [`Consumer::poll`]: super::Consumer::poll
//! [`RebalanceListener`]: super::RebalanceListener

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use strom_protocol::messages::kafka::{
    ConsumerGroupHeartbeatRequest, GroupId, TopicName,
    consumer_group_heartbeat_request::TopicPartitions,
};
use strom_protocol::messages::{StrBytes, Uuid};

use super::{Shared, TopicPartition, new_part};
use crate::cluster::{GROUP_KEY, Route};
use crate::error::{Error, ErrorCode, Result};

const CONSUMER_GROUP_HEARTBEAT_VERSION: i16 = 1;

/// Epochs with a meaning of their own: joining, leaving.
const JOIN_EPOCH: i32 = 0;
const LEAVE_EPOCH: i32 = -1;
const STATIC_LEAVE_EPOCH: i32 = -2;

/// The member's side of a KIP-848 group, shared by poll and the heartbeat task.
#[derive(Debug, Clone)]
pub(super) struct Member {
    pub(super) member_id: String,
    pub(super) epoch: i32,
    coordinator: Option<i32>,
    /// What the member owns, by topic id, as last acknowledged.
    owned: BTreeMap<Uuid, BTreeSet<i32>>,
    /// An assignment received and not yet reconciled.
    target: Option<BTreeMap<Uuid, BTreeSet<i32>>>,
    /// Set when the member was fenced and must give up its partitions.
    fenced: bool,
    /// The subscription changed: send it with the next heartbeat.
    subscription_changed: bool,
}

impl Member {
    pub(super) fn new() -> Self {
        Self {
            // Since v1 the member chooses its id (KIP-1082).
            member_id: Uuid::new_v4().to_string(),
            epoch: JOIN_EPOCH,
            coordinator: None,
            owned: BTreeMap::new(),
            target: None,
            fenced: false,
            subscription_changed: true,
        }
    }
}

impl Member {
    /// The subscription changed: the next heartbeat sends it.
    pub(super) fn subscription_changed(&mut self) {
        self.subscription_changed = true;
    }
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

/// The heartbeat task: runs until aborted (close sends the leave heartbeat).
pub(super) fn spawn_heartbeat(shared: Arc<Shared>) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        let mut interval = shared.settings.heartbeat_interval;
        loop {
            match heartbeat_once(&shared, None).await {
                Ok(Some(next)) => interval = next,
                Ok(None) => {}
                Err(error) => {
                    tracing::debug!(%error, "consumer group heartbeat failed");
                    interval = shared.cluster.net().retry_backoff;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = shared.heartbeat_now.notified() => {}
            }
        }
    })
    .abort_handle()
}

/// One ConsumerGroupHeartbeat; `leave` sends the leave epoch instead.
/// Returns the interval the broker asks for.
pub(super) async fn heartbeat_once(shared: &Shared, leave: Option<()>) -> Result<Option<Duration>> {
    let group_id = shared
        .settings
        .group_id
        .clone()
        .ok_or_else(|| Error::config("group.id", "is required"))?;
    let (member, subscription) = {
        let state = shared.state.lock();
        let Some(member) = state.kip848.clone() else {
            return Ok(None);
        };
        (member, state.subscription.clone().unwrap_or_default())
    };
    let node = match member.coordinator {
        Some(node) => node,
        None => {
            let node = shared
                .cluster
                .find_coordinator(GROUP_KEY, &group_id)
                .await?;
            if let Some(m) = shared.state.lock().kip848.as_mut() {
                m.coordinator = Some(node);
            }
            node
        }
    };
    let epoch = match leave {
        Some(()) if shared.settings.instance_id.is_some() => STATIC_LEAVE_EPOCH,
        Some(()) => LEAVE_EPOCH,
        None => member.epoch,
    };
    let full = member.epoch == JOIN_EPOCH || member.subscription_changed;
    let request = ConsumerGroupHeartbeatRequest::default()
        .with_group_id(GroupId(str_bytes(&group_id)))
        .with_member_id(str_bytes(&member.member_id))
        .with_member_epoch(epoch)
        .with_instance_id(shared.settings.instance_id.as_deref().map(str_bytes))
        .with_rebalance_timeout_ms(
            i32::try_from(shared.settings.group.rebalance_timeout.as_millis()).unwrap_or(i32::MAX),
        )
        .with_subscribed_topic_names(full.then(|| {
            subscription
                .iter()
                .map(|t| TopicName(str_bytes(t)))
                .collect()
        }))
        .with_server_assignor(shared.settings.remote_assignor.as_deref().map(str_bytes))
        .with_topic_partitions(Some(
            member
                .owned
                .iter()
                .map(|(id, partitions)| {
                    TopicPartitions::default()
                        .with_topic_id(*id)
                        .with_partitions(partitions.iter().copied().collect())
                })
                .collect(),
        ));
    let response = shared
        .cluster
        .send(
            Route::Coordinator(node),
            CONSUMER_GROUP_HEARTBEAT_VERSION,
            &request,
        )
        .await;
    let response = match response {
        Ok(r) => r,
        Err(error) => {
            forget_coordinator_on(shared, &error);
            return Err(error);
        }
    };
    if let Err(error) = Error::check(response.error_code, response.error_message.as_deref()) {
        let mut state = shared.state.lock();
        if let Some(m) = state.kip848.as_mut() {
            match error.code() {
                Some(ErrorCode::FencedMemberEpoch | ErrorCode::UnknownMemberId) => {
                    m.fenced = true;
                    m.epoch = JOIN_EPOCH;
                    m.subscription_changed = true;
                }
                Some(ErrorCode::NotCoordinator | ErrorCode::CoordinatorNotAvailable) => {
                    m.coordinator = None
                }
                _ => {}
            }
        }
        drop(state);
        shared.data.notify_waiters();
        return Err(error);
    }
    let mut state = shared.state.lock();
    if let Some(m) = state.kip848.as_mut()
        && leave.is_none()
    {
        if let Some(id) = response.member_id.as_deref().filter(|id| !id.is_empty()) {
            m.member_id = id.to_owned();
        }
        m.epoch = response.member_epoch;
        if full {
            m.subscription_changed = false;
        }
        if let Some(assignment) = response.assignment {
            m.target = Some(
                assignment
                    .topic_partitions
                    .iter()
                    .map(|tp| (tp.topic_id, tp.partitions.iter().copied().collect()))
                    .collect(),
            );
            drop(state);
            shared.data.notify_waiters();
        }
    }
    let interval = u64::try_from(response.heartbeat_interval_ms)
        .ok()
        .filter(|&ms| ms > 0);
    Ok(interval.map(Duration::from_millis))
}

fn forget_coordinator_on(shared: &Shared, error: &Error) {
    if (error.needs_metadata_refresh() || matches!(error, Error::Timeout(_)))
        && let Some(m) = shared.state.lock().kip848.as_mut()
    {
        m.coordinator = None;
    }
}

/// What poll must do for the member: partitions to revoke and to add.
#[derive(Debug, Default)]
pub(super) struct Reconciliation {
    pub(super) revoked: Vec<TopicPartition>,
    pub(super) added: Vec<TopicPartition>,
}

/// Works out the change from the owned to the target assignment, naming
/// topics by their ids from the metadata (refreshed when an id is unknown).
/// `None` while there is nothing to reconcile or a topic id is not yet known.
pub(super) async fn plan(shared: &Shared) -> Result<Option<Reconciliation>> {
    let (target, owned, fenced) = {
        let state = shared.state.lock();
        let Some(m) = state.kip848.as_ref() else {
            return Ok(None);
        };
        (m.target.clone(), m.owned.clone(), m.fenced)
    };
    if fenced {
        // Partitions of a fenced member are lost, not revoked: no commit.
        let lost: Vec<TopicPartition> = shared.state.lock().parts.keys().cloned().collect();
        let mut state = shared.state.lock();
        state.parts.clear();
        if let Some(m) = state.kip848.as_mut() {
            m.fenced = false;
            m.owned.clear();
            m.target = None;
        }
        return Ok(Some(Reconciliation {
            revoked: lost,
            added: Vec::new(),
        }));
    }
    let Some(target) = target else {
        return Ok(None);
    };
    let mut names = topic_names(shared);
    if target.keys().any(|id| !names.contains_key(id)) {
        let subscription: Vec<String> = shared
            .state
            .lock()
            .subscription
            .iter()
            .flatten()
            .cloned()
            .collect();
        shared
            .cluster
            .fetch_metadata(Some(&subscription), false)
            .await?;
        names = topic_names(shared);
        if target.keys().any(|id| !names.contains_key(id)) {
            return Ok(None);
        }
    }
    let expand = |assignment: &BTreeMap<Uuid, BTreeSet<i32>>| -> BTreeSet<TopicPartition> {
        assignment
            .iter()
            .filter_map(|(id, ps)| names.get(id).map(|name| (name, ps)))
            .flat_map(|(name, ps)| ps.iter().map(move |&p| TopicPartition::new(name, p)))
            .collect()
    };
    let (from, to) = (expand(&owned), expand(&target));
    Ok(Some(Reconciliation {
        revoked: from.difference(&to).cloned().collect(),
        added: to.difference(&from).cloned().collect(),
    }))
}

/// Makes the target the owned assignment once poll applied `plan`'s change.
pub(super) fn complete(shared: &Shared, reconciliation: &Reconciliation) {
    let mut state = shared.state.lock();
    for tp in &reconciliation.revoked {
        state.parts.remove(tp);
    }
    for tp in &reconciliation.added {
        let epoch = state.epoch();
        state
            .parts
            .insert(tp.clone(), new_part(epoch, true, &shared.settings));
    }
    if let Some(m) = state.kip848.as_mut()
        && let Some(target) = m.target.take()
    {
        m.owned = target;
    }
    drop(state);
    shared.heartbeat_now.notify_one();
    shared.fetch_wake.notify_one();
}

fn topic_names(shared: &Shared) -> BTreeMap<Uuid, String> {
    shared
        .state
        .lock()
        .subscription
        .iter()
        .flatten()
        .filter_map(|t| match shared.cluster.cached_topic(t) {
            Some(Ok(info)) => Some((info.id, info.name.clone())),
            _ => None,
        })
        .collect()
}
