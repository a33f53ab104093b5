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
//! children. A sweep never reaps while a spawn is in flight: a child that fails to `exec` (and
//! is waited for by `std::process` itself) or exits at once must not be reaped before its pid
//! is tracked. Such a sweep is deferred to the end of the spawn, rather than the spawn holding
//! the lock: `posix_spawn` blocks its caller until the child has exec'd, milliseconds for a
//! child started in the background lane, and a sweep (the agent's async worker runs one on
//! every SIGCHLD) waiting for the lock that long was a priority inversion. Traced on the
//! development VM: the worker blocked on the lock 1.6 ms while the idle-priority spawner
//! holding it could not run, and a failover's first request waited with it.
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

/// The children the process's pidfd watchers will reap, and the spawns in flight.
struct Tracking {
    /// Pids of children that a pidfd watcher will reap.
    pids: BTreeSet<i32>,
    /// Spawns started and not yet tracked: while any is, sweeps do not reap.
    spawning: usize,
    /// A sweep was skipped because of a spawn in flight: the last spawn to end runs it.
    sweep_deferred: bool,
}

static TRACKED: Mutex<Tracking> = Mutex::new(Tracking {
    pids: BTreeSet::new(),
    spawning: 0,
    sweep_deferred: false,
});

fn tracked() -> MutexGuard<'static, Tracking> {
    // A panic while holding the lock cannot leave the state half-updated (single inserts,
    // removes and counter steps), so a poisoned lock is still consistent.
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

/// Spawn `cmd` and track its pid; no sweep reaps it first (see the module doc).
pub(crate) fn spawn_tracked(cmd: &mut Command) -> io::Result<Pid> {
    tracked().spawning += 1;
    let spawned = crate::spawner::spawning_child(|| cmd.spawn());
    let (tracked_pid, sweep_now) = {
        let mut t = tracked();
        t.spawning -= 1;
        let pid = spawned.as_ref().ok().and_then(|child| {
            let raw = i32::try_from(child.id()).ok()?;
            t.pids.insert(raw);
            Pid::from_raw(raw)
        });
        let sweep_now = t.spawning == 0 && std::mem::take(&mut t.sweep_deferred);
        (pid, sweep_now)
    };
    if sweep_now {
        sweep();
    }
    // Dropping a std `Child` neither kills nor waits; the pidfd watcher owns it from here.
    let child = spawned?;
    tracked_pid.ok_or_else(|| io::Error::other(format!("spawn returned pid {}", child.id())))
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
                set.pids.remove(&pid.as_raw_nonzero().get());
            }
            Err(rustix::io::Errno::CHILD) => {
                // Someone else reaped it (a foreign waitpid(-1)): it is gone either way.
                set.pids.remove(&pid.as_raw_nonzero().get());
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
    tracked().pids.remove(&pid.as_raw_nonzero().get());
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

/// Reap every exited child that nobody tracks (orphans reparented to this subreaper). While a
/// spawn is in flight this only asks the spawn to sweep when it ends.
pub(crate) fn sweep() {
    let mut set = tracked();
    if set.spawning > 0 {
        set.sweep_deferred = true;
        return;
    }
    while let Some(pid) = peek_exited() {
        if set.pids.contains(&pid) {
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

/// Serializes this crate's unit tests that start or reap children: the tracking state is
/// process-wide, and one test's tracked zombie stops another's sweep.
#[cfg(test)]
pub(crate) static CHILD_TESTS: Mutex<()> = Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};

    fn alive(pid: u32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    fn zombie(pid: u32) -> bool {
        crate::procfs::stat_field::<char>(pid, 3) == Some('Z')
    }

    #[test]
    fn a_sweep_does_not_wait_for_a_spawn_in_flight_and_runs_when_it_ends() {
        let _alone = CHILD_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        // A child that exits at once and that nobody tracks: a zombie for a sweep to reap.
        let orphan = Command::new("true").spawn().expect("spawn true");
        let orphan_pid = orphan.id();
        drop(orphan); // neither waits nor kills
        let deadline = Instant::now() + Duration::from_secs(10);
        while !zombie(orphan_pid) {
            assert!(Instant::now() < deadline, "{orphan_pid} never exited");
            std::thread::sleep(Duration::from_millis(1));
        }
        // A spawn held in flight by its child, which waits in pre_exec until the test says.
        let (release_r, release_w) = rustix::pipe::pipe().expect("pipe");
        let (mut release_r, mut release_w) = (
            std::fs::File::from(release_r),
            std::fs::File::from(release_w),
        );
        let spawn = std::thread::spawn(move || {
            // Alive until the end: an exited tracked child would stop the sweep, which leaves
            // it to its watcher (this test has none).
            let mut cmd = Command::new("sleep");
            cmd.arg("30");
            // SAFETY: the closure only reads from a pipe, which is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    let mut byte = [0u8];
                    release_r.read_exact(&mut byte)
                });
            }
            spawn_tracked(&mut cmd)
        });
        while tracked().spawning == 0 {
            assert!(Instant::now() < deadline, "the spawn never started");
            std::thread::sleep(Duration::from_millis(1));
        }
        // The sweep returns while the spawn is still blocked (it used to wait for its lock).
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            sweep();
            let _ = done_tx.send(());
        });
        assert!(
            done_rx.recv_timeout(Duration::from_secs(10)).is_ok(),
            "sweep waited for the spawn"
        );
        assert!(!spawn.is_finished(), "the spawn was released too early");
        // Released, the spawn ends, tracks its child, and runs the sweep it deferred. (Should
        // an assertion above fail, unwinding closes the pipe and the spawn fails instead.)
        release_w.write_all(b"x").expect("release");
        let pid = spawn.join().expect("spawn thread").expect("spawned");
        let raw = pid.as_raw_nonzero().get();
        while alive(orphan_pid) {
            assert!(
                Instant::now() < deadline,
                "the deferred sweep never reaped {orphan_pid}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // The tracked child is left to its (here absent) watcher: end and reap it by hand.
        let fd =
            rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).expect("pidfd");
        assert!(tracked().pids.contains(&raw));
        rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL).expect("kill");
        let _ = reap_tracked_blocking(fd.as_fd(), pid);
        assert!(!tracked().pids.contains(&raw));
    }
}
