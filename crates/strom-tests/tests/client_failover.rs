//! Strom's own client across a broker's death and return, as librdkafka
//! and the Java client ride it out: a three-node cluster, a topic of three
//! partitions with one replica each (one per broker), an idempotent producer
//! and an assigned consumer working all along. One broker is killed (kill -9)
//! or stopped (SIGTERM); its partition has no leader (Metadata answers
//! leader -1, LEADER_NOT_AVAILABLE) until it is started again. Meanwhile the
//! other partitions keep taking and serving records; afterwards the producer
//! resumes on the victim's partition without failing a record, and the
//! consumer reads every acknowledged record exactly once, in order, per
//! partition. With three replicas per partition the same fault moves the
//! victim's leadership to another replica, and the clients follow it
//! (NOT_LEADER_OR_FOLLOWER, FENCED_LEADER_EPOCH, a lost connection: refresh
//! the metadata and retry) without a gap.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::{eventually, strom_admin, three_nodes};
use common::raw::RawConnection;
use strom_client::admin::NewTopic;
use strom_client::{ClientConfig, Consumer, Producer, ProducerRecord, TopicPartition};
use tokio::task::JoinHandle;

const TOPIC: &str = "failover";
const PARTITIONS: i32 = 3;
/// Records a partition's producer task keeps unacknowledged at most: enough
/// to have batches in flight when the broker dies.
const WINDOW: usize = 20;
/// Acknowledgements a phase waits for on a partition, to show it works.
const PROGRESS: usize = 30;

/// What happens to the victim broker.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// kill -9: no goodbye, the controller fences it after its session.
    Kill,
    /// SIGTERM: a controlled shutdown moves its leaderships away first.
    Stop,
}

/// Records per partition: (offset, value).
type Records = Arc<Mutex<BTreeMap<i32, Vec<(i64, String)>>>>;
/// Each partition's acknowledged records, in send order.
type Acked = Records;
/// Each partition's consumed records, in poll order.
type Consumed = Records;

fn value(partition: i32, n: usize) -> String {
    format!("p{partition}-{n}")
}

fn count(map: &Records, partition: i32) -> usize {
    map.lock().unwrap().get(&partition).map_or(0, Vec::len)
}

/// Sends `p{partition}-0`, `-1`, ... to one partition until `stop`, at most
/// [`WINDOW`] unacknowledged; every record must be acknowledged. Returns
/// the delivery errors (none expected).
fn spawn_producer(
    producer: Producer,
    partition: i32,
    acked: Acked,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut pending = VecDeque::new();
        let mut errors = Vec::new();
        let mut n = 0usize;
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            if pending.len() >= WINDOW || (stopping && !pending.is_empty()) {
                let (v, delivery): (String, strom_client::DeliveryFuture) =
                    pending.pop_front().unwrap();
                match delivery.await {
                    Ok(meta) => acked
                        .lock()
                        .unwrap()
                        .entry(partition)
                        .or_default()
                        .push((meta.offset, v)),
                    Err(e) => errors.push(format!("{v}: {e}")),
                }
                continue;
            }
            if stopping {
                return errors;
            }
            let v = value(partition, n);
            n += 1;
            let record = ProducerRecord::new(TOPIC)
                .partition(partition)
                .value(v.clone().into_bytes());
            match producer.send(record).await {
                Ok(delivery) => pending.push_back((v, delivery)),
                Err(e) => {
                    errors.push(format!("{v}: send: {e}"));
                    return errors;
                }
            }
        }
    })
}

/// Polls every partition from the beginning until `stop`, keeping what it
/// reads. Returns the poll errors (none expected: leader changes and a
/// broker's absence are retried inside the client).
fn spawn_consumer(
    consumer: Consumer,
    consumed: Consumed,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut errors = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match consumer.poll(Duration::from_millis(200)).await {
                Ok(records) => {
                    let mut consumed = consumed.lock().unwrap();
                    for r in records {
                        let v = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default())
                            .into_owned();
                        consumed.entry(r.partition).or_default().push((r.offset, v));
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        errors
    })
}

/// The leader of each partition of [`TOPIC`], as the node at `addr` says.
fn leaders(addr: std::net::SocketAddr) -> Option<Vec<i32>> {
    Some(
        RawConnection::connect(addr, Duration::from_secs(5))
            .ok()?
            .leaders(TOPIC)
            .ok()?
            .0,
    )
}

/// Waits until every partition in `partitions` has `at_least` records in
/// `map`.
async fn until_counts(
    what: &str,
    map: &Records,
    partitions: Vec<i32>,
    at_least: BTreeMap<i32, usize>,
) {
    let map = Arc::clone(map);
    let counts = |map: &Records| {
        map.lock()
            .unwrap()
            .iter()
            .map(|(p, r)| (*p, r.len()))
            .collect::<BTreeMap<_, _>>()
    };
    let what = format!(
        "{what}: wanted {at_least:?}, {:?} at the start",
        counts(&map)
    );
    eventually(&what, move || {
        partitions
            .iter()
            .all(|p| count(&map, *p) >= at_least.get(p).copied().unwrap_or(0))
            .then_some(())
    })
    .await;
}

/// `replication`: 1 (the victim's partition is down until it returns) or 3
/// (its leadership moves to another replica and nothing stops).
async fn survive(fault: Fault, replication: i16) {
    // RUST_LOG=strom_client=debug shows what the clients did.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let mut cluster = three_nodes().await;
    let bootstrap = cluster.bootstrap();
    let created = strom_admin(&bootstrap)
        .create_topics(&[NewTopic::new(TOPIC, PARTITIONS, replication)], false)
        .await;
    created[TOPIC].as_ref().unwrap();
    // One partition per broker (the controller's round robin), each led.
    let addr = cluster.addr(1);
    let led = eventually("every partition led", move || {
        let l = leaders(addr)?;
        (l.len() == 3 && l.iter().all(|id| *id > 0)).then_some(l)
    })
    .await;
    let mut distinct = led.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "one partition per broker: {led:?}");

    let config: ClientConfig = [
        ("bootstrap.servers", bootstrap.as_str()),
        // A dead broker's requests fail quickly rather than hang.
        ("request.timeout.ms", "5000"),
        ("socket.connection.setup.timeout.ms", "2000"),
    ]
    .into_iter()
    .collect();
    let producer = Producer::new(&config).unwrap();
    let mut consumer_config = config.clone();
    consumer_config.set("auto.offset.reset", "earliest");
    let consumer = Consumer::new(&consumer_config).unwrap();
    consumer.assign(
        &(0..PARTITIONS)
            .map(|p| TopicPartition::new(TOPIC, p))
            .collect::<Vec<_>>(),
    );
    let acked: Acked = Arc::default();
    let consumed: Consumed = Arc::default();
    let stop_producing = Arc::new(AtomicBool::new(false));
    let stop_consuming = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..PARTITIONS)
        .map(|p| {
            spawn_producer(
                producer.clone(),
                p,
                Arc::clone(&acked),
                Arc::clone(&stop_producing),
            )
        })
        .collect();
    let consuming = spawn_consumer(consumer, Arc::clone(&consumed), Arc::clone(&stop_consuming));

    let all: Vec<i32> = (0..PARTITIONS).collect();
    let at = |n: &dyn Fn(i32) -> usize| all.iter().map(|p| (*p, n(*p))).collect::<BTreeMap<_, _>>();
    until_counts(
        "every partition acknowledged before the fault",
        &acked,
        all.clone(),
        at(&|_| PROGRESS),
    )
    .await;

    // The victim leads partition 1; a node that stays up answers Metadata.
    let victim_partition = 1;
    let victim = led[1];
    let witness = *cluster.node_ids().iter().find(|id| **id != victim).unwrap();
    match fault {
        Fault::Kill => cluster.kill(victim).await.unwrap(),
        Fault::Stop => cluster.stop(victim).await.unwrap(),
    }
    let witness_addr = cluster.addr(witness);
    eventually("the victim's partition without it as leader", move || {
        let l = leaders(witness_addr)?;
        // Without replicas it has none; with them another replica leads.
        let moved = if replication == 1 {
            l.get(1) == Some(&-1)
        } else {
            l.get(1).is_some_and(|id| *id > 0 && *id != victim)
        };
        moved.then_some(())
    })
    .await;
    // While it is down, the other partitions go on, both ways (with
    // replicas, the victim's too, at its new leader).
    let others: Vec<i32> = all
        .iter()
        .copied()
        .filter(|p| replication > 1 || *p != victim_partition)
        .collect();
    let acked_now = at(&|p| count(&acked, p) + PROGRESS);
    until_counts(
        "the live partitions acknowledged during the outage",
        &acked,
        others.clone(),
        acked_now,
    )
    .await;
    let consumed_now = at(&|p| count(&consumed, p) + PROGRESS);
    until_counts(
        "the live partitions consumed during the outage",
        &consumed,
        others,
        consumed_now,
    )
    .await;

    // The victim returns; its partition is led again and both clients
    // resume on it.
    cluster.restart(victim).await.unwrap();
    let victim_acked = count(&acked, victim_partition);
    let want = BTreeMap::from([(victim_partition, victim_acked + PROGRESS)]);
    until_counts(
        "the victim's partition acknowledged again",
        &acked,
        vec![victim_partition],
        want,
    )
    .await;

    stop_producing.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for task in producers {
        errors.extend(task.await.unwrap());
    }
    assert!(errors.is_empty(), "deliveries failed: {errors:?}");
    let final_acked = at(&|p| count(&acked, p));
    until_counts(
        "every acknowledged record consumed",
        &consumed,
        all.clone(),
        final_acked.clone(),
    )
    .await;
    stop_consuming.store(true, Ordering::Relaxed);
    let poll_errors = consuming.await.unwrap();
    assert!(poll_errors.is_empty(), "polls failed: {poll_errors:?}");

    let acked = acked.lock().unwrap().clone();
    let consumed = consumed.lock().unwrap().clone();
    eprintln!(
        "{fault:?} of broker {victim}: acknowledged per partition {:?}",
        acked.iter().map(|(p, a)| (*p, a.len())).collect::<Vec<_>>()
    );
    for p in all {
        let acked = &acked[&p];
        let consumed = &consumed[&p];
        // Exactly once and in order: the partition holds the values in send
        // order, at consecutive offsets from 0, nothing twice.
        let expected: Vec<String> = (0..acked.len()).map(|n| value(p, n)).collect();
        let values: Vec<String> = consumed.iter().map(|(_, v)| v.clone()).collect();
        assert_eq!(values, expected, "partition {p}: consumed values");
        let offsets: Vec<i64> = consumed.iter().map(|(o, _)| *o).collect();
        let consecutive: Vec<i64> = (0..i64::try_from(consumed.len()).unwrap()).collect();
        assert_eq!(offsets, consecutive, "partition {p}: offsets");
        // Each acknowledgement named the offset the record is at (a retry
        // answered as a duplicate names none: -1).
        for (offset, v) in acked {
            if *offset >= 0 {
                assert_eq!(
                    consumed
                        .get(usize::try_from(*offset).unwrap())
                        .map(|(_, c)| c),
                    Some(v),
                    "partition {p}: the acknowledged offset of {v}"
                );
            }
        }
    }
    producer.close().await.unwrap();
    cluster.stop_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_rides_out_a_killed_broker_and_its_restart() {
    survive(Fault::Kill, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_follows_a_leader_moved_by_a_kill() {
    survive(Fault::Kill, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_follows_a_leader_moved_by_a_controlled_shutdown() {
    survive(Fault::Stop, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_rides_out_a_stopped_broker_and_its_restart() {
    survive(Fault::Stop, 1).await;
}

/// A seek to the beginning asks the partition's leader for its start
/// offset (ListOffsets). If that leader has just died, the consumer must
/// look for the new one rather than ask the dead one again until its
/// metadata is 5 minutes old (`metadata.max.age.ms`): it did, when the seek
/// came in the seconds before the controller fenced the dead broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seek_while_the_leader_is_dead_reads_from_the_new_leader() {
    let mut cluster = three_nodes().await;
    let bootstrap = cluster.bootstrap();
    let created = strom_admin(&bootstrap)
        .create_topics(&[NewTopic::new(TOPIC, 1, 3)], false)
        .await;
    created[TOPIC].as_ref().unwrap();
    let addr = cluster.addr(1);
    let leader = eventually("the partition led", move || {
        let l = leaders(addr)?;
        l.first().copied().filter(|id| *id > 0)
    })
    .await;

    let config: ClientConfig = [
        ("bootstrap.servers", bootstrap.as_str()),
        ("request.timeout.ms", "5000"),
        ("socket.connection.setup.timeout.ms", "2000"),
    ]
    .into_iter()
    .collect();
    let producer = Producer::new(&config).unwrap();
    for n in 0..10 {
        producer
            .send(
                ProducerRecord::new(TOPIC)
                    .partition(0)
                    .value(value(0, n).into_bytes()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    producer.close().await.unwrap();
    let mut consumer_config = config.clone();
    consumer_config.set("auto.offset.reset", "earliest");
    let consumer = Consumer::new(&consumer_config).unwrap();
    let tp = TopicPartition::new(TOPIC, 0);
    consumer.assign(std::slice::from_ref(&tp));
    let mut read = 0;
    while read < 10 {
        read += consumer
            .poll(Duration::from_millis(200))
            .await
            .unwrap()
            .len();
    }

    cluster.kill(leader).await.unwrap();
    consumer.seek(&tp, strom_client::Offset::Beginning).unwrap();
    let mut again = Vec::new();
    let deadline = std::time::Instant::now() + common::cluster::DEADLINE;
    while again.len() < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "after the seek, read {} of 10 records again",
            again.len()
        );
        for r in consumer.poll(Duration::from_millis(200)).await.unwrap() {
            again
                .push(String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned());
        }
    }
    let expected: Vec<String> = (0..10).map(|n| value(0, n)).collect();
    assert_eq!(again, expected);
    cluster.stop_all().await.unwrap();
}
