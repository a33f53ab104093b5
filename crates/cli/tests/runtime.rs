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
/// agents' records in the state directory list, so a failed test leaves nothing running either.
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
        let listed = recorded_pids(&self.state);
        for pid in self.pids.iter().copied().chain(listed) {
            signal(pid, rustix::process::Signal::KILL);
        }
    }
}

/// The component pids the agents of a state directory have recorded
/// (`agents/NODE.procs/*.pid`, second line `PID START`) that are still the recorded process:
/// a record may outlive its process (a failed component's stays until the next incarnation
/// replaces it), and its pid may belong to somebody else by now.
fn recorded_pids(state: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(nodes) = std::fs::read_dir(state.join("agents")) else {
        return out;
    };
    for node in nodes.flatten().filter(|n| n.path().is_dir()) {
        for f in std::fs::read_dir(node.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let text = std::fs::read_to_string(f.path()).unwrap_or_default();
            let mut fields = text.lines().nth(1).unwrap_or_default().split_whitespace();
            let pid = fields.next().and_then(|p| p.parse::<u32>().ok());
            let start = fields.next().and_then(|s| s.parse::<u64>().ok());
            if let (Some(pid), Some(start)) = (pid, start) {
                if start_time(pid) == Some(start) {
                    out.push(pid);
                }
            }
        }
    }
    out
}

/// Field 22 of `/proc/PID/stat` (the start time), `None` if the process is gone.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
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

fn spawn_run(cfg: &str, state: &str, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_nines"))
        .args(["run", cfg, "--state-dir", state])
        .stdout(Stdio::from(
            std::fs::File::create(log).expect("console file"),
        ))
        .stderr(Stdio::null())
        .spawn()
        .expect("nines run starts")
}

/// `nines run CFG` on `state` as a child (console in `log`), and its status once `settled`
/// holds for a run numbered `run`.
fn start_settled(
    cfg: &str,
    state: &str,
    log: &Path,
    run: u64,
    settled: impl Fn(&Value) -> bool,
) -> (RunChild, Value) {
    let mut child = RunChild {
        child: spawn_run(cfg, state, log),
        pids: Vec::new(),
        state: PathBuf::from(state),
    };
    let s = wait_status(state, &format!("run {run} settled"), |s| {
        s["run"] == run && settled(s)
    });
    child.pids = component_pids(&s);
    (child, s)
}

fn sorted(mut v: Vec<u32>) -> Vec<u32> {
    v.sort_unstable();
    v
}

/// SIGKILLs `nines run`, like a crash: its components are reparented and keep running.
fn crash(run: &mut RunChild) {
    signal(run.child.id(), rustix::process::Signal::KILL);
    let _ = run.child.wait();
    assert!(
        run.pids.iter().all(|&p| alive(p)),
        "the components outlive a SIGKILLed nines run (this is what the restart must handle)"
    );
}

/// Stops `nines run` with SIGTERM and checks that it took every component with it.
fn stop(mut run: RunChild) {
    signal(run.child.id(), rustix::process::Signal::TERM);
    let status = wait_exit(&mut run.child, Duration::from_secs(20)).expect("exits");
    assert_eq!(status.code(), Some(0));
    let deadline = Instant::now() + Duration::from_secs(5);
    for &p in &run.pids {
        while alive(p) {
            assert!(
                Instant::now() < deadline,
                "component {p} outlived nines run"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_restarted_run_adopts_the_components_a_crashed_run_left_running() {
    let dir = TempDir::new("crash");
    let cfg = dir.path("two-n.yaml");
    std::fs::write(&cfg, CONFIG).expect("write config");
    let state = dir.path("state");
    let settled = |s: &Value| holder(s, "active").is_some() && holder(s, "standby").is_some();

    let (mut first, _) = start_settled(&cfg, &state, &dir.0.join("run1.out"), 1, settled);
    assert_eq!(first.pids.len(), 2, "{:?}", first.pids);
    let expected = sorted(first.pids.clone());
    assert_eq!(
        sorted(recorded_pids(Path::new(&state))),
        expected,
        "every component is recorded as soon as it runs"
    );
    crash(&mut first);

    let (second, s) = start_settled(&cfg, &state, &dir.0.join("run2.out"), 2, settled);
    assert_eq!(
        sorted(second.pids.clone()),
        expected,
        "the same processes, adopted, not new ones: {s}"
    );
    let events = nines(&["events", "--json", "--state-dir", &state]);
    let adopted = String::from_utf8_lossy(&events.stdout)
        .lines()
        .filter(|l| l.contains("\"event\":\"adopted\""))
        .count();
    assert_eq!(adopted, 2, "{}", String::from_utf8_lossy(&events.stdout));
    let instantiated_in_run_2 = String::from_utf8_lossy(&events.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["run"] == 2 && v["event"] == "instantiating")
        .count();
    assert_eq!(instantiated_in_run_2, 0, "nothing was started again");
    stop(second);
}

/// The counter config for `port`, run by this very binary.
fn counter_config(port: u16) -> String {
    format!(
        "\
cluster: adopt
nodes: [node-1, node-2]
apps:
  counter:
    sgs:
      sg:
        redundancy: 2n
        units:
          su-1: {{ node: node-1, rank: 1 }}
          su-2: {{ node: node-2, rank: 2 }}
        components:
          counterd:
            kind: sa-aware
            instantiate: [{exe:?}, example, counter]
            timeouts: {{ instantiate: 10s, terminate: 2s, cleanup: 2s, callback: 2s }}
            healthcheck: {{ period: 200ms, max_duration: 200ms }}
            recovery: failover
    sis:
      si: {{ sg: sg, csis: {{ main: {{ component: counterd, attrs: {{ port: \"{port}\" }} }} }} }}
",
        exe = env!("CARGO_BIN_EXE_nines"),
    )
}

/// One `inc` on the counter at `port`: the new value, or why not.
fn inc(port: u16) -> Result<u64, String> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"inc\n").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    nines_example_counter::protocol::parse_reply(&line)
}

/// Increments until one succeeds (the service may be failing over), within 20 s.
fn inc_eventually(port: u16) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match inc(port) {
            Ok(v) => return v,
            Err(e) => {
                assert!(Instant::now() < deadline, "the counter never answered: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn an_adopted_counter_keeps_its_work_and_state_through_a_crash_and_a_later_failover() {
    let dir = TempDir::new("adopt-ctr");
    let port = free_port();
    let cfg = dir.path("counter.yaml");
    std::fs::write(&cfg, counter_config(port)).expect("write config");
    let state = dir.path("state");
    let settled = |s: &Value| holder(s, "active").is_some() && holder(s, "standby").is_some();

    let (mut first, s) = start_settled(&cfg, &state, &dir.0.join("run1.out"), 1, settled);
    let active = holder(&s, "active").expect("active");
    let mut last = 0;
    for _ in 0..5 {
        let v = inc_eventually(port);
        assert!(v > last, "{v} after {last}");
        last = v;
    }
    crash(&mut first);
    // A client that calls while no agent runs is not refused: the counter's checkpoint write
    // waits for the restarted agent, and the answer comes once it is back.
    let during = std::thread::spawn(move || inc(port));
    std::thread::sleep(Duration::from_millis(100));

    let (mut second, s) = start_settled(&cfg, &state, &dir.0.join("run2.out"), 2, settled);
    assert_eq!(
        sorted(second.pids.clone()),
        sorted(first.pids.clone()),
        "both counters adopted, none restarted: {s}"
    );
    assert_eq!(
        holder(&s, "active"),
        Some(active.clone()),
        "the active stays active: {s}"
    );
    let v = during
        .join()
        .expect("client thread")
        .expect("an increment made during the restart is answered, not refused");
    assert!(v > last, "{v} after {last}");
    last = v;

    // The restarted agent lost its checkpoints; the active gave its own back when it
    // registered again, so a failover now, before anything new is written, continues from
    // the last acknowledged value.
    let active_pid = s["sgs"][0]["sus"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|su| su["path"] == active.as_str())
        .and_then(|su| su["components"][0]["pid"].as_u64())
        .expect("the active component's pid") as u32;
    signal(active_pid, rustix::process::Signal::KILL);
    let s = wait_status(&state, "the failover after the restart", |s| {
        holder(s, "active").is_some_and(|h| h != active)
    });
    let v = inc_eventually(port);
    assert!(
        v > last,
        "after the failover the counter went back from {last} to {v}: the standby did not get \
         the checkpoint"
    );
    second.pids = component_pids(&s);
    let repaired = wait_status(&state, "the repair", settled);
    second.pids = component_pids(&repaired);
    stop(second);
}

/// `nines run` of [`CONFIG`] in `dir`, once one SU is active and the other standby; and the
/// state directory.
fn start_two_n(dir: &TempDir) -> (RunChild, String) {
    let cfg = dir.path("two-n.yaml");
    std::fs::write(&cfg, CONFIG).expect("config");
    let state = dir.path("state");
    let (run, _) = start_settled(&cfg, &state, &dir.0.join("console"), 1, |s| {
        holder(s, "active").is_some() && holder(s, "standby").is_some()
    });
    (run, state)
}

/// The inode of the pipe behind `fd`, as `/proc/PID/fd` links name it (`pipe:[INODE]`).
fn pipe_link(fd: &std::os::fd::OwnedFd) -> String {
    let st = rustix::fs::fstat(fd).expect("fstat");
    format!("pipe:[{}]", st.st_ino)
}

/// Whether process `pid` holds a descriptor whose link reads `link`.
fn holds(pid: u32, link: &str) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_str() == Some(link)))
}

#[test]
fn components_do_not_inherit_the_descriptors_nines_run_inherited() {
    let dir = TempDir::new("inherit");
    // A pipe without close-on-exec, as a shell or a CI runner may leave one open.
    let (read_end, write_end) = rustix::pipe::pipe().expect("pipe");
    let link = pipe_link(&write_end);
    let (run, _) = start_two_n(&dir);
    drop(write_end);
    assert!(
        holds(run.child.id(), &link),
        "nines run itself should have inherited the test's pipe"
    );
    assert_eq!(run.pids.len(), 2);
    for &pid in &run.pids {
        assert!(
            !holds(pid, &link),
            "component {pid} inherited a descriptor of the shell that started nines run"
        );
    }
    stop(run);
    drop(read_end);
}

#[test]
fn events_follow_ends_when_its_reader_goes_away_and_the_run_goes_on() {
    let dir = TempDir::new("follow");
    let (run, state) = start_two_n(&dir);
    // Close-on-exec: only the child's stdout is the write end, and no child holds the read end.
    let (read_end, write_end) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe");
    let mut follow = Command::new(env!("CARGO_BIN_EXE_nines"))
        .args(["events", "--follow", "--json", "--state-dir", &state])
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped())
        .spawn()
        .expect("nines events starts");
    // The reader takes one line, then goes away, like `grep -m1`.
    let mut reader = std::io::BufReader::new(std::fs::File::from(read_end));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut reader, &mut first).expect("a first event");
    assert!(first.contains("\"event\""), "{first}");
    drop(reader);
    // New events, which the follower fails to write and then stops on.
    let o = nines(&["adm", "lock", "app/sg/su-2", "--state-dir", &state]);
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
    let status = wait_exit(&mut follow, Duration::from_secs(10));
    if status.is_none() {
        let _ = follow.kill();
        let _ = follow.wait();
    }
    let mut err = String::new();
    if let Some(mut e) = follow.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "events --follow did not end after its reader left: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // The cluster did not notice.
    let o = nines(&["status", "--state-dir", &state]);
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
    stop(run);
}
