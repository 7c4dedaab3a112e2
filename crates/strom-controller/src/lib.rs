//! The cluster's metadata: topics, partitions and their replicas, leaders and
//! leader epochs, configs, brokers, producer id blocks.
//!
//! Every change is a record appended (and fsynced) to the metadata log, Kafka's
//! `__cluster_metadata` partition, before it takes effect. Applying the records
//! in order gives an immutable [`MetadataImage`], which request handlers read
//! and never change; a new image is published after each change. A change
//! goes through three steps: propose (checked against the latest image,
//! producing its records; pure), commit (the records made durable as one
//! batch through the [`MetadataLog`] seam) and apply (the committed records
//! replayed into a new image, which is published). This node is the only
//! voter of the quorum for now: a replicated quorum will implement the same
//! commit seam. Image snapshots next to the log let a restart replay only the
//! records after the newest one.
//!
//! # Layout
//!
//! - [`records`]: the metadata records and their encoding in record batches.
//! - [`image`]: [`MetadataImage`], how a committed batch changes it (the apply
//!   step) and the records that rebuild it.
//! - [`propose`]: the propose step: each operation checked against an image
//!   as Kafka's controller does, giving its records ([`Proposal`]).
//! - [`reassign`]: partition reassignment (KIP-455): starting, completing
//!   and cancelling one, and listing those in progress.
//! - [`metadata_log`]: the commit step's seam, [`MetadataLog`]: the local
//!   log with fsync ([`LocalMetadataLog`]) and one in memory for tests.
//! - [`snapshot`]: image snapshots (`<offset>-<epoch>.checkpoint` files),
//!   written atomically, checked on load, never trusted when damaged.
//! - [`controller`]: [`Controller`], the single writer: proposes against the
//!   latest image, commits in order, applies and publishes, snapshots.
//! - [`quorum`]: the controller quorum (openraft) under the metadata log.
//! - [`quorum_description`]: DescribeQuorum's picture of the quorum: the
//!   leader's view of every voter and of the observers (brokers heard from
//!   by heartbeat).

pub mod controller;
pub mod image;
pub mod metadata_log;
pub mod observer;
pub mod propose;
pub mod quorum;
pub mod quorum_description;
pub mod reassign;
pub mod records;
pub mod snapshot;

pub use controller::{
    AlterPartitionRequest, Controller, ControllerConfig, ControllerError, CreatePartitionsRequest,
    CreateTopicRequest, CreatedTopic, ElectionType, LoadStats, MAX_RECORDS_PER_USER_OP,
    METADATA_BATCH_BYTES_MAX, METADATA_TOPIC, ProducerIdBlock, SNAPSHOT_INTERVAL_BYTES,
    metadata_log_config, open_metadata_log,
};
pub use image::{BrokerInfo, ConfigResource, MetadataImage, PartitionImage, TopicImage};
pub use metadata_log::{LocalMetadataLog, MemoryMetadataLog, MetadataLog, MetadataLogError};
pub use propose::{Proposal, TopicElection};
pub use quorum_description::{QuorumDescription, ReplicaDescription};
pub use reassign::{
    OngoingReassignment, OngoingTopicReassignments, ReassignTopic, TopicReassignmentResult,
};
pub use records::MetadataRecord;
pub use snapshot::SnapshotStore;
