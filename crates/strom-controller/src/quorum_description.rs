//! DescribeQuorum's picture of the controller quorum (KIP-595, KIP-836):
//! the leader, its epoch and high watermark, each voter's replication
//! progress, and the observers, the brokers that are not voters, with the
//! metadata offset their last heartbeat reported.
//!
//! Only the leader knows how far each follower got, so Kafka answers
//! DescribeQuorum on the active controller alone (a broker forwards it
//! there; a controller that is not the leader answers
//! NOT_LEADER_OR_FOLLOWER). Strom does the same: the description is made on
//! the active controller ([`describe`], pure) and forwarded like any
//! controller operation (`Controller::quorum_description`).
//!
//! Observers: Kafka's observers fetch the metadata log, and the leader lists
//! those that fetched within [`OBSERVER_SESSION_TIMEOUT_MS`]. Strom's
//! brokers learn the metadata through the quorum's own replication and
//! report how far they applied it in their heartbeats, so an observer's log
//! end offset is that offset, and its last fetch is its last heartbeat
//! ([`Observers`]).

use std::collections::{BTreeMap, HashMap};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::quorum::QuorumStatus;

/// Kafka's `LeaderState.OBSERVER_SESSION_TIMEOUT_MS`: an observer not heard
/// from for this long is no longer listed.
pub const OBSERVER_SESSION_TIMEOUT_MS: i64 = 300_000;

/// A timestamp or offset that is not known: Kafka's -1.
pub const UNKNOWN: i64 = -1;

/// The quorum as its leader describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumDescription {
    pub leader_id: i32,
    pub leader_epoch: i32,
    /// The offset after the last committed entry of the metadata log.
    pub high_watermark: i64,
    /// Every voter, by id.
    pub voters: Vec<ReplicaDescription>,
    /// The brokers that are not voters and were heard from lately, by id.
    pub observers: Vec<ReplicaDescription>,
}

/// One voter's or observer's progress, as the leader knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaDescription {
    pub replica_id: i32,
    /// The offset after the last metadata entry known to be there; [`UNKNOWN`]
    /// when none is.
    pub log_end_offset: i64,
    /// The leader's wall clock when the replica last fetched (for an
    /// observer: its last heartbeat); [`UNKNOWN`] when not known.
    pub last_fetch_timestamp_ms: i64,
    /// The leader's wall clock when the replica was last seen holding
    /// everything the leader had; [`UNKNOWN`] when not known.
    pub last_caught_up_timestamp_ms: i64,
}

/// What the active controller last heard from each broker's heartbeat.
///
/// Holds one entry per broker id whose heartbeat was accepted (so a
/// registered broker): bounded by the registrations. Entries older than
/// [`OBSERVER_SESSION_TIMEOUT_MS`] are dropped when the quorum is described.
#[derive(Debug, Default)]
pub(crate) struct Observers {
    /// By broker id. A lock of its own: heartbeats write it without the
    /// controller's writer lock, and a description only reads it.
    heard: Mutex<HashMap<i32, Heard>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Heard {
    /// The offset after the last metadata record the broker applied.
    metadata_offset: i64,
    at_ms: i64,
    /// When a heartbeat last reported everything the leader had applied.
    caught_up_ms: i64,
}

impl Observers {
    /// Broker `broker_id` reported `metadata_offset` at `now_ms`, when the
    /// leader's image was at `leader_offset`.
    pub(crate) fn heard(
        &self,
        broker_id: i32,
        metadata_offset: i64,
        leader_offset: i64,
        now_ms: i64,
    ) {
        let mut heard = self.heard.lock();
        let caught_up_ms = if metadata_offset >= leader_offset {
            now_ms
        } else {
            heard.get(&broker_id).map_or(UNKNOWN, |h| h.caught_up_ms)
        };
        heard.insert(
            broker_id,
            Heard {
                metadata_offset,
                at_ms: now_ms,
                caught_up_ms,
            },
        );
    }

    /// The brokers heard from within [`OBSERVER_SESSION_TIMEOUT_MS`] of
    /// `now_ms` that are not among `voters`, by id; older entries are
    /// forgotten.
    fn describe(&self, voters: &[i32], now_ms: i64) -> Vec<ReplicaDescription> {
        let mut heard = self.heard.lock();
        heard.retain(|_, h| now_ms.saturating_sub(h.at_ms) < OBSERVER_SESSION_TIMEOUT_MS);
        let mut observers: Vec<ReplicaDescription> = heard
            .iter()
            .filter(|(id, _)| !voters.contains(id))
            .map(|(id, h)| ReplicaDescription {
                replica_id: *id,
                log_end_offset: h.metadata_offset,
                last_fetch_timestamp_ms: h.at_ms,
                last_caught_up_timestamp_ms: h.caught_up_ms,
            })
            .collect();
        observers.sort_by_key(|o| o.replica_id);
        observers
    }
}

/// The description the leader gives of the quorum: `status` is the leader's
/// own view (it knows every voter's progress), `voters` the voter ids,
/// `now_ms` the leader's wall clock.
///
/// Timestamps follow Kafka's `RaftUtil.toReplicaState`: the leader reports
/// itself as fetched and caught up now. Without acknowledgement times (see
/// [`describe_with_acks`]) a follower's timestamps are [`UNKNOWN`], which
/// the schema allows ("-1 if unknown for a voter"); its log end offset is
/// the last entry the leader knows it holds. `status` must be the leader's
/// own (it names a leader), which is debug-asserted.
#[cfg(test)]
pub(crate) fn describe(
    status: &QuorumStatus,
    voters: &[i32],
    observers: &Observers,
    now_ms: i64,
) -> QuorumDescription {
    describe_with_acks(status, voters, observers, now_ms, &BTreeMap::new())
}

/// [`describe`] with how long ago each follower last acknowledged the
/// leader (openraft pushes entries rather than serving fetches, so its last
/// acknowledgement stands for Kafka's last fetch), and its last caught-up
/// time when it then held everything up to the high watermark.
pub(crate) fn describe_with_acks(
    status: &QuorumStatus,
    voters: &[i32],
    observers: &Observers,
    now_ms: i64,
    acks: &BTreeMap<i32, std::time::Duration>,
) -> QuorumDescription {
    debug_assert!(
        status.leader.is_some(),
        "only the leader describes the quorum"
    );
    let leader_id = status.leader.unwrap_or(-1);
    debug_assert!(
        status.high_watermark <= status.log_end_offset,
        "the high watermark {} is above the leader's log end offset {}",
        status.high_watermark,
        status.log_end_offset
    );
    let mut voter_ids = voters.to_vec();
    voter_ids.sort_unstable();
    voter_ids.dedup();
    let voters: Vec<ReplicaDescription> = voter_ids
        .iter()
        .map(|&id| {
            if id == leader_id {
                return ReplicaDescription {
                    replica_id: id,
                    log_end_offset: status.log_end_offset,
                    last_fetch_timestamp_ms: now_ms,
                    last_caught_up_timestamp_ms: now_ms,
                };
            }
            // The quorum reports "nothing known replicated there" as 0; a
            // real follower log is never empty (the first entry is the
            // initial membership), so 0 is unknown too.
            let log_end_offset = status
                .voters
                .iter()
                .find(|v| v.node_id == id)
                .map(|v| v.log_end_offset)
                .filter(|offset| *offset > 0)
                .unwrap_or(UNKNOWN);
            let last_fetch = acks.get(&id).map_or(UNKNOWN, |ago| {
                now_ms.saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX))
            });
            let caught_up = last_fetch != UNKNOWN && log_end_offset >= status.high_watermark;
            ReplicaDescription {
                replica_id: id,
                log_end_offset,
                last_fetch_timestamp_ms: last_fetch,
                last_caught_up_timestamp_ms: if caught_up { last_fetch } else { UNKNOWN },
            }
        })
        .collect();
    QuorumDescription {
        leader_id,
        leader_epoch: status.epoch,
        high_watermark: status.high_watermark,
        voters,
        observers: observers.describe(&voter_ids, now_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quorum::ReplicaStatus;

    fn status() -> QuorumStatus {
        QuorumStatus {
            leader: Some(2),
            epoch: 7,
            high_watermark: 40,
            log_end_offset: 42,
            voters: vec![
                ReplicaStatus {
                    node_id: 1,
                    log_end_offset: 40,
                },
                ReplicaStatus {
                    node_id: 2,
                    log_end_offset: 42,
                },
                ReplicaStatus {
                    node_id: 3,
                    log_end_offset: 0,
                },
            ],
        }
    }

    #[test]
    fn the_leader_is_caught_up_now_and_followers_have_what_it_knows() {
        let d = describe(&status(), &[3, 1, 2, 4], &Observers::default(), 1_000);
        assert_eq!((d.leader_id, d.leader_epoch, d.high_watermark), (2, 7, 40));
        let voters: Vec<(i32, i64, i64, i64)> = d
            .voters
            .iter()
            .map(|v| {
                (
                    v.replica_id,
                    v.log_end_offset,
                    v.last_fetch_timestamp_ms,
                    v.last_caught_up_timestamp_ms,
                )
            })
            .collect();
        assert_eq!(
            voters,
            [
                (1, 40, UNKNOWN, UNKNOWN),
                (2, 42, 1_000, 1_000),
                // Nothing known replicated there: unknown, not 0.
                (3, UNKNOWN, UNKNOWN, UNKNOWN),
                // Not in the leader's replication state at all.
                (4, UNKNOWN, UNKNOWN, UNKNOWN),
            ]
        );
        assert!(d.observers.is_empty());
    }

    #[tokio::test]
    async fn the_controller_lists_a_broker_that_heartbeats_and_is_no_voter_as_an_observer() {
        use std::sync::Arc;

        use crate::controller::{BrokerHeartbeat, Controller, ControllerConfig};
        use crate::metadata_log::{MemoryMetadataLog, MetadataLog};
        use crate::propose::BrokerRegistration;

        // One node writing its own log: node 1 is the only voter.
        let log: Arc<dyn MetadataLog> = Arc::new(MemoryMetadataLog::new());
        let clock = Arc::new(strom_storage::ManualClock::new(5_000));
        let c = Controller::open_with(1, ControllerConfig::default(), log, None, clock).unwrap();
        let epoch = c
            .register_broker(BrokerRegistration {
                broker_id: 2,
                incarnation_id: uuid::Uuid::from_u128(2),
                host: "localhost".to_owned(),
                port: 9192,
                rack: None,
                clean_shutdown: true,
            })
            .await
            .unwrap();
        let offset = c.image().offset;
        c.heartbeat(BrokerHeartbeat {
            broker_id: 2,
            broker_epoch: epoch,
            metadata_offset: offset,
            want_fence: false,
            want_shutdown: false,
        })
        .await
        .unwrap();
        let d = c.quorum_description().await.unwrap();
        assert_eq!((d.leader_id, d.leader_epoch), (1, 0));
        assert_eq!(d.high_watermark, c.image().offset);
        assert_eq!(
            d.voters,
            [ReplicaDescription {
                replica_id: 1,
                log_end_offset: d.high_watermark,
                last_fetch_timestamp_ms: 5_000,
                last_caught_up_timestamp_ms: 5_000,
            }]
        );
        assert_eq!(
            d.observers,
            [ReplicaDescription {
                replica_id: 2,
                log_end_offset: offset,
                last_fetch_timestamp_ms: 5_000,
                last_caught_up_timestamp_ms: 5_000,
            }]
        );
    }

    #[test]
    fn observers_are_the_brokers_heard_lately_that_are_not_voters() {
        let observers = Observers::default();
        // A voter's heartbeat does not make it an observer.
        observers.heard(1, 42, 42, 100);
        observers.heard(4, 42, 42, 100);
        // Behind the leader: caught up stays at the last time it was.
        observers.heard(4, 41, 43, 200);
        observers.heard(5, 10, 43, 300);
        let d = describe(&status(), &[1, 2, 3], &observers, 400);
        assert_eq!(
            d.observers,
            [
                ReplicaDescription {
                    replica_id: 4,
                    log_end_offset: 41,
                    last_fetch_timestamp_ms: 200,
                    last_caught_up_timestamp_ms: 100,
                },
                ReplicaDescription {
                    replica_id: 5,
                    log_end_offset: 10,
                    last_fetch_timestamp_ms: 300,
                    last_caught_up_timestamp_ms: UNKNOWN,
                },
            ]
        );
        // Five minutes without a heartbeat: no longer listed, and forgotten.
        let later = 300 + OBSERVER_SESSION_TIMEOUT_MS;
        let d = describe(&status(), &[1, 2, 3], &observers, later);
        assert_eq!(d.observers, []);
        assert_eq!(observers.heard.lock().len(), 0);
    }
}
