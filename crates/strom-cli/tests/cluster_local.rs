//! `strom cluster local` end to end: it starts the nodes, prints their
//! ready lines and the bootstrap line, the cluster answers there, and
//! SIGTERM to `strom cluster local` stops every node and removes the
//! temporary directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Kills the `strom cluster local` process if the test fails before it is
/// stopped (its own drop then kills the nodes... unless SIGKILLed, so the
/// test reaps the nodes it saw as well).
struct Guard {
    child: Child,
    nodes: Vec<u32>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in &self.nodes {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// The pids of `parent`'s child processes, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...".
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn a_local_cluster_prints_its_bootstrap_and_stops_on_sigterm() {
    let child = Command::new(env!("CARGO_BIN_EXE_strom"))
        .args(["cluster", "local", "--nodes", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut guard = Guard {
        child,
        nodes: Vec::new(),
    };
    let stdout = guard.child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut lines = Vec::new();
    let bootstrap = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no bootstrap line; stdout so far: {lines:?}"));
        if let Some(b) = line.strip_prefix("bootstrap: ") {
            break b.to_owned();
        }
        lines.push(line);
    };
    assert_eq!(lines.len(), 1, "one ready line per node: {lines:?}");
    let ready = &lines[0];
    assert!(
        ready.starts_with(&format!(
            "Strom broker 1 listening on {bootstrap} (data in "
        )),
        "{ready}"
    );
    let data_dir = PathBuf::from(
        ready
            .split("(data in ")
            .nth(1)
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap(),
    );
    assert!(data_dir.is_dir());
    TcpStream::connect(&bootstrap).expect("the node accepts connections");

    let pid = guard.child.id();
    guard.nodes = children_of(pid);
    assert_eq!(guard.nodes.len(), 1, "one node process");
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = guard.child.wait().unwrap();
    assert!(exit.success(), "strom cluster local exits cleanly: {exit}");
    for node in &guard.nodes {
        assert!(
            !PathBuf::from(format!("/proc/{node}")).exists(),
            "node process {node} is gone"
        );
    }
    // Gone and reaped: nothing left for the guard to kill (a pid may be
    // reused by now).
    guard.nodes.clear();
    assert!(TcpStream::connect(&bootstrap).is_err(), "nobody listens");
    let root = data_dir.parent().unwrap();
    assert!(
        !root.exists(),
        "the temporary directory {} is removed",
        root.display()
    );
}
