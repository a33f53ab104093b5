//! One node of a testbed: its namespaces, its init, and the processes spawned on it.

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::sys::{self, Init};
use crate::Error;

/// One host of a [`Testbed`](crate::Testbed): a network namespace with one interface (`eth0`)
/// on the testbed's bridge, and, while it is up, a PID namespace whose init reaps its orphans.
///
/// Obtained from [`Testbed::node`](crate::Testbed::node); faults are injected through the
/// testbed, which owns the switch.
#[derive(Debug)]
pub struct Node {
    pub(crate) index: usize,
    pub(crate) netns: String,
    pub(crate) addr: Ipv4Addr,
    pub(crate) net_ns: OwnedFd,
    pub(crate) timeout: Duration,
    pub(crate) rt: Mutex<Runtime>,
}

/// What changes when a node is killed and restarted.
#[derive(Debug, Default)]
pub(crate) struct Runtime {
    pub init: Option<Init>,
    /// Every process spawned on the node and not yet known to be reaped; shared with the
    /// [`Process`] handles so that a kill reaps them even if the caller dropped its handle.
    pub procs: Vec<Arc<Mutex<Child>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Node {
    /// The node's index in its testbed (0-based), as passed to the fault methods.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The node's IPv4 address on the testbed's private /24, reachable only from the other
    /// nodes of the same testbed.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The name of the node's network namespace, for debugging by hand
    /// (`ip netns exec NAME ss -tnp`) while a test is paused.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Whether the node is up (it was not killed, or it was restarted since).
    pub fn is_up(&self) -> bool {
        lock(&self.rt).init.is_some()
    }

    /// The pid (as seen from this process) of the node's init, the process whose death takes
    /// the whole node down; `None` while the node is down.
    pub fn init_pid(&self) -> Option<u32> {
        lock(&self.rt).init.as_ref().map(|i| i.pid as u32)
    }

    /// Run `cmd` on this node: in its network namespace, its PID namespace (so it dies with
    /// the node) and its mount namespace (whose `/proc` shows the node's processes only).
    ///
    /// The process is a child of this process, so it is never left to the machine's PID 1:
    /// the returned handle waits for it, and [`Testbed::kill_node`](crate::Testbed::kill_node)
    /// and the testbed's `Drop` reap it even if the handle was dropped. The working directory
    /// is `cmd`'s, or this process's.
    ///
    /// `cmd` is taken by value because spawning registers a hook on it that enters this node's
    /// namespaces; a `Command` reused for another spawn would carry a stale one.
    pub fn spawn(&self, mut cmd: Command) -> Result<Process, Error> {
        let mut rt = lock(&self.rt);
        // Reap what already exited, so a long test does not pile up zombies.
        rt.procs.retain(|c| matches!(lock(c).try_wait(), Ok(None)));
        let init = rt.init.as_ref().ok_or(Error::NodeDown(self.index))?;
        let mut child =
            sys::spawn_in(init, &self.net_ns, &mut cmd).map_err(|source| Error::Io {
                what: format!("spawn {:?} on node {}", cmd.get_program(), self.index),
                source,
            })?;
        let pid = child.id();
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let child = Arc::new(Mutex::new(child));
        rt.procs.push(child.clone());
        Ok(Process {
            pid,
            node: self.index,
            child,
            stdin,
            stdout,
            stderr,
        })
    }

    /// Run `f` on a new thread inside this node's network namespace and return its result.
    ///
    /// For test code that wants to be a client on the node (connect, measure) without a helper
    /// process: sockets made inside `f` belong to the node's network for their whole life,
    /// even when used from another thread later. Only the network is entered; processes
    /// started from `f` do not belong to the node's PID namespace (use [`Node::spawn`]).
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R, Error> {
        sys::in_netns(&self.net_ns, f).map_err(|source| Error::Io {
            what: format!("enter the network namespace {}", self.netns),
            source,
        })
    }

    /// Every live process of the node right now (pids as seen from this process), its init
    /// included; empty while the node is down. Found by the PID namespace in `/proc/*/ns/pid`,
    /// which zombies no longer have: check `/proc/PID` itself to see that a pid is gone.
    pub fn pids(&self) -> Vec<u32> {
        let Some(id) = lock(&self.rt).init.as_ref().map(|i| i.pid_ns_id.clone()) else {
            return Vec::new();
        };
        let mut pids: Vec<u32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/ns/pid"))
                    .is_ok_and(|l| l.as_os_str() == id.as_str())
            })
            .collect();
        pids.sort_unstable();
        pids
    }

    /// Kill every process of the node and reap them (see [`Testbed::kill_node`]).
    ///
    /// [`Testbed::kill_node`]: crate::Testbed::kill_node
    pub(crate) fn kill(&self) -> Result<(), Error> {
        let mut rt = lock(&self.rt);
        let Some(init) = rt.init.take() else {
            return Ok(());
        };
        init.kill();
        // The kernel SIGKILLs every process of the namespace once the init dies; the init's
        // exit then waits until each of their pids is freed, i.e. until we reap our children.
        let deadline = Instant::now() + self.timeout;
        let mut stuck = Vec::new();
        for c in rt.procs.drain(..) {
            let mut c = lock(&c);
            let pid = c.id();
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        stuck.push(pid);
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        }
        let init_pid = init.pid;
        let left = deadline.saturating_duration_since(Instant::now());
        if !init.reap(left.max(Duration::from_millis(100))) {
            stuck.push(init_pid as u32);
        }
        if stuck.is_empty() {
            Ok(())
        } else {
            Err(Error::Stuck {
                node: self.index,
                pids: stuck,
                timeout: self.timeout,
            })
        }
    }

    /// Start a fresh init (a new PID namespace) in the node's network namespace.
    pub(crate) fn start(&self) -> Result<(), Error> {
        let mut rt = lock(&self.rt);
        if rt.init.is_some() {
            return Ok(());
        }
        let init = sys::start_init(&self.net_ns, self.timeout).map_err(|source| Error::Io {
            what: format!("start the init of node {} (in {})", self.index, self.netns),
            source,
        })?;
        rt.init = Some(init);
        Ok(())
    }
}

/// A process running on a node, started by [`Node::spawn`].
///
/// Like [`std::process::Child`], with the standard streams that were piped available as fields.
/// Every wait is bounded. Dropping the handle does not kill the process; it keeps running
/// until it exits or its node is killed, and is reaped either way.
#[derive(Debug)]
pub struct Process {
    pid: u32,
    node: usize,
    child: Arc<Mutex<Child>>,
    /// The process's stdin, if `Stdio::piped()` was asked for.
    pub stdin: Option<ChildStdin>,
    /// The process's stdout, if `Stdio::piped()` was asked for.
    pub stdout: Option<ChildStdout>,
    /// The process's stderr, if `Stdio::piped()` was asked for.
    pub stderr: Option<ChildStderr>,
}

impl Process {
    /// The pid as seen from this process (not the one the process sees inside its node).
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// The index of the node it runs on.
    pub fn node(&self) -> usize {
        self.node
    }

    /// The exit status if it has exited (and reaps it), without waiting.
    pub fn try_wait(&self) -> Result<Option<ExitStatus>, Error> {
        lock(&self.child).try_wait().map_err(|source| Error::Io {
            what: format!("wait for pid {}", self.pid),
            source,
        })
    }

    /// Wait at most `timeout` for it to exit; `None` if it is still running.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGKILL it and reap it (waiting at most `timeout`); its own children are left to the
    /// node's init, which reaps them.
    pub fn kill(&self, timeout: Duration) -> Result<ExitStatus, Error> {
        {
            let mut c = lock(&self.child);
            if let Ok(Some(s)) = c.try_wait() {
                return Ok(s);
            }
            c.kill().map_err(|source| Error::Io {
                what: format!("kill pid {}", self.pid),
                source,
            })?;
        }
        self.wait_timeout(timeout)?.ok_or(Error::Stuck {
            node: self.node,
            pids: vec![self.pid],
            timeout,
        })
    }
}
