//! What `nines` inherited stays with it: the descriptors it was started with (beyond stdin,
//! stdout and stderr) are marked close-on-exec before anything else runs, so the components it
//! starts do not inherit them.
//!
//! Why: a component is a service of its own, and a descriptor it inherits by accident keeps
//! the other end alive (a pipe never reaches end-of-file, a socket never closes, a lock stays
//! held) for as long as the component runs, which for an HA service is indefinitely. Shells,
//! terminals and CI runners routinely leave such descriptors open. Everything `nines` opens
//! itself is close-on-exec already (Rust's standard library and tokio open everything that
//! way), and the agent passes a component what it should have explicitly (its environment, its
//! log file as stdout and stderr).

use std::os::fd::BorrowedFd;

use rustix::io::FdFlags;

/// Marks every descriptor above 2 that this process has now as close-on-exec. Call it first
/// in `main`, before any thread exists: the descriptors are listed, then changed, and no other
/// thread may close and reuse one in between.
pub(crate) fn keep_from_children() {
    let listed: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd > 2)
            .collect(),
        Err(_) => return,
    };
    // The directory's own descriptor was among those listed and is closed now: fcntl on it
    // fails with EBADF, which is ignored (no other thread exists to reuse the number).
    for fd in listed {
        // SAFETY: only flags are read and set, for the duration of these calls; a number
        // that is no longer open makes them fail, nothing else.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        if let Ok(flags) = rustix::io::fcntl_getfd(fd) {
            if !flags.contains(FdFlags::CLOEXEC) {
                let _ = rustix::io::fcntl_setfd(fd, flags | FdFlags::CLOEXEC);
            }
        }
    }
}
