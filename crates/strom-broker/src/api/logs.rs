//! Log administration: DeleteRecords (move a partition's log start offset)
//! and DescribeLogDirs (what each data directory holds, and its space).

use std::collections::BTreeMap;
use std::sync::Arc;

use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::StrBytes;
use strom_protocol::messages::kafka::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use strom_protocol::messages::kafka::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use strom_protocol::messages::kafka::{
    DeleteRecordsRequest, DeleteRecordsResponse, DescribeLogDirsRequest, DescribeLogDirsResponse,
    TopicName,
};

use super::RequestContext;
use crate::broker::Broker;

/// DeleteRecords' "up to the high watermark".
const HIGH_WATERMARK: i64 = -1;

/// DeleteRecords: every partition's records below the given offset become
/// unreadable at once (the log start offset moves; whole segments below it
/// are deleted). As Kafka: -1 means the high watermark, an offset above the
/// high watermark is OFFSET_OUT_OF_RANGE, and a log whose `cleanup.policy`
/// lacks `delete` refuses with POLICY_VIOLATION.
pub async fn delete_records(
    broker: &Arc<Broker>,
    request: DeleteRecordsRequest,
    _ctx: &RequestContext<'_>,
) -> DeleteRecordsResponse {
    let image = broker.image();
    let mut work = Vec::new();
    for topic in &request.topics {
        for p in &topic.partitions {
            work.push((topic.name.0.to_string(), p.partition_index, p.offset));
        }
    }
    let broker_for_task = Arc::clone(broker);
    let results = super::blocking(move || {
        let results: Vec<(i64, ErrorCode)> = work
            .iter()
            .map(|(topic, index, offset)| {
                delete_below(&broker_for_task, &image, topic, *index, *offset)
            })
            .collect();
        if results.iter().any(|(_, code)| *code == ErrorCode::None)
            && let Err(e) = broker_for_task.logs.checkpoint()
        {
            // The next periodic checkpoint retries; until then a crash
            // could bring the deleted records back, as in Kafka.
            tracing::warn!(error = %e, "checkpointing log start offsets failed");
        }
        results
    })
    .await;
    let mut results = results.unwrap_or_default().into_iter();
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let (low, code) = results
                        .next()
                        .unwrap_or((-1, ErrorCode::UnknownServerError));
                    DeleteRecordsPartitionResult::default()
                        .with_partition_index(p.partition_index)
                        .with_low_watermark(low)
                        .with_error_code(code.code())
                })
                .collect();
            DeleteRecordsTopicResult::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    DeleteRecordsResponse::default().with_topics(topics)
}

/// Moves one partition's log start offset: `(low watermark, error)`.
fn delete_below(
    broker: &Broker,
    image: &strom_controller::MetadataImage,
    topic: &str,
    index: i32,
    offset: i64,
) -> (i64, ErrorCode) {
    if image.partition(topic, index).is_none() {
        return (-1, ErrorCode::UnknownTopicOrPartition);
    }
    let partition = match broker.replicas.get(topic, index) {
        Some(p) if p.is_leader() => p,
        _ => return (-1, ErrorCode::NotLeaderOrFollower),
    };
    let log = &partition.log;
    if !log.config().delete {
        return (-1, ErrorCode::PolicyViolation);
    }
    let high_watermark = partition.high_watermark();
    let target = if offset == HIGH_WATERMARK {
        high_watermark
    } else {
        offset
    };
    if target < 0 || target > high_watermark {
        return (-1, ErrorCode::OffsetOutOfRange);
    }
    match log.advance_log_start_offset(target) {
        Ok(()) => (log.log_start_offset(), ErrorCode::None),
        Err(e) => {
            tracing::error!(partition = %format!("{topic}-{index}"), error = %e, "deleting records failed");
            (-1, ErrorCode::KafkaStorageError)
        }
    }
}

/// DescribeLogDirs: the one data directory, the size of each partition in
/// it (all, or those asked for), and (v4) its total and usable bytes.
pub fn describe_log_dirs(
    broker: &Broker,
    request: DescribeLogDirsRequest,
    ctx: &RequestContext<'_>,
) -> DescribeLogDirsResponse {
    let version = ctx.api_version();
    let wanted: Option<BTreeMap<String, Vec<i32>>> = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.topic.0.to_string(), t.partitions))
            .collect()
    });
    let mut by_topic: BTreeMap<String, Vec<DescribeLogDirsPartition>> = BTreeMap::new();
    for (tp, log) in broker.logs.logs() {
        if tp.topic == strom_controller::METADATA_TOPIC {
            continue;
        }
        if let Some(w) = &wanted
            && !w
                .get(&tp.topic)
                .is_some_and(|ps| ps.contains(&tp.partition))
        {
            continue;
        }
        let size = i64::try_from(log.size_bytes()).unwrap_or(i64::MAX);
        by_topic.entry(tp.topic.clone()).or_default().push(
            DescribeLogDirsPartition::default()
                .with_partition_index(tp.partition)
                .with_partition_size(size)
                // The lag of a future (moving) replica; none exist here.
                .with_offset_lag(0)
                .with_is_future_key(false),
        );
    }
    let topics = by_topic
        .into_iter()
        .map(|(name, mut partitions)| {
            partitions.sort_by_key(|p| p.partition_index);
            DescribeLogDirsTopic::default()
                .with_name(TopicName(StrBytes::from_string(name)))
                .with_partitions(partitions)
        })
        .collect();
    let dir = broker.logs.data_dir();
    let dir_name = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut result = DescribeLogDirsResult::default()
        .with_error_code(ErrorCode::None.code())
        .with_log_dir(StrBytes::from_string(dir_name.display().to_string()))
        .with_topics(topics);
    if version >= 4 {
        let (total, usable) = match rustix::fs::statvfs(dir) {
            Ok(s) => {
                let block = s.f_frsize;
                let bytes =
                    |blocks: u64| i64::try_from(blocks.saturating_mul(block)).unwrap_or(i64::MAX);
                (bytes(s.f_blocks), bytes(s.f_bavail))
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the data directory's disk space");
                (-1, -1)
            }
        };
        result = result.with_total_bytes(total).with_usable_bytes(usable);
    }
    DescribeLogDirsResponse::default().with_results(vec![result])
}
