//! The `strom` client tools run as a user runs them, against the real broker:
//! the issue's session (create, produce, consume with a group, describe the
//! group with its lag), JSON output that parses, offsets reset (dry run, then
//! executed) and consumed again, and one-line errors with non-zero exits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::BrokerProcess;

fn strom(broker: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strom"))
        .arg("--bootstrap")
        .arg(broker)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn lines(n: usize) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

fn group_json(broker: &str, group: &str) -> serde_json::Value {
    serde_json::from_str(&ok(&strom(
        broker,
        &["group", "describe", group, "--output", "json"],
        None,
    )))
    .unwrap()
}

#[test]
fn the_issues_session_works_as_shown() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &["group.initial.rebalance.delay.ms=0"],
    );
    let b = broker.bootstrap.as_str();
    ok(&strom(
        b,
        &["topic", "create", "orders", "--partitions", "3"],
        None,
    ));
    let produced = strom(b, &["produce", "orders"], Some(&lines(300)));
    ok(&produced);
    let consumed = ok(&strom(
        b,
        &[
            "consume",
            "orders",
            "--group",
            "billing",
            "--from-beginning",
            "--count",
            "300",
        ],
        None,
    ));
    let mut got: Vec<u32> = consumed.lines().map(|l| l.parse().unwrap()).collect();
    got.sort_unstable();
    assert_eq!(got, (1..=300).collect::<Vec<u32>>());

    // LAG 0 on every partition, in the table and in JSON.
    let table = ok(&strom(b, &["group", "describe", "billing"], None));
    let header = table.lines().next().unwrap();
    assert!(
        header.contains("LOG-END-OFFSET") && header.contains("LAG"),
        "{table}"
    );
    let rows: Vec<&str> = table
        .lines()
        .skip(1)
        .filter(|l| l.starts_with("billing"))
        .collect();
    assert_eq!(rows.len(), 3, "{table}");
    for row in rows {
        assert_eq!(row.split_whitespace().nth(5), Some("0"), "{row}");
    }
    let described = group_json(b, "billing");
    assert_eq!(described["total_lag"], 0);
    let total: i64 = described["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["current_offset"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 300);

    // More records: the lag is exactly the unconsumed count.
    ok(&strom(
        b,
        &["produce", "orders", "--partition", "1"],
        Some(&lines(25)),
    ));
    assert_eq!(group_json(b, "billing")["total_lag"], 25);

    // Reset to the earliest: a dry run changes nothing, --execute does.
    let dry = ok(&strom(
        b,
        &[
            "group",
            "reset-offsets",
            "billing",
            "--topic",
            "orders",
            "--to-earliest",
        ],
        None,
    ));
    assert!(dry.contains("dry run"), "{dry}");
    assert_eq!(group_json(b, "billing")["total_lag"], 25);
    ok(&strom(
        b,
        &[
            "group",
            "reset-offsets",
            "billing",
            "--topic",
            "orders",
            "--to-earliest",
            "--execute",
        ],
        None,
    ));
    assert_eq!(group_json(b, "billing")["total_lag"], 325);
    let again = ok(&strom(
        b,
        &[
            "consume",
            "orders",
            "--group",
            "billing",
            "--count",
            "325",
            "--format",
            "%p %o %v\\n",
        ],
        None,
    ));
    assert_eq!(again.lines().count(), 325);
    assert_eq!(group_json(b, "billing")["total_lag"], 0);

    // A group that never existed, a missing topic: one line, non-zero exit.
    for args in [
        &["topic", "describe", "missing-topic"][..],
        &["group", "describe", "nobody"][..],
    ] {
        let out = strom(b, args, None);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("strom: "), "{stderr}");
    }
    broker.stop();
}

#[test]
fn keys_headers_json_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &["auto.create.topics.enable=false"],
    );
    let b = broker.bootstrap.as_str();
    ok(&strom(
        b,
        &[
            "topic",
            "create",
            "kv",
            "--partitions",
            "1",
            "--config",
            "retention.ms=86400000",
        ],
        None,
    ));
    ok(&strom(
        b,
        &[
            "produce",
            "kv",
            "--key-separator",
            ":",
            "--header",
            "source=cli",
            "--compression",
            "zstd",
        ],
        Some("a:1\nb:2\nc:3\n"),
    ));
    let formatted = ok(&strom(
        b,
        &[
            "consume",
            "kv",
            "--from-beginning",
            "--exit-at-end",
            "--format",
            "%o %k=%v [%h]\\n",
        ],
        None,
    ));
    assert_eq!(
        formatted,
        "0 a=1 [source=cli]\n1 b=2 [source=cli]\n2 c=3 [source=cli]\n"
    );
    let json = ok(&strom(
        b,
        &[
            "consume",
            "kv",
            "--offset",
            "1",
            "--exit-at-end",
            "--output",
            "json",
        ],
        None,
    ));
    let records: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2);
    assert_eq!(
        (records[0]["offset"].as_i64(), records[0]["key"].as_str()),
        (Some(1), Some("b"))
    );
    let topics: serde_json::Value =
        serde_json::from_str(&ok(&strom(b, &["topic", "list", "--output", "json"], None))).unwrap();
    assert_eq!(topics[0]["topic"], "kv");

    // Configs: the topic's override with its source, then altered away.
    let configs = ok(&strom(b, &["config", "describe", "--topic", "kv"], None));
    assert!(
        configs
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["retention.ms", "86400000", "DYNAMIC_TOPIC_CONFIG"]),
        "{configs}"
    );
    ok(&strom(
        b,
        &[
            "config",
            "alter",
            "--topic",
            "kv",
            "--delete",
            "retention.ms",
            "--set",
            "cleanup.policy=compact",
        ],
        None,
    ));
    let configs: serde_json::Value = serde_json::from_str(&ok(&strom(
        b,
        &[
            "config", "describe", "--topic", "kv", "--all", "--output", "json",
        ],
        None,
    )))
    .unwrap();
    let entry = |name: &str| {
        configs
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(entry("retention.ms")["source"], "DEFAULT_CONFIG");
    assert_eq!(entry("cleanup.policy")["value"], "compact");
    let bad = strom(
        b,
        &[
            "config",
            "alter",
            "--topic",
            "kv",
            "--set",
            "retention.ms=soon",
        ],
        None,
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("INVALID_CONFIG"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // The load generators: every record delivered and read, JSON summaries.
    ok(&strom(
        b,
        &["topic", "create", "load", "--partitions", "2"],
        None,
    ));
    let produced: serde_json::Value = serde_json::from_str(&ok(&strom(
        b,
        &[
            "perf",
            "produce",
            "--topic",
            "load",
            "--num-records",
            "5000",
            "--record-size",
            "100",
            "--output",
            "json",
        ],
        None,
    )))
    .unwrap();
    assert_eq!(produced["records"], 5000);
    assert!(
        produced["latency_ms"]["p99"].as_f64().unwrap()
            <= produced["latency_ms"]["max"].as_f64().unwrap()
    );
    let consumed: serde_json::Value = serde_json::from_str(&ok(&strom(
        b,
        &[
            "perf",
            "consume",
            "--topic",
            "load",
            "--messages",
            "5000",
            "--output",
            "json",
        ],
        None,
    )))
    .unwrap();
    assert_eq!(consumed["records"], 5000);
    assert_eq!(consumed["bytes"], 500_000);

    // Auto-create is off: producing to a missing topic fails in one line.
    let out = strom(b, &["produce", "nowhere"], Some("x\n"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere"));
    broker.stop();

    // The segment as written: batches, records, indexes; a flipped byte is
    // reported, not a panic.
    let segment = dir.path().join("data/kv-0/00000000000000000000.log");
    let dump = ok(&strom(
        "unused:1",
        &[
            "log",
            "dump",
            segment.to_str().unwrap(),
            "--print-records",
            "--check-index",
        ],
        None,
    ));
    assert!(
        dump.contains("key: b value: 2 headers: [source=cli]"),
        "{dump}"
    );
    assert!(
        dump.contains("codec: zstd") && dump.contains("crcValid: true"),
        "{dump}"
    );
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    let broken = dir.path().join("00000000000000000000.log");
    std::fs::write(&broken, bytes).unwrap();
    let out = strom("unused:1", &["log", "dump", broken.to_str().unwrap()], None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad CRC") || stderr.contains("at byte"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Nothing listening: a bounded wait, then a non-zero exit.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let out = strom(
        &closed,
        &["-X", "default.api.timeout.ms=2000", "topic", "list"],
        None,
    );
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr)
            .trim_end()
            .lines()
            .count(),
        1
    );
}
