//! Component processes are started off the agent's async worker, on spawner threads; a
//! repair's process starts at background CPU priority.
//!
//! Starting a process is expensive, and most of it happens while a service is being recovered:
//! a failover's repair instantiates the failed component again at the very moment its
//! successor starts serving. `posix_spawn` suspends the calling thread until the child has
//! exec'd (vfork semantics), which on a virtualised host takes from a third of a millisecond
//! to a few milliseconds. Done on the engine's thread, that blocks every decision; done at
//! normal priority, the new process's start competes for the CPU with the service that just
//! took over.
//!
//! So a repair's instantiation (the engine's `Instantiate { urgent: false }`: every SI of the
//! component's SG is served, the start only restores redundancy) starts the process in the
//! `SCHED_IDLE` policy (and at nice [`BACKGROUND_NICE`]): every normal thread that wakes up
//! preempts the exec'ing child and the new process at once, and against normal threads they
//! weigh 3 (a nice-0 thread weighs 1024), so they take about a third of a percent of a busy
//! CPU. A nice value alone is not enough: under EEVDF (Linux 6.6 and later) a nice-19 task
//! that got the CPU keeps it for its whole slice, 1.5 ms on two CPUs, whatever wakes up
//! meanwhile. Measured on the 2-core development host (`nines bench sa-kill --runs 200`,
//! when this was introduced): with nice 19 alone the new active's first connection waited
//! behind the repair's exec in a third of the faults (outage p90 3.1 ms); in `SCHED_IDLE` the
//! p90 went down to 1.7 ms. A repair that has not registered after
//! [`BACKGROUND_START_LIMIT`] gets the agent's priority anyway. Once the component is
//! instantiated (an SA-aware one registered, a process component spawned), [`restore`] gives
//! the leader's threads the normal policy and every process of the group the agent's nice
//! value back, and [`restore_members`] (housekeeping) the other processes' threads their
//! policy; a process that left the group keeps what it inherited.
//!
//! Only the child is in the background, not the thread that starts it: the spawner thread
//! switches to `SCHED_IDLE` for the one call that clones the child ([`spawning_child`]), and
//! back before anything else. Everything around that call (tracking the child, registering
//! its pidfd with the runtime, recording it) takes locks the agent's async worker takes too;
//! a thread in `SCHED_IDLE` holding one of them may wait for a CPU for as long as normal
//! threads keep it busy, and the worker with it. Housekeeping that takes no such lock (the
//! /proc scan for a registered component's other processes) runs in the background
//! throughout, on a thread of its own ([`run_housekeeping`]).
//!
//! A start that work waits for (start-up, a restart in place, a repair with nobody else to
//! take the work) goes to a second thread whose children start at the agent's own priority,
//! [`run_foreground`]: in the background, under load, it would be the outage that waits (a
//! restart in place took up to 450 ms there while a build ran on the host). Repairs have a
//! thread of their own so that an urgent start never queues behind one: `posix_spawn` blocks
//! its caller until the child has exec'd, and a background child execs when the CPU is free.
//!
//! VM components always go to the foreground thread: booting a guest is seconds of CPU-bound
//! emulation under TCG, and in the background it would take even longer on a busy host (the
//! VM repair time is a target of its own), so QEMU starts and stays at the agent's priority.
//!
//! Going back to a normal priority needs the right to (`CAP_SYS_NICE`, or an `RLIMIT_NICE`
//! that allows it). An agent without it cannot restore, so it does not lower either:
//! [`background_allowed`] finds out once, on a throwaway thread, and without it components
//! start at normal priority.
//!
//! The spawner threads themselves run at the agent's priority, so a thread a job starts (a
//! blocking task tokio starts on demand, say) does too; only a housekeeping job's would be in
//! the background.

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;

use rustix::process::Pid;

use crate::cpu_policy::{self, Policy};

/// The nice value new component processes start with (the lowest priority).
pub(crate) const BACKGROUND_NICE: i32 = 19;

/// A spawn to run on the spawner thread.
type Job = Box<dyn FnOnce() + Send>;

thread_local! {
    /// Set on the background spawner thread: the processes it starts start in the background
    /// ([`spawning_child`]).
    static CHILDREN_IN_BACKGROUND: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Puts the calling thread in the background policy (`SCHED_IDLE`, nice [`BACKGROUND_NICE`])
/// or back at the agent's. Best effort: a thread left where it was only means what it starts
/// competes with the services (or is not helped by them).
fn set_background(background: bool) {
    if background {
        // Only this thread changes (who = 0, tid = 0: the calling thread).
        let _ = rustix::process::setpriority_process(None, BACKGROUND_NICE);
        let _ = cpu_policy::set(0, Policy::Idle);
    } else {
        let _ = cpu_policy::set(0, Policy::Normal);
        let _ = rustix::process::setpriority_process(None, normal_nice());
    }
}

/// Runs `spawn` (the one call that starts a child: `Command::spawn`). On the background
/// spawner thread the thread is in the background policy for exactly that call, so the child
/// inherits it, and back at the agent's priority before anything else: the thread is blocked
/// in the kernel for most of the call (vfork: until the child has exec'd), and the work
/// around it (tracking the child, registering its pidfd with the runtime, recording it) takes
/// locks the agent's runtime needs, which a thread in `SCHED_IDLE` could hold for as long as
/// it waits for a CPU: a priority inversion.
pub(crate) fn spawning_child<T>(spawn: impl FnOnce() -> T) -> T {
    if !starts_in_background() {
        return spawn();
    }
    set_background(true);
    let spawned = spawn();
    set_background(false);
    spawned
}

struct Spawner {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl Spawner {
    /// A thread named `name`, at the agent's own priority (set explicitly, whatever the
    /// thread that first queues a job runs at), that runs jobs in order. With `children_in_background`
    /// the processes its jobs start begin in the background (see [`spawning_child`]).
    fn start(name: &str, children_in_background: bool) -> Spawner {
        let (tx, rx) = mpsc::channel::<Job>();
        let started = thread::Builder::new().name(name.into()).spawn(move || {
            if background_allowed() {
                set_background(false);
                CHILDREN_IN_BACKGROUND.with(|c| c.set(children_in_background));
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

/// The spawner of repairs, whose processes start in the background.
fn background() -> &'static Spawner {
    static SPAWNER: OnceLock<Spawner> = OnceLock::new();
    SPAWNER.get_or_init(|| Spawner::start("nines-spawner", true))
}

/// The thread of housekeeping jobs, which run in the background throughout: a thread of its
/// own, so that a repair never waits behind one for a CPU nobody wants.
fn housekeeper() -> &'static Spawner {
    static SPAWNER: OnceLock<Spawner> = OnceLock::new();
    SPAWNER.get_or_init(|| Spawner::start("nines-housekeep", false))
}

/// The spawner of VM components and of urgent starts, whose processes start at the agent's
/// own priority.
fn foreground() -> &'static Spawner {
    static SPAWNER: OnceLock<Spawner> = OnceLock::new();
    SPAWNER.get_or_init(|| Spawner::start("nines-spawner-fg", false))
}

/// How long a repair's process may start in the background before it gets the agent's
/// priority anyway: a repair registers in a few milliseconds when the CPU has room, and this
/// bounds what the background can cost when it has none (a saturated host, where a start at
/// the `SCHED_IDLE` weight could outlast its instantiate timeout) or when the repair became
/// awaited meanwhile (a second fault took out whoever had the work).
pub(crate) const BACKGROUND_START_LIMIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Whether the calling thread starts its children in the background (the background spawner
/// thread, when the agent may change priorities).
pub(crate) fn starts_in_background() -> bool {
    CHILDREN_IN_BACKGROUND.with(std::cell::Cell::get)
}

/// Runs `job` (which spawns a process and records it) on the background spawner thread, after
/// the jobs queued before it: the process starts in the background. Jobs run one at a time, in
/// order. If the thread is gone (it could not be started), the job runs on the caller's
/// thread, so a spawn is never lost.
pub(crate) fn run_background(job: impl FnOnce() + Send + 'static) {
    background().run(Box::new(job));
}

/// Runs housekeeping (`job`) on the housekeeping thread, after the jobs queued before it, with
/// the thread in the background policy throughout, so that it gives way to every normal
/// thread. `job` must not take a lock the agent's runtime takes (file system and /proc work,
/// say), or it could hold it for as long as it waits for a CPU.
pub(crate) fn run_housekeeping(job: impl FnOnce() + Send + 'static) {
    housekeeper().run(Box::new(move || {
        let background = background_allowed();
        if background {
            set_background(true);
        }
        job();
        if background {
            set_background(false);
        }
    }));
}

/// Like [`run_background`], on the foreground spawner: the spawned process keeps the agent's
/// priority (VMs, and starts that work waits for).
pub(crate) fn run_foreground(job: impl FnOnce() + Send + 'static) {
    foreground().run(Box::new(job));
}

/// Whether this process may start components in the background: it must be able to give
/// them their policy and priority back. Found out once, on a throwaway thread that goes into
/// the background and comes back.
pub(crate) fn background_allowed() -> bool {
    static ALLOWED: OnceLock<bool> = OnceLock::new();
    *ALLOWED.get_or_init(|| {
        let normal = normal_nice();
        if normal >= BACKGROUND_NICE || cpu_policy::get(0).ok() != Some(Policy::Normal) {
            return false;
        }
        thread::Builder::new()
            .name("nines-nice-check".into())
            .spawn(move || {
                rustix::process::setpriority_process(None, BACKGROUND_NICE).is_ok()
                    && cpu_policy::set(0, Policy::Idle).is_ok()
                    && cpu_policy::set(0, Policy::Normal).is_ok()
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

/// Gives the threads of the group leader `leader` the normal policy and every process of its
/// group the agent's nice value back: a few system calls, so it is done inline at the moment
/// the component counts as started. Threads that chose another policy themselves
/// (real-time, say) keep it. Other processes the component started before this keep the
/// background policy until [`restore_members`] finds them. Best effort: a group that is
/// already gone has nothing left to restore.
pub(crate) fn restore(leader: Pid) {
    if !background_allowed() {
        return;
    }
    // One call covers the nice value of every thread in the group.
    if let Err(e) = rustix::process::setpriority_pgrp(Some(leader), normal_nice()) {
        tracing::debug!(pgid = leader.as_raw_nonzero().get(), error = %e, "cannot restore priority");
    }
    restore_threads(leader.as_raw_nonzero().get());
}

/// [`restore`] now and [`restore_members`] as housekeeping: what a component that counts as
/// started gets, whichever lane it started in.
pub(crate) fn restore_group(leader: Pid) {
    restore(leader);
    run_housekeeping(move || restore_members(leader));
}

/// Like [`restore`] for the other processes of the group: those a component started before
/// it registered inherited the background policy. Scans `/proc` (a read per process on the
/// host: 1.3 ms of CPU with 73 processes on the development VM), so it belongs in a
/// housekeeping job ([`run_housekeeping`]).
pub(crate) fn restore_members(leader: Pid) {
    if !background_allowed() {
        return;
    }
    let pgid = leader.as_raw_nonzero().get();
    for pid in cpu_policy::group_members(pgid) {
        if pid != pgid {
            restore_threads(pid);
        }
    }
}

/// Moves the threads of `pid` still in the background policy to the normal one. A second
/// pass catches threads that a not yet restored thread started during the first (they
/// inherited the background policy).
fn restore_threads(pid: i32) {
    for _ in 0..2 {
        let mut moved = false;
        for tid in cpu_policy::threads(pid) {
            if cpu_policy::get(tid).ok() == Some(Policy::Idle) {
                if let Err(e) = cpu_policy::set(tid, Policy::Normal) {
                    tracing::debug!(pid, tid, error = %e, "cannot restore the scheduling policy");
                }
                moved = true;
            }
        }
        if !moved {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn jobs_run_in_order_on_the_spawner_thread() {
        let (tx, rx) = mpsc::channel();
        for i in 0..5 {
            let tx = tx.clone();
            run_background(move || {
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
        // Created from another spawner's job: it sets its own priority, inheriting nothing.
        run_background(move || {
            run_foreground(move || {
                let name = thread::current().name().map(str::to_owned);
                let _ = tx.send((
                    name,
                    rustix::process::getpriority_process(None).ok(),
                    cpu_policy::get(0).ok(),
                ));
            });
        });
        let (name, nice, policy) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the job runs");
        assert_eq!(name.as_deref(), Some("nines-spawner-fg"));
        assert_eq!(nice, Some(normal_nice()));
        assert_eq!(policy, Some(Policy::Normal));
    }

    #[test]
    fn the_background_spawner_starts_children_in_the_background_and_itself_stays_normal() {
        let _alone = crate::reaper::CHILD_TESTS
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (tx, rx) = mpsc::channel();
        run_background(move || {
            let thread = (
                rustix::process::getpriority_process(None).ok(),
                cpu_policy::get(0).ok(),
            );
            let child = spawning_child(|| std::process::Command::new("sleep").arg("30").spawn());
            let after = cpu_policy::get(0).ok();
            let _ = tx.send((thread, after, child));
        });
        let ((nice, policy), after, child) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the job runs");
        let mut child = child.expect("sleep starts");
        let child_policy = cpu_policy::get(child.id() as i32).ok();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(nice, Some(normal_nice()));
        assert_eq!(policy, Some(Policy::Normal));
        assert_eq!(
            after,
            Some(Policy::Normal),
            "back once the child is started"
        );
        let expected = if background_allowed() {
            Policy::Idle
        } else {
            Policy::Normal
        };
        assert_eq!(child_policy, Some(expected));
    }

    #[test]
    fn housekeeping_runs_in_the_background_and_leaves_the_thread_normal() {
        let (tx, rx) = mpsc::channel();
        run_housekeeping(move || {
            let _ = tx.send(cpu_policy::get(0).ok());
        });
        let during = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the job runs");
        let (tx, rx) = mpsc::channel();
        run_background(move || {
            let _ = tx.send(cpu_policy::get(0).ok());
        });
        let after = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the job runs");
        if background_allowed() {
            assert_eq!(during, Some(Policy::Idle));
        }
        assert_eq!(after, Some(Policy::Normal));
    }

    /// The policy and nice value of every thread of `pid`.
    fn thread_priorities(pid: i32) -> Vec<(Option<Policy>, Option<i32>)> {
        cpu_policy::threads(pid)
            .into_iter()
            .map(|tid| {
                let nice = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
                    .ok()
                    .and_then(|s| {
                        let rest = s[s.rfind(')')? + 1..].to_owned();
                        rest.split_whitespace().nth(16)?.parse().ok()
                    });
                (cpu_policy::get(tid).ok(), nice)
            })
            .collect()
    }

    #[test]
    fn a_started_component_is_restored_with_all_its_threads_and_processes() {
        let _alone = crate::reaper::CHILD_TESTS
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !background_allowed() {
            eprintln!("skipped: this process may not change priorities");
            return;
        }
        // Two processes of one group, both started in the background lane: the leader and a
        // member (a component's child, say).
        let (tx, rx) = mpsc::channel();
        run_background(move || {
            let spawn = |group: i32| {
                spawning_child(|| {
                    std::process::Command::new("sleep")
                        .arg("30")
                        .process_group(group)
                        .spawn()
                })
            };
            let pair = spawn(0).and_then(|leader| {
                let group = leader.id() as i32;
                spawn(group).map(|member| (leader, member))
            });
            let _ = tx.send(pair);
        });
        let (mut child, mut member) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the job runs")
            .expect("sleep starts");
        let leader = Pid::from_raw(child.id() as i32).expect("pid");
        let pgid = leader.as_raw_nonzero().get();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while cpu_policy::group_members(pgid).len() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the group never had 2 members"
            );
            thread::sleep(std::time::Duration::from_millis(5));
        }
        let members = cpu_policy::group_members(pgid);
        for &pid in &members {
            assert!(
                thread_priorities(pid)
                    .iter()
                    .all(|p| *p == (Some(Policy::Idle), Some(BACKGROUND_NICE))),
                "{pid} did not start in the background: {:?}",
                thread_priorities(pid)
            );
        }
        restore(leader);
        assert!(
            thread_priorities(pgid)
                .iter()
                .all(|p| *p == (Some(Policy::Normal), Some(normal_nice()))),
            "the leader was not restored: {:?}",
            thread_priorities(pgid)
        );
        restore_members(leader);
        for &pid in &members {
            assert!(
                thread_priorities(pid)
                    .iter()
                    .all(|p| *p == (Some(Policy::Normal), Some(normal_nice()))),
                "{pid} was not restored: {:?}",
                thread_priorities(pid)
            );
        }
        let _ = rustix::process::kill_process_group(leader, rustix::process::Signal::KILL);
        let _ = child.wait();
        let _ = member.wait();
    }
}
