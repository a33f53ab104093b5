//! The crate's error type.

use std::net::Ipv4Addr;

use crate::ParseError;

/// What can go wrong acquiring, releasing or checking a floating IP. Every variant names the
/// address and, where one is known, the interface, so the agent can report it as it is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The text of the floating IP was refused (see [`ParseError`]).
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// No `@IFACE` was given and no interface has an IPv4 subnet containing the address.
    #[error(
        "floating IP {addr}: no interface of this network namespace has an IPv4 subnet \
         containing it (name one: {addr}/PREFIX@IFACE)"
    )]
    NoInterface {
        /// The address.
        addr: Ipv4Addr,
    },
    /// No `@IFACE` was given and several interfaces have equally specific subnets containing
    /// the address.
    #[error(
        "floating IP {addr}: interfaces {} all have a /{prefix} containing it (name one: \
         {addr}/PREFIX@IFACE)", ifaces.join(", ")
    )]
    AmbiguousInterface {
        /// The address.
        addr: Ipv4Addr,
        /// The prefix length of the subnets that tie.
        prefix: u8,
        /// The interfaces that tie.
        ifaces: Vec<String>,
    },
    /// The interface does not exist in the calling thread's network namespace.
    #[error("floating IP {vip}: no interface {iface} in this network namespace")]
    NoSuchInterface {
        /// The floating IP (`ADDR/PREFIX@IFACE`).
        vip: String,
        /// The interface.
        iface: String,
    },
    /// The interface is not Ethernet, so the address cannot be announced with ARP.
    #[error("floating IP {vip}: {iface} is not an Ethernet interface (ARP cannot announce it)")]
    NotEthernet {
        /// The floating IP.
        vip: String,
        /// The interface.
        iface: String,
    },
    /// The address is already configured otherwise: on another interface, or on this one
    /// with another prefix length. Refused rather than doubled, since releasing it later
    /// would remove an address this crate did not add.
    #[error("floating IP {vip}: {addr} is already on {iface} as /{prefix}")]
    Conflict {
        /// The floating IP.
        vip: String,
        /// The address.
        addr: Ipv4Addr,
        /// Where it is.
        iface: String,
        /// With which prefix length.
        prefix: u8,
    },
    /// A netlink request or a packet socket failed.
    #[error("floating IP {vip}: {what}: {source}")]
    Io {
        /// The floating IP (`ADDR/PREFIX@IFACE`, or `ADDR/PREFIX` while its interface is
        /// being looked up).
        vip: String,
        /// What was being done, e.g. `add the address`.
        what: &'static str,
        /// The error; an errno where the kernel gave one.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(
        vip: impl ToString,
        what: &'static str,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let vip = vip.to_string();
        move |source| Error::Io { vip, what, source }
    }
}
