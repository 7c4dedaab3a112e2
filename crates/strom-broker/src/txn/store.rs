//! What the transaction coordinator keeps in `__transaction_state`: one
//! record per change of a transactional id's state, key the id, value the
//! whole state (a null value deletes the id). The topic is compacted, so the
//! latest record per id is what survives; the coordinator replays its
//! partitions at start.
//!
//! Records use Kafka's own schema (`TransactionLogKey` and
//! `TransactionLogValue` version 0), so Kafka's tools could read them:
//!
//! ```text
//! key:    version i16 (0), transactional_id string
//! value:  version i16 (0), producer_id i64, producer_epoch i16,
//!         transaction_timeout_ms i32, transaction_status i8,
//!         transaction_partitions [topic string, partition_ids [i32]] (null
//!         when none), transaction_last_update_timestamp_ms i64,
//!         transaction_start_timestamp_ms i64
//! ```
//!
//! Strings are an i16 length and UTF-8, arrays an i32 count (-1 for null),
//! integers big-endian. A transactional id goes to the partition
//! `abs(javaHashCode(id)) % transaction.state.log.num.partitions`, as Kafka
//! places it.

use std::collections::BTreeSet;

use bytes::Bytes;
use strom_protocol::builder::RecordBatchBuilder;
use strom_protocol::compression::Compression;
use strom_protocol::record;

pub use strom_protocol::topic::TRANSACTION_STATE_TOPIC;
/// Bound on one decoded record batch of the topic when replaying.
const MAX_REPLAY_BATCH_BYTES: usize = 64 << 20;
/// The key and value versions this code writes (and the only ones it reads).
const KEY_VERSION: i16 = 0;
const VALUE_VERSION: i16 = 0;

/// Kafka's `TransactionState`, with its persisted ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnStatus {
    /// No transaction (after InitProducerId).
    Empty,
    /// Partitions were added; the transaction is open.
    Ongoing,
    /// EndTxn(commit) accepted; markers being written.
    PrepareCommit,
    /// EndTxn(abort), a timeout or a fencing InitProducerId; markers being written.
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    /// The id expired (not written by this code yet).
    Dead,
    /// Kafka writes it while fencing an epoch; read for compatibility.
    PrepareEpochFence,
}

impl TxnStatus {
    pub fn id(self) -> i8 {
        match self {
            Self::Empty => 0,
            Self::Ongoing => 1,
            Self::PrepareCommit => 2,
            Self::PrepareAbort => 3,
            Self::CompleteCommit => 4,
            Self::CompleteAbort => 5,
            Self::Dead => 6,
            Self::PrepareEpochFence => 7,
        }
    }

    pub fn from_id(id: i8) -> Option<Self> {
        Some(match id {
            0 => Self::Empty,
            1 => Self::Ongoing,
            2 => Self::PrepareCommit,
            3 => Self::PrepareAbort,
            4 => Self::CompleteCommit,
            5 => Self::CompleteAbort,
            6 => Self::Dead,
            7 => Self::PrepareEpochFence,
            _ => return None,
        })
    }

    /// Kafka's names, as DescribeTransactions and ListTransactions report them.
    pub fn name(self) -> &'static str {
        match self {
            Self::Empty => "Empty",
            Self::Ongoing => "Ongoing",
            Self::PrepareCommit => "PrepareCommit",
            Self::PrepareAbort => "PrepareAbort",
            Self::CompleteCommit => "CompleteCommit",
            Self::CompleteAbort => "CompleteAbort",
            Self::Dead => "Dead",
            Self::PrepareEpochFence => "PrepareEpochFence",
        }
    }
}

/// One transactional id's persisted state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnValue {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub status: TxnStatus,
    /// The partitions of the open (or ending) transaction.
    pub partitions: BTreeSet<(String, i32)>,
    pub last_update_ms: i64,
    /// When the transaction started (its first AddPartitionsToTxn), -1 if none.
    pub start_ms: i64,
}

/// One record: a transactional id and its state, or `None` to delete it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnRecord {
    pub transactional_id: String,
    pub value: Option<TxnValue>,
}

/// The partition of `transactional_id`: Kafka's
/// `Utils.abs(transactionalId.hashCode()) % partitions`.
pub fn partition_for(transactional_id: &str, partitions: i32) -> i32 {
    crate::group::store::partition_for(transactional_id, partitions)
}

fn put_string(buf: &mut Vec<u8>, s: &str) -> Result<(), String> {
    let len = i16::try_from(s.len()).map_err(|_| format!("string of {} bytes", s.len()))?;
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
    Ok(())
}

/// The record key of `transactional_id`.
pub fn encode_key(transactional_id: &str) -> Result<Vec<u8>, String> {
    let mut key = Vec::with_capacity(4 + transactional_id.len());
    key.extend_from_slice(&KEY_VERSION.to_be_bytes());
    put_string(&mut key, transactional_id)?;
    Ok(key)
}

/// The record value of `value`.
pub fn encode_value(value: &TxnValue) -> Result<Vec<u8>, String> {
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(&VALUE_VERSION.to_be_bytes());
    buf.extend_from_slice(&value.producer_id.to_be_bytes());
    buf.extend_from_slice(&value.producer_epoch.to_be_bytes());
    buf.extend_from_slice(&value.timeout_ms.to_be_bytes());
    buf.extend_from_slice(&value.status.id().to_be_bytes());
    if value.partitions.is_empty() {
        buf.extend_from_slice(&(-1i32).to_be_bytes());
    } else {
        let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
        for (topic, partition) in &value.partitions {
            match topics.last_mut() {
                Some((t, ps)) if *t == topic.as_str() => ps.push(*partition),
                _ => topics.push((topic, vec![*partition])),
            }
        }
        let count = i32::try_from(topics.len()).map_err(|_| "too many topics".to_owned())?;
        buf.extend_from_slice(&count.to_be_bytes());
        for (topic, partitions) in topics {
            put_string(&mut buf, topic)?;
            let count =
                i32::try_from(partitions.len()).map_err(|_| "too many partitions".to_owned())?;
            buf.extend_from_slice(&count.to_be_bytes());
            for p in partitions {
                buf.extend_from_slice(&p.to_be_bytes());
            }
        }
    }
    buf.extend_from_slice(&value.last_update_ms.to_be_bytes());
    buf.extend_from_slice(&value.start_ms.to_be_bytes());
    Ok(buf)
}

/// Encodes records as one uncompressed batch.
pub fn encode(records: &[TxnRecord], timestamp_ms: i64) -> Result<Bytes, String> {
    let mut builder = RecordBatchBuilder::new(Compression::None);
    for r in records {
        let key = encode_key(&r.transactional_id)?;
        let value = r.value.as_ref().map(encode_value).transpose()?;
        builder.push(timestamp_ms, Some(&key), value.as_deref(), &[]);
    }
    builder.build().map_err(|e| e.to_string())
}

/// Reads big-endian fields; running out of bytes is an error.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }

    fn i8(&mut self) -> Option<i8> {
        self.take(1).map(|b| i8::from_be_bytes([b[0]]))
    }

    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self) -> Option<i64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(i64::from_be_bytes(a))
    }

    fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.i16()?).ok()?;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }

    /// An array count: `None` for a count that cannot fit the bytes left
    /// (each element takes at least `min_element_bytes`).
    fn count(&mut self, min_element_bytes: usize) -> Option<Option<usize>> {
        let count = self.i32()?;
        if count == -1 {
            return Some(None);
        }
        let count = usize::try_from(count).ok()?;
        (count.checked_mul(min_element_bytes)? <= self.buf.len()).then_some(Some(count))
    }
}

/// Reads a record key; `None` if it is not a version-0 transaction log key.
pub fn decode_key(key: &[u8]) -> Option<String> {
    let mut r = Reader { buf: key };
    if r.i16()? != KEY_VERSION {
        return None;
    }
    r.string()
}

/// Reads a record value; `None` if it is not a version-0 transaction log value.
pub fn decode_value(value: &[u8]) -> Option<TxnValue> {
    let mut r = Reader { buf: value };
    if r.i16()? != VALUE_VERSION {
        return None;
    }
    let producer_id = r.i64()?;
    let producer_epoch = r.i16()?;
    let timeout_ms = r.i32()?;
    let status = TxnStatus::from_id(r.i8()?)?;
    let mut partitions = BTreeSet::new();
    // A topic takes at least its string length and partition count.
    if let Some(topics) = r.count(6)? {
        for _ in 0..topics {
            let topic = r.string()?;
            let count = r.count(4)?.unwrap_or(0);
            for _ in 0..count {
                partitions.insert((topic.clone(), r.i32()?));
            }
        }
    }
    Some(TxnValue {
        producer_id,
        producer_epoch,
        timeout_ms,
        status,
        partitions,
        last_update_ms: r.i64()?,
        start_ms: r.i64()?,
    })
}

/// Decodes the records of one stored batch; records that are not readable
/// are skipped with a log line, never trusted.
pub fn decode(batch: &Bytes) -> Vec<TxnRecord> {
    let mut out = Vec::new();
    let records = match record::records(batch, MAX_REPLAY_BATCH_BYTES) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "skipping an unreadable batch in {TRANSACTION_STATE_TOPIC}");
            return out;
        }
    };
    for r in records {
        let Ok(r) = r else {
            tracing::warn!("skipping an unreadable record in {TRANSACTION_STATE_TOPIC}");
            break;
        };
        let Some(transactional_id) = r.key.as_deref().and_then(decode_key) else {
            tracing::warn!("skipping a record with an unknown key in {TRANSACTION_STATE_TOPIC}");
            continue;
        };
        let value = match r.value.as_deref() {
            None => None,
            Some(v) => match decode_value(v) {
                Some(v) => Some(v),
                None => {
                    tracing::warn!(
                        transactional_id,
                        "skipping an unreadable value in {TRANSACTION_STATE_TOPIC}"
                    );
                    continue;
                }
            },
        };
        out.push(TxnRecord {
            transactional_id,
            value,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let records = vec![
            TxnRecord {
                transactional_id: "tx-1".into(),
                value: Some(TxnValue {
                    producer_id: 1000,
                    producer_epoch: 3,
                    timeout_ms: 60_000,
                    status: TxnStatus::Ongoing,
                    partitions: [
                        ("a".to_owned(), 0),
                        ("a".to_owned(), 2),
                        ("b".to_owned(), 1),
                    ]
                    .into_iter()
                    .collect(),
                    last_update_ms: 5,
                    start_ms: 4,
                }),
            },
            TxnRecord {
                transactional_id: "tx-2".into(),
                value: Some(TxnValue {
                    producer_id: 1001,
                    producer_epoch: 0,
                    timeout_ms: 1,
                    status: TxnStatus::CompleteAbort,
                    partitions: BTreeSet::new(),
                    last_update_ms: 9,
                    start_ms: -1,
                }),
            },
            TxnRecord {
                transactional_id: "tx-3".into(),
                value: None,
            },
        ];
        let batch = encode(&records, 1).unwrap();
        assert_eq!(decode(&batch), records);
    }

    #[test]
    fn hostile_values_are_refused() {
        let value = TxnValue {
            producer_id: 1,
            producer_epoch: 0,
            timeout_ms: 1,
            status: TxnStatus::Ongoing,
            partitions: [("t".to_owned(), 0)].into_iter().collect(),
            last_update_ms: 0,
            start_ms: 0,
        };
        let bytes = encode_value(&value).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode_value(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        // A partition count far beyond the bytes is refused, not allocated.
        let mut huge = bytes.clone();
        let count_at = 2 + 8 + 2 + 4 + 1 + 4 + 2 + 1;
        huge[count_at..count_at + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(decode_value(&huge).is_none());
        let mut bad_status = bytes;
        bad_status[2 + 8 + 2 + 4] = 42;
        assert!(decode_value(&bad_status).is_none());
    }
}
