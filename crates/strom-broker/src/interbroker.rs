//! Requests this broker sends to another one for its coordinators: the
//! transaction coordinator's markers (WriteTxnMarkers to a partition's
//! leader) and a partition leader's KIP-890 check (AddPartitionsToTxn with
//! `verify_only` to the transaction coordinator). Kafka's
//! `TransactionMarkerChannelManager` and `AddPartitionsToTxnManager` keep
//! one channel per broker; so does [`InterBroker`]: one connection per
//! broker, made on first use and again once it breaks. The replica fetchers
//! have their own (`fetcher`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strom_controller::MetadataImage;
use strom_net::{ConnectOptions, Connection, TcpTransport};
use strom_protocol::messages::Request;

/// How long connecting to another broker may take (Kafka's
/// `socket.connection.setup.timeout.ms` default).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request waits for its answer: longer than a WriteTxnMarkers
/// may wait at the leader for its markers' replication (30 s, Kafka's
/// `request.timeout.ms`), so that answer is not cut off.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);

/// After a failed connect, how long requests to that broker fail at once
/// instead of each trying again (a broker that does not answer would hold
/// every queued caller for the connect timeout in turn).
const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);

/// What a connection carries. Markers and KIP-890 checks get their own:
/// a coordinator holding a shard while its markers wait at another broker
/// must not hold back that broker's checks, which may wait for the same
/// coordinator, in the queue of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// WriteTxnMarkers.
    Markers,
    /// AddPartitionsToTxn with `verify_only`.
    Verification,
}

/// One connection slot: its lock is held while connecting, so a broker that
/// does not answer holds back only the requests to it.
#[derive(Debug, Default)]
struct SlotState {
    connection: Option<Arc<Connection>>,
    failed_at: Option<Instant>,
}

type Slot = Arc<tokio::sync::Mutex<SlotState>>;

/// This broker's connections to the others.
#[derive(Debug)]
pub struct InterBroker {
    node_id: i32,
    slots: parking_lot::Mutex<HashMap<(i32, Channel), Slot>>,
}

impl InterBroker {
    pub fn new(node_id: i32) -> Self {
        Self {
            node_id,
            slots: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// Sends `request` to broker `to` (its address from `image`) on
    /// `channel` at the newest version both sides have up to
    /// `max_version`. A broken connection is made again by the next request.
    pub async fn send<R: Request>(
        &self,
        image: &MetadataImage,
        to: i32,
        channel: Channel,
        max_version: i16,
        request: &R,
    ) -> Result<R::Response, String> {
        let slot = Arc::clone(self.slots.lock().entry((to, channel)).or_default());
        let connection = {
            let mut held = slot.lock().await;
            match &held.connection {
                Some(c) if !c.is_closed() => Arc::clone(c),
                _ => {
                    if held
                        .failed_at
                        .is_some_and(|at| at.elapsed() < RECONNECT_BACKOFF)
                    {
                        return Err(format!("broker {to}: not reachable a moment ago"));
                    }
                    match self.connect(image, to).await {
                        Ok(c) => {
                            let c = Arc::new(c);
                            held.connection = Some(Arc::clone(&c));
                            held.failed_at = None;
                            c
                        }
                        Err(e) => {
                            held.connection = None;
                            held.failed_at = Some(Instant::now());
                            return Err(e);
                        }
                    }
                }
            }
        };
        connection
            .send(max_version, request)
            .await
            .map_err(|e| format!("broker {to}: {e}"))
    }

    async fn connect(&self, image: &MetadataImage, to: i32) -> Result<Connection, String> {
        let registration = image
            .brokers
            .get(&to)
            .ok_or_else(|| format!("broker {to} is not registered"))?;
        let addr = format!("{}:{}", registration.host, registration.port);
        let options = ConnectOptions {
            client_id: format!("broker-{}-coordinators", self.node_id),
            software_name: "strom-broker".to_owned(),
            software_version: env!("CARGO_PKG_VERSION").to_owned(),
            connect_timeout: CONNECT_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
        };
        Connection::connect(&TcpTransport, &addr, &options)
            .await
            .map_err(|e| format!("broker {to} at {addr}: {e}"))
    }
}
