//! The Kafka APIs this broker answers: one module per API family, and the
//! dispatch by API key.
//!
//! ApiVersions advertises exactly [`SUPPORTED_APIS`]; every version in it is
//! handled. A request for an API or version outside it, or whose body does
//! not decode, closes the connection with a log line, as Kafka does.

pub mod admin;
pub mod api_versions;
pub mod configs;
pub mod fetch;
pub mod fetch_session;
pub mod group;
pub mod init_producer_id;
pub mod list_offsets;
pub mod logs;
pub mod metadata;
pub mod produce;
pub mod sasl;
pub mod txn;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use strom_protocol::messages::{self, ApiKey, Encodable, RequestFrame};

use crate::broker::Broker;

/// What to send back for a request.
#[derive(Debug)]
pub enum Reply {
    /// A whole response frame.
    Frame(BytesMut),
    /// Nothing (produce with acks=0).
    None,
    /// Close the connection; the reason goes to the log.
    Close(String),
}

/// The APIs and version ranges this broker implements, as ApiVersions
/// advertises them. The lower bounds are what Kafka 4.x still accepts.
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 13),
    (ApiKey::Fetch, 4, 17),
    (ApiKey::ListOffsets, 1, 10),
    (ApiKey::Metadata, 0, 13),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 1),
    (ApiKey::AddPartitionsToTxn, 0, 4),
    (ApiKey::AddOffsetsToTxn, 0, 4),
    (ApiKey::EndTxn, 0, 4),
    (ApiKey::WriteTxnMarkers, 1, 1),
    (ApiKey::TxnOffsetCommit, 0, 4),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::ListConfigResources, 0, 1),
    (ApiKey::DescribeTopicPartitions, 0, 0),
];

/// Whether requests of `key` may wait long for something other than the
/// broker's own work (a rebalance, new data): the connection stops waiting
/// for them when the client goes away or the broker stops.
pub fn may_park(key: ApiKey) -> bool {
    matches!(key, ApiKey::JoinGroup | ApiKey::SyncGroup | ApiKey::Fetch)
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
    match messages::encode_response(
        frame.api_key,
        frame.api_version,
        frame.correlation_id,
        response,
    ) {
        Ok(bytes) => Reply::Frame(bytes),
        Err(e) => {
            tracing::error!(api = ?frame.api_key, version = frame.api_version, error = %e, "cannot encode a response");
            Reply::Close(format!("response encoding failed: {e}"))
        }
    }
}

/// Decodes the body as `$request` and runs `$handler` on it; a body that does
/// not decode closes the connection.
macro_rules! decode_and {
    ($frame:expr, $request:ty, |$req:ident| $body:expr) => {
        match $frame.decode::<$request>() {
            Ok($req) => $body,
            Err(e) => {
                tracing::warn!(error = %e, "malformed request; closing the connection");
                Reply::Close(e.to_string())
            }
        }
    };
}

/// Answers one request.
pub async fn handle(broker: &Arc<Broker>, frame: &RequestFrame, peer: SocketAddr) -> Reply {
    use strom_protocol::messages::kafka;
    let key = frame.api_key;
    if key == ApiKey::ApiVersions {
        return api_versions::handle(frame);
    }
    let Some((min, max)) = supported_versions(key) else {
        tracing::warn!(api = ?key, version = frame.api_version, "request for an API this broker does not implement; closing the connection");
        return Reply::Close(format!("unsupported API {key:?}"));
    };
    if frame.api_version < min || frame.api_version > max {
        tracing::warn!(api = ?key, version = frame.api_version, "request for an unsupported version; closing the connection");
        return Reply::Close(format!("unsupported {key:?} version {}", frame.api_version));
    }
    let version = frame.api_version;
    match key {
        ApiKey::Metadata => decode_and!(frame, kafka::MetadataRequest, |req| {
            respond(frame, &metadata::handle(broker, req, version).await)
        }),
        ApiKey::Produce => decode_and!(frame, kafka::ProduceRequest, |req| {
            match produce::handle(broker, req, version).await {
                Ok(Some(response)) => respond(frame, &response),
                Ok(None) => Reply::None,
                Err(reason) => Reply::Close(reason),
            }
        }),
        ApiKey::Fetch => decode_and!(frame, kafka::FetchRequest, |req| {
            respond(frame, &fetch::handle(broker, req, version).await)
        }),
        ApiKey::ListOffsets => decode_and!(frame, kafka::ListOffsetsRequest, |req| {
            respond(frame, &list_offsets::handle(broker, req, version).await)
        }),
        ApiKey::CreateTopics => decode_and!(frame, kafka::CreateTopicsRequest, |req| {
            respond(frame, &admin::create_topics(broker, req, version).await)
        }),
        ApiKey::DeleteTopics => decode_and!(frame, kafka::DeleteTopicsRequest, |req| {
            respond(frame, &admin::delete_topics(broker, req, version).await)
        }),
        ApiKey::CreatePartitions => decode_and!(frame, kafka::CreatePartitionsRequest, |req| {
            respond(frame, &admin::create_partitions(broker, req).await)
        }),
        ApiKey::DescribeCluster => decode_and!(frame, kafka::DescribeClusterRequest, |req| {
            respond(frame, &admin::describe_cluster(broker, req))
        }),
        ApiKey::DescribeConfigs => decode_and!(frame, kafka::DescribeConfigsRequest, |req| {
            respond(frame, &configs::describe_configs(broker, req, version))
        }),
        ApiKey::AlterConfigs => decode_and!(frame, kafka::AlterConfigsRequest, |req| {
            respond(frame, &configs::alter_configs(broker, req).await)
        }),
        ApiKey::IncrementalAlterConfigs => {
            decode_and!(frame, kafka::IncrementalAlterConfigsRequest, |req| {
                respond(
                    frame,
                    &configs::incremental_alter_configs(broker, req).await,
                )
            })
        }
        ApiKey::DeleteRecords => decode_and!(frame, kafka::DeleteRecordsRequest, |req| {
            respond(frame, &logs::delete_records(broker, req).await)
        }),
        ApiKey::DescribeLogDirs => decode_and!(frame, kafka::DescribeLogDirsRequest, |req| {
            respond(frame, &logs::describe_log_dirs(broker, req, version))
        }),
        ApiKey::InitProducerId => decode_and!(frame, kafka::InitProducerIdRequest, |req| {
            respond(frame, &init_producer_id::handle(broker, req, version).await)
        }),
        ApiKey::SaslHandshake => decode_and!(frame, kafka::SaslHandshakeRequest, |req| {
            respond(frame, &sasl::handshake(req))
        }),
        ApiKey::FindCoordinator => decode_and!(frame, kafka::FindCoordinatorRequest, |req| {
            respond(frame, &group::find_coordinator(broker, req, version).await)
        }),
        ApiKey::JoinGroup => decode_and!(frame, kafka::JoinGroupRequest, |req| {
            let client = frame.client_id.as_ref();
            respond(
                frame,
                &group::join_group(broker, req, version, client, peer).await,
            )
        }),
        ApiKey::SyncGroup => decode_and!(frame, kafka::SyncGroupRequest, |req| {
            respond(frame, &group::sync_group(broker, req, version).await)
        }),
        ApiKey::Heartbeat => decode_and!(frame, kafka::HeartbeatRequest, |req| {
            respond(frame, &group::heartbeat(broker, req, version).await)
        }),
        ApiKey::LeaveGroup => decode_and!(frame, kafka::LeaveGroupRequest, |req| {
            respond(frame, &group::leave_group(broker, req, version).await)
        }),
        ApiKey::OffsetCommit => decode_and!(frame, kafka::OffsetCommitRequest, |req| {
            respond(frame, &group::offset_commit(broker, req, version).await)
        }),
        ApiKey::OffsetFetch => decode_and!(frame, kafka::OffsetFetchRequest, |req| {
            respond(frame, &group::offset_fetch(broker, req, version).await)
        }),
        ApiKey::OffsetDelete => decode_and!(frame, kafka::OffsetDeleteRequest, |req| {
            respond(frame, &group::offset_delete(broker, req).await)
        }),
        ApiKey::DescribeGroups => decode_and!(frame, kafka::DescribeGroupsRequest, |req| {
            respond(frame, &group::describe_groups(broker, req, version).await)
        }),
        ApiKey::ListGroups => decode_and!(frame, kafka::ListGroupsRequest, |req| {
            respond(frame, &group::list_groups(broker, req, version).await)
        }),
        ApiKey::DeleteGroups => decode_and!(frame, kafka::DeleteGroupsRequest, |req| {
            respond(frame, &group::delete_groups(broker, req).await)
        }),
        ApiKey::ConsumerGroupHeartbeat => {
            decode_and!(frame, kafka::ConsumerGroupHeartbeatRequest, |req| {
                let client = frame.client_id.as_ref();
                respond(
                    frame,
                    &group::consumer_group_heartbeat(broker, req, version, client, peer).await,
                )
            })
        }
        ApiKey::ConsumerGroupDescribe => {
            decode_and!(frame, kafka::ConsumerGroupDescribeRequest, |req| {
                respond(
                    frame,
                    &group::consumer_group_describe(broker, req, version).await,
                )
            })
        }
        ApiKey::AddPartitionsToTxn => {
            decode_and!(frame, kafka::AddPartitionsToTxnRequest, |req| {
                respond(
                    frame,
                    &txn::add_partitions_to_txn(broker, req, version).await,
                )
            })
        }
        ApiKey::AddOffsetsToTxn => decode_and!(frame, kafka::AddOffsetsToTxnRequest, |req| {
            respond(frame, &txn::add_offsets_to_txn(broker, req, version).await)
        }),
        ApiKey::EndTxn => decode_and!(frame, kafka::EndTxnRequest, |req| {
            respond(frame, &txn::end_txn(broker, req, version).await)
        }),
        ApiKey::WriteTxnMarkers => decode_and!(frame, kafka::WriteTxnMarkersRequest, |req| {
            respond(frame, &txn::write_txn_markers(broker, req).await)
        }),
        ApiKey::TxnOffsetCommit => decode_and!(frame, kafka::TxnOffsetCommitRequest, |req| {
            respond(frame, &txn::txn_offset_commit(broker, req, version).await)
        }),
        ApiKey::DescribeTransactions => {
            decode_and!(frame, kafka::DescribeTransactionsRequest, |req| {
                respond(frame, &txn::describe_transactions(broker, req).await)
            })
        }
        ApiKey::ListTransactions => decode_and!(frame, kafka::ListTransactionsRequest, |req| {
            respond(frame, &txn::list_transactions(broker, req, version).await)
        }),
        ApiKey::DescribeProducers => decode_and!(frame, kafka::DescribeProducersRequest, |req| {
            respond(frame, &txn::describe_producers(broker, req))
        }),
        ApiKey::ListConfigResources => {
            decode_and!(frame, kafka::ListConfigResourcesRequest, |req| {
                respond(frame, &configs::list_config_resources(broker, req, version))
            })
        }
        ApiKey::DescribeTopicPartitions => {
            decode_and!(frame, kafka::DescribeTopicPartitionsRequest, |req| {
                respond(frame, &metadata::describe_topic_partitions(broker, req))
            })
        }
        other => Reply::Close(format!("no handler for {other:?}")),
    }
}

/// The error for a partition this broker leads in the image but does not
/// hold: KAFKA_STORAGE_ERROR while its log cannot be created or opened (a
/// full or failing disk; retried in the background), as Kafka answers a
/// partition on an offline log directory; NOT_LEADER_OR_FOLLOWER otherwise
/// (the image and the local partitions are between two updates).
pub(crate) fn missing_partition_error(
    broker: &Broker,
    topic: &str,
    partition: i32,
) -> strom_protocol::error_code::ErrorCode {
    use strom_protocol::error_code::ErrorCode;
    if broker.replicas.storage_error(topic, partition).is_some() {
        ErrorCode::KafkaStorageError
    } else {
        ErrorCode::NotLeaderOrFollower
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
