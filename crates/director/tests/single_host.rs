//! The single-host runtime with real processes, real sockets and real signals: start a 2N
//! cluster of `/bin/sleep` components, kill the active one, operate it through the control
//! socket, restart it on the same state directory, and check that nothing is left running.
//!
//! The tests share one process, and they check the process's children, so they run one at a
//! time (`SERIAL`). Every test has a deadline and cleans its state directory up even when it
//! fails (`TempDir`'s drop; the runtime is shut down by `Cluster`'s drop, which also kills any
//! process a failed test left behind).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nines_director::{ControlClient, RunError, RunOptions, Runtime, Status};
use serde_json::Value;

const CONFIG: &str = "\
cluster: test
nodes: [node-1, node-2]
apps:
  app:
    sgs:
      sg:
        redundancy: 2n
        fail_back: false
        units:
          su-1: { node: node-1, rank: 1 }
          su-2: { node: node-2, rank: 2 }
        components:
          sleeper:
            kind: process
            instantiate: [/bin/sleep, \"1000\"]
            timeouts: { instantiate: 5s, terminate: 2s, cleanup: 2s, callback: 1s }
            recovery: failover
    sis:
      si: { sg: sg, rank: 1, csis: { main: { component: sleeper } } }
";

const SI: &str = "app/si";
const SU1: &str = "app/sg/su-1";
const SU2: &str = "app/sg/su-2";

/// How long anything may take to settle (generous: CI machines are slow and busy).
const SETTLE: Duration = Duration::from_secs(10);

/// Held for a whole test (across awaits, and each test has its own tokio runtime), so an
/// async mutex; it does not poison, so one failed test does not fail the others.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A state directory, removed when dropped. Kept short: socket paths must fit in 108 bytes.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("nd-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn model() -> Arc<nines_model::Model> {
    model_of(CONFIG)
}

fn model_of(text: &str) -> Arc<nines_model::Model> {
    match nines_model::load(text, "test.yaml") {
        Ok(l) => Arc::new(l.model),
        Err(e) => panic!("test config invalid: {e:?}"),
    }
}

/// A started runtime; shut down on drop if the test did not (a failed assertion).
struct Cluster {
    rt: Option<Runtime>,
    socket: PathBuf,
}

impl Cluster {
    async fn start(dir: &Path) -> Cluster {
        Cluster::start_with(dir, model()).await
    }

    async fn start_with(dir: &Path, model: Arc<nines_model::Model>) -> Cluster {
        let start = Runtime::start(RunOptions {
            model,
            state_dir: dir.to_path_buf(),
            cluster: None,
        });
        let rt = tokio::time::timeout(SETTLE, start)
            .await
            .unwrap_or_else(|_| panic!("runtime start took longer than {SETTLE:?}"))
            .unwrap_or_else(|e| panic!("runtime did not start: {e}"));
        let socket = rt.control_socket().to_path_buf();
        Cluster {
            rt: Some(rt),
            socket,
        }
    }

    async fn status(&self) -> Status {
        let socket = self.socket.clone();
        tokio::task::spawn_blocking(move || {
            ControlClient::connect(&socket)
                .and_then(|mut c| c.status())
                .unwrap_or_else(|e| panic!("status: {e}"))
        })
        .await
        .expect("status task")
    }

    async fn adm(&self, op: &str, entity: &str) -> Result<(), String> {
        let (socket, op, entity) = (self.socket.clone(), op.to_string(), entity.to_string());
        tokio::task::spawn_blocking(move || {
            ControlClient::connect(&socket)
                .and_then(|mut c| c.adm(&op, &entity))
                .map_err(|e| e.to_string())
        })
        .await
        .expect("adm task")
    }

    /// Polls the status until `ok` holds; panics with the last status after `SETTLE`.
    async fn wait_for(&self, what: &str, ok: impl Fn(&Status) -> bool) -> Status {
        let deadline = Instant::now() + SETTLE;
        loop {
            let s = self.status().await;
            if ok(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; last status:\n{}",
                    nines_director::format::status_table(&s)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn shutdown(mut self) {
        if let Some(rt) = self.rt.take() {
            // Bounded by the components' terminate timeouts (2 s here) and the agents' drain.
            tokio::time::timeout(Duration::from_secs(30), rt.shutdown())
                .await
                .unwrap_or_else(|_| panic!("shutdown took longer than 30 s"));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.rt.take().is_some() {
            // The test failed with the runtime up: kill whatever it started.
            for pid in children() {
                let _ = kill9(pid);
            }
        }
    }
}

/// Settled 2N: one confirmed active and one confirmed standby.
fn settled(s: &Status) -> bool {
    let si = &s.sgs[0].sis[0];
    si.assignments.len() == 2
        && si.assignments.iter().all(|a| a.confirmed)
        && s.holder(SI, "active").is_some()
        && s.holder(SI, "standby").is_some()
}

fn pid_of(s: &Status, su: &str) -> Option<u32> {
    s.su(su).and_then(|su| su.components[0].pid)
}

/// Child processes (live or zombie) of this test process, from /proc.
fn children() -> Vec<u32> {
    let mut v = Vec::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
                v.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
    }
    v
}

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/PID; its state letter is Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The event log once `ready` holds for it: lines reach the file in batches a couple of
/// milliseconds after the engine recorded them (see `nines_director::event_log`), so a test
/// that saw a state in the status waits for the lines about it. Bounded, to catch a hang.
async fn events_once(dir: &Path, what: &str, ready: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = events(dir);
        if ready(&ev) {
            return ev;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not in the event log: {ev:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn events(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// SIGKILL. Not `Command::new("kill")`: the agents reap every child of this process they did
/// not spawn, so a helper process's exit status could be stolen from under `std::process`.
fn kill9(pid: u32) -> bool {
    rustix::process::Pid::from_raw(pid as i32)
        .is_some_and(|p| rustix::process::kill_process(p, rustix::process::Signal::KILL).is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_admin_ops_and_clean_shutdown() {
    let _serial = SERIAL.lock().await;
    let dir = TempDir::new("main");
    let c = Cluster::start(&dir.0).await;

    // Start: one active, one standby, each with a running process. (Which SU is active
    // depends on which one came up first: without fail-back the work stays where it landed.)
    let s = c.wait_for("one active and one standby", settled).await;
    let a = s.holder(SI, "active").expect("active").to_string();
    let b = s.holder(SI, "standby").expect("standby").to_string();
    let (a, b) = (a.as_str(), b.as_str());
    let victim = pid_of(&s, a).expect("active has a pid");
    assert!(pid_of(&s, b).is_some(), "standby has a pid");
    let mode = std::fs::metadata(&c.socket).map(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o777
    });
    assert_eq!(mode.ok(), Some(0o600), "control socket must be owner-only");

    // Kill -9 the active: the standby takes over and the killed SU comes back.
    assert!(kill9(victim), "kill -9 {victim} failed");
    let s = c
        .wait_for("failover and repair", |s| {
            settled(s)
                && s.holder(SI, "active") == Some(b)
                && pid_of(s, a).is_some_and(|p| p != victim)
        })
        .await;
    assert_eq!(s.open_faults, 0, "the fault is recovered and repaired");
    let ev = events_once(&dir.0, "the repair", |ev| {
        ev.iter().any(|e| e["event"] == "repaired")
    })
    .await;
    let detected = ev
        .iter()
        .find(|e| e["event"] == "fault-detected")
        .expect("a fault-detected event");
    assert_eq!(detected["entity"], format!("{a}/sleeper"));
    assert_eq!(detected["kind"], "exited");
    assert_eq!(detected["recovery"], "su-failover");
    assert!(detected["reaction_ms"].as_f64().is_some());
    assert!(detected["wall"].as_str().is_some_and(|w| w.ends_with('Z')));
    let fault = detected["fault"].clone();
    let recovered = ev
        .iter()
        .find(|e| e["event"] == "service-recovered" && e["fault"] == fault)
        .expect("service-recovered for the fault");
    assert!(recovered["outage_ms"].as_f64().is_some_and(|ms| ms >= 0.0));
    let repaired = ev
        .iter()
        .find(|e| e["event"] == "repaired" && e["fault"] == fault)
        .expect("repaired for the fault");
    assert!(repaired["repair_ms"].as_f64().is_some_and(|ms| ms > 0.0));
    let rows = nines_director::faults::summarize(&ev);
    assert_eq!(rows.len(), 1);
    assert!(rows[0].outage_ms.is_some() && rows[0].repair_ms.is_some());

    // Lock the active SU: the work moves to the other one.
    c.adm("lock", b).await.expect("lock accepted");
    let s = c
        .wait_for("work off the locked SU", |s| {
            s.holder(SI, "active") == Some(a)
                && s.sgs[0].sis[0].assignments.iter().all(|x| x.su != b)
        })
        .await;
    assert_eq!(s.su(b).map(|su| su.admin.as_str()), Some("locked"));
    c.adm("unlock", b).await.expect("unlock accepted");
    c.wait_for("standby back on the unlocked SU", |s| {
        settled(s) && s.holder(SI, "standby") == Some(b)
    })
    .await;

    // Switchover swaps active and standby.
    c.adm("switchover", SI).await.expect("switchover accepted");
    c.wait_for("switched over", |s| {
        settled(s) && s.holder(SI, "active") == Some(b)
    })
    .await;

    // Refusals carry the engine's reason, or name the unknown entity.
    let e = c
        .adm("unlock-in", SU1)
        .await
        .expect_err("unlock-in of an unlocked SU");
    assert!(e.contains("unlock-in app/sg/su-1 refused"), "{e}");
    assert!(e.contains("must be locked-instantiation"), "{e}");
    let e = c.adm("lock", "su-1").await.expect_err("bare name");
    assert!(
        e.contains("no entity named su-1 (did you mean app/sg/su-1"),
        "{e}"
    );
    let e = c.adm("reboot", SU1).await.expect_err("unknown op");
    assert!(e.contains("unknown admin operation reboot"), "{e}");

    // Garbage on the socket gets a precise error and the connection stays usable.
    let socket = c.socket.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = UnixStream::connect(&socket).expect("connect");
        s.write_all(b"this is not json\n{\"op\":\"frobnicate\"}\n{\"op\":\"status\"}\n")
            .expect("write");
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).expect("reply 1");
        assert!(
            line.starts_with("{\"ok\":false,\"error\":\"bad request"),
            "{line}"
        );
        line.clear();
        r.read_line(&mut line).expect("reply 2");
        assert!(line.contains("unknown variant `frobnicate`"), "{line}");
        line.clear();
        r.read_line(&mut line).expect("reply 3");
        assert!(line.starts_with("{\"ok\":true,\"status\""), "{line}");
    })
    .await
    .expect("garbage test");

    // Events: the whole log, then (following) a new line as it is written.
    let socket = c.socket.clone();
    let follower = std::thread::spawn(move || {
        let mut saw_lock = false;
        let client = ControlClient::connect(&socket).expect("connect");
        let r = client.events(0, true, |line| {
            let v: Value = serde_json::from_str(line).expect("event lines are JSON");
            if v["event"] == "admin-reply" && v["op"] == "lock" && v["target"] == "app/sg" {
                saw_lock = true;
                return false;
            }
            true
        });
        r.map(|()| saw_lock).map_err(|e| e.to_string())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.adm("lock", "app/sg").await.expect("lock the SG");
    let deadline = Instant::now() + SETTLE;
    while !follower.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        follower.is_finished(),
        "the follower never saw the new line"
    );
    assert_eq!(follower.join().expect("follower thread"), Ok(true));

    // A second runtime on the same state directory is refused.
    match Runtime::start(RunOptions {
        model: model(),
        state_dir: dir.0.clone(),
        cluster: None,
    })
    .await
    {
        Err(e @ RunError::InUse { .. }) => {
            assert!(
                e.to_string().contains("already uses the state directory"),
                "{e}"
            )
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a second runtime started on the same state directory"),
    }

    // Shutdown terminates every component and leaves no child, live or zombie.
    let s = c.status().await;
    let pids: Vec<u32> = [SU1, SU2].iter().filter_map(|su| pid_of(&s, su)).collect();
    c.shutdown().await;
    for pid in pids {
        assert!(!alive(pid), "component pid {pid} survived the shutdown");
    }
    assert_eq!(
        children(),
        Vec::<u32>::new(),
        "children left after shutdown"
    );
    assert!(
        !dir.0.join("control.sock").exists(),
        "control socket left behind"
    );
    let last = events(&dir.0).pop().expect("log not empty");
    assert_eq!(last["event"], "run-stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_restores_locks_and_adopts_what_a_crashed_run_left() {
    let _serial = SERIAL.lock().await;
    let dir = TempDir::new("restart");

    // Run 1: lock SU 2 out of work, then stop.
    let c = Cluster::start(&dir.0).await;
    c.wait_for("settled", settled).await;
    c.adm("lock", SU2).await.expect("lock");
    c.adm("lock-in", SU2).await.expect("lock-in");
    c.wait_for("su-2 terminated", |s| pid_of(s, SU2).is_none())
        .await;
    c.shutdown().await;

    // Processes a crashed run left behind, as node-1's agent recorded them: one of su-1's
    // component, one of a component this config no longer has. (Spawned while no agent runs
    // in this process; once one does, the agents reap them, so they are never waited for.)
    let leftover = || {
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new("/bin/sleep")
            .arg("1000")
            .process_group(0)
            .spawn()
            .expect("spawn a leftover process");
        let pid = child.id();
        drop(child);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        let start: u64 = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(19))
            .and_then(|s| s.parse().ok())
            .expect("start time");
        (pid, start)
    };
    let procs = dir.0.join("agents").join("node-1.procs");
    std::fs::create_dir_all(&procs).expect("procs dir");
    let (kept_pid, kept_start) = leftover();
    std::fs::write(
        procs.join("app%2Fsg%2Fsu-1%2Fsleeper.pid"),
        format!("app/sg/su-1/sleeper\n{kept_pid} {kept_start}\n"),
    )
    .expect("record");
    let (gone_pid, gone_start) = leftover();
    std::fs::write(
        procs.join("app%2Fsg%2Fsu-1%2Fremoved.pid"),
        format!("app/sg/su-1/removed\n{gone_pid} {gone_start}\n"),
    )
    .expect("record");

    // Run 2: su-1's process is adopted (not started again), the unknown one is killed, and
    // SU 2 is still locked-instantiation.
    let c = Cluster::start(&dir.0).await;
    assert!(
        !alive(gone_pid),
        "a process of no configured component was killed before anything started"
    );
    let s = c
        .wait_for("active on su-1", |s| s.holder(SI, "active") == Some(SU1))
        .await;
    assert_eq!(s.run, 2);
    assert_eq!(
        pid_of(&s, SU1),
        Some(kept_pid),
        "su-1's process was adopted"
    );
    let su2 = s.su(SU2).expect("su-2");
    assert_eq!(su2.admin, "locked-instantiation");
    assert_eq!(su2.presence, "uninstantiated");
    assert_eq!(s.holder(SI, "standby"), None);
    let ev = events_once(&dir.0, "run 2's adoption and restored lock", |ev| {
        ev.iter().any(|e| e["event"] == "adopted" && e["run"] == 2)
            && ev
                .iter()
                .any(|e| e["event"] == "admin-restored" && e["run"] == 2)
    })
    .await;
    assert!(ev
        .iter()
        .any(|e| e["event"] == "adopted" && e["run"] == 2 && e["pid"] == kept_pid));
    assert!(ev
        .iter()
        .any(|e| e["event"] == "admin-restored" && e["entity"] == SU2 && e["run"] == 2));
    // Nothing of SU 2 was ever started in run 2, and su-1 was not started again.
    assert!(!ev.iter().any(|e| e["run"] == 2
        && e["event"] == "presence"
        && e["entity"] == "app/sg/su-2/sleeper"));
    assert!(!ev.iter().any(|e| e["run"] == 2
        && e["event"] == "presence"
        && e["presence"] == "instantiating"
        && e["entity"] == "app/sg/su-1/sleeper"));

    // Unlocking brings it back (and is saved for the next run).
    c.adm("unlock-in", SU2).await.expect("unlock-in");
    c.adm("unlock", SU2).await.expect("unlock");
    c.wait_for("settled again", settled).await;
    c.shutdown().await;
    let store = nines_store::RedbStore::open(&dir.0)
        .await
        .expect("state.redb");
    let saved = store.get("admin/app/sg/su-2").await.expect("read");
    assert_eq!(saved.as_deref(), Some(&b"unlocked"[..]));
    drop(store);
    assert_eq!(
        children(),
        Vec::<u32>::new(),
        "children left after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_failfast_fences_the_node_by_restarting_its_agent() {
    let _serial = SERIAL.lock().await;
    let dir = TempDir::new("fence");
    let c = Cluster::start_with(
        &dir.0,
        model_of(&CONFIG.replace("recovery: failover", "recovery: node-failfast")),
    )
    .await;
    let s = c.wait_for("settled", settled).await;
    let a = s.holder(SI, "active").expect("active").to_string();
    let b = s.holder(SI, "standby").expect("standby").to_string();
    let (a, b) = (a.as_str(), b.as_str());
    let victim = pid_of(&s, a).expect("the active runs");
    let other = pid_of(&s, b).expect("the standby runs");
    assert!(kill9(victim), "kill -9 {victim}");

    // The node is fenced (its agent stopped), its work fails over, and it "reboots".
    let s = c
        .wait_for("fence, failover and reboot", |s| {
            settled(s)
                && s.holder(SI, "active") == Some(b)
                && s.nodes.iter().all(|n| n.up)
                && pid_of(s, a).is_some_and(|p| p != victim)
        })
        .await;
    assert_eq!(pid_of(&s, b), Some(other), "the other node was not touched");
    let fenced_node = s.su(a).expect("su").node.clone();
    let ev = events_once(&dir.0, "the reboot and the repair", |ev| {
        ev.iter().any(|e| e["event"] == "node-rebooted")
            && ev.iter().any(|e| e["event"] == "repaired")
    })
    .await;
    let kinds: Vec<&str> = ev.iter().filter_map(|e| e["event"].as_str()).collect();
    let at = |k: &str| kinds.iter().position(|x| *x == k);
    let (fence, done, rebooted) = (at("fence"), at("fence-done"), at("node-rebooted"));
    assert!(
        fence.is_some() && done > fence && rebooted > done,
        "{kinds:?}"
    );
    let detected = ev
        .iter()
        .find(|e| e["event"] == "fault-detected")
        .expect("fault detected");
    assert_eq!(detected["recovery"], "node-failfast");
    assert!(ev
        .iter()
        .any(|e| e["event"] == "node" && e["node"] == fenced_node.as_str() && e["up"] == false));
    assert!(ev
        .iter()
        .any(|e| e["event"] == "service-recovered" && e["fault"] == detected["fault"]));

    c.shutdown().await;
    assert_eq!(
        children(),
        Vec::<u32>::new(),
        "children left after shutdown"
    );
}
