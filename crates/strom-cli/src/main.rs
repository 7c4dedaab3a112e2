//! `strom`: the Strom broker and command-line tools in one binary.
//!
//! # Layout
//!
//! - `main.rs`: argument parsing and the subcommands.
//! - [`broker`]: `strom broker`, a single-node Kafka-compatible broker.

mod broker;

use clap::{Parser, Subcommand};

/// Strom: a Kafka-compatible streaming platform.
#[derive(Debug, Parser)]
#[command(name = "strom", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a broker. With no flags: node 1 on 127.0.0.1:9092, data in ./strom-data.
    Broker(broker::BrokerArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Broker(args) => broker::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strom: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
