//! Unit tests of the producer state rules that are hard to reach through a
//! whole log: the snapshot codec, the producer bound, chaining inside one append.

use super::*;

fn batch(
    producer_id: i64,
    epoch: i16,
    first_seq: i32,
    records: i32,
    first_offset: i64,
) -> ProducerBatch {
    ProducerBatch {
        producer_id,
        producer_epoch: epoch,
        first_seq,
        last_seq: first_seq + records - 1,
        first_offset,
        last_offset: first_offset + i64::from(records) - 1,
        max_timestamp: 1_000 + first_offset,
        transactional: false,
        marker: None,
    }
}

fn applied(manager: &mut ProducerStateManager, batches: &[ProducerBatch]) {
    match manager.check_client_append(batches).unwrap() {
        Checked::Append(update) => {
            manager.apply(update);
        }
        Checked::Duplicate(d) => panic!("unexpected duplicate {d:?}"),
    }
}

/// A state with producers 1..=3, several batches each, one in a transaction.
fn sample() -> ProducerStateManager {
    let mut m = ProducerStateManager::new([], MAX_PRODUCERS_PER_PARTITION);
    let mut offset = 0;
    for producer_id in 1..=3 {
        for i in 0..(producer_id * 3) {
            let mut b = batch(producer_id, 2, i32::try_from(i).unwrap() * 2, 2, offset);
            b.transactional = producer_id == 2 && i >= 4;
            m.replay(&b);
            offset += 2;
        }
    }
    m
}

#[test]
fn snapshots_round_trip() {
    let m = sample();
    let bytes = encode_snapshot(100, &m.producers);
    let mut decoded: HashMap<i64, ProducerStateEntry> =
        decode_snapshot(&bytes, 100).unwrap().into_iter().collect();
    assert_eq!(decoded, m.producers);
    assert_eq!(decoded[&2].current_txn_first_offset, Some(14));
    assert_eq!(usize::from(decoded[&3].batch_count), NUM_BATCHES_TO_RETAIN);
    // An empty state is a valid snapshot too.
    decoded.clear();
    let empty = encode_snapshot(7, &decoded);
    assert_eq!(empty.len(), HEADER_BYTES);
    assert!(decode_snapshot(&empty, 7).unwrap().is_empty());
}

#[test]
fn damaged_snapshots_are_refused() {
    let m = sample();
    let bytes = encode_snapshot(100, &m.producers);
    // Every truncation, and any extra byte.
    for len in 0..bytes.len() {
        assert!(
            decode_snapshot(&bytes[..len], 100).is_err(),
            "truncated to {len}"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(decode_snapshot(&longer, 100).is_err());
    // Any flipped bit after the version is caught by the CRC; in the version
    // by the version check.
    for i in 0..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[i] ^= 0x10;
        assert!(
            decode_snapshot(&flipped, 100).is_err(),
            "bit flipped at {i}"
        );
    }
    // A valid snapshot under another offset's name.
    assert!(decode_snapshot(&bytes, 101).is_err());
}

/// Re-encodes a state with one field changed and a correct CRC: the content
/// checks must catch what a CRC cannot (a bug, or a file from another log).
#[test]
fn snapshots_with_impossible_content_are_refused() {
    let valid = encode_snapshot(100, &sample().producers);
    let recrc = |mut bytes: Vec<u8>| {
        let crc = crc32c::crc32c(&bytes[SNAPSHOT_OFFSET_OFFSET..]);
        bytes[CRC_OFFSET..SNAPSHOT_OFFSET_OFFSET].copy_from_slice(&crc.to_be_bytes());
        bytes
    };
    let first_entry = HEADER_BYTES;
    let batch_count_at = first_entry + ENTRY_FIXED_BYTES - 1;
    // More batches than are retained.
    let mut bytes = valid.clone();
    bytes[batch_count_at] = 6;
    assert!(decode_snapshot(&recrc(bytes), 100).is_err());
    // A batch at or above the snapshot's offset.
    let mut bytes = valid.clone();
    let last_offset_at = batch_count_at + 1 + 8;
    bytes[last_offset_at..last_offset_at + 8].copy_from_slice(&100i64.to_be_bytes());
    assert!(decode_snapshot(&recrc(bytes), 100).is_err());
    // A producer count larger than the bound.
    let mut bytes = valid.clone();
    bytes[PRODUCER_COUNT_OFFSET..HEADER_BYTES].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(decode_snapshot(&recrc(bytes), 100).is_err());
    // The same producer twice.
    let mut bytes = valid;
    let second_entry = first_entry + ENTRY_FIXED_BYTES + BATCH_BYTES * 3;
    bytes[second_entry..second_entry + 8].copy_from_slice(&1i64.to_be_bytes());
    assert!(decode_snapshot(&recrc(bytes), 100).is_err());
}

#[test]
fn the_producer_bound_forgets_those_that_wrote_least_recently() {
    let max = 200;
    let mut m = ProducerStateManager::new([], max);
    for producer_id in 0..1_000i64 {
        m.replay(&batch(producer_id, 0, 0, 1, producer_id));
        assert!(m.len() <= max, "{} producers after {producer_id}", m.len());
    }
    let known: Vec<i64> = m.views().iter().map(|v| v.producer_id).collect();
    assert!(known.contains(&999), "the newest producer is kept");
    // What remains is the most recent writers, without holes.
    let oldest = known[0];
    assert_eq!(known, (oldest..1_000).collect::<Vec<_>>());
    assert!(known.len() > max * 9 / 10);
    // A producer that writes again is recent again.
    m.replay(&batch(oldest, 0, 1, 1, 5_000));
    for producer_id in 1_000..1_000 + i64::try_from(max / 2).unwrap() {
        m.replay(&batch(producer_id, 0, 0, 1, 5_000 + producer_id));
    }
    assert!(m.views().iter().any(|v| v.producer_id == oldest));
}

#[test]
fn batches_of_one_append_chain() {
    let mut m = ProducerStateManager::new([], MAX_PRODUCERS_PER_PARTITION);
    applied(&mut m, &[batch(7, 0, 0, 2, 0)]);
    // In order inside one append.
    applied(&mut m, &[batch(7, 0, 2, 2, 2), batch(7, 0, 4, 1, 4)]);
    // The second batch of an append must continue the first.
    let err = m
        .check_client_append(&[batch(7, 0, 5, 2, 5), batch(7, 0, 8, 1, 7)])
        .unwrap_err();
    assert!(
        matches!(
            err,
            AppendError::OutOfOrderSequence {
                producer_id: 7,
                expected: 7,
                found: 8
            }
        ),
        "{err:?}"
    );
    // Nothing of a refused append is kept.
    assert_eq!(m.views()[0].last_sequence, 4);
    // An unknown producer may start anywhere, but its next batch continues.
    let err = m
        .check_client_append(&[batch(9, 0, 5, 2, 10), batch(9, 0, 9, 1, 12)])
        .unwrap_err();
    assert!(
        matches!(
            err,
            AppendError::OutOfOrderSequence {
                producer_id: 9,
                expected: 7,
                found: 9
            }
        ),
        "{err:?}"
    );
    // An epoch bump inside one append: the next batch continues the new epoch.
    applied(&mut m, &[batch(7, 1, 0, 2, 5), batch(7, 1, 2, 1, 7)]);
    let err = m
        .check_client_append(&[batch(7, 1, 3, 1, 8), batch(7, 0, 5, 1, 9)])
        .unwrap_err();
    assert!(
        matches!(
            err,
            AppendError::InvalidProducerEpoch {
                epoch: 0,
                current_epoch: 1,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn unchecked_updates_follow_the_batches() {
    let mut m = ProducerStateManager::new([], MAX_PRODUCERS_PER_PARTITION);
    applied(&mut m, &[batch(3, 5, 0, 1, 0)]);
    // Replication applies what the leader wrote, even an older epoch (Kafka
    // only logs it).
    let update = m.prepare_unchecked(&[batch(3, 4, 9, 1, 1)]);
    m.apply(update);
    let view = m.views()[0];
    assert_eq!((view.producer_epoch, view.last_sequence), (4, 9));
}

#[test]
fn expiry_spares_open_transactions() {
    let mut m = ProducerStateManager::new([], MAX_PRODUCERS_PER_PARTITION);
    let idle = batch(1, 0, 0, 1, 0);
    let mut in_txn = batch(2, 0, 0, 1, 1);
    in_txn.transactional = true;
    m.replay(&idle);
    m.replay(&in_txn);
    assert_eq!(m.remove_expired(idle.max_timestamp + 99, 100), 0);
    assert_eq!(m.remove_expired(in_txn.max_timestamp + 1_000, 100), 1);
    let views = m.views();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].current_txn_first_offset, Some(1));
}

#[test]
fn version_1_snapshots_are_read_with_an_unknown_coordinator_epoch() {
    let mut m = ProducerStateManager::new([], MAX_PRODUCERS_PER_PARTITION);
    let mut b = batch(7, 3, 0, 2, 10);
    b.transactional = true;
    m.replay(&b);
    let v2 = encode_snapshot(100, &m.producers);
    // Version 1: the same entry without the coordinator epoch.
    let epoch_at = HEADER_BYTES + ENTRY_FIXED_BYTES - 1 - size_of::<i32>();
    let mut v1 = v2[..epoch_at].to_vec();
    v1.extend_from_slice(&v2[epoch_at + size_of::<i32>()..]);
    v1[VERSION_OFFSET..CRC_OFFSET].copy_from_slice(&SNAPSHOT_VERSION_1.to_be_bytes());
    let crc = crc32c::crc32c(&v1[SNAPSHOT_OFFSET_OFFSET..]);
    v1[CRC_OFFSET..SNAPSHOT_OFFSET_OFFSET].copy_from_slice(&crc.to_be_bytes());
    let entries = decode_snapshot(&v1, 100).unwrap();
    assert_eq!(entries.len(), 1);
    let (id, entry) = &entries[0];
    assert_eq!(*id, 7);
    assert_eq!(entry.coordinator_epoch, -1);
    assert_eq!(entry.current_txn_first_offset, Some(10));
    assert_eq!(entry, &m.producers[&7]);
}

#[test]
fn markers_from_an_older_coordinator_are_fenced() {
    let mut m = ProducerStateManager::new([], MAX_PRODUCERS_PER_PARTITION);
    let mut data = batch(7, 0, 0, 1, 0);
    data.transactional = true;
    let marker = |offset: i64, coordinator_epoch: i32| ProducerBatch {
        producer_id: 7,
        producer_epoch: 0,
        first_seq: -1,
        last_seq: -1,
        first_offset: offset,
        last_offset: offset,
        max_timestamp: 0,
        transactional: true,
        marker: Some(EndMarker {
            kind: TxnMarker::Commit,
            coordinator_epoch,
        }),
    };
    m.apply(m.check_coordinator_append(&[data]).unwrap());
    let completed = m.apply(m.check_coordinator_append(&[marker(1, 5)]).unwrap());
    assert_eq!(completed.len(), 1);
    assert!(matches!(
        m.check_coordinator_append(&[marker(2, 4)]),
        Err(AppendError::TransactionCoordinatorFenced {
            coordinator_epoch: 4,
            current: 5,
            ..
        })
    ));
    assert!(m.check_coordinator_append(&[marker(2, 5)]).is_ok());
    // The epoch is kept in snapshots.
    let bytes = encode_snapshot(10, &m.producers);
    assert_eq!(
        decode_snapshot(&bytes, 10).unwrap()[0].1.coordinator_epoch,
        5
    );
}

fn txn_batch(producer_id: i64, epoch: i16, first_seq: i32, first_offset: i64) -> ProducerBatch {
    ProducerBatch {
        transactional: true,
        ..batch(producer_id, epoch, first_seq, 1, first_offset)
    }
}

fn commit_marker(producer_id: i64, epoch: i16, offset: i64) -> ProducerBatch {
    ProducerBatch {
        producer_id,
        producer_epoch: epoch,
        first_seq: -1,
        last_seq: -1,
        first_offset: offset,
        last_offset: offset,
        max_timestamp: 0,
        transactional: true,
        marker: Some(EndMarker {
            kind: TxnMarker::Commit,
            coordinator_epoch: 0,
        }),
    }
}

#[test]
fn a_transaction_starts_only_with_the_current_verification_guard() {
    let mut m = ProducerStateManager::new([], MAX_PRODUCERS_PER_PARTITION);
    let first = txn_batch(7, 0, 0, 0);
    // Without a guard, or with a guard never handed out, nothing starts.
    for verification in [
        TxnVerification::Checked(None),
        TxnVerification::Checked(Some(VerificationGuard(999))),
    ] {
        assert!(matches!(
            m.check_verification(&[first], verification),
            Err(AppendError::InvalidTxnState { producer_id: 7 })
        ));
    }
    assert!(
        m.check_verification(&[first], TxnVerification::Unchecked)
            .is_ok()
    );
    let guard = m
        .maybe_start_verification(7, 0)
        .expect("no transaction yet");
    assert_eq!(
        m.maybe_start_verification(7, 0),
        Some(guard),
        "a second produce shares the open verification"
    );
    let verified = TxnVerification::Checked(Some(guard));
    assert!(m.check_verification(&[first], verified).is_ok());
    applied(&mut m, &[first]);
    // The transaction is ongoing: no more verification, and its guard went.
    assert_eq!(m.verification(7), None);
    assert_eq!(m.maybe_start_verification(7, 0), None);
    let second = txn_batch(7, 0, 1, 1);
    assert!(
        m.check_verification(&[second], TxnVerification::Checked(None))
            .is_ok()
    );
    // A newer epoch is a new transaction: it is verified again.
    assert!(m.maybe_start_verification(7, 1).is_some());
}

#[test]
fn a_produce_verified_before_a_marker_cannot_append_after_it() {
    let mut m = ProducerStateManager::new([], MAX_PRODUCERS_PER_PARTITION);
    // Transaction 1 is ongoing; a produce looks and finds it ongoing.
    let guard = m.maybe_start_verification(3, 0).unwrap();
    applied(&mut m, &[txn_batch(3, 0, 0, 0)]);
    assert_eq!(m.maybe_start_verification(3, 0), None);
    // EndTxn writes the transaction's marker before that produce appends.
    m.apply(
        m.check_coordinator_append(&[commit_marker(3, 0, 1)])
            .unwrap(),
    );
    // The produce that saw the transaction ongoing holds no guard: refused.
    assert!(matches!(
        m.check_verification(&[txn_batch(3, 0, 1, 2)], TxnVerification::Checked(None)),
        Err(AppendError::InvalidTxnState { producer_id: 3 })
    ));
    // A produce verified (guard handed out, coordinator said yes) before the
    // marker of the transaction it verified for: the marker took the guard.
    let verified = m.maybe_start_verification(3, 0).unwrap();
    assert_ne!(verified, guard, "guards are never reused");
    m.apply(
        m.check_coordinator_append(&[commit_marker(3, 0, 2)])
            .unwrap(),
    );
    assert!(matches!(
        m.check_verification(
            &[txn_batch(3, 0, 1, 3)],
            TxnVerification::Checked(Some(verified))
        ),
        Err(AppendError::InvalidTxnState { producer_id: 3 })
    ));
}

#[test]
fn open_verifications_are_bounded() {
    let mut m = ProducerStateManager::new([], MAX_PRODUCERS_PER_PARTITION);
    let oldest = m.maybe_start_verification(0, 0).unwrap();
    for producer_id in 1..=i64::try_from(MAX_VERIFICATIONS_PER_PARTITION).unwrap() {
        m.maybe_start_verification(producer_id, 0).unwrap();
    }
    assert_eq!(m.verifications.len(), MAX_VERIFICATIONS_PER_PARTITION);
    assert!(m.verification(1).is_some());
    assert_ne!(m.verification(0), Some(oldest), "the oldest went first");
}
