//! Checks a history for the anomalies of a Kafka-style queue, after
//! Jepsen's Kafka workload: acknowledged writes nobody read although later
//! ones were read, a value read at two places, two values read at one
//! place, consumers skipping or going back over records, read-committed
//! consumers seeing aborted or not-yet-committed data, and a group's
//! committed offset going backwards.
//!
//! Only operations that came out `ok` count as observations. Values are
//! unique within a run, so a value names the one send that wrote it.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use serde::Serialize;

use crate::history::{Action, Isolation, Op, Outcome, Sent};

/// How many anomalies of one kind the report lists. A broken broker can
/// produce one anomaly per record of a million-record history; the first
/// hundred of a kind say what went wrong, and the rest only cost memory and
/// make the report unreadable. The ones left out are still counted.
const MAX_PER_KIND: usize = 100;

/// How many positions or values one message (and its op list) names when
/// there are more, so that one anomaly stays one readable line.
const MAX_LISTED: usize = 8;

/// A kind of anomaly the checker looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// An acknowledged value nobody read, although a later record of its
    /// partition was read.
    LostWrite,
    /// One value read at two or more positions.
    Duplicate,
    /// Two values at one position (read there, or acknowledged there).
    InconsistentOffsets,
    /// A consumer jumped over a record that a consumer of the same isolation
    /// read.
    PollSkip,
    /// A consumer read an offset no higher than one it had read before,
    /// without being reassigned in between.
    NonmonotonicPoll,
    /// A read-committed consumer read a value of an aborted transaction.
    AbortedRead,
    /// A read-committed consumer read a value of a transaction before its
    /// commit was asked for.
    DirtyRead,
    /// A group's committed offset was read lower than one committed or read
    /// before.
    CommittedOffsetBackwards,
    /// Two replicas of a partition hold different batches below both of
    /// their high watermarks (read from their data directories after the
    /// run, not from the history).
    ReplicaDivergence,
    /// A duplicate whose later copies the producer sent again under a
    /// higher epoch, its sequences restarted (librdkafka's epoch bump,
    /// librdkafka issue #4953): the client's doing, reported apart and not
    /// counted against the broker.
    EpochBumpDuplicate,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 10] = [
        Kind::LostWrite,
        Kind::Duplicate,
        Kind::InconsistentOffsets,
        Kind::PollSkip,
        Kind::NonmonotonicPoll,
        Kind::AbortedRead,
        Kind::DirtyRead,
        Kind::CommittedOffsetBackwards,
        Kind::ReplicaDivergence,
        Kind::EpochBumpDuplicate,
    ];

    /// Whether the kind is the broker's failure (the others are a client's
    /// known behaviour, reported but not failing a run).
    pub fn is_broker_anomaly(self) -> bool {
        self != Kind::EpochBumpDuplicate
    }

    /// The kind's name as written in reports (kebab-case).
    pub fn name(self) -> &'static str {
        match self {
            Kind::LostWrite => "lost-write",
            Kind::Duplicate => "duplicate",
            Kind::InconsistentOffsets => "inconsistent-offsets",
            Kind::PollSkip => "poll-skip",
            Kind::NonmonotonicPoll => "nonmonotonic-poll",
            Kind::AbortedRead => "aborted-read",
            Kind::DirtyRead => "dirty-read",
            Kind::CommittedOffsetBackwards => "committed-offset-backwards",
            Kind::ReplicaDivergence => "replica-divergence",
            Kind::EpochBumpDuplicate => "epoch-bump-duplicate",
        }
    }
}

/// One anomaly found.
#[derive(Debug, Clone, Serialize)]
pub struct Anomaly {
    /// What kind it is.
    pub kind: Kind,
    /// One line naming the topic, partition, offsets and values involved.
    pub message: String,
    /// The indexes of the operations involved, in ascending order.
    pub ops: Vec<u64>,
    /// For a duplicate: where the value was read, as (topic, partition,
    /// offset).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub places: Vec<(String, i32, i64)>,
}

/// What the checker found in one history.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// The anomalies found, by kind and then by first op index; at most
    /// 100 of each kind (the first ones by op index).
    pub anomalies: Vec<Anomaly>,
    /// How many anomalies of a kind were found beyond those listed (only
    /// kinds with some left out appear).
    pub truncated: BTreeMap<Kind, usize>,
    /// How many operations the history holds.
    pub ops: usize,
    /// How many values were acknowledged (sends that came out `ok`, and the
    /// sends of transactions that committed).
    pub acknowledged: usize,
    /// How many distinct values `ok` polls returned.
    pub read: usize,
}

impl Report {
    /// How many anomalies of a kind were found, listed or not.
    pub fn count(&self, kind: Kind) -> usize {
        let listed = self.anomalies.iter().filter(|a| a.kind == kind).count();
        listed + self.truncated.get(&kind).copied().unwrap_or(0)
    }

    /// Whether no anomaly the broker is to blame for was found.
    pub fn is_clean(&self) -> bool {
        self.anomalies.iter().all(|a| !a.kind.is_broker_anomaly())
            && self
                .truncated
                .iter()
                .all(|(kind, n)| *n == 0 || !kind.is_broker_anomaly())
    }
}

/// Checks a history (in any order; it is read in op index order) for every
/// kind of anomaly.
pub fn check(history: &[Op]) -> Report {
    let mut ops: Vec<&Op> = history.iter().collect();
    ops.sort_by_key(|op| op.index);
    let facts = Facts::gather(&ops);
    let mut out = Collector::default();
    lost_writes(&facts, &mut out);
    duplicates(&facts, &mut out);
    inconsistent_offsets(&facts, &mut out);
    poll_sequences(&ops, &facts, &mut out);
    transactional_reads(&facts, &mut out);
    committed_offsets(&ops, &mut out);
    let (anomalies, truncated) = out.finish();
    Report {
        anomalies,
        truncated,
        ops: history.len(),
        acknowledged: facts.acks.len(),
        read: facts.read_values.len(),
    }
}

/// A topic partition, borrowed from the history.
type Tp<'a> = (&'a str, i32);

/// One acknowledged value.
#[derive(Debug, Clone, Copy)]
struct Ack<'a> {
    value: u64,
    topic: &'a str,
    partition: Option<i32>,
    offset: Option<i64>,
    op: u64,
    start_us: u64,
    end_us: u64,
}

/// The transaction a value was sent in.
#[derive(Debug, Clone, Copy)]
struct TxnOf {
    op: u64,
    outcome: Outcome,
    commit_start_us: Option<u64>,
}

/// One record an `ok` poll returned.
#[derive(Debug, Clone, Copy)]
struct ReadRec<'a> {
    value: u64,
    topic: &'a str,
    partition: i32,
    offset: i64,
    op: u64,
    isolation: Isolation,
    end_us: u64,
}

/// What the history says was written and read, gathered in one pass.
#[derive(Debug, Default)]
struct Facts<'a> {
    /// Acknowledged values, in op order.
    acks: Vec<Ack<'a>>,
    /// Each acknowledged value's first entry in `acks`.
    ack_of: HashMap<u64, usize>,
    /// The transaction each transactional value was sent in (the first one,
    /// should a value be sent twice).
    txn_of: HashMap<u64, TxnOf>,
    /// Records of `ok` polls, in op order.
    reads: Vec<ReadRec<'a>>,
    /// The distinct values in `reads`.
    read_values: HashSet<u64>,
    /// Where the final reads found each partition's log to end, and the op
    /// that said so (the lowest, if several did).
    ends: HashMap<Tp<'a>, (i64, u64)>,
}

impl<'a> Facts<'a> {
    /// Gathers the facts from ops sorted by index.
    fn gather(ops: &[&'a Op]) -> Self {
        let mut f = Facts::default();
        for op in ops {
            let ok = op.outcome == Outcome::Ok;
            match &op.action {
                Action::Send(sent) if ok => f.ack(op, sent),
                Action::Txn {
                    sends,
                    commit_start_us,
                    ..
                } => {
                    for sent in sends {
                        f.txn_of.entry(sent.value).or_insert(TxnOf {
                            op: op.index,
                            outcome: op.outcome,
                            commit_start_us: *commit_start_us,
                        });
                        if ok {
                            f.ack(op, sent);
                        }
                    }
                }
                Action::Poll { isolation, records } if ok => {
                    for r in records {
                        f.read_values.insert(r.value);
                        f.reads.push(ReadRec {
                            value: r.value,
                            topic: &r.topic,
                            partition: r.partition,
                            offset: r.offset,
                            op: op.index,
                            isolation: *isolation,
                            end_us: op.end_us,
                        });
                    }
                }
                Action::End {
                    topic,
                    partition,
                    offset,
                } if ok => {
                    let end = f
                        .ends
                        .entry((topic.as_str(), *partition))
                        .or_insert((*offset, op.index));
                    if *offset < end.0 {
                        *end = (*offset, op.index);
                    }
                }
                _ => {}
            }
        }
        f
    }

    /// Records that `op` acknowledged `sent`.
    fn ack(&mut self, op: &Op, sent: &'a Sent) {
        self.ack_of.entry(sent.value).or_insert(self.acks.len());
        self.acks.push(Ack {
            value: sent.value,
            topic: &sent.topic,
            partition: sent.partition,
            offset: sent.offset,
            op: op.index,
            start_us: op.start_us,
            end_us: op.end_us,
        });
    }
}

/// Writes a partition that may be unknown.
fn partition_name(partition: Option<i32>) -> String {
    partition.map_or_else(|| "?".to_owned(), |p| p.to_string())
}

/// The isolation level as written in histories.
fn isolation_name(isolation: Isolation) -> &'static str {
    match isolation {
        Isolation::ReadUncommitted => "read_uncommitted",
        Isolation::ReadCommitted => "read_committed",
    }
}

/// A small number standing for an isolation level, to key maps by
/// (`Isolation` is not `Hash`).
fn isolation_key(isolation: Isolation) -> u8 {
    match isolation {
        Isolation::ReadUncommitted => 0,
        Isolation::ReadCommitted => 1,
    }
}

/// The highest offset some poll read, and where.
#[derive(Debug, Clone, Copy)]
struct HighRead {
    offset: i64,
    partition: i32,
    op: u64,
}

/// A read value whose acknowledging op began latest, and where it was read.
#[derive(Debug, Clone, Copy)]
struct LateRead {
    ack_start_us: u64,
    ack_op: u64,
    value: u64,
    partition: i32,
    op: u64,
}

/// Why an unread acknowledged value counts as lost.
#[derive(Debug, Clone, Copy)]
enum LostBecause {
    /// A higher offset of its partition (or topic) was read.
    Higher(HighRead),
    /// A value acknowledged by an op that began after this one ended was
    /// read on its partition (or topic).
    Later(LateRead),
    /// The final reads found its partition's log ending at or before its
    /// offset: (end, op).
    PastEnd(i64, u64),
}

/// Lost writes: acknowledged values no poll returned, though a poll
/// returned something written after them.
fn lost_writes(f: &Facts<'_>, out: &mut Collector) {
    let mut high_tp: HashMap<Tp<'_>, HighRead> = HashMap::new();
    let mut high_topic: HashMap<&str, HighRead> = HashMap::new();
    let mut late_tp: HashMap<Tp<'_>, LateRead> = HashMap::new();
    let mut late_topic: HashMap<&str, LateRead> = HashMap::new();
    for r in &f.reads {
        let high = HighRead {
            offset: r.offset,
            partition: r.partition,
            op: r.op,
        };
        for slot in [
            high_tp.entry((r.topic, r.partition)).or_insert(high),
            high_topic.entry(r.topic).or_insert(high),
        ] {
            if r.offset > slot.offset {
                *slot = high;
            }
        }
        let Some(ack) = f.ack_of.get(&r.value).and_then(|i| f.acks.get(*i)) else {
            continue;
        };
        let late = LateRead {
            ack_start_us: ack.start_us,
            ack_op: ack.op,
            value: r.value,
            partition: r.partition,
            op: r.op,
        };
        for slot in [
            late_tp.entry((r.topic, r.partition)).or_insert(late),
            late_topic.entry(r.topic).or_insert(late),
        ] {
            if late.ack_start_us > slot.ack_start_us {
                *slot = late;
            }
        }
    }

    let mut flagged = HashSet::new();
    for ack in &f.acks {
        if f.read_values.contains(&ack.value) || flagged.contains(&ack.value) {
            continue;
        }
        let because = match (ack.partition, ack.offset.filter(|o| *o >= 0)) {
            (Some(p), Some(o)) => high_tp
                .get(&(ack.topic, p))
                .filter(|h| h.offset > o)
                .map(|h| LostBecause::Higher(*h))
                .or_else(|| {
                    f.ends
                        .get(&(ack.topic, p))
                        .filter(|(end, _)| *end <= o)
                        .map(|(end, op)| LostBecause::PastEnd(*end, *op))
                }),
            (None, Some(o)) => high_topic
                .get(ack.topic)
                .filter(|h| h.offset > o)
                .map(|h| LostBecause::Higher(*h)),
            (Some(p), None) => late_tp
                .get(&(ack.topic, p))
                .filter(|l| l.ack_start_us > ack.end_us)
                .map(|l| LostBecause::Later(*l)),
            (None, None) => late_topic
                .get(ack.topic)
                .filter(|l| l.ack_start_us > ack.end_us)
                .map(|l| LostBecause::Later(*l)),
        };
        let Some(because) = because else { continue };
        flagged.insert(ack.value);
        let witness_op = match because {
            LostBecause::Higher(h) => h.op,
            LostBecause::Later(l) => l.op,
            LostBecause::PastEnd(_, op) => op,
        };
        out.add(Kind::LostWrite, vec![ack.op, witness_op], || {
            let acked = format!(
                "value {} acknowledged on {}/{} at offset {} (op {}) was never read",
                ack.value,
                ack.topic,
                partition_name(ack.partition),
                ack.offset
                    .map_or_else(|| "unknown".to_owned(), |o| o.to_string()),
                ack.op,
            );
            match because {
                LostBecause::Higher(h) => format!(
                    "{acked}, though op {} read {}/{} offset {}",
                    h.op, ack.topic, h.partition, h.offset
                ),
                LostBecause::Later(l) => format!(
                    "{acked}, though op {} read value {} from {}/{}, acknowledged by op {} \
                     which began after op {} ended",
                    l.op, l.value, ack.topic, l.partition, l.ack_op, ack.op
                ),
                LostBecause::PastEnd(end, op) => format!(
                    "{acked}, and the final reads found the log of {}/{} ending at offset {end} (op {op})",
                    ack.topic,
                    partition_name(ack.partition),
                ),
            }
        });
    }
}

/// Duplicates: one value read at more than one (topic, partition, offset).
fn duplicates(f: &Facts<'_>, out: &mut Collector) {
    let mut reads: Vec<&ReadRec<'_>> = f.reads.iter().collect();
    reads.sort_by_key(|r| (r.value, r.topic, r.partition, r.offset, r.op));
    for same_value in reads.chunk_by(|a, b| a.value == b.value) {
        let mut places = same_value.to_vec();
        places.dedup_by_key(|r| (r.topic, r.partition, r.offset));
        if places.len() < 2 {
            continue;
        }
        let listed = places.get(..MAX_LISTED).unwrap_or(&places);
        let ops = listed.iter().map(|r| r.op).collect();
        let at = listed
            .iter()
            .map(|r| (r.topic.to_owned(), r.partition, r.offset))
            .collect();
        out.add_placed(Kind::Duplicate, ops, at, || {
            let at: Vec<String> = listed
                .iter()
                .map(|r| {
                    format!(
                        "{}/{} offset {} (op {})",
                        r.topic, r.partition, r.offset, r.op
                    )
                })
                .collect();
            format!(
                "value {} read at {} positions: {}",
                places.first().map_or(0, |r| r.value),
                places.len(),
                at.join(", ")
            )
        });
    }
}

/// One claim that a value is at a position: a read, or an acknowledgement
/// naming its offset.
#[derive(Debug, Clone, Copy)]
struct Placed<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    value: u64,
    op: u64,
}

/// Inconsistent offsets: two values at one (topic, partition, offset),
/// counting reads and acknowledgements that named their offset.
fn inconsistent_offsets(f: &Facts<'_>, out: &mut Collector) {
    let acked = f.acks.iter().filter_map(|a| {
        let partition = a.partition?;
        let offset = a.offset.filter(|o| *o >= 0)?;
        Some(Placed {
            topic: a.topic,
            partition,
            offset,
            value: a.value,
            op: a.op,
        })
    });
    let read = f.reads.iter().map(|r| Placed {
        topic: r.topic,
        partition: r.partition,
        offset: r.offset,
        value: r.value,
        op: r.op,
    });
    let mut placed: Vec<Placed<'_>> = acked.chain(read).collect();
    placed.sort_by_key(|p| (p.topic, p.partition, p.offset, p.value, p.op));
    let same_place = |a: &Placed<'_>, b: &Placed<'_>| {
        (a.topic, a.partition, a.offset) == (b.topic, b.partition, b.offset)
    };
    for here in placed.chunk_by(same_place) {
        let mut values = here.to_vec();
        values.dedup_by_key(|p| p.value);
        if values.len() < 2 {
            continue;
        }
        let listed = values.get(..MAX_LISTED).unwrap_or(&values);
        let ops = listed.iter().map(|p| p.op).collect();
        out.add(Kind::InconsistentOffsets, ops, || {
            let which: Vec<String> = listed
                .iter()
                .map(|p| format!("{} (op {})", p.value, p.op))
                .collect();
            let (topic, partition, offset) = values
                .first()
                .map_or(("", 0, 0), |p| (p.topic, p.partition, p.offset));
            format!(
                "{topic}/{partition} offset {offset} holds {} values: {}",
                values.len(),
                which.join(", ")
            )
        });
    }
}

/// A read offset of a partition: the offset, the value, the op.
type Seen = (i64, u64, u64);

/// Poll skips and nonmonotonic polls: each process's offsets of a
/// partition, over its `ok` polls in order, must go up one at a time,
/// except over offsets no consumer of the same isolation read (aborted
/// records, transaction markers). An assign starts them all again.
fn poll_sequences(ops: &[&Op], f: &Facts<'_>, out: &mut Collector) {
    let mut seen: HashMap<(u8, &str, i32), Vec<Seen>> = HashMap::new();
    for r in &f.reads {
        seen.entry((isolation_key(r.isolation), r.topic, r.partition))
            .or_default()
            .push((r.offset, r.value, r.op));
    }
    for offsets in seen.values_mut() {
        offsets.sort_unstable();
        offsets.dedup_by_key(|s| s.0);
    }

    // Per process, per partition: the last offset read and the op that read it.
    let mut last: HashMap<u32, HashMap<Tp<'_>, (i64, u64)>> = HashMap::new();
    for op in ops {
        let (isolation, records) = match &op.action {
            Action::Assign { .. } => {
                last.remove(&op.process);
                continue;
            }
            Action::Poll { isolation, records } if op.outcome == Outcome::Ok => {
                (*isolation, records)
            }
            _ => continue,
        };
        let mine = last.entry(op.process).or_default();
        for r in records {
            let key = (r.topic.as_str(), r.partition);
            let b = r.offset;
            if let Some(&(a, a_op)) = mine.get(&key) {
                if b <= a {
                    out.add(Kind::NonmonotonicPoll, vec![a_op, op.index], || {
                        format!(
                            "process {} read {}/{} offset {b} (op {}) after offset {a} (op {a_op})",
                            op.process, r.topic, r.partition, op.index
                        )
                    });
                } else if a.checked_add(1).is_some_and(|next| b > next)
                    && let Some((m, value, m_op)) = read_between(&seen, isolation, key, a, b)
                {
                    out.add(Kind::PollSkip, vec![a_op, op.index, m_op], || {
                        format!(
                            "process {} went from {}/{} offset {a} (op {a_op}) to offset {b} \
                             (op {}), though a {} poll (op {m_op}) read value {value} at \
                             offset {m}",
                            op.process,
                            r.topic,
                            r.partition,
                            op.index,
                            isolation_name(isolation)
                        )
                    });
                }
            }
            mine.insert(key, (b, op.index));
        }
    }
}

/// The lowest offset strictly between `a` and `b` that a poll of this
/// isolation read on this partition, if any.
fn read_between(
    seen: &HashMap<(u8, &str, i32), Vec<Seen>>,
    isolation: Isolation,
    (topic, partition): Tp<'_>,
    a: i64,
    b: i64,
) -> Option<Seen> {
    let offsets = seen.get(&(isolation_key(isolation), topic, partition))?;
    let first_above = offsets.partition_point(|s| s.0 <= a);
    offsets.get(first_above).filter(|s| s.0 < b).copied()
}

/// Aborted and dirty reads: values of transactions that read-committed
/// polls returned though the transaction aborted, or before its commit was
/// asked for. One anomaly per value, naming its first such read.
fn transactional_reads(f: &Facts<'_>, out: &mut Collector) {
    let classify = |r: &ReadRec<'_>| -> Option<(Kind, TxnOf)> {
        if r.isolation != Isolation::ReadCommitted {
            return None;
        }
        let txn = *f.txn_of.get(&r.value)?;
        if txn.outcome == Outcome::Failed {
            Some((Kind::AbortedRead, txn))
        } else if txn.commit_start_us.is_none_or(|c| r.end_us < c) {
            Some((Kind::DirtyRead, txn))
        } else {
            None
        }
    };
    let mut bad_reads: HashMap<u64, usize> = HashMap::new();
    for r in &f.reads {
        if classify(r).is_some() {
            *bad_reads.entry(r.value).or_default() += 1;
        }
    }
    let mut reported = HashSet::new();
    for r in &f.reads {
        let Some((kind, txn)) = classify(r) else {
            continue;
        };
        if !reported.insert(r.value) {
            continue;
        }
        let times = bad_reads.get(&r.value).copied().unwrap_or(1);
        out.add(kind, vec![txn.op, r.op], || {
            let why = match (kind, txn.commit_start_us) {
                (Kind::AbortedRead, _) => "which aborted".to_owned(),
                (_, None) => "which never asked to commit".to_owned(),
                (_, Some(c)) => format!(
                    "whose commit was asked for at {c}us, after the poll ended at {}us",
                    r.end_us
                ),
            };
            format!(
                "read_committed poll (op {}) returned value {} at {}/{} offset {}, sent by \
                 transaction op {} {why} ({times} such read(s) of this value)",
                r.op, r.value, r.topic, r.partition, r.offset, txn.op
            )
        });
    }
}

/// A committed offset known to hold at some moment of [start_us, end_us]:
/// an `ok` commit or an `ok` read of committed offsets.
#[derive(Debug, Clone, Copy)]
struct Held {
    start_us: u64,
    end_us: u64,
    offset: i64,
    op: u64,
    is_read: bool,
}

/// One group's committed offset of one partition, as the history saw it.
#[derive(Debug, Default)]
struct Register {
    /// Offsets known to have held: `ok` commits and `ok` reads.
    held: Vec<Held>,
    /// `ok` reads.
    reads: Vec<Held>,
    /// Commits that may have taken effect (`ok` or `unknown`), by offset:
    /// (start_us, end_us).
    writes: HashMap<i64, Vec<(u64, u64)>>,
}

/// Committed offsets going backwards: a read of a group's committed offset
/// saw c though an offset above c was committed (acknowledged) or read
/// before the read began — unless a commit of c itself may have landed
/// after that (a consumer that seeks back may commit a lower offset).
fn committed_offsets(ops: &[&Op], out: &mut Collector) {
    let mut registers: BTreeMap<(&str, Tp<'_>), Register> = BTreeMap::new();
    for op in ops {
        let (group, offsets, is_read) = match &op.action {
            Action::Commit { group, offsets } => (group, offsets, false),
            Action::Committed { group, offsets } => (group, offsets, true),
            _ => continue,
        };
        for p in offsets {
            let register = registers
                .entry((group.as_str(), (p.topic.as_str(), p.partition)))
                .or_default();
            let held = Held {
                start_us: op.start_us,
                end_us: op.end_us,
                offset: p.offset,
                op: op.index,
                is_read,
            };
            match (is_read, op.outcome) {
                (true, Outcome::Ok) => {
                    register.held.push(held);
                    register.reads.push(held);
                }
                (true, _) | (false, Outcome::Failed) => {}
                (false, outcome) => {
                    if outcome == Outcome::Ok {
                        register.held.push(held);
                    }
                    register
                        .writes
                        .entry(p.offset)
                        .or_default()
                        .push((op.start_us, op.end_us));
                }
            }
        }
    }
    for ((group, (topic, partition)), register) in registers {
        check_register(register, |above, read| {
            out.add(
                Kind::CommittedOffsetBackwards,
                vec![above.op, read.op],
                || {
                    let before = if above.is_read {
                        "was read"
                    } else {
                        "was committed"
                    };
                    format!(
                        "group {group} {topic}/{partition}: committed offset read as {} (op {}) \
                     though offset {} {before} (op {}) before that read began",
                        read.offset, read.op, above.offset, above.op
                    )
                },
            );
        });
    }
}

/// Finds the reads of one register that went backwards, calling `found`
/// with the higher offset seen before and the read.
fn check_register(mut register: Register, mut found: impl FnMut(Held, Held)) {
    // For each offset, commits of it by start time, with the latest end so far.
    let mut writes: HashMap<i64, Vec<(u64, u64)>> = HashMap::new();
    for (offset, mut commits) in register.writes {
        commits.sort_unstable();
        let mut latest_end = 0;
        for commit in &mut commits {
            latest_end = latest_end.max(commit.1);
            commit.1 = latest_end;
        }
        writes.insert(offset, commits);
    }
    // The latest end of a commit of `offset` that began before `before_us`.
    let latest_commit_end = |offset: i64, before_us: u64| -> Option<u64> {
        let commits = writes.get(&offset)?;
        let n = commits.partition_point(|c| c.0 < before_us);
        commits.get(n.checked_sub(1)?).map(|c| c.1)
    };

    let mut offsets: Vec<i64> = register.held.iter().map(|h| h.offset).collect();
    offsets.sort_unstable();
    offsets.dedup();
    let n = offsets.len();
    register.held.sort_by_key(|h| (h.end_us, h.op));
    register.reads.sort_by_key(|r| (r.start_us, r.op));
    // Held offsets that ended before the current read began, indexed by
    // offset rank from the top, keeping the one that began latest.
    let mut ended = MaxFenwick::new(n);
    let mut next = 0;
    for read in &register.reads {
        while let Some(h) = register.held.get(next)
            && h.end_us < read.start_us
        {
            let rank = offsets.partition_point(|o| *o < h.offset);
            ended.update(n.saturating_sub(rank + 1), (h.start_us, h.op, next));
            next += 1;
        }
        let above = offsets.partition_point(|o| *o <= read.offset);
        let Some((start_us, _, higher)) = ended.query(n.saturating_sub(above)) else {
            continue;
        };
        let Some(higher) = register.held.get(higher) else {
            continue;
        };
        // A commit of the offset read that ended after the higher one began
        // and began before the read ended may have been the last word.
        let explained =
            latest_commit_end(read.offset, read.end_us).is_some_and(|end| end > start_us);
        if !explained {
            found(*higher, *read);
        }
    }
}

/// A Fenwick tree answering "the greatest value among the first `len`
/// positions", with values only ever raised.
#[derive(Debug)]
struct MaxFenwick<T> {
    /// 1-based; slot 0 unused.
    tree: Vec<Option<T>>,
}

impl<T: Copy + Ord> MaxFenwick<T> {
    /// A tree of `n` empty positions.
    fn new(n: usize) -> Self {
        MaxFenwick {
            tree: vec![None; n.saturating_add(1)],
        }
    }

    /// Raises position `pos` (0-based) to at least `value`.
    fn update(&mut self, pos: usize, value: T) {
        let mut i = pos.saturating_add(1);
        while let Some(slot) = self.tree.get_mut(i) {
            if slot.is_none_or(|s| s < value) {
                *slot = Some(value);
            }
            i = i.saturating_add(i & i.wrapping_neg());
        }
    }

    /// The greatest value among positions `0..len`.
    fn query(&self, len: usize) -> Option<T> {
        let mut i = len.min(self.tree.len().saturating_sub(1));
        let mut best = None;
        while i > 0 {
            if let Some(Some(v)) = self.tree.get(i) {
                best = best.max(Some(*v));
            }
            i -= i & i.wrapping_neg();
        }
        best
    }
}

/// An anomaly waiting in the collector, ordered by its first op index and
/// then by when it was found.
#[derive(Debug)]
struct Pending {
    key: (u64, u64),
    anomaly: Anomaly,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key.cmp(&other.key)
    }
}

/// Keeps the first [`MAX_PER_KIND`] anomalies of each kind (by first op
/// index) and counts the rest; messages are written only for kept ones.
#[derive(Debug, Default)]
struct Collector {
    /// Per kind, a max-heap of the kept anomalies.
    kept: BTreeMap<Kind, BinaryHeap<Pending>>,
    /// Per kind, how many were dropped.
    dropped: BTreeMap<Kind, usize>,
    /// How many anomalies were found so far (the tie-break).
    found: u64,
}

impl Collector {
    /// Adds an anomaly of `kind` involving `ops`, its message written by
    /// `message` if it is kept.
    fn add(&mut self, kind: Kind, ops: Vec<u64>, message: impl FnOnce() -> String) {
        self.add_placed(kind, ops, Vec::new(), message);
    }

    /// [`Self::add`] with the places involved.
    fn add_placed(
        &mut self,
        kind: Kind,
        mut ops: Vec<u64>,
        places: Vec<(String, i32, i64)>,
        message: impl FnOnce() -> String,
    ) {
        ops.sort_unstable();
        ops.dedup();
        let key = (ops.first().copied().unwrap_or(u64::MAX), self.found);
        self.found += 1;
        let heap = self.kept.entry(kind).or_default();
        if heap.len() >= MAX_PER_KIND {
            if heap.peek().is_none_or(|worst| worst.key < key) {
                *self.dropped.entry(kind).or_default() += 1;
                return;
            }
            heap.pop();
            *self.dropped.entry(kind).or_default() += 1;
        }
        heap.push(Pending {
            key,
            anomaly: Anomaly {
                kind,
                message: message(),
                ops,
                places,
            },
        });
    }

    /// The kept anomalies by kind and first op, and the dropped counts.
    fn finish(self) -> (Vec<Anomaly>, BTreeMap<Kind, usize>) {
        let anomalies = self
            .kept
            .into_values()
            .flat_map(|heap| heap.into_sorted_vec().into_iter().map(|p| p.anomaly))
            .collect();
        (anomalies, self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Partition, Position, Read, parse};

    use Isolation::{ReadCommitted as Rc, ReadUncommitted as Ru};
    use Outcome::{Failed, Ok, Unknown};

    fn op(index: u64, process: u32, span: (u64, u64), outcome: Outcome, action: Action) -> Op {
        Op {
            index,
            process,
            start_us: span.0,
            end_us: span.1,
            outcome,
            action,
            error: None,
        }
    }

    fn sent(partition: Option<i32>, value: u64, offset: Option<i64>) -> Sent {
        Sent {
            topic: "t".to_owned(),
            partition,
            value,
            offset,
        }
    }

    /// A send of `value` acknowledged (or not) at t/`partition` `offset`.
    fn send(partition: i32, value: u64, offset: i64) -> Action {
        Action::Send(sent(Some(partition), value, Some(offset)))
    }

    fn txn(sends: Vec<Sent>, commit_start_us: Option<u64>) -> Action {
        Action::Txn {
            transactional_id: "tx".to_owned(),
            sends,
            commit_start_us,
        }
    }

    /// A poll returning (partition, offset, value) records of topic t.
    fn poll(isolation: Isolation, records: &[(i32, i64, u64)]) -> Action {
        Action::Poll {
            isolation,
            records: records
                .iter()
                .map(|&(partition, offset, value)| Read {
                    topic: "t".to_owned(),
                    partition,
                    offset,
                    value,
                })
                .collect(),
        }
    }

    fn positions(offsets: &[(i32, i64)]) -> Vec<Position> {
        offsets
            .iter()
            .map(|&(partition, offset)| Position {
                topic: "t".to_owned(),
                partition,
                offset,
            })
            .collect()
    }

    fn commit(offsets: &[(i32, i64)]) -> Action {
        Action::Commit {
            group: "g".to_owned(),
            offsets: positions(offsets),
        }
    }

    fn committed(offsets: &[(i32, i64)]) -> Action {
        Action::Committed {
            group: "g".to_owned(),
            offsets: positions(offsets),
        }
    }

    /// Asserts the report holds exactly one anomaly, of `kind`.
    fn assert_only(report: &Report, kind: Kind) {
        for k in Kind::ALL {
            let want = usize::from(k == kind);
            assert_eq!(report.count(k), want, "{}: {report:#?}", k.name());
        }
        assert_eq!(report.anomalies.len(), 1, "{report:#?}");
    }

    /// Sends and transactions (one committed, one aborted), consumers of
    /// both isolations stepping over aborted records and markers, a
    /// consumer reassigned and reading again, a group committing forwards
    /// and then (after a seek) backwards.
    fn clean_history() -> Vec<Op> {
        vec![
            op(0, 1, (0, 10), Ok, send(0, 1, 0)),
            // Committed: t/0 offset 1, t/1 offset 0; markers at t/0 2, t/1 1.
            op(
                1,
                2,
                (5, 20),
                Ok,
                txn(
                    vec![sent(Some(0), 2, Some(1)), sent(Some(1), 3, Some(0))],
                    Some(15),
                ),
            ),
            // Aborted: t/0 offset 3; marker at t/0 4.
            op(
                2,
                2,
                (21, 30),
                Failed,
                txn(vec![sent(Some(0), 4, None)], Some(25)),
            ),
            op(3, 1, (31, 40), Ok, send(0, 5, 5)),
            // Unsure, partition unknown; it landed at t/0 6.
            op(4, 1, (41, 50), Unknown, Action::Send(sent(None, 6, None))),
            // A retry answered as a duplicate: the offset is not known.
            op(5, 1, (51, 55), Ok, send(1, 7, -1)),
            op(
                6,
                3,
                (60, 70),
                Ok,
                poll(Rc, &[(0, 0, 1), (0, 1, 2), (0, 5, 5), (1, 0, 3), (1, 2, 7)]),
            ),
            op(
                7,
                4,
                (60, 70),
                Ok,
                poll(Ru, &[(0, 0, 1), (0, 1, 2), (0, 3, 4), (0, 5, 5), (0, 6, 6)]),
            ),
            op(8, 4, (60, 70), Ok, poll(Ru, &[(1, 0, 3), (1, 2, 7)])),
            op(9, 3, (71, 75), Ok, commit(&[(0, 6), (1, 3)])),
            op(10, 5, (80, 85), Ok, committed(&[(0, 6), (1, 3)])),
            op(
                11,
                3,
                (86, 87),
                Ok,
                Action::Assign {
                    partitions: vec![Partition {
                        topic: "t".to_owned(),
                        partition: 0,
                    }],
                },
            ),
            op(12, 3, (88, 90), Ok, poll(Rc, &[(0, 0, 1), (0, 1, 2)])),
            // A failed poll says nothing, whatever it lists.
            op(13, 3, (91, 92), Failed, poll(Rc, &[(0, 0, 99)])),
            op(14, 3, (91, 95), Ok, commit(&[(0, 2)])),
            op(15, 3, (96, 97), Failed, commit(&[(0, 9)])),
            op(16, 5, (96, 99), Ok, committed(&[(0, 2), (1, 3)])),
        ]
    }

    #[test]
    fn clean_history_reports_nothing() {
        let history = clean_history();
        let report = check(&history);
        assert!(report.is_clean(), "{report:#?}");
        assert_eq!(report.ops, history.len());
        assert_eq!(report.acknowledged, 5);
        assert_eq!(report.read, 7);
    }

    #[test]
    fn history_order_does_not_matter() {
        let mut history = clean_history();
        history.reverse();
        assert!(check(&history).is_clean());
    }

    #[test]
    fn empty_history_is_clean() {
        let report = check(&[]);
        assert!(report.is_clean());
        assert_eq!(report.ops, 0);
    }

    #[test]
    fn lost_write_below_a_read_offset() {
        let report = check(&[
            op(0, 1, (0, 10), Ok, send(0, 1, 0)),
            op(1, 1, (11, 20), Ok, send(0, 2, 1)),
            op(2, 2, (30, 40), Ok, poll(Rc, &[(0, 1, 2)])),
        ]);
        assert_only(&report, Kind::LostWrite);
        let anomaly = &report.anomalies[0];
        assert_eq!(anomaly.ops, vec![0, 2]);
        assert!(anomaly.message.contains("value 1"), "{}", anomaly.message);
    }

    #[test]
    fn lost_write_by_time_without_offsets() {
        let report = check(&[
            op(0, 1, (0, 10), Ok, Action::Send(sent(Some(0), 1, None))),
            // Concurrent with the read one: not known to be earlier.
            op(1, 1, (0, 25), Ok, Action::Send(sent(None, 3, Some(-1)))),
            op(2, 1, (20, 30), Ok, Action::Send(sent(None, 2, None))),
            op(3, 2, (40, 50), Ok, poll(Rc, &[(0, 1, 2)])),
        ]);
        assert_only(&report, Kind::LostWrite);
        assert_eq!(report.anomalies[0].ops, vec![0, 3]);
    }

    #[test]
    fn lost_write_past_the_end_of_the_log() {
        let history = vec![
            op(0, 1, (0, 10), Outcome::Ok, send(0, 100, 5)),
            op(
                1,
                2,
                (20, 30),
                Outcome::Ok,
                poll(Isolation::ReadUncommitted, &[(0, 4, 99)]),
            ),
            op(
                2,
                2,
                (30, 40),
                Outcome::Ok,
                Action::End {
                    topic: "t".to_owned(),
                    partition: 0,
                    offset: 5,
                },
            ),
        ];
        let report = check(&history);
        assert_only(&report, Kind::LostWrite);
        assert!(report.anomalies[0].message.contains("ending at offset 5"));
    }

    #[test]
    fn writes_past_the_last_read_are_not_lost() {
        let report = check(&[
            op(0, 1, (0, 10), Ok, send(0, 1, 0)),
            op(1, 1, (11, 20), Ok, send(0, 2, 1)),
            op(2, 1, (21, 30), Ok, Action::Send(sent(None, 3, None))),
            op(3, 2, (15, 18), Ok, poll(Rc, &[(0, 0, 1)])),
        ]);
        assert!(report.is_clean(), "{report:#?}");
    }

    #[test]
    fn duplicate() {
        let report = check(&[
            op(0, 1, (0, 10), Ok, send(0, 1, 0)),
            op(1, 2, (20, 30), Ok, poll(Rc, &[(0, 0, 1)])),
            op(2, 3, (20, 30), Ok, poll(Rc, &[(0, 1, 1)])),
        ]);
        assert_only(&report, Kind::Duplicate);
        assert_eq!(report.anomalies[0].ops, vec![1, 2]);
    }

    #[test]
    fn inconsistent_offsets() {
        let report = check(&[
            op(0, 1, (0, 10), Ok, send(0, 1, 0)),
            op(1, 1, (0, 10), Unknown, Action::Send(sent(Some(0), 2, None))),
            op(2, 2, (20, 30), Ok, poll(Rc, &[(0, 0, 2)])),
        ]);
        assert_only(&report, Kind::InconsistentOffsets);
        assert_eq!(report.anomalies[0].ops, vec![0, 2]);
    }

    #[test]
    fn nonmonotonic_poll() {
        let report = check(&[
            op(0, 1, (0, 10), Ok, send(0, 1, 0)),
            op(1, 1, (0, 10), Ok, send(0, 2, 1)),
            op(2, 2, (20, 30), Ok, poll(Rc, &[(0, 1, 2)])),
            op(3, 2, (31, 40), Ok, poll(Rc, &[(0, 0, 1)])),
        ]);
        assert_only(&report, Kind::NonmonotonicPoll);
        assert_eq!(report.anomalies[0].ops, vec![2, 3]);
    }

    #[test]
    fn assign_resets_the_order_of_reads() {
        let report = check(&[
            op(0, 1, (0, 10), Ok, send(0, 1, 0)),
            op(1, 1, (0, 10), Ok, send(0, 2, 1)),
            op(2, 2, (20, 30), Ok, poll(Rc, &[(0, 1, 2)])),
            op(3, 2, (31, 32), Ok, Action::Assign { partitions: vec![] }),
            op(4, 2, (33, 40), Ok, poll(Rc, &[(0, 0, 1), (0, 1, 2)])),
        ]);
        assert!(report.is_clean(), "{report:#?}");
    }

    #[test]
    fn poll_skip() {
        let report = check(&[
            op(0, 1, (0, 10), Ok, send(0, 1, 0)),
            op(1, 1, (0, 10), Ok, send(0, 2, 1)),
            op(2, 1, (0, 10), Ok, send(0, 3, 2)),
            op(
                3,
                2,
                (20, 30),
                Ok,
                poll(Rc, &[(0, 0, 1), (0, 1, 2), (0, 2, 3)]),
            ),
            op(4, 3, (20, 30), Ok, poll(Rc, &[(0, 0, 1), (0, 2, 3)])),
        ]);
        assert_only(&report, Kind::PollSkip);
        assert_eq!(report.anomalies[0].ops, vec![3, 4]);
    }

    #[test]
    fn aborted_read() {
        let report = check(&[
            op(
                0,
                1,
                (0, 10),
                Failed,
                txn(vec![sent(Some(0), 1, None)], Some(5)),
            ),
            op(1, 2, (20, 30), Ok, poll(Rc, &[(0, 0, 1)])),
            // Read-uncommitted consumers may read it.
            op(2, 3, (20, 30), Ok, poll(Ru, &[(0, 0, 1)])),
        ]);
        assert_only(&report, Kind::AbortedRead);
        assert_eq!(report.anomalies[0].ops, vec![0, 1]);
    }

    #[test]
    fn dirty_read_before_commit_was_asked() {
        let report = check(&[
            op(
                0,
                1,
                (0, 150),
                Ok,
                txn(vec![sent(Some(0), 1, Some(0))], Some(100)),
            ),
            op(1, 2, (20, 50), Ok, poll(Rc, &[(0, 0, 1)])),
            op(2, 3, (20, 120), Ok, poll(Rc, &[(0, 0, 1)])),
        ]);
        assert_only(&report, Kind::DirtyRead);
        assert_eq!(report.anomalies[0].ops, vec![0, 1]);
    }

    #[test]
    fn dirty_read_of_a_transaction_that_never_committed() {
        let report = check(&[
            op(
                0,
                1,
                (0, 150),
                Unknown,
                txn(vec![sent(Some(0), 1, None)], None),
            ),
            op(1, 2, (200, 250), Ok, poll(Rc, &[(0, 0, 1)])),
        ]);
        assert_only(&report, Kind::DirtyRead);
    }

    #[test]
    fn committed_offset_read_below_an_acknowledged_commit() {
        let report = check(&[
            op(0, 1, (0, 10), Ok, commit(&[(0, 10)])),
            op(1, 2, (20, 30), Ok, committed(&[(0, 5)])),
        ]);
        assert_only(&report, Kind::CommittedOffsetBackwards);
        assert_eq!(report.anomalies[0].ops, vec![0, 1]);
    }

    #[test]
    fn committed_offset_read_below_an_earlier_read() {
        let report = check(&[
            op(0, 1, (0, 10), Ok, commit(&[(0, 5)])),
            // Unsure: it may have landed, and only the read says it did.
            op(1, 1, (0, 10), Unknown, commit(&[(0, 10)])),
            op(2, 2, (20, 30), Ok, committed(&[(0, 10)])),
            op(3, 2, (40, 50), Ok, committed(&[(0, 5)])),
            // Concurrent with the read of 10: may come first.
            op(4, 3, (25, 35), Ok, committed(&[(0, 5)])),
        ]);
        assert_only(&report, Kind::CommittedOffsetBackwards);
        assert_eq!(report.anomalies[0].ops, vec![2, 3]);
    }

    #[test]
    fn committing_a_lower_offset_is_not_backwards() {
        let report = check(&[
            op(0, 1, (0, 10), Ok, commit(&[(0, 10)])),
            op(1, 1, (11, 20), Ok, commit(&[(0, 5)])),
            op(2, 2, (30, 40), Ok, committed(&[(0, 5)])),
            // A commit of 5 that ended before the commit of 10 began does
            // not explain a later read of 5.
            op(3, 3, (50, 60), Ok, commit(&[(1, 4)])),
            op(4, 3, (61, 70), Ok, commit(&[(1, 8)])),
            op(5, 2, (80, 90), Ok, committed(&[(0, 5), (1, 4)])),
        ]);
        assert_only(&report, Kind::CommittedOffsetBackwards);
        assert_eq!(report.anomalies[0].ops, vec![4, 5]);
    }

    #[test]
    fn anomalies_are_capped_per_kind_and_ordered() {
        // One poll reading 151 offsets downwards: 150 nonmonotonic steps.
        let records: Vec<(i32, i64, u64)> = (0..=150_i64)
            .rev()
            .map(|o| (0, o, 1000 + o.unsigned_abs()))
            .collect();
        let mut history = vec![op(0, 1, (0, 10), Ok, poll(Ru, &records))];
        history.push(op(1, 2, (0, 10), Ok, commit(&[(0, 10)])));
        history.push(op(2, 3, (20, 30), Ok, committed(&[(0, 5)])));
        let report = check(&history);
        assert_eq!(report.count(Kind::NonmonotonicPoll), 150);
        assert_eq!(report.count(Kind::CommittedOffsetBackwards), 1);
        assert_eq!(report.truncated.get(&Kind::NonmonotonicPoll), Some(&50));
        assert_eq!(report.anomalies.len(), MAX_PER_KIND + 1);
        let kinds: Vec<Kind> = report.anomalies.iter().map(|a| a.kind).collect();
        assert!(kinds.is_sorted());
        // The first ones found are the ones kept.
        assert!(report.anomalies[0].message.contains("offset 149"));
        let json = serde_json::to_string(&report).unwrap();
        assert!(
            json.contains(r#""truncated":{"nonmonotonic-poll":50}"#),
            "{json}"
        );
    }

    #[test]
    fn kind_names_match_serde() {
        for kind in Kind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.name()));
        }
    }

    #[test]
    fn parse_round_trips_every_action() {
        let mut failed = op(
            4,
            3,
            (7, 9),
            Unknown,
            Action::Send(sent(None, u64::MAX, None)),
        );
        failed.error = Some("request timed out".to_owned());
        let ops = vec![
            op(0, 1, (0, 10), Ok, send(2, 1_000_007, 41)),
            failed,
            op(
                1,
                2,
                (0, 10),
                Failed,
                txn(
                    vec![sent(Some(0), 5, Some(-1)), sent(None, 6, None)],
                    Some(8),
                ),
            ),
            op(2, 2, (11, 12), Unknown, txn(vec![], None)),
            op(
                3,
                4,
                (0, 10),
                Ok,
                Action::Assign {
                    partitions: vec![Partition {
                        topic: "t".to_owned(),
                        partition: 3,
                    }],
                },
            ),
            op(5, 4, (0, 10), Ok, poll(Rc, &[(0, 41, 1_000_007)])),
            op(6, 4, (0, 10), Ok, poll(Ru, &[])),
            op(7, 4, (0, 10), Ok, commit(&[(0, 42)])),
            op(8, 4, (0, 10), Ok, committed(&[(0, 42), (1, -1)])),
        ];
        let text: String = ops
            .iter()
            .map(|op| serde_json::to_string(op).unwrap() + "\n\n")
            .collect();
        assert_eq!(parse(&text).unwrap(), ops);
        let err = parse("\n{\"index\":1}\n").unwrap_err();
        assert!(err.starts_with("history line 2:"), "{err}");
    }

    /// A small deterministic random number generator (xorshift64*).
    #[derive(Debug)]
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn offset(&mut self, n: u64) -> i64 {
            i64::try_from(self.below(n)).unwrap()
        }
    }

    #[test]
    fn committed_offsets_match_brute_force() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..3000 {
            let mut register = Register::default();
            let n = rng.below(14);
            for op in 0..n {
                let start_us = rng.below(60);
                let held = Held {
                    start_us,
                    end_us: start_us + rng.below(25),
                    offset: rng.offset(5),
                    op,
                    is_read: rng.below(2) == 0,
                };
                match (held.is_read, rng.below(3)) {
                    (true, 0) => {
                        register.held.push(held);
                        register.reads.push(held);
                    }
                    (false, 0) => {
                        register.held.push(held);
                        let spans = register.writes.entry(held.offset).or_default();
                        spans.push((held.start_us, held.end_us));
                    }
                    (false, 1) => {
                        let spans = register.writes.entry(held.offset).or_default();
                        spans.push((held.start_us, held.end_us));
                    }
                    _ => {}
                }
            }
            let mut want: Vec<u64> = register
                .reads
                .iter()
                .filter(|r| {
                    register.held.iter().any(|h| {
                        h.end_us < r.start_us
                            && h.offset > r.offset
                            && !register.writes.get(&r.offset).is_some_and(|spans| {
                                spans.iter().any(|&(s, e)| s < r.end_us && e > h.start_us)
                            })
                    })
                })
                .map(|r| r.op)
                .collect();
            let mut got = Vec::new();
            check_register(register, |higher, read| {
                assert!(higher.offset > read.offset && higher.end_us < read.start_us);
                got.push(read.op);
            });
            want.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn random_histories_do_not_panic() {
        let mut rng = Rng(42);
        let extremes = [i64::MIN, -1, 0, 1, i64::MAX - 1, i64::MAX];
        for round in 0..300 {
            let mut history = Vec::new();
            for i in 0..rng.below(80) {
                let pick_offset = |rng: &mut Rng| {
                    if rng.below(10) == 0 {
                        extremes[usize::try_from(rng.below(6)).unwrap()]
                    } else {
                        rng.offset(8)
                    }
                };
                let partition = i32::try_from(rng.below(3)).unwrap();
                let value = rng.below(12);
                let action = match rng.below(6) {
                    0 => Action::Send(sent(
                        (rng.below(3) > 0).then_some(partition),
                        value,
                        (rng.below(3) > 0).then(|| pick_offset(&mut rng)),
                    )),
                    1 => txn(
                        (0..rng.below(3))
                            .map(|k| sent(Some(partition), value + k, Some(pick_offset(&mut rng))))
                            .collect(),
                        (rng.below(2) == 0).then(|| rng.below(100)),
                    ),
                    2 => Action::Assign { partitions: vec![] },
                    3 => {
                        let records: Vec<(i32, i64, u64)> = (0..rng.below(5))
                            .map(|_| (partition, pick_offset(&mut rng), rng.below(12)))
                            .collect();
                        poll(if rng.below(2) == 0 { Rc } else { Ru }, &records)
                    }
                    4 => commit(&[(partition, pick_offset(&mut rng))]),
                    _ => committed(&[(partition, pick_offset(&mut rng))]),
                };
                let outcome = [Ok, Failed, Unknown][usize::try_from(rng.below(3)).unwrap()];
                let start_us = if round % 7 == 0 {
                    u64::MAX - rng.below(3)
                } else {
                    rng.below(100)
                };
                let end_us = start_us.saturating_add(rng.below(30));
                let index = if round % 5 == 0 { rng.below(10) } else { i };
                let process = u32::try_from(rng.below(4)).unwrap();
                history.push(op(index, process, (start_us, end_us), outcome, action));
            }
            let report = check(&history);
            let keys: Vec<(Kind, u64)> = report
                .anomalies
                .iter()
                .map(|a| (a.kind, a.ops.first().copied().unwrap_or(u64::MAX)))
                .collect();
            assert!(keys.is_sorted());
            for kind in Kind::ALL {
                let listed = report.anomalies.iter().filter(|a| a.kind == kind).count();
                assert!(listed <= MAX_PER_KIND);
                assert!(report.count(kind) >= listed);
            }
            assert_eq!(report.is_clean(), report.anomalies.is_empty());
        }
    }
}
