//! One connection to one broker: framing, correlation ids, pipelined
//! requests, and the API versions both sides speak.
//!
//! The connection code is `strom_net`'s, shared with the broker's own
//! connections to other brokers; this module opens it over TCP with the
//! client's identity and reports its failures as the client's [`Error`]s.
//!
//! Requests are written in the order [`Connection::send`] is called and the
//! broker answers them in that order (Kafka's rule per connection), so many
//! requests can be in flight at once. When the socket fails, every waiting
//! caller gets the error and the connection is dead; the cluster layer
//! (`cluster`) opens a new one on next use.

use std::time::Duration;

use strom_net::{ConnectOptions, TcpTransport};
use strom_protocol::messages::Request;

use crate::error::{Error, Result};

pub use strom_net::MAX_RESPONSE_BYTES;

/// What the client says it is in ApiVersions (KIP-511).
const CLIENT_SOFTWARE_NAME: &str = "strom-client";

impl From<strom_net::Error> for Error {
    fn from(error: strom_net::Error) -> Self {
        match error {
            strom_net::Error::Kafka { code } => Self::kafka(code, None),
            strom_net::Error::Io { addr, source } => Self::Io { addr, source },
            strom_net::Error::Protocol(message) => Self::Protocol(message),
            strom_net::Error::Timeout(message) => Self::Timeout(message),
            strom_net::Error::Unsupported(what) => Self::Unsupported(what),
            strom_net::Error::Closed => Self::Closed,
        }
    }
}

/// A connection to one broker, shared by every task that talks to it.
#[derive(Debug)]
pub struct Connection {
    inner: strom_net::Connection,
}

impl Connection {
    /// Connects to `addr` (host:port) and asks for the broker's API versions.
    pub async fn connect(
        addr: &str,
        client_id: &str,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self> {
        let options = ConnectOptions {
            client_id: client_id.to_owned(),
            software_name: CLIENT_SOFTWARE_NAME.to_owned(),
            software_version: env!("CARGO_PKG_VERSION").to_owned(),
            connect_timeout,
            request_timeout,
        };
        let inner = strom_net::Connection::connect(&TcpTransport, addr, &options).await?;
        Ok(Self { inner })
    }

    /// The broker's address, as connected.
    pub fn addr(&self) -> &str {
        self.inner.addr()
    }

    /// Whether the socket failed; a dead connection answers every request
    /// with its error.
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// The newest version of `R` that both this client (up to `max`) and the
    /// broker support.
    pub fn version<R: Request>(&self, max: i16) -> Result<i16> {
        Ok(self.inner.version::<R>(max)?)
    }

    /// Sends `request` at the newest common version up to `max`.
    pub async fn send<R: Request>(&self, max: i16, request: &R) -> Result<R::Response> {
        Ok(self.inner.send(max, request).await?)
    }

    /// Sends `request` at `version` and waits for its response, at most
    /// `request.timeout.ms`. A timeout closes the connection, as the Java
    /// client does: the answer may still come and would be mistaken for the
    /// next one's otherwise.
    pub async fn send_at<R: Request>(&self, version: i16, request: &R) -> Result<R::Response> {
        Ok(self.inner.send_at(version, request).await?)
    }

    /// Writes `request` at the newest common version up to `max` and returns
    /// its response to wait for. Requests are written in the order of these
    /// calls, so a caller can keep several in flight in a fixed order (the
    /// producer's batches of one partition).
    pub async fn start<R: Request>(&self, max: i16, request: &R) -> Result<InFlight<R>> {
        let inner = self.inner.start(max, request).await?;
        Ok(InFlight { inner })
    }

    /// Sends a request the broker does not answer (Produce with acks=0).
    pub async fn send_no_response<R: Request>(&self, max: i16, request: &R) -> Result<()> {
        Ok(self.inner.send_no_response(max, request).await?)
    }
}

/// A request written and not yet answered.
pub struct InFlight<R: Request> {
    inner: strom_net::InFlight<R>,
}

impl<R: Request> std::fmt::Debug for InFlight<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl<R: Request> InFlight<R> {
    /// Waits `timeout` instead of `request.timeout.ms` (a JoinGroup waits for
    /// the whole rebalance).
    #[must_use]
    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self {
            inner: self.inner.with_timeout(timeout),
        }
    }

    /// Waits for the response, at most `request.timeout.ms`; a timeout closes
    /// the connection (a late answer would be taken for a later request's).
    pub async fn response(self) -> Result<R::Response> {
        Ok(self.inner.response().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A "broker" that reads one request and answers with `reply`.
    async fn fake_broker(reply: Vec<u8>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut size = [0u8; 4];
            socket.read_exact(&mut size).await.unwrap();
            let mut request = vec![0u8; usize::try_from(i32::from_be_bytes(size)).unwrap()];
            socket.read_exact(&mut request).await.unwrap();
            socket.write_all(&reply).await.unwrap();
            // Hold the socket open: the client must not wait for EOF.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        addr
    }

    async fn connect(addr: &str) -> Result<Connection> {
        Connection::connect(addr, "test", Duration::from_secs(5), Duration::from_secs(5)).await
    }

    #[tokio::test]
    async fn hostile_answers_are_errors_not_panics_or_allocations() {
        // A frame claiming 2 GiB - 1 bytes.
        let addr = fake_broker(vec![0x7f, 0xff, 0xff, 0xff]).await;
        assert!(matches!(connect(&addr).await, Err(Error::Protocol(_))));
        // A negative frame size.
        let addr = fake_broker(vec![0xff, 0xff, 0xff, 0xfe]).await;
        assert!(matches!(connect(&addr).await, Err(Error::Protocol(_))));
        // An answer to a correlation id never sent.
        let addr = fake_broker(vec![0, 0, 0, 4, 0, 0, 0, 99]).await;
        assert!(matches!(connect(&addr).await, Err(Error::Protocol(_))));
        // The right correlation id with a body that is not an ApiVersions response.
        let addr = fake_broker(vec![0, 0, 0, 6, 0, 0, 0, 0, 0xff, 0xff]).await;
        assert!(connect(&addr).await.is_err());
        // Nothing listening.
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        assert!(matches!(connect(&closed).await, Err(Error::Io { .. })));
    }
}
