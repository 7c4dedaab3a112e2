//! Nodes with one role (`process.roles=controller` or `broker`), a broker
//! joining a running cluster, controlled shutdown, and a node whose data
//! belongs to another cluster: real processes through strom-testkit, seen
//! through librdkafka and single raw requests to named nodes.

#![allow(clippy::unwrap_used)]

mod common;

use common::cluster::{DEADLINE, eventually, rd_brokers, strom_bin};

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::raw::RawConnection;
use strom_testkit::{LocalCluster, Role};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

fn raw(addr: SocketAddr) -> RawConnection {
    RawConnection::connect(addr, REQUEST_TIMEOUT).unwrap()
}

async fn create_topic(addr: SocketAddr, name: &'static str, partitions: i32, rf: i16) {
    let result = tokio::task::spawn_blocking(move || raw(addr).create_topic(name, partitions, rf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.0, 0, "creating {name}: {result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_only_voter_and_broker_only_nodes_serve_clients_and_a_broker_joins_later() {
    let mut cluster = LocalCluster::builder(strom_bin())
        .nodes(1)
        .controller_only()
        .brokers(2)
        .set("broker.heartbeat.interval.ms", "500")
        .start()
        .await
        .unwrap();
    assert_eq!(cluster.role(1), Role::Controller);
    assert_eq!(cluster.role(2), Role::Broker);
    // The controller serves no clients: only the brokers are offered.
    let bootstrap = cluster.bootstrap();
    let b = bootstrap.clone();
    eventually("the two brokers listed", move || {
        (rd_brokers(&b) == vec![2, 3]).then_some(())
    })
    .await;
    // A topic created through one broker-only node (forwarded to the
    // controller-only voter) is in the other's metadata with its replicas.
    create_topic(cluster.addr(2), "spread", 4, 2).await;
    let other = cluster.addr(3);
    let (leaders, brokers) = eventually("the topic on the other broker", move || {
        raw(other).leaders("spread").ok()
    })
    .await;
    assert_eq!(brokers, vec![2, 3]);
    let mut sorted = leaders.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, vec![2, 2, 3, 3], "leaders spread: {leaders:?}");

    // A broker started later with an empty directory joins and is offered.
    let joined = cluster.add_broker().await.unwrap();
    assert_eq!(joined, 4);
    let b = cluster.bootstrap();
    eventually("three brokers listed", move || {
        (rd_brokers(&b) == vec![2, 3, 4]).then_some(())
    })
    .await;
    // It serves what was created before it joined, and takes admin requests.
    let (_, brokers) = raw(cluster.addr(4)).leaders("spread").unwrap();
    assert_eq!(brokers, vec![2, 3, 4]);
    create_topic(cluster.addr(4), "after-join", 3, 3).await;
    let first = cluster.addr(2);
    eventually("the joined broker's topic elsewhere", move || {
        raw(first).leaders("after-join").ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_broker_hands_its_leaderships_over_before_it_exits() {
    // A session far longer than the test: only the controlled shutdown can
    // fence the stopped broker in time.
    let mut cluster = LocalCluster::builder(strom_bin())
        .nodes(3)
        .set("broker.session.timeout.ms", "600000")
        .set("broker.heartbeat.interval.ms", "500")
        .start()
        .await
        .unwrap();
    let first = cluster.addr(1);
    let controller = eventually("an active controller", move || {
        raw(first)
            .describe_cluster()
            .ok()
            .map(|(c, _)| c)
            .filter(|c| *c > 0)
    })
    .await;
    create_topic(cluster.addr(controller), "handover", 6, 3).await;
    let at = cluster.addr(controller);
    let (leaders, _) = eventually("the topic", move || raw(at).leaders("handover").ok()).await;
    // A broker that leads something and is not the active controller.
    let stopping = *leaders
        .iter()
        .find(|l| **l != controller && **l > 0)
        .unwrap_or_else(|| panic!("leaders {leaders:?} all on the controller"));
    cluster.stop(stopping).await.unwrap();
    // It exited only after the controller committed its fencing: the
    // active controller's metadata names other leaders, at once, and stops
    // offering it after the few seconds librdkafka needs to move its
    // partitions first (`FENCED_BROKER_OFFERED_FOR`).
    let (leaders, _) = raw(cluster.addr(controller)).leaders("handover").unwrap();
    assert!(
        leaders.iter().all(|l| *l != stopping && *l > 0),
        "leaders after {stopping} stopped: {leaders:?}"
    );
    let at = cluster.addr(controller);
    eventually("the stopped broker no longer offered", move || {
        let (_, brokers) = raw(at).leaders("handover").ok()?;
        (!brokers.contains(&stopping)).then_some(())
    })
    .await;
    let log = std::fs::read_to_string(cluster.stderr_log(stopping)).unwrap();
    assert!(
        log.contains("controlled shutdown: the controller moved"),
        "no controlled shutdown in the log"
    );
    // Back again, it is offered to clients once more.
    cluster.restart(stopping).await.unwrap();
    let b = cluster.bootstrap();
    eventually("three brokers again", move || {
        (rd_brokers(&b) == vec![1, 2, 3]).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_clusters_data_refuses_to_join_in_one_line() {
    let cluster = LocalCluster::builder(strom_bin())
        .nodes(1)
        .start()
        .await
        .unwrap();
    // A directory of another (single-node) cluster, node 2's.
    let foreign = tempfile::tempdir().unwrap();
    let copy = foreign.path().join("data");
    common::BrokerProcess::start(&copy, &["node.id=2"]).stop();
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listen.local_addr().unwrap().port();
    drop(listen);
    let output = tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new(strom_bin())
            .args(["broker", "--node-id", "2", "--set", "process.roles=broker"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics", ""])
            .args(["--voters", cluster.voters(1)])
            .arg("--data-dir")
            .arg(&copy)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the node exits")
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("belongs to another cluster than the voters'"),
        "stderr ends with {last:?}"
    );
    assert!(output.stdout.is_empty(), "it never said it was ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_whose_directory_was_emptied_rejoins_and_one_of_another_cluster_is_refused() {
    let mut cluster = LocalCluster::builder(strom_bin())
        .nodes(3)
        .set("broker.heartbeat.interval.ms", "500")
        .start()
        .await
        .unwrap();
    create_topic(cluster.addr(1), "before", 3, 1).await;
    // A voter that lost its disk comes back empty: the leader sends it the
    // log again, and it serves what was there before.
    cluster.stop(3).await.unwrap();
    std::fs::remove_dir_all(cluster.data_dir(3)).unwrap();
    cluster.restart(3).await.unwrap();
    let (_, brokers) = raw(cluster.addr(3)).leaders("before").unwrap();
    assert_eq!(brokers, vec![1, 2, 3]);

    // Node 3 of another three-voter cluster in its place: refused in one
    // line, while the others go on.
    let mut other = LocalCluster::builder(strom_bin())
        .nodes(3)
        .start()
        .await
        .unwrap();
    other.stop_all().await.unwrap();
    cluster.stop(3).await.unwrap();
    std::fs::remove_dir_all(cluster.data_dir(3)).unwrap();
    copy_dir(other.data_dir(3), cluster.data_dir(3));
    let refused = cluster
        .restart(3)
        .await
        .expect_err("a node of another cluster");
    let message = refused.to_string();
    assert!(
        message.contains("belongs to another cluster than the voters'"),
        "{message}"
    );
    create_topic(cluster.addr(1), "after", 1, 1).await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
