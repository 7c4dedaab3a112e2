//! `strom log dump PATH`: a segment's batches (and records), and a check of
//! its offset and time indexes, as Kafka's kafka-dump-log.sh. Reads files
//! only; never trusts them: a bad batch is reported and the dump stops there.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use serde_json::json;
use strom_protocol::record::records;
use strom_protocol::record_batch::{batches, validate_batch};

use crate::tool::Output;

/// The most a batch may decompress to when records are printed; a corrupt
/// or hostile file cannot make the tool allocate more.
const MAX_DECOMPRESSED_BATCH: usize = 256 * 1024 * 1024;

/// The largest segment file read whole (Kafka's largest `segment.bytes` is
/// 2 GiB - 1).
const MAX_SEGMENT_BYTES: u64 = i32::MAX as u64;

#[derive(Debug, Subcommand)]
pub(crate) enum LogCommand {
    /// Print a segment's batches (and records), check its indexes.
    Dump(DumpArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DumpArgs {
    /// A segment's .log file.
    path: PathBuf,
    /// Print every record too.
    #[arg(long)]
    print_records: bool,
    /// Check the .index and .timeindex beside the log against its batches.
    #[arg(long)]
    check_index: bool,
}

fn read_limited(path: &Path) -> anyhow::Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > MAX_SEGMENT_BYTES {
        bail!("{} is {len} bytes, larger than any segment", path.display());
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// The segment's base offset, from its file name.
fn base_offset(path: &Path) -> anyhow::Result<i64> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{} is not named after its base offset", path.display()))
}

pub(crate) fn run(command: LogCommand, output: Output) -> anyhow::Result<()> {
    let LogCommand::Dump(args) = command;
    let data = Bytes::from(read_limited(&args.path)?);
    let mut out = std::io::stdout().lock();
    // Batch start positions and last offsets, for the index check.
    let mut positions: BTreeMap<u32, (i64, i64, i64)> = BTreeMap::new();
    let mut count = 0usize;
    let mut iter = batches(&data);
    let mut failure = None;
    for raw in iter.by_ref() {
        let raw = match raw {
            Ok(raw) => raw,
            Err(e) => {
                failure = Some(format!("at byte {}: {e}", iter.position()));
                break;
            }
        };
        let h = raw.header;
        let crc_ok = validate_batch(raw.bytes).is_ok();
        let position = u32::try_from(raw.position).unwrap_or(u32::MAX);
        positions.insert(position, (h.base_offset, h.last_offset(), h.max_timestamp));
        let codec = h.compression().map_or("unknown", |c| c.name());
        match output {
            Output::Json => writeln!(
                out,
                "{}",
                json!({
                    "position": raw.position, "base_offset": h.base_offset, "last_offset": h.last_offset(),
                    "count": h.record_count, "codec": codec, "base_timestamp": h.base_timestamp,
                    "max_timestamp": h.max_timestamp, "producer_id": h.producer_id,
                    "producer_epoch": h.producer_epoch, "base_sequence": h.base_sequence,
                    "transactional": h.is_transactional(), "control": h.is_control(),
                    "size": raw.bytes.len(), "crc_valid": crc_ok,
                })
            )?,
            Output::Table => writeln!(
                out,
                "baseOffset: {} lastOffset: {} count: {} position: {} size: {} codec: {codec} baseTimestamp: {} maxTimestamp: {} producerId: {} producerEpoch: {} baseSequence: {} isTransactional: {} isControl: {} crcValid: {crc_ok}",
                h.base_offset,
                h.last_offset(),
                h.record_count,
                raw.position,
                raw.bytes.len(),
                h.base_timestamp,
                h.max_timestamp,
                h.producer_id,
                h.producer_epoch,
                h.base_sequence,
                h.is_transactional(),
                h.is_control(),
            )?,
        }
        count += 1;
        if !crc_ok {
            failure = Some(format!(
                "batch at byte {} (offset {}) has a bad CRC",
                raw.position, h.base_offset
            ));
            break;
        }
        if args.print_records {
            let batch = data.slice(raw.position..raw.position + raw.bytes.len());
            let iter = records(&batch, MAX_DECOMPRESSED_BATCH)
                .map_err(|e| anyhow::anyhow!("batch at byte {}: {e}", raw.position))?;
            for record in iter {
                let record =
                    record.map_err(|e| anyhow::anyhow!("batch at byte {}: {e}", raw.position))?;
                let text = |b: Option<&Bytes>| b.map(|b| String::from_utf8_lossy(b).into_owned());
                let headers: Vec<String> = record
                    .headers
                    .iter()
                    .map(|h| format!("{}={}", h.key, text(h.value.as_ref()).unwrap_or_default()))
                    .collect();
                writeln!(
                    out,
                    "| offset: {} timestamp: {} key: {} value: {} headers: [{}]",
                    record.offset(&h),
                    record.timestamp(&h),
                    text(record.key.as_ref()).unwrap_or_else(|| "null".into()),
                    text(record.value.as_ref()).unwrap_or_else(|| "null".into()),
                    headers.join(",")
                )?;
            }
        }
    }
    out.flush()?;
    eprintln!("{count} batches");
    if let Some(failure) = failure {
        bail!("{}: {failure}", args.path.display());
    }
    if args.check_index {
        check_indexes(&args.path, &positions)?;
    }
    Ok(())
}

/// Every offset-index entry names a batch's start and its last offset; every
/// time-index entry a batch's last offset with timestamps not decreasing.
fn check_indexes(log: &Path, positions: &BTreeMap<u32, (i64, i64, i64)>) -> anyhow::Result<()> {
    let base = base_offset(log)?;
    let index = read_limited(&log.with_extension("index"))?;
    if index.len() % 8 != 0 {
        bail!(
            "offset index: {} bytes is not whole 8-byte entries",
            index.len()
        );
    }
    for (i, entry) in index.chunks_exact(8).enumerate() {
        let relative = u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]);
        let position = u32::from_be_bytes([entry[4], entry[5], entry[6], entry[7]]);
        // Saturating: the base offset comes from a file name.
        let offset = base.saturating_add(i64::from(relative));
        match positions.get(&position) {
            Some(&(_, last, _)) if last == offset => {}
            Some(&(first, last, _)) => bail!(
                "offset index entry {i}: offset {offset} at byte {position}, but the batch there holds {first}..={last}"
            ),
            None => bail!("offset index entry {i}: byte {position} is not where a batch starts"),
        }
    }
    let times = read_limited(&log.with_extension("timeindex"))?;
    if times.len() % 12 != 0 {
        bail!(
            "time index: {} bytes is not whole 12-byte entries",
            times.len()
        );
    }
    let last_offsets: BTreeMap<i64, i64> = positions
        .values()
        .map(|&(_, last, ts)| (last, ts))
        .collect();
    let mut previous = i64::MIN;
    for (i, entry) in times.chunks_exact(12).enumerate() {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&entry[..8]);
        let timestamp = i64::from_be_bytes(ts);
        let relative = u32::from_be_bytes([entry[8], entry[9], entry[10], entry[11]]);
        let offset = base.saturating_add(i64::from(relative));
        if !last_offsets.contains_key(&offset) {
            bail!("time index entry {i}: offset {offset} is not a batch's last offset");
        }
        if timestamp < previous {
            bail!("time index entry {i}: timestamp {timestamp} before {previous}");
        }
        previous = timestamp;
    }
    eprintln!(
        "indexes valid: {} offset entries, {} time entries",
        index.len() / 8,
        times.len() / 12
    );
    Ok(())
}
