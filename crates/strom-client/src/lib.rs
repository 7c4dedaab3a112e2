//! Strom's Rust client for Kafka's wire protocol, usable against Strom and
//! Apache Kafka alike.
//!
//! Built in steps; so far:
//! - [`partitioner`]: the Java client's default partitioner, so that records
//!   land on the partitions a Java producer would choose.

pub mod partitioner;
