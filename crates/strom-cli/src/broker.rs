//! `strom broker`: runs a broker until Ctrl-C or SIGTERM, then shuts down
//! cleanly (flush, close segments, clean-shutdown marker).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use strom_broker::BrokerConfig;
use strom_broker::config::parse_properties;
use strom_broker::start::StartError;

#[derive(Debug, Args)]
pub(crate) struct BrokerArgs {
    /// Address to listen on (Kafka's `listeners`); port 0 picks a free port.
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Address clients are told to use (`advertised.listeners`); defaults to
    /// the listen address.
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// Address of the controller listener (a `CONTROLLER://HOST:PORT` entry
    /// added to `listeners`, with `controller.listener.names=CONTROLLER`
    /// unless that is set); its port must be this node's port in `--voters`.
    #[arg(long, value_name = "HOST:PORT")]
    controller_listen: Option<String>,
    /// The controller quorum, `ID@HOST:PORT,...` (`controller.quorum.voters`);
    /// without it the node is a single-node cluster, its own only voter.
    #[arg(long, value_name = "LIST")]
    voters: Option<String>,
    /// Address of the HTTP metrics endpoint (`metrics.listener`); defaults to
    /// the listen host with the listen port + 552 (9092 → 9644; port 0 when
    /// listening on port 0).
    #[arg(long, value_name = "HOST:PORT")]
    metrics: Option<String>,
    /// Data directory (`log.dirs`).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// This broker's id (`node.id`).
    #[arg(long, value_name = "N")]
    node_id: Option<i32>,
    /// A properties file with Kafka's config names (server.properties).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Set any broker property, as in the properties file; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

impl BrokerArgs {
    /// Properties from the file, then `--set`, then the named flags.
    fn properties(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let mut props = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                parse_properties(&text)
            }
            None => BTreeMap::new(),
        };
        for kv in &self.set {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--set {kv:?} is not KEY=VALUE"))?;
            props.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        if let Some(listen) = &self.listen {
            props.insert("listeners".to_owned(), format!("PLAINTEXT://{listen}"));
        }
        if let Some(controller) = &self.controller_listen {
            // The controller listener takes the first controller listener
            // name; the default name is set explicitly, as Kafka requires it.
            let name = props
                .get("controller.listener.names")
                .and_then(|names| names.split(',').map(str::trim).find(|n| !n.is_empty()))
                .map_or_else(|| "CONTROLLER".to_owned(), str::to_owned);
            props
                .entry("controller.listener.names".to_owned())
                .or_insert_with(|| name.clone());
            // Without `listeners`, the client listener is the default one,
            // except on a controller-only node, which has none.
            let controller_only = props
                .get("process.roles")
                .is_some_and(|r| r.split(',').map(str::trim).all(|r| r == "controller"));
            let listeners = match props.get("listeners") {
                Some(l) => l.clone(),
                None if controller_only => String::new(),
                None => format!("PLAINTEXT://{}", strom_broker::config::DEFAULT_LISTEN),
            };
            let mut entries: Vec<String> = listeners
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty() && !e.starts_with(&format!("{name}://")))
                .map(str::to_owned)
                .collect();
            entries.push(format!("{name}://{controller}"));
            props.insert("listeners".to_owned(), entries.join(","));
        }
        if let Some(voters) = &self.voters {
            props.insert("controller.quorum.voters".to_owned(), voters.clone());
        }
        if let Some(metrics) = &self.metrics {
            props.insert("metrics.listener".to_owned(), metrics.clone());
        }
        if let Some(advertise) = &self.advertise {
            props.insert(
                "advertised.listeners".to_owned(),
                format!("PLAINTEXT://{advertise}"),
            );
        }
        if let Some(dir) = &self.data_dir {
            props.insert("log.dirs".to_owned(), dir.display().to_string());
        }
        if let Some(id) = self.node_id {
            props.insert("node.id".to_owned(), id.to_string());
        }
        Ok(props)
    }
}

pub(crate) fn run(args: BrokerArgs) -> anyhow::Result<()> {
    init_logging();
    let config = BrokerConfig::from_properties(args.properties()?)
        .context("invalid broker configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("strom-worker")
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let running = match strom_broker::start_node(config)
            .await
            .map_err(start_error)?
        {
            strom_broker::RunningNode::Broker(running) => running,
            strom_broker::RunningNode::Controller(running) => {
                let stop = stop_signal();
                // A controller-only node serves no clients: its ready line
                // names its controller listener.
                let mut stdout = std::io::stdout();
                writeln!(
                    stdout,
                    "Strom controller {} listening on {} (data in {})",
                    running.node_id,
                    running.controller_addr,
                    running.data_dir.display()
                )?;
                stdout.flush()?;
                stop.await;
                tracing::info!("shutting down");
                running.shutdown().await.context("shutting down")?;
                tracing::info!("shut down cleanly");
                return Ok(());
            }
        };
        let broker = &running.broker;
        // Listen for signals before saying we are ready: a SIGTERM right
        // after the ready line must still shut down cleanly.
        let stop = stop_signal();
        // One line on stdout when ready: scripts and tests wait for it.
        let mut stdout = std::io::stdout();
        writeln!(
            stdout,
            "Strom broker {} listening on {}:{} (data in {})",
            broker.node_id,
            broker.advertised_host,
            broker.advertised_port,
            broker.config.data_dir.display()
        )?;
        // The second line says where the metrics are (scripts scrape them).
        match running.metrics_addr {
            Some(addr) => writeln!(
                stdout,
                "Strom broker {} metrics on http://{addr}/metrics",
                broker.node_id
            )?,
            None => writeln!(stdout, "Strom broker {} metrics off", broker.node_id)?,
        }
        stdout.flush()?;
        // In a cluster, a failed write fails the log directory and the
        // broker stops with status 1, as Kafka's does (a supervisor restarts
        // it; the logs are recovered as after a crash).
        let failed = running.log_dir_failed();
        let bound = Duration::from_millis(broker.config.settings.cluster.broker_session_timeout_ms)
            + LOG_DIR_FAILURE_STOP_SLACK;
        tokio::select! {
            () = stop => {}
            why = failed => {
                tracing::error!(error = %why, "stopping: the log directory failed");
                // Bounded: a hung disk must not keep the process alive.
                if tokio::time::timeout(bound, running.stop_after_log_dir_failure()).await.is_err() {
                    tracing::error!(?bound, "stopping after the log directory failed took too long");
                }
                // Exit now, as Kafka halts: dropping the runtime would wait
                // for blocking tasks stuck on the failed disk.
                eprintln!("strom: the log directory failed ({why}); stopped without a clean shutdown");
                std::process::exit(1);
            }
        }
        tracing::info!("shutting down");
        running.shutdown().await.context("shutting down")?;
        tracing::info!("shut down cleanly");
        Ok(())
    })
}

/// Time past `broker.session.timeout.ms` (the controlled shutdown's own
/// bound) that stopping after a log directory failure may take before the
/// process exits anyway: the rest of the stop is closing connections and
/// tasks, which needs no disk.
const LOG_DIR_FAILURE_STOP_SLACK: Duration = Duration::from_secs(5);

/// Registers for SIGTERM and SIGINT (Ctrl-C) now, and returns a future that
/// ends at the first of them.
pub(crate) fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (term, interrupt) {
            (Ok(mut term), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            (Ok(mut one), Err(e)) | (Err(e), Ok(mut one)) => {
                tracing::warn!(error = %e, "cannot listen for one of SIGTERM and SIGINT");
                one.recv().await;
            }
            (Err(e), Err(_)) => {
                tracing::error!(error = %e, "cannot listen for signals; stop the broker with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Why the broker did not start; a port in use names the flag and the
/// property that choose another.
fn start_error(error: StartError) -> anyhow::Error {
    match error {
        StartError::Listen { addr, source } => anyhow::anyhow!(
            "cannot listen on {addr}: {source}; choose another HOST:PORT with --listen (property listeners)"
        ),
        StartError::MetricsListen { addr, source } => anyhow::anyhow!(
            "cannot listen for metrics on {addr}: {source}; choose another HOST:PORT with --metrics (property metrics.listener), or turn the endpoint off with --metrics ''"
        ),
        other => anyhow::Error::new(other).context("starting the broker"),
    }
}

/// Logs to stderr; colours only when stderr is a terminal, so that a log
/// file or a pipe gets plain text.
fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("STROM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| OneLine(std::io::stderr()))
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// Writes each log event as exactly one line. The formatter hands over one
/// event per write, ending in its line break; a line break inside it (in a
/// client's SASL mechanism name or group id, in an error's text) is written
/// as `\n`, so that one line is one event: no blank lines, no forged lines.
struct OneLine<W>(W);

impl<W: std::io::Write> std::io::Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, end) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, &b"\n"[..]),
            None => (buf, &b""[..]),
        };
        let mut line = Vec::with_capacity(buf.len() + 8);
        for &b in body {
            match b {
                b'\n' => line.extend_from_slice(b"\\n"),
                b'\r' => line.extend_from_slice(b"\\r"),
                _ => line.push(b),
            }
        }
        line.extend_from_slice(end);
        self.0.write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use strom_broker::config::{ProcessRoles, Voter};

    /// `strom broker ARGS` as the command line parses it.
    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(flatten)]
        args: BrokerArgs,
    }

    fn config(args: &[&str]) -> anyhow::Result<BrokerConfig> {
        let cmd = Cmd::try_parse_from(std::iter::once("broker").chain(args.iter().copied()))?;
        Ok(BrokerConfig::from_properties(cmd.args.properties()?)?)
    }

    #[test]
    fn the_issues_three_node_command_is_a_valid_config() {
        let c = config(&[
            "--node-id",
            "1",
            "--listen",
            "127.0.0.1:9092",
            "--controller-listen",
            "127.0.0.1:9093",
            "--voters",
            "1@127.0.0.1:9093,2@127.0.0.1:9193,3@127.0.0.1:9293",
            "--data-dir",
            "./n1",
        ])
        .unwrap();
        assert_eq!(c.node_id, 1);
        assert_eq!(c.listen.to_string(), "127.0.0.1:9092");
        assert_eq!(
            c.controller_listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9093")
        );
        assert_eq!(c.voters.len(), 3);
        assert_eq!(
            c.voters[1],
            Voter {
                id: 2,
                host: "127.0.0.1".to_owned(),
                port: 9193
            }
        );
        assert_eq!(c.process_roles, ProcessRoles::default());
        assert_eq!(c.data_dir, PathBuf::from("./n1"));
        assert_eq!(
            c.properties
                .get("controller.listener.names")
                .map(String::as_str),
            Some("CONTROLLER")
        );
        // The controller listener's port must be this node's voter port.
        let err = config(&[
            "--node-id",
            "2",
            "--listen",
            "127.0.0.1:9192",
            "--controller-listen",
            "127.0.0.1:9093",
            "--voters",
            "1@127.0.0.1:9093,2@127.0.0.1:9193,3@127.0.0.1:9293",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("controller.quorum.voters"), "{err}");
    }

    #[test]
    fn a_controller_only_node_has_only_its_controller_listener() {
        let c = config(&[
            "--node-id",
            "1",
            "--controller-listen",
            "127.0.0.1:9093",
            "--voters",
            "1@127.0.0.1:9093",
            "--set",
            "process.roles=controller",
        ])
        .unwrap();
        assert_eq!(
            c.process_roles,
            ProcessRoles {
                broker: false,
                controller: true
            }
        );
        assert_eq!(c.controller_listen, Some("127.0.0.1:9093".parse().unwrap()));
    }

    #[test]
    fn a_broker_only_node_and_the_zero_config_node() {
        let c = config(&[
            "--node-id",
            "4",
            "--listen",
            "127.0.0.1:9392",
            "--voters",
            "1@127.0.0.1:9093",
            "--set",
            "process.roles=broker",
        ])
        .unwrap();
        assert_eq!(
            c.process_roles,
            ProcessRoles {
                broker: true,
                controller: false
            }
        );
        assert_eq!(c.controller_listen, None);
        let c = config(&[]).unwrap();
        assert_eq!(c.process_roles, ProcessRoles::default());
        assert!(c.voters.is_empty());
        assert_eq!(c.controller_listen, None);
        assert_eq!(c.listen.to_string(), "127.0.0.1:9092");
        // --controller-listen alone keeps the default client listener, and
        // takes the controller listener name already set.
        let c = config(&[
            "--controller-listen",
            "127.0.0.1:9093",
            "--set",
            "controller.listener.names=QUORUM",
            "--set",
            "listener.security.protocol.map=QUORUM:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        ])
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9092");
        assert_eq!(
            c.properties.get("listeners").map(String::as_str),
            Some("PLAINTEXT://127.0.0.1:9092,QUORUM://127.0.0.1:9093")
        );
    }

    #[test]
    fn a_log_event_is_one_line_whatever_its_fields_hold() {
        let mut out = OneLine(Vec::new());
        out.write_all(b"INFO refused mechanism=PLAIN\n\n\n")
            .unwrap();
        out.write_all(b"INFO a\r\nb c=d\n").unwrap();
        assert_eq!(
            String::from_utf8(out.0).unwrap(),
            "INFO refused mechanism=PLAIN\\n\\n\nINFO a\\r\\nb c=d\n"
        );
    }
}
