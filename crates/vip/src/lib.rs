//! Floating IPs: an IPv4 address that belongs to whichever node holds an SI's active
//! assignment, so clients keep one address while the service moves.
//!
//! The node agent calls [`acquire`] when its node becomes active for the SI and [`release`]
//! when it stops being active; [`held`] says whether the address is on. Acquiring adds the
//! address to the interface (rtnetlink) and announces it with gratuitous ARP, so that peers
//! whose neighbour cache still points at the previous holder switch to this node at once
//! instead of after their cache entry expires (see `garp.rs` for the frames).
//!
//! ```no_run
//! # async fn f() -> Result<(), nines_vip::Error> {
//! let vip = nines_vip::Vip::parse("10.77.1.100/24@eth0").await?;
//! let acquired = nines_vip::acquire(&vip).await?; // the address is on, peers told
//! println!("added {:?} after the call", acquired.added - acquired.started);
//! // ... later, when the SI's active assignment is removed from this node:
//! nines_vip::release(&vip).await?; // off, and no more announcements from here
//! # Ok(()) }
//! ```
//!
//! # Network namespaces
//!
//! Everything acts in the network namespace of the *calling thread*: a netlink or packet
//! socket binds the namespace of the thread that creates it, for the socket's whole life, and
//! each call creates its sockets when it is first polled, before its first `.await`. The node
//! agent runs inside its node's namespace, so every thread of its runtime is there. A test
//! that drives several namespaces from one process must poll each call on a thread inside
//! the right namespace (for example a current-thread runtime made inside
//! `nines_testbed::Node::enter`); a multi-thread runtime whose workers sit in different
//! namespaces would make the outcome depend on which worker polls first.
//!
//! # Invariants
//!
//! - After [`release`] returns `Ok`, the address is not on the interface (with any prefix
//!   length), and nothing in this process announces it any more (in that namespace).
//! - An operation touches only the interface it is given, in the caller's namespace.
//! - All operations are idempotent: acquiring a held address re-announces it; releasing an
//!   absent one (or one whose interface is gone) succeeds.
//! - A failed [`acquire`] leaves no address it added behind.
//!
//! Needs `CAP_NET_ADMIN` (addresses) and `CAP_NET_RAW` (the packet socket), and a tokio
//! runtime with the I/O and time drivers (`enable_all`).
//!
//! One caution the crate cannot check: if the floating IP is the *primary* address of its
//! subnet on the interface (added before any other address of that subnet), deleting it also
//! deletes the secondaries of that subnet, unless `net.ipv4.conf.IFACE.promote_secondaries`
//! is set. On a node whose own address is configured first, as usual, the floating IP is a
//! secondary and this does not arise.
//!
//! `rtnetlink` (0.24, the newest release, within the workspace's Rust 1.85) is used rather
//! than `ip addr` commands: a move is on the failover path, and a netlink round trip is
//! microseconds where spawning `ip` is milliseconds.

#![warn(missing_docs)]

mod announce;
mod error;
mod garp;
mod netlink;
mod spec;

pub use error::Error;
pub use spec::{ParseError, Vip, VipSpec};

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use announce::{Announcer, Netns};
use netlink::Rtnl;

/// How many announcements an acquire sends: the first before it returns, the others from a
/// background task. More than one, because a broadcast frame can be lost; few, because every
/// host of the segment processes each one.
pub const ANNOUNCEMENTS: u32 = 3;

/// The time between two announcements: long enough that a burst of losses on a busy link is
/// unlikely to take them all, short enough that the last is out well within a failover.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(20);

/// What [`acquire`] did and when, for the agent's event log and the move benchmarks.
#[derive(Debug)]
pub struct Acquired {
    /// When the call started (its first poll).
    pub started: Instant,
    /// When the address was on the interface: the kernel's acknowledgement of the add, or
    /// the moment it was found already there.
    pub added: Instant,
    /// When the first announcement (request and reply) had been handed to the kernel; the
    /// call returned right after.
    pub announced: Instant,
    /// Whether the address was already on the interface, so nothing was added.
    pub already_held: bool,
    repeats: tokio::task::JoinHandle<()>,
}

impl Acquired {
    /// Wait for the remaining announcements (or for a [`release`] to stop them). Optional:
    /// they are sent whether or not this is awaited, as long as the runtime runs; a caller
    /// about to shut its runtime down (a test, a short-lived tool) awaits this first.
    pub async fn announcements_done(self) {
        // A JoinError means the runtime is shutting down: nothing is left to wait for.
        let _ = self.repeats.await;
    }
}

/// Add the floating IP to its interface and announce it; return once the address is on and
/// the first gratuitous ARP is out, so the failover path waits for nothing more.
///
/// Idempotent: if the address is already on the interface with this prefix length, nothing
/// is added and it is announced again (the announcements of an earlier acquire stop). If the
/// address is on another interface, or on this one with another prefix length, it is a
/// [`Error::Conflict`]. If the first announcement fails, an address this call added is
/// removed again before the error is returned.
pub async fn acquire(vip: &Vip) -> Result<Acquired, Error> {
    let started = Instant::now();
    // Before the first await: these bind the namespace of the thread polling us now.
    let netns = Netns::current().map_err(Error::io(vip, "find the network namespace"))?;
    let rtnl = Rtnl::open().map_err(Error::io(vip, "open a netlink socket"))?;
    let socket = garp::Socket::open().map_err(Error::io(vip, "open a packet socket"))?;

    let link = rtnl
        .link(vip.iface())
        .await
        .map_err(Error::io(vip, "look up the interface"))?
        .ok_or_else(|| Error::NoSuchInterface {
            vip: vip.to_string(),
            iface: vip.iface().to_string(),
        })?;
    let mac = link.mac.ok_or_else(|| Error::NotEthernet {
        vip: vip.to_string(),
        iface: vip.iface().to_string(),
    })?;
    let addrs = rtnl
        .addresses()
        .await
        .map_err(Error::io(vip, "list the addresses"))?;
    let mut already_held = false;
    for a in addrs.iter().filter(|a| a.addr == vip.addr()) {
        if a.index == link.index && a.prefix == vip.prefix() {
            already_held = true;
            continue;
        }
        let iface = match rtnl.link_name(a.index).await {
            Ok(Some(name)) => name,
            _ => format!("interface #{}", a.index),
        };
        return Err(Error::Conflict {
            vip: vip.to_string(),
            addr: vip.addr(),
            iface,
            prefix: a.prefix,
        });
    }
    let mut added_now = false;
    if !already_held {
        added_now = rtnl
            .add(link.index, vip.addr(), vip.prefix())
            .await
            .map_err(Error::io(vip, "add the address"))?;
        already_held = !added_now;
    }
    let added = Instant::now();

    let announcer = Announcer::start(netns, vip.addr(), link.index, mac, socket);
    if let Err(e) = announcer.announce() {
        drop(announcer);
        if added_now {
            let this = netlink::Addr {
                index: link.index,
                addr: vip.addr(),
                prefix: vip.prefix(),
            };
            if let Err(undo) = rtnl.del(this).await {
                tracing::error!(%vip, "acquire failed and the address could not be removed: {undo}");
            }
        }
        return Err(Error::io(vip, "send a gratuitous ARP")(e));
    }
    let announced = Instant::now();
    let repeats = tokio::spawn(announcer.repeat(ANNOUNCEMENTS - 1, ANNOUNCE_INTERVAL));
    Ok(Acquired {
        started,
        added,
        announced,
        already_held,
        repeats,
    })
}

/// Remove the floating IP from its interface, whatever its prefix length there, and stop
/// announcing it.
///
/// The announcements stop first, so once this returns nothing from this process can pull
/// traffic back to this node, even when the address is taken by another node at once.
/// Idempotent: an absent address, or an interface that no longer exists, is success.
pub async fn release(vip: &Vip) -> Result<(), Error> {
    // Before the first await: these bind the namespace of the thread polling us now.
    let netns = Netns::current().map_err(Error::io(vip, "find the network namespace"))?;
    let rtnl = Rtnl::open().map_err(Error::io(vip, "open a netlink socket"))?;
    announce::stop(netns, vip.addr());

    let Some(link) = rtnl
        .link(vip.iface())
        .await
        .map_err(Error::io(vip, "look up the interface"))?
    else {
        return Ok(());
    };
    let addrs = rtnl
        .addresses()
        .await
        .map_err(Error::io(vip, "list the addresses"))?;
    for a in addrs {
        if a.index == link.index && a.addr == vip.addr() {
            rtnl.del(a)
                .await
                .map_err(Error::io(vip, "remove the address"))?;
        }
    }
    Ok(())
}

/// Whether the floating IP's address is on its interface (with any prefix length): whether
/// this node takes the address's traffic. An interface that does not exist holds nothing.
pub async fn held(vip: &Vip) -> Result<bool, Error> {
    // Before the first await: it binds the namespace of the thread polling us now.
    let rtnl = Rtnl::open().map_err(Error::io(vip, "open a netlink socket"))?;
    let Some(link) = rtnl
        .link(vip.iface())
        .await
        .map_err(Error::io(vip, "look up the interface"))?
    else {
        return Ok(false);
    };
    let addrs = rtnl
        .addresses()
        .await
        .map_err(Error::io(vip, "list the addresses"))?;
    Ok(addrs
        .iter()
        .any(|a| a.index == link.index && a.addr == vip.addr()))
}

/// The interface for `addr` when none was named: that of the longest prefix among the
/// namespace's IPv4 addresses whose subnet contains `addr` (the address itself excluded).
async fn iface_for(addr: Ipv4Addr, prefix: u8) -> Result<String, Error> {
    let what = format!("{addr}/{prefix}");
    let rtnl = Rtnl::open().map_err(Error::io(&what, "open a netlink socket"))?;
    let addrs = rtnl
        .addresses()
        .await
        .map_err(Error::io(&what, "list the addresses"))?;
    let contains = |a: &netlink::Addr| {
        let mask = u32::MAX.checked_shl(32 - u32::from(a.prefix)).unwrap_or(0);
        a.addr != addr && u32::from(a.addr) & mask == u32::from(addr) & mask
    };
    let candidates: Vec<netlink::Addr> = addrs.into_iter().filter(contains).collect();
    let Some(best) = candidates.iter().map(|a| a.prefix).max() else {
        return Err(Error::NoInterface { addr });
    };
    let mut indices: Vec<u32> = candidates
        .iter()
        .filter(|a| a.prefix == best)
        .map(|a| a.index)
        .collect();
    indices.sort_unstable();
    indices.dedup();
    let mut names = Vec::with_capacity(indices.len());
    for index in indices {
        let name = rtnl
            .link_name(index)
            .await
            .map_err(Error::io(&what, "look up the interface"))?;
        names.extend(name);
    }
    match <[String; 1]>::try_from(names) {
        Ok([name]) => Ok(name),
        Err(names) if names.is_empty() => Err(Error::NoInterface { addr }),
        Err(ifaces) => Err(Error::AmbiguousInterface {
            addr,
            prefix: best,
            ifaces,
        }),
    }
}
