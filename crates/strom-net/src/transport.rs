//! The transport seam: how a connection gets a byte stream to an address.
//!
//! [`Connection`](crate::Connection) asks a [`Transport`] for a [`Stream`]
//! and does everything else (timeouts, framing, correlation ids) itself, so
//! the real network ([`TcpTransport`]), a simulated one, or TLS run the same
//! connection code.

use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The half a connection reads responses from (its reader task owns it).
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// The half a connection writes requests to (its writers share it).
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A future a [`Transport`] connects with.
pub type Connecting<'a> = Pin<Box<dyn Future<Output = io::Result<Stream>> + Send + 'a>>;

/// A connected byte stream as two halves owned apart: one task reads
/// responses while callers write requests.
pub struct Stream {
    read: BoxRead,
    write: BoxWrite,
}

impl Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").finish_non_exhaustive()
    }
}

impl Stream {
    /// A stream from halves a transport split itself (as TCP does, without
    /// a lock between them).
    pub fn from_halves(
        read: impl AsyncRead + Send + Unpin + 'static,
        write: impl AsyncWrite + Send + Unpin + 'static,
    ) -> Self {
        Self {
            read: Box::new(read),
            write: Box::new(write),
        }
    }

    /// A stream from one duplex byte stream (an in-memory pipe, a TLS
    /// session), split with [`tokio::io::split`].
    pub fn new(stream: impl AsyncRead + AsyncWrite + Send + 'static) -> Self {
        let (read, write) = tokio::io::split(stream);
        Self::from_halves(read, write)
    }

    /// The read and write halves.
    pub fn into_halves(self) -> (BoxRead, BoxWrite) {
        (self.read, self.write)
    }
}

/// Opens byte streams to brokers. Dyn-compatible, so that what a process
/// connects over (the network, a simulation) can be chosen at run time.
pub trait Transport: Send + Sync + Debug {
    /// Opens a stream to `addr` (host:port). Unbounded in time: the caller
    /// bounds it with its connect timeout.
    fn connect<'a>(&'a self, addr: &'a str) -> Connecting<'a>;
}

/// The real network: TCP, with Nagle's algorithm off (requests are written
/// whole, and a small one must not wait for an earlier one's ack).
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpTransport;

impl Transport for TcpTransport {
    fn connect<'a>(&'a self, addr: &'a str) -> Connecting<'a> {
        Box::pin(async move {
            let socket = TcpStream::connect(addr).await?;
            socket.set_nodelay(true)?;
            let (read, write) = socket.into_split();
            Ok(Stream::from_halves(read, write))
        })
    }
}
