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
//! Appending only numbers a line and queues it; one writer thread builds, formats and writes
//! the queued lines in batches, [`BATCH_DELAY`] after the first of a batch was queued. A
//! failover is a few engine steps within a millisecond (the fault, the standby's assignment,
//! its confirmation), and formatting a dozen lines and writing them between those steps was
//! measured on the development VM at 60-100 us of the outage: where the scheduler packs
//! threads onto one CPU, any work done then is done instead of the failover's. Batched, the
//! lines reach the file and the followers a couple of milliseconds later, in the same order
//! and with the same numbers. [`EventLog::flush`] waits for everything appended so far (the
//! director's stop does, and so does dropping the log).
//!
//! The file survives restarts: a new run appends. A torn last line (a crash in mid-write) is
//! terminated on open so line numbers stay exact; readers skip lines that do not parse. A
//! crash loses the lines of the last batch not yet written.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use nines_engine::Instant;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::event_json::Fields;
use crate::wall::WallClock;

/// Lines a slow follower may fall behind before it is told it missed some.
const FOLLOW_BACKLOG: usize = 8192;

/// How long the writer waits after the first line of a batch before it writes the batch.
pub const BATCH_DELAY: Duration = Duration::from_millis(2);

/// One line of the log, as written (without its newline), with its line number.
#[derive(Clone, Debug)]
pub struct LogLine {
    /// Line number in `events.jsonl`, from 0.
    pub seq: u64,
    /// The JSON object.
    pub json: Arc<str>,
}

/// Builds a line's event kind and fields; run by the writer thread, so that what it costs
/// (entity paths, JSON values) is not paid by whoever appends.
pub type LineFn = Box<dyn FnOnce() -> (Cow<'static, str>, Fields) + Send>;

/// The append side of the event log, shared by the engine loop (writer) and the control
/// socket (readers).
pub struct EventLog {
    path: PathBuf,
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    run: u64,
    queue: Mutex<Queue>,
    /// Signalled when the first line of a batch is queued, and on close.
    queued: Condvar,
    /// Held from taking a batch off the queue until it is written and sent to followers, so
    /// batches reach the file in line-number order whoever writes them.
    file: Mutex<FileState>,
    tx: broadcast::Sender<LogLine>,
}

struct Queue {
    lines: Vec<Queued>,
    next_seq: u64,
    closing: bool,
}

struct Queued {
    seq: u64,
    t: Instant,
    line: LineFn,
}

struct FileState {
    file: File,
    /// Lines below this number are in the file.
    written: u64,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the log half-updated in a way
    // that matters (the worst is one torn line), so a poisoned lock is used as is.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EventLog {
    /// Opens (or creates) the log at `path` for run number `run`, anchoring wall times with
    /// `wall`, and starts its writer thread.
    pub fn open(path: &Path, history: History, run: u64, wall: WallClock) -> io::Result<EventLog> {
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        let mut next_seq = history.lines;
        if needs_newline(path)? {
            file.write_all(b"\n")?;
            next_seq = count_lines(path)?;
        }
        let (tx, _) = broadcast::channel(FOLLOW_BACKLOG);
        let shared = Arc::new(Shared {
            run,
            queue: Mutex::new(Queue {
                lines: Vec::new(),
                next_seq,
                closing: false,
            }),
            queued: Condvar::new(),
            file: Mutex::new(FileState {
                file,
                written: next_seq,
                wall,
                write_failed: false,
            }),
            tx,
        });
        let writer = {
            let shared = Arc::clone(&shared);
            let path = path.to_path_buf();
            std::thread::Builder::new()
                .name("nines-event-log".into())
                .spawn(move || shared.write_batches(&path))?
        };
        Ok(EventLog {
            path: path.to_path_buf(),
            shared,
            writer: Mutex::new(Some(writer)),
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
        self.shared.run
    }

    /// The line number the next line will get.
    pub fn next_seq(&self) -> u64 {
        lock(&self.shared.queue).next_seq
    }

    /// Appends one line; returns its line number.
    pub fn append(&self, t: Instant, event: &str, fields: &Fields) -> u64 {
        self.append_all(&[(t, event, fields.clone())])
    }

    /// Appends several lines (the events of one engine step: a failover records a dozen);
    /// returns the line number of the first.
    pub fn append_all(&self, lines: &[(Instant, &str, Fields)]) -> u64 {
        let lazy = lines
            .iter()
            .map(|(t, event, fields)| {
                let (event, fields) = (event.to_string(), fields.clone());
                (*t, Box::new(move || (Cow::Owned(event), fields)) as LineFn)
            })
            .collect();
        self.append_lazy(lazy)
    }

    /// Appends lines whose kind and fields the writer thread builds; returns the line number
    /// of the first. Numbers are given here, in call order.
    pub fn append_lazy(&self, lines: Vec<(Instant, LineFn)>) -> u64 {
        let mut q = lock(&self.shared.queue);
        let first = q.next_seq;
        let was_empty = q.lines.is_empty();
        for (t, line) in lines {
            let seq = q.next_seq;
            q.next_seq += 1;
            q.lines.push(Queued { seq, t, line });
        }
        if was_empty {
            self.shared.queued.notify_one();
        }
        first
    }

    /// Writes every line appended so far (without waiting for the batch delay) and returns
    /// once they are in the file and sent to followers.
    pub fn flush(&self) {
        self.shared.write_queued(&self.path);
    }

    /// Lines from `since` (a line number) up to now, plus a receiver of every later line.
    /// Taken under the writer's lock, so the two together have no gap and no duplicate (lines
    /// queued but not yet written come through the receiver).
    pub fn subscribe(
        &self,
        since: u64,
    ) -> io::Result<(Vec<LogLine>, broadcast::Receiver<LogLine>)> {
        let (end, rx) = {
            let file = lock(&self.shared.file);
            (file.written, self.shared.tx.subscribe())
        };
        let backlog = read_lines(&self.path, since, end)?;
        Ok((backlog, rx))
    }
}

impl Drop for EventLog {
    /// Writes what is queued and stops the writer thread.
    fn drop(&mut self) {
        lock(&self.shared.queue).closing = true;
        self.shared.queued.notify_one();
        if let Some(writer) = lock(&self.writer).take() {
            let _ = writer.join();
        }
        // The writer is gone: whatever was queued after it looked the last time.
        self.shared.write_queued(&self.path);
    }
}

impl Shared {
    /// The writer thread: waits for a line, lets the batch gather, writes it; until closed.
    fn write_batches(&self, path: &Path) {
        loop {
            {
                let mut q = lock(&self.queue);
                while q.lines.is_empty() && !q.closing {
                    q = self.queued.wait(q).unwrap_or_else(|p| p.into_inner());
                }
                if q.closing {
                    drop(q);
                    self.write_queued(path);
                    return;
                }
            }
            std::thread::sleep(BATCH_DELAY);
            self.write_queued(path);
        }
    }

    /// Takes every queued line and writes it with one write, then hands the lines to
    /// followers. A write error is reported once through `tracing`; the lines still go to
    /// live followers and keep their numbers, so the cluster keeps running (and the console
    /// keeps showing events) without a complete log rather than stopping for one.
    fn write_queued(&self, path: &Path) {
        let mut file = lock(&self.file);
        let batch = std::mem::take(&mut lock(&self.queue).lines);
        let Some(last) = batch.last().map(|q| q.seq) else {
            return;
        };
        let mut bytes = Vec::new();
        let mut out = Vec::with_capacity(batch.len());
        for Queued { seq, t, line } in batch {
            let (event, fields) = line();
            let mut text = format!(
                "{{\"seq\":{seq},\"run\":{},\"t_ns\":{},\"wall\":\"{}\",\"event\":{}",
                self.run,
                t.as_nanos(),
                file.wall.rfc3339(t),
                Value::from(event.as_ref())
            );
            for (k, v) in fields {
                text.push_str(&format!(",{}:{v}", Value::from(k)));
            }
            text.push('}');
            bytes.extend_from_slice(text.as_bytes());
            bytes.push(b'\n');
            out.push(LogLine {
                seq,
                json: text.into(),
            });
        }
        if let Err(e) = file.file.write_all(&bytes) {
            if !file.write_failed {
                tracing::error!("cannot append to {}: {e}", path.display());
                file.write_failed = true;
            }
        }
        file.written = last + 1;
        for l in out {
            // No receiver is fine: nobody is following.
            let _ = self.tx.send(l);
        }
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
        log.flush();
        let (backlog, mut rx) = log.subscribe(1).expect("subscribe");
        assert_eq!(backlog.len(), 1);
        assert_eq!(backlog[0].seq, 1);
        log.append(Instant::from_nanos(7), "z", &Vec::new());
        log.flush();
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
    fn lines_are_written_in_a_batch_after_the_delay_in_order() {
        let dir = temp("batch");
        let path = dir.join("events.jsonl");
        let log = EventLog::open(&path, History::default(), 1, wall()).expect("open");
        let (_, mut rx) = log.subscribe(0).expect("subscribe");
        let built = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let lazy = |n: u64| {
            let built = Arc::clone(&built);
            (
                Instant::from_nanos(n),
                Box::new(move || {
                    built.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    (Cow::Borrowed("lazy"), vec![("n", json!(n))])
                }) as LineFn,
            )
        };
        let started = std::time::Instant::now();
        assert_eq!(log.append_lazy(vec![lazy(1), lazy(2)]), 0);
        assert_eq!(log.append(Instant::from_nanos(3), "eager", &Vec::new()), 2);
        assert_eq!(log.next_seq(), 3);
        // Nothing is built, written or followed at once...
        assert_eq!(built.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(rx.try_recv().is_err());
        // ...and everything is, in order, about a batch delay later.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < 3 {
            match rx.try_recv() {
                Ok(l) => got.push(l),
                Err(_) => {
                    assert!(std::time::Instant::now() < deadline, "never written");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        assert!(started.elapsed() >= BATCH_DELAY);
        assert_eq!(got.iter().map(|l| l.seq).collect::<Vec<_>>(), vec![0, 1, 2]);
        let kinds: Vec<Value> = got
            .iter()
            .map(|l| serde_json::from_str::<Value>(&l.json).expect("json")["event"].clone())
            .collect();
        assert_eq!(kinds, vec![json!("lazy"), json!("lazy"), json!("eager")]);
        assert_eq!(built.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(read_lines(&path, 0, u64::MAX).expect("read").len(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn dropping_the_log_writes_what_is_queued() {
        let dir = temp("drop");
        let path = dir.join("events.jsonl");
        let log = EventLog::open(&path, History::default(), 1, wall()).expect("open");
        for n in 0..50 {
            log.append(Instant::from_nanos(n), "x", &Vec::new());
        }
        drop(log);
        let lines = read_lines(&path, 0, u64::MAX).expect("read");
        assert_eq!(lines.len(), 50);
        assert!(lines.iter().enumerate().all(|(i, l)| {
            serde_json::from_str::<Value>(&l.json).expect("json")["seq"] == json!(i)
        }));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_subscriber_between_append_and_write_misses_nothing_and_sees_nothing_twice() {
        let dir = temp("gap");
        let path = dir.join("events.jsonl");
        let log = EventLog::open(&path, History::default(), 1, wall()).expect("open");
        log.append(Instant::ZERO, "a", &Vec::new());
        log.flush();
        log.append(Instant::ZERO, "b", &Vec::new());
        // "b" is queued, not written: it comes through the receiver, not the backlog.
        let (backlog, mut rx) = log.subscribe(0).expect("subscribe");
        assert_eq!(backlog.iter().map(|l| l.seq).collect::<Vec<_>>(), vec![0]);
        log.flush();
        assert_eq!(rx.try_recv().expect("queued line").seq, 1);
        assert!(rx.try_recv().is_err());
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
        log.flush();
        let lines = read_lines(&path, 0, u64::MAX).expect("read");
        assert_eq!(lines.len(), 3);
        assert!(lines[2].json.contains("run-started"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
