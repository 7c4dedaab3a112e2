//! Starting the broker (opening the data directory, the metadata log, the
//! controller and the logs, then serving) and its clean shutdown.
//!
//! ```text
//! strom-data/
//!   meta/__cluster_metadata-0/   the metadata log (Kafka's KRaft topic), read first
//!   meta/.lock                   held while a broker uses the directory
//!   orders-0/ ...                partition logs, opened after the metadata says
//!                                which topics exist and with which configs
//! ```

use std::fs::{self, File, TryLockError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use strom_controller::controller::ControllerConfig;
use strom_controller::quorum::QuorumConfig;
use strom_controller::{Controller, ControllerError, METADATA_TOPIC, open_metadata_log};
use strom_storage::{Clock, LogManager, LogManagerConfig, SystemClock, TopicPartition};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Broker, ProducerIdManager};
use crate::config::BrokerConfig;
use crate::fetch_session::FetchSessionCache;
use crate::group::GroupCoordinator;
use crate::group::store::OFFSETS_TOPIC;
use crate::lifecycle::Lifecycle;
use crate::memory::{DecompressionBudget, RequestBudget};
use crate::metrics::{Metrics, MetricsServer};
use crate::publisher::Publisher;
use crate::replica::ReplicaManager;
use crate::txn::store::TRANSACTION_STATE_TOPIC;
use crate::txn::{ProducerIdSource, TxnCoordinator};

/// Directory of the metadata log inside the data directory.
const META_DIR: &str = "meta";

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "cannot listen for metrics on {addr}: {source} (set metrics.listener to another HOST:PORT, or to nothing for no metrics endpoint)"
    )]
    MetricsListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("storage: {0}")]
    Storage(#[from] strom_storage::StorageError),
    #[error("metadata: {0}")]
    Controller(#[from] ControllerError),
    #[error("data directory {0} is in use by another broker")]
    Locked(PathBuf),
    #[error("{0}")]
    MetaProperties(#[from] crate::meta_properties::MetaPropertiesError),
    #[error("cannot listen for the controller quorum on {addr}: {source}")]
    ControllerListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
    /// The voters belong to another cluster than this data directory.
    #[error("{0}")]
    WrongCluster(String),
    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A started broker: where it listens, and how to stop it.
#[derive(Debug)]
pub struct RunningBroker {
    pub broker: Arc<Broker>,
    pub local_addr: SocketAddr,
    /// Where `GET /metrics` is served, if anywhere (`metrics.listener`).
    pub metrics_addr: Option<SocketAddr>,
    serve: tokio::task::JoinHandle<()>,
    metrics_serve: Option<tokio::task::JoinHandle<()>>,
    lifecycle: Lifecycle,
}

impl RunningBroker {
    /// Clean shutdown: in a cluster, first a controlled shutdown (the
    /// controller moves this broker's leaderships away); then stop
    /// accepting, close connections, flush and close every log, write the
    /// clean-shutdown marker and a metadata image snapshot.
    pub async fn shutdown(self) -> Result<(), strom_storage::StorageError> {
        let broker = Arc::clone(&self.broker);
        self.stop_serving().await;
        if let Some(why) = broker.replicas.log_dir().failure() {
            // The directory failed during the controlled shutdown: no
            // checkpoints and no clean-shutdown marker on it.
            broker.controller.shutdown().await;
            return Err(strom_storage::StorageError::InvalidRequest(format!(
                "the log directory failed while shutting down ({why}); stopped without a clean shutdown"
            )));
        }
        broker.controller.snapshot_on_shutdown().await;
        broker.controller.shutdown().await;
        let logs = Arc::clone(&broker.logs);
        let metadata_log = broker.metadata_log.clone();
        let replicas = Arc::clone(&broker.replicas);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = replicas.checkpoint_high_watermarks() {
                tracing::error!(error = %e, "writing the high watermark checkpoint failed");
            }
            let result = logs.shutdown();
            if let Some(metadata_log) = metadata_log
                && let Err(e) = metadata_log.close()
            {
                tracing::error!(error = %e, "closing the metadata log failed");
            }
            result
        })
        .await
        .map_err(|e| {
            strom_storage::StorageError::InvalidRequest(format!("shutdown task failed: {e}"))
        })?
    }

    /// Ends when the log directory failed (an I/O error in a cluster,
    /// [`crate::partition::log_dir`]): the broker must then stop with
    /// [`Self::stop_after_log_dir_failure`]. Returns why.
    pub fn log_dir_failed(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let health = Arc::clone(self.broker.replicas.log_dir());
        async move {
            health.stopping().cancelled().await;
            health.failure().unwrap_or_default()
        }
    }

    /// Stops after the log directory failed, as Kafka halts: a controlled
    /// shutdown so that leaderships move at once, then no checkpoints and
    /// no clean-shutdown marker (the next start recovers the logs as after
    /// a crash). Background work may still touch the directory until the
    /// process exits, which the caller does at once.
    pub async fn stop_after_log_dir_failure(self) {
        let broker = Arc::clone(&self.broker);
        self.stop_serving().await;
        broker.controller.shutdown().await;
    }

    /// A controlled shutdown in a cluster, then no more requests or
    /// background tasks.
    async fn stop_serving(self) {
        let broker = self.broker;
        let cluster = &broker.config.settings.cluster;
        let has_peers =
            broker.controller.voter_ids().len() > 1 || broker.controller.quorum().is_none();
        if cluster.controlled_shutdown_enable && has_peers {
            let timeout = Duration::from_millis(cluster.broker_session_timeout_ms);
            if crate::lifecycle::controlled_shutdown(&broker, &self.lifecycle, timeout).await {
                tracing::info!(
                    "controlled shutdown: the controller moved this broker's leaderships"
                );
            } else {
                tracing::warn!(
                    ?timeout,
                    "controlled shutdown: the controller did not answer; stopping anyway (clients move on after broker.session.timeout.ms)"
                );
            }
        }
        broker.shutdown.cancel();
        if let Err(e) = self.serve.await {
            tracing::error!(error = %e, "accept loop ended abnormally");
        }
        if let Some(metrics) = self.metrics_serve
            && let Err(e) = metrics.await
        {
            tracing::error!(error = %e, "metrics listener ended abnormally");
        }
        broker.tasks.close();
        broker.tasks.wait().await;
    }
}

/// A started node: a broker (alone or with a controller), or a
/// controller-only node (`process.roles=controller`).
#[derive(Debug)]
pub enum RunningNode {
    Broker(RunningBroker),
    Controller(RunningController),
}

impl RunningNode {
    pub async fn shutdown(self) -> Result<(), strom_storage::StorageError> {
        match self {
            Self::Broker(b) => b.shutdown().await,
            Self::Controller(c) => c.shutdown().await,
        }
    }
}

/// A started controller-only node: a voter of the quorum that serves no
/// clients.
#[derive(Debug)]
pub struct RunningController {
    pub controller: Arc<Controller>,
    pub node_id: i32,
    /// The controller listener.
    pub controller_addr: SocketAddr,
    pub data_dir: PathBuf,
    _meta_lock: File,
}

impl RunningController {
    /// Stops the quorum on this node and closes its metadata log.
    pub async fn shutdown(self) -> Result<(), strom_storage::StorageError> {
        self.controller.shutdown().await;
        if let Some(log) = self
            .controller
            .quorum()
            .map(|q| Arc::clone(q.metadata_log()))
            && let Ok(Err(e)) = tokio::task::spawn_blocking(move || log.close()).await
        {
            tracing::error!(error = %e, "closing the metadata log failed");
        }
        Ok(())
    }
}

/// Starts what `process.roles` asks for: a broker (with a controller in
/// combined mode), or a controller alone.
pub async fn start_node(config: BrokerConfig) -> Result<RunningNode, StartError> {
    if config.process_roles.broker {
        return Ok(RunningNode::Broker(start(config).await?));
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let addr = config.controller_listen.ok_or_else(|| {
        StartError::Unsupported("a controller-only node needs a controller listener".to_owned())
    })?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::ControllerListen { addr, source })?;
    let controller_addr = listener
        .local_addr()
        .map_err(|source| StartError::ControllerListen { addr, source })?;
    let data_dir = config.data_dir.clone();
    let node_id = config.node_id;
    let (meta_lock, meta_properties) =
        run_blocking(move || lock_data_dir(&data_dir, node_id)).await??;
    let controller = start_controller(&config, clock, Some(listener)).await?;
    let image = await_cluster_id(&controller).await?;
    let data_dir = config.data_dir.clone();
    let cluster_id = image.cluster_id.clone();
    run_blocking(move || check_cluster(&data_dir, node_id, meta_properties, &cluster_id)).await??;
    tracing::info!(node_id, controller = %controller_addr, "controller started");
    Ok(RunningNode::Controller(RunningController {
        controller,
        node_id,
        controller_addr,
        data_dir: config.data_dir,
        _meta_lock: meta_lock,
    }))
}

/// Starts a broker: binds the listener, opens the metadata log and the
/// controller, registers this broker, opens the partition logs, and serves.
pub async fn start(config: BrokerConfig) -> Result<RunningBroker, StartError> {
    start_with_clock(config, Arc::new(SystemClock)).await
}

/// [`start`] with a given clock (tests).
pub async fn start_with_clock(
    config: BrokerConfig,
    clock: Arc<dyn Clock>,
) -> Result<RunningBroker, StartError> {
    let listener = crate::listener::bind(config.listen, config.settings.socket_listen_backlog_size)
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    let metrics_server = match config.metrics_listen {
        Some(addr) => Some(
            MetricsServer::bind(addr)
                .await
                .map_err(|source| StartError::MetricsListen { addr, source })?,
        ),
        None => None,
    };
    let metrics_addr = metrics_server.as_ref().map(|m| m.local_addr);
    let advertised_port = if config.advertise_port == 0 {
        local_addr.port()
    } else {
        config.advertise_port
    };
    let advertised_host = if config.advertise_host == "0.0.0.0" || config.advertise_host == "::" {
        "127.0.0.1".to_owned()
    } else {
        config.advertise_host.clone()
    };
    let controller_listener = match config.controller_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::ControllerListen { addr, source })?,
        ),
        None => None,
    };
    if !config.process_roles.broker {
        return Err(StartError::Unsupported(
            "process.roles=controller: a controller-only node is started with start_node"
                .to_owned(),
        ));
    }
    let data_dir = config.data_dir.clone();
    let node_id = config.node_id;
    let (meta_lock, meta_properties) =
        run_blocking(move || lock_data_dir(&data_dir, node_id)).await??;
    let controller = if config.process_roles.controller {
        start_controller(&config, Arc::clone(&clock), controller_listener).await?
    } else {
        observe_controllers(&config, meta_properties.as_ref(), Arc::clone(&clock))
    };
    // The quorum decides the cluster id once; a node only knows it once it
    // has caught up with the quorum's log, so a node of a cluster that has
    // no quorum yet waits here (and says so).
    let image = await_cluster_id(&controller).await?;
    let data_dir = config.data_dir.clone();
    let cluster_id = image.cluster_id.clone();
    let properties = meta_properties.clone();
    run_blocking(move || check_cluster(&data_dir, node_id, properties, &cluster_id)).await??;
    let config_for_open = config.clone();
    let clock_for_open = Arc::clone(&clock);
    let host = advertised_host.clone();
    let controller_for_open = Arc::clone(&controller);
    let broker = run_blocking(move || {
        open(
            config_for_open,
            clock_for_open,
            host,
            advertised_port,
            controller_for_open,
            meta_lock,
        )
    })
    .await??;
    let broker = Arc::new(broker);
    let metrics_serve = metrics_server.map(|m| m.spawn(broker.scrape(), broker.shutdown.clone()));
    let targets = crate::publisher::Targets {
        config: broker.config.clone(),
        replicas: Arc::clone(&broker.replicas),
        groups: Arc::clone(&broker.groups),
        txn: Arc::clone(&broker.txn),
        metrics: Arc::clone(&broker.metrics),
    };
    broker.tasks.spawn(Arc::clone(&broker.publisher).run(
        broker.controller.subscribe(),
        targets,
        broker.shutdown.clone(),
    ));
    spawn_replication(&broker);
    let lifecycle = Lifecycle::new();
    let incarnation_id = uuid::Uuid::new_v4();
    let registration = strom_controller::propose::BrokerRegistration {
        broker_id: broker.node_id,
        incarnation_id,
        host: broker.advertised_host.clone(),
        port: broker.advertised_port,
        rack: broker.config.rack.clone(),
        clean_shutdown: broker.logs.opened_after_clean_shutdown(),
    };
    broker.tasks.spawn(crate::lifecycle::run(
        Arc::clone(&broker),
        registration,
        lifecycle.clone(),
    ));
    // Unfenced means caught up past this process's registration: every
    // topic from before is in the image; serve once its logs are open. A
    // voter whose data belongs to another cluster learns it only here,
    // from the other voters.
    let ready = async {
        crate::lifecycle::await_unfenced(&broker, incarnation_id).await;
        broker.await_metadata().await;
    };
    tokio::select! {
        () = ready => {}
        Some(why) = broker.controller.wrong_cluster() => {
            broker.shutdown.cancel();
            broker.controller.shutdown().await;
            return Err(wrong_cluster(&why));
        }
    }
    // Clients and the coordinators' timers only now, as Kafka enables
    // request processing once the broker caught up: before, this node's
    // image may be the one it had when it stopped (a restarted leader or
    // coordinator answering, or aborting transactions, from it).
    let serve = tokio::spawn(crate::server::serve(Arc::clone(&broker), listener));
    let timers = Arc::clone(&broker);
    broker.tasks.spawn(async move {
        let images = Arc::clone(&timers);
        timers
            .groups
            .run_timers(move || images.image(), timers.shutdown.clone())
            .await;
    });
    let for_timers = Arc::clone(&broker);
    broker.tasks.spawn(async move {
        let markers = crate::api::txn::ClusterMarkerSender::once(&for_timers);
        for_timers
            .txn
            .run_timers(&markers, for_timers.shutdown.clone())
            .await;
    });
    tracing::info!(
        node_id = broker.node_id,
        addr = %local_addr,
        advertised = %format!("{}:{}", broker.advertised_host, broker.advertised_port),
        data_dir = %broker.config.data_dir.display(),
        metrics = %metrics_addr.map_or_else(|| "off".to_owned(), |a| format!("http://{a}/metrics")),
        "broker started"
    );
    log_property_report(&broker.config.properties);
    Ok(RunningBroker {
        broker,
        local_addr,
        metrics_addr,
        serve,
        metrics_serve,
        lifecycle,
    })
}

/// Starts replication's background work: the fetchers follow every applied
/// image, ISR changes go to the controller, followers that stopped catching
/// up are dropped from the ISR, and high watermarks are checkpointed.
fn spawn_replication(broker: &Arc<Broker>) {
    let settings = broker.config.settings.replication.clone();
    let for_sync = Arc::clone(broker);
    broker.tasks.spawn(async move {
        let mut applied = for_sync.publisher.subscribe_applied();
        loop {
            for_sync.fetchers.sync();
            tokio::select! {
                () = for_sync.shutdown.cancelled() => return,
                changed = applied.changed() => if changed.is_err() { return },
            }
        }
    });
    let controller = Arc::clone(&broker.controller);
    let node_id = broker.node_id;
    let for_isr = Arc::clone(broker);
    broker.tasks.spawn(crate::isr::run(
        Arc::clone(&broker.isr),
        move |request: crate::isr::IsrRequest| {
            let controller = Arc::clone(&controller);
            let broker_epoch = for_isr
                .image()
                .brokers
                .get(&node_id)
                .map_or(-1, |b| b.epoch);
            async move { send_isr_change(&controller, node_id, broker_epoch, request).await }
        },
        broker.shutdown.clone(),
    ));
    let clock = Arc::clone(&broker.clock);
    broker.tasks.spawn(crate::isr::shrink_periodically(
        Arc::clone(&broker.replicas),
        Arc::clone(&broker.isr),
        settings.replica_lag_time_max_ms,
        move || clock.now_ms(),
        broker.shutdown.clone(),
    ));
    let replicas = Arc::clone(&broker.replicas);
    let shutdown = broker.shutdown.clone();
    let interval = Duration::from_millis(settings.replica_high_watermark_checkpoint_interval_ms);
    broker.tasks.spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let replicas = Arc::clone(&replicas);
            let written =
                tokio::task::spawn_blocking(move || replicas.checkpoint_high_watermarks()).await;
            if let Ok(Err(e)) = written {
                tracing::warn!(error = %e, "writing the high watermark checkpoint failed");
            }
        }
    });
}

/// Sends one ISR change to the active controller (AlterPartition).
async fn send_isr_change(
    controller: &Controller,
    node_id: i32,
    broker_epoch: i64,
    request: crate::isr::IsrRequest,
) -> crate::isr::IsrReply {
    controller
        .alter_partition(strom_controller::AlterPartitionRequest {
            broker_id: node_id,
            broker_epoch,
            topic_id: request.topic_id,
            partition: request.partition,
            leader_epoch: request.change.leader_epoch,
            new_isr: request.change.new_isr,
            partition_epoch: request.change.partition_epoch,
        })
        .await
        .map(|p| (p.isr, p.partition_epoch))
        .map_err(|e| e.code)
}

/// The blocking part of startup.
fn open(
    config: BrokerConfig,
    clock: Arc<dyn Clock>,
    advertised_host: String,
    advertised_port: u16,
    controller: Arc<Controller>,
    meta_lock: File,
) -> Result<Broker, StartError> {
    let data_dir = config.data_dir.clone();
    let image = controller.image();
    let log_manager_config = LogManagerConfig {
        recovery_threads: config.settings.recovery_threads,
        ignored_dirs: vec![META_DIR.to_owned()],
        retention_check_interval_ms: config.settings.log_retention_check_interval_ms,
        cleaner: config.settings.cleaner.clone(),
        ..LogManagerConfig::new(&data_dir)
    };
    let logs = LogManager::open(
        log_manager_config,
        Arc::clone(&clock),
        &|tp: &TopicPartition| {
            let overrides = image
                .topic(&tp.topic)
                .map(|t| t.configs.clone())
                .unwrap_or_default();
            config.log_config(&image, &overrides)
        },
    )?;
    if let Some(bug) = config.settings.replication.planted_bug {
        tracing::error!("{}", bug.warning());
    }
    // Another broker can lead this one's partitions once the metadata names
    // one (asked at a failure: brokers join a running cluster).
    let has_peers: crate::partition::log_dir::HasPeers = {
        let controller = Arc::clone(&controller);
        let node_id = config.node_id;
        Arc::new(move || controller.image().brokers.keys().any(|id| *id != node_id))
    };
    let replicas = ReplicaManager::new(config.node_id, Arc::clone(&logs), Arc::clone(&clock))
        .with_replica_lag_time_max_ms(config.settings.replication.replica_lag_time_max_ms)
        .with_log_dir(crate::partition::log_dir::LogDirHealth::new(
            &data_dir, has_peers,
        ));
    // A partition whose log cannot be opened (a full disk, a directory the
    // file system refuses) must not keep the others offline: it is logged,
    // answered as KAFKA_STORAGE_ERROR and retried while the broker runs.
    if let Err(e) = replicas.apply_image(&image, &config) {
        tracing::error!(error = %e, "some partitions could not be opened at start; retrying");
    }
    // From now on a missing checkpoint means a data directory from before
    // replication, not a crash before the first periodic write.
    if let Err(e) = replicas.checkpoint_high_watermarks() {
        tracing::warn!(error = %e, "writing the high watermark checkpoint failed");
    }
    let fetch_sessions = FetchSessionCache::new(config.settings.fetch_session_cache_slots);
    let groups = GroupCoordinator::new(config.settings.group.clone(), Arc::clone(&clock));
    let producer_ids = Arc::new(ProducerIdManager::new(
        config.node_id,
        Arc::clone(&controller),
    ));
    let txn = TxnCoordinator::new(
        config.settings.txn.clone(),
        Arc::clone(&clock),
        Arc::clone(&producer_ids) as Arc<dyn ProducerIdSource>,
    );
    // The metadata publisher does so on every change after this.
    groups.sync(&replicas.topic_partitions(OFFSETS_TOPIC));
    txn.sync(&replicas.topic_partitions(TRANSACTION_STATE_TOPIC));
    let queued_max_request_bytes = config.settings.queued_max_request_bytes;
    let replicas = Arc::new(replicas);
    let (shutdown, tasks) = (CancellationToken::new(), TaskTracker::new());
    let fetchers = crate::fetcher::FetcherManager::new(crate::fetcher::Node {
        node_id: config.node_id,
        replicas: Arc::clone(&replicas),
        logs: Arc::clone(&logs),
        controller: Arc::clone(&controller),
        settings: config.settings.replication.clone(),
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
    });
    // A broker-only node keeps no metadata log: it follows the voters'.
    let metadata_log = controller.quorum().map(|q| Arc::clone(q.metadata_log()));
    Ok(Broker {
        node_id: config.node_id,
        request_budget: RequestBudget::new(queued_max_request_bytes),
        decompression_budget: DecompressionBudget::new(queued_max_request_bytes),
        advertised_host,
        advertised_port,
        controller,
        logs,
        replicas: Arc::clone(&replicas),
        fetchers,
        isr: Arc::new(crate::isr::IsrManager::default()),
        fetch_sessions: Mutex::new(fetch_sessions),
        groups: Arc::new(groups),
        txn: Arc::new(txn),
        clock,
        metrics: Arc::new(Metrics::new(&crate::api::answered_apis(), config.node_id)),
        publisher: Arc::new(Publisher::new(&image)),
        interbroker: crate::interbroker::InterBroker::new(config.node_id),
        metadata_log,
        producer_ids,
        shutdown,
        tasks,
        config,
        _meta_lock: meta_lock,
    })
}

/// Runs blocking start-up work off the runtime's threads.
async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StartError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StartError::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        })
}

/// Creates the data directory, takes its lock (one broker per directory),
/// and checks `meta.properties` names this node.
fn lock_data_dir(
    data_dir: &std::path::Path,
    node_id: i32,
) -> Result<(File, Option<crate::meta_properties::MetaProperties>), StartError> {
    let meta_dir = data_dir.join(META_DIR);
    fs::create_dir_all(&meta_dir).map_err(|source| StartError::Io {
        path: meta_dir.clone(),
        source,
    })?;
    let meta_lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(meta_dir.join(".lock"))
        .map_err(|source| StartError::Io {
            path: meta_dir.clone(),
            source,
        })?;
    match meta_lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Err(StartError::Locked(data_dir.to_path_buf())),
        Err(TryLockError::Error(source)) => {
            return Err(StartError::Io {
                path: meta_dir,
                source,
            });
        }
    }
    let found = crate::meta_properties::read(data_dir)?;
    if let Some(found) = &found {
        crate::meta_properties::check_node(found, node_id).map_err(|e| e.in_dir(data_dir))?;
    }
    Ok((meta_lock, found))
}

/// Checks the data directory belongs to the cluster the quorum names, and
/// records it in `meta.properties` the first time.
fn check_cluster(
    data_dir: &std::path::Path,
    node_id: i32,
    found: Option<crate::meta_properties::MetaProperties>,
    cluster_id: &str,
) -> Result<(), StartError> {
    match found {
        Some(found) if found.cluster_id.is_some() => {
            crate::meta_properties::check_cluster(&found, cluster_id)
                .map_err(|e| e.in_dir(data_dir))?;
        }
        found => {
            let mut properties =
                found.unwrap_or_else(|| crate::meta_properties::MetaProperties::new(node_id, None));
            properties.cluster_id = Some(cluster_id.to_owned());
            crate::meta_properties::write(data_dir, &properties)?;
        }
    }
    Ok(())
}

/// The metadata log directory.
fn metadata_log_dir(config: &BrokerConfig) -> PathBuf {
    config
        .data_dir
        .join(META_DIR)
        .join(TopicPartition::new(METADATA_TOPIC, 0).dir_name())
}

/// The controller's settings from the broker's.
fn controller_config(config: &BrokerConfig) -> ControllerConfig {
    ControllerConfig {
        num_partitions: config.settings.num_partitions,
        default_replication_factor: config.settings.default_replication_factor,
        broker_session_timeout_ms: config.settings.cluster.broker_session_timeout_ms,
        unclean_leader_election_enable: config
            .properties
            .get(strom_controller::propose::UNCLEAN_LEADER_ELECTION)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
        auto_leader_rebalance_enable: config.settings.cluster.auto_leader_rebalance_enable,
        leader_imbalance_check_interval_seconds: config
            .settings
            .cluster
            .leader_imbalance_check_interval_seconds,
        leader_imbalance_per_broker_percentage: config
            .settings
            .cluster
            .leader_imbalance_per_broker_percentage,
        min_insync_replicas: config
            .properties
            .get(strom_controller::propose::MIN_INSYNC_REPLICAS)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(1),
        ..ControllerConfig::default()
    }
}

/// Starts the controller on the quorum of `controller.quorum.voters` (or
/// alone, standalone).
async fn start_controller(
    config: &BrokerConfig,
    clock: Arc<dyn Clock>,
    listener: Option<tokio::net::TcpListener>,
) -> Result<Arc<Controller>, StartError> {
    let cluster = &config.settings.cluster;
    let controller_config = controller_config(config);
    let quorum_config = QuorumConfig {
        node_id: config.node_id,
        voters: config
            .voters
            .iter()
            .map(|v| (v.id, format!("{}:{}", v.host, v.port)))
            .collect(),
        election_timeout_ms: cluster.controller_quorum_election_timeout_ms,
        request_timeout_ms: cluster.controller_quorum_request_timeout_ms,
    };
    let dir = metadata_log_dir(config);
    let open_clock = Arc::clone(&clock);
    let open_log = move |dir: &std::path::Path| open_metadata_log(dir, Arc::clone(&open_clock));
    Ok(Controller::start(
        config.node_id,
        controller_config,
        quorum_config,
        &dir,
        &open_log,
        clock,
        listener,
    )
    .await?)
}

/// The controller of a broker-only node: it follows the voters of
/// `controller.quorum.voters`.
fn observe_controllers(
    config: &BrokerConfig,
    meta_properties: Option<&crate::meta_properties::MetaProperties>,
    clock: Arc<dyn Clock>,
) -> Arc<Controller> {
    let cluster = &config.settings.cluster;
    let voters = config
        .voters
        .iter()
        .map(|v| (v.id, format!("{}:{}", v.host, v.port)))
        .collect();
    Controller::observe(
        config.node_id,
        controller_config(config),
        &voters,
        meta_properties.and_then(|p| p.cluster_id.as_deref()),
        Duration::from_millis(cluster.controller_quorum_request_timeout_ms),
        clock,
    )
}

fn wrong_cluster(why: &str) -> StartError {
    StartError::WrongCluster(format!(
        "this node's data directory belongs to another cluster than the voters' ({why}); give it an empty data directory to join"
    ))
}

/// How often a node waiting for the quorum says so.
const WAITING_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Waits until the image has a cluster id: the quorum exists and this node
/// has caught up with it. Fails when the voters belong to another cluster,
/// and then stops the controller.
async fn await_cluster_id(
    controller: &Controller,
) -> Result<Arc<strom_controller::MetadataImage>, StartError> {
    let mut images = controller.subscribe();
    let mut refused = controller.wrong_cluster();
    loop {
        let waited = tokio::select! {
            why = &mut refused => match why {
                Some(why) => {
                    // Stop voting and following before saying why.
                    controller.shutdown().await;
                    return Err(wrong_cluster(&why));
                }
                None => {
                    refused = Box::pin(std::future::pending());
                    continue;
                }
            },
            waited = tokio::time::timeout(
                WAITING_LOG_INTERVAL,
                images.wait_for(|i| !i.cluster_id.is_empty()),
            ) => waited,
        };
        match waited {
            Ok(Ok(image)) => return Ok(Arc::clone(&image)),
            Ok(Err(_)) => return Ok(controller.image()),
            Err(_) => tracing::info!(
                voters = ?controller.voter_ids(),
                "waiting for the controller quorum (a majority of the voters must be up)"
            ),
        }
    }
}

/// Warns about every property the broker does not know, as Kafka does
/// ("supplied but isn't a known config"), with the likely intended name, and
/// lists Kafka's properties that have no effect in Strom.
fn log_property_report(properties: &std::collections::BTreeMap<String, String>) {
    let report = crate::config::properties::report(properties);
    for unknown in &report.unknown {
        match &unknown.hint {
            Some(hint) => tracing::warn!(
                "the configuration '{}' was supplied but isn't a known config ({hint})",
                unknown.name
            ),
            None => tracing::warn!(
                "the configuration '{}' was supplied but isn't a known config",
                unknown.name
            ),
        }
    }
    if !report.without_effect.is_empty() {
        tracing::info!(
            "these Kafka properties have no effect in Strom: {}",
            report.without_effect.join(", ")
        );
    }
}
