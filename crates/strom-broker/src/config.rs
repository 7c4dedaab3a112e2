//! Broker configuration with Kafka's property names, and the topic config
//! definitions (names, types, defaults, broker synonyms) that DescribeConfigs,
//! CreateTopics and the logs share.
//!
//! Sources, as Kafka reports them: a topic override is DYNAMIC_TOPIC_CONFIG; a
//! value from the broker's properties (file or flags) is STATIC_BROKER_CONFIG;
//! otherwise DEFAULT_CONFIG.

pub mod cluster;
pub mod coordinators;
pub mod properties;
pub mod replication;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use strom_controller::MetadataImage;
use strom_protocol::record_batch::TimestampType;
use strom_storage::LogConfig;

pub use cluster::{ClusterSettings, ProcessRoles, Voter};
pub use coordinators::{Assignor, GroupConfig, TxnConfig};

/// Default port of the metrics listener for the default listener 9092
/// (Redpanda's admin port, which serves its metrics too).
pub const DEFAULT_METRICS_PORT: u16 = 9644;

/// The default metrics port is the listen port plus this (9092 → 9644, as
/// before), so that several nodes on one host, each on its own listen port,
/// never clash on their metrics ports: 9192 → 9744, 9292 → 9844.
pub const METRICS_PORT_OFFSET: u16 = DEFAULT_METRICS_PORT - 9092;

/// A bad property value or an unknown topic config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Kafka's config value types (DescribeConfigs v3+ reports them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean,
    String,
    Int,
    Short,
    Long,
    Double,
    List,
    Class,
    Password,
}

impl ConfigType {
    /// DescribeConfigs' `config_type` code.
    pub fn code(self) -> i8 {
        match self {
            Self::Boolean => 1,
            Self::String => 2,
            Self::Int => 3,
            Self::Short => 4,
            Self::Long => 5,
            Self::Double => 6,
            Self::List => 7,
            Self::Class => 8,
            Self::Password => 9,
        }
    }

    /// Checks that `value` parses as this type.
    pub fn check(self, name: &str, value: &str) -> Result<(), ConfigError> {
        let ok = match self {
            Self::Boolean => {
                value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false")
            }
            Self::Int => value.trim().parse::<i32>().is_ok(),
            Self::Short => value.trim().parse::<i16>().is_ok(),
            Self::Long => value.trim().parse::<i64>().is_ok(),
            Self::Double => value.trim().parse::<f64>().is_ok_and(f64::is_finite),
            Self::String | Self::List | Self::Class | Self::Password => true,
        };
        if ok {
            Ok(())
        } else if self == Self::Boolean {
            Err(ConfigError(format!(
                "Invalid value {value} for configuration {name}: Expected value to be either true or false"
            )))
        } else {
            Err(ConfigError(format!(
                "Invalid value {value} for configuration {name}: Not a number of type {}",
                format!("{self:?}").to_uppercase()
            )))
        }
    }
}

/// A topic config: name, type, Kafka's default, and the broker properties that
/// set it cluster-wide (most specific first).
#[derive(Debug, Clone, Copy)]
pub struct TopicConfigDef {
    pub name: &'static str,
    pub config_type: ConfigType,
    pub default: &'static str,
    /// `(broker property, how to turn its value into the topic's unit)`.
    pub synonyms: &'static [(&'static str, Unit)],
    /// Allowed values, for enumerated configs.
    pub valid: &'static [&'static str],
    pub doc: &'static str,
}

/// Unit conversion from a broker synonym to the topic config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Same,
    MinutesToMs,
    HoursToMs,
}

const MS_PER_HOUR: i64 = 3_600_000;
const LONG_MAX: &str = "9223372036854775807";

/// Kafka 4.x's topic configs (TopicConfig and LogConfig), in name order.
pub const TOPIC_CONFIGS: &[TopicConfigDef] = &[
    TopicConfigDef {
        name: "cleanup.policy",
        config_type: ConfigType::List,
        default: "delete",
        synonyms: &[("log.cleanup.policy", Unit::Same)],
        valid: &["delete", "compact"],
        doc: "Designates the retention policy to use on old log segments: delete, compact, or both.",
    },
    TopicConfigDef {
        name: "compression.gzip.level",
        config_type: ConfigType::Int,
        default: "-1",
        synonyms: &[("compression.gzip.level", Unit::Same)],
        valid: &[],
        doc: "The compression level to use if compression.type is set to gzip.",
    },
    TopicConfigDef {
        name: "compression.lz4.level",
        config_type: ConfigType::Int,
        default: "9",
        synonyms: &[("compression.lz4.level", Unit::Same)],
        valid: &[],
        doc: "The compression level to use if compression.type is set to lz4.",
    },
    TopicConfigDef {
        name: "compression.type",
        config_type: ConfigType::String,
        default: "producer",
        synonyms: &[("compression.type", Unit::Same)],
        valid: &["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"],
        doc: "Specify the final compression type for a given topic.",
    },
    TopicConfigDef {
        name: "compression.zstd.level",
        config_type: ConfigType::Int,
        default: "3",
        synonyms: &[("compression.zstd.level", Unit::Same)],
        valid: &[],
        doc: "The compression level to use if compression.type is set to zstd.",
    },
    TopicConfigDef {
        name: "delete.retention.ms",
        config_type: ConfigType::Long,
        default: "86400000",
        synonyms: &[("log.cleaner.delete.retention.ms", Unit::Same)],
        valid: &[],
        doc: "The amount of time to retain tombstone markers for log compacted topics.",
    },
    TopicConfigDef {
        name: "file.delete.delay.ms",
        config_type: ConfigType::Long,
        default: "60000",
        synonyms: &[("log.segment.delete.delay.ms", Unit::Same)],
        valid: &[],
        doc: "The time to wait before deleting a file from the filesystem.",
    },
    TopicConfigDef {
        name: "flush.messages",
        config_type: ConfigType::Long,
        default: LONG_MAX,
        synonyms: &[("log.flush.interval.messages", Unit::Same)],
        valid: &[],
        doc: "The number of messages written to a log partition before we force an fsync on the log.",
    },
    TopicConfigDef {
        name: "flush.ms",
        config_type: ConfigType::Long,
        default: LONG_MAX,
        synonyms: &[("log.flush.interval.ms", Unit::Same)],
        valid: &[],
        doc: "The time interval at which we will force an fsync of data written to the log.",
    },
    TopicConfigDef {
        name: "follower.replication.throttled.replicas",
        config_type: ConfigType::List,
        default: "",
        synonyms: &[],
        valid: &[],
        doc: "A list of replicas for which log replication should be throttled on the follower side.",
    },
    TopicConfigDef {
        name: "index.interval.bytes",
        config_type: ConfigType::Int,
        default: "4096",
        synonyms: &[("log.index.interval.bytes", Unit::Same)],
        valid: &[],
        doc: "How frequently Kafka adds an index entry to its offset index.",
    },
    TopicConfigDef {
        name: "leader.replication.throttled.replicas",
        config_type: ConfigType::List,
        default: "",
        synonyms: &[],
        valid: &[],
        doc: "A list of replicas for which log replication should be throttled on the leader side.",
    },
    TopicConfigDef {
        name: "local.retention.bytes",
        config_type: ConfigType::Long,
        default: "-2",
        synonyms: &[("log.local.retention.bytes", Unit::Same)],
        valid: &[],
        doc: "The maximum size of local log segments that can grow for a partition before it deletes the old segments.",
    },
    TopicConfigDef {
        name: "local.retention.ms",
        config_type: ConfigType::Long,
        default: "-2",
        synonyms: &[("log.local.retention.ms", Unit::Same)],
        valid: &[],
        doc: "The number of milliseconds to keep the local log segment before it gets deleted.",
    },
    TopicConfigDef {
        name: "max.compaction.lag.ms",
        config_type: ConfigType::Long,
        default: LONG_MAX,
        synonyms: &[("log.cleaner.max.compaction.lag.ms", Unit::Same)],
        valid: &[],
        doc: "The maximum time a message will remain ineligible for compaction in the log.",
    },
    TopicConfigDef {
        name: "max.message.bytes",
        config_type: ConfigType::Int,
        default: "1048588",
        synonyms: &[("message.max.bytes", Unit::Same)],
        valid: &[],
        doc: "The largest record batch size allowed by Kafka (after compression if compression is enabled).",
    },
    TopicConfigDef {
        name: "message.timestamp.after.max.ms",
        config_type: ConfigType::Long,
        default: "3600000",
        synonyms: &[("log.message.timestamp.after.max.ms", Unit::Same)],
        valid: &[],
        doc: "The maximum allowed difference, in milliseconds, between the timestamp when a broker receives a message and the timestamp specified in the message, for timestamps in the future.",
    },
    TopicConfigDef {
        name: "message.timestamp.before.max.ms",
        config_type: ConfigType::Long,
        default: LONG_MAX,
        synonyms: &[("log.message.timestamp.before.max.ms", Unit::Same)],
        valid: &[],
        doc: "The maximum allowed difference, in milliseconds, between the timestamp when a broker receives a message and the timestamp specified in the message, for timestamps in the past.",
    },
    TopicConfigDef {
        name: "message.timestamp.type",
        config_type: ConfigType::String,
        default: "CreateTime",
        synonyms: &[("log.message.timestamp.type", Unit::Same)],
        valid: &["CreateTime", "LogAppendTime"],
        doc: "Define whether the timestamp in the message is message create time or log append time.",
    },
    TopicConfigDef {
        name: "min.cleanable.dirty.ratio",
        config_type: ConfigType::Double,
        default: "0.5",
        synonyms: &[("log.cleaner.min.cleanable.ratio", Unit::Same)],
        valid: &[],
        doc: "This configuration controls how frequently the log compactor will attempt to clean the log.",
    },
    TopicConfigDef {
        name: "min.compaction.lag.ms",
        config_type: ConfigType::Long,
        default: "0",
        synonyms: &[("log.cleaner.min.compaction.lag.ms", Unit::Same)],
        valid: &[],
        doc: "The minimum time a message will remain uncompacted in the log.",
    },
    TopicConfigDef {
        name: "min.insync.replicas",
        config_type: ConfigType::Int,
        default: "1",
        synonyms: &[("min.insync.replicas", Unit::Same)],
        valid: &[],
        doc: "When a producer sets acks to \"all\", this specifies the minimum number of replicas that must acknowledge a write.",
    },
    TopicConfigDef {
        name: "preallocate",
        config_type: ConfigType::Boolean,
        default: "false",
        synonyms: &[("log.preallocate", Unit::Same)],
        valid: &[],
        doc: "True if we should preallocate the file on disk when creating a new log segment.",
    },
    TopicConfigDef {
        name: "remote.storage.enable",
        config_type: ConfigType::Boolean,
        default: "false",
        synonyms: &[],
        valid: &[],
        doc: "To enable tiered storage for a topic, set this configuration as true.",
    },
    TopicConfigDef {
        name: "retention.bytes",
        config_type: ConfigType::Long,
        default: "-1",
        synonyms: &[("log.retention.bytes", Unit::Same)],
        valid: &[],
        doc: "This configuration controls the maximum size a partition can grow to before we will discard old log segments.",
    },
    TopicConfigDef {
        name: "retention.ms",
        config_type: ConfigType::Long,
        default: "604800000",
        synonyms: &[
            ("log.retention.ms", Unit::Same),
            ("log.retention.minutes", Unit::MinutesToMs),
            ("log.retention.hours", Unit::HoursToMs),
        ],
        valid: &[],
        doc: "This configuration controls the maximum time we will retain a log before we will discard old log segments.",
    },
    TopicConfigDef {
        name: "segment.bytes",
        config_type: ConfigType::Int,
        default: "1073741824",
        synonyms: &[("log.segment.bytes", Unit::Same)],
        valid: &[],
        doc: "This configuration controls the segment file size for the log.",
    },
    TopicConfigDef {
        name: "segment.index.bytes",
        config_type: ConfigType::Int,
        default: "10485760",
        synonyms: &[("log.index.size.max.bytes", Unit::Same)],
        valid: &[],
        doc: "This configuration controls the size of the index that maps offsets to file positions.",
    },
    TopicConfigDef {
        name: "segment.jitter.ms",
        config_type: ConfigType::Long,
        default: "0",
        synonyms: &[
            ("log.roll.jitter.ms", Unit::Same),
            ("log.roll.jitter.hours", Unit::HoursToMs),
        ],
        valid: &[],
        doc: "The maximum random jitter subtracted from the scheduled segment roll time.",
    },
    TopicConfigDef {
        name: "segment.ms",
        config_type: ConfigType::Long,
        default: "604800000",
        synonyms: &[
            ("log.roll.ms", Unit::Same),
            ("log.roll.hours", Unit::HoursToMs),
        ],
        valid: &[],
        doc: "This configuration controls the period of time after which Kafka will force the log to roll even if the segment file isn't full.",
    },
    TopicConfigDef {
        name: "unclean.leader.election.enable",
        config_type: ConfigType::Boolean,
        default: "false",
        synonyms: &[("unclean.leader.election.enable", Unit::Same)],
        valid: &[],
        doc: "Indicates whether to enable replicas not in the ISR set to be elected as leader as a last resort.",
    },
];

/// The definition of topic config `name`.
pub fn topic_config_def(name: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// Where a config value comes from (DescribeConfigs `config_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    DynamicTopic,
    DynamicBroker,
    DynamicDefaultBroker,
    StaticBroker,
    Default,
}

impl ConfigSource {
    pub fn code(self) -> i8 {
        match self {
            Self::DynamicTopic => 1,
            Self::DynamicBroker => 2,
            Self::DynamicDefaultBroker => 3,
            Self::StaticBroker => 4,
            Self::Default => 5,
        }
    }
}

/// One value of a config with where it came from: an entry of DescribeConfigs'
/// `synonyms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigValue {
    pub name: String,
    pub value: String,
    pub source: ConfigSource,
}

/// Checks a topic config override: known name, well-typed, allowed value.
pub fn validate_topic_config(name: &str, value: &str) -> Result<(), ConfigError> {
    let def = topic_config_def(name)
        .ok_or_else(|| ConfigError(format!("Unknown topic config name: {name}")))?;
    def.config_type.check(name, value)?;
    if let Some((min, max)) = topic_config_range(name) {
        let number = value.trim().parse::<f64>().unwrap_or(f64::NAN);
        let fail = |bound: String| {
            Err(ConfigError(format!(
                "Invalid value {value} for configuration {name}: {bound}"
            )))
        };
        // gzip takes -1 (the codec's default) or 1 to 9.
        let gzip_default = name == "compression.gzip.level" && number == -1.0;
        if number < min && !gzip_default {
            return fail(format!("Value must be at least {min}"));
        }
        if number > max {
            return fail(format!("Value must be no more than {max}"));
        }
    }
    if !def.valid.is_empty() {
        let values: Vec<&str> = if def.config_type == ConfigType::List {
            value.split(',').map(str::trim).collect()
        } else {
            vec![value]
        };
        if let Some(bad) = values.iter().find(|v| !def.valid.contains(v)) {
            return Err(ConfigError(format!(
                "Invalid value {bad} for configuration {name}: String must be one of: {}",
                def.valid.join(", ")
            )));
        }
    }
    Ok(())
}

/// The range Kafka's validators allow for a numeric topic config, as
/// `(at least, no more than)`. `segment.bytes` keeps Kafka 3.x's lower bound
/// (one legacy record) so that tests and small deployments can roll often;
/// Kafka 4.0 raised it to 1 MiB.
fn topic_config_range(name: &str) -> Option<(f64, f64)> {
    const MAX: f64 = f64::INFINITY;
    Some(match name {
        "segment.bytes" => (14.0, MAX),
        "segment.ms" | "max.compaction.lag.ms" | "flush.messages" | "min.insync.replicas" => {
            (1.0, MAX)
        }
        "segment.index.bytes" => (4.0, MAX),
        "retention.ms" => (-1.0, MAX),
        "local.retention.ms" | "local.retention.bytes" => (-2.0, MAX),
        "segment.jitter.ms"
        | "flush.ms"
        | "max.message.bytes"
        | "index.interval.bytes"
        | "delete.retention.ms"
        | "min.compaction.lag.ms"
        | "file.delete.delay.ms"
        | "message.timestamp.before.max.ms"
        | "message.timestamp.after.max.ms" => (0.0, MAX),
        "min.cleanable.dirty.ratio" => (0.0, 1.0),
        "compression.gzip.level" => (1.0, 9.0),
        "compression.lz4.level" => (1.0, 17.0),
        "compression.zstd.level" => (-131_072.0, 22.0),
        _ => return None,
    })
}

/// Checks the settings of one topic against each other, as Kafka's
/// LogConfig.validate: compaction lags must be ordered.
pub fn validate_topic_configs(values: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    let min_lag = values("min.compaction.lag.ms")
        .trim()
        .parse::<i64>()
        .unwrap_or(0);
    let max_lag = values("max.compaction.lag.ms")
        .trim()
        .parse::<i64>()
        .unwrap_or(i64::MAX);
    if min_lag > max_lag {
        return Err(ConfigError(format!(
            "conflict topic config setting min.compaction.lag.ms ({min_lag}) > max.compaction.lag.ms ({max_lag})"
        )));
    }
    Ok(())
}

/// The broker's settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `node.id`.
    pub node_id: i32,
    /// Where to listen (`listeners`); port 0 picks a free port.
    pub listen: SocketAddr,
    /// What clients are told (`advertised.listeners`); port 0 means the bound port.
    pub advertise_host: String,
    pub advertise_port: u16,
    /// `log.dirs` (one directory).
    pub data_dir: PathBuf,
    /// `broker.rack`.
    pub rack: Option<String>,
    /// Where the HTTP metrics endpoint listens (`metrics.listener`, a Strom
    /// property); `None` when set to an empty value (no endpoint).
    pub metrics_listen: Option<SocketAddr>,
    /// `process.roles`, default `broker,controller` (combined mode).
    pub process_roles: ProcessRoles,
    /// The controller listener's bind address (the `listeners` entry named by
    /// `controller.listener.names`, default name CONTROLLER); `None` when none
    /// is configured.
    pub controller_listen: Option<SocketAddr>,
    /// `controller.quorum.voters`. Empty = standalone: this node is the only
    /// voter and the quorum needs no network (the zero-config single node;
    /// valid only when `process.roles` includes controller).
    pub voters: Vec<Voter>,
    /// Every property given in the file or on the command line.
    pub properties: BTreeMap<String, String>,
    /// The typed settings, parsed once from `properties`.
    pub settings: Settings,
}

/// Default listener: Kafka's 9092 on loopback.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9092";
/// `queued.max.request.bytes` default: 256 MiB. Kafka's -1 (unbounded)
/// lets a burst of large or decompression-bomb requests take all memory;
/// 256 MiB holds two requests of the default `socket.request.max.bytes`
/// (100 MiB) and thousands of ordinary ones, and fits a small machine.
pub const DEFAULT_QUEUED_MAX_REQUEST_BYTES: usize = 256 << 20;
/// `socket.listen.backlog.size` default: 1024 rather than Kafka's 50. A
/// burst of clients connecting at once (a consumer group starting, clients
/// reconnecting after a restart) overflows a short queue, and an overflowed
/// SYN waits a full retransmit (1 s, then 3 s) before it is tried again.
pub const DEFAULT_LISTEN_BACKLOG: u32 = 1024;
/// Default data directory, relative to where the broker starts.
pub const DEFAULT_DATA_DIR: &str = "./strom-data";

impl Default for BrokerConfig {
    fn default() -> Self {
        Self::from_properties(BTreeMap::new())
            .unwrap_or_else(|_| unreachable!("defaults are valid"))
    }
}

impl BrokerConfig {
    /// Builds the config from Kafka-named properties, checking every value.
    pub fn from_properties(properties: BTreeMap<String, String>) -> Result<Self, ConfigError> {
        properties::refuse_unsupported_security(&properties)?;
        let node_id = parse_prop(&properties, "node.id", 1)?;
        let process_roles = match properties.get("process.roles") {
            Some(roles) => ProcessRoles::parse(roles)?,
            None => ProcessRoles::default(),
        };
        let voters = match properties.get("controller.quorum.voters") {
            Some(v) => cluster::parse_voters(v)?,
            None => Vec::new(),
        };
        let controller_names = cluster::controller_listener_names(&properties);
        let listeners = match properties.get("listeners") {
            Some(l) => cluster::parse_listeners("listeners", l)?,
            None => Vec::new(),
        };
        let controller_listener = listeners
            .iter()
            .find(|l| controller_names.contains(&l.name));
        let client_listener = listeners
            .iter()
            .find(|l| !controller_names.contains(&l.name));
        let controller_listen = controller_listener
            .map(|l| resolve_listen(&l.address))
            .transpose()?;
        cluster::validate(
            node_id,
            process_roles,
            &voters,
            controller_listener
                .zip(controller_listen)
                .map(|(l, addr)| (l.name.as_str(), addr)),
            client_listener.is_some(),
            &properties,
        )?;
        if process_roles.broker && client_listener.is_none() && !listeners.is_empty() {
            return Err(ConfigError(format!(
                "listeners: a node with the broker role needs a listener for clients besides the controller listener ({}), e.g. PLAINTEXT://127.0.0.1:9092",
                controller_names.join(",")
            )));
        }
        // The address `listen` names: the client listener; for a
        // controller-only node, which has none, the controller listener.
        let listen_text = match (client_listener, controller_listener) {
            (Some(client), _) => client.address.clone(),
            (None, Some(controller)) if !process_roles.broker => controller.address.clone(),
            _ => DEFAULT_LISTEN.to_owned(),
        };
        let listen = resolve_listen(&listen_text)?;
        if let (Some(controller), Some(_)) = (controller_listen, client_listener)
            && controller.port() != 0
            && controller.port() == listen.port()
        {
            return Err(ConfigError(format!(
                "listeners: Each listener must have a different port, listeners: {}",
                properties.get("listeners").map_or("", String::as_str)
            )));
        }
        // The listener whose advertised entry clients (or, on a
        // controller-only node, brokers) are told.
        let listen_listener =
            client_listener.or(controller_listener.filter(|_| !process_roles.broker));
        let client_name = listen_listener.map_or("PLAINTEXT", |l| l.name.as_str());
        let (advertise_host, advertise_port) = match properties.get("advertised.listeners") {
            Some(a) => {
                let advertised = cluster::parse_listeners("advertised.listeners", a)?;
                let entry = advertised
                    .iter()
                    .find(|l| l.name == client_name)
                    .ok_or_else(|| {
                        ConfigError(format!(
                            "advertised.listeners={a} has no entry for the client listener {client_name}"
                        ))
                    })?;
                split_host_port(&entry.address)?
            }
            // A host name given to listen on is what clients are told.
            None => match split_host_port(&listen_text) {
                Ok((host, _)) if !host.is_empty() && host.parse::<std::net::IpAddr>().is_err() => {
                    (host, listen.port())
                }
                _ => (listen.ip().to_string(), listen.port()),
            },
        };
        let data_dir = properties
            .get("log.dirs")
            .or_else(|| properties.get("log.dir"))
            .map_or_else(
                || PathBuf::from(DEFAULT_DATA_DIR),
                |d| PathBuf::from(d.split(',').next().unwrap_or(d).trim()),
            );
        let metrics_listen = metrics_listen(&properties, listen)?;
        let settings = Settings::parse(&properties)?;
        let config = Self {
            node_id,
            listen,
            metrics_listen,
            advertise_host,
            advertise_port,
            data_dir,
            rack: properties.get("broker.rack").cloned(),
            process_roles,
            controller_listen,
            voters,
            properties,
            settings,
        };
        for def in TOPIC_CONFIGS {
            if let Some(v) = config.static_topic_default(def) {
                def.config_type.check(def.name, &v.value)?;
            }
        }
        Ok(config)
    }

    /// The entries a broker-level layer gives topic config `def`, one per
    /// synonym the layer sets, most specific synonym first, with the value as
    /// written (`log.retention.hours=2`).
    fn layer_values<'a>(
        def: &'a TopicConfigDef,
        props: Option<&'a BTreeMap<String, String>>,
        source: ConfigSource,
    ) -> impl Iterator<Item = ConfigValue> + 'a {
        def.synonyms.iter().filter_map(move |(prop, _)| {
            Some(ConfigValue {
                name: (*prop).to_owned(),
                value: props?.get(*prop)?.clone(),
                source,
            })
        })
    }

    /// A synonym's value in the topic config's unit.
    fn converted(def: &TopicConfigDef, entry: &ConfigValue) -> Option<String> {
        let unit = def
            .synonyms
            .iter()
            .find(|(prop, _)| *prop == entry.name)
            .map_or(Unit::Same, |(_, unit)| *unit);
        let scale = match unit {
            Unit::Same => return Some(entry.value.clone()),
            Unit::MinutesToMs => 60_000,
            Unit::HoursToMs => MS_PER_HOUR,
        };
        Some(
            entry
                .value
                .trim()
                .parse::<i64>()
                .ok()?
                .saturating_mul(scale)
                .to_string(),
        )
    }

    /// The DEFAULT_CONFIG entry of a topic config's synonyms, named after the
    /// broker config whose default it is (`log.retention.hours=168` for
    /// `retention.ms`, `log.cleanup.policy=delete` for `cleanup.policy`), as
    /// Kafka lists it; `None` for configs without a broker synonym.
    fn default_synonym(def: &TopicConfigDef) -> Option<ConfigValue> {
        let (name, value) = match def.synonyms.iter().find(|(_, u)| *u == Unit::HoursToMs) {
            Some((prop, _)) => {
                let ms = def.default.parse::<i64>().ok()?;
                (*prop, (ms / MS_PER_HOUR).to_string())
            }
            None => (def.synonyms.first()?.0, def.default.to_owned()),
        };
        Some(ConfigValue {
            name: name.to_owned(),
            value,
            source: ConfigSource::Default,
        })
    }

    /// The broker-wide value of a topic config, if a static property sets it
    /// (the most specific synonym wins, as in Kafka), in the topic's unit.
    pub fn static_topic_default(&self, def: &TopicConfigDef) -> Option<ConfigValue> {
        let entry =
            Self::layer_values(def, Some(&self.properties), ConfigSource::StaticBroker).next()?;
        Some(ConfigValue {
            value: Self::converted(def, &entry)?,
            ..entry
        })
    }

    /// The synonym chain of topic config `def` for a topic with `overrides`
    /// (`None`: below the topic), most specific first, as Kafka orders it:
    /// the topic's override, this broker's dynamic configs, the dynamic
    /// cluster default, the static properties, the broker default. Values
    /// are as written. Lazy: the produce path takes only the first.
    fn synonym_chain<'a>(
        &'a self,
        def: &'a TopicConfigDef,
        image: &'a MetadataImage,
        overrides: Option<&'a BTreeMap<String, String>>,
    ) -> impl Iterator<Item = ConfigValue> + 'a {
        let topic = overrides
            .and_then(|o| o.get(def.name))
            .map(|v| ConfigValue {
                name: def.name.to_owned(),
                value: v.clone(),
                source: ConfigSource::DynamicTopic,
            });
        let layer = |props, source| Self::layer_values(def, props, source);
        topic
            .into_iter()
            .chain(layer(
                image.broker_configs.get(&Some(self.node_id)),
                ConfigSource::DynamicBroker,
            ))
            .chain(layer(
                image.broker_configs.get(&None),
                ConfigSource::DynamicDefaultBroker,
            ))
            .chain(layer(Some(&self.properties), ConfigSource::StaticBroker))
            .chain(Self::default_synonym(def))
    }

    /// The synonyms DescribeConfigs lists for broker config `name`, one of
    /// topic config `def`'s broker synonyms: the chain below a topic's
    /// override, from the first entry named `name` on. Kafka's
    /// ConfigHelper.configSynonyms drops the entries before it
    /// (`dropWhile(name != ...)`), so `log.retention.ms` set only through
    /// `log.retention.hours` has no synonyms and is DEFAULT_CONFIG.
    pub fn broker_synonyms(
        &self,
        def: &TopicConfigDef,
        image: &MetadataImage,
        name: &str,
    ) -> Vec<ConfigValue> {
        self.synonym_chain(def, image, None)
            .skip_while(|v| v.name != name)
            .collect()
    }

    /// The value of topic config `def` for a topic with `overrides`, in the
    /// topic's unit: the first of its synonym chain.
    pub fn topic_value(
        &self,
        def: &TopicConfigDef,
        image: &MetadataImage,
        overrides: &BTreeMap<String, String>,
    ) -> ConfigValue {
        Self::effective(def, self.synonym_chain(def, image, Some(overrides)))
    }

    /// The value of topic config `def` for a topic with `overrides` (in the
    /// topic's unit) and its synonyms (most specific first), as Kafka's
    /// DescribeConfigs reports them: the topic's override, then the broker
    /// layers from the first entry named after the most specific broker
    /// synonym on (ConfigHelper drops those before it). The source is that
    /// of the first synonym listed, DEFAULT_CONFIG when none is: a
    /// `retention.ms` that only `log.retention.hours` sets has the hours'
    /// value, no synonyms and DEFAULT_CONFIG, as in Kafka.
    pub fn topic_config_value(
        &self,
        def: &TopicConfigDef,
        image: &MetadataImage,
        overrides: &BTreeMap<String, String>,
    ) -> (ConfigValue, Vec<ConfigValue>) {
        let value = self.topic_value(def, image, overrides);
        let topic = overrides.get(def.name).map(|v| ConfigValue {
            name: def.name.to_owned(),
            value: v.clone(),
            source: ConfigSource::DynamicTopic,
        });
        let broker = def
            .synonyms
            .first()
            .map(|(first, _)| self.broker_synonyms(def, image, first))
            .unwrap_or_default();
        let chain: Vec<ConfigValue> = topic.into_iter().chain(broker).collect();
        let source = chain.first().map_or(ConfigSource::Default, |v| v.source);
        (ConfigValue { source, ..value }, chain)
    }

    /// The first entry of a chain, converted to the topic's unit; Kafka's
    /// default when the chain is empty.
    fn effective(def: &TopicConfigDef, chain: impl Iterator<Item = ConfigValue>) -> ConfigValue {
        chain
            .into_iter()
            .find_map(|entry| {
                Some(ConfigValue {
                    name: def.name.to_owned(),
                    value: Self::converted(def, &entry)?,
                    source: entry.source,
                })
            })
            .unwrap_or_else(|| ConfigValue {
                name: def.name.to_owned(),
                value: def.default.to_owned(),
                source: ConfigSource::Default,
            })
    }

    /// The effective value of broker property `name` and where it comes
    /// from: this broker's dynamic config, the dynamic cluster default, the
    /// static properties; `None` when none sets it.
    pub fn broker_value(&self, image: &MetadataImage, name: &str) -> Option<ConfigValue> {
        let dynamic = [
            (Some(self.node_id), ConfigSource::DynamicBroker),
            (None, ConfigSource::DynamicDefaultBroker),
        ];
        dynamic
            .into_iter()
            .find_map(|(key, source)| {
                let value = image.broker_configs.get(&key)?.get(name)?;
                Some((value.clone(), source))
            })
            .or_else(|| {
                self.properties
                    .get(name)
                    .map(|v| (v.clone(), ConfigSource::StaticBroker))
            })
            .map(|(value, source)| ConfigValue {
                name: name.to_owned(),
                value,
                source,
            })
    }

    /// The storage settings of a topic with `overrides`.
    pub fn log_config(
        &self,
        image: &MetadataImage,
        overrides: &BTreeMap<String, String>,
    ) -> LogConfig {
        let value = |name: &str| -> String {
            topic_config_def(name).map_or_else(String::new, |def| {
                self.topic_value(def, image, overrides).value
            })
        };
        let long = |name: &str, default: i64| value(name).trim().parse::<i64>().unwrap_or(default);
        let int = |name: &str, default: u32| value(name).trim().parse::<u32>().unwrap_or(default);
        let flush_messages = long("flush.messages", i64::MAX);
        let flush_ms = long("flush.ms", i64::MAX);
        let policy: Vec<String> = value("cleanup.policy")
            .split(',')
            .map(|p| p.trim().to_owned())
            .collect();
        LogConfig {
            segment_bytes: int(
                "segment.bytes",
                strom_storage::config::DEFAULT_SEGMENT_BYTES,
            ),
            segment_ms: long("segment.ms", strom_storage::config::DEFAULT_SEGMENT_MS),
            segment_jitter_ms: long("segment.jitter.ms", 0),
            segment_index_bytes: int(
                "segment.index.bytes",
                strom_storage::config::DEFAULT_SEGMENT_INDEX_BYTES,
            ),
            index_interval_bytes: int(
                "index.interval.bytes",
                strom_storage::config::DEFAULT_INDEX_INTERVAL_BYTES,
            ),
            max_message_bytes: int(
                "max.message.bytes",
                strom_storage::config::DEFAULT_MAX_MESSAGE_BYTES,
            ),
            flush_messages: (flush_messages != i64::MAX)
                .then(|| u64::try_from(flush_messages.max(1)).unwrap_or(1)),
            flush_ms: (flush_ms != i64::MAX).then_some(flush_ms),
            message_timestamp_type: if value("message.timestamp.type") == "LogAppendTime" {
                TimestampType::LogAppendTime
            } else {
                TimestampType::CreateTime
            },
            compact: policy.iter().any(|p| p == "compact"),
            delete: policy.iter().any(|p| p == "delete"),
            retention_ms: long("retention.ms", strom_storage::config::DEFAULT_RETENTION_MS),
            retention_bytes: long("retention.bytes", -1),
            delete_retention_ms: long(
                "delete.retention.ms",
                strom_storage::config::DEFAULT_DELETE_RETENTION_MS,
            ),
            min_compaction_lag_ms: long("min.compaction.lag.ms", 0),
            max_compaction_lag_ms: long("max.compaction.lag.ms", i64::MAX),
            min_cleanable_dirty_ratio: value("min.cleanable.dirty.ratio")
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .unwrap_or(strom_storage::config::DEFAULT_MIN_CLEANABLE_DIRTY_RATIO),
            file_delete_delay_ms: long(
                "file.delete.delay.ms",
                strom_storage::config::DEFAULT_FILE_DELETE_DELAY_MS,
            ),
            ..LogConfig::default()
        }
    }
}

/// The broker's own settings, parsed once at start from the properties
/// (which [`BrokerConfig::properties`] keeps as given, for DescribeConfigs):
/// each value is read and checked here, with its default in one place.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `num.partitions`, default 1, at least 1.
    pub num_partitions: i32,
    /// `default.replication.factor`, default 1, at least 1.
    pub default_replication_factor: i16,
    /// `auto.create.topics.enable`, default true.
    pub auto_create_topics_enable: bool,
    /// `socket.request.max.bytes`, default 100 MiB.
    pub socket_request_max_bytes: usize,
    /// `max.request.partition.size.limit`, default 2000: the most partitions
    /// one DescribeTopicPartitions answer carries.
    pub max_request_partition_size_limit: i32,
    /// `connections.max.idle.ms`, default 10 minutes.
    pub connections_max_idle_ms: u64,
    /// `max.connections`, default 10,000.
    pub max_connections: usize,
    /// `queued.max.request.bytes`; `None` is unbounded.
    pub queued_max_request_bytes: Option<usize>,
    /// `socket.listen.backlog.size`, default [`DEFAULT_LISTEN_BACKLOG`].
    pub socket_listen_backlog_size: u32,
    /// `fetch.max.bytes`, default 55 MiB.
    pub fetch_max_bytes: i32,
    /// `max.incremental.fetch.session.cache.slots`, default 1000.
    pub fetch_session_cache_slots: usize,
    /// `num.recovery.threads.per.data.dir`, default 2.
    pub recovery_threads: usize,
    /// `log.retention.check.interval.ms`, default 5 minutes.
    pub log_retention_check_interval_ms: u64,
    /// The log cleaner's settings.
    pub cleaner: strom_storage::CleanerConfig,
    /// The group coordinator's settings.
    pub group: GroupConfig,
    /// The transaction coordinator's settings.
    pub txn: TxnConfig,
    /// The controller quorum's and the broker lifecycle's timers.
    pub cluster: ClusterSettings,
    /// The replica fetchers and the ISR.
    pub replication: replication::ReplicationSettings,
}

impl Settings {
    /// Parses and checks every setting the broker reads.
    pub fn parse(properties: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let p = Props(properties);
        Ok(Self {
            num_partitions: p.num_partitions()?,
            default_replication_factor: p.default_replication_factor()?,
            auto_create_topics_enable: p.auto_create_topics_enable()?,
            socket_request_max_bytes: p.socket_request_max_bytes()?,
            max_request_partition_size_limit: p.max_request_partition_size_limit()?,
            connections_max_idle_ms: p.connections_max_idle_ms()?,
            max_connections: p.max_connections()?,
            queued_max_request_bytes: p.queued_max_request_bytes()?,
            socket_listen_backlog_size: p.socket_listen_backlog_size()?,
            fetch_max_bytes: p.fetch_max_bytes()?,
            fetch_session_cache_slots: p.fetch_session_cache_slots()?,
            recovery_threads: p.at_least_one("num.recovery.threads.per.data.dir", 2)?,
            log_retention_check_interval_ms: p.log_retention_check_interval_ms()?,
            cleaner: p.cleaner_config()?,
            group: GroupConfig::from_properties(properties)?,
            txn: TxnConfig::from_properties(properties)?,
            cluster: ClusterSettings::parse(properties)?,
            replication: replication::ReplicationSettings::parse(properties)?,
        })
    }
}

/// The properties, read one typed value at a time.
struct Props<'a>(&'a BTreeMap<String, String>);

impl Props<'_> {
    fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, ConfigError> {
        parse_prop(self.0, name, default)
    }

    /// `num.partitions`, default 1.
    fn num_partitions(&self) -> Result<i32, ConfigError> {
        self.at_least_one("num.partitions", 1)
    }

    /// A property that Kafka's validator requires to be at least 1.
    fn at_least_one<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + From<u8> + std::fmt::Display + Copy,
    {
        let value = self.get(name, default)?;
        if value < T::from(1) {
            return Err(ConfigError(format!(
                "Invalid value {value} for configuration {name}: Value must be at least 1"
            )));
        }
        Ok(value)
    }

    /// `default.replication.factor`, default 1.
    fn default_replication_factor(&self) -> Result<i16, ConfigError> {
        self.at_least_one("default.replication.factor", 1)
    }

    /// `auto.create.topics.enable`, default true.
    fn auto_create_topics_enable(&self) -> Result<bool, ConfigError> {
        self.get("auto.create.topics.enable", true)
    }

    /// `max.request.partition.size.limit`, default 2000 (Kafka's): the most
    /// partitions one DescribeTopicPartitions answer carries; a client asking
    /// for more gets a cursor to continue from.
    fn max_request_partition_size_limit(&self) -> Result<i32, ConfigError> {
        let limit: i32 = self.get("max.request.partition.size.limit", 2000)?;
        if limit < 1 {
            return Err(ConfigError(format!(
                "Invalid value {limit} for configuration max.request.partition.size.limit: Value must be at least 1"
            )));
        }
        Ok(limit)
    }

    /// `socket.request.max.bytes`, default 100 MiB.
    fn socket_request_max_bytes(&self) -> Result<usize, ConfigError> {
        self.get(
            "socket.request.max.bytes",
            strom_protocol::messages::DEFAULT_MAX_REQUEST_BYTES,
        )
    }

    /// `connections.max.idle.ms`, default 10 minutes.
    fn connections_max_idle_ms(&self) -> Result<u64, ConfigError> {
        self.get("connections.max.idle.ms", 600_000)
    }

    /// `max.connections`. Kafka's default is unbounded; ours is a bound that
    /// fits a default file descriptor limit raised for a broker.
    fn max_connections(&self) -> Result<usize, ConfigError> {
        self.get("max.connections", 10_000)
    }

    /// `queued.max.request.bytes`: request bytes read but not yet answered,
    /// across all connections; past it no more requests are read until
    /// answers free some. The same amount bounds the memory that checking
    /// compressed produce batches may take at once (see [`crate::memory`]).
    /// `None` means unbounded (Kafka's -1, and any value up to 0).
    ///
    /// Kafka's default is -1; ours is [`DEFAULT_QUEUED_MAX_REQUEST_BYTES`],
    /// or `socket.request.max.bytes` if that is larger. As in Kafka, a value
    /// set must be at least `socket.request.max.bytes`, so that the largest
    /// request can always be read.
    fn queued_max_request_bytes(&self) -> Result<Option<usize>, ConfigError> {
        let name = "queued.max.request.bytes";
        let request_max = self.socket_request_max_bytes()?;
        if !self.0.contains_key(name) {
            // The default grows with socket.request.max.bytes, so raising
            // that alone never stops the broker.
            return Ok(Some(DEFAULT_QUEUED_MAX_REQUEST_BYTES.max(request_max)));
        }
        let value: i64 = self.get(name, -1)?;
        if value <= 0 {
            return Ok(None);
        }
        let value = usize::try_from(value).unwrap_or(usize::MAX);
        if value < request_max {
            return Err(ConfigError(format!(
                "{name} ({value}) must be at least socket.request.max.bytes ({request_max}), or -1 for no bound"
            )));
        }
        Ok(Some(value))
    }

    /// `socket.listen.backlog.size`: the accept queue of the Kafka listener
    /// (Kafka's default 50; ours [`DEFAULT_LISTEN_BACKLOG`]). At least 1;
    /// the kernel caps it at `net.core.somaxconn`.
    fn socket_listen_backlog_size(&self) -> Result<u32, ConfigError> {
        let name = "socket.listen.backlog.size";
        let value: i64 = self.get(name, i64::from(DEFAULT_LISTEN_BACKLOG))?;
        u32::try_from(value)
            .ok()
            .filter(|v| (1..=i32::MAX as u32).contains(v))
            .ok_or_else(|| {
                ConfigError(format!(
                    "Invalid value {value} for configuration {name}: Value must be at least 1"
                ))
            })
    }

    /// `fetch.max.bytes`: the most a fetch response carries, default 55 MiB.
    fn fetch_max_bytes(&self) -> Result<i32, ConfigError> {
        self.get("fetch.max.bytes", 57_671_680)
    }

    /// `max.incremental.fetch.session.cache.slots`, default 1000.
    fn fetch_session_cache_slots(&self) -> Result<usize, ConfigError> {
        self.get("max.incremental.fetch.session.cache.slots", 1000)
    }

    /// `log.retention.check.interval.ms`, default 5 minutes.
    fn log_retention_check_interval_ms(&self) -> Result<u64, ConfigError> {
        self.get(
            "log.retention.check.interval.ms",
            strom_storage::manager::DEFAULT_RETENTION_CHECK_INTERVAL_MS,
        )
    }

    /// The log cleaner's settings: `log.cleaner.enable` (true),
    /// `log.cleaner.io.max.bytes.per.second` (unlimited),
    /// `log.cleaner.dedupe.buffer.size` (128 MiB), `log.cleaner.backoff.ms`
    /// (15 s).
    fn cleaner_config(&self) -> Result<strom_storage::CleanerConfig, ConfigError> {
        let defaults = strom_storage::CleanerConfig::default();
        Ok(strom_storage::CleanerConfig {
            enabled: self.get("log.cleaner.enable", defaults.enabled)?,
            io_max_bytes_per_second: self.get(
                "log.cleaner.io.max.bytes.per.second",
                defaults.io_max_bytes_per_second,
            )?,
            // Kafka caps the map at Int.MaxValue bytes per cleaner thread.
            dedupe_buffer_size: self
                .get::<u64>(
                    "log.cleaner.dedupe.buffer.size",
                    defaults.dedupe_buffer_size,
                )?
                .min(i32::MAX as u64),
            backoff_ms: self.get("log.cleaner.backoff.ms", defaults.backoff_ms)?,
        })
    }
}

/// A property parsed as `T`, or `default` when absent.
pub(crate) fn parse_prop<T: std::str::FromStr>(
    props: &BTreeMap<String, String>,
    name: &str,
    default: T,
) -> Result<T, ConfigError> {
    match props.get(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| ConfigError(format!("Invalid value {v} for configuration {name}"))),
    }
}

/// `metrics.listener`: `HOST:PORT`, or empty for none. The default is the
/// listen host with the listen port + [`METRICS_PORT_OFFSET`] (9092 → 9644),
/// so that nodes side by side on one host, each with its own listen port, get
/// their own metrics ports too; a listener on port 0 (tests, scripts running
/// several brokers) gets port 0. A listen port whose sum is past 65535 has
/// no default: the error asks for `metrics.listener`.
fn metrics_listen(
    properties: &BTreeMap<String, String>,
    listen: SocketAddr,
) -> Result<Option<SocketAddr>, ConfigError> {
    match properties.get("metrics.listener").map(|v| v.trim()) {
        Some("") => Ok(None),
        Some(text) => {
            let text = text.strip_prefix("http://").unwrap_or(text);
            text.parse().map(Some).map_err(|_| {
                ConfigError(format!(
                    "metrics.listener: cannot parse {text:?} as host:port (an IP address), or empty for no metrics endpoint"
                ))
            })
        }
        None => {
            let port = if listen.port() == 0 {
                0
            } else {
                listen.port().checked_add(METRICS_PORT_OFFSET).ok_or_else(|| {
                    ConfigError(format!(
                        "metrics.listener: the default metrics port is the listen port + {METRICS_PORT_OFFSET}, and {} + {METRICS_PORT_OFFSET} is past 65535; set metrics.listener (--metrics HOST:PORT), or set it empty for no metrics endpoint",
                        listen.port()
                    ))
                })?
            };
            Ok(Some(SocketAddr::new(listen.ip(), port)))
        }
    }
}

/// The address to bind for listener `host:port`: an IP address, a host name
/// (resolved once at start, IPv4 first), or an empty host for every
/// interface (`PLAINTEXT://:9092`, as in Kafka's sample server.properties).
fn resolve_listen(text: &str) -> Result<SocketAddr, ConfigError> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let (host, port) = split_host_port(text)
        .map_err(|_| ConfigError(format!("listeners: cannot parse {text:?} as host:port")))?;
    if host.is_empty() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    let addrs: Vec<SocketAddr> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| ConfigError(format!("listeners: cannot resolve host {host:?}: {e}")))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| ConfigError(format!("listeners: host {host:?} has no address")))
}

/// Splits `host:port` (also `[v6]:port`).
pub fn split_host_port(s: &str) -> Result<(String, u16), ConfigError> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| ConfigError(format!("{s:?} is not host:port")))?;
    let port = port
        .parse()
        .map_err(|_| ConfigError(format!("{s:?} has no valid port")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_owned(), port))
}

/// Parses Java `.properties` text: `key=value`, `key: value` or `key value`,
/// `#` and `!` comments, a trailing `\` continues the line, `\` escapes.
pub fn parse_properties(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut logical = String::new();
    for line in text.lines() {
        let line = line.trim_start();
        if logical.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with('!'))
        {
            continue;
        }
        let trailing_backslashes = line.chars().rev().take_while(|c| *c == '\\').count();
        if trailing_backslashes % 2 == 1 {
            logical.push_str(&line[..line.len() - 1]);
            continue;
        }
        logical.push_str(line);
        let entry = std::mem::take(&mut logical);
        let split = entry
            .char_indices()
            .scan(false, |escaped, (i, c)| {
                let was_escaped = *escaped;
                *escaped = c == '\\' && !was_escaped;
                Some((i, c, was_escaped))
            })
            .find(|(_, c, escaped)| !escaped && (*c == '=' || *c == ':' || c.is_whitespace()));
        let (key, value) = match split {
            Some((i, c, _)) => {
                let rest = entry[i + c.len_utf8()..].trim_start();
                let rest = if c.is_whitespace() {
                    rest.strip_prefix(['=', ':']).map_or(rest, str::trim_start)
                } else {
                    rest
                };
                (&entry[..i], rest)
            }
            None => (entry.as_str(), ""),
        };
        out.insert(unescape(key), unescape(value));
    }
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_parse_like_java() {
        let props = parse_properties(
            "# comment\n! also\nnode.id=3\nlisteners = PLAINTEXT://127.0.0.1:19092\nlog.dirs: /tmp/a,/tmp/b\nlong.value=a\\\n   b\nspaced value\n",
        );
        assert_eq!(props["node.id"], "3");
        assert_eq!(props["listeners"], "PLAINTEXT://127.0.0.1:19092");
        assert_eq!(props["log.dirs"], "/tmp/a,/tmp/b");
        assert_eq!(props["long.value"], "ab");
        assert_eq!(props["spaced"], "value");
        let config = BrokerConfig::from_properties(props).unwrap();
        assert_eq!(config.node_id, 3);
        assert_eq!(config.listen.port(), 19092);
        assert_eq!(config.data_dir, PathBuf::from("/tmp/a"));
    }

    #[test]
    fn topic_values_follow_kafkas_synonym_chain() {
        let mut props = BTreeMap::new();
        props.insert("log.retention.hours".to_owned(), "1".to_owned());
        let config = BrokerConfig::from_properties(props).unwrap();
        let def = topic_config_def("retention.ms").unwrap();
        let (value, chain) =
            config.topic_config_value(def, &MetadataImage::default(), &BTreeMap::new());
        // Kafka describes a value that only log.retention.hours sets as
        // DEFAULT_CONFIG with no synonyms (ConfigHelper's dropWhile).
        assert_eq!(
            (value.value.as_str(), value.source),
            ("3600000", ConfigSource::Default)
        );
        assert!(chain.is_empty(), "{chain:?}");
        let overrides = BTreeMap::from([("retention.ms".to_owned(), "5".to_owned())]);
        let (value, chain) = config.topic_config_value(def, &MetadataImage::default(), &overrides);
        assert_eq!(
            (value.value.as_str(), value.source, chain.len()),
            ("5", ConfigSource::DynamicTopic, 1)
        );
        // log.retention.ms itself keeps the whole chain below it.
        let mut props = BTreeMap::new();
        props.insert("log.retention.ms".to_owned(), "7".to_owned());
        props.insert("log.retention.hours".to_owned(), "1".to_owned());
        let config = BrokerConfig::from_properties(props).unwrap();
        let (value, chain) =
            config.topic_config_value(def, &MetadataImage::default(), &BTreeMap::new());
        assert_eq!(
            (value.value.as_str(), value.source),
            ("7", ConfigSource::StaticBroker)
        );
        let names: Vec<&str> = chain.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "log.retention.ms",
                "log.retention.hours",
                "log.retention.hours"
            ]
        );
        assert!(validate_topic_config("retention.ms", "abc").is_err());
        assert!(validate_topic_config("no.such.config", "1").is_err());
        assert!(validate_topic_config("cleanup.policy", "compact,delete").is_ok());
        assert!(validate_topic_config("cleanup.policy", "shred").is_err());
        let overrides = BTreeMap::from([("flush.messages".to_owned(), "1".to_owned())]);
        assert_eq!(
            config
                .log_config(&MetadataImage::default(), &overrides)
                .flush_messages,
            Some(1)
        );
        assert_eq!(
            config
                .log_config(&MetadataImage::default(), &BTreeMap::new())
                .flush_messages,
            None
        );
    }

    #[test]
    fn bad_values_fail_at_startup() {
        let props = BTreeMap::from([("num.partitions".to_owned(), "many".to_owned())]);
        assert!(BrokerConfig::from_properties(props).is_err());
        for zero in ["num.partitions", "default.replication.factor"] {
            let props = BTreeMap::from([(zero.to_owned(), "0".to_owned())]);
            let err = BrokerConfig::from_properties(props).expect_err(zero).0;
            assert!(err.contains("at least 1"), "{err}");
        }
        let props = BTreeMap::from([("listeners".to_owned(), "nonsense".to_owned())]);
        assert!(BrokerConfig::from_properties(props).is_err());
    }

    #[test]
    fn listeners_take_host_names_and_an_empty_host_as_kafka_does() {
        let listen = |value: &str| {
            let props = BTreeMap::from([("listeners".to_owned(), value.to_owned())]);
            BrokerConfig::from_properties(props).map(|c| c.listen)
        };
        assert_eq!(
            listen("PLAINTEXT://:9092"),
            Ok(SocketAddr::from(([0, 0, 0, 0], 9092)))
        );
        assert_eq!(
            listen("PLAINTEXT://localhost:19092").map(|a| (a.ip().is_loopback(), a.port())),
            Ok((true, 19092))
        );
        assert!(listen("PLAINTEXT://localhost:notaport").is_err());
    }
}
