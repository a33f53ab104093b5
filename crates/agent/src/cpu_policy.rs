//! Linux scheduling policies of threads: the two the agent uses (`SCHED_IDLE` for work that
//! must never delay a running service, `SCHED_OTHER` for everything else), and finding every
//! thread of a process group to hand them back.
//!
//! rustix covers nice values but not `sched_setscheduler`, so these calls go through libc: two
//! calls on plain integers and a `sched_param` that lives on the stack for the duration of the
//! call.

use std::io;

/// A thread's scheduling policy, as far as the agent cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Policy {
    /// `SCHED_OTHER`: the normal time-shared policy.
    Normal,
    /// `SCHED_IDLE`: a normal thread that wakes up preempts it at once, and against normal
    /// threads it weighs 3 (nice 0: 1024), about a third of a percent of a busy CPU; it is
    /// not excluded, and when the normal threads have had more than their share it may run a
    /// slice. A high nice value is weaker: under EEVDF (Linux 6.6 and later) a nice-19 task
    /// keeps the CPU for its whole slice once it has it, whatever wakes up meanwhile (0.75 ms
    /// times 1 + log2(CPUs), 1.5 ms on two).
    Idle,
    /// Anything else (real-time, batch, deadline): chosen by the process itself; the agent
    /// leaves it alone.
    Other,
}

/// Sets the policy of thread `tid` (0: the calling thread). Priority 0, which both policies
/// require.
pub(crate) fn set(tid: i32, policy: Policy) -> io::Result<()> {
    let raw = match policy {
        Policy::Normal => libc::SCHED_OTHER,
        Policy::Idle => libc::SCHED_IDLE,
        Policy::Other => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid, initialised `sched_param` that outlives the call, which only
    // reads it; `tid` and `raw` are plain integers the kernel validates.
    let rc = unsafe { libc::sched_setscheduler(tid, raw, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The policy of thread `tid` (0: the calling thread).
pub(crate) fn get(tid: i32) -> io::Result<Policy> {
    // SAFETY: takes and returns plain integers; no memory is shared with the kernel.
    let rc = unsafe { libc::sched_getscheduler(tid) };
    match rc {
        -1 => Err(io::Error::last_os_error()),
        libc::SCHED_OTHER => Ok(Policy::Normal),
        libc::SCHED_IDLE => Ok(Policy::Idle),
        _ => Ok(Policy::Other),
    }
}

/// The threads of process `pid` (empty if it is gone).
pub(crate) fn threads(pid: i32) -> Vec<i32> {
    numeric_entries(&format!("/proc/{pid}/task"))
}

/// The processes in process group `pgid`, the leader first if it is still there. Scans
/// `/proc` (the kernel offers no list of a group's members), so it costs a read per process
/// on the host: meant for a component's start, not for a hot path.
pub(crate) fn group_members(pgid: i32) -> Vec<i32> {
    let mut members: Vec<i32> = numeric_entries("/proc")
        .into_iter()
        .filter(|&pid| process_group(pid) == Some(pgid))
        .collect();
    members.sort_by_key(|&pid| pid != pgid);
    members
}

/// The process group of `pid` (field 5 of `/proc/PID/stat`), `None` if it is gone.
fn process_group(pid: i32) -> Option<i32> {
    crate::procfs::stat_field(u32::try_from(pid).ok()?, 5)
}

fn numeric_entries(dir: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;

    fn tid() -> i32 {
        rustix::thread::gettid().as_raw_nonzero().get()
    }

    #[test]
    fn a_thread_goes_idle_and_back() {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let before = get(0);
            let to_idle = set(0, Policy::Idle).map(|()| get(0));
            let back = set(0, Policy::Normal).map(|()| get(0));
            let _ = tx.send((before.ok(), to_idle.ok().and_then(Result::ok), back.ok()));
        });
        let (before, idle, back) = rx.recv().expect("the thread reports");
        assert_eq!(before, Some(Policy::Normal));
        assert_eq!(idle, Some(Policy::Idle));
        // Coming back needs CAP_SYS_NICE or an RLIMIT_NICE that allows it (the agent checks
        // before it uses the background at all).
        if crate::spawner::background_allowed() {
            assert_eq!(back.and_then(Result::ok), Some(Policy::Normal));
        }
    }

    #[test]
    fn a_policy_set_from_outside_applies_to_that_thread_only() {
        let (tid_tx, tid_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let t = thread::spawn(move || {
            let _ = tid_tx.send(tid());
            let _ = done_rx.recv();
        });
        let other = tid_rx.recv().expect("tid");
        set(other, Policy::Idle).expect("set another thread's policy");
        assert_eq!(get(other).ok(), Some(Policy::Idle));
        assert_eq!(get(0).ok(), Some(Policy::Normal));
        let _ = done_tx.send(());
        t.join().expect("join");
    }

    #[test]
    fn this_process_is_found_in_its_group_with_its_threads() {
        let me = rustix::process::getpid().as_raw_nonzero().get();
        let pgid = rustix::process::getpgrp().as_raw_nonzero().get();
        assert!(group_members(pgid).contains(&me));
        assert!(threads(me).contains(&tid()));
        assert_eq!(threads(i32::MAX), Vec::<i32>::new());
        assert_eq!(process_group(me), Some(pgid));
    }

    #[test]
    fn only_the_two_policies_can_be_set() {
        assert!(set(0, Policy::Other).is_err());
    }
}
