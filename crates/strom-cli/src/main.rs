//! `strom`: the Strom broker and command-line tools in one binary.
//!
//! # Layout
//!
//! - `main.rs`: argument parsing and the subcommands.
//! - [`broker`]: `strom broker`, a single-node Kafka-compatible broker.
//! - [`topic`], [`group`], [`produce`], [`consume`], [`cluster`],
//!   [`config_cmd`], [`perf`], [`logdump`]: the client
//!   tools, on strom-client; [`tool`] is what they share (bootstrap,
//!   `-X` properties, table or JSON output).

mod broker;
mod cluster;
mod config_cmd;
mod consume;
mod group;
mod logdump;
mod perf;
mod produce;
mod tool;
mod topic;

use clap::{Parser, Subcommand};

/// Strom: a Kafka-compatible streaming platform.
#[derive(Debug, Parser)]
#[command(name = "strom", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    common: tool::Common,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a broker. With no flags: node 1 on 127.0.0.1:9092, data in ./strom-data.
    Broker(broker::BrokerArgs),
    /// Create, list, describe, delete and configure topics.
    #[command(subcommand)]
    Topic(topic::TopicCommand),
    /// Write lines from stdin (or a file) as records.
    Produce(produce::ProduceArgs),
    /// Print records.
    Consume(consume::ConsumeArgs),
    /// List, describe (with lag), delete groups and reset their offsets.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// Load generators: produce or consume and report throughput and latency.
    #[command(subcommand)]
    Perf(perf::PerfCommand),
    /// Inspect segment files.
    #[command(subcommand)]
    Log(logdump::LogCommand),
    /// Describe and alter topic and broker configs.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// The cluster: its id, controller and brokers.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Broker(args) => broker::run(args),
        Command::Topic(command) => topic::run(command, &cli.common),
        Command::Produce(args) => produce::run(args, &cli.common),
        Command::Consume(args) => consume::run(args, &cli.common),
        Command::Group(command) => group::run(command, &cli.common),
        Command::Cluster(command) => cluster::run(command, &cli.common),
        Command::Config(command) => config_cmd::run(command, &cli.common),
        Command::Perf(command) => perf::run(command, &cli.common),
        Command::Log(command) => logdump::run(command, &cli.common),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strom: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
