//! strom-streams' throughput against a hand-written strom-client loop, in
//! one run on one broker (issue 20's benchmark):
//!
//! - **loop**: consume, upper-case the value, drop values starting with `#`
//!   (none do), produce: the baseline;
//! - **stateless**: the same as a topology (`map_values` + `filter`);
//! - **count**: `group_by_key().count()` over `--keys` keys, every update
//!   written (no record cache yet: Kafka's `statestore.cache.max.bytes=0`);
//! - **raw-consume** of the count's changelog, and **restore**: a new
//!   instance restoring the same store from it, timed by a
//!   `StateRestoreListener` from the first partition's start to the last
//!   one's end (and, as `restore+start`, from `start()` until every key is
//!   queryable, the group join included).
//!
//! Each round runs every case on fresh output topics and application ids;
//! the figures are records per second from the start of the case until
//! the output topic holds every record (group joins included in all cases),
//! printed per round and as median (min–max) over the rounds.
//!
//! ```text
//! strom broker --set group.initial.rebalance.delay.ms=0 &
//! cargo run --release -p strom-streams --example streams_bench -- \
//!     --bootstrap 127.0.0.1:9092 --records 500000 --rounds 3
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use strom_client::admin::{IsolationLevel, NewTopic, OffsetSpec};
use strom_client::{
    Admin, ClientConfig, Consumer, Offset, Producer, ProducerRecord, TopicPartition,
};
use strom_streams::dsl::{Consumed, Materialized, Produced, StreamsBuilder};
use strom_streams::serdes::{I64Serde, StringSerde};
use strom_streams::{KafkaStreams, StateRestoreListener, StreamsConfig, StreamsError, Topology};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Parser)]
#[command(about = "strom-streams against a hand-written consume-transform-produce loop")]
struct Args {
    #[arg(long)]
    bootstrap: String,
    /// Input records (100-byte values unless --value-size).
    #[arg(long, default_value_t = 500_000)]
    records: usize,
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Distinct keys of the count.
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// How long one case may take before the bench gives up.
const CASE_DEADLINE: Duration = Duration::from_secs(600);

fn client(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

async fn create(admin: &Admin, topic: &str, partitions: i32) -> Result<(), BoxError> {
    for (name, result) in admin
        .create_topics(&[NewTopic::new(topic, partitions, -1)], false)
        .await
    {
        result.map_err(|e| format!("creating {name}: {e}"))?;
    }
    Ok(())
}

/// The sum of `topic`'s end offsets.
async fn end_offsets(admin: &Admin, topic: &str, partitions: i32) -> Result<i64, BoxError> {
    let specs: BTreeMap<TopicPartition, OffsetSpec> = (0..partitions)
        .map(|p| (TopicPartition::new(topic, p), OffsetSpec::Latest))
        .collect();
    let mut sum = 0;
    for (tp, listed) in admin
        .list_offsets(&specs, IsolationLevel::ReadUncommitted)
        .await
    {
        sum += listed
            .map_err(|e| format!("end offset of {}-{}: {e}", tp.topic, tp.partition))?
            .offset;
    }
    Ok(sum)
}

/// Waits until `topic` holds `count` records; returns the time since `start`.
async fn until_written(
    admin: &Admin,
    topic: &str,
    partitions: i32,
    count: usize,
    start: Instant,
) -> Result<Duration, BoxError> {
    let want = i64::try_from(count)?;
    loop {
        if end_offsets(admin, topic, partitions).await? >= want {
            return Ok(start.elapsed());
        }
        if start.elapsed() > CASE_DEADLINE {
            return Err(format!("{topic} did not reach {count} records").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn produce_input(args: &Args, topic: &str) -> Result<Duration, BoxError> {
    let mut config = client(&args.bootstrap);
    config.set("linger.ms", "5").set("batch.size", "262144");
    let producer = Producer::new(&config)?;
    let filler = "x".repeat(args.value_size.saturating_sub(12));
    let start = Instant::now();
    let mut pending = Vec::new();
    for i in 0..args.records {
        let record = ProducerRecord::new(topic)
            .key(Bytes::from(format!("key-{}", i % args.keys)))
            .value(Bytes::from(format!("{i:>12}{filler}")));
        pending.push(producer.send(record).await?);
        if pending.len() >= 10_000 {
            for delivery in pending.drain(..) {
                delivery.await?;
            }
        }
    }
    producer.flush().await?;
    for delivery in pending {
        delivery.await?;
    }
    producer.close().await?;
    Ok(start.elapsed())
}

fn transform(value: &str) -> Option<String> {
    let upper = value.to_uppercase();
    (!upper.starts_with('#')).then_some(upper)
}

/// The baseline: one strom-client consumer and producer, the same work as
/// the stateless topology, committing at the end.
async fn hand_loop(args: &Args, input: &str, output: &str, group: &str) -> Result<(), BoxError> {
    let mut config = client(&args.bootstrap);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("max.poll.records", "1000");
    let consumer = Consumer::new(&config)?;
    consumer.subscribe(&[input])?;
    let mut config = client(&args.bootstrap);
    config.set("linger.ms", "100");
    let producer = Producer::new(&config)?;
    let mut seen = 0;
    let mut offsets: BTreeMap<TopicPartition, i64> = BTreeMap::new();
    let mut pending = Vec::new();
    let start = Instant::now();
    while seen < args.records {
        for record in consumer.poll(Duration::from_millis(100)).await? {
            seen += 1;
            offsets.insert(
                TopicPartition::new(&record.topic, record.partition),
                record.offset + 1,
            );
            let Some(value) = record.value.as_deref().map(String::from_utf8_lossy) else {
                continue;
            };
            if let Some(out) = transform(&value) {
                let mut produced = ProducerRecord::new(output).value(Bytes::from(out));
                produced.key = record.key;
                produced.timestamp = Some(record.timestamp);
                pending.push(producer.send(produced).await?);
            }
        }
        if start.elapsed() > CASE_DEADLINE {
            return Err("the loop did not consume every record".into());
        }
    }
    producer.flush().await?;
    for delivery in pending {
        delivery.await?;
    }
    consumer.commit_offsets(&offsets).await?;
    producer.close().await?;
    consumer.close().await?;
    Ok(())
}

fn stateless(input: &str, output: &str) -> Result<Topology, BoxError> {
    let builder = StreamsBuilder::new();
    builder
        .stream(&[input], Consumed::with(StringSerde, StringSerde))
        .map_values(|v: String| v.to_uppercase())
        .filter(|_k, v| !v.starts_with('#'))
        .to(output, Produced::with(StringSerde, StringSerde));
    Ok(builder.build()?)
}

fn count(input: &str, output: &str) -> Result<Topology, BoxError> {
    let builder = StreamsBuilder::new();
    builder
        .stream(&[input], Consumed::with(StringSerde, StringSerde))
        .group_by_key()
        .count(Materialized::as_("counts", StringSerde, I64Serde))
        .to_stream()
        .to(output, Produced::with(StringSerde, I64Serde));
    Ok(builder.build()?)
}

fn streams_config(args: &Args, app: &str) -> Result<StreamsConfig, StreamsError> {
    StreamsConfig::from_properties([
        ("application.id", app),
        ("bootstrap.servers", args.bootstrap.as_str()),
    ])
}

/// Runs `topology` until `output` holds `count` records.
async fn run_streams(
    args: &Args,
    topology: Topology,
    app: &str,
    admin: &Admin,
    output: &str,
    count: usize,
) -> Result<Duration, BoxError> {
    let start = Instant::now();
    let mut streams = KafkaStreams::new(topology, streams_config(args, app)?);
    streams.start().await?;
    let elapsed = until_written(admin, output, args.partitions, count, start).await;
    streams.close().await?;
    elapsed
}

/// Reads a topic from the beginning to its end with a group-less consumer.
async fn raw_consume(args: &Args, topic: &str) -> Result<(Duration, usize), BoxError> {
    let mut config = client(&args.bootstrap);
    config
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    let consumer = Consumer::new(&config)?;
    let admin = Admin::new(&client(&args.bootstrap))?;
    let partitions: Vec<TopicPartition> = (0..args.partitions)
        .map(|p| TopicPartition::new(topic, p))
        .collect();
    let specs: BTreeMap<TopicPartition, OffsetSpec> = partitions
        .iter()
        .map(|tp| (tp.clone(), OffsetSpec::Latest))
        .collect();
    let mut ends = BTreeMap::new();
    for (tp, listed) in admin
        .list_offsets(&specs, IsolationLevel::ReadUncommitted)
        .await
    {
        ends.insert(tp, listed?.offset);
    }
    let start = Instant::now();
    consumer.assign(&partitions);
    for tp in &partitions {
        consumer.seek(tp, Offset::Beginning)?;
    }
    let mut read = 0usize;
    // Done when every position reached its end (a compacted changelog
    // holds fewer records than its end offset).
    while partitions
        .iter()
        .any(|tp| consumer.position(tp).unwrap_or(0) < ends.get(tp).copied().unwrap_or(0))
    {
        read += consumer.poll(Duration::from_millis(100)).await?.len();
        if start.elapsed() > CASE_DEADLINE {
            return Err(format!("read {read} records of {topic}, not to its end").into());
        }
    }
    let elapsed = start.elapsed();
    consumer.close().await?;
    Ok((elapsed, read))
}

/// Times a restoration: from the first partition's start to the last
/// partition's end, as the stream thread reports them.
#[derive(Default)]
struct RestoreTimer {
    times: std::sync::Mutex<(Option<Instant>, Option<Instant>, u64)>,
}

impl StateRestoreListener for RestoreTimer {
    fn on_restore_start(&self, _: &TopicPartition, _: &str, _: i64, _: i64) {
        let mut times = self
            .times
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        times.0.get_or_insert_with(Instant::now);
    }

    fn on_restore_end(&self, _: &TopicPartition, _: &str, total: u64) {
        let mut times = self
            .times
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        times.1 = Some(Instant::now());
        times.2 += total;
    }
}

/// A new instance of the count application restores its store; returns
/// the time from `start` until every key is queryable, and the time the
/// restoration itself took with the records it restored.
async fn restore(
    args: &Args,
    input: &str,
    app: &str,
    output: &str,
) -> Result<(Duration, Duration, u64), BoxError> {
    let timer = std::sync::Arc::new(RestoreTimer::default());
    let start = Instant::now();
    let mut streams = KafkaStreams::new(count(input, output)?, streams_config(args, app)?);
    streams.set_global_state_restore_listener(timer.clone())?;
    streams.start().await?;
    let want = u64::try_from(args.keys)?;
    let elapsed = loop {
        let entries = streams
            .store::<String, i64>("counts")
            .and_then(|s| s.approximate_num_entries());
        // Stores are queryable once every task is restored.
        if matches!(entries, Ok(n) if n >= want) {
            break start.elapsed();
        }
        if start.elapsed() > CASE_DEADLINE {
            return Err(format!("restoration did not finish: {entries:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    streams.close().await?;
    let (first, last, total) = *timer
        .times
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let restoring = match (first, last) {
        (Some(first), Some(last)) => last.duration_since(first),
        _ => return Err("the restore listener saw no restoration".into()),
    };
    Ok((elapsed, restoring, total))
}

fn rate(records: usize, elapsed: Duration) -> f64 {
    records as f64 / elapsed.as_secs_f64()
}

/// `median (min–max)` of `values`, with `decimals` decimals.
fn summary(values: &[f64], decimals: usize) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let (median, min, max) = (
        sorted[sorted.len() / 2],
        sorted[0],
        sorted[sorted.len() - 1],
    );
    format!("{median:>10.decimals$} ({min:.decimals$}–{max:.decimals$})")
}

async fn run(args: Args) -> Result<(), BoxError> {
    let admin = Admin::new(&client(&args.bootstrap))?;
    let run_id = std::process::id();
    let input = format!("bench-in-{run_id}");
    create(&admin, &input, args.partitions).await?;
    let produced = produce_input(&args, &input).await?;
    eprintln!(
        "input: {} records of {} B, {} keys, {} partitions, produced at {:.0} records/s",
        args.records,
        args.value_size,
        args.keys,
        args.partitions,
        rate(args.records, produced)
    );
    let mut results: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 0..args.rounds {
        let tag = format!("{run_id}-{round}");

        let output = format!("bench-loop-out-{tag}");
        create(&admin, &output, args.partitions).await?;
        let start = Instant::now();
        let worker = {
            let (input, output, group) =
                (input.clone(), output.clone(), format!("bench-loop-{tag}"));
            let args = Args {
                bootstrap: args.bootstrap.clone(),
                ..args
            };
            tokio::spawn(async move { hand_loop(&args, &input, &output, &group).await })
        };
        let elapsed = until_written(&admin, &output, args.partitions, args.records, start).await?;
        worker.await??;
        let looped = rate(args.records, elapsed);

        let output = format!("bench-stateless-out-{tag}");
        create(&admin, &output, args.partitions).await?;
        let app = format!("bench-stateless-{tag}");
        let elapsed = run_streams(
            &args,
            stateless(&input, &output)?,
            &app,
            &admin,
            &output,
            args.records,
        )
        .await?;
        let stateless_rate = rate(args.records, elapsed);

        let output = format!("bench-count-out-{tag}");
        create(&admin, &output, args.partitions).await?;
        let app = format!("bench-count-{tag}");
        let elapsed = run_streams(
            &args,
            count(&input, &output)?,
            &app,
            &admin,
            &output,
            args.records,
        )
        .await?;
        let count_rate = rate(args.records, elapsed);

        let changelog = format!("{app}-counts-changelog");
        let (elapsed, read) = raw_consume(&args, &changelog).await?;
        let raw_rate = rate(read, elapsed);
        let (elapsed, restoring, restored) = restore(&args, &input, &app, &output).await?;
        let restore_rate = rate(read, elapsed);
        let restoring_rate = rate(usize::try_from(restored)?, restoring);

        eprintln!(
            "round {round}: loop {looped:.0}/s, stateless {stateless_rate:.0}/s ({:.2}), count {count_rate:.0}/s ({:.2}), raw consume {raw_rate:.0}/s, restore {restoring_rate:.0}/s ({:.2}; {restore_rate:.0}/s from start, join included)",
            stateless_rate / looped,
            count_rate / looped,
            restoring_rate / raw_rate
        );
        results.entry("loop").or_default().push(looped);
        results.entry("stateless").or_default().push(stateless_rate);
        results
            .entry("stateless/loop")
            .or_default()
            .push(stateless_rate / looped);
        results.entry("count").or_default().push(count_rate);
        results
            .entry("count/loop")
            .or_default()
            .push(count_rate / looped);
        results.entry("raw consume").or_default().push(raw_rate);
        results.entry("restore").or_default().push(restoring_rate);
        results
            .entry("restore/raw")
            .or_default()
            .push(restoring_rate / raw_rate);
        results
            .entry("restore+start")
            .or_default()
            .push(restore_rate);
    }
    let mut out = String::from("case            median (min–max) over rounds\n");
    for (case, rates) in &results {
        if case.contains('/') {
            out.push_str(&format!("{case:<15} {}\n", summary(rates, 2)));
        } else {
            out.push_str(&format!("{case:<15} {} records/s\n", summary(rates, 0)));
        }
    }
    use std::io::Write;
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.rounds == 0 || args.records == 0 || args.keys == 0 || args.partitions < 1 {
        eprintln!("streams_bench: --rounds, --records, --keys and --partitions must be positive");
        return ExitCode::FAILURE;
    }
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("streams_bench: {e}");
            ExitCode::FAILURE
        }
    }
}
