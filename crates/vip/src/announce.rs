//! The repeated announcements after an acquire, and how a release silences them.
//!
//! After [`acquire`](crate::acquire) returns, a background task repeats the announcement (a
//! lost broadcast frame would leave a peer pointing at the old holder). If the address is
//! released meanwhile and taken by another node, a late announcement from here would pull
//! the traffic back to a host that no longer has the address, so [`stop`] (which
//! [`release`](crate::release) calls first) must be final: each announcement is sent while
//! holding its announcer's lock, after checking that it is still live, and `stop` clears that
//! flag under the same lock. Once `stop` returns, nothing more is sent for the address.
//!
//! Announcers are found by network namespace and address, since one process may hold the
//! same address in several namespaces (the tests do, one namespace per node).

use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::garp;

/// Identifies a network namespace: the device and inode of its `nsfs` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Netns {
    dev: u64,
    ino: u64,
}

impl Netns {
    /// The calling thread's network namespace.
    pub fn current() -> io::Result<Netns> {
        let meta = std::fs::metadata("/proc/thread-self/ns/net")?;
        Ok(Netns {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// One running announcer, as [`stop`] finds it.
struct Entry {
    netns: Netns,
    addr: Ipv4Addr,
    live: Arc<Mutex<bool>>,
}

/// Every announcer of this process that has announcements left.
static RUNNING: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Silence every announcer of `addr` in `netns`; none sends again once this returns.
pub(crate) fn stop(netns: Netns, addr: Ipv4Addr) {
    let mut running = lock(&RUNNING);
    running.retain(|e| {
        if e.netns == netns && e.addr == addr {
            // Waits for an announcement in flight, if any.
            *lock(&e.live) = false;
            false
        } else {
            true
        }
    });
}

/// The announcements of one acquire of an address on one interface.
pub(crate) struct Announcer {
    addr: Ipv4Addr,
    ifindex: u32,
    mac: [u8; 6],
    socket: garp::Socket,
    live: Arc<Mutex<bool>>,
}

impl Announcer {
    /// Register a new announcer, replacing (silencing) any older one for the same address
    /// in the same namespace: a second acquire starts the announcements over.
    pub fn start(
        netns: Netns,
        addr: Ipv4Addr,
        ifindex: u32,
        mac: [u8; 6],
        socket: garp::Socket,
    ) -> Announcer {
        stop(netns, addr);
        let live = Arc::new(Mutex::new(true));
        lock(&RUNNING).push(Entry {
            netns,
            addr,
            live: live.clone(),
        });
        Announcer {
            addr,
            ifindex,
            mac,
            socket,
            live,
        }
    }

    /// Send one announcement unless stopped. `Ok(false)`: stopped, nothing sent.
    pub fn announce(&self) -> io::Result<bool> {
        let live = lock(&self.live);
        if !*live {
            return Ok(false);
        }
        self.socket.announce(self.ifindex, self.mac, self.addr)?;
        Ok(true)
    }

    /// The announcements after the first: `more` of them, `every` apart, until stopped.
    /// A failed one is logged and the next still tried (the address is held either way).
    pub async fn repeat(self, more: u32, every: Duration) {
        for _ in 0..more {
            tokio::time::sleep(every).await;
            match self.announce() {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => tracing::warn!(addr = %self.addr, ifindex = self.ifindex,
                    "gratuitous ARP failed: {e}"),
            }
        }
    }
}

impl Drop for Announcer {
    /// Done (or cancelled with its runtime): unregister, unless a newer acquire or a release
    /// already did.
    fn drop(&mut self) {
        lock(&RUNNING).retain(|e| !Arc::ptr_eq(&e.live, &self.live));
    }
}
