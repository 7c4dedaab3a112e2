//! Strom's Rust client for Kafka's wire protocol, usable against Strom and
//! Apache Kafka alike: it uses only what the protocol defines.
//!
//! # Layout
//!
//! - [`config`]: [`ClientConfig`], properties with Kafka's names.
//! - [`error`]: [`Error`], Kafka's error codes and this side's failures.
//! - [`conn`]: one connection to one broker, with pipelined requests:
//!   `strom_net`'s connection over TCP, with this client's errors.
//! - `cluster`: metadata and the connection to each broker.
//! - [`partitioner`]: the Java client's default partitioner, so that records
//!   land on the partitions a Java producer would choose.
//! - [`producer`]: [`Producer`], batching, compression, idempotence,
//!   transactions.
//! - [`consumer`]: [`Consumer`], assignment or a group (classic or KIP-848), fetch
//!   pipelining, commits; [`consumer::PartitionAssignor`] for the leader's
//!   assignment in a classic group.
//! - [`group`]: [`group::GroupMember`], a member of a classic group of any
//!   protocol type (Connect's `connect`, or one of the application's).
//! - [`admin`]: [`Admin`], topics, configs, groups and offsets, one module
//!   per API family.

pub mod admin;
pub mod config;
pub mod conn;
pub mod consumer;
pub mod error;
pub mod group;
pub mod partitioner;
pub mod producer;

mod cluster;

pub use admin::Admin;
pub use cluster::{BrokerInfo, PartitionInfo, TopicInfo};
pub use config::ClientConfig;
pub use consumer::{
    Consumer, ConsumerGroupMetadata, ConsumerRecord, Offset, PartitionAssignor, RebalanceListener,
    TopicPartition,
};
pub use error::{Error, ErrorCode, Result};
pub use producer::{DeliveryFuture, Producer, ProducerRecord, RecordMetadata};
