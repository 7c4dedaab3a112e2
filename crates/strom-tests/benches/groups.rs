//! Consumer group rebalance benchmark with librdkafka members: the time from
//! a member joining a group that is consuming to every member consuming
//! again, for groups of 10 and 100 members, with the classic protocol
//! (librdkafka's default eager `range,roundrobin`) and with KIP-848
//! (`group.protocol=consumer`, server-side uniform assignor).
//!
//! A producer keeps writing a record to every partition every
//! [`PRODUCE_EVERY`], so a member is "consuming" once it has received a
//! record after its last assignment change. The clock starts when the new
//! member is created and stops when the assignment is balanced over all
//! partitions and every member whose assignment changed has consumed again.
//! Heartbeat intervals are 500 ms on both sides (Kafka's defaults are 3 s
//! for classic clients and 5 s for KIP-848 groups; both protocols need
//! heartbeats to learn of a rebalance, so the figures scale with them).
//!
//! `cargo bench -p strom-tests --bench groups`. `STROM_BENCH_RUNS` (default
//! 3) joins per scenario; `STROM_BENCH_MEMBERS` (e.g. `10`) and
//! `STROM_BENCH_PROTOCOLS` (`classic`, `consumer`) restrict the scenarios.
#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BrokerProcess, Poller, wait_until};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{ClientContext, TopicPartitionList};

/// Each partition gets a record this often while the benchmark runs.
const PRODUCE_EVERY: Duration = Duration::from_millis(10);
/// How long a group may take to settle before the benchmark gives up.
const SETTLE: Duration = Duration::from_secs(180);

#[derive(Debug, Default)]
struct Seen {
    assignment: BTreeSet<i32>,
    /// The last assignment change.
    changed_at: Option<Instant>,
    /// The first record after it.
    consumed_at: Option<Instant>,
}

struct Tracking(Arc<Mutex<Seen>>);

impl ClientContext for Tracking {}

impl ConsumerContext for Tracking {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let partitions = |l: &TopicPartitionList| -> BTreeSet<i32> {
            l.elements().iter().map(|e| e.partition()).collect()
        };
        let mut seen = self.0.lock().unwrap();
        match rebalance {
            Rebalance::Assign(l) => seen.assignment.extend(partitions(l)),
            Rebalance::Revoke(l) => {
                let gone = partitions(l);
                seen.assignment.retain(|p| !gone.contains(p));
            }
            Rebalance::Error(_) => return,
        }
        seen.changed_at = Some(Instant::now());
        seen.consumed_at = None;
    }
}

struct Member {
    seen: Arc<Mutex<Seen>>,
    poller: Poller,
}

impl Member {
    fn start(broker: &BrokerProcess, group: &str, topic: &str, protocol: &str) -> Self {
        let mut config = broker.group_config(group);
        config
            .set("auto.offset.reset", "latest")
            .set("fetch.wait.max.ms", "50");
        if protocol == "consumer" {
            config.set("group.protocol", "consumer");
        } else {
            config
                .set("heartbeat.interval.ms", "500")
                .set("session.timeout.ms", "10000");
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        let consumer: BaseConsumer<Tracking> = config
            .create_with_context(Tracking(Arc::clone(&seen)))
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let consumed = Arc::clone(&seen);
        let poller = Poller::spawn(consumer, move |_, _| {
            let mut s = consumed.lock().unwrap();
            if s.consumed_at.is_none() {
                s.consumed_at = Some(Instant::now());
            }
        });
        Self { seen, poller }
    }

    fn close(self) {
        self.poller.close();
    }
}

/// When the group is settled: all partitions assigned and balanced, and
/// every member whose assignment changed since `since` consuming again;
/// then the time the last of them started consuming.
fn settled(members: &[Member], partitions: i32, since: Instant) -> Option<Instant> {
    let seen: Vec<std::sync::MutexGuard<'_, Seen>> =
        members.iter().map(|m| m.seen.lock().unwrap()).collect();
    let union: BTreeSet<i32> = seen
        .iter()
        .flat_map(|s| s.assignment.iter().copied())
        .collect();
    let sizes: Vec<usize> = seen.iter().map(|s| s.assignment.len()).collect();
    let (min, max) = (sizes.iter().min()?, sizes.iter().max()?);
    if union.len() != partitions as usize || max - min > 1 {
        return None;
    }
    let mut last = since;
    for s in &seen {
        if s.changed_at.is_some_and(|t| t >= since) || s.changed_at.is_none() {
            last = last.max(s.consumed_at?);
        }
    }
    Some(last)
}

fn measure(broker: &BrokerProcess, members: usize, protocol: &str, runs: usize) -> Vec<Duration> {
    let group = format!("bench-{protocol}-{members}");
    let topic = topic_for(members);
    let partitions = (members * 2) as i32;
    let mut group_members: Vec<Member> = (0..members - 1)
        .map(|_| Member::start(broker, &group, &topic, protocol))
        .collect();
    let start = Instant::now();
    assert!(
        wait_until(SETTLE, || settled(&group_members, partitions, start)
            .is_some()),
        "{group}: the first {} members did not settle",
        members - 1
    );
    let mut times = Vec::new();
    for _ in 0..runs {
        let joined_at = Instant::now();
        group_members.push(Member::start(broker, &group, &topic, protocol));
        let mut done = None;
        assert!(
            wait_until(SETTLE, || {
                done = settled(&group_members, partitions, joined_at);
                done.is_some()
            }),
            "{group}: the group did not settle after a join"
        );
        times.push(done.unwrap().duration_since(joined_at));
        // The newcomer leaves again; wait for the group to settle.
        let left_at = Instant::now();
        group_members.pop().unwrap().close();
        assert!(wait_until(SETTLE, || settled(
            &group_members,
            partitions,
            left_at
        )
        .is_some()));
    }
    drop(group_members);
    times
}

/// Each group size has its topic, with two partitions per member.
fn topic_for(members: usize) -> String {
    format!("rebalance-{members}")
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let runs = std::env::var("STROM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &[
            "group.initial.rebalance.delay.ms=0",
            "group.consumer.heartbeat.interval.ms=500",
        ],
    );
    let sizes: Vec<usize> = [10, 100]
        .into_iter()
        .filter(|n| {
            std::env::var("STROM_BENCH_MEMBERS")
                .map_or(true, |l| l.split(',').any(|v| v.trim() == n.to_string()))
        })
        .collect();
    let topics: Vec<(String, i32)> = sizes
        .iter()
        .map(|n| (topic_for(*n), *n as i32 * 2))
        .collect();
    for (name, partitions) in &topics {
        broker.create_topic(name, *partitions);
    }

    // A record to every partition every PRODUCE_EVERY, until the end.
    let producing = Arc::new(AtomicBool::new(true));
    let producer_thread = {
        let producing = Arc::clone(&producing);
        let topics = topics.clone();
        let producer = broker.producer(&[("linger.ms", "1")]);
        std::thread::spawn(move || {
            while producing.load(Ordering::SeqCst) {
                for (topic, partitions) in &topics {
                    for p in 0..*partitions {
                        let _ = producer
                            .send(BaseRecord::<(), _>::to(topic).partition(p).payload("tick"));
                    }
                }
                producer.poll(PRODUCE_EVERY);
            }
            let _ = producer.flush(Duration::from_secs(10));
        })
    };

    println!("join -> every member consuming again ({runs} joins each; median, min-max)");
    for &members in &sizes {
        for protocol in ["classic", "consumer"] {
            if std::env::var("STROM_BENCH_PROTOCOLS")
                .is_ok_and(|l| !l.split(',').any(|v| v.trim() == protocol))
            {
                continue;
            }
            let mut times = measure(&broker, members, protocol, runs);
            times.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!(
                "{members:>4} members {protocol:<8} {:>8.0} ms  ({:.0}-{:.0})",
                ms(times[times.len() / 2]),
                ms(times[0]),
                ms(times[times.len() - 1])
            );
        }
    }
    producing.store(false, Ordering::SeqCst);
    producer_thread.join().unwrap();
    broker.stop();
}
