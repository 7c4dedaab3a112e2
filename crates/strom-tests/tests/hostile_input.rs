//! Garbage at the broker: random bytes, impossible frame sizes, truncated
//! headers, unknown API keys and versions, valid requests of every API with
//! bytes flipped, cut or appended, a frame that announces 100 MiB and never
//! comes. The broker must neither crash nor stall: afterwards librdkafka still
//! produces and consumes, and the broker shuts down cleanly.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{BrokerProcess, assign, flush};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::message::Message;
use rdkafka::producer::BaseRecord;
use strom_protocol::builder::RecordBatchBuilder;
use strom_protocol::compression::Compression;
use strom_protocol::messages::kafka::{
    self, ApiVersionsRequest, CreateTopicsRequest, FetchRequest, ListOffsetsRequest,
    MetadataRequest, ProduceRequest,
};
use strom_protocol::messages::{ApiKey, StrBytes, encode_request};

/// How long one garbage exchange may take before the broker counts as stuck.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `bytes` on a fresh connection, half-closes, and reads until the
/// broker closes. Returns how long that took; panics if it never closes.
fn exchange(addr: &str, bytes: &[u8]) -> Duration {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(EXCHANGE_TIMEOUT)).unwrap();
    // The broker may close mid-write; that is fine.
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(Shutdown::Write);
    let mut sink = [0u8; 4096];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!(
                    "broker kept a garbage connection open for {EXCHANGE_TIMEOUT:?} ({} bytes sent)",
                    bytes.len()
                )
            }
            Err(_) => break, // reset
        }
    }
    start.elapsed()
}

/// Valid requests of every advertised API, at several versions.
fn valid_frames() -> Vec<BytesMut> {
    let mut batch = RecordBatchBuilder::new(Compression::Lz4);
    batch.push(1, Some(b"k"), Some(b"v"), &[("h", Some(b"x"))]);
    let records = batch.build().unwrap();
    let produce = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(1000)
        .with_topic_data(vec![
            kafka::produce_request::TopicProduceData::default()
                .with_name(kafka::TopicName(StrBytes::from_static_str("garbage")))
                .with_partition_data(vec![
                    kafka::produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(records)),
                ]),
        ]);
    let fetch = FetchRequest::default()
        .with_max_wait_ms(10)
        .with_topics(vec![
            kafka::fetch_request::FetchTopic::default()
                .with_topic(kafka::TopicName(StrBytes::from_static_str("garbage")))
                .with_partitions(vec![
                    kafka::fetch_request::FetchPartition::default()
                        .with_partition(0)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    let metadata = MetadataRequest::default().with_topics(Some(vec![
        kafka::metadata_request::MetadataRequestTopic::default()
            .with_name(Some(kafka::TopicName(StrBytes::from_static_str("garbage")))),
    ]));
    let mut frames = Vec::new();
    for version in [0, 4, 9, 12] {
        frames.push(encode_request(ApiKey::Metadata, version, 1, Some("fuzz"), &metadata).unwrap());
    }
    for version in [3, 9, 12] {
        frames.push(encode_request(ApiKey::Produce, version, 2, Some("fuzz"), &produce).unwrap());
    }
    for version in [4, 11, 12] {
        frames.push(encode_request(ApiKey::Fetch, version, 3, Some("fuzz"), &fetch).unwrap());
    }
    for version in [0, 3] {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("fuzz"))
            .with_client_software_version(StrBytes::from_static_str("1"));
        frames.push(encode_request(ApiKey::ApiVersions, version, 4, None, &request).unwrap());
    }
    frames.push(
        encode_request(
            ApiKey::ListOffsets,
            7,
            5,
            Some("fuzz"),
            &ListOffsetsRequest::default(),
        )
        .unwrap(),
    );
    let group = || kafka::GroupId(StrBytes::from_static_str("fuzz-group"));
    let member = || StrBytes::from_static_str("fuzz-member");
    let topic = || kafka::TopicName(StrBytes::from_static_str("garbage"));
    let join = kafka::JoinGroupRequest::default()
        .with_group_id(group())
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_protocol_type(StrBytes::from_static_str("consumer"))
        .with_protocols(vec![
            kafka::join_group_request::JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_static_str("range"))
                .with_metadata(bytes::Bytes::from_static(&[
                    0, 1, 0, 0, 0, 1, 0, 7, b'g', b'a', b'r', b'b', b'a', b'g', b'e', 0, 0, 0, 0,
                ])),
        ]);
    frames.push(encode_request(ApiKey::JoinGroup, 5, 7, Some("fuzz"), &join).unwrap());
    let sync = kafka::SyncGroupRequest::default()
        .with_group_id(group())
        .with_member_id(member())
        .with_generation_id(1)
        .with_assignments(vec![
            kafka::sync_group_request::SyncGroupRequestAssignment::default()
                .with_member_id(member())
                .with_assignment(bytes::Bytes::from_static(b"assignment")),
        ]);
    frames.push(encode_request(ApiKey::SyncGroup, 3, 8, Some("fuzz"), &sync).unwrap());
    let commit = kafka::OffsetCommitRequest::default()
        .with_group_id(group())
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![
            kafka::offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(topic())
                .with_partitions(vec![
                    kafka::offset_commit_request::OffsetCommitRequestPartition::default()
                        .with_committed_offset(5)
                        .with_committed_metadata(Some(StrBytes::from_static_str("meta"))),
                ]),
        ]);
    frames.push(encode_request(ApiKey::OffsetCommit, 8, 9, Some("fuzz"), &commit).unwrap());
    let fetch_offsets = kafka::OffsetFetchRequest::default().with_groups(vec![
        kafka::offset_fetch_request::OffsetFetchRequestGroup::default()
            .with_group_id(group())
            .with_topics(None),
    ]);
    frames.push(encode_request(ApiKey::OffsetFetch, 8, 10, Some("fuzz"), &fetch_offsets).unwrap());
    let find = kafka::FindCoordinatorRequest::default()
        .with_coordinator_keys(vec![StrBytes::from_static_str("fuzz-group")]);
    frames.push(encode_request(ApiKey::FindCoordinator, 4, 11, Some("fuzz"), &find).unwrap());
    let heartbeat = kafka::ConsumerGroupHeartbeatRequest::default()
        .with_group_id(group())
        .with_member_id(member())
        .with_rebalance_timeout_ms(10_000)
        .with_subscribed_topic_names(Some(vec![topic()]))
        .with_topic_partitions(Some(vec![]));
    frames.push(
        encode_request(
            ApiKey::ConsumerGroupHeartbeat,
            1,
            12,
            Some("fuzz"),
            &heartbeat,
        )
        .unwrap(),
    );
    let leave = kafka::LeaveGroupRequest::default()
        .with_group_id(group())
        .with_members(vec![
            kafka::leave_group_request::MemberIdentity::default().with_member_id(member()),
        ]);
    frames.push(encode_request(ApiKey::LeaveGroup, 4, 13, Some("fuzz"), &leave).unwrap());
    let describe = kafka::DescribeGroupsRequest::default().with_groups(vec![group()]);
    frames.push(encode_request(ApiKey::DescribeGroups, 5, 14, Some("fuzz"), &describe).unwrap());
    // Configs and log administration, aimed at a topic that does not exist.
    let void = || StrBytes::from_static_str("fuzz-void");
    let alter = kafka::IncrementalAlterConfigsRequest::default().with_resources(vec![
        kafka::incremental_alter_configs_request::AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(void())
            .with_configs(vec![
                kafka::incremental_alter_configs_request::AlterableConfig::default()
                    .with_name(StrBytes::from_static_str("cleanup.policy"))
                    .with_config_operation(2)
                    .with_value(Some(StrBytes::from_static_str("compact"))),
            ]),
    ]);
    frames.push(
        encode_request(ApiKey::IncrementalAlterConfigs, 1, 15, Some("fuzz"), &alter).unwrap(),
    );
    let legacy = kafka::AlterConfigsRequest::default().with_resources(vec![
        kafka::alter_configs_request::AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(void())
            .with_configs(vec![
                kafka::alter_configs_request::AlterableConfig::default()
                    .with_name(StrBytes::from_static_str("retention.ms"))
                    .with_value(Some(StrBytes::from_static_str("1000"))),
            ]),
    ]);
    frames.push(encode_request(ApiKey::AlterConfigs, 2, 16, Some("fuzz"), &legacy).unwrap());
    let delete = kafka::DeleteRecordsRequest::default().with_topics(vec![
        kafka::delete_records_request::DeleteRecordsTopic::default()
            .with_name(kafka::TopicName(void()))
            .with_partitions(vec![
                kafka::delete_records_request::DeleteRecordsPartition::default()
                    .with_partition_index(0)
                    .with_offset(5),
            ]),
    ]);
    frames.push(encode_request(ApiKey::DeleteRecords, 2, 17, Some("fuzz"), &delete).unwrap());
    let dirs = kafka::DescribeLogDirsRequest::default().with_topics(None);
    frames.push(encode_request(ApiKey::DescribeLogDirs, 4, 18, Some("fuzz"), &dirs).unwrap());
    frames.push(
        encode_request(
            ApiKey::CreateTopics,
            7,
            6,
            Some("fuzz"),
            &CreateTopicsRequest::default(),
        )
        .unwrap(),
    );
    frames
}

#[test]
fn garbage_never_crashes_or_stalls_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker =
        BrokerProcess::start(&dir.path().join("data"), &["connections.max.idle.ms=60000"]);
    let addr = broker.bootstrap.clone();
    let mut rng = StdRng::seed_from_u64(0x6a7ba6e);

    // A slow client announcing a 100 MiB frame and sending nothing more stays
    // connected meanwhile; it must not stop anyone else.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(&(100 * 1024 * 1024i32).to_be_bytes())
        .unwrap();

    // Impossible sizes and truncated headers.
    for size in [-1i32, i32::MIN, 0, 3, 7, 100 * 1024 * 1024 + 1, i32::MAX] {
        exchange(&addr, &size.to_be_bytes());
        let mut frame = size.to_be_bytes().to_vec();
        frame.extend_from_slice(&[0, 3, 0, 1, 0, 0]);
        exchange(&addr, &frame);
    }
    // Unknown API keys and versions, on a well-formed frame.
    for (key, version) in [
        (i16::MAX, 0i16),
        (-1, 0),
        (0, 99),
        (1, -5),
        (3, i16::MAX),
        (18, 100),
    ] {
        let mut body = Vec::new();
        body.extend_from_slice(&key.to_be_bytes());
        body.extend_from_slice(&version.to_be_bytes());
        body.extend_from_slice(&7i32.to_be_bytes());
        body.extend_from_slice(&(-1i16).to_be_bytes());
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend(body);
        exchange(&addr, &frame);
    }
    // Random bytes.
    for _ in 0..300 {
        let len = rng.random_range(0..300);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        exchange(&addr, &bytes);
    }
    // Valid frames with bytes flipped, cut off, or garbage appended (the size
    // prefix fixed up so the body reaches the decoder).
    let frames = valid_frames();
    for round in 0..1500 {
        let mut frame = frames[round % frames.len()].to_vec();
        match rng.random_range(0..4) {
            0 => {
                for _ in 0..rng.random_range(1..6) {
                    let i = rng.random_range(4..frame.len());
                    frame[i] = rng.random();
                }
            }
            1 => frame.truncate(rng.random_range(4..frame.len())),
            2 => frame.extend((0..rng.random_range(1..64)).map(|_| rng.random::<u8>())),
            _ => {
                // A huge array count where the first field after the header sits.
                let i = rng.random_range(12..frame.len().saturating_sub(4).max(13));
                frame.splice(i..i + 4.min(frame.len() - i), [0x7f, 0xff, 0xff, 0xff]);
            }
        }
        let body_len = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&body_len.to_be_bytes());
        exchange(&addr, &frame);
        if round % 250 == 0 {
            assert!(
                broker.is_running(),
                "broker died after mutated frame {round}:\n{}",
                broker.stderr()
            );
        }
    }
    assert!(broker.is_running(), "broker died:\n{}", broker.stderr());
    assert!(
        !broker.stderr().contains("panicked"),
        "a task panicked:\n{}",
        broker.stderr()
    );

    // A normal client still works, with the slow client still hanging on.
    let producer = broker.producer(&[("acks", "all")]);
    for i in 0..100 {
        producer
            .send(
                BaseRecord::<(), _>::to("after-garbage")
                    .partition(0)
                    .payload(&format!("ok-{i}")),
            )
            .unwrap();
    }
    flush(&producer);
    let consumer = broker.consumer();
    assign(&consumer, "after-garbage", 0, 0);
    for i in 0..100 {
        let m = consumer
            .poll(Duration::from_secs(30))
            .expect("record")
            .unwrap();
        assert_eq!(m.payload(), Some(format!("ok-{i}").as_bytes()));
    }
    drop(slow);
    broker.stop();
}
