//! The run's network: one namespace per node, joined by a bridge in a hub
//! namespace, and a link from the harness's own namespace to the bridge for
//! the clients.
//!
//! ```text
//!  harness (clients) 10.231.X.200 ──┐
//!  node 1 [ns P-n1]  10.231.X.1   ──┤ bridge in [ns P-hub]
//!  node 2 [ns P-n2]  10.231.X.2   ──┤
//!  node 3 [ns P-n3]  10.231.X.3   ──┘
//! ```
//!
//! A link between two nodes is cut with a permanent neighbour entry on each
//! side that gives the other's address a MAC no interface has: packets
//! vanish, as in a real partition (a new connection hangs until its
//! timeout, an open one stalls), rather than being refused as with a
//! blackhole route. It needs no netfilter (these kernels have neither
//! nftables nor tc actions). The clients' links are never cut. Dropping
//! the network deletes the namespaces, and with them every interface.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

/// The first two octets of every run's subnet.
const NET_PREFIX: [u8; 2] = [10, 231];
/// The harness's own address in the subnet (nodes are 1..=N).
const CLIENT_HOST: u8 = 200;
/// A locally administered MAC that no interface has: where a cut link's
/// packets go.
const NOWHERE_MAC: &str = "02:00:00:00:00:01";
/// Networks this process made, so that the runs of a soak never reuse a
/// name or subnet whose teardown the kernel is still finishing.
static RUNS: AtomicU32 = AtomicU32::new(0);

/// Runs `ip ARGS`, failing with what it printed.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The namespaces and links of one run.
#[derive(Debug)]
pub struct Network {
    /// Prefix of every name (namespaces and interfaces), unique per run.
    prefix: String,
    subnet: u8,
    nodes: usize,
    /// Links cut now, as (lower, higher) node numbers from 1.
    cut: BTreeSet<(usize, usize)>,
}

impl Network {
    /// Creates namespaces for `nodes` nodes. Needs root and iproute2.
    pub fn create(nodes: usize) -> Result<Self> {
        if nodes == 0 || nodes > 100 {
            bail!("{nodes} nodes: 1 to 100");
        }
        let pid = std::process::id();
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let subnet = free_subnet(pid.wrapping_add(run.wrapping_mul(7)))?;
        let net = Self {
            // At most 8 characters: interface names stop at 15.
            prefix: format!("sc{:x}{:03x}", pid % 0xfff, run % 0xfff),
            subnet,
            nodes,
            cut: BTreeSet::new(),
        };
        // From here on, Drop removes whatever was made.
        net.build()?;
        Ok(net)
    }

    fn build(&self) -> Result<()> {
        let p = &self.prefix;
        let hub = self.hub();
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for node in 1..=self.nodes {
            let ns = self.namespace(node);
            let dev = self.device(node);
            let peer = format!("{p}n{node}h");
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &dev, "netns", &ns, "type", "veth", "peer", "name", &peer, "netns",
                &hub,
            ])?;
            ip(&["-n", &hub, "link", "set", &peer, "master", "br0", "up"])?;
            let addr = format!("{}/24", self.addr(node));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &dev])?;
            ip(&["-n", &ns, "link", "set", &dev, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        let dev = format!("{p}c");
        let peer = format!("{p}ch");
        ip(&[
            "link", "add", &dev, "type", "veth", "peer", "name", &peer, "netns", &hub,
        ])?;
        ip(&["-n", &hub, "link", "set", &peer, "master", "br0", "up"])?;
        let addr = format!(
            "{}/24",
            Ipv4Addr::new(NET_PREFIX[0], NET_PREFIX[1], self.subnet, CLIENT_HOST)
        );
        ip(&["addr", "add", &addr, "dev", &dev])?;
        ip(&["link", "set", &dev, "up"])?;
        Ok(())
    }

    fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    /// Node `node`'s namespace (nodes from 1).
    pub fn namespace(&self, node: usize) -> String {
        format!("{}-n{node}", self.prefix)
    }

    /// Node `node`'s address.
    pub fn addr(&self, node: usize) -> Ipv4Addr {
        let host = u8::try_from(node).unwrap_or(u8::MAX);
        Ipv4Addr::new(NET_PREFIX[0], NET_PREFIX[1], self.subnet, host)
    }

    /// Every node's namespace and address, in node order.
    pub fn hosts(&self) -> Vec<(String, Ipv4Addr)> {
        (1..=self.nodes)
            .map(|n| (self.namespace(n), self.addr(n)))
            .collect()
    }

    /// Cuts the link between nodes `a` and `b`, both ways.
    pub fn cut(&mut self, a: usize, b: usize) -> Result<()> {
        let link = (a.min(b), a.max(b));
        if a == b || !self.cut.insert(link) {
            return Ok(());
        }
        self.neighbours(
            a,
            b,
            &["replace"],
            &["lladdr", NOWHERE_MAC, "nud", "permanent"],
        )?;
        Ok(())
    }

    /// `ip neigh VERB <other's address> dev <own interface> EXTRA` in both
    /// `a`'s and `b`'s namespaces: one link's entries, both ways.
    fn neighbours(&self, a: usize, b: usize, verb: &[&str], extra: &[&str]) -> Result<()> {
        for (from, to) in [(a, b), (b, a)] {
            let (ns, addr, dev) = (
                self.namespace(from),
                self.addr(to).to_string(),
                self.device(from),
            );
            let mut args = vec!["-n", ns.as_str(), "neigh"];
            args.extend_from_slice(verb);
            args.extend_from_slice(&[addr.as_str(), "dev", dev.as_str()]);
            args.extend_from_slice(extra);
            ip(&args)?;
        }
        Ok(())
    }

    /// Node `node`'s interface (in its namespace).
    fn device(&self, node: usize) -> String {
        format!("{}n{node}", self.prefix)
    }

    /// Cuts every link between `side` and the other nodes.
    pub fn split(&mut self, side: &[usize]) -> Result<()> {
        for a in side {
            for b in (1..=self.nodes).filter(|b| !side.contains(b)) {
                self.cut(*a, b)?;
            }
        }
        Ok(())
    }

    /// Restores every link.
    pub fn heal(&mut self) -> Result<()> {
        for (a, b) in std::mem::take(&mut self.cut) {
            self.neighbours(a, b, &["del"], &[])?;
        }
        Ok(())
    }

    /// The links cut now.
    pub fn cut_links(&self) -> Vec<(usize, usize)> {
        self.cut.iter().copied().collect()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for node in 1..=self.nodes {
            let _ = ip(&["netns", "del", &self.namespace(node)]);
        }
        let _ = ip(&["netns", "del", &self.hub()]);
        // The kernel finishes a namespace's teardown later; the harness's
        // end of the client link goes now.
        let _ = ip(&["link", "del", &format!("{}c", self.prefix)]);
    }
}

/// A third octet no interface of this namespace uses yet under 10.231/16,
/// starting from one derived from `pid` so that runs side by side differ.
fn free_subnet(pid: u32) -> Result<u8> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .context("running ip addr show (is iproute2 installed?)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("{}.{}.", NET_PREFIX[0], NET_PREFIX[1]);
    let used: BTreeSet<u8> = text
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(&prefix))
        .filter_map(|rest| rest.split('.').next()?.parse().ok())
        .collect();
    let start = u8::try_from(pid % 250).unwrap_or(0);
    (0..250u8)
        .map(|i| start.wrapping_add(i) % 250)
        .find(|s| !used.contains(s))
        .context("every 10.231.X.0/24 subnet is in use")
}
