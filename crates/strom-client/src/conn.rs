//! One TCP connection to one broker: framing, correlation ids, pipelined
//! requests, and the API versions both sides speak.
//!
//! Requests are written in the order [`Connection::send`] is called and the
//! broker answers them in that order (Kafka's rule per connection), so many
//! requests can be in flight at once. A reader task hands each response to
//! its waiting caller by correlation id. When the socket fails, every waiting
//! caller gets the error and the connection is dead; the cluster layer
//! (`cluster`) opens a new one on next use.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use strom_protocol::messages::kafka::{ApiVersionsRequest, ApiVersionsResponse};
use strom_protocol::messages::{
    ApiKey, FRAME_SIZE_PREFIX, Request, StrBytes, decode_response, encode_request,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;

use crate::error::{Error, ErrorCode, Result};

/// The largest response frame read. A fetch response is bounded by
/// `fetch.max.bytes` (50 MiB by default) but a single batch may exceed it, as
/// may a topic's `max.message.bytes`; 1 GiB leaves room for both while a
/// corrupt size prefix cannot make the client allocate without bound.
pub const MAX_RESPONSE_BYTES: usize = 1 << 30;

/// Newest ApiVersions version asked first; a broker that does not know it
/// answers UNSUPPORTED_VERSION in a v0 body and the client asks again in v0.
const API_VERSIONS_VERSION: i16 = 3;

type Reply = oneshot::Sender<Result<Bytes>>;

/// Callers waiting for a response, by correlation id; `closed` once the
/// socket failed, with the error every later caller gets.
#[derive(Debug, Default)]
struct Pending {
    waiting: HashMap<i32, Reply>,
    closed: Option<Error>,
}

#[derive(Debug)]
struct Writer {
    socket: OwnedWriteHalf,
    next_correlation_id: i32,
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
    /// Connects to `addr` (host:port) and asks for the broker's API versions.
    pub async fn connect(
        addr: &str,
        client_id: &str,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self> {
        let socket = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Timeout(format!("connecting to {addr}")))?
            .map_err(|e| Error::io(addr, e))?;
        socket.set_nodelay(true).map_err(|e| Error::io(addr, e))?;
        let (read, write) = socket.into_split();
        let pending = Arc::new(Mutex::new(Pending::default()));
        let reader = tokio::spawn(read_responses(
            addr.to_owned(),
            BufReader::with_capacity(64 * 1024, read),
            Arc::clone(&pending),
        ));
        let mut conn = Self {
            addr: addr.to_owned(),
            client_id: client_id.to_owned(),
            writer: tokio::sync::Mutex::new(Writer {
                socket: write,
                next_correlation_id: 0,
            }),
            pending,
            versions: HashMap::new(),
            request_timeout,
            reader,
        };
        conn.versions = conn.api_versions().await?;
        Ok(conn)
    }

    async fn api_versions(&self) -> Result<HashMap<i16, (i16, i16)>> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("strom-client"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let mut response = self
            .send_at::<ApiVersionsRequest>(API_VERSIONS_VERSION, &request)
            .await;
        if matches!(&response, Ok(r) if r.error_code == ErrorCode::UnsupportedVersion.code()) {
            response = self.send_at::<ApiVersionsRequest>(0, &request).await;
        }
        let response: ApiVersionsResponse = response?;
        Error::check(response.error_code, None)?;
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

    /// Whether the socket failed; a dead connection answers every request
    /// with its error.
    pub fn is_closed(&self) -> bool {
        self.pending.lock().closed.is_some()
    }

    /// The newest version of `R` that both this client (up to `max`) and the
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

    /// Sends `request` at `version` and waits for its response, at most
    /// `request.timeout.ms`. A timeout closes the connection, as the Java
    /// client does: the answer may still come and would be mistaken for the
    /// next one's otherwise.
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
    /// Waits `timeout` instead of `request.timeout.ms` (a JoinGroup waits for
    /// the whole rebalance).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Waits for the response, at most `request.timeout.ms`; a timeout closes
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
    mut socket: BufReader<OwnedReadHalf>,
    pending: Arc<Mutex<Pending>>,
) {
    let error = loop {
        match read_frame(&addr, &mut socket).await {
            Ok(frame) => {
                let Some(correlation_id) = frame
                    .get(..4)
                    .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                else {
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

async fn read_frame(addr: &str, socket: &mut BufReader<OwnedReadHalf>) -> Result<Bytes> {
    let mut size = [0u8; FRAME_SIZE_PREFIX];
    socket
        .read_exact(&mut size)
        .await
        .map_err(|e| Error::io(addr, e))?;
    let size = i32::from_be_bytes(size);
    let size = usize::try_from(size)
        .ok()
        .filter(|&s| s <= MAX_RESPONSE_BYTES)
        .ok_or_else(|| Error::Protocol(format!("{addr} sent a response frame of {size} bytes")))?;
    let mut frame = BytesMut::zeroed(size);
    socket
        .read_exact(&mut frame)
        .await
        .map_err(|e| Error::io(addr, e))?;
    Ok(frame.freeze())
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
