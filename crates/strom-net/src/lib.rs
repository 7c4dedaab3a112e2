//! Kafka connections for every part of Strom that talks to a broker: the
//! client today, the replica fetcher and the quorum's RPCs next. A
//! [`Connection`] frames requests, numbers them with correlation ids, keeps
//! many in flight and hands each response to its caller; it knows nothing of
//! metadata, leaders or groups, which belong to its users.
//!
//! # Layout
//!
//! - [`transport`]: the seam. [`Transport`] opens a byte stream to an
//!   address; [`TcpTransport`] is the real network, and a simulated network
//!   or TLS can take its place without touching the connection code.
//! - [`frame`]: reading one size-prefixed response frame, bounded by
//!   [`MAX_RESPONSE_BYTES`], and its correlation id.
//! - [`conn`]: [`Connection`], one connection to one broker with pipelined
//!   requests and the API versions both sides speak; [`InFlight`], a request
//!   written and not yet answered.
//! - [`error`]: [`Error`], what can go wrong on a connection.

pub mod conn;
pub mod error;
pub mod frame;
pub mod transport;

pub use conn::{ConnectOptions, Connection, InFlight};
pub use error::{Error, Result};
pub use frame::MAX_RESPONSE_BYTES;
pub use transport::{Stream, TcpTransport, Transport};
