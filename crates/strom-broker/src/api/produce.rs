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
//! producer's ongoing transaction. The partition's producer state knows when
//! the transaction is ongoing there already; otherwise the transaction
//! coordinator is asked (`api::txn::verify_txn`) and its yes becomes the
//! partition's verification guard, which the append checks and the
//! transaction's marker removes: no marker can end the transaction between
//! the check and the append, and no coordinator lock is held.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strom_controller::MetadataImage;
use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::StrBytes;
use strom_protocol::messages::kafka::produce_response::{
    PartitionProduceResponse, TopicProduceResponse,
};
use strom_protocol::messages::kafka::{ProduceRequest, ProduceResponse};
use strom_protocol::record_batch::{self, TimestampType};
use strom_storage::{AppendError, AppendOrigin, TxnVerification};

use super::{Reply, RequestContext, respond};
use crate::broker::Broker;
use crate::partition::validation::ProduceChecks;
use crate::replica::Partition;

/// Where to append and what to check, or the error code and message why not.
type Target = Result<(Arc<Partition>, Bytes, Arc<ProduceChecks>), (ErrorCode, Option<String>)>;

/// One partition's work.
struct Work {
    topic: usize,
    index: i32,
    target: Target,
    /// KIP-890 part 1: how the append checks the producer's transactional
    /// batches (set by the verification below).
    verification: TxnVerification,
}

/// A produce with acks=all waits for the high watermark of each partition
/// it appended to: which partition, the response entry to fail if the wait
/// fails, and the offset and leader epoch to wait for.
struct Replication {
    response: usize,
    partition: Arc<Partition>,
    /// The last appended offset + 1.
    offset: i64,
    leader_epoch: i32,
}

/// Answers a produce request in two phases. The first, here, in request
/// order on the connection: validate and append. The second, for acks=all
/// while the high watermark has not reached the appended records, is the
/// [`Reply::Later`] that waits for it, concurrently with the requests behind
/// (their appends are not held up), answered in request order. No answer
/// for acks=0, and a failed acks=0 produce closes the connection so the
/// client notices.
pub async fn handle(
    broker: &Arc<Broker>,
    request: ProduceRequest,
    ctx: &RequestContext<'_>,
) -> Reply {
    let timeout = Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0));
    let header = ctx.header();
    let (response, waits) = match produce(broker, request, ctx.api_version()).await {
        Ok(Some(appended)) => appended,
        Ok(None) => return Reply::None,
        Err(reason) => return Reply::Close(reason),
    };
    if waits.is_empty() {
        return respond(header, &response);
    }
    let (api_key, api_version, correlation_id) =
        (header.api_key, header.api_version, header.correlation_id);
    Reply::Later(Box::pin(async move {
        let mut response = response;
        let outcomes = futures::future::join_all(waits.iter().map(|w| {
            w.partition
                .wait_for_high_watermark(w.offset, w.leader_epoch, timeout)
        }))
        .await;
        let mut entries: Vec<&mut PartitionProduceResponse> = response
            .responses
            .iter_mut()
            .flat_map(|t| t.partition_responses.iter_mut())
            .collect();
        for (wait, outcome) in waits.iter().zip(outcomes) {
            if let (Err(code), Some(entry)) = (outcome, entries.get_mut(wait.response)) {
                **entry = error_response(entry.index, code, None);
            }
        }
        super::encode(api_key, api_version, correlation_id, &response)
    }))
}

/// Appends a produce request's batches: the response, and for acks=all the
/// partitions whose high watermark must yet pass the appended records.
/// `Ok(None)` for acks=0; `Err` closes the connection (acks=0 errors).
async fn produce(
    broker: &Arc<Broker>,
    request: ProduceRequest,
    version: i16,
) -> Result<Option<(ProduceResponse, Vec<Replication>)>, String> {
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
                verification: TxnVerification::Unchecked,
            });
        }
    }

    // KIP-890 part 1: a transactional batch goes only to a partition of its
    // producer's ongoing transaction. The partition's producer state answers
    // when the transaction is already ongoing there; otherwise the
    // coordinator is asked, and its yes is a verification guard the append
    // needs (a marker in between removes it: see the module docs).
    for w in &mut work {
        let Ok((partition, records, _)) = &w.target else {
            continue;
        };
        let Some((producer_id, epoch)) = transactional_producer(records) else {
            continue;
        };
        let verified = match &transactional_id {
            None => Err(ErrorCode::InvalidTxnState),
            Some(id) => match partition
                .log
                .maybe_start_txn_verification(producer_id, epoch)
            {
                None => Ok(None),
                Some(guard) => {
                    let asked = [(partition.topic.to_string(), partition.index)];
                    let codes =
                        super::txn::verify_txn(broker, &image, id, producer_id, epoch, &asked)
                            .await;
                    match codes.first() {
                        Some(ErrorCode::None) => Ok(Some(guard)),
                        Some(code) => Err(*code),
                        None => Err(ErrorCode::InvalidTxnState),
                    }
                }
            },
        };
        match verified {
            Ok(guard) => w.verification = TxnVerification::Checked(guard),
            Err(code) => {
                let code = match code {
                    // Produce keeps the old epoch error (KIP-588); a
                    // coordinator that could not answer now is retried.
                    ErrorCode::InvalidProducerEpoch => ErrorCode::InvalidProducerEpoch,
                    ErrorCode::NotEnoughReplicas => ErrorCode::NotEnoughReplicas,
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
    }

    let broker_for_append = Arc::clone(broker);
    let results = super::blocking(move || {
        work.into_iter()
            .map(|w| match w.target {
                Err((code, message)) => (w.topic, error_response(w.index, code, message), None),
                Ok((partition, records, checks)) => {
                    let (response, appended) = append(
                        &broker_for_append,
                        &partition,
                        &records,
                        &checks,
                        w.verification,
                        acks,
                    );
                    (w.topic, response, appended.map(|a| (partition, a)))
                }
            })
            .collect::<Vec<_>>()
    })
    .await
    .ok_or("produce task failed")?;

    if acks == 0 {
        if let Some((_, failed, _)) = results.iter().find(|(_, r, _)| r.error_code != 0) {
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
    // The work, and so the results, run topic by topic in request order:
    // a wait names its entry by its position among all partitions' entries.
    let mut waits = Vec::new();
    for (position, (t, mut partition, appended)) in results.into_iter().enumerate() {
        // Fields a version does not carry stay at their defaults.
        if version < 5 {
            partition.log_start_offset = -1;
        }
        if version < 8 {
            partition.record_errors = Vec::new();
            partition.error_message = None;
        }
        if acks == -1
            && broker.config.settings.replication.planted_bug
                != Some(crate::config::replication::PlantedBug::AckLocal)
            && let Some((replica, (offset, leader_epoch))) = appended
            && replica.high_watermark() < offset
        {
            waits.push(Replication {
                response: position,
                partition: replica,
                offset,
                leader_epoch,
            });
        }
        responses[t].partition_responses.push(partition);
    }
    Ok(Some((
        ProduceResponse::default().with_responses(responses),
        waits,
    )))
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
    image.topic(name).ok_or((unknown, None))?;
    if super::group::is_internal(name) {
        // Only the coordinators write there (Kafka: internal topics refuse clients).
        return Err((
            ErrorCode::InvalidTopicException,
            Some(format!("Cannot append to internal topic {name}")),
        ));
    }
    image
        .partition(name, index)
        .ok_or((ErrorCode::UnknownTopicOrPartition, None))?;
    let partition = broker
        .replicas
        .get(name, index)
        .ok_or_else(|| super::missing_partition(broker, name, index))?;
    if !partition.is_leader() {
        return Err((ErrorCode::NotLeaderOrFollower, None));
    }
    let records = records.ok_or((
        ErrorCode::CorruptMessage,
        Some("Produce request without records".to_owned()),
    ))?;
    let checks = partition.produce_checks();
    Ok((partition, records, checks))
}

/// The producer id and epoch of a transactional batch.
fn transactional_producer(records: &[u8]) -> Option<(i64, i16)> {
    let header = record_batch::BatchHeader::parse(records).ok()?;
    (header.is_transactional() && !header.is_control())
        .then_some((header.producer_id, header.producer_epoch))
}

/// Appends to one partition: its response entry, and when the records went
/// in, the last offset + 1 and the leader epoch they were appended at.
fn append(
    broker: &Broker,
    partition: &Partition,
    records: &Bytes,
    checks: &ProduceChecks,
    verification: TxnVerification,
    acks: i16,
) -> (PartitionProduceResponse, Option<(i64, i32)>) {
    let index = partition.index;
    // Only acks=all looks at the ISR (the role's lock stays off the other
    // produces' path).
    if acks == -1 {
        let in_sync = partition.in_sync(checks);
        if in_sync.isr < in_sync.min {
            let response = error_response(
                index,
                ErrorCode::NotEnoughReplicas,
                Some(format!(
                    "The size of the current ISR {} is insufficient to satisfy the min.isr requirement of {}",
                    in_sync.isr, in_sync.min
                )),
            );
            return (response, None);
        }
    }
    let recompressed = match partition.validate_records(
        records,
        checks,
        &broker.decompression_budget,
        broker.clock.now_ms(),
    ) {
        Ok(recompressed) => recompressed,
        Err((code, errors)) => {
            let message = errors
                .first()
                .and_then(|e| e.batch_index_error_message.as_ref().map(|m| m.to_string()));
            let response = error_response(index, code, message).with_record_errors(errors);
            return (response, None);
        }
    };
    let records = recompressed.as_ref().unwrap_or(records);
    let leader_epoch = partition.leader_epoch();
    match partition.append_as_leader_verified(records, AppendOrigin::Client, verification) {
        Ok(info) => {
            broker
                .metrics
                .record_in(&partition.topic, info.bytes, info.record_count);
            let response = PartitionProduceResponse::default()
                .with_index(index)
                .with_base_offset(info.first_offset)
                .with_log_append_time_ms(if info.timestamp_type == TimestampType::LogAppendTime {
                    info.log_append_time_ms
                } else {
                    -1
                })
                .with_log_start_offset(info.log_start_offset);
            (response, Some((info.last_offset + 1, leader_epoch)))
        }
        Err(e) => {
            let (code, message) = append_error(&e);
            if code == ErrorCode::KafkaStorageError {
                tracing::error!(topic = %partition.topic, partition = index, error = %e, "append failed");
            } else {
                // Out-of-order sequences, fenced epochs and the like: what
                // a client was told, for when its records go astray.
                tracing::debug!(topic = %partition.topic, partition = index, error = %e, "append refused");
            }
            (error_response(index, code, Some(message)), None)
        }
    }
}

/// The Kafka error for a refused append, with its message.
pub fn append_error(e: &AppendError) -> (ErrorCode, String) {
    (e.error_code(), e.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_too_large_append_is_message_too_large() {
        let too_large = AppendError::MessageTooLarge { size: 2, max: 1 };
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
