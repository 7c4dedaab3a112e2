//! strom-client's group membership for other protocols than the consumer's,
//! and its assignor interface, against the real broker: members of a
//! `connect` group agree on what their leader assigned (librdkafka's group
//! listing says the same), again after one leaves; a consumer group using
//! its own assignor gets the partitions it decided, and members of other
//! clients offering only `range` are refused with
//! INCONSISTENT_GROUP_PROTOCOL (librdkafka, and kafka-python when the
//! test venv is there).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{BrokerProcess, flush};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::BaseRecord;
use rdkafka::types::RDKafkaErrorCode;
use strom_client::consumer::{Assignment, PartitionAssignor, Subscription};
use strom_client::group::{Generation, GroupMember, JoinedMember, Protocol};
use strom_client::{ClientConfig, Consumer, Result, TopicPartition};
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(60);

fn config(broker: &BrokerProcess, settings: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &broker.bootstrap);
    for (k, v) in settings {
        config.set(*k, *v);
    }
    config
}

/// The connectors a `connect` leader deals out.
const CONNECTORS: [&str; 6] = ["c0", "c1", "c2", "c3", "c4", "c5"];

/// A Connect-like leader: deals the connectors round robin to the members
/// in the order of their metadata (the worker names), and gives every
/// member the whole plan and its own share: `PLAN|MINE`.
fn deal(_protocol: &str, members: &[JoinedMember]) -> Result<BTreeMap<String, Bytes>> {
    let mut workers: Vec<(&str, &str)> = members
        .iter()
        .map(|m| {
            (
                std::str::from_utf8(&m.metadata).unwrap(),
                m.member_id.as_str(),
            )
        })
        .collect();
    workers.sort();
    let mut shares: Vec<Vec<&str>> = vec![Vec::new(); workers.len()];
    for (i, connector) in CONNECTORS.iter().enumerate() {
        shares[i % workers.len()].push(connector);
    }
    let plan: Vec<String> = workers
        .iter()
        .zip(&shares)
        .map(|((worker, _), share)| format!("{worker}:{}", share.join(",")))
        .collect();
    let plan = plan.join(";");
    Ok(workers
        .iter()
        .zip(&shares)
        .map(|((_, member), share)| {
            (
                (*member).to_owned(),
                Bytes::from(format!("{plan}|{}", share.join(","))),
            )
        })
        .collect())
}

/// Joins and rejoins (at each rebalance) until aborted, reporting every
/// generation it gets.
async fn run_worker(
    index: usize,
    member: Arc<GroupMember>,
    reports: mpsc::UnboundedSender<(usize, Generation)>,
) {
    // Offered in order of preference; the group takes the first all offer.
    let protocols = [
        Protocol::new("sessioned", Bytes::from(format!("worker-{index}"))),
        Protocol::new("default", Bytes::from(format!("worker-{index}"))),
    ];
    loop {
        let generation = member.join(&protocols, &deal).await.expect("joined");
        if reports.send((index, generation)).is_err() {
            return;
        }
        member.rebalance().await;
    }
}

/// Waits for a generation in which exactly `workers` reported, with one
/// plan, and returns it (generation id, leader, plan, each worker's share).
async fn settled(
    reports: &mut mpsc::UnboundedReceiver<(usize, Generation)>,
    latest: &mut BTreeMap<usize, Generation>,
    workers: &BTreeSet<usize>,
    after: i32,
) -> (i32, String, String, BTreeMap<usize, String>) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (index, generation) = tokio::time::timeout_at(deadline, reports.recv())
            .await
            .unwrap_or_else(|_| panic!("no generation with workers {workers:?}: {latest:#?}"))
            .expect("workers running");
        latest.insert(index, generation);
        let Some(top) = latest.values().map(|g| g.generation_id).max() else {
            continue;
        };
        let current: BTreeMap<usize, &Generation> = latest
            .iter()
            .filter(|(_, g)| g.generation_id == top)
            .map(|(i, g)| (*i, g))
            .collect();
        if top <= after || current.keys().copied().collect::<BTreeSet<_>>() != *workers {
            continue;
        }
        let mut plans = BTreeSet::new();
        let mut leaders = BTreeSet::new();
        let mut shares = BTreeMap::new();
        for (i, g) in &current {
            assert_eq!(g.protocol, "sessioned", "the first protocol all offer");
            let text = std::str::from_utf8(&g.assignment).unwrap();
            let (plan, mine) = text.split_once('|').expect("PLAN|MINE");
            plans.insert(plan.to_owned());
            leaders.insert(g.leader_id.clone());
            shares.insert(*i, mine.to_owned());
        }
        assert_eq!(plans.len(), 1, "one plan for the generation: {plans:?}");
        assert_eq!(leaders.len(), 1, "one leader: {leaders:?}");
        let plan = plans.pop_first().unwrap();
        return (top, leaders.pop_first().unwrap(), plan, shares);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_members_agree_on_the_leaders_assignment_and_again_after_one_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &["group.initial.rebalance.delay.ms=0"],
    );
    let settings = [
        ("group.id", "connect-cluster"),
        ("session.timeout.ms", "10000"),
        ("heartbeat.interval.ms", "200"),
        ("rebalance.timeout.ms", "20000"),
    ];
    let members: Vec<Arc<GroupMember>> = (0..3)
        .map(|_| Arc::new(GroupMember::new(&config(&broker, &settings), "connect").unwrap()))
        .collect();
    let (tx, mut reports) = mpsc::unbounded_channel();
    let tasks: Vec<_> = members
        .iter()
        .enumerate()
        .map(|(i, m)| tokio::spawn(run_worker(i, Arc::clone(m), tx.clone())))
        .collect();
    let mut latest = BTreeMap::new();
    let all = BTreeSet::from([0, 1, 2]);
    let (generation, leader, plan, shares) = settled(&mut reports, &mut latest, &all, 0).await;
    assert_eq!(
        plan, "worker-0:c0,c3;worker-1:c1,c4;worker-2:c2,c5",
        "the leader saw every member's metadata"
    );
    for (i, share) in &shares {
        assert!(
            plan.contains(&format!("worker-{i}:{share}")),
            "worker {i} got its slot of the plan: {share}"
        );
    }

    // librdkafka's view of the group (ListGroups + DescribeGroups): the
    // protocol type and protocol, and each member's metadata and assignment
    // as the members sent and got them.
    let group = {
        let rd: BaseConsumer = broker.consumer();
        let list = rd
            .fetch_group_list(Some("connect-cluster"), Duration::from_secs(10))
            .unwrap();
        let g = &list.groups()[0];
        let members: BTreeMap<String, (Vec<u8>, Vec<u8>)> = g
            .members()
            .iter()
            .map(|m| {
                (
                    m.id().to_owned(),
                    (
                        m.metadata().unwrap_or_default().to_vec(),
                        m.assignment().unwrap_or_default().to_vec(),
                    ),
                )
            })
            .collect();
        (
            g.state().to_owned(),
            g.protocol_type().to_owned(),
            g.protocol().to_owned(),
            members,
        )
    };
    assert_eq!(
        (group.0.as_str(), group.1.as_str(), group.2.as_str()),
        ("Stable", "connect", "sessioned")
    );
    assert_eq!(group.3.len(), 3);
    for (i, generation) in &latest {
        let (metadata, assignment) = &group.3[&generation.member_id];
        assert_eq!(metadata, format!("worker-{i}").as_bytes());
        assert_eq!(assignment, &generation.assignment.to_vec());
    }
    assert!(group.3.contains_key(&leader));

    // Worker 2 leaves: the other two rebalance at once (no session to wait
    // out) and share everything.
    tasks[2].abort();
    members[2].leave().await.unwrap();
    let two = BTreeSet::from([0, 1]);
    let (after, _, plan, _) = settled(&mut reports, &mut latest, &two, generation).await;
    assert!(after > generation);
    assert_eq!(plan, "worker-0:c0,c2,c4;worker-1:c1,c3,c5");
    for task in tasks {
        task.abort();
    }
    drop(members);
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_group_follows_its_coordinator_to_another_broker() {
    let mut cluster = common::cluster::three_nodes().await;
    let bootstrap = cluster.bootstrap();
    let mut settings = ClientConfig::new();
    settings
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "connect-ha")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "200")
        .set("rebalance.timeout.ms", "20000")
        // A dead broker's requests fail quickly rather than hang.
        .set("request.timeout.ms", "3000")
        .set("socket.connection.setup.timeout.ms", "2000");
    let members: Vec<Arc<GroupMember>> = (0..3)
        .map(|_| Arc::new(GroupMember::new(&settings, "connect").unwrap()))
        .collect();
    let (tx, mut reports) = mpsc::unbounded_channel();
    let mut tasks: Vec<_> = (0..2)
        .map(|i| tokio::spawn(run_worker(i, Arc::clone(&members[i]), tx.clone())))
        .collect();
    let mut latest = BTreeMap::new();
    let (generation, ..) = settled(&mut reports, &mut latest, &BTreeSet::from([0, 1]), 0).await;

    // The group's coordinator dies; another broker leads its partition of
    // __consumer_offsets (replication factor 3) and takes the group over.
    let admin = common::cluster::strom_admin(&bootstrap);
    let described = admin.describe_groups(&["connect-ha"]).await;
    let coordinator = described["connect-ha"].as_ref().unwrap().coordinator;
    cluster.kill(coordinator).await.unwrap();

    // A third worker joins: the other two hear of it from the new
    // coordinator (their heartbeats found it), rejoin, and all three agree.
    tasks.push(tokio::spawn(run_worker(
        2,
        Arc::clone(&members[2]),
        tx.clone(),
    )));
    let (after, _, plan, _) = settled(
        &mut reports,
        &mut latest,
        &BTreeSet::from([0, 1, 2]),
        generation,
    )
    .await;
    assert!(after > generation);
    assert_eq!(plan, "worker-0:c0,c3;worker-1:c1,c4;worker-2:c2,c5");
    let now = admin.describe_groups(&["connect-ha"]).await;
    assert_ne!(now["connect-ha"].as_ref().unwrap().coordinator, coordinator);
    for task in tasks {
        task.abort();
    }
    drop(members);
    cluster.stop_all().await.unwrap();
}

/// A custom assignor: a member says with its user data whether it takes
/// the even or the odd partitions, and the leader tells each member, in
/// the assignment's user data, which side it got.
struct Parity {
    side: &'static str,
    assigned: AssignedLog,
}

/// What `on_assignment` was told: (generation, assignment) in order.
type AssignedLog = Arc<Mutex<Vec<(i32, Assignment)>>>;

impl PartitionAssignor for Parity {
    fn name(&self) -> &str {
        "stream"
    }

    fn user_data(&self, _topics: &BTreeSet<String>) -> Option<Bytes> {
        Some(Bytes::from_static(self.side.as_bytes()))
    }

    fn assign(
        &self,
        partitions: &BTreeMap<String, i32>,
        subscriptions: &BTreeMap<String, Subscription>,
    ) -> Result<BTreeMap<String, Assignment>> {
        Ok(subscriptions
            .iter()
            .map(|(member, subscription)| {
                let side = subscription.user_data.clone().unwrap_or_default();
                let even = &side[..] == b"even";
                let mine = partitions
                    .iter()
                    .filter(|(topic, _)| subscription.topics.contains(*topic))
                    .flat_map(|(topic, &count)| {
                        (0..count)
                            .filter(move |p| (p % 2 == 0) == even)
                            .map(move |p| TopicPartition::new(topic, p))
                    })
                    .collect();
                let assignment = Assignment {
                    partitions: mine,
                    user_data: Some(Bytes::from(format!(
                        "you take the {}",
                        String::from_utf8_lossy(&side)
                    ))),
                };
                (member.clone(), assignment)
            })
            .collect())
    }

    fn on_assignment(&self, assignment: &Assignment, generation: i32) {
        self.assigned
            .lock()
            .unwrap()
            .push((generation, assignment.clone()));
    }
}

/// A consumer polled on its own task until stopped, keeping every record's
/// partition and value.
fn poll_in_background(
    consumer: Arc<Consumer>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(i32, String)>> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            for record in consumer.poll(Duration::from_millis(100)).await.unwrap() {
                got.push((
                    record.partition,
                    String::from_utf8(record.value.unwrap().to_vec()).unwrap(),
                ));
            }
        }
        got
    })
}

/// The test venv's Python (`STROM_PYTHON`, else the workspace's `.venv`),
/// if there is one.
fn python() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("STROM_PYTHON") {
        return Some(PathBuf::from(path));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    venv.exists().then_some(venv)
}

/// A kafka-python consumer offering only `range` joins `group`; what it
/// says: `INCONSISTENT_GROUP_PROTOCOL`, `JOINED` or another error's name.
fn kafka_python_range_member(
    python: &PathBuf,
    bootstrap: &str,
    group: &str,
    topic: &str,
) -> String {
    let script = r#"
import sys, time
from kafka import KafkaConsumer
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.errors import InconsistentGroupProtocolError
bootstrap, group, topic = sys.argv[1:4]
consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                         partition_assignment_strategy=[RangePartitionAssignor],
                         enable_auto_commit=False)
consumer.subscribe([topic])
deadline = time.time() + 30
try:
    while time.time() < deadline:
        consumer.poll(timeout_ms=500)
        if consumer.assignment():
            print("JOINED")
            break
    else:
        print("TIMED_OUT")
except InconsistentGroupProtocolError:
    print("INCONSISTENT_GROUP_PROTOCOL")
except Exception as e:
    print(type(e).__name__)
finally:
    consumer.close(autocommit=False)
"#;
    let output = Command::new(python)
        .args(["-c", script, bootstrap, group, topic])
        .output()
        .expect("run kafka-python");
    assert!(
        output.status.success(),
        "kafka-python: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_with_its_own_assignor_works_and_range_members_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &["group.initial.rebalance.delay.ms=0"],
    );
    tokio::task::block_in_place(|| broker.create_topic("parity", 6));
    let settings = [
        ("group.id", "parity-group"),
        ("auto.offset.reset", "earliest"),
        ("heartbeat.interval.ms", "200"),
    ];
    let sides = ["even", "odd"];
    let assigned: Vec<AssignedLog> = sides.iter().map(|_| Arc::default()).collect();
    let consumers: Vec<Arc<Consumer>> = sides
        .iter()
        .zip(&assigned)
        .map(|(side, log)| {
            let assignor = Arc::new(Parity {
                side,
                assigned: Arc::clone(log),
            });
            let consumer =
                Consumer::with_assignors(&config(&broker, &settings), vec![assignor]).unwrap();
            consumer.subscribe(&["parity"]).unwrap();
            Arc::new(consumer)
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let pollers: Vec<_> = consumers
        .iter()
        .map(|c| poll_in_background(Arc::clone(c), Arc::clone(&stop)))
        .collect();

    // Each gets its side, and the leader's word on it.
    let expected = |even: bool| -> Vec<TopicPartition> {
        (0..6)
            .filter(|p| (p % 2 == 0) == even)
            .map(|p| TopicPartition::new("parity", p))
            .collect()
    };
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now: Vec<Vec<TopicPartition>> = consumers
            .iter()
            .map(|c| {
                let mut a = c.assignment();
                a.sort();
                a
            })
            .collect();
        if now[0] == expected(true) && now[1] == expected(false) {
            break;
        }
        assert!(Instant::now() < deadline, "assignments: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (side, log) in sides.iter().zip(&assigned) {
        let log = log.lock().unwrap();
        let (_, last) = log.last().expect("on_assignment was called");
        assert_eq!(
            last.user_data.as_deref(),
            Some(format!("you take the {side}").as_bytes())
        );
    }

    // Records go where the assignor said.
    let producer = broker.producer(&[]);
    for i in 0..60 {
        let value = format!("v{i}");
        producer
            .send(
                BaseRecord::<(), _>::to("parity")
                    .partition(i % 6)
                    .payload(&value),
            )
            .unwrap();
    }
    flush(&producer);

    // Members offering only `range` are refused: librdkafka's...
    let rd: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", "parity-group")
        .set("partition.assignment.strategy", "range")
        .create()
        .unwrap();
    rd.subscribe(&["parity"]).unwrap();
    let mut refused = None;
    let deadline = Instant::now() + DEADLINE;
    while refused.is_none() && Instant::now() < deadline {
        if let Some(Err(e)) = rd.poll(Duration::from_millis(200)) {
            refused = e.rdkafka_error_code();
        }
    }
    assert_eq!(refused, Some(RDKafkaErrorCode::InconsistentGroupProtocol));
    drop(rd);
    // ...and kafka-python's.
    match python() {
        Some(python) => assert_eq!(
            kafka_python_range_member(&python, &broker.bootstrap, "parity-group", "parity"),
            "INCONSISTENT_GROUP_PROTOCOL"
        ),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("no test venv: scripts/test.sh makes .venv before the Rust tests")
        }
        None => eprintln!("no .venv (scripts/test.sh makes it): kafka-python part skipped"),
    }

    // The refused members changed nothing: every record was read by the
    // member of its side, once.
    // (Positions: the next offset of each partition, 10 records each.)
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline
        && consumers
            .iter()
            .map(|c| c.positions().values().sum::<i64>())
            .sum::<i64>()
            < 60
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut values = BTreeSet::new();
    for (poller, even) in pollers.into_iter().zip([true, false]) {
        for (partition, value) in poller.await.unwrap() {
            assert_eq!(partition % 2 == 0, even, "{value} on partition {partition}");
            assert!(values.insert(value.clone()), "{value} read twice");
        }
    }
    assert_eq!(values.len(), 60);
    for (consumer, even) in consumers.iter().zip([true, false]) {
        let mut a = consumer.assignment();
        a.sort();
        assert_eq!(a, expected(even), "the assignment held");
    }
    drop(consumers);
    broker.stop();
}
