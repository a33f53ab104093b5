//! A cluster of hosts on one machine, for multi-node tests and benchmarks.
//!
//! A [`Testbed`] of N nodes is N+1 network namespaces: a *switch* namespace holding a Linux
//! bridge, and one namespace per node connected to the bridge by a veth pair. Node `i` has the
//! address `10.77.K.(i+1)/24` on its `eth0`; `lo` is up everywhere. While a node is up it also
//! has a PID namespace (and a mount namespace with that namespace's `/proc`), whose init is a
//! child of this process; [`Node::spawn`] runs a command inside all three.
//!
//! ```
//! use std::io::{Read, Write};
//! use std::net::{TcpListener, TcpStream};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! if !nines_testbed::is_root() {
//!     eprintln!("skipped: the testbed needs root");
//!     return Ok(());
//! }
//! let bed = nines_testbed::Testbed::new(2)?;
//! let (a, b) = (bed.node(0), bed.node(1));
//! // Test code can also act inside a node's network, without a helper process.
//! let listener = a.enter(|| TcpListener::bind((a.addr(), 7000)))??;
//! let mut conn = b.enter(|| TcpStream::connect((a.addr(), 7000)))??;
//! conn.write_all(b"ping")?;
//! let (mut served, _) = listener.accept()?;
//! let mut buf = [0; 4];
//! served.read_exact(&mut buf)?;
//! assert_eq!(&buf, b"ping");
//!
//! bed.cut_link(1)?; // node 1 is cut off from the switch (its carrier stays up)
//! bed.heal_link(1)?;
//! bed.kill_node(0)?; // every process of node 0 dies and is reaped; its network stays
//! bed.restart_node(0)?; // a fresh, empty PID namespace
//! # Ok(())
//! # }
//! // Dropping the testbed kills everything and deletes its namespaces.
//! ```
//!
//! # Why it is built this way
//!
//! - **`ip`, `tc` and `bridge` commands, not netlink.** A harness runs a few dozen
//!   configuration steps per testbed; commands make each one a line that can be pasted into a
//!   shell to reproduce or inspect (errors quote the command and its stderr), and they add no
//!   dependency tree to the workspace. `rtnetlink` would be the choice for a driver that
//!   configures the network in a hot path (the agent's floating IPs); this is not one.
//! - **The node init is a fork of this process, not `unshare --pid --fork`.** A PID
//!   namespace's pid 1 must reap orphans, which `sleep` or a shell do not reliably do. Forking
//!   from a short-lived thread that has entered the node's network namespace and unshared its
//!   PID namespace gives an init that is a child of this process (so it is reaped here, never by
//!   the machine's PID 1), reaps every orphan of the node as soon as its SIGCHLD arrives, needs
//!   no helper binary (so crates depending on this one get it for free), and watches a
//!   *lifeline* pipe: when the testbed is dropped or this process dies, even by SIGKILL, the
//!   init exits and the kernel kills the whole node. Spawned processes are children of this
//!   process, started by a thread that entered the node's PID namespace, so their handle can
//!   wait for them.
//! - **Interface names are namespaced, namespace names are unique.** Namespace names carry
//!   this process's pid and a counter (`ntbPIDxN-sw`, `ntbPIDxN-n0`, ...), which is how
//!   [`sweep_stale`] recognises the leftovers of dead processes. Interfaces are created
//!   directly inside the testbed's namespaces (`br0`, `n0`.. on the switch, `eth0` on a node),
//!   never in the root namespace, so their short names cannot collide.
//! - **Isolation.** Each testbed is its own layer-2 segment: no interface and no address of
//!   the range ever exists in the root namespace, and nodes have no default route, so no
//!   packet of a testbed can leave it. (The third octet `K` only tells concurrent testbeds
//!   apart when reading logs; two testbeds with the same `K` still cannot reach each other.)
//! - **Faults on the switch side.** [`Testbed::cut_link`] disables the node's bridge port and
//!   [`Testbed::partition`] moves ports to separate bridges: the node keeps its carrier and
//!   its addresses, as when a switch or a cable elsewhere fails, so software on the node sees
//!   silence, not an interface event. For the same reason [`Testbed::crash_node`] cuts the
//!   link before it kills: a powered-off host sends no FIN or RST.
//! - **netem where the kernel has it, a user-space relay where not.** [`Testbed::set_link`]
//!   uses `tc qdisc netem`; a kernel built without `sch_netem` (like the development VM this
//!   was written on, which has no loadable modules either, nor any other tc action that
//!   drops) gets a relay instead: the node's port leaves the bridge and two threads of this
//!   process carry its frames through raw packet sockets, holding and dropping them.
//!
//! Everything here needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN): check [`is_root`] and skip.

#![warn(missing_docs)]

mod cmd;
mod node;
mod relay;
mod sys;

pub use node::{Node, Process};

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use node::Runtime;
use relay::Relay;

/// What can go wrong building or driving a testbed. Every variant names what was attempted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration command exited non-zero.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line, as it could be pasted into a shell.
        command: String,
        /// Its exit status.
        status: String,
        /// Its stderr, trimmed.
        stderr: String,
    },
    /// A configuration command did not finish in time (it was killed).
    #[error("`{command}` did not finish within {timeout:?}")]
    Timeout {
        /// The command line.
        command: String,
        /// The limit it exceeded.
        timeout: Duration,
    },
    /// A system call or a spawn failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Processes that should have died did not exit in time (they are left for the kernel).
    #[error("node {node}: pids {pids:?} did not exit within {timeout:?}")]
    Stuck {
        /// The node they run on.
        node: usize,
        /// Their pids, as seen from this process.
        pids: Vec<u32>,
        /// How long they were waited for.
        timeout: Duration,
    },
    /// A node index outside the testbed.
    #[error("node {index} does not exist (the testbed has {nodes} nodes)")]
    NoSuchNode {
        /// The index asked for.
        index: usize,
        /// How many nodes there are.
        nodes: usize,
    },
    /// The node was killed and not restarted, so nothing can run on it.
    #[error("node {0} is down (restart_node it first)")]
    NodeDown(usize),
    /// An argument out of range (node count, loss percentage, partition groups).
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether this process runs as root, which every testbed operation needs; tests check it
/// and skip (saying so) otherwise.
pub fn is_root() -> bool {
    sys::is_root()
}

/// The prefix of every namespace a testbed creates, followed by `PIDxN-`.
const PREFIX: &str = "ntb";

/// Testbeds created by this process, for unique names and subnets.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Options for a [`Testbed`]; [`Testbed::new`] uses the defaults.
#[derive(Debug, Clone)]
pub struct Builder {
    nodes: usize,
    timeout: Duration,
    sweep: bool,
    relay: bool,
}

impl Builder {
    /// The number of nodes, 1 to 254 (one /24).
    pub fn nodes(mut self, nodes: usize) -> Self {
        self.nodes = nodes;
        self
    }

    /// The bound on every single operation: one configuration command, one node start, the
    /// wait for a killed node's processes. Default 10 s, generous for a loaded machine.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether [`Testbed::set_link`] impairs links in user space even where the kernel has
    /// netem (default false: netem where it exists). For testing the fallback itself.
    pub fn user_space_impairment(mut self, always: bool) -> Self {
        self.relay = always;
        self
    }

    /// Whether to run [`sweep_stale`] first (default true).
    pub fn sweep_stale(mut self, sweep: bool) -> Self {
        self.sweep = sweep;
        self
    }

    /// Create the namespaces, the bridge, the links and the node inits.
    ///
    /// On any failure what was already created is torn down before the error is returned.
    pub fn build(self) -> Result<Testbed> {
        if self.nodes == 0 || self.nodes > 254 {
            return Err(Error::Invalid(format!("{} nodes (1 to 254)", self.nodes)));
        }
        if self.sweep {
            // Best effort: a leftover that cannot be removed must not stop a new testbed.
            if let Err(e) = sweep_stale() {
                eprintln!("nines-testbed: sweep_stale: {e}");
            }
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}x{n}", std::process::id());
        let mut bed = Testbed {
            switch: format!("{name}-sw"),
            name,
            subnet: (n % 256) as u8,
            timeout: self.timeout,
            nodes: Vec::new(),
            links: Mutex::new(Vec::new()),
            bridges: Mutex::new(1),
            relays: Mutex::new(Vec::new()),
            always_relay: self.relay,
            switch_ns: None,
            created: Vec::new(),
        };
        // `bed` is dropped (and cleans up what `created` lists) if a step fails.
        bed.setup(self.nodes)?;
        Ok(bed)
    }
}

/// How a node's bridge port is set, so cut, heal and partition compose.
#[derive(Debug, Clone, Copy, Default)]
struct Link {
    /// The bridge (`br{bridge}`) the port is attached to; 0 unless partitioned.
    bridge: usize,
    /// Whether [`Testbed::cut_link`] cut it.
    cut: bool,
    /// Whether [`Testbed::crash_node`] cut it (until [`Testbed::restart_node`]).
    crashed: bool,
    /// Whether a user-space relay impairs it: then the bridge port is `rI`, not `nI`.
    relayed: bool,
}

impl Link {
    /// Whether the port must be disabled.
    fn down(self) -> bool {
        self.cut || self.crashed
    }

    /// Node `i`'s port on its bridge.
    fn port(self, i: usize) -> String {
        if self.relayed {
            format!("r{i}")
        } else {
            format!("n{i}")
        }
    }
}

/// A cluster of nodes in network namespaces on this machine, torn down on drop.
///
/// All methods take `&self`, so a testbed can be shared between threads of a test (a node is
/// killed while another thread talks to it).
#[derive(Debug)]
pub struct Testbed {
    name: String,
    switch: String,
    subnet: u8,
    timeout: Duration,
    nodes: Vec<Node>,
    links: Mutex<Vec<Link>>,
    /// How many bridges exist in the switch namespace (`br0` .. `br{n-1}`).
    bridges: Mutex<usize>,
    /// The user-space impairment of each node's link, if any (locked after `links`).
    relays: Mutex<Vec<Option<Relay>>>,
    /// [`Builder::user_space_impairment`].
    always_relay: bool,
    /// The switch namespace, for the relays' packet sockets.
    switch_ns: Option<OwnedFd>,
    /// The namespaces created so far, deleted by `Drop` in reverse order.
    created: Vec<String>,
}

impl Testbed {
    /// A testbed of `nodes` nodes with the default options (see [`Builder`]).
    pub fn new(nodes: usize) -> Result<Testbed> {
        Testbed::builder().nodes(nodes).build()
    }

    /// Options: node count, operation timeout, whether to sweep stale testbeds first.
    pub fn builder() -> Builder {
        Builder {
            nodes: 1,
            timeout: Duration::from_secs(10),
            sweep: true,
            relay: false,
        }
    }

    fn ip(&self, args: &[&str]) -> Result<String> {
        cmd::run("ip", args, self.timeout)
    }

    fn setup(&mut self, nodes: usize) -> Result<()> {
        let sw = self.switch.clone();
        self.ip(&["netns", "add", &sw])?;
        self.created.push(sw.clone());
        self.switch_ns = Some(open_netns(&sw)?);
        self.ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        self.add_bridge(0)?;
        for i in 0..nodes {
            let ns = format!("{}-n{i}", self.name);
            self.ip(&["netns", "add", &ns])?;
            self.created.push(ns.clone());
            let port = format!("n{i}");
            // Both ends are created inside their namespaces: nothing appears in the root one.
            self.ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            self.ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            let addr = Ipv4Addr::new(10, 77, self.subnet, (i + 1) as u8);
            let cidr = format!("{addr}/24");
            self.ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            self.ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            self.ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let net_ns = open_netns(&ns)?;
            let node = Node {
                index: i,
                netns: ns,
                addr,
                net_ns,
                timeout: self.timeout,
                rt: Mutex::new(Runtime::default()),
            };
            self.nodes.push(node);
            self.nodes[i].start()?;
        }
        *lock(&self.links) = vec![Link::default(); nodes];
        lock(&self.relays).resize_with(nodes, || None);
        Ok(())
    }

    fn add_bridge(&self, b: usize) -> Result<()> {
        let br = format!("br{b}");
        self.ip(&["-n", &self.switch, "link", "add", &br, "type", "bridge"])?;
        self.ip(&["-n", &self.switch, "link", "set", &br, "up"])?;
        Ok(())
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a testbed has at least one node (here for clippy's `len` convention).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The testbed's name, the prefix of all its namespaces (`ntbPIDxN`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name of the switch namespace, for debugging by hand (`ip -n NAME link`).
    pub fn switch_netns(&self) -> &str {
        &self.switch
    }

    /// The names of every namespace of this testbed (the switch first).
    pub fn netns_names(&self) -> Vec<String> {
        self.created.clone()
    }

    /// Node `i`.
    ///
    /// # Panics
    /// If `i >= self.len()`, like slice indexing: the node count is the test's own choice.
    /// [`Testbed::get`] does not panic.
    pub fn node(&self, i: usize) -> &Node {
        match self.nodes.get(i) {
            Some(n) => n,
            None => panic!(
                "node {i} does not exist (the testbed has {} nodes)",
                self.len()
            ),
        }
    }

    /// Node `i`, or `None`.
    pub fn get(&self, i: usize) -> Option<&Node> {
        self.nodes.get(i)
    }

    /// All nodes, in index order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter()
    }

    fn check(&self, i: usize) -> Result<&Node> {
        self.nodes.get(i).ok_or(Error::NoSuchNode {
            index: i,
            nodes: self.len(),
        })
    }

    /// Every process of node `i` dies: its init is SIGKILLed, so the kernel kills the whole
    /// PID namespace at once, and all of them are reaped before this returns.
    ///
    /// The node's network stays up, and its kernel with it: peers see their connections
    /// closed (FIN or RST) at once and new connections refused, as when every process of a
    /// live host crashes. For a host that vanishes silently (power loss), use
    /// [`Testbed::crash_node`]. Bring the node back with [`Testbed::restart_node`]. Killing
    /// a node that is down does nothing.
    pub fn kill_node(&self, i: usize) -> Result<()> {
        self.check(i)?.kill()
    }

    /// Host failure: node `i` goes silent (its link is cut first, so not even the FINs and
    /// RSTs of its dying sockets reach anyone), then every process on it is killed and reaped
    /// as by [`Testbed::kill_node`]. Peers learn of it only by timeouts, as with a power loss.
    /// [`Testbed::restart_node`] brings the link back with the node.
    pub fn crash_node(&self, i: usize) -> Result<()> {
        self.update_link(i, |l| l.crashed = true)?;
        self.check(i)?.kill()
    }

    /// Node repair: start a fresh PID namespace on node `i` (after [`Testbed::kill_node`] or
    /// [`Testbed::crash_node`], whose link cut it undoes), with nothing running in it yet.
    /// Restarting a node that is up does nothing.
    pub fn restart_node(&self, i: usize) -> Result<()> {
        self.check(i)?.start()?;
        self.update_link(i, |l| l.crashed = false)
    }

    /// Link failure: node `i` can no longer exchange packets with any other node. Its bridge
    /// port is disabled, so the node keeps its carrier and sees only silence.
    pub fn cut_link(&self, i: usize) -> Result<()> {
        self.update_link(i, |l| l.cut = true)
    }

    /// Undo [`Testbed::cut_link`] (a partition or a crash, if any, still applies).
    pub fn heal_link(&self, i: usize) -> Result<()> {
        self.update_link(i, |l| l.cut = false)
    }

    /// Change node `i`'s link flags and set its bridge port to match.
    fn update_link(&self, i: usize, change: impl FnOnce(&mut Link)) -> Result<()> {
        self.check(i)?;
        let mut links = lock(&self.links);
        let mut link = links[i];
        change(&mut link);
        self.port_state(i, link)?;
        links[i] = link;
        Ok(())
    }

    /// Set node `i`'s bridge port to forwarding or disabled, as `link` says.
    fn port_state(&self, i: usize, link: Link) -> Result<()> {
        let port = link.port(i);
        // 0 = disabled, 3 = forwarding (the bridge runs no STP, so nothing else moves it).
        let state = if link.down() { "0" } else { "3" };
        let args = [
            "-n",
            &self.switch,
            "link",
            "set",
            "dev",
            &port,
            "state",
            state,
        ];
        cmd::run("bridge", &args, self.timeout).map(drop)
    }

    /// Partition the network: each group of node indices can talk within itself only; a node
    /// in no group is alone. Replaces any previous partition; [`Testbed::heal_partition`]
    /// undoes it. Each group gets its own bridge; links cut by [`Testbed::cut_link`] stay cut.
    pub fn partition(&self, groups: &[&[usize]]) -> Result<()> {
        let n = self.len();
        let mut group_of: Vec<Option<usize>> = vec![None; n];
        for (g, members) in groups.iter().enumerate() {
            for &i in members.iter() {
                self.check(i)?;
                if let Some(other) = group_of[i] {
                    return Err(Error::Invalid(format!(
                        "node {i} is in partition groups {other} and {g}"
                    )));
                }
                group_of[i] = Some(g);
            }
        }
        // Group g uses bridge g; every node in no group gets a bridge of its own after them.
        let mut next = groups.len();
        let target: Vec<usize> = group_of
            .iter()
            .map(|g| {
                g.unwrap_or_else(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect();
        self.move_ports(&target)
    }

    /// Undo [`Testbed::partition`]: every node back on one bridge (cut links stay cut).
    pub fn heal_partition(&self) -> Result<()> {
        self.move_ports(&vec![0; self.len()])
    }

    fn move_ports(&self, target: &[usize]) -> Result<()> {
        let mut links = lock(&self.links);
        {
            let mut bridges = lock(&self.bridges);
            let need = target.iter().copied().max().unwrap_or(0) + 1;
            while *bridges < need {
                self.add_bridge(*bridges)?;
                *bridges += 1;
            }
        }
        for (i, &b) in target.iter().enumerate() {
            if links[i].bridge == b {
                continue;
            }
            let (port, br) = (links[i].port(i), format!("br{b}"));
            self.ip(&["-n", &self.switch, "link", "set", &port, "master", &br])?;
            links[i].bridge = b;
            if links[i].down() {
                // Joining a bridge resets the port to forwarding.
                self.port_state(i, links[i])?;
            }
        }
        Ok(())
    }

    /// Impair node `i`'s link: `delay` is added in each direction (so a round trip to an
    /// unimpaired node grows by twice `delay`) and `loss_percent` of the frames are dropped in
    /// each direction. Zero for both removes the impairment; calling again changes it.
    ///
    /// Uses `tc qdisc netem` where the kernel has `sch_netem`. Elsewhere (or always, with
    /// [`Builder::user_space_impairment`]) a relay in this process carries the node's frames
    /// between its port and the bridge, holding and dropping them: coarser (about a
    /// millisecond, plus the machine's scheduling delay) but enough for "at least this much
    /// latency" and "about this much loss".
    pub fn set_link(&self, i: usize, delay: Duration, loss_percent: f64) -> Result<()> {
        let node = self.check(i)?;
        if !(0.0..=100.0).contains(&loss_percent) {
            return Err(Error::Invalid(format!("loss {loss_percent}% (0 to 100)")));
        }
        let off = delay.is_zero() && loss_percent == 0.0;
        let mut links = lock(&self.links);
        let mut relays = lock(&self.relays);
        if let Some(relay) = &relays[i] {
            if off {
                return self.stop_relay(i, &mut links[i], &mut relays[i]);
            }
            relay.set(delay, loss_percent);
            return Ok(());
        }
        if off {
            return self.netem(i, node, None);
        }
        if !self.always_relay {
            match self.netem(i, node, Some((delay, loss_percent))) {
                Err(Error::Command { stderr, .. }) if stderr.contains("qdisc kind is unknown") => {}
                r => return r,
            }
        }
        self.start_relay(i, &mut links[i], &mut relays[i], delay, loss_percent)
    }

    /// Set (or, with `None`, remove) a netem qdisc on both ends of node `i`'s link.
    fn netem(&self, i: usize, node: &Node, impair: Option<(Duration, f64)>) -> Result<()> {
        let port = format!("n{i}");
        let ends = [
            (self.switch.as_str(), port.as_str()),
            (node.netns.as_str(), "eth0"),
        ];
        for (ns, dev) in ends {
            let Some((delay, loss)) = impair else {
                let args = ["-n", ns, "qdisc", "del", "dev", dev, "root"];
                match cmd::run("tc", &args, self.timeout) {
                    // Nothing to delete: the link was not impaired.
                    Err(Error::Command { stderr, .. })
                        if stderr.contains("handle of zero") || stderr.contains("No such") => {}
                    r => r.map(drop)?,
                }
                continue;
            };
            let (us, loss) = (format!("{}us", delay.as_micros()), format!("{loss}%"));
            let args = [
                "-n", ns, "qdisc", "replace", "dev", dev, "root", "netem", "delay", &us, "loss",
                &loss,
            ];
            cmd::run("tc", &args, self.timeout)?;
        }
        Ok(())
    }

    /// Put a relay between node `i`'s port `nI` and the bridge: a veth pair `rI` (bridged,
    /// in `nI`'s place) / `qI`, and the pumps between `nI` and `qI`.
    fn start_relay(
        &self,
        i: usize,
        link: &mut Link,
        slot: &mut Option<Relay>,
        delay: Duration,
        loss: f64,
    ) -> Result<()> {
        let sw = self.switch.as_str();
        let (n, r, q) = (format!("n{i}"), format!("r{i}"), format!("q{i}"));
        let br = format!("br{}", link.bridge);
        self.ip(&[
            "-n", sw, "link", "add", &r, "type", "veth", "peer", "name", &q,
        ])?;
        let relayed = Link {
            relayed: true,
            ..*link
        };
        let started = (|| {
            self.ip(&["-n", sw, "link", "set", &q, "up"])?;
            self.ip(&["-n", sw, "link", "set", &r, "master", &br, "up"])?;
            // A cut link stays cut: `rI` must not forward before the relay starts.
            self.port_state(i, relayed)?;
            let switch_ns = self
                .switch_ns
                .as_ref()
                .ok_or_else(|| Error::Invalid("the switch namespace is not open".to_string()))?;
            let relay =
                Relay::start(switch_ns, &n, &q, delay, loss).map_err(|source| Error::Io {
                    what: format!("start the link relay of node {i}"),
                    source,
                })?;
            self.ip(&["-n", sw, "link", "set", &n, "nomaster"])?;
            Ok(relay)
        })();
        match started {
            Ok(relay) => {
                *slot = Some(relay);
                *link = relayed;
                Ok(())
            }
            Err(e) => {
                let _ = self.ip(&["-n", sw, "link", "del", &r]);
                Err(e)
            }
        }
    }

    /// Undo [`Testbed::start_relay`]: `nI` back on its bridge, `rI`/`qI` deleted.
    fn stop_relay(&self, i: usize, link: &mut Link, slot: &mut Option<Relay>) -> Result<()> {
        *slot = None; // stops the pumps
        let sw = self.switch.as_str();
        let (n, r, br) = (
            format!("n{i}"),
            format!("r{i}"),
            format!("br{}", link.bridge),
        );
        self.ip(&["-n", sw, "link", "set", &n, "master", &br])?;
        link.relayed = false;
        self.port_state(i, *link)?;
        self.ip(&["-n", sw, "link", "del", &r]).map(drop)
    }

    /// Start `cmd` on node `i`; the same as `self.node(i).spawn(cmd)` without the panic.
    pub fn spawn(&self, i: usize, cmd: Command) -> Result<Process> {
        self.check(i)?.spawn(cmd)
    }
}

impl Drop for Testbed {
    /// Kill and reap every node's processes, then delete the namespaces (which deletes the
    /// bridges and veths with them). Runs when a test panics too; errors are printed, since
    /// a destructor cannot return them, and [`sweep_stale`] catches what is left.
    fn drop(&mut self) {
        lock(&self.relays).clear();
        for node in &self.nodes {
            if let Err(e) = node.kill() {
                eprintln!("nines-testbed: drop {}: {e}", self.name);
            }
        }
        for ns in self.created.iter().rev() {
            if let Err(e) = cmd::run("ip", &["netns", "del", ns], self.timeout) {
                eprintln!("nines-testbed: drop {}: {e}", self.name);
            }
        }
    }
}

/// Open `/run/netns/NAME`.
fn open_netns(name: &str) -> Result<OwnedFd> {
    let path = format!("/run/netns/{name}");
    sys::open_ns(Path::new(&path)).map_err(|source| Error::Io {
        what: format!("open {path}"),
        source,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The pid that created a testbed namespace, from its name (`ntbPIDxN-...`).
fn creator_pid(netns: &str) -> Option<u32> {
    let rest = netns.strip_prefix(PREFIX)?;
    let (pid, rest) = rest.split_once('x')?;
    let (n, _) = rest.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// Remove the leftovers of testbeds whose creating process is dead (a test killed before its
/// `Drop` ran): kill whatever still runs in their namespaces and delete them. Returns how many
/// namespaces were deleted. [`Testbed::new`] calls it, so leftovers never accumulate.
///
/// A namespace whose creator's pid was reused by a live process is kept until that process
/// exits too: it is harmless (isolated) and deleting a live testbed's would not be.
pub fn sweep_stale() -> Result<usize> {
    let timeout = Duration::from_secs(10);
    let list = cmd::run("ip", &["netns", "list"], timeout)?;
    let me = std::process::id();
    let mut removed = 0;
    for line in list.lines() {
        let Some(ns) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = creator_pid(ns) else { continue };
        if pid == me || sys::pid_exists(pid) {
            continue;
        }
        if let Ok(pids) = cmd::run("ip", &["netns", "pids", ns], timeout) {
            for p in pids.split_whitespace().filter_map(|p| p.parse().ok()) {
                sys::kill_pid(p);
            }
        }
        // Another process may be sweeping the same leftovers: a failure here is not ours.
        if cmd::run("ip", &["netns", "del", ns], timeout).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creator_pid_parses_only_testbed_names() {
        assert_eq!(creator_pid("ntb1234x0-sw"), Some(1234));
        assert_eq!(creator_pid("ntb1234x17-n3"), Some(1234));
        assert_eq!(creator_pid("ntb1234-sw"), None);
        assert_eq!(creator_pid("ntbx1-sw"), None);
        assert_eq!(creator_pid("other"), None);
        assert_eq!(creator_pid("ntb12a4x0-sw"), None);
    }

    #[test]
    fn bad_node_counts_are_refused_before_touching_anything() {
        for n in [0, 255] {
            let r = Testbed::builder().nodes(n).sweep_stale(false).build();
            assert!(matches!(r, Err(Error::Invalid(_))), "{n}: {r:?}");
        }
    }

    #[test]
    fn a_testbed_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Testbed>();
        shared::<Process>();
    }
}
