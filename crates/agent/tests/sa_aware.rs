//! SA-aware components over the real Unix socket: registration, CSI callbacks, healthchecks,
//! error reports, terminate, checkpoints, protection groups, and hostile input.

mod common;

use std::io::{BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use nines_engine::{ActionKind, Command, FaultKind, HaState, Input, Outcome};
use nines_model::Recovery;

/// Not a test: the body of the test SA-aware component, when this binary is re-executed by an
/// agent (see `common::sa_component`). Passes trivially in a normal test run.
#[test]
fn sa_component_main() {
    if let Ok(mode) = std::env::var("NINES_TEST_SA_MODE") {
        sa_component::run(&mode);
    }
}

fn sa_config(mode: &str, marker: &Path, extra: &[String]) -> String {
    let argv_list: Vec<String> = sa_component::argv(mode, marker);
    let refs: Vec<&str> = argv_list.iter().map(String::as_str).collect();
    config(
        &comp("c", "sa-aware", &argv(&refs), extra),
        "port: \"7100\"",
    )
}

fn outcome(i: &Input) -> Outcome {
    match i {
        Input::CommandDone { outcome, .. }
        | Input::CsiAssigned { outcome, .. }
        | Input::CsiRemoved { outcome, .. } => *outcome,
        other => panic!("no outcome in {other:?}"),
    }
}

fn is_failure(i: &Input) -> bool {
    matches!(i, Input::ComponentFailed { .. })
}

fn is_assigned(i: &Input) -> bool {
    matches!(i, Input::CsiAssigned { .. })
}

/// Start an agent in a fresh dir with one SA-aware component `c` in `mode`.
async fn sa_agent(name: &str, mode: &str, extra: &[String]) -> (TestAgent, std::path::PathBuf) {
    let dir = TempDir::new(name);
    let marker = dir.path().join("marker");
    let t = TestAgent::start_in(dir, &sa_config(mode, &marker, extra)).await;
    (t, marker)
}

#[tokio::test]
async fn a_registered_component_runs_at_the_agents_priority() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (mut t, marker) = sa_agent("nice", "hc-stop", &[]).await;
        let c = t.comp("app/sg/su/c");
        // A repair: started in the background.
        t.handle.execute(&ActionKind::Instantiate {
            comp: c,
            urgent: false,
        });
        let r = t
            .expect(Duration::from_secs(15), |i| {
                matches!(
                    i,
                    Input::CommandDone {
                        command: Command::Instantiate,
                        ..
                    }
                )
            })
            .await;
        assert_eq!(outcome(&r.input), Outcome::Ok);
        wait_for_file(&marker, "registered", Duration::from_secs(2)).await;
        let pid = t.pid(c).expect("running");
        // Every thread it has (the client library's too) is back at the agent's priority and
        // in the normal policy once it registered.
        let own = rustix::process::getpriority_process(None).unwrap_or(0);
        let nices = thread_nices(pid);
        assert!(!nices.is_empty(), "no threads read for pid {pid}");
        assert!(
            nices.iter().all(|n| *n == i64::from(own)),
            "threads of {pid} run at nice {nices:?}, the agent at {own}"
        );
        let policies: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("tasks")
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            // SAFETY: takes and returns plain integers.
            .map(|tid| unsafe { libc::sched_getscheduler(tid) })
            .collect();
        assert!(
            policies.iter().all(|p| *p == libc::SCHED_OTHER),
            "threads of {pid} in policies {policies:?}"
        );
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn register_assign_healthcheck_then_missed_healthcheck() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (mut t, marker) = sa_agent(
            "hc",
            "hc-stop",
            &["healthcheck: { period: 100ms, max_duration: 80ms }".to_string()],
        )
        .await;
        let c = t.comp("app/sg/su/c");
        let csi = t.csi("app/si/main");
        let r = t.instantiate(c).await;
        assert_eq!(outcome(&r.input), Outcome::Ok);
        wait_for_file(&marker, "registered", Duration::from_secs(2)).await;
        t.handle.execute(&ActionKind::AssignCsi {
            comp: c,
            csi,
            ha_state: HaState::Active,
        });
        let r = t.expect(Duration::from_secs(2), is_assigned).await;
        assert_eq!(
            r.input,
            Input::CsiAssigned {
                comp: c,
                csi,
                ha_state: HaState::Active,
                outcome: Outcome::Ok
            }
        );
        let text = wait_for_file(&marker, "csi-set", Duration::from_secs(2)).await;
        assert!(
            text.contains(r#"csi-set app/si app/si/main Active [("port", "7100")]"#),
            "{text}"
        );
        // Three healthchecks are confirmed, then the component goes silent.
        wait_for_file(&marker, "healthcheck 3", Duration::from_secs(3)).await;
        // Once per incarnation.
        t.expect_missed_healthcheck_once(c, Duration::from_secs(2), Duration::from_millis(400))
            .await;
        t.handle.execute(&ActionKind::Cleanup { comp: c });
        let r = t
            .expect(Duration::from_secs(3), |i| {
                matches!(
                    i,
                    Input::CommandDone {
                        command: Command::Cleanup,
                        ..
                    }
                )
            })
            .await;
        assert_eq!(outcome(&r.input), Outcome::Ok);
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn unanswered_csi_set_times_out() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (mut t, marker) = sa_agent(
            "mute",
            "mute-csi",
            &["timeouts: { callback: 300ms }".to_string()],
        )
        .await;
        let c = t.comp("app/sg/su/c");
        let csi = t.csi("app/si/main");
        assert_eq!(outcome(&t.instantiate(c).await.input), Outcome::Ok);
        let start = Instant::now();
        t.handle.execute(&ActionKind::AssignCsi {
            comp: c,
            csi,
            ha_state: HaState::Standby,
        });
        let r = t.expect(Duration::from_secs(3), is_assigned).await;
        assert_eq!(
            r.input,
            Input::CsiAssigned {
                comp: c,
                csi,
                ha_state: HaState::Standby,
                outcome: Outcome::TimedOut
            }
        );
        assert!(start.elapsed() >= Duration::from_millis(300));
        wait_for_file(&marker, "csi-set", Duration::from_secs(1)).await;
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn refused_csi_set_fails_and_removal_and_quiescing_work() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (mut t, _marker) = sa_agent("refuse", "refuse-csi", &[]).await;
        let c = t.comp("app/sg/su/c");
        let csi = t.csi("app/si/main");
        t.instantiate(c).await;
        t.handle.execute(&ActionKind::AssignCsi {
            comp: c,
            csi,
            ha_state: HaState::Active,
        });
        let r = t.expect(Duration::from_secs(2), is_assigned).await;
        assert_eq!(outcome(&r.input), Outcome::Failed);
        t.teardown().await;

        let (mut t, marker) = sa_agent("quiesce", "good", &[]).await;
        let c = t.comp("app/sg/su/c");
        let csi = t.csi("app/si/main");
        t.instantiate(c).await;
        t.handle.execute(&ActionKind::AssignCsi {
            comp: c,
            csi,
            ha_state: HaState::Quiescing,
        });
        let r = t.expect(Duration::from_secs(2), is_assigned).await;
        assert_eq!(outcome(&r.input), Outcome::Ok);
        let r = t
            .expect(Duration::from_secs(2), |i| {
                matches!(i, Input::QuiescingComplete { .. })
            })
            .await;
        assert_eq!(r.input, Input::QuiescingComplete { comp: c, csi });
        t.handle.execute(&ActionKind::RemoveCsi { comp: c, csi });
        let r = t
            .expect(Duration::from_secs(2), |i| {
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
        wait_for_file(&marker, "csi-remove app/si/main", Duration::from_secs(1)).await;
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn malformed_frame_closes_the_session_only() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (mut t, marker) = sa_agent("malformed", "malformed", &[]).await;
        let c = t.comp("app/sg/su/c");
        let csi = t.csi("app/si/main");
        assert_eq!(outcome(&t.instantiate(c).await.input), Outcome::Ok);
        // The agent closed the session: the component sees the end of the stream.
        wait_for_file(&marker, "eof", Duration::from_secs(3)).await;
        // The component still runs (the session's end is no failure) and the agent works: a
        // callback now fails at once, since there is no session to carry it.
        let pid = t.pid(c).expect("still running");
        assert!(alive(pid));
        t.handle.execute(&ActionKind::AssignCsi {
            comp: c,
            csi,
            ha_state: HaState::Active,
        });
        let r = t.expect(Duration::from_secs(2), is_assigned).await;
        assert_eq!(outcome(&r.input), Outcome::Failed);
        // Garbage from a stranger before registering is no problem either.
        // (Blocking socket calls run off the runtime thread, which also runs the agent.)
        let socket = t.handle.socket().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let mut s = UnixStream::connect(socket).expect("connect");
            s.write_all(&[0xff; 64]).expect("write");
            let mut rest = Vec::new();
            let _ = std::io::Read::read_to_end(&mut s, &mut rest);
        })
        .await
        .expect("stranger");
        // Cleanup kills it; nothing else was reported meanwhile.
        t.handle.execute(&ActionKind::Cleanup { comp: c });
        let r = t
            .expect(Duration::from_secs(3), |i| {
                matches!(i, Input::CommandDone { .. })
            })
            .await;
        assert_eq!(outcome(&r.input), Outcome::Ok);
        assert!(t.seen.iter().all(|r| !is_failure(&r.input)), "{:?}", t.seen);
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn socket_is_owner_only_and_stale_files_are_replaced() {
    tokio::time::timeout(TEST_LIMIT, async {
        let dir = TempDir::new("perm");
        let socket = dir.path().join("agent.sock");
        // A stale socket, as left by a crashed agent.
        drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind stale"));
        assert!(socket.exists());
        let marker = dir.path().join("marker");
        let yaml = sa_config("good", &marker, &[]);
        let t = TestAgent::start_in(dir, &yaml).await;
        let mode = std::fs::metadata(t.handle.socket())
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        // A second agent on the same socket is refused while the first one listens.
        let second = nines_agent::start(nines_agent::AgentOptions {
            node: nines_model::NodeId(0),
            model: t.model.clone(),
            socket: t.handle.socket().to_path_buf(),
            log_dir: None,
            clock: nines_agent::Clock::new(),
            record_dir: None,
            adopt: false,
        })
        .await;
        assert_eq!(
            second.expect_err("refused").kind(),
            std::io::ErrorKind::AddrInUse
        );
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn registration_is_checked() {
    tokio::time::timeout(TEST_LIMIT, async {
        // A component that registers under another name is refused and exits before registering.
        let (mut t, marker) = sa_agent("wrongname", "wrong-name", &[]).await;
        let c = t.comp("app/sg/su/c");
        let r = t.instantiate(c).await;
        assert_eq!(outcome(&r.input), Outcome::Failed);
        let text = wait_for_file(&marker, "refused", Duration::from_secs(2)).await;
        assert!(text.contains("not a component"), "{text}");
        t.handle.execute(&ActionKind::Cleanup { comp: c });
        t.expect(Duration::from_secs(3), |i| {
            matches!(
                i,
                Input::CommandDone {
                    command: Command::Cleanup,
                    ..
                }
            )
        })
        .await;

        t.teardown().await;

        // A process outside the component's group cannot register for it, even while the
        // agent waits for exactly that component.
        let yaml = config(
            &comp("c", "sa-aware", &argv(&["/bin/sleep", "1000"]), &[]),
            "port: \"1\"",
        );
        let mut t = TestAgent::start("stranger", &yaml).await;
        let c = t.comp("app/sg/su/c");
        t.handle.execute(&ActionKind::Instantiate {
            comp: c,
            urgent: true,
        });
        let socket = t.handle.socket().to_path_buf();
        let stranger = tokio::task::spawn_blocking(move || {
            let mut s = UnixStream::connect(socket).expect("connect");
            nines_proto::write_frame(
                &mut s,
                &nines_proto::ToAgent::Register {
                    component: "app/sg/su/c".into(),
                    pid: std::process::id(),
                    version: nines_proto::PROTOCOL_VERSION,
                    held: Vec::new(),
                },
            )
            .expect("write");
            let mut r = BufReader::new(s);
            nines_proto::read_frame::<_, nines_proto::ToComponent>(&mut r).expect("read")
        })
        .await
        .expect("stranger");
        match stranger {
            Some(nines_proto::ToComponent::Registered {
                ok: false,
                reason: Some(reason),
            }) => {
                assert!(reason.contains("process group"), "{reason}")
            }
            other => panic!("stranger accepted: {other:?}"),
        }
        t.handle.execute(&ActionKind::Cleanup { comp: c });
        t.expect(Duration::from_secs(3), |i| {
            matches!(
                i,
                Input::CommandDone {
                    command: Command::Cleanup,
                    ..
                }
            )
        })
        .await;
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn no_registration_times_out_and_early_exit_fails() {
    tokio::time::timeout(TEST_LIMIT, async {
        let yaml = config(
            &comp(
                "c",
                "sa-aware",
                &argv(&["/bin/sleep", "1000"]),
                &["timeouts: { instantiate: 300ms }".to_string()],
            ),
            "port: \"1\"",
        );
        let mut t = TestAgent::start("noreg", &yaml).await;
        let c = t.comp("app/sg/su/c");
        let start = Instant::now();
        let r = t.instantiate(c).await;
        assert_eq!(outcome(&r.input), Outcome::TimedOut);
        assert!(start.elapsed() >= Duration::from_millis(300));
        let pid = t.pid(c).expect("still running until cleanup");
        t.handle.execute(&ActionKind::Cleanup { comp: c });
        let r = t
            .expect(Duration::from_secs(3), |i| {
                matches!(i, Input::CommandDone { .. })
            })
            .await;
        assert_eq!(outcome(&r.input), Outcome::Ok);
        assert!(!alive(pid));
        t.teardown().await;

        let yaml = config(
            &comp("c", "sa-aware", &argv(&["/bin/true"]), &[]),
            "port: \"1\"",
        );
        let mut t = TestAgent::start("earlyexit", &yaml).await;
        let c = t.comp("app/sg/su/c");
        let start = Instant::now();
        assert_eq!(outcome(&t.instantiate(c).await.input), Outcome::Failed);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "reported at the exit, not a timeout"
        );
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn error_report_is_a_failure_with_its_recommendation() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (mut t, _marker) = sa_agent("errrep", "error-report", &[]).await;
        let c = t.comp("app/sg/su/c");
        t.instantiate(c).await;
        let r = t.expect(Duration::from_secs(2), is_failure).await;
        assert_eq!(
            r.input,
            Input::ComponentFailed {
                comp: c,
                kind: FaultKind::ErrorReport,
                recommended: Some(Recovery::ComponentRestart)
            }
        );
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn terminate_goes_through_the_callback() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (mut t, marker) = sa_agent("saterm", "good", &[]).await;
        let c = t.comp("app/sg/su/c");
        t.instantiate(c).await;
        let pid = t.pid(c).expect("pid");
        let start = Instant::now();
        t.handle.execute(&ActionKind::Terminate { comp: c });
        let r = t
            .expect(Duration::from_secs(6), |i| {
                matches!(i, Input::CommandDone { .. })
            })
            .await;
        assert_eq!(
            r.input,
            Input::CommandDone {
                comp: c,
                command: Command::Terminate,
                outcome: Outcome::Ok
            }
        );
        assert!(start.elapsed() < Duration::from_secs(2));
        wait_for_file(&marker, "terminate", Duration::from_secs(1)).await;
        assert!(!alive(pid));
        assert!(t.seen.iter().all(|r| !is_failure(&r.input)), "{:?}", t.seen);
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn checkpoints_and_protection_groups() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (mut t, marker) = sa_agent("ckpt", "ckpt", &[]).await;
        let c = t.comp("app/sg/su/c");
        let csi = t.csi("app/si/main");
        t.instantiate(c).await;
        let text = wait_for_file(&marker, "data 3", Duration::from_secs(3)).await;
        assert!(text.contains("ack 1 true"), "{text}");
        // Write 2 is asynchronous: stored (the read sees it) but never answered.
        assert!(!text.contains("ack 2"), "{text}");
        assert!(
            text.contains(r#"data 3 [("a", [1]), ("b", [2])]"#),
            "sections sorted: {text}"
        );
        wait_for_file(&marker, "pg app/si []", Duration::from_secs(2)).await;
        t.handle.execute(&ActionKind::AssignCsi {
            comp: c,
            csi,
            ha_state: HaState::Active,
        });
        t.expect(Duration::from_secs(2), is_assigned).await;
        wait_for_file(
            &marker,
            r#"pg app/si [("app/sg/su/c", Active)]"#,
            Duration::from_secs(2),
        )
        .await;
        t.handle.execute(&ActionKind::AssignCsi {
            comp: c,
            csi,
            ha_state: HaState::Quiescing,
        });
        t.expect(Duration::from_secs(2), |i| {
            matches!(i, Input::QuiescingComplete { .. })
        })
        .await;
        wait_for_file(
            &marker,
            r#"pg app/si [("app/sg/su/c", Quiesced)]"#,
            Duration::from_secs(2),
        )
        .await;
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn agents_of_one_cluster_share_checkpoints_and_protection_groups() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (mut t1, marker) = sa_agent("host1", "ckpt", &[]).await;
        let mut t2 = TestAgent::start_node(
            TempDir::new("host2"),
            t1.model.clone(),
            nines_model::NodeId(1),
        )
        .await;
        let c1 = t1.comp("app/sg/su/c");
        let c2 = t1.comp("app/sg/su2/c");
        let csi = t1.csi("app/si/main");
        t1.instantiate(c1).await;
        wait_for_file(&marker, "n1: data 3", Duration::from_secs(3)).await;
        // The component on n2 writes nothing and reads what n1's wrote through the other agent.
        t2.instantiate(c2).await;
        let text = wait_for_file(&marker, "n2: data 3", Duration::from_secs(3)).await;
        assert!(
            text.contains(r#"n2: data 3 [("a", [1]), ("b", [2])]"#),
            "{text}"
        );
        t1.handle.execute(&ActionKind::AssignCsi {
            comp: c1,
            csi,
            ha_state: HaState::Active,
        });
        t1.expect(Duration::from_secs(2), is_assigned).await;
        t2.handle.execute(&ActionKind::AssignCsi {
            comp: c2,
            csi,
            ha_state: HaState::Standby,
        });
        t2.expect(Duration::from_secs(2), is_assigned).await;
        let both = r#"pg app/si [("app/sg/su/c", Active), ("app/sg/su2/c", Standby)]"#;
        wait_for_file(&marker, &format!("n1: {both}"), Duration::from_secs(2)).await;
        wait_for_file(&marker, &format!("n2: {both}"), Duration::from_secs(2)).await;
        // The active dies: the standby learns it from its group.
        kill9(t1.pid(c1).expect("pid"));
        t1.expect(Duration::from_secs(2), is_failure).await;
        wait_for_file(
            &marker,
            r#"n2: pg app/si [("app/sg/su2/c", Standby)]"#,
            Duration::from_secs(2),
        )
        .await;
        // Its activation carries the checkpoint n1's component wrote, both sections.
        t2.handle.execute(&ActionKind::AssignCsi {
            comp: c2,
            csi,
            ha_state: HaState::Active,
        });
        t2.expect(Duration::from_secs(2), is_assigned).await;
        let text = wait_for_file(
            &marker,
            "n2: csi-set app/si app/si/main Active",
            Duration::from_secs(2),
        )
        .await;
        assert!(
            text.contains(r#"n2: csi-set app/si app/si/main Active [("port", "7100")] checkpoint-sections=Some(2)"#)
                && text.contains("n2: csi-set app/si app/si/main Standby [(\"port\", \"7100\")] checkpoint-sections=None"),
            "{text}"
        );
        t2.teardown().await;
        t1.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn unanswered_terminate_callback_falls_back_to_sigterm() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (mut t, marker) = sa_agent(
            "termmute",
            "ignore-terminate",
            &["timeouts: { callback: 300ms, terminate: 5s }".to_string()],
        )
        .await;
        let c = t.comp("app/sg/su/c");
        t.instantiate(c).await;
        let pid = t.pid(c).expect("pid");
        let start = Instant::now();
        t.handle.execute(&ActionKind::Terminate { comp: c });
        let r = t
            .expect(Duration::from_secs(6), |i| {
                matches!(i, Input::CommandDone { .. })
            })
            .await;
        let took = start.elapsed();
        assert_eq!(outcome(&r.input), Outcome::Ok);
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(
            took < Duration::from_secs(2),
            "SIGTERM, not the terminate timeout: {took:?}"
        );
        wait_for_file(&marker, "terminate", Duration::from_secs(1)).await;
        assert!(!alive(pid));
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_component_built_on_the_client_library() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (mut t, marker) = sa_agent(
            "client",
            "client",
            &["healthcheck: { period: 50ms, max_duration: 500ms }".to_string()],
        )
        .await;
        let c = t.comp("app/sg/su/c");
        let csi = t.csi("app/si/main");
        assert_eq!(outcome(&t.instantiate(c).await.input), Outcome::Ok);
        t.handle.execute(&ActionKind::AssignCsi {
            comp: c,
            csi,
            ha_state: HaState::Active,
        });
        let r = t.expect(Duration::from_secs(3), is_assigned).await;
        assert_eq!(outcome(&r.input), Outcome::Ok);
        let text = wait_for_file(&marker, "client flushed", Duration::from_secs(3)).await;
        // The read after twenty asynchronous writes sees the last of them.
        assert!(
            text.contains(r#"client read [("count", [52, 49]), ("seq", [20])]"#),
            "{text}"
        );
        assert!(text.contains("client self-healthcheck started"), "{text}");
        wait_for_file(&marker, "client healthcheck", Duration::from_secs(2)).await;
        // Confirmed every 10 ms, the component-invoked healthcheck (limit 550 ms) never
        // misses, over several of its periods.
        tokio::time::sleep(Duration::from_millis(700)).await;
        t.handle.execute(&ActionKind::Terminate { comp: c });
        let r = t
            .expect(Duration::from_secs(6), |i| {
                matches!(i, Input::CommandDone { .. })
            })
            .await;
        assert_eq!(outcome(&r.input), Outcome::Ok);
        wait_for_file(&marker, "client terminate", Duration::from_secs(1)).await;
        assert!(t.seen.iter().all(|r| !is_failure(&r.input)), "{:?}", t.seen);
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

/// No failure among the reports received so far (drains them into `seen`).
fn assert_no_failure_yet(t: &mut TestAgent) {
    while let Ok(r) = t.reports.try_recv() {
        t.seen.push(r);
    }
    assert!(t.seen.iter().all(|r| !is_failure(&r.input)), "{:?}", t.seen);
}

#[tokio::test]
async fn a_refused_async_write_is_answered_before_the_flush() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (mut t, marker) = sa_agent("ckptrefused", "ckpt-refused", &[]).await;
        let c = t.comp("app/sg/su/c");
        t.instantiate(c).await;
        let text = wait_for_file(&marker, "data 5", Duration::from_secs(5)).await;
        let refused = text.find("refused 2 app/si b: ").expect("write 2 refused");
        let flushed = text.find("ack 4 true").expect("flush acknowledged");
        assert!(
            refused < flushed,
            "the refusal comes before the flush's ack: {text}"
        );
        // The stored async write (3) is not answered; neither kind of answer for it.
        assert!(!text.contains("ack 2") && !text.contains("ack 3"), "{text}");
        assert!(!text.contains("refused 3"), "{text}");
        let half = nines_proto::MAX_FRAME / 2;
        assert!(
            text.contains(&format!(r#"data 5 sizes [("a", {half}), ("c", 1)]"#)),
            "{text}"
        );
        assert_no_failure_yet(&mut t);
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn component_invoked_healthcheck_confirms_keep_it_healthy_then_a_miss_is_reported() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (mut t, marker) = sa_agent("hcself", "hc-self", &[]).await;
        let c = t.comp("app/sg/su/c");
        assert_eq!(outcome(&t.instantiate(c).await.input), Outcome::Ok);
        let text = wait_for_file(&marker, "confirms done", Duration::from_secs(5)).await;
        assert!(text.contains("hc-ack 1 true None"), "{text}");
        // Confirmed for 2.5 times its limit (period 150 ms + max_duration 250 ms): healthy.
        assert_no_failure_yet(&mut t);
        // Then the confirmations stop: a missed healthcheck, as for an AMF-invoked one.
        t.expect_missed_healthcheck_once(c, Duration::from_secs(3), Duration::from_millis(500))
            .await;
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_stopped_component_invoked_healthcheck_reports_nothing() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (mut t, marker) = sa_agent("hcstop", "hc-self-stop", &[]).await;
        let c = t.comp("app/sg/su/c");
        t.instantiate(c).await;
        let text = wait_for_file(&marker, "confirms done", Duration::from_secs(5)).await;
        assert!(text.contains("hc-ack 1 true None"), "{text}");
        assert!(text.contains("hc-ack 2 true None"), "{text}");
        // Three limits (400 ms) without a confirmation, and no failure.
        t.expect_silence(Duration::from_millis(1200)).await;
        assert_no_failure_yet(&mut t);
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn bad_healthcheck_requests_are_refused_and_the_session_lives_on() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (mut t, marker) = sa_agent("hcbad", "hc-bad", &[]).await;
        let c = t.comp("app/sg/su/c");
        t.instantiate(c).await;
        let text = wait_for_file(&marker, "data 10 []", Duration::from_secs(5)).await;
        let refused = |request: u32, why: &str| {
            let line = text
                .lines()
                .find(|l| l.contains(&format!("hc-ack {request} ")))
                .unwrap_or_else(|| panic!("no answer to {request}: {text}"));
            assert!(
                line.contains("false") && line.contains(why),
                "request {request} refused with {why:?}: {line}"
            );
        };
        refused(1, "period must be greater than zero");
        refused(2, "max_duration must be greater than zero");
        refused(3, "must not be empty");
        refused(4, "exceeds the limit");
        refused(5, r#"\"never\" is not running"#);
        assert!(text.contains("hc-ack 6 true None"), "{text}");
        refused(7, "already started");
        assert!(text.contains("hc-ack 8 true None"), "{text}");
        refused(9, r#"\"k\" is not running"#);
        // Nothing of this is a failure of the component, and the agent is fine.
        assert_no_failure_yet(&mut t);
        assert!(t.pid(c).is_some());
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}
