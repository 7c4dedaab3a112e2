//! The `strom` client tools run as a user runs them, against the real broker:
//! the issue's session (create, produce, consume with a group, describe the
//! group with its lag), JSON output that parses, offsets reset (dry run, then
//! executed) and consumed again, and one-line errors with non-zero exits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{BrokerProcess, wait_for_exit, wait_until};

/// How long a command that must fail at once may run before the test calls
/// it stuck: well under the API timeout the commands are given
/// (`STUCK_API_TIMEOUT_MS`), so that waiting out that timeout fails the test.
const FAIL_FAST_BOUND: Duration = Duration::from_secs(20);
/// The API timeout (and `max.block.ms`) given to commands that must not
/// wait for it.
const STUCK_API_TIMEOUT_MS: &str = "60000";

/// Runs `strom` with `args` (no `--bootstrap` added) and `stdin`, killing it
/// and failing the test if it runs longer than `bound`.
fn strom_bounded(args: &[&str], stdin: &[u8], bound: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strom-e2e"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    // A command that fails before reading its input closes the pipe.
    let _ = input.write_all(stdin);
    drop(input);
    wait_for_exit(child, bound).unwrap_or_else(|output| {
        panic!(
            "strom {args:?} still running after {bound:?}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// A failed command's stderr.
fn failed(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "expected a failure; stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    stderr
}

/// A local port nothing listens on: bound, then released.
fn refusing_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn strom(broker: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strom-e2e"))
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

#[test]
fn an_unreachable_bootstrap_fails_at_once_saying_connection_refused() {
    let addr = format!("127.0.0.1:{}", refusing_port());
    let timeout = format!("default.api.timeout.ms={STUCK_API_TIMEOUT_MS}");
    let block = format!("max.block.ms={STUCK_API_TIMEOUT_MS}");
    let expected = format!("strom: cannot connect to {addr} (connection refused)");
    // Each tool with the property that bounds its wait raised above the
    // test's bound (the consumer has none; its admin calls wait 15 s).
    for (args, stdin) in [
        (vec!["topic", "list", "-X", &timeout], &b""[..]),
        (vec!["group", "list", "-X", &timeout], &b""[..]),
        (vec!["cluster", "describe", "-X", &timeout], &b""[..]),
        (vec!["produce", "t", "-X", &block], &b"a\nb\n"[..]),
        (vec!["consume", "t", "--count", "1"], &b""[..]),
    ] {
        let mut args = args;
        args.extend(["--bootstrap", &addr]);
        let stderr = failed(&strom_bounded(&args, stdin, FAIL_FAST_BOUND));
        assert_eq!(stderr.trim(), expected, "strom {args:?}");
    }
    // `-X bootstrap.servers` is what the client uses, so it is what is
    // checked (not the default address).
    let bootstrap = format!("bootstrap.servers={addr}");
    let args = ["topic", "list", "-X", &timeout, "-X", &bootstrap];
    let stderr = failed(&strom_bounded(&args, b"", FAIL_FAST_BOUND));
    assert_eq!(stderr.trim(), expected, "strom {args:?}");
}

#[test]
fn an_illegal_topic_name_is_explained_by_the_rule_it_breaks() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let b = broker.bootstrap.as_str();
    let character =
        "is illegal, it contains a character other than ASCII alphanumerics, '.', '_' and '-'";
    let long = "a".repeat(250);
    for (args, stdin, rule) in [
        (vec!["topic", "create", "a b"], None, character),
        (vec!["produce", "a b"], Some("x\n"), character),
        (vec!["topic", "describe", "a/b"], None, character),
        (
            vec!["topic", "create", ".."],
            None,
            "cannot be \".\" or \"..\"",
        ),
        (
            vec!["topic", "create", ""],
            None,
            "is illegal, it can't be empty",
        ),
        (
            vec!["topic", "create", &long],
            None,
            "is illegal, it can't be longer than 249 characters",
        ),
    ] {
        let stderr = failed(&strom(b, &args, stdin));
        assert!(
            stderr.contains("INVALID_TOPIC_EXCEPTION") && stderr.contains(rule),
            "strom {args:?}: {stderr}"
        );
    }
    broker.stop();
}

#[test]
fn a_produce_failing_part_way_says_how_many_records_were_written() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let b = broker.bootstrap.as_str();
    ok(&strom(b, &["topic", "create", "part"], None));
    // The fourth line is over max.request.size, so the producer refuses it.
    let input = format!("1\n2\n3\n{}\n5\n", "x".repeat(2000));
    let stderr = failed(&strom(
        b,
        &["produce", "part", "-X", "max.request.size=1000"],
        Some(&input),
    ));
    assert!(
        stderr.contains("topic part: 3 records written (acknowledged) before the failure")
            && stderr.contains("MESSAGE_TOO_LARGE"),
        "{stderr}"
    );
    let consumed = ok(&strom(
        b,
        &["consume", "part", "--from-beginning", "--exit-at-end"],
        None,
    ));
    assert_eq!(consumed, "1\n2\n3\n");
    broker.stop();
}

#[test]
fn client_options_belong_to_the_client_subcommands_not_the_broker() {
    let help = ok(&strom_bounded(&["broker", "--help"], b"", FAIL_FAST_BOUND));
    for client_only in ["--bootstrap", "--output", "-X"] {
        assert!(!help.contains(client_only), "{client_only} in: {help}");
    }
    assert!(help.contains("--listen"), "{help}");
    for args in [["topic", "list", "--help"], ["produce", "t", "--help"]] {
        let help = ok(&strom_bounded(&args, b"", FAIL_FAST_BOUND));
        assert!(
            help.contains("--bootstrap") && help.contains("-X"),
            "{help}"
        );
    }
    // Given to the broker anyway, they are refused, not ignored.
    let stderr = failed(&strom_bounded(
        &["broker", "--bootstrap", "127.0.0.1:1"],
        b"",
        FAIL_FAST_BOUND,
    ));
    assert!(stderr.contains("--bootstrap"), "{stderr}");
    let stderr = failed(&strom_bounded(
        &["--bootstrap", "127.0.0.1:1", "broker"],
        b"",
        FAIL_FAST_BOUND,
    ));
    assert!(
        stderr.contains("strom broker takes no client options (--bootstrap)"),
        "{stderr}"
    );
}

#[test]
fn a_taken_port_names_the_flag_and_the_property_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let metrics = broker
        .metrics_url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_owned();
    let second = dir.path().join("second");
    let second = second.to_str().unwrap();
    for (listen, metrics, flag, property) in [
        (
            broker.bootstrap.as_str(),
            "127.0.0.1:0",
            "--listen",
            "listeners",
        ),
        (
            "127.0.0.1:0",
            metrics.as_str(),
            "--metrics",
            "metrics.listener",
        ),
    ] {
        let stderr = failed(&strom_bounded(
            &[
                "broker",
                "--listen",
                listen,
                "--metrics",
                metrics,
                "--data-dir",
                second,
            ],
            b"",
            FAIL_FAST_BOUND,
        ));
        let line = stderr.trim();
        assert!(
            line.contains(flag) && line.contains(property) && !line.contains('\n'),
            "{line}"
        );
        // The OS's reason once, not once per layer of the error.
        assert_eq!(line.matches("(os error").count(), 1, "{line}");
    }
    broker.stop();
}

#[test]
fn a_broker_log_in_a_file_is_plain_text_one_line_per_event() {
    use strom_protocol::messages::kafka::SaslHandshakeRequest;
    use strom_protocol::messages::{ApiKey, StrBytes, encode_request};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start(&data, &[]);
    // A client's SASL mechanism name ends up in an INFO line; line breaks in
    // it must not break the log's lines.
    let request = SaslHandshakeRequest::default()
        .with_mechanism(StrBytes::from_static_str("PLAIN\n\n\nforged line"));
    let frame = encode_request(ApiKey::SaslHandshake, 1, 1, Some("t"), &request).unwrap();
    let mut socket = std::net::TcpStream::connect(&broker.bootstrap).unwrap();
    socket.write_all(&frame).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut size = [0u8; 4];
    socket.read_exact(&mut size).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || broker
            .stderr()
            .contains("SASL handshake refused")),
        "{}",
        broker.stderr()
    );
    broker.stop();
    let log = std::fs::read(data.with_extension("stderr.log")).unwrap();
    assert!(!log.contains(&0x1b), "ANSI escapes in a log file");
    let log = String::from_utf8(log).unwrap();
    assert!(log.ends_with('\n'), "{log:?}");
    for line in log.lines() {
        assert!(!line.trim().is_empty(), "a blank line in: {log:?}");
        assert!(!line.starts_with("forged"), "a forged line in: {log:?}");
    }
    assert!(log.contains("shut down cleanly"), "{log}");
}
