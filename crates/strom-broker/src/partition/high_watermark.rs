//! Kafka's high-watermark rule (`Partition.maybeIncrementLeaderHW`) as a
//! pure function of what the leader knows of its replicas: no clock, no
//! locks, no I/O, so it is tested from a table of cases
//! (`testdata/high_watermark.txt`) as raft-rs tests its commit index.
//!
//! The rule:
//! - while the in-sync replicas are fewer than the effective minimum
//!   (`min(min.insync.replicas, replication factor)`, KIP-966 part 1), the
//!   high watermark does not move;
//! - otherwise it is the smallest log end offset among the leader and every
//!   follower that is in the *maximal* ISR (the ISR plus a pending
//!   AlterPartition's additions) or is caught up and ISR-eligible;
//! - it never goes backwards.

/// What the leader knows of one follower: plain data, updated by its
/// fetches (like raft-rs's `Progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaState {
    pub broker_id: i32,
    /// The follower's log end offset, from its last fetch.
    pub log_end_offset: i64,
    /// The follower's log start offset, from its last fetch (-1 until it
    /// fetches): KIP-392 sends a consumer only to a follower that holds
    /// the consumer's offset.
    pub log_start_offset: i64,
    /// When the follower last fetched up to the leader's log end offset of
    /// the time (Kafka's `lastCaughtUpTimeMs`).
    pub last_caught_up_time_ms: i64,
    /// Whether the follower may join the ISR: not fenced, not shutting down,
    /// its broker epoch current (KIP-841, KIP-903).
    pub isr_eligible: bool,
    /// The leader's log end offset at the follower's previous fetch, and
    /// when that was (Kafka's `lastFetchLeaderLogEndOffset`,
    /// `lastFetchTimeMs`): a follower that reached it has been caught up
    /// since then, even if the leader appended meanwhile.
    pub last_fetch_leader_log_end_offset: i64,
    pub last_fetch_time_ms: i64,
}

impl ReplicaState {
    /// Kafka's `isCaughtUp`: at the leader's log end offset, or there within
    /// `replica.lag.time.max.ms`.
    pub fn is_caught_up(&self, leader_log_end_offset: i64, now_ms: i64, lag_max_ms: i64) -> bool {
        self.log_end_offset == leader_log_end_offset
            || now_ms.saturating_sub(self.last_caught_up_time_ms) <= lag_max_ms
    }
}

/// Everything the rule looks at.
#[derive(Debug, Clone, Copy)]
pub struct HighWatermarkInputs<'a> {
    pub leader_log_end_offset: i64,
    /// The high watermark now.
    pub current: i64,
    /// The followers (every replica but the leader).
    pub followers: &'a [ReplicaState],
    /// The committed ISR's size, the leader included.
    pub isr_size: usize,
    /// The followers in the maximal ISR: the ISR, plus the replicas a
    /// pending AlterPartition adds.
    pub maximal_isr_followers: &'a [i32],
    pub replication_factor: usize,
    /// `min.insync.replicas`.
    pub min_insync_replicas: usize,
    pub now_ms: i64,
    /// `replica.lag.time.max.ms`.
    pub replica_lag_time_max_ms: i64,
}

/// Kafka's default `replica.lag.time.max.ms`.
pub const DEFAULT_REPLICA_LAG_TIME_MAX_MS: i64 = 30_000;

/// `min.insync.replicas` bounded by the replication factor (Kafka's
/// `effectiveMinIsr`): what the high watermark and acks=all need in the ISR.
pub fn effective_min_isr(min_insync_replicas: usize, replication_factor: usize) -> usize {
    min_insync_replicas.min(replication_factor).max(1)
}

/// The high watermark the leader may move to (never below `current`).
pub fn next_high_watermark(inputs: &HighWatermarkInputs<'_>) -> i64 {
    if inputs.isr_size < effective_min_isr(inputs.min_insync_replicas, inputs.replication_factor) {
        return inputs.current;
    }
    let counted = inputs.followers.iter().filter(|f| {
        inputs.maximal_isr_followers.contains(&f.broker_id)
            || (f.isr_eligible
                && f.is_caught_up(
                    inputs.leader_log_end_offset,
                    inputs.now_ms,
                    inputs.replica_lag_time_max_ms,
                ))
    });
    let candidate = counted
        .map(|f| f.log_end_offset)
        .fold(inputs.leader_log_end_offset, i64::min);
    candidate.max(inputs.current)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One case of `testdata/high_watermark.txt`:
    /// `name key=value ... => expected`.
    fn run_case(line: &str) {
        let (fields, expected) = line.split_once("=>").expect("a case has =>");
        let mut words = fields.split_whitespace();
        let name = words.next().expect("a case has a name");
        let value = |key: &str| -> String {
            fields
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('=').map(str::to_owned))
                .unwrap_or_default()
        };
        let number = |text: String| {
            text.parse::<i64>()
                .unwrap_or_else(|_| panic!("{name}: {text:?}"))
        };
        let followers: Vec<ReplicaState> = value("followers")
            .split(',')
            .filter(|f| !f.is_empty())
            .map(|f| {
                let parts: Vec<&str> = f.split(':').collect();
                assert_eq!(
                    parts.len(),
                    4,
                    "{name}: follower {f} is id:leo:caught_up_at:eligible"
                );
                ReplicaState {
                    broker_id: parts[0].parse().unwrap(),
                    log_end_offset: parts[1].parse().unwrap(),
                    log_start_offset: 0,
                    last_caught_up_time_ms: parts[2].parse().unwrap(),
                    isr_eligible: parts[3] == "y",
                    last_fetch_leader_log_end_offset: -1,
                    last_fetch_time_ms: 0,
                }
            })
            .collect();
        let maximal: Vec<i32> = value("max_isr")
            .split(',')
            .filter(|f| !f.is_empty())
            .map(|f| f.parse().unwrap())
            .collect();
        let inputs = HighWatermarkInputs {
            leader_log_end_offset: number(value("leo")),
            current: number(value("hw")),
            followers: &followers,
            isr_size: usize::try_from(number(value("isr"))).unwrap(),
            maximal_isr_followers: &maximal,
            replication_factor: usize::try_from(number(value("rf"))).unwrap(),
            min_insync_replicas: usize::try_from(number(value("min_isr"))).unwrap(),
            now_ms: number(value("now")),
            replica_lag_time_max_ms: DEFAULT_REPLICA_LAG_TIME_MAX_MS,
        };
        let expected: i64 = expected.trim().parse().unwrap();
        assert_eq!(
            next_high_watermark(&inputs),
            expected,
            "case {name}: {line}"
        );
    }

    #[test]
    fn the_rule_holds_for_every_case_in_the_table() {
        let table = include_str!("testdata/high_watermark.txt");
        let cases: Vec<&str> = table
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert!(cases.len() >= 10, "the table has its cases");
        for case in cases {
            run_case(case);
        }
    }
}
