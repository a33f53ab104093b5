//! The event log: `events.jsonl` in the state directory, one JSON object per line, appended
//! for every engine event, admin reply and director milestone, and fanned out live to
//! followers (`nines events --follow`, the `nines run` console).
//!
//! Every line starts with the same fields: `seq` (its line number in the file, from 0, which
//! is what `since` counts), `run` (which start of `nines run` wrote it; fault ids restart with
//! each run, so a fault is identified by `(run, fault)`), `t_ns` (the engine instant:
//! nanoseconds since that run's clock started), `wall` (RFC 3339 UTC) and `event` (its kind);
//! the kind's own fields follow (see [`crate::event_json`]).
//!
//! The file survives restarts: a new run appends. A torn last line (a crash in mid-write) is
//! terminated on open so line numbers stay exact; readers skip lines that do not parse.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use nines_engine::Instant;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::event_json::Fields;
use crate::wall::WallClock;

/// Lines a slow follower may fall behind before it is told it missed some.
const FOLLOW_BACKLOG: usize = 8192;

/// One line of the log, as written (without its newline), with its line number.
#[derive(Clone, Debug)]
pub struct LogLine {
    /// Line number in `events.jsonl`, from 0.
    pub seq: u64,
    /// The JSON object.
    pub json: Arc<str>,
}

/// The append side of the event log, shared by the engine loop (writer) and the control
/// socket (readers).
pub struct EventLog {
    path: PathBuf,
    inner: Mutex<Inner>,
    tx: broadcast::Sender<LogLine>,
}

struct Inner {
    file: File,
    next_seq: u64,
    run: u64,
    wall: WallClock,
    write_failed: bool,
}

/// What an existing log says about earlier runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// Lines already in the file.
    pub lines: u64,
    /// The highest `run` number seen (0 if none).
    pub last_run: u64,
}

impl EventLog {
    /// Opens (or creates) the log at `path` for run number `run`, anchoring wall times with
    /// `wall`.
    pub fn open(path: &Path, history: History, run: u64, wall: WallClock) -> io::Result<EventLog> {
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        let mut next_seq = history.lines;
        if needs_newline(path)? {
            file.write_all(b"\n")?;
            next_seq = count_lines(path)?;
        }
        let (tx, _) = broadcast::channel(FOLLOW_BACKLOG);
        Ok(EventLog {
            path: path.to_path_buf(),
            inner: Mutex::new(Inner {
                file,
                next_seq,
                run,
                wall,
                write_failed: false,
            }),
            tx,
        })
    }

    /// Reads what an existing log at `path` says about earlier runs (nothing if it is absent).
    pub fn history(path: &Path) -> io::Result<History> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(History::default()),
            Err(e) => return Err(e),
        };
        let text = String::from_utf8_lossy(&text);
        let mut h = History::default();
        for line in text.split_terminator('\n') {
            h.lines += 1;
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                if let Some(run) = v.get("run").and_then(Value::as_u64) {
                    h.last_run = h.last_run.max(run);
                }
            }
        }
        Ok(h)
    }

    /// The file this log appends to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The run number lines are stamped with.
    pub fn run(&self) -> u64 {
        self.lock().run
    }

    /// The line number the next line will get.
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }

    /// Appends one line and hands it to followers; returns its line number.
    pub fn append(&self, t: Instant, event: &str, fields: &Fields) -> u64 {
        self.append_all(&[(t, event, fields.clone())])
    }

    /// Appends several lines with one write (the events of one engine step: a failover
    /// records a dozen, and the engine loop should not pay a system call for each) and hands
    /// them to followers; returns the line number of the first.
    ///
    /// A write error is reported once through `tracing`; the lines still go to live followers
    /// and keep their numbers, so the cluster keeps running (and the console keeps showing
    /// events) without a complete log rather than stopping for one.
    pub fn append_all(&self, lines: &[(Instant, &str, Fields)]) -> u64 {
        let mut inner = self.lock();
        let first = inner.next_seq;
        let mut bytes = Vec::new();
        let mut out = Vec::with_capacity(lines.len());
        for (t, event, fields) in lines {
            let seq = inner.next_seq;
            inner.next_seq += 1;
            let mut line = format!(
                "{{\"seq\":{seq},\"run\":{},\"t_ns\":{},\"wall\":\"{}\",\"event\":{}",
                inner.run,
                t.as_nanos(),
                inner.wall.rfc3339(*t),
                Value::from(*event)
            );
            for (k, v) in fields {
                line.push_str(&format!(",{}:{v}", Value::from(*k)));
            }
            line.push('}');
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
            out.push(LogLine {
                seq,
                json: line.into(),
            });
        }
        if let Err(e) = inner.file.write_all(&bytes) {
            if !inner.write_failed {
                tracing::error!("cannot append to {}: {e}", self.path.display());
                inner.write_failed = true;
            }
        }
        for l in out {
            // No receiver is fine: nobody is following.
            let _ = self.tx.send(l);
        }
        first
    }

    /// Lines from `since` (a line number) up to now, plus a receiver of every later line.
    /// Taken under the writer's lock, so the two together have no gap and no duplicate.
    pub fn subscribe(
        &self,
        since: u64,
    ) -> io::Result<(Vec<LogLine>, broadcast::Receiver<LogLine>)> {
        let (end, rx) = {
            let inner = self.lock();
            (inner.next_seq, self.tx.subscribe())
        };
        let backlog = read_lines(&self.path, since, end)?;
        Ok((backlog, rx))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the log half-updated in a way that
        // matters (the worst is one torn line), so a poisoned lock is used as is.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Lines `since..end` of the file at `path` (fewer if the file is shorter).
pub fn read_lines(path: &Path, since: u64, end: u64) -> io::Result<Vec<LogLine>> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let text = String::from_utf8_lossy(&text);
    Ok(text
        .split_terminator('\n')
        .enumerate()
        .map(|(i, l)| (i as u64, l))
        .filter(|(i, _)| *i >= since && *i < end)
        .map(|(seq, l)| LogLine {
            seq,
            json: l.into(),
        })
        .collect())
}

fn needs_newline(path: &Path) -> io::Result<bool> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

fn count_lines(path: &Path) -> io::Result<u64> {
    let text = std::fs::read(path)?;
    Ok(text.iter().filter(|&&b| b == b'\n').count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::{Duration, UNIX_EPOCH};

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("nines-eventlog-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn wall() -> WallClock {
        WallClock::new(Instant::ZERO, UNIX_EPOCH + Duration::from_secs(1))
    }

    #[test]
    fn appends_numbered_lines_and_follows_without_gaps() {
        let dir = temp("follow");
        let path = dir.join("events.jsonl");
        let h = EventLog::history(&path).expect("history");
        assert_eq!(h, History::default());
        let log = EventLog::open(&path, h, 1, wall()).expect("open");
        assert_eq!(
            log.append(Instant::from_nanos(5), "x", &vec![("a", json!(1))]),
            0
        );
        assert_eq!(log.append(Instant::from_nanos(6), "y", &Vec::new()), 1);
        let (backlog, mut rx) = log.subscribe(1).expect("subscribe");
        assert_eq!(backlog.len(), 1);
        assert_eq!(backlog[0].seq, 1);
        log.append(Instant::from_nanos(7), "z", &Vec::new());
        let live = rx.try_recv().expect("live line");
        assert_eq!(live.seq, 2);
        let v: Value = serde_json::from_str(&live.json).expect("json");
        assert_eq!(v["event"], "z");
        assert_eq!(v["run"], 1);
        assert_eq!(v["t_ns"], 7);
        assert_eq!(v["wall"], "1970-01-01T00:00:01.000000Z");
        let first: Value =
            serde_json::from_str(&read_lines(&path, 0, 1).expect("read")[0].json).expect("json");
        assert_eq!(first["a"], 1);
        drop(log);
        let h = EventLog::history(&path).expect("history");
        assert_eq!(
            h,
            History {
                lines: 3,
                last_run: 1
            }
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_last_line_is_terminated_and_counted() {
        let dir = temp("torn");
        let path = dir.join("events.jsonl");
        std::fs::write(&path, "{\"seq\":0,\"run\":4}\n{\"seq\":1,\"ru").expect("write");
        let h = EventLog::history(&path).expect("history");
        assert_eq!(
            h,
            History {
                lines: 2,
                last_run: 4
            }
        );
        let log = EventLog::open(&path, h, 5, wall()).expect("open");
        assert_eq!(log.append(Instant::ZERO, "run-started", &Vec::new()), 2);
        let lines = read_lines(&path, 0, u64::MAX).expect("read");
        assert_eq!(lines.len(), 3);
        assert!(lines[2].json.contains("run-started"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
