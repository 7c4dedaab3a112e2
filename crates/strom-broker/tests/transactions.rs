//! Transactions on the wire: read_committed Fetch and ListOffsets stop at the
//! last stable offset, and Fetch names the aborted transactions.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod common;

use bytes::Bytes;
use common::*;
use strom_protocol::builder::{RecordBatchBuilder, end_txn_marker_batch};
use strom_protocol::compression::Compression;
use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::ApiKey;
use strom_protocol::messages::kafka::*;
use strom_protocol::record::EndTxnMarker;
use strom_protocol::record_batch;
use strom_storage::AppendOrigin;

fn txn_batch(producer_id: i64, sequence: i32, values: &[&[u8]]) -> Bytes {
    let mut builder = RecordBatchBuilder::new(Compression::None)
        .producer(producer_id, 0, sequence)
        .transactional(true);
    for v in values {
        builder.push(now_ms(), None, Some(v), &[]);
    }
    builder.build().unwrap()
}

/// Appends a producer's transactional batch straight to partition 0 of
/// `topic` (Produce would need a coordinator transaction, KIP-890); returns
/// its base offset.
fn write_txn(broker: &strom_broker::RunningBroker, topic: &str, batch: &Bytes) -> i64 {
    let partition = broker.broker.replicas.get(topic, 0).unwrap();
    let info = partition
        .log
        .append_as_leader(batch, partition.leader_epoch(), AppendOrigin::Client)
        .unwrap();
    partition.advance_high_watermark();
    info.first_offset
}

/// Ends `producer_id`'s transaction in partition 0 of `topic`, as the
/// coordinator's markers do.
fn end_txn(broker: &strom_broker::RunningBroker, topic: &str, producer_id: i64, commit: bool) {
    let partition = broker.broker.replicas.get(topic, 0).unwrap();
    let marker = end_txn_marker_batch(
        0,
        now_ms(),
        partition.leader_epoch(),
        producer_id,
        0,
        EndTxnMarker {
            commit,
            coordinator_epoch: 0,
        },
    );
    partition
        .log
        .append_as_leader(&marker, partition.leader_epoch(), AppendOrigin::Coordinator)
        .unwrap();
    partition.advance_high_watermark();
}

async fn fetch(
    raw: &mut Raw,
    topic: &str,
    offset: i64,
    isolation_level: i8,
) -> fetch_response::PartitionData {
    let request = fetch_request(topic, offset, 0, 0, -1).with_isolation_level(isolation_level);
    let response: FetchResponse = raw.call(ApiKey::Fetch, 12, &request).await;
    response.responses[0].partitions[0].clone()
}

/// The last offset of the last batch of a fetch, -1 if none.
fn last_offset(data: &fetch_response::PartitionData) -> i64 {
    let records = data.records.clone().unwrap_or_default();
    record_batch::batches(&records)
        .map(|b| b.unwrap().header.last_offset())
        .last()
        .unwrap_or(-1)
}

async fn latest(raw: &mut Raw, topic: &str, isolation_level: i8) -> i64 {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_isolation_level(isolation_level)
        .with_topics(vec![
            list_offsets_request::ListOffsetsTopic::default()
                .with_name(name(topic))
                .with_partitions(vec![
                    list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(-1),
                ]),
        ]);
    let response: ListOffsetsResponse = raw.call(ApiKey::ListOffsets, 5, &request).await;
    let p = &response.topics[0].partitions[0];
    assert_eq!(p.error_code, 0);
    p.offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_committed_stops_at_the_last_stable_offset_and_learns_of_aborts() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path(), &[]).await;
    let mut raw = Raw::connect(&broker).await;
    assert_eq!(create_topic(&mut raw, "txn", 1, &[]).await, 0);

    // Producer 7 aborts offsets 0..=1 (marker 3); producer 8 opens at 2.
    assert_eq!(
        write_txn(&broker, "txn", &txn_batch(7, 0, &[b"a1", b"a2"])),
        0
    );
    assert_eq!(write_txn(&broker, "txn", &txn_batch(8, 0, &[b"b1"])), 2);
    let open = fetch(&mut raw, "txn", 0, 1).await;
    assert_eq!((open.high_watermark, open.last_stable_offset), (3, 0));
    assert_eq!(last_offset(&open), -1, "nothing is stable yet");
    assert_eq!(latest(&mut raw, "txn", 1).await, 0);
    assert_eq!(latest(&mut raw, "txn", 0).await, 3);

    end_txn(&broker, "txn", 7, false);
    let data = fetch(&mut raw, "txn", 0, 1).await;
    assert_eq!((data.high_watermark, data.last_stable_offset), (4, 2));
    assert_eq!(last_offset(&data), 1, "up to the open transaction");
    // The marker lies beyond the data returned, but the transaction
    // overlaps it: the consumer must drop producer 7's records.
    let aborted = data.aborted_transactions.clone().unwrap();
    assert_eq!(aborted.len(), 1);
    assert_eq!((aborted[0].producer_id.0, aborted[0].first_offset), (7, 0));

    // Producer 8 commits: everything is stable, and the aborted transaction
    // overlaps what is returned.
    end_txn(&broker, "txn", 8, true);
    let data = fetch(&mut raw, "txn", 0, 1).await;
    assert_eq!((data.high_watermark, data.last_stable_offset), (5, 5));
    assert_eq!(last_offset(&data), 4);
    let aborted = data.aborted_transactions.clone().unwrap();
    assert_eq!(aborted.len(), 1);
    assert_eq!((aborted[0].producer_id.0, aborted[0].first_offset), (7, 0));
    assert_eq!(latest(&mut raw, "txn", 1).await, 5);
    // read_uncommitted sees the same bytes and no aborted list.
    let uncommitted = fetch(&mut raw, "txn", 0, 0).await;
    assert_eq!(last_offset(&uncommitted), 4);
    assert!(uncommitted.aborted_transactions.is_none());
    // From after the abort marker, nothing is reported.
    let later = fetch(&mut raw, "txn", 4, 1).await;
    assert!(later.aborted_transactions.unwrap().is_empty());

    // A producer in a transaction writes transactionally.
    write_txn(&broker, "txn", &txn_batch(9, 0, &[b"c"]));
    // KIP-890: Produce refuses transactional batches outside a transaction
    // the coordinator knows.
    assert_eq!(
        produce(&mut raw, "txn", txn_batch(9, 0, &[b"c2"]))
            .await
            .error_code,
        ErrorCode::InvalidTxnState.code()
    );
    let mut plain = RecordBatchBuilder::new(Compression::None).producer(9, 0, 1);
    plain.push(now_ms(), None, Some(b"d"), &[]);
    assert_eq!(
        produce(&mut raw, "txn", plain.build().unwrap())
            .await
            .error_code,
        ErrorCode::InvalidTxnState.code()
    );
    broker.shutdown().await.unwrap();

    // After a restart the open transaction still holds the LSO back.
    let broker = self::broker(dir.path(), &[]).await;
    let mut raw = Raw::connect(&broker).await;
    assert_eq!(latest(&mut raw, "txn", 1).await, 5);
    let data = fetch(&mut raw, "txn", 0, 1).await;
    assert_eq!(data.aborted_transactions.unwrap().len(), 1);
    broker.shutdown().await.unwrap();
}

fn tid(id: &str) -> TransactionalId {
    TransactionalId(strom_protocol::messages::StrBytes::from_string(
        id.to_owned(),
    ))
}

fn group_id(group: &str) -> GroupId {
    GroupId(strom_protocol::messages::StrBytes::from_string(
        group.to_owned(),
    ))
}

async fn init(raw: &mut Raw, id: &str, timeout_ms: i32) -> InitProducerIdResponse {
    let request = InitProducerIdRequest::default()
        .with_transactional_id(Some(tid(id)))
        .with_transaction_timeout_ms(timeout_ms)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    raw.call(ApiKey::InitProducerId, 4, &request).await
}

async fn add_partitions(
    raw: &mut Raw,
    id: &str,
    pid: i64,
    epoch: i16,
    topics: &[&str],
) -> Vec<i16> {
    let request = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(tid(id))
        .with_v3_and_below_producer_id(ProducerId(pid))
        .with_v3_and_below_producer_epoch(epoch)
        .with_v3_and_below_topics(
            topics
                .iter()
                .map(|t| {
                    add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                        .with_name(name(t))
                        .with_partitions(vec![0])
                })
                .collect(),
        );
    let response: AddPartitionsToTxnResponse =
        raw.call(ApiKey::AddPartitionsToTxn, 3, &request).await;
    response
        .results_by_topic_v3_and_below
        .iter()
        .flat_map(|t| {
            t.results_by_partition
                .iter()
                .map(|p| p.partition_error_code)
        })
        .collect()
}

async fn end(raw: &mut Raw, id: &str, pid: i64, epoch: i16, commit: bool) -> i16 {
    let request = EndTxnRequest::default()
        .with_transactional_id(tid(id))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
        .with_committed(commit);
    let response: EndTxnResponse = raw.call(ApiKey::EndTxn, 3, &request).await;
    response.error_code
}

async fn produce_txn(raw: &mut Raw, id: &str, topic: &str, batch: Bytes) -> i16 {
    let request = produce_request(topic, 0, -1, batch).with_transactional_id(Some(tid(id)));
    let response: ProduceResponse = raw.call(ApiKey::Produce, 9, &request).await;
    response.responses[0].partition_responses[0].error_code
}

fn txn_batch_epoch(producer_id: i64, epoch: i16, sequence: i32, value: &[u8]) -> Bytes {
    let mut builder = RecordBatchBuilder::new(Compression::None)
        .producer(producer_id, epoch, sequence)
        .transactional(true);
    builder.push(now_ms(), None, Some(value), &[]);
    builder.build().unwrap()
}

async fn fetched_committed(raw: &mut Raw, group: &str, topic: &str) -> i64 {
    let request = OffsetFetchRequest::default()
        .with_group_id(group_id(group))
        .with_topics(Some(vec![
            offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(name(topic))
                .with_partition_indexes(vec![0]),
        ]));
    let r: OffsetFetchResponse = raw.call(ApiKey::OffsetFetch, 7, &request).await;
    r.topics[0].partitions[0].committed_offset
}

async fn txn_offset_commit(
    raw: &mut Raw,
    id: &str,
    group: &str,
    pid: i64,
    epoch: i16,
    offset: i64,
) -> i16 {
    let request = TxnOffsetCommitRequest::default()
        .with_transactional_id(tid(id))
        .with_group_id(group_id(group))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
        .with_generation_id(-1)
        .with_topics(vec![
            txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                .with_name(name("a"))
                .with_partitions(vec![
                    txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(offset)
                        .with_committed_leader_epoch(-1),
                ]),
        ]);
    let r: TxnOffsetCommitResponse = raw.call(ApiKey::TxnOffsetCommit, 3, &request).await;
    r.topics[0].partitions[0].error_code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_commits_aborts_fences_and_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let props = [(
        "transaction.abort.timed.out.transaction.cleanup.interval.ms",
        "100",
    )];
    let broker = broker(dir.path(), &props).await;
    let mut raw = Raw::connect(&broker).await;
    for topic in ["a", "b"] {
        assert_eq!(create_topic(&mut raw, topic, 1, &[]).await, 0);
    }
    let find = FindCoordinatorRequest::default()
        .with_key_type(1)
        .with_key(strom_protocol::messages::StrBytes::from_static_str("tx"));
    let found: FindCoordinatorResponse = raw.call(ApiKey::FindCoordinator, 3, &find).await;
    assert_eq!((found.error_code, found.node_id.0), (0, 1));

    let too_long = init(&mut raw, "tx", 900_001).await;
    assert_eq!(
        too_long.error_code,
        ErrorCode::InvalidTransactionTimeout.code()
    );
    let first = init(&mut raw, "tx", 60_000).await;
    assert_eq!((first.error_code, first.producer_epoch), (0, 0));
    let pid = first.producer_id.0;

    // KIP-890: a partition outside the transaction is refused.
    assert_eq!(
        produce_txn(&mut raw, "tx", "a", txn_batch_epoch(pid, 0, 0, b"early")).await,
        ErrorCode::InvalidTxnState.code()
    );
    assert_eq!(
        add_partitions(&mut raw, "tx", pid, 0, &["a", "b"]).await,
        vec![0, 0]
    );
    assert_eq!(
        add_partitions(&mut raw, "tx", pid, 0, &["nope"]).await,
        vec![ErrorCode::UnknownTopicOrPartition.code()]
    );
    for topic in ["a", "b"] {
        assert_eq!(
            produce_txn(&mut raw, "tx", topic, txn_batch_epoch(pid, 0, 0, b"one")).await,
            0
        );
    }
    // Offsets in the transaction need AddOffsetsToTxn first.
    assert_eq!(
        txn_offset_commit(&mut raw, "tx", "g", pid, 0, 42).await,
        ErrorCode::InvalidTxnState.code()
    );
    let add_offsets = AddOffsetsToTxnRequest::default()
        .with_transactional_id(tid("tx"))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(0)
        .with_group_id(group_id("g"));
    let r: AddOffsetsToTxnResponse = raw.call(ApiKey::AddOffsetsToTxn, 3, &add_offsets).await;
    assert_eq!(r.error_code, 0);
    assert_eq!(txn_offset_commit(&mut raw, "tx", "g", pid, 0, 42).await, 0);
    assert_eq!(fetched_committed(&mut raw, "g", "a").await, -1);
    // A read_committed consumer asks for stable offsets: it must wait.
    let stable = OffsetFetchRequest::default()
        .with_group_id(group_id("g"))
        .with_require_stable(true)
        .with_topics(Some(vec![
            offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(name("a"))
                .with_partition_indexes(vec![0]),
        ]));
    let r: OffsetFetchResponse = raw.call(ApiKey::OffsetFetch, 7, &stable).await;
    assert_eq!(
        r.topics[0].partitions[0].error_code,
        ErrorCode::UnstableOffsetCommit.code()
    );
    assert_eq!(latest(&mut raw, "a", 1).await, 0, "open: nothing stable");

    assert_eq!(end(&mut raw, "tx", pid, 0, true).await, 0);
    assert_eq!(
        end(&mut raw, "tx", pid, 0, true).await,
        0,
        "a retry is fine"
    );
    assert_eq!(
        end(&mut raw, "tx", pid, 0, false).await,
        ErrorCode::InvalidTxnState.code()
    );
    assert_eq!(latest(&mut raw, "a", 1).await, 2, "data and marker");
    assert_eq!(fetched_committed(&mut raw, "g", "a").await, 42);

    // An aborted transaction: read_committed consumers learn of it.
    assert_eq!(
        add_partitions(&mut raw, "tx", pid, 0, &["a"]).await,
        vec![0]
    );
    assert_eq!(
        produce_txn(&mut raw, "tx", "a", txn_batch_epoch(pid, 0, 1, b"two")).await,
        0
    );
    assert_eq!(end(&mut raw, "tx", pid, 0, false).await, 0);
    let data = fetch(&mut raw, "a", 0, 1).await;
    assert_eq!(data.last_stable_offset, 4);
    let aborted = data.aborted_transactions.unwrap();
    assert_eq!(aborted.len(), 1);
    assert_eq!(
        (aborted[0].producer_id.0, aborted[0].first_offset),
        (pid, 2)
    );

    // A new instance fences the old one, whose open transaction is aborted.
    assert_eq!(
        add_partitions(&mut raw, "tx", pid, 0, &["a"]).await,
        vec![0]
    );
    assert_eq!(
        produce_txn(&mut raw, "tx", "a", txn_batch_epoch(pid, 0, 2, b"three")).await,
        0
    );
    let second = init(&mut raw, "tx", 60_000).await;
    assert_eq!(second.error_code, 0);
    assert_eq!(second.producer_id.0, pid);
    assert!(second.producer_epoch > 0);
    assert_eq!(
        latest(&mut raw, "a", 1).await,
        latest(&mut raw, "a", 0).await
    );
    assert_eq!(
        add_partitions(&mut raw, "tx", pid, 0, &["a"]).await,
        vec![ErrorCode::ProducerFenced.code()]
    );
    assert_eq!(
        end(&mut raw, "tx", pid, 0, true).await,
        ErrorCode::ProducerFenced.code()
    );

    // A transaction left open past its timeout is aborted by the coordinator.
    let slow = init(&mut raw, "slow", 300).await;
    let slow_pid = slow.producer_id.0;
    assert_eq!(
        add_partitions(&mut raw, "slow", slow_pid, 0, &["b"]).await,
        vec![0]
    );
    assert_eq!(
        produce_txn(
            &mut raw,
            "slow",
            "b",
            txn_batch_epoch(slow_pid, 0, 0, b"late")
        )
        .await,
        0
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let data = fetch(&mut raw, "b", 0, 1).await;
        if data.last_stable_offset == data.high_watermark {
            let aborted = data.aborted_transactions.unwrap();
            assert!(aborted.iter().any(|t| t.producer_id.0 == slow_pid));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the timeout aborts");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        end(&mut raw, "slow", slow_pid, 0, true).await,
        ErrorCode::ProducerFenced.code()
    );
    drop(raw);
    broker.shutdown().await.unwrap();

    // The state is kept in __transaction_state: epochs keep going up.
    let broker = self::broker(dir.path(), &props).await;
    let mut raw = Raw::connect(&broker).await;
    let third = init(&mut raw, "tx", 60_000).await;
    assert_eq!(third.producer_id.0, pid);
    assert_eq!(third.producer_epoch, second.producer_epoch + 1);
    assert_eq!(fetched_committed(&mut raw, "g", "a").await, 42);
    broker.shutdown().await.unwrap();
}

/// KIP-890 part 1 through Produce: once a transaction is ongoing in a
/// partition the producer's batches go in; after EndTxn's marker the next
/// batch is a new transaction there, which the coordinator must know of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_its_marker_a_partition_takes_transactional_batches_only_once_added_again() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path(), &[]).await;
    let mut raw = Raw::connect(&broker).await;
    assert_eq!(create_topic(&mut raw, "a", 1, &[]).await, 0);
    let pid = init(&mut raw, "again", 60_000).await.producer_id.0;
    assert_eq!(
        add_partitions(&mut raw, "again", pid, 0, &["a"]).await,
        vec![0]
    );
    for sequence in 0..2 {
        let batch = txn_batch_epoch(pid, 0, sequence, b"in");
        assert_eq!(produce_txn(&mut raw, "again", "a", batch).await, 0);
    }
    assert_eq!(end(&mut raw, "again", pid, 0, true).await, 0);
    let after = txn_batch_epoch(pid, 0, 2, b"after");
    assert_eq!(
        produce_txn(&mut raw, "again", "a", after.clone()).await,
        ErrorCode::InvalidTxnState.code()
    );
    assert_eq!(
        add_partitions(&mut raw, "again", pid, 0, &["a"]).await,
        vec![0]
    );
    assert_eq!(produce_txn(&mut raw, "again", "a", after).await, 0);
    assert_eq!(end(&mut raw, "again", pid, 0, false).await, 0);
    let data = fetch(&mut raw, "a", 0, 1).await;
    assert_eq!(data.last_stable_offset, data.high_watermark);
    assert_eq!(
        data.aborted_transactions.unwrap().len(),
        1,
        "the second transaction, aborted"
    );
    drop(raw);
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_survives_a_restart_and_commits_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path(), &[]).await;
    let mut raw = Raw::connect(&broker).await;
    assert_eq!(create_topic(&mut raw, "a", 1, &[]).await, 0);
    let init_response = init(&mut raw, "restart", 60_000).await;
    let pid = init_response.producer_id.0;
    assert_eq!(
        add_partitions(&mut raw, "restart", pid, 0, &["a"]).await,
        vec![0]
    );
    assert_eq!(
        produce_txn(&mut raw, "restart", "a", txn_batch_epoch(pid, 0, 0, b"x")).await,
        0
    );
    let add_offsets = AddOffsetsToTxnRequest::default()
        .with_transactional_id(tid("restart"))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(0)
        .with_group_id(group_id("rg"));
    let r: AddOffsetsToTxnResponse = raw.call(ApiKey::AddOffsetsToTxn, 3, &add_offsets).await;
    assert_eq!(r.error_code, 0);
    assert_eq!(
        txn_offset_commit(&mut raw, "restart", "rg", pid, 0, 11).await,
        0
    );
    drop(raw);
    broker.shutdown().await.unwrap();

    // Coordinator state, the partition's open transaction and the pending
    // offsets all come back.
    let broker = self::broker(dir.path(), &[]).await;
    let mut raw = Raw::connect(&broker).await;
    assert_eq!(latest(&mut raw, "a", 1).await, 0, "still open");
    assert_eq!(fetched_committed(&mut raw, "rg", "a").await, -1);
    assert_eq!(end(&mut raw, "restart", pid, 0, true).await, 0);
    assert_eq!(latest(&mut raw, "a", 1).await, 2);
    assert_eq!(fetched_committed(&mut raw, "rg", "a").await, 11);
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transactional_ids_expire() {
    let dir = tempfile::tempdir().unwrap();
    let props = [
        (
            "transaction.abort.timed.out.transaction.cleanup.interval.ms",
            "50",
        ),
        ("transactional.id.expiration.ms", "200"),
    ];
    let broker = broker(dir.path(), &props).await;
    let mut raw = Raw::connect(&broker).await;
    let first = init(&mut raw, "fleeting", 60_000).await;
    assert_eq!(first.error_code, 0);
    let describe =
        DescribeTransactionsRequest::default().with_transactional_ids(vec![tid("fleeting")]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r: DescribeTransactionsResponse =
            raw.call(ApiKey::DescribeTransactions, 0, &describe).await;
        if r.transaction_states[0].error_code == ErrorCode::TransactionalIdNotFound.code() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the id expires");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(raw);
    broker.shutdown().await.unwrap();
    // Gone for good: the tombstone is replayed; a new init starts afresh.
    let broker = self::broker(dir.path(), &props).await;
    let mut raw = Raw::connect(&broker).await;
    let again = init(&mut raw, "fleeting", 60_000).await;
    assert_eq!(again.producer_epoch, 0);
    assert_ne!(again.producer_id, first.producer_id);
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decided_transaction_is_completed_at_start() {
    use strom_broker::txn::store::{self, TRANSACTION_STATE_TOPIC, TxnRecord, TxnStatus, TxnValue};

    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path(), &[]).await;
    let mut raw = Raw::connect(&broker).await;
    assert_eq!(create_topic(&mut raw, "a", 1, &[]).await, 0);
    let pid = init(&mut raw, "decided", 60_000).await.producer_id.0;
    assert_eq!(
        add_partitions(&mut raw, "decided", pid, 0, &["a"]).await,
        vec![0]
    );
    assert_eq!(
        produce_txn(&mut raw, "decided", "a", txn_batch_epoch(pid, 0, 0, b"x")).await,
        0
    );
    // A crash right after EndTxn(commit) was persisted, before any marker:
    // the PrepareCommit record is the last word in __transaction_state.
    let image = broker.broker.image();
    let partitions = image
        .topic(TRANSACTION_STATE_TOPIC)
        .unwrap()
        .partitions
        .len();
    let index = store::partition_for("decided", i32::try_from(partitions).unwrap());
    let partition = broker
        .broker
        .replicas
        .get(TRANSACTION_STATE_TOPIC, index)
        .unwrap();
    let record = TxnRecord {
        transactional_id: "decided".into(),
        value: Some(TxnValue {
            producer_id: pid,
            producer_epoch: 0,
            timeout_ms: 60_000,
            status: TxnStatus::PrepareCommit,
            partitions: [("a".to_owned(), 0)].into_iter().collect(),
            last_update_ms: now_ms(),
            start_ms: now_ms(),
        }),
    };
    partition
        .log
        .append_as_leader(
            &store::encode(&[record], now_ms()).unwrap(),
            partition.leader_epoch(),
            AppendOrigin::Coordinator,
        )
        .unwrap();
    drop(raw);
    broker.shutdown().await.unwrap();

    // At start the coordinator writes the markers and completes it.
    let broker = self::broker(dir.path(), &[]).await;
    let mut raw = Raw::connect(&broker).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while latest(&mut raw, "a", 1).await != 2 {
        assert!(std::time::Instant::now() < deadline, "the commit completes");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let data = fetch(&mut raw, "a", 0, 1).await;
    assert_eq!(last_offset(&data), 1);
    assert!(data.aborted_transactions.unwrap().is_empty());
    let describe =
        DescribeTransactionsRequest::default().with_transactional_ids(vec![tid("decided")]);
    let r: DescribeTransactionsResponse =
        raw.call(ApiKey::DescribeTransactions, 0, &describe).await;
    assert_eq!(
        r.transaction_states[0].transaction_state.as_str(),
        "CompleteCommit"
    );
    broker.shutdown().await.unwrap();
}
