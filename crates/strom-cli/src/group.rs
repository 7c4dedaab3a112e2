//! `strom group list|describe|delete|reset-offsets`, as Kafka's
//! kafka-consumer-groups.sh: describe shows each partition's committed
//! offset, log end offset and lag; reset-offsets is a dry run unless
//! `--execute`.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, bail};
use clap::{ArgGroup, Args, Subcommand};
use serde_json::json;
use strom_client::TopicPartition;
use strom_client::admin::{Admin, CommittedOffset, IsolationLevel, OffsetSpec};

use crate::tool::{Common, Output, print_json, print_table, runtime};

#[derive(Debug, Subcommand)]
pub(crate) enum GroupCommand {
    /// List groups.
    List,
    /// Members, and per partition the committed offset, log end offset and lag.
    Describe { group: String },
    /// Delete groups (only empty ones).
    Delete {
        #[arg(required = true)]
        groups: Vec<String>,
    },
    /// Move a group's committed offsets; a dry run unless --execute.
    ResetOffsets(ResetArgs),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("to").required(true).args(["to_earliest", "to_latest", "to_datetime", "to_offset", "shift_by"])))]
pub(crate) struct ResetArgs {
    group: String,
    /// Topics whose partitions to reset; repeatable.
    #[arg(long = "topic", required = true)]
    topics: Vec<String>,
    #[arg(long)]
    to_earliest: bool,
    #[arg(long)]
    to_latest: bool,
    /// The first record at or after a time: ms since the epoch or
    /// YYYY-MM-DDTHH:MM:SS[.sss] (UTC).
    #[arg(long, value_name = "TIME")]
    to_datetime: Option<String>,
    #[arg(long, value_name = "OFFSET")]
    to_offset: Option<i64>,
    /// Move each committed offset by N (negative: back).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    shift_by: Option<i64>,
    /// Commit the new offsets (otherwise only show them).
    #[arg(long)]
    execute: bool,
}

#[allow(clippy::print_stdout, reason = "the tool's output")]
pub(crate) fn run(command: GroupCommand, common: &Common) -> anyhow::Result<()> {
    let rt = runtime()?;
    let admin = rt.block_on(async { common.admin() })?;
    match command {
        GroupCommand::List => {
            let mut groups = rt.block_on(admin.list_groups())?;
            groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
            match common.output {
                Output::Json => print_json(&json!(
                    groups
                        .iter()
                        .map(|g| json!({
                            "group": g.group_id, "state": g.state, "type": g.group_type,
                            "protocol_type": g.protocol_type,
                        }))
                        .collect::<Vec<_>>()
                )),
                Output::Table => print_table(
                    &["GROUP", "STATE", "TYPE"],
                    &groups
                        .iter()
                        .map(|g| {
                            vec![
                                g.group_id.clone(),
                                g.state.clone().unwrap_or_default(),
                                g.group_type.clone().unwrap_or_default(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
        }
        GroupCommand::Describe { group } => rt.block_on(describe(&admin, &group, common.output))?,
        GroupCommand::Delete { groups } => {
            let names: Vec<&str> = groups.iter().map(String::as_str).collect();
            for (name, result) in rt.block_on(admin.delete_groups(&names)) {
                result.with_context(|| format!("group {name}"))?;
                if common.output == Output::Table {
                    println!("deleted group {name}");
                }
            }
        }
        GroupCommand::ResetOffsets(args) => rt.block_on(reset(&admin, &args, common.output))?,
    }
    Ok(())
}

/// The log end offsets of `partitions`.
pub(crate) async fn end_offsets(
    admin: &Admin,
    partitions: impl IntoIterator<Item = TopicPartition>,
    spec: OffsetSpec,
) -> anyhow::Result<BTreeMap<TopicPartition, i64>> {
    let specs: BTreeMap<TopicPartition, OffsetSpec> =
        partitions.into_iter().map(|tp| (tp, spec)).collect();
    let mut out = BTreeMap::new();
    for (tp, result) in admin
        .list_offsets(&specs, IsolationLevel::ReadUncommitted)
        .await
    {
        let listed = result.with_context(|| format!("offsets of {}-{}", tp.topic, tp.partition))?;
        out.insert(tp, listed.offset);
    }
    Ok(out)
}

async fn describe(admin: &Admin, group: &str, output: Output) -> anyhow::Result<()> {
    let description = admin
        .describe_groups(&[group])
        .await
        .remove(group)
        .context("no answer")?
        .with_context(|| format!("group {group}"))?;
    let committed = admin
        .list_group_offsets(group, None)
        .await
        .with_context(|| format!("offsets of group {group}"))?;
    if description.state == "Dead" && committed.is_empty() {
        bail!("group {group} does not exist");
    }
    // Who holds each partition.
    let mut owners = BTreeMap::new();
    for m in &description.members {
        for (topic, partitions) in &m.assignment {
            for &p in partitions {
                owners.insert(TopicPartition::new(topic, p), m);
            }
        }
    }
    let partitions: BTreeSet<TopicPartition> = committed
        .keys()
        .cloned()
        .chain(owners.keys().cloned())
        .collect();
    let ends = end_offsets(admin, partitions.iter().cloned(), OffsetSpec::Latest).await?;
    let mut rows = Vec::new();
    let mut json_partitions = Vec::new();
    let mut total_lag = 0i64;
    for tp in &partitions {
        let current = committed.get(tp).cloned().flatten().map(|c| c.offset);
        let end = ends.get(tp).copied();
        let lag = match (current, end) {
            (Some(c), Some(e)) => Some(e.saturating_sub(c).max(0)),
            _ => None,
        };
        total_lag = total_lag.saturating_add(lag.unwrap_or(0));
        let owner = owners.get(tp);
        let show = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        rows.push(vec![
            group.to_owned(),
            tp.topic.clone(),
            tp.partition.to_string(),
            show(current),
            show(end),
            show(lag),
            owner.map_or_else(|| "-".to_owned(), |m| m.member_id.clone()),
            owner.map_or_else(|| "-".to_owned(), |m| m.client_host.clone()),
            owner.map_or_else(|| "-".to_owned(), |m| m.client_id.clone()),
        ]);
        json_partitions.push(json!({
            "topic": tp.topic, "partition": tp.partition,
            "current_offset": current, "log_end_offset": end, "lag": lag,
            "member_id": owner.map(|m| m.member_id.clone()),
        }));
    }
    match output {
        Output::Json => print_json(&json!({
            "group": group,
            "state": description.state,
            "type": description.group_type,
            "protocol": description.protocol,
            "members": description.members.iter().map(|m| json!({
                "member_id": m.member_id, "client_id": m.client_id, "host": m.client_host,
                "group_instance_id": m.group_instance_id, "assignment": m.assignment,
            })).collect::<Vec<_>>(),
            "partitions": json_partitions,
            "total_lag": total_lag,
        })),
        Output::Table => {
            print_table(
                &[
                    "GROUP",
                    "TOPIC",
                    "PARTITION",
                    "CURRENT-OFFSET",
                    "LOG-END-OFFSET",
                    "LAG",
                    "CONSUMER-ID",
                    "HOST",
                    "CLIENT-ID",
                ],
                &rows,
            );
            #[allow(clippy::print_stdout, reason = "the tool's output")]
            {
                println!();
                println!(
                    "group {group}: state {}, {} members, total lag {total_lag}",
                    description.state,
                    description.members.len()
                );
            }
        }
    }
    Ok(())
}

/// Milliseconds since the epoch from digits or YYYY-MM-DDTHH:MM:SS[.sss]
/// (UTC; a trailing Z is allowed).
pub(crate) fn parse_time(text: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let bad =
        || anyhow::anyhow!("{text:?} is neither ms since the epoch nor YYYY-MM-DDTHH:MM:SS[.sss]");
    let text = text.strip_suffix('Z').unwrap_or(text);
    let (date, time) = text.split_once('T').ok_or_else(bad)?;
    let d: Vec<i64> = date
        .split('-')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let (hms, millis) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms
        .split(':')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let ms: i64 = format!("{millis:0<3}")
        .get(..3)
        .ok_or_else(bad)?
        .parse()
        .map_err(|_| bad())?;
    let (&[y, m, day], &[hh, mm, ss]) = (d.as_slice(), t.as_slice()) else {
        return Err(bad());
    };
    // Years past 9999 would overflow the arithmetic below.
    if !(0..=9999).contains(&y)
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
        || !(0..=23).contains(&hh)
        || !(0..=59).contains(&mm)
        || !(0..=60).contains(&ss)
    {
        return Err(bad());
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms)
}

async fn reset(admin: &Admin, args: &ResetArgs, output: Output) -> anyhow::Result<()> {
    let names: Vec<&str> = args.topics.iter().map(String::as_str).collect();
    let mut partitions = Vec::new();
    for (name, result) in admin.describe_topics(&names).await {
        let info = result.with_context(|| format!("topic {name}"))?;
        partitions.extend(
            info.partitions
                .iter()
                .map(|p| TopicPartition::new(&name, p.partition)),
        );
    }
    let earliest = end_offsets(admin, partitions.clone(), OffsetSpec::Earliest).await?;
    let latest = end_offsets(admin, partitions.clone(), OffsetSpec::Latest).await?;
    let committed = admin
        .list_group_offsets(&args.group, Some(&partitions))
        .await
        .with_context(|| format!("offsets of group {}", args.group))?;
    let at_time = match &args.to_datetime {
        Some(text) => Some(
            end_offsets(
                admin,
                partitions.clone(),
                OffsetSpec::Timestamp(parse_time(text)?),
            )
            .await?,
        ),
        None => None,
    };
    let mut plan: BTreeMap<TopicPartition, CommittedOffset> = BTreeMap::new();
    for tp in &partitions {
        let offset_of = |offsets: &BTreeMap<TopicPartition, i64>| {
            offsets.get(tp).copied().with_context(|| {
                format!("no offsets of {}-{} in the answer", tp.topic, tp.partition)
            })
        };
        let (low, high) = (offset_of(&earliest)?, offset_of(&latest)?);
        let current = committed.get(tp).cloned().flatten().map(|c| c.offset);
        let target = if args.to_earliest {
            low
        } else if args.to_latest {
            high
        } else if let Some(times) = &at_time {
            // No record at or after the time: the end.
            Some(offset_of(times)?).filter(|&o| o >= 0).unwrap_or(high)
        } else if let Some(offset) = args.to_offset {
            offset
        } else {
            current
                .unwrap_or(low)
                .saturating_add(args.shift_by.unwrap_or(0))
        };
        // Kafka's tool keeps new offsets inside the log (max then min: no
        // panic should a broker answer a start past the end).
        plan.insert(tp.clone(), CommittedOffset::new(target.max(low).min(high)));
    }
    if args.execute {
        let results = admin
            .alter_group_offsets(&args.group, &plan)
            .await
            .with_context(|| format!("group {}", args.group))?;
        for (tp, result) in results {
            result.with_context(|| {
                format!(
                    "group {} {}-{} (a group with active members cannot be reset)",
                    args.group, tp.topic, tp.partition
                )
            })?;
        }
    }
    match output {
        Output::Json => print_json(&json!({
            "group": args.group,
            "executed": args.execute,
            "partitions": plan.iter().map(|(tp, o)| json!({
                "topic": tp.topic, "partition": tp.partition, "new_offset": o.offset,
            })).collect::<Vec<_>>(),
        })),
        Output::Table => {
            print_table(
                &["GROUP", "TOPIC", "PARTITION", "NEW-OFFSET"],
                &plan
                    .iter()
                    .map(|(tp, o)| {
                        vec![
                            args.group.clone(),
                            tp.topic.clone(),
                            tp.partition.to_string(),
                            o.offset.to_string(),
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
            if !args.execute {
                #[allow(clippy::print_stdout, reason = "the tool's output")]
                {
                    println!();
                    println!("dry run: nothing committed; add --execute to reset");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_utc() {
        assert_eq!(parse_time("1700000000000").unwrap(), 1_700_000_000_000);
        assert_eq!(parse_time("1970-01-01T00:00:00").unwrap(), 0);
        assert_eq!(
            parse_time("2023-11-14T22:13:20.5Z").unwrap(),
            1_700_000_000_500
        );
        assert!(parse_time("2023-13-01T00:00:00").is_err());
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("99999999999999-01-01T00:00:00").is_err());
    }
}
