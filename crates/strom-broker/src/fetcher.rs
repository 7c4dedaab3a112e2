//! Replica fetchers (Kafka's `ReplicaFetcherManager` and
//! `ReplicaFetcherThread`): a follower copies its partitions' logs from
//! their leaders.
//!
//! One fetcher per leader broker fetches every partition this broker follows
//! there, over one connection, with Fetch v12+ as Kafka's followers do:
//! `ReplicaState` (this broker's id and epoch), and per partition the current
//! leader epoch, the fetch offset (this log's end) and the last fetched
//! epoch. Each answer is applied on a blocking thread:
//!
//! - records are appended as a follower (offsets and epochs as the leader
//!   wrote them), then the high watermark becomes the leader's, bounded by
//!   this log's end, and the log start follows the leader's;
//! - a `DivergingEpoch` truncates the log to where it diverges (KIP-320,
//!   Kafka's `truncateOnFetchResponse`); the next fetch names the new last
//!   epoch, and repeats until the logs agree;
//! - OFFSET_OUT_OF_RANGE asks the leader for its log end and start
//!   (ListOffsets as a replica) and truncates to the end, or restarts the log
//!   at the start (Kafka's `fetchOffsetAndTruncate`);
//! - a partition whose leader refuses it (a leadership change the metadata
//!   has not brought here yet, a storage error) is set aside for
//!   `replica.fetch.backoff.ms`; the others go on.
//!
//! [`FetcherManager::sync`] runs after every metadata image the broker
//! applies: it moves partitions between fetchers as their leaders change and
//! stops fetchers with nothing left to fetch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use strom_controller::{Controller, MetadataImage};
use strom_net::{ConnectOptions, Connection, TcpTransport};
use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::kafka::fetch_request::{FetchPartition, FetchTopic, ReplicaState};
use strom_protocol::messages::kafka::fetch_response::PartitionData;
use strom_protocol::messages::kafka::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsTopic,
};
use strom_protocol::messages::kafka::{
    BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, TopicName,
};
use strom_protocol::messages::{StrBytes, Uuid};
use strom_storage::LogManager;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::replication::ReplicationSettings;
use crate::partition::{Partition, Role};
use crate::replica::ReplicaManager;

/// The oldest Fetch a follower sends: v12 carries the last fetched epoch.
const MIN_FETCH_VERSION: i16 = 12;
/// The newest: v15+ carries `ReplicaState`, v13+ topic ids.
const MAX_FETCH_VERSION: i16 = 17;
/// ListOffsets as a replica (v1+ has single offsets; v4+ leader epochs).
const MAX_LIST_OFFSETS_VERSION: i16 = 7;
/// ListOffsets' special timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

/// A partition by topic id and index, as fetch responses name it.
type Key = (Uuid, i32);

/// What the fetchers use of the broker.
#[derive(Debug)]
pub struct Node {
    pub node_id: i32,
    pub replicas: Arc<ReplicaManager>,
    pub logs: Arc<LogManager>,
    /// The metadata image (brokers' addresses and epochs).
    pub controller: Arc<Controller>,
    pub settings: ReplicationSettings,
    /// Cancelled when the broker shuts down.
    pub shutdown: CancellationToken,
    /// The broker's tasks (the fetchers are among them).
    pub tasks: TaskTracker,
}

impl Node {
    fn image(&self) -> Arc<MetadataImage> {
        self.controller.image()
    }
}

/// The fetchers, one per leader this broker follows.
#[derive(Debug)]
pub struct FetcherManager {
    node: Arc<Node>,
    fetchers: Mutex<HashMap<i32, FetcherHandle>>,
}

#[derive(Debug)]
struct FetcherHandle {
    partitions: watch::Sender<Vec<Arc<Partition>>>,
    stop: CancellationToken,
}

impl FetcherManager {
    pub fn new(node: Node) -> Self {
        Self {
            node: Arc::new(node),
            fetchers: Mutex::new(HashMap::new()),
        }
    }

    /// Brings the fetchers in line with the partitions' roles: every
    /// partition this broker follows is fetched from its leader, and a
    /// fetcher without partitions stops.
    pub fn sync(&self) {
        let broker = &self.node;
        let mut by_leader: HashMap<i32, Vec<Arc<Partition>>> = HashMap::new();
        for partition in broker.replicas.partitions() {
            if let Role::Follower { leader, .. } = partition.role()
                && leader >= 0
                && leader != broker.node_id
            {
                by_leader.entry(leader).or_default().push(partition);
            }
        }
        let mut fetchers = self.fetchers.lock();
        fetchers.retain(|leader, handle| {
            let keep = by_leader.contains_key(leader) && !handle.stop.is_cancelled();
            if !keep {
                handle.stop.cancel();
            }
            keep
        });
        for (leader, partitions) in by_leader {
            match fetchers.get(&leader) {
                Some(handle) => {
                    handle.partitions.send_if_modified(|current| {
                        let same = current.len() == partitions.len()
                            && current
                                .iter()
                                .zip(&partitions)
                                .all(|(a, b)| Arc::ptr_eq(a, b));
                        if !same {
                            *current = partitions;
                        }
                        !same
                    });
                }
                None => {
                    let (tx, rx) = watch::channel(partitions);
                    let stop = broker.shutdown.child_token();
                    broker
                        .tasks
                        .spawn(run(Arc::clone(broker), leader, rx, stop.clone()));
                    fetchers.insert(
                        leader,
                        FetcherHandle {
                            partitions: tx,
                            stop,
                        },
                    );
                }
            }
        }
    }

    /// The leaders fetched from now (for tests and metrics).
    pub fn leaders(&self) -> Vec<i32> {
        let mut leaders: Vec<i32> = self.fetchers.lock().keys().copied().collect();
        leaders.sort_unstable();
        leaders
    }
}

/// One partition of a fetch: what was asked, to apply the answer to.
struct Asked {
    partition: Arc<Partition>,
    fetch_offset: i64,
    leader_epoch: i32,
}

/// Fetches from `leader` until `stop`.
async fn run(
    broker: Arc<Node>,
    leader: i32,
    mut partitions: watch::Receiver<Vec<Arc<Partition>>>,
    stop: CancellationToken,
) {
    let settings = broker.settings.clone();
    let backoff = Duration::from_millis(settings.replica_fetch_backoff_ms);
    let mut conn: Option<Arc<Connection>> = None;
    // Partitions set aside after an error, until the instant given.
    let mut delayed: HashMap<Key, Instant> = HashMap::new();
    tracing::info!(leader, "replica fetcher started");
    loop {
        if stop.is_cancelled() {
            break;
        }
        let now = Instant::now();
        delayed.retain(|_, until| *until > now);
        let current: Vec<Arc<Partition>> = partitions
            .borrow_and_update()
            .iter()
            .filter(|p| follows(p, leader))
            .filter(|p| !delayed.contains_key(&(p.topic_id, p.index)))
            .cloned()
            .collect();
        if current.is_empty() {
            let next = delayed.values().min().copied();
            tokio::select! {
                () = stop.cancelled() => break,
                _ = partitions.changed() => {}
                () = sleep_until(next) => {}
            }
            continue;
        }
        let connection = match &conn {
            Some(c) if !c.is_closed() => Arc::clone(c),
            _ => match connect(&broker, leader, &settings).await {
                Ok(c) => {
                    let c = Arc::new(c);
                    conn = Some(Arc::clone(&c));
                    c
                }
                Err(e) => {
                    tracing::warn!(leader, error = %e, "replica fetcher cannot reach the leader; retrying");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    continue;
                }
            },
        };
        let Ok(version) = connection.version::<FetchRequest>(MAX_FETCH_VERSION) else {
            tracing::error!(
                leader,
                "the leader does not speak Fetch v{MIN_FETCH_VERSION}+; cannot replicate from it"
            );
            conn = None;
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            continue;
        };
        let (request, asked) = fetch_request(&broker, &current, version, &settings);
        let answer = tokio::select! {
            () = stop.cancelled() => break,
            answer = connection.send_at::<FetchRequest>(version, &request) => answer,
        };
        let response = match answer {
            Ok(response) => response,
            Err(e) => {
                tracing::info!(leader, error = %e, "replica fetch failed; reconnecting");
                conn = None;
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                continue;
            }
        };
        if response.error_code != 0 {
            tracing::warn!(leader, error = response.error_code, "replica fetch refused");
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            continue;
        }
        let for_apply = Arc::clone(&broker);
        let applied = tokio::task::spawn_blocking(move || {
            apply_response(&for_apply, leader, version, response, asked)
        })
        .await;
        let outcomes = match applied {
            Ok(outcomes) => outcomes,
            Err(e) => {
                tracing::error!(leader, error = %e, "applying a replica fetch failed");
                Vec::new()
            }
        };
        for (key, outcome) in outcomes {
            match outcome {
                Outcome::Delay => {
                    delayed.insert(key, Instant::now() + backoff);
                }
                Outcome::OutOfRange(partition) => {
                    if let Err(e) =
                        handle_out_of_range(&broker, &connection, leader, &partition).await
                    {
                        tracing::warn!(topic = %partition.topic, partition = partition.index, leader, error = %e, "resetting an out-of-range follower failed");
                        delayed.insert(key, Instant::now() + backoff);
                    }
                }
            }
        }
    }
    tracing::info!(leader, "replica fetcher stopped");
}

/// Sleeps until `until`, or for a long while when there is nothing to wait
/// for (a change of partitions ends the wait first).
async fn sleep_until(until: Option<Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until.into()).await,
        None => std::future::pending().await,
    }
}

/// Whether this broker follows `leader` for `partition` now.
fn follows(partition: &Partition, leader: i32) -> bool {
    matches!(partition.role(), Role::Follower { leader: l, .. } if l == leader)
}

async fn connect(
    broker: &Node,
    leader: i32,
    settings: &crate::config::replication::ReplicationSettings,
) -> Result<Connection, String> {
    let image = broker.image();
    let registration = image
        .brokers
        .get(&leader)
        .ok_or_else(|| format!("broker {leader} is not registered"))?;
    let addr = format!("{}:{}", registration.host, registration.port);
    let wait =
        Duration::from_millis(u64::try_from(settings.replica_fetch_wait_max_ms).unwrap_or(0));
    let options = ConnectOptions {
        client_id: format!("broker-{}-fetcher-0", broker.node_id),
        software_name: "strom-replica-fetcher".to_owned(),
        software_version: env!("CARGO_PKG_VERSION").to_owned(),
        connect_timeout: Duration::from_millis(settings.replica_socket_timeout_ms),
        // A fetch waits at the leader up to its max wait before answering.
        request_timeout: wait + Duration::from_millis(settings.replica_socket_timeout_ms),
    };
    Connection::connect(&TcpTransport, &addr, &options)
        .await
        .map_err(|e| e.to_string())
}

/// The Fetch for `partitions`, and what was asked of each.
fn fetch_request(
    broker: &Node,
    partitions: &[Arc<Partition>],
    version: i16,
    settings: &crate::config::replication::ReplicationSettings,
) -> (FetchRequest, HashMap<Key, Asked>) {
    let image = broker.image();
    let broker_epoch = image.brokers.get(&broker.node_id).map_or(-1, |b| b.epoch);
    let mut asked = HashMap::new();
    let mut topics: Vec<FetchTopic> = Vec::new();
    for partition in partitions {
        let Role::Follower { leader_epoch, .. } = partition.role() else {
            continue;
        };
        let fetch_offset = partition.log.log_end_offset();
        let last_fetched_epoch =
            if settings.planted_bug == Some(crate::config::replication::PlantedBug::NoTruncation) {
                -1
            } else {
                partition.log.latest_leader_epoch().unwrap_or(-1)
            };
        let fetch = FetchPartition::default()
            .with_partition(partition.index)
            .with_current_leader_epoch(leader_epoch)
            .with_fetch_offset(fetch_offset)
            .with_last_fetched_epoch(last_fetched_epoch)
            .with_log_start_offset(partition.log.log_start_offset())
            .with_partition_max_bytes(settings.replica_fetch_max_bytes);
        match topics.iter_mut().find(|t| t.topic_id == partition.topic_id) {
            Some(topic) => topic.partitions.push(fetch),
            None => topics.push(
                FetchTopic::default()
                    .with_topic(if version >= 13 {
                        TopicName::default()
                    } else {
                        TopicName(StrBytes::from_string(partition.topic.to_string()))
                    })
                    .with_topic_id(if version >= 13 {
                        partition.topic_id
                    } else {
                        Uuid::nil()
                    })
                    .with_partitions(vec![fetch]),
            ),
        }
        asked.insert(
            (partition.topic_id, partition.index),
            Asked {
                partition: Arc::clone(partition),
                fetch_offset,
                leader_epoch,
            },
        );
    }
    let mut request = FetchRequest::default()
        .with_max_wait_ms(settings.replica_fetch_wait_max_ms)
        .with_min_bytes(settings.replica_fetch_min_bytes)
        .with_max_bytes(settings.replica_fetch_response_max_bytes)
        .with_isolation_level(0)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(topics);
    if version >= 15 {
        request = request.with_replica_state(
            ReplicaState::default()
                .with_replica_id(BrokerId(broker.node_id))
                .with_replica_epoch(broker_epoch),
        );
    } else {
        request = request.with_replica_id(BrokerId(broker.node_id));
    }
    (request, asked)
}

/// What a partition's answer leaves to the fetcher.
enum Outcome {
    /// Set it aside for the backoff.
    Delay,
    /// Ask the leader for its offsets and reset the log.
    OutOfRange(Arc<Partition>),
}

/// Applies a fetch response (on a blocking thread): appends, high
/// watermarks, truncations. Returns the partitions the fetcher must act on.
fn apply_response(
    broker: &Node,
    leader: i32,
    version: i16,
    response: FetchResponse,
    mut asked: HashMap<Key, Asked>,
) -> Vec<(Key, Outcome)> {
    let mut outcomes = Vec::new();
    let image = broker.image();
    for topic in response.responses {
        let topic_id = if version >= 13 {
            topic.topic_id
        } else {
            match image.topic(topic.topic.0.as_str()) {
                Some(t) => t.id,
                None => continue,
            }
        };
        for data in topic.partitions {
            let key = (topic_id, data.partition_index);
            // An answer for a partition not asked (or twice) is ignored.
            let Some(asked) = asked.remove(&key) else {
                tracing::debug!(
                    leader,
                    partition = data.partition_index,
                    "a replica fetch answered a partition it was not asked"
                );
                continue;
            };
            if let Some(outcome) = apply_partition(broker, leader, &asked, data) {
                outcomes.push((key, outcome));
            }
        }
    }
    outcomes
}

fn apply_partition(
    broker: &Node,
    leader: i32,
    asked: &Asked,
    data: PartitionData,
) -> Option<Outcome> {
    let partition = &asked.partition;
    let leadership = (leader, asked.leader_epoch);
    match ErrorCode::from_code(data.error_code).unwrap_or(ErrorCode::UnknownServerError) {
        ErrorCode::None => {}
        ErrorCode::OffsetOutOfRange => {
            return Some(Outcome::OutOfRange(Arc::clone(partition)));
        }
        code @ (ErrorCode::NotLeaderOrFollower
        | ErrorCode::FencedLeaderEpoch
        | ErrorCode::UnknownLeaderEpoch
        | ErrorCode::UnknownTopicOrPartition
        | ErrorCode::UnknownTopicId) => {
            // The leader moved, or knows of this broker's role later than
            // this broker: the metadata settles it.
            tracing::debug!(topic = %partition.topic, partition = partition.index, leader, error = %code, "replica fetch refused for a partition");
            return Some(Outcome::Delay);
        }
        code => {
            tracing::warn!(topic = %partition.topic, partition = partition.index, leader, error = %code, "replica fetch failed for a partition");
            return Some(Outcome::Delay);
        }
    }
    let diverging = &data.diverging_epoch;
    if diverging.epoch >= 0 || diverging.end_offset >= 0 {
        truncate_on_divergence(
            broker,
            partition,
            leadership,
            diverging.epoch,
            diverging.end_offset,
        );
        return None;
    }
    let records = data.records.unwrap_or_default();
    if !records.is_empty() {
        if partition.log.log_end_offset() != asked.fetch_offset {
            // The log moved since the fetch was sent (a truncation): the
            // next fetch asks again from its end.
            return None;
        }
        match partition.append_as_follower(&records, leader, asked.leader_epoch) {
            Ok(_) => {}
            Err(strom_storage::AppendError::NotLeader) => return None,
            Err(e) => {
                tracing::error!(topic = %partition.topic, partition = partition.index, leader, error = %e, "appending replicated records failed");
                return Some(Outcome::Delay);
            }
        }
    }
    partition.set_follower_high_watermark(data.high_watermark, leadership);
    let leader_start = data.log_start_offset;
    if leader_start > partition.log.log_start_offset()
        && leader_start <= partition.log.log_end_offset()
        && let Err(e) = partition.log.advance_log_start_offset(leader_start)
    {
        tracing::warn!(topic = %partition.topic, partition = partition.index, error = %e, "following the leader's log start offset failed");
    }
    None
}

/// Kafka's `getOffsetTruncationState` for a `DivergingEpoch` of
/// `(leader_epoch, leader_end)`: the largest epoch the leader has at or below
/// the follower's last, and where that epoch ends at the leader.
fn truncate_on_divergence(
    broker: &Node,
    partition: &Partition,
    leadership: (i32, i32),
    leader_epoch: i32,
    leader_end: i64,
) {
    let log_end = partition.log.log_end_offset();
    let target = match partition.log.end_offset_for_epoch(leader_epoch) {
        // The follower knows no epoch at or below the leader's: the
        // leader's end offset is safe.
        None => leader_end.min(log_end),
        // The follower does not have the leader's epoch: cut to the end of
        // its own largest epoch below it, and the next fetch asks again.
        Some((epoch, end)) if epoch != leader_epoch => end.min(log_end),
        Some((_, end)) => end.min(leader_end).min(log_end),
    };
    if target < 0 {
        tracing::warn!(topic = %partition.topic, partition = partition.index, leader = leadership.0, leader_epoch, leader_end, "a DivergingEpoch with a negative end offset; ignored");
        return;
    }
    tracing::info!(topic = %partition.topic, partition = partition.index, leader = leadership.0, leader_epoch, leader_end, from = log_end, to = target, "follower log diverges from the leader's; truncating");
    if let Err(e) = partition.truncate_as_follower(&broker.logs, target, false, leadership) {
        tracing::error!(topic = %partition.topic, partition = partition.index, error = %e, "truncating a diverging follower failed");
    }
}

/// Kafka's `fetchOffsetAndTruncate`: the leader's log ends below this
/// log's end (truncate to it), or starts above it (restart this log at the
/// leader's start).
async fn handle_out_of_range(
    broker: &Arc<Node>,
    conn: &Connection,
    leader: i32,
    partition: &Arc<Partition>,
) -> Result<(), String> {
    let Role::Follower { leader_epoch, .. } = partition.role() else {
        return Ok(());
    };
    let leader_end = list_offset(conn, broker.node_id, partition, leader_epoch, LATEST).await?;
    let log_end = partition.log.log_end_offset();
    let (target, start_at) = if leader_end < log_end {
        (leader_end, false)
    } else {
        let leader_start =
            list_offset(conn, broker.node_id, partition, leader_epoch, EARLIEST).await?;
        if leader_start <= log_end {
            // The offset is the leader's, so the leader knew no end for this
            // log's last epoch (one this broker started as a leader and never
            // wrote to): drop such empty epochs, and try again after the
            // backoff rather than at once.
            let (node, partition) = (Arc::clone(broker), Arc::clone(partition));
            tokio::task::spawn_blocking(move || {
                partition.truncate_as_follower(&node.logs, log_end, false, (leader, leader_epoch))
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
            return Err(format!(
                "the leader has no end offset for this log's last epoch (log end {log_end}, leader's {leader_start}..{leader_end})"
            ));
        }
        (leader_start, true)
    };
    if target < 0 {
        return Err(format!("the leader answered offset {target}"));
    }
    tracing::warn!(topic = %partition.topic, partition = partition.index, leader, log_end, target, start_at, "follower out of the leader's range; resetting its log");
    let (broker, partition) = (Arc::clone(broker), Arc::clone(partition));
    tokio::task::spawn_blocking(move || {
        partition.truncate_as_follower(&broker.logs, target, start_at, (leader, leader_epoch))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

/// One offset of `partition` from the leader, asked as replica `node_id`
/// (the leader answers its log end for LATEST, not the high watermark).
async fn list_offset(
    conn: &Connection,
    node_id: i32,
    partition: &Partition,
    leader_epoch: i32,
    timestamp: i64,
) -> Result<i64, String> {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(node_id))
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_string(
                    partition.topic.to_string(),
                )))
                .with_partitions(vec![
                    ListOffsetsPartition::default()
                        .with_partition_index(partition.index)
                        .with_current_leader_epoch(leader_epoch)
                        .with_timestamp(timestamp),
                ]),
        ]);
    let response = conn
        .send::<ListOffsetsRequest>(MAX_LIST_OFFSETS_VERSION, &request)
        .await
        .map_err(|e| e.to_string())?;
    let answer = response
        .topics
        .first()
        .and_then(|t| t.partitions.first())
        .ok_or("ListOffsets answered no partition")?;
    if answer.error_code != 0 {
        return Err(format!(
            "ListOffsets: {}",
            ErrorCode::from_code(answer.error_code).unwrap_or(ErrorCode::UnknownServerError)
        ));
    }
    Ok(answer.offset)
}
