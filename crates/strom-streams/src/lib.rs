//! Kafka Streams' programming model in Rust: serdes with Java's byte layouts,
//! the Processor API, topologies whose `describe()` text is Kafka's, a
//! stateless DSL with Kafka's generated names, and a test driver that runs
//! a topology without a broker.
//!
//! In progress: in-memory key-value stores with changelog topics and
//! restoration, `group_by`/`group_by_key` aggregations with repartition
//! topics, run in the test driver and against a cluster; persistent stores,
//! the record cache and KTable operations are still to come (see
//! `docs/streams.md`).
//!
//! ```
//! use strom_streams::dsl::{Consumed, Produced, StreamsBuilder};
//! use strom_streams::serdes::{I64Serde, StringSerde};
//! use strom_streams::test_driver::TopologyTestDriver;
//!
//! let builder = StreamsBuilder::new();
//! builder
//!     .stream(&["words"], Consumed::with(StringSerde, StringSerde))
//!     .filter(|_key, word| !word.is_empty())
//!     .map_values(|word| i64::try_from(word.len()).unwrap_or(i64::MAX))
//!     .to("lengths", Produced::with(StringSerde, I64Serde));
//! let topology = builder.build()?;
//! assert!(topology.describe().to_string().starts_with("Topologies:\n   Sub-topology: 0\n"));
//!
//! let driver = TopologyTestDriver::new(&topology)?;
//! let mut words = driver.create_input_topic("words", StringSerde, StringSerde);
//! let lengths = driver.create_output_topic("lengths", StringSerde, I64Serde);
//! words.pipe_input("k".into(), "kafka".into())?;
//! assert_eq!(lengths.read_key_value()?, ("k".to_owned(), 5));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Layout
//!
//! - [`serdes`]: [`serdes::Serde`] and the built-ins (bytes, String,
//!   i32/i64/f32/f64 big-endian, JSON, [`serdes::Nullable`]).
//! - [`processor`]: [`processor::Record`], [`processor::Processor`],
//!   [`processor::ProcessorContext`] (forwarding, stream time,
//!   punctuation), topic-name extractors.
//! - [`topology`]: [`topology::Topology`] (`add_source`, `add_processor`,
//!   `add_sink`), validation, sub-topologies, and `describe()`.
//! - [`dsl`]: [`dsl::StreamsBuilder`], [`dsl::KStream`], `split()` branches,
//!   repartition topics, grouping and aggregations into [`dsl::KTable`]s.
//! - [`test_driver`]: [`test_driver::TopologyTestDriver`] with test input and
//!   output topics and a wall clock to advance.
//! - [`kafka_streams`]: [`KafkaStreams`], a topology run against a cluster
//!   by stream threads in the application's consumer group, at least once.
//! - [`state`]: key-value state stores (in memory), their changelog
//!   records and the `.checkpoint` file of a task directory.
//! - [`error`]: [`error::StreamsError`], failures while processing.
//! - `runtime` (private): a task's type-erased nodes, stream time and
//!   punctuation queue, shared by the test driver and the coming runtime.
//! - `java` (private): the bits of Java's `HashMap`/`TreeSet` behaviour that
//!   Kafka's description text depends on.

pub mod dsl;
pub mod error;
pub mod kafka_streams;
pub mod processor;
pub mod serdes;
pub mod state;
pub mod test_driver;
pub mod topology;

mod java;
mod runtime;

pub use error::StreamsError;
pub use kafka_streams::{KafkaStreams, StateRestoreListener, StreamsConfig};
pub use topology::{Topology, TopologyError};
