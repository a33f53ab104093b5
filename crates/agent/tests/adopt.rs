//! Adoption of component processes recorded by an earlier agent of the node: the record names
//! the process, pid and start time prove it, and what cannot be adopted is killed.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::Duration;

use common::*;
use nines_engine::{FaultKind, Input};

fn sleeper() -> String {
    config(
        &comp("c", "process", &argv(&["/bin/sleep", "1000"]), &[]),
        "port: \"7100\"",
    )
}

/// A process in its own group, as an earlier agent would have left it.
fn leftover() -> Child {
    Command::new("/bin/sleep")
        .arg("1000")
        .process_group(0)
        .spawn()
        .expect("spawn sleep")
}

fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 1..];
    rest.split_whitespace()
        .nth(19)
        .and_then(|f| f.parse().ok())
        .expect("start time")
}

/// Writes the record an agent keeps for `comp` running as `pid` (with start time `start`).
fn record(dir: &TempDir, comp: &str, pid: u32, start: u64) {
    let procs = dir.path().join("procs");
    std::fs::create_dir_all(&procs).expect("procs dir");
    let name = format!("{}.pid", comp.replace('%', "%25").replace('/', "%2F"));
    std::fs::write(procs.join(name), format!("{comp}\n{pid} {start}\n")).expect("record");
}

/// Waits (bounded) for `child` to end; whether it did. The agent in this process reaps
/// every child it did not spawn (it is a subreaper), so `ECHILD` means ended too.
fn ends(child: &mut Child) -> bool {
    for _ in 0..250 {
        if !matches!(child.try_wait(), Ok(None)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[tokio::test]
async fn a_recorded_process_is_adopted_and_its_exit_reported() {
    tokio::time::timeout(TEST_LIMIT, async {
        let dir = TempDir::new("adopt");
        let mut child = leftover();
        let pid = child.id();
        record(&dir, "app/sg/su/c", pid, start_time(pid));
        let mut t = TestAgent::start_in(dir, &sleeper()).await;
        let c = t.comp("app/sg/su/c");
        let adopted = t.handle.adopted().await;
        assert_eq!(adopted.len(), 1, "{adopted:?}");
        assert_eq!((adopted[0].comp, adopted[0].pid), (c, pid));
        assert_eq!(t.pid(c), Some(pid));
        // Supervised again: its death is a failure the engine hears of.
        kill9(pid);
        let r = t
            .expect(Duration::from_secs(5), |i| {
                matches!(
                    i,
                    Input::ComponentFailed {
                        kind: FaultKind::Exited,
                        ..
                    }
                )
            })
            .await;
        assert!(matches!(r.input, Input::ComponentFailed { comp, .. } if comp == c));
        assert!(ends(&mut child));
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn without_adoption_a_recorded_process_is_killed() {
    tokio::time::timeout(TEST_LIMIT, async {
        let dir = TempDir::new("adopt-off");
        let mut child = leftover();
        let pid = child.id();
        record(&dir, "app/sg/su/c", pid, start_time(pid));
        let model = load(&sleeper());
        let clock = nines_agent::Clock::new();
        let (handle, _reports) = nines_agent::start(nines_agent::AgentOptions {
            node: nines_model::NodeId(0),
            model,
            socket: dir.path().join("agent.sock"),
            log_dir: None,
            clock,
            record_dir: Some(dir.path().join("procs")),
            adopt: false,
        })
        .await
        .expect("agent starts");
        assert!(ends(&mut child), "the stale process was killed");
        assert!(handle.adopted().await.is_empty());
        assert!(
            std::fs::read_dir(dir.path().join("procs"))
                .expect("dir")
                .next()
                .is_none(),
            "the record is gone"
        );
        handle.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_record_whose_pid_is_another_process_now_is_neither_adopted_nor_killed() {
    tokio::time::timeout(TEST_LIMIT, async {
        let dir = TempDir::new("adopt-reused");
        let mut child = leftover();
        let pid = child.id();
        // The same pid with another start time: the recorded process is gone, the pid reused.
        record(&dir, "app/sg/su/c", pid, start_time(pid) + 1);
        let mut t = TestAgent::start_in(dir, &sleeper()).await;
        assert!(t.handle.adopted().await.is_empty());
        assert_eq!(t.pid(t.comp("app/sg/su/c")), None);
        assert!(
            matches!(child.try_wait(), Ok(None)),
            "an unrelated process was killed"
        );
        t.expect_silence(Duration::from_millis(200)).await;
        let _ = child.kill();
        let _ = child.wait();
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_record_names_the_running_incarnation_outlives_a_crash_and_goes_with_a_stop() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut t = TestAgent::start("record", &sleeper()).await;
        let c = t.comp("app/sg/su/c");
        let procs = t.dir.path().join("procs");
        let records = || -> Vec<String> {
            std::fs::read_dir(&procs)
                .expect("procs")
                .flatten()
                .map(|e| std::fs::read_to_string(e.path()).expect("read"))
                .collect()
        };
        let record_of = |pid: u32| format!("app/sg/su/c\n{pid} {}\n", start_time(pid));
        t.instantiate(c).await;
        let first = t.pid(c).expect("running");
        let first_record = record_of(first);
        assert_eq!(records(), vec![first_record.clone()]);
        // A crash leaves the record (naming a dead process, which no agent would adopt) for the
        // next incarnation to replace: nothing is written or removed during the failover.
        kill9(first);
        t.expect(Duration::from_secs(5), |i| {
            matches!(i, Input::ComponentFailed { .. })
        })
        .await;
        t.cleanup_ok(c).await;
        assert_eq!(records(), vec![first_record]);
        t.instantiate(c).await;
        let second = t.pid(c).expect("running again");
        assert_ne!(second, first);
        assert_eq!(records(), vec![record_of(second)]);
        // A stop removes it.
        t.handle
            .execute(&nines_engine::ActionKind::Terminate { comp: c });
        t.expect(Duration::from_secs(10), |i| {
            matches!(
                i,
                Input::CommandDone {
                    command: nines_engine::Command::Terminate,
                    ..
                }
            )
        })
        .await;
        assert_eq!(records(), Vec::<String>::new());
        t.teardown().await;
    })
    .await
    .expect("test timed out");
}
