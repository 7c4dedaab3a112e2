//! The transaction APIs: AddPartitionsToTxn, AddOffsetsToTxn, EndTxn,
//! TxnOffsetCommit and WriteTxnMarkers, and the admin views
//! DescribeTransactions, ListTransactions and DescribeProducers. InitProducerId is in
//! `init_producer_id`, FindCoordinator in `group`. The work is the
//! transaction coordinator's ([`crate::txn`]) and, for offsets, the group
//! coordinator's.
//!
//! Here too, because the coordinator does not know the broker: creating
//! `__transaction_state` on first use (as Kafka's request handlers do; the
//! publisher then loads its shards), the leader of an id's partition
//! for FindCoordinator ([`coordinator_for`]), and the local
//! [`MarkerSender`] ([`LocalMarkerSender`]), which appends markers to this
//! broker's partitions and tells the group coordinator about those in
//! `__consumer_offsets`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use strom_controller::MetadataImage;
use strom_controller::controller::CreateTopicRequest;

use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::StrBytes;
use strom_protocol::messages::kafka::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, EndTxnRequest, EndTxnResponse, TopicName, TxnOffsetCommitRequest,
    TxnOffsetCommitResponse, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
    add_partitions_to_txn_request::{AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction},
    add_partitions_to_txn_response::{
        AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
    },
    txn_offset_commit_response::{TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic},
    write_txn_markers_request::{WritableTxnMarker, WritableTxnMarkerTopic},
    write_txn_markers_response::{
        WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
    },
};
use strom_protocol::messages::kafka::{
    DescribeProducersRequest, DescribeProducersResponse, DescribeTransactionsRequest,
    DescribeTransactionsResponse, ListTransactionsRequest, ListTransactionsResponse, ProducerId,
    TransactionalId, describe_producers_response, describe_transactions_response,
    list_transactions_response,
};

use super::RequestContext;
use crate::broker::Broker;
use crate::group::store::{OFFSETS_TOPIC, OffsetValue};
use crate::interbroker::Channel;
use crate::txn::markers::{self, MarkerRequest, MarkerResults, MarkerSender};
use crate::txn::store::{self, TRANSACTION_STATE_TOPIC, TxnStatus};
use crate::txn::{TxnConfig, fenced};

/// Kafka's `transaction.state.log.segment.bytes` default.
const TXN_STATE_SEGMENT_BYTES: &str = "104857600";

/// The image with `__transaction_state` in it: the topic is created first
/// when it does not exist yet (Kafka creates it on first use), and its
/// partitions' shards are loaded.
pub(crate) async fn txn_image(broker: &Arc<Broker>) -> Result<Arc<MetadataImage>, ErrorCode> {
    let image = broker.image();
    if image.topic(TRANSACTION_STATE_TOPIC).is_some() {
        // It may have been created a moment ago: its shards are loaded
        // once the publisher has applied the image.
        broker.await_metadata().await;
        return Ok(image);
    }
    let for_task = Arc::clone(broker);
    super::blocking(move || ensure_topic(&for_task, &for_task.txn.config))
        .await
        .unwrap_or(Err(ErrorCode::CoordinatorNotAvailable))
}

/// The leader of `transactional_id`'s partition of `__transaction_state`
/// (FindCoordinator), creating the topic when it does not exist yet.
/// Blocking.
pub fn coordinator_for(broker: &Broker, transactional_id: &str) -> Result<i32, ErrorCode> {
    let image = ensure_topic(broker, &broker.txn.config)?;
    let count = image
        .topic(TRANSACTION_STATE_TOPIC)
        .map_or(0, |t| t.partitions.len());
    let count = i32::try_from(count).map_err(|_| ErrorCode::CoordinatorNotAvailable)?;
    let partition = image
        .partition(
            TRANSACTION_STATE_TOPIC,
            store::partition_for(transactional_id, count.max(1)),
        )
        .ok_or(ErrorCode::CoordinatorNotAvailable)?;
    if partition.leader < 0 {
        return Err(ErrorCode::CoordinatorNotAvailable);
    }
    Ok(partition.leader)
}

/// Creates `__transaction_state` if it is missing, opens its partitions and
/// loads the transaction coordinator's shards of those this broker leads;
/// returns the image that has the topic. Blocking.
fn ensure_topic(broker: &Broker, config: &TxnConfig) -> Result<Arc<MetadataImage>, ErrorCode> {
    super::ensure_internal_topic(broker, TRANSACTION_STATE_TOPIC, |brokers| {
        let brokers = i16::try_from(brokers).unwrap_or(i16::MAX).max(1);
        let replication_factor = config.replication_factor.min(brokers);
        CreateTopicRequest {
            name: TRANSACTION_STATE_TOPIC.to_owned(),
            num_partitions: config.partitions,
            replication_factor,
            assignments: Vec::new(),
            configs: BTreeMap::from([
                ("cleanup.policy".to_owned(), "compact".to_owned()),
                ("compression.type".to_owned(), "uncompressed".to_owned()),
                (
                    "segment.bytes".to_owned(),
                    TXN_STATE_SEGMENT_BYTES.to_owned(),
                ),
                (
                    "min.insync.replicas".to_owned(),
                    config.min_isr.min(replication_factor).to_string(),
                ),
            ]),
        }
    })
}

/// How long a transaction marker may wait to be replicated: Kafka waits
/// `request.timeout.ms` (30 s by default); the coordinator retries it after.
const MARKER_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The local [`MarkerSender`]: appends each marker to the partition if this
/// broker leads it (NOT_LEADER_OR_FOLLOWER otherwise, UNKNOWN_TOPIC_OR_PARTITION
/// for a partition the image does not have), waits until it is replicated,
/// then, for the partitions of `__consumer_offsets`, tells the group
/// coordinator that the producer's offsets there take effect or go. Also the
/// WriteTxnMarkers handler's work.
#[derive(Debug)]
pub struct LocalMarkerSender<'a> {
    broker: &'a Arc<Broker>,
}

impl<'a> LocalMarkerSender<'a> {
    pub fn new(broker: &'a Arc<Broker>) -> Self {
        Self { broker }
    }

    /// Writes the markers of `request` to the partitions this broker leads.
    pub async fn write_local(&self, request: &MarkerRequest) -> MarkerResults {
        let broker = self.broker;
        let broker_for_task = Arc::clone(broker);
        let request_for_task = request.clone();
        let appended = super::blocking(move || {
            let image = broker_for_task.image();
            let now = broker_for_task.clock.now_ms();
            request_for_task
                .partitions
                .iter()
                .map(|(topic, index)| {
                    let appended = if image.partition(topic, *index).is_none() {
                        Err(ErrorCode::UnknownTopicOrPartition)
                    } else {
                        match broker_for_task
                            .replicas
                            .get(topic, *index)
                            .filter(|p| p.is_leader())
                        {
                            Some(partition) => {
                                markers::append_marker(&partition, &request_for_task, now)
                                    .map(|at| (partition, at))
                            }
                            None => Err(ErrorCode::NotLeaderOrFollower),
                        }
                    };
                    ((topic.clone(), *index), appended)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let Some(appended) = appended else {
            return request
                .partitions
                .iter()
                .map(|p| (p.clone(), ErrorCode::UnknownServerError))
                .collect();
        };
        // A marker counts once replicated (Kafka writes them with
        // acks=all): one the new leader lacks would leave its transaction
        // open there. The waits run together.
        let results: MarkerResults =
            futures::future::join_all(appended.into_iter().map(|(key, appended)| async move {
                let code = match appended {
                    Ok((partition, (last_offset, leader_epoch))) => partition
                        .wait_for_high_watermark(
                            last_offset + 1,
                            leader_epoch,
                            MARKER_WRITE_TIMEOUT,
                        )
                        .await
                        .err()
                        .unwrap_or(ErrorCode::None),
                    Err(code) => code,
                };
                (key, code)
            }))
            .await;
        // Offsets committed in the transaction become visible (or go) with the
        // marker in their partition of the offsets topic.
        for ((topic, partition), code) in &results {
            if topic == OFFSETS_TOPIC && *code == ErrorCode::None {
                broker
                    .groups
                    .complete_txn(request.producer_id, *partition, request.commit)
                    .await;
            }
        }
        results
    }
}

impl MarkerSender for LocalMarkerSender<'_> {
    fn send<'b>(&'b self, request: &'b MarkerRequest) -> BoxFuture<'b, MarkerResults> {
        Box::pin(self.write_local(request))
    }
}

/// How long the coordinator's [`ClusterMarkerSender`] goes on retrying the
/// markers a leader change or a short outage held up, before it answers
/// them as not written (the coordinator's timer retries them later; the
/// producer meanwhile gets CONCURRENT_TRANSACTIONS).
const MARKER_RETRY_FOR: Duration = Duration::from_secs(5);

/// The pause between two tries of the markers not written yet: the next
/// leader is usually named within it.
const MARKER_RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// The coordinator's [`MarkerSender`] in a cluster (Kafka's
/// `TransactionMarkerChannelManager`): each marker goes to its partition's
/// leader, this broker's own partitions through [`LocalMarkerSender`] and
/// the others' as WriteTxnMarkers. Markers refused for a reason that a new
/// leader or a moment cures (no leader, NOT_LEADER_OR_FOLLOWER, too few
/// in-sync replicas, an unreachable broker) are sent again to the leader
/// named then, for up to [`MARKER_RETRY_FOR`].
#[derive(Debug)]
pub struct ClusterMarkerSender<'a> {
    broker: &'a Arc<Broker>,
    /// How long markers not written are tried again.
    retry_for: Duration,
}

impl<'a> ClusterMarkerSender<'a> {
    /// For a client waiting on its transaction's end (EndTxn,
    /// InitProducerId): retries for [`MARKER_RETRY_FOR`].
    pub fn new(broker: &'a Arc<Broker>) -> Self {
        Self {
            broker,
            retry_for: MARKER_RETRY_FOR,
        }
    }

    /// For the coordinator's timer: one try per tick, so a partition
    /// without a reachable leader holds its shard (and the other ids
    /// there) no longer than that try.
    pub fn once(broker: &'a Arc<Broker>) -> Self {
        Self {
            broker,
            retry_for: Duration::ZERO,
        }
    }

    async fn send_all(&self, request: &MarkerRequest) -> MarkerResults {
        let deadline = std::time::Instant::now() + self.retry_for;
        let mut done: MarkerResults = Vec::with_capacity(request.partitions.len());
        let mut todo = request.partitions.clone();
        loop {
            let outcomes = self.send_once(request, &todo).await;
            todo.clear();
            let retrying = std::time::Instant::now() < deadline;
            for (partition, code) in outcomes {
                if retrying && marker_retriable(code) {
                    todo.push(partition);
                } else {
                    done.push((partition, code));
                }
            }
            if todo.is_empty() {
                return done;
            }
            tracing::debug!(producer_id = request.producer_id, partitions = ?todo, "transaction markers not written yet; retrying");
            tokio::time::sleep(MARKER_RETRY_BACKOFF).await;
        }
    }

    /// One try: the markers of `partitions`, each to its leader now.
    async fn send_once(
        &self,
        request: &MarkerRequest,
        partitions: &[(String, i32)],
    ) -> MarkerResults {
        let broker = self.broker;
        let image = broker.image();
        let mut results = Vec::with_capacity(partitions.len());
        let mut local = Vec::new();
        let mut remote: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
        for (topic, index) in partitions {
            match image.partition(topic, *index).map(|p| p.leader) {
                // Gone: the local sender says so the coordinator's way.
                None => local.push((topic.clone(), *index)),
                Some(leader) if leader == broker.node_id => local.push((topic.clone(), *index)),
                Some(leader) if leader < 0 => {
                    results.push(((topic.clone(), *index), ErrorCode::LeaderNotAvailable));
                }
                Some(leader) => remote
                    .entry(leader)
                    .or_default()
                    .push((topic.clone(), *index)),
            }
        }
        if !local.is_empty() {
            let mine = MarkerRequest {
                partitions: local,
                ..request.clone()
            };
            results.extend(LocalMarkerSender::new(broker).write_local(&mine).await);
        }
        let sent = futures::future::join_all(remote.into_iter().map(|(leader, partitions)| {
            let image = Arc::clone(&image);
            async move {
                let answer = broker
                    .interbroker
                    .send(
                        &image,
                        leader,
                        Channel::Markers,
                        1,
                        &write_txn_markers_request(request, &partitions),
                    )
                    .await;
                marker_results(leader, request, partitions, answer)
            }
        }))
        .await;
        results.extend(sent.into_iter().flatten());
        results
    }
}

impl MarkerSender for ClusterMarkerSender<'_> {
    fn send<'b>(&'b self, request: &'b MarkerRequest) -> BoxFuture<'b, MarkerResults> {
        Box::pin(self.send_all(request))
    }
}

/// Whether a marker refused with `code` may be written by trying again
/// (Kafka's marker channel retries the same codes).
fn marker_retriable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotLeaderOrFollower
            | ErrorCode::LeaderNotAvailable
            | ErrorCode::NotEnoughReplicas
            | ErrorCode::NotEnoughReplicasAfterAppend
            | ErrorCode::RequestTimedOut
            | ErrorCode::KafkaStorageError
            | ErrorCode::NetworkException
    )
}

/// `partitions` grouped by topic, topics in their first appearance's order.
fn by_topic(partitions: &[(String, i32)]) -> Vec<(&str, Vec<i32>)> {
    let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
    for (topic, index) in partitions {
        match topics.iter_mut().find(|(t, _)| *t == topic.as_str()) {
            Some((_, indexes)) => indexes.push(*index),
            None => topics.push((topic, vec![*index])),
        }
    }
    topics
}

/// WriteTxnMarkers with the one marker of `request` for `partitions`.
fn write_txn_markers_request(
    request: &MarkerRequest,
    partitions: &[(String, i32)],
) -> WriteTxnMarkersRequest {
    let topics = by_topic(partitions)
        .into_iter()
        .map(|(topic, indexes)| {
            WritableTxnMarkerTopic::default()
                .with_name(topic_name(topic))
                .with_partition_indexes(indexes)
        })
        .collect();
    WriteTxnMarkersRequest::default().with_markers(vec![
        WritableTxnMarker::default()
            .with_producer_id(ProducerId(request.producer_id))
            .with_producer_epoch(request.producer_epoch)
            .with_transaction_result(request.commit)
            .with_coordinator_epoch(request.coordinator_epoch)
            .with_topics(topics),
    ])
}

/// Each of `partitions`' outcome from a WriteTxnMarkers answer: what the
/// leader answered for it, NETWORK_EXCEPTION when the request failed or
/// the answer left it out.
fn marker_results(
    leader: i32,
    request: &MarkerRequest,
    partitions: Vec<(String, i32)>,
    answer: Result<WriteTxnMarkersResponse, String>,
) -> MarkerResults {
    let answered: HashMap<(String, i32), ErrorCode> = match answer {
        Ok(response) => response
            .markers
            .iter()
            .filter(|m| m.producer_id.0 == request.producer_id)
            .flat_map(|m| &m.topics)
            .flat_map(|t| {
                t.partitions.iter().map(|p| {
                    (
                        (t.name.to_string(), p.partition_index),
                        ErrorCode::from_code(p.error_code).unwrap_or(ErrorCode::UnknownServerError),
                    )
                })
            })
            .collect(),
        Err(e) => {
            tracing::info!(leader, producer_id = request.producer_id, error = %e, "WriteTxnMarkers failed");
            HashMap::new()
        }
    };
    partitions
        .into_iter()
        .map(|p| {
            let code = answered
                .get(&p)
                .copied()
                .unwrap_or(ErrorCode::NetworkException);
            (p, code)
        })
        .collect()
}

/// KIP-890 part 1, asked by this broker as a partition leader before a
/// transactional produce: the transaction coordinator of
/// `transactional_id` (the leader of its partition of
/// `__transaction_state`) answers whether each of `partitions` is in the
/// producer's ongoing transaction. This broker's own coordinator answers
/// directly; another broker's gets AddPartitionsToTxn with `verify_only`.
/// A coordinator that cannot answer now yields NOT_ENOUGH_REPLICAS, which
/// producers retry without a metadata refresh (Kafka's translation).
pub async fn verify_txn(
    broker: &Arc<Broker>,
    image: &MetadataImage,
    transactional_id: &str,
    producer_id: i64,
    epoch: i16,
    partitions: &[(String, i32)],
) -> Vec<ErrorCode> {
    ask_txn_coordinator(
        broker,
        image,
        transactional_id,
        producer_id,
        epoch,
        partitions,
    )
    .await
    .into_iter()
    .map(|code| match code {
        ErrorCode::ConcurrentTransactions
        | ErrorCode::NetworkException
        | ErrorCode::CoordinatorLoadInProgress
        | ErrorCode::CoordinatorNotAvailable
        | ErrorCode::NotCoordinator => ErrorCode::NotEnoughReplicas,
        other => other,
    })
    .collect()
}

/// The coordinator's own answer to [`verify_txn`]'s question (NETWORK_EXCEPTION
/// when another broker's could not be reached).
async fn ask_txn_coordinator(
    broker: &Arc<Broker>,
    image: &MetadataImage,
    transactional_id: &str,
    producer_id: i64,
    epoch: i16,
    partitions: &[(String, i32)],
) -> Vec<ErrorCode> {
    let coordinator = image.topic(TRANSACTION_STATE_TOPIC).and_then(|t| {
        let index = store::partition_for(transactional_id, i32::try_from(t.partitions.len()).ok()?);
        image
            .partition(TRANSACTION_STATE_TOPIC, index)
            .map(|p| p.leader)
    });
    match coordinator {
        Some(node) if node >= 0 && node != broker.node_id => {
            verify_remote(
                broker,
                image,
                node,
                transactional_id,
                producer_id,
                epoch,
                partitions,
            )
            .await
        }
        _ => {
            broker
                .txn
                .verify_partitions(image, transactional_id, producer_id, epoch, partitions)
                .await
        }
    }
}

/// AddPartitionsToTxn (v4, `verify_only`) to broker `coordinator`.
async fn verify_remote(
    broker: &Arc<Broker>,
    image: &MetadataImage,
    coordinator: i32,
    transactional_id: &str,
    producer_id: i64,
    epoch: i16,
    partitions: &[(String, i32)],
) -> Vec<ErrorCode> {
    let topics = by_topic(partitions)
        .into_iter()
        .map(|(topic, indexes)| {
            AddPartitionsToTxnTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(indexes)
        })
        .collect();
    let request = AddPartitionsToTxnRequest::default().with_transactions(vec![
        AddPartitionsToTxnTransaction::default()
            .with_transactional_id(TransactionalId(StrBytes::from_string(
                transactional_id.to_owned(),
            )))
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch)
            .with_verify_only(true)
            .with_topics(topics),
    ]);
    let answer = broker
        .interbroker
        .send(image, coordinator, Channel::Verification, 4, &request)
        .await;
    let response = match answer {
        Ok(r) if r.error_code == 0 => r,
        Ok(r) => {
            let code = ErrorCode::from_code(r.error_code).unwrap_or(ErrorCode::UnknownServerError);
            return vec![code; partitions.len()];
        }
        Err(e) => {
            tracing::info!(coordinator, transactional_id, error = %e, "transaction verification failed");
            return vec![ErrorCode::NetworkException; partitions.len()];
        }
    };
    let answered: HashMap<(String, i32), ErrorCode> = response
        .results_by_transaction
        .iter()
        .filter(|r| r.transactional_id.as_str() == transactional_id)
        .flat_map(|r| &r.topic_results)
        .flat_map(|t| {
            t.results_by_partition.iter().map(|p| {
                (
                    (t.name.to_string(), p.partition_index),
                    ErrorCode::from_code(p.partition_error_code)
                        .unwrap_or(ErrorCode::UnknownServerError),
                )
            })
        })
        .collect();
    partitions
        .iter()
        .map(|p| {
            answered
                .get(p)
                .copied()
                .unwrap_or(ErrorCode::NetworkException)
        })
        .collect()
}

/// Partitions with the error each gets.
type PartitionErrors = Vec<((String, i32), ErrorCode)>;

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

/// The partitions a request names, with the error of each that cannot be in
/// a transaction (unknown, internal): Kafka then answers those with their
/// error and the others with OPERATION_NOT_ATTEMPTED.
fn check_partitions(
    broker: &Broker,
    topics: &[AddPartitionsToTxnTopic],
) -> (Vec<(String, i32)>, PartitionErrors) {
    let image = broker.image();
    let mut partitions = Vec::new();
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for topic in topics {
        let name = topic.name.to_string();
        for p in &topic.partitions {
            if !seen.insert((name.clone(), *p)) {
                continue;
            }
            let error = if name == TRANSACTION_STATE_TOPIC {
                Some(ErrorCode::TopicAuthorizationFailed)
            } else if image.partition(&name, *p).is_none() {
                Some(ErrorCode::UnknownTopicOrPartition)
            } else {
                None
            };
            match error {
                Some(e) => errors.push(((name.clone(), *p), e)),
                None => partitions.push((name.clone(), *p)),
            }
        }
    }
    (partitions, errors)
}

fn topic_results(results: PartitionErrors) -> Vec<AddPartitionsToTxnTopicResult> {
    let mut out: Vec<AddPartitionsToTxnTopicResult> = Vec::new();
    for ((topic, partition), code) in results {
        let result = AddPartitionsToTxnPartitionResult::default()
            .with_partition_index(partition)
            .with_partition_error_code(code.code());
        match out.iter_mut().find(|t| t.name.0.as_str() == topic) {
            Some(t) => t.results_by_partition.push(result),
            None => out.push(
                AddPartitionsToTxnTopicResult::default()
                    .with_name(topic_name(&topic))
                    .with_results_by_partition(vec![result]),
            ),
        }
    }
    out
}

/// One transaction of an AddPartitionsToTxn request.
async fn add_partitions_one(
    broker: &Arc<Broker>,
    transactional_id: &str,
    producer_id: i64,
    epoch: i16,
    verify_only: bool,
    topics: &[AddPartitionsToTxnTopic],
    version: i16,
) -> Vec<AddPartitionsToTxnTopicResult> {
    let (partitions, errors) = check_partitions(broker, topics);
    if !errors.is_empty() {
        let mut results = errors;
        results.extend(
            partitions
                .into_iter()
                .map(|p| (p, ErrorCode::OperationNotAttempted)),
        );
        return topic_results(results);
    }
    if verify_only {
        let codes = broker
            .txn
            .verify_partitions(
                &broker.image(),
                transactional_id,
                producer_id,
                epoch,
                &partitions,
            )
            .await;
        return topic_results(partitions.into_iter().zip(codes).collect());
    }
    let image = match txn_image(broker).await {
        Ok(image) => image,
        Err(e) => return topic_results(partitions.into_iter().map(|p| (p, e)).collect()),
    };
    let code = match broker
        .txn
        .add_partitions(
            &image,
            transactional_id,
            producer_id,
            epoch,
            &partitions,
            fenced(2, version),
        )
        .await
    {
        Ok(()) => ErrorCode::None,
        Err(e) => e,
    };
    topic_results(partitions.into_iter().map(|p| (p, code)).collect())
}

pub async fn add_partitions_to_txn(
    broker: &Arc<Broker>,
    req: AddPartitionsToTxnRequest,
    ctx: &RequestContext<'_>,
) -> AddPartitionsToTxnResponse {
    let version = ctx.api_version();
    if version < 4 {
        let results = add_partitions_one(
            broker,
            req.v3_and_below_transactional_id.as_str(),
            req.v3_and_below_producer_id.0,
            req.v3_and_below_producer_epoch,
            false,
            &req.v3_and_below_topics,
            version,
        )
        .await;
        return AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results);
    }
    // v4+: batched, from brokers (KIP-890); verify_only checks membership.
    let mut results = Vec::with_capacity(req.transactions.len());
    for txn in &req.transactions {
        let topic_results = add_partitions_one(
            broker,
            txn.transactional_id.as_str(),
            txn.producer_id.0,
            txn.producer_epoch,
            txn.verify_only,
            &txn.topics,
            version,
        )
        .await;
        results.push(
            AddPartitionsToTxnResult::default()
                .with_transactional_id(txn.transactional_id.clone())
                .with_topic_results(topic_results),
        );
    }
    AddPartitionsToTxnResponse::default().with_results_by_transaction(results)
}

pub async fn add_offsets_to_txn(
    broker: &Arc<Broker>,
    req: AddOffsetsToTxnRequest,
    ctx: &RequestContext<'_>,
) -> AddOffsetsToTxnResponse {
    let version = ctx.api_version();
    let group_id = req.group_id.to_string();
    let broker_for_task = Arc::clone(broker);
    let group_for_task = group_id.clone();
    // The group's partition of the offsets topic joins the transaction (the
    // topic is created if need be).
    let partition = crate::api::blocking(move || {
        super::group::coordinator_for(&broker_for_task, &group_for_task).map(|_| {
            let image = broker_for_task.image();
            let count = image
                .topic(OFFSETS_TOPIC)
                .map_or(1, |t| i32::try_from(t.partitions.len()).unwrap_or(i32::MAX));
            crate::group::store::partition_for(&group_for_task, count)
        })
    })
    .await
    .unwrap_or(Err(ErrorCode::UnknownServerError));
    let added = match partition {
        Err(e) => Err(e),
        Ok(index) => match txn_image(broker).await {
            Err(e) => Err(e),
            Ok(image) => {
                broker
                    .txn
                    .add_partitions(
                        &image,
                        req.transactional_id.as_str(),
                        req.producer_id.0,
                        req.producer_epoch,
                        &[(OFFSETS_TOPIC.to_owned(), index)],
                        fenced(2, version),
                    )
                    .await
            }
        },
    };
    let code = added.err().unwrap_or(ErrorCode::None);
    AddOffsetsToTxnResponse::default().with_error_code(code.code())
}

pub async fn end_txn(
    broker: &Arc<Broker>,
    req: EndTxnRequest,
    ctx: &RequestContext<'_>,
) -> EndTxnResponse {
    let version = ctx.api_version();
    let image = match txn_image(broker).await {
        Ok(image) => image,
        Err(e) => return EndTxnResponse::default().with_error_code(e.code()),
    };
    let code = match broker
        .txn
        .end_txn(
            &image,
            &ClusterMarkerSender::new(broker),
            req.transactional_id.as_str(),
            req.producer_id.0,
            req.producer_epoch,
            req.committed,
            fenced(2, version),
        )
        .await
    {
        Ok(()) => ErrorCode::None,
        Err(e) => e,
    };
    EndTxnResponse::default().with_error_code(code.code())
}

pub async fn txn_offset_commit(
    broker: &Arc<Broker>,
    req: TxnOffsetCommitRequest,
    ctx: &RequestContext<'_>,
) -> TxnOffsetCommitResponse {
    let version = ctx.api_version();
    let group_id = req.group_id.to_string();
    let respond = |code: ErrorCode| {
        TxnOffsetCommitResponse::default().with_topics(
            req.topics
                .iter()
                .map(|t| {
                    TxnOffsetCommitResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    TxnOffsetCommitResponsePartition::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(code.code())
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
    };
    if group_id.is_empty() {
        return respond(ErrorCode::InvalidGroupId);
    }
    let shard = match super::group::group_shard(broker, &group_id).await {
        Ok(shard) => shard,
        Err(e) => return respond(e),
    };
    let image = broker.image();
    let offsets_partition = {
        let count = image
            .topic(OFFSETS_TOPIC)
            .map_or(1, |t| i32::try_from(t.partitions.len()).unwrap_or(i32::MAX));
        crate::group::store::partition_for(&group_id, count)
    };
    // KIP-890: the group's partition must be in the ongoing transaction
    // (AddOffsetsToTxn came first). When this broker coordinates the
    // transactional id too, the verification holds the id's shard until
    // the offsets are in the log, so no marker comes between. Otherwise the
    // id's coordinator is asked (AddPartitionsToTxn, verify_only); a marker
    // could then come between only if the producer ended its transaction
    // before this commit was answered, which clients do not do.
    let txn_shard = broker.txn.shard(&image, req.transactional_id.as_str());
    let mut txn_state_held = None;
    let verified = match &txn_shard {
        Ok(txn_shard) => {
            let txn_state = txn_shard.lock().await;
            let verified = txn_state.verify(
                req.transactional_id.as_str(),
                req.producer_id.0,
                req.producer_epoch,
                OFFSETS_TOPIC,
                offsets_partition,
            );
            txn_state_held = Some(txn_state);
            verified
        }
        // No `__transaction_state`: no transactional id is known.
        Err(_) if image.topic(TRANSACTION_STATE_TOPIC).is_none() => {
            Err(ErrorCode::InvalidProducerIdMapping)
        }
        Err(_) => {
            let codes = ask_txn_coordinator(
                broker,
                &image,
                req.transactional_id.as_str(),
                req.producer_id.0,
                req.producer_epoch,
                &[(OFFSETS_TOPIC.to_owned(), offsets_partition)],
            )
            .await;
            match codes
                .first()
                .copied()
                .unwrap_or(ErrorCode::NetworkException)
            {
                ErrorCode::None => Ok(()),
                ErrorCode::NetworkException => Err(ErrorCode::CoordinatorNotAvailable),
                code => Err(code),
            }
        }
    };
    if let Err(e) = verified {
        let code = match e {
            ErrorCode::InvalidProducerEpoch => fenced(3, version),
            other => other,
        };
        return respond(code);
    }
    let mut state = shard.lock().await;
    // Partitions are checked against the image as it is under the lock (see
    // offset_commit).
    let image = broker.image();
    // v3+ carries the member; a member that is not the group's is refused
    // as OffsetCommit would (a standalone producer sends generation -1).
    if version >= 3 && (req.generation_id >= 0 || !req.member_id.is_empty()) {
        let valid = match state.groups.get(&group_id) {
            Some(crate::group::Group::Classic(g)) => g.validate_commit(
                req.member_id.as_str(),
                req.group_instance_id.as_ref().map(|s| s.as_str()),
                req.generation_id,
            ),
            Some(crate::group::Group::Consumer(g)) => g.validate_commit(
                req.member_id.as_str(),
                req.generation_id,
                ErrorCode::IllegalGeneration,
            ),
            None => Err(ErrorCode::IllegalGeneration),
        };
        if let Err(e) = valid {
            return respond(e);
        }
    }
    let now = broker.clock.now_ms();
    let max_metadata = broker.groups.config.offset_metadata_max_bytes;
    let mut offsets = Vec::new();
    let mut codes: Vec<Vec<ErrorCode>> = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let mut topic_codes = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let metadata = p.committed_metadata.as_ref().map(|m| m.to_string());
            if metadata.as_ref().is_some_and(|m| m.len() > max_metadata) {
                topic_codes.push(ErrorCode::OffsetMetadataTooLarge);
                continue;
            }
            if image
                .partition(t.name.as_str(), p.partition_index)
                .is_none()
            {
                topic_codes.push(ErrorCode::UnknownTopicOrPartition);
                continue;
            }
            offsets.push((
                t.name.to_string(),
                p.partition_index,
                OffsetValue {
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata,
                    commit_timestamp_ms: now,
                },
            ));
            topic_codes.push(ErrorCode::None);
        }
        codes.push(topic_codes);
    }
    let written = shard
        .persist_txn_offsets(
            &mut state,
            &group_id,
            req.producer_id.0,
            req.producer_epoch,
            offsets,
        )
        .await;
    drop(state);
    drop(txn_state_held);
    let failure = match written {
        Ok(()) => None,
        Err(ErrorCode::InvalidProducerEpoch) => Some(fenced(3, version)),
        Err(e) => Some(e),
    };
    let mut response = respond(ErrorCode::None);
    for (topic, topic_codes) in response.topics.iter_mut().zip(codes) {
        for (partition, code) in topic.partitions.iter_mut().zip(topic_codes) {
            partition.error_code = match (code, failure) {
                (ErrorCode::None, Some(e)) => e.code(),
                (code, _) => code.code(),
            };
        }
    }
    response
}

/// WriteTxnMarkers: another broker's transaction coordinator asks this one
/// to write markers to the partitions it leads.
pub async fn write_txn_markers(
    broker: &Arc<Broker>,
    req: WriteTxnMarkersRequest,
    _ctx: &RequestContext<'_>,
) -> WriteTxnMarkersResponse {
    let mut results = Vec::with_capacity(req.markers.len());
    for marker in &req.markers {
        let request = MarkerRequest {
            producer_id: marker.producer_id.0,
            producer_epoch: marker.producer_epoch,
            commit: marker.transaction_result,
            coordinator_epoch: marker.coordinator_epoch,
            partitions: marker
                .topics
                .iter()
                .flat_map(|t| t.partition_indexes.iter().map(|p| (t.name.to_string(), *p)))
                .collect(),
        };
        let written = LocalMarkerSender::new(broker).write_local(&request).await;
        let mut topics: Vec<WritableTxnMarkerTopicResult> = Vec::new();
        for ((topic, partition), code) in written {
            let result = WritableTxnMarkerPartitionResult::default()
                .with_partition_index(partition)
                .with_error_code(code.code());
            match topics.iter_mut().find(|t| t.name.0.as_str() == topic) {
                Some(t) => t.partitions.push(result),
                None => topics.push(
                    WritableTxnMarkerTopicResult::default()
                        .with_name(topic_name(&topic))
                        .with_partitions(vec![result]),
                ),
            }
        }
        results.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(marker.producer_id)
                .with_topics(topics),
        );
    }
    WriteTxnMarkersResponse::default().with_markers(results)
}

/// DescribeTransactions: the state of each transactional id this broker
/// coordinates.
pub async fn describe_transactions(
    broker: &Arc<Broker>,
    req: DescribeTransactionsRequest,
    _ctx: &RequestContext<'_>,
) -> DescribeTransactionsResponse {
    let mut states = Vec::with_capacity(req.transactional_ids.len());
    for id in &req.transactional_ids {
        let mut out = describe_transactions_response::TransactionState::default()
            .with_transactional_id(id.clone())
            .with_transaction_start_time_ms(-1)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let shard = match txn_image(broker)
            .await
            .and_then(|image| broker.txn.shard(&image, id.as_str()))
        {
            Ok(shard) => shard,
            Err(e) => {
                states.push(out.with_error_code(e.code()));
                continue;
            }
        };
        let state = shard.lock().await;
        match state.ids.get(id.as_str()) {
            None => out = out.with_error_code(ErrorCode::TransactionalIdNotFound.code()),
            Some(txn) => {
                let mut topics: Vec<describe_transactions_response::TopicData> = Vec::new();
                for (topic, partition) in &txn.partitions {
                    match topics.last_mut() {
                        Some(t) if t.topic.0.as_str() == topic => t.partitions.push(*partition),
                        _ => topics.push(
                            describe_transactions_response::TopicData::default()
                                .with_topic(topic_name(topic))
                                .with_partitions(vec![*partition]),
                        ),
                    }
                }
                out = out
                    .with_transaction_state(StrBytes::from_static_str(txn.status.name()))
                    .with_transaction_timeout_ms(txn.timeout_ms)
                    .with_transaction_start_time_ms(txn.start_ms)
                    .with_producer_id(ProducerId(txn.producer_id))
                    .with_producer_epoch(txn.producer_epoch)
                    .with_topics(topics);
            }
        }
        states.push(out);
    }
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

/// ListTransactions (v0–1): the transactional ids this broker coordinates,
/// filtered by state names, producer ids and (v1) how long their transaction
/// has been open. Unknown state names are returned as such, as Kafka does.
pub async fn list_transactions(
    broker: &Arc<Broker>,
    req: ListTransactionsRequest,
    ctx: &RequestContext<'_>,
) -> ListTransactionsResponse {
    let version = ctx.api_version();
    const STATES: [TxnStatus; 8] = [
        TxnStatus::Empty,
        TxnStatus::Ongoing,
        TxnStatus::PrepareCommit,
        TxnStatus::PrepareAbort,
        TxnStatus::CompleteCommit,
        TxnStatus::CompleteAbort,
        TxnStatus::Dead,
        TxnStatus::PrepareEpochFence,
    ];
    let mut unknown = Vec::new();
    let mut wanted = HashSet::new();
    for name in &req.state_filters {
        match STATES.iter().find(|s| s.name() == name.as_str()) {
            Some(s) => {
                wanted.insert(s.id());
            }
            None => unknown.push(name.clone()),
        }
    }
    let producers: HashSet<i64> = req.producer_id_filters.iter().map(|p| p.0).collect();
    let now = broker.clock.now_ms();
    let min_duration = if version >= 1 {
        req.duration_filter
    } else {
        -1
    };
    // Every shard: the ids of the partitions this broker leads.
    let mut listed: Vec<list_transactions_response::TransactionState> = Vec::new();
    for shard in broker.txn.shards() {
        let state = shard.lock().await;
        listed.extend(
            state
                .ids
                .iter()
                .filter(|(_, t)| req.state_filters.is_empty() || wanted.contains(&t.status.id()))
                .filter(|(_, t)| producers.is_empty() || producers.contains(&t.producer_id))
                .filter(|(_, t)| {
                    min_duration < 0
                        || (t.status == TxnStatus::Ongoing
                            && now.saturating_sub(t.start_ms) > min_duration)
                })
                .map(|(id, t)| {
                    list_transactions_response::TransactionState::default()
                        .with_transactional_id(TransactionalId(StrBytes::from_string(id.clone())))
                        .with_producer_id(ProducerId(t.producer_id))
                        .with_transaction_state(StrBytes::from_static_str(t.status.name()))
                }),
        );
    }
    listed.sort_by(|a, b| a.transactional_id.as_str().cmp(b.transactional_id.as_str()));
    ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown)
        .with_transaction_states(listed)
}

/// DescribeProducers: the producer state of partitions this broker leads
/// (Kafka's view of idempotent and transactional producers per partition).
pub fn describe_producers(
    broker: &Broker,
    req: DescribeProducersRequest,
    _ctx: &RequestContext<'_>,
) -> DescribeProducersResponse {
    let image = broker.image();
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partition_indexes
                .iter()
                .map(|index| {
                    let response = describe_producers_response::PartitionResponse::default()
                        .with_partition_index(*index);
                    if image.partition(t.name.as_str(), *index).is_none() {
                        return response.with_error_code(ErrorCode::UnknownTopicOrPartition.code());
                    }
                    let partition = broker.replicas.get(t.name.as_str(), *index);
                    let Some(partition) = partition.filter(|p| p.is_leader()) else {
                        return response.with_error_code(ErrorCode::NotLeaderOrFollower.code());
                    };
                    let producers = partition
                        .log
                        .producer_states()
                        .into_iter()
                        .map(|p| {
                            describe_producers_response::ProducerState::default()
                                .with_producer_id(ProducerId(p.producer_id))
                                .with_producer_epoch(i32::from(p.producer_epoch))
                                .with_last_sequence(p.last_sequence)
                                .with_last_timestamp(p.last_timestamp)
                                .with_coordinator_epoch(p.coordinator_epoch)
                                .with_current_txn_start_offset(
                                    p.current_txn_first_offset.unwrap_or(-1),
                                )
                        })
                        .collect();
                    response.with_active_producers(producers)
                })
                .collect();
            describe_producers_response::TopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}
