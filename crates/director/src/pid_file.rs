//! `state_dir/pids.json`: which component processes this run has running, so that the next
//! run can kill them if this one dies without cleaning up.
//!
//! Components are children of the in-process agents. When `nines run` exits normally it
//! terminates them; when it is killed (SIGKILL, OOM, a crash) they are reparented and keep
//! running, and a new run would start duplicates next to them. Adopting them is not done yet
//! (the agent has no way to take over a process it did not spawn); instead the next run
//! kills them before it starts anything. Each entry keeps the process's start time (from
//! `/proc/PID/stat`), so a pid reused by an unrelated process is never killed.

use std::io;
use std::path::{Path, PathBuf};

use rustix::process::{kill_process, kill_process_group, Pid, Signal};
use serde::{Deserialize, Serialize};

use crate::atomic;

/// One component process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Component path.
    pub comp: String,
    /// Process id (also its process group: the agent starts each component in its own).
    pub pid: u32,
    /// Start time in clock ticks since boot (field 22 of `/proc/PID/stat`).
    pub start: u64,
}

/// The pid file of one state directory.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    last: Vec<(String, u32)>,
}

impl PidFile {
    /// The pid file at `path` (not read or written yet).
    pub fn new(path: &Path) -> PidFile {
        PidFile {
            path: path.to_path_buf(),
            last: Vec::new(),
        }
    }

    /// Records the running components if they changed since the last call.
    pub fn save(&mut self, mut pids: Vec<(String, u32)>) -> io::Result<()> {
        pids.sort();
        if pids == self.last {
            return Ok(());
        }
        let entries: Vec<Entry> = pids
            .iter()
            .filter_map(|(comp, pid)| {
                start_time(*pid).map(|start| Entry {
                    comp: comp.clone(),
                    pid: *pid,
                    start,
                })
            })
            .collect();
        let bytes = serde_json::to_vec_pretty(&entries).map_err(io::Error::other)?;
        // Not fsynced: it only matters if this process dies and the host does not (after a
        // host crash the processes are gone too), and it is written on the engine's path.
        atomic::write(&self.path, &bytes, false)?;
        self.last = pids;
        Ok(())
    }

    /// Forgets the file: nothing of ours is running any more.
    pub fn remove(&mut self) -> io::Result<()> {
        self.last.clear();
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Kills (SIGKILL, whole process group) every process a previous run left behind that is
    /// still the same process, and returns those it killed. Unreadable files kill nothing.
    pub fn kill_stale(&self) -> Vec<Entry> {
        let Ok(bytes) = std::fs::read(&self.path) else {
            return Vec::new();
        };
        let Ok(entries) = serde_json::from_slice::<Vec<Entry>>(&bytes) else {
            return Vec::new();
        };
        let mut killed = Vec::new();
        for e in entries {
            if e.pid <= 1 || e.pid == std::process::id() || start_time(e.pid) != Some(e.start) {
                continue;
            }
            let Some(pid) = Pid::from_raw(e.pid as i32) else {
                continue;
            };
            // The component leads its own group; the group also holds anything it forked.
            let _ = kill_process_group(pid, Signal::KILL);
            let _ = kill_process(pid, Signal::KILL);
            killed.push(e);
        }
        killed
    }
}

/// A process's start time (clock ticks since boot), or `None` if it does not exist.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `comm` (field 2) is in parentheses and may contain spaces and parentheses: fields are
    // counted after the last ')'. Field 3 is the first after it, so field 22 is the 20th.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn our_own_start_time_is_readable() {
        assert!(start_time(std::process::id()).is_some());
        assert_eq!(start_time(u32::MAX - 1), None);
    }

    #[test]
    fn stale_processes_are_killed_and_reused_pids_are_not() {
        let dir = std::env::temp_dir().join(format!("nines-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("pids.json");
        let mut child = Command::new("/bin/sleep")
            .arg("1000")
            .spawn()
            .expect("spawn sleep");
        let mut other = Command::new("/bin/sleep")
            .arg("1000")
            .spawn()
            .expect("spawn sleep");
        let mut f = PidFile::new(&path);
        f.save(vec![("a/sg/su-1/c".into(), child.id())])
            .expect("save");
        // An entry whose start time does not match must be left alone.
        let mut entries: Vec<Entry> =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("parse");
        entries.push(Entry {
            comp: "a/sg/su-2/c".into(),
            pid: other.id(),
            start: start_time(other.id()).expect("start") + 1,
        });
        std::fs::write(&path, serde_json::to_vec(&entries).expect("json")).expect("write");
        let killed = f.kill_stale();
        assert_eq!(killed.len(), 1);
        assert_eq!(killed[0].pid, child.id());
        let status = child.wait().expect("wait");
        assert!(!status.success());
        assert!(
            other.try_wait().expect("try_wait").is_none(),
            "unrelated process killed"
        );
        let _ = other.kill();
        let _ = other.wait();
        f.remove().expect("remove");
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
