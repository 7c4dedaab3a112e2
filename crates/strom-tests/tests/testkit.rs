//! The test-cluster library (strom-testkit) on the real binary: a cluster
//! starts, its nodes are killed, paused, restarted and stopped, and dropping
//! it leaves no process and no directory behind.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use strom_testkit::{LocalCluster, TestkitError};
use tokio::net::TcpStream;

/// The binary under test: `STROM_BIN` (another build), else the one cargo
/// built for these tests.
fn strom_bin() -> PathBuf {
    std::env::var_os("STROM_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_strom-e2e")),
        PathBuf::from,
    )
}

/// The process state letter in /proc (R, S, T for stopped, Z), or `None`
/// once the process is gone (reaped).
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Polls `check` until it holds or `timeout` passes.
async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_node_cluster_is_killed_restarted_paused_and_cleaned_up() {
    let mut cluster = LocalCluster::builder(strom_bin())
        .nodes(1)
        .start()
        .await
        .expect("one node starts");
    assert_eq!(cluster.node_ids(), [1]);
    let addr = cluster.addr(1);
    assert_eq!(cluster.bootstrap(), addr.to_string());
    assert_ne!(cluster.controller_addr(1), addr);
    let ready = cluster.ready_line(1).expect("ready line");
    assert!(
        ready.starts_with(&format!("Strom broker 1 listening on {addr}")),
        "{ready}"
    );
    TcpStream::connect(addr).await.expect("the broker accepts");
    let root = cluster
        .data_dir(1)
        .parent()
        .expect("a root directory")
        .to_path_buf();
    assert!(cluster.stderr_log(1).starts_with(&root));

    let first = cluster.pid(1).expect("running");
    cluster.kill(1).await.expect("kill -9");
    assert_eq!(cluster.pid(1), None);
    assert_eq!(process_state(first), None, "killed and reaped");
    assert!(TcpStream::connect(addr).await.is_err(), "nobody listens");

    cluster.restart(1).await.expect("restarts on its ports");
    let second = cluster.pid(1).expect("running again");
    assert_ne!(first, second);
    assert!(cluster.ready_line(1).is_some(), "the ready line came back");
    TcpStream::connect(addr)
        .await
        .expect("the broker accepts again");

    cluster.pause(1).expect("SIGSTOP");
    assert!(
        eventually(Duration::from_secs(10), || process_state(second)
            == Some('T'))
        .await
    );
    cluster.resume(1).expect("SIGCONT");
    assert!(
        eventually(Duration::from_secs(10), || process_state(second)
            != Some('T'))
        .await
    );

    // A paused node still stops cleanly (stop resumes it).
    cluster.pause(1).expect("SIGSTOP");
    cluster.stop(1).await.expect("SIGTERM");
    assert_eq!(process_state(second), None);
    assert!(
        std::fs::read_to_string(cluster.stderr_log(1))
            .expect("the log")
            .contains("shut down cleanly"),
        "a clean shutdown"
    );
    assert!(matches!(cluster.pause(1), Err(TestkitError::NotRunning(1))));

    cluster.restart(1).await.expect("starts after a stop");
    let third = cluster.pid(1).expect("running");
    drop(cluster);
    assert_eq!(process_state(third), None, "drop kills and reaps the node");
    assert!(!root.exists(), "drop removes {}", root.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_start_fails_the_start_with_its_stderr() {
    let err = LocalCluster::builder(strom_bin())
        .nodes(1)
        .set("num.partitions", "0")
        .start()
        .await
        .expect_err("a bad property");
    let TestkitError::Exited {
        node, tail, log, ..
    } = &err
    else {
        panic!("expected an early exit, got {err}");
    };
    assert_eq!(*node, 1);
    assert!(tail.contains("num.partitions"), "{tail}");
    assert!(err.to_string().contains(&log.display().to_string()));
    let root = log.parent().expect("root");
    assert!(
        !root.exists(),
        "the failed start removed {}",
        root.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_data_dir_root_survives_the_cluster() {
    let keep = tempfile::tempdir().expect("temp dir");
    let root = keep.path().join("cluster");
    let cluster = LocalCluster::builder(strom_bin())
        .nodes(1)
        .data_dir_root(&root)
        .start()
        .await
        .expect("starts");
    assert_eq!(cluster.data_dir(1), root.join("n1"));
    drop(cluster);
    assert!(root.join("n1").is_dir());
    assert!(root.join("n1.stderr.log").is_file());
}
