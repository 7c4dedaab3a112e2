//! Helpers of the broker's wire tests: a started broker, a raw connection
//! that sends and receives frames, requests built for the common cases.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::cast_possible_truncation
)]

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use strom_broker::config::BrokerConfig;
use strom_broker::{RunningBroker, start};
use strom_protocol::builder::RecordBatchBuilder;
use strom_protocol::compression::Compression;
use strom_protocol::messages::kafka::*;
use strom_protocol::messages::{
    ApiKey, Decodable, Encodable, StrBytes, decode_response, encode_request,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A deadline for any single exchange: a broker that never answers fails.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn broker(dir: &std::path::Path, extra: &[(&str, &str)]) -> RunningBroker {
    // The broker's log lines show with a failing test's output.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()))
        .try_init();
    let mut props = BTreeMap::from([
        ("listeners".to_owned(), "PLAINTEXT://127.0.0.1:0".to_owned()),
        ("log.dirs".to_owned(), dir.display().to_string()),
    ]);
    for (k, v) in extra {
        props.insert((*k).to_owned(), (*v).to_owned());
    }
    start(BrokerConfig::from_properties(props).unwrap())
        .await
        .unwrap()
}

/// A bare Kafka protocol connection.
pub struct Raw {
    pub stream: TcpStream,
    correlation: i32,
}

impl Raw {
    pub async fn connect(broker: &RunningBroker) -> Self {
        Self {
            stream: TcpStream::connect(broker.local_addr).await.unwrap(),
            correlation: 0,
        }
    }

    pub async fn send<T: Encodable>(&mut self, key: ApiKey, version: i16, request: &T) -> i32 {
        self.correlation += 1;
        let frame = encode_request(key, version, self.correlation, Some("raw"), request).unwrap();
        self.stream.write_all(&frame).await.unwrap();
        self.correlation
    }

    /// The next frame, or `None` when the broker closed the connection.
    pub async fn next_frame(&mut self) -> Option<Bytes> {
        let read = async {
            let mut size = [0u8; 4];
            self.stream.read_exact(&mut size).await.ok()?;
            let mut body = BytesMut::zeroed(i32::from_be_bytes(size) as usize);
            self.stream.read_exact(&mut body).await.ok()?;
            Some(body.freeze())
        };
        tokio::time::timeout(ANSWER_TIMEOUT, read)
            .await
            .expect("broker answered in time")
    }

    pub async fn recv<R: Decodable>(&mut self, key: ApiKey, version: i16, correlation: i32) -> R {
        let frame = self
            .next_frame()
            .await
            .expect("a response, not a closed connection");
        let (got, response) = decode_response(key, version, frame).unwrap();
        assert_eq!(got, correlation, "responses come in request order");
        response
    }

    pub async fn call<T: Encodable, R: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        request: &T,
    ) -> R {
        let correlation = self.send(key, version, request).await;
        self.recv(key, version, correlation).await
    }
}

pub fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

pub fn produce_request(topic: &str, partition: i32, acks: i16, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5000)
        .with_topic_data(vec![
            produce_request::TopicProduceData::default()
                .with_name(name(topic))
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(records)),
                ]),
        ])
}

pub fn batch(values: &[Option<&[u8]>], keyed: bool, timestamp: i64) -> Bytes {
    let mut builder = RecordBatchBuilder::new(Compression::None);
    for (i, v) in values.iter().enumerate() {
        let key = format!("k{i}");
        builder.push(timestamp, keyed.then_some(key.as_bytes()), *v, &[]);
    }
    builder.build().unwrap()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub async fn produce(
    raw: &mut Raw,
    topic: &str,
    records: Bytes,
) -> produce_response::PartitionProduceResponse {
    let response: ProduceResponse = raw
        .call(ApiKey::Produce, 9, &produce_request(topic, 0, -1, records))
        .await;
    response.responses[0].partition_responses[0].clone()
}

pub async fn create_topic(
    raw: &mut Raw,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> i16 {
    create_topic_result(raw, topic, partitions, configs)
        .await
        .error_code
}

/// CreateTopics for one topic: its whole result (code and message).
pub async fn create_topic_result(
    raw: &mut Raw,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> create_topics_response::CreatableTopicResult {
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![
            create_topics_request::CreatableTopic::default()
                .with_name(name(topic))
                .with_num_partitions(partitions)
                .with_replication_factor(1)
                .with_configs(
                    configs
                        .iter()
                        .map(|(k, v)| {
                            create_topics_request::CreatableTopicConfig::default()
                                .with_name(StrBytes::from_string((*k).to_owned()))
                                .with_value(Some(StrBytes::from_string((*v).to_owned())))
                        })
                        .collect(),
                ),
        ]);
    let response: CreateTopicsResponse = raw.call(ApiKey::CreateTopics, 7, &request).await;
    response.topics[0].clone()
}

pub fn fetch_request(
    topic: &str,
    offset: i64,
    max_wait_ms: i32,
    session_id: i32,
    epoch: i32,
) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_id(session_id)
        .with_session_epoch(epoch)
        .with_topics(vec![
            fetch_request::FetchTopic::default()
                .with_topic(name(topic))
                .with_partitions(vec![
                    fetch_request::FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(offset)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ])
}

/// Sends one request on a fresh connection and decodes the answer at the
/// same version; panics if the broker closes the connection instead.
pub async fn exchange<T: Encodable, R: Decodable>(
    broker: &RunningBroker,
    key: ApiKey,
    version: i16,
    request: &T,
) -> R {
    let mut raw = Raw::connect(broker).await;
    let correlation = raw.send(key, version, request).await;
    let frame = raw
        .next_frame()
        .await
        .unwrap_or_else(|| panic!("{key:?} v{version}: the broker closed the connection"));
    let (got, response) = decode_response::<R>(key, version, frame)
        .unwrap_or_else(|e| panic!("{key:?} v{version}: undecodable response: {e}"));
    assert_eq!(got, correlation);
    response
}

/// Polls `condition` (async) until it holds or the deadline passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
