//! Topic configs, DeleteRecords and log cleanup against librdkafka (the
//! `rdkafka` crate's bundled build) and the real broker binary.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod common;

use std::time::Duration;

use common::{BrokerProcess, assign, flush, wait_until};
use rdkafka::admin::{AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A topic config as librdkafka's DescribeConfigs sees it.
fn describe(broker: &BrokerProcess, topic: &str, name: &str) -> (Option<String>, String) {
    let (admin, runtime) = broker.admin();
    let results = runtime
        .block_on(admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new()))
        .unwrap();
    let resource = results[0].as_ref().unwrap();
    let entry = resource
        .get(name)
        .unwrap_or_else(|| panic!("{name} is described"));
    (entry.value.clone(), format!("{:?}", entry.source))
}

#[test]
fn librdkafka_describes_and_alters_configs_as_kafka_answers() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &["log.retention.hours=2"]);
    let (admin, runtime) = broker.admin();
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let topic =
        NewTopic::new("configured", 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
    let created = runtime
        .block_on(admin.create_topics(&[topic], &options))
        .unwrap();
    assert!(created[0].is_ok(), "{created:?}");

    assert_eq!(
        describe(&broker, "configured", "cleanup.policy"),
        (Some("compact".to_owned()), "DynamicTopic".to_owned())
    );
    assert_eq!(
        describe(&broker, "configured", "retention.ms"),
        (Some("7200000".to_owned()), "StaticBroker".to_owned()),
        "log.retention.hours in ms"
    );
    assert_eq!(
        describe(&broker, "configured", "segment.bytes"),
        (Some("1073741824".to_owned()), "Default".to_owned())
    );

    // librdkafka's AlterConfigs replaces the topic's overrides.
    let alter = AlterConfig::new(ResourceSpecifier::Topic("configured"))
        .set("retention.ms", "60000")
        .set("compression.type", "lz4");
    let altered = runtime
        .block_on(admin.alter_configs(&[alter], &options))
        .unwrap();
    assert!(altered[0].is_ok(), "{altered:?}");
    assert_eq!(
        describe(&broker, "configured", "retention.ms"),
        (Some("60000".to_owned()), "DynamicTopic".to_owned())
    );
    assert_eq!(
        describe(&broker, "configured", "cleanup.policy"),
        (Some("delete".to_owned()), "Default".to_owned()),
        "an override left out of AlterConfigs is removed"
    );

    // The rdkafka crate reports every AlterConfigs resource as a success
    // (it never reads the per-resource error), so what shows the refusal is
    // that nothing changed.
    for (name, value) in [("retention.ms", "-9"), ("colour", "blue")] {
        let bad = AlterConfig::new(ResourceSpecifier::Topic("configured")).set(name, value);
        runtime
            .block_on(admin.alter_configs(&[bad], &options))
            .unwrap();
        assert_eq!(
            describe(&broker, "configured", "retention.ms"),
            (Some("60000".to_owned()), "DynamicTopic".to_owned()),
            "{name}={value} is refused"
        );
    }

    // A produced gzip batch is stored as lz4, and reads back intact.
    let producer = broker.producer(&[("compression.codec", "gzip")]);
    for i in 0..100 {
        let key = format!("k{i}");
        let value = format!("value {i}").repeat(10);
        producer
            .send(BaseRecord::to("configured").key(&key).payload(&value))
            .unwrap();
    }
    flush(&producer);
    let consumer = broker.consumer();
    assign(&consumer, "configured", 0, 0);
    let mut seen = 0;
    assert!(wait_until(TIMEOUT, || {
        while let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            assert_eq!(m.offset(), seen);
            assert_eq!(
                m.payload().unwrap(),
                format!("value {seen}").repeat(10).as_bytes()
            );
            seen += 1;
        }
        seen == 100
    }));
    broker.stop();
}

#[test]
fn delete_records_moves_the_start_and_consumers_reset() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    broker.create_topic("trim", 1);
    let producer = broker.producer(&[]);
    for i in 0..50 {
        let value = format!("v{i}");
        producer
            .send(BaseRecord::<(), _>::to("trim").payload(&value))
            .unwrap();
    }
    flush(&producer);
    let (admin, runtime) = broker.admin();
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset("trim", 0, Offset::Offset(20))
        .unwrap();
    let result = runtime
        .block_on(admin.delete_records(&offsets, &AdminOptions::new()))
        .unwrap();
    let low = result.find_partition("trim", 0).unwrap();
    assert_eq!(low.offset(), Offset::Offset(20));
    assert!(low.error().is_ok());
    let consumer = broker.consumer();
    assert_eq!(
        consumer.fetch_watermarks("trim", 0, TIMEOUT).unwrap(),
        (20, 50)
    );

    // A consumer starting below the log start resets to it (earliest).
    let reset: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", "unused")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    assign(&reset, "trim", 0, 5);
    let mut first = None;
    assert!(wait_until(TIMEOUT, || {
        if let Some(m) = reset.poll(Duration::from_millis(100)) {
            first = Some(m.unwrap().offset());
        }
        first.is_some()
    }));
    assert_eq!(first, Some(20));

    let mut beyond = TopicPartitionList::new();
    beyond
        .add_partition_offset("trim", 0, Offset::Offset(51))
        .unwrap();
    let result = runtime.block_on(admin.delete_records(&beyond, &AdminOptions::new()));
    let failed = match result {
        Ok(list) => list.find_partition("trim", 0).unwrap().error().err(),
        Err(e) => Some(e),
    };
    assert_eq!(
        failed.and_then(|e| e.rdkafka_error_code()),
        Some(RDKafkaErrorCode::OffsetOutOfRange)
    );
    // The high watermark did not move under the producer.
    producer
        .send(BaseRecord::<(), _>::to("trim").payload("more"))
        .unwrap();
    producer.flush(TIMEOUT).unwrap();
    assert_eq!(
        consumer.fetch_watermarks("trim", 0, TIMEOUT).unwrap(),
        (20, 51)
    );
    broker.stop();
}
