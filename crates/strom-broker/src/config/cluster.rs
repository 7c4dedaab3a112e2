//! The cluster settings: which roles this node plays (`process.roles`), its
//! listeners (the client listener and the controller listener), the static
//! controller quorum (`controller.quorum.voters`), and the timers of the
//! quorum and the broker lifecycle, with Kafka's names and defaults.
//!
//! Kafka checks these in `KafkaConfig.validateValues`; the checks here follow
//! it, and its wording where it has one, so that an error reads the same as
//! Kafka's for the same mistake. Every error is one line naming the property.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::coordinators::MAX_TIMER_MS;
use super::{ConfigError, parse_prop};

/// `process.roles`: what this node runs. Kafka's KRaft nodes are brokers,
/// controllers, or both (combined mode); Strom's default is both, so that a
/// node started with no configuration is a complete single-node cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessRoles {
    pub broker: bool,
    pub controller: bool,
}

impl Default for ProcessRoles {
    fn default() -> Self {
        Self {
            broker: true,
            controller: true,
        }
    }
}

impl ProcessRoles {
    /// Parses `broker`, `controller` or both, comma-separated, in any order.
    pub fn parse(value: &str) -> Result<Self, ConfigError> {
        let mut roles = Self {
            broker: false,
            controller: false,
        };
        let mut seen = Vec::new();
        for role in value.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            if seen.contains(&role) {
                return Err(ConfigError(format!(
                    "Duplicate role names found in `process.roles`: {value}"
                )));
            }
            seen.push(role);
            match role {
                "broker" => roles.broker = true,
                "controller" => roles.controller = true,
                other => {
                    return Err(ConfigError(format!(
                        "process.roles={value}: Unknown process role '{other}' (only 'broker' and 'controller' are allowed roles)"
                    )));
                }
            }
        }
        if !roles.broker && !roles.controller {
            return Err(ConfigError(
                "process.roles must name at least one role: broker, controller, or broker,controller"
                    .to_owned(),
            ));
        }
        Ok(roles)
    }
}

/// One voter of the static controller quorum: `id@host:port` in
/// `controller.quorum.voters`. The host is kept as written (a name is
/// resolved when the quorum connects, so that a restarted peer at a new
/// address is found again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter {
    pub id: i32,
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Voter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}@[{}]:{}", self.id, self.host, self.port)
        } else {
            write!(f, "{}@{}:{}", self.id, self.host, self.port)
        }
    }
}

/// Parses `controller.quorum.voters`: `id@host:port` entries, comma-separated
/// (IPv6 hosts in brackets). Ids are unique; ports are 1 to 65535.
pub fn parse_voters(value: &str) -> Result<Vec<Voter>, ConfigError> {
    let name = "controller.quorum.voters";
    let mut voters: Vec<Voter> = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = |why: &str| {
            ConfigError(format!(
                "Invalid value {value} for configuration {name}: {entry:?} {why}; expected ID@HOST:PORT entries such as 1@127.0.0.1:9093"
            ))
        };
        let (id, address) = entry
            .split_once('@')
            .ok_or_else(|| bad("has no '@' between the node id and the address"))?;
        let id: i32 = id
            .trim()
            .parse()
            .map_err(|_| bad("does not start with a node id (an integer)"))?;
        if id < 0 {
            return Err(bad("has a negative node id"));
        }
        let (host, port) = address.rsplit_once(':').ok_or_else(|| bad("has no port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("has no valid port (1 to 65535)"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        if voters.iter().any(|v| v.id == id) {
            return Err(bad("repeats a node id already listed"));
        }
        voters.push(Voter {
            id,
            host: host.to_owned(),
            port,
        });
    }
    Ok(voters)
}

/// One entry of `listeners` or `advertised.listeners`: `NAME://host:port`.
/// An entry without a name (`127.0.0.1:9092`, which Strom has always
/// accepted) is a PLAINTEXT listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listener {
    pub(crate) name: String,
    /// `host:port` as written (the host may be empty: every interface).
    pub(crate) address: String,
}

/// Parses a comma-separated listener list; names are unique, as Kafka
/// requires ("Each listener must have a different name").
pub(crate) fn parse_listeners(key: &str, value: &str) -> Result<Vec<Listener>, ConfigError> {
    let mut listeners: Vec<Listener> = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, address) = match entry.split_once("://") {
            Some((name, address)) => (name.trim().to_owned(), address.trim().to_owned()),
            None => ("PLAINTEXT".to_owned(), entry.to_owned()),
        };
        if name.is_empty() {
            return Err(ConfigError(format!(
                "{key}: {entry:?} has no listener name; expected NAME://HOST:PORT"
            )));
        }
        if listeners.iter().any(|l| l.name == name) {
            return Err(ConfigError(format!(
                "{key}: Each listener must have a different name, listeners: {value}"
            )));
        }
        listeners.push(Listener { name, address });
    }
    Ok(listeners)
}

/// `controller.listener.names`, default `CONTROLLER`: which entries of
/// `listeners` are for the controller quorum rather than for clients.
pub(crate) fn controller_listener_names(props: &BTreeMap<String, String>) -> Vec<String> {
    match props.get("controller.listener.names") {
        Some(names) => names
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect(),
        None => vec![DEFAULT_CONTROLLER_LISTENER_NAME.to_owned()],
    }
}

/// The controller listener's name when `controller.listener.names` is not
/// set (the name Kafka's sample configs and `--controller-listen` use).
pub const DEFAULT_CONTROLLER_LISTENER_NAME: &str = "CONTROLLER";

/// The timers of the controller quorum and of the broker lifecycle, Kafka's
/// names and defaults (`KRaftConfigs`, `QuorumConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// `broker.heartbeat.interval.ms`, default 2 s: how often a broker
    /// heartbeats to the active controller.
    pub broker_heartbeat_interval_ms: u64,
    /// `broker.session.timeout.ms`, default 9 s: a broker without a
    /// heartbeat for this long is fenced.
    pub broker_session_timeout_ms: u64,
    /// `controller.quorum.election.timeout.ms`, default 1 s.
    pub controller_quorum_election_timeout_ms: u64,
    /// `controller.quorum.fetch.timeout.ms`, default 2 s: a voter that hears
    /// nothing from the leader for this long starts an election.
    pub controller_quorum_fetch_timeout_ms: u64,
    /// `controller.quorum.request.timeout.ms`, default 2 s.
    pub controller_quorum_request_timeout_ms: u64,
    /// `metadata.max.idle.interval.ms`, default 500 ms: the active controller
    /// writes a no-op record this often when idle, so brokers can tell they
    /// are current; 0 turns it off, as in Kafka.
    pub metadata_max_idle_interval_ms: u64,
    /// `controlled.shutdown.enable`, default true: on SIGTERM a broker asks
    /// the controller to move its leaders away before it stops.
    pub controlled_shutdown_enable: bool,
    /// `auto.leader.rebalance.enable`, default true: the active controller
    /// moves leaderships back to the preferred replicas.
    pub auto_leader_rebalance_enable: bool,
    /// `leader.imbalance.check.interval.seconds`, default 300 (Kafka: a
    /// long, at least 1).
    pub leader_imbalance_check_interval_seconds: u64,
    /// `leader.imbalance.per.broker.percentage`, default 10 (Kafka: an int,
    /// not otherwise checked): above this share of a broker's preferred
    /// partitions led elsewhere, the rebalance moves them back.
    pub leader_imbalance_per_broker_percentage: i32,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            broker_heartbeat_interval_ms: 2000,
            broker_session_timeout_ms: 9000,
            controller_quorum_election_timeout_ms: 1000,
            controller_quorum_fetch_timeout_ms: 2000,
            controller_quorum_request_timeout_ms: 2000,
            metadata_max_idle_interval_ms: 500,
            controlled_shutdown_enable: true,
            auto_leader_rebalance_enable: true,
            leader_imbalance_check_interval_seconds: 300,
            leader_imbalance_per_broker_percentage: 10,
        }
    }
}

impl ClusterSettings {
    /// Reads and checks the timers. Kafka's are ints; they are bounded the
    /// same way here so deadlines computed from them cannot overflow, and
    /// every interval but the idle one must be at least 1 ms (a zero period
    /// would spin, and a zero timeout would fence or elect at once).
    pub fn parse(props: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let ms = |name: &str, default: u64, min: u64| -> Result<u64, ConfigError> {
            let value: i64 = parse_prop(props, name, i64::try_from(default).unwrap_or(0))?;
            if value < i64::try_from(min).unwrap_or(0) {
                return Err(ConfigError(format!(
                    "Invalid value {value} for configuration {name}: Value must be at least {min}"
                )));
            }
            if value > MAX_TIMER_MS {
                return Err(ConfigError(format!(
                    "Invalid value {value} for configuration {name}: Value must be no more than {MAX_TIMER_MS}"
                )));
            }
            Ok(u64::try_from(value).unwrap_or(default))
        };
        let boolean = |name: &str, default: bool| -> Result<bool, ConfigError> {
            match props.get(name) {
                None => Ok(default),
                Some(v) => {
                    super::ConfigType::Boolean.check(name, v)?;
                    Ok(v.trim().eq_ignore_ascii_case("true"))
                }
            }
        };
        let check_interval_name = "leader.imbalance.check.interval.seconds";
        let check_interval: i64 = parse_prop(
            props,
            check_interval_name,
            i64::try_from(d.leader_imbalance_check_interval_seconds).unwrap_or(300),
        )?;
        if check_interval < 1 {
            return Err(ConfigError(format!(
                "Invalid value {check_interval} for configuration {check_interval_name}: Value must be at least 1"
            )));
        }
        let settings = Self {
            broker_heartbeat_interval_ms: ms(
                "broker.heartbeat.interval.ms",
                d.broker_heartbeat_interval_ms,
                1,
            )?,
            broker_session_timeout_ms: ms(
                "broker.session.timeout.ms",
                d.broker_session_timeout_ms,
                1,
            )?,
            controller_quorum_election_timeout_ms: ms(
                "controller.quorum.election.timeout.ms",
                d.controller_quorum_election_timeout_ms,
                1,
            )?,
            controller_quorum_fetch_timeout_ms: ms(
                "controller.quorum.fetch.timeout.ms",
                d.controller_quorum_fetch_timeout_ms,
                1,
            )?,
            controller_quorum_request_timeout_ms: ms(
                "controller.quorum.request.timeout.ms",
                d.controller_quorum_request_timeout_ms,
                1,
            )?,
            metadata_max_idle_interval_ms: ms(
                "metadata.max.idle.interval.ms",
                d.metadata_max_idle_interval_ms,
                0,
            )?,
            controlled_shutdown_enable: boolean(
                "controlled.shutdown.enable",
                d.controlled_shutdown_enable,
            )?,
            auto_leader_rebalance_enable: boolean(
                "auto.leader.rebalance.enable",
                d.auto_leader_rebalance_enable,
            )?,
            leader_imbalance_check_interval_seconds: u64::try_from(check_interval)
                .unwrap_or(d.leader_imbalance_check_interval_seconds),
            leader_imbalance_per_broker_percentage: parse_prop(
                props,
                "leader.imbalance.per.broker.percentage",
                d.leader_imbalance_per_broker_percentage,
            )?,
        };
        Ok(settings)
    }
}

/// Checks roles, listeners and voters against each other, as Kafka's
/// `KafkaConfig.validateValues` does for a KRaft node.
///
/// - `controller` is the controller listener as `(name, bound port)`, if any;
///   `has_client_listener` says whether `listeners` holds another entry.
pub(crate) fn validate(
    node_id: i32,
    roles: ProcessRoles,
    voters: &[Voter],
    controller: Option<(&str, SocketAddr)>,
    has_client_listener: bool,
    props: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    let voter_ids = || {
        let ids: Vec<String> = voters.iter().map(|v| v.id.to_string()).collect();
        format!("controller.quorum.voters={{{}}}", ids.join(", "))
    };
    if roles.controller && !voters.is_empty() {
        let Some(me) = voters.iter().find(|v| v.id == node_id) else {
            return Err(ConfigError(format!(
                "If process.roles contains the 'controller' role, the node id {node_id} must be included in the set of voters {}",
                voter_ids()
            )));
        };
        let Some((name, addr)) = controller else {
            return Err(ConfigError(
                "controller.listener.names must contain at least one value appearing in the 'listeners' configuration when running the KRaft controller role (for example listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093, or --controller-listen)"
                    .to_owned(),
            ));
        };
        if addr.port() != me.port {
            return Err(ConfigError(format!(
                "listeners: the controller listener {name} is on port {}, but this node's entry in controller.quorum.voters is {me}; the ports must match",
                addr.port()
            )));
        }
    }
    if roles.broker && !roles.controller {
        if voters.is_empty() {
            return Err(ConfigError(
                "controller.quorum.voters must be set when process.roles=broker: a broker-only node needs controllers to join (ID@HOST:PORT,...)"
                    .to_owned(),
            ));
        }
        if voters.iter().any(|v| v.id == node_id) {
            return Err(ConfigError(format!(
                "If process.roles contains just the 'broker' role, the node id {node_id} must not be included in the set of voters {}",
                voter_ids()
            )));
        }
        if controller.is_some() {
            return Err(ConfigError(
                "controller.listener.names must not contain a value appearing in the 'listeners' configuration when running KRaft with just the broker role"
                    .to_owned(),
            ));
        }
    }
    if roles.controller && !roles.broker && has_client_listener {
        let names = props
            .get("controller.listener.names")
            .map_or(DEFAULT_CONTROLLER_LISTENER_NAME, String::as_str);
        return Err(ConfigError(format!(
            "The listeners config must only contain KRaft controller listeners from controller.listener.names ({names}) when process.roles=controller"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::config::BrokerConfig;
    use crate::config::properties::report;

    fn config(pairs: &[(&str, &str)]) -> Result<BrokerConfig, ConfigError> {
        BrokerConfig::from_properties(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    /// The error of a bad config, checked to be one line naming `property`.
    fn error(pairs: &[(&str, &str)], property: &str) -> String {
        let err = config(pairs).expect_err(property).0;
        assert!(err.contains(property), "{err:?} should name {property}");
        assert!(!err.contains('\n'), "one line: {err:?}");
        err
    }

    const VOTERS: &str = "1@127.0.0.1:9093,2@127.0.0.1:9193,3@127.0.0.1:9293";

    #[test]
    fn no_cluster_properties_is_a_standalone_combined_node() {
        let c = config(&[]).unwrap();
        assert_eq!(
            c.process_roles,
            ProcessRoles {
                broker: true,
                controller: true
            }
        );
        assert!(c.voters.is_empty());
        assert_eq!(c.controller_listen, None);
        assert_eq!(c.listen, addr("127.0.0.1:9092"));
        assert_eq!(c.metrics_listen, Some(addr("127.0.0.1:9644")));
        assert_eq!(c.settings.cluster, ClusterSettings::default());
        assert_eq!(c.settings.cluster.broker_heartbeat_interval_ms, 2000);
        assert_eq!(c.settings.cluster.broker_session_timeout_ms, 9000);
        assert_eq!(
            c.settings.cluster.controller_quorum_election_timeout_ms,
            1000
        );
        assert_eq!(c.settings.cluster.controller_quorum_fetch_timeout_ms, 2000);
        assert_eq!(
            c.settings.cluster.controller_quorum_request_timeout_ms,
            2000
        );
        assert_eq!(c.settings.cluster.metadata_max_idle_interval_ms, 500);
        assert!(c.settings.cluster.controlled_shutdown_enable);
    }

    #[test]
    fn a_combined_voter_has_a_client_and_a_controller_listener() {
        let c = config(&[
            ("node.id", "2"),
            (
                "listeners",
                "PLAINTEXT://127.0.0.1:9192,CONTROLLER://127.0.0.1:9193",
            ),
            ("controller.quorum.voters", VOTERS),
        ])
        .unwrap();
        assert_eq!(c.listen, addr("127.0.0.1:9192"));
        assert_eq!(c.controller_listen, Some(addr("127.0.0.1:9193")));
        assert_eq!(
            (c.advertise_host.as_str(), c.advertise_port),
            ("127.0.0.1", 9192)
        );
        assert_eq!(
            c.voters,
            [
                Voter {
                    id: 1,
                    host: "127.0.0.1".to_owned(),
                    port: 9093
                },
                Voter {
                    id: 2,
                    host: "127.0.0.1".to_owned(),
                    port: 9193
                },
                Voter {
                    id: 3,
                    host: "127.0.0.1".to_owned(),
                    port: 9293
                },
            ]
        );
        // Nodes side by side get metrics ports of their own.
        assert_eq!(c.metrics_listen, Some(addr("127.0.0.1:9744")));
        // The controller listener may come first, and named listeners work
        // through the protocol map.
        let c = config(&[
            ("node.id", "1"),
            (
                "listeners",
                "QUORUM://127.0.0.1:9093,INTERNAL://127.0.0.1:9092",
            ),
            ("controller.listener.names", "QUORUM"),
            (
                "listener.security.protocol.map",
                "QUORUM:PLAINTEXT,INTERNAL:PLAINTEXT",
            ),
            (
                "advertised.listeners",
                "QUORUM://ctl.example:9093,INTERNAL://broker1.example:19092",
            ),
            ("controller.quorum.voters", VOTERS),
        ])
        .unwrap();
        assert_eq!(c.listen, addr("127.0.0.1:9092"));
        assert_eq!(c.controller_listen, Some(addr("127.0.0.1:9093")));
        assert_eq!(
            (c.advertise_host.as_str(), c.advertise_port),
            ("broker1.example", 19092)
        );
    }

    #[test]
    fn broker_only_and_controller_only_nodes() {
        let broker = config(&[
            ("node.id", "4"),
            ("process.roles", "broker"),
            ("listeners", "PLAINTEXT://127.0.0.1:9392"),
            ("controller.quorum.voters", VOTERS),
        ])
        .unwrap();
        assert_eq!(
            broker.process_roles,
            ProcessRoles {
                broker: true,
                controller: false
            }
        );
        assert_eq!(broker.controller_listen, None);
        assert_eq!(broker.voters.len(), 3);
        let controller = config(&[
            ("node.id", "3"),
            ("process.roles", "controller"),
            ("listeners", "CONTROLLER://127.0.0.1:9293"),
            ("controller.quorum.voters", VOTERS),
        ])
        .unwrap();
        // `listen` is the controller address: a controller-only node has no
        // client listener.
        assert_eq!(controller.listen, addr("127.0.0.1:9293"));
        assert_eq!(controller.controller_listen, Some(addr("127.0.0.1:9293")));
        assert_eq!(controller.metrics_listen, Some(addr("127.0.0.1:9845")));
        let advertised = config(&[
            ("node.id", "3"),
            ("process.roles", "controller"),
            ("listeners", "CONTROLLER://:9293"),
            ("advertised.listeners", "CONTROLLER://ctl3.example:9293"),
            ("controller.quorum.voters", VOTERS),
        ])
        .unwrap();
        assert_eq!(
            (
                advertised.advertise_host.as_str(),
                advertised.advertise_port
            ),
            ("ctl3.example", 9293)
        );
    }

    #[test]
    fn mismatched_roles_listeners_and_voters_are_one_line_errors() {
        let listeners = (
            "listeners",
            "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093",
        );
        let voters = ("controller.quorum.voters", VOTERS);
        let err = error(
            &[("node.id", "7"), listeners, voters],
            "controller.quorum.voters",
        );
        assert!(err.contains("node id 7 must be included"), "{err}");
        error(
            &[("listeners", "PLAINTEXT://127.0.0.1:9092"), voters],
            "controller.listener.names",
        );
        let err = error(
            &[
                (
                    "listeners",
                    "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9094",
                ),
                voters,
            ],
            "controller.quorum.voters",
        );
        assert!(
            err.contains("9094") && err.contains("1@127.0.0.1:9093"),
            "{err}"
        );
        error(
            &[("process.roles", "broker"), ("node.id", "4")],
            "controller.quorum.voters",
        );
        let err = error(
            &[
                ("process.roles", "broker"),
                ("listeners", "PLAINTEXT://127.0.0.1:9092"),
                voters,
            ],
            "controller.quorum.voters",
        );
        assert!(err.contains("must not be included"), "{err}");
        error(
            &[
                ("process.roles", "broker"),
                ("node.id", "4"),
                listeners,
                voters,
            ],
            "controller.listener.names",
        );
        error(
            &[("process.roles", "controller"), listeners, voters],
            "controller.listener.names",
        );
        error(
            &[("listeners", "CONTROLLER://127.0.0.1:9093"), voters],
            "listeners",
        );
        error(
            &[(
                "listeners",
                "PLAINTEXT://127.0.0.1:9092,PLAINTEXT://127.0.0.1:9093",
            )],
            "listeners",
        );
        error(
            &[(
                "listeners",
                "PLAINTEXT://127.0.0.1:9093,CONTROLLER://127.0.0.1:9093",
            )],
            "listeners",
        );
        error(
            &[
                listeners,
                voters,
                ("advertised.listeners", "EXTERNAL://b.example:9092"),
            ],
            "advertised.listeners",
        );
        for roles in ["", "broker,broker", "zookeeper", "broker,observer"] {
            error(&[("process.roles", roles)], "process.roles");
        }
    }

    #[test]
    fn unparsable_voters_are_one_line_errors() {
        for bad in [
            "1@host",
            "x@h:1",
            "1@h:0",
            "1@h:65536",
            "127.0.0.1:9093",
            "-1@h:1",
            "1@:9093",
            "1@h:1,1@g:2",
        ] {
            let err = error(
                &[("controller.quorum.voters", bad), ("node.id", "1")],
                "controller.quorum.voters",
            );
            assert!(err.contains("ID@HOST:PORT"), "{err}");
        }
        assert_eq!(
            parse_voters("1@[::1]:9093").unwrap(),
            [Voter {
                id: 1,
                host: "::1".to_owned(),
                port: 9093
            }]
        );
        assert_eq!(parse_voters("").unwrap(), []);
    }

    #[test]
    fn the_metrics_port_follows_the_listen_port() {
        let metrics =
            |listeners: &str| config(&[("listeners", listeners)]).map(|c| c.metrics_listen);
        assert_eq!(
            metrics("PLAINTEXT://127.0.0.1:9292"),
            Ok(Some(addr("127.0.0.1:9844")))
        );
        assert_eq!(
            metrics("PLAINTEXT://127.0.0.1:0"),
            Ok(Some(addr("127.0.0.1:0")))
        );
        assert_eq!(
            metrics("PLAINTEXT://127.0.0.1:64983"),
            Ok(Some(addr("127.0.0.1:65535")))
        );
        error(
            &[("listeners", "PLAINTEXT://127.0.0.1:64984")],
            "metrics.listener",
        );
        // Set explicitly, any port works with any listener.
        let c = config(&[
            ("listeners", "PLAINTEXT://127.0.0.1:65000"),
            ("metrics.listener", "127.0.0.1:9000"),
        ])
        .unwrap();
        assert_eq!(c.metrics_listen, Some(addr("127.0.0.1:9000")));
    }

    #[test]
    fn cluster_timers_are_read_and_checked() {
        let c = config(&[
            ("broker.heartbeat.interval.ms", "500"),
            ("broker.session.timeout.ms", "3000"),
            ("controller.quorum.election.timeout.ms", "1500"),
            ("controller.quorum.fetch.timeout.ms", "2500"),
            ("controller.quorum.request.timeout.ms", "3500"),
            ("metadata.max.idle.interval.ms", "0"),
            ("controlled.shutdown.enable", "false"),
            ("auto.leader.rebalance.enable", "false"),
            ("leader.imbalance.check.interval.seconds", "5"),
            ("leader.imbalance.per.broker.percentage", "0"),
        ])
        .unwrap();
        assert_eq!(
            c.settings.cluster,
            ClusterSettings {
                broker_heartbeat_interval_ms: 500,
                broker_session_timeout_ms: 3000,
                controller_quorum_election_timeout_ms: 1500,
                controller_quorum_fetch_timeout_ms: 2500,
                controller_quorum_request_timeout_ms: 3500,
                metadata_max_idle_interval_ms: 0,
                controlled_shutdown_enable: false,
                auto_leader_rebalance_enable: false,
                leader_imbalance_check_interval_seconds: 5,
                leader_imbalance_per_broker_percentage: 0,
            }
        );
        for (name, value) in [
            ("broker.heartbeat.interval.ms", "0"),
            ("broker.session.timeout.ms", "-1"),
            ("controller.quorum.election.timeout.ms", "soon"),
            ("controller.quorum.fetch.timeout.ms", "99999999999"),
            ("metadata.max.idle.interval.ms", "-5"),
            ("controlled.shutdown.enable", "yes"),
            ("auto.leader.rebalance.enable", "1"),
            ("leader.imbalance.check.interval.seconds", "0"),
            ("leader.imbalance.per.broker.percentage", "ten"),
        ] {
            error(&[(name, value)], name);
        }
    }

    #[test]
    fn cluster_properties_are_known_properties_now() {
        let props: BTreeMap<String, String> = [
            "process.roles",
            "controller.quorum.voters",
            "controller.listener.names",
            "controlled.shutdown.enable",
            "broker.session.timeout.ms",
            "broker.heartbeat.interval.ms",
            "metadata.max.idle.interval.ms",
            "auto.leader.rebalance.enable",
            "leader.imbalance.check.interval.seconds",
            "leader.imbalance.per.broker.percentage",
        ]
        .iter()
        .map(|k| ((*k).to_owned(), String::new()))
        .collect();
        let report = report(&props);
        assert!(report.without_effect.is_empty(), "{report:?}");
        assert!(report.unknown.is_empty(), "{report:?}");
    }
}
