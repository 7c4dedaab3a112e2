//! The broker's Prometheus endpoint, scraped over HTTP while librdkafka
//! clients produce and consume: counters move with the traffic, the
//! per-partition gauges match what was written, a group's lag is what it
//! has not consumed, parked fetches show in purgatory, and a deleted
//! topic's series go.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{BrokerProcess, assign, flush, wait_until};
use rdkafka::admin::AdminOptions;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};

const DEADLINE: Duration = Duration::from_secs(30);

/// One sample: the metric's name and its labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
}

/// `GET path` on the metrics listener: the status line and the body.
fn http_get(metrics_url: &str, path: &str) -> (String, String, String) {
    let host = metrics_url
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .unwrap();
    let mut stream = TcpStream::connect(host).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.lines().next().unwrap().to_owned();
    assert!(
        !head.to_ascii_lowercase().contains("chunked"),
        "unexpected chunked response: {head}"
    );
    (status, head.to_owned(), body.to_owned())
}

/// Parses the text exposition into samples. Checks the framing a scraper
/// relies on: every sample's family has a TYPE line before it, and the text
/// ends with `# EOF`.
fn parse(text: &str) -> BTreeMap<Series, f64> {
    assert!(text.ends_with("# EOF\n"), "no EOF marker");
    let mut typed: Vec<String> = Vec::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.push(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, parse_labels(labels.strip_suffix('}').unwrap())),
            None => (series, BTreeMap::new()),
        };
        assert!(
            typed.iter().any(|family| name.starts_with(family.as_str())),
            "sample {name} before its TYPE line"
        );
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let previous = samples.insert(
            Series {
                name: name.to_owned(),
                labels,
            },
            value,
        );
        assert!(previous.is_none(), "duplicate sample {line}");
    }
    samples
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").unwrap();
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().unwrap() {
                (_, '\\') => match chars.next().unwrap().1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.insert(name.to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    labels
}

fn scrape(broker: &BrokerProcess) -> BTreeMap<Series, f64> {
    let (status, head, body) = http_get(&broker.metrics_url, "/metrics");
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    parse(&body)
}

/// The value of `name` with exactly `labels`, if the scrape has it.
fn get(samples: &BTreeMap<Series, f64>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .get(&Series {
            name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        })
        .copied()
}

fn value(samples: &BTreeMap<Series, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    get(samples, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in the scrape"))
}

/// Sum of `name` over the samples whose labels include `labels`.
fn sum(samples: &BTreeMap<Series, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(s, _)| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

fn consume_all(consumer: &BaseConsumer, count: usize) {
    let mut seen = 0;
    assert!(
        wait_until(DEADLINE, || {
            while let Some(message) = consumer.poll(Duration::from_millis(50)) {
                message.unwrap();
                seen += 1;
            }
            seen >= count
        }),
        "consumed {seen} of {count}"
    );
}

#[test]
fn counters_and_gauges_follow_the_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let before = scrape(&broker);
    assert_eq!(value(&before, "strom_partitions", &[]), 0.0);
    assert_eq!(
        value(&before, "strom_under_replicated_partitions", &[]),
        0.0
    );
    let produce_requests_before = value(&before, "strom_requests_total", &[("api", "Produce")]);
    assert_eq!(produce_requests_before, 0.0);

    broker.create_topic("orders", 3);
    let producer = broker.producer(&[("acks", "all")]);
    // 100, 120 and 80 records in partitions 0, 1 and 2.
    let per_partition = [100usize, 120, 80];
    for (partition, count) in per_partition.iter().enumerate() {
        for i in 0..*count {
            let payload = format!("order-{partition}-{i:04}");
            producer
                .send(
                    BaseRecord::<str, str>::to("orders")
                        .partition(i32::try_from(partition).unwrap())
                        .payload(&payload),
                )
                .unwrap();
        }
    }
    flush(&producer);

    let after_produce = scrape(&broker);
    assert_eq!(
        value(
            &after_produce,
            "strom_topic_in_messages_total",
            &[("topic", "orders")]
        ),
        300.0
    );
    let bytes_in = value(
        &after_produce,
        "strom_topic_in_bytes_total",
        &[("topic", "orders")],
    );
    assert!(bytes_in > 300.0 * 10.0, "bytes in {bytes_in}");
    assert_eq!(value(&after_produce, "strom_partitions", &[]), 3.0);
    for (partition, count) in per_partition.iter().enumerate() {
        let labels = [("topic", "orders"), ("partition", &*partition.to_string())];
        let expected = f64::from(u32::try_from(*count).unwrap());
        assert_eq!(
            value(&after_produce, "strom_log_end_offset", &labels),
            expected
        );
        assert_eq!(
            value(&after_produce, "strom_high_watermark", &labels),
            expected
        );
        assert_eq!(
            value(&after_produce, "strom_log_start_offset", &labels),
            0.0
        );
        assert!(value(&after_produce, "strom_log_size_bytes", &labels) > 0.0);
        assert_eq!(value(&after_produce, "strom_log_segments", &labels), 1.0);
    }
    let produce_requests = value(
        &after_produce,
        "strom_requests_total",
        &[("api", "Produce")],
    );
    assert!(produce_requests >= 1.0);
    // Every request counted is in the latency histogram, and in its +Inf bucket.
    assert_eq!(
        value(
            &after_produce,
            "strom_request_duration_seconds_count",
            &[("api", "Produce")]
        ),
        produce_requests
    );
    assert_eq!(
        value(
            &after_produce,
            "strom_request_duration_seconds_bucket",
            &[("api", "Produce"), ("le", "+Inf")]
        ),
        produce_requests
    );
    assert!(value(&after_produce, "strom_connections_active", &[]) >= 1.0);
    assert!(value(&after_produce, "strom_connections_accepted_total", &[]) >= 1.0);

    // A consumer reads everything: out counters.
    let consumer = broker.consumer();
    let mut list = TopicPartitionList::new();
    for partition in 0..3 {
        list.add_partition_offset("orders", partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).unwrap();
    consume_all(&consumer, 300);
    let after_consume = scrape(&broker);
    assert!(
        value(
            &after_consume,
            "strom_topic_out_messages_total",
            &[("topic", "orders")]
        ) >= 300.0
    );
    assert!(
        value(
            &after_consume,
            "strom_topic_out_bytes_total",
            &[("topic", "orders")]
        ) >= bytes_in
    );

    // A group commits part of each partition: its lag is the rest.
    let committer: BaseConsumer = broker.group_config("billing").create().unwrap();
    let committed = [40i64, 120, 0];
    let mut offsets = TopicPartitionList::new();
    for (partition, offset) in committed.iter().enumerate() {
        offsets
            .add_partition_offset(
                "orders",
                i32::try_from(partition).unwrap(),
                Offset::Offset(*offset),
            )
            .unwrap();
    }
    committer.commit(&offsets, CommitMode::Sync).unwrap();
    let after_commit = scrape(&broker);
    for (partition, offset) in committed.iter().enumerate() {
        let labels = [
            ("group", "billing"),
            ("topic", "orders"),
            ("partition", &*partition.to_string()),
        ];
        assert_eq!(
            value(&after_commit, "strom_group_committed_offset", &labels),
            *offset as f64
        );
        let end = i64::try_from(per_partition[partition]).unwrap();
        assert_eq!(
            value(&after_commit, "strom_group_lag", &labels),
            (end - offset) as f64,
            "lag of partition {partition}"
        );
    }
    assert_eq!(
        sum(&after_commit, "strom_group_lag", &[("group", "billing")]),
        60.0 + 0.0 + 80.0
    );

    // Clients gone: the connection gauge comes back down.
    drop(producer);
    drop(consumer);
    drop(committer);
    assert!(
        wait_until(DEADLINE, || value(
            &scrape(&broker),
            "strom_connections_active",
            &[]
        ) == 0.0),
        "connections still counted after every client closed"
    );

    // The topic deleted: its series go from the next scrape.
    let (admin, runtime) = broker.admin();
    let result = runtime
        .block_on(admin.delete_topics(&["orders"], &AdminOptions::new()))
        .unwrap();
    assert!(result[0].is_ok(), "{result:?}");
    let after_delete = scrape(&broker);
    let left: Vec<&Series> = after_delete
        .keys()
        .filter(|s| s.labels.get("topic").map(String::as_str) == Some("orders"))
        .collect();
    assert!(left.is_empty(), "series of the deleted topic: {left:?}");
    broker.stop();
}

#[test]
fn a_long_poll_fetch_waits_in_purgatory() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    broker.create_topic("quiet", 1);
    let consumer: BaseConsumer = broker
        .group_config("idle")
        .set("fetch.wait.max.ms", "5000")
        .create()
        .unwrap();
    assign(&consumer, "quiet", 0, 0);
    let mut parked = 0.0;
    assert!(
        wait_until(DEADLINE, || {
            let _ = consumer.poll(Duration::from_millis(10));
            parked = value(
                &scrape(&broker),
                "strom_purgatory_size",
                &[("operation", "Fetch")],
            );
            parked >= 1.0
        }),
        "no fetch in purgatory (saw {parked})"
    );
    // An append wakes it: it leaves purgatory with the record.
    let producer = broker.producer(&[]);
    producer
        .send(BaseRecord::<str, str>::to("quiet").payload("wake"))
        .unwrap();
    flush(&producer);
    assert!(
        wait_until(DEADLINE, || {
            matches!(consumer.poll(Duration::from_millis(50)), Some(Ok(_)))
        }),
        "the parked fetch never returned the record"
    );
    drop(consumer);
    assert!(
        wait_until(DEADLINE, || value(
            &scrape(&broker),
            "strom_purgatory_size",
            &[("operation", "Fetch")]
        ) == 0.0),
        "a fetch stayed in purgatory after its consumer closed"
    );
    broker.stop();
}

#[test]
fn the_listener_answers_only_its_paths_and_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let (status, _, _) = http_get(&broker.metrics_url, "/no-such-page");
    assert!(status.contains(" 404 "), "{status}");
    let (status, _, body) = http_get(&broker.metrics_url, "/");
    assert!(status.contains(" 200 "), "{status}");
    assert!(body.contains("/metrics"), "{body}");
    // Garbage instead of HTTP: the broker answers an error or closes, and
    // goes on serving.
    let host = broker
        .metrics_url
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .unwrap()
        .to_owned();
    let mut garbage = TcpStream::connect(&host).unwrap();
    garbage.set_read_timeout(Some(DEADLINE)).unwrap();
    garbage.write_all(&[0xff; 4096]).unwrap();
    let mut sink = Vec::new();
    let _ = garbage.read_to_end(&mut sink);
    assert!(scrape(&broker).contains_key(&Series {
        name: "strom_partitions".to_owned(),
        labels: BTreeMap::new()
    }));
    broker.stop();

    // metrics.listener set to nothing: no endpoint, said on the second line.
    let off = std::process::Command::new(env!("CARGO_BIN_EXE_strom-e2e"))
        .args([
            "broker",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "",
            "--data-dir",
        ])
        .arg(dir.path().join("off"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut off = KillOnDrop(off);
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(off.0.stdout.take().unwrap()));
    assert!(lines.next().unwrap().unwrap().contains("listening on"));
    assert_eq!(lines.next().unwrap().unwrap(), "Strom broker 1 metrics off");
}

/// A child process killed when the test ends, pass or fail.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
