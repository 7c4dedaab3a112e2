//! The broker's shared state: the components every request handler, the
//! metadata publisher and the connections use, owned in one place
//! ([`Broker`]). Starting and stopping it is `start`'s.

use std::fs::File;
use std::sync::Arc;

use parking_lot::Mutex;
use strom_controller::{Controller, ControllerError, MetadataImage, ProducerIdBlock};
use strom_storage::{Clock, LogManager, PartitionLog};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::BrokerConfig;
use crate::fetch_session::FetchSessionCache;
use crate::group::GroupCoordinator;
use crate::memory::{DecompressionBudget, RequestBudget};
use crate::metrics::Metrics;
use crate::publisher::Publisher;
use crate::replica::ReplicaManager;
use crate::txn::{ProducerIdSource, TxnCoordinator};

/// Producer ids from the block the controller handed this broker.
#[derive(Debug, Default)]
struct ProducerIds {
    block: Option<ProducerIdBlock>,
    next: i64,
}

/// Hands out producer ids from blocks the controller allocates to this
/// broker (Kafka's `ProducerIdManager`): InitProducerId without a
/// transactional id, and the transaction coordinator's port.
#[derive(Debug)]
pub struct ProducerIdManager {
    /// The broker a block is asked for (the controller records the owner).
    node_id: i32,
    /// Allocates the blocks (Kafka's AllocateProducerIds).
    controller: Arc<Controller>,
    /// The current block and the next id in it: one lock, so no id is handed
    /// out twice.
    ids: Mutex<ProducerIds>,
}

/// Runs `future` to completion from blocking code (a `spawn_blocking`
/// task, or a thread outside the runtime), as the controller's operations
/// are asynchronous.
pub(crate) fn wait_for<F: std::future::Future>(future: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => tokio::task::block_in_place(|| handle.block_on(future)),
        Err(_) => futures::executor::block_on(future),
    }
}

impl ProducerIdManager {
    pub fn new(node_id: i32, controller: Arc<Controller>) -> Self {
        Self {
            node_id,
            controller,
            ids: Mutex::new(ProducerIds::default()),
        }
    }

    /// A new producer id, from this broker's block (taking a new block from
    /// the controller when it runs out). Blocking.
    pub fn next(&self) -> Result<i64, ControllerError> {
        let mut ids = self.ids.lock();
        match ids.block {
            Some(block) if ids.next < block.start + block.len => {}
            _ => {
                let block = wait_for(self.controller.allocate_producer_ids(self.node_id))?;
                ids.block = Some(block);
                ids.next = block.start;
            }
        }
        let id = ids.next;
        ids.next += 1;
        Ok(id)
    }
}

impl ProducerIdSource for ProducerIdManager {
    fn next_producer_id(&self) -> Result<i64, strom_protocol::error_code::ErrorCode> {
        self.next().map_err(|e| {
            tracing::error!(error = %e, "allocating a producer id failed");
            strom_protocol::error_code::ErrorCode::CoordinatorNotAvailable
        })
    }
}

/// Everything request handlers share.
#[derive(Debug)]
pub struct Broker {
    pub config: BrokerConfig,
    pub node_id: i32,
    /// Host and port clients are told to connect to.
    pub advertised_host: String,
    pub advertised_port: u16,
    pub controller: Arc<Controller>,
    pub logs: Arc<LogManager>,
    pub replicas: Arc<ReplicaManager>,
    /// The replica fetchers: one per leader this broker follows.
    pub fetchers: crate::fetcher::FetcherManager,
    /// ISR changes on their way to the controller.
    pub isr: Arc<crate::isr::IsrManager>,
    pub fetch_sessions: Mutex<FetchSessionCache>,
    pub groups: Arc<GroupCoordinator>,
    pub txn: Arc<TxnCoordinator>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// Applies each new metadata image to the partitions and coordinators.
    pub publisher: Arc<Publisher>,
    /// Connections to the other brokers, for the coordinators' requests
    /// (transaction markers, KIP-890 verification).
    pub interbroker: crate::interbroker::InterBroker,
    /// Request bytes read and not yet answered (`queued.max.request.bytes`).
    pub request_budget: RequestBudget,
    /// Memory for decompressing produced batches (the same size).
    pub decompression_budget: DecompressionBudget,
    /// `None` on a broker-only node (it follows the voters' log).
    pub(crate) metadata_log: Option<Arc<PartitionLog>>,
    pub(crate) producer_ids: Arc<ProducerIdManager>,
    /// Cancelled when the broker shuts down.
    pub shutdown: CancellationToken,
    /// Every connection task.
    pub tasks: TaskTracker,
    pub(crate) _meta_lock: File,
}

impl Broker {
    /// The controller id clients are told (Metadata, DescribeCluster): in
    /// KRaft, a live broker, since clients send admin requests there and
    /// any broker forwards them to the active controller. The active
    /// controller when it is a live broker (so every node answers the
    /// same); during an election this broker itself (the old controller may
    /// be dead but not yet fenced, and clients would wait on it); -1 when
    /// no broker is live.
    pub fn controller_id_for_clients(&self, image: &MetadataImage) -> i32 {
        match self.controller.active_controller() {
            Some(id) if image.is_live(id) => id,
            _ if image.is_live(self.node_id) => self.node_id,
            _ => image.live_brokers().map(|b| b.id).next().unwrap_or(-1),
        }
    }

    /// What the metrics listener reads.
    pub fn scrape(&self) -> crate::metrics::Scrape {
        crate::metrics::Scrape {
            recorded: Arc::clone(&self.metrics),
            replicas: Arc::clone(&self.replicas),
            groups: Arc::clone(&self.groups),
        }
    }

    /// The current metadata image.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.controller.image()
    }

    /// Waits until the metadata publisher has applied the current image
    /// (a handler that changed the metadata waits for its change to be
    /// the broker's state before answering).
    pub async fn await_metadata(&self) {
        self.publisher.wait_applied(self.image().offset).await;
    }

    /// [`Self::await_metadata`] from a blocking thread (code running in
    /// `api::blocking`).
    pub fn await_metadata_blocking(&self) {
        tokio::runtime::Handle::current().block_on(self.await_metadata());
    }

    /// A new producer id, from this broker's block (taking a new block from
    /// the controller when it runs out).
    pub fn next_producer_id(&self) -> Result<i64, ControllerError> {
        self.producer_ids.next()
    }
}
