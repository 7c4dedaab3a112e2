//! The Strom broker: a Kafka protocol server over Strom's storage engine and
//! controller. Kafka clients (librdkafka, Java, kafka-python, ...) use it
//! unchanged.
//!
//! # Layout
//!
//! - [`broker`]: [`Broker`], the shared state, and [`start`]: opening the
//!   metadata log, the controller, the logs, then serving.
//! - [`server`]: the accept loop and one task per connection: bounded frames,
//!   requests answered in order while the next ones are read, idle timeout.
//! - [`api`]: one module per API family, and the one table of APIs (versions,
//!   parking, handler) that ApiVersions, the dispatch and the metrics use.
//! - [`partition`]: one partition on this broker ([`partition::Partition`]):
//!   its log, leader epoch, high watermark (Kafka's rule as a pure function)
//!   and waiting fetches.
//! - [`publisher`]: the metadata publisher: applies each new image (the
//!   delta from the last) to the partitions and coordinators; handlers that
//!   change metadata wait for it.
//! - [`replica`]: the partitions this broker holds, their high watermarks and
//!   the fetches waiting on them.
//! - [`config`]: broker properties with Kafka's names, parsed once at start
//!   into typed [`config::Settings`]; which properties are known or refused
//!   (`config::properties`); topic config definitions.
//! - [`coordinator`]: the ports the coordinators are built on (their
//!   internal partition, the clock) and their shards, one per internal
//!   partition this broker leads, loaded and unloaded as leadership moves.
//! - [`group`]: the group coordinator: consumer groups (classic and KIP-848)
//!   and committed offsets, kept in `__consumer_offsets` and sharded by its
//!   partitions (one [`group::GroupShard`] per partition this broker leads).
//! - [`memory`]: broker-wide memory budgets: request bytes in flight
//!   (`queued.max.request.bytes`) and decompression of produced batches.
//! - [`metrics`]: Prometheus metrics, recorded and read at scrape time, and
//!   the HTTP listener that serves them.
//! - [`txn`]: the transaction coordinator: transactional ids, their
//!   transactions' state, one shard per partition of `__transaction_state`
//!   this broker leads; its ports for producer ids, markers
//!   (WriteTxnMarkers) and produce-time verification (KIP-890). It knows no
//!   [`Broker`]: the broker and the API layer implement its ports.

pub mod api;
pub mod broker;
pub mod config;
pub mod coordinator;
pub mod group;
pub mod memory;
pub mod metrics;
pub mod partition;
pub mod publisher;
pub mod replica;
pub mod server;
pub mod txn;

pub use broker::{Broker, RunningBroker, start};
pub use config::BrokerConfig;
