//! Repartition topics in the DSL, run by the test driver: `group_by` puts a
//! repartition topic before the aggregation, named as Kafka Streams names
//! it, the description splits there into two sub-topologies, and records
//! reach the aggregation through the topic (named with the application id).

#![allow(clippy::unwrap_used)]

use strom_streams::TopologyError;
use strom_streams::dsl::{
    Consumed, Grouped, Materialized, Produced, Repartitioned, StreamsBuilder,
};
use strom_streams::serdes::{I64Serde, StringSerde};
use strom_streams::test_driver::TopologyTestDriver;

/// Kafka's WordCount demo with its store named `counts-store`.
fn word_count(store: Option<&str>) -> StreamsBuilder {
    let builder = StreamsBuilder::new();
    let grouped = builder
        .stream(
            &["streams-plaintext-input"],
            Consumed::with(StringSerde, StringSerde),
        )
        .flat_map_values(|line: String| {
            line.to_lowercase()
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .group_by(
            |_key, word| word.clone(),
            Grouped::with(StringSerde, StringSerde),
        );
    let counts = match store {
        Some(name) => grouped.count(Materialized::as_(name, StringSerde, I64Serde)),
        None => grouped.count(Materialized::with(StringSerde, I64Serde)),
    };
    counts.to_stream().to(
        "streams-wordcount-output",
        Produced::with(StringSerde, I64Serde),
    );
    builder
}

#[test]
fn word_count_describes_its_repartition_topic_as_kafka_does() {
    let topology = word_count(Some("counts-store")).build().unwrap();
    let expected = "Topologies:
   Sub-topology: 0
    Source: KSTREAM-SOURCE-0000000000 (topics: [streams-plaintext-input])
      --> KSTREAM-FLATMAPVALUES-0000000001
    Processor: KSTREAM-FLATMAPVALUES-0000000001 (stores: [])
      --> KSTREAM-KEY-SELECT-0000000002
      <-- KSTREAM-SOURCE-0000000000
    Processor: KSTREAM-KEY-SELECT-0000000002 (stores: [])
      --> counts-store-repartition-filter
      <-- KSTREAM-FLATMAPVALUES-0000000001
    Processor: counts-store-repartition-filter (stores: [])
      --> counts-store-repartition-sink
      <-- KSTREAM-KEY-SELECT-0000000002
    Sink: counts-store-repartition-sink (topic: counts-store-repartition)
      <-- counts-store-repartition-filter

  Sub-topology: 1
    Source: counts-store-repartition-source (topics: [counts-store-repartition])
      --> KSTREAM-AGGREGATE-0000000003
    Processor: KSTREAM-AGGREGATE-0000000003 (stores: [counts-store])
      --> KTABLE-TOSTREAM-0000000007
      <-- counts-store-repartition-source
    Processor: KTABLE-TOSTREAM-0000000007 (stores: [])
      --> KSTREAM-SINK-0000000008
      <-- KSTREAM-AGGREGATE-0000000003
    Sink: KSTREAM-SINK-0000000008 (topic: streams-wordcount-output)
      <-- KTABLE-TOSTREAM-0000000007

";
    assert_eq!(topology.describe().to_string(), expected);
}

#[test]
fn a_generated_store_name_gives_generated_repartition_node_names() {
    let topology = word_count(None).build().unwrap();
    let description = topology.describe().to_string();
    // Store 3, node 4, then sink 5, filter 6, source 7 for the topic.
    for line in [
        "Processor: KSTREAM-KEY-SELECT-0000000002 (stores: [])\n      --> KSTREAM-FILTER-0000000006",
        "Sink: KSTREAM-SINK-0000000005 (topic: KSTREAM-AGGREGATE-STATE-STORE-0000000003-repartition)",
        "Source: KSTREAM-SOURCE-0000000007 (topics: [KSTREAM-AGGREGATE-STATE-STORE-0000000003-repartition])\n      --> KSTREAM-AGGREGATE-0000000004",
        "Processor: KSTREAM-AGGREGATE-0000000004 (stores: [KSTREAM-AGGREGATE-STATE-STORE-0000000003])",
        "Sink: KSTREAM-SINK-0000000009 (topic: streams-wordcount-output)",
    ] {
        assert!(description.contains(line), "{line}\nnot in\n{description}");
    }
}

#[test]
fn words_are_counted_through_the_repartition_topic() {
    let topology = word_count(Some("counts-store")).build().unwrap();
    let driver = TopologyTestDriver::new(&topology).unwrap();
    let mut lines = driver.create_input_topic("streams-plaintext-input", StringSerde, StringSerde);
    lines
        .pipe_input("1".into(), "all streams lead to kafka".into())
        .unwrap();
    lines
        .pipe_input("2".into(), "hello kafka streams".into())
        .unwrap();
    let out = driver.create_output_topic("streams-wordcount-output", StringSerde, I64Serde);
    let counts: Vec<(String, i64)> = out.read_key_values_to_list().unwrap();
    let expected: Vec<(String, i64)> = [
        ("all", 1),
        ("streams", 1),
        ("lead", 1),
        ("to", 1),
        ("kafka", 1),
        ("hello", 1),
        ("kafka", 2),
        ("streams", 2),
    ]
    .into_iter()
    .map(|(w, n)| (w.to_owned(), n))
    .collect();
    assert_eq!(counts, expected);
    // The aggregation read the records back from the repartition topic,
    // which carries the application id, as on a cluster.
    let topics = driver.produced_topic_names();
    assert!(
        topics.contains(&"dummy-topology-test-driver-app-id-counts-store-repartition".to_owned()),
        "{topics:?}"
    );
    assert_eq!(
        driver
            .key_value_store_entries::<String, i64>("counts-store")
            .unwrap()
            .unwrap()
            .len(),
        6
    );
}

#[test]
fn group_by_key_after_a_key_change_repartitions_with_the_given_serdes() {
    let builder = StreamsBuilder::new();
    builder
        .stream(&["in"], Consumed::with(StringSerde, StringSerde))
        .map(|k, v| (v, k))
        .group_by_key_with(Grouped::as_("by-value", StringSerde, StringSerde))
        .count(Materialized::as_("counts", StringSerde, I64Serde))
        .to_stream()
        .to("out", Produced::with(StringSerde, I64Serde));
    let topology = builder.build().unwrap();
    let description = topology.describe().to_string();
    assert!(
        description.contains("Sink: by-value-repartition-sink (topic: by-value-repartition)"),
        "{description}"
    );
    assert!(description.contains("Sub-topology: 1"), "{description}");
    let driver = TopologyTestDriver::new(&topology).unwrap();
    let mut input = driver.create_input_topic("in", StringSerde, StringSerde);
    for (k, v) in [("a", "x"), ("b", "x"), ("c", "y")] {
        input.pipe_input(k.into(), v.into()).unwrap();
    }
    let out = driver.create_output_topic("out", StringSerde, I64Serde);
    assert_eq!(
        out.read_key_values_to_list().unwrap(),
        vec![("x".into(), 1), ("x".into(), 2), ("y".into(), 1)]
    );
}

#[test]
fn group_by_key_with_serdes_on_an_unchanged_key_adds_no_topic() {
    let builder = StreamsBuilder::new();
    builder
        .stream(&["in"], Consumed::with(StringSerde, StringSerde))
        .filter(|_, _| true)
        .group_by_key_with(Grouped::with(StringSerde, StringSerde))
        .count(Materialized::as_("counts", StringSerde, I64Serde));
    let description = builder.build().unwrap().describe().to_string();
    assert!(!description.contains("repartition"), "{description}");
    assert!(!description.contains("Sub-topology: 1"), "{description}");
}

#[test]
fn repartition_names_its_topic_and_nodes_as_kafka_does() {
    let builder = StreamsBuilder::new();
    let stream = builder.stream(&["in"], Consumed::with(StringSerde, StringSerde));
    stream
        .repartition(Repartitioned::with(StringSerde, StringSerde))
        .to("out-1", Produced::with(StringSerde, StringSerde));
    stream
        .repartition(
            Repartitioned::as_("spread", StringSerde, StringSerde).with_number_of_partitions(4),
        )
        .to("out-2", Produced::with(StringSerde, StringSerde));
    let description = builder.build().unwrap().describe().to_string();
    for line in [
        "Sink: KSTREAM-SINK-0000000002 (topic: KSTREAM-REPARTITION-0000000001-repartition)",
        "Source: KSTREAM-SOURCE-0000000004 (topics: [KSTREAM-REPARTITION-0000000001-repartition])\n      --> KSTREAM-SINK-0000000005",
        "Sink: spread-repartition-sink (topic: spread-repartition)",
        "Source: spread-repartition-source (topics: [spread-repartition])\n      --> KSTREAM-SINK-0000000009",
        "Sub-topology: 2",
    ] {
        assert!(description.contains(line), "{line}\nnot in\n{description}");
    }
    // Records pass through unchanged.
    let topology = builder.build().unwrap();
    let driver = TopologyTestDriver::new(&topology).unwrap();
    let mut input = driver.create_input_topic("in", StringSerde, StringSerde);
    input.pipe_input("k".into(), "v".into()).unwrap();
    for topic in ["out-1", "out-2"] {
        let out = driver.create_output_topic(topic, StringSerde, StringSerde);
        assert_eq!(out.read_key_value().unwrap(), ("k".into(), "v".into()));
    }
}

#[test]
fn a_repartition_topic_name_used_twice_or_a_bad_partition_count_is_refused() {
    let builder = StreamsBuilder::new();
    let stream = builder.stream(&["in"], Consumed::with(StringSerde, StringSerde));
    for _ in 0..2 {
        stream.repartition(Repartitioned::as_("same", StringSerde, StringSerde));
    }
    assert!(matches!(
        builder.build(),
        Err(TopologyError::DuplicateName(_) | TopologyError::TopicAlreadyRegistered(_))
    ));
    let builder = StreamsBuilder::new();
    builder
        .stream(&["in"], Consumed::with(StringSerde, StringSerde))
        .repartition(Repartitioned::with(StringSerde, StringSerde).with_number_of_partitions(0));
    assert!(matches!(
        builder.build(),
        Err(TopologyError::InvalidPartitions { partitions: 0, .. })
    ));
}

#[test]
fn aggregations_of_one_named_grouping_share_its_repartition_topic() {
    let builder = StreamsBuilder::new();
    let grouped = builder
        .stream(&["in"], Consumed::with(StringSerde, StringSerde))
        .group_by(
            |_k, v| v.clone(),
            Grouped::as_("by-value", StringSerde, StringSerde),
        );
    grouped
        .count(Materialized::as_("counts", StringSerde, I64Serde))
        .to_stream()
        .to("counts-out", Produced::with(StringSerde, I64Serde));
    grouped
        .reduce(
            |a, b| format!("{a}+{b}"),
            Materialized::as_("joined", StringSerde, StringSerde),
        )
        .to_stream()
        .to("joined-out", Produced::with(StringSerde, StringSerde));
    let topology = builder.build().unwrap();
    let description = topology.describe().to_string();
    assert!(
        description.contains("Processor: KTABLE-TOSTREAM-0000000011"),
        "{description}"
    );
    assert_eq!(
        description
            .matches("Sink: by-value-repartition-sink")
            .count(),
        1,
        "{description}"
    );
    // The reduce still took three numbers for the topic it shares (8-10).
    assert!(
        description.contains("Source: by-value-repartition-source (topics: [by-value-repartition])\n      --> KSTREAM-AGGREGATE-0000000001, KSTREAM-REDUCE-0000000007"),
        "{description}"
    );
    let driver = TopologyTestDriver::new(&topology).unwrap();
    let mut input = driver.create_input_topic("in", StringSerde, StringSerde);
    for (k, v) in [("a", "x"), ("b", "x")] {
        input.pipe_input(k.into(), v.into()).unwrap();
    }
    let counts = driver.create_output_topic("counts-out", StringSerde, I64Serde);
    assert_eq!(
        counts.read_key_values_to_list().unwrap(),
        vec![("x".into(), 1), ("x".into(), 2)]
    );
    let joined = driver.create_output_topic("joined-out", StringSerde, StringSerde);
    assert_eq!(
        joined.read_key_values_to_list().unwrap(),
        vec![("x".into(), "x".into()), ("x".into(), "x+x".into())]
    );
}

#[test]
fn a_repartition_name_that_is_no_topic_name_is_refused() {
    let builder = StreamsBuilder::new();
    builder
        .stream(&["in"], Consumed::with(StringSerde, StringSerde))
        .repartition(Repartitioned::as_(
            "no spaces/please",
            StringSerde,
            StringSerde,
        ));
    assert!(matches!(
        builder.build(),
        Err(TopologyError::InvalidName { .. })
    ));
}
