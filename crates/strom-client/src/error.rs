//! The client's errors: Kafka's error codes as the protocol names them, and
//! what can go wrong on this side of the wire.

use std::sync::Arc;

pub use strom_protocol::error_code::ErrorCode;

/// Everything a client call can fail with. Cloneable, because one failed
/// request fails every record or partition it carried.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker answered with a Kafka error code.
    #[error("{code}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Kafka {
        code: ErrorCode,
        /// The broker's error message, when the response carries one.
        message: Option<String>,
    },
    /// Connecting, reading or writing failed; the connection is gone.
    #[error("connection to {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The broker sent bytes this client cannot decode, or an answer that
    /// breaks the protocol (a response to a request never sent).
    #[error("protocol: {0}")]
    Protocol(String),
    /// No answer, or no room in the buffer, within the configured time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A configuration property is missing, unknown or has a bad value.
    #[error("config {name}: {reason}")]
    Config { name: String, reason: String },
    /// The broker does not support an API version this call needs.
    #[error("the broker does not support {0}")]
    Unsupported(String),
    /// The client was closed (or its background task is gone).
    #[error("the client is closed")]
    Closed,
    /// A call made in the wrong state (commit without a group, send after a
    /// fatal producer error, ...).
    #[error("{0}")]
    State(String),
}

/// What every fallible client call returns.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A Kafka error from a wire code and optional message.
    pub fn kafka(code: i16, message: Option<&str>) -> Self {
        Self::Kafka {
            code: ErrorCode::from_code(code).unwrap_or(ErrorCode::UnknownServerError),
            message: message.filter(|m| !m.is_empty()).map(str::to_owned),
        }
    }

    /// `Ok(())` for code 0, the error otherwise.
    pub fn check(code: i16, message: Option<&str>) -> Result<()> {
        if code == 0 {
            Ok(())
        } else {
            Err(Self::kafka(code, message))
        }
    }

    pub(crate) fn config(name: &str, reason: impl Into<String>) -> Self {
        Self::Config {
            name: name.to_owned(),
            reason: reason.into(),
        }
    }

    /// The Kafka error code, if the broker sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Kafka { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether trying again (after a metadata refresh or a reconnect) may
    /// succeed: Kafka's retriable codes, lost connections and timeouts.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Kafka { code, .. } => code.is_retriable(),
            Self::Io { .. } | Self::Timeout(_) => true,
            _ => false,
        }
    }

    /// Whether the error means the client's picture of leaders or
    /// coordinators may be stale, so metadata should be refreshed before a
    /// retry. Besides Kafka's InvalidMetadataException codes, as librdkafka:
    /// a request that timed out (REQUEST_TIMED_OUT, or no answer in time)
    /// may have gone to a leader that is gone or paused, and
    /// NOT_ENOUGH_REPLICAS(_AFTER_APPEND) means the ISR changed, which a
    /// leader change often follows. Refreshes are rate-limited
    /// (`retry.backoff.ms` growing to `retry.backoff.max.ms`), so a
    /// needless one costs one Metadata request.
    pub fn needs_metadata_refresh(&self) -> bool {
        match self {
            Self::Kafka { code, .. } => matches!(
                code,
                ErrorCode::NotLeaderOrFollower
                    | ErrorCode::LeaderNotAvailable
                    | ErrorCode::RequestTimedOut
                    | ErrorCode::NotEnoughReplicas
                    | ErrorCode::NotEnoughReplicasAfterAppend
                    | ErrorCode::UnknownTopicOrPartition
                    | ErrorCode::FencedLeaderEpoch
                    | ErrorCode::UnknownLeaderEpoch
                    | ErrorCode::UnknownTopicId
                    | ErrorCode::KafkaStorageError
                    | ErrorCode::NotCoordinator
                    | ErrorCode::CoordinatorNotAvailable
            ),
            Self::Io { .. } | Self::Timeout(_) => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_errors_keep_code_message_and_retriability() {
        let e = Error::kafka(6, Some("not the leader"));
        assert_eq!(e.code(), Some(ErrorCode::NotLeaderOrFollower));
        assert!(e.is_retriable() && e.needs_metadata_refresh());
        assert_eq!(
            e.to_string(),
            format!("{}: not the leader", ErrorCode::NotLeaderOrFollower)
        );
        let e = Error::kafka(10, Some(""));
        assert!(!e.is_retriable());
        assert!(matches!(e, Error::Kafka { message: None, .. }));
        // A code this client does not know is an unknown server error.
        assert_eq!(
            Error::kafka(30_000, None).code(),
            Some(ErrorCode::UnknownServerError)
        );
        assert!(Error::check(0, Some("ignored")).is_ok());
    }

    #[test]
    fn leader_changes_and_lost_brokers_refresh_metadata_and_retry() {
        for code in [
            ErrorCode::NotLeaderOrFollower,
            ErrorCode::FencedLeaderEpoch,
            ErrorCode::UnknownLeaderEpoch,
            ErrorCode::LeaderNotAvailable,
            ErrorCode::NotEnoughReplicas,
            ErrorCode::NotEnoughReplicasAfterAppend,
            ErrorCode::RequestTimedOut,
        ] {
            let e = Error::kafka(code.code(), None);
            assert!(e.is_retriable() && e.needs_metadata_refresh(), "{code}");
        }
        let lost = Error::Io {
            addr: "127.0.0.1:1".into(),
            source: Arc::new(std::io::ErrorKind::ConnectionReset.into()),
        };
        assert!(lost.is_retriable() && lost.needs_metadata_refresh());
        let silent = Error::Timeout("no answer".into());
        assert!(silent.is_retriable() && silent.needs_metadata_refresh());
        // Errors about the request itself: no refresh, no retry.
        for code in [
            ErrorCode::MessageTooLarge,
            ErrorCode::TopicAuthorizationFailed,
        ] {
            let e = Error::kafka(code.code(), None);
            assert!(!e.is_retriable() && !e.needs_metadata_refresh(), "{code}");
        }
    }
}
