//! End-to-end tests of `nines demo`, `nines bench` and `nines example`: the real binary, real
//! component processes, real sockets. Each test also checks that nothing it started outlives
//! it: no child left unreaped, and no component (found by the state directory in its
//! environment) still running.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// These tests start clusters and measure timing: one at a time, so they neither share ports
/// nor disturb each other's numbers, and so one test's orphan scan cannot see another's
/// components.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `nines args...`, killing it (and whatever it started) after `limit`.
fn run(args: &[&str], limit: Duration) -> Finished {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nines"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the nines binary starts");
    let pid = child.id();
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let left = leftovers(pid);
            kill_all(&left);
            panic!(
                "nines {args:?} did not finish within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    let finished = Finished {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    };
    assert_nothing_left(pid, &finished);
    finished
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_string(&mut s);
        }
        s
    })
}

/// Processes still there because of the `nines` process `pid`: children of this test process
/// (an unreaped zombie would be one), and components whose environment points into the state
/// directory that run used (`/tmp/nines-<label>-<pid>/...`).
fn leftovers(pid: u32) -> Vec<(u32, String)> {
    let me = std::process::id();
    let marker = format!("-{pid}/agents/");
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if p == me {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse::<u32>().ok());
        let environ = std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
        let environ = String::from_utf8_lossy(&environ);
        let ours = environ
            .split('\0')
            .any(|kv| kv.starts_with("NINES_AGENT_SOCKET=") && kv.contains(&marker));
        if ppid == Some(me) || ours {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let state = status
                .lines()
                .find_map(|l| l.strip_prefix("State:"))
                .unwrap_or("")
                .trim()
                .to_owned();
            found.push((p, format!("{cmd} ({state})")));
        }
    }
    found
}

fn kill_all(procs: &[(u32, String)]) {
    for (p, _) in procs {
        if let Some(pid) = i32::try_from(*p)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

fn assert_nothing_left(pid: u32, f: &Finished) {
    // Components are reaped by the runtime before `nines` exits; allow a moment for the
    // kernel to finish tearing down what was just killed.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut left = leftovers(pid);
    while !left.is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        left = leftovers(pid);
    }
    if !left.is_empty() {
        kill_all(&left);
        panic!(
            "processes left behind by nines (pid {pid}): {left:?}\nstdout:\n{}\nstderr:\n{}",
            f.stdout, f.stderr
        );
    }
}

#[test]
fn demo_fails_over_and_prints_the_outage() {
    let _one = serial();
    let f = run(&["demo"], Duration::from_secs(90));
    assert!(
        f.status.success(),
        "demo failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        f.status,
        f.stdout,
        f.stderr
    );
    let outage = f
        .stdout
        .lines()
        .find(|l| l.contains("outage seen by the client:"))
        .unwrap_or_else(|| panic!("no outage line:\n{}", f.stdout));
    assert!(outage.contains(" ms"), "{outage}");
    // Built beside `nines` (cargo builds every binary of the package for its tests), the
    // small counter binary is what the demo starts.
    assert!(
        f.stdout.contains("/nines-counter`"),
        "the demo did not start nines-counter:\n{}",
        f.stdout
    );
    for expected in [
        "killing the active component",
        "su-failover",
        "is standby again",
        "the counter never went back",
    ] {
        assert!(
            f.stdout.contains(expected),
            "no {expected:?} in:\n{}",
            f.stdout
        );
    }
}

#[test]
fn bench_sa_kill_prints_one_json_object() {
    let _one = serial();
    let f = run(
        &["bench", "sa-kill", "--runs", "3", "--json", "--seed", "7"],
        Duration::from_secs(120),
    );
    assert!(
        f.status.success(),
        "bench failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        f.status,
        f.stdout,
        f.stderr
    );
    let lines: Vec<&str> = f.stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "stdout is not one line:\n{}", f.stdout);
    let v: Value = serde_json::from_str(lines[0]).expect("stdout is JSON");
    assert_eq!(v["scenario"], "sa-kill");
    assert_eq!(v["runs"], 3);
    for metric in ["outage_ms", "reaction_ms", "recovery_ms", "repair_ms"] {
        for p in ["p50", "p90", "p99", "max"] {
            let x = v[metric][p]
                .as_f64()
                .unwrap_or_else(|| panic!("{metric}.{p} is not a number: {v}"));
            assert!(x >= 0.0, "{metric}.{p} = {x}");
        }
        assert!(
            v[metric]["p50"].as_f64() <= v[metric]["max"].as_f64(),
            "{v}"
        );
    }
    assert!(v["load_avg"].is_number(), "{v}");
    // Progress went to stderr, one line per run.
    assert_eq!(
        f.stderr.matches("bench sa-kill: run ").count(),
        3,
        "{}",
        f.stderr
    );
}

#[test]
fn example_without_an_agent_says_what_is_missing() {
    let _one = serial();
    let out = Command::new(env!("CARGO_BIN_EXE_nines"))
        .args(["example", "counter"])
        .env_remove("NINES_AGENT_SOCKET")
        .env_remove("NINES_COMPONENT")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NINES_AGENT_SOCKET is not set"), "{err}");
    assert!(err.contains("not started by a nines agent"), "{err}");
    // Hidden from the help, but there.
    let help = Command::new(env!("CARGO_BIN_EXE_nines"))
        .arg("--help")
        .output()
        .expect("runs");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("demo") && help.contains("bench"), "{help}");
    assert!(
        !help.lines().any(|l| l.trim_start().starts_with("example ")),
        "{help}"
    );
}

#[test]
fn the_counter_binary_explains_itself_and_refuses_arguments() {
    let _one = serial();
    let counter = env!("CARGO_BIN_EXE_nines-counter");
    let help = Command::new(counter).arg("--help").output().expect("runs");
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("NINES_AGENT_SOCKET"), "{text}");
    let version = Command::new(counter)
        .arg("--protocol-version")
        .output()
        .expect("runs");
    assert_eq!(version.status.code(), Some(0));
    let text = String::from_utf8_lossy(&version.stdout);
    assert!(text.trim().parse::<u8>().is_ok(), "{text:?}");
    let bad = Command::new(counter).arg("--port").output().expect("runs");
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("unexpected argument \"--port\""), "{err}");
    let unmanaged = Command::new(counter)
        .env_remove("NINES_AGENT_SOCKET")
        .env_remove("NINES_COMPONENT")
        .output()
        .expect("runs");
    assert_eq!(unmanaged.status.code(), Some(1));
    let err = String::from_utf8_lossy(&unmanaged.stderr);
    assert!(err.starts_with("nines-counter: "), "{err}");
    assert!(err.contains("NINES_AGENT_SOCKET is not set"), "{err}");
}
