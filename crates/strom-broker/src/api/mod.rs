//! The Kafka APIs this broker answers: one module per API family, and one
//! table of APIs (`api_table!` below) from which ApiVersions, the dispatch by
//! API key and the per-API metrics are made.
//!
//! ApiVersions advertises exactly [`SUPPORTED_APIS`]; every version in it is
//! handled. A request for an API or version outside it, or whose body does
//! not decode, closes the connection with a log line, as Kafka does.

pub mod admin;
pub mod api_versions;
pub mod configs;
pub mod fetch;
pub mod fetch_frame;
pub mod group;
pub mod init_producer_id;
pub mod list_offsets;
pub mod logs;
pub mod metadata;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod quorum;
pub mod reassign;
pub mod sasl;
pub mod txn;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use strom_protocol::messages::{self, ApiKey, Decodable, Encodable, RequestFrame, StrBytes, kafka};

use crate::broker::Broker;

/// Creates internal topic `name` as `request` describes (given the number
/// of brokers) if it is missing (Kafka's
/// request handlers do so on first use: FindCoordinator, a commit,
/// InitProducerId), and returns the image that has it once the metadata
/// publisher has opened its partitions and loaded the coordinator's shards
/// of those this broker leads. COORDINATOR_NOT_AVAILABLE when it cannot be
/// created or its partitions cannot be opened. Blocking.
pub(crate) fn ensure_internal_topic(
    broker: &Broker,
    name: &str,
    request: impl FnOnce(usize) -> strom_controller::controller::CreateTopicRequest,
) -> Result<Arc<strom_controller::MetadataImage>, strom_protocol::error_code::ErrorCode> {
    use strom_protocol::error_code::ErrorCode;
    let image = broker.image();
    if image.topic(name).is_some() {
        // It may have been created a moment ago: its shards are loaded once
        // the publisher has applied the image.
        broker.await_metadata_blocking();
        return Ok(image);
    }
    let live = image.live_brokers().count();
    let created =
        crate::broker::wait_for(broker.controller.create_topics(vec![request(live)], false));
    match created.into_iter().next() {
        Some(Ok(_)) => tracing::info!("created {name}"),
        Some(Err(e)) if e.code == ErrorCode::TopicAlreadyExists => {}
        Some(Err(e)) => {
            tracing::error!(error = %e, "cannot create {name}");
            return Err(ErrorCode::CoordinatorNotAvailable);
        }
        None => return Err(ErrorCode::CoordinatorNotAvailable),
    }
    // The publisher opens the partitions and loads their shards; failures
    // elsewhere are its to retry, only this topic's matter here.
    broker.await_metadata_blocking();
    if let Some((partition, e)) = broker.replicas.topic_storage_error(name) {
        tracing::error!(partition, error = %e, "cannot open the partitions of {name}");
        return Err(ErrorCode::CoordinatorNotAvailable);
    }
    Ok(broker.image())
}

/// What to send back for a request.
pub enum Reply {
    /// A whole response frame.
    Frame(BytesMut),
    /// A whole response frame whose records are sent from their segment
    /// files (a follower's fetch).
    Stored(fetch_frame::Frame<fetch_frame::FileRecords>),
    /// Nothing (produce with acks=0).
    None,
    /// Close the connection; the reason goes to the log.
    Close(String),
    /// The request's first phase is done (a produce's appends are in the
    /// log); its answer comes when this resolves (the second phase: waiting
    /// for replication). The connection goes on with the requests behind it
    /// meanwhile, and still writes the answers in request order.
    Later(std::pin::Pin<Box<dyn Future<Output = Reply> + Send>>),
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Frame(bytes) => f.debug_tuple("Frame").field(&bytes.len()).finish(),
            Self::Stored(frame) => f.debug_tuple("Stored").field(&frame.parts.len()).finish(),
            Self::None => f.write_str("None"),
            Self::Close(reason) => f.debug_tuple("Close").field(reason).finish(),
            Self::Later(_) => f.write_str("Later"),
        }
    }
}

/// What a handler knows of its request besides the body: the header and the
/// connection it came on (Kafka's `RequestContext`). Built on the stack for
/// each request; nothing is copied out of the frame.
///
/// The authenticated principal goes here with SASL (Kafka's
/// `RequestContext.principal`); until then every client is anonymous.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext<'a> {
    /// The request as read: its header fields (the body is already decoded
    /// into the handler's request).
    header: &'a RequestFrame,
    /// The client's address, as Kafka reports it for group members.
    peer: SocketAddr,
}

impl<'a> RequestContext<'a> {
    pub fn new(header: &'a RequestFrame, peer: SocketAddr) -> Self {
        Self { header, peer }
    }

    pub fn api_key(&self) -> ApiKey {
        self.header.api_key
    }

    pub fn api_version(&self) -> i16 {
        self.header.api_version
    }

    pub fn correlation_id(&self) -> i32 {
        self.header.correlation_id
    }

    /// The header's client id (`client.id`), when the client sent one.
    pub fn client_id(&self) -> Option<&'a StrBytes> {
        self.header.client_id.as_ref()
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The whole request header, as the response is framed from it.
    pub fn header(&self) -> &'a RequestFrame {
        self.header
    }
}

/// What a handler returns, made into a [`Reply`]: a response message is
/// encoded as the answer to the request; a handler that decides itself
/// (produce with acks=0, ApiVersions' fallback) returns the `Reply`.
pub trait IntoReply {
    fn into_reply(self, ctx: &RequestContext<'_>) -> Reply;
}

impl<T: Encodable> IntoReply for T {
    fn into_reply(self, ctx: &RequestContext<'_>) -> Reply {
        respond(ctx.header, &self)
    }
}

impl IntoReply for Reply {
    fn into_reply(self, _: &RequestContext<'_>) -> Reply {
        self
    }
}

/// Generates everything that depends on the list of APIs from the one table
/// below: [`SUPPORTED_APIS`] (what ApiVersions advertises and the metrics
/// register), [`may_park`] and the dispatch in [`handle`]. An API is answered
/// exactly when it has a row, at exactly the versions of its row.
///
/// A row: the `ApiKey` variant, the version range, whether it may park (see
/// [`may_park`]), then how the handler is called:
/// - `async Request => path`: decode the body as `kafka::Request`, then
///   `path(broker, request, &ctx).await`;
/// - `sync Request => path`: the same, for a handler that never waits;
/// - `raw => path`: `path(&ctx)` before any version check or decoding (only
///   ApiVersions, which must answer versions it does not know).
///
/// Handlers return a response message or a [`Reply`] ([`IntoReply`]).
macro_rules! api_table {
    ($($key:ident $min:literal ..= $max:literal $park:literal $kind:tt $($request:ident)? => $($handler:ident)::+;)+) => {
        /// The APIs and version ranges this broker implements, in table order,
        /// as ApiVersions advertises them.
        pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[$((ApiKey::$key, $min, $max)),+];

        /// Whether requests of `key` may wait long for something other than
        /// the broker's own work (a rebalance, new data): the connection stops
        /// waiting for them when the client goes away or the broker stops.
        pub fn may_park(key: ApiKey) -> bool {
            match key {
                $(ApiKey::$key => $park,)+
                _ => false,
            }
        }

        /// Answers one request: checks the version against the table, decodes
        /// the body and runs the API's handler. A request for an API or
        /// version outside the table, or whose body does not decode, closes
        /// the connection with a log line, as Kafka does.
        pub async fn handle(broker: &Arc<Broker>, frame: &RequestFrame, peer: SocketAddr) -> Reply {
            let ctx = RequestContext::new(frame, peer);
            match frame.api_key {
                $(ApiKey::$key => api_table!(@row broker, ctx, $min, $max, $kind $($request)? => $($handler)::+),)+
                key => {
                    tracing::warn!(api = ?key, version = frame.api_version, "request for an API this broker does not implement; closing the connection");
                    Reply::Close(format!("unsupported API {key:?}"))
                }
            }
        }
    };
    (@row $broker:ident, $ctx:ident, $min:literal, $max:literal, raw => $($handler:ident)::+) => {
        $($handler)::+(&$ctx)
    };
    (@row $broker:ident, $ctx:ident, $min:literal, $max:literal, async $request:ident => $($handler:ident)::+) => {
        match decode::<kafka::$request>(&$ctx, $min, $max) {
            Ok(request) => $($handler)::+($broker, request, &$ctx).await.into_reply(&$ctx),
            Err(reply) => reply,
        }
    };
    (@row $broker:ident, $ctx:ident, $min:literal, $max:literal, sync $request:ident => $($handler:ident)::+) => {
        match decode::<kafka::$request>(&$ctx, $min, $max) {
            Ok(request) => $($handler)::+($broker, request, &$ctx).into_reply(&$ctx),
            Err(reply) => reply,
        }
    };
}

// The one list of APIs (see `api_table!` for the columns). The lower version
// bounds are what Kafka 4.x still accepts. May park: JoinGroup and SyncGroup
// wait for their rebalance in their first phase (it changes the group, so the
// requests behind it wait). Produce (acks=all, for the high watermark) and
// Fetch (the long poll for `fetch.min.bytes`) wait in a second phase instead
// (`Reply::Later`), which does not hold up the requests behind them.
api_table! {
    // API                   versions  may park  call  request => handler
    Produce                  3..=13    false     async ProduceRequest => produce::handle;
    Fetch                    4..=17    false     async FetchRequest => fetch::handle;
    ListOffsets              1..=10    false     async ListOffsetsRequest => list_offsets::handle;
    OffsetForLeaderEpoch     2..=4     false     async OffsetForLeaderEpochRequest => offset_for_leader_epoch::handle;
    Metadata                 0..=13    false     async MetadataRequest => metadata::handle;
    SaslHandshake            0..=1     false     sync  SaslHandshakeRequest => sasl::handshake;
    ApiVersions              0..=4     false     raw   => api_versions::handle;
    CreateTopics             2..=7     false     async CreateTopicsRequest => admin::create_topics;
    DeleteTopics             1..=6     false     async DeleteTopicsRequest => admin::delete_topics;
    InitProducerId           0..=5     false     async InitProducerIdRequest => init_producer_id::handle;
    DescribeConfigs          1..=4     false     sync  DescribeConfigsRequest => configs::describe_configs;
    AlterConfigs             0..=2     false     async AlterConfigsRequest => configs::alter_configs;
    IncrementalAlterConfigs  0..=1     false     async IncrementalAlterConfigsRequest => configs::incremental_alter_configs;
    DeleteRecords            0..=2     false     async DeleteRecordsRequest => logs::delete_records;
    DescribeLogDirs          1..=4     false     sync  DescribeLogDirsRequest => logs::describe_log_dirs;
    CreatePartitions         0..=3     false     async CreatePartitionsRequest => admin::create_partitions;
    ElectLeaders             0..=2     false     async ElectLeadersRequest => admin::elect_leaders;
    AlterPartitionReassignments 0..=1  false     async AlterPartitionReassignmentsRequest => reassign::alter_partition_reassignments;
    ListPartitionReassignments  0..=0  false     async ListPartitionReassignmentsRequest => reassign::list_partition_reassignments;
    DescribeCluster          0..=2     false     sync  DescribeClusterRequest => admin::describe_cluster;
    DescribeQuorum           0..=2     false     async DescribeQuorumRequest => quorum::describe_quorum;
    FindCoordinator          0..=6     false     async FindCoordinatorRequest => group::find_coordinator;
    JoinGroup                0..=9     true      async JoinGroupRequest => group::join_group;
    SyncGroup                0..=5     true      async SyncGroupRequest => group::sync_group;
    Heartbeat                0..=4     false     async HeartbeatRequest => group::heartbeat;
    LeaveGroup               0..=5     false     async LeaveGroupRequest => group::leave_group;
    OffsetCommit             2..=9     false     async OffsetCommitRequest => group::offset_commit;
    OffsetFetch              1..=9     false     async OffsetFetchRequest => group::offset_fetch;
    DescribeGroups           0..=6     false     async DescribeGroupsRequest => group::describe_groups;
    ListGroups               0..=5     false     async ListGroupsRequest => group::list_groups;
    DeleteGroups             0..=2     false     async DeleteGroupsRequest => group::delete_groups;
    OffsetDelete             0..=0     false     async OffsetDeleteRequest => group::offset_delete;
    ConsumerGroupHeartbeat   0..=1     false     async ConsumerGroupHeartbeatRequest => group::consumer_group_heartbeat;
    ConsumerGroupDescribe    0..=1     false     async ConsumerGroupDescribeRequest => group::consumer_group_describe;
    AddPartitionsToTxn       0..=4     false     async AddPartitionsToTxnRequest => txn::add_partitions_to_txn;
    AddOffsetsToTxn          0..=4     false     async AddOffsetsToTxnRequest => txn::add_offsets_to_txn;
    EndTxn                   0..=4     false     async EndTxnRequest => txn::end_txn;
    WriteTxnMarkers          1..=1     false     async WriteTxnMarkersRequest => txn::write_txn_markers;
    TxnOffsetCommit          0..=4     false     async TxnOffsetCommitRequest => txn::txn_offset_commit;
    DescribeTransactions     0..=0     false     async DescribeTransactionsRequest => txn::describe_transactions;
    ListTransactions         0..=1     false     async ListTransactionsRequest => txn::list_transactions;
    DescribeProducers        0..=0     false     sync  DescribeProducersRequest => txn::describe_producers;
    ListConfigResources      0..=1     false     sync  ListConfigResourcesRequest => configs::list_config_resources;
    DescribeTopicPartitions  0..=0     false     sync  DescribeTopicPartitionsRequest => metadata::describe_topic_partitions;
}

/// Every API this broker answers.
pub fn answered_apis() -> Vec<ApiKey> {
    SUPPORTED_APIS.iter().map(|(key, _, _)| *key).collect()
}

/// The advertised version range of `key`.
pub fn supported_versions(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED_APIS
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, min, max)| (*min, *max))
}

/// Encodes `response` as the answer to `frame`.
pub fn respond<T: Encodable>(frame: &RequestFrame, response: &T) -> Reply {
    encode(
        frame.api_key,
        frame.api_version,
        frame.correlation_id,
        response,
    )
}

/// [`respond`] from the header's fields, for an answer made after the
/// request frame is gone (a [`Reply::Later`]).
pub fn encode<T: Encodable>(
    api_key: ApiKey,
    api_version: i16,
    correlation_id: i32,
    response: &T,
) -> Reply {
    match messages::encode_response(api_key, api_version, correlation_id, response) {
        Ok(bytes) => Reply::Frame(bytes),
        Err(e) => {
            tracing::error!(api = ?api_key, version = api_version, error = %e, "cannot encode a response");
            Reply::Close(format!("response encoding failed: {e}"))
        }
    }
}

/// The request's body as `R`, if its version is in `min..=max` and the body
/// decodes; otherwise the connection closes, with a log line saying why.
fn decode<R: Decodable>(ctx: &RequestContext<'_>, min: i16, max: i16) -> Result<R, Reply> {
    let (key, version) = (ctx.api_key(), ctx.api_version());
    if version < min || version > max {
        tracing::warn!(api = ?key, version, "request for an unsupported version; closing the connection");
        return Err(Reply::Close(format!(
            "unsupported {key:?} version {version}"
        )));
    }
    ctx.header.decode::<R>().map_err(|e| {
        tracing::warn!(error = %e, "malformed request; closing the connection");
        Reply::Close(e.to_string())
    })
}

/// The answer for a partition the image has but this broker does not hold:
/// KAFKA_STORAGE_ERROR, saying why, while its log cannot be created or
/// opened (a full or failing disk; retried in the background), as Kafka
/// answers a partition on an offline log directory; NOT_LEADER_OR_FOLLOWER
/// otherwise (the image and the local partitions are between two updates).
pub(crate) fn missing_partition(
    broker: &Broker,
    topic: &str,
    partition: i32,
) -> (strom_protocol::error_code::ErrorCode, Option<String>) {
    use strom_protocol::error_code::ErrorCode;
    match broker.replicas.storage_error(topic, partition) {
        Some(e) => (
            ErrorCode::KafkaStorageError,
            Some(format!(
                "The partition's log is unavailable on this broker: {e}"
            )),
        ),
        None => (ErrorCode::NotLeaderOrFollower, None),
    }
}

/// Runs blocking storage or controller work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(error = %e, "a blocking task failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_api_has_one_row_within_the_codecs_versions() {
        let mut seen = std::collections::HashSet::new();
        for &(key, min, max) in SUPPORTED_APIS {
            assert!(seen.insert(key), "{key:?} has two rows");
            let codec = key.valid_versions();
            assert!(
                codec.min <= min && min <= max && max <= codec.max,
                "{key:?} {min}..={max} outside the codec's {}..={}",
                codec.min,
                codec.max
            );
            assert_eq!(supported_versions(key), Some((min, max)));
        }
        assert_eq!(answered_apis().len(), SUPPORTED_APIS.len());
    }

    #[test]
    fn only_rebalances_park() {
        let parking: Vec<ApiKey> = answered_apis()
            .into_iter()
            .filter(|k| may_park(*k))
            .collect();
        assert_eq!(parking, [ApiKey::JoinGroup, ApiKey::SyncGroup]);
        // An API without a row is not answered, so never parks.
        assert_eq!(supported_versions(ApiKey::Vote), None);
        assert!(!may_park(ApiKey::Vote));
    }

    #[test]
    fn the_context_reads_the_header() {
        let frame = RequestFrame {
            api_key: ApiKey::JoinGroup,
            api_version: 9,
            correlation_id: 42,
            client_id: Some(StrBytes::from_static_str("app")),
            body: bytes::Bytes::new(),
        };
        let peer: SocketAddr = ([10, 0, 0, 7], 5555).into();
        let ctx = RequestContext::new(&frame, peer);
        assert_eq!(
            (ctx.api_key(), ctx.api_version(), ctx.correlation_id()),
            (ApiKey::JoinGroup, 9, 42)
        );
        assert_eq!(ctx.client_id().map(|c| c.as_str()), Some("app"));
        assert_eq!(ctx.peer(), peer);
    }
}
