//! [`StreamsError`]: what can go wrong while records flow through a topology.
//! Building a topology has its own error, [`crate::topology::TopologyError`].

use std::time::Duration;

use crate::serdes::SerdeError;

/// A failure while processing records (Java throws `StreamsException` and
/// its subclasses for these).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamsError {
    /// A source could not decode an input record (Java's default
    /// `LogAndFailExceptionHandler` stops the task here too).
    #[error("source {node} failed to deserialize a record of topic {topic}: {source}")]
    Deserialization {
        node: String,
        topic: String,
        #[source]
        source: SerdeError,
    },
    /// A sink could not encode an output record.
    #[error("sink {node} failed to serialize a record for topic {topic}: {source}")]
    Serialization {
        node: String,
        topic: String,
        #[source]
        source: SerdeError,
    },
    /// A record reached a node typed for other keys or values; the Processor
    /// API checks types when nodes are added, so this means a processor
    /// forwarded to a child by name across a type boundary.
    #[error("node {node} expects {expected} but received {actual}")]
    TypeMismatch {
        node: String,
        expected: &'static str,
        actual: &'static str,
    },
    /// `forward_to` named a node that is not a child of the forwarding node.
    #[error("unknown downstream node {child} of {node}")]
    UnknownChild { node: String, child: String },
    /// A record reached a processor that is still busy with an earlier one.
    #[error("processor {0} was re-entered while it was processing (a cycle)")]
    Reentrant(String),
    /// A topic that no source of the topology reads.
    #[error("topic {0} is not read by any source of the topology")]
    UnknownTopic(String),
    /// Java's default `FailOnInvalidTimestamp`: record timestamps are >= 0.
    #[error("record of topic {topic} has an invalid (negative) timestamp {timestamp_ms}")]
    InvalidTimestamp { topic: String, timestamp_ms: i64 },
    /// A record reached a sink with a negative timestamp.
    #[error("sink {node} received a record with a negative timestamp {timestamp_ms}")]
    InvalidOutputTimestamp { node: String, timestamp_ms: i64 },
    /// The test driver was used after [`crate::test_driver::TopologyTestDriver::close`].
    #[error("the test driver is closed")]
    Closed,
    /// Punctuation intervals are at least one millisecond (as in Java).
    #[error("punctuation interval must be at least 1 ms, got {0:?}")]
    InvalidInterval(Duration),
    /// A test output topic was read past its end.
    #[error("no record left in output topic {0}")]
    NoRecord(String),
    /// Records written to the topology's own source topics kept coming back.
    #[error(
        "more than {0} records processed for one input: a loop through the topology's own topics?"
    )]
    TooManyRecords(usize),
    /// An output record could not be decoded by a test output topic.
    #[error("output topic {topic}: {source}")]
    Output {
        topic: String,
        #[source]
        source: SerdeError,
    },
    /// A [`crate::kafka_streams::StreamsConfig`] property is missing or wrong.
    #[error("{name} {reason}")]
    Config { name: String, reason: String },
    /// A call that the instance's state does not allow.
    #[error("{0}")]
    IllegalState(String),
    /// A source topic does not exist (Kafka: `MissingSourceTopicException`).
    #[error("source topic {topic} is missing: {reason}")]
    MissingSourceTopic { topic: String, reason: String },
    /// The source topics of one sub-topology have different partition
    /// counts (Kafka: a `TopologyException` at assignment).
    #[error("topics not co-partitioned (one sub-topology reads them): {0}")]
    NotCopartitioned(String),
    /// A record sent by a sink was not acknowledged (Kafka's default
    /// production exception handler fails here).
    #[error("sending an output record failed: {0}")]
    Production(#[source] strom_client::Error),
    /// The consumer or producer failed.
    #[error(transparent)]
    Client(#[from] strom_client::Error),
    /// A state store's serdes failed on a key or value (a corrupt store or
    /// changelog, or serdes that do not match): fatal, as in Kafka, whatever
    /// the deserialization handler says about input records.
    #[error("state store {store}: {source}")]
    Store {
        store: String,
        #[source]
        source: SerdeError,
    },
    /// Kafka's `UnknownStateStoreException` (there a subclass of
    /// `InvalidStateStoreException`; here a variant of its own): the
    /// topology has no store of that name.
    #[error("Cannot get state store {0} because no such store is registered in the topology.")]
    UnknownStateStore(String),

    /// Kafka's `InvalidStateStoreException`: the store cannot be queried
    /// now (the application is not running, or no local task holds it,
    /// while tasks restore, or because it moved to another instance).
    #[error("{0}")]
    InvalidStateStore(String),

    /// A user processor or punctuator failed.
    #[error("processing failed: {0}")]
    Processing(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StreamsError {
    /// Wraps a user error (from a processor or punctuator).
    pub fn processing(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Processing(error.into())
    }
}
