//! Kafka's wire formats, as Strom reads and writes them. No I/O happens here.
//!
//! # Layout
//!
//! - [`record_batch`]: a zero-copy view over the 61-byte v2 `RecordBatch` header,
//!   validation (length, magic, CRC32C) and the in-place rewrites a broker makes
//!   (base offset, partition leader epoch, LogAppendTime).
//! - [`varint`]: Kafka's zig-zag varints and varlongs.
//! - [`record`]: the v2 `Record` format inside a batch: encode, decode, iterate.
//! - [`compression`]: gzip, snappy (raw and xerial framing), lz4 frame and zstd,
//!   with bounded decompression.
//! - [`builder`]: builds complete record batches (tests, clients, control batches).
//! - [`messages`]: Kafka's request and response messages (from the
//!   `kafka-protocol` crate, behind this module) and request/response framing.
//! - [`error_code`]: Kafka's error codes as one enum.
//! - [`topic`]: Kafka's topic name rules, with its messages.

#![cfg_attr(test, allow(clippy::cast_possible_truncation))]

pub mod builder;
pub mod compression;
pub mod error_code;
pub mod messages;
pub mod record;
pub mod record_batch;
pub mod topic;
pub mod varint;
