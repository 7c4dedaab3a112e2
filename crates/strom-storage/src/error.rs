//! Errors of the storage engine, one enum per operation family.
//!
//! The broker maps them to Kafka error codes; each variant says which.

use std::io;

use strom_protocol::error_code::ErrorCode;
use strom_protocol::record_batch::BatchError;

/// Why an append was refused. Nothing was written when one is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The broker no longer leads the partition it was asked to append to as
    /// leader (Kafka: NOT_LEADER_OR_FOLLOWER).
    #[error("this broker is not the partition's leader")]
    NotLeader,
    /// Length or CRC32C of a batch is wrong (Kafka: CORRUPT_MESSAGE).
    #[error("corrupt record batch: {0}")]
    Corrupt(BatchError),
    /// A batch is not magic 2 (Kafka: INVALID_RECORD for magic 0 and 1 from a
    /// v3+ produce request, CORRUPT_MESSAGE for magic values that do not exist).
    #[error("record batch magic {0} is not supported; only magic 2 is")]
    UnsupportedMagic(i8),
    /// A batch is larger than `max.message.bytes` (Kafka: MESSAGE_TOO_LARGE).
    #[error("record batch of {size} bytes exceeds max.message.bytes {max}")]
    MessageTooLarge { size: usize, max: u32 },
    /// The batches together are larger than a whole segment (Kafka:
    /// RECORD_LIST_TOO_LARGE).
    #[error("record batches of {size} bytes exceed segment.bytes {max}")]
    LargerThanSegment { size: usize, max: u64 },
    /// The batch breaks a rule for client writes: base offset not 0, record
    /// count not matching the offset range, a control batch (Kafka: INVALID_RECORD).
    #[error("invalid record batch: {0}")]
    InvalidRecord(&'static str),
    /// A replicated batch does not continue the log (offsets not increasing).
    #[error(
        "replicated batch at offset {base_offset} does not follow log end offset {log_end_offset}"
    )]
    OffsetOutOfOrder {
        base_offset: i64,
        log_end_offset: i64,
    },
    /// An idempotent or transactional producer wrote with an epoch older than
    /// the one the log knows: a newer instance of it has taken over (Kafka:
    /// INVALID_PRODUCER_EPOCH for produce requests; PRODUCER_FENCED where the
    /// older error is expected).
    #[error(
        "producer {producer_id} wrote with epoch {epoch}, older than its current epoch {current_epoch}"
    )]
    InvalidProducerEpoch {
        producer_id: i64,
        epoch: i16,
        current_epoch: i16,
    },
    /// An idempotent producer's batch does not continue its sequence: a gap, a
    /// batch seen too long ago to be recognised as a retry, or a new epoch
    /// that does not start at 0 (Kafka: OUT_OF_ORDER_SEQUENCE_NUMBER).
    #[error("producer {producer_id} sent sequence {found}, expected {expected}")]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        found: i32,
    },
    /// A transaction marker from a coordinator older than the one that wrote
    /// the producer's last marker (Kafka: TRANSACTION_COORDINATOR_FENCED).
    #[error(
        "marker for producer {producer_id} from coordinator epoch {coordinator_epoch}, older than {current}"
    )]
    TransactionCoordinatorFenced {
        producer_id: i64,
        coordinator_epoch: i32,
        current: i32,
    },
    /// A producer with an open transaction wrote a batch that is not
    /// transactional (Kafka: INVALID_TXN_STATE).
    #[error("producer {producer_id} has an open transaction and wrote a non-transactional batch")]
    InvalidTxnState { producer_id: i64 },
    /// No batch in the request.
    #[error("no record batch to append")]
    Empty,
    /// The file system failed; the log was put back to its last good state or,
    /// if that failed too, taken offline (Kafka: KAFKA_STORAGE_ERROR).
    #[error("storage I/O error: {0}")]
    Io(#[from] io::Error),
    /// The log was taken offline after an I/O error or closed (Kafka:
    /// KAFKA_STORAGE_ERROR).
    #[error("log is offline")]
    Offline,
}

impl AppendError {
    /// The Kafka error code a produce request gets for this refusal: the one
    /// mapping from append errors to codes. Exhaustive here, in the crate
    /// that defines the variants, so a new variant cannot go unmapped.
    /// Coordinators translate some codes further, as Kafka's do (a too-large
    /// offset commit is INVALID_COMMIT_OFFSET_SIZE).
    pub fn error_code(&self) -> ErrorCode {
        match self {
            Self::NotLeader => ErrorCode::NotLeaderOrFollower,
            Self::Corrupt(_) => ErrorCode::CorruptMessage,
            // Magic 0 and 1 in a v3+ produce request are INVALID_RECORD in
            // Kafka; magic values that do not exist are corrupt data.
            Self::UnsupportedMagic(0 | 1) => ErrorCode::InvalidRecord,
            Self::UnsupportedMagic(_) => ErrorCode::CorruptMessage,
            Self::MessageTooLarge { .. } => ErrorCode::MessageTooLarge,
            Self::LargerThanSegment { .. } => ErrorCode::RecordListTooLarge,
            Self::InvalidRecord(_) | Self::Empty | Self::OffsetOutOfOrder { .. } => {
                ErrorCode::InvalidRecord
            }
            Self::InvalidProducerEpoch { .. } => ErrorCode::InvalidProducerEpoch,
            Self::OutOfOrderSequence { .. } => ErrorCode::OutOfOrderSequenceNumber,
            Self::TransactionCoordinatorFenced { .. } => ErrorCode::TransactionCoordinatorFenced,
            Self::InvalidTxnState { .. } => ErrorCode::InvalidTxnState,
            // Kafka answers a partition on a failed log directory with
            // KAFKA_STORAGE_ERROR (ReplicaManager's HostedPartition.Offline).
            Self::Io(_) | Self::Offline => ErrorCode::KafkaStorageError,
        }
    }
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The offset is below the log start or above the log end (Kafka:
    /// OFFSET_OUT_OF_RANGE).
    #[error("offset {offset} is out of range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        offset: i64,
        log_start_offset: i64,
        log_end_offset: i64,
    },
    #[error("storage I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("log is offline")]
    Offline,
}

/// Errors of opening, truncating, deleting and other maintenance.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("storage I/O error on {path}: {source}")]
    Io { path: String, source: io::Error },
    /// Something on disk cannot be used and cannot be repaired automatically.
    #[error("corrupt log data: {0}")]
    Corruption(String),
    /// A caller asked for something the log cannot do (offset out of range).
    #[error("{0}")]
    InvalidRequest(String),
    #[error("log is offline")]
    Offline,
}

impl StorageError {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: io::Error) -> Self {
        Self::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

impl From<ReadError> for StorageError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io(source) => Self::Io {
                path: String::new(),
                source,
            },
            ReadError::Offline => Self::Offline,
            other => Self::InvalidRequest(other.to_string()),
        }
    }
}
