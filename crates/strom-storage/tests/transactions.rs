//! Transactions in the partition log (KIP-98): open transactions hold the
//! last stable offset back, markers end them, abort markers go into the
//! segment's aborted-transaction index, and all of it survives clean and
//! unclean restarts and truncation.
#![allow(clippy::cast_possible_truncation, clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;

use bytes::Bytes;
use common::{open_clean, open_unclean};
use strom_protocol::builder::{RecordBatchBuilder, end_txn_marker_batch};
use strom_protocol::compression::Compression;
use strom_protocol::record::EndTxnMarker;
use strom_storage::log::AbortedTxn;
use strom_storage::{AppendError, AppendOrigin, LogConfig, PartitionLog};

const LEADER_EPOCH: i32 = 0;

fn txn_batch(producer_id: i64, epoch: i16, base_sequence: i32, records: usize) -> Bytes {
    let mut builder = RecordBatchBuilder::new(Compression::None)
        .producer(producer_id, epoch, base_sequence)
        .transactional(true);
    for i in 0..records {
        builder.push(1_000 + i as i64, None, Some(b"value"), &[]);
    }
    builder.build().unwrap()
}

fn plain_batch(producer_id: i64, epoch: i16, base_sequence: i32) -> Bytes {
    let mut builder =
        RecordBatchBuilder::new(Compression::None).producer(producer_id, epoch, base_sequence);
    builder.push(1_000, None, Some(b"value"), &[]);
    builder.build().unwrap()
}

fn produce(log: &PartitionLog, batch: &[u8]) -> Result<i64, AppendError> {
    log.append_as_leader(batch, LEADER_EPOCH, AppendOrigin::Client)
        .map(|info| info.first_offset)
}

/// Appends a marker as the transaction coordinator's WriteTxnMarkers does;
/// returns its offset.
fn end_txn(
    log: &PartitionLog,
    producer_id: i64,
    epoch: i16,
    commit: bool,
) -> Result<i64, AppendError> {
    let marker = end_txn_marker_batch(
        0,
        2_000,
        LEADER_EPOCH,
        producer_id,
        epoch,
        EndTxnMarker {
            commit,
            coordinator_epoch: 0,
        },
    );
    log.append_as_leader(&marker, LEADER_EPOCH, AppendOrigin::Coordinator)
        .map(|info| info.first_offset)
}

fn config() -> LogConfig {
    LogConfig::default()
}

fn txn_index_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter(|n| n.ends_with(".txnindex"))
        .collect();
    names.sort();
    names
}

/// Producer 1 commits, producer 2 aborts, producer 3 stays open; returns
/// the aborted transaction and producer 3's first offset.
fn mixed_history(log: &PartitionLog) -> (AbortedTxn, i64) {
    let p1 = produce(log, &txn_batch(1, 0, 0, 2)).unwrap(); // 0..=1
    let p2 = produce(log, &txn_batch(2, 0, 0, 3)).unwrap(); // 2..=4
    assert_eq!((p1, p2), (0, 2));
    assert_eq!(log.first_unstable_offset(), Some(0));
    assert_eq!(log.last_stable_offset(), 0);
    produce(log, &txn_batch(1, 0, 2, 1)).unwrap(); // 5
    let commit = end_txn(log, 1, 0, true).unwrap(); // 6
    assert_eq!(commit, 6);
    assert_eq!(log.last_stable_offset(), 2, "p2 is still open");
    let p3 = produce(log, &txn_batch(3, 0, 0, 1)).unwrap(); // 7
    produce(log, &txn_batch(2, 0, 3, 1)).unwrap(); // 8
    let abort = end_txn(log, 2, 0, false).unwrap(); // 9
    assert_eq!(log.last_stable_offset(), p3, "p3 is still open");
    (
        AbortedTxn {
            producer_id: 2,
            first_offset: 2,
            last_offset: abort,
            last_stable_offset: p3,
        },
        p3,
    )
}

#[test]
fn open_transactions_hold_the_last_stable_offset_and_aborts_are_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), config());
    assert_eq!(log.first_unstable_offset(), None);
    assert_eq!(log.last_stable_offset(), 0);
    let (aborted, p3) = mixed_history(&log);

    assert_eq!(log.aborted_transactions(0, 10).unwrap(), vec![aborted]);
    // Ranges that end before the transaction or start after its marker.
    assert!(log.aborted_transactions(0, 2).unwrap().is_empty());
    assert!(log.aborted_transactions(10, 11).unwrap().is_empty());
    assert_eq!(log.aborted_transactions(9, 10).unwrap(), vec![aborted]);

    // A read bounded by the last stable offset stops before p3's batch.
    let read = log.read(0, 1 << 20, Some(p3), true).unwrap();
    let bytes = read.records.read().unwrap();
    let last = strom_protocol::record_batch::batches(&bytes)
        .map(|b| b.unwrap().header.last_offset())
        .last()
        .unwrap();
    assert_eq!(last, p3 - 1);

    // The high watermark bounds the last stable offset too.
    log.set_high_watermark(1);
    assert_eq!(log.last_stable_offset(), 1);

    end_txn(&log, 3, 0, true).unwrap();
    assert_eq!(
        log.first_unstable_offset(),
        Some(p3),
        "its marker is above the high watermark"
    );
    log.set_high_watermark(log.log_end_offset());
    assert_eq!(log.first_unstable_offset(), None);
    assert_eq!(log.last_stable_offset(), log.log_end_offset());
    assert_eq!(txn_index_files(dir.path()).len(), 1);
}

#[test]
fn a_marker_is_unstable_until_the_high_watermark_passes_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), config());
    log.set_high_watermark(0);
    produce(&log, &txn_batch(1, 0, 0, 2)).unwrap();
    let marker = end_txn(&log, 1, 0, false).unwrap();
    log.set_high_watermark(marker);
    // A follower could still lack the marker: the transaction is unstable.
    assert_eq!(log.first_unstable_offset(), Some(0));
    log.set_high_watermark(marker + 1);
    assert_eq!(log.first_unstable_offset(), None);
    assert_eq!(log.last_stable_offset(), marker + 1);
}

#[test]
fn producers_in_a_transaction_write_transactionally_and_stale_markers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), config());
    produce(&log, &txn_batch(1, 3, 0, 1)).unwrap();
    assert!(matches!(
        produce(&log, &plain_batch(1, 3, 1)),
        Err(AppendError::InvalidTxnState { producer_id: 1 })
    ));
    assert!(matches!(
        end_txn(&log, 1, 2, true),
        Err(AppendError::InvalidProducerEpoch { .. })
    ));
    // A marker of a newer epoch (the coordinator fenced the producer and
    // aborts its transaction) ends it and fences the old epoch.
    end_txn(&log, 1, 4, false).unwrap();
    assert_eq!(log.first_unstable_offset(), None);
    assert!(matches!(
        produce(&log, &txn_batch(1, 3, 1, 1)),
        Err(AppendError::InvalidProducerEpoch { .. })
    ));
    // After the transaction ends, plain writes are fine again.
    produce(&log, &plain_batch(1, 4, 0)).unwrap();
    // Clients may not write markers.
    let marker = end_txn_marker_batch(
        0,
        0,
        LEADER_EPOCH,
        1,
        4,
        EndTxnMarker {
            commit: true,
            coordinator_epoch: 0,
        },
    );
    assert!(matches!(
        log.append_as_leader(&marker, LEADER_EPOCH, AppendOrigin::Client),
        Err(AppendError::InvalidRecord(_))
    ));
}

#[test]
fn transaction_state_survives_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (aborted, p3) = {
        let log = open_clean(dir.path(), config());
        let history = mixed_history(&log);
        log.close().unwrap();
        history
    };
    let log = open_clean(dir.path(), config());
    assert_eq!(log.first_unstable_offset(), Some(p3));
    assert_eq!(log.aborted_transactions(0, 10).unwrap(), vec![aborted]);
    end_txn(&log, 3, 0, false).unwrap();
    assert_eq!(log.first_unstable_offset(), None);
}

#[test]
fn recovery_rebuilds_the_aborted_transaction_index() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments: transactions and their markers in different segments.
    let config = LogConfig {
        segment_bytes: 300,
        ..config()
    };
    let (expected, p3) = {
        let log = open_clean(dir.path(), config.clone());
        let (_, p3) = mixed_history(&log);
        assert!(log.segment_count() > 2);
        // A transaction whose data and marker lie in different segments.
        produce(&log, &txn_batch(4, 0, 0, 1)).unwrap();
        produce(&log, &plain_batch(5, 0, 0)).unwrap();
        produce(&log, &plain_batch(5, 0, 1)).unwrap();
        end_txn(&log, 4, 0, false).unwrap();
        let expected = log.aborted_transactions(0, log.log_end_offset()).unwrap();
        assert_eq!(expected.len(), 2);
        assert!(
            log.aborted_transactions(10, log.log_end_offset())
                .unwrap()
                .iter()
                .any(|t| t.producer_id == 4),
            "a later segment's index is searched"
        );
        // A crash: no close, and the indexes are lost as well.
        (expected, p3)
    };
    for name in txn_index_files(dir.path()) {
        fs::remove_file(dir.path().join(name)).unwrap();
    }
    let log = open_unclean(dir.path(), config.clone());
    assert_eq!(
        log.aborted_transactions(0, log.log_end_offset()).unwrap(),
        expected
    );
    assert_eq!(log.first_unstable_offset(), Some(p3));

    // Truncation below a marker forgets the abort and reopens the transaction.
    let abort_of_4 = expected.iter().find(|t| t.producer_id == 4).unwrap();
    log.truncate_to(abort_of_4.last_offset).unwrap();
    let left = log.aborted_transactions(0, log.log_end_offset()).unwrap();
    assert!(left.iter().all(|t| t.producer_id != 4));
    assert_eq!(log.first_unstable_offset(), Some(p3));
    end_txn(&log, 3, 0, true).unwrap();
    assert_eq!(log.first_unstable_offset(), Some(abort_of_4.first_offset));
}

#[test]
fn a_full_truncation_forgets_open_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), config());
    produce(&log, &txn_batch(1, 0, 0, 2)).unwrap();
    assert_eq!(log.first_unstable_offset(), Some(0));
    // Below the log start: the log restarts empty at the offset.
    log.advance_log_start_offset(2).unwrap();
    log.truncate_to(1).unwrap();
    assert_eq!(log.log_end_offset(), 1);
    assert_eq!(log.first_unstable_offset(), None);
    assert_eq!(log.last_stable_offset(), 1);
}

/// KIP-890 part 1 through the log's API: the produce path asks the log
/// before asking the coordinator, and appends with what it got.
#[test]
fn a_produce_verified_before_a_marker_is_refused_after_it() {
    use strom_storage::TxnVerification;

    let dir = tempfile::tempdir().unwrap();
    let log = open_clean(dir.path(), config());
    let verified_append = |batch: &[u8], verification| {
        log.append_as_leader_verified(batch, LEADER_EPOCH, AppendOrigin::Client, verification)
    };
    // Transaction 1: verified, started, then a second produce finds it
    // ongoing and needs no coordinator.
    let guard = log.maybe_start_txn_verification(5, 0).unwrap();
    verified_append(
        &txn_batch(5, 0, 0, 1),
        TxnVerification::Checked(Some(guard)),
    )
    .unwrap();
    assert_eq!(log.maybe_start_txn_verification(5, 0), None);
    // EndTxn's marker lands between that produce's look and its append.
    end_txn(&log, 5, 0, true).unwrap();
    assert!(matches!(
        verified_append(&txn_batch(5, 0, 1, 1), TxnVerification::Checked(None)),
        Err(AppendError::InvalidTxnState { producer_id: 5 })
    ));
    // Transaction 2: a produce is verified (the coordinator said yes), then
    // the transaction ends before the produce appends.
    let guard = log.maybe_start_txn_verification(5, 0).unwrap();
    end_txn(&log, 5, 0, false).unwrap();
    assert!(matches!(
        verified_append(
            &txn_batch(5, 0, 1, 1),
            TxnVerification::Checked(Some(guard))
        ),
        Err(AppendError::InvalidTxnState { producer_id: 5 })
    ));
    assert_eq!(log.first_unstable_offset(), None, "nothing was left open");
    // Without a check (coordinators, replication) nothing changes.
    produce(&log, &txn_batch(5, 0, 1, 1)).unwrap();
}
