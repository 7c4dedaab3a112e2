//! The replica fetchers' and the ISR's settings, Kafka's names and defaults
//! (`ReplicationConfigs`).

use std::collections::BTreeMap;

use super::coordinators::MAX_TIMER_MS;
use super::{ConfigError, parse_prop};

/// How followers fetch and when they leave the ISR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationSettings {
    /// `replica.lag.time.max.ms`, default 30 s: a follower that has not
    /// caught up with the leader's log end for this long leaves the ISR.
    pub replica_lag_time_max_ms: i64,
    /// `replica.fetch.wait.max.ms`, default 500 ms: how long a follower's
    /// fetch waits at the leader for data. Kafka requires it below
    /// `replica.lag.time.max.ms`, or followers would drop out while idle.
    pub replica_fetch_wait_max_ms: i32,
    /// `replica.fetch.min.bytes`, default 1.
    pub replica_fetch_min_bytes: i32,
    /// `replica.fetch.max.bytes`, default 1 MiB: per partition (one batch is
    /// always returned even if larger).
    pub replica_fetch_max_bytes: i32,
    /// `replica.fetch.response.max.bytes`, default 10 MiB: per response.
    pub replica_fetch_response_max_bytes: i32,
    /// `replica.fetch.backoff.ms`, default 1 s: the pause after a failed
    /// fetch (the leader unreachable, a partition in error).
    pub replica_fetch_backoff_ms: u64,
    /// `replica.socket.timeout.ms`, default 30 s: a fetch answered later
    /// than this (plus its wait) counts as failed and the connection is
    /// opened again.
    pub replica_socket_timeout_ms: u64,
    /// `replica.high.watermark.checkpoint.interval.ms`, default 5 s: how
    /// often high watermarks are written to `replication-offset-checkpoint`.
    pub replica_high_watermark_checkpoint_interval_ms: u64,
    /// `replica.selector.class` (KIP-392): how a leader picks the replica a
    /// consumer should fetch from. Default none: consumers are never sent
    /// elsewhere (followers still serve consumers that come to them).
    pub replica_selector: ReplicaSelector,
    /// Test only (`test.plant.bug`): a replication bug planted so that the
    /// chaos harness can show it catches what the bug does. Never set it on
    /// a cluster whose data matters.
    pub planted_bug: Option<PlantedBug>,
}

/// The bugs `test.plant.bug` can plant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// `ack-local`: acks=all is answered at the leader's append, without
    /// waiting for the ISR (acknowledged writes are lost when a leader
    /// fails).
    AckLocal,
    /// `no-truncation`: followers fetch without their last fetched epoch,
    /// so the leader never answers a DivergingEpoch and a follower keeps
    /// records a deposed leader never replicated (Kafka before KIP-101 and
    /// KIP-320): the replicas differ at those offsets.
    NoTruncation,
}

impl PlantedBug {
    /// The value of `test.plant.bug` naming each bug.
    pub const NAMES: [(&str, PlantedBug); 2] = [
        ("ack-local", PlantedBug::AckLocal),
        ("no-truncation", PlantedBug::NoTruncation),
    ];

    /// What the bug does, for the loud line at start.
    pub fn warning(self) -> &'static str {
        match self {
            Self::AckLocal => {
                "test.plant.bug=ack-local: acks=all is answered at the leader's append; acknowledged writes WILL be lost when a leader fails (a test-only switch)"
            }
            Self::NoTruncation => {
                "test.plant.bug=no-truncation: followers never truncate a diverging log; replicas WILL differ after a leader fails (a test-only switch)"
            }
        }
    }
}

/// Kafka's class name of the rack-aware selector, the one selector Strom has.
pub const RACK_AWARE_REPLICA_SELECTOR: &str =
    "org.apache.kafka.common.replica.RackAwareReplicaSelector";
/// Kafka's selector that always names the leader: the same as none.
pub const LEADER_SELECTOR: &str = "org.apache.kafka.common.replica.LeaderSelector";

/// The replica selectors Kafka ships (`replica.selector.class`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplicaSelector {
    /// No selector (Kafka's default, null) or `LeaderSelector`: the leader
    /// serves every consumer that fetches from it.
    #[default]
    LeaderOnly,
    /// `RackAwareReplicaSelector`: a consumer whose `client.rack` matches
    /// the rack of an in-sync follower but not the leader's is sent to it.
    RackAware,
}

impl ReplicaSelector {
    /// The selector a `replica.selector.class` value names. Kafka loads any
    /// class; Strom knows Kafka's two, and refuses anything else at start
    /// rather than run without the selector the operator asked for.
    pub fn parse(value: &str) -> Result<Self, ConfigError> {
        match value.trim() {
            "" | LEADER_SELECTOR => Ok(Self::LeaderOnly),
            RACK_AWARE_REPLICA_SELECTOR => Ok(Self::RackAware),
            other => Err(ConfigError(format!(
                "Invalid value {other} for configuration replica.selector.class: Strom supports {RACK_AWARE_REPLICA_SELECTOR} and {LEADER_SELECTOR} (or no value: leader only)"
            ))),
        }
    }
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        Self {
            replica_lag_time_max_ms: 30_000,
            replica_fetch_wait_max_ms: 500,
            replica_fetch_min_bytes: 1,
            replica_fetch_max_bytes: 1024 * 1024,
            replica_fetch_response_max_bytes: 10 * 1024 * 1024,
            replica_fetch_backoff_ms: 1000,
            replica_socket_timeout_ms: 30_000,
            replica_high_watermark_checkpoint_interval_ms: 5000,
            replica_selector: ReplicaSelector::LeaderOnly,
            planted_bug: None,
        }
    }
}

impl ReplicationSettings {
    /// Reads and checks the settings, with Kafka's bounds.
    pub fn parse(props: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let int = |name: &str, default: i64, min: i64, max: i64| -> Result<i64, ConfigError> {
            let value: i64 = parse_prop(props, name, default)?;
            if value < min {
                return Err(ConfigError(format!(
                    "Invalid value {value} for configuration {name}: Value must be at least {min}"
                )));
            }
            if value > max {
                return Err(ConfigError(format!(
                    "Invalid value {value} for configuration {name}: Value must be no more than {max}"
                )));
            }
            Ok(value)
        };
        let bytes = |name: &str, default: i32, min: i64| -> Result<i32, ConfigError> {
            int(name, i64::from(default), min, i64::from(i32::MAX))
                .map(|v| i32::try_from(v).unwrap_or(default))
        };
        let ms = |name: &str, default: u64| -> Result<u64, ConfigError> {
            int(name, i64::try_from(default).unwrap_or(0), 1, MAX_TIMER_MS)
                .map(|v| u64::try_from(v).unwrap_or(default))
        };
        let settings = Self {
            replica_lag_time_max_ms: int(
                "replica.lag.time.max.ms",
                d.replica_lag_time_max_ms,
                1,
                MAX_TIMER_MS,
            )?,
            replica_fetch_wait_max_ms: bytes(
                "replica.fetch.wait.max.ms",
                d.replica_fetch_wait_max_ms,
                0,
            )?,
            replica_fetch_min_bytes: bytes(
                "replica.fetch.min.bytes",
                d.replica_fetch_min_bytes,
                1,
            )?,
            replica_fetch_max_bytes: bytes(
                "replica.fetch.max.bytes",
                d.replica_fetch_max_bytes,
                0,
            )?,
            replica_fetch_response_max_bytes: bytes(
                "replica.fetch.response.max.bytes",
                d.replica_fetch_response_max_bytes,
                0,
            )?,
            replica_fetch_backoff_ms: ms("replica.fetch.backoff.ms", d.replica_fetch_backoff_ms)?,
            replica_socket_timeout_ms: ms(
                "replica.socket.timeout.ms",
                d.replica_socket_timeout_ms,
            )?,
            replica_high_watermark_checkpoint_interval_ms: ms(
                "replica.high.watermark.checkpoint.interval.ms",
                d.replica_high_watermark_checkpoint_interval_ms,
            )?,
            replica_selector: props
                .get("replica.selector.class")
                .map_or(Ok(d.replica_selector), |v| ReplicaSelector::parse(v))?,
            planted_bug: match props.get("test.plant.bug").map(|v| v.trim()) {
                None | Some("") => None,
                Some(name) => Some(
                    PlantedBug::NAMES
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, bug)| *bug)
                        .ok_or_else(|| {
                            ConfigError(format!(
                                "Invalid value {name} for configuration test.plant.bug: the bugs to plant are {}",
                                PlantedBug::NAMES.map(|(n, _)| n).join(", ")
                            ))
                        })?,
                ),
            },
        };
        // Kafka: "replica.fetch.wait.max.ms should always be less than or
        // equal to replica.lag.time.max.ms to prevent frequent changes in ISR".
        if i64::from(settings.replica_fetch_wait_max_ms) > settings.replica_lag_time_max_ms {
            return Err(ConfigError(
                "replica.fetch.wait.max.ms should always be less than or equal to replica.lag.time.max.ms to prevent frequent changes in ISR".to_owned(),
            ));
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<ReplicationSettings, ConfigError> {
        let props = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ReplicationSettings::parse(&props)
    }

    #[test]
    fn kafka_defaults_and_bounds() {
        assert_eq!(parse(&[]).unwrap(), ReplicationSettings::default());
        let s = parse(&[
            ("replica.lag.time.max.ms", "3000"),
            ("replica.fetch.wait.max.ms", "100"),
        ])
        .unwrap();
        assert_eq!(s.replica_lag_time_max_ms, 3000);
        assert_eq!(s.replica_fetch_wait_max_ms, 100);
        assert!(parse(&[("replica.lag.time.max.ms", "0")]).is_err());
        assert!(parse(&[("replica.fetch.max.bytes", "-1")]).is_err());
        assert!(parse(&[("replica.fetch.backoff.ms", "x")]).is_err());
        let err = parse(&[("replica.lag.time.max.ms", "400")]).unwrap_err();
        assert!(err.0.contains("replica.fetch.wait.max.ms"), "{}", err.0);
    }

    #[test]
    fn the_planted_bug_is_off_unless_named_and_unknown_names_are_refused() {
        assert_eq!(parse(&[]).unwrap().planted_bug, None);
        assert_eq!(parse(&[("test.plant.bug", "")]).unwrap().planted_bug, None);
        for (name, bug) in PlantedBug::NAMES {
            assert_eq!(
                parse(&[("test.plant.bug", name)]).unwrap().planted_bug,
                Some(bug)
            );
        }
        let err = parse(&[("test.plant.bug", "lose-everything")]).unwrap_err();
        assert!(err.0.contains("ack-local, no-truncation"), "{err:?}");
    }

    #[test]
    fn replica_selector_takes_kafkas_class_names_only() {
        assert_eq!(
            parse(&[]).unwrap().replica_selector,
            ReplicaSelector::LeaderOnly
        );
        assert_eq!(
            parse(&[("replica.selector.class", RACK_AWARE_REPLICA_SELECTOR)])
                .unwrap()
                .replica_selector,
            ReplicaSelector::RackAware
        );
        assert_eq!(
            parse(&[("replica.selector.class", LEADER_SELECTOR)])
                .unwrap()
                .replica_selector,
            ReplicaSelector::LeaderOnly
        );
        let err = parse(&[("replica.selector.class", "com.example.MySelector")]).unwrap_err();
        assert!(
            err.0.contains("replica.selector.class") && err.0.contains("com.example.MySelector"),
            "{}",
            err.0
        );
    }
}
