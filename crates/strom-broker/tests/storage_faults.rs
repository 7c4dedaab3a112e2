//! The broker's data directory under damage and pressure: a lost
//! `partition.metadata`, deleting topics with the longest legal names, disk
//! space coming back after a topic is deleted, and creating topics on a full
//! disk. The disk tests mount a small tmpfs (root only; skipped otherwise).
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]
// A skipped disk test says why on the test output.
#![allow(clippy::print_stdout)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::ApiKey;
use strom_protocol::messages::kafka::*;

use common::*;
use strom_testkit::Tmpfs;

/// How long a condition that needs the broker's background work may take.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

async fn produce_to(
    raw: &mut Raw,
    topic: &str,
    partition: i32,
    records: bytes::Bytes,
) -> produce_response::PartitionProduceResponse {
    let response: ProduceResponse = raw
        .call(
            ApiKey::Produce,
            9,
            &produce_request(topic, partition, -1, records),
        )
        .await;
    response.responses[0].partition_responses[0].clone()
}

/// The latest offset of `topic`/`partition` as ListOffsets answers it.
async fn latest_offset(raw: &mut Raw, topic: &str, partition: i32) -> (i16, i64) {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![
            list_offsets_request::ListOffsetsTopic::default()
                .with_name(name(topic))
                .with_partitions(vec![
                    list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(partition)
                        .with_timestamp(-1),
                ]),
        ]);
    let response: ListOffsetsResponse = raw.call(ApiKey::ListOffsets, 7, &request).await;
    let p = &response.topics[0].partitions[0];
    (p.error_code, p.offset)
}

async fn create_topics(
    raw: &mut Raw,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> create_topics_response::CreatableTopicResult {
    create_topic_result(raw, topic, partitions, configs).await
}

async fn delete_topic(raw: &mut Raw, topic: &str) -> i16 {
    let request = DeleteTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topic_names(vec![name(topic)]);
    let response: DeleteTopicsResponse = raw.call(ApiKey::DeleteTopics, 5, &request).await;
    response.responses[0].error_code
}

fn values(count: usize, size: usize) -> Vec<Vec<u8>> {
    (0..count).map(|i| vec![(i % 251) as u8; size]).collect()
}

fn records(values: &[Vec<u8>]) -> bytes::Bytes {
    let refs: Vec<Option<&[u8]>> = values.iter().map(|v| Some(v.as_slice())).collect();
    batch(&refs, false, now_ms())
}

/// A lost, emptied or garbled `partition.metadata` must never cost the
/// partition its data: the file is rebuilt from the metadata image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_partition_metadata_file_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let topic = "kept";
    const PER_PARTITION: i64 = 50;
    let broker = broker(dir.path(), &[]).await;
    let mut raw = Raw::connect(&broker).await;
    assert_eq!(create_topics(&mut raw, topic, 3, &[]).await.error_code, 0);
    for partition in 0..3 {
        let r = produce_to(
            &mut raw,
            topic,
            partition,
            records(&values(PER_PARTITION as usize, 100)),
        )
        .await;
        assert_eq!(r.error_code, 0);
    }
    let original = std::fs::read_to_string(dir.path().join("kept-0/partition.metadata")).unwrap();
    drop(raw);
    broker.shutdown().await.unwrap();

    std::fs::remove_file(dir.path().join("kept-0/partition.metadata")).unwrap();
    std::fs::write(dir.path().join("kept-1/partition.metadata"), b"").unwrap();
    std::fs::write(
        dir.path().join("kept-2/partition.metadata"),
        b"\xff\x00garbage",
    )
    .unwrap();

    let broker = common::broker(dir.path(), &[]).await;
    let mut raw = Raw::connect(&broker).await;
    for partition in 0..3 {
        assert_eq!(
            latest_offset(&mut raw, topic, partition).await,
            (0, PER_PARTITION),
            "partition {partition} kept its records"
        );
        let rebuilt = std::fs::read_to_string(
            dir.path()
                .join(format!("kept-{partition}/partition.metadata")),
        )
        .unwrap();
        assert_eq!(rebuilt, original, "partition {partition}'s file is rebuilt");
    }
    drop(raw);
    broker.shutdown().await.unwrap();
}

/// Topic names of 249 characters (Kafka's longest): create, produce, delete,
/// restart; the broker starts and the name can be used again from scratch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_topics_with_the_longest_names_keeps_the_broker_startable() {
    let dir = tempfile::tempdir().unwrap();
    let topics: Vec<String> = ["a", "b.c", "d_e-f"]
        .iter()
        .map(|p| {
            let mut name = p.repeat(249 / p.len());
            while name.len() < 249 {
                name.push('x');
            }
            name
        })
        .collect();
    let broker = broker(dir.path(), &[]).await;
    let mut raw = Raw::connect(&broker).await;
    for topic in &topics {
        assert_eq!(topic.len(), 249);
        // Partition 10: a directory name of 252 bytes.
        assert_eq!(create_topics(&mut raw, topic, 11, &[]).await.error_code, 0);
        for partition in [0, 10] {
            let r = produce_to(&mut raw, topic, partition, records(&values(10, 10))).await;
            assert_eq!(r.error_code, 0);
        }
        assert_eq!(delete_topic(&mut raw, topic).await, 0);
    }
    let leftovers = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().into_string().ok())
            .filter(|n| n.len() > 200)
            .collect()
    };
    assert!(
        eventually(SETTLE_TIMEOUT, || async {
            leftovers(dir.path()).is_empty()
        })
        .await,
        "{} directories of deleted topics remain",
        leftovers(dir.path()).len()
    );
    drop(raw);
    broker.shutdown().await.unwrap();

    let broker = common::broker(dir.path(), &[]).await;
    let mut raw = Raw::connect(&broker).await;
    for topic in &topics {
        assert_eq!(create_topics(&mut raw, topic, 1, &[]).await.error_code, 0);
        assert_eq!(latest_offset(&mut raw, topic, 0).await, (0, 0));
    }
    drop(raw);
    broker.shutdown().await.unwrap();
}

/// A leftover `-delete` directory with a long name (from an older broker, or
/// a crash) is removed at start and never stops the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leftover_delete_directory_does_not_stop_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let leftover = dir
        .path()
        .join(format!("{}-0.0123456789abcdef-delete", "z".repeat(220)));
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("00000000000000000000.log"), b"old").unwrap();
    let broker = broker(dir.path(), &[]).await;
    assert!(!leftover.exists(), "the leftover directory is removed");
    broker.shutdown().await.unwrap();
}

/// Deleting a topic gives its disk space back at once: no handle of its
/// files stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_topic_frees_its_disk_space() {
    let Some(tmpfs) = Tmpfs::mount("size=16m") else {
        return;
    };
    let data = tmpfs.path().join("data");
    let broker = broker(&data, &[]).await;
    let mut raw = Raw::connect(&broker).await;
    let empty = tmpfs.available_bytes();
    assert_eq!(
        create_topics(&mut raw, "big", 2, &[("segment.bytes", "1048576")])
            .await
            .error_code,
        0
    );
    // About 10 MB over 2 partitions, 5 segments each.
    for _ in 0..10 {
        for partition in 0..2 {
            let r = produce_to(&mut raw, "big", partition, records(&values(50, 10_000))).await;
            assert_eq!(r.error_code, 0);
        }
    }
    let full = tmpfs.available_bytes();
    assert!(empty - full > 9 << 20, "the topic takes space");
    assert_eq!(delete_topic(&mut raw, "big").await, 0);
    assert!(
        eventually(SETTLE_TIMEOUT, || async {
            tmpfs.available_bytes() + (1 << 20) > empty
        })
        .await,
        "space comes back: {} bytes free before the topic, {} after deleting it; open: {:?}",
        empty,
        tmpfs.available_bytes(),
        deleted_open_files(tmpfs.path())
    );
    drop(raw);
    broker.shutdown().await.unwrap();
}

/// Files this process holds open that were deleted, under `dir`.
fn deleted_open_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.starts_with(dir) && p.to_string_lossy().ends_with("(deleted)"))
        .collect()
}

/// Creating a topic on a full disk answers KAFKA_STORAGE_ERROR; once space
/// is back, the partitions come online without a restart. The disk is
/// filled by taking every inode of the tmpfs: that makes creating a
/// partition's files fail with ENOSPC while the metadata log (appending to
/// an existing file) still takes the record, as happens on a full disk when
/// the metadata log's last page has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_topics_on_a_full_disk_fails_and_recovers() {
    let Some(tmpfs) = Tmpfs::mount("size=16m,nr_inodes=200") else {
        return;
    };
    let data = tmpfs.path().join("data");
    let broker = broker(&data, &[]).await;
    let mut raw = Raw::connect(&broker).await;
    assert_eq!(
        create_topics(&mut raw, "before", 1, &[]).await.error_code,
        0
    );

    let filler = tmpfs.path().join("filler");
    std::fs::create_dir(&filler).unwrap();
    for i in 0.. {
        match std::fs::File::create(filler.join(i.to_string())) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }

    let created = create_topics(&mut raw, "on-full-disk", 2, &[]).await;
    assert_eq!(
        created.error_code,
        ErrorCode::KafkaStorageError.code(),
        "{created:?}"
    );
    let message = created
        .error_message
        .map(|m| m.to_string())
        .unwrap_or_default();
    assert!(
        message.contains("No space left on device"),
        "the message says why: {message:?}"
    );
    let r = produce_to(&mut raw, "on-full-disk", 0, records(&values(1, 10))).await;
    assert_eq!(
        r.error_code,
        ErrorCode::KafkaStorageError.code(),
        "produce names the storage error, not leadership"
    );
    assert_eq!(
        latest_offset(&mut raw, "on-full-disk", 0).await.0,
        ErrorCode::KafkaStorageError.code(),
        "so does ListOffsets"
    );

    std::fs::remove_dir_all(&filler).unwrap();
    for partition in 0..2 {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let r = produce_to(&mut raw, "on-full-disk", partition, records(&values(1, 10))).await;
            if r.error_code == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "partition {partition} comes online once space is back (error {})",
                r.error_code
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(raw);
    broker.shutdown().await.unwrap();
}

/// A disk filled by producers: appends fail with KAFKA_STORAGE_ERROR, and
/// deleting the topic that filled it lets the others take records again,
/// without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_recover_when_a_deleted_topic_frees_a_full_disk() {
    let Some(tmpfs) = Tmpfs::mount("size=16m") else {
        return;
    };
    let data = tmpfs.path().join("data");
    let broker = broker(&data, &[]).await;
    let mut raw = Raw::connect(&broker).await;
    let small = [("segment.bytes", "65536")];
    assert_eq!(
        create_topics(&mut raw, "small", 1, &small).await.error_code,
        0
    );
    let r = produce_to(&mut raw, "small", 0, records(&values(5, 1000))).await;
    assert_eq!(r.error_code, 0);
    let big = [("segment.bytes", "1048576")];
    assert_eq!(create_topics(&mut raw, "big", 1, &big).await.error_code, 0);
    let mut filled = false;
    for _ in 0..100 {
        let r = produce_to(&mut raw, "big", 0, records(&values(25, 10_000))).await;
        if r.error_code != 0 {
            assert_eq!(r.error_code, ErrorCode::KafkaStorageError.code());
            filled = true;
            break;
        }
    }
    assert!(filled, "16 MiB fill up");
    // The small topic cannot take a segment's worth either.
    let mut small_failed = false;
    for _ in 0..20 {
        let r = produce_to(&mut raw, "small", 0, records(&values(20, 1000))).await;
        if r.error_code != 0 {
            assert_eq!(r.error_code, ErrorCode::KafkaStorageError.code());
            small_failed = true;
            break;
        }
    }
    assert!(small_failed, "the full disk refuses the small topic too");
    assert_eq!(delete_topic(&mut raw, "big").await, 0);
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let r = produce_to(&mut raw, "small", 0, records(&values(20, 1000))).await;
        if r.error_code == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the small topic takes records again (error {})",
            r.error_code
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(raw);
    broker.shutdown().await.unwrap();
}

/// The first records of a topic created before the disk filled: refused with
/// KAFKA_STORAGE_ERROR while it is full, taken once space is back (the log
/// does not go offline for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_topic_takes_records_once_a_full_disk_has_space() {
    let Some(tmpfs) = Tmpfs::mount("size=16m") else {
        return;
    };
    let data = tmpfs.path().join("data");
    let broker = broker(&data, &[]).await;
    let mut raw = Raw::connect(&broker).await;
    assert_eq!(create_topics(&mut raw, "fresh", 1, &[]).await.error_code, 0);
    let filler = tmpfs.path().join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
    }
    let r = produce_to(&mut raw, "fresh", 0, records(&values(10, 1000))).await;
    assert_eq!(r.error_code, ErrorCode::KafkaStorageError.code());
    std::fs::remove_file(&filler).unwrap();
    let r = produce_to(&mut raw, "fresh", 0, records(&values(10, 1000))).await;
    assert_eq!(r.error_code, 0, "the log takes records once space is back");
    assert_eq!(latest_offset(&mut raw, "fresh", 0).await, (0, 10));
    drop(raw);
    broker.shutdown().await.unwrap();
}
