//! `strom`: the Strom broker and command-line tools in one binary. The
//! binary's `main.rs` calls [`main`]; the end-to-end tests (crate
//! `strom-tests`) build the same entry point into their own binary.
//!
//! # Layout
//!
//! - `lib.rs`: argument parsing and the subcommands ([`main`]).
//! - [`broker`]: `strom broker`, a Kafka-compatible broker (and controller).
//! - [`cluster`]: `strom cluster describe`, and `strom cluster local`, a
//!   local cluster of child processes (strom-testkit).
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

use clap::{Args, Parser, Subcommand};

/// Strom: a Kafka-compatible streaming platform.
#[derive(Debug, Parser)]
#[command(name = "strom", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    leading: tool::LeadingClientArgs,
}

/// A client subcommand that has subcommands, with the client options.
#[derive(Debug, Args)]
struct Nested<C: Subcommand> {
    #[command(subcommand)]
    command: C,
    #[command(flatten)]
    client: tool::ClientArgs,
}

/// A client subcommand with its own arguments and the client options.
#[derive(Debug, Args)]
struct Flat<A: Args> {
    #[command(flatten)]
    args: A,
    #[command(flatten)]
    client: tool::ClientArgs,
}

/// `strom log`: reads files, talks to no broker, so only `--output`.
#[derive(Debug, Args)]
struct LogArgs {
    #[command(subcommand)]
    command: logdump::LogCommand,
    /// Output format [default: table].
    #[arg(long, global = true, value_enum)]
    output: Option<tool::Output>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a broker. With no flags: node 1 on 127.0.0.1:9092, data in ./strom-data.
    Broker(broker::BrokerArgs),
    /// Create, list, describe, delete and configure topics.
    Topic(Nested<topic::TopicCommand>),
    /// Write lines from stdin (or a file) as records.
    Produce(Flat<produce::ProduceArgs>),
    /// Print records.
    Consume(Flat<consume::ConsumeArgs>),
    /// List, describe (with lag), delete groups and reset their offsets.
    Group(Nested<group::GroupCommand>),
    /// Load generators: produce or consume and report throughput and latency.
    Perf(Nested<perf::PerfCommand>),
    /// Inspect segment files.
    Log(LogArgs),
    /// Describe and alter topic and broker configs.
    Config(Nested<config_cmd::ConfigCommand>),
    /// The cluster: its id, controller and brokers; or a local cluster.
    Cluster(Nested<cluster::ClusterCommand>),
}

/// The client options in effect, after a check that the cluster can be
/// reached at all (a refused connection fails at once, not at the API
/// timeout).
fn client(
    leading: tool::LeadingClientArgs,
    args: tool::ClientArgs,
) -> anyhow::Result<tool::Common> {
    let common = tool::Common::new(leading, args);
    common.check_reachable()?;
    Ok(common)
}

/// The `strom` command: parses the arguments, runs the subcommand, and
/// prints a failure on one line.
pub fn main() -> std::process::ExitCode {
    let Cli { command, leading } = Cli::parse();
    let result = match command {
        Command::Broker(args) => match leading.given().as_slice() {
            [] => broker::run(args),
            given => Err(anyhow::anyhow!(
                "strom broker takes no client options ({})",
                given.join(", ")
            )),
        },
        Command::Topic(c) => {
            client(leading, c.client).and_then(|common| topic::run(c.command, &common))
        }
        Command::Produce(c) => {
            client(leading, c.client).and_then(|common| produce::run(c.args, &common))
        }
        Command::Consume(c) => {
            client(leading, c.client).and_then(|common| consume::run(c.args, &common))
        }
        Command::Group(c) => {
            client(leading, c.client).and_then(|common| group::run(c.command, &common))
        }
        // A local cluster is started here, not reached: no client options.
        Command::Cluster(Nested {
            command: cluster::ClusterCommand::Local(args),
            client: extra,
        }) => {
            let mut given = leading.given();
            given.extend(extra.given());
            if given.is_empty() {
                cluster::run_local(args)
            } else {
                Err(anyhow::anyhow!(
                    "strom cluster local takes no client options ({})",
                    given.join(", ")
                ))
            }
        }
        Command::Cluster(c) => {
            client(leading, c.client).and_then(|common| cluster::run(c.command, &common))
        }
        Command::Config(c) => {
            client(leading, c.client).and_then(|common| config_cmd::run(c.command, &common))
        }
        Command::Perf(c) => {
            client(leading, c.client).and_then(|common| perf::run(c.command, &common))
        }
        Command::Log(args) => {
            let output = args
                .output
                .or(leading.output())
                .unwrap_or(tool::Output::Table);
            logdump::run(args.command, output)
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strom: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// `error` and its causes on one line, `: `-separated. A cause the message
/// before it already ends with (an error that prints its source) is said
/// once, and line breaks inside a message do not break the line.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        let text = text.trim().replace('\n', "; ");
        if text.is_empty() || line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_chain_is_one_line_with_each_cause_once() {
        let io = std::io::Error::other("disk on fire");
        let e = anyhow::anyhow!("writing x: {io}").context("starting");
        assert_eq!(one_line(&e), "starting: writing x: disk on fire");
        /// An error that prints its source and also returns it.
        #[derive(Debug)]
        struct Repeats(std::io::Error);
        impl std::fmt::Display for Repeats {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "reading y: {}", self.0)
            }
        }
        impl std::error::Error for Repeats {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = anyhow::Error::new(Repeats(std::io::Error::other("gone")));
        assert_eq!(one_line(&e), "reading y: gone");
        assert_eq!(one_line(&anyhow::anyhow!("a\nb\n")), "a; b");
    }
}
