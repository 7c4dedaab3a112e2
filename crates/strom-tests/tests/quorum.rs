//! The controller quorum as clients and operators see it, on three real
//! processes (strom-testkit): DescribeQuorum through every node (raw
//! requests at each version, and Strom's admin), a new leader with a higher
//! epoch after kill -9 of the old one, the three metadata logs holding the
//! same committed entries after the killed node comes back (`strom log
//! dump` of each), and `strom cluster describe`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{strom_admin, strom_bin, three_nodes};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use strom_protocol::messages::kafka::{
    DescribeQuorumRequest, DescribeQuorumResponse, TopicName, describe_quorum_request,
};
use strom_protocol::messages::{ApiKey, StrBytes, decode_response, encode_request};
use strom_testkit::LocalCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEADLINE: Duration = Duration::from_secs(60);
/// Longer than the controller's write timeout (15 s), which bounds how long
/// a node forwarding DescribeQuorum waits for an active controller.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// One DescribeQuorum for `__cluster_metadata-0` at `version`, sent to the
/// node at `addr` itself (not routed by a client).
async fn describe_quorum(addr: SocketAddr, version: i16) -> Result<DescribeQuorumResponse, String> {
    let request = DescribeQuorumRequest::default().with_topics(vec![
        describe_quorum_request::TopicData::default()
            .with_topic_name(TopicName(StrBytes::from_static_str("__cluster_metadata")))
            .with_partitions(vec![
                describe_quorum_request::PartitionData::default().with_partition_index(0),
            ]),
    ]);
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let frame = encode_request(
            ApiKey::DescribeQuorum,
            version,
            7,
            Some("quorum-test"),
            &request,
        )
        .map_err(std::io::Error::other)?;
        stream.write_all(&frame).await?;
        let size = stream.read_i32().await?;
        let mut body = vec![0; usize::try_from(size).map_err(std::io::Error::other)?];
        stream.read_exact(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let body = tokio::time::timeout(ANSWER_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer from {addr} within {ANSWER_TIMEOUT:?}"))?
        .map_err(|e| format!("{addr}: {e}"))?;
    let (correlation, response) = decode_response::<DescribeQuorumResponse>(
        ApiKey::DescribeQuorum,
        version,
        Bytes::from(body),
    )?;
    assert_eq!(correlation, 7);
    Ok(response)
}

/// What DescribeQuorum said: leader, epoch, high watermark, and each
/// voter's `(id, log end offset)` by id.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Quorum {
    leader: i32,
    epoch: i32,
    high_watermark: i64,
    voters: Vec<(i32, i64)>,
}

/// The quorum as the node at `addr` describes it, if it answered without
/// an error.
async fn quorum_at(addr: SocketAddr) -> Option<Quorum> {
    let r = describe_quorum(addr, 2).await.ok()?;
    let p = r.topics.first()?.partitions.first()?;
    if r.error_code != 0 || p.error_code != 0 {
        return None;
    }
    let mut voters: Vec<(i32, i64)> = p
        .current_voters
        .iter()
        .map(|v| (v.replica_id.0, v.log_end_offset))
        .collect();
    voters.sort_unstable();
    Some(Quorum {
        leader: p.leader_id.0,
        epoch: p.leader_epoch,
        high_watermark: p.high_watermark,
        voters,
    })
}

/// Polls `check` until it gives a value, for up to [`DEADLINE`].
async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The same answer from every node in `nodes`, once every voter's log end
/// offset is known and at least the high watermark (all caught up).
async fn agreed_and_caught_up(cluster: &LocalCluster, nodes: &[i32]) -> Quorum {
    let addrs: Vec<SocketAddr> = nodes.iter().map(|id| cluster.addr(*id)).collect();
    eventually("every node describing one caught-up quorum", || {
        let addrs = addrs.clone();
        async move {
            let mut answers = Vec::new();
            for addr in addrs {
                answers.push(quorum_at(addr).await?);
            }
            let first = answers[0].clone();
            let caught_up = first.voters.len() == 3
                && first
                    .voters
                    .iter()
                    .all(|(_, leo)| *leo >= first.high_watermark);
            let same = answers
                .iter()
                .all(|a| (a.leader, a.epoch) == (first.leader, first.epoch));
            (caught_up && same).then_some(first)
        }
    })
    .await
}

/// Every batch of a metadata log below `below`, as `strom log dump
/// --print-records` prints it (the batch line and its record line): one
/// string per batch, by offset.
fn dumped_batches(dir: &Path, below: i64) -> Vec<(i64, String)> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    let mut batches: Vec<(i64, String)> = Vec::new();
    for segment in segments {
        let out = Command::new(strom_bin())
            .args(["log", "dump", "--print-records"])
            .arg(&segment)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "strom log dump {}: {}",
            segment.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            if let Some(rest) = line.strip_prefix("baseOffset: ") {
                let offset: i64 = rest.split(' ').next().unwrap().parse().unwrap();
                batches.push((offset, line.to_owned()));
            } else {
                let last = batches.last_mut().expect("a record line after its batch");
                last.1.push('\n');
                last.1.push_str(line);
            }
        }
    }
    batches.retain(|(offset, _)| *offset < below);
    batches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_describes_the_same_quorum_and_a_killed_leader_is_replaced_with_a_higher_epoch()
{
    let mut cluster = three_nodes().await;
    let ids = cluster.node_ids();
    let before = agreed_and_caught_up(&cluster, &ids).await;
    assert_eq!(
        before.voters.iter().map(|v| v.0).collect::<Vec<_>>(),
        ids,
        "{before:?}"
    );
    assert!(before.high_watermark > 0, "{before:?}");
    let old = before.leader;
    assert!(ids.contains(&old), "{before:?}");

    // Every version, through the leader and through a node that is not:
    // the same leader and epoch (the follower forwards to the leader).
    let follower = *ids.iter().find(|id| **id != old).unwrap();
    for node in [old, follower] {
        for version in 0..=2 {
            let r = describe_quorum(cluster.addr(node), version).await.unwrap();
            assert_eq!(r.error_code, 0, "node {node} v{version}");
            let t = &r.topics[0];
            let p = &t.partitions[0];
            assert_eq!(
                (t.topic_name.0.as_str(), p.partition_index, p.error_code),
                ("__cluster_metadata", 0, 0),
                "node {node} v{version}"
            );
            assert_eq!(
                (p.leader_id.0, p.leader_epoch),
                (old, before.epoch),
                "node {node} v{version}"
            );
            assert_eq!(p.current_voters.len(), 3, "node {node} v{version}");
            assert!(p.observers.is_empty(), "combined nodes are all voters");
            let leader = p
                .current_voters
                .iter()
                .find(|v| v.replica_id.0 == old)
                .unwrap();
            assert!(
                leader.log_end_offset >= p.high_watermark,
                "node {node} v{version}"
            );
            if version >= 1 {
                // Kafka reports the leader as fetched and caught up now.
                assert!(
                    leader.last_caught_up_timestamp > 0,
                    "node {node} v{version}"
                );
                // Followers as of their last acknowledgement of the leader.
                for follower in p.current_voters.iter().filter(|v| v.replica_id.0 != old) {
                    assert!(
                        follower.last_fetch_timestamp > 0
                            && follower.last_fetch_timestamp <= leader.last_fetch_timestamp,
                        "node {node} v{version}: {follower:?}"
                    );
                }
            }
            if version >= 2 {
                let mut nodes: Vec<(i32, u16)> = r
                    .nodes
                    .iter()
                    .map(|n| (n.node_id.0, n.listeners[0].port))
                    .collect();
                nodes.sort_unstable();
                let expected: Vec<(i32, u16)> = ids
                    .iter()
                    .map(|id| (*id, cluster.controller_addr(*id).port()))
                    .collect();
                assert_eq!(nodes, expected, "the voters' controller listeners");
                assert!(
                    r.nodes
                        .iter()
                        .all(|n| n.listeners[0].name.as_str() == "CONTROLLER")
                );
            } else {
                assert!(r.nodes.is_empty());
            }
        }
    }
    // Strom's admin says the same.
    let info = strom_admin(&cluster.addr(follower).to_string())
        .describe_quorum()
        .await
        .unwrap();
    assert_eq!((info.leader_id, info.leader_epoch), (old, before.epoch));
    assert_eq!(info.voters.len(), 3);

    // kill -9 of the leader: a survivor names another leader, in a later epoch.
    cluster.kill(old).await.unwrap();
    let survivors: Vec<i32> = ids.iter().copied().filter(|id| *id != old).collect();
    let after = eventually("a new leader", || {
        let addr = cluster.addr(survivors[0]);
        async move { quorum_at(addr).await.filter(|q| q.leader != old) }
    })
    .await;
    assert!(survivors.contains(&after.leader), "{after:?}");
    assert!(after.epoch > before.epoch, "{before:?} then {after:?}");
    let other = quorum_at(cluster.addr(survivors[1])).await.unwrap();
    assert_eq!((other.leader, other.epoch), (after.leader, after.epoch));
    // Metadata written while the old leader is down.
    let created = strom_admin(&cluster.addr(survivors[0]).to_string())
        .create_topics(
            &[strom_client::admin::NewTopic::new(
                "written-without-the-old-leader",
                1,
                1,
            )],
            false,
        )
        .await;
    assert!(created.values().all(Result::is_ok), "{created:?}");

    // The killed node comes back and catches up; then the three metadata
    // logs hold the same committed entries (compared below the high
    // watermark, which every voter had reached).
    cluster.restart(old).await.unwrap();
    let settled = agreed_and_caught_up(&cluster, &ids).await;
    assert!(
        settled.high_watermark > before.high_watermark,
        "{settled:?}"
    );
    cluster.stop_all().await.unwrap();
    let logs: Vec<Vec<(i64, String)>> = ids
        .iter()
        .map(|id| {
            dumped_batches(
                &cluster.data_dir(*id).join("meta/__cluster_metadata-0"),
                settled.high_watermark,
            )
        })
        .collect();
    let expected: Vec<i64> = (0..settled.high_watermark).collect();
    for (id, log) in ids.iter().zip(&logs) {
        let offsets: Vec<i64> = log.iter().map(|(o, _)| *o).collect();
        assert_eq!(
            offsets, expected,
            "node {id}: one batch per committed entry"
        );
    }
    for (id, log) in ids.iter().zip(&logs).skip(1) {
        for (mine, first) in log.iter().zip(&logs[0]) {
            assert_eq!(mine, first, "node {id} and node {} differ", ids[0]);
        }
    }
    assert!(
        logs[0]
            .iter()
            .any(|(_, b)| b.contains("written-without-the-old-leader")),
        "the topic written during the outage is in the logs"
    );
}

/// Runs `strom cluster describe` (table, then JSON) against one node.
fn cluster_describe(addr: SocketAddr) -> (String, serde_json::Value) {
    let run = |json: bool| {
        let mut command = Command::new(strom_bin());
        command.args(["cluster", "describe", "--bootstrap", &addr.to_string()]);
        if json {
            command.args(["--output", "json"]);
        }
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "strom cluster describe: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let table = run(false);
    let json = serde_json::from_str(&run(true)).unwrap();
    (table, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strom_cluster_describe_shows_the_quorum_and_the_brokers() {
    let mut cluster = three_nodes().await;
    let ids = cluster.node_ids();
    let quorum = agreed_and_caught_up(&cluster, &ids).await;
    let addr = cluster.addr(ids[0]);
    let (table, json) = tokio::task::spawn_blocking(move || cluster_describe(addr))
        .await
        .unwrap();
    let lines: Vec<&str> = table.lines().collect();
    let cluster_id = json["cluster_id"].as_str().unwrap().to_owned();
    assert_eq!(cluster_id.len(), 22, "{json}");
    assert!(
        lines[0].starts_with(&format!("cluster {cluster_id} (controller ")),
        "{table}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "quorum: leader {} epoch {} high watermark ",
            quorum.leader, quorum.epoch
        )),
        "{table}"
    );
    assert!(lines[1].ends_with("voters [1,2,3] observers []"), "{table}");
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        [
            "NODE",
            "ROLE",
            "LOG-END-OFFSET",
            "LAG",
            "LAST-FETCH",
            "LAST-CAUGHT-UP"
        ],
        "{table}"
    );
    // The leader first, then the followers.
    let roles: Vec<(i32, &str)> = lines[3..6]
        .iter()
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            (cells[0].parse().unwrap(), cells[1])
        })
        .collect();
    assert_eq!(roles[0], (quorum.leader, "Leader"), "{table}");
    assert!(roles[1..].iter().all(|(_, r)| *r == "Follower"), "{table}");
    assert_eq!(
        lines[6].split_whitespace().collect::<Vec<_>>(),
        ["BROKER", "HOST:PORT", "RACK", "STATE"],
        "{table}"
    );
    for (line, id) in lines[7..].iter().zip(&ids) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                id.to_string().as_str(),
                cluster.addr(*id).to_string().as_str(),
                "-",
                "live"
            ],
            "{table}"
        );
    }
    assert_eq!(lines.len(), 10, "{table}");
    assert_eq!(json["quorum"]["leader"], quorum.leader, "{json}");
    assert_eq!(
        json["quorum"]["voters"].as_array().unwrap().len(),
        3,
        "{json}"
    );
    assert_eq!(
        json["quorum"]["nodes"].as_array().unwrap().len(),
        3,
        "{json}"
    );

    // A killed follower: once fenced it is `not live`, and the quorum still
    // lists it as a voter.
    let victim = *ids.iter().find(|id| **id != quorum.leader).unwrap();
    cluster.kill(victim).await.unwrap();
    let addr = cluster.addr(quorum.leader);
    let table = eventually("the killed broker not live", || async move {
        let (table, _) = tokio::task::spawn_blocking(move || cluster_describe(addr))
            .await
            .unwrap();
        table
            .lines()
            .any(|l| {
                l.split_whitespace().collect::<Vec<_>>()
                    == [victim.to_string().as_str(), "-", "-", "not", "live"]
            })
            .then_some(table)
    })
    .await;
    assert!(table.contains("voters [1,2,3]"), "{table}");
}
