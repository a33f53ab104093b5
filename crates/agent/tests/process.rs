//! The process driver with real processes: spawn, pidfd exit detection, terminate, cleanup,
//! monitor, environment, logs and reaping.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nines_engine::{ActionKind, Command, FaultKind, HaState, Input, Outcome};

fn is_done(comp: nines_model::CompId, command: Command) -> impl Fn(&Input) -> bool {
    move |i| matches!(i, Input::CommandDone { comp: c, command: k, .. } if *c == comp && *k == command)
}

fn outcome(i: &Input) -> Outcome {
    match i {
        Input::CommandDone { outcome, .. } => *outcome,
        other => panic!("not a command result: {other:?}"),
    }
}

fn sleeper(extra: &[String]) -> String {
    config(
        &comp("c", "process", &argv(&["/bin/sleep", "1000"]), extra),
        "port: \"7100\"",
    )
}

#[tokio::test]
async fn instantiate_then_pid_visible_and_terminate() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut t = TestAgent::start("inst", &sleeper(&[])).await;
        let c = t.comp("app/sg/su/c");
        let before = t.clock.now();
        let r = t.instantiate(c).await;
        assert_eq!(outcome(&r.input), Outcome::Ok);
        assert!(r.at >= before, "stamped with the agent clock");
        let pid = t.pid(c).expect("pid listed");
        assert!(alive(pid));
        // Its own process group.
        let pgid =
            rustix::process::getpgid(rustix::process::Pid::from_raw(pid as i32)).expect("pgid");
        assert_eq!(pgid.as_raw_nonzero().get() as u32, pid);

        t.handle.execute(&ActionKind::Terminate { comp: c });
        let r = t
            .expect(Duration::from_secs(5), is_done(c, Command::Terminate))
            .await;
        assert_eq!(outcome(&r.input), Outcome::Ok);
        assert!(!alive(pid));
        assert!(t.pid(c).is_none());
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn kill_9_is_reported_as_exited_quickly() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut t = TestAgent::start("kill9", &sleeper(&[])).await;
        let c = t.comp("app/sg/su/c");
        t.instantiate(c).await;
        let pid = t.pid(c).expect("pid");
        let killed_at = t.clock.now();
        let sent = Instant::now();
        kill9(pid);
        let r = t
            .expect(Duration::from_secs(2), |i| {
                matches!(i, Input::ComponentFailed { .. })
            })
            .await;
        let latency = sent.elapsed();
        assert_eq!(
            r.input,
            Input::ComponentFailed {
                comp: c,
                kind: FaultKind::Exited,
                recommended: None
            }
        );
        assert!(r.at >= killed_at);
        let detection = r.at.saturating_since(killed_at);
        eprintln!("exit detected {detection:?} after the kill (report after {latency:?})");
        assert!(
            detection < Duration::from_millis(500),
            "slow detection: {detection:?}"
        );
        // Cleanup of the dead component: Ok at once.
        t.handle.execute(&ActionKind::Cleanup { comp: c });
        let r = t
            .expect(Duration::from_secs(2), is_done(c, Command::Cleanup))
            .await;
        assert_eq!(outcome(&r.input), Outcome::Ok);
        // It can be instantiated again.
        assert_eq!(outcome(&t.instantiate(c).await.input), Outcome::Ok);
        assert_ne!(t.pid(c), Some(pid));
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn terminate_kills_what_ignores_sigterm_after_the_timeout() {
    tokio::time::timeout(TEST_LIMIT, async {
        let yaml = config(
            &comp(
                "c",
                "process",
                &argv(&[
                    "/bin/sh",
                    "-c",
                    "trap '' TERM; /bin/sleep 1000 & wait; wait",
                ]),
                &["timeouts: { terminate: 400ms }".to_string()],
            ),
            "port: \"1\"",
        );
        let mut t = TestAgent::start("noterm", &yaml).await;
        let c = t.comp("app/sg/su/c");
        t.instantiate(c).await;
        let pid = t.pid(c).expect("pid");
        // Let the shell install its trap.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let start = Instant::now();
        t.handle.execute(&ActionKind::Terminate { comp: c });
        let r = t
            .expect(Duration::from_secs(5), is_done(c, Command::Terminate))
            .await;
        let took = start.elapsed();
        assert_eq!(outcome(&r.input), Outcome::Ok);
        assert!(
            took >= Duration::from_millis(400),
            "killed before the timeout: {took:?}"
        );
        assert!(took < Duration::from_millis(2000), "too slow: {took:?}");
        assert!(!alive(pid));
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn terminate_command_gets_the_component_pid() {
    tokio::time::timeout(TEST_LIMIT, async {
        let yaml = config(
            &comp(
                "c",
                "process",
                &argv(&["/bin/sleep", "1000"]),
                &[format!(
                    "terminate: {}",
                    argv(&["/bin/sh", "-c", "kill -TERM $NINES_COMPONENT_PID"])
                )],
            ),
            "port: \"1\"",
        );
        let mut t = TestAgent::start("termcmd", &yaml).await;
        let c = t.comp("app/sg/su/c");
        t.instantiate(c).await;
        let pid = t.pid(c).expect("pid");
        let start = Instant::now();
        t.handle.execute(&ActionKind::Terminate { comp: c });
        let r = t
            .expect(Duration::from_secs(5), is_done(c, Command::Terminate))
            .await;
        assert_eq!(outcome(&r.input), Outcome::Ok);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the command stopped it, not the timeout"
        );
        assert!(!alive(pid));
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn failing_terminate_command_is_reported_and_the_component_still_stops() {
    tokio::time::timeout(TEST_LIMIT, async {
        let yaml = config(
            &comp(
                "c",
                "process",
                &argv(&["/bin/sleep", "1000"]),
                &[
                    format!("terminate: {}", argv(&["/bin/false"])),
                    "timeouts: { terminate: 300ms }".to_string(),
                ],
            ),
            "port: \"1\"",
        );
        let mut t = TestAgent::start("termfail", &yaml).await;
        let c = t.comp("app/sg/su/c");
        t.instantiate(c).await;
        let pid = t.pid(c).expect("pid");
        t.handle.execute(&ActionKind::Terminate { comp: c });
        let r = t
            .expect(Duration::from_secs(5), is_done(c, Command::Terminate))
            .await;
        assert_eq!(outcome(&r.input), Outcome::Failed);
        assert!(!alive(pid), "still killed at the terminate timeout");
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn hanging_cleanup_command_times_out_and_the_component_is_still_killed() {
    tokio::time::timeout(TEST_LIMIT, async {
        let yaml = config(
            &comp(
                "c",
                "process",
                &argv(&["/bin/sleep", "1000"]),
                &[
                    format!("cleanup: {}", argv(&["/bin/sleep", "1000"])),
                    "timeouts: { cleanup: 300ms }".to_string(),
                ],
            ),
            "port: \"1\"",
        );
        let mut t = TestAgent::start("cleanhang", &yaml).await;
        let c = t.comp("app/sg/su/c");
        t.instantiate(c).await;
        let pid = t.pid(c).expect("pid");
        let start = Instant::now();
        t.handle.execute(&ActionKind::Cleanup { comp: c });
        let r = t
            .expect(Duration::from_secs(5), is_done(c, Command::Cleanup))
            .await;
        let took = start.elapsed();
        assert_eq!(outcome(&r.input), Outcome::TimedOut);
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(3), "bounded: {took:?}");
        assert!(!alive(pid));
        assert!(t.pid(c).is_none());
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn cleanup_command_runs_then_the_group_is_killed() {
    tokio::time::timeout(TEST_LIMIT, async {
        let dir = TempDir::new("cleancmd");
        let mark = dir.path().join("cleaned");
        let yaml = config(
            &comp(
                "c",
                "process",
                // A component with a child in its group: both must go.
                &argv(&["/bin/sh", "-c", "/bin/sleep 1000 & /bin/sleep 1000"]),
                &[format!(
                    "cleanup: {}",
                    argv(&[
                        "/bin/sh",
                        "-c",
                        &format!("echo $NINES_COMPONENT > {}", mark.display())
                    ])
                )],
            ),
            "port: \"1\"",
        );
        let mut t = TestAgent::start_in(dir, &yaml).await;
        let c = t.comp("app/sg/su/c");
        t.instantiate(c).await;
        let pid = t.pid(c).expect("pid");
        tokio::time::sleep(Duration::from_millis(100)).await;
        t.handle.execute(&ActionKind::Cleanup { comp: c });
        let r = t
            .expect(Duration::from_secs(5), is_done(c, Command::Cleanup))
            .await;
        assert_eq!(outcome(&r.input), Outcome::Ok);
        assert_eq!(
            std::fs::read_to_string(&mark).expect("cleanup ran").trim(),
            "app/sg/su/c"
        );
        assert!(!alive(pid));
        // Nothing of the group is left.
        let group = rustix::process::Pid::from_raw(pid as i32).expect("pid");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            rustix::process::test_kill_process_group(group).is_err(),
            "group members survive"
        );
        // A cleanup of a component that is not running is Ok at once.
        t.handle.execute(&ActionKind::Cleanup { comp: c });
        let r = t
            .expect(Duration::from_millis(500), is_done(c, Command::Cleanup))
            .await;
        assert_eq!(outcome(&r.input), Outcome::Ok);
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn missing_binary_fails_to_instantiate() {
    tokio::time::timeout(TEST_LIMIT, async {
        let yaml = config(
            &comp(
                "c",
                "process",
                &argv(&["/nonexistent/nines-daemon", "--x"]),
                &[],
            ),
            "port: \"1\"",
        );
        let mut t = TestAgent::start("missing", &yaml).await;
        let c = t.comp("app/sg/su/c");
        let r = t.instantiate(c).await;
        assert_eq!(outcome(&r.input), Outcome::Failed);
        assert!(t.pid(c).is_none());
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn orphans_are_reaped_and_leftovers_of_the_group_killed() {
    tokio::time::timeout(TEST_LIMIT, async {
        assert!(rustix::process::child_subreaper().is_ok());
        let dir = TempDir::new("orphans");
        let pidfile = dir.path().join("pids");
        // The component starts a grandchild in its own group (killed when the component
        // exits), one that leaves the group with setsid (reparented to the agent, exits a bit
        // later and must be reaped by it), and then exits.
        let script = format!(
            "/bin/sleep 1000 & echo $! > {p}.group; setsid /bin/sh -c 'echo $$ > {p}.escaped; exec /bin/sleep 0.3' & sleep 0.1; exit 0",
            p = pidfile.display()
        );
        let yaml = config(
            &comp("c", "process", &argv(&["/bin/sh", "-c", &script]), &[]),
            "port: \"1\"",
        );
        let mut t = TestAgent::start_in(dir, &yaml).await;
        let c = t.comp("app/sg/su/c");
        t.instantiate(c).await;
        let r = t
            .expect(Duration::from_secs(5), |i| matches!(i, Input::ComponentFailed { .. }))
            .await;
        assert!(matches!(r.input, Input::ComponentFailed { kind: FaultKind::Exited, .. }));
        let read = |ext: &str| -> u32 {
            let path = format!("{}.{ext}", pidfile.display());
            std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{path}: {e}"))
                .trim()
                .parse()
                .expect("pid")
        };
        let in_group = read("group");
        let escaped = read("escaped");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!alive(in_group), "a leftover of the group survived its leader");
        // The escaped one runs on, as the agent's child (subreaper), until it exits.
        if alive(escaped) {
            let stat = std::fs::read_to_string(format!("/proc/{escaped}/stat")).unwrap_or_default();
            let ppid: u32 = stat[stat.rfind(')').expect("stat") + 1..]
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            assert!(
                ppid == std::process::id() || ppid == 0,
                "orphan reparented to {ppid}, not to the agent"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!alive(escaped));
        assert_no_zombies().await;
        t.handle.execute(&ActionKind::Cleanup { comp: c });
        t.expect(Duration::from_secs(2), is_done(c, Command::Cleanup)).await;
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn failing_monitor_reports_a_missed_healthcheck() {
    tokio::time::timeout(TEST_LIMIT, async {
        let dir = TempDir::new("monitor");
        let healthy = dir.path().join("healthy");
        std::fs::write(&healthy, "").expect("write");
        let yaml = config(
            &comp(
                "c",
                "process",
                &argv(&["/bin/sleep", "1000"]),
                &[format!(
                    "monitor: {}",
                    argv(&["/bin/test", "-e", &healthy.display().to_string()])
                )],
            ),
            "port: \"1\"",
        );
        let mut t = TestAgent::start_in(dir, &yaml).await;
        let c = t.comp("app/sg/su/c");
        t.instantiate(c).await;
        // Healthy for a few periods: no report.
        t.expect_silence(Duration::from_millis(2300)).await;
        std::fs::remove_file(&healthy).expect("remove");
        // Reported once: the monitor stops for this incarnation.
        t.expect_missed_healthcheck_once(c, Duration::from_secs(3), Duration::from_millis(1500))
            .await;
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn hanging_monitor_counts_as_failed() {
    tokio::time::timeout(TEST_LIMIT, async {
        let yaml = config(
            &comp(
                "c",
                "process",
                &argv(&["/bin/sleep", "1000"]),
                &[format!("monitor: {}", argv(&["/bin/sleep", "1000"]))],
            ),
            "port: \"1\"",
        );
        let mut t = TestAgent::start("monhang", &yaml).await;
        let c = t.comp("app/sg/su/c");
        t.instantiate(c).await;
        let start = Instant::now();
        let r = t
            .expect(Duration::from_secs(5), |i| {
                matches!(i, Input::ComponentFailed { .. })
            })
            .await;
        assert!(matches!(
            r.input,
            Input::ComponentFailed {
                kind: FaultKind::HealthcheckMissed,
                ..
            }
        ));
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1900),
            "period + timeout: {took:?}"
        );
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn environment_and_log_file() {
    tokio::time::timeout(TEST_LIMIT, async {
        let dir = TempDir::new("env");
        let out = dir.path().join("env.txt");
        let script = format!(
            "env > {}; echo hello from the component; exec /bin/sleep 1000",
            out.display()
        );
        let yaml = config(
            &comp("c", "process", &argv(&["/bin/sh", "-c", &script]), &[]),
            "port: \"7100\", data-dir: \"/var/lib/x\"",
        );
        let mut t = TestAgent::start_in(dir, &yaml).await;
        let c = t.comp("app/sg/su/c");
        t.instantiate(c).await;
        let env = wait_for_file(&out, "NINES_CSI_MAIN_DATA_DIR", Duration::from_secs(5)).await;
        let socket = t.handle.socket().display().to_string();
        for line in [
            "NINES_COMPONENT=app/sg/su/c".to_string(),
            "NINES_NODE=n1".to_string(),
            format!("NINES_AGENT_SOCKET={socket}"),
            "NINES_CSI_MAIN_PORT=7100".to_string(),
            "NINES_CSI_MAIN_DATA_DIR=/var/lib/x".to_string(),
        ] {
            assert!(env.lines().any(|l| l == line), "missing {line} in:\n{env}");
        }
        let log = nines_agent::log_file(&t.dir.path().join("logs"), "app/sg/su/c");
        assert!(log.ends_with("app-sg-su-c.log"));
        wait_for_file(&log, "hello from the component", Duration::from_secs(5)).await;
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn process_csi_callbacks_are_answered_at_once() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut t = TestAgent::start("proccsi", &sleeper(&[])).await;
        let c = t.comp("app/sg/su/c");
        let csi = t.csi("app/si/main");
        t.instantiate(c).await;
        for ha_state in [HaState::Active, HaState::Quiescing] {
            t.handle.execute(&ActionKind::AssignCsi {
                comp: c,
                csi,
                ha_state,
            });
            let r = t
                .expect(Duration::from_millis(500), |i| {
                    matches!(i, Input::CsiAssigned { .. })
                })
                .await;
            assert_eq!(
                r.input,
                Input::CsiAssigned {
                    comp: c,
                    csi,
                    ha_state,
                    outcome: Outcome::Ok
                }
            );
        }
        let r = t
            .expect(Duration::from_millis(500), |i| {
                matches!(i, Input::QuiescingComplete { .. })
            })
            .await;
        assert_eq!(r.input, Input::QuiescingComplete { comp: c, csi });
        t.handle.execute(&ActionKind::RemoveCsi { comp: c, csi });
        let r = t
            .expect(Duration::from_millis(500), |i| {
                matches!(i, Input::CsiRemoved { .. })
            })
            .await;
        assert_eq!(
            r.input,
            Input::CsiRemoved {
                comp: c,
                csi,
                outcome: Outcome::Ok
            }
        );
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn actions_for_other_nodes_are_ignored() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut t = TestAgent::start("othernode", &sleeper(&[])).await;
        let other = t.comp("app/sg/su2/c");
        t.handle.execute(&ActionKind::Instantiate {
            comp: other,
            urgent: true,
        });
        t.handle.execute(&ActionKind::Cleanup { comp: other });
        t.handle.execute(&ActionKind::Instantiate {
            comp: nines_model::CompId(999),
            urgent: true,
        });
        t.expect_silence(Duration::from_millis(300)).await;
        assert!(t.handle.pids().is_empty());
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn shutdown_stops_everything_and_removes_the_socket() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut t = TestAgent::start("shutdown", &sleeper(&[])).await;
        let c = t.comp("app/sg/su/c");
        t.instantiate(c).await;
        let pid = t.pid(c).expect("pid");
        assert!(t.handle.socket().exists());
        // teardown shuts down and checks the process, the socket file and zombies.
        t.teardown().await;
        assert!(!alive(pid));
    })
    .await
    .expect("test timed out");
}

#[test]
fn dropping_the_runtime_kills_and_reaps_components() {
    let dir = TempDir::new("droprt");
    let yaml = sleeper(&[]);
    let pid = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let pid = rt.block_on(async {
            let mut t = TestAgent::start_in(dir, &yaml).await;
            let c = t.comp("app/sg/su/c");
            t.instantiate(c).await;
            // No shutdown: the runtime goes away under the agent.
            t.pid(c).expect("pid")
        });
        drop(rt);
        pid
    })
    .join()
    .expect("thread");
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(pid), "component survives its agent's runtime");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(assert_no_zombies());
}

#[tokio::test]
async fn kill_stops_everything_at_once() {
    tokio::time::timeout(TEST_LIMIT, async {
        let yaml = config(
            &comp(
                "c",
                "process",
                &argv(&[
                    "/bin/sh",
                    "-c",
                    "trap '' TERM; /bin/sleep 1000 & wait; wait",
                ]),
                &["timeouts: { terminate: 10s }".to_string()],
            ),
            "port: \"1\"",
        );
        let mut t = TestAgent::start("fence", &yaml).await;
        let c = t.comp("app/sg/su/c");
        t.instantiate(c).await;
        let pid = t.pid(c).expect("pid");
        let start = Instant::now();
        t.handle.kill().await;
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "no grace period: {:?}",
            start.elapsed()
        );
        assert!(!alive(pid));
        assert!(t.handle.pids().is_empty());
        assert!(!t.handle.socket().exists());
        // Stopped agents refuse new work.
        t.handle.execute(&ActionKind::Instantiate {
            comp: c,
            urgent: true,
        });
        let r = t
            .expect(Duration::from_secs(1), is_done(c, Command::Instantiate))
            .await;
        assert_eq!(outcome(&r.input), Outcome::Failed);
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}
