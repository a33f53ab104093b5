//! One runtime per state directory.
//!
//! Two `nines run` on the same state directory would start every component twice and write
//! one event log from two writers. An exclusive `flock` on `state_dir/lock`, held for the
//! runtime's life, prevents it; the kernel drops the lock when the process dies, so a crashed
//! run never leaves a stale lock behind. `flock` locks belong to the open file, so a second
//! runtime in the same process is refused too.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::Path;

use rustix::fs::{flock, FlockOperation};

/// The held lock; released when dropped (or when the process exits).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Why the lock could not be taken.
#[derive(Debug)]
pub enum LockError {
    /// Another runtime holds it; its pid if it wrote one.
    Held(Option<u32>),
    /// The lock file could not be opened or locked.
    Io(io::Error),
}

impl StateLock {
    /// Takes the lock on `state_dir/lock` without waiting, and writes our pid into it so a
    /// refused second runtime can say who holds it.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, LockError> {
        let path = state_dir.join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(LockError::Io)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Held(text.trim().parse().ok()));
            }
            Err(e) => return Err(LockError::Io(e.into())),
        }
        file.set_len(0).map_err(LockError::Io)?;
        file.rewind().map_err(LockError::Io)?;
        write!(file, "{}", std::process::id()).map_err(LockError::Io)?;
        Ok(StateLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_is_refused_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("nines-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let first = StateLock::acquire(&dir).expect("first lock");
        match StateLock::acquire(&dir) {
            Err(LockError::Held(pid)) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        let again = StateLock::acquire(&dir).expect("lock after release");
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
