//! The coordinators' settings (`group.*`, `offsets.*`, `transaction.*`),
//! read and checked once at start with the rest of the broker's properties.
//! The coordinators (`group`, `txn`) take them from here.

use std::collections::BTreeMap;

use super::{ConfigError, parse_prop as prop};

/// Bound on timer settings, so deadlines computed from them cannot overflow
/// (Kafka's are ints: about 24 days).
pub(crate) const MAX_TIMER_MS: i64 = i32::MAX as i64;

/// The server-side assignors, named as Kafka names them in
/// `ConsumerGroupHeartbeat`'s `ServerAssignor` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignor {
    /// `uniform`: balanced, then sticky.
    Uniform,
    /// `range`: contiguous ranges per topic, sticky, co-partitioned.
    Range,
}

impl Assignor {
    /// The assignor of a group whose members name none: `uniform`, the first
    /// of Kafka's default `group.consumer.assignors`.
    pub const DEFAULT: Assignor = Assignor::Uniform;

    /// The assignor with Kafka's name `name`, or `None` if we have none by
    /// that name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "uniform" => Some(Self::Uniform),
            "range" => Some(Self::Range),
            _ => None,
        }
    }

    /// Kafka's name for this assignor.
    pub fn name(self) -> &'static str {
        match self {
            Self::Uniform => "uniform",
            Self::Range => "range",
        }
    }
}

/// The coordinator's settings, from broker properties with Kafka's names.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// `group.min.session.timeout.ms`, default 6 s.
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`, default 30 minutes.
    pub max_session_timeout_ms: i32,
    /// `group.initial.rebalance.delay.ms`, default 3 s.
    pub initial_rebalance_delay_ms: i64,
    /// `group.max.size` (classic), default unbounded.
    pub max_size: Option<usize>,
    /// `offsets.topic.num.partitions`, default 50.
    pub offsets_partitions: i32,
    /// `offsets.topic.replication.factor`, default 3 (capped by the brokers
    /// there are when the topic is created).
    pub offsets_replication_factor: i16,
    /// `offsets.commit.timeout.ms`, default 5 s: how long a write of the
    /// group coordinator (an offset commit, a group change) may wait to be
    /// replicated before it fails with COORDINATOR_NOT_AVAILABLE.
    pub offsets_commit_timeout_ms: u64,
    /// `offsets.retention.minutes`, default 7 days, in ms.
    pub offsets_retention_ms: i64,
    /// `offsets.retention.check.interval.ms`, default 10 minutes.
    pub offsets_retention_check_interval_ms: i64,
    /// `offset.metadata.max.bytes`, default 4096.
    pub offset_metadata_max_bytes: usize,
    /// `group.consumer.heartbeat.interval.ms`, default 5 s.
    pub consumer_heartbeat_interval_ms: i32,
    /// `group.consumer.session.timeout.ms`, default 45 s.
    pub consumer_session_timeout_ms: i32,
    /// `group.consumer.max.size`, default unbounded.
    pub consumer_max_size: Option<usize>,
    /// `group.consumer.assignors`, default `uniform,range`; the first is
    /// the default.
    pub consumer_assignors: Vec<Assignor>,
}

fn positive<T: PartialOrd + Default + std::fmt::Display>(
    name: &str,
    v: T,
) -> Result<T, ConfigError> {
    if v > T::default() {
        Ok(v)
    } else {
        Err(ConfigError(format!("{name}: must be positive, got {v}")))
    }
}

impl GroupConfig {
    /// Reads and checks the group properties.
    pub fn from_properties(props: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let max_size = |name: &str| -> Result<Option<usize>, ConfigError> {
            let v: i64 = prop(props, name, i64::from(i32::MAX))?;
            let v = positive(name, v)?;
            Ok(usize::try_from(v).ok().filter(|v| *v < i32::MAX as usize))
        };
        let assignors = props
            .get("group.consumer.assignors")
            .map_or("uniform,range", String::as_str)
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|name| {
                // Kafka also accepts the class names.
                let short = name
                    .rsplit('.')
                    .next()
                    .unwrap_or(name)
                    .trim_end_matches("Assignor")
                    .to_ascii_lowercase();
                Assignor::from_name(&short).ok_or_else(|| {
                    ConfigError(format!(
                        "group.consumer.assignors: unknown assignor {name:?} (uniform and range exist)"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if assignors.is_empty() {
            return Err(ConfigError(
                "group.consumer.assignors: must name at least one assignor".into(),
            ));
        }
        let mut config = Self {
            min_session_timeout_ms: positive(
                "group.min.session.timeout.ms",
                prop(props, "group.min.session.timeout.ms", 6_000)?,
            )?,
            max_session_timeout_ms: positive(
                "group.max.session.timeout.ms",
                prop(props, "group.max.session.timeout.ms", 1_800_000)?,
            )?,
            initial_rebalance_delay_ms: prop::<i64>(
                props,
                "group.initial.rebalance.delay.ms",
                3_000,
            )?
            .max(0),
            max_size: max_size("group.max.size")?,
            offsets_partitions: positive(
                "offsets.topic.num.partitions",
                prop(props, "offsets.topic.num.partitions", 50)?,
            )?,
            offsets_replication_factor: positive(
                "offsets.topic.replication.factor",
                prop(props, "offsets.topic.replication.factor", 3)?,
            )?,
            offsets_commit_timeout_ms: positive(
                "offsets.commit.timeout.ms",
                prop::<u64>(props, "offsets.commit.timeout.ms", 5_000)?,
            )?
            .min(MAX_TIMER_MS.unsigned_abs()),
            offsets_retention_ms: positive(
                "offsets.retention.minutes",
                prop::<i64>(props, "offsets.retention.minutes", 10_080)?,
            )?
            .saturating_mul(60_000),
            offsets_retention_check_interval_ms: positive(
                "offsets.retention.check.interval.ms",
                prop(props, "offsets.retention.check.interval.ms", 600_000)?,
            )?,
            offset_metadata_max_bytes: prop(props, "offset.metadata.max.bytes", 4096)?,
            consumer_heartbeat_interval_ms: positive(
                "group.consumer.heartbeat.interval.ms",
                prop(props, "group.consumer.heartbeat.interval.ms", 5_000)?,
            )?,
            consumer_session_timeout_ms: positive(
                "group.consumer.session.timeout.ms",
                prop(props, "group.consumer.session.timeout.ms", 45_000)?,
            )?,
            consumer_max_size: max_size("group.consumer.max.size")?,
            consumer_assignors: assignors,
        };
        config.initial_rebalance_delay_ms =
            config.initial_rebalance_delay_ms.clamp(0, MAX_TIMER_MS);
        config.offsets_retention_check_interval_ms =
            config.offsets_retention_check_interval_ms.min(MAX_TIMER_MS);
        if config.min_session_timeout_ms > config.max_session_timeout_ms {
            return Err(ConfigError(
                "group.min.session.timeout.ms must not exceed group.max.session.timeout.ms".into(),
            ));
        }
        Ok(config)
    }

    /// `uniform, range`, for error messages.
    pub fn assignor_names(&self) -> String {
        self.consumer_assignors
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The coordinator's settings, from broker properties with Kafka's names.
#[derive(Debug, Clone)]
pub struct TxnConfig {
    /// `transaction.state.log.num.partitions`, default 50.
    pub partitions: i32,
    /// `transaction.state.log.replication.factor`, default 3 (capped by the
    /// brokers there are when the topic is created).
    pub replication_factor: i16,
    /// `transaction.state.log.min.isr`, default 2: the topic's
    /// `min.insync.replicas` (capped by its replication factor, as the
    /// factor is by the brokers there are).
    pub min_isr: i16,
    /// `transaction.max.timeout.ms`, default 15 minutes.
    pub max_timeout_ms: i32,
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`,
    /// default 10 s: how often timed-out transactions are looked for.
    pub abort_timed_out_interval_ms: i64,
    /// `transactional.id.expiration.ms`, default 7 days: a transactional id
    /// with no transaction open and no change for this long is forgotten
    /// (what bounds the coordinator's memory, as in Kafka).
    pub id_expiration_ms: i64,
}

impl TxnConfig {
    pub fn from_properties(props: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let positive = |name: &str, v: i64| -> Result<i64, ConfigError> {
            if v > 0 {
                Ok(v)
            } else {
                Err(ConfigError(format!("{name}: must be positive, got {v}")))
            }
        };
        let partitions = positive(
            "transaction.state.log.num.partitions",
            prop(props, "transaction.state.log.num.partitions", 50)?,
        )?;
        let replication = positive(
            "transaction.state.log.replication.factor",
            prop(props, "transaction.state.log.replication.factor", 3)?,
        )?;
        let min_isr = positive(
            "transaction.state.log.min.isr",
            prop(props, "transaction.state.log.min.isr", 2)?,
        )?;
        Ok(Self {
            min_isr: i16::try_from(min_isr)
                .map_err(|_| ConfigError("transaction.state.log.min.isr: too large".into()))?,
            partitions: i32::try_from(partitions).map_err(|_| {
                ConfigError("transaction.state.log.num.partitions: too large".into())
            })?,
            replication_factor: i16::try_from(replication).map_err(|_| {
                ConfigError("transaction.state.log.replication.factor: too large".into())
            })?,
            max_timeout_ms: i32::try_from(positive(
                "transaction.max.timeout.ms",
                prop(props, "transaction.max.timeout.ms", 900_000)?,
            )?)
            .map_err(|_| ConfigError("transaction.max.timeout.ms: too large".into()))?,
            abort_timed_out_interval_ms: positive(
                "transaction.abort.timed.out.transaction.cleanup.interval.ms",
                prop(
                    props,
                    "transaction.abort.timed.out.transaction.cleanup.interval.ms",
                    10_000,
                )?,
            )?
            .min(MAX_TIMER_MS),
            id_expiration_ms: positive(
                "transactional.id.expiration.ms",
                prop(props, "transactional.id.expiration.ms", 604_800_000)?,
            )?,
        })
    }
}
