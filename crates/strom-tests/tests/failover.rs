//! Failover without loss: an idempotent librdkafka producer writes numbered
//! records at acks=all to a partition with three replicas and
//! `min.insync.replicas=2` while its leader is killed (kill -9) or stopped
//! past its session (SIGSTOP). Afterwards a consumer reads every
//! acknowledged record exactly once and in order, and the three replicas
//! hold the same bytes.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{eventually, three_nodes};
use common::numbered::{Writer, leader_and_isr, read_all};
use common::raw::RawConnection;
use strom_testkit::LocalCluster;

const TOPIC: &str = "failover";
/// Records acknowledged before a fault, and again after it.
const PER_PHASE: usize = 150;

fn raw(addr: SocketAddr) -> RawConnection {
    RawConnection::connect(addr, Duration::from_secs(20)).unwrap()
}

/// The partition's leader as any live node names it (not `except`).
async fn leader(cluster: &LocalCluster, except: Option<i32>) -> i32 {
    let addrs: Vec<SocketAddr> = cluster
        .node_ids()
        .into_iter()
        .filter(|id| Some(*id) != except)
        .map(|id| cluster.addr(id))
        .collect();
    eventually("the partition has a live leader", move || {
        addrs.iter().find_map(|addr| {
            let (leaders, _) = RawConnection::connect(*addr, Duration::from_secs(5))
                .ok()?
                .leaders(TOPIC)
                .ok()?;
            (leaders[0] > 0 && Some(leaders[0]) != except).then_some(leaders[0])
        })
    })
    .await
}

/// The partition's log bytes under `data_dir`, segments in offset order.
fn log_bytes(data_dir: &Path) -> Vec<u8> {
    let dir = data_dir.join(format!("{TOPIC}-0"));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect()
}

/// Checks what a consumer reads against what was acknowledged, once every
/// replica is back in sync, and that the replicas are byte-identical.
async fn check(mut cluster: LocalCluster, acked: Vec<u64>) {
    // Every node names the same leader, with all three in sync: the node
    // that was cut off has caught up with the metadata and the log.
    let addrs: Vec<SocketAddr> = cluster
        .node_ids()
        .into_iter()
        .map(|id| cluster.addr(id))
        .collect();
    let leader = eventually("every node sees all three replicas in sync", move || {
        let views: Vec<(i32, Vec<i32>)> = addrs
            .iter()
            .map(|a| leader_and_isr(*a, TOPIC))
            .collect::<Option<_>>()?;
        let agreed = views.windows(2).all(|w| w[0] == w[1]) && views[0].1 == vec![1, 2, 3];
        agreed.then_some(views[0].0)
    })
    .await;
    let bootstrap_leader = cluster.addr(leader).to_string();
    let read = tokio::task::spawn_blocking(move || read_all(&bootstrap_leader, TOPIC))
        .await
        .unwrap();
    let unique: BTreeSet<u64> = read.iter().copied().collect();
    assert_eq!(
        unique.len(),
        read.len(),
        "a record was read twice: {read:?}"
    );
    assert!(
        read.windows(2).all(|w| w[0] < w[1]),
        "records out of order: {read:?}"
    );
    let lost: Vec<u64> = acked
        .iter()
        .filter(|n| !unique.contains(n))
        .copied()
        .collect();
    if !lost.is_empty() {
        diagnose(&cluster);
        eprintln!("read {} values, last {:?}", read.len(), read.last());
    }
    assert!(lost.is_empty(), "acknowledged records lost: {lost:?}");
    cluster.stop_all().await.unwrap();
    let logs: Vec<Vec<u8>> = cluster
        .node_ids()
        .into_iter()
        .map(|id| log_bytes(cluster.data_dir(id)))
        .collect();
    assert!(!logs[0].is_empty());
    if !(logs[0] == logs[1] && logs[0] == logs[2]) {
        diagnose(&cluster);
        for (id, log) in cluster.node_ids().into_iter().zip(&logs) {
            let epochs = std::fs::read_to_string(
                cluster
                    .data_dir(id)
                    .join(format!("{TOPIC}-0/leader-epoch-checkpoint")),
            )
            .unwrap_or_default();
            eprintln!("node {id}: {} log bytes, epochs {epochs:?}", log.len());
        }
    }
    assert!(
        logs[0] == logs[1] && logs[0] == logs[2],
        "the replicas differ"
    );
}

/// Waits for the writer, which must not have failed, then [`check`]s.
async fn finish_and_check(cluster: LocalCluster, writer: Writer) {
    let (acked, errors) = writer.finish().await;
    assert!(
        errors.is_empty(),
        "the idempotent producer failed: {errors:?}"
    );
    check(cluster, acked).await;
}

/// Prints what the nodes logged about leaders, the ISR and truncation.
fn diagnose(cluster: &LocalCluster) {
    for id in cluster.node_ids() {
        let log = std::fs::read_to_string(cluster.stderr_log(id)).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                [
                    "ISR",
                    "truncat",
                    "diverg",
                    "replica fetch",
                    "fenc",
                    "out of",
                ]
                .iter()
                .any(|w| l.contains(w))
            })
            .collect();
        eprintln!("--- node {id}:\n{}", lines.join("\n"));
    }
}

async fn setup() -> (LocalCluster, String) {
    let cluster = three_nodes().await;
    let code = raw(cluster.addr(1))
        .create_topic_with_configs(TOPIC, 1, 3, &[("min.insync.replicas", "2")])
        .unwrap();
    assert_eq!(code, 0);
    leader(&cluster, None).await;
    let bootstrap = cluster.bootstrap();
    (cluster, bootstrap)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_twice_loses_no_acknowledged_record() {
    let (mut cluster, bootstrap) = setup().await;
    let writer = Writer::start(&bootstrap, TOPIC, 3 * PER_PHASE);
    for round in 1..=2 {
        writer.wait_for(round * PER_PHASE).await;
        let victim = leader(&cluster, None).await;
        cluster.kill(victim).await.unwrap();
        let next = leader(&cluster, Some(victim)).await;
        assert_ne!(next, victim);
        writer.wait_for(round * PER_PHASE + PER_PHASE / 2).await;
        cluster.restart(victim).await.unwrap();
    }
    finish_and_check(cluster, writer).await;
}

/// The first Metadata answer that names a killed leader's successor still
/// offers the killed broker, and later ones leave it out. librdkafka drops a
/// broker an answer leaves out while it moves that broker's partitions to
/// the leaders the same answer names; dropped together, the partition lost
/// its leader until the producer's next scan, a second later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_leader_is_offered_until_clients_have_moved_its_partitions() {
    let (mut cluster, _) = setup().await;
    let victim = leader(&cluster, None).await;
    let survivor = cluster.addr(*cluster.node_ids().iter().find(|id| **id != victim).unwrap());
    let metadata = move || {
        RawConnection::connect(survivor, Duration::from_secs(5))
            .ok()?
            .leaders(TOPIC)
            .ok()
    };
    cluster.kill(victim).await.unwrap();
    let brokers = eventually("a survivor names a new leader", move || {
        let (leaders, brokers) = metadata()?;
        (leaders[0] > 0 && leaders[0] != victim).then_some(brokers)
    })
    .await;
    assert!(
        brokers.contains(&victim),
        "the answer naming the new leader still offers broker {victim}: {brokers:?}"
    );
    eventually("the fenced broker no longer offered", move || {
        let (_, brokers) = metadata()?;
        (!brokers.contains(&victim)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_past_its_session_loses_no_acknowledged_record() {
    let (cluster, bootstrap) = setup().await;
    let writer = Writer::start(&bootstrap, TOPIC, 2 * PER_PHASE);
    writer.wait_for(PER_PHASE).await;
    let victim = leader(&cluster, None).await;
    cluster.pause(victim).unwrap();
    let next = leader(&cluster, Some(victim)).await;
    assert_ne!(next, victim);
    writer.wait_for(PER_PHASE + PER_PHASE / 2).await;
    cluster.resume(victim).unwrap();
    finish_and_check(cluster, writer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_down_for_thirty_seconds_catches_up_and_rejoins_the_isr() {
    /// How long the follower stays down while the writer goes on (the
    /// fault's length, as the issue states it).
    const DOWN: Duration = Duration::from_secs(30);
    let (mut cluster, bootstrap) = setup().await;
    let writer = Writer::start(&bootstrap, TOPIC, usize::MAX);
    writer.wait_for(PER_PHASE).await;
    let leader_id = leader(&cluster, None).await;
    let follower = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != leader_id)
        .unwrap();
    cluster.kill(follower).await.unwrap();
    let at_leader = cluster.addr(leader_id);
    eventually(
        "the leader drops the dead follower from the ISR",
        move || {
            let (_, isr) = leader_and_isr(at_leader, TOPIC)?;
            (!isr.contains(&follower)).then_some(())
        },
    )
    .await;
    let down_since = Instant::now();
    let acked_at_kill = writer.acked();
    while down_since.elapsed() < DOWN {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        writer.acked() > acked_at_kill,
        "the writer went on while the follower was down"
    );
    cluster.restart(follower).await.unwrap();
    eventually("the follower rejoins the ISR", move || {
        let (_, isr) = leader_and_isr(at_leader, TOPIC)?;
        isr.contains(&follower).then_some(())
    })
    .await;
    let more = writer.acked() + PER_PHASE;
    writer.wait_for(more).await;
    writer.stop();
    finish_and_check(cluster, writer).await;
}

/// Fills `dir`'s file system with a file `filler`, until a write fails.
fn fill(dir: &Path) {
    use std::io::Write as _;
    let mut file = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0u8; 1 << 16];
    while file.write(&chunk).is_ok_and(|n| n > 0) {}
    while file.write(&chunk[..512]).is_ok_and(|n| n > 0) {}
}

/// A leader whose disk fills does what Kafka's does when its only log
/// directory fails: it refuses the write (KAFKA_STORAGE_ERROR, retriable,
/// never OUT_OF_ORDER_SEQUENCE for the producer's next batches) and stops,
/// so that the others take over. The producer goes on at the new leader with
/// nothing lost or written twice, and the stopped node, restarted once there
/// is space, catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_disk_fills_stops_and_loses_no_acknowledged_record() {
    let root = tempfile::tempdir().unwrap();
    let mut disks = Vec::new();
    for n in 1..=3 {
        match strom_testkit::Tmpfs::mount_on(&root.path().join(format!("n{n}")), "size=64m") {
            Ok(t) => disks.push(t),
            Err(why) => {
                println!("skipped: cannot mount a tmpfs (needs root): {why}");
                return;
            }
        }
    }
    let mut cluster = common::cluster::three_nodes_builder()
        .data_dir_root(root.path())
        .start()
        .await
        .unwrap();
    let code = raw(cluster.addr(1))
        .create_topic_with_configs(TOPIC, 1, 3, &[("min.insync.replicas", "2")])
        .unwrap();
    assert_eq!(code, 0);
    let victim = leader(&cluster, None).await;
    // Full before the first record: the writer cannot finish before an
    // append fails (a tmpfs counts whole pages, so a few records may still
    // fit in the active segment's last page).
    let disk = disks[usize::try_from(victim - 1).unwrap()]
        .path()
        .to_owned();
    fill(&disk);
    let writer = Writer::start(&cluster.bootstrap(), TOPIC, 2 * PER_PHASE);
    let deadline = Instant::now() + common::cluster::DEADLINE;
    while !cluster.exited(victim) {
        assert!(
            Instant::now() < deadline,
            "node {victim} still runs with a full disk"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stderr = std::fs::read_to_string(cluster.stderr_log(victim)).unwrap();
    assert!(
        stderr.contains("the log directory failed"),
        "node {victim} says why it stopped:\n{stderr}"
    );
    let next = leader(&cluster, Some(victim)).await;
    assert_ne!(next, victim);
    writer.wait_for(PER_PHASE + PER_PHASE / 2).await;
    std::fs::remove_file(disk.join("filler")).unwrap();
    cluster.restart(victim).await.unwrap();
    finish_and_check(cluster, writer).await;
    drop(disks);
}

/// KIP-966, the soak's "last replica standing" (seeds 42 and 49): both
/// followers stop past their sessions, so the ISR shrinks to the leader and,
/// below `min.insync.replicas=2`, the follower that left last stays an
/// eligible leader replica. The leader then crashes and loses everything it
/// had not flushed (here its whole log, as a power loss before any fsync)
/// and restarts first. It must not lead on its empty log: the eligible
/// follower leads once it is back, and every acknowledged record is read.
/// (A controller-only voter keeps the quorum while the brokers stop.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_back_without_its_unflushed_log_gives_way_to_an_eligible_replica() {
    let mut cluster = LocalCluster::builder(common::cluster::strom_bin())
        .nodes(1)
        .controller_only()
        .brokers(3)
        .set("broker.session.timeout.ms", "3000")
        .set("broker.heartbeat.interval.ms", "500")
        .start()
        .await
        .unwrap();
    let code = raw(cluster.addr(2))
        .create_topic_with_configs(TOPIC, 1, 3, &[("min.insync.replicas", "2")])
        .unwrap();
    assert_eq!(code, 0);
    let victim = leader(&cluster, None).await;
    let writer = Writer::start(&cluster.bootstrap(), TOPIC, PER_PHASE);
    writer.wait_for(PER_PHASE).await;
    let (acked, errors) = writer.finish().await;
    assert!(errors.is_empty(), "the producer failed: {errors:?}");
    assert!(acked.len() >= PER_PHASE, "{} acknowledged", acked.len());

    let followers: Vec<i32> = [2, 3, 4].into_iter().filter(|id| *id != victim).collect();
    for f in &followers {
        cluster.pause(*f).unwrap();
    }
    let at_victim = cluster.addr(victim);
    eventually("the ISR shrinks to the leader", move || {
        let (_, isr) = leader_and_isr(at_victim, TOPIC)?;
        (isr == vec![victim]).then_some(())
    })
    .await;
    cluster.kill(victim).await.unwrap();
    std::fs::remove_dir_all(cluster.data_dir(victim).join(format!("{TOPIC}-0"))).unwrap();
    cluster.restart(victim).await.unwrap();
    for f in &followers {
        cluster.resume(*f).unwrap();
    }
    let next = leader(&cluster, Some(victim)).await;
    assert!(followers.contains(&next), "led by {next}");

    let bootstrap = cluster.bootstrap();
    let read = tokio::task::spawn_blocking(move || read_all(&bootstrap, TOPIC))
        .await
        .unwrap();
    let unique: BTreeSet<u64> = read.iter().copied().collect();
    let lost: Vec<u64> = acked
        .iter()
        .filter(|n| !unique.contains(n))
        .copied()
        .collect();
    if !lost.is_empty() {
        diagnose(&cluster);
    }
    assert!(lost.is_empty(), "acknowledged records lost: {lost:?}");
    assert_eq!(unique.len(), read.len(), "a record was read twice");
    // The crashed broker catches up from the new leader and is in sync again.
    let at_next = cluster.addr(next);
    eventually("the crashed broker back in the ISR", move || {
        let (_, isr) = leader_and_isr(at_next, TOPIC)?;
        (isr == vec![2, 3, 4]).then_some(())
    })
    .await;
    cluster.stop_all().await.unwrap();
}
