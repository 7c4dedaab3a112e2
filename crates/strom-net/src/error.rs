//! What can go wrong on a connection.

use std::sync::Arc;

use strom_protocol::error_code::ErrorCode;

/// Everything a connection can fail with. Cloneable, because a failed socket
/// fails every request waiting on it.
///
/// Not `#[non_exhaustive]`: the crate is the workspace's own, and each user
/// maps these variants onto its own error type, so a new variant should
/// fail to compile there until it is mapped.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The broker answered the connection's ApiVersions request with a Kafka
    /// error code.
    #[error("{}", ErrorCode::from_code(*code).map_or_else(|| format!("error code {code}"), |c| c.to_string()))]
    Kafka { code: i16 },
    /// Connecting, reading or writing failed; the connection is gone.
    #[error("connection to {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The broker sent bytes that cannot be decoded, or an answer that
    /// breaks the protocol (a response to a request never sent).
    #[error("protocol: {0}")]
    Protocol(String),
    /// No answer (or no connection) within the configured time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The broker does not support an API version the request needs.
    #[error("the broker does not support {0}")]
    Unsupported(String),
    /// The connection is gone and no cause was recorded.
    #[error("the connection is closed")]
    Closed,
}

/// What every fallible connection call returns.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(addr: &str, source: std::io::Error) -> Self {
        Self::Io {
            addr: addr.to_owned(),
            source: Arc::new(source),
        }
    }
}
