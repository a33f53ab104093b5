//! [`Vip`] and its text form `ADDRESS/PREFIX[@IFACE]`, checked without touching the system.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// The longest interface name Linux accepts (`IFNAMSIZ` less the terminating NUL).
const IFNAME_MAX: usize = 15;

/// A floating IPv4 address on one interface: what [`acquire`](crate::acquire) adds and
/// [`release`](crate::release) removes.
///
/// The interface is always known here (a [`VipSpec`] without one is resolved first), so every
/// operation and every error names both the address and the interface it is about. The
/// prefix length is the one the address is added with; it decides the subnet route the
/// address brings when it is the first of its subnet on the interface.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Vip {
    addr: Ipv4Addr,
    prefix: u8,
    iface: String,
}

impl Vip {
    /// A floating IP from its parts, with the same checks as the text form: a unicast address
    /// that can be a host's (not the network or broadcast address of its subnet), a prefix
    /// length from 1 to 32, and a name Linux accepts for an interface.
    pub fn new(addr: Ipv4Addr, prefix: u8, iface: impl Into<String>) -> Result<Vip, ParseError> {
        let iface = iface.into();
        let text = format!("{addr}/{prefix}@{iface}");
        if !(1..=32).contains(&prefix) {
            return Err(ParseError::Prefix {
                text,
                part: prefix.to_string(),
            });
        }
        check_addr(&text, addr, prefix)?;
        check_iface(&text, &iface)?;
        Ok(Vip {
            addr,
            prefix,
            iface,
        })
    }

    /// Parse `ADDRESS/PREFIX@IFACE` (`10.77.1.100/24@eth0`), or `ADDRESS/PREFIX` and pick the
    /// interface whose subnet contains the address.
    ///
    /// Without `@IFACE` the choice is the kernel's own for an on-link destination: among the
    /// IPv4 addresses of the calling thread's network namespace, the interface of the longest
    /// prefix whose subnet contains the address (the address itself, if already held, does
    /// not count). It is an error when no interface qualifies, or when two tie. This is async
    /// because it asks the kernel; [`VipSpec`] is the same parser without that step, for
    /// checking configuration where the interfaces are not at hand.
    pub async fn parse(text: &str) -> Result<Vip, crate::Error> {
        text.parse::<VipSpec>()?.resolve().await
    }

    /// The address that floats.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length the address is added with.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The interface the address is added to and announced on.
    pub fn iface(&self) -> &str {
        &self.iface
    }
}

impl fmt::Display for Vip {
    /// The text form [`Vip::parse`] reads back: `10.77.1.100/24@eth0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.addr, self.prefix, self.iface)
    }
}

/// The text form of a floating IP, checked but not yet bound to an interface of this host:
/// `ADDRESS/PREFIX[@IFACE]`.
///
/// Parsing (`str::parse`) does no I/O, so configuration can be validated anywhere (on the
/// director, in `nines validate`); [`VipSpec::resolve`] then picks the interface, if none was
/// named, on the node that will hold the address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VipSpec {
    addr: Ipv4Addr,
    prefix: u8,
    iface: Option<String>,
}

impl VipSpec {
    /// The address that floats.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length the address is added with.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The interface named after `@`, if any.
    pub fn iface(&self) -> Option<&str> {
        self.iface.as_deref()
    }

    /// Bind the spec to an interface: the named one, or else the one whose subnet contains
    /// the address in the calling thread's network namespace (see [`Vip::parse`]).
    pub async fn resolve(self) -> Result<Vip, crate::Error> {
        let VipSpec {
            addr,
            prefix,
            iface,
        } = self;
        let iface = match iface {
            Some(iface) => iface,
            None => crate::iface_for(addr, prefix).await?,
        };
        Ok(Vip {
            addr,
            prefix,
            iface,
        })
    }

    /// Split at the first `@` (an interface name may itself contain one) and at `/`.
    fn parse(text: &str) -> Result<VipSpec, ParseError> {
        let (net, iface) = match text.split_once('@') {
            Some((net, iface)) => (net, Some(iface)),
            None => (text, None),
        };
        let (addr_part, prefix_part) = match net.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (net, None),
        };
        let addr: Ipv4Addr = addr_part.parse().map_err(|_| ParseError::Address {
            text: text.to_string(),
            part: addr_part.to_string(),
        })?;
        let Some(prefix_part) = prefix_part else {
            return Err(ParseError::NoPrefix {
                text: text.to_string(),
            });
        };
        // `u8::from_str` would take `+24`; only plain decimal digits are a prefix length.
        let prefix = Some(prefix_part)
            .filter(|p| !p.is_empty() && p.len() <= 2 && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u8>().ok())
            .filter(|p| (1..=32).contains(p))
            .ok_or_else(|| ParseError::Prefix {
                text: text.to_string(),
                part: prefix_part.to_string(),
            })?;
        check_addr(text, addr, prefix)?;
        if let Some(iface) = iface {
            check_iface(text, iface)?;
        }
        Ok(VipSpec {
            addr,
            prefix,
            iface: iface.map(str::to_string),
        })
    }
}

impl FromStr for VipSpec {
    type Err = ParseError;

    /// See [`VipSpec`]; every error quotes the whole text and names the part that is wrong.
    fn from_str(text: &str) -> Result<VipSpec, ParseError> {
        VipSpec::parse(text)
    }
}

impl fmt::Display for VipSpec {
    /// The text form: `10.77.1.100/24@eth0`, or `10.77.1.100/24` without an interface.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)?;
        match &self.iface {
            Some(iface) => write!(f, "@{iface}"),
            None => Ok(()),
        }
    }
}

/// Why a floating IP's text (or parts) was refused. Each variant quotes the whole text and
/// names the part that is wrong, so a configuration error can be fixed from the message alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The part before `/` (or before `@`, or the whole text) is not a dotted-quad IPv4
    /// address.
    #[error("floating IP `{text}`: `{part}` is not an IPv4 address")]
    Address {
        /// The text parsed.
        text: String,
        /// The part that should be the address.
        part: String,
    },
    /// There is no `/PREFIX`: the prefix length decides the subnet route, so it is never
    /// guessed.
    #[error(
        "floating IP `{text}`: no prefix length (write ADDRESS/PREFIX[@IFACE], e.g. \
         10.0.0.100/24@eth0)"
    )]
    NoPrefix {
        /// The text parsed.
        text: String,
    },
    /// The prefix length is not a decimal number from 1 to 32.
    #[error("floating IP `{text}`: prefix length `{part}` is not a number from 1 to 32")]
    Prefix {
        /// The text parsed.
        text: String,
        /// The part after `/`.
        part: String,
    },
    /// The address is valid IPv4 but no host can own it on a LAN (unspecified, loopback,
    /// multicast, broadcast, reserved, or the network or broadcast address of its subnet).
    #[error("floating IP `{text}`: {addr} cannot float: {why}")]
    Unusable {
        /// The text parsed.
        text: String,
        /// The address.
        addr: Ipv4Addr,
        /// What kind of address it is.
        why: String,
    },
    /// The part after `@` is not a name Linux accepts for an interface.
    #[error("floating IP `{text}`: interface name `{part}` {why}")]
    Interface {
        /// The text parsed.
        text: String,
        /// The part after `@`.
        part: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// Refuse addresses no single host on a LAN can own and announce.
fn check_addr(text: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), ParseError> {
    let why = if addr.is_unspecified() {
        Some("it is the unspecified address".to_string())
    } else if addr.is_broadcast() {
        Some("it is the limited broadcast address".to_string())
    } else if addr.is_loopback() {
        Some("it is a loopback address (127.0.0.0/8)".to_string())
    } else if addr.is_multicast() {
        Some("it is a multicast address (224.0.0.0/4)".to_string())
    } else if addr.octets()[0] >= 240 {
        Some("it is in the reserved range 240.0.0.0/4".to_string())
    } else if prefix <= 30 {
        // /31 (RFC 3021) and /32 have no network or broadcast address.
        let host = u32::from(addr) & (u32::MAX >> prefix);
        if host == 0 {
            Some(format!("it is the network address of its /{prefix}"))
        } else if host == u32::MAX >> prefix {
            Some(format!("it is the broadcast address of its /{prefix}"))
        } else {
            None
        }
    } else {
        None
    };
    match why {
        Some(why) => Err(ParseError::Unusable {
            text: text.to_string(),
            addr,
            why,
        }),
        None => Ok(()),
    }
}

/// The kernel's rule for interface names (`dev_valid_name`).
fn check_iface(text: &str, name: &str) -> Result<(), ParseError> {
    let why = if name.is_empty() {
        Some("is empty")
    } else if name.len() > IFNAME_MAX {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is `.` or `..`")
    } else if name.contains('/') || name.contains(':') {
        Some("contains `/` or `:`")
    } else if name.chars().any(char::is_whitespace) || name.contains('\0') {
        Some("contains whitespace or NUL")
    } else {
        None
    };
    match why {
        Some(why) => Err(ParseError::Interface {
            text: text.to_string(),
            part: name.to_string(),
            why,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<VipSpec, ParseError> {
        text.parse()
    }

    #[test]
    fn the_text_forms_parse_and_print_back() {
        let s = spec("10.77.1.100/24@eth0").expect("valid");
        assert_eq!(
            (s.addr(), s.prefix(), s.iface()),
            (Ipv4Addr::new(10, 77, 1, 100), 24, Some("eth0"))
        );
        assert_eq!(s.to_string(), "10.77.1.100/24@eth0");
        let s = spec("192.168.0.7/32").expect("valid");
        assert_eq!((s.prefix(), s.iface()), (32, None));
        assert_eq!(s.to_string(), "192.168.0.7/32");
        // An `@` after the first belongs to the interface name, as the kernel allows.
        assert_eq!(spec("10.0.0.5/8@a@b").expect("valid").iface(), Some("a@b"));
        // /31 has no network or broadcast address.
        assert!(spec("10.0.0.0/31@eth0").is_ok());
        assert!(spec("10.0.0.1/31@eth0").is_ok());
    }

    #[test]
    fn each_error_names_the_bad_part() {
        let cases: &[(&str, &str)] = &[
            ("", "`` is not an IPv4 address"),
            ("10.77.1/24@eth0", "`10.77.1` is not an IPv4 address"),
            ("10.77.1.x/24", "`10.77.1.x` is not an IPv4 address"),
            ("010.77.1.1/24", "`010.77.1.1` is not an IPv4 address"),
            (" 10.77.1.1/24", "` 10.77.1.1` is not an IPv4 address"),
            ("10.77.1.100@eth0", "no prefix length"),
            ("10.77.1.100", "no prefix length"),
            ("10.77.1.100/@eth0", "prefix length `` is not"),
            ("10.77.1.100/33@eth0", "prefix length `33` is not"),
            ("10.77.1.100/0@eth0", "prefix length `0` is not"),
            ("10.77.1.100/+24@eth0", "prefix length `+24` is not"),
            ("10.77.1.100/024@eth0", "prefix length `024` is not"),
            ("10.77.1.100/24/8@eth0", "prefix length `24/8` is not"),
            ("10.77.1.100/24@", "interface name `` is empty"),
            (
                "10.77.1.100/24@abcdefghijklmnop",
                "`abcdefghijklmnop` is longer",
            ),
            ("10.77.1.100/24@eth0:1", "`eth0:1` contains `/` or `:`"),
            ("10.77.1.100/24@eth 0", "`eth 0` contains whitespace"),
            ("10.77.1.100/24@..", "`..` is `.` or `..`"),
            ("0.0.0.0/24", "0.0.0.0 cannot float: it is the unspecified"),
            ("255.255.255.255/32", "limited broadcast"),
            ("127.0.0.5/8", "127.0.0.5 cannot float: it is a loopback"),
            ("224.0.0.1/24", "multicast"),
            ("240.0.0.1/24", "reserved"),
            (
                "10.77.1.0/24@eth0",
                "10.77.1.0 cannot float: it is the network address",
            ),
            (
                "10.77.1.255/24",
                "10.77.1.255 cannot float: it is the broadcast address",
            ),
        ];
        for (text, want) in cases {
            let err = spec(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.contains(&format!("`{text}`")), "{text:?}: {err}");
        }
    }

    #[test]
    fn new_checks_like_the_parser() {
        let vip = Vip::new(Ipv4Addr::new(10, 77, 1, 100), 24, "eth0").expect("valid");
        assert_eq!(vip.to_string(), "10.77.1.100/24@eth0");
        let err = Vip::new(Ipv4Addr::new(10, 77, 1, 100), 40, "eth0").expect_err("prefix");
        assert!(err.to_string().contains("prefix length `40`"), "{err}");
        let err = Vip::new(Ipv4Addr::new(10, 77, 1, 0), 24, "eth0").expect_err("network");
        assert!(err.to_string().contains("network address"), "{err}");
        let err = Vip::new(Ipv4Addr::new(10, 77, 1, 1), 24, "").expect_err("iface");
        assert!(err.to_string().contains("is empty"), "{err}");
    }
}
