//! Fault injection for Strom clusters, in the manner of Jepsen's Kafka
//! tests: real `strom` processes, each in a network namespace of its own
//! ([`net`]); independent clients recording every operation in a JSON
//! history ([`workload`], [`history`]); faults on a seeded schedule
//! ([`nemesis`]); and a checker of the queue anomalies Jepsen found in
//! Kafka-compatible systems ([`checker`]). [`run`] ties them together;
//! docs/testing.md says how to run, replay and read one.

pub mod checker;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod replicas;
pub mod run;
pub mod workload;
