//! strom-client's default partitioner against librdkafka's Java-compatible
//! one (`murmur2_random`), through the real broker: every keyed record is
//! stored in the partition strom-client computes for its key.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{BrokerProcess, assign, flush, wait_until};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::BaseRecord;
use strom_client::partitioner::partition_for_key;

const PARTITIONS: i32 = 12;
const KEYS: usize = 500;

#[test]
fn keys_land_where_librdkafkas_java_compatible_partitioner_puts_them() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    broker.create_topic("keyed", PARTITIONS);
    let producer = broker.producer(&[("partitioner", "murmur2_random")]);
    for i in 0..KEYS {
        let key = format!("customer-{i}");
        producer
            .send(BaseRecord::to("keyed").key(&key).payload("order"))
            .unwrap();
    }
    flush(&producer);
    let mut placed: BTreeMap<String, i32> = BTreeMap::new();
    for partition in 0..PARTITIONS {
        let consumer = broker.consumer();
        let (_, high) = consumer
            .fetch_watermarks("keyed", partition, Duration::from_secs(30))
            .unwrap();
        if high == 0 {
            continue;
        }
        assign(&consumer, "keyed", partition, 0);
        let mut read = 0;
        assert!(wait_until(Duration::from_secs(30), || {
            while let Some(m) = consumer.poll(Duration::from_millis(50)) {
                let m = m.unwrap();
                let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
                placed.insert(key, m.partition());
                read += 1;
            }
            read == high
        }));
    }
    assert_eq!(placed.len(), KEYS);
    for (key, partition) in &placed {
        let ours = partition_for_key(key.as_bytes(), PARTITIONS as u32);
        assert_eq!(i64::from(ours), i64::from(*partition), "{key}");
    }
    broker.stop();
}
