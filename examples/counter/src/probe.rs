//! A client that calls a service continuously and remembers every answer, so that an outage
//! can be measured from outside, the way a user would see it: the time between the last
//! answer before a fault and the first answer after it. Used by `nines demo` and
//! `nines bench`.
//!
//! Against the counter it also checks the property a failover must keep: the values it is
//! given only grow (an acknowledged increment is never lost, time never goes back).
//!
//! The probe has one connection at a time and one request in flight; after any failure
//! (refused, reset, timeout, an `ERR` reply) it drops the connection and tries again after
//! `spacing`, so during an outage it keeps knocking at sub-millisecond intervals and sees the
//! service the moment it is back. When a connection that was answering breaks, the first
//! new attempt is made at once, as any client that loses its connection would.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::protocol;

/// What the probe asks and how it judges the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `inc` on the counter: the answer is a value that must be larger than the last one.
    Counter,
    /// A numbered line to an echo service (the daemon): the answer must be the same line.
    Echo,
}

/// One answered request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// When the request was sent.
    pub sent: Instant,
    /// When the answer arrived.
    pub received: Instant,
    /// The counter value (the request number for [`Mode::Echo`]).
    pub value: u64,
}

/// How the probe behaves.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// The service.
    pub addr: SocketAddr,
    /// What to ask.
    pub mode: Mode,
    /// Pause between requests, and between attempts while the service is down.
    pub spacing: Duration,
    /// A request unanswered for this long counts as failed (the connection is dropped). Only a
    /// safety net: a killed server resets its connections at once.
    pub timeout: Duration,
    /// Other addresses of the same service (its other nodes in a cluster without a floating
    /// IP): after a failure the probe tries the next address in turn.
    pub others: Vec<SocketAddr>,
    /// Longest wait for a TCP connection; keep it short when `others` are given, so that a
    /// dead host (which answers nothing) holds the probe up only briefly.
    pub connect_timeout: Duration,
}

impl ProbeOptions {
    /// Defaults for a service on `addr`: 100 µs spacing, 1 s timeout.
    pub fn new(addr: SocketAddr, mode: Mode) -> ProbeOptions {
        ProbeOptions {
            addr,
            mode,
            spacing: Duration::from_micros(100),
            timeout: Duration::from_secs(1),
            others: Vec::new(),
            connect_timeout: Duration::from_secs(1),
        }
    }
}

/// A value that was not larger than the one before: a lost increment or time going back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Regression {
    /// The value answered before.
    pub previous: u64,
    /// The value answered after it.
    pub got: u64,
}

/// A running probe (a thread); stops when [`Probe::stop`] is called or it is dropped.
pub struct Probe {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    stop: AtomicBool,
    failures: AtomicU64,
    log: Mutex<Log>,
    answered: Condvar,
}

#[derive(Default)]
struct Log {
    samples: Vec<Sample>,
    total: u64,
    last_value: Option<u64>,
    regressions: Vec<Regression>,
}

/// What a probe saw over its life.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeReport {
    /// Requests answered.
    pub answered: u64,
    /// Attempts that failed (refused, reset, timed out, error replies).
    pub failures: u64,
    /// Values that did not grow (must be empty for the counter).
    pub regressions: Vec<Regression>,
    /// The last value answered.
    pub last_value: Option<u64>,
}

impl Shared {
    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Probe {
    /// Starts calling the service.
    pub fn start(opts: ProbeOptions) -> std::io::Result<Probe> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            log: Mutex::default(),
            answered: Condvar::new(),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("probe".into())
                .spawn(move || probe_loop(&opts, &shared))?
        };
        Ok(Probe {
            shared,
            thread: Some(thread),
        })
    }

    /// Takes the samples collected so far (the probe keeps collecting into an empty list).
    pub fn take(&self) -> Vec<Sample> {
        std::mem::take(&mut self.shared.log().samples)
    }

    /// Waits for an answer to a request sent at or after `since`; `None` after `timeout`.
    pub fn wait_answer_after(&self, since: Instant, timeout: Duration) -> Option<Sample> {
        let deadline = Instant::now() + timeout;
        let mut log = self.shared.log();
        loop {
            if let Some(s) = log.samples.iter().rev().find(|s| s.sent >= since) {
                return Some(*s);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            log = self
                .shared
                .answered
                .wait_timeout(log, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// What the probe saw so far.
    pub fn report(&self) -> ProbeReport {
        let log = self.shared.log();
        ProbeReport {
            answered: log.total,
            failures: self.shared.failures.load(Ordering::Relaxed),
            regressions: log.regressions.clone(),
            last_value: log.last_value,
        }
    }

    /// Stops the probe and returns what it saw.
    pub fn stop(mut self) -> ProbeReport {
        self.halt();
        self.report()
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The gap a fault left in a probe's answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    /// The last answer to a request sent before the fault.
    pub last_before: Instant,
    /// The first answer to a request sent at or after the fault.
    pub first_after: Instant,
}

impl Gap {
    /// The outage as the client saw it.
    pub fn outage(&self) -> Duration {
        self.first_after.saturating_duration_since(self.last_before)
    }
}

/// The gap around `fault` in `samples`: `None` if there is no answer on one side of it.
///
/// A request sent before the fault whose answer arrives after it still counts as before: the
/// service was answering until then, so it is not part of the outage.
pub fn gap(samples: &[Sample], fault: Instant) -> Option<Gap> {
    let last_before = samples
        .iter()
        .filter(|s| s.sent < fault)
        .map(|s| s.received)
        .max()?;
    let first_after = samples
        .iter()
        .filter(|s| s.sent >= fault)
        .map(|s| s.received)
        .min()?;
    Some(Gap {
        last_before,
        first_after,
    })
}

fn probe_loop(opts: &ProbeOptions, shared: &Shared) {
    // The kernel may stretch a sleep by the thread's timer slack (50 us by default): half the
    // default spacing again, which would widen every gap the probe measures. Best effort.
    let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1_000));
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    let mut line = String::new();
    let mut n: u64 = 0;
    let addrs: Vec<SocketAddr> = std::iter::once(opts.addr)
        .chain(opts.others.iter().copied())
        .collect();
    let mut next = 0;
    let mut reconnected_at_once = false;
    while !shared.stop.load(Ordering::SeqCst) {
        if conn.is_none() {
            conn = connect(opts, addrs[next % addrs.len()]);
            if conn.is_none() {
                next += 1;
            }
        }
        let answered = match conn.as_mut() {
            Some((stream, reader)) => {
                n += 1;
                let request = match opts.mode {
                    Mode::Counter => "inc\n".to_owned(),
                    Mode::Echo => format!("probe {n}\n"),
                };
                let sent = Instant::now();
                line.clear();
                let ok = stream.write_all(request.as_bytes()).is_ok()
                    && matches!(reader.read_line(&mut line), Ok(k) if k > 0);
                let received = Instant::now();
                let value = match (ok, opts.mode) {
                    (false, _) => None,
                    (true, Mode::Counter) => protocol::parse_reply(&line).ok(),
                    (true, Mode::Echo) => (line == request).then_some(n),
                };
                value.map(|value| Sample {
                    sent,
                    received,
                    value,
                })
            }
            None => None,
        };
        match answered {
            Some(sample) => {
                let mut log = shared.log();
                if opts.mode == Mode::Counter {
                    if let Some(previous) = log.last_value {
                        if sample.value <= previous {
                            log.regressions.push(Regression {
                                previous,
                                got: sample.value,
                            });
                        }
                    }
                }
                log.last_value = Some(sample.value);
                log.total += 1;
                log.samples.push(sample);
                drop(log);
                shared.answered.notify_all();
            }
            None => {
                shared.failures.fetch_add(1, Ordering::Relaxed);
                if conn.take().is_some() {
                    next += 1; // the connection broke: the service may have moved
                    if !reconnected_at_once {
                        // Connect again at once, as a client that loses its connection
                        // does; the pause is for attempts that found nobody (or a service
                        // that keeps failing them).
                        reconnected_at_once = true;
                        continue;
                    }
                }
            }
        }
        reconnected_at_once = false;
        thread::sleep(opts.spacing);
    }
}

fn connect(opts: &ProbeOptions, addr: SocketAddr) -> Option<(TcpStream, BufReader<TcpStream>)> {
    let stream = TcpStream::connect_timeout(&addr, opts.connect_timeout).ok()?;
    stream.set_nodelay(true).ok()?;
    stream.set_read_timeout(Some(opts.timeout)).ok()?;
    stream.set_write_timeout(Some(opts.timeout)).ok()?;
    let reader = BufReader::new(stream.try_clone().ok()?);
    Some((stream, reader))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counter::tests::MemCheckpoint;
    use crate::counter::Counter;
    use crate::server::serving_thread::Server;
    use crate::server::Service;

    fn at(base: Instant, us: u64) -> Instant {
        base + Duration::from_micros(us)
    }

    #[test]
    fn the_gap_spans_the_last_answer_before_and_the_first_after() {
        let b = Instant::now();
        let s = |sent, received, value| Sample {
            sent: at(b, sent),
            received: at(b, received),
            value,
        };
        let samples = [
            s(0, 50, 1),
            s(100, 150, 2),
            // In flight at the fault (200): answered after it, still "before".
            s(190, 240, 3),
            s(900, 950, 4),
            s(1000, 1040, 5),
        ];
        let g = gap(&samples, at(b, 200)).expect("gap");
        assert_eq!(g.last_before, at(b, 240));
        assert_eq!(g.first_after, at(b, 950));
        assert_eq!(g.outage(), Duration::from_micros(710));
        assert_eq!(gap(&samples, at(b, 5000)), None);
        assert_eq!(gap(&samples, b), None);
    }

    #[test]
    fn sees_an_outage_and_the_service_coming_back() {
        let ck = Arc::new(MemCheckpoint::default());
        let counter = Arc::new(Counter::new());
        counter.activate(&*ck).expect("activate");
        let svc = Service {
            counter: Arc::clone(&counter),
            checkpoint: ck.clone(),
            fail: None,
        };
        let server = Server::start(0, svc.clone()).expect("start");
        let port = server.port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let probe = Probe::start(ProbeOptions::new(addr, Mode::Counter)).expect("probe");
        let t0 = Instant::now();
        assert!(probe
            .wait_answer_after(t0, Duration::from_secs(5))
            .is_some());

        // "Fail over": the listener goes away for a while, then another one continues from
        // the checkpoint. The fault is the moment the old server is gone: requests sent while
        // it was stopping may still have been answered by it.
        server.stop();
        let fault = Instant::now();
        thread::sleep(Duration::from_millis(20));
        let again = Server::start(port, svc).expect("restart");
        let back = probe
            .wait_answer_after(fault, Duration::from_secs(5))
            .expect("answers again");
        let g = gap(&probe.take(), fault).expect("gap");
        assert!(g.outage() >= Duration::from_millis(20), "{g:?}");
        assert!(back.received >= g.first_after);
        let report = probe.stop();
        again.stop();
        assert!(report.answered >= 2);
        assert!(report.failures >= 1);
        assert_eq!(report.regressions, vec![]);
    }

    #[test]
    fn a_counter_going_back_is_reported() {
        let ck = Arc::new(MemCheckpoint::default());
        let counter = Arc::new(Counter::new());
        counter.activate(&*ck).expect("activate");
        let svc = Service {
            counter: Arc::clone(&counter),
            checkpoint: ck.clone(),
            fail: None,
        };
        let server = Server::start(0, svc).expect("start");
        let addr = SocketAddr::from(([127, 0, 0, 1], server.port()));
        let probe = Probe::start(ProbeOptions::new(addr, Mode::Counter)).expect("probe");
        assert!(probe
            .wait_answer_after(Instant::now(), Duration::from_secs(5))
            .is_some());
        // A new active that forgot the checkpoint starts from 0 again.
        counter.deactivate();
        let fresh = MemCheckpoint::default();
        counter.activate(&fresh).expect("activate");
        let since = Instant::now();
        assert!(probe
            .wait_answer_after(since, Duration::from_secs(5))
            .is_some());
        let report = probe.stop();
        server.stop();
        assert!(!report.regressions.is_empty());
    }
}
