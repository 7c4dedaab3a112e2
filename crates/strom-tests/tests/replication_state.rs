//! What an operator sees of replication on a three-node cluster: `strom
//! topic describe` (kafka-topics --describe's layout, with its
//! `--unavailable-partitions` and `--under-replicated-partitions` filters)
//! and the leader's `strom_under_replicated_partitions` gauge, before and
//! after a broker dies (kill -9) and is fenced.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{DEADLINE, eventually, strom_bin, three_nodes};
use common::raw::RawConnection;
use strom_testkit::LocalCluster;

/// Runs `strom ARGS --bootstrap BOOTSTRAP`; stdout when it succeeds.
fn strom(bootstrap: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(strom_bin())
        .args(args)
        .args([
            "--bootstrap",
            bootstrap,
            "-X",
            "default.api.timeout.ms=10000",
        ])
        .output()
        .unwrap();
    if output.status.success() {
        Ok(String::from_utf8(output.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// The partition lines of `topic describe` output (tab-indented).
fn partition_lines(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with('\t')).collect()
}

/// The last line: the summary.
fn summary(out: &str) -> &str {
    out.lines().last().unwrap_or_default()
}

/// Each partition's leader, as node `addr` reports it.
fn leaders(addr: SocketAddr, topic: &str) -> Option<Vec<i32>> {
    RawConnection::connect(addr, Duration::from_secs(5))
        .ok()?
        .leaders(topic)
        .ok()
        .map(|(l, _)| l)
}

/// A gauge without labels from the metrics endpoint at `url`
/// (`http://HOST:PORT/metrics`).
fn gauge(url: &str, name: &str) -> Option<f64> {
    let host = url.strip_prefix("http://")?.split('/').next()?;
    let mut stream = TcpStream::connect(host).ok()?;
    stream.set_read_timeout(Some(DEADLINE)).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    BufReader::new(stream).read_to_string(&mut response).ok()?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until `strom topic describe` (with `extra` flags) through
/// `bootstrap` prints what `check` accepts; returns that output.
async fn describe_until(
    what: &str,
    bootstrap: &str,
    topic: &'static str,
    extra: &'static [&'static str],
    check: impl Fn(&str) -> bool + Send + 'static,
) -> String {
    let bootstrap = bootstrap.to_owned();
    eventually(what, move || {
        let mut args = vec!["topic", "describe", topic];
        args.extend_from_slice(extra);
        strom(&bootstrap, &args).ok().filter(|out| check(out))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_brokers_partitions_show_as_offline_in_topic_describe() {
    let mut cluster = three_nodes().await;
    let bootstrap = cluster.bootstrap();
    strom(
        &bootstrap,
        &[
            "topic",
            "create",
            "solo",
            "--partitions",
            "3",
            "--replication-factor",
            "1",
        ],
    )
    .unwrap();
    let addr = cluster.addr(1);
    let led = eventually("every partition led", move || {
        leaders(addr, "solo").filter(|l| l.len() == 3 && l.iter().all(|id| *id > 0))
    })
    .await;
    let healthy = describe_until("solo described", &bootstrap, "solo", &[], |out| {
        partition_lines(out).len() == 3
    })
    .await;
    assert!(
        healthy.starts_with("Topic: solo\tTopicId: ")
            && healthy.contains("\tPartitionCount: 3\tReplicationFactor: 1\n"),
        "{healthy}"
    );
    for (p, line) in partition_lines(&healthy).iter().enumerate() {
        assert!(
            line.starts_with(&format!(
                "\tTopic: solo\tPartition: {p}\tLeader: {}\tLeaderEpoch: ",
                led[p]
            )),
            "{healthy}"
        );
        assert!(
            line.ends_with(&format!("\tReplicas: {0}\tIsr: {0}", led[p])),
            "{healthy}"
        );
    }
    assert_eq!(
        summary(&healthy),
        "1 topic, 3 partitions: 0 offline, 0 under-replicated"
    );
    let none = strom(
        &bootstrap,
        &["topic", "describe", "solo", "--unavailable-partitions"],
    )
    .unwrap();
    assert!(partition_lines(&none).is_empty(), "{none}");

    // Partition 0's only replica dies: it has no leader once the broker is
    // fenced, and the filter finds it.
    let victim = led[0];
    cluster.kill(victim).await.unwrap();
    let survivors: Vec<String> = cluster
        .node_ids()
        .into_iter()
        .filter(|id| *id != victim)
        .map(|id| cluster.addr(id).to_string())
        .collect();
    let survivors = survivors.join(",");
    let offline = describe_until(
        "partition 0 offline",
        &survivors,
        "solo",
        &["--unavailable-partitions"],
        |out| partition_lines(out).len() == 1 && out.contains("\tLeader: none\t"),
    )
    .await;
    let line = partition_lines(&offline)[0];
    assert!(
        line.starts_with("\tTopic: solo\tPartition: 0\tLeader: none\t"),
        "{offline}"
    );
    assert!(line.ends_with("\tOffline"), "{offline}");
    assert_eq!(
        summary(&offline),
        "1 topic, 3 partitions: 1 offline, 0 under-replicated"
    );
    // JSON says the same for scripts.
    let json: serde_json::Value = serde_json::from_str(
        &strom(
            &survivors,
            &["topic", "describe", "solo", "--output", "json"],
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(json["summary"]["offline"], 1, "{json}");
    assert_eq!(
        json["topics"][0]["partitions"][0]["offline"], true,
        "{json}"
    );
    assert_eq!(json["topics"][0]["partitions"][0]["leader"], -1, "{json}");
    cluster.stop_all().await.unwrap();
}

/// Node `id`'s metrics endpoint: printed just after its ready line, so
/// polled for.
async fn metrics_url(cluster: &LocalCluster, id: i32) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(url) = cluster.metrics_url(id) {
            return url;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} printed no metrics line"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the gauge `name` at `url` reads `want`.
async fn gauge_until(url: &str, name: &'static str, want: f64) {
    let url = url.to_owned();
    eventually(&format!("{name} = {want} at {url}"), move || {
        (gauge(&url, name) == Some(want)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_follower_leaves_the_isr_and_its_leader_reports_the_partition_under_replicated() {
    let mut cluster = three_nodes().await;
    let bootstrap = cluster.bootstrap();
    strom(
        &bootstrap,
        &[
            "topic",
            "create",
            "triple",
            "--partitions",
            "1",
            "--replication-factor",
            "3",
        ],
    )
    .unwrap();
    let addr = cluster.addr(1);
    let leader = eventually("the partition led", move || {
        leaders(addr, "triple").and_then(|l| l.first().copied().filter(|id| *id > 0))
    })
    .await;
    let ids = cluster.node_ids();
    let followers: Vec<i32> = ids.iter().copied().filter(|id| *id != leader).collect();
    let (victim, other) = (followers[0], followers[1]);
    let leader_url = metrics_url(&cluster, leader).await;
    let other_url = metrics_url(&cluster, other).await;

    // Healthy: the ISR is the replica set; nothing to report.
    let healthy = describe_until("triple described", &bootstrap, "triple", &[], |out| {
        partition_lines(out).len() == 1
    })
    .await;
    let line = partition_lines(&healthy)[0];
    let isr_of = |line: &str| -> Vec<i32> {
        let isr = line
            .split("\tIsr: ")
            .nth(1)
            .unwrap()
            .split('\t')
            .next()
            .unwrap();
        let mut ids: Vec<i32> = isr.split(',').map(|id| id.parse().unwrap()).collect();
        ids.sort_unstable();
        ids
    };
    assert_eq!(isr_of(line), [1, 2, 3], "{healthy}");
    assert!(!line.contains("Under-replicated"), "{healthy}");
    assert_eq!(
        summary(&healthy),
        "1 topic, 1 partition: 0 offline, 0 under-replicated"
    );
    let none = strom(
        &bootstrap,
        &[
            "topic",
            "describe",
            "triple",
            "--under-replicated-partitions",
        ],
    )
    .unwrap();
    assert!(partition_lines(&none).is_empty(), "{none}");
    assert_eq!(
        gauge(&leader_url, "strom_under_replicated_partitions"),
        Some(0.0)
    );
    assert_eq!(gauge(&leader_url, "strom_leader_partitions"), Some(1.0));

    // A follower dies without a word; once fenced it leaves the ISR, the
    // leader stays, and both the tool and the leader's gauge say so.
    cluster.kill(victim).await.unwrap();
    let survivors = format!("{},{}", cluster.addr(leader), cluster.addr(other));
    let under = describe_until(
        "the ISR down to two",
        &survivors,
        "triple",
        &["--under-replicated-partitions"],
        |out| partition_lines(out).len() == 1,
    )
    .await;
    let line = partition_lines(&under)[0];
    assert!(
        line.starts_with(&format!(
            "\tTopic: triple\tPartition: 0\tLeader: {leader}\t"
        )),
        "{under}"
    );
    let mut survivor_ids = vec![leader, other];
    survivor_ids.sort_unstable();
    assert_eq!(isr_of(line), survivor_ids, "{under}");
    assert!(line.ends_with("\tUnder-replicated"), "{under}");
    assert_eq!(
        summary(&under),
        "1 topic, 1 partition: 0 offline, 1 under-replicated"
    );
    gauge_until(&leader_url, "strom_under_replicated_partitions", 1.0).await;
    // A follower does not count it: a cluster's sum counts each partition
    // once.
    assert_eq!(
        gauge(&other_url, "strom_under_replicated_partitions"),
        Some(0.0)
    );
    assert_eq!(gauge(&other_url, "strom_leader_partitions"), Some(0.0));
    cluster.stop_all().await.unwrap();
}
