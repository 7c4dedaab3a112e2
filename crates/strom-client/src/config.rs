//! Configuration with Kafka's property names (`bootstrap.servers`,
//! `linger.ms`, `group.id`, ...), as the Java client and librdkafka take it.
//!
//! A [`ClientConfig`] is a map of properties; the producer, consumer and admin
//! client each read the ones they know and refuse values of the wrong type.
//! Properties no component knows are refused too, so a typo does not pass
//! silently.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{Error, Result};

/// A set of Kafka client properties.
#[derive(Debug, Clone, Default)]
pub struct ClientConfig {
    props: BTreeMap<String, String>,
}

impl ClientConfig {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `value`, replacing an earlier value.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.props.insert(name.into(), value.into());
        self
    }

    /// The raw value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.props.get(name).map(String::as_str)
    }

    /// The names set.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.props.keys().map(String::as_str)
    }

    pub(crate) fn string(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_owned()
    }

    pub(crate) fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|_| Error::config(name, format!("{raw:?} is not a valid number"))),
        }
    }

    pub(crate) fn millis(&self, name: &str, default_ms: u64) -> Result<Duration> {
        self.number(name, default_ms).map(Duration::from_millis)
    }

    pub(crate) fn boolean(&self, name: &str, default: bool) -> Result<bool> {
        match self.get(name).map(str::trim) {
            None => Ok(default),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(raw) => Err(Error::config(name, format!("{raw:?} is not true or false"))),
        }
    }

    /// Refuses properties outside `known` (the caller's and the common ones).
    pub(crate) fn check_known(&self, known: &[&[&str]]) -> Result<()> {
        for name in self.names() {
            if !known.iter().any(|set| set.contains(&name)) {
                return Err(Error::config(name, "unknown property"));
            }
        }
        Ok(())
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for ClientConfig {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut config = Self::new();
        for (k, v) in iter {
            config.set(k, v);
        }
        config
    }
}

/// The properties every client reads: where the cluster is and how to talk
/// to it.
pub(crate) const COMMON: &[&str] = &[
    "bootstrap.servers",
    "client.id",
    "request.timeout.ms",
    "socket.connection.setup.timeout.ms",
    "reconnect.backoff.ms",
    "reconnect.backoff.max.ms",
    "retry.backoff.ms",
    "retry.backoff.max.ms",
    "metadata.max.age.ms",
];

/// What the connection and metadata layer needs, read from [`COMMON`].
#[derive(Debug, Clone)]
pub(crate) struct NetworkConfig {
    pub(crate) bootstrap: Vec<String>,
    pub(crate) client_id: String,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) reconnect_backoff: Duration,
    pub(crate) reconnect_backoff_max: Duration,
    /// The first wait before a retry and between metadata refreshes.
    pub(crate) retry_backoff: Duration,
    /// The most that wait grows to, doubling per consecutive failure
    /// (KIP-580).
    pub(crate) retry_backoff_max: Duration,
    pub(crate) metadata_max_age: Duration,
}

impl NetworkConfig {
    pub(crate) fn from_config(config: &ClientConfig) -> Result<Self> {
        let bootstrap: Vec<String> = config
            .get("bootstrap.servers")
            .ok_or_else(|| Error::config("bootstrap.servers", "is required"))?
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if bootstrap.is_empty() {
            return Err(Error::config("bootstrap.servers", "names no address"));
        }
        Ok(Self {
            bootstrap,
            client_id: config.string("client.id", "strom-client"),
            // Kafka's defaults.
            request_timeout: config.millis("request.timeout.ms", 30_000)?,
            connect_timeout: config.millis("socket.connection.setup.timeout.ms", 10_000)?,
            reconnect_backoff: config.millis("reconnect.backoff.ms", 50)?,
            reconnect_backoff_max: config.millis("reconnect.backoff.max.ms", 1_000)?,
            retry_backoff: config.millis("retry.backoff.ms", 100)?,
            retry_backoff_max: config.millis("retry.backoff.max.ms", 1_000)?,
            metadata_max_age: config.millis("metadata.max.age.ms", 300_000)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_reads_and_refusals() {
        let config: ClientConfig = [
            ("bootstrap.servers", "a:1, b:2,"),
            ("linger.ms", "7"),
            ("enable.idempotence", "TRUE"),
            ("batch.size", "lots"),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            config.millis("linger.ms", 5).unwrap(),
            Duration::from_millis(7)
        );
        assert!(config.boolean("enable.idempotence", false).unwrap());
        assert!(matches!(
            config.number::<usize>("batch.size", 1),
            Err(Error::Config { name, .. }) if name == "batch.size"
        ));
        let network = NetworkConfig::from_config(&config).unwrap();
        assert_eq!(network.bootstrap, ["a:1", "b:2"]);
        assert!(config.check_known(&[COMMON]).is_err());
        assert!(NetworkConfig::from_config(&ClientConfig::new()).is_err());
    }
}
