//! Which broker properties Strom knows, and the security settings it must
//! refuse rather than ignore.
//!
//! Kafka logs "The configuration 'x' was supplied but isn't a known config"
//! for a property it does not know; Strom does the same, names the closest
//! known property when the name looks like a typo, and says which of
//! Kafka's properties have no effect here. Security settings are different:
//! a broker told to use TLS, SASL or an authorizer that served plaintext
//! without authentication would fail open, so those stop the broker at start
//! until the security work implements them.

use std::collections::BTreeMap;

use super::{ConfigError, TOPIC_CONFIGS};

/// Broker properties Strom reads (Kafka's names, plus `metrics.listener`).
/// The topic configs' broker synonyms (`log.retention.hours`, ...) are
/// known too, from [`TOPIC_CONFIGS`].
pub const STROM_PROPERTIES: &[&str] = &[
    "advertised.listeners",
    "auto.create.topics.enable",
    "auto.leader.rebalance.enable",
    "broker.heartbeat.interval.ms",
    "broker.rack",
    "broker.session.timeout.ms",
    "connections.max.idle.ms",
    "controlled.shutdown.enable",
    "controller.listener.names",
    "controller.quorum.election.timeout.ms",
    "controller.quorum.fetch.timeout.ms",
    "controller.quorum.request.timeout.ms",
    "controller.quorum.voters",
    "default.replication.factor",
    "fetch.max.bytes",
    "group.consumer.assignors",
    "group.consumer.heartbeat.interval.ms",
    "group.consumer.max.size",
    "group.consumer.session.timeout.ms",
    "group.initial.rebalance.delay.ms",
    "group.max.session.timeout.ms",
    "group.max.size",
    "group.min.session.timeout.ms",
    "leader.imbalance.check.interval.seconds",
    "leader.imbalance.per.broker.percentage",
    "listener.security.protocol.map",
    "listeners",
    "log.cleaner.backoff.ms",
    "log.cleaner.dedupe.buffer.size",
    "log.cleaner.enable",
    "log.cleaner.io.max.bytes.per.second",
    "log.dir",
    "log.dirs",
    "log.retention.check.interval.ms",
    "max.connections",
    "max.incremental.fetch.session.cache.slots",
    "max.request.partition.size.limit",
    "metadata.max.idle.interval.ms",
    "metrics.listener",
    "node.id",
    "num.partitions",
    "num.recovery.threads.per.data.dir",
    "offset.metadata.max.bytes",
    "offsets.retention.check.interval.ms",
    "offsets.retention.minutes",
    "offsets.topic.num.partitions",
    "offsets.topic.replication.factor",
    "process.roles",
    "producer.id.expiration.ms",
    "queued.max.request.bytes",
    "replica.fetch.backoff.ms",
    "replica.fetch.max.bytes",
    "replica.fetch.min.bytes",
    "replica.fetch.response.max.bytes",
    "replica.fetch.wait.max.ms",
    "replica.high.watermark.checkpoint.interval.ms",
    "replica.lag.time.max.ms",
    "replica.selector.class",
    "replica.socket.timeout.ms",
    "socket.listen.backlog.size",
    "socket.request.max.bytes",
    "test.plant.bug",
    "transaction.abort.timed.out.transaction.cleanup.interval.ms",
    "transaction.max.timeout.ms",
    "transaction.state.log.num.partitions",
    "transaction.state.log.replication.factor",
    "transactional.id.expiration.ms",
];

/// Kafka broker properties that a copied `server.properties` commonly holds
/// and that have no effect in Strom (threads it does not have, the
/// replication still to come, ZooKeeper). They are
/// accepted, and listed once at start so that nobody relies on them.
pub const KAFKA_PROPERTIES_WITHOUT_EFFECT: &[&str] = &[
    "background.threads",
    "broker.id",
    "compression.type",
    "controller.quorum.bootstrap.servers",
    "delete.topic.enable",
    "group.coordinator.rebalance.protocols",
    "inter.broker.listener.name",
    "log.cleaner.io.buffer.size",
    "log.cleaner.threads",
    "log.flush.scheduler.interval.ms",
    "metadata.log.dir",
    "metadata.log.segment.bytes",
    "metadata.max.retention.ms",
    "num.io.threads",
    "num.network.threads",
    "num.replica.alter.log.dirs.threads",
    "num.replica.fetchers",
    "offsets.load.buffer.size",
    "offsets.topic.segment.bytes",
    "queued.max.requests",
    "share.coordinator.state.topic.min.isr",
    "share.coordinator.state.topic.replication.factor",
    "socket.receive.buffer.bytes",
    "socket.send.buffer.bytes",
    "transaction.state.log.min.isr",
    "zookeeper.connect",
    "zookeeper.connection.timeout.ms",
];

/// Kafka's security protocols; only PLAINTEXT is served until the security
/// work lands.
const SECURITY_PROTOCOLS: &[&str] = &["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"];

/// Security settings that need TLS, SASL or an authorizer: set to a
/// non-empty value, each stops the broker at start.
const SECURITY_PROPERTIES: &[&str] = &[
    "authorizer.class.name",
    "super.users",
    "allow.everyone.if.no.acl.found",
    "principal.builder.class",
    "delegation.token.secret.key",
    "delegation.token.master.key",
    "connections.max.reauth.ms",
];

/// Prefixes of TLS and SASL settings (also under `listener.name.NAME.`).
const SECURITY_PREFIXES: &[&str] = &["ssl.", "sasl."];

/// Refuses settings that ask for TLS, SASL or authorization, which Strom
/// does not implement yet: serving plaintext without authentication on a
/// port meant to be secured would let anyone in. The error names the
/// setting, on one line.
pub fn refuse_unsupported_security(props: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    let not_yet = |what: String| {
        Err(ConfigError(format!(
            "{what}: Strom does not support TLS, SASL or ACLs yet and will not serve this \
             listener without them; use PLAINTEXT listeners and remove the security settings"
        )))
    };
    let map = protocol_map(props)?;
    for key in ["listeners", "advertised.listeners"] {
        let Some(value) = props.get(key) else {
            continue;
        };
        for listener in value.split(',').map(str::trim).filter(|l| !l.is_empty()) {
            let Some((name, _)) = listener.split_once("://") else {
                continue;
            };
            let protocol = match map.get(name) {
                Some(p) => p.clone(),
                None if SECURITY_PROTOCOLS.contains(&name) => name.to_owned(),
                None => {
                    return Err(ConfigError(format!(
                        "{key}: listener {name} has no security protocol; map it in \
                         listener.security.protocol.map (e.g. {name}:PLAINTEXT)"
                    )));
                }
            };
            if protocol != "PLAINTEXT" {
                return not_yet(format!(
                    "{key}={value}: listener {name} uses security protocol {protocol}"
                ));
            }
        }
    }
    if let Some(protocol) = props.get("security.inter.broker.protocol")
        && protocol.trim() != "PLAINTEXT"
        && !protocol.trim().is_empty()
    {
        return not_yet(format!("security.inter.broker.protocol={protocol}"));
    }
    for (key, value) in props {
        if value.trim().is_empty() {
            continue;
        }
        let unprefixed = key
            .strip_prefix("listener.name.")
            .and_then(|rest| rest.split_once('.'))
            .map_or(key.as_str(), |(_, rest)| rest);
        // listener.name.NAME.MECHANISM.sasl.jaas.config
        let mechanism_scoped = unprefixed
            .split_once('.')
            .is_some_and(|(_, rest)| rest.starts_with("sasl."));
        if SECURITY_PROPERTIES.contains(&key.as_str())
            || SECURITY_PREFIXES.iter().any(|p| unprefixed.starts_with(p))
            || (unprefixed != key && mechanism_scoped)
        {
            return not_yet(format!("{key}={value}"));
        }
    }
    Ok(())
}

/// `listener.security.protocol.map`: `NAME:PROTOCOL,...`. When it is not
/// set, the controller listeners (`controller.listener.names`, default
/// CONTROLLER) are PLAINTEXT, as Kafka maps them in KRaft mode, so that
/// `listeners=PLAINTEXT://...,CONTROLLER://...` needs no map.
fn protocol_map(props: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut map = BTreeMap::new();
    let Some(value) = props.get("listener.security.protocol.map") else {
        for name in super::cluster::controller_listener_names(props) {
            if !SECURITY_PROTOCOLS.contains(&name.as_str()) {
                map.insert(name, "PLAINTEXT".to_owned());
            }
        }
        return Ok(map);
    };
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, protocol)) = entry.split_once(':') else {
            return Err(ConfigError(format!(
                "listener.security.protocol.map: {entry:?} is not NAME:PROTOCOL"
            )));
        };
        let protocol = protocol.trim().to_ascii_uppercase();
        if !SECURITY_PROTOCOLS.contains(&protocol.as_str()) {
            return Err(ConfigError(format!(
                "listener.security.protocol.map: unknown security protocol {protocol} for \
                 listener {name} (one of {})",
                SECURITY_PROTOCOLS.join(", ")
            )));
        }
        map.insert(name.trim().to_owned(), protocol);
    }
    Ok(map)
}

/// A property Strom does not know, with the known name it most resembles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownProperty {
    pub name: String,
    /// What the user probably meant: a known name a typo away, or the
    /// broker synonym of a topic config given at broker level.
    pub hint: Option<String>,
}

/// What start-up should say about the properties: the unknown ones, and
/// Kafka's that have no effect in Strom.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertyReport {
    pub unknown: Vec<UnknownProperty>,
    pub without_effect: Vec<String>,
}

/// Sorts `props` into known, known without effect, and unknown.
pub fn report(props: &BTreeMap<String, String>) -> PropertyReport {
    let mut report = PropertyReport::default();
    for name in props.keys() {
        if is_strom_property(name) {
            continue;
        }
        if KAFKA_PROPERTIES_WITHOUT_EFFECT.contains(&name.as_str()) {
            report.without_effect.push(name.clone());
            continue;
        }
        report.unknown.push(UnknownProperty {
            name: name.clone(),
            hint: hint_for(name),
        });
    }
    report
}

fn is_strom_property(name: &str) -> bool {
    STROM_PROPERTIES.contains(&name)
        || TOPIC_CONFIGS
            .iter()
            .any(|def| def.synonyms.iter().any(|(prop, _)| *prop == name))
}

/// Every name a user may mean.
fn known_names() -> impl Iterator<Item = &'static str> {
    STROM_PROPERTIES
        .iter()
        .chain(KAFKA_PROPERTIES_WITHOUT_EFFECT)
        .copied()
        .chain(
            TOPIC_CONFIGS
                .iter()
                .flat_map(|def| def.synonyms.iter().map(|(prop, _)| *prop)),
        )
}

/// The hint for an unknown `name`: a topic config's broker synonym
/// (`retention.ms` at broker level is `log.retention.ms`), or the known name
/// fewest edits away if that is close enough to be a typo.
fn hint_for(name: &str) -> Option<String> {
    if let Some(def) = TOPIC_CONFIGS.iter().find(|def| def.name == name)
        && let Some((prop, _)) = def.synonyms.first()
    {
        return Some(format!(
            "{name} is a topic config; the broker-wide setting is {prop}"
        ));
    }
    // A typo is a few edits: at most 2, or a quarter of the name.
    let limit = (name.len() / 4).clamp(1, 3);
    known_names()
        .map(|known| (edit_distance(name, known), known))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, known)| format!("did you mean {known}?"))
}

/// Levenshtein distance over bytes (property names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitute.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn security_settings_stop_the_broker_naming_the_setting() {
        for (key, value) in [
            ("listeners", "SASL_SSL://127.0.0.1:9093"),
            (
                "listeners",
                "PLAINTEXT://127.0.0.1:9092,SSL://127.0.0.1:9093",
            ),
            ("advertised.listeners", "SASL_PLAINTEXT://broker:9092"),
            ("sasl.enabled.mechanisms", "PLAIN"),
            ("ssl.keystore.location", "/etc/kafka/ks.jks"),
            ("super.users", "User:admin"),
            (
                "authorizer.class.name",
                "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            ),
            ("listener.name.external.ssl.keystore.location", "ks.jks"),
            (
                "listener.name.external.plain.sasl.jaas.config",
                "org.apache.kafka.common.security.plain.PlainLoginModule required;",
            ),
            ("security.inter.broker.protocol", "SSL"),
        ] {
            let err = refuse_unsupported_security(&props(&[(key, value)]))
                .expect_err(key)
                .0;
            assert!(err.contains(key), "{err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
        // A named listener mapped to a secure protocol.
        let err = refuse_unsupported_security(&props(&[
            ("listeners", "EXTERNAL://127.0.0.1:9092"),
            (
                "listener.security.protocol.map",
                "EXTERNAL:SASL_SSL,PLAINTEXT:PLAINTEXT",
            ),
        ]))
        .expect_err("mapped")
        .0;
        assert!(err.contains("SASL_SSL"), "{err}");
    }

    #[test]
    fn plaintext_and_kafkas_sample_listeners_start() {
        for pairs in [
            vec![],
            vec![("listeners", "PLAINTEXT://127.0.0.1:9092")],
            vec![
                (
                    "listeners",
                    "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093",
                ),
                (
                    "listener.security.protocol.map",
                    "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL",
                ),
                ("authorizer.class.name", ""),
            ],
        ] {
            assert_eq!(refuse_unsupported_security(&props(&pairs)), Ok(()));
        }
    }

    #[test]
    fn unknown_properties_are_reported_with_the_likely_name() {
        let report = report(&props(&[
            ("log.retention.hourz", "1"),
            ("retention.ms", "1000"),
            ("num.network.threads", "3"),
            ("log.retention.hours", "1"),
            ("node.id", "1"),
            ("totally.made.up.setting", "x"),
        ]));
        assert_eq!(report.without_effect, ["num.network.threads"]);
        let hints: Vec<(&str, Option<&str>)> = report
            .unknown
            .iter()
            .map(|u| (u.name.as_str(), u.hint.as_deref()))
            .collect();
        assert_eq!(
            hints,
            [
                (
                    "log.retention.hourz",
                    Some("did you mean log.retention.hours?")
                ),
                (
                    "retention.ms",
                    Some(
                        "retention.ms is a topic config; the broker-wide setting is log.retention.ms"
                    )
                ),
                ("totally.made.up.setting", None),
            ]
        );
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
