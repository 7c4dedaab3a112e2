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
        produce(&mut raw, "txn", txn_batch(7, 0, &[b"a1", b"a2"]))
            .await
            .error_code,
        0
    );
    assert_eq!(
        produce(&mut raw, "txn", txn_batch(8, 0, &[b"b1"]))
            .await
            .base_offset,
        2
    );
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
    assert_eq!(
        produce(&mut raw, "txn", txn_batch(9, 0, &[b"c"]))
            .await
            .error_code,
        0
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
