//! Shared test harness: a temp dir per test, a model from YAML, an agent, report matching and
//! the zombie check every test ends with.
#![allow(dead_code)]

pub mod sa_component;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nines_agent::{AgentHandle, AgentOptions, Clock, Report};
use nines_engine::{Command, Input, Outcome};
use nines_model::{CompId, CsiId, EntityRef, Model, NodeId};
use tokio::sync::mpsc::UnboundedReceiver;

/// Upper bound of any one test.
pub const TEST_LIMIT: Duration = Duration::from_secs(30);

/// A directory removed when dropped (also when the test fails).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "nines-agent-{}-{}-{}",
            name,
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A YAML double-quoted string.
pub fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A YAML flow list of quoted strings.
pub fn argv(items: &[&str]) -> String {
    let items: Vec<String> = items.iter().map(|s| q(s)).collect();
    format!("[{}]", items.join(", "))
}

/// One component entry (`extra` are further `key: value` lines of the component).
pub fn comp(name: &str, kind: &str, instantiate: &str, extra: &[String]) -> String {
    let mut s = format!(
        "          {name}:\n            kind: {kind}\n            instantiate: {instantiate}\n"
    );
    for line in extra {
        s.push_str(&format!("            {line}\n"));
    }
    s
}

/// A cluster with nodes n1 and n2, app `app` with SG `sg` (units `su` on n1 and `su2` on n2),
/// the given components, and SI `si` with CSI `main` served by component `c` with `attrs`.
pub fn config(components: &str, attrs: &str) -> String {
    format!(
        "cluster: t
nodes: [n1, n2]
apps:
  app:
    sgs:
      sg:
        redundancy: no-redundancy
        units:
          su: {{ node: n1 }}
          su2: {{ node: n2 }}
        components:
{components}    sis:
      si:
        sg: sg
        csis:
          main: {{ component: c, attrs: {{ {attrs} }} }}
"
    )
}

pub fn load(yaml: &str) -> Arc<Model> {
    match nines_model::load(yaml, "t.yaml") {
        Ok(loaded) => Arc::new(loaded.model),
        Err(errors) => panic!("bad test config: {errors:?}\n{yaml}"),
    }
}

/// A running agent for node n1 with its reports, in its own temp dir.
pub struct TestAgent {
    pub handle: AgentHandle,
    pub reports: UnboundedReceiver<Report>,
    pub model: Arc<Model>,
    pub dir: TempDir,
    pub clock: Clock,
    /// Reports received while waiting for others.
    pub seen: Vec<Report>,
}

impl TestAgent {
    pub async fn start(name: &str, yaml: &str) -> TestAgent {
        let dir = TempDir::new(name);
        Self::start_in(dir, yaml).await
    }

    pub async fn start_in(dir: TempDir, yaml: &str) -> TestAgent {
        Self::start_node(dir, load(yaml), NodeId(0)).await
    }

    /// An agent for `node` of an already loaded model (share the `Arc` to share a host).
    pub async fn start_node(dir: TempDir, model: Arc<Model>, node: NodeId) -> TestAgent {
        let clock = Clock::new();
        let (handle, reports) = nines_agent::start(AgentOptions {
            node,
            model: model.clone(),
            socket: dir.path().join("agent.sock"),
            log_dir: Some(dir.path().join("logs")),
            clock,
            record_dir: Some(dir.path().join("procs")),
            adopt: true,
        })
        .await
        .expect("agent starts");
        TestAgent {
            handle,
            reports,
            model,
            dir,
            clock,
            seen: Vec::new(),
        }
    }

    pub fn comp(&self, path: &str) -> CompId {
        match self.model.find(path) {
            Some(EntityRef::Comp(c)) => c,
            other => panic!("{path} is not a component: {other:?}"),
        }
    }

    pub fn csi(&self, path: &str) -> CsiId {
        match self.model.find(path) {
            Some(EntityRef::Csi(c)) => c,
            other => panic!("{path} is not a CSI: {other:?}"),
        }
    }

    /// The next report whose input satisfies `pred`, within `limit`; others are kept in `seen`.
    pub async fn expect(&mut self, limit: Duration, pred: impl Fn(&Input) -> bool) -> Report {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.reports.recv()).await {
                Ok(Some(r)) if pred(&r.input) => return r,
                Ok(Some(r)) => self.seen.push(r),
                Ok(None) => panic!("report channel closed"),
                Err(_) => panic!(
                    "no matching report within {limit:?}; other reports: {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Assert that no report arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(Some(r)) = tokio::time::timeout(wait, self.reports.recv()).await {
            panic!("unexpected report {r:?}");
        }
    }

    /// Expect `comp` to be reported failed for a missed healthcheck within `limit` (its first
    /// failure), and nothing more for `then_quiet`: a failure is reported once per incarnation.
    pub async fn expect_missed_healthcheck_once(
        &mut self,
        comp: CompId,
        limit: Duration,
        then_quiet: Duration,
    ) {
        self.expect_failed(comp, nines_engine::FaultKind::HealthcheckMissed, limit)
            .await;
        self.expect_silence(then_quiet).await;
    }

    /// Expect the next failure report, within `limit`, to be `comp`'s, of `kind`.
    pub async fn expect_failed(
        &mut self,
        comp: CompId,
        kind: nines_engine::FaultKind,
        limit: Duration,
    ) -> Report {
        let r = self
            .expect(limit, |i| matches!(i, Input::ComponentFailed { .. }))
            .await;
        assert_eq!(
            r.input,
            Input::ComponentFailed {
                comp,
                kind,
                recommended: None
            }
        );
        r
    }

    /// Clean `comp` up and expect `CommandDone { Cleanup, Ok }`.
    pub async fn cleanup_ok(&mut self, comp: CompId) {
        self.handle
            .execute(&nines_engine::ActionKind::Cleanup { comp });
        let r = self
            .expect(Duration::from_secs(5), |i| {
                matches!(i, Input::CommandDone { comp: c, command: nines_engine::Command::Cleanup, .. } if *c == comp)
            })
            .await;
        assert!(
            matches!(
                r.input,
                Input::CommandDone {
                    outcome: nines_engine::Outcome::Ok,
                    ..
                }
            ),
            "{r:?}"
        );
    }

    /// Instantiate and wait for the answer.
    pub async fn instantiate(&mut self, comp: CompId) -> Report {
        self.handle
            .execute(&nines_engine::ActionKind::Instantiate { comp, urgent: true });
        self.expect(Duration::from_secs(15), |i| {
            matches!(i, Input::CommandDone { comp: c, command: nines_engine::Command::Instantiate, .. } if *c == comp)
        })
        .await
    }

    pub fn pid(&self, comp: CompId) -> Option<u32> {
        self.handle
            .pids()
            .into_iter()
            .find(|(c, _)| *c == comp)
            .map(|(_, p)| p)
    }

    /// Shut the agent down and check that it left nothing behind.
    pub async fn teardown(self) {
        let pids: Vec<u32> = self.handle.pids().into_iter().map(|(_, p)| p).collect();
        self.handle.shutdown().await;
        assert!(
            self.handle.pids().is_empty(),
            "components left after shutdown"
        );
        for pid in pids {
            assert!(!alive(pid), "process {pid} survived shutdown");
        }
        assert!(
            !self.handle.socket().exists(),
            "socket file left after shutdown"
        );
        assert_no_zombies().await;
    }
}

/// The nice value of every thread of `pid` (field 19 of `/proc/PID/task/TID/stat`).
pub fn thread_nices(pid: u32) -> Vec<i64> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        // Fields after the command name, which is in parentheses and may contain spaces.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if let Some(nice) = rest.split_whitespace().nth(16).and_then(|f| f.parse().ok()) {
            out.push(nice);
        }
    }
    out
}

/// Whether a process exists (zombies count as gone: they no longer run).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => state_of(&stat).is_some_and(|(s, _)| s != 'Z'),
        Err(_) => false,
    }
}

/// State and parent pid from a /proc/<pid>/stat line.
fn state_of(stat: &str) -> Option<(char, i64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Zombie children of this process.
pub fn zombies() -> Vec<u32> {
    let me = i64::from(std::process::id());
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if state_of(&stat) == Some(('Z', me)) {
                out.push(pid);
            }
        }
    }
    out
}

/// Fail if a zombie child of this process persists. Tests run in parallel, so another test's
/// child may be a zombie for the microseconds before its reaper runs; only a zombie that is
/// still there seconds later is a leak.
pub async fn assert_no_zombies() {
    let mut suspects = zombies();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while !suspects.is_empty() {
        if tokio::time::Instant::now() > deadline {
            let stats: Vec<String> = suspects
                .iter()
                .map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default())
                .collect();
            panic!("zombie children not reaped: {suspects:?}: {stats:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = zombies();
        suspects.retain(|p| now.contains(p));
    }
}

/// Wait until `path` contains `needle` (component-side evidence written by test components).
pub async fn wait_for_file(path: &Path, needle: &str, limit: Duration) -> String {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "{} does not contain {needle:?} within {limit:?}; it has:\n{text}",
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kill a process (SIGKILL), as a fault injection.
pub fn kill9(pid: u32) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill");
}

/// Whether `i` answers `command` for `comp`.
pub fn is_done(comp: CompId, command: Command) -> impl Fn(&Input) -> bool {
    move |i| matches!(i, Input::CommandDone { comp: c, command: k, .. } if *c == comp && *k == command)
}

/// The outcome of a `CommandDone` (panics on anything else).
pub fn outcome(i: &Input) -> Outcome {
    match i {
        Input::CommandDone { outcome, .. } => *outcome,
        other => panic!("not a command result: {other:?}"),
    }
}
