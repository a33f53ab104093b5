//! The kernel's view of links and IPv4 addresses, over one rtnetlink socket per call.
//!
//! A netlink socket belongs to the network namespace of the thread that created it, for its
//! whole life, whichever thread later reads or writes it. [`Rtnl::open`] is therefore called
//! at the very start of each public operation, before its first `.await`: the operation then
//! acts in the namespace of the thread that first polled it, even if a multi-thread runtime
//! moves the rest of the future to another worker.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkLayerType, LinkMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{AddressMessageBuilder, Handle};
use tokio::task::JoinHandle;

/// `ENODEV`: asked for a link by a name that does not exist.
const ENODEV: i32 = 19;
/// `EEXIST`: the address is already on the interface (with this prefix).
const EEXIST: i32 = 17;
/// `EADDRNOTAVAIL`: the address to delete is not on the interface.
const EADDRNOTAVAIL: i32 = 99;

/// A netlink route socket and the task that drives it; the task ends when this is dropped.
pub(crate) struct Rtnl {
    handle: Handle,
    conn: JoinHandle<()>,
}

/// A network interface, as much of it as a floating IP needs.
pub(crate) struct Link {
    /// The kernel's interface index, valid in this namespace only.
    pub index: u32,
    /// The hardware address, for an Ethernet interface (which ARP needs).
    pub mac: Option<[u8; 6]>,
}

/// One IPv4 address of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Addr {
    /// The interface's index.
    pub index: u32,
    /// The interface's own address (`IFA_LOCAL`).
    pub addr: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
}

impl Rtnl {
    /// Open the socket in the calling thread's network namespace. Needs a tokio runtime (the
    /// socket is registered with its reactor and driven by a spawned task).
    pub fn open() -> io::Result<Rtnl> {
        // Both steps below would panic outside a runtime; an error says more.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other("not called from within a tokio runtime"));
        }
        let (conn, handle, _) = rtnetlink::new_connection()?;
        Ok(Rtnl {
            handle,
            conn: tokio::spawn(conn),
        })
    }

    /// The interface called `name`, or `None` if this namespace has none.
    pub async fn link(&self, name: &str) -> io::Result<Option<Link>> {
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(link_of(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(to_io(e)),
        }
    }

    /// The name of the interface with index `index`, or `None` if it is gone.
    pub async fn link_name(&self, index: u32) -> io::Result<Option<String>> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(msg.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(name) => Some(name),
                _ => None,
            })),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(to_io(e)),
        }
    }

    /// Every IPv4 address of every interface of the namespace.
    pub async fn addresses(&self) -> io::Result<Vec<Addr>> {
        let mut req = self.handle.address().get();
        // A dump with a family asks only that family's table.
        req.message_mut().header.family = AddressFamily::Inet;
        let mut dump = req.execute();
        let mut out = Vec::new();
        while let Some(msg) = dump.try_next().await.map_err(to_io)? {
            let mut local = None;
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Local(IpAddr::V4(a)) => local = Some(*a),
                    // A point-to-point address has IFA_LOCAL too; others may only have this.
                    AddressAttribute::Address(IpAddr::V4(a)) if local.is_none() => local = Some(*a),
                    _ => {}
                }
            }
            if let Some(addr) = local {
                out.push(Addr {
                    index: msg.header.index,
                    addr,
                    prefix: msg.header.prefix_len,
                });
            }
        }
        Ok(out)
    }

    /// Add `addr/prefix` to interface `index`. False if it was already there (a concurrent
    /// add won), which is as good.
    pub async fn add(&self, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<bool> {
        match self
            .handle
            .address()
            .add(index, addr.into(), prefix)
            .execute()
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(false),
            Err(e) => Err(to_io(e)),
        }
    }

    /// Delete `a`. False if it was already gone (a concurrent delete won), which is as good.
    pub async fn del(&self, a: Addr) -> io::Result<bool> {
        let msg = AddressMessageBuilder::<Ipv4Addr>::new()
            .index(a.index)
            .address(a.addr, a.prefix)
            .build();
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(EADDRNOTAVAIL) => Ok(false),
            Err(e) => Err(to_io(e)),
        }
    }
}

impl Drop for Rtnl {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

fn link_of(msg: &LinkMessage) -> Link {
    let mac = (msg.header.link_layer_type == LinkLayerType::Ether)
        .then(|| {
            msg.attributes.iter().find_map(|a| match a {
                LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                _ => None,
            })
        })
        .flatten();
    Link {
        index: msg.header.index,
        mac,
    }
}

/// The errno of a netlink error answer (the kernel sends it negated).
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Keep rtnetlink's types out of this crate's API: an errno where the kernel gave one.
fn to_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other.to_string()),
    }
}
