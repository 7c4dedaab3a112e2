//! A run's history: every client operation with when it started and ended
//! and how it came out, one JSON object per line (`history.jsonl`), written
//! by the Rust workloads and the Python one alike and read by the checker.
//!
//! Values are unique numbers across a run (a workload takes them from its
//! own range), so a value read names the one send that wrote it.
//!
//! ```json
//! {"index":7,"process":2,"start_us":1200,"end_us":3400,"outcome":"ok","f":"send","topic":"chaos","partition":1,"value":1000007,"offset":41}
//! {"index":9,"process":5,"start_us":1300,"end_us":1800,"outcome":"ok","f":"poll","isolation":"read_committed","records":[{"topic":"chaos","partition":1,"offset":41,"value":1000007}]}
//! ```

use serde::{Deserialize, Serialize};

/// How an operation came out, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It took effect (a send acknowledged, a transaction committed, a
    /// commit acknowledged, a poll answered).
    Ok,
    /// It did not take effect (a transaction aborted, an error that says
    /// nothing was written).
    Failed,
    /// It may or may not have taken effect (a timeout, a lost connection,
    /// a client killed while waiting).
    Unknown,
}

/// A consumer's isolation level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    ReadUncommitted,
    ReadCommitted,
}

/// One record a poll returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Read {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub value: u64,
}

/// One record a producer sent (alone or in a transaction).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    pub topic: String,
    /// The partition it went to, when known.
    pub partition: Option<i32>,
    pub value: u64,
    /// The offset the acknowledgement named (none when unknown, or -1 when
    /// the broker answered a retry as a duplicate).
    pub offset: Option<i64>,
}

/// A committed offset of one partition (the next offset to read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A topic partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Partition {
    pub topic: String,
    pub partition: i32,
}

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Action {
    /// One record from an idempotent producer at acks=all.
    Send(Sent),
    /// A transaction: its records, and when its commit (or abort) was
    /// asked for. Outcome `ok` is committed, `failed` aborted.
    Txn {
        transactional_id: String,
        sends: Vec<Sent>,
        /// When the commit was asked for (microseconds since the run
        /// began); none if the transaction never got that far.
        commit_start_us: Option<u64>,
    },
    /// The partitions a consumer reads from now on: the order of its
    /// reads starts again (a rebalance, a new assignment, a seek).
    Assign { partitions: Vec<Partition> },
    /// Records one poll returned, in the order returned.
    Poll {
        isolation: Isolation,
        records: Vec<Read>,
    },
    /// A group's offsets committed by a member.
    Commit {
        group: String,
        offsets: Vec<Position>,
    },
    /// A group's committed offsets as read back (OffsetFetch).
    Committed {
        group: String,
        offsets: Vec<Position>,
    },
    /// The final reads read a partition to its end: its log ends at
    /// `offset` (the high watermark once everything before it was read).
    /// An acknowledged offset at or past it was lost.
    End {
        topic: String,
        partition: i32,
        offset: i64,
    },
}

/// One client operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history.
    pub index: u64,
    /// The client instance; a client created again (after a crash or a
    /// fence) is a new process, so its reads start a new session.
    pub process: u32,
    /// Microseconds since the run began.
    pub start_us: u64,
    pub end_us: u64,
    pub outcome: Outcome,
    #[serde(flatten)]
    pub action: Action,
    /// What the client said, when it failed or was unsure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Reads a history written one JSON object per line; blank lines are
/// skipped. A line that does not parse is an error naming its number.
pub fn parse(text: &str) -> Result<Vec<Op>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line).map_err(|e| format!("history line {}: {e}", n + 1))
        })
        .collect()
}
