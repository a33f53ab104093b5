//! The crate's whole unsafe surface: namespaces, the node init and spawning into a node.
//!
//! Namespace changes (`setns`, `unshare`) apply to the calling *thread*, so every function here
//! that needs them runs on a fresh thread that exits afterwards; the caller's threads never
//! change namespace. The code that runs in a child between `fork` and `exec` (or, for the init,
//! forever) uses only raw, allocation-free syscalls, as a child of a multi-threaded process must.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A node's init: pid 1 of the node's PID namespace, a child of this process.
///
/// It reaps every orphan of the node, and exits (which makes the kernel kill everything in the
/// node) when `lifeline` is closed, i.e. when this handle is dropped or this process dies.
#[derive(Debug)]
pub(crate) struct Init {
    /// The init's pid, as seen from this process. Not reaped until [`Init::reap`], so the pid
    /// cannot be reused while the handle exists.
    pub pid: libc::pid_t,
    /// The node's PID namespace (`/proc/PID/ns/pid` of the init), kept open so a spawn never
    /// has to look the init up again.
    pub pid_ns: OwnedFd,
    /// The init's mount namespace, the one with a `/proc` of the node's PID namespace.
    pub mnt_ns: OwnedFd,
    /// `pid:[INODE]`, what `/proc/PID/ns/pid` says for every process of the node.
    pub pid_ns_id: String,
    /// The write end of a pipe whose read end the init polls; closing it stops the node.
    lifeline: OwnedFd,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints; on success both are new fds we own.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: freshly created, owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn setns(fd: RawFd, kind: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall on an fd we hold; it changes only the calling thread.
    cvt(unsafe { libc::setns(fd, kind) }).map(drop)
}

/// Open a namespace file (`/run/netns/NAME`, `/proc/PID/ns/...`).
pub(crate) fn open_ns(path: &Path) -> io::Result<OwnedFd> {
    Ok(File::open(path)?.into())
}

/// Run `f` on a new thread that has joined the network namespace `net_ns`.
///
/// Sockets created there stay in that namespace for their whole life, whichever thread uses
/// them later; the thread itself exits when `f` returns.
pub(crate) fn in_netns<R: Send>(net_ns: &OwnedFd, f: impl FnOnce() -> R + Send) -> io::Result<R> {
    let fd = net_ns.as_raw_fd();
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(fd, libc::CLONE_NEWNET)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// What the init reports through its status pipe: the setup stage that failed and its errno.
const STAGE_OK: u32 = 0;
const STAGE_NAMES: [&str; 5] = [
    "ok",
    "unshare(CLONE_NEWNS)",
    "mount --make-rprivate /",
    "mount proc /proc",
    "signalfd",
];

/// Start a node init in `net_ns`: a new PID namespace (its pid 1), a new mount namespace with
/// `/proc` (and, best effort, `/sys`) of that node, waiting at most `timeout` for it to report.
pub(crate) fn start_init(net_ns: &OwnedFd, timeout: Duration) -> io::Result<Init> {
    let (life_r, life_w) = pipe()?;
    let (status_r, status_w) = pipe()?;
    let net = net_ns.as_raw_fd();
    let pid = std::thread::scope(|s| {
        s.spawn(|| -> io::Result<libc::pid_t> {
            setns(net, libc::CLONE_NEWNET)?;
            // SAFETY: plain syscall; affects the children of this (short-lived) thread only.
            cvt(unsafe { libc::unshare(libc::CLONE_NEWPID) })?;
            let (lr, sw) = (life_r.as_raw_fd(), status_w.as_raw_fd());
            // SAFETY: the child runs only `init_main`, which makes raw syscalls and never
            // returns, allocates or touches locks (the parent may have other threads).
            match unsafe { libc::fork() } {
                -1 => Err(io::Error::last_os_error()),
                0 => unsafe { init_main(lr, sw) },
                pid => Ok(pid),
            }
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })?;
    drop(life_r);
    drop(status_w);
    // From here on the init exists: on any error, kill and reap it before returning.
    let fail = |e: io::Error| {
        kill_and_reap(pid, timeout);
        e
    };
    let mut report = [0u8; 8];
    read_exact_timeout(&status_r, &mut report, timeout).map_err(fail)?;
    let stage = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]);
    let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
    if stage != STAGE_OK {
        let name = STAGE_NAMES.get(stage as usize).copied().unwrap_or("setup");
        let e = io::Error::from_raw_os_error(errno);
        return Err(fail(io::Error::new(
            e.kind(),
            format!("node init: {name}: {e}"),
        )));
    }
    let proc_ns = |kind: &str| open_ns(Path::new(&format!("/proc/{pid}/ns/{kind}")));
    let pid_ns = proc_ns("pid").map_err(fail)?;
    let mnt_ns = proc_ns("mnt").map_err(fail)?;
    let pid_ns_id = std::fs::read_link(format!("/proc/{pid}/ns/pid"))
        .map_err(fail)?
        .to_string_lossy()
        .into_owned();
    Ok(Init {
        pid,
        pid_ns,
        mnt_ns,
        pid_ns_id,
        lifeline: life_w,
    })
}

/// Read exactly `buf.len()` bytes from a pipe, or fail after `timeout` or at end of file.
fn read_exact_timeout(fd: &OwnedFd, buf: &mut [u8], timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "node init did not report",
            ));
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, ms) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // SAFETY: reading into the unfilled tail of `buf`.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        match n {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "node init exited before it reported",
                ))
            }
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted && e.kind() != io::ErrorKind::WouldBlock {
                    return Err(e);
                }
            }
            n => got += n as usize,
        }
    }
    Ok(())
}

/// The node init, in the forked child. Never returns.
///
/// # Safety
/// Must be called only in the child of `fork`, with `life_r` and `status_w` open.
unsafe fn init_main(life_r: RawFd, status_w: RawFd) -> ! {
    // Move our two pipe ends to fds 0 and 1 (via high numbers, in case a pipe end itself is 0
    // or 1 because this process runs without stdin), then close everything else: the init
    // must hold none of the parent's fds (sockets, other children's pipes).
    let lr = libc::fcntl(life_r, libc::F_DUPFD, 64);
    let sw = libc::fcntl(status_w, libc::F_DUPFD, 64);
    if lr < 0 || sw < 0 || libc::dup2(lr, 0) < 0 || libc::dup2(sw, 1) < 0 {
        libc::_exit(111);
    }
    if libc::syscall(libc::SYS_close_range, 2u32, u32::MAX, 0u32) != 0 {
        for fd in 2..4096 {
            libc::close(fd);
        }
    }
    // Tell it apart from the test process it was forked from (`ps -e`, `top`).
    let comm = c"testbed-init";
    libc::prctl(libc::PR_SET_NAME, comm.as_ptr());
    let report = |stage: u32| {
        let errno = if stage == STAGE_OK {
            0
        } else {
            *libc::__errno_location()
        };
        let mut msg = [0u8; 8];
        let (a, b) = msg.split_at_mut(4);
        a.copy_from_slice(&stage.to_ne_bytes());
        b.copy_from_slice(&errno.to_ne_bytes());
        libc::write(1, msg.as_ptr().cast(), msg.len());
        if stage != STAGE_OK {
            libc::_exit(112);
        }
    };
    // A mount namespace of our own, private so nothing propagates back to the host, with a
    // /proc of the node's PID namespace (pids inside the node mean what they say).
    if libc::unshare(libc::CLONE_NEWNS) != 0 {
        report(1);
    }
    let root = c"/";
    if libc::mount(
        std::ptr::null(),
        root.as_ptr(),
        std::ptr::null(),
        libc::MS_REC | libc::MS_PRIVATE,
        std::ptr::null(),
    ) != 0
    {
        report(2);
    }
    let (proc_, procfs) = (c"/proc", c"proc");
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    if libc::mount(
        procfs.as_ptr(),
        proc_.as_ptr(),
        procfs.as_ptr(),
        flags,
        std::ptr::null(),
    ) != 0
    {
        report(3);
    }
    // /sys of the node's network namespace (/sys/class/net), as `ip netns exec` does; best
    // effort, the host's stays visible if this fails.
    let (sys, sysfs) = (c"/sys", c"sysfs");
    libc::mount(
        sysfs.as_ptr(),
        sys.as_ptr(),
        sysfs.as_ptr(),
        flags,
        std::ptr::null(),
    );
    // SIGCHLD through a signalfd: blocked signals are queued even when their action is the
    // default (ignore), so no orphan's exit is missed.
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigaddset(&mut set, libc::SIGCHLD);
    libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    let sfd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK);
    if sfd < 0 {
        report(4);
    }
    report(STAGE_OK);
    libc::close(1);
    let mut buf = [0u8; 128]; // signalfd_siginfo is 128 bytes
    loop {
        while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
        let mut fds = [
            libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sfd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        libc::poll(fds.as_mut_ptr(), 2, 1000);
        if fds[0].revents != 0 {
            // The lifeline closed: the testbed is gone (dropped, or its process died). Our
            // exit makes the kernel kill every process of the node.
            libc::_exit(0);
        }
        while libc::read(sfd, buf.as_mut_ptr().cast(), buf.len()) > 0 {}
    }
}

/// SIGKILL a child and reap it, waiting at most `timeout`. Returns whether it was reaped.
pub(crate) fn kill_and_reap(pid: libc::pid_t, timeout: Duration) -> bool {
    // SAFETY: `pid` is our unreaped child, so the pid cannot belong to anyone else.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    reap(pid, timeout)
}

/// Reap a child that is exiting, waiting at most `timeout`.
pub(crate) fn reap(pid: libc::pid_t, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        // SAFETY: plain syscall on our own child.
        let r = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        if r == pid || (r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

impl Init {
    /// Stop the node: SIGKILL the init (the kernel then kills every process of its PID
    /// namespace) and close the lifeline. The caller must reap its own children of the node
    /// and then [`Init::reap`]: the init's exit waits until every pid of the node is freed.
    pub fn kill(&self) {
        // SAFETY: our unreaped child.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }

    /// Reap the init after [`Init::kill`], waiting at most `timeout`.
    pub fn reap(self, timeout: Duration) -> bool {
        drop(self.lifeline);
        reap(self.pid, timeout)
    }
}

/// Spawn `cmd` into a node: its network namespace, its PID namespace (the init's) and its
/// mount namespace, in the current directory of this process unless `cmd` names one.
///
/// The child is a child of this process (not of the init), so the caller can wait for it.
pub(crate) fn spawn_in(init: &Init, net_ns: &OwnedFd, cmd: &mut Command) -> io::Result<Child> {
    let cwd = std::env::current_dir()?;
    let dir = match cmd.get_current_dir() {
        Some(d) => cwd.join(d),
        None => cwd,
    };
    let dir = CString::new(dir.into_os_string().into_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let (net, mnt, pidns) = (
        net_ns.as_raw_fd(),
        init.mnt_ns.as_raw_fd(),
        init.pid_ns.as_raw_fd(),
    );
    // SAFETY: the hook runs in the forked child before exec and makes only raw syscalls on
    // fds that stay open (the caller holds `init` and `net_ns`) and on an owned CString.
    unsafe {
        cmd.pre_exec(move || enter_child(net, mnt, &dir));
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            // The PID namespace cannot be entered by the child itself (setns to a PID
            // namespace applies to children only), so this short-lived thread enters it and
            // forks the child; the other two are entered in the child.
            setns(pidns, libc::CLONE_NEWPID)?;
            cmd.spawn()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// In the child before exec: join the node's network and mount namespaces, then go back to the
/// working directory (joining a mount namespace resets it to `/`).
fn enter_child(net: RawFd, mnt: RawFd, dir: &CStr) -> io::Result<()> {
    setns(net, libc::CLONE_NEWNET)?;
    setns(mnt, libc::CLONE_NEWNS)?;
    // SAFETY: a valid NUL-terminated path.
    cvt(unsafe { libc::chdir(dir.as_ptr()) }).map(drop)
}

/// Whether this process runs as root (the testbed needs CAP_SYS_ADMIN and CAP_NET_ADMIN).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid never fails.
    unsafe { libc::geteuid() == 0 }
}

/// Whether a process with this pid exists (possibly as a zombie).
pub(crate) fn pid_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// SIGKILL a process that is not our child (leftovers of a dead testbed).
pub(crate) fn kill_pid(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: plain syscall; the pid was just listed as a member of a stale namespace.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// `linux/if_packet.h`: a `virtio_net_hdr` before every frame, so checksum-offload and GSO
/// frames keep their metadata through the relay (and are not re-sent with a bad checksum).
const PACKET_VNET_HDR: libc::c_int = 15;
/// `linux/if_packet.h`: do not receive the frames this socket (or its host) sends.
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// A raw packet socket bound to one interface, for the user-space link impairment.
#[derive(Debug)]
pub(crate) struct PacketSocket(OwnedFd);

impl PacketSocket {
    /// Open a socket on interface `ifname` of the calling thread's network namespace (call it
    /// inside [`in_netns`]). Frames carry a `virtio_net_hdr`, and outgoing ones are not seen.
    pub fn bind(ifname: &str) -> io::Result<PacketSocket> {
        let name =
            CString::new(ifname).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: a valid NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error());
        }
        // Protocol 0: receive nothing until bound to the interface (else frames of every
        // interface could arrive in between).
        // SAFETY: plain syscall; on success the fd is ours.
        let fd =
            cvt(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: freshly created.
        let sock = PacketSocket(unsafe { OwnedFd::from_raw_fd(fd) });
        for opt in [PACKET_VNET_HDR, PACKET_IGNORE_OUTGOING] {
            sock.set_int(libc::SOL_PACKET, opt, 1)?;
        }
        sock.set_int(libc::SOL_SOCKET, libc::SO_RCVBUF, 4 << 20)?;
        // SAFETY: sockaddr_ll is plain data; zero is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = index as libc::c_int;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `addr` is a valid sockaddr_ll of `len` bytes.
        cvt(unsafe { libc::bind(fd, (&raw const addr).cast(), len) })?;
        Ok(sock)
    }

    fn set_int(&self, level: libc::c_int, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` is a valid int of `len` bytes.
        cvt(unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                level,
                opt,
                (&raw const value).cast(),
                len,
            )
        })
        .map(drop)
    }

    /// Receive one frame (with its header) into `buf`, waiting at most `timeout`.
    pub fn recv(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().clamp(0, i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
            return Ok(None);
        }
        // SAFETY: reading into `buf`.
        let n = unsafe {
            libc::recv(
                self.0.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(n as usize))
    }

    /// Send one frame (with its header) out of the bound interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: sending from `frame`.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
