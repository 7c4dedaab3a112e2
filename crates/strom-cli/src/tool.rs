//! What the client subcommands share: where the cluster is, client
//! properties, the output format, and a runtime for strom-client.

use anyhow::Context;
use clap::{Args, ValueEnum};
use strom_client::{Admin, ClientConfig, TopicPartition};

/// How long an admin call keeps retrying when `-X default.api.timeout.ms` is
/// not given: a tool should fail in seconds, not Kafka's minute.
const TOOL_API_TIMEOUT_MS: &str = "15000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts.
    Json,
}

/// How long the reachability check waits for the bootstrap addresses to
/// accept or refuse a connection: a refusal comes back within a round trip,
/// and an address silent for longer is left to the client's own retries.
const REACHABLE_CHECK: std::time::Duration = std::time::Duration::from_secs(3);

/// Where the cluster is when `--bootstrap` is not given.
const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:9092";

/// The options every client subcommand takes, after its name
/// (`strom topic list --bootstrap H:P`); global within that subcommand, so
/// they may follow a nested subcommand too. `strom broker` does not take
/// them.
#[derive(Debug, Default, Args)]
pub(crate) struct ClientArgs {
    /// A broker to start from (several: comma-separated) [default: 127.0.0.1:9092].
    #[arg(long, global = true, value_name = "HOST:PORT")]
    bootstrap: Option<String>,
    /// Output format [default: table].
    #[arg(long, global = true, value_enum)]
    output: Option<Output>,
    /// Any client property with Kafka's name (`-X linger.ms=10`); repeatable.
    #[arg(short = 'X', global = true, value_name = "KEY=VALUE")]
    properties: Vec<String>,
}

/// The same options before the subcommand (`strom --bootstrap H:P topic
/// list`), as scripts written for earlier versions give them; hidden from
/// the help, which shows them under each client subcommand.
#[derive(Debug, Default, Args)]
pub(crate) struct LeadingClientArgs {
    #[arg(long, hide = true, value_name = "HOST:PORT")]
    bootstrap: Option<String>,
    #[arg(long, hide = true, value_enum)]
    output: Option<Output>,
    #[arg(short = 'X', hide = true, value_name = "KEY=VALUE")]
    properties: Vec<String>,
}

/// The client flags given, by name (for a command that takes none of them).
fn given_flags(bootstrap: bool, output: bool, properties: bool) -> Vec<&'static str> {
    [
        (bootstrap, "--bootstrap"),
        (output, "--output"),
        (properties, "-X"),
    ]
    .into_iter()
    .filter_map(|(given, flag)| given.then_some(flag))
    .collect()
}

impl ClientArgs {
    /// The options given, by flag (for commands that take none).
    pub(crate) fn given(&self) -> Vec<&'static str> {
        given_flags(
            self.bootstrap.is_some(),
            self.output.is_some(),
            !self.properties.is_empty(),
        )
    }
}

impl LeadingClientArgs {
    /// `--output`, if given before the subcommand.
    pub(crate) fn output(&self) -> Option<Output> {
        self.output
    }

    /// The flags given, by name, for a subcommand that takes none of them.
    pub(crate) fn given(&self) -> Vec<&'static str> {
        given_flags(
            self.bootstrap.is_some(),
            self.output.is_some(),
            !self.properties.is_empty(),
        )
    }
}

/// The client options in effect: those after the subcommand win over those
/// before it; `-X` properties from both, in the order typed.
#[derive(Debug)]
pub(crate) struct Common {
    pub(crate) bootstrap: String,
    pub(crate) output: Output,
    pub(crate) properties: Vec<String>,
}

impl Common {
    pub(crate) fn new(leading: LeadingClientArgs, args: ClientArgs) -> Self {
        let mut properties = leading.properties;
        properties.extend(args.properties);
        Self {
            bootstrap: args
                .bootstrap
                .or(leading.bootstrap)
                .unwrap_or_else(|| DEFAULT_BOOTSTRAP.to_owned()),
            output: args.output.or(leading.output).unwrap_or(Output::Table),
            properties,
        }
    }

    /// Fails at once when every bootstrap address refuses connections (or
    /// does not resolve, which the Java client also refuses at once): no
    /// retry can help then, and waiting out the API timeout only to say
    /// "timed out" hides the cause. An address that neither accepts nor
    /// refuses in time is left to the client, which retries it until the
    /// API timeout.
    pub(crate) fn check_reachable(&self) -> anyhow::Result<()> {
        // The addresses the client will use: `-X bootstrap.servers` wins.
        let config = self.config(&[])?;
        let addrs: Vec<String> = config
            .get("bootstrap.servers")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        if addrs.is_empty() {
            return Ok(()); // the client's config check says why
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let refusals = rt.block_on(async {
            let mut probes = tokio::task::JoinSet::new();
            for (i, addr) in addrs.iter().enumerate() {
                let addr = addr.clone();
                probes.spawn(async move { (i, refusal(&addr).await) });
            }
            let mut reasons: Vec<String> = vec![String::new(); addrs.len()];
            let deadline = tokio::time::sleep(REACHABLE_CHECK);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    next = probes.join_next() => match next {
                        None => break Some(reasons),
                        Some(Ok((i, Some(reason)))) => reasons[i] = reason,
                        // One answered: the client takes it from here.
                        Some(_) => break None,
                    },
                    () = &mut deadline => break None,
                }
            }
        });
        match refusals {
            None => Ok(()),
            Some(reasons) => {
                let each: Vec<String> = addrs
                    .iter()
                    .zip(&reasons)
                    .map(|(addr, why)| format!("{addr} ({why})"))
                    .collect();
                anyhow::bail!("cannot connect to {}", each.join(", "))
            }
        }
    }

    /// The client config: bootstrap, the tool's defaults, then `-X`.
    pub(crate) fn config(&self, defaults: &[(&str, &str)]) -> anyhow::Result<ClientConfig> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        config.set("client.id", "strom-cli");
        for (k, v) in defaults {
            config.set(*k, *v);
        }
        for kv in &self.properties {
            let (k, v) = key_value(kv).context("-X")?;
            config.set(&k, &v);
        }
        Ok(config)
    }

    /// The config of an admin client.
    pub(crate) fn admin(&self) -> anyhow::Result<strom_client::Admin> {
        let config = self.config(&[("default.api.timeout.ms", TOOL_API_TIMEOUT_MS)])?;
        Ok(strom_client::Admin::new(&config)?)
    }
}

/// Why `addr` can never be connected to, or `None` when it accepted a
/// connection or may yet (a timeout, an unreachable network that may come
/// back).
async fn refusal(addr: &str) -> Option<String> {
    let resolved: Vec<std::net::SocketAddr> = match tokio::net::lookup_host(addr).await {
        Ok(resolved) => resolved.collect(),
        Err(e) => return Some(format!("cannot resolve it: {e}")),
    };
    if resolved.is_empty() {
        return Some("it resolves to no address".to_owned());
    }
    for socket_addr in resolved {
        match tokio::net::TcpStream::connect(socket_addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            _ => return None,
        }
    }
    Some("connection refused".to_owned())
}

/// `KEY=VALUE`, both trimmed.
pub(crate) fn key_value(kv: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = kv
        .split_once('=')
        .with_context(|| format!("{kv:?} is not KEY=VALUE"))?;
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

/// Every partition of `topic`, as the cluster describes it.
pub(crate) async fn partitions_of(
    admin: &Admin,
    topic: &str,
) -> anyhow::Result<Vec<TopicPartition>> {
    let info = admin
        .describe_topics(&[topic])
        .await
        .remove(topic)
        .context("no answer")?
        .with_context(|| format!("topic {topic}"))?;
    Ok(info
        .partitions
        .iter()
        .map(|p| TopicPartition::new(topic, p.partition))
        .collect())
}

/// A runtime for one subcommand.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Prints rows under headers, each column as wide as its widest cell.
#[allow(clippy::print_stdout, reason = "the tool's output")]
pub(crate) fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Prints `value` as one line of JSON.
#[allow(clippy::print_stdout, reason = "the tool's output")]
pub(crate) fn print_json(value: &serde_json::Value) {
    println!("{value}");
}
