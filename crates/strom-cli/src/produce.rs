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
    let written = rt.block_on(async {
        let producer = Producer::new(&config)?;
        let mut tally = Tally::default();
        let failure = send_lines(&args, &headers, &mut input, &producer, &mut tally)
            .await
            .err();
        // Whatever was sent before a failure still completes: count it, so
        // that the user knows what the topic holds.
        let flushed = producer.flush().await;
        for delivery in std::mem::take(&mut tally.pending) {
            tally.settle(delivery.await);
        }
        let failure = failure
            .or_else(|| flushed.err().map(anyhow::Error::from))
            .or_else(|| tally.failure.take());
        match failure {
            None => anyhow::Ok(tally.written),
            Some(e) => {
                let written = if args.acks == "0" {
                    "sent (acks=0, not acknowledged)"
                } else {
                    "written (acknowledged)"
                };
                let lost = match tally.sent - tally.written {
                    0 => String::new(),
                    n => format!(", {n} more sent but not written"),
                };
                Err(e.context(format!(
                    "topic {}: {} records {written} before the failure{lost}",
                    args.topic, tally.written
                )))
            }
        }
    })?;
    eprintln!("produced {written} records");
    Ok(())
}

/// What happened to the records handed to the producer.
#[derive(Default)]
struct Tally {
    /// Records handed to the producer.
    sent: u64,
    /// Records the broker acknowledged (sent, for acks=0).
    written: u64,
    /// Deliveries not yet awaited, oldest first.
    pending: VecDeque<DeliveryFuture>,
    /// The first delivery that failed.
    failure: Option<anyhow::Error>,
}

impl Tally {
    fn settle(&mut self, delivery: strom_client::Result<strom_client::RecordMetadata>) {
        match delivery {
            Ok(_) => self.written += 1,
            Err(e) => {
                self.failure.get_or_insert_with(|| e.into());
            }
        }
    }
}

/// Sends a record per input line until the input ends or something fails
/// (a record refused at once, a delivery failed, unreadable input).
async fn send_lines(
    args: &ProduceArgs,
    headers: &[(String, Option<Bytes>)],
    input: &mut dyn BufRead,
    producer: &Producer,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while let Some(line) = next_line(input, tally.sent + 1)? {
        let mut record = ProducerRecord::new(&args.topic);
        record.headers = headers.to_vec();
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
            let due = start + Duration::from_secs_f64(tally.sent as f64 / f64::from(rate));
            tokio::time::sleep_until(due.into()).await;
        }
        tally.pending.push_back(producer.send(record).await?);
        tally.sent += 1;
        while tally.pending.len() > MAX_PENDING {
            if let Some(delivery) = tally.pending.pop_front() {
                tally.settle(delivery.await);
            }
        }
        if let Some(e) = tally.failure.take() {
            return Err(e);
        }
    }
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
