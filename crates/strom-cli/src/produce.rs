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
/// The longest input line read: a record this large is beyond any broker's
/// `message.max.bytes` already, and a file without newlines must not be read
/// into memory whole.
const MAX_LINE_BYTES: u64 = 100 * 1024 * 1024;

/// The next line of `input` without its line end, or `None` at the end.
fn next_line(input: &mut dyn BufRead, number: u64) -> anyhow::Result<Option<String>> {
    let mut line = Vec::new();
    let read = std::io::Read::take(input, MAX_LINE_BYTES + 1)
        .read_until(b'\n', &mut line)
        .context("reading input")?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    } else if u64::try_from(line.len()).unwrap_or(u64::MAX) > MAX_LINE_BYTES {
        anyhow::bail!("line {number} is longer than {MAX_LINE_BYTES} bytes");
    }
    String::from_utf8(line)
        .map(Some)
        .with_context(|| format!("line {number} is not UTF-8"))
}

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
    let mut input: Box<dyn BufRead> = match &args.file {
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
        while let Some(line) = next_line(&mut input, count + 1)? {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_end_at_newlines_with_or_without_a_carriage_return() {
        let mut input = std::io::Cursor::new(b"a\r\nb\n\nc".to_vec());
        let mut lines = Vec::new();
        while let Some(line) = next_line(&mut input, 0).unwrap() {
            lines.push(line);
        }
        assert_eq!(lines, ["a", "b", "", "c"]);
        let mut invalid = std::io::Cursor::new(vec![0xff, b'\n']);
        assert!(next_line(&mut invalid, 1).is_err());
    }
}
