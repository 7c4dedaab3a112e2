//! DSL and Processor API behaviour through the test driver: what a user of
//! the topology would see on its output topics.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use strom_streams::dsl::{Consumed, Produced, StreamsBuilder};
use strom_streams::processor::{
    FnExtractor, Processor, ProcessorContext, PunctuationType, Record, RecordContext, ScheduleId,
};
use strom_streams::serdes::{I64Serde, Nullable, StringSerde};
use strom_streams::test_driver::TopologyTestDriver;
use strom_streams::{StreamsError, Topology, TopologyError};

fn strings() -> Consumed<StringSerde, StringSerde> {
    Consumed::with(StringSerde, StringSerde)
}

fn out() -> Produced<StringSerde, StringSerde> {
    Produced::with(StringSerde, StringSerde)
}

fn kv(k: &str, v: &str) -> (String, String) {
    (k.to_owned(), v.to_owned())
}

#[test]
fn filter_map_flat_map_and_select_key() {
    let builder = StreamsBuilder::new();
    let words = builder
        .stream(&["lines"], strings())
        .filter_not(|_, line| line.is_empty())
        .flat_map_values(|line: String| line.split(' ').map(str::to_owned).collect::<Vec<_>>());
    words
        .filter(|_, w| w.len() > 2)
        .select_key(|_, w| w.clone())
        .to("long-words", out());
    words
        .map(|k, w| {
            (
                w.clone(),
                i64::try_from(w.len()).unwrap() + i64::try_from(k.len()).unwrap(),
            )
        })
        .to("lengths", Produced::with(StringSerde, I64Serde));
    builder
        .stream(&["pairs"], strings())
        .flat_map(|k, v| vec![(k.clone(), v.clone()), (v, k)])
        .to("pairs-out", out());
    let topology = builder.build().unwrap();

    let driver = TopologyTestDriver::new(&topology).unwrap();
    let mut lines = driver.create_input_topic("lines", StringSerde, StringSerde);
    let mut pairs = driver.create_input_topic("pairs", StringSerde, StringSerde);
    let long_words = driver.create_output_topic("long-words", StringSerde, StringSerde);
    let lengths = driver.create_output_topic("lengths", StringSerde, I64Serde);
    let pairs_out = driver.create_output_topic("pairs-out", StringSerde, StringSerde);

    lines
        .pipe_input("k".into(), "the quick fox".into())
        .unwrap();
    lines.pipe_input("k".into(), String::new()).unwrap();
    pairs.pipe_input("a".into(), "b".into()).unwrap();

    assert_eq!(
        long_words.read_key_values_to_list().unwrap(),
        [kv("the", "the"), kv("quick", "quick"), kv("fox", "fox")]
    );
    assert_eq!(
        lengths.read_key_values_to_list().unwrap(),
        [
            ("the".to_owned(), 4),
            ("quick".to_owned(), 6),
            ("fox".to_owned(), 4)
        ]
    );
    assert_eq!(
        pairs_out.read_key_values_to_list().unwrap(),
        [kv("a", "b"), kv("b", "a")]
    );
    assert!(long_words.is_empty());
    assert!(matches!(
        long_words.read_record(),
        Err(StreamsError::NoRecord(_))
    ));
}

#[test]
fn branches_default_branch_merge_and_peek() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let builder = StreamsBuilder::new();
    let branches = builder
        .stream(&["in"], strings())
        .split()
        .branch(|_, v| v.starts_with('a'))
        .branch(|_, v| v.starts_with("ab")) // never wins: the first matching branch takes the record
        .branch(|_, v| v.starts_with('b'))
        .default_branch();
    let first = &branches["KSTREAM-BRANCH-00000000011"];
    let seen_in_peek = Arc::clone(&seen);
    first
        .merge(&branches["KSTREAM-BRANCH-00000000013"])
        .peek(move |_, v| seen_in_peek.lock().unwrap().push(v.clone()))
        .to("a-or-b", out());
    branches["KSTREAM-BRANCH-00000000012"].to("ab", out());
    branches["KSTREAM-BRANCH-00000000010"].to("rest", out());
    let topology = builder.build().unwrap();

    let driver = TopologyTestDriver::new(&topology).unwrap();
    let mut input = driver.create_input_topic("in", StringSerde, StringSerde);
    let a_or_b = driver.create_output_topic("a-or-b", StringSerde, StringSerde);
    let ab = driver.create_output_topic("ab", StringSerde, StringSerde);
    let rest = driver.create_output_topic("rest", StringSerde, StringSerde);
    for v in ["apple", "abba", "banana", "cherry"] {
        input.pipe_input("k".into(), v.into()).unwrap();
    }
    assert_eq!(
        a_or_b.read_values_to_list().unwrap(),
        ["apple", "abba", "banana"]
    );
    assert!(ab.is_empty());
    assert_eq!(rest.read_values_to_list().unwrap(), ["cherry"]);
    assert_eq!(*seen.lock().unwrap(), ["apple", "abba", "banana"]);
}

#[test]
fn no_default_branch_drops_unmatched_records() {
    let builder = StreamsBuilder::new();
    let branches = builder
        .stream(&["in"], strings())
        .split()
        .branch(|_, v| v == "x")
        .no_default_branch();
    branches["KSTREAM-BRANCH-00000000011"].to("x", out());
    let topology = builder.build().unwrap();
    let driver = TopologyTestDriver::new(&topology).unwrap();
    let mut input = driver.create_input_topic("in", StringSerde, StringSerde);
    input.pipe_input("k".into(), "y".into()).unwrap();
    input.pipe_input("k".into(), "x".into()).unwrap();
    assert_eq!(
        driver
            .create_output_topic("x", StringSerde, StringSerde)
            .read_values_to_list()
            .unwrap(),
        ["x"]
    );
    assert_eq!(driver.produced_topic_names(), ["x"]);
}

#[test]
fn timestamps_and_headers_are_kept_and_the_extractor_picks_topics() {
    let builder = StreamsBuilder::new();
    builder
        .stream(
            &["events"],
            Consumed::with(Nullable(StringSerde), StringSerde),
        )
        .map_values(|v| v.to_uppercase())
        .to_extractor(
            FnExtractor::new(
                "ByKey",
                |k: &Option<String>, _: &String, ctx: &RecordContext<'_>| {
                    assert!(ctx.input.is_some_and(|m| m.topic == "events"));
                    match k {
                        Some(k) => format!("events-{k}"),
                        None => "events-unkeyed".to_owned(),
                    }
                },
            ),
            Produced::with(Nullable(StringSerde), StringSerde),
        );
    let topology = builder.build().unwrap();
    let driver = TopologyTestDriver::new(&topology).unwrap();
    let mut events = driver.create_input_topic_with_time(
        "events",
        Nullable(StringSerde),
        StringSerde,
        1_000,
        Duration::from_millis(10),
    );
    events
        .pipe_record(
            Record::new(Some("eu".to_owned()), "a".to_owned(), 42)
                .with_header("trace", Some(Bytes::from_static(b"t1"))),
        )
        .unwrap();
    events.pipe_input(None, "b".into()).unwrap();
    events.pipe_input(Some("eu".into()), "c".into()).unwrap();

    let eu = driver
        .create_output_topic("events-eu", Nullable(StringSerde), StringSerde)
        .read_records_to_list()
        .unwrap();
    assert_eq!(eu.len(), 2);
    assert_eq!(eu[0].value, "A");
    assert_eq!(eu[0].timestamp_ms, 42);
    assert_eq!(
        eu[0].headers,
        [("trace".to_owned(), Some(Bytes::from_static(b"t1")))]
    );
    assert_eq!((eu[1].value.as_str(), eu[1].timestamp_ms), ("C", 1_010));
    let unkeyed = driver
        .create_output_topic("events-unkeyed", Nullable(StringSerde), StringSerde)
        .read_record()
        .unwrap();
    assert_eq!(
        (unkeyed.key, unkeyed.value, unkeyed.timestamp_ms),
        (None, "B".to_owned(), 1_000)
    );
}

#[test]
fn bad_input_bytes_are_errors_and_negative_timestamps_are_refused() {
    let builder = StreamsBuilder::new();
    builder
        .stream(&["numbers"], Consumed::with(StringSerde, I64Serde))
        .to("copy", Produced::with(StringSerde, I64Serde));
    let topology = builder.build().unwrap();
    let driver = TopologyTestDriver::new(&topology).unwrap();
    // Written as a string, read as a long: 3 bytes, not 8.
    let mut wrong = driver.create_input_topic("numbers", StringSerde, StringSerde);
    assert!(matches!(
        wrong.pipe_input("k".into(), "abc".into()),
        Err(StreamsError::Deserialization { .. })
    ));
    let mut numbers = driver.create_input_topic("numbers", StringSerde, I64Serde);
    assert!(matches!(
        numbers.pipe_input_with_timestamp("k".into(), 1, -5),
        Err(StreamsError::InvalidTimestamp { .. })
    ));
    let mut unknown = driver.create_input_topic("nobody-reads-this", StringSerde, I64Serde);
    assert!(matches!(
        unknown.pipe_input("k".into(), 1),
        Err(StreamsError::UnknownTopic(_))
    ));
    numbers.pipe_input("k".into(), 7).unwrap();
    assert_eq!(
        driver
            .create_output_topic("copy", StringSerde, I64Serde)
            .read_key_value()
            .unwrap(),
        ("k".to_owned(), 7)
    );
}

#[test]
fn records_written_to_a_source_topic_are_fed_back() {
    let builder = StreamsBuilder::new();
    builder
        .stream(&["a"], strings())
        .map_values(|v| format!("{v}!"))
        .to("b", out());
    builder
        .stream(&["b"], strings())
        .map_values(|v| format!("{v}?"))
        .to("c", out());
    let topology = builder.build().unwrap();
    assert_eq!(topology.describe().subtopologies.len(), 2);
    let driver = TopologyTestDriver::new(&topology).unwrap();
    driver
        .create_input_topic("a", StringSerde, StringSerde)
        .pipe_input("k".into(), "hi".into())
        .unwrap();
    assert_eq!(
        driver
            .create_output_topic("c", StringSerde, StringSerde)
            .read_value()
            .unwrap(),
        "hi!?"
    );
    assert_eq!(
        driver
            .create_output_topic("b", StringSerde, StringSerde)
            .read_value()
            .unwrap(),
        "hi!"
    );
}

/// Each punctuation's timestamp and the stream time it saw.
type Punctuations = Arc<Mutex<Vec<(i64, Option<i64>)>>>;

/// Counts records and emits the count on punctuation; records every
/// punctuation's timestamp and the stream time it saw.
struct Counter {
    kind: PunctuationType,
    count: i64,
    punctuations: Punctuations,
}

impl Processor<String, String, String, i64> for Counter {
    fn init(&mut self, ctx: &mut ProcessorContext<'_, String, i64>) -> Result<(), StreamsError> {
        ctx.schedule_processor(Duration::from_millis(10), self.kind)?;
        Ok(())
    }

    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, String, i64>,
        record: Record<String, String>,
    ) -> Result<(), StreamsError> {
        assert_eq!(ctx.topic(), Some("in"));
        assert_eq!(ctx.record_timestamp_ms(), Some(record.timestamp_ms));
        self.count += 1;
        Ok(())
    }

    fn punctuate(
        &mut self,
        ctx: &mut ProcessorContext<'_, String, i64>,
        _: ScheduleId,
        timestamp_ms: i64,
    ) -> Result<(), StreamsError> {
        assert_eq!(
            ctx.record_metadata(),
            None,
            "a punctuation has no input record"
        );
        self.punctuations
            .lock()
            .unwrap()
            .push((timestamp_ms, ctx.stream_time()));
        ctx.forward(Record::new("count".to_owned(), self.count, timestamp_ms))
    }
}

fn counter_topology(kind: PunctuationType) -> (Topology, Punctuations) {
    let punctuations = Arc::new(Mutex::new(Vec::new()));
    let shared = Arc::clone(&punctuations);
    let mut topology = Topology::new();
    topology
        .add_source("source", &["in"], StringSerde, StringSerde)
        .unwrap()
        .add_processor(
            "counter",
            move || Counter {
                kind,
                count: 0,
                punctuations: Arc::clone(&shared),
            },
            &["source"],
        )
        .unwrap()
        .add_sink("sink", "counts", StringSerde, I64Serde, &["counter"])
        .unwrap();
    (topology, punctuations)
}

#[test]
fn stream_time_punctuation_fires_only_as_data_advances_stream_time() {
    let (topology, punctuations) = counter_topology(PunctuationType::StreamTime);
    let driver = TopologyTestDriver::new(&topology).unwrap();
    let mut input = driver.create_input_topic("in", StringSerde, StringSerde);
    let counts = driver.create_output_topic("counts", StringSerde, I64Serde);

    // No data, no stream time: the wall clock does not fire it.
    driver
        .advance_wall_clock_time(Duration::from_secs(60))
        .unwrap();
    assert!(counts.is_empty());

    // Aligned to 0: the first record fires it at once.
    input
        .pipe_input_with_timestamp("k".into(), "a".into(), 3)
        .unwrap();
    // Stream time 3 -> 9: no boundary crossed.
    input
        .pipe_input_with_timestamp("k".into(), "b".into(), 9)
        .unwrap();
    // Out of order: stream time stays 9.
    input
        .pipe_input_with_timestamp("k".into(), "c".into(), 1)
        .unwrap();
    // Reaches 10: fires.
    input
        .pipe_input_with_timestamp("k".into(), "d".into(), 10)
        .unwrap();
    // Jumps over several intervals: fires once, next at 60.
    input
        .pipe_input_with_timestamp("k".into(), "e".into(), 55)
        .unwrap();
    input
        .pipe_input_with_timestamp("k".into(), "f".into(), 59)
        .unwrap();
    driver
        .advance_wall_clock_time(Duration::from_secs(60))
        .unwrap();
    input
        .pipe_input_with_timestamp("k".into(), "g".into(), 60)
        .unwrap();

    assert_eq!(
        *punctuations.lock().unwrap(),
        [(3, Some(3)), (10, Some(10)), (55, Some(55)), (60, Some(60))]
    );
    // The count includes the record that advanced stream time.
    assert_eq!(counts.read_values_to_list().unwrap(), [1, 4, 5, 7]);
}

#[test]
fn wall_clock_punctuation_fires_on_the_clock_with_idle_input() {
    let (topology, punctuations) = counter_topology(PunctuationType::WallClockTime);
    let driver = TopologyTestDriver::with_wall_clock_ms(&topology, 1_000).unwrap();
    let mut input = driver.create_input_topic("in", StringSerde, StringSerde);
    let counts = driver.create_output_topic("counts", StringSerde, I64Serde);

    // Records alone never fire it, whatever their timestamps.
    input
        .pipe_input_with_timestamp("k".into(), "a".into(), 5_000)
        .unwrap();
    assert!(counts.is_empty());
    driver
        .advance_wall_clock_time(Duration::from_millis(9))
        .unwrap();
    assert!(counts.is_empty());
    driver
        .advance_wall_clock_time(Duration::from_millis(1))
        .unwrap(); // 1010: first boundary
    driver
        .advance_wall_clock_time(Duration::from_millis(35))
        .unwrap(); // 1045: once, next at 1050
    driver
        .advance_wall_clock_time(Duration::from_millis(5))
        .unwrap(); // 1050
    assert_eq!(
        *punctuations.lock().unwrap(),
        [
            (1_010, Some(5_000)),
            (1_045, Some(5_000)),
            (1_050, Some(5_000))
        ]
    );
    assert_eq!(counts.read_values_to_list().unwrap(), [1, 1, 1]);
}

/// A closure punctuator that cancels itself after firing twice.
struct SelfCancelling;

impl Processor<String, String, String, String> for SelfCancelling {
    fn init(&mut self, ctx: &mut ProcessorContext<'_, String, String>) -> Result<(), StreamsError> {
        let fired = Arc::new(Mutex::new(0));
        let handle: Arc<Mutex<Option<strom_streams::processor::Cancellable>>> =
            Arc::new(Mutex::new(None));
        let handle_in_punctuator = Arc::clone(&handle);
        let cancellable = ctx.schedule(
            Duration::from_millis(100),
            PunctuationType::WallClockTime,
            move |ctx, ts| {
                let mut fired = fired.lock().unwrap();
                *fired += 1;
                if *fired == 2
                    && let Some(h) = handle_in_punctuator.lock().unwrap().as_ref()
                {
                    h.cancel();
                }
                ctx.forward(Record::new("tick".to_owned(), ts.to_string(), ts))
            },
        )?;
        *handle.lock().unwrap() = Some(cancellable);
        assert!(matches!(
            ctx.schedule(Duration::ZERO, PunctuationType::StreamTime, |_, _| Ok(())),
            Err(StreamsError::InvalidInterval(_))
        ));
        Ok(())
    }

    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, String, String>,
        record: Record<String, String>,
    ) -> Result<(), StreamsError> {
        ctx.forward_to("sink", record.clone())?;
        assert!(matches!(
            ctx.forward_to("nobody", record),
            Err(StreamsError::UnknownChild { .. })
        ));
        Ok(())
    }
}

#[test]
fn closure_punctuators_can_cancel_their_schedule() {
    let mut topology = Topology::new();
    topology
        .add_source("source", &["in"], StringSerde, StringSerde)
        .unwrap()
        .add_processor("p", || SelfCancelling, &["source"])
        .unwrap()
        .add_sink("sink", "out", StringSerde, StringSerde, &["p"])
        .unwrap();
    let driver = TopologyTestDriver::new(&topology).unwrap();
    let out_topic = driver.create_output_topic("out", StringSerde, StringSerde);
    for _ in 0..5 {
        driver
            .advance_wall_clock_time(Duration::from_millis(100))
            .unwrap();
    }
    assert_eq!(out_topic.read_values_to_list().unwrap(), ["100", "200"]);
    driver
        .create_input_topic("in", StringSerde, StringSerde)
        .pipe_input("k".into(), "v".into())
        .unwrap();
    assert_eq!(out_topic.read_values_to_list().unwrap(), ["v"]);
}

#[test]
fn invalid_topologies_are_typed_errors() {
    let mut t = Topology::new();
    t.add_source("source", &["in"], StringSerde, StringSerde)
        .unwrap();
    let pass = || PassThrough;
    assert_eq!(
        t.add_source("source", &["other"], StringSerde, StringSerde)
            .unwrap_err(),
        TopologyError::DuplicateName("source".into())
    );
    assert_eq!(
        t.add_source("again", &["in"], StringSerde, StringSerde)
            .unwrap_err(),
        TopologyError::TopicAlreadyRegistered("in".into())
    );
    assert_eq!(
        t.add_source("none", &[], StringSerde, StringSerde)
            .unwrap_err(),
        TopologyError::NoTopics("none".into())
    );
    assert_eq!(
        t.add_processor("p", pass, &["missing"]).unwrap_err(),
        TopologyError::UnknownParent {
            node: "p".into(),
            parent: "missing".into()
        }
    );
    assert_eq!(
        t.add_processor("p", pass, &[]).unwrap_err(),
        TopologyError::NoParents("p".into())
    );
    assert_eq!(
        t.add_processor("p", pass, &["p"]).unwrap_err(),
        TopologyError::SelfParent("p".into())
    );
    t.add_sink("sink", "out", StringSerde, StringSerde, &["source"])
        .unwrap();
    assert_eq!(
        t.add_processor("p", pass, &["sink"]).unwrap_err(),
        TopologyError::SinkAsParent("sink".into())
    );
    assert!(matches!(
        t.add_sink("longs", "out", StringSerde, I64Serde, &["source"])
            .unwrap_err(),
        TopologyError::TypeMismatch { .. }
    ));
    assert_eq!(
        t.add_processor("p", pass, &["source", "source"])
            .unwrap_err(),
        TopologyError::DuplicateParent {
            node: "p".into(),
            parent: "source".into()
        }
    );
    t.add_processor("p", pass, &["source"]).unwrap();
    assert_eq!(
        TopologyError::DuplicateName("p".into()).to_string(),
        "Processor p is already added."
    );

    // The DSL reports the first error from build(), as Kafka does.
    let builder = StreamsBuilder::new();
    let s = builder.stream(&["in"], strings());
    s.filter_named(|_, _| true, strom_streams::dsl::Named::as_("twice"));
    s.filter_named(|_, _| true, strom_streams::dsl::Named::as_("twice"));
    assert_eq!(
        builder.build().unwrap_err(),
        TopologyError::DuplicateName("twice".into())
    );
}

struct PassThrough;

impl Processor<String, String, String, String> for PassThrough {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, String, String>,
        record: Record<String, String>,
    ) -> Result<(), StreamsError> {
        ctx.forward(record)
    }
}

#[test]
fn punctuation_at_the_end_of_time_stops_instead_of_spinning() {
    // The wall clock jumps to i64::MAX: one punctuation, then none.
    let (topology, punctuations) = counter_topology(PunctuationType::WallClockTime);
    let driver = TopologyTestDriver::new(&topology).unwrap();
    let counts = driver.create_output_topic("counts", StringSerde, I64Serde);
    driver.advance_wall_clock_time(Duration::MAX).unwrap();
    driver.advance_wall_clock_time(Duration::MAX).unwrap();
    assert_eq!(punctuations.lock().unwrap().len(), 1);
    assert_eq!(counts.read_values_to_list().unwrap(), [0]);

    // A record stamped i64::MAX (a legal timestamp) moves stream time there.
    let (topology, punctuations) = counter_topology(PunctuationType::StreamTime);
    let driver = TopologyTestDriver::new(&topology).unwrap();
    let mut input = driver.create_input_topic("in", StringSerde, StringSerde);
    input
        .pipe_input_with_timestamp("k".into(), "v".into(), i64::MAX)
        .unwrap();
    input
        .pipe_input_with_timestamp("k".into(), "v".into(), i64::MAX)
        .unwrap();
    assert_eq!(punctuations.lock().unwrap().len(), 1);
}

/// Counts `close` calls.
struct Closing(Arc<Mutex<usize>>);

impl Processor<String, String, String, String> for Closing {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, String, String>,
        record: Record<String, String>,
    ) -> Result<(), StreamsError> {
        ctx.forward(record)
    }

    fn close(&mut self) {
        *self.0.lock().unwrap() += 1;
    }
}

#[test]
fn close_closes_processors_at_once_and_piping_afterwards_fails() {
    let closed = Arc::new(Mutex::new(0));
    let shared = Arc::clone(&closed);
    let builder = StreamsBuilder::new();
    builder
        .stream(&["in"], strings())
        .process(move || Closing(Arc::clone(&shared)))
        .to("out", out());
    let topology = builder.build().unwrap();
    let driver = TopologyTestDriver::new(&topology).unwrap();
    let mut input = driver.create_input_topic("in", StringSerde, StringSerde);
    let output = driver.create_output_topic("out", StringSerde, StringSerde);
    input.pipe_input("k".into(), "before".into()).unwrap();
    driver.close();
    assert_eq!(
        *closed.lock().unwrap(),
        1,
        "closed while the topics are held"
    );
    assert!(matches!(
        input.pipe_input("k".into(), "after".into()),
        Err(StreamsError::Closed)
    ));
    assert_eq!(output.read_values_to_list().unwrap(), ["before"]);
    drop((input, output));
    assert_eq!(*closed.lock().unwrap(), 1, "closed once");
}

#[test]
fn a_stream_merged_with_itself_forwards_each_record_once() {
    let builder = StreamsBuilder::new();
    let stream = builder.stream(&["in"], strings());
    stream.merge(&stream).to("out", out());
    let driver = TopologyTestDriver::new(&builder.build().unwrap()).unwrap();
    let mut input = driver.create_input_topic("in", StringSerde, StringSerde);
    let output = driver.create_output_topic("out", StringSerde, StringSerde);
    input.pipe_input("k".into(), "once".into()).unwrap();
    assert_eq!(output.read_values_to_list().unwrap(), ["once"]);
}

/// Forwards every record stamped -1.
struct Backdating;

impl Processor<String, String, String, String> for Backdating {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, String, String>,
        record: Record<String, String>,
    ) -> Result<(), StreamsError> {
        ctx.forward(record.with_timestamp(-1))
    }
}

#[test]
fn a_negative_output_timestamp_is_refused_at_the_sink() {
    let builder = StreamsBuilder::new();
    builder
        .stream(&["in"], strings())
        .process(|| Backdating)
        .to("out", out());
    let driver = TopologyTestDriver::new(&builder.build().unwrap()).unwrap();
    let mut input = driver.create_input_topic("in", StringSerde, StringSerde);
    let output = driver.create_output_topic("out", StringSerde, StringSerde);
    assert!(matches!(
        input.pipe_input("k".into(), "v".into()),
        Err(StreamsError::InvalidOutputTimestamp {
            timestamp_ms: -1,
            ..
        })
    ));
    assert!(output.is_empty());
}
