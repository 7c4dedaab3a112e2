//! The broker's lifecycle with the controller (KRaft's
//! `BrokerLifecycleManager`): register (BrokerRegistration; a new
//! registration starts fenced), then heartbeat every
//! `broker.heartbeat.interval.ms` with the metadata offset applied here. The
//! active controller unfences the broker once it has caught up, and fences
//! it when heartbeats stop for `broker.session.timeout.ms`. A heartbeat the
//! controller refuses as a stale broker epoch (the registration was
//! replaced) registers again.

use std::sync::Arc;
use std::time::Duration;

use strom_controller::controller::BrokerHeartbeat;
use strom_controller::propose::BrokerRegistration;
use strom_protocol::error_code::ErrorCode;

use crate::broker::Broker;

/// How long to wait before retrying a registration the controller did not
/// take (no quorum yet, an election, a duplicate registration whose session
/// has not expired).
const REGISTRATION_RETRY: Duration = Duration::from_millis(500);
/// How often a node waiting to be unfenced says so.
const WAITING_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Registers and heartbeats until the broker shuts down.
pub(crate) async fn run(broker: Arc<Broker>, registration: BrokerRegistration) {
    let interval =
        Duration::from_millis(broker.config.settings.cluster.broker_heartbeat_interval_ms);
    let shutdown = broker.shutdown.clone();
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
        loop {
            let heartbeat = BrokerHeartbeat {
                broker_id: broker.node_id,
                broker_epoch: epoch,
                metadata_offset: broker.controller.image().offset,
                want_fence: false,
                want_shutdown: false,
            };
            let reply = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = broker.controller.heartbeat(heartbeat) => r,
            };
            match reply {
                Ok(_) => {}
                Err(e) if e.code == ErrorCode::StaleBrokerEpoch => {
                    tracing::warn!(error = %e, "the controller replaced this broker's registration; registering again");
                    continue 'register;
                }
                Err(e) => tracing::debug!(error = %e, "heartbeat failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
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
