//! Key-value state stores through the Processor API, run by the test driver:
//! a processor counts words in a store connected to it, the store's writes
//! are logged for its changelog topic in Kafka Streams' layout, and the
//! topology's description and sub-topologies account for the store.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use strom_streams::processor::{Processor, ProcessorContext, Record};
use strom_streams::serdes::{I64Serde, StringSerde};
use strom_streams::state::StoreBuilder;
use strom_streams::test_driver::TopologyTestDriver;
use strom_streams::{StreamsError, Topology, TopologyError};

/// Counts each word in store `counts` and forwards the new count.
struct WordCounter;

impl Processor<String, String, String, i64> for WordCounter {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, String, i64>,
        record: Record<String, String>,
    ) -> Result<(), StreamsError> {
        let word = record.value.clone();
        let count = {
            let mut store = ctx.key_value_store::<String, i64>("counts")?;
            let count = store.get(&word)?.unwrap_or(0) + 1;
            store.put(&word, &count)?;
            count
        };
        ctx.forward(Record::new(word, count, record.timestamp_ms))
    }
}

/// Reads store `counts` without being connected to it.
struct Snooper;

impl Processor<String, String, String, i64> for Snooper {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, String, i64>,
        record: Record<String, String>,
    ) -> Result<(), StreamsError> {
        ctx.key_value_store::<String, i64>("counts")?
            .get(&record.value)?;
        Ok(())
    }
}

fn word_count() -> Topology {
    let mut topology = Topology::new();
    topology
        .add_source("source", &["words"], StringSerde, StringSerde)
        .unwrap()
        .add_processor("counter", || WordCounter, &["source"])
        .unwrap()
        .add_state_store(
            StoreBuilder::in_memory_key_value("counts", StringSerde, I64Serde),
            &["counter"],
        )
        .unwrap()
        .add_sink("sink", "counts-out", StringSerde, I64Serde, &["counter"])
        .unwrap();
    topology
}

#[test]
fn a_processor_counts_in_its_store_and_every_write_is_logged_for_the_changelog() {
    let topology = word_count();
    assert!(
        topology
            .describe()
            .to_string()
            .contains("Processor: counter (stores: [counts])"),
        "{}",
        topology.describe()
    );
    let driver = TopologyTestDriver::new(&topology).unwrap();
    let mut words = driver.create_input_topic("words", StringSerde, StringSerde);
    let out = driver.create_output_topic("counts-out", StringSerde, I64Serde);
    for w in ["kafka", "strom", "kafka", "kafka"] {
        words.pipe_input(String::new(), w.to_owned()).unwrap();
    }
    assert_eq!(
        out.read_key_values_to_list().unwrap(),
        vec![
            ("kafka".to_owned(), 1),
            ("strom".to_owned(), 1),
            ("kafka".to_owned(), 2),
            ("kafka".to_owned(), 3),
        ]
    );
    assert_eq!(
        driver
            .key_value_store_entries::<String, i64>("counts")
            .unwrap(),
        Some(vec![("kafka".to_owned(), 3), ("strom".to_owned(), 1)])
    );
    assert_eq!(
        driver
            .key_value_store_entries::<String, i64>("missing")
            .unwrap(),
        None
    );
    // The changelog gets every write, keys and values as the store's
    // serdes write them (a Java LongSerializer's 8 bytes big-endian).
    let long = |n: i64| Some(Bytes::copy_from_slice(&n.to_be_bytes()));
    let key = |w: &str| Bytes::copy_from_slice(w.as_bytes());
    assert_eq!(
        driver.take_changelog(),
        vec![(
            "dummy-topology-test-driver-app-id-counts-changelog".to_owned(),
            vec![
                (key("kafka"), long(1)),
                (key("strom"), long(1)),
                (key("kafka"), long(2)),
                (key("kafka"), long(3)),
            ]
        )]
    );
    assert!(driver.take_changelog().is_empty(), "taken once");
    // The wrong types for the store are an error, not a panic.
    assert!(matches!(
        driver.key_value_store_entries::<String, String>("counts"),
        Err(StreamsError::TypeMismatch { .. })
    ));
}

#[test]
fn a_store_without_logging_writes_no_changelog() {
    let mut topology = Topology::new();
    topology
        .add_source("source", &["words"], StringSerde, StringSerde)
        .unwrap()
        .add_processor("counter", || WordCounter, &["source"])
        .unwrap()
        .add_state_store(
            StoreBuilder::in_memory_key_value("counts", StringSerde, I64Serde)
                .with_logging_disabled(),
            &["counter"],
        )
        .unwrap();
    let driver = TopologyTestDriver::new(&topology).unwrap();
    let mut words = driver.create_input_topic("words", StringSerde, StringSerde);
    words.pipe_input(String::new(), "a".to_owned()).unwrap();
    assert!(driver.take_changelog().is_empty());
    assert_eq!(
        driver
            .key_value_store_entries::<String, i64>("counts")
            .unwrap(),
        Some(vec![("a".to_owned(), 1)])
    );
}

#[test]
fn stores_are_checked_when_added_and_only_connected_processors_use_them() {
    let mut topology = word_count();
    assert_eq!(
        topology
            .add_state_store(
                StoreBuilder::in_memory_key_value("counts", StringSerde, I64Serde),
                &[]
            )
            .err(),
        Some(TopologyError::DuplicateStore("counts".to_owned()))
    );
    assert!(matches!(
        topology.add_state_store(
            StoreBuilder::in_memory_key_value("other", StringSerde, I64Serde),
            &["nope"]
        ),
        Err(TopologyError::UnknownProcessor { .. })
    ));
    assert_eq!(
        topology
            .connect_processor_and_state_stores("source", &["counts"])
            .err(),
        Some(TopologyError::NotAProcessor("source".to_owned()))
    );
    assert_eq!(
        topology
            .connect_processor_and_state_stores("counter", &["nope"])
            .err(),
        Some(TopologyError::UnknownStore("nope".to_owned()))
    );

    let mut snooping = Topology::new();
    snooping
        .add_source("source", &["words"], StringSerde, StringSerde)
        .unwrap()
        .add_processor("snooper", || Snooper, &["source"])
        .unwrap()
        .add_processor("counter", || WordCounter, &["source"])
        .unwrap()
        .add_state_store(
            StoreBuilder::in_memory_key_value("counts", StringSerde, I64Serde),
            &["counter"],
        )
        .unwrap();
    let driver = TopologyTestDriver::new(&snooping).unwrap();
    let mut words = driver.create_input_topic("words", StringSerde, StringSerde);
    let refused = words.pipe_input(String::new(), "a".to_owned()).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("has no access to StateStore counts"),
        "{refused}"
    );
}

#[test]
fn processors_sharing_a_store_share_a_subtopology() {
    let mut topology = Topology::new();
    topology
        .add_source("left-source", &["left"], StringSerde, StringSerde)
        .unwrap()
        .add_source("right-source", &["right"], StringSerde, StringSerde)
        .unwrap()
        .add_processor("left", || WordCounter, &["left-source"])
        .unwrap()
        .add_processor("right", || WordCounter, &["right-source"])
        .unwrap()
        .add_state_store(
            StoreBuilder::in_memory_key_value("counts", StringSerde, I64Serde),
            &["left", "right"],
        )
        .unwrap();
    let text = topology.describe().to_string();
    assert!(text.contains("Sub-topology: 0"), "{text}");
    assert!(
        !text.contains("Sub-topology: 1"),
        "one sub-topology: {text}"
    );
    // Both sides count into the one store of the one task.
    let driver = TopologyTestDriver::new(&topology).unwrap();
    let mut left = driver.create_input_topic("left", StringSerde, StringSerde);
    let mut right = driver.create_input_topic("right", StringSerde, StringSerde);
    left.pipe_input(String::new(), "x".to_owned()).unwrap();
    right.pipe_input(String::new(), "x".to_owned()).unwrap();
    assert_eq!(
        driver
            .key_value_store_entries::<String, i64>("counts")
            .unwrap(),
        Some(vec![("x".to_owned(), 2)])
    );
}

mod dsl {
    use strom_streams::dsl::{Consumed, Materialized, Produced, StreamsBuilder};
    use strom_streams::serdes::{I64Serde, StringSerde};
    use strom_streams::test_driver::TopologyTestDriver;

    #[test]
    fn group_by_key_count_names_its_nodes_and_store_as_kafka_does() {
        let builder = StreamsBuilder::new();
        builder
            .stream(&["words"], Consumed::with(StringSerde, StringSerde))
            .group_by_key()
            .count(Materialized::with(StringSerde, I64Serde))
            .to_stream()
            .to("counts", Produced::with(StringSerde, I64Serde));
        let topology = builder.build().unwrap();
        assert_eq!(
            topology.describe().to_string(),
            "Topologies:\n   Sub-topology: 0\n    Source: KSTREAM-SOURCE-0000000000 (topics: [words])\n      --> KSTREAM-AGGREGATE-0000000002\n    Processor: KSTREAM-AGGREGATE-0000000002 (stores: [KSTREAM-AGGREGATE-STATE-STORE-0000000001])\n      --> KTABLE-TOSTREAM-0000000003\n      <-- KSTREAM-SOURCE-0000000000\n    Processor: KTABLE-TOSTREAM-0000000003 (stores: [])\n      --> KSTREAM-SINK-0000000004\n      <-- KSTREAM-AGGREGATE-0000000002\n    Sink: KSTREAM-SINK-0000000004 (topic: counts)\n      <-- KTABLE-TOSTREAM-0000000003\n\n"
        );
    }

    #[test]
    fn count_reduce_and_aggregate_keep_the_latest_value_per_key() {
        let builder = StreamsBuilder::new();
        let words = builder.stream(&["words"], Consumed::with(StringSerde, StringSerde));
        let grouped = words.group_by_key();
        let counts = grouped.count(Materialized::as_("counts", StringSerde, I64Serde));
        assert_eq!(counts.queryable_store_name(), Some("counts"));
        counts
            .to_stream()
            .to("counts-out", Produced::with(StringSerde, I64Serde));
        grouped
            .reduce(
                |a, b| format!("{a}+{b}"),
                Materialized::as_("joined", StringSerde, StringSerde),
            )
            .to_stream()
            .to("joined-out", Produced::with(StringSerde, StringSerde));
        grouped
            .aggregate(
                || 0_i64,
                |_k, v: String, total| total + i64::try_from(v.len()).unwrap(),
                Materialized::as_("lengths", StringSerde, I64Serde),
            )
            .to_stream()
            .to("lengths-out", Produced::with(StringSerde, I64Serde));
        let topology = builder.build().unwrap();
        let driver = TopologyTestDriver::new(&topology).unwrap();
        let mut input = driver.create_input_topic("words", StringSerde, StringSerde);
        for (k, v) in [("a", "x"), ("b", "yy"), ("a", "zzz")] {
            input.pipe_input(k.to_owned(), v.to_owned()).unwrap();
        }
        let counts = driver.create_output_topic("counts-out", StringSerde, I64Serde);
        assert_eq!(
            counts.read_key_values_to_list().unwrap(),
            vec![("a".into(), 1), ("b".into(), 1), ("a".into(), 2)]
        );
        let joined = driver.create_output_topic("joined-out", StringSerde, StringSerde);
        assert_eq!(
            joined.read_key_values_to_list().unwrap(),
            vec![
                ("a".into(), "x".into()),
                ("b".into(), "yy".into()),
                ("a".into(), "x+zzz".into())
            ]
        );
        let lengths = driver.create_output_topic("lengths-out", StringSerde, I64Serde);
        assert_eq!(
            lengths.read_key_values_to_list().unwrap(),
            vec![("a".into(), 1), ("b".into(), 2), ("a".into(), 4)]
        );
        assert_eq!(
            driver
                .key_value_store_entries::<String, i64>("counts")
                .unwrap(),
            Some(vec![("a".into(), 2), ("b".into(), 1)])
        );
        // Three stores, three changelogs.
        let mut topics: Vec<String> = driver
            .take_changelog()
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        topics.sort();
        assert_eq!(
            topics,
            [
                "dummy-topology-test-driver-app-id-counts-changelog",
                "dummy-topology-test-driver-app-id-joined-changelog",
                "dummy-topology-test-driver-app-id-lengths-changelog"
            ]
        );
    }
}

mod dsl_rules {
    use strom_streams::TopologyError;
    use strom_streams::dsl::{Consumed, Materialized, Produced, StreamsBuilder};
    use strom_streams::serdes::{I64Serde, Nullable, StringSerde};
    use strom_streams::test_driver::TopologyTestDriver;

    #[test]
    fn grouping_a_rekeyed_stream_without_serdes_for_its_repartition_topic_is_refused() {
        for rekey in 0..3 {
            let builder = StreamsBuilder::new();
            let stream = builder.stream(&["in"], Consumed::with(StringSerde, StringSerde));
            let rekeyed = match rekey {
                0 => stream.select_key(|_k, v| v.clone()),
                1 => stream.map(|k, v| (v, k)),
                _ => stream.flat_map(|k, v| vec![(v, k)]),
            };
            // A key-keeping operation after it keeps the mark.
            rekeyed
                .map_values(|v| v)
                .group_by_key()
                .count(Materialized::with(StringSerde, I64Serde));
            assert!(
                matches!(builder.build(), Err(TopologyError::RepartitionRequired(_))),
                "case {rekey}"
            );
        }
        let builder = StreamsBuilder::new();
        builder
            .stream(&["in"], Consumed::with(StringSerde, StringSerde))
            .map_values(|v| v)
            .filter(|_, _| true)
            .group_by_key()
            .count(Materialized::with(StringSerde, I64Serde));
        assert!(builder.build().is_ok(), "the key is unchanged");
    }

    #[test]
    fn records_with_a_null_key_are_skipped_by_aggregations() {
        let builder = StreamsBuilder::new();
        builder
            .stream(&["in"], Consumed::with(Nullable(StringSerde), StringSerde))
            .group_by_key()
            .count(Materialized::as_("counts", Nullable(StringSerde), I64Serde))
            .to_stream()
            .to("out", Produced::with(Nullable(StringSerde), I64Serde));
        let topology = builder.build().unwrap();
        let driver = TopologyTestDriver::new(&topology).unwrap();
        let mut input = driver.create_input_topic("in", Nullable(StringSerde), StringSerde);
        input.pipe_input(None, "x".into()).unwrap();
        input.pipe_input(Some("k".into()), "y".into()).unwrap();
        input.pipe_input(None, "z".into()).unwrap();
        let out = driver.create_output_topic("out", Nullable(StringSerde), I64Serde);
        assert_eq!(
            out.read_key_values_to_list().unwrap(),
            vec![(Some("k".to_owned()), 1)]
        );
    }
}
