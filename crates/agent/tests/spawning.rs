//! Instantiation starts processes off the caller's thread (a repair at background priority): actions
//! that arrive meanwhile apply to the process being started, and an instantiated component
//! runs at the agent's own priority.

mod common;

use std::time::Duration;

use common::*;
use nines_engine::{ActionKind, Command, HaState, Input, Outcome};

fn is_done(comp: nines_model::CompId, command: Command) -> impl Fn(&Input) -> bool {
    move |i| matches!(i, Input::CommandDone { comp: c, command: k, .. } if *c == comp && *k == command)
}

fn sleeper() -> String {
    config(
        &comp("c", "process", &argv(&["/bin/sleep", "1000"]), &[]),
        "port: \"7100\"",
    )
}

fn own_nice() -> i64 {
    i64::from(rustix::process::getpriority_process(None).unwrap_or(0))
}

#[tokio::test]
async fn a_cleanup_right_after_instantiate_stops_the_process_being_started() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut t = TestAgent::start("spawn-cleanup", &sleeper()).await;
        let c = t.comp("app/sg/su/c");
        // Back to back: the cleanup arrives while the spawn is still in flight.
        t.handle.execute(&ActionKind::Instantiate {
            comp: c,
            urgent: true,
        });
        t.handle.execute(&ActionKind::Cleanup { comp: c });
        let inst = t
            .expect(Duration::from_secs(10), is_done(c, Command::Instantiate))
            .await;
        assert!(matches!(
            inst.input,
            Input::CommandDone {
                outcome: Outcome::Ok,
                ..
            }
        ));
        let clean = t
            .expect(Duration::from_secs(10), is_done(c, Command::Cleanup))
            .await;
        assert!(matches!(
            clean.input,
            Input::CommandDone {
                outcome: Outcome::Ok,
                ..
            }
        ));
        assert_eq!(
            t.pid(c),
            None,
            "the process started by the instantiate was cleaned up"
        );
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn an_assignment_right_behind_instantiate_is_answered_after_it() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut t = TestAgent::start("spawn-order", &sleeper()).await;
        let c = t.comp("app/sg/su/c");
        let csi = t.csi("app/si/main");
        t.handle.execute(&ActionKind::Instantiate {
            comp: c,
            urgent: true,
        });
        t.handle.execute(&ActionKind::AssignCsi {
            comp: c,
            csi,
            ha_state: HaState::Active,
        });
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let r = t
                .expect(Duration::from_secs(10), |i| {
                    matches!(i, Input::CommandDone { .. } | Input::CsiAssigned { .. })
                })
                .await;
            seen.push(r.input);
        }
        assert_eq!(
            seen,
            vec![
                Input::CommandDone {
                    comp: c,
                    command: Command::Instantiate,
                    outcome: Outcome::Ok
                },
                Input::CsiAssigned {
                    comp: c,
                    csi,
                    ha_state: HaState::Active,
                    outcome: Outcome::Ok
                },
            ]
        );
        assert!(t.pid(c).is_some_and(alive));
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn an_instantiated_process_runs_at_the_agents_priority() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut t = TestAgent::start("spawn-nice", &sleeper()).await;
        let c = t.comp("app/sg/su/c");
        let r = t.instantiate(c).await;
        assert!(matches!(
            r.input,
            Input::CommandDone {
                outcome: Outcome::Ok,
                ..
            }
        ));
        let pid = t.pid(c).expect("running");
        let nices = thread_nices(pid);
        assert!(!nices.is_empty(), "no threads read for pid {pid}");
        assert!(
            nices.iter().all(|n| *n == own_nice()),
            "threads of {pid} run at nice {nices:?}, the agent at {}",
            own_nice()
        );
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

/// Whether this process may put a thread in the background and bring it back, the check the
/// agent makes before it starts anything in the background (on a throwaway thread).
fn may_change_priorities() -> bool {
    std::thread::spawn(|| {
        let idle = libc::sched_param { sched_priority: 0 };
        // SAFETY: `idle` outlives the calls, which only read it; the rest are plain integers.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, 0, 19) == 0
                && libc::sched_setscheduler(0, libc::SCHED_IDLE, &idle) == 0
                && libc::sched_setscheduler(0, libc::SCHED_OTHER, &idle) == 0
                && libc::setpriority(libc::PRIO_PROCESS, 0, own_nice() as i32) == 0
        }
    })
    .join()
    .unwrap_or(false)
}

/// The scheduling policy of `pid`'s main thread (`SCHED_OTHER` 0, `SCHED_IDLE` 5).
fn policy(pid: u32) -> i32 {
    // SAFETY: takes and returns plain integers.
    unsafe { libc::sched_getscheduler(pid as i32) }
}

#[tokio::test]
async fn a_repair_starts_in_the_background_and_an_awaited_start_at_the_agents_priority() {
    tokio::time::timeout(TEST_LIMIT, async {
        // SA-aware, but it never registers: it keeps the priority it was started with.
        let yaml = config(
            &comp("c", "sa-aware", &argv(&["/bin/sleep", "1000"]), &[]),
            "port: \"7100\"",
        );
        let mut t = TestAgent::start("spawn-lanes", &yaml).await;
        let c = t.comp("app/sg/su/c");
        let privileged = may_change_priorities();
        for urgent in [false, true] {
            let sent = std::time::Instant::now();
            t.handle
                .execute(&ActionKind::Instantiate { comp: c, urgent });
            let deadline = sent + Duration::from_secs(10);
            let pid = loop {
                if let Some(pid) = t.pid(c) {
                    break pid;
                }
                assert!(std::time::Instant::now() < deadline, "never started");
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            let normal = || {
                policy(pid) == libc::SCHED_OTHER
                    && thread_nices(pid).iter().all(|n| *n == own_nice())
            };
            if urgent || !privileged {
                assert!(normal(), "urgent: {urgent}");
            } else {
                // A repair: in the background (if seen well before the bound)...
                if sent.elapsed() < Duration::from_millis(30) {
                    assert_eq!(policy(pid), libc::SCHED_IDLE);
                    assert!(thread_nices(pid).iter().all(|n| *n == 19));
                }
                // ...and, as it never registers, at the agent's priority after the bound.
                while !normal() {
                    assert!(std::time::Instant::now() < deadline, "never brought back");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                assert!(sent.elapsed() >= Duration::from_millis(50));
            }
            t.cleanup_ok(c).await;
        }
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}
