//! What the multi-node tests share: the binary, a three-node cluster with
//! short timers, waiting for a condition, and the clients' views of it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use strom_client::ClientConfig;
use strom_client::admin::Admin;
use strom_testkit::{ClusterBuilder, LocalCluster};

/// How long a cluster test waits for a condition (debug builds on a loaded
/// machine, elections and session timeouts included).
pub const DEADLINE: Duration = Duration::from_secs(60);
/// Pause between two looks at a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The `strom` binary under test (`STROM_BIN` names another).
pub fn strom_bin() -> PathBuf {
    std::env::var_os("STROM_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_strom-e2e")),
        PathBuf::from,
    )
}

/// Three combined nodes with short timers, so faults show within seconds.
pub async fn three_nodes() -> LocalCluster {
    three_nodes_builder().start().await.unwrap()
}

/// The settings of [`three_nodes`], for a test to add its own to.
pub fn three_nodes_builder() -> ClusterBuilder {
    let builder = LocalCluster::builder(strom_bin());
    // STROM_TEST_KEEP_DIR keeps the nodes' directories and logs there, to
    // look at after a failure: one directory per test process, so that
    // tests running side by side keep theirs apart.
    let builder = match std::env::var_os("STROM_TEST_KEEP_DIR") {
        Some(dir) => {
            let test = std::thread::current().name().unwrap_or("test").to_owned();
            let dir = PathBuf::from(dir).join(format!("{test}-{}", std::process::id()));
            builder.data_dir_root(dir)
        }
        None => builder,
    };
    builder
        .nodes(3)
        .set("broker.session.timeout.ms", "3000")
        .set("broker.heartbeat.interval.ms", "500")
        .set("controller.quorum.election.timeout.ms", "500")
}

/// Polls `check` (blocking code, run off the runtime) until it holds, for
/// up to [`DEADLINE`].
pub async fn eventually<T: Send + 'static>(
    what: &str,
    mut check: impl FnMut() -> Option<T> + Send + 'static,
) -> T {
    let deadline = Instant::now() + DEADLINE;
    let handle = tokio::task::spawn_blocking(move || {
        loop {
            if let Some(v) = check() {
                return Some(v);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    });
    handle
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("never: {what}"))
}

/// The broker ids librdkafka sees through `bootstrap` (none when it gets no
/// metadata in time).
pub fn rd_brokers(bootstrap: &str) -> Vec<i32> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    match consumer.fetch_metadata(None, Duration::from_secs(5)) {
        Ok(m) => {
            let mut ids: Vec<i32> = m.brokers().iter().map(|b| b.id()).collect();
            ids.sort_unstable();
            ids
        }
        Err(_) => Vec::new(),
    }
}

/// Strom's own admin client through `bootstrap`.
pub fn strom_admin(bootstrap: &str) -> Admin {
    let config: ClientConfig = [
        ("bootstrap.servers", bootstrap),
        ("default.api.timeout.ms", "30000"),
    ]
    .into_iter()
    .collect();
    Admin::new(&config).unwrap()
}
