//! The cluster's metadata: topics, partitions and their replicas, leaders and
//! leader epochs, configs, brokers, producer id blocks.
//!
//! Every change is a record appended (and fsynced) to the metadata log, Kafka's
//! `__cluster_metadata` partition, before it takes effect. Applying the records
//! in order gives an immutable [`MetadataImage`], which request handlers read
//! and never change; a new image is published after each change. This node is
//! the only voter of the quorum for now: the same path will carry a replicated
//! quorum of several brokers.
//!
//! # Layout
//!
//! - [`records`]: the metadata records and their encoding in record batches.
//! - [`image`]: [`MetadataImage`] and how a record changes it.
//! - [`controller`]: [`Controller`], which validates requests as Kafka's
//!   controller does, appends records and publishes images.

pub mod controller;
pub mod image;
pub mod records;

pub use controller::{
    Controller, ControllerConfig, ControllerError, CreatePartitionsRequest, CreateTopicRequest,
    CreatedTopic, MAX_RECORDS_PER_USER_OP, METADATA_BATCH_BYTES_MAX, METADATA_TOPIC,
    ProducerIdBlock, metadata_log_config,
};
pub use image::{BrokerInfo, ConfigResource, MetadataImage, PartitionImage, TopicImage};
pub use records::MetadataRecord;
