//! Produce: append producer batches to partition leaders.
//!
//! Per partition, in Kafka's order: the topic and partition exist and this
//! broker leads it; with acks=all, the in-sync replicas reach
//! `min.insync.replicas`; the batches pass the storage checks (length, magic,
//! size, CRC, idempotent sequence) and the record checks that need the records
//! themselves (keys on compacted topics, `message.timestamp.*.max.ms`,
//! offsets inside the batch). Stored bytes are the producer's bytes.
//!
//! acks=0 gets no response; if anything failed, the connection is closed so
//! the client notices, as Kafka does.
//!
//! KIP-890 part 1: a transactional batch is taken only for a partition of its
//! producer's ongoing transaction, as the transaction coordinator knows it;
//! the coordinator's state stays locked until the appends are done, so no
//! marker can end the transaction between the check and the append.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use strom_controller::MetadataImage;
use strom_protocol::builder::RecordBatchBuilder;
use strom_protocol::compression::{Compression, CompressionError};
use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::StrBytes;
use strom_protocol::messages::kafka::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use strom_protocol::messages::kafka::{ProduceRequest, ProduceResponse};
use strom_protocol::record;
use strom_protocol::record_batch::{self, TimestampType};
use strom_storage::{AppendError, AppendOrigin, LogConfig};

use super::{Reply, RequestContext, respond};
use crate::broker::Broker;
use crate::replica::Partition;

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

/// Where to append and what to check, or the error code and message why not.
type Target = Result<(Arc<Partition>, Bytes, PartitionChecks), (ErrorCode, Option<String>)>;

/// One partition's work.
struct Work {
    topic: usize,
    index: i32,
    target: Target,
}

/// What the record checks of one partition need to know.
#[derive(Clone)]
struct PartitionChecks {
    log: LogConfig,
    compact: bool,
    before_max_ms: i64,
    after_max_ms: i64,
    min_insync_replicas: usize,
    isr: usize,
    /// The topic's `compression.type` codec and level, unless `producer`.
    recompress: Option<(Compression, Option<i32>)>,
}

/// Answers a produce request: no answer for acks=0, and a failed acks=0
/// produce closes the connection so the client notices.
pub async fn handle(
    broker: &Arc<Broker>,
    request: ProduceRequest,
    ctx: &RequestContext<'_>,
) -> Reply {
    match produce(broker, request, ctx.api_version()).await {
        Ok(Some(response)) => respond(ctx.header(), &response),
        Ok(None) => Reply::None,
        Err(reason) => Reply::Close(reason),
    }
}

/// Appends a produce request's batches; `Err` closes the connection (acks=0
/// errors).
async fn produce(
    broker: &Arc<Broker>,
    request: ProduceRequest,
    version: i16,
) -> Result<Option<ProduceResponse>, String> {
    let acks = request.acks;
    let transactional_id = request.transactional_id.as_ref().map(|t| t.to_string());
    let image = broker.image();
    let mut topics = Vec::with_capacity(request.topic_data.len());
    let mut work = Vec::new();
    for (t, topic_data) in request.topic_data.into_iter().enumerate() {
        let name = if version >= 13 {
            image
                .topic_by_id(&topic_data.topic_id)
                .map(|t| t.name.clone())
        } else {
            Some(topic_data.name.0.to_string())
        };
        topics.push((topic_data.name.clone(), topic_data.topic_id));
        for p in topic_data.partition_data {
            let target = if !matches!(acks, -1..=1) {
                Err((ErrorCode::InvalidRequiredAcks, None))
            } else {
                resolve(broker, &image, name.as_deref(), version, p.index, p.records)
            };
            work.push(Work {
                topic: t,
                index: p.index,
                target,
            });
        }
    }

    let txn_guard = if work.iter().any(
        |w| matches!(&w.target, Ok((_, records, _)) if transactional_producer(records).is_some()),
    ) {
        let state = broker.txn.lock_owned().await;
        for w in &mut work {
            let Ok((partition, records, _)) = &w.target else {
                continue;
            };
            let Some((producer_id, epoch)) = transactional_producer(records) else {
                continue;
            };
            let verified = match &transactional_id {
                Some(id) => state.verify(id, producer_id, epoch, &partition.topic, partition.index),
                None => Err(ErrorCode::InvalidTxnState),
            };
            if let Err(code) = verified {
                let code = match code {
                    // Produce keeps the old epoch error (KIP-588).
                    ErrorCode::InvalidProducerEpoch => ErrorCode::InvalidProducerEpoch,
                    _ => ErrorCode::InvalidTxnState,
                };
                w.target = Err((
                    code,
                    Some(format!(
                        "transactional produce to {}-{} outside the producer's ongoing transaction",
                        partition.topic, partition.index
                    )),
                ));
            }
        }
        Some(state)
    } else {
        None
    };

    let broker_for_append = Arc::clone(broker);
    let results = super::blocking(move || {
        // Held until the appends are in the log (see the module docs).
        let _txn_guard = txn_guard;
        work.into_iter()
            .map(|w| {
                let response = match w.target {
                    Err((code, message)) => error_response(w.index, code, message),
                    Ok((partition, records, checks)) => {
                        append(&broker_for_append, &partition, &records, &checks, acks)
                    }
                };
                (w.topic, response)
            })
            .collect::<Vec<_>>()
    })
    .await
    .ok_or("produce task failed")?;

    if acks == 0 {
        if let Some((_, failed)) = results.iter().find(|(_, r)| r.error_code != 0) {
            return Err(format!(
                "produce with acks=0 failed with error {}",
                ErrorCode::from_code(failed.error_code)
                    .map_or_else(|| failed.error_code.to_string(), |e| e.to_string())
            ));
        }
        return Ok(None);
    }
    let mut responses: Vec<TopicProduceResponse> = topics
        .into_iter()
        .map(|(name, topic_id)| {
            TopicProduceResponse::default()
                .with_name(name)
                .with_topic_id(topic_id)
        })
        .collect();
    for (t, mut partition) in results {
        // Fields a version does not carry stay at their defaults.
        if version < 5 {
            partition.log_start_offset = -1;
        }
        if version < 8 {
            partition.record_errors = Vec::new();
            partition.error_message = None;
        }
        responses[t].partition_responses.push(partition);
    }
    Ok(Some(ProduceResponse::default().with_responses(responses)))
}

fn resolve(
    broker: &Broker,
    image: &MetadataImage,
    name: Option<&str>,
    version: i16,
    index: i32,
    records: Option<Bytes>,
) -> Target {
    let unknown = if version >= 13 {
        ErrorCode::UnknownTopicId
    } else {
        ErrorCode::UnknownTopicOrPartition
    };
    let name = name.ok_or((unknown, None))?;
    let topic = image.topic(name).ok_or((unknown, None))?;
    if super::group::is_internal(name) {
        // Only the coordinators write there (Kafka: internal topics refuse clients).
        return Err((
            ErrorCode::InvalidTopicException,
            Some(format!("Cannot append to internal topic {name}")),
        ));
    }
    let meta = image
        .partition(name, index)
        .ok_or((ErrorCode::UnknownTopicOrPartition, None))?;
    let partition = broker.replicas.get(name, index).ok_or_else(|| {
        // Kafka answers KAFKA_STORAGE_ERROR for a partition whose log
        // directory failed: the client learns why, not a leadership change.
        match broker.replicas.storage_error(name, index) {
            Some(e) => (
                ErrorCode::KafkaStorageError,
                Some(format!(
                    "The partition's log is unavailable on this broker: {e}"
                )),
            ),
            None => (ErrorCode::NotLeaderOrFollower, None),
        }
    })?;
    if !partition.is_leader() {
        return Err((ErrorCode::NotLeaderOrFollower, None));
    }
    let records = records.ok_or((
        ErrorCode::CorruptMessage,
        Some("Produce request without records".to_owned()),
    ))?;
    let value = |key: &str| -> String {
        crate::config::topic_config_def(key)
            .map(|def| broker.config.topic_value(def, image, &topic.configs).value)
            .unwrap_or_default()
    };
    let log = (*partition.log.config()).clone();
    let checks = PartitionChecks {
        compact: log.compact,
        log,
        before_max_ms: value("message.timestamp.before.max.ms")
            .parse()
            .unwrap_or(i64::MAX),
        after_max_ms: value("message.timestamp.after.max.ms")
            .parse()
            .unwrap_or(i64::MAX),
        min_insync_replicas: value("min.insync.replicas").parse().unwrap_or(1),
        isr: meta.isr.len(),
        recompress: target_compression(&value),
    };
    Ok((partition, records, checks))
}

/// The producer id and epoch of a transactional batch.
fn transactional_producer(records: &[u8]) -> Option<(i64, i16)> {
    let header = record_batch::BatchHeader::parse(records).ok()?;
    (header.is_transactional() && !header.is_control())
        .then_some((header.producer_id, header.producer_epoch))
}

/// The codec and level a topic's `compression.type` asks for, or `None` for
/// `producer` (keep what the producer sent).
fn target_compression(value: &dyn Fn(&str) -> String) -> Option<(Compression, Option<i32>)> {
    let codec = match value("compression.type").as_str() {
        "uncompressed" => Compression::None,
        name => Compression::from_name(name)?,
    };
    let level = match codec {
        Compression::Gzip => value("compression.gzip.level")
            .parse()
            .ok()
            .filter(|l| *l != -1),
        Compression::Lz4 => value("compression.lz4.level").parse().ok(),
        Compression::Zstd => value("compression.zstd.level").parse().ok(),
        Compression::None | Compression::Snappy => None,
    };
    Some((codec, level))
}

fn append(
    broker: &Broker,
    partition: &Partition,
    records: &Bytes,
    checks: &PartitionChecks,
    acks: i16,
) -> PartitionProduceResponse {
    let index = partition.index;
    if acks == -1 && checks.isr < checks.min_insync_replicas {
        return error_response(
            index,
            ErrorCode::NotEnoughReplicas,
            Some(format!(
                "The size of the current ISR {} is insufficient to satisfy the min.isr requirement of {}",
                checks.isr, checks.min_insync_replicas
            )),
        );
    }
    let recompressed = match check_records(broker, partition, records, checks) {
        Ok(recompressed) => recompressed,
        Err((code, errors)) => {
            let message = errors
                .first()
                .and_then(|e| e.batch_index_error_message.as_ref().map(|m| m.to_string()));
            return error_response(index, code, message).with_record_errors(errors);
        }
    };
    let records = recompressed.as_ref().unwrap_or(records);
    match partition.append_as_leader(records, AppendOrigin::Client) {
        Ok(info) => {
            broker
                .metrics
                .record_in(&partition.topic, info.bytes, info.record_count);
            PartitionProduceResponse::default()
                .with_index(index)
                .with_base_offset(info.first_offset)
                .with_log_append_time_ms(if info.timestamp_type == TimestampType::LogAppendTime {
                    info.log_append_time_ms
                } else {
                    -1
                })
                .with_log_start_offset(info.log_start_offset)
        }
        Err(e) => {
            let (code, message) = append_error(&e);
            if code == ErrorCode::KafkaStorageError {
                tracing::error!(topic = %partition.topic, partition = index, error = %e, "append failed");
            }
            error_response(index, code, Some(message))
        }
    }
}

/// The Kafka error for a refused append, with its message.
pub fn append_error(e: &AppendError) -> (ErrorCode, String) {
    (e.error_code(), e.to_string())
}

/// The error a coordinator answers when appending its own records (group
/// state, offset commits, transaction state, markers) fails: the append's
/// code ([`AppendError::error_code`]) when the caller's client can act on it
/// (`passed`), `too_large` for a batch over `max.message.bytes` or the
/// segment (Kafka's coordinators answer INVALID_COMMIT_OFFSET_SIZE for a
/// too-large commit), and `otherwise` for the rest (the coordinator cannot
/// write: the client retries or looks it up again).
pub(crate) fn coordinator_append_error(
    e: &AppendError,
    passed: &[ErrorCode],
    too_large: ErrorCode,
    otherwise: ErrorCode,
) -> ErrorCode {
    match e.error_code() {
        code if passed.contains(&code) => code,
        ErrorCode::MessageTooLarge | ErrorCode::RecordListTooLarge => too_large,
        _ => otherwise,
    }
}

fn error_response(
    index: i32,
    code: ErrorCode,
    message: Option<String>,
) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(code.code())
        .with_base_offset(-1)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(-1)
        .with_error_message(message.map(StrBytes::from_string))
}

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
fn check_records(
    broker: &Broker,
    partition: &Partition,
    records: &Bytes,
    checks: &PartitionChecks,
) -> Result<Option<Bytes>, (ErrorCode, Vec<BatchIndexAndErrorMessage>)> {
    let now = broker.clock.now_ms();
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
        let budget = &broker.decompression_budget;
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
                        partition.topic, partition.index
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

/// Where `batch` (a slice of `records`) starts in it.
fn batch_start(records: &[u8], batch: &[u8]) -> usize {
    (batch.as_ptr() as usize).saturating_sub(records.as_ptr() as usize)
}

fn record_error(index: i32, message: String) -> BatchIndexAndErrorMessage {
    BatchIndexAndErrorMessage::default()
        .with_batch_index(index)
        .with_batch_index_error_message(Some(StrBytes::from_string(message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinators_translate_append_errors_as_kafkas_do() {
        let too_large = AppendError::MessageTooLarge { size: 2, max: 1 };
        let fenced = AppendError::InvalidProducerEpoch {
            producer_id: 1,
            epoch: 0,
            current_epoch: 1,
        };
        let io = AppendError::Io(std::io::Error::other("disk"));
        let translate = |e: &AppendError| {
            coordinator_append_error(
                e,
                &[ErrorCode::InvalidProducerEpoch],
                ErrorCode::InvalidCommitOffsetSize,
                ErrorCode::CoordinatorNotAvailable,
            )
        };
        assert_eq!(translate(&too_large), ErrorCode::InvalidCommitOffsetSize);
        assert_eq!(translate(&fenced), ErrorCode::InvalidProducerEpoch);
        assert_eq!(translate(&io), ErrorCode::CoordinatorNotAvailable);
        assert_eq!(append_error(&too_large).0, ErrorCode::MessageTooLarge);
    }

    #[test]
    fn an_offline_log_is_a_storage_error_as_in_kafka() {
        assert_eq!(
            append_error(&AppendError::Offline).0,
            ErrorCode::KafkaStorageError
        );
    }
}
