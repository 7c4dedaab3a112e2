//! What the replication tests share: an idempotent librdkafka producer
//! writing numbered records at acks=all to partition 0 of a topic, reading
//! a partition back, and each node's view of a partition's leader and ISR.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::cluster::DEADLINE;

/// Records in flight at once from a [`Writer`].
const IN_FLIGHT: usize = 5;

/// The leader and ISR librdkafka reads from the node at `addr` (its own
/// metadata, which a node just back from a pause may still have stale).
pub fn leader_and_isr(addr: SocketAddr, topic: &str) -> Option<(i32, Vec<i32>)> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", addr.to_string())
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let partition = metadata.topics().first()?.partitions().first()?;
    let mut isr = partition.isr().to_vec();
    isr.sort_unstable();
    Some((partition.leader(), isr))
}

/// Writes numbered records (`0`, `1`, ...) to partition 0 of a topic at
/// acks=all with an idempotent librdkafka producer until `total` are
/// acknowledged or it is stopped, and records what was acknowledged.
pub struct Writer {
    acked: Arc<Mutex<Vec<u64>>>,
    /// Set to stop sending (what is in flight still completes).
    stopped: Arc<AtomicBool>,
    errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub fn start(bootstrap: &str, topic: &'static str, total: usize) -> Self {
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.timeout.ms", "120000")
            .set("request.timeout.ms", "10000")
            // librdkafka's request timeout: a request to a paused leader is
            // given up (and retried at the new one) after this.
            .set("socket.timeout.ms", "10000")
            .create()
            .unwrap();
        let acked = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let stopped = Arc::new(AtomicBool::new(false));
        let (acked_in, errors_in, stopped_in) = (
            Arc::clone(&acked),
            Arc::clone(&errors),
            Arc::clone(&stopped),
        );
        let task = tokio::spawn(async move {
            let mut in_flight = FuturesOrdered::new();
            let mut next: u64 = 0;
            loop {
                while in_flight.len() < IN_FLIGHT
                    && acked_in.lock().unwrap().len() < total
                    && !stopped_in.load(Ordering::Relaxed)
                {
                    let n = next;
                    next += 1;
                    let producer = producer.clone();
                    in_flight.push_back(async move {
                        let value = n.to_string();
                        let sent = producer
                            .send(
                                FutureRecord::<(), str>::to(topic)
                                    .partition(0)
                                    .payload(&value),
                                Duration::from_secs(120),
                            )
                            .await;
                        (n, sent.map(|_| ()).map_err(|(e, _)| e.to_string()))
                    });
                }
                let Some((n, outcome)) = in_flight.next().await else {
                    return;
                };
                match outcome {
                    Ok(()) => acked_in.lock().unwrap().push(n),
                    Err(e) => errors_in.lock().unwrap().push(format!("{n}: {e}")),
                }
            }
        });
        Self {
            acked,
            stopped,
            errors,
            task,
        }
    }

    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    pub async fn wait_for(&self, count: usize) {
        let deadline = Instant::now() + DEADLINE;
        while self.acked() < count {
            assert!(
                Instant::now() < deadline,
                "only {} of {count} acknowledged; errors: {:?}",
                self.acked(),
                self.errors.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn finish(self) -> (Vec<u64>, Vec<String>) {
        tokio::time::timeout(DEADLINE * 2, self.task)
            .await
            .expect("the writer finishes")
            .unwrap();
        let acked = self.acked.lock().unwrap().clone();
        let errors = self.errors.lock().unwrap().clone();
        (acked, errors)
    }
}

/// Every value of the partition from the start, read by librdkafka until
/// the high watermark.
pub fn read_all(bootstrap: &str, topic: &str) -> Vec<u64> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    // Right after an election a broker may answer from older metadata
    // (NOT_LEADER_OR_FOLLOWER): ask again until the deadline.
    let deadline = Instant::now() + DEADLINE;
    let high = loop {
        match consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)) {
            Ok((_, high)) => break high,
            Err(e) if Instant::now() < deadline => {
                eprintln!("high watermark of {topic}: {e}; asking again");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("high watermark of {topic}: {e}"),
        }
    };
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut values = Vec::new();
    let mut position = 0;
    while position < high && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            position = m.offset() + 1;
            let text = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            values.push(text.parse().unwrap());
        }
    }
    assert_eq!(position, high, "read up to the high watermark");
    values
}
