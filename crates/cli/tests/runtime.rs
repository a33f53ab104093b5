//! The runtime commands of the `nines` binary (`run`, `status`, `adm`, `events`) as a user runs
//! them: real processes, a real state directory, real signals.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn nines(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nines"))
        .args(args)
        .env_remove("NINES_STATE_DIR")
        .output()
        .expect("the nines binary runs")
}

fn all_output(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A temp directory removed on drop (also when the test fails). Short: it holds sockets.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("nc-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().expect("UTF-8 path").to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `nines run` as a child, stopped if the test fails before it stopped it: SIGTERM first (the
/// runtime then terminates its components), else SIGKILL and a kill of every component the
/// state directory's `pids.json` lists, so a failed test leaves nothing running either.
struct RunChild {
    child: Child,
    pids: Vec<u32>,
    state: PathBuf,
}

impl Drop for RunChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id(), rustix::process::Signal::TERM);
            if wait_exit(&mut self.child, Duration::from_secs(15)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        let listed = std::fs::read_to_string(self.state.join("pids.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok());
        let listed = listed
            .as_ref()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| e["pid"].as_u64())
            .map(|p| p as u32);
        for pid in self.pids.iter().copied().chain(listed) {
            signal(pid, rustix::process::Signal::KILL);
        }
    }
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

const CONFIG: &str = "\
cluster: e2e
nodes: [node-1, node-2]
apps:
  app:
    sgs:
      sg:
        redundancy: 2n
        units:
          su-1: { node: node-1, rank: 1 }
          su-2: { node: node-2, rank: 2 }
        components:
          daemon:
            kind: process
            instantiate: [/bin/sleep, \"1000\"]
            timeouts: { terminate: 2s, cleanup: 2s }
    sis:
      si: { sg: sg, rank: 1, csis: { main: { component: daemon } } }
";

#[test]
fn status_without_a_runtime_names_the_socket_and_exits_1() {
    let dir = TempDir::new("nort");
    let state = dir.path("state");
    let o = nines(&["status", "--state-dir", &state]);
    assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("{state}/control.sock")), "{err}");
    assert!(err.contains("no nines runtime is running"), "{err}");
    let o = nines(&["adm", "lock", "app/sg/su-1", "--state-dir", &state]);
    assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
}

#[test]
fn an_unknown_admin_operation_is_a_usage_error_listing_the_operations() {
    let o = nines(&["adm", "bogus", "x"]);
    assert_eq!(o.status.code(), Some(2), "{}", all_output(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    for op in [
        "lock",
        "unlock",
        "lock-in",
        "unlock-in",
        "shutdown",
        "restart",
        "switchover",
        "repaired",
    ] {
        assert!(err.contains(op), "{op} missing from: {err}");
    }
}

#[test]
fn run_with_an_invalid_config_prints_the_errors_and_exits_1() {
    let dir = TempDir::new("badcfg");
    let cfg = dir.path("bad.yaml");
    std::fs::write(&cfg, CONFIG.replace("node: node-2", "node: node-9")).expect("write");
    let o = nines(&["run", &cfg, "--state-dir", &dir.path("state")]);
    assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
    assert!(all_output(&o).contains("bad.yaml:"), "{}", all_output(&o));
}

fn status_json(state: &str) -> Option<Value> {
    let o = nines(&["status", "--json", "--state-dir", state]);
    if o.status.code() != Some(0) {
        return None;
    }
    serde_json::from_slice(&o.stdout).ok()
}

fn holder(s: &Value, ha: &str) -> Option<String> {
    s["sgs"][0]["sis"][0]["assignments"]
        .as_array()?
        .iter()
        .find(|a| a["ha_state"] == ha && a["confirmed"] == true)
        .and_then(|a| a["su"].as_str())
        .map(str::to_string)
}

fn component_pids(s: &Value) -> Vec<u32> {
    let mut v = Vec::new();
    for su in s["sgs"][0]["sus"].as_array().into_iter().flatten() {
        for c in su["components"].as_array().into_iter().flatten() {
            if let Some(p) = c["pid"].as_u64() {
                v.push(p as u32);
            }
        }
    }
    v
}

fn wait_status(state: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(s) = status_json(state) {
            if ok(&s) {
                return s;
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn run_status_adm_switchover_events_and_sigterm() {
    let dir = TempDir::new("e2e");
    let cfg = dir.path("two-n.yaml");
    std::fs::write(&cfg, CONFIG).expect("write config");
    let state = dir.path("state");
    let out = std::fs::File::create(dir.0.join("run.out")).expect("stdout file");
    let child = Command::new(env!("CARGO_BIN_EXE_nines"))
        .args(["run", &cfg, "--state-dir", &state])
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(
            std::fs::File::create(dir.0.join("run.err")).expect("stderr file"),
        ))
        .spawn()
        .expect("nines run starts");
    let mut run = RunChild {
        child,
        pids: Vec::new(),
        state: PathBuf::from(&state),
    };

    let s = wait_status(&state, "an active and a standby", |s| {
        holder(s, "active").is_some() && holder(s, "standby").is_some()
    });
    // Which SU is active depends on which came up first; the switchover swaps them.
    let active = holder(&s, "active").expect("active");
    let standby = holder(&s, "standby").expect("standby");
    run.pids = component_pids(&s);
    assert_eq!(run.pids.len(), 2, "{s}");

    let o = nines(&["status", "--state-dir", &state]);
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("SG app/sg (2n)"), "{table}");
    let row = format!("app/si  unlocked  fully-assigned  {active}  {standby}");
    assert!(table.contains(&row), "{table}");

    let o = nines(&["adm", "switchover", "app/si", "--state-dir", &state]);
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "ok: switchover app/si"
    );
    wait_status(&state, "the switchover", |s| {
        holder(s, "active") == Some(standby.clone()) && holder(s, "standby") == Some(active.clone())
    });

    let o = nines(&["adm", "lock", "app/sg/su-9", "--state-dir", &state]);
    assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
    assert!(
        all_output(&o).contains("no entity named app/sg/su-9 (did you mean"),
        "{}",
        all_output(&o)
    );
    let o = nines(&["adm", "unlock", "app/sg/su-1", "--state-dir", &state]);
    assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
    assert!(
        all_output(&o).contains("unlock app/sg/su-1 refused"),
        "{}",
        all_output(&o)
    );

    let o = nines(&["events", "--state-dir", &state]);
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("admin switchover app/si accepted"), "{text}");
    assert!(text.contains("no faults"), "{text}");
    let o = nines(&["events", "--json", "--state-dir", &state]);
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }

    signal(run.child.id(), rustix::process::Signal::TERM);
    let status = wait_exit(&mut run.child, Duration::from_secs(15)).expect("nines run exits");
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    for &pid in &run.pids {
        assert!(!alive(pid), "component {pid} outlived nines run");
    }
    let console = std::fs::read_to_string(dir.0.join("run.out")).expect("console");
    assert!(
        console.contains("app/si active on app/sg/su-1"),
        "{console}"
    );
    assert!(console.contains("run 1 stopped"), "{console}");
    assert!(!Path::new(&state).join("control.sock").exists());

    // Without a runtime, `events` still reads the log from the state directory.
    let o = nines(&["events", "--state-dir", &state]);
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("run 1 stopped"));
}

#[test]
fn a_run_killed_with_sigkill_leaves_no_duplicates_after_a_restart() {
    let dir = TempDir::new("crash");
    let cfg = dir.path("two-n.yaml");
    std::fs::write(&cfg, CONFIG).expect("write config");
    let state = dir.path("state");
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_nines"))
            .args(["run", &cfg, "--state-dir", &state])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nines run starts")
    };
    let settled = |s: &Value| holder(s, "active").is_some() && holder(s, "standby").is_some();

    let mut first = RunChild {
        child: spawn(),
        pids: Vec::new(),
        state: PathBuf::from(&state),
    };
    let s = wait_status(&state, "the first run settled", settled);
    first.pids = component_pids(&s);
    assert_eq!(first.pids.len(), 2, "{s}");
    // The pids reach pids.json once the runtime is idle; wait for both before the "crash".
    let deadline = Instant::now() + Duration::from_secs(10);
    while !first.pids.iter().all(|p| {
        std::fs::read_to_string(Path::new(&state).join("pids.json"))
            .is_ok_and(|t| t.contains(&format!("\"pid\": {p}")))
    }) {
        assert!(
            Instant::now() < deadline,
            "pids.json never listed {:?}",
            first.pids
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(first.child.id(), rustix::process::Signal::KILL);
    let _ = first.child.wait();
    assert!(
        first.pids.iter().all(|&p| alive(p)),
        "the components outlive a SIGKILLed nines run (this is what the restart must handle)"
    );

    let mut second = RunChild {
        child: spawn(),
        pids: Vec::new(),
        state: PathBuf::from(&state),
    };
    let s = wait_status(&state, "the second run settled", settled);
    second.pids = component_pids(&s);
    assert_eq!(s["run"], 2);
    for &p in &first.pids {
        assert!(
            !alive(p),
            "component {p} of the crashed run still runs next to the new ones"
        );
        assert!(!second.pids.contains(&p));
    }
    signal(second.child.id(), rustix::process::Signal::TERM);
    let status = wait_exit(&mut second.child, Duration::from_secs(15)).expect("exits");
    assert_eq!(status.code(), Some(0));
    for &p in &second.pids {
        assert!(!alive(p), "component {p} outlived nines run");
    }
}
