//! One connection to one broker: framing, correlation ids, pipelined
//! requests, and the API versions both sides speak.
//!
//! Requests are written in the order [`Connection::send`] is called and the
//! broker answers them in that order (Kafka's rule per connection), so many
//! requests can be in flight at once. A reader task hands each response to
//! its waiting caller by correlation id. When the stream fails, every waiting
//! caller gets the error and the connection is dead; its user opens a new
//! one on next use.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::kafka::{ApiVersionsRequest, ApiVersionsResponse};
use strom_protocol::messages::{ApiKey, Request, StrBytes, decode_response, encode_request};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::frame::{correlation_id, read_frame};
use crate::transport::{BoxRead, BoxWrite, Transport};

/// Newest ApiVersions version asked first; a broker that does not know it
/// answers UNSUPPORTED_VERSION in a v0 body and the client asks again in v0.
const API_VERSIONS_VERSION: i16 = 3;

/// The read buffer of a connection: many small responses come in one read
/// call; reads larger than this (fetch responses) bypass it.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// How to open a connection and what its requests say about the caller.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `client.id`, in every request header.
    pub client_id: String,
    /// ApiVersions' client_software_name (KIP-511).
    pub software_name: String,
    /// ApiVersions' client_software_version (KIP-511).
    pub software_version: String,
    /// How long opening the stream may take (`socket.connection.setup.timeout.ms`).
    pub connect_timeout: Duration,
    /// How long a request waits for its answer (`request.timeout.ms`).
    pub request_timeout: Duration,
}

type Reply = oneshot::Sender<Result<Bytes>>;

/// Callers waiting for a response, by correlation id; `closed` once the
/// stream failed, with the error every later caller gets.
#[derive(Debug, Default)]
struct Pending {
    waiting: HashMap<i32, Reply>,
    closed: Option<Error>,
}

/// The write half and the correlation id of the next request, under one
/// lock so that ids go out in the order requests are written.
struct Writer {
    socket: BoxWrite,
    next_correlation_id: i32,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("next_correlation_id", &self.next_correlation_id)
            .finish_non_exhaustive()
    }
}

/// A connection to one broker, shared by every task that talks to it.
#[derive(Debug)]
pub struct Connection {
    addr: String,
    client_id: String,
    writer: tokio::sync::Mutex<Writer>,
    pending: Arc<Mutex<Pending>>,
    /// The broker's supported versions per API key.
    versions: HashMap<i16, (i16, i16)>,
    request_timeout: Duration,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Connection {
    /// Connects to `addr` (host:port) over `transport`, within
    /// `options.connect_timeout`, and asks for the broker's API versions.
    pub async fn connect(
        transport: &dyn Transport,
        addr: &str,
        options: &ConnectOptions,
    ) -> Result<Self> {
        let stream = tokio::time::timeout(options.connect_timeout, transport.connect(addr))
            .await
            .map_err(|_| Error::Timeout(format!("connecting to {addr}")))?
            .map_err(|e| Error::io(addr, e))?;
        let (read, write) = stream.into_halves();
        let pending = Arc::new(Mutex::new(Pending::default()));
        let reader = tokio::spawn(read_responses(
            addr.to_owned(),
            BufReader::with_capacity(READ_BUFFER_BYTES, read),
            Arc::clone(&pending),
        ));
        let mut conn = Self {
            addr: addr.to_owned(),
            client_id: options.client_id.clone(),
            writer: tokio::sync::Mutex::new(Writer {
                socket: write,
                next_correlation_id: 0,
            }),
            pending,
            versions: HashMap::new(),
            request_timeout: options.request_timeout,
            reader,
        };
        conn.versions = conn.api_versions(options).await?;
        Ok(conn)
    }

    async fn api_versions(&self, options: &ConnectOptions) -> Result<HashMap<i16, (i16, i16)>> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_string(options.software_name.clone()))
            .with_client_software_version(StrBytes::from_string(options.software_version.clone()));
        let mut response = self
            .send_at::<ApiVersionsRequest>(API_VERSIONS_VERSION, &request)
            .await;
        if matches!(&response, Ok(r) if r.error_code == ErrorCode::UnsupportedVersion.code()) {
            response = self.send_at::<ApiVersionsRequest>(0, &request).await;
        }
        let response: ApiVersionsResponse = response?;
        if response.error_code != 0 {
            return Err(Error::Kafka {
                code: response.error_code,
            });
        }
        Ok(response
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect())
    }

    /// The broker's address, as connected.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether the stream failed; a dead connection answers every request
    /// with its error.
    pub fn is_closed(&self) -> bool {
        self.pending.lock().closed.is_some()
    }

    /// The newest version of `R` that both this side (up to `max`) and the
    /// broker support.
    pub fn version<R: Request>(&self, max: i16) -> Result<i16> {
        let ours = R::VERSIONS;
        let name = api_name(R::KEY);
        let &(broker_min, broker_max) = self
            .versions
            .get(&R::KEY)
            .ok_or_else(|| Error::Unsupported(name.clone()))?;
        let version = max.min(ours.max).min(broker_max);
        if version < broker_min.max(ours.min) {
            return Err(Error::Unsupported(format!(
                "{name} v{}..v{} (broker has v{broker_min}..v{broker_max})",
                ours.min,
                max.min(ours.max)
            )));
        }
        Ok(version)
    }

    /// Sends `request` at the newest common version up to `max`.
    pub async fn send<R: Request>(&self, max: i16, request: &R) -> Result<R::Response> {
        let version = self.version::<R>(max)?;
        self.send_at::<R>(version, request).await
    }

    /// Sends `request` at `version` and waits for its response, at most the
    /// request timeout. A timeout closes the connection, as the Java client
    /// does: the answer may still come and would be mistaken for the next
    /// one's otherwise.
    pub async fn send_at<R: Request>(&self, version: i16, request: &R) -> Result<R::Response> {
        self.start_at::<R>(version, request).await?.response().await
    }

    /// Writes `request` at the newest common version up to `max` and returns
    /// its response to wait for. Requests are written in the order of these
    /// calls, so a caller can keep several in flight in a fixed order (the
    /// producer's batches of one partition).
    pub async fn start<R: Request>(&self, max: i16, request: &R) -> Result<InFlight<R>> {
        let version = self.version::<R>(max)?;
        self.start_at::<R>(version, request).await
    }

    async fn start_at<R: Request>(&self, version: i16, request: &R) -> Result<InFlight<R>> {
        let api_key = api_key(R::KEY)?;
        let (tx, rx) = oneshot::channel();
        self.write(api_key, version, request, Some(tx)).await?;
        Ok(InFlight {
            rx,
            api_key,
            version,
            timeout: self.request_timeout,
            addr: self.addr.clone(),
            pending: Arc::clone(&self.pending),
            reader: self.reader.abort_handle(),
            request: PhantomData,
        })
    }

    /// Sends a request the broker does not answer (Produce with acks=0).
    pub async fn send_no_response<R: Request>(&self, max: i16, request: &R) -> Result<()> {
        let version = self.version::<R>(max)?;
        self.write(api_key(R::KEY)?, version, request, None).await
    }

    async fn write<R: Request>(
        &self,
        api_key: ApiKey,
        version: i16,
        request: &R,
        reply: Option<Reply>,
    ) -> Result<()> {
        let mut writer = self.writer.lock().await;
        let correlation_id = writer.next_correlation_id;
        writer.next_correlation_id = correlation_id.wrapping_add(1);
        let frame = encode_request(
            api_key,
            version,
            correlation_id,
            Some(&self.client_id),
            request,
        )
        .map_err(|e| Error::Protocol(format!("encoding {api_key:?} v{version}: {e}")))?;
        {
            let mut pending = self.pending.lock();
            if let Some(error) = &pending.closed {
                return Err(error.clone());
            }
            if let Some(reply) = reply {
                pending.waiting.insert(correlation_id, reply);
            }
        }
        if let Err(e) = writer.socket.write_all(&frame).await {
            let error = Error::io(&self.addr, e);
            self.close(error.clone());
            return Err(error);
        }
        Ok(())
    }

    /// Fails every waiting caller with `error`; later requests fail at once.
    fn close(&self, error: Error) {
        fail_all(&self.pending, error);
        self.reader.abort();
    }
}

/// A request written and not yet answered.
pub struct InFlight<R: Request> {
    rx: oneshot::Receiver<Result<Bytes>>,
    api_key: ApiKey,
    version: i16,
    timeout: Duration,
    addr: String,
    pending: Arc<Mutex<Pending>>,
    reader: tokio::task::AbortHandle,
    request: PhantomData<fn() -> R>,
}

impl<R: Request> std::fmt::Debug for InFlight<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("api_key", &self.api_key)
            .field("version", &self.version)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl<R: Request> InFlight<R> {
    /// Waits `timeout` instead of the request timeout (a JoinGroup waits for
    /// the whole rebalance).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Waits for the response, at most the request timeout; a timeout closes
    /// the connection (a late answer would be taken for a later request's).
    pub async fn response(self) -> Result<R::Response> {
        let frame = match tokio::time::timeout(self.timeout, self.rx).await {
            Ok(Ok(reply)) => reply?,
            Ok(Err(_)) => {
                return Err(self.pending.lock().closed.clone().unwrap_or(Error::Closed));
            }
            Err(_) => {
                let error = Error::Timeout(format!(
                    "{} to {} after {:?}",
                    api_name(R::KEY),
                    self.addr,
                    self.timeout
                ));
                fail_all(&self.pending, error.clone());
                self.reader.abort();
                return Err(error);
            }
        };
        let version = self.version;
        decode_response::<R::Response>(self.api_key, version, frame)
            .map(|(_, body)| body)
            .map_err(|e| Error::Protocol(format!("{} v{version} response: {e}", api_name(R::KEY))))
    }
}

fn fail_all(pending: &Mutex<Pending>, error: Error) {
    let waiting = {
        let mut pending = pending.lock();
        if pending.closed.is_none() {
            pending.closed = Some(error.clone());
        }
        std::mem::take(&mut pending.waiting)
    };
    for (_, reply) in waiting {
        let _ = reply.send(Err(error.clone()));
    }
}

async fn read_responses(
    addr: String,
    mut socket: BufReader<BoxRead>,
    pending: Arc<Mutex<Pending>>,
) {
    let error = loop {
        match read_frame(&addr, &mut socket).await {
            Ok(frame) => {
                let Some(correlation_id) = correlation_id(&frame) else {
                    break Error::Protocol(format!("{addr} sent a {}-byte response", frame.len()));
                };
                let reply = pending.lock().waiting.remove(&correlation_id);
                match reply {
                    Some(reply) => {
                        let _ = reply.send(Ok(frame));
                    }
                    None => {
                        break Error::Protocol(format!(
                            "{addr} answered correlation id {correlation_id}, which no request has"
                        ));
                    }
                }
            }
            Err(error) => break error,
        }
    };
    tracing::debug!(%addr, %error, "connection closed");
    fail_all(&pending, error);
}

fn api_key(key: i16) -> Result<ApiKey> {
    ApiKey::try_from(key).map_err(|()| Error::Protocol(format!("unknown API key {key}")))
}

fn api_name(key: i16) -> String {
    ApiKey::try_from(key).map_or_else(|()| format!("API {key}"), |k| format!("{k:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{Connecting, Stream};
    use strom_protocol::messages::kafka::api_versions_response::ApiVersion;
    use strom_protocol::messages::kafka::{MetadataRequest, MetadataResponse};
    use strom_protocol::messages::{encode_response, parse_request};
    use tokio::io::{AsyncReadExt, DuplexStream};

    /// The in-memory pipe's capacity: far more than the few small frames a
    /// test exchanges, so neither side waits on the other to read.
    const PIPE_BYTES: usize = 64 * 1024;

    /// A transport whose one connection is an in-memory pipe, made when
    /// the transport is: the test serves the broker's end.
    #[derive(Debug)]
    struct Pipe {
        client: Mutex<Option<DuplexStream>>,
    }

    impl Pipe {
        fn new() -> (Self, DuplexStream) {
            let (client, broker) = tokio::io::duplex(PIPE_BYTES);
            let pipe = Self {
                client: Mutex::new(Some(client)),
            };
            (pipe, broker)
        }
    }

    impl Transport for Pipe {
        fn connect<'a>(&'a self, _addr: &'a str) -> Connecting<'a> {
            let client = self.client.lock().take();
            Box::pin(async move {
                client.map(Stream::new).ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "pipe already used")
                })
            })
        }
    }

    /// A transport that fails, or never connects.
    #[derive(Debug)]
    enum Unreachable {
        Refused,
        Silent,
    }

    impl Transport for Unreachable {
        fn connect<'a>(&'a self, _addr: &'a str) -> Connecting<'a> {
            match self {
                Self::Refused => Box::pin(async {
                    Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
                }),
                Self::Silent => Box::pin(std::future::pending()),
            }
        }
    }

    fn options() -> ConnectOptions {
        ConnectOptions {
            client_id: "test".to_owned(),
            software_name: "strom-net-test".to_owned(),
            software_version: "1".to_owned(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
        }
    }

    async fn read_request(broker: &mut DuplexStream) -> strom_protocol::messages::RequestFrame {
        let mut size = [0u8; 4];
        broker.read_exact(&mut size).await.unwrap();
        let mut request = vec![0u8; usize::try_from(i32::from_be_bytes(size)).unwrap()];
        broker.read_exact(&mut request).await.unwrap();
        parse_request(Bytes::from(request)).unwrap()
    }

    /// A broker on the far end of a [`Pipe`] that knows ApiVersions and
    /// Metadata, answers the handshake and then one Metadata request.
    async fn broker(mut broker: DuplexStream) {
        let handshake = read_request(&mut broker).await;
        assert_eq!(handshake.api_key, ApiKey::ApiVersions);
        let request: ApiVersionsRequest = handshake.decode().unwrap();
        assert_eq!(request.client_software_name.as_str(), "strom-net-test");
        assert_eq!(handshake.client_id.as_deref(), Some("test"));
        let versions = ApiVersionsResponse::default().with_api_keys(vec![
            ApiVersion::default()
                .with_api_key(ApiKey::ApiVersions as i16)
                .with_max_version(3),
            ApiVersion::default()
                .with_api_key(ApiKey::Metadata as i16)
                .with_min_version(1)
                .with_max_version(9),
        ]);
        let frame = encode_response(
            handshake.api_key,
            handshake.api_version,
            handshake.correlation_id,
            &versions,
        )
        .unwrap();
        broker.write_all(&frame).await.unwrap();

        let request = read_request(&mut broker).await;
        assert_eq!(request.api_key, ApiKey::Metadata);
        let metadata = MetadataResponse::default()
            .with_cluster_id(Some(StrBytes::from_static_str("in-memory")));
        let frame = encode_response(
            request.api_key,
            request.api_version,
            request.correlation_id,
            &metadata,
        )
        .unwrap();
        broker.write_all(&frame).await.unwrap();
        // Hold the pipe open until the connection is dropped: it must not
        // wait for EOF to answer.
        let _ = broker.read(&mut [0u8; 1]).await;
    }

    #[tokio::test]
    async fn a_connection_runs_over_any_transport() {
        let (pipe, end) = Pipe::new();
        let broker = tokio::spawn(broker(end));
        let conn = Connection::connect(&pipe, "in-memory:9092", &options())
            .await
            .unwrap();
        assert_eq!(conn.addr(), "in-memory:9092");
        // The newest version both sides speak: ours is capped at 12 here,
        // the broker's at 9.
        assert_eq!(conn.version::<MetadataRequest>(12).unwrap(), 9);
        let response = conn
            .send::<MetadataRequest>(12, &MetadataRequest::default())
            .await
            .unwrap();
        assert_eq!(response.cluster_id.as_deref(), Some("in-memory"));
        assert!(!conn.is_closed());
        // An API the broker did not list is unsupported, without a request.
        assert_eq!(conn.version::<ApiVersionsRequest>(3).unwrap(), 3);
        assert!(matches!(
            conn.version::<strom_protocol::messages::kafka::FetchRequest>(12),
            Err(Error::Unsupported(_))
        ));
        // A second connection over the same transport is refused by it.
        assert!(matches!(
            Connection::connect(&pipe, "in-memory:9092", &options()).await,
            Err(Error::Io { .. })
        ));
        drop(conn);
        broker.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_transport_that_fails_or_hangs_is_an_error() {
        assert!(matches!(
            Connection::connect(&Unreachable::Refused, "nowhere:1", &options()).await,
            Err(Error::Io { .. })
        ));
        // The paused clock jumps to the connect timeout once nothing else runs.
        assert!(matches!(
            Connection::connect(&Unreachable::Silent, "nowhere:1", &options()).await,
            Err(Error::Timeout(_))
        ));
    }
}
