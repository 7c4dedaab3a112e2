//! Binding the broker's listening sockets (the Kafka listener and the
//! metrics listener) with the options both need.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Binds a listener on `addr` with an accept queue of `backlog` connections
/// (the kernel caps it at `net.core.somaxconn`). `SO_REUSEADDR` is set, as
/// tokio's own `bind` sets it, so a restarted broker can take its port back
/// at once.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}
