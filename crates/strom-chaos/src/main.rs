//! `strom-chaos`: fault-injection runs against a Strom cluster, a soak of
//! many, and the checker on a history (docs/testing.md).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use strom_chaos::checker::{self, Kind};
use strom_chaos::history;
use strom_chaos::nemesis::Fault;
use strom_chaos::run::{self, RunConfig};

#[derive(Debug, Parser)]
#[command(
    name = "strom-chaos",
    about = "Fault injection and history checking for Strom clusters (needs root and iproute2)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Nodes (combined broker and controller), 3 or 5.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Fault kinds, comma separated: kill, pause, isolate, split, cut-link,
    /// disk-full, lose-unflushed, clock-skew (default all).
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    /// Faults per run, drawn from the kinds by the seed.
    #[arg(long, default_value_t = 10)]
    count: usize,
    /// Every kind once, in order, instead of `--count` drawn ones.
    #[arg(long)]
    each_once: bool,
    /// Where runs write their history, report and node logs.
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
    /// The strom binary.
    #[arg(long, default_value = "target/debug/strom")]
    strom: PathBuf,
    /// A Python with confluent-kafka, for the Python workload (none: no
    /// Python workload).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Plant a bug in the brokers (test only): ack-local (acks=all answered
    /// at the leader's append) or no-truncation (followers never truncate a
    /// diverging log).
    #[arg(long)]
    plant: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// One seeded run.
    Run {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[command(flatten)]
        args: RunArgs,
    },
    /// `--runs` seeded runs from `--first-seed`, then a summary table.
    Soak {
        #[arg(long, default_value_t = 10)]
        runs: u64,
        #[arg(long, default_value_t = 1)]
        first_seed: u64,
        /// Stop at the first run with an anomaly.
        #[arg(long)]
        stop_on_anomaly: bool,
        #[command(flatten)]
        args: RunArgs,
    },
    /// Checks a history (history.jsonl) and prints its anomalies (from the
    /// history alone: the replica comparison and the telling apart of
    /// epoch-bump duplicates happen in `run`, which reads the logs).
    Check { history: PathBuf },
}

fn config(seed: u64, args: &RunArgs, out: PathBuf) -> Result<RunConfig> {
    let faults = if args.faults.is_empty() {
        Fault::ALL.to_vec()
    } else {
        args.faults
            .iter()
            .map(|f| Fault::parse(f))
            .collect::<Result<_>>()?
    };
    Ok(RunConfig {
        seed,
        nodes: args.nodes,
        faults,
        count: args.count,
        each_once: args.each_once,
        out,
        strom: args.strom.clone(),
        python: args.python.clone(),
        plant: args.plant.clone(),
    })
}

fn replay(seed: u64, args: &RunArgs) -> String {
    let mut s = format!("strom-chaos run --seed {seed} --nodes {}", args.nodes);
    if !args.faults.is_empty() {
        s.push_str(&format!(" --faults {}", args.faults.join(",")));
    }
    if args.each_once {
        s.push_str(" --each-once");
    } else {
        s.push_str(&format!(" --count {}", args.count));
    }
    if let Some(bug) = &args.plant {
        s.push_str(&format!(" --plant {bug}"));
    }
    s
}

#[allow(clippy::print_stdout)]
async fn main_inner(cli: Cli) -> Result<bool> {
    match cli.command {
        Cmd::Run { seed, args } => {
            let summary =
                run::run(&config(seed, &args, args.out.join(format!("seed-{seed}")))?).await?;
            print!("{}", run::print_summary(&summary, &replay(seed, &args)));
            Ok(summary.report.is_clean() && summary.drained)
        }
        Cmd::Soak {
            runs,
            first_seed,
            stop_on_anomaly,
            args,
        } => {
            let started = std::time::Instant::now();
            let mut faults = 0usize;
            let mut ops = 0usize;
            let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
            let mut failed_runs = Vec::new();
            let mut undrained = 0usize;
            let mut done = 0;
            for seed in first_seed..first_seed + runs {
                let out = args.out.join(format!("seed-{seed}"));
                let summary = match run::run(&config(seed, &args, out)?).await {
                    Ok(s) => s,
                    Err(e) => {
                        println!("seed {seed}: the run failed: {e:#}");
                        failed_runs.push(seed);
                        done += 1;
                        continue;
                    }
                };
                done += 1;
                undrained += usize::from(!summary.drained);
                print!("{}", run::print_summary(&summary, &replay(seed, &args)));
                faults += summary.injected.len();
                ops += summary.report.ops;
                for kind in Kind::ALL {
                    *by_kind.entry(kind.name()).or_default() += summary.report.count(kind);
                }
                if !summary.report.is_clean() && stop_on_anomaly {
                    break;
                }
            }
            println!(
                "\n| runs | failed runs | final reads short | faults | operations | minutes |"
            );
            println!("|---|---|---|---|---|---|");
            println!(
                "| {done} | {} | {undrained} | {faults} | {ops} | {:.1} |",
                failed_runs.len(),
                started.elapsed().as_secs_f64() / 60.0
            );
            println!("\n| anomaly | count |\n|---|---|");
            for (kind, n) in &by_kind {
                println!("| {kind} | {n} |");
            }
            let broker_anomalies: usize = Kind::ALL
                .iter()
                .filter(|k| k.is_broker_anomaly())
                .map(|k| by_kind.get(k.name()).copied().unwrap_or(0))
                .sum();
            Ok(failed_runs.is_empty() && undrained == 0 && broker_anomalies == 0)
        }
        Cmd::Check { history: path } => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let ops = history::parse(&text).map_err(anyhow::Error::msg)?;
            let report = checker::check(&ops);
            println!(
                "{} operations, {} values acknowledged, {} read, {} anomalies",
                report.ops,
                report.acknowledged,
                report.read,
                report.anomalies.len()
            );
            for a in &report.anomalies {
                println!("  {}: {} (ops {:?})", a.kind.name(), a.message, a.ops);
            }
            Ok(report.is_clean())
        }
    }
}

/// How long the end of the harness waits for blocking tasks.
const SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The first of SIGINT and SIGTERM, by name.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        _ => std::future::pending().await,
    }
}

#[allow(clippy::print_stderr)]
fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STROM_CHAOS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("strom_chaos=info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strom-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    // A signal drops the run: its cluster (nodes killed), network
    // namespaces and tmpfs mounts are removed on the way out, so that an
    // interrupted harness leaves nothing behind.
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = main_inner(cli) => outcome,
            signal = stop_signal() => Err(anyhow::anyhow!("stopped by {signal}; the run's nodes, namespaces and mounts are removed")),
        }
    });
    // Blocking tasks (a run's setup and final reads) are not waited for
    // past this.
    runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("strom-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}
