//! Broker-wide bounds, against the real `strom` process: decompression
//! bombs stay within `queued.max.request.bytes` while other clients are
//! served, a burst of connections waits in `socket.listen.backlog.size`,
//! bad values of those properties stop the broker at start, and idle
//! sockets cannot keep a scraper off the metrics endpoint.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::{BrokerProcess, assign, flush, wait_for_exit, wait_until};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::BaseRecord;
use strom_protocol::compression::Compression;
use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::kafka::{self, ProduceRequest, ProduceResponse};
use strom_protocol::messages::{ApiKey, StrBytes, decode_response, encode_request};
use strom_protocol::record_batch::{
    Attributes, BatchHeader, LOG_OVERHEAD, MAGIC_V2, RECORD_BATCH_OVERHEAD, update_crc,
};

/// How long any one step may take before the test gives up.
const DEADLINE: Duration = Duration::from_secs(60);
/// Concurrent decompression bombs.
const BOMBS: usize = 32;
/// What each bomb inflates to: past every bound the broker has had (it
/// inflated up to 256 MiB per batch before refusing).
const BOMB_BYTES: usize = 300 << 20;
/// `queued.max.request.bytes` in the bomb test: small, so that the bound is
/// visible next to the broker's own memory.
const QUEUED_MAX_REQUEST_BYTES: usize = 32 << 20;
/// What the broker may take beyond its baseline besides the documented
/// budget (twice `queued.max.request.bytes`): thread stacks of the blocking
/// pool, the allocator's slack, client metadata.
const RSS_SLACK_BYTES: u64 = 64 << 20;

/// A zstd frame (RFC 8878) that inflates to `bytes` zeros: run-length
/// blocks of 128 KiB, four bytes each, in a 128 KiB window.
fn zstd_bomb(bytes: usize) -> Vec<u8> {
    const BLOCK: usize = 128 << 10;
    let blocks = bytes / BLOCK;
    let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, (17 - 10) << 3];
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        let header = (BLOCK as u32) << 3 | 1 << 1 | last; // RLE block
        frame.extend_from_slice(&header.to_le_bytes()[..3]);
        frame.push(0);
    }
    frame
}

/// A v2 batch with valid header and CRC claiming one zstd record, whose
/// records section is `zstd_bomb(bytes)`.
fn bomb_batch(bytes: usize) -> Bytes {
    let mut batch = vec![0u8; RECORD_BATCH_OVERHEAD];
    batch.extend_from_slice(&zstd_bomb(bytes));
    let header = BatchHeader {
        base_offset: 0,
        batch_length: (batch.len() - LOG_OVERHEAD) as i32,
        partition_leader_epoch: -1,
        magic: MAGIC_V2,
        crc: 0,
        attributes: Attributes(i16::from(Compression::Zstd.id())),
        last_offset_delta: 0,
        base_timestamp: 0,
        max_timestamp: 0,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        record_count: 1,
    };
    header.write_to(&mut batch);
    update_crc(&mut batch);
    Bytes::from(batch)
}

/// Sends one produce request (v9, acks=1) of `records` to `topic`-0 and
/// returns the partition's error code.
fn produce_raw(addr: &str, topic: &str, records: Bytes) -> i16 {
    let request = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![
            kafka::produce_request::TopicProduceData::default()
                .with_name(kafka::TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partition_data(vec![
                    kafka::produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(records)),
                ]),
        ]);
    let frame = encode_request(ApiKey::Produce, 9, 1, Some("bomb"), &request).unwrap();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(&frame).unwrap();
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(size) as usize];
    stream.read_exact(&mut body).unwrap();
    let (_, response): (i32, ProduceResponse) =
        decode_response(ApiKey::Produce, 9, Bytes::from(body)).unwrap();
    response.responses[0].partition_responses[0].error_code
}

/// A field of `/proc/PID/status` in bytes (`VmHWM`, `VmRSS`).
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

/// Produces `count` lz4-compressed records to `topic`-0 with librdkafka and
/// reads them back from `offset`.
fn produce_and_fetch(broker: &BrokerProcess, topic: &str, offset: i64, count: usize) {
    let producer = broker.producer(&[("compression.type", "lz4")]);
    for i in 0..count {
        let value = format!("normal-{offset}-{i}");
        producer
            .send(BaseRecord::<(), _>::to(topic).partition(0).payload(&value))
            .unwrap();
    }
    flush(&producer);
    let consumer = broker.consumer();
    assign(&consumer, topic, 0, offset);
    let mut seen = 0;
    assert!(
        wait_until(DEADLINE, || {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                assert_eq!(
                    m.payload().unwrap(),
                    format!("normal-{offset}-{seen}").as_bytes()
                );
                seen += 1;
            }
            seen == count
        }),
        "read {seen} of {count} records back"
    );
    consumer.unassign().unwrap();
}

#[test]
fn decompression_bombs_stay_within_the_budget_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let queued = format!("queued.max.request.bytes={QUEUED_MAX_REQUEST_BYTES}");
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &["socket.request.max.bytes=1048576", &queued],
    );
    broker.create_topic("bombs", 1);
    broker.create_topic("normal", 1);
    // The broker's own memory, warmed up by ordinary traffic.
    produce_and_fetch(&broker, "normal", 0, 100);
    let baseline = proc_status_bytes(broker.pid(), "VmHWM");

    let bomb = bomb_batch(BOMB_BYTES);
    assert!(bomb.len() < 64 << 10, "a bomb is small: {}", bomb.len());
    let bombs: Vec<_> = (0..BOMBS)
        .map(|_| {
            let addr = broker.bootstrap.clone();
            let bomb = bomb.clone();
            std::thread::spawn(move || produce_raw(&addr, "bombs", bomb))
        })
        .collect();
    // Meanwhile another client produces and fetches.
    produce_and_fetch(&broker, "normal", 100, 100);
    let codes: Vec<i16> = bombs.into_iter().map(|b| b.join().unwrap()).collect();

    let peak = proc_status_bytes(broker.pid(), "VmHWM");
    let budget = 2 * QUEUED_MAX_REQUEST_BYTES as u64;
    assert!(
        peak <= baseline + budget + RSS_SLACK_BYTES,
        "peak RSS {} MiB, baseline {} MiB, budget {} MiB",
        peak >> 20,
        baseline >> 20,
        budget >> 20
    );
    // Refused as too large (not retried unchanged by clients), every one.
    assert!(
        codes
            .iter()
            .all(|c| *c == ErrorCode::MessageTooLarge.code()),
        "{codes:?}"
    );
    // Nothing of them was stored; the broker still serves.
    produce_and_fetch(&broker, "normal", 200, 10);
    broker.stop();
}

#[test]
fn a_burst_of_connections_waits_in_the_listen_backlog() {
    const BURST: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    // One connection slot, held below: every other connection waits in the
    // accept queue, which must hold the whole burst.
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &["max.connections=1", "socket.listen.backlog.size=1024"],
    );
    let addr: SocketAddr = broker.bootstrap.parse().unwrap();
    let _holder = TcpStream::connect(addr).unwrap();
    let mut burst = Vec::with_capacity(BURST);
    for i in 0..BURST {
        // A connection that finds the queue full waits for SYN
        // retransmits; within the deadline it fails instead.
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connection {i} of the burst: {e}"));
        burst.push(stream);
    }
    drop(burst);
    broker.stop();
}

/// Runs `strom broker` with `properties` and expects it to exit at start
/// with an error naming `name`; kills it if it starts instead.
fn refused_at_start(properties: &[&str], name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_strom-e2e"));
    command
        .args(["broker", "--listen", "127.0.0.1:0", "--metrics", ""])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for p in properties {
        command.args(["--set", p]);
    }
    let output = wait_for_exit(command.spawn().unwrap(), DEADLINE)
        .unwrap_or_else(|_| panic!("the broker started with {properties:?}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{properties:?}: {stderr}");
    assert!(stderr.contains(name), "{properties:?}: {stderr}");
}

#[test]
fn bad_bounds_stop_the_broker_at_start() {
    for bad in ["0", "-5", "many"] {
        refused_at_start(
            &[&format!("socket.listen.backlog.size={bad}")],
            "socket.listen.backlog.size",
        );
    }
    refused_at_start(
        &["queued.max.request.bytes=lots"],
        "queued.max.request.bytes",
    );
    // Kafka: a bound must hold the largest request.
    refused_at_start(
        &[
            "socket.request.max.bytes=1048576",
            "queued.max.request.bytes=1000",
        ],
        "queued.max.request.bytes",
    );
    // Good values start: no bound, and a request bound above the default
    // budget, which the budget then follows.
    for good in [
        [
            "socket.listen.backlog.size=64",
            "queued.max.request.bytes=-1",
        ],
        [
            "socket.listen.backlog.size=4096",
            "socket.request.max.bytes=314572800",
        ],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let broker = BrokerProcess::start(&dir.path().join("data"), &good);
        broker.create_topic("started", 1);
        broker.stop();
    }
}

#[test]
fn idle_sockets_do_not_keep_scrapers_off_the_metrics_endpoint() {
    /// More than the listener's connection slots (64).
    const IDLE: usize = 80;
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let host = broker
        .metrics_url
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let idle: Vec<TcpStream> = (0..IDLE)
        .map(|_| TcpStream::connect(&host).unwrap())
        .collect();
    // A scrape gets its answer, well before the idle sockets' 60 s lifetime.
    let mut stream = TcpStream::connect(&host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("the scrape is answered");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("strom_partitions"), "{response}");
    drop(idle);
    broker.stop();
}
