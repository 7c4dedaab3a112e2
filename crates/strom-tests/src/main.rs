//! End-to-end tests and benchmarks of Strom (`tests/`, `benches/`): the
//! broker as users run it, a `strom` process on real sockets and files,
//! driven by independent clients (librdkafka through the `rdkafka` crate)
//! and by our own (`strom-client`, the `strom` tools). Streams and Connect
//! tests that need a broker belong here too.
//!
//! This binary is the `strom` command (`strom_cli::main`) under the name
//! `strom-e2e`, so that the tests always run the code they were built with.
//!
//! # Layout
//!
//! - `tests/common`: starting and stopping broker processes on free ports,
//!   librdkafka clients for them, polling with deadlines.
//! - `tests/*.rs`: one file per area (clients, groups, transactions, configs,
//!   metrics, hostile input, resource bounds, the CLI).
//! - `benches/`: throughput and latency against a release broker.

fn main() -> std::process::ExitCode {
    strom_cli::main()
}
