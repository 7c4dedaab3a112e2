//! Record validation of produced batches: Kafka's LogValidator checks that
//! the storage layer does not make (it checks sizes, CRCs and producer
//! sequences), and recompression to the topic's `compression.type`.

use bytes::{Bytes, BytesMut};
use strom_protocol::builder::RecordBatchBuilder;
use strom_protocol::compression::{Compression, CompressionError};
use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::StrBytes;
use strom_protocol::messages::kafka::produce_response::BatchIndexAndErrorMessage;
use strom_protocol::record;
use strom_protocol::record_batch::{self, TimestampType};
use strom_storage::{LogConfig, TxnVerification};

use super::Partition;
use crate::memory::DecompressionBudget;

/// How many times its topic's `max.message.bytes` a produced batch may
/// hold once decompressed. Kafka has no such bound (it reads a compressed
/// batch a record at a time); we inflate a batch whole to check it, so a
/// bomb (a few KiB of zstd that inflate to gigabytes) must stop somewhere.
/// Producers close batches far earlier: librdkafka at `batch.size` (1 MB
/// uncompressed), Java at `batch.size` compressed (16 KiB by default,
/// estimated from the ratio so far), so 64 times 1 MiB leaves room for
/// highly compressible records. A batch past it gets MESSAGE_TOO_LARGE,
/// as a batch past `max.message.bytes` does: Java producers then split the
/// batch and send the halves, and nothing retries it unchanged (a bomb is
/// not retried either; CORRUPT_MESSAGE would be, being retriable).
const MAX_DECOMPRESSION_RATIO: usize = 64;
/// Memory taken per byte of decompressed output, as counted against the
/// broker's decompression budget: the output, the codec's own window (zstd
/// keeps up to as much again) and the copy a growing buffer makes.
const DECOMPRESSION_MEMORY_FACTOR: usize = 3;
/// One more output's worth when the batch is recompressed to the topic's
/// `compression.type`: the builder holds the records uncompressed.
const RECOMPRESSION_MEMORY_FACTOR: usize = DECOMPRESSION_MEMORY_FACTOR + 1;
/// Record errors reported per partition, as a bound on the response size.
const MAX_RECORD_ERRORS: usize = 100;

/// What the record checks of one partition need to know.
#[derive(Clone)]
pub(crate) struct ProduceChecks {
    pub(crate) log: LogConfig,
    pub(crate) compact: bool,
    pub(crate) before_max_ms: i64,
    pub(crate) after_max_ms: i64,
    pub(crate) min_insync_replicas: usize,
    pub(crate) isr: usize,
    /// The topic's `compression.type` codec and level, unless `producer`.
    pub(crate) recompress: Option<(Compression, Option<i32>)>,
    /// KIP-890 part 1: how the append checks the producer's transactional
    /// batches (set by the produce path's verification).
    pub(crate) txn_verification: TxnVerification,
}

impl Partition {
    /// The checks Kafka's LogValidator makes on the records of each batch,
    /// compressed or not: offsets inside the batch run from 0 without gaps, and
    /// there are as many records as the header says (the record iterator checks
    /// that); a compacted topic needs
    /// keys; CreateTime timestamps lie within `message.timestamp.before.max.ms`
    /// and `message.timestamp.after.max.ms` of now.
    ///
    /// When the topic's `compression.type` names a codec other than the batch's,
    /// the batch is rebuilt with that codec (and the topic's level), keeping its
    /// producer fields, timestamps and offsets: the rewritten records come back.
    /// Otherwise `None`: the producer's bytes are stored as they came.
    ///
    /// Decompression takes memory from the broker's `budget` as the records
    /// come out; timestamps are checked against `now`.
    pub(crate) fn validate_records(
        &self,
        records: &Bytes,
        checks: &ProduceChecks,
        budget: &DecompressionBudget,
        now: i64,
    ) -> Result<Option<Bytes>, (ErrorCode, Vec<BatchIndexAndErrorMessage>)> {
        let create_time = checks.log.message_timestamp_type == TimestampType::CreateTime;
        let low = now.saturating_sub(checks.before_max_ms);
        let high = now.saturating_add(checks.after_max_ms);
        let mut errors = Vec::new();
        let mut code = ErrorCode::InvalidRecord;
        let mut rewritten: Option<BytesMut> = None;
        let corrupt = |position: i32, message: String| {
            Err((
                ErrorCode::CorruptMessage,
                vec![record_error(position, message)],
            ))
        };
        // Kafka's LogValidator: a v2 produce carries exactly one batch per
        // partition. This also bounds what one partition makes us decompress.
        if record_batch::batches(records)
            .nth(1)
            .is_some_and(|b| b.is_ok())
        {
            return Err((
                ErrorCode::InvalidRecord,
                vec![record_error(
                    0,
                    "Compressed outer record has more than one batch".to_owned(),
                )],
            ));
        }
        for batch in record_batch::batches(records) {
            // Structural errors are the storage layer's to report precisely.
            let Ok(batch) = batch else { return Ok(None) };
            if record_batch::validate_batch(batch.bytes).is_err() {
                return Ok(None);
            }
            let header = batch.header;
            let target = checks
                .recompress
                .filter(|(codec, _)| header.compression() != Some(*codec));
            let mut builder = target.map(|(codec, level)| {
                RecordBatchBuilder::new(codec)
                    .compression_level(level)
                    .producer(
                        header.producer_id,
                        header.producer_epoch,
                        header.base_sequence,
                    )
                    .transactional(header.is_transactional())
                    .timestamp_type(header.timestamp_type())
            });
            let factor = if builder.is_some() {
                RECOMPRESSION_MEMORY_FACTOR
            } else {
                DECOMPRESSION_MEMORY_FACTOR
            };
            // The batch may decompress to this much, and no more than its share
            // of the whole budget.
            let bound = usize::try_from(checks.log.max_message_bytes)
                .unwrap_or(usize::MAX)
                .saturating_mul(MAX_DECOMPRESSION_RATIO)
                .min(budget.total() / factor);
            let batch_bytes = records.slice_ref(batch.bytes);
            // Memory is taken as the records come out; when the budget runs out
            // part-way, this batch gives back what it holds and waits for its
            // whole bound (held by nobody else while waiting, so no deadlock).
            let mut lease = budget.lease();
            let first = record::records_budgeted(&batch_bytes, bound, &mut |n| {
                lease.try_grow(n.saturating_mul(factor))
            });
            let (_lease, decoded) = match first {
                Err(record::RecordError::Codec(CompressionError::OverBudget)) => {
                    drop(lease);
                    let whole = budget.wait_for(bound.saturating_mul(factor));
                    (whole, record::records(&batch_bytes, bound))
                }
                other => (lease, other),
            };
            let iter = match decoded {
                Ok(iter) => iter,
                Err(record::RecordError::TooLarge { max }) => {
                    return Err((
                        ErrorCode::MessageTooLarge,
                        vec![record_error(
                            0,
                            format!(
                                "The batch decompresses to more than {max} bytes ({MAX_DECOMPRESSION_RATIO} times max.message.bytes, within the broker's decompression budget)"
                            ),
                        )],
                    ));
                }
                Err(e) => return corrupt(0, format!("Records do not decode: {e}")),
            };
            for (i, r) in iter.enumerate() {
                let position = i32::try_from(i).unwrap_or(i32::MAX);
                let r = match r {
                    Ok(r) => r,
                    // Kafka: "Incorrect declared batch size" is an invalid record
                    // (not retried); undecodable bytes are corrupt.
                    Err(
                        e @ (record::RecordError::TooFewRecords { .. }
                        | record::RecordError::TrailingBytes { .. }),
                    ) => {
                        return Err((
                            ErrorCode::InvalidRecord,
                            vec![record_error(
                                position,
                                format!("Incorrect declared batch size: {e}"),
                            )],
                        ));
                    }
                    Err(e) => return corrupt(position, format!("Record {i} does not decode: {e}")),
                };
                if r.offset_delta != position {
                    return Err((
                        ErrorCode::InvalidRecord,
                        vec![record_error(
                            position,
                            format!(
                                "Inner record offset delta {} where {i} was expected",
                                r.offset_delta
                            ),
                        )],
                    ));
                }
                if let Some(builder) = builder.as_mut() {
                    let headers: Vec<(&str, Option<&[u8]>)> = r
                        .headers
                        .iter()
                        .map(|h| (h.key.as_str(), h.value.as_deref()))
                        .collect();
                    builder.push_with_offset_delta(
                        r.offset_delta,
                        r.timestamp(&header),
                        r.key.as_deref(),
                        r.value.as_deref(),
                        &headers,
                    );
                }
                if errors.len() >= MAX_RECORD_ERRORS {
                    continue;
                }
                if checks.compact && r.key.is_none() {
                    errors.push(record_error(
                    position,
                    format!(
                        "Compacted topic cannot accept message without key in topic partition {}-{}.",
                        self.topic, self.index
                    ),
                ));
                } else if create_time {
                    let ts = r.timestamp(&header);
                    if ts < low || ts > high {
                        code = ErrorCode::InvalidTimestamp;
                        errors.push(record_error(
                        position,
                        format!(
                            "Timestamp {ts} of message with offset {i} is out of range. The timestamp should be within [{low}, {high}]"
                        ),
                    ));
                    }
                }
            }
            if let Some(builder) = builder {
                let built = builder.build().map_err(|e| {
                    (
                        ErrorCode::UnknownServerError,
                        vec![record_error(
                            0,
                            format!("Recompressing the batch failed: {e}"),
                        )],
                    )
                })?;
                let out = rewritten.get_or_insert_with(|| {
                    // The batches before this one were stored as they came.
                    BytesMut::from(&records[..batch_start(records, batch.bytes)])
                });
                out.extend_from_slice(&built);
            } else if let Some(out) = rewritten.as_mut() {
                out.extend_from_slice(batch.bytes);
            }
        }
        if errors.is_empty() {
            Ok(rewritten.map(BytesMut::freeze))
        } else {
            Err((code, errors))
        }
    }
}

/// Where `batch` (a slice of `records`) starts in it.
fn batch_start(records: &[u8], batch: &[u8]) -> usize {
    (batch.as_ptr() as usize).saturating_sub(records.as_ptr() as usize)
}

fn record_error(index: i32, message: String) -> BatchIndexAndErrorMessage {
    BatchIndexAndErrorMessage::default()
        .with_batch_index(index)
        .with_batch_index_error_message(Some(StrBytes::from_string(message)))
}
