//! `strom perf produce|consume`: load generators like Kafka's
//! kafka-producer-perf-test and kafka-consumer-perf-test, with a progress
//! line on stderr and a summary (JSON with `--output json`).

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand};
use serde_json::json;
use strom_client::{Consumer, DeliveryFuture, Offset, Producer, ProducerRecord};
use tokio::sync::mpsc;

use crate::tool::{Common, Output, partitions_of, print_json, runtime};

/// Deliveries in flight between the sender and the latency collector: the
/// producer's own `buffer.memory` bounds the records, this bounds the queue.
const MAX_TRACKED_DELIVERIES: usize = 100_000;

/// Latencies kept for the percentiles (8 MB): past this many records, every
/// n-th record's is kept, as Kafka's producer-perf-test samples; the maximum
/// is exact.
const MAX_LATENCY_SAMPLES: u64 = 1_000_000;

/// How often the progress line is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Subcommand)]
pub(crate) enum PerfCommand {
    /// Produce records as fast as possible (or at --throughput) and report
    /// throughput and delivery latency percentiles.
    Produce(ProduceArgs),
    /// Consume records from the beginning and report throughput.
    Consume(ConsumeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ProduceArgs {
    #[arg(long)]
    topic: String,
    #[arg(long, value_name = "N")]
    num_records: u64,
    /// Bytes of each record's value.
    #[arg(long, value_name = "BYTES")]
    record_size: usize,
    /// Records per second at most (unlimited when not given).
    #[arg(long, value_name = "N")]
    throughput: Option<u64>,
    #[arg(long, default_value = "all")]
    acks: String,
}

#[derive(Debug, Args)]
pub(crate) struct ConsumeArgs {
    #[arg(long)]
    topic: String,
    /// Records to read.
    #[arg(long, value_name = "N")]
    messages: u64,
}

fn progress(label: &str, count: u64, total: u64, bytes: u64, start: Instant) {
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    eprint!(
        "\r{label} {count}/{total} records ({:.0}%), {:.0} records/s, {:.1} MB/s   ",
        count as f64 * 100.0 / total.max(1) as f64,
        count as f64 / secs,
        bytes as f64 / secs / 1e6,
    );
}

/// p50, p99, p99.9 of the sampled `micros` and the exact `max_micros`, in ms.
fn percentiles(micros: &mut [u64], max_micros: u64) -> [f64; 4] {
    micros.sort_unstable();
    let at = |permille: usize| {
        micros
            .get((micros.len() * permille / 1000).min(micros.len().saturating_sub(1)))
            .map_or(0.0, |&v| v as f64 / 1000.0)
    };
    [at(500), at(990), at(999), max_micros as f64 / 1000.0]
}

#[allow(clippy::print_stdout, reason = "the tool's output")]
pub(crate) fn run(command: PerfCommand, common: &Common) -> anyhow::Result<()> {
    let rt = runtime()?;
    match command {
        PerfCommand::Produce(args) => {
            let config = common.config(&[("acks", &args.acks), ("max.block.ms", "10000")])?;
            let (count, bytes, secs, latency) = rt.block_on(async {
                let producer = Producer::new(&config)?;
                let (tx, mut rx) =
                    mpsc::channel::<(Instant, DeliveryFuture)>(MAX_TRACKED_DELIVERIES);
                let sample_every = args.num_records.div_ceil(MAX_LATENCY_SAMPLES).max(1);
                let collector = tokio::spawn(async move {
                    let mut micros = Vec::new();
                    let (mut delivered, mut max_micros) = (0u64, 0u64);
                    let mut failure = None;
                    while let Some((sent, delivery)) = rx.recv().await {
                        match delivery.await {
                            Ok(_) => {
                                let latency =
                                    u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                                max_micros = max_micros.max(latency);
                                if delivered % sample_every == 0 {
                                    micros.push(latency);
                                }
                                delivered += 1;
                            }
                            Err(e) => failure = failure.or(Some(e)),
                        }
                    }
                    (micros, max_micros, failure)
                });
                let payload = Bytes::from(vec![b'x'; args.record_size]);
                let start = Instant::now();
                let mut last_progress = start;
                for i in 0..args.num_records {
                    if let Some(rate) = args.throughput.filter(|&r| r > 0) {
                        // Pacing: the record's due time.
                        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let record = ProducerRecord::new(&args.topic).value(payload.clone());
                    let sent = Instant::now();
                    let delivery = producer
                        .send(record)
                        .await
                        .with_context(|| format!("topic {}", args.topic))?;
                    tx.send((sent, delivery))
                        .await
                        .context("the latency collector stopped")?;
                    if last_progress.elapsed() >= PROGRESS_INTERVAL {
                        last_progress = Instant::now();
                        progress(
                            "produced",
                            i,
                            args.num_records,
                            i * args.record_size as u64,
                            start,
                        );
                    }
                }
                producer.flush().await?;
                drop(tx);
                let (mut micros, max_micros, failure) = collector.await?;
                let secs = start.elapsed().as_secs_f64();
                if let Some(error) = failure {
                    return Err(anyhow::Error::from(error).context("a record was not delivered"));
                }
                let bytes = args.num_records * args.record_size as u64;
                progress("produced", args.num_records, args.num_records, bytes, start);
                eprintln!();
                anyhow::Ok((
                    args.num_records,
                    bytes,
                    secs,
                    percentiles(&mut micros, max_micros),
                ))
            })?;
            let [p50, p99, p999, max] = latency;
            match common.output {
                Output::Json => print_json(&json!({
                    "records": count, "bytes": bytes, "seconds": secs,
                    "records_per_sec": count as f64 / secs, "mb_per_sec": bytes as f64 / secs / 1e6,
                    "latency_ms": {"p50": p50, "p99": p99, "p99_9": p999, "max": max},
                })),
                Output::Table => println!(
                    "{count} records sent, {:.0} records/s ({:.2} MB/s), latency ms: p50 {p50:.1}, p99 {p99:.1}, p99.9 {p999:.1}, max {max:.1}",
                    count as f64 / secs,
                    bytes as f64 / secs / 1e6
                ),
            }
        }
        PerfCommand::Consume(args) => {
            let config = common.config(&[("auto.offset.reset", "earliest")])?;
            let (count, bytes, secs) = rt.block_on(async {
                let admin = common.admin()?;
                let partitions = partitions_of(&admin, &args.topic).await?;
                let consumer = Consumer::new(&config)?;
                consumer.assign(&partitions);
                for tp in &partitions {
                    consumer.seek(tp, Offset::Beginning)?;
                }
                let start = Instant::now();
                let mut last_progress = start;
                let (mut count, mut bytes) = (0u64, 0u64);
                while count < args.messages {
                    let records = consumer.poll(Duration::from_secs(10)).await?;
                    anyhow::ensure!(
                        !records.is_empty(),
                        "no records for 10 s after {count} of {}",
                        args.messages
                    );
                    for r in &records {
                        bytes += r.value.as_ref().map_or(0, |v| v.len() as u64);
                    }
                    count += records.len() as u64;
                    if last_progress.elapsed() >= PROGRESS_INTERVAL {
                        last_progress = Instant::now();
                        progress("consumed", count, args.messages, bytes, start);
                    }
                }
                let secs = start.elapsed().as_secs_f64();
                progress("consumed", count, args.messages, bytes, start);
                eprintln!();
                anyhow::Ok((count, bytes, secs))
            })?;
            match common.output {
                Output::Json => print_json(&json!({
                    "records": count, "bytes": bytes, "seconds": secs,
                    "records_per_sec": count as f64 / secs, "mb_per_sec": bytes as f64 / secs / 1e6,
                })),
                Output::Table => println!(
                    "{count} records read, {:.0} records/s ({:.2} MB/s)",
                    count as f64 / secs,
                    bytes as f64 / secs / 1e6
                ),
            }
        }
    }
    Ok(())
}
