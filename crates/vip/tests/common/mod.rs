//! Helpers for the testbed tests and the `move` example: running the crate inside a node's
//! network namespace, looking at a node with `ip`, capturing ARP frames, and TCP servers and
//! a client that tell which node answered.

#![allow(dead_code)] // each test binary uses a different part

use std::future::Future;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nines_testbed::{Node, Testbed};
use nines_vip::Vip;
use rustix::net::{AddressFamily, RecvFlags, SocketFlags, SocketType};

/// A testbed of `n` nodes and the floating IP `10.77.K.100/24@eth0` of its subnet; `None`,
/// saying so, when not root.
pub fn bed(n: usize) -> Option<(Testbed, Vip)> {
    if !nines_testbed::is_root() {
        eprintln!("SKIPPED: the testbed needs root");
        return None;
    }
    let bed = Testbed::new(n).expect("testbed");
    let [a, b, c, _] = bed.node(0).addr().octets();
    let vip = Vip::new(Ipv4Addr::new(a, b, c, 100), 24, "eth0").expect("vip");
    Some((bed, vip))
}

/// Run `f` to completion on `node`: a current-thread runtime made on a thread inside the
/// node's network namespace, so the crate's sockets are the node's.
pub fn on<F, Fut, T>(node: &Node, f: F) -> T
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = T>,
    T: Send,
{
    node.enter(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(f())
    })
    .expect("enter the node")
}

/// Acquire on `node` and wait for all the announcements; the instants of the `Acquired`.
pub fn acquire(node: &Node, vip: &Vip) -> (Instant, Instant, Instant, bool) {
    on(node, || async {
        let a = nines_vip::acquire(vip).await.expect("acquire");
        let times = (a.started, a.added, a.announced, a.already_held);
        a.announcements_done().await;
        times
    })
}

/// Release on `node`.
pub fn release(node: &Node, vip: &Vip) {
    on(node, || nines_vip::release(vip)).expect("release");
}

/// Whether `node` holds `vip`, by the crate.
pub fn held(node: &Node, vip: &Vip) -> bool {
    on(node, || nines_vip::held(vip)).expect("held")
}

/// `ip -n NETNS ARGS...`, its stdout; panics with its stderr if it fails.
pub fn ip(node: &Node, args: &[&str]) -> String {
    let out = Command::new("ip")
        .arg("-n")
        .arg(node.netns())
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip -n {} {args:?}: {}",
        node.netns(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The IPv4 addresses of `eth0` on `node`, as `ip` prints them (`10.77.1.100/24`).
pub fn addrs(node: &Node) -> Vec<String> {
    ip(node, &["-4", "-o", "addr", "show", "dev", "eth0"])
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next().map(str::to_string)
        })
        .collect()
}

/// The MAC address of `eth0` on `node`.
pub fn mac(node: &Node) -> [u8; 6] {
    let out = ip(node, &["-o", "link", "show", "eth0"]);
    let mut words = out.split_whitespace();
    words.find(|w| *w == "link/ether").expect("link/ether");
    let text = words.next().expect("a MAC");
    let mut mac = [0; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16).expect("hex");
    }
    mac
}

/// What `node`'s neighbour table says about `addr` on eth0 (`... lladdr MAC STATE`).
pub fn neigh(node: &Node, addr: Ipv4Addr) -> String {
    ip(node, &["neigh", "show", &addr.to_string(), "dev", "eth0"])
}

/// Poll `cond` every millisecond until it holds or `within` ends.
pub fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A packet socket on `node` that receives every ARP frame arriving there.
pub fn capture(node: &Node) -> OwnedFd {
    node.enter(|| {
        let fd = rustix::net::socket_with(
            AddressFamily::PACKET,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            Some(rustix::net::eth::ARP),
        )?;
        rustix::net::sockopt::set_socket_timeout(
            &fd,
            rustix::net::sockopt::Timeout::Recv,
            Some(Duration::from_millis(20)),
        )?;
        Ok::<_, std::io::Error>(fd)
    })
    .expect("enter")
    .expect("packet socket")
}

/// One ARP frame, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arp {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub op: u16,
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_mac: [u8; 6],
    pub target_ip: Ipv4Addr,
}

/// Read ARP frames from `fd` whose sender address is `ip`, until `enough` says the list is
/// complete or `window` ends; the frames in arrival order.
pub fn arp_frames(
    fd: &OwnedFd,
    ip: Ipv4Addr,
    window: Duration,
    mut enough: impl FnMut(&[Arp]) -> bool,
) -> Vec<Arp> {
    let deadline = Instant::now() + window;
    let mut frames = Vec::new();
    let mut buf = [0u8; 1600];
    while Instant::now() < deadline && !enough(&frames) {
        let n = match rustix::net::recv(fd, &mut buf[..], RecvFlags::empty()) {
            Ok((n, _)) => n,
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => continue,
            Err(e) => panic!("recv: {e}"),
        };
        if n < 42 || buf[12..14] != [0x08, 0x06] {
            continue;
        }
        let f = &buf[..n];
        let six = |at: usize| -> [u8; 6] { f[at..at + 6].try_into().expect("6 bytes") };
        let four = |at: usize| Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3]);
        assert_eq!(&f[14..20], &[0, 1, 8, 0, 6, 4], "Ethernet/IPv4 ARP");
        let arp = Arp {
            eth_dst: six(0),
            eth_src: six(6),
            op: u16::from_be_bytes([f[20], f[21]]),
            sender_mac: six(22),
            sender_ip: four(28),
            target_mac: six(32),
            target_ip: four(38),
        };
        if arp.sender_ip == ip {
            frames.push(arp);
        }
    }
    frames
}

/// A TCP server on every address of a node, answering each connection with its name.
pub struct Server<'a> {
    node: &'a Node,
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl<'a> Server<'a> {
    /// Listen on `0.0.0.0:port` on `node`: whichever address the node holds, it answers.
    pub fn start(node: &'a Node, name: &'static str, port: u16) -> Server<'a> {
        let listener = node
            .enter(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
            .expect("enter")
            .expect("bind");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(mut conn) = conn {
                    let _ = conn.write_all(name.as_bytes());
                }
            }
        });
        Server {
            node,
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server<'_> {
    /// Stop the accept loop: set the flag, then wake it with one last connection.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let to = (self.node.addr(), self.port);
        let _ = self.node.enter(|| TcpStream::connect(to));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// On the calling thread (inside a node's namespace), connect to `to` again and again, each
/// attempt bounded by `attempt`, until a [`Server`] answers `want`. Returns the instant that
/// connection was established, or the last answer (or error) when `within` ends.
///
/// Answers are collected without waiting for them: a connection the old holder accepted just
/// before it released the address never gets its answer (the old holder can no longer send
/// from that address), and must not hold up the attempts that follow.
pub fn connect_until(
    to: SocketAddr,
    want: &str,
    attempt: Duration,
    within: Duration,
) -> Result<Instant, String> {
    let deadline = Instant::now() + within;
    let mut last = String::from("no attempt");
    // Connections not answered yet: the stream, when it was established, the answer so far.
    let mut pending: Vec<(TcpStream, Instant, Vec<u8>)> = Vec::new();
    while Instant::now() < deadline {
        match TcpStream::connect_timeout(&to, attempt) {
            Ok(conn) => {
                let connected = Instant::now();
                conn.set_nonblocking(true).expect("nonblocking");
                pending.push((conn, connected, Vec::new()));
            }
            Err(e) => last = format!("connect: {e}"),
        }
        let mut answered = None;
        pending.retain_mut(|(conn, connected, answer)| {
            let mut buf = [0u8; 64];
            loop {
                match conn.read(&mut buf) {
                    Ok(0) => {
                        let text = String::from_utf8_lossy(answer);
                        if text == want {
                            answered = answered.min(Some(*connected)).or(Some(*connected));
                        } else {
                            last = format!("answered by {text}");
                        }
                        return false;
                    }
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                    Err(e) => {
                        last = format!("read: {e}");
                        return false;
                    }
                }
            }
        });
        if let Some(at) = answered {
            return Ok(at);
        }
    }
    Err(last)
}
