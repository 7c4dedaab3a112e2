//! `strom produce TOPIC`: one record per input line, as kafka-console-producer
//! and `kcat -P`.

use std::collections::VecDeque;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use strom_client::{DeliveryFuture, Producer, ProducerRecord};

use crate::tool::{Common, key_value, runtime};

/// Deliveries awaited at once: enough to keep batches full, bounded so a
/// long input does not hold every pending record's future.
const MAX_PENDING: usize = 10_000;

#[derive(Debug, Args)]
pub(crate) struct ProduceArgs {
    topic: String,
    /// Read lines from this file instead of stdin.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Split each line at the first SEP into key and value.
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
    /// A header KEY=VALUE on every record; repeatable.
    #[arg(long = "header", value_name = "KEY=VALUE")]
    headers: Vec<String>,
    /// Write every record to this partition.
    #[arg(long)]
    partition: Option<i32>,
    /// At most this many records per second.
    #[arg(long, value_name = "N")]
    rate: Option<u32>,
    /// acks: all, 1 or 0.
    #[arg(long, default_value = "all")]
    acks: String,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    compression: String,
}

pub(crate) fn run(args: ProduceArgs, common: &Common) -> anyhow::Result<()> {
    let config = common.config(&[
        ("acks", &args.acks),
        ("compression.type", &args.compression),
        // Fail in seconds when the topic is missing or the broker is gone.
        ("max.block.ms", "10000"),
        ("delivery.timeout.ms", "30000"),
    ])?;
    let headers: Vec<(String, Option<Bytes>)> = args
        .headers
        .iter()
        .map(|kv| key_value(kv).map(|(k, v)| (k, Some(Bytes::from(v)))))
        .collect::<anyhow::Result<_>>()?;
    let input: Box<dyn BufRead> = match &args.file {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let rt = runtime()?;
    let count = rt.block_on(async {
        let producer = Producer::new(&config)?;
        let mut pending: VecDeque<DeliveryFuture> = VecDeque::new();
        let start = Instant::now();
        let mut count = 0u64;
        for line in input.lines() {
            let line = line.context("reading input")?;
            let mut record = ProducerRecord::new(&args.topic);
            record.headers.clone_from(&headers);
            record.partition = args.partition;
            match args
                .key_separator
                .as_deref()
                .and_then(|sep| line.split_once(sep))
            {
                Some((key, value)) => {
                    record.key = Some(Bytes::from(key.to_owned()));
                    record.value = Some(Bytes::from(value.to_owned()));
                }
                None => record.value = Some(Bytes::from(line)),
            }
            if let Some(rate) = args.rate.filter(|&r| r > 0) {
                // Pacing, not synchronisation: the record's due time.
                let due = start + Duration::from_secs_f64(count as f64 / f64::from(rate));
                tokio::time::sleep_until(due.into()).await;
            }
            pending.push_back(
                producer
                    .send(record)
                    .await
                    .with_context(|| format!("topic {}", args.topic))?,
            );
            count += 1;
            while pending.len() > MAX_PENDING {
                if let Some(delivery) = pending.pop_front() {
                    delivery
                        .await
                        .with_context(|| format!("topic {}", args.topic))?;
                }
            }
        }
        producer.flush().await?;
        for delivery in pending {
            delivery
                .await
                .with_context(|| format!("topic {}", args.topic))?;
        }
        anyhow::Ok(count)
    })?;
    eprintln!("produced {count} records");
    Ok(())
}
