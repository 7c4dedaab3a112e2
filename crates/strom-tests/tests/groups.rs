//! Consumer groups against the real broker binary with librdkafka (the
//! `rdkafka` crate's bundled build): partitions split across members and
//! taken over when one leaves, committed offsets surviving kill -9, static
//! membership without rebalance, cooperative-sticky, and KIP-848 (with
//! regex subscriptions, and commits of consumers that assign partitions
//! themselves).
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{BrokerProcess, Poller, flush, wait_until};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::producer::BaseRecord;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

/// Deadline for a group to settle (joins, syncs, heartbeats in debug builds).
const SETTLE: Duration = Duration::from_secs(60);
/// How long to watch for a rebalance that must not happen: several
/// heartbeat intervals of the members (500 ms here).
const QUIET_WINDOW: Duration = Duration::from_secs(3);

/// What a member saw: its current assignment, its rebalance events and
/// the records it read.
#[derive(Debug, Default)]
struct Seen {
    assignment: Mutex<BTreeSet<i32>>,
    revoked: Mutex<Vec<BTreeSet<i32>>>,
    rebalances: AtomicUsize,
    records: Mutex<Vec<(i32, i64)>>,
}

struct Tracking(Arc<Seen>);

impl ClientContext for Tracking {}

fn partitions(list: &TopicPartitionList) -> BTreeSet<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

impl ConsumerContext for Tracking {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                self.0.assignment.lock().unwrap().extend(partitions(list));
            }
            Rebalance::Revoke(list) => {
                let revoked = partitions(list);
                self.0
                    .assignment
                    .lock()
                    .unwrap()
                    .retain(|p| !revoked.contains(p));
                self.0.revoked.lock().unwrap().push(revoked);
            }
            Rebalance::Error(_) => {}
        }
        self.0.rebalances.fetch_add(1, Ordering::SeqCst);
    }
}

/// A group member polling on its own thread; it commits every record it
/// reads (synchronously).
struct Member {
    seen: Arc<Seen>,
    poller: Poller,
}

impl Member {
    fn start(broker: &BrokerProcess, group: &str, topic: &str, settings: &[(&str, &str)]) -> Self {
        let mut config = broker.group_config(group);
        for (k, v) in settings {
            config.set(*k, *v);
        }
        let seen = Arc::new(Seen::default());
        let consumer: BaseConsumer<Tracking> = config
            .create_with_context(Tracking(Arc::clone(&seen)))
            .expect("consumer");
        consumer.subscribe(&[topic]).unwrap();
        let records = Arc::clone(&seen);
        let poller = Poller::spawn(consumer, move |consumer, m| {
            records
                .records
                .lock()
                .unwrap()
                .push((m.partition(), m.offset()));
            // A commit refused mid-rebalance is retried by the next owner
            // reading the record again: the tests below produce only while
            // the group is stable.
            let _ = consumer.commit_message(m, CommitMode::Sync);
        });
        Self { seen, poller }
    }

    fn assignment(&self) -> BTreeSet<i32> {
        self.seen.assignment.lock().unwrap().clone()
    }

    fn records(&self) -> Vec<(i32, i64)> {
        self.seen.records.lock().unwrap().clone()
    }

    /// Stops polling and closes the consumer (a dynamic member leaves the
    /// group; a static one does not).
    fn close(self) {
        self.poller.close();
    }
}

/// Produces `n` records spread evenly over `partitions`, numbered from `start`.
fn produce(broker: &BrokerProcess, topic: &str, partitions: i32, start: usize, n: usize) {
    let producer = broker.producer(&[]);
    for i in start..start + n {
        let value = format!("record-{i}");
        producer
            .send(
                BaseRecord::<(), _>::to(topic)
                    .partition(i as i32 % partitions)
                    .payload(&value),
            )
            .unwrap();
    }
    flush(&producer);
}

/// Every record read by `members` after index `from` of each member's list,
/// by (partition, offset), with how often it was read.
fn reads(members: &[&Member]) -> BTreeMap<(i32, i64), usize> {
    let mut all = BTreeMap::new();
    for m in members {
        for r in m.records() {
            *all.entry(r).or_default() += 1;
        }
    }
    all
}

fn wait_for_assignments(members: &[&Member], sizes: &[usize], total: i32) {
    let settled = wait_until(SETTLE, || {
        let assignments: Vec<BTreeSet<i32>> = members.iter().map(|m| m.assignment()).collect();
        let union: BTreeSet<i32> = assignments.iter().flatten().copied().collect();
        assignments.iter().map(BTreeSet::len).collect::<Vec<_>>() == sizes
            && union == (0..total).collect::<BTreeSet<i32>>()
    });
    assert!(
        settled,
        "assignments {:?}, expected sizes {sizes:?} covering {total} partitions",
        members.iter().map(|m| m.assignment()).collect::<Vec<_>>()
    );
}

fn broker(dir: &tempfile::TempDir, extra: &[&str]) -> BrokerProcess {
    let mut props = vec!["group.initial.rebalance.delay.ms=0"];
    props.extend_from_slice(extra);
    BrokerProcess::start(&dir.path().join("data"), &props)
}

const FAST: &[(&str, &str)] = &[
    ("heartbeat.interval.ms", "500"),
    ("session.timeout.ms", "10000"),
];

#[test]
fn three_members_split_six_partitions_and_take_over_when_one_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(&dir, &[]);
    broker.create_topic("split", 6);
    let members: Vec<Member> = (0..3)
        .map(|_| Member::start(&broker, "splitters", "split", FAST))
        .collect();
    let refs: Vec<&Member> = members.iter().collect();
    wait_for_assignments(&refs, &[2, 2, 2], 6);

    produce(&broker, "split", 6, 0, 600);
    assert!(
        wait_until(SETTLE, || reads(&refs).len() == 600),
        "read {} of 600",
        reads(&refs).len()
    );
    let first = reads(&refs);
    assert!(first.values().all(|n| *n == 1), "every record read once");
    for m in &members {
        let assigned = m.assignment();
        assert!(
            m.records().iter().all(|(p, _)| assigned.contains(p)),
            "a member reads only its partitions"
        );
    }

    // The third member leaves; the other two take its partitions over.
    let mut members = members;
    let leaver = members.pop().unwrap();
    let left_partitions = leaver.assignment();
    leaver.close();
    let refs: Vec<&Member> = members.iter().collect();
    wait_for_assignments(&refs, &[3, 3], 6);
    let before: usize = refs.iter().map(|m| m.records().len()).sum();
    produce(&broker, "split", 6, 600, 600);
    assert!(
        wait_until(SETTLE, || refs
            .iter()
            .map(|m| m.records().len())
            .sum::<usize>()
            >= before + 600),
        "the remaining members read the second batch: {:?}; broker log:\n{}",
        reads(&refs)
            .keys()
            .fold(BTreeMap::<i32, (usize, i64)>::new(), |mut m, (p, o)| {
                let e = m.entry(*p).or_insert((0, -1));
                e.0 += 1;
                e.1 = e.1.max(*o);
                m
            }),
        broker.stderr()
    );
    let all = reads(&refs);
    // Offsets 100..200 of each partition are the second batch.
    for p in 0..6 {
        for offset in 100..200 {
            assert_eq!(
                all.get(&(p, offset)),
                Some(&1),
                "partition {p} offset {offset} read exactly once"
            );
        }
    }
    let takers: BTreeSet<i32> = left_partitions
        .iter()
        .filter(|p| {
            refs.iter()
                .any(|m| m.records().iter().any(|(q, o)| q == *p && *o >= 100))
        })
        .copied()
        .collect();
    assert_eq!(
        takers, left_partitions,
        "the leaver's partitions were taken over"
    );
    drop(members);
    broker.stop();
}

/// The next record (polls also return early on group events).
fn next_record<'a>(
    consumer: &'a BaseConsumer,
    broker: &BrokerProcess,
) -> rdkafka::message::BorrowedMessage<'a> {
    let deadline = std::time::Instant::now() + SETTLE;
    while std::time::Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            return m.unwrap();
        }
    }
    panic!(
        "no record within {SETTLE:?}; broker log:\n{}",
        broker.stderr()
    );
}

#[test]
fn committed_offsets_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(&dir, &[]);
    broker.create_topic("resume", 1);
    produce(&broker, "resume", 1, 0, 200);
    let consumer: BaseConsumer = broker.group_config("resumers").create().unwrap();
    consumer.subscribe(&["resume"]).unwrap();
    let mut read = 0;
    while read < 120 {
        let m = next_record(&consumer, &broker);
        assert_eq!(m.offset(), read);
        read += 1;
    }
    let mut commit = TopicPartitionList::new();
    commit
        .add_partition_offset("resume", 0, Offset::Offset(120))
        .unwrap();
    consumer.commit(&commit, CommitMode::Sync).unwrap();
    drop(consumer);

    broker.kill9();
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &["group.initial.rebalance.delay.ms=0"],
    );
    let consumer: BaseConsumer = broker.group_config("resumers").create().unwrap();
    let mut query = TopicPartitionList::new();
    query.add_partition("resume", 0);
    let committed = consumer.committed_offsets(query, SETTLE).unwrap();
    assert_eq!(committed.elements()[0].offset(), Offset::Offset(120));
    consumer.subscribe(&["resume"]).unwrap();
    for expected in 120..200 {
        let m = next_record(&consumer, &broker);
        assert_eq!(m.offset(), expected, "resumed from the committed offset");
    }
    drop(consumer);
    broker.stop();
}

#[test]
fn a_static_member_restarting_within_its_session_gets_its_partitions_back_without_rebalance() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(&dir, &[]);
    broker.create_topic("static", 4);
    let static_settings = |instance: &'static str| {
        vec![
            ("group.instance.id", instance),
            ("heartbeat.interval.ms", "500"),
            ("session.timeout.ms", "30000"),
        ]
    };
    let a = Member::start(&broker, "statics", "static", &static_settings("instance-a"));
    let b = Member::start(&broker, "statics", "static", &static_settings("instance-b"));
    wait_for_assignments(&[&a, &b], &[2, 2], 4);
    let a_partitions = a.assignment();
    let b_partitions = b.assignment();
    let b_rebalances = b.seen.rebalances.load(Ordering::SeqCst);

    // A static member does not leave on close (KIP-345); it comes back
    // under the same instance id well within its session timeout.
    a.close();
    let a2 = Member::start(&broker, "statics", "static", &static_settings("instance-a"));
    assert!(
        wait_until(SETTLE, || a2.assignment() == a_partitions),
        "the restarted member gets {a_partitions:?} back, has {:?}",
        a2.assignment()
    );
    produce(&broker, "static", 4, 0, 40);
    assert!(wait_until(SETTLE, || reads(&[&a2, &b]).len() == 40));
    // No rebalance reached the other member while all of this happened.
    let quiet = !wait_until(QUIET_WINDOW, || {
        b.seen.rebalances.load(Ordering::SeqCst) != b_rebalances
    });
    assert!(quiet, "the other member saw a rebalance");
    assert_eq!(b.assignment(), b_partitions);
    drop((a2, b));
    broker.stop();
}

#[test]
fn cooperative_sticky_moves_only_the_partitions_that_change_owner() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(&dir, &[]);
    broker.create_topic("sticky", 6);
    let mut settings = FAST.to_vec();
    settings.push(("partition.assignment.strategy", "cooperative-sticky"));
    let first = Member::start(&broker, "stickies", "sticky", &settings);
    wait_for_assignments(&[&first], &[6], 6);
    assert!(first.seen.revoked.lock().unwrap().is_empty());
    produce(&broker, "sticky", 6, 0, 60);
    assert!(wait_until(SETTLE, || first.records().len() == 60));

    let second = Member::start(&broker, "stickies", "sticky", &settings);
    wait_for_assignments(&[&first, &second], &[3, 3], 6);
    let moved = second.assignment();
    let revoked: BTreeSet<i32> = first
        .seen
        .revoked
        .lock()
        .unwrap()
        .iter()
        .flatten()
        .copied()
        .collect();
    assert_eq!(
        revoked, moved,
        "only the partitions that moved were revoked from the first member"
    );

    produce(&broker, "sticky", 6, 60, 60);
    assert!(wait_until(SETTLE, || reads(&[&first, &second]).len() == 120));
    assert!(
        reads(&[&first, &second]).values().all(|n| *n == 1),
        "every record read once"
    );
    drop((first, second));
    broker.stop();
}

#[test]
fn kip_848_group_consumes_everything_and_rebalances_when_a_member_joins() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(&dir, &["group.consumer.heartbeat.interval.ms=500"]);
    broker.create_topic("next-gen", 4);
    let settings = [("group.protocol", "consumer")];
    let first = Member::start(&broker, "kip848", "next-gen", &settings);
    wait_for_assignments(&[&first], &[4], 4);
    produce(&broker, "next-gen", 4, 0, 200);
    assert!(wait_until(SETTLE, || first.records().len() == 200));

    let second = Member::start(&broker, "kip848", "next-gen", &settings);
    wait_for_assignments(&[&first, &second], &[2, 2], 4);
    produce(&broker, "next-gen", 4, 200, 200);
    assert!(
        wait_until(SETTLE, || reads(&[&first, &second]).len() == 400),
        "read {} of 400",
        reads(&[&first, &second]).len()
    );
    assert!(
        reads(&[&first, &second]).values().all(|n| *n == 1),
        "every record read once"
    );
    let second_partitions = second.assignment();
    assert!(
        second
            .records()
            .iter()
            .all(|(p, o)| second_partitions.contains(p) && *o >= 50),
        "the new member read only new records of its partitions"
    );
    drop((first, second));
    broker.stop();
}

#[test]
fn kip_848_consumer_that_assigns_commits_to_a_new_group_and_the_next_one_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(&dir, &[]);
    broker.create_topic("manual", 1);
    produce(&broker, "manual", 1, 0, 10);
    let consumer = |group: &str| -> BaseConsumer {
        let mut config = broker.group_config(group);
        config.set("group.protocol", "consumer");
        config.create().expect("consumer")
    };
    let assign = |c: &BaseConsumer, offset: Offset| {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset("manual", 0, offset).unwrap();
        c.assign(&list).unwrap();
    };

    // No group membership (assign, not subscribe) and a group that does not
    // exist yet: Kafka creates a simple group and keeps the commit.
    let first = consumer("assigning");
    assign(&first, Offset::Beginning);
    let mut read = Vec::new();
    assert!(wait_until(SETTLE, || {
        if let Some(Ok(m)) = first.poll(Duration::from_millis(50)) {
            read.push(m.offset());
        }
        read.len() == 6
    }));
    let mut commit = TopicPartitionList::new();
    commit
        .add_partition_offset("manual", 0, Offset::Offset(6))
        .unwrap();
    first
        .commit(&commit, CommitMode::Sync)
        .expect("the commit to a new group is accepted");
    drop(first);

    // The next consumer of the group starts where the first one committed.
    let second = consumer("assigning");
    assign(&second, Offset::Stored);
    let mut next = None;
    assert!(wait_until(SETTLE, || {
        if let Some(Ok(m)) = second.poll(Duration::from_millis(50)) {
            next = Some(m.offset());
        }
        next.is_some()
    }));
    assert_eq!(next, Some(6), "the second consumer resumes from the commit");
    drop(second);
    broker.stop();
}

#[test]
fn kip_848_regex_subscription_reads_matching_topics_including_ones_created_later() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(&dir, &["group.consumer.heartbeat.interval.ms=500"]);
    broker.create_topic("orders-eu", 2);
    broker.create_topic("orders-us", 1);
    broker.create_topic("other", 1);
    // Matching is on the whole name: these do not match `^orders-.*`.
    broker.create_topic("my-orders-x", 1);
    produce(&broker, "orders-eu", 2, 0, 20);
    produce(&broker, "orders-us", 1, 0, 10);
    produce(&broker, "other", 1, 0, 10);
    produce(&broker, "my-orders-x", 1, 0, 10);

    let mut config = broker.group_config("regex");
    config.set("group.protocol", "consumer");
    let consumer: BaseConsumer = config.create().expect("consumer");
    consumer.subscribe(&["^orders-.*"]).unwrap();
    let topics: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let poller = {
        let topics = Arc::clone(&topics);
        Poller::spawn(consumer, move |_, m| {
            *topics
                .lock()
                .unwrap()
                .entry(m.topic().to_owned())
                .or_default() += 1;
        })
    };
    let count = |topic: &str| topics.lock().unwrap().get(topic).copied().unwrap_or(0);
    assert!(
        wait_until(SETTLE, || count("orders-eu") == 20
            && count("orders-us") == 10),
        "read {:?}",
        topics.lock().unwrap()
    );

    // A matching topic created while the consumer runs joins its subscription.
    broker.create_topic("orders-new", 1);
    produce(&broker, "orders-new", 1, 0, 5);
    assert!(
        wait_until(SETTLE, || count("orders-new") == 5),
        "read {:?}",
        topics.lock().unwrap()
    );
    poller.close();
    let read = topics.lock().unwrap().clone();
    assert_eq!(
        read,
        BTreeMap::from([
            ("orders-eu".to_owned(), 20),
            ("orders-new".to_owned(), 5),
            ("orders-us".to_owned(), 10),
        ])
    );
    broker.stop();
}
