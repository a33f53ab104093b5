//! `nines bench SCENARIO [--runs N] [--json]`: the process fault benchmark.
//!
//! Each run starts from a settled cluster (every SI fully assigned and confirmed, no fault
//! open), waits a random 0–50 ms after the probe saw the service (so faults land at random
//! phases of the probe's and the components' activity), injects one fault, and measures it
//! two ways:
//!
//! * **from outside**: a probe client calls the service continuously (one request in flight,
//!   sub-millisecond spacing); the outage is the time between the last answer to a request
//!   sent before the fault and the first answer to one sent after it;
//! * **from the event log**: the engine's `fault-detected` (detection instant), and its
//!   `service-recovered` and `repaired` events.
//!
//! `reaction_ms` is fault injection → the engine's detection instant, `recovery_ms` is
//! detection → the probe's first answer, `repair_ms` is the engine's failure → repaired. The
//! fault injection instant is this process's monotonic clock; it is put on the engine's clock
//! through the wall-clock anchor of the event log's `run-started` line (microsecond
//! resolution). Then the run waits for full repair (standby back, nothing open) before the next.
//!
//! The harness (a runtime in this process on a temporary state directory, the event-log
//! follower, the config generator) is shared with `nines demo`.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use nines_director::{ControlClient, RunOptions, Runtime, Status};
use nines_example_counter::probe::{self, Mode, Probe, ProbeOptions};
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use crate::counter_command::CounterCommand;

#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    /// The fault to inject.
    #[arg(value_enum)]
    pub(crate) scenario: Scenario,
    /// Number of runs (for `escalation`: climbs of the ladder, four faults each).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) runs: u32,
    /// Print one JSON object on stdout instead of a table (progress still goes to stderr).
    #[arg(long)]
    pub(crate) json: bool,
    /// Seed of the random fault phases [default: from the clock; printed].
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Pause between the probe's requests, in microseconds.
    #[arg(long, default_value_t = 100, value_name = "US")]
    pub(crate) spacing_us: u64,
    /// Keep the temporary state directory (event log, component logs) and print its path.
    #[arg(long)]
    pub(crate) keep: bool,
    /// Do not re-instantiate the failed SU automatically; repair it with the `repaired` admin
    /// operation once the service is back, so the repair does not compete with the failover
    /// for the CPU (sa-kill, hang, error-report: isolates the cost of the failover itself).
    #[arg(long)]
    pub(crate) manual_repair: bool,
    /// vm-*: the guest image (scripts/build-guest-image.sh) [default:
    /// target/tmp/nines-guest-image].
    #[arg(long, value_name = "DIR")]
    pub(crate) image: Option<std::path::PathBuf>,
}

/// The benchmark's fault scenarios.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// SIGKILL the active SA-aware counter in 2N: the standby takes over.
    SaKill,
    /// SIGKILL a non-SA-aware daemon in No-Redundancy: restarted in place.
    ProcessKill,
    /// SIGSTOP the active counter: its healthcheck (20 ms period and max duration) times out.
    Hang,
    /// The active counter reports an error recommending component failover.
    ErrorReport,
    /// Kill the same active component until the ladder climbs component restart → SU restart
    /// → SU failover.
    Escalation,
    /// Crash the active's node (2N across two testbed nodes; needs root): silent, then
    /// dead. Heartbeat loss, fence, failover; the node is restarted and rejoins.
    NodeKill,
    /// Cut the active's node off from the others (it keeps running until fenced).
    Partition,
    /// Switch the counter's SI over between the nodes; the probe talks only to its floating
    /// IP (CSI attribute `vip`), so the outage is the address's move.
    Vip,
    /// SIGKILL the leading director of two (elected in etcd); the standby takes over, the
    /// nodes join it, and the service must not notice.
    DirectorKill,
    /// Nested cluster (2N counter in two TCG guests, each the node of a VM on a host node):
    /// SIGKILL the QEMU of the active's guest; the other guest takes over, the VM reboots.
    VmKill,
    /// As vm-kill, but SIGSTOP the QEMU: the guest hangs, its heartbeats stop, and the VM is
    /// reset (killed and booted again).
    VmHang,
    /// UC9: the counter in a guest reports errors until its node's SU failovers escalate to
    /// a reset of that guest's VM.
    VmEscalation,
    /// Planned maintenance: lock the host of the VM whose guest holds the counter's active;
    /// the VM is live-migrated to the other host (the counter keeps running in it), and
    /// back home when the host is unlocked (fail-back).
    VmMigrate,
}

impl Scenario {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::SaKill => "sa-kill",
            Scenario::ProcessKill => "process-kill",
            Scenario::Hang => "hang",
            Scenario::ErrorReport => "error-report",
            Scenario::Escalation => "escalation",
            Scenario::NodeKill => "node-kill",
            Scenario::Partition => "partition",
            Scenario::Vip => "vip",
            Scenario::DirectorKill => "director-kill",
            Scenario::VmKill => "vm-kill",
            Scenario::VmHang => "vm-hang",
            Scenario::VmEscalation => "vm-escalation",
            Scenario::VmMigrate => "vm-migrate",
        }
    }

    /// Runs on the namespace testbed, with a cluster director and node agents.
    pub(crate) fn is_cluster(self) -> bool {
        matches!(
            self,
            Scenario::NodeKill | Scenario::Partition | Scenario::Vip | Scenario::DirectorKill
        )
    }
}

/// How a fault is injected into the active component.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Inject {
    /// SIGKILL its process.
    Kill,
    /// SIGSTOP its process (a hang: alive, silent).
    Stop,
    /// Ask it (the counter's `fail` request) to report an error with component failover.
    Report,
}

// ---------------------------------------------------------------------------------------------
// Configs

/// The counter's SI, CSI attributes and component, as the generated configs name them.
pub(crate) const COUNTER_SI: &str = "counter/si";

/// What to vary in the generated 2N counter config.
#[derive(Clone)]
pub(crate) struct CounterConfig {
    /// TCP port of the service.
    pub(crate) port: u16,
    /// `(period, max_duration)`, e.g. `("20ms", "20ms")`.
    pub(crate) healthcheck: (&'static str, &'static str),
    /// The component's default recovery (`failover`, `restart`).
    pub(crate) recovery: &'static str,
    /// Probation windows `(comp_restart, su_restart)` as YAML flow maps.
    pub(crate) escalation: (&'static str, &'static str),
    /// Enable the counter's `fail` request.
    pub(crate) fail_hook: bool,
    /// `auto_repair: false`: a failed SU waits for the `repaired` admin operation.
    pub(crate) manual_repair: bool,
    /// The address the active listens on (`None`: 127.0.0.1).
    pub(crate) host: Option<&'static str>,
    /// The SI's floating IP (`ADDR/PREFIX`), if any.
    pub(crate) vip: Option<String>,
}

impl CounterConfig {
    /// The 2N counter the demo and `sa-kill` use: failover on any fault, no fail-back (a
    /// repaired SU becomes standby, so a run ends with one outage, not two).
    pub(crate) fn two_n(port: u16) -> CounterConfig {
        CounterConfig {
            port,
            healthcheck: ("1s", "500ms"),
            recovery: "failover",
            escalation: ("{ max: 2, within: 10s }", "{ max: 1, within: 30s }"),
            fail_hook: false,
            manual_repair: false,
            host: None,
            vip: None,
        }
    }
}

/// A YAML scalar for `s`: JSON's double-quoted strings are valid YAML, escapes included.
pub(crate) fn yaml_str(s: &str) -> String {
    Value::from(s).to_string()
}

/// This very executable, by absolute path, for the generated configs' commands (the echo
/// daemon's, and the counter's unless `nines-counter` is beside it): they then work whatever
/// the current directory and PATH are.
pub(crate) fn self_exe() -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the nines binary: {e}"))?;
    exe.to_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("the nines binary's path {} is not UTF-8", exe.display()))
}

/// The 2N counter cluster: su-1 on node-1 (rank 1), su-2 on node-2, both on this host. SU
/// failovers are tolerated without limit per node, so repeated runs never escalate to a node
/// failover.
pub(crate) fn counter_config(counter: &CounterCommand, c: &CounterConfig) -> String {
    let node = "{ escalation: { su_failover: { max: 100000, within: 1s } } }";
    let mut fail_hook = if c.fail_hook {
        ", fail_hook: \"on\"".to_owned()
    } else {
        String::new()
    };
    if let Some(h) = c.host {
        fail_hook.push_str(&format!(", host: {}", yaml_str(h)));
    }
    if let Some(v) = &c.vip {
        fail_hook.push_str(&format!(", vip: {}", yaml_str(v)));
    }
    format!(
        "cluster: counter
nodes:
  node-1: {node}
  node-2: {node}
apps:
  counter:
    sgs:
      sg:
        redundancy: 2n
        fail_back: false
        auto_repair: {ar}
        escalation: {{ comp_restart: {cr}, su_restart: {sr} }}
        units:
          su-1: {{ node: node-1, rank: 1 }}
          su-2: {{ node: node-2, rank: 2 }}
        components:
          counterd:
            kind: sa-aware
            instantiate: {counter}
            timeouts: {{ instantiate: 10s, terminate: 2s, cleanup: 2s, callback: 1s }}
            healthcheck: {{ period: {hp}, max_duration: {hm} }}
            recovery: {rec}
    sis:
      si:
        sg: sg
        csis:
          main: {{ component: counterd, attrs: {{ port: \"{port}\"{fail_hook} }} }}
",
        counter = counter.yaml(),
        cr = c.escalation.0,
        sr = c.escalation.1,
        hp = c.healthcheck.0,
        hm = c.healthcheck.1,
        rec = c.recovery,
        port = c.port,
        ar = !c.manual_repair,
    )
}

/// The echo daemon alone in No-Redundancy, restarted in place on failure (restarts are
/// tolerated without limit, so every run is the same recovery).
fn echo_config(exe: &str, port: u16) -> String {
    format!(
        "cluster: echo
nodes: [node-1]
apps:
  echo:
    sgs:
      sg:
        redundancy: no-redundancy
        escalation: {{ comp_restart: {{ max: 100000, within: 1s }} }}
        units:
          su-1: {{ node: node-1, rank: 1 }}
        components:
          daemon:
            kind: process
            instantiate: [{exe}, example, daemon, --port, \"{port}\"]
            timeouts: {{ terminate: 2s, cleanup: 2s }}
            recovery: restart
    sis:
      si: {{ sg: sg, csis: {{ main: {{ component: daemon }} }} }}
",
        exe = yaml_str(exe),
    )
}

/// A port nothing listens on right now (the kernel's pick), for the service under test.
pub(crate) fn free_port() -> Result<u16, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free TCP port: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The harness: a runtime in this process, its event log, its status

/// Maps this process's monotonic instants onto the engine's clock (nanoseconds).
#[derive(Clone, Copy, Debug)]
pub(crate) struct EngineClock {
    base: Instant,
    base_ns: i128,
}

impl EngineClock {
    /// From an event-log line's `t_ns` and `wall` (the same moment on both clocks), and a
    /// pair of readings of this process's monotonic and wall clocks taken together.
    fn from_anchor(t_ns: u64, wall: &str, now: Instant, now_wall: SystemTime) -> Option<Self> {
        let line_wall = parse_rfc3339_ns(wall)?;
        let now_wall = i128::try_from(now_wall.duration_since(UNIX_EPOCH).ok()?.as_nanos()).ok()?;
        Some(EngineClock {
            base: now,
            base_ns: i128::from(t_ns) + (now_wall - line_wall),
        })
    }

    /// The engine instant (ns) of `at`.
    pub(crate) fn ns(&self, at: Instant) -> i128 {
        match at.checked_duration_since(self.base) {
            Some(d) => self.base_ns + d.as_nanos() as i128,
            None => self.base_ns - self.base.duration_since(at).as_nanos() as i128,
        }
    }
}

/// Nanoseconds since the Unix epoch of `2025-01-31T12:34:56.789012Z` (the event log's format:
/// UTC, optional fraction).
fn parse_rfc3339_ns(s: &str) -> Option<i128> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (hms, frac) = match time.split_once('.') {
        Some((a, b)) => (a, b),
        None => (time, ""),
    };
    let mut t = hms.splitn(3, ':');
    let (hh, mm, ss): (i64, i64, i64) = (
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || frac.len() > 9 {
        return None;
    }
    let frac_ns: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse::<i64>().ok()? * 10_i64.pow(9 - frac.len() as u32)
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(i128::from(secs) * 1_000_000_000 + i128::from(frac_ns))
}

/// A runtime started in this process on a temporary state directory, with its event log
/// followed line by line. Stops its components and removes the directory when dropped.
pub(crate) struct Harness {
    rt: tokio::runtime::Runtime,
    runtime: Option<Runtime>,
    /// Event-log lines as written. Parsed on this thread, when they are pulled: the follower
    /// task runs on the runtime under test, and on a host whose scheduler packs threads onto
    /// one CPU any work it does during a failover is part of the measured outage.
    lines: mpsc::Receiver<Arc<str>>,
    /// Every event-log line of this run so far, parsed, in order.
    pub(crate) history: Vec<Value>,
    control: PathBuf,
    dir: PathBuf,
    keep: bool,
    /// This process's clock on the engine's.
    pub(crate) clock: EngineClock,
}

impl Harness {
    /// Validates `config` and starts it on a fresh state directory named after `label`.
    pub(crate) fn start(config: &str, label: &str, keep: bool) -> Result<Harness, String> {
        Self::start_with(config, label, keep, None)
    }

    /// As [`Harness::start`]; with `cluster`, as a cluster director whose nodes join it.
    pub(crate) fn start_with(
        config: &str,
        label: &str,
        keep: bool,
        cluster: Option<nines_director::cluster::ClusterOptions>,
    ) -> Result<Harness, String> {
        let model = match nines_model::load(config, "<generated>") {
            Ok(l) => l.model,
            Err(errors) => {
                let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                return Err(format!(
                    "the generated config is invalid (a bug):\n{}",
                    text.join("\n")
                ));
            }
        };
        let dir = std::env::temp_dir().join(format!("nines-{label}-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
        }
        // The runtime `nines run` uses, so the benchmark measures what users run.
        let rt = crate::async_runtime()?;
        let runtime = rt
            .block_on(Runtime::start(RunOptions {
                model: Arc::new(model),
                state_dir: dir.clone(),
                cluster,
            }))
            .map_err(|e| e.to_string())?;
        let (backlog, mut rx) = runtime
            .subscribe(runtime.first_seq())
            .map_err(|e| format!("cannot follow the event log: {e}"))?;
        let (tx, lines) = mpsc::channel();
        let mut next = 0;
        let mut forward = move |seq: u64, json: &Arc<str>| -> bool {
            if seq < next {
                return true;
            }
            next = seq + 1;
            tx.send(Arc::clone(json)).is_ok()
        };
        for l in &backlog {
            forward(l.seq, &l.json);
        }
        rt.spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(l) => {
                        if !forward(l.seq, &l.json) {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        eprintln!("nines: the event follower missed {n} lines");
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        let control = runtime.control_socket().to_path_buf();
        let mut h = Harness {
            rt,
            runtime: Some(runtime),
            lines,
            history: Vec::new(),
            control,
            dir,
            keep,
            clock: EngineClock {
                base: Instant::now(),
                base_ns: 0,
            },
        };
        let first = h.wait_event(0, Duration::from_secs(5), |v| v["event"] == "run-started")?;
        let line = &h.history[first];
        let (now, now_wall) = (Instant::now(), SystemTime::now());
        h.clock = line["t_ns"]
            .as_u64()
            .zip(line["wall"].as_str())
            .and_then(|(t, w)| EngineClock::from_anchor(t, w, now, now_wall))
            .ok_or("the event log's run-started line has no usable t_ns/wall")?;
        Ok(h)
    }

    /// The state directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves lines that arrived into `history`, waiting up to `timeout` for the first one.
    fn pull(&mut self, timeout: Duration) {
        if let Ok(line) = self.lines.recv_timeout(timeout) {
            self.keep_line(&line);
            while let Ok(line) = self.lines.try_recv() {
                self.keep_line(&line);
            }
        }
    }

    /// Parses `line` into `history`; a line that does not parse is skipped, as every reader
    /// of the log does (a torn last line after a crash).
    fn keep_line(&mut self, line: &str) {
        if let Ok(v) = serde_json::from_str::<Value>(line) {
            self.history.push(v);
        }
    }

    /// Index of the first line at or after `from` in `history` that satisfies `pred`,
    /// waiting for new lines up to `timeout`.
    pub(crate) fn wait_event(
        &mut self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<usize, String> {
        let deadline = Instant::now() + timeout;
        let mut scanned = from;
        loop {
            if let Some(i) = self.history[scanned.min(self.history.len())..]
                .iter()
                .position(&pred)
            {
                return Ok(scanned + i);
            }
            scanned = self.history.len().max(from);
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Err(format!(
                    "nothing expected in the event log within {timeout:?}"
                ));
            };
            self.pull(left.min(Duration::from_millis(50)));
        }
    }

    /// Takes any lines that arrived, without waiting.
    pub(crate) fn drain(&mut self) {
        self.pull(Duration::ZERO);
    }

    /// The status document, from the control socket (as `nines status` gets it).
    pub(crate) fn status(&self) -> Result<Status, String> {
        ControlClient::connect(&self.control)
            .and_then(|mut c| c.status())
            .map_err(|e| e.to_string())
    }

    /// Runs an admin operation, as `nines adm OP ENTITY` does.
    pub(crate) fn adm(&self, op: &str, entity: &str) -> Result<(), String> {
        ControlClient::connect(&self.control)
            .and_then(|mut c| c.adm(op, entity))
            .map_err(|e| format!("adm {op} {entity}: {e}"))
    }

    /// Polls the status until `pred` holds; the last status seen on timeout is described.
    pub(crate) fn wait_status(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Status) -> bool,
    ) -> Result<Status, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status()?;
            if pred(&s) {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{what}: not reached within {timeout:?}; last status: {}",
                    describe(&s)
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops every component and the runtime; removes the state directory unless kept.
    pub(crate) fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            self.rt.block_on(runtime.shutdown());
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One line about the SIs, for error messages.
fn describe(s: &Status) -> String {
    let mut parts = vec![format!("{} open faults", s.open_faults)];
    for sg in &s.sgs {
        for su in &sg.sus {
            parts.push(format!(
                "{} {}/{}/{}",
                su.path, su.presence, su.readiness, su.oper
            ));
        }
        for si in &sg.sis {
            let a: Vec<String> = si
                .assignments
                .iter()
                .map(|a| {
                    format!(
                        "{}={}{}",
                        a.su,
                        a.ha_state,
                        if a.confirmed { "" } else { "?" }
                    )
                })
                .collect();
            parts.push(format!("{} {} [{}]", si.path, si.state, a.join(" ")));
        }
    }
    parts.join("; ")
}

/// Whether `si` is settled: fully assigned with one confirmed active and `standbys` confirmed
/// standbys, every component of the SG running, and no fault waiting for recovery or repair.
pub(crate) fn settled(s: &Status, si: &str, standbys: usize) -> bool {
    let Some(sg) = s.sgs.iter().find(|g| g.sis.iter().any(|x| x.path == si)) else {
        return false;
    };
    let Some(si) = sg.sis.iter().find(|x| x.path == si) else {
        return false;
    };
    let count = |ha: &str| {
        si.assignments
            .iter()
            .filter(|a| a.ha_state == ha && a.confirmed)
            .count()
    };
    s.open_faults == 0
        && si.state == "fully-assigned"
        && si.assignments.len() == 1 + standbys
        && count("active") == 1
        && count("standby") == standbys
        && sg.sus.iter().all(|su| {
            su.components
                .iter()
                .all(|c| c.presence == "instantiated" && c.pid.is_some())
        })
}

/// The component serving `si` actively, and its pid.
pub(crate) fn active_component(s: &Status, si: &str) -> Option<(String, u32)> {
    let su = s.holder(si, "active")?;
    let c = s.su(su)?.components.first()?;
    Some((c.path.clone(), c.pid?))
}

/// Sends `signal` to `pid`.
pub(crate) fn signal(pid: u32, signal: rustix::process::Signal) -> Result<(), String> {
    let p = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| format!("bad pid {pid}"))?;
    rustix::process::kill_process(p, signal).map_err(|e| format!("cannot signal pid {pid}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Measuring one fault

/// What one fault cost.
#[derive(Clone, Debug)]
pub(crate) struct Measured {
    /// The engine's fault id.
    pub(crate) fault: u64,
    /// The recovery the engine carried out.
    pub(crate) recovery: String,
    /// When the fault was injected (this process's clock).
    pub(crate) fault_at: Instant,
    /// The probe's gap around the fault.
    pub(crate) gap: probe::Gap,
    /// Fault injection → the engine's detection instant.
    pub(crate) reaction: Duration,
    /// Detection → the probe's first answer.
    pub(crate) recovery_time: Duration,
    /// The engine's failure → repaired.
    pub(crate) repair_ms: f64,
    /// The engine's failure → service recovered.
    pub(crate) engine_outage_ms: Option<f64>,
    /// Indices of this fault's lines in the harness history (from the injection on).
    pub(crate) lines: std::ops::Range<usize>,
}

/// Injection → detection, and detection → service back, from the detection line.
fn split_times(
    h: &Harness,
    detected: &Value,
    fault_at: Instant,
    back: Instant,
) -> (Duration, Duration) {
    let detected_ns = detected["detected_ns"]
        .as_u64()
        .or_else(|| detected["t_ns"].as_u64())
        .map(i128::from)
        .unwrap_or_else(|| h.clock.ns(fault_at));
    let nanos = |x: i128| Duration::from_nanos(u64::try_from(x.max(0)).unwrap_or(u64::MAX));
    (
        nanos(detected_ns - h.clock.ns(fault_at)),
        nanos(h.clock.ns(back) - detected_ns),
    )
}

/// The patience for each milestone of a fault: generous, because a loaded machine (CI) is
/// slow, and a missing milestone is a bug worth a clear message, not a hang.
const MILESTONE: Duration = Duration::from_secs(30);

/// The service under test: its SI, how many standbys it has when settled, and where the probe
/// reaches it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target<'a> {
    /// Entity path of the SI.
    pub(crate) si: &'a str,
    /// Standby assignments of a settled SI.
    pub(crate) standbys: usize,
    /// The service's address.
    pub(crate) addr: SocketAddr,
    /// Repair the failed SU with the `repaired` admin operation once the service is back
    /// (the config has `auto_repair: false`).
    pub(crate) manual_repair: bool,
}

/// Injects `how` into the active component of the target after `delay` (the random phase),
/// follows the fault to full repair, and returns what it cost.
pub(crate) fn one_fault(
    h: &mut Harness,
    probe: &Probe,
    target: Target<'_>,
    how: Inject,
    delay: Duration,
) -> Result<Measured, String> {
    let Target {
        si,
        standbys,
        addr,
        manual_repair,
    } = target;
    let settled_at = Instant::now();
    let status = h.wait_status(Duration::from_secs(60), "a settled cluster", |s| {
        settled(s, si, standbys)
    })?;
    let (comp, pid) =
        active_component(&status, si).ok_or_else(|| format!("{si} has no active component"))?;
    probe
        .wait_answer_after(settled_at, MILESTONE)
        .ok_or("the probe gets no answer from the settled service")?;
    // For an error report, connect first: only the report is the fault.
    let mut reporter = match how {
        Inject::Report => Some(connect_active(addr)?),
        _ => None,
    };
    std::thread::sleep(delay);
    h.drain();
    let mark = h.history.len();
    let fault_at = Instant::now();
    match how {
        Inject::Kill => signal(pid, rustix::process::Signal::KILL)?,
        Inject::Stop => signal(pid, rustix::process::Signal::STOP)?,
        Inject::Report => {
            use std::io::Write;
            if let Some(s) = reporter.as_mut() {
                s.write_all(b"fail\n")
                    .map_err(|e| format!("cannot send the fail request: {e}"))?;
            }
        }
    }
    // The service first: the probe is silent until it is back, so this thread sleeps through
    // the outage instead of waking for every event-log line the failover writes (the
    // engine's timeline is read afterwards; it carries its own instants).
    let back = probe.wait_answer_after(fault_at, MILESTONE);
    let su = comp
        .rsplit_once('/')
        .map_or(comp.as_str(), |(su, _)| su)
        .to_owned();
    let d = h
        .wait_event(mark, MILESTONE, |v| {
            v["event"] == "fault-detected"
                && v["entity"].as_str().is_some_and(|e| e == comp || e == su)
        })
        .map_err(|e| format!("no fault detected for {comp}: {e}"))?;
    let detected = h.history[d].clone();
    let fault = detected["fault"]
        .as_u64()
        .ok_or("fault-detected without a fault id")?;
    let run = detected["run"].clone();
    let recovery = detected["recovery"].as_str().unwrap_or("?").to_owned();

    back.ok_or_else(|| format!("the service did not come back within {MILESTONE:?}"))?;
    let this =
        |v: &Value, event: &str| v["event"] == event && v["fault"] == fault && v["run"] == run;
    let r = h
        .wait_event(mark, MILESTONE, |v| this(v, "service-recovered"))
        .map_err(|e| format!("fault #{fault}: no service-recovered: {e}"))?;
    let engine_outage_ms = h.history[r]["outage_ms"].as_f64();
    if manual_repair {
        // The service is back (the probe said so above): only now repair the failed SU.
        h.adm("repaired", &su)?;
    }
    let p = h
        .wait_event(mark, Duration::from_secs(60), |v| this(v, "repaired"))
        .map_err(|e| format!("fault #{fault}: not repaired: {e}"))?;
    let repair_ms = h.history[p]["repair_ms"].as_f64().unwrap_or(f64::NAN);
    h.wait_status(Duration::from_secs(60), "full repair", |s| {
        settled(s, si, standbys)
    })?;
    h.drain();
    drop(reporter);
    let samples = probe.take();
    let gap = probe::gap(&samples, fault_at).ok_or("the probe has no answer before the fault")?;
    let (reaction, recovery_time) = split_times(h, &detected, fault_at, gap.first_after);
    Ok(Measured {
        fault,
        recovery,
        fault_at,
        gap,
        reaction,
        recovery_time,
        repair_ms,
        engine_outage_ms,
        lines: mark..h.history.len(),
    })
}

fn connect_active(addr: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map_err(|e| format!("cannot connect to the active counter at {addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

// ---------------------------------------------------------------------------------------------
// Statistics

/// Percentiles of one metric over the runs, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Summary {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

/// A metric's samples at microsecond resolution (hdrhistogram, 3 significant digits).
pub(crate) struct Metric {
    hist: Histogram<u64>,
}

impl Metric {
    fn new() -> Result<Metric, String> {
        // 1 µs to 1 hour: anything outside is clamped, which for this benchmark means broken.
        let hist = Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .map_err(|e| format!("cannot create a histogram: {e}"))?;
        Ok(Metric { hist })
    }

    fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.hist.saturating_record(us);
    }

    fn record_ms(&mut self, ms: f64) {
        if ms.is_finite() && ms >= 0.0 {
            self.record(Duration::from_secs_f64(ms / 1e3));
        }
    }

    pub(crate) fn summary(&self) -> Option<Summary> {
        if self.hist.is_empty() {
            return None;
        }
        let ms = |us: u64| (us as f64) / 1e3;
        Some(Summary {
            p50: ms(self.hist.value_at_quantile(0.50)),
            p90: ms(self.hist.value_at_quantile(0.90)),
            p99: ms(self.hist.value_at_quantile(0.99)),
            max: ms(self.hist.max()),
        })
    }
}

/// The metrics a benchmark reports, over every fault it injected.
pub(crate) struct Metrics {
    pub(crate) outage: Metric,
    pub(crate) reaction: Metric,
    pub(crate) recovery: Metric,
    pub(crate) repair: Metric,
    pub(crate) engine_outage: Metric,
}

impl Metrics {
    pub(crate) fn new() -> Result<Metrics, String> {
        Ok(Metrics {
            outage: Metric::new()?,
            reaction: Metric::new()?,
            recovery: Metric::new()?,
            repair: Metric::new()?,
            engine_outage: Metric::new()?,
        })
    }

    pub(crate) fn record(&mut self, m: &Measured) {
        self.outage.record(m.gap.outage());
        self.reaction.record(m.reaction);
        self.recovery.record(m.recovery_time);
        self.repair.record_ms(m.repair_ms);
        if let Some(o) = m.engine_outage_ms {
            self.engine_outage.record_ms(o);
        }
    }
}

/// A JSON object with its keys in the order given. serde_json's own map sorts keys, and the
/// report reads best in the documented order (`scenario`, `runs`, the metrics, ...).
pub(crate) fn object(fields: &[(&str, String)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", Value::from(*k)))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// `{"p50":…,"p90":…,"p99":…,"max":…}` in milliseconds, rounded to the microsecond; nulls when
/// there was no sample.
pub(crate) fn summary_json(s: Option<Summary>) -> String {
    let r = |x: f64| json!((x * 1e3).round() / 1e3).to_string();
    let (p50, p90, p99, max) = match s {
        Some(s) => (r(s.p50), r(s.p90), r(s.p99), r(s.max)),
        None => Default::default(),
    };
    let or_null = |v: String| if v.is_empty() { "null".to_owned() } else { v };
    object(&[
        ("p50", or_null(p50)),
        ("p90", or_null(p90)),
        ("p99", or_null(p99)),
        ("max", or_null(max)),
    ])
}

/// The 1-minute load average, to judge how busy the machine was during the benchmark.
pub(crate) fn load_avg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A small deterministic generator (SplitMix64) for the fault phases, so `--seed` replays the
/// same phases.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// The next 64 random bits.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A delay uniformly in 0..=max.
    pub(crate) fn delay(&mut self, max: Duration) -> Duration {
        let us = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(self.next() % (us + 1))
    }
}

/// The percentile table of the human-readable report: one row per metric, `-` where it
/// has no sample.
pub(crate) fn print_table(rows: &[(&str, &Metric, &str)]) {
    outln!(
        "{:<18}{:>10}{:>10}{:>10}{:>10}",
        "",
        "p50",
        "p90",
        "p99",
        "max"
    );
    for (label, metric, what) in rows {
        match metric.summary() {
            Some(s) => outln!(
                "{label:<18}{:>10.3}{:>10.3}{:>10.3}{:>10.3}   {what}",
                s.p50,
                s.p90,
                s.p99,
                s.max
            ),
            None => outln!(
                "{label:<18}{:>10}{:>10}{:>10}{:>10}   {what}",
                "-",
                "-",
                "-",
                "-"
            ),
        }
    }
}

/// Fails (with the first regression) if the counter ever went back: the numbers of a run
/// that lost increments are still worth seeing, never worth trusting.
pub(crate) fn no_regressions(report: &probe::ProbeReport) -> Result<(), String> {
    match report.regressions.first() {
        None => Ok(()),
        Some(r) => Err(format!(
            "the counter went back {} times (first: from {} to {}): acknowledged increments \
             were lost",
            report.regressions.len(),
            r.previous,
            r.got
        )),
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------------------------
// The command

/// How far the random fault phase reaches after the probe saw the service.
pub(crate) const MAX_PHASE: Duration = Duration::from_millis(50);

/// The escalation ladder's longest climb: component restart twice, SU restart, SU failover;
/// one more fault is allowed before the run is declared broken.
const MAX_LADDER: usize = 6;

pub(crate) fn bench(args: &BenchArgs) -> ExitCode {
    match run_bench(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nines bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_bench(args: &BenchArgs) -> Result<(), String> {
    if matches!(
        args.scenario,
        Scenario::VmKill | Scenario::VmHang | Scenario::VmEscalation | Scenario::VmMigrate
    ) {
        return crate::bench_vm::run(args);
    }
    if args.scenario.is_cluster() {
        return crate::bench_cluster::run(args);
    }
    let name = args.scenario.name();
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut rng = Rng(seed);
    let exe = self_exe()?;
    // Looked for only by the scenarios that run the counter (one of them, once).
    let counter = || CounterCommand::beside(&exe);
    let port = free_port()?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let base = CounterConfig {
        manual_repair: args.manual_repair,
        ..CounterConfig::two_n(port)
    };
    let (config, mode, standbys, how) = match args.scenario {
        Scenario::SaKill => (
            counter_config(&counter(), &base),
            Mode::Counter,
            1,
            Inject::Kill,
        ),
        Scenario::Hang => (
            counter_config(
                &counter(),
                &CounterConfig {
                    healthcheck: ("20ms", "20ms"),
                    ..base.clone()
                },
            ),
            Mode::Counter,
            1,
            Inject::Stop,
        ),
        Scenario::ErrorReport => (
            counter_config(
                &counter(),
                &CounterConfig {
                    fail_hook: true,
                    ..base.clone()
                },
            ),
            Mode::Counter,
            1,
            Inject::Report,
        ),
        Scenario::Escalation => (
            counter_config(
                &counter(),
                &CounterConfig {
                    recovery: "restart",
                    ..base.clone()
                },
            ),
            Mode::Counter,
            1,
            Inject::Kill,
        ),
        Scenario::ProcessKill => (echo_config(&exe, port), Mode::Echo, 0, Inject::Kill),
        Scenario::NodeKill
        | Scenario::Partition
        | Scenario::Vip
        | Scenario::DirectorKill
        | Scenario::VmKill
        | Scenario::VmHang
        | Scenario::VmEscalation
        | Scenario::VmMigrate => return Err(format!("{name} runs on the cluster testbed")),
    };
    let si = match args.scenario {
        Scenario::ProcessKill => "echo/si",
        _ => COUNTER_SI,
    };
    if args.manual_repair && matches!(args.scenario, Scenario::ProcessKill | Scenario::Escalation) {
        return Err(format!(
            "--manual-repair applies to sa-kill, hang and error-report, where the repair is not \
             the recovery; {name} recovers by restarting"
        ));
    }
    let target = Target {
        si,
        standbys,
        addr,
        manual_repair: args.manual_repair,
    };
    eprintln!(
        "bench {name}: {} runs, seed {seed}, service on {addr}, probe spacing {} us",
        args.runs, args.spacing_us
    );
    let mut h = Harness::start(&config, &format!("bench-{name}"), args.keep)?;
    if args.keep {
        eprintln!("bench {name}: state directory {}", h.dir().display());
    }
    h.wait_status(Duration::from_secs(60), "the cluster's start", |s| {
        settled(s, si, standbys)
    })?;
    let probe = Probe::start(ProbeOptions {
        spacing: Duration::from_micros(args.spacing_us),
        ..ProbeOptions::new(addr, mode)
    })
    .map_err(|e| format!("cannot start the probe: {e}"))?;

    let mut metrics = Metrics::new()?;
    let mut ladders: Vec<Vec<String>> = Vec::new();
    // Per recovery step: the escalation scenario's ladder has different costs per rung.
    let mut steps: std::collections::BTreeMap<String, Metrics> = Default::default();
    let mut faults = 0u64;
    let started = Instant::now();
    for run in 1..=args.runs {
        let mut ladder = Vec::new();
        loop {
            let m = one_fault(&mut h, &probe, target, how, rng.delay(MAX_PHASE))
                .map_err(|e| format!("run {run}: {e}"))?;
            faults += 1;
            metrics.record(&m);
            match steps.get_mut(&m.recovery) {
                Some(step) => step.record(&m),
                None => {
                    let mut step = Metrics::new()?;
                    step.record(&m);
                    steps.insert(m.recovery.clone(), step);
                }
            }
            eprintln!(
                "bench {name}: run {run}/{}{}: {} -> {}: outage {:.3} ms (engine {}), \
                 reaction {:.3} ms, recovery {:.3} ms, repair {:.1} ms",
                args.runs,
                if args.scenario == Scenario::Escalation {
                    format!(" fault {}", ladder.len() + 1)
                } else {
                    String::new()
                },
                m.fault,
                m.recovery,
                ms(m.gap.outage()),
                m.engine_outage_ms
                    .map_or("-".to_owned(), |o| format!("{o:.3} ms")),
                ms(m.reaction),
                ms(m.recovery_time),
                m.repair_ms,
            );
            ladder.push(m.recovery.clone());
            let done = args.scenario != Scenario::Escalation
                || !matches!(m.recovery.as_str(), "component-restart" | "su-restart");
            if done {
                break;
            }
            if ladder.len() >= MAX_LADDER {
                return Err(format!(
                    "run {run}: {} faults without reaching an SU failover: {}",
                    ladder.len(),
                    ladder.join(" -> ")
                ));
            }
        }
        if args.scenario == Scenario::Escalation {
            eprintln!(
                "bench {name}: run {run}: {} steps: {}",
                ladder.len(),
                ladder.join(" -> ")
            );
        }
        ladders.push(ladder);
    }
    let report = probe.stop();
    h.shutdown();
    let elapsed = started.elapsed();
    let load = load_avg();
    let mut fields = vec![
        ("scenario", Value::from(name).to_string()),
        ("runs", args.runs.to_string()),
        ("outage_ms", summary_json(metrics.outage.summary())),
        ("reaction_ms", summary_json(metrics.reaction.summary())),
        ("recovery_ms", summary_json(metrics.recovery.summary())),
        ("repair_ms", summary_json(metrics.repair.summary())),
        ("load_avg", json!(load).to_string()),
        ("faults", faults.to_string()),
        (
            "engine_outage_ms",
            summary_json(metrics.engine_outage.summary()),
        ),
        ("seed", seed.to_string()),
        ("counter_regressions", report.regressions.len().to_string()),
        (
            "probe",
            object(&[
                ("answered", report.answered.to_string()),
                ("failed_attempts", report.failures.to_string()),
                ("spacing_us", args.spacing_us.to_string()),
            ]),
        ),
    ];
    if args.scenario == Scenario::Escalation {
        fields.push(("ladders", json!(ladders).to_string()));
        let per_step: Vec<(&str, String)> = steps
            .iter()
            .map(|(name, m)| {
                let j = object(&[
                    ("faults", m.outage.hist.len().to_string()),
                    ("outage_ms", summary_json(m.outage.summary())),
                    ("reaction_ms", summary_json(m.reaction.summary())),
                    ("recovery_ms", summary_json(m.recovery.summary())),
                    ("repair_ms", summary_json(m.repair.summary())),
                ]);
                (name.as_str(), j)
            })
            .collect();
        fields.push(("steps", object(&per_step)));
    }
    let out = object(&fields);
    // Stop on nothing but print everything, then fail if the counter ever went back: the
    // numbers of a run that lost increments are still worth seeing, never worth trusting.
    let lost = no_regressions(&report);
    if args.json {
        outln!("{out}");
        return lost;
    }
    outln!(
        "bench {name}: {} runs, {faults} faults in {:.1} s, seed {seed}, load average {}",
        args.runs,
        elapsed.as_secs_f64(),
        load.map_or("-".to_owned(), |l| format!("{l:.2}"))
    );
    let rows = [
        (
            "outage_ms",
            &metrics.outage,
            "probe: last answer before the fault to the first after",
        ),
        (
            "reaction_ms",
            &metrics.reaction,
            "fault injected to the engine's detection",
        ),
        (
            "recovery_ms",
            &metrics.recovery,
            "detection to the probe's first answer",
        ),
        ("repair_ms", &metrics.repair, "engine: failure to repaired"),
        (
            "engine_outage_ms",
            &metrics.engine_outage,
            "engine: failure to service recovered",
        ),
    ];
    print_table(&rows);
    if args.scenario == Scenario::Escalation {
        for (i, l) in ladders.iter().enumerate() {
            outln!("run {}: {} steps: {}", i + 1, l.len(), l.join(" -> "));
        }
        for (name, m) in &steps {
            if let (Some(o), Some(r)) = (m.outage.summary(), m.repair.summary()) {
                outln!(
                    "{name}: {} faults, outage p50 {:.3} ms max {:.3} ms, repair p50 {:.1} ms",
                    m.outage.hist.len(),
                    o.p50,
                    o.max,
                    r.p50
                );
            }
        }
    }
    match mode {
        Mode::Counter => outln!(
            "probe: {} answers, {} failed attempts, {} regressions of the counter",
            report.answered,
            report.failures,
            report.regressions.len()
        ),
        Mode::Echo => outln!(
            "probe: {} answers, {} failed attempts",
            report.answered,
            report.failures
        ),
    }
    lost
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_parses_to_unix_nanoseconds() {
        assert_eq!(
            parse_rfc3339_ns("1970-01-01T00:00:01.000000Z"),
            Some(1_000_000_000)
        );
        assert_eq!(
            parse_rfc3339_ns("2000-03-01T00:00:00Z"),
            Some(951_868_800 * 1_000_000_000)
        );
        assert_eq!(
            parse_rfc3339_ns("2025-01-31T12:34:56.789012Z"),
            Some(1_738_326_896_789_012_000)
        );
        assert_eq!(parse_rfc3339_ns("2025-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_ns("yesterday"), None);
    }

    #[test]
    fn the_engine_clock_follows_the_anchor() {
        let now = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(10);
        // The line was written at engine time 5 ms, wall time 9.5 s: now (10 s) is 505 ms.
        let c = EngineClock::from_anchor(5_000_000, "1970-01-01T00:00:09.500000Z", now, wall)
            .expect("anchor");
        assert_eq!(c.ns(now), 505_000_000);
        assert_eq!(c.ns(now + Duration::from_millis(1)), 506_000_000);
        assert_eq!(c.ns(now - Duration::from_millis(5)), 500_000_000);
    }

    #[test]
    fn percentiles_are_in_milliseconds_at_microsecond_resolution() {
        let mut m = Metric::new().expect("histogram");
        assert_eq!(m.summary(), None);
        for us in 1..=100u64 {
            m.record(Duration::from_micros(us * 10));
        }
        m.record_ms(f64::NAN);
        let s = m.summary().expect("samples");
        assert_eq!(s.p50, 0.5);
        assert_eq!(s.p90, 0.9);
        assert_eq!(s.p99, 0.99);
        assert_eq!(s.max, 1.0);
        let j: Value = serde_json::from_str(&summary_json(Some(s))).expect("json");
        assert_eq!(j["p99"], json!(0.99));
        assert_eq!(
            summary_json(None),
            r#"{"p50":null,"p90":null,"p99":null,"max":null}"#
        );
        assert!(summary_json(Some(s)).starts_with(r#"{"p50":0.5,"p90":0.9,"#));
    }

    #[test]
    fn generated_configs_are_valid() {
        let exe = "/opt/nines dir/bin/nines";
        for c in [
            CounterConfig::two_n(7100),
            CounterConfig {
                healthcheck: ("20ms", "20ms"),
                recovery: "restart",
                fail_hook: true,
                ..CounterConfig::two_n(7100)
            },
        ] {
            let text = counter_config(&CounterCommand::of_nines(exe), &c);
            let loaded = nines_model::load(&text, "gen.yaml");
            assert!(loaded.is_ok(), "{text}\n{:?}", loaded.err());
        }
        let text = echo_config(exe, 7200);
        assert!(nines_model::load(&text, "gen.yaml").is_ok(), "{text}");
    }

    #[test]
    fn fault_phases_are_reproducible_and_bounded() {
        let (mut a, mut b) = (Rng(7), Rng(7));
        for _ in 0..1000 {
            let d = a.delay(MAX_PHASE);
            assert_eq!(d, b.delay(MAX_PHASE));
            assert!(d <= MAX_PHASE);
        }
    }
}
