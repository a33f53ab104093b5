//! Reaping every child of the process, so that no zombie lingers.
//!
//! The agent is a *child subreaper*: processes that its components leave behind (a daemon that
//! double-forks, a shell's background job) are reparented to the agent, not to PID 1, which on
//! some hosts reaps only every second or two. Two kinds of children are reaped here:
//!
//! * **Tracked** children (components and CLC commands the agent spawned) are reaped by their
//!   own pidfd watcher ([`crate::pidfd`]), which needs their exit status. Their pids sit in a
//!   process-wide set from the moment they are spawned until the moment they are reaped.
//! * **Untracked** children (reparented orphans) are reaped by [`sweep`], run on every SIGCHLD
//!   and after every tracked reap. It peeks with `waitid(P_ALL, WNOWAIT)` and only reaps pids
//!   that are not tracked, so it never steals a status from a watcher.
//!
//! The set is process-wide, not per agent: several agents may share one process (`nines run`
//! with many nodes on one host, parallel tests), and each one's sweep must respect the others'
//! children. Spawning happens under the same lock as sweeping, so a child that fails to `exec`
//! (and is waited for by `std::process` itself) or exits at once is never reaped by a sweep
//! before its pid is tracked.
//!
//! Consequence for the rest of the process: a child spawned *outside* this module may be reaped
//! by a sweep before its owner waits for it. Code that shares a process with an agent spawns
//! children through the agent (see `AgentHandle` docs).

use std::collections::BTreeSet;
use std::io;
use std::os::fd::BorrowedFd;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, Once};

use rustix::process::{Pid, WaitId, WaitIdOptions, WaitIdStatus};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

/// Pids of children that a pidfd watcher will reap. Guarded together with spawning.
static TRACKED: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn tracked() -> MutexGuard<'static, BTreeSet<i32>> {
    // A panic while holding the lock cannot leave the set half-updated (single inserts and
    // removes), so a poisoned lock is still consistent.
    TRACKED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Make this process a child subreaper (once per process).
pub(crate) fn become_subreaper() -> io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .map_err(io::Error::from);
    });
    result?;
    match rustix::process::child_subreaper() {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(io::Error::other(
            "PR_SET_CHILD_SUBREAPER did not take effect",
        )),
        Err(e) => Err(e.into()),
    }
}

/// Spawn `cmd` and track its pid, atomically with respect to [`sweep`].
pub(crate) fn spawn_tracked(cmd: &mut Command) -> io::Result<Pid> {
    let mut set = tracked();
    let child = cmd.spawn()?;
    let raw = i32::try_from(child.id()).map_err(|_| io::Error::other("pid out of range"))?;
    let pid = Pid::from_raw(raw).ok_or_else(|| io::Error::other("spawn returned pid 0"))?;
    set.insert(raw);
    // Dropping a std `Child` neither kills nor waits; the pidfd watcher owns it from here.
    drop(child);
    Ok(pid)
}

/// Reap the tracked child behind `pidfd` if it has exited, and stop tracking it. Then sweep,
/// because this child may have been hiding orphans from an earlier sweep.
pub(crate) fn reap_tracked(pidfd: BorrowedFd<'_>, pid: Pid) -> io::Result<Option<WaitIdStatus>> {
    let status = {
        let mut set = tracked();
        let status = rustix::process::waitid(
            WaitId::PidFd(pidfd),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        );
        match &status {
            Ok(Some(_)) => {
                set.remove(&pid.as_raw_nonzero().get());
            }
            Err(rustix::io::Errno::CHILD) => {
                // Someone else reaped it (a foreign waitpid(-1)): it is gone either way.
                set.remove(&pid.as_raw_nonzero().get());
            }
            _ => {}
        }
        status.map_err(io::Error::from)
    };
    sweep();
    status
}

/// Stop tracking a pid that was reaped by other means (a child without a pidfd), then sweep.
pub(crate) fn untrack(pid: Pid) {
    tracked().remove(&pid.as_raw_nonzero().get());
    sweep();
}

/// Block until the tracked child behind `pidfd` has exited, reap it and stop tracking it. For
/// threads that clean up after a dropped watcher, never for async code.
pub(crate) fn reap_tracked_blocking(pidfd: BorrowedFd<'_>, pid: Pid) -> Option<WaitIdStatus> {
    // Wait without reaping first (not under the lock, which would stall every spawn).
    let waited = rustix::process::waitid(
        WaitId::PidFd(pidfd),
        WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
    );
    if let Err(e) = waited {
        if e != rustix::io::Errno::CHILD {
            tracing::error!(pid = pid.as_raw_nonzero().get(), error = %e, "cannot wait for child");
        }
    }
    reap_tracked(pidfd, pid).ok().flatten()
}

/// Reap every exited child that nobody tracks (orphans reparented to this subreaper).
pub(crate) fn sweep() {
    let set = tracked();
    while let Some(pid) = peek_exited() {
        if set.contains(&pid) {
            // Its watcher reaps it and sweeps again right after.
            break;
        }
        let Some(p) = Pid::from_raw(pid) else { break };
        match rustix::process::waitid(
            WaitId::Pid(p),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ) {
            Ok(_) => tracing::debug!(pid, "reaped an orphaned descendant"),
            Err(e) => {
                tracing::warn!(pid, error = %e, "cannot reap an orphaned descendant");
                break;
            }
        }
    }
}

/// The pid of some exited, not yet reaped child, leaving it waitable.
fn peek_exited() -> Option<i32> {
    // SAFETY: `waitid` writes a `siginfo_t` into the zeroed buffer we own; with WNOHANG and no
    // waitable child it leaves it zeroed, which `si_pid` then reads as 0. `si_pid` only reads
    // the union field that waitid fills for SIGCHLD info.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        if rc != 0 {
            return None; // ECHILD: no children at all
        }
        let pid = info.si_pid();
        (pid > 0).then_some(pid)
    }
}

/// The SIGCHLD stream a sweep loop listens to; created in `start` so that a failure to install
/// the handler is reported to the caller instead of being logged by a task.
pub(crate) fn sigchld() -> io::Result<Signal> {
    signal(SignalKind::child())
}

/// Sweep on every SIGCHLD until the agent stops.
pub(crate) async fn sweep_loop(mut sigchld: Signal, mut stop: watch::Receiver<bool>) {
    sweep();
    loop {
        tokio::select! {
            got = sigchld.recv() => {
                if got.is_none() {
                    return;
                }
                sweep();
            }
            _ = crate::agent::stopped(&mut stop) => return,
        }
    }
}
