//! Configs and log administration on the wire: IncrementalAlterConfigs and
//! AlterConfigs with Kafka's validation and sources, dynamic broker defaults,
//! recompression by `compression.type`, DeleteRecords, DescribeLogDirs.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod common;

use bytes::Bytes;
use strom_protocol::builder::RecordBatchBuilder;
use strom_protocol::compression::Compression;
use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::kafka::*;
use strom_protocol::messages::{ApiKey, StrBytes};
use strom_protocol::record;
use strom_protocol::record_batch;

use common::*;

const TOPIC: i8 = 2;
const BROKER: i8 = 4;
const SET: i8 = 0;
const DELETE: i8 = 1;
const APPEND: i8 = 2;

/// An IncrementalAlterConfigs operation: config name, operation, value.
type Op<'a> = (&'a str, i8, Option<&'a str>);
const SUBTRACT: i8 = 3;

fn incremental(
    resource_type: i8,
    resource: &str,
    ops: &[Op<'_>],
    validate_only: bool,
) -> IncrementalAlterConfigsRequest {
    IncrementalAlterConfigsRequest::default()
        .with_validate_only(validate_only)
        .with_resources(vec![
            incremental_alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(resource_type)
                .with_resource_name(StrBytes::from_string(resource.to_owned()))
                .with_configs(
                    ops.iter()
                        .map(|(n, op, v)| {
                            incremental_alter_configs_request::AlterableConfig::default()
                                .with_name(StrBytes::from_string((*n).to_owned()))
                                .with_config_operation(*op)
                                .with_value(v.map(|v| StrBytes::from_string(v.to_owned())))
                        })
                        .collect(),
                ),
        ])
}

/// IncrementalAlterConfigs on one resource: its error code and message.
async fn alter(raw: &mut Raw, resource_type: i8, resource: &str, ops: &[Op<'_>]) -> (i16, String) {
    let request = incremental(resource_type, resource, ops, false);
    let r: IncrementalAlterConfigsResponse =
        raw.call(ApiKey::IncrementalAlterConfigs, 1, &request).await;
    let r = &r.responses[0];
    (
        r.error_code,
        r.error_message
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default(),
    )
}

/// IncrementalAlterConfigs on one resource, which must succeed.
async fn alter_ok(raw: &mut Raw, resource_type: i8, resource: &str, ops: &[Op<'_>]) {
    let (code, message) = alter(raw, resource_type, resource, ops).await;
    assert_eq!(code, 0, "{ops:?} on {resource:?}: {message}");
}

/// A topic config as DescribeConfigs (v4, with synonyms) reports it: value,
/// source, and the synonym chain as `(name, source)`.
async fn described(
    raw: &mut Raw,
    resource_type: i8,
    resource: &str,
    config: &str,
) -> Option<(String, i8, Vec<(String, i8)>)> {
    let request = DescribeConfigsRequest::default()
        .with_include_synonyms(true)
        .with_resources(vec![
            describe_configs_request::DescribeConfigsResource::default()
                .with_resource_type(resource_type)
                .with_resource_name(StrBytes::from_string(resource.to_owned()))
                .with_configuration_keys(Some(vec![StrBytes::from_string(config.to_owned())])),
        ]);
    let r: DescribeConfigsResponse = raw.call(ApiKey::DescribeConfigs, 4, &request).await;
    assert_eq!(r.results[0].error_code, 0);
    let c = r.results[0].configs.first()?;
    Some((
        c.value.as_deref().unwrap_or_default().to_owned(),
        c.config_source,
        c.synonyms
            .iter()
            .map(|s| (s.name.to_string(), s.source))
            .collect(),
    ))
}

async fn value_of(raw: &mut Raw, topic: &str, config: &str) -> (String, i8) {
    let (value, source, _) = described(raw, TOPIC, topic, config).await.unwrap();
    (value, source)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_alter_configs_follow_kafkas_rules_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path(), &[("log.retention.hours", "1")]).await;
    let mut raw = Raw::connect(&broker).await;
    assert_eq!(create_topic(&mut raw, "t", 1, &[]).await, 0);

    // SET, then APPEND and SUBTRACT on a list.
    alter_ok(
        &mut raw,
        TOPIC,
        "t",
        &[
            ("retention.ms", SET, Some("1000")),
            ("cleanup.policy", APPEND, Some("compact")),
        ],
    )
    .await;
    assert_eq!(
        value_of(&mut raw, "t", "retention.ms").await,
        ("1000".to_owned(), 1)
    );
    assert_eq!(
        value_of(&mut raw, "t", "cleanup.policy").await,
        ("delete,compact".to_owned(), 1)
    );
    assert!(
        broker
            .broker
            .replicas
            .get("t", 0)
            .unwrap()
            .log
            .config()
            .compact
    );
    alter_ok(
        &mut raw,
        TOPIC,
        "t",
        &[("cleanup.policy", SUBTRACT, Some("delete"))],
    )
    .await;
    let log_config = broker.broker.replicas.get("t", 0).unwrap().log.config();
    assert!(
        log_config.compact && !log_config.delete,
        "the log follows at once"
    );
    assert_eq!(log_config.retention_ms, 1000);

    // Kafka's validation errors.
    let cases: &[(&[Op<'_>], ErrorCode, &str)] = &[
        (
            &[("retention.ms", APPEND, Some("1"))],
            ErrorCode::InvalidConfig,
            "its type is not LIST",
        ),
        (
            &[("retention.ms", SET, Some("-5"))],
            ErrorCode::InvalidConfig,
            "Value must be at least -1",
        ),
        (
            &[("retention.ms", SET, Some("soon"))],
            ErrorCode::InvalidConfig,
            "retention.ms",
        ),
        (
            &[("min.cleanable.dirty.ratio", SET, Some("1.5"))],
            ErrorCode::InvalidConfig,
            "no more than 1",
        ),
        (
            &[("compression.type", SET, Some("brotli"))],
            ErrorCode::InvalidConfig,
            "brotli",
        ),
        (
            &[("no.such.config", SET, Some("1"))],
            ErrorCode::InvalidConfig,
            "Unknown topic config",
        ),
        (
            &[("retention.ms", SET, None)],
            ErrorCode::InvalidRequest,
            "Null value",
        ),
        (
            &[
                ("retention.ms", SET, Some("1")),
                ("retention.ms", DELETE, None),
            ],
            ErrorCode::InvalidRequest,
            "duplicate",
        ),
        (
            &[
                ("min.compaction.lag.ms", SET, Some("10")),
                ("max.compaction.lag.ms", SET, Some("5")),
            ],
            ErrorCode::InvalidConfig,
            "min.compaction.lag.ms",
        ),
    ];
    for (ops, code, message) in cases {
        let (got, why) = alter(&mut raw, TOPIC, "t", ops).await;
        assert_eq!(got, code.code(), "{ops:?}: {why}");
        assert!(
            why.contains(message),
            "{ops:?}: {why:?} should mention {message:?}"
        );
    }
    assert_eq!(
        alter(
            &mut raw,
            TOPIC,
            "missing",
            &[("retention.ms", SET, Some("1"))]
        )
        .await
        .0,
        ErrorCode::UnknownTopicOrPartition.code()
    );
    // validate_only checks and changes nothing.
    let request = incremental(TOPIC, "t", &[("retention.ms", SET, Some("7"))], true);
    let r: IncrementalAlterConfigsResponse =
        raw.call(ApiKey::IncrementalAlterConfigs, 1, &request).await;
    assert_eq!(r.responses[0].error_code, 0);
    assert_eq!(value_of(&mut raw, "t", "retention.ms").await.0, "1000");

    // DELETE falls back to the static broker property. Kafka describes a
    // value that only log.retention.hours sets as DEFAULT_CONFIG (5): its
    // synonyms start at log.retention.ms.
    alter_ok(&mut raw, TOPIC, "t", &[("retention.ms", DELETE, None)]).await;
    assert_eq!(
        value_of(&mut raw, "t", "retention.ms").await,
        ("3600000".to_owned(), 5)
    );

    // Dynamic broker configs: the cluster default, then this broker's, win
    // over the static property; the synonym chain shows every layer.
    alter_ok(
        &mut raw,
        BROKER,
        "",
        &[("log.retention.ms", SET, Some("5000"))],
    )
    .await;
    assert_eq!(
        value_of(&mut raw, "t", "retention.ms").await,
        ("5000".to_owned(), 3)
    );
    alter_ok(
        &mut raw,
        BROKER,
        "1",
        &[("log.retention.ms", SET, Some("6000"))],
    )
    .await;
    let (value, source, chain) = described(&mut raw, TOPIC, "t", "retention.ms")
        .await
        .unwrap();
    assert_eq!((value.as_str(), source), ("6000", 2));
    assert_eq!(
        chain,
        vec![
            ("log.retention.ms".to_owned(), 2),
            ("log.retention.ms".to_owned(), 3),
            ("log.retention.hours".to_owned(), 4),
            ("log.retention.hours".to_owned(), 5),
        ]
    );
    assert_eq!(
        broker
            .broker
            .replicas
            .get("t", 0)
            .unwrap()
            .log
            .config()
            .retention_ms,
        6000
    );
    let (value, source, _) = described(&mut raw, BROKER, "1", "log.retention.ms")
        .await
        .unwrap();
    assert_eq!((value.as_str(), source), ("6000", 2));
    let (value, source, _) = described(&mut raw, BROKER, "", "log.retention.ms")
        .await
        .unwrap();
    assert_eq!((value.as_str(), source), ("5000", 3));
    let (code, why) = alter(&mut raw, BROKER, "1", &[("num.partitions", SET, Some("3"))]).await;
    assert_eq!(code, ErrorCode::InvalidRequest.code(), "{why}");
    assert!(
        why.contains("Cannot update these configs dynamically"),
        "{why}"
    );
    let (code, why) = alter(
        &mut raw,
        BROKER,
        "1",
        &[("log.segment.bytes", SET, Some("1"))],
    )
    .await;
    assert_eq!(code, ErrorCode::InvalidRequest.code(), "{why}");
    assert!(why.contains("log.segment.bytes"), "{why}");
    // Only the first synonym is dynamic, and only for this broker.
    let (code, why) = alter(
        &mut raw,
        BROKER,
        "1",
        &[("log.retention.hours", SET, Some("1"))],
    )
    .await;
    assert_eq!(code, ErrorCode::InvalidRequest.code(), "{why}");
    let (code, why) = alter(
        &mut raw,
        BROKER,
        "7",
        &[("log.retention.ms", SET, Some("1"))],
    )
    .await;
    assert_eq!(code, ErrorCode::InvalidRequest.code(), "{why}");

    // Everything is in the metadata log: a restart keeps it.
    drop(raw);
    broker.shutdown().await.unwrap();
    let broker = common::broker(dir.path(), &[("log.retention.hours", "1")]).await;
    let mut raw = Raw::connect(&broker).await;
    assert_eq!(
        value_of(&mut raw, "t", "cleanup.policy").await,
        ("compact".to_owned(), 1)
    );
    assert_eq!(
        value_of(&mut raw, "t", "retention.ms").await,
        ("6000".to_owned(), 2)
    );
    let log_config = broker.broker.replicas.get("t", 0).unwrap().log.config();
    assert!(log_config.compact && log_config.retention_ms == 6000);

    // AlterConfigs replaces the whole set of overrides.
    let request = AlterConfigsRequest::default().with_resources(vec![
        alter_configs_request::AlterConfigsResource::default()
            .with_resource_type(TOPIC)
            .with_resource_name(StrBytes::from_static_str("t"))
            .with_configs(vec![
                alter_configs_request::AlterableConfig::default()
                    .with_name(StrBytes::from_static_str("segment.ms"))
                    .with_value(Some(StrBytes::from_static_str("60000"))),
            ]),
    ]);
    let r: AlterConfigsResponse = raw.call(ApiKey::AlterConfigs, 2, &request).await;
    assert_eq!(r.responses[0].error_code, 0);
    assert_eq!(
        value_of(&mut raw, "t", "segment.ms").await,
        ("60000".to_owned(), 1)
    );
    assert_eq!(
        value_of(&mut raw, "t", "cleanup.policy").await,
        ("delete".to_owned(), 5)
    );
    broker.shutdown().await.unwrap();
}

fn fetch_batches(response: &FetchResponse) -> Vec<Bytes> {
    let records = response.responses[0].partitions[0]
        .records
        .clone()
        .unwrap_or_default();
    record_batch::batches(&records)
        .map(|b| Bytes::copy_from_slice(b.unwrap().bytes))
        .collect()
}

fn compressed_batch(codec: Compression, values: &[&str]) -> Bytes {
    let mut builder = RecordBatchBuilder::new(codec);
    for (i, v) in values.iter().enumerate() {
        let key = format!("k{i}");
        builder.push(
            1_000 + i as i64,
            Some(key.as_bytes()),
            Some(v.as_bytes()),
            &[("h", Some(b"x"))],
        );
    }
    builder.build().unwrap()
}

fn values_of(batch: &Bytes) -> Vec<(Option<Bytes>, Option<Bytes>, i64, usize)> {
    let iter = record::records(batch, 1 << 20).unwrap();
    let header = *iter.header();
    iter.map(|r| {
        let r = r.unwrap();
        (
            r.key.clone(),
            r.value.clone(),
            r.timestamp(&header),
            r.headers.len(),
        )
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_type_recompresses_and_compressed_batches_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(
        dir.path(),
        &[("message.timestamp.before.max.ms", "9223372036854775807")],
    )
    .await;
    let mut raw = Raw::connect(&broker).await;
    assert_eq!(
        create_topic(&mut raw, "z", 1, &[("compression.type", "zstd")]).await,
        0
    );
    assert_eq!(
        create_topic(
            &mut raw,
            "plain",
            1,
            &[("compression.type", "uncompressed")]
        )
        .await,
        0
    );
    assert_eq!(create_topic(&mut raw, "keep", 1, &[]).await, 0);

    let values = ["one", "two", "three"];
    for (topic, sent, stored) in [
        ("z", Compression::Gzip, Compression::Zstd),
        ("z", Compression::Zstd, Compression::Zstd),
        ("plain", Compression::Lz4, Compression::None),
        ("keep", Compression::Snappy, Compression::Snappy),
    ] {
        let batch = compressed_batch(sent, &values);
        let p = produce(&mut raw, topic, batch.clone()).await;
        assert_eq!(p.error_code, 0, "{topic} {sent}");
        let r: FetchResponse = raw
            .call(
                ApiKey::Fetch,
                12,
                &fetch_request(topic, p.base_offset, 0, 0, -1),
            )
            .await;
        let got = fetch_batches(&r);
        let header = record_batch::BatchHeader::parse(&got[0]).unwrap();
        assert_eq!(header.compression(), Some(stored), "{topic}: sent {sent}");
        assert_eq!(header.record_count, 3);
        assert_eq!(
            values_of(&got[0]),
            values_of(&batch),
            "{topic}: records unchanged"
        );
    }

    // A compressed batch whose header claims more records than it holds.
    let mut lying = compressed_batch(Compression::Lz4, &values).to_vec();
    let count_at = record_batch::RECORD_BATCH_OVERHEAD - 4;
    lying[count_at..count_at + 4].copy_from_slice(&4i32.to_be_bytes());
    record_batch::update_crc(&mut lying);
    let p = produce(&mut raw, "keep", Bytes::from(lying)).await;
    assert_eq!(
        p.error_code,
        ErrorCode::InvalidRecord.code(),
        "{:?}",
        p.error_message
    );
    // As Kafka: one batch per partition in a produce request.
    let mut two = compressed_batch(Compression::Zstd, &values).to_vec();
    two.extend_from_slice(&compressed_batch(Compression::Zstd, &values));
    let p = produce(&mut raw, "keep", Bytes::from(two)).await;
    assert_eq!(
        p.error_code,
        ErrorCode::InvalidRecord.code(),
        "{:?}",
        p.error_message
    );
    broker.shutdown().await.unwrap();
}

async fn list_offset(raw: &mut Raw, topic: &str, timestamp: i64) -> i64 {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![
            list_offsets_request::ListOffsetsTopic::default()
                .with_name(name(topic))
                .with_partitions(vec![
                    list_offsets_request::ListOffsetsPartition::default().with_timestamp(timestamp),
                ]),
        ]);
    let r: ListOffsetsResponse = raw.call(ApiKey::ListOffsets, 9, &request).await;
    r.topics[0].partitions[0].offset
}

async fn delete_records(raw: &mut Raw, topic: &str, offset: i64) -> (i16, i64) {
    let request = DeleteRecordsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![
            delete_records_request::DeleteRecordsTopic::default()
                .with_name(name(topic))
                .with_partitions(vec![
                    delete_records_request::DeleteRecordsPartition::default()
                        .with_partition_index(0)
                        .with_offset(offset),
                ]),
        ]);
    let r: DeleteRecordsResponse = raw.call(ApiKey::DeleteRecords, 2, &request).await;
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.low_watermark)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_records_moves_the_log_start_and_log_dirs_show_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path(), &[]).await;
    let mut raw = Raw::connect(&broker).await;
    // One batch per segment.
    assert_eq!(
        create_topic(&mut raw, "d", 1, &[("segment.bytes", "100")]).await,
        0
    );
    assert_eq!(
        create_topic(&mut raw, "c", 1, &[("cleanup.policy", "compact")]).await,
        0
    );
    for _ in 0..10 {
        assert_eq!(
            produce(&mut raw, "d", batch(&[Some(b"value")], true, now_ms()))
                .await
                .error_code,
            0
        );
    }
    let log = broker.broker.replicas.get("d", 0).unwrap().log.clone();
    let segments_before = log.segment_count();

    assert_eq!(
        delete_records(&mut raw, "d", 11).await.0,
        ErrorCode::OffsetOutOfRange.code()
    );
    assert_eq!(
        delete_records(&mut raw, "d", -7).await.0,
        ErrorCode::OffsetOutOfRange.code()
    );
    assert_eq!(delete_records(&mut raw, "d", 5).await, (0, 5));
    assert_eq!(list_offset(&mut raw, "d", -2).await, 5);
    assert!(
        log.segment_count() < segments_before,
        "segments below the start are gone"
    );
    let r: FetchResponse = raw
        .call(ApiKey::Fetch, 12, &fetch_request("d", 2, 0, 0, -1))
        .await;
    assert_eq!(
        r.responses[0].partitions[0].error_code,
        ErrorCode::OffsetOutOfRange.code()
    );
    assert_eq!(r.responses[0].partitions[0].log_start_offset, 5);
    let r: FetchResponse = raw
        .call(ApiKey::Fetch, 12, &fetch_request("d", 5, 0, 0, -1))
        .await;
    assert_eq!(
        fetch_batches(&r).len(),
        1,
        "the first batch from the new start"
    );
    // A smaller offset changes nothing; -1 is the high watermark.
    assert_eq!(delete_records(&mut raw, "d", 3).await, (0, 5));
    assert_eq!(delete_records(&mut raw, "d", -1).await, (0, 10));
    assert_eq!(
        delete_records(&mut raw, "c", 0).await.0,
        ErrorCode::PolicyViolation.code()
    );
    assert_eq!(
        delete_records(&mut raw, "nope", 0).await.0,
        ErrorCode::UnknownTopicOrPartition.code()
    );

    // The log start survives a restart.
    drop(raw);
    broker.shutdown().await.unwrap();
    let broker = common::broker(dir.path(), &[]).await;
    let mut raw = Raw::connect(&broker).await;
    assert_eq!(list_offset(&mut raw, "d", -2).await, 10);

    assert_eq!(
        produce(&mut raw, "c", batch(&[Some(b"v")], true, now_ms()))
            .await
            .error_code,
        0
    );
    let r: DescribeLogDirsResponse = raw
        .call(
            ApiKey::DescribeLogDirs,
            4,
            &DescribeLogDirsRequest::default().with_topics(None),
        )
        .await;
    assert_eq!(r.results.len(), 1);
    let result = &r.results[0];
    assert_eq!(result.error_code, 0);
    assert!(
        result.total_bytes > 0
            && result.usable_bytes > 0
            && result.usable_bytes <= result.total_bytes
    );
    let size = |topic: &str| {
        result
            .topics
            .iter()
            .find(|t| t.name.0.as_str() == topic)
            .map(|t| t.partitions[0].partition_size)
    };
    let c_size = broker.broker.replicas.get("c", 0).unwrap().log.size_bytes() as i64;
    assert!(c_size > 0);
    assert_eq!(size("c"), Some(c_size));
    // Asking for one partition answers only that one.
    let request = DescribeLogDirsRequest::default().with_topics(Some(vec![
        describe_log_dirs_request::DescribableLogDirTopic::default()
            .with_topic(name("c"))
            .with_partitions(vec![0]),
    ]));
    let r: DescribeLogDirsResponse = raw.call(ApiKey::DescribeLogDirs, 1, &request).await;
    let topics: Vec<&str> = r.results[0]
        .topics
        .iter()
        .map(|t| t.name.0.as_str())
        .collect();
    assert_eq!(topics, vec!["c"]);
    broker.shutdown().await.unwrap();
}
