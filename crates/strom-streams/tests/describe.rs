//! `describe()` text, byte for byte as Kafka Streams prints it.
//!
//! The expected strings follow `InternalTopologyBuilder.describe()` and its
//! `TopologyDescription.toString()` (apache/kafka,
//! `streams/src/main/java/org/apache/kafka/streams/processor/internals/InternalTopologyBuilder.java`),
//! with node names as Kafka's DSL generates them (`KStreamImpl`,
//! `BranchedKStreamImpl`). The two non-trivial ones were produced by that
//! algorithm run on a JVM with Java's own HashMap/HashSet/TreeSet, whose
//! iteration orders decide the topic and `-->` orders below; the crate's
//! unit tests also rebuild a description printed by a real Kafka Streams.

use strom_streams::dsl::{Branched, Consumed, Produced, StreamsBuilder};
use strom_streams::serdes::{I64Serde, StringSerde};

#[test]
fn linear_filter_map_values_to() {
    let builder = StreamsBuilder::new();
    builder
        .stream(&["input"], Consumed::with(StringSerde, StringSerde))
        .filter(|_, v| !v.is_empty())
        .map_values(|v| i64::try_from(v.len()).unwrap())
        .to("output", Produced::with(StringSerde, I64Serde));
    let expected = "\
Topologies:
   Sub-topology: 0
    Source: KSTREAM-SOURCE-0000000000 (topics: [input])
      --> KSTREAM-FILTER-0000000001
    Processor: KSTREAM-FILTER-0000000001 (stores: [])
      --> KSTREAM-MAPVALUES-0000000002
      <-- KSTREAM-SOURCE-0000000000
    Processor: KSTREAM-MAPVALUES-0000000002 (stores: [])
      --> KSTREAM-SINK-0000000003
      <-- KSTREAM-FILTER-0000000001
    Sink: KSTREAM-SINK-0000000003 (topic: output)
      <-- KSTREAM-MAPVALUES-0000000002

";
    assert_eq!(builder.build().unwrap().describe().to_string(), expected);
}

#[test]
fn split_into_branches_with_merge() {
    let builder = StreamsBuilder::new();
    let branches = builder
        .stream(&["input"], Consumed::with(StringSerde, StringSerde))
        .split()
        .branch_with(|_, v| v.starts_with('a'), Branched::as_("-a"))
        .branch(|_, v| v.starts_with('b'))
        .default_branch();
    let names: Vec<&str> = branches.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "KSTREAM-BRANCH-0000000001-a",
            "KSTREAM-BRANCH-00000000010",
            "KSTREAM-BRANCH-00000000012"
        ]
    );
    let upper = branches["KSTREAM-BRANCH-0000000001-a"].map_values(|v| v.to_uppercase());
    upper
        .merge(&branches["KSTREAM-BRANCH-00000000012"])
        .to("ab", Produced::with(StringSerde, StringSerde));
    branches["KSTREAM-BRANCH-00000000010"].to("other", Produced::with(StringSerde, StringSerde));

    // The splitter's `-->` list is not in size order (-a has 4 paths, ...12
    // has 3, ...10 has 2): Java's TreeSet placed ...10 while ...12's size was
    // still 1.
    let expected = "\
Topologies:
   Sub-topology: 0
    Source: KSTREAM-SOURCE-0000000000 (topics: [input])
      --> KSTREAM-BRANCH-0000000001
    Processor: KSTREAM-BRANCH-0000000001 (stores: [])
      --> KSTREAM-BRANCH-0000000001-a, KSTREAM-BRANCH-00000000010, KSTREAM-BRANCH-00000000012
      <-- KSTREAM-SOURCE-0000000000
    Processor: KSTREAM-BRANCH-0000000001-a (stores: [])
      --> KSTREAM-MAPVALUES-0000000005
      <-- KSTREAM-BRANCH-0000000001
    Processor: KSTREAM-BRANCH-00000000012 (stores: [])
      --> KSTREAM-MERGE-0000000006
      <-- KSTREAM-BRANCH-0000000001
    Processor: KSTREAM-MAPVALUES-0000000005 (stores: [])
      --> KSTREAM-MERGE-0000000006
      <-- KSTREAM-BRANCH-0000000001-a
    Processor: KSTREAM-BRANCH-00000000010 (stores: [])
      --> KSTREAM-SINK-0000000008
      <-- KSTREAM-BRANCH-0000000001
    Processor: KSTREAM-MERGE-0000000006 (stores: [])
      --> KSTREAM-SINK-0000000007
      <-- KSTREAM-MAPVALUES-0000000005, KSTREAM-BRANCH-00000000012
    Sink: KSTREAM-SINK-0000000007 (topic: ab)
      <-- KSTREAM-MERGE-0000000006
    Sink: KSTREAM-SINK-0000000008 (topic: other)
      <-- KSTREAM-BRANCH-00000000010

";
    assert_eq!(builder.build().unwrap().describe().to_string(), expected);
}

#[test]
fn two_disconnected_pipelines_are_sub_topologies_0_and_1() {
    let builder = StreamsBuilder::new();
    builder
        .stream(&["clicks"], Consumed::with(StringSerde, StringSerde))
        .filter(|_, v| v != "bot")
        .to("clean-clicks", Produced::with(StringSerde, StringSerde));
    let money = builder
        .stream(
            &["orders", "payments", "refunds"],
            Consumed::with(StringSerde, StringSerde),
        )
        .peek(|_, _| {});
    money.foreach(|_, _| {});
    money.to("audit", Produced::with(StringSerde, StringSerde));

    // Topics print in Java HashSet order; the second header has two spaces.
    let expected = "\
Topologies:
   Sub-topology: 0
    Source: KSTREAM-SOURCE-0000000000 (topics: [clicks])
      --> KSTREAM-FILTER-0000000001
    Processor: KSTREAM-FILTER-0000000001 (stores: [])
      --> KSTREAM-SINK-0000000002
      <-- KSTREAM-SOURCE-0000000000
    Sink: KSTREAM-SINK-0000000002 (topic: clean-clicks)
      <-- KSTREAM-FILTER-0000000001

  Sub-topology: 1
    Source: KSTREAM-SOURCE-0000000003 (topics: [payments, orders, refunds])
      --> KSTREAM-PEEK-0000000004
    Processor: KSTREAM-PEEK-0000000004 (stores: [])
      --> KSTREAM-FOREACH-0000000005, KSTREAM-SINK-0000000006
      <-- KSTREAM-SOURCE-0000000003
    Processor: KSTREAM-FOREACH-0000000005 (stores: [])
      --> none
      <-- KSTREAM-PEEK-0000000004
    Sink: KSTREAM-SINK-0000000006 (topic: audit)
      <-- KSTREAM-PEEK-0000000004

";
    assert_eq!(builder.build().unwrap().describe().to_string(), expected);
}

#[test]
fn named_operations_and_extractor_sinks() {
    use strom_streams::dsl::Named;
    use strom_streams::processor::FnExtractor;

    let builder = StreamsBuilder::new();
    builder
        .stream(
            &["in"],
            Consumed::with(StringSerde, StringSerde).with_name("read-in"),
        )
        .filter_named(|_, _| true, Named::as_("keep-all"))
        .to_extractor(
            FnExtractor::new("ByKeyExtractor", |k: &String, _: &String, _: &_| k.clone()),
            Produced::with(StringSerde, StringSerde),
        );
    // A pinned name takes no number: the sink is the first generated name.
    let expected = "\
Topologies:
   Sub-topology: 0
    Source: read-in (topics: [in])
      --> keep-all
    Processor: keep-all (stores: [])
      --> KSTREAM-SINK-0000000000
      <-- read-in
    Sink: KSTREAM-SINK-0000000000 (extractor class: ByKeyExtractor)
      <-- keep-all

";
    assert_eq!(builder.build().unwrap().describe().to_string(), expected);
}
