//! Gratuitous ARP: the frames, and the `AF_PACKET` socket they leave on.
//!
//! Peers keep a neighbour cache (IP → MAC). When an address moves to another host, the old
//! entries still point at the old MAC until they expire (tens of seconds on Linux), so the
//! new holder broadcasts its mapping. It sends both forms hosts listen to: an ARP *request*
//! for its own address (RFC 5227's announcement) and an ARP *reply* with the target hardware
//! address equal to the sender's, which is what Linux's `arp_is_garp` requires to take a reply
//! as gratuitous. Linux then overrides an existing entry at once, even within its lock time.
//! Neither form creates entries in caches that have none (unless `arp_accept` is set): a host
//! that never talked to the address asks when it needs to, and the new holder answers.
//!
//! This module holds the crate's only `unsafe`: the socket address type rustix lacks.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;

use rustix::net::addr::{SocketAddrArg, SocketAddrLen, SocketAddrOpaque};
use rustix::net::{AddressFamily, SendFlags, SocketFlags, SocketType};

/// The length of every frame sent: an Ethernet header and an ARP packet (42 bytes), padded to
/// Ethernet's minimum (60 without the FCS) so no driver has to.
pub(crate) const FRAME_LEN: usize = 60;

/// The broadcast MAC address.
const BROADCAST: [u8; 6] = [0xff; 6];
/// EtherType of ARP.
const ETH_P_ARP: u16 = 0x0806;
/// EtherType of IPv4 (ARP's protocol type).
const ETH_P_IP: u16 = 0x0800;
/// ARP hardware type of Ethernet.
const ARPHRD_ETHER: u16 = 1;

/// The ARP operation of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// `ARPOP_REQUEST` for the sender's own address, target MAC zero.
    Request = 1,
    /// `ARPOP_REPLY` with the target MAC equal to the sender's.
    Reply = 2,
}

/// A broadcast gratuitous ARP frame saying that `ip` is at `mac`.
pub(crate) fn frame(op: Op, mac: [u8; 6], ip: Ipv4Addr) -> [u8; FRAME_LEN] {
    let target_mac = match op {
        Op::Request => [0; 6],
        Op::Reply => mac,
    };
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    f[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes());
    f[18] = 6; // hardware address length
    f[19] = 4; // protocol address length
    f[20..22].copy_from_slice(&(op as u16).to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    f[32..38].copy_from_slice(&target_mac);
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// A send-only packet socket (protocol 0: the kernel delivers nothing to it).
#[derive(Debug)]
pub(crate) struct Socket {
    fd: OwnedFd,
}

impl Socket {
    /// Open it in the calling thread's network namespace (needs `CAP_NET_RAW`).
    pub fn open() -> io::Result<Socket> {
        let fd = rustix::net::socket_with(
            AddressFamily::PACKET,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            None,
        )?;
        Ok(Socket { fd })
    }

    /// One announcement: the request, then the reply, on interface `ifindex`.
    pub fn announce(&self, ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
        let ifindex = i32::try_from(ifindex)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index"))?;
        let to = LinkAddr::broadcast(ifindex);
        for op in [Op::Request, Op::Reply] {
            let sent = rustix::net::sendto(&self.fd, &frame(op, mac, ip), SendFlags::empty(), &to)?;
            if sent != FRAME_LEN {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "short packet write",
                ));
            }
        }
        Ok(())
    }
}

/// `struct sockaddr_ll` (linux/if_packet.h), which rustix 1.1 does not provide.
#[repr(C)]
struct LinkAddr {
    family: u16,
    /// EtherType, network byte order.
    protocol: u16,
    ifindex: i32,
    hatype: u16,
    pkttype: u8,
    halen: u8,
    addr: [u8; 8],
}

impl LinkAddr {
    /// Where a broadcast ARP frame goes on interface `ifindex`. With `SOCK_RAW` the frame
    /// carries its own Ethernet header; the address picks the interface.
    fn broadcast(ifindex: i32) -> LinkAddr {
        let mut addr = [0; 8];
        addr[..6].copy_from_slice(&BROADCAST);
        LinkAddr {
            family: AddressFamily::PACKET.as_raw(),
            protocol: ETH_P_ARP.to_be(),
            ifindex,
            hatype: 0,
            pkttype: 0,
            halen: 6,
            addr,
        }
    }
}

// SAFETY: `f` gets a pointer to `self`, which lives for the whole call, and its exact size;
// `LinkAddr` is `repr(C)` with the field types and order of `struct sockaddr_ll` (20 bytes,
// no padding), so the kernel reads a valid `sockaddr_ll` of that length.
unsafe impl SocketAddrArg for LinkAddr {
    unsafe fn with_sockaddr<R>(
        &self,
        f: impl FnOnce(*const SocketAddrOpaque, SocketAddrLen) -> R,
    ) -> R {
        f(
            (self as *const LinkAddr).cast(),
            size_of::<LinkAddr>() as SocketAddrLen,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];

    #[test]
    fn frames_are_broadcast_arp_for_the_senders_own_address() {
        let ip = Ipv4Addr::new(10, 77, 1, 100);
        for (op, code, target_mac) in [(Op::Request, 1, [0; 6]), (Op::Reply, 2, MAC)] {
            let f = frame(op, MAC, ip);
            assert_eq!(&f[0..6], &[0xff; 6], "{op:?}: Ethernet destination");
            assert_eq!(&f[6..12], &MAC, "{op:?}: Ethernet source");
            assert_eq!(&f[12..22], &[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, code]);
            assert_eq!(&f[22..28], &MAC, "{op:?}: sender MAC");
            assert_eq!(&f[28..32], &ip.octets(), "{op:?}: sender IP");
            assert_eq!(&f[32..38], &target_mac, "{op:?}: target MAC");
            assert_eq!(&f[38..42], &ip.octets(), "{op:?}: target IP");
            assert!(f[42..].iter().all(|&b| b == 0), "{op:?}: padding");
        }
    }

    #[test]
    fn link_addr_has_the_kernels_layout() {
        assert_eq!(size_of::<LinkAddr>(), 20);
        assert_eq!(std::mem::offset_of!(LinkAddr, ifindex), 4);
        assert_eq!(std::mem::offset_of!(LinkAddr, hatype), 8);
        assert_eq!(std::mem::offset_of!(LinkAddr, halen), 11);
        assert_eq!(std::mem::offset_of!(LinkAddr, addr), 12);
    }
}
