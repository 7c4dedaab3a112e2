//! The idempotent producer's state, kept with the log (Kafka's
//! `ProducerStateManager`, `ProducerStateEntry` and `ProducerAppendInfo`).
//!
//! For every producer id seen in the partition the log keeps the producer
//! epoch and the metadata of its last [`NUM_BATCHES_TO_RETAIN`] batches. A
//! client append is checked against it before anything is written: an older
//! epoch is fenced, a retry of a retained batch is answered with the original
//! offsets instead of being written twice, and a sequence that does not
//! continue the last one is refused. Replicated and coordinator appends update
//! the state without those checks, as in Kafka.
//!
//! KIP-890 part 1 lives here too, as in Kafka: a transactional produce asks
//! the partition first whether its producer's transaction is ongoing here;
//! when it is not, the partition hands out a [`VerificationGuard`] and the
//! produce asks the transaction coordinator. The append then needs that guard
//! to start the transaction ([`TxnVerification`]), and the producer's next
//! transactional batch or marker removes it, so a produce verified before
//! EndTxn's marker cannot land after it. Verifications live in memory only.
//!
//! The state is derived from the log, so it can always be rebuilt by reading
//! batch headers. Snapshots make that cheap: `<offset>.snapshot` holds the
//! state of every producer after all batches below `offset`. They are written
//! when a segment rolls (at the new segment's base offset) and at a clean close
//! (at the log end offset); opening a log loads the newest valid one at or
//! below the log end and replays the batch headers after it.
//!
//! # Snapshot format (version 2)
//!
//! Integers are big-endian, as everywhere in Kafka's formats.
//!
//! ```text
//! header (18 bytes)
//!   version                     u16   2
//!   crc                         u32   CRC32C of every byte after this field
//!   offset                      i64   the snapshot's offset, as in the file name
//!   producer_count              u32   entries that follow
//! entry (31 bytes + 28 per batch), producer_count times
//!   producer_id                 i64   >= 0, each id once
//!   producer_epoch              i16
//!   last_timestamp              i64   max timestamp of the producer's last batch
//!   current_txn_first_offset    i64   -1 when no transaction is open
//!   coordinator_epoch           i32   of the producer's last marker, -1 if none
//!   batch_count                 u8    0..=5
//!   batch, batch_count times, oldest first
//!     first_sequence            i32
//!     last_sequence             i32
//!     last_offset               i64   below the snapshot offset, increasing
//!     offset_delta              i32   last_offset - first offset, >= 0
//!     max_timestamp             i64
//! ```
//!
//! Version 1 is the same without `coordinator_epoch` (27-byte entries); it
//! is still read (the coordinator epoch is then unknown, -1).
//!
//! Files are written to `<name>.tmp`, fsynced and renamed. A snapshot is never
//! trusted on its name alone: a wrong version, CRC, offset, length or field
//! makes it corrupt, and a corrupt or unreadable snapshot is logged, deleted
//! and skipped (the state is then rebuilt from an older one or from the log).
//! Unlike Kafka's snapshots, which keep only each producer's last batch, all
//! retained batches are kept, so retries of any of them are still recognised
//! after a restart.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use strom_protocol::record_batch::{BatchHeader, NO_PRODUCER_EPOCH, NO_SEQUENCE};

use super::segment::file_name;
use crate::error::AppendError;

/// Batches remembered per producer for duplicate detection: Kafka's
/// `NUM_BATCHES_TO_RETAIN`, matching the producer's limit of 5 in-flight
/// requests per connection (`max.in.flight.requests.per.connection`), so any
/// request a producer may retry is still known.
pub const NUM_BATCHES_TO_RETAIN: usize = 5;

/// Bound on the producers one partition remembers. Kafka has none and relies
/// on `producer.id.expiration.ms` alone, so a client that takes a new
/// producer id for every request (a known failure, KIP-936) grows broker
/// memory for a day. An entry is under 200 bytes, so this caps a partition at
/// about 20 MiB; far more live producers than write to one partition. When
/// it is passed, the producers that wrote least recently are forgotten first
/// (they are then unknown, and Kafka accepts any sequence from an unknown
/// producer).
pub const MAX_PRODUCERS_PER_PARTITION: usize = 100_000;

/// Bound on the KIP-890 verifications one partition keeps open. An entry
/// lives from the moment a transactional produce asks whether its producer
/// may start a transaction here until the producer's next transactional
/// batch or marker in the partition: one per transactional producer between
/// its first produce to the partition and that produce's append, so far
/// fewer than the producers a partition remembers. Past the bound the oldest
/// entry goes (the produce it belonged to, if it still runs, is refused with
/// INVALID_TXN_STATE rather than the partition growing without limit).
pub const MAX_VERIFICATIONS_PER_PARTITION: usize = 10_000;

/// Snapshot files kept. Kafka keeps one per segment; three cover the last two
/// segment rolls and the last clean close, which is what a truncation after
/// an unclean leader change usually needs (the same reason Kafka takes those
/// three when it has none), while older ones would only cost files.
pub(crate) const SNAPSHOTS_KEPT: usize = 3;

/// File name suffix of snapshots.
const SNAPSHOT_SUFFIX: &str = ".snapshot";

const SNAPSHOT_VERSION: u16 = 2;
/// The version before `coordinator_epoch`.
const SNAPSHOT_VERSION_1: u16 = 1;

// The header, as chained offsets.
const VERSION_OFFSET: usize = 0;
const CRC_OFFSET: usize = VERSION_OFFSET + size_of::<u16>();
const SNAPSHOT_OFFSET_OFFSET: usize = CRC_OFFSET + size_of::<u32>();
const PRODUCER_COUNT_OFFSET: usize = SNAPSHOT_OFFSET_OFFSET + size_of::<i64>();
const HEADER_BYTES: usize = PRODUCER_COUNT_OFFSET + size_of::<u32>();
const _: () = assert!(HEADER_BYTES == 18);

/// Fixed part of an entry: id, epoch, last timestamp, txn first offset,
/// coordinator epoch, batch count.
const ENTRY_FIXED_BYTES: usize = size_of::<i64>()
    + size_of::<i16>()
    + size_of::<i64>()
    + size_of::<i64>()
    + size_of::<i32>()
    + size_of::<u8>();
/// One retained batch: first and last sequence, last offset, offset delta, max timestamp.
const BATCH_BYTES: usize =
    size_of::<i32>() + size_of::<i32>() + size_of::<i64>() + size_of::<i32>() + size_of::<i64>();
const _: () = assert!(ENTRY_FIXED_BYTES == 31 && BATCH_BYTES == 28);

/// The largest snapshot a valid state can produce: nothing larger is read.
const MAX_SNAPSHOT_BYTES: usize = HEADER_BYTES
    + MAX_PRODUCERS_PER_PARTITION * (ENTRY_FIXED_BYTES + NUM_BATCHES_TO_RETAIN * BATCH_BYTES);

/// The metadata of one appended batch, kept for duplicate detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct BatchMetadata {
    pub(crate) first_seq: i32,
    pub(crate) last_seq: i32,
    pub(crate) last_offset: i64,
    /// `last_offset - first offset`.
    pub(crate) offset_delta: i32,
    pub(crate) max_timestamp: i64,
}

impl BatchMetadata {
    pub(crate) fn first_offset(&self) -> i64 {
        // Saturating: a snapshot read from disk may hold any values (it is
        // checked after this is computed, and refused if out of range).
        self.last_offset
            .saturating_sub(i64::from(self.offset_delta))
    }
}

/// What the log knows about one producer id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProducerStateEntry {
    producer_epoch: i16,
    /// The last batches, oldest first; only `batches[..batch_count]` are used.
    /// Inline rather than a deque: no allocation per producer, cheap to copy.
    batches: [BatchMetadata; NUM_BATCHES_TO_RETAIN],
    batch_count: u8,
    /// Max timestamp of the last batch: what `producer.id.expiration.ms` is
    /// measured from (Kafka's `lastTimestamp`).
    last_timestamp: i64,
    /// First offset of the producer's open transaction. Set when a
    /// transactional batch starts one; ending it (markers) belongs to the
    /// transaction coordinator's work.
    current_txn_first_offset: Option<i64>,
    /// Epoch of the transaction coordinator that wrote the producer's last
    /// marker (-1 if none): a marker from an older coordinator is fenced.
    coordinator_epoch: i32,
}

impl ProducerStateEntry {
    /// A producer the log does not know (Kafka's `ProducerStateEntry.empty`).
    fn unknown() -> Self {
        Self {
            producer_epoch: NO_PRODUCER_EPOCH,
            batches: [BatchMetadata::default(); NUM_BATCHES_TO_RETAIN],
            batch_count: 0,
            last_timestamp: strom_protocol::record_batch::NO_TIMESTAMP,
            current_txn_first_offset: None,
            coordinator_epoch: -1,
        }
    }

    fn retained(&self) -> &[BatchMetadata] {
        &self.batches[..usize::from(self.batch_count)]
    }

    fn last_seq(&self) -> i32 {
        self.retained().last().map_or(NO_SEQUENCE, |b| b.last_seq)
    }

    /// Last offset the producer wrote, -1 if none is retained.
    fn last_offset(&self) -> i64 {
        self.retained().last().map_or(-1, |b| b.last_offset)
    }

    /// The retained batch with exactly this sequence range, if the epoch is
    /// the current one (Kafka's `findDuplicateBatch`).
    fn find_duplicate(&self, batch: &ProducerBatch) -> Option<BatchMetadata> {
        if batch.producer_epoch != self.producer_epoch {
            return None;
        }
        self.retained()
            .iter()
            .find(|b| b.first_seq == batch.first_seq && b.last_seq == batch.last_seq)
            .copied()
    }

    /// Records a batch: a new epoch forgets the old epoch's batches, the
    /// oldest batch goes when `NUM_BATCHES_TO_RETAIN` are kept.
    fn add_batch(&mut self, batch: &ProducerBatch) {
        if batch.producer_epoch != self.producer_epoch {
            self.producer_epoch = batch.producer_epoch;
            self.batch_count = 0;
        }
        let metadata = BatchMetadata {
            first_seq: batch.first_seq,
            last_seq: batch.last_seq,
            last_offset: batch.last_offset,
            offset_delta: i32::try_from(batch.last_offset - batch.first_offset).unwrap_or(i32::MAX),
            max_timestamp: batch.max_timestamp,
        };
        let count = usize::from(self.batch_count);
        if count == NUM_BATCHES_TO_RETAIN {
            self.batches.copy_within(1.., 0);
            self.batches[NUM_BATCHES_TO_RETAIN - 1] = metadata;
        } else {
            self.batches[count] = metadata;
            self.batch_count += 1;
        }
        self.last_timestamp = batch.max_timestamp;
        if batch.transactional && self.current_txn_first_offset.is_none() {
            // Kafka: a transactional batch with no open transaction begins one.
            self.current_txn_first_offset = Some(batch.first_offset);
        }
        debug_assert!(usize::from(self.batch_count) <= NUM_BATCHES_TO_RETAIN);
    }

    /// Ends the producer's transaction with a marker (Kafka's
    /// `ProducerAppendInfo.appendEndTxnMarker`): a newer epoch replaces the
    /// old one and its batches, the open transaction closes. A marker with no
    /// open transaction completes an empty one at the marker's offset, as in
    /// Kafka.
    fn end_txn(&mut self, batch: &ProducerBatch, marker: EndMarker) -> CompletedTxn {
        if batch.producer_epoch != self.producer_epoch {
            self.producer_epoch = batch.producer_epoch;
            self.batch_count = 0;
        }
        self.last_timestamp = batch.max_timestamp;
        self.coordinator_epoch = marker.coordinator_epoch;
        let commit = marker.kind == TxnMarker::Commit;
        let first_offset = self
            .current_txn_first_offset
            .take()
            .unwrap_or(batch.first_offset);
        CompletedTxn {
            producer_id: batch.producer_id,
            first_offset,
            last_offset: batch.last_offset,
            aborted: !commit,
        }
    }

    /// Applies a data batch or a marker; a marker returns the transaction it
    /// ended.
    fn apply_batch(&mut self, batch: &ProducerBatch) -> Option<CompletedTxn> {
        match batch.marker {
            Some(marker) => Some(self.end_txn(batch, marker)),
            None => {
                self.add_batch(batch);
                None
            }
        }
    }

    fn is_expired(&self, now_ms: i64, expiration_ms: i64) -> bool {
        // Kafka never expires a producer with an open transaction.
        self.current_txn_first_offset.is_none()
            && now_ms.saturating_sub(self.last_timestamp) >= expiration_ms
    }
}

/// One producer's state as DescribeProducers reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStateView {
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// Sequence of the last record of the last batch, -1 if none is retained.
    pub last_sequence: i32,
    /// Max timestamp of the producer's last batch.
    pub last_timestamp: i64,
    /// First offset of the producer's open transaction.
    pub current_txn_first_offset: Option<i64>,
    /// Coordinator epoch of the producer's last marker, -1 if none.
    pub coordinator_epoch: i32,
}

/// What the cleaner must keep of one producer (Kafka's `LastRecord`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LastRecord {
    pub(crate) last_data_offset: Option<i64>,
    pub(crate) producer_epoch: i16,
}

/// The producer fields of one data batch, with the offsets it has (or will
/// have) in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProducerBatch {
    pub(crate) producer_id: i64,
    pub(crate) producer_epoch: i16,
    pub(crate) first_seq: i32,
    pub(crate) last_seq: i32,
    pub(crate) first_offset: i64,
    pub(crate) last_offset: i64,
    pub(crate) max_timestamp: i64,
    pub(crate) transactional: bool,
    /// A control batch ending the producer's transaction.
    pub(crate) marker: Option<EndMarker>,
}

/// What a transaction marker says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EndMarker {
    pub(crate) kind: TxnMarker,
    pub(crate) coordinator_epoch: i32,
}

/// Which way a transaction marker ends a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxnMarker {
    Commit,
    Abort,
}

/// A transaction a marker ended in this partition (Kafka's `CompletedTxn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CompletedTxn {
    pub(crate) producer_id: i64,
    /// Offset of the transaction's first batch here (the marker's offset for
    /// a transaction that wrote nothing here).
    pub(crate) first_offset: i64,
    /// Offset of the marker.
    pub(crate) last_offset: i64,
    pub(crate) aborted: bool,
}

/// Bound on the decompressed records of a control batch looked into: a
/// marker is one record of about 20 bytes; anything larger is not a marker.
const MAX_CONTROL_BATCH_RECORD_BYTES: usize = 4096;

/// The marker a control batch holds; `None` for an empty control batch (the
/// cleaner removed its record) or a control record that is not a
/// transaction marker, which change no producer state (as in Kafka).
pub(crate) fn read_marker(bytes: &[u8]) -> Option<EndMarker> {
    let batch = bytes::Bytes::copy_from_slice(bytes);
    let mut records =
        strom_protocol::record::records(&batch, MAX_CONTROL_BATCH_RECORD_BYTES).ok()?;
    let record = records.next()?.ok()?;
    match strom_protocol::record::EndTxnMarker::from_record(&record) {
        Ok(marker) => Some(EndMarker {
            kind: if marker.commit {
                TxnMarker::Commit
            } else {
                TxnMarker::Abort
            },
            coordinator_epoch: marker.coordinator_epoch,
        }),
        Err(e) => {
            tracing::debug!(error = %e, "control batch without a transaction marker");
            None
        }
    }
}

impl ProducerBatch {
    /// The batch `header` (whole bytes `batch`) stored at `first_offset` with
    /// `max_timestamp` (as stored: the append time for `LogAppendTime`
    /// topics). `None` for batches without a producer id and for control
    /// batches that hold no transaction marker.
    pub(crate) fn of(
        header: &BatchHeader,
        batch: &[u8],
        first_offset: i64,
        max_timestamp: i64,
    ) -> Option<Self> {
        if !header.has_producer_id() {
            return None;
        }
        let marker = if header.is_control() {
            Some(read_marker(batch)?)
        } else {
            None
        };
        Some(Self {
            producer_id: header.producer_id,
            producer_epoch: header.producer_epoch,
            first_seq: header.base_sequence,
            last_seq: header.last_sequence(),
            first_offset,
            last_offset: first_offset + i64::from(header.last_offset_delta),
            max_timestamp,
            transactional: header.is_transactional(),
            marker,
        })
    }
}

/// KIP-890 part 1: proof that the transaction coordinator confirmed, after
/// this guard was handed out, that a producer's transaction is ongoing and
/// holds the partition (Kafka's `VerificationGuard`). A transactional batch
/// that starts the producer's transaction in the partition is taken only
/// with the guard the partition still holds for that producer; the
/// producer's next transactional batch or marker removes it, so a produce
/// verified before a marker cannot append after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerificationGuard(u64);

/// How a leader append treats transactional batches (KIP-890 part 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxnVerification {
    /// No check: coordinators' appends, and callers that verify otherwise.
    #[default]
    Unchecked,
    /// A producer's transactional batch that would start its transaction
    /// here (none ongoing at the batch's epoch) needs this guard to be the
    /// producer's current one. `None`: the produce found the transaction
    /// ongoing when it looked and holds no guard, so if a marker ended the
    /// transaction since, the batch is refused.
    Checked(Option<VerificationGuard>),
}

/// An open verification of one producer (Kafka's `VerificationStateEntry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VerificationEntry {
    guard: VerificationGuard,
    /// The producer epoch the verification was asked for.
    producer_epoch: i16,
}

/// The outcome of checking a client append.
#[derive(Debug)]
pub(crate) enum Checked {
    /// A retry of a batch already in the log: answer with its offsets and
    /// write nothing.
    Duplicate(BatchMetadata),
    /// New batches: apply this after they are written.
    Append(ProducerUpdate),
}

/// The entries an append will leave, computed before it is written and put in
/// place once it is ([`ProducerStateManager::apply`]).
#[derive(Debug, Default)]
pub(crate) struct ProducerUpdate {
    entries: HashMap<i64, ProducerStateEntry>,
    /// Transactions the append's markers end, in offset order.
    completed: Vec<CompletedTxn>,
    /// Producers with a transactional batch or marker in the append: their
    /// verification is over (the transaction started, or ended).
    verified: Vec<i64>,
}

impl ProducerUpdate {
    /// The entry of `producer_id` as updated by this append so far, starting
    /// from the committed one (or an unknown producer's).
    fn entry(
        &mut self,
        committed: &HashMap<i64, ProducerStateEntry>,
        producer_id: i64,
    ) -> &mut ProducerStateEntry {
        self.entries.entry(producer_id).or_insert_with(|| {
            committed
                .get(&producer_id)
                .cloned()
                .unwrap_or_else(ProducerStateEntry::unknown)
        })
    }
}

/// The producer state of one partition and the snapshot files that persist it.
#[derive(Debug)]
pub(crate) struct ProducerStateManager {
    producers: HashMap<i64, ProducerStateEntry>,
    /// `(first offset, producer id)` of every open transaction: the first is
    /// the partition's first unstable offset (Kafka's `ongoingTxns`). Kept in
    /// step with `producers`; as large as it at most.
    ongoing: BTreeSet<(i64, i64)>,
    /// Offsets of the snapshot files in the partition directory.
    snapshots: BTreeSet<i64>,
    max_producers: usize,
    /// Open KIP-890 verifications by producer id, at most
    /// [`MAX_VERIFICATIONS_PER_PARTITION`]. Not persisted: a restart fails
    /// the produces in flight, which clients retry.
    verifications: HashMap<i64, VerificationEntry>,
    /// The next guard handed out: guards are unique per partition and grow,
    /// so the smallest is the oldest.
    next_guard: u64,
}

impl ProducerStateManager {
    /// No producers yet; `snapshots` are the offsets of the snapshot files
    /// found in the directory.
    pub(crate) fn new(snapshots: impl IntoIterator<Item = i64>, max_producers: usize) -> Self {
        assert!(max_producers > 0, "a partition must remember some producer");
        Self {
            producers: HashMap::new(),
            ongoing: BTreeSet::new(),
            snapshots: snapshots.into_iter().collect(),
            max_producers,
            verifications: HashMap::new(),
            next_guard: 1,
        }
    }

    /// Whether `producer_id` has a transaction open here at `producer_epoch`
    /// (Kafka's `hasOngoingTransaction`).
    pub(crate) fn has_ongoing_txn(&self, producer_id: i64, producer_epoch: i16) -> bool {
        self.producers.get(&producer_id).is_some_and(|e| {
            e.producer_epoch == producer_epoch && e.current_txn_first_offset.is_some()
        })
    }

    /// KIP-890 part 1, before a transactional produce asks the coordinator:
    /// `None` when the producer's transaction is already ongoing here (no
    /// question to ask), otherwise the guard to append with once the
    /// coordinator said yes (Kafka's `maybeStartTransactionVerification`).
    /// An open verification of the producer is shared.
    pub(crate) fn maybe_start_verification(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
    ) -> Option<VerificationGuard> {
        if self.has_ongoing_txn(producer_id, producer_epoch) {
            return None;
        }
        if let Some(entry) = self.verifications.get_mut(&producer_id) {
            entry.producer_epoch = entry.producer_epoch.max(producer_epoch);
            return Some(entry.guard);
        }
        if self.verifications.len() >= MAX_VERIFICATIONS_PER_PARTITION
            && let Some(oldest) = self
                .verifications
                .iter()
                .min_by_key(|(_, e)| e.guard.0)
                .map(|(id, _)| *id)
        {
            self.verifications.remove(&oldest);
        }
        let guard = VerificationGuard(self.next_guard);
        self.next_guard += 1;
        self.verifications.insert(
            producer_id,
            VerificationEntry {
                guard,
                producer_epoch,
            },
        );
        Some(guard)
    }

    /// The KIP-890 check of a leader append's transactional batches (see
    /// [`TxnVerification`]), against the state before the append: a batch
    /// that starts its producer's transaction needs the producer's current
    /// guard; later batches of the same transaction in the append follow it.
    pub(crate) fn check_verification(
        &self,
        batches: &[ProducerBatch],
        verification: TxnVerification,
    ) -> Result<(), AppendError> {
        let TxnVerification::Checked(guard) = verification else {
            return Ok(());
        };
        let mut started: Vec<(i64, i16)> = Vec::new();
        for batch in batches
            .iter()
            .filter(|b| b.transactional && b.marker.is_none())
        {
            let key = (batch.producer_id, batch.producer_epoch);
            if self.has_ongoing_txn(batch.producer_id, batch.producer_epoch)
                || started.contains(&key)
            {
                continue;
            }
            let current = self.verifications.get(&batch.producer_id).map(|e| e.guard);
            if guard.is_none() || current != guard {
                return Err(AppendError::InvalidTxnState {
                    producer_id: batch.producer_id,
                });
            }
            started.push(key);
        }
        Ok(())
    }

    /// The open verification of `producer_id` (tests).
    #[cfg(test)]
    pub(crate) fn verification(&self, producer_id: i64) -> Option<VerificationGuard> {
        self.verifications.get(&producer_id).map(|e| e.guard)
    }

    pub(crate) fn len(&self) -> usize {
        self.producers.len()
    }

    /// Heap bytes held: the producer and verification maps (a `HashMap`
    /// slot is its entry and one control byte) and the set of snapshot
    /// offsets.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.producers.capacity() * (size_of::<(i64, ProducerStateEntry)>() + 1)
            + self.verifications.capacity() * (size_of::<(i64, VerificationEntry)>() + 1)
            + self.snapshots.len() * 2 * size_of::<i64>()
    }

    /// Checks the producer batches of a client append, in Kafka's order
    /// (`UnifiedLog.analyzeAndValidateProducerState`, then
    /// `ProducerAppendInfo`), each against the state the batches before it
    /// leave:
    ///
    /// 1. a retry of one of the producer's retained batches (same epoch, same
    ///    sequence range, looked up in the state before this append) is a
    ///    duplicate: the append answers with the original batch;
    /// 2. an epoch older than the current one is fenced;
    /// 3. a new epoch must start at sequence 0, unless the producer's epoch is
    ///    unknown; the same epoch must continue the last sequence (wrapping
    ///    after `i32::MAX`), also from one batch of the append to the next; a
    ///    producer the log does not know (its state expired or was never
    ///    seen) may start anywhere (Kafka 2.5+).
    pub(crate) fn check_client_append(
        &self,
        batches: &[ProducerBatch],
    ) -> Result<Checked, AppendError> {
        let mut update = ProducerUpdate::default();
        for batch in batches {
            let committed = self.producers.get(&batch.producer_id);
            if let Some(duplicate) = committed.and_then(|c| c.find_duplicate(batch)) {
                return Ok(Checked::Duplicate(duplicate));
            }
            let entry = update.entry(&self.producers, batch.producer_id);
            if batch.producer_epoch < entry.producer_epoch {
                return Err(AppendError::InvalidProducerEpoch {
                    producer_id: batch.producer_id,
                    epoch: batch.producer_epoch,
                    current_epoch: entry.producer_epoch,
                });
            }
            // Kafka: a producer inside a transaction writes transactionally.
            if !batch.transactional
                && batch.producer_epoch == entry.producer_epoch
                && entry.current_txn_first_offset.is_some()
            {
                return Err(AppendError::InvalidTxnState {
                    producer_id: batch.producer_id,
                });
            }
            if batch.producer_epoch != entry.producer_epoch {
                if batch.first_seq != 0 && entry.producer_epoch != NO_PRODUCER_EPOCH {
                    return Err(AppendError::OutOfOrderSequence {
                        producer_id: batch.producer_id,
                        expected: 0,
                        found: batch.first_seq,
                    });
                }
            } else {
                let last_seq = entry.last_seq();
                // With no known epoch any sequence is accepted, as in Kafka.
                // Kafka decides "known" by the state before the append, so the
                // batches of an unknown producer's first append need not
                // chain; here the second batch must continue the first, like
                // every batch of a known producer. (Clients send one batch
                // per partition, so only a broken client can tell.)
                if entry.producer_epoch != NO_PRODUCER_EPOCH
                    && !in_sequence(last_seq, batch.first_seq)
                {
                    return Err(AppendError::OutOfOrderSequence {
                        producer_id: batch.producer_id,
                        expected: next_sequence(last_seq),
                        found: batch.first_seq,
                    });
                }
            }
            entry.add_batch(batch);
            if batch.transactional {
                update.verified.push(batch.producer_id);
            }
        }
        Ok(Checked::Append(update))
    }

    /// The state after `batches` without any check: replication (Kafka's
    /// replication path).
    pub(crate) fn prepare_unchecked(&self, batches: &[ProducerBatch]) -> ProducerUpdate {
        let mut update = ProducerUpdate::default();
        for batch in batches {
            let completed = update
                .entry(&self.producers, batch.producer_id)
                .apply_batch(batch);
            update.completed.extend(completed);
            if batch.transactional {
                update.verified.push(batch.producer_id);
            }
        }
        update
    }

    /// The state after a coordinator's batches (transaction markers, the
    /// coordinators' own records): as [`Self::prepare_unchecked`], except
    /// that a marker is refused, as Kafka's `appendEndTxnMarker` does, when
    /// its coordinator epoch is older than that of the producer's last marker
    /// (a coordinator that lost its partition) or its producer epoch is
    /// older than the producer's (a stale request).
    pub(crate) fn check_coordinator_append(
        &self,
        batches: &[ProducerBatch],
    ) -> Result<ProducerUpdate, AppendError> {
        let mut update = ProducerUpdate::default();
        for batch in batches {
            let entry = update.entry(&self.producers, batch.producer_id);
            if let Some(marker) = batch.marker
                && marker.coordinator_epoch < entry.coordinator_epoch
            {
                return Err(AppendError::TransactionCoordinatorFenced {
                    producer_id: batch.producer_id,
                    coordinator_epoch: marker.coordinator_epoch,
                    current: entry.coordinator_epoch,
                });
            }
            if batch.marker.is_some() && batch.producer_epoch < entry.producer_epoch {
                return Err(AppendError::InvalidProducerEpoch {
                    producer_id: batch.producer_id,
                    epoch: batch.producer_epoch,
                    current_epoch: entry.producer_epoch,
                });
            }
            let completed = entry.apply_batch(batch);
            update.completed.extend(completed);
            if batch.transactional {
                update.verified.push(batch.producer_id);
            }
        }
        Ok(update)
    }

    /// Puts the entries of a written append in place; returns the
    /// transactions its markers ended.
    pub(crate) fn apply(&mut self, update: ProducerUpdate) -> Vec<CompletedTxn> {
        // Kafka's `updateProducers`: a transactional batch starts the
        // transaction (no more verifying) and a marker ends it (what was
        // verified before is over).
        for id in &update.verified {
            self.verifications.remove(id);
        }
        for (id, entry) in update.entries {
            let before = self
                .producers
                .get(&id)
                .and_then(|e| e.current_txn_first_offset);
            self.track_ongoing(id, before, entry.current_txn_first_offset);
            self.producers.insert(id, entry);
        }
        self.enforce_max_producers();
        update.completed
    }

    /// Applies one batch read back from the log (rebuild); returns the
    /// transaction it ended if it is a marker.
    pub(crate) fn replay(&mut self, batch: &ProducerBatch) -> Option<CompletedTxn> {
        let entry = self
            .producers
            .entry(batch.producer_id)
            .or_insert_with(ProducerStateEntry::unknown);
        let before = entry.current_txn_first_offset;
        let completed = entry.apply_batch(batch);
        if batch.transactional {
            self.verifications.remove(&batch.producer_id);
        }
        let after = entry.current_txn_first_offset;
        self.track_ongoing(batch.producer_id, before, after);
        self.enforce_max_producers();
        completed
    }

    fn track_ongoing(&mut self, producer_id: i64, before: Option<i64>, after: Option<i64>) {
        if before == after {
            return;
        }
        if let Some(first) = before {
            self.ongoing.remove(&(first, producer_id));
        }
        if let Some(first) = after {
            self.ongoing.insert((first, producer_id));
        }
    }

    /// Rebuilds `ongoing` from the producers (after bulk changes).
    fn rebuild_ongoing(&mut self) {
        self.ongoing = self
            .producers
            .iter()
            .filter_map(|(id, e)| e.current_txn_first_offset.map(|first| (first, *id)))
            .collect();
    }

    /// The first offset of the oldest open transaction (Kafka's
    /// `firstUndecidedOffset`), `None` when none is open.
    pub(crate) fn first_ongoing_offset(&self) -> Option<i64> {
        self.ongoing.first().map(|(first, _)| *first)
    }

    /// Forgets every producer (the snapshot files stay).
    pub(crate) fn clear(&mut self) {
        self.producers.clear();
        self.ongoing.clear();
        self.verifications.clear();
    }

    /// Removes producers whose last batch is at least `expiration_ms` older
    /// than `now_ms` and that have no open transaction (Kafka's
    /// `removeExpiredProducers`). Returns how many went.
    pub(crate) fn remove_expired(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|_, entry| !entry.is_expired(now_ms, expiration_ms));
        before - self.producers.len()
    }

    /// When more than `max_producers` are known, forgets the ones that wrote
    /// least recently, those with an open transaction last. It goes down to
    /// 1% below the bound so that a flood of new producer ids costs one
    /// selection per many appends rather than one per append.
    fn enforce_max_producers(&mut self) {
        if self.producers.len() <= self.max_producers {
            return;
        }
        let target = self.max_producers - self.max_producers / 100;
        let excess = self.producers.len() - target;
        let mut order: Vec<(bool, i64, i64)> = self
            .producers
            .iter()
            .map(|(id, e)| (e.current_txn_first_offset.is_some(), e.last_offset(), *id))
            .collect();
        order.select_nth_unstable(excess - 1);
        for (_, _, id) in &order[..excess] {
            self.producers.remove(id);
        }
        self.rebuild_ongoing();
        tracing::warn!(
            evicted = excess,
            max_producers = self.max_producers,
            "too many producers in one partition; forgot those that wrote least recently"
        );
        debug_assert!(self.producers.len() <= self.max_producers);
    }

    /// Kafka's `lastRecordsOfActiveProducers`: each producer's epoch and the
    /// last offset of its last data batch, if one is retained. The cleaner
    /// keeps the batches these name (empty if need be), so that the state
    /// rebuilt from a cleaned log still knows every producer's sequence.
    pub(crate) fn last_records(&self) -> HashMap<i64, LastRecord> {
        self.producers
            .iter()
            .map(|(id, e)| {
                let last = e.last_offset();
                (
                    *id,
                    LastRecord {
                        last_data_offset: (last >= 0).then_some(last),
                        producer_epoch: e.producer_epoch,
                    },
                )
            })
            .collect()
    }

    /// Every producer, by producer id.
    pub(crate) fn views(&self) -> Vec<ProducerStateView> {
        let mut views: Vec<ProducerStateView> = self
            .producers
            .iter()
            .map(|(id, e)| ProducerStateView {
                producer_id: *id,
                producer_epoch: e.producer_epoch,
                last_sequence: e.last_seq(),
                last_timestamp: e.last_timestamp,
                current_txn_first_offset: e.current_txn_first_offset,
                coordinator_epoch: e.coordinator_epoch,
            })
            .collect();
        views.sort_unstable_by_key(|v| v.producer_id);
        views
    }

    pub(crate) fn latest_snapshot_offset(&self) -> Option<i64> {
        self.snapshots.last().copied()
    }

    /// Writes the state as the snapshot at `offset` (the log end offset: the
    /// state must cover exactly the batches below it), then deletes all but
    /// the newest [`SNAPSHOTS_KEPT`]. The directory is not fsynced: a snapshot
    /// whose rename is lost only means a longer rebuild.
    pub(crate) fn take_snapshot(&mut self, dir: &Path, offset: i64) -> io::Result<()> {
        let bytes = encode_snapshot(offset, &self.producers);
        let path = snapshot_path(dir, offset);
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        {
            let mut file = File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        self.snapshots.insert(offset);
        while self.snapshots.len() > SNAPSHOTS_KEPT {
            let Some(oldest) = self.snapshots.first().copied() else {
                break;
            };
            self.delete_snapshot(dir, oldest)?;
        }
        Ok(())
    }

    /// Deletes the snapshots above `offset`; true if there were any.
    pub(crate) fn delete_snapshots_above(&mut self, dir: &Path, offset: i64) -> io::Result<bool> {
        let doomed: Vec<i64> = self.snapshots.range(offset + 1..).copied().collect();
        for snapshot in &doomed {
            self.delete_snapshot(dir, *snapshot)?;
        }
        Ok(!doomed.is_empty())
    }

    /// Deletes the snapshots below `offset` except the newest snapshot.
    pub(crate) fn delete_snapshots_below(&mut self, dir: &Path, offset: i64) -> io::Result<()> {
        let newest = self.latest_snapshot_offset();
        let doomed: Vec<i64> = self
            .snapshots
            .range(..offset)
            .copied()
            .filter(|s| Some(*s) != newest)
            .collect();
        for snapshot in doomed {
            self.delete_snapshot(dir, snapshot)?;
        }
        Ok(())
    }

    /// Deletes every snapshot; true if there were any.
    pub(crate) fn delete_all_snapshots(&mut self, dir: &Path) -> io::Result<bool> {
        self.delete_snapshots_above(dir, i64::MIN)
    }

    fn delete_snapshot(&mut self, dir: &Path, offset: i64) -> io::Result<()> {
        self.snapshots.remove(&offset);
        match fs::remove_file(snapshot_path(dir, offset)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Replaces the state with the newest valid snapshot at or below
    /// `max_offset`, without the producers expired by `now_ms` (as Kafka loads
    /// snapshots). Corrupt or unreadable snapshots are logged, deleted and
    /// skipped. Returns the snapshot's offset, `None` if none could be used
    /// (the state is then empty).
    pub(crate) fn load_latest_snapshot(
        &mut self,
        dir: &Path,
        max_offset: i64,
        now_ms: i64,
        expiration_ms: i64,
    ) -> Option<i64> {
        self.clear();
        while let Some(offset) = self.snapshots.range(..=max_offset).next_back().copied() {
            let path = snapshot_path(dir, offset);
            match read_snapshot(&path, offset) {
                Ok(entries) => {
                    self.producers = entries
                        .into_iter()
                        .filter(|(_, e)| !e.is_expired(now_ms, expiration_ms))
                        .collect();
                    self.rebuild_ongoing();
                    self.enforce_max_producers();
                    return Some(offset);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "deleting an unusable producer state snapshot");
                    if let Err(e) = self.delete_snapshot(dir, offset) {
                        tracing::warn!(path = %path.display(), error = %e, "could not delete a producer state snapshot");
                        // Not trusted either way: forget it for this process.
                        self.snapshots.remove(&offset);
                    }
                }
            }
        }
        None
    }
}

/// Kafka's `inSequence`: `next` continues `last`, wrapping after `i32::MAX`.
fn in_sequence(last: i32, next: i32) -> bool {
    i64::from(next) == i64::from(last) + 1 || (next == 0 && last == i32::MAX)
}

/// The sequence that continues `last`.
fn next_sequence(last: i32) -> i32 {
    if last == i32::MAX { 0 } else { last + 1 }
}

/// `<dir>/<20-digit offset>.snapshot`.
pub(crate) fn snapshot_path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(file_name(offset, SNAPSHOT_SUFFIX))
}

fn encode_snapshot(offset: i64, producers: &HashMap<i64, ProducerStateEntry>) -> Vec<u8> {
    let mut ids: Vec<i64> = producers.keys().copied().collect();
    ids.sort_unstable();
    let mut buf = Vec::with_capacity(
        HEADER_BYTES + producers.len() * (ENTRY_FIXED_BYTES + NUM_BATCHES_TO_RETAIN * BATCH_BYTES),
    );
    buf.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
    buf.extend_from_slice(&0u32.to_be_bytes()); // the CRC, filled in below
    buf.extend_from_slice(&offset.to_be_bytes());
    let count = u32::try_from(ids.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&count.to_be_bytes());
    debug_assert_eq!(buf.len(), HEADER_BYTES);
    for id in ids {
        let entry = &producers[&id];
        buf.extend_from_slice(&id.to_be_bytes());
        buf.extend_from_slice(&entry.producer_epoch.to_be_bytes());
        buf.extend_from_slice(&entry.last_timestamp.to_be_bytes());
        buf.extend_from_slice(&entry.current_txn_first_offset.unwrap_or(-1).to_be_bytes());
        buf.extend_from_slice(&entry.coordinator_epoch.to_be_bytes());
        buf.push(entry.batch_count);
        for batch in entry.retained() {
            buf.extend_from_slice(&batch.first_seq.to_be_bytes());
            buf.extend_from_slice(&batch.last_seq.to_be_bytes());
            buf.extend_from_slice(&batch.last_offset.to_be_bytes());
            buf.extend_from_slice(&batch.offset_delta.to_be_bytes());
            buf.extend_from_slice(&batch.max_timestamp.to_be_bytes());
        }
    }
    let crc = crc32c::crc32c(&buf[SNAPSHOT_OFFSET_OFFSET..]);
    buf[CRC_OFFSET..SNAPSHOT_OFFSET_OFFSET].copy_from_slice(&crc.to_be_bytes());
    buf
}

fn corrupt(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// Reads and checks the snapshot at `path`, which must be at `offset`.
fn read_snapshot(path: &Path, offset: i64) -> io::Result<Vec<(i64, ProducerStateEntry)>> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    if len > MAX_SNAPSHOT_BYTES as u64 {
        return Err(corrupt(format!("{len} bytes is larger than any snapshot")));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(MAX_SNAPSHOT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    decode_snapshot(&bytes, offset)
}

/// Parses a snapshot strictly: anything unexpected is corruption.
fn decode_snapshot(bytes: &[u8], offset: i64) -> io::Result<Vec<(i64, ProducerStateEntry)>> {
    if bytes.len() < HEADER_BYTES {
        return Err(corrupt(format!(
            "{} bytes is shorter than the header",
            bytes.len()
        )));
    }
    if bytes.len() > MAX_SNAPSHOT_BYTES {
        return Err(corrupt("larger than any snapshot"));
    }
    let mut r = Cursor {
        buf: bytes,
        pos: VERSION_OFFSET,
    };
    let version = r.u16()?;
    if version != SNAPSHOT_VERSION && version != SNAPSHOT_VERSION_1 {
        return Err(corrupt(format!("unknown snapshot version {version}")));
    }
    let stored_crc = r.u32()?;
    let crc = crc32c::crc32c(&bytes[SNAPSHOT_OFFSET_OFFSET..]);
    if stored_crc != crc {
        return Err(corrupt(format!(
            "CRC32C {stored_crc:#010x} does not match the content's {crc:#010x}"
        )));
    }
    let stored_offset = r.i64()?;
    if stored_offset != offset {
        return Err(corrupt(format!(
            "snapshot of offset {stored_offset} in the file of offset {offset}"
        )));
    }
    let count = usize::try_from(r.u32()?).unwrap_or(usize::MAX);
    if count > MAX_PRODUCERS_PER_PARTITION {
        return Err(corrupt(format!("{count} producers is more than the bound")));
    }
    debug_assert_eq!(r.pos, HEADER_BYTES);
    let mut entries = Vec::with_capacity(count.min(bytes.len() / ENTRY_FIXED_BYTES));
    let mut previous_id = -1;
    for _ in 0..count {
        let producer_id = r.i64()?;
        if producer_id <= previous_id {
            return Err(corrupt("producer ids are not increasing"));
        }
        previous_id = producer_id;
        let mut entry = ProducerStateEntry::unknown();
        entry.producer_epoch = r.i16()?;
        entry.last_timestamp = r.i64()?;
        entry.current_txn_first_offset = match r.i64()? {
            -1 => None,
            txn if (0..offset).contains(&txn) => Some(txn),
            txn => return Err(corrupt(format!("transaction first offset {txn}"))),
        };
        if version >= SNAPSHOT_VERSION {
            entry.coordinator_epoch = match r.i32()? {
                epoch if epoch >= -1 => epoch,
                epoch => return Err(corrupt(format!("coordinator epoch {epoch}"))),
            };
        }
        let batch_count = r.u8()?;
        if usize::from(batch_count) > NUM_BATCHES_TO_RETAIN {
            return Err(corrupt(format!("{batch_count} batches for one producer")));
        }
        let mut previous_last_offset = -1;
        for _ in 0..batch_count {
            let batch = BatchMetadata {
                first_seq: r.i32()?,
                last_seq: r.i32()?,
                last_offset: r.i64()?,
                offset_delta: r.i32()?,
                max_timestamp: r.i64()?,
            };
            if batch.offset_delta < 0
                || batch.first_offset() <= previous_last_offset
                || batch.last_offset >= offset
            {
                return Err(corrupt(format!(
                    "batch offsets {}..={} do not fit",
                    batch.first_offset(),
                    batch.last_offset
                )));
            }
            previous_last_offset = batch.last_offset;
            entry.batches[usize::from(entry.batch_count)] = batch;
            entry.batch_count += 1;
        }
        entries.push((producer_id, entry));
    }
    if r.pos != bytes.len() {
        return Err(corrupt(format!(
            "{} bytes after the last producer",
            bytes.len() - r.pos
        )));
    }
    Ok(entries)
}

/// Reads big-endian integers; running out of bytes is corruption.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let bytes = self
            .buf
            .get(self.pos..self.pos + N)
            .ok_or_else(|| corrupt("truncated snapshot"))?;
        self.pos += N;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take::<1>()?[0])
    }

    fn u16(&mut self) -> io::Result<u16> {
        self.take().map(u16::from_be_bytes)
    }

    fn i16(&mut self) -> io::Result<i16> {
        self.take().map(i16::from_be_bytes)
    }

    fn u32(&mut self) -> io::Result<u32> {
        self.take().map(u32::from_be_bytes)
    }

    fn i32(&mut self) -> io::Result<i32> {
        self.take().map(i32::from_be_bytes)
    }

    fn i64(&mut self) -> io::Result<i64> {
        self.take().map(i64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests;
