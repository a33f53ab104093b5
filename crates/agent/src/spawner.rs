//! Component processes are started on a background thread, at background CPU priority.
//!
//! Starting a process is expensive, and most of it happens while a service is being recovered:
//! a failover's repair instantiates the failed component again at the very moment its
//! successor starts serving. `posix_spawn` suspends the calling thread until the child has
//! exec'd (vfork semantics), which on a virtualised host takes from a third of a millisecond
//! to a few milliseconds. Done on the engine's thread, that blocks every decision; done at
//! normal priority, the new process's start competes for the CPU with the service that just
//! took over. Measured on the 2-core development host (`nines bench sa-kill`), the repair
//! doubled the outage seen by clients (p50 3.4 ms against 1.75 ms with the repair deferred).
//!
//! So instantiation hands the spawn to one dedicated thread whose nice value is
//! [`BACKGROUND_NICE`]: the exec'ing child and the new process inherit it, and only use CPU
//! that the running services leave idle. Once the component is instantiated (an SA-aware one
//! registered, a process component spawned), [`restore`] gives its whole process group the
//! agent's own priority back, so a started component never runs at a lower priority than
//! the agent intended.
//!
//! VM components are the exception: booting a guest *is* the repair (seconds of CPU-bound
//! emulation under TCG, during which the service is down), and at nice 19 it would take
//! even longer on a busy host. They are spawned by [`run_foreground`], on a second thread that
//! runs at the agent's own priority, so QEMU starts and stays there.
//!
//! Lowering a nice value again needs privilege (`CAP_SYS_NICE`, or `RLIMIT_NICE`). An agent
//! without it cannot restore, so it does not lower either: [`background_allowed`] finds out
//! once, on a throwaway thread, and without it components start at normal priority.

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;

use rustix::process::Pid;

/// The nice value new component processes start with (the lowest priority).
pub(crate) const BACKGROUND_NICE: i32 = 19;

/// A spawn to run on the spawner thread.
type Job = Box<dyn FnOnce() + Send>;

struct Spawner {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl Spawner {
    /// A thread named `name` that runs jobs in order at nice value `nice` (`None`: inherited).
    fn start(name: &str, nice: Option<i32>) -> Spawner {
        let (tx, rx) = mpsc::channel::<Job>();
        let started = thread::Builder::new().name(name.into()).spawn(move || {
            if let Some(nice) = nice {
                // Only this thread's nice value changes (who = 0 is the calling thread).
                let _ = rustix::process::setpriority_process(None, nice);
            }
            for job in rx {
                job();
            }
        });
        if let Err(e) = started {
            tracing::error!(thread = name, error = %e, "cannot start a spawner thread; spawning inline");
        }
        Spawner {
            jobs: Mutex::new(tx),
        }
    }

    /// Queues `job`; runs it on the caller's thread if the spawner thread is gone (it could
    /// not be started), so a spawn is never lost.
    fn run(&self, job: Job) {
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job);
        if let Err(mpsc::SendError(job)) = sent {
            job();
        }
    }
}

/// The spawner of process and SA-aware components, at [`BACKGROUND_NICE`] when allowed.
fn background() -> &'static Spawner {
    static SPAWNER: OnceLock<Spawner> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let nice = background_allowed().then_some(BACKGROUND_NICE);
        Spawner::start("nines-spawner", nice)
    })
}

/// The spawner of VM components, at the agent's own priority. Set explicitly rather than
/// inherited: the thread may be created from the background spawner (a deferred instantiate
/// replayed there), whose nice value a new thread would inherit.
fn foreground() -> &'static Spawner {
    static SPAWNER: OnceLock<Spawner> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let nice = background_allowed().then(normal_nice);
        Spawner::start("nines-vm-spawner", nice)
    })
}

/// Runs `job` (which spawns a process and records it) on the background spawner thread, after
/// the jobs queued before it. Jobs run one at a time, in order. If the thread is gone (it could
/// not be started), the job runs on the caller's thread, so a spawn is never lost.
pub(crate) fn run(job: impl FnOnce() + Send + 'static) {
    background().run(Box::new(job));
}

/// Like [`run`], on the foreground spawner: the spawned process keeps the agent's priority.
pub(crate) fn run_foreground(job: impl FnOnce() + Send + 'static) {
    foreground().run(Box::new(job));
}

/// Whether this process may start components at background priority: it must be able to
/// give them their priority back. Found out once, on a throwaway thread whose nice value is
/// raised and then lowered again.
pub(crate) fn background_allowed() -> bool {
    static ALLOWED: OnceLock<bool> = OnceLock::new();
    *ALLOWED.get_or_init(|| {
        let normal = normal_nice();
        if normal >= BACKGROUND_NICE {
            return false;
        }
        thread::Builder::new()
            .name("nines-nice-check".into())
            .spawn(move || {
                rustix::process::setpriority_process(None, BACKGROUND_NICE).is_ok()
                    && rustix::process::setpriority_process(None, normal).is_ok()
            })
            .ok()
            .and_then(|t| t.join().ok())
            .unwrap_or(false)
    })
}

/// The agent's own nice value, which components get once instantiated.
fn normal_nice() -> i32 {
    static NORMAL: OnceLock<i32> = OnceLock::new();
    *NORMAL.get_or_init(|| rustix::process::getpriority_process(None).unwrap_or(0))
}

/// Gives every thread of every process in the group led by `leader` the agent's priority
/// back (`setpriority(PRIO_PGRP)` covers all of them). Best effort: a group that is already
/// gone has nothing left to restore.
pub(crate) fn restore(leader: Pid) {
    if !background_allowed() {
        return;
    }
    if let Err(e) = rustix::process::setpriority_pgrp(Some(leader), normal_nice()) {
        tracing::debug!(pgid = leader.as_raw_nonzero().get(), error = %e, "cannot restore priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_in_order_on_the_spawner_thread() {
        let (tx, rx) = mpsc::channel();
        for i in 0..5 {
            let tx = tx.clone();
            run(move || {
                let name = thread::current().name().map(str::to_owned);
                let _ = tx.send((i, name));
            });
        }
        let got: Vec<_> = (0..5)
            .map(|_| rx.recv_timeout(std::time::Duration::from_secs(10)))
            .collect::<Result<_, _>>()
            .expect("every job runs");
        let order: Vec<i32> = got.iter().map(|(i, _)| *i).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
        assert!(got
            .iter()
            .all(|(_, n)| n.as_deref() == Some("nines-spawner")));
    }

    #[test]
    fn the_foreground_spawner_runs_at_the_agents_priority() {
        let (tx, rx) = mpsc::channel();
        // Started from the background thread, whose nice value it must not inherit.
        run(move || {
            run_foreground(move || {
                let name = thread::current().name().map(str::to_owned);
                let _ = tx.send((name, rustix::process::getpriority_process(None).ok()));
            });
        });
        let (name, nice) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the job runs");
        assert_eq!(name.as_deref(), Some("nines-vm-spawner"));
        assert_eq!(nice, Some(normal_nice()));
    }

    #[test]
    fn the_spawner_thread_runs_at_background_priority_when_it_can_restore() {
        let (tx, rx) = mpsc::channel();
        run(move || {
            let _ = tx.send(rustix::process::getpriority_process(None).ok());
        });
        let nice = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the job runs");
        if background_allowed() {
            assert_eq!(nice, Some(BACKGROUND_NICE));
        } else {
            assert_eq!(nice, Some(normal_nice()));
        }
    }
}
