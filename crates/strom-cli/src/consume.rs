//! `strom consume TOPIC`: records to stdout, as kafka-console-consumer and
//! `kcat -C`, with kcat's format strings.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use serde_json::json;
use strom_client::admin::OffsetSpec;
use strom_client::{Consumer, ConsumerRecord, Offset, TopicPartition};

use crate::group::{end_offsets, parse_time};
use crate::tool::{Common, Output, partitions_of, runtime};

/// How often `--exit-at-end` checks positions while no record comes.
const END_CHECK_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, Args)]
pub(crate) struct ConsumeArgs {
    topic: String,
    /// Join this group (subscribe) and commit what was printed.
    #[arg(long)]
    group: Option<String>,
    /// Start at the beginning (with a group: where it has no commit).
    #[arg(long, conflicts_with_all = ["offset", "from_time"])]
    from_beginning: bool,
    /// Start at this offset (without a group).
    #[arg(long, conflicts_with = "group")]
    offset: Option<i64>,
    /// Start at the first record at or after a time: ms since the epoch or
    /// YYYY-MM-DDTHH:MM:SS[.sss] (UTC); without a group.
    #[arg(long, value_name = "TIME", conflicts_with = "group")]
    from_time: Option<String>,
    /// Only these partitions (without a group); repeatable.
    #[arg(long = "partition", conflicts_with = "group")]
    partitions: Vec<i32>,
    /// kcat's format: %t topic, %p partition, %o offset, %k key, %v value,
    /// %T timestamp, %h headers, %s value size; \n and \t.
    #[arg(long, default_value = "%v\\n")]
    format: String,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Stop once every partition is read to the end it had at start.
    #[arg(long)]
    exit_at_end: bool,
}

fn text(bytes: Option<&[u8]>) -> String {
    bytes.map_or_else(String::new, |b| String::from_utf8_lossy(b).into_owned())
}

/// Renders `record` with a kcat format string.
fn render(format: &str, record: &ConsumerRecord) -> String {
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('%', Some(spec)) => {
                chars.next();
                match spec {
                    't' => out.push_str(&record.topic),
                    'p' => out.push_str(&record.partition.to_string()),
                    'o' => out.push_str(&record.offset.to_string()),
                    'k' => out.push_str(&text(record.key.as_deref())),
                    'v' => out.push_str(&text(record.value.as_deref())),
                    'T' => out.push_str(&record.timestamp.to_string()),
                    's' => out.push_str(&record.value.as_ref().map_or(0, |v| v.len()).to_string()),
                    'h' => out.push_str(
                        &record
                            .headers
                            .iter()
                            .map(|(k, v)| format!("{k}={}", text(v.as_deref())))
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                    '%' => out.push('%'),
                    other => {
                        out.push('%');
                        out.push(other);
                    }
                }
            }
            ('\\', Some('n')) => {
                chars.next();
                out.push('\n');
            }
            ('\\', Some('t')) => {
                chars.next();
                out.push('\t');
            }
            (c, _) => out.push(c),
        }
    }
    out
}

fn json_record(record: &ConsumerRecord) -> serde_json::Value {
    json!({
        "topic": &*record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "key": record.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()),
        "value": record.value.as_deref().map(|v| String::from_utf8_lossy(v).into_owned()),
        "headers": record.headers.iter().map(|(k, v)| json!([k, v.as_deref().map(|v| String::from_utf8_lossy(v).into_owned())])).collect::<Vec<_>>(),
    })
}

pub(crate) fn run(args: ConsumeArgs, common: &Common) -> anyhow::Result<()> {
    let mut defaults = vec![(
        "auto.offset.reset",
        if args.from_beginning {
            "earliest"
        } else {
            "latest"
        },
    )];
    if let Some(group) = &args.group {
        defaults.push(("group.id", group));
        // Commits only what was printed, on the way out.
        defaults.push(("enable.auto.commit", "false"));
    }
    let config = common.config(&defaults)?;
    let rt = runtime()?;
    rt.block_on(async {
        let admin = common.admin()?;
        let mut partitions = partitions_of(&admin, &args.topic).await?;
        if !args.partitions.is_empty() {
            for p in &args.partitions {
                if !partitions.iter().any(|tp| tp.partition == *p) {
                    bail!("topic {} has no partition {p}", args.topic);
                }
            }
            partitions.retain(|tp| args.partitions.contains(&tp.partition));
        }
        let ends: BTreeMap<TopicPartition, i64> = if args.exit_at_end {
            end_offsets(&admin, partitions.iter().cloned(), OffsetSpec::Latest).await?
        } else {
            BTreeMap::new()
        };
        let consumer = Consumer::new(&config)?;
        if args.group.is_some() {
            consumer.subscribe(&[args.topic.as_str()])?;
        } else {
            consumer.assign(&partitions);
            let start = match (args.offset, &args.from_time, args.from_beginning) {
                (Some(o), _, _) => Some(Offset::At(o)),
                (_, Some(t), _) => Some(Offset::Timestamp(parse_time(t)?)),
                (_, _, true) => Some(Offset::Beginning),
                _ => None,
            };
            if let Some(start) = start {
                for tp in &partitions {
                    consumer.seek(tp, start)?;
                }
            }
        }
        let at_end = |consumer: &Consumer| {
            args.exit_at_end
                && ends
                    .iter()
                    .all(|(tp, &end)| end <= 0 || consumer.position(tp).is_some_and(|p| p >= end))
        };
        let mut stdout = std::io::stdout().lock();
        let mut printed = 0u64;
        {
            let mut stream = Box::pin(consumer.stream());
            loop {
                if args.count.is_some_and(|n| printed >= n) || at_end(&consumer) {
                    break;
                }
                let Ok(next) = tokio::time::timeout(END_CHECK_INTERVAL, stream.next()).await else {
                    continue;
                };
                let Some(record) = next else { break };
                let record = record?;
                match common.output {
                    Output::Json => writeln!(stdout, "{}", json_record(&record))?,
                    Output::Table => write!(stdout, "{}", render(&args.format, &record))?,
                }
                printed += 1;
            }
        }
        stdout.flush()?;
        if args.group.is_some() {
            consumer
                .commit_sync()
                .await
                .context("committing the group's offsets")?;
        }
        consumer.close().await?;
        eprintln!("consumed {printed} records");
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::Arc;

    #[test]
    fn kcat_formats_render() {
        let record = ConsumerRecord {
            topic: Arc::from("t"),
            partition: 2,
            offset: 7,
            timestamp: 99,
            timestamp_type: strom_protocol::record_batch::TimestampType::CreateTime,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"value")),
            headers: vec![
                ("a".into(), Some(Bytes::from_static(b"1"))),
                ("b".into(), None),
            ],
        };
        assert_eq!(
            render("%t/%p@%o %k=%v %T [%h] %s 100%%\\n", &record),
            "t/2@7 k=value 99 [a=1,b=] 5 100%\n"
        );
        assert_eq!(render("%x\\t", &record), "%x\t");
    }
}
