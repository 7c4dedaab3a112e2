//! KIP-392's choice of the replica a consumer should fetch from, as a pure
//! function of what the leader knows (Kafka's `RackAwareReplicaSelector`
//! over the views `ReplicaManager.findPreferredReadReplica` builds): no
//! clock, no locks, no metadata lookups.
//!
//! The leader builds one [`ReplicaView`] for itself and one for every
//! follower that may serve the consumer: in the ISR, live (registered and
//! unfenced), and holding the fetch offset (log start ≤ offset ≤ log end).
//! The selector then prefers, among the replicas in the consumer's rack
//! (`client.rack`), the leader; else the most caught-up follower there.
//! No rack given, or no replica in it: the leader.

/// One replica as the selector sees it (Kafka's `ReplicaView`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaView<'a> {
    pub broker_id: i32,
    /// The broker's `broker.rack`, from its registration.
    pub rack: Option<&'a str>,
    /// The replica's log end offset (the leader's own, or what the
    /// follower's last fetch said).
    pub log_end_offset: i64,
    /// How long since the replica was last caught up with the leader's log
    /// end (0 for the leader).
    pub time_since_caught_up_ms: i64,
}

/// The follower a consumer in `client_rack` should read from, or `None`
/// for the leader (Kafka's `RackAwareReplicaSelector.select`; the leader
/// is never named in the response, `findPreferredReadReplica` drops it).
/// `followers` are the candidates as the module docs describe them.
pub fn rack_aware(
    client_rack: &str,
    leader: &ReplicaView<'_>,
    followers: &[ReplicaView<'_>],
) -> Option<i32> {
    if client_rack.is_empty() || leader.rack == Some(client_rack) {
        return None;
    }
    // Kafka's `ReplicaView.comparator`: the larger log end offset, then the
    // more recently caught up. The broker id only makes a tie deterministic.
    followers
        .iter()
        .filter(|f| f.rack == Some(client_rack))
        .max_by(|a, b| {
            a.log_end_offset
                .cmp(&b.log_end_offset)
                .then(b.time_since_caught_up_ms.cmp(&a.time_since_caught_up_ms))
                .then(b.broker_id.cmp(&a.broker_id))
        })
        .map(|f| f.broker_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(broker_id: i32, rack: Option<&str>, leo: i64, since: i64) -> ReplicaView<'_> {
        ReplicaView {
            broker_id,
            rack,
            log_end_offset: leo,
            time_since_caught_up_ms: since,
        }
    }

    #[test]
    fn the_leader_serves_unless_only_a_follower_shares_the_clients_rack() {
        let leader = view(1, Some("a"), 10, 0);
        let followers = [view(2, Some("b"), 10, 0), view(3, Some("c"), 10, 0)];
        // The consumer's rack is the leader's, none, or nobody's.
        assert_eq!(rack_aware("a", &leader, &followers), None);
        assert_eq!(rack_aware("", &leader, &followers), None);
        assert_eq!(rack_aware("z", &leader, &followers), None);
        // Only a follower is in the consumer's rack.
        assert_eq!(rack_aware("b", &leader, &followers), Some(2));
        assert_eq!(rack_aware("c", &leader, &followers), Some(3));
        // A leader without a rack never matches a rack.
        let rackless = view(1, None, 10, 0);
        assert_eq!(rack_aware("b", &rackless, &followers), Some(2));
    }

    #[test]
    fn among_followers_in_the_rack_the_most_caught_up_wins() {
        let leader = view(1, Some("a"), 10, 0);
        let followers = [
            view(2, Some("b"), 8, 0),
            view(3, Some("b"), 10, 500),
            view(4, Some("b"), 10, 100),
            view(5, Some("c"), 10, 0),
        ];
        // 3 and 4 are at the log end; 4 caught up more recently.
        assert_eq!(rack_aware("b", &leader, &followers), Some(4));
        // A full tie goes to the lower id, every time.
        let tie = [view(7, Some("b"), 10, 0), view(6, Some("b"), 10, 0)];
        assert_eq!(rack_aware("b", &leader, &tie), Some(6));
    }
}
