//! A spawned process group watched through a pidfd: exit detection without polling.
//!
//! Every process the agent starts (a component, or a CLC command) is the leader of its own
//! process group and is represented by a [`Proc`]. A watcher task waits for the leader's pidfd
//! to become readable (the kernel's signal that it exited), stamps that moment, SIGKILLs what is
//! left of its group and publishes the death ([`Proc::died`]); then, after letting whoever
//! waits for the death run, it reaps the leader and publishes the [`Exit`] with its status.
//! A failure report needs only the death; reaping (the kernel freeing the zombie) is tens of
//! microseconds a failover does not wait for.
//!
//! Signals go to the whole group, and only while the leader is not yet reaped: an unreaped
//! leader pins its pid, so the group id cannot have been recycled for an unrelated process.
//! That is also why leftovers are killed *before* the leader is reaped: a component is its
//! process group, and no stray member outlives it.
//!
//! If the watcher is dropped before the exit (its runtime shut down), the group is SIGKILLed and
//! a thread reaps the leader, so no zombie and no unsupervised component remains.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nines_engine::Instant;
use rustix::process::{Pid, PidfdFlags, Signal, WaitIdStatus};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{watch, Notify};

use crate::clock::Clock;
use crate::reaper;

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// The status could not be read (someone else reaped it).
    Unknown,
}

impl ExitStatus {
    fn from_wait(status: Option<&WaitIdStatus>) -> ExitStatus {
        match status {
            Some(s) if s.exited() => ExitStatus::Code(s.exit_status().unwrap_or(-1)),
            Some(s) if s.killed() || s.dumped() => {
                ExitStatus::Signal(s.terminating_signal().unwrap_or(0))
            }
            _ => ExitStatus::Unknown,
        }
    }

    /// Exit code 0.
    pub(crate) fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by signal {s}"),
            ExitStatus::Unknown => write!(f, "unknown exit status"),
        }
    }
}

/// The end of a process: when its pidfd became readable, and how it ended.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Exit {
    /// When the exit was seen.
    pub at: Instant,
    /// How it ended.
    pub status: ExitStatus,
}

/// Counts an agent's live processes, so that shutdown can wait until all are reaped.
#[derive(Default, Debug)]
pub(crate) struct Live {
    count: AtomicUsize,
    zero: Notify,
}

impl Live {
    fn enter(self: &Arc<Self>) -> LiveGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        LiveGuard(self.clone())
    }

    /// Wait until no process of this agent is left unreaped.
    pub(crate) async fn all_reaped(&self) {
        loop {
            let notified = self.zero.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Debug)]
struct LiveGuard(Arc<Live>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.zero.notify_waiters();
        }
    }
}

/// A spawned process group, led by a process the agent tracks.
#[derive(Debug)]
pub(crate) struct Proc {
    pid: Pid,
    /// Whether the leader has been reaped; held while signalling so a reap cannot interleave.
    reaped: Mutex<bool>,
    /// When the leader was seen dead (its pidfd readable), published before it is reaped.
    died: watch::Receiver<Option<Instant>>,
    exit: watch::Receiver<Option<Exit>>,
    /// For a process that does not lead its own group ([`Proc::watch_foreign`]): a pidfd to
    /// signal it, and it alone, through. Then no group is ever signalled.
    only: Option<OwnedFd>,
}

impl Proc {
    /// Spawn `cmd` (which must put the child in its own process group) and start watching it.
    /// Must run inside a tokio runtime.
    pub(crate) fn spawn(
        cmd: &mut Command,
        clock: Clock,
        live: &Arc<Live>,
    ) -> io::Result<Arc<Proc>> {
        let pid = reaper::spawn_tracked(cmd)?;
        let (tx, rx) = watch::channel(None);
        let (died_tx, died) = watch::channel(None);
        let proc = Arc::new(Proc {
            pid,
            reaped: Mutex::new(false),
            died,
            exit: rx,
            only: None,
        });
        let guard = WatchGuard {
            proc: proc.clone(),
            fd: None,
            died: Some(died_tx),
            tx: Some(tx),
            live: Some(live.enter()),
            adopted: false,
        };
        let fd = match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(e) => {
                // The guard kills and reaps the child without a pidfd.
                drop(guard);
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("pidfd_open failed (Linux 5.3 or later is needed): {e}"),
                ));
            }
        };
        // SAFETY: the `OwnedFd` moves into the `AsyncFd`, which owns it from here on: it stays
        // open and is the same descriptor until the `AsyncFd` is dropped or `into_inner`ed.
        let afd = match unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) } {
            Ok(afd) => afd,
            Err(e) => {
                drop(guard);
                return Err(e.into());
            }
        };
        let mut guard = guard;
        guard.fd = Some(afd);
        tokio::spawn(watch_exit(guard, clock));
        Ok(proc)
    }

    /// The leader's pid, which is also the process group id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid.as_raw_nonzero().get().unsigned_abs()
    }

    /// Watch a process group this agent did not start: the leader of a component that a
    /// previous agent started and that outlived it (it was reparented, so it is not our child
    /// and cannot be reaped here; whoever it was reparented to reaps it). `expected_start` is
    /// the leader's start time as recorded at spawn: checked after the pidfd is open, since
    /// the pidfd pins the process, so a recycled pid is never adopted.
    pub(crate) fn adopt(
        pid: Pid,
        expected_start: u64,
        clock: Clock,
        live: &Arc<Live>,
    ) -> io::Result<Arc<Proc>> {
        let fd = open_checked(pid, expected_start)?;
        let raw = pid.as_raw_nonzero().get().unsigned_abs();
        let group = rustix::process::getpgid(Some(pid))?;
        if group != pid {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("pid {raw} no longer leads its own process group"),
            ));
        }
        Self::watch_unowned(pid, fd, None, clock, live)
    }

    /// Starts watching a process that is not our child through its pidfd `fd`; `only`: see
    /// [`Proc::watch_foreign`].
    fn watch_unowned(
        pid: Pid,
        fd: OwnedFd,
        only: Option<OwnedFd>,
        clock: Clock,
        live: &Arc<Live>,
    ) -> io::Result<Arc<Proc>> {
        let (tx, rx) = watch::channel(None);
        let (died_tx, died) = watch::channel(None);
        let proc = Arc::new(Proc {
            pid,
            reaped: Mutex::new(false),
            died,
            exit: rx,
            only,
        });
        // SAFETY: as in `spawn`: the `AsyncFd` owns the descriptor from here on.
        let afd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        let guard = WatchGuard {
            proc: proc.clone(),
            fd: Some(afd),
            died: Some(died_tx),
            tx: Some(tx),
            live: Some(live.enter()),
            adopted: true,
        };
        tokio::spawn(watch_exit(guard, clock));
        Ok(proc)
    }

    /// Watch a process neither this agent nor its process group owns: the QEMU a libvirt
    /// daemon runs for a VM component (libvirt starts it in a session of its own, led by an
    /// intermediate that is gone). Like [`Proc::adopt`] (`expected_start` is checked once the
    /// pidfd pins the process), but without the group check, and every signal goes to this
    /// one process through a pidfd, so none can reach a reused pid or group.
    #[cfg(feature = "libvirt")]
    pub(crate) fn watch_foreign(
        pid: Pid,
        expected_start: u64,
        clock: Clock,
        live: &Arc<Live>,
    ) -> io::Result<Arc<Proc>> {
        let fd = open_checked(pid, expected_start)?;
        let only = fd.try_clone()?;
        Self::watch_unowned(pid, fd, Some(only), clock, live)
    }

    /// SIGKILL to the group, or to the process alone for a [`Proc::watch_foreign`] one.
    fn kill_all(&self) {
        let _ = match &self.only {
            Some(fd) => rustix::process::pidfd_send_signal(fd, Signal::KILL),
            None => rustix::process::kill_process_group(self.pid, Signal::KILL),
        };
    }

    /// The leader's pid, which is also the process group's id.
    pub(crate) fn leader(&self) -> Pid {
        self.pid
    }

    /// Send `sig` to the whole group. Returns `false` (and sends nothing) once the leader is
    /// reaped: the group is then gone (its leftovers were killed) and its id may be reused.
    pub(crate) fn signal_group(&self, sig: Signal) -> bool {
        let reaped = self.reaped.lock().unwrap_or_else(|e| e.into_inner());
        if *reaped {
            return false;
        }
        let sent = match &self.only {
            Some(fd) => rustix::process::pidfd_send_signal(fd, sig),
            None => rustix::process::kill_process_group(self.pid, sig),
        };
        match sent {
            Ok(()) => true,
            Err(rustix::io::Errno::SRCH) => false,
            Err(e) => {
                tracing::warn!(pid = self.pid(), error = %e, "cannot signal process group");
                false
            }
        }
    }

    /// Wait until the leader is seen dead: its pidfd is readable and what was left of its
    /// group has been sent SIGKILL, but it may not be reaped yet (see [`watch_exit`]). The
    /// instant it was seen. What must wait for the process to be gone for good (a cleanup, a
    /// stop) waits for [`exited`](Self::exited) instead.
    pub(crate) async fn died(&self) -> Instant {
        let mut rx = self.died.clone();
        match rx.wait_for(|d| d.is_some()).await.map(|d| *d) {
            Ok(Some(at)) => at,
            // The watcher went without seeing it die (its runtime shut down): its drop kills
            // and reaps, and publishes the exit.
            _ => self.exited().await.at,
        }
    }

    /// The exit, if it has happened (and the leader is reaped).
    pub(crate) fn exit_now(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Wait for the exit (the leader reaped).
    pub(crate) async fn exited(&self) -> Exit {
        let mut rx = self.exit.clone();
        let seen = rx.wait_for(|e| e.is_some()).await.map(|e| *e);
        match seen {
            Ok(e) => e.unwrap_or(Exit {
                at: Instant::ZERO,
                status: ExitStatus::Unknown,
            }),
            // The watcher vanished without publishing: only when the process is torn down.
            Err(_) => std::future::pending().await,
        }
    }
}

/// A pidfd on `pid`, once it pins the process: refused if the pid is no longer the process
/// that started at `expected_start` (it was reused).
fn open_checked(pid: Pid, expected_start: u64) -> io::Result<OwnedFd> {
    let fd = rustix::process::pidfd_open(pid, PidfdFlags::empty())?;
    let raw = pid.as_raw_nonzero().get().unsigned_abs();
    if start_time(raw) != Some(expected_start) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("pid {raw} is another process now"),
        ));
    }
    Ok(fd)
}

/// Owns the pidfd and the exit publisher; reaps on drop if the watcher never saw the exit.
struct WatchGuard {
    proc: Arc<Proc>,
    fd: Option<AsyncFd<OwnedFd>>,
    /// Taken when the death is published.
    died: Option<watch::Sender<Option<Instant>>>,
    tx: Option<watch::Sender<Option<Exit>>>,
    live: Option<LiveGuard>,
    /// Not our child, normally (see [`Proc::adopt`]): its exit is final once the pidfd is
    /// readable, and `ECHILD` on reaping is expected.
    adopted: bool,
}

impl WatchGuard {
    /// Whether this process leads a group of ours, whose members
    /// [`publish_death`](Self::publish_death) kills and the watcher then waits for ([`reap_leftovers`]): not a foreign process (`only`),
    /// not one adopted from an earlier agent (its orphans are not ours to wait for).
    fn leads_group(&self) -> bool {
        self.proc.only.is_none() && !self.adopted
    }

    /// The leader is dead (its pidfd is readable): kill what is left of its group, then say
    /// so. Once per process (`false`, and nothing done, after the first time); the leader, a
    /// zombie until reaped, pins the group id, so the group signalled is still its own.
    fn publish_death(&mut self, at: Instant) -> bool {
        let Some(died) = self.died.take() else {
            return false;
        };
        if self.proc.only.is_none() {
            self.proc.signal_group(Signal::KILL);
        }
        let _ = died.send(Some(at));
        true
    }

    /// Reap the leader and publish the exit, after [`publish_death`](Self::publish_death)
    /// killed what was left of its group. `None` if the leader turned out not to be waitable
    /// yet.
    fn reap(&mut self, at: Instant) -> Option<Exit> {
        let fd = self.fd.as_ref()?;
        let mut reaped = self.proc.reaped.lock().unwrap_or_else(|e| e.into_inner());
        // An adopted process is normally someone else's child (ECHILD: nothing to reap); if
        // it happens to be ours (this process spawned it before it had an agent), reap it.
        let status = match reaper::reap_tracked(fd.get_ref().as_fd(), self.proc.pid) {
            Ok(Some(status)) => ExitStatus::from_wait(Some(&status)),
            Ok(None) => return None,
            Err(e) => {
                if !self.adopted {
                    tracing::warn!(pid = self.proc.pid(), error = %e, "cannot reap process");
                }
                ExitStatus::Unknown
            }
        };
        *reaped = true;
        drop(reaped);
        let exit = Exit { at, status };
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Some(exit));
        }
        // A group we lead may still hold members that `publish_death` SIGKILLed but that have
        // not died yet: the watcher keeps this process counted as live until they are gone and reaped
        // (see [`reap_leftovers`]), so that shutdown does not return with zombies pending.
        if !self.leads_group() {
            self.live = None;
        }
        Some(exit)
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        if self.tx.is_none() {
            return; // reaped and published
        }
        {
            let reaped = self.proc.reaped.lock().unwrap_or_else(|e| e.into_inner());
            if !*reaped {
                self.proc.kill_all();
            }
        }
        let fd = self.fd.take().map(AsyncFd::into_inner);
        let proc = self.proc.clone();
        let tx = self.tx.take();
        let live = self.live.take();
        let reap = move || {
            let status = match &fd {
                Some(fd) => reaper::reap_tracked_blocking(fd.as_fd(), proc.pid),
                None => reap_without_pidfd(proc.pid),
            };
            *proc.reaped.lock().unwrap_or_else(|e| e.into_inner()) = true;
            if let Some(tx) = tx {
                let _ = tx.send(Some(Exit {
                    at: Instant::ZERO,
                    status: ExitStatus::from_wait(status.as_ref()),
                }));
            }
            drop(live);
        };
        if std::thread::Builder::new()
            .name("nines-reap".into())
            .spawn(reap)
            .is_err()
        {
            tracing::error!(
                pid = self.proc.pid(),
                "cannot start a thread to reap a killed child"
            );
        }
    }
}

/// Reap a tracked child for which no pidfd could be opened (it was just SIGKILLed).
fn reap_without_pidfd(pid: Pid) -> Option<WaitIdStatus> {
    // Without a pidfd, waitid(P_PID) is safe here: the pid is tracked, so nobody else reaps it
    // and it cannot have been reused.
    let status = rustix::process::waitid(
        rustix::process::WaitId::Pid(pid),
        rustix::process::WaitIdOptions::EXITED,
    )
    .ok()
    .flatten();
    reaper::untrack(pid);
    status
}

/// Wait for the pidfd to become readable, then publish the death, reap, and publish the exit.
async fn watch_exit(mut guard: WatchGuard, clock: Clock) {
    loop {
        let Some(fd) = guard.fd.as_ref() else { return };
        let mut ready = match fd.readable().await {
            Ok(ready) => ready,
            Err(e) => {
                tracing::error!(pid = guard.proc.pid(), error = %e, "cannot watch pidfd");
                return; // the guard's drop kills and reaps
            }
        };
        let at = clock.now();
        ready.clear_ready();
        drop(ready);
        // Whoever waits for the death (the component's failure report, and through it the
        // engine's failover) goes first: reaping frees the zombie in the kernel, tens of
        // microseconds that the failover need not wait for.
        if guard.publish_death(at) {
            tokio::task::yield_now().await;
        }
        if guard.reap(at).is_some() {
            if guard.leads_group() {
                reap_leftovers(guard.proc.leader()).await;
            }
            return;
        }
    }
}

/// How long [`reap_leftovers`] waits for a killed group's members to die before it gives up.
const LEFTOVER_WAIT: Duration = Duration::from_secs(5);

/// How often [`reap_leftovers`] looks again.
const LEFTOVER_POLL: Duration = Duration::from_millis(2);

/// Wait until the members of a killed process group have died and been reaped.
///
/// The leader is reaped as soon as it exits, but a member SIGKILLed a moment before may still
/// be running on a loaded host; its SIGCHLD may then come after the agent stopped sweeping,
/// leaving a zombie. The members are orphans of this subreaper, so sweeping reaps them; the
/// group id cannot be reused while a member (even a zombie) still carries it, so probing it
/// with signal 0 is safe. Bounded: a member that moved into another group is not ours to wait
/// for, and a member stuck in the kernel must not hold the agent's shutdown forever.
async fn reap_leftovers(group: Pid) {
    let deadline = tokio::time::Instant::now() + LEFTOVER_WAIT;
    loop {
        reaper::sweep();
        match rustix::process::test_kill_process_group(group) {
            Err(rustix::io::Errno::SRCH) => return,
            Err(e) => {
                tracing::warn!(pgid = group.as_raw_nonzero().get(), error = %e, "cannot probe a killed process group");
                return;
            }
            Ok(()) => {}
        }
        if tokio::time::Instant::now() > deadline {
            tracing::warn!(
                pgid = group.as_raw_nonzero().get(),
                "members of a killed process group are still alive after {LEFTOVER_WAIT:?}"
            );
            return;
        }
        tokio::time::sleep(LEFTOVER_POLL).await;
    }
}

/// A process's start time (clock ticks since boot, field 22 of `/proc/PID/stat`), or `None`
/// if it does not exist. With the pid it names one process for good: pids are reused, start
/// times of one pid are not.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    crate::procfs::stat_field(pid, 22)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(pid: u32) -> Option<char> {
        crate::procfs::stat_field(pid, 3)
    }

    #[test]
    fn the_death_is_published_before_the_leader_is_reaped() {
        let _alone = reaper::CHILD_TESTS
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            reaper::become_subreaper().expect("subreaper");
            let live = Arc::new(Live::default());
            let mut cmd = Command::new("sleep");
            std::os::unix::process::CommandExt::process_group(cmd.arg("30"), 0);
            let proc = Proc::spawn(&mut cmd, Clock::new(), &live).expect("spawn");
            let pid = proc.pid();
            assert!(proc.signal_group(Signal::KILL));
            let died = tokio::time::timeout(Duration::from_secs(10), proc.died())
                .await
                .expect("seen dead");
            // On this one-thread runtime the watcher has yielded to us: the leader is a
            // zombie, not yet reaped, and no exit is published.
            assert_eq!(proc.exit_now().map(|e| e.status), None);
            assert_eq!(state(pid), Some('Z'));
            let exit = tokio::time::timeout(Duration::from_secs(10), proc.exited())
                .await
                .expect("reaped");
            assert_eq!(exit.status, ExitStatus::Signal(9));
            assert_eq!(exit.at, died);
            assert_eq!(state(pid), None, "reaped: the pid is gone");
            tokio::time::timeout(Duration::from_secs(10), live.all_reaped())
                .await
                .expect("nothing left");
        });
    }
}
