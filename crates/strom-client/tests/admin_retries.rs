//! The admin client's retries against a scripted broker: NOT_CONTROLLER is
//! retried after a metadata refresh, NOT_COORDINATOR after finding the
//! coordinator again, COORDINATOR_LOAD_IN_PROGRESS by waiting; an error that
//! never clears ends in a timeout at `default.api.timeout.ms`; a broker
//! without DescribeCluster is described from Metadata; a garbled assignment
//! is an error, not a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use strom_client::admin::NewTopic;
use strom_client::{Admin, ClientConfig, Error, ErrorCode};
use strom_protocol::messages::kafka::{
    ApiVersionsResponse, BrokerId, ConsumerProtocolAssignment, CreateTopicsRequest,
    CreateTopicsResponse, DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, MetadataResponse, TopicName,
    api_versions_response::ApiVersion,
    consumer_protocol_assignment::TopicPartition as Assigned,
    create_topics_response::CreatableTopicResult,
    describe_groups_response::{DescribedGroup, DescribedGroupMember},
    find_coordinator_response::Coordinator,
    metadata_response::MetadataResponseBroker,
};
use strom_protocol::messages::{
    ApiKey, Encodable, RequestFrame, StrBytes, encode_response, parse_request,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the scripted broker was asked, and how many failures it still has
/// to give.
#[derive(Debug, Default)]
struct Script {
    metadata: AtomicUsize,
    find_coordinator: AtomicUsize,
    create_topics: AtomicUsize,
    describe_groups: AtomicUsize,
    /// CreateTopics answers NOT_CONTROLLER this many times (usize::MAX:
    /// always).
    not_controller: AtomicUsize,
    /// DescribeGroups answers NOT_COORDINATOR, then
    /// COORDINATOR_LOAD_IN_PROGRESS, this many times each.
    not_coordinator: AtomicUsize,
    loading: AtomicUsize,
    /// CreateTopics goes unanswered.
    silent: AtomicBool,
    /// Metadata goes unanswered.
    silent_metadata: AtomicBool,
}

/// Takes one from `counter` if it is above zero.
fn take(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

/// A broker on 127.0.0.1 that speaks just enough Kafka for these tests:
/// node 1, the controller and every group's coordinator; no DescribeCluster.
async fn scripted_broker(script: Arc<Script>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = i32::from(listener.local_addr().unwrap().port());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let script = Arc::clone(&script);
            tokio::spawn(async move {
                loop {
                    let mut size = [0u8; 4];
                    if socket.read_exact(&mut size).await.is_err() {
                        return;
                    }
                    let mut frame =
                        BytesMut::zeroed(usize::try_from(i32::from_be_bytes(size)).unwrap());
                    if socket.read_exact(&mut frame).await.is_err() {
                        return;
                    }
                    let request = parse_request(frame.freeze()).unwrap();
                    let silent = match request.api_key {
                        ApiKey::CreateTopics => &script.silent,
                        ApiKey::Metadata => &script.silent_metadata,
                        _ => &AtomicBool::new(false),
                    };
                    if silent.load(Ordering::SeqCst) {
                        continue;
                    }
                    let answer = answer(&script, &request, port);
                    if socket.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("127.0.0.1:{port}")
}

fn respond<T: Encodable>(request: &RequestFrame, body: &T) -> BytesMut {
    encode_response(
        request.api_key,
        request.api_version,
        request.correlation_id,
        body,
    )
    .unwrap()
}

fn answer(script: &Script, request: &RequestFrame, port: i32) -> BytesMut {
    match request.api_key {
        ApiKey::ApiVersions => {
            let api = |key: ApiKey, min, max| {
                ApiVersion::default()
                    .with_api_key(key as i16)
                    .with_min_version(min)
                    .with_max_version(max)
            };
            let body = ApiVersionsResponse::default().with_api_keys(vec![
                api(ApiKey::ApiVersions, 0, 3),
                api(ApiKey::Metadata, 0, 12),
                api(ApiKey::FindCoordinator, 0, 5),
                api(ApiKey::CreateTopics, 2, 7),
                api(ApiKey::DescribeGroups, 0, 5),
            ]);
            respond(request, &body)
        }
        ApiKey::Metadata => {
            script.metadata.fetch_add(1, Ordering::SeqCst);
            let body = MetadataResponse::default()
                .with_brokers(vec![
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(1))
                        .with_host(s("127.0.0.1"))
                        .with_port(port),
                ])
                .with_cluster_id(Some(s("scripted")))
                .with_controller_id(BrokerId(1));
            respond(request, &body)
        }
        ApiKey::FindCoordinator => {
            script.find_coordinator.fetch_add(1, Ordering::SeqCst);
            let asked: FindCoordinatorRequest = request.decode().unwrap();
            let body = FindCoordinatorResponse::default().with_coordinators(
                asked
                    .coordinator_keys
                    .into_iter()
                    .map(|key| {
                        Coordinator::default()
                            .with_key(key)
                            .with_node_id(BrokerId(1))
                            .with_host(s("127.0.0.1"))
                            .with_port(port)
                    })
                    .collect(),
            );
            respond(request, &body)
        }
        ApiKey::CreateTopics => {
            script.create_topics.fetch_add(1, Ordering::SeqCst);
            let asked: CreateTopicsRequest = request.decode().unwrap();
            let code = if take(&script.not_controller) {
                ErrorCode::NotController.code()
            } else {
                0
            };
            let body = CreateTopicsResponse::default().with_topics(
                asked
                    .topics
                    .into_iter()
                    .map(|t| {
                        CreatableTopicResult::default()
                            .with_name(t.name)
                            .with_error_code(code)
                            .with_num_partitions(t.num_partitions)
                            .with_replication_factor(1)
                    })
                    .collect(),
            );
            respond(request, &body)
        }
        ApiKey::DescribeGroups => {
            script.describe_groups.fetch_add(1, Ordering::SeqCst);
            let asked: DescribeGroupsRequest = request.decode().unwrap();
            let code = if take(&script.not_coordinator) {
                ErrorCode::NotCoordinator.code()
            } else if take(&script.loading) {
                ErrorCode::CoordinatorLoadInProgress.code()
            } else {
                0
            };
            let body = DescribeGroupsResponse::default().with_groups(
                asked
                    .groups
                    .into_iter()
                    .map(|g| {
                        let assignment = if g.as_str() == "garbled" {
                            Bytes::from_static(&[0, 0, 0, 0, 0, 7, b'x'])
                        } else {
                            assignment_bytes()
                        };
                        DescribedGroup::default()
                            .with_group_id(g)
                            .with_error_code(code)
                            .with_group_state(s("Stable"))
                            .with_protocol_type(s("consumer"))
                            .with_protocol_data(s("range"))
                            .with_members(vec![
                                DescribedGroupMember::default()
                                    .with_member_id(s("m-1"))
                                    .with_client_id(s("c-1"))
                                    .with_client_host(s("/127.0.0.1"))
                                    .with_member_assignment(assignment),
                            ])
                    })
                    .collect(),
            );
            respond(request, &body)
        }
        other => panic!("the scripted broker got {other:?}"),
    }
}

/// Partitions 0 and 2 of "t", as a v0 consumer protocol assignment.
fn assignment_bytes() -> Bytes {
    let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
        Assigned::default()
            .with_topic(TopicName(s("t")))
            .with_partitions(vec![2, 0]),
    ]);
    let mut bytes = 0i16.to_be_bytes().to_vec();
    assignment.encode(&mut bytes, 0).unwrap();
    Bytes::from(bytes)
}

fn admin(bootstrap: &str, api_timeout_ms: u64) -> Admin {
    let config: ClientConfig = [
        ("bootstrap.servers", bootstrap.to_owned()),
        ("default.api.timeout.ms", api_timeout_ms.to_string()),
        ("retry.backoff.ms", "10".to_owned()),
    ]
    .into_iter()
    .collect();
    Admin::new(&config).unwrap()
}

#[tokio::test]
async fn not_controller_is_retried_after_a_metadata_refresh() {
    let script = Arc::new(Script::default());
    script.not_controller.store(2, Ordering::SeqCst);
    let admin = admin(&scripted_broker(Arc::clone(&script)).await, 30_000);
    let created = admin
        .create_topics(&[NewTopic::new("t", 3, 1)], false)
        .await;
    assert_eq!(created["t"].as_ref().unwrap().partitions, 3);
    assert_eq!(script.create_topics.load(Ordering::SeqCst), 3);
    // The first metadata, then a refresh after NOT_CONTROLLER: one per
    // error, or one for both when the second came within the refresh
    // backoff (KIP-580's rate limit, with jitter).
    let metadata = script.metadata.load(Ordering::SeqCst);
    assert!((2..=3).contains(&metadata), "{metadata} metadata requests");
}

#[tokio::test]
async fn an_error_that_never_clears_times_out_at_the_api_timeout() {
    let script = Arc::new(Script::default());
    script.not_controller.store(usize::MAX, Ordering::SeqCst);
    let admin = admin(&scripted_broker(Arc::clone(&script)).await, 300);
    let started = Instant::now();
    let created = admin
        .create_topics(&[NewTopic::new("t", 1, 1)], false)
        .await;
    let elapsed = started.elapsed();
    match &created["t"] {
        Err(Error::Timeout(message)) => assert!(
            message.contains(&ErrorCode::NotController.to_string()),
            "{message}"
        ),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    assert!(script.create_topics.load(Ordering::SeqCst) > 1);
}

#[tokio::test]
async fn coordinator_errors_are_retried_after_a_new_lookup() {
    let script = Arc::new(Script::default());
    script.not_coordinator.store(1, Ordering::SeqCst);
    script.loading.store(1, Ordering::SeqCst);
    let admin = admin(&scripted_broker(Arc::clone(&script)).await, 30_000);
    let described = admin.describe_groups(&["g", "garbled"]).await;
    let g = described["g"].as_ref().unwrap();
    assert_eq!(
        (g.state.as_str(), g.protocol.as_str(), g.coordinator),
        ("Stable", "range", 1)
    );
    assert_eq!(g.members[0].client_id, "c-1");
    assert_eq!(
        g.members[0].assignment,
        std::collections::BTreeMap::from([("t".to_owned(), vec![0, 2])])
    );
    assert!(
        matches!(&described["garbled"], Err(Error::Protocol(_))),
        "{described:?}"
    );
    // Both groups asked together each time: two failures, one answer.
    assert_eq!(script.describe_groups.load(Ordering::SeqCst), 3);
    // One lookup for both groups per attempt.
    assert_eq!(script.find_coordinator.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_broker_without_describe_cluster_is_described_from_metadata() {
    let script = Arc::new(Script::default());
    let bootstrap = scripted_broker(Arc::clone(&script)).await;
    let admin = admin(&bootstrap, 30_000);
    let cluster = admin.describe_cluster().await.unwrap();
    assert_eq!(cluster.cluster_id.as_deref(), Some("scripted"));
    assert_eq!(cluster.controller, Some(1));
    assert_eq!(cluster.brokers.len(), 1);
    assert_eq!(
        format!("{}:{}", cluster.brokers[0].host, cluster.brokers[0].port),
        bootstrap
    );
}

#[tokio::test]
async fn a_request_never_answered_is_given_up_at_the_api_timeout() {
    let script = Arc::new(Script::default());
    script.silent.store(true, Ordering::SeqCst);
    // request.timeout.ms (30 s by default) is far beyond the API timeout.
    let admin = admin(&scripted_broker(Arc::clone(&script)).await, 300);
    let started = Instant::now();
    let created = admin
        .create_topics(&[NewTopic::new("t", 1, 1)], false)
        .await;
    assert!(
        matches!(&created["t"], Err(Error::Timeout(_))),
        "{created:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The connection still serves the next call.
    script.silent.store(false, Ordering::SeqCst);
    let created = admin
        .create_topics(&[NewTopic::new("t", 1, 1)], false)
        .await;
    assert!(created["t"].is_ok(), "{created:?}");
}

#[tokio::test]
async fn metadata_never_answered_is_given_up_at_the_api_timeout() {
    let script = Arc::new(Script::default());
    script.silent_metadata.store(true, Ordering::SeqCst);
    let admin = admin(&scripted_broker(Arc::clone(&script)).await, 300);
    let started = Instant::now();
    assert!(matches!(
        admin.list_topics(false).await,
        Err(Error::Timeout(_))
    ));
    let created = admin
        .create_topics(&[NewTopic::new("t", 1, 1)], false)
        .await;
    assert!(
        matches!(&created["t"], Err(Error::Timeout(_))),
        "{created:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
