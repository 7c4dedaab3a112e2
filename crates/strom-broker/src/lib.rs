//! The Strom broker: a Kafka protocol server over Strom's storage engine and
//! controller. Kafka clients (librdkafka, Java, kafka-python, ...) use it
//! unchanged.
//!
//! # Layout
//!
//! In layers; a module uses only those below it (`scripts/module_graph.py`
//! checks that there is no cycle):
//!
//! ```text
//! start                     opens everything, spawns the tasks below, shuts down
//! server, api, publisher    connections; request handlers; metadata -> state
//! broker                    the shared state: one owner of every component
//! group, txn, metrics       coordinators (on the coordinator ports); Prometheus
//! replica, coordinator      the partitions held here; the coordinators' ports
//! partition, fetch_session  one partition; incremental fetch sessions
//! config, memory, listener  typed settings; memory budgets; socket binding
//! meta_properties           a data directory's identity (node, cluster)
//! ```
//!
//! - [`start`]: [`start()`] opens the data directory, the metadata log, the
//!   controller and the logs, then serves; [`RunningBroker::shutdown`].
//! - [`server`]: the accept loop and one task per connection: bounded frames,
//!   each request's first phase in request order, second phases (acks=all,
//!   long polls) concurrently, answers in request order; idle timeout.
//! - [`api`]: one module per API family, and the one table of APIs (versions,
//!   parking, handler) that ApiVersions, the dispatch and the metrics use.
//!   Handlers translate wire types into calls on the components.
//! - [`publisher`]: the metadata publisher: applies each new image (the
//!   delta from the last) to the partitions and coordinators; handlers that
//!   change metadata wait for it.
//! - [`broker`]: [`Broker`], the shared state handlers use.
//! - [`group`]: the group coordinator: consumer groups (classic and KIP-848)
//!   and committed offsets, kept in `__consumer_offsets` and sharded by its
//!   partitions (one [`group::GroupShard`] per partition this broker leads).
//! - [`txn`]: the transaction coordinator: transactional ids, their
//!   transactions' state, one shard per partition of `__transaction_state`
//!   this broker leads; its ports for producer ids, markers
//!   (WriteTxnMarkers) and produce-time verification (KIP-890).
//! - [`metrics`]: Prometheus metrics, recorded and read at scrape time
//!   ([`metrics::Scrape`]), and the HTTP listener that serves them.
//! - [`replica`]: the partitions this broker holds, kept in line with the
//!   image by the publisher.
//! - [`coordinator`]: the ports the coordinators are built on (their
//!   internal partition, the clock) and their shards, one per internal
//!   partition this broker leads, loaded and unloaded as leadership moves.
//! - [`partition`]: one partition on this broker ([`partition::Partition`]):
//!   its log, role (leader with per-follower state, or follower), the high
//!   watermark (Kafka's rule as a pure function), produce checks and the
//!   fetches and acks=all produces waiting on it.
//! - [`fetch_session`]: incremental fetch sessions (KIP-227).
//! - [`config`]: broker properties with Kafka's names, parsed once at start
//!   into typed [`config::Settings`] (the coordinators' settings included);
//!   which properties are known or refused (`config::properties`); topic
//!   config definitions.
//! - [`memory`]: broker-wide memory budgets: request bytes in flight
//!   (`queued.max.request.bytes`) and decompression of produced batches.
//! - [`listener`]: binding the listening sockets.
//! - [`meta_properties`]: `meta.properties` at the root of the data
//!   directory (Kafka's format): which node and cluster its data belongs to.

pub mod api;
pub mod broker;
pub mod config;
pub mod coordinator;
pub mod fetch_session;
pub mod fetcher;
pub mod group;
pub mod interbroker;
pub mod isr;
pub mod lifecycle;
pub mod listener;
pub mod memory;
pub mod meta_properties;
pub mod metrics;
pub mod partition;
pub mod publisher;
pub mod replica;
pub mod server;
pub mod start;
pub mod txn;

pub use broker::Broker;
pub use config::BrokerConfig;
pub use start::{RunningBroker, RunningController, RunningNode, start, start_node};
