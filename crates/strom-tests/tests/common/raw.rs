//! One Kafka connection to one broker, no client logic: a request goes to
//! exactly the node a test names (no metadata refresh, no redirect to the
//! controller, no retry), which cluster tests and benchmarks need to say
//! which node answered.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use strom_protocol::messages::kafka::{
    CreateTopicsRequest, CreateTopicsResponse, DescribeClusterRequest, DescribeClusterResponse,
    MetadataRequest, MetadataResponse, TopicName, create_topics_request::CreatableTopic,
};
use strom_protocol::messages::{ApiKey, Decodable, Encodable, StrBytes, encode_request};

/// The largest response read (a Metadata answer of a few thousand topics).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// A blocking connection; every call waits at most the timeout given at
/// [`connect`](Self::connect) for its answer.
#[derive(Debug)]
pub struct RawConnection {
    stream: TcpStream,
    correlation_id: i32,
}

impl RawConnection {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            correlation_id: 0,
        })
    }

    /// Sends one request and reads its response.
    pub fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        api_key: ApiKey,
        version: i16,
        body: &Req,
    ) -> io::Result<Resp> {
        self.correlation_id += 1;
        let frame = encode_request(
            api_key,
            version,
            self.correlation_id,
            Some("strom-tests"),
            body,
        )
        .map_err(invalid)?;
        self.stream.write_all(&frame)?;
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let len = usize::try_from(i32::from_be_bytes(len)).map_err(invalid)?;
        if len > MAX_RESPONSE_BYTES {
            return Err(invalid(format!("a response of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body)?;
        let (correlation_id, response) =
            strom_protocol::messages::decode_response(api_key, version, Bytes::from(body))
                .map_err(invalid)?;
        if correlation_id != self.correlation_id {
            return Err(invalid(format!(
                "correlation id {correlation_id}, expected {}",
                self.correlation_id
            )));
        }
        Ok(response)
    }

    /// CreateTopics (v7) of one topic: the topic's error code and message
    /// (0 when created).
    pub fn create_topic(
        &mut self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
    ) -> io::Result<(i16, Option<String>)> {
        self.create_topic_with(name, partitions, replication_factor, &[])
    }

    /// [`Self::create_topic`] with topic configs; the error code alone.
    #[allow(dead_code)] // not every test binary creates topics with configs
    pub fn create_topic_with_configs(
        &mut self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &[(&str, &str)],
    ) -> io::Result<i16> {
        self.create_topic_with(name, partitions, replication_factor, configs)
            .map(|(code, _)| code)
    }

    fn create_topic_with(
        &mut self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &[(&str, &str)],
    ) -> io::Result<(i16, Option<String>)> {
        use strom_protocol::messages::kafka::create_topics_request::CreatableTopicConfig;
        let topic = CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(name.to_owned())))
            .with_num_partitions(partitions)
            .with_replication_factor(replication_factor)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(StrBytes::from_string((*k).to_owned()))
                            .with_value(Some(StrBytes::from_string((*v).to_owned())))
                    })
                    .collect(),
            );
        let request = CreateTopicsRequest::default()
            .with_topics(vec![topic])
            .with_timeout_ms(30_000);
        let response: CreateTopicsResponse = self.call(ApiKey::CreateTopics, 7, &request)?;
        let result = response
            .topics
            .first()
            .ok_or_else(|| invalid("a CreateTopics response without the topic"))?;
        Ok((
            result.error_code,
            result.error_message.as_ref().map(|m| m.to_string()),
        ))
    }

    /// DescribeCluster (v0): the controller id this node reports (-1: none)
    /// and the ids of the brokers it lists.
    pub fn describe_cluster(&mut self) -> io::Result<(i32, Vec<i32>)> {
        let response: DescribeClusterResponse = self.call(
            ApiKey::DescribeCluster,
            0,
            &DescribeClusterRequest::default(),
        )?;
        if response.error_code != 0 {
            return Err(invalid(format!(
                "DescribeCluster error {}",
                response.error_code
            )));
        }
        let mut brokers: Vec<i32> = response.brokers.iter().map(|b| b.broker_id.0).collect();
        brokers.sort_unstable();
        Ok((response.controller_id.0, brokers))
    }

    /// Fetch (v12) of one partition as replica `replica_id` (a follower's
    /// fetch, no wait): the partition's error code and high watermark.
    pub fn replica_fetch(
        &mut self,
        replica_id: i32,
        topic: &str,
        partition: i32,
        fetch_offset: i64,
    ) -> io::Result<(i16, i64)> {
        use strom_protocol::messages::kafka::{
            BrokerId, FetchRequest, FetchResponse,
            fetch_request::{FetchPartition, FetchTopic},
        };
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(replica_id))
            .with_max_wait_ms(0)
            .with_min_bytes(0)
            .with_max_bytes(1 << 20)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
                    .with_partitions(vec![
                        FetchPartition::default()
                            .with_partition(partition)
                            .with_fetch_offset(fetch_offset)
                            .with_current_leader_epoch(-1)
                            .with_partition_max_bytes(1 << 20),
                    ]),
            ]);
        let response: FetchResponse = self.call(ApiKey::Fetch, 12, &request)?;
        let p = response
            .responses
            .first()
            .and_then(|t| t.partitions.first())
            .ok_or_else(|| invalid("a Fetch response without the partition"))?;
        Ok((p.error_code, p.high_watermark))
    }

    /// Metadata (v12) of one topic: each partition's leader (-1: none), by
    /// partition, and the live brokers' ids.
    pub fn leaders(&mut self, topic: &str) -> io::Result<(Vec<i32>, Vec<i32>)> {
        use strom_protocol::messages::kafka::metadata_request::MetadataRequestTopic;
        let request = MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
                TopicName(StrBytes::from_string(topic.to_owned())),
            ))]))
            .with_allow_auto_topic_creation(false);
        let response: MetadataResponse = self.call(ApiKey::Metadata, 12, &request)?;
        let found = response
            .topics
            .first()
            .filter(|t| t.error_code == 0)
            .ok_or_else(|| invalid(format!("no topic {topic}")))?;
        let mut partitions: Vec<(i32, i32)> = found
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.leader_id.0))
            .collect();
        partitions.sort_unstable();
        let mut brokers: Vec<i32> = response.brokers.iter().map(|b| b.node_id.0).collect();
        brokers.sort_unstable();
        Ok((partitions.into_iter().map(|(_, l)| l).collect(), brokers))
    }

    /// Metadata (v12) of every topic: the names, sorted, and the live
    /// brokers' ids.
    pub fn topics_and_brokers(&mut self) -> io::Result<(Vec<String>, Vec<i32>)> {
        let request = MetadataRequest::default()
            .with_topics(None)
            .with_allow_auto_topic_creation(false);
        let response: MetadataResponse = self.call(ApiKey::Metadata, 12, &request)?;
        let mut topics: Vec<String> = response
            .topics
            .iter()
            .filter(|t| t.error_code == 0)
            .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
            .collect();
        topics.sort_unstable();
        let mut brokers: Vec<i32> = response.brokers.iter().map(|b| b.node_id.0).collect();
        brokers.sort_unstable();
        Ok((topics, brokers))
    }
}
