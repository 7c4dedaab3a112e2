//! ISR changes (Kafka's `AlterPartitionManager`, KIP-497): a leader whose
//! follower caught up, or fell behind for `replica.lag.time.max.ms`, asks the
//! active controller to change the partition's ISR.
//!
//! The partition decides the change and keeps it pending
//! ([`Partition::pending_isr_change`]: one change in flight per partition);
//! this module only carries it. [`IsrManager::submit`] marks a partition,
//! and [`run`] sends each marked partition's pending change, a bounded number
//! at once, and hands the answer back ([`Partition::complete_isr_change`]).
//! A refused change (a stale partition epoch, a newer leader epoch) clears
//! the pending state; the metadata brings the state that won, and the next
//! fetch or shrink check proposes again if it still must.
//!
//! [`shrink_periodically`] runs Kafka's `isr-expiration` task: every half
//! `replica.lag.time.max.ms`, each led partition checks its followers.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::Uuid;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::partition::{IsrChange, Partition};
use crate::replica::ReplicaManager;

/// ISR changes sent to the controller at once. Each is one metadata commit;
/// a burst (a broker's death shrinks every partition it followed) is sent
/// this many at a time rather than all at once or one by one.
const MAX_IN_FLIGHT: usize = 64;

/// Pause before a change is sent again after the controller could not be
/// reached (no active controller during an election).
const RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// One partition's change as the controller gets it.
#[derive(Debug, Clone)]
pub struct IsrRequest {
    pub topic_id: Uuid,
    pub partition: i32,
    pub change: IsrChange,
}

/// What the controller answered: the committed ISR and partition epoch, or
/// why it refused (a retriable error is tried again).
pub type IsrReply = Result<(Vec<i32>, i32), ErrorCode>;

/// Partitions with an ISR change to send.
#[derive(Debug, Default)]
pub struct IsrManager {
    /// Marked partitions, by (topic id, index): at most one entry each, so
    /// the map is bounded by the partitions this broker leads.
    marked: Mutex<HashMap<(Uuid, i32), Weak<Partition>>>,
    wake: Notify,
}

impl IsrManager {
    /// Marks `partition`: its pending ISR change is sent soon.
    pub fn submit(&self, partition: &Arc<Partition>) {
        self.marked.lock().insert(
            (partition.topic_id, partition.index),
            Arc::downgrade(partition),
        );
        self.wake.notify_one();
    }

    fn take(&self) -> Vec<Arc<Partition>> {
        std::mem::take(&mut *self.marked.lock())
            .into_values()
            .filter_map(|p| p.upgrade())
            .collect()
    }
}

/// Sends marked partitions' ISR changes through `send` until `shutdown`.
pub async fn run<S, F>(isr: Arc<IsrManager>, send: S, shutdown: CancellationToken)
where
    S: Fn(IsrRequest) -> F + Send + Sync + 'static,
    F: Future<Output = IsrReply> + Send + 'static,
{
    let send = Arc::new(send);
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = isr.wake.notified() => {}
        }
        for partition in isr.take() {
            let Some(change) = partition.pending_isr_change() else {
                continue;
            };
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                return;
            };
            let (send, isr, shutdown) = (Arc::clone(&send), Arc::clone(&isr), shutdown.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let request = IsrRequest {
                    topic_id: partition.topic_id,
                    partition: partition.index,
                    change: change.clone(),
                };
                let reply = tokio::select! {
                    () = shutdown.cancelled() => return,
                    reply = send(request) => reply,
                };
                match reply {
                    Ok((new_isr, partition_epoch)) => {
                        tracing::info!(topic = %partition.topic, partition = partition.index, isr = ?new_isr, partition_epoch, "ISR changed");
                        partition.complete_isr_change(&change, Some((new_isr, partition_epoch)));
                    }
                    Err(code) if retriable(code) => {
                        tracing::debug!(topic = %partition.topic, partition = partition.index, error = %code, "ISR change not answered; retrying");
                        tokio::time::sleep(RETRY_BACKOFF).await;
                        isr.submit(&partition);
                    }
                    Err(code) => {
                        tracing::info!(topic = %partition.topic, partition = partition.index, error = %code, asked = ?change.new_isr, "ISR change refused; waiting for the metadata");
                        partition.complete_isr_change(&change, None);
                    }
                }
            });
        }
    }
}

/// Errors after which the same change is sent again: the controller was not
/// reached, or could not commit in time.
fn retriable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotController
            | ErrorCode::RequestTimedOut
            | ErrorCode::NetworkException
            | ErrorCode::KafkaStorageError
    )
}

/// Kafka's `isr-expiration` task: every half `replica.lag.time.max.ms`, each
/// partition this broker leads drops the followers that stopped catching up.
pub async fn shrink_periodically(
    replicas: Arc<ReplicaManager>,
    isr: Arc<IsrManager>,
    lag_max_ms: i64,
    now_ms: impl Fn() -> i64 + Send,
    shutdown: CancellationToken,
) {
    let period = Duration::from_millis(u64::try_from(lag_max_ms / 2).unwrap_or(0).max(1));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = now_ms();
        for partition in replicas.partitions() {
            if partition.maybe_shrink_isr(now) {
                isr.submit(&partition);
            }
        }
    }
}
