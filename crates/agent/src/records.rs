//! What this agent runs, on disk: one small file per component process, written as soon as
//! the process is spawned, removed when the component is stopped, and replaced by the next
//! incarnation's when it failed (a record naming a dead process is discarded at adoption).
//!
//! Components outlive a crashed agent (they are reparented, and keep serving). An agent
//! started after it must adopt them, not start duplicates beside them, and it can only adopt
//! what it knows of. The record is written on the spawner thread right after the spawn, before
//! anything else can happen to the process, so no component this agent started is missing
//! from it, whatever the director managed to persist. Each record holds the leader's pid and
//! start time: a pid that was reused by another process is never adopted or killed.
//!
//! Format, one file per component, named after its entity path (`/` as `%2F`, `%` as `%25`):
//! two lines, the entity path and `PID START`. Not fsynced: it matters only when the agent
//! dies and the host does not (after a host crash the processes are gone too).

use std::io;
use std::path::{Path, PathBuf};

/// One recorded component process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    /// Entity path of the component.
    pub comp: String,
    /// The process group leader.
    pub pid: u32,
    /// Its start time (see [`crate::pidfd::start_time`]).
    pub start: u64,
}

/// The record directory of one agent (`None`: records are not kept, nothing is adopted).
#[derive(Clone, Debug, Default)]
pub(crate) struct Records {
    dir: Option<PathBuf>,
}

fn file_name(comp: &str) -> String {
    format!("{}.pid", comp.replace('%', "%25").replace('/', "%2F"))
}

impl Records {
    /// Records kept in `dir` (created if missing).
    pub(crate) fn new(dir: Option<PathBuf>) -> io::Result<Records> {
        if let Some(d) = &dir {
            std::fs::create_dir_all(d)?;
        }
        Ok(Records { dir })
    }

    fn path(&self, comp: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(file_name(comp)))
    }

    /// Records that `comp` runs as `pid`. Best effort: a record that cannot be written only
    /// means the process cannot be adopted after a crash of this agent (it is logged).
    pub(crate) fn write(&self, comp: &str, pid: u32) {
        let Some(path) = self.path(comp) else { return };
        let Some(start) = crate::pidfd::start_time(pid) else {
            return; // already gone: nothing to adopt
        };
        let tmp = path.with_extension("tmp");
        let written = std::fs::write(&tmp, format!("{comp}\n{pid} {start}\n"))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(component = comp, file = %path.display(), error = %e, "cannot record the component process");
        }
    }

    /// Forgets `comp`'s record if it is still the one for `pid` (a newer incarnation's record
    /// is kept).
    pub(crate) fn remove(&self, comp: &str, pid: u32) {
        let Some(path) = self.path(comp) else { return };
        if read(&path).is_ok_and(|r| r.pid == pid) {
            let _ = std::fs::remove_file(&path);
        }
    }

    /// Every record, with those that cannot be read as errors naming the file. The files stay
    /// until [`Records::discard`]: nothing is forgotten before it is dealt with.
    pub(crate) fn load(&self) -> Vec<(PathBuf, Result<Record, String>)> {
        let Some(dir) = &self.dir else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut out: Vec<_> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pid"))
            .map(|p| {
                let r = read(&p);
                (p, r)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Removes a record file found by [`Records::load`].
    pub(crate) fn discard(path: &Path) {
        let _ = std::fs::remove_file(path);
    }
}

fn read(path: &Path) -> Result<Record, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bad = || format!("{}: not a component record: {text:?}", path.display());
    let mut lines = text.lines();
    let comp = lines.next().filter(|c| !c.is_empty()).ok_or_else(bad)?;
    let mut nums = lines.next().ok_or_else(bad)?.split_whitespace();
    let pid: u32 = nums.next().and_then(|n| n.parse().ok()).ok_or_else(bad)?;
    let start: u64 = nums.next().and_then(|n| n.parse().ok()).ok_or_else(bad)?;
    if pid <= 1 || nums.next().is_some() {
        return Err(bad());
    }
    Ok(Record {
        comp: comp.to_owned(),
        pid,
        start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("nines-records-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_record_round_trips_and_only_its_own_pid_removes_it() {
        let dir = temp_dir("rt");
        let r = Records::new(Some(dir.clone())).expect("dir");
        let me = std::process::id();
        r.write("app/sg/su-1/c%x", me);
        let loaded = r.load();
        assert_eq!(loaded.len(), 1);
        let rec = loaded[0].1.clone().expect("readable");
        assert_eq!(rec.comp, "app/sg/su-1/c%x");
        assert_eq!(rec.pid, me);
        assert_eq!(Some(rec.start), crate::pidfd::start_time(me));
        r.remove("app/sg/su-1/c%x", me + 1);
        assert_eq!(r.load().len(), 1, "another pid's removal keeps the record");
        r.remove("app/sg/su-1/c%x", me);
        assert!(r.load().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn names_that_differ_only_in_slashes_and_dashes_do_not_collide() {
        assert_ne!(file_name("a-b/c"), file_name("a/b-c"));
        assert_ne!(file_name("a%2Fb/c"), file_name("a/b/c"));
    }

    #[test]
    fn garbage_records_are_errors_naming_the_file() {
        let dir = temp_dir("bad");
        let r = Records::new(Some(dir.clone())).expect("dir");
        for (i, text) in [
            "",
            "app/c\n",
            "app/c\nx 1\n",
            "app/c\n1 2\n",
            "app/c\n7 8 9\n",
        ]
        .iter()
        .enumerate()
        {
            std::fs::write(dir.join(format!("{i}.pid")), text).expect("write");
        }
        let loaded = r.load();
        assert_eq!(loaded.len(), 5);
        for (path, result) in loaded {
            let e = result.expect_err("garbage");
            assert!(e.contains(&path.display().to_string()), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_a_directory_nothing_is_kept() {
        let r = Records::new(None).expect("none");
        r.write("app/c", std::process::id());
        assert!(r.load().is_empty());
    }
}
