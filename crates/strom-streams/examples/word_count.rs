//! Kafka Streams' WordCount demo on strom-streams: reads lines from
//! `--input`, splits them into lower-case words, counts each word through a
//! repartition topic, and writes every new count to `--output` (string
//! keys; values as Java's `LongSerializer` writes them, 8 bytes big-endian),
//! until Ctrl-C or SIGTERM.
//!
//! ```text
//! cargo run --release -p strom-streams --example word_count -- \
//!     --bootstrap 127.0.0.1:9092 --input lines --output counts
//! ```
//!
//! The application id is `word-count` unless `--application-id` says
//! otherwise; `--set NAME=VALUE` passes any Kafka Streams property
//! (`commit.interval.ms`, `num.stream.threads`, `consumer.`/`producer.`
//! prefixed client properties). Logs go to stderr (`RUST_LOG` filters them).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use strom_streams::dsl::{Consumed, Grouped, Materialized, Produced, StreamsBuilder};
use strom_streams::kafka_streams::State;
use strom_streams::serdes::{I64Serde, Nullable, StringSerde};
use strom_streams::{KafkaStreams, StreamsConfig, Topology, TopologyError};

#[derive(Debug, Parser)]
#[command(
    about = "Counts the words of a topic's lines into another topic (Kafka Streams' WordCount)"
)]
struct Args {
    /// Bootstrap servers, HOST:PORT[,HOST:PORT...].
    #[arg(long)]
    bootstrap: String,
    /// The topic of text lines.
    #[arg(long)]
    input: String,
    /// The topic the counts go to.
    #[arg(long)]
    output: String,
    /// `application.id`: the group, and the prefix of the internal topics.
    #[arg(long, default_value = "word-count")]
    application_id: String,
    /// A Kafka Streams property, NAME=VALUE (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    properties: Vec<String>,
    /// Print the topology's description and exit.
    #[arg(long)]
    describe: bool,
}

/// The topology: lines (any key, possibly null) → words → count per word.
fn topology(input: &str, output: &str) -> Result<Topology, TopologyError> {
    let builder = StreamsBuilder::new();
    builder
        .stream(&[input], Consumed::with(Nullable(StringSerde), StringSerde))
        .flat_map_values(|line: String| {
            line.to_lowercase()
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .group_by(
            |_key, word| word.clone(),
            Grouped::with(StringSerde, StringSerde),
        )
        .count(Materialized::as_("counts", StringSerde, I64Serde))
        .to_stream()
        .to(output, Produced::with(StringSerde, I64Serde));
    builder.build()
}

/// Resolves on Ctrl-C, or SIGTERM on Unix. Made before the application
/// starts, so that a SIGTERM at any time after it stops the application
/// cleanly rather than killing the process.
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let topology = match topology(&args.input, &args.output) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("word_count: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.describe {
        let mut stdout = std::io::stdout().lock();
        return match write!(stdout, "{}", topology.describe()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        };
    }
    let mut properties = vec![
        ("application.id".to_owned(), args.application_id.clone()),
        ("bootstrap.servers".to_owned(), args.bootstrap.clone()),
    ];
    for property in &args.properties {
        let Some((name, value)) = property.split_once('=') else {
            eprintln!("word_count: --set {property:?} is not NAME=VALUE");
            return ExitCode::FAILURE;
        };
        properties.push((name.trim().to_owned(), value.to_owned()));
    }
    let config = match StreamsConfig::from_properties(
        properties.iter().map(|(n, v)| (n.as_str(), v.as_str())),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("word_count: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stopped = match stop_signal() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("word_count: cannot listen for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut streams = KafkaStreams::new(topology, config);
    if let Err(e) = streams.start().await {
        eprintln!("word_count: {e}");
        return ExitCode::FAILURE;
    }
    let mut state = streams.subscribe_state();
    tokio::select! {
        () = stopped => {}
        _ = state.wait_for(|s| *s == State::Error) => {}
    }
    match streams.close().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("word_count: {e}");
            ExitCode::FAILURE
        }
    }
}
