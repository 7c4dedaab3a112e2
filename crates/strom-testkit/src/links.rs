//! Link-level faults between voters: a TCP proxy per directed controller
//! link ([`ClusterBuilder::with_link_proxies`](crate::ClusterBuilder::with_link_proxies)).
//!
//! Voters connect to each other with the addresses in their own `--voters`
//! list, so node `i`'s list can name, for each peer `j`, a proxy listening
//! for the link `i → j` and forwarding to `j`'s controller listener. Every
//! connection `i` opens to `j` (Raft RPCs, forwarded admin requests,
//! heartbeats to the active controller) then passes that proxy, and a
//! test decides per link whether it carries traffic:
//!
//! - [`LinkState::Up`]: bytes are copied both ways.
//! - [`LinkState::Blackholed`]: a partition as the network makes one.
//!   Connections open at the cut are closed (their requests fail), and new
//!   ones are accepted and then left silent until the link changes again,
//!   so calls over them run into their timeouts.
//! - [`LinkState::Refused`]: the peer looks down. Open connections are
//!   closed and new ones closed at once.
//!
//! Client (Kafka) listeners are never proxied: a cut isolates the quorum
//! traffic only, and a test can still talk to every node.
//!
//! The proxies run on the runtime that started the cluster and stop when the
//! cluster is dropped (or that runtime ends). Each link serves at most
//! [`MAX_CONNECTIONS_PER_LINK`] connections at once.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Connections one link serves at once. A node keeps one connection per
/// peer (requests take turns on it) and reconnects after a failure, so a
/// handful suffice; the rest are closed on arrival, which a node treats as
/// a failed call.
pub const MAX_CONNECTIONS_PER_LINK: usize = 16;

/// How long the proxy waits to connect to the real listener; a node that is
/// paused (SIGSTOP) still accepts in its kernel backlog, a dead one refuses.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a directed link between two voters carries traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Bytes flow both ways.
    Up,
    /// Dropped without a word: open connections are closed, new ones are
    /// accepted and then never answered until the link changes.
    Blackholed,
    /// Open connections are closed and new ones closed at once.
    Refused,
}

/// One directed link's proxy.
#[derive(Debug)]
struct Link {
    /// Where the `from` node connects to reach `to`.
    listen: SocketAddr,
    state: watch::Sender<LinkState>,
}

/// The proxies of every directed link of a cluster, keyed `(from, to)`.
#[derive(Debug)]
pub(crate) struct LinkProxies {
    links: BTreeMap<(i32, i32), Link>,
    /// Cancelled on drop: every accept loop and connection ends.
    shutdown: CancellationToken,
    /// Every proxy task; closed once all are spawned.
    tasks: TaskTracker,
}

impl LinkProxies {
    /// Binds one proxy per ordered pair of distinct `nodes` (id and real
    /// controller address) on a free loopback port, and starts them all.
    pub(crate) async fn start(nodes: &[(i32, SocketAddr)]) -> std::io::Result<Self> {
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let mut links = BTreeMap::new();
        for &(from, _) in nodes {
            for &(to, target) in nodes {
                if from == to {
                    continue;
                }
                let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
                let listen = listener.local_addr()?;
                let (state, watched) = watch::channel(LinkState::Up);
                tasks.spawn(serve_link(
                    listener,
                    target,
                    watched,
                    shutdown.clone(),
                    tasks.clone(),
                ));
                links.insert((from, to), Link { listen, state });
            }
        }
        tasks.close();
        Ok(Self {
            links,
            shutdown,
            tasks,
        })
    }

    /// The address `from` uses to reach `to`.
    pub(crate) fn addr(&self, from: i32, to: i32) -> Option<SocketAddr> {
        self.links.get(&(from, to)).map(|l| l.listen)
    }

    /// Sets the link `from → to`; `false` when there is no such link.
    pub(crate) fn set(&self, from: i32, to: i32, state: LinkState) -> bool {
        match self.links.get(&(from, to)) {
            Some(link) => {
                link.state.send_replace(state);
                true
            }
            None => false,
        }
    }

    /// The state of the link `from → to`.
    pub(crate) fn state(&self, from: i32, to: i32) -> Option<LinkState> {
        self.links.get(&(from, to)).map(|l| *l.state.borrow())
    }

    /// Every link up again.
    pub(crate) fn heal(&self) {
        for link in self.links.values() {
            link.state.send_replace(LinkState::Up);
        }
    }
}

impl Drop for LinkProxies {
    fn drop(&mut self) {
        // The tasks see the token at their next poll; the runtime that runs
        // them (the test's) is not blocked on here.
        self.shutdown.cancel();
        debug_assert!(self.tasks.is_closed());
    }
}

/// Accepts connections for one link until shutdown.
async fn serve_link(
    listener: TcpListener,
    target: SocketAddr,
    state: watch::Receiver<LinkState>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS_PER_LINK));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((inbound, _)) = accepted else {
            // Out of descriptors or a connection reset before accept: the
            // peer retries; do not spin on a persistent failure.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // Over the bound, the connection is closed at once (dropped here).
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        let state = state.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            carry(inbound, target, state, shutdown).await;
            drop(slot);
        });
    }
}

/// One connection through a link: forwarded while the link is up, closed
/// as soon as it is not (or at shutdown).
async fn carry(
    mut inbound: TcpStream,
    target: SocketAddr,
    mut state: watch::Receiver<LinkState>,
    shutdown: CancellationToken,
) {
    let current = *state.borrow_and_update();
    match current {
        LinkState::Refused => return,
        LinkState::Blackholed => {
            // Held open and silent; any change of the link closes it (a
            // healed link starts clean: the node reconnects).
            tokio::select! {
                () = shutdown.cancelled() => {}
                _ = state.changed() => {}
            }
            return;
        }
        LinkState::Up => {}
    }
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target));
    let mut outbound = tokio::select! {
        () = shutdown.cancelled() => return,
        _ = state.wait_for(|s| *s != LinkState::Up) => return,
        connected = connect => match connected {
            Ok(Ok(stream)) => stream,
            // The target is down: close, as a refused connection would.
            _ => return,
        },
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    tokio::select! {
        () = shutdown.cancelled() => {}
        _ = state.wait_for(|s| *s != LinkState::Up) => {}
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An echo server: what a node's controller listener stands for here.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(addr: SocketAddr) -> std::io::Result<[u8; 4]> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut buf))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        Ok(buf)
    }

    #[tokio::test]
    async fn links_forward_and_fail_as_set() {
        let (a, b) = (echo().await, echo().await);
        let proxies = LinkProxies::start(&[(1, a), (2, b)]).await.unwrap();
        let one_to_two = proxies.addr(1, 2).unwrap();
        assert!(proxies.addr(1, 1).is_none());
        assert_eq!(&round_trip(one_to_two).await.unwrap(), b"ping");

        // An open connection is closed by the cut.
        let mut open = TcpStream::connect(one_to_two).await.unwrap();
        open.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        open.read_exact(&mut buf).await.unwrap();
        assert!(proxies.set(1, 2, LinkState::Blackholed));
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), open.read_to_end(&mut rest))
            .await
            .expect("the cut closes open connections");
        assert!(closed.is_err() || rest.is_empty());

        let err = round_trip(one_to_two).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "blackholed");
        // The other direction still works.
        assert_eq!(
            &round_trip(proxies.addr(2, 1).unwrap()).await.unwrap(),
            b"ping"
        );

        proxies.set(1, 2, LinkState::Refused);
        let err = round_trip(one_to_two).await.unwrap_err();
        assert_ne!(err.kind(), std::io::ErrorKind::TimedOut, "refused: {err}");

        proxies.heal();
        assert_eq!(proxies.state(1, 2), Some(LinkState::Up));
        assert_eq!(&round_trip(one_to_two).await.unwrap(), b"ping");
    }

    #[tokio::test]
    async fn connections_past_the_bound_are_closed() {
        let a = echo().await;
        let proxies = LinkProxies::start(&[(1, a), (2, a)]).await.unwrap();
        let addr = proxies.addr(1, 2).unwrap();
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS_PER_LINK {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            held.push(s);
        }
        assert!(round_trip(addr).await.is_err(), "one past the bound");
        drop(held);
        // Slots come back as connections end.
        let mut ok = false;
        for _ in 0..50 {
            if round_trip(addr).await.is_ok() {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ok);
    }
}
