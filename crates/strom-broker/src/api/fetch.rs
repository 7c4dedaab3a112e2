//! Fetch: stored batches, sent as they are, with long polling.
//!
//! Each partition is read from its fetch offset up to `partition_max_bytes`
//! and the high watermark (the last stable offset for read_committed); the
//! whole response stays within `max_bytes` (capped by the broker's
//! `fetch.max.bytes`), except that the first partition with data always gets
//! at least one whole batch (Fetch v3+). When fewer than `min_bytes` are
//! ready, the fetch waits up to `max_wait_ms` for appends to wake it.
//! read_committed fetches also get the aborted transactions that overlap the
//! batches they return, from the segments' aborted-transaction indexes.
//!
//! Fetch from follower (KIP-392): a consumer fetching with v11+ may be
//! served by any replica of the partition, a follower reading up to its own
//! high watermark (the leader's as of its last fetch) or last stable offset;
//! followers (replica fetches) and older consumers only by the leader
//! (Kafka's `FetchParams.fetchOnlyLeader`). With `replica.selector.class`
//! set to the rack-aware selector, the leader answers a v11+ consumer whose
//! `client.rack` only an in-sync follower shares with that follower's id in
//! `preferred_read_replica` and no records, at once; the consumer then
//! fetches from it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::kafka::fetch_response::{
    AbortedTransaction, EpochEndOffset, FetchableTopicResponse, PartitionData,
};
use strom_protocol::messages::kafka::{
    BrokerId, FetchRequest, FetchResponse, ProducerId, TopicName,
};
use strom_protocol::messages::{ApiKey, StrBytes, Uuid};
use strom_protocol::record_batch;
use strom_storage::ReadError;
use tokio::sync::Notify;

use strom_protocol::messages::RequestFrame;

use super::fetch_frame::{self, FileRecords, StoredRecords};
use super::list_offsets::{READ_COMMITTED, check_leader_epoch};
use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::config::replication::ReplicaSelector;
use crate::fetch_session::{FetchParams, PartitionKey, PartitionOutcome, SessionContext};
use crate::metrics::Purgatory;
use crate::partition::replica_selector::{self, ReplicaView};
use crate::replica::Partition;

/// Longest wait a fetch may ask for; clients use 500 ms (librdkafka) to a few
/// seconds, and a bound keeps a hostile value from parking a task forever.
const MAX_WAIT_MS_LIMIT: i32 = 5 * 60 * 1000;

/// A partition the request names but that cannot be resolved (unknown topic id).
struct Unresolved {
    topic_id: Uuid,
    partition: i32,
}

/// Answers a fetch: at once when the data is there (or on an error), or
/// as a second phase ([`Reply::Later`]) that long-polls for it.
pub async fn handle(
    broker: &Arc<Broker>,
    request: FetchRequest,
    ctx: &RequestContext<'_>,
) -> Reply {
    let version = ctx.api_version();
    let image = broker.image();
    let max_bytes = request
        .max_bytes
        .clamp(0, broker.config.settings.fetch_max_bytes);
    let read_committed = version >= 4 && request.isolation_level == READ_COMMITTED;
    let (replica_id, replica_epoch) = if version >= 15 {
        (
            request.replica_state.replica_id.0,
            request.replica_state.replica_epoch,
        )
    } else {
        (request.replica_id.0, -1)
    };
    let fetcher = Fetcher {
        replica_id,
        replica_epoch,
        // Kafka's `ClientMetadata`: v11+ carries the consumer's rack
        // (empty when it set no `client.rack`).
        client_rack: (version >= 11 && replica_id < 0).then(|| Arc::from(request.rack_id.as_str())),
    };

    // Resolve names (v < 13) or topic ids (v13+).
    let mut unresolved = Vec::new();
    let mut requested = Vec::new();
    for topic in &request.topics {
        let name: Option<Arc<str>> = if version >= 13 {
            image
                .topic_by_id(&topic.topic_id)
                .map(|t| Arc::from(t.name.as_str()))
        } else {
            Some(Arc::from(topic.topic.0.as_str()))
        };
        for p in &topic.partitions {
            match &name {
                Some(name) => {
                    let topic_id = image.topic(name).map_or(topic.topic_id, |t| t.id);
                    requested.push((
                        (Arc::clone(name), p.partition),
                        FetchParams {
                            topic_id,
                            fetch_offset: p.fetch_offset,
                            partition_max_bytes: p.partition_max_bytes,
                            current_leader_epoch: if version >= 9 {
                                p.current_leader_epoch
                            } else {
                                -1
                            },
                            last_fetched_epoch: if version >= 12 {
                                p.last_fetched_epoch
                            } else {
                                -1
                            },
                            log_start_offset: if version >= 5 { p.log_start_offset } else { -1 },
                        },
                    ));
                }
                None => unresolved.push(Unresolved {
                    topic_id: topic.topic_id,
                    partition: p.partition,
                }),
            }
        }
    }
    let forgotten: Vec<PartitionKey> = request
        .forgotten_topics_data
        .iter()
        .flat_map(|t| {
            let name: Option<Arc<str>> = if version >= 13 {
                image
                    .topic_by_id(&t.topic_id)
                    .map(|t| Arc::from(t.name.as_str()))
            } else {
                Some(Arc::from(t.topic.0.as_str()))
            };
            t.partitions
                .iter()
                .filter_map(move |p| name.as_ref().map(|n| (Arc::clone(n), *p)))
        })
        .collect();

    let begun = broker.fetch_sessions.lock().begin(
        request.session_id,
        request.session_epoch,
        requested,
        &forgotten,
    );
    let (context, to_fetch) = match begun {
        Ok(v) => v,
        Err(code) => {
            let response = FetchResponse::default()
                .with_error_code(code.code())
                .with_session_id(0);
            return super::respond(ctx.header(), &response);
        }
    };

    let deadline = Instant::now()
        + Duration::from_millis(
            u64::try_from(request.max_wait_ms.clamp(0, MAX_WAIT_MS_LIMIT)).unwrap_or(0),
        );
    let fetch = Pending {
        to_fetch: Arc::new(to_fetch),
        min_bytes: usize::try_from(request.min_bytes.max(0)).unwrap_or(0),
        max_bytes: usize::try_from(max_bytes).unwrap_or(0),
        deadline,
        read_committed,
        fetcher,
        context,
        unresolved,
        version,
    };
    // First phase: one read. Enough data (or an error, or no wait asked
    // for) answers now; otherwise the long poll is the second phase, which
    // runs while the connection goes on with the requests behind it.
    // A fetch that cannot wait (no min_bytes, no max_wait) registers no
    // waiter: nothing would ever wait on it.
    let waiter = fetch.may_wait().then(|| fetch.register_waiter(broker));
    let Some(reads) = fetch.read(broker).await else {
        return fetch.answer(broker, Vec::new(), ctx.header());
    };
    if fetch.satisfied(&reads) {
        return fetch.answer(broker, reads, ctx.header());
    }
    let Some(waiter) = waiter else {
        return fetch.answer(broker, reads, ctx.header());
    };
    let broker = Arc::clone(broker);
    let header = ctx.header();
    let (api_version, correlation_id) = (header.api_version, header.correlation_id);
    Reply::Later(Box::pin(async move {
        let reads = fetch.long_poll(&broker, waiter, reads).await;
        let (response, stored) = fetch.response(&broker, reads);
        reply(api_version, correlation_id, response, stored)
    }))
}

/// Who fetches, as Kafka's `FetchParams` tells them apart.
#[derive(Debug, Clone)]
struct Fetcher {
    /// A follower's broker id; negative for a consumer (-1) or a debugging
    /// tool (-2).
    replica_id: i32,
    /// A follower's broker epoch (Fetch v15+, -1 when not given).
    replica_epoch: i64,
    /// KIP-392: a consumer's `client.rack` (Fetch v11+, maybe empty);
    /// `None` for followers and for consumers before v11.
    client_rack: Option<Arc<str>>,
}

impl Fetcher {
    fn is_follower(&self) -> bool {
        self.replica_id >= 0
    }

    /// Kafka's `fetchOnlyLeader`: followers replicate from the leader, and
    /// a consumer older than Fetch v11 does not know that other replicas
    /// may serve it.
    fn only_from_leader(&self) -> bool {
        self.is_follower() || self.client_rack.is_none()
    }
}

/// A fetch past its session check: what to read, and how to answer.
struct Pending {
    to_fetch: Arc<Vec<(PartitionKey, FetchParams)>>,
    min_bytes: usize,
    max_bytes: usize,
    deadline: Instant,
    read_committed: bool,
    fetcher: Fetcher,
    context: SessionContext,
    unresolved: Vec<Unresolved>,
    version: i16,
}

impl Pending {
    /// A waiter registered on every partition read, before reading, so an
    /// append between a read and the wait still wakes it (Notify keeps the
    /// permit).
    fn register_waiter(&self, broker: &Broker) -> Arc<Notify> {
        let waiter = Arc::new(Notify::new());
        for ((topic, index), _) in self.to_fetch.iter() {
            if let Some(p) = broker.replicas.get(topic, *index) {
                p.add_waiter(&waiter, self.fetcher.is_follower());
            }
        }
        waiter
    }

    /// Whether the fetch may wait at all: it wants bytes and gives time.
    fn may_wait(&self) -> bool {
        self.min_bytes > 0 && Instant::now() < self.deadline
    }

    /// Reads every partition once (on a blocking thread).
    async fn read(&self, broker: &Arc<Broker>) -> Option<Vec<PartitionRead>> {
        let broker_for_read = Arc::clone(broker);
        let list = Arc::clone(&self.to_fetch);
        let (max, read_committed, fetcher) =
            (self.max_bytes, self.read_committed, self.fetcher.clone());
        super::blocking(move || read_all(&broker_for_read, &list, max, read_committed, &fetcher))
            .await
    }

    /// Whether `reads` answer the fetch: `min_bytes` reached, an error, a
    /// consumer sent to another replica (KIP-392: it should go there now,
    /// not wait here), or the wait is over.
    fn satisfied(&self, reads: &[PartitionRead]) -> bool {
        let bytes: usize = reads.iter().map(|r| r.records.len()).sum();
        let any_error = reads.iter().any(|r| r.error != ErrorCode::None);
        let redirected = reads.iter().any(|r| r.preferred_read_replica >= 0);
        // A diverging follower is told at once (it truncates, then fetches).
        let diverging = reads.iter().any(|r| r.diverging_epoch.is_some());
        bytes >= self.min_bytes
            || any_error
            || redirected
            || diverging
            || Instant::now() >= self.deadline
    }

    /// Waits for appends (or the deadline) and reads again until satisfied;
    /// at the deadline the last pass answers with whatever is there.
    async fn long_poll(
        &self,
        broker: &Arc<Broker>,
        mut waiter: Arc<Notify>,
        mut reads: Vec<PartitionRead>,
    ) -> Vec<PartitionRead> {
        loop {
            {
                let _parked = broker.metrics.enter_purgatory(Purgatory::Fetch);
                tokio::select! {
                    () = waiter.notified() => {}
                    () = tokio::time::sleep_until(self.deadline.into()) => {}
                    () = broker.shutdown.cancelled() => return reads,
                }
            }
            waiter = self.register_waiter(broker);
            let Some(next) = self.read(broker).await else {
                return Vec::new();
            };
            reads = next;
            if self.satisfied(&reads) {
                return reads;
            }
        }
    }

    /// The answer, now.
    fn answer(self, broker: &Broker, reads: Vec<PartitionRead>, header: &RequestFrame) -> Reply {
        let (response, stored) = self.response(broker, reads);
        reply(header.api_version, header.correlation_id, response, stored)
    }

    /// The response for `reads`, after the session takes in what they found,
    /// and the records left in their segment files, one entry for each
    /// partition of the response in its order.
    fn response(
        self,
        broker: &Broker,
        reads: Vec<PartitionRead>,
    ) -> (FetchResponse, Vec<Option<FileRecords>>) {
        let Self {
            to_fetch,
            read_committed,
            fetcher,
            context,
            unresolved,
            version,
            ..
        } = self;
        let outcomes: Vec<(PartitionKey, PartitionOutcome)> = to_fetch
            .iter()
            .zip(&reads)
            .map(|((key, _), r)| {
                (
                    key.clone(),
                    PartitionOutcome {
                        error: r.error != ErrorCode::None,
                        has_records: !r.records.is_empty()
                            || r.diverging_epoch.is_some()
                            || r.preferred_read_replica >= 0,
                        high_watermark: r.high_watermark,
                        last_stable_offset: r.last_stable_offset,
                        log_start_offset: r.log_start_offset,
                    },
                )
            })
            .collect();
        let include = broker.fetch_sessions.lock().finish(&context, &outcomes);

        let mut responses: Vec<FetchableTopicResponse> = Vec::new();
        let mut stored = Vec::new();
        for ((((topic, index), params), read), include) in to_fetch.iter().zip(reads).zip(include) {
            if !include {
                continue;
            }
            if let Records::Read(bytes) = &read.records
                && !fetcher.is_follower()
                && !bytes.is_empty()
            {
                let records: u64 = record_batch::batches(bytes)
                    .map_while(Result::ok)
                    .filter(|b| !b.header.attributes.is_control())
                    .map(|b| u64::try_from(b.header.record_count).unwrap_or(0))
                    .sum();
                broker.metrics.record_out(
                    topic,
                    u64::try_from(bytes.len()).unwrap_or(u64::MAX),
                    records,
                );
            }
            let records = match read.records {
                Records::Stored(Some(file)) => {
                    stored.push(Some(file));
                    None
                }
                Records::Stored(None) => {
                    stored.push(None);
                    Some(Bytes::new())
                }
                Records::Read(bytes) => {
                    stored.push(None);
                    Some(bytes)
                }
            };
            let data = PartitionData::default()
                .with_partition_index(*index)
                .with_error_code(read.error.code())
                .with_high_watermark(read.high_watermark)
                .with_last_stable_offset(read.last_stable_offset)
                .with_log_start_offset(read.log_start_offset)
                .with_aborted_transactions(read_committed.then_some(read.aborted_transactions))
                .with_preferred_read_replica(BrokerId(read.preferred_read_replica))
                .with_records(records);
            let data = match read.diverging_epoch {
                Some((epoch, end_offset)) if version >= 12 => data.with_diverging_epoch(
                    EpochEndOffset::default()
                        .with_epoch(epoch)
                        .with_end_offset(end_offset),
                ),
                _ => data,
            };
            match responses.last_mut() {
                Some(last) if last.topic.0.as_str() == topic.as_ref() => last.partitions.push(data),
                _ => responses.push(
                    FetchableTopicResponse::default()
                        .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                        .with_topic_id(params.topic_id)
                        .with_partitions(vec![data]),
                ),
            }
        }
        for u in unresolved {
            stored.push(None);
            responses.push(
                FetchableTopicResponse::default()
                    .with_topic_id(u.topic_id)
                    .with_partitions(vec![
                        PartitionData::default()
                            .with_partition_index(u.partition)
                            .with_error_code(ErrorCode::UnknownTopicId.code())
                            .with_high_watermark(-1)
                            .with_last_stable_offset(-1)
                            .with_log_start_offset(-1)
                            .with_records(Some(Bytes::new())),
                    ]),
            );
        }
        let session_id = match context {
            SessionContext::Sessionless => 0,
            SessionContext::Full { id } | SessionContext::Incremental { id } => id,
        };
        // Fields a version does not carry stay at their defaults.
        for topic in &mut responses {
            if version >= 13 {
                topic.topic = TopicName::default();
            } else {
                topic.topic_id = Uuid::nil();
            }
            if version < 5 {
                for p in &mut topic.partitions {
                    p.log_start_offset = -1;
                }
            }
        }
        let response = FetchResponse::default()
            .with_session_id(if version >= 7 { session_id } else { 0 })
            .with_responses(responses);
        (response, stored)
    }
}

/// The answer's frame: encoded whole, or with the records left in their
/// segment files sent from there (followers' fetches).
fn reply(
    api_version: i16,
    correlation_id: i32,
    response: FetchResponse,
    stored: Vec<Option<FileRecords>>,
) -> Reply {
    if stored.iter().all(Option::is_none) {
        return super::encode(ApiKey::Fetch, api_version, correlation_id, &response);
    }
    match fetch_frame::encode(api_version, correlation_id, response, stored) {
        Ok(frame) => Reply::Stored(frame),
        Err(e) => {
            tracing::error!(version = api_version, error = %e, "cannot encode a fetch response");
            Reply::Close(format!("response encoding failed: {e}"))
        }
    }
}

/// A partition's records in an answer: read into memory (consumers': their
/// records are counted, and read_committed ones scanned for aborted
/// transactions), or left in the segment file and sent from there
/// (followers').
enum Records {
    Read(Bytes),
    Stored(Option<FileRecords>),
}

impl Records {
    fn len(&self) -> usize {
        match self {
            Self::Read(bytes) => bytes.len(),
            Self::Stored(file) => file.as_ref().map_or(0, StoredRecords::size),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One partition's read.
struct PartitionRead {
    error: ErrorCode,
    high_watermark: i64,
    last_stable_offset: i64,
    log_start_offset: i64,
    records: Records,
    /// read_committed: the aborted transactions overlapping `records`.
    aborted_transactions: Vec<AbortedTransaction>,
    /// A follower's log diverges from this leader's after its last fetched
    /// epoch: the largest epoch both know and where it ends here (KIP-320's
    /// DivergingEpoch; no records then).
    diverging_epoch: Option<(i32, i64)>,
    /// KIP-392: the replica the consumer should fetch from instead of this
    /// leader (no records then); -1 for none.
    preferred_read_replica: i32,
}

impl PartitionRead {
    /// No records, no error: the partition's offsets as they are now.
    fn offsets(partition: &Partition) -> Self {
        Self {
            error: ErrorCode::None,
            high_watermark: partition.high_watermark(),
            last_stable_offset: partition.last_stable_offset(),
            log_start_offset: partition.log.log_start_offset(),
            records: Records::Read(Bytes::new()),
            aborted_transactions: Vec::new(),
            diverging_epoch: None,
            preferred_read_replica: -1,
        }
    }

    fn error(error: ErrorCode) -> Self {
        Self {
            error,
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
            records: Records::Read(Bytes::new()),
            aborted_transactions: Vec::new(),
            diverging_epoch: None,
            preferred_read_replica: -1,
        }
    }
}

fn read_all(
    broker: &Broker,
    list: &[(PartitionKey, FetchParams)],
    max_bytes: usize,
    read_committed: bool,
    fetcher: &Fetcher,
) -> Vec<PartitionRead> {
    let (replica_id, replica_epoch) = (fetcher.replica_id, fetcher.replica_epoch);
    let image = broker.image();
    // KIP-841/903: a follower joins the ISR only while registered,
    // unfenced, and fetching with its current broker epoch.
    let eligible = image
        .brokers
        .get(&replica_id)
        .is_some_and(|b| !b.fenced && (replica_epoch < 0 || replica_epoch == b.epoch));
    let mut remaining = max_bytes;
    // Fetch v3+: the first partition with data gets at least one batch.
    let mut min_one = true;
    let mut seen = HashSet::new();
    list.iter()
        .map(|((topic, index), params)| {
            if !seen.insert((Arc::clone(topic), *index)) {
                return PartitionRead::error(ErrorCode::InvalidRequest);
            }
            let Some(meta) = image.partition(topic, *index) else {
                return PartitionRead::error(ErrorCode::UnknownTopicOrPartition);
            };
            if replica_id >= 0 && !meta.replicas.contains(&replica_id) {
                return PartitionRead::error(ErrorCode::NotLeaderOrFollower);
            }
            let Some(partition) = broker.replicas.get(topic, *index) else {
                return PartitionRead::error(super::missing_partition(broker, topic, *index).0);
            };
            // A follower answers v11+ consumers too (KIP-392), from its own
            // log; the epoch check below then uses the epoch it knows.
            if fetcher.only_from_leader() && !partition.is_leader() {
                return PartitionRead::error(ErrorCode::NotLeaderOrFollower);
            }
            if let Some(code) =
                check_leader_epoch(params.current_leader_epoch, partition.leader_epoch())
            {
                return PartitionRead::error(code);
            }
            if let Some(rack) = &fetcher.client_rack
                && let Some(preferred) =
                    preferred_read_replica(broker, &image, &partition, params.fetch_offset, rack)
            {
                // Kafka's `readFromLog`: no read, the offsets as they are.
                return PartitionRead {
                    preferred_read_replica: preferred,
                    ..PartitionRead::offsets(&partition)
                };
            }
            if let Some(diverging) = diverging_epoch(&partition, params) {
                return diverging;
            }
            if replica_id >= 0 {
                if params.log_start_offset >= 0 {
                    partition.update_follower_log_start_offset(replica_id, params.log_start_offset);
                }
                // A follower's fetch offset is its log end offset (Kafka's
                // `updateFollowerFetchState`): the high watermark moves by it
                // before the read, so the answer carries the new one. An
                // offset past the leader's log end moves nothing (the read
                // answers OFFSET_OUT_OF_RANGE).
                if params.fetch_offset <= partition.log.log_end_offset() {
                    match partition.update_follower(
                        replica_id,
                        params.fetch_offset,
                        broker.clock.now_ms(),
                        eligible,
                    ) {
                        Ok(true) => broker.isr.submit(&partition),
                        Ok(false) => {}
                        Err(e) => {
                            tracing::debug!(topic = %partition.topic, partition = partition.index, replica_id, error = %e, "a replica's fetch position not taken");
                            return PartitionRead::error(ErrorCode::NotLeaderOrFollower);
                        }
                    }
                }
            }
            let limit = usize::try_from(params.partition_max_bytes.max(0))
                .unwrap_or(0)
                .min(remaining);
            let read = read_partition(
                &partition,
                params.fetch_offset,
                limit,
                min_one,
                read_committed,
                replica_id,
            );
            if !read.records.is_empty() {
                min_one = false;
                remaining = remaining.saturating_sub(read.records.len());
            }
            read
        })
        .collect()
}

/// KIP-392: the follower a consumer in `client_rack` should read from
/// instead of this leader (Kafka's `findPreferredReadReplica` with the
/// `RackAwareReplicaSelector`), or `None` for this leader: no selector
/// configured, or this broker does not lead. Only in-sync followers that
/// hold `fetch_offset` and are live (registered, unfenced) are candidates.
fn preferred_read_replica(
    broker: &Broker,
    image: &strom_controller::MetadataImage,
    partition: &Partition,
    fetch_offset: i64,
    client_rack: &str,
) -> Option<i32> {
    if broker.config.settings.replication.replica_selector != ReplicaSelector::RackAware {
        return None;
    }
    let (leader_log_end_offset, candidates) =
        partition.read_replica_candidates(fetch_offset, broker.clock.now_ms())?;
    let live_rack = |id: i32| {
        image
            .brokers
            .get(&id)
            .filter(|b| !b.fenced)
            .map(|b| b.rack.as_deref())
    };
    let leader = ReplicaView {
        broker_id: broker.node_id,
        rack: live_rack(broker.node_id).flatten(),
        log_end_offset: leader_log_end_offset,
        time_since_caught_up_ms: 0,
    };
    let followers: Vec<ReplicaView<'_>> = candidates
        .iter()
        .filter_map(|c| {
            Some(ReplicaView {
                broker_id: c.broker_id,
                rack: live_rack(c.broker_id)?,
                log_end_offset: c.log_end_offset,
                time_since_caught_up_ms: c.time_since_caught_up_ms,
            })
        })
        .collect();
    let preferred = replica_selector::rack_aware(client_rack, &leader, &followers);
    if let Some(id) = preferred {
        tracing::debug!(topic = %partition.topic, partition = partition.index, client_rack, preferred = id, "sending a consumer to a follower in its rack");
    }
    preferred
}

/// KIP-320: a fetcher whose last fetched epoch this leader ended earlier
/// (or never had) than the fetch offset claims is told where the epochs
/// diverge, with no records: the largest epoch at or below its own and that
/// epoch's end offset here (Kafka's `Partition.fetchRecords` →
/// `lastOffsetForLeaderEpoch`).
fn diverging_epoch(partition: &Partition, params: &FetchParams) -> Option<PartitionRead> {
    if params.last_fetched_epoch < 0 {
        return None;
    }
    let Some((epoch, end_offset)) = partition
        .log
        .end_offset_for_epoch(params.last_fetched_epoch)
    else {
        // No end known for that epoch (newer than any here, or no epochs):
        // Kafka answers OFFSET_OUT_OF_RANGE, and the follower asks for the
        // leader's offsets and resets (a (-1, -1) DivergingEpoch would read
        // as none at all).
        return Some(PartitionRead {
            error: ErrorCode::OffsetOutOfRange,
            ..PartitionRead::offsets(partition)
        });
    };
    if epoch == params.last_fetched_epoch && end_offset >= params.fetch_offset {
        return None;
    }
    Some(PartitionRead {
        diverging_epoch: Some((epoch, end_offset)),
        ..PartitionRead::offsets(partition)
    })
}

fn read_partition(
    partition: &Partition,
    fetch_offset: i64,
    limit: usize,
    min_one: bool,
    read_committed: bool,
    replica_id: i32,
) -> PartitionRead {
    let high_watermark = partition.high_watermark();
    let last_stable_offset = partition.last_stable_offset();
    let bound = if replica_id >= 0 {
        None // followers read to the log end
    } else if read_committed {
        Some(last_stable_offset)
    } else {
        Some(high_watermark)
    };
    let mut read = PartitionRead {
        error: ErrorCode::None,
        high_watermark,
        last_stable_offset,
        log_start_offset: partition.log.log_start_offset(),
        records: Records::Read(Bytes::new()),
        aborted_transactions: Vec::new(),
        diverging_epoch: None,
        preferred_read_replica: -1,
    };
    if limit == 0 && !min_one {
        return read;
    }
    match partition.log.read(fetch_offset, limit, bound, min_one) {
        Ok(result) if replica_id >= 0 => {
            read.log_start_offset = result.log_start_offset;
            match FileRecords::open(result.records) {
                Ok(file) => read.records = Records::Stored(file),
                Err(e) => {
                    tracing::warn!(topic = %partition.topic, partition = partition.index, error = %e, "opening stored batches failed");
                    read.error = ErrorCode::KafkaStorageError;
                }
            }
        }
        Ok(result) => {
            read.log_start_offset = result.log_start_offset;
            match result.records.read() {
                Ok(bytes) => {
                    if read_committed && replica_id < 0 {
                        match aborted_transactions(partition, fetch_offset, &bytes) {
                            Ok(aborted) => read.aborted_transactions = aborted,
                            Err(e) => {
                                tracing::warn!(topic = %partition.topic, partition = partition.index, error = %e, "reading the aborted-transaction index failed");
                                read.error = ErrorCode::KafkaStorageError;
                                return read;
                            }
                        }
                    }
                    read.records = Records::Read(bytes);
                }
                Err(e) => {
                    tracing::warn!(topic = %partition.topic, partition = partition.index, error = %e, "reading stored batches failed");
                    read.error = ErrorCode::KafkaStorageError;
                }
            }
        }
        Err(ReadError::OffsetOutOfRange { .. }) => read.error = ErrorCode::OffsetOutOfRange,
        Err(ReadError::Offline) => read.error = ErrorCode::KafkaStorageError,
        Err(e) => {
            tracing::warn!(topic = %partition.topic, partition = partition.index, error = %e, "fetch read failed");
            read.error = ErrorCode::KafkaStorageError;
        }
    }
    read
}

/// The aborted transactions a read_committed consumer needs to drop the
/// aborted records of `records`, read from `fetch_offset` (Kafka's
/// `addAbortedTransactions`): those overlapping `[fetch_offset, the offset
/// after the last batch returned)`.
fn aborted_transactions(
    partition: &Partition,
    fetch_offset: i64,
    records: &[u8],
) -> Result<Vec<AbortedTransaction>, ReadError> {
    let Some(upper_bound) = record_batch::batches(records)
        .filter_map(Result::ok)
        .last()
        .map(|b| b.header.next_offset())
    else {
        return Ok(Vec::new());
    };
    Ok(partition
        .log
        .aborted_transactions(fetch_offset, upper_bound)?
        .into_iter()
        .map(|t| {
            AbortedTransaction::default()
                .with_producer_id(ProducerId(t.producer_id))
                .with_first_offset(t.first_offset)
        })
        .collect())
}
