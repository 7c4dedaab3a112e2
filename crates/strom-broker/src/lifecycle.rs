//! The broker's lifecycle with the controller (KRaft's
//! `BrokerLifecycleManager`): register (BrokerRegistration; a new
//! registration starts fenced), then heartbeat every
//! `broker.heartbeat.interval.ms` with the metadata offset applied here. The
//! active controller unfences the broker once it has caught up, and fences
//! it when heartbeats stop for `broker.session.timeout.ms`. A heartbeat the
//! controller refuses as a stale broker epoch (the registration was
//! replaced) registers again.
//!
//! Controlled shutdown (`controlled.shutdown.enable`, on by default): a
//! stopping broker stops its regular heartbeats and sends heartbeats that
//! ask to shut down; the controller fences it and moves the leadership of
//! its partitions to other in-sync replicas, and answers `should_shutdown`;
//! then the broker stops. Clients so move to the new leaders at once
//! instead of after `broker.session.timeout.ms`.

use std::sync::Arc;
use std::time::Duration;

use strom_controller::controller::BrokerHeartbeat;
use strom_controller::propose::BrokerRegistration;
use strom_protocol::error_code::ErrorCode;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;

/// What the rest of the broker sees of its lifecycle.
#[derive(Debug, Clone)]
pub(crate) struct Lifecycle {
    /// The broker epoch of the current registration, once registered.
    epoch: watch::Sender<Option<i64>>,
    /// Cancelled when the broker begins a controlled shutdown: the regular
    /// heartbeats stop (they would unfence it again).
    stopping: CancellationToken,
}

impl Lifecycle {
    pub(crate) fn new() -> Self {
        Self {
            epoch: watch::Sender::new(None),
            stopping: CancellationToken::new(),
        }
    }
}

/// How often a fenced broker heartbeats (instead of
/// `broker.heartbeat.interval.ms`): it is unfenced by the first heartbeat
/// after it caught up, so a start (or a return) is not one interval longer
/// than it needs to be. Kafka's lifecycle manager does the same.
const FENCED_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(50);

/// The shortest time a heartbeat may take before another is sent instead:
/// a commit (unfencing) takes a few milliseconds, far less under load.
const MIN_HEARTBEAT_ATTEMPT: Duration = Duration::from_millis(500);

/// Pause between controlled-shutdown heartbeats that were not answered
/// `should_shutdown` yet.
const SHUTDOWN_HEARTBEAT_RETRY: Duration = Duration::from_millis(100);

/// How long to wait before retrying a registration the controller did not
/// take (no quorum yet, an election, a duplicate registration whose session
/// has not expired).
const REGISTRATION_RETRY: Duration = Duration::from_millis(500);
/// How often a node waiting to be unfenced says so.
const WAITING_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Registers and heartbeats until the broker shuts down.
pub(crate) async fn run(
    broker: Arc<Broker>,
    registration: BrokerRegistration,
    lifecycle: Lifecycle,
) {
    let interval =
        Duration::from_millis(broker.config.settings.cluster.broker_heartbeat_interval_ms);
    // Ends at shutdown, or earlier at a controlled shutdown's start.
    let shutdown = broker.shutdown.child_token();
    let (stopping, ended) = (lifecycle.stopping.clone(), shutdown.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = stopping.cancelled() => ended.cancel(),
            _ = ended.cancelled() => {}
        }
    });
    'register: loop {
        let epoch = loop {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = broker.controller.register_broker(registration.clone()) => r,
            };
            match attempt {
                Ok(epoch) => break epoch,
                Err(e) => {
                    tracing::info!(error = %e, "broker registration not taken yet; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(REGISTRATION_RETRY) => {}
                    }
                }
            }
        };
        tracing::info!(broker_epoch = epoch, "registered with the controller");
        lifecycle.epoch.send_replace(Some(epoch));
        loop {
            // An attempt is bounded by the interval: one forwarded to a
            // controller that stopped answering (paused, cut off) would
            // otherwise hold every later heartbeat back until its RPC timed
            // out, and the new active controller would fence this live
            // broker. The next attempt goes to the controller known then.
            let attempt = tokio::time::timeout(
                interval.max(MIN_HEARTBEAT_ATTEMPT),
                broker
                    .controller
                    .heartbeat(heartbeat(&broker, epoch, false)),
            );
            let reply = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = attempt => r,
            };
            let Ok(reply) = reply else {
                tracing::debug!("heartbeat not answered in time; sending another");
                continue;
            };
            let mut next = interval;
            match reply {
                Ok(reply) if reply.is_fenced => next = interval.min(FENCED_HEARTBEAT_INTERVAL),
                Ok(_) => {}
                Err(e) if e.code == ErrorCode::StaleBrokerEpoch => {
                    tracing::warn!(error = %e, "the controller replaced this broker's registration; registering again");
                    continue 'register;
                }
                Err(e) => tracing::debug!(error = %e, "heartbeat failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(next) => {}
            }
        }
    }
}

/// Waits until the metadata shows this process's registration unfenced
/// (registered, caught up, and heard from; an earlier process's
/// registration does not count): from then on clients are offered it.
pub(crate) async fn await_unfenced(broker: &Broker, incarnation_id: uuid::Uuid) {
    let mut images = broker.controller.subscribe();
    let id = broker.node_id;
    let unfenced = |i: &std::sync::Arc<strom_controller::MetadataImage>| {
        i.brokers
            .get(&id)
            .is_some_and(|b| !b.fenced && b.incarnation_id == Some(incarnation_id))
    };
    loop {
        match tokio::time::timeout(WAITING_LOG_INTERVAL, images.wait_for(unfenced)).await {
            Ok(_) => return,
            Err(_) => tracing::info!(
                node_id = id,
                "waiting to be unfenced by the active controller"
            ),
        }
    }
}

/// Controlled shutdown: asks the active controller to fence this broker and
/// move its leaderships away, until it answers `should_shutdown` or
/// `timeout` passes. Returns whether the controller agreed.
pub(crate) async fn controlled_shutdown(
    broker: &Broker,
    lifecycle: &Lifecycle,
    timeout: Duration,
) -> bool {
    lifecycle.stopping.cancel();
    let attempts = async {
        loop {
            // Read each time: a registration the stopping token cut short
            // may have replaced the epoch.
            let Some(epoch) = *lifecycle.epoch.borrow() else {
                return false;
            };
            match broker
                .controller
                .heartbeat(heartbeat(broker, epoch, true))
                .await
            {
                Ok(reply) if reply.should_shutdown => return true,
                Ok(_) => {}
                Err(e) if e.code == ErrorCode::StaleBrokerEpoch => {
                    tracing::warn!(error = %e, "controlled shutdown: this broker's registration was replaced");
                    return false;
                }
                Err(e) => tracing::debug!(error = %e, "controlled shutdown heartbeat failed"),
            }
            tokio::time::sleep(SHUTDOWN_HEARTBEAT_RETRY).await;
        }
    };
    tokio::time::timeout(timeout, attempts)
        .await
        .unwrap_or(false)
}

/// This broker's heartbeat at `epoch`, with the metadata offset it has
/// applied.
fn heartbeat(broker: &Broker, epoch: i64, want_shutdown: bool) -> BrokerHeartbeat {
    BrokerHeartbeat {
        broker_id: broker.node_id,
        broker_epoch: epoch,
        metadata_offset: broker.controller.image().offset,
        want_fence: false,
        want_shutdown,
    }
}
